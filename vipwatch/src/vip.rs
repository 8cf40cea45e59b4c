//! The one owner of a VIP's effects: bind, unbind, announce, hand over and
//! ask who holds it, for both roles and for `vipwatch release`.
//!
//! Every call is bounded (a stuck netlink socket must not stall the loop
//! that decides failovers) and idempotent (binding a bound address or
//! removing an absent one succeeds and says so). Each instance owns its
//! own [`VipHandle`], with its own netlink and packet sockets, so one
//! instance's slow call never delays another's.

use std::time::Duration;

use anyhow::Context as _;

use crate::{
    arp::Announcer,
    config::Vip,
    netlink::{AddrEntry, Netlink},
};

/// Bound on one rtnetlink request.
pub(crate) const NETLINK_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) struct VipHandle {
    vip: Vip,
    iface: String,
    ifindex: u32,
    rt: tokio::runtime::Runtime,
    netlink: Netlink,
    announcer: Announcer,
}

impl VipHandle {
    /// Resolves the interface, opens the sockets and builds the
    /// announcement frames, so the takeover path only sends.
    pub(crate) fn open(iface: &str, vip: Vip) -> anyhow::Result<Self> {
        let (rt, netlink) = Netlink::with_runtime()?;
        let ifindex = rt.block_on(netlink.link_index(iface))?;
        let mut announcer = Announcer::open(iface)?;
        announcer.prepare(vip.addr)?;
        Ok(Self {
            vip,
            iface: iface.to_owned(),
            ifindex,
            rt,
            netlink,
            announcer,
        })
    }

    pub(crate) fn vip(&self) -> Vip {
        self.vip
    }

    pub(crate) fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The interface's MAC.
    pub(crate) fn mac(&self) -> [u8; 6] {
        self.announcer.mac()
    }

    fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        // The timer is made inside the runtime (it needs its reactor).
        self.rt
            .block_on(async { tokio::time::timeout(NETLINK_TIMEOUT, call).await })
            .map_err(|_| anyhow::anyhow!("rtnetlink did not answer within {NETLINK_TIMEOUT:?}"))
            .and_then(|r| r)
    }

    /// Binds the VIP; `Ok(false)` when it already was. Returns once the
    /// kernel delivers packets for it: announcing an IPv6 VIP before its
    /// local route is in place (see [`Netlink::is_local`]) sends clients,
    /// and the answers to the kick, to a host that drops them.
    pub(crate) fn bind(&mut self) -> anyhow::Result<bool> {
        let Vip { addr, prefix } = self.vip;
        let added = self
            .bounded(self.netlink.add_address(self.ifindex, addr, prefix))
            .with_context(|| format!("binding {} on {}", self.vip, self.iface))?;
        if addr.is_ipv6() {
            let started = std::time::Instant::now();
            match self.bounded(wait_local(&self.netlink, addr)) {
                Ok(true) if started.elapsed() > Duration::from_millis(1) => log::info!(
                    "{} on {}: usable {:?} after it was added (the kernel's address work was late)",
                    self.vip,
                    self.iface,
                    started.elapsed()
                ),
                Ok(true) => {}
                Ok(false) => log::warn!(
                    "{} on {}: not usable yet after {:?} (the kernel's address work is late); \
                     announcing anyway",
                    self.vip,
                    self.iface,
                    started.elapsed()
                ),
                Err(e) => log::warn!("{} on {}: {e:#}; announcing anyway", self.vip, self.iface),
            }
        }
        Ok(added)
    }

    /// Removes the VIP; `Ok(false)` when it was not there.
    pub(crate) fn unbind(&mut self) -> anyhow::Result<bool> {
        let Vip { addr, prefix } = self.vip;
        self.bounded(self.netlink.del_address(self.ifindex, addr, prefix))
            .with_context(|| format!("removing {} from {}", self.vip, self.iface))
    }

    /// Removes the VIP only if vipwatch added it (see
    /// [`crate::netlink::ADDR_PROTO`]): a master never removes an address
    /// someone else added, such as the host's own. `Ok(false)` when it was
    /// not there.
    pub(crate) fn unbind_ours(&mut self) -> anyhow::Result<bool> {
        match self.presence()? {
            None => Ok(false),
            Some(e) if e.ours => self.unbind(),
            Some(_) => anyhow::bail!(
                "{} on {} was not added by vipwatch (another program or an operator added it \
                 since); leaving it in place",
                self.vip,
                self.iface
            ),
        }
    }

    /// The VIP as the kernel has it on our interface, if it does.
    pub(crate) fn presence(&self) -> anyhow::Result<Option<AddrEntry>> {
        self.bounded(self.netlink.address(self.ifindex, self.vip.addr))
            .with_context(|| format!("looking for {} on {}", self.vip, self.iface))
    }

    /// Announces that the VIP lives at our MAC (gratuitous ARP request and
    /// reply, or an unsolicited NA).
    pub(crate) fn announce(&mut self) -> anyhow::Result<()> {
        self.announcer.announce(self.vip.addr)
    }

    /// Announces the VIP at `mac` (the master's), so clients that still
    /// send to us move to it at once.
    pub(crate) fn hand_over(&mut self, mac: [u8; 6]) -> anyhow::Result<()> {
        self.announcer.hand_over(self.vip.addr, mac)
    }

    /// Asks who holds the VIP (RFC 5227 ARP probe, sender IP 0.0.0.0, or a
    /// Neighbor Solicitation): a host that has it bound answers from its
    /// kernel, and the XDP program reports that answer as a claim.
    pub(crate) fn solicit(&mut self) -> anyhow::Result<()> {
        self.announcer.solicit(self.vip.addr)
    }
}

/// Waits until `addr` is local (see [`Netlink::is_local`]): polls with
/// pauses from 100 µs, doubling to 5 ms (tokio's timer rounds the short
/// ones up to its 1 ms tick), for at most [`USABLE_WAIT`]. The usual wait
/// is one poll.
async fn wait_local(netlink: &Netlink, addr: std::net::IpAddr) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + USABLE_WAIT;
    let mut pause = Duration::from_micros(100);
    loop {
        if netlink.is_local(addr).await? {
            return Ok(true);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Ok(false);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// How long a bind waits for the VIP to become usable (within
/// [`NETLINK_TIMEOUT`]).
const USABLE_WAIT: Duration = Duration::from_millis(800);
