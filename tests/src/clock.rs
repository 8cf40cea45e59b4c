//! Converting between [`Instant`] and `CLOCK_MONOTONIC` nanoseconds.
//!
//! The vipwatch daemon logs its timings as `CLOCK_MONOTONIC` nanoseconds;
//! the lab measures with [`Instant`]. std does not promise which clock an
//! `Instant` reads, so we take one anchor pair (an `Instant` bracketed by
//! two `clock_gettime` reads) the first time a conversion is needed and
//! convert by offset from it. Both clocks advance at the same rate, so the
//! error is the anchor's bracketing width (well under a microsecond).

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

struct Anchor {
    instant: Instant,
    mono_ns: u64,
}

fn anchor() -> &'static Anchor {
    static ANCHOR: OnceLock<Anchor> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let before = monotonic_ns();
        let instant = Instant::now();
        let after = monotonic_ns();
        Anchor {
            instant,
            mono_ns: before + (after - before) / 2,
        }
    })
}

/// The current `CLOCK_MONOTONIC` time in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always
    // exists on Linux, so the call cannot fail (checked below regardless).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    // Monotonic time is non-negative by definition.
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `CLOCK_MONOTONIC` nanosecond reading that corresponds to `t`.
pub fn to_monotonic_ns(t: Instant) -> u64 {
    let a = anchor();
    if t >= a.instant {
        a.mono_ns + duration_ns(t - a.instant)
    } else {
        a.mono_ns.saturating_sub(duration_ns(a.instant - t))
    }
}

/// The [`Instant`] that corresponds to a `CLOCK_MONOTONIC` nanosecond
/// reading, or `None` if it is too far in the past for an `Instant`.
pub fn from_monotonic_ns(ns: u64) -> Option<Instant> {
    let a = anchor();
    if ns >= a.mono_ns {
        a.instant.checked_add(Duration::from_nanos(ns - a.mono_ns))
    } else {
        a.instant.checked_sub(Duration::from_nanos(a.mono_ns - ns))
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_converts_to_now() {
        let before = monotonic_ns();
        let converted = to_monotonic_ns(Instant::now());
        let after = monotonic_ns();
        // Allow the anchor's bracketing error.
        assert!(converted + 50_000 >= before, "{converted} < {before}");
        assert!(converted <= after + 50_000, "{converted} > {after}");
    }

    #[test]
    fn round_trip_is_exact_to_the_nanosecond() {
        let t = Instant::now();
        let ns = to_monotonic_ns(t);
        let back = from_monotonic_ns(ns).expect("recent times convert");
        let diff = if back > t { back - t } else { t - back };
        assert!(diff < Duration::from_micros(1), "{diff:?}");
        // Earlier than the anchor as well.
        let earlier = t - Duration::from_millis(5);
        assert_eq!(to_monotonic_ns(earlier), ns - 5_000_000);
    }
}
