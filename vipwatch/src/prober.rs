//! Heartbeat probes: ICMP echo requests (RFC 792) or ICMPv6 echo requests
//! (RFC 4443 §4.1) carrying vipwatch's payload, sent from a raw socket of
//! the master's family bound to the watched interface.
//!
//! Nothing runs on the master: its kernel answers. We never read replies
//! from this socket (the XDP program counts them), so the socket filters
//! every ICMP type out of its receive queue.

use std::{
    io,
    net::IpAddr,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::Context as _;
use vipwatch_common::{AUTH_PROBE, Addr, PROBE_PAYLOAD_LEN, ProbePayload, auth_tag, siphash::Key};

use crate::{clock, sys};

/// ICMP header + payload.
pub const PROBE_LEN: usize = 8 + PROBE_PAYLOAD_LEN;

/// ICMPv4 echo request type.
const ECHO_REQUEST_V4: u8 = 8;
/// ICMPv6 echo request type.
const ECHO_REQUEST_V6: u8 = 128;

/// An ICMP echo request with a valid checksum.
pub fn echo_request(id: u16, seq: u64, payload: &ProbePayload) -> [u8; PROBE_LEN] {
    let mut pkt = echo_request_v6(id, seq, payload);
    pkt[0] = ECHO_REQUEST_V4;
    let sum = internet_checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// An ICMPv6 echo request, checksum left to the kernel: it always computes
/// ICMPv6 checksums on raw sockets (RFC 3542 §3.1), as the pseudo-header
/// needs the source address it chooses.
pub fn echo_request_v6(id: u16, seq: u64, payload: &ProbePayload) -> [u8; PROBE_LEN] {
    let mut pkt = [0u8; PROBE_LEN];
    pkt[0] = ECHO_REQUEST_V6;
    pkt[4..6].copy_from_slice(&id.to_be_bytes());
    // The 16-bit ICMP sequence wraps; the full one is in the payload.
    pkt[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
    pkt[8..].copy_from_slice(&payload.encode());
    pkt
}

/// RFC 1071 Internet checksum.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// What one tick sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tick {
    pub seq: u64,
    /// Read before the send, and the same as the payload's send time. Not
    /// after it: the reply can be counted before the send returns (on a
    /// veth the whole round trip may run inside the call), and the probe
    /// would then look sent after its own reply, one unanswered probe too
    /// many (tried: the bench's deadline -> decision median fell from 0.24
    /// to 0.10 ms, the decision no longer waiting for the fifth probe).
    pub at_ns: u64,
    pub master_sent: bool,
    pub witness_sent: bool,
}

/// What identifies one instance's probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub echo_id: u16,
    pub nonce: u64,
    pub slot: u16,
    pub vip: Addr,
    /// The pair's key: probes carry their tag.
    pub key: Option<Key>,
}

/// A peer's address, and its C form built once for sendto(2).
struct Dest {
    ip: IpAddr,
    name: socket2::SockAddr,
}

impl Dest {
    /// A link-local IPv6 peer is reached on the watched interface.
    fn new(ip: IpAddr, ifindex: u32) -> Self {
        let name = sys::scoped(ip, 0, ifindex).into();
        Self { ip, name }
    }
}

pub struct Prober {
    fd: OwnedFd,
    id: Identity,
    /// Its family is the probes' (the witness's is the same).
    master: Dest,
    witness: Option<Dest>,
    pub sent: u64,
    pub witness_sent: u64,
    pub errors: u64,
    last_error: Option<io::ErrorKind>,
}

impl Prober {
    /// A raw socket of the master's family on `iface`; the witness must be
    /// of the same family (the configuration checks it).
    pub fn open(
        iface: &str,
        id: Identity,
        master: IpAddr,
        witness: Option<IpAddr>,
        ifindex: u32,
    ) -> anyhow::Result<Self> {
        let (domain, proto, what) = match master {
            IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP, "ICMP"),
            IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6, "ICMPv6"),
        };
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let raw = unsafe {
            libc::socket(
                domain,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                proto,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!("opening a raw {what} socket for the probes (needs root or CAP_NET_RAW)")
            });
        }
        // SAFETY: raw is a fresh, valid fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        sys::bind_to_device(&fd, iface)
            .with_context(|| format!("binding the probe socket to {iface}"))?;
        // We receive nothing here; the XDP program does the counting.
        // ICMP_FILTER (raw(7)): a set bit filters that ICMP type out.
        // ICMP6_FILTER (RFC 3542 §3.2): likewise, 256 bits.
        const ICMP_FILTER: libc::c_int = 1;
        const ICMP6_FILTER: libc::c_int = 1;
        match master {
            IpAddr::V4(_) => {
                sys::setsockopt(&fd, libc::SOL_RAW, ICMP_FILTER, &u32::MAX.to_ne_bytes())
            }
            IpAddr::V6(_) => sys::setsockopt(&fd, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &[0xff; 32]),
        }
        .context("filtering ICMP out of the probe socket's receive queue")?;
        Ok(Self {
            fd,
            id,
            master: Dest::new(master, ifindex),
            witness: witness.map(|w| Dest::new(w, ifindex)),
            sent: 0,
            witness_sent: 0,
            errors: 0,
            last_error: None,
        })
    }

    /// Sends one tick: a probe to the master and, if configured, to the
    /// witness, with the same sequence number. A probe counts as sent only
    /// when the kernel accepted it.
    pub fn tick(&mut self, seq: u64) -> Tick {
        let at_ns = clock::now_ns();
        let mut payload = ProbePayload {
            slot: self.id.slot,
            nonce: self.id.nonce,
            seq,
            sent_ns: at_ns,
            vip: self.id.vip,
            tag: [0; 8],
        };
        if let Some(key) = &self.id.key {
            payload.tag = auth_tag(key, AUTH_PROBE, &payload.encode());
        }
        let pkt = if self.master.ip.is_ipv6() {
            echo_request_v6(self.id.echo_id, seq, &payload)
        } else {
            echo_request(self.id.echo_id, seq, &payload)
        };
        let master_sent = self.send(false, &pkt);
        if master_sent {
            self.sent += 1;
        }
        let witness_sent = self.witness.is_some() && self.send(true, &pkt);
        if witness_sent {
            self.witness_sent += 1;
        }
        Tick {
            seq,
            at_ns,
            master_sent,
            witness_sent,
        }
    }

    /// Sends one probe to the master or the witness. A failure is counted
    /// and logged, one line per kind of failure, not one per probe.
    fn send(&mut self, witness: bool, pkt: &[u8]) -> bool {
        let to = if witness {
            self.witness.as_ref()
        } else {
            Some(&self.master)
        };
        let Some(to) = to else {
            return false;
        };
        // SAFETY: pkt and the address are valid for the given lengths.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                to.name.as_ptr().cast(),
                to.name.len(),
            )
        };
        if rc >= 0 {
            if self.last_error.take().is_some() {
                log::info!("probes to {} are going out again", to.ip);
            }
            return true;
        }
        let err = io::Error::last_os_error();
        self.errors += 1;
        if self.last_error != Some(err.kind()) {
            log::warn!("probe to {} not sent: {err} (not counted as sent)", to.ip);
            self.last_error = Some(err.kind());
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3 numerical example: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // Odd length pads with a zero byte.
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
    }

    #[test]
    fn echo_request_is_well_formed() {
        let payload = ProbePayload {
            slot: 3,
            nonce: 0xabcd,
            seq: 0x1_0002,
            sent_ns: 99,
            vip: vipwatch_common::addr_v4([192, 0, 2, 100]),
            tag: [0; 8],
        };
        let pkt = echo_request(0x4242, payload.seq, &payload);
        assert_eq!(pkt[0], 8, "type echo request");
        assert_eq!(pkt[1], 0, "code");
        assert_eq!(&pkt[4..6], &[0x42, 0x42], "identifier");
        assert_eq!(&pkt[6..8], &[0x00, 0x02], "sequence wraps to 16 bits");
        assert_eq!(
            ProbePayload::decode(pkt[8..].try_into().unwrap()),
            Some(payload)
        );
        // A packet including its checksum sums to zero.
        assert_eq!(internet_checksum(&pkt), 0);
        // ICMPv6: the same but type 128, and the checksum is the kernel's.
        let v6 = echo_request_v6(0x4242, payload.seq, &payload);
        assert_eq!(v6[0], 128, "type echo request");
        assert_eq!(&v6[1..4], &[0, 0, 0], "code, checksum left to the kernel");
        assert_eq!(v6[4..], pkt[4..]);
    }
}
