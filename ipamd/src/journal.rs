//! The outage journal: what ipamd decided while etcd was unreachable,
//! appended and fsync'd BEFORE the CNI call is answered, replayed into etcd
//! (revision-compared, idempotent) when it is back, then cleared.
//!
//! One JSON object per line. A torn last line (crash mid-write) was never
//! acknowledged, so it is dropped on load.
//!
//! All file work happens on one dedicated `std::thread` (never on a tokio
//! worker, never under a lock a worker waits for): callers send a request
//! and await the reply. The thread takes every request already queued, writes
//! them, fsyncs once and only then replies to each, so concurrent offline
//! ADDs share one fsync and "acknowledged" still means "durable". The same
//! thread writes the persisted reserve (see `crate::reserve`), keeping its
//! fsyncs off the workers too.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use rackline_model::Lease;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
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

type Reply = oneshot::Sender<io::Result<()>>;

enum Request {
    Append(Entry, Reply),
    /// Drop the first n entries (they reached etcd).
    Drain(usize, Reply),
    /// Replace a whole file atomically (write temp, fsync, rename, fsync
    /// the directory).
    WriteFile(PathBuf, Vec<u8>, Reply),
}

pub struct Journal {
    path: PathBuf,
    /// What the file holds, updated by the writer thread after each fsync
    /// (so readers never see an entry that is not durable yet).
    entries: Arc<Mutex<Vec<Entry>>>,
    tx: Mutex<mpsc::Sender<Request>>,
}

fn lock(m: &Mutex<Vec<Entry>>) -> std::sync::MutexGuard<'_, Vec<Entry>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn gone() -> io::Error {
    io::Error::other("the journal writer thread is gone")
}

impl Journal {
    /// Opens (creating the directory 0700) and loads `journal-<node>.jsonl`,
    /// and starts the writer thread (it ends when the journal is dropped).
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
        let entries = Arc::new(Mutex::new(entries));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            path: path.clone(),
            entries: entries.clone(),
        };
        std::thread::Builder::new()
            .name("rackline-journal".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self {
            path,
            entries,
            tx: Mutex::new(tx),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn ask(&self, make: impl FnOnce(Reply) -> Request) -> io::Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(make(reply))
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Appends; returns once the entry is fsync'd: only then may the caller
    /// answer.
    pub async fn append(&self, e: &Entry) -> io::Result<()> {
        self.ask(|r| Request::Append(e.clone(), r)).await
    }

    /// Replaces `path` atomically and durably, on the writer thread.
    pub async fn write_file(&self, path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
        self.ask(|r| Request::WriteFile(path, bytes, r)).await
    }

    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.entries).clone()
    }

    pub fn is_empty(&self) -> bool {
        lock(&self.entries).is_empty()
    }

    /// Entries not yet replayed into etcd.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    /// Drops the first `n` entries (they reached etcd), rewriting the file
    /// atomically (write temp, fsync, rename).
    pub async fn drain(&self, n: usize) -> io::Result<()> {
        self.ask(|r| Request::Drain(n, r)).await
    }
}

struct Writer {
    path: PathBuf,
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            // Group every append already queued behind the first into one
            // write + one fsync; other requests are handled in order.
            let mut batch: Vec<(Entry, Reply)> = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Append(e, r) => batch.push((e, r)),
                    other => {
                        self.flush(&mut batch);
                        self.handle(other);
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush(&mut batch);
        }
    }

    fn flush(&self, batch: &mut Vec<(Entry, Reply)>) {
        if batch.is_empty() {
            return;
        }
        let taken = std::mem::take(batch);
        let result = self.append_all(taken.iter().map(|(e, _)| e));
        match result {
            Ok(()) => {
                lock(&self.entries).extend(taken.iter().map(|(e, _)| e.clone()));
                for (_, r) in taken {
                    let _ = r.send(Ok(()));
                }
            }
            Err(e) => {
                // Nothing of this batch counts as written; a partial line
                // left behind is dropped at load as a torn write, and the
                // next append starts on a fresh line.
                for (_, r) in taken {
                    let _ = r.send(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    fn append_all<'a>(&self, entries: impl Iterator<Item = &'a Entry>) -> io::Result<()> {
        let mut buf = Vec::new();
        for e in entries {
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        // A previous failed write may have left a partial line: start ours
        // on a line of its own so it is not lost with the torn one.
        if f.metadata()?.len() > 0 && !ends_with_newline(&self.path)? {
            f.write_all(b"\n")?;
        }
        f.write_all(&buf)?;
        f.sync_data()
    }

    fn handle(&self, req: Request) {
        match req {
            Request::Append(..) => unreachable!("appends are batched"),
            Request::Drain(n, r) => {
                let _ = r.send(self.drain(n));
            }
            Request::WriteFile(path, bytes, r) => {
                let _ = r.send(write_atomic(&path, &bytes));
            }
        }
    }

    fn drain(&self, n: usize) -> io::Result<()> {
        let rest: Vec<Entry> = {
            let g = lock(&self.entries);
            g[n.min(g.len())..].to_vec()
        };
        let mut buf = Vec::new();
        for e in &rest {
            serde_json::to_writer(&mut buf, e).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        write_atomic(&self.path, &buf)?;
        *lock(&self.entries) = rest;
        Ok(())
    }
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::End(-1))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0] == b'\n')
}

/// Write temp, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ip: &str) -> Lease {
        rackline_testkit::fixtures::lease("prod", ip.parse().unwrap())
            .container("c1")
            .created(1)
            .build()
    }

    #[tokio::test]
    async fn survives_reopen_drops_torn_tail_and_drains() {
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
        j.append(&a).await.unwrap();
        j.append(&r).await.unwrap();
        // A crash in the middle of a third write.
        let mut f = OpenOptions::new().append(true).open(j.path()).unwrap();
        f.write_all(br#"{"op":"activate","lea"#).unwrap();
        drop(f);
        let j2 = Journal::open(dir.path(), "n1").unwrap();
        assert_eq!(j2.entries(), vec![a.clone(), r.clone()]);
        j2.drain(1).await.unwrap();
        assert_eq!(Journal::open(dir.path(), "n1").unwrap().entries(), vec![r]);
        j2.drain(5).await.unwrap();
        assert!(Journal::open(dir.path(), "n1").unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_appends_share_fsyncs_and_each_is_durable_when_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(Journal::open(dir.path(), "n1").unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|i| {
                let j = j.clone();
                tokio::spawn(async move {
                    let e = Entry::Release {
                        network: "prod".into(),
                        address: Ipv4Addr::new(10, 0, 0, i as u8 + 2),
                        container_id: format!("c{i}"),
                        ifname: "eth0".into(),
                    };
                    j.append(&e).await.unwrap();
                    // Acknowledged: a fresh reader (a restarted ipamd) sees it.
                    let reread = Journal::open(j.path().parent().unwrap(), "n1").unwrap();
                    assert!(reread.entries().contains(&e));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(Journal::open(dir.path(), "n1").unwrap().len(), 64);
    }

    #[tokio::test]
    async fn an_append_after_a_torn_line_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "n1").unwrap();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(j.path())
            .unwrap();
        f.write_all(br#"{"op":"activate","lea"#).unwrap();
        drop(f);
        let a = Entry::Activate {
            lease: lease("10.0.0.5"),
            standby_revision: 7,
        };
        j.append(&a).await.unwrap();
        assert_eq!(Journal::open(dir.path(), "n1").unwrap().entries(), vec![a]);
    }
}
