//! containerd 1.6 with its CRI plugin, started inside a lab node's namespace with a private
//! root, state, socket and CNI directories, and the locally built pause image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::cri::Cri;
use super::podman::Podman;
use super::require;
use crate::netns::Netns;
use crate::process::{run, tail, Daemon, Output};

/// The sandbox image every pod starts with (built here, never pulled).
pub const PAUSE_IMAGE: &str = "rackline.local/pause:1";

/// A static `pause()` loop: what a sandbox runs (no registry to pull the usual one from).
const PAUSE_C: &str = r#"#include <signal.h>
#include <unistd.h>
static void bye(int s) { (void)s; _exit(0); }
int main(void) {
    signal(SIGTERM, bye);
    signal(SIGINT, bye);
    for (;;) pause();
}
"#;

/// Builds the pause image as an OCI archive in `dir` (gcc -static, `podman import`,
/// `podman save`) with the given private podman.
pub fn build_pause_archive(dir: &Path, podman: &Podman) -> Result<PathBuf> {
    let gcc = require("gcc", "gcc")?;
    let work = dir.join("pause");
    std::fs::create_dir_all(work.join("rootfs"))?;
    std::fs::write(work.join("pause.c"), PAUSE_C)?;
    let mut cc = Command::new(gcc);
    cc.args(["-static", "-O2", "-o"])
        .arg(work.join("rootfs/pause"))
        .arg(work.join("pause.c"));
    run(cc, None, b"", Duration::from_secs(120))?.check()?;
    let tar = work.join("rootfs.tar");
    let mut t = Command::new("tar");
    t.arg("-C")
        .arg(work.join("rootfs"))
        .arg("-cf")
        .arg(&tar)
        .arg("pause");
    run(t, None, b"", Duration::from_secs(60))?.check()?;
    podman.ok(&[
        "import",
        "-q",
        "--change",
        r#"ENTRYPOINT ["/pause"]"#,
        &tar.display().to_string(),
        PAUSE_IMAGE,
    ])?;
    let archive = work.join("pause.oci.tar");
    let _ = std::fs::remove_file(&archive);
    podman.ok(&[
        "save",
        "--format",
        "oci-archive",
        "-o",
        &archive.display().to_string(),
        PAUSE_IMAGE,
    ])?;
    Ok(archive)
}

pub struct Containerd {
    dir: PathBuf,
    netns: Netns,
    config: PathBuf,
    socket: PathBuf,
    daemon: Option<Daemon>,
    /// Restarts so far (each gets its own log header).
    starts: u32,
}

impl Containerd {
    /// Writes the configuration (runc, cgroupfs, the CNI dirs, the pause image) and starts
    /// containerd inside `netns`.
    pub fn start(dir: &Path, netns: &Netns, cni_bin: &Path, cni_conf: &Path) -> Result<Self> {
        require("containerd", "containerd")?;
        require("ctr", "containerd")?;
        let runc = require("runc", "runc")?;
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # Root here lacks CAP_SYS_RESOURCE: never raise oom_score_adj.
  restrict_oom_score_adj = true
  # Pod netns under the private state dir, not the machine's /var/run/netns.
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                socket = socket.display(),
                opt = dir.join("opt").display(),
                pause = PAUSE_IMAGE,
                runc = runc.display(),
                bin = cni_bin.display(),
                conf = cni_conf.display(),
            ),
        )?;
        let mut me = Self {
            dir: dir.to_owned(),
            netns: netns.clone(),
            config,
            socket,
            daemon: None,
            starts: 0,
        };
        me.spawn()?;
        Ok(me)
    }

    fn log(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&self.config);
        self.starts += 1;
        let label = format!("containerd#{}", self.starts);
        let mut d = Daemon::spawn(&label, cmd, &self.netns, &self.log())?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            d.ensure_running()?;
            if self.socket.exists() && self.ctr(&["version"]).map(|o| o.success()).unwrap_or(false)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer within 60 s:\n{}",
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.daemon = Some(d);
        Ok(())
    }

    /// Stops containerd (SIGTERM; pods and their shims keep running) and starts it again.
    pub fn restart(&mut self) -> Result<()> {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        self.spawn()
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `ctr --address <socket> -n k8s.io <args>` (the CRI namespace).
    pub fn ctr(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args);
        run(cmd, Some(&self.netns), b"", Duration::from_secs(120))
    }

    /// Imports an OCI archive under `name` (e.g. [`PAUSE_IMAGE`]).
    pub fn import(&self, archive: &Path, name: &str) -> Result<()> {
        let base = name.rsplit_once(':').map(|(b, _)| b).unwrap_or(name);
        self.ctr(&[
            "images",
            "import",
            "--base-name",
            base,
            &archive.display().to_string(),
        ])?
        .check()
        .with_context(|| format!("importing {}", archive.display()))?;
        let listed = self.ctr(&["images", "ls", "-q"])?.check()?.stdout;
        if !listed.lines().any(|l| l.trim() == name) {
            bail!("{name} not among containerd's images after import:\n{listed}");
        }
        Ok(())
    }

    /// The containerd log so far (for failure messages).
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    /// Stops and removes every sandbox through the CRI (what a drained kubelet leaves), then
    /// stops containerd and any shim it left (found by our socket path on their command line,
    /// killed by pid).
    pub fn shutdown(&mut self, cri: Option<&mut Cri>) {
        if let Some(cri) = cri {
            if let Ok(ids) = cri.list() {
                for id in ids {
                    let _ = cri.stop(&id);
                    let _ = cri.remove(&id);
                }
            }
        }
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(10));
        }
        kill_shims(&self.socket);
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown(None);
    }
}

/// Shims started for our containerd carry `-address <socket>`; SIGKILL exactly those.
fn kill_shims(socket: &Path) {
    let needle = socket.display().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}
