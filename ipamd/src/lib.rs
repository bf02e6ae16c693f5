//! rackline-ipamd: the per-node IPAM daemon.
//!
//! Layers: `engine` (transport-free allocation logic over the `LeaseStore`
//! trait), `sync` (etcd snapshot + watch into the engine's cache), `service`
//! (tonic adapter), `socket` (the root-only unix socket), `metrics` and
//! `alarms` (Prometheus metrics, health, Kubernetes Events on conflicts).

pub mod alarms;
pub mod blocks;
pub mod config;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod filter;
pub mod install;
pub mod journal;
pub mod kube;
pub mod liveness;
pub mod metrics;
pub mod netmaster;
pub mod netpol;
pub mod netstate;
pub mod pods;
pub mod qos;
pub mod reconcile;
pub mod reprogram;
pub mod service;
pub mod socket;
pub mod spool;
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
    if let Some(path) = &config.kubeconfig {
        kube::use_kubeconfig(path).await?;
    }
    let etcd = config.etcd_credentials.config(
        &config.etcd_endpoints,
        &config.etcd_prefix,
        config.etcd_timeout,
    );
    let etcd_description = etcd.describe();
    let store = Store::connect_with(etcd)
        .await
        .context("configuring the etcd client")?;
    let mut config = config;
    if config.rack.is_none() && kube::in_cluster() {
        config.rack = rack_from_cluster(&config.node_name, &config.rack_label).await;
    }
    if config.node_class.is_none() && kube::in_cluster() {
        config.node_class =
            qos::node_class_from_cluster(&config.node_name, &config.node_class_label).await;
    }
    if let Some(c) = &config.node_class {
        rackline_model::qos::validate_class_name(c)
            .map_err(|e| anyhow::anyhow!("--node-class: {e}"))?;
    }
    if let Some(r) = &config.rack {
        rackline_model::network::validate_name(r)
            .map_err(|_| anyhow::anyhow!("invalid rack {r:?}"))?;
    }
    let metrics = metrics::IpamMetrics::new(config.rack.as_deref());
    let store = store
        .with_observer(metrics.store_observer())
        .with_group_commit(config.group_commit, config.group_commit_in_flight);
    let alarms = if kube::in_cluster() {
        match kube::in_cluster_client() {
            Ok(c) => Some(alarms::Alarms::new(
                c,
                config.node_name.clone(),
                metrics.clone(),
            )),
            Err(e) => {
                tracing::warn!("conflict alarms will not reach Kubernetes: {e}");
                None
            }
        }
    } else {
        None
    };
    // One ipamd per node name: at once on this host (flock), and across
    // hosts through the node's liveness record in etcd.
    let local_lock = liveness::lock_local(&config.state_dir, &config.node_name)?;
    let node_liveness = Arc::new(liveness::NodeLiveness::new(
        store.clone(),
        &config.node_name,
        &local_lock.instance,
        config.liveness_ttl,
    ));
    let held = match node_liveness.acquire().await {
        Ok(h) => Some(h),
        Err(e @ liveness::LivenessError::Taken { .. }) => return Err(e.into()),
        Err(e) => {
            tracing::warn!("the node's liveness record will be taken once etcd answers: {e}");
            None
        }
    };
    let journal = Arc::new(
        journal::Journal::open(&config.state_dir, &config.node_name)
            .with_context(|| format!("opening the journal in {}", config.state_dir.display()))?,
    );
    if !journal.is_empty() {
        info!(
            entries = journal.entries().len(),
            "journal has offline decisions to replay"
        );
    }
    let engine = Arc::new(
        Engine::with_rack(
            config.node_name.clone(),
            config.rack.clone(),
            store.keys().clone(),
            store.clone(),
            config.gc_grace,
        )
        .with_outage_journal(journal, config.standby)
        .with_node_class(config.node_class.clone())
        .with_offline_start_max_age(config.offline_start_max_age)
        .with_observer(Arc::new(engine::Observer {
            metrics: metrics.clone(),
            alarms,
        })),
    );
    let netmaster_auth = config
        .netmaster_credentials
        .load(rackline_security::client::FlagNames {
            ca: "--netmaster-ca-file",
            cert: "--netmaster-cert-file",
            key: "--netmaster-key-file",
            token: "--netmaster-token-file",
        })
        .map_err(|e| anyhow::anyhow!("netmaster credentials: {e}"))?;
    let netmaster = Arc::new(netmaster::NetmasterClient::with_auth(
        &config.netmaster,
        config.etcd_timeout,
        netmaster_auth,
        config.netmaster_credentials.ca_file.is_some(),
    ));
    let listener = socket::bind(&config.socket)
        .with_context(|| format!("binding {}", config.socket.display()))?;
    let limits = rackline_security::listener::ConnLimits::new(config.max_connections);
    let incoming = rackline_security::listener::incoming(
        rackline_security::listener::Listener::Unix(listener),
        limits.clone(),
        "rackline-ipamd",
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let superseded = Arc::new(tokio::sync::Notify::new());
    let liveness_task = {
        let (l, rx, superseded) = (
            node_liveness.clone(),
            shutdown_rx.clone(),
            superseded.clone(),
        );
        tokio::spawn(async move {
            let r = l.keep(held, rx).await;
            if r.is_err() {
                superseded.notify_one();
            }
            r
        })
    };
    let sync_task = tokio::spawn(sync::run(
        engine.clone(),
        store.clone(),
        shutdown_rx.clone(),
    ));
    let mut tasks = Vec::new();
    let qos = qos::QosState::new(config.node_class.clone());
    tasks.push(tokio::spawn(qos::run(
        qos.clone(),
        store.clone(),
        shutdown_rx.clone(),
    )));
    let node_addrs = if config.node_addresses.is_empty() {
        node_addresses()
    } else {
        config.node_addresses.clone()
    };
    // The NetworkPolicy provider (when enforcing in a cluster) installs
    // itself below with `filters.set_netpol_source`.
    let filters = filter::Filters::new(node_addrs);
    tasks.push(tokio::spawn(filter::run_acl_watch(
        filters.clone(),
        store.clone(),
        shutdown_rx.clone(),
    )));
    tasks.push(tokio::spawn(reserve(engine.clone(), shutdown_rx.clone())));
    tasks.push(tokio::spawn(engine.clone().run_prober(shutdown_rx.clone())));
    tasks.push(tokio::spawn(spool::run(
        engine.clone(),
        config.runtime_dir.clone(),
        shutdown_rx.clone(),
    )));
    if let Some(rack) = config.rack.clone() {
        if netmaster.is_configured() {
            let addrs = filters.node_addresses();
            tasks.push(tokio::spawn(register(
                netmaster.clone(),
                config.node_name.clone(),
                rack,
                addrs,
                shutdown_rx.clone(),
            )));
            tasks.push(tokio::spawn(blocks::run(
                engine.clone(),
                netmaster.clone(),
                config.blocks.clone(),
                shutdown_rx.clone(),
            )));
        } else {
            tracing::warn!(
                "--rack without --netmaster: rack-bound networks can only borrow, never get blocks"
            );
        }
    }

    // /readyz: the socket serves (set just before serving starts) and the
    // engine can allocate.
    let serving = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let netpol = if config.network_policy && kube::in_cluster() {
        match kube::in_cluster_client() {
            Ok(client) => {
                let (np, started) = netpol::Netpol::start(
                    client,
                    &config.node_name,
                    Arc::new(netpol::FiltersSink(filters.clone())),
                    shutdown_rx.clone(),
                );
                tasks.extend(started);
                filters.set_netpol_source(np.clone());
                Some(np)
            }
            Err(e) => {
                tracing::warn!("NetworkPolicy is not enforced: {e}");
                None
            }
        }
    } else {
        None
    };
    if let Some(addr) = config.metrics_listen {
        let view: Arc<dyn metrics::NodeView> = engine.clone();
        let mut registry = metrics::registry(&metrics, view);
        if let Some(np) = &netpol {
            np.metrics.register(&mut registry);
        }
        let registry = Arc::new(registry);
        let (ready_engine, ready_serving) = (engine.clone(), serving.clone());
        let health = move || {
            if !ready_serving.load(std::sync::atomic::Ordering::Relaxed) {
                return rackline_telemetry::Readiness::NotReady(
                    "the ipamd socket is not serving".into(),
                );
            }
            ready_engine.readiness()
        };
        let (bound, task) =
            rackline_telemetry::spawn(addr, registry, Arc::new(health), shutdown_rx.clone())
                .await
                .context("starting the metrics listener")?;
        info!(metrics = %bound, "serving /metrics, /healthz and /readyz");
        tasks.push(task);
    }
    if let Some(source) = reconcile_source(&config) {
        let r = reconcile::Reconciler::new(engine.clone(), source, config.reconcile.clone())
            .with_metrics(metrics.clone());
        tasks.push(tokio::spawn(r.run(shutdown_rx.clone())));
    }
    let attachments = reprogram::Attachments::new(&config.runtime_dir);
    {
        let engine = engine.clone();
        let alive = move |r: reprogram::AttachmentRecord| {
            let engine = engine.clone();
            async move {
                // Unknown (etcd away): keep the record.
                engine
                    .allocator()
                    .check(&r.network, &r.container_id, &r.ifname)
                    .await
                    .map_or(true, |l| l.is_some())
            }
        };
        tasks.push(tokio::spawn(reprogram::run(
            filters.clone(),
            attachments.clone(),
            Some(metrics.clone()),
            alive,
            shutdown_rx.clone(),
        )));
    }
    let mut service = IpamService::new(engine)
        .with_qos(qos)
        .with_filters(filters.clone())
        .with_attachments(attachments)
        .with_metrics(metrics);
    if config.pod_annotations && kube::in_cluster() {
        match kube::in_cluster_client() {
            Ok(client) => {
                let (pods, task) =
                    pods::PodCache::start(client, &config.node_name, shutdown_rx.clone());
                tasks.push(task);
                service = service.with_pods(pods);
            }
            Err(e) => tracing::warn!("pod annotations are not read: {e}"),
        }
    }

    info!(node = %config.node_name, socket = %config.socket.display(), etcd = %etcd_description, "ipamd ready");
    serving.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = limits
        .server()
        .layer(rackline_security::listener::TrackLayer::require_uid(
            0,
            "rackline-ipamd",
        ))
        .add_service(IpamServer::new(service))
        .serve_with_incoming_shutdown(incoming, async {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = superseded.notified() => {}
            }
        })
        .await;
    serving.store(false, std::sync::atomic::Ordering::Relaxed);

    let _ = shutdown_tx.send(true);
    // The liveness record goes at once on a clean stop (bounded: etcd may
    // be unreachable, then it expires with its TTL).
    let lost = match tokio::time::timeout(config.etcd_timeout * 2, liveness_task).await {
        Ok(Ok(Err(e))) => Some(e),
        _ => None,
    };
    drop(local_lock);
    sync_task.abort();
    let _ = sync_task.await;
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    socket::remove(&config.socket);
    info!("ipamd stopped");
    if let Some(e) = lost {
        return Err(e.into());
    }
    served.context("serving gRPC")
}

/// The leak reconciler's sandbox source (None: the reconciler is off).
fn reconcile_source(config: &Config) -> Option<reconcile::Source> {
    if config.reconcile.interval.is_zero() {
        info!("leak reconciler off (--reconcile-interval-secs 0)");
        return None;
    }
    let kube = |why: &str| match kube::in_cluster_client() {
        Ok(client) => Some(reconcile::Source::Kube {
            client,
            node: config.node_name.clone(),
        }),
        Err(e) => {
            tracing::warn!("leak reconciler off: {why}: {e}");
            None
        }
    };
    let cri = || match &config.cri_socket {
        Some(socket) => Some(reconcile::Source::Cri {
            socket: socket.clone(),
        }),
        None => {
            tracing::warn!("leak reconciler off: --reconcile-source cri needs --cri-socket");
            None
        }
    };
    match config.reconcile_source.as_str() {
        "kube" => kube("--reconcile-source kube"),
        "cri" => cri(),
        _ if kube::in_cluster() => kube("in a cluster"),
        _ if config.cri_socket.is_some() => cri(),
        _ => {
            info!("leak reconciler off: not in a cluster and no --cri-socket");
            None
        }
    }
}

/// This node's global IPv4 addresses, for registration (the node netns is
/// the one ipamd runs in; one netlink dump, no namespace change).
fn node_addresses() -> Vec<std::net::Ipv4Addr> {
    match rackline_netlink::Netlink::new().and_then(|mut nl| nl.addrs(None)) {
        Ok(addrs) => addrs
            .into_iter()
            .filter(|a| a.scope == 0 && !a.addr.ip().is_loopback())
            .map(|a| a.addr.ip())
            .collect(),
        Err(e) => {
            tracing::warn!("cannot list node addresses: {e}");
            Vec::new()
        }
    }
}

/// Reads this node's rack label, retrying briefly (the API server may be
/// restarting); without it the node serves only block-less networks.
async fn rack_from_cluster(node: &str, label: &str) -> Option<String> {
    let client = match kube::in_cluster_client() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot read the rack label: {e}");
            return None;
        }
    };
    for attempt in 0..5u32 {
        match kube::rack_from_label(client.clone(), node, label).await {
            Ok(Some(r)) => {
                info!(%node, rack = %r, %label, "rack from the Node label");
                return Some(r);
            }
            Ok(None) => {
                tracing::warn!(%node, %label, "Node has no rack label; rack-bound networks will not allocate here");
                return None;
            }
            Err(e) => {
                tracing::warn!("reading the rack label (attempt {}): {e}", attempt + 1);
                tokio::time::sleep(std::time::Duration::from_millis(500 << attempt)).await;
            }
        }
    }
    None
}

/// Keeps the standby reserves topped up (see `Engine::maintain_standby`).
async fn reserve<S: store::LeaseStore>(
    engine: Arc<Engine<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(engine::RESERVE_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
        engine.reserve().maintain_standby().await;
        engine.reserve().save_reserve().await;
    }
}

/// Registers the node with netmaster, retrying until it succeeds.
async fn register(
    client: Arc<netmaster::NetmasterClient>,
    node: String,
    rack: String,
    addresses: Vec<std::net::Ipv4Addr>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = std::time::Duration::from_millis(200);
    loop {
        let req = rackline_proto::admin::v1::Node {
            name: node.clone(),
            rack: rack.clone(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            registered_unix_ms: 0,
        };
        match client.register_node(req).await {
            Ok(_) => {
                info!(%node, %rack, "registered with netmaster");
                return;
            }
            Err(e) => tracing::warn!("node registration failed (retrying in {backoff:?}): {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
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
