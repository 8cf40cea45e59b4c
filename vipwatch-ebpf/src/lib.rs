//! Packet matching for the vipwatch XDP program.
//!
//! Nothing here touches `XdpContext`: the program in `main.rs` hands in a
//! [`Frame`] that reads bounded byte arrays out of the packet and a
//! [`Slots`] view of its maps, and the same code runs on the host against
//! `&[u8]` and plain arrays, so every parsing rule is an ordinary unit test
//! (the pattern firezone's relay uses).
#![cfg_attr(not(test), no_std)]

use vipwatch_common::{
    AUTH_PROBE, AUTH_REPLY, Addr, ConnKey, IfaceConfig, PEER_MASTER, PEER_WITNESS,
    PROBE_PAYLOAD_LEN, PROBE_TAG_AT, ProbePayload, ROLE_BACKUP, ROLE_MASTER, SLOT_AUTH,
    SLOT_HOLDING, SLOT_WITNESS, SlotConfig, addr_as_v4, addr_v4, auth_tag, siphash::Key,
};

/// Bounded reads out of a packet.
pub trait Frame {
    /// The `N` bytes at `offset`, or `None` if the packet is shorter.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

impl Frame for [u8] {
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.get(offset..offset.checked_add(N)?)?.try_into().ok()
    }
}

/// What the program knows about the interface's instances: the slots and
/// the VIP index. Maps in the kernel, plain arrays in the host tests.
pub trait Slots {
    /// The interface-wide settings.
    fn iface(&self) -> Option<IfaceConfig>;
    /// Slot `slot`'s configuration, if the index is in range.
    fn slot(&self, slot: u32) -> Option<SlotConfig>;
    /// The slot owning VIP `vip`, if any.
    fn vip_slot(&self, vip: &Addr) -> Option<u32>;
}

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers a reply can carry (RFC 8200 §4).
pub const IPPROTO_HOPOPTS: u8 = 0;
pub const IPPROTO_ROUTING: u8 = 43;
pub const IPPROTO_FRAGMENT: u8 = 44;
pub const IPPROTO_AH: u8 = 51;
pub const IPPROTO_DSTOPTS: u8 = 60;
/// TCP flags (RFC 9293 §3.1).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// ICMPv6 types (RFC 4443 §4, RFC 4861 §4).
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;
/// Neighbour Advertisement flags, first byte (RFC 4861 §4.4).
pub const NA_SOLICITED: u8 = 0x40;
/// Source and Target Link-Layer Address option types (RFC 4861 §4.6.1).
pub const NDP_OPT_SOURCE_LLADDR: u8 = 1;
pub const NDP_OPT_TARGET_LLADDR: u8 = 2;
/// RFC 4861 §7.1.1/§7.1.2: NDP messages with any other hop limit did not
/// come from a neighbour on the link, and are invalid.
pub const NDP_HOP_LIMIT: u8 = 255;
/// We only match IPv4 headers without options: Linux never adds options to
/// the echo replies it generates (`icmp_reply` copies none by default), so
/// anything longer is not an answer to our probes.
pub const IPV4_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;
pub const IPV6_HLEN: usize = 40;
/// Minimum TCP header (RFC 9293 §3.1).
pub const TCP_HLEN: usize = 20;
/// Extension headers we walk before giving up on an IPv6 packet: enough for
/// what a reply can carry (HbH, Routing, Fragment, AH, Destination Options),
/// and a small constant the verifier can unroll.
pub const MAX_IPV6_EXT: usize = 4;
/// Bytes of extension headers we walk at most: a cap that keeps the upper
/// layer's offset bounded for the verifier.
pub const MAX_IPV6_EXT_BYTES: usize = 256;
/// ICMPv6 NS and NA carry at least 24 bytes (RFC 4861 §7.1.1, §7.1.2).
const NDP_MIN_LEN: usize = 24;
/// Two tags: 802.1ad (QinQ) outer plus 802.1Q inner.
const MAX_VLAN_TAGS: usize = 2;

/// An authenticated probe the master's program answers itself: the IP
/// header's offset in the frame, its family, and the reply's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ip: usize,
    pub tag: [u8; 8],
    /// IPv6 (ICMPv6 right after the fixed header), not IPv4.
    pub v6: bool,
}

/// What the program made of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not for us: pass it on and count nothing.
    Other,
    /// The interface config is missing (an instant at attach): count it.
    NoConfig,
    /// A valid heartbeat reply for backup `slot` from its `peer`
    /// (`PEER_MASTER`/`PEER_WITNESS`).
    Reply {
        slot: u32,
        peer: u32,
        seq: u64,
        sent_ns: u64,
        mac: [u8; 6],
    },
    /// An echo reply from `peer`'s address naming backup `slot` with the
    /// wrong nonce or identifier: someone answering in the peer's name.
    Forged { slot: u32, peer: u32 },
    /// A vipwatch reply naming a slot that is not a backup here (one that
    /// stopped, or a forgery).
    UnknownSlot,
    /// A vipwatch probe for the VIP of master `slot`, from `src` to our
    /// address `dst`, with `nonce`: its gate decides, and the master learns
    /// its backup (and which of our addresses it probes). With
    /// the pair's key and a valid tag, `answer` is what the program answers
    /// with itself.
    Probe {
        slot: u32,
        src: Addr,
        dst: Addr,
        nonce: [u8; 8],
        answer: Option<Answer>,
    },
    /// A TCP segment from a client to the VIP of `key.slot`, which this host
    /// holds: `acked` if ACK is set, `ack` its acknowledgement number then
    /// (zero otherwise); `syn` when it opens a connection; `end` when it
    /// closes (FIN) or resets (RST) it.
    ///
    /// Not an `Option<[u8; 4]>`: LLVM may copy a `None`'s undefined payload
    /// out of a register it never set, which the verifier refuses (`R5
    /// !read_ok`, seen when the IPv4 and IPv6 paths were merged).
    Tcp {
        key: ConnKey,
        acked: bool,
        ack: [u8; 4],
        syn: bool,
        end: bool,
        /// The frame's source MAC (the client's, or its router's).
        mac: [u8; 6],
    },
    /// An ARP packet announcing `slot`'s VIP from a MAC that is not ours;
    /// `answer`: a reply to an RFC 5227 probe of ours (target IP 0.0.0.0,
    /// target MAC ours), what a holder's kernel sends when we ask.
    ///
    /// For IPv6, a Neighbour Advertisement for the VIP, or a Duplicate
    /// Address Detection solicitation of it (RFC 4862 §5.4.2), with `op`
    /// `[58, type]` (see `ClaimEvent::op`); `answer`: a solicited NA sent to
    /// our MAC, what a holder's kernel sends to our unicast solicitation.
    Claim {
        slot: u32,
        mac: [u8; 6],
        op: [u8; 2],
        answer: bool,
    },
}

/// Offset of the layer-3 header and its EtherType, after up to two VLAN tags.
#[inline(always)]
pub fn l3<F: Frame + ?Sized>(frame: &F) -> Option<(u16, usize)> {
    let mut offset = 12;
    let mut ethertype = u16::from_be_bytes(frame.load::<2>(offset)?);
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        // A tag is TPID (already read) + TCI; the next EtherType follows.
        offset += 4;
        ethertype = u16::from_be_bytes(frame.load::<2>(offset)?);
        tags += 1;
    }
    Some((ethertype, offset + 2))
}

/// Echo header and payload of an IPv4/ICMP packet at `ip`, if it is one we
/// can read: no options, not a fragment, code 0, long enough for our
/// payload.
#[inline(always)]
fn icmp_echo<F: Frame + ?Sized>(frame: &F, ip: usize) -> Option<IcmpEcho> {
    let hdr = frame.load::<IPV4_HLEN>(ip)?;
    // Version 4, IHL 5 (no options).
    if hdr[0] != 0x45 || hdr[9] != IPPROTO_ICMP {
        return None;
    }
    // Fragments (MF set or non-zero offset) never carry a whole payload.
    if (hdr[6] & 0x3f) != 0 || hdr[7] != 0 {
        return None;
    }
    let icmp = frame.load::<ICMP_HLEN>(ip + IPV4_HLEN)?;
    let payload = frame.load::<PROBE_PAYLOAD_LEN>(ip + IPV4_HLEN + ICMP_HLEN)?;
    let request = match (icmp[0], icmp[1]) {
        (ICMP_ECHO_REPLY, 0) => false,
        (ICMP_ECHO_REQUEST, 0) => true,
        _ => return None,
    };
    Some(IcmpEcho {
        src: addr_v4([hdr[12], hdr[13], hdr[14], hdr[15]]),
        dst: addr_v4([hdr[16], hdr[17], hdr[18], hdr[19]]),
        request,
        id: [icmp[4], icmp[5]],
        payload,
    })
}

/// Whether a reply carries the master's tag. Not inlined: SipHash's state
/// gets a stack frame of its own (the program's is 512 bytes).
#[inline(never)]
fn reply_tag_ok(key: &Key, payload: &[u8; PROBE_PAYLOAD_LEN]) -> bool {
    tag_of(payload) == auth_tag(key, AUTH_REPLY, payload)
}

/// A probe's reply tag, if the probe carries the backup's (see
/// [`reply_tag_ok`] for why it is not inlined).
#[inline(never)]
fn answer_tag(key: &Key, payload: &[u8; PROBE_PAYLOAD_LEN]) -> Option<[u8; 8]> {
    (tag_of(payload) == auth_tag(key, AUTH_PROBE, payload))
        .then(|| auth_tag(key, AUTH_REPLY, payload))
}

/// The tag bytes of a payload.
#[inline(always)]
fn tag_of(p: &[u8; PROBE_PAYLOAD_LEN]) -> [u8; 8] {
    let mut t = [0u8; 8];
    let mut k = 0;
    while k < 8 {
        t[k] = p[PROBE_TAG_AT + k];
        k += 1;
    }
    t
}

/// An ICMP or ICMPv6 echo (code 0) carrying what may be our payload.
struct IcmpEcho {
    src: Addr,
    dst: Addr,
    /// An echo request, not a reply.
    request: bool,
    id: [u8; 2],
    payload: [u8; PROBE_PAYLOAD_LEN],
}

/// Classifies a frame for the program.
#[inline(always)]
pub fn classify<F: Frame + ?Sized, S: Slots>(frame: &F, slots: &S) -> Seen {
    let Some((ethertype, off)) = l3(frame) else {
        return Seen::Other;
    };
    match ethertype {
        ETH_P_IPV4 => classify_ipv4(frame, off, slots),
        ETH_P_IPV6 => classify_ipv6(frame, off, slots),
        ETH_P_ARP => classify_arp(frame, off, slots),
        _ => Seen::Other,
    }
}

#[inline(always)]
fn classify_ipv4<F: Frame + ?Sized, S: Slots>(frame: &F, ip: usize, slots: &S) -> Seen {
    let Some(first) = frame.load::<1>(ip) else {
        return Seen::Other;
    };
    let Some(proto) = frame.load::<1>(ip + 9) else {
        return Seen::Other;
    };
    if first[0] >> 4 == 4 && proto[0] == IPPROTO_TCP {
        return classify_tcp(frame, ip, slots);
    }
    let Some(echo) = icmp_echo(frame, ip) else {
        return Seen::Other;
    };
    classify_echo(frame, &echo, Some((ip, false)), slots)
}

/// An echo request or reply of either family. `answer_at`: where the IP
/// header is and whether it is IPv6, if the program can answer the frame
/// itself (see `answer_probe` in `main.rs`).
#[inline(always)]
fn classify_echo<F: Frame + ?Sized, S: Slots>(
    frame: &F,
    echo: &IcmpEcho,
    answer_at: Option<(usize, bool)>,
    slots: &S,
) -> Seen {
    // Somebody else's ping (plain `ping`, no magic): not our business.
    let Some(payload) = ProbePayload::decode(&echo.payload) else {
        return Seen::Other;
    };
    if !echo.request {
        return classify_reply(frame, echo, &payload, slots);
    }
    let Some(slot) = slots.vip_slot(&payload.vip) else {
        return Seen::Other;
    };
    let Some(cfg) = slots.slot(slot).filter(|c| c.role == ROLE_MASTER) else {
        return Seen::Other;
    };
    // Keyed: a probe with the backup's tag is answered by the program,
    // with the master's; any other is left to the kernel, whose plain echo
    // the backup counts as forged.
    let answer = match answer_at {
        Some((ip, v6)) if cfg.flags & SLOT_AUTH != 0 => {
            answer_tag(&cfg.key, &echo.payload).map(|tag| Answer { ip, tag, v6 })
        }
        _ => None,
    };
    Seen::Probe {
        slot,
        src: echo.src,
        dst: echo.dst,
        nonce: payload.nonce.to_be_bytes(),
        answer,
    }
}

/// A TCP segment to a VIP this host holds. Any IPv4 header length; only
/// first fragments (the others carry no TCP header).
#[inline(always)]
fn classify_tcp<F: Frame + ?Sized, S: Slots>(frame: &F, ip: usize, slots: &S) -> Seen {
    let Some(hdr) = frame.load::<IPV4_HLEN>(ip) else {
        return Seen::Other;
    };
    if (hdr[6] & 0x1f) != 0 || hdr[7] != 0 {
        return Seen::Other;
    }
    let dst = addr_v4([hdr[16], hdr[17], hdr[18], hdr[19]]);
    let Some(slot) = held_slot(slots, &dst) else {
        return Seen::Other;
    };
    // Read at a fixed offset, before the variable one below: the verifier
    // follows a bounds check only on the pointer it was made with.
    let Some(mac) = frame.load::<6>(6) else {
        return Seen::Other;
    };
    // The IHL is at most 15 words: a bounded offset the verifier follows.
    let ihl = usize::from(hdr[0] & 0x0f) * 4;
    if ihl < IPV4_HLEN {
        return Seen::Other;
    }
    // sport(2) dport(2) seq(4) ack(4) offset(1) flags(1)
    let Some(tcp) = frame.load::<14>(ip + ihl) else {
        return Seen::Other;
    };
    tcp_segment(
        slot,
        addr_v4([hdr[12], hdr[13], hdr[14], hdr[15]]),
        &tcp,
        mac,
    )
}

/// The slot owning `vip`, if this host holds it.
#[inline(always)]
fn held_slot<S: Slots>(slots: &S, vip: &Addr) -> Option<u32> {
    let slot = slots.vip_slot(vip)?;
    slots
        .slot(slot)
        .filter(|c| c.flags & SLOT_HOLDING != 0)
        .map(|_| slot)
}

/// A segment of `client`'s from the start of its TCP header, of which we
/// read the first 14 bytes: sport(2) dport(2) seq(4) ack(4) offset(1)
/// flags(1).
#[inline(always)]
fn tcp_segment<const N: usize>(slot: u32, client: Addr, tcp: &[u8; N], mac: [u8; 6]) -> Seen {
    const { assert!(N >= 14) };
    let flags = tcp[13];
    Seen::Tcp {
        key: ConnKey {
            slot,
            client_port: [tcp[0], tcp[1]],
            vip_port: [tcp[2], tcp[3]],
            client,
        },
        acked: flags & TCP_ACK != 0,
        ack: if flags & TCP_ACK != 0 {
            [tcp[8], tcp[9], tcp[10], tcp[11]]
        } else {
            [0; 4]
        },
        syn: flags & TCP_SYN != 0,
        end: flags & (TCP_FIN | TCP_RST) != 0,
        mac,
    }
}

#[inline(always)]
fn classify_reply<F: Frame + ?Sized, S: Slots>(
    frame: &F,
    echo: &IcmpEcho,
    payload: &ProbePayload,
    slots: &S,
) -> Seen {
    let slot = u32::from(payload.slot);
    let Some(cfg) = slots.slot(slot).filter(|c| c.role == ROLE_BACKUP) else {
        return Seen::UnknownSlot;
    };
    let peer = if echo.src == cfg.master {
        PEER_MASTER
    } else if cfg.flags & SLOT_WITNESS != 0 && echo.src == cfg.witness {
        PEER_WITNESS
    } else {
        // Another host echoing our magic: not a peer of this slot.
        return Seen::Other;
    };
    if echo.id != cfg.echo_id || payload.nonce.to_be_bytes() != cfg.nonce {
        return Seen::Forged { slot, peer };
    }
    // Keyed: only the master's program can tag a reply (the witness is
    // not vipwatch, its replies stay plain).
    if peer == PEER_MASTER && cfg.flags & SLOT_AUTH != 0 && !reply_tag_ok(&cfg.key, &echo.payload) {
        return Seen::Forged { slot, peer };
    }
    let Some(mac) = frame.load::<6>(6) else {
        return Seen::Other;
    };
    Seen::Reply {
        slot,
        peer,
        seq: payload.seq,
        sent_ns: payload.sent_ns,
        mac,
    }
}

/// The upper-layer protocol of the IPv6 packet whose fixed header's next
/// header is `next`, and its offset in the frame, after at most
/// [`MAX_IPV6_EXT`] extension headers (RFC 8200 §4) of at most
/// [`MAX_IPV6_EXT_BYTES`] in all. `None` for more, for a truncated chain,
/// and for fragments other than atomic ones (RFC 8200 §4.5, RFC 6946): like
/// IPv4 fragments, they never carry a whole payload.
#[inline(always)]
fn ipv6_upper<F: Frame + ?Sized>(frame: &F, ip: usize, mut next: u8) -> Option<(u8, usize)> {
    let first = ip + IPV6_HLEN;
    // Kept apart from `first` and capped on every step: the verifier then
    // sees a bounded offset for every read below and after the walk.
    let mut ext = 0;
    let mut n = 0;
    while n <= MAX_IPV6_EXT {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // next(1) hdr_ext_len(1): in 8-octet units, not counting the first.
                let h = frame.load::<2>(first + ext)?;
                next = h[0];
                (usize::from(h[1]) + 1) * 8
            }
            IPPROTO_AH => {
                // next(1) payload_len(1): in 4-octet units, minus 2 (RFC 4302 §2.2).
                let h = frame.load::<2>(first + ext)?;
                next = h[0];
                (usize::from(h[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                // next(1) reserved(1) offset(13 bits) res(2) M(1) id(4)
                let h = frame.load::<4>(first + ext)?;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff9 != 0 {
                    return None;
                }
                next = h[0];
                8
            }
            _ => return Some((next, first + ext)),
        };
        // One header too many, or too long: give up.
        if n == MAX_IPV6_EXT {
            return None;
        }
        ext += len;
        if ext > MAX_IPV6_EXT_BYTES {
            return None;
        }
        n += 1;
    }
    None
}

#[inline(always)]
fn classify_ipv6<F: Frame + ?Sized, S: Slots>(frame: &F, ip: usize, slots: &S) -> Seen {
    // version/class/flow(4) payload_len(2) next(1) hop_limit(1)
    let Some(fixed) = frame.load::<8>(ip) else {
        return Seen::Other;
    };
    if fixed[0] >> 4 != 6 {
        return Seen::Other;
    }
    let Some(src) = frame.load::<16>(ip + 8) else {
        return Seen::Other;
    };
    // An IPv4-mapped source is never on the wire (Linux drops it in
    // ip6_rcv); in our one 16-byte form it would pass for an IPv4 peer.
    if addr_as_v4(&src).is_some() {
        return Seen::Other;
    }
    let Some((next, l4)) = ipv6_upper(frame, ip, fixed[6]) else {
        return Seen::Other;
    };
    match next {
        IPPROTO_ICMPV6 => classify_icmpv6(frame, ip, l4, &fixed, src, slots),
        IPPROTO_TCP => classify_tcp6(frame, ip, l4, src, slots),
        _ => Seen::Other,
    }
}

/// A TCP segment over IPv6 to a VIP this host holds (any extension headers
/// [`ipv6_upper`] follows).
#[inline(always)]
fn classify_tcp6<F: Frame + ?Sized, S: Slots>(
    frame: &F,
    ip: usize,
    l4: usize,
    src: Addr,
    slots: &S,
) -> Seen {
    let Some(dst) = frame.load::<16>(ip + 24) else {
        return Seen::Other;
    };
    if addr_as_v4(&dst).is_some() {
        return Seen::Other;
    }
    let Some(slot) = held_slot(slots, &dst) else {
        return Seen::Other;
    };
    // At a fixed offset, before the variable one (see classify_tcp).
    let Some(mac) = frame.load::<6>(6) else {
        return Seen::Other;
    };
    // The whole minimum header, though we read its first 14 bytes: a
    // segment cut short is not one.
    let Some(tcp) = frame.load::<TCP_HLEN>(l4) else {
        return Seen::Other;
    };
    tcp_segment(slot, src, &tcp, mac)
}

/// The ICMPv6 echo of `icmp_type` at `l4`, if it is long enough for our
/// payload.
#[inline(always)]
fn icmpv6_echo<F: Frame + ?Sized>(
    frame: &F,
    l4: usize,
    icmp_type: u8,
    src: Addr,
    dst: Addr,
) -> Option<IcmpEcho> {
    // type(1) code(1) checksum(2) id(2) seq(2), then our payload.
    let id = frame.load::<2>(l4 + 4)?;
    Some(IcmpEcho {
        src,
        dst,
        request: icmp_type == ICMPV6_ECHO_REQUEST,
        id,
        payload: frame.load::<PROBE_PAYLOAD_LEN>(l4 + ICMP_HLEN)?,
    })
}

/// ICMPv6 at `l4`: our echoes, and NDP claims of a VIP.
#[inline(always)]
fn classify_icmpv6<F: Frame + ?Sized, S: Slots>(
    frame: &F,
    ip: usize,
    l4: usize,
    fixed: &[u8; 8],
    src: Addr,
    slots: &S,
) -> Seen {
    // type(1) code(1) checksum(2)
    let Some(icmp) = frame.load::<4>(l4) else {
        return Seen::Other;
    };
    if icmp[1] != 0 {
        return Seen::Other;
    }
    match icmp[0] {
        ICMPV6_ECHO_REPLY | ICMPV6_ECHO_REQUEST => {
            let Some(dst) = frame.load::<16>(ip + 24) else {
                return Seen::Other;
            };
            let Some(echo) = icmpv6_echo(frame, l4, icmp[0], src, dst) else {
                return Seen::Other;
            };
            // The program rewrites only the plain shape our backups send:
            // ICMPv6 right after the fixed header.
            let answer_at = (l4 == ip + IPV6_HLEN).then_some((ip, true));
            classify_echo(frame, &echo, answer_at, slots)
        }
        ICMPV6_NEIGHBOR_ADVERT | ICMPV6_NEIGHBOR_SOLICIT if fixed[7] == NDP_HOP_LIMIT => {
            // The ICMPv6 message's length, from the IPv6 payload length:
            // what tells a Target Link-Layer Address option from padding.
            let end = ip + IPV6_HLEN + usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
            let len = end.saturating_sub(l4);
            if len < NDP_MIN_LEN {
                return Seen::Other;
            }
            classify_ndp(frame, l4, icmp[0], len, src, slots)
        }
        _ => Seen::Other,
    }
}

/// A Neighbour Advertisement or Solicitation at `l4`, `len` bytes of ICMPv6,
/// from IPv6 address `src`: the NDP analogue of an ARP claim.
#[inline(always)]
fn classify_ndp<F: Frame + ?Sized, S: Slots>(
    frame: &F,
    l4: usize,
    icmp_type: u8,
    len: usize,
    src: Addr,
    slots: &S,
) -> Seen {
    // type(1) code(1) checksum(2) flags or reserved(4) target(16)
    let Some(target) = frame.load::<16>(l4 + 8) else {
        return Seen::Other;
    };
    // The address the message claims, and the option that names the
    // claimant's MAC (0: none; the frame's source names it):
    // * an NA claims its target (RFC 4861 §7.2.5), in its Target
    //   Link-Layer Address option;
    // * a Duplicate Address Detection NS (RFC 4862 §5.4.2: from the
    //   unspecified address, so without options, RFC 4861 §4.3) claims its
    //   target;
    // * any other NS claims its source, if it names a MAC for it:
    //   receivers update their entry for the source from the Source
    //   Link-Layer Address option, and only from it (RFC 4861 §7.2.3), as
    //   ARP receivers do for an ARP request's sender. Its target it only
    //   asks about, which claims nothing.
    let (claimed, option) = match icmp_type {
        ICMPV6_NEIGHBOR_ADVERT => (target, NDP_OPT_TARGET_LLADDR),
        _ if src == [0; 16] => (target, 0),
        _ => (src, NDP_OPT_SOURCE_LLADDR),
    };
    // Not an IPv6 address of anyone's (see classify_ipv6): not an IPv4 VIP's.
    if addr_as_v4(&claimed).is_some() {
        return Seen::Other;
    }
    let Some(slot) = slots.vip_slot(&claimed) else {
        return Seen::Other;
    };
    let Some(iface) = slots.iface() else {
        return Seen::NoConfig;
    };
    // Ethernet destination(6) source(6), at fixed offsets (see classify_tcp).
    let Some(eth) = frame.load::<12>(0) else {
        return Seen::Other;
    };
    let eth_src = [eth[6], eth[7], eth[8], eth[9], eth[10], eth[11]];
    // A solicitation names its sender's MAC in its option or nowhere:
    // without one it is taken for ours, which the end drops (one branch
    // less than a flag: this program's stack is near the verifier's limit).
    let mut mac = if option == NDP_OPT_SOURCE_LLADDR {
        iface.our_mac
    } else {
        eth_src
    };
    // The claimant names its MAC in the link-layer address option, which
    // Linux puts first; a proxy or a bridge may send it from another
    // source MAC.
    if option != 0 && len >= NDP_MIN_LEN + 8 {
        let Some(opt) = frame.load::<8>(l4 + NDP_MIN_LEN) else {
            return Seen::Other;
        };
        if opt[0] == option && opt[1] == 1 {
            mac = [opt[2], opt[3], opt[4], opt[5], opt[6], opt[7]];
        }
    }
    let mut answer = false;
    if icmp_type == ICMPV6_NEIGHBOR_ADVERT {
        let Some(flags) = frame.load::<1>(l4 + 4) else {
            return Seen::Other;
        };
        // The holder's kernel answering our unicast solicitation: solicited,
        // to our MAC (the analogue of the ARP reply to our RFC 5227 probe).
        answer = flags[0] & NA_SOLICITED != 0 && eth[..6] == iface.our_mac;
    }
    // Our own announcements, and a backup's hand-back NA naming our MAC
    // (the VIP returned to us), are not claims (as ARP with sha == our MAC).
    if mac == iface.our_mac {
        return Seen::Other;
    }
    Seen::Claim {
        slot,
        mac,
        op: [IPPROTO_ICMPV6, icmp_type],
        answer,
    }
}

#[inline(always)]
fn classify_arp<F: Frame + ?Sized, S: Slots>(frame: &F, arp: usize, slots: &S) -> Seen {
    // htype(2) ptype(2) hlen(1) plen(1) op(2) sha(6) spa(4) tha(6) tpa(4)
    let Some(a) = frame.load::<28>(arp) else {
        return Seen::Other;
    };
    let ethernet_ipv4 = a[0..2] == [0, 1] && a[2..4] == [0x08, 0x00] && a[4] == 6 && a[5] == 4;
    if !ethernet_ipv4 {
        return Seen::Other;
    }
    let sha = [a[8], a[9], a[10], a[11], a[12], a[13]];
    let spa = [a[14], a[15], a[16], a[17]];
    // RFC 5227 probes have sender IP 0.0.0.0 and are not claims; an
    // announcement or any ARP with sender IP = a VIP is (RFC 5227 §2.4).
    let Some(slot) = slots.vip_slot(&addr_v4(spa)) else {
        return Seen::Other;
    };
    let Some(iface) = slots.iface() else {
        return Seen::NoConfig;
    };
    if sha == iface.our_mac {
        return Seen::Other;
    }
    let tha = [a[18], a[19], a[20], a[21], a[22], a[23]];
    let tpa = [a[24], a[25], a[26], a[27]];
    Seen::Claim {
        slot,
        mac: sha,
        op: [a[6], a[7]],
        answer: a[6..8] == [0, 2] && tpa == [0; 4] && tha == iface.our_mac,
    }
}

/// RFC 1624 eqn. 3: the Internet checksum `check` once one 16-bit word of
/// what it covers changes from `old` to `new`.
#[inline(always)]
pub fn csum_replace(check: u16, old: u16, new: u16) -> u16 {
    let mut sum = u32::from(!check) + u32::from(!old) + u32::from(new);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The ICMPv6 checksum (network byte order) of a probe the program turns
/// into its reply: the type word goes from echo request to echo reply and
/// the tag from `old_tag` to `new_tag`. Swapping the source and destination
/// addresses leaves the pseudo-header's sum (RFC 8200 §8.1) as it was, and
/// the hop limit is not covered.
#[inline(always)]
pub fn icmpv6_answer_checksum(check: [u8; 2], old_tag: [u8; 8], new_tag: [u8; 8]) -> [u8; 2] {
    let mut sum = csum_replace(
        u16::from_be_bytes(check),
        u16::from_be_bytes([ICMPV6_ECHO_REQUEST, 0]),
        u16::from_be_bytes([ICMPV6_ECHO_REPLY, 0]),
    );
    let mut k = 0;
    while k < 8 {
        sum = csum_replace(
            sum,
            u16::from_be_bytes([old_tag[k], old_tag[k + 1]]),
            u16::from_be_bytes([new_tag[k], new_tag[k + 1]]),
        );
        k += 2;
    }
    sum.to_be_bytes()
}

/// RTT in microseconds from the payload's send time, saturating at zero if
/// the clock reading is older than the send time (a forged payload).
#[inline(always)]
pub fn rtt_us(now_ns: u64, sent_ns: u64) -> u64 {
    now_ns.saturating_sub(sent_ns) / 1000
}

#[cfg(test)]
mod tests {
    use vipwatch_common::{MAX_SLOTS, ROLE_NONE, SLOT_GATE_CLOSED};

    use super::*;

    const MASTER: [u8; 4] = [192, 0, 2, 1];
    const WITNESS: [u8; 4] = [192, 0, 2, 254];
    const OTHER: [u8; 4] = [192, 0, 2, 9];
    const VIP: [u8; 4] = [192, 0, 2, 100];
    const MASTER_VIP: [u8; 4] = [192, 0, 2, 101];
    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const MASTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const ID: [u8; 2] = [0x12, 0x34];
    const NONCE: u64 = 0xfeed_f00d_dead_beef;
    /// The backup instance's slot, and a master instance's.
    const SLOT: u32 = 3;
    const MASTER_SLOT: u32 = 7;

    /// A backup instance in slot 3 (VIP .100, with a witness) and a master
    /// instance in slot 7 (VIP .101).
    struct Table {
        iface: Option<IfaceConfig>,
        slots: Vec<SlotConfig>,
    }

    impl Table {
        fn new() -> Self {
            let mut slots = vec![SlotConfig::default(); MAX_SLOTS as usize];
            slots[SLOT as usize] = SlotConfig {
                role: ROLE_BACKUP,
                flags: SLOT_WITNESS,
                master: addr_v4(MASTER),
                witness: addr_v4(WITNESS),
                vip: addr_v4(VIP),
                echo_id: ID,
                nonce: NONCE.to_be_bytes(),
                ..SlotConfig::default()
            };
            slots[MASTER_SLOT as usize] = SlotConfig {
                role: ROLE_MASTER,
                vip: addr_v4(MASTER_VIP),
                ..SlotConfig::default()
            };
            Self {
                iface: Some(IfaceConfig {
                    our_mac: OUR_MAC,
                    _pad: [0; 2],
                }),
                slots,
            }
        }
    }

    impl Slots for Table {
        fn iface(&self) -> Option<IfaceConfig> {
            self.iface
        }
        fn slot(&self, slot: u32) -> Option<SlotConfig> {
            self.slots.get(slot as usize).copied()
        }
        fn vip_slot(&self, vip: &Addr) -> Option<u32> {
            self.slots
                .iter()
                .position(|c| c.role != ROLE_NONE && c.vip == *vip)
                .and_then(|i| u32::try_from(i).ok())
        }
    }

    struct Echo {
        src: [u8; 4],
        icmp_type: u8,
        id: [u8; 2],
        payload: [u8; PROBE_PAYLOAD_LEN],
        vlans: &'static [u16],
        ihl_byte: u8,
        frag: [u8; 2],
    }

    fn payload(slot: u16, nonce: u64, vip: [u8; 4]) -> [u8; PROBE_PAYLOAD_LEN] {
        ProbePayload {
            slot,
            nonce,
            seq: 7,
            sent_ns: 5_000,
            vip: addr_v4(vip),
            tag: [0; 8],
        }
        .encode()
    }

    impl Default for Echo {
        fn default() -> Self {
            Self {
                src: MASTER,
                icmp_type: ICMP_ECHO_REPLY,
                id: ID,
                payload: payload(SLOT as u16, NONCE, VIP),
                vlans: &[],
                ihl_byte: 0x45,
                frag: [0x40, 0], // DF, as Linux sends
            }
        }
    }

    fn eth(src_mac: [u8; 6], vlans: &[u16], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&OUR_MAC);
        f.extend_from_slice(&src_mac);
        for tpid in vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn echo(e: Echo) -> Vec<u8> {
        let mut f = eth(MASTER_MAC, e.vlans, ETH_P_IPV4);
        let total = (IPV4_HLEN + ICMP_HLEN + PROBE_PAYLOAD_LEN) as u16;
        f.extend_from_slice(&[e.ihl_byte, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1]);
        f.extend_from_slice(&e.frag);
        f.extend_from_slice(&[64, IPPROTO_ICMP, 0, 0]);
        f.extend_from_slice(&e.src);
        f.extend_from_slice(&[192, 0, 2, 2]);
        f.extend_from_slice(&[e.icmp_type, 0, 0, 0]);
        f.extend_from_slice(&e.id);
        f.extend_from_slice(&[0, 7]);
        f.extend_from_slice(&e.payload);
        f
    }

    fn arp(sha: [u8; 6], spa: [u8; 4], op: u16) -> Vec<u8> {
        let mut f = eth(sha, &[], ETH_P_ARP);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4]);
        f.extend_from_slice(&op.to_be_bytes());
        f.extend_from_slice(&sha);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&spa);
        f
    }

    fn reply(peer: u32) -> Seen {
        Seen::Reply {
            slot: SLOT,
            peer,
            seq: 7,
            sent_ns: 5_000,
            mac: MASTER_MAC,
        }
    }

    #[test]
    fn valid_reply_from_master_is_counted_for_its_slot() {
        assert_eq!(
            classify(echo(Echo::default()).as_slice(), &Table::new()),
            reply(PEER_MASTER)
        );
    }

    #[test]
    fn valid_reply_from_witness_is_counted_only_when_configured() {
        let f = echo(Echo {
            src: WITNESS,
            ..Echo::default()
        });
        assert_eq!(classify(f.as_slice(), &Table::new()), reply(PEER_WITNESS));
        let mut t = Table::new();
        t.slots[SLOT as usize].flags = 0;
        assert_eq!(classify(f.as_slice(), &t), Seen::Other);
    }

    #[test]
    fn vlan_tags_are_skipped() {
        for vlans in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q]] {
            let f = echo(Echo {
                vlans,
                ..Echo::default()
            });
            assert_eq!(
                classify(f.as_slice(), &Table::new()),
                reply(PEER_MASTER),
                "{vlans:x?}"
            );
        }
        // A third tag is beyond what we parse: ignored, not misparsed.
        let f = echo(Echo {
            vlans: &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
            ..Echo::default()
        });
        assert_eq!(classify(f.as_slice(), &Table::new()), Seen::Other);
    }

    #[test]
    fn wrong_nonce_or_identifier_from_master_is_forged() {
        let forged = Seen::Forged {
            slot: SLOT,
            peer: PEER_MASTER,
        };
        let cases = [
            Echo {
                payload: payload(SLOT as u16, NONCE ^ 1, VIP),
                ..Echo::default()
            },
            Echo {
                id: [0xff, 0xff],
                ..Echo::default()
            },
        ];
        for e in cases {
            assert_eq!(classify(echo(e).as_slice(), &Table::new()), forged);
        }
    }

    #[test]
    fn replies_for_slots_that_are_not_backups_are_unknown() {
        for slot in [0, MASTER_SLOT as u16, MAX_SLOTS as u16, u16::MAX] {
            let f = echo(Echo {
                payload: payload(slot, NONCE, VIP),
                ..Echo::default()
            });
            assert_eq!(
                classify(f.as_slice(), &Table::new()),
                Seen::UnknownSlot,
                "{slot}"
            );
        }
    }

    #[test]
    fn other_traffic_is_ignored() {
        let not_ours = [
            // Another host's replies, even with our nonce.
            Echo {
                src: OTHER,
                ..Echo::default()
            },
            // Somebody else's plain ping to the master, even with our id.
            Echo {
                payload: [0x55; PROBE_PAYLOAD_LEN],
                ..Echo::default()
            },
            // A vipwatch probe for a VIP no master instance here holds.
            Echo {
                icmp_type: ICMP_ECHO_REQUEST,
                ..Echo::default()
            },
            // IP options and fragments.
            Echo {
                ihl_byte: 0x46,
                ..Echo::default()
            },
            Echo {
                frag: [0x20, 0],
                ..Echo::default()
            },
            Echo {
                frag: [0, 8],
                ..Echo::default()
            },
        ];
        for e in not_ours {
            assert_eq!(classify(echo(e).as_slice(), &Table::new()), Seen::Other);
        }
    }

    #[test]
    fn truncated_frames_are_ignored() {
        for full in [
            echo(Echo::default()),
            arp(MASTER_MAC, VIP, 1),
            echo(Echo {
                icmp_type: ICMP_ECHO_REQUEST,
                payload: payload(1, 1, MASTER_VIP),
                ..Echo::default()
            }),
        ] {
            for len in 0..full.len() {
                assert_eq!(
                    classify(&full[..len], &Table::new()),
                    Seen::Other,
                    "len {len}"
                );
            }
        }
    }

    #[test]
    fn arp_claims_of_a_vip_by_others_are_seen_for_its_slot() {
        let t = Table::new();
        assert_eq!(
            classify(arp(MASTER_MAC, VIP, 1).as_slice(), &t),
            Seen::Claim {
                slot: SLOT,
                mac: MASTER_MAC,
                op: [0, 1],
                answer: false,
            }
        );
        assert_eq!(
            classify(arp(MASTER_MAC, MASTER_VIP, 2).as_slice(), &t),
            Seen::Claim {
                slot: MASTER_SLOT,
                mac: MASTER_MAC,
                op: [0, 2],
                answer: false,
            }
        );
        // A holder's answer to our RFC 5227 probe: to us, for 0.0.0.0.
        let mut answer = arp(MASTER_MAC, VIP, 2);
        let tha = answer.len() - 10;
        answer[tha..tha + 6].copy_from_slice(&OUR_MAC);
        answer[tha + 6..].copy_from_slice(&[0; 4]);
        assert_eq!(
            classify(answer.as_slice(), &t),
            Seen::Claim {
                slot: SLOT,
                mac: MASTER_MAC,
                op: [0, 2],
                answer: true,
            }
        );
        // Our own announcements, other addresses and RFC 5227 probes are not.
        assert_eq!(classify(arp(OUR_MAC, VIP, 1).as_slice(), &t), Seen::Other);
        assert_eq!(
            classify(arp(MASTER_MAC, MASTER, 1).as_slice(), &t),
            Seen::Other
        );
        assert_eq!(
            classify(arp(MASTER_MAC, [0; 4], 1).as_slice(), &t),
            Seen::Other
        );
        // Without the interface config we cannot tell ours from theirs.
        let no_iface = Table { iface: None, ..t };
        assert_eq!(
            classify(arp(MASTER_MAC, VIP, 1).as_slice(), &no_iface),
            Seen::NoConfig
        );
    }

    const KEY: vipwatch_common::siphash::Key = vipwatch_common::siphash::Key {
        k0: 0x1111_2222_3333_4444,
        k1: 0x5555_6666_7777_8888,
    };

    /// `p` with its tag in `domain` under `key`.
    fn tagged(
        mut p: [u8; PROBE_PAYLOAD_LEN],
        domain: u64,
        key: &vipwatch_common::siphash::Key,
    ) -> [u8; PROBE_PAYLOAD_LEN] {
        let tag = auth_tag(key, domain, &p);
        p[PROBE_TAG_AT..].copy_from_slice(&tag);
        p
    }

    /// With `KEY` on the master's slot of `t`, a reply (`with` wraps the
    /// payload in a frame) counts only with the reply tag under `KEY` for
    /// this very payload: our probe's echo, an untagged reply, one tagged
    /// under another key and one whose tag was made for another sequence
    /// number are all forged.
    fn assert_only_tagged_replies_count(
        t: &Table,
        with: impl Fn([u8; PROBE_PAYLOAD_LEN]) -> Vec<u8>,
        plain: [u8; PROBE_PAYLOAD_LEN],
    ) {
        assert_eq!(
            classify(with(tagged(plain, AUTH_REPLY, &KEY)).as_slice(), t),
            reply(PEER_MASTER)
        );
        let forged = Seen::Forged {
            slot: SLOT,
            peer: PEER_MASTER,
        };
        // The kernel's plain echo of our probe (its tag is the probe's).
        assert_eq!(
            classify(with(tagged(plain, AUTH_PROBE, &KEY)).as_slice(), t),
            forged
        );
        assert_eq!(classify(with(plain).as_slice(), t), forged);
        let other_key = vipwatch_common::siphash::Key { k0: 1, k1: 2 };
        assert_eq!(
            classify(with(tagged(plain, AUTH_REPLY, &other_key)).as_slice(), t),
            forged
        );
        let mut moved = tagged(plain, AUTH_REPLY, &KEY);
        moved[23] ^= 1;
        assert_eq!(classify(with(moved).as_slice(), t), forged);
    }

    #[test]
    fn with_a_key_only_the_master_s_tagged_replies_count() {
        let mut t = Table::new();
        t.slots[SLOT as usize].flags |= SLOT_AUTH;
        t.slots[SLOT as usize].key = KEY;
        let with = |p| {
            echo(Echo {
                payload: p,
                ..Echo::default()
            })
        };
        let plain = payload(SLOT as u16, NONCE, VIP);
        assert_only_tagged_replies_count(&t, with, plain);
        // The witness is not vipwatch: its plain replies still count.
        let witness = echo(Echo {
            src: WITNESS,
            payload: plain,
            ..Echo::default()
        });
        assert_eq!(classify(witness.as_slice(), &t), reply(PEER_WITNESS));
    }

    #[test]
    fn with_a_key_the_master_answers_tagged_probes_itself() {
        let mut t = Table::new();
        t.slots[MASTER_SLOT as usize].flags |= SLOT_AUTH;
        t.slots[MASTER_SLOT as usize].key = KEY;
        let probe = |p| {
            echo(Echo {
                icmp_type: ICMP_ECHO_REQUEST,
                payload: p,
                ..Echo::default()
            })
        };
        let plain = payload(42, 1, MASTER_VIP);
        let good = tagged(plain, AUTH_PROBE, &KEY);
        let Seen::Probe { answer, .. } = classify(probe(good).as_slice(), &t) else {
            panic!("a probe");
        };
        assert_eq!(
            answer,
            Some(Answer {
                ip: 14,
                tag: auth_tag(&KEY, AUTH_REPLY, &good),
                v6: false,
            })
        );
        for bad in [
            plain,
            tagged(
                plain,
                AUTH_PROBE,
                &vipwatch_common::siphash::Key { k0: 9, k1: 9 },
            ),
        ] {
            let Seen::Probe { answer, .. } = classify(probe(bad).as_slice(), &t) else {
                panic!("a probe");
            };
            assert_eq!(answer, None, "left to the kernel");
        }
    }

    #[test]
    fn probes_for_a_master_slot_s_vip_reach_its_gate() {
        let probe = |vip| {
            echo(Echo {
                icmp_type: ICMP_ECHO_REQUEST,
                payload: payload(42, 1, vip),
                ..Echo::default()
            })
        };
        let mut t = Table::new();
        let seen = Seen::Probe {
            slot: MASTER_SLOT,
            src: addr_v4(MASTER),
            dst: addr_v4([192, 0, 2, 2]),
            nonce: 1u64.to_be_bytes(),
            answer: None,
        };
        assert_eq!(classify(probe(MASTER_VIP).as_slice(), &t), seen);
        // The gate flag is the program's business, not the classifier's.
        t.slots[MASTER_SLOT as usize].flags = SLOT_GATE_CLOSED;
        assert_eq!(classify(probe(MASTER_VIP).as_slice(), &t), seen);
        // A backup slot's VIP has no gate.
        assert_eq!(classify(probe(VIP).as_slice(), &t), Seen::Other);
        let plain_ping = echo(Echo {
            icmp_type: ICMP_ECHO_REQUEST,
            payload: [0x55; PROBE_PAYLOAD_LEN],
            ..Echo::default()
        });
        assert_eq!(classify(plain_ping.as_slice(), &t), Seen::Other);
    }

    const CLIENT: [u8; 4] = [192, 0, 2, 10];

    /// A client's TCP segment to `dst`, with `flags` and an IP header of
    /// `ihl_words` 32-bit words.
    fn tcp(dst: [u8; 4], flags: u8, ihl_words: u8) -> Vec<u8> {
        let mut f = eth(MASTER_MAC, &[], ETH_P_IPV4);
        let ihl = usize::from(ihl_words) * 4;
        let total = (ihl + 20) as u16;
        f.extend_from_slice(&[0x40 | ihl_words, 0]);
        f.extend_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[0, 1, 0x40, 0, 64, IPPROTO_TCP, 0, 0]);
        f.extend_from_slice(&CLIENT);
        f.extend_from_slice(&dst);
        f.extend(std::iter::repeat_n(1u8, ihl - IPV4_HLEN)); // options (NOPs)
        f.extend_from_slice(&40000u16.to_be_bytes());
        f.extend_from_slice(&6379u16.to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 9]); // seq
        f.extend_from_slice(&[0xa0, 0xb0, 0xc0, 0xd0]); // ack
        f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        f
    }

    fn holding_table() -> Table {
        let mut t = Table::new();
        t.slots[MASTER_SLOT as usize].flags = SLOT_HOLDING;
        t
    }

    fn conn() -> ConnKey {
        ConnKey {
            slot: MASTER_SLOT,
            client_port: 40000u16.to_be_bytes(),
            vip_port: 6379u16.to_be_bytes(),
            client: addr_v4(CLIENT),
        }
    }

    #[test]
    fn tcp_to_a_held_vip_is_a_connection_with_its_ack() {
        let t = holding_table();
        for ihl_words in [5, 6, 15] {
            assert_eq!(
                classify(tcp(MASTER_VIP, TCP_ACK, ihl_words).as_slice(), &t),
                Seen::Tcp {
                    key: conn(),
                    acked: true,
                    ack: [0xa0, 0xb0, 0xc0, 0xd0],
                    syn: false,
                    end: false,
                    mac: MASTER_MAC,
                },
                "IHL {ihl_words}"
            );
        }
        // A SYN has no ACK yet.
        assert_eq!(
            classify(tcp(MASTER_VIP, TCP_SYN, 5).as_slice(), &t),
            Seen::Tcp {
                key: conn(),
                acked: false,
                ack: [0; 4],
                syn: true,
                end: false,
                mac: MASTER_MAC,
            }
        );
        for flags in [TCP_FIN | TCP_ACK, TCP_RST, TCP_RST | TCP_ACK] {
            let Seen::Tcp { end, .. } = classify(tcp(MASTER_VIP, flags, 5).as_slice(), &t) else {
                panic!("a connection")
            };
            assert!(end, "flags {flags:#x} end the connection");
        }
    }

    #[test]
    fn tcp_is_recorded_only_for_vips_this_host_holds() {
        // Not holding: nothing recorded.
        assert_eq!(
            classify(tcp(MASTER_VIP, TCP_ACK, 5).as_slice(), &Table::new()),
            Seen::Other
        );
        // Not a VIP of ours.
        assert_eq!(
            classify(tcp(OTHER, TCP_ACK, 5).as_slice(), &holding_table()),
            Seen::Other
        );
        // Bad IHL, later fragments, truncated headers.
        let mut bad_ihl = tcp(MASTER_VIP, TCP_ACK, 5);
        bad_ihl[14] = 0x44;
        assert_eq!(classify(bad_ihl.as_slice(), &holding_table()), Seen::Other);
        let mut fragment = tcp(MASTER_VIP, TCP_ACK, 5);
        fragment[14 + 7] = 1;
        assert_eq!(classify(fragment.as_slice(), &holding_table()), Seen::Other);
        let full = tcp(MASTER_VIP, TCP_ACK, 6);
        for len in 0..full.len() - 6 {
            assert_eq!(
                classify(&full[..len], &holding_table()),
                Seen::Other,
                "len {len}"
            );
        }
    }

    // IPv6: the same rules, with 2001:db8::/32 addresses (RFC 3849).

    /// 2001:db8::`host`.
    const fn v6(host: u16) -> Addr {
        let h = host.to_be_bytes();
        [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, h[0], h[1],
        ]
    }

    const MASTER6: Addr = v6(1);
    const BACKUP6: Addr = v6(2);
    const WITNESS6: Addr = v6(0xfe);
    const OTHER6: Addr = v6(9);
    const VIP6: Addr = v6(0x100);
    const MASTER_VIP6: Addr = v6(0x101);
    const CLIENT6: Addr = v6(0x10);
    /// A bridge or proxy forwarding someone else's NDP.
    const BRIDGE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

    impl Table {
        /// [`Table::new`] with IPv6 peers and VIPs.
        fn v6() -> Self {
            let mut t = Self::new();
            let backup = &mut t.slots[SLOT as usize];
            backup.master = MASTER6;
            backup.witness = WITNESS6;
            backup.vip = VIP6;
            t.slots[MASTER_SLOT as usize].vip = MASTER_VIP6;
            t
        }
    }

    /// An extension header (RFC 8200 §4): its protocol number and its bytes,
    /// the first of which (next header) the frame builder fills in.
    type Ext = (u8, Vec<u8>);

    fn hop_by_hop() -> Ext {
        // PadN over the 6 bytes after next/len.
        (IPPROTO_HOPOPTS, vec![0, 0, 1, 4, 0, 0, 0, 0])
    }

    /// Destination Options of `units` 8-octet units after the first.
    fn dst_opts(units: u8) -> Ext {
        let mut h = vec![0, units, 1, 4, 0, 0, 0, 0];
        h.extend(std::iter::repeat_n(0u8, usize::from(units) * 8));
        (IPPROTO_DSTOPTS, h)
    }

    fn routing() -> Ext {
        // Segments left 0: the destination processes the next header.
        (IPPROTO_ROUTING, vec![0, 0, 4, 0, 0, 0, 0, 0])
    }

    /// A Fragment header with offset/res/M word `word`.
    fn fragment(word: u16) -> Ext {
        let w = word.to_be_bytes();
        (IPPROTO_FRAGMENT, vec![0, 0, w[0], w[1], 0, 0, 0, 9])
    }

    fn auth_header() -> Ext {
        // Payload length 4: (4 + 2) * 4 = 24 bytes.
        let mut h = vec![0, 4, 0, 0];
        h.extend_from_slice(&[0; 20]);
        (IPPROTO_AH, h)
    }

    /// The Internet checksum over `bytes` as 16-bit words.
    fn sum16(bytes: &[u8]) -> u16 {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// The ICMPv6 pseudo-header (RFC 8200 §8.1) followed by `icmp`.
    fn with_pseudo(src: &Addr, dst: &Addr, icmp: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(src);
        b.extend_from_slice(dst);
        b.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        b.extend_from_slice(&[0, 0, 0, IPPROTO_ICMPV6]);
        b.extend_from_slice(icmp);
        b
    }

    struct Ip6 {
        eth_dst: [u8; 6],
        eth_src: [u8; 6],
        vlans: &'static [u16],
        src: Addr,
        dst: Addr,
        hop_limit: u8,
        exts: Vec<Ext>,
    }

    impl Default for Ip6 {
        fn default() -> Self {
            Self {
                eth_dst: OUR_MAC,
                eth_src: MASTER_MAC,
                vlans: &[],
                src: MASTER6,
                dst: BACKUP6,
                hop_limit: 64,
                exts: Vec::new(),
            }
        }
    }

    /// An IPv6 frame carrying `body` of protocol `proto` after `h.exts`; an
    /// ICMPv6 body gets its checksum.
    fn ip6(h: Ip6, proto: u8, body: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&h.eth_dst);
        f.extend_from_slice(&h.eth_src);
        for tpid in h.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&[0x00, 0x2a]);
        }
        f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
        let ext_len: usize = h.exts.iter().map(|(_, b)| b.len()).sum();
        let first = h.exts.first().map_or(proto, |(p, _)| *p);
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((ext_len + body.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[first, h.hop_limit]);
        f.extend_from_slice(&h.src);
        f.extend_from_slice(&h.dst);
        for (k, (_, bytes)) in h.exts.iter().enumerate() {
            let next = h.exts.get(k + 1).map_or(proto, |(p, _)| *p);
            f.push(next);
            f.extend_from_slice(&bytes[1..]);
        }
        let mut body = body.to_vec();
        if proto == IPPROTO_ICMPV6 {
            let sum = !sum16(&with_pseudo(&h.src, &h.dst, &body));
            body[2..4].copy_from_slice(&sum.to_be_bytes());
        }
        f.extend_from_slice(&body);
        f
    }

    /// An ICMPv6 echo of `icmp_type` with identifier `id` and `payload`.
    fn echo6_body(icmp_type: u8, id: [u8; 2], payload: &[u8; PROBE_PAYLOAD_LEN]) -> Vec<u8> {
        let mut b = vec![icmp_type, 0, 0, 0, id[0], id[1], 0, 7];
        b.extend_from_slice(payload);
        b
    }

    /// The master's reply to slot 3's probe, as `h` carries it.
    fn reply6(h: Ip6) -> Vec<u8> {
        ip6(
            h,
            IPPROTO_ICMPV6,
            &echo6_body(ICMPV6_ECHO_REPLY, ID, &payload6(SLOT as u16, NONCE, VIP6)),
        )
    }

    fn payload6(slot: u16, nonce: u64, vip: Addr) -> [u8; PROBE_PAYLOAD_LEN] {
        ProbePayload {
            slot,
            nonce,
            seq: 7,
            sent_ns: 5_000,
            vip,
            tag: [0; 8],
        }
        .encode()
    }

    /// A backup's probe with `payload`, to the master.
    fn probe6(h: Ip6, payload: &[u8; PROBE_PAYLOAD_LEN]) -> Vec<u8> {
        let h = Ip6 {
            eth_src: BRIDGE_MAC,
            src: BACKUP6,
            dst: MASTER6,
            ..h
        };
        ip6(
            h,
            IPPROTO_ICMPV6,
            &echo6_body(ICMPV6_ECHO_REQUEST, ID, payload),
        )
    }

    #[test]
    fn ipv6_replies_from_master_and_witness_are_counted() {
        let t = Table::v6();
        assert_eq!(
            classify(reply6(Ip6::default()).as_slice(), &t),
            reply(PEER_MASTER)
        );
        let witness = reply6(Ip6 {
            src: WITNESS6,
            ..Ip6::default()
        });
        assert_eq!(classify(witness.as_slice(), &t), reply(PEER_WITNESS));
        let mut no_witness = Table::v6();
        no_witness.slots[SLOT as usize].flags = 0;
        assert_eq!(classify(witness.as_slice(), &no_witness), Seen::Other);
        // An IPv4 table's peers are not IPv6 addresses.
        assert_eq!(
            classify(reply6(Ip6::default()).as_slice(), &Table::new()),
            Seen::Other
        );
    }

    #[test]
    fn ipv6_forged_and_unknown_replies() {
        let t = Table::v6();
        let with = |id, p: [u8; PROBE_PAYLOAD_LEN]| {
            ip6(
                Ip6::default(),
                IPPROTO_ICMPV6,
                &echo6_body(ICMPV6_ECHO_REPLY, id, &p),
            )
        };
        let forged = Seen::Forged {
            slot: SLOT,
            peer: PEER_MASTER,
        };
        let good = payload6(SLOT as u16, NONCE, VIP6);
        assert_eq!(
            classify(
                with(ID, payload6(SLOT as u16, NONCE ^ 1, VIP6)).as_slice(),
                &t
            ),
            forged
        );
        assert_eq!(classify(with([0xff, 0xff], good).as_slice(), &t), forged);
        for slot in [0, MASTER_SLOT as u16, MAX_SLOTS as u16, u16::MAX] {
            assert_eq!(
                classify(with(ID, payload6(slot, NONCE, VIP6)).as_slice(), &t),
                Seen::UnknownSlot,
                "{slot}"
            );
        }
    }

    #[test]
    fn ipv6_other_traffic_is_ignored() {
        let t = Table::v6();
        // Another host's replies, even with our nonce.
        let other = reply6(Ip6 {
            src: OTHER6,
            ..Ip6::default()
        });
        assert_eq!(classify(other.as_slice(), &t), Seen::Other);
        // Somebody else's plain ping and its reply, even with our id.
        for icmp_type in [ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST] {
            let plain = ip6(
                Ip6::default(),
                IPPROTO_ICMPV6,
                &echo6_body(icmp_type, ID, &[0x55; PROBE_PAYLOAD_LEN]),
            );
            assert_eq!(classify(plain.as_slice(), &t), Seen::Other);
        }
        // A non-zero code, and a version that is not 6.
        let mut code = reply6(Ip6::default());
        code[ETH_HLEN + IPV6_HLEN + 1] = 1;
        assert_eq!(classify(code.as_slice(), &t), Seen::Other);
        let mut version = reply6(Ip6::default());
        version[ETH_HLEN] = 0x40;
        assert_eq!(classify(version.as_slice(), &t), Seen::Other);
        // UDP is nobody's business here.
        let udp = ip6(Ip6::default(), 17, &[0; 64]);
        assert_eq!(classify(udp.as_slice(), &t), Seen::Other);
    }

    #[test]
    fn ipv6_extension_headers_a_reply_can_carry_are_followed() {
        let t = Table::v6();
        let chains = [
            vec![hop_by_hop()],
            vec![dst_opts(0)],
            vec![dst_opts(3)],
            vec![routing()],
            vec![auth_header()],
            // Atomic fragments (RFC 6946): offset 0, M clear.
            vec![fragment(0)],
            // Reserved bits do not make a fragment.
            vec![fragment(0b110)],
            vec![hop_by_hop(), routing(), fragment(0), dst_opts(0)],
            // Exactly the byte cap: 256 bytes.
            vec![dst_opts(31)],
        ];
        for exts in chains {
            let names: Vec<u8> = exts.iter().map(|(p, _)| *p).collect();
            let f = reply6(Ip6 {
                exts,
                ..Ip6::default()
            });
            assert_eq!(classify(f.as_slice(), &t), reply(PEER_MASTER), "{names:?}");
        }
        let ignored = [
            // Real fragments: a later one, a first one (M set).
            vec![fragment(8 << 3)],
            vec![fragment(1)],
            vec![hop_by_hop(), fragment(1)],
            // One header too many.
            vec![
                hop_by_hop(),
                routing(),
                dst_opts(0),
                fragment(0),
                dst_opts(0),
            ],
            // Beyond the byte cap.
            vec![dst_opts(32)],
            vec![dst_opts(31), hop_by_hop()],
        ];
        for exts in ignored {
            let names: Vec<u8> = exts.iter().map(|(p, _)| *p).collect();
            let f = reply6(Ip6 {
                exts,
                ..Ip6::default()
            });
            assert_eq!(classify(f.as_slice(), &t), Seen::Other, "{names:?}");
        }
    }

    #[test]
    fn ipv6_vlan_tags_are_skipped() {
        for vlans in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q]] {
            let f = reply6(Ip6 {
                vlans,
                ..Ip6::default()
            });
            assert_eq!(
                classify(f.as_slice(), &Table::v6()),
                reply(PEER_MASTER),
                "{vlans:x?}"
            );
        }
    }

    #[test]
    fn ipv6_probes_for_a_master_slot_s_vip_reach_its_gate() {
        let mut t = Table::v6();
        let seen = Seen::Probe {
            slot: MASTER_SLOT,
            src: BACKUP6,
            dst: MASTER6,
            nonce: 1u64.to_be_bytes(),
            answer: None,
        };
        let probe = |vip| probe6(Ip6::default(), &payload6(42, 1, vip));
        assert_eq!(classify(probe(MASTER_VIP6).as_slice(), &t), seen);
        t.slots[MASTER_SLOT as usize].flags = SLOT_GATE_CLOSED;
        assert_eq!(classify(probe(MASTER_VIP6).as_slice(), &t), seen);
        // Through extension headers too.
        let hbh = probe6(
            Ip6 {
                exts: vec![hop_by_hop()],
                ..Ip6::default()
            },
            &payload6(42, 1, MASTER_VIP6),
        );
        assert_eq!(classify(hbh.as_slice(), &t), seen);
        // A backup slot's VIP has no gate, nor has a VIP nobody here owns.
        assert_eq!(classify(probe(VIP6).as_slice(), &t), Seen::Other);
        assert_eq!(classify(probe(OTHER6).as_slice(), &t), Seen::Other);
        let plain_ping = probe6(Ip6::default(), &[0x55; PROBE_PAYLOAD_LEN]);
        assert_eq!(classify(plain_ping.as_slice(), &t), Seen::Other);
    }

    #[test]
    fn ipv6_with_a_key_only_the_master_s_tagged_replies_count() {
        let mut t = Table::v6();
        t.slots[SLOT as usize].flags |= SLOT_AUTH;
        t.slots[SLOT as usize].key = KEY;
        let with = |p: [u8; PROBE_PAYLOAD_LEN]| {
            ip6(
                Ip6::default(),
                IPPROTO_ICMPV6,
                &echo6_body(ICMPV6_ECHO_REPLY, ID, &p),
            )
        };
        assert_only_tagged_replies_count(&t, with, payload6(SLOT as u16, NONCE, VIP6));
    }

    /// What `answer_probe_v6` in `main.rs` does to the frame, on the host:
    /// the same moves, and the same checksum update.
    fn rewrite_v6(f: &mut [u8], a: Answer) {
        let dst: [u8; 6] = f[..6].try_into().unwrap();
        f.copy_within(6..12, 0);
        f[6..12].copy_from_slice(&dst);
        let ip = a.ip;
        let src: [u8; 16] = f[ip + 8..ip + 24].try_into().unwrap();
        f.copy_within(ip + 24..ip + 40, ip + 8);
        f[ip + 24..ip + 40].copy_from_slice(&src);
        f[ip + 7] = 64;
        let icmp = ip + IPV6_HLEN;
        let tag_at = icmp + ICMP_HLEN + PROBE_TAG_AT;
        let old: [u8; 8] = f[tag_at..tag_at + 8].try_into().unwrap();
        f[tag_at..tag_at + 8].copy_from_slice(&a.tag);
        let sum = icmpv6_answer_checksum([f[icmp + 2], f[icmp + 3]], old, a.tag);
        f[icmp] = ICMPV6_ECHO_REPLY;
        f[icmp + 2..icmp + 4].copy_from_slice(&sum);
    }

    #[test]
    fn ipv6_with_a_key_the_master_answers_tagged_probes_itself() {
        let mut t = Table::v6();
        t.slots[MASTER_SLOT as usize].flags |= SLOT_AUTH;
        t.slots[MASTER_SLOT as usize].key = KEY;
        let plain = payload6(42, 1, MASTER_VIP6);
        let good = tagged(plain, AUTH_PROBE, &KEY);
        let reply_tag = auth_tag(&KEY, AUTH_REPLY, &good);
        for (vlans, ip) in [(&[][..], 14), (&[ETH_P_8021Q][..], 18)] {
            let h = Ip6 {
                vlans,
                ..Ip6::default()
            };
            let mut f = probe6(h, &good);
            let Seen::Probe { answer, .. } = classify(f.as_slice(), &t) else {
                panic!("a probe");
            };
            let a = Answer {
                ip,
                tag: reply_tag,
                v6: true,
            };
            assert_eq!(answer, Some(a));
            // The rewritten frame is the reply the master's kernel would
            // have sent with the master's tag, checksum included.
            rewrite_v6(&mut f, a);
            let mut tagged_reply = good;
            tagged_reply[PROBE_TAG_AT..].copy_from_slice(&reply_tag);
            let expected = ip6(
                Ip6 {
                    eth_dst: BRIDGE_MAC,
                    eth_src: OUR_MAC,
                    vlans,
                    src: MASTER6,
                    dst: BACKUP6,
                    hop_limit: 64,
                    exts: Vec::new(),
                },
                IPPROTO_ICMPV6,
                &echo6_body(ICMPV6_ECHO_REPLY, ID, &tagged_reply),
            );
            assert_eq!(f, expected);
        }
        // Untagged, or tagged with another key: left to the kernel.
        for bad in [plain, tagged(plain, AUTH_PROBE, &Key { k0: 9, k1: 9 })] {
            let Seen::Probe { answer, .. } = classify(probe6(Ip6::default(), &bad).as_slice(), &t)
            else {
                panic!("a probe");
            };
            assert_eq!(answer, None);
        }
        // With extension headers: still a probe, but the program does not
        // rewrite that shape; the kernel answers.
        let hbh = probe6(
            Ip6 {
                exts: vec![hop_by_hop()],
                ..Ip6::default()
            },
            &good,
        );
        let Seen::Probe { answer, .. } = classify(hbh.as_slice(), &t) else {
            panic!("a probe");
        };
        assert_eq!(answer, None);
    }

    #[test]
    fn checksum_updates_match_a_full_recompute() {
        // A small LCG: deterministic words without a dependency.
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 8) as u16
        };
        for round in 0..2000 {
            let mut words: Vec<u16> = (0..20).map(|_| next()).collect();
            // Edge words too: all ones and zero.
            if round % 7 == 0 {
                words[3] = 0xffff;
            }
            if round % 11 == 0 {
                words[5] = 0;
            }
            let bytes = |w: &[u16]| w.iter().flat_map(|v| v.to_be_bytes()).collect::<Vec<_>>();
            let check = !sum16(&bytes(&words));
            let k = usize::from(next()) % words.len();
            let old = words[k];
            words[k] = match round % 3 {
                0 => 0,
                1 => 0xffff,
                _ => next(),
            };
            let updated = csum_replace(check, old, words[k]);
            // Valid: the words and the checksum sum to all ones.
            let mut all = bytes(&words);
            all.extend_from_slice(&updated.to_be_bytes());
            assert_eq!(sum16(&all), 0xffff, "round {round}");
        }
    }

    #[test]
    fn ipv6_tcp_to_a_held_vip_is_a_connection() {
        let tcp6 = |h: Ip6, dst, flags| {
            let mut body = Vec::new();
            body.extend_from_slice(&40000u16.to_be_bytes());
            body.extend_from_slice(&6379u16.to_be_bytes());
            body.extend_from_slice(&[0, 0, 0, 9, 0xa0, 0xb0, 0xc0, 0xd0]);
            body.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
            ip6(
                Ip6 {
                    src: CLIENT6,
                    dst,
                    ..h
                },
                IPPROTO_TCP,
                &body,
            )
        };
        let mut t = Table::v6();
        t.slots[MASTER_SLOT as usize].flags = SLOT_HOLDING;
        let key = ConnKey {
            client: CLIENT6,
            ..conn()
        };
        let ack = Seen::Tcp {
            key,
            acked: true,
            ack: [0xa0, 0xb0, 0xc0, 0xd0],
            syn: false,
            end: false,
            mac: MASTER_MAC,
        };
        for exts in [vec![], vec![hop_by_hop()], vec![dst_opts(1), fragment(0)]] {
            let h = Ip6 {
                exts,
                ..Ip6::default()
            };
            assert_eq!(classify(tcp6(h, MASTER_VIP6, TCP_ACK).as_slice(), &t), ack);
        }
        assert_eq!(
            classify(tcp6(Ip6::default(), MASTER_VIP6, TCP_SYN).as_slice(), &t),
            Seen::Tcp {
                key,
                acked: false,
                ack: [0; 4],
                syn: true,
                end: false,
                mac: MASTER_MAC,
            }
        );
        let Seen::Tcp { end, .. } =
            classify(tcp6(Ip6::default(), MASTER_VIP6, TCP_RST).as_slice(), &t)
        else {
            panic!("a connection");
        };
        assert!(end);
        // Not held, not a VIP, a real fragment: nothing recorded.
        assert_eq!(
            classify(
                tcp6(Ip6::default(), MASTER_VIP6, TCP_ACK).as_slice(),
                &Table::v6()
            ),
            Seen::Other
        );
        assert_eq!(
            classify(tcp6(Ip6::default(), OTHER6, TCP_ACK).as_slice(), &t),
            Seen::Other
        );
        let frag = Ip6 {
            exts: vec![fragment(1)],
            ..Ip6::default()
        };
        assert_eq!(
            classify(tcp6(frag, MASTER_VIP6, TCP_ACK).as_slice(), &t),
            Seen::Other
        );
        // Every truncation, down to the last byte of the minimum header.
        let full = tcp6(Ip6::default(), MASTER_VIP6, TCP_ACK);
        for len in 0..full.len() {
            assert_eq!(classify(&full[..len], &t), Seen::Other, "len {len}");
        }
    }

    /// A Neighbour Advertisement for `target` with flags byte `flags` and,
    /// if any, a Target Link-Layer Address option naming `tlla`.
    fn na(h: Ip6, target: Addr, flags: u8, tlla: Option<[u8; 6]>) -> Vec<u8> {
        let mut b = vec![ICMPV6_NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0];
        b.extend_from_slice(&target);
        if let Some(mac) = tlla {
            b.extend_from_slice(&[NDP_OPT_TARGET_LLADDR, 1]);
            b.extend_from_slice(&mac);
        }
        ip6(h, IPPROTO_ICMPV6, &b)
    }

    /// NDP as Linux sends it: hop limit 255; unsolicited NAs to all nodes.
    fn ndp(eth_src: [u8; 6], src: Addr) -> Ip6 {
        Ip6 {
            eth_dst: [0x33, 0x33, 0, 0, 0, 1],
            eth_src,
            src,
            dst: [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            hop_limit: NDP_HOP_LIMIT,
            ..Ip6::default()
        }
    }

    /// A Neighbour Solicitation for `target` and, if any, a Source
    /// Link-Layer Address option naming `slla`.
    fn ns(h: Ip6, target: Addr, slla: Option<[u8; 6]>) -> Vec<u8> {
        let mut b = vec![ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&target);
        if let Some(mac) = slla {
            b.extend_from_slice(&[NDP_OPT_SOURCE_LLADDR, 1]);
            b.extend_from_slice(&mac);
        }
        ip6(h, IPPROTO_ICMPV6, &b)
    }

    #[test]
    fn ipv4_mapped_ipv6_addresses_are_nobody_s() {
        // ::ffff:a.b.c.d is never on the wire; in the 16-byte form it would
        // pass for the IPv4 master, VIP or client of an IPv4 slot.
        let t = Table::new();
        let mut held = Table::new();
        held.slots[MASTER_SLOT as usize].flags = SLOT_HOLDING;
        let reply = reply6(Ip6 {
            src: addr_v4(MASTER),
            ..Ip6::default()
        });
        assert_eq!(classify(reply.as_slice(), &t), Seen::Other);
        let claim = na(
            ndp(MASTER_MAC, MASTER6),
            addr_v4(VIP),
            NA_OVERRIDE,
            Some(MASTER_MAC),
        );
        assert_eq!(classify(claim.as_slice(), &t), Seen::Other);
        let mut seg = vec![0u8; 20];
        seg[12] = 0x50;
        seg[13] = TCP_ACK;
        let tcp = ip6(
            Ip6 {
                dst: addr_v4(MASTER_VIP),
                ..Ip6::default()
            },
            IPPROTO_TCP,
            &seg,
        );
        assert_eq!(classify(tcp.as_slice(), &held), Seen::Other);
    }

    const NA_OVERRIDE: u8 = 0x20;
    const NA_OP: [u8; 2] = [IPPROTO_ICMPV6, ICMPV6_NEIGHBOR_ADVERT];
    const NS_OP: [u8; 2] = [IPPROTO_ICMPV6, ICMPV6_NEIGHBOR_SOLICIT];

    #[test]
    fn ipv6_neighbour_advertisements_of_a_vip_are_claims() {
        let t = Table::v6();
        let claim = |slot, mac, answer| Seen::Claim {
            slot,
            mac,
            op: NA_OP,
            answer,
        };
        // Unsolicited, with the TLLA option: the option names the claimant,
        // even when a bridge forwards it.
        for eth_src in [MASTER_MAC, BRIDGE_MAC] {
            let f = na(ndp(eth_src, MASTER6), VIP6, NA_OVERRIDE, Some(MASTER_MAC));
            assert_eq!(classify(f.as_slice(), &t), claim(SLOT, MASTER_MAC, false));
        }
        let f = na(
            ndp(MASTER_MAC, MASTER6),
            MASTER_VIP6,
            NA_OVERRIDE,
            Some(MASTER_MAC),
        );
        assert_eq!(
            classify(f.as_slice(), &t),
            claim(MASTER_SLOT, MASTER_MAC, false)
        );
        // Without the option, or with another first, the frame's source.
        let f = na(ndp(BRIDGE_MAC, MASTER6), VIP6, NA_OVERRIDE, None);
        assert_eq!(classify(f.as_slice(), &t), claim(SLOT, BRIDGE_MAC, false));
        let mut slla = na(
            ndp(BRIDGE_MAC, MASTER6),
            VIP6,
            NA_OVERRIDE,
            Some(MASTER_MAC),
        );
        let opt = slla.len() - 8;
        slla[opt] = 1;
        assert_eq!(
            classify(slla.as_slice(), &t),
            claim(SLOT, BRIDGE_MAC, false)
        );
        // Ethernet padding after an NA without options is not an option.
        let mut padded = na(ndp(BRIDGE_MAC, MASTER6), VIP6, NA_OVERRIDE, None);
        padded.extend_from_slice(&[NDP_OPT_TARGET_LLADDR, 1, 2, 0, 0, 0, 0, 0x77]);
        assert_eq!(
            classify(padded.as_slice(), &t),
            claim(SLOT, BRIDGE_MAC, false)
        );
        // Solicited, to our MAC: the holder answering our solicitation.
        let to_us = Ip6 {
            eth_dst: OUR_MAC,
            dst: BACKUP6,
            ..ndp(MASTER_MAC, MASTER6)
        };
        let f = na(to_us, VIP6, NA_SOLICITED | NA_OVERRIDE, Some(MASTER_MAC));
        assert_eq!(classify(f.as_slice(), &t), claim(SLOT, MASTER_MAC, true));
        // Solicited but to someone else, or to us but unsolicited: not ours.
        let f = na(
            ndp(MASTER_MAC, MASTER6),
            VIP6,
            NA_SOLICITED,
            Some(MASTER_MAC),
        );
        assert_eq!(classify(f.as_slice(), &t), claim(SLOT, MASTER_MAC, false));
        let to_us = Ip6 {
            eth_dst: OUR_MAC,
            ..ndp(MASTER_MAC, MASTER6)
        };
        let f = na(to_us, VIP6, NA_OVERRIDE, Some(MASTER_MAC));
        assert_eq!(classify(f.as_slice(), &t), claim(SLOT, MASTER_MAC, false));
    }

    #[test]
    fn ipv6_advertisements_that_are_not_claims_are_ignored() {
        let t = Table::v6();
        // Our own, by option or by source (our announcements; a backup's
        // hand-back naming our MAC).
        let own = [
            na(ndp(OUR_MAC, BACKUP6), VIP6, NA_OVERRIDE, Some(OUR_MAC)),
            na(ndp(BRIDGE_MAC, BACKUP6), VIP6, NA_OVERRIDE, Some(OUR_MAC)),
            na(ndp(OUR_MAC, BACKUP6), VIP6, NA_OVERRIDE, None),
        ];
        for f in own {
            assert_eq!(classify(f.as_slice(), &t), Seen::Other);
        }
        // Not from the link (RFC 4861 §7.1.2), not a VIP, a non-zero code.
        let routed = Ip6 {
            hop_limit: 254,
            ..ndp(MASTER_MAC, MASTER6)
        };
        let f = na(routed, VIP6, NA_OVERRIDE, Some(MASTER_MAC));
        assert_eq!(classify(f.as_slice(), &t), Seen::Other);
        let f = na(
            ndp(MASTER_MAC, MASTER6),
            OTHER6,
            NA_OVERRIDE,
            Some(MASTER_MAC),
        );
        assert_eq!(classify(f.as_slice(), &t), Seen::Other);
        let mut code = na(ndp(MASTER_MAC, MASTER6), VIP6, NA_OVERRIDE, None);
        code[ETH_HLEN + IPV6_HLEN + 1] = 1;
        assert_eq!(classify(code.as_slice(), &t), Seen::Other);
        // Shorter than RFC 4861 allows, though the frame has the bytes.
        let mut short = na(ndp(MASTER_MAC, MASTER6), VIP6, NA_OVERRIDE, None);
        short[ETH_HLEN + 5] = 20;
        assert_eq!(classify(short.as_slice(), &t), Seen::Other);
        // Without the interface config we cannot tell ours from theirs.
        let no_iface = Table {
            iface: None,
            ..Table::v6()
        };
        let f = na(
            ndp(MASTER_MAC, MASTER6),
            VIP6,
            NA_OVERRIDE,
            Some(MASTER_MAC),
        );
        assert_eq!(classify(f.as_slice(), &no_iface), Seen::NoConfig);
    }

    #[test]
    fn ipv6_duplicate_address_detection_of_a_vip_is_a_claim() {
        let t = Table::v6();
        let dad = |eth_src, hop_limit| {
            let h = Ip6 {
                hop_limit,
                ..ndp(eth_src, [0; 16])
            };
            ns(h, VIP6, None)
        };
        assert_eq!(
            classify(dad(MASTER_MAC, NDP_HOP_LIMIT).as_slice(), &t),
            Seen::Claim {
                slot: SLOT,
                mac: MASTER_MAC,
                op: NS_OP,
                answer: false,
            }
        );
        // Ours, or not from the link.
        assert_eq!(
            classify(dad(OUR_MAC, NDP_HOP_LIMIT).as_slice(), &t),
            Seen::Other
        );
        assert_eq!(classify(dad(MASTER_MAC, 64).as_slice(), &t), Seen::Other);
        // Address resolution asks who holds the VIP; it claims nothing.
        let resolution = ns(ndp(MASTER_MAC, MASTER6), VIP6, Some(MASTER_MAC));
        assert_eq!(classify(resolution.as_slice(), &t), Seen::Other);
        // DAD of an address that is no VIP.
        let other = ns(ndp(MASTER_MAC, [0; 16]), OTHER6, None);
        assert_eq!(classify(other.as_slice(), &t), Seen::Other);
        let no_iface = Table {
            iface: None,
            ..Table::v6()
        };
        assert_eq!(
            classify(dad(MASTER_MAC, NDP_HOP_LIMIT).as_slice(), &no_iface),
            Seen::NoConfig
        );
    }

    #[test]
    fn ipv6_address_resolution_from_a_vip_claims_it_for_the_sender() {
        // The holder resolving a client from the VIP: the client's entry
        // for the VIP follows the Source Link-Layer Address option, as an
        // ARP request's sender IP and MAC would.
        let t = Table::v6();
        let claim = |mac| Seen::Claim {
            slot: SLOT,
            mac,
            op: NS_OP,
            answer: false,
        };
        let f = ns(ndp(BRIDGE_MAC, VIP6), CLIENT6, Some(MASTER_MAC));
        assert_eq!(classify(f.as_slice(), &t), claim(MASTER_MAC));
        // Without the option (or with another first) it moves nobody's
        // entry: no claim.
        let f = ns(ndp(MASTER_MAC, VIP6), CLIENT6, None);
        assert_eq!(classify(f.as_slice(), &t), Seen::Other);
        let mut tlla = ns(ndp(MASTER_MAC, VIP6), CLIENT6, Some(MASTER_MAC));
        let opt = tlla.len() - 8;
        tlla[opt] = NDP_OPT_TARGET_LLADDR;
        assert_eq!(classify(tlla.as_slice(), &t), Seen::Other);
        // Ours (the VIP held here, resolving from it), from no VIP, or
        // not from the link.
        let ours = ns(ndp(OUR_MAC, VIP6), CLIENT6, Some(OUR_MAC));
        assert_eq!(classify(ours.as_slice(), &t), Seen::Other);
        let other = ns(ndp(MASTER_MAC, OTHER6), CLIENT6, Some(MASTER_MAC));
        assert_eq!(classify(other.as_slice(), &t), Seen::Other);
        let routed = Ip6 {
            hop_limit: 64,
            ..ndp(MASTER_MAC, VIP6)
        };
        let f = ns(routed, CLIENT6, Some(MASTER_MAC));
        assert_eq!(classify(f.as_slice(), &t), Seen::Other);
    }

    #[test]
    fn truncated_ipv6_frames_are_ignored() {
        let mut t = Table::v6();
        t.slots[MASTER_SLOT as usize].flags = SLOT_HOLDING;
        let to_us = Ip6 {
            eth_dst: OUR_MAC,
            ..ndp(MASTER_MAC, MASTER6)
        };
        let frames = [
            reply6(Ip6::default()),
            reply6(Ip6 {
                exts: vec![hop_by_hop(), fragment(0)],
                ..Ip6::default()
            }),
            probe6(Ip6::default(), &payload6(42, 1, MASTER_VIP6)),
            na(
                ndp(BRIDGE_MAC, MASTER6),
                VIP6,
                NA_OVERRIDE,
                Some(MASTER_MAC),
            ),
            na(to_us, VIP6, NA_SOLICITED, None),
            ns(ndp(MASTER_MAC, [0; 16]), VIP6, None),
            ns(ndp(BRIDGE_MAC, VIP6), CLIENT6, Some(MASTER_MAC)),
        ];
        for full in frames {
            assert_ne!(classify(full.as_slice(), &t), Seen::Other);
            for len in 0..full.len() {
                assert_eq!(classify(&full[..len], &t), Seen::Other, "len {len}");
            }
        }
    }

    #[test]
    fn rtt_never_underflows() {
        assert_eq!(rtt_us(10_000, 4_000), 6);
        assert_eq!(rtt_us(1_000, 4_000), 0);
    }
}
