//! The outage journal: what ipamd decided while etcd was unreachable,
//! appended and fsync'd BEFORE the CNI call is answered, replayed into etcd
//! (revision-compared, idempotent) when it is back, then cleared.
//!
//! One JSON object per line. A torn last line (crash mid-write) was never
//! acknowledged, so it is dropped on load.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rackline_model::Lease;
use serde::{Deserialize, Serialize};
use tracing::warn;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Entry {
    /// A standby address given to a pod while etcd was unreachable.
    #[serde(rename_all = "camelCase")]
    Activate { lease: Lease, standby_revision: i64 },
    /// An attachment released while etcd was unreachable.
    #[serde(rename_all = "camelCase")]
    Release {
        network: String,
        address: Ipv4Addr,
        container_id: String,
        ifname: String,
    },
}

pub struct Journal {
    path: PathBuf,
    inner: Mutex<Vec<Entry>>,
}

impl Journal {
    /// Opens (creating the directory 0700) and loads `journal-<node>.jsonl`.
    pub fn open(dir: &Path, node: &str) -> io::Result<Self> {
        if !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let path = dir.join(format!("journal-{node}.jsonl"));
        let mut entries = Vec::new();
        if path.exists() {
            let f = File::open(&path)?;
            for (n, line) in BufReader::new(f).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Entry>(&line) {
                    Ok(e) => entries.push(e),
                    Err(e) => {
                        warn!(path = %path.display(), line = n + 1, "dropping unreadable journal line (torn write?): {e}")
                    }
                }
            }
        }
        Ok(Self {
            path,
            inner: Mutex::new(entries),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends and fsyncs; only then may the caller answer.
    pub fn append(&self, e: &Entry) -> io::Result<()> {
        let mut g = self.lock();
        let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()?;
        g.push(e.clone());
        Ok(())
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.lock().clone()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Entries not yet replayed into etcd.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Drops the first `n` entries (they reached etcd), rewriting the file
    /// atomically (write temp, fsync, rename).
    pub fn drain(&self, n: usize) -> io::Result<()> {
        let mut g = self.lock();
        let n = n.min(g.len());
        let rest: Vec<Entry> = g[n..].to_vec();
        let tmp = self.path.with_extension("jsonl.tmp");
        {
            let mut f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            for e in &rest {
                let mut line = serde_json::to_vec(e).map_err(io::Error::other)?;
                line.push(b'\n');
                f.write_all(&line)?;
            }
            f.sync_data()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        *g = rest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_model::PodRef;

    fn lease(ip: &str) -> Lease {
        Lease {
            network: "prod".into(),
            address: ip.parse().unwrap(),
            node: "n1".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            pod: PodRef::default(),
            created_unix_ms: 1,
            state: Default::default(),
            sticky: false,
            expires_unix_ms: None,
            conflict: None,
            new_identity: false,
            settings: None,
        }
    }

    #[test]
    fn survives_reopen_drops_torn_tail_and_drains() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "n1").unwrap();
        let a = Entry::Activate {
            lease: lease("10.0.0.5"),
            standby_revision: 7,
        };
        let r = Entry::Release {
            network: "prod".into(),
            address: "10.0.0.6".parse().unwrap(),
            container_id: "c2".into(),
            ifname: "eth0".into(),
        };
        j.append(&a).unwrap();
        j.append(&r).unwrap();
        // A crash in the middle of a third write.
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(br#"{"op":"activate","lea"#).unwrap();
        drop(f);
        let j2 = Journal::open(dir.path(), "n1").unwrap();
        assert_eq!(j2.entries(), vec![a.clone(), r.clone()]);
        j2.drain(1).unwrap();
        assert_eq!(Journal::open(dir.path(), "n1").unwrap().entries(), vec![r]);
        j2.drain(5).unwrap();
        assert!(Journal::open(dir.path(), "n1").unwrap().is_empty());
    }
}
