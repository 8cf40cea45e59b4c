//! Service health checks for `vipwatch master` (`--health-cmd`,
//! `--health-http`), and the fall/rise hysteresis that turns single check
//! results into a verdict.
//!
//! The pure parts — URL parsing, the request bytes, judging a (partial)
//! HTTP response, describing an exit status, the hysteresis counter — are
//! plain functions with unit tests. [`Check::run`] is the thin async shell
//! around them: every check, including killing a command that overran, ends
//! within one `--health-interval`, so checks never overlap.

use std::{
    fmt,
    net::Ipv6Addr,
    os::unix::process::ExitStatusExt as _,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use crate::config::CheckSpec;

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    time::{Instant, timeout_at},
};

/// How much of an HTTP body `--health-expect` searches (the classic
/// `wget -O- | grep` reads it all; a health page is small, and a cap keeps a
/// misbehaving server from making us buffer without end).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Status line and headers larger than this are refused.
pub const HEADER_LIMIT: usize = 8 * 1024;
/// How much of a health command's stderr is kept for the log.
const STDERR_LIMIT: usize = 2048;
/// After a health command exits, how long we keep reading what it wrote to
/// stderr (a background grandchild may hold the pipe open for ever).
const STDERR_DRAIN: Duration = Duration::from_millis(5);

/// A configured health check.
#[derive(Clone, Debug)]
pub enum Check {
    /// `--health-cmd`: `sh -c CMD`, healthy iff it exits 0 in time.
    Command(String),
    /// `--health-http [--health-expect TEXT]`.
    Http {
        url: HttpUrl,
        expect: Option<String>,
    },
}

impl Check {
    /// The check a configuration describes.
    pub fn from_spec(spec: &CheckSpec) -> anyhow::Result<Self> {
        match spec {
            CheckSpec::Command(cmd) => Ok(Self::Command(cmd.clone())),
            CheckSpec::Http { url, expect } => {
                let parsed = HttpUrl::parse(url)
                    .map_err(|why| anyhow::anyhow!("health_http {url:?}: {why}"))?;
                Ok(Self::Http {
                    url: parsed,
                    expect: expect.clone(),
                })
            }
        }
    }

    /// Runs the check once; it must finish within `limit` (a command still
    /// running then is killed with its whole process group). `Err` carries
    /// why the service is unhealthy, for the log.
    pub async fn run(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        match self {
            Self::Command(cmd) => run_command(cmd, deadline, limit).await,
            Self::Http { url, expect } => run_http(url, expect.as_deref(), deadline, limit)
                .await
                .map_err(|why| format!("GET {url}: {why}")),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command(cmd) => write!(f, "command `{cmd}`"),
            Self::Http { url, expect: None } => write!(f, "GET {url} (2xx)"),
            Self::Http {
                url,
                expect: Some(text),
            } => write!(f, "GET {url} (2xx, body contains {text:?})"),
        }
    }
}

/// Runs a check every interval on a thread of its own (a current-thread
/// tokio runtime: commands and HTTP are async there) and hands each result
/// to `deliver`. Each check is bounded by the interval, so the next one
/// starts on time. Dropping the runner stops it; a check still running is
/// killed with its process group.
pub struct Runner {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Runner {
    pub fn start(
        name: &str,
        check: Check,
        interval: Duration,
        deliver: impl Fn(Result<(), String>) + Send + 'static,
    ) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the health check runtime")?;
        let thread = std::thread::Builder::new()
            .name(format!("health-{name}"))
            .spawn(move || {
                rt.block_on(async move {
                    let mut ticker = tokio::time::interval(interval);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => return,
                            _ = ticker.tick() => {}
                        }
                        tokio::select! {
                            _ = &mut stopped => return,
                            result = check.run(interval) => deliver(result),
                        }
                    }
                });
            })
            .context("starting the health check thread")?;
        Ok(Self {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // Err: the thread is already gone, which is what we want.
            let _gone = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            log::error!("the health check thread panicked");
        }
    }
}

// ---------------------------------------------------------------------------
// Hysteresis.

/// The health verdict after hysteresis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy,
}

/// `--health-fall` / `--health-rise`: a verdict flips only after that many
/// consecutive results against it, so one slow check does not move the VIP
/// (keepalived's `fall`/`rise`, HAProxy's the same). The very first result
/// sets the verdict directly: at start there is nothing to protect yet, and
/// claiming the VIP for a service that is down would be worse.
#[derive(Clone, Debug)]
pub struct Hysteresis {
    fall: u32,
    rise: u32,
    verdict: Option<Verdict>,
    /// Consecutive results that contradict the current verdict.
    against: u32,
}

impl Hysteresis {
    pub fn new(fall: u32, rise: u32) -> Self {
        Self {
            fall: fall.max(1),
            rise: rise.max(1),
            verdict: None,
            against: 0,
        }
    }

    /// Records one check result; the new verdict if it changed (or is the
    /// first one).
    pub fn record(&mut self, healthy: bool) -> Option<Verdict> {
        let result = if healthy {
            Verdict::Healthy
        } else {
            Verdict::Unhealthy
        };
        match self.verdict {
            None => {
                self.verdict = Some(result);
                self.against = 0;
                Some(result)
            }
            Some(current) if current == result => {
                self.against = 0;
                None
            }
            Some(current) => {
                self.against += 1;
                if self.against >= self.needed(current) {
                    self.verdict = Some(result);
                    self.against = 0;
                    Some(result)
                } else {
                    None
                }
            }
        }
    }

    /// The verdict so far (`None` before the first result).
    pub fn verdict(&self) -> Option<Verdict> {
        self.verdict
    }

    /// Consecutive results against the current verdict, and how many flip it.
    pub fn progress(&self) -> (u32, u32) {
        (self.against, self.verdict.map_or(1, |v| self.needed(v)))
    }

    fn needed(&self, current: Verdict) -> u32 {
        match current {
            Verdict::Healthy => self.fall,
            Verdict::Unhealthy => self.rise,
        }
    }
}

// ---------------------------------------------------------------------------
// --health-cmd.

/// Describes how a health command ended, with the last line it wrote to
/// stderr (usually the reason) if any.
pub fn describe_exit(status: ExitStatus, stderr: &[u8]) -> String {
    let how = match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => status.to_string(),
    };
    match last_line(stderr) {
        Some(line) => format!("{how}: {line}"),
        None => how,
    }
}

/// The last non-blank line of `text`, trimmed and cut to 200 characters.
fn last_line(text: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    Some(match line.char_indices().nth(200) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
    })
}

/// Kills a health command's whole process group unless disarmed: `sh -c`
/// may have started pipelines or children that would outlive a kill of
/// `sh` alone.
struct GroupKiller {
    /// The group id (= the pid of `sh`, the group leader). Only set while
    /// `sh` is not reaped: an unreaped child keeps its pid, so the group id
    /// cannot have been reused by an unrelated process.
    pgid: Option<libc::pid_t>,
}

impl GroupKiller {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid {
            // SAFETY: killpg(2) takes no pointers; `pgid` is the group of our
            // own unreaped child (see the field's comment).
            let rc = unsafe { libc::killpg(pgid, libc::SIGKILL) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::ESRCH) {
                    log::warn!("could not kill the health command (process group {pgid}): {err}");
                }
            }
        }
    }

    /// The child was reaped: its group id may be reused from now on.
    fn disarm(&mut self) {
        self.pgid = None;
    }
}

impl Drop for GroupKiller {
    /// A check abandoned mid-way (the daemon stops) leaves nothing running.
    fn drop(&mut self) {
        self.kill();
    }
}

async fn run_command(cmd: &str, deadline: Instant, limit: Duration) -> Result<(), String> {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Kept (2 KiB) so the log can say why the check failed.
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills everything it started,
        // and a Ctrl-C meant for vipwatch does not hit a check mid-way.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
    let mut killer = GroupKiller {
        pgid: child.id().and_then(|pid| libc::pid_t::try_from(pid).ok()),
    };
    let mut stderr = child.stderr.take();
    let mut captured = Vec::new();

    let waited = timeout_at(deadline, async {
        let mut open = stderr.is_some();
        loop {
            tokio::select! {
                status = child.wait() => return status,
                more = read_some(&mut stderr, &mut captured), if open => open = more,
            }
        }
    })
    .await;
    let status = match waited {
        Ok(Ok(status)) => {
            killer.disarm();
            status
        }
        Ok(Err(e)) => return Err(format!("waiting for the health command failed: {e}")),
        Err(_elapsed) => {
            killer.kill();
            // SIGKILL cannot be caught: `sh` is gone at once; reap it now (and
            // bounded, should the kernel be slow) so no zombie is left.
            match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
                Ok(Ok(_)) => killer.disarm(),
                Ok(Err(e)) => log::warn!("reaping the killed health command failed: {e}"),
                Err(_) => log::warn!("the killed health command has not exited after 1 s"),
            }
            return Err(format!(
                "did not finish within {} ms; killed it",
                limit.as_millis()
            ));
        }
    };
    if status.success() {
        return Ok(());
    }
    // What the command wrote just before exiting may still be in the pipe.
    let drain_until = deadline.min(Instant::now() + STDERR_DRAIN);
    while stderr.is_some() {
        match timeout_at(drain_until, read_some(&mut stderr, &mut captured)).await {
            Ok(true) => {}
            Ok(false) | Err(_) => break,
        }
    }
    Err(describe_exit(status, &captured))
}

/// Reads one chunk from `pipe` into `keep` (up to [`STDERR_LIMIT`] bytes,
/// the rest is read and discarded so the writer never blocks). `false` at
/// end of file or on an error.
async fn read_some<R: AsyncRead + Unpin>(pipe: &mut Option<R>, keep: &mut Vec<u8>) -> bool {
    let Some(reader) = pipe.as_mut() else {
        return false;
    };
    let mut chunk = [0u8; 512];
    match reader.read(&mut chunk).await {
        Ok(0) => false,
        Ok(n) => {
            let room = STDERR_LIMIT.saturating_sub(keep.len());
            keep.extend_from_slice(&chunk[..n.min(room)]);
            true
        }
        Err(e) => {
            log::debug!("reading the health command's stderr: {e}");
            false
        }
    }
}

// ---------------------------------------------------------------------------
// --health-http.

/// An `http://` URL, split into what a minimal HTTP/1.0 client needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http://HOST[:PORT][/PATH][?QUERY][#FRAGMENT]`; IPv6 hosts in
    /// brackets. The fragment is dropped (never sent, RFC 9110 §4.2.1).
    pub fn parse(url: &str) -> Result<Self, String> {
        const EXAMPLE: &str = "e.g. http://127.0.0.1:8080/health";
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("only http:// URLs are supported ({EXAMPLE})"))?;
        if rest.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(
                "the URL contains spaces or control characters; percent-encode them (%20)".into(),
            );
        }
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let path = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        if authority.contains('@') {
            return Err("user:password@ in the URL is not supported; point it at an unauthenticated health page".into());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or_else(|| {
                format!("unterminated [IPv6] host ({EXAMPLE}, or http://[2001:db8::1]:8080/)")
            })?;
            host.parse::<Ipv6Addr>()
                .map_err(|_| format!("[{host}] is not an IPv6 address"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| format!("unexpected {p:?} after [{host}]"))?,
                    ),
                ),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(format!("the URL has no host ({EXAMPLE})"));
        }
        let port = match port {
            None | Some("") => 80,
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("port {p:?} must be a number from 1 to 65535"))?,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            path,
        })
    }

    /// `host[:port]` as the `Host` header wants it (RFC 9110 §7.2).
    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            80 => host,
            port => format!("{host}:{port}"),
        }
    }

    /// The request: HTTP/1.0, so the server closes the connection after the
    /// answer and never uses chunked encoding; `Host` anyway, for name-based
    /// virtual hosts.
    pub fn request(&self) -> String {
        format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: vipwatch/{}\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path,
            self.authority(),
            env!("CARGO_PKG_VERSION"),
        )
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}{}", self.authority(), self.path)
    }
}

/// What the bytes of an HTTP response received so far tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Not decided yet: read more.
    NeedMore,
    Healthy,
    Unhealthy(String),
}

/// Judges a response: healthy iff the status is 2xx and, with `expect`, the
/// first [`BODY_LIMIT`] bytes of the body contain it. `eof` says no more
/// bytes will come (the server closed, or we stop reading); with it the
/// answer is never [`Progress::NeedMore`].
///
/// Decides as early as it can: a non-2xx status line is enough, and so are
/// the complete headers when nothing is expected of the body.
pub fn assess(response: &[u8], expect: Option<&str>, eof: bool) -> Progress {
    let incomplete = |what: &str| {
        if eof {
            Progress::Unhealthy(format!("the connection closed {what}"))
        } else if response.len() >= HEADER_LIMIT {
            Progress::Unhealthy(format!(
                "no end of the headers in the first {} KiB",
                HEADER_LIMIT / 1024
            ))
        } else {
            Progress::NeedMore
        }
    };
    let Some(line_end) = find(response, b"\n") else {
        return if response.is_empty() && eof {
            Progress::Unhealthy("empty answer (the connection closed without a response)".into())
        } else {
            incomplete("inside the status line")
        };
    };
    let line = String::from_utf8_lossy(&response[..line_end]);
    let line = line.trim_end_matches('\r');
    let Some((code, reason)) = parse_status_line(line) else {
        let shown: String = line.chars().take(60).collect();
        return Progress::Unhealthy(format!("not an HTTP response (status line {shown:?})"));
    };
    if !(200..300).contains(&code) {
        return Progress::Unhealthy(match reason {
            "" => format!("HTTP status {code}"),
            reason => format!("HTTP status {code} {reason}"),
        });
    }
    let Some(body_start) = header_end(response) else {
        return incomplete("inside the headers");
    };
    if body_start > HEADER_LIMIT {
        return Progress::Unhealthy(format!("headers longer than {} KiB", HEADER_LIMIT / 1024));
    }
    let Some(text) = expect else {
        return Progress::Healthy;
    };
    let body = &response[body_start..];
    let capped = body.len() >= BODY_LIMIT;
    let body = &body[..body.len().min(BODY_LIMIT)];
    if find(body, text.as_bytes()).is_some() {
        return Progress::Healthy;
    }
    let complete = content_length(&response[..body_start]).is_some_and(|len| body.len() >= len);
    if eof || capped || complete {
        let scope = if capped {
            format!(" in its first {} KiB", BODY_LIMIT / 1024)
        } else {
            String::new()
        };
        Progress::Unhealthy(format!(
            "HTTP status {code} but the body does not contain {text:?}{scope}"
        ))
    } else {
        Progress::NeedMore
    }
}

/// `HTTP/1.x SP 3DIGIT [SP reason]` → (code, reason).
fn parse_status_line(line: &str) -> Option<(u16, &str)> {
    let rest = line.strip_prefix("HTTP/")?;
    let (version, rest) = rest.split_once(' ')?;
    if !version.starts_with('1') {
        return None;
    }
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((code.parse().ok()?, reason.trim()))
}

/// Offset of the body: after the first empty line (CRLF CRLF, or a bare
/// LF LF from a sloppy server).
fn header_end(response: &[u8]) -> Option<usize> {
    let crlf = find(response, b"\r\n\r\n").map(|i| i + 4);
    let lf = find(response, b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `Content-Length` of a response's header block, if it has a valid one.
fn content_length(headers: &[u8]) -> Option<usize> {
    String::from_utf8_lossy(headers)
        .lines()
        .skip(1)
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
}

/// First index of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn run_http(
    url: &HttpUrl,
    expect: Option<&str>,
    deadline: Instant,
    limit: Duration,
) -> Result<(), String> {
    let late = || format!("no complete answer within {} ms", limit.as_millis());
    let addrs: Vec<_> = timeout_at(
        deadline,
        tokio::net::lookup_host((url.host.as_str(), url.port)),
    )
    .await
    .map_err(|_| {
        format!(
            "resolving {} took longer than {} ms",
            url.host,
            limit.as_millis()
        )
    })?
    .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
    .collect();
    let mut stream = None;
    let mut refused = Vec::new();
    for addr in &addrs {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => refused.push(format!("{addr}: {e}")),
            Err(_) => {
                return Err(format!(
                    "connecting to {addr} took longer than {} ms",
                    limit.as_millis()
                ));
            }
        }
    }
    let Some(mut stream) = stream else {
        return Err(if refused.is_empty() {
            format!("{} resolved to no address", url.host)
        } else {
            format!("cannot connect ({})", refused.join("; "))
        });
    };
    timeout_at(deadline, stream.write_all(url.request().as_bytes()))
        .await
        .map_err(|_| late())?
        .map_err(|e| format!("sending the request: {e}"))?;

    let cap = HEADER_LIMIT + BODY_LIMIT;
    let mut response = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| late())?
            .map_err(|e| format!("reading the answer: {e}"))?;
        let room = cap - response.len();
        response.extend_from_slice(&chunk[..n.min(room)]);
        match assess(&response, expect, n == 0 || response.len() >= cap) {
            Progress::NeedMore => {}
            Progress::Healthy => return Ok(()),
            Progress::Unhealthy(why) => return Err(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, path: &str) -> HttpUrl {
        HttpUrl {
            host: host.into(),
            port,
            path: path.into(),
        }
    }

    #[test]
    fn urls_are_split_into_host_port_and_path() {
        let table = [
            (
                "http://127.0.0.1:8080/health",
                url("127.0.0.1", 8080, "/health"),
            ),
            ("http://example.org", url("example.org", 80, "/")),
            ("http://example.org:", url("example.org", 80, "/")),
            ("http://example.org/", url("example.org", 80, "/")),
            ("http://example.org?x=1", url("example.org", 80, "/?x=1")),
            ("http://h/a/b?c=d&e#frag", url("h", 80, "/a/b?c=d&e")),
            ("http://[2001:db8::1]:81/x", url("2001:db8::1", 81, "/x")),
            ("http://[2001:db8::1]", url("2001:db8::1", 80, "/")),
        ];
        for (text, expected) in table {
            assert_eq!(HttpUrl::parse(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let table = [
            ("https://h/", "only http://"),
            ("ftp://h/", "only http://"),
            ("http://", "no host"),
            ("http:///path", "no host"),
            ("http://:8080/", "no host"),
            ("http://h:0/", "port"),
            ("http://h:65536/", "port"),
            ("http://h:http/", "port"),
            ("http://user:pw@h/", "user:password"),
            ("http://h/a b", "percent-encode"),
            ("http://h/a\r\nX-Injected: 1", "percent-encode"),
            ("http://[2001:db8::1/", "unterminated"),
            ("http://[nope]/", "not an IPv6"),
            ("http://[2001:db8::1]x/", "unexpected"),
        ];
        for (text, needle) in table {
            let err = HttpUrl::parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn request_is_http10_with_host_header() {
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            url("127.0.0.1", 8080, "/health?full=1").request(),
            format!(
                "GET /health?full=1 HTTP/1.0\r\nHost: 127.0.0.1:8080\r\nUser-Agent: vipwatch/{version}\r\n\
                 Accept: */*\r\nConnection: close\r\n\r\n"
            )
        );
        assert!(
            url("example.org", 80, "/")
                .request()
                .contains("\r\nHost: example.org\r\n")
        );
        assert!(
            url("2001:db8::1", 81, "/")
                .request()
                .contains("\r\nHost: [2001:db8::1]:81\r\n")
        );
        assert_eq!(
            url("2001:db8::1", 81, "/x").to_string(),
            "http://[2001:db8::1]:81/x"
        );
    }

    fn unhealthy(p: Progress) -> String {
        match p {
            Progress::Unhealthy(why) => why,
            other => panic!("expected unhealthy, got {other:?}"),
        }
    }

    #[test]
    fn status_decides_without_expect() {
        let ok = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello";
        assert_eq!(assess(ok, None, false), Progress::Healthy);
        assert_eq!(assess(ok, None, true), Progress::Healthy);
        assert_eq!(
            assess(b"HTTP/1.1 204 No Content\r\n\r\n", None, true),
            Progress::Healthy
        );
        assert_eq!(assess(b"HTTP/1.1 299\n\n", None, true), Progress::Healthy);
        // Headers not complete yet: wait for them.
        assert_eq!(
            assess(b"HTTP/1.0 200 OK\r\nServer: x\r\n", None, false),
            Progress::NeedMore
        );
        assert_eq!(assess(b"HTTP/1.0 20", None, false), Progress::NeedMore);
        assert_eq!(assess(b"", None, false), Progress::NeedMore);
    }

    #[test]
    fn non_2xx_and_garbage_are_unhealthy() {
        let table: [(&[u8], bool, &str); 9] = [
            (
                b"HTTP/1.0 503 Service Unavailable\r\n",
                false,
                "HTTP status 503 Service Unavailable",
            ),
            (
                b"HTTP/1.1 301 Moved Permanently\r\nLocation: /\r\n\r\n",
                true,
                "HTTP status 301",
            ),
            (b"HTTP/1.1 199\r\n\r\n", true, "HTTP status 199"),
            (b"HTTP/1.0 404\r\n", false, "HTTP status 404"),
            (b"SSH-2.0-OpenSSH_9.6\r\n", false, "not an HTTP response"),
            (b"HTTP/2 200\r\n", false, "not an HTTP response"),
            (b"", true, "empty answer"),
            (
                b"HTTP/1.0 200 OK\r\nServer: x\r\n",
                true,
                "closed inside the headers",
            ),
            (b"HTTP/1.0 2", true, "closed inside the status line"),
        ];
        for (response, eof, needle) in table {
            let why = unhealthy(assess(response, None, eof));
            assert!(
                why.contains(needle),
                "{:?}: {why}",
                String::from_utf8_lossy(response)
            );
        }
    }

    #[test]
    fn expect_searches_the_body_only() {
        let response = b"HTTP/1.0 200 OK\r\nX-Status: READY\r\n\r\nstatus: READY\n";
        assert_eq!(
            assess(response, Some("status: READY"), true),
            Progress::Healthy
        );
        // Found before the end: no need to wait for the close.
        assert_eq!(assess(response, Some("READY"), false), Progress::Healthy);
        // Only in a header: not in the body.
        let header_only = b"HTTP/1.0 200 OK\r\nX-Status: READY\r\n\r\nstarting\n";
        assert_eq!(
            assess(header_only, Some("READY"), false),
            Progress::NeedMore
        );
        let why = unhealthy(assess(header_only, Some("READY"), true));
        assert!(why.contains("does not contain \"READY\""), "{why}");
        // A 5xx body that contains the text is still unhealthy.
        let why = unhealthy(assess(
            b"HTTP/1.0 500 Oops\r\n\r\nREADY",
            Some("READY"),
            true,
        ));
        assert!(why.contains("500"), "{why}");
    }

    #[test]
    fn content_length_ends_the_wait_for_expect() {
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nstarting";
        let why = unhealthy(assess(response, Some("READY"), false));
        assert!(why.contains("does not contain"), "{why}");
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstarting";
        assert_eq!(assess(partial, Some("READY"), false), Progress::NeedMore);
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\nContent-Length:  42 \r\n\r\n"),
            Some(42)
        );
        assert_eq!(
            content_length(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"),
            None
        );
        assert_eq!(
            content_length(b"Content-Length: 5\r\n\r\n"),
            None,
            "the status line is no header"
        );
    }

    #[test]
    fn body_search_is_capped() {
        let mut response = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        response.resize(response.len() + BODY_LIMIT, b'x');
        response.extend_from_slice(b"READY");
        let why = unhealthy(assess(&response, Some("READY"), false));
        assert!(why.contains("first 64 KiB"), "{why}");
        // Right at the end of the window still counts.
        let mut edge = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        edge.resize(edge.len() + BODY_LIMIT - 5, b'x');
        edge.extend_from_slice(b"READY");
        assert_eq!(assess(&edge, Some("READY"), true), Progress::Healthy);
    }

    #[test]
    fn endless_headers_are_refused() {
        let mut response = b"HTTP/1.0 200 OK\r\n".to_vec();
        while response.len() < HEADER_LIMIT {
            response.extend_from_slice(b"X-Padding: aaaaaaaaaaaaaaaa\r\n");
        }
        let why = unhealthy(assess(&response, None, false));
        assert!(why.contains("8 KiB"), "{why}");
        response.extend_from_slice(b"\r\n");
        let why = unhealthy(assess(&response, None, true));
        assert!(why.contains("headers longer"), "{why}");
    }

    #[test]
    fn sloppy_lf_only_responses_are_accepted() {
        assert_eq!(
            assess(b"HTTP/1.0 200 OK\nServer: x\n\nREADY", Some("READY"), true),
            Progress::Healthy
        );
        assert_eq!(header_end(b"HTTP/1.0 200 OK\r\n\r\nbody\n\n"), Some(19));
    }

    #[test]
    fn exits_are_described_with_the_last_stderr_line() {
        let exited = |code: i32| ExitStatus::from_raw(code << 8);
        assert_eq!(describe_exit(exited(1), b""), "exited with status 1");
        assert_eq!(
            describe_exit(exited(7), b"  \ncurl: (7) Failed to connect\n\n"),
            "exited with status 7: curl: (7) Failed to connect"
        );
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL), b""),
            "killed by signal 9"
        );
        let long = "e".repeat(300);
        let described = describe_exit(exited(2), long.as_bytes());
        assert!(
            described.ends_with('…') && described.len() < 260,
            "{described}"
        );
    }

    #[test]
    fn first_result_sets_the_verdict() {
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.verdict(), None);
        assert_eq!(h.record(false), Some(Verdict::Unhealthy));
        let mut h = Hysteresis::new(2, 3);
        assert_eq!(h.record(true), Some(Verdict::Healthy));
    }

    #[test]
    fn fall_and_rise_need_consecutive_results() {
        // (results, verdicts reported after each), fall 2, rise 3.
        let t = Some(Verdict::Healthy);
        let f = Some(Verdict::Unhealthy);
        let table: [(&[bool], &[Option<Verdict>]); 5] = [
            (
                &[true, false, true, false, true],
                &[t, None, None, None, None],
            ),
            (&[true, false, false, false], &[t, None, f, None]),
            (
                &[true, false, false, true, true, false, true, true, true],
                &[t, None, f, None, None, None, None, None, t],
            ),
            (&[false, true, true, true, true], &[f, None, None, t, None]),
            (
                &[false, true, true, false, true, true, true],
                &[f, None, None, None, None, None, t],
            ),
        ];
        for (results, expected) in table {
            let mut h = Hysteresis::new(2, 3);
            let got: Vec<_> = results.iter().map(|ok| h.record(*ok)).collect();
            assert_eq!(got, expected, "{results:?}");
        }
    }

    #[test]
    fn progress_counts_towards_the_flip() {
        let mut h = Hysteresis::new(3, 2);
        h.record(true);
        assert_eq!(h.progress(), (0, 3));
        h.record(false);
        h.record(false);
        assert_eq!(h.progress(), (2, 3));
        assert_eq!(h.record(false), Some(Verdict::Unhealthy));
        assert_eq!(h.progress(), (0, 2));
    }

    #[test]
    fn fall_and_rise_of_one_flip_at_once() {
        let mut h = Hysteresis::new(1, 1);
        assert_eq!(h.record(true), Some(Verdict::Healthy));
        assert_eq!(h.record(false), Some(Verdict::Unhealthy));
        assert_eq!(h.record(true), Some(Verdict::Healthy));
    }

    #[tokio::test]
    async fn commands_pass_fail_and_time_out() {
        let limit = Duration::from_millis(500);
        assert_eq!(Check::Command("true".into()).run(limit).await, Ok(()));
        let why = Check::Command("echo 'service down' >&2; exit 3".into())
            .run(limit)
            .await
            .expect_err("exit 3");
        assert_eq!(why, "exited with status 3: service down");
        let started = std::time::Instant::now();
        let why = Check::Command("sleep 5 | cat".into())
            .run(Duration::from_millis(100))
            .await
            .expect_err("too slow");
        assert!(why.contains("did not finish within 100 ms"), "{why}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the timeout was not enforced"
        );
    }

    #[tokio::test]
    async fn http_checks_talk_to_a_server() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(async move {
            for answer in [
                &b"HTTP/1.0 200 OK\r\n\r\nREADY"[..],
                b"HTTP/1.0 503 Busy\r\n\r\n",
            ] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut request = vec![0u8; 1024];
                let n = conn.read(&mut request).await.expect("read");
                assert!(request[..n].starts_with(b"GET /h HTTP/1.0\r\n"));
                conn.write_all(answer).await.expect("write");
            }
        });
        let check = Check::Http {
            url: HttpUrl::parse(&format!("http://127.0.0.1:{port}/h")).expect("url"),
            expect: Some("READY".into()),
        };
        let limit = Duration::from_secs(2);
        assert_eq!(check.run(limit).await, Ok(()));
        let why = check.run(limit).await.expect_err("503");
        assert!(why.ends_with("HTTP status 503 Busy"), "{why}");
        server.await.expect("server");
        // Nobody listens any more.
        let why = check.run(limit).await.expect_err("refused");
        assert!(why.contains("cannot connect"), "{why}");
    }
}
