//! Helpers shared by the end-to-end test files: the standard lab, running
//! vipwatch in it, and reading `vipwatch stats --json`.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use vipwatch::prober::internet_checksum;
use vipwatch_tests::{Lab, Proc, frames, require_root, vipwatch_bin, wait_until};

pub use vipwatch_tests::scenario::{BACKUP, CLIENT, GATEWAY, MASTER, VIP_CIDR};

pub const ATTACKER: &str = "192.0.2.66";

/// The IPv6 lab: the same hosts in 2001:db8::/64 (see
/// `vipwatch_tests::scenario::v6`).
pub mod v6 {
    pub use vipwatch_tests::scenario::v6::{BACKUP, CLIENT, GATEWAY, MASTER, VIP, VIP_CIDR};

    pub const ATTACKER: &str = "2001:db8::66";
}

/// master, backup, client and attacker on one bridge; the bridge itself
/// answers as the gateway (a witness).
pub fn standard_lab(tag: &str) -> Result<Lab> {
    require_root()?;
    Lab::builder(tag)
        .host("master", &format!("{MASTER}/24"))
        .host("backup", &format!("{BACKUP}/24"))
        .host("client", &format!("{CLIENT}/24"))
        .host("attacker", &format!("{ATTACKER}/24"))
        .gateway(&format!("{GATEWAY}/24"))
        .build()
}

/// [`standard_lab`] in IPv6: the same hosts (so the same MACs) with the
/// addresses of [`v6`], IPv6 enabled everywhere.
pub fn standard_lab_v6(tag: &str) -> Result<Lab> {
    require_root()?;
    Lab::builder(tag)
        .host("master", &format!("{}/64", v6::MASTER))
        .host("backup", &format!("{}/64", v6::BACKUP))
        .host("client", &format!("{}/64", v6::CLIENT))
        .host("attacker", &format!("{}/64", v6::ATTACKER))
        .gateway(&format!("{}/64", v6::GATEWAY))
        .ipv6(true)
        .build()
}

/// Starts `vipwatch backup` on the backup's eth0 with `extra` arguments and
/// waits until it has attached.
pub fn start_backup(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    start_backup_for(lab, MASTER, VIP_CIDR, extra)
}

/// [`start_backup`] for the IPv6 lab: `--master 2001:db8::1 --vip
/// 2001:db8::100/64`.
pub fn start_backup_v6(lab: &Lab, extra: &[&str]) -> Result<Proc> {
    start_backup_for(lab, v6::MASTER, v6::VIP_CIDR, extra)
}

fn start_backup_for(lab: &Lab, master: &str, vip_cidr: &str, extra: &[&str]) -> Result<Proc> {
    let mut args = vec![
        "backup", "--iface", "eth0", "--master", master, "--vip", vip_cidr,
    ];
    args.extend_from_slice(extra);
    let p = lab.spawn("backup", vipwatch_bin()?, &args)?;
    p.wait_for_line("XDP attached", Duration::from_secs(10))
        .with_context(|| format!("vipwatch backup did not start:\n{}", p.output()))?;
    Ok(p)
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

/// Sends `count` forged ICMP echo replies "from" `src` to `dst` with
/// vipwatch's payload (magic, `slot`, `nonce`, the VIP), from inside `host`
/// (a raw IP socket with IP_HDRINCL, so the source address can be
/// anything).
#[expect(clippy::too_many_arguments, reason = "every field of the forgery")]
pub fn send_echo_reply(
    lab: &Lab,
    host: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    id: u16,
    slot: u16,
    nonce: u64,
    count: usize,
) -> Result<()> {
    lab.in_netns(host, move || -> Result<()> {
        // SAFETY: plain socket(2); closed below.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
        if fd < 0 {
            bail!("raw socket: {}", std::io::Error::last_os_error());
        }
        for seq in 0..count {
            let pkt = forged_reply(src, dst, id, slot, nonce, seq as u64);
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

fn forged_reply(src: Ipv4Addr, dst: Ipv4Addr, id: u16, slot: u16, nonce: u64, seq: u64) -> Vec<u8> {
    let vip: Ipv4Addr = vipwatch_tests::scenario::VIP.parse().expect("constant");
    let payload = vipwatch_common::ProbePayload {
        slot,
        nonce,
        seq,
        sent_ns: 0,
        vip: vipwatch_common::addr_v4(vip.octets()),
        tag: [0; 8],
    };
    let mut icmp = vec![0u8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&(seq as u16).to_be_bytes());
    icmp.extend_from_slice(&payload.encode());
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

/// vipwatch's probe payload (magic, `slot`, `nonce`, the IPv6 VIP) as an
/// ICMPv6 echo reply "from" `src` to `dst`, in a frame from `host`'s eth0
/// to `dst_host`'s MAC: sent with a packet socket, so the source address
/// can be anything. One frame per sequence number `0..count`, 1 ms apart.
#[expect(clippy::too_many_arguments, reason = "every field of the forgery")]
pub fn send_echo_reply_v6(
    lab: &Lab,
    host: &str,
    dst_host: &str,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    id: u16,
    slot: u16,
    nonce: u64,
    count: usize,
) -> Result<()> {
    let vip: Ipv6Addr = v6::VIP.parse()?;
    let eth_src = frames::mac(lab.mac(host)?)?;
    let eth_dst = frames::mac(lab.mac(dst_host)?)?;
    let replies: Vec<Vec<u8>> = (0..count as u64)
        .map(|seq| {
            let payload = vipwatch_common::ProbePayload {
                slot,
                nonce,
                seq,
                sent_ns: 0,
                vip: vip.octets(),
                tag: [0; 8],
            };
            frames::icmpv6_echo_reply(
                eth_dst,
                eth_src,
                src,
                dst,
                id,
                seq as u16,
                &payload.encode(),
            )
        })
        .collect();
    frames::send(lab, host, "eth0", &replies, Duration::from_millis(1))
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
