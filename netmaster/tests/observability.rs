//! netmaster's metrics listener, its flags, and `racklinectl events` on loopback with a real
//! etcd: the endpoints answer and parse strictly, pool gauges follow lease writes, the event
//! stream shows them in order, a compacted start is refused naming the revision, and bad
//! webhook flags stop netmaster at start.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{ctl, put_lease, runtime, store, Etcd, Netmaster};
use rackline_telemetry::exposition;

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn wait<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_health_and_the_event_stream_on_loopback() {
    let etcd = Etcd::start();
    let port = rackline_testkit::free_port();
    let metrics = format!("127.0.0.1:{port}");
    let nm = Netmaster::start_with(&etcd, &["--metrics-listen", &metrics]);
    assert_eq!(get(&metrics, "/healthz"), (200, "ok\n".to_string()));
    wait("ready", || {
        (get(&metrics, "/readyz").0 == 200).then_some(())
    });
    assert_eq!(get(&metrics, "/nope").0, 404);

    ctl(
        &nm.url,
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
            "--exclude",
            "10.10.0.2-10.10.0.63",
        ],
    )
    .ok();
    let rt = runtime();
    let st = store(&etcd, &rt);
    let since = rt.block_on(st.events().current_revision()).unwrap() + 1;
    put_lease(&rt, &st, "prod", "10.10.0.64", "n1", ("shop", "web-0"));
    put_lease(&rt, &st, "prod", "10.10.0.65", "n1", ("shop", "web-1"));

    let e = wait("the pool gauges count both leases", || {
        let (code, body) = get(&metrics, "/metrics");
        assert_eq!(code, 200);
        let e = exposition::parse(&body).unwrap_or_else(|err| panic!("{err}\n{body}"));
        e.check_conventions().unwrap();
        (e.value(
            "rackline_pool_addresses",
            &[("network", "prod"), ("state", "used")],
        ) == Some(2.0))
        .then_some(e)
    });
    assert_eq!(
        e.value(
            "rackline_pool_capacity_addresses",
            &[("network", "prod"), ("rack", "")]
        ),
        Some(191.0)
    );
    assert_eq!(
        e.value(
            "rackline_pool_addresses",
            &[("network", "prod"), ("state", "free")]
        ),
        Some(189.0)
    );
    assert_eq!(e.value("rackline_netmaster_leader", &[]), Some(1.0));
    assert_eq!(
        e.value(
            "rackline_netmaster_admin_requests_total",
            &[("method", "CreateNetwork"), ("code", "OK")]
        ),
        Some(1.0)
    );

    // The two writes as events, in order, one JSON object per line.
    let out = ctl(
        &nm.url,
        &["-o", "json", "events", "--since", &since.to_string()],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e["kind"].as_str().unwrap(), e["address"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("allocated", "10.10.0.64"), ("allocated", "10.10.0.65")]
    );
    assert_eq!(events[0]["pod"]["name"], "web-0");
    // The table form: one line per event.
    let table = ctl(&nm.url, &["events", "--since", &since.to_string()]);
    assert_eq!(table.stdout.lines().count(), 2, "{table:?}");
    assert!(table.stdout.contains("allocated") && table.stdout.contains("shop/web-1"));

    // A compacted start is refused (exit 1), naming the oldest revision left.
    let now = rt.block_on(st.events().current_revision()).unwrap();
    etcd.ctl(&["compact", &now.to_string()]);
    let out = ctl(&nm.url, &["events", "--since", &since.to_string()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("compacted") && out.stderr.contains(&now.to_string()),
        "{out:?}"
    );
}

#[test]
fn bad_webhook_flags_stop_netmaster() {
    let bin = env!("CARGO_BIN_EXE_rackline-netmaster");
    let run = |extra: &[&str]| {
        std::process::Command::new(bin)
            .args([
                "--etcd-endpoints",
                "http://127.0.0.1:1",
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .output()
            .expect("run netmaster")
    };
    let out = run(&["--webhook-url", "ftp://cmdb/hook"]);
    assert_eq!(out.status.code(), Some(2), "a bad URL is a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("http:// or https://"));
    let out = run(&[
        "--webhook-url",
        "https://cmdb.example/hook",
        "--webhook-ca-file",
        "/nonexistent/ca.pem",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--webhook-ca-file /nonexistent/ca.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_followed_stream_ends_at_shutdown_without_holding_the_drain() {
    let etcd = Etcd::start();
    let mut nm = Netmaster::start(&etcd);
    let follower = common::ctl_spawn(&nm.url, &["events", "--follow"]);
    // Let the stream open.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    assert!(nm.terminate(Duration::from_secs(8)).success());
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "the open stream held the drain"
    );
    let out = follower.wait();
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("shutting down"), "{out:?}");
}
