//! Running programs with bounded waits: one-shot commands
//! ([`output_with_timeout`]) and long-running processes whose output is
//! captured line by line with timestamps ([`Proc`]).

use std::{
    ffi::OsStr,
    fmt,
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Output, Stdio},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// How long a one-shot command's output readers may outlive the command
/// (a grandchild that inherited the pipe can keep it open forever).
const READER_GRACE: Duration = Duration::from_secs(1);

/// How long [`Proc`]'s `Drop` lets a process handle SIGTERM before SIGKILL.
pub(crate) const DROP_GRACE: Duration = Duration::from_secs(2);

/// Sleeps with a growing pause (1 ms up to 20 ms), never past `deadline`.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(1))
    }

    /// Sleeps once; returns `false` (without sleeping) once `deadline` passed.
    fn sleep_until(&mut self, deadline: Instant) -> bool {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        thread::sleep(self.0.min(deadline - now));
        self.0 = (self.0 * 2).min(Duration::from_millis(20));
        true
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of our locks cannot leave the data half
    // updated (every critical section is a push or a field store), so a
    // poisoned lock is still usable — and cleanup must work during panics.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `program arg1 arg2 …`, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

fn read_into(mut source: impl Read, sink: Arc<Mutex<Vec<u8>>>, done: mpsc::Sender<()>) {
    let mut buf = [0u8; 4096];
    loop {
        match source.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lock(&sink).extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                lock(&sink).extend_from_slice(format!("\n<read error: {e}>\n").as_bytes());
                break;
            }
        }
    }
    // The receiver may have stopped waiting (the command timed out); then
    // nobody needs this signal.
    if done.send(()).is_err() {
        // Nothing to report: the caller already returned.
    }
}

/// Starts `cmd` with stdin closed and stdout/stderr piped.
fn spawn_captured(cmd: &mut Command) -> Result<Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.spawn().with_context(|| {
        format!(
            "cannot start `{}` (is the program installed and in PATH?)",
            describe(cmd)
        )
    })
}

/// Runs `cmd` to completion like [`Command::output`], but kills it and
/// fails if it has not exited within `timeout`. Standard input is closed.
/// The exit status is *not* checked.
pub fn output_with_timeout(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = describe(&cmd);
    let mut child = spawn_captured(&mut cmd)?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let mut readers = 0;
    if let Some(out) = child.stdout.take() {
        let (sink, done) = (Arc::clone(&stdout), done_tx.clone());
        thread::spawn(move || read_into(out, sink, done));
        readers += 1;
    }
    if let Some(err) = child.stderr.take() {
        let (sink, done) = (Arc::clone(&stderr), done_tx.clone());
        thread::spawn(move || read_into(err, sink, done));
        readers += 1;
    }
    drop(done_tx);

    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for `{desc}`"))?
        {
            break Some(status);
        }
        if !backoff.sleep_until(deadline) {
            break None;
        }
    };
    let Some(status) = status else {
        child
            .kill()
            .with_context(|| format!("killing `{desc}` after its timeout"))?;
        child.wait().with_context(|| format!("reaping `{desc}`"))?;
        let out = String::from_utf8_lossy(&lock(&stdout)).into_owned();
        let err = String::from_utf8_lossy(&lock(&stderr)).into_owned();
        bail!(
            "`{desc}` did not finish within {timeout:?} and was killed; stdout: {out:?}; stderr: {err:?}"
        );
    };
    let reader_deadline = Instant::now() + READER_GRACE;
    for _ in 0..readers {
        let left = reader_deadline.saturating_duration_since(Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            // A grandchild still holds the pipe; keep what we have.
            break;
        }
    }
    let stdout = std::mem::take(&mut *lock(&stdout));
    let stderr = std::mem::take(&mut *lock(&stderr));
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`output_with_timeout`], and fails unless the command exited 0.
pub(crate) fn run_checked(cmd: Command, timeout: Duration) -> Result<Output> {
    let desc = describe(&cmd);
    let output = output_with_timeout(cmd, timeout)?;
    if !output.status.success() {
        bail!(
            "`{desc}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim()
        );
    }
    Ok(output)
}

/// A signal to send to a [`Proc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: ask to shut down cleanly.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGINT, as Ctrl-C sends.
    Int,
    /// SIGHUP.
    Hup,
    /// SIGSTOP: freeze the process (a hung daemon).
    Stop,
    /// SIGCONT: resume a stopped process.
    Cont,
    /// SIGUSR1.
    Usr1,
    /// SIGUSR2.
    Usr2,
}

impl Signal {
    /// The signal number.
    pub fn raw(self) -> libc::c_int {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Int => libc::SIGINT,
            Signal::Hup => libc::SIGHUP,
            Signal::Stop => libc::SIGSTOP,
            Signal::Cont => libc::SIGCONT,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }
}

/// Which output stream a [`Line`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One line of a [`Proc`]'s output.
#[derive(Debug, Clone)]
pub struct Line {
    /// When the lab read the line (monotonic; see [`crate::clock`]).
    pub at: Instant,
    pub stream: Stream,
    /// The line without its trailing newline (lossily decoded as UTF-8).
    pub text: String,
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

struct ChildState {
    child: Child,
    status: Option<ExitStatus>,
}

struct OutputState {
    lines: Vec<Line>,
    /// Output streams not yet at end of file.
    open: usize,
}

pub(crate) struct ProcInner {
    label: String,
    pid: u32,
    started: Instant,
    echo: bool,
    child: Mutex<ChildState>,
    output: Mutex<OutputState>,
    output_changed: Condvar,
}

impl ProcInner {
    fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut state = lock(&self.child);
        if state.status.is_none() {
            state.status = state
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        Ok(state.status)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let mut state = lock(&self.child);
        // Holding the lock, the child cannot be reaped behind our back, so
        // if try_wait says it has not exited the pid is still ours.
        if state.status.is_none() {
            state.status = state
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.label))?;
        }
        if let Some(status) = state.status {
            bail!(
                "cannot send {sig:?} to {}: it already exited ({status})",
                self.label
            );
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) with a pid we own (not yet reaped, see above).
        if unsafe { libc::kill(pid, sig.raw()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("sending {sig:?} to {} (pid {pid})", self.label));
        }
        Ok(())
    }

    fn wait(&self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new();
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if !backoff.sleep_until(deadline) {
                bail!("{} still runs after {timeout:?}", self.label);
            }
        }
    }

    /// SIGCONT + SIGTERM, up to `grace` to exit, then SIGKILL.
    fn stop(&self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // A stopped process cannot act on SIGTERM until it is continued.
        // Either signal fails only if the process exited meanwhile, which
        // the wait below reports.
        for sig in [Signal::Cont, Signal::Term] {
            if self.signal(sig).is_err() {
                break;
            }
        }
        match self.wait(grace) {
            Ok(status) => Ok(status),
            Err(_) => {
                let mut state = lock(&self.child);
                if state.status.is_none() {
                    state
                        .child
                        .kill()
                        .with_context(|| format!("killing {}", self.label))?;
                    let status = state
                        .child
                        .wait()
                        .with_context(|| format!("reaping {}", self.label))?;
                    state.status = Some(status);
                }
                state
                    .status
                    .ok_or_else(|| anyhow!("{} has no exit status after SIGKILL", self.label))
            }
        }
    }

    fn push_line(&self, stream: Stream, text: String) {
        let at = Instant::now();
        if self.echo {
            eprintln!(
                "[{} +{:.3}s] {text}",
                self.label,
                at.duration_since(self.started).as_secs_f64()
            );
        }
        lock(&self.output).lines.push(Line { at, stream, text });
        self.output_changed.notify_all();
    }

    fn close_stream(&self) {
        lock(&self.output).open -= 1;
        self.output_changed.notify_all();
    }

    fn tail(&self, n: usize) -> String {
        let output = lock(&self.output);
        let skip = output.lines.len().saturating_sub(n);
        output.lines[skip..]
            .iter()
            .map(|l| format!("  | {}", l.text))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the process for `Drop`, reporting (not hiding) failures.
    pub(crate) fn terminate_quietly(&self, grace: Duration) {
        if let Err(e) = self.stop(grace) {
            eprintln!("vipwatch-tests: could not stop {}: {e:#}", self.label);
        }
    }
}

fn read_lines<R: Read>(inner: Arc<ProcInner>, stream: Stream, source: R) {
    let mut reader = BufReader::new(source);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                inner.push_line(stream, String::from_utf8_lossy(&buf).into_owned());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                inner.push_line(stream, format!("<vipwatch-tests: read error: {e}>"));
                break;
            }
        }
    }
    inner.close_stream();
}

/// A long-running process started in a lab namespace.
///
/// Its stdout and stderr are read line by line (with the time each line
/// arrived) into memory. Dropping a `Proc` stops the process (SIGTERM, then
/// SIGKILL after 2 s); when dropped during a panic it also prints the
/// process's output, so a failed test shows what the daemon said.
pub struct Proc {
    inner: Arc<ProcInner>,
}

impl Proc {
    /// Starts `cmd` with stdin closed and stdout/stderr captured.
    pub(crate) fn spawn(label: String, mut cmd: Command, echo: bool) -> Result<Proc> {
        let mut child = spawn_captured(&mut cmd)?;
        let stdout: Option<ChildStdout> = child.stdout.take();
        let stderr: Option<ChildStderr> = child.stderr.take();
        let inner = Arc::new(ProcInner {
            label,
            pid: child.id(),
            started: Instant::now(),
            echo,
            child: Mutex::new(ChildState {
                child,
                status: None,
            }),
            output: Mutex::new(OutputState {
                lines: Vec::new(),
                open: usize::from(stdout.is_some()) + usize::from(stderr.is_some()),
            }),
            output_changed: Condvar::new(),
        });
        if let Some(out) = stdout {
            let inner = Arc::clone(&inner);
            thread::spawn(move || read_lines(inner, Stream::Stdout, out));
        }
        if let Some(err) = stderr {
            let inner = Arc::clone(&inner);
            thread::spawn(move || read_lines(inner, Stream::Stderr, err));
        }
        Ok(Proc { inner })
    }

    pub(crate) fn inner(&self) -> &Arc<ProcInner> {
        &self.inner
    }

    /// `host:program`, as used in messages.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// When the process was started.
    pub fn started(&self) -> Instant {
        self.inner.started
    }

    /// All output lines so far (stdout and stderr, in arrival order).
    pub fn lines(&self) -> Vec<Line> {
        lock(&self.inner.output).lines.clone()
    }

    /// All output so far as one string, a line per line.
    pub fn output(&self) -> String {
        let output = lock(&self.inner.output);
        let mut s = String::new();
        for line in &output.lines {
            s.push_str(&line.text);
            s.push('\n');
        }
        s
    }

    /// Waits for an output line (from the start of the output) containing
    /// `pattern`, and returns it.
    ///
    /// Fails after `timeout`, or as soon as the process has closed its
    /// output without printing such a line; the error quotes the last lines.
    pub fn wait_for_line(&self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for(None, timeout, |l| l.contains(pattern))
            .map(|line| line.text)
            .with_context(|| format!("waiting for a line containing {pattern:?}"))
    }

    /// Waits for a line containing `pattern` that arrived at or after
    /// `after`, and returns it with its timestamp.
    pub fn wait_for_line_after(
        &self,
        pattern: &str,
        after: Instant,
        timeout: Duration,
    ) -> Result<Line> {
        self.wait_for(Some(after), timeout, |l| l.contains(pattern))
            .with_context(|| format!("waiting for a line containing {pattern:?}"))
    }

    /// Waits for the first line (arrived at or after `after`, if given) for
    /// which `matches` is true.
    pub fn wait_for(
        &self,
        after: Option<Instant>,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<Line> {
        let deadline = Instant::now() + timeout;
        let mut output = lock(&self.inner.output);
        let mut scanned = 0;
        loop {
            for line in &output.lines[scanned..] {
                if after.is_none_or(|t| line.at >= t) && matches(&line.text) {
                    return Ok(line.clone());
                }
            }
            scanned = output.lines.len();
            if output.open == 0 {
                drop(output);
                let status = match self.inner.try_wait() {
                    Ok(Some(status)) => format!("it exited ({status})"),
                    Ok(None) => "it closed its output".to_owned(),
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "{} will print no such line: {status}; last lines:\n{}",
                    self.inner.label,
                    self.inner.tail(30)
                );
            }
            let now = Instant::now();
            if now >= deadline {
                drop(output);
                bail!(
                    "{} printed no such line within {timeout:?}; last lines:\n{}",
                    self.inner.label,
                    self.inner.tail(30)
                );
            }
            output = self
                .inner
                .output_changed
                .wait_timeout(output, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Sends `sig` to the process (e.g. [`Signal::Stop`] to freeze it).
    /// Fails if the process has already exited.
    pub fn signal(&self, sig: Signal) -> Result<()> {
        self.inner.signal(sig)
    }

    /// The exit status, if the process has exited.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        self.inner.try_wait()
    }

    /// Whether the process is still running (stopped counts as running).
    pub fn is_running(&self) -> bool {
        matches!(self.inner.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait(&self, timeout: Duration) -> Result<ExitStatus> {
        self.inner.wait(timeout)
    }

    /// Stops the process: SIGCONT and SIGTERM, then SIGKILL if it has not
    /// exited after `timeout`. Returns its exit status.
    pub fn stop(&self, timeout: Duration) -> Result<ExitStatus> {
        self.inner.stop(timeout)
    }
}

impl fmt::Debug for Proc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proc")
            .field("label", &self.inner.label)
            .field("pid", &self.inner.pid)
            .finish_non_exhaustive()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.inner.terminate_quietly(DROP_GRACE);
        if thread::panicking() && !self.inner.echo {
            eprintln!(
                "--- output of {} (pid {}) ---\n{}--- end of {} ---",
                self.inner.label,
                self.inner.pid,
                self.output(),
                self.inner.label
            );
        }
    }
}

/// `host:basename(program)`, the label of a spawned process.
pub(crate) fn label(host: &str, program: &OsStr) -> String {
    let name = Path::new(program)
        .file_name()
        .unwrap_or(program)
        .to_string_lossy();
    format!("{host}:{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        cmd
    }

    #[test]
    fn output_with_timeout_returns_output_and_status() {
        let out = output_with_timeout(sh("echo hi; echo err >&2; exit 3"), Duration::from_secs(5))
            .expect("sh runs");
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
        let err =
            run_checked(sh("echo nope >&2; exit 1"), Duration::from_secs(5)).expect_err("fails");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn output_with_timeout_kills_on_timeout() {
        let start = Instant::now();
        let err = output_with_timeout(
            sh("echo started; exec sleep 30"),
            Duration::from_millis(200),
        )
        .expect_err("must time out");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(err.to_string().contains("did not finish"), "{err}");
    }

    #[test]
    fn missing_program_is_a_clear_error() {
        let err = output_with_timeout(Command::new("/nonexistent/program"), Duration::from_secs(1))
            .expect_err("cannot start");
        assert!(err.to_string().contains("cannot start"), "{err}");
    }

    #[test]
    fn proc_captures_lines_and_stops() {
        let p = Proc::spawn(
            "test:sh".into(),
            sh("echo one; echo two >&2; echo ready; exec sleep 30"),
            false,
        )
        .expect("spawn");
        assert_eq!(
            p.wait_for_line("read", Duration::from_secs(5))
                .expect("ready"),
            "ready"
        );
        // stdout and stderr are read by different threads: no order between them.
        p.wait_for_line("two", Duration::from_secs(5))
            .expect("stderr line");
        let texts: Vec<_> = p.lines().into_iter().map(|l| l.text).collect();
        assert!(
            texts.contains(&"one".to_owned()) && texts.contains(&"two".to_owned()),
            "{texts:?}"
        );
        let err = p
            .wait_for_line("never", Duration::from_millis(50))
            .expect_err("times out");
        assert!(format!("{err:#}").contains("ready"), "{err:#}");
        let t = Instant::now();
        assert!(
            p.wait_for_line_after("one", t, Duration::from_millis(20))
                .is_err()
        );

        p.signal(Signal::Stop).expect("stop");
        p.signal(Signal::Cont).expect("cont");
        assert!(p.is_running());
        let status = p.stop(Duration::from_secs(2)).expect("stop");
        assert_eq!(status.code(), None, "killed by a signal");
        assert!(
            p.signal(Signal::Term).is_err(),
            "exited processes cannot be signalled"
        );
    }

    #[test]
    fn stop_escalates_to_sigkill() {
        let p = Proc::spawn(
            "test:sh".into(),
            sh("trap '' TERM; echo ready; while :; do sleep 0.05; done"),
            false,
        )
        .expect("spawn");
        p.wait_for_line("ready", Duration::from_secs(5))
            .expect("ready");
        let start = Instant::now();
        p.stop(Duration::from_millis(200)).expect("killed");
        assert!(start.elapsed() < Duration::from_secs(3));
        assert!(!p.is_running());
    }

    #[test]
    fn waiting_on_an_exited_process_fails_fast() {
        let p = Proc::spawn("test:sh".into(), sh("echo bye; exit 7"), false).expect("spawn");
        let start = Instant::now();
        let err = p
            .wait_for_line("hello", Duration::from_secs(10))
            .expect_err("no such line");
        assert!(start.elapsed() < Duration::from_secs(5));
        assert!(format!("{err:#}").contains("bye"), "{err:#}");
        assert_eq!(
            p.wait(Duration::from_secs(5)).expect("exited").code(),
            Some(7)
        );
    }
}
