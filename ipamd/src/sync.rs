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
        if !replay_first(&engine, backoff).await {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
            continue;
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
                let result = follow(&engine, &store, rev, &mut resync, &mut shutdown).await;
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

/// Offline decisions go to etcd before anything is re-read, so the
/// snapshot already contains them. False when the replay failed: ipamd
/// then serves from what etcd last confirmed and retries after `backoff`.
async fn replay_first<S: LeaseStore>(engine: &Engine<S>, backoff: Duration) -> bool {
    if !engine.outage().has_journal_entries() {
        return true;
    }
    if let Err(e) = engine.reserve().replay_journal().await {
        warn!("journal replay incomplete (retrying in {backoff:?}): {e}");
        engine
            .outage()
            .note_unreachable(&format!("journal replay: {e}"));
        engine.reserve().start_from_persisted();
        return false;
    }
    true
}

/// Follows etcd from just after `rev` until the watch ends: None on
/// shutdown, Ok when a re-snapshot is wanted (resync requested, or journal
/// entries to replay), the watch's error when it broke. Every change the
/// watch delivered is applied before returning.
async fn follow<S: LeaseStore>(
    engine: &Engine<S>,
    store: &Store,
    rev: i64,
    resync: &mut watch::Receiver<u64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<rackline_store::Result<()>> {
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
    result
}
