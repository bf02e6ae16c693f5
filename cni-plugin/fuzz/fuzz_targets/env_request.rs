//! The whole boundary: a raw environment (arbitrary bytes, not UTF-8 included) and stdin into a
//! typed request. Input layout: entries `KEY=VALUE` separated by NUL up to a double NUL, then
//! stdin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackline_cni::request::{parse, Request};
use rackline_cni::Invocation;

fuzz_target!(|data: &[u8]| {
    let inv = rackline_cni_fuzz_input(data);
    match parse(&inv) {
        Ok(Request::Version(v)) => assert!(!v.is_empty()),
        Ok(Request::Verb(_)) => {}
        Err(e) => assert!(matches!(e.code(), 1 | 4 | 6 | 7), "{e:?}"),
    }
});

fn rackline_cni_fuzz_input(data: &[u8]) -> Invocation {
    use std::os::unix::ffi::OsStringExt;
    let (env_part, stdin) = match data.windows(2).position(|w| w == [0, 0]) {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let env = env_part
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| match e.iter().position(|b| *b == b'=') {
            Some(i) => (
                std::ffi::OsString::from_vec(e[..i].to_vec()),
                std::ffi::OsString::from_vec(e[i + 1..].to_vec()),
            ),
            None => (std::ffi::OsString::from_vec(e.to_vec()), Default::default()),
        })
        .collect();
    Invocation {
        env,
        stdin: stdin.to_vec(),
        stdin_problem: None,
    }
}
