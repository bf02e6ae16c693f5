//! The whole plugin driven in-process through `run()`, the way the runtime drives the binary:
//! raw environment (`OsString`), raw stdin, CNI JSON on stdout. A fake ipamd on a unix socket
//! records what the plugin asks. Nothing here touches the machine's network: every case fails
//! before the datapath, or runs on a thread inside a fresh network namespace.
//!
//! Needs root for the cases that create a namespace (`unshare(CLONE_NEWNET)`); they fail loudly
//! otherwise.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rackline_cni::fake_ipamd::{self, Answer, Seen};
use rackline_cni::{run, Invocation};
use serde_json::{json, Value};

fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
    pairs
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect()
}

/// Runs the plugin; (exit code, stdout as JSON if any).
fn invoke(env: Vec<(OsString, OsString)>, stdin: &Value) -> (i32, Option<Value>) {
    let inv = Invocation {
        env,
        stdin: serde_json::to_vec(stdin).unwrap(),
        stdin_problem: None,
    };
    let mut out = Vec::new();
    let code = run(&inv, &mut out);
    let text = String::from_utf8(out).expect("stdout is UTF-8");
    (code, serde_json::from_str(text.trim()).ok())
}

fn code_of(r: &(i32, Option<Value>)) -> Option<u64> {
    r.1.as_ref()?.get("code")?.as_u64()
}

fn conf(dir: &Path) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "prod",
        "type": "rackline",
        "ipamdSocket": dir.join("ipamd.sock"),
        "runtimeDir": dir.join("run"),
        "timeoutMs": 1000,
    })
}

fn pod_env(cmd: &str, netns: &str) -> Vec<(OsString, OsString)> {
    env(&[
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_UID=u-1",
        ),
    ])
}

/// Runs `f` on this thread with the path of a new, empty network namespace that a helper
/// thread holds (`/proc/<pid>/task/<tid>/ns/net`) while `f` runs: a pod sandbox.
fn with_pod_netns<T>(f: impl FnOnce(&Path) -> T) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) needs root: run these tests as root");
        let tid = nix::unistd::gettid();
        tx.send(PathBuf::from(format!(
            "/proc/{}/task/{tid}/ns/net",
            std::process::id()
        )))
        .unwrap();
        let _ = stop_rx.recv();
    });
    let path = rx.recv().expect("netns holder thread died");
    let out = f(&path);
    drop(stop_tx);
    holder.join().unwrap();
    out
}

/// Runs `f` on a thread inside a new, empty network namespace (the plugin's "node" there).
fn in_new_netns<T: Send>(f: impl FnOnce(&Path) -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare(CLONE_NEWNET) needs root: run these tests as root");
            let tid = nix::unistd::gettid();
            let path = PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id()));
            f(&path)
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Serves the fake ipamd (refusing every Allocate: the plugin stops
/// before its datapath) on `socket`, after `delay`.
fn serve(socket: PathBuf, delay: Duration) -> Arc<Mutex<Seen>> {
    fake_ipamd::serve(socket, delay, Answer::Refuse)
}

#[test]
fn version_ignores_unrelated_non_utf8_variables() {
    let mut e = env(&[("CNI_COMMAND", "VERSION")]);
    e.push(("JUNK".into(), OsString::from_vec(vec![0xff, 0xfe])));
    e.push((OsString::from_vec(vec![0xff]), "x".into()));
    let r = invoke(e, &json!({"cniVersion": "1.0.0"}));
    assert_eq!(r.0, 0);
    assert_eq!(r.1.unwrap()["cniVersion"], "1.0.0");
}

#[test]
fn non_utf8_cni_values_are_code_4() {
    let d = tempfile::tempdir().unwrap();
    let mut e = pod_env("ADD", "/var/run/netns/x");
    e.retain(|(k, _)| k != "CNI_IFNAME");
    e.push(("CNI_IFNAME".into(), OsString::from_vec(b"eth\xff".to_vec())));
    assert_eq!(code_of(&invoke(e, &conf(d.path()))), Some(4));
}

#[test]
fn the_plugins_own_namespace_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let link = d.path().join("own");
    std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
    for ns in [
        "/proc/self/ns/net",
        "/proc/thread-self/ns/net",
        link.to_str().unwrap(),
    ] {
        let r = invoke(pod_env("ADD", ns), &conf(d.path()));
        assert_eq!(code_of(&r), Some(4), "{ns}: {r:?}");
        assert!(r.1.unwrap()["msg"]
            .as_str()
            .unwrap()
            .contains("own network namespace"));
    }
}

#[test]
fn a_fifo_as_netns_or_log_file_never_blocks() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let t = Instant::now();
    for cmd in ["ADD", "CHECK"] {
        let mut c = conf(d.path());
        c["prevResult"] = json!({});
        let r = invoke(pod_env(cmd, fifo.to_str().unwrap()), &c);
        assert_eq!(code_of(&r), Some(4), "{cmd}: {r:?}");
    }
    // A FIFO log file: logged to stderr instead; the verb goes on (here: a missing netns).
    let mut c = conf(d.path());
    c["logFile"] = json!(fifo);
    let r = invoke(pod_env("ADD", "/var/run/netns/rackline-missing"), &c);
    assert_eq!(code_of(&r), Some(3), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn arrays_where_objects_belong_and_wrong_prev_results_are_code_7() {
    let d = tempfile::tempdir().unwrap();
    for (key, v) in [
        (
            "runtimeConfig",
            json!([{"bandwidth": {"ingressRate": 1_000_000}}]),
        ),
        ("runtimeConfig", json!({"bandwidth": [1_000_000, 0, 0, 0]})),
        ("prevResult", json!("x")),
    ] {
        let mut c = conf(d.path());
        c[key] = v.clone();
        let r = invoke(pod_env("ADD", "/var/run/netns/rackline-missing"), &c);
        assert_eq!(code_of(&r), Some(7), "{key}={v}: {r:?}");
    }
    for prev in [
        json!("x"),
        json!([1]),
        json!({"ips": {"address": "10.0.0.1/24"}}),
    ] {
        let mut c = conf(d.path());
        c["prevResult"] = prev.clone();
        let r = invoke(pod_env("CHECK", "/var/run/netns/rackline-missing"), &c);
        assert_eq!(code_of(&r), Some(7), "{prev}: {r:?}");
    }
}

#[test]
fn del_of_an_attachment_no_add_accepts_is_a_clean_0() {
    let d = tempfile::tempdir().unwrap();
    let mut e = pod_env("DEL", "");
    e.retain(|(k, _)| k != "CNI_CONTAINERID");
    e.push(("CNI_CONTAINERID".into(), "abc\u{1}def".into()));
    let r = invoke(e, &conf(d.path()));
    assert_eq!(r, (0, None));
    // Nothing but the timing report of this invocation: no spool record, no VLAN registry.
    for sub in ["release", "vlan"] {
        assert!(
            !d.path().join("run").join(sub).exists(),
            "DEL touched {sub}"
        );
    }
}

#[test]
fn requested_addresses_reach_allocate() {
    let d = tempfile::tempdir().unwrap();
    let seen = serve(d.path().join("ipamd.sock"), Duration::ZERO);
    with_pod_netns(|pod| {
        let mut e = pod_env("ADD", pod.to_str().unwrap());
        e.retain(|(k, _)| k != "CNI_ARGS");
        e.push(("CNI_ARGS".into(), "IgnoreUnknown=1;IP=10.10.0.70/24".into()));
        let mut c = conf(d.path());
        c["runtimeConfig"] = json!({"ips": ["10.10.0.70"]});
        let r = invoke(e, &c);
        assert_eq!(code_of(&r), Some(101), "{r:?}");
        let mut c = conf(d.path());
        c["runtimeConfig"] = json!({"ips": ["10.10.0.71/24"]});
        let r = invoke(pod_env("ADD", pod.to_str().unwrap()), &c);
        assert_eq!(code_of(&r), Some(101), "{r:?}");
        let r = invoke(pod_env("ADD", pod.to_str().unwrap()), &conf(d.path()));
        assert_eq!(code_of(&r), Some(101), "{r:?}");
    });
    let s = seen.lock().unwrap();
    let asked: Vec<Vec<String>> = s
        .allocate
        .iter()
        .map(|a| a.requested_addresses.clone())
        .collect();
    assert_eq!(
        asked,
        vec![
            vec!["10.10.0.70".to_owned()],
            vec!["10.10.0.71".to_owned()],
            vec![]
        ]
    );
    let a = &s.allocate[1];
    assert_eq!(
        (a.container_id.as_str(), a.ifname.as_str()),
        ("c0ffee", "eth0")
    );
    assert_eq!(a.pod.as_ref().unwrap().name, "web-0");
}

#[test]
fn add_waits_for_a_restarting_ipamd_within_its_timeout() {
    let d = tempfile::tempdir().unwrap();
    let seen = serve(d.path().join("ipamd.sock"), Duration::from_millis(400));
    let t = Instant::now();
    with_pod_netns(|pod| {
        let mut c = conf(d.path());
        c["timeoutMs"] = json!(5000);
        let r = invoke(pod_env("ADD", pod.to_str().unwrap()), &c);
        // The fake answers "exhausted": the ADD reached it.
        assert_eq!(code_of(&r), Some(101), "{r:?}");
    });
    assert_eq!(seen.lock().unwrap().allocate.len(), 1);
    assert!(t.elapsed() >= Duration::from_millis(400));
    // Without a server at all the wait ends at timeoutMs with code 11.
    let e = tempfile::tempdir().unwrap();
    let t = Instant::now();
    with_pod_netns(|pod| {
        let mut c = conf(e.path());
        c["timeoutMs"] = json!(300);
        let r = invoke(pod_env("ADD", pod.to_str().unwrap()), &c);
        assert_eq!(code_of(&r), Some(11), "{r:?}");
    });
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[test]
fn del_spools_the_release_when_ipamd_is_away_and_hands_it_over_otherwise() {
    let d = tempfile::tempdir().unwrap();
    in_new_netns(|_| {
        let r = invoke(pod_env("DEL", ""), &conf(d.path()));
        assert_eq!(r, (0, None));
        let ino = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino()
        };
        let dir = d.path().join("run/release").join(ino.to_string());
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let rec: Value = serde_json::from_slice(&std::fs::read(&names[0]).unwrap()).unwrap();
        assert_eq!(rec["network"], "prod");
        assert_eq!(rec["containerId"], "c0ffee");
        assert_eq!(rec["ifname"], "eth0");
    });
    let e = tempfile::tempdir().unwrap();
    let seen = serve(e.path().join("ipamd.sock"), Duration::ZERO);
    in_new_netns(|_| {
        let r = invoke(pod_env("DEL", ""), &conf(e.path()));
        assert_eq!(r, (0, None));
    });
    assert_eq!(seen.lock().unwrap().release.len(), 1);
    assert!(!e.path().join("run/release").exists());
}
