//! End to end for the lab harness itself (no vipwatch involved): traffic
//! flows through the bridge, each fault stops it and undoing the fault
//! brings it back, processes run in the right namespace without a mount
//! namespace of their own, and nothing is left behind — also after a panic.

use std::{
    net::SocketAddrV4,
    os::unix::fs::MetadataExt,
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    process::Command,
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use vipwatch_tests::{Client, EchoServer, Lab, output_with_timeout, require_root};

const PORT: u16 = 7007;
/// 1 kHz: plenty of samples per phase, light on a 2-core machine.
const INTERVAL: Duration = Duration::from_millis(1);
/// How long an answer may take to come back after a fault is undone.
const RECOVER: Duration = Duration::from_secs(3);

fn three_hosts(tag: &str) -> Result<Lab> {
    require_root()?;
    Lab::builder(tag)
        .host("server", "192.0.2.1/24")
        .host("client", "192.0.2.10/24")
        .host("other", "192.0.2.20/24")
        .gateway("192.0.2.254/24")
        .build()
}

/// The names `ip netns list` prints.
fn netns_list() -> Result<Vec<String>> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "list"]);
    let out = output_with_timeout(cmd, Duration::from_secs(10))?;
    ensure!(out.status.success(), "ip netns list failed: {out:?}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

fn assert_namespaces_gone(names: &[String]) -> Result<()> {
    let listed = netns_list()?;
    for name in names {
        assert!(
            !listed.contains(name),
            "namespace {name} survived its lab: {listed:?}"
        );
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "/run/netns/{name} survived"
        );
    }
    Ok(())
}

/// A process that has been reaped no longer has a /proc entry.
fn assert_process_gone(pid: u32) {
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived its lab"
    );
}

/// After a fault: once in-flight answers have drained, nobody answers.
fn assert_silent(client: &Client, what: &str) {
    thread::sleep(Duration::from_millis(150));
    let from = Instant::now();
    thread::sleep(Duration::from_millis(300));
    let record = client.snapshot();
    let sent = record.sent_between(from, record.stopped);
    assert!(
        sent > 100,
        "{what}: the client kept sending ({sent} sent): {record}"
    );
    let answered = record.count_between(from, record.stopped);
    assert_eq!(answered, 0, "{what}: answers still arrive: {record}");
}

/// After undoing a fault: `who` answers again.
fn assert_answers(client: &Client, who: &str, what: &str) -> Result<()> {
    client
        .wait_for_answer_from(who, Instant::now(), RECOVER)
        .with_context(|| format!("after {what}"))?;
    Ok(())
}

#[test]
fn every_fault_stops_answers_and_undoing_it_restores_them() -> Result<()> {
    let lab = three_hosts("faults")?;
    let server_ip = lab.ip("server")?;
    let _server = EchoServer::start(&lab, "server", PORT, "server")?;
    let _other = EchoServer::start(&lab, "other", PORT, "other")?;
    let client = Client::builder(SocketAddrV4::new(server_ip, PORT), INTERVAL)
        .max_duration(Duration::from_secs(30))
        .start(&lab, "client")?;
    // A second client, in the bridge namespace, to show a blackhole is
    // per host: the bridge still reaches "other" meanwhile.
    let witness = Client::builder(SocketAddrV4::new(lab.ip("other")?, PORT), INTERVAL)
        .max_duration(Duration::from_secs(30))
        .start(&lab, Lab::BRIDGE)?;
    let start = Instant::now();

    assert_answers(&client, "server", "start")?;
    assert_answers(&witness, "other", "start")?;
    assert!(lab.has_address("server", server_ip)?);
    assert_eq!(
        lab.neighbor_mac("client", server_ip)?.as_deref(),
        Some(lab.mac("server")?),
        "the client learned the server's MAC"
    );

    lab.link_down("server")?;
    assert_silent(&client, "link_down");
    lab.link_up("server")?;
    assert_answers(&client, "server", "link_up")?;

    lab.loss(100)?;
    assert_silent(&client, "loss(100)");
    lab.clear_loss()?;
    assert_answers(&client, "server", "clear_loss")?;

    lab.cut("server")?;
    assert_silent(&client, "cut");
    lab.uncut("server")?;
    assert_answers(&client, "server", "uncut")?;

    lab.blackhole("server")?;
    let blackholed = Instant::now();
    assert_silent(&client, "blackhole");
    let during = witness.snapshot();
    assert!(
        during.count_from("other", blackholed, during.stopped) > 100,
        "a blackhole drops only the blackholed host's frames: {during}"
    );
    lab.unblackhole("server")?;
    assert_answers(&client, "server", "unblackhole")?;

    // Partial loss: a request and its answer each cross the bridge, so
    // about (1 - 0.5)² = 25 % of requests come back.
    lab.loss(50)?;
    thread::sleep(Duration::from_millis(100));
    let from = Instant::now();
    thread::sleep(Duration::from_millis(500));
    let record = client.snapshot();
    lab.clear_loss()?;
    let sent = record.sent_between(from, record.stopped) as f64;
    let answered = record.count_between(from, record.stopped) as f64;
    let ratio = answered / sent;
    assert!(
        (0.10..=0.45).contains(&ratio),
        "loss(50): {answered} of {sent} answered"
    );

    let record = client.stop();
    let counts = record.counts();
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["server"], "{record}");
    assert!(record.longest_gap(start, record.stopped).duration() >= Duration::from_millis(300));
    drop(witness);

    let names = lab.netns_names();
    drop(lab);
    assert_namespaces_gone(&names)
}

#[test]
fn processes_run_in_their_namespace_and_die_with_the_lab() -> Result<()> {
    require_root()?;
    // Host names that are also `ip` keywords must work as well.
    let lab = Lab::builder("procs")
        .host("master", "192.0.2.1/24")
        .host("dev", "192.0.2.2/24")
        .host("client", "192.0.2.10/24")
        .build()?;
    let names = lab.netns_names();
    let listed = netns_list()?;
    for name in &names {
        assert!(listed.contains(name), "{name} missing from {listed:?}");
    }
    // Faults on hosts named like keywords.
    lab.cut("master")?;
    lab.uncut("master")?;
    lab.link_down("dev")?;
    lab.link_up("dev")?;

    let p = lab.spawn(
        "client",
        "sh",
        ["-c", "ip -o addr show dev eth0; echo ready; exec sleep 30"],
    )?;
    let line = p.wait_for_line("192.0.2.", Duration::from_secs(5))?;
    assert!(line.contains("192.0.2.10/24"), "{line}");
    p.wait_for_line("ready", Duration::from_secs(5))?;
    let pid = p.pid();

    // Same mount namespace as ours (what `vipwatch` sees is what we see), and
    // the network namespace the lab named.
    let proc_ns = |kind: &str| std::fs::metadata(format!("/proc/{pid}/ns/{kind}")).map(|m| m.ino());
    assert_eq!(
        proc_ns("mnt")?,
        std::fs::metadata("/proc/self/ns/mnt")?.ino()
    );
    assert_eq!(
        proc_ns("net")?,
        std::fs::metadata(lab.netns_path("client")?)?.ino()
    );

    // One-shot commands see only the lab's interfaces.
    let out = lab.run("dev", "ip", ["-o", "link", "show"])?;
    let links = String::from_utf8_lossy(&out.stdout);
    assert_eq!(links.lines().count(), 2, "lo and eth0 only: {links}");

    // The lab stops what it spawned even while the Proc is still alive.
    drop(lab);
    assert!(!p.is_running(), "the lab stopped its process");
    drop(p);
    assert_process_gone(pid);
    assert_namespaces_gone(&names)
}

#[test]
fn a_panicking_test_still_cleans_up() -> Result<()> {
    require_root()?;
    let seen: Mutex<(Vec<String>, Option<u32>)> = Mutex::new((Vec::new(), None));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let lab = three_hosts("panic").expect("lab builds");
        let p = lab.spawn("server", "sleep", ["30"]).expect("sleep starts");
        lab.blackhole("other").expect("blackhole");
        lab.loss(10).expect("loss");
        *seen.lock().expect("not poisoned") = (lab.netns_names(), Some(p.pid()));
        panic!("deliberate panic with a lab, a process and faults in place");
    }));
    assert!(outcome.is_err(), "the closure panicked");
    let (names, pid) = seen.into_inner().expect("not poisoned");
    assert_eq!(names.len(), 4, "bridge and three hosts: {names:?}");
    assert_namespaces_gone(&names)?;
    assert_process_gone(pid.expect("pid recorded"));
    Ok(())
}
