//! End to end: takeover, failback, witness, health gate and no false
//! takeovers, as a client sending to the VIP sees them.
//!
//! Bounds here are generous on purpose (a loaded 2-core VM must not make
//! them flake); `cargo xtask bench` holds the tight numbers.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::{HookFile, cases};
use vipwatch_tests::{
    Lab, Signal,
    scenario::{Family, Fault, Options, Scenario},
    vipwatch_bin,
};

fn scenario(tag: &str, health: bool, backup_args: &[&str]) -> Result<Scenario> {
    let mut opts = Options::new(tag, vipwatch_bin()?);
    opts.health = health;
    opts.backup_args = backup_args.iter().map(|s| s.to_string()).collect();
    Scenario::start(opts)
}

fn takeover_then_failback(tag: &str, fault: Fault, health: bool) -> Result<()> {
    let mut s = scenario(tag, health, &[])?;
    cases::take_over(&s, fault)?;
    cases::fail_back(&mut s, fault)
}

#[expect(non_snake_case, reason = "reads like the constant it wraps")]
fn VIP() -> std::net::Ipv4Addr {
    vipwatch_tests::scenario::VIP.parse().expect("constant")
}

#[test]
fn cable_pull_moves_the_vip_to_the_backup_and_back() -> Result<()> {
    takeover_then_failback("fcable", Fault::CablePull, false)
}

#[test]
fn frozen_master_is_taken_over_and_thawed_master_gets_it_back() -> Result<()> {
    takeover_then_failback("ffreeze", Fault::Freeze, false)
}

#[test]
fn unhealthy_master_steps_down_and_reclaims_when_healthy() -> Result<()> {
    takeover_then_failback("fhealth", Fault::Unhealthy, true)
}

#[test]
fn stopping_the_master_hands_over_and_restarting_it_takes_the_vip_back() -> Result<()> {
    // Planned maintenance, the classic "stop master.sh / run it again": the
    // stopping master releases the VIP and goes silent for the backup
    // (keepalived's priority-0 advert), the restarted one claims it back.
    takeover_then_failback("fstop", Fault::Stopped, false)
}

#[test]
fn witness_keeps_a_cut_off_backup_from_taking_over() -> Result<()> {
    cases::a_witness_keeps_a_cut_off_backup_from_taking_over(Family::V4, "fwit")
}

#[test]
fn manual_failback_keeps_the_vip_until_release() -> Result<()> {
    let mut s = scenario("fmanual", false, &["--failback", "manual"])?;
    let t0 = s.inject(Fault::CablePull)?;
    s.await_takeover(Fault::CablePull, t0, Duration::from_secs(5))?;
    s.repair(Fault::CablePull)?;
    std::thread::sleep(Duration::from_millis(500));
    let st = s.backup_stats()?;
    assert_eq!(
        st["state"], "ACTIVE",
        "manual failback must keep the VIP: {st}"
    );
    assert!(s.lab.has_address("backup", VIP())?);
    let out = s.lab.output(
        "backup",
        vipwatch_bin()?,
        [
            "release",
            "--iface",
            "eth0",
            "--vip",
            vipwatch_tests::scenario::VIP_CIDR,
        ],
        Duration::from_secs(10),
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_state("STANDBY", Duration::from_secs(5))?;
    assert!(!s.lab.has_address("backup", VIP())?);
    Ok(())
}

#[test]
fn no_false_takeover_with_2_percent_loss_for_10_s() -> Result<()> {
    let s = scenario("floss", false, &[])?;
    // 2 % of the frames from the master toward the backup are lost: one
    // direction, like netem on one interface. Not 5 %: with 5 probes to a
    // verdict, three lost replies in a row (about once a run at 5 %) plus
    // two replies held up 2 ms by this VM's scheduler make a takeover that
    // the loss alone would not (1 run in 20 here); README "Loss" has the
    // arithmetic. The benchmark's soak holds the long-run figure.
    loss_from(&s.lab, "master", 2)?;
    std::thread::sleep(Duration::from_secs(10));
    let st = s.backup_stats()?;
    eprintln!(
        "10 s at 2 % loss: {} probes, {} replies, {:.2} % lost, longest silence {:.2} ms, deferred {}",
        st["master"]["probes_sent"],
        st["master"]["replies"],
        st["master"]["loss_pct"],
        st["master"]["max_gap_ms"],
        st["deferred"]
    );
    let loss = st["master"]["loss_pct"].as_f64().unwrap_or(0.0);
    assert!(loss > 1.0, "the loss was not applied: {st}");
    assert_eq!(
        st["takeovers"],
        0,
        "false takeover under 2 % loss: {st}\n{}",
        s.logs()
    );
    Ok(())
}

#[test]
fn no_false_takeover_when_the_backup_is_stopped_for_200_ms() -> Result<()> {
    let s = scenario("fsigstop", false, &[])?;
    for _ in 0..3 {
        s.backup.signal(Signal::Stop)?;
        std::thread::sleep(Duration::from_millis(200));
        s.backup.signal(Signal::Cont)?;
        std::thread::sleep(Duration::from_millis(300));
    }
    let st = s.backup_stats()?;
    eprintln!(
        "after 3 × SIGSTOP 200 ms: deferred deadlines {}, takeovers {}",
        st["deferred"], st["takeovers"]
    );
    assert_eq!(
        st["takeovers"],
        0,
        "a stopped backup concluded the master died: {st}\n{}",
        s.logs()
    );
    assert_eq!(st["state"], "STANDBY");
    assert!(!s.lab.has_address("backup", VIP())?);
    Ok(())
}

/// Drops `percent` % of the frames entering the bridge from `host`'s port.
fn loss_from(lab: &Lab, host: &str, percent: u32) -> Result<()> {
    let rule = format!(
        "add table bridge vwloss; \
         add chain bridge vwloss lossy {{ type filter hook forward priority 0; policy accept; }}; \
         add rule bridge vwloss lossy iifname \"{host}\" numgen random mod 100 lt {percent} counter drop"
    );
    lab.run(Lab::BRIDGE, "nft", [rule.as_str()])?;
    Ok(())
}

#[test]
fn on_change_hook_gets_state_vip_iface_and_reason() -> Result<()> {
    let hook = HookFile::new("fhook");
    let s = scenario("fhook", false, &["--on-change", &hook.command()])?;
    let t0 = s.inject(Fault::CablePull)?;
    s.await_takeover(Fault::CablePull, t0, Duration::from_secs(5))?;
    hook.wait_for("STANDBY 192.0.2.100/24 eth0 master-replied")?;
    hook.wait_for("ACTIVE 192.0.2.100/24 eth0 master-silent")?;
    Ok(())
}

#[test]
fn a_flapping_master_gets_the_vip_back_only_after_rise_replies() -> Result<()> {
    // --rise 50 at 2 ms: the master must answer for 100 ms in a row.
    let s = scenario("frise", false, &["--rise", "50"])?;
    let t0 = s.inject(Fault::CablePull)?;
    s.await_takeover(Fault::CablePull, t0, Duration::from_secs(5))?;
    // A 20 ms flap: a few replies, far fewer than 50.
    s.lab.link_up("master")?;
    std::thread::sleep(Duration::from_millis(20));
    s.lab.link_down("master")?;
    std::thread::sleep(Duration::from_millis(100));
    let st = s.backup_stats()?;
    assert_eq!(
        st["state"],
        "ACTIVE",
        "a 20 ms flap must not move the VIP: {st}\n{}",
        s.logs()
    );
    assert_eq!(st["releases"], 0, "{st}");
    // Back for good: released once it has answered 50 probes in a row.
    let up = std::time::Instant::now();
    s.lab.link_up("master")?;
    let released = s
        .backup
        .wait_for_line_after("released", up, Duration::from_secs(5))?;
    let after = Duration::from_nanos(
        vipwatch_tests::scenario::mono_ns(&released.text)?
            .saturating_sub(vipwatch_tests::clock::to_monotonic_ns(up)),
    );
    eprintln!(
        "released {:.1} ms after the master came back for good",
        after.as_secs_f64() * 1e3
    );
    assert!(
        after >= Duration::from_millis(90),
        "released after only {after:?}: --rise ignored"
    );
    Ok(())
}
