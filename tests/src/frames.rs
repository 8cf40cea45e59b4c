//! Raw Ethernet frames in a lab: what an attacker on the LAN sends (forged
//! ARP and NDP, forged echo replies, replayed frames) and what it captures
//! first. Packet sockets (`AF_PACKET`), opened inside the namespace that
//! sends or listens.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Lab;

/// A MAC address from its `aa:bb:cc:dd:ee:ff` form.
pub fn mac(text: &str) -> Result<[u8; 6]> {
    let parts: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("{text:?} is not a MAC address"))?;
    parts
        .try_into()
        .map_err(|_| anyhow::anyhow!("{text:?} is not a MAC address"))
}

/// ARP operation codes.
pub const ARP_REQUEST: u16 = 1;
pub const ARP_REPLY: u16 = 2;

/// An ARP packet in an Ethernet frame from `eth_src`, every ARP field
/// chosen by the sender. A forger keeps its own Ethernet source (taking
/// the victim's would also move the victim's MAC to the forger's switch
/// port, a different attack) and puts the victim's MAC in the ARP sender
/// field, which is what hosts learn from.
pub fn arp(
    eth_src: [u8; 6],
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let dst = if op == ARP_REQUEST {
        [0xff; 6]
    } else {
        target_mac
    };
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&0x0806u16.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4]);
    f.extend_from_slice(&op.to_be_bytes());
    f.extend_from_slice(&sender_mac);
    f.extend_from_slice(&sender_ip.octets());
    f.extend_from_slice(&target_mac);
    f.extend_from_slice(&target_ip.octets());
    f
}

// ----- IPv6: NDP and ICMPv6 (RFC 4861, RFC 4443) -------------------------

/// ICMPv6 message types.
pub const ICMPV6_ECHO_REPLY: u8 = 129;
pub const ICMPV6_NEIGHBOR_SOLICIT: u8 = 135;
pub const ICMPV6_NEIGHBOR_ADVERT: u8 = 136;

/// Neighbour Advertisement flags (RFC 4861 4.4): Solicited, Override.
pub const NA_SOLICITED: u8 = 0x40;
pub const NA_OVERRIDE: u8 = 0x20;

/// The all-nodes multicast address, where unsolicited advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// The solicited-node multicast address of `addr`: `ff02::1:ffXX:XXXX`
/// with its low 24 bits (RFC 4291 2.7.1).
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    let mut m = [0u8; 16];
    m[..2].copy_from_slice(&[0xff, 0x02]);
    m[11] = 0x01;
    m[12] = 0xff;
    m[13..].copy_from_slice(&o[13..]);
    Ipv6Addr::from(m)
}

/// The Ethernet address an IPv6 multicast `group` is sent to:
/// `33:33` and its low 32 bits (RFC 2464 7).
pub fn multicast_mac(group: Ipv6Addr) -> [u8; 6] {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The ICMPv6 checksum of `msg` (its checksum field zero or not: it is
/// skipped) between `src` and `dst`, over the pseudo-header of RFC 8200
/// 8.1.
pub fn icmpv6_checksum(src: Ipv6Addr, dst: Ipv6Addr, msg: &[u8]) -> u16 {
    let mut buf = Vec::with_capacity(40 + msg.len());
    buf.extend_from_slice(&src.octets());
    buf.extend_from_slice(&dst.octets());
    buf.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    buf.extend_from_slice(&[0, 0, 0, 58]);
    buf.extend_from_slice(msg);
    if msg.len() >= 4 {
        buf[40 + 2..40 + 4].fill(0);
    }
    checksum(&buf)
}

/// An Ethernet frame carrying the ICMPv6 message `msg` (checksum filled
/// in here) from `src` to `dst` with `hop_limit`.
pub fn icmpv6_frame(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    msg: &[u8],
) -> Vec<u8> {
    let mut msg = msg.to_vec();
    let sum = icmpv6_checksum(src, dst, &msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::with_capacity(14 + 40 + msg.len());
    f.extend_from_slice(&eth_dst);
    f.extend_from_slice(&eth_src);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    f.push(58);
    f.push(hop_limit);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&msg);
    f
}

/// A Neighbour Advertisement for `target` (RFC 4861 4.4) with `flags`
/// ([`NA_OVERRIDE`], …) and, if given, a target link-layer address option:
/// the MAC hosts learn for `target`. Hop limit 255, as receivers require
/// (RFC 4861 7.1.2).
pub fn neighbor_advert(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    flags: u8,
    tlla: Option<[u8; 6]>,
) -> Vec<u8> {
    let mut msg = vec![ICMPV6_NEIGHBOR_ADVERT, 0, 0, 0, flags, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    if let Some(mac) = tlla {
        // Option 2, target link-layer address, length 1 (8 bytes).
        msg.extend_from_slice(&[2, 1]);
        msg.extend_from_slice(&mac);
    }
    icmpv6_frame(eth_dst, eth_src, src, dst, 255, &msg)
}

/// The unsolicited Neighbour Advertisement a host sends when `target`
/// moves to it (RFC 4861 7.2.6): from `target` itself (as Linux sends
/// them) to all nodes, Override set, Solicited clear, `tlla` as the
/// target's link-layer address. A forger keeps its own Ethernet source
/// (`eth_src`) and names the victim's MAC in `tlla`, which is what hosts
/// learn from.
pub fn unsolicited_na(eth_src: [u8; 6], target: Ipv6Addr, tlla: [u8; 6]) -> Vec<u8> {
    neighbor_advert(
        multicast_mac(ALL_NODES),
        eth_src,
        target,
        ALL_NODES,
        target,
        NA_OVERRIDE,
        Some(tlla),
    )
}

/// The Neighbour Solicitation of duplicate address detection for `target`
/// (RFC 4862 5.4.2): from the unspecified address to `target`'s
/// solicited-node group, without a source link-layer option (RFC 4861
/// 4.3 forbids it with an unspecified source): only the Ethernet source
/// says who asks.
pub fn dad_ns(eth_src: [u8; 6], target: Ipv6Addr) -> Vec<u8> {
    let group = solicited_node(target);
    let mut msg = vec![ICMPV6_NEIGHBOR_SOLICIT, 0, 0, 0, 0, 0, 0, 0];
    msg.extend_from_slice(&target.octets());
    icmpv6_frame(
        multicast_mac(group),
        eth_src,
        Ipv6Addr::UNSPECIFIED,
        group,
        255,
        &msg,
    )
}

/// An ICMPv6 echo reply (RFC 4443 4.2) from `src` to `dst` with `id`,
/// `seq` and `data`, in a frame from `eth_src` to `eth_dst`: a forger on
/// the LAN answering in someone else's name.
pub fn icmpv6_echo_reply(
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    id: u16,
    seq: u16,
    data: &[u8],
) -> Vec<u8> {
    let mut msg = vec![ICMPV6_ECHO_REPLY, 0, 0, 0];
    msg.extend_from_slice(&id.to_be_bytes());
    msg.extend_from_slice(&seq.to_be_bytes());
    msg.extend_from_slice(data);
    icmpv6_frame(eth_dst, eth_src, src, dst, 64, &msg)
}

/// The ICMPv6 type of an Ethernet frame carrying ICMPv6 directly after
/// the IPv6 header, if it is one.
pub fn icmpv6_type(f: &[u8]) -> Option<u8> {
    (f.len() >= 14 + 40 + 4 && f[12..14] == [0x86, 0xdd] && f[20] == 58).then(|| f[54])
}

fn packet_socket(iface: &str) -> Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the fd is owned below.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        )
    };
    if raw < 0 {
        bail!("packet socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(iface)?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        bail!("no interface {iface}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    sll.sll_ifindex = index as libc::c_int;
    // SAFETY: sll is valid for its length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        bail!("binding to {iface}: {}", std::io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends `frames` as they are from `host`'s `iface` (`eth0` for a host, a
/// port name in [`Lab::BRIDGE`]), `gap` apart.
pub fn send(lab: &Lab, host: &str, iface: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    let iface = iface.to_owned();
    let frames = frames.to_vec();
    lab.in_netns(host, move || -> Result<()> {
        let fd = packet_socket(&iface)?;
        for f in &frames {
            // SAFETY: f is valid for its length.
            let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
            if n < 0 {
                bail!("send on {iface}: {}", std::io::Error::last_os_error());
            }
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        Ok(())
    })?
}

/// Captures up to `count` frames seen on `host`'s `iface` for which `keep`
/// is true, for at most `timeout`.
pub fn capture(
    lab: &Lab,
    host: &str,
    iface: &str,
    count: usize,
    timeout: Duration,
    keep: fn(&[u8]) -> bool,
) -> Result<Vec<Vec<u8>>> {
    let iface = iface.to_owned();
    lab.in_netns(host, move || -> Result<Vec<Vec<u8>>> {
        let fd = packet_socket(&iface)?;
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 2048];
        while out.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) };
            if rc <= 0 {
                continue;
            }
            // SAFETY: buf is valid for its length.
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 && keep(&buf[..n as usize]) {
                out.push(buf[..n as usize].to_vec());
            }
        }
        Ok(out)
    })?
}

/// Whether a frame is an IPv4 ICMP echo reply.
pub fn is_echo_reply(f: &[u8]) -> bool {
    f.len() >= 34 + 8 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
}

/// Whether a frame is an IPv4 ICMP echo request.
pub fn is_echo_request(f: &[u8]) -> bool {
    f.len() >= 34 + 8 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 8
}

/// The echo reply a plain kernel would send to the echo request `f`:
/// addresses swapped, type 0, the payload as it came.
pub fn echo_answer(f: &[u8]) -> Vec<u8> {
    let mut r = f.to_vec();
    r[0..6].copy_from_slice(&f[6..12]);
    r[6..12].copy_from_slice(&f[0..6]);
    r[26..30].copy_from_slice(&f[30..34]);
    r[30..34].copy_from_slice(&f[26..30]);
    r[34] = 0;
    r[36] = 0;
    r[37] = 0;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let end = (14 + total).min(r.len());
    let sum = checksum(&r[34..end]);
    r[36..38].copy_from_slice(&sum.to_be_bytes());
    r
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// For `duration`, answers every echo request arriving on `host`'s `iface`
/// as a plain kernel would, out of the same interface: a host that sees
/// the probes answering in someone else's name. Returns how many it
/// answered.
pub fn answer_echoes(lab: &Lab, host: &str, iface: &str, duration: Duration) -> Result<usize> {
    let iface = iface.to_owned();
    lab.in_netns(host, move || -> Result<usize> {
        let fd = packet_socket(&iface)?;
        let deadline = Instant::now() + duration;
        let mut answered = 0;
        let mut buf = vec![0u8; 2048];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(answered);
            }
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as libc::c_int) } <= 0 {
                continue;
            }
            // SAFETY: a zeroed sockaddr_ll is valid; recvfrom fills it.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid for their lengths.
            let n = unsafe {
                libc::recvfrom(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut from).cast(),
                    &mut len,
                )
            };
            // Only what arrives (not our own answers going out).
            if n <= 0 || from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if !is_echo_request(f) {
                continue;
            }
            let r = echo_answer(f);
            // SAFETY: r is valid for its length.
            if unsafe { libc::send(fd.as_raw_fd(), r.as_ptr().cast(), r.len(), 0) } > 0 {
                answered += 1;
            }
        }
    })?
}

#[cfg(test)]
mod tests {
    use pnet_packet::{
        Packet as _,
        ethernet::{EtherTypes, EthernetPacket},
        icmpv6::{
            self, Icmpv6Packet, Icmpv6Types,
            echo_reply::EchoReplyPacket,
            ndp::{NdpOptionTypes, NeighborAdvertPacket, NeighborSolicitPacket},
        },
        ip::IpNextHeaderProtocols,
        ipv6::Ipv6Packet,
    };

    use super::*;

    const VIP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x0a0b, 0x0c0d);
    const MASTER: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    const BACKUP: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    const ATTACKER_MAC: [u8; 6] = [2, 0x76, 0x77, 0, 0, 4];
    const MASTER_MAC: [u8; 6] = [2, 0x76, 0x77, 0, 0, 1];

    /// The frame's Ethernet, IPv6 and ICMPv6 layers as pnet reads them,
    /// after checking what every ICMPv6 frame of ours must satisfy: lengths
    /// that add up, and the checksum pnet computes.
    fn layers(f: &[u8]) -> (EthernetPacket<'_>, Ipv6Packet<'_>) {
        let eth = EthernetPacket::new(f).expect("an Ethernet frame");
        assert_eq!(eth.get_ethertype(), EtherTypes::Ipv6);
        let ip = Ipv6Packet::new(&f[14..]).expect("an IPv6 packet");
        assert_eq!(ip.get_version(), 6);
        assert_eq!(ip.get_next_header(), IpNextHeaderProtocols::Icmpv6);
        assert_eq!(usize::from(ip.get_payload_length()), f.len() - 14 - 40);
        let icmp = Icmpv6Packet::new(ip.payload()).expect("an ICMPv6 message");
        assert_eq!(
            icmp.get_checksum(),
            icmpv6::checksum(&icmp, &ip.get_source(), &ip.get_destination()),
            "checksum"
        );
        (eth, ip)
    }

    #[test]
    fn solicited_node_groups_and_their_macs() {
        let group = solicited_node(VIP);
        assert_eq!(
            group,
            "ff02::1:ff0b:c0d".parse::<Ipv6Addr>().expect("valid")
        );
        assert_eq!(multicast_mac(group), [0x33, 0x33, 0xff, 0x0b, 0x0c, 0x0d]);
        assert_eq!(multicast_mac(ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
    }

    #[test]
    fn the_checksum_matches_an_independent_implementation_and_rfc_1071() {
        // An odd length, and a checksum field already filled in (skipped).
        let msg = [129u8, 0, 0xab, 0xcd, 0, 1, 0, 2, 0xff, 0xee, 0x11];
        let sum = icmpv6_checksum(MASTER, BACKUP, &msg);
        let mut filled = msg;
        filled[2..4].copy_from_slice(&sum.to_be_bytes());
        let packet = Icmpv6Packet::new(&filled).expect("long enough");
        assert_eq!(sum, icmpv6::checksum(&packet, &MASTER, &BACKUP));
        // A correct message sums to zero (all ones before complementing),
        // checksum field included.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&MASTER.octets());
        pseudo.extend_from_slice(&BACKUP.octets());
        pseudo.extend_from_slice(&(filled.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&filled);
        assert_eq!(checksum(&pseudo), 0);
    }

    #[test]
    fn an_unsolicited_na_names_the_given_mac_with_override() {
        let f = unsolicited_na(ATTACKER_MAC, VIP, MASTER_MAC);
        let (eth, ip) = layers(&f);
        assert_eq!(eth.get_destination().octets(), [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!(eth.get_source().octets(), ATTACKER_MAC);
        assert_eq!(ip.get_hop_limit(), 255, "RFC 4861 7.1.2");
        assert_eq!(ip.get_source(), VIP);
        assert_eq!(ip.get_destination(), ALL_NODES);
        let na = NeighborAdvertPacket::new(ip.payload()).expect("an NA");
        assert_eq!(na.get_icmpv6_type(), Icmpv6Types::NeighborAdvert);
        assert_eq!(na.get_icmpv6_code().0, 0);
        assert_eq!(na.get_flags(), NA_OVERRIDE, "override, not solicited");
        assert_eq!(na.get_target_addr(), VIP);
        let options = na.get_options();
        assert_eq!(options.len(), 1, "{options:?}");
        assert_eq!(options[0].option_type, NdpOptionTypes::TargetLLAddr);
        assert_eq!(options[0].length, 1);
        assert_eq!(options[0].data, MASTER_MAC);
        assert_eq!(f.len(), 14 + 40 + 24 + 8);
    }

    #[test]
    fn a_solicited_na_without_tlla() {
        let f = neighbor_advert(
            MASTER_MAC,
            ATTACKER_MAC,
            VIP,
            MASTER,
            VIP,
            NA_SOLICITED | NA_OVERRIDE,
            None,
        );
        let (_, ip) = layers(&f);
        let na = NeighborAdvertPacket::new(ip.payload()).expect("an NA");
        assert_eq!(na.get_flags(), NA_SOLICITED | NA_OVERRIDE);
        assert!(na.get_options().is_empty());
        assert_eq!(icmpv6_type(&f), Some(ICMPV6_NEIGHBOR_ADVERT));
    }

    #[test]
    fn a_dad_ns_comes_from_nowhere_to_the_solicited_node_group() {
        let f = dad_ns(ATTACKER_MAC, VIP);
        let (eth, ip) = layers(&f);
        assert_eq!(
            eth.get_destination().octets(),
            [0x33, 0x33, 0xff, 0x0b, 0x0c, 0x0d]
        );
        assert_eq!(eth.get_source().octets(), ATTACKER_MAC);
        assert_eq!(ip.get_hop_limit(), 255);
        assert_eq!(ip.get_source(), Ipv6Addr::UNSPECIFIED);
        assert_eq!(ip.get_destination(), solicited_node(VIP));
        let ns = NeighborSolicitPacket::new(ip.payload()).expect("an NS");
        assert_eq!(ns.get_icmpv6_type(), Icmpv6Types::NeighborSolicit);
        assert_eq!(ns.get_target_addr(), VIP);
        assert!(
            ns.get_options().is_empty(),
            "no source link-layer option from the unspecified address"
        );
        assert_eq!(f.len(), 14 + 40 + 24);
    }

    #[test]
    fn a_forged_echo_reply_carries_what_it_is_given() {
        let data: Vec<u8> = (0..40).collect();
        let backup_mac = [2, 0x76, 0x77, 0, 0, 2];
        let f = icmpv6_echo_reply(backup_mac, ATTACKER_MAC, MASTER, BACKUP, 0x1234, 7, &data);
        let (eth, ip) = layers(&f);
        assert_eq!(eth.get_destination().octets(), backup_mac);
        assert_eq!(ip.get_source(), MASTER);
        assert_eq!(ip.get_destination(), BACKUP);
        let reply = EchoReplyPacket::new(ip.payload()).expect("an echo reply");
        assert_eq!(reply.get_icmpv6_type(), Icmpv6Types::EchoReply);
        assert_eq!(reply.get_identifier(), 0x1234);
        assert_eq!(reply.get_sequence_number(), 7);
        assert_eq!(reply.payload(), &data[..]);
        assert_eq!(icmpv6_type(&f), Some(ICMPV6_ECHO_REPLY));
        assert_eq!(icmpv6_type(&f[..57]), None, "truncated");
        assert_eq!(
            icmpv6_type(&arp(
                [1; 6],
                ARP_REQUEST,
                [1; 6],
                Ipv4Addr::LOCALHOST,
                [0; 6],
                Ipv4Addr::LOCALHOST
            )),
            None
        );
    }
}
