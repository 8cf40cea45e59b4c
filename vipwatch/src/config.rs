//! Instances and their settings, from the command line (`vipwatch backup` /
//! `vipwatch master` flags: the one-instance shorthand) or from a TOML file
//! (`vipwatch run --config`), checked by the same rules.
//!
//! A file holds `[[instance]]` tables whose keys are the flags' names with
//! `_` for `-`, with the same units and defaults, and an optional
//! `[defaults]` table whose keys apply to every instance that does not set
//! them (a key that does not apply to an instance's role is ignored there).
//! Every error names the file, the line and the key, and says what is
//! allowed, in one line, like `keepalived -t`.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use toml::{
    Spanned,
    de::{DeTable, DeValue},
};

use crate::{detector::Failback, ebpf::ModeArg, kick};

// ---------------------------------------------------------------------------
// What an instance is.

/// One vipwatch instance: a VIP watched as a backup, or held as a master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Unique in a process; names it in logs, status, hooks and reloads.
    pub name: String,
    pub iface: String,
    pub vip: Vip,
    pub garp: Garp,
    pub on_change: Option<String>,
    pub xdp_mode: ModeArg,
    pub conn: Conn,
    /// The pair's shared key (see [`read_key`]): probes and replies are
    /// authenticated.
    pub auth_key_file: Option<std::path::PathBuf>,
    /// The service's health check (either role): an unhealthy master steps
    /// down, an unhealthy backup does not take over.
    pub health: Option<Health>,
    pub role: Role,
}

/// Reads a key file: 32 hexadecimal digits (128 bits; whitespace ignored,
/// so `openssl rand -hex 16 > FILE` makes one), readable by its owner only.
pub fn read_key(path: &Path) -> Result<vipwatch_common::siphash::Key, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{shown} is readable by others (mode {mode:03o}): `chmod 600 {shown}`"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let hex: String = text.split_whitespace().collect();
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|k| {
            hex.get(k..k + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<_>>()
        .filter(|b: &Vec<u8>| b.len() == 16 && hex.len() == 32)
        .ok_or_else(|| {
            format!("{shown} must hold 32 hexadecimal digits (128 bits; `openssl rand -hex 16`)")
        })?;
    let mut key = [0u8; 16];
    key.copy_from_slice(&bytes);
    if key == [0; 16] {
        return Err(format!("{shown} holds the all-zero key"));
    }
    Ok(vipwatch_common::siphash::Key::from_bytes(key))
}

/// The TCP connection kick (issue "What the application sees").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    /// `ack`, `rst` or `off`.
    pub kick: kick::Mode,
    /// How often the holder sends its peer what changed.
    pub sync: Duration,
    /// Size of the interface's connection table (entries).
    pub table: u32,
    /// UDP port of the sync datagrams.
    pub port: u16,
    /// Kick only once the takeover's `on_change` hook has finished (or
    /// after `kick_hook_timeout`): for services that must be promoted first.
    pub after_hook: bool,
    pub hook_timeout: Duration,
}

impl Default for Conn {
    fn default() -> Self {
        Self {
            kick: kick::Mode::Ack,
            sync: DEFAULT_CONN_SYNC,
            table: vipwatch_common::CONN_TABLE_DEFAULT,
            port: DEFAULT_CONN_SYNC_PORT,
            after_hook: false,
            hook_timeout: DEFAULT_KICK_HOOK_TIMEOUT,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    Backup(Backup),
    Master(Master),
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Backup(_) => "backup",
            Self::Master(_) => "master",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backup {
    /// The master's address (IPv4 or IPv6; an IPv6 link-local address is
    /// reached on the instance's interface).
    pub master: IpAddr,
    pub interval: Duration,
    pub dead_after: Duration,
    pub rise: u32,
    /// Of the master's family: an instance's probes go out of one socket.
    pub witness: Option<IpAddr>,
    pub failback: Failback,
    /// A VIP that appears while we do not hold it.
    pub stray_vip: crate::backup::Stray,
    /// Stop probing after this many probes (diagnostics).
    pub count: Option<u64>,
    /// SCHED_FIFO priority of the instance's loop.
    pub rt_priority: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Master {
    pub preempt: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub check: CheckSpec,
    pub interval: Duration,
    pub fall: u32,
    pub rise: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckSpec {
    Command(String),
    Http {
        url: String,
        expect: Option<String>,
        /// PEM file of the certificate authorities to trust for https
        /// (default: the Mozilla roots built in).
        tls_ca: Option<PathBuf>,
        /// Accept any certificate (self-signed, expired, other name).
        insecure: bool,
    },
    /// `HOST:PORT`: healthy while a TCP connection opens.
    Tcp(String),
}

/// Which of health_cmd / health_http / health_tcp and their companions
/// make a check: the same rules for flags and file keys.
pub fn check_spec(
    cmd: Option<String>,
    http: Option<String>,
    tcp: Option<String>,
    expect: Option<String>,
    tls_ca: Option<PathBuf>,
    insecure: bool,
) -> Result<Option<CheckSpec>, Problem> {
    let kinds = [cmd.is_some(), http.is_some(), tcp.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds > 1 {
        return Err(Problem::new(
            "health_http",
            "set one of health_cmd, health_http and health_tcp",
        ));
    }
    if http.is_none() {
        for (set, key) in [
            (expect.is_some(), "health_expect"),
            (tls_ca.is_some(), "health_tls_ca"),
            (insecure, "health_insecure"),
        ] {
            if set {
                return Err(Problem::new(
                    key,
                    "needs health_http (it is about the HTTP check)",
                ));
            }
        }
    }
    Ok(match (cmd, http, tcp) {
        (Some(cmd), _, _) => Some(CheckSpec::Command(cmd)),
        (_, Some(url), _) => Some(CheckSpec::Http {
            url,
            expect,
            tls_ca,
            insecure,
        }),
        (_, _, Some(addr)) => Some(CheckSpec::Tcp(addr)),
        (None, None, None) => None,
    })
}

/// The gratuitous ARP schedule: a burst of `count` spaced `interval_ns`,
/// then one every `refresh_ns` (if set) while the VIP is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Garp {
    pub count: u32,
    pub interval_ns: u64,
    pub refresh_ns: Option<u64>,
}

/// A VIP as ADDRESS/PREFIX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vip {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl fmt::Display for Vip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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

/// A unicast address a host can have on the wire. IPv4-mapped IPv6
/// addresses (`::ffff:a.b.c.d`) are refused: they are IPv4 addresses in
/// disguise, never on the wire (RFC 4291 §2.5.5.2), and vipwatch keys
/// both families in one 16-byte form where they would be confused.
pub fn is_unicast(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => false,
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

/// `--failback` / `failback`.
pub fn parse_failback(s: &str) -> Result<Failback, String> {
    match s {
        "on-claim" => Ok(Failback::OnClaim),
        "manual" => Ok(Failback::Manual),
        _ => Err(format!(
            "{s:?} is not a failback mode: use on-claim or manual"
        )),
    }
}

/// `--stray-vip` / `stray_vip`.
pub fn parse_stray(s: &str) -> Result<crate::backup::Stray, String> {
    match s {
        "remove" => Ok(crate::backup::Stray::Remove),
        "adopt" => Ok(crate::backup::Stray::Adopt),
        _ => Err(format!(
            "{s:?} is not a stray_vip mode: use remove or adopt"
        )),
    }
}

pub fn failback_name(f: Failback) -> &'static str {
    match f {
        Failback::OnClaim => "on-claim",
        Failback::Manual => "manual",
    }
}

/// `--conn-kick` / `conn_kick`.
pub fn parse_kick(s: &str) -> Result<kick::Mode, String> {
    match s {
        "ack" => Ok(kick::Mode::Ack),
        "rst" => Ok(kick::Mode::Rst),
        "off" => Ok(kick::Mode::Off),
        _ => Err(format!("{s:?} is not a kick mode: use ack, rst or off")),
    }
}

pub fn kick_name(m: kick::Mode) -> &'static str {
    match m {
        kick::Mode::Ack => "ack",
        kick::Mode::Rst => "rst",
        kick::Mode::Off => "off",
    }
}

/// `--xdp-mode` / `xdp_mode`.
pub fn parse_xdp_mode(s: &str) -> Result<ModeArg, String> {
    match s {
        "auto" => Ok(ModeArg::Auto),
        "driver" => Ok(ModeArg::Driver),
        "skb" => Ok(ModeArg::Skb),
        _ => Err(format!("{s:?} is not an XDP mode: use auto, driver or skb")),
    }
}

// ---------------------------------------------------------------------------
// Defaults and limits (the flags' defaults, the README's tables).

pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(2);
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_millis(10);
pub const DEFAULT_RISE: u32 = 5;
pub const DEFAULT_GARP_COUNT: u32 = 3;
pub const DEFAULT_GARP_INTERVAL: Duration = Duration::from_millis(10);
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_millis(200);
pub const DEFAULT_HEALTH_FALL: u32 = 2;
pub const DEFAULT_HEALTH_RISE: u32 = 3;
/// How often the holder syncs its connection table: a connection opened
/// less than this before a failure is not kicked (it waits for its own
/// retransmission timer). 10 ms matches the default detection time; the
/// cost is measured in section 8 of bench/RESULTS.md.
pub const DEFAULT_CONN_SYNC: Duration = Duration::from_millis(10);
pub const DEFAULT_CONN_SYNC_PORT: u16 = 7410;
pub const DEFAULT_KICK_HOOK_TIMEOUT: Duration = Duration::from_secs(2);

/// Limits on timing settings: beyond them the setting is a typo, not a
/// choice (a 0 interval would flood the master; an hour is not failover).
pub const MIN_INTERVAL: Duration = Duration::from_micros(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_DEAD_AFTER: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Validation.

/// One thing wrong with one setting. `key` is the file key (`dead_after`);
/// the command line shows it as the flag (`--dead-after`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: &'static str,
    pub message: String,
}

impl Problem {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        Self {
            key,
            message: message.into(),
        }
    }

    /// As the command line shows it: `--dead-after: ...`.
    /// The problem as the command line says it: keys named as flags.
    pub fn as_flag(&self) -> String {
        let flag = |key: &str| format!("--{}", key.replace('_', "-"));
        let mut message = self.message.clone();
        // Longest first: `health_http` is not rewritten inside another key.
        let mut keys: Vec<&str> = KEYS
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| k.contains('_'))
            .collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        for key in keys {
            if message.contains(key) {
                message = message.replace(key, &flag(key));
            }
        }
        format!("{}: {message}", flag(self.key))
    }
}

/// An interface name the kernel would accept (IFNAMSIZ is 16 with the NUL).
pub fn check_iface(iface: &str) -> Result<(), String> {
    if iface.is_empty() || iface.len() > 15 || iface.contains(['/', ' ', '\0']) {
        return Err(format!(
            "{iface:?} is not a valid interface name; `ip link` lists interfaces"
        ));
    }
    Ok(())
}

/// Instance names go into logs, status, hook environments and metric
/// labels: keep them plain.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid instance name: 1 to 64 of A-Z a-z 0-9 . _ - :"
        ))
    }
}

impl Instance {
    /// Everything wrong with this instance on its own (not against other
    /// instances or the host).
    pub fn problems(&self) -> Vec<Problem> {
        let Self {
            name,
            iface,
            vip,
            garp,
            on_change,
            xdp_mode: _,
            conn,
            auth_key_file,
            health,
            role,
        } = self;
        let mut out = Vec::new();
        health_problems(health.as_ref(), &mut out);
        if let Some(path) = auth_key_file
            && let Err(e) = read_key(path)
        {
            out.push(Problem::new("auth_key_file", e));
        }
        let Conn {
            kick: _,
            sync,
            table,
            port,
            after_hook,
            hook_timeout,
        } = *conn;
        if sync < Duration::from_millis(1) || sync > Duration::from_secs(1) {
            out.push(Problem::new(
                "conn_sync",
                format!("{sync:?} must be from 1ms to 1s"),
            ));
        }
        if !(1024..=4_194_304).contains(&table) {
            out.push(Problem::new(
                "conn_table",
                format!("{table} must be from 1024 to 4194304 connections"),
            ));
        }
        if port == 0 {
            out.push(Problem::new("conn_sync_port", "0 is not a port"));
        }
        if after_hook && on_change.is_none() {
            out.push(Problem::new(
                "kick_after_hook",
                "needs on_change: the kick waits for that hook to finish",
            ));
        }
        if hook_timeout > crate::hook::HOOK_TIMEOUT || hook_timeout < Duration::from_millis(1) {
            out.push(Problem::new(
                "kick_hook_timeout",
                format!(
                    "{hook_timeout:?} must be from 1ms to {:?} (hooks are killed after that)",
                    crate::hook::HOOK_TIMEOUT
                ),
            ));
        }
        if let Err(e) = check_name(name) {
            out.push(Problem::new("name", e));
        }
        if let Err(e) = check_iface(iface) {
            out.push(Problem::new("iface", e));
        }
        let Garp {
            count,
            interval_ns,
            refresh_ns,
        } = *garp;
        if !(1..=100).contains(&count) {
            out.push(Problem::new(
                "garp_count",
                format!("{count} must be from 1 to 100"),
            ));
        }
        if !(1_000_000..=10_000_000_000).contains(&interval_ns) {
            out.push(Problem::new(
                "garp_interval",
                format!(
                    "{:?} must be from 1ms to 10s",
                    Duration::from_nanos(interval_ns)
                ),
            ));
        }
        if let Some(r) = refresh_ns
            && !(100_000_000..=3_600_000_000_000).contains(&r)
        {
            out.push(Problem::new(
                "garp_refresh",
                format!("{:?} must be from 100ms to 1h", Duration::from_nanos(r)),
            ));
        }
        if let Role::Backup(b) = role {
            backup_problems(b, vip, &mut out);
        }
        out
    }
}

fn backup_problems(b: &Backup, vip: &Vip, out: &mut Vec<Problem>) {
    let Backup {
        master,
        interval,
        dead_after,
        rise,
        witness,
        failback: _,
        stray_vip: _,
        count,
        rt_priority,
    } = *b;
    if !is_unicast(master) {
        out.push(Problem::new(
            "master",
            format!("{master} must be a unicast address"),
        ));
    }
    if let Some(w) = witness {
        if !is_unicast(w) {
            out.push(Problem::new(
                "witness",
                format!("{w} must be a unicast address"),
            ));
        }
        if w.is_ipv4() != master.is_ipv4() {
            out.push(Problem::new(
                "witness",
                format!(
                    "{w} must be of the master's address family ({master}): an instance probes \
                     both from one socket; watch the other family with a second instance"
                ),
            ));
        }
        if w == master {
            out.push(Problem::new(
                "witness",
                format!("{w} must be a third host, not the master"),
            ));
        }
    }
    if vip.addr == master {
        out.push(Problem::new(
            "vip",
            format!("{vip} is the master's own address; the VIP must float"),
        ));
    }
    if interval < MIN_INTERVAL || interval > MAX_INTERVAL {
        out.push(Problem::new(
            "interval",
            format!("{interval:?} is out of range: use {MIN_INTERVAL:?} to {MAX_INTERVAL:?}"),
        ));
    }
    if dead_after < interval * 2 {
        out.push(Problem::new(
            "dead_after",
            format!(
                "{dead_after:?} must cover at least 2 probe intervals ({:?}), or one lost probe is a failover",
                interval * 2
            ),
        ));
    }
    if dead_after > MAX_DEAD_AFTER {
        out.push(Problem::new(
            "dead_after",
            format!("{dead_after:?} is absurd: at most {MAX_DEAD_AFTER:?}"),
        ));
    }
    if !(1..=1000).contains(&rise) {
        out.push(Problem::new(
            "rise",
            format!("{rise} must be from 1 to 1000"),
        ));
    }
    if count == Some(0) {
        out.push(Problem::new("count", "0 would send no probe at all"));
    }
    if let Some(p) = rt_priority
        && !(1..=99).contains(&p)
    {
        out.push(Problem::new(
            "rt_priority",
            format!("{p} must be from 1 to 99 (SCHED_FIFO priorities)"),
        ));
    }
}

fn health_problems(health: Option<&Health>, out: &mut Vec<Problem>) {
    let Some(Health {
        check,
        interval,
        fall,
        rise,
    }) = health
    else {
        return;
    };
    if *interval < Duration::from_millis(10) || *interval > Duration::from_secs(3600) {
        out.push(Problem::new(
            "health_interval",
            format!("{interval:?} must be from 10ms to 1h"),
        ));
    }
    if *fall == 0 {
        out.push(Problem::new("health_fall", "must be at least 1"));
    }
    if *rise == 0 {
        out.push(Problem::new("health_rise", "must be at least 1"));
    }
    match check {
        CheckSpec::Http { url, tls_ca, .. } => {
            if let Err(why) = crate::health::check_url(url) {
                out.push(Problem::new("health_http", format!("{url:?}: {why}")));
            }
            if let Some(ca) = tls_ca
                && let Err(why) = crate::health::read_ca(ca)
            {
                out.push(Problem::new("health_tls_ca", why));
            }
        }
        CheckSpec::Tcp(addr) => {
            if let Err(why) = crate::health::check_tcp_target(addr) {
                out.push(Problem::new("health_tcp", format!("{addr:?}: {why}")));
            }
        }
        CheckSpec::Command(_) => {}
    }
}

// ---------------------------------------------------------------------------
// The configuration file.

/// Every key an instance may have, and the role it belongs to (`None`:
/// both).
const KEYS: &[(&str, Option<&str>)] = &[
    ("name", None),
    ("role", None),
    ("iface", None),
    ("vip", None),
    ("garp_count", None),
    ("garp_interval", None),
    ("garp_refresh", None),
    ("on_change", None),
    ("xdp_mode", None),
    ("auth_key_file", None),
    ("conn_kick", None),
    ("conn_sync", None),
    ("conn_table", None),
    ("conn_sync_port", None),
    ("kick_after_hook", None),
    ("kick_hook_timeout", None),
    ("master", Some("backup")),
    ("interval", Some("backup")),
    ("dead_after", Some("backup")),
    ("rise", Some("backup")),
    ("witness", Some("backup")),
    ("failback", Some("backup")),
    ("stray_vip", Some("backup")),
    ("count", Some("backup")),
    ("rt_priority", Some("backup")),
    ("no_preempt", Some("master")),
    ("health_cmd", None),
    ("health_http", None),
    ("health_expect", None),
    ("health_interval", None),
    ("health_fall", None),
    ("health_rise", None),
    ("health_tcp", None),
    ("health_tls_ca", None),
    ("health_insecure", None),
];

/// A configuration file, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    pub path: PathBuf,
    pub instances: Vec<Instance>,
    /// Line of each instance's table, by name (for errors found later).
    pub lines: BTreeMap<String, InstanceLines>,
}

/// Where an instance's keys are in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceLines {
    pub table: usize,
    pub keys: BTreeMap<&'static str, usize>,
}

impl InstanceLines {
    /// The line of `key` in this instance (or in `[defaults]`), else of the
    /// instance's table.
    pub fn of(&self, key: &str) -> usize {
        self.keys.get(key).copied().unwrap_or(self.table)
    }
}

/// A problem in a file: `path:line: key: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    pub path: PathBuf,
    pub line: usize,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(
                f,
                "{}:{}: {key}: {}",
                self.path.display(),
                self.line,
                self.message
            ),
            None => write!(f, "{}:{}: {}", self.path.display(), self.line, self.message),
        }
    }
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<File, Vec<FileError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![FileError {
            path: path.to_owned(),
            line: 0,
            key: None,
            message: format!("cannot read the configuration file: {e}"),
        }]
    })?;
    parse(path, &text)
}

/// Line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map_or(1, |before| before.matches('\n').count() + 1)
}

type Table<'i> = DeTable<'i>;

/// One instance's keys, merged with `[defaults]`, with their lines.
struct Keys<'a, 'i> {
    values: BTreeMap<&'static str, (&'a Spanned<DeValue<'i>>, usize)>,
}

/// Parses and validates a configuration file's text.
pub fn parse(path: &Path, text: &str) -> Result<File, Vec<FileError>> {
    let err = |line: usize, key: Option<&str>, message: String| FileError {
        path: path.to_owned(),
        line,
        key: key.map(str::to_owned),
        message,
    };
    let doc = match DeTable::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            // toml's message can span lines (a snippet); the first says it.
            let message = e
                .message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned();
            return Err(vec![err(line, None, format!("not valid TOML: {message}"))]);
        }
    };
    let mut errors = Vec::new();
    let mut defaults: Option<&Table> = None;
    let mut defaults_line = 1;
    let mut tables: Vec<(&Table, usize)> = Vec::new();
    for (key, value) in doc.get_ref() {
        let line = line_of(text, key.span().start);
        match (key.get_ref().as_ref(), value.get_ref()) {
            ("defaults", DeValue::Table(t)) => {
                defaults = Some(t);
                defaults_line = line;
            }
            ("instance", DeValue::Array(items)) => {
                for item in items.iter() {
                    match item.get_ref() {
                        DeValue::Table(t) => tables.push((t, line_of(text, item.span().start))),
                        _ => errors.push(err(
                            line_of(text, item.span().start),
                            Some("instance"),
                            "must be a table: write each instance as [[instance]]".into(),
                        )),
                    }
                }
            }
            ("defaults", _) => errors.push(err(
                line,
                Some("defaults"),
                "must be a table: [defaults]".into(),
            )),
            ("instance", _) => errors.push(err(
                line,
                Some("instance"),
                "must be an array of tables: [[instance]]".into(),
            )),
            (other, _) => errors.push(err(
                line,
                Some(other),
                "unknown top-level key: the file holds [defaults] and [[instance]] tables".into(),
            )),
        }
    }
    // Unknown keys in [defaults].
    if let Some(d) = defaults {
        for key in d.keys() {
            let name = key.get_ref().as_ref();
            if name == "name" || !KEYS.iter().any(|(k, _)| *k == name) {
                errors.push(err(
                    line_of(text, key.span().start),
                    Some(name),
                    unknown_key_message(name, true),
                ));
            }
        }
    }
    if tables.is_empty() && errors.is_empty() {
        errors.push(err(
            defaults_line,
            None,
            "no [[instance]] table: nothing to run".into(),
        ));
    }
    let mut instances = Vec::new();
    let mut lines = BTreeMap::new();
    for (table, table_line) in tables {
        match instance_from(text, defaults, table, table_line) {
            Ok((instance, at)) => {
                for p in instance.problems() {
                    errors.push(err(at.of(p.key), Some(p.key), p.message));
                }
                if lines.contains_key(&instance.name) {
                    let first: &InstanceLines = &lines[&instance.name];
                    errors.push(err(
                        at.of("name"),
                        Some("name"),
                        format!(
                            "{:?} is already the name of the instance at line {}; names must be unique",
                            instance.name, first.table
                        ),
                    ));
                    continue;
                }
                lines.insert(instance.name.clone(), at);
                instances.push(instance);
            }
            Err(mut e) => {
                for (line, key, message) in e.drain(..) {
                    errors.push(err(line, key.as_deref(), message));
                }
            }
        }
    }
    for p in conflicts(&instances) {
        let at = &lines[&p.instance];
        errors.push(err(at.of(p.key), Some(p.key), p.message));
    }
    if errors.is_empty() {
        Ok(File {
            path: path.to_owned(),
            instances,
            lines,
        })
    } else {
        errors.sort_by_key(|e| e.line);
        Err(errors)
    }
}

fn unknown_key_message(name: &str, in_defaults: bool) -> String {
    if in_defaults && name == "name" {
        return "an instance's name cannot have a default: names are unique".into();
    }
    "unknown key; an instance's keys are the flags of `vipwatch backup` and `vipwatch master` \
     with _ for - (e.g. dead_after), plus name and role"
        .into()
}

type KeyError = (usize, Option<String>, String);

/// Builds one instance from its table and `[defaults]`; returns it with the
/// lines of its keys.
fn instance_from<'a, 'i>(
    text: &str,
    defaults: Option<&'a Table<'i>>,
    table: &'a Table<'i>,
    table_line: usize,
) -> Result<(Instance, InstanceLines), Vec<KeyError>> {
    let mut errors: Vec<KeyError> = Vec::new();
    let mut keys = Keys {
        values: BTreeMap::new(),
    };
    let mut own: Vec<&'static str> = Vec::new();
    for (source, is_default) in [(defaults, true), (Some(table), false)] {
        let Some(source) = source else { continue };
        for (key, value) in source {
            let name = key.get_ref().as_ref();
            let line = line_of(text, key.span().start);
            let Some((known, _)) = KEYS.iter().find(|(k, _)| *k == name) else {
                if !is_default {
                    errors.push((
                        line,
                        Some(name.to_owned()),
                        unknown_key_message(name, false),
                    ));
                }
                continue;
            };
            if !is_default {
                own.push(known);
            }
            keys.values.insert(known, (value, line));
        }
    }
    // An instance that sets its own kind of health check replaces the
    // default one, rather than adding a second check to it.
    const CHECK_KINDS: [&str; 3] = ["health_cmd", "health_http", "health_tcp"];
    if own.iter().any(|k| CHECK_KINDS.contains(k)) {
        for kind in CHECK_KINDS {
            if !own.contains(&kind) {
                keys.values.remove(kind);
            }
        }
        // The default HTTP check's companions go with it.
        if !own.contains(&"health_http") {
            for companion in ["health_expect", "health_tls_ca", "health_insecure"] {
                if !own.contains(&companion) {
                    keys.values.remove(companion);
                }
            }
        }
    }
    let mut at = InstanceLines {
        table: table_line,
        keys: keys
            .values
            .iter()
            .map(|(k, (_, line))| (*k, *line))
            .collect(),
    };
    let role = match keys.string("role") {
        Ok(Some(role)) if role == "backup" || role == "master" => role,
        Ok(Some(other)) => {
            errors.push((
                at.of("role"),
                Some("role".into()),
                format!("{other:?} is not a role: use \"backup\" or \"master\""),
            ));
            return Err(errors);
        }
        Ok(None) => {
            errors.push((
                table_line,
                Some("role".into()),
                "missing: every instance needs role = \"backup\" or role = \"master\"".into(),
            ));
            return Err(errors);
        }
        Err(e) => {
            errors.push(e);
            return Err(errors);
        }
    };
    // A key of the other role is an error in the instance, ignored when it
    // comes from [defaults].
    for key in &own {
        if let Some((_, Some(r))) = KEYS.iter().find(|(k, _)| k == key)
            && *r != role
        {
            errors.push((
                at.of(key),
                Some((*key).to_owned()),
                format!("is a {r} key, but this instance has role = {role:?}"),
            ));
        }
    }
    keys.values.retain(|k, _| {
        KEYS.iter()
            .any(|(key, r)| key == k && r.is_none_or(|r| r == role))
    });
    at.keys.retain(|k, _| keys.values.contains_key(k));

    let mut get = Getter {
        keys: &keys,
        errors: &mut errors,
        table_line,
    };
    let iface = get.required("iface", |s| Ok(s.to_owned()));
    let vip = get.required("vip", |s| s.parse::<Vip>());
    let name = get
        .optional("name", |s| Ok(s.to_owned()))
        .or_else(|| vip.map(|v| v.addr.to_string()));
    let garp = Garp {
        count: get.integer("garp_count").unwrap_or(DEFAULT_GARP_COUNT),
        interval_ns: duration_ns(
            get.optional("garp_interval", parse_duration)
                .unwrap_or(DEFAULT_GARP_INTERVAL),
        ),
        refresh_ns: get
            .optional("garp_refresh", parse_duration)
            .map(duration_ns),
    };
    let on_change = get.optional("on_change", |s| Ok(s.to_owned()));
    let xdp_mode = get
        .optional("xdp_mode", parse_xdp_mode)
        .unwrap_or(ModeArg::Auto);
    let auth_key_file = get.optional("auth_key_file", |s| Ok(std::path::PathBuf::from(s)));
    let defaults = Conn::default();
    let conn = Conn {
        kick: get
            .optional("conn_kick", parse_kick)
            .unwrap_or(defaults.kick),
        sync: get
            .optional("conn_sync", parse_duration)
            .unwrap_or(defaults.sync),
        table: get.integer("conn_table").unwrap_or(defaults.table),
        port: get.integer("conn_sync_port").unwrap_or(defaults.port),
        after_hook: get.boolean("kick_after_hook").unwrap_or(false),
        hook_timeout: get
            .optional("kick_hook_timeout", parse_duration)
            .unwrap_or(defaults.hook_timeout),
    };
    let health = match check_spec(
        get.optional("health_cmd", |s| Ok(s.to_owned())),
        get.optional("health_http", |s| Ok(s.to_owned())),
        get.optional("health_tcp", |s| Ok(s.to_owned())),
        get.optional("health_expect", |s| Ok(s.to_owned())),
        get.optional("health_tls_ca", |s| Ok(PathBuf::from(s))),
        get.boolean("health_insecure").unwrap_or(false),
    ) {
        Ok(check) => check.map(|check| Health {
            check,
            interval: get
                .optional("health_interval", parse_duration)
                .unwrap_or(DEFAULT_HEALTH_INTERVAL),
            fall: get.integer("health_fall").unwrap_or(DEFAULT_HEALTH_FALL),
            rise: get.integer("health_rise").unwrap_or(DEFAULT_HEALTH_RISE),
        }),
        Err(Problem { key, message }) => {
            get.error(key, message);
            None
        }
    };
    let role = if role == "backup" {
        let master = get.required("master", |s| {
            s.parse::<IpAddr>()
                .map_err(|_| format!("{s:?} is not an IP address"))
        });
        let backup = Backup {
            master: master.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            interval: get
                .optional("interval", parse_duration)
                .unwrap_or(DEFAULT_INTERVAL),
            dead_after: get
                .optional("dead_after", parse_duration)
                .unwrap_or(DEFAULT_DEAD_AFTER),
            rise: get.integer("rise").unwrap_or(DEFAULT_RISE),
            witness: get.optional("witness", |s| {
                s.parse::<IpAddr>()
                    .map_err(|_| format!("{s:?} is not an IP address"))
            }),
            failback: get
                .optional("failback", parse_failback)
                .unwrap_or(Failback::OnClaim),
            stray_vip: get
                .optional("stray_vip", parse_stray)
                .unwrap_or(crate::backup::Stray::Remove),
            count: get.integer("count"),
            rt_priority: get.integer("rt_priority"),
        };
        master.map(|_| Role::Backup(backup))
    } else {
        let preempt = !get.boolean("no_preempt").unwrap_or(false);
        Some(Role::Master(Master { preempt }))
    };
    match (name, iface, vip, role) {
        (Some(name), Some(iface), Some(vip), Some(role)) if errors.is_empty() => Ok((
            Instance {
                name,
                iface,
                vip,
                garp,
                on_change,
                xdp_mode,
                conn,
                auth_key_file,
                health,
                role,
            },
            at,
        )),
        _ => Err(errors),
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Keys<'_, '_> {
    fn string(&self, key: &str) -> Result<Option<String>, KeyError> {
        match self.values.get(key) {
            None => Ok(None),
            Some((v, line)) => match v.get_ref() {
                DeValue::String(s) => Ok(Some(s.to_string())),
                other => Err((
                    *line,
                    Some(key.to_owned()),
                    format!("must be a string, not a {}", other.type_str()),
                )),
            },
        }
    }
}

/// Typed reads of an instance's keys; each failure is recorded with the
/// key's line.
struct Getter<'k, 'a, 'i> {
    keys: &'k Keys<'a, 'i>,
    errors: &'k mut Vec<KeyError>,
    /// Where a missing key is reported.
    table_line: usize,
}

impl Getter<'_, '_, '_> {
    fn line(&self, key: &str) -> usize {
        self.keys
            .values
            .get(key)
            .map_or(self.table_line, |(_, line)| *line)
    }

    fn error(&mut self, key: &str, message: String) {
        let line = self.line(key);
        self.errors.push((line, Some(key.to_owned()), message));
    }

    fn optional<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match self.keys.string(key) {
            Ok(Some(s)) => match parse(&s) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.error(key, e);
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                self.errors.push(e);
                None
            }
        }
    }

    fn required<T>(
        &mut self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        if !self.keys.values.contains_key(key) {
            self.errors.push((
                self.table_line,
                Some(key.to_owned()),
                format!("missing: this instance needs {key}"),
            ));
            return None;
        }
        self.optional(key, parse)
    }

    fn integer<T: TryFrom<u64>>(&mut self, key: &str) -> Option<T> {
        let (v, line) = *self.keys.values.get(key)?;
        let value = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).ok(),
            other => {
                self.errors.push((
                    line,
                    Some(key.to_owned()),
                    format!("must be a number, not a {}", other.type_str()),
                ));
                return None;
            }
        };
        match value.and_then(|n| T::try_from(n).ok()) {
            Some(n) => Some(n),
            None => {
                self.errors.push((
                    line,
                    Some(key.to_owned()),
                    "is out of range (a non-negative number is expected)".into(),
                ));
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        let (v, line) = *self.keys.values.get(key)?;
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.errors.push((
                    line,
                    Some(key.to_owned()),
                    format!("must be true or false, not a {}", other.type_str()),
                ));
                None
            }
        }
    }
}

/// A problem between instances, found on `instance`'s `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub instance: String,
    pub key: &'static str,
    pub message: String,
}

/// Problems between instances: the same VIP twice, interfaces whose
/// instances disagree on the XDP mode, too many instances on an interface.
pub fn conflicts(instances: &[Instance]) -> Vec<Conflict> {
    let mut out = Vec::new();
    let mut vips: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let mut modes: BTreeMap<&str, (ModeArg, u32, u16, &str)> = BTreeMap::new();
    let mut per_iface: BTreeMap<&str, u32> = BTreeMap::new();
    for i in instances {
        if let Some(other) = vips.insert(i.vip.addr, &i.name) {
            out.push(Conflict {
                instance: i.name.clone(),
                key: "vip",
                message: format!(
                    "{} is already the VIP of instance {other:?}; a VIP belongs to one instance",
                    i.vip.addr
                ),
            });
        }
        match modes.get(i.iface.as_str()) {
            Some((mode, _, _, other)) if *mode != i.xdp_mode => out.push(Conflict {
                instance: i.name.clone(),
                key: "xdp_mode",
                message: format!(
                    "{:?} differs from instance {other:?} on {}: one XDP program serves the whole interface",
                    i.xdp_mode, i.iface
                ),
            }),
            Some((_, table, _, other)) if *table != i.conn.table => out.push(Conflict {
                instance: i.name.clone(),
                key: "conn_table",
                message: format!(
                    "{} differs from instance {other:?} on {}: one connection table serves the whole interface",
                    i.conn.table, i.iface
                ),
            }),
            Some((_, _, port, other)) if *port != i.conn.port => out.push(Conflict {
                instance: i.name.clone(),
                key: "conn_sync_port",
                message: format!(
                    "{} differs from instance {other:?} on {}: one socket receives the interface's syncs",
                    i.conn.port, i.iface
                ),
            }),
            Some(_) => {}
            None => {
                modes.insert(&i.iface, (i.xdp_mode, i.conn.table, i.conn.port, &i.name));
            }
        }
        let n = per_iface.entry(&i.iface).or_default();
        *n += 1;
        if *n == vipwatch_common::MAX_SLOTS + 1 {
            out.push(Conflict {
                instance: i.name.clone(),
                key: "iface",
                message: format!(
                    "more than {} instances on {}",
                    vipwatch_common::MAX_SLOTS,
                    i.iface
                ),
            });
        }
    }
    out
}

/// What the host looks like, for the checks that depend on it: the
/// interfaces and their addresses (with prefix length).
pub trait Host {
    fn iface_exists(&self, iface: &str) -> bool;
    fn addresses(&self) -> Vec<(String, IpAddr, u8)>;
    /// `addr` as bound on `iface`, if it is.
    fn bound(&self, iface: &str, addr: IpAddr) -> Option<Bound>;
    /// Whether `iface` has IPv6 (the kernel has it and
    /// `net.ipv6.conf.IFACE.disable_ipv6` is 0).
    fn ipv6_enabled(&self, iface: &str) -> bool;
}

/// An address bound on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bound {
    /// The first address of its subnet on the interface (removing it
    /// removes the subnet's other addresses too).
    pub primary: bool,
    /// vipwatch added it (a leftover of an earlier run).
    pub ours: bool,
}

/// Problems of an instance on this host: a missing interface, a master or
/// witness that is this host, or the broadcast or network address of one
/// of its subnets.
pub fn host_problems(i: &Instance, host: &dyn Host) -> Vec<Problem> {
    let mut out = Vec::new();
    if !host.iface_exists(&i.iface) {
        out.push(Problem::new(
            "iface",
            format!(
                "interface {} does not exist; `ip link` lists interfaces",
                i.iface
            ),
        ));
    }
    match host.bound(&i.iface, i.vip.addr) {
        Some(Bound { primary: true, .. }) => out.push(Problem::new(
            "vip",
            format!(
                "{} is this host's own address on {} (its primary address for that subnet), not a VIP: \
                 releasing it would take the host's address and every other address of the subnet with it",
                i.vip.addr, i.iface
            ),
        )),
        Some(Bound { ours: false, .. }) if matches!(i.role, Role::Master(_)) => {
            out.push(Problem::new(
                "vip",
                format!(
                    "{} is already on {} and vipwatch did not add it; a master never removes an address \
                     it did not add: remove it (`ip address del {} dev {}`) or choose another VIP",
                    i.vip.addr, i.iface, i.vip, i.iface
                ),
            ));
        }
        _ => {}
    }
    if host.iface_exists(&i.iface) && !host.ipv6_enabled(&i.iface) {
        let mut v6 = vec![("vip", i.vip.addr)];
        if let Role::Backup(b) = &i.role {
            v6.push(("master", b.master));
        }
        for (key, addr) in v6.into_iter().filter(|(_, a)| a.is_ipv6()) {
            out.push(Problem::new(
                key,
                format!(
                    "{addr} needs IPv6 on {}, which has it disabled (net.ipv6.conf.{}.disable_ipv6 \
                     is 1, or the kernel has no IPv6)",
                    i.iface, i.iface
                ),
            ));
        }
    }
    let Role::Backup(b) = &i.role else {
        return out;
    };
    let addresses = host.addresses();
    let mut peers = vec![("master", b.master)];
    peers.extend(b.witness.map(|w| ("witness", w)));
    for (key, peer) in peers {
        // A link-local address means something on one link only (RFC 4291
        // §2.5.6): ours on another interface says nothing about this one.
        let link_local = matches!(peer, IpAddr::V6(v6) if v6.is_unicast_link_local());
        if let Some((iface, _, _)) = addresses
            .iter()
            .find(|(iface, a, _)| *a == peer && (!link_local || *iface == i.iface))
        {
            out.push(Problem::new(
                key,
                format!("{peer} is an address of this host ({iface}); {key} must be another host"),
            ));
            continue;
        }
        // IPv6 has no broadcast address (RFC 4291 §2); the subnet-router
        // anycast address is a router's, refused by nobody here.
        let IpAddr::V4(peer) = peer else { continue };
        for (iface, addr, prefix) in &addresses {
            let IpAddr::V4(a) = addr else { continue };
            if *prefix >= 31 {
                continue;
            }
            let mask = u32::MAX << (32 - prefix);
            let net = u32::from(*a) & mask;
            let p = u32::from(peer);
            if p & mask != net {
                continue;
            }
            if p == net || p == net | !mask {
                let what = if p == net { "network" } else { "broadcast" };
                out.push(Problem::new(
                    key,
                    format!(
                        "{peer} is the {what} address of {a}/{prefix} on {iface}; {key} must be a host"
                    ),
                ));
                // One subnet says it; its other addresses would repeat it.
                break;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<File, Vec<String>> {
        parse(Path::new("vw.toml"), text).map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    const TWO: &str = r#"
[defaults]
interval = "1ms"
dead_after = "5ms"
health_interval = "100ms"

[[instance]]
name = "redis"
role = "backup"
iface = "eth0"
vip = "192.0.2.100/24"
master = "192.0.2.1"
witness = "192.0.2.254"

[[instance]]
name = "mongo"
role = "master"
iface = "eth0"
vip = "192.0.2.101/24"
health_cmd = "true"
no_preempt = true
"#;

    #[test]
    fn a_file_with_two_instances_and_defaults() {
        let f = file(TWO).expect("valid");
        assert_eq!(f.instances.len(), 2);
        let redis = &f.instances[0];
        assert_eq!(redis.name, "redis");
        let Role::Backup(b) = &redis.role else {
            panic!("backup")
        };
        assert_eq!(b.interval, Duration::from_millis(1), "from [defaults]");
        assert_eq!(b.dead_after, Duration::from_millis(5));
        assert_eq!(b.rise, DEFAULT_RISE, "built-in default");
        assert_eq!(b.witness, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 254))));
        assert_eq!(redis.garp.count, DEFAULT_GARP_COUNT);
        let mongo = &f.instances[1];
        let Role::Master(m) = &mongo.role else {
            panic!("master")
        };
        assert!(!m.preempt);
        let h = mongo.health.as_ref().expect("health");
        assert_eq!(h.interval, Duration::from_millis(100));
        assert_eq!(h.check, CheckSpec::Command("true".into()));
        assert_eq!(f.lines["mongo"].of("no_preempt"), 21);
    }

    #[test]
    fn health_checks_belong_to_both_roles() {
        // An instance's own kind of check replaces the default kind.
        let f = file(
            "[defaults]\nhealth_http = \"http://127.0.0.1/h\"\nhealth_expect = \"OK\"\n\
             [[instance]]\nrole = \"backup\"\niface = \"eth0\"\nvip = \"192.0.2.102/24\"\nmaster = \"192.0.2.1\"\n\
             health_tcp = \"127.0.0.1:6379\"\n",
        )
        .expect("the default http check and its companion give way to the instance's tcp check");
        assert_eq!(
            f.instances[0].health.as_ref().map(|h| &h.check),
            Some(&CheckSpec::Tcp("127.0.0.1:6379".into()))
        );
        let f = file(
            "[defaults]\nhealth_tcp = \"127.0.0.1:6379\"\n\
             [[instance]]\nrole = \"backup\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nmaster = \"192.0.2.1\"\n\
             [[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.101/24\"\n\
             health_http = \"https://127.0.0.1:8443/health\"\n",
        )
        .expect("valid");
        let checks: Vec<&CheckSpec> = f
            .instances
            .iter()
            .map(|i| &i.health.as_ref().expect("health").check)
            .collect();
        assert_eq!(checks[0], &CheckSpec::Tcp("127.0.0.1:6379".into()));
        assert!(matches!(checks[1], CheckSpec::Http { url, .. } if url.starts_with("https://")));
        // Two kinds in one instance are an error.
        let errors = file(
            "[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.101/24\"\n\
             health_http = \"https://127.0.0.1:8443/health\"\nhealth_tcp = \"127.0.0.1:1\"\n",
        )
        .expect_err("two checks");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("one of health_cmd, health_http and health_tcp")),
            "{errors:?}"
        );
        let f = file(
            "[[instance]]\nrole = \"backup\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nmaster = \"192.0.2.1\"\n\
             health_tcp = \"127.0.0.1:6379\"\nhealth_fall = 1\n",
        )
        .expect("a backup with a check");
        let h = f.instances[0].health.as_ref().expect("health");
        assert_eq!(h.check, CheckSpec::Tcp("127.0.0.1:6379".into()));
        assert_eq!(h.fall, 1);
        for (text, want) in [
            (
                "health_tcp = \"127.0.0.1\"\n",
                "health_tcp: \"127.0.0.1\": HOST:PORT expected",
            ),
            (
                "health_insecure = true\n",
                "health_insecure: needs health_http",
            ),
            (
                "health_http = \"http://x/\"\nhealth_tls_ca = \"/nonexistent.pem\"\n",
                "health_tls_ca: /nonexistent.pem",
            ),
        ] {
            let errors = file(&format!(
                "[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\n{text}"
            ))
            .expect_err(text);
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{text}: {errors:?}"
            );
        }
    }

    #[test]
    fn the_name_defaults_to_the_vip_address() {
        let f =
            file("[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\n")
                .expect("valid");
        assert_eq!(f.instances[0].name, "192.0.2.100");
    }

    /// Each case: a file, the one error line it must give.
    #[test]
    fn every_bad_config_gives_one_line_with_file_line_and_key() {
        let backup = "[[instance]]\nrole = \"backup\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nmaster = \"192.0.2.1\"\n";
        let cases: &[(String, &str)] = &[
            (format!("{backup}interval = \"0ms\"\n"), "vw.toml:6: interval: 0ns is out of range"),
            (format!("{backup}interval = 2\n"), "vw.toml:6: interval: must be a string, not a integer"),
            (format!("{backup}interval = \"2\"\n"), "vw.toml:6: interval: \"2\" needs a unit"),
            (format!("{backup}dead_after = \"3ms\"\n"), "vw.toml:6: dead_after: 3ms must cover at least 2 probe intervals"),
            (format!("{backup}rise = 0\n"), "vw.toml:6: rise: 0 must be from 1 to 1000"),
            (format!("{backup}rise = \"5\"\n"), "vw.toml:6: rise: must be a number, not a string"),
            (format!("{backup}witness = \"192.0.2.1\"\n"), "vw.toml:6: witness: 192.0.2.1 must be a third host"),
            (format!("{backup}failback = \"sometimes\"\n"), "vw.toml:6: failback: \"sometimes\" is not a failback mode: use on-claim or manual"),
            (format!("{backup}xdp_mode = \"hw\"\n"), "vw.toml:6: xdp_mode: \"hw\" is not an XDP mode"),
            (format!("{backup}no_preempt = true\n"), "vw.toml:6: no_preempt: is a master key, but this instance has role = \"backup\""),
            (format!("{backup}dead_afer = \"10ms\"\n"), "vw.toml:6: dead_afer: unknown key"),
            (format!("{backup}garp_count = 0\n"), "vw.toml:6: garp_count: 0 must be from 1 to 100"),
            (format!("{backup}conn_kick = \"fin\"\n"), "vw.toml:6: conn_kick: \"fin\" is not a kick mode: use ack, rst or off"),
            (format!("{backup}conn_sync = \"0ms\"\n"), "vw.toml:6: conn_sync: 0ns must be from 1ms to 1s"),
            (format!("{backup}conn_table = 10\n"), "vw.toml:6: conn_table: 10 must be from 1024"),
            (format!("{backup}kick_after_hook = true\n"), "vw.toml:6: kick_after_hook: needs on_change"),
            (format!("{backup}on_change = \"true\"\nkick_hook_timeout = \"3600s\"\n"), "vw.toml:7: kick_hook_timeout: 3600s must be from 1ms to 10s"),
            (backup.replace("192.0.2.1\"", "224.0.0.1\""), "vw.toml:5: master: 224.0.0.1 must be a unicast address"),
            (backup.replace("192.0.2.100/24", "192.0.2.100"), "vw.toml:4: vip: \"192.0.2.100\" is not ADDRESS/PREFIX"),
            (backup.replace("master = \"192.0.2.1\"\n", ""), "vw.toml:1: master: missing"),
            (backup.replace("role = \"backup\"\n", ""), "vw.toml:1: role: missing"),
            (backup.replace("\"backup\"", "\"primary\""), "vw.toml:2: role: \"primary\" is not a role"),
            (backup.replace("\"eth0\"", "\"an-interface-name-too-long\""), "vw.toml:3: iface: \"an-interface-name-too-long\" is not a valid interface name"),
            (format!("{backup}{backup}"), "vw.toml:6: name: \"192.0.2.100\" is already the name of the instance at line 1"),
            (format!("{backup}{}", backup.replace("\"eth0\"", "\"eth0\"\nname = \"b\"")), "vw.toml:10: vip: 192.0.2.100 is already the VIP of instance \"192.0.2.100\""),
            ("[defaults]\nname = \"x\"\n[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\n".into(), "vw.toml:2: name: an instance's name cannot have a default"),
            ("[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nhealth_expect = \"ok\"\n".into(), "vw.toml:5: health_expect: needs health_http"),
            ("[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nhealth_http = \"ftp://x/\"\n".into(), "vw.toml:5: health_http: \"ftp://x/\": only http:// and https://"),
            (backup.replace("192.0.2.1\"", "2001:db8::1\"\nwitness = \"192.0.2.254\""), "vw.toml:6: witness: 192.0.2.254 must be of the master's address family"),
            ("[[instance]]\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nno_preempt = \"yes\"\n".into(), "vw.toml:5: no_preempt: must be true or false, not a string"),
            ("[[instance]\nrole = 1\n".into(), "vw.toml:1: not valid TOML"),
            ("instances = 1\n".into(), "vw.toml:1: instances: unknown top-level key"),
            ("[defaults]\ninterval = \"1ms\"\n".into(), "vw.toml:1: no [[instance]] table"),
            (format!("{backup}{}", "[[instance]]\nname = \"m\"\nrole = \"master\"\niface = \"eth0\"\nvip = \"192.0.2.101/24\"\nxdp_mode = \"skb\"\n"), "vw.toml:11: xdp_mode: Skb differs from instance \"192.0.2.100\" on eth0"),
        ];
        for (text, expected) in cases {
            let errors = file(text).expect_err(expected);
            assert_eq!(errors.len(), 1, "{expected}: {errors:#?}");
            assert!(
                errors[0].starts_with(expected),
                "{:?}\n  does not start with\n{expected:?}",
                errors[0]
            );
            assert!(!errors[0].contains('\n'), "one line: {:?}", errors[0]);
        }
    }

    #[test]
    fn a_default_for_the_other_role_is_ignored() {
        let f = file(
            "[defaults]\nno_preempt = true\ninterval = \"1ms\"\n[[instance]]\nrole = \"backup\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nmaster = \"192.0.2.1\"\n",
        )
        .expect("valid");
        assert_eq!(f.instances.len(), 1);
    }

    struct FakeHost;

    impl Host for FakeHost {
        /// eth1 has IPv6 disabled.
        fn iface_exists(&self, iface: &str) -> bool {
            iface == "eth0" || iface == "eth1"
        }
        fn addresses(&self) -> Vec<(String, IpAddr, u8)> {
            vec![
                ("eth0".into(), "192.0.2.2".parse().expect("literal"), 24),
                ("eth0".into(), "192.0.2.150".parse().expect("literal"), 24),
                ("eth0".into(), "fe80::2".parse().expect("literal"), 64),
                ("eth1".into(), "fe80::1".parse().expect("literal"), 64),
            ]
        }
        fn bound(&self, iface: &str, addr: IpAddr) -> Option<Bound> {
            let primary = addr == IpAddr::from([192, 0, 2, 2]);
            let secondary = addr == IpAddr::from([192, 0, 2, 150]);
            (iface == "eth0" && (primary || secondary)).then_some(Bound {
                primary,
                ours: false,
            })
        }
        fn ipv6_enabled(&self, iface: &str) -> bool {
            iface == "eth0"
        }
    }

    #[test]
    fn host_checks_refuse_what_cannot_work() {
        let base = file(
            "[[instance]]\nrole = \"backup\"\niface = \"eth0\"\nvip = \"192.0.2.100/24\"\nmaster = \"192.0.2.1\"\nwitness = \"192.0.2.254\"\n",
        )
        .expect("valid")
        .instances
        .remove(0);
        assert!(host_problems(&base, &FakeHost).is_empty());
        let with = |f: &dyn Fn(&mut Backup), iface: &str| {
            let mut i = base.clone();
            i.iface = iface.into();
            if let Role::Backup(b) = &mut i.role {
                f(b);
            }
            host_problems(&i, &FakeHost)
        };
        type Change<'a> = &'a dyn Fn(&mut Backup);
        let cases: [(Change, &str, &str, &str); 5] = [
            (
                &|b| b.master = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
                "eth0",
                "master",
                "is an address of this host (eth0)",
            ),
            (
                &|b| b.witness = Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))),
                "eth0",
                "witness",
                "is an address of this host",
            ),
            (
                &|b| b.master = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 255)),
                "eth0",
                "master",
                "broadcast address of 192.0.2.2/24",
            ),
            (
                &|b| b.master = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 0)),
                "eth0",
                "master",
                "network address",
            ),
            (&|_| {}, "eth9", "iface", "interface eth9 does not exist"),
        ];
        for (change, iface, key, text) in cases {
            let p = with(change, iface);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, key);
            assert!(p[0].message.contains(text), "{:?}", p[0].message);
        }
    }

    #[test]
    fn ipv6_needs_ipv6_on_the_interface() {
        let v6 = file(
            "[[instance]]\nrole = \"backup\"\niface = \"eth1\"\nvip = \"2001:db8::100/64\"\nmaster = \"2001:db8::1\"\n",
        )
        .expect("valid")
        .instances
        .remove(0);
        let p = host_problems(&v6, &FakeHost);
        let keys: Vec<&str> = p.iter().map(|p| p.key).collect();
        assert_eq!(keys, ["vip", "master"], "{p:?}");
        assert!(p[0].message.contains("disable_ipv6"), "{}", p[0].message);
        let mut on_eth0 = v6;
        on_eth0.iface = "eth0".into();
        assert!(host_problems(&on_eth0, &FakeHost).is_empty());
        // A link-local master is compared with the link's own addresses:
        // fe80::1 is eth1's, another link's, so a host on eth0 may have it.
        let master_is = |addr: &str| {
            let mut i = on_eth0.clone();
            if let Role::Backup(b) = &mut i.role {
                b.master = addr.parse().expect("literal");
            }
            host_problems(&i, &FakeHost)
        };
        assert!(master_is("fe80::1").is_empty());
        let p = master_is("fe80::2");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("is an address of this host (eth0)"),
            "{p:?}"
        );
    }

    #[test]
    fn a_vip_that_is_a_host_address_or_not_ours_is_refused() {
        // Issue "Never lose the VIP", row 8: `vipwatch master --vip` = the
        // host's own address deleted it and every secondary on stop.
        let f = file(TWO).expect("valid");
        let master = f
            .instances
            .iter()
            .find(|i| matches!(i.role, Role::Master(_)))
            .expect("a master")
            .clone();
        let backup = f.instances[0].clone();
        let at = |mut i: Instance, vip: &str| {
            i.vip = vip.parse().expect("literal");
            host_problems(&i, &FakeHost)
        };
        for i in [&master, &backup] {
            let p = at(i.clone(), "192.0.2.2/24");
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].key, "vip");
            assert!(
                p[0].message.contains("this host's own address"),
                "{}",
                p[0].message
            );
        }
        // A secondary someone else added: the master refuses (it would
        // remove it one day); a backup starts and applies its stray rule.
        let p = at(master.clone(), "192.0.2.150/24");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].message.contains("vipwatch did not add it"),
            "{}",
            p[0].message
        );
        assert!(at(backup, "192.0.2.150/24").is_empty());
        assert!(at(master, "192.0.2.101/24").is_empty());
    }

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
                addr: "192.0.2.100".parse().expect("literal"),
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
            "::ffff:192.0.2.100/120",
            "ff02::1/64",
        ] {
            assert!(bad.parse::<Vip>().is_err(), "{bad:?} accepted");
        }
    }
}
