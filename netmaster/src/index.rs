//! netmaster's in-memory index of the pool: networks, rack bindings, nodes,
//! blocks and one small entry per lease record (its row and state), kept in
//! step with etcd by one snapshot and a watch (re-snapshot on any watch
//! error, like ipamd's cache).
//!
//! It answers two cheap questions: the pool utilisation per network × rack
//! (counts kept up to date per change, so a scrape costs the number of
//! rows, not the number of leases) and "which rack holds this address" for
//! the IP event stream. It decides nothing: every write still goes through
//! an etcd transaction.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rackline_model::{Block, IntervalSet, Lease, LeaseState, NetworkSpec, Pool, RackNet};
use rackline_store::Keys;
use rackline_store::{Change, Snapshot, Store};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// (network, rack): one utilisation row ("" rack: a network without
/// bindings, or an address outside every binding).
pub type Row = (String, String);

/// Lease records of one row by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateCounts {
    pub active: u64,
    pub standby: u64,
    pub reserved: u64,
    pub conflict: u64,
}

impl StateCounts {
    fn slot(&mut self, s: LeaseState) -> &mut u64 {
        match s {
            LeaseState::Active => &mut self.active,
            LeaseState::Standby => &mut self.standby,
            LeaseState::Reserved => &mut self.reserved,
            LeaseState::Conflict => &mut self.conflict,
        }
    }

    pub fn total(&self) -> u64 {
        self.active + self.standby + self.reserved + self.conflict
    }
}

/// One utilisation row as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowUsage {
    pub network: String,
    pub rack: String,
    pub capacity: u64,
    pub leases: StateCounts,
    pub blocks: u64,
    pub block_addresses: u64,
}

impl RowUsage {
    /// Addresses of the row no record holds.
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.leases.total())
    }
}

#[derive(Debug, Clone)]
struct LeaseEntry {
    row: Row,
    state: LeaseState,
}

#[derive(Default)]
struct Inner {
    networks: BTreeMap<String, NetworkSpec>,
    /// By (network, rack).
    bindings: BTreeMap<Row, RackNet>,
    /// Allocatable set of every row (a binding, or a whole flat network).
    sets: BTreeMap<Row, IntervalSet>,
    /// Node -> rack.
    nodes: HashMap<String, String>,
    /// By key.
    blocks: HashMap<String, Block>,
    /// By key.
    leases: HashMap<String, LeaseEntry>,
    counts: HashMap<Row, StateCounts>,
}

impl Inner {
    fn rebuild_sets(&mut self) {
        self.sets.clear();
        for (name, net) in &self.networks {
            let mine: Vec<&RackNet> = self
                .bindings
                .values()
                .filter(|b| &b.network == name)
                .collect();
            if mine.is_empty() {
                let set = Pool::new(net).allocatable().clone();
                self.sets.insert((name.clone(), String::new()), set);
            }
            for b in mine {
                self.sets
                    .insert((name.clone(), b.rack.clone()), b.allocatable(net));
            }
        }
    }

    fn row_of(&self, network: &str, address: Ipv4Addr) -> Row {
        let x = u32::from(address);
        let rack = self
            .sets
            .range((network.to_string(), String::new())..)
            .take_while(|((n, _), _)| n == network)
            .find(|(_, set)| set.contains(x))
            .map(|((_, r), _)| r.clone())
            .unwrap_or_default();
        (network.to_string(), rack)
    }

    /// Re-derives every lease's row (after a topology change: rare).
    fn reassign_rows(&mut self) {
        self.rebuild_sets();
        let mut counts: HashMap<Row, StateCounts> = HashMap::new();
        let keys: Vec<String> = self.leases.keys().cloned().collect();
        for k in keys {
            let Some((net, ip)) = parse_lease_key(&k) else {
                continue;
            };
            let row = self.row_of(&net, ip);
            if let Some(e) = self.leases.get_mut(&k) {
                e.row = row.clone();
                *counts.entry(row).or_default().slot(e.state) += 1;
            }
        }
        self.counts = counts;
    }

    fn put_lease(&mut self, key: String, lease: &Lease) {
        self.remove_lease(&key);
        let row = self.row_of(&lease.network, lease.address);
        *self
            .counts
            .entry(row.clone())
            .or_default()
            .slot(lease.state) += 1;
        self.leases.insert(
            key,
            LeaseEntry {
                row,
                state: lease.state,
            },
        );
    }

    fn remove_lease(&mut self, key: &str) {
        if let Some(old) = self.leases.remove(key) {
            if let Some(c) = self.counts.get_mut(&old.row) {
                let slot = c.slot(old.state);
                *slot = slot.saturating_sub(1);
            }
        }
    }
}

/// The lease key's (network, address), whatever the prefix: the index
/// stores keys as etcd gave them.
fn parse_lease_key(key: &str) -> Option<(String, Ipv4Addr)> {
    let (rest, ip) = key.rsplit_once('/')?;
    let (_, net) = rest.rsplit_once('/')?;
    Some((net.to_string(), rackline_store::keys::parse_padded(ip)?))
}

pub struct PoolIndex {
    keys: Keys,
    inner: RwLock<Inner>,
    synced: AtomicBool,
}

impl PoolIndex {
    pub fn new(keys: Keys) -> Arc<Self> {
        Arc::new(Self {
            keys,
            inner: RwLock::new(Inner::default()),
            synced: AtomicBool::new(false),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the index reflects etcd (a snapshot was loaded and its watch
    /// is running).
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    pub fn apply_snapshot(&self, snap: Snapshot) {
        let mut g = self.write();
        *g = Inner::default();
        for n in snap.networks {
            g.networks.insert(n.spec.name.clone(), n.spec);
        }
        for b in snap.racknets {
            g.bindings.insert((b.network.clone(), b.rack.clone()), b);
        }
        for n in snap.nodes {
            g.nodes.insert(n.name.clone(), n.rack.clone());
        }
        for sb in snap.blocks {
            let key = self.keys.block(&sb.block.network, sb.block.first);
            g.blocks.insert(key, sb.block);
        }
        g.rebuild_sets();
        for sl in snap.leases {
            let key = self.keys.lease(&sl.lease.network, sl.lease.address);
            g.put_lease(key, &sl.lease);
        }
    }

    /// Applies one watched change to the index: a deleted or undecodable
    /// record leaves it.
    pub fn apply_change(&self, change: Change) {
        let (key, value) = match change {
            Change::Put { key, value, .. } => (key, Some(value)),
            Change::Delete { key, .. } => (key, None),
        };
        let mut g = self.write();
        if self.keys.parse_lease(&key).is_some() {
            match value.as_deref().map(serde_json::from_slice::<Lease>) {
                Some(Ok(l)) => g.put_lease(key, &l),
                Some(Err(e)) => {
                    debug!(%key, "undecodable lease ignored by the index: {e}");
                    g.remove_lease(&key);
                }
                None => g.remove_lease(&key),
            }
        } else if let Some(name) = self.keys.network_name_of(&key) {
            let name = name.to_string();
            match decoded::<NetworkSpec>(value.as_deref()) {
                Some(n) => g.networks.insert(name, n),
                None => g.networks.remove(&name),
            };
            g.reassign_rows();
        } else if let Some((net, rack)) = self.keys.parse_racknet(&key) {
            let row = (net.to_string(), rack.to_string());
            match decoded::<RackNet>(value.as_deref()) {
                Some(b) => g.bindings.insert(row, b),
                None => g.bindings.remove(&row),
            };
            g.reassign_rows();
        } else if self.keys.parse_block(&key).is_some() {
            match decoded::<Block>(value.as_deref()) {
                Some(b) => g.blocks.insert(key, b),
                None => g.blocks.remove(&key),
            };
        } else if let Some(node) = self.keys.node_name_of(&key) {
            let node = node.to_string();
            match decoded::<rackline_model::Node>(value.as_deref()) {
                Some(n) => g.nodes.insert(node, n.rack),
                None => g.nodes.remove(&node),
            };
        }
    }

    /// The rack whose range holds `address` on `network`; else the rack
    /// `node` is registered in; else "".
    pub fn rack_of(&self, network: &str, address: Ipv4Addr, node: &str) -> String {
        let g = self.read();
        let (_, rack) = g.row_of(network, address);
        if !rack.is_empty() {
            return rack;
        }
        g.nodes.get(node).cloned().unwrap_or_default()
    }

    /// Every row: capacity, lease records by state, blocks.
    pub fn usage(&self) -> Vec<RowUsage> {
        let g = self.read();
        let mut blocks: HashMap<Row, (u64, u64)> = HashMap::new();
        for b in g.blocks.values() {
            let e = blocks
                .entry((b.network.clone(), b.rack.clone()))
                .or_default();
            e.0 += 1;
            e.1 += u64::from(b.size);
        }
        g.sets
            .iter()
            .map(|(row, set)| {
                let (nb, na) = blocks.get(row).copied().unwrap_or_default();
                RowUsage {
                    network: row.0.clone(),
                    rack: row.1.clone(),
                    capacity: set.len(),
                    leases: g.counts.get(row).copied().unwrap_or_default(),
                    blocks: nb,
                    block_addresses: na,
                }
            })
            .collect()
    }
}

/// Keeps `index` in step with etcd until `shutdown`: snapshot, then a watch
/// from the snapshot's revision; any error goes back to a fresh snapshot
/// (backoff 100 ms doubling to 2 s).
pub async fn run(index: Arc<PoolIndex>, store: Store, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match store.snapshot().await {
            Ok(snap) => {
                let rev = snap.revision;
                index.apply_snapshot(snap);
                index.synced.store(true, Ordering::Relaxed);
                backoff = Duration::from_millis(100);
                let (tx, mut rx) = mpsc::channel::<Change>(4096);
                let watch = store.watch_prefix(store.keys().root_prefix(), rev + 1, tx);
                tokio::pin!(watch);
                let result = loop {
                    tokio::select! {
                        r = &mut watch => break Some(r),
                        Some(change) = rx.recv() => index.apply_change(change),
                        _ = shutdown.changed() => break None,
                    }
                };
                while let Ok(change) = rx.try_recv() {
                    index.apply_change(change);
                }
                index.synced.store(false, Ordering::Relaxed);
                match result {
                    None => return,
                    Some(Ok(())) => continue,
                    Some(Err(e)) => warn!("pool index: etcd watch broke, re-reading: {e}"),
                }
            }
            Err(e) => debug!("pool index: cannot read etcd (retrying in {backoff:?}): {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A record's value decoded; None when deleted or undecodable (the index
/// then forgets the record).
fn decoded<T: serde::de::DeserializeOwned>(value: Option<&[u8]>) -> Option<T> {
    serde_json::from_slice(value?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_model::PodRef;

    fn net() -> NetworkSpec {
        serde_json::from_str(
            r#"{"name":"prod","subnet":"10.10.0.0/16","gateway":"10.10.0.1","master":"uplink0","mtu":0}"#,
        )
        .unwrap()
    }

    fn binding(rack: &str, range: &str) -> RackNet {
        RackNet {
            rack: rack.into(),
            network: "prod".into(),
            subnet: "10.10.0.0/16".parse().unwrap(),
            gateway: "10.10.0.1".parse().unwrap(),
            ranges: vec![range.parse().unwrap()],
            exclude: vec![],
        }
    }

    fn lease(ip: &str, state: LeaseState) -> Lease {
        Lease {
            network: "prod".into(),
            address: ip.parse().unwrap(),
            node: "n1".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod: PodRef::default(),
            created_unix_ms: 0,
            state,
            sticky: false,
            new_identity: false,
            settings: None,
            expires_unix_ms: None,
            conflict: None,
        }
    }

    fn put(idx: &PoolIndex, key: String, v: &impl serde::Serialize) {
        idx.apply_change(Change::Put {
            key,
            value: serde_json::to_vec(v).unwrap(),
            create_revision: 1,
            mod_revision: 1,
        });
    }

    #[test]
    fn counts_follow_every_change_and_topology() {
        let keys = Keys::new("/r");
        let idx = PoolIndex::new(keys.clone());
        put(&idx, keys.network("prod"), &net());
        put(
            &idx,
            keys.racknet("prod", "r1"),
            &binding("r1", "10.10.1.0/24"),
        );
        put(
            &idx,
            keys.racknet("prod", "r2"),
            &binding("r2", "10.10.2.0/25"),
        );
        let a = lease("10.10.1.5", LeaseState::Active);
        put(&idx, keys.lease("prod", a.address), &a);
        let s = lease("10.10.1.6", LeaseState::Standby);
        put(&idx, keys.lease("prod", s.address), &s);
        let r = lease("10.10.2.7", LeaseState::Reserved);
        put(&idx, keys.lease("prod", r.address), &r);
        let usage = idx.usage();
        let row = |rack: &str| usage.iter().find(|u| u.rack == rack).unwrap().clone();
        assert_eq!(row("r1").capacity, 256);
        assert_eq!((row("r1").leases.active, row("r1").leases.standby), (1, 1));
        assert_eq!(row("r1").free(), 254);
        assert_eq!((row("r2").capacity, row("r2").leases.reserved), (128, 1));
        // The active lease is reserved later, then released.
        let mut a2 = a.clone();
        a2.state = LeaseState::Reserved;
        put(&idx, keys.lease("prod", a.address), &a2);
        let u = idx.usage();
        let r1 = u.iter().find(|u| u.rack == "r1").unwrap();
        assert_eq!((r1.leases.active, r1.leases.reserved), (0, 1));
        idx.apply_change(Change::Delete {
            key: keys.lease("prod", a.address),
            mod_revision: 2,
        });
        let u = idx.usage();
        assert_eq!(u.iter().find(|u| u.rack == "r1").unwrap().leases.total(), 1);
        assert_eq!(idx.rack_of("prod", "10.10.2.9".parse().unwrap(), "x"), "r2");
        // Unbinding r2 moves its lease out of every row but keeps counting it.
        idx.apply_change(Change::Delete {
            key: keys.racknet("prod", "r2"),
            mod_revision: 3,
        });
        assert!(idx.usage().iter().all(|u| u.rack != "r2"));
        put(
            &idx,
            keys.node("n1"),
            &rackline_model::Node {
                name: "n1".into(),
                rack: "r9".into(),
                addresses: vec![],
                registered_unix_ms: 0,
            },
        );
        assert_eq!(
            idx.rack_of("prod", "10.10.2.9".parse().unwrap(), "n1"),
            "r9"
        );
    }

    #[test]
    fn a_flat_network_is_one_row() {
        let keys = Keys::new("/r");
        let idx = PoolIndex::new(keys.clone());
        let mut n = net();
        n.subnet = "10.20.0.0/24".parse().unwrap();
        n.gateway = "10.20.0.1".parse().unwrap();
        put(&idx, keys.network("prod"), &n);
        let mut l = lease("10.20.0.9", LeaseState::Active);
        l.address = "10.20.0.9".parse().unwrap();
        put(&idx, keys.lease("prod", l.address), &l);
        let u = idx.usage();
        assert_eq!(u.len(), 1);
        assert_eq!((u[0].rack.as_str(), u[0].capacity), ("", 253));
        assert_eq!(u[0].leases.active, 1);
    }
}
