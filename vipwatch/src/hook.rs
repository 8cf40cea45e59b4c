//! `--on-change CMD`: run a command on every state change, off the hot
//! path.
//!
//! keepalived's notify convention: the command gets the new state and
//! context as arguments (`CMD STATE VIP IFACE REASON`). Hooks run one at a
//! time, in order, on their own thread, so a slow hook never delays a
//! takeover and two hooks never race; a failing hook is logged.

use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
};

use anyhow::Context as _;

pub struct Hooks {
    tx: Option<mpsc::Sender<[String; 4]>>,
    worker: Option<thread::JoinHandle<()>>,
}

impl Hooks {
    /// `None` runs nothing.
    pub fn new(cmd: Option<String>) -> anyhow::Result<Self> {
        let Some(cmd) = cmd else {
            return Ok(Self {
                tx: None,
                worker: None,
            });
        };
        let (tx, rx) = mpsc::channel::<[String; 4]>();
        let worker = thread::Builder::new()
            .name("on-change".into())
            .spawn(move || {
                for args in rx {
                    run(&cmd, &args);
                }
            })
            .context("starting the --on-change thread")?;
        Ok(Self {
            tx: Some(tx),
            worker: Some(worker),
        })
    }

    /// Queues the hook for a state change; returns at once.
    pub fn notify(&self, state: &str, vip: &str, iface: &str, reason: &str) {
        if let Some(tx) = &self.tx {
            let args = [state.to_owned(), vip.to_owned(), iface.to_owned(), reason.to_owned()];
            if tx.send(args).is_err() {
                log::error!("--on-change thread is gone; hook for {state} not run");
            }
        }
    }
}

impl Drop for Hooks {
    /// Lets queued hooks (e.g. the one for the final release) finish.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(w) = self.worker.take()
            && w.join().is_err()
        {
            log::error!("--on-change thread panicked");
        }
    }
}

fn run(cmd: &str, args: &[String; 4]) {
    let mut c = Command::new("/bin/sh");
    // `sh -c 'CMD "$@"' vipwatch-hook STATE VIP IFACE REASON`: CMD may be a
    // command line with its own arguments; ours are appended.
    c.arg("-c").arg(format!("{cmd} \"$@\"")).arg("vipwatch-hook").args(args);
    c.stdin(Stdio::null());
    // SAFETY: the closure only calls sigprocmask, async-signal-safe.
    unsafe { c.pre_exec(crate::sys::unblock_signals_in_child) };
    match c.status() {
        Ok(s) if s.success() => log::debug!("--on-change {} ok", args[0]),
        Ok(s) => log::warn!("--on-change command failed for {} ({s}): {cmd}", args[0]),
        Err(e) => log::warn!("--on-change command could not start ({e}): {cmd}"),
    }
}
