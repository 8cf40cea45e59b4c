//! End to end over IPv6 (issue 12): the lab in 2001:db8::/64 with IPv6
//! enabled in every namespace, the VIP 2001:db8::100/64, and the IPv4
//! tests' cases that matter for a second address family: a cable pull
//! and the failback as a client sending to the VIP sees them, the witness,
//! forged ICMPv6 echo replies, forged NDP claims (an unsolicited
//! Neighbour Advertisement, a duplicate address detection probe) and the
//! kick of IPv6 TCP connections.
//!
//! The daemon takes the same flags as for IPv4 (`--master`, `--witness`,
//! `--vip` given IPv6 addresses), probes with ICMPv6 echo requests and
//! announces with unsolicited Neighbour Advertisements; `stats`, the logs
//! and the hook read as they do for IPv4. The `lab_` tests need no
//! vipwatch: they check the IPv6 lab and the forged frames against the
//! kernel itself.
//!
//! Bounds are the IPv4 tests' (generous on purpose); `cargo xtask bench`
//! measures the IPv6 cable pull beside the IPv4 one.

mod common;

use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use common::*;
use serde_json::Value;
use vipwatch_tests::{
    Client, EchoServer, Lab, Signal, frames,
    scenario::{self, Family, Fault, Options, Scenario},
    tcp::{Pace, Recovery, TcpClient, TcpServer},
    vipwatch_bin, wait_until,
};

const WAIT: Duration = Duration::from_secs(10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100);

fn ip(s: &str) -> Ipv6Addr {
    s.parse().expect("constant")
}

fn scenario_v6(tag: &str, backup_args: &[&str]) -> Result<Scenario> {
    let mut opts = Options::new(tag, vipwatch_bin()?);
    opts.family = Family::V6;
    opts.backup_args = backup_args.iter().map(|s| s.to_string()).collect();
    Scenario::start(opts)
}

// ----- the lab itself (no vipwatch) ---------------------------------------

/// `/proc/net/snmp6` counter `name` in `host`'s namespace.
fn snmp6(lab: &Lab, host: &str, name: &str) -> Result<u64> {
    let out = lab.run(host, "cat", ["/proc/net/snmp6"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(char::is_whitespace)?;
            (key == name).then(|| value.trim().parse().ok())?
        })
        .with_context(|| format!("no {name} in /proc/net/snmp6:\n{text}"))
}

/// After a fault: once in-flight answers have drained, nobody answers.
fn assert_silent(client: &Client, what: &str) {
    std::thread::sleep(Duration::from_millis(150));
    let from = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    let record = client.snapshot();
    let sent = record.sent_between(from, record.stopped);
    assert!(sent > 100, "{what}: the client kept sending ({sent} sent)");
    let answered = record.count_between(from, record.stopped);
    assert_eq!(answered, 0, "{what}: answers still arrive: {record}");
}

#[test]
fn lab_ipv6_hosts_reach_each_other_and_faults_stop_ipv6_traffic() -> Result<()> {
    let lab = standard_lab_v6("v6lab")?;
    for host in ["master", "backup", "client", "attacker"] {
        let addrs = lab.addresses(host)?;
        assert!(
            addrs
                .iter()
                .any(|a| matches!(a, IpAddr::V6(v) if v.segments()[..2] == [0x2001, 0xdb8])),
            "{host} has its 2001:db8:: address: {addrs:?}"
        );
    }
    // ping6 across the bridge, to every host and to the gateway (the
    // witness of the IPv6 scenario).
    for to in [v6::MASTER, v6::BACKUP, v6::ATTACKER, v6::GATEWAY] {
        lab.run("client", "ping", ["-6", "-n", "-c", "1", "-W", "2", to])
            .with_context(|| format!("ping6 from the client to {to}"))?;
    }
    lab.run(
        Lab::BRIDGE,
        "ping",
        ["-6", "-n", "-c", "1", "-W", "2", v6::BACKUP],
    )
    .context("ping6 from the gateway to the backup")?;

    // UDP over IPv6, as the scenario's client and echo servers use it.
    let _server = EchoServer::start_v6(&lab, "master", 7007, "master")?;
    let client = Client::builder(
        SocketAddr::new(ip(v6::MASTER).into(), 7007),
        Duration::from_millis(1),
    )
    .max_duration(Duration::from_secs(30))
    .start(&lab, "client")?;
    client.wait_for_answer_from("master", Instant::now(), WAIT)?;
    assert_eq!(
        lab.neighbor_mac("client", ip(v6::MASTER))?.as_deref(),
        Some(lab.mac("master")?),
        "the client learned the master's MAC by NDP"
    );

    // A cable pull keeps the host's IPv6 addresses (keep_addr_on_down),
    // as it keeps IPv4 ones: the repaired master is reachable again.
    lab.link_down("master")?;
    assert_silent(&client, "link_down");
    assert!(lab.has_address("master", ip(v6::MASTER))?);
    lab.link_up("master")?;
    client.wait_for_answer_from("master", Instant::now(), WAIT)?;

    // The bridge-family nftables faults drop IPv6 frames too.
    lab.blackhole("master")?;
    assert_silent(&client, "blackhole");
    lab.unblackhole("master")?;
    client.wait_for_answer_from("master", Instant::now(), WAIT)?;
    lab.loss(100)?;
    assert_silent(&client, "loss(100)");
    lab.clear_loss()?;
    client.wait_for_answer_from("master", Instant::now(), WAIT)?;

    // TCP over IPv6, as the kick test's servers and client use it.
    let _tcp = TcpServer::start_v6(&lab, "backup", TCP_PORT, BACKUP_ID, WAIT)?;
    let tcp = TcpClient::start(
        &lab,
        "client",
        SocketAddr::new(ip(v6::BACKUP).into(), TCP_PORT),
        4,
        BUSY,
    )?;
    tcp.wait_all_answered_by(BACKUP_ID, WAIT)?;
    Ok(())
}

fn is_na_for_vip(f: &[u8]) -> bool {
    frames::icmpv6_type(f) == Some(frames::ICMPV6_NEIGHBOR_ADVERT)
        && f.len() >= 78
        && f[62..78] == VIP6.octets()
}

#[test]
fn lab_forged_ndp_and_icmpv6_frames_are_taken_as_real_by_the_kernel() -> Result<()> {
    // What the vipwatch tests below forge, checked against Linux itself:
    // if the kernel accepts the frames (checksum, hop limit, addresses),
    // an XDP program that parses them is tested with valid frames.
    let lab = standard_lab_v6("v6frames")?;
    let attacker = mac_of(&lab, "attacker")?;

    // Echo replies "from" the master, sent by the attacker: the backup's
    // kernel counts them as echo replies, none with a bad checksum.
    let replies = snmp6(&lab, "backup", "Icmp6InEchoReplies")?;
    let errors = snmp6(&lab, "backup", "Icmp6InCsumErrors")?;
    forge_replies(&lab, Family::V6, v6::MASTER, 0xdead_beef, 20)?;
    wait_until("the backup's kernel counts 20 echo replies", WAIT, || {
        Ok(snmp6(&lab, "backup", "Icmp6InEchoReplies")? >= replies + 20)
    })?;
    assert_eq!(snmp6(&lab, "backup", "Icmp6InCsumErrors")?, errors);

    // The VIP on the master by hand; a client sending to it learns it
    // there.
    let _servers = [
        EchoServer::start_v6(&lab, "master", 7007, "master")?,
        EchoServer::start_v6(&lab, "backup", 7007, "backup")?,
    ];
    lab.add_address("master", v6::VIP_CIDR)?;
    let client = Client::builder(SocketAddr::new(VIP6.into(), 7007), Duration::from_millis(1))
        .max_duration(Duration::from_secs(30))
        .start(&lab, "client")?;
    client.wait_for_answer_from("master", Instant::now(), WAIT)?;
    assert_eq!(
        lab.neighbor_mac("client", VIP6)?.as_deref(),
        Some(lab.mac("master")?)
    );
    // A takeover by hand, as vipwatch does it: the VIP moves to the
    // backup, which announces it with an unsolicited NA (Override) naming
    // its own MAC; the client's entry follows (RFC 4861 7.2.5) and the
    // backup answers.
    lab.del_address("master", v6::VIP_CIDR)?;
    lab.add_address("backup", v6::VIP_CIDR)?;
    let backup = mac_of(&lab, "backup")?;
    let moved = Instant::now();
    let na = frames::unsolicited_na(backup, VIP6, backup);
    frames::send(&lab, "backup", "eth0", &[na], Duration::ZERO)?;
    client.wait_for_answer_from("backup", moved, WAIT)?;
    assert_eq!(
        lab.neighbor_mac("client", VIP6)?.as_deref(),
        Some(lab.mac("backup")?)
    );
    drop(client);
    // A forged one (another host's Ethernet source) moves it as well.
    let elsewhere = "02:76:77:00:00:42";
    let na = frames::unsolicited_na(attacker, VIP6, frames::mac(elsewhere)?);
    frames::send(&lab, "attacker", "eth0", &[na], Duration::ZERO)?;
    wait_until("the client follows the forged NA", WAIT, || {
        Ok(lab.neighbor_mac("client", VIP6)?.as_deref() == Some(elsewhere))
    })?;

    // A DAD probe for the VIP: the backup's kernel defends its address
    // with an NA to all nodes (RFC 4862 5.4.3), seen on the attacker.
    let defended = std::thread::scope(|scope| -> Result<usize> {
        let listener = scope.spawn(|| {
            frames::capture(
                &lab,
                "attacker",
                "eth0",
                1,
                Duration::from_secs(3),
                is_na_for_vip,
            )
        });
        std::thread::sleep(Duration::from_millis(200));
        frames::send(
            &lab,
            "attacker",
            "eth0",
            &[frames::dad_ns(attacker, VIP6)],
            Duration::ZERO,
        )?;
        let captured = listener
            .join()
            .map_err(|_| anyhow::anyhow!("the capture panicked"))??;
        Ok(captured.len())
    })?;
    assert_eq!(defended, 1, "the backup's kernel answered the DAD probe");
    Ok(())
}

// ----- vipwatch over IPv6 -------------------------------------------------

#[test]
fn cable_pull_moves_the_ipv6_vip_to_the_backup_and_back_to_the_master_only() -> Result<()> {
    let hook = HookFile::new("v6cable");
    let mut s = scenario_v6("v6cable", &["--on-change", &hook.command()])?;
    assert_eq!(s.vip(), IpAddr::V6(VIP6));
    let fault = Fault::CablePull;
    cases::take_over(&s, fault)?;
    // The client's neighbour entry followed the backup's NA.
    assert_eq!(
        s.lab.neighbor_mac("client", VIP6)?.as_deref(),
        Some(s.lab.mac("backup")?),
        "{}",
        s.logs()
    );
    hook.wait_for("STANDBY 2001:db8::100/64 eth0 master-replied")?;
    hook.wait_for("ACTIVE 2001:db8::100/64 eth0 master-silent")?;

    cases::fail_back(&mut s, fault)?;
    assert_eq!(
        s.lab.neighbor_mac("client", VIP6)?.as_deref(),
        Some(s.lab.mac("master")?),
        "the client points at the master again\n{}",
        s.logs()
    );
    Ok(())
}

#[test]
fn an_ipv6_witness_keeps_a_cut_off_backup_from_taking_over() -> Result<()> {
    cases::a_witness_keeps_a_cut_off_backup_from_taking_over(Family::V6, "v6wit")
}

#[test]
fn spoofed_icmpv6_replies_are_forged_and_other_hosts_are_ignored() -> Result<()> {
    cases::spoofed_replies_are_forged_and_other_hosts_are_ignored(Family::V6, "v6fg")
}

#[test]
fn forged_icmpv6_replies_do_not_keep_a_dead_master_alive() -> Result<()> {
    // A stream of replies in the master's name (wrong nonce) while its
    // cable is out: the backup takes over while the stream still runs.
    let lab = standard_lab_v6("v6fgdead")?;
    let _backup = start_backup_v6(&lab, &[])?;
    wait_state(&lab, "STANDBY")?;
    let flooding = AtomicBool::new(true);
    let (active_during_flood, st) = std::thread::scope(|scope| -> Result<(bool, Value)> {
        let forger = scope.spawn(|| {
            let sent = forge_replies(&lab, Family::V6, v6::MASTER, 0x0bad_cafe, 2000);
            flooding.store(false, Ordering::SeqCst);
            sent
        });
        std::thread::sleep(Duration::from_millis(200));
        lab.link_down("master")?;
        let st = wait_state(&lab, "ACTIVE");
        let during = flooding.load(Ordering::SeqCst);
        forger
            .join()
            .map_err(|_| anyhow::anyhow!("the forger panicked"))??;
        Ok((during, st?))
    })?;
    assert!(
        active_during_flood,
        "the backup took over only after the forged replies stopped: {st}"
    );
    let st = stats(&lab, "backup")?;
    assert!(
        st["master"]["forged"].as_u64() > Some(50),
        "the forged replies are counted as forged: {st}"
    );
    assert_eq!(st["takeovers"], 1, "{st}");
    cases::assert_detection_as_usual(&st);
    Ok(())
}

#[test]
fn one_forged_na_in_the_master_s_name_costs_ms_not_the_vip() -> Result<()> {
    // never_lose row 1 over IPv6: backup ACTIVE (master stopped, its host
    // up and answering); one unsolicited NA from a third host naming the
    // master's MAC for the VIP. The backup gives the VIP up, solicits it,
    // nobody answers: taken back.
    let lab = standard_lab_v6("v6forged")?;
    let hook = HookFile::new("v6forged");
    let master = spawn_master_of(&lab, Family::V6, &[])?;
    let backup = start_backup_v6(&lab, &["--on-change", &hook.command()])?;
    wait_state(&lab, "STANDBY")?;
    master.signal(Signal::Term)?;
    master.wait(WAIT)?;
    wait_state(&lab, "ACTIVE")?;
    let before = wait_master_answers(&lab)?;
    assert_eq!(before["releases"], 0, "{before}");
    let t = Instant::now();
    let na = frames::unsolicited_na(mac_of(&lab, "attacker")?, VIP6, mac_of(&lab, "master")?);
    frames::send(&lab, "attacker", "eth0", &[na], Duration::ZERO)?;
    let st = wait_stats(&lab, "the VIP is taken back", WAIT, |s| {
        s["taken_back"] == 1
    })
    .with_context(|| backup.output())?;
    assert_eq!(st["state"], "ACTIVE", "{st}");
    assert_eq!(st["releases"], 1, "{st}");
    assert!(lab.has_address("backup", VIP6)?);
    let released = scenario::mono_ns(&line(&backup, "released 2001:db8::100/64", t)?)?;
    let back = scenario::mono_ns(&line(&backup, "nobody answers for the VIP", t)?)?;
    let cost = Duration::from_nanos(back.saturating_sub(released));
    assert!(
        cost < Duration::from_millis(50),
        "the forged claim cost {cost:?}\n{}",
        backup.output()
    );
    hook.wait_for("STANDBY 2001:db8::100/64 eth0 master-claimed")?;
    hook.wait_for("ACTIVE 2001:db8::100/64 eth0 claimant-silent")?;
    Ok(())
}

#[test]
fn a_dad_probe_for_the_held_ipv6_vip_is_a_claim_from_its_sender() -> Result<()> {
    // Another host about to configure the VIP (DAD, RFC 4862 5.4): a
    // claim by the attacker's MAC, counted; not the master's, so the
    // backup keeps the VIP and reports the conflict.
    let lab = standard_lab_v6("v6dad")?;
    let backup = active_backup_of(&lab, Family::V6, &[])?;
    let before = stats(&lab, "backup")?;
    let claims = u(&before, "claims");
    let t = Instant::now();
    frames::send(
        &lab,
        "attacker",
        "eth0",
        &[frames::dad_ns(mac_of(&lab, "attacker")?, VIP6)],
        Duration::ZERO,
    )?;
    let st = wait_stats(&lab, "the DAD probe is counted as a claim", WAIT, |s| {
        s["claims"].as_u64() > Some(claims)
    })
    .with_context(|| backup.output())?;
    line(
        &backup,
        &format!(
            "is claimed by {} which is not the master",
            lab.mac("attacker")?
        ),
        t,
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let st2 = stats(&lab, "backup")?;
    assert_eq!(st2["state"], "ACTIVE", "{st} / {st2}");
    assert_eq!(st2["releases"], 0, "{st2}");
    assert!(lab.has_address("backup", VIP6)?);
    Ok(())
}

// ----- TCP over IPv6: the kick ---------------------------------------------

const TCP_PORT: u16 = 6380;
const CONNS: usize = 8;
const MASTER_ID: u8 = 1;
const BACKUP_ID: u8 = 2;
/// kick.rs's bound: far below the 200 ms minimum retransmission timeout.
const KICKED_BOUND: Duration = Duration::from_millis(120);
/// A request 1 ms after each answer.
const BUSY: Pace = Pace {
    period: Duration::from_millis(1),
    hold: false,
};

/// Every connection back, on `responder`; returns the slowest.
fn all_back(client: &TcpClient, t0: Instant, responder: u8, what: &str) -> Result<Duration> {
    let r = client.recoveries(t0, Duration::from_secs(5));
    let back: Vec<Recovery> = r.iter().flatten().copied().collect();
    if back.len() != CONNS {
        bail!(
            "{what}: only {} of {CONNS} connections came back: {r:?}",
            back.len()
        );
    }
    if let Some(b) = back.iter().find(|b| b.responder != responder) {
        bail!(
            "{what}: a connection came back on {} not {responder}: {r:?}",
            b.responder
        );
    }
    let slowest = back.iter().map(|b| b.back_after).max().unwrap_or_default();
    eprintln!(
        "{what}: {CONNS} connections back within {:.1} ms",
        slowest.as_secs_f64() * 1e3
    );
    Ok(slowest)
}

#[test]
fn cable_pull_kicks_every_ipv6_connection_over_and_failback_brings_them_home() -> Result<()> {
    let lab = standard_lab_v6("v6kick")?;
    let _servers = [
        TcpServer::start_v6(&lab, "master", TCP_PORT, MASTER_ID, WAIT)?,
        TcpServer::start_v6(&lab, "backup", TCP_PORT, BACKUP_ID, WAIT)?,
    ];
    let master = spawn_master_of(&lab, Family::V6, &[])?;
    let backup = start_backup_v6(&lab, &[])?;
    wait_state(&lab, "STANDBY")?;
    let logs = || {
        format!(
            "--- backup ---\n{}\n--- master ---\n{}",
            backup.output(),
            master.output()
        )
    };
    let client = TcpClient::start(
        &lab,
        "client",
        SocketAddr::new(VIP6.into(), TCP_PORT),
        CONNS,
        BUSY,
    )?;
    client.wait_all_answered_by(MASTER_ID, WAIT)?;
    wait_stats(&lab, "the backup knows the connections", WAIT, |s| {
        s["conn"]["known_from_peer"].as_u64() == Some(CONNS as u64)
    })
    .with_context(logs)?;

    let t0 = Instant::now();
    lab.link_down("master")?;
    let slowest = all_back(&client, t0, BACKUP_ID, "IPv6 cable pull, kick").with_context(logs)?;
    assert!(
        slowest < KICKED_BOUND,
        "kicked connections took {slowest:?}\n{}",
        logs()
    );
    let st = stats(&lab, "backup")?;
    assert_eq!(st["conn"]["last_kick"]["kicks"], CONNS as u64, "{st}");

    // Failback, after the backup's announcement burst (see kick.rs).
    std::thread::sleep(Duration::from_millis(100));
    let t1 = Instant::now();
    lab.link_up("master")?;
    line(&backup, "released", t1)?;
    line(&master, "kicked", t1)?;
    let slowest = all_back(&client, t1, MASTER_ID, "IPv6 failback, kick").with_context(logs)?;
    assert!(
        slowest < KICKED_BOUND + Duration::from_millis(200),
        "failback took {slowest:?}\n{}",
        logs()
    );
    Ok(())
}

#[test]
fn with_a_key_the_master_s_program_answers_ipv6_probes_itself() -> Result<()> {
    // The keyed mode over IPv6: only the master's XDP program can tag a
    // reply (it answers the probe itself, XDP_TX, ICMPv6 checksum
    // updated); the kernel's plain echo would be counted as forged. Every
    // probe answered and none forged is what shows the IPv6 rewrite works.
    let lab = standard_lab_v6("v6auth")?;
    let key = KeyFile::new(&lab)?;
    let _master = spawn_master_of(&lab, Family::V6, &["--auth-key-file", &key.arg()])?;
    let _backup = start_backup_v6(&lab, &["--auth-key-file", &key.arg()])?;
    wait_state(&lab, "STANDBY")?;
    // XDP counts a reply before the kernel checks its checksum: the
    // kernel's own counters say whether the rewritten replies are valid.
    let (replies0, bad0) = (
        snmp6(&lab, "backup", "Icmp6InEchoReplies")?,
        snmp6(&lab, "backup", "Icmp6InCsumErrors")?,
    );
    std::thread::sleep(Duration::from_millis(300));
    let (replies, bad) = (
        snmp6(&lab, "backup", "Icmp6InEchoReplies")?,
        snmp6(&lab, "backup", "Icmp6InCsumErrors")?,
    );
    assert!(
        replies - replies0 > 50,
        "{replies0} -> {replies} valid echo replies"
    );
    assert_eq!(bad, bad0, "ICMPv6 checksum errors");
    let st = stats(&lab, "backup")?;
    assert_eq!(st["master"]["forged"], 0, "every reply tagged: {st}");
    assert!(u(&st, "master.replies") > 50, "{st}");
    assert!(
        f(&st, "master.loss_pct") < 5.0,
        "the master's program answers every probe: {st}"
    );
    lab.link_down("master")?;
    let st = wait_state(&lab, "ACTIVE")?;
    cases::assert_detection_as_usual(&st);
    assert!(lab.has_address("backup", VIP6)?);
    Ok(())
}

/// The client's neighbour entry for the VIP: (MAC, whether it is marked as
/// a router's), if it has a usable one.
fn client_entry_for_vip(lab: &Lab) -> Result<Option<(String, bool)>> {
    let out = lab.run(
        "client",
        "ip",
        ["-j", "neigh", "show", "to", v6::VIP, "dev", "eth0"],
    )?;
    let entries: Value = serde_json::from_slice(&out.stdout)?;
    Ok(entries.as_array().into_iter().flatten().find_map(|e| {
        let mac = e["lladdr"].as_str()?.to_ascii_lowercase();
        // `ip -j` writes the flag as `"router": null`.
        Some((mac, e.get("router").is_some()))
    }))
}

#[test]
fn a_forwarding_backup_announces_the_vip_as_a_router() -> Result<()> {
    // A VIP that is a gateway lives on hosts that forward: the backup's NAs
    // carry the Router flag then, as the kernel's own do, or the clients
    // would stop using the VIP as a router (RFC 4861 §7.2.5).
    let lab = standard_lab_v6("v6router")?;
    let _master = spawn_master_of(&lab, Family::V6, &[])?;
    // The client resolves the VIP at the master, which does not forward.
    lab.run(
        "client",
        "ping",
        ["-6", "-n", "-c", "1", "-W", "2", v6::VIP],
    )?;
    let master = lab.mac("master")?.to_ascii_lowercase();
    assert_eq!(client_entry_for_vip(&lab)?, Some((master, false)));
    // Forwarding switched on after the backup started (boot order, a
    // hook): its NAs follow the setting of the moment.
    let _backup = start_backup_v6(&lab, &[])?;
    wait_state(&lab, "STANDBY")?;
    lab.run(
        "backup",
        "sh",
        ["-c", "echo 1 > /proc/sys/net/ipv6/conf/eth0/forwarding"],
    )?;
    lab.link_down("master")?;
    wait_state(&lab, "ACTIVE")?;
    let backup = lab.mac("backup")?.to_ascii_lowercase();
    let mut seen = None;
    wait_until("the client's entry names the backup", WAIT, || {
        seen = client_entry_for_vip(&lab)?;
        Ok(seen.as_ref().is_some_and(|(mac, _)| *mac == backup))
    })
    .with_context(|| format!("the client has {seen:?}"))?;
    assert_eq!(seen, Some((backup, true)), "the backup's NA says Router");
    Ok(())
}

#[test]
fn a_link_local_master_is_probed_on_the_interface() -> Result<()> {
    // `--master fe80::…` without a scope: the instance's interface is the
    // scope, for the probes and for the replies XDP compares.
    let lab = standard_lab_v6("v6ll")?;
    let _master = spawn_master_of(&lab, Family::V6, &[])?;
    let link_local = lab
        .addresses("master")?
        .into_iter()
        .find_map(|a| match a {
            IpAddr::V6(a) if a.is_unicast_link_local() => Some(a),
            _ => None,
        })
        .context("the master has no link-local address")?;
    let args = [
        "backup",
        "--iface",
        "eth0",
        "--master",
        &link_local.to_string(),
        "--vip",
        v6::VIP_CIDR,
    ];
    let backup = lab.spawn("backup", vipwatch_bin()?, args)?;
    backup
        .wait_for_line("XDP attached", WAIT)
        .with_context(|| backup.output())?;
    let st = wait_state(&lab, "STANDBY")?;
    assert_eq!(s(&st, "master.address"), link_local.to_string(), "{st}");
    lab.link_down("master")?;
    wait_state(&lab, "ACTIVE")?;
    assert!(lab.has_address("backup", VIP6)?);
    lab.link_up("master")?;
    // The master claims it back; the backup, hearing its link-local
    // address answer again, hands it over.
    wait_state(&lab, "STANDBY")?;
    assert!(!lab.has_address("backup", VIP6)?);
    Ok(())
}

#[test]
fn a_no_preempt_master_waits_while_another_host_answers_for_the_ipv6_vip() -> Result<()> {
    // --no-preempt over IPv6: the master asks with a Neighbour Solicitation;
    // the holder's kernel answers, so it waits; once nobody answers, it
    // claims.
    let lab = standard_lab_v6("v6nopre")?;
    lab.add_address("attacker", v6::VIP_CIDR)?;
    let master = lab.spawn(
        "master",
        vipwatch_bin()?,
        [
            "master",
            "--iface",
            "eth0",
            "--vip",
            v6::VIP_CIDR,
            "--no-preempt",
        ],
    )?;
    let waiting = master
        .wait_for_line("state -> WAITING", WAIT)
        .with_context(|| master.output())?;
    let holder = lab.mac("attacker")?;
    assert!(
        waiting.contains(&format!("{holder} answers for {}", v6::VIP)),
        "{waiting}"
    );
    assert!(!lab.has_address("master", VIP6)?);
    lab.del_address("attacker", v6::VIP_CIDR)?;
    master
        .wait_for_line("state -> HOLDING", WAIT)
        .with_context(|| master.output())?;
    assert!(lab.has_address("master", VIP6)?);
    Ok(())
}

#[test]
fn a_killed_active_ipv6_backup_restarts_adopts_the_vip_and_hands_it_back() -> Result<()> {
    cases::a_killed_active_backup_restarts_adopts_the_vip_and_hands_it_back(Family::V6, "v6restart")
}

#[test]
fn the_master_s_syncs_come_from_the_address_the_backup_probes() -> Result<()> {
    // The backup accepts connection syncs from the address it probes only.
    // A master whose kernel would choose another source (here: the probed
    // address deprecated, so RFC 6724 avoids it; in the field, a temporary
    // address) still sends them from the probed one.
    let lab = standard_lab_v6("v6syncsrc")?;
    lab.add_address("master", "2001:db8::11/64")?;
    let out = lab.run(
        "master",
        "ip",
        [
            "-6",
            "addr",
            "change",
            &format!("{}/64", v6::MASTER),
            "dev",
            "eth0",
            "preferred_lft",
            "0",
        ],
    )?;
    anyhow::ensure!(out.status.success(), "ip addr change: {out:?}");
    let _master = spawn_master_of(&lab, Family::V6, &[])?;
    let _backup = start_backup_v6(&lab, &[])?;
    wait_state(&lab, "STANDBY")?;
    let st = wait_stats(&lab, "two syncs accepted", WAIT, |s| {
        s["conn"]["syncs_accepted"].as_u64() >= Some(2)
    })?;
    assert_eq!(st["conn"]["syncs_forged"], 0, "{st}");
    Ok(())
}
