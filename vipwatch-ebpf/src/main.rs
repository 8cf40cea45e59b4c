//! vipwatch's XDP program, one per interface, serving every instance on it.
//!
//! * For a backup instance it counts the master's (and witness's) replies
//!   to the instance's heartbeat probes with kernel timestamps, and counts
//!   forged replies.
//! * For every instance it counts ARP and NDP claims of the instance's VIP
//!   by other hosts and wakes the daemon through a ring buffer.
//! * For a master instance whose gate is closed (its service is unhealthy,
//!   or it is handing over) it drops the vipwatch probes for that VIP, and
//!   only those, so the backup sees silence and takes over; and it learns
//!   the backup (address and nonce) from those probes.
//! * For every VIP this host holds, it keeps a table of the TCP
//!   connections clients have to it, so that the next holder can make them
//!   fail over at once (the "kick").
//!
//! Everything else passes: vipwatch observes, it does not filter. The
//! matching rules live in `lib.rs`, where they are unit-tested on the host;
//! this file only binds them to `XdpContext` and the maps.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // On the host this crate is only checked; the real object is built for
    // the BPF target by `vipwatch/build.rs`.
}

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::{
            BPF_F_CURRENT_NETNS, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
            bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2,
            xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
        },
        helpers::{
            bpf_ktime_get_ns,
            generated::{bpf_sk_release, bpf_skc_lookup_tcp},
        },
        macros::{map, xdp},
        maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
        programs::XdpContext,
    };
    use vipwatch_common::{
        ACK_UPDATE_NS, Addr, CLAIM_ANSWER, CLAIM_WAKE_MIN_NS, CLAIM_WAKE_NS, CONN_ACKED,
        CONN_CLOSED, CONN_EVENTS_RING_BYTES, CONN_NEW, CONN_TABLE_DEFAULT, ClaimCounters,
        ClaimEvent, ConnEvent, ConnKey, ConnValue, EVENTS_RING_BYTES, GapTracker, GateCounters,
        IfaceConfig, Learned, MAX_SLOTS, PEERS_PER_SLOT, PROBE_PAYLOAD_LEN, PROBE_TAG_AT,
        PeerCounters, ReplayWindow, SLOT_ACK_UPDATES, SLOT_GATE_CLOSED, SlotConfig,
        XDP_ERR_CONN_EVENTS_FULL, XDP_ERR_CONN_INSERT, XDP_ERR_MAP, XDP_ERR_NO_CONFIG,
        XDP_ERR_RINGBUF_FULL, XDP_ERR_UNKNOWN_SLOT, XDP_ERROR_KINDS, addr_as_v4, peer_index,
        reply_fresh, rtt_bucket,
    };
    use vipwatch_ebpf::{
        Answer, Frame, ICMP_HLEN, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST, IPPROTO_ICMPV6,
        IPV4_HLEN, IPV6_HLEN, Seen, Slots, classify, icmpv6_answer_checksum, rtt_us,
    };

    #[map(name = "VW_IFACE")]
    static IFACE: Array<IfaceConfig> = Array::with_max_entries(1, 0);

    #[map(name = "VW_SLOTS")]
    static SLOTS: Array<SlotConfig> = Array::with_max_entries(MAX_SLOTS, 0);

    #[map(name = "VW_VIPS")]
    static VIPS: HashMap<Addr, u32> = HashMap::with_max_entries(MAX_SLOTS, 0);

    #[map(name = "VW_PEERS")]
    static PEERS: PerCpuArray<PeerCounters> =
        PerCpuArray::with_max_entries(MAX_SLOTS * PEERS_PER_SLOT, 0);

    #[map(name = "VW_GAPS")]
    static GAPS: Array<GapTracker> = Array::with_max_entries(MAX_SLOTS * PEERS_PER_SLOT, 0);

    #[map(name = "VW_FRESH")]
    static FRESH: Array<ReplayWindow> = Array::with_max_entries(MAX_SLOTS * PEERS_PER_SLOT, 0);

    #[map(name = "VW_CLAIMS")]
    static CLAIMS: PerCpuArray<ClaimCounters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

    #[map(name = "VW_GATE_CNT")]
    static GATE_COUNTERS: PerCpuArray<GateCounters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

    #[map(name = "VW_EVENTS")]
    static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

    #[map(name = "VW_ERRORS")]
    static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_ERROR_KINDS, 0);

    /// Resized by the daemon at load time (`conn_table`).
    #[map(name = "VW_CONNS")]
    static CONNS: LruHashMap<ConnKey, ConnValue> =
        LruHashMap::with_max_entries(CONN_TABLE_DEFAULT, 0);

    #[map(name = "VW_CONN_EV")]
    static CONN_EVENTS: RingBuf = RingBuf::with_byte_size(CONN_EVENTS_RING_BYTES, 0);

    #[map(name = "VW_LEARN")]
    static LEARN: Array<Learned> = Array::with_max_entries(MAX_SLOTS, 0);

    /// The packet, as bounded reads the verifier can follow.
    struct Packet<'a>(&'a XdpContext);

    impl Frame for Packet<'_> {
        #[inline(always)]
        fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            let start = self.0.data();
            let end = self.0.data_end();
            if start + offset + N > end {
                return None;
            }
            // SAFETY: the range [start + offset, start + offset + N) was
            // checked against data_end just above; the read is unaligned
            // because packet headers have no alignment guarantee.
            Some(unsafe { ((start + offset) as *const [u8; N]).read_unaligned() })
        }
    }

    /// The maps, as the classifier sees them.
    struct Maps;

    impl Slots for Maps {
        #[inline(always)]
        fn iface(&self) -> Option<IfaceConfig> {
            IFACE.get(0).copied()
        }

        #[inline(always)]
        fn slot(&self, slot: u32) -> Option<SlotConfig> {
            SLOTS.get(slot).copied()
        }

        #[inline(always)]
        fn vip_slot(&self, vip: &Addr) -> Option<u32> {
            // SAFETY: a plain lookup; the value is copied out at once, so a
            // concurrent delete cannot leave us holding a freed element.
            unsafe { VIPS.get(vip) }.copied()
        }
    }

    /// Counts one of the program's own errors; nothing else can be done
    /// about it here, and the packet still passes.
    #[inline(always)]
    fn count_error(kind: u32) {
        if let Some(n) = ERRORS.get_ptr_mut(kind) {
            // SAFETY: per-CPU value: no other CPU writes it, and XDP does
            // not preempt itself on one CPU.
            unsafe { *n += 1 };
        }
    }

    #[xdp]
    pub fn vipwatch(ctx: XdpContext) -> u32 {
        // Whatever happens while counting, the packet goes on: a counting
        // failure must never become packet loss.
        match try_vipwatch(&ctx) {
            Ok(action) => action,
            Err(kind) => {
                count_error(kind);
                XDP_PASS
            }
        }
    }

    #[inline(always)]
    fn try_vipwatch(ctx: &XdpContext) -> Result<u32, u32> {
        match classify(&Packet(ctx), &Maps) {
            Seen::Other => Ok(XDP_PASS),
            Seen::NoConfig => Err(XDP_ERR_NO_CONFIG),
            Seen::UnknownSlot => Err(XDP_ERR_UNKNOWN_SLOT),
            Seen::Reply {
                slot,
                peer,
                seq,
                sent_ns,
                mac,
            } => {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let index = peer_index(slot, peer);
                let c = PEERS.get_ptr_mut(index).ok_or(XDP_ERR_MAP)?;
                // SAFETY: per-CPU value, see count_error.
                let c = unsafe { &mut *c };
                // Alive only if it answers a recent probe not answered
                // before: a replayed reply proves nothing.
                let w = FRESH.get_ptr_mut(index).ok_or(XDP_ERR_MAP)?;
                // SAFETY: a shared value; two CPUs racing on one peer's
                // window can at worst both accept one duplicate.
                let w = unsafe { &mut *w };
                if !reply_fresh(sent_ns, now) || !w.accept(seq) {
                    c.replayed += 1;
                    return Ok(XDP_PASS);
                }
                c.replies += 1;
                c.last_seen_ns = now;
                if seq > c.highest_seq {
                    c.highest_seq = seq;
                }
                c.last_mac = mac;
                let bucket = rtt_bucket(rtt_us(now, sent_ns));
                if let Some(slot) = c.rtt_hist.get_mut(bucket) {
                    *slot += 1;
                }
                if let Some(g) = GAPS.get_ptr_mut(index) {
                    // SAFETY: a shared (not per-CPU) value; concurrent
                    // updates can only overstate a gap (see GapTracker).
                    let g = unsafe { &mut *g };
                    if g.last_ns != 0 && now > g.last_ns && now - g.last_ns > g.max_gap_ns {
                        g.max_gap_ns = now - g.last_ns;
                    }
                    g.last_ns = now;
                }
                Ok(XDP_PASS)
            }
            Seen::Forged { slot, peer } => {
                let c = PEERS
                    .get_ptr_mut(peer_index(slot, peer))
                    .ok_or(XDP_ERR_MAP)?;
                // SAFETY: per-CPU value, see count_error.
                unsafe { (*c).forged += 1 };
                Ok(XDP_PASS)
            }
            Seen::Probe {
                slot,
                src,
                dst,
                nonce,
                answer,
            } => {
                if let Some(l) = LEARN.get_ptr_mut(slot) {
                    // SAFETY: a shared value written only here; a torn
                    // write between two probes from the same backup holds
                    // the same address and nonce either way.
                    let l = unsafe { &mut *l };
                    l.addr = src;
                    l.local = dst;
                    l.nonce = nonce;
                    // SAFETY: bpf_ktime_get_ns has no preconditions.
                    l.seen_ns = unsafe { bpf_ktime_get_ns() };
                }
                let closed = SLOTS
                    .get(slot)
                    .is_some_and(|c| c.flags & SLOT_GATE_CLOSED != 0);
                let c = GATE_COUNTERS.get_ptr_mut(slot).ok_or(XDP_ERR_MAP)?;
                // SAFETY: per-CPU value, see count_error.
                let c = unsafe { &mut *c };
                c.probes += 1;
                if closed {
                    c.dropped += 1;
                    return Ok(XDP_DROP);
                }
                match answer {
                    Some(a) if a.v6 => Ok(answer_probe_v6(ctx, a)),
                    Some(a) => Ok(answer_probe(ctx, a)),
                    None => Ok(XDP_PASS),
                }
            }
            Seen::Tcp {
                key,
                acked,
                ack,
                syn,
                end,
                mac,
            } => {
                connection(ctx, &key, acked, ack, syn, end, mac)?;
                Ok(XDP_PASS)
            }
            Seen::Claim {
                slot,
                mac,
                op,
                answer,
            } => {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let c = CLAIMS.get_ptr_mut(slot).ok_or(XDP_ERR_MAP)?;
                // SAFETY: per-CPU value, see count_error.
                let c = unsafe { &mut *c };
                c.claims += 1;
                c.last_ns = now;
                c.last_mac = mac;
                // The counter above is the record; the event only wakes the
                // daemon, so a full ring loses a wake-up, not a claim. A
                // flood wakes it rarely (see claim_wakes).
                if !claim_wakes(c, now, mac, op, answer) {
                    return Ok(XDP_PASS);
                }
                let event = ClaimEvent {
                    ktime_ns: now,
                    mac,
                    op,
                    slot,
                    flags: if answer { CLAIM_ANSWER } else { 0 },
                };
                EVENTS
                    .output::<ClaimEvent>(&event, 0)
                    .map_err(|_| XDP_ERR_RINGBUF_FULL)?;
                Ok(XDP_PASS)
            }
        }
    }

    /// Turns an authenticated probe into its reply, in place, and sends it
    /// back out (XDP_TX): Ethernet and IPv4 addresses swapped, ICMP echo
    /// reply with the master's tag, checksums recomputed. A frame that is
    /// not exactly a probe of ours is left to the kernel.
    #[inline(always)]
    fn answer_probe(ctx: &XdpContext, a: Answer) -> u32 {
        const LEN: usize = IPV4_HLEN + ICMP_HLEN + PROBE_PAYLOAD_LEN;
        let start = ctx.data();
        let Some(ip) = answerable(ctx, a, LEN) else {
            return XDP_PASS;
        };
        let at = |k: usize| (ip + k) as *mut u8;
        // SAFETY: every offset below is within [start, ip + LEN), checked
        // against data_end just above; the packet is ours to rewrite.
        unsafe {
            if u16::from_be_bytes([*at(2), *at(3)]) as usize != LEN {
                return XDP_PASS;
            }
            let eth = start as *mut u8;
            swap_bytes(eth, eth.add(6), 6);
            // IPv4: addresses swapped, a fresh TTL, checksum again.
            swap_bytes(at(12), at(16), 4);
            *at(8) = 64;
            *at(10) = 0;
            *at(11) = 0;
            let sum = checksum(
                |k| u16::from_be_bytes([*at(2 * k), *at(2 * k + 1)]),
                IPV4_HLEN / 2,
            );
            *at(10) = (sum >> 8) as u8;
            *at(11) = sum as u8;
            // ICMP: echo reply, the master's tag, checksum again.
            let icmp = IPV4_HLEN;
            *at(icmp) = 0;
            *at(icmp + 2) = 0;
            *at(icmp + 3) = 0;
            let mut k = 0;
            while k < 8 {
                *at(icmp + ICMP_HLEN + PROBE_TAG_AT + k) = a.tag[k];
                k += 1;
            }
            let sum = checksum(
                |k| u16::from_be_bytes([*at(icmp + 2 * k), *at(icmp + 2 * k + 1)]),
                (ICMP_HLEN + PROBE_PAYLOAD_LEN) / 2,
            );
            *at(icmp + 2) = (sum >> 8) as u8;
            *at(icmp + 3) = sum as u8;
        }
        XDP_TX
    }

    /// [`answer_probe`] for IPv6: Ethernet and IPv6 addresses swapped, a
    /// fresh hop limit, ICMPv6 echo reply with the master's tag, checksum
    /// updated (`icmpv6_answer_checksum`). Only ICMPv6 right after the fixed
    /// header, with exactly our payload; anything else is left to the
    /// kernel.
    #[inline(always)]
    fn answer_probe_v6(ctx: &XdpContext, a: Answer) -> u32 {
        const ICMP_LEN: usize = ICMP_HLEN + PROBE_PAYLOAD_LEN;
        const LEN: usize = IPV6_HLEN + ICMP_LEN;
        let start = ctx.data();
        let Some(ip) = answerable(ctx, a, LEN) else {
            return XDP_PASS;
        };
        let at = |k: usize| (ip + k) as *mut u8;
        // SAFETY: every offset below is within [start, ip + LEN), checked
        // against data_end just above; the packet is ours to rewrite.
        unsafe {
            let payload_len = u16::from_be_bytes([*at(4), *at(5)]) as usize;
            if payload_len != ICMP_LEN
                || *at(6) != IPPROTO_ICMPV6
                || *at(IPV6_HLEN) != ICMPV6_ECHO_REQUEST
            {
                return XDP_PASS;
            }
            let eth = start as *mut u8;
            swap_bytes(eth, eth.add(6), 6);
            // IPv6: addresses swapped, a fresh hop limit (no checksum).
            swap_bytes(at(8), at(24), 16);
            *at(7) = 64;
            // ICMPv6: echo reply, the master's tag, checksum updated.
            let icmp = IPV6_HLEN;
            let tag_at = icmp + ICMP_HLEN + PROBE_TAG_AT;
            let mut old = [0u8; 8];
            let mut k = 0;
            while k < 8 {
                old[k] = *at(tag_at + k);
                *at(tag_at + k) = a.tag[k];
                k += 1;
            }
            let sum = icmpv6_answer_checksum([*at(icmp + 2), *at(icmp + 3)], old, a.tag);
            *at(icmp) = ICMPV6_ECHO_REPLY;
            *at(icmp + 2) = sum[0];
            *at(icmp + 3) = sum[1];
        }
        XDP_TX
    }

    /// Where the IP header of the probe `a` starts in the packet, if the
    /// packet holds its `len` bytes from there (and the Ethernet addresses
    /// before it): what [`answer_probe`] and [`answer_probe_v6`] may
    /// rewrite. At most two VLAN tags precede the IP header.
    #[inline(always)]
    fn answerable(ctx: &XdpContext, a: Answer, len: usize) -> Option<usize> {
        let start = ctx.data();
        let end = ctx.data_end();
        if a.ip > 22 {
            return None;
        }
        let ip = start + a.ip;
        (ip + len <= end && start + 12 <= end).then_some(ip)
    }

    /// Swaps the `n` bytes at `a` with the `n` bytes at `b` (addresses of
    /// a frame being turned around).
    ///
    /// # Safety
    /// Both ranges are within the packet, checked against `data_end`, and
    /// do not overlap.
    #[inline(always)]
    unsafe fn swap_bytes(a: *mut u8, b: *mut u8, n: usize) {
        let mut k = 0;
        while k < n {
            // SAFETY: within both ranges, by the caller's contract.
            unsafe { core::ptr::swap(a.add(k), b.add(k)) };
            k += 1;
        }
    }

    /// The Internet checksum (RFC 1071) of `words` 16-bit words.
    #[inline(always)]
    fn checksum(word: impl Fn(usize) -> u16, words: usize) -> u16 {
        let mut sum: u32 = 0;
        let mut k = 0;
        while k < words {
            sum += u32::from(word(k));
            k += 1;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }

    /// Whether a claim wakes the daemon, recording the wake-up: one from
    /// the same sender and operation as the last wake-up at most every
    /// CLAIM_WAKE_NS, a different one at most every CLAIM_WAKE_MIN_NS (per
    /// CPU and slot). A flood then costs the daemon a few hundred wake-ups
    /// a second, and what it suppresses is what the daemon just heard.
    /// Answers to our own RFC 5227 probes have a budget of their own (at
    /// most every CLAIM_WAKE_MIN_NS): a release check waits for one, and a
    /// flood of other claims must not hide it.
    #[inline(always)]
    fn claim_wakes(
        c: &mut ClaimCounters,
        now: u64,
        mac: [u8; 6],
        op: [u8; 2],
        answer: bool,
    ) -> bool {
        if answer {
            let wake =
                c.last_answer_ns == 0 || now.wrapping_sub(c.last_answer_ns) >= CLAIM_WAKE_MIN_NS;
            if wake {
                c.last_answer_ns = now;
            }
            return wake;
        }
        let since = now.wrapping_sub(c.last_wake_ns);
        let same = c.last_wake_mac == mac && c.last_wake_op == op;
        let wake =
            c.last_wake_ns == 0 || since >= CLAIM_WAKE_NS || (!same && since >= CLAIM_WAKE_MIN_NS);
        if wake {
            c.last_wake_ns = now;
            c.last_wake_mac = mac;
            c.last_wake_op = op;
        }
        wake
    }

    /// Keeps the connection table of a held VIP: one lookup per segment;
    /// an insert and an event only when a connection appears, a delete and
    /// an event when the client ends it.
    #[inline(always)]
    fn connection(
        ctx: &XdpContext,
        key: &ConnKey,
        acked: bool,
        ack: [u8; 4],
        syn: bool,
        end: bool,
        mac: [u8; 6],
    ) -> Result<(), u32> {
        // SAFETY: bpf_ktime_get_ns has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        let event = |kind: u32| ConnEvent {
            kind,
            ack,
            key: *key,
            ktime_ns: now,
            mac,
            _pad: [0; 2],
        };
        if end {
            // Ok or ENOENT: either way it is gone.
            if CONNS.remove(key).is_ok() {
                CONN_EVENTS
                    .output::<ConnEvent>(&event(CONN_CLOSED), 0)
                    .map_err(|_| XDP_ERR_CONN_EVENTS_FULL)?;
            }
            return Ok(());
        }
        if let Some(v) = CONNS.get_ptr_mut(key) {
            // SAFETY: a pointer into the map's value; two CPUs updating the
            // same connection at once can only mix two recent values.
            let v = unsafe { &mut *v };
            v.last_seen_ns = now;
            v.mac = mac;
            if !acked {
                return Ok(());
            }
            let changed = v.ack != ack;
            v.ack = ack;
            // The handshake's last segment: announce it now that its ack
            // number is known. Later, a changed ack only for a `rst` kick,
            // at most every ACK_UPDATE_NS per connection.
            let announce = if v.flags & CONN_ACKED == 0 {
                v.flags |= CONN_ACKED;
                true
            } else {
                changed
                    && now.wrapping_sub(v.announced_ns) >= ACK_UPDATE_NS
                    && SLOTS
                        .get(key.slot)
                        .is_some_and(|c| c.flags & SLOT_ACK_UPDATES != 0)
            };
            if announce {
                v.announced_ns = now;
                CONN_EVENTS
                    .output::<ConnEvent>(&event(CONN_NEW), 0)
                    .map_err(|_| XDP_ERR_CONN_EVENTS_FULL)?;
            }
            return Ok(());
        }
        // A connection appears with its SYN; a segment of one we did not
        // see open counts only if this host has a socket for it. Otherwise
        // it is not a connection we serve: the answer to our own kick (a
        // client acknowledging a connection of the previous holder's), or
        // stray traffic, which would be kicked again at the next failover.
        if !syn && !has_socket(ctx, key) {
            return Ok(());
        }
        let value = ConnValue {
            last_seen_ns: now,
            ack,
            mac,
            flags: if acked { CONN_ACKED } else { 0 },
            _pad: [0; 5],
            announced_ns: now,
        };
        CONNS
            .insert(key, value, 0)
            .map_err(|_| XDP_ERR_CONN_INSERT)?;
        if !acked {
            // A SYN: announced with the client's first ACK.
            return Ok(());
        }
        CONN_EVENTS
            .output::<ConnEvent>(&event(CONN_NEW), 0)
            .map_err(|_| XDP_ERR_CONN_EVENTS_FULL)
    }

    /// Whether the host's TCP stack has a socket for this connection (any
    /// state but listening or TIME-WAIT), by bpf_skc_lookup_tcp (Linux 5.2):
    /// the IPv4 lookup for IPv4-mapped addresses, the IPv6 one otherwise.
    #[inline(always)]
    fn has_socket(ctx: &XdpContext, key: &ConnKey) -> bool {
        const TCP_TIME_WAIT: u32 = 6;
        const TCP_LISTEN: u32 = 10;
        // By reference: a copy of the VIP costs a stack slot per byte here,
        // and the program's stack is 512 bytes with the tag helpers'.
        let Some(vip) = SLOTS.get(key.slot).map(|c| &c.vip) else {
            return false;
        };
        // SAFETY: an all-zero tuple is a valid value of this plain C union.
        let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
        let size = match (addr_as_v4(&key.client), addr_as_v4(vip)) {
            (Some(client), Some(vip)) => {
                // SAFETY: writing the IPv4 member of the union we own.
                unsafe {
                    let v4 = &mut tuple.__bindgen_anon_1.ipv4;
                    v4.saddr = u32::from_ne_bytes(client);
                    v4.daddr = u32::from_ne_bytes(vip);
                    v4.sport = u16::from_ne_bytes(key.client_port);
                    v4.dport = u16::from_ne_bytes(key.vip_port);
                }
                core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>()
            }
            (None, None) => {
                // SAFETY: writing the IPv6 member of the union we own.
                unsafe {
                    let v6 = &mut tuple.__bindgen_anon_1.ipv6;
                    v6.saddr = be_words(&key.client);
                    v6.daddr = be_words(vip);
                    v6.sport = u16::from_ne_bytes(key.client_port);
                    v6.dport = u16::from_ne_bytes(key.vip_port);
                }
                core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_2>()
            }
            // A client of one family on a VIP of the other: no such socket.
            _ => return false,
        };
        // SAFETY: the context is this program's; the tuple is on our stack
        // and `size` is that of the member written; the netns flag asks for
        // the packet's own namespace.
        let sk = unsafe {
            bpf_skc_lookup_tcp(
                ctx.ctx.cast(),
                &mut tuple,
                size as u32,
                BPF_F_CURRENT_NETNS as u64,
                0,
            )
        };
        if sk.is_null() {
            return false;
        }
        // SAFETY: the helper returned a referenced, non-null socket; its
        // state is readable, and the reference is released right after.
        let state = unsafe { (*sk).state };
        // SAFETY: releasing the reference the lookup took.
        unsafe { bpf_sk_release(sk.cast()) };
        state != TCP_LISTEN && state != TCP_TIME_WAIT
    }

    /// An address as the four network-order 32-bit words of
    /// `bpf_sock_tuple`'s IPv6 member (bytes kept in order: `from_ne_bytes`).
    #[inline(always)]
    fn be_words(a: &Addr) -> [u32; 4] {
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ]
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}
