//! The node's rack from a label on its Kubernetes Node object, when ipamd
//! runs in a cluster and no `--rack` was given. Read once at start-up: a
//! node changing racks is a re-registration, not a live event.

use std::path::Path;
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::Node;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

pub const DEFAULT_RACK_LABEL: &str = "topology.kubernetes.io/rack";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("in-cluster configuration: {0}")]
    Config(String),
    #[error("reading Node {node:?}: {source}")]
    Api {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// The API server from `--kubeconfig`, loaded once at start-up.
static KUBECONFIG: OnceLock<Config> = OnceLock::new();

/// Uses the API server and credentials of the kubeconfig at `path` (its
/// current context) instead of the in-cluster ones: ipamd run outside a
/// pod (systemd) then behaves as in a cluster. Called once, before
/// anything asks [`in_cluster`].
pub async fn use_kubeconfig(path: &Path) -> Result<(), KubeError> {
    let bad = |e: String| KubeError::Config(format!("kubeconfig {}: {e}", path.display()));
    let kc = Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let _ = KUBECONFIG.set(config);
    Ok(())
}

/// True inside a pod (the API server's address is injected) or with
/// `--kubeconfig`.
pub fn in_cluster() -> bool {
    KUBECONFIG.get().is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
}

pub fn in_cluster_client() -> Result<Client, KubeError> {
    let config = match KUBECONFIG.get() {
        Some(c) => c.clone(),
        None => Config::incluster().map_err(|e| KubeError::Config(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeError::Config(e.to_string()))
}

/// The value of `label` on Node `node` (None when the label is absent).
/// Used for the rack and for the QoS node class.
pub async fn rack_from_label(
    client: Client,
    node: &str,
    label: &str,
) -> Result<Option<String>, KubeError> {
    let nodes: Api<Node> = Api::all(client);
    let n = nodes.get(node).await.map_err(|source| KubeError::Api {
        node: node.to_string(),
        source,
    })?;
    Ok(n.metadata.labels.and_then(|mut l| l.remove(label)))
}
