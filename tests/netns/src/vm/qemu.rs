//! Booting the test VM: qemu with software emulation (TCG — /dev/kvm on the CI
//! machine is a nested PVM device that cannot boot a stock kernel), Debian's
//! linux-image-amd64 kernel, our initramfs, one slirp NIC that can reach only
//! the etcd forward, the serial console into a file. A hard deadline SIGKILLs
//! qemu (our own child, by pid).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::netns::Netns;
use crate::process::{exit_code, spawn_in, CHILD_PATH};

pub const QEMU: &str = "qemu-system-x86_64";
const QBOOT: &str = "/usr/share/qemu/qboot.rom";

/// The guest kernel and its modules directory.
#[derive(Clone, Debug)]
pub struct GuestKernel {
    pub vmlinuz: PathBuf,
    pub modules_dir: PathBuf,
    pub version: String,
}

/// Finds qemu and a Debian kernel whose modules are installed, or fails with
/// the packages to install (never a skip).
pub fn locate() -> Result<(PathBuf, GuestKernel)> {
    let qemu = ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(QEMU))
        .find(|p| p.exists());
    let mut kernels: Vec<GuestKernel> = std::fs::read_dir("/boot")
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            let modules_dir = Path::new("/lib/modules").join(&version);
            modules_dir
                .join("modules.dep")
                .exists()
                .then(|| GuestKernel {
                    vmlinuz: e.path(),
                    modules_dir,
                    version,
                })
        })
        .collect();
    kernels.sort_by(|a, b| a.version.cmp(&b.version));
    let mut missing = Vec::new();
    if qemu.is_none() {
        missing.push(format!("{QEMU} (apt-get install qemu-system-x86)"));
    }
    if !Path::new(QBOOT).exists() {
        missing.push(format!("{QBOOT} (apt-get install qemu-system-data)"));
    }
    if kernels.is_empty() {
        missing.push(
            "a /boot/vmlinuz-* with /lib/modules/<version>/modules.dep (apt-get install \
             linux-image-amd64)"
                .into(),
        );
    }
    if !missing.is_empty() {
        bail!(
            "this host kernel has no 8021q, so the VLAN test needs a VM, but {} missing; run \
             scripts/install-deps.sh (as root)",
            missing.join(" and ")
        );
    }
    Ok((qemu.expect("checked"), kernels.pop().expect("checked")))
}

/// Boots the VM inside `ns` (where etcd listens on 127.0.0.1:`etcd_port`;
/// `busybox nc` relays each guest connection to it) and waits for it to power off; returns the console text and the wall time.
/// The console is returned even when qemu fails or times out, inside the error.
#[allow(clippy::too_many_arguments)]
pub fn boot(
    qemu: &Path,
    busybox: &Path,
    kernel: &GuestKernel,
    initrd: &Path,
    console: &Path,
    ns: &Netns,
    etcd_port: u16,
    timeout: Duration,
) -> Result<(String, Duration)> {
    let mut cmd = Command::new(qemu);
    cmd.env_clear().env("PATH", CHILD_PATH);
    cmd.args(["-accel", "tcg", "-cpu", "qemu64", "-m", "512", "-smp", "1"])
        .args(["-bios", QBOOT])
        .args(["-display", "none", "-monitor", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args(["-nodefaults", "-no-user-config"])
        // restrict=on: the guest reaches nothing but the guestfwd below. `cmd:` spawns a
        // relay per guest connection; the `tcp:` chardev form is ONE stream for qemu's whole
        // life, which two ipamds' gRPC connections corrupt (etcd calls then time out).
        .arg("-netdev")
        .arg(format!(
            "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:2379-cmd:{} nc 127.0.0.1 {etcd_port}",
            busybox.display()
        ))
        // romfile= : no iPXE option ROM needed (and none installed).
        .args(["-device", "virtio-net-pci,netdev=n0,romfile="])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]);
    let started = Instant::now();
    let end = run_guest(cmd, ns, console, timeout);
    let wall = started.elapsed();
    let text = std::fs::read(console)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    match end? {
        GuestEnd::Exited { code: 0, .. } => Ok((text, wall)),
        GuestEnd::StoppedAfterResults => {
            eprintln!(
                "the guest wrote all its results but did not power off within \
                 {POWEROFF_GRACE:?}; its qemu was stopped"
            );
            Ok((text, wall))
        }
        GuestEnd::Exited { code, stderr } => bail!(
            "qemu exited with {code} after {wall:?}\nstderr: {}\nconsole:\n{text}",
            stderr.trim_end()
        ),
        GuestEnd::TimedOut { stderr } => bail!(
            "qemu (hard timeout {timeout:?}) did not finish (killed)\nstderr: {}\nconsole:\n{text}",
            stderr.trim_end()
        ),
    }
}

/// How long the guest may take to power off once it has written `RESULT-END`.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);

enum GuestEnd {
    Exited {
        code: i32,
        stderr: String,
    },
    /// Every result was on the console, the guest never powered off, and its
    /// qemu was stopped.
    StoppedAfterResults,
    TimedOut {
        stderr: String,
    },
}

/// Runs qemu until it exits, or until `timeout`. The guest powers itself off
/// after writing `RESULT-END`; under heavy host load the emulated CPU has
/// been seen to stall in the guest kernel's shutdown path (RCU stall,
/// ksoftirqd soft lockup) after every result was written. The results are
/// complete then, so the guest gets [`POWEROFF_GRACE`] to exit and its qemu
/// (started here, stopped by its own handle) is stopped after that.
fn run_guest(mut cmd: Command, ns: &Netns, console: &Path, timeout: Duration) -> Result<GuestEnd> {
    let stderr_path = console.with_extension("qemu-stderr");
    let stderr_file = std::fs::File::create(&stderr_path)
        .with_context(|| format!("creating {}", stderr_path.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr_file);
    let mut child = spawn_in(&mut cmd, Some(ns))?;
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let started = Instant::now();
    let mut results_at: Option<Instant> = None;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(GuestEnd::Exited {
                code: exit_code(status),
                stderr: stderr(),
            });
        }
        let now = Instant::now();
        if results_at.is_none() && results_written(console) {
            results_at = Some(now);
        }
        let after_results = results_at.is_some_and(|t| now >= t + POWEROFF_GRACE);
        if after_results || now >= started + timeout {
            let _ = child.kill();
            child.wait()?;
            return Ok(if after_results {
                GuestEnd::StoppedAfterResults
            } else {
                GuestEnd::TimedOut { stderr: stderr() }
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The scenario's last line is on the console.
fn results_written(console: &Path) -> bool {
    std::fs::read(console).is_ok_and(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .any(|l| l.trim_end() == "RESULT-END")
    })
}
