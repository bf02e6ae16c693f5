//! The IP event stream: what happened to an address, derived from the
//! changes etcd reports for lease and identity records (key, value before,
//! value after, at one revision).
//!
//! Nothing in Rackline "emits" an event: every writer only writes records,
//! and the stream is read off etcd's history by whoever needs it
//! (netmaster's `WatchEvents`, its webhook sink). So no writer can forget an
//! event, a crash between a write and an emit cannot lose one, and the etcd
//! revision of the change is a resumable cursor.
//!
//! Where a record alone cannot say why it changed (a lease deleted by a
//! DEL, by CNI GC or by the leak reconciler looks the same), the writer that
//! reclaims marks the record first: the lease JSON gets `reclaimedBy`
//! (`"gc"`, `"reconcile"`, …) and `reclaimedUnixMs`, then it is deleted
//! (or turned into a reservation) at the marked revision. The marker is an
//! extra JSON field, so readers that do not know it ignore it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::lease::{Lease, LeaseState, PodRef};
use crate::sticky::Identity;

/// The field a reclaiming writer adds to a lease before freeing it.
pub const RECLAIMED_BY: &str = "reclaimedBy";
/// When it decided to (its clock, ms since the epoch).
pub const RECLAIMED_AT: &str = "reclaimedUnixMs";

/// Why a lease was reclaimed (the `reclaimedBy` marker).
pub mod reclaim {
    /// CNI GC: the runtime no longer lists the attachment.
    pub const GC: &str = "gc";
    /// The leak reconciler: the pod or sandbox no longer exists.
    pub const RECONCILE: &str = "reconcile";
    /// `racklinectl node delete` retired the node's leases.
    pub const NODE_DELETE: &str = "node-delete";
    /// netmaster reclaimed the leases of a node dead past its grace.
    pub const DEAD_NODE: &str = "dead-node";
}

/// `lease` as stored JSON with the reclaim marker added.
pub fn marked_lease_json(lease: &Lease, reason: &str, now_ms: i64) -> Vec<u8> {
    let mut v = serde_json::to_value(lease).expect("a lease serialises");
    if let Some(m) = v.as_object_mut() {
        m.insert(RECLAIMED_BY.into(), reason.into());
        m.insert(RECLAIMED_AT.into(), now_ms.into());
    }
    serde_json::to_vec(&v).expect("a JSON value serialises")
}

/// The reclaim marker of a stored lease, if any: (reason, time).
pub fn reclaim_marker(raw: &[u8]) -> Option<(String, i64)> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Marker {
        reclaimed_by: Option<String>,
        #[serde(default)]
        reclaimed_unix_ms: i64,
    }
    let m: Marker = serde_json::from_slice(raw).ok()?;
    Some((m.reclaimed_by?, m.reclaimed_unix_ms))
}

/// What happened to an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// An attachment got the address: a fresh lease, a reservation
    /// re-activated, a standby address given out, or a new incarnation of a
    /// sticky pod taking its lease over.
    Allocated,
    /// The attachment's DEL (or the plugin's rollback of its failed ADD)
    /// freed the address.
    Released,
    /// CNI GC or the leak reconciler freed an address whose pod is gone
    /// (`reason`).
    Reclaimed,
    /// A sticky pod's address is held for it after its pod went away.
    Reserved,
    /// A reservation ended: its hold expired or an operator released it.
    Unreserved,
    /// An operator pinned the address to a pod identity.
    Pinned,
    /// Another host answered for the address (`conflictMac`);
    /// `quarantined` when it was taken out of the pool.
    Conflict,
    /// A quarantine ended: the address is back in the pool.
    Unquarantined,
}

impl EventKind {
    pub const ALL: [EventKind; 8] = [
        EventKind::Allocated,
        EventKind::Released,
        EventKind::Reclaimed,
        EventKind::Reserved,
        EventKind::Unreserved,
        EventKind::Pinned,
        EventKind::Conflict,
        EventKind::Unquarantined,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            EventKind::Allocated => "allocated",
            EventKind::Released => "released",
            EventKind::Reclaimed => "reclaimed",
            EventKind::Reserved => "reserved",
            EventKind::Unreserved => "unreserved",
            EventKind::Pinned => "pinned",
            EventKind::Conflict => "conflict",
            EventKind::Unquarantined => "unquarantined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event. `revision` is the etcd revision of the change (the cursor);
/// `index` orders the events of one revision (a transaction may change
/// several records). `(revision, index)` identifies an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseEvent {
    pub revision: i64,
    pub index: u32,
    pub kind: EventKind,
    /// When it happened, ms since the epoch: the time written in the record
    /// when the record says (allocated, reserved, conflict, reclaimed: the
    /// writer's clock), else when it was read off etcd.
    pub time_unix_ms: i64,
    pub network: String,
    /// The rack whose range holds the address ("" on a network without
    /// rack bindings).
    pub rack: String,
    pub node: String,
    pub address: Ipv4Addr,
    /// The pod's MAC as the plugin derives it from the address
    /// (`0a:58:` + the address bytes).
    pub mac: String,
    pub pod: PodRef,
    pub container_id: String,
    pub ifname: String,
    pub sticky: bool,
    /// Reclaimed (and reserved by a reclaim): `gc`, `reconcile`, ….
    #[serde(default)]
    pub reason: String,
    /// Conflict: the MAC that answered for the address.
    #[serde(default)]
    pub conflict_mac: String,
    /// Conflict: the address was taken out of the pool (false for a sticky
    /// pod, which keeps its address and fails to start instead).
    #[serde(default)]
    pub quarantined: bool,
    /// Reserved/unreserved: when the hold ends (0 = pinned, never).
    #[serde(default)]
    pub expires_unix_ms: i64,
}

/// Which record a change is about (parsed from its key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Lease {
        network: String,
        address: Ipv4Addr,
    },
    Identity {
        network: String,
        namespace: String,
        name: String,
    },
}

/// One key's change at one revision: its value before (None: created) and
/// after (None: deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawChange {
    pub record: Record,
    pub prev: Option<Vec<u8>>,
    pub cur: Option<Vec<u8>>,
}

/// Looks up the rack of an address (network, address, node).
pub type RackOf<'a> = &'a dyn Fn(&str, Ipv4Addr, &str) -> String;

fn decode<T: serde::de::DeserializeOwned>(raw: &Option<Vec<u8>>) -> Option<T> {
    raw.as_ref().and_then(|b| serde_json::from_slice(b).ok())
}

/// What a lease change means, if anything (standby bookkeeping and
/// rewrites that change no owner are not events).
fn lease_kind(
    prev: Option<&Lease>,
    cur: Option<&Lease>,
    marker: Option<&(String, i64)>,
) -> Option<EventKind> {
    use LeaseState::*;
    let freed = || {
        if marker.is_some() {
            EventKind::Reclaimed
        } else {
            EventKind::Released
        }
    };
    Some(match (prev, cur) {
        (_, None) => match prev?.state {
            Active => freed(),
            Standby => return None,
            Reserved => EventKind::Unreserved,
            Conflict => EventKind::Unquarantined,
        },
        (p, Some(c)) => match (p.map(|p| p.state), c.state) {
            (None, Active) => EventKind::Allocated,
            (None, Reserved) => EventKind::Reserved,
            (None | Some(Active | Standby | Reserved), Conflict) => EventKind::Conflict,
            (_, Standby) if p.is_some_and(|p| p.state == Active) => freed(),
            (_, Standby) => return None,
            (Some(Active), Reserved) => EventKind::Reserved,
            (Some(Standby | Conflict), Reserved) => EventKind::Reserved,
            (Some(Reserved), Reserved) => return None,
            (Some(Conflict), Conflict) => return None,
            (Some(Standby | Reserved | Conflict), Active) => EventKind::Allocated,
            (Some(Active), Active) => {
                let p = p?;
                if p.attachment() != c.attachment() || p.node != c.node {
                    // A new incarnation took the (sticky) lease over.
                    EventKind::Allocated
                } else if c.conflict.is_some() && c.conflict != p.conflict {
                    // A sticky pod's probe found its address in use.
                    EventKind::Conflict
                } else {
                    return None;
                }
            }
        },
    })
}

fn event_from_lease(
    l: &Lease,
    kind: EventKind,
    revision: i64,
    now_ms: i64,
    rack_of: RackOf<'_>,
) -> LeaseEvent {
    let (mut container_id, mut ifname) = (l.container_id.clone(), l.ifname.clone());
    let (mut conflict_mac, mut quarantined) = (String::new(), false);
    let mut time = now_ms;
    match kind {
        EventKind::Allocated | EventKind::Reserved if l.created_unix_ms > 0 => {
            time = l.created_unix_ms
        }
        EventKind::Conflict | EventKind::Unquarantined => {
            if let Some(c) = &l.conflict {
                if container_id.is_empty() {
                    container_id = c.container_id.clone();
                    ifname = c.ifname.clone();
                }
                conflict_mac = c.mac.clone();
                quarantined = l.state == LeaseState::Conflict;
                if kind == EventKind::Conflict && c.detected_unix_ms > 0 {
                    time = c.detected_unix_ms;
                }
            }
        }
        _ => {}
    }
    LeaseEvent {
        revision,
        index: 0,
        kind,
        time_unix_ms: time,
        rack: rack_of(&l.network, l.address, &l.node),
        network: l.network.clone(),
        node: l.node.clone(),
        address: l.address,
        mac: crate::mac::format(crate::mac::for_address(l.address)),
        pod: l.pod.clone(),
        container_id,
        ifname,
        sticky: l.sticky,
        reason: String::new(),
        conflict_mac,
        quarantined,
        expires_unix_ms: l.expires_unix_ms.unwrap_or(0),
    }
}

/// The identity changes of one revision that pin an address: (network,
/// address) -> the identity.
fn pins(changes: &[RawChange]) -> Vec<(String, Ipv4Addr, Identity)> {
    changes
        .iter()
        .filter(|c| matches!(c.record, Record::Identity { .. }))
        .filter_map(|c| {
            let cur: Identity = decode(&c.cur)?;
            let was_pinned = decode::<Identity>(&c.prev).is_some_and(|p| p.pinned);
            (cur.pinned && !was_pinned).then(|| (cur.network.clone(), cur.address, cur))
        })
        .collect()
}

/// The events of one etcd revision, in the order etcd reported the
/// changes. `now_ms` stamps events whose record carries no time.
pub fn derive(
    revision: i64,
    changes: &[RawChange],
    now_ms: i64,
    rack_of: RackOf<'_>,
) -> Vec<LeaseEvent> {
    let pins = pins(changes);
    let mut out = Vec::new();
    for ch in changes {
        let e = match &ch.record {
            Record::Lease { network, address } => {
                // A pin writes the reservation with the identity: one
                // event, `pinned`, stands for both.
                if pins.iter().any(|(n, a, _)| n == network && a == address) {
                    continue;
                }
                lease_event(ch, revision, now_ms, rack_of)
            }
            Record::Identity { network, .. } => {
                pin_event(ch, network, &pins, changes, revision, now_ms, rack_of)
            }
        };
        out.extend(e);
    }
    for (i, e) in out.iter_mut().enumerate() {
        e.index = u32::try_from(i).unwrap_or(u32::MAX);
    }
    out
}

/// The event of one lease record's change, if it is one worth telling.
fn lease_event(
    ch: &RawChange,
    revision: i64,
    now_ms: i64,
    rack_of: RackOf<'_>,
) -> Option<LeaseEvent> {
    let prev: Option<Lease> = decode(&ch.prev);
    let cur: Option<Lease> = decode(&ch.cur);
    let marker = ch.prev.as_deref().and_then(reclaim_marker);
    let kind = lease_kind(prev.as_ref(), cur.as_ref(), marker.as_ref())?;
    // A freeing event describes the record that went away; everything else
    // the record as it is now.
    let l = match kind {
        EventKind::Released
        | EventKind::Reclaimed
        | EventKind::Unreserved
        | EventKind::Unquarantined => prev.as_ref(),
        _ => cur.as_ref(),
    }?;
    let mut e = event_from_lease(l, kind, revision, now_ms, rack_of);
    // A reservation names no container: say which one left.
    if let Some(p) = prev.as_ref().filter(|p| p.state.is_active()) {
        if kind == EventKind::Reserved {
            e.container_id = p.container_id.clone();
            e.ifname = p.ifname.clone();
        }
    }
    if let Some((reason, at)) = &marker {
        if matches!(kind, EventKind::Reclaimed | EventKind::Reserved) {
            e.reason = reason.clone();
            if kind == EventKind::Reclaimed && *at > 0 {
                e.time_unix_ms = *at;
            }
        }
    }
    Some(e)
}

/// The `pinned` event of an identity change that pins an address, described
/// by the lease at that address as this revision left it.
fn pin_event(
    ch: &RawChange,
    network: &str,
    pins: &[(String, Ipv4Addr, Identity)],
    changes: &[RawChange],
    revision: i64,
    now_ms: i64,
    rack_of: RackOf<'_>,
) -> Option<LeaseEvent> {
    let (_, address, ident) = pins.iter().find(|(n, _, i)| {
        n == network
            && decode::<Identity>(&ch.cur)
                .is_some_and(|c| c.name == i.name && c.namespace == i.namespace)
    })?;
    let lease: Option<Lease> = changes.iter().find_map(|c| match &c.record {
        Record::Lease {
            network: n,
            address: a,
        } if n == network && a == address => decode(&c.cur),
        _ => None,
    });
    let mut e = match &lease {
        Some(l) => event_from_lease(l, EventKind::Pinned, revision, now_ms, rack_of),
        None => bare_pin_event(network, *address, revision, now_ms, rack_of),
    };
    e.time_unix_ms = now_ms;
    e.pod.namespace = ident.namespace.clone();
    e.pod.name = ident.name.clone();
    e.expires_unix_ms = 0;
    e.sticky = true;
    Some(e)
}

/// A pin of an address that has no lease record in the revision.
fn bare_pin_event(
    network: &str,
    address: Ipv4Addr,
    revision: i64,
    now_ms: i64,
    rack_of: RackOf<'_>,
) -> LeaseEvent {
    LeaseEvent {
        revision,
        index: 0,
        kind: EventKind::Pinned,
        time_unix_ms: now_ms,
        network: network.to_string(),
        rack: rack_of(network, address, ""),
        node: String::new(),
        address,
        mac: crate::mac::format(crate::mac::for_address(address)),
        pod: PodRef::default(),
        container_id: String::new(),
        ifname: String::new(),
        sticky: true,
        reason: String::new(),
        conflict_mac: String::new(),
        quarantined: false,
        expires_unix_ms: 0,
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
