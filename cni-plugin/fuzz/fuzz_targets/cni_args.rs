//! CNI_ARGS and requested-address parsing: any string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackline_cni::env::{
    parse_cni_args, parse_requested, MAX_POD_NAMESPACE_LEN, MAX_POD_NAME_LEN, MAX_POD_UID_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match parse_cni_args(s) {
        Ok(a) => {
            assert!(a.pod.namespace.len() <= MAX_POD_NAMESPACE_LEN);
            assert!(a.pod.name.len() <= MAX_POD_NAME_LEN);
            assert!(a.pod.uid.len() <= MAX_POD_UID_LEN);
            assert!(!a.pod.name.chars().any(char::is_control));
        }
        Err(e) => assert_eq!(e.code(), 4),
    }
    if let Ok(ip) = parse_requested(s) {
        assert!(!ip.is_unspecified() && !ip.is_loopback() && !ip.is_multicast());
    }
});
