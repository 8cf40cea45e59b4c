//! vipwatch: sub-second, XDP-accelerated failover of a virtual IP.
//!
//! The binary (`main.rs`) only parses arguments and dispatches; each concern
//! lives in its own module here. Modules are private unless the binary or
//! the end-to-end test crate needs them, so dead code shows up.

mod arp;
mod backup;
pub mod cli;
mod clock;
pub mod config;
mod conns;
mod control;
pub mod daemon;
mod detector;
mod ebpf;
mod health;
mod holder;
mod hook;
pub mod kick;
pub mod logging;
mod master;
pub mod metrics;
mod netlink;
pub mod prober;
pub mod release;
pub mod stats;
pub mod status;
mod sys;
mod systemd;
mod vip;
mod worker;
