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
    /// CNI GC never releases a lease younger than this: its ADD may still be
    /// in flight and absent from the runtime's list of valid attachments.
    #[arg(long, env = "RACKLINE_GC_GRACE_SECS", default_value_t = 60)]
    pub gc_grace_secs: u64,
    #[arg(long, env = "RACKLINE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node_name: String,
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: String,
    pub etcd_timeout: Duration,
    pub socket: PathBuf,
    pub gc_grace: Duration,
}

impl Args {
    pub fn into_config(self) -> Config {
        Config {
            node_name: self.node_name,
            etcd_endpoints: self.etcd_endpoints,
            etcd_prefix: self.etcd_prefix,
            etcd_timeout: Duration::from_millis(self.etcd_timeout_ms),
            socket: self.socket,
            gc_grace: Duration::from_secs(self.gc_grace_secs),
        }
    }
}
