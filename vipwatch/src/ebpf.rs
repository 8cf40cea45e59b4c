//! The loaded XDP programs and typed access to their maps.
//!
//! Like firezone's relay `Program` wrapper: one place knows the object,
//! the program and map names, how to attach, pin and read; everything else
//! sees plain Rust values ([`Snapshot`], [`DaemonStatus`]).

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, RawFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf,
    maps::{Array, Map, MapData, PerCpuArray, RingBuf},
    programs::{Xdp, XdpMode},
};
use vipwatch_common::{
    ClaimCounters, ClaimEvent, Config, DaemonStatus, GapTracker, GateConfig, GateCounters,
    MAP_CLAIMS, MAP_CONFIG, MAP_EVENTS, MAP_GAPS, MAP_GATE, MAP_GATE_COUNTERS, MAP_PEERS,
    MAP_STATUS, PEER_MASTER, PEER_WITNESS, PROG_GATE, PROG_WATCH, PeerCounters, RTT_BUCKETS,
    XDP_MODE_DRIVER, XDP_MODE_SKB,
};

/// The XDP object built by `build.rs`; empty when built without bpf-linker.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/vipwatch-xdp"));

/// Where bpffs is (and where we mount it if it is not).
pub const BPFFS: &str = "/sys/fs/bpf";
/// Our pins live in `/sys/fs/bpf/vipwatch/<iface>/`.
pub const PIN_ROOT: &str = "/sys/fs/bpf/vipwatch";

/// Maps pinned for the backup (`vipwatch stats` opens them).
const WATCH_PINS: [&str; 5] = [MAP_CONFIG, MAP_PEERS, MAP_GAPS, MAP_CLAIMS, MAP_STATUS];
/// Maps pinned for the master.
const GATE_PINS: [&str; 2] = [MAP_GATE, MAP_GATE_COUNTERS];

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

    pub fn code(self) -> u32 {
        match self {
            Self::Driver => XDP_MODE_DRIVER,
            Self::Skb => XDP_MODE_SKB,
        }
    }

    pub fn from_code(code: u32) -> Option<Self> {
        match code {
            XDP_MODE_DRIVER => Some(Self::Driver),
            XDP_MODE_SKB => Some(Self::Skb),
            _ => None,
        }
    }
}

/// Merged view of one peer's counters (sums across CPUs; max of times).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerSnapshot {
    pub replies: u64,
    pub forged: u64,
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
                rtt_hist,
            } = c;
            out.replies += replies;
            out.forged += forged;
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

/// Everything the kernel side counted, merged across CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub master: PeerSnapshot,
    pub witness: PeerSnapshot,
    pub claims: u64,
    pub last_claim_ns: u64,
    pub last_claim_mac: [u8; 6],
}

/// Typed handles on the backup's maps, whether we loaded them or opened
/// their pins from another process.
pub struct WatchMaps {
    config: Array<MapData, Config>,
    peers: PerCpuArray<MapData, PeerCounters>,
    gaps: Array<MapData, GapTracker>,
    claims: PerCpuArray<MapData, ClaimCounters>,
    status: Array<MapData, DaemonStatus>,
}

impl WatchMaps {
    /// Opens the maps a running daemon pinned for `iface`.
    pub fn open_pinned(iface: &str) -> anyhow::Result<Self> {
        let dir = pin_dir(iface);
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = dir.join(name);
            let data =
                MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
            Map::from_map_data(data).with_context(|| format!("reading {}", path.display()))
        };
        Self::from_maps(|name| open(name))
    }

    fn from_maps(mut take: impl FnMut(&str) -> anyhow::Result<Map>) -> anyhow::Result<Self> {
        Ok(Self {
            config: take(MAP_CONFIG)?.try_into().context(MAP_CONFIG)?,
            peers: take(MAP_PEERS)?.try_into().context(MAP_PEERS)?,
            gaps: take(MAP_GAPS)?.try_into().context(MAP_GAPS)?,
            claims: take(MAP_CLAIMS)?.try_into().context(MAP_CLAIMS)?,
            status: take(MAP_STATUS)?.try_into().context(MAP_STATUS)?,
        })
    }

    pub fn config(&self) -> anyhow::Result<Config> {
        self.config.get(&0, 0).context("reading VW_CONFIG")
    }

    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let peer = |index: u32| -> anyhow::Result<PeerSnapshot> {
            let per_cpu = self.peers.get(&index, 0).context("reading VW_PEERS")?;
            let gap = self.gaps.get(&index, 0).context("reading VW_GAPS")?;
            Ok(PeerSnapshot::merge(&per_cpu, gap))
        };
        let mut snap = Snapshot {
            master: peer(PEER_MASTER)?,
            witness: peer(PEER_WITNESS)?,
            ..Snapshot::default()
        };
        for c in self.claims.get(&0, 0).context("reading VW_CLAIMS")?.iter() {
            snap.claims += c.claims;
            if c.last_ns > snap.last_claim_ns {
                snap.last_claim_ns = c.last_ns;
                snap.last_claim_mac = c.last_mac;
            }
        }
        Ok(snap)
    }

    /// Just what the detector needs, in one syscall per peer: the merged
    /// per-CPU counters of the master (and of the witness when `witness`),
    /// without the gap tracker and the claims that only `stats` shows.
    pub fn liveness(&self, witness: bool) -> anyhow::Result<(PeerSnapshot, Option<PeerSnapshot>)> {
        let peer = |index: u32| -> anyhow::Result<PeerSnapshot> {
            let per_cpu = self.peers.get(&index, 0).context("reading VW_PEERS")?;
            Ok(PeerSnapshot::merge(&per_cpu, GapTracker::default()))
        };
        let w = if witness {
            Some(peer(PEER_WITNESS)?)
        } else {
            None
        };
        Ok((peer(PEER_MASTER)?, w))
    }

    /// Forgets the longest gap seen so far for `peer` (e.g. the start-up
    /// gap while the master's MAC was being resolved), keeping its last
    /// reply time. Racing with the program can lose one gap measurement,
    /// which is acceptable for a statistic that is reset once.
    pub fn reset_max_gap(&mut self, peer: u32) -> anyhow::Result<()> {
        let mut gap = self.gaps.get(&peer, 0).context("reading VW_GAPS")?;
        gap.max_gap_ns = 0;
        self.gaps.set(peer, gap, 0).context("writing VW_GAPS")
    }

    pub fn status(&self) -> anyhow::Result<DaemonStatus> {
        self.status.get(&0, 0).context("reading VW_STATUS")
    }

    pub fn set_status(&mut self, status: &DaemonStatus) -> anyhow::Result<()> {
        self.status.set(0, status, 0).context("writing VW_STATUS")
    }
}

/// The backup's program, attached and pinned. Dropping it detaches the
/// program (aya attaches XDP through a bpf_link owned by this process, so a
/// crash detaches too) and removes the pins.
pub struct Watcher {
    pub maps: WatchMaps,
    pub events: RingBuf<MapData>,
    pub mode: Attached,
    pub fell_back: bool,
    // Field order matters: the pins go after the maps are closed.
    _pins: PinDir,
    _ebpf: Ebpf,
}

impl Watcher {
    /// Loads the backup's program with `config`, attaches it to `iface` and
    /// pins its maps. Nothing stays attached or pinned if this fails.
    pub fn attach(iface: &str, config: Config, mode: ModeArg) -> anyhow::Result<Self> {
        PinDir::refuse_if_taken(iface)?;
        let mut ebpf = load_object()?;
        {
            let mut map: Array<&mut MapData, Config> = ebpf
                .map_mut(MAP_CONFIG)
                .ok_or_else(|| anyhow!("map {MAP_CONFIG} missing from the XDP object"))?
                .try_into()?;
            map.set(0, config, 0).context("writing VW_CONFIG")?;
        }
        let (mode, fell_back) = attach_program(&mut ebpf, PROG_WATCH, iface, mode)?;
        // Only now, with the program attached, is anything created outside
        // this process (bpffs mounted if needed, the pin directory): a start
        // refused for bad input leaves the host as it found it.
        let pins = PinDir::claim(iface)?;
        let mut take = |name: &str| -> anyhow::Result<Map> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
            if WATCH_PINS.contains(&name) {
                let path = pins.path.join(name);
                map.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
            Ok(map)
        };
        let maps = WatchMaps::from_maps(&mut take)?;
        let events = take(MAP_EVENTS)?.try_into().context(MAP_EVENTS)?;
        Ok(Self {
            maps,
            events,
            mode,
            fell_back,
            _pins: pins,
            _ebpf: ebpf,
        })
    }

    /// The ring buffer's fd, to wait on with poll(2).
    pub fn events_fd(&self) -> RawFd {
        self.events.as_raw_fd()
    }

    /// Drains pending claim events.
    pub fn drain_events(&mut self) -> Vec<ClaimEvent> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            match bytemuck::try_pod_read_unaligned::<ClaimEvent>(&item) {
                Ok(ev) => out.push(ev),
                Err(e) => log::warn!(
                    "ignoring a malformed claim event ({} bytes): {e}",
                    item.len()
                ),
            }
        }
        out
    }
}

/// The master's probe gate, attached and pinned.
pub struct Gate {
    gate: Array<MapData, GateConfig>,
    counters: PerCpuArray<MapData, GateCounters>,
    pub mode: Attached,
    pub fell_back: bool,
    _pins: PinDir,
    _ebpf: Ebpf,
}

impl Gate {
    /// Loads and attaches the master's gate program (open: probes pass).
    pub fn attach(iface: &str, mode: ModeArg) -> anyhow::Result<Self> {
        PinDir::refuse_if_taken(iface)?;
        let mut ebpf = load_object()?;
        let (mode, fell_back) = attach_program(&mut ebpf, PROG_GATE, iface, mode)?;
        let pins = PinDir::claim(iface)?;
        let mut take = |name: &str| -> anyhow::Result<Map> {
            let map = ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the XDP object"))?;
            if GATE_PINS.contains(&name) {
                let path = pins.path.join(name);
                map.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
            Ok(map)
        };
        let gate = take(MAP_GATE)?.try_into().context(MAP_GATE)?;
        let counters = take(MAP_GATE_COUNTERS)?
            .try_into()
            .context(MAP_GATE_COUNTERS)?;
        Ok(Self {
            gate,
            counters,
            mode,
            fell_back,
            _pins: pins,
            _ebpf: ebpf,
        })
    }

    /// Closed: vipwatch probes are dropped, so backups see the master dead.
    pub fn set_closed(&mut self, closed: bool) -> anyhow::Result<()> {
        let value = GateConfig {
            closed: u32::from(closed),
            _pad: 0,
        };
        self.gate.set(0, value, 0).context("writing VW_GATE")
    }

    /// (probes seen, probes dropped) since start.
    pub fn counters(&self) -> anyhow::Result<(u64, u64)> {
        let per_cpu = self.counters.get(&0, 0).context("reading VW_GATE_CNT")?;
        Ok(per_cpu
            .iter()
            .fold((0, 0), |(p, d), c| (p + c.probes, d + c.dropped)))
    }
}

/// `/sys/fs/bpf/vipwatch/<iface>` in the initial network namespace, and
/// `/sys/fs/bpf/vipwatch/<iface>@net<inode>` in any other: bpffs is shared
/// by all network namespaces, interface names are not.
pub fn pin_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(match netns_inode() {
        Some(ino) => format!("{iface}@net{ino}"),
        None => iface.to_owned(),
    })
}

/// The interface a pin directory name belongs to, if it belongs to our
/// network namespace.
pub fn iface_of_pin_dir(name: &str) -> Option<String> {
    match (name.split_once("@net"), netns_inode()) {
        (Some((iface, ino)), Some(ours)) if ino == ours.to_string() => Some(iface.to_owned()),
        (None, None) => Some(name.to_owned()),
        _ => None,
    }
}

/// Our network namespace's inode, or `None` in the initial namespace.
fn netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    // thread-self: a thread may have entered another namespace with setns.
    let ours = fs::metadata("/proc/thread-self/ns/net").ok()?.ino();
    let init = fs::metadata("/proc/1/ns/net").ok().map(|m| m.ino());
    (init != Some(ours)).then_some(ours)
}

/// Our pin directory for one interface; removed on drop.
struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Refuses when a live daemon owns `iface`'s pins. Read-only: without
    /// bpffs mounted nothing can be pinned, so nothing is mounted to look.
    fn refuse_if_taken(iface: &str) -> anyhow::Result<()> {
        if let Some(pid) = pinned_daemon_pid(iface)
            && process_alive(pid)
        {
            bail!(
                "vipwatch (pid {pid}) already runs on {iface}; stop it first (its pins are in {})",
                pin_dir(iface).display()
            );
        }
        Ok(())
    }

    /// Creates the directory (mounting bpffs first if needed), refusing if
    /// a live daemon already owns it and clearing the leftovers of one that
    /// died without cleaning up.
    fn claim(iface: &str) -> anyhow::Result<Self> {
        ensure_bpffs()?;
        let path = pin_dir(iface);
        if path.exists() {
            Self::refuse_if_taken(iface)?;
            log::info!(
                "removing stale pins of a vipwatch that is gone: {}",
                path.display()
            );
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            log::warn!("could not remove pins {}: {e}", self.path.display());
        }
        // The shared parent goes too once the last daemon is gone; another
        // daemon's pins in it make this fail, which is fine.
        if fs::remove_dir(PIN_ROOT).is_err() {
            log::debug!("{PIN_ROOT} still holds other daemons' pins");
        }
    }
}

/// The pid recorded by the daemon that pinned maps for `iface`, if any.
pub fn pinned_daemon_pid(iface: &str) -> Option<u32> {
    let path = pin_dir(iface).join(MAP_STATUS);
    let data = MapData::from_pin(&path).ok()?;
    let status: Array<MapData, DaemonStatus> = Map::from_map_data(data).ok()?.try_into().ok()?;
    status
        .get(&0, 0)
        .ok()
        .map(|s| s.pid)
        .filter(|pid| *pid != 0)
}

/// Whether `pid` is a running vipwatch: checking the command name too
/// keeps a reused pid (after a crash left the pins) from passing for us.
pub fn process_alive(pid: u32) -> bool {
    fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
        .is_ok_and(|comm| comm.trim_end() == "vipwatch")
}

fn load_object() -> anyhow::Result<Ebpf> {
    if OBJECT.is_empty() {
        bail!(
            "this vipwatch binary was built without its XDP object (bpf-linker was missing); \
             build it with `cargo xtask build`, which installs what is missing"
        );
    }
    Ebpf::load(OBJECT).context("loading the XDP object into the kernel")
}

/// Attaches `name` to `iface` in the requested mode; `Auto` tries driver
/// mode first and reports the fallback to skb mode.
fn attach_program(
    ebpf: &mut Ebpf,
    name: &str,
    iface: &str,
    mode: ModeArg,
) -> anyhow::Result<(Attached, bool)> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the XDP object"))?
        .try_into()?;
    program
        .load()
        .with_context(|| format!("the kernel verifier refused XDP program {name}"))?;
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

/// Mounts bpffs at /sys/fs/bpf unless it is already there.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = CString::new(BPFFS).context("bpffs path")?;
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: path is NUL-terminated and st is a valid, writable statfs.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut st) };
    if rc == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPFFS).with_context(|| format!("creating {BPFFS}"))?;
    let fstype = CString::new("bpf").context("fstype")?;
    // SAFETY: all strings are NUL-terminated and outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            path.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| {
            format!("mounting bpffs at {BPFFS} (needs root; try `mount -t bpf bpf {BPFFS}`)")
        });
    }
    log::info!("mounted bpffs at {BPFFS}");
    Ok(())
}
