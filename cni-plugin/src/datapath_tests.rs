//! ADD's link steps, its rollback and DEL's link removal over the fake
//! netlink (`links::fake`): no root, no kernel. What is proven: the undo
//! runs newest first and only over what was created, the plugin never
//! deletes a link it cannot prove is the attachment's, and DEL is
//! idempotent.

use std::time::Duration;

use rackline_netlink::Netns;

use crate::datapath::{create_links, roll_back, AddPlan, Undo};
use crate::env::{Attachment, ContainerId, IfName};
use crate::links::fake::{self, FakeNet, Side};
use crate::owner::{Owner, Role};
use crate::teardown::{remove_node_veth, remove_pod_links};
use crate::vlan::VlanOptions;

const UPLINK: u32 = 2;

pub(crate) fn plan() -> AddPlan {
    AddPlan {
        attachment: Attachment {
            container_id: ContainerId::parse("0123456789abcdef").unwrap(),
            ifname: IfName::parse("eth0").unwrap(),
        },
        netns_path: "/proc/self/ns/net".into(),
        address: "10.0.0.5/24".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        master: "uplink".into(),
        mtu: 0,
        vlan: None,
        vlan_opts: VlanOptions {
            runtime_dir: "/nonexistent".into(),
            cleanup: Default::default(),
            lock_wait: Duration::from_secs(1),
        },
        routes: Vec::new(),
        host_routes: Vec::new(),
        qos: None,
        mac: [2, 0, 10, 0, 0, 5],
        probe: None,
        filter: None,
    }
}

/// The fake only asks whether a target namespace is given: any handle
/// routes the link to the pod side. The plugin's own is openable without
/// root.
fn pod_ns() -> Netns {
    Netns::current().expect("opening the test's own netns handle")
}

/// A node with its uplink and an empty pod.
fn world() -> (FakeNet, FakeNet) {
    let (node, pod) = fake::pair();
    let mut up = fake::link("uplink", None, 0, None);
    up.index = UPLINK;
    node.world.borrow_mut().add_link(Side::Node, up);
    (node, pod)
}

/// Runs the link steps; the undo list as they left it.
fn create(
    node: &mut FakeNet,
    pod: &mut FakeNet,
    owner: &Owner,
) -> (
    Result<crate::datapath::Created, crate::error::CniError>,
    Vec<Undo>,
) {
    let ns = pod_ns();
    let mut undo = Vec::new();
    let r = create_links(
        node,
        pod,
        Some(&ns),
        &plan(),
        UPLINK,
        None,
        owner,
        &mut undo,
    );
    (r, undo)
}

fn calls(n: &FakeNet) -> Vec<String> {
    n.world.borrow().calls.clone()
}

/// The indexes of the links the undo steps stand for, in push order; a
/// link known by name only is resolved in the fake's world.
fn undone_indexes(undo: &[Undo], world: &FakeNet) -> Vec<u32> {
    let by_name = |side: Side, name: &str| {
        world
            .world
            .borrow()
            .links
            .iter()
            .find(|(s, l)| *s == side && l.name == name)
            .map(|(_, l)| l.index)
            .expect("a link created under this name exists")
    };
    undo.iter()
        .map(|u| match u {
            Undo::NodeLink(i) | Undo::PodLink(i, _) => *i,
            Undo::NodeLinkNamed(n) => by_name(Side::Node, n),
            Undo::PodLinkNamed(n, _) => by_name(Side::Pod, n),
            other => panic!("no such undo step in the link phase: {other:?}"),
        })
        .collect()
}

fn no_vlan(_: &mut dyn crate::links::LinkOps, _: crate::vlan::Attached) {
    panic!("no VLAN was attached");
}

#[test]
fn add_creates_then_marks_the_macvlan_then_the_veth_pair() {
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let (r, undo) = create(&mut node, &mut pod, &owner);
    let c = r.expect("the link steps succeed");
    let mutating: Vec<String> = calls(&node)
        .into_iter()
        .filter(|c| !c.contains(" get ") && !c.contains(" list "))
        .collect();
    let host_veth = owner.name(Role::NodeVeth);
    assert_eq!(
        mutating,
        [
            "node create macvlan eth0".to_string(),
            format!("pod set alias {} {}", c.mv.index, owner.mark),
            format!("node create veth {host_veth}/rl-eth0"),
            format!("node set alias {} {}", c.hv.index, owner.mark),
            format!("pod set alias {} {}", c.pv.index, owner.mark),
        ]
    );
    assert_eq!(undone_indexes(&undo, &node), [c.mv.index, c.hv.index]);
    assert_eq!(pod.names(), ["eth0", "rl-eth0"]);
    for (_, l) in node
        .world
        .borrow()
        .links
        .iter()
        .filter(|(_, l)| l.index != UPLINK)
    {
        assert_eq!(l.group, owner.group, "{l:?}");
    }
}

#[test]
fn a_failure_at_every_step_rolls_back_newest_first_only_what_was_created() {
    // How many netlink calls a clean run makes.
    let total = {
        let (mut node, mut pod) = world();
        let owner = Owner::new(&plan().attachment);
        create(&mut node, &mut pod, &owner).0.unwrap();
        calls(&node).len()
    };
    assert!(total >= 8, "{total}");
    for n in 1..=total {
        let (mut node, mut pod) = world();
        node.world.borrow_mut().fail_at = Some(n);
        let owner = Owner::new(&plan().attachment);
        let (r, undo) = create(&mut node, &mut pod, &owner);
        let e = r
            .err()
            .unwrap_or_else(|| panic!("call {n} failed, yet ADD went on"));
        assert_eq!(e.code(), crate::error::code::DATAPATH, "{e}");
        let created = undone_indexes(&undo, &node);
        let before = calls(&node).len();
        roll_back(undo, &mut node, &mut pod, &owner, no_vlan);
        let log = calls(&node);
        let deleted: Vec<u32> = log[before..]
            .iter()
            .filter_map(|c| {
                c.split_once(" delete link ")
                    .map(|(_, i)| i.parse().unwrap())
            })
            .collect();
        let mut want = created.clone();
        want.reverse();
        assert_eq!(deleted, want, "failure at call {n}: {log:#?}");
        assert_eq!(node.names(), ["uplink"], "failure at call {n}");
        assert!(
            pod.names().is_empty(),
            "failure at call {n}: {:?}",
            pod.names()
        );
    }
}

#[test]
fn rollback_leaves_a_link_that_is_no_longer_the_one_created() {
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let (r, undo) = create(&mut node, &mut pod, &owner);
    let c = r.unwrap();
    // Between creation and rollback the macvlan was re-marked by someone
    // else (another attachment took over the index's name).
    for (_, l) in node.world.borrow_mut().links.iter_mut() {
        if l.index == c.mv.index {
            l.alias = Some("someone-else".into());
        }
    }
    roll_back(undo, &mut node, &mut pod, &owner, no_vlan);
    assert_eq!(pod.names(), ["eth0"], "the foreign macvlan stays");
    assert_eq!(node.names(), ["uplink"], "the veth pair was ours");
    assert!(!calls(&node).contains(&format!("pod delete link {}", c.mv.index)));
}

#[test]
fn a_stranger_under_the_node_veth_name_fails_add_and_is_left_alone() {
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let stranger = fake::link(&owner.name(Role::NodeVeth), Some("veth"), 0, Some("ops"));
    node.world.borrow_mut().add_link(Side::Node, stranger);
    let (r, undo) = create(&mut node, &mut pod, &owner);
    let e = r.err().expect("ADD refuses");
    assert!(e.to_string().contains("is not this attachment's"), "{e}");
    assert!(undo.is_empty());
    assert!(
        calls(&node).iter().all(|c| !c.contains("delete")),
        "{:?}",
        calls(&node)
    );
    assert_eq!(node.names().len(), 2);
}

#[test]
fn a_stale_node_veth_of_this_attachment_is_replaced() {
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let stale = fake::link(
        &owner.name(Role::NodeVeth),
        Some("veth"),
        owner.group,
        Some(&owner.mark),
    );
    let old = node.world.borrow_mut().add_link(Side::Node, stale);
    let (r, _) = create(&mut node, &mut pod, &owner);
    let c = r.unwrap();
    assert!(calls(&node).contains(&format!("node delete link {old}")));
    assert_ne!(c.hv.index, old);
}

/// A set-up attachment (links, the pod's address), a foreign macvlan in
/// the same pod and group, and the node's uplink.
fn attached() -> (FakeNet, FakeNet, Owner, u32) {
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let c = create(&mut node, &mut pod, &owner).0.unwrap();
    use crate::links::LinkOps;
    pod.add_addr(c.mv.index, plan().address).unwrap();
    let foreign = fake::link("net1", Some("macvlan"), owner.group, Some("other-pod"));
    let f = node.world.borrow_mut().add_link(Side::Pod, foreign);
    node.world.borrow_mut().calls.clear();
    (node, pod, owner, f)
}

#[test]
fn del_removes_only_the_attachments_links_addresses_first() {
    let (mut node, mut pod, owner, _) = attached();
    let mut unaddressed = 0;
    remove_pod_links(&mut pod, &mut node, &owner, &mut || unaddressed += 1).unwrap();
    remove_node_veth(&mut node, &owner).unwrap();
    assert_eq!(unaddressed, 1);
    assert_eq!(pod.names(), ["net1"], "the foreign macvlan stays");
    assert_eq!(node.names(), ["uplink"]);
    let log = calls(&node);
    let first_addr = log.iter().position(|c| c.contains("del addr")).unwrap();
    let first_link = log.iter().position(|c| c.contains("delete link")).unwrap();
    assert!(first_addr < first_link, "{log:#?}");
    // The group also holds a stranger: never deleted as a group.
    assert!(log.iter().all(|c| !c.contains("delete group")), "{log:#?}");
}

#[test]
fn del_deletes_the_group_in_one_batch_when_it_holds_only_ours() {
    let (mut node, mut pod, owner, foreign) = attached();
    node.world
        .borrow_mut()
        .links
        .retain(|(_, l)| l.index != foreign);
    remove_pod_links(&mut pod, &mut node, &owner, &mut || {}).unwrap();
    remove_node_veth(&mut node, &owner).unwrap();
    assert!(calls(&node).contains(&format!("pod delete group {}", owner.group)));
    assert!(pod.names().is_empty());
    assert_eq!(node.names(), ["uplink"]);
}

#[test]
fn del_is_idempotent() {
    let (mut node, mut pod, owner, _) = attached();
    remove_pod_links(&mut pod, &mut node, &owner, &mut || {}).unwrap();
    remove_node_veth(&mut node, &owner).unwrap();
    node.world.borrow_mut().calls.clear();
    let mut unaddressed = 0;
    remove_pod_links(&mut pod, &mut node, &owner, &mut || unaddressed += 1).unwrap();
    remove_node_veth(&mut node, &owner).unwrap();
    let log = calls(&node);
    assert!(
        log.iter()
            .all(|c| !c.contains("delete") && !c.contains("del ")),
        "{log:#?}"
    );
    assert_eq!(unaddressed, 0, "nothing was addressed any more");
    assert_eq!(pod.names(), ["net1"]);
}

#[test]
fn del_leaves_a_stranger_under_the_node_veth_name() {
    let (mut node, _pod) = world();
    let owner = Owner::new(&plan().attachment);
    let stranger = fake::link(&owner.name(Role::NodeVeth), Some("veth"), 0, Some("ops"));
    node.world.borrow_mut().add_link(Side::Node, stranger);
    remove_node_veth(&mut node, &owner).unwrap();
    assert_eq!(node.names().len(), 2);
}

#[test]
fn a_name_clash_in_the_pod_fails_and_the_temporary_macvlan_is_rolled_back() {
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let theirs = fake::link("eth0", Some("macvlan"), 0, Some("other-pod"));
    let theirs = node.world.borrow_mut().add_link(Side::Pod, theirs);
    let (r, undo) = create(&mut node, &mut pod, &owner);
    let e = r.err().expect("the clash fails ADD");
    assert!(
        e.to_string().contains("already exists in the pod netns"),
        "{e}"
    );
    let log = calls(&node);
    assert!(log.iter().any(|c| c.starts_with("pod rename ")), "{log:#?}");
    roll_back(undo, &mut node, &mut pod, &owner, no_vlan);
    assert_eq!(pod.names(), ["eth0"]);
    assert_eq!(
        node.world
            .borrow()
            .links
            .iter()
            .find(|(s, _)| *s == Side::Pod)
            .map(|(_, l)| l.index),
        Some(theirs),
        "only the pod's own eth0 remains"
    );
    assert!(!calls(&node).contains(&format!("pod delete link {theirs}")));
}

/// An attachment as a successful ADD leaves it: links up, the address, the
/// default route in the pod, the /32 on the node.
fn healthy() -> (FakeNet, FakeNet, crate::datapath::Created) {
    use crate::links::LinkOps;
    let (mut node, mut pod) = world();
    let owner = Owner::new(&plan().attachment);
    let c = create(&mut node, &mut pod, &owner).0.unwrap();
    let p = plan();
    pod.set_up(c.mv.index).unwrap();
    pod.set_up(c.pv.index).unwrap();
    pod.add_addr(c.mv.index, p.address).unwrap();
    let route = |dst: &str, gw: Option<std::net::Ipv4Addr>, oif: u32| rackline_netlink::RouteInfo {
        dst: dst.parse().unwrap(),
        gateway: gw,
        oif: Some(oif),
        scope: 0,
        onlink: false,
        protocol: 3,
        metric: 0,
    };
    let mut w = node.world.borrow_mut();
    w.routes
        .push((Side::Pod, route("0.0.0.0/0", Some(p.gateway), c.mv.index)));
    w.routes
        .push((Side::Node, route("10.0.0.5/32", None, c.hv.index)));
    drop(w);
    (node, pod, c)
}

fn check(node: &mut FakeNet, pod: &mut FakeNet, prev_mac: Option<&str>) -> Result<(), String> {
    let p = plan();
    let (_, hv) = crate::verify::check_links(&p, prev_mac, pod, node).map_err(|e| e.to_string())?;
    crate::verify::check_node_route(&p, node, &hv).map_err(|e| e.to_string())
}

fn edit(node: &FakeNet, index: u32, f: impl Fn(&mut rackline_netlink::LinkInfo)) {
    for (_, l) in node.world.borrow_mut().links.iter_mut() {
        if l.index == index {
            f(l);
        }
    }
}

#[test]
fn check_accepts_what_add_built() {
    let (mut node, mut pod, _) = healthy();
    check(&mut node, &mut pod, None).unwrap();
}

#[test]
fn check_names_each_difference_with_code_103() {
    type Break = fn(&FakeNet, &crate::datapath::Created);
    let cases: [(&str, Break); 6] = [
        ("does not carry 10.0.0.5/24", |n, _| {
            n.world.borrow_mut().addrs.clear()
        }),
        ("is not this attachment's macvlan", |n, c| {
            edit(n, c.mv.index, |l| l.alias = Some("someone-else".into()))
        }),
        ("eth0 is down", |n, c| edit(n, c.mv.index, |l| l.up = false)),
        ("not the address's stable MAC", |n, c| {
            edit(n, c.mv.index, |l| l.mac = Some([2, 9, 9, 9, 9, 9]))
        }),
        ("default route via 10.0.0.1 on eth0 is missing", |n, _| {
            n.world.borrow_mut().routes.retain(|(s, _)| *s != Side::Pod)
        }),
        ("the node's route to 10.0.0.5", |n, _| {
            n.world
                .borrow_mut()
                .routes
                .retain(|(s, _)| *s != Side::Node)
        }),
    ];
    for (want, break_it) in cases {
        let (mut node, mut pod, c) = healthy();
        break_it(&node, &c);
        let p = plan();
        let e = crate::verify::check_links(&p, None, &mut pod, &mut node)
            .and_then(|(_, hv)| crate::verify::check_node_route(&p, &mut node, &hv))
            .expect_err(want);
        assert_eq!(e.code(), crate::error::code::CHECK_FAILED, "{e}");
        assert!(e.to_string().contains(want), "{want}: {e}");
    }
}

#[test]
fn check_accepts_the_mac_prev_result_reported() {
    let (mut node, mut pod, c) = healthy();
    edit(&node, c.mv.index, |l| l.mac = Some([2, 9, 9, 9, 9, 9]));
    check(&mut node, &mut pod, Some("02:09:09:09:09:09")).unwrap();
}
