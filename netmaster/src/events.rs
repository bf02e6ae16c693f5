//! The IP event stream as netmaster serves it: etcd's history of the lease
//! and identity records (see `rackline_model::event` for how changes
//! become events), one batch per etcd revision, with the rack of each
//! address from the [`PoolIndex`].
//!
//! Bookmarks: the leader rewrites the heartbeat key every
//! [`HEARTBEAT_EVERY`]; the watch delivers that write in order with the
//! events, so a [`Batch::Progress`] proves every event before it was
//! delivered. A caller can move its cursor on through quiet periods and
//! never resumes below etcd's compaction for want of events.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rackline_model::event::{self, LeaseEvent};
use rackline_store::{EventItem, EventsError, Store, StoreError};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::index::PoolIndex;

/// How often the leader writes the heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// A stream that is not followed gives up when etcd stays away this long.
const ONE_SHOT_DEADLINE: Duration = Duration::from_secs(30);

/// What a subscriber receives, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batch {
    /// The events of one revision.
    Events {
        revision: i64,
        events: Vec<LeaseEvent>,
    },
    /// No events were left out up to this revision.
    Progress(i64),
}

#[derive(Clone)]
pub struct EventSource {
    store: Store,
    index: Arc<PoolIndex>,
    /// This replica's id (written into the heartbeat).
    id: String,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl EventSource {
    pub fn new(store: Store, index: Arc<PoolIndex>, id: String) -> Self {
        Self { store, index, id }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Writes the heartbeat (the leader calls this every
    /// [`HEARTBEAT_EVERY`]).
    pub async fn heartbeat(&self) -> Result<i64, StoreError> {
        self.store.events().put_heartbeat(&self.id).await
    }

    /// Turns one revision's changes into events.
    fn derive(&self, revision: i64, changes: &[event::RawChange]) -> Vec<LeaseEvent> {
        let index = self.index.clone();
        let rack_of =
            move |net: &str, ip: std::net::Ipv4Addr, node: &str| index.rack_of(net, ip, node);
        event::derive(revision, changes, now_ms(), &rack_of)
    }

    /// Subscribes from `from` (inclusive). `follow`: forever (0 = from the
    /// next revision); else up to the revision current now (0 = from the
    /// oldest revision etcd keeps), then the channel closes. A gap etcd
    /// compacted away ends the stream with `Err(Compacted)`. The task
    /// stops when the receiver is dropped.
    pub fn subscribe(&self, from: i64, follow: bool) -> mpsc::Receiver<Result<Batch, EventsError>> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(e) = me.pump(from, follow, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    /// Where the stream starts. "From now" is pinned to a revision at once,
    /// so a watch that has to be re-opened later resumes exactly there.
    async fn first_revision(&self, from: i64, oldest: bool) -> Result<i64, EventsError> {
        Ok(if oldest {
            1
        } else if from <= 0 {
            self.store.events().current_revision().await? + 1
        } else {
            from
        })
    }

    /// A watched item as what it tells subscribers: (its revision, the
    /// batch to send, if any — a revision of no lease events sends none).
    fn batch_of(&self, item: EventItem) -> (i64, Option<Batch>) {
        match item {
            EventItem::Changes { revision, changes } => {
                let events = self.derive(revision, &changes);
                (
                    revision,
                    (!events.is_empty()).then_some(Batch::Events { revision, events }),
                )
            }
            EventItem::Mark(revision) => (revision, Some(Batch::Progress(revision))),
        }
    }

    /// One run of etcd's watch from `*next`: forwards each revision's batch,
    /// moving `*next` past it and resetting `*backoff`. `Done` once the
    /// receiver is gone or the one-shot read reached `until`; otherwise how
    /// the watch ended (None: its channel closed first).
    async fn forward(
        &self,
        next: &mut i64,
        backoff: &mut Duration,
        until: Option<i64>,
        out: &mpsc::Sender<Result<Batch, EventsError>>,
    ) -> Watched {
        let (tx, mut rx) = mpsc::channel::<EventItem>(256);
        let events = self.store.events();
        let watch = events.watch_events(*next, tx);
        tokio::pin!(watch);
        let mut ended = None;
        loop {
            tokio::select! {
                r = &mut watch, if ended.is_none() => ended = Some(r),
                item = rx.recv() => {
                    let Some(item) = item else { return Watched::Ended(ended) };
                    let (revision, batch) = self.batch_of(item);
                    if until.is_some_and(|until| revision > until) {
                        return Watched::Done;
                    }
                    if let Some(b) = batch {
                        if out.send(Ok(b)).await.is_err() {
                            return Watched::Done;
                        }
                    }
                    *next = revision + 1;
                    *backoff = Duration::from_millis(100);
                    if until == Some(revision) {
                        return Watched::Done;
                    }
                }
            }
        }
    }

    /// Follows etcd's watch of the event range and forwards batches until
    /// the receiver goes, the one-shot read reaches its end, or the history
    /// it needs was compacted. The watch is re-opened at the next revision
    /// after every break.
    async fn pump(
        &self,
        from: i64,
        follow: bool,
        out: &mpsc::Sender<Result<Batch, EventsError>>,
    ) -> Result<(), EventsError> {
        // A one-shot read ends at a change of its own: the heartbeat it
        // writes now comes back through the watch after every earlier
        // change (etcd delivers in revision order).
        let until = if follow {
            None
        } else {
            Some(self.store.events().put_heartbeat(&self.id).await?)
        };
        if until.is_some_and(|until| from > until) {
            // Nothing at or after a future start exists yet.
            return Ok(());
        }
        let oldest = from <= 0 && !follow;
        let mut next = self.first_revision(from, oldest).await?;
        let mut backoff = Duration::from_millis(100);
        let started = tokio::time::Instant::now();
        loop {
            let Watched::Ended(ended) = self.forward(&mut next, &mut backoff, until, out).await
            else {
                return Ok(());
            };
            match ended {
                Some(Ok(())) | None => return Ok(()),
                Some(Err(EventsError::Compacted {
                    compact_revision, ..
                })) if oldest && next <= 1 => {
                    // "From the oldest": start where etcd's history starts.
                    debug!(compact_revision, "event history starts at the compaction");
                    next = compact_revision;
                    continue;
                }
                Some(Err(EventsError::Compacted {
                    compact_revision, ..
                })) => {
                    return Err(EventsError::Compacted {
                        requested: next,
                        compact_revision,
                    });
                }
                Some(Err(EventsError::Store(e))) => {
                    if !follow && started.elapsed() > ONE_SHOT_DEADLINE {
                        return Err(EventsError::Store(e));
                    }
                    warn!("event stream: etcd watch broke, resuming at revision {next} in {backoff:?}: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    if out.is_closed() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// How one run of the watch ended (see `pump`).
enum Watched {
    /// Nothing more to send.
    Done,
    /// The watch broke or closed; None when its channel closed first.
    Ended(Option<Result<(), EventsError>>),
}
