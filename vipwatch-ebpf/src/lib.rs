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
    SLOT_HOLDING, SLOT_WITNESS, SlotConfig, addr_v4, auth_tag, siphash::Key,
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
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
/// TCP flags (RFC 9293 §3.1).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// We only match IPv4 headers without options: Linux never adds options to
/// the echo replies it generates (`icmp_reply` copies none by default), so
/// anything longer is not an answer to our probes.
pub const IPV4_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;
/// Two tags: 802.1ad (QinQ) outer plus 802.1Q inner.
const MAX_VLAN_TAGS: usize = 2;

/// An authenticated probe the master's program answers itself: the IPv4
/// header's offset in the frame, and the reply's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Answer {
    pub ip: usize,
    pub tag: [u8; 8],
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
    /// A vipwatch probe for the VIP of master `slot`, from `src` with
    /// `nonce`: its gate decides, and the master learns its backup. With
    /// the pair's key and a valid tag, `answer` is what the program answers
    /// with itself.
    Probe {
        slot: u32,
        src: [u8; 4],
        nonce: [u8; 8],
        answer: Option<Answer>,
    },
    /// A TCP segment from a client to the VIP of `key.slot`, which this host
    /// holds: `ack` is its acknowledgement number if ACK is set; `syn` when
    /// it opens a connection; `end` when it closes (FIN) or resets (RST) it.
    Tcp {
        key: ConnKey,
        ack: Option<[u8; 4]>,
        syn: bool,
        end: bool,
        /// The frame's source MAC (the client's, or its router's).
        mac: [u8; 6],
    },
    /// An ARP packet announcing `slot`'s VIP from a MAC that is not ours;
    /// `answer`: a reply to an RFC 5227 probe of ours (target IP 0.0.0.0,
    /// target MAC ours), what a holder's kernel sends when we ask.
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
/// can read: no options, not a fragment, long enough for our payload.
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
    Some(IcmpEcho {
        src: [hdr[12], hdr[13], hdr[14], hdr[15]],
        icmp_type: icmp[0],
        code: icmp[1],
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

struct IcmpEcho {
    src: [u8; 4],
    icmp_type: u8,
    code: u8,
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
    if echo.code != 0 {
        return Seen::Other;
    }
    // Somebody else's ping (plain `ping`, no magic): not our business.
    let Some(payload) = ProbePayload::decode(&echo.payload) else {
        return Seen::Other;
    };
    match echo.icmp_type {
        ICMP_ECHO_REPLY => classify_reply(frame, &echo, &payload, slots),
        ICMP_ECHO_REQUEST => {
            let Some(slot) = slots.vip_slot(&payload.vip) else {
                return Seen::Other;
            };
            let Some(cfg) = slots.slot(slot).filter(|c| c.role == ROLE_MASTER) else {
                return Seen::Other;
            };
            // Keyed: a probe with the backup's tag is answered by the
            // program, with the master's; any other is left to the kernel,
            // whose plain echo the backup counts as forged.
            let answer = if cfg.flags & SLOT_AUTH != 0 {
                answer_tag(&cfg.key, &echo.payload).map(|tag| Answer { ip, tag })
            } else {
                None
            };
            Seen::Probe {
                slot,
                src: echo.src,
                nonce: payload.nonce.to_be_bytes(),
                answer,
            }
        }
        _ => Seen::Other,
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
    let Some(slot) = slots.vip_slot(&dst) else {
        return Seen::Other;
    };
    if slots.slot(slot).is_none_or(|c| c.flags & SLOT_HOLDING == 0) {
        return Seen::Other;
    }
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
    let flags = tcp[13];
    Seen::Tcp {
        key: ConnKey {
            slot,
            client_port: [tcp[0], tcp[1]],
            vip_port: [tcp[2], tcp[3]],
            client: addr_v4([hdr[12], hdr[13], hdr[14], hdr[15]]),
        },
        ack: (flags & TCP_ACK != 0).then_some([tcp[8], tcp[9], tcp[10], tcp[11]]),
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
    let src = addr_v4(echo.src);
    let peer = if src == cfg.master {
        PEER_MASTER
    } else if cfg.flags & SLOT_WITNESS != 0 && src == cfg.witness {
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
        assert_eq!(
            classify(with(tagged(plain, AUTH_REPLY, &KEY)).as_slice(), &t),
            reply(PEER_MASTER)
        );
        let forged = Seen::Forged {
            slot: SLOT,
            peer: PEER_MASTER,
        };
        // The kernel's plain echo of our probe (its tag is the probe's).
        assert_eq!(
            classify(with(tagged(plain, AUTH_PROBE, &KEY)).as_slice(), &t),
            forged
        );
        assert_eq!(classify(with(plain).as_slice(), &t), forged);
        let other_key = vipwatch_common::siphash::Key { k0: 1, k1: 2 };
        assert_eq!(
            classify(with(tagged(plain, AUTH_REPLY, &other_key)).as_slice(), &t),
            forged
        );
        // A tag for another sequence number does not carry over.
        let mut moved = tagged(plain, AUTH_REPLY, &KEY);
        moved[23] ^= 1;
        assert_eq!(classify(with(moved).as_slice(), &t), forged);
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
                tag: auth_tag(&KEY, AUTH_REPLY, &good)
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
            src: MASTER,
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
                    ack: Some([0xa0, 0xb0, 0xc0, 0xd0]),
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
                ack: None,
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

    #[test]
    fn rtt_never_underflows() {
        assert_eq!(rtt_us(10_000, 4_000), 6);
        assert_eq!(rtt_us(1_000, 4_000), 0);
    }
}
