//! End to end: the very first start on a host vipwatch never ran on.
//!
//! `cargo xtask test` already runs the whole suite in a mount namespace
//! without bpffs; this test makes the first-run path explicit and
//! independent of test order: a daemon started where bpffs is not mounted
//! works, needs no mount, and `stats` reaches it from any mount namespace.

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result};
use common::*;
use vipwatch_tests::vipwatch_bin;

#[test]
fn first_start_on_a_fresh_host_needs_no_mount_and_works() -> Result<()> {
    let lab = standard_lab("fresh")?;
    let bin = vipwatch_bin()?;
    let mut cmd = lab.command_on_fresh_host("backup", &bin)?;
    cmd.args([
        "backup", "--iface", "eth0", "--master", MASTER, "--vip", VIP_CIDR,
    ]);
    let backup = lab.spawn_command("backup: vipwatch (fresh host)", cmd)?;
    backup
        .wait_for_line("state STARTING -> STANDBY", Duration::from_secs(10))
        .with_context(|| format!("the backup did not start:\n{}", backup.output()))?;
    let log = backup.output();
    assert!(!log.contains("bpffs"), "nothing to mount:\n{log}");
    // Nothing mounted in the daemon's own mount namespace either.
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", backup.pid()))?;
    assert!(
        !mounts.lines().any(|m| m.contains(" bpf ")),
        "the daemon mounted bpffs:\n{mounts}"
    );
    // `stats` from this mount namespace (not the daemon's) finds it: the
    // control socket lives in the network namespace.
    let st = stats(&lab, "backup")?;
    assert_eq!(s(&st, "state"), "STANDBY", "{st}");
    assert!(u(&st, "master.replies") > 0, "{st}");
    Ok(())
}
