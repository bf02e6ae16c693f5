//! The admin API secured: TLS listener, bearer tokens and client
//! certificates mapped to roles by the auth file, every RPC × role, audit
//! lines, plaintext only on loopback, racklinectl's schemes and config
//! file, and the idle-connection flood.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Etcd, Netmaster};
use rackline_netmaster::auth::Role;
use rackline_netmaster::authz::Rpc;
use rackline_proto::admin::v1 as pb;
use rackline_security::client::{ClientCredentials, FlagNames};
use rackline_testkit::pki::{self, Ca, Usage};
use tonic::Code;

const FLAGS: FlagNames = FlagNames {
    ca: "--ca-file",
    cert: "--cert-file",
    key: "--key-file",
    token: "--token-file",
};

/// Certificates, tokens and the auth file of one test.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    /// role → token file
    tokens: BTreeMap<&'static str, PathBuf>,
    auth_file: PathBuf,
}

fn token_value(role: &str) -> String {
    format!("tok-{role}-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    t ^ (u64::from(std::process::id()) << 32)
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("rackline-admin-ca");
        let ca_file = ca.write_cert(&dir.path().join("ca.crt"));
        ca.issue(
            dir.path(),
            "netmaster",
            "netmaster",
            &["127.0.0.1", "localhost"],
            Usage::Server,
        );
        let mut tokens = BTreeMap::new();
        let mut auth = String::from("# test auth file\n");
        for role in ["read-only", "operator", "admin", "node"] {
            let t = token_value(role);
            let p = dir.path().join(format!("{role}.token"));
            pki::write_private(&p, format!("{t}\n").as_bytes());
            auth.push_str(&format!(
                "[[token]]\nname = \"{role}-user\"\nrole = \"{role}\"\nsha256 = \"{}\"\n\n",
                rackline_security::sha256_hex(&t)
            ));
            tokens.insert(role, p);
        }
        auth.push_str("[[certificate]]\nname = \"ipamd-n1\"\nrole = \"node\"\n");
        let auth_file = dir.path().join("auth.toml");
        pki::write_private(&auth_file, auth.as_bytes());
        Pki {
            dir,
            ca,
            ca_file,
            tokens,
            auth_file,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tls_flags(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            "--tls-cert-file".into(),
            p("netmaster.crt"),
            "--tls-key-file".into(),
            p("netmaster.key"),
            "--client-ca-file".into(),
            p("ca.crt"),
            "--auth-file".into(),
            self.auth_file.display().to_string(),
        ]
    }

    fn start(&self, etcd: &Etcd) -> (Netmaster, String) {
        let flags = self.tls_flags();
        let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
        let nm = Netmaster::start_with(etcd, &refs);
        let url = nm.url.replace("http://", "https://");
        (nm, url)
    }
}

type Raw = rackline_admin_client::Raw;

async fn client(url: &str, creds: ClientCredentials) -> Raw {
    let auth = creds.load(FLAGS).unwrap();
    let channel = auth.endpoint(url).unwrap().connect().await.unwrap();
    pb::admin_client::AdminClient::with_interceptor(channel, auth.interceptor())
}

/// Calls `rpc` with an empty request; the code says whether it got past
/// authorisation (anything but Unauthenticated / PermissionDenied).
async fn call(c: &mut Raw, rpc: Rpc) -> Code {
    fn code<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Code {
        match r {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        }
    }
    match rpc {
        Rpc::create_network => code(c.create_network(pb::CreateNetworkRequest::default()).await),
        Rpc::get_network => code(c.get_network(pb::GetNetworkRequest::default()).await),
        Rpc::list_networks => code(c.list_networks(pb::ListNetworksRequest::default()).await),
        Rpc::delete_network => code(c.delete_network(pb::DeleteNetworkRequest::default()).await),
        Rpc::update_network => code(c.update_network(pb::UpdateNetworkRequest::default()).await),
        Rpc::list_leases => code(c.list_leases(pb::ListLeasesRequest::default()).await),
        Rpc::create_rack => code(c.create_rack(pb::CreateRackRequest::default()).await),
        Rpc::get_rack => code(c.get_rack(pb::GetRackRequest::default()).await),
        Rpc::list_racks => code(c.list_racks(pb::ListRacksRequest::default()).await),
        Rpc::delete_rack => code(c.delete_rack(pb::DeleteRackRequest::default()).await),
        Rpc::bind_rack => code(c.bind_rack(pb::BindRackRequest::default()).await),
        Rpc::unbind_rack => code(c.unbind_rack(pb::UnbindRackRequest::default()).await),
        Rpc::list_rack_nets => code(c.list_rack_nets(pb::ListRackNetsRequest::default()).await),
        Rpc::register_node => code(c.register_node(pb::RegisterNodeRequest::default()).await),
        Rpc::get_node => code(c.get_node(pb::GetNodeRequest::default()).await),
        Rpc::list_nodes => code(c.list_nodes(pb::ListNodesRequest::default()).await),
        Rpc::drain_node => code(c.drain_node(pb::DrainNodeRequest::default()).await),
        Rpc::delete_node => code(c.delete_node(pb::DeleteNodeRequest::default()).await),
        Rpc::acquire_block => code(c.acquire_block(pb::AcquireBlockRequest::default()).await),
        Rpc::release_block => code(c.release_block(pb::ReleaseBlockRequest::default()).await),
        Rpc::list_blocks => code(c.list_blocks(pb::ListBlocksRequest::default()).await),
        Rpc::utilization => code(c.utilization(pb::UtilizationRequest::default()).await),
        Rpc::leader => code(c.leader(pb::LeaderRequest::default()).await),
        Rpc::list_reservations => code(
            c.list_reservations(pb::ListReservationsRequest::default())
                .await,
        ),
        Rpc::pin_reservation => code(
            c.pin_reservation(pb::PinReservationRequest::default())
                .await,
        ),
        Rpc::release_reservation => code(
            c.release_reservation(pb::ReleaseReservationRequest::default())
                .await,
        ),
        Rpc::set_qos_policy => code(c.set_qos_policy(pb::QosPolicy::default()).await),
        Rpc::set_acl => code(c.set_acl(pb::Acl::default()).await),
        Rpc::list_acls => code(c.list_acls(pb::ListAclsRequest::default()).await),
        Rpc::delete_acl => code(c.delete_acl(pb::DeleteAclRequest::default()).await),
        Rpc::set_acl_default => code(c.set_acl_default(pb::AclDefault::default()).await),
        Rpc::list_qos_policies => code(
            c.list_qos_policies(pb::ListQosPoliciesRequest::default())
                .await,
        ),
        Rpc::delete_qos_policy => code(
            c.delete_qos_policy(pb::DeleteQosPolicyRequest::default())
                .await,
        ),
        // A refusal comes before the stream opens.
        Rpc::watch_events => code(c.watch_events(pb::WatchEventsRequest::default()).await),
    }
}

/// What each role may call: written out here, independently of the
/// product's table, so a wrong row there fails this test.
fn allowed(rpc: Rpc) -> &'static [Role] {
    use Role::*;
    const READ: &[Role] = &[ReadOnly, Operator, Admin];
    const OPERATE: &[Role] = &[Operator, Admin];
    const ADMIN: &[Role] = &[Admin];
    const NODE: &[Role] = &[Node, Admin];
    match rpc {
        Rpc::get_network
        | Rpc::list_networks
        | Rpc::list_leases
        | Rpc::get_rack
        | Rpc::list_racks
        | Rpc::list_rack_nets
        | Rpc::get_node
        | Rpc::list_nodes
        | Rpc::list_blocks
        | Rpc::utilization
        | Rpc::leader
        | Rpc::list_reservations
        | Rpc::list_qos_policies
        | Rpc::list_acls
        | Rpc::watch_events => READ,
        Rpc::pin_reservation
        | Rpc::release_reservation
        | Rpc::update_network
        | Rpc::set_qos_policy
        | Rpc::delete_qos_policy
        | Rpc::set_acl
        | Rpc::delete_acl
        | Rpc::set_acl_default
        | Rpc::drain_node
        | Rpc::delete_node => OPERATE,
        Rpc::create_network
        | Rpc::delete_network
        | Rpc::create_rack
        | Rpc::delete_rack
        | Rpc::bind_rack
        | Rpc::unbind_rack => ADMIN,
        Rpc::register_node | Rpc::acquire_block | Rpc::release_block => NODE,
    }
}

fn role_named(s: &str) -> Role {
    match s {
        "read-only" => Role::ReadOnly,
        "operator" => Role::Operator,
        "admin" => Role::Admin,
        "node" => Role::Node,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_is_allowed_to_exactly_its_roles() {
    let pki = Pki::new();
    let etcd = Etcd::start();
    let (nm, url) = pki.start(&etcd);

    let mut checked = 0;
    for (role, token) in &pki.tokens {
        let mut c = client(
            &url,
            ClientCredentials {
                ca_file: Some(pki.ca_file.clone()),
                token_file: Some(token.clone()),
                ..Default::default()
            },
        )
        .await;
        let role = role_named(role);
        for &rpc in Rpc::ALL {
            let code = call(&mut c, rpc).await;
            if allowed(rpc).contains(&role) {
                assert!(
                    !matches!(code, Code::PermissionDenied | Code::Unauthenticated),
                    "{role:?} must be allowed to call {}: got {code:?}",
                    rpc.name()
                );
            } else {
                assert_eq!(
                    code,
                    Code::PermissionDenied,
                    "{role:?} must be refused {}",
                    rpc.name()
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 4 * Rpc::ALL.len());

    // A client certificate listed with role node: exactly the node RPCs.
    let cert = pki
        .ca
        .issue(pki.dir.path(), "ipamd-n1", "ipamd-n1", &[], Usage::Client);
    let mut c = client(
        &url,
        ClientCredentials {
            ca_file: Some(pki.ca_file.clone()),
            cert_file: Some(cert.cert.clone()),
            key_file: Some(cert.key.clone()),
            ..Default::default()
        },
    )
    .await;
    for &rpc in Rpc::ALL {
        let code = call(&mut c, rpc).await;
        let ok = allowed(rpc).contains(&Role::Node);
        assert_eq!(
            code == Code::PermissionDenied,
            !ok,
            "certificate ipamd-n1 (node) on {}: {code:?}",
            rpc.name()
        );
    }

    // No credentials, an unknown token, a certificate not in the auth file,
    // a certificate from another CA: refused before any RPC runs.
    let stranger = pki
        .ca
        .issue(pki.dir.path(), "stranger", "stranger", &[], Usage::Client);
    let bogus = pki.path("bogus.token");
    pki::write_private(&bogus, b"not-a-known-token");
    let none = ClientCredentials {
        ca_file: Some(pki.ca_file.clone()),
        ..Default::default()
    };
    for creds in [
        none.clone(),
        ClientCredentials {
            token_file: Some(bogus.clone()),
            ..none.clone()
        },
        ClientCredentials {
            cert_file: Some(stranger.cert.clone()),
            key_file: Some(stranger.key.clone()),
            ..none.clone()
        },
    ] {
        let mut c = client(&url, creds.clone()).await;
        for &rpc in Rpc::ALL {
            assert_eq!(
                call(&mut c, rpc).await,
                Code::Unauthenticated,
                "{creds:?} on {}",
                rpc.name()
            );
        }
    }
    let other = Ca::new("other-ca");
    let foreign = other.issue(pki.dir.path(), "foreign", "ipamd-n1", &[], Usage::Client);
    let auth = ClientCredentials {
        cert_file: Some(foreign.cert.clone()),
        key_file: Some(foreign.key.clone()),
        ..none.clone()
    }
    .load(FLAGS)
    .unwrap();
    let refused = async {
        let ch = auth.endpoint(&url).unwrap().connect().await?;
        let mut c = pb::admin_client::AdminClient::new(ch);
        c.list_networks(pb::ListNetworksRequest::default())
            .await
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error>)?;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    assert!(
        refused.is_err(),
        "a certificate of an unknown CA must not get through"
    );

    // Forced release of a reservation is an admin's.
    let mut op = client(
        &url,
        ClientCredentials {
            token_file: Some(pki.tokens["operator"].clone()),
            ..none.clone()
        },
    )
    .await;
    let forced = pb::ReleaseReservationRequest {
        force: true,
        ..Default::default()
    };
    let e = op.release_reservation(forced).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("needs admin"), "{e:?}");

    let log = nm.stderr();
    for t in pki.tokens.values() {
        let token = std::fs::read_to_string(t).unwrap();
        assert!(!log.contains(token.trim()), "a token reached the log");
    }
}

/// racklinectl with a clean environment plus `env`.
fn ctl(home: &Path, env: &[(&str, &str)], args: &[&str]) -> common::Ctl {
    let out = Command::new(rackline_testkit::workspace_bin("racklinectl"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run racklinectl");
    common::Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn audit_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains(" audit: ")).collect()
}

fn has_field(line: &str, key: &str, value: &str) -> bool {
    line.contains(&format!("{key}={value}")) || line.contains(&format!("{key}=\"{value}\""))
}

#[test]
fn racklinectl_config_schemes_and_one_audit_line_per_mutation() {
    let pki = Pki::new();
    let etcd = Etcd::start();
    let (nm, url) = pki.start(&etcd);
    let home = pki.path("home");
    std::fs::create_dir_all(home.join(".config/rackline")).unwrap();
    let admin_token = std::fs::read_to_string(&pki.tokens["admin"]).unwrap();

    // The default config file: server, CA and token, relative paths.
    std::fs::copy(&pki.ca_file, home.join(".config/rackline/ca.crt")).unwrap();
    std::fs::copy(&pki.tokens["admin"], home.join(".config/rackline/token")).unwrap();
    std::fs::write(
        home.join(".config/rackline/config"),
        format!("server = \"{url}\"\nca-file = \"ca.crt\"\ntoken-file = \"token\"\n"),
    )
    .unwrap();
    let create = [
        "network",
        "create",
        "prod",
        "--subnet",
        "10.10.0.0/24",
        "--gateway",
        "10.10.0.1",
        "--master",
        "uplink0",
    ];
    ctl(&home, &[], &create).ok();
    ctl(&home, &[], &["network", "list"]).ok();

    // Flags and variables beat the file: a read-only token may read, not write.
    let ro = pki.tokens["read-only"].display().to_string();
    ctl(&home, &[("RACKLINE_TOKEN_FILE", &ro)], &["network", "list"]).ok();
    let r = ctl(
        &home,
        &[],
        &["--token-file", &ro, "network", "delete", "prod"],
    );
    r.refused("read-only-user (role read-only) may not call DeleteNetwork: it needs admin");

    // An operator's QoS policy; then the admin deletes the network.
    let op = pki.tokens["operator"].display().to_string();
    ctl(
        &home,
        &[("RACKLINE_TOKEN_FILE", &op)],
        &[
            "qos",
            "set",
            "prod",
            "shop",
            "web",
            "--bandwidth",
            "egress=10M",
        ],
    )
    .ok();
    ctl(&home, &[], &["network", "delete", "prod"]).ok();

    // Schemes: unknown → usage error; https without a CA → usage error;
    // plaintext to the TLS port → unreachable; wrong CA → named.
    let plain = url.replace("https://", "http://");
    let ftp = url.replace("https://", "ftp://");
    let empty = pki.path("empty-home");
    std::fs::create_dir_all(&empty).unwrap();
    let r = ctl(&empty, &[], &["--server", &ftp, "network", "list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("unknown scheme \"ftp\""), "{r:?}");
    let r = ctl(&empty, &[], &["--server", &url, "network", "list"]);
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("no CA bundle is given (--ca-file)"),
        "{r:?}"
    );
    let r = ctl(&empty, &[], &["--server", &plain, "network", "list"]);
    assert_ne!(r.code, 0, "plaintext must not reach a TLS listener: {r:?}");
    let other = Ca::new("other").write_cert(&pki.path("other-ca.crt"));
    let other = other.display().to_string();
    let r = ctl(
        &empty,
        &[("RACKLINE_CA_FILE", &other), ("RACKLINE_SERVER", &url)],
        &["network", "list"],
    );
    assert_eq!(r.code, 3, "{r:?}");
    assert!(
        r.stderr
            .contains("netmaster's server certificate is not signed by a CA in --ca-file"),
        "{r:?}"
    );
    // No credentials at all.
    let ca = pki.ca_file.display().to_string();
    let r = ctl(
        &empty,
        &[("RACKLINE_CA_FILE", &ca), ("RACKLINE_SERVER", &url)],
        &["network", "list"],
    );
    r.refused("no credentials");
    // A missing explicit config file is a usage error.
    let r = ctl(
        &empty,
        &[],
        &["--config", "/nonexistent/config", "network", "list"],
    );
    assert_eq!(r.code, 2, "{r:?}");

    // The auth file is re-read: a new token works without a restart.
    let fresh = token_value("late");
    let mut text = std::fs::read_to_string(&pki.auth_file).unwrap();
    text.push_str(&format!(
        "\n[[token]]\nname = \"late-user\"\nrole = \"read-only\"\nsha256 = \"{}\"\n",
        rackline_security::sha256_hex(&fresh)
    ));
    pki::write_private(&pki.auth_file, text.as_bytes());
    let fresh_file = pki.path("late.token");
    pki::write_private(&fresh_file, fresh.as_bytes());
    let fresh_file = fresh_file.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = ctl(
            &home,
            &[("RACKLINE_TOKEN_FILE", &fresh_file)],
            &["network", "list"],
        );
        if r.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new token was never accepted: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // One audit line per mutation (3 done, 1 refused), none for reads.
    let log = nm.stderr();
    let lines = audit_lines(&log);
    let ok: Vec<&&str> = lines
        .iter()
        .filter(|l| has_field(l, "outcome", "ok"))
        .collect();
    assert_eq!(ok.len(), 3, "{lines:#?}");
    assert!(has_field(ok[0], "method", "CreateNetwork"), "{}", ok[0]);
    assert!(has_field(ok[0], "identity", "admin-user"), "{}", ok[0]);
    assert!(has_field(ok[0], "role", "admin"), "{}", ok[0]);
    assert!(ok[0].contains("10.10.0.0/24"), "request summary: {}", ok[0]);
    assert!(has_field(ok[1], "method", "SetQosPolicy"), "{}", ok[1]);
    assert!(has_field(ok[1], "identity", "operator-user"), "{}", ok[1]);
    assert!(has_field(ok[2], "method", "DeleteNetwork"), "{}", ok[2]);
    let refused: Vec<&&str> = lines
        .iter()
        .filter(|l| has_field(l, "outcome", "refused"))
        .collect();
    assert!(
        refused
            .iter()
            .any(|l| has_field(l, "method", "DeleteNetwork")
                && has_field(l, "identity", "read-only-user")),
        "{lines:#?}"
    );
    assert!(!lines
        .iter()
        .any(|l| has_field(l, "method", "ListNetworks") && has_field(l, "outcome", "ok")));
    assert!(!log.contains(admin_token.trim()), "a token reached the log");
}

#[test]
fn plaintext_and_unauthenticated_serving_only_on_loopback() {
    let pki = Pki::new();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_rackline-netmaster"))
            .args(["--etcd-endpoints", "http://127.0.0.1:1"])
            .args(args)
            .env_clear()
            .output()
            .expect("run rackline-netmaster")
    };
    let out = run(&["--listen", "0.0.0.0:0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("refusing to serve the admin API in plaintext on 0.0.0.0:0")
            && err.contains("--tls-cert-file")
            && err.contains("--insecure-listen"),
        "{err}"
    );
    let cert = pki.path("netmaster.crt").display().to_string();
    let key = pki.path("netmaster.key").display().to_string();
    let out = run(&[
        "--listen",
        "0.0.0.0:0",
        "--tls-cert-file",
        &cert,
        "--tls-key-file",
        &key,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("without authentication: give --auth-file"),
        "{err}"
    );
    // Explicitly insecure: starts, and says so (then stopped by us).
    let log = pki.path("insecure.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rackline-netmaster"))
        .args(["--etcd-endpoints", "http://127.0.0.1:1"])
        .args(["--listen", "0.0.0.0:0", "--insecure-listen"])
        .env_clear()
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("authentication is off") || Instant::now() > deadline {
            break text;
        }
        assert!(child.try_wait().unwrap().is_none(), "it exited: {text}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(text.contains("authentication is off"), "{text}");
}

/// ~1 100 idle TCP connections against a netmaster whose fd limit is 256:
/// new connections keep being served, the accept loop does not spin, the
/// limit is logged at most once per interval.
#[test]
fn idle_connection_flood_keeps_service_for_a_good_client() {
    // The flood itself needs more fds than the default 1024 of a shell.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    assert!(
        hard >= 1300,
        "the test needs an fd limit of at least 1300, have {hard}"
    );
    let etcd = Etcd::start();
    let nm = Netmaster::start_limited(&etcd, &[], Some(256));
    let addr = nm.url.trim_start_matches("http://").to_string();
    let pid = nm.pid();
    let cpu = || {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let rest = stat.rsplit(')').next().unwrap();
        let f: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|x| x.parse().unwrap())
            .collect();
        f[0] + f[1] // utime + stime, clock ticks
    };

    let mut flood = Vec::new();
    for _ in 0..1100 {
        match std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)) {
            Ok(s) => flood.push(s),
            Err(e) => panic!(
                "flood connect failed after {} connections: {e}",
                flood.len()
            ),
        }
    }
    let before = cpu();
    let t0 = Instant::now();
    for i in 0..5 {
        let r = common::ctl(&nm.url, &["network", "list"]);
        assert_eq!(r.code, 0, "good client call {i} during the flood: {r:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu() - before;
    let wall = t0.elapsed().as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    assert!(
        (ticks as f64 / hz) < 0.5 * wall,
        "netmaster used {:.2} s of CPU in {wall:.2} s while idle connections were held (spinning?)",
        ticks as f64 / hz
    );
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert!(fds < 256, "netmaster holds {fds} fds");
    let log = nm.stderr();
    let limit_lines = log
        .lines()
        .filter(|l| l.contains("connection limit reached"))
        .count();
    assert!(
        (1..=3).contains(&limit_lines),
        "the limit must be logged, at most once per interval: {limit_lines} lines\n{log}"
    );
    drop(flood);
}

/// The PKI docs/security.md makes with scripts/make-certs.sh (openssl) runs the whole
/// control plane: etcd with client certificates, netmaster with TLS + the auth file,
/// racklinectl with the admin token.
#[test]
fn make_certs_script_output_runs_the_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/make-certs.sh");
    let st = Command::new("bash")
        .arg(script)
        .arg(&out)
        .args(["127.0.0.1", "--", "n1"])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let f = |n: &str| out.join(n);
    let pair = |n: &str| pki::CertFiles {
        cert: f(&format!("{n}.crt")),
        key: f(&format!("{n}.key")),
    };
    let etcd = Etcd::start_tls(rackline_testkit::EtcdTls {
        ca: f("ca.crt"),
        server: pair("etcd-server"),
        client_ca: Some(f("ca.crt")),
        ctl: pair("etcdctl"),
    });
    let s = |p: PathBuf| p.display().to_string();
    let flags = [
        "--etcd-ca-file".to_string(),
        s(f("ca.crt")),
        "--etcd-cert-file".into(),
        s(f("etcd-client.crt")),
        "--etcd-key-file".into(),
        s(f("etcd-client.key")),
        "--tls-cert-file".into(),
        s(f("netmaster.crt")),
        "--tls-key-file".into(),
        s(f("netmaster.key")),
        "--client-ca-file".into(),
        s(f("ca.crt")),
        "--auth-file".into(),
        s(f("auth.toml")),
    ];
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let nm = Netmaster::start_with(&etcd, &refs);
    let url = nm.url.replace("http://", "https://");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (ca, token) = (s(f("ca.crt")), s(f("admin.token")));
    let env = [
        ("RACKLINE_SERVER", url.as_str()),
        ("RACKLINE_CA_FILE", ca.as_str()),
        ("RACKLINE_TOKEN_FILE", token.as_str()),
    ];
    ctl(
        &home,
        &env,
        &[
            "network",
            "create",
            "prod",
            "--subnet",
            "10.10.0.0/24",
            "--gateway",
            "10.10.0.1",
            "--master",
            "uplink0",
        ],
    )
    .ok();
    let listed = ctl(&home, &env, &["-o", "json", "network", "list"]).json();
    assert_eq!(listed[0]["name"], "prod");
    // The node certificate gets the node role: it may register, not create networks.
    let (cert, key) = (s(f("ipamd-n1.crt")), s(f("ipamd-n1.key")));
    let node_env = [
        ("RACKLINE_SERVER", url.as_str()),
        ("RACKLINE_CA_FILE", ca.as_str()),
        ("RACKLINE_CERT_FILE", cert.as_str()),
        ("RACKLINE_KEY_FILE", key.as_str()),
    ];
    ctl(&home, &node_env, &["network", "delete", "prod"])
        .refused("n1 (role node) may not call DeleteNetwork");
}

/// Credentials in URLs never reach the log.
#[test]
fn secrets_in_etcd_urls_are_redacted() {
    let etcd = Etcd::start();
    let with_secret = etcd
        .endpoint()
        .replace("http://", "http://root:hunter2-secret@");
    let nm = Netmaster::start_with(&etcd, &["--etcd-endpoints", &with_secret]);
    common::ctl(&nm.url, &["network", "list"]).ok();
    let log = nm.stderr();
    assert!(!log.contains("hunter2"), "{log}");
    assert!(log.contains("http://***@127.0.0.1"), "{log}");
}
