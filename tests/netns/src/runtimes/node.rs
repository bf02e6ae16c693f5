//! A lab node run the way the DaemonSet runs Rackline on a Kubernetes node: the lab overlay
//! rendered from `deploy/`, its init container (the installer) and its ipamd container run
//! from the built image by podman in the node's namespace, with the node's filesystem (the
//! DaemonSet's hostPath volumes: CNI dirs, ipamd's socket and state) under a node root
//! directory. The lab's own ipamd of that node is stopped first.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::image::{self, Image};
use super::kubelet::{self, NodeContext};
use super::podman::Podman;
use crate::lab::Lab;
use crate::netns::Netns;
use crate::process::Output;

/// The DaemonSet's socket path inside the node (hostPath /run/rackline).
pub const SOCKET: &str = "/run/rackline/ipamd.sock";
pub const CNI_BIN: &str = "/opt/cni/bin";
pub const CNI_CONF: &str = "/etc/cni/net.d";
/// The conflist's CNI network name (podman's network name).
pub const CNI_NETWORK: &str = "rackline";
/// The ipamd container's name in the private podman.
pub const IPAMD: &str = "rackline-ipamd";

pub struct RuntimeNode {
    pub netns: Netns,
    pub node_name: String,
    pub node_ip: String,
    pub dir: PathBuf,
    pub ctx: NodeContext,
    pub podman: Podman,
    pub image: Image,
    /// The rendered lab overlay.
    pub docs: Vec<Value>,
    /// ipamd containers started so far (names are unique per start).
    starts: std::sync::atomic::AtomicU32,
}

impl RuntimeNode {
    /// Prepares node `k` of `lab` (one rack, network `prod`): renders the lab overlay, points
    /// the conflist's socket and log at the node root, loads the image into a private podman
    /// and stops the lab's own ipamd of that node.
    pub fn prepare(lab: &Lab, k: usize, dir: &Path) -> Result<Self> {
        let image = image::ensure()?;
        let docs = image::yaml_to_json(&image::render("overlays/lab")?)?;
        let node = lab.node(k);
        let host_root = dir.join("node-root");
        let scratch = dir.join("scratch");
        std::fs::create_dir_all(&host_root)?;
        std::fs::create_dir_all(&scratch)?;
        let mut config_maps = kubelet::config_maps(&docs);
        let ctx0 = NodeContext {
            node_name: node.name().to_string(),
            node_ip: node.address().to_string(),
            host_root: host_root.clone(),
            service_env: BTreeMap::new(),
            config_maps: BTreeMap::new(),
            scratch: scratch.clone(),
        };
        // What an operator edits in the ConfigMap for this node's paths (the plugin runs on
        // the host, where the node root stands in for /).
        let cni = config_maps
            .get_mut("rackline-cni")
            .context("ConfigMap rackline-cni")?;
        let conflist = cni
            .get_mut("10-rackline.conflist")
            .context("rackline-cni has no 10-rackline.conflist")?;
        for (from, to) in [
            (
                SOCKET.to_string(),
                ctx0.host_path(SOCKET).display().to_string(),
            ),
            (
                "/var/log/rackline.log".to_string(),
                dir.join("plugin.log").display().to_string(),
            ),
        ] {
            if !conflist.contains(&from) {
                bail!("the lab conflist no longer mentions {from}");
            }
            *conflist = conflist.replace(&from, &to);
        }
        let ctrl = lab.ctrl_addr().to_string();
        let service_env: BTreeMap<String, String> = [
            ("RACKLINE_NETMASTER_SERVICE_HOST", ctrl.as_str()),
            ("RACKLINE_NETMASTER_SERVICE_PORT", "7650"),
            ("RACKLINE_NETMASTER_SERVICE_PORT_ADMIN", "7650"),
            ("RACKLINE_ETCD_SERVICE_HOST", ctrl.as_str()),
            ("RACKLINE_ETCD_SERVICE_PORT", "2379"),
            ("RACKLINE_ETCD_SERVICE_PORT_CLIENT", "2379"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ctx = NodeContext {
            service_env,
            config_maps,
            ..ctx0
        };
        for d in [CNI_BIN, CNI_CONF] {
            std::fs::create_dir_all(ctx.host_path(d))?;
        }
        let podman = Podman::new(
            &dir.join("podman"),
            Some(node.netns()),
            &ctx.host_path(CNI_BIN),
            &ctx.host_path(CNI_CONF),
            CNI_NETWORK,
        )?;
        podman.load(&image.archive)?;
        if lab.ipamd_pid(k).is_some() {
            lab.stop_ipamd(k)?;
        }
        Ok(Self {
            netns: node.netns().clone(),
            node_name: node.name().to_string(),
            node_ip: node.address().to_string(),
            dir: dir.to_owned(),
            ctx,
            podman,
            image,
            docs,
            starts: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn daemonset_spec(&self) -> Result<&Value> {
        Ok(kubelet::pod_spec(image::object(
            &self.docs,
            "DaemonSet",
            "rackline-node",
        )?))
    }

    /// `podman run` arguments of a DaemonSet container, `extra` inserted before the image.
    pub fn run_args(&self, container: &str, extra: &[String]) -> Result<Vec<String>> {
        let spec = self.daemonset_spec()?;
        let c = kubelet::container(spec, container)?;
        let mut args = kubelet::podman_run_args(spec, c, &self.ctx, &self.image.tag)?;
        let at = args
            .iter()
            .position(|a| *a == self.image.tag)
            .context("image in the run arguments")?;
        for (i, e) in extra.iter().enumerate() {
            args.insert(at + i, e.clone());
        }
        Ok(args)
    }

    /// Runs the init container (the installer) to completion.
    pub fn install(&self, extra: &[String]) -> Result<Output> {
        let mut args = vec!["run".to_string(), "--rm".to_string()];
        args.extend(self.run_args("install-cni", extra)?);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.podman.raw(&argv)
    }

    /// Starts the ipamd container (detached) and waits for its socket.
    pub fn start_ipamd(&self) -> Result<String> {
        let n = self
            .starts
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        let name = format!("{IPAMD}-{n}");
        let mut args = vec![
            "run".to_string(),
            "-d".to_string(),
            "--name".to_string(),
            name.clone(),
        ];
        args.extend(self.run_args("ipamd", &[])?);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        self.podman.ok(&argv)?;
        self.wait_socket(&name)?;
        Ok(name)
    }

    fn wait_socket(&self, name: &str) -> Result<()> {
        let socket = self.socket();
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            let state = self
                .podman
                .raw(&["inspect", "--format", "{{.State.Status}}", name])?;
            if Instant::now() > deadline || state.stdout.trim() == "exited" {
                bail!(
                    "ipamd container {name} did not serve {} ({}):\n{}",
                    socket.display(),
                    state.stdout.trim(),
                    self.logs(name)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops an ipamd container the way the kubelet ends a pod (SIGTERM, then the grace
    /// period), and removes it.
    pub fn stop_ipamd(&self, name: &str) -> Result<()> {
        self.podman.ok(&["stop", "-t", "30", name])?;
        self.podman.ok(&["rm", name])?;
        Ok(())
    }

    pub fn logs(&self, name: &str) -> String {
        self.podman
            .raw(&["logs", name])
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_default()
    }

    /// ipamd's socket on the host.
    pub fn socket(&self) -> PathBuf {
        self.ctx.host_path(SOCKET)
    }

    pub fn cni_bin(&self) -> PathBuf {
        self.ctx.host_path(CNI_BIN)
    }

    pub fn cni_conf(&self) -> PathBuf {
        self.ctx.host_path(CNI_CONF)
    }

    /// Copies the reference `loopback` plugin into the node's CNI bin dir (a Kubernetes node
    /// has it; containerd sets up `lo` with it).
    pub fn add_loopback(&self) -> Result<()> {
        let src = Path::new("/usr/lib/cni/loopback");
        if !src.is_file() {
            bail!("/usr/lib/cni/loopback missing: install containernetworking-plugins");
        }
        std::fs::copy(src, self.cni_bin().join("loopback"))?;
        Ok(())
    }

    /// The plugin's log (the conflist's logFile).
    pub fn plugin_log(&self) -> String {
        crate::process::tail(&self.dir.join("plugin.log"), 60)
    }
}
