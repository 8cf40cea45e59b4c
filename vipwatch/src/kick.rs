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
//! * `rst`: a RST at the client's last acknowledgement number the previous
//!   holder saw. If nothing flowed since, it is exact and the client resets
//!   at once, a round trip sooner; if the number is stale but inside the
//!   window, the client answers with a challenge ACK (RFC 5961 §3.2) and
//!   our kernel's RST ends it as above; if it is stale beyond the window
//!   (a bulk transfer since the last snapshot), the client drops it and
//!   waits for its timer. A RST inside the window passes stateful
//!   firewalls.
//!
//! Segments are built once per kick (pure, [`segment`]) and sent in
//! batches with sendmmsg(2) from a raw socket bound to the interface.

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

use crate::conns::Conn;

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

/// Sends kick segments from a raw socket on one interface.
pub(crate) struct Kicker {
    fd: OwnedFd,
}

impl Kicker {
    pub(crate) fn open(iface: &str) -> anyhow::Result<Self> {
        // SAFETY: socket(2) takes no pointers; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_RAW,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error())
                .context("opening a raw socket for the kick (needs CAP_NET_RAW)");
        }
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: the name is valid for its length.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
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
        Ok(Self { fd })
    }

    /// Sends one segment per connection; returns how many the kernel took.
    pub(crate) fn kick(
        &self,
        mode: Mode,
        vip: Ipv4Addr,
        conns: &[(Conn, u32)],
    ) -> io::Result<usize> {
        let mut sent = 0;
        for batch in conns.chunks(BATCH) {
            let segments: Vec<[u8; SEGMENT_LEN]> = batch
                .iter()
                .map(|(c, ack)| segment(mode, vip, *c, *ack))
                .collect();
            let addrs: Vec<libc::sockaddr_in> = batch
                .iter()
                .map(|(c, _)| {
                    // SAFETY: a zeroed sockaddr_in is valid; fields set below.
                    let mut a: libc::sockaddr_in = unsafe { mem::zeroed() };
                    a.sin_family = libc::AF_INET as libc::sa_family_t;
                    a.sin_addr.s_addr = u32::from_ne_bytes(c.client.octets());
                    a
                })
                .collect();
            let mut iovs: Vec<libc::iovec> = segments
                .iter()
                .map(|s| libc::iovec {
                    iov_base: s.as_ptr() as *mut libc::c_void,
                    iov_len: s.len(),
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .zip(&addrs)
                .map(|(iov, a)| {
                    // SAFETY: a zeroed msghdr is valid; fields set below.
                    let mut h: libc::mmsghdr = unsafe { mem::zeroed() };
                    h.msg_hdr.msg_name = (a as *const libc::sockaddr_in).cast_mut().cast();
                    h.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    h.msg_hdr.msg_iov = iov;
                    h.msg_hdr.msg_iovlen = 1;
                    h
                })
                .collect();
            let mut done = 0;
            while done < msgs.len() {
                // SAFETY: msgs, iovs, segments and addrs outlive the call
                // and hold valid pointers and lengths.
                let n = unsafe {
                    libc::sendmmsg(
                        self.fd.as_raw_fd(),
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
