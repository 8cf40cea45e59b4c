//! `cargo xtask bench`: failover measured the way a client sees it, with
//! the daemon's own timeline, an interval sweep, a false-takeover soak and
//! the classic ping-loop script as a baseline in the same run.
//!
//! Every number comes from a lab of network namespaces built here (see
//! `vipwatch_tests::scenario`): a client sends a UDP request to the VIP
//! every 0.2 ms and records who answers; outage = failure injection → first
//! answer from the backup. The report is Markdown on stdout, and JSON with
//! `--json FILE`.

use std::{
    fmt::Write as _,
    fs,
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use vipwatch_tests::{
    Client, EchoServer, Lab, Proc,
    scenario::{
        self, BACKUP, ECHO_PORT, Family, Fault, MASTER, Options as ScenarioOptions, Scenario, VIP,
        VIP_CIDR,
    },
};

use crate::{build, interrupt, prerequisites, util};

mod attack;
mod scaling;
mod tcp;

#[derive(clap::Args)]
pub struct Options {
    /// A short run (5 trials per mode, 30 s soak) for a quick check.
    #[arg(long)]
    pub quick: bool,
    /// Trials per failure mode (default 20, 5 with --quick).
    #[arg(long)]
    pub trials: Option<usize>,
    /// Soak duration in seconds (default 600, 30 with --quick).
    #[arg(long)]
    pub soak_secs: Option<u64>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Run only these sections (repeatable; default: all).
    #[arg(long, value_enum)]
    pub only: Vec<Section>,
}

/// The report's sections, for `--only`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// 1, 2 and 5: outage by failure mode, where the time goes, failback
    /// (with the IPv6 cable pull).
    Modes,
    /// The IPv6 cable-pull row of sections 1, 2 and 5 alone (part of
    /// `modes`).
    Ipv6,
    /// 3: interval sweep with CPU.
    Sweep,
    /// 4: false-takeover soak.
    Soak,
    /// 6: the classic ping-loop baseline.
    Baseline,
    /// 7: many instances in one process.
    Scaling,
    /// 8: what a TCP client sees (the kick).
    Tcp,
    /// 9: attacks: forged claims and replays during a soak.
    Attack,
}

/// A section's report, or, if it failed (and was not interrupted), a
/// section that says so: the other sections' numbers are kept.
fn or_failure(title: &str, result: Result<(String, Value)>) -> Result<(String, Value)> {
    match result {
        Ok(done) => Ok(done),
        Err(e) => {
            interrupt::check()?;
            eprintln!("{} section {title} failed: {e:#}", util::TAG);
            Ok((
                format!(
                    "\n## {title}\n\n**This section failed:** {}\n",
                    one_line(&e)
                ),
                json!({"error": format!("{e:#}")}),
            ))
        }
    }
}

/// An error as one line of a Markdown table.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .next()
        .unwrap_or_default()
        .replace('|', "/")
}

/// Percentile summary of a set of durations, in ms.
#[derive(Clone, Copy, Debug)]
struct Summary {
    n: usize,
    min: f64,
    median: f64,
    p99: f64,
    max: f64,
}

impl Summary {
    fn of(values: &[f64]) -> Option<Self> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        // Nearest-rank percentile: with fewer than 100 samples p99 is the
        // maximum, which is the honest answer.
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Some(Self {
            n: v.len(),
            min: v[0],
            median: rank(0.5),
            p99: rank(0.99),
            max: v[v.len() - 1],
        })
    }

    fn json(s: Option<Self>) -> Value {
        match s {
            Some(Summary {
                n,
                min,
                median,
                p99,
                max,
            }) => {
                json!({"n": n, "min_ms": min, "median_ms": median, "p99_ms": p99, "max_ms": max})
            }
            None => Value::Null,
        }
    }

    fn row(label: &str, s: Option<Self>) -> String {
        match s {
            Some(Summary {
                n,
                min,
                median,
                p99,
                max,
            }) => {
                format!("| {label} | {n} | {min:.2} | {median:.2} | {p99:.2} | {max:.2} |\n")
            }
            None => format!("| {label} | 0 | - | - | - | - |\n"),
        }
    }
}

const TABLE_HEAD: &str =
    "| | n | min ms | median ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|\n";

/// The per-takeover breakdown, ms, from the daemon's timeline and the
/// client's first answer.
#[derive(Default)]
struct Breakdown {
    deadline: Vec<f64>,
    deadline_to_decision: Vec<f64>,
    decision_to_bound: Vec<f64>,
    bound_to_garp: Vec<f64>,
    decision_to_garp: Vec<f64>,
    garp_to_answer: Vec<f64>,
}

impl Breakdown {
    fn add(&mut self, tl: &Value, first_answer_ns: u64) {
        let get = |k: &str| tl[k].as_u64().map(|v| v as f64 / 1e6);
        let (Some(last), Some(deadline), Some(decision), Some(bound), Some(garp)) = (
            get("last_reply_ns"),
            get("deadline_ns"),
            get("decision_ns"),
            get("vip_bound_ns"),
            get("first_garp_ns"),
        ) else {
            return;
        };
        self.deadline.push(deadline - last);
        self.deadline_to_decision.push(decision - deadline);
        self.decision_to_bound.push(bound - decision);
        self.bound_to_garp.push(garp - bound);
        self.decision_to_garp.push(garp - decision);
        self.garp_to_answer
            .push(first_answer_ns as f64 / 1e6 - garp);
    }

    fn markdown(&self) -> String {
        let mut out = String::from(TABLE_HEAD);
        for (label, v) in [
            ("last reply → deadline (= dead-after)", &self.deadline),
            ("deadline → decision", &self.deadline_to_decision),
            ("decision → VIP bound (rtnetlink)", &self.decision_to_bound),
            ("VIP bound → first GARP", &self.bound_to_garp),
            ("**decision → first GARP**", &self.decision_to_garp),
            ("first GARP → first client answer", &self.garp_to_answer),
        ] {
            out += &Summary::row(label, Summary::of(v));
        }
        out
    }

    fn json(&self) -> Value {
        json!({
            "last_reply_to_deadline": Summary::json(Summary::of(&self.deadline)),
            "deadline_to_decision": Summary::json(Summary::of(&self.deadline_to_decision)),
            "decision_to_vip_bound": Summary::json(Summary::of(&self.decision_to_bound)),
            "vip_bound_to_first_garp": Summary::json(Summary::of(&self.bound_to_garp)),
            "decision_to_first_garp": Summary::json(Summary::of(&self.decision_to_garp)),
            "first_garp_to_first_answer": Summary::json(Summary::of(&self.garp_to_answer)),
        })
    }
}

pub fn bench(options: Options) -> Result<()> {
    if !util::is_root() {
        bail!("the benchmark builds network namespaces and loads XDP: run it as root");
    }
    let Options {
        quick,
        trials,
        soak_secs,
        json: json_path,
        only,
    } = options;
    let wanted = |section: Section| only.is_empty() || only.contains(&section);
    let trials = trials.unwrap_or(if quick { 5 } else { 20 });
    let soak_secs = soak_secs.unwrap_or(if quick { 30 } else { 600 });
    prerequisites::ensure_bench_tools()?;
    let bin = build::build(build::Options { release: true })?;
    interrupt::install()?;
    let started = Instant::now();
    let mut md = String::new();
    let mut js =
        json!({"machine": machine(), "trials": trials, "soak_secs": soak_secs, "quick": quick});

    if wanted(Section::Modes) || wanted(Section::Ipv6) {
        // 1 + 2 + 5: outage by failure mode, where the time goes, failback;
        // the IPv6 cable pull beside the IPv4 modes, in the same run.
        let mut runs = Vec::new();
        if wanted(Section::Modes) {
            for fault in [
                Fault::CablePull,
                Fault::Freeze,
                Fault::Unhealthy,
                Fault::Stopped,
            ] {
                runs.push((Family::V4, fault));
            }
        }
        runs.push((Family::V6, Fault::CablePull));
        let mut breakdown_md = String::new();
        let mut breakdown_json = serde_json::Map::new();
        let mut dual = Vec::new();
        let mut failback_outage = Vec::new();
        let mut client_both = Vec::new();
        let mut by_mode = String::from(TABLE_HEAD);
        let mut failback_by_mode = String::from(TABLE_HEAD);
        let mut modes_json = serde_json::Map::new();
        for (family, fault) in runs {
            let label = mode_label(family, fault);
            let key = mode_key(family, fault);
            eprintln!("{} {label}: {trials} trials", util::TAG);
            let result = run_mode(&bin, family, fault, trials);
            let run = match (family, result) {
                (_, Ok(run)) => run,
                (Family::V4, Err(e)) => return Err(e),
                // An IPv6 failure (a daemon without IPv6, a lab without
                // it) costs its row, not the IPv4 numbers beside it.
                (Family::V6, Err(e)) => {
                    interrupt::check()?;
                    eprintln!("{} {label} failed: {e:#}", util::TAG);
                    // The whole chain on one line: the first line alone
                    // ("did not start:") would hide why.
                    let why: String = format!("{e:#}")
                        .split_whitespace()
                        .collect::<Vec<_>>()
                        .join(" ")
                        .replace('|', "/")
                        .chars()
                        .take(300)
                        .collect();
                    writeln!(by_mode, "| {label} | **failed:** {why} | | | | |")?;
                    modes_json.insert(key, json!({"error": format!("{e:#}")}));
                    continue;
                }
            };
            let ModeRun {
                outages,
                dual: mode_dual,
                client_both: mode_both,
                gap: mode_gap,
                breakdown: mode_breakdown,
            } = run;
            // Section 5's totals stay over the IPv4 modes, comparable with
            // earlier runs; the IPv6 failback has its own rows.
            if family == Family::V4 {
                dual.extend_from_slice(&mode_dual);
                client_both.extend_from_slice(&mode_both);
                failback_outage.extend_from_slice(&mode_gap);
            }
            let summary = Summary::of(&outages);
            by_mode += &Summary::row(&label, summary);
            breakdown_md += &format!("\n**{label}** ({} takeovers)\n\n", outages.len());
            breakdown_md += &mode_breakdown.markdown();
            breakdown_json.insert(key.clone(), mode_breakdown.json());
            failback_by_mode +=
                &Summary::row(&format!("{label}: both bound"), Summary::of(&mode_dual));
            failback_by_mode +=
                &Summary::row(&format!("{label}: client gap"), Summary::of(&mode_gap));
            modes_json.insert(
                key,
                json!({
                    "outage": Summary::json(summary),
                    "samples_ms": outages,
                    "failback_dual_bound_samples_ms": mode_dual,
                    "failback_client_gap_samples_ms": mode_gap,
                }),
            );
        }
        writeln!(
            md,
            "## 1. Client outage by failure mode (default settings: 2 ms interval, 10 ms dead-after)\n"
        )?;
        writeln!(
            md,
            "Outage = failure injected → first answer from the backup, seen by a client sending every 0.2 ms. \
             The health gate checks every 20 ms and needs 2 failures, so its row includes that detection time. \
             For the cable pull and the freeze, the failure instant is the later of the injection start and the \
             client's last answer from the master (the freeze is an nftables rule whose command takes a few ms \
             to apply); a stopped `vipwatch master` hands over on purpose (probe gate closed on SIGTERM). \
             The IPv6 row is the same cable pull in the same run with the lab in 2001:db8::/64 and the VIP \
             2001:db8::100/64: ICMPv6 probes, unsolicited Neighbour Advertisements instead of gratuitous ARP, \
             the same number of trials and the same target.\n"
        )?;
        md += &by_mode;
        js["outage_by_mode"] = Value::Object(modes_json);

        writeln!(
            md,
            "\n## 2. Where the time goes, for each takeover (from the backup's own timeline)\n"
        )?;
        writeln!(
            md,
            "Timeline stamps are CLOCK_MONOTONIC: the master's last reply is the XDP program's \
             `bpf_ktime_get_ns()`, the others are the daemon's, the client's first answer is the client's \
             receive time, all on the same clock."
        )?;
        md += &breakdown_md;
        js["breakdown"] = Value::Object(breakdown_json);

        // 5: failback.
        writeln!(
            md,
            "\n## 5. Failback (on-claim), over all IPv4 trials of section 1\n"
        )?;
        writeln!(
            md,
            "Both bound = the time both hosts had the VIP bound, from the daemons' own CLOCK_MONOTONIC timestamps \
             (master reachable again with the VIP, or master re-bound it → backup released it). Client saw both = \
             how long the client got answers from both hosts. Client gap = the longest stretch without any answer \
             after the repair.\n"
        )?;
        if wanted(Section::Modes) {
            md += TABLE_HEAD;
            md += &Summary::row("both hosts bound the VIP", Summary::of(&dual));
            md += &Summary::row("client answered by both", Summary::of(&client_both));
            md += &Summary::row("client gap during failback", Summary::of(&failback_outage));
        }
        md += "\nBy failure mode (the repair: cable plugged back, freeze lifted, health restored, master \
               restarted), IPv6 included:\n\n";
        md += &failback_by_mode;
        js["failback"] = json!({
            "dual_bound": Summary::json(Summary::of(&dual)),
            "client_answered_by_both": Summary::json(Summary::of(&client_both)),
            "client_gap": Summary::json(Summary::of(&failback_outage)),
        });
    }

    if wanted(Section::Sweep) {
        // 3: interval sweep.
        writeln!(
            md,
            "\n## 3. Interval sweep (cable pull, dead-after = 5 intervals)\n"
        )?;
        writeln!(
            md,
            "CPU = backup daemon user+sys time per second of wall time while standing by (sum_exec_runtime from \
             /proc/PID/schedstat), in % of one core. Reference loop = the least any prober can do: a thread that \
             sleeps to an absolute deadline and sends one ICMP echo per interval, nothing else, measured the same \
             way in the same lab (on veth, both include the master's reply processing, which runs in the sender's \
             softirq context).\n"
        )?;
        md += "| interval | dead-after | n | outage median ms | outage p99 ms | backup CPU % | reference loop CPU % |\n|---:|---:|---:|---:|---:|---:|---:|\n";
        let sweep_trials = if quick { 3 } else { trials.div_ceil(2).max(5) };
        let cpu_secs = if quick { 3 } else { 10 };
        let mut sweep_json = Vec::new();
        for interval_us in [500u64, 1000, 2000, 5000, 10000] {
            interrupt::check()?;
            eprintln!(
                "{} interval {} µs: {sweep_trials} trials",
                util::TAG,
                interval_us
            );
            let mut opts = ScenarioOptions::new(&format!("sw{interval_us}"), bin.clone());
            opts.backup_args = vec![
                "--interval".into(),
                format!("{interval_us}us"),
                "--dead-after".into(),
                format!("{}us", interval_us * 5),
            ];
            let mut s = Scenario::start(opts)?;
            let cpu = backup_cpu(&s.backup, Duration::from_secs(cpu_secs))?;
            let floor = reference_cpu(
                &s.lab,
                Duration::from_micros(interval_us),
                Duration::from_secs(cpu_secs),
            )?;
            let mut outages = Vec::new();
            for trial in 0..sweep_trials {
                interrupt::check()?;
                std::thread::sleep(Duration::from_micros(
                    200 + (trial as u64 * 379) % interval_us.max(1),
                ));
                let t0 = s.inject(Fault::CablePull)?;
                let t = s.await_takeover(Fault::CablePull, t0, Duration::from_secs(10))?;
                outages.push(ms(t.outage));
                let r = s.repair(Fault::CablePull)?;
                s.await_failback(Fault::CablePull, r, Duration::from_secs(10))?;
                s.wait_state("STANDBY", Duration::from_secs(10))?;
                std::thread::sleep(Duration::from_millis(200));
            }
            let sum = Summary::of(&outages);
            let (med, p99) = sum.map_or((f64::NAN, f64::NAN), |s| (s.median, s.p99));
            writeln!(
                md,
                "| {:.1} ms | {:.1} ms | {} | {med:.2} | {p99:.2} | {cpu:.2} | {floor:.2} |",
                interval_us as f64 / 1000.0,
                interval_us as f64 * 5.0 / 1000.0,
                outages.len()
            )?;
            sweep_json.push(json!({"interval_us": interval_us, "dead_after_us": interval_us * 5, "outage": Summary::json(sum), "backup_cpu_pct": cpu, "reference_loop_cpu_pct": floor}));
        }
        js["interval_sweep"] = Value::Array(sweep_json);
    }

    if wanted(Section::Soak) {
        // 4: false-takeover soak.
        interrupt::check()?;
        eprintln!(
            "{} soak: {soak_secs} s with 1 % loss and a CPU hog",
            util::TAG
        );
        let soak = soak(&bin, Duration::from_secs(soak_secs))?;
        writeln!(
            md,
            "\n## 4. False-takeover soak ({soak_secs} s, default settings)\n"
        )?;
        writeln!(
            md,
            "Master alive; 1 % random loss on every frame crossing the bridge (both directions, so ~2 % of probes \
             unanswered); two busy-loop processes (one per core) in the backup's namespace. This kernel has no \
             netem, so there is no delay jitter: the CPU hog is the jitter source (it delays the daemon, not the \
             packets).\n"
        )?;
        writeln!(
            md,
            "| false takeovers | probes | replies | loss % | longest reply silence ms | closest call ms | longest gap between our probes ms | deferred deadlines |"
        )?;
        writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|")?;
        writeln!(
            md,
            "| **{}** | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {} |",
            soak["takeovers"],
            soak["probes"],
            soak["replies"],
            soak["loss_pct"].as_f64().unwrap_or(f64::NAN),
            soak["max_gap_ms"].as_f64().unwrap_or(f64::NAN),
            soak["closest_call_ms"].as_f64().unwrap_or(f64::NAN),
            soak["max_probe_gap_ms"].as_f64().unwrap_or(f64::NAN),
            soak["deferred"]
        )?;
        writeln!(
            md,
            "\nClosest call = dead-after − the longest silence between two replies of the live master (from the \
             kernel's gap tracker). A silence is only a death if enough probes went out during it: a longest gap \
             between our own probes close to the longest reply silence means the silence was ours (the daemon \
             was starved by the hog), which the detector excuses (\"deferred deadlines\")."
        )?;
        js["soak"] = soak;
    }

    if wanted(Section::Baseline) {
        // 6: baseline.
        interrupt::check()?;
        let baseline_trials = if quick { 2 } else { 3 };
        eprintln!("{} baseline ping loop: {baseline_trials} trials", util::TAG);
        let mut base = Vec::new();
        for trial in 0..baseline_trials {
            interrupt::check()?;
            base.push(ms(baseline_trial(trial)?));
        }
        writeln!(
            md,
            "\n## 6. Baseline: the classic ping-loop script, same lab, same cable pull\n"
        )?;
        writeln!(
            md,
            "`while sleep 5; do ping -c 3 -W 1 master || {{ ip addr add VIP; arping -U -c 3 VIP; break; }}; done` on the \
             backup; the master binds the VIP with `ip addr add` + `arping -U`.\n"
        )?;
        md += TABLE_HEAD;
        md += &Summary::row("ping-loop outage (cable pull)", Summary::of(&base));
        js["baseline"] = json!({"outage": Summary::json(Summary::of(&base)), "samples_ms": base});
    }

    // 7: many instances.
    if wanted(Section::Scaling) {
        let (section, data) = or_failure("7. Many instances", scaling::run(&bin, quick, trials))?;
        md += &section;
        js["scaling"] = data;
    }

    // 8: TCP clients and the kick.
    if wanted(Section::Tcp) {
        let (section, data) = or_failure("8. What a TCP client sees", tcp::run(&bin, quick))?;
        md += &section;
        js["tcp"] = data;
    }

    // 9: attacks during a soak.
    if wanted(Section::Attack) {
        eprintln!(
            "{} attacks: {soak_secs} s soak with forged claims and replays",
            util::TAG
        );
        let (section, data) = or_failure(
            "9. Attacks",
            attack::run(&bin, Duration::from_secs(soak_secs), quick),
        )?;
        md += &section;
        js["attack"] = data;
    }

    let sections: String = only
        .iter()
        .map(|s| format!(" --only {}", format!("{s:?}").to_lowercase()))
        .collect();
    let header = format!(
        "# vipwatch benchmark\n\n{}\n\nRun: `cargo xtask bench{}{sections}` ({} trials per mode), {:.0} s in all.\n\n",
        machine_markdown(),
        if quick { " --quick" } else { "" },
        trials,
        started.elapsed().as_secs_f64()
    );
    let report = header + &md;
    println!("{report}");
    if let Some(path) = json_path {
        fs::write(&path, serde_json::to_string_pretty(&js)?)
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("{} JSON written to {}", util::TAG, path.display());
    }
    Ok(())
}

/// What one failure mode's trials measured.
struct ModeRun {
    outages: Vec<f64>,
    dual: Vec<f64>,
    client_both: Vec<f64>,
    gap: Vec<f64>,
    breakdown: Breakdown,
}

/// `trials` takeovers and failbacks of `fault` in one scenario over
/// `family`.
fn run_mode(bin: &std::path::Path, family: Family, fault: Fault, trials: usize) -> Result<ModeRun> {
    let tag = match family {
        Family::V4 => format!("bench{}", mode_tag(fault)),
        Family::V6 => format!("bench{}6", mode_tag(fault)),
    };
    let mut opts = ScenarioOptions::new(&tag, bin.to_path_buf());
    opts.family = family;
    if fault == Fault::Unhealthy {
        opts.health = true;
        opts.master_args = health_args();
    }
    let mut s = Scenario::start(opts)?;
    let mut run = ModeRun {
        outages: Vec::new(),
        dual: Vec::new(),
        client_both: Vec::new(),
        gap: Vec::new(),
        breakdown: Breakdown::default(),
    };
    for trial in 0..trials {
        interrupt::check()?;
        // Break at a random phase of the probe interval.
        std::thread::sleep(Duration::from_micros(200 + (trial as u64 * 379) % 2000));
        let t0 = s.inject(fault)?;
        let t = s
            .await_takeover(fault, t0, Duration::from_secs(10))
            .with_context(|| format!("trial {trial}\n{}", s.logs()))?;
        run.outages.push(ms(t.outage));
        run.breakdown
            .add(&t.stats["last_takeover"], t.first_answer_ns);
        let r = s.repair(fault)?;
        let fb = s.await_failback(fault, r, Duration::from_secs(10))?;
        run.dual.push(ms(fb.dual_bound));
        run.client_both.push(ms(fb.client_both));
        run.gap.push(ms(fb.client_outage));
        s.wait_state("STANDBY", Duration::from_secs(10))?;
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(run)
}

/// A mode's row label: the IPv4 modes as before, the IPv6 one marked.
fn mode_label(family: Family, fault: Fault) -> String {
    match family {
        Family::V4 => fault.describe().to_owned(),
        Family::V6 => format!("{} (IPv6 VIP)", fault.describe()),
    }
}

/// A mode's key in the JSON report (`cable`, …, `cable_ipv6`).
fn mode_key(family: Family, fault: Fault) -> String {
    match family {
        Family::V4 => mode_tag(fault).to_owned(),
        Family::V6 => format!("{}_ipv6", mode_tag(fault)),
    }
}

fn mode_tag(fault: Fault) -> &'static str {
    match fault {
        Fault::CablePull => "cable",
        Fault::Freeze => "freeze",
        Fault::Unhealthy => "health",
        Fault::Stopped => "stop",
    }
}

/// Health gate settings used for the "unhealthy" mode.
fn health_args() -> Vec<String> {
    [
        "--health-interval",
        "20ms",
        "--health-fall",
        "2",
        "--health-rise",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The backup daemon's CPU time over `window`, in % of one core: the
/// `sum_exec_runtime` of all its threads (the instances run on threads of
/// their own) from /proc/PID/task/*/schedstat (user + system, in ns, so
/// finer than the 10 ms ticks of /proc/PID/stat).
fn backup_cpu(backup: &Proc, window: Duration) -> Result<f64> {
    let read = || -> Result<u64> {
        let mut total = 0;
        for task in fs::read_dir(format!("/proc/{}/task", backup.pid()))? {
            // A thread may end between the listing and the read.
            let Ok(stat) = fs::read_to_string(task?.path().join("schedstat")) else {
                continue;
            };
            total += stat
                .split_whitespace()
                .next()
                .context("empty schedstat")?
                .parse::<u64>()?;
        }
        Ok(total)
    };
    let (a, t0) = (read()?, Instant::now());
    std::thread::sleep(window);
    let (b, t1) = (read()?, Instant::now());
    Ok(b.saturating_sub(a) as f64 / 1e9 / (t1 - t0).as_secs_f64() * 100.0)
}

/// The floor under any prober on this machine: a thread that only sleeps
/// to an absolute deadline and sends one ICMP echo request to the master
/// per interval (no BPF, no detector, no status), in the backup's
/// namespace. Its thread CPU time includes, as the daemon's does, the
/// softirq work the veth pair runs in the sender's context (the master's
/// reply included).
fn reference_cpu(lab: &Lab, interval: Duration, window: Duration) -> Result<f64> {
    lab.in_netns("backup", move || -> Result<f64> {
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        // SAFETY: zeroed sockaddr_in is valid; fields set below.
        let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from_ne_bytes(MASTER.parse::<Ipv4Addr>()?.octets());
        let now = |clock| {
            // SAFETY: zeroed timespec is a valid out-parameter.
            let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
            // SAFETY: valid clock id and pointer.
            unsafe { libc::clock_gettime(clock, &mut ts) };
            ts
        };
        let ns = |ts: libc::timespec| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
        let cpu0 = ns(now(libc::CLOCK_THREAD_CPUTIME_ID));
        let start = ns(now(libc::CLOCK_MONOTONIC));
        let step = interval.as_nanos() as u64;
        let ticks = (window.as_nanos() as u64 / step).max(1);
        for seq in 0..ticks {
            let due = start + (seq + 1) * step;
            let ts = libc::timespec {
                tv_sec: (due / 1_000_000_000) as libc::time_t,
                tv_nsec: (due % 1_000_000_000) as libc::c_long,
            };
            // SAFETY: valid timespec; absolute sleep on CLOCK_MONOTONIC.
            unsafe {
                libc::clock_nanosleep(
                    libc::CLOCK_MONOTONIC,
                    libc::TIMER_ABSTIME,
                    &ts,
                    std::ptr::null_mut(),
                )
            };
            let mut pkt = [0u8; 36];
            pkt[0] = 8;
            pkt[4..6].copy_from_slice(&0x5a5au16.to_be_bytes());
            pkt[6..8].copy_from_slice(&(seq as u16).to_be_bytes());
            let sum = checksum(&pkt);
            pkt[2..4].copy_from_slice(&sum.to_be_bytes());
            // SAFETY: pkt and to are valid for their lengths.
            unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&raw const to).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
        }
        let cpu = ns(now(libc::CLOCK_THREAD_CPUTIME_ID)) - cpu0;
        let wall = ns(now(libc::CLOCK_MONOTONIC)) - start;
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        Ok(cpu as f64 / wall as f64 * 100.0)
    })?
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn soak(bin: &std::path::Path, duration: Duration) -> Result<Value> {
    let s = Scenario::start(ScenarioOptions::new("soak", bin.to_path_buf()))?;
    s.lab.loss(1)?;
    let hogs: Vec<Proc> = (0..2)
        .map(|_| s.lab.spawn("backup", "sh", ["-c", "while :; do :; done"]))
        .collect::<Result<_>>()?;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        interrupt::check()?;
        std::thread::sleep(
            Duration::from_millis(500).min(end.saturating_duration_since(Instant::now())),
        );
    }
    let st = s.backup_stats()?;
    drop(hogs);
    let dead_after = st["dead_after_ms"].as_f64().unwrap_or(f64::NAN);
    let gap = st["master"]["max_gap_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "takeovers": st["takeovers"],
        "probes": st["master"]["probes_sent"],
        "replies": st["master"]["replies"],
        "loss_pct": st["master"]["loss_pct"],
        "max_gap_ms": gap,
        "closest_call_ms": dead_after - gap,
        "max_probe_gap_ms": st["max_probe_gap_ms"],
        "deferred": st["deferred"],
    }))
}

/// One cable pull against the classic scripts: master.sh binds the VIP and
/// arpings; backup.sh pings every 5 s and takes over on failure.
fn baseline_trial(trial: usize) -> Result<Duration> {
    let lab = Lab::builder(&format!("base{trial}"))
        .host("master", &format!("{MASTER}/24"))
        .host("backup", &format!("{BACKUP}/24"))
        .host("client", &format!("{}/24", scenario::CLIENT))
        .build()?;
    let _servers = [
        EchoServer::start(&lab, "master", ECHO_PORT, "master")?,
        EchoServer::start(&lab, "backup", ECHO_PORT, "backup")?,
    ];
    lab.run(
        "master",
        "sh",
        [
            "-c",
            &format!("ip addr add {VIP_CIDR} dev eth0 && arping -q -U -c 3 -I eth0 {VIP}"),
        ],
    )?;
    let client = Client::builder(
        SocketAddrV4::new(VIP.parse::<Ipv4Addr>()?, ECHO_PORT),
        Duration::from_micros(200),
    )
    .max_duration(Duration::from_secs(120))
    .start(&lab, "client")?;
    client.wait_for_answer_from("master", Instant::now(), Duration::from_secs(10))?;
    let script = format!(
        "while :; do if ! ping -q -c 3 -W 1 {MASTER} >/dev/null 2>&1; then ip addr add {VIP_CIDR} dev eth0; \
         arping -q -U -c 3 -I eth0 {VIP}; echo TOOK_OVER; exit 0; fi; sleep 5; done"
    );
    let backup = lab.spawn("backup", "sh", ["-c", &script])?;
    // Pull the cable at a random point of the script's 5 s cycle.
    std::thread::sleep(Duration::from_millis(1000 + (trial as u64 * 1777) % 5000));
    let t0 = Instant::now();
    lab.link_down("master")?;
    let answer = client
        .wait_for_answer_from("backup", t0, Duration::from_secs(30))
        .with_context(|| format!("the ping-loop backup never took over:\n{}", backup.output()))?;
    Ok(answer.received_at.saturating_duration_since(t0))
}

fn machine() -> Value {
    json!({
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model(),
        "mem_total": fs::read_to_string("/proc/meminfo").ok().and_then(|m| m.lines().next().map(str::to_owned)),
    })
}

fn machine_markdown() -> String {
    format!(
        "Machine: {} CPU(s) ({}), Linux {}, network: veth pairs on a Linux bridge in network namespaces (XDP in driver mode on veth).",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model(),
        read_trim("/proc/sys/kernel/osrelease")
    )
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn read_trim(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
