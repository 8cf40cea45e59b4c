//! Types shared by the vipwatch XDP programs and the userspace daemon.
//!
//! Everything here crosses the kernel/userspace boundary through BPF maps or
//! the wire, so every type is `#[repr(C)]`, fixed-size and free of implicit
//! padding (checked by `bytemuck::Pod`), and addresses are kept as byte
//! arrays in network byte order.
#![no_std]

use bytemuck::{Pod, Zeroable};

// ---------------------------------------------------------------------------
// Map names. Each constant sits next to the type its map holds.
// ---------------------------------------------------------------------------

/// `Array<Config>`, one entry: what the XDP programs look for.
pub const MAP_CONFIG: &str = "VW_CONFIG";
/// `PerCpuArray<PeerCounters>`: index [`PEER_MASTER`] and [`PEER_WITNESS`].
pub const MAP_PEERS: &str = "VW_PEERS";
/// `Array<GapTracker>`: index [`PEER_MASTER`] and [`PEER_WITNESS`].
pub const MAP_GAPS: &str = "VW_GAPS";
/// `PerCpuArray<ClaimCounters>`, one entry: ARP claims of the VIP by others.
pub const MAP_CLAIMS: &str = "VW_CLAIMS";
/// `RingBuf` of [`ClaimEvent`]: wakes the daemon the moment a claim arrives.
pub const MAP_EVENTS: &str = "VW_EVENTS";
/// `Array<DaemonStatus>`, one entry, written by the daemon for `vipwatch stats`.
pub const MAP_STATUS: &str = "VW_STATUS";
/// `Array<GateConfig>`, one entry: the master-side probe gate.
pub const MAP_GATE: &str = "VW_GATE";
/// `PerCpuArray<GateCounters>`, one entry: what the probe gate saw.
pub const MAP_GATE_COUNTERS: &str = "VW_GATE_CNT";

/// Name of the backup's XDP program (observes, always `XDP_PASS`).
pub const PROG_WATCH: &str = "vipwatch";
/// Name of the master's XDP program (drops vipwatch probes while unhealthy).
pub const PROG_GATE: &str = "vipwatch_gate";

/// Index of the master in [`MAP_PEERS`].
pub const PEER_MASTER: u32 = 0;
/// Index of the witness in [`MAP_PEERS`].
pub const PEER_WITNESS: u32 = 1;
/// Number of entries in [`MAP_PEERS`].
pub const PEER_COUNT: u32 = 2;

/// Size in bytes of the [`MAP_EVENTS`] ring buffer (a power of two and a
/// multiple of the page size, as the kernel requires).
pub const EVENTS_RING_BYTES: u32 = 16 * 4096;

// ---------------------------------------------------------------------------
// Probe payload (ICMP echo data), as it travels on the wire.
// ---------------------------------------------------------------------------

/// First bytes of every vipwatch probe payload.
pub const PROBE_MAGIC: [u8; 4] = *b"VPW1";
/// Length of the probe payload: magic, nonce, sequence, send time.
pub const PROBE_PAYLOAD_LEN: usize = 28;

/// What vipwatch puts in the data of its ICMP echo requests. The master's
/// kernel echoes it back unchanged (RFC 792), which is how the backup knows
/// a reply answers one of its own probes and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePayload {
    /// Random per-run value; a reply without it is forged.
    pub nonce: u64,
    /// Probe sequence number, shared by the master and witness probes of
    /// one tick.
    pub seq: u64,
    /// CLOCK_MONOTONIC nanoseconds when the probe was sent (the clock
    /// `bpf_ktime_get_ns` reads).
    pub sent_ns: u64,
}

impl ProbePayload {
    /// Big-endian wire form.
    pub fn encode(&self) -> [u8; PROBE_PAYLOAD_LEN] {
        let Self {
            nonce,
            seq,
            sent_ns,
        } = *self;
        let mut out = [0u8; PROBE_PAYLOAD_LEN];
        out[0..4].copy_from_slice(&PROBE_MAGIC);
        out[4..12].copy_from_slice(&nonce.to_be_bytes());
        out[12..20].copy_from_slice(&seq.to_be_bytes());
        out[20..28].copy_from_slice(&sent_ns.to_be_bytes());
        out
    }

    /// Parses a payload; `None` when the magic is not vipwatch's.
    #[inline(always)]
    pub fn decode(bytes: &[u8; PROBE_PAYLOAD_LEN]) -> Option<Self> {
        if bytes[0..4] != PROBE_MAGIC {
            return None;
        }
        Some(Self {
            nonce: u64::from_be_bytes(take8(bytes, 4)),
            seq: u64::from_be_bytes(take8(bytes, 12)),
            sent_ns: u64::from_be_bytes(take8(bytes, 20)),
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

/// [`Config::flags`]: a witness address is configured.
pub const CONFIG_WITNESS: u32 = 1 << 0;

/// What the backup's XDP program looks for. Written once by the daemon
/// before the program is attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Master's IPv4 address, network byte order.
    pub master: [u8; 4],
    /// Witness's IPv4 address (valid when `flags & CONFIG_WITNESS`).
    pub witness: [u8; 4],
    /// The VIP (IPv4), whose ARP claims by other hosts are counted.
    pub vip: [u8; 4],
    /// ICMP echo identifier of this run, network byte order.
    pub echo_id: [u8; 2],
    pub _pad0: [u8; 2],
    /// Per-run nonce as it appears in the payload (big-endian).
    pub nonce: [u8; 8],
    /// Our own MAC address: ARP from it is not a claim by someone else.
    pub our_mac: [u8; 6],
    pub _pad1: [u8; 2],
    /// `CONFIG_*` bits.
    pub flags: u32,
    pub _pad2: u32,
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

/// Per-CPU heartbeat counters of one peer (master or witness).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct PeerCounters {
    /// Valid replies: right identifier, right nonce, from the peer.
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

/// Per-CPU counters of ARP packets claiming the VIP from another MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClaimCounters {
    pub claims: u64,
    /// `bpf_ktime_get_ns()` of the last claim.
    pub last_ns: u64,
    /// Sender MAC of the last claim.
    pub last_mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// Pushed to [`MAP_EVENTS`] for every claim, so the daemon reacts at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClaimEvent {
    /// `bpf_ktime_get_ns()` when the claim arrived.
    pub ktime_ns: u64,
    /// Sender MAC of the ARP packet.
    pub mac: [u8; 6],
    /// ARP operation (1 request, 2 reply), network byte order.
    pub op: [u8; 2],
}

/// [`DaemonStatus::xdp_mode`] values.
pub const XDP_MODE_DRIVER: u32 = 1;
pub const XDP_MODE_SKB: u32 = 2;

/// [`DaemonStatus::state`] values (the detector's state).
pub const STATE_STARTING: u32 = 0;
pub const STATE_STANDBY: u32 = 1;
pub const STATE_ACTIVE: u32 = 2;
pub const STATE_ISOLATED: u32 = 3;

/// The timeline of one takeover, CLOCK_MONOTONIC nanoseconds (0 = not yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Timeline {
    /// Kernel timestamp of the master's last valid reply.
    pub last_reply_ns: u64,
    /// When silence became long enough (`last_reply + dead_after`).
    pub deadline_ns: u64,
    /// When the daemon decided to take over.
    pub decision_ns: u64,
    /// When rtnetlink confirmed the VIP was bound.
    pub vip_bound_ns: u64,
    /// When the first gratuitous ARP left.
    pub first_garp_ns: u64,
}

/// Written by the daemon (userspace) so that `vipwatch stats`, another
/// process, sees the userspace half of the picture.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct DaemonStatus {
    /// Daemon process id; `stats` checks it is still alive.
    pub pid: u32,
    /// `XDP_MODE_*`.
    pub xdp_mode: u32,
    /// `STATE_*`.
    pub state: u32,
    /// 1 when `--xdp-mode auto` fell back from driver to skb mode.
    pub xdp_fallback: u32,
    /// CLOCK_MONOTONIC ns when the daemon started probing.
    pub started_ns: u64,
    /// Probe interval in ns.
    pub interval_ns: u64,
    /// Silence that declares the master dead, in ns.
    pub dead_after_ns: u64,
    /// Probes actually sent to the master / the witness.
    pub probes_sent: u64,
    pub witness_probes_sent: u64,
    /// Number of takeovers and releases since start.
    pub takeovers: u64,
    pub releases: u64,
    /// Deadlines reached while too few probes had gone out to judge (the
    /// daemon was starved or stopped): silence excused, not acted on.
    pub deferred: u64,
    /// Timeline of the last takeover.
    pub last_takeover: Timeline,
    /// CLOCK_MONOTONIC ns of the last release, and the claim that caused it.
    pub last_release_ns: u64,
    pub last_claim_ns: u64,
    /// Longest gap between two probes we sent (ours to blame when it is
    /// close to the longest reply gap: a starved or stopped daemon).
    pub max_probe_gap_ns: u64,
}

/// The master-side gate: `closed == 1` makes `vipwatch_gate` drop
/// vipwatch's probes, so the backup sees the master as dead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GateConfig {
    pub closed: u32,
    pub _pad: u32,
}

/// Per-CPU counters of the master-side gate.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GateCounters {
    /// vipwatch probes seen (answered by the kernel when the gate is open).
    pub probes: u64,
    /// vipwatch probes dropped because the gate was closed.
    pub dropped: u64,
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
        Config,
        PeerCounters,
        GapTracker,
        ClaimCounters,
        ClaimEvent,
        DaemonStatus,
        GateConfig,
        GateCounters
    );
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn payload_round_trips() {
        let p = ProbePayload {
            nonce: 0x0123_4567_89ab_cdef,
            seq: 42,
            sent_ns: 1_000_000_007,
        };
        let wire = p.encode();
        assert_eq!(&wire[..4], b"VPW1");
        assert_eq!(&wire[4..12], &0x0123_4567_89ab_cdefu64.to_be_bytes());
        assert_eq!(ProbePayload::decode(&wire), Some(p));
    }

    #[test]
    fn payload_without_magic_is_rejected() {
        let mut wire = ProbePayload {
            nonce: 1,
            seq: 2,
            sent_ns: 3,
        }
        .encode();
        wire[0] = b'X';
        assert_eq!(ProbePayload::decode(&wire), None);
        assert_eq!(ProbePayload::decode(&[0; PROBE_PAYLOAD_LEN]), None);
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
        assert_eq!(core::mem::size_of::<Config>(), 40);
        assert_eq!(core::mem::size_of::<PeerCounters>(), 40 + 8 * RTT_BUCKETS);
        assert_eq!(core::mem::size_of::<ClaimCounters>(), 24);
        assert_eq!(core::mem::size_of::<ClaimEvent>(), 16);
        assert_eq!(core::mem::size_of::<GateCounters>(), 16);
    }
}
