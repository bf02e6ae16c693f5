//! Harness for the end-to-end tests: a real etcd, the real
//! `rackline-netmaster` binary and the real `racklinectl`, all on loopback.
//! Every process is started here, tracked by its PID and killed in `Drop`,
//! so a failing assertion never leaves one behind.

#![allow(dead_code)] // each test file uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rackline_model::{Lease, PodRef};
use rackline_store::{CreateLease, Store};

pub const PREFIX: &str = "/rl-test";

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub use rackline_testkit::Etcd;

pub fn store(etcd: &Etcd, rt: &tokio::runtime::Runtime) -> Store {
    rt.block_on(Store::connect(
        &[etcd.endpoint()],
        PREFIX,
        Duration::from_secs(2),
    ))
    .expect("store connect")
}

/// The real rackline-netmaster, listening on a loopback port it picked.
pub struct Netmaster {
    child: Option<Child>,
    pub url: String,
    stderr: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Netmaster {
    pub fn start(etcd: &Etcd) -> Netmaster {
        Self::start_with(etcd, &[])
    }

    /// With extra flags (e.g. `--id`, `--lease-ttl-secs`).
    pub fn start_with(etcd: &Etcd, extra: &[&str]) -> Netmaster {
        Self::start_limited(etcd, extra, None)
    }

    /// Same, with the child's fd limit (RLIMIT_NOFILE) set to `nofile`.
    pub fn start_limited(etcd: &Etcd, extra: &[&str], nofile: Option<u64>) -> Netmaster {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackline-netmaster"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .args(["--etcd-endpoints", &etcd.endpoint()])
            .args(["--listen", "127.0.0.1:0"])
            .args(["--etcd-prefix", PREFIX])
            .args(["--etcd-timeout-ms", "1000"])
            .args(["--log-level", "info"])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run rackline-netmaster");
        let pipe = child.stderr.take().expect("stderr piped");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        // Owned: joined in Drop; it ends when the child's stderr closes.
        let reader = {
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if line.contains("netmaster ready") {
                        if let Some(addr) = field(&line, "listen") {
                            let _ = ready_tx.send(addr);
                        }
                    }
                    let mut s = stderr.lock().unwrap_or_else(|e| e.into_inner());
                    s.push_str(&line);
                    s.push('\n');
                }
            })
        };
        let mut nm = Netmaster {
            child: Some(child),
            url: String::new(),
            stderr,
            reader: Some(reader),
        };
        match ready_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => nm.url = format!("http://{addr}"),
            Err(_) => {
                nm.kill();
                panic!("netmaster did not get ready; its log:\n{}", nm.stderr());
            }
        }
        nm
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn pid(&self) -> i32 {
        let c = self.child.as_ref().expect("netmaster running");
        i32::try_from(c.id()).expect("pid fits i32")
    }

    /// SIGTERM to our child's PID, then wait (bounded) for it to exit.
    pub fn terminate(&mut self, within: Duration) -> ExitStatus {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).expect("send SIGTERM");
        let deadline = Instant::now() + within;
        let mut child = self.child.take().expect("netmaster running");
        loop {
            if let Some(status) = child.try_wait().expect("wait netmaster") {
                self.join_reader();
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                self.join_reader();
                panic!(
                    "netmaster ignored SIGTERM for {within:?}; log:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// host:port (what the replica advertises by default).
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }

    /// Sends `sig` to our child's PID (SIGSTOP/SIGCONT in the HA tests).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("signal netmaster");
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.join_reader();
    }

    fn join_reader(&mut self) {
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Netmaster {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `key=value` from a tracing fmt line.
fn field(line: &str, key: &str) -> Option<String> {
    let pat = format!("{key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// A racklinectl run.
#[derive(Debug)]
pub struct Ctl {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ctl {
    pub fn json(&self) -> serde_json::Value {
        assert_eq!(self.code, 0, "racklinectl failed: {self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}): {:?}", self.stdout))
    }

    pub fn ok(&self) {
        assert_eq!(self.code, 0, "racklinectl failed: {self:?}");
    }

    /// Asserts a refusal (exit 1) whose stderr says `msg`, with nothing on
    /// stdout.
    pub fn refused(&self, msg: &str) {
        assert_eq!(self.code, 1, "expected exit 1: {self:?}");
        assert!(
            self.stderr.contains(msg),
            "stderr should contain {msg:?}: {self:?}"
        );
        assert!(
            self.stdout.is_empty(),
            "nothing on stdout on error: {self:?}"
        );
    }
}

pub fn ctl(server: &str, args: &[&str]) -> Ctl {
    ctl_spawn(server, args).wait()
}

/// A racklinectl started but not yet waited for (for races).
pub struct Running(Child);

impl Running {
    pub fn wait(self) -> Ctl {
        let out = self.0.wait_with_output().expect("wait racklinectl");
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

pub fn ctl_spawn(server: &str, args: &[&str]) -> Running {
    let child = Command::new(rackline_testkit::workspace_bin("racklinectl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("RACKLINE_SERVER")
        .env_remove("RACKLINE_OUTPUT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run racklinectl");
    Running(child)
}

/// `network create` arguments for a plain network.
pub fn create_args<'a>(name: &'a str, subnet: &'a str, gateway: &'a str) -> Vec<&'a str> {
    vec![
        "network",
        "create",
        name,
        "--subnet",
        subnet,
        "--gateway",
        gateway,
        "--master",
        "uplink0",
    ]
}

pub fn network_names(server: &str) -> Vec<String> {
    ctl(server, &["network", "list", "-o", "json"])
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n["name"].as_str().expect("name").to_string())
        .collect()
}

/// Writes a lease record straight into etcd, as ipamd would.
pub fn put_lease(
    rt: &tokio::runtime::Runtime,
    store: &Store,
    network: &str,
    address: &str,
    node: &str,
    pod: (&str, &str),
) -> Lease {
    let net = rt
        .block_on(store.get_network(network))
        .expect("get network")
        .expect("network exists");
    let lease = Lease {
        network: network.to_string(),
        address: address.parse().expect("address"),
        node: node.to_string(),
        container_id: format!("{:0<64}", format!("c0ffee{}", address.replace('.', ""))),
        ifname: "eth0".to_string(),
        pod: PodRef {
            namespace: pod.0.to_string(),
            name: pod.1.to_string(),
            uid: format!("uid-{}", pod.1),
        },
        created_unix_ms: 1_700_000_000_000,
        state: Default::default(),
        sticky: false,
        expires_unix_ms: None,
        conflict: None,
        new_identity: false,
        settings: None,
    };
    match rt
        .block_on(store.leases().create_lease(&lease, net.create_revision))
        .expect("create lease")
    {
        CreateLease::Created { .. } => lease,
        other => panic!("lease {address} not created: {other:?}"),
    }
}
