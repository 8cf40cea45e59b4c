//! The failover scenario shared by the end-to-end tests, `cargo xtask demo`
//! and `cargo xtask bench`: a master and a backup running vipwatch, an echo
//! service on both, and a client sending to the VIP every 200 µs and
//! recording who answers.
//!
//! Tests bound the numbers generously; the demo prints them; the benchmark
//! repeats them and reports distributions. One implementation, so all three
//! measure the same thing.
//!
//! The scenario runs over IPv4 (the constants below, the default) or IPv6
//! ([`Family::V6`], the constants in [`v6`]): same hosts, same flags, same
//! measurements, only the addresses differ.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Client, EchoServer, Lab, Proc, clock, require_root, wait_until};

pub const MASTER: &str = "192.0.2.1";
pub const BACKUP: &str = "192.0.2.2";
pub const CLIENT: &str = "192.0.2.10";
pub const GATEWAY: &str = "192.0.2.254";
pub const VIP: &str = "192.0.2.100";
pub const VIP_CIDR: &str = "192.0.2.100/24";
pub const ECHO_PORT: u16 = 7007;

/// The IPv6 lab's addresses, in the documentation prefix (RFC 3849), one
/// /64 like the IPv4 lab's one /24.
pub mod v6 {
    pub const MASTER: &str = "2001:db8::1";
    pub const BACKUP: &str = "2001:db8::2";
    pub const CLIENT: &str = "2001:db8::10";
    pub const GATEWAY: &str = "2001:db8::fe";
    pub const VIP: &str = "2001:db8::100";
    pub const VIP_CIDR: &str = "2001:db8::100/64";
    pub const PREFIX_LEN: u8 = 64;
}

/// The address family a scenario runs over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Family {
    /// The lab in 192.0.2.0/24 ([`MASTER`], [`VIP`], …), IPv6 disabled.
    #[default]
    V4,
    /// The lab in 2001:db8::/64 ([`v6::MASTER`], [`v6::VIP`], …), IPv6
    /// enabled in every namespace.
    V6,
}

impl Family {
    pub fn master(self) -> &'static str {
        match self {
            Self::V4 => MASTER,
            Self::V6 => v6::MASTER,
        }
    }

    pub fn backup(self) -> &'static str {
        match self {
            Self::V4 => BACKUP,
            Self::V6 => v6::BACKUP,
        }
    }

    pub fn client(self) -> &'static str {
        match self {
            Self::V4 => CLIENT,
            Self::V6 => v6::CLIENT,
        }
    }

    /// The bridge's address: a neutral witness on the LAN.
    pub fn gateway(self) -> &'static str {
        match self {
            Self::V4 => GATEWAY,
            Self::V6 => v6::GATEWAY,
        }
    }

    /// The VIP without its prefix length.
    pub fn vip(self) -> &'static str {
        match self {
            Self::V4 => VIP,
            Self::V6 => v6::VIP,
        }
    }

    /// The VIP as `--vip` takes it.
    pub fn vip_cidr(self) -> &'static str {
        match self {
            Self::V4 => VIP_CIDR,
            Self::V6 => v6::VIP_CIDR,
        }
    }

    /// The VIP as an address.
    pub fn vip_ip(self) -> IpAddr {
        self.vip().parse().expect("the VIP constants are addresses")
    }

    /// The LAN's prefix length.
    pub fn prefix_len(self) -> u8 {
        match self {
            Self::V4 => 24,
            Self::V6 => v6::PREFIX_LEN,
        }
    }

    /// `addr` with the LAN's prefix length, as the lab builder takes it.
    pub fn cidr(self, addr: &str) -> String {
        format!("{addr}/{}", self.prefix_len())
    }

    /// `"IPv4"` or `"IPv6"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }
}

/// How the master fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Its link goes down (the cable is pulled).
    CablePull,
    /// All its traffic is dropped upstream (the host hangs).
    Freeze,
    /// Its service health check starts failing.
    Unhealthy,
    /// `vipwatch master` is stopped (planned maintenance): it hands over.
    Stopped,
}

impl Fault {
    pub fn describe(self) -> &'static str {
        match self {
            Self::CablePull => "master cable pulled",
            Self::Freeze => "master frozen (all its frames dropped)",
            Self::Unhealthy => "master service unhealthy",
            Self::Stopped => "vipwatch master stopped",
        }
    }
}

pub struct Options {
    pub tag: String,
    /// The vipwatch binary to run.
    pub bin: PathBuf,
    /// Extra `vipwatch backup` arguments.
    pub backup_args: Vec<String>,
    /// Extra `vipwatch master` arguments.
    pub master_args: Vec<String>,
    /// Give the master a health check (a file that must exist).
    pub health: bool,
    /// The client's send interval.
    pub client_interval: Duration,
    /// Print every daemon log line live.
    pub echo: bool,
    /// The address family of the lab, the VIP and the client (default
    /// IPv4).
    pub family: Family,
}

impl Options {
    pub fn new(tag: &str, bin: PathBuf) -> Self {
        Self {
            tag: tag.to_owned(),
            bin,
            backup_args: Vec::new(),
            master_args: Vec::new(),
            health: false,
            client_interval: Duration::from_micros(200),
            echo: false,
            family: Family::V4,
        }
    }
}

/// What a client saw of one takeover, and what the backup recorded.
#[derive(Debug)]
pub struct Takeover {
    pub fault: Fault,
    /// When the fault took effect (see [`Scenario::await_takeover`]).
    pub injected: Instant,
    /// Failure injection → first answer from the backup.
    pub outage: Duration,
    /// `vipwatch stats --json` of the backup right after.
    pub stats: Value,
    /// Backup's first client answer, CLOCK_MONOTONIC ns.
    pub first_answer_ns: u64,
}

/// What happened when the master came back.
#[derive(Debug)]
pub struct Failback {
    pub repaired: Instant,
    /// How long both hosts had the VIP bound, from the daemons' own
    /// timestamps: master reachable with the VIP → backup released it.
    pub dual_bound: Duration,
    /// How long the client got answers from both (split brain as seen from
    /// outside).
    pub client_both: Duration,
    /// The longest stretch without any answer after the repair.
    pub client_outage: Duration,
}

pub struct Scenario {
    pub lab: Lab,
    pub master: Option<Proc>,
    pub backup: Proc,
    pub client: Client,
    _servers: Vec<EchoServer>,
    health_file: Option<PathBuf>,
    opts: Options,
}

impl Scenario {
    /// Builds the lab, starts `vipwatch master` (holding the VIP), `vipwatch
    /// backup`, the echo services and the client, and waits until the
    /// master answers the client.
    pub fn start(opts: Options) -> Result<Self> {
        require_root()?;
        let fam = opts.family;
        let lab = Lab::builder(&opts.tag)
            .host("master", &fam.cidr(fam.master()))
            .host("backup", &fam.cidr(fam.backup()))
            .host("client", &fam.cidr(fam.client()))
            .gateway(&fam.cidr(fam.gateway()))
            .ipv6(fam == Family::V6)
            .echo_output(opts.echo)
            .build()?;
        let health_file = opts
            .health
            .then(|| std::env::temp_dir().join(format!("vipwatch-health-{}", lab.prefix())));
        if let Some(f) = &health_file {
            std::fs::write(f, b"ok").with_context(|| format!("creating {}", f.display()))?;
        }
        let echo = match fam {
            Family::V4 => EchoServer::start,
            Family::V6 => EchoServer::start_v6,
        };
        let servers = vec![
            echo(&lab, "master", ECHO_PORT, "master")?,
            echo(&lab, "backup", ECHO_PORT, "backup")?,
        ];
        let client = Client::builder(
            SocketAddr::new(fam.vip_ip(), ECHO_PORT),
            opts.client_interval,
        )
        .max_duration(Duration::from_secs(3600))
        .start(&lab, "client")?;
        let mut s = Self {
            master: None,
            backup: spawn_backup(&lab, &opts)?,
            lab,
            client,
            _servers: servers,
            health_file,
            opts,
        };
        s.start_master()?;
        s.wait_state("STANDBY", Duration::from_secs(10))?;
        s.client
            .wait_for_answer_from("master", Instant::now(), Duration::from_secs(10))
            .context("the client never reached the master through the VIP")?;
        Ok(s)
    }

    /// Starts (or restarts) `vipwatch master` and waits until it holds the
    /// VIP.
    pub fn start_master(&mut self) -> Result<()> {
        let vip_cidr = self.opts.family.vip_cidr();
        let mut args: Vec<String> = ["master", "--iface", "eth0", "--vip", vip_cidr]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some(f) = &self.health_file {
            args.push("--health-cmd".into());
            args.push(format!("test -f {}", f.display()));
        }
        args.extend(self.opts.master_args.iter().cloned());
        let p = self.lab.spawn("master", &self.opts.bin, &args)?;
        p.wait_for_line("state -> HOLDING", Duration::from_secs(10))
            .with_context(|| format!("vipwatch master did not claim the VIP:\n{}", p.output()))?;
        self.master = Some(p);
        Ok(())
    }

    /// The scenario's address family.
    pub fn family(&self) -> Family {
        self.opts.family
    }

    /// The VIP the client sends to.
    pub fn vip(&self) -> IpAddr {
        self.opts.family.vip_ip()
    }

    /// `vipwatch stats --json` of the backup.
    pub fn backup_stats(&self) -> Result<Value> {
        let out = self.lab.output(
            "backup",
            &self.opts.bin,
            ["stats", "--iface", "eth0", "--json"],
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!(
                "vipwatch stats failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("stats --json is not JSON")
    }

    /// Waits until the backup reports `state`.
    pub fn wait_state(&self, state: &str, timeout: Duration) -> Result<Value> {
        let mut last = Value::Null;
        wait_until(&format!("the backup is {state}"), timeout, || {
            Ok(match self.backup_stats() {
                Ok(st) => {
                    let ok = st["state"] == state;
                    last = st;
                    ok
                }
                Err(_) => false,
            })
        })
        .with_context(|| format!("last stats: {last}\nbackup log:\n{}", self.backup.output()))?;
        Ok(last)
    }

    /// Breaks the master; returns when it happened.
    pub fn inject(&self, fault: Fault) -> Result<Instant> {
        let t0 = Instant::now();
        match fault {
            Fault::CablePull => self.lab.link_down("master")?,
            Fault::Freeze => self.lab.blackhole("master")?,
            Fault::Unhealthy => {
                let f = self
                    .health_file
                    .as_ref()
                    .context("this scenario has no health check")?;
                std::fs::remove_file(f).with_context(|| format!("removing {}", f.display()))?;
            }
            Fault::Stopped => self
                .master
                .as_ref()
                .context("no master running")?
                .signal(crate::Signal::Term)?,
        }
        Ok(t0)
    }

    /// Waits for the client to be answered by the backup after `t0`.
    pub fn await_takeover(&self, fault: Fault, t0: Instant, timeout: Duration) -> Result<Takeover> {
        let answer = self
            .client
            .wait_for_answer_from("backup", t0, timeout)
            .with_context(|| {
                format!(
                    "no takeover after {}\nbackup log:\n{}",
                    fault.describe(),
                    self.backup.output()
                )
            })?;
        let stats = self.wait_state("ACTIVE", Duration::from_secs(5))?;
        // A cable pull or a freeze is applied by a command that takes a few
        // ms to run, and the master keeps answering until it has. The fault
        // instant is then the later of the injection start and the client's
        // last answer from the master (known to 0.2 ms, the client's
        // interval). A health failure or a stop starts at injection.
        let fault_at = match fault {
            Fault::CablePull | Fault::Freeze => {
                let rec = self.client.snapshot();
                rec.answers_from("master")
                    .map(|a| a.received_at)
                    .filter(|t| *t < answer.received_at)
                    .max()
                    .map_or(t0, |last| last.max(t0))
            }
            Fault::Unhealthy | Fault::Stopped => t0,
        };
        Ok(Takeover {
            fault,
            injected: fault_at,
            outage: answer.received_at.saturating_duration_since(fault_at),
            stats,
            first_answer_ns: clock::to_monotonic_ns(answer.received_at),
        })
    }

    /// Repairs the master; returns when it happened.
    pub fn repair(&mut self, fault: Fault) -> Result<Instant> {
        if fault == Fault::Stopped {
            // The old master finishes its handover, then a new one starts.
            if let Some(old) = self.master.take() {
                old.wait(Duration::from_secs(5))
                    .context("vipwatch master did not stop")?;
            }
        }
        let t = Instant::now();
        match fault {
            Fault::CablePull => self.lab.link_up("master")?,
            Fault::Freeze => self.lab.unblackhole("master")?,
            Fault::Unhealthy => {
                let f = self
                    .health_file
                    .as_ref()
                    .context("this scenario has no health check")?;
                std::fs::write(f, b"ok").with_context(|| format!("creating {}", f.display()))?;
            }
            Fault::Stopped => self.start_master()?,
        }
        Ok(t)
    }

    /// Waits until the backup has handed the VIP back and the client is
    /// answered by the master again.
    pub fn await_failback(
        &self,
        fault: Fault,
        repaired: Instant,
        timeout: Duration,
    ) -> Result<Failback> {
        let released = self
            .backup
            .wait_for_line_after("released", repaired, timeout)
            .with_context(|| {
                format!(
                    "the backup never released the VIP\nbackup log:\n{}",
                    self.backup.output()
                )
            })?;
        let released_ns = mono_ns(&released.text)?;
        // When did both hosts have the VIP? After a cable pull or a freeze
        // the master kept it bound all along, so from the repair; after a
        // health failure it re-binds it, so from its HOLDING line.
        let dual_from_ns = match fault {
            Fault::Unhealthy | Fault::Stopped => {
                let master = self.master.as_ref().context("no master")?;
                let holding = master.wait_for_line_after("state -> HOLDING", repaired, timeout)?;
                mono_ns(&holding.text)?
            }
            Fault::CablePull | Fault::Freeze => clock::to_monotonic_ns(repaired),
        };
        let answer = self
            .client
            .wait_for_answer_from("master", repaired, timeout)
            .context("the client never got back to the master")?;
        // Let the client record a little more before judging the window.
        std::thread::sleep(Duration::from_millis(100));
        let rec = self.client.snapshot();
        let end = answer.received_at + Duration::from_millis(100);
        Ok(Failback {
            repaired,
            dual_bound: Duration::from_nanos(released_ns.saturating_sub(dual_from_ns)),
            client_both: rec.answered_by_both_window("backup", "master", repaired, end),
            client_outage: rec.longest_gap(repaired, end).duration(),
        })
    }

    /// The backup's and master's logs, for failure messages.
    pub fn logs(&self) -> String {
        format!(
            "--- backup ---\n{}\n--- master ---\n{}",
            self.backup.output(),
            self.master.as_ref().map(Proc::output).unwrap_or_default()
        )
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if let Some(f) = &self.health_file
            && let Err(e) = std::fs::remove_file(f)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", f.display());
        }
    }
}

fn spawn_backup(lab: &Lab, opts: &Options) -> Result<Proc> {
    let fam = opts.family;
    let mut args: Vec<String> = [
        "backup",
        "--iface",
        "eth0",
        "--master",
        fam.master(),
        "--vip",
        fam.vip_cidr(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(opts.backup_args.iter().cloned());
    let p = lab.spawn("backup", &opts.bin, &args)?;
    p.wait_for_line("XDP attached", Duration::from_secs(10))
        .with_context(|| format!("vipwatch backup did not start:\n{}", p.output()))?;
    Ok(p)
}

/// The CLOCK_MONOTONIC ns a vipwatch log line carries (`mono_ns=...`).
pub fn mono_ns(line: &str) -> Result<u64> {
    line.rsplit_once("mono_ns=")
        .and_then(|(_, n)| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no mono_ns= in {line:?}"))
}
