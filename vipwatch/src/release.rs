//! `vipwatch release`: remove the VIP from an interface, the classic
//! `ifconfig eth0:0 down`. If a vipwatch backup runs on that interface it
//! is told first (SIGUSR1), so that its state follows instead of fighting.

use anyhow::Context as _;

use crate::{cli::ReleaseArgs, ebpf, netlink::Netlink};

pub fn run(args: ReleaseArgs) -> anyhow::Result<()> {
    let ReleaseArgs { iface, vip } = args;
    if let Some(pid) = ebpf::pinned_daemon_pid(&iface)
        && ebpf::process_alive(pid)
    {
        // SAFETY: kill(2) with a pid read from our own pinned status map.
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
        if rc == 0 {
            println!("told vipwatch backup (pid {pid}) on {iface} to hand {vip} back");
        } else {
            log::warn!(
                "could not signal vipwatch backup (pid {pid}): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let (rt, netlink) = Netlink::with_runtime()?;
    let index = rt.block_on(netlink.link_index(&iface))?;
    let removed = rt
        .block_on(netlink.del_address(index, vip.addr, vip.prefix))
        .with_context(|| format!("removing {vip} from {iface} (needs root / CAP_NET_ADMIN)"))?;
    if removed {
        println!("removed {vip} from {iface}");
    } else {
        println!("{vip} was not on {iface}; nothing to do");
    }
    Ok(())
}
