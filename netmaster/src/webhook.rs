//! The webhook sink: while this replica leads, it POSTs the IP event stream
//! in batches (JSON) to `--webhook-url`, retrying with exponential backoff
//! until the receiver answers 2xx. Delivery is at least once:
//!
//! - the cursor (the next etcd revision to deliver) lives in etcd and is
//!   written by the leader only after the receiver acknowledged everything
//!   before it, in a transaction fenced by the leadership that delivered
//!   (a deposed leader cannot move it);
//! - a new leader, or a restarted one, resumes from the stored cursor, so it
//!   may send again what the previous leader sent without recording, but it
//!   skips nothing;
//! - a batch never splits one etcd revision, so the cursor always sits on a
//!   revision boundary;
//! - a cursor etcd has compacted away is a gap: logged at error, counted
//!   (`rackline_netmaster_webhook_gaps_total`) and POSTed to the receiver as
//!   a `gap` notice before delivery resumes at the oldest revision left.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rackline_model::LeaseEvent;
use rackline_store::{EventsError, Fence, LeaderStore, StoreError, WebhookCursor};
use serde::Serialize;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::events::{Batch, EventSource};
use crate::leader::{ElectionStatus, Role};
use crate::metrics::NetmasterMetrics;

/// An idle cursor (heartbeats only) is written at most this often.
const IDLE_CURSOR_EVERY: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: hyper::Uri,
    /// Deadline of one POST (connect + answer).
    pub timeout: Duration,
    /// Events per POST at most (a single revision with more is sent whole).
    pub batch_max: usize,
    /// First retry delay; doubles per failure up to `backoff_max`.
    pub backoff: Duration,
    pub backoff_max: Duration,
    /// Extra CA certificates (PEM) for an https receiver.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("--webhook-url {0:?}: {1}")]
    Url(String, String),
    #[error("--webhook-ca-file {path}: {why}")]
    Ca { path: PathBuf, why: String },
}

/// Parses and checks `--webhook-url` (http or https, with a host).
pub fn parse_url(s: &str) -> Result<hyper::Uri, WebhookError> {
    let uri: hyper::Uri = s
        .parse()
        .map_err(|e| WebhookError::Url(s.into(), format!("{e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(WebhookError::Url(
                s.into(),
                "use http:// or https://".into(),
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(WebhookError::Url(s.into(), "no host".into()));
    }
    Ok(uri)
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client(cfg: &WebhookConfig) -> Result<HttpClient, WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = hyper_rustls::HttpsConnectorBuilder::new();
    let builder = match &cfg.ca_file {
        None => builder
            .with_provider_and_native_roots(provider)
            .map_err(|e| WebhookError::Ca {
                path: "<system roots>".into(),
                why: e.to_string(),
            })?,
        Some(path) => {
            use rustls::pki_types::pem::PemObject;
            let bad = |why: String| WebhookError::Ca {
                path: path.clone(),
                why,
            };
            let mut roots = rustls::RootCertStore::empty();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| bad(e.to_string()))?;
            for c in certs {
                roots
                    .add(c.map_err(|e| bad(e.to_string()))?)
                    .map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in the file".into()));
            }
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| bad(e.to_string()))?
                .with_root_certificates(roots)
                .with_no_client_auth();
            builder.with_tls_config(config)
        }
    };
    let https = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

/// One POST body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    /// The replica that sent it.
    netmaster: &'a str,
    /// Set on a gap notice: events between these revisions are lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    gap: Option<Gap>,
    events: &'a [LeaseEvent],
    /// The cursor after this batch: resume here.
    next_revision: i64,
}

#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase")]
struct Gap {
    from_revision: i64,
    compact_revision: i64,
}

pub struct Sink {
    cfg: WebhookConfig,
    http: HttpClient,
    source: EventSource,
    status: ElectionStatus,
    metrics: Arc<NetmasterMetrics>,
    id: String,
}

/// Why a pause ended early: the process stops, or leadership went.
fn stopped(shutdown: &watch::Receiver<bool>) -> Stop {
    if *shutdown.borrow() {
        Stop::Shutdown
    } else {
        Stop::Deposed
    }
}

/// Why a delivery round ended.
enum Stop {
    /// Not (or no longer) the leader that started it.
    Deposed,
    Shutdown,
}

impl Sink {
    pub fn new(
        cfg: WebhookConfig,
        source: EventSource,
        status: ElectionStatus,
        metrics: Arc<NetmasterMetrics>,
        id: String,
    ) -> Result<Self, WebhookError> {
        let http = client(&cfg)?;
        Ok(Self {
            cfg,
            http,
            source,
            status,
            metrics,
            id,
        })
    }

    fn url(&self) -> String {
        self.cfg.url.to_string()
    }

    /// Runs until `shutdown`: delivers while this replica leads.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut roles = self.status.subscribe();
        loop {
            let fence = match self.status.role() {
                Role::Leader { fence, .. } => Some(fence),
                Role::Stopped => return,
                _ => None,
            };
            if let Some(fence) = fence {
                info!(url = %self.url(), "webhook sink: leading, delivering events");
                match self.deliver(&fence, &mut shutdown).await {
                    Stop::Shutdown => return,
                    Stop::Deposed => {
                        info!("webhook sink: no longer the leader; stopped delivering");
                        self.metrics.webhook_cursor(0);
                    }
                }
            }
            tokio::select! {
                r = roles.changed() => if r.is_err() { return },
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    fn still_leading(&self, fence: &Fence) -> bool {
        matches!(self.status.role(), Role::Leader { fence: f, .. } if &f == fence)
    }

    async fn write_cursor(&self, fence: &Fence, next: i64) -> Result<(), StoreError> {
        let c = WebhookCursor {
            next_revision: next,
            url: self.url(),
            updated_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
                .unwrap_or(0),
        };
        LeaderStore::fenced(self.source.store().clone(), fence.clone())
            .put_webhook_cursor(&c)
            .await?;
        self.metrics.webhook_cursor(next);
        Ok(())
    }

    /// Where to start: the stored cursor (same URL), else the next revision
    /// (recorded at once, so a failover right now skips nothing either).
    async fn start(&self, fence: &Fence) -> Result<i64, StoreError> {
        if let Some(c) = self.source.store().events().webhook_cursor().await? {
            if c.url == self.url() {
                return Ok(c.next_revision);
            }
            info!(old = %c.url, new = %self.url(), "webhook URL changed: delivering from now on");
        }
        let next = self.source.store().events().current_revision().await? + 1;
        self.write_cursor(fence, next).await?;
        Ok(next)
    }

    /// Delivers from the cursor on, for as long as this replica leads. One
    /// loop over the event stream: each kind of item (events, a progress
    /// mark, a compaction gap, a broken stream) moves the cursor its own
    /// way, and all of them share the stream, the cursor and its timer.
    async fn deliver(&self, fence: &Fence, shutdown: &mut watch::Receiver<bool>) -> Stop {
        let mut roles = self.status.subscribe();
        let mut next = match self.first_revision(fence, shutdown, &mut roles).await {
            Ok(n) => n,
            Err(stop) => return stop,
        };
        self.metrics.webhook_cursor(next);
        let mut last_written = tokio::time::Instant::now();
        'stream: loop {
            let mut rx = self.source.subscribe(next, true);
            loop {
                let item = tokio::select! {
                    item = rx.recv() => item,
                    r = roles.changed() => {
                        if r.is_err() || !self.still_leading(fence) { return Stop::Deposed }
                        continue;
                    }
                    _ = shutdown.wait_for(|s| *s) => return Stop::Shutdown,
                };
                let Some(item) = item else {
                    // The subscription ended without an error: re-open.
                    continue 'stream;
                };
                match item {
                    Ok(Batch::Events { revision, events }) => {
                        let (batch, last, mark) = self.gather(&mut rx, events, revision);
                        if let Some(stop) = self
                            .post(fence, None, &batch, last + 1, shutdown, &mut roles)
                            .await
                        {
                            return stop;
                        }
                        next = mark.unwrap_or(last) + 1;
                        match self.write_cursor(fence, next).await {
                            Ok(()) => last_written = tokio::time::Instant::now(),
                            Err(StoreError::Fenced { .. }) => return Stop::Deposed,
                            // Not written: the next success writes a later
                            // one; a failover meanwhile re-sends (at least
                            // once), never skips.
                            Err(e) => warn!("webhook sink: cannot record its cursor: {e}"),
                        }
                    }
                    Ok(Batch::Progress(r)) => {
                        next = r + 1;
                        if last_written.elapsed() >= IDLE_CURSOR_EVERY {
                            match self.write_cursor(fence, next).await {
                                Ok(()) => last_written = tokio::time::Instant::now(),
                                Err(StoreError::Fenced { .. }) => return Stop::Deposed,
                                Err(e) => debug!("webhook sink: idle cursor not recorded: {e}"),
                            }
                        } else {
                            self.metrics.webhook_cursor(next);
                        }
                    }
                    Err(EventsError::Compacted {
                        requested,
                        compact_revision,
                    }) => {
                        error!(
                            from_revision = requested,
                            compact_revision,
                            "webhook sink: events were compacted away before delivery; telling the receiver and resuming at the oldest revision left"
                        );
                        self.metrics.webhook_gap();
                        let gap = Gap {
                            from_revision: requested,
                            compact_revision,
                        };
                        if let Some(stop) = self
                            .post(
                                fence,
                                Some(gap),
                                &[],
                                compact_revision,
                                shutdown,
                                &mut roles,
                            )
                            .await
                        {
                            return stop;
                        }
                        next = compact_revision;
                        match self.write_cursor(fence, next).await {
                            Err(StoreError::Fenced { .. }) => return Stop::Deposed,
                            Err(e) => warn!("webhook sink: cannot record its cursor: {e}"),
                            Ok(()) => last_written = tokio::time::Instant::now(),
                        }
                        continue 'stream;
                    }
                    Err(EventsError::Store(e)) => {
                        warn!("webhook sink: event stream failed (re-opening at {next}): {e}");
                        if self
                            .pause(self.cfg.backoff, shutdown, &mut roles)
                            .await
                            .is_some()
                        {
                            return stopped(shutdown);
                        }
                        continue 'stream;
                    }
                }
            }
        }
    }

    /// Where delivery starts (see `start`), retrying through etcd trouble
    /// with a growing backoff; Err when leadership or the process ends.
    async fn first_revision(
        &self,
        fence: &Fence,
        shutdown: &mut watch::Receiver<bool>,
        roles: &mut watch::Receiver<Role>,
    ) -> Result<i64, Stop> {
        let mut backoff = self.cfg.backoff;
        loop {
            if !self.still_leading(fence) {
                return Err(Stop::Deposed);
            }
            match self.start(fence).await {
                Ok(n) => return Ok(n),
                Err(StoreError::Fenced { .. }) => return Err(Stop::Deposed),
                Err(e) => {
                    warn!("webhook sink: cannot read its cursor (retrying in {backoff:?}): {e}");
                    if self.pause(backoff, shutdown, roles).await.is_some() {
                        return Err(stopped(shutdown));
                    }
                    backoff = (backoff * 2).min(self.cfg.backoff_max);
                }
            }
        }
    }

    /// `events` of `revision` plus what is already queued behind them, whole
    /// revisions only, up to the batch size: (events, last revision, a
    /// progress mark met).
    fn gather(
        &self,
        rx: &mut tokio::sync::mpsc::Receiver<Result<Batch, EventsError>>,
        events: Vec<LeaseEvent>,
        revision: i64,
    ) -> (Vec<LeaseEvent>, i64, Option<i64>) {
        let mut batch = events;
        let mut last = revision;
        let mut mark = None;
        while batch.len() < self.cfg.batch_max {
            match rx.try_recv() {
                Ok(Ok(Batch::Events { revision, events })) => {
                    batch.extend(events);
                    last = revision;
                }
                Ok(Ok(Batch::Progress(r))) => {
                    mark = Some(r);
                    break;
                }
                Ok(Err(e)) => {
                    // Deliver what we have; the error comes back on the
                    // re-opened stream.
                    debug!("webhook sink: stream error behind a batch: {e}");
                    break;
                }
                Err(_) => break,
            }
        }
        (batch, last, mark)
    }

    /// Sleeps `d`; Some when leadership or the process ends meanwhile.
    async fn pause(
        &self,
        d: Duration,
        shutdown: &mut watch::Receiver<bool>,
        roles: &mut watch::Receiver<Role>,
    ) -> Option<()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return None,
                _ = shutdown.wait_for(|s| *s) => return Some(()),
                r = roles.changed() => {
                    if r.is_err() || !matches!(*roles.borrow(), Role::Leader { .. }) {
                        return Some(());
                    }
                }
            }
        }
    }

    /// One POST of `body`: Ok when the receiver took it, else the outcome
    /// as "kind:detail" (http-error, connect-error, timeout).
    async fn post_once(&self, body: &Bytes) -> Result<(), String> {
        let req = hyper::Request::post(self.cfg.url.clone())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "rackline-netmaster")
            .body(Full::new(body.clone()))
            .expect("a request with a checked URI builds");
        match tokio::time::timeout(self.cfg.timeout, self.http.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => {
                // Drain the body so the connection can be reused.
                let _ = tokio::time::timeout(
                    self.cfg.timeout,
                    http_body_util::BodyExt::collect(resp.into_body()),
                )
                .await;
                Ok(())
            }
            Ok(Ok(resp)) => Err(format!("http-error:{}", resp.status())),
            Ok(Err(e)) => Err(format!("connect-error:{e}")),
            Err(_) => Err("timeout:".to_string()),
        }
    }

    /// POSTs one batch until the receiver takes it (Ok → None) or this
    /// replica stops leading / shuts down (Some).
    async fn post(
        &self,
        fence: &Fence,
        gap: Option<Gap>,
        events: &[LeaseEvent],
        next_revision: i64,
        shutdown: &mut watch::Receiver<bool>,
        roles: &mut watch::Receiver<Role>,
    ) -> Option<Stop> {
        let body = serde_json::to_vec(&Payload {
            netmaster: &self.id,
            gap,
            events,
            next_revision,
        })
        .expect("payload serialises");
        let body = Bytes::from(body);
        let mut backoff = self.cfg.backoff;
        let mut attempt = 0u32;
        loop {
            if !self.still_leading(fence) {
                return Some(Stop::Deposed);
            }
            attempt += 1;
            let Err(outcome) = self.post_once(&body).await else {
                self.metrics.webhook_post("ok", events.len() as u64);
                debug!(
                    events = events.len(),
                    next_revision, "webhook batch delivered"
                );
                return None;
            };
            let (kind, detail) = outcome.split_once(':').unwrap_or((&outcome, ""));
            self.metrics.webhook_post(kind, 0);
            warn!(attempt, outcome = kind, detail, retry_in = ?backoff, "webhook POST failed");
            if self.pause(backoff, shutdown, roles).await.is_some() {
                return Some(if *shutdown.borrow() {
                    Stop::Shutdown
                } else {
                    Stop::Deposed
                });
            }
            backoff = (backoff * 2).min(self.cfg.backoff_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        assert!(parse_url("http://10.0.0.5:8080/hook").is_ok());
        assert!(parse_url("https://cmdb.example/rackline").is_ok());
        for bad in ["ftp://x/y", "10.0.0.5:8080", "http://", "not a url"] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_payload_is_camel_case_json() {
        let p = Payload {
            netmaster: "nm1",
            gap: Some(Gap {
                from_revision: 5,
                compact_revision: 9,
            }),
            events: &[],
            next_revision: 9,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"netmaster":"nm1","gap":{"fromRevision":5,"compactRevision":9},"events":[],"nextRevision":9})
        );
    }
}
