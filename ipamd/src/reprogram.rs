//! Re-programming pod packet filters in place when ACLs, a network's
//! default or NetworkPolicy data change.
//!
//! ipamd learns each attachment's namespace path from Allocate and keeps it
//! in a small record per attachment under `<runtime dir>/filters/` (tmpfs,
//! node-local like the namespaces themselves), so a restarted ipamd still
//! knows where every pod lives. Release forgets the record.
//!
//! The namespace work runs on ONE dedicated OS thread (`rackline-filters`),
//! never on a tokio worker: it opens each pod's nf_tables socket through a
//! short-lived thread that enters the namespace and exits
//! (`rackline_netlink::netns::run_in_netns`), then talks netlink from the
//! dedicated thread. The async side only decides what to re-program.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::filter::PodFilter;
use rackline_model::PodRef;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::filter::Filters;

/// One attachment whose filter ipamd keeps up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    pub pod: PodRef,
    pub address: Ipv4Addr,
}

impl AttachmentRecord {
    fn file_name(network: &str, container_id: &str, ifname: &str) -> String {
        // Network names are DNS labels; container ids and ifnames are
        // validated by Allocate (no '/'), so this is a single path element.
        format!("{network}@{container_id}@{ifname}.json")
    }
}

/// The records on disk, and a wake-up for the re-programmer when one is
/// added (a new pod needs no re-programming — the plugin programs it — but
/// it must be known for the next change).
#[derive(Debug)]
pub struct Attachments {
    dir: PathBuf,
    added: tokio::sync::Notify,
}

impl Attachments {
    pub fn new(runtime_dir: &Path) -> Arc<Self> {
        Arc::new(Attachments {
            dir: runtime_dir.join("filters"),
            added: tokio::sync::Notify::new(),
        })
    }

    /// Records (or updates) where an attachment lives. Failure is logged,
    /// not fatal: the pod is programmed by its plugin anyway, only later
    /// changes would miss it.
    pub fn record(&self, r: &AttachmentRecord) {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let name = AttachmentRecord::file_name(&r.network, &r.container_id, &r.ifname);
            let tmp = self.dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec(r).expect("record serialises"))?;
            std::fs::rename(&tmp, self.dir.join(name))
        };
        if let Err(e) = write() {
            warn!(dir = %self.dir.display(), "cannot record the attachment's namespace (its filter will not follow policy changes): {e}");
        }
        self.added.notify_one();
    }

    pub fn forget(&self, network: &str, container_id: &str, ifname: &str) {
        let path = self
            .dir
            .join(AttachmentRecord::file_name(network, container_id, ifname));
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(path = %path.display(), "cannot remove an attachment record: {e}"),
        }
    }

    pub fn list(&self) -> Vec<AttachmentRecord> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            match std::fs::read(&p).map(|b| serde_json::from_slice::<AttachmentRecord>(&b)) {
                Ok(Ok(r)) => out.push(r),
                Ok(Err(e)) => {
                    warn!(path = %p.display(), "ignoring an undecodable attachment record: {e}")
                }
                Err(e) => warn!(path = %p.display(), "cannot read an attachment record: {e}"),
            }
        }
        out
    }
}

/// Work for the namespace thread.
enum Job {
    /// Make the attachment's table match `filter` (allow-all: no table).
    Apply(Box<(AttachmentRecord, PodFilter)>),
    /// Read every listed attachment's drop counters.
    ReadDrops(Vec<AttachmentRecord>),
}

/// The outcome of one Apply, reported back to the async side.
#[derive(Debug)]
struct Applied {
    key: String,
    ok: bool,
    gone: bool,
}

fn key_of(r: &AttachmentRecord) -> String {
    AttachmentRecord::file_name(&r.network, &r.container_id, &r.ifname)
}

/// The dedicated thread: blocking netlink only, never a tokio worker.
fn namespace_thread(
    jobs: std_mpsc::Receiver<Job>,
    done: tokio::sync::mpsc::UnboundedSender<Applied>,
    metrics: Option<Arc<crate::metrics::IpamMetrics>>,
) {
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Apply(job) => apply_one(*job, &done, metrics.as_deref()),
            Job::ReadDrops(list) => read_drops(list, metrics.as_deref()),
        }
    }
}

/// Re-programs one attachment's table and reports the outcome.
fn apply_one(
    job: (AttachmentRecord, PodFilter),
    done: &tokio::sync::mpsc::UnboundedSender<Applied>,
    metrics: Option<&crate::metrics::IpamMetrics>,
) {
    let (r, f) = job;
    let key = key_of(&r);
    let ns = match rackline_netlink::netns::Netns::open(&r.netns) {
        Ok(ns) => ns,
        Err(e) => {
            // The pod is gone (DEL pending) or never existed here.
            debug!(netns = %r.netns.display(), "attachment namespace unavailable: {e}");
            let _ = done.send(Applied {
                key,
                ok: false,
                gone: true,
            });
            return;
        }
    };
    let started = std::time::Instant::now();
    let res = rackline_nft::PodTable::open(&ns, &r.ifname, r.address).and_then(|mut t| {
        // Least change: a peer-set membership change is an
        // element update (rules and drop counters kept).
        t.apply(&f)
    });
    let ok = match res {
        Ok(how) => {
            if how != rackline_nft::Applied::Unchanged {
                info!(network = %r.network, pod = %r.pod.display(), ifname = %r.ifname, ?how, took = ?started.elapsed(), "pod packet filter re-programmed");
                if let Some(m) = metrics {
                    m.filter_updated(true);
                }
            }
            true
        }
        Err(e) => {
            warn!(network = %r.network, pod = %r.pod.display(), ifname = %r.ifname, "re-programming the pod packet filter: {e}");
            if let Some(m) = metrics {
                m.filter_updated(false);
            }
            false
        }
    };
    let _ = done.send(Applied {
        key,
        ok,
        gone: false,
    });
}

/// Sums every listed attachment's drop counters into the metrics.
fn read_drops(list: Vec<AttachmentRecord>, metrics: Option<&crate::metrics::IpamMetrics>) {
    let (mut ingress, mut egress) = (0u64, 0u64);
    for r in list {
        let Ok(ns) = rackline_netlink::netns::Netns::open(&r.netns) else {
            continue;
        };
        if let Ok(Some(d)) =
            rackline_nft::PodTable::open(&ns, &r.ifname, r.address).and_then(|mut t| t.drops())
        {
            ingress += d.ingress;
            egress += d.egress;
        }
    }
    if let Some(m) = metrics {
        m.filter_drops(ingress, egress);
    }
}

/// How often the drop counters are read.
const DROPS_INTERVAL: Duration = Duration::from_secs(15);
/// A new attachment is verified this long after its Allocate: by then its
/// plugin has programmed it, and a policy change that raced with the ADD
/// is caught.
const SETTLE_NEW: Duration = Duration::from_secs(2);
/// A failed re-programming is retried this often.
const RETRY: Duration = Duration::from_secs(2);
/// Changes arriving together (an ACL and its default, a burst of pod
/// events) are applied in one round.
const SETTLE: Duration = Duration::from_millis(50);

/// Keeps every recorded attachment's table equal to its current filter.
/// `alive(network, container_id, ifname)` tells whether the lease still
/// exists (a record whose lease is gone is forgotten).
///
/// Stays long on purpose: the `select!` loop and its flags (`round`,
/// `deferred`, `failed`, `new_at`) form one state machine; the round itself
/// is `send_changed`, the blocking work `namespace_thread`.
pub async fn run<F, Fut>(
    filters: Arc<Filters>,
    attachments: Arc<Attachments>,
    metrics: Option<Arc<crate::metrics::IpamMetrics>>,
    alive: F,
    mut shutdown: watch::Receiver<bool>,
) where
    F: Fn(AttachmentRecord) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (job_tx, job_rx) = std_mpsc::channel::<Job>();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let thread = std::thread::Builder::new()
        .name("rackline-filters".into())
        .spawn(move || namespace_thread(job_rx, done_tx, metrics));
    if let Err(e) = thread {
        warn!(
            "cannot start the packet filter thread (filters will not follow policy changes): {e}"
        );
        return;
    }
    let mut changes = filters.subscribe();
    // What each attachment was last made to match; re-sent only on change.
    // Empty at start: the first round verifies every table (a restarted
    // ipamd may have missed changes).
    let mut applied: BTreeMap<String, PodFilter> = BTreeMap::new();
    let mut drops = tokio::time::interval(DROPS_INTERVAL);
    let mut retry = tokio::time::interval(RETRY);
    let mut failed = false;
    let mut deferred = false;
    let mut new_at: Option<tokio::time::Instant> = None;
    let mut round = true;
    loop {
        if round && !filters.netpol_synced() {
            // Until the NetworkPolicy caches are listed the provider says
            // allow-all for every pod: re-assembling now would strip the
            // policy layer off protected pods. Tables stay as they are; the
            // sync itself wakes this loop up (and the retry tick re-checks).
            round = false;
            deferred = true;
        }
        if round {
            round = false;
            deferred = false;
            if !send_changed(&filters, &attachments, &alive, &mut applied, &job_tx).await {
                return;
            }
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                tokio::time::sleep(SETTLE).await;
                changes.borrow_and_update();
                round = true;
            }
            Some(a) = done_rx.recv() => {
                if a.gone || !a.ok {
                    // Verified again on the next round.
                    applied.remove(&a.key);
                    failed |= !a.gone;
                }
            }
            _ = retry.tick() => {
                round = std::mem::take(&mut failed) || deferred;
            }
            _ = attachments.added.notified() => {
                new_at = Some(tokio::time::Instant::now() + SETTLE_NEW);
            }
            _ = async { tokio::time::sleep_until(new_at.unwrap_or_else(tokio::time::Instant::now)).await }, if new_at.is_some() => {
                new_at = None;
                round = true;
            }
            _ = drops.tick() => {
                let _ = job_tx.send(Job::ReadDrops(attachments.list()));
            }
        }
    }
}

/// One round: sends every attachment whose filter differs from what it was
/// last made to match to the namespace thread, forgetting those whose lease
/// is gone. False once the thread has stopped.
async fn send_changed<F, Fut>(
    filters: &Filters,
    attachments: &Attachments,
    alive: &F,
    applied: &mut BTreeMap<String, PodFilter>,
    job_tx: &std_mpsc::Sender<Job>,
) -> bool
where
    F: Fn(AttachmentRecord) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for r in attachments.list() {
        let key = key_of(&r);
        let f = filters.pod_filter(&r.network, &r.pod, r.address);
        if applied.get(&key) == Some(&f) {
            continue;
        }
        if !alive(r.clone()).await {
            attachments.forget(&r.network, &r.container_id, &r.ifname);
            applied.remove(&key);
            continue;
        }
        applied.insert(key, f.clone());
        if job_tx.send(Job::Apply(Box::new((r, f)))).is_err() {
            return false;
        }
    }
    true
}
