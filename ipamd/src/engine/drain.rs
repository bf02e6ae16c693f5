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

use rackline_model::DrainTarget;

use super::Engine;
use crate::netstate::NetState;
use crate::store::LeaseStore;

impl<S: LeaseStore> Engine<S> {
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
