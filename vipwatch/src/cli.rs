//! Command line: clap definitions and the validation that turns raw
//! arguments into settings the rest of the daemon can trust.

use std::{
    net::{IpAddr, Ipv4Addr},
    str::FromStr,
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{detector::Failback, ebpf::ModeArg};

/// Sub-second, XDP-accelerated failover of a virtual IP.
#[derive(Debug, Parser)]
#[command(name = "vipwatch", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the master and take the VIP over when it goes silent.
    Backup(BackupArgs),
    /// Hold the VIP on this host (the classic master.sh), with an optional
    /// service health gate.
    Master(MasterArgs),
    /// Remove the VIP from an interface (the classic `ifconfig ... down`).
    Release(ReleaseArgs),
    /// Show the counters of the daemon running on an interface.
    Stats(StatsArgs),
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Interface facing the master (the XDP program is attached here).
    #[arg(long)]
    pub iface: String,
    /// The master's IPv4 address; its kernel answers our probes.
    #[arg(long)]
    pub master: Ipv4Addr,
    /// The virtual IP to take over, as ADDRESS/PREFIX (e.g. 192.0.2.100/24).
    #[arg(long)]
    pub vip: Vip,
    /// Probe interval (units: s, ms, us, ns).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub interval: Duration,
    /// Silence after which the master is dead.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub dead_after: Duration,
    /// Consecutive replies after which a silent master counts as back.
    #[arg(long, default_value_t = 5)]
    pub rise: u32,
    /// A third host (e.g. the gateway) that must still answer for a
    /// takeover: if it is silent too, we are the one cut off.
    #[arg(long)]
    pub witness: Option<Ipv4Addr>,
    /// When to hand the VIP back once the master returns.
    #[arg(long, value_enum, default_value_t = FailbackArg::OnClaim)]
    pub failback: FailbackArg,
    #[command(flatten)]
    pub garp: GarpArgs,
    /// Command run on every state change with: STATE VIP IFACE REASON.
    #[arg(long)]
    pub on_change: Option<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub xdp_mode: ModeArg,
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
    #[arg(long, default_value_t = 3)]
    pub garp_count: u32,
    /// Spacing of the announcement burst.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub garp_interval: Duration,
    /// Re-announce periodically while holding the VIP (off by default).
    #[arg(long, value_parser = parse_duration)]
    pub garp_refresh: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct MasterArgs {
    /// Interface to bind the VIP on.
    #[arg(long)]
    pub iface: String,
    /// The virtual IP, as ADDRESS/PREFIX.
    #[arg(long)]
    pub vip: Vip,
    #[command(flatten)]
    pub garp: GarpArgs,
    /// Wait until no other host answers for the VIP before claiming it
    /// (default: claim at once, which makes an on-claim backup release it).
    #[arg(long)]
    pub no_preempt: bool,
    /// Health check command: healthy while it exits 0.
    #[arg(long, conflicts_with = "health_http")]
    pub health_cmd: Option<String>,
    /// Health check URL (http:// only): healthy on a 2xx answer.
    #[arg(long)]
    pub health_http: Option<String>,
    /// Text the --health-http body must contain (the classic wget | grep).
    #[arg(long, requires = "health_http")]
    pub health_expect: Option<String>,
    /// Time between health checks.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub health_interval: Duration,
    /// Consecutive failed checks before the master steps down.
    #[arg(long, default_value_t = 2)]
    pub health_fall: u32,
    /// Consecutive good checks before it claims the VIP again.
    #[arg(long, default_value_t = 3)]
    pub health_rise: u32,
    /// Command run on every state change with: STATE VIP IFACE REASON.
    #[arg(long)]
    pub on_change: Option<String>,
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub xdp_mode: ModeArg,
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
    /// Interface of the daemon (default: the only one running).
    #[arg(long)]
    pub iface: Option<String>,
    /// Machine-readable output (schema in the README).
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

/// A VIP as ADDRESS/PREFIX.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vip {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Vip {
    /// The IPv4 address, for what only IPv4 supports (ARP claim watching).
    pub fn v4(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) => Some(a),
            IpAddr::V6(_) => None,
        }
    }
}

impl std::fmt::Display for Vip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Vip {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 192.0.2.100/24)"))?;
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("{addr:?} is not an IP address (in VIP {s:?}; expected e.g. 192.0.2.100/24)")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (1..=max).contains(p))
            .ok_or_else(|| {
                format!("prefix {prefix:?} of VIP {s:?} must be a number from 1 to {max}")
            })?;
        if !is_unicast(addr) {
            return Err(format!("VIP {addr} must be a unicast address"));
        }
        Ok(Self { addr, prefix })
    }
}

fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => {
            !(a.is_unspecified()
                || a.is_broadcast()
                || a.is_multicast()
                || a.is_loopback()
                || a.octets()[0] == 0)
        }
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast() || a.is_loopback()),
    }
}

/// Parses `2ms`, `500us`, `1.5s`, `250000ns`. A unit is required: a bare
/// number is ambiguous for something that ranges from µs to seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("{s:?} needs a unit: s, ms, us or ns (e.g. 2ms)"))?;
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 2ms, 500us, 1s)"))?;
    let scale = match unit {
        "s" => 1e9,
        "ms" => 1e6,
        "us" | "µs" => 1e3,
        "ns" => 1.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?}: use s, ms, us or ns"
            ));
        }
    };
    let ns = value * scale;
    if !ns.is_finite() || ns >= u64::MAX as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(Duration::from_nanos(ns.round() as u64))
}

/// Limits on timing settings: beyond them the setting is a typo, not a
/// choice (a 0 interval would flood the master; an hour is not failover).
pub const MIN_INTERVAL: Duration = Duration::from_micros(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_DEAD_AFTER: Duration = Duration::from_secs(60);

/// Validates the backup's arguments beyond what clap's types check.
pub fn validate_backup(a: &BackupArgs) -> Result<(), String> {
    let BackupArgs {
        iface,
        master,
        vip,
        interval,
        dead_after,
        rise,
        witness,
        failback: _,
        garp,
        on_change: _,
        xdp_mode: _,
        count,
        rt_priority,
    } = a;
    validate_iface(iface)?;
    validate_peer("master", *master)?;
    if let Some(w) = witness {
        validate_peer("witness", *w)?;
        if w == master {
            return Err("--witness must be a third host, not the master".into());
        }
    }
    if vip.addr == IpAddr::V4(*master) {
        return Err(format!(
            "--vip {vip} is the master's own address; the VIP must float"
        ));
    }
    if vip.v4().is_none() {
        return Err(format!(
            "--vip {vip}: the backup watches ARP claims of the VIP, so the VIP must be IPv4"
        ));
    }
    if *interval < MIN_INTERVAL || *interval > MAX_INTERVAL {
        return Err(format!(
            "--interval {interval:?} is out of range: use {MIN_INTERVAL:?} to {MAX_INTERVAL:?}"
        ));
    }
    if *dead_after < *interval * 2 {
        return Err(format!(
            "--dead-after {dead_after:?} must cover at least 2 probe intervals ({:?}), or one lost probe is a failover",
            *interval * 2
        ));
    }
    if *dead_after > MAX_DEAD_AFTER {
        return Err(format!(
            "--dead-after {dead_after:?} is absurd: at most {MAX_DEAD_AFTER:?}"
        ));
    }
    if !(1..=1000).contains(rise) {
        return Err(format!("--rise {rise} must be from 1 to 1000"));
    }
    if *count == Some(0) {
        return Err("--count 0 would send no probe at all".into());
    }
    if let Some(p) = rt_priority
        && !(1..=99).contains(p)
    {
        return Err(format!(
            "--rt-priority {p} must be from 1 to 99 (SCHED_FIFO priorities)"
        ));
    }
    validate_garp(garp)
}

pub fn validate_master(a: &MasterArgs) -> Result<(), String> {
    validate_iface(&a.iface)?;
    validate_garp(&a.garp)?;
    if a.health_interval < Duration::from_millis(10)
        || a.health_interval > Duration::from_secs(3600)
    {
        return Err(format!(
            "--health-interval {:?} must be from 10ms to 1h",
            a.health_interval
        ));
    }
    if a.health_fall == 0 || a.health_rise == 0 {
        return Err("--health-fall and --health-rise must be at least 1".into());
    }
    if let Some(url) = &a.health_http
        && !url.starts_with("http://")
    {
        return Err(format!(
            "--health-http {url:?}: only http:// URLs are supported"
        ));
    }
    Ok(())
}

pub fn validate_garp(g: &GarpArgs) -> Result<(), String> {
    if !(1..=100).contains(&g.garp_count) {
        return Err(format!(
            "--garp-count {} must be from 1 to 100",
            g.garp_count
        ));
    }
    if g.garp_interval < Duration::from_millis(1) || g.garp_interval > Duration::from_secs(10) {
        return Err(format!(
            "--garp-interval {:?} must be from 1ms to 10s",
            g.garp_interval
        ));
    }
    if let Some(r) = g.garp_refresh
        && (r < Duration::from_millis(100) || r > Duration::from_secs(3600))
    {
        return Err(format!("--garp-refresh {r:?} must be from 100ms to 1h"));
    }
    Ok(())
}

pub fn validate_iface(iface: &str) -> Result<(), String> {
    // IFNAMSIZ is 16 including the NUL.
    if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ', '\0']) {
        return Err(format!(
            "{iface:?} is not a valid interface name; `ip link` lists interfaces"
        ));
    }
    Ok(())
}

fn validate_peer(what: &str, addr: Ipv4Addr) -> Result<(), String> {
    if !is_unicast(IpAddr::V4(addr)) {
        return Err(format!("--{what} {addr} must be an IPv4 unicast address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        for (s, ns) in [
            ("2ms", 2_000_000),
            ("500us", 500_000),
            ("0.5ms", 500_000),
            ("1s", 1_000_000_000),
            ("250ns", 250),
            (" 10ms ", 10_000_000),
        ] {
            assert_eq!(parse_duration(s), Ok(Duration::from_nanos(ns)), "{s}");
        }
        for bad in ["2", "", "ms", "2 ms", "2h", "1e3ms", "-1ms", "1.2.3ms"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn vips_are_address_slash_prefix() {
        assert_eq!(
            "192.0.2.100/24".parse::<Vip>(),
            Ok(Vip {
                addr: "192.0.2.100".parse().unwrap(),
                prefix: 24
            })
        );
        assert!("2001:db8::10/64".parse::<Vip>().is_ok());
        for bad in [
            "192.0.2.100",
            "192.0.2.100/33",
            "192.0.2.100/0",
            "192.0.2/24",
            "vip/24",
            "224.0.0.1/24",
            "255.255.255.255/32",
            "0.0.0.0/8",
            "2001:db8::1/129",
        ] {
            assert!(bad.parse::<Vip>().is_err(), "{bad:?} accepted");
        }
    }

    fn backup(args: &[&str]) -> Result<BackupArgs, String> {
        let mut argv = vec![
            "vipwatch",
            "backup",
            "--iface",
            "eth0",
            "--master",
            "192.0.2.1",
            "--vip",
            "192.0.2.100/24",
        ];
        argv.extend_from_slice(args);
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Command::Backup(a) = cli.command else {
            return Err("not backup".into());
        };
        validate_backup(&a)?;
        Ok(a)
    }

    #[test]
    fn backup_defaults_are_the_documented_ones() {
        let a = backup(&[]).unwrap();
        assert_eq!(a.interval, Duration::from_millis(2));
        assert_eq!(a.dead_after, Duration::from_millis(10));
        assert_eq!(a.rise, 5);
        assert_eq!(a.garp.garp_count, 3);
        assert_eq!(a.garp.garp_interval, Duration::from_millis(10));
        assert_eq!(a.garp.garp_refresh, None);
        assert_eq!(a.failback, FailbackArg::OnClaim);
        assert_eq!(a.xdp_mode, ModeArg::Auto);
    }

    #[test]
    fn bad_backup_arguments_are_refused() {
        for bad in [
            &["--interval", "0ms"][..],
            &["--interval", "0"],
            &["--interval", "50us"],
            &["--interval", "1h"],
            &["--dead-after", "3ms"],
            &["--dead-after", "10m"],
            &["--dead-after", "2h"],
            &["--rise", "0"],
            &["--witness", "192.0.2.1"],
            &["--witness", "224.0.0.5"],
            &["--garp-count", "0"],
            &["--garp-refresh", "1ms"],
            &["--count", "0"],
            &["--xdp-mode", "hw"],
            &["--rt-priority", "0"],
            &["--rt-priority", "100"],
            &["--failback", "sometimes"],
        ] {
            assert!(backup(bad).is_err(), "{bad:?} accepted");
        }
        let parse = |argv: &[&str]| {
            Cli::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|c| match c.command {
                    Command::Backup(a) => validate_backup(&a),
                    _ => Ok(()),
                })
        };
        for argv in [
            &[
                "vipwatch",
                "backup",
                "--iface",
                "eth0",
                "--master",
                "224.0.0.1",
                "--vip",
                "192.0.2.100/24",
            ][..],
            &[
                "vipwatch",
                "backup",
                "--iface",
                "eth0",
                "--master",
                "2001:db8::1",
                "--vip",
                "192.0.2.100/24",
            ],
            &[
                "vipwatch",
                "backup",
                "--iface",
                "eth0",
                "--master",
                "192.0.2.1",
                "--vip",
                "192.0.2.1/24",
            ],
            &[
                "vipwatch",
                "backup",
                "--iface",
                "eth0",
                "--master",
                "192.0.2.1",
                "--vip",
                "192.0.2.100",
            ],
            &[
                "vipwatch",
                "backup",
                "--iface",
                "eth0",
                "--master",
                "192.0.2.1",
                "--vip",
                "2001:db8::1/64",
            ],
            &[
                "vipwatch",
                "backup",
                "--iface",
                "an-interface-name-too-long",
                "--master",
                "192.0.2.1",
                "--vip",
                "192.0.2.100/24",
            ],
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
        .unwrap();
        backup(&[
            "--xdp-mode",
            "skb",
            "--garp-refresh",
            "1s",
            "--on-change",
            "logger",
        ])
        .unwrap();
        backup(&["--rt-priority", "10"]).unwrap();
    }
}
