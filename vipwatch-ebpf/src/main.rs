//! vipwatch's XDP program, one per interface, serving every instance on it.
//!
//! * For a backup instance it counts the master's (and witness's) replies
//!   to the instance's heartbeat probes with kernel timestamps, and counts
//!   forged replies.
//! * For every instance it counts ARP claims of the instance's VIP by other
//!   hosts and wakes the daemon through a ring buffer.
//! * For a master instance whose gate is closed (its service is unhealthy,
//!   or it is handing over) it drops the vipwatch probes for that VIP, and
//!   only those, so the backup sees silence and takes over.
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
        bindings::xdp_action::{XDP_DROP, XDP_PASS},
        helpers::bpf_ktime_get_ns,
        macros::{map, xdp},
        maps::{Array, HashMap, PerCpuArray, RingBuf},
        programs::XdpContext,
    };
    use vipwatch_common::{
        Addr, ClaimCounters, ClaimEvent, EVENTS_RING_BYTES, GapTracker, GateCounters, IfaceConfig,
        MAX_SLOTS, PEERS_PER_SLOT, PeerCounters, SLOT_GATE_CLOSED, SlotConfig, XDP_ERR_MAP,
        XDP_ERR_NO_CONFIG, XDP_ERR_RINGBUF_FULL, XDP_ERR_UNKNOWN_SLOT, XDP_ERROR_KINDS, peer_index,
        rtt_bucket,
    };
    use vipwatch_ebpf::{Frame, Seen, Slots, classify, rtt_us};

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

    #[map(name = "VW_CLAIMS")]
    static CLAIMS: PerCpuArray<ClaimCounters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

    #[map(name = "VW_GATE_CNT")]
    static GATE_COUNTERS: PerCpuArray<GateCounters> = PerCpuArray::with_max_entries(MAX_SLOTS, 0);

    #[map(name = "VW_EVENTS")]
    static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

    #[map(name = "VW_ERRORS")]
    static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(XDP_ERROR_KINDS, 0);

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
            Seen::Probe { slot } => {
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
                Ok(XDP_PASS)
            }
            Seen::Claim { slot, mac, op } => {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let c = CLAIMS.get_ptr_mut(slot).ok_or(XDP_ERR_MAP)?;
                // SAFETY: per-CPU value, see count_error.
                let c = unsafe { &mut *c };
                c.claims += 1;
                c.last_ns = now;
                c.last_mac = mac;
                // The counter above is the record; the event only wakes the
                // daemon, so a full ring loses a wake-up, not a claim.
                let event = ClaimEvent {
                    ktime_ns: now,
                    mac,
                    op,
                    slot,
                    _pad: 0,
                };
                EVENTS
                    .output::<ClaimEvent>(&event, 0)
                    .map_err(|_| XDP_ERR_RINGBUF_FULL)?;
                Ok(XDP_PASS)
            }
        }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}
