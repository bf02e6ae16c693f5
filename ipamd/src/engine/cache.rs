//! Keeping the engine's cache in step with etcd: snapshots, watch events,
//! and the journal's offline decisions overlaid on both.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use rackline_model::{Lease, NetworkSpec};
use rackline_store::{Change, Snapshot, StoredLease};
use tracing::{debug, info, warn};

use super::Engine;
use crate::netstate::NetState;
use crate::store::LeaseStore;

impl<S: LeaseStore> Engine<S> {
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

    /// Replaces the cache with a consistent snapshot.
    pub fn apply_snapshot(&self, snap: Snapshot) {
        self.from_persisted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        *self
            .node_addresses
            .write()
            .unwrap_or_else(|p| p.into_inner()) = snap
            .nodes
            .iter()
            .filter(|n| !n.addresses.is_empty())
            .map(|n| (n.name.clone(), n.addresses.clone()))
            .collect();
        let mut fresh: HashMap<String, Arc<NetState>> = HashMap::new();
        let mut unbound = HashMap::new();
        for n in snap.networks {
            let bindings: Vec<&rackline_model::RackNet> = snap
                .racknets
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
        for sb in snap.blocks {
            if let Some(st) = fresh.get(&sb.block.network) {
                let key = self.keys.block(&sb.block.network, sb.block.first);
                st.observe_block(sb, key);
            }
        }
        for sl in snap.leases {
            if let Some(st) = fresh.get(&sl.lease.network) {
                st.observe(sl, &self.node);
            }
        }
        *self.unbound.write().unwrap_or_else(|p| p.into_inner()) = unbound;
        self.set_drains(snap.drains);
        {
            let old = self.nets_read();
            for (name, st) in &fresh {
                if let Some(o) = old.get(name) {
                    st.inherit_uncertain(o);
                    // A lease written after this snapshot was read (an Allocate racing a
                    // re-list) is in the old cache only. The watch from the snapshot's
                    // revision brings it back too, but a Release arriving before that must
                    // find it: answering "nothing held" would leak the lease for good (the
                    // chaos soak caught exactly that during an etcd leader change).
                    for sl in o.leases_snapshot() {
                        if sl.mod_revision > snap.revision {
                            st.observe(sl, &self.node);
                        }
                    }
                }
            }
        }
        // Decisions made offline and not yet replayed stay in force.
        if let Some(j) = &self.journal {
            for e in j.entries() {
                Self::overlay(&fresh, &e);
            }
        }
        let count = fresh.len();
        {
            let mut nets = self.nets_write();
            // Allocations in flight across the snapshot observe into the
            // state they started with: hand it over (under the write lock,
            // so no request picks the old state up meanwhile).
            for (name, st) in &fresh {
                if let Some(o) = nets.get(name) {
                    if snap.revision > 0 {
                        o.hand_over(st, snap.revision, &self.node);
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

    pub(super) fn overlay(nets: &HashMap<String, Arc<NetState>>, e: &crate::journal::Entry) {
        use crate::journal::Entry;
        match e {
            Entry::Activate {
                lease,
                standby_revision,
            } => {
                if let Some(st) = nets.get(&lease.network) {
                    st.activate_offline(lease.clone(), *standby_revision);
                }
            }
            Entry::Release {
                network,
                address,
                container_id,
                ifname,
            } => {
                if let Some(st) = nets.get(network) {
                    st.release_offline(&(container_id.clone(), ifname.clone()), *address);
                }
            }
        }
    }

    pub fn apply_change(&self, change: Change) {
        match change {
            Change::Put {
                key,
                value,
                create_revision,
                mod_revision,
            } => {
                if let Some(name) = self.keys.network_name_of(&key) {
                    let spec: NetworkSpec = match serde_json::from_slice(&value) {
                        Ok(s) => s,
                        Err(e) => {
                            warn!(%key, "ignoring undecodable network record: {e}");
                            return;
                        }
                    };
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
                            for sl in st.leases_snapshot() {
                                fresh.observe(sl, &self.node);
                            }
                            fresh.inherit_uncertain(st);
                            nets.insert(name.to_string(), fresh);
                        }
                        _ => {
                            info!(network = name, "network added");
                            let st = self.tracked(NetState::new(spec, create_revision));
                            nets.insert(name.to_string(), st);
                        }
                    }
                } else if let Some((net, _first)) = self.keys.parse_block(&key) {
                    match serde_json::from_slice::<rackline_model::Block>(&value) {
                        Ok(block) => {
                            if let Some(st) = self.nets_read().get(net) {
                                st.observe_block(
                                    rackline_store::StoredBlock {
                                        block,
                                        mod_revision,
                                    },
                                    key.clone(),
                                );
                            }
                        }
                        Err(e) => warn!(%key, "ignoring undecodable block record: {e}"),
                    }
                } else if let Some(name) = self.keys.node_name_of(&key) {
                    match serde_json::from_slice::<rackline_model::Node>(&value) {
                        Ok(n) => self.learn_node(name, Some(n.addresses)),
                        Err(e) => warn!(%key, "ignoring undecodable node record: {e}"),
                    }
                } else if let Some(target) = self.keys.parse_drain(&key) {
                    self.note_drain(target, true);
                } else if self.keys.parse_racknet(&key).is_some() {
                    // Which ranges this node allocates from changed: rebuild
                    // from a consistent snapshot rather than patch in place.
                    info!(%key, "rack binding changed; reloading");
                    self.resync_tx.send_modify(|n| *n += 1);
                } else if let Some((net, _ip)) = self.keys.parse_lease(&key) {
                    let lease: Lease = match serde_json::from_slice(&value) {
                        Ok(l) => l,
                        Err(e) => {
                            warn!(%key, "ignoring undecodable lease record: {e}");
                            return;
                        }
                    };
                    if let Some(st) = self.nets_read().get(net) {
                        st.observe(
                            StoredLease {
                                lease,
                                mod_revision,
                            },
                            &self.node,
                        );
                    }
                }
            }
            Change::Delete { key, mod_revision } => {
                if let Some(name) = self.keys.network_name_of(&key) {
                    info!(network = name, "network removed");
                    self.nets_write().remove(name);
                } else if let Some((net, first)) = self.keys.parse_block(&key) {
                    if let Some(st) = self.nets_read().get(net) {
                        st.forget_block(first);
                    }
                } else if let Some(name) = self.keys.node_name_of(&key) {
                    self.learn_node(name, None);
                } else if let Some(target) = self.keys.parse_drain(&key) {
                    self.note_drain(target, false);
                } else if self.keys.parse_racknet(&key).is_some() {
                    info!(%key, "rack binding removed; reloading");
                    self.resync_tx.send_modify(|n| *n += 1);
                } else if let Some((net, ip)) = self.keys.parse_lease(&key) {
                    if let Some(st) = self.nets_read().get(net) {
                        st.forget(ip, mod_revision);
                    }
                }
            }
        }
    }
}
