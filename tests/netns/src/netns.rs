//! Named network namespaces (`ip netns add`), their naming scheme and the sweeper for leftovers.
//!
//! Every namespace the lab creates is named `rl<pid>x<n>-<role>` (docs/CONTRACTS.md): `pid` is
//! the test process, `n` a per-process lab counter. A run killed by a timeout cannot clean up
//! after itself, but its namespaces stay attributable: [`sweep_stale`] deletes those whose pid is
//! gone. All links and bridges of a lab live inside its namespaces, so deleting the namespaces
//! removes them too (veth pairs die with either end's namespace).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::host::Tools;
use crate::process::run;

/// Where `ip netns add` bind-mounts namespaces (`/var/run` is `/run` on Debian).
pub const NETNS_DIR: &str = "/var/run/netns";

/// Prefix of every lab's temp dir: `<tmp>/rackline-lab-rl<pid>x<n>-XXXX`.
pub(crate) const TEMP_PREFIX: &str = "rackline-lab-";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(1);

/// The next lab id of this process: `rl<pid>x<n>`.
pub(crate) fn next_lab_id() -> String {
    let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("rl{}x{n}", std::process::id())
}

/// A named network namespace, `/var/run/netns/<name>`. Cheap to clone: it is only a name; the
/// [`crate::Lab`] that created it deletes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub(crate) fn named(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The namespace name as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that pins the namespace; what a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Whether the namespace is (still) mounted.
    pub fn exists(&self) -> bool {
        self.path().exists()
    }

    /// Opens the namespace for `setns(2)`. Opened in the parent, before fork: a `pre_exec` hook
    /// must not allocate or open files.
    pub(crate) fn open(&self) -> Result<OwnedFd> {
        let file = File::open(self.path())
            .with_context(|| format!("opening netns {}", self.path().display()))?;
        Ok(OwnedFd::from(file))
    }

    pub(crate) fn create(tools: &Tools, name: &str) -> Result<Self> {
        let ns = Self::named(name);
        run(tools.ip_cmd(["netns", "add", name]), None, b"", IP_TIMEOUT)?
            .check()
            .with_context(|| format!("ip netns add {name}"))?;
        Ok(ns)
    }

    /// `ip netns del`: unmounts and removes the name. The kernel frees the namespace (and every
    /// link in it) once no process or fd holds it any more.
    pub(crate) fn delete(&self, tools: &Tools) -> Result<()> {
        if !self.exists() {
            return Ok(());
        }
        run(
            tools.ip_cmd(["netns", "del", &self.name]),
            None,
            b"",
            IP_TIMEOUT,
        )?
        .check()
        .with_context(|| format!("ip netns del {}", self.name))?;
        Ok(())
    }
}

impl AsRef<Netns> for Netns {
    fn as_ref(&self) -> &Netns {
        self
    }
}

pub(crate) const IP_TIMEOUT: Duration = Duration::from_secs(20);

/// Parses `rl<pid>x<n>-<role>` (or the temp dir form `rackline-lab-rl<pid>x<n>-…`) → pid.
pub fn lab_owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(TEMP_PREFIX).unwrap_or(name);
    let rest = rest.strip_prefix("rl")?;
    let (pid, rest) = rest.split_once('x')?;
    let (n, _role) = rest.split_once('-')?;
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(pid) || !numeric(n) {
        return None;
    }
    pid.parse().ok()
}

/// Whether a process with this pid exists (a zombie counts: its parent still owns it).
pub fn pid_alive(pid: i32) -> bool {
    !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// What [`sweep_stale`] removed.
#[derive(Debug, Default)]
pub struct SweepReport {
    pub namespaces: Vec<String>,
    pub killed_pids: Vec<i32>,
    pub temp_dirs: Vec<PathBuf>,
    /// Failures that did not stop the sweep.
    pub errors: Vec<String>,
}

/// Deletes what labs of dead processes left behind (a test binary killed by a timeout runs no
/// `Drop`): namespaces named `rl<pid>x<n>-*` whose pid no longer exists, the processes still
/// running inside exactly those namespaces (daemons the dead lab had started; killed by pid with
/// SIGKILL, found with `ip netns pids`), and the dead lab's temp dirs. Namespaces of live
/// processes, including concurrently running labs, are never touched.
pub fn sweep_stale() -> Result<SweepReport> {
    let tools = Tools::locate_ip()?;
    let mut report = SweepReport::default();
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries.filter_map(|e| e.ok()).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).context(NETNS_DIR),
    };
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = lab_owner_pid(&name) else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        let ns = Netns::named(&name);
        match run(
            tools.ip_cmd(["netns", "pids", &name]),
            None,
            b"",
            IP_TIMEOUT,
        ) {
            Ok(out) => {
                for pid in out
                    .stdout
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
                        Ok(()) => report.killed_pids.push(pid),
                        Err(Errno::ESRCH) => {}
                        Err(e) => report.errors.push(format!("kill {pid} in {name}: {e}")),
                    }
                }
            }
            Err(e) => report.errors.push(format!("ip netns pids {name}: {e:#}")),
        }
        match ns.delete(&tools) {
            Ok(()) => report.namespaces.push(name),
            // A concurrent sweeper may have won the race.
            Err(_) if !ns.exists() => {}
            Err(e) => report.errors.push(format!("{e:#}")),
        }
    }
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.filter_map(|e| e.ok()) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let Some(owner) = lab_owner_pid(&name) else {
                continue;
            };
            if pid_alive(owner) {
                continue;
            }
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => report.temp_dirs.push(entry.path()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => report
                    .errors
                    .push(format!("{}: {e}", entry.path().display())),
            }
        }
    }
    Ok(report)
}

/// Names of all namespaces currently mounted under [`NETNS_DIR`].
pub fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lab_names() {
        assert_eq!(lab_owner_pid("rl123x4-n1p2"), Some(123));
        assert_eq!(lab_owner_pid("rl123x4-tor"), Some(123));
        assert_eq!(lab_owner_pid("rackline-lab-rl9x1-AbCd"), Some(9));
        assert_eq!(lab_owner_pid("rl123-tor"), None);
        assert_eq!(lab_owner_pid("rlx4-tor"), None);
        assert_eq!(lab_owner_pid("cni-1234"), None);
        assert_eq!(lab_owner_pid("rl12ax4-tor"), None);
    }
}
