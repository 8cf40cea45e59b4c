//! The failover detector: a pure state machine.
//!
//! Modelled on holo-vrrp (`instance.rs`/`events.rs`): explicit [`State`]s,
//! [`Event`]s that carry their own timestamp (the clock is injected), a
//! [`Reason`] on every transition, and exactly one function,
//! [`Detector::handle`], that changes state and decides every side effect,
//! returned as [`Action`]s for the async shell (`backup.rs`) to carry out.
//!
//! All times are CLOCK_MONOTONIC nanoseconds, the clock `bpf_ktime_get_ns`
//! reads, so kernel timestamps from the maps and userspace timestamps compare
//! directly.
//!
//! IMPLEMENTATION IN PROGRESS (helper): see the spec in each doc comment.

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
    /// Silence after which the master is dead, ns (>= interval_ns).
    pub dead_after_ns: u64,
    /// Consecutive valid replies after which a silent master counts as back.
    pub rise: u32,
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
}

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
    pub replies: u64,
    /// Kernel timestamp of the last valid reply (0 = never).
    pub last_seen_ns: u64,
    pub highest_seq: u64,
}

/// Why a transition happened (logged, passed to the `--on-change` hook).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// First valid reply from the master.
    MasterReplied,
    /// Master silent for `silence_ns` with `probes` probes sent after its
    /// last reply.
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: Reason,
    pub at_ns: u64,
}
