//! Records of the node and network lifecycle: drain markers and the
//! liveness (lock) record each ipamd holds.
//!
//! A drain marker asks the ipamds concerned to give back what they hold in
//! reserve — standby records and empty blocks — because netmaster may not
//! delete those itself: only the ipamd that owns a standby record knows
//! whether it is handing it out right now (while etcd is unreachable it
//! does so from its journal, with no etcd write). So netmaster writes the
//! marker, every ipamd that sees it returns its reserve with its own
//! revision-compared deletes, and the delete or unbind that waited for
//! that then runs its own guarded transaction.

use serde::{Deserialize, Serialize};

/// What a drain marker applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DrainTarget {
    /// A network being deleted: every node returns its reserve on it.
    Network(String),
    /// A rack's binding being removed: the rack's nodes return their
    /// reserve and blocks on that network.
    RackNet { network: String, rack: String },
    /// A node being drained: it gets no new block and returns its reserve
    /// and empty blocks on every network.
    Node(String),
}

impl DrainTarget {
    /// For messages: `network "prod"`, `node "n1"`, …
    pub fn describe(&self) -> String {
        match self {
            DrainTarget::Network(n) => format!("network {n:?}"),
            DrainTarget::RackNet { network, rack } => {
                format!("rack {rack:?} on network {network:?}")
            }
            DrainTarget::Node(n) => format!("node {n:?}"),
        }
    }
}

/// A drain marker's value (informative: the key alone is the marker).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Drain {
    /// Why: `delete`, `unbind` or `drain`.
    pub reason: String,
    #[serde(default)]
    pub since_unix_ms: i64,
}

/// The liveness record of a node: written by the node's ipamd on an etcd
/// lease it keeps alive, created only if absent, so it is both "this node's
/// ipamd is running and reaches etcd" and the per-node lock that keeps a
/// second ipamd with the same node name from starting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    /// A token of the holder's installation (its state directory): an
    /// ipamd restarted on the same state directory recognises its own
    /// record, left by a predecessor that died without revoking it.
    pub instance: String,
    /// Where the holder runs (hostname), for the refusal message.
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub since_unix_ms: i64,
    /// The etcd lease TTL the holder keeps alive.
    #[serde(default)]
    pub ttl_secs: u64,
}
