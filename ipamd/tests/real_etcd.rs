//! rackline-ipamd binaries against a real etcd: concurrent allocation from
//! two nodes, kill -9 and restart, etcd restart. After every scenario the
//! invariant checker reads etcd directly.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_client::IpamClient;
use rackline_testkit::{Etcd, Proc};
use tonic::transport::{Channel, Endpoint, Uri};

const NETWORK: &str = r#"{"name":"prod","subnet":"10.20.0.0/22","gateway":"10.20.0.1","master":"uplink0","exclude":["10.20.0.2-10.20.0.9"]}"#;

struct Ipamd {
    proc: Proc,
    socket: PathBuf,
    node: String,
    endpoint: String,
    dir: PathBuf,
}

impl Ipamd {
    fn start(node: &str, etcd: &Etcd, dir: &Path) -> Self {
        let socket = dir.join(node).join("ipamd.sock");
        let mut me = Self {
            proc: Proc::spawn("placeholder", Command::new("true"), dir.join("true.log")),
            socket,
            node: node.to_string(),
            endpoint: etcd.endpoint(),
            dir: dir.to_path_buf(),
        };
        me.restart();
        me
    }

    fn restart(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackline-ipamd"));
        cmd.args([
            "--node-name",
            &self.node,
            "--etcd-endpoints",
            &self.endpoint,
        ])
        .arg("--socket")
        .arg(&self.socket)
        .args([
            "--etcd-timeout-ms",
            "1000",
            "--gc-grace-secs",
            "0",
            "--log-level",
            "debug",
        ]);
        let log = self
            .dir
            .join(format!("{}-{}.log", self.node, rand_suffix()));
        self.proc = Proc::spawn(&self.node, cmd, log);
        let deadline = Instant::now() + Duration::from_secs(10);
        // A kill -9 leaves the old socket file behind: wait for a listener.
        while std::os::unix::net::UnixStream::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "ipamd {} did not create its socket:\n{}",
                self.node,
                self.proc.log_text()
            );
            assert!(
                self.proc.is_running(),
                "ipamd {} exited:\n{}",
                self.node,
                self.proc.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    async fn client(&self) -> IpamClient<Channel> {
        let p = self.socket.clone();
        let ch = Endpoint::from_static("http://ipamd.invalid")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .expect("connecting to ipamd");
        IpamClient::new(ch)
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn alloc_req(cid: &str) -> pb::AllocateRequest {
    pb::AllocateRequest {
        network: "prod".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: Some(pb::PodRef {
            namespace: "default".into(),
            name: cid.into(),
            uid: format!("uid-{cid}"),
        }),
        requested_addresses: Vec::new(),
        ..Default::default()
    }
}

/// Reads every lease from etcd and checks: no address twice (a key per
/// address makes that structural, so also check no attachment twice), every
/// address inside the subnet and not excluded.
fn check_invariants(etcd: &Etcd) -> BTreeMap<String, serde_json::Value> {
    let out = etcd.ctl(&["get", "--prefix", "/rackline/v1/leases/prod/", "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("etcdctl json");
    let mut by_ip = BTreeMap::new();
    let mut attachments = BTreeSet::new();
    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
        use base64_decode as b64;
        let key = b64(kv["key"].as_str().unwrap());
        let val: serde_json::Value =
            serde_json::from_str(&b64(kv["value"].as_str().unwrap())).unwrap();
        let ip = val["address"].as_str().unwrap().to_string();
        let parsed: std::net::Ipv4Addr = ip.parse().unwrap();
        assert!(
            key.ends_with(&format!("/{}", rackline_store::keys::padded(parsed))),
            "lease key {key} holds address {ip}"
        );
        let octets: Vec<u32> = ip.split('.').map(|o| o.parse().unwrap()).collect();
        let n = octets[0] << 24 | octets[1] << 16 | octets[2] << 8 | octets[3];
        assert!(
            (0x0a140000 + 10..0x0a140000 + 1023).contains(&n),
            "{ip} outside the allocatable range"
        );
        if val["state"] == "standby" {
            // A node's reserve: no attachment, not a pod's address.
            assert_eq!(
                val["containerId"], "",
                "standby record with an owner: {val}"
            );
            continue;
        }
        let att = (
            val["node"].as_str().unwrap().to_string(),
            val["containerId"].as_str().unwrap().to_string(),
            val["ifname"].as_str().unwrap().to_string(),
        );
        assert!(
            attachments.insert(att.clone()),
            "attachment {att:?} holds two addresses"
        );
        assert!(by_ip.insert(ip.clone(), val).is_none(), "{ip} twice");
    }
    by_ip
}

/// Minimal base64 decoding for etcdctl's JSON output (test-only; avoids a
/// dependency for one call site).
fn base64_decode(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = T.iter().position(|x| *x == c).expect("base64") as u32;
        buf = buf << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

/// `n` concurrent allocations spread over `ipamds`: the acknowledged `(container, address)`
/// pairs, and the containers told "try again later" with the index of their ipamd.
async fn storm(
    ipamds: &[&Ipamd],
    prefix: &str,
    n: usize,
) -> (Vec<(String, String)>, Vec<(String, usize)>) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let k = i % ipamds.len();
        let mut c = ipamds[k].client().await;
        let cid = format!("{prefix}-{i}");
        tasks.push(tokio::spawn(async move {
            let r = c.allocate(alloc_req(&cid)).await;
            (cid, k, r)
        }));
    }
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for t in tasks {
        let (cid, k, r) = t.await.unwrap();
        match r {
            Ok(r) => ok.push((cid, r.into_inner().lease.unwrap().address)),
            Err(s) => {
                assert!(
                    matches!(s.code(), tonic::Code::Unavailable),
                    "only 'try again later' is acceptable, got {s:?}"
                );
                failed.push((cid, k));
            }
        }
    }
    (ok, failed)
}

/// Allocates for `cid` on `d` as kubelet retries an ADD: again after "try again later"
/// (Unavailable), for up to 30 s; any other answer fails the test.
async fn allocate_retrying(d: &Ipamd, cid: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = d.client().await;
        match c.allocate(alloc_req(cid)).await {
            Ok(r) => return r.into_inner().lease.unwrap().address,
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => panic!("allocation for {cid} failed: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_storm_crash_and_etcd_restart_never_duplicate() {
    let mut etcd = Etcd::start();
    etcd.ctl(&["put", "/rackline/v1/networks/prod", NETWORK]);
    let dir = tempfile::tempdir().unwrap();
    let mut n1 = Ipamd::start("n1", &etcd, dir.path());
    let n2 = Ipamd::start("n2", &etcd, dir.path());

    // 1. Both nodes allocate from the same range at once. On a loaded host some ADDs may be
    //    told "try again later" (etcd slow to answer); kubelet retries them, and so does this
    //    test, on the same node. What must hold: every pod ends up with its own address.
    let (mut ok, failed) = storm(&[&n1, &n2], "a", 300).await;
    for (cid, k) in failed {
        let addr = allocate_retrying([&n1, &n2][k], &cid).await;
        ok.push((cid, addr));
    }
    let distinct: BTreeSet<_> = ok.iter().map(|(_, a)| a.clone()).collect();
    assert_eq!(distinct.len(), 300, "duplicate addresses handed out");
    assert_eq!(check_invariants(&etcd).len(), 300);

    // 2. Idempotency survives kill -9: the restarted ipamd rebuilds from etcd
    //    and returns the same addresses for the same attachments.
    n1.proc.kill9();
    n1.restart();
    let mut c1 = n1.client().await;
    for (cid, addr) in ok
        .iter()
        .filter(|(c, _)| c.ends_with('0') || c.ends_with('2'))
        .take(40)
    {
        let i: usize = cid.trim_start_matches("a-").parse().unwrap();
        if i % 2 != 0 {
            continue;
        }
        let r = c1.allocate(alloc_req(cid)).await.unwrap().into_inner();
        assert!(r.existing, "{cid} should still hold its lease");
        assert_eq!(&r.lease.unwrap().address, addr);
    }

    // 3. kill -9 in the middle of a storm: everything acknowledged is in
    //    etcd, nothing is owned twice.
    let both = [&n1, &n2];
    let storm_fut = storm(&both, "b", 200);
    let killer = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    let ((ok_b, _), ()) = tokio::join!(storm_fut, killer);
    n1.proc.kill9();
    let leases = check_invariants(&etcd);
    for (cid, addr) in &ok_b {
        let ip = addr.split('/').next().unwrap();
        assert_eq!(
            leases[ip]["containerId"],
            cid.as_str(),
            "acknowledged lease {addr} for {cid} lost"
        );
    }
    n1.restart();

    // 4. etcd stops mid-flight. ipamd keeps allocating from its standby
    //    reserve (journalled), never hangs, answers "try again later" once
    //    the reserve is used up, and replays everything when etcd is back.
    //    Let the reserve fill first (the reserve task runs every 500 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    etcd.kill();
    let mut c2 = n2.client().await;
    let t0 = Instant::now();
    let mut offline = Vec::new();
    let mut refused = 0;
    for i in 0..8 {
        match c2.allocate(alloc_req(&format!("outage-{i}"))).await {
            Ok(r) => offline.push((format!("outage-{i}"), r.into_inner().lease.unwrap().address)),
            Err(s) => {
                assert_eq!(s.code(), tonic::Code::Unavailable, "{s:?}");
                refused += 1;
            }
        }
    }
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "ADD must not hang while etcd is down"
    );
    assert!(
        !offline.is_empty(),
        "the standby reserve must serve ADDs during the outage"
    );
    assert!(refused > 0, "beyond the reserve, ADD is 'try again later'");
    // A release while etcd is away is journalled too.
    let (gone, _) = offline.pop().unwrap();
    c2.release(pb::ReleaseRequest {
        network: "prod".into(),
        container_id: gone.clone(),
        ifname: "eth0".into(),
        rollback: false,
        ..Default::default()
    })
    .await
    .unwrap();
    // An ipamd restart during the outage keeps the journal.
    let mut n2 = n2;
    n2.proc.kill9();
    etcd.restart();
    n2.restart();
    // Recovery is etcd's restart, ipamd's and its replay: generous for a loaded host, the point
    // is that it comes back and keeps what it acknowledged.
    let deadline = Instant::now() + Duration::from_secs(30);
    let after = loop {
        let mut c2 = n2.client().await;
        match c2.allocate(alloc_req("after-outage")).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("ipamd did not recover after etcd came back: {s:?}"),
        }
    };
    assert!(!after.lease.unwrap().address.is_empty());
    let leases = check_invariants(&etcd);
    for (cid, addr) in &offline {
        let ip = addr.split('/').next().unwrap();
        assert_eq!(
            leases.get(ip).map(|l| l["containerId"].clone()),
            Some(serde_json::json!(cid)),
            "offline lease {addr} of {cid} must be in etcd after the replay"
        );
    }
    assert!(!leases.values().any(|l| l["containerId"] == gone.as_str()));

    // 5. Release everything through the node that owns it: nothing leaks.
    let mut c1 = n1.client().await;
    let mut c2 = n2.client().await;
    for (ip, l) in &leases {
        let req = pb::ReleaseRequest {
            network: "prod".into(),
            container_id: l["containerId"].as_str().unwrap().into(),
            ifname: "eth0".into(),
            rollback: false,
            ..Default::default()
        };
        let r = match l["node"].as_str().unwrap() {
            "n1" => c1.release(req).await,
            _ => c2.release(req).await,
        }
        .unwrap()
        .into_inner();
        assert!(r.released, "{ip} not released");
    }
    assert!(check_invariants(&etcd).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_unknown_network_and_socket_mode() {
    use std::os::unix::fs::PermissionsExt;
    let etcd = Etcd::start();
    etcd.ctl(&["put", "/rackline/v1/networks/prod", NETWORK]);
    let dir = tempfile::tempdir().unwrap();
    let n1 = Ipamd::start("n1", &etcd, dir.path());
    let mode = std::fs::metadata(&n1.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the socket must be root-only");
    let mut c = n1.client().await;
    let s = c
        .status(pb::StatusRequest {
            network: "prod".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(s.can_allocate && s.etcd_connected, "{s:?}");
    assert_eq!(s.capacity, 1022 - 1 - 8);
    let mut req = alloc_req("x");
    req.network = "nope".into();
    let e = c.allocate(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    assert!(e.message().contains("nope"), "{}", e.message());
    // A second ipamd must refuse to steal a live socket.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackline-ipamd"));
    cmd.args(["--node-name", "n1b", "--etcd-endpoints", &etcd.endpoint()])
        .arg("--socket")
        .arg(&n1.socket);
    let out = cmd.output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another ipamd"));
}

/// Requested addresses through the real daemons and etcd: several pods on
/// two nodes ask for the same address at once and exactly one gets it, the
/// others are refused with the typed status the plugin maps to code 107;
/// a registered node's address is refused; a repeat is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_addresses_race_across_nodes_exactly_one_wins() {
    let etcd = Etcd::start();
    etcd.ctl(&["put", "/rackline/v1/networks/prod", NETWORK]);
    etcd.ctl(&[
        "put",
        "/rackline/v1/nodes/n9",
        r#"{"name":"n9","rack":"r1","addresses":["10.20.0.200"],"registeredUnixMs":0}"#,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let n1 = Ipamd::start("n1", &etcd, dir.path());
    let n2 = Ipamd::start("n2", &etcd, dir.path());
    for round in 0..10 {
        let want = format!("10.20.1.{}", 10 + round);
        let mut tasks = Vec::new();
        for (i, d) in [&n1, &n2, &n1, &n2].into_iter().enumerate() {
            let mut c = d.client().await;
            let mut req = alloc_req(&format!("r{round}-{i}"));
            req.requested_addresses = vec![want.clone()];
            tasks.push(tokio::spawn(async move { c.allocate(req).await }));
        }
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(r) => won.push(r.into_inner().lease.unwrap().address),
                Err(s) => {
                    assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{s:?}");
                    assert_eq!(
                        s.metadata()
                            .get("rackline-error")
                            .map(|v| v.to_str().unwrap()),
                        Some("requested-address"),
                        "{s:?}"
                    );
                    assert!(s.message().contains(&want), "{}", s.message());
                }
            }
        }
        assert_eq!(won, vec![format!("{want}/22")], "round {round}");
    }
    let leases = check_invariants(&etcd);
    assert_eq!(leases.len(), 10, "{leases:?}");

    let mut c = n1.client().await;
    // Idempotent per attachment: the winner's retry gets the same lease.
    let holder = leases["10.20.1.10"]["containerId"]
        .as_str()
        .unwrap()
        .to_string();
    let node = leases["10.20.1.10"]["node"].as_str().unwrap().to_string();
    let mut d = if node == "n1" {
        n1.client().await
    } else {
        n2.client().await
    };
    let mut req = alloc_req(&holder);
    req.requested_addresses = vec!["10.20.1.10".into()];
    let again = d.allocate(req).await.unwrap().into_inner();
    assert!(again.existing);
    assert_eq!(again.lease.unwrap().address, "10.20.1.10/22");
    // A registered node's address, an excluded one, one outside the subnet
    // and a malformed one: refused, nothing written.
    for (asked, needle) in [
        ("10.20.0.200", "address of node \"n9\""),
        ("10.20.0.5", "excluded"),
        ("10.99.0.5", "outside"),
        ("10.20.1.300", "not an IPv4 address"),
    ] {
        let mut req = alloc_req("refused");
        req.requested_addresses = vec![asked.into()];
        let s = c.allocate(req).await.unwrap_err();
        assert_eq!(s.code(), tonic::Code::FailedPrecondition, "{asked}: {s:?}");
        assert!(s.message().contains(needle), "{asked}: {}", s.message());
    }
    assert_eq!(check_invariants(&etcd).len(), 10);
}
