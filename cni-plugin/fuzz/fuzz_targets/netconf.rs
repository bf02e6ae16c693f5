//! The netconf parser for every verb, and the error-version sniffer: any bytes on stdin.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rackline_cni::conf::{sniff_version, NetConf, SUPPORTED_VERSIONS};
use rackline_cni::env::Command;

fuzz_target!(|data: &[u8]| {
    let v = sniff_version(data);
    assert!(SUPPORTED_VERSIONS.contains(&v.as_str()));
    for cmd in [
        Command::Add,
        Command::Check,
        Command::Del,
        Command::Gc,
        Command::Status,
    ] {
        match NetConf::parse(data, cmd) {
            Ok(c) => {
                assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()));
                assert!(c.ipamd_socket.is_absolute() && c.vlan.runtime_dir.is_absolute());
                if cmd == Command::Del {
                    // DEL never reads what it does not use.
                    assert!(c.prev_result.is_none() && c.master.is_none());
                }
            }
            Err(e) => assert!(matches!(e.code(), 1 | 6 | 7), "{e:?}"),
        }
    }
});
