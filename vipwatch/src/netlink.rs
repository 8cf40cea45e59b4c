//! Route netlink (rtnetlink(7)) access: interface lookup and binding or
//! releasing the VIP.
//!
//! [`Netlink::add_address`] is on the failover hot path (decision → VIP bound
//! → first gratuitous ARP), so it is exactly one `RTM_NEWADDR` request and its
//! ACK: no dump before it to check whether the address is there, the kernel's
//! `EEXIST` answers that. Everything else (lookups at start-up, status) may
//! dump.

use std::net::IpAddr;

use anyhow::{Context as _, anyhow, bail};
use futures::TryStreamExt as _;
use rtnetlink::{
    AddressMessageBuilder, RouteMessageBuilder,
    packet_route::{
        address::{
            AddressAttribute, AddressHeaderFlags, AddressMessage, AddressProtocol, CacheInfo,
        },
        link::{LinkAttribute, LinkLayerType, LinkMessage},
        route::RouteType,
    },
};

/// A route netlink socket in the network namespace of the thread that
/// called [`Netlink::connect`].
pub struct Netlink {
    handle: rtnetlink::Handle,
}

/// The `IFA_PROTO` vipwatch marks its VIPs with (`ip address` shows it as
/// `proto 118`; Linux 5.18 and later keep it): how a restarted daemon tells
/// its own leftover VIP from an address someone else added, which it must
/// never remove.
pub const ADDR_PROTO: u8 = 118;

/// One address of the host, from a dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrEntry {
    pub index: u32,
    pub addr: IpAddr,
    pub prefix: u8,
    /// `IFA_F_SECONDARY`: not the first address of its subnet on the link
    /// (removing a primary removes its secondaries too).
    pub secondary: bool,
    /// Marked with [`ADDR_PROTO`]: vipwatch added it.
    pub ours: bool,
}

/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const IFNAMSIZ_MAX: usize = 15;

impl Netlink {
    /// Opens a route netlink socket in the current network namespace and
    /// spawns its connection task on the current tokio runtime.
    ///
    /// The namespace is fixed when the socket is created: a later `setns` on
    /// this thread does not move it.
    /// A current-thread tokio runtime and a connection driven by it: the
    /// daemons call rtnetlink with `rt.block_on(...)` from their own loop,
    /// so a request is served on the calling thread with no cross-thread
    /// wake-up.
    pub fn with_runtime() -> anyhow::Result<(tokio::runtime::Runtime, Self)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the tokio runtime")?;
        let netlink = {
            let _enter = rt.enter();
            Self::connect()?
        };
        Ok((rt, netlink))
    }

    pub fn connect() -> anyhow::Result<Self> {
        // Creating the tokio netlink socket registers it with the reactor,
        // which panics outside a runtime: check first and say so instead.
        let runtime = tokio::runtime::Handle::try_current()
            .context("Netlink::connect must be called from inside a tokio runtime")?;
        let (connection, handle, _unsolicited) = rtnetlink::new_connection().context(
            "cannot open a route netlink socket (is this a Linux kernel with rtnetlink?)",
        )?;
        // We join no multicast group, so nothing arrives on `_unsolicited`;
        // the connection task ends when the last handle is dropped.
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// Interface index by name. Error text when missing:
    /// "interface eth9 does not exist; `ip link` lists interfaces".
    pub async fn link_index(&self, name: &str) -> anyhow::Result<u32> {
        if name.is_empty() || name.len() > IFNAMSIZ_MAX || name.contains(['/', ' ', '\0']) {
            bail!(
                "interface name {name:?} is not valid (1 to {IFNAMSIZ_MAX} bytes, no '/' or spaces); \
                 `ip link` lists interfaces"
            );
        }
        // RTM_GETLINK with IFLA_IFNAME and no NLM_F_DUMP: the kernel looks
        // the one link up (Linux >= 2.6.33).
        let request = self.handle.link().get().match_name(name).execute();
        match first(request).await {
            Ok(Some(link)) => Ok(link.header.index),
            Ok(None) => bail!("interface {name} does not exist; `ip link` lists interfaces"),
            Err(err) if errno(&err) == Some(libc::ENODEV) => {
                bail!("interface {name} does not exist; `ip link` lists interfaces")
            }
            Err(err) => Err(describe(err, || format!("looking up interface {name}"))),
        }
    }

    /// Interface MAC address (error if it has none / not Ethernet).
    pub async fn link_mac(&self, index: u32) -> anyhow::Result<[u8; 6]> {
        let link = self.link(index).await?;
        link_mac_of(&link)
    }

    /// Binds `addr/prefix` on the interface. Idempotent: `Ok(false)` if it
    /// was already there (`EEXIST`), `Ok(true)` if added.
    ///
    /// IPv6 addresses get `IFA_F_NODAD` so they are usable at once: RFC 4862
    /// §5.4 duplicate address detection would keep the address tentative for
    /// `RetransTimer` × `DupAddrDetectTransmits` (1 s by default), and the
    /// whole point of vipwatch is that the peer is already known to be gone.
    ///
    /// They are also added deprecated (preferred lifetime 0, valid forever):
    /// still reachable, but never chosen as the source of this host's own
    /// packets (RFC 6724 §5 rule 3), as an IPv4 VIP, a secondary address,
    /// never is. Otherwise a VIP in the subnet of the host's address can
    /// become the source of the backup's probes, which the master then
    /// answers to itself once it holds the VIP again, and of syncs the peer
    /// refuses.
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix: u8) -> anyhow::Result<bool> {
        check_prefix(addr, prefix)?;
        let mut request = self.handle.address().add(index, addr, prefix);
        request
            .message_mut()
            .attributes
            .push(AddressAttribute::Protocol(AddressProtocol::Other(
                ADDR_PROTO,
            )));
        if addr.is_ipv6() {
            // IFA_F_NODAD fits in the 8-bit ifa_flags of the header, so no
            // IFA_FLAGS attribute is needed (iproute2 does the same).
            request.message_mut().header.flags = AddressHeaderFlags::Nodad;
            // The struct is non-exhaustive: filled from the default.
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            // INFINITY_LIFE_TIME.
            lifetimes.ifa_valid = u32::MAX;
            request
                .message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(lifetimes));
        }
        // NLM_F_CREATE | NLM_F_EXCL: one round trip, and EEXIST tells us the
        // address was already bound.
        match request.execute().await {
            Ok(()) => Ok(true),
            Err(err) if errno(&err) == Some(libc::EEXIST) => Ok(false),
            Err(err) => Err(describe(err, || {
                format!("adding {addr}/{prefix} to interface index {index}")
            })),
        }
    }

    /// Whether the kernel delivers packets for `addr` locally (`ip route
    /// get ADDR` says `local`). An IPv6 address is in the interface's list
    /// as soon as it is added, but its local route is inserted by the
    /// kernel's duplicate address detection work, even with `NODAD`: a work
    /// item that needs the RTNL lock, so it can lag by hundreds of
    /// milliseconds while, say, network namespaces are being torn down.
    pub async fn is_local(&self, addr: IpAddr) -> anyhow::Result<bool> {
        let message = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(addr, if addr.is_ipv4() { 32 } else { 128 })
            .map_err(|e| anyhow!("{e}"))?
            .build();
        let mut routes = self.handle.route().get(message).execute();
        match routes.try_next().await {
            Ok(Some(route)) => Ok(route.header.kind == RouteType::Local),
            Ok(None) => Ok(false),
            // No route to it at all (ENETUNREACH): not local.
            Err(err) if errno(&err).is_some() => Ok(false),
            Err(err) => Err(describe(err, || format!("looking up the route to {addr}"))),
        }
    }

    /// Removes `addr/prefix` from the interface. Idempotent: `Ok(false)` if it
    /// was not there (`EADDRNOTAVAIL`/`ENOENT`), `Ok(true)` if removed.
    pub async fn del_address(&self, index: u32, addr: IpAddr, prefix: u8) -> anyhow::Result<bool> {
        check_prefix(addr, prefix)?;
        let message = address_message(index, addr, prefix);
        match self.handle.address().del(message).execute().await {
            Ok(()) => Ok(true),
            Err(err) if matches!(errno(&err), Some(libc::EADDRNOTAVAIL | libc::ENOENT)) => {
                Ok(false)
            }
            Err(err) => Err(describe(err, || {
                format!("removing {addr}/{prefix} from interface index {index}")
            })),
        }
    }

    /// Every interface's name and index.
    pub async fn links(&self) -> anyhow::Result<Vec<(u32, String)>> {
        let mut links = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(link) = links
            .try_next()
            .await
            .map_err(|e| describe(e, || "listing interfaces".into()))?
        {
            let name = link.attributes.iter().find_map(|attr| match attr {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            if let Some(name) = name {
                out.push((link.header.index, name));
            }
        }
        Ok(out)
    }

    /// Every address of every interface.
    pub async fn addresses(&self) -> anyhow::Result<Vec<AddrEntry>> {
        self.dump(self.handle.address().get()).await
    }

    /// `addr` on interface `index`, if it is there.
    pub async fn address(&self, index: u32, addr: IpAddr) -> anyhow::Result<Option<AddrEntry>> {
        let request = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(addr);
        Ok(self
            .dump(request)
            .await?
            .into_iter()
            .find(|e| e.index == index && e.addr == addr))
    }

    async fn dump(&self, request: rtnetlink::AddressGetRequest) -> anyhow::Result<Vec<AddrEntry>> {
        let mut addresses = request.execute();
        let mut out = Vec::new();
        while let Some(message) = addresses
            .try_next()
            .await
            .map_err(|e| describe(e, || "listing addresses".into()))?
        {
            if let Some(entry) = addr_entry(&message) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// Whether the link has its carrier (`IFF_LOWER_UP`).
    pub async fn carrier(&self, index: u32) -> anyhow::Result<bool> {
        use rtnetlink::packet_route::link::LinkFlags;
        Ok(self
            .link(index)
            .await?
            .header
            .flags
            .contains(LinkFlags::LowerUp))
    }

    /// One link by index.
    async fn link(&self, index: u32) -> anyhow::Result<LinkMessage> {
        let request = self.handle.link().get().match_index(index).execute();
        match first(request).await {
            Ok(Some(link)) => Ok(link),
            Ok(None) => bail!(
                "interface index {index} does not exist (was it deleted?); `ip link` lists interfaces"
            ),
            Err(err) if errno(&err) == Some(libc::ENODEV) => {
                bail!(
                    "interface index {index} does not exist (was it deleted?); `ip link` lists interfaces"
                )
            }
            Err(err) => Err(describe(err, || {
                format!("looking up interface index {index}")
            })),
        }
    }
}

/// The first message of a response stream; the stream is then dropped.
async fn first<S>(stream: S) -> Result<Option<LinkMessage>, rtnetlink::Error>
where
    S: futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>>,
{
    futures::pin_mut!(stream);
    stream.try_next().await
}

/// The positive errno of a netlink NACK, if that is what `err` is.
fn errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(message) => {
            message.code.map(|code| code.get().saturating_abs())
        }
        _ => None,
    }
}

/// Turns a netlink error into one that says what failed and, where the cause
/// is one a user can fix, what to do about it.
fn describe(err: rtnetlink::Error, what: impl FnOnce() -> String) -> anyhow::Error {
    let what = what();
    let hint = match errno(&err) {
        Some(libc::EPERM | libc::EACCES) => {
            Some("permission denied; vipwatch needs CAP_NET_ADMIN (run it as root)")
        }
        Some(libc::ENODEV | libc::ENXIO) => {
            Some("the interface is gone; `ip link` lists interfaces")
        }
        Some(libc::EADDRNOTAVAIL) if what.starts_with("adding") => {
            Some("the kernel refused the address (is IPv6 disabled on this interface?)")
        }
        _ => None,
    };
    let err = match &err {
        rtnetlink::Error::NetlinkError(message) => anyhow!(message.to_io()),
        _ => anyhow!(err),
    };
    match hint {
        Some(hint) => err.context(format!("{what}: {hint}")),
        None => err.context(what),
    }
}

/// Rejects prefixes longer than the address.
fn check_prefix(addr: IpAddr, prefix: u8) -> anyhow::Result<()> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        bail!("prefix length /{prefix} is too long for {addr} (at most /{max})");
    }
    Ok(())
}

/// The `RTM_DELADDR` body: same attributes `ip address del` sends.
fn address_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
    match addr {
        IpAddr::V4(v4) => AddressMessageBuilder::<std::net::Ipv4Addr>::new()
            .index(index)
            .address(v4, prefix)
            .build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
            .index(index)
            .address(v6, prefix)
            .build(),
    }
}

/// The local address an `RTM_NEWADDR` message carries.
///
/// For IPv4, `IFA_LOCAL` is the interface's own address and `IFA_ADDRESS` is
/// the peer on point-to-point links, so `IFA_LOCAL` wins when present. IPv6
/// only sends `IFA_ADDRESS` (plus `IFA_LOCAL` for peer addresses).
/// An address message as an [`AddrEntry`] (none without an address).
pub fn addr_entry(message: &AddressMessage) -> Option<AddrEntry> {
    let addr = local_address(message)?;
    let ours = message.attributes.iter().any(|attr| {
        matches!(attr, AddressAttribute::Protocol(AddressProtocol::Other(p)) if *p == ADDR_PROTO)
    });
    Some(AddrEntry {
        index: message.header.index,
        addr,
        prefix: message.header.prefix_len,
        secondary: message.header.flags.contains(AddressHeaderFlags::Secondary),
        ours,
    })
}

fn local_address(message: &AddressMessage) -> Option<IpAddr> {
    let local = message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Local(local) => Some(*local),
        _ => None,
    });
    let address = message.attributes.iter().find_map(|attr| match attr {
        AddressAttribute::Address(address) => Some(*address),
        _ => None,
    });
    local.or(address)
}

/// The MAC of an Ethernet link.
fn link_mac_of(link: &LinkMessage) -> anyhow::Result<[u8; 6]> {
    let index = link.header.index;
    let name = link
        .attributes
        .iter()
        .find_map(|attr| match attr {
            LinkAttribute::IfName(name) => Some(name.as_str()),
            _ => None,
        })
        .unwrap_or("?");
    if link.header.link_layer_type != LinkLayerType::Ether {
        bail!(
            "interface {name} (index {index}) is not Ethernet (link type {:?}); \
             vipwatch announces the VIP with ARP/NDP and needs an Ethernet interface",
            link.header.link_layer_type
        );
    }
    let address = link.attributes.iter().find_map(|attr| match attr {
        LinkAttribute::Address(address) => Some(address.as_slice()),
        _ => None,
    });
    match address.map(<[u8; 6]>::try_from) {
        Some(Ok(mac)) if mac != [0; 6] => Ok(mac),
        _ => bail!(
            "interface {name} (index {index}) has no MAC address; pick an Ethernet interface from `ip link`"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use rtnetlink::{packet_core::ErrorMessage, packet_route::AddressFamily};

    use super::*;

    fn nack(errno: i32) -> rtnetlink::Error {
        let mut message = ErrorMessage::default();
        message.code = std::num::NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(message)
    }

    #[test]
    fn errno_of_nack_is_positive() {
        assert_eq!(errno(&nack(libc::EEXIST)), Some(libc::EEXIST));
        assert_eq!(errno(&rtnetlink::Error::RequestFailed), None);
    }

    #[test]
    fn describe_gives_advice_for_permission_errors() {
        let text = format!(
            "{:#}",
            describe(nack(libc::EPERM), || "adding 192.0.2.10/24".into())
        );
        assert!(text.contains("CAP_NET_ADMIN"), "{text}");
        assert!(text.contains("adding 192.0.2.10/24"), "{text}");
    }

    #[test]
    fn prefix_is_bounded_by_family() {
        assert!(check_prefix(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 32).is_ok());
        assert!(check_prefix(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 33).is_err());
        assert!(check_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).is_ok());
        assert!(check_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 129).is_err());
    }

    #[test]
    fn delete_message_names_the_address() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        let message = address_message(7, IpAddr::V4(vip), 24);
        assert_eq!(message.header.index, 7);
        assert_eq!(message.header.prefix_len, 24);
        assert_eq!(local_address(&message), Some(IpAddr::V4(vip)));
    }

    fn addr_message(family: AddressFamily, attributes: Vec<AddressAttribute>) -> AddressMessage {
        let mut message = AddressMessage::default();
        message.header.family = family;
        message.attributes = attributes;
        message
    }

    #[test]
    fn ipv4_local_wins_over_peer_address() {
        let local = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let peer = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let message = addr_message(
            AddressFamily::Inet,
            vec![
                AddressAttribute::Address(peer),
                AddressAttribute::Local(local),
            ],
        );
        assert_eq!(local_address(&message), Some(local));
    }

    #[test]
    fn ipv6_uses_address() {
        let addr: IpAddr = "2001:db8::10".parse().expect("literal");
        let message = addr_message(AddressFamily::Inet6, vec![AddressAttribute::Address(addr)]);
        assert_eq!(local_address(&message), Some(addr));
        assert_eq!(
            local_address(&addr_message(AddressFamily::Inet6, vec![])),
            None
        );
    }

    fn link_message(attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut link = LinkMessage::default();
        link.header.index = 3;
        link.header.link_layer_type = LinkLayerType::Ether;
        link.attributes = attrs;
        link
    }

    #[test]
    fn link_mac_requires_ethernet_with_address() {
        let mac = [0x02, 0, 0x5e, 0, 0x53, 1];
        let link = link_message(vec![LinkAttribute::Address(mac.to_vec())]);
        assert_eq!(link_mac_of(&link).expect("ethernet link"), mac);

        let no_mac = link_message(vec![LinkAttribute::IfName("veth0".into())]);
        let text = format!("{:#}", link_mac_of(&no_mac).expect_err("no address"));
        assert!(text.contains("veth0") && text.contains("no MAC"), "{text}");

        let mut tun = link_message(vec![]);
        tun.header.link_layer_type = LinkLayerType::None;
        assert!(
            link_mac_of(&tun)
                .expect_err("not ethernet")
                .to_string()
                .contains("not Ethernet")
        );
    }
}

/// What an rtnetlink notification says about our interfaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// An address was added to or removed from interface `index`.
    Address { index: u32, addr: IpAddr },
    /// Interface `index`'s flags, as of this notification: `carrier` is
    /// `IFF_LOWER_UP`.
    Link { index: u32, carrier: bool },
    /// The socket overflowed: notifications were lost, re-read everything.
    Lost,
}

/// A route netlink socket subscribed to address and link changes
/// (`RTMGRP_LINK`, `RTMGRP_IPV4_IFADDR`, `RTMGRP_IPV6_IFADDR`), read
/// without blocking by a thread that polls it with other descriptors.
/// Notifications are triggers: whoever acts on one re-reads the state.
pub struct Watch {
    fd: std::os::fd::OwnedFd,
    buf: Vec<u8>,
}

impl Watch {
    pub fn open() -> anyhow::Result<Self> {
        use std::os::fd::FromRawFd as _;
        // SAFETY: socket(2) takes no pointers; the fd is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error())
                .context("opening a route netlink socket for address notifications");
        }
        // SAFETY: raw is a fresh fd nobody else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: a zeroed sockaddr_nl is valid; fields set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups =
            (libc::RTMGRP_LINK | libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: sa is valid for its length.
        let rc = unsafe {
            libc::bind(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                (&raw const sa).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .context("subscribing to address and link notifications");
        }
        Ok(Self {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    pub fn fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }

    /// Everything waiting, in order.
    pub fn drain(&mut self) -> Vec<Change> {
        let mut out = Vec::new();
        loop {
            // SAFETY: the buffer is ours and valid for its length.
            let n = unsafe {
                libc::recv(
                    std::os::fd::AsRawFd::as_raw_fd(&self.fd),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        out.push(Change::Lost);
                        continue;
                    }
                    Some(libc::EINTR) => continue,
                    _ => return out,
                }
            }
            let n = n as usize;
            parse_changes(&self.buf[..n], &mut out);
        }
    }
}

/// The changes in one datagram of notifications.
fn parse_changes(mut bytes: &[u8], out: &mut Vec<Change>) {
    use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
    use rtnetlink::packet_route::{RouteNetlinkMessage, link::LinkFlags};
    while bytes.len() >= 16 {
        let len = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if len < 16 || len > bytes.len() {
            return;
        }
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]) {
            match message.payload {
                NetlinkPayload::InnerMessage(
                    RouteNetlinkMessage::NewAddress(a) | RouteNetlinkMessage::DelAddress(a),
                ) => {
                    if let Some(addr) = local_address(&a) {
                        out.push(Change::Address {
                            index: a.header.index,
                            addr,
                        });
                    }
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    out.push(Change::Link {
                        index: l.header.index,
                        carrier: l.header.flags.contains(LinkFlags::LowerUp),
                    });
                }
                NetlinkPayload::Overrun(_) => out.push(Change::Lost),
                _ => {}
            }
        }
        // Messages are 4-byte aligned.
        let step = (len + 3) & !3;
        bytes = &bytes[step.min(bytes.len())..];
    }
}
