//! podman 4.3 with its CNI backend, run inside a lab node's namespace with a private
//! configuration, storage and run directory (nothing of the machine's own podman is read or
//! written).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::require;
use crate::netns::Netns;
use crate::process::{run, Output};

/// How long one podman command may take (a loaded 2-core machine: `podman run` is ~0.3 s
/// quiet).
pub const PODMAN_TIMEOUT: Duration = Duration::from_secs(120);

/// A private podman: its own containers.conf, storage and CNI directories under `dir`,
/// every command run inside `netns` (None: the caller's, for image-only work with
/// `--network none`).
pub struct Podman {
    dir: PathBuf,
    netns: Option<Netns>,
    env: Vec<(String, String)>,
    /// Every container's cgroup parent (cgroupfs): ours alone, removed on drop (podman's
    /// default, `libpod_parent`, would stay behind in the machine's cgroup tree).
    cgroup_parent: String,
}

/// Distinguishes the private podmans of one test process.
static INSTANCES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

impl Podman {
    /// Sets up the configuration: runc, cgroupfs, CNI plugins from `cni_bin`, network
    /// configurations from `cni_conf`, `default_network` = `default_network` (always set, so
    /// podman never creates its bridge network).
    pub fn new(
        dir: &Path,
        netns: Option<&Netns>,
        cni_bin: &Path,
        cni_conf: &Path,
        default_network: &str,
    ) -> Result<Self> {
        require("podman", "podman")?;
        require("conmon", "conmon")?;
        let runc = require("runc", "runc")?;
        // libpod's database and volumes default to the graph root (private); setting
        // static_dir elsewhere made every `podman run` wait ~20 s here.
        for d in ["root", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                r#"[containers]
default_ulimits = ["nofile=20000:20000", "nproc=20000:20000"]
log_driver = "k8s-file"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
runtime = "runc"
tmp_dir = "{tmp}"

[engine.runtimes]
runc = ["{runc}"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin}"]
network_config_dir = "{netconf}"
default_network = "{default_network}"
"#,
                tmp = dir.join("tmp").display(),
                runc = runc.display(),
                bin = cni_bin.display(),
                netconf = cni_conf.display(),
            ),
        )?;
        let storage = dir.join("storage.conf");
        std::fs::write(
            &storage,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("root").display(),
                dir.join("run").display()
            ),
        )?;
        let registries = dir.join("registries.conf");
        std::fs::write(&registries, "")?;
        let env = vec![
            ("CONTAINERS_CONF".into(), conf.display().to_string()),
            (
                "CONTAINERS_STORAGE_CONF".into(),
                storage.display().to_string(),
            ),
            (
                "CONTAINERS_REGISTRIES_CONF".into(),
                registries.display().to_string(),
            ),
            (
                "XDG_RUNTIME_DIR".into(),
                dir.join("tmp").display().to_string(),
            ),
            (
                "XDG_CONFIG_HOME".into(),
                dir.join("tmp").display().to_string(),
            ),
        ];
        let n = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Self {
            dir: dir.to_owned(),
            netns: netns.cloned(),
            env,
            cgroup_parent: format!("/rackline-podman-{}-{n}", std::process::id()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `podman <args>` inside the node namespace; the output whatever the exit code.
    pub fn raw(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("podman");
        match args.split_first() {
            Some((&"run", rest)) => {
                cmd.args(["run", "--cgroup-parent", &self.cgroup_parent])
                    .args(rest);
            }
            _ => {
                cmd.args(args);
            }
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run(cmd, self.netns.as_ref(), b"", PODMAN_TIMEOUT)
    }

    /// `podman <args>`; an error unless it exits 0.
    pub fn ok(&self, args: &[&str]) -> Result<Output> {
        self.raw(args)?.check()
    }

    /// Loads an OCI archive into the private storage.
    pub fn load(&self, archive: &Path) -> Result<()> {
        self.ok(&["load", "-q", "-i", &archive.display().to_string()])
            .map(drop)
            .with_context(|| format!("podman load {}", archive.display()))
    }

    /// Removes every container and image of this private storage (only ours exist there).
    pub fn clean(&self) -> Result<()> {
        self.ok(&["rm", "-f", "-a", "-t", "0"])?;
        Ok(())
    }

    /// Names of the containers that exist (running or not).
    pub fn containers(&self) -> Result<Vec<String>> {
        let out = self.ok(&["ps", "-a", "--format", "{{.Names}}"])?;
        Ok(out
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.raw(&["rm", "-f", "-a", "-t", "0"]);
        // The cgroup parent (and conmon's cgroup under it), on every hierarchy: empty once
        // the containers are gone.
        let name = self.cgroup_parent.trim_start_matches('/');
        let root = Path::new("/sys/fs/cgroup");
        let mut bases = vec![root.to_path_buf()];
        if let Ok(entries) = std::fs::read_dir(root) {
            bases.extend(entries.flatten().map(|e| e.path()));
        }
        for b in bases {
            let _ = std::fs::remove_dir(b.join(name).join("conmon"));
            let _ = std::fs::remove_dir(b.join(name));
        }
    }
}
