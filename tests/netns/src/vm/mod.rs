//! VLAN tests. 802.1Q needs the kernel's 8021q driver, which the CI
//! kernel lacks, so the scenario (`tests/netns/vm/vlan-scenario.sh`) runs in a
//! qemu VM (TCG) booting Debian's linux-image-amd64 with an initramfs built
//! here ([`initramfs`]). Where the host kernel has 8021q (probed by creating a
//! VLAN device in a scratch netns) the same script runs natively instead.
//!
//! Either way everything on the host happens inside one scratch netns
//! `rl<pid>x<n>-vm` (lo only): etcd on 127.0.0.1:2379, netmaster on :7650 (it
//! creates the networks vlan100/200/300 and answers the final lease check),
//! and qemu, whose slirp NIC forwards the guest's 10.0.2.100:2379 to that etcd
//! and nothing else (`restrict=on`). In the guest: a trunk bridge, two node
//! netns, one ipamd per node (guest root netns, own socket and --node-name),
//! the real plugin executed per pod from inside the node netns.
//!
//! The script prints `RESULT <step> ok|fail <detail>` lines; [`VlanRun`]
//! parses them. Missing qemu/kernel fails with the packages to install.

pub mod cpio;
pub mod initramfs;
pub mod qemu;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::daemons::{daemon_command, wait_ready, CLIENT_TIMEOUT};
use crate::host::{check_root, Bins, Tools};
use crate::netns::{list_netns, next_lab_id, Netns};
use crate::process::{run, Daemon, Output, CHILD_PATH};

/// Every step the scenario reports, in order; each must say `ok`.
pub const STEPS: &[&str] = &[
    "topology",
    "ipamd_ready",
    "concurrent_add",
    "adds",
    "ping_vlan100",
    "ping_vlan200",
    "trunk_tags",
    "isolation_across_nodes",
    "isolation_same_node",
    "isolation_reverse",
    "wrong_device_vlan_id",
    "wrong_device_kind",
    "add_rollback",
    "del_remove_policy",
    "del_keep_policy",
    "scenario_done",
];

/// Hard limit for the VM run (boot ~7 s, scenario ~1 min on a quiet machine;
/// CI runs builds alongside, so wide headroom).
pub const VM_TIMEOUT: Duration = Duration::from_secs(240);
/// Environment variable: a directory holding static `rackline` and
/// `rackline-ipamd` (skips the static build).
pub const STATIC_BIN_DIR_ENV: &str = "RACKLINE_STATIC_BIN_DIR";
const TARGET: &str = "x86_64-unknown-linux-gnu";
const ETCD_PORT: u16 = 2379;
const NETMASTER: &str = "127.0.0.1:7650";

/// Where the scenario ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VlanMode {
    /// The host kernel has 8021q.
    Native,
    /// qemu (TCG) with Debian's kernel.
    Vm,
}

/// One `RESULT` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// What a scenario run produced.
#[derive(Debug)]
pub struct VlanRun {
    pub mode: VlanMode,
    pub steps: Vec<Step>,
    /// The whole console (VM) or script output (native).
    pub output: String,
    /// Wall time of the VM boot + scenario (or of the native script).
    pub scenario_wall: Duration,
    /// Time the static build took (`None` natively or with a prebuilt dir).
    pub static_build: Option<Duration>,
    /// Leases of the scenario's containers still in etcd afterwards.
    pub leftover_leases: Vec<Value>,
}

/// Parses the `RESULT <step> ok|fail <detail>` lines of `output`.
pub fn parse_results(output: &str) -> Vec<Step> {
    output
        .lines()
        .filter_map(|l| {
            let rest = l.trim_end_matches('\r').split_once("RESULT ")?.1;
            let mut it = rest.splitn(3, ' ');
            let name = it.next()?.to_owned();
            let ok = match it.next()? {
                "ok" => true,
                "fail" => false,
                _ => return None,
            };
            Some(Step {
                name,
                ok,
                detail: it.next().unwrap_or("").to_owned(),
            })
        })
        .collect()
}

impl VlanRun {
    /// Fails (with the whole output) unless every step of [`STEPS`] reported
    /// ok, nothing else failed, and no lease was left behind.
    pub fn check(&self) -> Result<()> {
        let mut problems = Vec::new();
        for s in &self.steps {
            if !s.ok {
                problems.push(format!("{} failed: {}", s.name, s.detail));
            }
        }
        for want in STEPS {
            if !self.steps.iter().any(|s| s.name == *want) {
                problems.push(format!("{want} never reported"));
            }
        }
        if !self.leftover_leases.is_empty() {
            problems.push(format!("leases left in etcd: {:?}", self.leftover_leases));
        }
        if problems.is_empty() {
            return Ok(());
        }
        bail!(
            "VLAN scenario ({:?}) failed:\n  {}\n---- output ----\n{}",
            self.mode,
            problems.join("\n  "),
            self.output
        )
    }
}

impl fmt::Display for VlanRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "VLAN scenario ({:?}), wall {:?}",
            self.mode, self.scenario_wall
        )?;
        if let Some(b) = self.static_build {
            writeln!(f, "static build {b:?}")?;
        }
        for s in &self.steps {
            writeln!(
                f,
                "  {:<24} {} {}",
                s.name,
                if s.ok { "ok  " } else { "FAIL" },
                s.detail
            )?;
        }
        Ok(())
    }
}

/// The host side: a scratch netns with etcd and netmaster; removed on drop.
struct HostSide {
    tools: Tools,
    bins: Bins,
    id: String,
    ns: Netns,
    dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
}

impl Drop for HostSide {
    fn drop(&mut self) {
        for d in &mut self.daemons {
            d.stop(Duration::from_secs(2));
        }
        // The scenario's own namespaces in native mode share our id prefix.
        for name in list_netns() {
            if name.starts_with(&format!("{}-", self.id)) {
                let _ = Netns::named(name).delete(&self.tools);
            }
        }
    }
}

impl HostSide {
    fn new() -> Result<Self> {
        check_root()?;
        let tools = Tools::locate()?;
        let bins = Bins::locate()?;
        let id = next_lab_id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("rackline-lab-{id}-vlan-"))
            .tempdir()?;
        let ns = Netns::create(&tools, &format!("{id}-vm"))?;
        let me = Self {
            tools,
            bins,
            id,
            ns,
            dir,
            daemons: Vec::new(),
        };
        me.ip(&["link", "set", "lo", "up"])?;
        Ok(me)
    }

    fn ip(&self, args: &[&str]) -> Result<Output> {
        let cmd = self.tools.ip_cmd(args);
        run(cmd, Some(&self.ns), b"", CLIENT_TIMEOUT)?.check()
    }

    fn start_etcd(&mut self) -> Result<()> {
        let url = format!("http://127.0.0.1:{ETCD_PORT}");
        let peer = "http://127.0.0.1:2380";
        let mut cmd = daemon_command(&self.tools.etcd);
        cmd.args(["--name", "vm", "--data-dir"])
            .arg(self.dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
            ])
            .args([
                "--listen-peer-urls",
                peer,
                "--initial-advertise-peer-urls",
                peer,
            ])
            .args(["--initial-cluster", &format!("vm={peer}")])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "error"]);
        let log = self.dir.path().join("etcd.log");
        let mut etcd = Daemon::spawn("etcd", cmd, &self.ns, &log)?;
        let (etcdctl, ns) = (self.tools.etcdctl.clone(), self.ns.clone());
        wait_ready(&mut etcd, "etcdctl endpoint health", || {
            let mut c = Command::new(&etcdctl);
            c.env("ETCDCTL_API", "3").args([
                "--endpoints",
                &url,
                "--dial-timeout",
                "1s",
                "endpoint",
                "health",
            ]);
            run(c, Some(&ns), b"", CLIENT_TIMEOUT).is_ok_and(|o| o.success())
        })?;
        self.daemons.push(etcd);
        Ok(())
    }

    fn racklinectl(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.bins.racklinectl);
        cmd.env_clear()
            .env("PATH", CHILD_PATH)
            .args(["--server", &format!("http://{NETMASTER}")])
            .args(args);
        run(cmd, Some(&self.ns), b"", CLIENT_TIMEOUT)
    }

    /// netmaster, then the three VLAN networks the scenario uses.
    fn start_netmaster_and_networks(&mut self) -> Result<()> {
        let mut cmd = daemon_command(&self.bins.netmaster);
        cmd.args(["--etcd-endpoints", &format!("http://127.0.0.1:{ETCD_PORT}")])
            .args([
                "--listen",
                NETMASTER,
                "--advertise",
                NETMASTER,
                "--id",
                "vm",
            ]);
        let log = self.dir.path().join("netmaster.log");
        let mut nm = Daemon::spawn("netmaster", cmd, &self.ns, &log)?;
        wait_ready(&mut nm, "racklinectl network list", || {
            self.racklinectl(&["-o", "json", "network", "list"])
                .is_ok_and(|o| o.success())
        })?;
        self.daemons.push(nm);
        for (vid, octet) in [(100, 100), (200, 200), (300, 30)] {
            let (name, v) = (format!("vlan{vid}"), vid.to_string());
            let subnet = format!("10.{octet}.0.0/24");
            let gw = format!("10.{octet}.0.1");
            self.racklinectl(&[
                "network",
                "create",
                &name,
                "--subnet",
                &subnet,
                "--gateway",
                &gw,
                "--master",
                "uplink",
                "--vlan",
                &v,
            ])?
            .check()
            .with_context(|| format!("creating network {name}"))?;
        }
        Ok(())
    }

    /// Whether this kernel can create an 802.1Q device (tried in a scratch netns).
    fn has_8021q(&self) -> Result<bool> {
        let probe = Netns::create(&self.tools, &format!("{}-probe", self.id))?;
        let ipn = |args: &[&str]| {
            let mut full = vec!["-n", probe.name()];
            full.extend_from_slice(args);
            run(self.tools.ip_cmd(&full), None, b"", CLIENT_TIMEOUT)
        };
        let made = ipn(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])?.check();
        let vlan = made.and_then(|_| {
            ipn(&[
                "link", "add", "link", "p0", "name", "p0.5", "type", "vlan", "id", "5",
            ])
        });
        probe.delete(&self.tools)?;
        Ok(vlan?.success())
    }

    fn leftover_leases(&self) -> Result<Vec<Value>> {
        let out = self
            .racklinectl(&["-o", "json", "lease", "list"])?
            .check()?;
        let all: Value = serde_json::from_str(&out.stdout).context("lease list JSON")?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| {
                l["containerId"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("cid-"))
            })
            .cloned()
            .collect())
    }
}

/// The workspace root (this crate is tests/netns).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Static `rackline` and `rackline-ipamd`: from [`STATIC_BIN_DIR_ENV`], or
/// built with `+crt-static` in `target/static` (its own target dir, so the
/// normal build is never invalidated), profile `vm`.
pub fn static_bins() -> Result<(PathBuf, PathBuf, Option<Duration>)> {
    if let Some(dir) = std::env::var_os(STATIC_BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return Ok((dir.join("rackline"), dir.join("rackline-ipamd"), None));
    }
    let root = workspace_root();
    let target_dir = root.join("target/static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // A shell's environment: the test's CARGO_* variables would make build scripts rerun.
    crate::runtimes::shell_build_env(&mut cmd);
    cmd.current_dir(&root)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args(["build", "--profile", "vm", "--target", TARGET])
        // The same package set as scripts/test.sh's static-build step and
        // scripts/build-image.sh: one build serves the VM and the image.
        .args([
            "-p",
            "rackline-cni",
            "-p",
            "rackline-ipamd",
            "-p",
            "rackline-netmaster",
            "-p",
            "rackline-ctl",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    let started = Instant::now();
    run(cmd, None, b"", Duration::from_secs(3600))?
        .check()
        .context("static build of rackline + rackline-ipamd for the VM")?;
    let dir = target_dir.join(TARGET).join("vm");
    Ok((
        dir.join("rackline"),
        dir.join("rackline-ipamd"),
        Some(started.elapsed()),
    ))
}

fn scenario_env(
    ip: &str,
    tcpdump: &str,
    rackline: &str,
    ipamd: &str,
    etcd: &str,
    prefix: &str,
    work: &str,
) -> String {
    format!(
        "export IP={ip}\nexport TCPDUMP={tcpdump}\nexport RACKLINE={rackline}\nexport IPAMD={ipamd}\n\
         export ETCD={etcd}\nexport P={prefix}\nexport WORK={work}\n"
    )
}

fn find(name: &str, package: &str) -> Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .map(|p| p.canonicalize().unwrap_or(p))
        .with_context(|| format!("`{name}` not found (apt-get install {package})"))
}

/// Runs the VLAN scenario (natively if the host has 8021q, else in the VM).
pub fn run_vlan_scenario() -> Result<VlanRun> {
    let mut host = HostSide::new()?;
    let native = host.has_8021q()?;
    let busybox = find("busybox", "busybox-static")?;
    let tcpdump = find("tcpdump", "tcpdump")?;
    // Locate (and fail on) the VM prerequisites before starting anything.
    let vm = if native { None } else { Some(qemu::locate()?) };
    host.start_etcd()?;
    host.start_netmaster_and_networks()?;
    let started = Instant::now();
    let (mode, output, static_build) = match vm {
        None => {
            let work = host.dir.path().join("work");
            std::fs::create_dir_all(&work)?;
            let env = scenario_env(
                &host.tools.ip.to_string_lossy(),
                &tcpdump.to_string_lossy(),
                &host.bins.rackline.to_string_lossy(),
                &host.bins.ipamd.to_string_lossy(),
                &format!("http://127.0.0.1:{ETCD_PORT}"),
                &format!("{}-", host.id),
                &work.to_string_lossy(),
            );
            let script = host.dir.path().join("scenario.sh");
            std::fs::write(&script, format!("{env}\n{}", initramfs::SCENARIO_SH))?;
            let mut cmd = Command::new(&busybox);
            cmd.env_clear()
                .env("PATH", CHILD_PATH)
                .arg("sh")
                .arg(&script);
            let out = run(cmd, Some(&host.ns), b"", VM_TIMEOUT);
            kill_native_ipamds(&work, &host.bins.ipamd);
            let out = out?;
            (
                VlanMode::Native,
                format!("{}\n{}", out.stdout, out.stderr),
                None,
            )
        }
        Some((qemu_bin, kernel)) => {
            let (rackline, ipamd, build_time) = static_bins()?;
            let env = scenario_env(
                initramfs::GUEST_IP,
                initramfs::GUEST_TCPDUMP,
                initramfs::GUEST_RACKLINE,
                initramfs::GUEST_IPAMD,
                "http://10.0.2.100:2379",
                "vm-",
                "/run/vlan-test",
            );
            let image = initramfs::build(&initramfs::Contents {
                modules_dir: &kernel.modules_dir,
                busybox: &busybox,
                ip: &host.tools.ip,
                tcpdump: &tcpdump,
                rackline: &rackline,
                ipamd: &ipamd,
                env,
            })?;
            let initrd = host.dir.path().join("initramfs.cpio");
            std::fs::write(&initrd, image)?;
            let console = host.dir.path().join("console.log");
            let (text, _) = qemu::boot(
                &qemu_bin, &busybox, &kernel, &initrd, &console, &host.ns, ETCD_PORT, VM_TIMEOUT,
            )?;
            (VlanMode::Vm, text, build_time)
        }
    };
    let scenario_wall = started.elapsed() - static_build.unwrap_or_default();
    Ok(VlanRun {
        mode,
        steps: parse_results(&output),
        output,
        scenario_wall,
        static_build,
        leftover_leases: host.leftover_leases()?,
    })
}

/// Native mode: the script starts the ipamds; if it was killed by the
/// deadline they would outlive it. Stop exactly those pids (checked to be
/// our ipamd binary).
fn kill_native_ipamds(work: &Path, ipamd: &Path) {
    for n in 1..=2 {
        let Ok(pid) = std::fs::read_to_string(work.join(format!("n{n}/ipamd.pid"))) else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<i32>() else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        if exe.as_deref() == Some(ipamd) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_lines_amid_console_noise() {
        let out = "[    1.0] random kernel line\r\nRESULT boot ok kernel=6.1\r\n# dump\n\
                   RESULT ping_vlan100 fail p1 (n1) -> q1: 100% loss\nRESULT-END\nRESULT x maybe\n";
        let steps = parse_results(out);
        assert_eq!(
            steps,
            vec![
                Step {
                    name: "boot".into(),
                    ok: true,
                    detail: "kernel=6.1".into()
                },
                Step {
                    name: "ping_vlan100".into(),
                    ok: false,
                    detail: "p1 (n1) -> q1: 100% loss".into()
                },
            ]
        );
        let run = VlanRun {
            mode: VlanMode::Vm,
            steps,
            output: out.into(),
            scenario_wall: Duration::ZERO,
            static_build: None,
            leftover_leases: Vec::new(),
        };
        let e = run.check().unwrap_err().to_string();
        assert!(
            e.contains("ping_vlan100 failed") && e.contains("topology never reported"),
            "{e}"
        );
    }
}
