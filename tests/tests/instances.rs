//! End to end: one process, many instances (issue "One daemon for every
//! VIP on the host"): two backups on one interface, the active/active pair,
//! reload, `check`, and a second process on an interface.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use vipwatch_tests::{
    Client, EchoServer, Lab, Proc, Signal, require_root, vipwatch_bin, wait_until,
};

const PORT: u16 = 7007;
const VIP_A: &str = "192.0.2.100";
const VIP_B: &str = "192.0.2.101";
const WAIT: Duration = Duration::from_secs(10);

/// A configuration file of the test's, removed when dropped.
struct ConfigFile {
    path: PathBuf,
}

impl ConfigFile {
    fn new(lab: &Lab, name: &str) -> Self {
        Self {
            path: std::env::temp_dir().join(format!("{}{name}.toml", lab.prefix())),
        }
    }

    fn write(&self, text: &str) -> Result<&Self> {
        std::fs::write(&self.path, text)
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(self)
    }

    fn arg(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}

fn backup_instance(name: &str, vip: &str, master: &str, extra: &str) -> String {
    format!(
        "[[instance]]\nname = \"{name}\"\nrole = \"backup\"\niface = \"eth0\"\nvip = \"{vip}/24\"\nmaster = \"{master}\"\n{extra}\n"
    )
}

fn master_instance(name: &str, vip: &str) -> String {
    format!(
        "[[instance]]\nname = \"{name}\"\nrole = \"master\"\niface = \"eth0\"\nvip = \"{vip}/24\"\n\n"
    )
}

/// `vipwatch run --config FILE` in `host`, once it attached XDP.
fn run_config(lab: &Lab, host: &str, file: &ConfigFile) -> Result<Proc> {
    let p = lab.spawn(host, vipwatch_bin()?, ["run", "--config", &file.arg()])?;
    p.wait_for_line("XDP attached", WAIT)
        .with_context(|| format!("vipwatch run did not start:\n{}", p.output()))?;
    Ok(p)
}

/// `vipwatch stats --json` in `host`: one object per backup instance.
fn all_stats(lab: &Lab, host: &str) -> Result<Vec<Value>> {
    let out = lab.output(host, vipwatch_bin()?, ["stats", "--json"], WAIT)?;
    if !out.status.success() {
        bail!(
            "vipwatch stats failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("stats --json is not JSON lines"))
        .collect()
}

fn instance<'a>(stats: &'a [Value], name: &str) -> Result<&'a Value> {
    stats
        .iter()
        .find(|s| s["instance"] == name)
        .with_context(|| format!("no instance {name} in {stats:?}"))
}

fn wait_instance(
    lab: &Lab,
    host: &str,
    name: &str,
    what: &str,
    mut cond: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let mut last = Value::Null;
    wait_until(what, WAIT, || {
        Ok(match all_stats(lab, host) {
            Ok(all) => match instance(&all, name) {
                Ok(v) => {
                    last = v.clone();
                    cond(&last)
                }
                Err(_) => false,
            },
            Err(_) => false,
        })
    })
    .with_context(|| format!("last stats of {name}: {last}"))?;
    Ok(last)
}

fn vip(s: &str) -> Ipv4Addr {
    s.parse().expect("constant")
}

fn client(lab: &Lab, to: &str) -> Result<Client> {
    Client::builder(SocketAddrV4::new(vip(to), PORT), Duration::from_micros(200))
        .max_duration(Duration::from_secs(120))
        .start(lab, "client")
}

#[test]
fn two_backups_on_one_interface_only_the_dead_masters_vip_moves() -> Result<()> {
    require_root()?;
    let lab = Lab::builder("inst2")
        .host("m1", "192.0.2.1/24")
        .host("backup", "192.0.2.2/24")
        .host("m2", "192.0.2.3/24")
        .host("client", "192.0.2.10/24")
        .build()?;
    let bin = vipwatch_bin()?;
    let _servers = [
        EchoServer::start(&lab, "m1", PORT, "m1")?,
        EchoServer::start(&lab, "m2", PORT, "m2")?,
        EchoServer::start(&lab, "backup", PORT, "backup")?,
    ];
    let masters: Vec<Proc> = [("m1", VIP_A), ("m2", VIP_B)]
        .iter()
        .map(|(host, v)| {
            let p = lab.spawn(
                host,
                &bin,
                ["master", "--iface", "eth0", "--vip", &format!("{v}/24")],
            )?;
            p.wait_for_line("state -> HOLDING", WAIT)?;
            Ok(p)
        })
        .collect::<Result<_>>()?;
    let file = ConfigFile::new(&lab, "two");
    file.write(&format!(
        "{}{}",
        backup_instance("redis", VIP_A, "192.0.2.1", ""),
        backup_instance("mongo", VIP_B, "192.0.2.3", "")
    ))?;
    let daemon = run_config(&lab, "backup", &file)?;
    for name in ["redis", "mongo"] {
        wait_instance(&lab, "backup", name, "both instances stand by", |s| {
            s["state"] == "STANDBY"
        })?;
    }
    let to_a = client(&lab, VIP_A)?;
    let to_b = client(&lab, VIP_B)?;
    to_a.wait_for_answer_from("m1", Instant::now(), WAIT)?;
    to_b.wait_for_answer_from("m2", Instant::now(), WAIT)?;
    let mongo_before = instance(&all_stats(&lab, "backup")?, "mongo")?.clone();

    let pulled = Instant::now();
    lab.link_down("m1")?;
    let answer = to_a
        .wait_for_answer_from("backup", pulled, WAIT)
        .with_context(|| daemon.output())?;
    eprintln!(
        "redis VIP moved in {:.2} ms",
        answer
            .received_at
            .saturating_duration_since(pulled)
            .as_secs_f64()
            * 1e3
    );
    wait_instance(&lab, "backup", "redis", "redis is ACTIVE", |s| {
        s["state"] == "ACTIVE"
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let all = all_stats(&lab, "backup")?;
    let mongo = instance(&all, "mongo")?;
    assert_eq!(mongo["state"], "STANDBY", "{mongo}");
    assert_eq!(mongo["takeovers"], 0, "{mongo}");
    // Its detection went on: replies kept coming. Its longest reply gap
    // and deferred deadlines are the VM's scheduling over the whole run
    // (a CI run saw one 15 ms stall and one deferral while redis took
    // over): reported, not asserted; the benchmark's scaling section
    // measures one instance's failover beside many others.
    assert!(
        mongo["master"]["replies"].as_u64() > mongo_before["master"]["replies"].as_u64(),
        "{mongo_before} -> {mongo}"
    );
    eprintln!(
        "mongo meanwhile: longest reply gap {} ms, {} deferred deadlines",
        mongo["master"]["max_gap_ms"], mongo["deferred"]
    );
    let log = daemon.output();
    assert_eq!(
        log.matches("mongo: state").count(),
        1,
        "mongo changed state only once (STARTING -> STANDBY):\n{log}"
    );
    assert!(lab.has_address("backup", vip(VIP_A))?);
    assert!(!lab.has_address("backup", vip(VIP_B))?);
    assert!(lab.has_address("m2", vip(VIP_B))?);
    // m2 never stopped answering its own clients.
    let rec = to_b.snapshot();
    assert_eq!(rec.count_from("backup", pulled, Instant::now()), 0);
    drop(masters);
    Ok(())
}

#[test]
fn active_active_pair_fails_over_both_ways() -> Result<()> {
    require_root()?;
    let lab = Lab::builder("actact")
        .host("a", "192.0.2.1/24")
        .host("b", "192.0.2.2/24")
        .host("client", "192.0.2.10/24")
        .gateway("192.0.2.254/24")
        .build()?;
    let _servers = [
        EchoServer::start(&lab, "a", PORT, "a")?,
        EchoServer::start(&lab, "b", PORT, "b")?,
    ];
    let witness = "witness = \"192.0.2.254\"";
    let file_a = ConfigFile::new(&lab, "a");
    file_a.write(&format!(
        "{}{}",
        master_instance("web", VIP_A),
        backup_instance("db", VIP_B, "192.0.2.2", witness)
    ))?;
    let file_b = ConfigFile::new(&lab, "b");
    file_b.write(&format!(
        "{}{}",
        master_instance("db", VIP_B),
        backup_instance("web", VIP_A, "192.0.2.1", witness)
    ))?;
    let a = run_config(&lab, "a", &file_a)?;
    let b = run_config(&lab, "b", &file_b)?;
    a.wait_for_line("web: state -> HOLDING", WAIT)?;
    b.wait_for_line("db: state -> HOLDING", WAIT)?;
    wait_instance(&lab, "a", "db", "a backs db up", |s| {
        s["state"] == "STANDBY"
    })?;
    wait_instance(&lab, "b", "web", "b backs web up", |s| {
        s["state"] == "STANDBY"
    })?;
    let to_web = client(&lab, VIP_A)?;
    let to_db = client(&lab, VIP_B)?;
    to_web.wait_for_answer_from("a", Instant::now(), WAIT)?;
    to_db.wait_for_answer_from("b", Instant::now(), WAIT)?;

    // a's cable: b takes web over and keeps db; a, cut off, takes nothing.
    // Then the same the other way round.
    for (down, up, moved, to, kept) in [
        ("a", "b", "web", &to_web, "db"),
        ("b", "a", "db", &to_db, "web"),
    ] {
        let takeovers_before = instance(&all_stats(&lab, down)?, kept)?["takeovers"].clone();
        let t0 = Instant::now();
        lab.link_down(down)?;
        let answer = to
            .wait_for_answer_from(up, t0, WAIT)
            .with_context(|| format!("--- a ---\n{}\n--- b ---\n{}", a.output(), b.output()))?;
        eprintln!(
            "{down}'s cable pulled: {moved} on {up} after {:.2} ms",
            answer
                .received_at
                .saturating_duration_since(t0)
                .as_secs_f64()
                * 1e3
        );
        wait_instance(&lab, up, moved, "takeover", |s| s["state"] == "ACTIVE")?;
        // The cut-off host cannot even send its probes (its link is down):
        // the silence is excused, never a takeover.
        std::thread::sleep(Duration::from_millis(100));
        let cut_off = instance(&all_stats(&lab, down)?, kept)?.clone();
        assert_ne!(cut_off["state"], "ACTIVE", "{cut_off}");
        assert_eq!(cut_off["takeovers"], takeovers_before, "{cut_off}");
        let v = if moved == "web" { VIP_A } else { VIP_B };
        let other = if moved == "web" { VIP_B } else { VIP_A };
        assert!(lab.has_address(up, vip(v))?, "{up} holds {moved}");
        assert!(lab.has_address(up, vip(other))?, "{up} still holds {kept}");
        assert!(
            !lab.has_address(down, vip(other))?,
            "cut-off {down} took {kept}"
        );
        // Cable back: the VIP goes home (the master there still holds it,
        // answers the backup's solicitation, and the backup hands it over).
        let t1 = Instant::now();
        lab.link_up(down)?;
        to.wait_for_answer_from(down, t1, WAIT)
            .with_context(|| format!("--- a ---\n{}\n--- b ---\n{}", a.output(), b.output()))?;
        wait_instance(&lab, up, moved, "failback", |s| s["state"] == "STANDBY")?;
        wait_instance(&lab, down, kept, "back to standby", |s| {
            s["state"] == "STANDBY"
        })?;
        assert!(!lab.has_address(up, vip(v))?, "{up} released {moved}");
    }
    Ok(())
}

#[test]
fn reload_adds_removes_and_survives_a_broken_file_without_touching_the_rest() -> Result<()> {
    require_root()?;
    let lab = Lab::builder("reload")
        .host("m1", "192.0.2.1/24")
        .host("host", "192.0.2.2/24")
        .host("client", "192.0.2.10/24")
        .build()?;
    let _server = EchoServer::start(&lab, "host", PORT, "host")?;
    let file = ConfigFile::new(&lab, "reload");
    file.write(&master_instance("held", VIP_A))?;
    let daemon = run_config(&lab, "host", &file)?;
    daemon.wait_for_line("held: state -> HOLDING", WAIT)?;
    let to_held = client(&lab, VIP_A)?;
    to_held.wait_for_answer_from("host", Instant::now(), WAIT)?;
    std::thread::sleep(Duration::from_millis(200));

    // Add a backup instance while "held" serves: nothing of it moves.
    let t0 = Instant::now();
    file.write(&format!(
        "{}{}",
        master_instance("held", VIP_A),
        backup_instance("added", VIP_B, "192.0.2.1", "")
    ))?;
    daemon.signal(Signal::Hup)?;
    daemon.wait_for_line_after("reloaded", t0, WAIT)?;
    wait_instance(&lab, "host", "added", "the added instance stands by", |s| {
        s["state"] == "STANDBY"
    })?;
    std::thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    let rec = to_held.snapshot();
    let sent = rec.sent_between(t0, t1);
    let lost = rec.unanswered_between(t0, t1 - Duration::from_millis(50));
    let gap = rec.longest_gap(t0, t1).duration();
    eprintln!("reload with a held VIP: {sent} requests, {lost} unanswered, longest gap {gap:?}");
    assert!(sent > 500, "the client was sending: {sent}");
    assert_eq!(
        lost,
        0,
        "a request to the held VIP went unanswered\n{}",
        daemon.output()
    );
    let log = daemon.output();
    assert!(
        log.contains("1 unchanged, 1 added, 0 restarted, 0 removed"),
        "{log}"
    );
    assert_eq!(
        log.matches("held: state").count(),
        1,
        "held was not touched:\n{log}"
    );

    // A broken file: one error line, everything keeps running.
    let t2 = Instant::now();
    file.write("[[instance]\nrole = 1\n")?;
    daemon.signal(Signal::Hup)?;
    let refused = daemon.wait_for_line_after("reload refused", t2, WAIT)?;
    assert!(
        refused.text.contains(".toml:1:"),
        "names file and line: {}",
        refused.text
    );
    std::thread::sleep(Duration::from_millis(100));
    let all = all_stats(&lab, "host")?;
    assert_eq!(instance(&all, "added")?["state"], "STANDBY");
    assert!(lab.has_address("host", vip(VIP_A))?, "held keeps its VIP");
    assert!(daemon.is_running());

    // Change "added": it restarts, alone.
    let t4 = Instant::now();
    file.write(&format!(
        "{}{}",
        master_instance("held", VIP_A),
        backup_instance("added", VIP_B, "192.0.2.1", "rise = 7")
    ))?;
    daemon.signal(Signal::Hup)?;
    daemon.wait_for_line_after("1 unchanged, 0 added, 1 restarted, 0 removed", t4, WAIT)?;
    wait_instance(
        &lab,
        "host",
        "added",
        "the changed instance stands by",
        |s| s["state"] == "STANDBY",
    )?;
    assert_eq!(daemon.output().matches("held: state").count(), 1);

    // Remove "held": it releases, as on a planned stop.
    let t3 = Instant::now();
    file.write(&backup_instance("added", VIP_B, "192.0.2.1", "rise = 7"))?;
    daemon.signal(Signal::Hup)?;
    daemon.wait_for_line_after("held: state -> STOPPED", t3, WAIT)?;
    daemon.wait_for_line_after("0 added, 0 restarted, 1 removed", t3, WAIT)?;
    assert!(
        !lab.has_address("host", vip(VIP_A))?,
        "a removed instance releases its VIP"
    );
    let all = all_stats(&lab, "host")?;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(all[0]["instance"], "added");
    Ok(())
}

#[test]
fn sighup_never_stops_a_daemon_started_with_flags() -> Result<()> {
    let lab = common::standard_lab("hupflags")?;
    let master = lab.spawn(
        "master",
        vipwatch_bin()?,
        ["master", "--iface", "eth0", "--vip", common::VIP_CIDR],
    )?;
    master.wait_for_line("state -> HOLDING", WAIT)?;
    let t0 = Instant::now();
    master.signal(Signal::Hup)?;
    master.wait_for_line_after("no configuration file to reload", t0, WAIT)?;
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        master.is_running(),
        "SIGHUP stopped the master:\n{}",
        master.output()
    );
    assert!(
        lab.has_address("master", vip(VIP_A))?,
        "the master keeps the VIP"
    );
    assert_eq!(master.output().matches("state ->").count(), 1);
    Ok(())
}

#[test]
fn check_reports_each_bad_config_in_one_line_and_touches_nothing() -> Result<()> {
    require_root()?;
    let lab = common::standard_lab("check")?;
    let file = ConfigFile::new(&lab, "check");
    let good = backup_instance("redis", VIP_A, common::MASTER, "");
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{good}interval = \"0ms\"\n"),
            ":8: interval: 0ns is out of range",
        ),
        (
            format!("{good}rise = \"five\"\n"),
            ":8: rise: must be a number",
        ),
        (format!("{good}nonsense = 1\n"), ":8: nonsense: unknown key"),
        (
            good.replace("192.0.2.1\"", "192.0.2.2\""),
            ":6: master: 192.0.2.2 is an address of this host (eth0)",
        ),
        (
            good.replace("192.0.2.1\"", "192.0.2.255\""),
            ":6: master: 192.0.2.255 is the broadcast address",
        ),
        (
            good.replace("\"eth0\"", "\"eth9\""),
            ":4: iface: interface eth9 does not exist",
        ),
        (
            format!(
                "{good}{}",
                backup_instance("again", VIP_A, common::MASTER, "")
            ),
            ":12: vip: 192.0.2.100 is already the VIP of instance \"redis\"",
        ),
    ];
    for (text, expected) in &cases {
        file.write(text)?;
        let out = lab.output(
            "backup",
            vipwatch_bin()?,
            ["check", "--config", &file.arg()],
            WAIT,
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(!out.status.success(), "{expected}: accepted");
        assert_eq!(lines.len(), 1, "{expected}: one line, got {stderr}");
        assert!(
            lines[0].starts_with(&format!("error: {}", file.arg())) && lines[0].contains(expected),
            "{:?} does not name the file and contain {expected:?}",
            lines[0]
        );
    }
    file.write(&good)?;
    let out = lab.output(
        "backup",
        vipwatch_bin()?,
        ["check", "--config", &file.arg()],
        WAIT,
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK, 1 instance"));
    // Nothing attached, bound or listening.
    let links = lab.run("backup", "ip", ["-d", "link", "show"])?;
    assert!(!String::from_utf8_lossy(&links.stdout).contains("prog/xdp"));
    assert!(!lab.has_address("backup", vip(VIP_A))?);
    Ok(())
}

#[test]
fn a_second_process_on_the_interface_is_refused_and_the_first_keeps_working() -> Result<()> {
    let lab = common::standard_lab("second")?;
    let first = common::start_backup(&lab, &[])?;
    common::wait_stats(&lab, "the first daemon stands by", WAIT, |s| {
        s["state"] == "STANDBY"
    })?;
    let out = lab.output(
        "backup",
        vipwatch_bin()?,
        ["master", "--iface", "eth0", "--vip", "192.0.2.101/24"],
        WAIT,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second process was accepted");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(&format!(
            "vipwatch (pid {}) already runs on eth0",
            first.pid()
        )),
        "{stderr}"
    );
    // The first one's program and counting are intact.
    let before = common::stats(&lab, "backup")?;
    std::thread::sleep(Duration::from_millis(200));
    let after = common::stats(&lab, "backup")?;
    assert!(
        after["master"]["replies"].as_u64() > before["master"]["replies"].as_u64(),
        "{before} -> {after}"
    );
    assert_eq!(after["state"], "STANDBY");
    let links = lab.run("backup", "ip", ["-d", "link", "show", "dev", "eth0"])?;
    assert!(String::from_utf8_lossy(&links.stdout).contains("prog/xdp"));
    assert!(!lab.has_address("backup", vip(VIP_B))?);
    Ok(())
}
