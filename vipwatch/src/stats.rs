//! `vipwatch stats`: the counters of the backup instances running here.
//!
//! The daemon builds a [`Report`] per backup instance from its own state
//! and the XDP maps ([`report`]), and sends them over the control socket;
//! this command prints them, as text or as JSON. The JSON form is a stable
//! interface (documented in the README): fields are only ever added.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use vipwatch_common::{
    PEER_MASTER, PEER_WITNESS, RTT_BUCKETS, XDP_ERR_CONN_EVENTS_FULL, XDP_ERR_CONN_INSERT,
    XDP_ERR_MAP, XDP_ERR_NO_CONFIG, XDP_ERR_RINGBUF_FULL, XDP_ERR_UNKNOWN_SLOT, XDP_ERROR_KINDS,
    rtt_bucket_upper_us,
};

use crate::{
    arp::mac_str,
    backup,
    cli::StatsArgs,
    clock,
    control::{self, Request},
    ebpf::{Maps, PeerSnapshot},
};

pub fn run(args: StatsArgs) -> anyhow::Result<()> {
    let StatsArgs {
        iface,
        instance,
        json,
        watch,
    } = args;
    loop {
        let reports = collect(iface.as_deref(), instance.as_deref())?;
        if json {
            for r in &reports {
                println!("{}", serde_json::to_string(r).context("encoding JSON")?);
            }
        } else {
            if watch {
                // Clear the screen and home the cursor.
                print!("\x1b[2J\x1b[H");
            }
            for (k, r) in reports.iter().enumerate() {
                if k > 0 {
                    println!();
                }
                print!("{}", render(r));
            }
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The reports of every daemon in this network namespace, filtered.
fn collect(iface: Option<&str>, instance: Option<&str>) -> anyhow::Result<Vec<Report>> {
    let daemons = control::daemons();
    let mut reports = Vec::new();
    for pid in &daemons {
        match control::ask(*pid, &Request::Stats) {
            Ok(response) => reports.extend(response.stats),
            // A daemon that is just stopping is no reason to fail.
            Err(e) => log::debug!("{e:#}"),
        }
    }
    reports
        .retain(|r| iface.is_none_or(|i| r.iface == i) && instance.is_none_or(|n| r.instance == n));
    if reports.is_empty() {
        let what = match (iface, instance) {
            (_, Some(name)) => format!("no vipwatch backup instance {name:?} is running here"),
            (Some(i), None) => format!("no vipwatch backup is running on {i}"),
            (None, None) => "no vipwatch backup is running here".to_owned(),
        };
        let hint = if daemons.is_empty() {
            "no vipwatch runs in this network namespace; in another one, run `vipwatch stats` \
             there (`ip netns exec NAME vipwatch stats`)"
        } else {
            "`vipwatch stats` lists the backup instances of this network namespace"
        };
        bail!("{what} ({hint})");
    }
    Ok(reports)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub iface: String,
    /// The instance's name.
    pub instance: String,
    /// Always "backup" (master instances have no probe counters).
    pub role: String,
    pub pid: u32,
    pub state: String,
    pub xdp_mode: String,
    pub xdp_fallback: bool,
    pub vip: String,
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
    /// The VIP was removed from the interface while held, and bound again.
    #[serde(default)]
    pub vip_restored: u64,
    /// The VIP appeared on the interface while not held.
    #[serde(default)]
    pub stray_vips: u64,
    /// Releases undone because nobody answered for the VIP afterwards (a
    /// forged claim).
    #[serde(default)]
    pub taken_back: u64,
    /// Takeovers not done because our own service was unhealthy.
    #[serde(default)]
    pub takeovers_refused: u64,
    /// Longest gap between two probes we sent (since the master first
    /// answered), ms: our own starvation, next to the master's `max_gap_ms`.
    pub max_probe_gap_ms: f64,
    pub last_takeover: Option<TimelineReport>,
    /// What the interface's XDP program could not do (all instances of the
    /// interface share them).
    pub xdp_errors: XdpErrors,
    /// The TCP connection kick.
    pub conn: ConnReport,
}

/// The kick's state (see the README's "What the application sees").
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnReport {
    /// `ack`, `rst` or `off`.
    pub kick: String,
    /// Connections in our own table (while we hold the VIP).
    pub table: u64,
    /// Connections synced by the peer: what a takeover would kick now.
    pub known_from_peer: u64,
    /// Age of the last sync datagram accepted from the peer.
    pub last_sync_age_ms: Option<f64>,
    pub syncs_accepted: u64,
    pub syncs_forged: u64,
    pub syncs_sent: u64,
    pub sync_bytes_sent: u64,
    pub last_kick: Option<KickReport>,
    /// Segments sent by every kick since the start.
    #[serde(default)]
    pub kicked_total: u64,
    /// Connections every kick since the start left out (rate limit).
    #[serde(default)]
    pub rate_limited_total: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KickReport {
    /// Segments sent.
    pub kicks: u64,
    /// Connections not kicked: the rate limit (a table's worth a second).
    #[serde(default)]
    pub rate_limited: u64,
    /// How long sending them took.
    pub duration_ms: f64,
    /// CLOCK_MONOTONIC ns when the kick started.
    pub at_ns: u64,
}

/// The XDP program's own error counters (`VW_ERRORS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XdpErrors {
    /// Frames seen before the interface config was written.
    pub no_config: u64,
    /// Claim wake-ups lost to a full ring buffer (the claims are counted).
    pub ringbuf_full: u64,
    /// Replies naming a slot that is not a backup (a stopped instance).
    pub unknown_slot: u64,
    /// Map lookups that failed.
    pub map: u64,
    /// Connection events lost to a full ring buffer.
    #[serde(default)]
    pub conn_events_full: u64,
    /// New connections the table could not take.
    #[serde(default)]
    pub conn_insert: u64,
}

impl XdpErrors {
    pub fn from_counts(c: [u64; XDP_ERROR_KINDS as usize]) -> Self {
        let at = |k: u32| c.get(k as usize).copied().unwrap_or(0);
        Self {
            no_config: at(XDP_ERR_NO_CONFIG),
            ringbuf_full: at(XDP_ERR_RINGBUF_FULL),
            unknown_slot: at(XDP_ERR_UNKNOWN_SLOT),
            map: at(XDP_ERR_MAP),
            conn_events_full: at(XDP_ERR_CONN_EVENTS_FULL),
            conn_insert: at(XDP_ERR_CONN_INSERT),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerReport {
    pub address: IpAddr,
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
    /// Valid-looking replies to a probe already answered or too old.
    #[serde(default)]
    pub replayed: u64,
    /// Longest silence between two consecutive valid replies.
    pub max_gap_ms: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Bucket {
    pub lt_us: u64,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
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

/// What the daemon knows of one backup instance, beside the maps.
pub(crate) struct BackupView<'a> {
    pub(crate) iface: &'a str,
    pub(crate) instance: &'a str,
    pub(crate) state: &'static str,
    pub(crate) xdp_mode: &'static str,
    pub(crate) xdp_fallback: bool,
    pub(crate) vip: String,
    pub(crate) slot: u32,
    pub(crate) master: IpAddr,
    pub(crate) witness: Option<IpAddr>,
    pub(crate) interval_ns: u64,
    pub(crate) dead_after_ns: u64,
    pub(crate) stats: backup::Stats,
    pub(crate) witness_probes_sent: u64,
    pub(crate) kick: crate::kick::Mode,
    pub(crate) conn: crate::worker::ConnStatus,
}

/// The report of one backup instance, from the daemon's view of it and the
/// interface's maps.
pub(crate) fn report(v: &BackupView<'_>, maps: &Maps) -> anyhow::Result<Report> {
    let now = clock::now_ns();
    let master = maps.peer(v.slot, PEER_MASTER)?;
    let claims = maps.claims(v.slot)?;
    let backup::Stats {
        probes_sent,
        takeovers,
        releases,
        deferred,
        last_takeover,
        max_probe_gap_ns,
        vip_restored,
        stray_vips,
        taken_back,
        takeovers_refused,
        ..
    } = v.stats;
    let witness = match v.witness {
        Some(w) => Some(peer_report(
            w,
            v.witness_probes_sent,
            &maps.peer(v.slot, PEER_WITNESS)?,
            now,
        )),
        None => None,
    };
    Ok(Report {
        iface: v.iface.to_owned(),
        instance: v.instance.to_owned(),
        role: "backup".into(),
        pid: std::process::id(),
        state: v.state.into(),
        xdp_mode: v.xdp_mode.into(),
        xdp_fallback: v.xdp_fallback,
        vip: v.vip.clone(),
        interval_ms: v.interval_ns as f64 / 1e6,
        dead_after_ms: v.dead_after_ns as f64 / 1e6,
        master: peer_report(v.master, probes_sent, &master, now),
        witness,
        claims: claims.claims,
        takeovers,
        releases,
        deferred,
        vip_restored,
        stray_vips,
        taken_back,
        takeovers_refused,
        max_probe_gap_ms: max_probe_gap_ns as f64 / 1e6,
        last_takeover: last_takeover.map(|(d, bound, garp)| {
            timeline_report(d.last_reply_ns, d.deadline_ns, d.decision_ns, bound, garp)
        }),
        xdp_errors: XdpErrors::from_counts(maps.errors()?),
        conn: conn_report(v, now),
    })
}

fn conn_report(v: &BackupView<'_>, now: u64) -> ConnReport {
    conn_of(v.kick, v.conn, now)
}

/// The kick's report from an instance's published state (either role).
pub(crate) fn conn_of(
    kick: crate::kick::Mode,
    conn: crate::worker::ConnStatus,
    now: u64,
) -> ConnReport {
    let crate::worker::ConnStatus {
        table,
        known_from_peer,
        last_sync_ns,
        syncs_accepted,
        syncs_forged,
        syncs_sent,
        sync_bytes_sent,
        last_kick,
        kicked_total,
        rate_limited_total,
    } = conn;
    ConnReport {
        kick: crate::config::kick_name(kick).into(),
        kicked_total,
        rate_limited_total,
        table: table as u64,
        known_from_peer: known_from_peer as u64,
        last_sync_age_ms: (last_sync_ns != 0)
            .then(|| now.saturating_sub(last_sync_ns) as f64 / 1e6),
        syncs_accepted,
        syncs_forged,
        syncs_sent,
        sync_bytes_sent,
        last_kick: last_kick.map(|k| KickReport {
            kicks: k.sent as u64,
            rate_limited: k.rate_limited as u64,
            duration_ms: k.took_ns as f64 / 1e6,
            at_ns: k.at_ns,
        }),
    }
}

fn peer_report(address: IpAddr, probes_sent: u64, p: &PeerSnapshot, now: u64) -> PeerReport {
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
        replayed: p.replayed,
        max_gap_ms: p.max_gap_ns as f64 / 1e6,
    }
}

fn timeline_report(
    last_reply_ns: u64,
    deadline_ns: u64,
    decision_ns: u64,
    vip_bound_ns: u64,
    first_garp_ns: u64,
) -> TimelineReport {
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
        "vipwatch backup {} on {} (pid {})  state {}  VIP {}  XDP {}{}\n",
        r.instance,
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
        "{:<8} {:<15} {:>9} {:>9} {:>7} {:>14} {:>22} {:>7} {:>8} {:>12}\n",
        "peer",
        "address",
        "probes",
        "replies",
        "loss",
        "last reply",
        "rtt p50/p99/max µs",
        "forged",
        "replayed",
        "max gap"
    );
    let mut row = |name: &str, p: &PeerReport| {
        out += &format!(
            "{:<8} {:<15} {:>9} {:>9} {:>6.2}% {:>14} {:>22} {:>7} {:>8} {:>9.2} ms\n",
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
            p.replayed,
            p.max_gap_ms
        );
    };
    row("master", &r.master);
    if let Some(w) = &r.witness {
        row("witness", w);
    }
    out += &format!(
        "\nclaims {}  takeovers {}  releases {} (taken back {})  deferred deadlines {}  longest gap between our probes {:.2} ms\n",
        r.claims, r.takeovers, r.releases, r.taken_back, r.deferred, r.max_probe_gap_ms
    );
    if r.vip_restored + r.stray_vips > 0 {
        out += &format!(
            "VIP removed while held and bound again {}  VIP appeared while not held {}\n",
            r.vip_restored, r.stray_vips
        );
    }
    let c = &r.conn;
    out += &format!(
        "kick {}: {} connections known from the master (last sync {}), {} syncs accepted, {} forged{}\n",
        c.kick,
        c.known_from_peer,
        c.last_sync_age_ms
            .map_or("never".to_owned(), |ms| format!("{ms:.1} ms ago")),
        c.syncs_accepted,
        c.syncs_forged,
        c.last_kick.as_ref().map_or(String::new(), |k| format!(
            "; last kick {} segments in {:.3} ms{}",
            k.kicks,
            k.duration_ms,
            if k.rate_limited > 0 {
                format!(" ({} left out by the rate limit)", k.rate_limited)
            } else {
                String::new()
            }
        ))
    );
    let e = r.xdp_errors;
    if e != XdpErrors::default() {
        out += &format!(
            "XDP errors: no config {}  ring buffer full {}  unknown slot {}  map {}  connection events lost {}  connections not recorded {}\n",
            e.no_config, e.ringbuf_full, e.unknown_slot, e.map, e.conn_events_full, e.conn_insert
        );
    }
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
        let r = peer_report(IpAddr::from([192, 0, 2, 1]), 10, &p, 0);
        assert_eq!(r.loss_pct, 0.0);
        let r = peer_report(IpAddr::from([192, 0, 2, 1]), 0, &p, 0);
        assert_eq!(r.loss_pct, 0.0);
        let p = PeerSnapshot {
            replies: 90,
            ..PeerSnapshot::default()
        };
        assert_eq!(
            peer_report(IpAddr::from([192, 0, 2, 1]), 100, &p, 0).loss_pct,
            10.0
        );
    }
}
