//! Running programs inside a network namespace: `fork` + `setns(CLONE_NEWNET)` in `pre_exec`,
//! exactly how a container runtime executes a CNI plugin from a node.
//!
//! Not `ip netns exec`: it also unshares the mount namespace and remounts /sys, which changes
//! what the program sees beyond the network (containerd started that way sees no cgroups).
//! The namespace fd is opened in the parent before the fork; between fork and exec the child
//! only makes raw syscalls, which is all that is async-signal-safe there.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netns::Netns;

/// `PATH` for children whose environment we clear (the test's own `PATH` may lack sbin).
pub const CHILD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a finished command left behind.
#[derive(Clone, Debug)]
pub struct Output {
    /// The command line, for messages.
    pub argv: String,
    /// Exit code; `128 + signal` when a signal ended it (the shell convention).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// `Ok(self)` on exit 0, otherwise an error carrying the command line and its output.
    pub fn check(self) -> Result<Self> {
        if self.success() {
            return Ok(self);
        }
        bail!(
            "`{}` exited with {}\nstdout: {}\nstderr: {}",
            self.argv,
            self.code,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

pub(crate) fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs in the forked child before exec: clears the signal mask (the demo blocks SIGINT/SIGTERM
/// to wait for them on one thread, and a blocked mask survives exec — std does not reset it, so a
/// daemon would never see our SIGTERM), then enters the namespace.
fn child_setup(netns_fd: Option<RawFd>) -> std::io::Result<()> {
    // SAFETY: sigemptyset/sigprocmask are async-signal-safe, act on a local set, and the child
    // is single-threaded after fork.
    unsafe {
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if let Some(fd) = netns_fd {
        // SAFETY: setns(2) is a plain syscall on an fd the parent keeps open until spawn()
        // returns; it neither allocates nor takes locks, so it is safe between fork and exec.
        if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Spawns `cmd` with its network namespace set to `ns` (`None`: the caller's namespace).
pub(crate) fn spawn_in(cmd: &mut Command, ns: Option<&Netns>) -> Result<Child> {
    let fd: Option<OwnedFd> = ns.map(Netns::open).transpose()?;
    let raw = fd.as_ref().map(AsRawFd::as_raw_fd);
    // SAFETY: the hook runs in the forked child before exec and only makes async-signal-safe
    // syscalls (`child_setup`). `fd` is O_CLOEXEC and outlives `spawn()` below, so `raw` is valid
    // in the child and does not leak into the exec'd program.
    unsafe {
        cmd.pre_exec(move || child_setup(raw));
    }
    let child = cmd.spawn().with_context(|| {
        format!(
            "spawning `{}` in netns {}",
            describe(cmd),
            ns.map_or("<own>", |n| n.name())
        )
    })?;
    drop(fd);
    Ok(child)
}

/// Runs `cmd` to completion inside `ns`, feeding `stdin`, capturing stdout/stderr, and SIGKILLs
/// it after `timeout` (an error then). A non-zero exit is NOT an error here; see
/// [`Output::check`].
pub(crate) fn run(
    mut cmd: Command,
    ns: Option<&Netns>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Output> {
    let argv = describe(&cmd);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_in(&mut cmd, ns)?;
    let child_stdin = child.stdin.take();
    let mut child_stdout = child.stdout.take().context("stdout pipe")?;
    let mut child_stderr = child.stderr.take().context("stderr pipe")?;

    let (status, stdout, stderr) = thread::scope(|s| -> Result<_> {
        s.spawn(move || {
            if let Some(mut pipe) = child_stdin {
                // EPIPE is fine: programs such as VERSION may exit without reading stdin.
                let _ = pipe.write_all(stdin);
            }
        });
        let out = s.spawn(move || read_all(&mut child_stdout));
        let err = s.spawn(move || read_all(&mut child_stderr));
        let status = wait_deadline(&mut child, timeout)?;
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        Ok((status, stdout, stderr))
    })?;
    match status {
        Some(status) => Ok(Output {
            argv,
            code: exit_code(status),
            stdout,
            stderr,
        }),
        None => bail!(
            "`{argv}` did not finish within {timeout:?} (killed)\nstdout: {}\nstderr: {}",
            stdout.trim_end(),
            stderr.trim_end()
        ),
    }
}

fn read_all(r: &mut impl Read) -> String {
    let mut buf = Vec::new();
    let _ = r.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

/// Waits for `child` until `timeout`; on expiry SIGKILLs and reaps it and returns `None`.
fn wait_deadline(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

/// A long-running child (etcd, netmaster, ipamd) with stdout+stderr appended to a log file.
///
/// We keep the `Child` unreaped while it runs, so its pid cannot be recycled and signalling it
/// by pid can never hit another process. Dropping a `Daemon` SIGKILLs and reaps it.
#[derive(Debug)]
pub struct Daemon {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `cmd` inside `ns`; output is appended to `log` after a header line, so restarts
    /// of the same daemon keep one readable history.
    pub(crate) fn spawn(label: &str, mut cmd: Command, ns: &Netns, log: &Path) -> Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(
            file,
            "=== {label}: starting `{}` in netns {}",
            describe(&cmd),
            ns.name()
        )?;
        let stderr: File = file.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(stderr));
        let child = spawn_in(&mut cmd, Some(ns))?;
        Ok(Self {
            label: label.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once the process has exited (it is reaped then).
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("{} was already stopped", self.label),
        }
    }

    /// Fails with the log tail when the process has exited.
    pub(crate) fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exited()? {
            bail!(
                "{} exited early ({status}); last lines of {}:\n{}",
                self.label,
                self.log.display(),
                tail(&self.log, 40)
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the process. `grace == 0` sends SIGKILL only.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let pid = Pid::from_raw(i32::try_from(child.id()).ok()?);
        if !grace.is_zero() && kill(pid, Signal::SIGTERM).is_ok() {
            if let Ok(Some(status)) = wait_deadline_no_kill(&mut child, grace) {
                return Some(status);
            }
        }
        let _ = kill(pid, Signal::SIGKILL);
        child.wait().ok()
    }
}

fn wait_deadline_no_kill(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        thread::sleep(Duration::from_millis(10));
    }
    Ok(child.try_wait()?)
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(Duration::ZERO);
    }
}

/// The last `lines` lines of a text file (empty when it does not exist).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
