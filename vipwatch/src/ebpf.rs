//! The XDP program of one interface and typed access to its maps.
//!
//! Like firezone's relay `Program` wrapper: one place knows the object, the
//! program and map names, how to attach and read; everything else sees
//! plain Rust values ([`PeerSnapshot`], [`SlotConfig`]).
//!
//! Nothing is pinned. The program is attached through a `bpf_link` owned by
//! this process, and every map lives as long as a descriptor of ours: when
//! vipwatch exits, however it exits (SIGKILL included), the kernel detaches
//! the program and frees the maps. Other processes (`vipwatch stats`) ask
//! the daemon over its control socket instead of opening pins, so there is
//! nothing under `/sys/fs/bpf` to mount, leave behind or clean up.

use std::os::fd::{AsFd as _, AsRawFd as _, RawFd};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{Xdp, XdpMode},
};
use vipwatch_common::{
    Addr, ClaimCounters, ClaimEvent, ConnEvent, ConnKey, ConnValue, GapTracker, GateCounters,
    IfaceConfig, Learned, MAP_CLAIMS, MAP_CONN_EVENTS, MAP_CONNS, MAP_ERRORS, MAP_EVENTS,
    MAP_FRESH, MAP_GAPS, MAP_GATE_COUNTERS, MAP_IFACE, MAP_LEARN, MAP_PEERS, MAP_SLOTS, MAP_VIPS,
    PEERS_PER_SLOT, PROG_XDP, PeerCounters, RTT_BUCKETS, ReplayWindow, SLOT_GATE_CLOSED,
    SLOT_HOLDING, SlotConfig, XDP_ERROR_KINDS, peer_index,
};

/// The XDP object built by `build.rs`; empty when built without bpf-linker.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipwatch-xdp"));

/// `--xdp-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    /// Driver (native) mode, falling back to skb (generic) mode if the
    /// driver refuses, and saying so.
    Auto,
    Driver,
    Skb,
}

/// The mode the kernel accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    Driver,
    Skb,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
}

/// Merged view of one peer's counters (sums across CPUs; max of times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub replies: u64,
    pub forged: u64,
    pub replayed: u64,
    pub last_seen_ns: u64,
    pub highest_seq: u64,
    pub last_mac: [u8; 6],
    pub rtt_hist: [u64; RTT_BUCKETS],
    pub max_gap_ns: u64,
}

impl PeerSnapshot {
    fn merge(per_cpu: &[PeerCounters], gap: GapTracker) -> Self {
        let mut out = Self {
            max_gap_ns: gap.max_gap_ns,
            ..Self::default()
        };
        for c in per_cpu {
            let PeerCounters {
                replies,
                forged,
                last_seen_ns,
                highest_seq,
                last_mac,
                _pad,
                replayed,
                rtt_hist,
            } = c;
            out.replies += replies;
            out.forged += forged;
            out.replayed += replayed;
            if *last_seen_ns > out.last_seen_ns {
                out.last_seen_ns = *last_seen_ns;
                out.last_mac = *last_mac;
            }
            out.highest_seq = out.highest_seq.max(*highest_seq);
            for (sum, n) in out.rtt_hist.iter_mut().zip(rtt_hist) {
                *sum += n;
            }
        }
        out
    }
}

/// Claims of one slot's VIP, merged across CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClaimSnapshot {
    pub claims: u64,
    pub last_ns: u64,
    pub last_mac: [u8; 6],
}

/// The program attached to one interface. Dropping it detaches the program
/// and, once every [`Maps`] handle is gone too, frees the maps.
pub struct Program {
    pub mode: Attached,
    pub fell_back: bool,
    /// The maps, kept to hand out further handles ([`Program::maps`]).
    data: Vec<(&'static str, MapData)>,
    events: Option<RingBuf<MapData>>,
    conn_events: Option<RingBuf<MapData>>,
    _ebpf: Ebpf,
}

const MAP_NAMES: [&str; 11] = [
    MAP_FRESH,
    MAP_CONNS,
    MAP_LEARN,
    MAP_IFACE,
    MAP_SLOTS,
    MAP_VIPS,
    MAP_PEERS,
    MAP_GAPS,
    MAP_CLAIMS,
    MAP_GATE_COUNTERS,
    MAP_ERRORS,
];

impl Program {
    /// Loads the program, writes the interface settings and attaches it to
    /// `iface`. Nothing stays attached if this fails.
    /// `conn_table`: the size of the connection table.
    pub fn attach(
        iface: &str,
        our_mac: [u8; 6],
        mode: ModeArg,
        conn_table: u32,
    ) -> anyhow::Result<Self> {
        let mut ebpf = load_object(conn_table)?;
        {
            let mut map: Array<&mut MapData, IfaceConfig> = ebpf
                .map_mut(MAP_IFACE)
                .ok_or_else(|| anyhow!("map {MAP_IFACE} missing from the XDP object"))?
                .try_into()?;
            let config = IfaceConfig {
                our_mac,
                _pad: [0; 2],
            };
            map.set(0, config, 0).context("writing VW_IFACE")?;
        }
        let (mode, fell_back) = attach_program(&mut ebpf, iface, mode)?;
        let mut data = Vec::new();
        for name in MAP_NAMES {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
            data.push((name, into_data(map)?));
        }
        let mut ring = |name: &str| -> anyhow::Result<RingBuf<MapData>> {
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?
                .try_into()
                .context(name.to_owned())
        };
        let events = ring(MAP_EVENTS)?;
        let conn_events = ring(MAP_CONN_EVENTS)?;
        Ok(Self {
            mode,
            fell_back,
            data,
            events: Some(events),
            conn_events: Some(conn_events),
            _ebpf: ebpf,
        })
    }

    /// New handles on the maps (duplicated descriptors): one set per thread
    /// that reads or writes them, so no handle is shared.
    pub fn maps(&self) -> anyhow::Result<Maps> {
        let take = |name: &str| -> anyhow::Result<Map> {
            let (_, data) = self
                .data
                .iter()
                .find(|(n, _)| *n == name)
                .ok_or_else(|| anyhow!("map {name} is not kept"))?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .with_context(|| format!("duplicating the descriptor of {name}"))?;
            let data = MapData::from_fd(fd).with_context(|| format!("reopening {name}"))?;
            Map::from_map_data(data).with_context(|| format!("reopening {name}"))
        };
        Ok(Maps {
            slots: take(MAP_SLOTS)?.try_into().context(MAP_SLOTS)?,
            vips: take(MAP_VIPS)?.try_into().context(MAP_VIPS)?,
            peers: take(MAP_PEERS)?.try_into().context(MAP_PEERS)?,
            gaps: take(MAP_GAPS)?.try_into().context(MAP_GAPS)?,
            fresh: take(MAP_FRESH)?.try_into().context(MAP_FRESH)?,
            claims: take(MAP_CLAIMS)?.try_into().context(MAP_CLAIMS)?,
            gate: take(MAP_GATE_COUNTERS)?
                .try_into()
                .context(MAP_GATE_COUNTERS)?,
            errors: take(MAP_ERRORS)?.try_into().context(MAP_ERRORS)?,
            conns: take(MAP_CONNS)?.try_into().context(MAP_CONNS)?,
            learn: take(MAP_LEARN)?.try_into().context(MAP_LEARN)?,
        })
    }

    /// The claim ring buffer (once: it has one reader).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The connection event ring buffer (once).
    pub fn take_conn_events(&mut self) -> Option<RingBuf<MapData>> {
        self.conn_events.take()
    }
}

fn into_data(map: Map) -> anyhow::Result<MapData> {
    match map {
        Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) => Ok(d),
        _ => bail!("a vipwatch map has a type this version does not expect"),
    }
}

/// Typed handles on one interface's maps.
pub struct Maps {
    slots: Array<MapData, SlotConfig>,
    vips: HashMap<MapData, Addr, u32>,
    peers: PerCpuArray<MapData, PeerCounters>,
    gaps: Array<MapData, GapTracker>,
    fresh: Array<MapData, ReplayWindow>,
    claims: PerCpuArray<MapData, ClaimCounters>,
    gate: PerCpuArray<MapData, GateCounters>,
    errors: PerCpuArray<MapData, u64>,
    conns: HashMap<MapData, ConnKey, ConnValue>,
    learn: Array<MapData, Learned>,
}

impl Maps {
    /// Starts serving `slot` with `config` (counters zeroed first, VIP
    /// indexed last, so nothing is attributed to a half-written slot).
    pub fn open_slot(&mut self, slot: u32, config: SlotConfig) -> anyhow::Result<()> {
        self.zero_counters(slot)?;
        self.slots
            .set(slot, config, 0)
            .context("writing VW_SLOTS")?;
        self.vips
            .insert(config.vip, slot, 0)
            .context("indexing the VIP in VW_VIPS")
    }

    /// Stops serving `slot`: the VIP leaves the index first, then the slot
    /// is cleared, so the program never sees a VIP pointing at nothing.
    pub fn close_slot(&mut self, slot: u32) -> anyhow::Result<()> {
        let config = self.slots.get(&slot, 0).context("reading VW_SLOTS")?;
        match self.vips.remove(&config.vip) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e).context("removing the VIP from VW_VIPS"),
        }
        self.slots
            .set(slot, SlotConfig::default(), 0)
            .context("clearing VW_SLOTS")?;
        self.learn
            .set(slot, Learned::default(), 0)
            .context("clearing VW_LEARN")?;
        self.forget_conns(slot)?;
        self.zero_counters(slot)
    }

    /// Starts or stops recording the TCP connections to a slot's VIP.
    pub fn set_holding(&mut self, slot: u32, holding: bool) -> anyhow::Result<()> {
        self.set_flag(slot, SLOT_HOLDING, holding)
    }

    /// Who probes a master slot's VIP, as its XDP program last saw.
    pub fn learned(&self, slot: u32) -> anyhow::Result<Learned> {
        self.learn.get(&slot, 0).context("reading VW_LEARN")
    }

    /// The connections recorded for `slot`: (key, value). One pass over the
    /// whole table (all slots of the interface), two syscalls per entry.
    pub fn conns_of(&self, slot: u32) -> Vec<(ConnKey, ConnValue)> {
        // An entry evicted between two steps of the walk ends it early or
        // is skipped: the next scan picks up what this one missed.
        self.conns
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, _)| k.slot == slot)
            .collect()
    }

    /// Removes `slot`'s connections from the table (it no longer holds
    /// the VIP; a later holding starts afresh).
    pub fn forget_conns(&mut self, slot: u32) -> anyhow::Result<()> {
        let keys: Vec<ConnKey> = self
            .conns
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.slot == slot)
            .collect();
        for k in keys {
            match self.conns.remove(&k) {
                Ok(()) => {}
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e).context("removing from VW_CONNS"),
            }
        }
        Ok(())
    }

    fn zero_counters(&mut self, slot: u32) -> anyhow::Result<()> {
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| anyhow!(e))
            .context("counting CPUs")?;
        for peer in 0..PEERS_PER_SLOT {
            let index = peer_index(slot, peer);
            let zeros = PerCpuValues::try_from(vec![PeerCounters::default(); cpus])
                .context("per-CPU zeros")?;
            self.peers
                .set(index, zeros, 0)
                .context("zeroing VW_PEERS")?;
            self.gaps
                .set(index, GapTracker::default(), 0)
                .context("zeroing VW_GAPS")?;
            // A new instance's probes start again at 1.
            self.fresh
                .set(index, ReplayWindow::default(), 0)
                .context("zeroing VW_FRESH")?;
        }
        let zeros = PerCpuValues::try_from(vec![ClaimCounters::default(); cpus])
            .context("per-CPU zeros")?;
        self.claims
            .set(slot, zeros, 0)
            .context("zeroing VW_CLAIMS")?;
        let zeros =
            PerCpuValues::try_from(vec![GateCounters::default(); cpus]).context("per-CPU zeros")?;
        self.gate.set(slot, zeros, 0).context("zeroing VW_GATE_CNT")
    }

    /// Opens or closes a master slot's probe gate.
    pub fn set_gate_closed(&mut self, slot: u32, closed: bool) -> anyhow::Result<()> {
        self.set_flag(slot, SLOT_GATE_CLOSED, closed)
    }

    fn set_flag(&mut self, slot: u32, flag: u32, on: bool) -> anyhow::Result<()> {
        let mut config = self.slots.get(&slot, 0).context("reading VW_SLOTS")?;
        if on {
            config.flags |= flag;
        } else {
            config.flags &= !flag;
        }
        self.slots.set(slot, config, 0).context("writing VW_SLOTS")
    }

    /// One peer of a slot, without the gap tracker: what the detector needs,
    /// in one syscall.
    pub fn liveness(&self, slot: u32, peer: u32) -> anyhow::Result<PeerSnapshot> {
        let per_cpu = self
            .peers
            .get(&peer_index(slot, peer), 0)
            .context("reading VW_PEERS")?;
        Ok(PeerSnapshot::merge(&per_cpu, GapTracker::default()))
    }

    /// One peer of a slot, with its longest gap.
    pub fn peer(&self, slot: u32, peer: u32) -> anyhow::Result<PeerSnapshot> {
        let index = peer_index(slot, peer);
        let per_cpu = self.peers.get(&index, 0).context("reading VW_PEERS")?;
        let gap = self.gaps.get(&index, 0).context("reading VW_GAPS")?;
        Ok(PeerSnapshot::merge(&per_cpu, gap))
    }

    /// Forgets the longest gap seen so far (e.g. the start-up gap while the
    /// master's MAC was being resolved), keeping the last reply time.
    pub fn reset_max_gap(&mut self, slot: u32, peer: u32) -> anyhow::Result<()> {
        let index = peer_index(slot, peer);
        let mut gap = self.gaps.get(&index, 0).context("reading VW_GAPS")?;
        gap.max_gap_ns = 0;
        self.gaps.set(index, gap, 0).context("writing VW_GAPS")
    }

    pub fn claims(&self, slot: u32) -> anyhow::Result<ClaimSnapshot> {
        let mut out = ClaimSnapshot::default();
        for c in self
            .claims
            .get(&slot, 0)
            .context("reading VW_CLAIMS")?
            .iter()
        {
            out.claims += c.claims;
            if c.last_ns > out.last_ns {
                out.last_ns = c.last_ns;
                out.last_mac = c.last_mac;
            }
        }
        Ok(out)
    }

    /// (probes seen, probes dropped) by a master slot's gate.
    pub fn gate(&self, slot: u32) -> anyhow::Result<(u64, u64)> {
        let per_cpu = self.gate.get(&slot, 0).context("reading VW_GATE_CNT")?;
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(p, d), c| (p + c.probes, d + c.dropped)))
    }

    /// The program's own error counters, by `XDP_ERR_*` index.
    pub fn errors(&self) -> anyhow::Result<[u64; XDP_ERROR_KINDS as usize]> {
        let mut out = [0; XDP_ERROR_KINDS as usize];
        for (kind, slot) in out.iter_mut().enumerate() {
            let index = u32::try_from(kind).context("error index")?;
            *slot = self
                .errors
                .get(&index, 0)
                .context("reading VW_ERRORS")?
                .iter()
                .sum();
        }
        Ok(out)
    }
}

/// Reads the events of type `T` (claims, connections) a ring buffer holds.
pub struct Events<T> {
    ring: RingBuf<MapData>,
    _of: std::marker::PhantomData<T>,
}

impl<T: bytemuck::Pod> Events<T> {
    pub fn new(ring: RingBuf<MapData>) -> Self {
        Self {
            ring,
            _of: std::marker::PhantomData,
        }
    }

    /// The ring buffer's fd, to wait on with poll(2).
    pub fn fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }

    /// Drains pending events.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(item) = self.ring.next() {
            match bytemuck::try_pod_read_unaligned::<T>(&item) {
                Ok(ev) => out.push(ev),
                Err(e) => log::warn!("ignoring a malformed event ({} bytes): {e}", item.len()),
            }
        }
        out
    }
}

/// What the interface's ring buffers carry.
pub type Claims = Events<ClaimEvent>;
pub type ConnEvents = Events<ConnEvent>;

fn load_object(conn_table: u32) -> anyhow::Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!(
            "this vipwatch binary was built without its XDP object (bpf-linker was missing); \
             build it with `cargo xtask build`, which installs what is missing"
        );
    }
    EbpfLoader::new()
        .map_max_entries(MAP_CONNS, conn_table)
        .load(OBJECT)
        .context("loading the XDP object into the kernel")
}

/// Attaches the program to `iface` in the requested mode; `Auto` tries
/// driver mode first and reports the fallback to skb mode.
/// The name of the driver behind `iface` (`ETHTOOL_GDRVINFO`), if it
/// says.
fn driver_name(iface: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    // struct ethtool_drvinfo: cmd, then driver[32], ... (196 bytes).
    let mut info = [0u8; 256];
    info[..4].copy_from_slice(&ETHTOOL_GDRVINFO.to_ne_bytes());
    // SAFETY: plain socket(2); closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a zeroed ifreq is valid; the name is copied below.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = info.as_mut_ptr().cast();
    // SAFETY: fd is a socket; ifr names the interface and points at a
    // buffer larger than struct ethtool_drvinfo.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut ifr) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return None;
    }
    let name = &info[4..36];
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// `--xdp-mode auto` for a program that answers probes itself (a keyed
/// master, XDP_TX): on a veth in driver mode, the frames it sends back are
/// dropped unless the peer runs NAPI (XDP or GRO on it), so skb mode.
pub fn auto_mode_for_xdp_tx(iface: &str, mode: ModeArg) -> ModeArg {
    if mode == ModeArg::Auto && driver_name(iface).as_deref() == Some("veth") {
        log::info!(
            "{iface} is a veth and this program answers probes itself (XDP_TX): skb mode, since driver-mode \
             XDP_TX on a veth needs the peer to run NAPI"
        );
        return ModeArg::Skb;
    }
    mode
}

fn attach_program(ebpf: &mut Ebpf, iface: &str, mode: ModeArg) -> anyhow::Result<(Attached, bool)> {
    let program: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .ok_or_else(|| anyhow!("program {PROG_XDP} missing from the XDP object"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel verifier refused XDP program {PROG_XDP}"))?;
    let attach = |program: &mut Xdp, m: Attached| {
        let xdp_mode = match m {
            Attached::Driver => XdpMode::Driver,
            Attached::Skb => XdpMode::Skb,
        };
        program.attach(iface, xdp_mode).map(|_| ()).map_err(|e| {
            anyhow::Error::new(e).context(format!(
                "the kernel refused to attach XDP in {} mode on {iface}",
                m.as_str()
            ))
        })
    };
    match mode {
        ModeArg::Driver => attach(program, Attached::Driver).map(|()| (Attached::Driver, false)),
        ModeArg::Skb => attach(program, Attached::Skb).map(|()| (Attached::Skb, false)),
        ModeArg::Auto => match attach(program, Attached::Driver) {
            Ok(()) => Ok((Attached::Driver, false)),
            Err(driver_err) => {
                log::warn!(
                    "driver-mode XDP refused on {iface} ({driver_err:#}); falling back to skb (generic) mode"
                );
                attach(program, Attached::Skb)
                    .map(|()| (Attached::Skb, true))
                    .with_context(|| format!("after driver mode failed too: {driver_err:#}"))
            }
        },
    }
}
