//! The systemd notification protocol (sd_notify(3)), through the
//! `sd-notify` crate: `READY=1` once every instance is attached and has its
//! first state, `WATCHDOG=1` while every instance's loop turns,
//! `RELOADING=1`/`READY=1` around a reload, `STOPPING=1` on the way out, and
//! a one-line `STATUS=` that `systemctl status` shows.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op.
//!
//! The watchdog is fed from the main thread, but only when every
//! instance's own loop has turned recently (each loop wakes at least every
//! [`crate::worker::LOOP_TURN_MAX_NS`]): a stalled detection loop, not
//! just a stalled process, gets the daemon restarted (`WatchdogSec=` in the
//! unit; `Restart=on-failure`).

use std::time::Duration;

use sd_notify::NotifyState;

/// How long readiness waits for instances still STARTING before saying
/// READY anyway (and why): a master that never answers must not make
/// systemd fail the start after `TimeoutStartSec`.
pub const READY_AT_THE_LATEST: Duration = Duration::from_secs(10);

pub struct Systemd {
    /// `WATCHDOG_USEC`, if the watchdog is on for us.
    watchdog: Option<Duration>,
    ready: bool,
    last_ping_ns: u64,
    /// The instance whose stalled loop withholds the watchdog, logged once.
    stalled: Option<String>,
}

impl Systemd {
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            ready: false,
            last_ping_ns: 0,
            stalled: None,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// How long the main loop may sleep: it must notice readiness soon and
    /// feed the watchdog at twice its rate.
    pub fn max_sleep_ns(&self) -> u64 {
        let mut ns = 1_000_000_000;
        if !self.ready {
            ns = 10_000_000;
        }
        if let Some(w) = self.watchdog {
            ns = ns.min(nanos(w) / 4);
        }
        ns.max(1_000_000)
    }

    pub fn ready(&mut self, status: &str) {
        self.ready = true;
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => send(&[NotifyState::Reloading, now]),
            Err(e) => log::debug!("sd_notify: no monotonic time: {e}"),
        }
    }

    pub fn reloaded(&self, status: &str) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    pub fn stopping(&self) {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }

    /// Feeds the watchdog if it is on, due, and every loop turned lately;
    /// `loops`: (instance, CLOCK_MONOTONIC ns of its last turn).
    pub fn watchdog<'a>(&mut self, now_ns: u64, loops: impl IntoIterator<Item = (&'a str, u64)>) {
        let Some(period) = self.watchdog else {
            return;
        };
        let period_ns = nanos(period);
        if now_ns.saturating_sub(self.last_ping_ns) < period_ns / 4 {
            return;
        }
        match stalled(now_ns, period_ns, loops) {
            None => {
                if let Some(name) = self.stalled.take() {
                    log::warn!(
                        "instance {name}'s loop turns again: feeding the systemd watchdog again"
                    );
                }
                self.last_ping_ns = now_ns;
                send(&[NotifyState::Watchdog]);
            }
            Some((name, age_ns)) => {
                if self.stalled.as_deref() != Some(name) {
                    log::error!(
                        "instance {name}'s loop has not turned for {} ms: not feeding the systemd watchdog \
                         (it restarts the daemon after WatchdogSec={} ms)",
                        age_ns / 1_000_000,
                        period.as_millis()
                    );
                    self.stalled = Some(name.to_owned());
                }
            }
        }
    }
}

/// The first loop that has not turned within half the watchdog period
/// (twice the longest a healthy loop sleeps is far less), with its age.
pub fn stalled<'a>(
    now_ns: u64,
    period_ns: u64,
    loops: impl IntoIterator<Item = (&'a str, u64)>,
) -> Option<(&'a str, u64)> {
    let limit = (period_ns / 2).max(2 * crate::worker::LOOP_TURN_MAX_NS);
    loops
        .into_iter()
        .map(|(name, at)| (name, now_ns.saturating_sub(at)))
        .find(|(_, age)| *age > limit)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        // Not fatal: systemd notices a missing READY (start timeout) or
        // WATCHDOG (restart) by itself.
        log::warn!("sd_notify failed: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_loop_older_than_half_the_watchdog_period_is_stalled() {
        let loops = [("a", 11 * S), ("b", 10 * S - S / 2)];
        assert_eq!(stalled(11 * S - S / 2, 2 * S, loops), None);
        assert_eq!(
            stalled(11 * S + S / 10, 2 * S, loops),
            Some(("b", S + S / 2 + S / 10))
        );
    }

    #[test]
    fn a_short_watchdog_still_allows_two_loop_turns() {
        // WatchdogSec=100ms: half is 50 ms, less than a quiet loop's sleep.
        let loops = [("a", S)];
        assert_eq!(stalled(S + 150_000_000, 100_000_000, loops), None);
        assert!(stalled(S + 250_000_000, 100_000_000, loops).is_some());
    }

    #[test]
    fn without_watchdog_the_main_loop_still_wakes_for_readiness() {
        let mut s = Systemd {
            watchdog: None,
            ready: false,
            last_ping_ns: 0,
            stalled: None,
        };
        assert_eq!(s.max_sleep_ns(), 10_000_000);
        s.ready = true;
        assert_eq!(s.max_sleep_ns(), 1_000_000_000);
        s.watchdog = Some(Duration::from_secs(2));
        assert_eq!(s.max_sleep_ns(), 500_000_000);
    }
}
