//! End to end: bad input gets one clear line, a non-zero exit, and leaves
//! nothing attached or pinned.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use vipwatch_tests::{Lab, require_root, vipwatch_bin};

/// Runs vipwatch in the backup namespace twice, as the host is now and as
/// a fresh host is (no bpffs mounted), and returns (exit ok, stderr) of
/// each: what a user sees must not depend on what ran before.
fn vipwatch(lab: &Lab, args: &[&str]) -> Result<[(bool, String); 2]> {
    let bin = vipwatch_bin()?;
    let mut runs = Vec::new();
    for mut cmd in [
        lab.command("backup", &bin)?,
        lab.command_on_fresh_host("backup", &bin)?,
    ] {
        cmd.args(args);
        let desc = format!("{cmd:?}");
        let out = vipwatch_tests::output_with_timeout(cmd, Duration::from_secs(20))
            .map_err(|e| e.context(desc))?;
        runs.push((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let [inherited, fresh]: [(bool, String); 2] = runs
        .try_into()
        .map_err(|_| anyhow::anyhow!("expected two runs"))?;
    Ok([inherited, fresh])
}

/// No XDP program on any of the backup's links, nothing under
/// /sys/fs/bpf of ours, and no daemon answering in its namespace.
fn assert_nothing_left(lab: &Lab) -> Result<()> {
    let links = lab.run("backup", "ip", ["-d", "link", "show"])?;
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(
        !links.contains("prog/xdp"),
        "an XDP program was left attached:\n{links}"
    );
    assert!(
        !std::path::Path::new("/sys/fs/bpf/vipwatch").exists(),
        "vipwatch pins nothing"
    );
    let sockets = lab.in_netns("backup", || {
        std::fs::read_to_string("/proc/thread-self/net/unix").unwrap_or_default()
    })?;
    assert!(
        !sockets.contains("@vipwatch/"),
        "a vipwatch socket is left in the namespace:\n{sockets}"
    );
    Ok(())
}

fn assert_one_clear_line(stderr: &str, expect: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&expect.to_lowercase()),
        "{:?} does not mention {expect:?}",
        lines[0]
    );
}

#[test]
fn bad_arguments_are_refused_with_one_line() -> Result<()> {
    let lab = standard_lab("bad")?;
    let base = [
        "backup", "--iface", "eth0", "--master", MASTER, "--vip", VIP_CIDR,
    ];
    let with = |over: &[(&str, &str)]| -> Vec<String> {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        for (flag, value) in over {
            match args.iter().position(|a| a == flag) {
                Some(i) => args[i + 1] = value.to_string(),
                None => {
                    args.push(flag.to_string());
                    args.push(value.to_string());
                }
            }
        }
        args
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("--iface", "eth9")], "eth9 does not exist"),
        (&[("--master", "224.0.0.1")], "unicast"),
        (&[("--master", "255.255.255.255")], "unicast"),
        // The lab has IPv6 disabled: an IPv6 master cannot be probed.
        (&[("--master", "2001:db8::1")], "disable_ipv6"),
        (&[("--witness", "2001:db8::fe")], "address family"),
        (&[("--master", "not-an-ip")], "master"),
        (&[("--vip", "192.0.2.100")], "ADDRESS/PREFIX"),
        (&[("--vip", "192.0.2.100/33")], "prefix"),
        (&[("--vip", "192.0.2/24")], "not an IP address"),
        (&[("--interval", "0ms")], "interval"),
        (&[("--interval", "0")], "unit"),
        (&[("--interval", "1h")], "interval"),
        (&[("--interval", "10us")], "interval"),
        (&[("--dead-after", "1ms")], "dead-after"),
        (&[("--xdp-mode", "offload")], "xdp-mode"),
    ];
    for (over, expect) in cases {
        let args = with(over);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        for (ok, stderr) in vipwatch(&lab, &args)? {
            assert!(!ok, "{over:?} was accepted");
            assert_one_clear_line(&stderr, expect);
            assert_nothing_left(&lab)?;
        }
    }
    Ok(())
}

#[test]
fn not_root_is_refused_before_anything_is_attached() -> Result<()> {
    let lab = standard_lab("badroot")?;
    let bin = vipwatch_bin()?;
    let bin = bin.to_string_lossy();
    let out = lab.output(
        "backup",
        "setpriv",
        [
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &bin,
            "backup",
            "--iface",
            "eth0",
            "--master",
            MASTER,
            "--vip",
            VIP_CIDR,
        ],
        Duration::from_secs(20),
    )?;
    assert!(!out.status.success());
    assert_one_clear_line(&String::from_utf8_lossy(&out.stderr), "needs root");
    assert_nothing_left(&lab)
}

#[test]
fn a_refused_attach_mode_is_an_error_not_a_silent_fallback() -> Result<()> {
    require_root()?;
    let lab = standard_lab("badmode")?;
    // A bridge device has no native XDP support (no ndo_bpf); this
    // kernel has no `dummy` link type.
    lab.run(
        "backup",
        "ip",
        ["link", "add", "name", "dummy0", "type", "bridge"],
    )?;
    lab.run("backup", "ip", ["link", "set", "dev", "dummy0", "up"])?;
    // On a fresh host too (bpffs not mounted): the refusal is still one
    // line, with nothing mounted, attached or pinned before it.
    for (ok, stderr) in vipwatch(
        &lab,
        &[
            "backup",
            "--iface",
            "dummy0",
            "--master",
            MASTER,
            "--vip",
            VIP_CIDR,
            "--xdp-mode",
            "driver",
        ],
    )? {
        assert!(!ok, "driver mode on a dummy interface was accepted");
        assert_one_clear_line(&stderr, "refused to attach XDP in driver mode");
        assert_nothing_left(&lab)?;
    }
    Ok(())
}

#[test]
fn stats_without_a_daemon_says_so() -> Result<()> {
    let lab = standard_lab("badstats")?;
    for (ok, stderr) in vipwatch(&lab, &["stats", "--iface", "eth0"])? {
        assert!(!ok);
        assert_one_clear_line(&stderr, "no vipwatch backup is running on eth0");
    }
    for (ok, stderr) in vipwatch(&lab, &["stats"])? {
        assert!(!ok);
        assert_one_clear_line(&stderr, "no vipwatch backup is running");
    }
    Ok(())
}

#[test]
fn a_vip_that_is_a_host_address_or_not_vipwatch_s_is_refused() -> Result<()> {
    // Issue "Never lose the VIP", row 8: `vipwatch master --vip` = the
    // host's own address was accepted, and on SIGTERM it deleted that
    // address and all secondaries. Both roles refuse a host's primary
    // address; a master refuses any address it did not add.
    let lab = standard_lab("badhostvip")?;
    let own = format!("{BACKUP}/24");
    for role in [
        vec!["master", "--iface", "eth0", "--vip", own.as_str()],
        vec![
            "backup",
            "--iface",
            "eth0",
            "--master",
            MASTER,
            "--vip",
            own.as_str(),
        ],
    ] {
        for (ok, stderr) in vipwatch(&lab, &role)? {
            assert!(!ok, "{role:?} started");
            assert_one_clear_line(&stderr, "this host's own address");
            assert_nothing_left(&lab)?;
        }
    }
    lab.add_address("backup", VIP_CIDR)?;
    for (ok, stderr) in vipwatch(&lab, &["master", "--iface", "eth0", "--vip", VIP_CIDR])? {
        assert!(!ok, "a master started on an address it did not add");
        assert_one_clear_line(&stderr, "vipwatch did not add it");
        assert_nothing_left(&lab)?;
    }
    let vip: std::net::Ipv4Addr = vipwatch_tests::scenario::VIP.parse()?;
    assert!(lab.has_address("backup", vip)?, "left alone");
    assert!(
        lab.has_address("backup", BACKUP.parse::<std::net::Ipv4Addr>()?)?,
        "the host's address is never touched"
    );
    Ok(())
}
