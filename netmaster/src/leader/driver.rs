//! The election driver: one owned task walking the state machine drawn in
//! the parent module, publishing each role through [`ElectionStatus`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rackline_store::{Campaign, Fence, LeaderKey, LeaderWatch, LeaseKeepAlive, Store};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout_at, Instant};
use tracing::{info, warn};

use super::{ElectionConfig, ElectionStatus, LeaderRecord, Role, Timings};

/// The driver's next state, with what it needs.
enum Step {
    Campaign,
    /// Read the leader key afresh (after a broken watch).
    Observe,
    Follow {
        key: LeaderKey,
        revision: i64,
    },
    Lead {
        fence: Fence,
        lease: i64,
        lease_ttl: Duration,
        valid_until: Instant,
    },
    Stop,
}

pub(super) struct Driver {
    pub(super) store: Store,
    pub(super) cfg: ElectionConfig,
    pub(super) timings: Timings,
    pub(super) fence_key: String,
    pub(super) status: ElectionStatus,
    pub(super) stop: watch::Receiver<bool>,
    /// The lease this replica holds (as leader or candidate): revoked when
    /// it steps down or stops.
    pub(super) lease: Option<i64>,
}

impl Driver {
    pub(super) async fn run(mut self) {
        let mut step = Step::Campaign;
        loop {
            step = match step {
                Step::Campaign => self.campaign().await,
                Step::Observe => self.observe().await,
                Step::Follow { key, revision } => self.follow(key, revision).await,
                Step::Lead {
                    fence,
                    lease,
                    lease_ttl,
                    valid_until,
                } => self.lead(fence, lease, lease_ttl, valid_until).await,
                Step::Stop => break,
            };
        }
        self.status.publish(Role::Stopped);
        if let Some(id) = self.lease.take() {
            match self.store.etcd_leases().revoke(id).await {
                Ok(()) => info!(lease = id, "released the leader lease"),
                Err(e) => {
                    warn!(lease = id, error = %e, "cannot revoke the leader lease; it expires by itself")
                }
            }
        }
    }

    /// Runs `f` unless a stop comes first (None).
    async fn or_stop<T>(&mut self, f: impl std::future::Future<Output = T>) -> Option<T> {
        let mut stop = self.stop.clone();
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => None,
            v = f => Some(v),
        }
    }

    /// Waits the retry interval, then goes on with `next` (or stops if
    /// told to meanwhile).
    async fn pause_then(&mut self, next: Step) -> Step {
        let d = self.timings.retry;
        match self.or_stop(tokio::time::sleep(d)).await {
            Some(()) => next,
            None => Step::Stop,
        }
    }

    /// Revokes the lease held (best effort: an unrevoked lease expires).
    async fn release_lease(&mut self) {
        // Not cut short by a stop: stopping would revoke it anyway, and the
        // call is bounded by the etcd deadline.
        if let Some(id) = self.lease.take() {
            if let Err(e) = self.store.etcd_leases().revoke(id).await {
                warn!(lease = id, error = %e, "cannot revoke an old lease; it expires by itself");
            }
        }
    }

    async fn campaign(&mut self) -> Step {
        self.status.publish(Role::Campaigning);
        let ttl_secs = i64::try_from(self.timings.ttl.as_secs()).unwrap_or(i64::MAX);
        let store = self.store.clone();
        let sent = Instant::now();
        let granted = match self.or_stop(store.etcd_leases().grant(ttl_secs)).await {
            None => return Step::Stop,
            Some(Ok(g)) => g,
            Some(Err(e)) => {
                warn!(error = %e, "cannot grant an etcd lease; retrying");
                return self.pause_then(Step::Campaign).await;
            }
        };
        // From here a won-but-unanswered campaign is possible: remember the
        // lease so stepping down or stopping revokes it (and the key with it).
        self.lease = Some(granted.id);
        let record = LeaderRecord {
            id: self.cfg.id.clone(),
            advertise: self.cfg.advertise.clone(),
            elected_unix_ms: now_unix_ms(),
        };
        let value = serde_json::to_vec(&record).expect("LeaderRecord serialises");
        match self
            .or_stop(store.leader_key().campaign(value, granted.id))
            .await
        {
            None => Step::Stop,
            Some(Ok(Campaign::Won { create_revision })) => {
                let lease_ttl = Duration::from_secs(granted.ttl_secs.max(1).unsigned_abs());
                Step::Lead {
                    fence: Fence {
                        key: self.fence_key.clone(),
                        create_revision,
                    },
                    lease: granted.id,
                    lease_ttl,
                    valid_until: self.timings.valid_until(sent, lease_ttl),
                }
            }
            Some(Ok(Campaign::Lost { current, revision })) => {
                self.release_lease().await;
                match current {
                    Some(key) => Step::Follow { key, revision },
                    // Deleted between the compare and the read: try again.
                    None => Step::Campaign,
                }
            }
            Some(Err(e)) => {
                warn!(error = %e, "campaign failed; retrying with a fresh lease");
                self.release_lease().await;
                self.pause_then(Step::Campaign).await
            }
        }
    }

    async fn observe(&mut self) -> Step {
        let store = self.store.clone();
        match self.or_stop(store.leader_key().get_leader()).await {
            None => Step::Stop,
            Some(Ok((Some(key), revision))) => Step::Follow { key, revision },
            Some(Ok((None, _))) => Step::Campaign,
            Some(Err(e)) => {
                warn!(error = %e, "cannot read the leader key; retrying");
                self.pause_then(Step::Observe).await
            }
        }
    }

    fn publish_follower(&self, value: &[u8], create_revision: i64) {
        let leader = serde_json::from_slice::<LeaderRecord>(value).unwrap_or_else(|e| {
            warn!(error = %e, "undecodable leader record; following it without an address");
            LeaderRecord {
                id: String::new(),
                advertise: String::new(),
                elected_unix_ms: 0,
            }
        });
        if !matches!(self.status.role(), Role::Follower { create_revision: r, .. } if r == create_revision)
        {
            info!(leader = %leader.id, advertise = %leader.advertise, fence = create_revision, "following");
        }
        self.status.publish(Role::Follower {
            leader,
            create_revision,
        });
    }

    async fn follow(&mut self, key: LeaderKey, revision: i64) -> Step {
        self.publish_follower(&key.value, key.create_revision);
        let store = self.store.clone();
        let mut watch = match self
            .or_stop(store.leader_key().watch_leader(revision + 1))
            .await
        {
            None => return Step::Stop,
            Some(Ok(w)) => w,
            Some(Err(e)) => {
                warn!(error = %e, "cannot watch the leader key; retrying");
                return self.pause_then(Step::Observe).await;
            }
        };
        loop {
            let changes = match self.or_stop(watch.next()).await {
                None => return Step::Stop,
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    warn!(error = %e, "leader watch broke; re-reading");
                    return self.pause_then(Step::Observe).await;
                }
            };
            for change in changes {
                match change {
                    rackline_store::Change::Delete { .. } => {
                        info!("leader key deleted; campaigning");
                        return Step::Campaign;
                    }
                    rackline_store::Change::Put {
                        value,
                        create_revision,
                        ..
                    } => self.publish_follower(&value, create_revision),
                }
            }
        }
    }

    /// One leadership term. It stays one `select!` loop because the stop,
    /// the lease deadline, the leader-key watch and the keep-alive share
    /// `valid_until` and the stream handles, and the order in which they
    /// are checked (stop, deadline, deposed, refresh) is the safety
    /// argument: it reads best in one place.
    async fn lead(
        &mut self,
        fence: Fence,
        lease: i64,
        lease_ttl: Duration,
        mut valid_until: Instant,
    ) -> Step {
        let t = self.timings;
        info!(id = %self.cfg.id, fence = fence.create_revision, lease, ttl = ?lease_ttl, "elected leader");
        self.status.publish(Role::Leader {
            fence: fence.clone(),
            lease,
            valid_until,
        });
        let store = self.store.clone();
        let mut stop = self.stop.clone();
        let mut keepalive: Option<LeaseKeepAlive> = None;
        let mut watch: Option<LeaderWatch> = None;
        let mut watch_after = Instant::now();
        let mut next_refresh = Instant::now() + t.keepalive_every;
        let why = loop {
            // Decide what happened first, then act on it outside select!
            // (its branch futures, which borrow our state, are gone then).
            let event = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s) => LeadEvent::Stop,
                _ = sleep_until(valid_until) => LeadEvent::Deadline,
                d = watch_deposed(&store, &mut watch, watch_after, &fence) => LeadEvent::Watch(d),
                _ = sleep_until(next_refresh) => LeadEvent::RefreshDue,
            };
            match event {
                LeadEvent::Stop => return Step::Stop,
                LeadEvent::Deadline => break "lease not renewed in time",
                LeadEvent::Watch(Ok(())) => break "leader key deleted or re-created",
                LeadEvent::Watch(Err(e)) => {
                    warn!(error = %e, "leader watch broke; re-opening");
                    watch = None;
                    watch_after = Instant::now() + t.retry;
                }
                LeadEvent::RefreshDue => {
                    let sent = Instant::now();
                    // Never wait past the deadline: by then we step down.
                    let refreshed = self
                        .or_stop(timeout_at(
                            valid_until,
                            refresh(&store, &mut keepalive, lease),
                        ))
                        .await;
                    match refreshed {
                        None => return Step::Stop,
                        Some(Ok(Ok(Some(ttl)))) => {
                            valid_until = t.valid_until(sent, ttl.min(lease_ttl));
                            next_refresh = sent + t.keepalive_every;
                            self.status.publish(Role::Leader {
                                fence: fence.clone(),
                                lease,
                                valid_until,
                            });
                        }
                        Some(Ok(Ok(None))) => break "the lease is gone in etcd",
                        // Transient: the lease provably lives until
                        // valid_until, so retry soon on a new stream.
                        Some(Ok(Err(e))) => {
                            warn!(error = %e, "keep-alive failed; retrying until the lease deadline");
                            keepalive = None;
                            next_refresh = Instant::now() + t.retry;
                        }
                        Some(Err(_)) => break "keep-alive unanswered until the lease deadline",
                    }
                }
            }
        };
        // Permits end now (before etcd would refuse us); the old lease is
        // revoked so our key, if still there, does not block a successor.
        self.status.publish(Role::Campaigning);
        warn!(
            reason = why,
            fence = fence.create_revision,
            "leadership lost; campaigning with a fresh lease"
        );
        self.release_lease().await;
        Step::Campaign
    }
}

enum LeadEvent {
    Stop,
    Deadline,
    Watch(rackline_store::Result<()>),
    RefreshDue,
}

/// One keep-alive on `stream` (opened on first use; opening sends one).
/// `Some(ttl)` while the lease lives, `None` once etcd says it is gone.
async fn refresh(
    store: &Store,
    stream: &mut Option<LeaseKeepAlive>,
    lease: i64,
) -> rackline_store::Result<Option<Duration>> {
    let ttl = match stream {
        Some(s) => s.refresh().await?,
        None => match store.etcd_leases().keep_alive(lease).await? {
            Some(s) => {
                *stream = Some(s);
                // Opening refreshed the lease to its granted TTL.
                Some(i64::MAX)
            }
            None => None,
        },
    };
    Ok(ttl.map(|s| Duration::from_secs(s.max(0).unsigned_abs())))
}

/// Resolves Ok when this leader's key is deleted or re-created by someone
/// else, Err when the watch breaks. Never resolves otherwise.
async fn watch_deposed(
    store: &Store,
    watch: &mut Option<LeaderWatch>,
    after: Instant,
    fence: &Fence,
) -> rackline_store::Result<()> {
    if watch.is_none() {
        sleep_until(after).await;
        // From the revision we won at: a delete right after is not missed.
        *watch = Some(
            store
                .leader_key()
                .watch_leader(fence.create_revision + 1)
                .await?,
        );
    }
    let w = watch.as_mut().expect("opened above");
    loop {
        for change in w.next().await? {
            match change {
                rackline_store::Change::Delete { .. } => return Ok(()),
                rackline_store::Change::Put {
                    create_revision, ..
                } if create_revision != fence.create_revision => return Ok(()),
                rackline_store::Change::Put { .. } => {}
            }
        }
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
