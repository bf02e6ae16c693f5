//! VLAN networks end to end: the shared scenario
//! (tests/netns/vm/vlan-scenario.sh) in a qemu VM — or natively where the host
//! kernel has 8021q. Real etcd, netmaster, one ipamd per node and the real
//! plugin binary; see `rackline_lab::vm`.
//!
//! Needs root, qemu-system-x86, linux-image-amd64, busybox-static, tcpdump
//! (scripts/install-deps.sh) and `cargo build --workspace --bins`; the static
//! plugin/ipamd for the VM are built here into target/static (or taken from
//! $RACKLINE_STATIC_BIN_DIR). A missing prerequisite fails the test.

use rackline_lab::vm::run_vlan_scenario;

#[test]
fn vlan_trunk_isolation_concurrency_and_cleanup() {
    let run = run_vlan_scenario().expect("VLAN scenario could not run");
    eprintln!("{run}");
    run.check().unwrap();
}
