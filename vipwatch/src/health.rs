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
    os::unix::process::ExitStatusExt as _,
    path::Path,
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _},
    net::TcpStream,
    time::{Instant, timeout_at},
};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, parse_pem};

use crate::config::CheckSpec;

/// How much of an HTTP body `--health-expect` searches (the classic
/// `wget -O- | grep` reads it all; a health page is small, and a cap keeps a
/// misbehaving server from making us buffer without end).
pub const BODY_LIMIT: usize = 64 * 1024;
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
    /// `--health-http [--health-expect TEXT]`: a 2xx answer (whose body
    /// contains TEXT).
    Http {
        url: String,
        expect: Option<String>,
        agent: ureq::Agent,
    },
    /// `--health-tcp HOST:PORT`: a TCP connection opens.
    Tcp(String),
}

impl Check {
    /// The check a configuration describes.
    pub fn from_spec(spec: &CheckSpec) -> anyhow::Result<Self> {
        match spec {
            CheckSpec::Command(cmd) => Ok(Self::Command(cmd.clone())),
            CheckSpec::Http {
                url,
                expect,
                tls_ca,
                insecure,
            } => {
                check_url(url).map_err(|why| anyhow::anyhow!("health_http {url:?}: {why}"))?;
                Ok(Self::Http {
                    url: url.clone(),
                    expect: expect.clone(),
                    agent: agent(tls_ca.as_deref(), *insecure)
                        .map_err(|why| anyhow::anyhow!("health_tls_ca: {why}"))?,
                })
            }
            CheckSpec::Tcp(addr) => Ok(Self::Tcp(addr.clone())),
        }
    }

    /// Runs the check once; it must finish within `limit` (a command still
    /// running then is killed with its whole process group). `Err` carries
    /// why the service is unhealthy, for the log.
    pub async fn run(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        match self {
            Self::Command(cmd) => run_command(cmd, deadline, limit).await,
            Self::Http { url, expect, agent } => run_http(agent, url, expect.as_deref(), limit)
                .await
                .map_err(|why| format!("GET {url}: {why}")),
            Self::Tcp(addr) => run_tcp(addr, deadline, limit)
                .await
                .map_err(|why| format!("TCP {addr}: {why}")),
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Command(cmd) => write!(f, "command `{cmd}`"),
            Self::Http {
                url, expect: None, ..
            } => write!(f, "GET {url} (2xx)"),
            Self::Http {
                url,
                expect: Some(text),
                ..
            } => write!(f, "GET {url} (2xx, body contains {text:?})"),
            Self::Tcp(addr) => write!(f, "TCP connect {addr}"),
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
// --health-http (ureq: http and https through rustls) and --health-tcp.

const URL_EXAMPLE: &str = "e.g. https://127.0.0.1:8443/health";

/// Checks a health URL: http:// or https://, with a host.
pub fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); {URL_EXAMPLE}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("only http:// and https:// URLs ({URL_EXAMPLE})")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("no host ({URL_EXAMPLE})"));
    }
    Ok(())
}

/// The certificates of a PEM file (`health_tls_ca`).
pub fn read_ca(path: &Path) -> Result<Vec<Certificate<'static>>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    let certs = parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(PemItem::Certificate(c)) => Some(Ok(c)),
            Ok(_) => None,
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "{shown}: no certificate in it (PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certs)
}

/// Checks a `--health-tcp` target: HOST:PORT ([v6]:PORT).
pub fn check_tcp_target(addr: &str) -> Result<(), String> {
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or("HOST:PORT expected, e.g. 127.0.0.1:6379")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host, e.g. 127.0.0.1:6379".into());
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(()),
        _ => Err(format!("{port:?} is not a port")),
    }
}

/// The HTTP client of one check: no redirects (a health URL that
/// redirects is a misconfiguration to see, not to follow), no proxy from
/// the environment, the certificate policy of the configuration.
fn agent(tls_ca: Option<&Path>, insecure: bool) -> Result<ureq::Agent, String> {
    let tls = if insecure {
        TlsConfig::builder().disable_verification(true).build()
    } else if let Some(ca) = tls_ca {
        TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&read_ca(ca)?))
            .build()
    } else {
        TlsConfig::default()
    };
    Ok(ureq::Agent::config_builder()
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .proxy(None)
        .user_agent(concat!("vipwatch/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls)
        .build()
        .into())
}

/// The verdict on an answer: a 2xx status, and `expect` in the body.
pub fn judge(status: u16, body: &[u8], expect: Option<&str>) -> Result<(), String> {
    if !(200..300).contains(&status) {
        return Err(if (300..400).contains(&status) {
            format!("status {status} (redirects are not followed)")
        } else {
            format!("status {status}")
        });
    }
    match expect {
        Some(text) if !String::from_utf8_lossy(body).contains(text) => Err(format!(
            "status {status}, but the body (first {} KiB) does not contain {text:?}",
            BODY_LIMIT / 1024
        )),
        _ => Ok(()),
    }
}

async fn run_http(
    agent: &ureq::Agent,
    url: &str,
    expect: Option<&str>,
    limit: Duration,
) -> Result<(), String> {
    let (agent, url, expect) = (agent.clone(), url.to_owned(), expect.map(str::to_owned));
    let call = tokio::task::spawn_blocking(move || {
        let mut response = agent
            .get(&url)
            .config()
            .timeout_global(Some(limit))
            .build()
            .call()
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        if expect.is_some() {
            use std::io::Read as _;
            response
                .body_mut()
                .as_reader()
                .take(BODY_LIMIT as u64)
                .read_to_end(&mut body)
                .map_err(|e| format!("status {status}, reading the body: {e}"))?;
        }
        judge(status, &body, expect.as_deref())
    });
    // The request has its own timeout; this one only guards the thread.
    match tokio::time::timeout(limit + Duration::from_millis(100), call).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(format!("the check's thread failed: {e}")),
        Err(_) => Err(format!("no answer within {} ms", limit.as_millis())),
    }
}

async fn run_tcp(addr: &str, deadline: Instant, limit: Duration) -> Result<(), String> {
    match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Ok(()),
        Ok(Err(e)) => Err(format!("cannot connect: {e}")),
        Err(_) => Err(format!("no connection within {} ms", limit.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn answers_are_judged_by_status_then_body() {
        assert_eq!(judge(200, b"", None), Ok(()));
        assert_eq!(judge(204, b"", None), Ok(()));
        assert_eq!(
            judge(503, b"READY", Some("READY")),
            Err("status 503".into())
        );
        assert_eq!(
            judge(301, b"", None),
            Err("status 301 (redirects are not followed)".into())
        );
        assert_eq!(judge(200, b"role:master READY", Some("READY")), Ok(()));
        let why = judge(200, b"LOADING", Some("READY")).expect_err("no READY");
        assert!(why.contains("does not contain \"READY\""), "{why}");
    }

    #[test]
    fn urls_must_be_http_or_https_with_a_host() {
        for good in [
            "http://127.0.0.1:8080/health",
            "https://db.example/health?deep=1",
            "https://[2001:db8::1]:8443/",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("ftp://x/", "only http:// and https://"),
            ("127.0.0.1:8080/health", "URL"),
            ("http://", "not a URL"),
            ("http://a b/", "not a URL"),
        ] {
            let got = check_url(bad).expect_err(bad);
            assert!(got.contains(why), "{bad}: {got}");
        }
    }

    #[test]
    fn tcp_targets_are_host_and_port() {
        assert_eq!(check_tcp_target("127.0.0.1:6379"), Ok(()));
        assert_eq!(check_tcp_target("[2001:db8::1]:6379"), Ok(()));
        assert_eq!(check_tcp_target("redis.internal:6379"), Ok(()));
        assert!(check_tcp_target("127.0.0.1").is_err());
        assert!(check_tcp_target("127.0.0.1:0").is_err());
        assert!(check_tcp_target(":6379").is_err());
        assert!(check_tcp_target("127.0.0.1:http").is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("vipwatch-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate\n").unwrap();
        let why = read_ca(&path).expect_err("no certificate");
        assert!(why.contains("no certificate"), "{why}");
        std::fs::remove_file(&path).unwrap();
        assert!(read_ca(&path).is_err());
    }
}
