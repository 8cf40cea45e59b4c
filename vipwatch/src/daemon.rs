//! The process: every instance of a configuration file (or the one the
//! `backup`/`master` flags describe), the XDP program of each interface
//! they use, the control socket, signals and reload.
//!
//! * One XDP program per interface serves every instance on it; each
//!   instance owns a slot in its maps. The process owns the interface
//!   through [`IfaceLock`], so a second vipwatch is refused and can never
//!   touch the first one's program.
//! * One thread per instance ([`crate::worker`]); the main thread waits for
//!   signals, control requests and instances that end.
//! * SIGHUP re-reads the file and applies the difference: new instances
//!   start, removed ones stop (releasing what they hold, as on a planned
//!   stop), changed ones restart, unchanged ones are not touched. A file
//!   that does not validate is one error line; the running set stays.
//!   SIGINT/SIGTERM stop every instance (masters hand over), then exit.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, UdpSocket},
    os::fd::AsRawFd as _,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, mpsc},
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use vipwatch_common::{Addr, MAX_SLOTS, addr_of, ip_of};

use crate::{
    clock,
    config::{self, Host, Instance, Role},
    conns::Datagram,
    control::{self, IfaceLock, Peer, Request, Response},
    ebpf::{Claims, ConnEvents, Maps, Program},
    netlink::{AddrEntry, Change, Netlink, Watch},
    stats, status,
    sys::{self, EventFd, SignalFd},
    systemd::Systemd,
    worker::{self, Inbox, Msg, Resources, Worker},
};

/// Where the instances come from.
pub enum Source {
    /// `vipwatch backup` / `vipwatch master`: one instance, no reload.
    Flags(Box<Instance>),
    /// `vipwatch run --config FILE`.
    File(PathBuf),
}

/// How long stopping waits for instances to finish (a master holds its
/// gate closed 200 ms; hooks get 2 s).
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long a control request waits for an instance's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

pub fn run(source: Source, options: &crate::cli::DaemonArgs) -> anyhow::Result<()> {
    let what = match &source {
        Source::Flags(i) => format!("vipwatch {}", i.role.name()),
        Source::File(_) => "vipwatch run".to_owned(),
    };
    sys::require_privileges(&what)?;
    // Signals first: every thread started later inherits the mask.
    let signals = SignalFd::new()?;
    let instances = match &source {
        Source::Flags(i) => vec![(**i).clone()],
        Source::File(path) => load(path)?,
    };
    let (rt, netlink) = Netlink::with_runtime()?;
    let host = HostSnapshot::read(&rt, &netlink)?;
    if let Some(problem) = start_problems(&source, &instances, &host).first() {
        bail!("{problem}");
    }
    let control = control::Server::bind()?;
    if let Some(listen) = options.metrics_listen {
        crate::metrics::serve(listen)?;
    }
    let mut d = Daemon {
        file: match &source {
            Source::File(path) => Some(path.clone()),
            Source::Flags(_) => None,
        },
        exited: Arc::new(EventFd::new()?),
        ifaces: BTreeMap::new(),
        running: BTreeMap::new(),
        rt,
        netlink,
        started_ns: clock::now_ns(),
    };
    for instance in instances {
        if let Err(e) = d.start(instance) {
            d.stop_all(&signals);
            return Err(e);
        }
    }
    d.serve(&signals, &control)
}

fn load(path: &std::path::Path) -> anyhow::Result<Vec<Instance>> {
    match config::load(path) {
        Ok(file) => Ok(file.instances),
        Err(errors) => bail!("{}", errors_line(&errors)),
    }
}

/// One line for a list of file errors: the first, and how many more.
fn errors_line(errors: &[config::FileError]) -> String {
    match errors {
        [] => "the configuration is invalid".into(),
        [one] => one.to_string(),
        [first, rest @ ..] => format!(
            "{first} (and {} more: `vipwatch check --config` lists them)",
            rest.len()
        ),
    }
}

/// The host's interfaces and addresses, read once for the checks.
struct HostSnapshot {
    links: Vec<(u32, String)>,
    addresses: Vec<(String, AddrEntry)>,
}

impl HostSnapshot {
    fn read(rt: &tokio::runtime::Runtime, netlink: &Netlink) -> anyhow::Result<Self> {
        let links = rt.block_on(netlink.links())?;
        let addresses = rt
            .block_on(netlink.addresses())?
            .into_iter()
            .map(|e| {
                let name = links
                    .iter()
                    .find(|(i, _)| *i == e.index)
                    .map_or_else(|| format!("#{}", e.index), |(_, n)| n.clone());
                (name, e)
            })
            .collect();
        Ok(Self { links, addresses })
    }
}

impl Host for HostSnapshot {
    fn iface_exists(&self, iface: &str) -> bool {
        self.links.iter().any(|(_, n)| n == iface)
    }

    fn ipv6_enabled(&self, iface: &str) -> bool {
        // Per network namespace: ours. Absent without IPv6 in the kernel.
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{iface}/disable_ipv6"))
            .is_ok_and(|v| v.trim() == "0")
    }

    fn addresses(&self) -> Vec<(String, IpAddr, u8)> {
        self.addresses
            .iter()
            .map(|(name, e)| (name.clone(), e.addr, e.prefix))
            .collect()
    }

    fn bound(&self, iface: &str, addr: IpAddr) -> Option<config::Bound> {
        self.addresses
            .iter()
            .find(|(name, e)| name == iface && e.addr == addr)
            .map(|(_, e)| config::Bound {
                // IPv6 has no primary address: IFA_F_SECONDARY is IPv4's
                // (the same bit means "temporary" for IPv6), and removing
                // one IPv6 address never takes others with it.
                primary: e.addr.is_ipv4() && !e.secondary,
                ours: e.ours,
            })
    }
}

/// What stops instances from starting on this host, one line each, as the
/// source names settings (`--flag` or `file:line: key`).
fn start_problems(source: &Source, instances: &[Instance], host: &HostSnapshot) -> Vec<String> {
    let lines = match source {
        Source::File(path) => config::load(path).ok().map(|f| (path.clone(), f.lines)),
        Source::Flags(_) => None,
    };
    let mut out = Vec::new();
    for i in instances {
        // A backup that finds its VIP bound adopts it (a crash, a restart)
        // or treats it as a stray: its machine decides (see backup.rs). A
        // VIP vipwatch bound (an instance running, or a leftover) is never
        // a problem.
        let problems = config::host_problems(i, host);
        for p in problems {
            out.push(match &lines {
                Some((path, lines)) => {
                    let line = lines.get(&i.name).map_or(0, |l| l.of(p.key));
                    format!("{}:{line}: {}: {}", path.display(), p.key, p.message)
                }
                None => p.as_flag(),
            });
        }
    }
    out
}

struct Daemon {
    file: Option<PathBuf>,
    /// Woken by every instance thread that ends.
    exited: Arc<EventFd>,
    ifaces: BTreeMap<String, Iface>,
    running: BTreeMap<String, Running>,
    rt: tokio::runtime::Runtime,
    netlink: Netlink,
    /// CLOCK_MONOTONIC ns of the start, for the uptime.
    started_ns: u64,
}

struct Running {
    instance: Instance,
    worker: Worker,
    slot: u32,
    stopping: bool,
}

/// An interface with vipwatch's program attached.
struct Iface {
    program: Program,
    /// The daemon's own handles (for `stats`).
    maps: Maps,
    /// Per slot: `None` in use, `Some(t)` free since `t` (0: never used).
    free_since: Vec<Option<u64>>,
    routes: Routes,
    /// Stopped (and joined) when the interface is dropped.
    _dispatcher: Dispatcher,
    _lock: IfaceLock,
}

/// Where the interface's events go: slot → the inbox of the instance that
/// owns it, and VIP → slot (sync datagrams name the VIP).
#[derive(Default)]
struct Table {
    by_slot: BTreeMap<u32, Inbox>,
    by_vip: HashMap<Addr, u32>,
}

type Routes = Arc<Mutex<Table>>;

fn lock_routes(r: &Routes) -> std::sync::MutexGuard<'_, Table> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Iface {
    fn attach(
        rt: &tokio::runtime::Runtime,
        netlink: &Netlink,
        first: &Instance,
    ) -> anyhow::Result<Self> {
        let name = first.iface.as_str();
        let ifindex = rt.block_on(netlink.link_index(name))?;
        let mac = rt.block_on(netlink.link_mac(ifindex))?;
        let lock = IfaceLock::take(name, ifindex)?;
        // Before the program: a port in use fails the start cleanly.
        let sync = sys::SyncSocket::open(name, first.conn.port)?.socket;
        let keyed_master = matches!(first.role, Role::Master(_)) && first.auth_key_file.is_some();
        let mode = if keyed_master {
            crate::ebpf::auto_mode_for_xdp_tx(name, first.xdp_mode)
        } else {
            first.xdp_mode
        };
        let mut program = Program::attach(name, mac, mode, first.conn.table)?;
        let maps = program.maps()?;
        let claims = program
            .take_events()
            .ok_or_else(|| anyhow!("the claim ring buffer was taken twice"))?;
        let conn_events = program
            .take_conn_events()
            .ok_or_else(|| anyhow!("the connection ring buffer was taken twice"))?;
        let routes: Routes = Arc::default();
        let watch = Watch::open()?;
        let carrier = rt.block_on(netlink.carrier(ifindex))?;
        let dispatcher = Dispatcher::start(
            name,
            Claims::new(claims),
            ConnEvents::new(conn_events),
            sync,
            Watched {
                watch,
                ifindex,
                carrier,
            },
            Arc::clone(&routes),
        )?;
        log::info!(
            "XDP attached to {name} in {} mode{}",
            program.mode.as_str(),
            if program.fell_back {
                " (FALLBACK: the driver refused native mode; generic mode costs more CPU per packet)"
            } else {
                ""
            }
        );
        Ok(Self {
            program,
            maps,
            free_since: vec![Some(0); MAX_SLOTS as usize],
            routes,
            _dispatcher: dispatcher,
            _lock: lock,
        })
    }

    /// The free slot that has been free longest: replies still in flight
    /// for a stopped instance then never land on its successor.
    fn take_slot(&mut self) -> Option<u32> {
        let (index, _) = self
            .free_since
            .iter()
            .enumerate()
            .filter_map(|(k, f)| f.map(|t| (k, t)))
            .min_by_key(|(_, t)| *t)?;
        self.free_since[index] = None;
        u32::try_from(index).ok()
    }

    fn free_slot(&mut self, slot: u32) {
        if let Some(f) = self.free_since.get_mut(slot as usize) {
            *f = Some(clock::now_ns());
        }
        let mut r = lock_routes(&self.routes);
        r.by_slot.remove(&slot);
        r.by_vip.retain(|_, s| *s != slot);
    }

    fn in_use(&self) -> bool {
        self.free_since.iter().any(Option::is_none)
    }
}

/// The kernel's notifications about one interface: its addresses (a VIP
/// added or removed by someone) and its carrier.
struct Watched {
    watch: Watch,
    ifindex: u32,
    /// The carrier as last told to the instances.
    carrier: bool,
}

impl Watched {
    fn dispatch(&mut self, routes: &Routes) {
        let changes = self.watch.drain();
        let r = lock_routes(routes);
        for change in changes {
            match change {
                Change::Address { index, addr } if index == self.ifindex => {
                    if let Some(inbox) = r.by_vip.get(&addr_of(addr)).and_then(|s| r.by_slot.get(s))
                    {
                        inbox.send(Msg::Address);
                    }
                }
                Change::Link { index, carrier }
                    if index == self.ifindex && carrier != self.carrier =>
                {
                    self.carrier = carrier;
                    for inbox in r.by_slot.values() {
                        inbox.send(Msg::Carrier(carrier));
                    }
                }
                Change::Lost => {
                    // Whatever we missed, every instance re-reads its VIP.
                    log::warn!("address notifications were lost (socket overflow): re-reading");
                    for inbox in r.by_slot.values() {
                        inbox.send(Msg::Address);
                    }
                }
                _ => {}
            }
        }
    }
}

/// Reads an interface's ring buffers (claims, connections), its sync
/// socket and the kernel's notifications about it, and hands each event to
/// the instance it names.
struct Dispatcher {
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Dispatcher {
    fn start(
        iface: &str,
        mut claims: Claims,
        mut conn_events: ConnEvents,
        sync: UdpSocket,
        mut watched: Watched,
        routes: Routes,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(EventFd::new()?);
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name(format!("events-{iface}"))
            .spawn(move || {
                let mut buf = vec![0u8; 2048];
                loop {
                    let ready = clock::wait_readable(
                        [
                            claims.fd(),
                            conn_events.fd(),
                            sync.as_raw_fd(),
                            watched.watch.fd(),
                            stopped.raw(),
                        ],
                        u64::MAX,
                    );
                    let [claim, conn, datagram, notified] = match ready {
                        Ok([_, _, _, _, true]) => return,
                        Ok([a, b, c, d, false]) => [a, b, c, d],
                        Err(e) => {
                            log::error!("waiting for XDP events: {e}");
                            return;
                        }
                    };
                    if claim {
                        let batch = claims.drain();
                        let r = lock_routes(&routes);
                        for ev in batch {
                            if let Some(inbox) = r.by_slot.get(&ev.slot) {
                                // A stopping instance may be gone already.
                                inbox.send(Msg::Claim {
                                    at_ns: ev.ktime_ns,
                                    mac: ev.mac,
                                    answer: ev.flags & vipwatch_common::CLAIM_ANSWER != 0,
                                });
                            }
                        }
                    }
                    if conn {
                        let batch = conn_events.drain();
                        let r = lock_routes(&routes);
                        for ev in batch {
                            if let Some(inbox) = r.by_slot.get(&ev.key.slot) {
                                inbox.send(Msg::Conn(ev));
                            }
                        }
                    }
                    if datagram {
                        receive_syncs(&sync, &mut buf, &routes);
                    }
                    if notified {
                        watched.dispatch(&routes);
                    }
                }
            })
            .context("starting the event dispatcher")?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

/// Hands the waiting sync datagrams to the instances of their VIPs; the
/// instance decides whether the sender is its peer.
fn receive_syncs(socket: &UdpSocket, buf: &mut [u8], table: &Routes) {
    loop {
        let (n, from) = match socket.recv_from(buf) {
            Ok(x) => x,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => {
                log::debug!("sync socket: {e}");
                return;
            }
        };
        let Some(datagram) = Datagram::decode(&buf[..n]) else {
            log::debug!("ignoring a datagram from {from} that is not a vipwatch sync");
            continue;
        };
        let r = lock_routes(table);
        if let Some(inbox) = r.by_vip.get(&datagram.vip).and_then(|s| r.by_slot.get(s)) {
            inbox.send(Msg::Sync {
                from: from.ip().to_canonical(),
                datagram,
            });
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop.wake();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            log::error!("the claim dispatcher panicked");
        }
    }
}

impl Daemon {
    fn start(&mut self, instance: Instance) -> anyhow::Result<()> {
        let name = instance.name.clone();
        if !self.ifaces.contains_key(&instance.iface) {
            let iface = Iface::attach(&self.rt, &self.netlink, &instance)?;
            self.ifaces.insert(instance.iface.clone(), iface);
        }
        let iface_name = instance.iface.clone();
        let result = self.start_on(instance);
        if result.is_err()
            && let Some(iface) = self.ifaces.get(&iface_name)
            && !iface.in_use()
        {
            self.ifaces.remove(&iface_name);
        }
        result.with_context(|| format!("starting instance {name}"))
    }

    fn start_on(&mut self, instance: Instance) -> anyhow::Result<()> {
        let iface = self
            .ifaces
            .get_mut(&instance.iface)
            .ok_or_else(|| anyhow!("{} is not attached", instance.iface))?;
        let slot = iface
            .take_slot()
            .ok_or_else(|| anyhow!("no free slot on {} ({MAX_SLOTS} instances)", instance.iface))?;
        let maps = match iface.program.maps() {
            Ok(m) => m,
            Err(e) => {
                iface.free_slot(slot);
                return Err(e);
            }
        };
        let (inbox, rx) = worker::inbox()?;
        // Routed before the thread starts: the answer to its first ARP
        // probe must find it.
        {
            let mut r = lock_routes(&iface.routes);
            r.by_slot.insert(slot, inbox.clone());
            r.by_vip.insert(addr_of(instance.vip.addr), slot);
        }
        let resources = Resources {
            instance: instance.clone(),
            slot,
            maps,
            exited: Arc::clone(&self.exited),
            inbox,
            rx,
        };
        match worker::start(resources) {
            Ok(worker) => {
                self.running.insert(
                    instance.name.clone(),
                    Running {
                        instance,
                        worker,
                        slot,
                        stopping: false,
                    },
                );
                Ok(())
            }
            Err(e) => {
                iface.free_slot(slot);
                Err(e)
            }
        }
    }

    /// Asks `names` to stop (a second ask cuts a master's hold short).
    fn ask_stop<'a>(&mut self, names: impl IntoIterator<Item = &'a String>) {
        for name in names {
            if let Some(r) = self.running.get_mut(name) {
                r.stopping = true;
                r.worker.inbox.send(Msg::Stop);
            }
        }
    }

    /// Joins the instances that ended; returns the errors of those that
    /// ended on their own (not asked to stop) or failed.
    fn reap(&mut self) -> Vec<anyhow::Error> {
        let done: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.worker.is_finished())
            .map(|(n, _)| n.clone())
            .collect();
        let mut errors = Vec::new();
        for name in done {
            let Some(mut r) = self.running.remove(&name) else {
                continue;
            };
            let result = r.worker.join();
            if let Some(iface) = self.ifaces.get_mut(&r.instance.iface) {
                iface.free_slot(r.slot);
                if !iface.in_use() {
                    // The last instance of the interface: detach.
                    self.ifaces.remove(&r.instance.iface);
                }
            }
            match result {
                Ok(()) if r.stopping => {}
                Ok(()) => log::info!("instance {name} stopped"),
                Err(e) => {
                    log::error!("instance {name} stopped on an error: {e:#}");
                    errors.push(e.context(format!("instance {name}")));
                }
            }
        }
        errors
    }

    /// Waits until every instance in `names` has ended (or `STOP_GRACE`
    /// passed). A second SIGINT/SIGTERM meanwhile is passed on.
    fn wait_stopped(&mut self, names: &BTreeSet<String>, signals: &SignalFd) {
        let deadline = clock::now_ns() + STOP_GRACE.as_nanos() as u64;
        while names.iter().any(|n| self.running.contains_key(n)) {
            if clock::now_ns() >= deadline {
                log::error!(
                    "instances still running after {STOP_GRACE:?}: {:?}",
                    self.running.keys().collect::<Vec<_>>()
                );
                return;
            }
            let ready = clock::wait_readable(
                [self.exited.raw(), signals.raw()],
                clock::now_ns() + 100_000_000,
            );
            if let Ok([_, true]) = ready {
                for sig in signals.read() {
                    if matches!(sig, libc::SIGINT | libc::SIGTERM) {
                        log::info!("signal {sig} again: cutting handovers short");
                        self.ask_stop(names);
                    }
                }
            }
            self.exited.clear();
            self.reap();
        }
    }

    fn stop_all(&mut self, signals: &SignalFd) {
        let names: BTreeSet<String> = self.running.keys().cloned().collect();
        self.ask_stop(&names);
        self.wait_stopped(&names, signals);
    }

    fn serve(mut self, signals: &SignalFd, control: &control::Server) -> anyhow::Result<()> {
        let mut systemd = Systemd::from_env();
        loop {
            let now_ns = clock::now_ns();
            if !systemd.is_ready() {
                let starting: Vec<&str> = self
                    .running
                    .values()
                    .filter(|r| matches!(worker::lock(&r.worker.status).state, "" | "STARTING"))
                    .map(|r| r.instance.name.as_str())
                    .collect();
                let late = now_ns.saturating_sub(self.started_ns)
                    >= crate::systemd::READY_AT_THE_LATEST.as_nanos() as u64;
                if starting.is_empty() || late {
                    if !starting.is_empty() {
                        log::warn!(
                            "ready, though still starting after {:?}: {}",
                            crate::systemd::READY_AT_THE_LATEST,
                            starting.join(", ")
                        );
                    }
                    systemd.ready(&self.summary());
                }
            }
            systemd.watchdog(
                now_ns,
                self.running.values().map(|r| {
                    (
                        r.instance.name.as_str(),
                        r.worker.alive_ns.load(std::sync::atomic::Ordering::Relaxed),
                    )
                }),
            );
            let [sig, ctl, ex] = clock::wait_readable(
                [signals.raw(), control.fd(), self.exited.raw()],
                clock::now_ns() + systemd.max_sleep_ns(),
            )
            .context("waiting in ppoll")?;
            if ex {
                self.exited.clear();
                let errors = self.reap();
                if self.file.is_none() && self.running.is_empty() {
                    // The one instance of `backup`/`master` ended.
                    return errors.into_iter().next().map_or(Ok(()), Err);
                }
            }
            if sig {
                for s in signals.read() {
                    match s {
                        libc::SIGHUP => {
                            systemd.reloading();
                            self.reload(signals);
                            systemd.reloaded(&self.summary());
                        }
                        libc::SIGUSR1 => log::info!(
                            "SIGUSR1 ignored: `vipwatch release` talks to the control socket now"
                        ),
                        _ => {
                            log::info!("signal {s}: stopping (a second one cuts handovers short)");
                            systemd.stopping();
                            self.stop_all(signals);
                            return Ok(());
                        }
                    }
                }
            }
            if ctl {
                control.serve(|request, peer| self.handle(request, peer));
            }
        }
    }

    /// One line for `systemctl status`: how many instances in which state.
    fn summary(&self) -> String {
        let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in self.running.values() {
            let state = worker::lock(&r.worker.status).state;
            *states
                .entry(if state.is_empty() { "STARTING" } else { state })
                .or_default() += 1;
        }
        let parts: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
        format!("{} instance(s): {}", self.running.len(), parts.join(", "))
    }

    fn reload(&mut self, signals: &SignalFd) {
        let Some(path) = self.file.clone() else {
            log::info!("SIGHUP: started with flags, there is no configuration file to reload");
            return;
        };
        let file = match config::load(&path) {
            Ok(file) => file,
            Err(errors) => {
                log::error!(
                    "reload refused, the running configuration stays: {}",
                    errors_line(&errors)
                );
                return;
            }
        };
        let host = match HostSnapshot::read(&self.rt, &self.netlink) {
            Ok(h) => h,
            Err(e) => {
                log::error!("reload refused, the running configuration stays: {e:#}");
                return;
            }
        };
        let wanted: BTreeMap<String, Instance> = file
            .instances
            .iter()
            .map(|i| (i.name.clone(), i.clone()))
            .collect();
        let changed_or_new: Vec<Instance> = file
            .instances
            .iter()
            .filter(|i| self.running.get(&i.name).is_none_or(|r| r.instance != **i))
            .cloned()
            .collect();
        if let Some(problem) =
            start_problems(&Source::File(path.clone()), &changed_or_new, &host).first()
        {
            log::error!("reload refused, the running configuration stays: {problem}");
            return;
        }
        let to_stop: BTreeSet<String> = self
            .running
            .iter()
            .filter(|(name, r)| wanted.get(*name).is_none_or(|i| *i != r.instance))
            .map(|(name, _)| name.clone())
            .collect();
        let removed = to_stop.iter().filter(|n| !wanted.contains_key(*n)).count();
        let restarted = to_stop.len() - removed;
        let added = changed_or_new.len() - restarted;
        let unchanged = wanted.len() - changed_or_new.len();
        self.ask_stop(&to_stop);
        self.wait_stopped(&to_stop, signals);
        let mut failed = 0;
        for instance in changed_or_new {
            let name = instance.name.clone();
            if let Err(e) = self.start(instance) {
                failed += 1;
                log::error!("reload: instance {name} could not start: {e:#}");
            }
        }
        log::info!(
            "reloaded {}: {unchanged} unchanged, {added} added, {restarted} restarted, {removed} removed{}",
            path.display(),
            if failed > 0 {
                format!(", {failed} failed to start")
            } else {
                String::new()
            }
        );
    }

    fn handle(&mut self, request: Request, peer: Peer) -> Response {
        let mut response = Response {
            pid: std::process::id(),
            ..Response::default()
        };
        match request {
            Request::Stats => match self.stats() {
                Ok(reports) => response.stats = reports,
                Err(e) => response.error = Some(format!("{e:#}")),
            },
            Request::Status => {
                // The backup counters once, for status's peers and for the
                // caller (the metrics endpoint wants both).
                let reports = self.stats().unwrap_or_else(|e| {
                    log::debug!("status: backup counters unavailable: {e:#}");
                    Vec::new()
                });
                response.status = Some(self.status(&reports));
                response.stats = reports;
            }
            Request::Release { iface, vip } => {
                // SAFETY: geteuid has no preconditions.
                let euid = unsafe { libc::geteuid() };
                if peer.uid != 0 && peer.uid != euid {
                    response.error = Some(format!(
                        "permission denied: uid {} may not release VIPs (root or uid {euid} may)",
                        peer.uid
                    ));
                    return response;
                }
                match self.release(&iface, &vip) {
                    Ok(outcome) => response.released = outcome,
                    Err(e) => response.error = Some(format!("{e:#}")),
                }
            }
        }
        response
    }

    fn release(&mut self, iface: &str, vip: &str) -> anyhow::Result<Option<String>> {
        let vip: config::Vip = vip.parse().map_err(|e: String| anyhow!(e))?;
        let Some(r) = self
            .running
            .values()
            .find(|r| r.instance.iface == iface && r.instance.vip.addr == vip.addr)
        else {
            return Ok(None);
        };
        let (tx, rx) = mpsc::channel();
        if !r.worker.inbox.send(Msg::Release(tx)) {
            bail!("instance {} is stopping", r.instance.name);
        }
        rx.recv_timeout(REQUEST_TIMEOUT).map(Some).map_err(|_| {
            anyhow!(
                "instance {} did not answer within {REQUEST_TIMEOUT:?}",
                r.instance.name
            )
        })
    }

    /// Every instance; `reports`: the backups' counters (for their peers).
    fn status(&self, reports: &[stats::Report]) -> status::DaemonStatus {
        let now_ns = clock::now_ns();
        let age_s = |at_ns: u64| now_ns.saturating_sub(at_ns) as f64 / 1e9;
        let age_ms = |at_ns: u64| now_ns.saturating_sub(at_ns) as f64 / 1e6;
        let instances = self
            .running
            .values()
            .map(|r| {
                let s = worker::lock(&r.worker.status).clone();
                let state = if s.state.is_empty() {
                    "STARTING"
                } else {
                    s.state
                };
                let peers = match &r.instance.role {
                    Role::Backup(_) => reports
                        .iter()
                        .filter(|rep| rep.instance == r.instance.name)
                        .flat_map(|rep| {
                            [
                                Some(("master", &rep.master)),
                                rep.witness.as_ref().map(|w| ("witness", w)),
                            ]
                        })
                        .flatten()
                        .map(|(role, p)| status::PeerStatus {
                            role: role.into(),
                            address: p.address.to_string(),
                            last_seen_age_ms: p.last_reply_age_ms,
                            loss_pct: Some(p.loss_pct),
                        })
                        .collect(),
                    Role::Master(_) => self
                        .ifaces
                        .get(&r.instance.iface)
                        .and_then(|i| i.maps.learned(r.slot).ok())
                        .filter(|l| l.seen_ns != 0)
                        .map(|l| status::PeerStatus {
                            role: "backup".into(),
                            address: ip_of(&l.addr).to_string(),
                            last_seen_age_ms: Some(age_ms(l.seen_ns)),
                            loss_pct: None,
                        })
                        .into_iter()
                        .collect(),
                };
                status::InstanceStatus {
                    name: r.instance.name.clone(),
                    role: r.instance.role.name().into(),
                    iface: r.instance.iface.clone(),
                    vip: r.instance.vip.to_string(),
                    state: state.into(),
                    since_s: age_s(s.since_ns),
                    holding: matches!(state, "ACTIVE" | "HOLDING"),
                    peers,
                    health: s.health.map(|h| status::HealthStatus {
                        check: h.check,
                        healthy: h.healthy,
                        last_result: h.last.as_ref().map(|(_, r)| match r {
                            Ok(()) => "ok".to_owned(),
                            Err(why) => why.clone(),
                        }),
                        last_age_ms: h.last.as_ref().map(|(at, _)| age_ms(*at)),
                        passed: h.passed,
                        failed: h.failed,
                    }),
                    transitions: s
                        .transitions
                        .iter()
                        .map(|t| status::TransitionStatus {
                            age_s: age_s(t.at_ns),
                            at_ns: t.at_ns,
                            from: t.from.into(),
                            to: t.to.into(),
                            reason: t.reason.into(),
                        })
                        .collect(),
                    entered: s
                        .entered
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), *v))
                        .collect(),
                    conn: Some(stats::conn_of(r.instance.conn.kick, s.conn, now_ns)),
                    detection: matches!(r.instance.role, Role::Backup(_)).then(|| {
                        status::HistogramStatus {
                            bounds_s: worker::DETECTION_BUCKETS_S.to_vec(),
                            counts: s.detection.counts.to_vec(),
                            sum_s: s.detection.sum_s,
                            count: s.detection.count,
                        }
                    }),
                }
            })
            .collect();
        status::DaemonStatus {
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            uptime_s: age_s(self.started_ns),
            config: self.file.as_ref().map(|f| f.display().to_string()),
            instances,
        }
    }

    fn stats(&self) -> anyhow::Result<Vec<stats::Report>> {
        let mut out = Vec::new();
        for r in self.running.values() {
            let Role::Backup(b) = &r.instance.role else {
                continue;
            };
            let Some(iface) = self.ifaces.get(&r.instance.iface) else {
                continue;
            };
            let status = worker::lock(&r.worker.status).clone();
            let (stats, witness_probes_sent) = status.backup.unwrap_or_default();
            let view = stats::BackupView {
                iface: &r.instance.iface,
                instance: &r.instance.name,
                state: if status.state.is_empty() {
                    "STARTING"
                } else {
                    status.state
                },
                xdp_mode: iface.program.mode.as_str(),
                xdp_fallback: iface.program.fell_back,
                vip: r.instance.vip.addr.to_string(),
                slot: r.slot,
                master: b.master,
                witness: b.witness,
                interval_ns: u64::try_from(b.interval.as_nanos()).unwrap_or(u64::MAX),
                dead_after_ns: u64::try_from(b.dead_after.as_nanos()).unwrap_or(u64::MAX),
                stats,
                witness_probes_sent,
                kick: r.instance.conn.kick,
                conn: status.conn,
            };
            out.push(stats::report(&view, &iface.maps)?);
        }
        Ok(out)
    }
}

/// `vipwatch check --config FILE`: validates without touching the system
/// (it reads the interfaces and addresses, changes nothing).
pub fn check(path: PathBuf) -> anyhow::Result<()> {
    let file = match config::load(&path) {
        Ok(f) => f,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            std::process::exit(2);
        }
    };
    let (rt, netlink) = Netlink::with_runtime()?;
    let host = HostSnapshot::read(&rt, &netlink)?;
    let mut problems = Vec::new();
    for i in &file.instances {
        let lines = &file.lines[&i.name];
        for p in config::host_problems(i, &host) {
            problems.push(format!(
                "{}:{}: {}: {}",
                path.display(),
                lines.of(p.key),
                p.key,
                p.message
            ));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        std::process::exit(2);
    }
    let summary: Vec<String> = file
        .instances
        .iter()
        .map(|i| format!("{} ({} of {} on {})", i.name, i.role.name(), i.vip, i.iface))
        .collect();
    println!(
        "{}: OK, {} instance{}: {}",
        path.display(),
        file.instances.len(),
        if file.instances.len() == 1 { "" } else { "s" },
        summary.join(", ")
    );
    Ok(())
}
