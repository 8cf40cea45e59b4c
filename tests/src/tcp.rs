//! A TCP request/response service ([`TcpServer`]) and a client with many
//! connections ([`TcpClient`]) that keeps a request in flight on each and
//! records, per connection, when it broke and when it was back: what a TCP
//! application behind a VIP sees of a failover.
//!
//! Requests and replies are 8 bytes: a kind (`0` answer at once, `1` answer
//! after the server's hold), a responder id (in replies), and a sequence
//! number. One thread each, epoll, non-blocking sockets: 10 000
//! connections are fine. Every wait is bounded. IPv4 and IPv6 alike: the
//! client's family is its target's, a server listens on `0.0.0.0` or, with
//! [`TcpServer::start_v6`], on `::`.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, RawFd},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::Lab;

const MSG: usize = 8;
const KIND_NOW: u8 = 0;
const KIND_HOLD: u8 = 1;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A minimal epoll(7) wrapper.
struct Epoll {
    fd: RawFd,
}

impl Epoll {
    fn new() -> Result<Self> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            bail!("epoll_create1: {}", io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    fn add(&self, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is valid for the call.
        if unsafe { libc::epoll_ctl(self.fd, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn wait(&self, out: &mut [libc::epoll_event], timeout: Duration) -> io::Result<usize> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: out is valid for out.len() events.
        let n = unsafe { libc::epoll_wait(self.fd, out.as_mut_ptr(), out.len() as i32, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(0);
            }
            return Err(e);
        }
        Ok(n as usize)
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: fd is ours.
        unsafe { libc::close(self.fd) };
    }
}

/// Raises the open-file limit so tens of thousands of sockets fit (root
/// may raise the hard limit too); keeps a higher one.
fn raise_nofile() {
    const WANT: libc::rlim_t = 65_536;
    // SAFETY: plain getrlimit/setrlimit on a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 || r.rlim_cur >= WANT {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: WANT,
            rlim_max: r.rlim_max.max(WANT),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            // Not root: as far as the hard limit goes.
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Serves requests on `port` in one lab host: answers each at once, or
/// after `hold` for requests of kind "hold". It runs as a process of its own
/// (`vwlab-tcp-server`, built beside vipwatch), so that a client with
/// thousands of connections and the servers do not share one open-file
/// limit.
pub struct TcpServer {
    proc: crate::Proc,
}

impl TcpServer {
    /// Listens on `0.0.0.0:port` in `host`.
    pub fn start(lab: &Lab, host: &str, port: u16, id: u8, hold: Duration) -> Result<Self> {
        Self::start_with(lab, host, port, id, hold, false)
    }

    /// Listens on `[::]:port` in `host` (the lab must have IPv6 enabled).
    pub fn start_v6(lab: &Lab, host: &str, port: u16, id: u8, hold: Duration) -> Result<Self> {
        Self::start_with(lab, host, port, id, hold, true)
    }

    fn start_with(
        lab: &Lab,
        host: &str,
        port: u16,
        id: u8,
        hold: Duration,
        v6: bool,
    ) -> Result<Self> {
        let bin = server_bin()?;
        // Thousands of connections arriving at once: a listen queue of the
        // default 4096 overflows, and the kernel then resets connections
        // the clients believe established.
        lab.run(
            host,
            "sysctl",
            [
                "-qw",
                "net.core.somaxconn=65535",
                "net.ipv4.tcp_max_syn_backlog=65535",
            ],
        )
        .context("raising the listen queue limits")?;
        let mut args = vec![
            port.to_string(),
            id.to_string(),
            hold.as_millis().to_string(),
        ];
        if v6 {
            args.push("v6".into());
        }
        let p = lab.spawn(host, &bin, &args)?;
        p.wait_for_line("listening", Duration::from_secs(10))
            .with_context(|| format!("the TCP server did not start:\n{}", p.output()))?;
        Ok(Self { proc: p })
    }

    /// An error with the server's output if it is no longer running.
    pub fn check(&self) -> Result<()> {
        if self.proc.is_running() {
            return Ok(());
        }
        bail!(
            "the TCP server {} exited:\n{}",
            self.proc.label(),
            self.proc.output()
        )
    }
}

/// `vwlab-tcp-server`, in the directory of the vipwatch binary under test.
fn server_bin() -> Result<std::path::PathBuf> {
    let vipwatch = crate::vipwatch_bin()?;
    let dir = vipwatch
        .parent()
        .context("the vipwatch binary has no directory")?;
    let bin = dir.join("vwlab-tcp-server");
    if !bin.is_file() {
        bail!(
            "{} is missing; `cargo xtask build` builds it beside vipwatch",
            bin.display()
        );
    }
    Ok(bin)
}

/// The server's main loop (`vwlab-tcp-server PORT ID HOLD_MS [v6]`), in
/// its lab host's namespace: on `0.0.0.0`, or on `::` if `v6`.
pub fn server_main(port: u16, id: u8, hold: Duration, v6: bool) -> Result<()> {
    raise_nofile();
    let listener = TcpListener::bind((if v6 { "::" } else { "0.0.0.0" }, port))?;
    listener.set_nonblocking(true)?;
    println!("listening on port {port}");
    serve(listener, id, hold, &AtomicBool::new(false))
}

fn serve(listener: TcpListener, id: u8, hold: Duration, stop: &AtomicBool) -> Result<()> {
    // Listen with a backlog for thousands of connections arriving at once
    // (std's is 128): a second listen(2) only changes the backlog.
    // SAFETY: listen on our own socket.
    unsafe { libc::listen(listener.as_raw_fd(), 16_384) };
    let ep = Epoll::new()?;
    const LISTENER: u64 = u64::MAX;
    ep.add(listener.as_raw_fd(), LISTENER, libc::EPOLLIN as u32)?;
    let mut conns: HashMap<u64, (TcpStream, Vec<u8>)> = HashMap::new();
    let mut held: VecDeque<(Instant, u64, [u8; MSG])> = VecDeque::new();
    let mut next_token = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while !stop.load(Ordering::Relaxed) {
        let timeout = held
            .front()
            .map_or(Duration::from_millis(50), |(due, _, _)| {
                due.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(50));
        let n = ep.wait(&mut events, timeout)?;
        for ev in &events[..n] {
            let token = ev.u64;
            if token == LISTENER {
                loop {
                    match listener.accept() {
                        Ok((s, _)) => {
                            s.set_nonblocking(true)?;
                            s.set_nodelay(true)?;
                            let t = next_token;
                            next_token += 1;
                            ep.add(s.as_raw_fd(), t, (libc::EPOLLIN | libc::EPOLLRDHUP) as u32)?;
                            conns.insert(t, (s, Vec::new()));
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        // A connection reset while queued, or the file
                        // limit: the next one may do.
                        Err(e) => {
                            eprintln!("accept: {e}");
                            break;
                        }
                    }
                }
                continue;
            }
            let mut close = false;
            if let Some((s, buf)) = conns.get_mut(&token) {
                let mut tmp = [0u8; 4096];
                loop {
                    match s.read(&mut tmp) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(k) => buf.extend_from_slice(&tmp[..k]),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
                while buf.len() >= MSG {
                    let mut req = [0u8; MSG];
                    req.copy_from_slice(&buf[..MSG]);
                    buf.drain(..MSG);
                    req[1] = id;
                    if req[0] == KIND_HOLD && !hold.is_zero() {
                        held.push_back((Instant::now() + hold, token, req));
                    } else if s.write_all(&req).is_err() {
                        close = true;
                    }
                }
            }
            if close {
                conns.remove(&token);
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _, _)| *due <= now) {
            let Some((_, token, reply)) = held.pop_front() else {
                break;
            };
            if let Some((s, _)) = conns.get_mut(&token)
                && s.write_all(&reply).is_err()
            {
                conns.remove(&token);
            }
        }
    }
    Ok(())
}

/// Watches a lab host's TCP reset counter (`EstabResets` in
/// /proc/net/snmp: established connections the kernel closed on a RST) to
/// time when the resets reach the kernel, apart from when a busy client
/// application gets to them.
pub struct ResetWatch {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ResetWatch {
    /// How often the counter is read.
    const PERIOD: Duration = Duration::from_micros(500);

    pub fn start(lab: &Lab, host: &str) -> Result<Self> {
        // A /proc/net file opened in the namespace keeps showing that
        // namespace's counters, whoever reads it.
        let mut file =
            lab.in_netns(host, || std::fs::File::open("/proc/thread-self/net/snmp"))??;
        let first = estab_resets(&mut file)?;
        let samples = Arc::new(Mutex::new(vec![(Instant::now(), first)]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let samples = Arc::clone(&samples);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("resets-{host}"))
                .spawn(move || {
                    let mut last = first;
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Self::PERIOD);
                        let Ok(now) = estab_resets(&mut file) else {
                            return;
                        };
                        if now != last {
                            lock(&samples).push((Instant::now(), now));
                            last = now;
                        }
                    }
                })?
        };
        Ok(Self {
            samples,
            stop,
            thread: Some(thread),
        })
    }

    /// One entry per reset counted after `t0`: how long after `t0` it was
    /// seen (to the watch's period).
    pub fn since(&self, t0: Instant) -> Vec<Duration> {
        let samples = lock(&self.samples);
        let mut base = samples
            .iter()
            .take_while(|(at, _)| *at < t0)
            .last()
            .map_or(0, |(_, n)| *n);
        let mut out = Vec::new();
        for &(at, n) in samples.iter().filter(|(at, _)| *at >= t0) {
            for _ in base..n {
                out.push(at - t0);
            }
            base = base.max(n);
        }
        out
    }
}

impl Drop for ResetWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `Tcp: … EstabResets …` of /proc/net/snmp, read afresh.
fn estab_resets(file: &mut std::fs::File) -> Result<u64> {
    use std::io::Seek as _;
    file.rewind()?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let mut tcp = text.lines().filter(|l| l.starts_with("Tcp:"));
    let (Some(names), Some(values)) = (tcp.next(), tcp.next()) else {
        bail!("no Tcp lines in /proc/net/snmp");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == "EstabResets")
        .context("no EstabResets in /proc/net/snmp")?;
    values
        .split_whitespace()
        .nth(at)
        .context("short Tcp line in /proc/net/snmp")?
        .parse()
        .context("EstabResets is not a number")
}

/// What happened to one connection of the client.
#[derive(Clone, Debug, Default)]
pub struct ConnLog {
    /// When each break (reset, EOF, error) was noticed.
    pub broken: Vec<Instant>,
    /// (when, responder) of the first reply after each reconnect.
    pub back: Vec<(Instant, u8)>,
    /// (when, responder) of the last reply.
    pub last_reply: Option<(Instant, u8)>,
    /// When the last reply of each responder came.
    pub last_by: BTreeMap<u8, Instant>,
    pub replies: u64,
}

/// What each connection saw of a failure at `t0`.
#[derive(Clone, Copy, Debug)]
pub struct Recovery {
    /// Failure → first successful reply after reconnecting.
    pub back_after: Duration,
    /// Failure → the connection broke (reset or error), if it did before
    /// it was back.
    pub broken_after: Option<Duration>,
    pub responder: u8,
}

/// How far apart the client opens its connections (2 000 a second).
const CONNECT_EVERY: Duration = Duration::from_micros(500);

/// Many connections to one address, each with a request in flight (see
/// the module documentation), reconnecting at once when one breaks.
pub struct TcpClient {
    logs: Arc<Mutex<Vec<ConnLog>>>,
    /// Why connections broke, and how often.
    causes: Arc<Mutex<BTreeMap<String, u64>>>,
    /// The client thread's own failure, if it ended early.
    failed: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How the client's requests go.
#[derive(Clone, Copy, Debug)]
pub struct Pace {
    /// Pause between a reply and the next request.
    pub period: Duration,
    /// Ask the server to hold its replies (a request stays in flight for
    /// the server's hold; the first after a reconnect is answered at once).
    pub hold: bool,
}

impl TcpClient {
    pub fn start(
        lab: &Lab,
        host: &str,
        to: impl Into<SocketAddr>,
        conns: usize,
        pace: Pace,
    ) -> Result<Self> {
        raise_nofile();
        let to: SocketAddr = to.into();
        let logs = Arc::new(Mutex::new(vec![ConnLog::default(); conns]));
        let causes = Arc::new(Mutex::new(BTreeMap::new()));
        let failed = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        // Sockets are made in the host's namespace, by this thread.
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let logs = Arc::clone(&logs);
            let causes = Arc::clone(&causes);
            let failed = Arc::clone(&failed);
            let stop = Arc::clone(&stop);
            let ns = lab.netns_path(host)?;
            std::thread::Builder::new()
                .name(format!("tcp-client-{host}"))
                .spawn(move || {
                    let entered = std::fs::File::open(&ns).and_then(|f| {
                        // SAFETY: setns on a valid namespace fd.
                        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::last_os_error())
                        }
                    });
                    let ready = match entered {
                        Ok(()) => Ok(()),
                        Err(e) => Err(anyhow::anyhow!("entering {}: {e}", ns.display())),
                    };
                    let refused = ready.is_err();
                    if tx.send(ready).is_err() || refused {
                        // Start() gave up waiting, or could not enter.
                        return;
                    }
                    if let Err(e) = run_client(to, conns, pace, &logs, &causes, &stop) {
                        *lock(&failed) = Some(format!("{e:#}"));
                    }
                })?
        };
        rx.recv_timeout(Duration::from_secs(10))
            .context("the TCP client thread did not start")??;
        Ok(Self {
            logs,
            causes,
            failed,
            stop,
            thread: Some(thread),
        })
    }

    pub fn logs(&self) -> Vec<ConnLog> {
        lock(&self.logs).clone()
    }

    /// Waits until every connection has a reply from `responder`.
    pub fn wait_all_answered_by(&self, responder: u8, timeout: Duration) -> Result<()> {
        crate::wait_until(
            &format!("every connection is answered by {responder}"),
            timeout,
            || {
                Ok(lock(&self.logs)
                    .iter()
                    .all(|l| l.last_reply.is_some_and(|(_, r)| r == responder)))
            },
        )
        .map(drop)
        .with_context(|| {
            let logs = lock(&self.logs);
            let by = logs
                .iter()
                .filter(|l| l.last_reply.is_some_and(|(_, r)| r == responder))
                .count();
            let never = logs.iter().filter(|l| l.last_reply.is_none()).count();
            let breaks: usize = logs.iter().map(|l| l.broken.len()).sum();
            format!(
                "{by} of {} connections answered by {responder} last, {never} never answered, \
                 {breaks} breaks ({:?}){}",
                logs.len(),
                lock(&self.causes),
                lock(&self.failed)
                    .as_ref()
                    .map_or(String::new(), |e| format!("; the client stopped: {e}"))
            )
        })
    }

    /// The last reply from `responder` on any connection.
    pub fn last_reply_from(&self, responder: u8) -> Option<Instant> {
        lock(&self.logs)
            .iter()
            .filter_map(|l| l.last_by.get(&responder).copied())
            .max()
    }

    /// Waits until every connection is back (first reply after a
    /// reconnect) after `t0`, or `timeout`; returns what each saw (`None`
    /// for one not back).
    pub fn recoveries(&self, t0: Instant, timeout: Duration) -> Vec<Option<Recovery>> {
        let get = || -> Vec<Option<Recovery>> {
            lock(&self.logs)
                .iter()
                .map(|l| {
                    l.back
                        .iter()
                        .find(|(at, _)| *at >= t0)
                        .map(|&(at, r)| Recovery {
                            back_after: at.saturating_duration_since(t0),
                            broken_after: l
                                .broken
                                .iter()
                                .find(|b| **b >= t0 && **b <= at)
                                .map(|b| b.saturating_duration_since(t0)),
                            responder: r,
                        })
                })
                .collect()
        };
        let deadline = Instant::now() + timeout;
        loop {
            let r = get();
            if r.iter().all(Option::is_some) || Instant::now() >= deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for TcpClient {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("vipwatch-tests: the TCP client panicked");
        }
    }
}

struct ClientConn {
    stream: Option<TcpStream>,
    connected: bool,
    /// Waiting for this many reply bytes.
    buf: Vec<u8>,
    awaiting: bool,
    next_send: Option<Instant>,
    /// The first request since (re)connecting is answered at once, and its
    /// reply marks the connection as back.
    fresh: bool,
    seq: u32,
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let family = match to {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: socket(2) takes no pointers; the fd is owned below.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is fresh and ours.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    stream.set_nodelay(true)?;
    // SAFETY: a zeroed sockaddr_storage is valid; the family's fields are
    // set below, and it is large enough for either family.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match to {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            let sin = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in6.
            let sin6 = unsafe { &mut *(&raw mut sa).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    // SAFETY: sa is valid for len bytes.
    let rc = unsafe { libc::connect(fd, (&raw const sa).cast(), len as libc::socklen_t) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

/// Why a connection broke, for the tally.
fn cause(s: &TcpStream, connected: bool) -> String {
    let what = if connected { "error" } else { "connect" };
    match s.take_error() {
        Ok(Some(e)) => format!("{what}: {e}"),
        Ok(None) => format!("{what}: hang-up"),
        Err(e) => format!("{what}: {e}"),
    }
}

fn run_client(
    to: SocketAddr,
    n: usize,
    pace: Pace,
    logs: &Mutex<Vec<ConnLog>>,
    causes: &Mutex<BTreeMap<String, u64>>,
    stop: &AtomicBool,
) -> Result<()> {
    let ep = Epoll::new()?;
    let interest = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
    let fresh_conn = |stream: Option<TcpStream>, seq: u32| ClientConn {
        stream,
        connected: false,
        buf: Vec::new(),
        awaiting: false,
        next_send: None,
        fresh: false,
        seq,
    };
    let mut conns: Vec<ClientConn> = (0..n).map(|_| fresh_conn(None, 0)).collect();
    // What is due when: a request after its pause, or a reconnect.
    let mut due: BTreeMap<(Instant, usize), ()> = BTreeMap::new();
    // Connections open at CONNECT_RATE: thousands of connects at once on
    // the lab's 2 cores starve everything else, the daemons included (a
    // late reply is a takeover), which is not what any test measures.
    let start = Instant::now();
    for k in 0..n {
        due.insert((start + CONNECT_EVERY * k as u32, k), ());
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let send = |c: &mut ClientConn| -> bool {
        let Some(s) = c.stream.as_mut() else {
            return false;
        };
        c.seq = c.seq.wrapping_add(1);
        let kind = if pace.hold && !c.fresh {
            KIND_HOLD
        } else {
            KIND_NOW
        };
        let mut req = [kind, 0, 0, 0, 0, 0, 0, 0];
        req[4..].copy_from_slice(&c.seq.to_be_bytes());
        c.awaiting = true;
        s.write_all(&req).is_ok()
    };
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let mut broken = Vec::new();
        while let Some((&(at, k), ())) = due.iter().next() {
            if at > now {
                break;
            }
            due.remove(&(at, k));
            let c = &mut conns[k];
            c.next_send = None;
            if c.stream.is_none() {
                let s = connect(to)?;
                ep.add(s.as_raw_fd(), k as u64, interest)?;
                *c = fresh_conn(Some(s), c.seq);
            } else if c.connected && !c.awaiting && !send(c) {
                broken.push((k, "send failed".to_owned()));
            }
        }
        let timeout = due
            .keys()
            .next()
            .map_or(Duration::from_millis(20), |(at, _)| {
                at.saturating_duration_since(Instant::now())
            })
            .min(Duration::from_millis(20));
        let got = ep.wait(&mut events, timeout)?;
        // Breaks are stamped when the kernel reported them, before this
        // thread spends time on the batch (reconnects included).
        let woke = Instant::now();
        for ev in &events[..got] {
            let k = ev.u64 as usize;
            let flags = ev.events;
            let c = &mut conns[k];
            let Some(s) = c.stream.as_mut() else {
                continue;
            };
            if flags & (libc::EPOLLERR | libc::EPOLLHUP) as u32 != 0 {
                broken.push((k, cause(s, c.connected)));
                continue;
            }
            if !c.connected && flags & libc::EPOLLOUT as u32 != 0 {
                if !matches!(s.take_error(), Ok(None)) {
                    broken.push((k, cause(s, false)));
                    continue;
                }
                c.connected = true;
                c.fresh = true;
                if !send(c) {
                    broken.push((k, "send failed".to_owned()));
                    continue;
                }
            }
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP) as u32 == 0 {
                continue;
            }
            let Some(s) = c.stream.as_mut() else {
                continue;
            };
            let mut tmp = [0u8; 256];
            loop {
                match s.read(&mut tmp) {
                    Ok(0) => {
                        broken.push((k, "end of stream".to_owned()));
                        break;
                    }
                    Ok(m) => c.buf.extend_from_slice(&tmp[..m]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        broken.push((k, format!("read: {e}")));
                        break;
                    }
                }
            }
            while c.buf.len() >= MSG {
                let responder = c.buf[1];
                c.buf.drain(..MSG);
                c.awaiting = false;
                let at = Instant::now();
                {
                    let mut l = lock(logs);
                    let log = &mut l[k];
                    log.replies += 1;
                    log.last_reply = Some((at, responder));
                    log.last_by.insert(responder, at);
                    if c.fresh {
                        log.back.push((at, responder));
                    }
                }
                c.fresh = false;
                let next = at + pace.period;
                c.next_send = Some(next);
                due.insert((next, k), ());
            }
        }
        broken.sort_unstable_by_key(|(k, _)| *k);
        broken.dedup_by_key(|(k, _)| *k);
        for (k, why) in broken {
            let c = &mut conns[k];
            if c.stream.is_none() {
                continue;
            }
            *lock(causes).entry(why).or_default() += 1;
            if let Some(at) = c.next_send.take() {
                due.remove(&(at, k));
            }
            let was_connected = c.connected;
            c.stream = None;
            c.connected = false;
            lock(logs)[k].broken.push(woke);
            // Reconnect at once, as a client library would; a connect that
            // failed is retried after a short pause rather than in a loop.
            let retry = if was_connected {
                Instant::now()
            } else {
                Instant::now() + Duration::from_millis(5)
            };
            c.next_send = Some(retry);
            due.insert((retry, k), ());
        }
    }
    Ok(())
}
