//! Types shared by the vipwatch XDP program and the userspace daemon.
//!
//! Everything here crosses the kernel/userspace boundary through BPF maps or
//! the wire, so every type is `#[repr(C)]`, fixed-size and free of implicit
//! padding (checked by `bytemuck::Pod`), and addresses are kept as byte
//! arrays in network byte order.
//!
//! One XDP program serves every vipwatch instance on an interface: each
//! instance owns a *slot*, an index into the per-slot maps below, and its
//! probes carry that slot so a reply finds its instance without a search.
#![no_std]

use bytemuck::{Pod, Zeroable};

pub mod siphash;

// ---------------------------------------------------------------------------
// Map names. Each constant sits next to the type its map holds.
// ---------------------------------------------------------------------------

/// `Array<ReplayWindow>`, `MAX_SLOTS * PEERS_PER_SLOT` entries (shared by
/// all CPUs), indexed like [`MAP_PEERS`]: which recent probes a peer has
/// answered, so a reply counts once and a replayed one not at all.
pub const MAP_FRESH: &str = "VW_FRESH";

/// `Array<IfaceConfig>`, one entry: what is common to every slot.
pub const MAP_IFACE: &str = "VW_IFACE";
/// `Array<SlotConfig>`, [`MAX_SLOTS`] entries: what each instance looks for.
pub const MAP_SLOTS: &str = "VW_SLOTS";
/// `HashMap<[u8; 16], u32>`: VIP (as [`Addr`]) → slot of the instance that
/// owns it, for ARP claims and the master's probe gate.
pub const MAP_VIPS: &str = "VW_VIPS";
/// `PerCpuArray<PeerCounters>`, index [`peer_index`]: replies per peer.
pub const MAP_PEERS: &str = "VW_PEERS";
/// `Array<GapTracker>`, index [`peer_index`].
pub const MAP_GAPS: &str = "VW_GAPS";
/// `PerCpuArray<ClaimCounters>`, one entry per slot: ARP claims of the VIP.
pub const MAP_CLAIMS: &str = "VW_CLAIMS";
/// `PerCpuArray<GateCounters>`, one entry per slot: probes seen by a master.
pub const MAP_GATE_COUNTERS: &str = "VW_GATE_CNT";
/// `RingBuf` of [`ClaimEvent`]: wakes the daemon the moment a claim arrives.
pub const MAP_EVENTS: &str = "VW_EVENTS";
/// `PerCpuArray<u64>`, [`XDP_ERROR_KINDS`] entries: what the program could
/// not do (see the `XDP_ERR_*` indices).
pub const MAP_ERRORS: &str = "VW_ERRORS";
/// `LruHashMap<ConnKey, ConnValue>`: TCP connections to the VIPs this host
/// holds (slots with [`SLOT_HOLDING`]). Its size is set at load time.
pub const MAP_CONNS: &str = "VW_CONNS";
/// `RingBuf` of [`ConnEvent`]: connections that appear in, or leave,
/// [`MAP_CONNS`], so the daemon keeps its copy without scanning the map.
pub const MAP_CONN_EVENTS: &str = "VW_CONN_EV";
/// `Array<Learned>`, one entry per slot: for a master slot, who probes its
/// VIP (the backup's address and nonce), from the last probe seen.
pub const MAP_LEARN: &str = "VW_LEARN";

/// Default size of [`MAP_CONNS`]: 64 Ki connections per interface.
pub const CONN_TABLE_DEFAULT: u32 = 65_536;
/// Size in bytes of the [`MAP_CONN_EVENTS`] ring buffer: 256 KiB, room for
/// 6 500 events between two reads.
pub const CONN_EVENTS_RING_BYTES: u32 = 64 * 4096;

/// Name of the XDP program. It observes, and drops nothing but the probes
/// of a master instance whose gate is closed.
pub const PROG_XDP: &str = "vipwatch";

/// Instances one interface can serve (one slot each).
pub const MAX_SLOTS: u32 = 256;

/// Peers of a backup slot, in [`MAP_PEERS`] and [`MAP_GAPS`].
pub const PEER_MASTER: u32 = 0;
pub const PEER_WITNESS: u32 = 1;
/// Peers per slot.
pub const PEERS_PER_SLOT: u32 = 2;

/// The [`MAP_PEERS`] / [`MAP_GAPS`] index of `peer` of `slot`.
#[inline(always)]
pub const fn peer_index(slot: u32, peer: u32) -> u32 {
    slot * PEERS_PER_SLOT + peer
}

/// Size in bytes of the [`MAP_EVENTS`] ring buffer (a power of two and a
/// multiple of the page size, as the kernel requires).
pub const EVENTS_RING_BYTES: u32 = 16 * 4096;

/// [`MAP_ERRORS`] index: a frame arrived before the interface config was
/// written (only possible for an instant at attach).
pub const XDP_ERR_NO_CONFIG: u32 = 0;
/// The ring buffer was full: a claim wake-up was lost (the claim is still
/// counted).
pub const XDP_ERR_RINGBUF_FULL: u32 = 1;
/// A vipwatch probe reply named a slot this interface does not have, or one
/// that is not a backup: a reply to an instance that is gone (a reload), or
/// forged.
pub const XDP_ERR_UNKNOWN_SLOT: u32 = 2;
/// A map lookup that cannot fail did.
pub const XDP_ERR_MAP: u32 = 3;
/// The connection event ring buffer was full: the daemon's copy of the
/// connection table misses a connection (until it is seen again).
pub const XDP_ERR_CONN_EVENTS_FULL: u32 = 4;
/// A new connection could not be added to [`MAP_CONNS`].
pub const XDP_ERR_CONN_INSERT: u32 = 5;
/// Number of [`MAP_ERRORS`] entries.
pub const XDP_ERROR_KINDS: u32 = 6;

// ---------------------------------------------------------------------------
// Addresses.
// ---------------------------------------------------------------------------

/// An IPv4 or IPv6 address in 16 bytes, network byte order: IPv6 as is,
/// IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, RFC 4291 §2.5.5.2),
/// so one map key type holds both families.
pub type Addr = [u8; 16];

/// The IPv4-mapped form of an IPv4 address.
#[inline(always)]
pub const fn addr_v4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
    ]
}

/// The IPv4 address inside an IPv4-mapped [`Addr`], if it is one.
#[inline(always)]
pub fn addr_as_v4(a: &Addr) -> Option<[u8; 4]> {
    let mapped = a[..10].iter().all(|b| *b == 0) && a[10] == 0xff && a[11] == 0xff;
    mapped.then_some([a[12], a[13], a[14], a[15]])
}

/// The [`Addr`] of an IP address (IPv4 as IPv4-mapped).
pub fn addr_of(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// The IP address of an [`Addr`]: IPv4 when it is IPv4-mapped.
pub fn ip_of(a: &Addr) -> core::net::IpAddr {
    core::net::IpAddr::from(*a).to_canonical()
}

// ---------------------------------------------------------------------------
// Probe payload (ICMP echo data), as it travels on the wire.
// ---------------------------------------------------------------------------

/// First bytes of every vipwatch probe payload (version 3: slot, VIP and
/// an authentication tag).
pub const PROBE_MAGIC: [u8; 4] = *b"VPW3";
/// Length of the probe payload: magic, slot, reserved, nonce, sequence,
/// send time, VIP (48 bytes), then the tag.
pub const PROBE_PAYLOAD_LEN: usize = 56;
/// Where the tag starts: what precedes it is what it authenticates.
pub const PROBE_TAG_AT: usize = 48;

/// Domain of a probe's tag (the backup's) and of a reply's (the master's):
/// the first word of the authenticated message, so that a probe's tag is
/// never a valid reply's, and a kernel that merely echoes the probe does
/// not answer for the master.
pub const AUTH_PROBE: u64 = u64::from_le_bytes(*b"vw-probe");
pub const AUTH_REPLY: u64 = u64::from_le_bytes(*b"vw-reply");

/// The keyed tag (SipHash-2-4) of a payload's first [`PROBE_TAG_AT`] bytes
/// in `domain` ([`AUTH_PROBE`] or [`AUTH_REPLY`]), as it goes on the wire.
#[inline(always)]
pub fn auth_tag(key: &siphash::Key, domain: u64, payload: &[u8; PROBE_PAYLOAD_LEN]) -> [u8; 8] {
    // Word by word from the payload: no copy of the message (the XDP
    // program's stack is 512 bytes for every frame of its call chain).
    let mut s = siphash::Sip24::new(key);
    s.write(domain);
    let mut k = 0;
    while k < PROBE_TAG_AT / 8 {
        s.write(u64::from_le_bytes(take8(payload, 8 * k)));
        k += 1;
    }
    s.finish(1 + PROBE_TAG_AT / 8).to_le_bytes()
}

/// What vipwatch puts in the data of its ICMP echo requests. The master's
/// kernel echoes it back unchanged (RFC 792), which is how the backup knows
/// a reply answers one of its own probes, for which instance, and how long
/// it took; and how a master running vipwatch knows which of its VIPs a
/// probe watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePayload {
    /// The probing instance's slot on the backup's interface.
    pub slot: u16,
    /// Random per-instance value; a reply without it is forged.
    pub nonce: u64,
    /// Probe sequence number, shared by the master and witness probes of
    /// one tick.
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds when the probe was sent (the clock
    /// `bpf_ktime_get_ns` reads).
    pub sent_ns: u64,
    /// The VIP this probe watches over.
    pub vip: Addr,
    /// [`auth_tag`] of the rest, with the pair's key (zero without one).
    pub tag: [u8; 8],
}

impl ProbePayload {
    /// Big-endian wire form.
    pub fn encode(&self) -> [u8; PROBE_PAYLOAD_LEN] {
        let Self {
            slot,
            nonce,
            seq,
            sent_ns,
            vip,
            tag,
        } = *self;
        let mut out = [0u8; PROBE_PAYLOAD_LEN];
        out[0..4].copy_from_slice(&PROBE_MAGIC);
        out[4..6].copy_from_slice(&slot.to_be_bytes());
        out[8..16].copy_from_slice(&nonce.to_be_bytes());
        out[16..24].copy_from_slice(&seq.to_be_bytes());
        out[24..32].copy_from_slice(&sent_ns.to_be_bytes());
        out[32..48].copy_from_slice(&vip);
        out[48..56].copy_from_slice(&tag);
        out
    }

    /// Parses a payload; `None` when the magic is not vipwatch's.
    #[inline(always)]
    pub fn decode(bytes: &[u8; PROBE_PAYLOAD_LEN]) -> Option<Self> {
        if bytes[0..4] != PROBE_MAGIC {
            return None;
        }
        let mut vip = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            vip[i] = bytes[32 + i];
            i += 1;
        }
        Some(Self {
            slot: u16::from_be_bytes([bytes[4], bytes[5]]),
            nonce: u64::from_be_bytes(take8(bytes, 8)),
            seq: u64::from_be_bytes(take8(bytes, 16)),
            sent_ns: u64::from_be_bytes(take8(bytes, 24)),
            vip,
            tag: take8(bytes, PROBE_TAG_AT),
        })
    }
}

#[inline(always)]
fn take8(bytes: &[u8; PROBE_PAYLOAD_LEN], at: usize) -> [u8; 8] {
    let mut out = [0u8; 8];
    let mut i = 0;
    while i < 8 {
        out[i] = bytes[at + i];
        i += 1;
    }
    out
}

// ---------------------------------------------------------------------------
// Map values.
// ---------------------------------------------------------------------------

/// What is common to every slot of one interface. Written once, before
/// the program is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct IfaceConfig {
    /// The interface's MAC: ARP from it is ours, not a claim by another
    /// host.
    pub our_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// [`SlotConfig::role`]: the slot is free; frames naming it are ignored.
pub const ROLE_NONE: u32 = 0;
/// The slot is a backup instance: its peers' replies are counted.
pub const ROLE_BACKUP: u32 = 1;
/// The slot is a master instance: probes for its VIP pass its gate.
pub const ROLE_MASTER: u32 = 2;

/// [`SlotConfig::flags`]: a witness address is configured (backup).
pub const SLOT_WITNESS: u32 = 1 << 0;
/// [`SlotConfig::flags`]: the probe gate is closed (master): probes for
/// this slot's VIP are dropped, so its backups see the master dead.
pub const SLOT_GATE_CLOSED: u32 = 1 << 1;
/// [`SlotConfig::flags`]: this host holds the slot's VIP and records the
/// TCP connections to it in [`MAP_CONNS`].
pub const SLOT_HOLDING: u32 = 1 << 2;
/// [`SlotConfig::flags`]: the pair shares [`SlotConfig::key`]: a backup
/// counts only replies with the master's tag; a master answers probes with
/// a valid tag itself, tagged (XDP_TX).
pub const SLOT_AUTH: u32 = 1 << 4;

/// [`SlotConfig::flags`]: the kick is `rst`, which needs each client's
/// current acknowledgement number: announce a connection again when its ack
/// changes, at most every [`ACK_UPDATE_NS`].
pub const SLOT_ACK_UPDATES: u32 = 1 << 3;
/// How often, at most, a connection's changed ack is announced (per
/// connection) under [`SLOT_ACK_UPDATES`]: a connection that receives data
/// less often than this is synced with its exact number.
pub const ACK_UPDATE_NS: u64 = 100_000_000;

/// What one instance's part of the program looks for. Written by the
/// daemon when the instance starts, changed by it (the gate flag), and
/// reset to zero when it stops.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotConfig {
    /// `ROLE_*`.
    pub role: u32,
    /// `SLOT_*` bits.
    pub flags: u32,
    /// The master's address (backup).
    pub master: Addr,
    /// The witness's address (backup, valid with `SLOT_WITNESS`).
    pub witness: Addr,
    /// The VIP.
    pub vip: Addr,
    /// ICMP echo identifier of this instance, network byte order (backup).
    pub echo_id: [u8; 2],
    pub _pad0: [u8; 6],
    /// Per-instance nonce as it appears in the payload, big-endian
    /// (backup).
    pub nonce: [u8; 8],
    /// The pair's key, with [`SLOT_AUTH`].
    pub key: siphash::Key,
}

/// Number of RTT histogram buckets. Bucket 0 counts RTTs below 1 µs,
/// bucket `k` counts `[2^(k-1), 2^k)` µs; the last bucket takes the rest.
pub const RTT_BUCKETS: usize = 24;

/// The histogram bucket for an RTT in microseconds.
#[inline(always)]
pub fn rtt_bucket(rtt_us: u64) -> usize {
    // A shift loop rather than `leading_zeros`: LLVM lowers the latter to a
    // popcount sequence whose range the BPF verifier cannot bound, and then
    // refuses the histogram index ("unbounded min value").
    let mut bucket = 0;
    let mut rest = rtt_us;
    while rest != 0 && bucket < RTT_BUCKETS - 1 {
        rest >>= 1;
        bucket += 1;
    }
    bucket
}

/// Upper bound (exclusive) in µs of histogram bucket `k`.
pub fn rtt_bucket_upper_us(k: usize) -> u64 {
    1u64 << k
}

/// Per-CPU heartbeat counters of one peer (master or witness) of a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerCounters {
    /// Valid replies: right slot, identifier and nonce, from the peer.
    pub replies: u64,
    /// Echo replies from the peer's address carrying vipwatch's magic or our
    /// identifier but a wrong nonce or identifier.
    pub forged: u64,
    /// `bpf_ktime_get_ns()` when the last valid reply arrived.
    pub last_seen_ns: u64,
    /// Highest sequence number seen in a valid reply.
    pub highest_seq: u64,
    /// Source MAC of the last valid reply.
    pub last_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// Replies otherwise valid that answer a probe already answered, one
    /// older than [`REPLAY_WINDOW`] probes, or one sent more than
    /// [`REPLY_FRESH_NS`] ago: replays. Not counted as alive.
    pub replayed: u64,
    /// RTT histogram, see [`RTT_BUCKETS`].
    pub rtt_hist: [u64; RTT_BUCKETS],
}

/// Longest silence between two valid replies of one peer, across CPUs.
///
/// This one map is shared by all CPUs (not per-CPU): a gap is the distance
/// between two consecutive replies whichever CPU received them. Two replies
/// landing on two CPUs in the same instant can race; the loser computes its
/// gap against a slightly older reply, so the error only ever overstates a
/// gap (it makes the closest call look closer, never safer).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GapTracker {
    /// `bpf_ktime_get_ns()` of the last valid reply, on any CPU.
    pub last_ns: u64,
    /// Longest gap between consecutive valid replies, ns.
    pub max_gap_ns: u64,
}

/// Probes a reply may answer: the latest answered one and the 63 before it
/// (the sliding window of RFC 4303 §3.4.3, which IPsec uses against
/// replays). 64 probes are 128 ms at the default interval, far more than any
/// reordering on a LAN.
pub const REPLAY_WINDOW: u64 = 64;

/// A reply whose probe left longer ago than this is stale: replayed, or
/// held back by someone, either way no proof the peer is alive now.
pub const REPLY_FRESH_NS: u64 = 1_000_000_000;

/// Which of one peer's recent probes were answered (see [`REPLAY_WINDOW`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ReplayWindow {
    /// Highest sequence number answered.
    pub top: u64,
    /// Bit `k`: probe `top - k` was answered.
    pub bits: u64,
}

impl ReplayWindow {
    /// Whether a reply to probe `seq` is the first for that probe and
    /// within the window; records it if so.
    #[inline(always)]
    pub fn accept(&mut self, seq: u64) -> bool {
        if seq > self.top {
            let shift = seq - self.top;
            self.bits = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.bits << shift
            };
            self.bits |= 1;
            self.top = seq;
            return true;
        }
        let age = self.top - seq;
        if age >= REPLAY_WINDOW {
            return false;
        }
        let bit = 1u64 << age;
        if self.bits & bit != 0 {
            return false;
        }
        self.bits |= bit;
        true
    }
}

/// Whether a reply to a probe sent at `sent_ns` (from its echoed payload),
/// arriving at `now_ns`, is fresh (see [`REPLY_FRESH_NS`]). A send time in
/// the future is no proof either.
#[inline(always)]
pub const fn reply_fresh(sent_ns: u64, now_ns: u64) -> bool {
    sent_ns <= now_ns && now_ns - sent_ns <= REPLY_FRESH_NS
}

/// Per-CPU counters of ARP (or NDP) packets claiming a slot's VIP from
/// another MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClaimCounters {
    pub claims: u64,
    /// `bpf_ktime_get_ns()` of the last claim.
    pub last_ns: u64,
    /// Sender MAC of the last claim.
    pub last_mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The last claim that woke the daemon (an event): when, from which
    /// MAC, which operation (as [`ClaimEvent::op`]).
    pub last_wake_ns: u64,
    pub last_wake_mac: [u8; 6],
    pub last_wake_op: [u8; 2],
    /// The last answer to our own RFC 5227 probe that woke the daemon.
    pub last_answer_ns: u64,
}

/// A claim like the last one that woke the daemon (same sender MAC and
/// operation, [`ClaimEvent::op`]) wakes it again only after this long.
pub const CLAIM_WAKE_NS: u64 = 2_000_000;
/// Any claim wakes the daemon at most this often (per CPU and slot).
pub const CLAIM_WAKE_MIN_NS: u64 = 100_000;

/// Pushed to [`MAP_EVENTS`] for every claim, so the daemon reacts at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClaimEvent {
    /// `bpf_ktime_get_ns()` when the claim arrived.
    pub ktime_ns: u64,
    /// The claimant's MAC: the ARP sender MAC; for NDP, the Neighbour
    /// Advertisement's Target Link-Layer Address option if it is the first
    /// option, else (and for a DAD solicitation) the Ethernet source.
    pub mac: [u8; 6],
    /// ARP operation (1 request, 2 reply), network byte order. For NDP,
    /// a value no ARP operation has (IANA assigns them below 256):
    /// `[58, type]`, the ICMPv6 protocol number and message type, so
    /// `[58, 136]` for a Neighbour Advertisement and `[58, 135]` for a
    /// Duplicate Address Detection Neighbour Solicitation (RFC 4862 §5.4.2).
    pub op: [u8; 2],
    /// The slot whose VIP was claimed.
    pub slot: u32,
    /// [`CLAIM_ANSWER`].
    pub flags: u32,
}

/// [`ClaimEvent::flags`]: an answer to our own RFC 5227 probe (an ARP
/// reply for target IP 0.0.0.0 to our MAC), or for IPv6 a solicited
/// Neighbour Advertisement sent to our MAC (the answer to our unicast
/// solicitation): the claimant holds the VIP.
pub const CLAIM_ANSWER: u32 = 1;

/// Per-CPU counters of a master slot's probe gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GateCounters {
    /// vipwatch probes for the slot's VIP seen (answered by the kernel when
    /// the gate is open).
    pub probes: u64,
    /// Probes dropped because the gate was closed.
    pub dropped: u64,
}

/// A TCP connection to a VIP, as the client sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ConnKey {
    /// The slot whose VIP the connection is to.
    pub slot: u32,
    /// The client's port, network byte order.
    pub client_port: [u8; 2],
    /// The VIP's port, network byte order.
    pub vip_port: [u8; 2],
    /// The client's address.
    pub client: Addr,
}

/// What the table keeps about a connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConnValue {
    /// `bpf_ktime_get_ns()` of the client's last segment.
    pub last_seen_ns: u64,
    /// The acknowledgement number of the client's last segment with ACK
    /// set, network byte order: the next byte it expects from the VIP.
    pub ack: [u8; 4],
    /// Source MAC of its frames: the client's, or its router's. The next
    /// holder, on the same link, sends the kick there without resolving
    /// anything first.
    pub mac: [u8; 6],
    /// [`CONN_ACKED`].
    pub flags: u8,
    pub _pad: [u8; 5],
    /// `bpf_ktime_get_ns()` when the connection was last announced.
    pub announced_ns: u64,
}

/// [`ConnValue::flags`]: the client has acknowledged something (the
/// handshake's last segment at least), so `ack` is a real sequence number
/// of the VIP's side. Only such connections are announced and synced: a
/// reset kick needs that number.
pub const CONN_ACKED: u8 = 1;

/// [`ConnEvent::kind`]: a connection entered the table (announced at the
/// client's first segment with ACK set, one round trip after its SYN).
pub const CONN_NEW: u32 = 1;
/// [`ConnEvent::kind`]: the client closed or reset it (FIN or RST).
pub const CONN_CLOSED: u32 = 2;

/// Pushed to [`MAP_CONN_EVENTS`] when a connection appears or closes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConnEvent {
    /// `CONN_NEW` or `CONN_CLOSED`.
    pub kind: u32,
    /// The client's acknowledgement number (network byte order), if its
    /// segment had ACK set; else zero.
    pub ack: [u8; 4],
    pub key: ConnKey,
    pub ktime_ns: u64,
    /// Source MAC of the segment (see [`ConnValue::mac`]).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Who probes a master slot's VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Learned {
    /// Source address of the last probe.
    pub addr: Addr,
    /// Its destination: the address of ours the backup probes, and the
    /// source of our syncs to it (the peer accepts syncs from that address
    /// only, whatever address the kernel would choose).
    pub local: Addr,
    /// Its payload's nonce (big-endian): the backup's, carried by every
    /// connection-sync datagram between the two.
    pub nonce: [u8; 8],
    /// `bpf_ktime_get_ns()` of that probe; 0: none yet.
    pub seen_ns: u64,
}

#[cfg(feature = "user")]
mod user {
    //! `aya::Pod` for reading the map values from userspace.
    use super::*;

    macro_rules! aya_pod {
        ($($t:ty),* $(,)?) => {$(
            // SAFETY: `$t` derives `bytemuck::Pod`, which proves at compile
            // time that it is `repr(C)`, has no padding and accepts any bit
            // pattern: exactly what `aya::Pod` requires.
            unsafe impl aya::Pod for $t {}
        )*};
    }

    aya_pod!(
        IfaceConfig,
        SlotConfig,
        PeerCounters,
        GapTracker,
        ReplayWindow,
        ClaimCounters,
        ClaimEvent,
        GateCounters,
        ConnKey,
        ConnValue,
        ConnEvent,
        Learned,
    );
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    const VIP: Addr = addr_v4([192, 0, 2, 100]);

    #[test]
    fn payload_round_trips() {
        let p = ProbePayload {
            slot: 0x0102,
            nonce: 0x0123_4567_89ab_cdef,
            seq: 42,
            sent_ns: 1_000_000_007,
            vip: VIP,
            tag: [9; 8],
        };
        let wire = p.encode();
        assert_eq!(&wire[..4], b"VPW3");
        assert_eq!(&wire[48..], &[9; 8]);
        assert_eq!(&wire[4..6], &[1, 2]);
        assert_eq!(&wire[8..16], &0x0123_4567_89ab_cdefu64.to_be_bytes());
        assert_eq!(&wire[32..48], &VIP);
        assert_eq!(ProbePayload::decode(&wire), Some(p));
    }

    #[test]
    fn payload_without_magic_is_rejected() {
        let mut wire = ProbePayload {
            slot: 0,
            nonce: 1,
            seq: 2,
            sent_ns: 3,
            vip: VIP,
            tag: [0; 8],
        }
        .encode();
        wire[0] = b'X';
        assert_eq!(ProbePayload::decode(&wire), None);
        assert_eq!(ProbePayload::decode(&[0; PROBE_PAYLOAD_LEN]), None);
    }

    #[test]
    fn tags_depend_on_key_domain_and_every_authenticated_byte() {
        let key = siphash::Key { k0: 1, k1: 2 };
        let p = ProbePayload {
            slot: 1,
            nonce: 7,
            seq: 3,
            sent_ns: 5,
            vip: VIP,
            tag: [0; 8],
        }
        .encode();
        let probe = auth_tag(&key, AUTH_PROBE, &p);
        assert_ne!(probe, auth_tag(&key, AUTH_REPLY, &p), "domains differ");
        assert_ne!(
            probe,
            auth_tag(&siphash::Key { k0: 1, k1: 3 }, AUTH_PROBE, &p)
        );
        for k in 0..PROBE_TAG_AT {
            let mut q = p;
            q[k] ^= 1;
            assert_ne!(probe, auth_tag(&key, AUTH_PROBE, &q), "byte {k}");
        }
        // The tag field itself is not authenticated (it carries the tag).
        let mut q = p;
        q[PROBE_TAG_AT] = 0xff;
        assert_eq!(probe, auth_tag(&key, AUTH_PROBE, &q));
        // Known answer: the same function as the reference SipHash over
        // the domain word then the payload's six words.
        let mut msg = [0u8; 56];
        msg[..8].copy_from_slice(&AUTH_PROBE.to_le_bytes());
        msg[8..].copy_from_slice(&p[..48]);
        assert_eq!(probe, siphash::siphash24(&key, &msg).to_le_bytes());
    }

    #[test]
    fn ipv4_addresses_map_into_ipv6() {
        assert_eq!(addr_as_v4(&VIP), Some([192, 0, 2, 100]));
        let v6: Addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(addr_as_v4(&v6), None);
        assert_eq!(addr_as_v4(&[0; 16]), None);
    }

    #[test]
    fn peer_indices_do_not_overlap() {
        assert_eq!(peer_index(0, PEER_MASTER), 0);
        assert_eq!(peer_index(0, PEER_WITNESS), 1);
        assert_eq!(peer_index(1, PEER_MASTER), 2);
        assert_eq!(
            peer_index(MAX_SLOTS - 1, PEER_WITNESS),
            MAX_SLOTS * PEERS_PER_SLOT - 1
        );
    }

    #[test]
    fn rtt_buckets_are_log2_of_microseconds() {
        for (us, bucket) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (1000, 10),
            (1023, 10),
            (1024, 11),
            (u64::MAX, RTT_BUCKETS - 1),
        ] {
            assert_eq!(rtt_bucket(us), bucket, "rtt {us} µs");
        }
        assert_eq!(rtt_bucket_upper_us(10), 1024);
    }

    #[test]
    fn map_values_have_the_expected_sizes() {
        // Layout is an ABI between the kernel object and userspace.
        assert_eq!(core::mem::size_of::<IfaceConfig>(), 8);
        assert_eq!(core::mem::size_of::<SlotConfig>(), 8 + 3 * 16 + 8 + 8 + 16);
        assert_eq!(core::mem::size_of::<PeerCounters>(), 48 + 8 * RTT_BUCKETS);
        assert_eq!(core::mem::size_of::<ClaimCounters>(), 48);
        assert_eq!(core::mem::size_of::<ClaimEvent>(), 24);
        assert_eq!(core::mem::size_of::<GateCounters>(), 16);
        assert_eq!(core::mem::size_of::<ConnKey>(), 24);
        assert_eq!(core::mem::size_of::<ConnValue>(), 32);
        assert_eq!(core::mem::size_of::<ConnEvent>(), 48);
        assert_eq!(core::mem::size_of::<Learned>(), 48);
        assert_eq!(core::mem::size_of::<ReplayWindow>(), 16);
    }

    #[test]
    fn each_probe_counts_once() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(1));
        assert!(!w.accept(1), "a second reply to probe 1 is a replay");
        assert!(w.accept(2));
        assert!(w.accept(5), "lost replies leave gaps");
        assert!(w.accept(3), "late but new: reordering within the window");
        assert!(!w.accept(3));
        assert!(!w.accept(2));
        assert!(w.accept(4));
        assert_eq!(w.top, 5);
    }

    #[test]
    fn replies_older_than_the_window_are_replays() {
        let mut w = ReplayWindow::default();
        for seq in 1..=200 {
            assert!(w.accept(seq));
        }
        assert!(!w.accept(200 - REPLAY_WINDOW), "just outside");
        assert!(!w.accept(10));
        let mut w = ReplayWindow::default();
        assert!(w.accept(100));
        assert!(
            w.accept(100 - REPLAY_WINDOW + 1),
            "just inside, never answered"
        );
        // A jump beyond the window forgets everything older.
        assert!(w.accept(1000));
        assert!(!w.accept(100));
        assert!(w.accept(999));
    }

    #[test]
    fn freshness_is_measured_from_the_probe_s_send_time() {
        assert!(reply_fresh(5, 5));
        assert!(reply_fresh(0, REPLY_FRESH_NS));
        assert!(!reply_fresh(0, REPLY_FRESH_NS + 1));
        assert!(!reply_fresh(10, 9), "sent in the future");
    }
}
