//! Keeps the engine's cache in step with etcd: snapshot, then watch from the
//! snapshot's revision. Any watch failure (etcd restart, compaction) goes
//! back to a fresh snapshot; events are never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use rackline_store::{Change, Store};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use crate::engine::Engine;
use crate::store::LeaseStore;

/// How often a running watch checks for journal entries to replay.
const JOURNAL_CHECK: Duration = Duration::from_millis(500);

pub async fn run<S: LeaseStore>(
    engine: Arc<Engine<S>>,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut resync = engine.mirror().resync_requests();
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Offline decisions go to etcd before anything is re-read, so the
        // snapshot already contains them.
        if engine.outage().has_journal_entries() {
            if let Err(e) = engine.reserve().replay_journal().await {
                warn!("journal replay incomplete (retrying in {backoff:?}): {e}");
                engine
                    .outage()
                    .note_unreachable(&format!("journal replay: {e}"));
                engine.reserve().start_from_persisted();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        }
        let t = std::time::Instant::now();
        let snap = store.snapshot().await;
        store.observe("snapshot", t);
        match snap {
            Ok(snap) => {
                let rev = snap.revision;
                engine.apply_snapshot(snap);
                engine.outage().note_reachable();
                engine.reserve().settle_replayed().await;
                backoff = Duration::from_millis(100);
                let (tx, mut rx) = mpsc::channel::<Change>(4096);
                let prefix = store.keys().root_prefix();
                let watch = store.watch_prefix(prefix, rev + 1, tx);
                tokio::pin!(watch);
                resync.borrow_and_update();
                // Offline decisions made while this watch stayed up (the
                // prober brought ipamd back online without the watch
                // breaking) are replayed by going round again.
                let mut replay_check = tokio::time::interval(JOURNAL_CHECK);
                let result = loop {
                    tokio::select! {
                        r = &mut watch => break Some(r),
                        Some(change) = rx.recv() => engine.apply_change(change),
                        _ = resync.changed() => break Some(Ok(())),
                        _ = replay_check.tick() => {
                            if engine.outage().etcd_ok() && engine.outage().has_journal_entries() {
                                break Some(Ok(()));
                            }
                        }
                        _ = shutdown.changed() => break None,
                    }
                };
                // Apply what the watch delivered before it ended.
                while let Ok(change) = rx.try_recv() {
                    engine.apply_change(change);
                }
                match result {
                    None => return,
                    Some(Ok(())) => {
                        debug!("re-snapshot requested");
                        continue;
                    }
                    Some(Err(e)) => {
                        warn!("etcd watch broke, re-listing: {e}");
                        engine.outage().note_unreachable(&format!("watch: {e}"));
                    }
                }
            }
            Err(e) => {
                engine.outage().note_unreachable(&format!("snapshot: {e}"));
                // Restarted during an outage: serve from what etcd last
                // confirmed (no-op once a snapshot was loaded).
                engine.reserve().start_from_persisted();
                warn!("cannot load state from etcd (retrying in {backoff:?}): {e}");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
