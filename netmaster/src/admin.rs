//! The admin domain service: networks and leases as the operator sees them.
//!
//! Transport-free: it speaks model types and knows nothing of gRPC (see
//! `server` for that adapter). Every decision that needs atomicity (name
//! clash, subnet overlap, "no leases left") is taken by the store inside an
//! etcd transaction; this layer adds the read-side views (capacity,
//! allocation counts, lease filters).
//!
//! Writes go through [`AdminService::writer`] first: it yields the
//! [`LeaderStore`] handle the write methods live on, which carries the
//! leadership fence into every transaction (a deposed leader cannot write,
//! and no write can leave the fence out). A lone netmaster runs
//! [`Unfenced`], whose handle is explicitly a single writer; replicas plug
//! in leader election (`crate::leader`).
//!
//! The operations are grouped by the resource they act on, each group a
//! borrowing view of the service: [`AdminService::networks`] (and leases),
//! [`racks`](AdminService::racks), [`nodes`](AdminService::nodes),
//! [`blocks`](AdminService::blocks),
//! [`reservations`](AdminService::reservations) and
//! [`policies`](AdminService::policies) (QoS and ACLs).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::{Lease, NetworkSpec, Pool, ValidationError};
use rackline_store::{Fence, LeaderStore, Object, Store, StoreError};
use tracing::info;

mod acl;
mod drain;
mod network_update;
mod qos;
mod racks;
mod reservations;
pub use drain::{drain_wait, DEFAULT_DRAIN_WAIT, MAX_DRAIN_WAIT};
pub use network_update::{NetworkUpdate, UpdateReport};
pub use reservations::ReservationView;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// A `network update` that cannot apply (immutable setting, entry to
    /// remove not listed, contradictory settings).
    #[error(transparent)]
    Patch(#[from] rackline_model::PatchError),
    #[error("network {0:?} already exists")]
    AlreadyExists(String),
    #[error("network {0:?} not found")]
    NotFound(String),
    /// `detail` says what is left and what to do about it.
    #[error("network {name:?} still has {detail}")]
    InUse { name: String, detail: String },
    /// This instance may not write (not the leader, or its leadership
    /// lapsed).
    #[error("this netmaster may not write: {0}")]
    NotPermitted(String),
    /// A follower: the write goes to the leader, at `leader` (host:port).
    #[error("this netmaster may not write: {}", rackline_admin_client::redirect::not_leader_message(.leader))]
    NotLeader { leader: String },
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("gave up after {0} conflicting concurrent updates; try again")]
    Contended(u32),
    /// The network changed between the read an update was decided on and
    /// its write: nothing was written; run the update again.
    #[error("network {name:?} was changed by someone else (revision {seen} -> {now}) while this update was being applied; nothing was written: check `racklinectl network show {name}` and run the update again")]
    Changed { name: String, seen: i64, now: i64 },
    /// A rack, node, rack binding or block that does not exist.
    #[error("{}", .0.not_found())]
    Missing(Object),
    #[error("{0} already exists")]
    Exists(Object),
    /// Conflicts with what is stored (in use, owned by another node).
    #[error("{0}")]
    Refused(String),
    #[error("rack {rack:?} has no free block left on network {network:?}")]
    Exhausted { network: String, rack: String },
    /// etcd answered something unexpected, or a record does not decode.
    #[error("store failure: {0}")]
    Store(#[source] StoreError),
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid(v) => AdminError::Invalid(v),
            StoreError::AlreadyExists(n) => AdminError::AlreadyExists(n),
            StoreError::NotFound(n) => AdminError::NotFound(n),
            StoreError::InUse { name, detail } => AdminError::InUse { name, detail },
            StoreError::Unavailable(m) => AdminError::Unavailable(m),
            StoreError::Contended(n) => AdminError::Contended(n),
            // Deposed while writing: the fence failed in etcd, nothing was
            // written.
            e @ StoreError::Fenced { .. } => AdminError::NotPermitted(e.to_string()),
            StoreError::Missing(o) => AdminError::Missing(o),
            StoreError::Exists(o) => AdminError::Exists(o),
            StoreError::Refused(m) => AdminError::Refused(m),
            StoreError::Exhausted { network, rack } => AdminError::Exhausted { network, rack },
            e @ (StoreError::Etcd(_) | StoreError::Corrupt { .. } | StoreError::Config(_)) => {
                AdminError::Store(e)
            }
        }
    }
}

pub type Result<T, E = AdminError> = std::result::Result<T, E>;

/// Proof that this instance may write now; turned into the write handle by
/// [`WriteFence::writer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePermit {
    /// None: a single writer (no election).
    fence: Option<Fence>,
}

impl WritePermit {
    /// A lone netmaster without election: nobody else can write.
    pub fn single_writer() -> Self {
        Self { fence: None }
    }

    /// The leader that won at `fence`.
    pub fn leader(fence: Fence) -> Self {
        Self { fence: Some(fence) }
    }

    /// The leadership term this permit belongs to (None for a single
    /// writer).
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The write handle of this permit on `store`.
    pub fn writer(self, store: &Store) -> LeaderStore {
        match self.fence {
            Some(f) => LeaderStore::fenced(store.clone(), f),
            None => LeaderStore::single_writer(store.clone()),
        }
    }
}

/// Which replica leads, as this one knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderView {
    pub id: String,
    /// host:port where the leader serves gRPC.
    pub advertise: String,
    /// This replica leads (and may write) now.
    pub is_self: bool,
}

/// Decides whether this instance may write.
pub trait WriteFence: Send + Sync + 'static {
    fn permit(&self) -> Result<WritePermit>;

    /// The write handle on `store`, if this instance may write now.
    fn writer(&self, store: &Store) -> Result<LeaderStore> {
        Ok(self.permit()?.writer(store))
    }

    /// The leader as this instance knows it. A fence without election (a
    /// lone, unfenced netmaster) always writes, so it is its own leader.
    fn leader(&self) -> Result<LeaderView> {
        Ok(LeaderView {
            id: String::new(),
            advertise: String::new(),
            is_self: true,
        })
    }
}

/// The single-netmaster fence: always permits.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unfenced;

impl WriteFence for Unfenced {
    fn permit(&self) -> Result<WritePermit> {
        Ok(WritePermit::single_writer())
    }
}

/// A network with its read-only accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkView {
    pub spec: NetworkSpec,
    /// Addresses that can ever be handed out.
    pub capacity: u64,
    /// Leases currently recorded.
    pub allocated: u64,
    /// The etcd revision of the record's last write.
    pub revision: i64,
}

impl NetworkView {
    fn new(spec: NetworkSpec, allocated: u64, revision: i64) -> Self {
        let capacity = Pool::new(&spec).capacity();
        Self {
            spec,
            capacity,
            allocated,
            revision,
        }
    }
}

/// Lease filters, combined with AND; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseFilter {
    pub network: Option<String>,
    pub node: Option<String>,
    /// Leases of the nodes registered in this rack (resolved by
    /// `Networks::list_leases`, not by `matches`).
    pub rack: Option<String>,
    pub pod: Option<PodFilter>,
    pub address: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFilter {
    /// `None`: the name in any namespace.
    pub namespace: Option<String>,
    pub name: String,
}

impl LeaseFilter {
    pub fn matches(&self, l: &Lease) -> bool {
        self.network.as_ref().is_none_or(|n| *n == l.network)
            && self.node.as_ref().is_none_or(|n| *n == l.node)
            && self.address.is_none_or(|a| a == l.address)
            && self.pod.as_ref().is_none_or(|p| {
                p.name == l.pod.name && p.namespace.as_ref().is_none_or(|ns| *ns == l.pod.namespace)
            })
    }
}

#[derive(Clone)]
pub struct AdminService {
    store: Store,
    fence: Arc<dyn WriteFence>,
}

// The service's operations, grouped by the resource they act on (one RPC
// each): borrowing views of the service, so a group is one small type and
// the service itself keeps only construction, the write permit and the
// leader. Every write still starts at `AdminService::writer`.

/// `AdminService::networks`.
#[derive(Clone, Copy)]
pub struct Networks<'a> {
    svc: &'a AdminService,
}

/// `AdminService::racks`.
#[derive(Clone, Copy)]
pub struct Racks<'a> {
    svc: &'a AdminService,
}

/// `AdminService::nodes`.
#[derive(Clone, Copy)]
pub struct Nodes<'a> {
    svc: &'a AdminService,
}

/// `AdminService::blocks`.
#[derive(Clone, Copy)]
pub struct Blocks<'a> {
    svc: &'a AdminService,
}

/// `AdminService::reservations`.
#[derive(Clone, Copy)]
pub struct Reservations<'a> {
    svc: &'a AdminService,
}

/// `AdminService::policies`.
#[derive(Clone, Copy)]
pub struct Policies<'a> {
    svc: &'a AdminService,
}

impl AdminService {
    /// Connects lazily: this succeeds while etcd is down, and calls fail
    /// with `Unavailable` until it is back.
    pub async fn connect(endpoints: &[String], prefix: &str, timeout: Duration) -> Result<Self> {
        let store = Store::connect(endpoints, prefix, timeout).await?;
        Ok(Self::with_fence(store, Arc::new(Unfenced)))
    }

    pub fn with_fence(store: Store, fence: Arc<dyn WriteFence>) -> Self {
        Self { store, fence }
    }

    /// Every write starts here: the handle the write methods live on.
    fn writer(&self) -> Result<LeaderStore> {
        self.fence.writer(&self.store)
    }

    /// Which replica leads (answered from memory; any replica answers).
    pub fn leader(&self) -> Result<LeaderView> {
        self.fence.leader()
    }

    /// Networks and their leases: create, read, update, delete.
    pub fn networks(&self) -> Networks<'_> {
        Networks { svc: self }
    }

    /// Racks and their bindings to networks.
    pub fn racks(&self) -> Racks<'_> {
        Racks { svc: self }
    }

    /// Node registrations and drains.
    pub fn nodes(&self) -> Nodes<'_> {
        Nodes { svc: self }
    }

    /// Address blocks handed to nodes, and their utilisation.
    pub fn blocks(&self) -> Blocks<'_> {
        Blocks { svc: self }
    }

    /// Sticky reservations: list, pin, release.
    pub fn reservations(&self) -> Reservations<'_> {
        Reservations { svc: self }
    }

    /// Per-pod policies: QoS policies and ACLs with their network defaults.
    pub fn policies(&self) -> Policies<'_> {
        Policies { svc: self }
    }
}

impl Networks<'_> {
    /// Creates `spec` (already validated by the caller's conversion; it is
    /// validated again and checked for overlap inside the transaction).
    pub async fn create_network(&self, spec: NetworkSpec) -> Result<NetworkView> {
        let stored = self.svc.writer()?.create_network(&spec).await?;
        info!(
            network = %stored.spec.name,
            subnet = %stored.spec.subnet,
            revision = stored.create_revision,
            "network created"
        );
        Ok(NetworkView::new(stored.spec, 0, stored.mod_revision))
    }

    pub async fn get_network(&self, name: &str) -> Result<NetworkView> {
        let Some(net) = self.svc.store.get_network(name).await? else {
            return Err(AdminError::NotFound(name.to_string()));
        };
        let allocated = self.svc.store.admin_reads().count_leases(name).await?;
        Ok(NetworkView::new(net.spec, allocated, net.mod_revision))
    }

    /// Networks by name, with lease counts from one read of all leases.
    pub async fn list_networks(&self) -> Result<Vec<NetworkView>> {
        let (nets, _) = self.svc.store.list_networks().await?;
        let (leases, _) = self.svc.store.list_leases(None).await?;
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for l in &leases {
            *counts.entry(l.lease.network.as_str()).or_default() += 1;
        }
        let mut views: Vec<NetworkView> = nets
            .into_iter()
            .map(|n| {
                let c = counts.get(n.spec.name.as_str()).copied().unwrap_or(0);
                NetworkView::new(n.spec, c, n.mod_revision)
            })
            .collect();
        views.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(views)
    }

    /// Leases matching `filter`, by network then numeric address (etcd's key
    /// order would put 10.0.0.10 before 10.0.0.2).
    pub async fn list_leases(&self, filter: &LeaseFilter) -> Result<Vec<Lease>> {
        let members: Option<std::collections::BTreeSet<String>> = match &filter.rack {
            Some(r) => Some(
                self.svc
                    .store
                    .admin_reads()
                    .get_rack(r)
                    .await?
                    .map(|info| info.nodes.into_iter().collect())
                    .unwrap_or_default(),
            ),
            None => None,
        };
        let (leases, _) = self
            .svc
            .store
            .list_leases(filter.network.as_deref())
            .await?;
        let mut out: Vec<Lease> = leases
            .into_iter()
            .map(|s| s.lease)
            .filter(|l| filter.matches(l))
            .filter(|l| members.as_ref().is_none_or(|m| m.contains(&l.node)))
            .collect();
        out.sort_by(|a, b| {
            (a.network.as_str(), u32::from(a.address))
                .cmp(&(b.network.as_str(), u32::from(b.address)))
        });
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_model::PodRef;

    fn lease(net: &str, ip: [u8; 4], node: &str, ns: &str, pod: &str) -> Lease {
        Lease {
            network: net.into(),
            address: Ipv4Addr::from(ip),
            node: node.into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: ns.into(),
                name: pod.into(),
                uid: String::new(),
            },
            created_unix_ms: 0,
            state: Default::default(),
            sticky: false,
            expires_unix_ms: None,
            conflict: None,
            new_identity: false,
            settings: None,
        }
    }

    #[test]
    fn filters_combine_with_and() {
        let l = lease("prod", [10, 0, 0, 5], "n1", "default", "web-0");
        assert!(LeaseFilter::default().matches(&l));
        let by_name = LeaseFilter {
            pod: Some(PodFilter {
                namespace: None,
                name: "web-0".into(),
            }),
            ..Default::default()
        };
        assert!(by_name.matches(&l));
        let mut f = by_name.clone();
        f.pod = Some(PodFilter {
            namespace: Some("kube-system".into()),
            name: "web-0".into(),
        });
        assert!(!f.matches(&l));
        let mut f = by_name.clone();
        f.node = Some("n1".into());
        f.network = Some("prod".into());
        f.address = Some(Ipv4Addr::new(10, 0, 0, 5));
        assert!(f.matches(&l));
        f.node = Some("n2".into());
        assert!(!f.matches(&l));
    }

    #[test]
    fn store_errors_keep_their_meaning() {
        let e: AdminError = StoreError::InUse {
            name: "prod".into(),
            detail: "2 pod lease(s)".into(),
        }
        .into();
        assert!(matches!(e, AdminError::InUse { .. }));
        assert_eq!(e.to_string(), "network \"prod\" still has 2 pod lease(s)");
        let e: AdminError = StoreError::Unavailable("down".into()).into();
        assert_eq!(e.to_string(), "etcd unavailable: down");
        let e: AdminError = StoreError::Corrupt {
            key: "k".into(),
            reason: "r".into(),
        }
        .into();
        assert!(matches!(e, AdminError::Store(_)));
    }
}
