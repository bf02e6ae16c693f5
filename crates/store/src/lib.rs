//! The etcd adapter. Every write that decides ownership is a transaction:
//! a lease is created only if its key does not exist (create-revision 0) and
//! the network it belongs to is still the incarnation the writer saw, so one
//! address can never have two owners whatever the number of writers.

use std::net::Ipv4Addr;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, KeyValue,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use rackline_model::{Keys, Lease, NetworkSpec, ValidationError};
use tracing::debug;

mod blocks;
mod election;
mod nodes;
mod object;
mod racks;
mod reads;
mod usage;
pub use blocks::{BlockFilter, BlockUsage};
pub use election::{Campaign, GrantedLease, LeaderKey, LeaderWatch, LeaseKeepAlive};
pub use nodes::NodeInfo;
pub use object::Object;
pub use racks::RackInfo;
pub use usage::Utilization;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd did not answer in time or the connection failed: the caller may
    /// retry later (CNI code 11 at the edge).
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("etcd error: {0}")]
    Etcd(#[source] etcd_client::Error),
    #[error("corrupt record at {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("network {0:?} already exists")]
    AlreadyExists(String),
    #[error("network {0:?} not found")]
    NotFound(String),
    #[error(
        "network {name:?} still has {leases} lease(s); release them first or delete with force"
    )]
    InUse { name: String, leases: usize },
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("gave up after {0} conflicting concurrent updates; try again")]
    Contended(u32),
    /// A fenced write failed because its writer is no longer the leader it
    /// was: `key` is gone or was re-created past `create_revision`.
    #[error("leadership lost: {key} is no longer at create revision {create_revision}")]
    Fenced { key: String, create_revision: i64 },
    /// A rack, node, binding or block that does not exist.
    #[error("{}", .0.not_found())]
    Missing(Object),
    #[error("{0} already exists")]
    Exists(Object),
    /// The request conflicts with what is stored (still in use, owned by
    /// another node); the message says what to do first.
    #[error("{0}")]
    Refused(String),
    #[error("rack {rack:?} has no free block left on network {network:?}")]
    Exhausted { network: String, rack: String },
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                StoreError::Unavailable(e.to_string())
            }
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) =>
            {
                StoreError::Unavailable(e.to_string())
            }
            _ => StoreError::Etcd(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Leadership fencing: a write that decides ownership carries this compare,
/// so it fails once the writer is no longer the leader it was (its leader
/// key expired, or was deleted and re-created by another replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub key: String,
    pub create_revision: i64,
}

impl Fence {
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.create_revision)
    }
}

fn fenced(mut when: Vec<Compare>, fence: Option<&Fence>) -> Vec<Compare> {
    if let Some(f) = fence {
        when.push(f.compare());
    }
    when
}

/// A network with the etcd revision at which it was created: leases guard on
/// it so a lease can never be written into a deleted-and-recreated network.
#[derive(Debug, Clone)]
pub struct StoredNetwork {
    pub spec: NetworkSpec,
    pub create_revision: i64,
}

/// A lease with the revision needed to delete exactly this record.
#[derive(Debug, Clone)]
pub struct StoredLease {
    pub lease: Lease,
    pub mod_revision: i64,
}

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub networks: Vec<StoredNetwork>,
    pub leases: Vec<StoredLease>,
    pub racknets: Vec<rackline_model::RackNet>,
    pub blocks: Vec<StoredBlock>,
    pub nodes: Vec<rackline_model::Node>,
    pub revision: i64,
    /// Records that could not be decoded.
    pub skipped: usize,
}

/// A block with the revision its owner's lease writes are guarded by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBlock {
    pub block: rackline_model::Block,
    pub mod_revision: i64,
}

/// "This block is still the one I saw": lease writes inside a block carry
/// it, so a block returned or handed to another node in the meantime makes
/// the write fail instead of creating a lease under a stale assumption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockGuard {
    pub key: String,
    pub mod_revision: i64,
}

fn decode_json<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}

#[derive(Debug)]
pub enum CreateLease {
    Created {
        mod_revision: i64,
    },
    /// Someone else owns the address (their record, when readable).
    Taken(Option<Lease>),
    /// The network was deleted or re-created since the caller read it.
    NetworkGone,
    /// The guarding block was returned or reassigned since the caller read it.
    BlockChanged,
}

/// A change seen by a watch.
#[derive(Debug)]
pub enum Change {
    Put {
        key: String,
        value: Vec<u8>,
        create_revision: i64,
        mod_revision: i64,
    },
    Delete {
        key: String,
        mod_revision: i64,
    },
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    keys: Keys,
    timeout: Duration,
}

impl Store {
    /// Connects lazily: this succeeds while etcd is down, and calls fail with
    /// `Unavailable` until it is back.
    pub async fn connect(endpoints: &[String], prefix: &str, timeout: Duration) -> Result<Self> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(5), timeout.max(Duration::from_secs(2)));
        let client = Client::connect(endpoints, Some(opts)).await?;
        Ok(Self {
            client,
            keys: Keys::new(prefix),
            timeout,
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Runs one etcd call with the store's deadline, so nothing hangs when
    /// etcd is unreachable.
    async fn deadline<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Cheap liveness probe.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.client.clone();
        self.deadline(async move { c.status().await.map(|_| ()) })
            .await
    }

    // ---- networks ----

    pub async fn list_networks(&self) -> Result<(Vec<StoredNetwork>, i64)> {
        let prefix = self.keys.networks_prefix();
        let mut c = self.client.clone();
        let resp = self
            .deadline(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let nets = resp
            .kvs()
            .iter()
            .map(decode_network)
            .collect::<Result<Vec<_>>>()?;
        Ok((nets, rev))
    }

    pub async fn get_network(&self, name: &str) -> Result<Option<StoredNetwork>> {
        let key = self.keys.network(name);
        let mut c = self.client.clone();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        resp.kvs().first().map(decode_network).transpose()
    }

    /// Validates `spec` against every other network and writes it, all under
    /// the networks guard key so two overlapping creates cannot both succeed.
    pub async fn create_network(
        &self,
        spec: &NetworkSpec,
        fence: Option<&Fence>,
    ) -> Result<StoredNetwork> {
        spec.validate()?;
        let guard = self.keys.networks_guard();
        for _ in 0..16 {
            // The guard is compared against the revision of the very read the
            // overlap check used: any create or delete committed after that
            // read bumps the guard past it and fails this transaction. (Reading
            // the guard separately would leave a window between the two reads.)
            // Rack bindings carry subnets of their own: those of other
            // networks may not overlap this one either (read at the same
            // revision, and compared below like the guard).
            let racknets = self.keys.all_racknets_prefix();
            let (r, list_rev) = self
                .read_at_once(vec![
                    reads::get_prefix(self.keys.networks_prefix()),
                    reads::get_prefix(racknets.clone()),
                ])
                .await?;
            let existing = r[0]
                .kvs()
                .iter()
                .map(decode_network)
                .collect::<Result<Vec<_>>>()?;
            if existing.iter().any(|n| n.spec.name == spec.name) {
                return Err(StoreError::AlreadyExists(spec.name.clone()));
            }
            spec.check_overlap(existing.iter().map(|n| &n.spec))?;
            for b in self.decode_bindings(r[1].kvs(), None, None)? {
                if b.network != spec.name && spec.subnet.overlaps(b.subnet) {
                    return Err(ValidationError::Overlap {
                        name: spec.name.clone(),
                        subnet: spec.subnet,
                        other: format!("{} (rack {})", b.network, b.rack),
                        other_subnet: b.subnet,
                    }
                    .into());
                }
            }
            let key = self.keys.network(&spec.name);
            let value = serde_json::to_vec(spec).expect("NetworkSpec serialises");
            let txn = Txn::new()
                .when(fenced(
                    vec![
                        Compare::mod_revision(guard.clone(), CompareOp::Less, list_rev + 1),
                        Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        reads::unchanged_prefix(&racknets, list_rev),
                    ],
                    fence,
                ))
                .and_then([
                    TxnOp::put(key.clone(), value, None),
                    TxnOp::put(guard.clone(), spec.name.clone(), None),
                ]);
            let mut c = self.client.clone();
            let resp = self.deadline(async move { c.txn(txn).await }).await?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(StoredNetwork {
                    spec: spec.clone(),
                    create_revision: rev,
                });
            }
            self.check_fence(fence).await?;
            debug!(network = %spec.name, "network create raced another update; retrying");
        }
        Err(StoreError::Contended(16))
    }

    /// Deletes a network. Without `force` it refuses while leases exist; the
    /// transaction also fails if a lease appeared after the check. The
    /// network's rack bindings and blocks go with it (a network re-created
    /// under the same name must not inherit them).
    pub async fn delete_network(
        &self,
        name: &str,
        force: bool,
        fence: Option<&Fence>,
    ) -> Result<u64> {
        let key = self.keys.network(name);
        let guard = self.keys.networks_guard();
        let leases_prefix = self.keys.leases_prefix(name);
        for _ in 0..16 {
            let Some(net) = self.get_network(name).await? else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            let (leases, rev) = self.list_leases(Some(name)).await?;
            if !force && !leases.is_empty() {
                return Err(StoreError::InUse {
                    name: name.to_string(),
                    leases: leases.len(),
                });
            }
            let mut when = vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                net.create_revision,
            )];
            if !force {
                // No lease key may have been written since we looked.
                when.push(
                    Compare::mod_revision(leases_prefix.clone(), CompareOp::Less, rev + 1)
                        .with_prefix(),
                );
            }
            let txn = Txn::new().when(fenced(when, fence)).and_then([
                TxnOp::delete(key.clone(), None),
                TxnOp::delete(
                    leases_prefix.clone(),
                    Some(DeleteOptions::new().with_prefix()),
                ),
                TxnOp::put(guard.clone(), format!("-{name}"), None),
                TxnOp::delete(
                    self.keys.blocks_prefix(name),
                    Some(DeleteOptions::new().with_prefix()),
                ),
                TxnOp::delete(
                    self.keys.racknets_prefix(name),
                    Some(DeleteOptions::new().with_prefix()),
                ),
            ]);
            let mut c = self.client.clone();
            let resp = self.deadline(async move { c.txn(txn).await }).await?;
            if resp.succeeded() {
                let deleted = resp
                    .op_responses()
                    .into_iter()
                    .nth(1)
                    .and_then(|r| match r {
                        TxnOpResponse::Delete(d) => Some(d.deleted()),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Ok(deleted.max(0) as u64);
            }
            self.check_fence(fence).await?;
        }
        Err(StoreError::Contended(16))
    }

    /// One consistent snapshot of every network and lease, and the revision
    /// it was taken at: a watch from `revision + 1` misses nothing.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let prefix = self.keys.root_prefix();
        let mut c = self.client.clone();
        let resp = self
            .deadline(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut snap = Snapshot {
            networks: Vec::new(),
            leases: Vec::new(),
            racknets: Vec::new(),
            blocks: Vec::new(),
            nodes: Vec::new(),
            revision,
            skipped: 0,
        };
        // One undecodable record must not stop a node from serving: it is
        // skipped (and counted). Safe for leases: the key still exists, so
        // the create-if-absent transaction refuses that address anyway.
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let decoded = if self.keys.network_name_of(&key).is_some() {
                decode_network(kv).map(|n| snap.networks.push(n))
            } else if self.keys.parse_lease(&key).is_some() {
                decode_lease(kv).map(|lease| {
                    snap.leases.push(StoredLease {
                        lease,
                        mod_revision: kv.mod_revision(),
                    })
                })
            } else if self.keys.parse_racknet(&key).is_some() {
                decode_json(kv).map(|r| snap.racknets.push(r))
            } else if self.keys.parse_block(&key).is_some() {
                decode_json(kv).map(|block| {
                    snap.blocks.push(StoredBlock {
                        block,
                        mod_revision: kv.mod_revision(),
                    })
                })
            } else if self.keys.node_name_of(&key).is_some() {
                decode_json(kv).map(|n| snap.nodes.push(n))
            } else {
                Ok(())
            };
            if let Err(e) = decoded {
                tracing::warn!("skipping {e}");
                snap.skipped += 1;
            }
        }
        Ok(snap)
    }

    /// Number of leases of one network, without fetching the records.
    pub async fn count_leases(&self, network: &str) -> Result<u64> {
        let prefix = self.keys.leases_prefix(network);
        let mut c = self.client.clone();
        let resp = self
            .deadline(async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
            })
            .await?;
        Ok(resp.count().max(0) as u64)
    }

    // ---- leases ----

    pub async fn get_lease(&self, network: &str, ip: Ipv4Addr) -> Result<Option<StoredLease>> {
        let key = self.keys.lease(network, ip);
        let mut c = self.client.clone();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        resp.kvs()
            .first()
            .map(|kv| {
                Ok(StoredLease {
                    lease: decode_lease(kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// All leases of one network (or of every network), with the revision the
    /// read was taken at, for a watch to continue from.
    pub async fn list_leases(&self, network: Option<&str>) -> Result<(Vec<StoredLease>, i64)> {
        let prefix = match network {
            Some(n) => self.keys.leases_prefix(n),
            None => self.keys.all_leases_prefix(),
        };
        let mut c = self.client.clone();
        let resp = self
            .deadline(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let leases = resp
            .kvs()
            .iter()
            .map(|kv| {
                Ok(StoredLease {
                    lease: decode_lease(kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((leases, rev))
    }

    /// The one round trip of an allocation: create the lease key if nobody
    /// owns the address and the network is still the one we know.
    pub async fn create_lease(&self, lease: &Lease, network_revision: i64) -> Result<CreateLease> {
        self.create_lease_guarded(lease, network_revision, None)
            .await
    }

    /// `create_lease`, also guarded by the block the address lies in.
    pub async fn create_lease_guarded(
        &self,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> Result<CreateLease> {
        let key = self.keys.lease(&lease.network, lease.address);
        let net_key = self.keys.network(&lease.network);
        let value = serde_json::to_vec(lease).expect("Lease serialises");
        let mut when = vec![
            Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(net_key.clone(), CompareOp::Equal, network_revision),
        ];
        if let Some(b) = block {
            when.push(Compare::mod_revision(
                b.key.clone(),
                CompareOp::Equal,
                b.mod_revision,
            ));
        }
        let mut otherwise = vec![TxnOp::get(key.clone(), None), TxnOp::get(net_key, None)];
        if let Some(b) = block {
            otherwise.push(TxnOp::get(b.key.clone(), None));
        }
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else(otherwise);
        let mut c = self.client.clone();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        if resp.succeeded() {
            let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(CreateLease::Created { mod_revision: rev });
        }
        let ops = resp.op_responses();
        let first_kv = |i: usize| match ops.get(i) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        if let Some(owner) = first_kv(0) {
            return Ok(CreateLease::Taken(decode_lease(&owner).ok()));
        }
        if first_kv(1).is_none_or(|kv| kv.create_revision() != network_revision) {
            return Ok(CreateLease::NetworkGone);
        }
        if let Some(b) = block {
            if first_kv(2).is_none_or(|kv| kv.mod_revision() != b.mod_revision) {
                return Ok(CreateLease::BlockChanged);
            }
        }
        Ok(CreateLease::Taken(None))
    }

    /// Overwrites exactly the lease record the caller saw (by mod revision):
    /// a node's standby record becoming a pod's lease, or the reverse.
    /// Returns the new revision, or None when the record had changed.
    pub async fn replace_lease(&self, lease: &Lease, mod_revision: i64) -> Result<Option<i64>> {
        let key = self.keys.lease(&lease.network, lease.address);
        let value = serde_json::to_vec(lease).expect("Lease serialises");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client.clone();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Deletes exactly the lease record the caller saw (by mod revision), so
    /// a stale release can never free an address someone re-acquired.
    /// Returns false when the record was already gone or had changed.
    pub async fn delete_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
        mod_revision: i64,
    ) -> Result<bool> {
        let key = self.keys.lease(network, ip);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client.clone();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Watches a key prefix from `start_revision`, sending changes to `tx`
    /// until the channel closes or the watch breaks (the caller re-lists and
    /// re-watches: a broken watch is never silently resumed).
    pub async fn watch_prefix(
        &self,
        prefix: String,
        start_revision: i64,
        tx: tokio::sync::mpsc::Sender<Change>,
    ) -> Result<()> {
        let mut c = self.client.clone();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(start_revision);
        let mut stream = self
            .deadline(async move { c.watch(prefix, Some(opts)).await })
            .await?;
        loop {
            let msg = stream.message().await?;
            let Some(resp) = msg else {
                return Err(StoreError::Unavailable("watch stream ended".into()));
            };
            if resp.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "watch cancelled: {}",
                    resp.cancel_reason()
                )));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let change = match ev.event_type() {
                    EventType::Put => Change::Put {
                        key,
                        value: kv.value().to_vec(),
                        create_revision: kv.create_revision(),
                        mod_revision: kv.mod_revision(),
                    },
                    EventType::Delete => Change::Delete {
                        key,
                        mod_revision: kv.mod_revision(),
                    },
                };
                if tx.send(change).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

pub fn decode_network(kv: &KeyValue) -> Result<StoredNetwork> {
    let spec: NetworkSpec =
        serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: e.to_string(),
        })?;
    Ok(StoredNetwork {
        spec,
        create_revision: kv.create_revision(),
    })
}

pub fn decode_lease(kv: &KeyValue) -> Result<Lease> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}
