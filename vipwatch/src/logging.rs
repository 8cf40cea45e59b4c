//! Log output: plain lines on a terminal, syslog priorities for journald,
//! or JSON lines (`--log-format json`) for log shippers.
//!
//! Under systemd, stderr is a stream into the journal, and `JOURNAL_STREAM`
//! names it (systemd.exec(5)). Lines then start with the `<N>` priority
//! prefix of sd-daemon(3), which journald strips and stores as PRIORITY, so
//! `journalctl -p warning` finds every warning; journald stamps the time
//! itself.

use std::{io::Write as _, os::fd::AsRawFd as _};

use clap::ValueEnum;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Timestamped lines; `<N>` priority prefixes instead when stderr is
    /// the journal.
    #[default]
    Text,
    /// One JSON object per line: ts, level, priority, target, msg.
    Json,
}

/// syslog(3) priority of a log level, as journald wants it.
pub fn priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

pub fn init(format: Format) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    match format {
        Format::Json => {
            builder.format(|buf, record| {
                let line = serde_json::json!({
                    "ts": buf.timestamp_micros().to_string(),
                    "level": record.level().as_str(),
                    "priority": priority(record.level()),
                    "target": record.target(),
                    "msg": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
        Format::Text if stderr_is_journal() => {
            builder.format(|buf, record| {
                writeln!(buf, "<{}>{}", priority(record.level()), record.args())
            });
        }
        Format::Text => {
            builder.format_timestamp_micros();
        }
    }
    builder.init();
}

/// Whether stderr is the stream `JOURNAL_STREAM` (`DEV:INODE`) names.
fn stderr_is_journal() -> bool {
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM")
        .ok()
        .and_then(|v| parse_stream(&v))
    else {
        return false;
    };
    // SAFETY: zeroed stat is a valid out-parameter; fd 2 is just examined.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; fstat writes only into `st`.
    let rc = unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut st) };
    rc == 0 && st.st_dev == dev && st.st_ino == ino
}

fn parse_stream(v: &str) -> Option<(u64, u64)> {
    let (dev, ino) = v.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journald_priorities_follow_syslog() {
        assert_eq!(priority(log::Level::Error), 3);
        assert_eq!(priority(log::Level::Warn), 4);
        assert_eq!(priority(log::Level::Info), 6);
        assert_eq!(priority(log::Level::Debug), 7);
    }

    #[test]
    fn journal_stream_is_device_and_inode() {
        assert_eq!(parse_stream("8:12345"), Some((8, 12345)));
        assert_eq!(parse_stream("8"), None);
        assert_eq!(parse_stream("x:1"), None);
    }
}
