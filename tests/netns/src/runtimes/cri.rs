//! A small CRI client (kubelet's side of the runtime API) over containerd's unix socket:
//! pod sandboxes are created, inspected, stopped and removed exactly as a kubelet does it,
//! so containerd itself runs the CNI plugin (ADD on RunPodSandbox, DEL on Stop and again,
//! with an empty netns, on Remove).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, PodSandboxStatusRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// A kubelet allows a sandbox creation about 4 minutes; ours are ~0.2 s quiet.
pub const CRI_TIMEOUT: Duration = Duration::from_secs(60);

/// A pod as the kubelet describes it to the runtime.
#[derive(Clone, Debug, Default)]
pub struct PodDef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub annotations: HashMap<String, String>,
}

impl PodDef {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            annotations: HashMap::new(),
        }
    }

    pub fn annotation(mut self, k: &str, v: &str) -> Self {
        self.annotations.insert(k.into(), v.into());
        self
    }
}

/// What PodSandboxStatus says about a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxStatus {
    pub ready: bool,
    pub ip: String,
    /// The pod's network namespace (from the verbose runtime spec).
    pub netns: Option<PathBuf>,
}

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    cgroup_parent: String,
    log_dir: PathBuf,
}

impl Cri {
    /// Connects to `socket`; sandboxes get cgroups under `cgroup_parent` and logs in `log_dir`.
    pub fn connect(socket: &Path, cgroup_parent: &str, log_dir: &Path) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let path = socket.to_owned();
        let channel = rt
            .block_on(
                Endpoint::from_static("http://cri.invalid")
                    .connect_timeout(Duration::from_secs(5))
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let p = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(p).await?,
                            ))
                        }
                    })),
            )
            .with_context(|| format!("connecting to the CRI socket {}", socket.display()))?;
        Ok(Self {
            rt,
            client: RuntimeServiceClient::new(channel),
            cgroup_parent: cgroup_parent.into(),
            log_dir: log_dir.into(),
        })
    }

    fn call<T, F>(
        &mut self,
        what: &str,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let fut = f(self.client.clone());
        match self
            .rt
            .block_on(async move { tokio::time::timeout(CRI_TIMEOUT, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(anyhow::anyhow!("{what}: {:?}: {}", s.code(), s.message())),
            Err(_) => Err(anyhow::anyhow!("{what}: no answer within {CRI_TIMEOUT:?}")),
        }
    }

    /// RunPodSandbox: containerd sets up the network through the CNI plugin.
    pub fn run(&mut self, pod: &PodDef) -> Result<String> {
        let log_directory = self.log_dir.join(&pod.uid);
        std::fs::create_dir_all(&log_directory)?;
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: pod.name.clone(),
                uid: pod.uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            hostname: pod.name.clone(),
            log_directory: log_directory.display().to_string(),
            annotations: pod.annotations.clone(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NamespaceMode::Pod as i32,
                        pid: NamespaceMode::Pod as i32,
                        ipc: NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let what = format!("RunPodSandbox {}/{}", pod.namespace, pod.name);
        let r = self.call(&what, |mut c| async move {
            c.run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            })
            .await
        })?;
        Ok(r.pod_sandbox_id)
    }

    pub fn status(&mut self, id: &str) -> Result<SandboxStatus> {
        let id = id.to_string();
        let r = self.call("PodSandboxStatus", |mut c| async move {
            c.pod_sandbox_status(PodSandboxStatusRequest {
                pod_sandbox_id: id,
                verbose: true,
            })
            .await
        })?;
        let st = r.status.context("no status")?;
        let netns = r
            .info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| {
                v["runtimeSpec"]["linux"]["namespaces"]
                    .as_array()
                    .and_then(|ns| {
                        ns.iter()
                            .find(|n| n["type"] == "network")
                            .and_then(|n| n["path"].as_str().map(PathBuf::from))
                    })
            });
        Ok(SandboxStatus {
            ready: st.state == 0,
            ip: st.network.map(|n| n.ip).unwrap_or_default(),
            netns,
        })
    }

    /// StopPodSandbox: CNI DEL with the netns.
    pub fn stop(&mut self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("StopPodSandbox", |mut c| async move {
            c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// RemovePodSandbox: CNI DEL again, with an empty netns.
    pub fn remove(&mut self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call("RemovePodSandbox", |mut c| async move {
            c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id })
                .await
        })
        .map(drop)
    }

    /// Every sandbox's id.
    pub fn list(&mut self) -> Result<Vec<String>> {
        let r = self.call("ListPodSandbox", |mut c| async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })?;
        Ok(r.items.into_iter().map(|s| s.id).collect())
    }
}
