//! Root-only: links created through the API inside namespaces the tests own.

mod common;

use common::{flags, link, TestNs};
use nix::errno::Errno;
use rackline_netlink::{MacvlanMode, Netlink, NetlinkError, Netns};

#[test]
fn veth_create_inspect_modify_delete() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-a", "rl-b", None, Some(1400)).unwrap();

    let a = link(&mut nl, "rl-a");
    let b = link(&mut nl, "rl-b");
    assert_eq!(a.kind.as_deref(), Some("veth"));
    assert_eq!((a.mtu, b.mtu), (1400, 1400), "MTU applies to both ends");
    assert!(!a.up && !b.up, "new links start down");
    assert_eq!(
        a.parent_index,
        Some(b.index),
        "a veth's IFLA_LINK is its peer"
    );
    assert_eq!(nl.link_by_index(a.index).unwrap().unwrap(), a);

    // Modify while down: mac, mtu, rename; then up.
    let mac = [0x02, 0x52, 0x4c, 0x00, 0x00, 0x01];
    nl.set_mac(a.index, mac).unwrap();
    nl.set_mtu(a.index, 1300).unwrap();
    nl.rename(b.index, "rl-b2").unwrap();
    nl.set_up(a.index).unwrap();
    nl.set_up(b.index).unwrap();

    let a2 = link(&mut nl, "rl-a");
    assert_eq!((a2.mac, a2.mtu, a2.up), (Some(mac), 1300, true));
    assert!(nl.link_by_name("rl-b").unwrap().is_none());
    assert_eq!(
        link(&mut nl, "rl-b2").index,
        b.index,
        "rename keeps the index"
    );

    let ip = t.ip_link("rl-a");
    assert_eq!(ip["address"], "02:52:4c:00:00:01");
    assert_eq!(ip["mtu"], 1300);
    assert!(flags(&ip).contains(&"UP".to_owned()), "{ip}");
    assert_eq!(ip["linkinfo"]["info_kind"], "veth");

    nl.set_down(a.index).unwrap();
    assert!(!link(&mut nl, "rl-a").up);
    assert!(!flags(&t.ip_link("rl-a")).contains(&"UP".to_owned()));

    let names: Vec<String> = nl.links().unwrap().into_iter().map(|l| l.name).collect();
    assert!(
        names.contains(&"lo".to_owned()) && names.contains(&"rl-a".to_owned()),
        "{names:?}"
    );

    // Deleting one end removes the pair.
    nl.delete_link(a.index).unwrap();
    assert!(nl.link_by_name("rl-a").unwrap().is_none());
    assert!(nl.link_by_index(b.index).unwrap().is_none());
    assert_eq!(t.ip_link_names(), vec!["lo".to_owned()]);
}

#[test]
fn errno_is_kept_for_exists_and_not_found() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-x", "rl-y", None, None).unwrap();

    let err = nl.create_veth("rl-x", "rl-z", None, None).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert_eq!(err.to_string(), "create veth rl-x: File exists (EEXIST)");

    let missing = 999_999;
    for err in [
        nl.set_up(missing).unwrap_err(),
        nl.set_mtu(missing, 1400).unwrap_err(),
        nl.rename(missing, "rl-q").unwrap_err(),
        nl.delete_link(missing).unwrap_err(),
    ] {
        assert_eq!(err.errno(), Some(Errno::ENODEV), "{err}");
        assert!(err.is_not_found());
    }
    assert!(nl.link_by_name("rl-nope").unwrap().is_none());
    assert!(nl.link_by_index(missing).unwrap().is_none());

    // Parent that does not exist: the kernel says ENODEV too.
    let err = nl
        .create_macvlan("rl-mv", missing, MacvlanMode::Bridge, None, None)
        .unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENODEV), "{err}");

    // Renaming onto a taken name: EEXIST.
    let x = link(&mut nl, "rl-x");
    let err = nl.rename(x.index, "rl-y").unwrap_err();
    assert!(err.is_exists(), "{err}");

    // Renaming a running device: refused (EBUSY) before Linux 6.2, allowed
    // since ("net/core: allow live renaming when an interface is up").
    nl.set_up(x.index).unwrap();
    match nl.rename(x.index, "rl-x2") {
        Ok(()) => assert_eq!(link(&mut nl, "rl-x2").index, x.index),
        Err(e) => assert_eq!(e.errno(), Some(Errno::EBUSY), "{e}"),
    }

    // Checked before anything is sent.
    let err = nl
        .create_veth("a-name-longer-than-15", "p", None, None)
        .unwrap_err();
    assert!(matches!(err, NetlinkError::InvalidArgument(_)), "{err}");
}

#[test]
fn veth_peer_is_born_in_other_netns() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let mut nl = host.netlink();
    nl.create_veth("rl-host", "rl-pod", Some(&pod.ns), Some(1450))
        .unwrap();

    let h = link(&mut nl, "rl-host");
    assert!(
        nl.link_by_name("rl-pod").unwrap().is_none(),
        "peer must not be on the host side"
    );

    let mut pod_nl = pod.netlink();
    let p = link(&mut pod_nl, "rl-pod");
    assert_eq!((p.kind.as_deref(), p.mtu), (Some("veth"), 1450));
    assert!(pod.ip_link_names().contains(&"rl-pod".to_owned()));
    assert!(!host.ip_link_names().contains(&"rl-pod".to_owned()));

    // Name clash inside the peer namespace: EEXIST, and nothing is left
    // behind on the host side.
    let err = nl
        .create_veth("rl-host2", "rl-pod", Some(&pod.ns), None)
        .unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert!(nl.link_by_name("rl-host2").unwrap().is_none());

    // Deleting the host end removes the pod end with it.
    nl.delete_link(h.index).unwrap();
    assert!(pod_nl.link_by_name("rl-pod").unwrap().is_none());
}

#[test]
fn macvlan_is_born_in_target_netns() {
    let node = TestNs::new();
    let pod = TestNs::new();
    let mut nl = node.netlink();
    // No dummy driver here: the macvlan parent is one end of a veth pair.
    nl.create_veth("rl-up", "rl-up-peer", None, None).unwrap();
    let parent = link(&mut nl, "rl-up");
    nl.set_up(parent.index).unwrap();

    nl.create_macvlan(
        "eth0",
        parent.index,
        MacvlanMode::Bridge,
        Some(1400),
        Some(&pod.ns),
    )
    .unwrap();
    assert!(
        nl.link_by_name("eth0").unwrap().is_none(),
        "never visible on the node"
    );

    let mut pod_nl = pod.netlink();
    let mv = link(&mut pod_nl, "eth0");
    assert_eq!(mv.kind.as_deref(), Some("macvlan"));
    assert_eq!(mv.macvlan_mode, Some(MacvlanMode::Bridge));
    assert_eq!(mv.mtu, 1400);
    // IFLA_LINK names the parent's index in the node namespace.
    assert_eq!(mv.parent_index, Some(parent.index));
    let ip = pod.ip_link("eth0");
    assert_eq!(ip["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(ip["linkinfo"]["info_data"]["mode"], "bridge");

    // A clash in the pod: EEXIST. The netavark recovery is a temporary name
    // and a rename inside the pod (down, so the kernel allows it).
    let err = nl
        .create_macvlan(
            "eth0",
            parent.index,
            MacvlanMode::Bridge,
            None,
            Some(&pod.ns),
        )
        .unwrap_err();
    assert!(err.is_exists(), "{err}");
    nl.create_macvlan(
        "rl-tmp0",
        parent.index,
        MacvlanMode::Bridge,
        None,
        Some(&pod.ns),
    )
    .unwrap();
    let tmp = link(&mut pod_nl, "rl-tmp0");
    pod_nl.delete_link(mv.index).unwrap();
    pod_nl.rename(tmp.index, "eth0").unwrap();
    pod_nl.set_up(tmp.index).unwrap();
    let renamed = link(&mut pod_nl, "eth0");
    assert_eq!((renamed.index, renamed.up), (tmp.index, true));
    assert!(pod_nl.link_by_name("rl-tmp0").unwrap().is_none());

    // Deleting the parent on the node takes the pod's macvlan with it.
    nl.delete_link(parent.index).unwrap();
    assert!(pod_nl.link_by_name("eth0").unwrap().is_none());
}

#[test]
fn macvlan_here_in_every_mode() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-p", "rl-pp", None, None).unwrap();
    let parent = link(&mut nl, "rl-p");
    for (i, mode) in [
        MacvlanMode::Private,
        MacvlanMode::Vepa,
        MacvlanMode::Bridge,
        MacvlanMode::Source,
    ]
    .into_iter()
    .enumerate()
    {
        let name = format!("rl-mv{i}");
        nl.create_macvlan(&name, parent.index, mode, None, None)
            .unwrap();
        let mv = link(&mut nl, &name);
        assert_eq!(mv.macvlan_mode, Some(mode), "{name}");
        assert_eq!(mv.parent_index, Some(parent.index));
    }
    // passthru takes the whole parent: it must be the only macvlan on it.
    let other = TestNs::new();
    let mut onl = other.netlink();
    onl.create_veth("rl-q", "rl-qq", None, None).unwrap();
    let q = link(&mut onl, "rl-q");
    onl.create_macvlan("rl-pt", q.index, MacvlanMode::Passthru, None, None)
        .unwrap();
    assert_eq!(
        link(&mut onl, "rl-pt").macvlan_mode,
        Some(MacvlanMode::Passthru)
    );
}

#[test]
fn vlan_is_created_or_refused_with_eopnotsupp() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-trunk", "rl-trunk-p", None, None)
        .unwrap();
    let parent = link(&mut nl, "rl-trunk");
    match nl.create_vlan("rl-trunk.42", parent.index, 42, Some(1400)) {
        Ok(()) => {
            let v = link(&mut nl, "rl-trunk.42");
            assert_eq!(
                (v.kind.as_deref(), v.vlan_id, v.parent_index),
                (Some("vlan"), Some(42), Some(parent.index))
            );
            assert_eq!(t.ip_link("rl-trunk.42")["linkinfo"]["info_data"]["id"], 42);
        }
        // Kernels without 8021q (this lab's) have no rtnl_link_ops "vlan".
        Err(e) => assert_eq!(e.errno(), Some(Errno::EOPNOTSUPP), "{e}"),
    }
    let err = nl
        .create_vlan("rl-bad", parent.index, 4095, None)
        .unwrap_err();
    assert!(matches!(err, NetlinkError::InvalidArgument(_)), "{err}");
}

#[test]
fn netns_socket_keeps_its_namespace_on_any_thread() {
    let t = TestNs::new();
    let before = Netns::current().unwrap().inode().unwrap();
    let mut nl = t.netlink();
    assert_eq!(
        Netns::current().unwrap().inode().unwrap(),
        before,
        "caller never moves"
    );

    // Used from another thread (still in the test process's namespace).
    std::thread::spawn(move || {
        nl.create_veth("rl-t1", "rl-t2", None, None).unwrap();
        nl
    })
    .join()
    .unwrap();
    assert!(t.ip_link_names().contains(&"rl-t1".to_owned()));

    // And a socket made with `new()` inside the namespace is equivalent.
    let mut inner = rackline_netlink::run_in_netns(&t.ns, || Netlink::new().unwrap()).unwrap();
    assert!(inner.link_by_name("rl-t2").unwrap().is_some());
}

#[test]
fn group_delete_removes_macvlan_and_both_veth_ends_in_one_call() {
    let host = TestNs::new();
    let pod = TestNs::new();
    let mut nl = host.netlink();
    nl.create_veth("up0", "up0p", None, None).unwrap();
    let parent = link(&mut nl, "up0");
    nl.create_macvlan(
        "mv0",
        parent.index,
        MacvlanMode::Bridge,
        None,
        Some(&pod.ns),
    )
    .unwrap();
    nl.create_veth("rl-h", "rl-p", Some(&pod.ns), None).unwrap();
    let mut pod_nl = pod.netlink();
    let mv = link(&mut pod_nl, "mv0");
    let pv = link(&mut pod_nl, "rl-p");
    // A bystander in the default group must survive.
    pod_nl.create_veth("other0", "other1", None, None).unwrap();
    pod_nl.set_group(mv.index, 0x8000_0042).unwrap();
    pod_nl.set_group(pv.index, 0x8000_0042).unwrap();
    assert_eq!(link(&mut pod_nl, "mv0").group, 0x8000_0042);

    pod_nl.delete_group(0x8000_0042).unwrap();
    assert!(pod_nl.link_by_name("mv0").unwrap().is_none());
    assert!(pod_nl.link_by_name("rl-p").unwrap().is_none());
    assert!(
        nl.link_by_name("rl-h").unwrap().is_none(),
        "the veth peer goes in the same batch"
    );
    assert!(pod_nl.link_by_name("other0").unwrap().is_some());
    assert!(nl.link_by_name("up0").unwrap().is_some());
    // Group 0 is everything: refused.
    assert!(pod_nl.delete_group(0).is_err());
    assert!(pod_nl.link_by_name("other0").unwrap().is_some());
}
