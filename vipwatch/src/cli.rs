//! Command line: clap definitions, and turning the one-instance shorthands
//! (`vipwatch backup`, `vipwatch master`) into the same [`Instance`] a
//! configuration file describes, checked by the same rules.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    config::{self, Backup, Conn, Garp, Health, Instance, Master, Role, Vip, parse_duration},
    detector::Failback,
    ebpf::ModeArg,
};

/// Sub-second, XDP-accelerated failover of a virtual IP.
#[derive(Debug, Parser)]
#[command(name = "vipwatch", version, about, propagate_version = true)]
pub struct Cli {
    /// Log lines as text (with journald priorities under systemd) or JSON.
    #[arg(long, global = true, value_enum, default_value_t = crate::logging::Format::Text)]
    pub log_format: crate::logging::Format,
    #[command(subcommand)]
    pub command: Command,
}

/// A clap error as one line that names the argument: its first paragraph
/// (clap puts the argument on the following lines of some errors, e.g. the
/// list of missing required arguments), joined; usage and tips dropped.
pub fn error_line(rendered: &str) -> String {
    let line = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    if line.is_empty() {
        "error: bad arguments; see --help".to_owned()
    } else {
        line
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the master and take the VIP over when it goes silent (one
    /// instance; `run --config` runs any number).
    Backup(BackupArgs),
    /// Hold the VIP on this host (the classic master.sh), with an optional
    /// service health gate (one instance).
    Master(MasterArgs),
    /// Run every instance of a configuration file; SIGHUP reloads it.
    Run(RunArgs),
    /// Check a configuration file without touching the system.
    Check(ConfigArgs),
    /// Remove the VIP from an interface (the classic `ifconfig ... down`).
    Release(ReleaseArgs),
    /// Show the counters of the backup instances running here.
    Stats(StatsArgs),
    /// Show every instance running here, both roles: state, peers, health,
    /// the last transitions.
    Status(StatusArgs),
    /// Write the manual pages (vipwatch.1, vipwatch-backup.1, ...) into DIR
    /// (used by `cargo xtask dist`).
    #[command(hide = true)]
    Manpages { dir: PathBuf },
}

/// The manual pages, one per command, generated from these definitions.
pub fn write_manpages(dir: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("writing manual pages into {}", dir.display()))
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Machine-readable output: one object per daemon, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The TOML configuration file.
    #[arg(long)]
    pub config: PathBuf,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// What every daemon command (`run`, `backup`, `master`) takes.
#[derive(Debug, Args, Clone, Default)]
pub struct DaemonArgs {
    /// Serve Prometheus metrics on ADDRESS:PORT (`GET /metrics`), e.g.
    /// 127.0.0.1:9477. Off by default.
    #[arg(long, value_name = "ADDRESS:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Interface facing the master (the XDP program is attached here).
    #[arg(long)]
    pub iface: String,
    /// The master's address (IPv4 or IPv6; an IPv6 link-local address is
    /// reached on --iface); its kernel answers our probes.
    #[arg(long)]
    pub master: IpAddr,
    /// The virtual IP to take over, as ADDRESS/PREFIX (e.g. 192.0.2.100/24).
    #[arg(long)]
    pub vip: Vip,
    /// Instance name in logs, status and hooks (default: the VIP address).
    #[arg(long)]
    pub name: Option<String>,
    /// Probe interval (units: s, ms, us, ns).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Silence after which the master is dead.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub dead_after: Duration,
    /// Consecutive replies after which a silent master counts as back.
    #[arg(long, default_value_t = config::DEFAULT_RISE)]
    pub rise: u32,
    /// A third host (e.g. the gateway) that must still answer for a
    /// takeover: if it is silent too, we are the one cut off.
    /// Of the master's address family.
    #[arg(long)]
    pub witness: Option<IpAddr>,
    /// When to hand the VIP back once the master returns.
    #[arg(long, value_enum, default_value_t = FailbackArg::OnClaim)]
    pub failback: FailbackArg,
    /// What to do with the VIP when it appears on the interface while this
    /// backup does not hold it: remove it, or adopt it (kept only if the
    /// master does not answer for it).
    #[arg(long, default_value = "remove", value_parser = config::parse_stray)]
    pub stray_vip: crate::backup::Stray,
    #[command(flatten)]
    pub health: HealthArgs,
    #[command(flatten)]
    pub garp: GarpArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Command run on every state change with: STATE VIP IFACE REASON.
    #[arg(long)]
    pub on_change: Option<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub xdp_mode: ModeArg,
    /// The pair's shared key (32 hex digits, mode 600): probes and replies
    /// are authenticated; the same file on the master and the backup.
    #[arg(long)]
    pub auth_key_file: Option<std::path::PathBuf>,
    /// Stop probing after this many probes (diagnostics, like `ping -c`);
    /// without probes the master is never declared dead.
    #[arg(long)]
    pub count: Option<u64>,
    /// Run the probe/deadline loop with SCHED_FIFO at this priority (1-99),
    /// so a CPU-bound host cannot delay probes and decisions (keepalived's
    /// `vrrp_rt_priority`). Off by default.
    #[arg(long)]
    pub rt_priority: Option<u8>,
}

#[derive(Debug, Args)]
pub struct GarpArgs {
    /// Gratuitous ARPs per announcement (each is a request and a reply).
    #[arg(long, default_value_t = config::DEFAULT_GARP_COUNT)]
    pub garp_count: u32,
    /// Spacing of the announcement burst.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub garp_interval: Duration,
    /// Re-announce periodically while holding the VIP (off by default).
    #[arg(long, value_parser = parse_duration)]
    pub garp_refresh: Option<Duration>,
}

/// The TCP connection kick, for both roles.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// How the new holder of the VIP makes the previous holder's TCP
    /// clients fail over at once: ack, rst or off.
    #[arg(long, default_value = "ack", value_parser = config::parse_kick)]
    pub conn_kick: crate::kick::Mode,
    /// How often the holder sends its peer its connection table's changes.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub conn_sync: Duration,
    /// Size of the interface's connection table.
    #[arg(long, default_value_t = vipwatch_common::CONN_TABLE_DEFAULT)]
    pub conn_table: u32,
    /// UDP port of the connection-sync datagrams between the two hosts.
    #[arg(long, default_value_t = config::DEFAULT_CONN_SYNC_PORT)]
    pub conn_sync_port: u16,
    /// Kick only once the takeover's --on-change hook has finished (a
    /// replica being promoted), or after --kick-hook-timeout.
    #[arg(long)]
    pub kick_after_hook: bool,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub kick_hook_timeout: Duration,
}

impl ConnArgs {
    fn conn(&self) -> Conn {
        Conn {
            kick: self.conn_kick,
            sync: self.conn_sync,
            table: self.conn_table,
            port: self.conn_sync_port,
            after_hook: self.kick_after_hook,
            hook_timeout: self.kick_hook_timeout,
        }
    }
}

impl GarpArgs {
    fn garp(&self) -> Garp {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Garp {
            count: self.garp_count,
            interval_ns: ns(self.garp_interval),
            refresh_ns: self.garp_refresh.map(ns),
        }
    }
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Interface to bind the VIP on.
    #[arg(long)]
    pub iface: String,
    /// The virtual IP, as ADDRESS/PREFIX.
    #[arg(long)]
    pub vip: Vip,
    /// Instance name in logs, status and hooks (default: the VIP address).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub garp: GarpArgs,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Wait until no other host answers for the VIP before claiming it
    /// (default: claim at once, which makes an on-claim backup release it).
    #[arg(long)]
    pub no_preempt: bool,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Command run on every state change with: STATE VIP IFACE REASON.
    #[arg(long)]
    pub on_change: Option<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub xdp_mode: ModeArg,
    /// The pair's shared key (32 hex digits, mode 600): probes and replies
    /// are authenticated; the same file on the master and the backup.
    #[arg(long)]
    pub auth_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[arg(long)]
    pub iface: String,
    #[arg(long)]
    pub vip: Vip,
}

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Interface of the instances to show (default: all).
    #[arg(long)]
    pub iface: Option<String>,
    /// Only the instance of this name.
    #[arg(long)]
    pub instance: Option<String>,
    /// Machine-readable output (schema in the README), one object per
    /// backup instance, one per line.
    #[arg(long)]
    pub json: bool,
    /// Refresh every second until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailbackArg {
    /// Release the VIP as soon as the master claims it back.
    OnClaim,
    /// Keep the VIP until `vipwatch release`.
    Manual,
}

impl From<FailbackArg> for Failback {
    fn from(f: FailbackArg) -> Self {
        match f {
            FailbackArg::OnClaim => Failback::OnClaim,
            FailbackArg::Manual => Failback::Manual,
        }
    }
}

fn named(name: &Option<String>, vip: &Vip) -> String {
    name.clone().unwrap_or_else(|| vip.addr.to_string())
}

/// The first problem, as the command line shows it.
fn checked(instance: Instance) -> Result<Instance, String> {
    match instance.problems().first() {
        Some(p) => Err(p.as_flag()),
        None => Ok(instance),
    }
}

impl BackupArgs {
    /// The instance these flags describe, validated.
    pub fn instance(&self) -> Result<Instance, String> {
        let Self {
            daemon: _,
            iface,
            master,
            vip,
            name,
            interval,
            dead_after,
            rise,
            witness,
            failback,
            stray_vip,
            health,
            garp,
            conn,
            on_change,
            xdp_mode,
            auth_key_file,
            count,
            rt_priority,
        } = self;
        checked(Instance {
            name: named(name, vip),
            iface: iface.clone(),
            vip: *vip,
            garp: garp.garp(),
            on_change: on_change.clone(),
            xdp_mode: *xdp_mode,
            conn: conn.conn(),
            auth_key_file: auth_key_file.clone(),
            health: health.health()?,
            role: Role::Backup(Backup {
                master: *master,
                interval: *interval,
                dead_after: *dead_after,
                rise: *rise,
                witness: *witness,
                failback: (*failback).into(),
                stray_vip: *stray_vip,
                count: *count,
                rt_priority: *rt_priority,
            }),
        })
    }
}

/// The service's health check, for either role: an unhealthy master steps
/// down, an unhealthy backup does not take over.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Health check command: healthy while it exits 0.
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Health check URL (http:// or https://): healthy on a 2xx answer;
    /// redirects are not followed.
    #[arg(long, value_name = "URL")]
    pub health_http: Option<String>,
    /// Health check by TCP connect: healthy while a connection to
    /// HOST:PORT opens.
    #[arg(long, value_name = "HOST:PORT")]
    pub health_tcp: Option<String>,
    /// Text the --health-http body must contain (the classic wget | grep).
    #[arg(long)]
    pub health_expect: Option<String>,
    /// PEM file of the certificate authorities --health-http trusts
    /// (default: the Mozilla roots built in).
    #[arg(long, value_name = "FILE")]
    pub health_tls_ca: Option<PathBuf>,
    /// Accept any certificate for --health-http (self-signed, expired).
    #[arg(long)]
    pub health_insecure: bool,
    /// Time between health checks.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Consecutive failed checks before the verdict is unhealthy.
    #[arg(long, default_value_t = config::DEFAULT_HEALTH_FALL)]
    pub health_fall: u32,
    /// Consecutive good checks before it is healthy again.
    #[arg(long, default_value_t = config::DEFAULT_HEALTH_RISE)]
    pub health_rise: u32,
}

impl HealthArgs {
    fn health(&self) -> Result<Option<Health>, String> {
        let Self {
            health_cmd,
            health_http,
            health_tcp,
            health_expect,
            health_tls_ca,
            health_insecure,
            health_interval,
            health_fall,
            health_rise,
        } = self;
        let check = config::check_spec(
            health_cmd.clone(),
            health_http.clone(),
            health_tcp.clone(),
            health_expect.clone(),
            health_tls_ca.clone(),
            *health_insecure,
        )
        .map_err(|p| p.as_flag())?;
        Ok(check.map(|check| Health {
            check,
            interval: *health_interval,
            fall: *health_fall,
            rise: *health_rise,
        }))
    }
}

impl MasterArgs {
    /// The instance these flags describe, validated.
    pub fn instance(&self) -> Result<Instance, String> {
        let Self {
            daemon: _,
            iface,
            vip,
            name,
            garp,
            conn,
            no_preempt,
            health,
            on_change,
            xdp_mode,
            auth_key_file,
        } = self;
        checked(Instance {
            name: named(name, vip),
            iface: iface.clone(),
            vip: *vip,
            garp: garp.garp(),
            on_change: on_change.clone(),
            xdp_mode: *xdp_mode,
            conn: conn.conn(),
            auth_key_file: auth_key_file.clone(),
            health: health.health()?,
            role: Role::Master(Master {
                preempt: !no_preempt,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A complete `vipwatch backup` command line.
    const BACKUP_ARGV: [&str; 8] = [
        "vipwatch",
        "backup",
        "--iface",
        "eth0",
        "--master",
        "192.0.2.1",
        "--vip",
        "192.0.2.100/24",
    ];

    #[test]
    fn every_clap_error_is_one_line_that_names_the_argument() {
        let bad_interval = [&BACKUP_ARGV[..], &["--interval", "soon"]].concat();
        let cases: &[&[&str]] = &[
            &["vipwatch", "backup", "--iface", "eth0"],
            &["vipwatch", "master", "--vip", "192.0.2.100/24"],
            &["vipwatch", "stats", "--iface"],
            &["vipwatch", "backup", "--bogus"],
            &bad_interval,
        ];
        let names = ["--master", "--iface", "--iface", "--bogus", "--interval"];
        for (argv, name) in cases.iter().zip(names) {
            let Err(e) = Cli::try_parse_from(*argv) else {
                panic!("{argv:?} parsed");
            };
            let line = error_line(&e.render().to_string());
            assert!(!line.contains('\n'), "{line}");
            assert!(line.starts_with("error: "), "{line}");
            assert!(
                line.contains(name),
                "{argv:?}: {line:?} does not name {name}"
            );
        }
    }

    fn backup(args: &[&str]) -> Result<Instance, String> {
        let mut argv = BACKUP_ARGV.to_vec();
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Backup(a) = cli.command else {
            return Err("not backup".into());
        };
        a.instance()
    }

    #[test]
    fn backup_defaults_are_the_documented_ones() {
        let i = backup(&[]).expect("valid");
        let Role::Backup(b) = i.role else {
            panic!("backup")
        };
        assert_eq!(b.interval, Duration::from_millis(2));
        assert_eq!(b.dead_after, Duration::from_millis(10));
        assert_eq!(b.rise, 5);
        assert_eq!(i.garp.count, 3);
        assert_eq!(i.garp.interval_ns, 10_000_000);
        assert_eq!(i.garp.refresh_ns, None);
        assert_eq!(b.failback, Failback::OnClaim);
        assert_eq!(i.xdp_mode, ModeArg::Auto);
        assert_eq!(i.name, "192.0.2.100");
    }

    #[test]
    fn bad_backup_arguments_are_refused_naming_the_flag() {
        for (bad, flag) in [
            (&["--interval", "0ms"][..], "--interval"),
            (&["--interval", "0"], "--interval"),
            (&["--interval", "50us"], "--interval"),
            (&["--interval", "1h"], "--interval"),
            (&["--dead-after", "3ms"], "--dead-after"),
            (&["--dead-after", "10m"], "--dead-after"),
            (&["--dead-after", "2h"], "--dead-after"),
            (&["--rise", "0"], "--rise"),
            (&["--witness", "192.0.2.1"], "--witness"),
            (&["--witness", "224.0.0.5"], "--witness"),
            (&["--garp-count", "0"], "--garp-count"),
            (&["--garp-refresh", "1ms"], "--garp-refresh"),
            (&["--count", "0"], "--count"),
            (&["--xdp-mode", "hw"], "--xdp-mode"),
            (&["--rt-priority", "0"], "--rt-priority"),
            (&["--rt-priority", "100"], "--rt-priority"),
            (&["--failback", "sometimes"], "--failback"),
            (&["--name", "a b"], "--name"),
        ] {
            let err = backup(bad).expect_err(&format!("{bad:?} accepted"));
            assert!(err.contains(flag), "{bad:?}: {err}");
        }
        let parse = |argv: &str| {
            Cli::try_parse_from(argv.split_whitespace())
                .map_err(|e| e.to_string())
                .and_then(|c| match c.command {
                    Command::Backup(a) => a.instance().map(drop),
                    _ => Ok(()),
                })
        };
        for argv in [
            "vipwatch backup --iface eth0 --master 224.0.0.1 --vip 192.0.2.100/24",
            "vipwatch backup --iface eth0 --master 2001:db8::1 --witness 192.0.2.254 --vip 192.0.2.100/24",
            "vipwatch backup --iface eth0 --master 192.0.2.1 --vip 192.0.2.1/24",
            "vipwatch backup --iface eth0 --master 192.0.2.1 --vip 192.0.2.100",
            "vipwatch backup --iface eth0 --master 2001:db8::1 --vip 2001:db8::1/64",
            "vipwatch backup --iface an-interface-name-too-long --master 192.0.2.1 --vip 192.0.2.100/24",
        ] {
            assert!(parse(argv).is_err(), "{argv:?} accepted");
        }
    }

    #[test]
    fn good_backup_arguments_pass() {
        backup(&[
            "--interval",
            "500us",
            "--dead-after",
            "2.5ms",
            "--witness",
            "192.0.2.254",
            "--failback",
            "manual",
        ])
        .expect("valid");
        backup(&[
            "--xdp-mode",
            "skb",
            "--garp-refresh",
            "1s",
            "--on-change",
            "logger",
            "--name",
            "redis",
        ])
        .expect("valid");
        backup(&["--rt-priority", "10"]).expect("valid");
    }

    #[test]
    fn ipv6_instances_pass() {
        for argv in [
            "vipwatch backup --iface eth0 --master 2001:db8::1 --witness 2001:db8::fe --vip 2001:db8::100/64",
            // A link-local master, reached on --iface.
            "vipwatch backup --iface eth0 --master fe80::1 --vip 2001:db8::100/64",
            "vipwatch master --iface eth0 --vip 2001:db8::100/64 --no-preempt",
        ] {
            let cli = Cli::try_parse_from(argv.split_whitespace()).expect("parses");
            let instance = match cli.command {
                Command::Backup(a) => a.instance(),
                Command::Master(a) => a.instance(),
                _ => panic!("{argv:?}"),
            };
            instance.unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        }
    }

    #[test]
    fn health_expect_without_health_http_names_both() {
        let cli = Cli::try_parse_from([
            "vipwatch",
            "master",
            "--iface",
            "eth0",
            "--vip",
            "192.0.2.100/24",
            "--health-expect",
            "ok",
        ])
        .expect("parses");
        let Command::Master(a) = cli.command else {
            panic!("master")
        };
        let err = a.instance().expect_err("refused");
        assert!(
            err.contains("--health-expect") && err.contains("--health-http"),
            "{err}"
        );
    }
}
