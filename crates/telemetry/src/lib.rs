//! The metrics and health listener both Rackline daemons run
//! (`--metrics-listen ADDR:PORT`):
//!
//! - `GET /metrics`: every metric of the daemon's [`Registry`] in the
//!   OpenMetrics text format (what Prometheus scrapes; `prometheus-client`
//!   encodes it);
//! - `GET /healthz`: 200 while the process serves HTTP at all (liveness);
//! - `GET /readyz`: 200 or 503 with the reason, from the daemon's
//!   [`Health`] (readiness: what a Kubernetes probe or a load balancer asks).
//!
//! Plain HTTP/1.1 on hyper directly: three fixed paths need no router, and
//! hyper is in the tree through tonic already.
//!
//! [`exposition`] is a strict parser of that text format, for tests.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

pub mod exposition;

/// The content type of the OpenMetrics text format (Prometheus negotiates
/// it; `prometheus-client` writes nothing else).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A slow or stuck client never holds a connection longer than this.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);

/// Whether the daemon can do its job now, and if not why (shown in the
/// 503 body of `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

/// The daemon's readiness, asked on every `/readyz`: must be cheap and must
/// not block (read state that background tasks keep current).
pub trait Health: Send + Sync + 'static {
    fn readiness(&self) -> Readiness;
}

impl<F: Fn() -> Readiness + Send + Sync + 'static> Health for F {
    fn readiness(&self) -> Readiness {
        self()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on {addr} for metrics: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound metrics listener; [`Listener::serve`] runs it.
pub struct Listener {
    listener: TcpListener,
    local: SocketAddr,
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port: see [`Listener::local_addr`]).
    pub async fn bind(addr: SocketAddr) -> Result<Self, TelemetryError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        Ok(Self { listener, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves until `shutdown` turns true. Each connection runs on its own
    /// task, bounded by a deadline; errors of one connection are logged and
    /// never stop the listener.
    pub async fn serve(
        self,
        registry: Arc<Registry>,
        health: Arc<dyn Health>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let accepted = tokio::select! {
                a = self.listener.accept() => a,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Reap finished connections so the set does not grow.
            while conns.try_join_next().is_some() {}
            let registry = registry.clone();
            let health = health.clone();
            conns.spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let (registry, health) = (registry.clone(), health.clone());
                    async move { Ok::<_, Infallible>(respond(&req, &registry, &*health)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                match tokio::time::timeout(CONNECTION_DEADLINE, conn).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, "metrics connection: {e}"),
                    Err(_) => debug!(%peer, "metrics connection closed after the deadline"),
                }
            });
        }
        conns.abort_all();
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The answer to one request (exposed for unit tests).
pub fn respond(
    req: &Request<Incoming>,
    registry: &Registry,
    health: &dyn Health,
) -> Response<Full<Bytes>> {
    route(req.method(), req.uri().path(), registry, health)
}

fn route(
    method: &Method,
    path: &str,
    registry: &Registry,
    health: &dyn Health,
) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    match path {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
                    );
                    r
                }
                Err(e) => {
                    warn!("encoding metrics failed: {e}");
                    text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "encoding metrics failed\n".into(),
                    )
                }
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match health.readiness() {
            Readiness::Ready => text(StatusCode::OK, "ready\n".into()),
            Readiness::NotReady(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

/// Starts the listener on `addr` as an owned task; the task ends when
/// `shutdown` turns true. Returns the bound address and the task.
pub async fn spawn(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<dyn Health>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), TelemetryError> {
    let l = Listener::bind(addr).await?;
    let local = l.local_addr();
    Ok((local, tokio::spawn(l.serve(registry, health, shutdown))))
}

/// Writes one gauge family of `(labels, value)` rows from a
/// [`prometheus_client::collector::Collector`] (values read at scrape time
/// from a daemon's state, never stored twice).
pub fn encode_gauges(
    encoder: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, i64)],
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::gauge::ConstGauge;
    use prometheus_client::metrics::MetricType;
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in rows {
        let m = family.encode_family(labels)?;
        ConstGauge::new(*value).encode(m)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    fn body(r: Response<Full<Bytes>>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn paths_methods_and_readiness() {
        let mut reg = Registry::default();
        let c: Counter = Counter::default();
        c.inc_by(3);
        reg.register("rackline_test_things", "Things done.", c);
        let ready = || Readiness::Ready;
        let r = route(&Method::GET, "/metrics", &reg, &ready);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[hyper::header::CONTENT_TYPE], CONTENT_TYPE);
        let text = body(r);
        let parsed = exposition::parse(&text).unwrap();
        assert_eq!(parsed.value("rackline_test_things_total", &[]), Some(3.0));

        assert_eq!(
            route(&Method::GET, "/healthz", &reg, &ready).status(),
            StatusCode::OK
        );
        assert_eq!(
            route(&Method::GET, "/readyz", &reg, &ready).status(),
            StatusCode::OK
        );
        let not = || Readiness::NotReady("etcd is unreachable".into());
        let r = route(&Method::GET, "/readyz", &reg, &not);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body(r), "not ready: etcd is unreachable\n");
        assert_eq!(
            route(&Method::GET, "/nope", &reg, &ready).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&Method::POST, "/metrics", &reg, &ready).status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
