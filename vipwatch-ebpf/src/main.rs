//! vipwatch's XDP programs.
//!
//! * `vipwatch` runs on the backup. It counts the master's (and witness's)
//!   replies to our heartbeat probes with kernel timestamps, counts forged
//!   replies and ARP claims of the VIP, and always returns `XDP_PASS`:
//!   vipwatch observes, it does not filter.
//! * `vipwatch_gate` runs on the master. While the master's service is
//!   unhealthy it drops vipwatch's probes (and only those), so the backup
//!   sees silence and takes over within its normal detection time.
//!
//! The matching rules live in `lib.rs`, where they are unit-tested on the
//! host; this file only binds them to `XdpContext` and the maps.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(not(target_arch = "bpf"))]
fn main() {
    // On the host this crate is only checked; the real object is built for
    // the BPF target by `vipwatch/build.rs`.
}

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{
        bindings::xdp_action::{XDP_DROP, XDP_PASS},
        helpers::bpf_ktime_get_ns,
        macros::{map, xdp},
        maps::{Array, PerCpuArray, RingBuf},
        programs::XdpContext,
    };
    use vipwatch_common::{
        ClaimCounters, ClaimEvent, Config, DaemonStatus, EVENTS_RING_BYTES, GapTracker, GateConfig,
        GateCounters, PEER_COUNT, PeerCounters, rtt_bucket,
    };
    use vipwatch_ebpf::{Frame, Seen, classify, is_probe, rtt_us};

    #[map(name = "VW_CONFIG")]
    static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

    #[map(name = "VW_PEERS")]
    static PEERS: PerCpuArray<PeerCounters> = PerCpuArray::with_max_entries(PEER_COUNT, 0);

    #[map(name = "VW_GAPS")]
    static GAPS: Array<GapTracker> = Array::with_max_entries(PEER_COUNT, 0);

    #[map(name = "VW_CLAIMS")]
    static CLAIMS: PerCpuArray<ClaimCounters> = PerCpuArray::with_max_entries(1, 0);

    #[map(name = "VW_EVENTS")]
    static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

    /// Written by the daemon, read by `vipwatch stats`; no program touches
    /// it, it lives here so that it is created and pinned with the others.
    #[map(name = "VW_STATUS")]
    static STATUS: Array<DaemonStatus> = Array::with_max_entries(1, 0);

    #[map(name = "VW_GATE")]
    static GATE: Array<GateConfig> = Array::with_max_entries(1, 0);

    #[map(name = "VW_GATE_CNT")]
    static GATE_COUNTERS: PerCpuArray<GateCounters> = PerCpuArray::with_max_entries(1, 0);

    /// The packet, as bounded reads the verifier can follow.
    struct Packet<'a>(&'a XdpContext);

    impl Frame for Packet<'_> {
        #[inline(always)]
        fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
            let start = self.0.data();
            let end = self.0.data_end();
            if start + offset + N > end {
                return None;
            }
            // SAFETY: the range [start + offset, start + offset + N) was
            // checked against data_end just above; the read is unaligned
            // because packet headers have no alignment guarantee.
            Some(unsafe { ((start + offset) as *const [u8; N]).read_unaligned() })
        }
    }

    #[xdp]
    pub fn vipwatch(ctx: XdpContext) -> u32 {
        // Whatever happens while counting, the packet goes on: a counting
        // failure must never become packet loss.
        let _counted: Result<(), ()> = try_vipwatch(&ctx);
        XDP_PASS
    }

    #[inline(always)]
    fn try_vipwatch(ctx: &XdpContext) -> Result<(), ()> {
        let cfg = CONFIG.get(0).ok_or(())?;
        match classify(&Packet(ctx), cfg) {
            Seen::Other => Ok(()),
            Seen::Reply {
                peer,
                seq,
                sent_ns,
                mac,
            } => {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let c = PEERS.get_ptr_mut(peer).ok_or(())?;
                // SAFETY: per-CPU value, so no other CPU writes it and XDP
                // does not preempt itself on one CPU.
                let c = unsafe { &mut *c };
                c.replies += 1;
                c.last_seen_ns = now;
                if seq > c.highest_seq {
                    c.highest_seq = seq;
                }
                c.last_mac = mac;
                let bucket = rtt_bucket(rtt_us(now, sent_ns));
                if let Some(slot) = c.rtt_hist.get_mut(bucket) {
                    *slot += 1;
                }
                if let Some(g) = GAPS.get_ptr_mut(peer) {
                    // SAFETY: a shared (not per-CPU) value; concurrent
                    // updates can only overstate a gap (see GapTracker).
                    let g = unsafe { &mut *g };
                    if g.last_ns != 0 && now > g.last_ns && now - g.last_ns > g.max_gap_ns {
                        g.max_gap_ns = now - g.last_ns;
                    }
                    g.last_ns = now;
                }
                Ok(())
            }
            Seen::Forged { peer } => {
                let c = PEERS.get_ptr_mut(peer).ok_or(())?;
                // SAFETY: as above, per-CPU value.
                unsafe { (*c).forged += 1 };
                Ok(())
            }
            Seen::Claim { mac, op } => {
                // SAFETY: bpf_ktime_get_ns has no preconditions.
                let now = unsafe { bpf_ktime_get_ns() };
                let c = CLAIMS.get_ptr_mut(0).ok_or(())?;
                // SAFETY: as above, per-CPU value.
                let c = unsafe { &mut *c };
                c.claims += 1;
                c.last_ns = now;
                c.last_mac = mac;
                // The counter above is the record; the event only wakes the
                // daemon, so a full ring loses a wake-up, not a claim.
                EVENTS
                    .output::<ClaimEvent>(
                        &ClaimEvent {
                            ktime_ns: now,
                            mac,
                            op,
                        },
                        0,
                    )
                    .map_err(|_| ())
            }
        }
    }

    #[xdp]
    pub fn vipwatch_gate(ctx: XdpContext) -> u32 {
        match try_gate(&ctx) {
            Ok(action) => action,
            Err(()) => XDP_PASS,
        }
    }

    #[inline(always)]
    fn try_gate(ctx: &XdpContext) -> Result<u32, ()> {
        if !is_probe(&Packet(ctx)) {
            return Ok(XDP_PASS);
        }
        let closed = GATE.get(0).is_some_and(|g| g.closed != 0);
        let c = GATE_COUNTERS.get_ptr_mut(0).ok_or(())?;
        // SAFETY: per-CPU value.
        let c = unsafe { &mut *c };
        c.probes += 1;
        if closed {
            c.dropped += 1;
            return Ok(XDP_DROP);
        }
        Ok(XDP_PASS)
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}
