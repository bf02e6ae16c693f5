//! Leader election among netmaster replicas, and the write fence it yields.
//!
//! Every replica runs one [`Election`]: an owned driver task moving through
//! an explicit state machine,
//!
//! ```text
//!            won the create-if-absent txn
//! Campaigning ─────────────────────────────▶ Leader{fence R, lease, valid_until}
//!     ▲  │ key exists                           │ keep-alive every TTL/3 moves valid_until;
//!     │  ▼                                      │ valid_until passed, lease gone, or key
//!   Follower{leader record} ◀── put ──┐         │ deleted/re-created → step down
//!     │  ▲                            │         │ (revoke the old lease, fresh one next)
//!     │  └────────────────────────────┘         ▼
//!     └──── key deleted (watch) ───────────▶ Campaigning
//! any state ── shutdown ──▶ Stopped (the lease is revoked: a follower takes over at once)
//! ```
//!
//! Safety does not rest on this process's view of time: every ownership
//! write carries `create_revision(leader) == R` ([`rackline_store::Fence`]),
//! so a deposed leader's writes fail in etcd whatever it believes. The local
//! deadline only makes a leader stop *before* etcd would refuse it: a lease
//! refreshed by a keep-alive sent at `t` lives at least until `t + TTL` on
//! etcd's clock (etcd restarts the TTL when it processes the request, which
//! is after `t`), so permits end at `t + TTL - margin`. Checking that
//! deadline in [`WriteFence::permit`] itself, not only in the driver, also
//! covers a process that was frozen (SIGSTOP, a long GC-like stall): the
//! first request after it thaws is refused even before the driver runs.

use std::sync::Arc;
use std::time::Duration;

use rackline_store::{Fence, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::admin::{AdminError, LeaderView, WriteFence, WritePermit};

mod driver;
use driver::Driver;

/// The leader key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderRecord {
    pub id: String,
    /// host:port where the leader serves gRPC.
    pub advertise: String,
    pub elected_unix_ms: i64,
}

#[derive(Debug, Clone)]
pub struct ElectionConfig {
    /// This replica's name in the leader record (unique per process).
    pub id: String,
    /// host:port clients reach this replica at.
    pub advertise: String,
    /// The etcd lease TTL (whole seconds, at least 1).
    pub ttl: Duration,
}

/// Derived timings; all follow from the TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    pub ttl: Duration,
    /// Keep-alive period: TTL/3, so two keep-alives may fail in a row
    /// before the lease is at risk.
    pub keepalive_every: Duration,
    /// Permits stop this long before the lease could expire: absorbs
    /// clock-rate differences between this host and etcd.
    pub margin: Duration,
    /// Pause after a failed etcd call before the next attempt.
    pub retry: Duration,
}

impl Timings {
    pub fn for_ttl(ttl: Duration) -> Self {
        let ttl = ttl.max(Duration::from_secs(1));
        Self {
            ttl,
            keepalive_every: ttl / 3,
            margin: (ttl / 6).max(Duration::from_millis(100)),
            retry: (ttl / 6).clamp(Duration::from_millis(50), Duration::from_millis(500)),
        }
    }

    /// Until when a lease of `ttl` refreshed by a request sent at `sent` is
    /// certainly alive in etcd, minus the margin.
    pub fn valid_until(&self, sent: Instant, ttl: Duration) -> Instant {
        sent + ttl.min(self.ttl).saturating_sub(self.margin)
    }
}

/// Where this replica stands. Published through a watch channel: the write
/// path reads it on every permit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// No leader known (starting, or the key was just deleted): electing.
    Campaigning,
    /// Another replica holds the leader key (or this replica's own previous,
    /// lapsed term does, until its lease expires).
    Follower {
        leader: LeaderRecord,
        create_revision: i64,
    },
    /// This replica holds the leader key; writes are permitted until
    /// `valid_until`.
    Leader {
        fence: Fence,
        lease: i64,
        valid_until: Instant,
    },
    /// Shut down; terminal.
    Stopped,
}

/// The read side of an election: the write fence and the leader view.
#[derive(Clone)]
pub struct ElectionStatus {
    id: String,
    advertise: String,
    role: Arc<watch::Sender<Role>>,
}

impl ElectionStatus {
    /// A status frozen in `role` (tests, tools).
    pub fn fixed(id: &str, advertise: &str, role: Role) -> Self {
        Self {
            id: id.to_string(),
            advertise: advertise.to_string(),
            role: Arc::new(watch::Sender::new(role)),
        }
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Notified on every role change (the webhook sink runs while leading).
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// Sets the role unless the election was stopped (terminal).
    fn publish(&self, role: Role) {
        self.role.send_if_modified(|r| {
            if *r == Role::Stopped || *r == role {
                return false;
            }
            *r = role;
            true
        });
    }
}

impl WriteFence for ElectionStatus {
    fn permit(&self) -> Result<WritePermit, AdminError> {
        let refuse = |why: String| Err(AdminError::NotPermitted(why));
        match &*self.role.borrow() {
            Role::Leader {
                fence, valid_until, ..
            } if Instant::now() < *valid_until => Ok(WritePermit::leader(fence.clone())),
            Role::Leader { .. } => {
                refuse("leadership lapsed (lease not renewed in time); electing a leader".into())
            }
            Role::Follower { leader, .. }
                if leader.id == self.id || leader.advertise.is_empty() =>
            {
                refuse("no leader elected yet (the previous leader's lease has not expired)".into())
            }
            // Clients retry at the leader: the gRPC adapter turns this
            // into the typed redirect (rackline_admin_client::redirect).
            Role::Follower { leader, .. } => Err(AdminError::NotLeader {
                leader: leader.advertise.clone(),
            }),
            Role::Campaigning => refuse("no leader elected yet".into()),
            Role::Stopped => refuse("this netmaster is shutting down".into()),
        }
    }

    fn leader(&self) -> Result<LeaderView, AdminError> {
        match &*self.role.borrow() {
            Role::Leader { valid_until, .. } if Instant::now() < *valid_until => Ok(LeaderView {
                id: self.id.clone(),
                advertise: self.advertise.clone(),
                is_self: true,
            }),
            Role::Follower { leader, .. } if leader.id != self.id => Ok(LeaderView {
                id: leader.id.clone(),
                advertise: leader.advertise.clone(),
                is_self: false,
            }),
            _ => Err(AdminError::NotPermitted("no leader elected yet".into())),
        }
    }
}

/// One replica's candidacy: owns the driver task (aborted on drop).
pub struct Election {
    status: ElectionStatus,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Election {
    /// Starts campaigning at once (needs a tokio runtime).
    pub fn start(store: Store, cfg: ElectionConfig) -> Self {
        let status = ElectionStatus {
            id: cfg.id.clone(),
            advertise: cfg.advertise.clone(),
            role: Arc::new(watch::Sender::new(Role::Campaigning)),
        };
        let (stop, stop_rx) = watch::channel(false);
        let driver = Driver {
            fence_key: store.keys().leader(),
            store,
            timings: Timings::for_ttl(cfg.ttl),
            cfg,
            status: status.clone(),
            stop: stop_rx,
            lease: None,
        };
        let task = tokio::spawn(driver.run());
        Self {
            status,
            stop,
            task: Some(task),
        }
    }

    pub fn status(&self) -> ElectionStatus {
        self.status.clone()
    }

    /// Waits (bounded) until this replica leads or knows who does.
    pub async fn settled(&self, within: Duration) -> bool {
        let mut rx = self.status.role.subscribe();
        let settled = |r: &Role| matches!(r, Role::Leader { .. } | Role::Follower { .. });
        let settled = matches!(
            tokio::time::timeout(within, rx.wait_for(settled)).await,
            Ok(Ok(_))
        );
        settled
    }

    /// Stops granting permits at once, then lets the driver revoke its lease
    /// (so another replica leads without waiting for the TTL); aborts it if
    /// that takes longer than `within`.
    pub async fn shutdown(mut self, within: Duration) {
        self.status.role.send_replace(Role::Stopped);
        self.stop.send_replace(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(within, &mut task).await.is_err() {
                warn!("election did not stop in time; abandoning its lease to expire");
                task.abort();
            }
        }
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence() -> Fence {
        Fence {
            key: "/r/v1/netmaster/leader".into(),
            create_revision: 42,
        }
    }

    fn record(id: &str, advertise: &str) -> LeaderRecord {
        LeaderRecord {
            id: id.into(),
            advertise: advertise.into(),
            elected_unix_ms: 1,
        }
    }

    /// The leader a client would be redirected to by this refusal.
    fn hint(e: &AdminError) -> Option<String> {
        rackline_admin_client::redirect::leader_of(&crate::server::status_of(e))
    }

    #[test]
    fn hint_round_trips_through_the_refusal() {
        let s = ElectionStatus::fixed(
            "b",
            "10.10.0.4:7650",
            Role::Follower {
                leader: record("a", "10.10.0.3:7650"),
                create_revision: 7,
            },
        );
        let e = s.permit().unwrap_err();
        assert!(matches!(&e, AdminError::NotLeader { leader } if leader == "10.10.0.3:7650"));
        assert_eq!(
            e.to_string(),
            "this netmaster may not write: not the leader; leader is 10.10.0.3:7650"
        );
        assert_eq!(hint(&e).as_deref(), Some("10.10.0.3:7650"));
        let v = s.leader().unwrap();
        assert_eq!((v.id.as_str(), v.is_self), ("a", false));
    }

    #[test]
    fn only_a_leader_within_its_deadline_gets_a_permit() {
        let leading = |valid_until| {
            ElectionStatus::fixed(
                "a",
                "h:1",
                Role::Leader {
                    fence: fence(),
                    lease: 9,
                    valid_until,
                },
            )
        };
        let p = leading(Instant::now() + Duration::from_secs(5))
            .permit()
            .unwrap();
        assert_eq!(p.fence(), Some(&fence()));
        // A frozen process wakes past its deadline: refused before the
        // driver has run, and with no hint (it does not know who leads).
        let lapsed = leading(Instant::now() - Duration::from_millis(1));
        let e = lapsed.permit().unwrap_err();
        assert!(e.to_string().contains("lapsed"), "{e}");
        assert_eq!(hint(&e), None);
        assert!(lapsed.leader().is_err());

        for role in [Role::Campaigning, Role::Stopped] {
            let s = ElectionStatus::fixed("a", "h:1", role);
            assert!(s.permit().is_err());
            assert!(s.leader().is_err());
        }
        // Our own previous term still holding the key is not a leader to
        // send clients to.
        let own = ElectionStatus::fixed(
            "a",
            "h:1",
            Role::Follower {
                leader: record("a", "h:1"),
                create_revision: 3,
            },
        );
        assert_eq!(hint(&own.permit().unwrap_err()), None);
    }

    #[test]
    fn stopped_is_terminal() {
        let s = ElectionStatus::fixed("a", "h:1", Role::Stopped);
        s.publish(Role::Campaigning);
        assert_eq!(s.role(), Role::Stopped);
    }

    #[test]
    fn timings_follow_the_ttl() {
        let t = Timings::for_ttl(Duration::from_secs(3));
        assert_eq!(t.keepalive_every, Duration::from_secs(1));
        assert_eq!(t.margin, Duration::from_millis(500));
        let now = Instant::now();
        assert_eq!(
            t.valid_until(now, Duration::from_secs(3)),
            now + Duration::from_millis(2500)
        );
        // etcd may grant more than asked; the deadline never trusts more
        // than what we asked for.
        assert_eq!(
            t.valid_until(now, Duration::from_secs(10)),
            now + Duration::from_millis(2500)
        );
        let t = Timings::for_ttl(Duration::from_secs(2));
        assert!(t.keepalive_every < t.ttl - t.margin);
    }
}
