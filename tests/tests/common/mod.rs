//! Helpers shared by the end-to-end test files: the standard lab, running
//! vipwatch in it, and reading `vipwatch stats --json`.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test file uses a different subset of the helpers and re-exports"
)]

pub mod cases;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use vipwatch::prober::internet_checksum;
use vipwatch_tests::{Lab, Proc, frames, require_root, vipwatch_bin, wait_until};

pub use vipwatch_tests::scenario::{BACKUP, CLIENT, Family, GATEWAY, MASTER, VIP_CIDR};

/// How long the helpers below wait for the daemon to get somewhere.
const WAIT: Duration = Duration::from_secs(10);

pub const ATTACKER: &str = "192.0.2.66";

/// The IPv6 lab: the same hosts in 2001:db8::/64 (see
/// `vipwatch_tests::scenario::v6`).
pub mod v6 {
    pub use vipwatch_tests::scenario::v6::{BACKUP, CLIENT, GATEWAY, MASTER, VIP, VIP_CIDR};

    pub const ATTACKER: &str = "2001:db8::66";
}

/// The attacker's address in `family`'s lab.
pub fn attacker(family: Family) -> &'static str {
    match family {
        Family::V4 => ATTACKER,
        Family::V6 => v6::ATTACKER,
    }
}

/// master, backup, client and attacker on one bridge; the bridge itself
/// answers as the gateway (a witness). In IPv6 the same hosts (so the same
/// MACs) have the addresses of [`v6`], with IPv6 enabled everywhere.
pub fn lab_of(family: Family, tag: &str) -> Result<Lab> {
    require_root()?;
    Lab::builder(tag)
        .host("master", &family.cidr(family.master()))
        .host("backup", &family.cidr(family.backup()))
        .host("client", &family.cidr(family.client()))
        .host("attacker", &family.cidr(attacker(family)))
        .gateway(&family.cidr(family.gateway()))
        .ipv6(family == Family::V6)
        .build()
}

/// [`lab_of`] in IPv4.
pub fn standard_lab(tag: &str) -> Result<Lab> {
    lab_of(Family::V4, tag)
}

/// [`lab_of`] in IPv6.
pub fn standard_lab_v6(tag: &str) -> Result<Lab> {
    lab_of(Family::V6, tag)
}

/// Starts `vipwatch backup --master M --vip VIP` of `family`'s lab on the
/// backup's eth0 with `extra` arguments and waits until it has attached.
pub fn start_backup_of(lab: &Lab, family: Family, extra: &[&str]) -> Result<Proc> {
    let mut args = vec![
        "backup",
        "--iface",
        "eth0",
        "--master",
        family.master(),
        "--vip",
        family.vip_cidr(),
    ];
    args.extend_from_slice(extra);
    let p = lab.spawn("backup", vipwatch_bin()?, &args)?;
    p.wait_for_line("XDP attached", WAIT)
        .with_context(|| format!("vipwatch backup did not start:\n{}", p.output()))?;
    Ok(p)
}

/// [`start_backup_of`] in IPv4.
pub fn start_backup(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    start_backup_of(lab, Family::V4, extra)
}

/// [`start_backup_of`] in IPv6.
pub fn start_backup_v6(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    start_backup_of(lab, Family::V6, extra)
}

/// Starts `vipwatch master --vip VIP` of `family`'s lab with `extra`
/// arguments and waits until it holds the VIP.
pub fn spawn_master_of(lab: &Lab, family: Family, extra: &[&str]) -> Result<Proc> {
    let mut args = vec!["master", "--iface", "eth0", "--vip", family.vip_cidr()];
    args.extend_from_slice(extra);
    let p = lab.spawn("master", vipwatch_bin()?, &args)?;
    p.wait_for_line("state -> HOLDING", WAIT)
        .with_context(|| format!("vipwatch master did not claim the VIP:\n{}", p.output()))?;
    Ok(p)
}

/// A backup standing by, then the master's cable pulled: the backup holds
/// the VIP.
pub fn active_backup_of(lab: &Lab, family: Family, extra: &[&str]) -> Result<Proc> {
    let backup = start_backup_of(lab, family, extra)?;
    wait_state(lab, "STANDBY")?;
    lab.link_down("master")?;
    wait_state(lab, "ACTIVE")?;
    Ok(backup)
}

/// Waits until the backup's state is `state`.
pub fn wait_state(lab: &Lab, state: &str) -> Result<Value> {
    wait_stats(lab, &format!("the backup is {state}"), WAIT, |s| {
        s["state"] == state
    })
}

/// The master's host answers the backup's probes again (`rise` in a row).
pub fn wait_master_answers(lab: &Lab) -> Result<Value> {
    wait_stats(lab, "the master answers", WAIT, |s| {
        s["master"]["last_reply_age_ms"]
            .as_f64()
            .is_some_and(|a| a < 5.0)
    })?;
    std::thread::sleep(Duration::from_millis(50));
    stats(lab, "backup")
}

/// The log line of `p` containing `what`, after `after`.
pub fn line(p: &Proc, what: &str, after: Instant) -> Result<String> {
    p.wait_for_line_after(what, after, WAIT)
        .map(|l| l.text)
        .with_context(|| format!("no {what:?} in:\n{}", p.output()))
}

/// `host`'s MAC as bytes.
pub fn mac_of(lab: &Lab, host: &str) -> Result<[u8; 6]> {
    frames::mac(lab.mac(host)?)
}

/// `vipwatch stats --json` run as a separate process in `host`'s namespace.
pub fn stats(lab: &Lab, host: &str) -> Result<Value> {
    let out = lab.output(
        host,
        vipwatch_bin()?,
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

pub fn u(v: &Value, path: &str) -> u64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_u64()
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

pub fn f(v: &Value, path: &str) -> f64 {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_f64()
        .unwrap_or_else(|| panic!("{path} missing or not a number in {v}"))
}

pub fn s<'a>(v: &'a Value, path: &str) -> &'a str {
    path.split('.')
        .fold(v, |v, k| &v[k])
        .as_str()
        .unwrap_or_else(|| panic!("{path} missing or not a string in {v}"))
}

/// Waits until the backup's stats satisfy `cond`.
pub fn wait_stats(
    lab: &Lab,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut(&Value) -> bool,
) -> Result<Value> {
    let mut last = Value::Null;
    wait_until(what, timeout, || {
        // A daemon still starting has no stats yet: retry until the timeout.
        Ok(match stats(lab, "backup") {
            Ok(st) => {
                last = st;
                cond(&last)
            }
            Err(e) => {
                last = Value::String(format!("{e:#}"));
                false
            }
        })
    })
    .with_context(|| format!("last stats: {last}"))?;
    Ok(last)
}

/// The echo identifier of forged replies: the daemon matches replies by
/// slot and nonce, not by identifier, so any value does.
const FORGED_ID: u16 = 0x1234;

/// Sends `count` echo replies forged by the attacker to the backup, 1 ms
/// apart, in the name of `src` (the master, or any address): vipwatch's
/// payload with slot 0 (a daemon's first instance: easy to guess), `nonce`
/// and `family`'s VIP.
pub fn forge_replies(lab: &Lab, family: Family, src: &str, nonce: u64, count: usize) -> Result<()> {
    match family {
        Family::V4 => forge_replies_v4(lab, src.parse()?, nonce, count),
        Family::V6 => forge_replies_v6(lab, src.parse()?, nonce, count),
    }
}

/// IPv4: a raw IP socket with IP_HDRINCL in the attacker's namespace, so the
/// source address can be anything.
fn forge_replies_v4(lab: &Lab, src: Ipv4Addr, nonce: u64, count: usize) -> Result<()> {
    let dst: Ipv4Addr = BACKUP.parse()?;
    lab.in_netns("attacker", move || -> Result<()> {
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        for seq in 0..count {
            let pkt = forged_reply_v4(src, dst, nonce, seq as u64);
            // SAFETY: zeroed sockaddr_in is valid; fields set below.
            let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes(dst.octets());
            // SAFETY: pkt and addr are valid for their lengths.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    pkt.as_ptr().cast(),
                    pkt.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if rc < 0 {
                // SAFETY: fd is ours.
                unsafe { libc::close(fd) };
                bail!("sendto: {}", std::io::Error::last_os_error());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // SAFETY: fd is ours.
        unsafe { libc::close(fd) };
        Ok(())
    })?
}

fn forged_payload(
    family: Family,
    nonce: u64,
    seq: u64,
) -> [u8; vipwatch_common::PROBE_PAYLOAD_LEN] {
    let vip = vipwatch_common::addr_of(family.vip_ip());
    vipwatch_common::ProbePayload {
        slot: 0,
        nonce,
        seq,
        sent_ns: 0,
        vip,
        tag: [0; 8],
    }
    .encode()
}

fn forged_reply_v4(src: Ipv4Addr, dst: Ipv4Addr, nonce: u64, seq: u64) -> Vec<u8> {
    let mut icmp = vec![0u8, 0, 0, 0];
    icmp.extend_from_slice(&FORGED_ID.to_be_bytes());
    icmp.extend_from_slice(&(seq as u16).to_be_bytes());
    icmp.extend_from_slice(&forged_payload(Family::V4, nonce, seq));
    let c = internet_checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0x40, 0, 64, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// IPv6: whole frames from the attacker's eth0 to the backup's MAC through
/// a packet socket, so the source address can be anything.
fn forge_replies_v6(lab: &Lab, src: Ipv6Addr, nonce: u64, count: usize) -> Result<()> {
    let dst: Ipv6Addr = v6::BACKUP.parse()?;
    let eth_src = mac_of(lab, "attacker")?;
    let eth_dst = mac_of(lab, "backup")?;
    let replies: Vec<Vec<u8>> = (0..count as u64)
        .map(|seq| {
            frames::icmpv6_echo_reply(
                eth_dst,
                eth_src,
                src,
                dst,
                FORGED_ID,
                seq as u16,
                &forged_payload(Family::V6, nonce, seq),
            )
        })
        .collect();
    frames::send(lab, "attacker", "eth0", &replies, Duration::from_millis(1))
}

/// A file an `--on-change` hook appends its arguments to, removed when
/// dropped.
pub struct HookFile(std::path::PathBuf);

impl HookFile {
    pub fn new(tag: &str) -> Self {
        Self(std::env::temp_dir().join(format!("vipwatch-hook-{tag}-{}", std::process::id())))
    }

    pub fn command(&self) -> String {
        format!("echo >> {}", self.0.display())
    }

    /// Waits until the hook has written `expected` as a line.
    pub fn wait_for(&self, expected: &str) -> Result<()> {
        let mut text = String::new();
        wait_until(&format!("the hook wrote {expected:?}"), WAIT, || {
            text = std::fs::read_to_string(&self.0).unwrap_or_default();
            Ok(text.lines().any(|l| l == expected))
        })
        .with_context(|| format!("the hook wrote:\n{text}"))?;
        Ok(())
    }
}

impl Drop for HookFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("could not remove {}: {e}", self.0.display());
        }
    }
}

/// A key file for the pair (mode 600), removed with the returned guard.
pub struct KeyFile(std::path::PathBuf);

impl KeyFile {
    pub fn new(lab: &Lab) -> Result<Self> {
        use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
        let path = std::env::temp_dir().join(format!("vipwatch-key-{}", lab.prefix()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        writeln!(f, "0123456789abcdef0123456789abcdef")?;
        Ok(Self(path))
    }

    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
