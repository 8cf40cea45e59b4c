//! A UDP echo service and a paced client: the user's view of "who answers
//! the VIP, and when".
//!
//! Wire format: a request is an 8-byte big-endian sequence number; the
//! answer is those 8 bytes followed by the responder's name (UTF-8). The
//! client tells responders apart by that name, not by source address: an
//! echo server bound to 0.0.0.0 (or `::`) answers from its primary address,
//! not from the VIP the request was sent to. Both address families work
//! the same way; the client's family is its target's.

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    sync::{
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Lab,
    record::{Answer, Record},
};

/// How often the socket threads look at their stop flag.
const POLL: Duration = Duration::from_millis(20);

/// An [`EchoServer`] stops by itself after this long even if never dropped.
const ECHO_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// How long a [`Client`]'s receiver keeps listening after the last send.
const RECEIVE_GRACE: Duration = Duration::from_millis(500);

/// The default bound of a [`Client`]'s run time.
const DEFAULT_MAX_DURATION: Duration = Duration::from_secs(120);

/// The smallest interval a [`Client`] accepts.
const MIN_INTERVAL: Duration = Duration::from_micros(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections are single pushes; a poisoned lock is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
    )
}

/// Binds a UDP socket inside `host`'s namespace.
fn bind_in(lab: &Lab, host: &str, addr: SocketAddr) -> Result<UdpSocket> {
    let socket = lab
        .in_netns(host, move || UdpSocket::bind(addr))?
        .with_context(|| format!("binding UDP {addr} in lab host {host}"))?;
    socket
        .set_read_timeout(Some(POLL))
        .context("setting a UDP read timeout")?;
    Ok(socket)
}

/// A UDP echo server in one lab host: answers every request with its
/// sequence number and the server's name. Stops when dropped.
pub struct EchoServer {
    name: String,
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts answering on UDP `0.0.0.0:port` in `host`'s namespace,
    /// identifying itself as `name`.
    pub fn start(lab: &Lab, host: &str, port: u16, name: &str) -> Result<EchoServer> {
        Self::start_on(
            lab,
            host,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into(),
            name,
        )
    }

    /// Starts answering on UDP `[::]:port` in `host`'s namespace (IPv6; the
    /// lab must have IPv6 enabled), identifying itself as `name`.
    pub fn start_v6(lab: &Lab, host: &str, port: u16, name: &str) -> Result<EchoServer> {
        Self::start_on(
            lab,
            host,
            SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0).into(),
            name,
        )
    }

    /// Starts answering on UDP `addr` in `host`'s namespace, identifying
    /// itself as `name`.
    pub fn start_on(lab: &Lab, host: &str, addr: SocketAddr, name: &str) -> Result<EchoServer> {
        let port = addr.port();
        let socket = bind_in(lab, host, addr)?;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, served, errors) =
                (Arc::clone(&stop), Arc::clone(&served), Arc::clone(&errors));
            let name = name.to_owned();
            thread::Builder::new()
                .name(format!("echo-{name}"))
                .spawn(move || serve(&socket, name.as_bytes(), &stop, &served, &errors))
                .context("starting the echo server thread")?
        };
        Ok(EchoServer {
            name: name.to_owned(),
            port,
            stop,
            served,
            errors,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Requests answered so far.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Malformed requests and failed replies so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Stops the server and returns how many requests it answered.
    pub fn stop(mut self) -> u64 {
        self.shutdown();
        self.served()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            eprintln!("vipwatch-tests: echo server {} panicked", self.name);
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    socket: &UdpSocket,
    name: &[u8],
    stop: &AtomicBool,
    served: &AtomicU64,
    errors: &AtomicU64,
) {
    let end = Instant::now() + ECHO_MAX_LIFETIME;
    let mut buf = [0u8; 2048];
    let mut reply = Vec::with_capacity(8 + name.len());
    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
        match socket.recv_from(&mut buf) {
            Ok((n, peer)) if n >= 8 => {
                reply.clear();
                reply.extend_from_slice(&buf[..8]);
                reply.extend_from_slice(name);
                match socket.send_to(&reply, peer) {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
            Ok(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                // E.g. a pending ICMP error; do not spin on a broken socket.
                errors.fetch_add(1, Ordering::Relaxed);
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

#[derive(Default)]
struct ClientState {
    sends: Vec<Instant>,
    send_errors: u64,
    answers: Vec<Answer>,
    bad_answers: u64,
}

struct Shared {
    state: Mutex<ClientState>,
    answered: Condvar,
    stop: AtomicBool,
}

/// Configures a [`Client`]; see [`Client::builder`].
#[must_use]
pub struct ClientBuilder {
    target: SocketAddr,
    interval: Duration,
    max_duration: Duration,
}

impl ClientBuilder {
    /// The client stops sending after this long even if never stopped
    /// (default 120 s).
    pub fn max_duration(mut self, max: Duration) -> Self {
        self.max_duration = max;
        self
    }

    /// Starts sending from `host`'s namespace.
    pub fn start(self, lab: &Lab, host: &str) -> Result<Client> {
        let ClientBuilder {
            target,
            interval,
            max_duration,
        } = self;
        if interval < MIN_INTERVAL {
            bail!("a client interval of {interval:?} is too short; use at least {MIN_INTERVAL:?}");
        }
        let any: SocketAddr = match target {
            SocketAddr::V4(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
        };
        let recv_socket = bind_in(lab, host, any)?;
        let send_socket = recv_socket
            .try_clone()
            .context("cloning the client socket")?;
        let shared = Arc::new(Shared {
            state: Mutex::new(ClientState::default()),
            answered: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let started = Instant::now();
        let end = started + max_duration;
        let receiver = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("client-recv".into())
                .spawn(move || receive(&recv_socket, &shared, end + RECEIVE_GRACE))
                .context("starting the client receiver thread")?
        };
        // From here on, dropping `client` stops and joins the threads.
        let mut client = Client {
            target,
            interval,
            started,
            shared,
            sender: None,
            receiver: Some(receiver),
        };
        let shared = Arc::clone(&client.shared);
        client.sender = Some(
            thread::Builder::new()
                .name("client-send".into())
                .spawn(move || send(&send_socket, target, interval, started, end, &shared))
                .context("starting the client sender thread")?,
        );
        Ok(client)
    }
}

/// A paced UDP client in one lab host, recording every request and answer.
/// Stops when dropped (or after its maximum duration).
pub struct Client {
    target: SocketAddr,
    interval: Duration,
    started: Instant,
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
    receiver: Option<JoinHandle<()>>,
}

impl Client {
    /// Configures a client sending to `target` (IPv4 or IPv6) every
    /// `interval`.
    pub fn builder(target: impl Into<SocketAddr>, interval: Duration) -> ClientBuilder {
        ClientBuilder {
            target: target.into(),
            interval,
            max_duration: DEFAULT_MAX_DURATION,
        }
    }

    /// Starts a client in `host` sending to `target` every `interval`, for
    /// at most 120 s (see [`ClientBuilder::max_duration`]).
    pub fn start(
        lab: &Lab,
        host: &str,
        target: impl Into<SocketAddr>,
        interval: Duration,
    ) -> Result<Client> {
        Self::builder(target, interval).start(lab, host)
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    /// Waits for an answer from `name` to a request sent at or after
    /// `sent_after`, and returns it.
    pub fn wait_for_answer_from(
        &self,
        name: &str,
        sent_after: Instant,
        timeout: Duration,
    ) -> Result<Answer> {
        self.wait_for(sent_after, timeout, |a| a.responder == name)
            .with_context(|| format!("waiting for {name} to answer {}", self.target))
    }

    /// Waits for an answer from anyone to a request sent at or after
    /// `sent_after`, and returns it.
    pub fn wait_for_any_answer(&self, sent_after: Instant, timeout: Duration) -> Result<Answer> {
        self.wait_for(sent_after, timeout, |_| true)
            .with_context(|| format!("waiting for anyone to answer {}", self.target))
    }

    fn wait_for(
        &self,
        sent_after: Instant,
        timeout: Duration,
        matches: impl Fn(&Answer) -> bool,
    ) -> Result<Answer> {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.shared.state);
        let mut scanned = 0;
        loop {
            if let Some(answer) = state.answers[scanned..]
                .iter()
                .find(|a| a.sent_at >= sent_after && matches(a))
            {
                return Ok(answer.clone());
            }
            scanned = state.answers.len();
            let now = Instant::now();
            if now >= deadline {
                let mut counts = std::collections::BTreeMap::new();
                for a in state.answers.iter().filter(|a| a.sent_at >= sent_after) {
                    *counts.entry(a.responder.as_str()).or_insert(0u64) += 1;
                }
                bail!(
                    "no matching answer within {timeout:?}; answers since then by responder: {counts:?}; \
                     {} sends failed in all",
                    state.send_errors
                );
            }
            state = self
                .shared
                .answered
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// A copy of everything recorded so far; `stopped` is now.
    pub fn snapshot(&self) -> Record {
        let state = lock(&self.shared.state);
        self.record(&state, Instant::now())
    }

    fn record(&self, state: &ClientState, stopped: Instant) -> Record {
        Record {
            target: self.target,
            interval: self.interval,
            started: self.started,
            stopped,
            sends: state.sends.clone(),
            send_errors: state.send_errors,
            answers: state.answers.clone(),
            bad_answers: state.bad_answers,
        }
    }

    /// Stops sending and receiving; returns every request and answer.
    pub fn stop(mut self) -> Record {
        self.shutdown();
        let stopped = Instant::now();
        let state = std::mem::take(&mut *lock(&self.shared.state));
        let ClientState {
            sends,
            send_errors,
            answers,
            bad_answers,
        } = state;
        Record {
            target: self.target,
            interval: self.interval,
            started: self.started,
            stopped,
            sends,
            send_errors,
            answers,
            bad_answers,
        }
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for (what, handle) in [
            ("sender", self.sender.take()),
            ("receiver", self.receiver.take()),
        ] {
            if let Some(handle) = handle
                && handle.join().is_err()
            {
                eprintln!("vipwatch-tests: the client's {what} thread panicked");
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn send(
    socket: &UdpSocket,
    target: SocketAddr,
    interval: Duration,
    started: Instant,
    end: Instant,
    shared: &Shared,
) {
    // Sleep precisely: the default 50 µs timer slack is a quarter of a
    // 200 µs interval.
    // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) } != 0 {
        eprintln!(
            "vipwatch-tests: PR_SET_TIMERSLACK failed ({}); client pacing is coarser",
            std::io::Error::last_os_error()
        );
    }
    let interval_ns = interval.as_nanos();
    let mut slot: u128 = 0;
    let mut seq: u64 = 0;
    // Absolute deadlines: slot k goes out at started + k * interval.
    let slot_deadline = |slot: u128| {
        u64::try_from(interval_ns * slot)
            .ok()
            .and_then(|ns| started.checked_add(Duration::from_nanos(ns)))
    };
    while let Some(deadline) = slot_deadline(slot) {
        if deadline >= end {
            break;
        }
        let now = Instant::now();
        if deadline > now {
            thread::sleep(deadline - now);
        }
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let sent_at = Instant::now();
        // Recorded before sending, so the receiver always finds it.
        lock(&shared.state).sends.push(sent_at);
        if socket.send_to(&seq.to_be_bytes(), target).is_err() {
            lock(&shared.state).send_errors += 1;
        }
        seq += 1;
        // Skip slots we are already late for rather than bursting to catch
        // up: at most one late send, then back on the grid.
        let elapsed_slots =
            Instant::now().saturating_duration_since(started).as_nanos() / interval_ns;
        slot = (slot + 1).max(elapsed_slots);
    }
}

fn receive(socket: &UdpSocket, shared: &Shared, end: Instant) {
    let mut buf = [0u8; 2048];
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < end {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let received_at = Instant::now();
                let mut state = lock(&shared.state);
                match parse_answer(&buf[..n]) {
                    Some((seq, name)) if (seq as usize) < state.sends.len() => {
                        let sent_at = state.sends[seq as usize];
                        state.answers.push(Answer {
                            seq,
                            sent_at,
                            received_at,
                            responder: name,
                            from,
                        });
                        drop(state);
                        shared.answered.notify_all();
                    }
                    _ => state.bad_answers += 1,
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                // An ICMP error queued on the socket (unconnected sockets
                // rarely get them); it is not an answer. Do not spin.
                lock(&shared.state).bad_answers += 1;
                thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn parse_answer(datagram: &[u8]) -> Option<(u64, String)> {
    let (seq, name) = datagram.split_first_chunk::<8>()?;
    let name = std::str::from_utf8(name).ok()?;
    Some((u64::from_be_bytes(*seq), name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let mut datagram = 42u64.to_be_bytes().to_vec();
        datagram.extend_from_slice(b"backup");
        assert_eq!(parse_answer(&datagram), Some((42, "backup".to_owned())));
        assert_eq!(
            parse_answer(&42u64.to_be_bytes()),
            Some((42, String::new()))
        );
        assert_eq!(parse_answer(b"short"), None);
        let mut bad = 1u64.to_be_bytes().to_vec();
        bad.push(0xff);
        assert_eq!(parse_answer(&bad), None);
    }
}
