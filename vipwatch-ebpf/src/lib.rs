//! Packet matching for the vipwatch XDP programs.
//!
//! Nothing here touches `XdpContext`: the programs in `main.rs` hand in a
//! [`Frame`] that reads bounded byte arrays out of the packet, and the same
//! code runs on the host against `&[u8]`, so every parsing rule is an
//! ordinary unit test (the pattern firezone's relay uses).
#![cfg_attr(not(test), no_std)]

use vipwatch_common::{
    CONFIG_WITNESS, Config, PEER_MASTER, PEER_WITNESS, PROBE_PAYLOAD_LEN, ProbePayload,
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

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPPROTO_ICMP: u8 = 1;
pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_ECHO_REQUEST: u8 = 8;
/// We only match IPv4 headers without options: Linux never adds options to
/// the echo replies it generates (`icmp_reply` copies none by default), so
/// anything longer is not an answer to our probes.
pub const IPV4_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// Two tags: 802.1ad (QinQ) outer plus 802.1Q inner.
const MAX_VLAN_TAGS: usize = 2;

/// What the backup's program made of one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not for us: pass it on and count nothing.
    Other,
    /// A valid heartbeat reply from `peer` (`PEER_MASTER`/`PEER_WITNESS`).
    Reply {
        peer: u32,
        seq: u64,
        sent_ns: u64,
        mac: [u8; 6],
    },
    /// An echo reply from `peer`'s address that pretends to answer our
    /// probes (our identifier or our magic) with the wrong nonce/identifier.
    Forged { peer: u32 },
    /// An ARP packet announcing the VIP from a MAC that is not ours.
    Claim { mac: [u8; 6], op: [u8; 2] },
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

struct IcmpEcho {
    src: [u8; 4],
    icmp_type: u8,
    code: u8,
    id: [u8; 2],
    payload: [u8; PROBE_PAYLOAD_LEN],
}

/// Classifies a frame for the backup's heartbeat counter.
#[inline(always)]
pub fn classify<F: Frame + ?Sized>(frame: &F, cfg: &Config) -> Seen {
    let Some((ethertype, off)) = l3(frame) else {
        return Seen::Other;
    };
    match ethertype {
        ETH_P_IPV4 => classify_ipv4(frame, off, cfg),
        ETH_P_ARP => classify_arp(frame, off, cfg),
        _ => Seen::Other,
    }
}

#[inline(always)]
fn classify_ipv4<F: Frame + ?Sized>(frame: &F, ip: usize, cfg: &Config) -> Seen {
    let Some(echo) = icmp_echo(frame, ip) else {
        return Seen::Other;
    };
    if echo.icmp_type != ICMP_ECHO_REPLY || echo.code != 0 {
        return Seen::Other;
    }
    let peer = if echo.src == cfg.master {
        PEER_MASTER
    } else if cfg.flags & CONFIG_WITNESS != 0 && echo.src == cfg.witness {
        PEER_WITNESS
    } else {
        return Seen::Other;
    };
    let ours_by_id = echo.id == cfg.echo_id;
    match ProbePayload::decode(&echo.payload) {
        Some(p) if ours_by_id && p.nonce.to_be_bytes() == cfg.nonce => {
            let Some(mac) = frame.load::<6>(6) else {
                return Seen::Other;
            };
            Seen::Reply {
                peer,
                seq: p.seq,
                sent_ns: p.sent_ns,
                mac,
            }
        }
        // Our identifier or our magic, but not our nonce: someone is
        // answering in the peer's name.
        Some(_) => Seen::Forged { peer },
        None if ours_by_id => Seen::Forged { peer },
        // Somebody else's ping to the peer (plain `ping`): not our business.
        None => Seen::Other,
    }
}

#[inline(always)]
fn classify_arp<F: Frame + ?Sized>(frame: &F, arp: usize, cfg: &Config) -> Seen {
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
    // announcement or any ARP with sender IP = VIP is (RFC 5227 §2.4).
    if spa != cfg.vip || sha == cfg.our_mac {
        return Seen::Other;
    }
    Seen::Claim {
        mac: sha,
        op: [a[6], a[7]],
    }
}

/// Whether a frame is a vipwatch probe (an ICMP echo request carrying our
/// magic): what the master-side gate drops while the service is unhealthy.
#[inline(always)]
pub fn is_probe<F: Frame + ?Sized>(frame: &F) -> bool {
    let Some((ETH_P_IPV4, ip)) = l3(frame) else {
        return false;
    };
    let Some(echo) = icmp_echo(frame, ip) else {
        return false;
    };
    echo.icmp_type == ICMP_ECHO_REQUEST
        && echo.code == 0
        && ProbePayload::decode(&echo.payload).is_some()
}

/// RTT in microseconds from the payload's send time, saturating at zero if
/// the clock reading is older than the send time (a forged payload).
#[inline(always)]
pub fn rtt_us(now_ns: u64, sent_ns: u64) -> u64 {
    now_ns.saturating_sub(sent_ns) / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: [u8; 4] = [192, 0, 2, 1];
    const WITNESS: [u8; 4] = [192, 0, 2, 254];
    const OTHER: [u8; 4] = [192, 0, 2, 9];
    const VIP: [u8; 4] = [192, 0, 2, 100];
    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const MASTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const ID: [u8; 2] = [0x12, 0x34];
    const NONCE: u64 = 0xfeed_f00d_dead_beef;

    fn cfg() -> Config {
        Config {
            master: MASTER,
            witness: WITNESS,
            vip: VIP,
            echo_id: ID,
            nonce: NONCE.to_be_bytes(),
            our_mac: OUR_MAC,
            flags: CONFIG_WITNESS,
            ..Config::default()
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

    impl Default for Echo {
        fn default() -> Self {
            Self {
                src: MASTER,
                icmp_type: ICMP_ECHO_REPLY,
                id: ID,
                payload: ProbePayload {
                    nonce: NONCE,
                    seq: 7,
                    sent_ns: 5_000,
                }
                .encode(),
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
            peer,
            seq: 7,
            sent_ns: 5_000,
            mac: MASTER_MAC,
        }
    }

    #[test]
    fn valid_reply_from_master_is_counted() {
        assert_eq!(
            classify(echo(Echo::default()).as_slice(), &cfg()),
            reply(PEER_MASTER)
        );
    }

    #[test]
    fn valid_reply_from_witness_is_counted_only_when_configured() {
        let f = echo(Echo {
            src: WITNESS,
            ..Echo::default()
        });
        assert_eq!(classify(f.as_slice(), &cfg()), reply(PEER_WITNESS));
        let no_witness = Config { flags: 0, ..cfg() };
        assert_eq!(classify(f.as_slice(), &no_witness), Seen::Other);
    }

    #[test]
    fn vlan_tags_are_skipped() {
        for vlans in [&[ETH_P_8021Q][..], &[ETH_P_8021AD, ETH_P_8021Q]] {
            let f = echo(Echo {
                vlans,
                ..Echo::default()
            });
            assert_eq!(
                classify(f.as_slice(), &cfg()),
                reply(PEER_MASTER),
                "{vlans:x?}"
            );
        }
        // A third tag is beyond what we parse: ignored, not misparsed.
        let f = echo(Echo {
            vlans: &[ETH_P_8021AD, ETH_P_8021Q, ETH_P_8021Q],
            ..Echo::default()
        });
        assert_eq!(classify(f.as_slice(), &cfg()), Seen::Other);
    }

    #[test]
    fn wrong_nonce_or_identifier_from_master_is_forged() {
        let wrong_nonce = ProbePayload {
            nonce: NONCE ^ 1,
            seq: 7,
            sent_ns: 5_000,
        }
        .encode();
        let cases = [
            Echo {
                payload: wrong_nonce,
                ..Echo::default()
            },
            Echo {
                id: [0xff, 0xff],
                ..Echo::default()
            },
            Echo {
                payload: [0xaa; PROBE_PAYLOAD_LEN],
                ..Echo::default()
            },
        ];
        for e in cases {
            assert_eq!(
                classify(echo(e).as_slice(), &cfg()),
                Seen::Forged { peer: PEER_MASTER }
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
            // Somebody else's plain ping to the master.
            Echo {
                id: [0, 1],
                payload: [0x55; PROBE_PAYLOAD_LEN],
                ..Echo::default()
            },
            // Echo requests are not replies.
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
            assert_eq!(classify(echo(e).as_slice(), &cfg()), Seen::Other);
        }
    }

    #[test]
    fn truncated_frames_are_ignored() {
        let full = echo(Echo::default());
        for len in 0..full.len() {
            assert_eq!(classify(&full[..len], &cfg()), Seen::Other, "len {len}");
        }
    }

    #[test]
    fn arp_claims_of_the_vip_by_others_are_seen() {
        assert_eq!(
            classify(arp(MASTER_MAC, VIP, 1).as_slice(), &cfg()),
            Seen::Claim {
                mac: MASTER_MAC,
                op: [0, 1]
            }
        );
        assert_eq!(
            classify(arp(MASTER_MAC, VIP, 2).as_slice(), &cfg()),
            Seen::Claim {
                mac: MASTER_MAC,
                op: [0, 2]
            }
        );
        // Our own announcements, other addresses and RFC 5227 probes are not.
        assert_eq!(
            classify(arp(OUR_MAC, VIP, 1).as_slice(), &cfg()),
            Seen::Other
        );
        assert_eq!(
            classify(arp(MASTER_MAC, MASTER, 1).as_slice(), &cfg()),
            Seen::Other
        );
        assert_eq!(
            classify(arp(MASTER_MAC, [0; 4], 1).as_slice(), &cfg()),
            Seen::Other
        );
    }

    #[test]
    fn probes_are_recognised_for_the_gate() {
        let probe = echo(Echo {
            icmp_type: ICMP_ECHO_REQUEST,
            ..Echo::default()
        });
        assert!(is_probe(probe.as_slice()));
        assert!(!is_probe(echo(Echo::default()).as_slice()));
        let plain_ping = echo(Echo {
            icmp_type: ICMP_ECHO_REQUEST,
            payload: [0x55; PROBE_PAYLOAD_LEN],
            ..Echo::default()
        });
        assert!(!is_probe(plain_ping.as_slice()));
    }

    #[test]
    fn rtt_never_underflows() {
        assert_eq!(rtt_us(10_000, 4_000), 6);
        assert_eq!(rtt_us(1_000, 4_000), 0);
    }
}
