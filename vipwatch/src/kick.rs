//! The kick: one TCP segment per connection the previous holder had, sent
//! by the new holder right after the VIP is bound and announced, so that
//! each client fails over now rather than when its retransmission timer
//! fires (at least 200 ms on Linux, then doubling).
//!
//! Two forms, [`Mode::Ack`] (the default) and [`Mode::Rst`]:
//!
//! * `ack`: an ACK from VIP:port to client:port whose sequence number is
//!   half the sequence space away from what the client expects, so it is
//!   outside any receive window. The client's TCP answers an unacceptable
//!   segment with an ACK of its own (RFC 9293 §3.10.7.4; RFC 5961 §4 for
//!   the ACK-value variant). We have no socket for that connection, so our
//!   kernel answers that ACK with a RST whose sequence number is the
//!   client's acknowledgement number: exactly what it expects (RFC 9293
//!   §3.10.7.1), so the client resets at once and its application
//!   reconnects, to us. It needs no knowledge of the connection's
//!   sequence numbers, so it works for any connection, however much data
//!   flowed since the last sync. A stateful firewall between the client and
//!   the VIP may drop the out-of-window segment as invalid.
//! * `rst`: a RST at the client's acknowledgement number as last synced.
//!   Exact, the client resets at once, and a RST in the window passes
//!   stateful firewalls. Stale, it lies behind the client's window (the
//!   number only grows), where RFC 5961 §3.2's challenge ACK does not
//!   apply: the client drops it and waits for its timer. The XDP program
//!   therefore re-announces a connection whose ack changed (at most every
//!   `ACK_UPDATE_NS`), so that idle connections and long polls are synced
//!   exact; a connection busy at the failure is not reset.
//!
//! Segments are built once per kick (pure, [`segment`], [`frame`]) and sent
//! in batches with sendmmsg(2), as Ethernet frames from a packet socket
//! bound to the interface (see [`frame`]).

use std::{
    io, mem,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use pnet_packet::{
    ip::IpNextHeaderProtocols,
    ipv4::{self, MutableIpv4Packet},
    ipv6::MutableIpv6Packet,
    tcp::{self, MutableTcpPacket, TcpFlags},
};

use crate::{
    conns::{Conn, Info},
    sys,
};

/// The kick's form (`conn_kick`), or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Ack,
    Rst,
}

/// IPv4 header (20) + TCP header (20).
pub(crate) const SEGMENT_V4_LEN: usize = 40;
/// IPv6 header (40) + TCP header (20).
pub(crate) const SEGMENT_V6_LEN: usize = 60;
/// TCP header without options.
const TCP_LEN: usize = 20;
/// Segments per sendmmsg(2).
const BATCH: usize = 256;
/// Half the sequence space: outside any window (windows are < 2^30).
const FAR: u32 = 0x8000_0000;

/// The kick segment (IP header + TCP header) for `conn` of `vip`; `ack` is
/// the client's last acknowledgement number the holder saw. `None` if the
/// client is not of the VIP's family (no such connection exists).
pub(crate) fn segment(mode: Mode, vip: IpAddr, conn: Conn, ack: u32) -> Option<Vec<u8>> {
    let (mut buf, l4) = match (vip, conn.client) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            let mut buf = vec![0u8; SEGMENT_V4_LEN];
            let mut ip = MutableIpv4Packet::new(&mut buf).expect("40 bytes hold an IPv4 header");
            ip.set_version(4);
            ip.set_header_length(5);
            ip.set_total_length(SEGMENT_V4_LEN as u16);
            ip.set_ttl(64);
            ip.set_flags(ipv4::Ipv4Flags::DontFragment);
            ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
            ip.set_source(src);
            ip.set_destination(dst);
            let sum = ipv4::checksum(&ip.to_immutable());
            ip.set_checksum(sum);
            (buf, 20)
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            let mut buf = vec![0u8; SEGMENT_V6_LEN];
            let mut ip = MutableIpv6Packet::new(&mut buf).expect("60 bytes hold an IPv6 header");
            ip.set_version(6);
            ip.set_payload_length(TCP_LEN as u16);
            ip.set_next_header(IpNextHeaderProtocols::Tcp);
            ip.set_hop_limit(64);
            ip.set_source(src);
            ip.set_destination(dst);
            (buf, 40)
        }
        _ => return None,
    };
    let mut t = MutableTcpPacket::new(&mut buf[l4..]).expect("20 bytes hold a TCP header");
    t.set_source(conn.vip_port);
    t.set_destination(conn.client_port);
    t.set_data_offset(5);
    match mode {
        Mode::Rst => {
            t.set_sequence(ack);
            t.set_flags(TcpFlags::RST);
        }
        Mode::Ack | Mode::Off => {
            t.set_sequence(ack.wrapping_add(FAR));
            t.set_acknowledgement(0);
            t.set_flags(TcpFlags::ACK);
        }
    }
    t.set_window(0);
    let sum = match (vip, conn.client) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => tcp::ipv4_checksum(&t.to_immutable(), &src, &dst),
        (IpAddr::V6(src), IpAddr::V6(dst)) => tcp::ipv6_checksum(&t.to_immutable(), &src, &dst),
        _ => return None,
    };
    t.set_checksum(sum);
    Some(buf)
}

/// The kick as an Ethernet frame from `src_mac` to `dst_mac`: the next
/// hop the previous holder saw the client's frames come from. Sent as is,
/// it needs no route and no neighbour resolution: a new holder that never
/// talked to the client cannot afford either for 10 000 connections (the
/// kernel queues only a few packets per unresolved neighbour and drops the
/// rest).
pub(crate) fn frame(
    mode: Mode,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vip: IpAddr,
    conn: Conn,
    ack: u32,
) -> Option<Vec<u8>> {
    let seg = segment(mode, vip, conn, ack)?;
    let ethertype: u16 = if vip.is_ipv4() { 0x0800 } else { 0x86dd };
    let mut f = Vec::with_capacity(14 + seg.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(&seg);
    Some(f)
}

/// The kick's rate limit, a token bucket of segments: a whole table may go
/// at once (`burst`), and `per_s` more each second. A VIP that flaps (a
/// forged claim after each takeover) then costs its clients at most a
/// table's worth of segments a second, whatever the flapping rate.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    burst: u64,
    per_s: u64,
    tokens: u64,
    at_ns: u64,
}

impl Budget {
    /// A full bucket: the first kick is never limited.
    pub(crate) fn new(burst: u64, per_s: u64) -> Self {
        Self {
            burst,
            per_s,
            tokens: burst,
            at_ns: 0,
        }
    }

    /// How many of `want` segments may go at `now_ns`; takes them.
    pub(crate) fn take(&mut self, now_ns: u64, want: usize) -> usize {
        let elapsed = now_ns.saturating_sub(self.at_ns);
        let earned = u128::from(elapsed) * u128::from(self.per_s) / 1_000_000_000;
        if earned > 0 {
            self.tokens = (u128::from(self.tokens) + earned).min(u128::from(self.burst)) as u64;
            self.at_ns = now_ns;
        }
        let granted = (want as u64).min(self.tokens);
        self.tokens -= granted;
        granted as usize
    }
}

/// Sends kick segments on one interface: Ethernet frames from a packet
/// socket, or, for a connection whose next hop is unknown, IP packets from
/// a raw socket of the VIP's family (routed, after neighbour resolution).
pub(crate) struct Kicker {
    link: OwnedFd,
    ip: OwnedFd,
    /// Why there is none, when there is none (a kernel without IPv6).
    ip6: Result<OwnedFd, String>,
    ifindex: u32,
    mac: [u8; 6],
}

fn socket(
    domain: libc::c_int,
    kind: libc::c_int,
    proto: libc::c_int,
    what: &str,
) -> anyhow::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the fd is owned below.
    let raw = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    if raw < 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("opening {what} for the kick (needs CAP_NET_RAW)"));
    }
    // SAFETY: raw is a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// A raw socket sending whole IP packets (IPPROTO_RAW: the header is ours;
/// for IPv6 it implies IPV6_HDRINCL since Linux 4.5), bound to `iface`.
fn raw_ip_socket(domain: libc::c_int, iface: &str) -> anyhow::Result<OwnedFd> {
    let ip = socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW, "a raw IP socket")?;
    crate::sys::bind_to_device(&ip, iface)
        .with_context(|| format!("binding the kick socket to {iface}"))?;
    Ok(ip)
}

impl Kicker {
    pub(crate) fn open(iface: &str, ifindex: u32, mac: [u8; 6]) -> anyhow::Result<Self> {
        // Protocol 0: this socket receives nothing.
        let link = socket(libc::AF_PACKET, libc::SOCK_RAW, 0, "a packet socket")?;
        // SAFETY: a zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as libc::c_ushort;
        sll.sll_ifindex = libc::c_int::try_from(ifindex).context("interface index")?;
        // SAFETY: sll is valid for its length.
        let rc = unsafe {
            libc::bind(
                link.as_raw_fd(),
                (&raw const sll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("binding the kick's packet socket to {iface}"));
        }
        let ip = raw_ip_socket(libc::AF_INET, iface)?;
        let ip6 = raw_ip_socket(libc::AF_INET6, iface).map_err(|e| format!("{e:#}"));
        Ok(Self {
            link,
            ip,
            ip6,
            ifindex,
            mac,
        })
    }

    /// Sends one segment per connection; returns how many the kernel took.
    pub(crate) fn kick(
        &self,
        mode: Mode,
        vip: IpAddr,
        conns: &[(Conn, Info)],
    ) -> io::Result<usize> {
        type Known<'a> = Vec<&'a (Conn, Info)>;
        // By its next hop's MAC if the previous holder saw one, else routed.
        let (framed, routed): (Known<'_>, Known<'_>) =
            conns.iter().partition(|(_, i)| i.mac != [0; 6]);
        let frames: Vec<Vec<u8>> = framed
            .iter()
            .filter_map(|(c, i)| frame(mode, self.mac, i.mac, vip, *c, i.ack))
            .collect();
        let mut sent = send_batches(&self.link, &frames, None)?;
        let (segments, to): (Vec<Vec<u8>>, Vec<IpAddr>) = routed
            .iter()
            .filter_map(|(c, i)| Some((segment(mode, vip, *c, i.ack)?, c.client)))
            .unzip();
        if !segments.is_empty() {
            let fd = match (vip, &self.ip6) {
                (IpAddr::V4(_), _) => &self.ip,
                (IpAddr::V6(_), Ok(fd)) => fd,
                (IpAddr::V6(_), Err(why)) => {
                    // The framed ones went; say why these did not.
                    log::warn!(
                        "kick: {} connections with no next hop known not kicked: {why}",
                        segments.len()
                    );
                    return Ok(sent);
                }
            };
            sent += send_batches(fd, &segments, Some((&to, self.ifindex)))?;
        }
        Ok(sent)
    }
}

/// sendmmsg(2) in batches; `to`, one address per packet for an unbound
/// socket (with the interface, for link-local addresses).
fn send_batches(
    fd: &OwnedFd,
    packets: &[Vec<u8>],
    to: Option<(&[IpAddr], u32)>,
) -> io::Result<usize> {
    let mut sent = 0;
    for (k, batch) in packets.chunks(BATCH).enumerate() {
        let addrs: Vec<socket2::SockAddr> = match to {
            Some((to, ifindex)) => to[k * BATCH..k * BATCH + batch.len()]
                .iter()
                .map(|a| sys::scoped(*a, 0, ifindex).into())
                .collect(),
            None => Vec::new(),
        };
        let mut iovs: Vec<libc::iovec> = batch
            .iter()
            .map(|p| libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .enumerate()
            .map(|(j, iov)| {
                // SAFETY: a zeroed msghdr is valid; fields set below.
                let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                if let Some(a) = addrs.get(j) {
                    // sendmmsg(2) only reads the name.
                    h.msg_hdr.msg_name = a.as_ptr().cast_mut().cast();
                    h.msg_hdr.msg_namelen = a.len();
                }
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        let mut done = 0;
        while done < msgs.len() {
            // SAFETY: msgs, iovs, packets and addrs outlive the call and
            // hold valid pointers and lengths.
            let n = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    msgs[done..].as_mut_ptr(),
                    (msgs.len() - done) as libc::c_uint,
                    0,
                )
            };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if sent + done == 0 {
                    return Err(err);
                }
                log::warn!("kick: {err} after {} segments", sent + done);
                return Ok(sent + done);
            }
            done += n as usize;
        }
        sent += done;
    }
    Ok(sent)
}

#[cfg(test)]
mod budget_tests {
    use super::Budget;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_whole_table_goes_at_once_then_the_rate_applies() {
        let mut b = Budget::new(1000, 1000);
        assert_eq!(b.take(5 * S, 1000), 1000, "the first kick is never limited");
        assert_eq!(b.take(5 * S, 10), 0, "the bucket is empty");
        assert_eq!(b.take(5 * S + S / 10, 1000), 100, "100 ms earn 100");
        assert_eq!(b.take(5 * S + S / 10, 1), 0);
        // Refills up to the burst, not beyond.
        assert_eq!(b.take(60 * S, 5000), 1000);
    }

    #[test]
    fn small_kicks_barely_dent_it() {
        let mut b = Budget::new(65_536, 65_536);
        for k in 0..100 {
            assert_eq!(b.take(k * S / 100, 100), 100);
        }
    }

    #[test]
    fn partial_time_is_not_lost() {
        // Earning below one token keeps the old reference time.
        let mut b = Budget::new(10, 1);
        assert_eq!(b.take(S, 10), 10);
        assert_eq!(b.take(S + S / 2, 1), 0);
        assert_eq!(b.take(2 * S, 1), 1, "the half seconds add up");
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use pnet_packet::{Packet as _, ipv4::Ipv4Packet, ipv6::Ipv6Packet, tcp::TcpPacket};

    use super::*;

    const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    const CLIENT4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const VIP: IpAddr = IpAddr::V4(VIP4);
    const CONN: Conn = Conn {
        client: IpAddr::V4(CLIENT4),
        client_port: 40000,
        vip_port: 6379,
    };
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10);
    const CONN6: Conn = Conn {
        client: IpAddr::V6(CLIENT6),
        client_port: 40000,
        vip_port: 6379,
    };

    fn seg(mode: Mode, vip: IpAddr, conn: Conn, ack: u32) -> Vec<u8> {
        segment(mode, vip, conn, ack).expect("a segment")
    }

    fn parse(seg: &[u8]) -> (Ipv4Packet<'_>, TcpPacket<'_>) {
        let ip = Ipv4Packet::new(seg).expect("ipv4");
        let tcp = TcpPacket::new(&seg[20..]).expect("tcp");
        (ip, tcp)
    }

    #[test]
    fn an_ack_kick_is_far_outside_the_window_with_valid_checksums() {
        let seg = seg(Mode::Ack, VIP, CONN, 1000);
        assert_eq!(seg.len(), SEGMENT_V4_LEN);
        let (ip, tcp) = parse(&seg);
        assert_eq!(ip.get_version(), 4);
        assert_eq!(ip.get_total_length(), 40);
        assert_eq!(ip.get_source(), VIP4);
        assert_eq!(ip.get_destination(), CLIENT4);
        assert_eq!(ip.get_checksum(), ipv4::checksum(&ip));
        assert_eq!(tcp.get_source(), 6379);
        assert_eq!(tcp.get_destination(), 40000);
        assert_eq!(tcp.get_flags(), TcpFlags::ACK);
        assert_eq!(tcp.get_sequence(), 1000 + FAR);
        assert_eq!(tcp.get_data_offset(), 5);
        assert!(tcp.payload().is_empty());
        assert_eq!(
            tcp.get_checksum(),
            tcp::ipv4_checksum(&tcp, &VIP4, &CLIENT4)
        );
        // Wraps around the sequence space.
        let wrapped = super::segment(Mode::Ack, VIP, CONN, u32::MAX).expect("a segment");
        let (_, tcp) = parse(&wrapped);
        assert_eq!(tcp.get_sequence(), FAR - 1);
    }

    #[test]
    fn a_kick_frame_goes_straight_to_the_next_hop_seen() {
        let src = [2, 0, 0, 0, 0, 2];
        let dst = [2, 0, 0, 0, 0, 0x10];
        for (vip, conn, ethertype) in [
            (VIP, CONN, [0x08, 0x00]),
            (IpAddr::V6(VIP6), CONN6, [0x86, 0xdd]),
        ] {
            let f = frame(Mode::Ack, src, dst, vip, conn, 1000).expect("a frame");
            assert_eq!(&f[0..6], &dst);
            assert_eq!(&f[6..12], &src);
            assert_eq!(&f[12..14], &ethertype);
            assert_eq!(&f[14..], &seg(Mode::Ack, vip, conn, 1000)[..]);
        }
    }

    #[test]
    fn a_rst_kick_sits_at_the_last_ack_seen() {
        let seg = seg(Mode::Rst, VIP, CONN, 0xdead_beef);
        let (ip, tcp) = parse(&seg);
        assert_eq!(ip.get_checksum(), ipv4::checksum(&ip));
        assert_eq!(tcp.get_flags(), TcpFlags::RST);
        assert_eq!(tcp.get_sequence(), 0xdead_beef);
        assert_eq!(tcp.get_acknowledgement(), 0);
        assert_eq!(
            tcp.get_checksum(),
            tcp::ipv4_checksum(&tcp, &VIP4, &CLIENT4)
        );
    }

    #[test]
    fn ipv6_kicks_have_an_ipv6_header_and_a_valid_checksum() {
        for (mode, flags, sequence) in [
            (Mode::Ack, TcpFlags::ACK, 1000u32.wrapping_add(FAR)),
            (Mode::Rst, TcpFlags::RST, 1000),
        ] {
            let seg = seg(mode, IpAddr::V6(VIP6), CONN6, 1000);
            assert_eq!(seg.len(), SEGMENT_V6_LEN);
            let ip = Ipv6Packet::new(&seg).expect("ipv6");
            assert_eq!(ip.get_version(), 6);
            assert_eq!(ip.get_payload_length(), 20);
            assert_eq!(ip.get_next_header(), IpNextHeaderProtocols::Tcp);
            assert_eq!(ip.get_source(), VIP6);
            assert_eq!(ip.get_destination(), CLIENT6);
            let tcp = TcpPacket::new(&seg[40..]).expect("tcp");
            assert_eq!(tcp.get_flags(), flags);
            assert_eq!(tcp.get_sequence(), sequence);
            assert_eq!((tcp.get_source(), tcp.get_destination()), (6379, 40000));
            assert_eq!(
                tcp.get_checksum(),
                tcp::ipv6_checksum(&tcp, &VIP6, &CLIENT6)
            );
        }
    }

    #[test]
    fn a_client_of_the_other_family_gets_no_segment() {
        assert_eq!(segment(Mode::Ack, IpAddr::V6(VIP6), CONN, 1), None);
        assert_eq!(segment(Mode::Ack, VIP, CONN6, 1), None);
    }
}
