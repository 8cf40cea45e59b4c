//! `--metrics-listen ADDR`: the Prometheus endpoint (`GET /metrics`, text
//! exposition format 0.0.4, encoded by `prometheus-client`, served by
//! `tiny_http` on a thread of its own).
//!
//! Every scrape asks the daemon over its own control socket for `status`
//! (whose answer carries the `stats` reports too), exactly what the CLI
//! shows, and turns them into metrics: one
//! source of truth, and a scrape can never block an instance (the main
//! thread answers between signals; instances publish their state without
//! waiting for anyone).
//!
//! Names follow the Prometheus conventions: `vipwatch_` prefix, base units
//! (seconds, ratios), `_total` on counters, `vipwatch_build_info` for the
//! version. Per-instance metrics carry `instance_name`, `role`, `iface` and
//! `vip` labels (`instance` is left to Prometheus, which sets it to the
//! scraped target).

use std::{net::SocketAddr, thread};

use anyhow::Context as _;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use vipwatch_common::{RTT_BUCKETS, rtt_bucket_upper_us};

use crate::{
    control::{self, Request},
    stats::Report,
    status::{DaemonStatus, InstanceStatus},
};

/// Every state either role can be in, so each has its 0/1 series.
const BACKUP_STATES: [&str; 4] = ["STARTING", "STANDBY", "ACTIVE", "ISOLATED"];
const MASTER_STATES: [&str; 6] = [
    "STARTING",
    "WAITING",
    "HOLDING",
    "UNHEALTHY",
    "STOPPED",
    "FAULT",
];

/// Starts serving; the listening socket is bound before this returns, so a
/// bad address stops the start with a clear error.
pub fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(listen)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("--metrics-listen {listen}: cannot listen"))?;
    log::info!("metrics on http://{listen}/metrics");
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                respond(request);
            }
        })
        .context("starting the metrics thread")?;
    Ok(())
}

fn respond(request: tiny_http::Request) {
    let header = |k: &str, v: &str| {
        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes())
            .unwrap_or_else(|()| unreachable!("static ASCII header"))
    };
    let response = match (request.method(), request.url()) {
        (tiny_http::Method::Get, "/metrics") => match scrape() {
            Ok(text) => tiny_http::Response::from_string(text).with_header(header(
                "Content-Type",
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            )),
            Err(e) => {
                log::warn!("metrics scrape failed: {e:#}");
                tiny_http::Response::from_string(format!("{e:#}\n")).with_status_code(503)
            }
        },
        (tiny_http::Method::Get, "/") => {
            tiny_http::Response::from_string("vipwatch: metrics at /metrics\n")
        }
        _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
    };
    if let Err(e) = request.respond(response) {
        log::debug!("metrics: the client went away: {e}");
    }
}

/// The metrics of this daemon, asked through its own control socket.
fn scrape() -> anyhow::Result<String> {
    // One request: a status answer carries the backups' counters too.
    let response = control::ask(std::process::id(), &Request::Status)?;
    let status = response.status.context("the daemon sent no status")?;
    encode(status, response.stats)
}

/// The text exposition of one daemon's status and backup counters.
pub fn encode(status: DaemonStatus, stats: Vec<Report>) -> anyhow::Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot { status, stats }));
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)
        .context("encoding the metrics")?;
    Ok(text)
}

#[derive(Debug)]
struct Snapshot {
    status: DaemonStatus,
    stats: Vec<Report>,
}

type Labels = Vec<(&'static str, String)>;

/// A backup counter: name, help, and where its value is.
type BackupCounter = (&'static str, &'static str, fn(&Report) -> u64);

fn labels(i: &InstanceStatus) -> Labels {
    vec![
        ("instance_name", i.name.clone()),
        ("role", i.role.clone()),
        ("iface", i.iface.clone()),
        ("vip", i.vip.clone()),
    ]
}

fn with(mut l: Labels, k: &'static str, v: impl Into<String>) -> Labels {
    l.push((k, v.into()));
    l
}

/// A histogram whose buckets are already counted (the kernel's RTT
/// histogram, the takeover timeline).
#[derive(Debug)]
struct Counted {
    /// (upper bound, count in this bucket), ascending; +Inf last.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl EncodeMetric for Counted {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One metric family: its descriptor, then one series per label set.
fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    series: impl IntoIterator<Item = (Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let series: Vec<(Labels, M)> = series.into_iter().collect();
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (l, m) in &series {
        m.encode(metric.encode_family(l)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let d = &self.status;
        let inst = &d.instances;
        family(
            &mut e,
            "vipwatch_build_info",
            "The running vipwatch's version (value 1).",
            MetricType::Gauge,
            [(vec![("version", d.version.clone())], gauge(1.0))],
        )?;
        family(
            &mut e,
            "vipwatch_uptime_seconds",
            "Time since the daemon started.",
            MetricType::Gauge,
            [(Labels::new(), gauge(d.uptime_s))],
        )?;
        family(
            &mut e,
            "vipwatch_instance_state",
            "1 for the state the instance is in, 0 for the others of its role.",
            MetricType::Gauge,
            inst.iter().flat_map(|i| {
                let states: &[&str] = if i.role == "master" {
                    &MASTER_STATES
                } else {
                    &BACKUP_STATES
                };
                states.iter().map(move |s| {
                    (
                        with(labels(i), "state", *s),
                        gauge(f64::from(u8::from(i.state == *s))),
                    )
                })
            }),
        )?;
        family(
            &mut e,
            "vipwatch_instance_state_seconds",
            "Time since the instance entered its current state.",
            MetricType::Gauge,
            inst.iter().map(|i| (labels(i), gauge(i.since_s))),
        )?;
        family(
            &mut e,
            "vipwatch_vip_held",
            "1 while this host has the instance's VIP bound.",
            MetricType::Gauge,
            inst.iter()
                .map(|i| (labels(i), gauge(f64::from(u8::from(i.holding))))),
        )?;
        family(
            &mut e,
            "vipwatch_transitions",
            "State changes since the start, by the state entered.",
            MetricType::Counter,
            inst.iter().flat_map(|i| {
                i.entered
                    .iter()
                    .map(move |(to, n)| (with(labels(i), "to", to.clone()), counter(*n)))
            }),
        )?;
        family(
            &mut e,
            "vipwatch_health_healthy",
            "The health verdict after fall/rise: 1 healthy, 0 unhealthy (absent before the first result).",
            MetricType::Gauge,
            inst.iter().filter_map(|i| {
                let h = i.health.as_ref()?;
                Some((labels(i), gauge(f64::from(u8::from(h.healthy?)))))
            }),
        )?;
        family(
            &mut e,
            "vipwatch_health_checks",
            "Health check results since the start.",
            MetricType::Counter,
            inst.iter().flat_map(|i| {
                i.health.iter().flat_map(move |h| {
                    [
                        (with(labels(i), "result", "pass"), counter(h.passed)),
                        (with(labels(i), "result", "fail"), counter(h.failed)),
                    ]
                })
            }),
        )?;
        family(
            &mut e,
            "vipwatch_takeover_detection_seconds",
            "From the master's last reply to the first gratuitous ARP or unsolicited NA, for every takeover.",
            MetricType::Histogram,
            inst.iter().filter_map(|i| {
                let h = i.detection.as_ref()?;
                let mut buckets: Vec<(f64, u64)> = h
                    .bounds_s
                    .iter()
                    .copied()
                    .chain([f64::INFINITY])
                    .zip(h.counts.iter().copied())
                    .collect();
                buckets.truncate(h.bounds_s.len() + 1);
                Some((
                    labels(i),
                    Counted {
                        buckets,
                        sum: h.sum_s,
                        count: h.count,
                    },
                ))
            }),
        )?;
        self.encode_conn(&mut e)?;
        self.encode_backups(&mut e)
    }
}

impl Snapshot {
    fn encode_conn(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let conns = || {
            self.status
                .instances
                .iter()
                .filter_map(|i| Some((labels(i), i.conn.as_ref()?)))
        };
        family(
            e,
            "vipwatch_conn_table_connections",
            "TCP connections to the VIP in our own table (while we hold it).",
            MetricType::Gauge,
            conns().map(|(l, c)| (l, gauge(c.table as f64))),
        )?;
        family(
            e,
            "vipwatch_conn_known_from_peer_connections",
            "TCP connections the peer synced to us: what a takeover would kick now.",
            MetricType::Gauge,
            conns().map(|(l, c)| (l, gauge(c.known_from_peer as f64))),
        )?;
        family(
            e,
            "vipwatch_conn_syncs",
            "Connection-sync datagrams: sent, accepted from the peer, forged (ignored).",
            MetricType::Counter,
            conns().flat_map(|(l, c)| {
                [
                    (with(l.clone(), "kind", "sent"), counter(c.syncs_sent)),
                    (
                        with(l.clone(), "kind", "accepted"),
                        counter(c.syncs_accepted),
                    ),
                    (with(l, "kind", "forged"), counter(c.syncs_forged)),
                ]
            }),
        )?;
        family(
            e,
            "vipwatch_conn_kicked",
            "TCP segments sent by the kicks since the start (one per connection).",
            MetricType::Counter,
            conns().map(|(l, c)| (l, counter(c.kicked_total))),
        )?;
        family(
            e,
            "vipwatch_conn_kick_rate_limited",
            "Connections the kicks left out because of the rate limit.",
            MetricType::Counter,
            conns().map(|(l, c)| (l, counter(c.rate_limited_total))),
        )?;
        family(
            e,
            "vipwatch_conn_last_kick_duration_seconds",
            "How long the last kick took to send its segments.",
            MetricType::Gauge,
            conns().filter_map(|(l, c)| Some((l, gauge(c.last_kick.as_ref()?.duration_ms / 1e3)))),
        )
    }

    fn encode_backups(&self, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // (instance labels, peer role, peer report) for masters and witnesses.
        let backups = || {
            self.stats.iter().filter_map(|r| {
                let i = self
                    .status
                    .instances
                    .iter()
                    .find(|i| i.name == r.instance)?;
                Some((labels(i), r))
            })
        };
        let peers = || {
            backups().flat_map(|(l, r)| {
                [
                    Some(("master", &r.master)),
                    r.witness.as_ref().map(|w| ("witness", w)),
                ]
                .into_iter()
                .flatten()
                .map(move |(role, p)| {
                    (
                        with(
                            with(l.clone(), "peer", role),
                            "peer_address",
                            p.address.to_string(),
                        ),
                        p,
                    )
                })
            })
        };
        family(
            e,
            "vipwatch_probes_sent",
            "Heartbeat probes sent to the peer.",
            MetricType::Counter,
            peers().map(|(l, p)| (l, counter(p.probes_sent))),
        )?;
        family(
            e,
            "vipwatch_replies",
            "Valid replies from the peer, counted in XDP.",
            MetricType::Counter,
            peers().map(|(l, p)| (l, counter(p.replies))),
        )?;
        family(
            e,
            "vipwatch_probe_loss_ratio",
            "Share of the probes the peer left unanswered, since the start.",
            MetricType::Gauge,
            peers().map(|(l, p)| (l, gauge(p.loss_pct / 100.0))),
        )?;
        family(
            e,
            "vipwatch_forged_replies",
            "Replies from the peer's address that failed the nonce or key check.",
            MetricType::Counter,
            peers().map(|(l, p)| (l, counter(p.forged))),
        )?;
        family(
            e,
            "vipwatch_replayed_replies",
            "Valid-looking replies to a probe already answered or too old.",
            MetricType::Counter,
            peers().map(|(l, p)| (l, counter(p.replayed))),
        )?;
        family(
            e,
            "vipwatch_last_reply_age_seconds",
            "Time since the peer's last valid reply (absent before the first).",
            MetricType::Gauge,
            peers().filter_map(|(l, p)| Some((l, gauge(p.last_reply_age_ms? / 1e3)))),
        )?;
        family(
            e,
            "vipwatch_rtt_seconds",
            "Probe round-trip times (kernel log2 buckets; the sum is estimated from bucket midpoints).",
            MetricType::Histogram,
            peers().map(|(l, p)| (l, rtt_histogram(&p.rtt_histogram))),
        )?;
        let counters: [BackupCounter; 8] = [
            (
                "vipwatch_takeovers",
                "Takeovers of the VIP by this backup.",
                |r| r.takeovers,
            ),
            (
                "vipwatch_releases",
                "Releases of the VIP by this backup.",
                |r| r.releases,
            ),
            (
                "vipwatch_takeovers_refused",
                "Takeovers not done because this backup's own service was unhealthy.",
                |r| r.takeovers_refused,
            ),
            (
                "vipwatch_claims",
                "ARP or NDP packets claiming the VIP from another MAC.",
                |r| r.claims,
            ),
            (
                "vipwatch_taken_back",
                "Releases undone because nobody answered for the VIP afterwards (a forged claim).",
                |r| r.taken_back,
            ),
            (
                "vipwatch_vip_restored",
                "The held VIP was removed from the interface and bound again.",
                |r| r.vip_restored,
            ),
            (
                "vipwatch_stray_vips",
                "The VIP appeared on the interface while not held.",
                |r| r.stray_vips,
            ),
            (
                "vipwatch_deferred_deadlines",
                "Deadlines excused because our own probes had not gone out.",
                |r| r.deferred,
            ),
        ];
        for (name, help, value) in counters {
            family(
                e,
                name,
                help,
                MetricType::Counter,
                backups().map(|(l, r)| (l, counter(value(r)))),
            )?;
        }
        family(
            e,
            "vipwatch_xdp_fallback",
            "1 when the driver refused native XDP and the program runs in generic (skb) mode.",
            MetricType::Gauge,
            backups().map(|(l, r)| (l, gauge(f64::from(u8::from(r.xdp_fallback))))),
        )
    }
}

/// The kernel's RTT histogram (only non-empty buckets reported) on the
/// fixed log2 bounds, in seconds.
fn rtt_histogram(buckets: &[crate::stats::Bucket]) -> Counted {
    let mut counted: Vec<(f64, u64)> = (0..RTT_BUCKETS)
        .map(|k| {
            let upper_us = rtt_bucket_upper_us(k);
            let n = buckets
                .iter()
                .filter(|b| b.lt_us == upper_us)
                .map(|b| b.count)
                .sum();
            (upper_us as f64 / 1e6, n)
        })
        .collect();
    counted.push((f64::INFINITY, 0));
    let count = counted.iter().map(|(_, n)| n).sum();
    // A bucket holds [upper/2, upper): its midpoint is 3/4 of its bound.
    let sum = counted
        .iter()
        .filter(|(upper, _)| upper.is_finite())
        .map(|(upper, n)| upper * 0.75 * *n as f64)
        .sum();
    Counted {
        buckets: counted,
        sum,
        count,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{HealthStatus, HistogramStatus, TransitionStatus};

    fn sample() -> DaemonStatus {
        DaemonStatus {
            version: "0.1.0".into(),
            pid: 7,
            uptime_s: 3.5,
            config: None,
            instances: vec![
                InstanceStatus {
                    name: "redis".into(),
                    role: "master".into(),
                    iface: "eth0".into(),
                    vip: "192.0.2.100/24".into(),
                    state: "HOLDING".into(),
                    since_s: 1.0,
                    holding: true,
                    health: Some(HealthStatus {
                        check: "TCP connect 127.0.0.1:6379".into(),
                        healthy: Some(true),
                        passed: 4,
                        failed: 1,
                        ..HealthStatus::default()
                    }),
                    transitions: vec![TransitionStatus::default()],
                    entered: [("HOLDING".to_owned(), 1)].into(),
                    ..InstanceStatus::default()
                },
                InstanceStatus {
                    name: "mongo".into(),
                    role: "backup".into(),
                    iface: "eth0".into(),
                    vip: "192.0.2.101/24".into(),
                    state: "ACTIVE".into(),
                    detection: Some(HistogramStatus {
                        bounds_s: vec![0.005, 0.01, 0.02],
                        counts: vec![0, 2, 1, 0],
                        sum_s: 0.031,
                        count: 3,
                    }),
                    ..InstanceStatus::default()
                },
            ],
        }
    }

    #[test]
    fn the_exposition_follows_the_naming_conventions() {
        let text = encode(sample(), Vec::new()).unwrap();
        for line in [
            "vipwatch_build_info{version=\"0.1.0\"} 1",
            "# TYPE vipwatch_transitions_total counter",
            "vipwatch_instance_state{instance_name=\"redis\",role=\"master\",iface=\"eth0\",vip=\"192.0.2.100/24\",state=\"HOLDING\"} 1",
            "vipwatch_instance_state{instance_name=\"redis\",role=\"master\",iface=\"eth0\",vip=\"192.0.2.100/24\",state=\"FAULT\"} 0",
            "vipwatch_health_checks_total{instance_name=\"redis\",role=\"master\",iface=\"eth0\",vip=\"192.0.2.100/24\",result=\"fail\"} 1",
            "vipwatch_takeover_detection_seconds_bucket{instance_name=\"mongo\",role=\"backup\",iface=\"eth0\",vip=\"192.0.2.101/24\",le=\"0.01\"} 2",
            "vipwatch_takeover_detection_seconds_bucket{instance_name=\"mongo\",role=\"backup\",iface=\"eth0\",vip=\"192.0.2.101/24\",le=\"+Inf\"} 3",
            "vipwatch_takeover_detection_seconds_count{instance_name=\"mongo\",role=\"backup\",iface=\"eth0\",vip=\"192.0.2.101/24\"} 3",
        ] {
            assert!(text.contains(line), "{line}\nnot in:\n{text}");
        }
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("vipwatch_"), "{l}");
        }
    }

    #[test]
    fn rtt_buckets_are_cumulative_in_seconds() {
        let h = rtt_histogram(&[
            crate::stats::Bucket {
                lt_us: 16,
                count: 3,
            },
            crate::stats::Bucket {
                lt_us: 64,
                count: 1,
            },
        ]);
        assert_eq!(h.count, 4);
        assert!(h.buckets.contains(&(16e-6, 3)));
        assert!(h.buckets.contains(&(64e-6, 1)));
        assert_eq!(h.buckets.last(), Some(&(f64::INFINITY, 0)));
        assert!((h.sum - (3.0 * 12e-6 + 48e-6)).abs() < 1e-12);
    }
}
