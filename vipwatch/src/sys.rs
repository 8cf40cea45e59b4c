//! Small wrappers over Linux facilities the daemon needs and std lacks:
//! capability checks, signalfd, getrandom, interface-bound sockets and
//! socket addresses.

use std::{
    fs, io, mem,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::{AsFd, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
};

use anyhow::{Context as _, bail};

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The capabilities a non-root daemon needs, as systemd's
/// `AmbientCapabilities=` spells them (the unit in `dist/` lists these).
pub const CAPABILITIES: &str = "CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_NET_RAW";

/// Refuses early, before anything is attached, when we lack the rights to
/// load XDP (CAP_BPF or CAP_SYS_ADMIN), have it verified (CAP_PERFMON: the
/// verifier refuses pointer arithmetic on packet data to a loader without
/// it, "pointer arithmetic ... prohibited for !root"), configure addresses
/// (CAP_NET_ADMIN) and send raw packets (CAP_NET_RAW).
pub fn require_privileges(what: &str) -> anyhow::Result<()> {
    let eff = effective_caps()?;
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let mut missing = Vec::new();
    if !(has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_BPF");
    }
    if !(has(CAP_PERFMON) || has(CAP_SYS_ADMIN)) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !missing.is_empty() {
        bail!(
            "{what} needs root or the capabilities {CAPABILITIES} (missing {}); run it as root, e.g. \
             `cargo xtask run -- {}`, or from the systemd unit",
            missing.join(", "),
            what.trim_start_matches("vipwatch ")
        );
    }
    Ok(())
}

fn effective_caps() -> anyhow::Result<u64> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    Ok(status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0))
}

/// Puts the calling thread under SCHED_FIFO at `priority`: it then runs
/// as soon as its timer fires, ahead of any normal (CFS) task. Only this
/// thread: threads and processes started earlier keep their policy.
pub fn realtime(priority: u8) -> anyhow::Result<()> {
    let param = libc::sched_param {
        sched_priority: libc::c_int::from(priority),
    };
    // SAFETY: valid param; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!("setting SCHED_FIFO priority {priority} (needs root / CAP_SYS_NICE)")
        });
    }
    Ok(())
}

/// Random bytes from the kernel.
pub fn random_u64() -> anyhow::Result<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: buf is valid for 8 bytes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        return Err(io::Error::last_os_error()).context("getrandom");
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Signals delivered through a file descriptor, so the real-time loop can
/// wait for them together with its timers in one ppoll(2).
pub struct SignalFd {
    fd: OwnedFd,
}

/// The signals the daemons handle: SIGINT/SIGTERM/SIGHUP stop (a dropped
/// ssh session must not kill the backup without releasing the VIP), SIGUSR1
/// is `vipwatch release` asking the backup to hand the VIP back.
pub const HANDLED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1];

impl SignalFd {
    /// Blocks [`HANDLED`] in this thread (call before spawning threads, so
    /// they inherit the mask) and opens a signalfd for them.
    pub fn new() -> anyhow::Result<Self> {
        let set = handled_set();
        // SAFETY: set is a valid sigset; old mask not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc)).context("blocking signals");
        }
        // SAFETY: set is valid; -1 creates a new fd.
        let raw = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("signalfd");
        }
        // SAFETY: raw is a fresh fd we own.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Pending signals, oldest first.
    pub fn read(&self) -> Vec<libc::c_int> {
        let mut out = Vec::new();
        loop {
            // SAFETY: zeroed siginfo is a valid buffer.
            let mut info: libc::signalfd_siginfo = unsafe { mem::zeroed() };
            let size = mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: info is valid for `size` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size) };
            if n != size as isize {
                break;
            }
            out.push(info.ssi_signo as libc::c_int);
        }
        out
    }
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise the zeroed set.
    unsafe {
        let mut set: libc::sigset_t = mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in HANDLED {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// For child processes (hooks, health commands): undo the signal mask the
/// daemon set, which exec would otherwise pass on. Async-signal-safe.
pub fn unblock_signals_in_child() -> io::Result<()> {
    let set = handled_set();
    // SAFETY: valid set; sigprocmask is async-signal-safe.
    let rc = unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An eventfd(2): a counter another thread bumps to wake a ppoll(2).
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> anyhow::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("eventfd");
        }
        // SAFETY: raw is a fresh fd we own.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(raw) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Wakes whoever waits on it. Cannot fail short of a closed fd or an
    /// overflow of 2^64 - 1 pending wake-ups.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
        if n != 8 {
            log::error!("waking a thread failed: {}", io::Error::last_os_error());
        }
    }

    /// Resets the counter after a wake-up.
    pub fn clear(&self) {
        let mut n: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN when not set.
        unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut n).cast(), 8) };
    }
}

/// setsockopt(2) with the option's value as bytes.
pub fn setsockopt(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &[u8],
) -> io::Result<()> {
    // SAFETY: value is valid for value.len() bytes for the call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Binds `fd` to `iface` (SO_BINDTODEVICE): it sends and receives on that
/// interface only.
pub fn bind_to_device(fd: &impl AsFd, iface: &str) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        libc::SO_BINDTODEVICE,
        iface.as_bytes(),
    )
}

/// `ip:port`, with `ifindex` as the scope of a link-local IPv6 address
/// (vipwatch's peers are on the instance's interface).
pub fn scoped(ip: IpAddr, port: u16, ifindex: u32) -> SocketAddr {
    match ip {
        IpAddr::V4(v4) => SocketAddr::from((v4, port)),
        IpAddr::V6(v6) => {
            let scope = if v6.is_unicast_link_local() {
                ifindex
            } else {
                0
            };
            SocketAddrV6::new(v6, port, 0, scope).into()
        }
    }
}

/// A connection-sync socket: a non-blocking UDP socket bound to a port
/// (0: any) on one interface only (SO_BINDTODEVICE, set before bind so the
/// port is taken on that interface alone). Dual-stack (IPv6 with
/// `IPV6_V6ONLY` off, so IPv4 peers appear as IPv4-mapped addresses)
/// unless the kernel has no IPv6.
pub struct SyncSocket {
    pub socket: UdpSocket,
    dual: bool,
}

impl SyncSocket {
    pub fn open(iface: &str, port: u16) -> anyhow::Result<Self> {
        use socket2::{Domain, Socket, Type};
        let (socket, dual) = match Socket::new(Domain::IPV6, Type::DGRAM, None) {
            Ok(socket) => (socket, true),
            Err(_) => (
                Socket::new(Domain::IPV4, Type::DGRAM, None).context("opening a UDP socket")?,
                false,
            ),
        };
        socket
            .set_nonblocking(true)
            .context("making the sync socket non-blocking")?;
        socket
            .bind_device(Some(iface.as_bytes()))
            .with_context(|| format!("binding a UDP socket to {iface}"))?;
        if dual {
            socket
                .set_only_v6(false)
                .context("making the sync socket dual-stack (IPV6_V6ONLY off)")?;
        }
        let any = if dual {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))
        };
        socket.bind(&any.into()).with_context(|| {
            format!("binding UDP port {port} on {iface} (conn_sync_port; is it in use?)")
        })?;
        // A whole-table sync is a burst of up to ~1 600 datagrams (65 536
        // connections); the default buffers (~200 KiB) hold about 90.
        for (force, plain) in [
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        ] {
            set_buffer(&socket, force, plain, SYNC_SOCKET_BUFFER);
        }
        Ok(Self {
            socket: socket.into(),
            dual,
        })
    }

    /// `to:port` as a destination of this socket: an IPv4 peer of a
    /// dual-stack socket by its IPv4-mapped address; a link-local IPv6
    /// peer on `ifindex`.
    pub fn dest(&self, to: IpAddr, port: u16, ifindex: u32) -> SocketAddr {
        match to {
            IpAddr::V4(v4) if self.dual => {
                SocketAddrV6::new(v4.to_ipv6_mapped(), port, 0, 0).into()
            }
            _ => scoped(to, port, ifindex),
        }
    }

    /// Sends `bytes` to `dest` from our address `from` (IPV6_PKTINFO on a
    /// dual-stack socket, which also carries an IPv4-mapped source for an
    /// IPv4 peer; IP_PKTINFO on an IPv4 one), or from the address the
    /// kernel chooses without `from`. The peer accepts syncs from the
    /// address it probes only; the kernel's choice can be another (RFC
    /// 6724: a temporary IPv6 address, say).
    pub fn send_from(
        &self,
        bytes: &[u8],
        dest: SocketAddr,
        from: Option<IpAddr>,
    ) -> io::Result<usize> {
        let Some(from) = from else {
            return self.socket.send_to(bytes, dest);
        };
        use nix::sys::socket::{ControlMessage, MsgFlags, SockaddrStorage, sendmsg};
        let v6;
        let v4;
        let info = if dest.is_ipv6() {
            let addr = match from {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: addr.octets(),
                },
                ipi6_ifindex: 0,
            };
            ControlMessage::Ipv6PacketInfo(&v6)
        } else {
            let IpAddr::V4(from) = from else {
                return self.socket.send_to(bytes, dest);
            };
            v4 = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(from.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            ControlMessage::Ipv4PacketInfo(&v4)
        };
        sendmsg(
            self.socket.as_raw_fd(),
            &[io::IoSlice::new(bytes)],
            &[info],
            MsgFlags::empty(),
            Some(&SockaddrStorage::from(dest)),
        )
        .map_err(io::Error::from)
    }
}

/// Bytes of each buffer of a sync socket.
const SYNC_SOCKET_BUFFER: libc::c_int = 4 << 20;

/// Sets a socket buffer's size past `net.core.[rw]mem_max` (the `FORCE`
/// option, CAP_NET_ADMIN), or as far as that limit allows.
fn set_buffer(fd: &impl AsFd, force: libc::c_int, plain: libc::c_int, bytes: libc::c_int) {
    for opt in [force, plain] {
        if setsockopt(fd, libc::SOL_SOCKET, opt, &bytes.to_ne_bytes()).is_ok() {
            return;
        }
    }
}
