//! The mirror: the engine's read-only view of etcd — networks served here
//! (and those rack-bound without a share for this node), the registered
//! nodes' addresses, drain markers, the node's QoS class — kept in step by
//! the one sync loop from snapshots and watch events, with the journal's
//! offline decisions overlaid on both.
//!
//! Drain markers as this node sees them. A marker on a network (being
//! deleted), on this node's rack binding of a network (being unbound) or on
//! this node (drained) makes the node give back what it holds in reserve
//! there: its standby records (`maintain_standby`, target 0) and its empty
//! blocks (the block manager, at once and without asking for new ones).
//! Pods keep being served: a drain empties reserves, it does not refuse
//! ADDs (the delete or unbind that waits for the drain still refuses while
//! pods hold addresses).
//!
//! Only the owning ipamd deletes its standby records, with revision
//! compares, and only while etcd answers: while etcd is unreachable it may
//! be handing them out from its journal, so nobody else can know they are
//! free.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::store::Keys;
use rackline_model::{DrainTarget, NetworkSpec};
use rackline_store::{Snapshot, StoredNetwork};
use tokio::sync::watch;
use tracing::{debug, info};

use super::IpamError;
use crate::netstate::NetState;
use crate::netstate::NodeGauges;
use crate::store::{Deleted, StoreEvent};

type Nets = HashMap<String, Arc<NetState>>;

pub struct Mirror {
    node: String,
    rack: Option<String>,
    keys: Keys,
    nets: RwLock<Nets>,
    /// Networks that are rack-bound but have no binding for this node's
    /// rack (or this node has no rack): name -> why.
    pub(super) unbound: RwLock<HashMap<String, String>>,
    /// Every registered node's own addresses, by node name (from the
    /// snapshot and the watch of `nodes/`): withheld from every network.
    node_addresses: RwLock<BTreeMap<String, Vec<Ipv4Addr>>>,
    /// Drain markers in force (every node's).
    drains: RwLock<HashSet<DrainTarget>>,
    /// The node's QoS class: which class level of a network applies to its
    /// pods (`rackline_ipamd_pods_out_of_spec`).
    pub(super) node_class: Option<String>,
    synced_tx: watch::Sender<bool>,
    /// Bumped when a change needs a fresh snapshot (rack bindings changed).
    resync_tx: watch::Sender<u64>,
}

impl Mirror {
    pub(super) fn new(node: String, rack: Option<String>, keys: Keys) -> Self {
        Self {
            node,
            rack,
            keys,
            nets: RwLock::new(HashMap::new()),
            unbound: RwLock::new(HashMap::new()),
            node_addresses: RwLock::new(BTreeMap::new()),
            drains: RwLock::new(HashSet::new()),
            node_class: None,
            synced_tx: watch::channel(false).0,
            resync_tx: watch::channel(0u64).0,
        }
    }

    pub(crate) fn node_class(&self) -> rackline_model::applied::NodeClass<'_> {
        match &self.node_class {
            Some(c) => rackline_model::applied::NodeClass::Named(c),
            None => rackline_model::applied::NodeClass::Unclassed,
        }
    }

    /// Changes when the sync loop should take a fresh snapshot.
    pub fn resync_requests(&self) -> watch::Receiver<u64> {
        self.resync_tx.subscribe()
    }

    /// All networks this node serves (for the block manager).
    pub fn networks(&self) -> Vec<Arc<NetState>> {
        self.nets_read().values().cloned().collect()
    }

    pub(super) fn nets_read(&self) -> std::sync::RwLockReadGuard<'_, Nets> {
        self.nets.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn nets_write(&self) -> std::sync::RwLockWriteGuard<'_, Nets> {
        self.nets.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (bounded) for the first snapshot, so requests arriving right
    /// after start-up do not fail needlessly.
    pub(super) async fn wait_synced(&self, limit: Duration) -> Result<(), IpamError> {
        let mut rx = self.synced_tx.subscribe();
        let ready = tokio::time::timeout(limit, async { rx.wait_for(|s| *s).await.is_ok() }).await;
        match ready {
            Ok(true) => Ok(()),
            _ => Err(IpamError::NotReady),
        }
    }

    /// Whether the first etcd snapshot has been loaded.
    pub fn synced(&self) -> bool {
        *self.synced_tx.borrow()
    }

    /// Whether `name` is a network this node knows (served or seen
    /// unbound): only those become metric labels.
    pub fn knows_network(&self, name: &str) -> bool {
        self.nets_read().contains_key(name)
            || self
                .unbound
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(name)
    }

    /// Per-network gauges of this node, sorted by network (metrics).
    pub(super) fn gauges(&self) -> Vec<(String, NodeGauges)> {
        let mut v: Vec<(String, NodeGauges)> = self
            .nets_read()
            .iter()
            .map(|(name, st)| {
                (
                    name.clone(),
                    st.leases().node_gauges(&self.node, self.node_class()),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
    /// A new network state with the current node addresses withheld.
    pub(super) fn tracked(&self, st: NetState) -> Arc<NetState> {
        st.set_node_addresses(
            &self
                .node_addresses
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        );
        Arc::new(st)
    }

    /// Replaces the registered nodes' addresses and withholds them from
    /// every network (a no-op when nothing changed).
    pub(super) fn learn_node_addresses(&self, mut nodes: BTreeMap<String, Vec<Ipv4Addr>>) {
        nodes.retain(|_, a| !a.is_empty());
        {
            let mut cur = self
                .node_addresses
                .write()
                .unwrap_or_else(|p| p.into_inner());
            if *cur == nodes {
                return;
            }
            *cur = nodes;
        }
        let cur = self
            .node_addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for st in self.nets_read().values() {
            st.set_node_addresses(&cur);
        }
    }

    /// One node's record changed (None: deleted).
    fn learn_node(&self, name: &str, addresses: Option<Vec<Ipv4Addr>>) {
        let mut all = self
            .node_addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match addresses {
            Some(a) => all.insert(name.to_string(), a),
            None => all.remove(name),
        };
        self.learn_node_addresses(all);
    }

    /// Replaces the cache with a consistent snapshot. `offline` lays the
    /// decisions made offline and not yet replayed over the fresh state
    /// before it replaces the old one (they stay in force).
    pub(super) fn apply_snapshot(
        &self,
        snap: Snapshot,
        offline: impl FnOnce(&HashMap<String, Arc<NetState>>),
    ) {
        *self
            .node_addresses
            .write()
            .unwrap_or_else(|p| p.into_inner()) = snap
            .nodes
            .iter()
            .filter(|n| !n.addresses.is_empty())
            .map(|n| (n.name.clone(), n.addresses.clone()))
            .collect();
        let (fresh, unbound) = self.networks_of(snap.networks, &snap.racknets);
        for sb in snap.blocks {
            if let Some(st) = fresh.get(&sb.block.network) {
                let key = self.keys.block(&sb.block.network, sb.block.first);
                st.blocks().observe(sb, key);
            }
        }
        for sl in snap.leases {
            if let Some(st) = fresh.get(&sl.lease.network) {
                st.observe(sl, &self.node);
            }
        }
        *self.unbound.write().unwrap_or_else(|p| p.into_inner()) = unbound;
        self.set_drains(snap.drains);
        self.carry_over(&fresh, snap.revision);
        // Decisions made offline and not yet replayed stay in force.
        offline(&fresh);
        let count = fresh.len();
        {
            let mut nets = self.nets_write();
            // Allocations in flight across the snapshot observe into the
            // state they started with: hand it over (under the write lock,
            // so no request picks the old state up meanwhile).
            for (name, st) in &fresh {
                if let Some(o) = nets.get(name) {
                    if snap.revision > 0 {
                        o.leases().hand_over(st, snap.revision, &self.node);
                    }
                }
            }
            *nets = fresh;
        }
        self.synced_tx.send_replace(true);
        debug!(
            networks = count,
            revision = snap.revision,
            "state loaded from etcd"
        );
    }

    /// The networks this node serves, from a snapshot's definitions and
    /// rack bindings, and the rack-bound ones it cannot serve (name -> why).
    fn networks_of(
        &self,
        networks: Vec<StoredNetwork>,
        racknets: &[rackline_model::RackNet],
    ) -> (Nets, HashMap<String, String>) {
        let mut fresh: Nets = HashMap::new();
        let mut unbound = HashMap::new();
        for n in networks {
            let bindings: Vec<&rackline_model::RackNet> = racknets
                .iter()
                .filter(|r| r.network == n.spec.name)
                .collect();
            let name = n.spec.name.clone();
            let st = if bindings.is_empty() {
                NetState::new(n.spec, n.create_revision)
            } else {
                let mine = self
                    .rack
                    .as_deref()
                    .and_then(|rack| bindings.iter().find(|b| b.rack == rack));
                match mine {
                    Some(b) => {
                        NetState::new_racked(n.spec, n.create_revision, b, &bindings, &self.node)
                    }
                    None => {
                        let why = match &self.rack {
                            None => format!(
                                "network {name:?} is rack-bound but node {:?} has no rack (start ipamd with --rack or label the Node)",
                                self.node
                            ),
                            Some(r) => format!(
                                "rack {r:?} of node {:?} has no share of network {name:?} (racklinectl rack bind {r} {name} ...)",
                                self.node
                            ),
                        };
                        unbound.insert(name.clone(), why);
                        continue;
                    }
                }
            };
            fresh.insert(name, self.tracked(st));
        }
        (fresh, unbound)
    }

    /// What the old state knows and the snapshot (read at `revision`)
    /// cannot: uncertain creates, and leases written after it was read.
    fn carry_over(&self, fresh: &Nets, revision: i64) {
        let old = self.nets_read();
        for (name, st) in fresh {
            if let Some(o) = old.get(name) {
                st.uncertain().inherit(o);
                // A lease written after this snapshot was read (an Allocate racing a
                // re-list) is in the old cache only. The watch from the snapshot's
                // revision brings it back too, but a Release arriving before that must
                // find it: answering "nothing held" would leak the lease for good (the
                // chaos soak caught exactly that during an etcd leader change).
                for sl in o.leases().snapshot() {
                    if sl.mod_revision > revision {
                        st.observe(sl, &self.node);
                    }
                }
            }
        }
    }

    pub(super) fn overlay(nets: &HashMap<String, Arc<NetState>>, e: &crate::journal::Entry) {
        use crate::journal::Entry;
        match e {
            Entry::Activate {
                lease,
                standby_revision,
            } => {
                if let Some(st) = nets.get(&lease.network) {
                    st.standby()
                        .activate_offline(lease.clone(), *standby_revision);
                }
            }
            Entry::Release {
                network,
                address,
                container_id,
                ifname,
            } => {
                if let Some(st) = nets.get(network) {
                    st.standby()
                        .release_offline(&(container_id.clone(), ifname.clone()), *address);
                }
            }
        }
    }

    /// Applies one decoded watch event.
    pub(super) fn apply_event(&self, event: StoreEvent) {
        match event {
            StoreEvent::Network {
                name,
                spec,
                create_revision,
            } => self.network_written(&name, spec, create_revision),
            StoreEvent::Block {
                network,
                block,
                key,
            } => {
                if let Some(st) = self.nets_read().get(&network) {
                    st.blocks().observe(block, key);
                }
            }
            StoreEvent::Node { name, addresses } => self.learn_node(&name, addresses),
            StoreEvent::Drain { target, up } => self.note_drain(target, up),
            StoreEvent::RackBinding { key, removed } => {
                // Which ranges this node allocates from changed: rebuild
                // from a consistent snapshot rather than patch in place.
                if removed {
                    info!(%key, "rack binding removed; reloading");
                } else {
                    info!(%key, "rack binding changed; reloading");
                }
                self.resync_tx.send_modify(|n| *n += 1);
            }
            StoreEvent::Lease { network, lease } => {
                if let Some(st) = self.nets_read().get(&network) {
                    st.observe(lease, &self.node);
                }
            }
            StoreEvent::Deleted(Deleted::Network(name)) => {
                info!(network = name, "network removed");
                self.nets_write().remove(&name);
            }
            StoreEvent::Deleted(Deleted::Block { network, first }) => {
                if let Some(st) = self.nets_read().get(&network) {
                    st.blocks().forget(first);
                }
            }
            StoreEvent::Deleted(Deleted::Lease {
                network,
                ip,
                mod_revision,
            }) => {
                if let Some(st) = self.nets_read().get(&network) {
                    st.forget(ip, mod_revision);
                }
            }
        }
    }

    /// A network's definition was written.
    fn network_written(&self, name: &str, spec: NetworkSpec, create_revision: i64) {
        let mut nets = self.nets_write();
        match nets.get(name) {
            Some(st) if st.create_revision == create_revision && st.spec == spec => {}
            Some(st) if st.create_revision == create_revision && st.is_racked() => {
                // Same incarnation, new definition (`network
                // update`) of a rack-bound network: its pool is
                // the rack's ranges and blocks, rebuilt from a
                // consistent snapshot like a binding change.
                info!(network = name, "network definition changed; reloading");
                self.resync_tx.send_modify(|n| *n += 1);
            }
            Some(st) if st.create_revision == create_revision => {
                // Same incarnation, new definition: rebuild the
                // pool around the leases we know.
                info!(network = name, "network definition changed");
                let fresh = self.tracked(NetState::new(spec, create_revision));
                for sl in st.leases().snapshot() {
                    fresh.observe(sl, &self.node);
                }
                fresh.uncertain().inherit(st);
                nets.insert(name.to_string(), fresh);
            }
            _ => {
                info!(network = name, "network added");
                let st = self.tracked(NetState::new(spec, create_revision));
                nets.insert(name.to_string(), st);
            }
        }
    }

    // ---- drain markers ----
    /// Replaces the markers (from a snapshot).
    pub(super) fn set_drains(&self, drains: Vec<DrainTarget>) {
        *self.drains.write().unwrap_or_else(|p| p.into_inner()) = drains.into_iter().collect();
    }

    /// Applies one marker's creation (`up`) or removal.
    pub(super) fn note_drain(&self, target: DrainTarget, up: bool) {
        let mut d = self.drains.write().unwrap_or_else(|p| p.into_inner());
        let changed = if up {
            d.insert(target.clone())
        } else {
            d.remove(&target)
        };
        if changed && self.concerns(&target) {
            if up {
                tracing::info!(
                    "{} is being drained: returning this node's reserve there",
                    target.describe()
                );
            } else {
                tracing::info!("{} is no longer drained", target.describe());
            }
        }
    }

    fn concerns(&self, t: &DrainTarget) -> bool {
        match t {
            DrainTarget::Node(n) => *n == self.node,
            DrainTarget::Network(_) => true,
            DrainTarget::RackNet { rack, .. } => self.rack.as_deref() == Some(rack.as_str()),
        }
    }

    /// The marker that makes this node empty its reserve on `net`, if any.
    pub fn draining(&self, net: &NetState) -> Option<DrainTarget> {
        let d = self.drains.read().unwrap_or_else(|p| p.into_inner());
        if d.is_empty() {
            return None;
        }
        let name = &net.spec.name;
        let mut candidates = vec![
            DrainTarget::Node(self.node.clone()),
            DrainTarget::Network(name.clone()),
        ];
        if let (true, Some(rack)) = (net.is_racked(), self.rack.as_ref()) {
            candidates.push(DrainTarget::RackNet {
                network: name.clone(),
                rack: rack.clone(),
            });
        }
        candidates.into_iter().find(|t| d.contains(t))
    }

    /// This node is drained (`racklinectl node drain`).
    pub fn node_drained(&self) -> bool {
        self.drains
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&DrainTarget::Node(self.node.clone()))
    }
}
