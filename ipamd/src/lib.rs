//! rackline-ipamd: the per-node IPAM daemon.
//!
//! Layers: `engine` (transport-free allocation logic over the `LeaseStore`
//! trait), `sync` (etcd snapshot + watch into the engine's cache), `service`
//! (tonic adapter), `socket` (the root-only unix socket).

pub mod config;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod netstate;
pub mod service;
pub mod socket;
pub mod store;
pub mod sync;

use std::sync::Arc;

use anyhow::Context;
use rackline_proto::ipam::v1::ipam_server::IpamServer;
use rackline_store::Store;
use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::engine::Engine;
use crate::service::IpamService;

pub fn init_tracing(level: &str) -> Result<(), String> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
    Ok(())
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let store = Store::connect(
        &config.etcd_endpoints,
        &config.etcd_prefix,
        config.etcd_timeout,
    )
    .await
    .context("configuring the etcd client")?;
    let engine = Arc::new(Engine::new(
        config.node_name.clone(),
        store.keys().clone(),
        store.clone(),
        config.gc_grace,
    ));
    let incoming = socket::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let sync_task = tokio::spawn(sync::run(engine.clone(), store, shutdown_rx));

    info!(node = %config.node_name, socket = %config.socket.display(), "ipamd ready");
    let served = tonic::transport::Server::builder()
        .add_service(IpamServer::new(IpamService::new(engine)))
        .serve_with_incoming_shutdown(incoming, shutdown_signal())
        .await;

    let _ = shutdown_tx.send(true);
    sync_task.abort();
    let _ = sync_task.await;
    socket::remove(&config.socket);
    info!("ipamd stopped");
    served.context("serving gRPC")
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    info!("shutting down");
}
