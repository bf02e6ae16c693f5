//! What the host must provide: root, system tools, and the Rackline binaries under test.
//!
//! Every check fails loudly with the fix; a lab test never skips itself, because a skipped
//! end-to-end test reads as a passed one in CI.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Environment variable that overrides where the Rackline binaries are looked up.
pub const BIN_DIR_ENV: &str = "RACKLINE_BIN_DIR";

/// System tools the lab runs, with the Debian package that provides each.
#[derive(Clone, Debug)]
pub struct Tools {
    pub ip: PathBuf,
    pub ping: PathBuf,
    pub etcd: PathBuf,
    pub etcdctl: PathBuf,
}

const TOOL_DIRS: &[&str] = &["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"];

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(TOOL_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails unless we are root: creating namespaces and links needs CAP_SYS_ADMIN + CAP_NET_ADMIN.
pub fn check_root() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "rackline-lab must run as root (it creates network namespaces, veths and a bridge; \
             needs CAP_SYS_ADMIN + CAP_NET_ADMIN): run the tests as root, e.g. \
             `sudo -E cargo test -p rackline-lab`"
        );
    }
    Ok(())
}

impl Tools {
    /// Root plus every tool a lab needs; one error listing everything missing.
    pub fn locate() -> Result<Self> {
        check_root()?;
        let mut missing = Vec::new();
        let mut get = |name: &str, package: &str, fixed: Option<&str>| {
            let found = match fixed {
                Some(p) if is_executable(Path::new(p)) => Some(PathBuf::from(p)),
                _ => find_tool(name),
            };
            found.unwrap_or_else(|| {
                missing.push(format!("`{name}` (apt-get install {package})"));
                PathBuf::from(name)
            })
        };
        let tools = Self {
            ip: get("ip", "iproute2", None),
            ping: get("ping", "iputils-ping", None),
            etcd: get("etcd", "etcd-server", Some("/usr/bin/etcd")),
            etcdctl: get("etcdctl", "etcd-client", Some("/usr/bin/etcdctl")),
        };
        if !missing.is_empty() {
            bail!(
                "rackline-lab preconditions not met, missing: {}; install them with \
                 `scripts/install-deps.sh` (as root)",
                missing.join(", ")
            );
        }
        Ok(tools)
    }

    /// Only `ip` (for the sweeper); the other paths are left unchecked.
    pub(crate) fn locate_ip() -> Result<Self> {
        check_root()?;
        let ip = find_tool("ip")
            .context("`ip` not found (apt-get install iproute2, or run scripts/install-deps.sh)")?;
        Ok(Self {
            ip,
            ping: "ping".into(),
            etcd: "/usr/bin/etcd".into(),
            etcdctl: "/usr/bin/etcdctl".into(),
        })
    }

    /// A `Command` for `ip <args>`.
    pub fn ip_cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(&self.ip);
        cmd.args(args);
        cmd
    }
}

/// The Rackline binaries under test.
#[derive(Clone, Debug)]
pub struct Bins {
    /// Directory holding all of them; also `CNI_PATH`'s first entry.
    pub dir: PathBuf,
    /// The CNI plugin (`rackline`).
    pub rackline: PathBuf,
    pub ipamd: PathBuf,
    pub netmaster: PathBuf,
    pub racklinectl: PathBuf,
}

/// Where the binaries are: `$RACKLINE_BIN_DIR`, else the cargo profile dir of the running
/// executable (`target/<profile>/deps/<test>-<hash>` → `target/<profile>`, and
/// `target/<profile>/rackline-lab` → `target/<profile>`).
pub fn bin_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().context("current_exe")?;
    let mut dir = exe
        .parent()
        .with_context(|| format!("{} has no parent dir", exe.display()))?;
    if dir.file_name() == Some(OsStr::new("deps")) {
        dir = dir.parent().unwrap_or(dir);
    }
    Ok(dir.to_owned())
}

impl Bins {
    /// Finds all four binaries or fails with the command that builds them.
    pub fn locate() -> Result<Self> {
        let dir = bin_dir()?;
        let missing: Vec<&str> = [
            "rackline",
            "rackline-ipamd",
            "rackline-netmaster",
            "racklinectl",
        ]
        .into_iter()
        .filter(|b| !is_executable(&dir.join(b)))
        .collect();
        if !missing.is_empty() {
            bail!(
                "Rackline binaries missing in {}: {}. Run `cargo build --workspace --bins` first \
                 (same profile as the tests), or set {BIN_DIR_ENV} to the directory holding \
                 rackline, rackline-ipamd, rackline-netmaster and racklinectl",
                dir.display(),
                missing.join(", ")
            );
        }
        Ok(Self {
            rackline: dir.join("rackline"),
            ipamd: dir.join("rackline-ipamd"),
            netmaster: dir.join("rackline-netmaster"),
            racklinectl: dir.join("racklinectl"),
            dir,
        })
    }

    /// `CNI_PATH` as a runtime would set it: our bin dir, then the reference plugins.
    pub fn cni_path(&self) -> String {
        format!("{}:/usr/lib/cni:/opt/cni/bin", self.dir.display())
    }
}
