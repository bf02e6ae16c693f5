//! Where the reconciler learns which pod sandboxes are live on this node:
//! the Kubernetes API (pods whose `spec.nodeName` is this node) when ipamd
//! runs in a cluster, otherwise the CRI runtime's `ListPodSandbox` over its
//! unix socket. Chosen once at start-up.

use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use rackline_proto::cri::v1::runtime_service_client::RuntimeServiceClient;
use rackline_proto::cri::v1::ListPodSandboxRequest;
use tonic::transport::{Endpoint, Uri};

use super::decide::{Sandboxes, SourceKind};

/// How long one listing may take before the pass gives up (and reclaims
/// nothing).
pub const LIST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("listing this node's pods from the Kubernetes API server: {0}")]
    Kube(String),
    #[error("listing pod sandboxes over the CRI socket {socket}: {why}")]
    Cri { socket: String, why: String },
}

/// A source of live sandboxes.
pub enum Source {
    Kube { client: Client, node: String },
    Cri { socket: PathBuf },
}

impl Source {
    pub fn kind(&self) -> SourceKind {
        match self {
            Source::Kube { .. } => SourceKind::Kube,
            Source::Cri { .. } => SourceKind::Cri,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Kube { node, .. } => format!("Kubernetes API, pods on node {node}"),
            Source::Cri { socket } => format!("CRI ListPodSandbox on {}", socket.display()),
        }
    }

    pub async fn list(&self) -> Result<Sandboxes, SourceError> {
        match self {
            Source::Kube { client, node } => list_pods(client.clone(), node).await,
            Source::Cri { socket } => list_sandboxes(socket).await,
        }
    }
}

/// One metadata-only LIST per pass, read from the API server rather than
/// the pod-annotation cache: a watch that lags or silently stopped would
/// make a live pod look gone, and a LIST is authoritative.
async fn list_pods(client: Client, node: &str) -> Result<Sandboxes, SourceError> {
    let api: Api<Pod> = Api::all(client);
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = tokio::time::timeout(LIST_TIMEOUT, api.list_metadata(&lp))
        .await
        .map_err(|_| SourceError::Kube(format!("no answer within {LIST_TIMEOUT:?}")))?
        .map_err(|e| SourceError::Kube(e.to_string()))?;
    let mut out = Sandboxes::default();
    for p in list.items {
        let m = p.metadata;
        let (Some(ns), Some(name)) = (m.namespace, m.name) else {
            continue;
        };
        out.pods.entry((ns, name)).or_default().extend(m.uid);
    }
    Ok(out)
}

/// Every sandbox the runtime knows, ready or not: a NOTREADY sandbox still
/// exists, and its runtime will send the DEL when it stops or removes it.
pub async fn list_sandboxes(socket: &std::path::Path) -> Result<Sandboxes, SourceError> {
    let err = |why: String| SourceError::Cri {
        socket: socket.display().to_string(),
        why,
    };
    let path = socket.to_path_buf();
    let call = async move {
        // The authority is never resolved: the connector dials the socket.
        let channel = Endpoint::from_static("http://cri.invalid")
            .connect_timeout(LIST_TIMEOUT)
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .map_err(|e| format!("connecting: {}", source_chain(&e)))?;
        let resp = RuntimeServiceClient::new(channel)
            .list_pod_sandbox(ListPodSandboxRequest { filter: None })
            .await
            .map_err(|s| format!("ListPodSandbox: {} ({:?})", s.message(), s.code()))?;
        Ok::<_, String>(resp.into_inner().items)
    };
    let items = tokio::time::timeout(LIST_TIMEOUT, call)
        .await
        .map_err(|_| err(format!("no answer within {LIST_TIMEOUT:?}")))?
        .map_err(err)?;
    let mut out = Sandboxes::default();
    for s in items {
        if let Some(m) = &s.metadata {
            out.pods
                .entry((m.namespace.clone(), m.name.clone()))
                .or_default()
                .insert(m.uid.clone());
        }
        out.ids.insert(s.id);
    }
    Ok(out)
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_proto::cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
    use rackline_proto::cri::v1::{ListPodSandboxResponse, PodSandbox, PodSandboxMetadata};

    /// A CRI runtime that knows two sandboxes, one of them NOTREADY.
    struct FakeRuntime;

    #[tonic::async_trait]
    impl RuntimeService for FakeRuntime {
        async fn list_pod_sandbox(
            &self,
            req: tonic::Request<ListPodSandboxRequest>,
        ) -> Result<tonic::Response<ListPodSandboxResponse>, tonic::Status> {
            assert!(
                req.into_inner().filter.is_none(),
                "every sandbox, any state"
            );
            let sandbox = |id: &str, name: &str, state: i32| PodSandbox {
                id: id.into(),
                metadata: Some(PodSandboxMetadata {
                    name: name.into(),
                    uid: format!("uid-{name}"),
                    namespace: "shop".into(),
                    attempt: 0,
                }),
                state,
                created_at: 1,
                ..Default::default()
            };
            Ok(tonic::Response::new(ListPodSandboxResponse {
                items: vec![sandbox("aaa111", "web-0", 0), sandbox("bbb222", "web-1", 1)],
            }))
        }
    }

    #[tokio::test]
    async fn lists_every_sandbox_over_a_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("cri.sock");
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(FakeRuntime))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        );
        let got = list_sandboxes(&socket).await.unwrap();
        let mut ids: Vec<&str> = got.ids.iter().map(String::as_str).collect();
        ids.sort();
        assert_eq!(ids, ["aaa111", "bbb222"]);
        assert!(got.pods[&("shop".to_string(), "web-1".to_string())].contains("uid-web-1"));
        server.abort();
    }

    #[tokio::test]
    async fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("absent.sock");
        let e = list_sandboxes(&socket).await.unwrap_err().to_string();
        assert!(e.contains("absent.sock") && e.contains("connecting"), "{e}");
    }
}
