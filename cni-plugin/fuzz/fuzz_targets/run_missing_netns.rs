//! The whole `run()` entry point, exactly as `main` calls it, with a pod network namespace that
//! does not exist, so nothing is ever created: any environment and stdin, the verbs that would
//! touch the node or ipamd before the netns check excluded (DEL, GC, STATUS), and every path the
//! netconf could name (ipamd socket, runtime dir, log file) pointed at places that do not exist
//! or are refused.
//!
//! Input layout: first byte picks CNI_COMMAND (ADD, CHECK, VERSION, or the raw bytes that follow
//! up to the first NUL), then `KEY=VALUE` entries separated by NUL up to a double NUL, then stdin.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use libfuzzer_sys::fuzz_target;
use rackline_cni::{run, Invocation};

const MISSING: &str = "/nonexistent/rackline-fuzz";

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (env_part, stdin) = match rest.windows(2).position(|w| w == [0, 0]) {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (rest, &[][..]),
    };
    let mut entries = env_part.split(|b| *b == 0);
    let command: Vec<u8> = match sel % 4 {
        0 => b"ADD".to_vec(),
        1 => b"CHECK".to_vec(),
        2 => b"VERSION".to_vec(),
        _ => entries.next().unwrap_or_default().to_vec(),
    };
    if matches!(command.as_slice(), b"DEL" | b"GC" | b"STATUS") {
        return;
    }
    let mut env: Vec<(OsString, OsString)> = vec![
        ("CNI_COMMAND".into(), OsString::from_vec(command)),
        ("CNI_NETNS".into(), format!("{MISSING}/netns").into()),
    ];
    for e in entries.filter(|e| !e.is_empty()) {
        let (k, v) = match e.iter().position(|b| *b == b'=') {
            Some(i) => (&e[..i], &e[i + 1..]),
            None => (e, &[][..]),
        };
        if k == b"CNI_COMMAND" || k == b"CNI_NETNS" {
            continue;
        }
        env.push((
            OsString::from_vec(k.to_vec()),
            OsString::from_vec(v.to_vec()),
        ));
    }
    let stdin = match serde_json::from_slice::<serde_json::Value>(stdin) {
        Ok(serde_json::Value::Object(mut m)) => {
            m.insert("ipamdSocket".into(), format!("{MISSING}/ipamd.sock").into());
            m.insert("runtimeDir".into(), MISSING.into());
            m.insert("logFile".into(), "/dev/null".into());
            serde_json::to_vec(&m).unwrap()
        }
        _ => stdin.to_vec(),
    };
    let inv = Invocation {
        env,
        stdin,
        stdin_problem: None,
    };
    let mut out = Vec::new();
    let code = run(&inv, &mut out);
    assert!(code == 0 || code == 1);
    let text = std::str::from_utf8(&out).expect("stdout is UTF-8");
    if code == 1 {
        let doc: serde_json::Value =
            serde_json::from_str(text.trim()).expect("a CNI error document");
        let c = doc["code"].as_u64().expect("a code");
        // 3: the missing netns itself; never 100+ (nothing reached the datapath or ipamd).
        assert!(matches!(c, 1 | 3 | 4 | 6 | 7), "{doc}");
    }
});
