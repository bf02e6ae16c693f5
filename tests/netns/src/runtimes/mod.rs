//! Real container runtimes on a lab node: the Rackline OCI image, the Kubernetes manifests,
//! podman (CNI backend) and containerd (CRI) started inside a node's network namespace with
//! all their state in a private temporary directory.
//!
//! The recipes that make Debian 12's runtimes work on the CI kernel: runc (crun fails on this
//! cgroup layout), the cgroupfs manager, containerd's `restrict_oom_score_adj = true` (root
//! lacks CAP_SYS_RESOURCE here) and `netns_mounts_under_state_dir = true`, a locally built
//! static pause image (no registry), the runtimes started with setns into the node namespace
//! (not `ip netns exec`, which remounts /sys and hides cgroups), podman options all before
//! `--rootfs DIR` (options after it become the command and podman silently falls back to its
//! default bridge network, which changes the root namespace), and podman's `default_network`
//! always set. Nothing here touches the machine's own podman or containerd state.

pub mod containerd;
pub mod cri;
pub mod image;
pub mod kubelet;
pub mod node;
pub mod podman;

use std::path::{Path, PathBuf};

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
pub use crate::process::Output;

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

/// Fails loudly when a program the runtime tests need is missing.
pub fn require(program: &str, package: &str) -> Result<PathBuf> {
    for dir in crate::process::CHILD_PATH.split(':') {
        let p = Path::new(dir).join(program);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{program} is missing: install {package} (scripts/install-deps.sh)")
}

/// A static busybox root filesystem for podman's `--rootfs` containers.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let busybox = require("busybox", "busybox-static")?;
    let root = dir.join("busybox-rootfs");
    for d in ["bin", "etc", "proc", "sys", "dev", "tmp", "run"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    for applet in ["sh", "sleep", "ip", "cat", "true"] {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    Ok(root)
}

/// Runs `cmd` to completion inside `ns` (None: here), feeding `stdin`; killed after
/// `timeout`. A non-zero exit is not an error ([`Output::check`]).
pub fn exec(cmd: Command, ns: Option<&Netns>, stdin: &[u8], timeout: Duration) -> Result<Output> {
    crate::process::run(cmd, ns, stdin, timeout)
}

/// Gives a nested `cargo build` the environment of a shell, not the test's: cargo runs tests
/// with `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, … set, and build scripts (ring, cc) declare
/// `rerun-if-env-changed` on those, so inheriting them would rebuild half the static target
/// dir on every switch between `scripts/test.sh`'s build step and a test.
pub fn shell_build_env(cmd: &mut Command) {
    cmd.env_clear();
    for k in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "CARGO_BUILD_JOBS",
        "TMPDIR",
        "LANG",
    ] {
        if let Some(v) = std::env::var_os(k) {
            cmd.env(k, v);
        }
    }
}

/// `GET http://<addr><path>` from inside `ns`: (status code, body). The socket is made on a
/// short-lived thread that enters the namespace and exits (a thread that changed namespace is
/// never reused).
pub fn http_get_in(ns: &Netns, addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let fd = ns.open()?;
    let path = path.to_string();
    let joined = std::thread::spawn(move || -> Result<(u16, String)> {
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the node namespace")?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no HTTP status in {resp:?}"))?;
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
    .join();
    joined.map_err(|_| anyhow::anyhow!("HTTP client thread panicked"))?
}
