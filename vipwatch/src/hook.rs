//! `--on-change CMD`: run a command on every state change, off the hot
//! path.
//!
//! keepalived's notify convention: the command gets the new state and
//! context as arguments (`CMD STATE VIP IFACE REASON`). Hooks run one at a
//! time, in order, on their own thread, so a slow hook never delays a
//! takeover and two hooks never race; a failing hook is logged.
//!
//! A hook never holds the daemon hostage: each run is bounded by
//! [`HOOK_TIMEOUT`], after which its process group is killed (every hook
//! runs in a group of its own, so what it started goes with it), and
//! stopping waits at most [`DRAIN_GRACE`] for the hooks still queued (the
//! one for the final state change, usually) before it kills the running
//! one and gives up on the rest.

use std::{
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::process::CommandExt as _,
    },
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// How long one hook may run before its process group is killed.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long stopping waits for the hooks still queued or running.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// How much of a hook's output (stdout and stderr) is logged.
pub const OUTPUT_LIMIT: usize = 4096;
/// After a hook exits, how long we wait for the end of its output (a
/// background process it started may hold the pipe open).
const OUTPUT_DRAIN: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Per hook run.
    timeout: Duration,
    /// For the whole queue, when [`Hooks`] is dropped.
    grace: Duration,
}

const LIMITS: Limits = Limits {
    timeout: HOOK_TIMEOUT,
    grace: DRAIN_GRACE,
};

/// Called when a hook ends.
pub type Done = Box<dyn Fn() + Send>;

pub struct Hooks {
    worker: Option<Worker>,
}

struct Worker {
    tx: mpsc::Sender<[String; 4]>,
    /// Disconnected when the thread ends: the thread owns the sender, which
    /// is dropped however it ends (a panic too). Nothing is ever sent.
    done: mpsc::Receiver<()>,
    shared: Arc<Mutex<Shared>>,
    thread: thread::JoinHandle<()>,
    grace: Duration,
}

/// What the hook thread and [`Hooks::drop`] both see.
#[derive(Debug, Default)]
struct Shared {
    /// The hook process running now. Set from its spawn until just before
    /// it is reaped, so its pid (its process group id) cannot have been
    /// reused by another process while it is set.
    running: Option<Running>,
    /// Hooks queued and not finished yet, the running one included.
    pending: usize,
    /// Stopping gave up waiting: start nothing more.
    abandoned: bool,
}

#[derive(Debug)]
struct Running {
    pgid: libc::pid_t,
    state: String,
    since: Instant,
}

impl Hooks {
    /// `None` runs nothing. `done` is called after each hook ends (however
    /// it ends), on the hook thread.
    pub fn new(name: &str, cmd: Option<String>, done: Option<Done>) -> anyhow::Result<Self> {
        Self::with_limits(name, cmd, LIMITS, done)
    }

    fn with_limits(
        name: &str,
        cmd: Option<String>,
        limits: Limits,
        on_done: Option<Done>,
    ) -> anyhow::Result<Self> {
        let Some(cmd) = cmd else {
            return Ok(Self { worker: None });
        };
        let (tx, rx) = mpsc::channel::<[String; 4]>();
        let (done_tx, done) = mpsc::channel::<()>();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let label = name.to_owned();
        let thread = thread::Builder::new()
            .name("on-change".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    let _done = done_tx;
                    for args in rx {
                        run(&label, &cmd, &args, limits.timeout, &shared);
                        {
                            let mut s = lock(&shared);
                            s.pending = s.pending.saturating_sub(1);
                        }
                        if let Some(on_done) = &on_done {
                            on_done();
                        }
                    }
                }
            })
            .context("starting the --on-change thread")?;
        Ok(Self {
            worker: Some(Worker {
                tx,
                done,
                shared,
                thread,
                grace: limits.grace,
            }),
        })
    }

    /// Queues the hook for a state change; returns at once.
    pub fn notify(&self, state: &str, vip: &str, iface: &str, reason: &str) {
        if let Some(w) = &self.worker {
            let args = [
                state.to_owned(),
                vip.to_owned(),
                iface.to_owned(),
                reason.to_owned(),
            ];
            // Counted before it is sent, so the thread never finishes a hook
            // it was not counted for.
            let mut s = lock(&w.shared);
            s.pending += 1;
            if w.tx.send(args).is_err() {
                s.pending -= 1;
                log::error!("--on-change thread is gone; hook for {state} not run");
            }
        }
    }
}

impl Drop for Hooks {
    /// Lets queued hooks (e.g. the one for the final release) finish, but
    /// for at most the grace period: a hanging hook must not keep the
    /// daemon from exiting.
    fn drop(&mut self) {
        let Some(Worker {
            tx,
            done,
            shared,
            thread,
            grace,
        }) = self.worker.take()
        else {
            return;
        };
        // The thread ends once it has run what is queued.
        drop(tx);
        match done.recv_timeout(grace) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    log::error!("--on-change thread panicked");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let mut s = lock(&shared);
                s.abandoned = true;
                let running = s.running.take();
                let queued = s.pending.saturating_sub(usize::from(running.is_some()));
                if let Some(r) = &running {
                    kill_group(r.pgid);
                }
                drop(s);
                let killed = running.map_or_else(String::new, |r| {
                    format!(
                        "killed the hook for {} (running for {} ms), ",
                        r.state,
                        r.since.elapsed().as_millis()
                    )
                });
                // Not joined: the thread ends with the process.
                log::warn!(
                    "stopping: gave up waiting for --on-change hooks after {} ms: {killed}{queued} queued hook(s) not run",
                    grace.as_millis()
                );
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // Plain counters and flags: a panic elsewhere leaves them usable.
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run(label: &str, cmd: &str, args: &[String; 4], timeout: Duration, shared: &Mutex<Shared>) {
    let state = &args[0];
    // stdout and stderr into one pipe, logged under the instance's name
    // once the hook ends, instead of mixed into the daemon's own output.
    let (output, writer) = match std::io::pipe() {
        Ok(pair) => pair,
        Err(e) => {
            log::warn!(
                "{label}: --on-change command for {state} not run: no pipe for its output ({e})"
            );
            return;
        }
    };
    let mut c = Command::new("/bin/sh");
    // `sh -c 'CMD "$@"' vipwatch-hook STATE VIP IFACE REASON`: CMD may be a
    // command line with its own arguments; ours are appended.
    c.arg("-c")
        .arg(format!("{cmd} \"$@\""))
        .arg("vipwatch-hook")
        .args(args);
    c.stdin(Stdio::null());
    match writer.try_clone() {
        Ok(w) => {
            c.stdout(w);
        }
        Err(e) => log::debug!("{label}: hook stdout not captured: {e}"),
    }
    c.stderr(writer);
    // Its own process group, so a timeout kills what the hook started too
    // (and a Ctrl-C meant for the daemon does not reach it).
    c.process_group(0);
    // SAFETY: the closure only calls sigprocmask, async-signal-safe.
    unsafe { c.pre_exec(crate::sys::unblock_signals_in_child) };
    let mut child = {
        // Spawned under the lock: stopping either sees it running (and can
        // kill it) or has given up before it starts.
        let mut s = lock(shared);
        if s.abandoned {
            return;
        }
        let spawned = c.spawn();
        // Our copies of the pipe's writing end go with the Command, so the
        // reader sees the end of the output when the hook's copies close.
        drop(c);
        match spawned {
            Ok(child) => {
                let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
                    unreachable!("Linux pids fit in pid_t")
                };
                s.running = Some(Running {
                    pgid,
                    state: state.clone(),
                    since: Instant::now(),
                });
                child
            }
            Err(e) => {
                log::warn!("--on-change command could not start for {state} ({e}): {cmd}");
                return;
            }
        }
    };
    let captured = read_output(output);
    let timed_out = match wait_exit(&child, timeout) {
        Ok(exited) => !exited,
        Err(e) => {
            log::warn!(
                "cannot bound the --on-change command for {state} ({e:#}); waiting for it without a timeout: {cmd}"
            );
            false
        }
    };
    // (None: stopping gave up on it and killed it already.)
    let overdue = if timed_out {
        lock(shared).running.take()
    } else {
        None
    };
    if let Some(r) = overdue {
        // Not reaped yet (only this thread reaps), so the group is the hook's.
        kill_group(r.pgid);
        log::warn!(
            "--on-change command for {state} still running after {} ms: killed it (its whole process group): {cmd}",
            timeout.as_millis()
        );
    }
    // Cleared before reaping: once reaped, the pid may be reused.
    let abandoned = {
        let mut s = lock(shared);
        s.running = None;
        s.abandoned
    };
    let status = child.wait();
    match captured.recv_timeout(OUTPUT_DRAIN) {
        Ok((text, cut)) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                log::info!("{label}: on_change hook for {state}: {line}");
            }
            if cut {
                log::info!(
                    "{label}: on_change hook for {state}: (output cut at {} bytes)",
                    OUTPUT_LIMIT
                );
            }
        }
        Err(_) => log::debug!(
            "{label}: on_change hook for {state}: output still open (a background process holds it)"
        ),
    }
    match status {
        // Killed by us, and said so.
        Ok(s) if timed_out || abandoned => log::debug!("--on-change {state} killed ({s})"),
        Ok(s) if s.success() => log::debug!("--on-change {state} ok"),
        Ok(s) => log::warn!("--on-change command failed for {state} ({s}): {cmd}"),
        Err(e) => log::warn!("--on-change command for {state}: waiting for it failed ({e}): {cmd}"),
    }
}

/// Reads a hook's output to its end on a thread of its own, keeping the
/// first [`OUTPUT_LIMIT`] bytes (the rest is read and dropped, so the hook
/// never blocks on a full pipe): (text, whether it was cut).
fn read_output(mut pipe: std::io::PipeReader) -> mpsc::Receiver<(String, bool)> {
    let (tx, rx) = mpsc::channel();
    let spawned = thread::Builder::new()
        .name("hook-output".into())
        .spawn(move || {
            use std::io::Read as _;
            let mut kept = Vec::new();
            let mut cut = false;
            let mut chunk = [0u8; 1024];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                        cut |= n > room;
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            // Err: the hook's runner stopped waiting; nobody to tell.
            let _late = tx.send((String::from_utf8_lossy(&kept).into_owned(), cut));
        });
    if let Err(e) = spawned {
        log::warn!("hook output not captured: {e}");
    }
    rx
}

/// Waits up to `timeout` for `child` to exit, without reaping it: true if
/// it exited. A pidfd (Linux 5.3) turns the exit into a poll(2) event.
fn wait_exit(child: &Child, timeout: Duration) -> anyhow::Result<bool> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id(), 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("pidfd_open");
    }
    let raw = i32::try_from(raw).context("pidfd_open returned an fd out of range")?;
    // SAFETY: raw is a fresh fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_micros().div_ceil(1000)).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: pfd is one valid pollfd.
        let n = unsafe { libc::poll(&raw mut pfd, 1, ms) };
        match n {
            0 => return Ok(false),
            1.. => return Ok(true),
            _ => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e).context("poll on the pidfd");
                }
            }
        }
    }
}

/// SIGKILL to a whole process group. Only called with the group of a hook
/// not yet reaped, so the id is still that hook's.
fn kill_group(pgid: libc::pid_t) {
    // SAFETY: killpg takes plain integers.
    if unsafe { libc::killpg(pgid, libc::SIGKILL) } != 0 {
        log::debug!(
            "killing --on-change process group {pgid}: {}",
            io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf};

    use super::*;

    #[test]
    fn hook_output_is_kept_up_to_the_limit_and_read_to_its_end() {
        use std::io::Write as _;
        let (reader, mut writer) = std::io::pipe().unwrap();
        let rx = read_output(reader);
        writer.write_all(b"promoted\n").unwrap();
        writer.write_all(&vec![b'x'; 2 * OUTPUT_LIMIT]).unwrap();
        drop(writer);
        let (text, cut) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(text.starts_with("promoted\nxx"));
        assert_eq!(text.len(), OUTPUT_LIMIT);
        assert!(cut);

        let (reader, mut writer) = std::io::pipe().unwrap();
        let rx = read_output(reader);
        writer.write_all(b"short").unwrap();
        drop(writer);
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap(),
            ("short".to_owned(), false)
        );
    }

    /// A fresh scratch directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vipwatch-hook-{}-{name}", std::process::id()));
        drop(fs::remove_dir_all(&dir));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Runs `HANG` hooks as `sleep 100` in the background (its pid written
    /// to `pid`) and records every other state in `out`.
    fn script(dir: &std::path::Path) -> String {
        format!(
            "case $1 in HANG) sleep 100 & echo $! > {d}/pid; wait;; *) echo $1 >> {d}/out;; esac; :",
            d = dir.display()
        )
    }

    fn gone(pid: &str) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The third field is the state; a zombie is as good as gone.
            Ok(stat) => matches!(
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next()),
                Some("Z" | "X")
            ),
            Err(_) => true,
        }
    }

    fn eventually(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
        let deadline = Instant::now() + within;
        while !ok() {
            assert!(Instant::now() < deadline, "{what} not within {within:?}");
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn notify(h: &Hooks, state: &str) {
        h.notify(state, "192.0.2.100/24", "veth0", "test");
    }

    #[test]
    fn hooks_run_in_order_and_drop_waits_for_them() {
        let dir = scratch("order");
        let h = Hooks::new("test", Some(script(&dir)), None).unwrap();
        for s in ["A", "B", "C"] {
            notify(&h, s);
        }
        drop(h);
        assert_eq!(fs::read_to_string(dir.join("out")).unwrap(), "A\nB\nC\n");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hanging_hook_is_killed_with_its_children_and_the_next_runs() {
        let dir = scratch("timeout");
        let limits = Limits {
            timeout: Duration::from_millis(300),
            grace: Duration::from_secs(5),
        };
        let h = Hooks::with_limits("test", Some(script(&dir)), limits, None).unwrap();
        let t0 = Instant::now();
        notify(&h, "HANG");
        notify(&h, "AFTER");
        eventually(
            "the hook after the hanging one",
            Duration::from_secs(5),
            || fs::read_to_string(dir.join("out")).is_ok_and(|s| s == "AFTER\n"),
        );
        assert!(t0.elapsed() >= limits.timeout, "{:?}", t0.elapsed());
        let pid = fs::read_to_string(dir.join("pid")).unwrap();
        eventually(
            "the hook's own child killed",
            Duration::from_secs(2),
            || gone(pid.trim()),
        );
        drop(h);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn drop_gives_up_on_a_hanging_hook_and_kills_it() {
        let dir = scratch("drop");
        let limits = Limits {
            timeout: Duration::from_secs(100),
            grace: Duration::from_millis(300),
        };
        let h = Hooks::with_limits("test", Some(script(&dir)), limits, None).unwrap();
        notify(&h, "HANG");
        notify(&h, "NEVER");
        eventually("the hanging hook started", Duration::from_secs(5), || {
            dir.join("pid").exists()
        });
        let t0 = Instant::now();
        drop(h);
        let took = t0.elapsed();
        assert!(
            took >= limits.grace && took < Duration::from_secs(2),
            "drop took {took:?}"
        );
        let pid = fs::read_to_string(dir.join("pid")).unwrap();
        eventually("the hanging hook killed", Duration::from_secs(2), || {
            gone(pid.trim())
        });
        // The queued hook is not started after giving up.
        thread::sleep(Duration::from_millis(200));
        assert!(!dir.join("out").exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_command_runs_nothing() {
        let h = Hooks::new("test", None, None).unwrap();
        notify(&h, "A");
        drop(h);
    }
}
