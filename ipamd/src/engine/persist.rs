//! The persisted reserve: what an ipamd restarted while etcd is unreachable
//! needs to keep serving ADDs — the networks it serves (spec, incarnation,
//! its rack's binding), this node's standby records and its live leases, all
//! as etcd last confirmed them — in `reserve-<node>.json` next to the
//! journal. Written (atomically, by the journal's writer thread) whenever it
//! changes, and BEFORE a standby record is consumed or given back online, so
//! the file never lists as standby an address etcd may already have handed
//! to someone else. Loaded only when the first snapshot from etcd fails; the
//! journal's offline decisions are overlaid on it as on a snapshot, and
//! replayed into etcd (revision-compared) once it answers again.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rackline_model::{Lease, NetworkSpec, RackNet};
use rackline_store::{Snapshot, StoredLease, StoredNetwork};
use serde::{Deserialize, Serialize};
use tracing::{error, warn};

use super::{now_ms, Reserve};
use crate::store::LeaseStore;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Persisted {
    pub version: u32,
    pub node: String,
    /// The etcd key prefix the records come from (another cluster's or
    /// prefix's file is never used).
    pub prefix: String,
    /// When etcd last confirmed this content (the last save while online).
    pub confirmed_unix_ms: i64,
    pub networks: Vec<PersistedNetwork>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistedNetwork {
    pub spec: NetworkSpec,
    pub create_revision: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<RackNet>,
    /// This node's standby records: address, mod revision.
    pub standby: Vec<(Ipv4Addr, i64)>,
    /// This node's live leases, with their mod revisions.
    pub leases: Vec<PersistedLease>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PersistedLease {
    pub lease: Lease,
    pub mod_revision: i64,
}

/// What the last save wrote (so unchanged content is not rewritten).
#[derive(Default)]
pub(super) struct SaveState {
    last: Vec<PersistedNetwork>,
    confirmed_unix_ms: i64,
}

pub fn reserve_path(dir: &Path, node: &str) -> PathBuf {
    dir.join(format!("reserve-{node}.json"))
}

impl<S: LeaseStore> Reserve<'_, S> {
    fn reserve_file(&self) -> Option<PathBuf> {
        let j = self.outage.journal.as_ref()?;
        Some(reserve_path(j.path().parent()?, &self.node))
    }

    fn persisted_networks(&self) -> Vec<PersistedNetwork> {
        let mut v: Vec<PersistedNetwork> = self
            .mirror
            .networks()
            .into_iter()
            .filter(|n| n.in_use_here())
            .map(|n| {
                let mut leases: Vec<PersistedLease> = n
                    .leases()
                    .of_node(&self.node)
                    .into_iter()
                    .map(|sl| PersistedLease {
                        lease: sl.lease,
                        mod_revision: sl.mod_revision,
                    })
                    .collect();
                leases.sort_by_key(|l| l.lease.address);
                PersistedNetwork {
                    spec: n.spec.clone(),
                    create_revision: n.create_revision,
                    binding: n.binding.clone(),
                    standby: n.standby().list(),
                    leases,
                }
            })
            .collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        v
    }

    /// Writes the reserve file if its content changed. Serialised, so a
    /// save computed earlier never lands after a later one.
    pub async fn save_reserve(&self) {
        let Some(path) = self.reserve_file() else {
            return;
        };
        if self.outage.standby_target == 0 || !self.mirror.synced() {
            return;
        }
        let journal = self
            .outage
            .journal
            .clone()
            .expect("a reserve file implies a journal");
        let mut st = self.outage.reserve_save.lock().await;
        let networks = self.persisted_networks();
        let online = self.outage.etcd_ok() && !self.outage.from_persisted();
        // While online, the confirmation time is refreshed now and then
        // even when nothing changed (at most once a minute).
        let refresh = online && now_ms() - st.confirmed_unix_ms > 60_000;
        if networks == st.last && !refresh {
            return;
        }
        let confirmed = if online {
            now_ms()
        } else {
            st.confirmed_unix_ms
        };
        let file = Persisted {
            version: VERSION,
            node: self.node.clone(),
            prefix: self.keys.root_prefix(),
            confirmed_unix_ms: confirmed,
            networks: networks.clone(),
        };
        let bytes = match serde_json::to_vec_pretty(&file) {
            Ok(b) => b,
            Err(e) => {
                error!("cannot encode the persisted reserve: {e}");
                return;
            }
        };
        match journal.write_file(path.clone(), bytes).await {
            Ok(()) => {
                st.last = networks;
                st.confirmed_unix_ms = confirmed;
            }
            Err(e) => {
                // A stale file could list addresses no longer ours: better
                // no offline start at all than a duplicate.
                error!(path = %path.display(), "cannot write the persisted reserve, removing it: {e}");
                let _ = std::fs::remove_file(&path);
                st.last = Vec::new();
            }
        }
    }

    /// etcd did not give the first snapshot: start from the persisted
    /// reserve, if there is one etcd confirmed less than the engine's
    /// `offline_start_max_age` ago. Returns whether it was loaded.
    pub fn start_from_persisted(&self) -> bool {
        let max_age = self.outage.offline_start_max_age;
        if self.mirror.synced() {
            return false;
        }
        let Some(path) = self.reserve_file() else {
            return false;
        };
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
            Err(e) => {
                warn!(path = %path.display(), "cannot read the persisted reserve: {e}");
                return false;
            }
        };
        let file: Persisted = match serde_json::from_slice(&bytes) {
            Ok(f) => f,
            Err(e) => {
                warn!(path = %path.display(), "ignoring an unreadable persisted reserve: {e}");
                return false;
            }
        };
        if file.version != VERSION || file.node != self.node {
            warn!(path = %path.display(), node = %file.node, "ignoring a persisted reserve of another node or version");
            return false;
        }
        if file.prefix != self.keys.root_prefix() {
            warn!(path = %path.display(), prefix = %file.prefix, "ignoring a persisted reserve of another etcd prefix");
            return false;
        }
        let age =
            Duration::from_millis(now_ms().saturating_sub(file.confirmed_unix_ms).max(0) as u64);
        if age > max_age {
            warn!(path = %path.display(), ?age, ?max_age, "the persisted reserve is too old to be trusted; no offline start");
            return false;
        }
        let (snap, standby) = self.snapshot_of(&file);
        self.apply_snapshot(snap);
        self.outage.from_persisted.store(true, Ordering::Relaxed);
        // The file is what etcd last confirmed: later saves keep that time.
        if let Ok(mut st) = self.outage.reserve_save.try_lock() {
            st.last = file.networks.clone();
            st.confirmed_unix_ms = file.confirmed_unix_ms;
        }
        warn!(
            networks = file.networks.len(),
            standby,
            ?age,
            "etcd is unreachable at start: serving from the persisted standby reserve (offline until etcd answers)"
        );
        true
    }

    /// The persisted reserve as a snapshot (revision 0), and how many
    /// standby records it holds.
    fn snapshot_of(&self, file: &Persisted) -> (Snapshot, usize) {
        let mut snap = Snapshot {
            networks: Vec::new(),
            leases: Vec::new(),
            racknets: Vec::new(),
            blocks: Vec::new(),
            nodes: Vec::new(),
            // Nothing is given back offline anyway; the first etcd
            // snapshot brings the markers.
            drains: Vec::new(),
            revision: 0,
            skipped: 0,
        };
        let mut standby = 0;
        for n in &file.networks {
            snap.networks.push(StoredNetwork {
                spec: n.spec.clone(),
                create_revision: n.create_revision,
                // Not persisted: ipamd never compares a network's mod
                // revision (only netmaster's updates do).
                mod_revision: n.create_revision,
            });
            snap.racknets.extend(n.binding.clone());
            for (ip, rev) in &n.standby {
                snap.leases.push(StoredLease {
                    lease: Lease::standby(&n.spec.name, *ip, &self.node, file.confirmed_unix_ms),
                    mod_revision: *rev,
                });
                standby += 1;
            }
            for l in &n.leases {
                snap.leases.push(StoredLease {
                    lease: l.lease.clone(),
                    mod_revision: l.mod_revision,
                });
            }
        }
        (snap, standby)
    }
}
