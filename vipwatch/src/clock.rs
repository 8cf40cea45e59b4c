//! CLOCK_MONOTONIC in nanoseconds: the clock `bpf_ktime_get_ns` reads, so
//! kernel timestamps from the maps and ours compare directly.

use std::{io, os::fd::RawFd};

/// CLOCK_MONOTONIC now, in ns.
pub fn now_ns() -> u64 {
    // SAFETY: zeroed timespec is a valid out-parameter.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: CLOCK_MONOTONIC is always available; ts is writable.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Waits until one of `fds` is readable or CLOCK_MONOTONIC reaches
/// `until_ns`, with nanosecond resolution (ppoll(2), unlike epoll_wait or
/// tokio's 1 ms timer wheel). Returns the readable flags, one per fd.
pub fn wait_readable<const N: usize>(fds: [RawFd; N], until_ns: u64) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let left = until_ns.saturating_sub(now_ns());
    let ts = libc::timespec {
        tv_sec: (left / 1_000_000_000) as libc::time_t,
        tv_nsec: (left % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: pfds and ts are valid for the call; no signal mask change.
    let rc = unsafe { libc::ppoll(pfds.as_mut_ptr(), N as libc::nfds_t, &ts, std::ptr::null()) };
    if rc < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(err);
    }
    Ok(pfds.map(|p| p.revents & (libc::POLLIN | libc::POLLERR | libc::POLLHUP) != 0))
}

/// `1.234 ms` style, for logs.
pub fn ms(ns: u64) -> String {
    format!("{:.3} ms", ns as f64 / 1e6)
}

/// Signed difference `b - a` in ms, for timelines.
pub fn delta_ms(a: u64, b: u64) -> f64 {
    (b as i128 - a as i128) as f64 / 1e6
}
