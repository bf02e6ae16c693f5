//! rackline-netmaster: flags, wiring and the serve loop.
//!
//! The gRPC server runs on the caller's task and stops when `shutdown`
//! resolves, after draining in-flight requests (bounded, so a client that
//! keeps its connection open cannot hold shutdown hostage). The only spawned
//! task is the leader election's driver, owned by [`Election`] and stopped
//! (revoking the leader lease) before the drain, so a follower takes over
//! at once instead of after the lease TTL.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rackline_security::listener::{self, ConnLimits, Listener, ServerTls, TrackLayer};
use rackline_security::tls::IdentityFiles;
use rackline_store::Store;
use tokio::net::TcpListener;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::admin::{AdminError, AdminService};
use crate::auth::Authenticator;
use crate::authz::Authorized;
use crate::leader::{Election, ElectionConfig, Role};
use crate::metrics::AdminMetricsLayer;
use crate::observability::Observability;
use crate::server::GrpcAdmin;

/// How long in-flight requests get after a stop signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Parser)]
#[command(
    name = "rackline-netmaster",
    version,
    about = "Rackline control plane: the admin gRPC API over etcd"
)]
pub struct NetmasterArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "RACKLINE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    /// TCP address to serve gRPC on (port 0 picks a free port; the bound
    /// address is logged in the "netmaster ready" line); ADDR alone means
    /// port 7650. Without TLS only a loopback address is allowed (see
    /// --insecure-listen).
    #[arg(long, env = "RACKLINE_LISTEN", value_name = "ADDR[:PORT]", value_parser = parse_listen)]
    pub listen: SocketAddr,
    /// Certificate (PEM, chain) of the admin API's TLS listener; re-read
    /// when it changes on disk.
    #[arg(
        long,
        env = "RACKLINE_TLS_CERT_FILE",
        value_name = "PEM",
        requires = "tls_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,
    /// The listener certificate's private key (PEM).
    #[arg(
        long,
        env = "RACKLINE_TLS_KEY_FILE",
        value_name = "PEM",
        requires = "tls_cert_file"
    )]
    pub tls_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates are verified against
    /// (mTLS); needs --tls-cert-file.
    #[arg(
        long,
        env = "RACKLINE_CLIENT_CA_FILE",
        value_name = "PEM",
        requires = "tls_cert_file"
    )]
    pub client_ca_file: Option<PathBuf>,
    /// Tokens and client-certificate identities with their roles (TOML;
    /// see docs/security.md); re-read when it changes. Without it every
    /// caller is an anonymous admin, which only a loopback or
    /// --insecure-listen address allows.
    #[arg(long, env = "RACKLINE_AUTH_FILE", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Serve on a non-loopback address without TLS or without --auth-file
    /// (a trusted, isolated network only).
    #[arg(long, env = "RACKLINE_INSECURE_LISTEN")]
    pub insecure_listen: bool,
    /// Most connections held at once (lowered to what the fd limit allows);
    /// at the limit the idlest connection makes room for a new one.
    #[arg(long, env = "RACKLINE_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// A connection without a request in flight is closed after this long.
    #[arg(long, env = "RACKLINE_IDLE_TIMEOUT_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,
    #[arg(long, env = "RACKLINE_ETCD_PREFIX", default_value = "/rackline")]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_credentials: rackline_store::EtcdCredentialArgs,
    /// Deadline of every etcd call.
    #[arg(long, env = "RACKLINE_ETCD_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub etcd_timeout_ms: u64,
    /// A tracing filter: a level (info, debug) or directives
    /// (info,rackline_store=debug).
    #[arg(long, env = "RACKLINE_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
    /// This replica's name in the leader record [default: HOSTNAME-PID].
    #[arg(long, env = "RACKLINE_ID")]
    pub id: Option<String>,
    /// host:port clients and other replicas reach this replica at; refusals
    /// from followers name the leader's [default: the bound --listen
    /// address].
    #[arg(long, env = "RACKLINE_ADVERTISE", value_parser = parse_advertise)]
    pub advertise: Option<String>,
    /// TTL of the leader's etcd lease: a crashed leader is replaced within
    /// about this long (a stopped one at once). Keep-alive every TTL/3.
    #[arg(long, env = "RACKLINE_LEASE_TTL_SECS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    pub lease_ttl_secs: u64,
    /// Seconds a node may hold addresses without a live ipamd (no liveness
    /// record) before the leader reclaims them: non-sticky leases freed,
    /// sticky ones turned into reservations, standby records and blocks
    /// returned. Longer than any partition the nodes should ride out on
    /// their standby reserve; 0 = never.
    #[arg(
        long,
        env = "RACKLINE_DEAD_NODE_GRACE",
        value_name = "SECS",
        default_value_t = 600
    )]
    pub dead_node_grace: u64,
    /// Metrics, health and the webhook sink.
    #[command(flatten)]
    pub observability: crate::observability::ObservabilityArgs,
}

/// The admin API's conventional port.
pub const DEFAULT_PORT: u16 = 7650;

/// `ADDR:PORT`, `[V6]:PORT`, or a bare address (port 7650).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .or_else(|_| {
            s.trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<std::net::IpAddr>()
                .map(|ip| SocketAddr::new(ip, DEFAULT_PORT))
        })
        .map_err(|_| format!("{s:?}: write ADDR:PORT (e.g. 10.0.0.2:7650) or ADDR"))
}

/// `host:port` with a numeric port (no scheme: clients add `http://`).
fn parse_advertise(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?}: write HOST:PORT"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("{s:?}: write HOST:PORT"));
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("{s:?}: invalid port"))?;
    Ok(s.to_string())
}

/// The default replica id: unique per process, readable in `leader` output.
fn default_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "netmaster".to_string());
    format!("{host}-{}", std::process::id())
}

fn parse_log_level(s: &str) -> Result<String, String> {
    EnvFilter::try_new(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up etcd client: {0}")]
    Store(#[from] crate::admin::AdminError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(transparent)]
    Observability(#[from] crate::observability::ObservabilityError),
    /// A listener setup that would expose the admin API; the message names
    /// the fix.
    #[error("{0}")]
    Insecure(String),
    #[error("{0}")]
    Auth(String),
    #[error("admin API TLS: {0}")]
    Tls(String),
}

/// Plaintext, and serving without authentication, are for loopback only
/// unless the operator says otherwise.
pub fn check_listen(args: &NetmasterArgs) -> Result<(), DaemonError> {
    let addr = args.listen;
    if addr.ip().is_loopback() || args.insecure_listen {
        return Ok(());
    }
    if args.tls_cert_file.is_none() {
        return Err(DaemonError::Insecure(format!(
            "refusing to serve the admin API in plaintext on {addr}: give --tls-cert-file and \
             --tls-key-file (and --auth-file), listen on a loopback address, or pass \
             --insecure-listen on an isolated network"
        )));
    }
    if args.auth_file.is_none() {
        return Err(DaemonError::Insecure(format!(
            "refusing to serve the admin API on {addr} without authentication: give --auth-file \
             (tokens and client certificates with their roles), or pass --insecure-listen"
        )));
    }
    Ok(())
}

/// Logs to stderr (stdout stays free), colours only on a terminal.
pub fn init_tracing(level: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Audit lines are kept whatever the level asked for.
    let filter = match "audit=info".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on the first SIGTERM or SIGINT, with the signal's name. The
/// handlers are installed before this returns, so a signal that arrives
/// while the server is still starting is not lost.
pub fn termination_signal() -> std::io::Result<impl Future<Output = &'static str> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}

/// Serves until `shutdown` resolves.
// Stays long: the daemon's life as one linear recipe whose order matters
// (auth and TLS, store, listener, election, observability, reclaim, serve,
// then the ordered shutdown of the same parts).
pub async fn run(
    args: NetmasterArgs,
    shutdown: impl Future<Output = &'static str> + Send,
) -> Result<(), DaemonError> {
    check_listen(&args)?;
    let auth = Arc::new(match &args.auth_file {
        Some(p) => Authenticator::from_file(p).map_err(DaemonError::Auth)?,
        None => Authenticator::disabled(),
    });
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            ServerTls::load(
                IdentityFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                args.client_ca_file.clone(),
            )
            .map_err(|e| DaemonError::Tls(e.to_string()))?,
        )),
        _ => None,
    };
    if !auth.enabled() {
        warn!(listen = %args.listen, "admin API authentication is off (no --auth-file): every caller is an admin");
    }
    let timeout = Duration::from_millis(args.etcd_timeout_ms);
    let etcd = args
        .etcd_credentials
        .config(&args.etcd_endpoints, &args.etcd_prefix, timeout);
    let etcd_description = etcd.describe();
    let store = Store::connect_with(etcd).await.map_err(AdminError::from)?;

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: args.listen,
            source,
        })?;
    let bound = listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            addr: args.listen,
            source,
        })?;
    let mut limits = ConnLimits::new(args.max_connections as usize);
    limits.idle_timeout = Duration::from_secs(args.idle_timeout_secs);
    let tls_on = tls.is_some();
    let incoming = listener::incoming(Listener::Tcp { listener, tls }, limits.clone(), "netmaster");

    let advertise = args.advertise.clone().unwrap_or_else(|| {
        if bound.ip().is_unspecified() {
            warn!(listen = %bound, "listening on a wildcard address: set --advertise, or followers will send clients to {bound}");
        }
        bound.to_string()
    });
    let id = args.id.clone().unwrap_or_else(default_id);
    let election = Election::start(
        store.clone(),
        ElectionConfig {
            id: id.clone(),
            advertise: advertise.clone(),
            ttl: Duration::from_secs(args.lease_ttl_secs),
        },
    );
    // Health and metrics answer from here on, while the election settles.
    let obs = Observability::start(
        &args.observability,
        store.clone(),
        election.status(),
        id.clone(),
    )
    .await?;
    // "ready" means writes can be routed: this replica leads or knows who
    // does. Bounded (grant + campaign), so a netmaster still serves reads
    // (and says "no leader") while etcd is down.
    if !election
        .settled(2 * timeout + Duration::from_millis(500))
        .await
    {
        warn!("no leader known yet; serving, and refusing writes until one is elected");
    }
    let status = election.status();
    let (reclaim_stop, reclaim_rx) = tokio::sync::watch::channel(false);
    // Owned: stopped (and awaited) with the rest at shutdown.
    let reclaim_task = tokio::spawn(crate::reclaim::run(
        store.clone(),
        status.clone(),
        crate::reclaim::ReclaimConfig::for_grace(Duration::from_secs(args.dead_node_grace)),
        reclaim_rx,
    ));
    let svc = AdminService::with_fence(store, Arc::new(status.clone()));
    let admin = Authorized::new(
        GrpcAdmin::new(svc).with_observability(obs.handles()),
        auth.clone(),
    );

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = limits
        .server()
        .layer(TrackLayer::new())
        .layer(AdminMetricsLayer(obs.metrics.clone()))
        .add_service(crate::server::AdminServer::new(admin))
        .serve_with_incoming_shutdown(incoming, async move {
            // Err only if the sender is gone, which also means stop.
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);
    info!(
        listen = %bound,
        tls = tls_on,
        auth = auth.enabled(),
        max_connections = limits.max_connections,
        etcd = %etcd_description,
        prefix = %args.etcd_prefix,
        id = %id,
        advertise = %advertise,
        leader = matches!(status.role(), Role::Leader { .. }),
        metrics = %obs.metrics_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
        "netmaster ready"
    );

    tokio::select! {
        res = &mut server => {
            reclaim_stop.send_replace(true);
            let _ = reclaim_task.await;
            election.shutdown(timeout).await;
            obs.shutdown(timeout).await;
            return res.map_err(DaemonError::from);
        }
        sig = shutdown => {
            info!(signal = sig, "stopping: releasing leadership, draining in-flight requests");
            stop_tx.send_replace(true);
            reclaim_stop.send_replace(true);
        }
    }
    // A reclaim pass in flight ends at its next write (fenced) at worst.
    if tokio::time::timeout(timeout, reclaim_task).await.is_err() {
        warn!("the dead-node reclaim task did not stop in time");
    }
    // Leadership goes first (writes still in flight then fail their fence
    // or are refused), so a follower leads while we drain.
    // Event streams end now too (they would hold the drain for its whole
    // timeout), as do the webhook sink and the metrics listener.
    let (_, drained, _) = tokio::join!(
        election.shutdown(timeout),
        tokio::time::timeout(DRAIN_TIMEOUT, &mut server),
        obs.shutdown(timeout)
    );
    match drained {
        Ok(res) => res?,
        Err(_) => warn!(timeout = ?DRAIN_TIMEOUT, "drain timed out; closing remaining connections"),
    }
    info!("netmaster stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<NetmasterArgs, clap::Error> {
        let base = [
            "rackline-netmaster",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--listen",
            "127.0.0.1:7650",
        ];
        NetmasterArgs::try_parse_from(base.iter().chain(extra))
    }

    #[test]
    fn replica_flags_have_defaults_and_are_checked() {
        let a = parse(&[]).unwrap();
        assert_eq!((a.id, a.advertise, a.lease_ttl_secs), (None, None, 3));
        assert_eq!(a.dead_node_grace, 600);
        assert_eq!(
            parse(&["--dead-node-grace", "0"]).unwrap().dead_node_grace,
            0
        );
        let a = parse(&["--id", "ctrl-b", "--advertise", "ctrl-b.mgmt:7650"]).unwrap();
        assert_eq!(a.id.as_deref(), Some("ctrl-b"));
        assert_eq!(a.advertise.as_deref(), Some("ctrl-b.mgmt:7650"));
        for bad in [
            &["--advertise", "10.0.0.3"][..],
            &["--advertise", "http://10.0.0.3:7650"][..],
            &["--advertise", "10.0.0.3:0"][..],
            &["--advertise", ":7650"][..],
            &["--lease-ttl-secs", "0"][..],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let a = NetmasterArgs::try_parse_from([
            "rackline-netmaster",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--listen",
            "10.0.0.2",
        ])
        .unwrap();
        assert_eq!(a.listen.to_string(), "10.0.0.2:7650");
        let id = default_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
    }
}
