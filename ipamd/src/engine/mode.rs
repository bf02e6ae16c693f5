//! ipamd's view of etcd: online, suspect or offline.
//!
//! A failed etcd call only makes ipamd *suspect* an outage; it does not
//! spend the standby reserve. A prober (one cheap linearizable read with a
//! short timeout, right away and then every `interval` while not online)
//! decides: one success → online; `offline_after_failures` consecutive
//! failures, or `offline_after` spent suspect → offline, where ADD and DEL
//! are served from the reserve and journalled. An allocation that meets a
//! suspect ipamd waits (at most `suspect_wait`) for that verdict before it
//! touches the reserve, so a single slow request on a healthy node costs
//! latency, never a standby address.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rackline_store::StoreError;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::persist;
use crate::netstate::AttachmentKey;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// etcd answers: allocate through it.
    Online,
    /// An etcd call failed; the prober has not decided yet.
    Suspect,
    /// The prober gave up on etcd: serve from the standby reserve.
    Offline,
}

impl Mode {
    /// The label of `rackline_ipamd_mode` (crate::metrics::MODES).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Online => "online",
            Mode::Suspect => "suspect",
            Mode::Offline => "offline",
        }
    }
}

/// How the prober decides (see the module comment).
#[derive(Debug, Clone)]
pub struct ProbePolicy {
    pub interval: Duration,
    pub timeout: Duration,
    pub offline_after_failures: u32,
    pub offline_after: Duration,
    pub suspect_wait: Duration,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(1000),
            offline_after_failures: 3,
            offline_after: Duration::from_secs(5),
            suspect_wait: Duration::from_millis(1500),
        }
    }
}

/// The mode and what led to it.
#[derive(Debug, Clone)]
pub(super) struct ModeInfo {
    pub(super) since: Instant,
    /// Consecutive failed probes since the last success.
    pub(super) failures: u32,
    pub(super) why: String,
}

impl ModeInfo {
    pub(super) fn new() -> Self {
        Self {
            since: Instant::now(),
            failures: 0,
            why: String::new(),
        }
    }
}

/// The outage side of the engine: the explicit online / suspect / offline
/// mode, the journal and the standby reserve's size, the persisted
/// reserve's state, and the offline leases awaiting their check after a
/// replay. Its store-facing operations are [`super::Reserve`]'s.
pub struct Outage {
    mode_tx: watch::Sender<Mode>,
    mode_info: Mutex<ModeInfo>,
    pub(super) probe: ProbePolicy,
    /// The outage journal and the reserve size (0 = no offline operation).
    pub(super) journal: Option<Arc<crate::journal::Journal>>,
    pub(super) standby_target: usize,
    /// Serialises saves of the persisted reserve (engine/persist.rs).
    pub(super) reserve_save: tokio::sync::Mutex<persist::SaveState>,
    /// The cache came from the persisted reserve, not from etcd.
    pub(super) from_persisted: AtomicBool,
    /// A persisted reserve older than this is not used for an offline
    /// start (its records may have been reclaimed meanwhile).
    pub(super) offline_start_max_age: Duration,
    /// Offline leases the last journal replay recorded in etcd (network,
    /// attachment, address), checked against the next snapshot for a
    /// second lease of the same attachment (see `settle_replayed`).
    pub(super) replayed: Mutex<Vec<(String, AttachmentKey, Ipv4Addr)>>,
}

impl Outage {
    pub(super) fn new() -> Self {
        Self {
            // Until etcd has answered once: the prober decides.
            mode_tx: watch::channel(Mode::Suspect).0,
            mode_info: Mutex::new(ModeInfo::new()),
            probe: ProbePolicy::default(),
            journal: None,
            standby_target: 0,
            reserve_save: tokio::sync::Mutex::new(persist::SaveState::default()),
            from_persisted: AtomicBool::new(false),
            offline_start_max_age: Duration::from_secs(3600),
            replayed: Mutex::new(Vec::new()),
        }
    }

    pub fn mode(&self) -> Mode {
        *self.mode_tx.borrow()
    }

    /// Changes of mode (the prober and waiting allocations follow it).
    pub fn mode_changes(&self) -> watch::Receiver<Mode> {
        self.mode_tx.subscribe()
    }

    fn mode_info(&self) -> std::sync::MutexGuard<'_, ModeInfo> {
        self.mode_info.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long ipamd has been in its mode, and why (for /readyz, STATUS).
    pub fn mode_detail(&self) -> String {
        let info = self.mode_info().clone();
        let mode = self.mode();
        let secs = info.since.elapsed().as_secs();
        match mode {
            Mode::Online => format!("etcd answers (online for {secs}s)"),
            Mode::Suspect => format!(
                "an etcd call failed, probing (suspect for {secs}s, {} failed probe(s), last error: {})",
                info.failures, info.why
            ),
            Mode::Offline => format!(
                "etcd is unreachable (offline for {secs}s, {} failed probe(s), last error: {})",
                info.failures, info.why
            ),
        }
    }

    fn set_mode(&self, to: Mode, why: &str) {
        let mut info = self.mode_info();
        let from = self.mode();
        if from == to {
            return;
        }
        let was = info.since.elapsed();
        info.since = Instant::now();
        if to == Mode::Online {
            info.failures = 0;
            info.why.clear();
        } else if from == Mode::Online {
            info.failures = 0;
            info.why = why.to_string();
        }
        self.mode_tx.send_replace(to);
        drop(info);
        match to {
            Mode::Online => {
                info!(from = from.as_str(), after = ?was, "etcd answers: online")
            }
            Mode::Suspect => {
                warn!(%why, "an etcd call failed: suspect, probing etcd before using the standby reserve")
            }
            Mode::Offline => {
                warn!(%why, suspect_for = ?was, "etcd is unreachable: offline, serving from the standby reserve")
            }
        }
    }

    /// An etcd call succeeded.
    pub fn note_reachable(&self) {
        if self.mode() != Mode::Online {
            self.set_mode(Mode::Online, "");
        }
    }

    /// An etcd call failed: online → suspect (the prober decides the rest).
    pub fn note_unreachable(&self, why: &str) {
        if self.mode() == Mode::Online {
            self.set_mode(Mode::Suspect, why);
        }
    }

    /// Offline without asking the prober (start-up from the persisted
    /// reserve, tests).
    pub fn set_offline(&self, why: &str) {
        if self.mode() != Mode::Offline {
            if self.mode() == Mode::Online {
                self.set_mode(Mode::Suspect, why);
            }
            self.set_mode(Mode::Offline, why);
        }
    }

    /// Whether etcd is believed to answer (online).
    pub fn etcd_ok(&self) -> bool {
        self.mode() == Mode::Online
    }

    /// For a request that found ipamd suspect: waits (bounded) for the
    /// prober's verdict. Online = go through etcd; anything else = use the
    /// reserve.
    pub(crate) async fn await_verdict(&self) -> Mode {
        let mut rx = self.mode_changes();
        let decided = tokio::time::timeout(
            self.probe.suspect_wait,
            rx.wait_for(|m| *m != Mode::Suspect),
        )
        .await;
        match decided {
            Ok(Ok(m)) => *m,
            _ => {
                debug!(wait = ?self.probe.suspect_wait, "no verdict on etcd in time: using the reserve");
                Mode::Offline
            }
        }
    }

    /// Applies one probe's outcome.
    pub(super) fn probed(&self, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.note_reachable(),
            Err(e) => {
                let mut info = self.mode_info();
                info.failures += 1;
                info.why = e;
                let (failures, since) = (info.failures, info.since);
                let why = info.why.clone();
                drop(info);
                debug!(failures, "etcd probe failed: {why}");
                if self.mode() == Mode::Suspect
                    && (failures >= self.probe.offline_after_failures
                        || since.elapsed() >= self.probe.offline_after)
                {
                    self.set_mode(
                        Mode::Offline,
                        &format!("{failures} probe(s) failed, last: {why}"),
                    );
                }
            }
        }
    }

    /// A failed store call may mean etcd is away: suspect it.
    pub(super) fn note_store_error(&self, e: &StoreError) {
        if let StoreError::Unavailable(m) = e {
            self.note_unreachable(m);
        }
    }

    /// Whether the cache came from the persisted reserve rather than etcd
    /// (requests are then served offline until a snapshot replaces it).
    pub fn from_persisted(&self) -> bool {
        self.from_persisted.load(Ordering::Relaxed)
    }

    /// Whether offline operation is configured (a journal is kept).
    pub(super) fn journaling(&self) -> bool {
        self.journal.is_some()
    }

    pub fn has_journal_entries(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| !j.is_empty())
    }

    /// Entries waiting in the journal (metrics).
    pub(super) fn journal_depth(&self) -> u64 {
        self.journal.as_ref().map_or(0, |j| j.len() as u64)
    }
}
