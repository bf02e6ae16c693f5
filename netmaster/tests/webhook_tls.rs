//! The webhook sink over https with a private CA (`--webhook-ca-file`), against a real https
//! receiver on loopback and a real etcd: a receiver whose certificate that CA signed gets the
//! events; with another CA's file the handshake is refused, nothing is delivered and the POSTs
//! count as `connect-error`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{create_args, ctl, put_lease, runtime, store, Etcd, Netmaster};
use rackline_telemetry::exposition;
use rackline_testkit::http::{read_request, Request};
use rackline_testkit::pki::{Ca, Usage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// An https receiver on 127.0.0.1 (its own thread, one request per connection): records each
/// POST's JSON body and counts the connections whose TLS handshake failed.
struct HttpsHook {
    addr: SocketAddr,
    bodies: Arc<Mutex<Vec<serde_json::Value>>>,
    failed_handshakes: Arc<AtomicUsize>,
}

impl HttpsHook {
    fn start(cert: &Path, key: &Path) -> Self {
        let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hook = Self {
            addr: listener.local_addr().unwrap(),
            bodies: Arc::default(),
            failed_handshakes: Arc::default(),
        };
        let (bodies, failed) = (hook.bodies.clone(), hook.failed_handshakes.clone());
        // Detached: it lives as long as the test process, which owns nothing else it could hold.
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                let conn = rustls::ServerConnection::new(config.clone()).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                    eprintln!("receiver: handshake failed: {e}");
                    failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let Some(Request { body, .. }) = read_request(&mut tls) else {
                    continue;
                };
                bodies
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        hook
    }

    fn addresses(&self) -> Vec<String> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["address"].as_str().map(str::to_owned))
            .collect()
    }
}

fn metric(addr: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    exposition::parse(body).ok()?.value(name, labels)
}

fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A netmaster with the sink pointed at `url`, trusting `ca_file`, and a network `prod`;
/// returns once the sink has recorded where it starts (events written before that are not its
/// to send), with the etcd it runs on and its metrics address.
fn netmaster_with_hook(url: &str, ca_file: &Path) -> (Etcd, Netmaster, String) {
    let etcd = Etcd::start();
    let metrics = format!("127.0.0.1:{}", rackline_testkit::free_port());
    let nm = Netmaster::start_with(
        &etcd,
        &[
            "--metrics-listen",
            &metrics,
            "--webhook-url",
            url,
            "--webhook-ca-file",
            ca_file.to_str().unwrap(),
            "--webhook-backoff-ms",
            "100",
            "--webhook-backoff-max-ms",
            "200",
        ],
    );
    wait("the webhook cursor", || {
        metric(&metrics, "rackline_netmaster_webhook_cursor_revision", &[]) > Some(0.0)
    });
    ctl(&nm.url, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    (etcd, nm, metrics)
}

#[test]
fn the_webhook_trusts_its_ca_file_and_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("hook-ca");
    let ca_file = ca.write_cert(&dir.path().join("hook-ca.crt"));
    let served = ca.issue(dir.path(), "hook", "hook", &["127.0.0.1"], Usage::Server);
    let other_file = Ca::new("other-ca").write_cert(&dir.path().join("other-ca.crt"));
    let hook = HttpsHook::start(&served.cert, &served.key);
    let url = format!("https://{}/rackline", hook.addr);
    let rt = runtime();

    // Another CA's file: the receiver's certificate is not trusted, nothing is delivered.
    {
        let (etcd, _nm, metrics) = netmaster_with_hook(&url, &other_file);
        let st = store(&etcd, &rt);
        put_lease(&rt, &st, "prod", "10.10.0.64", "n1", ("shop", "web-0"));
        wait("a POST refused at the handshake", || {
            metric(
                &metrics,
                "rackline_netmaster_webhook_posts_total",
                &[("outcome", "connect-error")],
            ) >= Some(2.0)
        });
        assert!(
            hook.failed_handshakes.load(Ordering::SeqCst) >= 1,
            "the sink reached the receiver and the handshake failed there"
        );
        assert_eq!(
            metric(
                &metrics,
                "rackline_netmaster_webhook_posts_total",
                &[("outcome", "ok")]
            )
            .unwrap_or(0.0),
            0.0
        );
        assert!(hook.addresses().is_empty(), "{:?}", hook.addresses());
    }

    // The CA that signed it: the events arrive over https.
    let (etcd, _nm, metrics) = netmaster_with_hook(&url, &ca_file);
    let st = store(&etcd, &rt);
    put_lease(&rt, &st, "prod", "10.10.0.65", "n1", ("shop", "web-1"));
    wait("the event delivered over https", || {
        hook.addresses() == ["10.10.0.65"]
    });
    wait("the POST counted as ok", || {
        metric(
            &metrics,
            "rackline_netmaster_webhook_posts_total",
            &[("outcome", "ok")],
        ) >= Some(1.0)
    });
}
