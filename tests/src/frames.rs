//! Raw Ethernet frames in a lab: what an attacker on the LAN sends (forged
//! ARP, replayed frames) and what it captures first. Packet sockets
//! (`AF_PACKET`), opened inside the namespace that sends or listens.

use std::{
    net::Ipv4Addr,
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
