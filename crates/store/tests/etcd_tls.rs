//! The etcd client against a real etcd in TLS mode with client-certificate
//! auth, and in username/password mode: it works; a wrong CA, an expired or
//! unknown client certificate and a wrong password each fail with an error
//! naming the problem; credentials rotated on disk are picked up without a
//! restart; several endpoints fail over.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rackline_store::{EtcdConfig, Store};
use rackline_testkit::pki::{self, Ca, CertFiles, Usage};
use rackline_testkit::{Etcd, EtcdTls};

fn tls_config(etcd: &Etcd, ca: &Path, client: Option<&CertFiles>) -> EtcdConfig {
    let mut c = EtcdConfig::plain(&[etcd.endpoint()], "/rackline", Duration::from_secs(2));
    c.ca_file = Some(ca.to_owned());
    c.cert_file = client.map(|f| f.cert.clone());
    c.key_file = client.map(|f| f.key.clone());
    c.reload_interval = Duration::from_millis(200);
    c
}

async fn read_error(store: &Store) -> String {
    match store.snapshot().await {
        Ok(_) => panic!("a read succeeded where it must fail"),
        Err(e) => e.to_string(),
    }
}

/// Retries `store.snapshot()` until it succeeds (credentials are re-read
/// every 200 ms here).
async fn eventually_reads(store: &Store, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.snapshot().await {
            Ok(_) => return,
            Err(e) if Instant::now() > deadline => panic!("{what}: still failing: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_auth_works_and_is_rotated_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = EtcdTls::generate(dir.path());
    let mut etcd = Etcd::start_tls(tls.clone());
    let client = ca.issue(dir.path(), "rackline", "rackline", &[], Usage::Client);
    let store = Store::connect_with(tls_config(&etcd, &tls.ca, Some(&client)))
        .await
        .unwrap();
    store.snapshot().await.expect("reading over mutual TLS");
    assert!(store.credential_problem().is_none());

    // etcd now trusts only a new client CA (its server certificate stays):
    // the running client's certificate is unknown to it.
    let ca2 = Ca::new("rackline-test-ca-2");
    let ca2_path = ca2.write_cert(&dir.path().join("client-ca-2.crt"));
    etcd.tls.as_mut().unwrap().client_ca = Some(ca2_path);
    etcd.tls.as_mut().unwrap().ctl = ca2.issue(dir.path(), "etcdctl2", "root", &[], Usage::Client);
    etcd.kill();
    etcd.restart();
    let e = read_error(&store).await;
    assert!(
        e.contains("etcd rejected our client certificate (--etcd-cert-file)"),
        "{e}"
    );

    // Rotation on disk, as cert-manager does it: the same paths, new
    // content. No new Store: the running one reconnects with the new pair.
    let fresh = ca2.issue(dir.path(), "fresh", "rackline", &[], Usage::Client);
    pki::write_private(&client.key, &std::fs::read(&fresh.key).unwrap());
    pki::write_private(&client.cert, &std::fs::read(&fresh.cert).unwrap());
    eventually_reads(&store, "after rotating the client certificate").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_expired_and_unknown_certificates_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, tls) = EtcdTls::generate(dir.path());
    let etcd = Etcd::start_tls(tls.clone());
    let other = Ca::new("not-etcds-ca");
    let other_ca = other.write_cert(&dir.path().join("other-ca.crt"));
    let good = ca.issue(dir.path(), "good", "rackline", &[], Usage::Client);

    // Our CA bundle does not hold the CA of etcd's server certificate.
    let store = Store::connect_with(tls_config(&etcd, &other_ca, Some(&good)))
        .await
        .unwrap();
    let e = read_error(&store).await;
    assert!(
        e.contains("etcd's server certificate is not signed by a CA in --etcd-ca-file"),
        "{e}"
    );

    // Expired: found locally (etcd's TLS alert does not say why).
    let expired = ca.issue_expired(dir.path(), "expired", "rackline", Usage::Client);
    let store = Store::connect_with(tls_config(&etcd, &tls.ca, Some(&expired)))
        .await
        .unwrap();
    let e = read_error(&store).await;
    assert!(
        e.contains("etcd client certificate") && e.contains("expired at 2001-01-01T00:00:00Z"),
        "{e}"
    );
    assert!(store.credential_problem().unwrap().contains("expired"));

    // Signed by a CA etcd does not trust.
    let unknown = other.issue(dir.path(), "unknown", "rackline", &[], Usage::Client);
    let store = Store::connect_with(tls_config(&etcd, &tls.ca, Some(&unknown)))
        .await
        .unwrap();
    let e = read_error(&store).await;
    assert!(e.contains("etcd rejected our client certificate"), "{e}");

    // No client certificate where etcd requires one.
    let store = Store::connect_with(tls_config(&etcd, &tls.ca, None))
        .await
        .unwrap();
    let e = read_error(&store).await;
    assert!(e.contains("client certificate"), "{e}");

    // A key that does not belong to the certificate: refused at start,
    // naming both files.
    let bad_pair = CertFiles {
        cert: good.cert.clone(),
        key: unknown.key.clone(),
    };
    let e = Store::connect_with(tls_config(&etcd, &tls.ca, Some(&bad_pair)))
        .await
        .err()
        .expect("a mismatched key must be refused")
        .to_string();
    assert!(e.contains("does not belong to certificate"), "{e}");
    assert!(e.contains(&unknown.key.display().to_string()), "{e}");
}

fn write(dir: &Path, name: &str, s: &str) -> PathBuf {
    let p = dir.join(name);
    pki::write_private(&p, s.as_bytes());
    p
}

async fn enable_auth(etcd: &Etcd) {
    use etcd_client::{Client, Permission};
    let mut c = Client::connect([etcd.endpoint()], None).await.unwrap();
    c.role_add("rackline").await.unwrap();
    c.role_grant_permission(
        "rackline",
        Permission::read_write("/rackline").with_prefix(),
    )
    .await
    .unwrap();
    c.user_add("rackline", "correct horse", None).await.unwrap();
    c.user_grant_role("rackline", "rackline").await.unwrap();
    c.user_add("root", "root-pw", None).await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn username_and_password_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start();
    enable_auth(&etcd).await;
    etcd.ctl_user = Some("root:root-pw".into());

    let pw = write(dir.path(), "password", "wrong\n");
    let mut cfg = EtcdConfig::plain(&[etcd.endpoint()], "/rackline", Duration::from_secs(2));
    cfg.username = Some("rackline".into());
    cfg.password_file = Some(pw.clone());
    cfg.reload_interval = Duration::from_millis(200);
    let store = Store::connect_with(cfg.clone()).await.unwrap();
    let e = read_error(&store).await;
    assert!(
        e.contains("etcd authentication failed for user \"rackline\"")
            && e.contains("--etcd-password-file"),
        "{e}"
    );
    assert!(
        !e.contains("wrong"),
        "the password leaked into an error: {e}"
    );

    // The password file is fixed: picked up without a restart.
    write(dir.path(), "password", "correct horse\n");
    eventually_reads(&store, "after fixing the password file").await;

    // A restarted etcd forgets its tokens: the client gets a new one.
    etcd.kill();
    etcd.restart();
    eventually_reads(&store, "after an etcd restart").await;

    // Without credentials, auth-enabled etcd refuses.
    let anon = Store::connect(&[etcd.endpoint()], "/rackline", Duration::from_secs(2))
        .await
        .unwrap();
    assert!(anon.snapshot().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_endpoints_fail_over_to_the_live_one() {
    let etcd = Etcd::start();
    let dead = format!("http://127.0.0.1:{}", rackline_testkit::free_port());
    let store = Store::connect(
        &[dead, etcd.endpoint()],
        "/rackline",
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    for _ in 0..10 {
        store.snapshot().await.expect("served by the live endpoint");
    }
}
