//! Root-only: namespace handles, run_in_netns, per-namespace sysctls, and
//! read-only dumps of the root namespace (decode check on real interfaces).

mod common;

use std::path::Path;
use std::time::Instant;

use common::{run, TestNs};
use nix::errno::Errno;
use rackline_netlink::{
    read_sysctl_in, run_in_netns, write_sysctl_in, Netlink, NetlinkError, Netns,
};

#[test]
fn run_in_netns_enters_and_never_moves_the_caller() {
    let t = TestNs::new();
    let caller = Netns::current().unwrap().inode().unwrap();
    let target = t.ns.inode().unwrap();
    assert_ne!(caller, target);

    // Borrowing from the caller's stack works (scoped thread).
    let label = String::from("inside");
    let (seen, text) = run_in_netns(&t.ns, || {
        (Netns::current().unwrap().inode().unwrap(), label.clone())
    })
    .unwrap();
    assert_eq!((seen, text.as_str()), (target, "inside"));
    assert_eq!(Netns::current().unwrap().inode().unwrap(), caller);

    // A panic inside propagates like an inline call.
    let panicked = std::panic::catch_unwind(|| run_in_netns(&t.ns, || panic!("boom")));
    assert!(panicked.is_err());
    assert_eq!(Netns::current().unwrap().inode().unwrap(), caller);
}

#[test]
fn open_missing_and_deleted_namespaces() {
    common::require_root();
    let err = Netns::open(Path::new("/var/run/netns/rlnl-never-created")).unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(matches!(
        err,
        NetlinkError::Namespace {
            errno: Errno::ENOENT,
            ..
        }
    ));

    // An open handle keeps the namespace usable after `ip netns del`.
    let t = TestNs::new();
    let kept = Netns::open(&Path::new("/var/run/netns").join(&t.name)).unwrap();
    let name = t.name.clone();
    drop(t);
    assert!(Netns::open(&Path::new("/var/run/netns").join(&name))
        .unwrap_err()
        .is_not_found());
    let mut nl = Netlink::in_netns(&kept).unwrap();
    assert!(nl.link_by_name("lo").unwrap().is_some());
}

#[test]
fn sysctls_are_per_namespace() {
    let t = TestNs::new();
    let root = Netns::current().unwrap();
    let root_forward = read_sysctl_in(&root, "net/ipv4/ip_forward").unwrap();

    // Written only inside the test namespace; the root value must not move.
    let flipped = if root_forward == "1" { "0" } else { "1" };
    write_sysctl_in(&t.ns, "net/ipv4/ip_forward", flipped).unwrap();
    assert_eq!(
        read_sysctl_in(&t.ns, "net/ipv4/ip_forward").unwrap(),
        flipped
    );
    assert_eq!(
        read_sysctl_in(&root, "net/ipv4/ip_forward").unwrap(),
        root_forward
    );

    // Per-interface keys exist only where the interface is.
    let mut nl = t.netlink();
    nl.create_veth("rl-s", "rl-sp", None, None).unwrap();
    write_sysctl_in(&t.ns, "net/ipv4/conf/rl-s/arp_notify", "1").unwrap();
    assert_eq!(
        read_sysctl_in(&t.ns, "net/ipv4/conf/rl-s/arp_notify").unwrap(),
        "1"
    );
    let shown = run(
        "ip",
        &[
            "netns",
            "exec",
            &t.name,
            "cat",
            "/proc/sys/net/ipv4/conf/rl-s/arp_notify",
        ],
    );
    assert_eq!(shown.trim(), "1");
    let err = read_sysctl_in(&root, "net/ipv4/conf/rl-s/arp_notify").unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENOENT), "{err}");
    assert!(err.is_not_found());

    for bad in [
        "../../etc/passwd",
        "/proc/sys/net/ipv4/ip_forward",
        "kernel/hostname",
    ] {
        let err = write_sysctl_in(&t.ns, bad, "1").unwrap_err();
        assert!(
            matches!(err, NetlinkError::InvalidArgument(_)),
            "{bad}: {err}"
        );
    }
}

#[test]
fn root_namespace_dumps_decode() {
    // Read-only: dumps of the real host interfaces, addresses and routes must
    // decode with this netlink-packet-route version on this kernel.
    common::require_root();
    let mut nl = Netlink::new().unwrap();
    let links = nl.links().unwrap();
    let lo = links
        .iter()
        .find(|l| l.name == "lo")
        .expect("lo in root namespace");
    assert_eq!(nl.link_by_index(lo.index).unwrap().as_ref(), Some(lo));
    nl.addrs(None).unwrap();
    nl.routes().unwrap();
}

#[test]
fn verbs_are_fast_enough_for_a_cni_add() {
    // Informational timings (no thresholds: figures double on this machine
    // under a concurrent cargo build). Prints what one ADD-like sequence costs.
    let node = TestNs::new();
    let pod = TestNs::new();
    let mut nl = node.netlink();
    nl.create_veth("rl-up", "rl-upp", None, None).unwrap();
    let parent = nl.link_by_name("rl-up").unwrap().unwrap();

    let start = Instant::now();
    let mut pod_nl = Netlink::in_netns(&pod.ns).unwrap();
    let opened = start.elapsed();
    nl.create_macvlan(
        "eth0",
        parent.index,
        rackline_netlink::MacvlanMode::Bridge,
        None,
        Some(&pod.ns),
    )
    .unwrap();
    let eth0 = pod_nl.link_by_name("eth0").unwrap().unwrap();
    pod_nl
        .add_addr(eth0.index, "10.44.0.5/24".parse().unwrap())
        .unwrap();
    pod_nl.set_up(eth0.index).unwrap();
    pod_nl
        .add_route(&rackline_netlink::RouteSpec::via(
            "0.0.0.0/0".parse().unwrap(),
            "10.44.0.1".parse().unwrap(),
            eth0.index,
        ))
        .unwrap();
    eprintln!(
        "in_netns socket: {opened:?}; macvlan+addr+up+default route: {:?}",
        start.elapsed()
    );
}
