//! `vipwatch stats`: the counters of a running backup, read from its pinned
//! maps by a separate process.
//!
//! The JSON form is a stable interface (documented in the README): fields
//! are only ever added.

use std::{fs, net::Ipv4Addr, path::Path, time::Duration};

use anyhow::{Context as _, bail};
use serde::Serialize;
use vipwatch_common::{CONFIG_WITNESS, DaemonStatus, RTT_BUCKETS, Timeline, rtt_bucket_upper_us};

use crate::{
    backup::{mac_str, state_name_from_code},
    cli::StatsArgs,
    clock,
    ebpf::{self, Attached, PeerSnapshot, WatchMaps},
};

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let StatsArgs { iface, json, watch } = args;
    // Without the right to read BPF maps, every pin looks absent; say the
    // real reason instead of "no daemon".
    crate::sys::require_bpf("vipwatch stats")?;
    let iface = match iface {
        Some(i) => i,
        None => only_running_iface()?,
    };
    loop {
        let report = collect(&iface)?;
        if json {
            println!(
                "{}",
                serde_json::to_string(&report).context("encoding JSON")?
            );
        } else {
            if watch {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", render(&report));
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The interface of the one daemon running, when `--iface` is omitted.
fn only_running_iface() -> anyhow::Result<String> {
    let root = Path::new(ebpf::PIN_ROOT);
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(root) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(iface) = ebpf::iface_of_pin_dir(&name)
                && ebpf::pinned_daemon_pid(&iface).is_some_and(ebpf::process_alive)
            {
                found.push(iface);
            }
        }
    }
    match found.as_slice() {
        [] => bail!(
            "no vipwatch backup is running here (nothing pinned under {}); start one with `vipwatch backup`",
            root.display()
        ),
        [one] => Ok(one.clone()),
        many => bail!(
            "several vipwatch backups run here ({}); pick one with --iface",
            many.join(", ")
        ),
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub iface: String,
    pub pid: u32,
    pub state: &'static str,
    pub xdp_mode: &'static str,
    pub xdp_fallback: bool,
    pub vip: Ipv4Addr,
    pub interval_ms: f64,
    pub dead_after_ms: f64,
    pub master: PeerReport,
    pub witness: Option<PeerReport>,
    /// ARP packets claiming the VIP from another MAC.
    pub claims: u64,
    pub takeovers: u64,
    pub releases: u64,
    /// Deadlines excused because our own probes had not gone out.
    pub deferred: u64,
    /// Longest gap between two probes we sent (since the master first
    /// answered), ms: our own starvation, next to the master's `max_gap_ms`.
    pub max_probe_gap_ms: f64,
    pub last_takeover: Option<TimelineReport>,
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    pub address: Ipv4Addr,
    pub probes_sent: u64,
    pub replies: u64,
    pub loss_pct: f64,
    /// Age of the last valid reply (kernel timestamp vs CLOCK_MONOTONIC).
    pub last_reply_age_ms: Option<f64>,
    pub last_reply_mac: Option<String>,
    /// RTT percentiles as the upper bound of their log2 histogram bucket.
    pub rtt_p50_us: Option<u64>,
    pub rtt_p99_us: Option<u64>,
    pub rtt_max_us: Option<u64>,
    /// Non-empty histogram buckets: RTT below `lt_us`, and how many.
    pub rtt_histogram: Vec<Bucket>,
    pub forged: u64,
    /// Longest silence between two consecutive valid replies.
    pub max_gap_ms: f64,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub lt_us: u64,
    pub count: u64,
}

#[derive(Debug, Serialize)]
pub struct TimelineReport {
    pub last_reply_ns: u64,
    pub deadline_ns: u64,
    pub decision_ns: u64,
    pub vip_bound_ns: u64,
    pub first_garp_ns: u64,
    pub silence_to_decision_ms: f64,
    pub deadline_to_decision_ms: f64,
    pub decision_to_vip_bound_ms: f64,
    pub decision_to_first_garp_ms: f64,
}

pub fn collect(iface: &str) -> anyhow::Result<Report> {
    let Some(pid) = ebpf::pinned_daemon_pid(iface) else {
        bail!(
            "no vipwatch backup is running on {iface} (nothing pinned in {}); start one with `vipwatch backup --iface {iface} ...`",
            ebpf::pin_dir(iface).display()
        );
    };
    if !ebpf::process_alive(pid) {
        bail!("no vipwatch backup is running on {iface}: pid {pid} that pinned its maps is gone");
    }
    let maps = WatchMaps::open_pinned(iface)?;
    let config = maps.config()?;
    let status = maps.status()?;
    let snap = maps.snapshot()?;
    let now = clock::now_ns();
    let DaemonStatus {
        pid: _,
        xdp_mode,
        state,
        xdp_fallback,
        started_ns: _,
        interval_ns,
        dead_after_ns,
        probes_sent,
        witness_probes_sent,
        takeovers,
        releases,
        deferred,
        last_takeover,
        last_release_ns: _,
        last_claim_ns: _,
        max_probe_gap_ns,
    } = status;
    Ok(Report {
        iface: iface.to_owned(),
        pid,
        state: state_name_from_code(state),
        xdp_mode: Attached::from_code(xdp_mode).map_or("unknown", Attached::as_str),
        xdp_fallback: xdp_fallback != 0,
        vip: Ipv4Addr::from(config.vip),
        interval_ms: interval_ns as f64 / 1e6,
        dead_after_ms: dead_after_ns as f64 / 1e6,
        master: peer_report(
            Ipv4Addr::from(config.master),
            probes_sent,
            &snap.master,
            now,
        ),
        witness: (config.flags & CONFIG_WITNESS != 0).then(|| {
            peer_report(
                Ipv4Addr::from(config.witness),
                witness_probes_sent,
                &snap.witness,
                now,
            )
        }),
        claims: snap.claims,
        takeovers,
        releases,
        deferred,
        max_probe_gap_ms: max_probe_gap_ns as f64 / 1e6,
        last_takeover: (takeovers > 0).then(|| timeline_report(last_takeover)),
    })
}

fn peer_report(address: Ipv4Addr, probes_sent: u64, p: &PeerSnapshot, now: u64) -> PeerReport {
    let loss_pct = if probes_sent == 0 {
        0.0
    } else {
        probes_sent.saturating_sub(p.replies) as f64 * 100.0 / probes_sent as f64
    };
    PeerReport {
        address,
        probes_sent,
        replies: p.replies,
        loss_pct,
        last_reply_age_ms: (p.last_seen_ns != 0)
            .then(|| now.saturating_sub(p.last_seen_ns) as f64 / 1e6),
        last_reply_mac: (p.last_seen_ns != 0).then(|| mac_str(p.last_mac)),
        rtt_p50_us: percentile(&p.rtt_hist, 0.50),
        rtt_p99_us: percentile(&p.rtt_hist, 0.99),
        rtt_max_us: percentile(&p.rtt_hist, 1.0),
        rtt_histogram: p
            .rtt_hist
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| Bucket {
                lt_us: rtt_bucket_upper_us(k),
                count: *n,
            })
            .collect(),
        forged: p.forged,
        max_gap_ms: p.max_gap_ns as f64 / 1e6,
    }
}

fn timeline_report(t: Timeline) -> TimelineReport {
    let Timeline {
        last_reply_ns,
        deadline_ns,
        decision_ns,
        vip_bound_ns,
        first_garp_ns,
    } = t;
    let d = |a: u64, b: u64| clock::delta_ms(a, b);
    TimelineReport {
        last_reply_ns,
        deadline_ns,
        decision_ns,
        vip_bound_ns,
        first_garp_ns,
        silence_to_decision_ms: d(last_reply_ns, decision_ns),
        deadline_to_decision_ms: d(deadline_ns, decision_ns),
        decision_to_vip_bound_ms: d(decision_ns, vip_bound_ns),
        decision_to_first_garp_ms: d(decision_ns, first_garp_ns),
    }
}

/// The upper bound (µs) of the histogram bucket holding quantile `q`.
pub fn percentile(hist: &[u64; RTT_BUCKETS], q: f64) -> Option<u64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (k, n) in hist.iter().enumerate() {
        seen += n;
        if seen >= rank {
            return Some(rtt_bucket_upper_us(k));
        }
    }
    None
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("never".into(), |ms| format!("{ms:.1} ms ago"))
}

fn opt_us(v: Option<u64>) -> String {
    v.map_or("-".into(), |us| format!("<{us}"))
}

pub fn render(r: &Report) -> String {
    let mut out = format!(
        "vipwatch backup on {} (pid {})  state {}  VIP {}  XDP {}{}\n",
        r.iface,
        r.pid,
        r.state,
        r.vip,
        r.xdp_mode,
        if r.xdp_fallback {
            " (fallback from driver)"
        } else {
            ""
        }
    );
    out += &format!(
        "interval {} ms, dead after {} ms\n\n",
        r.interval_ms, r.dead_after_ms
    );
    out += &format!(
        "{:<8} {:<15} {:>9} {:>9} {:>7} {:>14} {:>22} {:>7} {:>12}\n",
        "peer",
        "address",
        "probes",
        "replies",
        "loss",
        "last reply",
        "rtt p50/p99/max µs",
        "forged",
        "max gap"
    );
    let mut row = |name: &str, p: &PeerReport| {
        out += &format!(
            "{:<8} {:<15} {:>9} {:>9} {:>6.2}% {:>14} {:>22} {:>7} {:>9.2} ms\n",
            name,
            p.address.to_string(),
            p.probes_sent,
            p.replies,
            p.loss_pct,
            opt_ms(p.last_reply_age_ms),
            format!(
                "{}/{}/{}",
                opt_us(p.rtt_p50_us),
                opt_us(p.rtt_p99_us),
                opt_us(p.rtt_max_us)
            ),
            p.forged,
            p.max_gap_ms
        );
    };
    row("master", &r.master);
    if let Some(w) = &r.witness {
        row("witness", w);
    }
    out += &format!(
        "\nclaims {}  takeovers {}  releases {}  deferred deadlines {}  longest gap between our probes {:.2} ms\n",
        r.claims, r.takeovers, r.releases, r.deferred, r.max_probe_gap_ms
    );
    if let Some(t) = &r.last_takeover {
        out += &format!(
            "last takeover: silence->decision {:.3} ms (deadline +{:.3} ms), decision->VIP bound {:.3} ms, decision->first GARP {:.3} ms\n",
            t.silence_to_decision_ms,
            t.deadline_to_decision_ms,
            t.decision_to_vip_bound_ms,
            t.decision_to_first_garp_ms
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_bucket_upper_bounds() {
        let mut h = [0u64; RTT_BUCKETS];
        assert_eq!(percentile(&h, 0.5), None);
        h[6] = 98; // [32, 64) µs
        h[8] = 1; // [128, 256) µs
        h[12] = 1; // [2048, 4096) µs
        assert_eq!(percentile(&h, 0.50), Some(64));
        assert_eq!(percentile(&h, 0.99), Some(256));
        assert_eq!(percentile(&h, 1.0), Some(4096));
    }

    #[test]
    fn loss_never_goes_negative() {
        let p = PeerSnapshot {
            replies: 12,
            ..PeerSnapshot::default()
        };
        let r = peer_report(Ipv4Addr::new(192, 0, 2, 1), 10, &p, 0);
        assert_eq!(r.loss_pct, 0.0);
        let r = peer_report(Ipv4Addr::new(192, 0, 2, 1), 0, &p, 0);
        assert_eq!(r.loss_pct, 0.0);
        let p = PeerSnapshot {
            replies: 90,
            ..PeerSnapshot::default()
        };
        assert_eq!(
            peer_report(Ipv4Addr::new(192, 0, 2, 1), 100, &p, 0).loss_pct,
            10.0
        );
    }
}
