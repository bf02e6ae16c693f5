//! This node's liveness record: one per node name, created only if absent
//! on an etcd lease this ipamd keeps alive (see
//! `rackline_model::Liveness`). It is at once:
//! - the per-node lock: a second ipamd started with the same `--node-name`
//!   finds the record held and refuses to start (two ipamds with one name
//!   would take each other's addresses for their own);
//! - what netmaster's node views and dead-node reclaim go by: a node whose
//!   record stays absent past `--dead-node-grace` is reclaimed.
//!
//! A local `flock` on `<state-dir>/lock-<node>` covers the same host at
//! once, and lets a restarted ipamd tell its own predecessor's record (same
//! instance token, kept in the state directory) from another host's: the
//! predecessor must be dead since the flock was free, so its record is
//! replaced without waiting for its TTL.
//!
//! State machine of the keeper task:
//! ```text
//! Held ── keep-alive every TTL/3 ──▶ Held
//!   │ lease gone (partition longer than TTL) / keep-alive failing
//!   ▼
//! Lost ── re-acquire (every second) ──▶ Held
//!   │ another ipamd holds the record
//!   ▼
//! Superseded: ipamd stops with an error
//! ```

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use rackline_model::Liveness;
use rackline_store::{LeaseKeepAlive, LivenessHolder, NodeLock, Store, StoreError};
use tokio::sync::watch;
use tracing::{error, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum LivenessError {
    #[error(
        "another ipamd already runs for node {node:?} on this host (it holds {path}); \
         stop it first: two ipamds with one node name would hand out the same addresses"
    )]
    LocalLock { node: String, path: String },
    #[error(
        "another ipamd already serves node {node:?}: {holder}, and it kept the node's \
         liveness record alive for {waited:?}; stop it first (two ipamds with one node name \
         would hand out the same addresses), or start this one with another --node-name"
    )]
    Taken {
        node: String,
        holder: String,
        waited: Duration,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The host-local half of the lock: held (the open file) for the life of
/// the process.
pub struct LocalLock {
    _file: Flock<File>,
    /// This installation's instance token.
    pub instance: String,
}

/// Takes `<dir>/lock-<node>` (non-blocking) and reads or creates the
/// instance token `<dir>/instance-<node>`.
pub fn lock_local(dir: &Path, node: &str) -> Result<LocalLock, LivenessError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| LivenessError::Io { path, source }
    };
    // Private, like the journal beside it (same mode as `Journal::open`).
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let path = dir.join(format!("lock-{node}"));
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    let file = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            LivenessError::LocalLock {
                node: node.to_string(),
                path: path.display().to_string(),
            }
        } else {
            io(&path)(std::io::Error::from(errno))
        }
    })?;
    let token = dir.join(format!("instance-{node}"));
    let mut instance = String::new();
    if let Ok(mut f) = File::open(&token) {
        let _ = f.read_to_string(&mut instance);
    }
    let instance = instance.trim().to_string();
    let instance = if instance.is_empty() {
        let fresh = fresh_token();
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&token)
            .map_err(io(&token))?;
        f.write_all(fresh.as_bytes()).map_err(io(&token))?;
        f.sync_all().map_err(io(&token))?;
        fresh
    } else {
        instance
    };
    Ok(LocalLock {
        _file: file,
        instance,
    })
}

fn fresh_token() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{}-{}", std::process::id(), now_ms()))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

fn describe(h: &LivenessHolder) -> String {
    let r = &h.record;
    format!(
        "pid {} on host {:?}, holding the record since {} ms since the epoch",
        r.pid, r.host, r.since_unix_ms
    )
}

/// The etcd half of the lock, while held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub lease: i64,
    pub create_revision: i64,
}

pub struct NodeLiveness {
    store: Store,
    node: String,
    record: Liveness,
    ttl: Duration,
}

impl NodeLiveness {
    pub fn new(store: Store, node: &str, instance: &str, ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(2));
        Self {
            store,
            node: node.to_string(),
            record: Liveness {
                instance: instance.to_string(),
                host: hostname(),
                pid: std::process::id(),
                since_unix_ms: now_ms(),
                ttl_secs: ttl.as_secs(),
            },
            ttl,
        }
    }

    /// Takes the node's record. A record of another installation is waited
    /// for up to its TTL and a little more (its holder may have just died);
    /// one of this installation is a dead predecessor's and is replaced.
    pub async fn acquire(&self) -> Result<Held, LivenessError> {
        let started = tokio::time::Instant::now();
        let granted = self
            .store
            .etcd_leases()
            .grant(self.ttl.as_secs() as i64)
            .await?;
        loop {
            match self
                .store
                .liveness()
                .try_lock_node(&self.node, &self.record, granted.id)
                .await
            {
                Ok(NodeLock::Acquired { create_revision }) => {
                    return Ok(Held {
                        lease: granted.id,
                        create_revision,
                    })
                }
                Ok(NodeLock::Held(None)) => continue,
                Ok(NodeLock::Held(Some(h))) if h.record.instance == self.record.instance => {
                    info!(node = %self.node, "replacing the liveness record of this node's previous ipamd (it did not stop cleanly)");
                    self.store
                        .liveness()
                        .remove_dead_holder(&self.node, &h)
                        .await?;
                }
                Ok(NodeLock::Held(Some(h))) => {
                    let limit =
                        Duration::from_secs(h.record.ttl_secs.max(1)) + Duration::from_secs(2);
                    if started.elapsed() >= limit {
                        let _ = self.store.etcd_leases().revoke(granted.id).await;
                        return Err(LivenessError::Taken {
                            node: self.node.clone(),
                            holder: describe(&h),
                            waited: started.elapsed(),
                        });
                    }
                    warn!(node = %self.node, holder = %describe(&h), "another ipamd's liveness record is there; waiting for it to expire");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    let _ = self.store.etcd_leases().revoke(granted.id).await;
                    return Err(e.into());
                }
            }
        }
    }

    /// One keep-alive round for the held record: opens the keep-alive
    /// stream if there is none, else refreshes it (a failure drops the
    /// stream, to be reopened next round). False: the lease is gone and the
    /// record must be taken again.
    async fn tend(&self, h: Held, keeper: &mut Option<LeaseKeepAlive>) -> bool {
        let Some(k) = keeper.as_mut() else {
            *keeper = match self.store.etcd_leases().keep_alive(h.lease).await {
                Ok(Some(k)) => Some(k),
                Ok(None) => {
                    warn!(node = %self.node, "the liveness lease is gone; taking the record again");
                    return false;
                }
                Err(e) => {
                    warn!(node = %self.node, "cannot keep the liveness record alive: {e}");
                    None
                }
            };
            return true;
        };
        match k.refresh().await {
            Ok(Some(_)) => {}
            Ok(None) => {
                warn!(node = %self.node, "the liveness lease expired (etcd unreachable for longer than its TTL?); taking the record again");
                return false;
            }
            Err(e) => {
                warn!(node = %self.node, "liveness keep-alive failed: {e}");
                *keeper = None;
            }
        }
        true
    }

    /// Keeps the record alive until `shutdown`; re-takes it after a lapse.
    /// Returns Err only when another ipamd took the node over meanwhile
    /// (this one must stop). On shutdown the record is removed at once.
    /// One loop: the held record, its keep-alive stream and the re-take
    /// after a lapse share their state across the shutdown and timer arms.
    pub async fn keep(
        &self,
        mut held: Option<Held>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), LivenessError> {
        let every = self.ttl / 3;
        let mut keeper = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            match held {
                Some(h) => {
                    if !self.tend(h, &mut keeper).await {
                        held = None;
                        keeper = None;
                        continue;
                    }
                }
                None => match self.acquire().await {
                    Ok(h) => {
                        info!(node = %self.node, "liveness record held");
                        held = Some(h);
                        keeper = None;
                        continue;
                    }
                    Err(e @ LivenessError::Taken { .. }) => {
                        error!(node = %self.node, "{e}");
                        return Err(e);
                    }
                    Err(e) => warn!(node = %self.node, "cannot take the liveness record yet: {e}"),
                },
            }
            tokio::select! {
                _ = tokio::time::sleep(if held.is_some() { every } else { Duration::from_secs(1) }) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Some(h) = held {
            // Revoking deletes the record with the lease: netmaster sees the
            // node stopped (not dead) only through its drain/delete flow.
            if let Err(e) = self.store.etcd_leases().revoke(h.lease).await {
                warn!(node = %self.node, "cannot release the liveness record: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_lock_is_exclusive_and_the_token_sticks() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        let a = lock_local(&dir, "n1").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        let e = lock_local(&dir, "n1").err().unwrap();
        assert!(matches!(e, LivenessError::LocalLock { .. }), "{e}");
        assert!(e
            .to_string()
            .contains("another ipamd already runs for node \"n1\""));
        // Another node name on the same state directory is another lock.
        let b = lock_local(&dir, "n2").unwrap();
        assert_ne!(a.instance, b.instance);
        let token = a.instance.clone();
        drop(a);
        let again = lock_local(&dir, "n1").unwrap();
        assert_eq!(again.instance, token);
    }
}
