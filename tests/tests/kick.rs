//! End to end: what a TCP application sees (issue "What the application
//! sees"). A request/response service on master and backup, a client with
//! several connections and a request always in flight: after a cable pull,
//! a failback or a planned stop every connection is reset and back, far
//! below the clients' 200 ms retransmission timer; without the kick, it
//! waits for that timer. Forged sync datagrams are counted, never kicked.
//!
//! Bounds are generous (a loaded 2-core VM must not make them flake);
//! `cargo xtask bench` section 8 holds the numbers.

mod common;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use common::*;
use serde_json::Value;
use vipwatch_tests::{
    Lab, Proc, Signal,
    tcp::{Pace, Recovery, TcpClient, TcpServer},
    vipwatch_bin, wait_until,
};

const PORT: u16 = 6380;
const CONNS: usize = 8;
const MASTER_ID: u8 = 1;
const BACKUP_ID: u8 = 2;
/// Far below the 200 ms minimum retransmission timeout.
const KICKED_BOUND: Duration = Duration::from_millis(120);
const WAIT: Duration = Duration::from_secs(10);

struct TcpLab {
    lab: Lab,
    master: Option<Proc>,
    backup: Proc,
    client: TcpClient,
    _servers: [TcpServer; 2],
    extra: Vec<String>,
}

fn vip() -> Ipv4Addr {
    vipwatch_tests::scenario::VIP.parse().expect("constant")
}

/// A request 1 ms after each answer.
const BUSY: Pace = Pace {
    period: Duration::from_millis(1),
    hold: false,
};
/// Long polls: the server answers each request after [`POLL`].
const LONG_POLL: Pace = Pace {
    period: Duration::ZERO,
    hold: true,
};
const POLL: Duration = Duration::from_secs(10);

impl TcpLab {
    fn start(tag: &str, extra: &[&str]) -> Result<Self> {
        Self::start_with(tag, extra, BUSY)
    }

    fn start_with(tag: &str, extra: &[&str], pace: Pace) -> Result<Self> {
        let lab = standard_lab(tag)?;
        let servers = [
            TcpServer::start(&lab, "master", PORT, MASTER_ID, POLL)?,
            TcpServer::start(&lab, "backup", PORT, BACKUP_ID, POLL)?,
        ];
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let master = spawn_master(&lab, &extra)?;
        let backup = start_backup(&lab, &extra.iter().map(String::as_str).collect::<Vec<_>>())?;
        wait_stats(&lab, "the backup stands by", WAIT, |s| {
            s["state"] == "STANDBY"
        })?;
        let client = TcpClient::start(&lab, "client", SocketAddrV4::new(vip(), PORT), CONNS, pace)?;
        client.wait_all_answered_by(MASTER_ID, WAIT)?;
        Ok(Self {
            lab,
            master: Some(master),
            backup,
            client,
            _servers: servers,
            extra,
        })
    }

    /// Waits until the backup knows every connection from the master's
    /// syncs (a connection younger than one sync interval is not kicked).
    fn wait_synced(&self) -> Result<Value> {
        wait_stats(&self.lab, "the backup knows the connections", WAIT, |s| {
            s["conn"]["known_from_peer"].as_u64() == Some(CONNS as u64)
        })
    }

    fn logs(&self) -> String {
        format!(
            "--- backup ---\n{}\n--- master ---\n{}",
            self.backup.output(),
            self.master.as_ref().map(Proc::output).unwrap_or_default()
        )
    }
}

fn spawn_master(lab: &Lab, extra: &[String]) -> Result<Proc> {
    let mut args: Vec<String> = ["master", "--iface", "eth0", "--vip", VIP_CIDR]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().cloned());
    let p = lab.spawn("master", vipwatch_bin()?, &args)?;
    p.wait_for_line("state -> HOLDING", WAIT)
        .with_context(|| format!("vipwatch master did not claim the VIP:\n{}", p.output()))?;
    Ok(p)
}

/// Every connection back, on `responder`; returns the slowest.
fn all_back(t: &TcpLab, t0: Instant, responder: u8, what: &str) -> Result<Vec<Duration>> {
    let r = t.client.recoveries(t0, Duration::from_secs(5));
    let back: Vec<Recovery> = r.iter().flatten().copied().collect();
    if back.len() != CONNS {
        bail!(
            "{what}: only {} of {CONNS} connections came back: {r:?}\n{}",
            back.len(),
            t.logs()
        );
    }
    for b in &back {
        if b.responder != responder {
            bail!(
                "{what}: a connection came back on {} not {responder}: {r:?}",
                b.responder
            );
        }
    }
    let mut times: Vec<Duration> = back.iter().map(|b| b.back_after).collect();
    times.sort_unstable();
    eprintln!(
        "{what}: {CONNS} connections back after {:.1} ms (fastest) to {:.1} ms (slowest)",
        times[0].as_secs_f64() * 1e3,
        times[CONNS - 1].as_secs_f64() * 1e3
    );
    Ok(times)
}

#[test]
fn cable_pull_kicks_every_connection_over_at_once_and_failback_brings_them_home() -> Result<()> {
    let t = TcpLab::start("kcable", &[])?;
    t.wait_synced()?;
    let t0 = Instant::now();
    t.lab.link_down("master")?;
    let times = all_back(&t, t0, BACKUP_ID, "cable pull, kick")?;
    assert!(
        times[CONNS - 1] < KICKED_BOUND,
        "kicked connections took {times:?}\n{}",
        t.logs()
    );
    let st = stats(&t.lab, "backup")?;
    let kick = &st["conn"]["last_kick"];
    assert_eq!(kick["kicks"], CONNS as u64, "{st}");
    assert!(
        kick["duration_ms"].as_f64().unwrap_or(f64::MAX) < 10.0,
        "{st}"
    );

    // Failback: the backup hands the VIP over, says so, and the master
    // kicks what the backup had. Not within the backup's own GARP burst
    // (3 pairs over 20 ms after its takeover): a master back that soon
    // has its claim answered by the burst's last announcement, and the
    // clients it kicked reconnect to the backup (seen once in CI).
    std::thread::sleep(Duration::from_millis(100));
    let t1 = Instant::now();
    t.lab.link_up("master")?;
    t.backup
        .wait_for_line_after("released", t1, WAIT)
        .with_context(|| t.logs())?;
    let master = t.master.as_ref().context("master")?;
    master
        .wait_for_line_after("kicked", t1, WAIT)
        .with_context(|| t.logs())?;
    let times = all_back(&t, t1, MASTER_ID, "failback, kick")?;
    // From the repair: the backup needs rise replies (~10 ms) and the
    // master's answer to its solicitation before it hands over.
    assert!(
        times[CONNS - 1] < KICKED_BOUND + Duration::from_millis(200),
        "failback took {times:?}\n{}",
        t.logs()
    );
    Ok(())
}

#[test]
fn without_the_kick_connections_wait_for_their_retransmission_timer() -> Result<()> {
    let t = TcpLab::start("knokick", &["--conn-kick", "off"])?;
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    t.lab.link_down("master")?;
    let times = all_back(&t, t0, BACKUP_ID, "cable pull, no kick")?;
    // Linux's minimum RTO is 200 ms: nothing reaches the backup before.
    assert!(
        times[0] >= Duration::from_millis(150),
        "a connection came back in {:?} without a kick?\n{}",
        times[0],
        t.logs()
    );
    let st = stats(&t.lab, "backup")?;
    assert_eq!(st["conn"]["kick"], "off");
    assert_eq!(st["conn"]["syncs_accepted"], 0, "nothing is synced: {st}");
    Ok(())
}

#[test]
fn a_planned_stop_hands_the_connections_over_too() -> Result<()> {
    let mut t = TcpLab::start("kstop", &[])?;
    t.wait_synced()?;
    let master = t.master.take().context("master")?;
    let t0 = Instant::now();
    master.signal(Signal::Term)?;
    let times = all_back(&t, t0, BACKUP_ID, "planned stop, kick")?;
    assert!(times[CONNS - 1] < KICKED_BOUND, "{times:?}\n{}", t.logs());
    master.wait(WAIT)?;
    // And back when the master is started again (it claims, then kicks).
    let t1 = Instant::now();
    t.master = Some(spawn_master(&t.lab, &t.extra)?);
    let times = all_back(&t, t1, MASTER_ID, "restarted master, kick")?;
    // The restarted master probes 200 ms for the VIP's owner first.
    assert!(
        times[CONNS - 1] < KICKED_BOUND + Duration::from_millis(300),
        "{times:?}\n{}",
        t.logs()
    );
    Ok(())
}

#[test]
fn kick_after_hook_waits_for_the_promotion_hook_but_never_delays_the_vip() -> Result<()> {
    // A "promotion" that takes 100 ms, on the takeover only.
    const PROMOTION: Duration = Duration::from_millis(100);
    let hook = r#"promote() { [ "$1" = ACTIVE ] && sleep 0.1; true; }; promote"#;
    let t = TcpLab::start("khook", &["--on-change", hook, "--kick-after-hook"])?;
    t.wait_synced()?;
    let t0 = Instant::now();
    t.lab.link_down("master")?;
    let times = all_back(&t, t0, BACKUP_ID, "cable pull, kick after the hook")?;
    let st = stats(&t.lab, "backup")?;
    let ns = |v: &Value| v.as_u64().unwrap_or_default();
    let decision = ns(&st["last_takeover"]["decision_ns"]);
    let garp = ns(&st["last_takeover"]["first_garp_ns"]);
    let kick = ns(&st["conn"]["last_kick"]["at_ns"]);
    assert!(
        garp.saturating_sub(decision) < 5_000_000,
        "the VIP and the GARP wait for nothing: {st}"
    );
    let waited = Duration::from_nanos(kick.saturating_sub(decision));
    assert!(
        waited >= PROMOTION && waited < PROMOTION + Duration::from_millis(150),
        "the kick waits for the hook to exit, not for the timeout: {waited:?}\n{}",
        t.logs()
    );
    assert_eq!(st["conn"]["last_kick"]["kicks"], CONNS as u64, "{st}");
    // Nobody came back before the promotion (the clients' timers fire at
    // 200 ms at the earliest), and all soon after it.
    assert!(times[0] >= PROMOTION, "{times:?}");
    assert!(
        times[CONNS - 1] < PROMOTION + KICKED_BOUND,
        "{times:?}\n{}",
        t.logs()
    );
    Ok(())
}

#[test]
fn the_rst_kick_resets_long_polls_at_their_exact_number() -> Result<()> {
    // Long polls: each connection waits for an answer, with nothing in
    // flight from the client; without a kick it would never notice.
    let t = TcpLab::start_with("krst", &["--conn-kick", "rst"], LONG_POLL)?;
    t.wait_synced()?;
    // Each connection's ack changed at its first answer, too soon after
    // its announcement to be announced again: the next whole-table sync
    // (every second) brings it. No answer comes after that for 10 s.
    std::thread::sleep(Duration::from_millis(1200));
    let t0 = Instant::now();
    t.lab.link_down("master")?;
    let times = all_back(&t, t0, BACKUP_ID, "cable pull, rst kick, long polls")?;
    assert!(times[CONNS - 1] < KICKED_BOUND, "{times:?}\n{}", t.logs());
    let st = stats(&t.lab, "backup")?;
    assert_eq!(st["conn"]["kick"], "rst", "{st}");
    assert_eq!(st["conn"]["last_kick"]["kicks"], CONNS as u64, "{st}");
    Ok(())
}

/// A sync datagram as vipwatch sends them (see `conns.rs`), with one
/// connection added.
fn forged_sync(nonce: u64, client: Ipv4Addr, client_port: u16) -> Vec<u8> {
    let mut d = b"VWS1".to_vec();
    d.extend_from_slice(&[1, 0, 0, 0]); // delta
    d.extend_from_slice(&nonce.to_be_bytes());
    d.extend_from_slice(&vipwatch_common::addr_v4(vip().octets()));
    d.extend_from_slice(&7u32.to_be_bytes()); // epoch
    d.extend_from_slice(&[0; 8]);
    d.extend_from_slice(&1u16.to_be_bytes()); // one entry
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(&[1, 0]); // add
    d.extend_from_slice(&[2, 0, 0, 0, 0, 0x42]); // the next hop's MAC
    d.extend_from_slice(&vipwatch_common::addr_v4(client.octets()));
    d.extend_from_slice(&client_port.to_be_bytes());
    d.extend_from_slice(&PORT.to_be_bytes());
    d.extend_from_slice(&[0; 4]);
    d
}

/// Sends `payload` in a UDP datagram "from" `src` (raw IP, so the source
/// can be spoofed) to the backup's sync port, from `host`.
fn send_spoofed_udp(lab: &Lab, host: &str, src: Ipv4Addr, payload: Vec<u8>) -> Result<()> {
    let dst: Ipv4Addr = BACKUP.parse()?;
    lab.in_netns(host, move || -> Result<()> {
        let mut pkt = vec![0x45, 0];
        pkt.extend_from_slice(&((28 + payload.len()) as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0, 0x40, 0, 64, 17, 0, 0]);
        pkt.extend_from_slice(&src.octets());
        pkt.extend_from_slice(&dst.octets());
        let sum = vipwatch::prober::internet_checksum(&pkt);
        pkt[10..12].copy_from_slice(&sum.to_be_bytes());
        pkt.extend_from_slice(&40000u16.to_be_bytes());
        pkt.extend_from_slice(&7410u16.to_be_bytes());
        pkt.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        pkt.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4)
        pkt.extend_from_slice(&payload);
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
        // SAFETY: pkt and to are valid for their lengths.
        let rc = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        if rc < 0 {
            bail!("sendto: {}", std::io::Error::last_os_error());
        }
        Ok(())
    })?
}

/// Counts the TCP segments `host` receives to `port` for `window`.
fn count_tcp_to(lab: &Lab, host: &str, port: u16, window: Duration) -> Result<usize> {
    lab.in_netns(host, move || -> Result<usize> {
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 20_000,
        };
        // SAFETY: tv is valid for its length.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        let end = Instant::now() + window;
        let mut n = 0;
        let mut buf = [0u8; 2048];
        while Instant::now() < end {
            // SAFETY: buf is valid for its length.
            let got = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if got >= 40 {
                let ihl = usize::from(buf[0] & 0x0f) * 4;
                if ihl + 4 <= got as usize
                    && u16::from_be_bytes([buf[ihl + 2], buf[ihl + 3]]) == port
                {
                    n += 1;
                }
            }
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        Ok(n)
    })?
}

#[test]
fn forged_sync_datagrams_are_counted_and_never_kicked() -> Result<()> {
    let t = TcpLab::start("kforge", &[])?;
    t.wait_synced()?;
    let master: Ipv4Addr = MASTER.parse()?;
    let attacker: Ipv4Addr = ATTACKER.parse()?;
    // The attacker's own address, and the master's address with a nonce
    // it guessed: both name a connection of the attacker's.
    send_spoofed_udp(&t.lab, "attacker", attacker, forged_sync(1, attacker, 4444))?;
    send_spoofed_udp(&t.lab, "attacker", master, forged_sync(2, attacker, 4444))?;
    let st = wait_stats(&t.lab, "two forged syncs counted", WAIT, |s| {
        s["conn"]["syncs_forged"].as_u64() >= Some(2)
    })?;
    assert_eq!(st["conn"]["known_from_peer"], CONNS as u64, "{st}");
    // Take over, and watch the attacker for a kick to its port.
    let watch = std::thread::scope(|scope| -> Result<usize> {
        let sniffer =
            scope.spawn(|| count_tcp_to(&t.lab, "attacker", 4444, Duration::from_millis(600)));
        std::thread::sleep(Duration::from_millis(100));
        t.lab.link_down("master")?;
        wait_stats(&t.lab, "takeover", WAIT, |s| s["state"] == "ACTIVE")?;
        match sniffer.join() {
            Ok(r) => r,
            Err(_) => bail!("the sniffer panicked"),
        }
    })?;
    assert_eq!(watch, 0, "a forged connection was kicked");
    let st = stats(&t.lab, "backup")?;
    assert_eq!(st["conn"]["last_kick"]["kicks"], CONNS as u64, "{st}");
    Ok(())
}

#[test]
fn a_connection_table_is_kept_only_while_holding() -> Result<()> {
    let t = TcpLab::start("ktable", &[])?;
    t.wait_synced()?;
    // The backup holds nothing: its own table is empty, it sends nothing.
    let st = stats(&t.lab, "backup")?;
    assert_eq!(st["conn"]["table"], 0, "{st}");
    assert_eq!(st["conn"]["syncs_sent"], 0, "{st}");
    // Once it holds the VIP, it records the reconnected clients and syncs
    // them to the master (for the failback).
    t.lab.link_down("master")?;
    all_back(
        &t,
        Instant::now() - Duration::from_millis(1),
        BACKUP_ID,
        "takeover",
    )?;
    wait_until("the backup's table fills", WAIT, || {
        Ok(stats(&t.lab, "backup")?["conn"]["table"].as_u64() == Some(CONNS as u64))
    })
    .with_context(|| {
        format!(
            "{}\n{}",
            stats(&t.lab, "backup").unwrap_or_default(),
            t.logs()
        )
    })?;
    Ok(())
}
