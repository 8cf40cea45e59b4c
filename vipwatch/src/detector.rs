//! The failover detector: a pure state machine.
//!
//! Modelled on holo-vrrp (`instance.rs`/`events.rs`): explicit [`State`]s,
//! [`Event`]s that carry their own timestamp (the clock is injected), a
//! [`Reason`] on every transition, and exactly one function,
//! [`Detector::handle`], that changes state and decides every side effect,
//! returned as [`Action`]s for the async shell (`backup.rs`) to carry out.
//!
//! All times are `CLOCK_MONOTONIC` nanoseconds, the clock `bpf_ktime_get_ns`
//! reads, so kernel timestamps from the maps and userspace timestamps compare
//! directly.
//!
//! # How death is decided
//!
//! VRRP declares the master down after `Master_Down_Interval` without an
//! advertisement (RFC 5798 §6.4.2). vipwatch inverts the roles: the backup
//! probes and the master answers, and `dead_after` replaces
//! `Master_Down_Interval`. Silence alone is not enough, though: if our own
//! probes did not go out (the daemon was stopped by `SIGSTOP`, starved of
//! CPU, or the send failed) the master had nothing to answer. So the master
//! is dead only when the silence lasted `dead_after` *and* at least
//! [`Settings::probes_needed`] probes really left after its last reply; a
//! deadline reached with fewer probes is *deferred*, never acted on.
//!
//! Silence is counted from the master's last reply, but never from before
//! the detector started or before the last release: after handing the VIP
//! back, the master gets a full `dead_after` to show it is alive.
//!
//! An optional witness (a third host probed with the same sequence numbers)
//! tells "the master is gone" from "we are cut off": if the witness answered
//! a probe the master did not (and has not gone silent since), our link
//! works and we take over; if both are silent, we are the isolated one and
//! must not hold the VIP ([`State::Isolated`]).
//!
//! Coming back is slower than going: after a silence the master counts as
//! back only after `rise` consecutive replies (the hysteresis of
//! keepalived's and HAProxy's `rise` health-check setting).

use std::collections::VecDeque;

/// Failback policy once the backup holds the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failback {
    /// Release the VIP as soon as the master claims it (ARP with sender IP
    /// = VIP from the master's MAC).
    OnClaim,
    /// Keep the VIP until the operator runs `vipwatch release`.
    Manual,
}

/// Detector settings (validated by the CLI before they get here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Probe interval, ns (> 0).
    pub interval_ns: u64,
    /// Silence after which the master is dead, ns (>= `interval_ns`).
    pub dead_after_ns: u64,
    /// Consecutive valid replies after which a silent master counts as back.
    pub rise: u32,
    /// When to hand the VIP back to the master.
    pub failback: Failback,
    /// A witness is probed too (see [`Event::Sample`]).
    pub witness: bool,
}

impl Settings {
    /// Probes that must really have been sent after the last reply before
    /// silence counts: `ceil(dead_after / interval)`.
    pub fn probes_needed(&self) -> u64 {
        self.dead_after_ns.div_ceil(self.interval_ns)
    }

    /// How long a claim by the master that is not back yet is remembered:
    /// twice what the `rise` rule needs, and at least 100 ms. A returning
    /// master that claims keeps claiming (a gratuitous ARP burst, and the
    /// answers to our solicitations), so a claim needs to outlive only its
    /// own rise; a claim left over from long before (one forged ARP while
    /// the master was away) must not decide a later failback.
    pub fn claim_fresh_ns(&self) -> u64 {
        (2 * u64::from(self.rise) * self.interval_ns).max(CLAIM_FRESH_MIN_NS)
    }

    /// How long a probe must have been out before it counts as unanswered:
    /// half an interval, at most 200 µs (a LAN round trip with room to
    /// spare). Without it, the probe sent just before the deadline (the
    /// `probes_needed`-th, by construction) would count while its reply is
    /// still on the wire, and 4 lost replies instead of 5 would be a death.
    pub fn answer_grace_ns(&self) -> u64 {
        (self.interval_ns / 2).min(ANSWER_GRACE_MAX_NS)
    }
}

/// Lower bound of [`Settings::claim_fresh_ns`].
pub const CLAIM_FRESH_MIN_NS: u64 = 100_000_000;

/// Upper bound of [`Settings::answer_grace_ns`].
pub const ANSWER_GRACE_MAX_NS: u64 = 200_000;

/// What the detector believes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// No valid reply from the master yet.
    Starting,
    /// The master is alive and holds the VIP; we stand by.
    Standby,
    /// The master is dead: we hold the VIP.
    Active,
    /// Master and witness are both silent: we are the one cut off, so we do
    /// not hold the VIP.
    Isolated,
}

/// Liveness counters of one peer, merged across CPUs (sum of counts, max
/// of timestamps/sequence numbers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSample {
    /// Valid replies so far.
    pub replies: u64,
    /// Kernel timestamp of the last valid reply (0 = never).
    pub last_seen_ns: u64,
    /// Highest probe sequence number answered (0 = never).
    pub highest_seq: u64,
}

/// Why a transition happened (logged, passed to the `--on-change` hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// First valid reply from the master.
    MasterReplied,
    /// Master silent for `silence_ns` with `probes` probes sent after its
    /// last reply (counted up to a few beyond [`Settings::probes_needed`]:
    /// the detector remembers only the most recent send times).
    MasterSilent { silence_ns: u64, probes: u64 },
    /// Master and witness both silent.
    WitnessSilent { silence_ns: u64 },
    /// The master claimed the VIP while we held it (on-claim failback).
    MasterClaimed,
    /// The operator ran `vipwatch release`.
    OperatorRelease,
    /// After isolation the master answered `rise` consecutive probes again.
    MasterBack { replies: u64 },
    /// The daemon is stopping.
    Shutdown,
    /// We released the VIP to a claimant (or handed it back) and nobody
    /// answered for it afterwards: we take it back (the claim was forged,
    /// or the claimant does not hold the VIP).
    ClaimantSilent,
}

/// Inputs. Every event carries the time it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A probe tick really went out (`seq` is shared by the master and
    /// witness probes of one tick).
    ProbeSent { at_ns: u64, seq: u64 },
    /// Counters re-read from the map at `now_ns`.
    Sample {
        now_ns: u64,
        master: PeerSample,
        witness: Option<PeerSample>,
    },
    /// An ARP claim of the VIP by another MAC; `from_master` is true when
    /// the MAC is the master's (or the master's MAC is not known yet).
    Claim { at_ns: u64, from_master: bool },
    /// `vipwatch release` was run for our interface.
    OperatorRelease { at_ns: u64 },
    /// SIGINT/SIGTERM.
    Shutdown { at_ns: u64 },
}

/// Side effects for the shell to perform, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Bind the VIP (rtnetlink) then announce it (GARP burst).
    TakeOver,
    /// Remove the VIP.
    Release,
    /// Report a transition: log line, stats, `--on-change` hook.
    Notify(Transition),
    /// The master is dead, but our own service is unhealthy: no takeover
    /// (once per episode; we take over as soon as we are healthy again).
    Refused(Reason),
}

/// One state change, as reported by [`Action::Notify`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why.
    pub reason: Reason,
    /// Time of the event that caused it.
    pub at_ns: u64,
}

/// Probe send times remembered beyond [`Settings::probes_needed`]. Deciding
/// death only needs to know whether *enough* probes went out after a
/// reference time, so the most recent `probes_needed + slack` send times
/// suffice; the slack only makes the count in [`Reason::MasterSilent`] a
/// little more informative.
const PROBE_MEMORY_SLACK: usize = 4;

/// The failover detector. See the module documentation.
///
/// Build it with validated [`Settings`] (`interval_ns > 0`), feed it every
/// [`Event`] through [`Detector::handle`], carry out the returned
/// [`Action`]s in order, and sample the maps again at
/// [`Detector::next_deadline`].
#[derive(Clone, Debug)]
pub struct Detector {
    settings: Settings,
    state: State,
    /// When the detector started: silence is never counted from before it,
    /// since nothing was probing then.
    start_ns: u64,
    /// Time of the last release (master claim, operator): the master gets a
    /// full `dead_after` from then before we may take over again.
    reset_ns: u64,
    /// Master counters, merged over every sample (field-wise max), so a
    /// stale sample can never move anything backwards.
    master: PeerSample,
    /// Witness counters, merged the same way; `None` until a sample carries
    /// them.
    witness: Option<PeerSample>,
    /// Send times of the most recent probes, oldest first.
    probes: VecDeque<u64>,
    /// Bound on `probes.len()`.
    probe_memory: usize,
    /// Sequence number of the last recorded probe, to ignore duplicates.
    last_probe_seq: Option<u64>,
    /// Latest sample time seen.
    last_sample_ns: u64,
    /// The last sample reached a deadline but the decision has to wait for
    /// more evidence (more probes sent, or the witness).
    waiting: bool,
    /// See [`Detector::deferred`].
    deferred: u64,
    /// The master's current run of consecutive replies since it went
    /// silent (tracked in [`State::Active`] and [`State::Isolated`] only).
    run: Option<Run>,
    /// See [`Detector::last_decision`].
    last_decision: Option<(u64, u64, u64)>,
    /// When the master claimed the VIP while not back yet (see
    /// `active_claim`).
    pending_claim: Option<u64>,
    /// Our own service passes its health check (always, without one). An
    /// unhealthy backup does not take over: it would take the clients to a
    /// service that cannot answer them (keepalived's `track_script`).
    healthy: bool,
    /// A takeover is being refused for ill health ([`Action::Refused`] was
    /// returned): until the master is alive again or we are healthy.
    refusing: bool,
}

/// The master counters just before the first reply of a run of consecutive
/// replies.
///
/// Replies are consecutive when the reply count grew exactly as much as the
/// highest answered sequence number since the run started: every probe in
/// between was answered once. Anything else (a skipped sequence number, or a
/// duplicated reply) breaks the run. Without per-sequence data that is the
/// only safe reading, and it errs towards "not back yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    replies: u64,
    seq: u64,
}

impl Run {
    /// The run that would start right after `sample`.
    fn after(sample: PeerSample) -> Self {
        Self {
            replies: sample.replies,
            seq: sample.highest_seq,
        }
    }

    /// A run made of the latest reply of `sample` alone.
    fn last_reply_of(sample: PeerSample) -> Self {
        Self {
            replies: sample.replies.saturating_sub(1),
            seq: sample.highest_seq.saturating_sub(1),
        }
    }

    /// Are all replies in `sample` since the run started consecutive?
    fn holds(self, sample: PeerSample) -> bool {
        matches!(
            (sample.replies.checked_sub(self.replies), sample.highest_seq.checked_sub(self.seq)),
            (Some(replies), Some(seqs)) if replies == seqs
        )
    }

    fn len(self, sample: PeerSample) -> u64 {
        sample.replies.saturating_sub(self.replies)
    }
}

/// Whether one peer is dead at one instant (see [`Detector::verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Not proven dead: the deadline has not been reached.
    Alive,
    /// The deadline was reached but fewer than `probes_needed` probes went
    /// out after the last reply: the silence is ours, not the peer's.
    Deferred,
    /// Silent for `silence_ns` although `probes` probes went out.
    Dead { silence_ns: u64, probes: u64 },
}

/// What the witness says about a silent master.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Witness {
    /// It answered a probe the master did not, and is not silent itself:
    /// our link works, the master is the one gone.
    Newer,
    /// It is silent too: we are the one cut off.
    Silent { silence_ns: u64 },
    /// Its deadline passed with too few probes sent: no conclusion.
    Deferred,
    /// Neither: it went quiet with the master (same sequence number) but
    /// not for `dead_after` yet; wait for it to either answer or die.
    Undecided,
}

impl Detector {
    /// A detector in [`State::Starting`]; silence is counted from `now_ns`.
    pub fn new(settings: Settings, now_ns: u64) -> Self {
        let needed = usize::try_from(settings.probes_needed()).unwrap_or(usize::MAX);
        Self {
            settings,
            state: State::Starting,
            start_ns: now_ns,
            reset_ns: now_ns,
            master: PeerSample::default(),
            witness: None,
            probes: VecDeque::new(),
            probe_memory: needed.saturating_add(PROBE_MEMORY_SLACK),
            last_probe_seq: None,
            last_sample_ns: now_ns,
            waiting: false,
            deferred: 0,
            run: None,
            last_decision: None,
            pending_claim: None,
            healthy: true,
            refusing: false,
        }
    }

    /// Our own service's health verdict changed. Healthy again while the
    /// master is dead: the next sample takes over.
    pub fn set_healthy(&mut self, healthy: bool) {
        self.healthy = healthy;
        if healthy {
            self.refusing = false;
        }
    }

    /// Whether a takeover is being refused for ill health right now.
    #[cfg(test)]
    pub fn refusing(&self) -> bool {
        self.refusing
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The settings it was built with.
    #[cfg(test)]
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The ONE function that changes state; returns the side effects in
    /// order. A transition always ends the list with exactly one
    /// [`Action::Notify`]; no other action is ever returned without one.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match (self.state, event) {
            (_, Event::ProbeSent { at_ns, seq }) => {
                self.record_probe(at_ns, seq);
                Vec::new()
            }
            (
                state,
                Event::Sample {
                    now_ns,
                    master,
                    witness,
                },
            ) => {
                let prev = self.absorb(now_ns, master, witness);
                // The witness only counts when this sample carries it: the
                // shell passes it exactly when one is configured.
                let witnessed = witness.is_some();
                match state {
                    State::Starting | State::Standby => {
                        self.standby_sample(now_ns, prev, witnessed)
                    }
                    State::Active => self.active_sample(now_ns, prev, witnessed),
                    State::Isolated => self.isolated_sample(now_ns, prev, witnessed),
                }
            }
            // The master announcing itself is the failback signal, but only
            // when we hold the VIP and the policy says so. A claim from
            // another MAC is an address conflict the shell reports; giving
            // the VIP to an unknown host would be wrong.
            (
                State::Active,
                Event::Claim {
                    at_ns,
                    from_master: true,
                },
            ) if self.settings.failback == Failback::OnClaim => self.active_claim(at_ns),
            // In Standby the master re-announcing the VIP is normal.
            (_, Event::Claim { .. }) => Vec::new(),
            (State::Active, Event::OperatorRelease { at_ns }) => {
                self.release(at_ns, Reason::OperatorRelease)
            }
            (_, Event::OperatorRelease { .. }) => Vec::new(),
            // Do not leave the VIP bound on a host that no longer watches
            // over it.
            (State::Active, Event::Shutdown { at_ns }) => self.release(at_ns, Reason::Shutdown),
            (_, Event::Shutdown { .. }) => Vec::new(),
        }
    }

    /// Absolute time (ns) at which the shell must next re-read the map and
    /// feed [`Event::Sample`].
    ///
    /// In [`State::Starting`] and [`State::Standby`] that is the master's
    /// deadline (last reply + `dead_after`). When the last sample reached a
    /// deadline but the decision had to wait (too few probes sent, or the
    /// witness undecided), and in [`State::Active`] and [`State::Isolated`]
    /// (where the master's return and the witness are watched), it is one
    /// interval after the last sample: the next probe may settle it, so the
    /// decision comes less than an interval after it becomes possible.
    pub fn next_deadline(&self) -> u64 {
        let recheck = self
            .last_sample_ns
            .saturating_add(self.settings.interval_ns);
        match self.state {
            // The deadline has passed; look again every interval (health
            // may return, the master may answer).
            State::Starting | State::Standby if self.refusing => recheck,
            State::Starting | State::Standby if !self.waiting => self.master_deadline(),
            // Waiting for the last needed probe's grace: look again the
            // moment it is over, not a whole interval later.
            State::Starting | State::Standby => match self.countable_at(self.master_reference()) {
                Some(at) if at > self.last_sample_ns => at.min(recheck),
                _ => recheck,
            },
            _ => recheck,
        }
    }

    /// Deadlines reached with too few probes sent (silence excused because
    /// our own probes did not go out), counted once per sample.
    pub fn deferred(&self) -> u64 {
        self.deferred
    }

    /// True once the master has answered `rise` consecutive probes since it
    /// went silent (for logs/stats while Active). Always false in
    /// [`State::Starting`] and [`State::Standby`], where the master was
    /// never considered gone.
    pub fn master_back(&self) -> bool {
        matches!(self.state, State::Active | State::Isolated) && self.run_len() >= self.rise()
    }

    /// Timeline of the last takeover decision: `(last_reply_ns,
    /// deadline_ns, decision_ns)`, where `last_reply_ns` is the silence
    /// reference (the master's last reply, or the start or last release if
    /// later) and `deadline_ns` is `last_reply_ns + dead_after_ns`.
    pub fn last_decision(&self) -> Option<(u64, u64, u64)> {
        self.last_decision
    }

    // --- Events -----------------------------------------------------------

    fn record_probe(&mut self, at_ns: u64, seq: u64) {
        // One tick is one probe, whether the shell reports it once or once
        // per peer: counting it twice would fake the evidence that our
        // probes went out.
        if self.last_probe_seq.is_some_and(|last| seq <= last) {
            return;
        }
        self.last_probe_seq = Some(seq);
        self.probes.push_back(at_ns);
        while self.probes.len() > self.probe_memory {
            self.probes.pop_front();
        }
    }

    /// Merges a sample into what we know; returns the master counters as
    /// they were before it.
    fn absorb(
        &mut self,
        now_ns: u64,
        master: PeerSample,
        witness: Option<PeerSample>,
    ) -> PeerSample {
        let prev = self.master;
        self.master = merge(self.master, master);
        if let Some(w) = witness {
            self.witness = Some(merge(self.witness.unwrap_or_default(), w));
        }
        self.last_sample_ns = self.last_sample_ns.max(now_ns);
        self.waiting = false;
        prev
    }

    fn standby_sample(&mut self, now_ns: u64, prev: PeerSample, witnessed: bool) -> Vec<Action> {
        match self.verdict(self.master_reference(), now_ns) {
            Verdict::Alive => {
                self.refusing = false;
                if self.state == State::Starting && self.master.replies > prev.replies {
                    self.transition(State::Standby, Reason::MasterReplied, now_ns, Vec::new())
                } else {
                    Vec::new()
                }
            }
            Verdict::Deferred => {
                self.defer();
                Vec::new()
            }
            Verdict::Dead { silence_ns, probes } => {
                let silent = Reason::MasterSilent { silence_ns, probes };
                if !witnessed {
                    return self.take_over(now_ns, silent);
                }
                match self.witness_view(now_ns) {
                    Witness::Newer => self.take_over(now_ns, silent),
                    Witness::Silent { silence_ns } => self.transition(
                        State::Isolated,
                        Reason::WitnessSilent { silence_ns },
                        now_ns,
                        Vec::new(),
                    ),
                    Witness::Deferred => {
                        self.defer();
                        Vec::new()
                    }
                    Witness::Undecided => {
                        self.waiting = true;
                        Vec::new()
                    }
                }
            }
        }
    }

    /// A claim by the master while we hold the VIP (on-claim failback).
    ///
    /// Hysteresis (issue "Failover": the master counts as back only after
    /// `rise` consecutive replies): a claim from a master that is not back
    /// yet is remembered, not obeyed, and honoured by the sample that sees
    /// the master's run reach `rise`, if that comes within
    /// [`Settings::claim_fresh_ns`]. A claim older than our takeover
    /// decision (a ring-buffer event that raced with it) is stale.
    fn active_claim(&mut self, at_ns: u64) -> Vec<Action> {
        if self
            .last_decision
            .is_some_and(|(_, _, decided)| at_ns < decided)
        {
            return Vec::new();
        }
        if self.master_back() {
            return self.release(at_ns, Reason::MasterClaimed);
        }
        self.pending_claim = Some(at_ns);
        Vec::new()
    }

    /// We released the VIP (to a claim, or handing it back) and nobody
    /// answers for it: take it again. Only from [`State::Standby`].
    pub fn take_back(&mut self, now_ns: u64) -> Vec<Action> {
        if self.state != State::Standby {
            return Vec::new();
        }
        self.take_over(now_ns, Reason::ClaimantSilent)
    }

    /// Whether the master claimed the VIP while not back yet.
    #[cfg(test)]
    pub fn claim_pending(&self) -> bool {
        self.pending_claim.is_some()
    }

    fn active_sample(&mut self, now_ns: u64, prev: PeerSample, witnessed: bool) -> Vec<Action> {
        let master = self.track_master(now_ns, prev);
        if let Some(claimed) = self.pending_claim {
            if now_ns.saturating_sub(claimed) > self.settings.claim_fresh_ns() {
                // Nobody claimed since: an old claim (a forgery sent while
                // the master was away, or a master that changed its mind)
                // does not move the VIP.
                self.pending_claim = None;
            } else if self.master_back() {
                return self.release(now_ns, Reason::MasterClaimed);
            }
        }
        if !witnessed {
            return Vec::new();
        }
        let witness = self.verdict(self.witness_reference(), now_ns);
        match (master, witness) {
            // Both silent with our probes going out: we are the one cut off,
            // and a cut-off host holding the VIP is a split brain waiting for
            // the link to heal.
            (Verdict::Dead { .. }, Verdict::Dead { silence_ns, .. }) => self.transition(
                State::Isolated,
                Reason::WitnessSilent { silence_ns },
                now_ns,
                vec![Action::Release],
            ),
            (Verdict::Alive, _) | (_, Verdict::Alive) => Vec::new(),
            // Deadlines passed but our own probes did not go out.
            _ => {
                self.defer();
                Vec::new()
            }
        }
    }

    fn isolated_sample(&mut self, now_ns: u64, prev: PeerSample, witnessed: bool) -> Vec<Action> {
        let master = self.track_master(now_ns, prev);
        // Hysteresis, as for the takeover: one reply after an isolation may
        // be a flapping link, `rise` consecutive ones are a working path.
        let run = self.run_len();
        if run >= self.rise() {
            return self.transition(
                State::Standby,
                Reason::MasterBack { replies: run },
                now_ns,
                Vec::new(),
            );
        }
        match master {
            Verdict::Dead { silence_ns, probes }
                if witnessed && self.witness_view(now_ns) == Witness::Newer =>
            {
                self.take_over(now_ns, Reason::MasterSilent { silence_ns, probes })
            }
            _ => Vec::new(),
        }
    }

    // --- Effects ----------------------------------------------------------

    fn take_over(&mut self, now_ns: u64, reason: Reason) -> Vec<Action> {
        if !self.healthy {
            if self.refusing {
                return Vec::new();
            }
            self.refusing = true;
            return vec![Action::Refused(reason)];
        }
        let reference = self.master_reference();
        self.last_decision = Some((reference, self.master_deadline(), now_ns));
        self.run = None;
        self.pending_claim = None;
        self.transition(State::Active, reason, now_ns, vec![Action::TakeOver])
    }

    fn release(&mut self, at_ns: u64, reason: Reason) -> Vec<Action> {
        // The master gets a full `dead_after` from now to show it is alive
        // before we may take over again; otherwise a master that claims the
        // VIP right after a slow boot would be declared dead at once on its
        // old silence.
        self.reset_ns = self.reset_ns.max(at_ns);
        self.run = None;
        self.pending_claim = None;
        self.waiting = false;
        self.transition(State::Standby, reason, at_ns, vec![Action::Release])
    }

    /// Moves to `to` and appends its one [`Action::Notify`], always last.
    fn transition(
        &mut self,
        to: State,
        reason: Reason,
        at_ns: u64,
        mut actions: Vec<Action>,
    ) -> Vec<Action> {
        actions.push(Action::Notify(Transition {
            from: self.state,
            to,
            reason,
            at_ns,
        }));
        self.state = to;
        self.waiting = false;
        actions
    }

    fn defer(&mut self) {
        self.deferred += 1;
        self.waiting = true;
    }

    // --- Evidence ---------------------------------------------------------

    /// Silence is counted from the master's last reply, but never
    /// from before we started or before the last release.
    fn master_reference(&self) -> u64 {
        self.master
            .last_seen_ns
            .max(self.start_ns)
            .max(self.reset_ns)
    }

    /// The idea of RFC 5798 §6.4.2 (`Master_Down_Interval`), with
    /// `dead_after` in its place.
    fn master_deadline(&self) -> u64 {
        self.master_reference()
            .saturating_add(self.settings.dead_after_ns)
    }

    /// The witness's silence reference; the start time when it never
    /// answered.
    fn witness_reference(&self) -> u64 {
        self.witness
            .map_or(0, |w| w.last_seen_ns)
            .max(self.start_ns)
    }

    /// Dead iff silent for `dead_after` since `reference` *and*
    /// enough probes went out after `reference` to have been answered.
    fn verdict(&self, reference: u64, now_ns: u64) -> Verdict {
        if now_ns < reference.saturating_add(self.settings.dead_after_ns) {
            return Verdict::Alive;
        }
        let probes = self.unanswered_probes(reference, now_ns);
        if probes < self.settings.probes_needed() {
            Verdict::Deferred
        } else {
            Verdict::Dead {
                silence_ns: now_ns.saturating_sub(reference),
                probes,
            }
        }
    }

    /// What the witness says, given that the master is dead.
    fn witness_view(&self, now_ns: u64) -> Witness {
        let newer = self
            .witness
            .is_some_and(|w| w.highest_seq > self.master.highest_seq);
        match (newer, self.verdict(self.witness_reference(), now_ns)) {
            // An old answer proves the link worked back then, not now: if
            // the witness has been silent for `dead_after` since, we are
            // isolated, whatever it answered before.
            (_, Verdict::Dead { silence_ns, .. }) => Witness::Silent { silence_ns },
            (true, _) => Witness::Newer,
            (false, Verdict::Deferred) => Witness::Deferred,
            (false, Verdict::Alive) => Witness::Undecided,
        }
    }

    /// Probes sent strictly after `t`, counted up to the remembered window
    /// (always more than `probes_needed`). Probes are reported in send
    /// order (increasing `seq`), so the newest are at the back.
    /// Probes sent after `t` that have had [`Settings::answer_grace_ns`] to
    /// be answered by `now_ns`.
    fn unanswered_probes(&self, t: u64, now_ns: u64) -> u64 {
        let cutoff = now_ns.saturating_sub(self.settings.answer_grace_ns());
        let n = self
            .probes
            .iter()
            .rev()
            .skip_while(|&&at| at > cutoff)
            .take_while(|&&at| at > t)
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// When enough probes sent after `t` will have had their grace to be
    /// answered, if enough were sent: the moment to look again.
    fn countable_at(&self, t: u64) -> Option<u64> {
        let needed = usize::try_from(self.settings.probes_needed()).ok()?;
        self.probes
            .iter()
            .filter(|&&at| at > t)
            .nth(needed.checked_sub(1)?)
            .map(|at| at.saturating_add(self.settings.answer_grace_ns()))
    }

    #[cfg(test)]
    fn probes_after(&self, t: u64) -> u64 {
        let n = self.probes.iter().rev().take_while(|&&at| at > t).count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Follows the master's run of consecutive replies while it is
    /// considered gone; returns its verdict. A master that is silent again
    /// loses its run.
    fn track_master(&mut self, now_ns: u64, prev: PeerSample) -> Verdict {
        let cur = self.master;
        if cur.replies > prev.replies {
            self.run = Some(match self.run {
                Some(run) if run.holds(cur) => run,
                // No run yet, or a gap: the run may still cover everything
                // since the previous sample...
                _ if Run::after(prev).holds(cur) => Run::after(prev),
                // ...otherwise only the latest reply is known to count.
                _ => Run::last_reply_of(cur),
            });
        }
        let verdict = self.verdict(self.master_reference(), now_ns);
        if matches!(verdict, Verdict::Dead { .. }) {
            self.run = None;
        }
        verdict
    }

    fn run_len(&self) -> u64 {
        self.run.map_or(0, |run| run.len(self.master))
    }

    /// `rise`, where 0 behaves as 1: a master that never answered again is
    /// not back.
    fn rise(&self) -> u64 {
        u64::from(self.settings.rise.max(1))
    }
}

/// Field-wise max: counters only grow, so the max of two reads is the newer
/// one, and a stale sample never moves anything backwards.
fn merge(old: PeerSample, new: PeerSample) -> PeerSample {
    let PeerSample {
        replies,
        last_seen_ns,
        highest_seq,
    } = new;
    PeerSample {
        replies: old.replies.max(replies),
        last_seen_ns: old.last_seen_ns.max(last_seen_ns),
        highest_seq: old.highest_seq.max(highest_seq),
    }
}

#[cfg(test)]
mod tests {
    //! Every timing rule against a fake clock: times are plain `u64`s.

    use super::*;

    const MS: u64 = 1_000_000;
    /// Detector start: far from 0 so "never" (0) and "start" differ.
    const T0: u64 = 10_000 * MS;
    const INTERVAL: u64 = 10 * MS;
    const DEAD_AFTER: u64 = 50 * MS;
    const RTT: u64 = MS / 10;

    fn settings(witness: bool, failback: Failback) -> Settings {
        Settings {
            interval_ns: INTERVAL,
            dead_after_ns: DEAD_AFTER,
            rise: 3,
            failback,
            witness,
        }
    }

    /// At most one Notify, always last, and no action without it.
    fn assert_well_formed(actions: &[Action]) {
        let notifies = actions
            .iter()
            .filter(|a| matches!(a, Action::Notify(_)))
            .count();
        assert!(notifies <= 1, "more than one Notify: {actions:?}");
        if !actions.is_empty() {
            assert!(
                matches!(actions.last(), Some(Action::Notify(_))),
                "action without a trailing Notify: {actions:?}"
            );
        }
    }

    fn transition(actions: &[Action]) -> Option<Transition> {
        match actions.last() {
            Some(Action::Notify(t)) => Some(*t),
            _ => None,
        }
    }

    /// A backup probing a master (and maybe a witness) every interval.
    struct Sim {
        det: Detector,
        now: u64,
        seq: u64,
        master: PeerSample,
        witness: Option<PeerSample>,
        transitions: Vec<Transition>,
    }

    impl Sim {
        fn new(settings: Settings) -> Self {
            Self {
                det: Detector::new(settings, T0),
                now: T0,
                seq: 0,
                master: PeerSample::default(),
                witness: settings.witness.then(PeerSample::default),
                transitions: Vec::new(),
            }
        }

        fn handle(&mut self, event: Event) -> Vec<Action> {
            let actions = self.det.handle(event);
            assert_well_formed(&actions);
            if let Some(t) = transition(&actions) {
                assert_eq!(
                    t.to,
                    self.det.state(),
                    "Notify does not match the new state"
                );
                self.transitions.push(t);
            }
            actions
        }

        fn sample(&mut self) -> Vec<Action> {
            self.handle(Event::Sample {
                now_ns: self.now,
                master: self.master,
                witness: self.witness,
            })
        }

        /// One probe tick at `now`; the peers that answer do so after RTT.
        /// Then the clock moves one interval on and the maps are sampled.
        fn tick(&mut self, master: bool, witness: bool) -> Vec<Action> {
            self.seq += 1;
            self.handle(Event::ProbeSent {
                at_ns: self.now,
                seq: self.seq,
            });
            if master {
                answer(&mut self.master, self.now + RTT, self.seq);
            }
            if witness && let Some(w) = self.witness.as_mut() {
                answer(w, self.now + RTT, self.seq);
            }
            self.now += INTERVAL;
            self.sample()
        }

        /// `n` ticks; returns every action they produced.
        fn ticks(&mut self, n: usize, master: bool, witness: bool) -> Vec<Action> {
            (0..n).flat_map(|_| self.tick(master, witness)).collect()
        }

        /// Up and running in Standby.
        fn standby(settings: Settings) -> Self {
            let mut sim = Self::new(settings);
            sim.ticks(3, true, true);
            assert_eq!(sim.det.state(), State::Standby);
            sim
        }

        /// The master died and we took over.
        fn active(settings: Settings) -> Self {
            let mut sim = Self::standby(settings);
            sim.ticks(8, false, true);
            assert_eq!(sim.det.state(), State::Active);
            sim
        }

        /// Master and witness both went silent: isolated.
        fn isolated(settings: Settings) -> Self {
            let mut sim = Self::standby(settings);
            sim.ticks(8, false, false);
            assert_eq!(sim.det.state(), State::Isolated);
            sim
        }
    }

    fn answer(peer: &mut PeerSample, at: u64, seq: u64) {
        peer.replies += 1;
        peer.last_seen_ns = at;
        peer.highest_seq = seq;
    }

    fn sample(now_ns: u64, master: PeerSample) -> Event {
        Event::Sample {
            now_ns,
            master,
            witness: None,
        }
    }

    fn peer(replies: u64, last_seen_ns: u64, highest_seq: u64) -> PeerSample {
        PeerSample {
            replies,
            last_seen_ns,
            highest_seq,
        }
    }

    #[test]
    fn probes_needed_rounds_up() {
        for (interval, dead_after, needed) in [(10, 50, 5), (10, 55, 6), (10, 10, 1), (3, 10, 4)] {
            let s = Settings {
                interval_ns: interval,
                dead_after_ns: dead_after,
                ..settings(false, Failback::OnClaim)
            };
            assert_eq!(s.probes_needed(), needed, "{interval}/{dead_after}");
        }
    }

    #[test]
    fn starts_in_starting_and_first_reply_means_standby() {
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        assert_eq!(d.state(), State::Starting);
        assert_eq!(d.next_deadline(), T0 + DEAD_AFTER);
        assert!(d.handle(sample(T0 + MS, PeerSample::default())).is_empty());
        assert_eq!(d.state(), State::Starting);
        d.handle(Event::ProbeSent {
            at_ns: T0 + MS,
            seq: 1,
        });
        let actions = d.handle(sample(T0 + 2 * MS, peer(1, T0 + MS + RTT, 1)));
        assert_eq!(
            actions,
            vec![Action::Notify(Transition {
                from: State::Starting,
                to: State::Standby,
                reason: Reason::MasterReplied,
                at_ns: T0 + 2 * MS,
            })]
        );
        assert_eq!(d.next_deadline(), T0 + MS + RTT + DEAD_AFTER);
    }

    #[test]
    fn takeover_exactly_at_deadline_not_one_ns_before() {
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        let last = T0 + MS;
        d.handle(Event::ProbeSent { at_ns: T0, seq: 1 });
        d.handle(sample(last, peer(1, last, 1)));
        assert_eq!(d.state(), State::Standby);
        // Each probe has had its answer grace by the deadline.
        let grace = d.settings().answer_grace_ns();
        for k in 1..=5 {
            d.handle(Event::ProbeSent {
                at_ns: last + k * INTERVAL - grace,
                seq: 1 + k,
            });
        }
        let deadline = last + DEAD_AFTER;
        assert_eq!(d.next_deadline(), deadline);
        assert!(d.handle(sample(deadline - 1, peer(1, last, 1))).is_empty());
        assert_eq!(d.state(), State::Standby);
        assert_eq!(d.deferred(), 0);

        let actions = d.handle(sample(deadline, peer(1, last, 1)));
        assert_eq!(
            actions,
            vec![
                Action::TakeOver,
                Action::Notify(Transition {
                    from: State::Standby,
                    to: State::Active,
                    reason: Reason::MasterSilent {
                        silence_ns: DEAD_AFTER,
                        probes: 5,
                    },
                    at_ns: deadline,
                }),
            ]
        );
        assert_eq!(d.last_decision(), Some((last, deadline, deadline)));
    }

    #[test]
    fn a_probe_whose_reply_may_still_be_on_the_wire_does_not_count() {
        // The 5th probe leaves right at the deadline: with 4 replies lost it
        // is not yet a death; it becomes one only if that probe stays
        // unanswered for its grace, and the detector looks again exactly
        // then.
        let settings = settings(false, Failback::OnClaim);
        let grace = settings.answer_grace_ns();
        let last = T0 + MS;
        let deadline = last + DEAD_AFTER;
        let setup = || {
            let mut d = Detector::new(settings, T0);
            d.handle(Event::ProbeSent { at_ns: T0, seq: 1 });
            d.handle(sample(last, peer(1, last, 1)));
            for k in 1..=5 {
                d.handle(Event::ProbeSent {
                    at_ns: last + k * INTERVAL,
                    seq: 1 + k,
                });
            }
            assert!(d.handle(sample(deadline, peer(1, last, 1))).is_empty());
            assert_eq!(d.state(), State::Standby);
            assert_eq!(d.next_deadline(), deadline + grace);
            d
        };
        // Its reply arrives within the grace: alive.
        let mut d = setup();
        assert!(
            d.handle(sample(deadline + grace, peer(2, deadline + RTT, 6)))
                .is_empty()
        );
        assert_eq!(d.state(), State::Standby);
        // It stays unanswered: dead, one grace after the deadline.
        let mut d = setup();
        let actions = d.handle(sample(deadline + grace, peer(1, last, 1)));
        assert_eq!(actions.first(), Some(&Action::TakeOver));
        assert_eq!(d.last_decision(), Some((last, deadline, deadline + grace)));
    }

    #[test]
    fn master_that_never_answers_is_taken_over_from_starting() {
        let mut sim = Sim::new(settings(false, Failback::OnClaim));
        let actions = sim.ticks(6, false, false);
        assert_eq!(actions.first(), Some(&Action::TakeOver));
        let t = sim.transitions[0];
        assert_eq!((t.from, t.to), (State::Starting, State::Active));
        // Silence counted from the start, not from "never" (0); the probe
        // sent in the very nanosecond of the start is not "after" it.
        assert_eq!(
            t.reason,
            Reason::MasterSilent {
                silence_ns: DEAD_AFTER + INTERVAL,
                probes: 5
            }
        );
        assert_eq!(
            sim.det.last_decision(),
            Some((T0, T0 + DEAD_AFTER, t.at_ns))
        );
    }

    #[test]
    fn takeover_within_one_interval_of_the_deadline() {
        let mut sim = Sim::standby(settings(false, Failback::OnClaim));
        let last_reply = sim.master.last_seen_ns;
        let mut decided = None;
        for _ in 0..20 {
            sim.seq += 1;
            let seq = sim.seq;
            sim.handle(Event::ProbeSent {
                at_ns: sim.now,
                seq,
            });
            // The shell samples at the deadline or at the next probe.
            let deadline = sim.det.next_deadline();
            sim.now = deadline.min(sim.now + INTERVAL);
            if !sim.sample().is_empty() {
                decided = Some(sim.now);
                break;
            }
            sim.now = sim.now.next_multiple_of(INTERVAL);
        }
        let decided = decided.expect("no takeover");
        assert!(decided >= last_reply + DEAD_AFTER);
        assert!(
            decided < last_reply + DEAD_AFTER + INTERVAL,
            "{}",
            decided - last_reply
        );
    }

    #[test]
    fn stall_defers_instead_of_taking_over() {
        // A 200 ms SIGSTOP: no probes go out, so the master had nothing to
        // answer; its silence proves nothing.
        let mut sim = Sim::standby(settings(false, Failback::OnClaim));
        sim.now += 200 * MS;
        assert!(sim.sample().is_empty());
        assert_eq!(sim.det.state(), State::Standby);
        assert_eq!(sim.det.deferred(), 1);
        // Re-check after the next probe, not at the (past) deadline.
        assert_eq!(sim.det.next_deadline(), sim.now + INTERVAL);

        // Probes resume and the master answers them.
        assert!(sim.ticks(20, true, true).is_empty());
        assert_eq!(sim.det.state(), State::Standby);
        assert_eq!(sim.det.deferred(), 1);
        assert_eq!(
            sim.det.next_deadline(),
            sim.master.last_seen_ns + DEAD_AFTER
        );
    }

    #[test]
    fn stall_then_dead_master_is_taken_over_once_enough_probes_went_out() {
        let mut sim = Sim::standby(settings(false, Failback::OnClaim));
        let last_reply = sim.master.last_seen_ns;
        sim.now += 200 * MS;
        sim.sample();
        let resumed = sim.now;
        let mut ticks = 0;
        while sim.det.state() == State::Standby {
            sim.tick(false, false);
            ticks += 1;
            assert!(ticks <= 10);
        }
        // Exactly probes_needed probes after the resume: the 5th goes out at
        // resumed + 4 intervals and the sample after it decides.
        let t = sim.transitions.last().copied().expect("transition");
        assert_eq!((t.from, t.to), (State::Standby, State::Active));
        assert_eq!(t.at_ns, resumed + 5 * INTERVAL);
        assert_eq!(
            t.reason,
            Reason::MasterSilent {
                silence_ns: resumed + 5 * INTERVAL - last_reply,
                probes: 5
            }
        );
        assert_eq!(sim.det.deferred(), 5);
    }

    #[test]
    fn failed_sends_defer_like_a_stall() {
        // Ticks whose probe did not go out produce no ProbeSent.
        let mut sim = Sim::standby(settings(false, Failback::OnClaim));
        for _ in 0..10 {
            sim.now += INTERVAL;
            assert!(sim.sample().is_empty());
        }
        assert_eq!(sim.det.state(), State::Standby);
        assert!(sim.det.deferred() > 0);
    }

    #[test]
    fn sporadic_loss_never_triggers() {
        // ~5% independent loss from a fixed LCG: losing 5 in a row (all of
        // dead_after) does not happen in this sequence, isolated misses do.
        let mut sim = Sim::standby(settings(false, Failback::OnClaim));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut lost = 0;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let answered = (x >> 33) % 100 >= 5;
            lost += u32::from(!answered);
            assert!(sim.tick(answered, true).is_empty());
        }
        assert!(lost > 300, "the pattern must really lose replies ({lost})");
        assert_eq!(sim.det.state(), State::Standby);
        assert_eq!(sim.det.deferred(), 0);
    }

    #[test]
    fn every_other_reply_lost_never_triggers() {
        let mut sim = Sim::standby(settings(false, Failback::OnClaim));
        for i in 0..1_000 {
            assert!(sim.tick(i % 2 == 0, true).is_empty());
        }
        assert_eq!(sim.det.state(), State::Standby);
    }

    #[test]
    fn stale_sample_does_not_move_the_reference_back() {
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        for k in 1..=3 {
            d.handle(Event::ProbeSent {
                at_ns: T0 + k * INTERVAL,
                seq: k,
            });
        }
        let fresh = peer(3, T0 + 3 * INTERVAL + RTT, 3);
        d.handle(sample(T0 + 4 * INTERVAL, fresh));
        let deadline = d.next_deadline();
        assert_eq!(deadline, fresh.last_seen_ns + DEAD_AFTER);
        // An older read (e.g. from a slow map snapshot) arrives late.
        d.handle(sample(T0 + 4 * INTERVAL, peer(1, T0 + INTERVAL, 1)));
        assert_eq!(d.next_deadline(), deadline);
        // And a reply from before the start never counts as silence before it.
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        d.handle(sample(T0 + MS, peer(7, T0 - 100 * MS, 7)));
        assert_eq!(d.next_deadline(), T0 + DEAD_AFTER);
    }

    #[test]
    fn duplicate_probe_reports_count_once() {
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        for k in 1..=5 {
            // The same tick reported twice (e.g. once per peer).
            for _ in 0..2 {
                d.handle(Event::ProbeSent {
                    at_ns: T0 + k * MS,
                    seq: k,
                });
            }
        }
        // 5 ticks counted once each: exactly enough, not more.
        let actions = d.handle(sample(T0 + DEAD_AFTER, PeerSample::default()));
        assert_eq!(
            transition(&actions).map(|t| t.reason),
            Some(Reason::MasterSilent {
                silence_ns: DEAD_AFTER,
                probes: 5
            })
        );
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        for _ in 0..5 {
            d.handle(Event::ProbeSent {
                at_ns: T0 + MS,
                seq: 1,
            });
        }
        assert!(
            d.handle(sample(T0 + DEAD_AFTER, PeerSample::default()))
                .is_empty()
        );
        assert_eq!(d.deferred(), 1);
    }

    #[test]
    fn probe_memory_is_bounded() {
        let mut d = Detector::new(settings(false, Failback::OnClaim), T0);
        for k in 1..=100_000 {
            d.handle(Event::ProbeSent {
                at_ns: T0 + k * MS,
                seq: k,
            });
        }
        let needed = usize::try_from(d.settings().probes_needed()).expect("small");
        assert_eq!(d.probes.len(), needed + PROBE_MEMORY_SLACK);
        // Still enough to decide.
        assert_eq!(d.probes_after(T0), d.settings().probes_needed() + 4);
    }

    #[test]
    fn next_deadline_by_situation() {
        // (situation, detector, expected next_deadline)
        let standby = Sim::standby(settings(false, Failback::OnClaim));
        let mut deferred = Sim::standby(settings(false, Failback::OnClaim));
        deferred.now += 200 * MS;
        deferred.sample();
        let mut witness_wait = Sim::standby(settings(true, Failback::OnClaim));
        // Witness and master go quiet on the same tick: the witness answered
        // the same seq, a little later, so it is not dead yet either.
        witness_wait.witness = witness_wait.witness.map(|w| PeerSample {
            last_seen_ns: w.last_seen_ns + 15 * MS,
            ..w
        });
        witness_wait.ticks(5, false, false);
        let active = Sim::active(settings(false, Failback::OnClaim));
        let isolated = Sim::isolated(settings(true, Failback::OnClaim));
        let mut released = Sim::active(settings(false, Failback::Manual));
        released.now += 3 * MS;
        released.handle(Event::OperatorRelease {
            at_ns: released.now,
        });

        let cases = [
            (
                "starting",
                Detector::new(settings(false, Failback::OnClaim), T0),
                T0 + DEAD_AFTER,
            ),
            (
                "standby",
                standby.det.clone(),
                standby.master.last_seen_ns + DEAD_AFTER,
            ),
            ("deferred", deferred.det.clone(), deferred.now + INTERVAL),
            (
                "witness undecided",
                witness_wait.det.clone(),
                witness_wait.now + INTERVAL,
            ),
            ("active", active.det.clone(), active.now + INTERVAL),
            ("isolated", isolated.det.clone(), isolated.now + INTERVAL),
            (
                "after release",
                released.det.clone(),
                released.now + DEAD_AFTER,
            ),
        ];
        assert_eq!(witness_wait.det.state(), State::Standby);
        for (what, det, expected) in cases {
            assert_eq!(det.next_deadline(), expected, "{what}");
        }
    }

    #[test]
    fn rise_hysteresis_and_a_gap_restarts_the_run() {
        let mut sim = Sim::active(settings(false, Failback::Manual));
        assert!(!sim.det.master_back());
        sim.ticks(2, true, true);
        assert!(!sim.det.master_back(), "2 of 3");
        sim.tick(false, true); // the gap
        sim.ticks(2, true, true);
        assert!(!sim.det.master_back(), "the gap restarted the run");
        sim.tick(true, true);
        assert!(sim.det.master_back());
        // No state change: the VIP moves back on claim or release only.
        assert_eq!(sim.det.state(), State::Active);
        assert_eq!(sim.transitions.len(), 2);
    }

    #[test]
    fn replies_seen_in_one_sample_count_only_if_consecutive() {
        // The shell may sample less often than probes go out.
        let mut d = Detector::new(settings(false, Failback::Manual), T0);
        for k in 1..=6 {
            d.handle(Event::ProbeSent {
                at_ns: T0 + k * INTERVAL,
                seq: k,
            });
        }
        d.handle(sample(T0 + 7 * INTERVAL, PeerSample::default()));
        assert_eq!(d.state(), State::Active);
        for k in 7..=12 {
            d.handle(Event::ProbeSent {
                at_ns: T0 + k * INTERVAL,
                seq: k,
            });
        }
        // 3 replies among seqs 1..=10: the last 3 are not known to be
        // consecutive, only the latest one counts.
        d.handle(sample(T0 + 11 * INTERVAL, peer(3, T0 + 10 * INTERVAL, 10)));
        assert_eq!(d.run_len(), 1);
        // 11 and 12 answered: 3 in a row from 10.
        d.handle(sample(T0 + 13 * INTERVAL, peer(5, T0 + 12 * INTERVAL, 12)));
        assert!(d.master_back());
        // A duplicated reply breaks the arithmetic: be conservative.
        d.handle(Event::ProbeSent {
            at_ns: T0 + 13 * INTERVAL,
            seq: 13,
        });
        d.handle(sample(T0 + 14 * INTERVAL, peer(7, T0 + 13 * INTERVAL, 13)));
        assert!(!d.master_back());
    }

    #[test]
    fn master_back_resets_when_the_master_goes_silent_again() {
        let mut sim = Sim::active(settings(false, Failback::Manual));
        sim.ticks(3, true, true);
        assert!(sim.det.master_back());
        sim.ticks(7, false, true);
        assert!(!sim.det.master_back());
        sim.ticks(2, true, true);
        assert!(!sim.det.master_back());
        assert_eq!(sim.det.state(), State::Active);
    }

    #[test]
    fn master_back_is_false_outside_active_and_isolated() {
        let sim = Sim::standby(settings(false, Failback::OnClaim));
        assert!(!sim.det.master_back());
    }

    #[test]
    fn on_claim_failback_releases_and_gives_the_master_dead_after() {
        let mut sim = Sim::active(settings(false, Failback::OnClaim));
        sim.ticks(3, true, true);
        let at = sim.now + MS;
        let actions = sim.handle(Event::Claim {
            at_ns: at,
            from_master: true,
        });
        assert_eq!(
            actions,
            vec![
                Action::Release,
                Action::Notify(Transition {
                    from: State::Active,
                    to: State::Standby,
                    reason: Reason::MasterClaimed,
                    at_ns: at,
                }),
            ]
        );
        assert!(!sim.det.master_back());
        assert_eq!(sim.det.next_deadline(), at + DEAD_AFTER);
    }

    #[test]
    fn a_claim_before_the_master_is_back_waits_for_rise_replies() {
        // Hysteresis on failback: a master that claims the VIP but has not
        // answered `rise` consecutive probes yet (a flapping link, a host
        // still booting) does not get it back until it has.
        let mut sim = Sim::active(settings(false, Failback::OnClaim));
        sim.now += MS;
        let at = sim.now;
        let actions = sim.handle(Event::Claim {
            at_ns: at,
            from_master: true,
        });
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(sim.det.state(), State::Active);
        assert!(sim.det.claim_pending());
        // Silence keeps it pending.
        sim.ticks(4, false, false);
        assert_eq!(sim.det.state(), State::Active);
        // Replies: released on the sample that completes the run.
        let mut ticks = 0;
        while sim.det.state() == State::Active && ticks < 20 {
            sim.tick(true, false);
            ticks += 1;
        }
        assert_eq!(sim.det.state(), State::Standby);
        assert_eq!(
            sim.transitions.last().map(|t| t.reason),
            Some(Reason::MasterClaimed)
        );
        assert!(ticks >= 3, "released after {ticks} replies, rise is 3");
        assert!(!sim.det.claim_pending());
    }

    #[test]
    fn a_pending_claim_expires_if_the_master_is_not_back_in_time() {
        // Issue "Never lose the VIP": one forged ARP in the master's name
        // while it is away must not decide the failback when it returns,
        // seconds later, without the VIP.
        let s = settings(false, Failback::OnClaim);
        let mut sim = Sim::active(s);
        sim.now += MS;
        let at = sim.now;
        sim.handle(Event::Claim {
            at_ns: at,
            from_master: true,
        });
        assert!(sim.det.claim_pending());
        // Silent past the window: the claim is forgotten.
        while sim.now <= at + s.claim_fresh_ns() {
            sim.tick(false, false);
        }
        sim.tick(false, false);
        assert!(!sim.det.claim_pending());
        // The master returns: back after rise replies, and keeps the VIP here.
        sim.ticks(10, true, false);
        assert!(sim.det.master_back());
        assert_eq!(sim.det.state(), State::Active);
        assert_eq!(
            s.claim_fresh_ns(),
            CLAIM_FRESH_MIN_NS,
            "2 × rise × interval is less"
        );
    }

    #[test]
    fn take_back_reclaims_a_released_vip_only_from_standby() {
        let mut sim = Sim::active(settings(false, Failback::OnClaim));
        sim.ticks(4, true, false);
        let at = sim.now;
        sim.handle(Event::Claim {
            at_ns: at,
            from_master: true,
        });
        assert_eq!(sim.det.state(), State::Standby);
        let later = at + 20 * MS;
        let actions = sim.det.take_back(later);
        assert_eq!(actions[0], Action::TakeOver);
        assert_eq!(sim.det.state(), State::Active);
        assert!(
            matches!(actions.last(), Some(Action::Notify(t)) if t.reason == Reason::ClaimantSilent)
        );
        assert!(sim.det.take_back(later + MS).is_empty(), "already active");
    }

    #[test]
    fn a_claim_older_than_the_takeover_is_stale() {
        // A claim event that raced with the takeover (sent before we
        // decided) must not hand the VIP straight back.
        let mut sim = Sim::active(settings(false, Failback::OnClaim));
        let (_, _, decided) = sim.det.last_decision().expect("took over");
        sim.ticks(4, true, false);
        assert!(sim.det.master_back());
        let actions = sim.handle(Event::Claim {
            at_ns: decided - 1,
            from_master: true,
        });
        assert!(actions.is_empty(), "{actions:?}");
        assert_eq!(sim.det.state(), State::Active);
    }

    #[test]
    fn claims_that_change_nothing() {
        // (failback, state setup, from_master)
        let cases: [(&str, Sim, bool); 5] = [
            (
                "foreign claim while active",
                Sim::active(settings(false, Failback::OnClaim)),
                false,
            ),
            (
                "manual failback",
                Sim::active(settings(false, Failback::Manual)),
                true,
            ),
            (
                "standby",
                Sim::standby(settings(false, Failback::OnClaim)),
                true,
            ),
            (
                "starting",
                Sim::new(settings(false, Failback::OnClaim)),
                true,
            ),
            (
                "isolated",
                Sim::isolated(settings(true, Failback::OnClaim)),
                true,
            ),
        ];
        for (what, mut sim, from_master) in cases {
            let before = sim.det.state();
            let deadline = sim.det.next_deadline();
            let actions = sim.handle(Event::Claim {
                at_ns: sim.now,
                from_master,
            });
            assert!(actions.is_empty(), "{what}: {actions:?}");
            assert_eq!(sim.det.state(), before, "{what}");
            assert_eq!(sim.det.next_deadline(), deadline, "{what}");
        }
    }

    #[test]
    fn manual_failback_releases_on_operator_release() {
        let mut sim = Sim::active(settings(false, Failback::Manual));
        sim.ticks(3, true, true);
        assert!(
            sim.handle(Event::Claim {
                at_ns: sim.now,
                from_master: true
            })
            .is_empty()
        );
        let at = sim.now + MS;
        let actions = sim.handle(Event::OperatorRelease { at_ns: at });
        assert_eq!(
            actions,
            vec![
                Action::Release,
                Action::Notify(Transition {
                    from: State::Active,
                    to: State::Standby,
                    reason: Reason::OperatorRelease,
                    at_ns: at,
                }),
            ]
        );
        // The master answers: we stay in Standby.
        assert!(sim.ticks(20, true, true).is_empty());
        assert_eq!(sim.det.state(), State::Standby);
    }

    #[test]
    fn operator_release_outside_active_is_a_noop() {
        for (what, mut sim) in [
            ("starting", Sim::new(settings(false, Failback::Manual))),
            ("standby", Sim::standby(settings(false, Failback::Manual))),
            ("isolated", Sim::isolated(settings(true, Failback::Manual))),
        ] {
            let before = sim.det.state();
            let deadline = sim.det.next_deadline();
            assert!(
                sim.handle(Event::OperatorRelease { at_ns: sim.now })
                    .is_empty(),
                "{what}"
            );
            assert_eq!(sim.det.state(), before, "{what}");
            assert_eq!(sim.det.next_deadline(), deadline, "{what}");
        }
    }

    #[test]
    fn shutdown_releases_only_when_active() {
        let cases = [
            (
                "starting",
                Sim::new(settings(false, Failback::OnClaim)),
                false,
            ),
            (
                "standby",
                Sim::standby(settings(false, Failback::OnClaim)),
                false,
            ),
            (
                "active",
                Sim::active(settings(false, Failback::OnClaim)),
                true,
            ),
            (
                "isolated",
                Sim::isolated(settings(true, Failback::OnClaim)),
                false,
            ),
        ];
        for (what, mut sim, releases) in cases {
            let at = sim.now + 1;
            let actions = sim.handle(Event::Shutdown { at_ns: at });
            if releases {
                assert_eq!(
                    actions,
                    vec![
                        Action::Release,
                        Action::Notify(Transition {
                            from: State::Active,
                            to: State::Standby,
                            reason: Reason::Shutdown,
                            at_ns: at,
                        }),
                    ],
                    "{what}"
                );
            } else {
                assert!(actions.is_empty(), "{what}: {actions:?}");
            }
        }
    }

    #[test]
    fn witness_answering_newer_probes_allows_takeover() {
        let mut sim = Sim::standby(settings(true, Failback::OnClaim));
        sim.ticks(6, false, true);
        assert_eq!(sim.det.state(), State::Active);
        let t = sim.transitions.last().copied().expect("transition");
        assert_eq!((t.from, t.to), (State::Standby, State::Active));
        assert!(matches!(t.reason, Reason::MasterSilent { probes: 5, .. }));
    }

    #[test]
    fn master_and_witness_silent_means_isolated_without_takeover() {
        let mut sim = Sim::standby(settings(true, Failback::OnClaim));
        let actions = sim.ticks(8, false, false);
        assert!(!actions.contains(&Action::TakeOver));
        assert_eq!(sim.det.state(), State::Isolated);
        let t = sim.transitions.last().copied().expect("transition");
        assert_eq!((t.from, t.to), (State::Standby, State::Isolated));
        assert!(
            matches!(t.reason, Reason::WitnessSilent { silence_ns } if silence_ns >= DEAD_AFTER)
        );
        assert_eq!(sim.det.last_decision(), None);
    }

    #[test]
    fn witness_silent_on_the_same_tick_waits_then_isolates() {
        // Both stop on the same seq; the witness's last reply landed a bit
        // later, so at the master's deadline it is not yet dead: wait.
        let mut sim = Sim::standby(settings(true, Failback::OnClaim));
        sim.witness = sim.witness.map(|w| PeerSample {
            last_seen_ns: w.last_seen_ns + 15 * MS,
            ..w
        });
        // Last replies: master at now - 10 ms + RTT, witness 15 ms later.
        // 5th silent sample (now + 50 ms): the master is dead (59.9 ms, 5
        // probes after), the witness is not yet (44.9 ms).
        sim.ticks(4, false, false);
        assert_eq!(
            sim.det.next_deadline(),
            sim.master.last_seen_ns + DEAD_AFTER
        );
        sim.tick(false, false);
        assert_eq!(sim.det.state(), State::Standby);
        assert_eq!(sim.det.next_deadline(), sim.now + INTERVAL);
        assert_eq!(
            sim.det.deferred(),
            0,
            "waiting for the witness is no deferral"
        );
        // 6th: the witness is dead too (54.9 ms, 5 probes after it).
        sim.tick(false, false);
        assert_eq!(sim.det.state(), State::Isolated);
        assert_eq!(sim.transitions.len(), 2);
    }

    #[test]
    fn stale_newer_witness_reply_does_not_justify_takeover() {
        // The witness answered one probe more than the master, then went
        // silent too, long ago: that proves nothing about our link now.
        let mut d = Detector::new(settings(true, Failback::OnClaim), T0);
        for k in 1..=20 {
            d.handle(Event::ProbeSent {
                at_ns: T0 + k * INTERVAL,
                seq: k,
            });
        }
        let actions = d.handle(Event::Sample {
            now_ns: T0 + 20 * INTERVAL,
            master: peer(1, T0 + INTERVAL, 1),
            witness: Some(peer(2, T0 + 2 * INTERVAL, 2)),
        });
        assert_eq!(transition(&actions).map(|t| t.to), Some(State::Isolated));
        assert!(!actions.contains(&Action::TakeOver));
    }

    #[test]
    fn starting_with_both_silent_is_isolated() {
        let mut sim = Sim::new(settings(true, Failback::OnClaim));
        sim.ticks(7, false, false);
        assert_eq!(sim.det.state(), State::Isolated);
        assert_eq!(sim.transitions[0].from, State::Starting);
    }

    #[test]
    fn active_releases_when_the_witness_goes_silent_too() {
        let mut sim = Sim::active(settings(true, Failback::OnClaim));
        let actions = sim.ticks(8, false, false);
        assert_eq!(actions.first(), Some(&Action::Release));
        assert_eq!(sim.det.state(), State::Isolated);
        let t = sim.transitions.last().copied().expect("transition");
        assert_eq!((t.from, t.to), (State::Active, State::Isolated));
        assert!(matches!(t.reason, Reason::WitnessSilent { .. }));
    }

    #[test]
    fn active_does_not_isolate_during_a_stall() {
        let mut sim = Sim::active(settings(true, Failback::OnClaim));
        let deferred = sim.det.deferred();
        sim.now += 200 * MS;
        assert!(sim.sample().is_empty());
        assert_eq!(sim.det.state(), State::Active);
        assert_eq!(sim.det.deferred(), deferred + 1);
        assert!(sim.ticks(10, false, true).is_empty());
        assert_eq!(sim.det.state(), State::Active);
    }

    #[test]
    fn active_keeps_the_vip_while_the_master_answers_even_if_the_witness_dies() {
        let mut sim = Sim::active(settings(true, Failback::Manual));
        assert!(sim.ticks(20, true, false).is_empty());
        assert_eq!(sim.det.state(), State::Active);
        assert!(sim.det.master_back());
    }

    #[test]
    fn isolated_back_to_standby_after_rise_consecutive_replies() {
        let mut sim = Sim::isolated(settings(true, Failback::OnClaim));
        sim.ticks(2, true, false);
        sim.tick(false, false);
        sim.ticks(2, true, false);
        assert_eq!(
            sim.det.state(),
            State::Isolated,
            "the gap restarted the run"
        );
        let actions = sim.tick(true, false);
        assert_eq!(
            actions.len(),
            1,
            "no Release/TakeOver: we do not hold the VIP"
        );
        let t = transition(&actions).expect("transition");
        assert_eq!((t.from, t.to), (State::Isolated, State::Standby));
        assert_eq!(t.reason, Reason::MasterBack { replies: 3 });
        assert!(sim.ticks(20, true, true).is_empty());
    }

    #[test]
    fn isolated_takes_over_when_the_witness_comes_back_first() {
        let mut sim = Sim::isolated(settings(true, Failback::OnClaim));
        let actions = sim.tick(false, true);
        assert_eq!(actions.first(), Some(&Action::TakeOver));
        let t = transition(&actions).expect("transition");
        assert_eq!((t.from, t.to), (State::Isolated, State::Active));
        assert!(matches!(t.reason, Reason::MasterSilent { .. }));
        let (last_reply, deadline, decision) = sim.det.last_decision().expect("decision");
        assert_eq!(last_reply, sim.master.last_seen_ns);
        assert_eq!(deadline, last_reply + DEAD_AFTER);
        assert_eq!(decision, sim.now);
    }

    #[test]
    fn isolated_waits_while_the_master_answers_but_has_not_risen() {
        // The master answered once (not dead any more) and the witness is
        // back: the master is not "still dead", so no takeover.
        let mut sim = Sim::isolated(settings(true, Failback::OnClaim));
        assert!(sim.tick(true, true).is_empty());
        assert_eq!(sim.det.state(), State::Isolated);
    }

    #[test]
    fn full_scenario_notifies_once_per_transition_and_last() {
        // Standby -> Active -> (claim) Standby -> Isolated -> Standby ->
        // Active -> (shutdown) Standby; every step checked by Sim::handle.
        let mut sim = Sim::standby(settings(true, Failback::OnClaim));
        sim.ticks(8, false, true);
        sim.ticks(3, true, true);
        sim.handle(Event::Claim {
            at_ns: sim.now,
            from_master: true,
        });
        sim.ticks(10, false, false);
        sim.ticks(3, true, true);
        sim.ticks(8, false, true);
        sim.handle(Event::Shutdown { at_ns: sim.now });
        let path: Vec<_> = sim.transitions.iter().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            path,
            [
                (State::Starting, State::Standby),
                (State::Standby, State::Active),
                (State::Active, State::Standby),
                (State::Standby, State::Isolated),
                (State::Isolated, State::Standby),
                (State::Standby, State::Active),
                (State::Active, State::Standby),
            ]
        );
        for pair in sim.transitions.windows(2) {
            assert_eq!(pair[0].to, pair[1].from);
            assert!(pair[0].at_ns <= pair[1].at_ns);
        }
    }
}
