//! What a [`crate::Client`] saw, and the numbers a user cares about:
//! who answered, how long nobody answered, whether two hosts answered at
//! once.
//!
//! All times are [`Instant`]s (monotonic); [`crate::clock`] converts them
//! to the `CLOCK_MONOTONIC` nanoseconds the daemon logs.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::SocketAddr,
    time::{Duration, Instant},
};

/// One answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The request's sequence number (index into [`Record::sends`]).
    pub seq: u64,
    /// When the request was sent.
    pub sent_at: Instant,
    /// When the answer was received.
    pub received_at: Instant,
    /// The name the answering [`crate::EchoServer`] reported.
    pub responder: String,
    /// The answer's source address.
    pub from: SocketAddr,
}

/// A stretch of time without answers; see [`Record::longest_gap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub start: Instant,
    pub end: Instant,
}

impl Gap {
    pub fn duration(&self) -> Duration {
        self.end.saturating_duration_since(self.start)
    }
}

/// Everything a [`crate::Client`] sent and received.
#[derive(Debug, Clone)]
pub struct Record {
    /// Where the requests went.
    pub target: SocketAddr,
    /// The configured send interval.
    pub interval: Duration,
    /// When the client started.
    pub started: Instant,
    /// When this record was taken (client stopped, or snapshot time).
    pub stopped: Instant,
    /// Send time of every request attempted; the index is the sequence number.
    pub sends: Vec<Instant>,
    /// Requests the kernel refused to send (e.g. no route while a link is
    /// down). They are included in `sends`.
    pub send_errors: u64,
    /// Every answer, in arrival order.
    pub answers: Vec<Answer>,
    /// Datagrams that were not a valid answer to one of our requests.
    pub bad_answers: u64,
}

impl Record {
    /// Answers from `name`, in arrival order.
    pub fn answers_from<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Answer> + 'a {
        self.answers.iter().filter(move |a| a.responder == name)
    }

    /// When the first answer from `name` received at or after `after`
    /// arrived.
    pub fn first_answer_from(&self, name: &str, after: Instant) -> Option<Instant> {
        self.answers_from(name)
            .map(|a| a.received_at)
            .filter(|&t| t >= after)
            .min()
    }

    /// When the last answer from `name` arrived.
    pub fn last_answer_from(&self, name: &str) -> Option<Instant> {
        self.answers_from(name).map(|a| a.received_at).max()
    }

    /// The outage a user sees when the service fails at `t0` and `from`
    /// takes over: the time from `t0` until the first answer from `from` to
    /// a request sent at or after `t0` arrived. `None` if there is none.
    pub fn outage_after(&self, t0: Instant, from: &str) -> Option<Duration> {
        self.answers_from(from)
            .filter(|a| a.sent_at >= t0)
            .map(|a| a.received_at)
            .min()
            .map(|t| t.saturating_duration_since(t0))
    }

    /// How long `old` and `new` both answered (split brain as a client sees
    /// it), among answers received in `[after, before]`: from the first
    /// answer of `new` to the last answer of `old`, or zero if `old` fell
    /// silent before `new` spoke (or one of them never answered).
    pub fn answered_by_both_window(
        &self,
        old: &str,
        new: &str,
        after: Instant,
        before: Instant,
    ) -> Duration {
        let within = |a: &&Answer| a.received_at >= after && a.received_at <= before;
        let first_new = self
            .answers_from(new)
            .filter(within)
            .map(|a| a.received_at)
            .min();
        let last_old = self
            .answers_from(old)
            .filter(within)
            .map(|a| a.received_at)
            .max();
        match (first_new, last_old) {
            (Some(first_new), Some(last_old)) => last_old.saturating_duration_since(first_new),
            _ => Duration::ZERO,
        }
    }

    /// The longest stretch within `[after, before]` in which no answer
    /// (from anyone) arrived. The window's edges count as boundaries, so
    /// with no answers at all the gap is the whole window.
    pub fn longest_gap(&self, after: Instant, before: Instant) -> Gap {
        if before <= after {
            return Gap {
                start: after,
                end: after,
            };
        }
        let mut times: Vec<Instant> = self
            .answers
            .iter()
            .map(|a| a.received_at)
            .filter(|&t| t >= after && t <= before)
            .collect();
        times.sort_unstable();
        let mut best = Gap {
            start: after,
            end: after,
        };
        let mut prev = after;
        for t in times.into_iter().chain(std::iter::once(before)) {
            if t - prev > best.duration() {
                best = Gap {
                    start: prev,
                    end: t,
                };
            }
            prev = t;
        }
        best
    }

    /// Answers per responder name.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.answers {
            *counts.entry(a.responder.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Answers from `name` received in `[after, before)`.
    pub fn count_from(&self, name: &str, after: Instant, before: Instant) -> usize {
        self.answers_from(name)
            .filter(|a| a.received_at >= after && a.received_at < before)
            .count()
    }

    /// Answers from anyone received in `[after, before)`.
    pub fn count_between(&self, after: Instant, before: Instant) -> usize {
        self.answers
            .iter()
            .filter(|a| a.received_at >= after && a.received_at < before)
            .count()
    }

    /// Requests sent in `[after, before)`.
    pub fn sent_between(&self, after: Instant, before: Instant) -> usize {
        self.sends
            .iter()
            .filter(|&&t| t >= after && t < before)
            .count()
    }

    /// Requests sent in `[after, before)` that got no answer.
    pub fn unanswered_between(&self, after: Instant, before: Instant) -> usize {
        let answered: HashSet<u64> = self.answers.iter().map(|a| a.seq).collect();
        self.sends
            .iter()
            .enumerate()
            .filter(|&(seq, &t)| t >= after && t < before && !answered.contains(&(seq as u64)))
            .count()
    }
}

impl fmt::Display for Record {
    /// A one-line summary: sent, answered, per responder, longest gap.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sent = self.sends.len();
        let answered = self.answers.len();
        let pct = if sent == 0 {
            0.0
        } else {
            answered as f64 * 100.0 / sent as f64
        };
        write!(
            f,
            "to {} every {:?} for {:.3}s: sent {sent} ({} failed), answered {answered} ({pct:.1}%)",
            self.target,
            self.interval,
            self.stopped
                .saturating_duration_since(self.started)
                .as_secs_f64(),
            self.send_errors
        )?;
        for (name, count) in self.counts() {
            write!(f, ", {name}: {count}")?;
        }
        let gap = self.longest_gap(self.started, self.stopped);
        write!(f, "; longest gap {:?}", gap.duration())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with requests every 10 ms from t0, answered as `who(seq)`
    /// says after 1 ms (`None`: unanswered).
    fn synthetic(n: u64, who: impl Fn(u64) -> Option<&'static str>) -> (Instant, Record) {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let sends: Vec<Instant> = (0..n).map(|s| at(s * 10)).collect();
        let answers = (0..n)
            .filter_map(|s| {
                who(s).map(|name| Answer {
                    seq: s,
                    sent_at: at(s * 10),
                    received_at: at(s * 10 + 1),
                    responder: name.to_owned(),
                    from: "192.0.2.1:7".parse().expect("valid"),
                })
            })
            .collect();
        let record = Record {
            target: "192.0.2.100:7".parse().expect("valid"),
            interval: Duration::from_millis(10),
            started: t0,
            stopped: at(n * 10),
            sends,
            send_errors: 0,
            answers,
            bad_answers: 0,
        };
        (t0, record)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// master answers seq 0..=9, nobody 10..=14, backup 15..
    fn failover() -> (Instant, Record) {
        synthetic(30, |s| match s {
            0..=9 => Some("master"),
            10..=14 => None,
            _ => Some("backup"),
        })
    }

    #[test]
    fn counts_per_responder() {
        let (t0, r) = failover();
        let counts = r.counts();
        assert_eq!(counts.get("master"), Some(&10));
        assert_eq!(counts.get("backup"), Some(&15));
        assert_eq!(counts.len(), 2);
        assert_eq!(r.count_from("backup", t0, t0 + ms(200)), 5); // seq 15..=19
        assert_eq!(r.count_between(t0, t0 + ms(200)), 15);
        assert_eq!(r.sent_between(t0, t0 + ms(200)), 20);
        assert_eq!(r.unanswered_between(t0, t0 + ms(300)), 5);
    }

    #[test]
    fn first_and_last_answers() {
        let (t0, r) = failover();
        assert_eq!(r.first_answer_from("backup", t0), Some(t0 + ms(151)));
        assert_eq!(
            r.first_answer_from("master", t0 + ms(50)),
            Some(t0 + ms(51))
        );
        assert_eq!(r.first_answer_from("master", t0 + ms(100)), None);
        assert_eq!(r.first_answer_from("nobody", t0), None);
        assert_eq!(r.last_answer_from("master"), Some(t0 + ms(91)));
    }

    #[test]
    fn outage_counts_from_the_fault_to_the_first_fresh_answer() {
        let (t0, r) = failover();
        // Master fails at 95 ms (after its last answer); backup's first
        // answer to a request sent after that arrives at 151 ms.
        assert_eq!(r.outage_after(t0 + ms(95), "backup"), Some(ms(56)));
        // Answers to requests sent before t0 do not count.
        assert_eq!(r.outage_after(t0 + ms(155), "backup"), Some(ms(6)));
        assert_eq!(r.outage_after(t0 + ms(95), "master"), None);
    }

    #[test]
    fn no_overlap_without_split_brain() {
        let (t0, r) = failover();
        assert_eq!(
            r.answered_by_both_window("master", "backup", t0, r.stopped),
            Duration::ZERO
        );
        assert_eq!(
            r.answered_by_both_window("master", "nobody", t0, r.stopped),
            Duration::ZERO
        );
    }

    #[test]
    fn overlap_when_both_answer() {
        // Alternating answers between 100 and 200 ms: both answer then.
        let (t0, r) = synthetic(30, |s| match s {
            0..=9 => Some("master"),
            10..=20 => Some(if s % 2 == 0 { "master" } else { "backup" }),
            _ => Some("backup"),
        });
        // First backup answer at 111 ms, last master answer at 201 ms.
        assert_eq!(
            r.answered_by_both_window("master", "backup", t0, r.stopped),
            ms(90)
        );
        // Restricting the window restricts the answers considered.
        assert_eq!(
            r.answered_by_both_window("master", "backup", t0 + ms(150), r.stopped),
            ms(201 - 151)
        );
    }

    #[test]
    fn longest_gap_includes_window_edges() {
        let (t0, r) = failover();
        // Answers at 1, 11, …, 91 then 151, 161, …, 291.
        let gap = r.longest_gap(t0, r.stopped);
        assert_eq!(
            gap,
            Gap {
                start: t0 + ms(91),
                end: t0 + ms(151)
            }
        );
        assert_eq!(gap.duration(), ms(60));
        // A window with no answers is one gap.
        let gap = r.longest_gap(t0 + ms(100), t0 + ms(140));
        assert_eq!(gap.duration(), ms(40));
        // The trailing edge counts.
        let gap = r.longest_gap(t0 + ms(280), t0 + ms(400));
        assert_eq!(
            gap,
            Gap {
                start: t0 + ms(291),
                end: t0 + ms(400)
            }
        );
        // Empty or inverted windows give an empty gap.
        assert_eq!(
            r.longest_gap(t0 + ms(50), t0 + ms(50)).duration(),
            Duration::ZERO
        );
        assert_eq!(
            r.longest_gap(t0 + ms(60), t0 + ms(50)).duration(),
            Duration::ZERO
        );
    }

    #[test]
    fn empty_record() {
        let (t0, r) = synthetic(0, |_| None);
        assert!(r.counts().is_empty());
        assert_eq!(r.outage_after(t0, "backup"), None);
        assert_eq!(r.longest_gap(t0, t0 + ms(10)).duration(), ms(10));
        let summary = r.to_string();
        assert!(summary.contains("sent 0"), "{summary}");
    }

    #[test]
    fn summary_names_responders() {
        let (_, r) = failover();
        let summary = r.to_string();
        assert!(
            summary.contains("master: 10") && summary.contains("backup: 15"),
            "{summary}"
        );
        assert!(summary.contains("sent 30"), "{summary}");
    }
}
