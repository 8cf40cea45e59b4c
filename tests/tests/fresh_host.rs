//! End to end: the very first start on a host vipwatch never ran on.
//!
//! `cargo xtask test` already runs the whole suite in a mount namespace
//! without bpffs; this test makes the first-run path explicit and
//! independent of test order: a daemon started where bpffs is not mounted
//! mounts it, says so once, and works (`stats` reads what it pinned).

mod common;

use std::time::Duration;

use anyhow::{Context as _, Result};
use common::*;
use vipwatch_tests::vipwatch_bin;

#[test]
fn first_start_on_a_fresh_host_mounts_bpffs_says_so_and_works() -> Result<()> {
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
    assert_eq!(
        log.matches("mounted bpffs at /sys/fs/bpf").count(),
        1,
        "the mount is worth one line, no more:\n{log}"
    );
    // `stats` in the daemon's mount and network namespaces, as a user on
    // that host would run it.
    let pid = backup.pid().to_string();
    let out = lab.output(
        "backup",
        "nsenter",
        [
            format!("--mount=/proc/{pid}/ns/mnt"),
            format!("--net=/proc/{pid}/ns/net"),
            "--".into(),
            bin.display().to_string(),
            "stats".into(),
            "--json".into(),
        ],
        Duration::from_secs(10),
    )?;
    assert!(
        out.status.success(),
        "stats failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(s(&st, "state"), "STANDBY", "{st}");
    assert!(u(&st, "master.replies") > 0, "{st}");
    Ok(())
}
