//! Ctrl-C for the lab commands (`demo`, `bench`): tear the lab down rather
//! than leave namespaces, daemons and XDP programs behind.
//!
//! The handler only sets a flag (async-signal-safe); a watcher thread does
//! the cleanup and exits. Signals are not blocked, so the daemons the lab
//! spawns inherit the default dispositions and stop normally on SIGTERM.

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context as _, bail};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the SIGINT/SIGTERM handler and the cleanup watcher.
pub fn install() -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: on_signal only stores to an atomic, which is
        // async-signal-safe; the handler is reset to default on exec.
        let previous = unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
        if previous == libc::SIG_ERR {
            bail!("could not install the signal handler for {sig}");
        }
    }
    thread::Builder::new()
        .name("interrupt".into())
        .spawn(|| {
            while !INTERRUPTED.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(50));
            }
            eprintln!("\ninterrupted: stopping the daemons and removing the lab");
            remove_our_labs();
            std::process::exit(130);
        })
        .context("starting the interrupt watcher")?;
    Ok(())
}

/// Fails once Ctrl-C was pressed, so the main flow unwinds (and the lab's
/// Drop runs) at its next step.
pub fn check() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Stops everything running in this process's lab namespaces (SIGTERM so
/// the daemons release the VIP and detach, then SIGKILL) and deletes them.
fn remove_our_labs() {
    let prefix = format!("vwlab-{}-", std::process::id());
    let list = match Command::new("ip").args(["netns", "list"]).output() {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => {
            eprintln!("could not list namespaces: {e}");
            return;
        }
    };
    let names: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    for signal in ["-TERM", "-KILL"] {
        for name in &names {
            let pids = Command::new("ip").args(["netns", "pids", name]).output();
            if let Ok(out) = pids {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if pid != std::process::id().to_string()
                        && let Err(e) = Command::new("kill").args([signal, pid]).status()
                    {
                        eprintln!("kill {signal} {pid}: {e}");
                    }
                }
            }
        }
        thread::sleep(Duration::from_millis(300));
    }
    for name in names {
        // The main thread may be unwinding through the lab's Drop at the
        // same time: a namespace it already removed is not an error.
        let gone = || !std::path::Path::new("/run/netns").join(name).exists();
        if gone() {
            continue;
        }
        match Command::new("ip")
            .args(["netns", "del", name])
            .stderr(std::process::Stdio::null())
            .status()
        {
            Ok(s) if s.success() || gone() => {}
            Ok(s) => eprintln!("ip netns del {name}: {s}"),
            Err(e) => eprintln!("ip netns del {name}: {e}"),
        }
    }
}
