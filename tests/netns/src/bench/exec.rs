//! Timing one program execution inside a network namespace, the way a runtime pays for a CNI
//! plugin: from the fork to the exit of the process.
//!
//! The lab's own runner ([`crate::Lab::cni`]) polls the child with a sleep that grows to 20 ms,
//! fine for tests but too coarse to time a 3 ms ADD. Here the exit is awaited on a pidfd
//! (`pidfd_open(2)`, readable once the process has exited, before it is reaped) in the same
//! `poll(2)` that drains stdout and stderr, so the timestamp is taken when the kernel reports
//! the exit. Rackline and the reference plugins are timed by this same code.
//!
//! The child is started like the lab starts it: a cleared environment with [`CHILD_PATH`], the
//! netns fd opened in the parent, `setns(CLONE_NEWNET)` plus a cleared signal mask between fork
//! and exec (never `ip netns exec`).

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// `PATH` for children whose environment is cleared (same value as the lab uses).
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One execution: program, argv, environment (on top of [`CHILD_PATH`]), stdin, netns path.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// `/var/run/netns/<name>` of the namespace to run in.
    pub netns: PathBuf,
}

/// What one timed execution did.
#[derive(Clone, Debug)]
pub struct Timed {
    /// From just before `fork` to the kernel's exit notification.
    pub elapsed: Duration,
    /// Exit code; `128 + signal` when killed by a signal.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// CLOCK_MONOTONIC (ns) just before `fork`, and at the exit notification: the clock the
    /// plugin's step line (`RACKLINE_BENCH_STEPS`) uses, so process start and exit are known.
    pub started_ns: u64,
    pub exited_ns: u64,
}

/// CLOCK_MONOTONIC in nanoseconds (what `Instant` reads on Linux).
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Timed {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// stdout parsed as JSON (a CNI result or error document).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.stdout).ok()
    }

    /// `code` of a CNI error document on stdout.
    pub fn cni_code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }

    /// How a failure is counted in reports: `CNI code 11`, or `exit 2 (no CNI error)`.
    pub fn failure_class(&self) -> String {
        match self.cni_code() {
            Some(c) => format!("CNI code {c}"),
            None => format!("exit {} (no CNI error document)", self.code),
        }
    }
}

/// Runs between fork and exec: an empty signal mask (the bench blocks SIGINT/SIGTERM in all its
/// threads to tear down in order; std does not reset the mask), then the namespace.
fn child_setup(netns_fd: RawFd) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask/setns are async-signal-safe raw syscalls on a local set
    // and an fd the parent keeps open until spawn() returns; the child is single-threaded.
    unsafe {
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Spawns `cmd` inside the namespace at `netns` (the fd is O_CLOEXEC and dropped after spawn).
pub fn spawn_in(cmd: &mut Command, netns: &Path) -> Result<Child> {
    let ns = File::open(netns).with_context(|| format!("opening netns {}", netns.display()))?;
    let raw = ns.as_raw_fd();
    // SAFETY: the hook runs in the forked child before exec and only makes async-signal-safe
    // syscalls; `ns` outlives spawn(), so `raw` is valid in the child.
    unsafe {
        cmd.pre_exec(move || child_setup(raw));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("spawning {:?} in {}", cmd.get_program(), netns.display()))?;
    drop(ns);
    Ok(child)
}

fn pidfd_open(pid: u32) -> Result<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd or -1; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("pidfd_open");
    }
    // SAFETY: the kernel just returned this fd to us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Runs `inv` to completion and times it; `Err` only when it cannot be run or exceeds
/// `timeout` (it is then killed — it is our own child, not yet reaped — and reaped).
pub fn run_timed(inv: &Invocation, timeout: Duration) -> Result<Timed> {
    let mut cmd = Command::new(&inv.program);
    cmd.args(&inv.args)
        .env_clear()
        .env("PATH", CHILD_PATH)
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started_ns = mono_ns();
    let t0 = Instant::now();
    let mut child = spawn_in(&mut cmd, &inv.netns)?;
    let pidfd = pidfd_open(child.id())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A netconf is far below the 64 KiB pipe buffer: this never blocks. EPIPE (a program
        // that exits without reading) is fine.
        let _ = stdin.write_all(&inv.stdin);
    }
    let mut stdout = child.stdout.take().context("stdout pipe")?;
    let mut stderr = child.stderr.take().context("stderr pipe")?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let deadline = t0 + timeout;
    let mut exited_at = None;
    let mut exited_ns = 0;
    let (mut out_open, mut err_open) = (true, true);
    // Until the exit is seen, then until both pipes hit EOF (bounded: a daemonised grandchild
    // could hold them open).
    while exited_at.is_none() || out_open || err_open {
        let now = Instant::now();
        let limit = match exited_at {
            None => deadline,
            Some(t) => t + Duration::from_secs(2),
        };
        if now >= limit {
            break;
        }
        let wait_ms = (limit - now).as_millis().min(i32::MAX as u128) as i32;
        let mut fds = [
            pollfd(pidfd.as_raw_fd(), exited_at.is_none()),
            pollfd(stdout.as_raw_fd(), out_open),
            pollfd(stderr.as_raw_fd(), err_open),
        ];
        // SAFETY: `fds` is a valid array of 3 pollfd for the duration of the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms.max(1)) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll");
        }
        if exited_at.is_none() && fds[0].revents != 0 {
            exited_at = Some(Instant::now());
            exited_ns = mono_ns();
        }
        if out_open && fds[1].revents != 0 {
            out_open = drain(&mut stdout, &mut out);
        }
        if err_open && fds[2].revents != 0 {
            err_open = drain(&mut stderr, &mut err);
        }
    }
    let Some(exited_at) = exited_at else {
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "{} did not exit within {timeout:?} (killed)\nstdout: {}\nstderr: {}",
            inv.program.display(),
            String::from_utf8_lossy(&out).trim_end(),
            String::from_utf8_lossy(&err).trim_end()
        );
    };
    let status = child.wait().context("reaping the child")?;
    Ok(Timed {
        elapsed: exited_at - t0,
        code: status
            .code()
            .or_else(|| status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr: String::from_utf8_lossy(&err).into_owned(),
        started_ns,
        exited_ns,
    })
}

fn pollfd(fd: RawFd, active: bool) -> libc::pollfd {
    libc::pollfd {
        // A negative fd is ignored by poll(2).
        fd: if active { fd } else { -1 },
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Reads what is available; false at EOF or on error.
fn drain(r: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match r.read(&mut chunk) {
        Ok(0) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
        Err(e) if e.kind() == ErrorKind::Interrupted || e.kind() == ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

/// A background process we started (an iperf3 server): SIGKILLed and reaped on drop unless it
/// already exited. Only this child's own pid is ever signalled.
pub struct Background {
    child: Option<Child>,
    label: String,
}

impl Background {
    /// Starts `program args` inside `netns`, stdout/stderr to `log`.
    pub fn spawn(
        label: &str,
        program: &str,
        args: &[&str],
        netns: &Path,
        log: &Path,
    ) -> Result<Self> {
        let file = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", CHILD_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file));
        let child = spawn_in(&mut cmd, netns)?;
        Ok(Self {
            child: Some(child),
            label: label.to_owned(),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Waits up to `timeout` for the exit; kills it after that. Returns its exit code.
    pub fn finish(mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
