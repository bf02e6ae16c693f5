//! What a lab is made of: racks (a TOR each), their nodes, and pod sandboxes on the nodes.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use crate::cni::Cidr4;
use crate::netns::Netns;

/// A rack: its TOR namespace (bridge `br0` with the rack gateway) and subnet.
#[derive(Clone, Debug)]
pub struct Rack {
    pub(crate) index: usize,
    pub(crate) name: String,
    pub(crate) tor: Netns,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) subnet: Cidr4,
}

impl Rack {
    /// 1-based rack index.
    pub fn index(&self) -> usize {
        self.index
    }
    /// `rack1`, `rack2`, …
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The TOR namespace (`tor` in a one-rack lab, `tor<r>` otherwise).
    pub fn tor(&self) -> &Netns {
        &self.tor
    }
    /// The rack gateway on the TOR's `br0` (10.<9+r>.0.1).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
    /// 10.<9+r>.0.0/24.
    pub fn subnet(&self) -> Cidr4 {
        self.subnet
    }
}

/// A node (`nK` in a one-rack lab, `r<r>n<k>` otherwise): its namespace, rack, uplink address
/// and ipamd socket.
#[derive(Clone, Debug)]
pub struct Node {
    pub(crate) index: usize,
    pub(crate) rack: usize,
    pub(crate) position: usize,
    pub(crate) name: String,
    pub(crate) netns: Netns,
    pub(crate) address: Ipv4Addr,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) ipamd_socket: PathBuf,
}

impl Node {
    /// 1-based index over the whole lab, rack by rack (`n1` is 1; with 2 nodes per rack
    /// `r2n1` is 3): what [`crate::Lab::node`], [`crate::Lab::add_pod`] and [`Pod::node`] use.
    pub fn index(&self) -> usize {
        self.index
    }
    /// 1-based rack index.
    pub fn rack(&self) -> usize {
        self.rack
    }
    /// 1-based position inside its rack (`r2n1` is 1).
    pub fn position(&self) -> usize {
        self.position
    }
    /// `n1`, `r2n1`, …: the `--node-name` given to its ipamd.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// Address on `uplink0` (n1 = 10.10.0.11, r2n1 = 10.11.0.11).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
    /// Its rack gateway (the default route's next hop).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
    pub fn ipamd_socket(&self) -> &Path {
        &self.ipamd_socket
    }
}

impl AsRef<Netns> for Node {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

/// A pod sandbox: an empty network namespace (lo up) plus the identity a runtime passes in
/// `CNI_CONTAINERID` / `CNI_ARGS`. Fields are public so tests can forge variants.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Node index ([`Node::index`]) the pod is scheduled on.
    pub node: usize,
    /// Kubernetes namespace (`default`).
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// 64 hex digits, like containerd's sandbox ids.
    pub container_id: String,
    pub netns: Netns,
}

impl Pod {
    /// `CNI_ARGS` as containerd sends it.
    pub fn cni_args(&self) -> String {
        format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={};K8S_POD_INFRA_CONTAINER_ID={};IgnoreUnknown=1",
            self.namespace, self.name, self.uid, self.container_id
        )
    }

    /// `CNI_NETNS`: `/var/run/netns/<name>`.
    pub fn netns_path(&self) -> String {
        self.netns.path().display().to_string()
    }
}

impl AsRef<Netns> for Pod {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}
