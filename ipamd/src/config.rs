//! Command-line and environment configuration.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "rackline-ipamd", version, about = "Rackline node IPAM daemon")]
pub struct Args {
    /// This node's name (as the Kubernetes Node is called).
    #[arg(long, env = "RACKLINE_NODE_NAME")]
    pub node_name: String,
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "RACKLINE_ETCD_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    pub etcd_endpoints: Vec<String>,
    #[arg(long, env = "RACKLINE_ETCD_PREFIX", default_value = "/rackline")]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub etcd_credentials: rackline_store::EtcdCredentialArgs,
    /// Deadline for each etcd call (the plugin's `timeoutMs` bounds a whole ADD).
    #[arg(long, env = "RACKLINE_ETCD_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub etcd_timeout_ms: u64,
    /// The unix socket the CNI plugin talks to (created mode 0600).
    #[arg(
        long,
        env = "RACKLINE_SOCKET",
        default_value = "/run/rackline/ipamd.sock"
    )]
    pub socket: PathBuf,
    /// Most connections on the socket at once (lowered to what the fd limit
    /// allows); at the limit the idlest connection makes room.
    #[arg(long, env = "RACKLINE_MAX_CONNECTIONS", default_value_t = 512,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,
    /// CNI GC never releases a lease younger than this: its ADD may still be
    /// in flight and absent from the runtime's list of valid attachments.
    #[arg(long, env = "RACKLINE_GC_GRACE_SECS", default_value_t = 60)]
    pub gc_grace_secs: u64,
    /// Seconds between passes of the leak reconciler, which reclaims the
    /// leases and node veths of pod sandboxes that are gone (0: off).
    #[arg(long, env = "RACKLINE_RECONCILE_INTERVAL_SECS", default_value_t = 60)]
    pub reconcile_interval_secs: u64,
    /// The reconciler reclaims a lease only when its sandbox has been absent
    /// this long (over two consecutive passes) and the lease is at least
    /// this old: never an ADD in flight.
    #[arg(long, env = "RACKLINE_RECONCILE_GRACE_SECS", default_value_t = 300)]
    pub reconcile_grace_secs: u64,
    /// Where the reconciler learns the live sandboxes: `kube` (the pods on
    /// this node, from the API server; needs ipamd in a cluster), `cri`
    /// (ListPodSandbox over --cri-socket), or `auto`: kube in a cluster,
    /// else cri when --cri-socket is given, else the reconciler is off.
    #[arg(long, env = "RACKLINE_RECONCILE_SOURCE", default_value = "auto",
          value_parser = ["auto", "kube", "cri"])]
    pub reconcile_source: String,
    /// The CRI runtime's unix socket, e.g. /run/containerd/containerd.sock
    /// or /run/crio/crio.sock.
    #[arg(long, env = "RACKLINE_CRI_SOCKET")]
    pub cri_socket: Option<PathBuf>,
    #[arg(long, env = "RACKLINE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// This node's rack. Without it a rack-bound network cannot allocate on
    /// this node (block-less networks still can).
    #[arg(long, env = "RACKLINE_RACK")]
    pub rack: Option<String>,
    /// The Node label holding the rack, read when running in a cluster
    /// without --rack.
    #[arg(long, env = "RACKLINE_RACK_LABEL", default_value = crate::kube::DEFAULT_RACK_LABEL)]
    pub rack_label: String,
    /// netmaster endpoints (host:port or URL, comma separated), for node
    /// registration and blocks.
    #[arg(long, env = "RACKLINE_NETMASTER", value_delimiter = ',')]
    pub netmaster: Vec<String>,
    /// CA bundle (PEM) that signed netmaster's certificate; bare host:port
    /// endpoints are then https://.
    #[arg(long, env = "RACKLINE_NETMASTER_CA_FILE", value_name = "PEM")]
    pub netmaster_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) presented to netmaster (mTLS).
    #[arg(long, env = "RACKLINE_NETMASTER_CERT_FILE", value_name = "PEM")]
    pub netmaster_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "RACKLINE_NETMASTER_KEY_FILE", value_name = "PEM")]
    pub netmaster_key_file: Option<PathBuf>,
    /// File holding the bearer token ipamd presents to netmaster (role
    /// `node`).
    #[arg(long, env = "RACKLINE_NETMASTER_TOKEN_FILE", value_name = "FILE")]
    pub netmaster_token_file: Option<PathBuf>,
    /// This node's addresses as registered; default: its global IPv4 addresses.
    #[arg(
        long = "node-address",
        env = "RACKLINE_NODE_ADDRESS",
        value_delimiter = ','
    )]
    pub node_addresses: Vec<std::net::Ipv4Addr>,
    /// Acquire a new block when fewer free addresses than this remain in
    /// this node's blocks.
    #[arg(long, env = "RACKLINE_BLOCK_LOW_WATERMARK", default_value_t = 4)]
    pub block_low_watermark: u64,
    /// Standby addresses kept per network for allocation while etcd is
    /// unreachable (0 = none: ADD fails with "try again later" then).
    #[arg(long, env = "RACKLINE_STANDBY", default_value_t = 4)]
    pub standby: usize,
    /// Group commit: at most this many concurrent lease creations share
    /// one etcd transaction, each under its own guards (1 = one
    /// transaction per lease).
    #[arg(long, env = "RACKLINE_GROUP_COMMIT", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=rackline_store::MAX_BATCH_LIMIT as u64))]
    pub group_commit: u64,
    /// Group commit: etcd transactions of lease creations outstanding at
    /// once; creations arriving meanwhile wait and join the next one.
    #[arg(long, env = "RACKLINE_GROUP_COMMIT_IN_FLIGHT", default_value_t = 4,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub group_commit_in_flight: u64,
    /// Where the outage journal lives (must survive an ipamd restart);
    /// default: the socket's directory.
    #[arg(long, env = "RACKLINE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// An ipamd started while etcd is unreachable serves ADDs from the
    /// standby reserve it persisted in --state-dir, if etcd confirmed that
    /// reserve less than this long ago (keep it below netmaster's dead-node
    /// grace: older records may have been reclaimed and handed out).
    #[arg(
        long,
        env = "RACKLINE_OFFLINE_START_MAX_AGE_SECS",
        default_value_t = 3600
    )]
    pub offline_start_max_age_secs: u64,
    /// Return a block after it stayed empty this long.
    #[arg(long, env = "RACKLINE_BLOCK_HOLD_DOWN_SECS", default_value_t = 30)]
    pub block_hold_down_secs: u64,
    /// The CNI plugin's runtime directory (its netconf `runtimeDir`): ipamd
    /// drains the releases the plugin spooled under `<dir>/release/` while
    /// ipamd was unreachable.
    #[arg(long, env = "RACKLINE_RUNTIME_DIR", default_value = "/run/rackline")]
    pub runtime_dir: PathBuf,
    /// This node's QoS class (machine type): selects the network's
    /// `qos.nodeClasses[<class>]` bandwidth for pods on this node.
    #[arg(long, env = "RACKLINE_NODE_CLASS")]
    pub node_class: Option<String>,
    /// The Node label holding the QoS class, read when running in a cluster
    /// without --node-class.
    #[arg(long, env = "RACKLINE_NODE_CLASS_LABEL", default_value = crate::qos::DEFAULT_NODE_CLASS_LABEL)]
    pub node_class_label: String,
    /// Read pod annotations (`rackline.io/ip`, `rackline.io/sticky`,
    /// `rackline.io/bandwidth`) from a cached watch of this node's pods when
    /// running in a cluster.
    #[arg(long, env = "RACKLINE_POD_ANNOTATIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub pod_annotations: bool,
    /// Enforce Kubernetes NetworkPolicy on this node's pods when running in
    /// a cluster (watches NetworkPolicies, Pods and Namespaces). `false`
    /// leaves the NetworkPolicy layer allow-all; Rackline ACLs still apply.
    #[arg(long, env = "RACKLINE_NETWORK_POLICY", default_value_t = true, action = clap::ArgAction::Set)]
    pub network_policy: bool,
    /// Talk to the Kubernetes API server this kubeconfig names (its current
    /// context) instead of the in-cluster one: for ipamd run outside a pod.
    /// Everything ipamd does "when running in a cluster" then applies.
    #[arg(long, env = "RACKLINE_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz over HTTP on ADDR:PORT
    /// (conventional port 9641; off when not given).
    #[arg(long, env = "RACKLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// TTL of this node's liveness record (the etcd lease ipamd keeps
    /// alive every TTL/3): a second ipamd with the same --node-name waits
    /// this long (plus 2 s) for the record before refusing to start, and
    /// netmaster counts a node dead from when its record expires.
    #[arg(long, env = "RACKLINE_LIVENESS_TTL_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..=300))]
    pub liveness_ttl_secs: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_timeout: Duration,
    pub etcd_credentials: rackline_store::EtcdCredentialArgs,
    pub socket: PathBuf,
    pub max_connections: usize,
    pub gc_grace: Duration,
    pub reconcile: crate::reconcile::Settings,
    pub reconcile_source: String,
    pub cri_socket: Option<PathBuf>,
    pub rack: Option<String>,
    pub rack_label: String,
    pub netmaster: Vec<String>,
    pub netmaster_credentials: rackline_security::client::ClientCredentials,
    pub node_addresses: Vec<std::net::Ipv4Addr>,
    pub blocks: crate::blocks::BlockPolicy,
    pub standby: usize,
    pub group_commit: usize,
    pub group_commit_in_flight: usize,
    pub state_dir: PathBuf,
    pub offline_start_max_age: Duration,
    pub runtime_dir: PathBuf,
    pub node_class: Option<String>,
    pub node_class_label: String,
    pub pod_annotations: bool,
    pub network_policy: bool,
    pub kubeconfig: Option<PathBuf>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub liveness_ttl: Duration,
}

impl Args {
    pub fn into_config(self) -> Config {
        let state_dir = self
            .state_dir
            .clone()
            .or_else(|| self.socket.parent().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("/var/lib/rackline"));
        Config {
            node_name: self.node_name,
            etcd_endpoints: self.etcd_endpoints,
            etcd_prefix: self.etcd_prefix,
            etcd_timeout: Duration::from_millis(self.etcd_timeout_ms),
            etcd_credentials: self.etcd_credentials,
            socket: self.socket,
            max_connections: self.max_connections as usize,
            gc_grace: Duration::from_secs(self.gc_grace_secs),
            reconcile: crate::reconcile::Settings {
                interval: Duration::from_secs(self.reconcile_interval_secs),
                grace: Duration::from_secs(self.reconcile_grace_secs),
            },
            reconcile_source: self.reconcile_source,
            cri_socket: self.cri_socket,
            standby: self.standby,
            group_commit: self.group_commit as usize,
            group_commit_in_flight: self.group_commit_in_flight as usize,
            state_dir,
            offline_start_max_age: Duration::from_secs(self.offline_start_max_age_secs),
            runtime_dir: self.runtime_dir,
            node_class: self.node_class,
            node_class_label: self.node_class_label,
            pod_annotations: self.pod_annotations,
            network_policy: self.network_policy,
            kubeconfig: self.kubeconfig,
            metrics_listen: self.metrics_listen,
            liveness_ttl: Duration::from_secs(self.liveness_ttl_secs),
            rack: self.rack,
            rack_label: self.rack_label,
            netmaster: self.netmaster,
            netmaster_credentials: rackline_security::client::ClientCredentials {
                ca_file: self.netmaster_ca_file,
                cert_file: self.netmaster_cert_file,
                key_file: self.netmaster_key_file,
                token_file: self.netmaster_token_file,
            },
            node_addresses: self.node_addresses,
            blocks: crate::blocks::BlockPolicy {
                low_watermark: self.block_low_watermark,
                hold_down: Duration::from_secs(self.block_hold_down_secs),
                ..Default::default()
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_policy_is_on_by_default_and_can_be_turned_off() {
        let base = [
            "rackline-ipamd",
            "--node-name",
            "n1",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
        ];
        let on = Args::try_parse_from(base).unwrap().into_config();
        assert!(on.network_policy);
        let off = Args::try_parse_from(base.iter().chain(&["--network-policy", "false"]))
            .unwrap()
            .into_config();
        assert!(!off.network_policy);
    }
}
