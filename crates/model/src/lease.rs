//! Lease records: one etcd key per address, the single source of truth for
//! who owns it.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
}

impl PodRef {
    /// "namespace/name", or "" when the runtime sent no pod identity.
    pub fn display(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        }
    }
}

/// A lease either belongs to a pod (`active`), is held in reserve by its
/// node (`standby`: the key exists, so no other node can borrow the
/// address, and the node may hand it out while etcd is unreachable), or is
/// reserved for a sticky pod identity that is not running (`reserved`:
/// nobody else may take it until the reservation expires or is released).
/// `conflict` is a quarantine record: a pod's ARP probe found another host
/// answering for the address; the record is attached to an etcd
/// lease with a TTL, so etcd itself frees the address later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    #[default]
    Active,
    Standby,
    Reserved,
    Conflict,
}

/// Who found an address in use, when, and which MAC answered for it: the
/// "event" an operator reads in `racklinectl lease list`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflictInfo {
    /// The MAC that answered for the address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// The attachment whose probe found it (it no longer holds the address).
    #[serde(default)]
    pub container_id: String,
    #[serde(default)]
    pub ifname: String,
    #[serde(default)]
    pub detected_unix_ms: i64,
    /// How long the record lives (its etcd lease TTL).
    #[serde(default)]
    pub quarantine_secs: u64,
}

impl LeaseState {
    pub fn is_active(&self) -> bool {
        *self == LeaseState::Active
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            LeaseState::Active => "active",
            LeaseState::Standby => "standby",
            LeaseState::Reserved => "reserved",
            LeaseState::Conflict => "conflict",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub network: String,
    pub address: Ipv4Addr,
    pub node: String,
    pub container_id: String,
    pub ifname: String,
    #[serde(default)]
    pub pod: PodRef,
    #[serde(default)]
    pub created_unix_ms: i64,
    #[serde(default, skip_serializing_if = "LeaseState::is_active")]
    pub state: LeaseState,
    /// The lease belongs to the sticky identity `pod` on this network: its
    /// identity record (`identities/<network>/<ns>/<pod>`) names this
    /// address, and both records change together in one transaction.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sticky: bool,
    /// This lease's ADD created its sticky identity (the pod never had the
    /// address before): rolling that ADD back deletes the identity too
    /// instead of reserving the address for a pod that never ran.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub new_identity: bool,
    /// When a `reserved` lease expires (etcd deletes it then; informative).
    /// None on a pinned reservation, which never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<i64>,
    /// Set on `conflict` records only. Boxed: every other record would
    /// otherwise carry its size (and `CreateLease::Taken` holds a Lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conflict: Option<Box<ConflictInfo>>,
    /// The network settings the pod's ADD applied (active leases written
    /// by an ipamd that records them): what `racklinectl network update`,
    /// CHECK and `rackline_ipamd_pods_out_of_spec` compare with the
    /// network's current definition. Boxed like `conflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<Box<crate::applied::PodSettings>>,
}

impl Lease {
    /// A node's reserve record for `address`.
    pub fn standby(network: &str, address: Ipv4Addr, node: &str, now_ms: i64) -> Self {
        Lease {
            network: network.to_string(),
            address,
            node: node.to_string(),
            container_id: String::new(),
            ifname: String::new(),
            pod: PodRef::default(),
            created_unix_ms: now_ms,
            state: LeaseState::Standby,
            sticky: false,
            expires_unix_ms: None,
            conflict: None,
            new_identity: false,
            settings: None,
        }
    }

    pub fn is_reserved(&self) -> bool {
        self.state == LeaseState::Reserved
    }

    pub fn is_standby(&self) -> bool {
        self.state == LeaseState::Standby
    }

    pub fn is_conflict(&self) -> bool {
        self.state == LeaseState::Conflict
    }

    /// The quarantine record that replaces this pod lease after its probe
    /// found `mac` answering for the address: same address, node and pod,
    /// but no attachment, so the attachment's next allocation gets another
    /// address while the record keeps this one out of the pool.
    pub fn into_conflict(self, mac: &str, now_ms: i64, quarantine_secs: u64) -> Self {
        Lease {
            conflict: Some(Box::new(ConflictInfo {
                mac: mac.to_string(),
                container_id: self.container_id,
                ifname: self.ifname,
                detected_unix_ms: now_ms,
                quarantine_secs,
            })),
            container_id: String::new(),
            ifname: String::new(),
            created_unix_ms: now_ms,
            state: LeaseState::Conflict,
            settings: None,
            ..self
        }
    }

    /// The attachment this lease belongs to, as CNI names it.
    pub fn attachment(&self) -> (&str, &str) {
        (&self.container_id, &self.ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_defaults_to_active_and_is_omitted_then() {
        let j =
            r#"{"network":"n","address":"10.0.0.2","node":"a","containerId":"c","ifname":"eth0"}"#;
        let l: Lease = serde_json::from_str(j).unwrap();
        assert!(l.state.is_active());
        assert!(!serde_json::to_string(&l).unwrap().contains("state"));
        let s = Lease::standby("n", "10.0.0.3".parse().unwrap(), "a", 1);
        let j = serde_json::to_string(&s).unwrap();
        assert!(j.contains(r#""state":"standby""#), "{j}");
        assert!(serde_json::from_str::<Lease>(&j).unwrap().is_standby());
        assert!(!j.contains("conflict"));
    }

    #[test]
    fn conflict_record_keeps_the_pod_but_drops_the_attachment() {
        let j = r#"{"network":"n","address":"10.0.0.2","node":"a","containerId":"c","ifname":"eth0","pod":{"namespace":"d","name":"p"}}"#;
        let l: Lease = serde_json::from_str(j).unwrap();
        let q = l.into_conflict("02:00:00:00:00:09", 7, 60);
        assert!(q.is_conflict() && !q.is_standby());
        assert_eq!(q.attachment(), ("", ""));
        assert_eq!((q.node.as_str(), q.pod.name.as_str()), ("a", "p"));
        let info = q.conflict.clone().unwrap();
        assert_eq!(
            (
                info.container_id.as_str(),
                info.ifname.as_str(),
                info.mac.as_str()
            ),
            ("c", "eth0", "02:00:00:00:00:09")
        );
        let j = serde_json::to_string(&q).unwrap();
        assert!(j.contains(r#""state":"conflict""#), "{j}");
        assert!(j.contains(r#""detectedUnixMs":7"#), "{j}");
        assert_eq!(serde_json::from_str::<Lease>(&j).unwrap(), q);
    }
}
