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
}

impl Lease {
    /// The attachment this lease belongs to, as CNI names it.
    pub fn attachment(&self) -> (&str, &str) {
        (&self.container_id, &self.ifname)
    }
}
