//! Announcing and probing the VIP on the link: gratuitous ARP (RFC 5227,
//! RFC 5944), ARP probes (RFC 5227 §2.1.1), unsolicited IPv6 Neighbor
//! Advertisements (RFC 4861 §7.2.6) and Neighbor Solicitations (§7.2.2).
//!
//! The frame builders are pure and return fixed-size arrays, so building one
//! never touches the heap. [`Announcer`] keeps one `AF_PACKET` socket open
//! per interface and the frames for each VIP prebuilt, so the first frame of
//! a failover leaves after nothing but a table lookup and `sendto(2)`.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{FromRawFd as _, IntoRawFd as _, OwnedFd},
    time::Duration,
};

use anyhow::{Context as _, bail};
use pnet_datalink::{ChannelType, DataLinkSender, MacAddr, NetworkInterface};
use pnet_packet::{
    arp::{ArpHardwareTypes, ArpOperation, MutableArpPacket},
    ethernet::{EtherTypes, MutableEthernetPacket},
    icmpv6::{
        Icmpv6Code, Icmpv6Packet, Icmpv6Types,
        ndp::{
            MutableNdpOptionPacket, MutableNeighborAdvertPacket, MutableNeighborSolicitPacket,
            NdpOptionType, NdpOptionTypes, NeighborAdvertFlags,
        },
    },
    ip::IpNextHeaderProtocols,
    ipv6::MutableIpv6Packet,
};

use crate::config::Garp;

/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub const ARP_FRAME_LEN: usize = 14 + 28;
/// Ethernet header (14) + IPv6 header (40) + Neighbor Advertisement or
/// Solicitation (24) + one link-layer address option (8).
pub const NDP_FRAME_LEN: usize = 14 + 40 + 24 + 8;

/// ARP opcode of a request (RFC 826).
pub const ARP_REQUEST: u16 = 1;
/// ARP opcode of a reply (RFC 826).
pub const ARP_REPLY: u16 = 2;

const BROADCAST: [u8; 6] = [0xff; 6];
/// `ff02::1` maps to `33:33:00:00:00:01` (RFC 2464 §7).
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: [u8; 6] = [0x33, 0x33, 0, 0, 0, 1];

/// `aa:bb:cc:dd:ee:ff`, for logs and status.
pub fn mac_str(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// The fields of an IPv4-over-Ethernet ARP packet that vipwatch looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arp {
    /// Opcode: [`ARP_REQUEST`], [`ARP_REPLY`] or anything else seen on the wire.
    pub op: u16,
    /// Sender hardware address.
    pub sha: [u8; 6],
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target hardware address.
    pub tha: [u8; 6],
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// ARP Announcement (RFC 5227 §3): a broadcast request with sender and
/// target IP both the VIP and the target hardware address zero.
pub fn garp_request(mac: [u8; 6], vip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(
        mac,
        Arp {
            op: ARP_REQUEST,
            sha: mac,
            spa: vip,
            tha: [0; 6],
            tpa: vip,
        },
    )
}

/// Gratuitous ARP reply (RFC 5944 §4.6): a broadcast reply with sender and
/// target IP both the VIP and target hardware address = our MAC.
///
/// Linux's `arp_is_garp()` only treats a *reply* as gratuitous when
/// `tha == sha`; with that, it replaces a neighbour entry even inside
/// `locktime`, which the request form alone may not do.
pub fn garp_reply(mac: [u8; 6], vip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(
        mac,
        Arp {
            op: ARP_REPLY,
            sha: mac,
            spa: vip,
            tha: mac,
            tpa: vip,
        },
    )
}

/// ARP Probe (RFC 5227 §2.1.1): a broadcast request with sender IP
/// 0.0.0.0, so it asks who has `target` without polluting anyone's ARP
/// cache with our MAC.
pub fn arp_probe(mac: [u8; 6], target: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(
        mac,
        Arp {
            op: ARP_REQUEST,
            sha: mac,
            spa: Ipv4Addr::UNSPECIFIED,
            tha: [0; 6],
            tpa: target,
        },
    )
}

/// A broadcast Ethernet frame carrying `arp`.
fn arp_frame(src: [u8; 6], arp: Arp) -> [u8; ARP_FRAME_LEN] {
    let Arp {
        op,
        sha,
        spa,
        tha,
        tpa,
    } = arp;
    let mut frame = [0u8; ARP_FRAME_LEN];
    {
        // The array is exactly Ethernet + ARP long, so neither view can fail.
        let mut eth =
            MutableEthernetPacket::new(&mut frame).expect("42 bytes hold an Ethernet header");
        eth.set_destination(MacAddr::from(BROADCAST));
        eth.set_source(MacAddr::from(src));
        eth.set_ethertype(EtherTypes::Arp);
    }
    let mut packet = MutableArpPacket::new(&mut frame[14..]).expect("28 bytes hold an ARP packet");
    packet.set_hardware_type(ArpHardwareTypes::Ethernet);
    packet.set_protocol_type(EtherTypes::Ipv4);
    packet.set_hw_addr_len(6);
    packet.set_proto_addr_len(4);
    packet.set_operation(ArpOperation::new(op));
    packet.set_sender_hw_addr(MacAddr::from(sha));
    packet.set_sender_proto_addr(spa);
    packet.set_target_hw_addr(MacAddr::from(tha));
    packet.set_target_proto_addr(tpa);
    frame
}

/// Parses an Ethernet II frame carrying IPv4-over-Ethernet ARP. `None` for
/// anything else (other EtherTypes, 802.1Q tags, other hardware or protocol
/// types, truncated frames). Trailing padding is ignored.
#[cfg(test)]
pub fn parse_arp(frame: &[u8]) -> Option<Arp> {
    use pnet_packet::{Packet as _, arp::ArpPacket, ethernet::EthernetPacket};
    let eth = EthernetPacket::new(frame)?;
    if eth.get_ethertype() != EtherTypes::Arp {
        return None;
    }
    let arp = ArpPacket::new(eth.payload())?;
    if arp.get_hardware_type() != ArpHardwareTypes::Ethernet
        || arp.get_protocol_type() != EtherTypes::Ipv4
        || arp.get_hw_addr_len() != 6
        || arp.get_proto_addr_len() != 4
    {
        return None;
    }
    Some(Arp {
        op: arp.get_operation().0,
        sha: arp.get_sender_hw_addr().octets(),
        spa: arp.get_sender_proto_addr(),
        tha: arp.get_target_hw_addr().octets(),
        tpa: arp.get_target_proto_addr(),
    })
}

/// Unsolicited Neighbor Advertisement (RFC 4861 §7.2.6) for `addr`: sent
/// from `addr` to all-nodes `ff02::1`, hop limit 255 (receivers drop
/// anything else, §7.1.2), Override set so neighbours replace the cached
/// link-layer address, Solicited clear, with a Target Link-Layer
/// Address option carrying `mac`. `router` sets the Router flag, which says
/// whether the sender forwards (§4.4): a neighbour that cached `addr` as a
/// router and receives an NA without it stops using it as one (§7.2.5).
pub fn unsolicited_na(mac: [u8; 6], addr: Ipv6Addr, router: bool) -> [u8; NDP_FRAME_LEN] {
    na_naming(mac, mac, addr, router)
}

/// [`unsolicited_na`] sent by `eth_src` naming `owner` as the link-layer
/// address of `addr` (the hand-back to the master).
fn na_naming(
    eth_src: [u8; 6],
    owner: [u8; 6],
    addr: Ipv6Addr,
    router: bool,
) -> [u8; NDP_FRAME_LEN] {
    ndp_frame(
        (ALL_NODES_MAC, eth_src),
        (addr, ALL_NODES),
        (NdpOptionTypes::TargetLLAddr, owner),
        |icmp| {
            let mut na = MutableNeighborAdvertPacket::new(icmp)
                .expect("32 bytes hold a Neighbor Advertisement");
            na.set_icmpv6_type(Icmpv6Types::NeighborAdvert);
            na.set_icmpv6_code(Icmpv6Code::new(0));
            na.set_flags(if router {
                NeighborAdvertFlags::Override | NeighborAdvertFlags::Router
            } else {
                NeighborAdvertFlags::Override
            });
            na.set_target_addr(addr);
        },
    )
}

/// The solicited-node multicast address of `target` (RFC 4291 §2.7.1)
/// and its Ethernet mapping (RFC 2464 §7).
fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    (group, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
}

/// Neighbor Solicitation (RFC 4861 §4.3) for `target` from `src` (one of
/// our link-local addresses) to target's solicited-node group, hop limit
/// 255, with a Source Link-Layer Address option carrying `mac`. A host that
/// has `target` answers with a solicited NA to us: the IPv6 form of the
/// RFC 5227 ARP probe, and what the XDP program counts as its answer.
pub fn neighbor_solicit(mac: [u8; 6], src: Ipv6Addr, target: Ipv6Addr) -> [u8; NDP_FRAME_LEN] {
    let (group, group_mac) = solicited_node(target);
    ndp_frame(
        (group_mac, mac),
        (src, group),
        (NdpOptionTypes::SourceLLAddr, mac),
        |icmp| {
            let mut ns = MutableNeighborSolicitPacket::new(icmp)
                .expect("32 bytes hold a Neighbor Solicitation");
            ns.set_icmpv6_type(Icmpv6Types::NeighborSolicit);
            ns.set_icmpv6_code(Icmpv6Code::new(0));
            ns.set_target_addr(target);
        },
    )
}

/// What an NA and an NS share: Ethernet (`eth` = destination, source),
/// IPv6 (`ip` = source, destination) with hop limit 255 (receivers drop
/// anything else, RFC 4861 §7.1), a 24-byte message that `message` fills
/// in (type, code, flags, target), one link-layer address option, and the
/// ICMPv6 checksum over all of it.
fn ndp_frame(
    eth: ([u8; 6], [u8; 6]),
    ip: (Ipv6Addr, Ipv6Addr),
    option: (NdpOptionType, [u8; 6]),
    message: impl FnOnce(&mut [u8]),
) -> [u8; NDP_FRAME_LEN] {
    const ICMP_LEN: usize = 24 + 8;
    let mut frame = [0u8; NDP_FRAME_LEN];
    {
        let mut e =
            MutableEthernetPacket::new(&mut frame).expect("86 bytes hold an Ethernet header");
        e.set_destination(MacAddr::from(eth.0));
        e.set_source(MacAddr::from(eth.1));
        e.set_ethertype(EtherTypes::Ipv6);
    }
    {
        let mut h = MutableIpv6Packet::new(&mut frame[14..]).expect("72 bytes hold an IPv6 header");
        h.set_version(6);
        h.set_payload_length(ICMP_LEN as u16);
        h.set_next_header(IpNextHeaderProtocols::Icmpv6);
        h.set_hop_limit(255);
        h.set_source(ip.0);
        h.set_destination(ip.1);
    }
    let icmp = &mut frame[14 + 40..];
    message(&mut icmp[..24]);
    {
        let mut o = MutableNdpOptionPacket::new(&mut icmp[24..]).expect("8 bytes hold the option");
        o.set_option_type(option.0);
        // In units of 8 octets, type and length included (RFC 4861 §4.6).
        o.set_length(1);
        o.set_data(&option.1);
    }
    let checksum = {
        let packet = Icmpv6Packet::new(icmp).expect("32 bytes hold an ICMPv6 header");
        pnet_packet::icmpv6::checksum(&packet, &ip.0, &ip.1)
    };
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    frame
}

/// The frames announcing one VIP, built once.
#[derive(Clone, Copy, Debug)]
enum Frames {
    /// Request form first (RFC 5227 §3), then the reply form (RFC 5944
    /// §4.6): some stacks only act on one of them.
    V4 {
        request: [u8; ARP_FRAME_LEN],
        reply: [u8; ARP_FRAME_LEN],
    },
    V6 {
        na: [u8; NDP_FRAME_LEN],
    },
}

/// Sends gratuitous ARP / unsolicited NA for VIPs on one interface.
///
/// Holds only the sending half of an `AF_PACKET` socket, bound with
/// protocol 0 so the kernel delivers nothing to it: an `ETH_P_ALL` socket
/// would make `dev_queue_xmit_nit()` clone every frame the host sends on the
/// interface, and queue every received one, for a reader that never reads.
pub struct Announcer {
    iface: String,
    mac: [u8; 6],
    tx: Box<dyn DataLinkSender>,
    /// Prebuilt frames per VIP. vipwatch has a handful of VIPs, so a linear
    /// scan beats hashing.
    frames: Vec<(IpAddr, Frames)>,
    /// See [`Self::solicit_source`].
    link_local: Option<Ipv6Addr>,
    /// The Router flag of our NAs: set, as the kernel sets it in its own,
    /// when the interface forwards IPv6 (`net.ipv6.conf.IFACE.forwarding`,
    /// read again for every IPv6 announcement, see
    /// [`Self::follow_forwarding`]). The hand-back NA names the master with
    /// the same flag: a pair is configured alike.
    router: bool,
    /// That sysctl, kept open: a read at offset 0 costs a microsecond where
    /// opening it again would cost tens on the takeover path. `None` when
    /// the interface has no IPv6.
    forwarding: Option<std::fs::File>,
}

impl Announcer {
    /// Opens the sending socket on `iface` (needs `CAP_NET_RAW`).
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let interface = find_interface(iface)?;
        let mac = interface_mac(&interface)?;
        let tx = packet_channel(&interface)?;
        let forwarding =
            std::fs::File::open(format!("/proc/sys/net/ipv6/conf/{iface}/forwarding")).ok();
        Ok(Self {
            iface: interface.name,
            mac,
            tx,
            frames: Vec::new(),
            link_local: None,
            router: forwarding.as_ref().is_some_and(ipv6_forwarding),
            forwarding,
        })
    }

    /// The interface's MAC address, as read when the announcer was opened.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Builds and caches the frames for `vip`, so that [`Self::announce`]
    /// only sends. Call it at start-up for every VIP; `announce` calls it
    /// for a VIP it has not seen.
    pub fn prepare(&mut self, vip: IpAddr) -> anyhow::Result<()> {
        self.frames_for(vip).map(drop)
    }

    /// Announces that `vip` now lives at our MAC: for IPv4 the ARP request
    /// form then the reply form, back to back; for IPv6 one unsolicited NA.
    pub fn announce(&mut self, vip: IpAddr) -> anyhow::Result<()> {
        if vip.is_ipv6() {
            self.follow_forwarding();
        }
        match self.frames_for(vip)? {
            Frames::V4 { request, reply } => {
                self.send(&request, vip)?;
                self.send(&reply, vip)
            }
            Frames::V6 { na } => self.send(&na, vip),
        }
    }

    /// Hands `vip` back to `owner` (the master whose claim made us release
    /// it): the same GARP pair or NA, but naming the owner's MAC as the
    /// sender (target) hardware address, so that clients whose caches still
    /// point at us move to the owner now rather than after their entry goes
    /// stale. The Ethernet source stays ours, so switches keep learning
    /// correctly.
    pub fn hand_over(&mut self, vip: IpAddr, owner: [u8; 6]) -> anyhow::Result<()> {
        match vip {
            IpAddr::V4(v4) => {
                let mut request = garp_request(owner, v4);
                let mut reply = garp_reply(owner, v4);
                for frame in [&mut request, &mut reply] {
                    frame[6..12].copy_from_slice(&self.mac);
                }
                self.send(&request, vip)?;
                self.send(&reply, vip)
            }
            IpAddr::V6(v6) => {
                self.follow_forwarding();
                self.send(&na_naming(self.mac, owner, v6, self.router), vip)
            }
        }
    }

    /// Asks who holds `vip`: an RFC 5227 ARP probe (sender IP 0), or a
    /// Neighbor Solicitation from our link-local address. A host that has
    /// the address bound answers from its kernel, and the XDP program sees
    /// that answer as a claim: how a master that returns with the VIP still
    /// bound (it was frozen, not restarted) is noticed without anything
    /// running on it.
    pub fn solicit(&mut self, vip: IpAddr) -> anyhow::Result<()> {
        match vip {
            IpAddr::V4(v4) => {
                let probe = arp_probe(self.mac, v4);
                self.send(&probe, vip)
            }
            IpAddr::V6(v6) => {
                let src = self.solicit_source(v6)?;
                self.send(&neighbor_solicit(self.mac, src, v6), vip)
            }
        }
    }

    /// The source of our Neighbor Solicitations for `target`: our
    /// link-local address (cached once found), else another of the
    /// interface's IPv6 addresses. A unicast source is what makes the
    /// holder answer by unicast, which tells its answer from an
    /// unsolicited advertisement.
    fn solicit_source(&mut self, target: Ipv6Addr) -> anyhow::Result<Ipv6Addr> {
        if let Some(a) = self.link_local {
            return Ok(a);
        }
        let ours: Vec<Ipv6Addr> = find_interface(&self.iface)?
            .ips
            .iter()
            .filter_map(|n| match n.ip() {
                IpAddr::V6(a) if a != target && !a.is_unspecified() => Some(a),
                _ => None,
            })
            .collect();
        if let Some(a) = ours.iter().copied().find(Ipv6Addr::is_unicast_link_local) {
            self.link_local = Some(a);
            return Ok(a);
        }
        ours.first().copied().with_context(|| {
            format!(
                "{} has no IPv6 address to send a neighbor solicitation from (is IPv6 \
                 disabled on it?)",
                self.iface
            )
        })
    }

    /// Forgets the NAs built with another Router flag than the interface's
    /// forwarding setting says now: the kernel reads it for each NA it
    /// sends, and forwarding may be switched on after we start (boot order,
    /// an `--on-change` hook). One sysctl read per IPv6 announcement.
    fn follow_forwarding(&mut self) {
        let router = self.forwarding.as_ref().is_some_and(ipv6_forwarding);
        if router != self.router {
            self.router = router;
            self.frames.retain(|(vip, _)| vip.is_ipv4());
        }
    }

    /// The cached frames for `vip`, built and cached on first use.
    fn frames_for(&mut self, vip: IpAddr) -> anyhow::Result<Frames> {
        if let Some((_, frames)) = self.frames.iter().find(|(cached, _)| *cached == vip) {
            return Ok(*frames);
        }
        let frames = build_frames(self.mac, vip, self.router)?;
        self.frames.push((vip, frames));
        Ok(frames)
    }

    fn send(&mut self, frame: &[u8], vip: IpAddr) -> anyhow::Result<()> {
        let result = self.tx.send_to(frame, None).unwrap_or_else(|| {
            Err(io::Error::other(
                "pnet refused the frame (larger than its write buffer)",
            ))
        });
        result
            .map_err(|err| send_error(err, &self.iface))
            .with_context(|| format!("announcing {vip}"))
    }
}

/// Whether the `net.ipv6.conf.IFACE.forwarding` sysctl open as `file` is
/// on (false when it cannot be read).
fn ipv6_forwarding(file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt as _;
    let mut value = [0u8; 4];
    // Each read of a sysctl at offset 0 formats its current value.
    file.read_at(&mut value, 0)
        .is_ok_and(|n| n > 0 && value[0] != b'0')
}

/// The frames for one VIP; rejects addresses that cannot be announced.
/// `router`: see [`Announcer::router`].
fn build_frames(mac: [u8; 6], vip: IpAddr, router: bool) -> anyhow::Result<Frames> {
    match vip {
        IpAddr::V4(v4) => {
            if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                bail!("cannot announce {v4}: the VIP must be a unicast IPv4 address");
            }
            Ok(Frames::V4 {
                request: garp_request(mac, v4),
                reply: garp_reply(mac, v4),
            })
        }
        IpAddr::V6(v6) => {
            if v6.is_unspecified() || v6.is_multicast() {
                bail!("cannot announce {v6}: the VIP must be a unicast IPv6 address");
            }
            Ok(Frames::V6 {
                na: unsolicited_na(mac, v6, router),
            })
        }
    }
}

/// The interface called `name`, with a user-facing error if there is none.
fn find_interface(name: &str) -> anyhow::Result<NetworkInterface> {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|interface| interface.name == name)
        .with_context(|| format!("interface {name} does not exist; `ip link` lists interfaces"))
}

/// The interface's Ethernet MAC.
fn interface_mac(interface: &NetworkInterface) -> anyhow::Result<[u8; 6]> {
    match interface.mac.map(|mac| mac.octets()) {
        Some(mac) if mac != [0; 6] => Ok(mac),
        _ => bail!(
            "interface {} has no Ethernet MAC address; vipwatch announces the VIP with ARP/NDP \
             and needs an Ethernet interface (see `ip link`)",
            interface.name
        ),
    }
}

/// An `AF_PACKET`/`SOCK_RAW` channel on `interface` that receives nothing
/// (protocol 0): vipwatch only sends; the XDP program does the listening.
///
/// We create the socket ourselves with protocol 0 and let pnet bind it:
/// pnet's own socket would be `ETH_P_ALL` from `socket(2)` on, i.e. a tap on
/// every interface until `bind(2)`. `ChannelType::Layer3` is how pnet 0.35
/// passes the protocol to `bind`; it only picks `SOCK_DGRAM` when pnet
/// creates the socket, so ours stays `SOCK_RAW` and frames keep their
/// Ethernet header.
fn packet_channel(interface: &NetworkInterface) -> anyhow::Result<Box<dyn DataLinkSender>> {
    let name = &interface.name;
    // SAFETY: socket(2) takes no pointers; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            Some(libc::EPERM | libc::EACCES) => anyhow::Error::new(err).context(format!(
                "opening a packet socket on {name}: permission denied; vipwatch needs CAP_NET_RAW (run it as root)"
            )),
            _ => anyhow::Error::new(err).context(format!("opening a packet socket on {name}")),
        });
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let config = pnet_datalink::Config {
        // ARP frames are 42-60 bytes; the announcer never reads.
        read_buffer_size: 256,
        write_buffer_size: 256,
        read_timeout: None,
        // A full transmit queue must not stall a failover forever.
        write_timeout: Some(Duration::from_millis(100)),
        channel_type: ChannelType::Layer3(0),
        promiscuous: false,
        // pnet owns the descriptor from here on, and closes it on every error
        // path of `channel` as well as on drop.
        socket_fd: Some(fd.into_raw_fd()),
        ..pnet_datalink::Config::default()
    };
    match pnet_datalink::channel(interface, config) {
        Ok(pnet_datalink::Channel::Ethernet(tx, _rx)) => Ok(tx),
        Ok(_) => bail!("pnet opened a non-Ethernet channel on {name}"),
        Err(err) => {
            Err(err).with_context(|| format!("binding a packet socket to interface {name}"))
        }
    }
}

/// Says what to do about a failed send.
fn send_error(err: io::Error, iface: &str) -> anyhow::Error {
    let hint = match err.raw_os_error() {
        Some(libc::ENETDOWN) => Some(format!(
            "interface {iface} is down; bring it up with `ip link set {iface} up`"
        )),
        Some(libc::ENXIO | libc::ENODEV) => Some(format!(
            "interface {iface} is gone; `ip link` lists interfaces"
        )),
        _ => None,
    };
    let err = anyhow::Error::new(err);
    match hint {
        Some(hint) => err.context(hint),
        None => err.context(format!("sending on {iface}")),
    }
}

/// When to announce: a burst of `--garp-count` spaced `--garp-interval`
/// after a claim, then one every `--garp-refresh` (if set) while holding.
#[derive(Clone, Debug)]
pub struct GarpSchedule {
    count: u32,
    interval_ns: u64,
    refresh_ns: Option<u64>,
    /// Announcements of the burst still to send.
    remaining: u32,
    next_ns: Option<u64>,
}

impl GarpSchedule {
    pub fn new(g: &Garp) -> Self {
        let Garp {
            count,
            interval_ns,
            refresh_ns,
        } = *g;
        Self {
            count,
            interval_ns,
            refresh_ns,
            remaining: 0,
            next_ns: None,
        }
    }

    /// When the next announcement is due (CLOCK_MONOTONIC ns), if any.
    pub fn next_ns(&self) -> Option<u64> {
        self.next_ns
    }

    /// The first announcement of a burst was sent at `now_ns`.
    pub fn burst_started(&mut self, now_ns: u64) {
        self.remaining = self.count.saturating_sub(1);
        self.schedule_after(now_ns);
    }

    /// The announcement that was due was sent at `now_ns`.
    pub fn sent(&mut self, now_ns: u64) {
        let due = self.next_ns.unwrap_or(now_ns);
        self.remaining = self.remaining.saturating_sub(1);
        // Spacing counts from when the announcement was due, so a timer a
        // millisecond late does not push the rest of the burst; but from the
        // send when we are a whole interval late, so what is left of the
        // burst is not sent all at once.
        let base = if now_ns >= due.saturating_add(self.interval_ns) {
            now_ns
        } else {
            due
        };
        self.schedule_after(base);
    }

    pub fn stop(&mut self) {
        self.remaining = 0;
        self.next_ns = None;
    }

    fn schedule_after(&mut self, due_ns: u64) {
        self.next_ns = if self.remaining > 0 {
            Some(due_ns + self.interval_ns)
        } else {
            self.refresh_ns.map(|r| due_ns + r)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0x00, 0x5e, 0x00, 0x53, 0x01];
    const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

    /// Checks every header field of an ARP frame byte by byte.
    fn assert_arp_frame(
        frame: &[u8; ARP_FRAME_LEN],
        op: u16,
        spa: Ipv4Addr,
        tha: [u8; 6],
        tpa: Ipv4Addr,
    ) {
        assert_eq!(frame[0..6], BROADCAST, "destination MAC");
        assert_eq!(frame[6..12], MAC, "source MAC");
        assert_eq!(frame[12..14], [0x08, 0x06], "EtherType ARP");
        assert_eq!(frame[14..16], [0x00, 0x01], "hardware type Ethernet");
        assert_eq!(frame[16..18], [0x08, 0x00], "protocol type IPv4");
        assert_eq!(frame[18..20], [6, 4], "address lengths");
        assert_eq!(frame[20..22], op.to_be_bytes(), "opcode");
        assert_eq!(frame[22..28], MAC, "sha");
        assert_eq!(frame[28..32], spa.octets(), "spa");
        assert_eq!(frame[32..38], tha, "tha");
        assert_eq!(frame[38..42], tpa.octets(), "tpa");
    }

    #[test]
    fn garp_request_is_rfc5227_announcement() {
        let frame = garp_request(MAC, VIP);
        assert_arp_frame(&frame, 1, VIP, [0; 6], VIP);
        #[rustfmt::skip]
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x5e, 0x00, 0x53, 0x01, 0x08, 0x06,
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            0x02, 0x00, 0x5e, 0x00, 0x53, 0x01, 192, 0, 2, 10,
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 192, 0, 2, 10,
        ];
        assert_eq!(frame, expected);
    }

    #[test]
    fn garp_reply_has_tha_equal_sha() {
        let frame = garp_reply(MAC, VIP);
        assert_arp_frame(&frame, 2, VIP, MAC, VIP);
        // What Linux's arp_is_garp() requires of a reply.
        let arp = parse_arp(&frame).expect("valid ARP");
        assert_eq!(arp.tha, arp.sha);
        assert_eq!(arp.spa, arp.tpa);
    }

    #[test]
    fn probe_has_unspecified_sender() {
        let target = Ipv4Addr::new(192, 0, 2, 77);
        let frame = arp_probe(MAC, target);
        assert_arp_frame(&frame, 1, Ipv4Addr::UNSPECIFIED, [0; 6], target);
    }

    #[test]
    fn parse_round_trips_every_builder() {
        let cases = [
            (
                garp_request(MAC, VIP),
                Arp {
                    op: ARP_REQUEST,
                    sha: MAC,
                    spa: VIP,
                    tha: [0; 6],
                    tpa: VIP,
                },
            ),
            (
                garp_reply(MAC, VIP),
                Arp {
                    op: ARP_REPLY,
                    sha: MAC,
                    spa: VIP,
                    tha: MAC,
                    tpa: VIP,
                },
            ),
            (
                arp_probe(MAC, VIP),
                Arp {
                    op: ARP_REQUEST,
                    sha: MAC,
                    spa: Ipv4Addr::UNSPECIFIED,
                    tha: [0; 6],
                    tpa: VIP,
                },
            ),
        ];
        for (frame, expected) in cases {
            assert_eq!(parse_arp(&frame), Some(expected));
            // Ethernet pads frames to 60 bytes; padding must not matter.
            let mut padded = [0u8; 60];
            padded[..ARP_FRAME_LEN].copy_from_slice(&frame);
            assert_eq!(parse_arp(&padded), Some(expected));
        }
    }

    #[test]
    fn parse_rejects_short_and_foreign_frames() {
        let good = garp_reply(MAC, VIP);
        for len in 0..ARP_FRAME_LEN {
            assert_eq!(parse_arp(&good[..len]), None, "truncated to {len} bytes");
        }
        let corruptions: [(usize, u8, &str); 5] = [
            (13, 0x00, "EtherType IPv4 (0x0800)"),
            (15, 0x06, "hardware type IEEE 802"),
            (17, 0xdd, "protocol type 0x86dd"),
            (18, 8, "hardware length 8"),
            (19, 16, "protocol length 16"),
        ];
        for (offset, value, what) in corruptions {
            let mut frame = good;
            frame[offset] = value;
            assert_eq!(parse_arp(&frame), None, "{what}");
        }
        assert_eq!(parse_arp(&[0xff; 64]), None, "garbage");
        let na = unsolicited_na(MAC, "2001:db8::10".parse().expect("literal"), false);
        assert_eq!(parse_arp(&na), None, "IPv6 frame");
    }

    /// RFC 1071 sum over the IPv6 pseudo-header (RFC 8200 §8.1) and the
    /// ICMPv6 message, written independently of pnet.
    fn icmpv6_sum(src: Ipv6Addr, dst: Ipv6Addr, icmp: &[u8]) -> u16 {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&src.octets());
        bytes.extend_from_slice(&dst.octets());
        bytes.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 58]);
        bytes.extend_from_slice(icmp);
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn unsolicited_na_layout() {
        let addr: Ipv6Addr = "2001:db8::10".parse().expect("literal");
        let frame = unsolicited_na(MAC, addr, false);
        assert_eq!(frame[0..6], ALL_NODES_MAC, "destination 33:33:00:00:00:01");
        assert_eq!(frame[6..12], MAC);
        assert_eq!(frame[12..14], [0x86, 0xdd], "EtherType IPv6");
        let ip = &frame[14..54];
        assert_eq!(
            ip[0..4],
            [0x60, 0, 0, 0],
            "version 6, no traffic class or flow label"
        );
        assert_eq!(ip[4..6], [0, 32], "payload length");
        assert_eq!(ip[6], 58, "next header ICMPv6");
        assert_eq!(ip[7], 255, "hop limit 255 (RFC 4861 §7.1.2)");
        assert_eq!(ip[8..24], addr.octets(), "source");
        assert_eq!(ip[24..40], ALL_NODES.octets(), "destination ff02::1");
        let icmp = &frame[54..];
        assert_eq!(icmp[0], 136, "type Neighbor Advertisement");
        assert_eq!(icmp[1], 0, "code");
        assert_eq!(icmp[4], 0x20, "Override only: not Router, not Solicited");
        let router = unsolicited_na(MAC, addr, true);
        assert_eq!(router[54 + 4], 0xa0, "Router and Override");
        assert_eq!(icmpv6_sum(addr, ALL_NODES, &router[54..]), 0xffff);
        assert_eq!(icmp[5..8], [0, 0, 0], "reserved");
        assert_eq!(icmp[8..24], addr.octets(), "target");
        assert_eq!(
            icmp[24..26],
            [2, 1],
            "Target Link-Layer Address option, 8 bytes"
        );
        assert_eq!(icmp[26..32], MAC);
    }

    #[test]
    fn neighbor_solicit_layout_and_checksum() {
        let src: Ipv6Addr = "fe80::2".parse().expect("literal");
        let target: Ipv6Addr = "2001:db8::12:3456".parse().expect("literal");
        let frame = neighbor_solicit(MAC, src, target);
        assert_eq!(
            frame[0..6],
            [0x33, 0x33, 0xff, 0x12, 0x34, 0x56],
            "solicited-node group's MAC"
        );
        assert_eq!(frame[6..12], MAC);
        assert_eq!(frame[12..14], [0x86, 0xdd]);
        let ip = &frame[14..54];
        assert_eq!(ip[4..6], [0, 32], "payload length");
        assert_eq!((ip[6], ip[7]), (58, 255), "ICMPv6, hop limit 255");
        assert_eq!(ip[8..24], src.octets());
        let group: Ipv6Addr = "ff02::1:ff12:3456".parse().expect("literal");
        assert_eq!(ip[24..40], group.octets(), "solicited-node group");
        let icmp = &frame[54..];
        assert_eq!((icmp[0], icmp[1]), (135, 0), "Neighbor Solicitation");
        assert_eq!(icmp[4..8], [0; 4], "reserved");
        assert_eq!(icmp[8..24], target.octets());
        assert_eq!(icmp[24..26], [1, 1], "Source Link-Layer Address option");
        assert_eq!(icmp[26..32], MAC);
        assert_eq!(icmpv6_sum(src, group, icmp), 0xffff, "checksum");
    }

    #[test]
    fn the_hand_over_na_names_the_owner_from_our_mac() {
        let addr: Ipv6Addr = "2001:db8::100".parse().expect("literal");
        let owner = [2, 0, 0, 0, 0, 1];
        let frame = na_naming(MAC, owner, addr, false);
        assert_eq!(frame[6..12], MAC, "Ethernet source stays ours");
        assert_eq!(frame[54 + 26..], owner, "target link-layer address");
        assert_eq!(frame[54 + 4], 0x20, "Override");
        assert_eq!(icmpv6_sum(addr, ALL_NODES, &frame[54..]), 0xffff);
        assert_eq!(
            unsolicited_na(MAC, addr, true),
            na_naming(MAC, MAC, addr, true)
        );
    }

    #[test]
    fn the_forwarding_sysctl_is_read_again_each_time() {
        use std::io::{Seek as _, Write as _};
        let path = std::env::temp_dir().join(format!("vipwatch-fwd-{}", std::process::id()));
        let mut writer = std::fs::File::create(&path).expect("temp file");
        let reader = std::fs::File::open(&path).expect("temp file");
        assert!(!ipv6_forwarding(&reader), "empty");
        for (value, on) in [("1\n", true), ("0\n", false), ("2\n", true)] {
            writer.rewind().expect("rewind");
            writer.write_all(value.as_bytes()).expect("write");
            assert_eq!(ipv6_forwarding(&reader), on, "{value:?}");
        }
        std::fs::remove_file(&path).expect("remove");
    }

    #[test]
    fn unsolicited_na_checksum_verifies() {
        for text in [
            "2001:db8::10",
            "fe80::1",
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let addr: Ipv6Addr = text.parse().expect("literal");
            let frame = unsolicited_na(MAC, addr, false);
            let icmp = &frame[54..];
            // A correct checksum makes the sum over everything 0xffff.
            assert_eq!(icmpv6_sum(addr, ALL_NODES, icmp), 0xffff, "{text}");
            // And it equals the one computed with the field zeroed.
            let mut zeroed = icmp.to_vec();
            zeroed[2..4].fill(0);
            let expected = !icmpv6_sum(addr, ALL_NODES, &zeroed);
            assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]), expected, "{text}");
            assert_ne!(expected, 0);
        }
    }

    #[test]
    fn build_frames_rejects_non_unicast() {
        for vip in ["0.0.0.0", "255.255.255.255", "224.0.0.18", "::", "ff02::1"] {
            let vip: IpAddr = vip.parse().expect("literal");
            let err = build_frames(MAC, vip, false).expect_err("rejected");
            assert!(err.to_string().contains("unicast"), "{err}");
        }
        assert!(matches!(
            build_frames(MAC, IpAddr::V4(VIP), false),
            Ok(Frames::V4 { .. })
        ));
        assert!(matches!(
            build_frames(MAC, "2001:db8::1".parse().expect("literal"), false),
            Ok(Frames::V6 { .. })
        ));
    }

    #[test]
    fn missing_interface_is_a_clear_error() {
        let Err(err) = Announcer::open("vwnoexist0") else {
            panic!("opened a missing interface")
        };
        assert_eq!(
            err.to_string(),
            "interface vwnoexist0 does not exist; `ip link` lists interfaces"
        );
    }

    fn garp(count: u32, interval_ms: u64, refresh_ms: Option<u64>) -> GarpSchedule {
        GarpSchedule::new(&Garp {
            count,
            interval_ns: interval_ms * MS,
            refresh_ns: refresh_ms.map(|r| r * MS),
        })
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn garp_burst_then_nothing() {
        let mut g = garp(3, 10, None);
        assert_eq!(g.next_ns(), None);
        g.burst_started(1000 * MS);
        assert_eq!(g.next_ns(), Some(1010 * MS));
        g.sent(1010 * MS);
        assert_eq!(g.next_ns(), Some(1020 * MS));
        g.sent(1020 * MS);
        assert_eq!(g.next_ns(), None, "3 announcements in all");
    }

    #[test]
    fn garp_burst_then_refresh() {
        let mut g = garp(2, 10, Some(1000));
        g.burst_started(0);
        assert_eq!(g.next_ns(), Some(10 * MS));
        g.sent(10 * MS);
        assert_eq!(g.next_ns(), Some(1010 * MS));
        g.sent(1010 * MS);
        assert_eq!(g.next_ns(), Some(2010 * MS));
        g.stop();
        assert_eq!(g.next_ns(), None);
    }

    #[test]
    fn garp_count_one_is_just_the_first() {
        let mut g = garp(1, 10, None);
        g.burst_started(5 * MS);
        assert_eq!(g.next_ns(), None);
        let mut g = garp(1, 10, Some(500));
        g.burst_started(5 * MS);
        assert_eq!(g.next_ns(), Some(505 * MS));
    }

    #[test]
    fn garp_timer_lateness_does_not_accumulate() {
        let mut g = garp(4, 10, None);
        g.burst_started(0);
        // Sent 1 ms late: the next is still due at 20 ms, not 21 ms.
        g.sent(11 * MS);
        assert_eq!(g.next_ns(), Some(20 * MS));
        // Very late (a whole interval and more): spaced from the send.
        g.sent(45 * MS);
        assert_eq!(g.next_ns(), Some(55 * MS));
    }
}
