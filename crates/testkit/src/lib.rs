//! Fixtures for integration tests. Real parts only: a real etcd (Debian's
//! etcd-server) on loopback with a temp dir and free ports; every child is
//! stopped by its PID when the fixture drops, also when a test panics.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod fixtures;
pub mod http;
pub mod pki;

/// A free TCP port on 127.0.0.1 (bound then released; the OS does not hand
/// it out again immediately).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral loopback port")
}

/// Fails loudly (never skips) when a required tool is missing.
pub fn require_binary(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package {package} (scripts/install-deps.sh does)"
    );
}

/// Overrides where [`workspace_bin`] looks (the directory holding the
/// binaries), e.g. for binaries built elsewhere.
pub const BIN_DIR_ENV: &str = "RACKLINE_BIN_DIR";

/// A binary of another workspace package (cargo only builds the tested
/// package's own binaries for its tests, as `CARGO_BIN_EXE_<name>`):
/// `$RACKLINE_BIN_DIR/<name>`, else `<name>` in the cargo profile dir of
/// the running test (`target/<profile>/deps/<test>-<hash>` →
/// `target/<profile>`). `cargo build --workspace --bins` builds it there
/// (scripts/test.sh does, before the tests). Fails loudly, with that
/// command, when it is missing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV).filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test's own path (current_exe)");
            let mut dir = exe.parent().expect("the test binary's directory");
            if dir.file_name() == Some(std::ffi::OsStr::new("deps")) {
                dir = dir.parent().unwrap_or(dir);
            }
            dir.to_owned()
        }
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{name} is missing in {}: run `cargo build --workspace --bins` first (same profile as \
         the tests), or set {BIN_DIR_ENV} to the directory holding it",
        dir.display()
    );
    bin
}

/// A child process killed by PID on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("creating log file");
        let err = out.try_clone().expect("cloning log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({cmd:?}): {e}"));
        Self {
            child: Some(child),
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on the PID of a child we spawned and have not
            // reaped yet, so the PID cannot have been reused.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A single-member etcd on loopback.
pub struct Etcd {
    pub dir: tempfile::TempDir,
    pub client_port: u16,
    pub peer_port: u16,
    proc: Option<Proc>,
    /// TLS on the client port (changed by tests before a restart, e.g. to
    /// trust another client CA).
    pub tls: Option<EtcdTls>,
    /// `USER:PASSWORD` etcdctl uses once auth is enabled (without a client
    /// certificate).
    pub ctl_user: Option<String>,
}

/// etcd's client-port TLS.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed etcd's server certificate (clients trust it).
    pub ca: PathBuf,
    /// etcd's server certificate (SAN 127.0.0.1).
    pub server: pki::CertFiles,
    /// With a bundle: `--client-cert-auth --trusted-ca-file <bundle>`.
    pub client_ca: Option<PathBuf>,
    /// etcdctl's client certificate (CN `root`: etcd maps the CN to the
    /// user once auth is enabled).
    pub ctl: pki::CertFiles,
}

impl EtcdTls {
    /// One CA for everything, client certificates required; files in `dir`.
    pub fn generate(dir: &Path) -> (pki::Ca, Self) {
        let ca = pki::Ca::new("rackline-test-ca");
        let tls = Self {
            ca: ca.write_cert(&dir.join("ca.crt")),
            server: ca.issue(
                dir,
                "etcd-server",
                "etcd",
                &["127.0.0.1", "localhost"],
                pki::Usage::Both,
            ),
            client_ca: Some(dir.join("ca.crt")),
            ctl: ca.issue(dir, "etcdctl", "root", &[], pki::Usage::Client),
        };
        (ca, tls)
    }
}

pub const ETCD_BIN: &str = "/usr/bin/etcd";

impl Etcd {
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// etcd serving TLS on its client port.
    pub fn start_tls(tls: EtcdTls) -> Self {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<EtcdTls>) -> Self {
        require_binary(ETCD_BIN, "etcd-server");
        // A port picked free can be taken by a parallel test before etcd
        // binds it; etcd then exits at once and we retry with new ports.
        let mut last = String::new();
        for _ in 0..5 {
            let dir = tempfile::tempdir().expect("temp dir for etcd");
            let mut e = Self {
                dir,
                client_port: free_port(),
                peer_port: free_port(),
                proc: None,
                tls: tls.clone(),
                ctl_user: None,
            };
            match e.try_restart() {
                Ok(()) => return e,
                Err(log) => last = log,
            }
        }
        panic!("etcd did not start after 5 attempts; last log:\n{last}");
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// etcdctl's connection flags: endpoint and, with TLS, its CA and
    /// client certificate; with `ctl_user`, `--user`.
    pub fn ctl_flags(&self) -> Vec<String> {
        let mut v = vec!["--endpoints".to_string(), self.endpoint()];
        if let Some(t) = &self.tls {
            v.push(format!("--cacert={}", t.ca.display()));
            v.push(format!("--cert={}", t.ctl.cert.display()));
            v.push(format!("--key={}", t.ctl.key.display()));
        }
        if let Some(u) = &self.ctl_user {
            v.push(format!("--user={u}"));
        }
        v
    }

    /// Starts (again) on the same data dir and ports and waits until it
    /// accepts requests.
    pub fn restart(&mut self) {
        if let Err(log) = self.try_restart() {
            panic!("etcd did not restart on {}: {log}", self.endpoint());
        }
    }

    fn try_restart(&mut self) -> Result<(), String> {
        let c = self.endpoint();
        let p = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(ETCD_BIN);
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&t.server.cert)
                .arg("--key-file")
                .arg(&t.server.key);
            if let Some(ca) = &t.client_ca {
                cmd.arg("--client-cert-auth")
                    .arg("--trusted-ca-file")
                    .arg(ca);
            }
        }
        cmd.args(["--name", "t1", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
            .args([
                "--listen-peer-urls",
                &p,
                "--initial-advertise-peer-urls",
                &p,
            ])
            .args(["--initial-cluster", &format!("t1={p}")])
            // Fast elections (writable 0.05-0.11 s after exec here, 0.2-1 s
            // with the default timings) and compaction (throughput falls ~3x
            // without it).
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args([
                "--auto-compaction-mode",
                "revision",
                "--auto-compaction-retention",
                "1000",
            ])
            .args(["--log-level", "error"]);
        let log = self
            .dir
            .path()
            .join(format!("etcd-{}.log", Instant::now().elapsed().as_nanos()));
        self.proc = Some(Proc::spawn("etcd", cmd, log));
        self.wait_ready()
    }

    /// Ready means a write went through, not merely that the port is open.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(p) = self.proc.as_mut() {
                if !p.is_running() {
                    let log = p.log_text();
                    self.proc = None;
                    return Err(format!("etcd exited early: {log}"));
                }
            }
            let ok = Command::new("/usr/bin/etcdctl")
                .args(self.ctl_flags())
                .args(["--command-timeout=1s", "put", "/rackline-test/ready", "1"])
                .env("ETCDCTL_API", "3")
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = self.proc.as_ref().map(|p| p.log_text()).unwrap_or_default();
        self.kill();
        Err(format!("not writable within 15 s: {log}"))
    }

    /// SIGKILL: a member left without quorum takes 7-9 s to exit on
    /// SIGTERM.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// `etcdctl` with this server as endpoint; returns stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        require_binary("/usr/bin/etcdctl", "etcd-client");
        let out = Command::new("/usr/bin/etcdctl")
            .args(self.ctl_flags())
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .expect("running etcdctl");
        assert!(
            out.status.success(),
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
