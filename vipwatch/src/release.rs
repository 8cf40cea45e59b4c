//! `vipwatch release`: remove the VIP from an interface, the classic
//! `ifconfig eth0:0 down`.
//!
//! If a vipwatch instance here watches that VIP, it is asked (over its
//! control socket) to hand it back itself, so its state follows instead of
//! fighting, and what it did is reported. Otherwise the address is removed
//! directly, if vipwatch added it (a leftover of a killed daemon).

use anyhow::Context as _;

use crate::{
    cli::ReleaseArgs,
    control::{self, Request},
    vip::VipHandle,
};

pub fn run(args: ReleaseArgs) -> anyhow::Result<()> {
    let ReleaseArgs { iface, vip } = args;
    let request = Request::Release {
        iface: iface.clone(),
        vip: vip.to_string(),
    };
    for pid in control::daemons() {
        if let Some(outcome) = control::ask(pid, &request)?.released {
            println!("vipwatch (pid {pid}) {outcome}");
            return Ok(());
        }
    }
    // Only what vipwatch added: a host address someone names by mistake
    // stays (removing a primary would remove its whole subnet).
    let removed = VipHandle::open(&iface, vip)?
        .unbind_ours()
        .context("vipwatch release needs root (CAP_NET_ADMIN)")?;
    if removed {
        println!("removed {vip} from {iface}");
    } else {
        println!("{vip} was not on {iface}; nothing to do");
    }
    Ok(())
}
