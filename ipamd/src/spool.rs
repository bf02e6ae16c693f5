//! Drains the CNI plugin's release spool (format and rules:
//! `rackline_model::spool`): releases DEL could not hand over because this
//! daemon was away (restarting, stuck). Run at start and every
//! [`DRAIN_INTERVAL`].
//!
//! A record is released under the attachment's lock and only while its file
//! still exists: an ADD of the same attachment removes the file before it
//! allocates, so a spooled release never frees a re-added attachment's
//! address. Container ids are unique per sandbox, so a release by (network,
//! container id, ifname) cannot free another pod's address.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rackline_model::spool::{spool_dir, ReleaseRecord, MAX_RECORD_LEN};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::{Engine, IpamError};
use crate::store::LeaseStore;

pub const DRAIN_INTERVAL: Duration = Duration::from_secs(5);

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Drained {
    /// Records acted on (released, or nothing left to release).
    pub done: usize,
    /// Records kept for the next pass (etcd or the network not ready).
    pub kept: usize,
    /// Unusable records removed (malformed, misnamed, refused).
    pub dropped: usize,
}

/// This node's spool directory: keyed by the inode of the network namespace
/// the daemon runs in (the node's), like the plugin computes it.
pub fn node_dir(runtime_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata("/proc/self/ns/net")?.ino();
    Ok(spool_dir(runtime_dir, ino))
}

enum Entry {
    Record(PathBuf, ReleaseRecord),
    Bad(PathBuf, String),
}

/// Reads the records (blocking I/O: called on a blocking thread). Files
/// whose name starts with `.` are the plugin's in-flight temporaries.
fn scan(dir: &Path) -> Vec<Entry> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let path = e.path();
        match read_record(&path) {
            Ok(r) if r.file_name() == name => out.push(Entry::Record(path, r)),
            Ok(_) => out.push(Entry::Bad(
                path,
                "file name does not match the record".into(),
            )),
            Err(why) => out.push(Entry::Bad(path, why)),
        }
    }
    out
}

fn read_record(path: &Path) -> Result<ReleaseRecord, String> {
    // Never a blocking open: no FIFO, no symlink.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOFOLLOW).bits())
        .open(path)
        .map_err(|e| e.to_string())?;
    let m = f.metadata().map_err(|e| e.to_string())?;
    if !m.file_type().is_file() {
        return Err("not a regular file".into());
    }
    let mut s = String::new();
    f.take(MAX_RECORD_LEN)
        .read_to_string(&mut s)
        .map_err(|e| e.to_string())?;
    serde_json::from_str(&s).map_err(|e| format!("not a release record: {e}"))
}

/// One pass over the spool.
pub async fn drain<S: LeaseStore>(engine: &Engine<S>, dir: &Path) -> Drained {
    let d = dir.to_owned();
    let entries = tokio::task::spawn_blocking(move || scan(&d))
        .await
        .unwrap_or_default();
    let mut out = Drained::default();
    for entry in entries {
        let (path, rec) = match entry {
            Entry::Record(p, r) => (p, r),
            Entry::Bad(p, why) => {
                warn!(record = %p.display(), "dropping an unusable release record: {why}");
                let _ = std::fs::remove_file(&p);
                out.dropped += 1;
                continue;
            }
        };
        let exists = || std::fs::symlink_metadata(&path).is_ok();
        match engine
            .allocator()
            .release_if(&rec.network, &rec.container_id, &rec.ifname, false, exists)
            .await
        {
            Ok(ips) => {
                if ips.is_empty() {
                    debug!(network = %rec.network, container = %rec.container_id, ifname = %rec.ifname, "spooled release: nothing (left) to release");
                } else {
                    info!(network = %rec.network, container = %rec.container_id, ifname = %rec.ifname, addresses = ?ips, "released from the spool");
                }
                let _ = std::fs::remove_file(&path);
                out.done += 1;
            }
            Err(IpamError::InvalidRequest(why)) => {
                warn!(record = %path.display(), "dropping a release record ipamd refuses: {why}");
                let _ = std::fs::remove_file(&path);
                out.dropped += 1;
            }
            Err(e) => {
                debug!(record = %path.display(), "spooled release kept for later: {e}");
                out.kept += 1;
            }
        }
    }
    out
}

/// Drains at start and every [`DRAIN_INTERVAL`] until shutdown.
pub async fn run<S: LeaseStore>(
    engine: Arc<Engine<S>>,
    runtime_dir: PathBuf,
    mut shutdown: watch::Receiver<bool>,
) {
    let dir = match node_dir(&runtime_dir) {
        Ok(d) => d,
        Err(e) => {
            warn!(
                "cannot locate the release spool under {}: {e}",
                runtime_dir.display()
            );
            return;
        }
    };
    info!(dir = %dir.display(), "draining the plugin's release spool");
    loop {
        let d = drain(&engine, &dir).await;
        if d != Drained::default() {
            debug!(?d, "release spool pass");
        }
        tokio::select! {
            _ = tokio::time::sleep(DRAIN_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
