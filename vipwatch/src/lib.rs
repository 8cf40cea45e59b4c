//! vipwatch: sub-second, XDP-accelerated failover of a virtual IP.
//!
//! The binary (`main.rs`) only parses arguments and dispatches; each concern
//! lives in its own module here.

pub mod arp;
pub mod backup;
pub mod cli;
pub mod clock;
pub mod detector;
pub mod ebpf;
pub mod health;
pub mod hook;
pub mod master;
pub mod netlink;
pub mod prober;
pub mod release;
pub mod stats;
pub mod sys;
