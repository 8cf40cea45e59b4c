//! One thread per instance: the shell around its pure state machine.
//!
//! The loop only waits, reads the maps, feeds the machine and carries out
//! its actions; every decision is the machine's. It sleeps in ppoll(2)
//! until the machine's next deadline (nanosecond resolution: tokio's timer
//! wheel has 1 ms, more than the whole budget between a deadline and the
//! decision at a 0.5 ms probe interval) or until its inbox is woken: a
//! claim from the XDP program, a health result, a request from the control
//! socket, a stop.
//!
//! One thread per instance is what keeps instances apart: a slow bind, a
//! flapping master or a hanging hook of one never delays another's
//! detection (hooks and health checks have threads of their own too).

use std::{
    collections::{BTreeMap, VecDeque},
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    thread::JoinHandle,
};

use anyhow::{Context as _, bail};
use vipwatch_common::{
    CONN_ACKED, ConnEvent, PEER_MASTER, PEER_WITNESS, ROLE_BACKUP, ROLE_MASTER, SLOT_ACK_UPDATES,
    SLOT_AUTH, SLOT_WITNESS, SlotConfig, addr_of, ip_of,
};

use crate::{
    arp::mac_str,
    backup::{self, Decision, Failback, Note as BackupNote, Peer, Stray},
    clock::{self, delta_ms, ms},
    config::{self, Instance, Role},
    conns::{self, Datagram, Kind, Received},
    detector,
    ebpf::Maps,
    health,
    hook::Hooks,
    kick::{self, Kicker},
    master::{self, HANDOVER_HOLD},
    prober::{Identity, Prober},
    sys::{self, EventFd},
    vip::VipHandle,
};

/// What reaches an instance from outside its thread.
pub(crate) enum Msg {
    /// An ARP claim of the VIP, from the interface's ring buffer;
    /// `answer`: the answer to one of our RFC 5227 probes.
    Claim {
        at_ns: u64,
        mac: [u8; 6],
        answer: bool,
    },
    /// The kernel added or removed the VIP on our interface (rtnetlink):
    /// the instance re-reads what is there.
    Address,
    /// The interface's carrier came (`true`) or went.
    Carrier(bool),
    /// A health check result.
    Health(Result<(), String>),
    /// `vipwatch release`: the outcome goes back on the channel.
    Release(mpsc::Sender<String>),
    /// Stop (a second one cuts a master's handover short).
    Stop,
    /// A connection appeared in, or left, the table of our held VIP.
    Conn(ConnEvent),
    /// A connection-sync datagram from `from`.
    Sync { from: IpAddr, datagram: Datagram },
    /// The `on_change` hook of a state change finished.
    HookDone,
}

/// The sending side of an instance's inbox: a channel and the eventfd that
/// wakes its ppoll.
#[derive(Clone)]
pub(crate) struct Inbox {
    tx: mpsc::Sender<Msg>,
    wake: Arc<EventFd>,
}

impl Inbox {
    /// Delivers `msg`; false if the instance is gone.
    pub(crate) fn send(&self, msg: Msg) -> bool {
        let sent = self.tx.send(msg).is_ok();
        if sent {
            self.wake.wake();
        }
        sent
    }
}

/// One state change, as status shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub(crate) struct Record {
    pub(crate) at_ns: u64,
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
    pub(crate) reason: &'static str,
}

/// What an instance publishes for the control socket.
#[derive(Clone, Debug, Default)]
pub(crate) struct Status {
    pub(crate) state: &'static str,
    pub(crate) since_ns: u64,
    /// The latest state changes, oldest first.
    pub(crate) transitions: VecDeque<Record>,
    pub(crate) backup: Option<(backup::Stats, u64)>,
    pub(crate) gate_closed: bool,
    pub(crate) conn: ConnStatus,
    pub(crate) health: Option<HealthView>,
    /// State changes so far, by the state entered.
    pub(crate) entered: BTreeMap<&'static str, u64>,
    /// Master's last reply → first GARP, for every takeover.
    pub(crate) detection: DurationHistogram,
}

/// Fixed-bucket histogram of durations (Prometheus buckets: stable bounds,
/// per-bucket counts, exact sum).
#[derive(Clone, Debug, Default)]
pub(crate) struct DurationHistogram {
    /// Per bucket of [`DETECTION_BUCKETS_S`], then the overflow.
    pub(crate) counts: [u64; DETECTION_BUCKETS_S.len() + 1],
    pub(crate) sum_s: f64,
    pub(crate) count: u64,
}

/// Upper bounds, seconds: around the default 10 ms, up to the slow cases.
pub(crate) const DETECTION_BUCKETS_S: [f64; 12] = [
    0.002, 0.004, 0.006, 0.008, 0.010, 0.012, 0.015, 0.020, 0.050, 0.1, 0.5, 1.0,
];

impl DurationHistogram {
    pub(crate) fn observe(&mut self, seconds: f64) {
        let k = DETECTION_BUCKETS_S
            .iter()
            .position(|upper| seconds <= *upper)
            .unwrap_or(DETECTION_BUCKETS_S.len());
        self.counts[k] += 1;
        self.sum_s += seconds;
        self.count += 1;
    }
}

/// A health check's results, as status and metrics show them.
#[derive(Clone, Debug, Default)]
pub(crate) struct HealthView {
    /// What is checked (the check's description).
    pub(crate) check: String,
    /// The verdict after fall/rise.
    pub(crate) healthy: Option<bool>,
    /// CLOCK_MONOTONIC ns of the last result, and the result.
    pub(crate) last: Option<(u64, Result<(), String>)>,
    pub(crate) passed: u64,
    pub(crate) failed: u64,
}

impl HealthView {
    fn new(check: &health::Check) -> Self {
        Self {
            check: check.to_string(),
            ..Self::default()
        }
    }

    fn record(&mut self, at_ns: u64, result: &Result<(), String>, healthy: Option<bool>) {
        if result.is_ok() {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        self.last = Some((at_ns, result.clone()));
        self.healthy = healthy;
    }
}

/// The kick, as status shows it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ConnStatus {
    /// Connections in our own table (while we hold the VIP).
    pub(crate) table: usize,
    /// Connections the peer synced to us: what a takeover would kick.
    pub(crate) known_from_peer: usize,
    pub(crate) last_sync_ns: u64,
    pub(crate) syncs_accepted: u64,
    pub(crate) syncs_forged: u64,
    pub(crate) syncs_sent: u64,
    pub(crate) sync_bytes_sent: u64,
    pub(crate) last_kick: Option<LastKick>,
    /// Segments sent by every kick so far.
    pub(crate) kicked_total: u64,
    /// Connections every kick so far left out (rate limit).
    pub(crate) rate_limited_total: u64,
}

/// What the last kick did.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct LastKick {
    /// Segments the kernel took.
    pub(crate) sent: usize,
    /// Connections left out by the rate limit.
    pub(crate) rate_limited: usize,
    /// How long building and sending them took.
    pub(crate) took_ns: u64,
    /// CLOCK_MONOTONIC ns of its start.
    pub(crate) at_ns: u64,
}

const TRANSITIONS_KEPT: usize = 16;

/// The longest an instance's loop sleeps without a deadline or a message:
/// its turns are the systemd watchdog's sign of life (see
/// [`Worker::alive_ns`]).
pub(crate) const LOOP_TURN_MAX_NS: u64 = 100_000_000;

pub(crate) type SharedStatus = Arc<Mutex<Status>>;

pub(crate) fn lock(s: &SharedStatus) -> MutexGuard<'_, Status> {
    // Plain data: a panic elsewhere leaves it usable.
    s.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running instance, as the daemon holds it.
pub(crate) struct Worker {
    pub(crate) inbox: Inbox,
    pub(crate) status: SharedStatus,
    /// CLOCK_MONOTONIC ns of the last turn of the instance's loop: the
    /// systemd watchdog is fed only while every loop turns.
    pub(crate) alive_ns: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Worker {
    pub(crate) fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// The thread's result, once it is finished.
    pub(crate) fn join(&mut self) -> anyhow::Result<()> {
        match self.thread.take() {
            Some(thread) => match thread.join() {
                Ok(result) => result,
                Err(_) => bail!("the instance's thread panicked"),
            },
            None => Ok(()),
        }
    }
}

/// What the daemon hands an instance.
pub(crate) struct Resources {
    pub(crate) instance: Instance,
    pub(crate) slot: u32,
    pub(crate) maps: Maps,
    /// Woken when the thread ends, so the daemon reaps it at once.
    pub(crate) exited: Arc<EventFd>,
    pub(crate) inbox: Inbox,
    pub(crate) rx: mpsc::Receiver<Msg>,
}

/// Opens what the instance needs, claims its slot and starts its thread.
/// Anything that can fail for a user-visible reason fails here, before the
/// thread exists.
/// An instance's inbox: its sending side (for the interface's dispatcher,
/// the control socket and the hooks) and its receiving side (for
/// [`start`]). Made first, so the daemon can route events to the instance
/// before its thread sends anything whose answer must find it.
pub(crate) fn inbox() -> anyhow::Result<(Inbox, mpsc::Receiver<Msg>)> {
    let (tx, rx) = mpsc::channel();
    let wake = Arc::new(EventFd::new()?);
    Ok((Inbox { tx, wake }, rx))
}

pub(crate) fn start(res: Resources) -> anyhow::Result<Worker> {
    let Resources {
        instance,
        slot,
        maps,
        exited,
        inbox,
        rx,
    } = res;
    let vip = VipHandle::open(&instance.iface, instance.vip)?;
    let status: SharedStatus = Arc::default();
    let alive_ns = Arc::new(AtomicU64::new(clock::now_ns()));
    let done = {
        let inbox = inbox.clone();
        Box::new(move || {
            // The instance may be gone; then nobody waits for the hook.
            inbox.send(Msg::HookDone);
        })
    };
    let hooks = Hooks::new(&instance.name, instance.on_change.clone(), Some(done))?;
    let name = instance.name.clone();
    let conn = instance.conn;
    let capacity = usize::try_from(conn.table).unwrap_or(usize::MAX);
    let (kicker, sync_socket) = if conn.kick == kick::Mode::Off {
        (None, None)
    } else {
        (
            Some(Kicker::open(&instance.iface, vip.ifindex(), vip.mac())?),
            Some(sys::SyncSocket::open(&instance.iface, 0)?),
        )
    };
    let shell = Shell {
        name: instance.name.clone(),
        iface: instance.iface.clone(),
        vip_text: instance.vip.to_string(),
        vip,
        slot,
        maps,
        hooks,
        rx,
        wake: Arc::clone(&inbox.wake),
        status: Arc::clone(&status),
        alive_ns: Arc::clone(&alive_ns),
        conn: ConnState {
            settings: conn,
            local: conns::Local::new(capacity),
            peer: conns::Peer::new(capacity),
            kicker,
            socket: sync_socket,
            epoch: 0,
            partner: Partner::Learned,
            budget: kick::Budget::new(conn.table.into(), conn.table.into()),
            status: ConnStatus::default(),
        },
    };
    let thread = match &instance.role {
        Role::Backup(b) => {
            let b = *b;
            let mut shell = shell;
            let run = BackupLoop::prepare(&instance, b, &mut shell, &inbox)?;
            spawn(&name, exited, move || run.run(shell))?
        }
        Role::Master(m) => {
            let run = MasterLoop::prepare(&instance, m, &inbox)?;
            let mut shell = shell;
            shell
                .maps
                .open_slot(slot, {
                    let key = auth_key(&instance)?;
                    SlotConfig {
                        role: ROLE_MASTER,
                        flags: conn_flags(&instance.conn)
                            | if key.is_some() { SLOT_AUTH } else { 0 },
                        vip: addr_of(instance.vip.addr),
                        key: key.unwrap_or_default(),
                        ..SlotConfig::default()
                    }
                })
                .context("opening the instance's slot")?;
            spawn(&name, exited, move || run.run(shell))?
        }
    };
    Ok(Worker {
        inbox,
        status,
        alive_ns,
        thread: Some(thread),
    })
}

fn spawn(
    name: &str,
    exited: Arc<EventFd>,
    body: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    std::thread::Builder::new()
        .name(format!("vw-{name}"))
        .spawn(move || {
            let result = body();
            exited.wake();
            result
        })
        .with_context(|| format!("starting the thread of instance {name}"))
}

impl ConnState {
    fn local_capacity(&self) -> usize {
        usize::try_from(self.settings.table).unwrap_or(usize::MAX)
    }
}

/// What both roles' loops share: the instance's effects and inbox.
struct Shell {
    name: String,
    iface: String,
    vip_text: String,
    vip: VipHandle,
    slot: u32,
    maps: Maps,
    hooks: Hooks,
    rx: mpsc::Receiver<Msg>,
    wake: Arc<EventFd>,
    status: SharedStatus,
    alive_ns: Arc<AtomicU64>,
    conn: ConnState,
}

/// The pair's key, if the instance has one (validated with the
/// configuration; read again here, at start).
fn auth_key(instance: &Instance) -> anyhow::Result<Option<vipwatch_common::siphash::Key>> {
    instance
        .auth_key_file
        .as_deref()
        .map(|path| config::read_key(path).map_err(|e| anyhow::anyhow!(e)))
        .transpose()
}

/// The slot flags the kick asks of the XDP program.
fn conn_flags(c: &config::Conn) -> u32 {
    if c.kick == kick::Mode::Rst {
        SLOT_ACK_UPDATES
    } else {
        0
    }
}

/// The connection tables, the sync socket and the kicker of an instance.
struct ConnState {
    settings: config::Conn,
    /// Ours, while we hold the VIP.
    local: conns::Local,
    /// The peer's, from its syncs.
    peer: conns::Peer,
    kicker: Option<Kicker>,
    /// Sends our syncs (`None` when the kick is off).
    socket: Option<sys::SyncSocket>,
    /// Of our table's copy: a new one for every holding period.
    epoch: u32,
    partner: Partner,
    budget: kick::Budget,
    status: ConnStatus,
}

/// Who the peer is, for syncs: a backup knows its master and its own
/// nonce; a master learns both from the backup's probes.
#[derive(Clone, Copy, Debug)]
enum Partner {
    Fixed { addr: IpAddr, nonce: u64 },
    Learned,
}

/// A learned backup older than this is not synced to (it stopped
/// probing).
const LEARNED_FRESH_NS: u64 = 2_000_000_000;

impl Shell {
    /// Sleeps until `deadline` or a message; returns the messages. Never
    /// longer than [`LOOP_TURN_MAX`], so a quiet loop still shows it turns.
    fn wait(&mut self, deadline: u64) -> anyhow::Result<Vec<Msg>> {
        let now_ns = clock::now_ns();
        self.alive_ns.store(now_ns, Ordering::Relaxed);
        let deadline = deadline.min(now_ns + LOOP_TURN_MAX_NS);
        clock::wait_readable([self.wake.raw()], deadline).context("waiting in ppoll")?;
        self.wake.clear();
        Ok(self.rx.try_iter().collect())
    }

    fn record(&self, from: &'static str, to: &'static str, reason: &'static str, at_ns: u64) {
        let mut s = lock(&self.status);
        s.state = to;
        s.since_ns = at_ns;
        *s.entered.entry(to).or_default() += 1;
        if s.transitions.len() == TRANSITIONS_KEPT {
            s.transitions.pop_front();
        }
        s.transitions.push_back(Record {
            at_ns,
            from,
            to,
            reason,
        });
    }

    /// Starts the instance's health check, if it has one: results arrive
    /// as [`Msg::Health`]; status shows them. Dropping the runner stops it.
    fn start_health(
        &self,
        check: Option<(health::Check, std::time::Duration)>,
        inbox: &Inbox,
    ) -> anyhow::Result<Option<health::Runner>> {
        let Some((check, interval)) = check else {
            return Ok(None);
        };
        lock(&self.status).health = Some(HealthView::new(&check));
        let inbox = inbox.clone();
        let runner = health::Runner::start(&self.name, check, interval, move |result| {
            if !inbox.send(Msg::Health(result)) {
                log::debug!("a health result for a stopped instance");
            }
        })?;
        Ok(Some(runner))
    }

    /// Bind, then announce at once: (newly added, bound at, first GARP at).
    /// Then start recording the VIP's TCP connections.
    fn take_over(&mut self) -> anyhow::Result<(bool, u64, u64)> {
        let added = self.vip.bind()?;
        let bound_ns = clock::now_ns();
        self.announce();
        let first_garp_ns = clock::now_ns();
        if self.conn.settings.kick != kick::Mode::Off {
            self.conn.local = conns::Local::new(self.conn.local_capacity());
            self.conn.epoch = sys::random_u64().map_or(1, |r| r as u32);
            if let Err(e) = self.maps.set_holding(self.slot, true) {
                log::warn!("{}: cannot record connections: {e:#}", self.name);
            }
        }
        Ok((added, bound_ns, first_garp_ns))
    }

    /// Our whole table, as a snapshot, before it is forgotten.
    fn final_snapshot(&mut self) -> Vec<Datagram> {
        match self.partner() {
            Some((_, nonce)) => {
                let vip = addr_of(self.vip.vip().addr);
                self.conn.local.snapshot(nonce, vip, self.conn.epoch)
            }
            None => Vec::new(),
        }
    }

    /// Removes the VIP; stops recording its connections first. With
    /// `only_ours` (the master), an address vipwatch did not add is left in
    /// place, said once, and counts as released.
    fn unbind(&mut self, only_ours: bool) -> anyhow::Result<bool> {
        if self.conn.settings.kick != kick::Mode::Off {
            if let Err(e) = self.maps.set_holding(self.slot, false) {
                log::warn!("{}: cannot stop recording connections: {e:#}", self.name);
            }
            if let Err(e) = self.maps.forget_conns(self.slot) {
                log::warn!("{}: cannot clear its connections: {e:#}", self.name);
            }
            self.conn.local = conns::Local::new(self.conn.local_capacity());
        }
        if !only_ours {
            return self.vip.unbind();
        }
        match self.vip.unbind_ours() {
            Ok(removed) => Ok(removed),
            Err(e)
                if self
                    .vip
                    .presence()
                    .is_ok_and(|p| p.is_some_and(|e| !e.ours)) =>
            {
                log::warn!("{}: {e:#}", self.name);
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Where syncs go and the nonce they carry, if the peer is known.
    fn partner(&self) -> Option<(IpAddr, u64)> {
        self.partner_from().map(|(to, nonce, _)| (to, nonce))
    }

    /// [`Self::partner`] and, for a learned backup, the address of ours it
    /// probes: where our syncs must come from (the backup accepts them from
    /// that address only).
    fn partner_from(&self) -> Option<(IpAddr, u64, Option<IpAddr>)> {
        match self.conn.partner {
            Partner::Fixed { addr, nonce } => Some((addr, nonce, None)),
            Partner::Learned => {
                let l = self.maps.learned(self.slot).ok()?;
                let fresh =
                    l.seen_ns != 0 && clock::now_ns().saturating_sub(l.seen_ns) < LEARNED_FRESH_NS;
                fresh.then(|| {
                    (
                        ip_of(&l.addr),
                        u64::from_be_bytes(l.nonce),
                        (l.local != [0; 16]).then(|| ip_of(&l.local)),
                    )
                })
            }
        }
    }

    /// Sends our table's changes (or all of it) to the peer.
    fn sync(&mut self, snapshot: bool) {
        let Some((to, nonce, from)) = self.partner_from() else {
            return;
        };
        let vip = addr_of(self.vip.vip().addr);
        let epoch = self.conn.epoch;
        let datagrams = if snapshot {
            // Reconcile with the kernel's table first: fresh acks, and
            // connections evicted or whose event was lost.
            let now = clock::now_ns();
            let kernel = self
                .maps
                .conns_of(self.slot)
                .into_iter()
                // A connection still in its handshake has no ack number yet.
                .filter(|(_, v)| v.flags & CONN_ACKED != 0)
                .map(|(k, v)| {
                    (
                        conns::Conn {
                            client: ip_of(&k.client),
                            client_port: u16::from_be_bytes(k.client_port),
                            vip_port: u16::from_be_bytes(k.vip_port),
                        },
                        conns::Info {
                            ack: u32::from_be_bytes(v.ack),
                            mac: v.mac,
                        },
                        v.last_seen_ns,
                    )
                });
            self.conn.local.reconcile(now, kernel);
            self.conn.local.snapshot(nonce, vip, epoch)
        } else {
            self.conn.local.delta(nonce, vip, epoch)
        };
        self.send(to, from, &datagrams);
        self.conn.status.table = self.conn.local.len();
    }

    /// Tells the master we handed the VIP back, so it kicks our clients:
    /// our whole table first (its deltas may have been lost while the
    /// master was unreachable), then the hand-over.
    fn sync_released(&mut self, table: Vec<Datagram>) {
        let Some((to, nonce, from)) = self.partner_from() else {
            return;
        };
        self.send(to, from, &table);
        let d = Datagram {
            kind: Kind::Released,
            nonce,
            vip: addr_of(self.vip.vip().addr),
            epoch: self.conn.epoch,
            added: Vec::new(),
            removed: Vec::new(),
        };
        self.send(to, from, &[d]);
    }

    fn send(&mut self, to: IpAddr, from: Option<IpAddr>, datagrams: &[Datagram]) {
        let Some(socket) = &self.conn.socket else {
            return;
        };
        let dest = socket.dest(to, self.conn.settings.port, self.vip.ifindex());
        for d in datagrams {
            let bytes = d.encode();
            match socket.send_from(&bytes, dest, from) {
                Ok(n) => {
                    self.conn.status.syncs_sent += 1;
                    self.conn.status.sync_bytes_sent += n as u64;
                }
                Err(e) => {
                    log::debug!("{}: sync to {dest} not sent: {e}", self.name);
                    return;
                }
            }
        }
    }

    /// A sync datagram from the peer; `true` if it says the peer handed the
    /// VIP back to us.
    fn received(&mut self, from: IpAddr, d: &Datagram) -> bool {
        let (expected, nonce) = match self.partner() {
            Some((addr, nonce)) => (Some(addr), Some(nonce)),
            None => (None, None),
        };
        let r = self
            .conn
            .peer
            .receive(clock::now_ns(), from, expected, nonce, d);
        if r == Received::Forged && self.conn.peer.forged <= 10 {
            log::warn!(
                "{}: a connection-sync datagram from {from} was refused (not from {} with the right nonce): \
                 counted as forged",
                self.name,
                expected.map_or_else(|| "a known peer".to_owned(), |a| a.to_string())
            );
        }
        let s = &mut self.conn.status;
        s.known_from_peer = self.conn.peer.len();
        s.last_sync_ns = self.conn.peer.last_sync_ns;
        s.syncs_accepted = self.conn.peer.accepted;
        s.syncs_forged = self.conn.peer.forged;
        r == Received::Released
    }

    /// Kicks the connections the peer had, once.
    fn kick(&mut self) {
        let Some(kicker) = &self.conn.kicker else {
            return;
        };
        let started = clock::now_ns();
        let mut conns = self.conn.peer.take_for_kick(started);
        let vip = self.vip.vip().addr;
        self.conn.status.known_from_peer = 0;
        if conns.is_empty() {
            log::info!(
                "{}: kick: no connection known from the peer (it had none, or never synced)",
                self.name
            );
            self.conn.status.last_kick = Some(LastKick {
                at_ns: started,
                ..LastKick::default()
            });
            return;
        }
        let allowed = self.conn.budget.take(started, conns.len());
        let rate_limited = conns.len() - allowed;
        if rate_limited > 0 {
            log::warn!(
                "{}: kick: {rate_limited} of {} connections left out by the rate limit (the VIP \
                 moved too often: at most {} kicks a second)",
                self.name,
                conns.len(),
                self.conn.settings.table
            );
            conns.truncate(allowed);
        }
        let result = kicker.kick(self.conn.settings.kick, vip, &conns);
        let took = clock::now_ns().saturating_sub(started);
        match result {
            Ok(sent) => {
                log::info!(
                    "{}: kicked {sent} of {} connections the peer had ({}) in {} mono_ns={started}",
                    self.name,
                    conns.len() + rate_limited,
                    config::kick_name(self.conn.settings.kick),
                    ms(took)
                );
                self.conn.status.last_kick = Some(LastKick {
                    sent,
                    rate_limited,
                    took_ns: took,
                    at_ns: started,
                });
                self.conn.status.kicked_total += sent as u64;
                self.conn.status.rate_limited_total += rate_limited as u64;
            }
            Err(e) => log::warn!("{}: kick failed: {e}", self.name),
        }
    }

    fn announce(&mut self) {
        if let Err(e) = self.vip.announce() {
            log::warn!(
                "{}: announcing {} on {} failed: {e:#}",
                self.name,
                self.vip_text,
                self.iface
            );
        }
    }

    /// Leaves nothing of the instance in the program.
    fn close_slot(&mut self) {
        if let Err(e) = self.maps.close_slot(self.slot) {
            log::error!("{}: clearing its XDP slot: {e:#}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------
// The backup's loop.

struct BackupLoop {
    machine: backup::Machine,
    prober: Prober,
    witness: bool,
    rt_priority: Option<u8>,
    /// Our connection table as of the last release.
    final_table: Vec<Datagram>,
    /// The VIP was on the interface at start, not added by vipwatch.
    stray_at_start: bool,
    /// `rise`, for messages.
    rise: u32,
    /// Our own service's check, until its runner starts.
    health: Option<(health::Check, std::time::Duration)>,
    inbox: Inbox,
}

impl BackupLoop {
    fn prepare(
        instance: &Instance,
        b: config::Backup,
        shell: &mut Shell,
        inbox: &Inbox,
    ) -> anyhow::Result<Self> {
        let check = match &instance.health {
            Some(h) => Some((health::Check::from_spec(&h.check)?, h.interval)),
            None => None,
        };
        let config::Backup {
            master,
            interval,
            dead_after,
            rise,
            witness,
            failback,
            stray_vip,
            count,
            rt_priority,
        } = b;
        // A VIP bound already: ours (a vipwatch that stopped without
        // releasing it) is adopted; anyone else's is a stray.
        let found = shell.vip.presence()?;
        let nonce = sys::random_u64()?;
        let echo_id = (sys::random_u64()? & 0xffff) as u16;
        let vip = addr_of(instance.vip.addr);
        let key = auth_key(instance)?;
        shell
            .maps
            .open_slot(
                shell.slot,
                SlotConfig {
                    role: ROLE_BACKUP,
                    flags: conn_flags(&instance.conn)
                        | if witness.is_some() { SLOT_WITNESS } else { 0 }
                        | if key.is_some() { SLOT_AUTH } else { 0 },
                    key: key.unwrap_or_default(),
                    master: addr_of(master),
                    witness: witness.map_or([0; 16], addr_of),
                    vip,
                    echo_id: echo_id.to_be_bytes(),
                    nonce: nonce.to_be_bytes(),
                    ..SlotConfig::default()
                },
            )
            .context("opening the instance's slot")?;
        let slot = u16::try_from(shell.slot).context("slot number")?;
        let prober = match Prober::open(
            &instance.iface,
            Identity {
                echo_id,
                nonce,
                slot,
                vip,
                key,
            },
            master,
            witness,
            shell.vip.ifindex(),
        ) {
            Ok(p) => p,
            Err(e) => {
                shell.close_slot();
                return Err(e);
            }
        };
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let settings = backup::Settings {
            detector: detector::Settings {
                interval_ns: ns(interval),
                dead_after_ns: ns(dead_after),
                rise,
                failback,
                witness: witness.is_some(),
            },
            garp: instance.garp,
            probe_limit: count,
            health: instance.health.as_ref().map(|h| (h.fall, h.rise)),
            conn: instance.conn,
            stray: stray_vip,
        };
        shell.conn.partner = Partner::Fixed {
            addr: master,
            nonce,
        };
        log::info!(
            "{}: watching master {master} on {} every {} (dead after {} = {} unanswered probes{}), VIP {}, failback {}",
            instance.name,
            instance.iface,
            ms(settings.detector.interval_ns),
            ms(settings.detector.dead_after_ns),
            settings.detector.probes_needed(),
            witness
                .map(|w| format!(", witness {w}"))
                .unwrap_or_default(),
            instance.vip,
            config::failback_name(failback),
        );
        {
            let mut s = lock(&shell.status);
            s.state = state_name(backup::State::Starting);
            s.since_ns = clock::now_ns();
        }
        Ok(Self {
            machine: backup::Machine::new(settings, clock::now_ns(), found.is_some_and(|e| e.ours)),
            stray_at_start: found.is_some_and(|e| !e.ours),
            rise,
            prober,
            witness: witness.is_some(),
            rt_priority,
            final_table: Vec::new(),
            health: check,
            inbox: inbox.clone(),
        })
    }

    fn run(mut self, mut shell: Shell) -> anyhow::Result<()> {
        let result = self.serve(&mut shell);
        if self.machine.state() == backup::State::Active {
            // Whatever made us stop, do not leave the VIP behind: a stopped
            // backup that still answers for it is a split brain.
            log::warn!(
                "{}: stopping while holding {}: releasing it",
                shell.name,
                shell.vip_text
            );
            let at_ns = clock::now_ns();
            if let Err(e) = self.feed(&mut shell, backup::Event::Shutdown { at_ns }) {
                log::error!("{}: {e:#}", shell.name);
            }
        }
        shell.close_slot();
        result
    }

    fn serve(&mut self, shell: &mut Shell) -> anyhow::Result<()> {
        if let Some(priority) = self.rt_priority {
            // Only this thread: hooks, health checks and other instances
            // keep their normal policy.
            sys::realtime(priority)?;
            log::info!(
                "{}: probe/deadline loop runs under SCHED_FIFO priority {priority}",
                shell.name
            );
        }
        if let Some((check, interval)) = &self.health {
            log::info!(
                "{}: health check: {check} every {} ms; no takeover while it fails",
                shell.name,
                interval.as_millis()
            );
        }
        let _runner = shell.start_health(self.health.take(), &self.inbox)?;
        for action in self.machine.start() {
            self.execute(shell, action);
        }
        if self.stray_at_start {
            let at_ns = clock::now_ns();
            self.feed(
                shell,
                backup::Event::Address {
                    at_ns,
                    present: true,
                },
            )?;
        }
        loop {
            for msg in shell.wait(self.machine.next_deadline())? {
                let at_ns = clock::now_ns();
                match msg {
                    Msg::Claim { at_ns, mac, answer } => {
                        self.feed(shell, backup::Event::Claim { at_ns, mac, answer })?;
                    }
                    Msg::Address => match shell.vip.presence() {
                        Ok(p) => self.feed(
                            shell,
                            backup::Event::Address {
                                at_ns,
                                present: p.is_some(),
                            },
                        )?,
                        Err(e) => log::warn!("{}: {e:#}", shell.name),
                    },
                    Msg::Carrier(_) => {}
                    Msg::Health(result) => {
                        if let Err(why) = &result {
                            if self.machine.health_verdict() == Some(false) {
                                log::debug!(
                                    "{}: health check failed (still unhealthy): {why}",
                                    shell.name
                                );
                            } else {
                                let (against, needed) =
                                    self.machine.health_progress().unwrap_or((0, 1));
                                log::info!(
                                    "{}: health check failed ({}/{needed} towards unhealthy): {why}",
                                    shell.name,
                                    against + 1
                                );
                            }
                        }
                        self.feed(
                            shell,
                            backup::Event::Health {
                                at_ns,
                                healthy: result.is_ok(),
                            },
                        )?;
                        let healthy = self.machine.health_verdict();
                        if let Some(h) = lock(&shell.status).health.as_mut() {
                            h.record(at_ns, &result, healthy);
                        }
                    }
                    Msg::Conn(ev) => shell.conn.local.event(&ev),
                    Msg::Sync { from, datagram } => {
                        // The master never hands the VIP to its backup this way.
                        shell.received(from, &datagram);
                    }
                    Msg::HookDone => self.feed(shell, backup::Event::HookDone)?,
                    Msg::Release(reply) => {
                        let before = self.machine.state();
                        log::info!(
                            "{}: `vipwatch release` asked us to hand {} back",
                            shell.name,
                            shell.vip_text
                        );
                        let outcome = if before == backup::State::Active
                            && !self.machine.master_back()
                        {
                            // Releasing would leave the VIP on nobody.
                            let why = format!(
                                "{}: refused: the master does not answer our probes, so nobody would hold \
                                 {}; it is handed back when the master has answered {} probes in a row",
                                shell.name, shell.vip_text, self.rise
                            );
                            log::warn!("{why}");
                            why
                        } else if before == backup::State::Active {
                            self.feed(shell, backup::Event::OperatorRelease { at_ns })?;
                            format!(
                                "{}: released {} and pointed the clients at the master ({}); taken back \
                                 if the master does not answer for it within {} ms",
                                shell.name,
                                shell.vip_text,
                                mac_str(self.machine.master_mac()),
                                backup::VERIFY_WINDOW_NS / 1_000_000
                            )
                        } else {
                            format!(
                                "{}: not holding {} (state {})",
                                shell.name,
                                shell.vip_text,
                                state_name(before)
                            )
                        };
                        if reply.send(outcome).is_err() {
                            log::debug!("{}: the release request went away", shell.name);
                        }
                    }
                    Msg::Stop => {
                        self.feed(shell, backup::Event::Shutdown { at_ns })?;
                        self.publish(shell);
                        return Ok(());
                    }
                }
            }
            let now_ns = clock::now_ns();
            if now_ns >= self.machine.next_deadline() {
                let master = peer(shell.maps.liveness(shell.slot, PEER_MASTER)?);
                let witness = if self.witness {
                    Some(peer(shell.maps.liveness(shell.slot, PEER_WITNESS)?))
                } else {
                    None
                };
                self.feed(
                    shell,
                    backup::Event::Tick {
                        now_ns,
                        master,
                        witness,
                    },
                )?;
            }
            self.publish(shell);
        }
    }

    fn publish(&self, shell: &Shell) {
        let mut s = lock(&shell.status);
        s.backup = Some((self.machine.stats(), self.prober.witness_sent));
        s.conn = shell.conn.status;
    }

    /// Feeds one event and carries out the actions, feeding their results
    /// back in order.
    fn feed(&mut self, shell: &mut Shell, event: backup::Event) -> anyhow::Result<()> {
        let mut queue = VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            for action in self.machine.handle(event) {
                if let Some(result) = self.execute(shell, action) {
                    queue.push_back(result);
                }
            }
        }
        Ok(())
    }

    fn execute(&mut self, shell: &mut Shell, action: backup::Action) -> Option<backup::Event> {
        use backup::{Action, Event};
        match action {
            Action::Probe { seq } => {
                let tick = self.prober.tick(seq);
                tick.master_sent.then_some(Event::ProbeSent {
                    at_ns: tick.at_ns,
                    seq,
                })
            }
            Action::TakeOver { decision } => Some(self.take_over(shell, decision)),
            Action::Release => {
                // Kept for a hand-over to the master (SyncReleased), which
                // comes right after: unbinding forgets the table.
                self.final_table = shell.final_snapshot();
                let result = shell.unbind(false);
                let at_ns = clock::now_ns();
                Some(match result {
                    Ok(true) => {
                        log::info!(
                            "{}: released {} from {} mono_ns={at_ns}",
                            shell.name,
                            shell.vip_text,
                            shell.iface
                        );
                        Event::Unbound { at_ns }
                    }
                    Ok(false) => {
                        log::info!(
                            "{}: {} was already gone from {} mono_ns={at_ns}",
                            shell.name,
                            shell.vip_text,
                            shell.iface
                        );
                        Event::Unbound { at_ns }
                    }
                    Err(e) => {
                        // Still bound while we stand by would be a split
                        // brain: the machine retries.
                        log::error!(
                            "{}: could not remove {}: {e:#}; retrying",
                            shell.name,
                            shell.vip_text
                        );
                        Event::UnbindFailed { at_ns }
                    }
                })
            }
            Action::Announce => {
                shell.announce();
                None
            }
            Action::HandOver { mac } => {
                if let Err(e) = shell.vip.hand_over(mac) {
                    log::warn!(
                        "{}: could not hand {} over to {}: {e:#}",
                        shell.name,
                        shell.vip_text,
                        mac_str(mac)
                    );
                }
                None
            }
            Action::Solicit => match shell.vip.solicit() {
                Ok(()) => None,
                Err(e) => {
                    log::warn!(
                        "{}: could not ask who holds {}: {e:#}",
                        shell.name,
                        shell.vip_text
                    );
                    Some(Event::SolicitFailed {
                        at_ns: clock::now_ns(),
                    })
                }
            },
            Action::Kick => {
                shell.kick();
                None
            }
            Action::Sync { snapshot } => {
                shell.sync(snapshot);
                None
            }
            Action::SyncReleased => {
                shell.sync_released(std::mem::take(&mut self.final_table));
                None
            }
            Action::Note(note) => {
                match note {
                    BackupNote::Conflict { mac, master_mac } => log::warn!(
                        "{}: {} is claimed by {} which is not the master ({}): address conflict on the LAN",
                        shell.name,
                        shell.vip_text,
                        mac_str(mac),
                        mac_str(master_mac)
                    ),
                    BackupNote::MasterBack { mac, failback } => log::info!(
                        "{}: master {} answers again; keeping {} until it claims it{}",
                        shell.name,
                        mac_str(mac),
                        shell.vip_text,
                        match failback {
                            Failback::OnClaim => "",
                            Failback::Manual => " and `vipwatch release` is run (failback manual)",
                        }
                    ),
                    BackupNote::Retry { bind } => log::info!(
                        "{}: trying again to {} {}",
                        shell.name,
                        if bind { "bind" } else { "remove" },
                        shell.vip_text
                    ),
                    BackupNote::VipRemoved => log::warn!(
                        "{}: {} was removed from {} while we hold it: binding it again",
                        shell.name,
                        shell.vip_text,
                        shell.iface
                    ),
                    BackupNote::Health { healthy: true } => log::info!(
                        "{}: our own service is healthy{}",
                        shell.name,
                        if self.machine.state() == backup::State::Active {
                            ""
                        } else {
                            ": a takeover is allowed"
                        }
                    ),
                    BackupNote::Health { healthy: false } => log::warn!(
                        "{}: our own service is UNHEALTHY: no takeover of {} until it passes its check again",
                        shell.name,
                        shell.vip_text
                    ),
                    BackupNote::TakeoverRefused { silence_ns } => log::warn!(
                        "{}: TAKEOVER REFUSED: the master has been silent for {}, but our own service is \
                         unhealthy; taking {} over as soon as it passes its check",
                        shell.name,
                        ms(silence_ns),
                        shell.vip_text
                    ),
                    BackupNote::UnhealthyHolding => log::warn!(
                        "{}: our own service is unhealthy while we hold {} and the master is silent: \
                         keeping it (nobody else can answer)",
                        shell.name,
                        shell.vip_text
                    ),
                    BackupNote::Stray { policy } => log::warn!(
                        "{}: {} appeared on {} while we do not hold it (added by hand, or by another \
                         program): {}",
                        shell.name,
                        shell.vip_text,
                        shell.iface,
                        match policy {
                            Stray::Remove => "removing it (stray_vip = remove)",
                            Stray::Adopt =>
                                "adopting it: kept only if the master does not answer for it (stray_vip = adopt)",
                        }
                    ),
                    BackupNote::Adopted => log::warn!(
                        "{}: {} is already bound on {} (a vipwatch that stopped without releasing it): \
                         adopted; kept if the master is dead, handed back if it answers",
                        shell.name,
                        shell.vip_text,
                        shell.iface
                    ),
                    BackupNote::AdoptedHandBack { mac } => log::info!(
                        "{}: the master answers: handing the adopted {} back to it ({})",
                        shell.name,
                        shell.vip_text,
                        mac_str(mac)
                    ),
                    BackupNote::ClaimantUnchecked { mac } => log::warn!(
                        "{}: could not check that {} holds {} (see above): trusting its claim",
                        shell.name,
                        mac_str(mac),
                        shell.vip_text
                    ),
                    BackupNote::ClaimantSilent { mac } => log::warn!(
                        "{}: nobody answers for {} after we gave it to {} (a forged claim, or a \
                         claimant that does not hold it): taking it back",
                        shell.name,
                        shell.vip_text,
                        mac_str(mac)
                    ),
                }
                None
            }
            Action::Notify(t) => {
                self.notify(shell, t);
                None
            }
        }
    }

    fn take_over(&mut self, shell: &mut Shell, decision: Decision) -> backup::Event {
        let started = clock::now_ns();
        match shell.take_over() {
            Ok((_, bound_ns, first_garp_ns)) => {
                let Decision {
                    last_reply_ns,
                    deadline_ns,
                    decision_ns,
                } = decision;
                log::info!(
                    "{}: takeover timeline: last reply {:+.3} ms, deadline {:+.3} ms, decision {:+.3} ms, VIP bound {:+.3} ms, \
                     first GARP {:+.3} ms (relative to the decision; decision->first GARP {:.3} ms) mono_ns={decision_ns}",
                    shell.name,
                    delta_ms(decision_ns, last_reply_ns),
                    delta_ms(decision_ns, deadline_ns),
                    0.0,
                    delta_ms(decision_ns, bound_ns),
                    delta_ms(decision_ns, first_garp_ns),
                    delta_ms(decision_ns, first_garp_ns),
                );
                if last_reply_ns != 0 && first_garp_ns > last_reply_ns {
                    lock(&shell.status)
                        .detection
                        .observe((first_garp_ns - last_reply_ns) as f64 / 1e9);
                }
                backup::Event::Bound {
                    bound_ns,
                    first_garp_ns,
                }
            }
            Err(e) => {
                // Announcing an address we could not bind would attract the
                // clients to a host that cannot answer them: the machine
                // retries the bind, and announces once it works.
                log::error!(
                    "{}: TAKEOVER FAILED: could not bind {} on {}: {e:#}; retrying",
                    shell.name,
                    shell.vip_text,
                    shell.iface
                );
                backup::Event::BindFailed { at_ns: started }
            }
        }
    }

    fn notify(&mut self, shell: &mut Shell, t: detector::Transition) {
        let detector::Transition {
            from,
            to,
            reason,
            at_ns,
        } = t;
        if from == backup::State::Starting
            && let Err(e) = shell.maps.reset_max_gap(shell.slot, PEER_MASTER)
        {
            // The start-up gap (first ARP resolution) says nothing about
            // the path; without the reset `max_gap_ms` would keep it.
            log::warn!("{}: could not reset the gap statistic: {e:#}", shell.name);
        }
        log::info!(
            "{}: state {} -> {}: {} mono_ns={at_ns}",
            shell.name,
            state_name(from),
            state_name(to),
            describe(reason)
        );
        shell.record(
            state_name(from),
            state_name(to),
            reason_token(reason),
            at_ns,
        );
        shell.hooks.notify(
            state_name(to),
            &shell.vip_text,
            &shell.iface,
            reason_token(reason),
        );
    }
}

fn peer(p: crate::ebpf::PeerSnapshot) -> Peer {
    Peer {
        replies: p.replies,
        last_seen_ns: p.last_seen_ns,
        highest_seq: p.highest_seq,
        last_mac: p.last_mac,
    }
}

pub(crate) fn state_name(s: backup::State) -> &'static str {
    match s {
        backup::State::Starting => "STARTING",
        backup::State::Standby => "STANDBY",
        backup::State::Active => "ACTIVE",
        backup::State::Isolated => "ISOLATED",
    }
}

fn describe(r: backup::Reason) -> String {
    use backup::Reason;
    match r {
        Reason::MasterReplied => "the master answers our probes".into(),
        Reason::MasterSilent { silence_ns, probes } => format!(
            "master silent for {} ({probes} probes sent since its last reply)",
            ms(silence_ns)
        ),
        Reason::WitnessSilent { silence_ns } => format!(
            "master AND witness silent for {}: we are the one cut off, not taking the VIP",
            ms(silence_ns)
        ),
        Reason::MasterClaimed => "the master claimed the VIP back (ARP/NDP)".into(),
        Reason::OperatorRelease => "operator release".into(),
        Reason::MasterBack { replies } => format!("master back ({replies} consecutive replies)"),
        Reason::Shutdown => "daemon stopping".into(),
        Reason::ClaimantSilent => {
            "nobody answers for the VIP we gave up (forged or empty claim): taken back".into()
        }
    }
}

fn reason_token(r: backup::Reason) -> &'static str {
    use backup::Reason;
    match r {
        Reason::MasterReplied => "master-replied",
        Reason::MasterSilent { .. } => "master-silent",
        Reason::WitnessSilent { .. } => "witness-silent",
        Reason::MasterClaimed => "master-claimed",
        Reason::OperatorRelease => "operator-release",
        Reason::MasterBack { .. } => "master-back",
        Reason::Shutdown => "shutdown",
        Reason::ClaimantSilent => "claimant-silent",
    }
}

// ---------------------------------------------------------------------------
// The master's loop.

struct MasterLoop {
    machine: master::Machine,
    health: Option<(health::Check, std::time::Duration)>,
    preempt: bool,
    inbox: Inbox,
}

/// What carrying out one batch of actions did, for the state change's log
/// line.
#[derive(Default)]
struct Effects {
    /// (newly added, bound at, first GARP sent at).
    claimed: Option<(bool, u64, u64)>,
    /// (was bound, removed at).
    released: Option<(bool, u64)>,
    gate_closed: Option<bool>,
}

impl MasterLoop {
    fn prepare(instance: &Instance, m: &config::Master, inbox: &Inbox) -> anyhow::Result<Self> {
        let config::Master { preempt } = m;
        let health = &instance.health;
        let check = match health {
            Some(h) => Some((health::Check::from_spec(&h.check)?, h.interval)),
            None => None,
        };
        let settings = master::Settings {
            preempt: *preempt,
            health: health.as_ref().map(|h| (h.fall, h.rise)),
            garp: instance.garp,
            conn: instance.conn,
        };
        log::info!(
            "{}: vipwatch master on {}: VIP {}, {}, GARP {}x every {} ms{}",
            instance.name,
            instance.iface,
            instance.vip,
            if *preempt { "preempt" } else { "no-preempt" },
            instance.garp.count,
            instance.garp.interval_ns / 1_000_000,
            instance
                .garp
                .refresh_ns
                .map(|r| format!(", then every {} ms", r / 1_000_000))
                .unwrap_or_default(),
        );
        match (&check, health) {
            (Some((c, interval)), Some(h)) => log::info!(
                "{}: health check: {c} every {} ms (health_fall {}, health_rise {} consecutive checks); the VIP is claimed only once it passes",
                instance.name,
                interval.as_millis(),
                h.fall,
                h.rise
            ),
            _ => log::info!(
                "{}: no health check: holding {} for as long as vipwatch runs",
                instance.name,
                instance.vip
            ),
        }
        Ok(Self {
            machine: master::Machine::new(settings),
            health: check,
            preempt: *preempt,
            inbox: inbox.clone(),
        })
    }

    fn run(mut self, mut shell: Shell) -> anyhow::Result<()> {
        let result = self.serve(&mut shell);
        if result.is_err() && self.machine.state() == master::State::Holding {
            // Whatever made us stop (an error), do not leave the VIP bound:
            // a stopped master that still answers for it fights the backup.
            match shell.unbind(true) {
                Ok(_) => log::warn!(
                    "{}: stopping on an error: released {} from {} mono_ns={}",
                    shell.name,
                    shell.vip_text,
                    shell.iface,
                    clock::now_ns()
                ),
                Err(e) => log::error!(
                    "{}: stopping on an error, and could not remove {} from {} ({e:#}); remove it with \
                     `vipwatch release --iface {} --vip {}`",
                    shell.name,
                    shell.vip_text,
                    shell.iface,
                    shell.iface,
                    shell.vip_text
                ),
            }
        }
        shell.close_slot();
        result
    }

    fn serve(&mut self, shell: &mut Shell) -> anyhow::Result<()> {
        {
            let mut s = lock(&shell.status);
            s.state = master::State::Starting.name();
            s.since_ns = clock::now_ns();
        }
        let _runner = shell.start_health(self.health.take(), &self.inbox)?;
        let first = self.machine.start(clock::now_ns());
        if self.carry_out(shell, first)? {
            return Ok(());
        }
        loop {
            for msg in shell.wait(self.machine.next_deadline())? {
                let at_ns = clock::now_ns();
                let event = match msg {
                    Msg::Claim { at_ns, mac, .. } => master::Event::Claim { at_ns, mac },
                    Msg::Address => match shell.vip.presence() {
                        Ok(p) => master::Event::Address {
                            at_ns,
                            present: p.is_some(),
                        },
                        Err(e) => {
                            log::warn!("{}: {e:#}", shell.name);
                            continue;
                        }
                    },
                    Msg::Carrier(up) => {
                        log::info!(
                            "{}: {} {}",
                            shell.name,
                            shell.iface,
                            if up {
                                "has its carrier again"
                            } else {
                                "lost its carrier"
                            }
                        );
                        master::Event::Carrier { at_ns, up }
                    }
                    Msg::Health(result) => {
                        let event = master::Event::Health {
                            at_ns,
                            result: result.clone(),
                        };
                        if self.feed(shell, event)? {
                            return Ok(());
                        }
                        let healthy = self.machine.verdict();
                        if let Some(h) = lock(&shell.status).health.as_mut() {
                            h.record(at_ns, &result, healthy);
                        }
                        continue;
                    }
                    Msg::Conn(ev) => {
                        shell.conn.local.event(&ev);
                        continue;
                    }
                    Msg::Sync { from, datagram } => {
                        let released = shell.received(from, &datagram);
                        lock(&shell.status).conn = shell.conn.status;
                        if !released {
                            continue;
                        }
                        master::Event::PeerReleased { at_ns }
                    }
                    Msg::HookDone => master::Event::HookDone,
                    Msg::Release(reply) => {
                        let answer = format!(
                            "{}: refused: {} is held by a vipwatch master instance; stop that instance \
                             (SIGTERM, or remove it from the configuration and reload) to hand it over",
                            shell.name, shell.vip_text
                        );
                        if reply.send(answer).is_err() {
                            log::debug!("{}: the release request went away", shell.name);
                        }
                        continue;
                    }
                    Msg::Stop => {
                        if self.machine.state() != master::State::Stopped {
                            log::info!(
                                "{}: stopping (a second stop request skips the handover hold)",
                                shell.name
                            );
                        }
                        master::Event::Shutdown { at_ns }
                    }
                };
                if self.feed(shell, event)? {
                    return Ok(());
                }
            }
            let now_ns = clock::now_ns();
            if now_ns >= self.machine.next_deadline()
                && self.feed(shell, master::Event::Tick { now_ns })?
            {
                return Ok(());
            }
        }
    }

    /// Feeds one event; true when the instance is done.
    fn feed(&mut self, shell: &mut Shell, event: master::Event) -> anyhow::Result<bool> {
        let actions = self.machine.handle(event);
        self.carry_out(shell, actions)
    }

    fn carry_out(
        &mut self,
        shell: &mut Shell,
        actions: Vec<master::Action>,
    ) -> anyhow::Result<bool> {
        let mut queue: VecDeque<master::Action> = actions.into();
        let mut effects = Effects::default();
        let mut results = Vec::new();
        while let Some(action) = queue.pop_front() {
            use master::{Action, Event};
            match action {
                Action::Solicit => {
                    if let Err(e) = shell.vip.solicit() {
                        log::warn!(
                            "{}: could not ask who answers for {} on {} ({e:#}); {}",
                            shell.name,
                            shell.vip_text,
                            shell.iface,
                            if self.preempt {
                                "claiming it anyway (preempt)"
                            } else {
                                "not claiming it (no_preempt) until a probe succeeds"
                            }
                        );
                        results.push(Event::SolicitFailed {
                            at_ns: clock::now_ns(),
                        });
                    }
                }
                Action::TakeOver => match shell.take_over() {
                    Ok((added, bound_ns, first_garp_ns)) => {
                        effects.claimed = Some((added, bound_ns, first_garp_ns));
                        results.push(Event::Bound {
                            bound_ns,
                            first_garp_ns,
                        });
                    }
                    Err(e) => {
                        log::error!("{}: {e:#}; retrying", shell.name);
                        results.push(Event::BindFailed {
                            at_ns: clock::now_ns(),
                        });
                    }
                },
                Action::Release => match shell.unbind(true) {
                    Ok(removed) => {
                        let at_ns = clock::now_ns();
                        effects.released = Some((removed, at_ns));
                        results.push(Event::Unbound { at_ns });
                    }
                    Err(e) => {
                        log::error!(
                            "{}: {e:#}; remove it by hand (`vipwatch release --iface {} --vip {}`) or this host \
                             keeps answering for it; retrying",
                            shell.name,
                            shell.iface,
                            shell.vip_text
                        );
                        results.push(Event::UnbindFailed {
                            at_ns: clock::now_ns(),
                        });
                    }
                },
                Action::Announce => shell.announce(),
                Action::Kick => {
                    shell.kick();
                    lock(&shell.status).conn = shell.conn.status;
                }
                Action::Sync { snapshot } => {
                    shell.sync(snapshot);
                    lock(&shell.status).conn = shell.conn.status;
                }
                Action::OpenGate | Action::CloseGate => {
                    let closed = action == Action::CloseGate;
                    shell
                        .maps
                        .set_gate_closed(shell.slot, closed)
                        .with_context(|| {
                            format!(
                                "{} the probe gate of {}",
                                if closed { "closing" } else { "opening" },
                                shell.name
                            )
                        })?;
                    effects.gate_closed = Some(closed);
                    lock(&shell.status).gate_closed = closed;
                }
                Action::Note(note) => self.note(shell, note),
                Action::Notify(t) => self.report(shell, &t, &effects),
                Action::Exit { cut_short } => {
                    let (_, dropped) = shell.maps.gate(shell.slot).unwrap_or_default();
                    let dropped = if dropped == 0 {
                        "no probes dropped (is a backup probing this host?)".to_owned()
                    } else {
                        format!("{dropped} probes dropped")
                    };
                    if cut_short {
                        log::warn!(
                            "{}: stopped again: exiting before the {} ms handover hold was over, {dropped}; \
                             the backup may not have taken over",
                            shell.name,
                            HANDOVER_HOLD.as_millis()
                        );
                    } else {
                        log::info!(
                            "{}: handover: probe gate held closed {} ms, {dropped}; exiting",
                            shell.name,
                            HANDOVER_HOLD.as_millis()
                        );
                    }
                    return Ok(true);
                }
            }
        }
        for result in results {
            if self.feed(shell, result)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn note(&self, shell: &Shell, note: master::Note) {
        match note {
            master::Note::HealthCheck {
                result,
                against,
                needed,
            } => match result {
                Err(why) if self.machine.state() == master::State::Unhealthy => {
                    log::debug!(
                        "{}: health check failed (still unhealthy): {why}",
                        shell.name
                    );
                }
                Err(why) => log::debug!(
                    "{}: health check failed ({against}/{needed} towards unhealthy): {why}",
                    shell.name
                ),
                Ok(()) => log::debug!(
                    "{}: health check passed ({against}/{needed} towards healthy)",
                    shell.name
                ),
            },
            master::Note::Conflict { mac } => log::warn!(
                "{}: {} is claimed by {} while this master holds it: address conflict on the LAN",
                shell.name,
                shell.vip_text,
                mac_str(mac)
            ),
            master::Note::Retry { bind } => log::info!(
                "{}: trying again to {} {}",
                shell.name,
                if bind { "bind" } else { "remove" },
                shell.vip_text
            ),
            master::Note::VipRemoved => log::warn!(
                "{}: {} was removed from {} while this master holds it: binding it again",
                shell.name,
                shell.vip_text,
                shell.iface
            ),
        }
    }

    /// The one log line (and hook) of a state change. `mono_ns` is the
    /// CLOCK_MONOTONIC time of the address change it made (bind or
    /// release), else of the decision.
    fn report(&self, shell: &mut Shell, t: &master::Transition, effects: &Effects) {
        let master::Transition {
            from,
            to,
            reason,
            at_ns,
        } = t;
        let why = Self::describe(shell, *from, reason);
        let vip = &shell.vip_text;
        let iface = &shell.iface;
        let name = &shell.name;
        let gate = match effects.gate_closed {
            Some(true) => ", probe gate closed",
            Some(false) => ", probe gate open",
            None => "",
        };
        let released = |(removed, at): (bool, u64)| {
            let what = if removed {
                format!("released {vip} from {iface}")
            } else {
                format!("{vip} was not bound on {iface}")
            };
            (what, at)
        };
        match to {
            master::State::Holding => {
                let (added, bound_ns, first_garp_ns) =
                    effects.claimed.unwrap_or((false, *at_ns, *at_ns));
                let note = if added { "" } else { "; it was already bound" };
                log::info!(
                    "{name}: state -> HOLDING: bound {vip} on {iface}, first GARP {:+.3} ms (from {}, {why}{note}) \
                     mono_ns={bound_ns}",
                    delta_ms(bound_ns, first_garp_ns),
                    from.name(),
                );
            }
            master::State::Unhealthy => {
                let (what, at) = effects
                    .released
                    .map_or_else(|| (format!("{vip} not bound"), *at_ns), released);
                // A failed service is what `journalctl -p warning` is for.
                log::warn!(
                    "{name}: state -> UNHEALTHY: {what}{gate} (from {}, {why}) mono_ns={at}",
                    from.name()
                );
            }
            master::State::Waiting => log::info!(
                "{name}: state -> WAITING: not claiming {vip} (no_preempt); probing again every {} s (from {}, {why}) \
                 mono_ns={at_ns}",
                master::RECHECK_EVERY.as_secs(),
                from.name(),
            ),
            master::State::Stopped => {
                let (what, at) = effects
                    .released
                    .map_or_else(|| (format!("{vip} not bound"), *at_ns), released);
                let (seen, dropped) = shell.maps.gate(shell.slot).unwrap_or_default();
                log::info!(
                    "{name}: state -> STOPPED: {what}, probe gate closed for {} ms so the backup takes over \
                     (from {}, {why}; probe gate saw {seen} probes, dropped {dropped}) mono_ns={at}",
                    HANDOVER_HOLD.as_millis(),
                    from.name()
                );
            }
            master::State::Starting => {
                log::info!("{name}: state -> STARTING (from {}, {why})", from.name())
            }
            master::State::Fault => {
                let (what, at) = effects
                    .released
                    .map_or_else(|| (format!("{vip} not bound"), *at_ns), released);
                log::warn!(
                    "{name}: state -> FAULT: {what}; claiming it again when the carrier returns (from {}, {why}) \
                     mono_ns={at}",
                    from.name()
                );
            }
        }
        shell.record(from.name(), to.name(), reason.token(), *at_ns);
        shell.hooks.notify(to.name(), vip, iface, reason.token());
    }

    fn describe(shell: &Shell, from: master::State, reason: &master::Reason) -> String {
        use master::Reason;
        let token = reason.token();
        let vip = shell.vip.vip();
        match reason {
            Reason::Claimed => format!("{token}: nobody else answers for {}", vip.addr),
            Reason::Preempted(mac) => format!("{token}: taken from {}", mac_str(*mac)),
            Reason::VipInUse(Some(mac)) => {
                format!("{token}: {} answers for {}", mac_str(*mac), vip.addr)
            }
            Reason::VipInUse(None) => {
                format!("{token}: the ARP/NDP probe failed, so the VIP may be in use")
            }
            Reason::HealthFailed { first, fall, last } => {
                if *first || from == master::State::Starting {
                    format!("{token}: the first check failed: {last}")
                } else {
                    format!("{token}: {fall} consecutive failed checks, last: {last}")
                }
            }
            Reason::HealthRecovered { rise } => format!("{token}: {rise} consecutive good checks"),
            Reason::Shutdown => token.to_owned(),
            Reason::CarrierLost => format!("{token}: {} has no carrier", shell.iface),
        }
    }
}
