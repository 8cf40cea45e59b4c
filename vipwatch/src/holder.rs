//! The timing rules of the kick, shared by both machines: what a host does
//! while it holds the VIP (sync its connection table to its peer every
//! `conn_sync`, the whole table every second) and when it kicks the
//! connections its peer had (once per takeover, right after the VIP is
//! bound and announced, or once the takeover's hook has finished when the
//! operator asks for it, bounded by a timeout). Pure, like the machines
//! that embed it: they turn its answers into their own actions.

use crate::{config, conns::SNAPSHOT_EVERY_NS, kick};

#[derive(Clone, Debug)]
pub(crate) struct Holder {
    mode: kick::Mode,
    sync_ns: u64,
    after_hook: bool,
    hook_timeout_ns: u64,
    /// Hooks queued (one per state change, when a hook is configured) and
    /// finished so far: hooks run one at a time, in order.
    hooks_queued: u64,
    hooks_done: u64,
    /// A kick waiting for hook number `.0` to finish, or until `.1`.
    waiting: Option<(u64, u64)>,
    next_sync_ns: Option<u64>,
    next_snapshot_ns: u64,
}

/// What the holder asks for at a deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    pub(crate) kick: bool,
    /// Send the table's changes; `Some(true)`: the whole table.
    pub(crate) sync: Option<bool>,
}

impl Holder {
    pub(crate) fn new(c: &config::Conn) -> Self {
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self {
            mode: c.kick,
            sync_ns: ns(c.sync),
            after_hook: c.after_hook,
            hook_timeout_ns: ns(c.hook_timeout),
            hooks_queued: 0,
            hooks_done: 0,
            waiting: None,
            next_sync_ns: None,
            next_snapshot_ns: 0,
        }
    }

    fn on(&self) -> bool {
        self.mode != kick::Mode::Off
    }

    /// A state change was reported (its hook is queued, if configured).
    pub(crate) fn notified(&mut self) {
        self.hooks_queued += 1;
    }

    /// A hook finished; `true` if the kick that waited for it is due now.
    pub(crate) fn hook_done(&mut self) -> bool {
        self.hooks_done += 1;
        match self.waiting {
            Some((hook, _)) if self.hooks_done >= hook => {
                self.waiting = None;
                true
            }
            _ => false,
        }
    }

    /// The VIP was bound here at `now_ns` (after a takeover whose state
    /// change was the last one reported): start syncing; `true` if the
    /// kick is due now.
    pub(crate) fn bound(&mut self, now_ns: u64) -> bool {
        if !self.on() {
            return false;
        }
        self.next_sync_ns = Some(now_ns);
        self.next_snapshot_ns = now_ns;
        if self.after_hook && self.hooks_done < self.hooks_queued {
            self.waiting = Some((self.hooks_queued, now_ns + self.hook_timeout_ns));
            false
        } else {
            true
        }
    }

    /// The VIP left this host: no more syncs, no pending kick.
    pub(crate) fn released(&mut self) {
        self.next_sync_ns = None;
        self.waiting = None;
    }

    pub(crate) fn next_deadline(&self) -> Option<u64> {
        [self.next_sync_ns, self.waiting.map(|(_, until)| until)]
            .into_iter()
            .flatten()
            .min()
    }

    pub(crate) fn tick(&mut self, now_ns: u64) -> Due {
        let mut due = Due::default();
        if let Some((_, until)) = self.waiting
            && now_ns >= until
        {
            // The hook overran: the clients wait no longer.
            self.waiting = None;
            due.kick = true;
        }
        if let Some(at) = self.next_sync_ns
            && now_ns >= at
        {
            let snapshot = now_ns >= self.next_snapshot_ns;
            if snapshot {
                self.next_snapshot_ns = now_ns + SNAPSHOT_EVERY_NS;
            }
            // From the due time, so syncs keep their pace; from now after
            // a stall, so they do not burst.
            let next = at + self.sync_ns;
            self.next_sync_ns = Some(if next <= now_ns {
                now_ns + self.sync_ns
            } else {
                next
            });
            due.sync = Some(snapshot);
        }
        due
    }

    /// Whether a kick waits for a hook.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> bool {
        self.waiting.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;

    fn holder(after_hook: bool) -> Holder {
        Holder::new(&config::Conn {
            after_hook,
            hook_timeout: Duration::from_millis(500),
            ..config::Conn::default()
        })
    }

    #[test]
    fn kicks_at_once_and_syncs_every_10_ms_with_a_snapshot_every_second() {
        let mut h = holder(false);
        assert_eq!(h.next_deadline(), None, "nothing before holding");
        assert!(h.bound(100 * MS));
        assert_eq!(h.next_deadline(), Some(100 * MS));
        assert_eq!(
            h.tick(100 * MS),
            Due {
                kick: false,
                sync: Some(true)
            },
            "a snapshot first"
        );
        let mut snapshots = 0;
        let mut syncs = 0;
        for k in 1..=200 {
            let now = 100 * MS + k * 10 * MS;
            assert_eq!(h.next_deadline(), Some(now));
            match h.tick(now).sync {
                Some(true) => snapshots += 1,
                Some(false) => syncs += 1,
                None => panic!("a sync every 10 ms"),
            }
        }
        assert_eq!(snapshots, 2, "one a second");
        assert_eq!(syncs, 198);
        h.released();
        assert_eq!(h.next_deadline(), None);
    }

    #[test]
    fn after_a_stall_syncs_resume_without_a_burst() {
        let mut h = holder(false);
        h.bound(0);
        h.tick(0);
        assert!(h.tick(95 * MS).sync.is_some());
        assert_eq!(h.next_deadline(), Some(105 * MS));
    }

    #[test]
    fn with_kick_after_hook_the_kick_waits_for_the_takeover_s_hook() {
        let mut h = holder(true);
        h.notified(); // STANDBY, at start
        assert!(!h.hook_done(), "no kick pending");
        h.notified(); // ACTIVE
        assert!(!h.bound(MS), "waits for the ACTIVE hook");
        assert!(h.waiting());
        assert!(h.hook_done(), "its hook finished: kick");
        assert!(!h.waiting());
    }

    #[test]
    fn a_hook_that_overruns_delays_the_kick_by_the_timeout_only() {
        let mut h = holder(true);
        h.notified();
        h.notified();
        h.hook_done(); // the older hook
        assert!(!h.bound(MS));
        assert!(!h.tick(MS + 499 * MS).kick, "not one ns early");
        assert!(h.tick(MS + 500 * MS).kick);
        assert!(!h.hook_done(), "a late hook kicks nothing more");
    }

    #[test]
    fn without_kick_nothing_is_synced_or_kicked() {
        let mut h = Holder::new(&config::Conn {
            kick: kick::Mode::Off,
            ..config::Conn::default()
        });
        assert!(!h.bound(MS));
        assert_eq!(h.next_deadline(), None);
        assert_eq!(h.tick(10 * MS), Due::default());
    }
}
