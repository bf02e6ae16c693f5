//! rackline-netmaster: flags, wiring and the serve loop.
//!
//! No task is spawned: the gRPC server runs on the caller's task and stops
//! when `shutdown` resolves, after draining in-flight requests (bounded, so a
//! client that keeps its connection open cannot hold shutdown hostage).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

use crate::admin::AdminService;
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
    /// address is logged in the "netmaster ready" line).
    #[arg(long, env = "RACKLINE_LISTEN")]
    pub listen: SocketAddr,
    #[arg(long, env = "RACKLINE_ETCD_PREFIX", default_value = "/rackline")]
    pub etcd_prefix: String,
    /// Deadline of every etcd call.
    #[arg(long, env = "RACKLINE_ETCD_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub etcd_timeout_ms: u64,
    /// A tracing filter: a level (info, debug) or directives
    /// (info,rackline_store=debug).
    #[arg(long, env = "RACKLINE_LOG_LEVEL", default_value = "info", value_parser = parse_log_level)]
    pub log_level: String,
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
}

/// Logs to stderr (stdout stays free), colours only on a terminal.
pub fn init_tracing(level: &str) {
    use std::io::IsTerminal;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
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
pub async fn run(
    args: NetmasterArgs,
    shutdown: impl Future<Output = &'static str> + Send,
) -> Result<(), DaemonError> {
    let timeout = Duration::from_millis(args.etcd_timeout_ms);
    let svc = AdminService::connect(&args.etcd_endpoints, &args.etcd_prefix, timeout).await?;
    let admin = GrpcAdmin::new(svc);

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
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = Server::builder()
        .add_service(admin.into_server())
        .serve_with_incoming_shutdown(incoming, async move {
            // Err only if the sender is gone, which also means stop.
            let _ = stop_rx.wait_for(|stop| *stop).await;
        });
    tokio::pin!(server);
    info!(
        listen = %bound,
        etcd = %args.etcd_endpoints.join(","),
        prefix = %args.etcd_prefix,
        "netmaster ready"
    );

    tokio::select! {
        res = &mut server => return res.map_err(DaemonError::from),
        sig = shutdown => {
            info!(signal = sig, "stopping: draining in-flight requests");
            stop_tx.send_replace(true);
        }
    }
    match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
        Ok(res) => res?,
        Err(_) => warn!(timeout = ?DRAIN_TIMEOUT, "drain timed out; closing remaining connections"),
    }
    info!("netmaster stopped");
    Ok(())
}
