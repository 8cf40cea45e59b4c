//! End to end: the backup's XDP program counts the master's heartbeat
//! replies, and `vipwatch stats` shows what the kernel counted.

mod common;

use std::time::Duration;

use anyhow::Result;
use aya::maps::{Map, MapData, PerCpuArray};
use common::*;
use vipwatch_common::{PeerCounters, RTT_BUCKETS};

const WAIT: Duration = Duration::from_secs(15);

#[test]
fn every_probe_is_answered_and_counted_with_its_rtt() -> Result<()> {
    let lab = standard_lab("hb")?;
    let _backup = start_backup(&lab, &["--count", "300"])?;
    let st = wait_stats(&lab, "300 probes are sent and answered", WAIT, |s| {
        u(s, "master.probes_sent") == 300 && u(s, "master.replies") == 300
    })?;
    // Nothing else arrives later: the lab drops nothing, so every probe
    // got exactly one reply.
    std::thread::sleep(Duration::from_millis(100));
    let st2 = stats(&lab, "backup")?;
    assert_eq!(u(&st2, "master.replies"), 300, "{st2}");
    assert_eq!(u(&st, "master.forged"), 0);
    assert_eq!(f(&st, "master.loss_pct"), 0.0);
    assert_eq!(s(&st, "state"), "STANDBY");
    // veth supports native XDP: no silent fallback to generic mode.
    assert_eq!(s(&st, "xdp_mode"), "driver");
    assert_eq!(st["xdp_fallback"], false);
    let hist_total: u64 = st["master"]["rtt_histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| u(b, "count"))
        .sum();
    assert_eq!(
        hist_total, 300,
        "every reply lands in the RTT histogram: {st}"
    );
    assert!(u(&st, "master.rtt_p50_us") <= u(&st, "master.rtt_p99_us"));
    assert!(u(&st, "master.rtt_p99_us") <= u(&st, "master.rtt_max_us"));
    // A LAN of veths answers in well under 100 ms even on a loaded VM.
    assert!(u(&st, "master.rtt_p50_us") < 100_000, "{st}");
    Ok(())
}

#[test]
fn stats_match_what_the_kernel_counted() -> Result<()> {
    let lab = standard_lab("hbmap")?;
    let backup = start_backup(&lab, &["--count", "200"])?;
    wait_stats(&lab, "probing finished", WAIT, |s| {
        u(s, "master.probes_sent") == 200 && u(s, "master.replies") == 200
    })?;
    let json = stats(&lab, "backup")?;
    // Read the daemon's maps directly, as a third process would: nothing
    // is pinned, so find them through its descriptors (fdinfo map_id).
    let peers = daemon_map(backup.pid(), "VW_PEERS")?;
    let peers: PerCpuArray<_, PeerCounters> = peers.try_into()?;
    // Slot 0, peer 0: the master of the daemon's first instance.
    let per_cpu = peers.get(&0, 0)?;
    let replies: u64 = per_cpu.iter().map(|c| c.replies).sum();
    let forged: u64 = per_cpu.iter().map(|c| c.forged).sum();
    let mut hist = [0u64; RTT_BUCKETS];
    for c in per_cpu.iter() {
        for (sum, n) in hist.iter_mut().zip(c.rtt_hist) {
            *sum += n;
        }
    }
    assert_eq!(u(&json, "master.replies"), replies);
    assert_eq!(u(&json, "master.forged"), forged);
    assert_eq!(u(&json, "pid"), u64::from(backup.pid()));
    let buckets: Vec<(u64, u64)> = json["master"]["rtt_histogram"]
        .as_array()
        .expect("histogram")
        .iter()
        .map(|b| (u(b, "lt_us"), u(b, "count")))
        .collect();
    let expected: Vec<(u64, u64)> = (0..RTT_BUCKETS)
        .filter(|k| hist[*k] > 0)
        .map(|k| (1u64 << k, hist[k]))
        .collect();
    assert_eq!(buckets, expected);
    Ok(())
}

/// The map called `name` among the BPF maps process `pid` holds.
fn daemon_map(pid: u32, name: &str) -> Result<Map> {
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let info = std::fs::read_to_string(entry?.path()).unwrap_or_default();
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let data = MapData::from_id(id)?;
        if data.info()?.name_as_str() == Some(name) {
            return Ok(Map::from_map_data(data)?);
        }
    }
    anyhow::bail!("process {pid} holds no map called {name}")
}

#[test]
fn spoofed_replies_are_forged_and_other_hosts_are_ignored() -> Result<()> {
    cases::spoofed_replies_are_forged_and_other_hosts_are_ignored(Family::V4, "hbfg")
}

#[test]
fn master_link_down_stops_replies_while_probes_keep_counting() -> Result<()> {
    let lab = standard_lab("hbld")?;
    let _backup = start_backup(&lab, &[])?;
    wait_stats(&lab, "the master answers", WAIT, |s| {
        u(s, "master.replies") > 50
    })?;
    lab.link_down("master")?;
    std::thread::sleep(Duration::from_millis(300));
    let before = stats(&lab, "backup")?;
    std::thread::sleep(Duration::from_millis(300));
    let after = stats(&lab, "backup")?;
    assert_eq!(
        u(&after, "master.replies"),
        u(&before, "master.replies"),
        "no reply may arrive from a master whose link is down"
    );
    let sent = u(&after, "master.probes_sent") - u(&before, "master.probes_sent");
    // 300 ms at 2 ms: ~150 probes; be generous about scheduling.
    assert!(
        sent >= 50,
        "probes must keep going out: only {sent} in 300 ms"
    );
    assert!(f(&after, "master.last_reply_age_ms") >= 500.0, "{after}");
    Ok(())
}

#[test]
fn rt_priority_puts_the_probe_loop_under_sched_fifo() -> Result<()> {
    let lab = standard_lab("hbrt")?;
    let backup = start_backup(&lab, &["--rt-priority", "10", "--count", "50"])?;
    wait_stats(&lab, "probing finished", WAIT, |s| {
        u(s, "master.replies") == 50
    })?;
    // The instance's own thread (`vw-<name>`) runs the loop. Field 41 of
    // /proc/PID/task/TID/stat is the scheduling policy (1 = SCHED_FIFO),
    // field 40 the real-time priority; index 0 below is field 3 (state).
    let mut loop_thread = None;
    for task in std::fs::read_dir(format!("/proc/{}/task", backup.pid()))? {
        let task = task?.path();
        if std::fs::read_to_string(task.join("comm"))?.starts_with("vw-") {
            loop_thread = Some(task);
        }
    }
    let task = loop_thread.expect("the instance's thread");
    let stat = std::fs::read_to_string(task.join("stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .expect("stat")
        .1
        .split_whitespace()
        .collect();
    assert_eq!(fields[37], "10", "rt priority: {stat}");
    assert_eq!(fields[38], "1", "policy SCHED_FIFO: {stat}");
    Ok(())
}
