//! Section 7: many instances in one process. N backup instances on one
//! interface, one per master (N masters in the lab, each holding its VIP
//! the `master.sh` way); the backup's CPU while standing by, and the
//! cable-pull outage of one instance while the other N-1 run.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use vipwatch_tests::{Client, EchoServer, Lab, Proc, wait_until};

use super::{Summary, backup_cpu, ms};
use crate::{interrupt, util};

const PORT: u16 = 7007;

fn master_ip(k: usize) -> String {
    format!("192.0.2.{k}")
}

fn vip(k: usize) -> String {
    format!("203.0.113.{k}")
}

pub(super) fn run(bin: &std::path::Path, quick: bool, trials: usize) -> Result<(String, Value)> {
    let mut md = String::from(
        "\n## 7. Many instances in one process (issue \"One daemon for every VIP\")\n\n",
    );
    md += "N backup instances in one `vipwatch run --config` on one interface, one per master (N masters \
           in the lab, each with its VIP bound the `master.sh` way), defaults (2 ms probes, 10 ms dead-after). \
           CPU = the backup process's user+sys time per second of wall time while all stand by (schedstat), \
           in % of one core. Outage = cable pull of master 1 → first answer from the backup to a client of \
           VIP 1 (every 0.2 ms), while the other N-1 instances keep probing.\n\n";
    md += "| instances | probes/s | backup CPU % | CPU % per instance | outage n | outage median ms | outage p99 ms | outage max ms |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    let trials = if quick { 5 } else { trials.max(10) };
    let cpu_window = Duration::from_secs(if quick { 3 } else { 10 });
    let mut rows = Vec::new();
    for n in [1usize, 10, 50] {
        interrupt::check()?;
        eprintln!("{} {n} instances: {trials} cable pulls", util::TAG);
        let (cpu, outages) = measure(bin, n, trials, cpu_window)?;
        let s = Summary::of(&outages);
        let (med, p99, max) =
            s.map_or((f64::NAN, f64::NAN, f64::NAN), |s| (s.median, s.p99, s.max));
        writeln!(
            md,
            "| {n} | {} | {cpu:.2} | {:.3} | {} | {med:.2} | {p99:.2} | {max:.2} |",
            n * 500,
            cpu / n as f64,
            outages.len()
        )?;
        rows.push(json!({
            "instances": n,
            "probes_per_s": n * 500,
            "backup_cpu_pct": cpu,
            "outage": Summary::json(s),
            "samples_ms": outages,
        }));
    }
    Ok((md, Value::Array(rows)))
}

fn measure(
    bin: &std::path::Path,
    n: usize,
    trials: usize,
    cpu_window: Duration,
) -> Result<(f64, Vec<f64>)> {
    let mut builder = Lab::builder(&format!("scale{n}"));
    for k in 1..=n {
        builder = builder.host(&format!("m{k}"), &format!("{}/24", master_ip(k)));
    }
    let lab = builder
        .host("backup", "192.0.2.200/24")
        .host("client", "192.0.2.250/24")
        .host("client", "203.0.113.250/24")
        .build()?;
    for k in 1..=n {
        lab.add_address(&format!("m{k}"), &format!("{}/24", vip(k)))?;
    }
    let _servers = [
        EchoServer::start(&lab, "m1", PORT, "master")?,
        EchoServer::start(&lab, "backup", PORT, "backup")?,
    ];
    let config = std::env::temp_dir().join(format!("{}scale.toml", lab.prefix()));
    let mut text = String::new();
    for k in 1..=n {
        write!(
            text,
            "[[instance]]\nname = \"i{k}\"\nrole = \"backup\"\niface = \"eth0\"\nvip = \"{}/24\"\nmaster = \"{}\"\n\n",
            vip(k),
            master_ip(k)
        )?;
    }
    std::fs::write(&config, text)?;
    let result = (|| -> Result<(f64, Vec<f64>)> {
        let backup = lab.spawn(
            "backup",
            bin,
            ["run", "--config", &config.display().to_string()],
        )?;
        backup.wait_for_line("XDP attached", Duration::from_secs(20))?;
        wait_all_standby(&lab, bin, n, &backup)?;
        let cpu = backup_cpu(&backup, cpu_window)?;
        let client = Client::builder(
            SocketAddrV4::new(vip(1).parse::<Ipv4Addr>()?, PORT),
            Duration::from_micros(200),
        )
        .max_duration(Duration::from_secs(3600))
        .start(&lab, "client")?;
        client.wait_for_answer_from("master", Instant::now(), Duration::from_secs(10))?;
        let mut outages = Vec::new();
        for trial in 0..trials {
            interrupt::check()?;
            std::thread::sleep(Duration::from_micros(200 + (trial as u64 * 379) % 2000));
            let t0 = Instant::now();
            lab.link_down("m1")?;
            let answer = client
                .wait_for_answer_from("backup", t0, Duration::from_secs(10))
                .with_context(|| format!("no takeover with {n} instances\n{}", backup.output()))?;
            // As in section 1: the fault is when the master last answered,
            // if the command that pulls the cable took longer than that.
            let rec = client.snapshot();
            let fault_at = rec
                .answers_from("master")
                .map(|a| a.received_at)
                .filter(|t| *t < answer.received_at)
                .max()
                .map_or(t0, |last| last.max(t0));
            outages.push(ms(answer.received_at.saturating_duration_since(fault_at)));
            let t1 = Instant::now();
            lab.link_up("m1")?;
            client
                .wait_for_answer_from("master", t1, Duration::from_secs(10))
                .with_context(|| format!("no failback with {n} instances\n{}", backup.output()))?;
            wait_until("i1 stands by again", Duration::from_secs(10), || {
                Ok(states(&lab, bin)?
                    .iter()
                    .any(|(name, s)| name == "i1" && s == "STANDBY"))
            })?;
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok((cpu, outages))
    })();
    if let Err(e) = std::fs::remove_file(&config) {
        eprintln!("{} could not remove {}: {e}", util::TAG, config.display());
    }
    result
}

/// (instance, state) of every backup instance on the backup host.
fn states(lab: &Lab, bin: &std::path::Path) -> Result<Vec<(String, String)>> {
    let out = lab.output("backup", bin, ["stats", "--json"], Duration::from_secs(10))?;
    if !out.status.success() {
        bail!("stats: {}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)?;
            Ok((
                v["instance"].as_str().unwrap_or_default().to_owned(),
                v["state"].as_str().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
}

fn wait_all_standby(lab: &Lab, bin: &std::path::Path, n: usize, backup: &Proc) -> Result<()> {
    wait_until(
        &format!("{n} instances stand by"),
        Duration::from_secs(20),
        || {
            let s = states(lab, bin)?;
            Ok(s.len() == n && s.iter().all(|(_, st)| st == "STANDBY"))
        },
    )
    .with_context(|| backup.output())?;
    Ok(())
}
