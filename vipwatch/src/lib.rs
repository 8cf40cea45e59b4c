//! vipwatch: sub-second, XDP-accelerated failover of a virtual IP.
//!
//! The binary (`main.rs`) only parses arguments and dispatches; each concern
//! lives in its own module here.

pub mod detector;
pub mod ebpf;
