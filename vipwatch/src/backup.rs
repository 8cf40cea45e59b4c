//! `vipwatch backup`: the daemon that watches the master and takes the VIP
//! over.
//!
//! One real-time loop owns everything that is timed: it sleeps in ppoll(2)
//! until the next of (probe due, detector deadline, GARP due), or until the
//! XDP program reports an ARP claim through its ring buffer, or a signal
//! arrives (signalfd). The detector decides; this module only turns its
//! actions into syscalls (rtnetlink, pnet, the status map, hooks).
//!
//! Why not tokio timers: tokio's timer wheel has 1 ms resolution, more
//! than the whole budget between a deadline and the decision at a 0.5 ms
//! probe interval. tokio is still used for rtnetlink, driven by
//! `block_on` on this thread (a current-thread runtime: no cross-thread
//! wake-up on the takeover path).

use anyhow::Context as _;
use vipwatch_common::{
    CONFIG_WITNESS, Config, DaemonStatus, STATE_ACTIVE, STATE_ISOLATED, STATE_STANDBY,
    STATE_STARTING, Timeline,
};

use crate::{
    arp::{Announcer, GarpSchedule},
    cli::{BackupArgs, Vip},
    clock::{self, delta_ms, ms},
    detector::{Action, Detector, Event, PeerSample, Reason, Settings, State, Transition},
    ebpf::{PeerSnapshot, Watcher},
    hook::Hooks,
    netlink::Netlink,
    prober::Prober,
    sys::{self, SignalFd},
};

pub fn run(args: BackupArgs) -> anyhow::Result<()> {
    sys::require_privileges("vipwatch backup")?;
    // Signals first: every thread started later inherits the mask.
    let signals = SignalFd::new()?;
    let (rt, netlink) = Netlink::with_runtime()?;
    let ifindex = rt.block_on(netlink.link_index(&args.iface))?;
    let mac = rt.block_on(netlink.link_mac(ifindex))?;
    if rt.block_on(netlink.has_address(ifindex, args.vip.addr))? {
        // Either a backup that was killed left it (then it is a split
        // brain right now), or it is one of this host's own addresses
        // (then releasing it later would take the host's address away).
        anyhow::bail!(
            "{} is already bound on {}: a backup starts without the VIP; if a killed vipwatch left it, \
             remove it with `vipwatch release --iface {} --vip {}`",
            args.vip,
            args.iface,
            args.iface,
            args.vip
        );
    }
    let vip4 = args.vip.v4().context("the backup's VIP must be IPv4")?;

    let nonce = sys::random_u64()?;
    let echo_id = (sys::random_u64()? & 0xffff) as u16;
    let config = Config {
        master: args.master.octets(),
        witness: args.witness.map_or([0; 4], |w| w.octets()),
        vip: vip4.octets(),
        echo_id: echo_id.to_be_bytes(),
        nonce: nonce.to_be_bytes(),
        our_mac: mac,
        flags: if args.witness.is_some() {
            CONFIG_WITNESS
        } else {
            0
        },
        ..Config::default()
    };
    let watcher = Watcher::attach(&args.iface, config, args.xdp_mode)?;
    let prober = Prober::open(&args.iface, echo_id, nonce, args.master, args.witness)?;
    let mut announcer = Announcer::open(&args.iface)?;
    // Build the GARP frames now, not on the takeover path.
    announcer.prepare(args.vip.addr)?;
    let hooks = Hooks::new(args.on_change.clone())?;

    let interval_ns = args.interval.as_nanos() as u64;
    let settings = Settings {
        interval_ns,
        dead_after_ns: args.dead_after.as_nanos() as u64,
        rise: args.rise,
        failback: args.failback.into(),
        witness: args.witness.is_some(),
    };
    let start = clock::now_ns();
    log::info!(
        "watching master {} on {} every {} (dead after {} = {} unanswered probes{}), VIP {}, failback {:?}",
        args.master,
        args.iface,
        ms(interval_ns),
        ms(settings.dead_after_ns),
        settings.probes_needed(),
        args.witness
            .map(|w| format!(", witness {w}"))
            .unwrap_or_default(),
        args.vip,
        settings.failback,
    );
    let mut daemon = Daemon {
        detector: Detector::new(settings, start),
        status: DaemonStatus {
            pid: std::process::id(),
            xdp_mode: watcher.mode.code(),
            xdp_fallback: u32::from(watcher.fell_back),
            state: STATE_STARTING,
            started_ns: start,
            interval_ns,
            dead_after_ns: settings.dead_after_ns,
            ..DaemonStatus::default()
        },
        watcher,
        prober,
        announcer,
        hooks,
        netlink,
        rt,
        signals,
        ifindex,
        vip: args.vip,
        iface: args.iface.clone(),
        garp: GarpSchedule::new(&args.garp),
        count: args.count,
        next_probe_ns: start,
        last_sample_ns: 0,
        master: PeerSnapshot::default(),
        master_back_logged: false,
        foreign_claims_logged: 0,
        status_dirty: true,
        claim_mac: None,
        last_tick_ns: 0,
        next_solicit_ns: 0,
        solicit_every_ns: SOLICIT_FIRST_NS,
        vip_bound: Some(false),
        next_reconcile_ns: 0,
        vip4,
        last_publish_ns: 0,
        published_probes: 0,
    };
    if let Some(priority) = args.rt_priority {
        // After every helper thread exists (the hook thread stays a normal
        // task, and so do the hooks it starts): only this loop is real-time.
        sys::realtime(priority)?;
        log::info!("probe/deadline loop runs under SCHED_FIFO priority {priority}");
    }
    // Publish before saying we are up: `vipwatch stats` reads the pid here.
    daemon.publish();
    log::info!(
        "XDP attached to {} in {} mode{}",
        daemon.iface,
        daemon.watcher.mode.as_str(),
        if daemon.watcher.fell_back {
            " (FALLBACK: the driver refused native mode; generic mode costs more CPU per packet)"
        } else {
            ""
        }
    );
    daemon.run()
}

struct Daemon {
    detector: Detector,
    status: DaemonStatus,
    watcher: Watcher,
    prober: Prober,
    announcer: Announcer,
    hooks: Hooks,
    netlink: Netlink,
    rt: tokio::runtime::Runtime,
    signals: SignalFd,
    ifindex: u32,
    vip: Vip,
    iface: String,
    garp: GarpSchedule,
    count: Option<u64>,
    next_probe_ns: u64,
    last_sample_ns: u64,
    /// Latest merged counters of the master (for its MAC and the timeline).
    master: PeerSnapshot,
    master_back_logged: bool,
    foreign_claims_logged: u32,
    status_dirty: bool,
    /// MAC of the master's last claim, for the hand-over announcement.
    claim_mac: Option<[u8; 6]>,
    last_tick_ns: u64,
    next_solicit_ns: u64,
    solicit_every_ns: u64,
    /// Whether the VIP is bound, as far as we know; `None` after a failed
    /// bind or unbind, until `reconcile` succeeds.
    vip_bound: Option<bool>,
    next_reconcile_ns: u64,
    vip4: std::net::Ipv4Addr,
    last_publish_ns: u64,
    published_probes: u64,
}

/// How soon, then how often at most, a backup holding the VIP asks whether
/// the returned master holds it too.
const SOLICIT_FIRST_NS: u64 = 20_000_000;
const SOLICIT_MAX_NS: u64 = 1_000_000_000;
/// Bound on one rtnetlink request on the takeover path.
const NETLINK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Retry period after a failed bind or unbind.
const RECONCILE_EVERY_NS: u64 = 100_000_000;

/// How often the status map for `vipwatch stats` is refreshed.
const PUBLISH_EVERY_NS: u64 = 10_000_000;

impl Daemon {
    fn probing(&self) -> bool {
        self.count
            .is_none_or(|n| self.prober.sent + self.prober.errors < n)
    }

    /// When the detector wants a fresh sample. A deadline the last sample
    /// already reached (the detector waits for more evidence) is re-checked
    /// at most every half interval, so waiting never becomes a busy loop.
    fn sample_due_ns(&self) -> u64 {
        let deadline = self.detector.next_deadline();
        if deadline > self.last_sample_ns {
            // A deadline the last sample did not reach yet: honour it to
            // the nanosecond.
            deadline
        } else {
            self.last_sample_ns + self.detector.settings().interval_ns / 2
        }
    }

    fn run(mut self) -> anyhow::Result<()> {
        loop {
            let mut wake = self.sample_due_ns();
            if self.probing() {
                wake = wake.min(self.next_probe_ns);
            }
            if let Some(g) = self.garp.next_ns() {
                wake = wake.min(g);
            }
            if self.vip_bound.is_none() {
                wake = wake.min(self.next_reconcile_ns);
            }
            let [claim_ready, signal_ready] =
                clock::wait_readable([self.watcher.events_fd(), self.signals.raw()], wake)
                    .context("waiting in ppoll")?;

            if signal_ready {
                for sig in self.signals.read() {
                    let at_ns = clock::now_ns();
                    if sig == libc::SIGUSR1 {
                        log::info!("`vipwatch release` asked us to hand the VIP back");
                        self.feed(Event::OperatorRelease { at_ns })?;
                    } else {
                        log::info!("signal {sig}: stopping");
                        self.feed(Event::Shutdown { at_ns })?;
                        self.publish();
                        return Ok(());
                    }
                }
            }
            if claim_ready {
                for ev in self.watcher.drain_events() {
                    let from_master = self.master.replies == 0 || ev.mac == self.master.last_mac;
                    if !from_master
                        && self.detector.state() == State::Active
                        && self.foreign_claims_logged < 10
                    {
                        self.foreign_claims_logged += 1;
                        log::warn!(
                            "{} is claimed by {} which is not the master ({}): address conflict on the LAN",
                            self.vip,
                            mac_str(ev.mac),
                            mac_str(self.master.last_mac)
                        );
                    }
                    self.status.last_claim_ns = ev.ktime_ns;
                    if from_master {
                        self.claim_mac = Some(ev.mac);
                    }
                    self.feed(Event::Claim {
                        at_ns: ev.ktime_ns,
                        from_master,
                    })?;
                }
            }

            let now = clock::now_ns();
            let mut probed = false;
            if self.probing() && now >= self.next_probe_ns {
                probed = true;
                let tick = self.prober.tick();
                if self.last_tick_ns != 0 && self.detector.state() != State::Starting {
                    let gap = tick.at_ns.saturating_sub(self.last_tick_ns);
                    self.status.max_probe_gap_ns = self.status.max_probe_gap_ns.max(gap);
                }
                self.last_tick_ns = tick.at_ns;
                if tick.master_sent {
                    self.feed(Event::ProbeSent {
                        at_ns: tick.at_ns,
                        seq: tick.seq,
                    })?;
                }
                // Missed slots (we were starved or stopped) are skipped, not
                // sent in a burst: a burst would fake the "probes sent"
                // evidence the detector relies on.
                self.next_probe_ns += self.detector.settings().interval_ns;
                if self.next_probe_ns <= now {
                    self.next_probe_ns = now + self.detector.settings().interval_ns;
                }
                self.status.probes_sent = self.prober.sent;
                self.status.witness_probes_sent = self.prober.witness_sent;
            }
            // A sample due before the next probe rides on this wake-up
            // instead of costing one of its own (half the wake-ups while
            // ACTIVE, a sixth while standing by). This only ever samples
            // earlier: a deadline with no new reply behind it still gets
            // its own wake-up at the exact deadline.
            let now = clock::now_ns();
            let due = self.sample_due_ns();
            if now >= due || probed && due < self.next_probe_ns {
                self.sample(now)?;
            }
            if let Some(due) = self.garp.next_ns()
                && clock::now_ns() >= due
            {
                self.announce()?;
                self.garp.sent(clock::now_ns());
            }
            self.reconcile(clock::now_ns())?;
            // `stats` compares probes sent with replies counted by the
            // kernel, so the count is published as soon as it changes (one
            // map update per probe), and the rest at least every 10 ms.
            let now = clock::now_ns();
            if self.status_dirty
                || self.status.probes_sent != self.published_probes
                || now >= self.last_publish_ns + PUBLISH_EVERY_NS
            {
                self.publish();
            }
        }
    }

    fn sample(&mut self, now: u64) -> anyhow::Result<()> {
        let (master, witness) = self
            .watcher
            .maps
            .liveness(self.detector.settings().witness)?;
        self.last_sample_ns = now;
        self.master = master;
        let peer = |p: &PeerSnapshot| PeerSample {
            replies: p.replies,
            last_seen_ns: p.last_seen_ns,
            highest_seq: p.highest_seq,
        };
        self.feed(Event::Sample {
            now_ns: now,
            master: peer(&master),
            witness: witness.as_ref().map(peer),
        })?;
        self.status.deferred = self.detector.deferred();
        if self.detector.state() == State::Active {
            let on_claim = self.detector.settings().failback == crate::detector::Failback::OnClaim;
            if on_claim && self.detector.master_back() && now >= self.next_solicit_ns {
                // A master that comes back with the VIP still bound (it was
                // frozen or cut off, not restarted) never announces it. Once
                // it is back (`--rise` consecutive replies), ask: its kernel
                // answers our ARP probe for the VIP, and that answer is the
                // claim that makes us hand the VIP back. A master that
                // returns without the VIP does not answer, and we keep
                // serving it, asking less and less often (20 ms doubling to
                // 1 s) rather than broadcasting 50 probes a second forever.
                self.next_solicit_ns = now + self.solicit_every_ns;
                self.solicit_every_ns = (self.solicit_every_ns * 2).min(SOLICIT_MAX_NS);
                if let Err(e) = self.announcer.solicit(self.vip4) {
                    log::warn!("could not probe who holds {}: {e:#}", self.vip);
                }
            }
            if self.detector.master_back() && !self.master_back_logged {
                self.master_back_logged = true;
                log::info!(
                    "master {} answers again; keeping {} until it claims it{}",
                    mac_str(self.master.last_mac),
                    self.vip,
                    match self.detector.settings().failback {
                        crate::detector::Failback::OnClaim => "",
                        crate::detector::Failback::Manual =>
                            " and `vipwatch release` is run (failback manual)",
                    }
                );
            }
        } else {
            self.master_back_logged = false;
            self.next_solicit_ns = 0;
        }
        Ok(())
    }

    /// Feeds one event to the detector and carries out its actions.
    fn feed(&mut self, event: Event) -> anyhow::Result<()> {
        for action in self.detector.handle(event) {
            match action {
                Action::TakeOver => self.take_over()?,
                Action::Release => self.release()?,
                Action::Notify(t) => self.notify(t),
            }
        }
        Ok(())
    }

    fn take_over(&mut self) -> anyhow::Result<()> {
        let decision_ns = clock::now_ns();
        let (last_reply_ns, deadline_ns, _) =
            self.detector.last_decision().unwrap_or((0, 0, decision_ns));
        let bound = self.set_bound(true);
        let vip_bound_ns = clock::now_ns();
        if let Err(e) = bound {
            // Announcing an address we could not bind would attract the
            // clients to a host that cannot answer them. The detector says
            // ACTIVE, so `reconcile` retries the bind until it works or the
            // state changes.
            log::error!(
                "TAKEOVER FAILED: could not bind {} on {}: {e:#}; retrying",
                self.vip,
                self.iface
            );
            self.vip_bound = None;
            self.next_reconcile_ns = clock::now_ns() + RECONCILE_EVERY_NS;
            return Ok(());
        }
        let first_garp_ns = self.announce_now()?;
        self.garp.burst_started(first_garp_ns);
        self.solicit_every_ns = SOLICIT_FIRST_NS;
        self.status.takeovers += 1;
        self.status.last_takeover = Timeline {
            last_reply_ns,
            deadline_ns,
            decision_ns,
            vip_bound_ns,
            first_garp_ns,
        };
        log::info!(
            "takeover timeline: last reply {:+.3} ms, deadline {:+.3} ms, decision {:+.3} ms, VIP bound {:+.3} ms, \
             first GARP {:+.3} ms (relative to the decision; decision->first GARP {:.3} ms) mono_ns={decision_ns}",
            delta_ms(decision_ns, last_reply_ns),
            delta_ms(decision_ns, deadline_ns),
            0.0,
            delta_ms(decision_ns, vip_bound_ns),
            delta_ms(decision_ns, first_garp_ns),
            delta_ms(decision_ns, first_garp_ns),
        );
        Ok(())
    }

    fn announce_now(&mut self) -> anyhow::Result<u64> {
        self.announce()?;
        Ok(clock::now_ns())
    }

    fn announce(&mut self) -> anyhow::Result<()> {
        if let Err(e) = self.announcer.announce(self.vip.addr) {
            log::warn!(
                "gratuitous ARP for {} on {} failed: {e:#}",
                self.vip,
                self.iface
            );
        }
        Ok(())
    }

    fn release(&mut self) -> anyhow::Result<()> {
        self.garp.stop();
        self.solicit_every_ns = SOLICIT_FIRST_NS;
        let removed = self.set_bound(false);
        let at = clock::now_ns();
        match removed {
            Ok(true) => log::info!("released {} from {} mono_ns={at}", self.vip, self.iface),
            Ok(false) => log::info!(
                "{} was already gone from {} mono_ns={at}",
                self.vip,
                self.iface
            ),
            Err(e) => {
                // Still bound while we stand by would be a split brain:
                // `reconcile` retries until the address is gone.
                log::error!(
                    "could not remove {} from {}: {e:#}; retrying",
                    self.vip,
                    self.iface
                );
                self.vip_bound = None;
                self.next_reconcile_ns = at + RECONCILE_EVERY_NS;
            }
        }
        self.status.releases += 1;
        self.status.last_release_ns = at;
        Ok(())
    }

    /// Binds or removes the VIP; `Ok(false)` when it already was so.
    /// rtnetlink calls are bounded: a stuck netlink socket must not stall
    /// the loop that decides failovers.
    fn set_bound(&mut self, bound: bool) -> anyhow::Result<bool> {
        let Vip { addr, prefix } = self.vip;
        let r = self
            .rt
            .block_on(async {
                let call = async {
                    if bound {
                        self.netlink.add_address(self.ifindex, addr, prefix).await
                    } else {
                        self.netlink.del_address(self.ifindex, addr, prefix).await
                    }
                };
                tokio::time::timeout(NETLINK_TIMEOUT, call).await
            })
            .map_err(|_| anyhow::anyhow!("rtnetlink did not answer within {NETLINK_TIMEOUT:?}"))
            .and_then(|r| r);
        if r.is_ok() {
            self.vip_bound = Some(bound);
        }
        r
    }

    /// After a failed bind or unbind, makes the interface match the
    /// detector's state again (retried every 100 ms).
    fn reconcile(&mut self, now: u64) -> anyhow::Result<()> {
        if self.vip_bound.is_some() || now < self.next_reconcile_ns {
            return Ok(());
        }
        let want = self.detector.state() == State::Active;
        let r = self.set_bound(want);
        match r {
            Ok(_) => {
                log::info!(
                    "{} {} {} after an earlier failure mono_ns={now}",
                    if want { "bound" } else { "removed" },
                    self.vip,
                    if want { "on" } else { "from" },
                );
                if want {
                    self.announce()?;
                    self.garp.burst_started(clock::now_ns());
                }
            }
            Err(e) => {
                log::warn!(
                    "still cannot {} {}: {e:#}",
                    if want { "bind" } else { "remove" },
                    self.vip
                );
                self.next_reconcile_ns = now + RECONCILE_EVERY_NS;
            }
        }
        Ok(())
    }

    fn notify(&mut self, t: Transition) {
        let Transition {
            from,
            to,
            reason,
            at_ns,
        } = t;
        self.status.state = state_code(to);
        self.status_dirty = true;
        if from == State::Active
            && reason == Reason::MasterClaimed
            && let Some(mac) = self.claim_mac.take()
        {
            // We released because the master claimed (at once, or after its
            // `--rise` replies): tell the clients that still send to our MAC
            // where the VIP lives now, in case the master's own announcement
            // did not reach them (or it never sent one: a frozen master that
            // thawed only answered our solicitation).
            if let Err(e) = self.announcer.hand_over(self.vip4, mac) {
                log::warn!(
                    "could not hand {} over to {}: {e:#}",
                    self.vip,
                    mac_str(mac)
                );
            }
        }
        if from == State::Starting
            && let Err(e) = self
                .watcher
                .maps
                .reset_max_gap(vipwatch_common::PEER_MASTER)
        {
            // The start-up gap (first ARP resolution) says nothing about
            // the path; without the reset `max_gap_ms` would keep it.
            log::warn!("could not reset the gap statistic: {e:#}");
        }
        log::info!(
            "state {} -> {}: {} mono_ns={at_ns}",
            state_name(from),
            state_name(to),
            describe(reason)
        );
        self.hooks.notify(
            state_name(to),
            &self.vip.to_string(),
            &self.iface,
            reason_token(reason),
        );
    }

    fn publish(&mut self) {
        self.status_dirty = false;
        self.last_publish_ns = clock::now_ns();
        self.published_probes = self.status.probes_sent;
        if let Err(e) = self.watcher.maps.set_status(&self.status) {
            log::warn!("could not publish status for `vipwatch stats`: {e:#}");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Whatever made us stop, do not leave the VIP behind: a stopped
        // backup that still answers for it is a split brain.
        if self.detector.state() == State::Active {
            log::warn!("stopping while holding {}: releasing it", self.vip);
            if let Err(e) = self.release() {
                log::error!("{e:#}");
            }
        }
    }
}

pub fn state_name(s: State) -> &'static str {
    match s {
        State::Starting => "STARTING",
        State::Standby => "STANDBY",
        State::Active => "ACTIVE",
        State::Isolated => "ISOLATED",
    }
}

pub fn state_code(s: State) -> u32 {
    match s {
        State::Starting => STATE_STARTING,
        State::Standby => STATE_STANDBY,
        State::Active => STATE_ACTIVE,
        State::Isolated => STATE_ISOLATED,
    }
}

fn describe(r: Reason) -> String {
    match r {
        Reason::MasterReplied => "the master answers our probes".into(),
        Reason::MasterSilent { silence_ns, probes } => {
            format!(
                "master silent for {} ({probes} probes sent since its last reply)",
                ms(silence_ns)
            )
        }
        Reason::WitnessSilent { silence_ns } => format!(
            "master AND witness silent for {}: we are the one cut off, not taking the VIP",
            ms(silence_ns)
        ),
        Reason::MasterClaimed => "the master claimed the VIP back (ARP)".into(),
        Reason::OperatorRelease => "operator release".into(),
        Reason::MasterBack { replies } => format!("master back ({replies} consecutive replies)"),
        Reason::Shutdown => "daemon stopping".into(),
    }
}

fn reason_token(r: Reason) -> &'static str {
    match r {
        Reason::MasterReplied => "master-replied",
        Reason::MasterSilent { .. } => "master-silent",
        Reason::WitnessSilent { .. } => "witness-silent",
        Reason::MasterClaimed => "master-claimed",
        Reason::OperatorRelease => "operator-release",
        Reason::MasterBack { .. } => "master-back",
        Reason::Shutdown => "shutdown",
    }
}

pub fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Used by `vipwatch stats` to name a status code.
pub fn state_name_from_code(code: u32) -> &'static str {
    match code {
        STATE_STANDBY => "STANDBY",
        STATE_ACTIVE => "ACTIVE",
        STATE_ISOLATED => "ISOLATED",
        _ => "STARTING",
    }
}
