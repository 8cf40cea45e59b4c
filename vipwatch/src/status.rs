//! `vipwatch status`: every instance of every daemon in this network
//! namespace, both roles, from the control socket: state and since when,
//! VIP, peers, health-check results and the last transitions with their
//! reasons, with the daemon's version and uptime.
//!
//! `stats` is the counters of backups (a stable JSON contract); `status`
//! is the operator's first look, like `keepalived --dump-conf` plus the
//! state file, and what the Prometheus endpoint is built from.

use std::{collections::BTreeMap, fmt::Write as _};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::{
    cli::StatusArgs,
    control::{self, Request},
    stats::ConnReport,
};

/// One daemon.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_s: f64,
    /// The configuration file, for `vipwatch run`.
    pub config: Option<String>,
    pub instances: Vec<InstanceStatus>,
}

/// One instance.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InstanceStatus {
    pub name: String,
    /// `master` or `backup`.
    pub role: String,
    pub iface: String,
    pub vip: String,
    pub state: String,
    /// How long it has been in `state`.
    pub since_s: f64,
    /// Whether this host has the VIP bound for this instance.
    pub holding: bool,
    /// The other hosts the instance talks to.
    pub peers: Vec<PeerStatus>,
    pub health: Option<HealthStatus>,
    /// The latest state changes, newest last.
    pub transitions: Vec<TransitionStatus>,
    /// State changes since the start, by the state entered.
    #[serde(default)]
    pub entered: BTreeMap<String, u64>,
    /// The TCP connection kick (either role).
    #[serde(default)]
    pub conn: Option<ConnReport>,
    /// Backups: master's last reply → first GARP of every takeover.
    #[serde(default)]
    pub detection: Option<HistogramStatus>,
}

/// A histogram with fixed bounds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HistogramStatus {
    /// Upper bounds, seconds; `counts` has one more entry (above the last).
    pub bounds_s: Vec<f64>,
    pub counts: Vec<u64>,
    pub sum_s: f64,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    /// `master`, `witness` (a backup's) or `backup` (a master's, learned
    /// from its probes).
    pub role: String,
    pub address: String,
    /// Age of its last valid reply or probe.
    pub last_seen_age_ms: Option<f64>,
    /// Share of our probes it left unanswered (backups only).
    pub loss_pct: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HealthStatus {
    /// What is checked, e.g. `GET https://127.0.0.1/health (2xx)`.
    pub check: String,
    /// The verdict after fall/rise; `None` before the first result.
    pub healthy: Option<bool>,
    /// The last result: `ok` or why it failed.
    pub last_result: Option<String>,
    pub last_age_ms: Option<f64>,
    pub passed: u64,
    pub failed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TransitionStatus {
    pub age_s: f64,
    /// CLOCK_MONOTONIC ns.
    pub at_ns: u64,
    pub from: String,
    pub to: String,
    pub reason: String,
}

pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let StatusArgs { json } = args;
    let daemons = collect()?;
    if json {
        for d in &daemons {
            println!("{}", serde_json::to_string(d).context("encoding JSON")?);
        }
    } else {
        for (k, d) in daemons.iter().enumerate() {
            if k > 0 {
                println!();
            }
            print!("{}", render(d));
        }
    }
    Ok(())
}

/// The status of every daemon of this network namespace.
pub fn collect() -> anyhow::Result<Vec<DaemonStatus>> {
    let pids = control::daemons();
    let mut out = Vec::new();
    let mut failures = Vec::new();
    for pid in &pids {
        match control::ask(*pid, &Request::Status) {
            Ok(response) => match (response.status, response.error) {
                (Some(status), _) => out.push(status),
                (None, Some(error)) => failures.push(format!("pid {pid}: {error}")),
                (None, None) => failures.push(format!(
                    "pid {pid} does not know `status` (an older vipwatch?)"
                )),
            },
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    if out.is_empty() {
        if let Some(first) = failures.first() {
            bail!("no daemon answered: {first}");
        }
        bail!(
            "no vipwatch runs in this network namespace (a daemon in another one is seen from there: \
             `ip netns exec NAME vipwatch status`)"
        );
    }
    Ok(out)
}

/// Human-readable form.
pub fn render(d: &DaemonStatus) -> String {
    let mut s = String::new();
    let _infallible = writeln!(
        s,
        "vipwatch {} (pid {}), up {}{}",
        d.version,
        d.pid,
        age(d.uptime_s),
        d.config
            .as_deref()
            .map(|c| format!(", config {c}"))
            .unwrap_or_default()
    );
    if d.instances.is_empty() {
        let _infallible = writeln!(s, "  no instances");
    }
    for i in &d.instances {
        let _infallible = writeln!(
            s,
            "  {} ({} on {}): {} for {}, VIP {}{}",
            i.name,
            i.role,
            i.iface,
            i.state,
            age(i.since_s),
            i.vip,
            if i.holding { " (held here)" } else { "" }
        );
        for p in &i.peers {
            let _infallible = writeln!(
                s,
                "    {} {}: {}{}",
                p.role,
                p.address,
                p.last_seen_age_ms.map_or_else(
                    || "never seen".to_owned(),
                    |a| format!("seen {a:.1} ms ago")
                ),
                p.loss_pct
                    .map(|l| format!(", {l:.2} % unanswered"))
                    .unwrap_or_default()
            );
        }
        if let Some(h) = &i.health {
            let verdict = match h.healthy {
                Some(true) => "healthy",
                Some(false) => "UNHEALTHY",
                None => "no verdict yet",
            };
            let _infallible = writeln!(
                s,
                "    health {}: {verdict} ({} passed, {} failed{})",
                h.check,
                h.passed,
                h.failed,
                match (&h.last_result, h.last_age_ms) {
                    (Some(r), Some(a)) => format!("; last {a:.0} ms ago: {r}"),
                    _ => String::new(),
                }
            );
        }
        for t in &i.transitions {
            let _infallible = writeln!(
                s,
                "    {} ago: {} -> {} ({})",
                age(t.age_s),
                t.from,
                t.to,
                t.reason
            );
        }
    }
    s
}

/// `3.2 s`, `4 min 12 s`, `2 h 5 min`, `3 d 4 h`.
fn age(s: f64) -> String {
    let whole = s.max(0.0) as u64;
    if s < 60.0 {
        format!("{s:.1} s")
    } else if whole < 3600 {
        format!("{} min {} s", whole / 60, whole % 60)
    } else if whole < 86_400 {
        format!("{} h {} min", whole / 3600, whole % 3600 / 60)
    } else {
        format!("{} d {} h", whole / 86_400, whole % 86_400 / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_a_person_writes_them() {
        assert_eq!(age(3.25), "3.2 s");
        assert_eq!(age(252.0), "4 min 12 s");
        assert_eq!(age(7500.0), "2 h 5 min");
        assert_eq!(age(273_600.0), "3 d 4 h");
        assert_eq!(age(-1.0), "-1.0 s");
    }

    #[test]
    fn render_shows_every_part_of_an_instance() {
        let d = DaemonStatus {
            version: "0.1.0".into(),
            pid: 42,
            uptime_s: 61.0,
            config: Some("/etc/vipwatch/vipwatch.toml".into()),
            instances: vec![InstanceStatus {
                name: "redis".into(),
                role: "master".into(),
                iface: "eth0".into(),
                vip: "192.0.2.100/24".into(),
                state: "HOLDING".into(),
                since_s: 2.0,
                holding: true,
                peers: vec![PeerStatus {
                    role: "backup".into(),
                    address: "192.0.2.2".into(),
                    last_seen_age_ms: Some(1.5),
                    loss_pct: None,
                }],
                health: Some(HealthStatus {
                    check: "TCP connect 127.0.0.1:6379".into(),
                    healthy: Some(true),
                    last_result: Some("ok".into()),
                    last_age_ms: Some(12.0),
                    passed: 3,
                    failed: 0,
                }),
                transitions: vec![TransitionStatus {
                    age_s: 2.0,
                    at_ns: 1,
                    from: "STARTING".into(),
                    to: "HOLDING".into(),
                    reason: "healthy".into(),
                }],
                ..InstanceStatus::default()
            }],
        };
        let text = render(&d);
        for part in [
            "vipwatch 0.1.0 (pid 42), up 1 min 1 s, config /etc/vipwatch/vipwatch.toml",
            "redis (master on eth0): HOLDING for 2.0 s, VIP 192.0.2.100/24 (held here)",
            "backup 192.0.2.2: seen 1.5 ms ago",
            "health TCP connect 127.0.0.1:6379: healthy (3 passed, 0 failed; last 12 ms ago: ok)",
            "2.0 s ago: STARTING -> HOLDING (healthy)",
        ] {
            assert!(text.contains(part), "{part:?} not in:\n{text}");
        }
    }
}
