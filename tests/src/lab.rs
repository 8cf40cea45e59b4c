//! The lab ([`Lab`]): a bridge namespace and host namespaces wired to it,
//! processes and closures run inside them, and undoable faults.

use std::{
    collections::BTreeSet,
    env,
    ffi::OsStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Command, Output},
    sync::{
        Mutex, PoisonError, Weak,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{
    exec::{self, DROP_GRACE, Proc, ProcInner, output_with_timeout, run_checked},
    netns::{self, Mounts, Netns},
};

/// The timeout of [`Lab::run`] and of the lab's own configuration commands.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Every lab namespace is named `vwlab-<pid>-<n>-<tag>-<host>`.
const NETNS_PREFIX: &str = "vwlab-";

/// The nftables table (bridge family, in the bridge namespace) for faults.
const NFT_TABLE: &str = "bridge vwlab";

/// Bridge MAC, fixed so the bridge's address does not change when ports
/// come and go (by default a bridge takes the lowest port MAC).
const BRIDGE_MAC: &str = "02:76:77:00:00:fe";

/// Documentation prefixes (RFC 5737, RFC 3849): the only addresses a lab
/// may use, so no lab traffic can ever look like a real network's.
fn is_documentation(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            matches!((a, b, c), (192, 0, 2) | (198, 51, 100) | (203, 0, 113))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            s[0] == 0x2001 && s[1] == 0x0db8
        }
    }
}

/// Parses `ADDRESS/LEN` and checks it is inside a documentation prefix.
fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8)> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| anyhow!("{cidr:?} is not ADDRESS/PREFIXLEN (e.g. 192.0.2.1/24)"))?;
    let ip: IpAddr = addr
        .parse()
        .with_context(|| format!("{addr:?} in {cidr:?} is not an IP address"))?;
    let len: u8 = len
        .parse()
        .with_context(|| format!("{len:?} in {cidr:?} is not a prefix length"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        bail!("prefix length {len} in {cidr:?} is larger than {max}");
    }
    if !is_documentation(ip) {
        bail!(
            "{cidr:?} is outside the documentation prefixes; a lab only uses 192.0.2.0/24, \
             198.51.100.0/24, 203.0.113.0/24 and 2001:db8::/32"
        );
    }
    Ok((ip, len))
}

fn check_name(what: &str, name: &str, max: usize) -> Result<()> {
    if name.is_empty() || name.len() > max {
        bail!("{what} {name:?} must be 1 to {max} characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        bail!("{what} {name:?} may only contain ASCII letters, digits, '_' and '-'");
    }
    Ok(())
}

struct HostSpec {
    name: String,
    addrs: Vec<String>,
}

/// Configures a [`Lab`]; see [`Lab::builder`].
#[must_use]
pub struct LabBuilder {
    tag: String,
    hosts: Vec<HostSpec>,
    gateway: Option<String>,
    ipv6: bool,
    echo: bool,
}

impl LabBuilder {
    /// Adds a host namespace with `eth0` addressed `cidr` (e.g.
    /// `"192.0.2.1/24"`). Calling it again with the same name adds another
    /// address to that host.
    pub fn host(mut self, name: &str, cidr: &str) -> Self {
        match self.hosts.iter_mut().find(|h| h.name == name) {
            Some(host) => host.addrs.push(cidr.to_owned()),
            None => self.hosts.push(HostSpec {
                name: name.to_owned(),
                addrs: vec![cidr.to_owned()],
            }),
        }
        self
    }

    /// Gives the bridge itself (`br0` in the bridge namespace, reachable as
    /// host [`Lab::BRIDGE`]) an address: a neutral witness on the LAN.
    pub fn gateway(mut self, cidr: &str) -> Self {
        self.gateway = Some(cidr.to_owned());
        self
    }

    /// Keeps IPv6 enabled (with duplicate address detection and router
    /// advertisements off). By default IPv6 is disabled in every lab
    /// namespace unless an IPv6 address is configured, to keep the wire quiet.
    pub fn ipv6(mut self, enabled: bool) -> Self {
        self.ipv6 = enabled;
        self
    }

    /// Prints every spawned process's output lines live to stderr (default:
    /// on if the environment variable `VIPWATCH_LAB_ECHO` is set and not `0`).
    pub fn echo_output(mut self, enabled: bool) -> Self {
        self.echo = enabled;
        self
    }

    /// Creates the namespaces, the bridge and the links. On failure,
    /// whatever was already created is removed again.
    pub fn build(self) -> Result<Lab> {
        let LabBuilder {
            tag,
            hosts,
            gateway,
            ipv6,
            echo,
        } = self;
        check_name("lab tag", &tag, 32)?;
        if hosts.is_empty() {
            bail!("a lab needs at least one host");
        }
        let mut seen = BTreeSet::new();
        let mut wants_ipv6 = ipv6;
        for host in &hosts {
            // The host name is also its bridge port's interface name.
            check_name("host name", &host.name, 15)?;
            if [Lab::BRIDGE, Lab::BRIDGE_IFACE, "lo"].contains(&host.name.as_str()) {
                bail!("host name {:?} is reserved by the lab", host.name);
            }
            if !seen.insert(host.name.as_str()) {
                bail!("host {:?} is declared twice", host.name);
            }
        }
        let mut all_addrs: Vec<&str> = hosts
            .iter()
            .flat_map(|h| h.addrs.iter().map(String::as_str))
            .collect();
        all_addrs.extend(gateway.as_deref());
        for cidr in &all_addrs {
            let (ip, _) = parse_cidr(cidr)?;
            wants_ipv6 |= ip.is_ipv6();
        }

        match cleanup_stale_labs() {
            Ok(removed) if !removed.is_empty() => {
                eprintln!(
                    "vipwatch-tests: removed namespaces left by dead test processes: {removed:?}"
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("vipwatch-tests: could not clean up stale lab namespaces: {e:#}"),
        }

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NETNS_PREFIX}{}-{n}-{tag}-", std::process::id());

        // Built step by step; if a step fails, dropping `lab` removes
        // everything created so far.
        let bridge = Netns::create(&format!("{prefix}br"))?;
        let mut lab = Lab {
            prefix,
            bridge,
            gateway: None,
            hosts: Vec::new(),
            echo,
            procs: Mutex::new(Vec::new()),
            faults: Mutex::new(Faults::default()),
        };
        lab.init_netns(Lab::BRIDGE, wants_ipv6)?;
        lab.ip_cmd(
            Lab::BRIDGE,
            &["link", "add", "name", Lab::BRIDGE_IFACE, "type", "bridge"],
        )?;
        lab.ip_cmd(
            Lab::BRIDGE,
            &[
                "link",
                "set",
                "dev",
                Lab::BRIDGE_IFACE,
                "address",
                BRIDGE_MAC,
                "up",
            ],
        )?;

        for (index, spec) in hosts.into_iter().enumerate() {
            let netns = Netns::create(&format!("{}{}", lab.prefix, spec.name))?;
            let mac = format!("02:76:77:00:00:{:02x}", index + 1);
            let netns_name = netns.name().to_owned();
            let name = spec.name;
            lab.hosts.push(Host {
                name: name.clone(),
                netns,
                addrs: spec.addrs.clone(),
                mac: mac.clone(),
            });
            lab.init_netns(&name, wants_ipv6)?;
            lab.ip_cmd(
                Lab::BRIDGE,
                &[
                    // "name" and "dev" everywhere: a host may be called
                    // like an `ip` keyword ("master", "up", …).
                    "link",
                    "add",
                    "name",
                    &name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    Lab::HOST_IFACE,
                    "address",
                    &mac,
                    "netns",
                    &netns_name,
                ],
            )?;
            lab.ip_cmd(
                Lab::BRIDGE,
                &[
                    "link",
                    "set",
                    "dev",
                    &name,
                    "master",
                    Lab::BRIDGE_IFACE,
                    "up",
                ],
            )?;
            for cidr in &spec.addrs {
                lab.add_address(&name, cidr)?;
            }
            lab.ip_cmd(&name, &["link", "set", "dev", Lab::HOST_IFACE, "up"])?;
        }
        if let Some(cidr) = gateway {
            lab.gateway = Some(cidr.clone());
            lab.add_address(Lab::BRIDGE, &cidr)?;
        }
        Ok(lab)
    }
}

struct Host {
    name: String,
    netns: Netns,
    /// The addresses the host was built with (`ADDRESS/LEN`).
    addrs: Vec<String>,
    mac: String,
}

#[derive(Default)]
struct Faults {
    nft_ready: bool,
    blackholed: BTreeSet<String>,
}

/// A set of network namespaces joined by a bridge: a bridge namespace
/// ([`Lab::BRIDGE`], bridge `br0`) and one namespace per host, whose `eth0`
/// is a veth into the bridge. Dropping it stops every process it spawned
/// and deletes its namespaces, also during a panic.
///
/// ```text
///   <p>master          <p>backup          <p>client        (host namespaces)
///     eth0               eth0               eth0
///      |                  |                  |
///   [master]──────────[backup]───────────[client]    <p>br: ports on bridge br0
/// ```
///
/// Interface names are the same in every lab (`eth0` in each host, the host
/// name for its bridge port, `br0` for the bridge), so they never approach
/// the 15-character limit; only namespace names carry the unique prefix
/// `vwlab-<pid>-<n>-<tag>-`.
pub struct Lab {
    prefix: String,
    bridge: Netns,
    gateway: Option<String>,
    hosts: Vec<Host>,
    echo: bool,
    procs: Mutex<Vec<Weak<ProcInner>>>,
    faults: Mutex<Faults>,
}

impl Lab {
    /// The host name that designates the bridge namespace.
    pub const BRIDGE: &'static str = "br";
    /// The bridge's interface name inside the bridge namespace.
    pub const BRIDGE_IFACE: &'static str = "br0";
    /// Every host's interface name inside its namespace.
    pub const HOST_IFACE: &'static str = "eth0";

    /// Starts configuring a lab. `tag` (letters, digits, `_`, `-`) goes into
    /// the namespace names, to tell labs apart in `ip netns list`.
    pub fn builder(tag: &str) -> LabBuilder {
        LabBuilder {
            tag: tag.to_owned(),
            hosts: Vec::new(),
            gateway: None,
            ipv6: false,
            echo: env::var_os("VIPWATCH_LAB_ECHO").is_some_and(|v| !v.is_empty() && v != "0"),
        }
    }

    /// The unique prefix of this lab's namespace names.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The host names, in declaration order (without [`Lab::BRIDGE`]).
    pub fn hosts(&self) -> Vec<&str> {
        self.hosts.iter().map(|h| h.name.as_str()).collect()
    }

    fn netns(&self, host: &str) -> Result<&Netns> {
        if host == Self::BRIDGE {
            return Ok(&self.bridge);
        }
        self.host(host).map(|h| &h.netns)
    }

    fn host(&self, host: &str) -> Result<&Host> {
        self.hosts.iter().find(|h| h.name == host).ok_or_else(|| {
            anyhow!(
                "this lab has no host {host:?}; its hosts are {:?} and the bridge is {:?}",
                self.hosts(),
                Self::BRIDGE
            )
        })
    }

    /// The name of `host`'s network namespace (`Lab::BRIDGE` for the bridge's).
    pub fn netns_name(&self, host: &str) -> Result<&str> {
        self.netns(host).map(Netns::name)
    }

    /// `/run/netns/<name>` of `host`'s namespace.
    pub fn netns_path(&self, host: &str) -> Result<PathBuf> {
        self.netns(host).map(|ns| Netns::path_of(ns.name()))
    }

    /// Every namespace name of this lab, bridge first.
    pub fn netns_names(&self) -> Vec<String> {
        std::iter::once(&self.bridge)
            .chain(self.hosts.iter().map(|h| &h.netns))
            .map(|ns| ns.name().to_owned())
            .collect()
    }

    /// The interface that carries `host`'s addresses: `eth0`, or `br0` for
    /// the bridge namespace.
    pub fn iface(&self, host: &str) -> Result<&'static str> {
        self.netns(host)?;
        Ok(if host == Self::BRIDGE {
            Self::BRIDGE_IFACE
        } else {
            Self::HOST_IFACE
        })
    }

    /// The first IPv4 address `host` was built with (the gateway address
    /// for [`Lab::BRIDGE`]). Addresses added later are not included.
    pub fn ip(&self, host: &str) -> Result<Ipv4Addr> {
        let addrs: &[String] = if host == Self::BRIDGE {
            self.gateway.as_slice()
        } else {
            &self.host(host)?.addrs
        };
        addrs
            .iter()
            .find_map(|cidr| match parse_cidr(cidr) {
                Ok((IpAddr::V4(v4), _)) => Some(v4),
                _ => None,
            })
            .ok_or_else(|| anyhow!("host {host:?} has no IPv4 address in this lab"))
    }

    /// The first IPv6 address `host` was built with.
    pub fn ipv6(&self, host: &str) -> Result<Ipv6Addr> {
        let addrs: &[String] = if host == Self::BRIDGE {
            self.gateway.as_slice()
        } else {
            &self.host(host)?.addrs
        };
        addrs
            .iter()
            .find_map(|cidr| match parse_cidr(cidr) {
                Ok((IpAddr::V6(v6), _)) => Some(v6),
                _ => None,
            })
            .ok_or_else(|| anyhow!("host {host:?} has no IPv6 address in this lab"))
    }

    /// The MAC address of `host`'s `eth0` (fixed per host index:
    /// `02:76:77:00:00:01` for the first host, …; `…:fe` for the bridge).
    pub fn mac(&self, host: &str) -> Result<&str> {
        if host == Self::BRIDGE {
            return Ok(BRIDGE_MAC);
        }
        self.host(host).map(|h| h.mac.as_str())
    }

    /// A [`Command`] that runs `program` inside `host`'s network namespace
    /// (entered with `setns(2)` only; the mount namespace is unchanged).
    pub fn command(&self, host: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        Ok(self.netns(host)?.command(program.as_ref()))
    }

    /// Like [`Lab::command`], in a private mount namespace where bpffs is
    /// not mounted: the program sees the host as a fresh machine would be.
    pub fn command_on_fresh_host(&self, host: &str, program: impl AsRef<OsStr>) -> Result<Command> {
        Ok(self
            .netns(host)?
            .command_with(program.as_ref(), Mounts::Fresh))
    }

    /// Runs `program args…` in `host`'s namespace to completion, killing it
    /// after `timeout`. The exit status is not checked.
    pub fn output<I, S>(
        &self,
        host: &str,
        program: impl AsRef<OsStr>,
        args: I,
        timeout: Duration,
    ) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(host, program)?;
        cmd.args(args);
        let desc = exec::describe(&cmd);
        output_with_timeout(cmd, timeout)
            .with_context(|| format!("running `{desc}` in lab host {host}"))
    }

    /// Runs `program args…` in `host`'s namespace, fails unless it exits 0
    /// within [`DEFAULT_TIMEOUT`], and returns its output.
    pub fn run<I, S>(&self, host: &str, program: impl AsRef<OsStr>, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(host, program)?;
        cmd.args(args);
        let desc = exec::describe(&cmd);
        run_checked(cmd, DEFAULT_TIMEOUT)
            .with_context(|| format!("running `{desc}` in lab host {host}"))
    }

    /// Starts `program args…` in `host`'s namespace, capturing its output.
    /// The lab stops it when dropped, if the [`Proc`] has not already.
    pub fn spawn<I, S>(&self, host: &str, program: impl AsRef<OsStr>, args: I) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let mut cmd = self.command(host, program)?;
        cmd.args(args);
        self.spawn_command(exec::label(host, program), cmd)
    }

    /// Starts a prepared command (normally from [`Lab::command`], with extra
    /// environment or arguments) like [`Lab::spawn`]. `label` names it in
    /// messages.
    pub fn spawn_command(&self, label: impl Into<String>, cmd: Command) -> Result<Proc> {
        let proc = Proc::spawn(label.into(), cmd, self.echo)?;
        let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
        procs.retain(|p| p.strong_count() > 0);
        procs.push(std::sync::Arc::downgrade(proc.inner()));
        Ok(proc)
    }

    /// Runs `f` on a fresh thread inside `host`'s network namespace and
    /// returns its result. Sockets created in `f` belong to that namespace
    /// wherever they are used later. A panic in `f` propagates.
    pub fn in_netns<R, F>(&self, host: &str, f: F) -> Result<R>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        self.netns(host)?.run_in(f)
    }

    fn ip_cmd(&self, host: &str, args: &[&str]) -> Result<()> {
        self.run(host, "ip", args).map(drop)
    }

    /// Sysctls and `lo` for a fresh namespace.
    fn init_netns(&self, host: &str, ipv6: bool) -> Result<()> {
        let mut settings = vec![];
        if ipv6 {
            // A lab LAN has no routers and no duplicate addresses: skip the
            // second of DAD and the solicitations. keep_addr_on_down: an
            // interface set down ([`Lab::link_down`]) keeps its static IPv6
            // addresses, as IPv4 does and as a real cable pull (carrier
            // loss, interface still up) does; by default the kernel would
            // flush them, and a "repaired" host would come back without
            // its address (Documentation/networking/ip-sysctl.rst).
            for scope in ["all", "default"] {
                settings.push((format!("net/ipv6/conf/{scope}/disable_ipv6"), "0"));
                settings.push((format!("net/ipv6/conf/{scope}/accept_dad"), "0"));
                settings.push((format!("net/ipv6/conf/{scope}/accept_ra"), "0"));
                settings.push((format!("net/ipv6/conf/{scope}/keep_addr_on_down"), "1"));
            }
        } else {
            for scope in ["all", "default"] {
                settings.push((format!("net/ipv6/conf/{scope}/disable_ipv6"), "1"));
            }
        }
        let ipv6_present = std::path::Path::new("/proc/sys/net/ipv6").exists();
        if ipv6 && !ipv6_present {
            bail!(
                "the lab asks for IPv6 but this kernel has no IPv6 (/proc/sys/net/ipv6 is missing)"
            );
        }
        if ipv6_present {
            // /proc/sys/net shows the namespace of the thread that opens it.
            self.in_netns(host, || -> Result<()> {
                for (key, value) in &settings {
                    let path = format!("/proc/sys/{key}");
                    std::fs::write(&path, value)
                        .with_context(|| format!("writing {value} to {path}"))?;
                }
                Ok(())
            })??;
        }
        self.ip_cmd(host, &["link", "set", "dev", "lo", "up"])
    }

    /// Adds `cidr` (documentation prefixes only) to `host`'s interface.
    pub fn add_address(&self, host: &str, cidr: &str) -> Result<()> {
        let (ip, _) = parse_cidr(cidr)?;
        let iface = self.iface(host)?;
        let mut args = vec!["addr", "add", cidr, "dev", iface];
        if ip.is_ipv6() {
            args.push("nodad");
        }
        self.ip_cmd(host, &args)
    }

    /// Removes `cidr` from `host`'s interface.
    pub fn del_address(&self, host: &str, cidr: &str) -> Result<()> {
        parse_cidr(cidr)?;
        let iface = self.iface(host)?;
        self.ip_cmd(host, &["addr", "del", cidr, "dev", iface])
    }

    /// The addresses (without prefix length) currently on `host`'s interface,
    /// as `ip addr` shows them.
    pub fn addresses(&self, host: &str) -> Result<Vec<IpAddr>> {
        let iface = self.iface(host)?;
        let out = self.run(host, "ip", ["-j", "addr", "show", "dev", iface])?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `ip -j addr show` output")?;
        let mut addrs = Vec::new();
        for link in json.as_array().into_iter().flatten() {
            for info in link["addr_info"].as_array().into_iter().flatten() {
                if let Some(local) = info["local"].as_str() {
                    addrs.push(
                        local
                            .parse()
                            .with_context(|| format!("`ip -j addr` printed address {local:?}"))?,
                    );
                }
            }
        }
        Ok(addrs)
    }

    /// Whether `ip` is currently on `host`'s interface.
    pub fn has_address(&self, host: &str, ip: impl Into<IpAddr>) -> Result<bool> {
        let ip = ip.into();
        Ok(self.addresses(host)?.contains(&ip))
    }

    /// The MAC address `host`'s neighbour table currently holds for `ip`
    /// (lowercase `aa:bb:…`), or `None` if it has no usable entry.
    pub fn neighbor_mac(&self, host: &str, ip: impl Into<IpAddr>) -> Result<Option<String>> {
        let ip = ip.into().to_string();
        let iface = self.iface(host)?;
        let out = self.run(host, "ip", ["-j", "neigh", "show", "to", &ip, "dev", iface])?;
        let json: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `ip -j neigh show` output")?;
        for entry in json.as_array().into_iter().flatten() {
            let unusable = entry["state"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| matches!(s.as_str(), Some("FAILED" | "INCOMPLETE")));
            if let (Some(mac), false) = (entry["lladdr"].as_str(), unusable) {
                return Ok(Some(mac.to_ascii_lowercase()));
            }
        }
        Ok(None)
    }

    // ----- faults -----------------------------------------------------

    fn fault_host(&self, host: &str) -> Result<&Host> {
        if host == Self::BRIDGE {
            bail!("this fault applies to a host, not to the bridge namespace");
        }
        self.host(host)
    }

    /// "Cable pull" at the host: sets `host`'s `eth0` down inside its
    /// namespace (its routes over eth0 go away; addresses stay).
    ///
    /// Done in-process (SIOCSIFFLAGS from a thread in `host`'s namespace),
    /// not by spawning `ip`: the fault takes effect within microseconds of
    /// the call, which is what outage measurements start from.
    pub fn link_down(&self, host: &str) -> Result<()> {
        self.fault_host(host)?;
        self.set_link_up(host, false)
    }

    fn set_link_up(&self, host: &str, up: bool) -> Result<()> {
        self.in_netns(host, move || -> Result<()> {
            // SAFETY: plain socket(2), closed below.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
            if fd < 0 {
                bail!(
                    "socket for SIOCSIFFLAGS: {}",
                    std::io::Error::last_os_error()
                );
            }
            // SAFETY: zeroed ifreq is valid; the name is copied below.
            let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
            for (dst, src) in ifr.ifr_name.iter_mut().zip(Self::HOST_IFACE.bytes()) {
                *dst = src as libc::c_char;
            }
            // SAFETY: fd is a socket and ifr a valid ifreq for these ioctls;
            // ifru_flags is the member SIOCGIFFLAGS fills.
            let result = unsafe {
                if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    let up_flag = libc::IFF_UP as libc::c_short;
                    if up {
                        ifr.ifr_ifru.ifru_flags |= up_flag;
                    } else {
                        ifr.ifr_ifru.ifru_flags &= !up_flag;
                    }
                    if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
                        Err(std::io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                }
            };
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            result.with_context(|| {
                format!(
                    "setting {} {}",
                    Self::HOST_IFACE,
                    if up { "up" } else { "down" }
                )
            })
        })?
    }

    /// Undoes [`Lab::link_down`].
    pub fn link_up(&self, host: &str) -> Result<()> {
        self.fault_host(host)?;
        self.set_link_up(host, true)
    }

    /// "Cable cut" at the switch: sets `host`'s bridge port down, so the
    /// host's `eth0` stays up but loses carrier.
    pub fn cut(&self, host: &str) -> Result<()> {
        let host = &self.fault_host(host)?.name;
        self.ip_cmd(Self::BRIDGE, &["link", "set", "dev", host, "down"])
    }

    /// Undoes [`Lab::cut`].
    pub fn uncut(&self, host: &str) -> Result<()> {
        let host = &self.fault_host(host)?.name;
        self.ip_cmd(Self::BRIDGE, &["link", "set", "dev", host, "up"])
    }

    /// "Host frozen" as the network sees it: the bridge drops every frame
    /// from and to `host`'s port (nftables, bridge family), while the
    /// host's link stays up. Upstream of the host, so XDP there sees nothing.
    pub fn blackhole(&self, host: &str) -> Result<()> {
        let host = &self.fault_host(host)?.name;
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        self.nft(
            &mut faults,
            &format!("add element {NFT_TABLE} blackholed {{ \"{host}\" }}"),
        )?;
        faults.blackholed.insert(host.clone());
        Ok(())
    }

    /// Undoes [`Lab::blackhole`] (a no-op if `host` is not blackholed).
    pub fn unblackhole(&self, host: &str) -> Result<()> {
        let host = &self.fault_host(host)?.name;
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        if !faults.blackholed.contains(host) {
            return Ok(());
        }
        self.nft(
            &mut faults,
            &format!("delete element {NFT_TABLE} blackholed {{ \"{host}\" }}"),
        )?;
        faults.blackholed.remove(host);
        Ok(())
    }

    /// Random loss: the bridge drops `percent` % of all frames it forwards
    /// (and of those to and from the bridge's own address), independently
    /// per frame. Replaces any earlier loss setting; `0` clears it.
    pub fn loss(&self, percent: u32) -> Result<()> {
        if percent > 100 {
            bail!("loss must be 0 to 100 percent, not {percent}");
        }
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        let mut script = format!("flush chain {NFT_TABLE} loss");
        match percent {
            0 => {}
            // numgen's value (0..=99) cannot be compared with 100.
            100 => script.push_str(&format!("; add rule {NFT_TABLE} loss counter drop")),
            _ => script.push_str(&format!(
                "; add rule {NFT_TABLE} loss numgen random mod 100 lt {percent} counter drop"
            )),
        }
        self.nft(&mut faults, &script)
    }

    /// Undoes [`Lab::loss`].
    pub fn clear_loss(&self) -> Result<()> {
        self.loss(0)
    }

    /// Runs an nft script in the bridge namespace, creating the lab's
    /// table first if needed. The caller holds the `faults` lock, so scripts
    /// never interleave.
    fn nft(&self, faults: &mut Faults, script: &str) -> Result<()> {
        if !faults.nft_ready {
            // Every frame crossing the bridge passes exactly one of these
            // hooks: forward (port to port), input (port to br0), output
            // (br0 to port). In each, iifname/oifname is the bridge port.
            let t = NFT_TABLE;
            let setup = [
                format!("add table {t}"),
                format!("add set {t} blackholed {{ type ifname; }}"),
                format!("add chain {t} loss"),
                format!("add chain {t} forward {{ type filter hook forward priority 0; policy accept; }}"),
                format!("add chain {t} input {{ type filter hook input priority 0; policy accept; }}"),
                format!("add chain {t} output {{ type filter hook output priority 0; policy accept; }}"),
                format!("add rule {t} forward iifname @blackholed drop"),
                format!("add rule {t} forward oifname @blackholed drop"),
                format!("add rule {t} forward jump loss"),
                format!("add rule {t} input iifname @blackholed drop"),
                format!("add rule {t} input jump loss"),
                format!("add rule {t} output oifname @blackholed drop"),
                format!("add rule {t} output jump loss"),
            ]
            .join("; ");
            self.run(Self::BRIDGE, "nft", [setup.as_str()])
                .context("setting up the lab's nftables table (is nft installed, with bridge family support?)")?;
            faults.nft_ready = true;
        }
        self.run(Self::BRIDGE, "nft", [script]).map(drop)
    }

    /// Stops every process this lab spawned that is still running.
    pub fn stop_all(&self) {
        let procs: Vec<_> = {
            let mut procs = self.procs.lock().unwrap_or_else(PoisonError::into_inner);
            procs.drain(..).filter_map(|p| p.upgrade()).collect()
        };
        for proc in procs {
            proc.terminate_quietly(DROP_GRACE);
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Processes first: they may hold state outside the namespaces (BPF
        // pins) that they clean up on SIGTERM. The namespaces themselves are
        // deleted when the `Netns` fields drop, right after this.
        self.stop_all();
    }
}

/// Deletes lab namespaces (`vwlab-<pid>-…`) whose creating process no
/// longer exists — left behind when a test process was killed outright.
/// Returns the names it deleted. Labs of live processes are never touched.
pub fn cleanup_stale_labs() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for name in netns::list()? {
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        match netns::delete(&name) {
            Ok(()) => removed.push(name),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documentation_prefixes_only() {
        for ok in [
            "192.0.2.1/24",
            "198.51.100.7/32",
            "203.0.113.254/24",
            "2001:db8::1/64",
            "2001:db8:ff::2/128",
        ] {
            parse_cidr(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        for bad in [
            "10.0.0.1/24",
            "192.0.3.1/24",
            "8.8.8.8/32",
            "2001:db9::1/64",
            "fe80::1/64",
        ] {
            let err = parse_cidr(bad).expect_err(bad);
            assert!(err.to_string().contains("documentation"), "{bad}: {err}");
        }
        for malformed in [
            "192.0.2.1",
            "192.0.2.1/33",
            "2001:db8::1/129",
            "nonsense/24",
            "192.0.2.1/x",
        ] {
            assert!(parse_cidr(malformed).is_err(), "{malformed}");
        }
        assert_eq!(
            parse_cidr("192.0.2.9/24").expect("valid"),
            (IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)), 24)
        );
    }

    #[test]
    fn names_are_checked() {
        check_name("host name", "master", 15).expect("valid");
        check_name("host name", "a-b_c9", 15).expect("valid");
        assert!(check_name("host name", "", 15).is_err());
        assert!(check_name("host name", "sixteen-chars-xx", 15).is_err());
        assert!(check_name("host name", "bad name", 15).is_err());
        assert!(check_name("host name", "bad/name", 15).is_err());
    }

    #[test]
    fn builder_rejects_bad_configurations_before_touching_the_system() {
        let err = |b: LabBuilder| b.build().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err(Lab::builder("t")).contains("at least one host"));
        assert!(err(Lab::builder("t").host("br", "192.0.2.1/24")).contains("reserved"));
        assert!(err(Lab::builder("t").host("br0", "192.0.2.1/24")).contains("reserved"));
        assert!(err(Lab::builder("t").host("h", "10.1.1.1/24")).contains("documentation"));
        assert!(
            err(Lab::builder("t")
                .host("h", "192.0.2.1/24")
                .gateway("172.16.0.1/24"))
            .contains("documentation")
        );
        assert!(err(Lab::builder("bad tag").host("h", "192.0.2.1/24")).contains("lab tag"));
    }
}
