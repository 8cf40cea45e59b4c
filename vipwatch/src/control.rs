//! How processes find and talk to each other: the control socket through
//! which `vipwatch stats` and `vipwatch release` reach a running daemon,
//! and the per-interface lock that decides who owns an interface's XDP
//! program.
//!
//! Both are *abstract* Unix sockets (unix(7)): names that live in the
//! network namespace, not in the filesystem. So:
//!
//! * a daemon and its clients meet whatever mount namespace either runs in
//!   (`ip netns exec` remounts `/sys`, systemd units may have a private
//!   `/run`): being in the same network namespace, where the interfaces
//!   are, is what counts;
//! * the kernel removes the name when the process dies, even by SIGKILL:
//!   no stale file, pin or pid to guess from;
//! * the lock is taken by `bind(2)` itself, atomically.
//!
//! Abstract sockets have no file permissions, so the daemon checks who is
//! asking (`SO_PEERCRED`): anyone in the namespace may read counters, only
//! root or the daemon's own user may change anything.

use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::{
        fd::AsRawFd as _,
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::stats::Report;

/// Prefix of every daemon's control socket: `vipwatch/ctl/<pid>`.
const CTL_PREFIX: &str = "vipwatch/ctl/";
/// How long either side waits for the other's line.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The counters of every backup instance.
    Stats,
    /// Every instance, both roles (`vipwatch status`, the metrics).
    Status,
    /// Hand the VIP `vip` on `iface` back (`vipwatch release`).
    Release { iface: String, vip: String },
}

/// What the daemon answers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub pid: u32,
    /// Set when the request failed.
    pub error: Option<String>,
    /// For [`Request::Stats`] and [`Request::Status`].
    #[serde(default)]
    pub stats: Vec<Report>,
    /// For [`Request::Release`]: what happened, or `None` if no instance
    /// of this daemon has that VIP.
    pub released: Option<String>,
    /// For [`Request::Status`].
    #[serde(default)]
    pub status: Option<crate::status::DaemonStatus>,
}

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

/// The daemon's end: a listening socket named after its pid.
pub struct Server {
    listener: UnixListener,
}

impl Server {
    pub fn bind() -> anyhow::Result<Self> {
        let name = format!("{CTL_PREFIX}{}", std::process::id());
        let addr =
            SocketAddr::from_abstract_name(name.as_bytes()).context("naming the control socket")?;
        let listener = UnixListener::bind_addr(&addr)
            .with_context(|| format!("binding the control socket @{name}"))?;
        listener
            .set_nonblocking(true)
            .context("making the control socket non-blocking")?;
        Ok(Self { listener })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        self.listener.as_raw_fd()
    }

    /// Serves the connections that are waiting, one request each.
    pub fn serve(&self, mut handle: impl FnMut(Request, Peer) -> Response) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log::warn!("control socket: accept failed: {e}");
                    return;
                }
            };
            if let Err(e) = serve_one(stream, &mut handle) {
                log::debug!("control socket: a client went away: {e:#}");
            }
        }
    }
}

fn serve_one(
    stream: UnixStream,
    handle: &mut impl FnMut(Request, Peer) -> Response,
) -> anyhow::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let peer = peer_of(&stream)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(request, peer),
        Err(e) => Response {
            pid: std::process::id(),
            error: Some(format!("bad request: {e}")),
            ..Response::default()
        },
    };
    let mut out = serde_json::to_vec(&response)?;
    out.push(b'\n');
    (&stream).write_all(&out)?;
    Ok(())
}

/// `SO_PEERCRED` of a connected socket.
fn peer_of(stream: &UnixStream) -> anyhow::Result<Peer> {
    // SAFETY: a zeroed ucred is a valid out-parameter.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("SO_PEERCRED");
    }
    Ok(Peer {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// The pids of the vipwatch daemons in our network namespace, from the
/// abstract socket names the kernel lists there (unix(7), `/proc/net/unix`;
/// the thread's view, which follows `setns`).
pub fn daemons() -> Vec<u32> {
    let table = std::fs::read_to_string("/proc/thread-self/net/unix").unwrap_or_default();
    let mut pids: Vec<u32> = table
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(7))
        .filter_map(|path| path.strip_prefix('@')?.strip_prefix(CTL_PREFIX))
        .filter_map(|pid| pid.parse().ok())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// Sends `request` to daemon `pid` and returns its answer.
pub fn ask(pid: u32, request: &Request) -> anyhow::Result<Response> {
    let name = format!("{CTL_PREFIX}{pid}");
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let stream = UnixStream::connect_addr(&addr)
        .with_context(|| format!("connecting to vipwatch (pid {pid})"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream).write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the answer of vipwatch (pid {pid})"))?;
    let response: Response = serde_json::from_str(&answer)
        .with_context(|| format!("vipwatch (pid {pid}) answered {answer:?}"))?;
    if let Some(e) = &response.error {
        bail!("vipwatch (pid {pid}): {e}");
    }
    Ok(response)
}

/// Ownership of one interface's XDP program: an abstract socket named after
/// the interface index, bound (so held) for as long as the process lives.
pub struct IfaceLock {
    _listener: UnixListener,
}

impl IfaceLock {
    /// Takes the lock, or says which process holds it.
    pub fn take(iface: &str, ifindex: u32) -> anyhow::Result<Self> {
        let name = format!("vipwatch/iface/{ifindex}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => Ok(Self {
                _listener: listener,
            }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                // Connected, the holder's credentials are ours to read
                // (SO_PEERCRED on a socket connected to a listener).
                let holder = UnixStream::connect_addr(&addr)
                    .ok()
                    .and_then(|s| peer_of(&s).ok())
                    .map_or_else(
                        || "another vipwatch".to_owned(),
                        |p| format!("vipwatch (pid {})", p.pid),
                    );
                bail!(
                    "{holder} already runs on {iface}: one process serves every instance of an \
                     interface; add this instance to its configuration file (and reload it with \
                     SIGHUP), or stop it first"
                )
            }
            Err(e) => Err(e).with_context(|| format!("taking the lock of {iface} (@{name})")),
        }
    }
}
