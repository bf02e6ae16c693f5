//! ipamd's socket and its etcd/netmaster credentials: the socket is 0600
//! even under umask 0 and never passes through a looser mode; callers that
//! are not uid 0 are refused (SO_PEERCRED), even when the socket file has
//! been opened up; ipamd reaches etcd over mutual TLS.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_client::IpamClient;
use rackline_testkit::pki::Usage;
use rackline_testkit::{Etcd, EtcdTls, Proc};
use tonic::transport::{Endpoint, Uri};

/// The uid the unprivileged caller runs as (`nobody`).
const NOBODY: u32 = 65534;

fn start_ipamd(etcd: &Etcd, dir: &Path, extra: &[String]) -> (Proc, PathBuf) {
    let sock_dir = dir.join("run");
    let socket = sock_dir.join("ipamd.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackline-ipamd"));
    cmd.args(["--node-name", "n1", "--etcd-endpoints", &etcd.endpoint()])
        .arg("--socket")
        .arg(&socket)
        .args(["--etcd-timeout-ms", "1000"])
        .args(extra)
        .env_clear();
    // SAFETY: umask(2) is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let p = Proc::spawn("ipamd", cmd, dir.join("ipamd.log"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !p.log_text().contains("ipamd ready") {
        assert!(
            Instant::now() < deadline,
            "ipamd not ready: {}",
            p.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (p, socket)
}

async fn status(socket: &Path) -> Result<pb::StatusReply, tonic::Status> {
    let path = socket.to_owned();
    let ch = Endpoint::from_static("http://ipamd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(|e| tonic::Status::unavailable(format!("connect: {e:?}")))?;
    IpamClient::new(ch)
        .status(pb::StatusRequest {
            network: "none".into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Runs the `peer_child` helper below as uid `nobody` (std's `uid()` is a
/// setuid in the forked child before exec) and returns what it printed.
fn as_nobody(socket: &Path) -> String {
    // A copy of this test binary where `nobody` may execute it.
    let exe = std::env::current_exe().unwrap();
    let dir = tempfile::Builder::new()
        .prefix("rl-peer")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("peer");
    std::fs::copy(&exe, &copy).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&copy)
        .args(["--exact", "peer_child", "--ignored", "--nocapture"])
        .env_clear()
        .env("RL_PEER_SOCKET", socket)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
#[ignore = "helper: run as uid nobody by peer_uid_and_socket_mode_are_enforced"]
fn peer_child() {
    let Some(socket) = std::env::var_os("RL_PEER_SOCKET") else {
        panic!("run only by peer_uid_and_socket_mode_are_enforced");
    };
    let uid = nix::unistd::geteuid().as_raw();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match rt.block_on(status(Path::new(&socket))) {
        Ok(_) => println!("PEER uid={uid} ok"),
        Err(s) => println!("PEER uid={uid} code={:?} msg={}", s.code(), s.message()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_uid_and_socket_mode_are_enforced() {
    assert_eq!(
        nix::unistd::geteuid().as_raw(),
        0,
        "this test runs as root (it calls ipamd as root and as nobody)"
    );
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start();
    let (_ipamd, socket) = start_ipamd(&etcd, dir.path(), &[]);

    // 0600 although ipamd ran under umask 0; nothing left of the private
    // bind directory.
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let leftovers: Vec<_> = std::fs::read_dir(socket.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| {
            // The state directory defaults to the socket's: the journal and
            // the node lock live there.
            let n = n.to_string_lossy();
            n != "ipamd.sock"
                && !["journal-", "lock-", "instance-"]
                    .iter()
                    .any(|p| n.starts_with(p))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Root is served (an unknown network, answered as such).
    match status(&socket).await {
        Err(s) if s.code() == tonic::Code::NotFound => {}
        other => panic!("root must be served: {other:?}"),
    }

    // nobody cannot even connect through the 0600 socket / 0700 directory.
    let out = as_nobody(&socket);
    assert!(
        out.contains("PEER uid=65534 code=Unavailable") && out.contains("Permission denied"),
        "nobody must not even connect: {out}"
    );

    // Opened up by mistake: nobody connects, and SO_PEERCRED refuses it.
    for p in [dir.path(), socket.parent().unwrap()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = as_nobody(&socket);
    assert!(
        out.contains("code=PermissionDenied")
            && out.contains("rackline-ipamd serves only uid 0 (root); the caller is uid 65534"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamd_reaches_etcd_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = EtcdTls::generate(dir.path());
    let etcd = Etcd::start_tls(tls.clone());
    let client = ca.issue(dir.path(), "ipamd", "ipamd", &[], Usage::Client);
    let flags = vec![
        "--etcd-ca-file".to_string(),
        tls.ca.display().to_string(),
        "--etcd-cert-file".into(),
        client.cert.display().to_string(),
        "--etcd-key-file".into(),
        client.key.display().to_string(),
    ];
    let (ipamd, socket) = start_ipamd(&etcd, dir.path(), &flags);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Unknown network, but answered from etcd: NOT_FOUND, not
        // UNAVAILABLE.
        match status(&socket).await {
            Err(s) if s.code() == tonic::Code::NotFound => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "ipamd never reached etcd: {other:?}\n{}",
                    ipamd.log_text()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(
        ipamd.log_text().contains("client-cert"),
        "{}",
        ipamd.log_text()
    );
}
