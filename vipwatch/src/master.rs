//! `vipwatch master`: hold the VIP on this host — the classic `master.sh`
//! (`ifconfig eth0:0 VIP up` + `arping -U`) — with an optional service
//! health gate.
//!
//! Start-up: an RFC 5227 §2.1.1 ARP probe asks who answers for the VIP.
//! By default the master claims it anyway (preempt: the gratuitous ARP is
//! the claim that makes an on-claim backup release it); with
//! `--no-preempt` it waits until nobody answers. A claim binds the VIP
//! (rtnetlink) and announces it (RFC 5227 §3 / RFC 5944 §4.6 gratuitous
//! ARP, RFC 4861 §7.2.6 unsolicited NA for IPv6): a burst of
//! `--garp-count`, then optionally every `--garp-refresh`.
//!
//! The XDP probe gate (`vipwatch_gate`) is always attached. Closed, it
//! drops the backup's probes, so the backup sees this master dead and
//! takes over within its detection time, while everything else this host
//! does (ssh, monitoring, our own ARP) is untouched. It is closed:
//!
//! - with `--health-cmd`/`--health-http`, after `--health-fall` failed
//!   checks, once the VIP is released; after `--health-rise` good checks
//!   it opens again (the backup sees the master alive) and the VIP is
//!   claimed back;
//! - on SIGINT/SIGTERM, a planned handover (keepalived sends priority 0
//!   when it stops, RFC 5798 §6.4.3): the VIP is released and the gate
//!   stays closed for [`HANDOVER_HOLD`], so the backup detects the silence
//!   and takes the VIP. Without this the host, still up, keeps answering
//!   the probes after the daemon exits and nobody serves the VIP.
//!
//! As in the backup, the decisions are a pure state machine ([`Machine`]:
//! events in, actions and at most one [`Transition`] out) and [`Daemon`]
//! only turns actions into syscalls. Nothing here is timed below a
//! millisecond, so a current-thread tokio runtime drives it all: signals,
//! health results, the ARP probe (on the blocking pool) and the timers.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    runtime::Runtime,
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
    task::{JoinError, JoinHandle},
    time::{Instant, MissedTickBehavior},
};

use crate::{
    arp::{self, Announcer, GarpSchedule},
    backup::mac_str,
    cli::{GarpArgs, MasterArgs, Vip},
    clock,
    ebpf::{Gate, ModeArg},
    health::{Check, Hysteresis, Verdict},
    hook::Hooks,
    netlink::Netlink,
    sys,
};

/// How long the ARP probe listens for another owner of the VIP.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a `--no-preempt` master waiting for the VIP probes again.
pub const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How long stopping waits for blocking work still running (an ARP probe,
/// a DNS lookup of `--health-http`) before exiting without it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// How long a stopping master keeps the probe gate closed before it exits
/// (exiting detaches the gate, and the kernel answers the probes again).
/// It must exceed the backup's `--dead-after` (default 10 ms) plus a few
/// probe intervals, or the backup still sees this host alive and never
/// takes over; 200 ms covers the default with a wide margin (a backup
/// configured with a longer `--dead-after` does not take over on a planned
/// stop). A second SIGINT/SIGTERM cuts it short.
pub const HANDOVER_HOLD: Duration = Duration::from_millis(200);

// ---------------------------------------------------------------------------
// The pure state machine.

/// What the master is doing. The names are what logs and `--on-change`
/// hooks show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the first health verdict or the first ARP probe.
    Starting,
    /// Healthy, but another host answers for the VIP (`--no-preempt`).
    Waiting,
    /// The VIP is bound here and announced.
    Holding,
    /// The service failed its checks: VIP released, probe gate closed.
    Unhealthy,
    /// Shut down: VIP released, probe gate closed for [`HANDOVER_HOLD`].
    Stopped,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::Waiting => "WAITING",
            Self::Holding => "HOLDING",
            Self::Unhealthy => "UNHEALTHY",
            Self::Stopped => "STOPPED",
        }
    }
}

/// Who answered the ARP probe for the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Owner {
    Nobody,
    Host([u8; 6]),
    /// The probe failed (its error is logged); nobody can say.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// The health verdict changed (the first verdict counts as a change).
    Health(Verdict),
    /// An ARP probe for the VIP finished.
    Probed(Owner),
    /// `RECHECK_EVERY` passed since a probe found the VIP taken.
    RecheckDue,
    /// SIGINT/SIGTERM.
    Shutdown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Start an ARP probe; its result comes back as [`Event::Probed`].
    Probe,
    /// Deliver [`Event::RecheckDue`] after [`RECHECK_EVERY`].
    RecheckLater,
    /// Bind the VIP, then start the gratuitous ARP burst.
    Claim,
    /// Stop announcing and remove the VIP (idempotent).
    Release,
    /// Let the backup's probes through: it sees this master alive.
    OpenGate,
    /// Drop the backup's probes: it sees this master dead and takes over.
    CloseGate,
    /// Keep the gate as it is (closed) for [`HANDOVER_HOLD`] before
    /// stopping, so the backup notices the silence.
    HoldForHandover,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Nobody else answered for the VIP (or the probe could not tell and
    /// we preempt anyway).
    Claimed,
    /// Another host answered for the VIP and we took it (preempt).
    Preempted([u8; 6]),
    /// Another host answers for the VIP and `--no-preempt` is set (`None`:
    /// the probe failed, so we cannot know it is free).
    VipInUse(Option<[u8; 6]>),
    /// `--health-fall` consecutive failed checks (or the first one).
    HealthFailed,
    /// `--health-rise` consecutive good checks after being unhealthy.
    HealthRecovered,
    Shutdown,
}

impl Reason {
    /// The token `--on-change` hooks get.
    pub fn token(self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Preempted(_) => "preempted",
            Self::VipInUse(_) => "vip-in-use",
            Self::HealthFailed => "health-failed",
            Self::HealthRecovered => "health-recovered",
            Self::Shutdown => "shutdown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
}

/// What one event asks for: actions, in the order they must be done, and
/// the state change they make (if any).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub actions: Vec<Action>,
    pub transition: Option<Transition>,
}

/// The master's decisions. Pure: no clock, no I/O.
#[derive(Clone, Debug)]
pub struct Machine {
    state: State,
    preempt: bool,
    /// The current health verdict (always true without a health check).
    healthy: bool,
    /// An ARP probe is out; its result may be stale by the time it comes.
    probing: bool,
    /// Whether the gate drops probes (it starts open when attached).
    gate_closed: bool,
    /// The claim being prepared follows a recovery (for its reason).
    recovering: bool,
}

impl Machine {
    /// `health_gated`: a health check is configured, so nothing is claimed
    /// before its first verdict.
    pub fn new(preempt: bool, health_gated: bool) -> Self {
        Self {
            state: State::Starting,
            preempt,
            healthy: !health_gated,
            probing: false,
            gate_closed: false,
            recovering: false,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The first actions: probe at once without a health check, else wait
    /// for the first verdict.
    pub fn start(&mut self) -> Step {
        if self.state == State::Starting && self.healthy {
            return Step {
                actions: self.probe(),
                transition: None,
            };
        }
        Step::default()
    }

    /// The one function that changes state.
    pub fn handle(&mut self, event: Event) -> Step {
        if self.state == State::Stopped {
            return Step::default();
        }
        match event {
            Event::Health(Verdict::Healthy) => self.healthy(),
            Event::Health(Verdict::Unhealthy) => self.unhealthy(),
            Event::Probed(owner) => self.probed(owner),
            Event::RecheckDue if self.state == State::Waiting && self.healthy => Step {
                actions: self.probe(),
                transition: None,
            },
            Event::RecheckDue => Step::default(),
            Event::Shutdown => {
                // A planned handover: release, then (as for a failed health
                // check, and for the same reason) close the gate, and hold
                // it closed until the backup has noticed. Whatever the state:
                // a master stopped before it claimed the VIP must not keep
                // the backup standing by for a VIP nobody serves.
                let mut actions = Vec::new();
                if self.state == State::Holding {
                    actions.push(Action::Release);
                }
                self.close_gate(&mut actions);
                actions.push(Action::HoldForHandover);
                self.go(State::Stopped, Reason::Shutdown, actions)
            }
        }
    }

    fn healthy(&mut self) -> Step {
        if self.healthy {
            return Step::default();
        }
        self.healthy = true;
        let mut actions = Vec::new();
        if self.state == State::Unhealthy {
            // Gate first: once the claim's GARP makes the backup release
            // the VIP, it must already see this master alive, or it would
            // take the VIP right back.
            self.recovering = true;
            self.open_gate(&mut actions);
        }
        if matches!(self.state, State::Starting | State::Unhealthy) {
            actions.extend(self.probe());
        }
        Step {
            actions,
            transition: None,
        }
    }

    fn unhealthy(&mut self) -> Step {
        self.healthy = false;
        self.recovering = false;
        let mut actions = Vec::new();
        match self.state {
            // At start the VIP may be left over from a daemon that died:
            // release it too (removing an absent address is a no-op).
            // Release before closing the gate: the backup must never bind
            // the VIP while this host still answers for it.
            State::Starting | State::Holding => actions.push(Action::Release),
            State::Waiting | State::Unhealthy | State::Stopped => {}
        }
        self.close_gate(&mut actions);
        if self.state == State::Unhealthy {
            // A recovery that failed again before its claim: just re-close.
            return Step {
                actions,
                transition: None,
            };
        }
        self.go(State::Unhealthy, Reason::HealthFailed, actions)
    }

    fn probed(&mut self, owner: Owner) -> Step {
        self.probing = false;
        if !self.healthy
            || !matches!(
                self.state,
                State::Starting | State::Waiting | State::Unhealthy
            )
        {
            // Stale: the verdict changed while the probe was out.
            return Step::default();
        }
        let claim_reason =
            |preempted: Option<[u8; 6]>, recovering: bool| match (recovering, preempted) {
                (true, _) => Reason::HealthRecovered,
                (false, Some(mac)) => Reason::Preempted(mac),
                (false, None) => Reason::Claimed,
            };
        let reason = match owner {
            Owner::Nobody => claim_reason(None, self.recovering),
            Owner::Host(mac) if self.preempt => claim_reason(Some(mac), self.recovering),
            Owner::Unknown if self.preempt => claim_reason(None, self.recovering),
            Owner::Host(_) | Owner::Unknown => {
                let actions = vec![Action::RecheckLater];
                if self.state == State::Waiting {
                    return Step {
                        actions,
                        transition: None,
                    };
                }
                self.recovering = false;
                let mac = match owner {
                    Owner::Host(mac) => Some(mac),
                    Owner::Nobody | Owner::Unknown => None,
                };
                return self.go(State::Waiting, Reason::VipInUse(mac), actions);
            }
        };
        self.recovering = false;
        self.go(State::Holding, reason, vec![Action::Claim])
    }

    fn probe(&mut self) -> Vec<Action> {
        if self.probing {
            return Vec::new();
        }
        self.probing = true;
        vec![Action::Probe]
    }

    fn open_gate(&mut self, actions: &mut Vec<Action>) {
        if self.gate_closed {
            self.gate_closed = false;
            actions.push(Action::OpenGate);
        }
    }

    fn close_gate(&mut self, actions: &mut Vec<Action>) {
        if !self.gate_closed {
            self.gate_closed = true;
            actions.push(Action::CloseGate);
        }
    }

    fn go(&mut self, to: State, reason: Reason, actions: Vec<Action>) -> Step {
        let from = self.state;
        self.state = to;
        Step {
            actions,
            transition: Some(Transition { from, to, reason }),
        }
    }
}

// ---------------------------------------------------------------------------
// The shell.

pub fn run(args: MasterArgs) -> anyhow::Result<()> {
    sys::require_privileges("vipwatch master")?;
    let MasterArgs {
        iface,
        vip,
        garp,
        no_preempt,
        health_cmd,
        health_http,
        health_expect,
        health_interval,
        health_fall,
        health_rise,
        on_change,
        xdp_mode,
    } = args;
    if no_preempt && vip.v4().is_none() {
        bail!(
            "--no-preempt needs an IPv4 VIP: it asks who answers for the VIP with an ARP probe, \
             and IPv6 (NDP) probing is not implemented; drop --no-preempt or use an IPv4 VIP"
        );
    }
    let check = Check::from_args(health_cmd, health_http, health_expect)?;
    let (rt, netlink) = Netlink::with_runtime()?;
    let settings = Settings {
        iface,
        vip,
        garp,
        preempt: !no_preempt,
        check,
        health_interval,
        health_fall,
        health_rise,
        on_change,
        xdp_mode,
    };
    let result = serve(&rt, netlink, settings);
    // A probe or a DNS lookup may still run on the blocking pool: give it a
    // moment, never an unbounded wait.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

struct Settings {
    iface: String,
    vip: Vip,
    garp: GarpArgs,
    preempt: bool,
    check: Option<Check>,
    health_interval: Duration,
    health_fall: u32,
    health_rise: u32,
    on_change: Option<String>,
    xdp_mode: ModeArg,
}

fn serve(rt: &Runtime, netlink: Netlink, s: Settings) -> anyhow::Result<()> {
    let Settings {
        iface,
        vip,
        garp,
        preempt,
        check,
        health_interval,
        health_fall,
        health_rise,
        on_change,
        xdp_mode,
    } = s;
    let ifindex = rt.block_on(netlink.link_index(&iface))?;
    let mut announcer = Announcer::open(&iface)?;
    announcer.prepare(vip.addr)?;
    let hooks = Hooks::new(on_change)?;
    let (sigint, sigterm) = {
        let _enter = rt.enter();
        (
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        )
    };

    log::info!(
        "vipwatch master on {iface}: VIP {vip}, {}, GARP {}x every {} ms{}",
        if preempt { "preempt" } else { "no-preempt" },
        garp.garp_count,
        garp.garp_interval.as_millis(),
        garp.garp_refresh
            .map(|r| format!(", then every {} ms", r.as_millis()))
            .unwrap_or_default(),
    );
    // Always attached, health check or not: closing it on SIGINT/SIGTERM is
    // what hands the VIP over to the backup.
    let gate = Gate::attach(&iface, xdp_mode)
        .with_context(|| format!("attaching the probe gate (XDP) to {iface}"))?;
    if gate.fell_back {
        log::warn!(
            "XDP FALLBACK: the driver of {iface} refused native mode; the probe gate runs in skb \
             (generic) mode, which costs more CPU per packet (use --xdp-mode skb to make this explicit)"
        );
    } else {
        log::info!(
            "probe gate attached to {iface} in {} mode",
            gate.mode.as_str()
        );
    }
    let health = match check {
        Some(check) => {
            log::info!(
                "health check: {check} every {} ms (--health-fall {health_fall}, --health-rise {health_rise} \
                 consecutive checks); the VIP is claimed only once it passes",
                health_interval.as_millis()
            );
            let (tx, rx) = mpsc::channel(4);
            let task = rt.spawn(health_loop(check, health_interval, tx));
            Some(HealthFeed {
                rx,
                task,
                hysteresis: Hysteresis::new(health_fall, health_rise),
            })
        }
        None => {
            log::info!("no health check: holding {vip} for as long as vipwatch runs");
            None
        }
    };

    let mut daemon = Daemon {
        rt,
        machine: Machine::new(preempt, health.is_some()),
        netlink,
        ifindex,
        vip,
        iface,
        announcer,
        gate,
        hooks,
        garp: GarpSchedule::new(&garp),
        held: false,
        health_failure: None,
        probe_failures: 0,
        health_fall,
        health_rise,
        waits: Waits {
            sigint,
            sigterm,
            health,
            probe: None,
            recheck_at: None,
            garp_at: None,
        },
    };
    daemon.run()
}

/// Runs the check every `interval` and sends each result. Each check is
/// bounded by the interval, so the next one starts on time.
async fn health_loop(check: Check, interval: Duration, tx: mpsc::Sender<Result<(), String>>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let result = check.run(interval).await;
        if tx.send(result).await.is_err() {
            // The daemon is stopping and dropped the receiver.
            return;
        }
    }
}

struct HealthFeed {
    rx: mpsc::Receiver<Result<(), String>>,
    task: JoinHandle<()>,
    hysteresis: Hysteresis,
}

type ProbeResult = anyhow::Result<Option<[u8; 6]>>;

/// Everything the daemon waits for.
struct Waits {
    sigint: Signal,
    sigterm: Signal,
    health: Option<HealthFeed>,
    probe: Option<JoinHandle<ProbeResult>>,
    recheck_at: Option<Instant>,
    garp_at: Option<Instant>,
}

enum Wake {
    Signal(&'static str),
    Health(Option<Result<(), String>>),
    Probed(Result<ProbeResult, JoinError>),
    Recheck,
    Garp,
}

impl Waits {
    /// The next thing to act on. Every branch is a wake-up from the kernel
    /// or a timer: no polling.
    async fn next(&mut self) -> Wake {
        let Self {
            sigint,
            sigterm,
            health,
            probe,
            recheck_at,
            garp_at,
        } = self;
        tokio::select! {
            _ = sigint.recv() => Wake::Signal("SIGINT"),
            _ = sigterm.recv() => Wake::Signal("SIGTERM"),
            result = recv(health) => Wake::Health(result),
            result = join(probe) => Wake::Probed(result),
            () = sleep(*recheck_at) => Wake::Recheck,
            () = sleep(*garp_at) => Wake::Garp,
        }
    }
}

async fn recv(health: &mut Option<HealthFeed>) -> Option<Result<(), String>> {
    match health {
        Some(feed) => feed.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn join<T>(handle: &mut Option<JoinHandle<T>>) -> Result<T, JoinError> {
    match handle {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

async fn sleep(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What carrying out one step's actions did, for its log line.
#[derive(Default)]
struct Effects {
    /// (newly added, bound at, first GARP sent at).
    claimed: Option<(bool, u64, u64)>,
    /// (was bound, removed at).
    released: Option<(bool, u64)>,
    gate_closed: Option<bool>,
    /// The gate is held closed this long after the step's log line.
    handover_hold: Option<Duration>,
}

struct Daemon<'rt> {
    rt: &'rt Runtime,
    machine: Machine,
    netlink: Netlink,
    ifindex: u32,
    vip: Vip,
    iface: String,
    announcer: Announcer,
    /// Dropped after the VIP is released (field order): detaching it lets
    /// the backup's probes through again.
    gate: Gate,
    hooks: Hooks,
    garp: GarpSchedule,
    /// The VIP is bound by us (what the drop guard releases).
    held: bool,
    /// Why the latest health check failed, for the transition's log line.
    health_failure: Option<String>,
    /// Consecutive failed ARP probes (the first is logged as a warning).
    probe_failures: u32,
    health_fall: u32,
    health_rise: u32,
    waits: Waits,
}

impl Daemon<'_> {
    fn run(&mut self) -> anyhow::Result<()> {
        let step = self.machine.start();
        self.apply(step)?;
        loop {
            let wake = self.rt.block_on(self.waits.next());
            match wake {
                Wake::Signal(name) => {
                    log::info!(
                        "{name}: stopping (a second SIGINT/SIGTERM skips the handover hold)"
                    );
                    let step = self.machine.handle(Event::Shutdown);
                    return self.apply(step);
                }
                Wake::Health(Some(result)) => self.on_health(result)?,
                Wake::Health(None) => {
                    bail!(
                        "the health check task stopped unexpectedly (did it panic? see above); restart vipwatch"
                    )
                }
                Wake::Probed(result) => {
                    self.waits.probe = None;
                    let owner = self.owner(result)?;
                    let step = self.machine.handle(Event::Probed(owner));
                    self.apply(step)?;
                }
                Wake::Recheck => {
                    self.waits.recheck_at = None;
                    let step = self.machine.handle(Event::RecheckDue);
                    self.apply(step)?;
                }
                Wake::Garp => {
                    self.announce();
                    self.garp.sent(clock::now_ns());
                    self.arm_garp_timer();
                }
            }
        }
    }

    fn on_health(&mut self, result: Result<(), String>) -> anyhow::Result<()> {
        let Some(feed) = self.waits.health.as_mut() else {
            return Ok(());
        };
        let changed = feed.hysteresis.record(result.is_ok());
        if changed.is_none() {
            // Quiet unless it changes the verdict: debug only.
            let (against, needed) = feed.hysteresis.progress();
            match (&result, feed.hysteresis.verdict()) {
                (Err(why), Some(Verdict::Healthy)) => {
                    log::debug!(
                        "health check failed ({against}/{needed} towards unhealthy): {why}"
                    );
                }
                (Err(why), _) => log::debug!("health check failed (still unhealthy): {why}"),
                (Ok(()), Some(Verdict::Unhealthy)) => {
                    log::debug!("health check passed ({against}/{needed} towards healthy)");
                }
                (Ok(()), _) => {}
            }
        }
        if let Err(why) = result {
            self.health_failure = Some(why);
        }
        match changed {
            Some(verdict) => {
                let step = self.machine.handle(Event::Health(verdict));
                self.apply(step)
            }
            None => Ok(()),
        }
    }

    /// Turns a finished probe into an [`Owner`], logging what the user
    /// should know.
    fn owner(&mut self, result: Result<ProbeResult, JoinError>) -> anyhow::Result<Owner> {
        let result = match result {
            Ok(result) => result,
            Err(e) if e.is_panic() => bail!("the ARP probe thread panicked: {e}"),
            Err(e) => bail!("the ARP probe was cancelled: {e}"),
        };
        match result {
            Ok(owner) => {
                self.probe_failures = 0;
                match owner {
                    Some(mac) if self.machine.preempt => {
                        log::info!(
                            "VIP currently answered by {}; claiming it (preempt)",
                            mac_str(mac)
                        );
                        Ok(Owner::Host(mac))
                    }
                    Some(mac) => Ok(Owner::Host(mac)),
                    None => Ok(Owner::Nobody),
                }
            }
            Err(e) => {
                self.probe_failures += 1;
                if self.probe_failures == 1 {
                    log::warn!(
                        "could not ask who answers for {} on {} ({e:#}); {}",
                        self.vip.addr,
                        self.iface,
                        if self.machine.preempt {
                            "claiming it anyway (preempt)"
                        } else {
                            "not claiming it (--no-preempt) until a probe succeeds"
                        }
                    );
                } else {
                    log::debug!("ARP probe failed again ({}x): {e:#}", self.probe_failures);
                }
                Ok(Owner::Unknown)
            }
        }
    }

    /// Carries out one step's actions in order, then logs its transition
    /// and runs the hook.
    fn apply(&mut self, step: Step) -> anyhow::Result<()> {
        let Step {
            actions,
            transition,
        } = step;
        let mut effects = Effects::default();
        // A failed release must not skip the gate that follows it: with the
        // gate open, the backup would keep seeing a live master and never
        // take over from a host that cannot even drop the VIP. The error is
        // returned once every action had its chance.
        let mut first_error = None;
        for action in actions {
            if action == Action::Release {
                if let Err(e) = self.release(&mut effects) {
                    log::error!("{e:#}");
                    first_error.get_or_insert(e);
                }
                continue;
            }
            match action {
                Action::Probe => self.start_probe(),
                Action::RecheckLater => {
                    self.waits.recheck_at = Some(Instant::now() + RECHECK_EVERY)
                }
                Action::Claim => self.claim(&mut effects)?,
                Action::Release => {}
                Action::OpenGate => self.set_gate(false, &mut effects)?,
                Action::CloseGate => self.set_gate(true, &mut effects)?,
                // Held after the log line below: the line says when the
                // handover started, not when the hold ended.
                Action::HoldForHandover => effects.handover_hold = Some(HANDOVER_HOLD),
            }
        }
        if let Some(t) = transition {
            self.report(t, &effects);
        }
        if let Some(hold) = effects.handover_hold {
            self.hold_gate(hold);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Waits `hold` with the gate as it is (closed), or until a second
    /// SIGINT/SIGTERM, and says what the gate dropped meanwhile.
    fn hold_gate(&mut self, hold: Duration) {
        let before = self.gate.counters();
        let started = Instant::now();
        let Waits {
            sigint, sigterm, ..
        } = &mut self.waits;
        let cut_short = self.rt.block_on(async {
            tokio::select! {
                () = tokio::time::sleep(hold) => None,
                _ = sigint.recv() => Some("SIGINT"),
                _ = sigterm.recv() => Some("SIGTERM"),
            }
        });
        let held_ms = started.elapsed().as_millis();
        let dropped = match (before, self.gate.counters()) {
            (Ok((_, before)), Ok((_, after))) => {
                let n = after.saturating_sub(before);
                if n == 0 {
                    "no probes dropped (is a backup probing this host?)".to_owned()
                } else {
                    format!("{n} probes dropped")
                }
            }
            (Err(e), _) | (_, Err(e)) => format!("probe gate counters unreadable ({e:#})"),
        };
        match cut_short {
            None => log::info!("handover: probe gate held closed {held_ms} ms, {dropped}; exiting"),
            Some(name) => log::warn!(
                "{name} again: exiting after holding the probe gate closed only {held_ms} ms of {} ms, \
                 {dropped}; the backup may not have taken over",
                hold.as_millis()
            ),
        }
    }

    fn start_probe(&mut self) {
        let iface = self.iface.clone();
        let task = match self.vip.addr {
            IpAddr::V4(vip) => self
                .rt
                .spawn_blocking(move || arp::probe_owner(&iface, vip, PROBE_TIMEOUT)),
            // No NDP probe: an IPv6 VIP is claimed at once (--no-preempt is
            // refused for IPv6 at start).
            IpAddr::V6(_) => self.rt.spawn(async { Ok(None) }),
        };
        self.waits.probe = Some(task);
    }

    fn claim(&mut self, effects: &mut Effects) -> anyhow::Result<()> {
        let added = self
            .rt
            .block_on(
                self.netlink
                    .add_address(self.ifindex, self.vip.addr, self.vip.prefix),
            )
            .with_context(|| format!("binding {} on {}", self.vip, self.iface))?;
        let bound_ns = clock::now_ns();
        self.held = true;
        // The first announcement right after the bind: the GARP is what
        // moves the clients (and makes an on-claim backup release).
        self.announce();
        let first_garp_ns = clock::now_ns();
        self.garp.burst_started(first_garp_ns);
        self.arm_garp_timer();
        effects.claimed = Some((added, bound_ns, first_garp_ns));
        Ok(())
    }

    fn release(&mut self, effects: &mut Effects) -> anyhow::Result<()> {
        self.garp.stop();
        self.waits.garp_at = None;
        let removed = self
            .rt
            .block_on(self.netlink.del_address(self.ifindex, self.vip.addr, self.vip.prefix))
            .with_context(|| {
                format!(
                    "removing {} from {}; remove it by hand (`vipwatch release --iface {} --vip {}`) \
                     or this host keeps answering for it",
                    self.vip, self.iface, self.iface, self.vip
                )
            })?;
        self.held = false;
        effects.released = Some((removed, clock::now_ns()));
        Ok(())
    }

    fn set_gate(&mut self, closed: bool, effects: &mut Effects) -> anyhow::Result<()> {
        self.gate.set_closed(closed).with_context(|| {
            format!(
                "{} the probe gate on {}",
                if closed { "closing" } else { "opening" },
                self.iface
            )
        })?;
        effects.gate_closed = Some(closed);
        match self.gate.counters() {
            Ok((seen, dropped)) => {
                log::debug!("probe gate: {seen} probes seen, {dropped} dropped so far")
            }
            Err(e) => log::debug!("probe gate counters unreadable: {e:#}"),
        }
        Ok(())
    }

    fn announce(&mut self) {
        if let Err(e) = self.announcer.announce(self.vip.addr) {
            log::warn!(
                "gratuitous ARP for {} on {} failed: {e:#}",
                self.vip,
                self.iface
            );
        }
    }

    fn arm_garp_timer(&mut self) {
        self.waits.garp_at = self.garp.next_ns().map(|due| {
            let now = clock::now_ns();
            Instant::now() + Duration::from_nanos(due.saturating_sub(now))
        });
    }

    /// The one log line (and hook) of a state change. `mono_ns` is the
    /// CLOCK_MONOTONIC time of the address change it made (bind or
    /// release), else of the decision.
    fn report(&self, t: Transition, effects: &Effects) {
        let Transition { from, to, reason } = t;
        let why = self.describe(from, reason);
        let vip = self.vip;
        let iface = &self.iface;
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
            State::Holding => {
                let (added, bound_ns, first_garp_ns) = effects.claimed.unwrap_or_else(|| {
                    let now = clock::now_ns();
                    (false, now, now)
                });
                let note = if added { "" } else { "; it was already bound" };
                log::info!(
                    "state -> HOLDING: bound {vip} on {iface}, first GARP {:+.3} ms (from {}, {why}{note}) \
                     mono_ns={bound_ns}",
                    clock::delta_ms(bound_ns, first_garp_ns),
                    from.name(),
                );
            }
            State::Unhealthy => {
                let (what, at) = effects
                    .released
                    .map_or_else(|| (format!("{vip} not bound"), clock::now_ns()), released);
                log::info!(
                    "state -> UNHEALTHY: {what}{gate} (from {}, {why}) mono_ns={at}",
                    from.name()
                );
            }
            State::Waiting => {
                log::info!(
                    "state -> WAITING: not claiming {vip} (--no-preempt); probing again every {} s (from {}, {why}) \
                     mono_ns={}",
                    RECHECK_EVERY.as_secs(),
                    from.name(),
                    clock::now_ns()
                );
            }
            State::Stopped => {
                let (what, at) = effects
                    .released
                    .map_or_else(|| (format!("{vip} not bound"), clock::now_ns()), released);
                let counters = match self.gate.counters() {
                    Ok((seen, dropped)) => {
                        format!("; probe gate saw {seen} probes, dropped {dropped}")
                    }
                    Err(e) => format!("; probe gate counters unreadable ({e:#})"),
                };
                let handover = match effects.handover_hold {
                    Some(hold) => format!(
                        ", probe gate closed for {} ms so the backup takes over",
                        hold.as_millis()
                    ),
                    None => gate.to_owned(),
                };
                log::info!(
                    "state -> STOPPED: {what}{handover} (from {}, {why}{counters}) mono_ns={at}",
                    from.name()
                );
            }
            State::Starting => log::info!("state -> STARTING (from {}, {why})", from.name()),
        }
        self.hooks
            .notify(to.name(), &vip.to_string(), iface, reason.token());
    }

    fn describe(&self, from: State, reason: Reason) -> String {
        let token = reason.token();
        match reason {
            Reason::Claimed if self.vip.addr.is_ipv6() => {
                format!("{token}: IPv6 VIP, claimed without probing")
            }
            Reason::Claimed => format!("{token}: nobody else answers for {}", self.vip.addr),
            Reason::Preempted(mac) => format!("{token}: taken from {}", mac_str(mac)),
            Reason::VipInUse(Some(mac)) => {
                format!("{token}: {} answers for {}", mac_str(mac), self.vip.addr)
            }
            Reason::VipInUse(None) => {
                format!("{token}: the ARP probe failed, so the VIP may be in use")
            }
            Reason::HealthFailed => {
                let last = self.health_failure.as_deref().unwrap_or("no detail");
                if from == State::Starting {
                    format!("{token}: the first check failed: {last}")
                } else {
                    format!(
                        "{token}: {} consecutive failed checks, last: {last}",
                        self.health_fall
                    )
                }
            }
            Reason::HealthRecovered => {
                format!("{token}: {} consecutive good checks", self.health_rise)
            }
            Reason::Shutdown => token.to_owned(),
        }
    }
}

impl Drop for Daemon<'_> {
    /// Whatever made us stop (an error, a panic), do not leave the VIP
    /// bound: a stopped master that still answers for it fights the backup.
    /// No handover hold on this path: the gate detaches with the rest of
    /// the daemon (after this, by field order), so the backup keeps seeing
    /// the host alive, as it does when the daemon is killed.
    fn drop(&mut self) {
        if let Some(feed) = self.waits.health.as_ref() {
            // Dropping the task kills a health command still running.
            feed.task.abort();
        }
        if self.held {
            self.garp.stop();
            let removed = self.rt.block_on(self.netlink.del_address(
                self.ifindex,
                self.vip.addr,
                self.vip.prefix,
            ));
            let at = clock::now_ns();
            match removed {
                Ok(true) => log::warn!(
                    "stopping on an error: released {} from {} mono_ns={at}",
                    self.vip,
                    self.iface
                ),
                Ok(false) => log::warn!(
                    "stopping on an error: {} was already gone from {}",
                    self.vip,
                    self.iface
                ),
                Err(e) => log::error!(
                    "stopping on an error, and could not remove {} from {} ({e:#}); remove it with \
                     `vipwatch release --iface {} --vip {}`",
                    self.vip,
                    self.iface,
                    self.iface,
                    self.vip
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OTHER: [u8; 6] = [0x02, 0, 0x5e, 0, 0x53, 0x99];

    fn step(actions: &[Action], t: Option<(State, State, Reason)>) -> Step {
        Step {
            actions: actions.to_vec(),
            transition: t.map(|(from, to, reason)| Transition { from, to, reason }),
        }
    }

    #[test]
    fn without_health_check_probe_then_claim() {
        let mut m = Machine::new(true, false);
        assert_eq!(m.start(), step(&[Action::Probe], None));
        assert_eq!(
            m.handle(Event::Probed(Owner::Nobody)),
            step(
                &[Action::Claim],
                Some((State::Starting, State::Holding, Reason::Claimed))
            )
        );
        // A planned handover: release first (the backup must never bind
        // the VIP while we answer for it), then close the gate and hold it.
        assert_eq!(
            m.handle(Event::Shutdown),
            step(
                &[Action::Release, Action::CloseGate, Action::HoldForHandover],
                Some((State::Holding, State::Stopped, Reason::Shutdown))
            )
        );
        assert_eq!(
            m.handle(Event::Probed(Owner::Nobody)),
            Step::default(),
            "nothing after stop"
        );
        assert_eq!(m.handle(Event::Shutdown), Step::default(), "stops once");
    }

    #[test]
    fn preempt_claims_a_vip_someone_else_answers() {
        let mut m = Machine::new(true, false);
        m.start();
        assert_eq!(
            m.handle(Event::Probed(Owner::Host(OTHER))),
            step(
                &[Action::Claim],
                Some((State::Starting, State::Holding, Reason::Preempted(OTHER)))
            )
        );
        let mut m = Machine::new(true, false);
        m.start();
        assert_eq!(
            m.handle(Event::Probed(Owner::Unknown)),
            step(
                &[Action::Claim],
                Some((State::Starting, State::Holding, Reason::Claimed))
            )
        );
    }

    #[test]
    fn no_preempt_waits_until_the_vip_is_free() {
        let mut m = Machine::new(false, false);
        m.start();
        assert_eq!(
            m.handle(Event::Probed(Owner::Host(OTHER))),
            step(
                &[Action::RecheckLater],
                Some((
                    State::Starting,
                    State::Waiting,
                    Reason::VipInUse(Some(OTHER))
                ))
            )
        );
        assert_eq!(m.handle(Event::RecheckDue), step(&[Action::Probe], None));
        // Still taken: keep waiting, quietly.
        assert_eq!(
            m.handle(Event::Probed(Owner::Host(OTHER))),
            step(&[Action::RecheckLater], None)
        );
        m.handle(Event::RecheckDue);
        // A failed probe cannot prove the VIP free.
        assert_eq!(
            m.handle(Event::Probed(Owner::Unknown)),
            step(&[Action::RecheckLater], None)
        );
        m.handle(Event::RecheckDue);
        assert_eq!(
            m.handle(Event::Probed(Owner::Nobody)),
            step(
                &[Action::Claim],
                Some((State::Waiting, State::Holding, Reason::Claimed))
            )
        );
        // Shutdown while waiting releases nothing, but still hands over:
        // the backup must not stand by for a master that is going away.
        let mut m = Machine::new(false, false);
        m.start();
        m.handle(Event::Probed(Owner::Host(OTHER)));
        assert_eq!(
            m.handle(Event::Shutdown),
            step(
                &[Action::CloseGate, Action::HoldForHandover],
                Some((State::Waiting, State::Stopped, Reason::Shutdown))
            )
        );
    }

    #[test]
    fn nothing_is_claimed_before_the_first_health_verdict() {
        let mut m = Machine::new(true, true);
        assert_eq!(m.start(), Step::default());
        assert_eq!(m.handle(Event::RecheckDue), Step::default());
        assert_eq!(
            m.handle(Event::Health(Verdict::Healthy)),
            step(&[Action::Probe], None)
        );
        assert_eq!(
            m.handle(Event::Probed(Owner::Nobody)),
            step(
                &[Action::Claim],
                Some((State::Starting, State::Holding, Reason::Claimed))
            )
        );
    }

    #[test]
    fn unhealthy_at_start_closes_the_gate_and_binds_nothing() {
        let mut m = Machine::new(true, true);
        m.start();
        assert_eq!(
            m.handle(Event::Health(Verdict::Unhealthy)),
            step(
                &[Action::Release, Action::CloseGate],
                Some((State::Starting, State::Unhealthy, Reason::HealthFailed))
            )
        );
    }

    #[test]
    fn failing_health_releases_before_closing_the_gate() {
        let mut m = Machine::new(true, true);
        m.handle(Event::Health(Verdict::Healthy));
        m.handle(Event::Probed(Owner::Nobody));
        assert_eq!(
            m.handle(Event::Health(Verdict::Unhealthy)),
            step(
                &[Action::Release, Action::CloseGate],
                Some((State::Holding, State::Unhealthy, Reason::HealthFailed))
            )
        );
        // Recovery: gate first, then the probe, then the claim.
        assert_eq!(
            m.handle(Event::Health(Verdict::Healthy)),
            step(&[Action::OpenGate, Action::Probe], None)
        );
        assert_eq!(
            m.handle(Event::Probed(Owner::Host(OTHER))),
            step(
                &[Action::Claim],
                Some((State::Unhealthy, State::Holding, Reason::HealthRecovered))
            )
        );
        // Shutdown from HOLDING releases, then closes the opened gate.
        assert_eq!(
            m.handle(Event::Shutdown),
            step(
                &[Action::Release, Action::CloseGate, Action::HoldForHandover],
                Some((State::Holding, State::Stopped, Reason::Shutdown))
            )
        );
    }

    #[test]
    fn a_relapse_during_the_recovery_probe_closes_the_gate_again() {
        let mut m = Machine::new(true, true);
        m.handle(Event::Health(Verdict::Unhealthy));
        assert_eq!(
            m.handle(Event::Health(Verdict::Healthy)),
            step(&[Action::OpenGate, Action::Probe], None)
        );
        assert_eq!(
            m.handle(Event::Health(Verdict::Unhealthy)),
            step(&[Action::CloseGate], None)
        );
        // The probe that was out comes back stale: ignored.
        assert_eq!(m.handle(Event::Probed(Owner::Nobody)), Step::default());
        assert_eq!(m.state(), State::Unhealthy);
        // The next recovery probes again.
        assert_eq!(
            m.handle(Event::Health(Verdict::Healthy)),
            step(&[Action::OpenGate, Action::Probe], None)
        );
    }

    #[test]
    fn unhealthy_before_the_first_probe_returns_is_not_claimed() {
        let mut m = Machine::new(true, true);
        m.handle(Event::Health(Verdict::Healthy));
        assert_eq!(
            m.handle(Event::Health(Verdict::Unhealthy)),
            step(
                &[Action::Release, Action::CloseGate],
                Some((State::Starting, State::Unhealthy, Reason::HealthFailed))
            )
        );
        assert_eq!(m.handle(Event::Probed(Owner::Nobody)), Step::default());
    }

    #[test]
    fn no_preempt_recovery_waits_with_the_gate_open() {
        let mut m = Machine::new(false, true);
        m.handle(Event::Health(Verdict::Healthy));
        m.handle(Event::Probed(Owner::Nobody));
        m.handle(Event::Health(Verdict::Unhealthy));
        assert_eq!(
            m.handle(Event::Health(Verdict::Healthy)),
            step(&[Action::OpenGate, Action::Probe], None)
        );
        // The backup took the VIP while we were unhealthy: leave it there.
        assert_eq!(
            m.handle(Event::Probed(Owner::Host(OTHER))),
            step(
                &[Action::RecheckLater],
                Some((
                    State::Unhealthy,
                    State::Waiting,
                    Reason::VipInUse(Some(OTHER))
                ))
            )
        );
        // Failing while waiting: nothing to release, gate closes.
        assert_eq!(
            m.handle(Event::Health(Verdict::Unhealthy)),
            step(
                &[Action::CloseGate],
                Some((State::Waiting, State::Unhealthy, Reason::HealthFailed))
            )
        );
        // A recheck that fires while unhealthy does nothing.
        assert_eq!(m.handle(Event::RecheckDue), Step::default());
    }

    #[test]
    fn shutdown_hands_over_from_every_state() {
        let holding = || {
            let mut m = Machine::new(true, false);
            m.start();
            m.handle(Event::Probed(Owner::Nobody));
            m
        };
        let unhealthy = || {
            let mut m = Machine::new(true, true);
            m.handle(Event::Health(Verdict::Unhealthy));
            m
        };
        let table: [(&str, Machine, State, &[Action]); 5] = [
            (
                "starting, no check",
                Machine::new(true, false),
                State::Starting,
                &[Action::CloseGate, Action::HoldForHandover],
            ),
            (
                "starting, before the first verdict",
                Machine::new(true, true),
                State::Starting,
                &[Action::CloseGate, Action::HoldForHandover],
            ),
            (
                "holding",
                holding(),
                State::Holding,
                &[Action::Release, Action::CloseGate, Action::HoldForHandover],
            ),
            // The gate is closed already: it stays closed for the hold too,
            // in case the backup has not noticed yet.
            (
                "unhealthy",
                unhealthy(),
                State::Unhealthy,
                &[Action::HoldForHandover],
            ),
            (
                "unhealthy, recovering (gate reopened, probe out)",
                {
                    let mut m = unhealthy();
                    m.handle(Event::Health(Verdict::Healthy));
                    m
                },
                State::Unhealthy,
                &[Action::CloseGate, Action::HoldForHandover],
            ),
        ];
        for (name, mut m, from, actions) in table {
            assert_eq!(
                m.handle(Event::Shutdown),
                step(actions, Some((from, State::Stopped, Reason::Shutdown))),
                "{name}"
            );
            assert_eq!(m.state(), State::Stopped, "{name}");
        }
    }

    #[test]
    fn one_probe_at_a_time() {
        let mut m = Machine::new(false, false);
        m.start();
        m.handle(Event::Probed(Owner::Host(OTHER)));
        assert_eq!(m.handle(Event::RecheckDue), step(&[Action::Probe], None));
        assert_eq!(m.handle(Event::RecheckDue), Step::default());
    }

    #[test]
    fn repeated_verdicts_change_nothing() {
        let mut m = Machine::new(true, true);
        m.handle(Event::Health(Verdict::Healthy));
        assert_eq!(m.handle(Event::Health(Verdict::Healthy)), Step::default());
        m.handle(Event::Probed(Owner::Nobody));
        m.handle(Event::Health(Verdict::Unhealthy));
        assert_eq!(m.handle(Event::Health(Verdict::Unhealthy)), Step::default());
    }

    #[test]
    fn hook_reasons_are_stable_tokens() {
        let table = [
            (Reason::Claimed, "claimed"),
            (Reason::Preempted(OTHER), "preempted"),
            (Reason::VipInUse(None), "vip-in-use"),
            (Reason::HealthFailed, "health-failed"),
            (Reason::HealthRecovered, "health-recovered"),
            (Reason::Shutdown, "shutdown"),
        ];
        for (reason, token) in table {
            assert_eq!(reason.token(), token);
        }
        let names: Vec<_> = [
            State::Waiting,
            State::Holding,
            State::Unhealthy,
            State::Stopped,
        ]
        .iter()
        .map(|s| s.name())
        .collect();
        assert_eq!(names, ["WAITING", "HOLDING", "UNHEALTHY", "STOPPED"]);
    }
}
