//! The master instance: a pure state machine. It holds the VIP on this host
//! — the classic `master.sh` (`ip addr add` + `arping -U`) — behind an
//! optional service health gate.
//!
//! Same shape as the backup's ([`crate::backup::Machine`]): timestamped
//! [`Event`]s in, [`Action`]s that carry their data out, and
//! [`Machine::next_deadline`]. Every timed rule lives here:
//!
//! * Start-up asks who answers for the VIP with an RFC 5227 §2.1.1 ARP probe
//!   ([`Action::Solicit`]), sent again after [`PROBE_RESEND`] if nobody
//!   spoke up, and decided after [`PROBE_WINDOW`]; the answer is a claim
//!   the XDP program reports ([`Event::Claim`]). By default the master
//!   claims the VIP anyway (preempt: its gratuitous ARP makes an on-claim
//!   backup release); with `no_preempt` it waits, and asks again every
//!   [`RECHECK_EVERY`].
//! * A claim binds the VIP and announces it (RFC 5227 §3 / RFC 5944 §4.6
//!   gratuitous ARP, RFC 4861 §7.2.6 unsolicited NA for IPv6): a burst of
//!   `garp_count`, then every `garp_refresh` if set.
//! * Health: `fall` failed checks in a row release the VIP and close the
//!   XDP probe gate (the backup's probes are dropped, so it sees this master
//!   dead and takes over); `rise` good ones open the gate and claim again.
//! * Stopping is a planned handover (keepalived sends priority 0 when it
//!   stops, RFC 5798 §6.4.3): release, close the gate, and keep it closed
//!   for [`HANDOVER_HOLD`] so the backup notices; then [`Action::Exit`].
//!   Without it the host, still up, would keep answering the probes and
//!   nobody would serve the VIP.
//! * A bind or unbind that failed is retried every 100 ms.
//! * The kernel's view wins: a VIP removed under a holding master is bound
//!   again; a lost carrier releases the VIP ([`State::Fault`], keepalived's
//!   FAULT) and its return claims again by the preempt rule, so a master
//!   that comes back announces itself instead of waiting to be found.

use std::time::Duration;

use crate::{
    arp::GarpSchedule,
    backup::RETRY_NS,
    config::{self, Garp},
    health::{Hysteresis, Verdict},
    holder::Holder,
};

/// How long the ARP probe listens for another owner of the VIP.
pub(crate) const PROBE_WINDOW: Duration = Duration::from_millis(200);
/// When the probe is sent once more if nobody answered: one lost frame
/// must not make us take an address somebody holds.
pub(crate) const PROBE_RESEND: Duration = Duration::from_millis(100);
/// How often a `no_preempt` master waiting for the VIP probes again.
pub(crate) const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping master keeps the probe gate closed before it exits
/// (exiting clears its slot, and the kernel answers the probes again). It
/// must exceed the backup's `dead_after` (default 10 ms) plus a few probe
/// intervals, or the backup still sees this host alive and never takes
/// over; 200 ms covers the default with a wide margin. A second stop
/// request cuts it short.
pub(crate) const HANDOVER_HOLD: Duration = Duration::from_millis(200);
/// Conflicting claims logged while holding.
const CONFLICTS_LOGGED: u32 = 10;

const fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// What the master is doing. The names are what logs and hooks show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// Waiting for the first health verdict or the first ARP probe.
    Starting,
    /// Healthy, but another host answers for the VIP (`no_preempt`).
    Waiting,
    /// The VIP is bound here and announced.
    Holding,
    /// The service failed its checks: VIP released, probe gate closed.
    Unhealthy,
    /// Shut down: VIP released, probe gate closed for [`HANDOVER_HOLD`].
    Stopped,
    /// The interface lost its carrier: VIP released until it returns.
    Fault,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Starting => "STARTING",
            Self::Waiting => "WAITING",
            Self::Holding => "HOLDING",
            Self::Unhealthy => "UNHEALTHY",
            Self::Stopped => "STOPPED",
            Self::Fault => "FAULT",
        }
    }
}

/// Who answered the ARP probe for the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    Nobody,
    Host([u8; 6]),
    /// The probe could not be sent; nobody can say.
    Unknown,
}

/// Validated settings of one master instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) preempt: bool,
    /// `Some((fall, rise))` when a health check is configured: nothing is
    /// claimed before its first verdict.
    pub(crate) health: Option<(u32, u32)>,
    pub(crate) garp: Garp,
    pub(crate) conn: config::Conn,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// [`Machine::next_deadline`] was reached.
    Tick {
        now_ns: u64,
    },
    /// One health check finished: `Err` says why the service is unhealthy.
    Health {
        at_ns: u64,
        result: Result<(), String>,
    },
    /// An ARP packet with sender IP = the VIP from a MAC not ours.
    Claim {
        at_ns: u64,
        mac: [u8; 6],
    },
    /// [`Action::Solicit`] could not be sent.
    SolicitFailed {
        at_ns: u64,
    },
    /// [`Action::TakeOver`] done: bound at `bound_ns`, announced at
    /// `first_garp_ns`.
    Bound {
        bound_ns: u64,
        first_garp_ns: u64,
    },
    BindFailed {
        at_ns: u64,
    },
    /// [`Action::Release`] done (`removed`: the address was there).
    Unbound {
        at_ns: u64,
    },
    UnbindFailed {
        at_ns: u64,
    },
    /// The instance is stopping (signal, reload). A second one during the
    /// handover hold cuts it short.
    Shutdown {
        at_ns: u64,
    },
    /// The backup handed the VIP back to us (its sync said so): kick the
    /// connections it had.
    PeerReleased {
        at_ns: u64,
    },
    /// The `on_change` hook of a state change finished.
    HookDone,
    /// The interface's carrier came (`up`) or went.
    Carrier {
        at_ns: u64,
        up: bool,
    },
    /// The kernel's view of the VIP on our interface, as the shell found it
    /// after an address notification.
    Address {
        at_ns: u64,
        present: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send an RFC 5227 ARP probe for the VIP; report
    /// [`Event::SolicitFailed`] if it could not be sent.
    Solicit,
    /// Bind the VIP, then announce it at once; report [`Event::Bound`] or
    /// [`Event::BindFailed`].
    TakeOver,
    /// Remove the VIP; report [`Event::Unbound`] or [`Event::UnbindFailed`].
    Release,
    /// Announce the VIP, as scheduled while holding.
    Announce,
    /// Let the backup's probes through: it sees this master alive.
    OpenGate,
    /// Drop the backup's probes: it sees this master dead and takes over.
    CloseGate,
    /// Kick the connections the backup had (learned from its syncs), once.
    Kick,
    /// Send the backup our connection table's changes (`snapshot`: all of
    /// it), while we hold the VIP.
    Sync {
        snapshot: bool,
    },
    /// Something worth a log line that is not a state change.
    Note(Note),
    Notify(Transition),
    /// The handover is over (`cut_short`: by a second stop request): the
    /// instance may go.
    Exit {
        cut_short: bool,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// A check failed without changing the verdict (yet).
    HealthCheck {
        result: Result<(), String>,
        against: u32,
        needed: u32,
    },
    /// Another host claims the VIP while we hold it.
    Conflict { mac: [u8; 6] },
    /// A bind or unbind that failed earlier now asked again.
    Retry { bind: bool },
    /// The VIP was removed from the interface while we hold it: bound again.
    VipRemoved,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Nobody else answered for the VIP (or the probe could not tell and
    /// we preempt anyway).
    Claimed,
    /// Another host answered for the VIP and we took it (preempt).
    Preempted([u8; 6]),
    /// Another host answers for the VIP and `no_preempt` is set (`None`:
    /// the probe failed, so we cannot know it is free).
    VipInUse(Option<[u8; 6]>),
    /// `fall` consecutive failed checks (or the first check), with the last
    /// failure.
    HealthFailed {
        first: bool,
        fall: u32,
        last: String,
    },
    /// `rise` consecutive good checks after being unhealthy.
    HealthRecovered {
        rise: u32,
    },
    Shutdown,
    /// The interface lost its carrier.
    CarrierLost,
}

impl Reason {
    /// The token hooks get.
    pub(crate) fn token(&self) -> &'static str {
        match self {
            Self::Claimed => "claimed",
            Self::Preempted(_) => "preempted",
            Self::VipInUse(_) => "vip-in-use",
            Self::HealthFailed { .. } => "health-failed",
            Self::HealthRecovered { .. } => "health-recovered",
            Self::Shutdown => "shutdown",
            Self::CarrierLost => "carrier-lost",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: State,
    pub(crate) to: State,
    pub(crate) reason: Reason,
    pub(crate) at_ns: u64,
}

/// An ARP probe that is out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probe {
    started_ns: u64,
    resent: bool,
}

/// The master's decisions. Pure: no clock, no I/O.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    settings: Settings,
    state: State,
    /// The current health verdict (always healthy without a check).
    healthy: bool,
    hysteresis: Option<Hysteresis>,
    last_failure: Option<String>,
    probe: Option<Probe>,
    recheck_at: Option<u64>,
    /// Whether the gate drops probes (it starts open).
    gate_closed: bool,
    /// The claim being prepared follows a recovery (for its reason).
    recovering: bool,
    garp: GarpSchedule,
    /// The VIP is bound by us as far as we know; `None` after a failure.
    bound: Option<bool>,
    retry_at: Option<u64>,
    hold_until: Option<u64>,
    conflicts_logged: u32,
    holder: Holder,
    /// The interface has its carrier (as far as we were told).
    carrier: bool,
}

impl Machine {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            state: State::Starting,
            healthy: settings.health.is_none(),
            hysteresis: settings
                .health
                .map(|(fall, rise)| Hysteresis::new(fall, rise)),
            last_failure: None,
            probe: None,
            recheck_at: None,
            gate_closed: false,
            recovering: false,
            garp: GarpSchedule::new(&settings.garp),
            bound: Some(false),
            retry_at: None,
            hold_until: None,
            conflicts_logged: 0,
            holder: Holder::new(&settings.conn),
            carrier: true,
        }
    }

    pub(crate) fn state(&self) -> State {
        self.state
    }

    /// The health verdict after fall/rise: `None` without a check or
    /// before its first result.
    pub(crate) fn verdict(&self) -> Option<bool> {
        self.hysteresis
            .as_ref()
            .and_then(Hysteresis::verdict)
            .map(|v| v == Verdict::Healthy)
    }

    #[cfg(test)]
    pub(crate) fn gate_closed(&self) -> bool {
        self.gate_closed
    }

    /// The first actions: probe at once without a health check, else wait
    /// for the first verdict.
    pub(crate) fn start(&mut self, now_ns: u64) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Starting && self.healthy {
            self.begin_probe(now_ns, &mut out);
        }
        out
    }

    /// When the shell must feed [`Event::Tick`]; `u64::MAX` when nothing
    /// is timed.
    pub(crate) fn next_deadline(&self) -> u64 {
        let probe = self.probe.map(|p| {
            p.started_ns
                + if p.resent {
                    ns(PROBE_WINDOW)
                } else {
                    ns(PROBE_RESEND)
                }
        });
        [
            probe,
            self.recheck_at,
            self.garp.next_ns(),
            self.retry_at,
            self.hold_until,
            self.holder.next_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(u64::MAX)
    }

    /// The one function that changes state.
    pub(crate) fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Stopped {
            match event {
                Event::Tick { now_ns } if self.hold_until.is_some_and(|t| now_ns >= t) => {
                    self.hold_until = None;
                    out.push(Action::Exit { cut_short: false });
                }
                Event::Shutdown { .. } if self.hold_until.is_some() => {
                    self.hold_until = None;
                    out.push(Action::Exit { cut_short: true });
                }
                Event::Unbound { .. } => self.bound = Some(false),
                Event::UnbindFailed { .. } => self.bound = None,
                _ => {}
            }
            return out;
        }
        match event {
            Event::Tick { now_ns } => self.tick(now_ns, &mut out),
            Event::Health { at_ns, result } => self.health(at_ns, result, &mut out),
            Event::Claim { at_ns, mac } => {
                if self.probe.is_some() {
                    self.probed(at_ns, Owner::Host(mac), &mut out);
                } else if self.state == State::Holding && self.conflicts_logged < CONFLICTS_LOGGED {
                    self.conflicts_logged += 1;
                    out.push(Action::Note(Note::Conflict { mac }));
                }
            }
            Event::SolicitFailed { at_ns } => {
                if self.probe.is_some() {
                    self.probed(at_ns, Owner::Unknown, &mut out);
                }
            }
            Event::Bound { first_garp_ns, .. } => {
                self.bound = Some(true);
                self.retry_at = None;
                if self.state == State::Holding {
                    self.garp.burst_started(first_garp_ns);
                    if self.holder.bound(first_garp_ns) {
                        out.push(Action::Kick);
                    }
                } else {
                    out.push(Action::Release);
                }
            }
            Event::PeerReleased { .. } => {
                // The backup gave the VIP back to us (after a cable pull or
                // a freeze we never released it): its clients come here now.
                if self.state == State::Holding && self.bound == Some(true) {
                    out.push(Action::Kick);
                }
            }
            Event::HookDone => {
                if self.holder.hook_done() && self.state == State::Holding {
                    out.push(Action::Kick);
                }
            }
            Event::BindFailed { at_ns } | Event::UnbindFailed { at_ns } => {
                self.bound = None;
                self.retry_at = Some(at_ns + RETRY_NS);
            }
            Event::Unbound { .. } => {
                self.bound = Some(false);
                self.retry_at = None;
            }
            Event::Carrier { at_ns, up } => self.carrier(at_ns, up, &mut out),
            Event::Address { present, .. } => {
                if !present && self.state == State::Holding && self.bound == Some(true) {
                    // Someone removed it (`ip address del`, a script, the
                    // host's primary address changing): we still hold it.
                    out.push(Action::Note(Note::VipRemoved));
                    self.bound = None;
                    out.push(Action::TakeOver);
                }
            }
            Event::Shutdown { at_ns } => {
                // A planned handover: release, then (as for a failed health
                // check, and for the same reason) close the gate, and hold
                // it closed until the backup has noticed. Whatever the
                // state: a master stopped before it claimed the VIP must not
                // keep the backup standing by for a VIP nobody serves.
                self.probe = None;
                self.recheck_at = None;
                self.retry_at = None;
                if self.bound != Some(false) {
                    self.release(&mut out);
                }
                self.close_gate(&mut out);
                self.hold_until = Some(at_ns + ns(HANDOVER_HOLD));
                self.go(State::Stopped, Reason::Shutdown, at_ns, &mut out);
            }
        }
        out
    }

    fn tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if let Some(p) = self.probe {
            if now_ns >= p.started_ns + ns(PROBE_WINDOW) {
                self.probed(now_ns, Owner::Nobody, out);
            } else if !p.resent && now_ns >= p.started_ns + ns(PROBE_RESEND) {
                self.probe = Some(Probe { resent: true, ..p });
                out.push(Action::Solicit);
            }
        }
        if let Some(at) = self.recheck_at
            && now_ns >= at
        {
            self.recheck_at = None;
            if self.state == State::Waiting && self.healthy {
                self.begin_probe(now_ns, out);
            }
        }
        if let Some(due) = self.garp.next_ns()
            && now_ns >= due
        {
            self.garp.sent(now_ns);
            out.push(Action::Announce);
        }
        if self.state == State::Holding {
            let due = self.holder.tick(now_ns);
            if due.kick {
                out.push(Action::Kick);
            }
            if let Some(snapshot) = due.sync {
                out.push(Action::Sync { snapshot });
            }
        }
        if let Some(at) = self.retry_at
            && now_ns >= at
        {
            self.retry_at = None;
            let want = self.state == State::Holding;
            out.push(Action::Note(Note::Retry { bind: want }));
            out.push(if want {
                Action::TakeOver
            } else {
                Action::Release
            });
        }
    }

    fn carrier(&mut self, at_ns: u64, up: bool, out: &mut Vec<Action>) {
        if up == self.carrier {
            return;
        }
        self.carrier = up;
        if !up {
            // Nobody can reach us through this link: holding the VIP only
            // makes us fight the backup when the link returns.
            if !matches!(
                self.state,
                State::Starting | State::Waiting | State::Holding
            ) {
                return;
            }
            self.probe = None;
            self.recheck_at = None;
            if self.bound != Some(false) {
                self.release(out);
            }
            self.go(State::Fault, Reason::CarrierLost, at_ns, out);
            return;
        }
        // Back: ask who holds the VIP, then claim by the preempt rule (the
        // claim's gratuitous ARP tells the backup and the clients).
        if matches!(self.state, State::Fault | State::Unhealthy) && self.healthy {
            self.begin_probe(at_ns, out);
        }
    }

    fn health(&mut self, at_ns: u64, result: Result<(), String>, out: &mut Vec<Action>) {
        let Some(h) = self.hysteresis.as_mut() else {
            return;
        };
        let first = h.verdict().is_none();
        let changed = h.record(result.is_ok());
        if let Err(why) = &result {
            self.last_failure = Some(why.clone());
        }
        match changed {
            Some(Verdict::Healthy) => self.healthy_now(at_ns, out),
            Some(Verdict::Unhealthy) => self.unhealthy_now(at_ns, first, out),
            None => {
                let (against, needed) = h.progress();
                out.push(Action::Note(Note::HealthCheck {
                    result,
                    against,
                    needed,
                }));
            }
        }
    }

    fn healthy_now(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        self.healthy = true;
        if self.state == State::Unhealthy {
            // Gate first: once the claim's GARP makes the backup release
            // the VIP, it must already see this master alive, or it would
            // take the VIP right back.
            self.recovering = true;
            self.open_gate(out);
        }
        if matches!(self.state, State::Starting | State::Unhealthy) && self.carrier {
            self.begin_probe(now_ns, out);
        }
    }

    fn unhealthy_now(&mut self, at_ns: u64, first: bool, out: &mut Vec<Action>) {
        self.healthy = false;
        self.recovering = false;
        self.probe = None;
        self.recheck_at = None;
        // At start the VIP may be left over from a daemon that died:
        // release it too (removing an absent address is a no-op). Release
        // before closing the gate: the backup must never bind the VIP while
        // this host still answers for it.
        if matches!(self.state, State::Starting | State::Holding) {
            self.release(out);
        }
        self.close_gate(out);
        if self.state == State::Unhealthy {
            // A recovery that failed again before its claim: just re-close.
            return;
        }
        let fall = self.settings.health.map_or(1, |(fall, _)| fall);
        let last = self
            .last_failure
            .clone()
            .unwrap_or_else(|| "no detail".into());
        self.go(
            State::Unhealthy,
            Reason::HealthFailed { first, fall, last },
            at_ns,
            out,
        );
    }

    fn probed(&mut self, at_ns: u64, owner: Owner, out: &mut Vec<Action>) {
        self.probe = None;
        if !self.healthy
            || !self.carrier
            || !matches!(
                self.state,
                State::Starting | State::Waiting | State::Unhealthy | State::Fault
            )
        {
            return;
        }
        let reason = match (self.recovering, owner) {
            (_, Owner::Host(_) | Owner::Unknown) if !self.settings.preempt => {
                self.recheck_at = Some(at_ns + ns(RECHECK_EVERY));
                if self.state == State::Waiting {
                    return;
                }
                self.recovering = false;
                let mac = match owner {
                    Owner::Host(mac) => Some(mac),
                    Owner::Nobody | Owner::Unknown => None,
                };
                self.go(State::Waiting, Reason::VipInUse(mac), at_ns, out);
                return;
            }
            (true, _) => Reason::HealthRecovered {
                rise: self.settings.health.map_or(1, |(_, rise)| rise),
            },
            (false, Owner::Host(mac)) => Reason::Preempted(mac),
            (false, Owner::Nobody | Owner::Unknown) => Reason::Claimed,
        };
        self.recovering = false;
        self.conflicts_logged = 0;
        out.push(Action::TakeOver);
        self.go(State::Holding, reason, at_ns, out);
    }

    fn begin_probe(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        if self.probe.is_some() {
            return;
        }
        self.probe = Some(Probe {
            started_ns: now_ns,
            resent: false,
        });
        out.push(Action::Solicit);
    }

    fn release(&mut self, out: &mut Vec<Action>) {
        self.garp.stop();
        self.holder.released();
        out.push(Action::Release);
    }

    fn open_gate(&mut self, out: &mut Vec<Action>) {
        if self.gate_closed {
            self.gate_closed = false;
            out.push(Action::OpenGate);
        }
    }

    fn close_gate(&mut self, out: &mut Vec<Action>) {
        if !self.gate_closed {
            self.gate_closed = true;
            out.push(Action::CloseGate);
        }
    }

    fn go(&mut self, to: State, reason: Reason, at_ns: u64, out: &mut Vec<Action>) {
        let from = self.state;
        self.state = to;
        self.holder.notified();
        out.push(Action::Notify(Transition {
            from,
            to,
            reason,
            at_ns,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_000 * MS;
    const OTHER: [u8; 6] = [0x02, 0, 0x5e, 0, 0x53, 0x99];
    const GARP: Garp = Garp {
        count: 3,
        interval_ns: 10 * MS,
        refresh_ns: None,
    };

    fn machine(preempt: bool, health: bool) -> Machine {
        Machine::new(Settings {
            preempt,
            health: health.then_some((2, 3)),
            garp: GARP,
            conn: config::Conn::default(),
        })
    }

    fn transition(actions: &[Action]) -> Option<(State, State, Reason)> {
        actions.iter().find_map(|a| match a {
            Action::Notify(t) => Some((t.from, t.to, t.reason.clone())),
            _ => None,
        })
    }

    fn effects(actions: &[Action]) -> Vec<Action> {
        actions
            .iter()
            .filter(|a| !matches!(a, Action::Notify(_) | Action::Note(_)))
            .cloned()
            .collect()
    }

    fn ok(m: &mut Machine, at: u64) -> Vec<Action> {
        m.handle(Event::Health {
            at_ns: at,
            result: Ok(()),
        })
    }

    fn fail(m: &mut Machine, at: u64) -> Vec<Action> {
        m.handle(Event::Health {
            at_ns: at,
            result: Err("exit 1".into()),
        })
    }

    /// Lets the probe window run out with nobody answering.
    fn nobody(m: &mut Machine, from: u64) -> Vec<Action> {
        let mut all = m.handle(Event::Tick {
            now_ns: from + ns(PROBE_RESEND),
        });
        all.extend(m.handle(Event::Tick {
            now_ns: from + ns(PROBE_WINDOW),
        }));
        all
    }

    fn holding() -> Machine {
        let mut m = Machine::new(Settings {
            preempt: true,
            health: None,
            garp: GARP,
            // The kick's syncs have their own test.
            conn: config::Conn {
                kick: crate::kick::Mode::Off,
                ..config::Conn::default()
            },
        });
        m.start(T0);
        nobody(&mut m, T0);
        m.handle(Event::Bound {
            bound_ns: T0 + 200 * MS,
            first_garp_ns: T0 + 200 * MS,
        });
        assert_eq!(m.state(), State::Holding);
        m
    }

    #[test]
    fn without_health_check_probe_twice_then_claim_after_the_window() {
        let mut m = machine(true, false);
        assert_eq!(m.start(T0), vec![Action::Solicit]);
        assert_eq!(m.next_deadline(), T0 + ns(PROBE_RESEND));
        assert!(
            m.handle(Event::Tick {
                now_ns: T0 + ns(PROBE_RESEND) - 1
            })
            .is_empty(),
            "not one ns early"
        );
        assert_eq!(
            m.handle(Event::Tick {
                now_ns: T0 + ns(PROBE_RESEND)
            }),
            vec![Action::Solicit],
            "sent once more"
        );
        assert_eq!(m.next_deadline(), T0 + ns(PROBE_WINDOW));
        let actions = m.handle(Event::Tick {
            now_ns: T0 + ns(PROBE_WINDOW),
        });
        assert_eq!(effects(&actions), vec![Action::TakeOver]);
        assert_eq!(
            transition(&actions),
            Some((State::Starting, State::Holding, Reason::Claimed))
        );
    }

    #[test]
    fn an_answer_ends_the_window_at_once() {
        let mut m = machine(true, false);
        m.start(T0);
        let actions = m.handle(Event::Claim {
            at_ns: T0 + MS,
            mac: OTHER,
        });
        assert_eq!(effects(&actions), vec![Action::TakeOver]);
        assert_eq!(
            transition(&actions),
            Some((State::Starting, State::Holding, Reason::Preempted(OTHER)))
        );
        // A probe that could not be sent: preempt claims anyway.
        let mut m = machine(true, false);
        m.start(T0);
        let actions = m.handle(Event::SolicitFailed { at_ns: T0 });
        assert_eq!(
            transition(&actions),
            Some((State::Starting, State::Holding, Reason::Claimed))
        );
    }

    #[test]
    fn holding_announces_the_burst_then_stops() {
        let mut m = holding();
        let t = T0 + 200 * MS;
        assert_eq!(m.next_deadline(), t + 10 * MS);
        assert_eq!(
            m.handle(Event::Tick {
                now_ns: t + 10 * MS
            }),
            vec![Action::Announce]
        );
        assert_eq!(
            m.handle(Event::Tick {
                now_ns: t + 20 * MS
            }),
            vec![Action::Announce]
        );
        assert_eq!(m.next_deadline(), u64::MAX, "count 3, no refresh");
    }

    #[test]
    fn shutdown_releases_closes_the_gate_and_holds_it_200_ms() {
        let mut m = holding();
        let at = T0 + 500 * MS;
        let actions = m.handle(Event::Shutdown { at_ns: at });
        assert_eq!(effects(&actions), vec![Action::Release, Action::CloseGate]);
        assert_eq!(
            transition(&actions),
            Some((State::Holding, State::Stopped, Reason::Shutdown))
        );
        assert_eq!(m.next_deadline(), at + ns(HANDOVER_HOLD));
        assert!(
            m.handle(Event::Tick {
                now_ns: at + ns(HANDOVER_HOLD) - 1
            })
            .is_empty()
        );
        assert_eq!(
            m.handle(Event::Tick {
                now_ns: at + ns(HANDOVER_HOLD)
            }),
            vec![Action::Exit { cut_short: false }]
        );
    }

    #[test]
    fn a_second_shutdown_cuts_the_hold_short() {
        let mut m = holding();
        m.handle(Event::Shutdown { at_ns: T0 });
        assert_eq!(
            m.handle(Event::Shutdown { at_ns: T0 + MS }),
            vec![Action::Exit { cut_short: true }]
        );
        assert!(m.handle(Event::Shutdown { at_ns: T0 + 2 * MS }).is_empty());
    }

    #[test]
    fn no_preempt_waits_until_the_vip_is_free() {
        let mut m = machine(false, false);
        m.start(T0);
        let actions = m.handle(Event::Claim {
            at_ns: T0 + MS,
            mac: OTHER,
        });
        assert_eq!(effects(&actions), Vec::<Action>::new());
        assert_eq!(
            transition(&actions),
            Some((
                State::Starting,
                State::Waiting,
                Reason::VipInUse(Some(OTHER))
            ))
        );
        let recheck = T0 + MS + ns(RECHECK_EVERY);
        assert_eq!(m.next_deadline(), recheck);
        assert_eq!(
            m.handle(Event::Tick { now_ns: recheck }),
            vec![Action::Solicit]
        );
        // Still taken: keep waiting, quietly.
        assert!(
            m.handle(Event::Claim {
                at_ns: recheck + MS,
                mac: OTHER
            })
            .is_empty()
        );
        // A failed probe cannot prove the VIP free.
        let recheck = recheck + MS + ns(RECHECK_EVERY);
        m.handle(Event::Tick { now_ns: recheck });
        assert!(m.handle(Event::SolicitFailed { at_ns: recheck }).is_empty());
        let recheck = recheck + ns(RECHECK_EVERY);
        m.handle(Event::Tick { now_ns: recheck });
        let actions = nobody(&mut m, recheck);
        assert_eq!(
            transition(&actions),
            Some((State::Waiting, State::Holding, Reason::Claimed))
        );
    }

    #[test]
    fn nothing_is_claimed_before_the_first_health_verdict() {
        let mut m = machine(true, true);
        assert!(m.start(T0).is_empty());
        assert_eq!(m.next_deadline(), u64::MAX);
        assert_eq!(ok(&mut m, T0 + MS), vec![Action::Solicit]);
        let actions = nobody(&mut m, T0 + MS);
        assert_eq!(
            transition(&actions),
            Some((State::Starting, State::Holding, Reason::Claimed))
        );
    }

    #[test]
    fn unhealthy_at_start_closes_the_gate_and_binds_nothing() {
        let mut m = machine(true, true);
        m.start(T0);
        let actions = fail(&mut m, T0);
        assert_eq!(effects(&actions), vec![Action::Release, Action::CloseGate]);
        assert!(matches!(
            transition(&actions),
            Some((
                State::Starting,
                State::Unhealthy,
                Reason::HealthFailed { first: true, .. }
            ))
        ));
    }

    #[test]
    fn failing_health_releases_before_closing_the_gate_after_fall_checks() {
        let mut m = machine(true, true);
        ok(&mut m, T0);
        nobody(&mut m, T0);
        assert_eq!(m.state(), State::Holding);
        let first = fail(&mut m, T0 + 300 * MS);
        assert!(matches!(
            first[..],
            [Action::Note(Note::HealthCheck {
                against: 1,
                needed: 2,
                ..
            })]
        ));
        let actions = fail(&mut m, T0 + 400 * MS);
        assert_eq!(effects(&actions), vec![Action::Release, Action::CloseGate]);
        assert!(matches!(
            transition(&actions),
            Some((
                State::Holding,
                State::Unhealthy,
                Reason::HealthFailed {
                    first: false,
                    fall: 2,
                    ..
                }
            ))
        ));
        // Recovery after rise (3) good checks: gate first, then the probe.
        ok(&mut m, T0 + 500 * MS);
        ok(&mut m, T0 + 600 * MS);
        let actions = ok(&mut m, T0 + 700 * MS);
        assert_eq!(actions, vec![Action::OpenGate, Action::Solicit]);
        let actions = m.handle(Event::Claim {
            at_ns: T0 + 701 * MS,
            mac: OTHER,
        });
        assert_eq!(
            transition(&actions),
            Some((
                State::Unhealthy,
                State::Holding,
                Reason::HealthRecovered { rise: 3 }
            ))
        );
    }

    #[test]
    fn a_relapse_during_the_recovery_probe_closes_the_gate_again() {
        let mut m = Machine::new(Settings {
            preempt: true,
            health: Some((1, 1)),
            garp: GARP,
            conn: config::Conn::default(),
        });
        fail(&mut m, T0);
        assert_eq!(ok(&mut m, T0 + MS), vec![Action::OpenGate, Action::Solicit]);
        assert_eq!(fail(&mut m, T0 + 2 * MS), vec![Action::CloseGate]);
        // The probe window was abandoned: nothing comes of its deadline.
        assert!(
            m.handle(Event::Tick {
                now_ns: T0 + 300 * MS
            })
            .is_empty()
        );
        assert_eq!(m.state(), State::Unhealthy);
    }

    #[test]
    fn no_preempt_recovery_waits_with_the_gate_open() {
        let mut m = Machine::new(Settings {
            preempt: false,
            health: Some((1, 1)),
            garp: GARP,
            conn: config::Conn::default(),
        });
        ok(&mut m, T0);
        nobody(&mut m, T0);
        fail(&mut m, T0 + 300 * MS);
        assert_eq!(
            ok(&mut m, T0 + 400 * MS),
            vec![Action::OpenGate, Action::Solicit]
        );
        // The backup took the VIP while we were unhealthy: leave it there.
        let actions = m.handle(Event::Claim {
            at_ns: T0 + 401 * MS,
            mac: OTHER,
        });
        assert_eq!(
            transition(&actions),
            Some((
                State::Unhealthy,
                State::Waiting,
                Reason::VipInUse(Some(OTHER))
            ))
        );
        assert!(!m.gate_closed());
        // Failing while waiting: nothing to release, gate closes.
        let actions = fail(&mut m, T0 + 500 * MS);
        assert_eq!(effects(&actions), vec![Action::CloseGate]);
        // A recheck that fires while unhealthy does nothing.
        assert!(
            m.handle(Event::Tick {
                now_ns: T0 + 401 * MS + ns(RECHECK_EVERY)
            })
            .is_empty()
        );
    }

    #[test]
    fn shutdown_hands_over_from_every_state() {
        let unhealthy = || {
            let mut m = machine(true, true);
            fail(&mut m, T0);
            m.handle(Event::Unbound { at_ns: T0 });
            m
        };
        let table: [(&str, Machine, State, &[Action]); 4] = [
            (
                "starting, no check (probe out)",
                {
                    let mut m = machine(true, false);
                    m.start(T0);
                    m
                },
                State::Starting,
                &[Action::CloseGate],
            ),
            (
                "starting, before the first verdict",
                machine(true, true),
                State::Starting,
                &[Action::CloseGate],
            ),
            (
                "holding",
                holding(),
                State::Holding,
                &[Action::Release, Action::CloseGate],
            ),
            // The gate is closed already: it stays closed for the hold.
            ("unhealthy", unhealthy(), State::Unhealthy, &[]),
        ];
        for (name, mut m, from, expected) in table {
            let actions = m.handle(Event::Shutdown { at_ns: T0 });
            assert_eq!(effects(&actions), expected, "{name}");
            assert_eq!(
                transition(&actions),
                Some((from, State::Stopped, Reason::Shutdown)),
                "{name}"
            );
            assert_eq!(m.next_deadline(), T0 + ns(HANDOVER_HOLD), "{name}");
        }
    }

    #[test]
    fn a_failed_bind_is_retried_while_holding() {
        let mut m = machine(true, false);
        m.start(T0);
        nobody(&mut m, T0);
        let at = T0 + 200 * MS;
        assert!(m.handle(Event::BindFailed { at_ns: at }).is_empty());
        assert_eq!(m.next_deadline(), at + RETRY_NS);
        let actions = m.handle(Event::Tick {
            now_ns: at + RETRY_NS,
        });
        assert_eq!(
            actions,
            vec![Action::Note(Note::Retry { bind: true }), Action::TakeOver]
        );
    }

    #[test]
    fn claims_while_holding_are_conflicts_logged_a_bounded_number_of_times() {
        let mut m = holding();
        let notes: usize = (0..50)
            .map(|k| {
                m.handle(Event::Claim {
                    at_ns: T0 + k,
                    mac: OTHER,
                })
                .len()
            })
            .sum();
        assert_eq!(notes, CONFLICTS_LOGGED as usize);
        assert_eq!(m.state(), State::Holding);
    }

    #[test]
    fn holding_kicks_once_after_the_bind_syncs_and_kicks_what_the_backup_hands_back() {
        let mut m = machine(true, false);
        m.start(T0);
        nobody(&mut m, T0);
        let at = T0 + 200 * MS;
        assert_eq!(
            m.handle(Event::Bound {
                bound_ns: at,
                first_garp_ns: at
            }),
            vec![Action::Kick]
        );
        let actions = m.handle(Event::Tick { now_ns: at });
        assert_eq!(actions, vec![Action::Sync { snapshot: true }]);
        let actions = m.handle(Event::Tick {
            now_ns: at + 10 * MS,
        });
        assert!(
            actions.contains(&Action::Sync { snapshot: false }),
            "{actions:?}"
        );
        // The backup hands the VIP back after a cable pull: kick its
        // connections (we never stopped holding).
        assert_eq!(
            m.handle(Event::PeerReleased {
                at_ns: at + 11 * MS
            }),
            vec![Action::Kick]
        );
        // Not once we stopped holding.
        m.handle(Event::Shutdown {
            at_ns: at + 20 * MS,
        });
        assert!(
            m.handle(Event::PeerReleased {
                at_ns: at + 21 * MS
            })
            .is_empty()
        );
        let actions = m.handle(Event::Tick {
            now_ns: at + 30 * MS,
        });
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Sync { .. })),
            "{actions:?}"
        );
    }

    #[test]
    fn hook_reasons_are_stable_tokens() {
        let table = [
            (Reason::Claimed, "claimed"),
            (Reason::Preempted(OTHER), "preempted"),
            (Reason::VipInUse(None), "vip-in-use"),
            (
                Reason::HealthFailed {
                    first: true,
                    fall: 2,
                    last: String::new(),
                },
                "health-failed",
            ),
            (Reason::HealthRecovered { rise: 3 }, "health-recovered"),
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

    #[test]
    fn a_lost_carrier_releases_and_its_return_claims_again() {
        // Issue "Never lose the VIP": the master follows its own link
        // (keepalived's FAULT state).
        let mut m = holding();
        let down = T0 + 1000 * MS;
        let a = m.handle(Event::Carrier {
            at_ns: down,
            up: false,
        });
        assert_eq!(effects(&a), vec![Action::Release]);
        assert_eq!(
            transition(&a),
            Some((State::Holding, State::Fault, Reason::CarrierLost))
        );
        m.handle(Event::Unbound { at_ns: down });
        // A repeated notification changes nothing.
        assert!(
            m.handle(Event::Carrier {
                at_ns: down,
                up: false
            })
            .is_empty()
        );
        let up = down + 2000 * MS;
        let a = m.handle(Event::Carrier {
            at_ns: up,
            up: true,
        });
        assert_eq!(effects(&a), vec![Action::Solicit], "asks who holds it");
        let a = nobody(&mut m, up);
        assert!(effects(&a).contains(&Action::TakeOver), "{a:?}");
        assert_eq!(m.state(), State::Holding);
    }

    #[test]
    fn a_lost_carrier_while_unhealthy_claims_only_once_both_are_back() {
        let mut m = machine(true, true);
        m.start(T0);
        fail(&mut m, T0);
        assert_eq!(m.state(), State::Unhealthy);
        m.handle(Event::Carrier {
            at_ns: T0 + MS,
            up: false,
        });
        assert_eq!(m.state(), State::Unhealthy);
        for k in 0..3 {
            let a = ok(&mut m, T0 + (2 + k) * MS);
            assert!(!effects(&a).contains(&Action::Solicit), "no carrier: {a:?}");
        }
        let a = m.handle(Event::Carrier {
            at_ns: T0 + 10 * MS,
            up: true,
        });
        assert_eq!(effects(&a), vec![Action::Solicit]);
    }

    #[test]
    fn a_vip_removed_under_a_holding_master_is_bound_again() {
        let mut m = holding();
        let at = T0 + 1000 * MS;
        let a = m.handle(Event::Address {
            at_ns: at,
            present: false,
        });
        assert_eq!(effects(&a), vec![Action::TakeOver]);
        assert!(a.contains(&Action::Note(Note::VipRemoved)));
        // Not while released, nor for an address that is there.
        let mut m = holding();
        assert!(
            m.handle(Event::Address {
                at_ns: at,
                present: true
            })
            .is_empty()
        );
        m.handle(Event::Carrier {
            at_ns: at,
            up: false,
        });
        m.handle(Event::Unbound { at_ns: at });
        assert!(
            m.handle(Event::Address {
                at_ns: at,
                present: false
            })
            .is_empty()
        );
    }
}
