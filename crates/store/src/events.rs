//! The etcd side of the IP event stream: a watch over the lease and
//! identity records (with each change's previous value), the heartbeat key
//! that gives the stream bookmarks, and the webhook sink's cursor.
//!
//! A watch that starts below etcd's compaction revision cannot deliver the
//! changes in between: that is reported as [`EventsError::Compacted`] with
//! the oldest revision still available, never skipped silently.

use etcd_client::{Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use rackline_model::event::{marked_lease_json, RawChange, Record};
use rackline_model::Lease;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::facets::{ControlEvents, LeaseOps};
use crate::reads::now_unix_ms;
use crate::{Result, StoreError};

/// What the event watch delivers, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventItem {
    /// The lease and identity changes of one revision, in etcd's order
    /// (one transaction's changes are never split).
    Changes {
        revision: i64,
        changes: Vec<RawChange>,
    },
    /// The heartbeat was written at `revision`: every change up to it has
    /// been delivered before this item.
    Mark(i64),
}

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The requested revision is older than etcd keeps.
    #[error(
        "events from revision {requested} on are no longer available: etcd compacted its history up to revision {compact_revision} (resync with `racklinectl lease list`, then resume from {compact_revision})"
    )]
    Compacted {
        requested: i64,
        /// The oldest revision a watch can start at now.
        compact_revision: i64,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The heartbeat key's value (informative).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Heartbeat {
    by: String,
    unix_ms: i64,
}

/// The webhook sink's stored cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookCursor {
    /// The next etcd revision to deliver.
    pub next_revision: i64,
    /// The URL it was delivering to (a different URL starts afresh).
    pub url: String,
    #[serde(default)]
    pub updated_unix_ms: i64,
}

impl LeaseOps<'_> {
    /// Marks the lease last seen at `mod_revision` as being reclaimed for
    /// `reason` (see `rackline_model::event`): the event stream then tells
    /// a GC or reconciler reclaim from a DEL. Returns the new revision to
    /// free it at, or None if the record changed meanwhile.
    pub async fn mark_lease_reclaimed(
        &self,
        lease: &Lease,
        mod_revision: i64,
        reason: &str,
    ) -> Result<Option<i64>> {
        let key = self.keys.lease(&lease.network, lease.address);
        let value = marked_lease_json(lease, reason, now_unix_ms());
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.commit(txn).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }
}

impl ControlEvents<'_> {
    /// The store's current revision.
    pub async fn current_revision(&self) -> Result<i64> {
        let mut c = self.client();
        let key = self.keys.heartbeat();
        let resp = self
            .deadline(async move { c.get(key, Some(GetOptions::new().with_count_only())).await })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Writes the heartbeat (a clock tick, not an ownership record: any
    /// replica may write it) and returns its revision.
    pub async fn put_heartbeat(&self, by: &str) -> Result<i64> {
        let value = serde_json::to_vec(&Heartbeat {
            by: by.to_string(),
            unix_ms: now_unix_ms(),
        })
        .expect("heartbeat serialises");
        let mut c = self.client();
        let key = self.keys.heartbeat();
        let resp = self
            .deadline(async move { c.put(key, value, None).await })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Watches the event range from `from` (inclusive; 0 = from the next
    /// revision), sending to `tx` until the channel closes (Ok) or the watch
    /// breaks (Err: the caller decides whether to resume, from the revision
    /// after the last item it got).
    pub async fn watch_events(
        &self,
        from: i64,
        tx: mpsc::Sender<EventItem>,
    ) -> Result<(), EventsError> {
        let (start, end) = self.keys.events_range();
        let mut opts = WatchOptions::new().with_range(end).with_prev_key();
        if from > 0 {
            opts = opts.with_start_revision(from);
        }
        let mut c = self.client();
        let mut stream = self
            .deadline(async move { c.watch(start, Some(opts)).await })
            .await?;
        let heartbeat = self.keys.heartbeat();
        loop {
            let msg = stream.message().await.map_err(StoreError::from)?;
            let Some(resp) = msg else {
                return Err(StoreError::Unavailable("event watch stream ended".into()).into());
            };
            if resp.compact_revision() > 0 {
                return Err(EventsError::Compacted {
                    requested: from,
                    compact_revision: resp.compact_revision(),
                });
            }
            if resp.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "event watch cancelled: {}",
                    resp.cancel_reason()
                ))
                .into());
            }
            let items = self.items_of(&resp, &heartbeat);
            for item in items {
                if tx.send(item).await.is_err() {
                    return Ok(());
                }
            }
        }
    }

    /// The items of one watch response, grouped by revision: etcd never
    /// splits one revision across responses, but one response may hold
    /// several revisions. The heartbeat key is a progress mark.
    fn items_of(&self, resp: &etcd_client::WatchResponse, heartbeat: &str) -> Vec<EventItem> {
        let mut items: Vec<EventItem> = Vec::new();
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let rev = kv.mod_revision();
            let key = String::from_utf8_lossy(kv.key());
            if key == heartbeat {
                items.push(EventItem::Mark(rev));
                continue;
            }
            let Some(record) = self.record_of(&key) else {
                continue;
            };
            let change = RawChange {
                record,
                prev: ev.prev_kv().map(|p| p.value().to_vec()),
                cur: match ev.event_type() {
                    EventType::Put => Some(kv.value().to_vec()),
                    EventType::Delete => None,
                },
            };
            match items.last_mut() {
                Some(EventItem::Changes { revision, changes }) if *revision == rev => {
                    changes.push(change)
                }
                _ => items.push(EventItem::Changes {
                    revision: rev,
                    changes: vec![change],
                }),
            }
        }
        items
    }

    /// The record a key of the event range names (lease or identity).
    fn record_of(&self, key: &str) -> Option<Record> {
        if let Some((network, address)) = self.keys.parse_lease(key) {
            Some(Record::Lease {
                network: network.to_string(),
                address,
            })
        } else if let Some((network, namespace, name)) = self.keys.parse_identity(key) {
            Some(Record::Identity {
                network: network.to_string(),
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
        } else {
            None
        }
    }

    pub async fn webhook_cursor(&self) -> Result<Option<WebhookCursor>> {
        let mut c = self.client();
        let key = self.keys.webhook_cursor();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => crate::decode_json(kv).map(Some),
        }
    }
}
