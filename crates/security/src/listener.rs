//! Accept loops for the daemons' gRPC servers, with resource limits.
//!
//! tonic's own `TcpIncoming` accepts without bound: an idle connection is
//! held forever, so ~1 100 idle TCP connections exhaust a 1024-fd limit,
//! after which `accept` fails with EMFILE in a tight loop and no client is
//! served. Here we own the accept loop (tonic's `serve_with_incoming`):
//!
//! - at most `max_connections` connections, kept below the process's fd
//!   limit. At the limit a newcomer takes the place of the connection that
//!   has been idle longest — one that never sent a request first — so a
//!   flood of idle connections cannot lock out a client that actually
//!   talks; only when every connection has a request in flight is the
//!   newcomer refused;
//! - `handshake_timeout` for the TLS handshake plus the first request, and
//!   `idle_timeout` between requests (a connection with a request or a
//!   response stream in flight is never idle);
//! - accept errors (EMFILE…) back off instead of spinning, and every
//!   refusal or eviction is logged at most once per `log_interval`, with
//!   counts;
//! - the TLS handshake runs off the accept loop, so a slow client cannot
//!   stall it; the server certificate is re-read when its files change;
//! - unix sockets carry the peer's uid (SO_PEERCRED) to the service.
//!
//! [`TrackLayer`] (a tower layer on the tonic server) counts requests in
//! flight per connection, and refuses callers whose uid is not allowed.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Notify;
use tonic::transport::server::Connected;
use tracing::{debug, warn};

use crate::tls::{self, Fingerprint, IdentityFiles, TlsFileError};

/// Limits of one listener. See the module documentation.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// TLS handshake and the first request must complete within this.
    pub handshake_timeout: Duration,
    /// A connection without a request in flight is closed after this.
    pub idle_timeout: Duration,
    /// At most one log line per kind of refusal per interval.
    pub log_interval: Duration,
    /// HTTP/2: concurrent streams per connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval (dead peers are dropped after one
    /// unanswered ping + `keepalive_timeout`).
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// HTTP/2 header list size per request.
    pub max_header_list_size: u32,
}

/// fds a daemon keeps for itself beyond its connections (etcd, log, files).
const FD_RESERVE: u64 = 64;

impl ConnLimits {
    /// The defaults, with `max_connections` lowered to what the process's
    /// fd limit (RLIMIT_NOFILE) leaves after a reserve.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections: max_connections.min(fd_budget()).max(1),
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            log_interval: Duration::from_secs(10),
            max_concurrent_streams: 128,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            max_header_list_size: 16 * 1024,
        }
    }

    /// A tonic server builder with this listener's HTTP/2 limits.
    pub fn server(&self) -> tonic::transport::Server {
        tonic::transport::Server::builder()
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .http2_max_header_list_size(self.max_header_list_size)
            .http2_max_pending_accept_reset_streams(Some(32))
    }
}

/// How many connections the fd limit allows.
pub fn fd_budget() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => soft.saturating_sub(FD_RESERVE).max(8) as usize,
        Err(_) => 1024 - FD_RESERVE as usize,
    }
}

/// One log line per interval; what happened in between is counted.
struct LogEvery {
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogEvery {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(events since the last line)` when a line may be written now.
    fn tick(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < self.interval) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.suppressed.swap(0, Ordering::Relaxed) + 1)
    }
}

/// Per-connection state shared by the registry, the connection's IO and the
/// request layer.
pub struct Tracker {
    id: u64,
    epoch: Instant,
    accepted_ms: u64,
    last_active_ms: AtomicU64,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    killed: AtomicBool,
    kill_notify: Notify,
    waker: Mutex<Option<Waker>>,
}

impl Tracker {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.kill_notify.notify_one();
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.requests.fetch_add(1, Ordering::SeqCst);
        self.last_active_ms.store(self.now_ms(), Ordering::SeqCst);
    }

    fn end(&self) {
        self.last_active_ms.store(self.now_ms(), Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Registry {
    limits: ConnLimits,
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<Tracker>>>,
    what: &'static str,
    evicted_log: LogEvery,
    refused_log: LogEvery,
    accept_err_log: LogEvery,
}

impl Registry {
    /// Admits a new connection, evicting the idlest one at the limit;
    /// `None` = refused (every connection is busy).
    fn admit(self: &Arc<Self>) -> Option<Admission> {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        if conns.len() >= self.limits.max_connections {
            // Never-used connections first (oldest first), then the one
            // idle longest; busy ones are never evicted.
            let victim = conns
                .values()
                .filter(|t| t.in_flight.load(Ordering::SeqCst) == 0)
                .min_by_key(|t| {
                    (
                        t.requests.load(Ordering::SeqCst) > 0,
                        t.last_active_ms.load(Ordering::SeqCst),
                    )
                })
                .cloned();
            match victim {
                Some(v) => {
                    conns.remove(&v.id);
                    v.kill();
                    if let Some(n) = self.evicted_log.tick() {
                        warn!(
                            listener = self.what,
                            max_connections = self.limits.max_connections,
                            evicted = n,
                            "connection limit reached: closed the idlest connection(s) to admit new ones"
                        );
                    }
                }
                None => {
                    if let Some(n) = self.refused_log.tick() {
                        warn!(
                            listener = self.what,
                            max_connections = self.limits.max_connections,
                            refused = n,
                            "connection limit reached and every connection is busy: refusing new connections"
                        );
                    }
                    return None;
                }
            }
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let t = Arc::new(Tracker {
            id,
            epoch: self.epoch,
            accepted_ms: now,
            last_active_ms: AtomicU64::new(now),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            killed: AtomicBool::new(false),
            kill_notify: Notify::new(),
            waker: Mutex::new(None),
        });
        conns.insert(id, t.clone());
        Some(Admission {
            tracker: t,
            registry: Arc::downgrade(self),
        })
    }
}

/// A slot in the registry, released when dropped (with the connection).
struct Admission {
    tracker: Arc<Tracker>,
    registry: Weak<Registry>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            r.conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.tracker.id);
        }
    }
}

/// Who is on the other end, as the service sees it (tonic puts it in every
/// request's extensions).
#[derive(Clone)]
pub struct PeerInfo {
    pub remote: Option<SocketAddr>,
    /// The client certificate chain a TLS client presented (verified
    /// against the client CA).
    pub certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The peer's uid on a unix socket (SO_PEERCRED, taken at connect).
    pub uid: Option<u32>,
    pub pid: Option<i32>,
    tracker: Arc<Tracker>,
}

impl std::fmt::Debug for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerInfo")
            .field("remote", &self.remote)
            .field("certs", &self.certs.as_ref().map(|c| c.len()))
            .field("uid", &self.uid)
            .finish()
    }
}

/// The transports a connection can use.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Unix(UnixStream),
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Conn::Plain($s) => {
                let $s = Pin::new($s);
                $e
            }
            Conn::Tls($s) => {
                let $s = Pin::new(&mut **$s);
                $e
            }
            Conn::Unix($s) => {
                let $s = Pin::new($s);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// A connection under the registry's limits: closes itself when evicted or
/// idle; releases its slot when dropped.
pub struct Guarded {
    io: Conn,
    peer: PeerInfo,
    limits: ConnLimits,
    timer: Pin<Box<tokio::time::Sleep>>,
    _slot: Admission,
}

impl Guarded {
    fn deadline_ms(&self) -> u64 {
        let t = &self.peer.tracker;
        if t.requests.load(Ordering::SeqCst) == 0 {
            t.accepted_ms + self.limits.handshake_timeout.as_millis() as u64
        } else {
            t.last_active_ms.load(Ordering::SeqCst) + self.limits.idle_timeout.as_millis() as u64
        }
    }

    /// Err when the connection must close (evicted, or idle past its
    /// deadline); re-arms the timer otherwise.
    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let t = self.peer.tracker.clone();
        if t.killed.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "evicted at the connection limit",
            ));
        }
        {
            let mut w = t.waker.lock().unwrap_or_else(|e| e.into_inner());
            if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *w = Some(cx.waker().clone());
            }
        }
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = t.now_ms();
            let deadline = self.deadline_ms();
            if t.in_flight.load(Ordering::SeqCst) == 0 && now >= deadline {
                debug!(remote = ?self.peer.remote, "closing an idle connection");
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection"));
            }
            let next = if now >= deadline {
                now + self.limits.idle_timeout.as_millis() as u64
            } else {
                deadline
            };
            let at = tokio::time::Instant::from_std(t.epoch + Duration::from_millis(next));
            self.timer.as_mut().reset(at);
        }
        Ok(())
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.peer.tracker.killed.load(Ordering::SeqCst) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Guarded {
    type ConnectInfo = PeerInfo;
    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// netmaster's server certificate, re-read when its files change (checked
/// at most once a second, on accept).
pub struct ServerTls {
    identity: IdentityFiles,
    client_ca: Option<PathBuf>,
    state: Mutex<(Instant, Fingerprint, Arc<ServerConfig>)>,
}

impl ServerTls {
    pub fn load(identity: IdentityFiles, client_ca: Option<PathBuf>) -> Result<Self, TlsFileError> {
        let fp = Self::fingerprint(&identity, client_ca.as_deref());
        let config = Self::build(&identity, client_ca.as_deref())?;
        Ok(Self {
            identity,
            client_ca,
            state: Mutex::new((Instant::now(), fp, config)),
        })
    }

    fn fingerprint(identity: &IdentityFiles, ca: Option<&std::path::Path>) -> Fingerprint {
        Fingerprint::of(
            [identity.cert.as_path(), identity.key.as_path()]
                .into_iter()
                .chain(ca),
        )
    }

    fn build(
        identity: &IdentityFiles,
        ca: Option<&std::path::Path>,
    ) -> Result<Arc<ServerConfig>, TlsFileError> {
        let loaded = identity.load()?;
        if let Some(p) = loaded.leaf.validity_problem(std::time::SystemTime::now()) {
            warn!(cert = %identity.cert.display(), "server certificate {p}");
        }
        tls::server_config(&loaded, &identity.key, ca)
    }

    /// The current configuration; rebuilt when a file changed. A file that
    /// is half-written (cert and key not matching yet) keeps the previous
    /// configuration until the next check.
    pub fn current(&self) -> Arc<ServerConfig> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0.elapsed() >= Duration::from_secs(1) {
            st.0 = Instant::now();
            let fp = Self::fingerprint(&self.identity, self.client_ca.as_deref());
            if fp != st.1 {
                match Self::build(&self.identity, self.client_ca.as_deref()) {
                    Ok(c) => {
                        tracing::info!(cert = %self.identity.cert.display(), "server certificate reloaded");
                        st.1 = fp;
                        st.2 = c;
                    }
                    Err(e) => warn!("keeping the previous server certificate: {e}"),
                }
            }
        }
        st.2.clone()
    }
}

/// What a listener accepts on.
pub enum Listener {
    Tcp {
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
    },
    Unix(UnixListener),
}

/// The stream of admitted connections handed to tonic; owns the accept
/// loop (aborted when tonic drops it at shutdown).
pub struct Incoming {
    rx: tokio::sync::mpsc::Receiver<Guarded>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl tokio_stream::Stream for Incoming {
    type Item = io::Result<Guarded>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().rx.poll_recv(cx).map(|o| o.map(Ok))
    }
}

/// Starts the accept loop of `listener` under `limits`. `what` names the
/// listener in log lines.
pub fn incoming(listener: Listener, limits: ConnLimits, what: &'static str) -> Incoming {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        next_id: AtomicU64::new(0),
        conns: Mutex::new(HashMap::new()),
        what,
        evicted_log: LogEvery::new(limits.log_interval),
        refused_log: LogEvery::new(limits.log_interval),
        accept_err_log: LogEvery::new(limits.log_interval),
        limits,
    });
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let task = tokio::spawn(accept_loop(listener, registry, tx));
    Incoming { rx, task }
}

async fn accept_loop(
    listener: Listener,
    registry: Arc<Registry>,
    tx: tokio::sync::mpsc::Sender<Guarded>,
) {
    loop {
        let Some((conn, remote)) = accept_one(&listener, &registry).await else {
            continue;
        };
        let Some(slot) = registry.admit() else {
            drop(conn);
            continue;
        };
        let tls = match &listener {
            Listener::Tcp { tls, .. } => tls.clone(),
            Listener::Unix(_) => None,
        };
        // Handshakes run beside the loop: a client that stalls its
        // handshake holds only its own slot, for at most the timeout.
        tokio::spawn(hand_over(
            conn,
            tls,
            remote,
            slot,
            registry.limits.clone(),
            tx.clone(),
        ));
    }
}

/// One accepted connection, or None after an accept error (logged, and
/// backed off from when it is not transient).
async fn accept_one(
    listener: &Listener,
    registry: &Registry,
) -> Option<(Conn, Option<SocketAddr>)> {
    let accepted = match listener {
        Listener::Tcp { listener, .. } => listener.accept().await.map(|(s, a)| {
            let _ = s.set_nodelay(true);
            (Conn::Plain(s), Some(a))
        }),
        Listener::Unix(l) => l.accept().await.map(|(s, _)| (Conn::Unix(s), None)),
    };
    match accepted {
        Ok(c) => Some(c),
        Err(e) => {
            // EMFILE/ENFILE/ENOBUFS/ENOMEM persist until something is
            // closed: back off instead of spinning on them.
            if let Some(n) = registry.accept_err_log.tick() {
                warn!(listener = registry.what, errors = n, "accept failed: {e}");
            }
            let transient = matches!(
                e.raw_os_error(),
                Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EAGAIN)
            );
            if !transient {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    }
}

/// The TLS handshake (or the peer credentials of a unix socket) within the
/// handshake timeout, then the connection goes to the server with its peer.
async fn hand_over(
    conn: Conn,
    tls: Option<Arc<ServerTls>>,
    remote: Option<SocketAddr>,
    slot: Admission,
    limits: ConnLimits,
    tx: tokio::sync::mpsc::Sender<Guarded>,
) {
    let tracker = slot.tracker.clone();
    let done = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, handshake(conn, tls, remote)) => r.ok().flatten(),
        _ = tracker.kill_notify.notified() => None,
    };
    let Some((io, certs, cred)) = done else {
        return;
    };
    let peer = PeerInfo {
        remote,
        certs,
        uid: cred.map(|c| c.uid()),
        pid: cred.and_then(|c| c.pid()),
        tracker: tracker.clone(),
    };
    let timer = Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
        tracker.epoch + Duration::from_millis(tracker.accepted_ms) + limits.handshake_timeout,
    )));
    let _ = tx
        .send(Guarded {
            io,
            peer,
            limits,
            timer,
            _slot: slot,
        })
        .await;
}

/// The connection after its handshake, with the client's certificates (TLS)
/// or credentials (unix socket); None when the TLS handshake failed.
async fn handshake(
    conn: Conn,
    tls: Option<Arc<ServerTls>>,
    remote: Option<SocketAddr>,
) -> Option<(
    Conn,
    Option<Arc<Vec<CertificateDer<'static>>>>,
    Option<tokio::net::unix::UCred>,
)> {
    match (conn, tls) {
        (Conn::Plain(s), Some(tls)) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            match acceptor.accept(s).await {
                Ok(s) => {
                    let certs = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                    Some((Conn::Tls(Box::new(s)), certs, None))
                }
                Err(e) => {
                    debug!(?remote, "TLS handshake failed: {e}");
                    None
                }
            }
        }
        (Conn::Unix(s), _) => {
            let cred = s.peer_cred().ok();
            Some((Conn::Unix(s), None, cred))
        }
        (c, _) => Some((c, None, None)),
    }
}

/// Tower layer for the tonic server: counts requests (and their response
/// streams) in flight per connection, for the idle timeout and eviction;
/// with `require_uid`, answers PERMISSION_DENIED to unix-socket callers of
/// any other uid.
#[derive(Clone, Default)]
pub struct TrackLayer {
    require_uid: Option<u32>,
    what: &'static str,
    denied_log: Option<Arc<LogEvery>>,
}

impl TrackLayer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Only callers whose SO_PEERCRED uid is `uid` are served.
    pub fn require_uid(uid: u32, what: &'static str) -> Self {
        Self {
            require_uid: Some(uid),
            what,
            denied_log: Some(Arc::new(LogEvery::new(Duration::from_secs(10)))),
        }
    }
}

impl<S> tower::Layer<S> for TrackLayer {
    type Service = Track<S>;
    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    layer: TrackLayer,
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Track<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let peer = req.extensions().get::<PeerInfo>().cloned();
        if let (Some(uid), Some(peer)) = (self.layer.require_uid, &peer) {
            if peer.uid != Some(uid) {
                let who = match peer.uid {
                    Some(u) => format!("uid {u}"),
                    None => "an unknown uid".to_string(),
                };
                if let Some(n) = self.layer.denied_log.as_ref().and_then(|l| l.tick()) {
                    warn!(
                        listener = self.layer.what,
                        uid = ?peer.uid,
                        pid = ?peer.pid,
                        refused = n,
                        "refused a caller that is not uid {uid}"
                    );
                }
                let status = tonic::Status::permission_denied(format!(
                    "{} serves only uid {uid} (root); the caller is {who}",
                    self.layer.what
                ));
                return Box::pin(async move { Ok(status.into_http()) });
            }
        }
        let guard = peer.map(|p| {
            p.tracker.begin();
            InFlight(p.tracker)
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(match guard {
                Some(g) => resp.map(|b| tonic::body::Body::new(TrackedBody { inner: b, _g: g })),
                None => resp,
            })
        })
    }
}

/// A request in flight until its response body ends or is dropped.
struct InFlight(Arc<Tracker>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.end();
    }
}

struct TrackedBody {
    inner: tonic::body::Body,
    _g: InFlight,
}

impl http_body::Body for TrackedBody {
    type Data = <tonic::body::Body as http_body::Body>::Data;
    type Error = <tonic::body::Body as http_body::Body>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
