//! A lab of Linux network namespaces for vipwatch's end-to-end tests,
//! `cargo xtask demo` and `cargo xtask bench`.
//!
//! A [`Lab`] is one bridge namespace (`<prefix>br`, bridge `br0`) and N host
//! namespaces, each wired to the bridge by a veth pair whose host end is
//! called `eth0`. Everything a lab creates lives inside those namespaces and
//! is removed when the `Lab` is dropped, also while a test panics. Processes
//! run in a namespace by `setns(2)` only — never `ip netns exec`, which
//! remounts `/sys` and so hides `/sys/fs/bpf` pins from everyone else.
//!
//! Faults ([`Lab::link_down`], [`Lab::cut`], [`Lab::blackhole`],
//! [`Lab::loss`]) are applied upstream of the hosts (in the bridge
//! namespace, with nftables' bridge family) wherever XDP on a host must not
//! see the dropped frames. [`EchoServer`] and [`Client`] measure who answers
//! an address and when; [`Record`] turns their log into the numbers a user
//! would care about.
//!
//! Every wait in this crate is bounded by a timeout.

pub mod clock;
mod exec;
pub mod frames;
mod lab;
mod netns;
mod record;
pub mod scenario;
pub mod tcp;
mod udp;

use std::{
    env,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

pub use exec::{Line, Proc, Signal, Stream, output_with_timeout};
pub use lab::{DEFAULT_TIMEOUT, Lab, LabBuilder, cleanup_stale_labs};
pub use record::{Answer, Gap, Record};
pub use udp::{Client, ClientBuilder, EchoServer};

/// Makes `cmd` (and everything it starts) run in a private mount namespace
/// in which bpffs is not mounted on `/sys/fs/bpf`: the host as a fresh
/// machine has it. What they mount there dies with that namespace.
pub fn on_fresh_host(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the hook runs between fork and exec and makes only raw,
    // async-signal-safe syscalls (see `netns::fresh_mounts`).
    unsafe {
        cmd.pre_exec(netns::fresh_mounts);
    }
}

/// Fails with an explanation unless the process runs as root.
///
/// The lab creates network namespaces, veth pairs and nftables rules, which
/// need `CAP_SYS_ADMIN` and `CAP_NET_ADMIN`. Tests call this first so that
/// a missing privilege fails loudly instead of letting a test pass vacuously.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "the vipwatch lab creates network namespaces and needs root (effective uid is {euid}); \
             run the tests as root, e.g. `sudo -E cargo test -p vipwatch-tests`"
        );
    }
    Ok(())
}

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    // This crate lives at `<workspace>/tests`, so the parent always exists.
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// Locates the built `vipwatch` binary.
///
/// Order: `$VIPWATCH_BIN` if set; else `<target>/debug/vipwatch`, else
/// `<target>/release/vipwatch`, where `<target>` is `$CARGO_TARGET_DIR` or
/// `<workspace>/target`.
pub fn vipwatch_bin() -> Result<PathBuf> {
    if let Some(path) = env::var_os("VIPWATCH_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        bail!(
            "VIPWATCH_BIN is set to {}, which is not a file; unset it or point it at a built vipwatch binary",
            path.display()
        );
    }
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let candidates = [
        target.join("debug").join("vipwatch"),
        target.join("release").join("vipwatch"),
    ];
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    bail!(
        "the vipwatch binary was not found at {} or {}; run `cargo xtask build` first \
         (or set VIPWATCH_BIN to its path)",
        candidates[0].display(),
        candidates[1].display()
    )
}

/// Polls `condition` every few milliseconds until it returns `Ok(true)`,
/// and returns how long that took.
///
/// Fails when `timeout` passes first (naming `what` in the error) or as soon
/// as `condition` fails.
pub fn wait_until<F>(what: &str, timeout: Duration, mut condition: F) -> Result<Duration>
where
    F: FnMut() -> Result<bool>,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if condition()? {
            return Ok(start.elapsed());
        }
        let now = Instant::now();
        if now >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_elapsed_and_times_out() {
        let mut calls = 0;
        let took = wait_until("third call", Duration::from_secs(5), || {
            calls += 1;
            Ok(calls >= 3)
        })
        .expect("condition becomes true");
        assert!(took < Duration::from_secs(5));
        assert_eq!(calls, 3);

        let err = wait_until("never", Duration::from_millis(30), || Ok(false))
            .expect_err("must time out");
        assert!(err.to_string().contains("never"), "{err}");
    }

    #[test]
    fn wait_until_propagates_errors() {
        let err = wait_until("boom", Duration::from_secs(5), || bail!("probe failed"))
            .expect_err("error propagates");
        assert!(err.to_string().contains("probe failed"));
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("tests").join("Cargo.toml").is_file());
    }
}
