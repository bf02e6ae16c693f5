//! The etcd adapter. Every write that decides ownership is a transaction:
//! a lease is created only if its key does not exist (create-revision 0) and
//! the network it belongs to is still the incarnation the writer saw, so one
//! address can never have two owners whatever the number of writers.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, KeyValue, WatchOptions};
use rackline_model::{Lease, NetworkSpec, ValidationError};

mod acl;
mod blocks;
mod census;
mod channel;
mod connect;
mod etcd_leases;
mod events;
mod facets;
mod group;
mod identities;
mod infra;
pub mod keys;
mod leader_key;
mod leader_store;
mod leases;
mod lifecycle;
mod network_update;
mod networks;
mod nodes;
mod object;
mod qos;
mod racks;
mod reads;
mod retire;
mod ttl;
mod usage;
pub use acl::AclRecord;
pub use blocks::{AcquiredBlock, BlockFilter, BlockUsage};
pub use census::LeaseCensus;
pub use connect::{EtcdConfig, EtcdCredentialArgs, RELOAD_INTERVAL};
pub use etcd_leases::{GrantedLease, LeaseKeepAlive};
pub use events::{EventItem, EventsError, WebhookCursor};
pub use facets::{
    AdminReads, ControlEvents, EtcdLeases, LeaderKeyStore, LeaseOps, NodeLiveness, PolicyWrites,
    Retirement,
};
pub use group::MAX_BATCH_LIMIT;
pub use identities::{IdentityView, StickyWrite, StoredIdentity};
pub use keys::Keys;
pub use leader_key::{Campaign, LeaderKey, LeaderWatch};
pub use leader_store::LeaderStore;
pub use lifecycle::{LivenessHolder, NodeLock};
pub use network_update::{NetworkState, UpdateGuards, UpdateOutcome};
pub use nodes::NodeInfo;
pub use object::Object;
pub use racks::{BindingCensus, RackInfo};
pub use retire::{RetireMode, RetireReport};
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
    /// `detail` says what is left and what to do about it.
    #[error("network {name:?} still has {detail}")]
    InUse { name: String, detail: String },
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
    /// The etcd client cannot be set up as configured (flags, credential
    /// files): fix the configuration.
    #[error("{0}")]
    Config(String),
}

/// A transport failure with its cause spelled out: "transport error" alone
/// hides a TLS failure, whose explanation names the flag to fix.
fn transport_failure(e: &(dyn std::error::Error + 'static)) -> StoreError {
    let chain = rackline_security::tls::error_chain(e);
    StoreError::Unavailable(
        match rackline_security::tls::explain_tls_failure(
            &chain,
            "etcd",
            "--etcd-ca-file",
            "--etcd-cert-file",
        ) {
            Some(why) => format!("{why} ({chain})"),
            None => chain,
        },
    )
}

impl From<etcd_client::Error> for StoreError {
    fn from(e: etcd_client::Error) -> Self {
        match &e {
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
                transport_failure(&e)
            }
            // A connect failure arrives as an Unavailable status, a broken
            // connection under a call as an Unknown one; both carry the
            // transport error as their source.
            etcd_client::Error::GRpcStatus(s)
                if matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                ) || (s.code() == tonic::Code::Unknown
                    && std::error::Error::source(s).is_some()) =>
            {
                transport_failure(s)
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

/// A network with the etcd revision at which it was created: leases guard on
/// it so a lease can never be written into a deleted-and-recreated network.
#[derive(Debug, Clone)]
pub struct StoredNetwork {
    pub spec: NetworkSpec,
    pub create_revision: i64,
    /// The record's last write (its creation or its last update): what an
    /// update compares, so two updates never both apply to one version.
    pub mod_revision: i64,
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
    /// Drain markers in force.
    pub drains: Vec<rackline_model::DrainTarget>,
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

impl BlockGuard {
    /// "The block is still at the revision I saw", for a transaction.
    pub fn compare(&self) -> Compare {
        Compare::mod_revision(self.key.clone(), CompareOp::Equal, self.mod_revision)
    }
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
    /// Boxed: a lease record is large and the other variants are not.
    Taken(Option<Box<Lease>>),
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

/// Told the duration of a named store operation (metrics); see
/// [`Store::with_observer`].
pub type Observer = std::sync::Arc<dyn Fn(&'static str, Duration) + Send + Sync>;

#[derive(Clone)]
pub struct Store {
    etcd: connect::EtcdHandle,
    keys: Keys,
    timeout: Duration,
    observer: Option<Observer>,
    /// Group commit of lease creations, when on (see group.rs).
    group: Option<std::sync::Arc<group::GroupCommit>>,
}

impl Store {
    /// Plaintext etcd without credentials (tests, loopback); see
    /// [`Store::connect_with`].
    pub async fn connect(endpoints: &[String], prefix: &str, timeout: Duration) -> Result<Self> {
        Self::connect_with(EtcdConfig::plain(endpoints, prefix, timeout)).await
    }

    /// Connects lazily: this succeeds while etcd is down, and calls fail with
    /// `Unavailable` until it is back. Fails at once on a configuration that
    /// can never work (flags that do not fit together, credential files that
    /// do not load).
    pub async fn connect_with(config: EtcdConfig) -> Result<Self> {
        let keys = Keys::new(&config.prefix);
        let timeout = config.timeout;
        let etcd = connect::EtcdHandle::connect(config).await?;
        Ok(Self {
            etcd,
            keys,
            timeout,
            observer: None,
            group: None,
        })
    }

    /// Reports the duration of the operations callers time with
    /// [`Store::observe`] (a daemon's etcd latency histogram).
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Tells the observer, if any, that operation `op` took since `started`.
    pub fn observe(&self, op: &'static str, started: std::time::Instant) {
        if let Some(o) = &self.observer {
            o(op, started.elapsed());
        }
    }

    /// The current etcd client (a new one after credentials rotated).
    fn client(&self) -> Client {
        self.etcd.client()
    }

    /// A credential problem (expired certificate, wrong password…) known
    /// right now, for status lines.
    pub fn credential_problem(&self) -> Option<String> {
        self.etcd.problem()
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
            Ok(r) => r.map_err(|e| self.etcd.explain(StoreError::from(e))),
            Err(_) => Err(self.etcd.explain(StoreError::Unavailable(format!(
                "no answer within {:?}",
                self.timeout
            )))),
        }
    }

    /// Cheap liveness probe.
    pub async fn ping(&self) -> Result<()> {
        let mut c = self.client();
        self.deadline(async move { c.status().await.map(|_| ()) })
            .await
    }

    /// Cheap probe that etcd can serve reads: one linearizable point read
    /// (count only), which needs the cluster's quorum — unlike `ping`
    /// (status), which a member cut off from its peers still answers.
    pub async fn quorum_read(&self) -> Result<()> {
        let key = self.keys.root_prefix();
        let mut c = self.client();
        self.deadline(async move {
            c.get(key, Some(GetOptions::new().with_count_only()))
                .await
                .map(|_| ())
        })
        .await
    }

    /// One consistent snapshot of every network and lease, and the revision
    /// it was taken at: a watch from `revision + 1` misses nothing.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let prefix = self.keys.root_prefix();
        let mut snap = Snapshot {
            networks: Vec::new(),
            leases: Vec::new(),
            racknets: Vec::new(),
            blocks: Vec::new(),
            nodes: Vec::new(),
            drains: Vec::new(),
            revision: 0,
            skipped: 0,
        };
        // Paged, all pages at one revision: one consistent state, and each
        // page decoded and dropped before the next arrives.
        snap.revision = self
            .for_each_page(&prefix, 0, |kvs| {
                for kv in kvs {
                    self.snapshot_record(kv, &mut snap);
                }
                Ok(())
            })
            .await?;
        Ok(snap)
    }

    fn snapshot_record(&self, kv: &KeyValue, snap: &mut Snapshot) {
        // One undecodable record must not stop a node from serving: it is
        // skipped (and counted). Safe for leases: the key still exists, so
        // the create-if-absent transaction refuses that address anyway.
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
        } else if let Some(target) = self.keys.parse_drain(&key) {
            snap.drains.push(target);
            Ok(())
        } else {
            Ok(())
        };
        if let Err(e) = decoded {
            tracing::warn!("ignoring an undecodable record: {e}");
            snap.skipped += 1;
        }
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
        let mut c = self.client();
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
        mod_revision: kv.mod_revision(),
    })
}

pub fn decode_lease(kv: &KeyValue) -> Result<Lease> {
    serde_json::from_slice(kv.value()).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        reason: e.to_string(),
    })
}
