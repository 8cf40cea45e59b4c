//! The backup instance: a pure state machine.
//!
//! Same shape as the master's ([`crate::master::Machine`]): timestamped
//! [`Event`]s in, [`Action`]s that carry their data out, and
//! [`Machine::next_deadline`], the instant at which the shell must feed
//! [`Event::Tick`] (with the peers' counters freshly read from the XDP
//! maps). Every timed rule lives here and is tested on a fake clock:
//!
//! * when probes go out, and that missed slots are skipped, not burst;
//! * when the master is dead, or we are the one cut off ([`Detector`],
//!   which judges liveness from the counters and the probes that left);
//! * who a claim of the VIP comes from (the master's MAC, or a conflict);
//! * when to ask whether a returning master holds the VIP (RFC 5227 probe,
//!   20 ms doubling to 1 s);
//! * the gratuitous ARP burst and refresh after a takeover;
//! * retrying a bind or an unbind that failed;
//! * handing the VIP over, with the master's MAC, whenever we give it up
//!   while the master is alive (its claim, `vipwatch release`, a stop);
//! * checking that whoever we released the VIP to answers for it (RFC 5227
//!   probes over [`VERIFY_WINDOW_NS`]), and taking it back if nobody does:
//!   a forged claim costs a few ms, never a lasting outage;
//! * following the kernel: a VIP removed under us is bound again; one that
//!   appears while we do not hold it is a stray, removed or adopted;
//! * adopting a VIP found bound at start (a crash, a restart): the first
//!   verdict on the master decides whether we keep it or hand it back.
//!
//! The shell ([`crate::worker`]) only waits, reads the maps, feeds events
//! and carries out actions; results of actions come back as events
//! ([`Event::Bound`], [`Event::BindFailed`], ...). It never asks the machine.

use crate::{
    arp::GarpSchedule,
    config::{self, Garp},
    detector::{self, Detector, PeerSample},
    health::{Hysteresis, Verdict},
    holder::Holder,
};

pub(crate) use crate::detector::{Failback, Reason, State};

/// How soon, then how often at most, a backup holding the VIP asks whether
/// the returned master holds it too.
const SOLICIT_FIRST_NS: u64 = 20_000_000;
const SOLICIT_MAX_NS: u64 = 1_000_000_000;
/// Retry period after a failed bind or unbind.
pub(crate) const RETRY_NS: u64 = 100_000_000;
/// Address conflicts logged per takeover (one ARP per second from a
/// misconfigured host must not flood the log).
const CONFLICTS_LOGGED: u32 = 10;
/// After giving the VIP up, how long we wait for the new holder to answer
/// our RFC 5227 probes for it, and how often we ask (three probes: one lost
/// frame must not make us take the VIP back). A host that holds the VIP
/// answers from its kernel within a LAN round trip (~0.1 ms here), so 8 ms
/// leaves a loaded holder 6 ms after the third probe; a forged claim costs
/// the clients about that much (section 9 of bench/RESULTS.md).
pub(crate) const VERIFY_WINDOW_NS: u64 = 8_000_000;
const VERIFY_EVERY_NS: u64 = 2_000_000;
const VERIFY_PROBES: u32 = 3;

/// What to do with the VIP when it appears on our interface while we do
/// not hold it (added by hand, by a script, or left by another program).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stray {
    /// Remove it (and point the clients back at the master).
    Remove,
    /// Keep it if the master does not answer for the VIP: treat it as ours.
    Adopt,
}

/// Validated settings of one backup instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) detector: detector::Settings,
    pub(crate) garp: Garp,
    /// Stop probing after this many probes (diagnostics, `--count`).
    pub(crate) probe_limit: Option<u64>,
    pub(crate) conn: config::Conn,
    pub(crate) stray: Stray,
    /// Our own service's health check: (fall, rise), if there is one.
    pub(crate) health: Option<(u32, u32)>,
}

/// Counters of one peer as the XDP program keeps them, merged across CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) replies: u64,
    pub(crate) last_seen_ns: u64,
    pub(crate) highest_seq: u64,
    /// Source MAC of the last valid reply.
    pub(crate) last_mac: [u8; 6],
}

impl Peer {
    fn sample(self) -> PeerSample {
        let Self {
            replies,
            last_seen_ns,
            highest_seq,
            last_mac: _,
        } = self;
        PeerSample {
            replies,
            last_seen_ns,
            highest_seq,
        }
    }
}

/// Inputs. Every event carries the time it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// [`Machine::next_deadline`] was reached; the peers' counters were
    /// read at `now_ns` (the witness's when one is configured).
    Tick {
        now_ns: u64,
        master: Peer,
        witness: Option<Peer>,
    },
    /// The probe [`Action::Probe`] asked for left at `at_ns` (a probe the
    /// kernel refused is not reported: it is no evidence).
    ProbeSent { at_ns: u64, seq: u64 },
    /// An ARP packet with sender IP = the VIP from a MAC not ours;
    /// `answer`: the answer to one of our RFC 5227 probes (a holder's
    /// kernel sends it when we ask).
    Claim {
        at_ns: u64,
        mac: [u8; 6],
        answer: bool,
    },
    /// The kernel's view of the VIP on our interface, as the shell found it
    /// after an address notification.
    Address { at_ns: u64, present: bool },
    /// [`Action::TakeOver`] done: the VIP was bound at `bound_ns` and first
    /// announced at `first_garp_ns`.
    Bound { bound_ns: u64, first_garp_ns: u64 },
    /// [`Action::TakeOver`] could not bind the VIP.
    BindFailed { at_ns: u64 },
    /// [`Action::Release`] done (the address is gone, or was already).
    Unbound { at_ns: u64 },
    /// [`Action::Release`] could not remove the VIP.
    UnbindFailed { at_ns: u64 },
    /// `vipwatch release` for this instance.
    OperatorRelease { at_ns: u64 },
    /// A result of our own service's health check.
    Health { at_ns: u64, healthy: bool },
    /// [`Action::Solicit`] could not be sent (no address to ask from, a
    /// send error): a check it was part of cannot conclude.
    SolicitFailed { at_ns: u64 },
    /// The instance is stopping (signal, reload).
    Shutdown { at_ns: u64 },
    /// The `on_change` hook of a state change finished (they run one at a
    /// time, in order).
    HookDone,
}

/// The timeline of a takeover decision, CLOCK_MONOTONIC ns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The silence reference: the master's last reply, or the start or the
    /// last release if later.
    pub(crate) last_reply_ns: u64,
    /// `last_reply_ns + dead_after`.
    pub(crate) deadline_ns: u64,
    pub(crate) decision_ns: u64,
}

/// Side effects for the shell, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Send probe tick `seq` (master, and witness if configured); report
    /// [`Event::ProbeSent`] if it left.
    Probe { seq: u64 },
    /// Bind the VIP, then announce it at once; report [`Event::Bound`] or
    /// [`Event::BindFailed`]. `decision` is for the timeline.
    TakeOver { decision: Decision },
    /// Remove the VIP; report [`Event::Unbound`] or [`Event::UnbindFailed`].
    Release,
    /// Announce the VIP (gratuitous ARP), as scheduled after a takeover.
    Announce,
    /// Announce the VIP at `mac`, the master's, after it claimed it back:
    /// clients that still send to us move at once.
    HandOver { mac: [u8; 6] },
    /// Ask who holds the VIP (RFC 5227 ARP probe): a returning master that
    /// kept it answers, and the answer is a claim.
    Solicit,
    /// Kick the connections the master had (learned from its syncs), once.
    Kick,
    /// Send the master our connection table's changes (`snapshot`: all of
    /// it), while we hold the VIP.
    Sync { snapshot: bool },
    /// Tell the master we handed the VIP back to it, so it kicks the
    /// connections we had.
    SyncReleased,
    /// Something worth one log line that is not a state change.
    Note(Note),
    /// Report a state change: log line, status, `--on-change` hook.
    Notify(Transition),
}

pub(crate) use detector::Transition;

/// Log-worthy observations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// A host that is not the master claims the VIP while we hold it.
    Conflict { mac: [u8; 6], master_mac: [u8; 6] },
    /// The master answers `rise` probes in a row again while we hold the
    /// VIP: it gets it back when it claims it (or on `vipwatch release`).
    MasterBack { mac: [u8; 6], failback: Failback },
    /// A bind or unbind that failed earlier now asked again.
    Retry { bind: bool },
    /// The VIP was removed from the interface while we hold it: bound again.
    VipRemoved,
    /// The VIP appeared on the interface while we do not hold it.
    Stray { policy: Stray },
    /// Started with the VIP bound (a crash, a restart): adopted until the
    /// master's first verdict.
    Adopted,
    /// The master answers: the adopted VIP goes back to it.
    AdoptedHandBack { mac: [u8; 6] },
    /// Nobody answered for the VIP after we gave it up to `mac`.
    ClaimantSilent { mac: [u8; 6] },
    /// We could not ask whether `mac` holds the VIP we gave it: the claim
    /// is trusted, unchecked (silence we caused proves nothing).
    ClaimantUnchecked { mac: [u8; 6] },
    /// Our own service's health verdict changed.
    Health { healthy: bool },
    /// The master is dead but our own service is unhealthy: no takeover.
    TakeoverRefused { silence_ns: u64 },
    /// Our own service failed while we hold the VIP and the master is
    /// silent: we keep it (nobody better can answer).
    UnhealthyHolding,
}

/// Waiting for the host we gave the VIP up to to answer for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Verify {
    claimant: [u8; 6],
    /// Answers sent before this do not count.
    since_ns: u64,
    next_solicit_ns: u64,
    solicits: u32,
    until_ns: u64,
}

/// The backup instance. See the module documentation.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    settings: Settings,
    detector: Detector,
    /// Next probe tick and its sequence number.
    next_probe_ns: u64,
    seq: u64,
    /// Probe ticks asked for (sent or not), for `probe_limit`.
    probes_asked: u64,
    /// Latest master counters (its MAC attributes claims).
    master: Peer,
    last_sample_ns: u64,
    garp: GarpSchedule,
    /// Whether the VIP is bound as far as we know; `None` after a failed
    /// bind or unbind, until a retry succeeds.
    bound: Option<bool>,
    retry_at: Option<u64>,
    /// The decision being carried out, for retries of its bind.
    decision: Decision,
    next_solicit_ns: u64,
    solicit_every_ns: u64,
    /// MAC of the master's claim that the detector is about to honour.
    claim_mac: Option<[u8; 6]>,
    conflicts_logged: u32,
    master_back_noted: bool,
    holder: Holder,
    /// Checking the host we released the VIP to.
    verify: Option<Verify>,
    /// The VIP was bound when we started (or appeared and is adopted): it
    /// stays until the master's first verdict.
    adopted: bool,
    /// A bind that restores a VIP removed under us (not a takeover).
    rebinding: bool,
    /// See `detect`.
    master_was_back: bool,
    stats: Stats,
    /// Our own service's health (fall/rise), if checked.
    hysteresis: Option<Hysteresis>,
}

/// What `vipwatch stats` shows of the machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub(crate) probes_sent: u64,
    pub(crate) takeovers: u64,
    pub(crate) releases: u64,
    pub(crate) deferred: u64,
    /// Timeline of the last takeover: decision, then bound and first GARP.
    pub(crate) last_takeover: Option<(Decision, u64, u64)>,
    pub(crate) last_release_ns: u64,
    pub(crate) last_claim_ns: u64,
    /// Longest gap between two probes sent, since the master first
    /// answered (ours to blame when close to the master's reply gap).
    pub(crate) max_probe_gap_ns: u64,
    last_probe_ns: u64,
    /// VIPs removed under us and bound again.
    pub(crate) vip_restored: u64,
    /// VIPs that appeared while we did not hold them.
    pub(crate) stray_vips: u64,
    /// Releases taken back because nobody answered for the VIP after.
    pub(crate) taken_back: u64,
    /// Takeovers not done because our own service was unhealthy.
    pub(crate) takeovers_refused: u64,
}

impl Machine {
    /// `bound`: the VIP is on the interface already (adopted, see the
    /// module documentation).
    pub(crate) fn new(settings: Settings, now_ns: u64, bound: bool) -> Self {
        Self {
            settings,
            detector: Detector::new(settings.detector, now_ns),
            next_probe_ns: now_ns,
            seq: 0,
            probes_asked: 0,
            master: Peer::default(),
            last_sample_ns: now_ns,
            garp: GarpSchedule::new(&settings.garp),
            bound: Some(bound),
            retry_at: None,
            decision: Decision::default(),
            next_solicit_ns: 0,
            solicit_every_ns: SOLICIT_FIRST_NS,
            claim_mac: None,
            conflicts_logged: 0,
            master_back_noted: false,
            holder: Holder::new(&settings.conn),
            verify: None,
            adopted: bound,
            rebinding: false,
            master_was_back: false,
            stats: Stats::default(),
            hysteresis: settings
                .health
                .map(|(fall, rise)| Hysteresis::new(fall, rise)),
        }
        .with_health_gate()
    }

    /// With a health check, no takeover before its first verdict.
    fn with_health_gate(mut self) -> Self {
        if self.hysteresis.is_some() {
            self.detector.set_healthy(false);
        }
        self
    }

    /// Our own service's verdict: `None` without a check or before its
    /// first result.
    pub(crate) fn health_verdict(&self) -> Option<bool> {
        self.hysteresis
            .as_ref()
            .and_then(Hysteresis::verdict)
            .map(|v| v == Verdict::Healthy)
    }

    /// Consecutive results against the verdict, and how many flip it.
    pub(crate) fn health_progress(&self) -> Option<(u32, u32)> {
        self.hysteresis.as_ref().map(Hysteresis::progress)
    }

    fn health(&mut self, _at_ns: u64, healthy: bool, out: &mut Vec<Action>) {
        let Some(h) = self.hysteresis.as_mut() else {
            return;
        };
        let Some(verdict) = h.record(healthy) else {
            return;
        };
        let healthy = verdict == Verdict::Healthy;
        self.detector.set_healthy(healthy);
        out.push(Action::Note(Note::Health { healthy }));
        if !healthy && self.state() == State::Active && !self.detector.master_back() {
            out.push(Action::Note(Note::UnhealthyHolding));
        }
        // Healthy again while the master is dead: the next sample (at most
        // one interval away while a takeover is refused) decides, with the
        // witness's counters read with it.
    }

    /// The master's MAC (from its last reply).
    pub(crate) fn master_mac(&self) -> [u8; 6] {
        self.master.last_mac
    }

    /// Whether the VIP is bound as far as the machine knows.
    #[cfg(test)]
    pub(crate) fn holds_vip(&self) -> bool {
        self.bound == Some(true)
    }

    /// Notes for the start: the adoption, if any.
    pub(crate) fn start(&self) -> Vec<Action> {
        if self.adopted {
            vec![Action::Note(Note::Adopted)]
        } else {
            Vec::new()
        }
    }

    pub(crate) fn state(&self) -> State {
        self.detector.state()
    }

    pub(crate) fn stats(&self) -> Stats {
        Stats {
            deferred: self.detector.deferred(),
            ..self.stats
        }
    }

    /// Whether the master has answered `rise` probes in a row since it went
    /// silent (while we hold the VIP or are isolated).
    pub(crate) fn master_back(&self) -> bool {
        self.detector.master_back()
    }

    fn probing(&self) -> bool {
        self.settings
            .probe_limit
            .is_none_or(|n| self.probes_asked < n)
    }

    fn interval(&self) -> u64 {
        self.settings.detector.interval_ns
    }

    /// When the shell must next feed [`Event::Tick`]: the earliest of the
    /// next probe, the detector's deadline, the next announcement or
    /// solicitation, and a retry.
    pub(crate) fn next_deadline(&self) -> u64 {
        let mut at = self.sample_due_ns();
        if self.probing() {
            at = at.min(self.next_probe_ns);
        }
        let verify = self.verify.map(|v| {
            if v.solicits < VERIFY_PROBES {
                v.next_solicit_ns.min(v.until_ns)
            } else {
                v.until_ns
            }
        });
        for due in [
            self.garp.next_ns(),
            self.retry_at,
            self.solicit_due(),
            self.holder.next_deadline(),
            verify,
        ]
        .into_iter()
        .flatten()
        {
            at = at.min(due);
        }
        at
    }

    /// When the detector wants a fresh sample. A deadline the last sample
    /// already reached (the detector waits for more evidence) is re-checked
    /// at most every half interval, so waiting never becomes a busy loop.
    fn sample_due_ns(&self) -> u64 {
        let deadline = self.detector.next_deadline();
        if deadline > self.last_sample_ns {
            deadline
        } else {
            self.last_sample_ns + self.interval() / 2
        }
    }

    fn solicit_due(&self) -> Option<u64> {
        let on_claim = self.settings.detector.failback == Failback::OnClaim;
        (self.state() == State::Active && on_claim && self.master_back())
            .then_some(self.next_solicit_ns)
    }

    /// The one function that changes state; returns the side effects in
    /// order. A state change ends the list with one [`Action::Notify`].
    pub(crate) fn handle(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match event {
            Event::Tick {
                now_ns,
                master,
                witness,
            } => self.tick(now_ns, master, witness, &mut out),
            Event::ProbeSent { at_ns, seq } => {
                self.stats.probes_sent += 1;
                if self.stats.last_probe_ns != 0 && self.state() != State::Starting {
                    let gap = at_ns.saturating_sub(self.stats.last_probe_ns);
                    self.stats.max_probe_gap_ns = self.stats.max_probe_gap_ns.max(gap);
                }
                self.stats.last_probe_ns = at_ns;
                self.detect(detector::Event::ProbeSent { at_ns, seq }, &mut out);
            }
            Event::Claim { at_ns, mac, answer } => self.claim(at_ns, mac, answer, &mut out),
            Event::Health { at_ns, healthy } => self.health(at_ns, healthy, &mut out),
            Event::SolicitFailed { .. } => {
                if let Some(v) = self.verify.take() {
                    out.push(Action::Note(Note::ClaimantUnchecked { mac: v.claimant }));
                }
            }
            Event::Address { at_ns, present } => self.address(at_ns, present, &mut out),
            Event::Bound {
                bound_ns,
                first_garp_ns,
            } => {
                self.bound = Some(true);
                self.retry_at = None;
                if self.state() == State::Active && self.rebinding {
                    // Restored, not taken over: announce again (a host that
                    // removed it may have said so), nothing else.
                    self.rebinding = false;
                    self.garp.burst_started(first_garp_ns);
                } else if self.state() == State::Active {
                    self.garp.burst_started(first_garp_ns);
                    self.stats.takeovers += 1;
                    self.stats.last_takeover = Some((self.decision, bound_ns, first_garp_ns));
                    // Right after the VIP is bound and first announced: the
                    // clients' answers to the kick must reach us.
                    if self.holder.bound(first_garp_ns) {
                        out.push(Action::Kick);
                    }
                } else {
                    // Bound after we decided to let go (a retry raced a
                    // release): undo it.
                    out.push(Action::Release);
                }
            }
            Event::BindFailed { at_ns } | Event::UnbindFailed { at_ns } => {
                self.bound = None;
                self.retry_at = Some(at_ns + RETRY_NS);
            }
            Event::Unbound { at_ns } => {
                self.bound = Some(false);
                self.retry_at = None;
                self.stats.releases += 1;
                self.stats.last_release_ns = at_ns;
            }
            Event::OperatorRelease { at_ns } => {
                self.detect(detector::Event::OperatorRelease { at_ns }, &mut out);
            }
            // (A release of an adopted VIP before any verdict is the
            // operator's to make: it goes through the same path.)
            Event::Shutdown { at_ns } => {
                self.detect(detector::Event::Shutdown { at_ns }, &mut out);
            }
            Event::HookDone => {
                if self.holder.hook_done() && self.state() == State::Active {
                    out.push(Action::Kick);
                }
            }
        }
        out
    }

    fn tick(&mut self, now_ns: u64, master: Peer, witness: Option<Peer>, out: &mut Vec<Action>) {
        self.master = master;
        self.last_sample_ns = self.last_sample_ns.max(now_ns);
        let witness = witness.filter(|_| self.settings.detector.witness);
        self.detect(
            detector::Event::Sample {
                now_ns,
                master: master.sample(),
                witness: witness.map(Peer::sample),
            },
            out,
        );
        if self.state() == State::Active {
            if self.master_back() && !self.master_back_noted {
                self.master_back_noted = true;
                out.insert(
                    0,
                    Action::Note(Note::MasterBack {
                        mac: master.last_mac,
                        failback: self.settings.detector.failback,
                    }),
                );
            }
            if let Some(due) = self.solicit_due()
                && now_ns >= due
            {
                // A master that comes back with the VIP still bound (it was
                // frozen or cut off, not restarted) never announces it. Its
                // kernel answers our ARP probe, and that answer is the claim
                // that makes us hand the VIP back. A master that returns
                // without the VIP does not answer, and we keep serving it,
                // asking less and less often rather than 50 times a second.
                self.next_solicit_ns = now_ns + self.solicit_every_ns;
                self.solicit_every_ns = (self.solicit_every_ns * 2).min(SOLICIT_MAX_NS);
                out.push(Action::Solicit);
            }
        } else {
            self.master_back_noted = false;
            self.next_solicit_ns = 0;
            self.solicit_every_ns = SOLICIT_FIRST_NS;
        }
        if let Some(due) = self.garp.next_ns()
            && now_ns >= due
        {
            self.garp.sent(now_ns);
            out.push(Action::Announce);
        }
        self.verify_tick(now_ns, out);
        if self.state() == State::Active {
            let due = self.holder.tick(now_ns);
            if due.kick {
                out.push(Action::Kick);
            }
            if let Some(snapshot) = due.sync {
                out.push(Action::Sync { snapshot });
            }
        }
        if let Some(due) = self.retry_at
            && now_ns >= due
        {
            self.retry_at = None;
            let want = self.state() == State::Active;
            out.push(Action::Note(Note::Retry { bind: want }));
            out.push(if want {
                Action::TakeOver {
                    decision: self.decision,
                }
            } else {
                Action::Release
            });
        }
        if self.probing() && now_ns >= self.next_probe_ns {
            self.seq += 1;
            self.probes_asked += 1;
            out.push(Action::Probe { seq: self.seq });
            // Missed slots (we were starved or stopped) are skipped, not
            // sent in a burst: a burst would fake the "probes sent"
            // evidence the detector relies on.
            self.next_probe_ns += self.interval();
            if self.next_probe_ns <= now_ns {
                self.next_probe_ns = now_ns + self.interval();
            }
        }
    }

    /// Who a claim comes from, and what the detector makes of it.
    fn claim(&mut self, at_ns: u64, mac: [u8; 6], answer: bool, out: &mut Vec<Action>) {
        self.stats.last_claim_ns = at_ns;
        if let Some(v) = self.verify
            && answer
            && mac == v.claimant
            && at_ns >= v.since_ns
        {
            // The host we gave the VIP to answers for it: done.
            self.verify = None;
        }
        // Before the master ever answered we cannot tell its MAC: a claim
        // then counts as the master's.
        let from_master = self.master.replies == 0 || mac == self.master.last_mac;
        if from_master {
            self.claim_mac = Some(mac);
        } else if self.state() == State::Active && self.conflicts_logged < CONFLICTS_LOGGED {
            self.conflicts_logged += 1;
            out.push(Action::Note(Note::Conflict {
                mac,
                master_mac: self.master.last_mac,
            }));
        }
        self.detect(detector::Event::Claim { at_ns, from_master }, out);
    }

    /// Feeds the detector and turns its decisions into effects.
    fn detect(&mut self, event: detector::Event, out: &mut Vec<Action>) {
        // Whether the master was back before this event (a release makes
        // the detector forget its run).
        self.master_was_back = self.detector.master_back();
        let actions = self.detector.handle(event);
        self.effects(actions, out);
    }

    /// Starts checking that `claimant` answers for the VIP we just gave up.
    fn begin_verify(&mut self, at_ns: u64, claimant: [u8; 6], out: &mut Vec<Action>) {
        self.verify = Some(Verify {
            claimant,
            since_ns: at_ns,
            next_solicit_ns: at_ns + VERIFY_EVERY_NS,
            solicits: 1,
            until_ns: at_ns + VERIFY_WINDOW_NS,
        });
        out.push(Action::Solicit);
    }

    fn verify_tick(&mut self, now_ns: u64, out: &mut Vec<Action>) {
        let Some(mut v) = self.verify else {
            return;
        };
        if self.state() != State::Standby {
            // We hold it again (a takeover decided meanwhile), or we are
            // cut off: nothing to check.
            self.verify = None;
            return;
        }
        if now_ns >= v.until_ns {
            self.verify = None;
            self.stats.taken_back += 1;
            out.push(Action::Note(Note::ClaimantSilent { mac: v.claimant }));
            let actions = self.detector.take_back(now_ns);
            self.effects(actions, out);
            return;
        }
        if v.solicits < VERIFY_PROBES && now_ns >= v.next_solicit_ns {
            v.solicits += 1;
            v.next_solicit_ns = now_ns + VERIFY_EVERY_NS;
            out.push(Action::Solicit);
        }
        self.verify = Some(v);
    }

    /// The kernel's view of the VIP changed (or was re-read).
    fn address(&mut self, at_ns: u64, present: bool, out: &mut Vec<Action>) {
        let state = self.state();
        match (present, self.bound) {
            (false, Some(true)) if state == State::Active && !self.rebinding => {
                self.stats.vip_restored += 1;
                out.push(Action::Note(Note::VipRemoved));
                self.rebinding = true;
                self.bound = None;
                out.push(Action::TakeOver {
                    decision: self.decision,
                });
            }
            (false, Some(true)) if state == State::Active => {}
            (false, Some(true)) => {
                // An adopted VIP someone removed: nothing left to decide.
                self.bound = Some(false);
                self.adopted = false;
            }
            (true, Some(false)) if state != State::Active => {
                self.stats.stray_vips += 1;
                let policy = self.settings.stray;
                out.push(Action::Note(Note::Stray { policy }));
                self.bound = Some(true);
                match (policy, state) {
                    // Unknown master: wait for its first verdict.
                    (Stray::Adopt, State::Starting) => self.adopted = true,
                    (Stray::Adopt, State::Standby) => self.hand_back_adopted(at_ns, out),
                    (Stray::Remove, State::Standby) => {
                        out.push(Action::Release);
                        out.push(Action::HandOver {
                            mac: self.master.last_mac,
                        });
                    }
                    _ => out.push(Action::Release),
                }
            }
            _ => {}
        }
    }

    /// The master answers and we hold a VIP we never took over (adopted):
    /// give it back, tell the clients, and check that the master has it.
    fn hand_back_adopted(&mut self, at_ns: u64, out: &mut Vec<Action>) {
        self.adopted = false;
        let mac = self.master.last_mac;
        out.push(Action::Note(Note::AdoptedHandBack { mac }));
        out.push(Action::Release);
        out.push(Action::HandOver { mac });
        self.begin_verify(at_ns, mac, out);
    }

    /// Turns the detector's decisions into effects.
    fn effects(&mut self, actions: Vec<detector::Action>, out: &mut Vec<Action>) {
        for action in actions {
            match action {
                detector::Action::TakeOver => {
                    let (last_reply_ns, deadline_ns, decision_ns) =
                        self.detector.last_decision().unwrap_or_default();
                    self.decision = Decision {
                        last_reply_ns,
                        deadline_ns,
                        decision_ns,
                    };
                    self.retry_at = None;
                    self.conflicts_logged = 0;
                    out.push(Action::TakeOver {
                        decision: self.decision,
                    });
                }
                detector::Action::Release => {
                    self.garp.stop();
                    self.holder.released();
                    self.retry_at = None;
                    out.push(Action::Release);
                }
                detector::Action::Refused(reason) => {
                    self.stats.takeovers_refused += 1;
                    let silence_ns = match reason {
                        detector::Reason::MasterSilent { silence_ns, .. } => silence_ns,
                        _ => 0,
                    };
                    out.push(Action::Note(Note::TakeoverRefused { silence_ns }));
                }
                detector::Action::Notify(t) => {
                    self.notified(t, out);
                    self.holder.notified();
                    out.push(Action::Notify(t));
                }
            }
        }
    }

    /// What a state change means beyond the detector's own action.
    fn notified(&mut self, t: Transition, out: &mut Vec<Action>) {
        if t.to == State::Active {
            // A takeover (or a take-back) ends any check and adoption.
            self.verify = None;
            self.adopted = false;
        }
        if t.from == State::Starting && t.to == State::Standby && self.adopted {
            // The master answers: the VIP we found bound is not ours.
            self.hand_back_adopted(t.at_ns, out);
            return;
        }
        if t.from == State::Starting && t.to == State::Isolated && self.adopted {
            self.adopted = false;
            out.push(Action::Release);
            return;
        }
        if t.from != State::Active || t.to != State::Standby {
            return;
        }
        // We gave the VIP up while the master is alive: tell the clients
        // that still send to our MAC where it lives now (the master's own
        // announcement may have missed them, or it never sent one: a
        // frozen master that thawed only answered our solicitation), let
        // the master kick the connections we had, and check that it
        // really answers for the VIP.
        let mac = match t.reason {
            Reason::MasterClaimed => self.claim_mac.take(),
            Reason::OperatorRelease | Reason::Shutdown if self.master_was_back => {
                Some(self.master.last_mac)
            }
            _ => None,
        };
        let Some(mac) = mac else {
            return;
        };
        out.push(Action::HandOver { mac });
        out.push(Action::SyncReleased);
        if t.reason != Reason::Shutdown {
            self.begin_verify(t.at_ns, mac, out);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules that once lived in the loop, on a fake clock. The
    //! detector's own rules are tested in `detector.rs`.

    use super::*;

    const MS: u64 = 1_000_000;
    const T0: u64 = 10_000 * MS;
    const INTERVAL: u64 = 2 * MS;
    const RTT: u64 = MS / 20;
    const MASTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 9];

    fn settings(failback: Failback) -> Settings {
        Settings {
            detector: detector::Settings {
                interval_ns: INTERVAL,
                dead_after_ns: 5 * INTERVAL,
                rise: 3,
                failback,
                witness: false,
            },
            garp: Garp {
                count: 3,
                interval_ns: 10 * MS,
                refresh_ns: None,
            },
            probe_limit: None,
            conn: config::Conn::default(),
            stray: Stray::Remove,
            health: None,
        }
    }

    /// A backup and a master that answers (or not), driven deadline by
    /// deadline, with every action's result fed back as the shell would.
    struct Sim {
        m: Machine,
        now: u64,
        master: Peer,
        master_up: bool,
        bind_ok: bool,
        /// Who answers our RFC 5227 probes for the VIP (its MAC), if anyone.
        holder: Option<[u8; 6]>,
        /// Our solicitations cannot be sent.
        solicit_fails: bool,
        actions: Vec<(u64, Action)>,
    }

    impl Sim {
        fn new(settings: Settings) -> Self {
            Self::with_vip(settings, false)
        }

        /// Started with the VIP already bound (`bound`).
        fn with_vip(settings: Settings, bound: bool) -> Self {
            Self {
                m: Machine::new(settings, T0, bound),
                now: T0,
                master: Peer::default(),
                master_up: true,
                bind_ok: true,
                holder: None,
                solicit_fails: false,
                actions: Vec::new(),
            }
        }

        /// Advances to the machine's next deadline and feeds the Tick.
        fn step(&mut self) {
            // A deadline already past: we were starved and wake up late.
            self.now = self.now.max(self.m.next_deadline());
            let tick = Event::Tick {
                now_ns: self.now,
                master: self.master,
                witness: None,
            };
            let actions = self.m.handle(tick);
            self.carry_out(actions);
        }

        fn run_for(&mut self, ns: u64) {
            let end = self.now + ns;
            let mut guard = 0;
            while self.m.next_deadline() <= end {
                self.step();
                guard += 1;
                assert!(guard < 100_000, "no progress");
            }
            self.now = end;
        }

        fn feed(&mut self, event: Event) {
            let actions = self.m.handle(event);
            self.carry_out(actions);
        }

        fn carry_out(&mut self, actions: Vec<Action>) {
            for action in actions {
                self.actions.push((self.now, action));
                match action {
                    Action::Probe { seq } => {
                        let at = self.now;
                        self.feed(Event::ProbeSent { at_ns: at, seq });
                        if self.master_up {
                            self.master.replies += 1;
                            self.master.last_seen_ns = at + RTT;
                            self.master.highest_seq = seq;
                            self.master.last_mac = MASTER_MAC;
                        }
                    }
                    Action::TakeOver { .. } => {
                        let at = self.now;
                        if self.bind_ok {
                            self.feed(Event::Bound {
                                bound_ns: at,
                                first_garp_ns: at,
                            });
                        } else {
                            self.feed(Event::BindFailed { at_ns: at });
                        }
                    }
                    Action::Release => {
                        let at = self.now;
                        self.feed(Event::Unbound { at_ns: at });
                    }
                    Action::Solicit if self.solicit_fails => {
                        self.feed(Event::SolicitFailed { at_ns: self.now });
                    }
                    Action::Solicit => {
                        if let Some(mac) = self.holder {
                            let at = self.now + RTT;
                            self.feed(Event::Claim {
                                at_ns: at,
                                mac,
                                answer: true,
                            });
                        }
                    }
                    _ => {}
                }
            }
        }

        fn count(&self, pred: impl Fn(&Action) -> bool) -> usize {
            self.actions.iter().filter(|(_, a)| pred(a)).count()
        }

        fn times(&self, pred: impl Fn(&Action) -> bool) -> Vec<u64> {
            self.actions
                .iter()
                .filter(|(_, a)| pred(a))
                .map(|(t, _)| *t)
                .collect()
        }

        fn standby(settings: Settings) -> Self {
            let mut sim = Self::new(settings);
            sim.run_for(20 * MS);
            assert_eq!(sim.m.state(), State::Standby);
            sim
        }

        fn active(settings: Settings) -> Self {
            let mut sim = Self::standby(settings);
            sim.master_up = false;
            sim.run_for(20 * MS);
            assert_eq!(sim.m.state(), State::Active);
            sim
        }
    }

    #[test]
    fn probes_go_out_every_interval_and_missed_slots_are_skipped() {
        let mut sim = Sim::new(settings(Failback::OnClaim));
        sim.run_for(10 * INTERVAL);
        let times = sim.times(|a| matches!(a, Action::Probe { .. }));
        assert_eq!(times.len(), 11, "{times:?}");
        assert!(times.windows(2).all(|w| w[1] - w[0] == INTERVAL));
        // Starved for 7 intervals: one probe when we wake, then on schedule.
        sim.now += 7 * INTERVAL;
        sim.step();
        sim.run_for(2 * INTERVAL);
        let times = sim.times(|a| matches!(a, Action::Probe { .. }));
        let late: Vec<u64> = times[11..].to_vec();
        assert_eq!(late.len(), 3, "no burst after a stall: {late:?}");
        assert!(late.windows(2).all(|w| w[1] - w[0] == INTERVAL));
    }

    /// A backup with a health check of fall 2 / rise 1.
    fn checked() -> Settings {
        let mut s = settings(Failback::OnClaim);
        s.health = Some((2, 1));
        s
    }

    #[test]
    fn no_takeover_before_the_first_health_verdict() {
        let mut sim = Sim::new(checked());
        sim.run_for(20 * MS);
        sim.master_up = false;
        sim.run_for(40 * MS);
        assert_eq!(sim.m.state(), State::Standby);
        assert_eq!(sim.count(|a| matches!(a, Action::TakeOver { .. })), 0);
        assert_eq!(
            sim.count(|a| matches!(a, Action::Note(Note::TakeoverRefused { .. }))),
            1,
            "said once, not at every probe"
        );
        assert_eq!(sim.m.stats().takeovers_refused, 1);
        // Healthy now: the takeover comes with the next sample, within one
        // interval.
        let at = sim.now;
        sim.feed(Event::Health {
            at_ns: at,
            healthy: true,
        });
        assert_eq!(
            sim.count(|a| matches!(a, Action::TakeOver { .. })),
            0,
            "a verdict alone never takes over: the next sample decides, with the witness's counters"
        );
        sim.run_for(INTERVAL);
        assert_eq!(sim.m.state(), State::Active);
        let took = sim.times(|a| matches!(a, Action::TakeOver { .. }));
        assert_eq!(took.len(), 1);
        assert!(
            took[0] - at <= INTERVAL,
            "{} ns after the verdict",
            took[0] - at
        );
    }

    #[test]
    fn an_unhealthy_backup_does_not_take_over_until_it_recovers() {
        let mut sim = Sim::new(checked());
        sim.feed(Event::Health {
            at_ns: T0,
            healthy: true,
        });
        sim.run_for(20 * MS);
        // fall 2: one failure is not enough...
        sim.feed(Event::Health {
            at_ns: sim.now,
            healthy: false,
        });
        assert_eq!(sim.m.health_verdict(), Some(true));
        sim.feed(Event::Health {
            at_ns: sim.now,
            healthy: false,
        });
        assert_eq!(sim.m.health_verdict(), Some(false));
        sim.master_up = false;
        sim.run_for(100 * MS);
        assert_eq!(sim.m.state(), State::Standby);
        assert!(sim.m.detector.refusing());
        // The master answering again ends the episode; dying again while
        // still unhealthy is a new refusal.
        sim.master_up = true;
        sim.run_for(20 * MS);
        assert!(!sim.m.detector.refusing());
        sim.master_up = false;
        sim.run_for(40 * MS);
        assert_eq!(sim.m.stats().takeovers_refused, 2);
        assert_eq!(sim.count(|a| matches!(a, Action::TakeOver { .. })), 0);
        sim.feed(Event::Health {
            at_ns: sim.now,
            healthy: true,
        });
        sim.run_for(INTERVAL);
        assert_eq!(sim.m.state(), State::Active);
    }

    #[test]
    fn an_active_backup_that_turns_unhealthy_keeps_the_vip_while_the_master_is_silent() {
        let mut s = checked();
        s.health = Some((1, 1));
        let mut sim = Sim::new(s);
        sim.feed(Event::Health {
            at_ns: T0,
            healthy: true,
        });
        sim.run_for(20 * MS);
        sim.master_up = false;
        sim.run_for(20 * MS);
        assert_eq!(sim.m.state(), State::Active);
        sim.feed(Event::Health {
            at_ns: sim.now,
            healthy: false,
        });
        assert_eq!(sim.m.state(), State::Active);
        assert_eq!(
            sim.count(|a| matches!(a, Action::Note(Note::UnhealthyHolding))),
            1
        );
        assert_eq!(sim.count(|a| matches!(a, Action::Release)), 0);
    }

    #[test]
    fn probe_limit_stops_probing() {
        let mut s = settings(Failback::OnClaim);
        s.probe_limit = Some(5);
        let mut sim = Sim::new(s);
        sim.run_for(30 * INTERVAL);
        assert_eq!(sim.count(|a| matches!(a, Action::Probe { .. })), 5);
        assert_eq!(sim.m.stats().probes_sent, 5);
    }

    #[test]
    fn takeover_carries_its_timeline_and_starts_the_garp_burst() {
        let mut sim = Sim::standby(settings(Failback::OnClaim));
        let last_reply = sim.master.last_seen_ns;
        sim.master_up = false;
        sim.run_for(40 * MS);
        let decision = sim
            .actions
            .iter()
            .find_map(|(_, a)| match a {
                Action::TakeOver { decision } => Some(*decision),
                _ => None,
            })
            .expect("took over");
        assert_eq!(decision.last_reply_ns, last_reply);
        assert_eq!(decision.deadline_ns, last_reply + 5 * INTERVAL);
        assert!(decision.decision_ns >= decision.deadline_ns);
        // Two more announcements, 10 ms apart, then none (no refresh).
        let garps = sim.times(|a| *a == Action::Announce);
        assert_eq!(garps.len(), 2, "{garps:?}");
        assert_eq!(garps[0], decision.decision_ns + 10 * MS);
        assert_eq!(garps[1], decision.decision_ns + 20 * MS);
        let st = sim.m.stats();
        assert_eq!(st.takeovers, 1);
        assert_eq!(st.last_takeover.map(|(d, _, _)| d), Some(decision));
    }

    #[test]
    fn a_failed_bind_is_retried_every_100_ms_until_it_works() {
        let mut sim = Sim::standby(settings(Failback::OnClaim));
        sim.master_up = false;
        sim.bind_ok = false;
        sim.run_for(250 * MS);
        let tries = sim.times(|a| matches!(a, Action::TakeOver { .. }));
        assert_eq!(tries.len(), 3, "{tries:?}");
        assert_eq!(tries[1] - tries[0], RETRY_NS);
        assert_eq!(sim.m.stats().takeovers, 0);
        sim.bind_ok = true;
        sim.run_for(150 * MS);
        assert_eq!(sim.m.stats().takeovers, 1);
        assert_eq!(sim.m.state(), State::Active);
        // Announced once bound, not before.
        let first_garp = sim.times(|a| *a == Action::Announce)[0];
        assert!(first_garp > tries[2]);
    }

    #[test]
    fn a_claim_by_the_returned_master_hands_the_vip_over_with_its_mac() {
        let mut sim = Sim::active(settings(Failback::OnClaim));
        sim.master_up = true;
        sim.run_for(20 * MS);
        assert!(sim.m.master_back());
        let at = sim.now;
        sim.holder = Some(MASTER_MAC);
        sim.feed(Event::Claim {
            at_ns: at,
            mac: MASTER_MAC,
            answer: false,
        });
        let tail: Vec<Action> = sim
            .actions
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|(_, a)| *a)
            .collect();
        assert!(matches!(tail[0], Action::Release), "{tail:?}");
        assert_eq!(tail[1], Action::HandOver { mac: MASTER_MAC });
        assert_eq!(
            tail[2],
            Action::SyncReleased,
            "the master kicks what we had"
        );
        assert_eq!(tail[3], Action::Solicit, "does it answer for the VIP?");
        assert!(matches!(tail[4], Action::Notify(t) if t.reason == Reason::MasterClaimed));
        assert_eq!(sim.m.state(), State::Standby);
        assert_eq!(sim.m.stats().releases, 1);
    }

    #[test]
    fn a_claim_from_another_mac_is_a_conflict_not_a_failback() {
        let mut sim = Sim::active(settings(Failback::OnClaim));
        sim.master_up = true;
        sim.run_for(20 * MS);
        for _ in 0..20 {
            let at = sim.now;
            sim.feed(Event::Claim {
                at_ns: at,
                mac: OTHER_MAC,
                answer: false,
            });
        }
        assert_eq!(sim.m.state(), State::Active);
        let conflicts = sim.count(|a| matches!(a, Action::Note(Note::Conflict { .. })));
        assert_eq!(conflicts, CONFLICTS_LOGGED as usize, "logged, but bounded");
    }

    #[test]
    fn a_returning_master_is_solicited_20_ms_doubling_to_1_s() {
        let mut sim = Sim::active(settings(Failback::OnClaim));
        sim.master_up = true;
        sim.run_for(3000 * MS);
        let times = sim.times(|a| *a == Action::Solicit);
        let gaps: Vec<u64> = times.windows(2).map(|w| (w[1] - w[0]) / MS).collect();
        assert_eq!(&gaps[..6], &[20, 40, 80, 160, 320, 640], "{gaps:?}");
        assert!(gaps[6..].iter().all(|g| *g == 1000), "{gaps:?}");
        assert_eq!(
            sim.count(|a| matches!(a, Action::Note(Note::MasterBack { .. }))),
            1
        );
    }

    #[test]
    fn manual_failback_never_solicits() {
        let mut sim = Sim::active(settings(Failback::Manual));
        sim.master_up = true;
        sim.run_for(500 * MS);
        assert_eq!(sim.count(|a| *a == Action::Solicit), 0);
        assert_eq!(sim.m.state(), State::Active);
    }

    #[test]
    fn a_failed_release_is_retried_while_standing_by() {
        let mut sim = Sim::active(settings(Failback::Manual));
        let at = sim.now;
        let actions = sim.m.handle(Event::OperatorRelease { at_ns: at });
        assert_eq!(actions[0], Action::Release);
        sim.feed(Event::UnbindFailed { at_ns: at });
        sim.master_up = true;
        sim.run_for(150 * MS);
        assert_eq!(
            sim.times(|a| *a == Action::Release).len(),
            1,
            "one retry after 100 ms (the first Release went to the test)"
        );
        assert_eq!(sim.m.stats().releases, 1);
    }

    #[test]
    fn the_kick_follows_the_bind_and_syncs_run_only_while_active() {
        let mut sim = Sim::standby(settings(Failback::OnClaim));
        assert_eq!(
            sim.count(|a| matches!(a, Action::Sync { .. })),
            0,
            "not holding"
        );
        sim.master_up = false;
        sim.run_for(20 * MS);
        let take = sim.times(|a| matches!(a, Action::TakeOver { .. }))[0];
        let kicks = sim.times(|a| *a == Action::Kick);
        assert_eq!(kicks, vec![take], "one kick, right after the bind");
        let k = sim
            .actions
            .iter()
            .position(|(_, a)| *a == Action::Kick)
            .expect("kicked");
        let t = sim
            .actions
            .iter()
            .position(|(_, a)| matches!(a, Action::TakeOver { .. }))
            .expect("took over");
        assert!(k > t, "after the takeover's bind");
        let syncs = sim.times(|a| matches!(a, Action::Sync { .. }));
        assert!(!syncs.is_empty(), "syncing while active: {syncs:?}");
        assert!(
            syncs.windows(2).all(|w| w[1] - w[0] == 10 * MS),
            "{syncs:?}"
        );
        // Released: syncs stop.
        let at = sim.now;
        sim.feed(Event::OperatorRelease { at_ns: at });
        let before = sim.count(|a| matches!(a, Action::Sync { .. }));
        sim.master_up = true;
        sim.run_for(100 * MS);
        assert_eq!(sim.count(|a| matches!(a, Action::Sync { .. })), before);
        assert_eq!(
            sim.count(|a| *a == Action::Kick),
            1,
            "never while not holding"
        );
    }

    #[test]
    fn with_kick_after_hook_the_kick_waits_for_the_active_hook() {
        let mut s = settings(Failback::OnClaim);
        s.conn.after_hook = true;
        let mut sim = Sim::standby(s);
        sim.feed(Event::HookDone); // the STANDBY hook
        sim.master_up = false;
        sim.run_for(20 * MS);
        assert_eq!(sim.m.state(), State::Active);
        assert_eq!(sim.count(|a| *a == Action::Kick), 0, "waits for the hook");
        sim.feed(Event::HookDone);
        assert_eq!(sim.count(|a| *a == Action::Kick), 1);
    }

    #[test]
    fn the_gap_between_probes_is_measured_once_the_master_answered() {
        let mut sim = Sim::standby(settings(Failback::OnClaim));
        assert!(sim.m.stats().max_probe_gap_ns <= INTERVAL);
        sim.now += 9 * MS;
        sim.step();
        assert!(sim.m.stats().max_probe_gap_ns >= 9 * MS);
    }

    /// Active, the master back (rise replies), answering probes.
    fn active_master_back(settings: Settings) -> Sim {
        let mut sim = Sim::active(settings);
        sim.master_up = true;
        sim.run_for(20 * MS);
        assert!(sim.m.master_back());
        sim
    }

    fn claim(sim: &mut Sim, mac: [u8; 6]) {
        let at = sim.now;
        sim.feed(Event::Claim {
            at_ns: at,
            mac,
            answer: false,
        });
    }

    #[test]
    fn a_forged_claim_costs_a_few_ms_the_vip_is_taken_back() {
        // Issue "Never lose the VIP", row 1: one ARP in the master's name
        // from a third host while the master (stopped, host up) answers
        // probes but does not hold the VIP.
        let mut sim = active_master_back(settings(Failback::OnClaim));
        sim.holder = None;
        let released = sim.now;
        claim(&mut sim, MASTER_MAC);
        assert_eq!(sim.m.state(), State::Standby);
        sim.run_for(VERIFY_WINDOW_NS + MS);
        assert_eq!(sim.m.state(), State::Active, "nobody answered: taken back");
        let solicits: Vec<u64> = sim
            .times(|a| *a == Action::Solicit)
            .into_iter()
            .filter(|t| *t >= released)
            .collect();
        assert_eq!(solicits.len(), 3, "{solicits:?}");
        let back = sim.times(|a| matches!(a, Action::TakeOver { .. }));
        let back = *back.last().expect("taken back");
        assert_eq!(back - released, VERIFY_WINDOW_NS, "bounded");
        assert!(sim.actions.iter().any(|(_, a)| matches!(
            a,
            Action::Notify(t) if t.reason == Reason::ClaimantSilent && t.to == State::Active
        )));
        assert_eq!(sim.m.stats().taken_back, 1);
    }

    #[test]
    fn a_claim_we_cannot_check_is_trusted_not_taken_back() {
        // No address to ask from (an IPv6 interface without one): the
        // silence would be ours, not the claimant's.
        let mut sim = active_master_back(settings(Failback::OnClaim));
        sim.holder = None;
        sim.solicit_fails = true;
        claim(&mut sim, MASTER_MAC);
        sim.run_for(VERIFY_WINDOW_NS * 4);
        assert_eq!(sim.m.state(), State::Standby);
        assert_eq!(sim.m.stats().taken_back, 0);
        assert!(
            sim.actions
                .iter()
                .any(|(_, a)| *a == Action::Note(Note::ClaimantUnchecked { mac: MASTER_MAC }))
        );
    }

    #[test]
    fn a_real_claimant_answers_and_keeps_the_vip() {
        let mut sim = active_master_back(settings(Failback::OnClaim));
        sim.holder = Some(MASTER_MAC);
        claim(&mut sim, MASTER_MAC);
        sim.run_for(200 * MS);
        assert_eq!(sim.m.state(), State::Standby);
        assert_eq!(sim.m.stats().taken_back, 0);
        // One solicitation answered at once: no more asked.
        assert_eq!(
            sim.actions
                .iter()
                .rev()
                .take_while(|(_, a)| !matches!(a, Action::Release))
                .filter(|(_, a)| *a == Action::Solicit)
                .count(),
            1
        );
    }

    #[test]
    fn an_answer_from_another_host_does_not_confirm_the_claimant() {
        let mut sim = active_master_back(settings(Failback::OnClaim));
        sim.holder = Some(OTHER_MAC);
        claim(&mut sim, MASTER_MAC);
        sim.run_for(VERIFY_WINDOW_NS + MS);
        assert_eq!(sim.m.state(), State::Active);
    }

    #[test]
    fn an_old_claim_sent_while_the_master_was_away_moves_nothing() {
        // Row 2: the forged ARP comes while the master is dead; the master
        // returns 2 s later without the VIP.
        let mut sim = Sim::active(settings(Failback::OnClaim));
        sim.run_for(10 * MS);
        claim(&mut sim, MASTER_MAC);
        sim.run_for(2000 * MS);
        sim.master_up = true;
        sim.run_for(100 * MS);
        assert!(sim.m.master_back());
        assert_eq!(sim.m.state(), State::Active);
        assert_eq!(sim.count(|a| *a == Action::Release), 0);
    }

    #[test]
    fn a_vip_removed_under_us_is_bound_again_and_announced() {
        let mut sim = Sim::active(settings(Failback::OnClaim));
        let at = sim.now;
        let takeovers = sim.m.stats().takeovers;
        sim.feed(Event::Address {
            at_ns: at,
            present: false,
        });
        assert!(
            sim.actions
                .iter()
                .any(|(_, a)| *a == Action::Note(Note::VipRemoved))
        );
        let binds = sim.times(|a| matches!(a, Action::TakeOver { .. }));
        assert_eq!(*binds.last().expect("bound again"), at);
        assert!(sim.m.holds_vip());
        assert_eq!(sim.m.stats().vip_restored, 1);
        assert_eq!(sim.m.stats().takeovers, takeovers, "not a takeover");
        assert_eq!(sim.count(|a| *a == Action::Kick), 1, "no second kick");
        // Our own bind's notification changes nothing.
        sim.feed(Event::Address {
            at_ns: at,
            present: true,
        });
        assert_eq!(sim.m.stats().vip_restored, 1);
        assert_eq!(sim.m.stats().stray_vips, 0);
    }

    #[test]
    fn a_stray_vip_is_removed_and_the_clients_pointed_at_the_master() {
        let mut sim = Sim::standby(settings(Failback::OnClaim));
        let at = sim.now;
        sim.feed(Event::Address {
            at_ns: at,
            present: true,
        });
        let tail: Vec<Action> = sim
            .actions
            .iter()
            .rev()
            .take(2)
            .rev()
            .map(|(_, a)| *a)
            .collect();
        assert_eq!(
            tail,
            vec![Action::Release, Action::HandOver { mac: MASTER_MAC }]
        );
        assert!(!sim.m.holds_vip());
        assert_eq!(sim.m.stats().stray_vips, 1);
        assert_eq!(sim.m.state(), State::Standby);
    }

    #[test]
    fn an_adopted_stray_is_kept_when_the_master_does_not_hold_the_vip() {
        let mut s = settings(Failback::OnClaim);
        s.stray = Stray::Adopt;
        let mut sim = Sim::standby(s);
        sim.holder = None;
        let at = sim.now;
        sim.feed(Event::Address {
            at_ns: at,
            present: true,
        });
        assert_eq!(sim.m.state(), State::Standby, "handed to the master first");
        sim.run_for(VERIFY_WINDOW_NS + MS);
        assert_eq!(
            sim.m.state(),
            State::Active,
            "the master does not have it: ours"
        );
        // With a master that holds it, it stays there.
        let mut sim = Sim::standby(s);
        sim.holder = Some(MASTER_MAC);
        let at = sim.now;
        sim.feed(Event::Address {
            at_ns: at,
            present: true,
        });
        sim.run_for(100 * MS);
        assert_eq!(sim.m.state(), State::Standby);
        assert!(!sim.m.holds_vip());
    }

    #[test]
    fn restart_with_the_vip_bound_hands_it_back_to_a_live_master() {
        // Row 5: killed while ACTIVE, restarted while the master is back.
        let mut sim = Sim::with_vip(settings(Failback::OnClaim), true);
        assert_eq!(sim.m.start(), vec![Action::Note(Note::Adopted)]);
        sim.holder = Some(MASTER_MAC);
        sim.run_for(20 * MS);
        assert_eq!(sim.m.state(), State::Standby);
        assert!(!sim.m.holds_vip());
        let mut handed = sim
            .actions
            .iter()
            .filter(|(_, a)| matches!(a, Action::Release | Action::HandOver { .. }))
            .map(|(_, a)| *a);
        assert_eq!(handed.next(), Some(Action::Release));
        assert_eq!(handed.next(), Some(Action::HandOver { mac: MASTER_MAC }));
        assert_eq!(sim.m.stats().taken_back, 0);
    }

    #[test]
    fn restart_with_the_vip_bound_keeps_it_while_the_master_is_dead() {
        let mut sim = Sim::with_vip(settings(Failback::OnClaim), true);
        sim.master_up = false;
        sim.run_for(30 * MS);
        assert_eq!(sim.m.state(), State::Active);
        assert!(sim.m.holds_vip());
        assert_eq!(sim.count(|a| *a == Action::Release), 0);
    }

    #[test]
    fn every_hand_back_to_a_live_master_announces_its_mac() {
        // Row 6: manual failback, `vipwatch release`; and a stop.
        for event in [
            Event::OperatorRelease { at_ns: 0 },
            Event::Shutdown { at_ns: 0 },
        ] {
            let mut sim = active_master_back(settings(Failback::Manual));
            sim.holder = Some(MASTER_MAC);
            let at = sim.now;
            let event = match event {
                Event::OperatorRelease { .. } => Event::OperatorRelease { at_ns: at },
                _ => Event::Shutdown { at_ns: at },
            };
            let actions = sim.m.handle(event);
            assert_eq!(actions[0], Action::Release, "{event:?}: {actions:?}");
            assert_eq!(
                actions[1],
                Action::HandOver { mac: MASTER_MAC },
                "{event:?}"
            );
            assert_eq!(actions[2], Action::SyncReleased, "{event:?}");
            let verifies = actions.contains(&Action::Solicit);
            assert_eq!(
                verifies,
                matches!(event, Event::OperatorRelease { .. }),
                "a stop does not wait to check: {actions:?}"
            );
        }
    }
}
