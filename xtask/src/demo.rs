//! `cargo xtask demo`: the whole story in under a minute, on a lab of
//! network namespaces: a master holds a VIP, a client talks to it, the
//! master's cable is pulled, the backup takes over within milliseconds,
//! the cable comes back and the VIP goes home.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde_json::Value;
use vipwatch_tests::scenario::{BACKUP, CLIENT, Fault, MASTER, Options, Scenario, VIP};

use crate::{build, interrupt, util};

pub fn demo() -> Result<()> {
    if !util::is_root() {
        anyhow::bail!("the demo builds network namespaces and loads XDP: run it as root");
    }
    let bin = build::build(build::Options { release: true })?;
    interrupt::install()?;

    say("");
    say("vipwatch demo: one LAN (a bridge in a network namespace) with three hosts");
    say(&format!(
        "  master {MASTER}   backup {BACKUP}   client {CLIENT}   VIP {VIP}"
    ));
    say("");
    let mut opts = Options::new("demo", bin);
    opts.backup_args = vec!["--witness".into(), vipwatch_tests::scenario::GATEWAY.into()];
    let start = Instant::now();
    let mut s = Scenario::start(opts).context("setting up the demo lab")?;
    let clock = |t: Instant| {
        format!(
            "[{:>7.3} s]",
            t.saturating_duration_since(start).as_secs_f64()
        )
    };
    say(&format!(
        "{} master: `vipwatch master` binds the VIP and announces it (gratuitous ARP)",
        clock(Instant::now())
    ));
    say(&format!(
        "{} backup: `vipwatch backup` pings the master every 2 ms; XDP counts the replies in the kernel",
        clock(Instant::now())
    ));
    say(&format!(
        "{} client: sends a request to the VIP every 0.2 ms; the master answers",
        clock(Instant::now())
    ));
    std::thread::sleep(Duration::from_secs(1));
    let st = s.backup_stats()?;
    say(&format!(
        "{} backup: {} probes, {} replies, RTT p50 < {} µs, XDP in {} mode, state {}",
        clock(Instant::now()),
        st["master"]["probes_sent"],
        st["master"]["replies"],
        st["master"]["rtt_p50_us"],
        st["xdp_mode"].as_str().unwrap_or("?"),
        st["state"].as_str().unwrap_or("?"),
    ));
    interrupt::check()?;

    say("");
    say("1. Pull the master's cable");
    let t0 = s.inject(Fault::CablePull)?;
    say(&format!("{} master: link down", clock(t0)));
    let t = s.await_takeover(Fault::CablePull, t0, Duration::from_secs(5))?;
    for (at, line) in state_lines(&s, t0) {
        say(&format!("{} backup: {line}", clock(at)));
    }
    say(&format!(
        "{} client: answered by the backup",
        clock(t0 + t.outage)
    ));
    print_timeline(&t.stats["last_takeover"], t.first_answer_ns);
    say(&format!(
        "   client outage: {:.1} ms   (a ping-every-few-seconds script: several seconds)",
        ms(t.outage)
    ));
    std::thread::sleep(Duration::from_secs(1));
    interrupt::check()?;

    say("");
    say("2. Plug the cable back in");
    let r = s.repair(Fault::CablePull)?;
    say(&format!(
        "{} master: link up (it still has the VIP bound)",
        clock(r)
    ));
    let fb = s.await_failback(Fault::CablePull, r, Duration::from_secs(10))?;
    for (at, line) in state_lines(&s, r) {
        say(&format!("{} backup: {line}", clock(at)));
    }
    say(
        "   the backup saw the master answer 5 probes in a row (--rise), asked who holds the VIP (ARP probe),",
    );
    say("   and the master's kernel answered for it: that is a claim,");
    say("   so the backup released the VIP and pointed the clients back at the master");
    say(&format!(
        "   both hosts had the VIP for {:.1} ms; the client was answered by both for {:.1} ms; longest client gap {:.1} ms",
        ms(fb.dual_bound),
        ms(fb.client_both),
        ms(fb.client_outage)
    ));
    std::thread::sleep(Duration::from_millis(500));
    interrupt::check()?;

    say("");
    say("3. Cut the BACKUP off instead (it loses both the master and the witness 192.0.2.254)");
    let c = Instant::now();
    s.lab.blackhole("backup")?;
    s.wait_state("ISOLATED", Duration::from_secs(5))?;
    for (at, line) in state_lines(&s, c) {
        say(&format!("{} backup: {line}", clock(at)));
    }
    std::thread::sleep(Duration::from_millis(300));
    let holds = s
        .lab
        .has_address("backup", VIP.parse::<std::net::Ipv4Addr>()?)?;
    say(&format!(
        "   the backup does {}hold the VIP: no split brain when the backup is the one cut off",
        if holds { "" } else { "not " }
    ));
    s.lab.unblackhole("backup")?;
    s.wait_state("STANDBY", Duration::from_secs(5))?;
    say(&format!(
        "{} backup: reconnected, standing by again",
        clock(Instant::now())
    ));

    let rec = s.client.snapshot();
    say("");
    say(&format!(
        "client totals: {} requests, answered by master {} times, by backup {} times",
        rec.sends.len(),
        rec.counts().get("master").copied().unwrap_or(0),
        rec.counts().get("backup").copied().unwrap_or(0),
    ));
    say("tearing the lab down");
    let ours: Vec<u32> = std::iter::once(s.backup.pid())
        .chain(s.master.as_ref().map(|m| m.pid()))
        .collect();
    drop(s);
    let (left, older) = leftovers(&ours);
    if left.is_empty() {
        say(
            "done: none of the demo's namespaces or daemons is left (nothing is pinned: XDP and maps go with the daemons)",
        );
    } else {
        say(&format!(
            "done, but the demo left behind: {}",
            left.join(", ")
        ));
    }
    if !older.is_empty() {
        say(&format!(
            "note: not the demo's, already running before it: {}",
            older.join(", ")
        ));
    }
    Ok(())
}

fn say(line: &str) {
    println!("{line}");
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The backup's state-change lines logged after `after`, without the
/// logger's prefix and the machine-readable tail.
fn state_lines(s: &Scenario, after: Instant) -> Vec<(Instant, String)> {
    s.backup
        .lines()
        .into_iter()
        .filter(|l| l.at >= after && (l.text.contains("state ") || l.text.contains("released")))
        .map(|l| {
            let text = l.text.split("] ").nth(1).unwrap_or(&l.text).to_owned();
            let text = match text.split_once(" mono_ns=") {
                Some((head, _)) => head.to_owned(),
                None => text,
            };
            (l.at, text)
        })
        .collect()
}

fn print_timeline(t: &Value, first_answer_ns: u64) {
    let Some(last) = t["last_reply_ns"].as_u64() else {
        return;
    };
    let rel = |key: &str| {
        t[key]
            .as_u64()
            .map_or(f64::NAN, |v| (v as f64 - last as f64) / 1e6)
    };
    say(&format!(
        "   timeline from the master's last reply: deadline +{:.2} ms, decision +{:.2} ms, VIP bound +{:.2} ms, \
         first GARP +{:.2} ms, first client answer +{:.2} ms",
        rel("deadline_ns"),
        rel("decision_ns"),
        rel("vip_bound_ns"),
        rel("first_garp_ns"),
        (first_answer_ns as f64 - last as f64) / 1e6,
    ));
}

/// What the demo could have left behind: its namespaces (named after our
/// pid) and its daemons (`ours`); and, apart, vipwatch daemons that are not
/// the demo's (started before it, by someone else).
fn leftovers(ours: &[u32]) -> (Vec<String>, Vec<String>) {
    let mut left = Vec::new();
    let mut older = Vec::new();
    let prefix = format!("vwlab-{}-", std::process::id());
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        left.extend(
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix)),
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != "vipwatch" {
                continue;
            }
            if ours.contains(&pid) {
                left.push(format!("vipwatch pid {pid}"));
            } else {
                older.push(format!("vipwatch pid {pid}"));
            }
        }
    }
    (left, older)
}
