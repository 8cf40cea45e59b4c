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
    net::Ipv4Addr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use pnet_packet::{
    ip::IpNextHeaderProtocols,
    ipv4::{self, MutableIpv4Packet},
    tcp::{self, MutableTcpPacket, TcpFlags},
};

use crate::conns::{Conn, Info};

/// The kick's form (`conn_kick`), or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Off,
    Ack,
    Rst,
}

/// IPv4 header (20) + TCP header (20).
pub(crate) const SEGMENT_LEN: usize = 40;
/// Segments per sendmmsg(2).
const BATCH: usize = 256;
/// Half the sequence space: outside any window (windows are < 2^30).
const FAR: u32 = 0x8000_0000;

/// The kick segment for `conn` of `vip`; `ack` is the client's last
/// acknowledgement number the holder saw.
pub(crate) fn segment(mode: Mode, vip: Ipv4Addr, conn: Conn, ack: u32) -> [u8; SEGMENT_LEN] {
    let mut buf = [0u8; SEGMENT_LEN];
    {
        let mut ip = MutableIpv4Packet::new(&mut buf).expect("40 bytes hold an IPv4 header");
        ip.set_version(4);
        ip.set_header_length(5);
        ip.set_total_length(SEGMENT_LEN as u16);
        ip.set_ttl(64);
        ip.set_flags(ipv4::Ipv4Flags::DontFragment);
        ip.set_next_level_protocol(IpNextHeaderProtocols::Tcp);
        ip.set_source(vip);
        ip.set_destination(conn.client);
        let sum = ipv4::checksum(&ip.to_immutable());
        ip.set_checksum(sum);
    }
    let mut t = MutableTcpPacket::new(&mut buf[20..]).expect("20 bytes hold a TCP header");
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
    let sum = tcp::ipv4_checksum(&t.to_immutable(), &vip, &conn.client);
    t.set_checksum(sum);
    buf
}

/// Ethernet header + [`SEGMENT_LEN`].
pub(crate) const FRAME_LEN: usize = 14 + SEGMENT_LEN;

/// The kick as an Ethernet frame from `src_mac` to `dst_mac`: the next
/// hop the previous holder saw the client's frames come from. Sent as is,
/// it needs no route and no ARP: a new holder that never talked to the
/// client cannot afford either for 10 000 connections (the kernel queues
/// only a few packets per unresolved neighbour and drops the rest).
pub(crate) fn frame(
    mode: Mode,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vip: Ipv4Addr,
    conn: Conn,
    ack: u32,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    f[14..].copy_from_slice(&segment(mode, vip, conn, ack));
    f
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
/// a raw socket (routed, after address resolution).
pub(crate) struct Kicker {
    link: OwnedFd,
    ip: OwnedFd,
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
        let ip = socket(
            libc::AF_INET,
            libc::SOCK_RAW,
            libc::IPPROTO_RAW,
            "a raw IP socket",
        )?;
        // SAFETY: the name is valid for its length.
        let rc = unsafe {
            libc::setsockopt(
                ip.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_BINDTODEVICE,
                iface.as_ptr().cast(),
                iface.len() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("binding the kick socket to {iface}"));
        }
        Ok(Self { link, ip, mac })
    }

    /// Sends one segment per connection; returns how many the kernel took.
    pub(crate) fn kick(
        &self,
        mode: Mode,
        vip: Ipv4Addr,
        conns: &[(Conn, Info)],
    ) -> io::Result<usize> {
        type Known<'a> = Vec<&'a (Conn, Info)>;
        // By its next hop's MAC if the previous holder saw one, else routed.
        let (framed, routed): (Known<'_>, Known<'_>) =
            conns.iter().partition(|(_, i)| i.mac != [0; 6]);
        let frames: Vec<[u8; FRAME_LEN]> = framed
            .iter()
            .map(|(c, i)| frame(mode, self.mac, i.mac, vip, *c, i.ack))
            .collect();
        let mut sent = send_batches(&self.link, &frames, None)?;
        if !routed.is_empty() {
            let segments: Vec<[u8; SEGMENT_LEN]> = routed
                .iter()
                .map(|(c, i)| segment(mode, vip, *c, i.ack))
                .collect();
            let to: Vec<Ipv4Addr> = routed.iter().map(|(c, _)| c.client).collect();
            sent += send_batches(&self.ip, &segments, Some(&to))?;
        }
        Ok(sent)
    }
}

/// sendmmsg(2) in batches; `to`, one address per packet for an unbound
/// socket.
fn send_batches<const N: usize>(
    fd: &OwnedFd,
    packets: &[[u8; N]],
    to: Option<&[Ipv4Addr]>,
) -> io::Result<usize> {
    let mut sent = 0;
    for (k, batch) in packets.chunks(BATCH).enumerate() {
        let addrs: Vec<libc::sockaddr_in> = match to {
            Some(to) => to[k * BATCH..k * BATCH + batch.len()]
                .iter()
                .map(|a| {
                    // SAFETY: a zeroed sockaddr_in is valid; fields set below.
                    let mut s: libc::sockaddr_in = unsafe { mem::zeroed() };
                    s.sin_family = libc::AF_INET as libc::sa_family_t;
                    s.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                    s
                })
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
                    h.msg_hdr.msg_name = (a as *const libc::sockaddr_in).cast_mut().cast();
                    h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
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
    use pnet_packet::{Packet as _, ipv4::Ipv4Packet, tcp::TcpPacket};

    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
    const CONN: Conn = Conn {
        client: Ipv4Addr::new(192, 0, 2, 10),
        client_port: 40000,
        vip_port: 6379,
    };

    fn parse(seg: &[u8; SEGMENT_LEN]) -> (Ipv4Packet<'_>, TcpPacket<'_>) {
        let ip = Ipv4Packet::new(seg).expect("ipv4");
        let tcp = TcpPacket::new(&seg[20..]).expect("tcp");
        (ip, tcp)
    }

    #[test]
    fn an_ack_kick_is_far_outside_the_window_with_valid_checksums() {
        let seg = segment(Mode::Ack, VIP, CONN, 1000);
        let (ip, tcp) = parse(&seg);
        assert_eq!(ip.get_version(), 4);
        assert_eq!(ip.get_total_length(), 40);
        assert_eq!(ip.get_source(), VIP);
        assert_eq!(ip.get_destination(), CONN.client);
        assert_eq!(ip.get_checksum(), ipv4::checksum(&ip));
        assert_eq!(tcp.get_source(), 6379);
        assert_eq!(tcp.get_destination(), 40000);
        assert_eq!(tcp.get_flags(), TcpFlags::ACK);
        assert_eq!(tcp.get_sequence(), 1000 + FAR);
        assert_eq!(tcp.get_data_offset(), 5);
        assert!(tcp.payload().is_empty());
        assert_eq!(
            tcp.get_checksum(),
            tcp::ipv4_checksum(&tcp, &VIP, &CONN.client)
        );
        // Wraps around the sequence space.
        let wrapped = segment(Mode::Ack, VIP, CONN, u32::MAX);
        let (_, tcp) = parse(&wrapped);
        assert_eq!(tcp.get_sequence(), FAR - 1);
    }

    #[test]
    fn a_kick_frame_goes_straight_to_the_next_hop_seen() {
        let src = [2, 0, 0, 0, 0, 2];
        let dst = [2, 0, 0, 0, 0, 0x10];
        let f = frame(Mode::Ack, src, dst, VIP, CONN, 1000);
        assert_eq!(&f[0..6], &dst);
        assert_eq!(&f[6..12], &src);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[14..], &segment(Mode::Ack, VIP, CONN, 1000)[..]);
    }

    #[test]
    fn a_rst_kick_sits_at_the_last_ack_seen() {
        let seg = segment(Mode::Rst, VIP, CONN, 0xdead_beef);
        let (ip, tcp) = parse(&seg);
        assert_eq!(ip.get_checksum(), ipv4::checksum(&ip));
        assert_eq!(tcp.get_flags(), TcpFlags::RST);
        assert_eq!(tcp.get_sequence(), 0xdead_beef);
        assert_eq!(tcp.get_acknowledgement(), 0);
        assert_eq!(
            tcp.get_checksum(),
            tcp::ipv4_checksum(&tcp, &VIP, &CONN.client)
        );
    }
}
