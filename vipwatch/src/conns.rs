//! The connection tables behind the kick, and the sync datagrams between
//! the holder of a VIP and its peer. Pure: no sockets, no clock.
//!
//! The holder's XDP program records the TCP connections clients have to the
//! VIP and reports each one that appears or closes ([`ConnEvent`]); the
//! holder keeps a copy ([`Local`]) and sends its peer what changed every
//! `conn_sync` (a *delta*), and the whole table every
//! [`SNAPSHOT_EVERY_NS`] (a *snapshot*, in chunks), which repairs any lost
//! delta. The peer keeps what it accepted ([`Peer`]); when it takes the
//! VIP over, those are the connections it kicks.
//!
//! Every datagram carries the backup's nonce (the master learns it from the
//! backup's probes, as it learns where the backup is) and the VIP; the
//! receiver accepts a datagram only from its peer's address with the right
//! nonce, and counts anything else as forged.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use vipwatch_common::{Addr, CONN_CLOSED, CONN_NEW, ConnEvent, addr_of, ip_of};

/// How often a holder sends its whole table (a lost delta is repaired at
/// most this late).
pub(crate) const SNAPSHOT_EVERY_NS: u64 = 1_000_000_000;
/// A peer table not refreshed for this long is not kicked: its holder
/// stopped syncing (it no longer holds the VIP) long before any takeover.
pub(crate) const PEER_STALE_NS: u64 = 10_000_000_000;
/// Idle connections (no segment from the client) are dropped from the
/// holder's table after this long.
pub(crate) const IDLE_NS: u64 = 600_000_000_000;

/// First bytes of every sync datagram.
pub(crate) const SYNC_MAGIC: [u8; 4] = *b"VWS1";
/// Datagram header length.
pub(crate) const HEADER_LEN: usize = 48;
/// One connection on the wire: op, pad, MAC, client address, ports, ack.
pub(crate) const ENTRY_LEN: usize = 32;
/// Connections per datagram: 1400-byte datagrams fit any LAN's MTU.
pub(crate) const ENTRIES_PER_DATAGRAM: usize = (1400 - HEADER_LEN) / ENTRY_LEN;

/// A connection, as both hosts name it (the slot is local to each host, so
/// the VIP in the datagram header stands for it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Conn {
    pub(crate) client: IpAddr,
    pub(crate) client_port: u16,
    pub(crate) vip_port: u16,
}

/// What the next holder needs to kick a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Info {
    /// The client's last acknowledgement number seen (0 if none).
    pub(crate) ack: u32,
    /// The source MAC of its frames (its own, or its router's): where the
    /// kick goes on this link, with no address resolution first.
    pub(crate) mac: [u8; 6],
}

/// What kind of datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Connections added and removed since the previous delta.
    Delta,
    /// Chunk `chunk` of `chunks` of the whole table, snapshot `id`.
    Snapshot { id: u32, chunk: u16, chunks: u16 },
    /// The sender gave the VIP up (to us): kick what it had, now.
    Released,
}

/// One sync datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Datagram {
    pub(crate) kind: Kind,
    /// The backup's nonce.
    pub(crate) nonce: u64,
    pub(crate) vip: Addr,
    /// Random per table copy of the sender: a new epoch means a new table.
    pub(crate) epoch: u32,
    pub(crate) added: Vec<(Conn, Info)>,
    pub(crate) removed: Vec<Conn>,
}

const OP_ADD: u8 = 1;
const OP_REMOVE: u8 = 2;

impl Datagram {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let Self {
            kind,
            nonce,
            vip,
            epoch,
            added,
            removed,
        } = self;
        let mut out = Vec::with_capacity(HEADER_LEN + ENTRY_LEN * (added.len() + removed.len()));
        out.extend_from_slice(&SYNC_MAGIC);
        let (code, id, chunk, chunks) = match *kind {
            Kind::Delta => (1u8, 0u32, 0u16, 0u16),
            Kind::Snapshot { id, chunk, chunks } => (2, id, chunk, chunks),
            Kind::Released => (3, 0, 0, 0),
        };
        out.extend_from_slice(&[code, 0, 0, 0]);
        out.extend_from_slice(&nonce.to_be_bytes());
        out.extend_from_slice(vip);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&chunk.to_be_bytes());
        out.extend_from_slice(&chunks.to_be_bytes());
        let count = u16::try_from(added.len() + removed.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        let mut entry = |op: u8, c: &Conn, info: Info| {
            out.extend_from_slice(&[op, 0]);
            out.extend_from_slice(&info.mac);
            out.extend_from_slice(&addr_of(c.client));
            out.extend_from_slice(&c.client_port.to_be_bytes());
            out.extend_from_slice(&c.vip_port.to_be_bytes());
            out.extend_from_slice(&info.ack.to_be_bytes());
        };
        for (c, info) in added {
            entry(OP_ADD, c, *info);
        }
        for c in removed {
            entry(OP_REMOVE, c, Info::default());
        }
        out
    }

    /// Parses a datagram; `None` for anything that is not a well-formed
    /// vipwatch sync datagram.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < HEADER_LEN || bytes[0..4] != SYNC_MAGIC {
            return None;
        }
        let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap_or_default());
        let nonce = u64::from_be_bytes(bytes[8..16].try_into().ok()?);
        let vip: Addr = bytes[16..32].try_into().ok()?;
        let epoch = u32_at(32);
        let id = u32_at(36);
        let (chunk, chunks) = (u16_at(40), u16_at(42));
        let count = usize::from(u16_at(44));
        let kind = match bytes[4] {
            1 => Kind::Delta,
            2 if chunks > 0 && chunk < chunks => Kind::Snapshot { id, chunk, chunks },
            3 => Kind::Released,
            _ => return None,
        };
        let body = &bytes[HEADER_LEN..];
        if body.len() != count * ENTRY_LEN {
            return None;
        }
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for e in body.chunks_exact(ENTRY_LEN) {
            let client: Addr = e[8..24].try_into().ok()?;
            let conn = Conn {
                client: ip_of(&client),
                client_port: u16::from_be_bytes([e[24], e[25]]),
                vip_port: u16::from_be_bytes([e[26], e[27]]),
            };
            let info = Info {
                ack: u32::from_be_bytes([e[28], e[29], e[30], e[31]]),
                mac: e[2..8].try_into().ok()?,
            };
            match e[0] {
                OP_ADD => added.push((conn, info)),
                OP_REMOVE => removed.push(conn),
                _ => return None,
            }
        }
        Some(Self {
            kind,
            nonce,
            vip,
            epoch,
            added,
            removed,
        })
    }
}

/// The holder's copy of its own table, fed by the XDP program's events.
#[derive(Clone, Debug, Default)]
pub(crate) struct Local {
    /// Connection → (what kicks it, last seen ns).
    conns: HashMap<Conn, (Info, u64)>,
    capacity: usize,
    added: BTreeSet<Conn>,
    removed: BTreeSet<Conn>,
    snapshot_id: u32,
}

impl Local {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Applies an event of the XDP program (for this instance's slot).
    pub(crate) fn event(&mut self, ev: &ConnEvent) {
        let conn = Conn {
            client: ip_of(&ev.key.client),
            client_port: u16::from_be_bytes(ev.key.client_port),
            vip_port: u16::from_be_bytes(ev.key.vip_port),
        };
        match ev.kind {
            // Bounded like the kernel's LRU table it mirrors: when full, new
            // connections are not tracked (the kernel keeps the most recent;
            // a snapshot scan reconciles).
            CONN_NEW if self.conns.len() < self.capacity || self.conns.contains_key(&conn) => {
                let info = Info {
                    ack: u32::from_be_bytes(ev.ack),
                    mac: ev.mac,
                };
                self.conns.insert(conn, (info, ev.ktime_ns));
                self.removed.remove(&conn);
                self.added.insert(conn);
            }
            // One the peer never heard of needs no removal either.
            CONN_CLOSED if self.conns.remove(&conn).is_some() && !self.added.remove(&conn) => {
                self.removed.insert(conn);
            }
            _ => {}
        }
    }

    /// Replaces the table with what the kernel holds now (a scan): picks up
    /// fresh acks, evictions and connections whose event was lost, and
    /// drops idle ones.
    pub(crate) fn reconcile(
        &mut self,
        now_ns: u64,
        kernel: impl IntoIterator<Item = (Conn, Info, u64)>,
    ) {
        let mut fresh = HashMap::new();
        for (conn, info, last_seen) in kernel {
            if now_ns.saturating_sub(last_seen) < IDLE_NS && fresh.len() < self.capacity {
                fresh.insert(conn, (info, last_seen));
            }
        }
        for conn in self.conns.keys() {
            if !fresh.contains_key(conn) {
                self.added.remove(conn);
                self.removed.insert(*conn);
            }
        }
        for conn in fresh.keys() {
            if !self.conns.contains_key(conn) {
                self.removed.remove(conn);
                self.added.insert(*conn);
            }
        }
        self.conns = fresh;
    }

    /// The delta since the previous one, as datagrams (none if nothing
    /// changed).
    pub(crate) fn delta(&mut self, nonce: u64, vip: Addr, epoch: u32) -> Vec<Datagram> {
        let added: Vec<(Conn, Info)> = std::mem::take(&mut self.added)
            .into_iter()
            .filter_map(|c| self.conns.get(&c).map(|(info, _)| (c, *info)))
            .collect();
        let removed: Vec<Conn> = std::mem::take(&mut self.removed).into_iter().collect();
        let mut out = Vec::new();
        let mut a = added.chunks(ENTRIES_PER_DATAGRAM);
        let mut r = removed.chunks(ENTRIES_PER_DATAGRAM);
        loop {
            let (added, removed) = match (a.next(), r.next()) {
                (None, None) => break,
                (added, removed) => (
                    added.unwrap_or_default().to_vec(),
                    removed.unwrap_or_default().to_vec(),
                ),
            };
            // Two full halves would overflow one datagram: split them.
            for (added, removed) in [(added, Vec::new()), (Vec::new(), removed)] {
                if added.is_empty() && removed.is_empty() {
                    continue;
                }
                out.push(Datagram {
                    kind: Kind::Delta,
                    nonce,
                    vip,
                    epoch,
                    added,
                    removed,
                });
            }
        }
        out
    }

    /// The whole table, as the chunks of a new snapshot (at least one, so
    /// that an empty table is synced too).
    pub(crate) fn snapshot(&mut self, nonce: u64, vip: Addr, epoch: u32) -> Vec<Datagram> {
        self.snapshot_id = self.snapshot_id.wrapping_add(1);
        let mut all: Vec<(Conn, Info)> = self
            .conns
            .iter()
            .map(|(c, (info, _))| (*c, *info))
            .collect();
        all.sort_unstable();
        let chunks: Vec<&[(Conn, Info)]> = if all.is_empty() {
            vec![&[]]
        } else {
            all.chunks(ENTRIES_PER_DATAGRAM).collect()
        };
        let n = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
        chunks
            .into_iter()
            .take(usize::from(n))
            .enumerate()
            .map(|(k, part)| Datagram {
                kind: Kind::Snapshot {
                    id: self.snapshot_id,
                    chunk: u16::try_from(k).unwrap_or(u16::MAX),
                    chunks: n,
                },
                nonce,
                vip,
                epoch,
                added: part.to_vec(),
                removed: Vec::new(),
            })
            .collect()
    }

    /// Everything, for a hand-over kick by the next holder (tests).
    #[cfg(test)]
    pub(crate) fn conns(&self) -> Vec<Conn> {
        let mut v: Vec<Conn> = self.conns.keys().copied().collect();
        v.sort_unstable();
        v
    }
}

/// What the peer accepted from the holder: the connections to kick when
/// the VIP comes here.
#[derive(Clone, Debug, Default)]
pub(crate) struct Peer {
    conns: HashMap<Conn, Info>,
    epoch: Option<u32>,
    /// The snapshot being assembled: id, chunks seen, its connections.
    staging: Option<(u32, Vec<bool>, HashMap<Conn, Info>)>,
    /// When the last datagram was accepted (0: never).
    pub(crate) last_sync_ns: u64,
    pub(crate) accepted: u64,
    pub(crate) forged: u64,
    capacity: usize,
}

/// What came of a datagram the peer received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Received {
    Applied,
    /// The holder released the VIP to us: kick now.
    Released,
    Forged,
}

impl Peer {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Accepts `d` only if it comes from `expected_from` with `nonce`.
    pub(crate) fn receive(
        &mut self,
        now_ns: u64,
        from: IpAddr,
        expected_from: Option<IpAddr>,
        nonce: Option<u64>,
        d: &Datagram,
    ) -> Received {
        if expected_from != Some(from) || nonce != Some(d.nonce) {
            self.forged += 1;
            return Received::Forged;
        }
        self.accepted += 1;
        self.last_sync_ns = now_ns;
        if self.epoch != Some(d.epoch) {
            // The holder restarted its table (or a new holder): start over.
            self.epoch = Some(d.epoch);
            self.conns.clear();
            self.staging = None;
        }
        match d.kind {
            Kind::Released => return Received::Released,
            Kind::Delta => {
                for (c, ack) in &d.added {
                    self.add(*c, *ack);
                    if let Some((_, _, staged)) = self.staging.as_mut() {
                        staged.insert(*c, *ack);
                    }
                }
                for c in &d.removed {
                    self.conns.remove(c);
                    if let Some((_, _, staged)) = self.staging.as_mut() {
                        staged.remove(c);
                    }
                }
            }
            Kind::Snapshot { id, chunk, chunks } => {
                let fresh = !matches!(&self.staging, Some((sid, seen, _)) if *sid == id && seen.len() == usize::from(chunks));
                if fresh {
                    self.staging = Some((id, vec![false; usize::from(chunks)], HashMap::new()));
                }
                if let Some((_, seen, staged)) = self.staging.as_mut() {
                    if let Some(s) = seen.get_mut(usize::from(chunk)) {
                        *s = true;
                    }
                    for (c, ack) in &d.added {
                        if staged.len() < self.capacity {
                            staged.insert(*c, *ack);
                        }
                    }
                    if seen.iter().all(|s| *s) {
                        // Complete: it replaces what we had, dropping
                        // connections whose removal we missed.
                        if let Some((_, _, staged)) = self.staging.take() {
                            self.conns = staged;
                        }
                    }
                }
            }
        }
        Received::Applied
    }

    fn add(&mut self, c: Conn, info: Info) {
        if self.conns.len() < self.capacity || self.conns.contains_key(&c) {
            self.conns.insert(c, info);
        }
    }

    /// The connections to kick, once: the table is emptied (a takeover
    /// kicks each at most once). Nothing if the table is stale.
    pub(crate) fn take_for_kick(&mut self, now_ns: u64) -> Vec<(Conn, Info)> {
        if self.last_sync_ns == 0 || now_ns.saturating_sub(self.last_sync_ns) > PEER_STALE_NS {
            self.conns.clear();
            return Vec::new();
        }
        let mut v: Vec<(Conn, Info)> = self.conns.drain().collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use vipwatch_common::{ConnKey, addr_v4};

    use super::*;

    const VIP: Addr = addr_v4([192, 0, 2, 100]);
    const MASTER: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const NONCE: u64 = 0x1122_3344_5566_7788;
    const MS: u64 = 1_000_000;

    fn conn(port: u16) -> Conn {
        Conn {
            client: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
            client_port: port,
            vip_port: 6379,
        }
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];

    fn info(ack: u32) -> Info {
        Info { ack, mac: MAC }
    }

    fn event(kind: u32, port: u16, ack: u32) -> ConnEvent {
        ConnEvent {
            kind,
            ack: ack.to_be_bytes(),
            key: ConnKey {
                slot: 3,
                client_port: port.to_be_bytes(),
                vip_port: 6379u16.to_be_bytes(),
                client: addr_v4([192, 0, 2, 10]),
            },
            ktime_ns: 5,
            mac: MAC,
            _pad: [0; 2],
        }
    }

    #[test]
    fn datagrams_round_trip_and_fit_a_lan_mtu() {
        let d = Datagram {
            kind: Kind::Snapshot {
                id: 7,
                chunk: 1,
                chunks: 3,
            },
            nonce: NONCE,
            vip: VIP,
            epoch: 42,
            added: (0..ENTRIES_PER_DATAGRAM as u16 - 2)
                .map(|p| (conn(p), info(u32::from(p) * 1000)))
                .collect(),
            removed: vec![conn(60000), conn(60001)],
        };
        let wire = d.encode();
        assert!(wire.len() <= 1400, "{} bytes", wire.len());
        assert_eq!(&wire[0..4], b"VWS1");
        assert_eq!(&wire[8..16], &NONCE.to_be_bytes());
        assert_eq!(Datagram::decode(&wire), Some(d));
        for kind in [Kind::Delta, Kind::Released] {
            let d = Datagram {
                kind,
                nonce: 1,
                vip: VIP,
                epoch: 1,
                added: vec![(conn(1), info(2))],
                removed: vec![],
            };
            assert_eq!(Datagram::decode(&d.encode()), Some(d));
        }
        // IPv6 clients of an IPv6 VIP travel the same way.
        let v6 = Conn {
            client: IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10)),
            ..conn(1)
        };
        let d = Datagram {
            kind: Kind::Delta,
            nonce: 1,
            vip: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x100).octets(),
            epoch: 1,
            added: vec![(v6, info(2))],
            removed: vec![v6],
        };
        assert_eq!(Datagram::decode(&d.encode()), Some(d));
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        let good = Datagram {
            kind: Kind::Delta,
            nonce: 1,
            vip: VIP,
            epoch: 1,
            added: vec![(conn(1), info(2))],
            removed: vec![conn(3)],
        }
        .encode();
        for len in 0..good.len() {
            assert_eq!(Datagram::decode(&good[..len]), None, "truncated to {len}");
        }
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert_eq!(Datagram::decode(&bad_magic), None);
        let mut bad_kind = good.clone();
        bad_kind[4] = 9;
        assert_eq!(Datagram::decode(&bad_kind), None);
        let mut bad_op = good.clone();
        bad_op[HEADER_LEN] = 7;
        assert_eq!(Datagram::decode(&bad_op), None);
        let mut extra = good;
        extra.push(0);
        assert_eq!(Datagram::decode(&extra), None);
    }

    #[test]
    fn the_holder_sends_what_changed_and_only_once() {
        let mut l = Local::new(100);
        l.event(&event(CONN_NEW, 1, 10));
        l.event(&event(CONN_NEW, 2, 20));
        l.event(&event(CONN_NEW, 3, 30));
        l.event(&event(CONN_CLOSED, 3, 0));
        let d = l.delta(NONCE, VIP, 9);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].added, vec![(conn(1), info(10)), (conn(2), info(20))]);
        assert!(d[0].removed.is_empty(), "3 came and went between syncs");
        assert!(l.delta(NONCE, VIP, 9).is_empty(), "nothing changed since");
        l.event(&event(CONN_CLOSED, 1, 0));
        let d = l.delta(NONCE, VIP, 9);
        assert_eq!(d[0].removed, vec![conn(1)]);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn the_holder_s_table_is_bounded_and_reconciled_with_the_kernel() {
        let mut l = Local::new(2);
        for p in 1..=5 {
            l.event(&event(CONN_NEW, p, 0));
        }
        assert_eq!(l.len(), 2, "bounded");
        // The kernel's view: 2 evicted, 9 whose event was lost, 1 idle.
        let now = IDLE_NS + 1000 * MS;
        l.reconcile(
            now,
            [(conn(1), info(111), 1000 * MS), (conn(9), info(99), now)],
        );
        assert_eq!(l.conns(), vec![conn(9)], "idle 1 dropped, 2 evicted");
        let d = l.delta(NONCE, VIP, 1);
        let added: Vec<Conn> = d
            .iter()
            .flat_map(|d| d.added.iter().map(|(c, _)| *c))
            .collect();
        let removed: Vec<Conn> = d.iter().flat_map(|d| d.removed.clone()).collect();
        assert_eq!(added, vec![conn(9)]);
        assert_eq!(removed, vec![conn(1), conn(2)]);
    }

    #[test]
    fn big_deltas_and_snapshots_are_split_into_datagrams() {
        let mut l = Local::new(100_000);
        for p in 0..10_000u16 {
            l.event(&event(CONN_NEW, p, u32::from(p)));
        }
        let d = l.delta(NONCE, VIP, 1);
        assert_eq!(d.len(), 10_000usize.div_ceil(ENTRIES_PER_DATAGRAM));
        assert!(d.iter().all(|d| d.encode().len() <= 1400));
        let s = l.snapshot(NONCE, VIP, 1);
        assert_eq!(s.len(), d.len());
        assert!(
            matches!(s[0].kind, Kind::Snapshot { chunk: 0, chunks, .. } if usize::from(chunks) == s.len())
        );
        let empty = Local::new(10).snapshot(NONCE, VIP, 1);
        assert_eq!(empty.len(), 1, "an empty table is a one-chunk snapshot");
    }

    fn receive(p: &mut Peer, now: u64, d: &Datagram) -> Received {
        p.receive(now, MASTER, Some(MASTER), Some(NONCE), d)
    }

    #[test]
    fn the_peer_accepts_only_its_holder_with_the_right_nonce() {
        let mut l = Local::new(100);
        l.event(&event(CONN_NEW, 1, 10));
        let d = l.delta(NONCE, VIP, 1).remove(0);
        let mut p = Peer::new(100);
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));
        assert_eq!(
            p.receive(MS, other, Some(MASTER), Some(NONCE), &d),
            Received::Forged
        );
        let wrong_nonce = Datagram {
            nonce: 5,
            ..d.clone()
        };
        assert_eq!(receive(&mut p, MS, &wrong_nonce), Received::Forged);
        // A master that has not learned its backup yet accepts nothing.
        assert_eq!(p.receive(MS, MASTER, None, None, &d), Received::Forged);
        assert_eq!((p.forged, p.accepted, p.len()), (3, 0, 0));
        assert_eq!(receive(&mut p, MS, &d), Received::Applied);
        assert_eq!((p.accepted, p.len()), (1, 1));
    }

    #[test]
    fn a_complete_snapshot_replaces_the_table_and_repairs_a_lost_delta() {
        let mut l = Local::new(1000);
        for port in 1..=100 {
            l.event(&event(CONN_NEW, port, 0));
        }
        let mut p = Peer::new(1000);
        for d in l.delta(NONCE, VIP, 1) {
            receive(&mut p, MS, &d);
        }
        assert_eq!(p.len(), 100);
        // A removal whose delta is lost...
        l.event(&event(CONN_CLOSED, 50, 0));
        let _lost = l.delta(NONCE, VIP, 1);
        assert_eq!(p.len(), 100);
        // ...is repaired by the next snapshot, once all its chunks arrived.
        let chunks = l.snapshot(NONCE, VIP, 1);
        assert_eq!(chunks.len(), 3);
        receive(&mut p, 2 * MS, &chunks[2]);
        receive(&mut p, 2 * MS, &chunks[0]);
        assert_eq!(p.len(), 100, "incomplete: still the old table");
        receive(&mut p, 2 * MS, &chunks[1]);
        assert_eq!(p.len(), 99);
    }

    #[test]
    fn a_new_epoch_starts_the_table_over() {
        let mut l = Local::new(10);
        l.event(&event(CONN_NEW, 1, 0));
        let mut p = Peer::new(10);
        receive(&mut p, MS, &l.delta(NONCE, VIP, 1).remove(0));
        let mut l2 = Local::new(10);
        l2.event(&event(CONN_NEW, 2, 0));
        receive(&mut p, MS, &l2.delta(NONCE, VIP, 2).remove(0));
        assert_eq!(p.take_for_kick(2 * MS), vec![(conn(2), info(0))]);
    }

    #[test]
    fn a_kick_takes_the_table_once_and_never_a_stale_one() {
        let mut l = Local::new(10);
        l.event(&event(CONN_NEW, 1, 77));
        let d = l.delta(NONCE, VIP, 1).remove(0);
        let mut p = Peer::new(10);
        assert!(p.take_for_kick(MS).is_empty(), "never synced");
        receive(&mut p, MS, &d);
        assert_eq!(
            p.take_for_kick(MS + PEER_STALE_NS),
            vec![(conn(1), info(77))]
        );
        assert!(p.take_for_kick(2 * MS).is_empty(), "at most once");
        receive(&mut p, MS, &d);
        assert!(p.take_for_kick(MS + PEER_STALE_NS + 1).is_empty(), "stale");
    }

    #[test]
    fn the_peer_table_is_bounded() {
        let mut l = Local::new(1000);
        for port in 0..1000 {
            l.event(&event(CONN_NEW, port, 0));
        }
        let mut p = Peer::new(100);
        for d in l.delta(NONCE, VIP, 1) {
            receive(&mut p, MS, &d);
        }
        assert_eq!(p.len(), 100);
        for d in l.snapshot(NONCE, VIP, 1) {
            receive(&mut p, MS, &d);
        }
        assert_eq!(p.len(), 100);
    }
}
