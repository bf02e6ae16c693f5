//! prevResult: any JSON value (and the result renderer on what parses).
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackline_cni::result::CniResult;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    if let Ok(r) = CniResult::from_prev(&v) {
        for ip in &r.ips {
            assert!(ip.interface.is_none_or(|i| i < r.interfaces.len()));
        }
        for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let back = CniResult::from_prev(&r.to_json(version)).expect("our own result parses");
            assert_eq!(back.ips, r.ips);
            assert_eq!(back.routes, r.routes);
        }
    }
});
