//! ADD's whole step sequence over the fakes (`links::fake`,
//! `podside::fake`): the VLAN parent, the links, the ARP sysctls, the
//! probe, the address, routes and rules, shaping, the node side — and the
//! rollback of each. No root, no kernel. What is proven: the steps run in
//! ADD's order, a failure at ANY call leaves the node and the pod exactly as
//! they were found (links, addresses, routes, rules, shaping, filter,
//! `arp_notify`), the undo runs newest first, and a VLAN device that is not
//! this ADD's is never deleted.

use std::net::Ipv4Addr;
use std::time::Duration;

use rackline_model::qos::{Effective, Level, Limit, Resolved};
use rackline_netlink::{AddrInfo, Netns, RouteInfo};

use crate::datapath::{attach, AddPlan, Added, PodSide};
use crate::env::{ContainerId, IfName};
use crate::error::CniError;
use crate::links::fake::{self, FakeNet, Side};
use crate::podside::fake::{FakeArp, FakeFilter, FakeSysctls};
use crate::podside::{ArpOps, PacketFilter};
use crate::probe::ProbeParams;
use crate::vlan::{VlanCleanup, VlanOptions};

const UPLINK: u32 = 2;
const ARP_NOTIFY: &str = "net/ipv4/conf/default/arp_notify";
const NODE_IP: &str = "192.168.1.10";

/// The unit tests' plan (`datapath_tests::plan`) with a VLAN registry
/// directory of its own and routes both ways, so every route step runs.
fn plan(runtime_dir: &std::path::Path) -> AddPlan {
    let base = crate::datapath_tests::plan();
    AddPlan {
        vlan_opts: VlanOptions {
            runtime_dir: runtime_dir.to_owned(),
            cleanup: VlanCleanup::Keep,
            ..base.vlan_opts.clone()
        },
        routes: vec![(
            "10.9.0.0/16".parse().unwrap(),
            "10.0.0.254".parse().unwrap(),
        )],
        host_routes: vec!["10.96.0.0/12".parse().unwrap()],
        ..base
    }
}

fn shaped() -> Effective {
    let r = Resolved {
        limit: Limit {
            rate: 10_000_000,
            burst: None,
        },
        level: Level::Pod,
        clamped: false,
    };
    Effective {
        ingress: Some(r),
        egress: Some(r),
    }
}

/// A node with its uplink (up, carrying the node's address) and an empty
/// pod whose `arp_notify` ADD found at 0 and set to 1.
struct Rig {
    node: FakeNet,
    pod: FakeNet,
    /// The MAC of a host claiming the address at the probe, if any.
    claimed: Option<[u8; 6]>,
    dir: tempfile::TempDir,
}

impl Rig {
    fn new() -> Self {
        let (node, pod) = fake::pair();
        let mut up = fake::link("uplink", None, 0, None);
        up.index = UPLINK;
        up.up = true;
        let mut w = node.world.borrow_mut();
        w.add_link(Side::Node, up);
        w.addrs.push((
            Side::Node,
            AddrInfo {
                index: UPLINK,
                addr: format!("{NODE_IP}/24").parse().unwrap(),
                scope: 0,
            },
        ));
        w.sysctls.insert(ARP_NOTIFY.into(), "1".into());
        drop(w);
        Rig {
            node,
            pod,
            claimed: None,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn plan(&self) -> AddPlan {
        plan(self.dir.path())
    }

    fn add(&mut self, plan: &AddPlan) -> Result<Added, CniError> {
        let ns = Netns::current().expect("opening the test's own netns handle");
        let world = self.node.world.clone();
        let mut sysctls = FakeSysctls(world.clone());
        let mut filter = FakeFilter {
            world: world.clone(),
            table: "rackline-eth0".into(),
        };
        let arp = FakeArp {
            world,
            claimed: self.claimed,
        };
        let mut pod = self.pod.clone();
        let side = PodSide {
            nl: &mut pod,
            ns: Some(&ns),
            sysctls: &mut sysctls,
            arp: plan.probe.is_some().then_some(&arp as &dyn ArpOps),
            filter: plan
                .filter
                .is_some()
                .then_some(&mut filter as &mut dyn PacketFilter),
            arp_notify: Some("0".into()),
        };
        attach(&mut self.node, side, plan)
    }

    fn calls(&self) -> Vec<String> {
        self.node.world.borrow().calls.clone()
    }

    fn fail_at(&self, n: usize) {
        self.node.world.borrow_mut().fail_at = Some(n);
    }

    /// What ADD changes, to compare before and after.
    fn state(&self) -> String {
        let w = self.node.world.borrow();
        format!(
            "links {:?}\naddrs {:?}\nroutes {:?}\nrules {:?}\ntc {:?}\nfilter {}\narp_notify {:?}",
            w.links,
            w.addrs,
            w.routes,
            w.rules,
            w.tc,
            w.filter,
            w.sysctls.get(ARP_NOTIFY)
        )
    }
}

/// The calls that change something, in order.
fn mutating(calls: &[String]) -> Vec<String> {
    calls
        .iter()
        .filter(|c| {
            !c.contains(" get ")
                && !c.contains(" list ")
                && !c.contains(" set alias ")
                && !c.contains(" create ")
        })
        .cloned()
        .collect()
}

fn index_of(net: &FakeNet, side: Side, name: &str) -> u32 {
    net.world
        .borrow()
        .links
        .iter()
        .find(|(s, l)| *s == side && l.name == name)
        .map(|(_, l)| l.index)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn add_configures_the_pod_then_its_routes_then_the_node() {
    let mut rig = Rig::new();
    let r = rig.add(&rig.plan()).unwrap();
    assert!(matches!(r, Added::Configured(_)), "{r:?}");
    let mv = index_of(&rig.pod, Side::Pod, "eth0");
    let pv = index_of(&rig.pod, Side::Pod, "rl-eth0");
    let owner = crate::owner::Owner::new(&rig.plan().attachment);
    let hv = index_of(
        &rig.node,
        Side::Node,
        &owner.name(crate::owner::Role::NodeVeth),
    );
    assert_eq!(
        mutating(&rig.calls()),
        [
            "pod sysctl net/ipv4/conf/eth0/arp_ignore=1 net/ipv4/conf/eth0/arp_announce=2"
                .to_string(),
            format!("pod add addr {mv} 10.0.0.5/24"),
            format!("pod set up {mv}"),
            format!("pod set up {pv}"),
            format!("pod add route {NODE_IP}/32 dev {pv}"),
            format!("pod add route 10.96.0.0/12 dev {pv}"),
            format!("pod add route 0.0.0.0/0 dev {mv}"),
            format!("pod add route 10.9.0.0/16 dev {mv}"),
            format!("node set up {hv}"),
            format!("node add route 10.0.0.5/32 dev {hv}"),
        ]
    );
}

/// The pod already holds another attachment with a default route: this
/// one takes metric 1, its own table and a source rule.
fn second_attachment(rig: &Rig) {
    rig.node.world.borrow_mut().routes.push((
        Side::Pod,
        RouteInfo {
            dst: "0.0.0.0/0".parse().unwrap(),
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            oif: Some(7),
            scope: 0,
            onlink: false,
            protocol: 3,
            metric: 0,
        },
    ));
}

#[test]
fn an_additional_attachment_routes_with_the_next_metric_its_table_and_a_rule() {
    let mut rig = Rig::new();
    second_attachment(&rig);
    rig.add(&rig.plan()).unwrap();
    let owner = crate::owner::Owner::new(&rig.plan().attachment);
    let routes: Vec<String> = rig
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("pod add r"))
        .collect();
    let mv = index_of(&rig.pod, Side::Pod, "eth0");
    let pv = index_of(&rig.pod, Side::Pod, "rl-eth0");
    let t = owner.group;
    assert_eq!(
        routes,
        [
            format!("pod add route {NODE_IP}/32 dev {pv} metric 1"),
            format!("pod add route 10.96.0.0/12 dev {pv} metric 1"),
            format!("pod add route 0.0.0.0/0 dev {mv} metric 1"),
            format!("pod add route 10.9.0.0/16 dev {mv} metric 1"),
            format!("pod add route {NODE_IP}/32 dev {pv} table {t}"),
            format!("pod add route 10.96.0.0/12 dev {pv} table {t}"),
            format!("pod add route 0.0.0.0/0 dev {mv} table {t}"),
            format!("pod add route 10.9.0.0/16 dev {mv} table {t}"),
            format!("pod add rule 10.0.0.5/32 table {t}"),
        ]
    );
}

#[test]
fn a_failure_at_the_node_route_undoes_newest_first() {
    let mut rig = Rig::new();
    second_attachment(&rig);
    let mut plan = rig.plan();
    plan.filter = Some(rackline_model::filter::PodFilter::allow_all());
    let before = rig.state();
    let total = {
        let mut clean = Rig::new();
        second_attachment(&clean);
        clean.add(&plan).unwrap();
        clean.calls().len()
    };
    // The last call of a clean ADD is the node's route to the pod.
    rig.fail_at(total);
    rig.add(&plan).unwrap_err();
    let calls = rig.calls();
    assert!(
        calls[total - 1].starts_with("node add route 10.0.0.5/32"),
        "{calls:#?}"
    );
    let owner = crate::owner::Owner::new(&plan.attachment);
    let undo: Vec<&String> = calls[total..]
        .iter()
        .filter(|c| !c.contains(" get ") && !c.contains(" list "))
        .collect();
    let hv = calls
        .iter()
        .find_map(|c| c.strip_prefix("node set up "))
        .unwrap()
        .to_owned();
    let mv = calls
        .iter()
        .find_map(|c| c.strip_prefix("pod add addr "))
        .and_then(|c| c.split_once(' '))
        .unwrap()
        .0
        .to_owned();
    assert_eq!(
        undo,
        [
            &format!("pod del rule 10.0.0.5/32 table {}", owner.group),
            &format!("node delete link {hv}"),
            &format!("pod delete link {mv}"),
            "pod nft remove rackline-eth0",
            "pod sysctl net/ipv4/conf/default/arp_notify=0",
        ]
    );
    let after = rig.state();
    // arp_notify: ADD found it at 0 (the fake world starts at the value ADD set).
    assert_eq!(
        after.replace("arp_notify Some(\"0\")", "arp_notify Some(\"1\")"),
        before
    );
}

/// Runs a clean ADD of `plan` in a fresh rig (prepared by `prep`) for its
/// call count, then fails each call in turn: every failure is an error and
/// leaves the rig as found.
fn every_failure_rolls_back(plan: impl Fn(&Rig) -> AddPlan, prep: impl Fn(&Rig)) {
    let total = {
        let mut rig = Rig::new();
        prep(&rig);
        let r = rig.add(&plan(&rig)).unwrap();
        assert!(matches!(r, Added::Configured(_)), "{r:?}");
        rig.calls().len()
    };
    for n in 1..=total {
        let mut rig = Rig::new();
        prep(&rig);
        let before = rig.state();
        rig.fail_at(n);
        let e = rig
            .add(&plan(&rig))
            .err()
            .unwrap_or_else(|| panic!("call {n} failed, yet ADD went on"));
        assert_eq!(e.code(), crate::error::code::DATAPATH, "{e}");
        let calls = rig.calls();
        let after = rig
            .state()
            .replace("arp_notify Some(\"0\")", "arp_notify Some(\"1\")");
        assert_eq!(
            after,
            before,
            "failure at call {n} ({}) left something: {calls:#?}",
            calls[n - 1]
        );
    }
}

#[test]
fn a_failure_at_any_route_step_rolls_back_everything_before_it() {
    every_failure_rolls_back(|r| r.plan(), |_| {});
}

#[test]
fn a_failure_at_any_step_of_an_additional_attachment_rolls_back_its_rule_too() {
    every_failure_rolls_back(|r| r.plan(), second_attachment);
}

#[test]
fn a_failure_anywhere_with_filter_and_shaping_rolls_back_both() {
    every_failure_rolls_back(
        |r| {
            let mut p = r.plan();
            p.qos = Some(shaped());
            p.filter = Some(rackline_model::filter::PodFilter::allow_all());
            p
        },
        |_| {},
    );
}

#[test]
fn shaping_runs_after_the_routes_on_the_new_links() {
    let mut rig = Rig::new();
    let mut plan = rig.plan();
    plan.qos = Some(shaped());
    rig.add(&plan).unwrap();
    let calls = rig.calls();
    let mv = index_of(&rig.pod, Side::Pod, "eth0");
    let ifb = index_of(&rig.pod, Side::Pod, &crate::names::ifb("eth0"));
    let tc: Vec<&String> = calls
        .iter()
        .filter(|c| c.contains(" tc ") || c.contains("create ifb"))
        .collect();
    assert_eq!(
        tc,
        [
            &format!("pod tc tbf on {mv}"),
            &format!("pod create ifb {}", crate::names::ifb("eth0")),
            &format!("pod tc tbf on {ifb}"),
            &format!("pod tc ingress on {mv}"),
            &format!("pod tc redirect {ifb} on {mv}"),
        ]
    );
    let last_route = calls
        .iter()
        .rposition(|c| c.starts_with("pod add route"))
        .unwrap();
    let first_tc = calls.iter().position(|c| c.contains(" tc ")).unwrap();
    assert!(last_route < first_tc, "{calls:#?}");
    let owner = crate::owner::Owner::new(&plan.attachment);
    let w = rig.node.world.borrow();
    let l = &w.links.iter().find(|(_, l)| l.index == ifb).unwrap().1;
    assert_eq!(
        (l.group, l.alias.as_deref()),
        (owner.group, Some(&*owner.mark))
    );
}

#[test]
fn a_probe_conflict_rolls_back_everything_and_reports_it() {
    let mut rig = Rig::new();
    rig.claimed = Some([2, 7, 7, 7, 7, 7]);
    let mut plan = rig.plan();
    plan.probe = Some(ProbeParams {
        count: 1,
        interval: Duration::from_millis(1),
    });
    plan.filter = Some(rackline_model::filter::PodFilter::allow_all());
    let before = rig.state();
    let r = rig.add(&plan).unwrap();
    let Added::Conflict(c) = r else {
        panic!("{r:?}")
    };
    assert_eq!(c.address, Ipv4Addr::new(10, 0, 0, 5));
    assert_eq!(c.mac, [2, 7, 7, 7, 7, 7]);
    let calls = rig.calls();
    let probe = calls.iter().position(|c| c.contains("arp probe")).unwrap();
    assert!(
        calls[..probe].iter().all(|c| !c.contains("add addr")),
        "the probe runs before the address: {calls:#?}"
    );
    assert!(calls.iter().all(|c| !c.contains("add route")), "{calls:#?}");
    assert_eq!(
        rig.state()
            .replace("arp_notify Some(\"0\")", "arp_notify Some(\"1\")"),
        before
    );
}

#[test]
fn a_free_address_is_probed_then_announced_after_the_address() {
    let mut rig = Rig::new();
    let mut plan = rig.plan();
    plan.probe = Some(ProbeParams {
        count: 1,
        interval: Duration::from_millis(1),
    });
    rig.add(&plan).unwrap();
    let calls = rig.calls();
    let at = |what: &str| calls.iter().position(|c| c.contains(what)).unwrap();
    assert!(at("arp probe") < at("add addr"), "{calls:#?}");
    assert!(at("add addr") < at("arp announce"), "{calls:#?}");
    assert!(at("arp announce") < at("add route"), "{calls:#?}");
}

#[test]
fn a_foreign_node_route_to_the_address_fails_add_and_is_kept() {
    let mut rig = Rig::new();
    let foreign = RouteInfo {
        dst: "10.0.0.5/32".parse().unwrap(),
        gateway: None,
        oif: Some(UPLINK),
        scope: 253,
        onlink: false,
        protocol: 3,
        metric: 0,
    };
    rig.node
        .world
        .borrow_mut()
        .routes
        .push((Side::Node, foreign));
    let before = rig.state();
    let e = rig.add(&rig.plan()).unwrap_err();
    assert!(e.to_string().contains("not a Rackline pod veth"), "{e}");
    assert!(rig.calls().iter().all(|c| !c.contains("del route")));
    assert_eq!(
        rig.state()
            .replace("arp_notify Some(\"0\")", "arp_notify Some(\"1\")"),
        before
    );
}

#[test]
fn a_stale_pods_node_route_is_replaced() {
    let mut rig = Rig::new();
    // An unmarked node veth by its name: a pod from before marks.
    let stale = fake::link("rl1234567890ab", Some("veth"), 9, None);
    let old = rig.node.world.borrow_mut().add_link(Side::Node, stale);
    rig.node.world.borrow_mut().routes.push((
        Side::Node,
        RouteInfo {
            dst: "10.0.0.5/32".parse().unwrap(),
            gateway: None,
            oif: Some(old),
            scope: 253,
            onlink: false,
            protocol: 3,
            metric: 0,
        },
    ));
    rig.add(&rig.plan()).unwrap();
    let calls = rig.calls();
    assert!(
        calls
            .iter()
            .any(|c| c == &format!("node del route 10.0.0.5/32 dev {old}")),
        "{calls:#?}"
    );
    let w = rig.node.world.borrow();
    let to_pod: Vec<_> = w
        .routes
        .iter()
        .filter(|(s, r)| *s == Side::Node && r.dst == "10.0.0.5/32".parse().unwrap())
        .collect();
    assert_eq!(to_pod.len(), 1);
    assert_ne!(to_pod[0].1.oif, Some(old));
}

const VID: u16 = 100;
const VLAN_DEV: &str = "uplink.100";

fn vlan_plan(r: &Rig, cleanup: VlanCleanup) -> AddPlan {
    let mut p = r.plan();
    p.vlan = Some(VID);
    p.vlan_opts.cleanup = cleanup;
    p
}

/// An 802.1Q device `uplink.100` that someone else made (no registry
/// entry, no mark of ours).
fn foreign_vlan(r: &Rig) {
    let mut l = fake::link(VLAN_DEV, Some("vlan"), 0, None);
    l.parent_index = Some(UPLINK);
    l.vlan_id = Some(VID);
    l.vlan_protocol = Some(0x8100);
    l.up = true;
    r.node.world.borrow_mut().add_link(Side::Node, l);
}

fn has_vlan(r: &Rig) -> bool {
    r.node.names().iter().any(|n| n == VLAN_DEV)
}

fn detach(r: &Rig, plan: &AddPlan) {
    let node = r.node.clone();
    crate::vlan::detach_with(&plan.vlan_opts, plan.container_id(), plan.ifname(), || {
        Ok(node.clone())
    })
    .unwrap();
}

#[test]
fn a_vlan_device_this_add_created_goes_with_its_rollback_at_any_failure() {
    // The device is created by the first steps, so every later failure
    // has it to undo; the state compared includes it being gone.
    every_failure_rolls_back(|r| vlan_plan(r, VlanCleanup::Keep), |_| {});
}

#[test]
fn a_vlan_device_not_ours_is_reused_and_never_deleted() {
    for cleanup in [VlanCleanup::Keep, VlanCleanup::Remove] {
        // Any failure: rolled back, the device stays.
        every_failure_rolls_back(move |r| vlan_plan(r, cleanup), foreign_vlan);
        // A configured ADD puts its macvlan on it, and DEL leaves it.
        let mut rig = Rig::new();
        foreign_vlan(&rig);
        let plan = vlan_plan(&rig, cleanup);
        let dev = index_of(&rig.node, Side::Node, VLAN_DEV);
        rig.add(&plan).unwrap();
        let calls = rig.calls();
        assert!(
            calls.iter().all(|c| !c.contains("create vlan")),
            "{calls:#?}"
        );
        let mv = rig
            .node
            .world
            .borrow()
            .links
            .iter()
            .find(|(s, l)| *s == Side::Pod && l.name == "eth0")
            .unwrap()
            .1
            .clone();
        assert_eq!(mv.parent_index, Some(dev), "the macvlan is on the VLAN");
        detach(&rig, &plan);
        assert!(has_vlan(&rig), "{cleanup:?}");
        assert!(
            rig.calls().iter().all(|c| !c.contains("delete link")),
            "{cleanup:?}: {:#?}",
            rig.calls()
        );
    }
}

#[test]
fn a_wrong_device_under_the_vlan_name_fails_add_untouched() {
    let mut rig = Rig::new();
    let l = fake::link(VLAN_DEV, Some("macvlan"), 0, None);
    rig.node.world.borrow_mut().add_link(Side::Node, l);
    let before = rig.state();
    let e = rig.add(&vlan_plan(&rig, VlanCleanup::Remove)).unwrap_err();
    assert!(e.to_string().contains("is not 802.1Q VLAN 100"), "{e}");
    let calls = rig.calls();
    assert_eq!(
        mutating(&calls),
        ["pod sysctl net/ipv4/conf/default/arp_notify=0"],
        "only arp_notify is restored: {calls:#?}"
    );
    assert_eq!(
        rig.state()
            .replace("arp_notify Some(\"0\")", "arp_notify Some(\"1\")"),
        before
    );
}

#[test]
fn del_keeps_a_created_vlan_device_unless_the_policy_removes_it() {
    // keep: the device stays when its last user leaves.
    let mut rig = Rig::new();
    let plan = vlan_plan(&rig, VlanCleanup::Keep);
    rig.add(&plan).unwrap();
    assert!(rig
        .calls()
        .iter()
        .any(|c| c.starts_with("node create vlan uplink.100 100 on 2")));
    detach(&rig, &plan);
    assert!(has_vlan(&rig));
    // remove: deleted once nobody uses it — not while another attachment does.
    let mut rig = Rig::new();
    let plan = vlan_plan(&rig, VlanCleanup::Remove);
    let mut other = plan.clone();
    // Another pod's attachment; the fake has one pod netns, so it is named
    // net1 there.
    other.attachment.container_id = ContainerId::parse("fedcba9876543210").unwrap();
    other.attachment.ifname = IfName::parse("net1").unwrap();
    other.address = "10.0.0.6/24".parse().unwrap();
    other.mac = [2, 0, 10, 0, 0, 6];
    rig.add(&plan).unwrap();
    rig.add(&other).unwrap();
    detach(&rig, &plan);
    assert!(has_vlan(&rig), "the other attachment still uses it");
    detach(&rig, &other);
    assert!(!has_vlan(&rig));
    // Idempotent: a repeated DEL opens no netlink socket at all.
    let node = rig.node.clone();
    node.world.borrow_mut().calls.clear();
    crate::vlan::detach_with(
        &other.vlan_opts,
        other.container_id(),
        other.ifname(),
        || -> Result<FakeNet, rackline_netlink::NetlinkError> {
            panic!("no device to delete: no socket")
        },
    )
    .unwrap();
}

#[test]
fn del_with_remove_keeps_a_vlan_device_with_a_node_local_upper() {
    let mut rig = Rig::new();
    let plan = vlan_plan(&rig, VlanCleanup::Remove);
    rig.add(&plan).unwrap();
    let dev = index_of(&rig.node, Side::Node, VLAN_DEV);
    let mut upper = fake::link("shim", Some("macvlan"), 0, None);
    upper.parent_index = Some(dev);
    rig.node.world.borrow_mut().add_link(Side::Node, upper);
    detach(&rig, &plan);
    assert!(has_vlan(&rig));
}

#[test]
fn a_shaping_failure_undoes_the_ifb_the_links_and_their_routes_then_arp_notify() {
    let mut rig = Rig::new();
    let mut plan = rig.plan();
    plan.qos = Some(shaped());
    let before = rig.state();
    let redirect = {
        let mut clean = Rig::new();
        clean.add(&plan).unwrap();
        let calls = clean.calls();
        1 + calls
            .iter()
            .position(|c| c.contains(" tc redirect "))
            .unwrap()
    };
    rig.fail_at(redirect);
    let e = rig.add(&plan).unwrap_err();
    assert!(e.to_string().contains("QoS: ingress redirect"), "{e}");
    let calls = rig.calls();
    let undo: Vec<&String> = calls[redirect..]
        .iter()
        .filter(|c| !c.contains(" get "))
        .collect();
    // The first index in the first call starting with `prefix` after `from`.
    let index_after = |from: usize, prefix: &str| -> String {
        calls[from..]
            .iter()
            .find_map(|c| c.strip_prefix(prefix))
            .and_then(|rest| rest.split(' ').next())
            .unwrap()
            .to_owned()
    };
    let ifb_created = calls
        .iter()
        .position(|c| c.starts_with("pod create ifb"))
        .unwrap();
    let ifb = index_after(ifb_created, "pod set alias ");
    let hv = index_after(0, "node set alias ");
    let mv = index_after(0, "pod add addr ");
    assert_eq!(
        undo,
        [
            &format!("pod delete link {ifb}"),
            &format!("node delete link {hv}"),
            &format!("pod delete link {mv}"),
            "pod sysctl net/ipv4/conf/default/arp_notify=0",
        ]
    );
    assert_eq!(
        rig.state()
            .replace("arp_notify Some(\"0\")", "arp_notify Some(\"1\")"),
        before
    );
}

#[test]
fn one_of_the_nodes_own_addresses_is_a_conflict_found_before_anything_is_created() {
    let mut rig = Rig::new();
    let mut plan = rig.plan();
    plan.address = format!("{NODE_IP}/24").parse().unwrap();
    let c = crate::datapath::node_address_conflict(&mut rig.node, plan.address.ip())
        .unwrap()
        .expect("the uplink carries it");
    assert_eq!(c.node_link.as_deref(), Some("uplink"));
    assert_eq!(c.mac, [2, 0, 0, 0, 0, 1]);
    assert_eq!(
        rig.calls(),
        [
            "node list addrs all".to_string(),
            format!("node get link {UPLINK}")
        ]
    );
    assert!(
        crate::datapath::node_address_conflict(&mut rig.node, Ipv4Addr::new(10, 0, 0, 5))
            .unwrap()
            .is_none()
    );
}
