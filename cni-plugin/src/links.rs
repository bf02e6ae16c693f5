//! The link, address, route and rule operations the plugin's datapath steps
//! need, as a trait ([`LinkOps`]), with its traffic-control sibling
//! ([`TcOps`]): implemented by the netlink wrapper ([`Netlink`], one socket
//! per namespace) and, in unit tests, by `fake::FakeNet`, which records
//! every call in order and fails the Nth on request. The steps written
//! against them (the VLAN parent, creating and marking the attachment's
//! links, addresses, routes, rules, shaping, the rollback of a failed ADD,
//! DEL's removal of the pod's links) are proven without root.

use ipnetwork::Ipv4Network;
use rackline_netlink::{
    AddrInfo, FilterInfo, LinkInfo, MacvlanMode, Netlink, NetlinkError, Netns, QdiscInfo,
    RouteInfo, RouteSpec, RuleInfo, RuleSpec, Tbf,
};

type Result<T> = std::result::Result<T, NetlinkError>;

/// One namespace's links, addresses and rules. Methods mirror
/// [`Netlink`]'s; see there for their semantics.
pub trait LinkOps {
    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>>;
    fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>>;
    fn links(&mut self) -> Result<Vec<LinkInfo>>;
    /// A macvlan on `parent_index` born in `target` (this namespace when
    /// `None`) and in device group `group`.
    #[allow(clippy::too_many_arguments)]
    fn create_macvlan_in_group(
        &mut self,
        name: &str,
        parent_index: u32,
        mode: MacvlanMode,
        mtu: Option<u32>,
        mac: [u8; 6],
        target: Option<&Netns>,
        group: u32,
    ) -> Result<()>;
    /// A veth pair: `name` here, `peer_name` in `peer_ns`; both in `group`.
    fn create_veth_in_group(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&Netns>,
        mtu: Option<u32>,
        group: u32,
    ) -> Result<()>;
    /// An 802.1Q sub-interface `vlan_id` on `parent_index`.
    fn create_vlan(
        &mut self,
        name: &str,
        parent_index: u32,
        vlan_id: u16,
        mtu: Option<u32>,
    ) -> Result<()>;
    fn set_alias(&mut self, index: u32, alias: &str) -> Result<()>;
    fn set_up(&mut self, index: u32) -> Result<()>;
    fn set_down(&mut self, index: u32) -> Result<()>;
    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()>;
    fn rename(&mut self, index: u32, new_name: &str) -> Result<()>;
    fn add_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()>;
    fn del_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()>;
    fn addrs(&mut self, index: Option<u32>) -> Result<Vec<AddrInfo>>;
    fn rules(&mut self) -> Result<Vec<RuleInfo>>;
    fn routes(&mut self) -> Result<Vec<RouteInfo>>;
    fn add_route(&mut self, r: &RouteSpec) -> Result<()>;
    fn del_route(&mut self, r: &RouteSpec) -> Result<()>;
    fn add_rule(&mut self, r: &RuleSpec) -> Result<()>;
    fn del_rule(&mut self, r: &RuleSpec) -> Result<()>;
    fn delete_link(&mut self, index: u32) -> Result<()>;
    fn delete_group(&mut self, group: u32) -> Result<()>;
}

/// The pod's traffic control (per-pod shaping, `qos.rs`): its ifb and the
/// qdiscs and filter on the macvlan and the ifb. A sibling of [`LinkOps`]
/// because only the pod's socket needs it; the shaping steps also look up,
/// mark and delete links, hence the supertrait.
pub trait TcOps: LinkOps {
    /// An ifb (down) in this namespace and in device group `group`.
    fn create_ifb_in_group(&mut self, name: &str, mtu: Option<u32>, group: u32) -> Result<()>;
    fn add_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<()>;
    fn add_ingress_qdisc(&mut self, index: u32) -> Result<()>;
    /// A match-all filter on `index`'s ingress redirecting to `to`.
    fn add_ingress_redirect(&mut self, index: u32, to: u32) -> Result<()>;
    fn qdiscs(&mut self, index: u32) -> Result<Vec<QdiscInfo>>;
    fn ingress_filters(&mut self, index: u32) -> Result<Vec<FilterInfo>>;
}

impl TcOps for Netlink {
    fn create_ifb_in_group(&mut self, name: &str, mtu: Option<u32>, group: u32) -> Result<()> {
        Netlink::create_ifb_in_group(self, name, mtu, group)
    }
    fn add_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<()> {
        Netlink::add_tbf(self, index, tbf)
    }
    fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        Netlink::add_ingress_qdisc(self, index)
    }
    fn add_ingress_redirect(&mut self, index: u32, to: u32) -> Result<()> {
        Netlink::add_ingress_redirect(self, index, to)
    }
    fn qdiscs(&mut self, index: u32) -> Result<Vec<QdiscInfo>> {
        Netlink::qdiscs(self, index)
    }
    fn ingress_filters(&mut self, index: u32) -> Result<Vec<FilterInfo>> {
        Netlink::ingress_filters(self, index)
    }
}

impl LinkOps for Netlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>> {
        Netlink::link_by_name(self, name)
    }
    fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>> {
        Netlink::link_by_index(self, index)
    }
    fn links(&mut self) -> Result<Vec<LinkInfo>> {
        Netlink::links(self)
    }
    fn create_macvlan_in_group(
        &mut self,
        name: &str,
        parent_index: u32,
        mode: MacvlanMode,
        mtu: Option<u32>,
        mac: [u8; 6],
        target: Option<&Netns>,
        group: u32,
    ) -> Result<()> {
        Netlink::create_macvlan_in_group(self, name, parent_index, mode, mtu, mac, target, group)
    }
    fn create_veth_in_group(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&Netns>,
        mtu: Option<u32>,
        group: u32,
    ) -> Result<()> {
        Netlink::create_veth_in_group(self, name, peer_name, peer_ns, mtu, group)
    }
    fn create_vlan(
        &mut self,
        name: &str,
        parent_index: u32,
        vlan_id: u16,
        mtu: Option<u32>,
    ) -> Result<()> {
        Netlink::create_vlan(self, name, parent_index, vlan_id, mtu)
    }
    fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        Netlink::set_alias(self, index, alias)
    }
    fn set_up(&mut self, index: u32) -> Result<()> {
        Netlink::set_up(self, index)
    }
    fn set_down(&mut self, index: u32) -> Result<()> {
        Netlink::set_down(self, index)
    }
    fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        Netlink::set_mac(self, index, mac)
    }
    fn rename(&mut self, index: u32, new_name: &str) -> Result<()> {
        Netlink::rename(self, index, new_name)
    }
    fn add_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()> {
        Netlink::add_addr(self, index, addr)
    }
    fn del_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()> {
        Netlink::del_addr(self, index, addr)
    }
    fn addrs(&mut self, index: Option<u32>) -> Result<Vec<AddrInfo>> {
        Netlink::addrs(self, index)
    }
    fn rules(&mut self) -> Result<Vec<RuleInfo>> {
        Netlink::rules(self)
    }
    fn routes(&mut self) -> Result<Vec<RouteInfo>> {
        Netlink::routes(self)
    }
    fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
        Netlink::add_route(self, r)
    }
    fn del_route(&mut self, r: &RouteSpec) -> Result<()> {
        Netlink::del_route(self, r)
    }
    fn add_rule(&mut self, r: &RuleSpec) -> Result<()> {
        Netlink::add_rule(self, r)
    }
    fn del_rule(&mut self, r: &RuleSpec) -> Result<()> {
        Netlink::del_rule(self, r)
    }
    fn delete_link(&mut self, index: u32) -> Result<()> {
        Netlink::delete_link(self, index)
    }
    fn delete_group(&mut self, group: u32) -> Result<()> {
        Netlink::delete_group(self, group)
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory pair of namespaces (node and pod) behind [`LinkOps`]
    //! and [`TcOps`]. Every call is logged as `"<ns> <op> <what>"` in one
    //! shared log, in order; `fail_at(n)` makes the n-th call (1-based,
    //! counted over both namespaces) fail with EPERM without changing
    //! anything. Routes land in the main table's list only (another table's
    //! are logged); traffic control is opaque: logged with its target, and
    //! kept as `(index, op)` so a deleted link takes its qdiscs along.

    use std::cell::RefCell;
    use std::rc::Rc;

    use nix::errno::Errno;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Side {
        Node,
        Pod,
    }

    impl Side {
        fn other(self) -> Self {
            match self {
                Side::Node => Side::Pod,
                Side::Pod => Side::Node,
            }
        }
        fn label(self) -> &'static str {
            match self {
                Side::Node => "node",
                Side::Pod => "pod",
            }
        }
    }

    #[derive(Debug, Default)]
    pub struct World {
        pub links: Vec<(Side, LinkInfo)>,
        pub addrs: Vec<(Side, AddrInfo)>,
        pub rules: Vec<(Side, RuleInfo)>,
        pub routes: Vec<(Side, RouteInfo)>,
        /// Traffic control on a link: (side, ifindex, "tbf" / "ingress" /
        /// "redirect <to>").
        pub tc: Vec<(Side, u32, String)>,
        /// The pod's sysctls (`podside::fake`).
        pub sysctls: std::collections::BTreeMap<String, String>,
        /// Whether the pod's packet filter table exists (`podside::fake`).
        pub filter: bool,
        pub calls: Vec<String>,
        pub fail_at: Option<usize>,
        next_index: u32,
        /// veth ends: deleting one deletes the other.
        peers: Vec<(u32, u32)>,
    }

    impl World {
        pub fn add_link(&mut self, side: Side, mut l: LinkInfo) -> u32 {
            self.next_index = self.next_index.max(l.index) + 1;
            if l.index == 0 {
                l.index = self.next_index;
            }
            let i = l.index;
            self.links.push((side, l));
            i
        }

        fn remove(&mut self, index: u32) {
            let peer = self.peers.iter().find_map(|&(a, b)| {
                if a == index {
                    Some(b)
                } else if b == index {
                    Some(a)
                } else {
                    None
                }
            });
            self.links
                .retain(|(_, l)| l.index != index && Some(l.index) != peer);
            self.addrs
                .retain(|(_, a)| a.index != index && Some(a.index) != peer);
            let gone = |i: Option<u32>| i == Some(index) || (i.is_some() && i == peer);
            self.routes.retain(|(_, r)| !gone(r.oif));
            self.tc.retain(|(_, i, _)| !gone(Some(*i)));
        }
    }

    /// One namespace's view of the shared [`World`].
    #[derive(Clone)]
    pub struct FakeNet {
        pub world: Rc<RefCell<World>>,
        pub side: Side,
    }

    /// The node's and the pod's view of one fresh world.
    pub fn pair() -> (FakeNet, FakeNet) {
        let world = Rc::new(RefCell::new(World {
            next_index: 100,
            ..Default::default()
        }));
        (
            FakeNet {
                world: world.clone(),
                side: Side::Node,
            },
            FakeNet {
                world,
                side: Side::Pod,
            },
        )
    }

    pub fn link(name: &str, kind: Option<&str>, group: u32, alias: Option<&str>) -> LinkInfo {
        LinkInfo {
            index: 0,
            name: name.to_owned(),
            kind: kind.map(str::to_owned),
            mtu: 1500,
            mac: Some([2, 0, 0, 0, 0, 1]),
            up: false,
            parent_index: None,
            vlan_id: None,
            vlan_protocol: None,
            macvlan_mode: None,
            group,
            alias: alias.map(str::to_owned),
        }
    }

    impl FakeNet {
        /// Logs the call; the failing one returns its error.
        fn call(&self, op: &'static str, what: impl std::fmt::Display) -> Result<()> {
            let mut w = self.world.borrow_mut();
            w.calls.push(format!("{} {op} {what}", self.side.label()));
            if w.fail_at == Some(w.calls.len()) {
                return Err(NetlinkError::Kernel {
                    op,
                    target: what.to_string(),
                    errno: Errno::EPERM,
                });
            }
            Ok(())
        }

        fn find(&self, f: impl Fn(&LinkInfo) -> bool) -> Option<LinkInfo> {
            self.world
                .borrow()
                .links
                .iter()
                .find(|(s, l)| *s == self.side && f(l))
                .map(|(_, l)| l.clone())
        }

        fn exists(&self, side: Side, name: &str) -> bool {
            self.world
                .borrow()
                .links
                .iter()
                .any(|(s, l)| *s == side && l.name == name)
        }

        fn with_link(&self, index: u32, f: impl FnOnce(&mut LinkInfo)) -> Result<()> {
            let mut w = self.world.borrow_mut();
            match w
                .links
                .iter_mut()
                .find(|(s, l)| *s == self.side && l.index == index)
            {
                Some((_, l)) => {
                    f(l);
                    Ok(())
                }
                None => Err(no_such(index)),
            }
        }

        /// The names of this namespace's links, sorted.
        pub fn names(&self) -> Vec<String> {
            let mut v: Vec<String> = self
                .world
                .borrow()
                .links
                .iter()
                .filter(|(s, _)| *s == self.side)
                .map(|(_, l)| l.name.clone())
                .collect();
            v.sort();
            v
        }
    }

    fn no_such(index: u32) -> NetlinkError {
        NetlinkError::Kernel {
            op: "link",
            target: index.to_string(),
            errno: Errno::ENODEV,
        }
    }

    fn exists_err(op: &'static str, name: &str) -> NetlinkError {
        NetlinkError::Kernel {
            op,
            target: name.to_owned(),
            errno: Errno::EEXIST,
        }
    }

    impl LinkOps for FakeNet {
        fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>> {
            self.call("get link", name)?;
            Ok(self.find(|l| l.name == name))
        }
        fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>> {
            self.call("get link", index)?;
            Ok(self.find(|l| l.index == index))
        }
        fn links(&mut self) -> Result<Vec<LinkInfo>> {
            self.call("list links", "")?;
            let w = self.world.borrow();
            Ok(w.links
                .iter()
                .filter(|(s, _)| *s == self.side)
                .map(|(_, l)| l.clone())
                .collect())
        }
        fn create_macvlan_in_group(
            &mut self,
            name: &str,
            parent_index: u32,
            _mode: MacvlanMode,
            mtu: Option<u32>,
            mac: [u8; 6],
            target: Option<&Netns>,
            group: u32,
        ) -> Result<()> {
            self.call("create macvlan", name)?;
            let side = if target.is_some() {
                self.side.other()
            } else {
                self.side
            };
            // The kernel checks the name here, and again where it lands.
            if self.exists(self.side, name) || self.exists(side, name) {
                return Err(exists_err("create macvlan", name));
            }
            let mut l = link(name, Some("macvlan"), group, None);
            l.parent_index = Some(parent_index);
            l.mac = Some(mac);
            l.mtu = mtu.unwrap_or(1500);
            self.world.borrow_mut().add_link(side, l);
            Ok(())
        }
        fn create_veth_in_group(
            &mut self,
            name: &str,
            peer_name: &str,
            peer_ns: Option<&Netns>,
            mtu: Option<u32>,
            group: u32,
        ) -> Result<()> {
            self.call("create veth", format!("{name}/{peer_name}"))?;
            let peer_side = if peer_ns.is_some() {
                self.side.other()
            } else {
                self.side
            };
            if self.exists(self.side, name) || self.exists(peer_side, peer_name) {
                return Err(exists_err("create veth", name));
            }
            let mut w = self.world.borrow_mut();
            let mut a = link(name, Some("veth"), group, None);
            a.mtu = mtu.unwrap_or(1500);
            let mut b = a.clone();
            b.name = peer_name.to_owned();
            let ia = w.add_link(self.side, a);
            let ib = w.add_link(peer_side, b);
            w.peers.push((ia, ib));
            for (_, l) in w.links.iter_mut() {
                if l.index == ia {
                    l.parent_index = Some(ib);
                } else if l.index == ib {
                    l.parent_index = Some(ia);
                }
            }
            Ok(())
        }
        fn create_vlan(
            &mut self,
            name: &str,
            parent_index: u32,
            vlan_id: u16,
            mtu: Option<u32>,
        ) -> Result<()> {
            self.call("create vlan", format!("{name} {vlan_id} on {parent_index}"))?;
            if self.exists(self.side, name) {
                return Err(exists_err("create vlan", name));
            }
            let mut l = link(name, Some("vlan"), 0, None);
            l.parent_index = Some(parent_index);
            l.vlan_id = Some(vlan_id);
            l.vlan_protocol = Some(0x8100);
            l.mtu = mtu.unwrap_or(1500);
            self.world.borrow_mut().add_link(self.side, l);
            Ok(())
        }
        fn set_down(&mut self, index: u32) -> Result<()> {
            self.call("set down", index)?;
            self.with_link(index, |l| l.up = false)
        }
        fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
            self.call("set mac", index)?;
            self.with_link(index, |l| l.mac = Some(mac))
        }
        fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
            self.call("set alias", format!("{index} {alias}"))?;
            self.with_link(index, |l| l.alias = Some(alias.to_owned()))
        }
        fn set_up(&mut self, index: u32) -> Result<()> {
            self.call("set up", index)?;
            self.with_link(index, |l| l.up = true)
        }
        fn rename(&mut self, index: u32, new_name: &str) -> Result<()> {
            self.call("rename", format!("{index} {new_name}"))?;
            if self.exists(self.side, new_name) {
                return Err(exists_err("rename", new_name));
            }
            self.with_link(index, |l| l.name = new_name.to_owned())
        }
        fn add_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()> {
            self.call("add addr", format!("{index} {addr}"))?;
            self.world.borrow_mut().addrs.push((
                self.side,
                AddrInfo {
                    index,
                    addr,
                    scope: 0,
                },
            ));
            Ok(())
        }
        fn del_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()> {
            self.call("del addr", format!("{index} {addr}"))?;
            let side = self.side;
            self.world
                .borrow_mut()
                .addrs
                .retain(|(s, a)| !(*s == side && a.index == index && a.addr == addr));
            Ok(())
        }
        fn addrs(&mut self, index: Option<u32>) -> Result<Vec<AddrInfo>> {
            self.call("list addrs", index.map_or("all".into(), |i| i.to_string()))?;
            let w = self.world.borrow();
            Ok(w.addrs
                .iter()
                .filter(|(s, a)| *s == self.side && index.is_none_or(|i| a.index == i))
                .map(|(_, a)| *a)
                .collect())
        }
        fn rules(&mut self) -> Result<Vec<RuleInfo>> {
            self.call("list rules", "")?;
            let w = self.world.borrow();
            Ok(w.rules
                .iter()
                .filter(|(s, _)| *s == self.side)
                .map(|(_, r)| *r)
                .collect())
        }
        fn routes(&mut self) -> Result<Vec<RouteInfo>> {
            self.call("list routes", "")?;
            let w = self.world.borrow();
            Ok(w.routes
                .iter()
                .filter(|(s, _)| *s == self.side)
                .map(|(_, r)| *r)
                .collect())
        }
        fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
            self.call("add route", route_text(r))?;
            if r.table.is_some() {
                return Ok(());
            }
            let metric = r.metric.unwrap_or(0);
            let mut w = self.world.borrow_mut();
            // NLM_F_EXCL: one route per destination and metric.
            if w.routes
                .iter()
                .any(|(s, x)| *s == self.side && x.dst == r.dst && x.metric == metric)
            {
                return Err(exists_err("add route", &r.dst.to_string()));
            }
            w.routes.push((
                self.side,
                RouteInfo {
                    dst: r.dst,
                    gateway: r.gateway,
                    oif: Some(r.oif),
                    scope: 0,
                    onlink: r.onlink,
                    protocol: 3,
                    metric,
                },
            ));
            Ok(())
        }
        fn del_route(&mut self, r: &RouteSpec) -> Result<()> {
            self.call("del route", route_text(r))?;
            let (side, metric) = (self.side, r.metric.unwrap_or(0));
            let mut w = self.world.borrow_mut();
            let before = w.routes.len();
            w.routes.retain(|(s, x)| {
                !(*s == side && x.dst == r.dst && x.oif == Some(r.oif) && x.metric == metric)
            });
            if w.routes.len() == before {
                return Err(NetlinkError::Kernel {
                    op: "del route",
                    target: r.dst.to_string(),
                    errno: Errno::ESRCH,
                });
            }
            Ok(())
        }
        fn add_rule(&mut self, r: &RuleSpec) -> Result<()> {
            self.call("add rule", format!("{} table {}", r.src, r.table))?;
            let side = self.side;
            let mut w = self.world.borrow_mut();
            if w.rules.iter().any(|(s, x)| {
                *s == side && x.src == Some(r.src) && x.table == r.table && x.priority == r.priority
            }) {
                return Err(exists_err("add rule", &r.src.to_string()));
            }
            w.rules.push((
                side,
                RuleInfo {
                    src: Some(r.src),
                    table: r.table,
                    priority: r.priority,
                    action: 1,
                },
            ));
            Ok(())
        }
        fn del_rule(&mut self, r: &RuleSpec) -> Result<()> {
            self.call("del rule", format!("{} table {}", r.src, r.table))?;
            let side = self.side;
            self.world
                .borrow_mut()
                .rules
                .retain(|(s, x)| !(*s == side && x.src == Some(r.src) && x.table == r.table));
            Ok(())
        }
        fn delete_link(&mut self, index: u32) -> Result<()> {
            self.call("delete link", index)?;
            if self.find(|l| l.index == index).is_none() {
                return Err(no_such(index));
            }
            self.world.borrow_mut().remove(index);
            Ok(())
        }
        fn delete_group(&mut self, group: u32) -> Result<()> {
            self.call("delete group", group)?;
            let gone: Vec<u32> = self
                .world
                .borrow()
                .links
                .iter()
                .filter(|(s, l)| *s == self.side && l.group == group)
                .map(|(_, l)| l.index)
                .collect();
            let mut w = self.world.borrow_mut();
            for i in gone {
                w.remove(i);
            }
            Ok(())
        }
    }

    /// `"<dst> dev <oif>"`, then ` table <t>` and ` metric <m>` when set.
    pub fn route_text(r: &RouteSpec) -> String {
        let mut t = format!("{} dev {}", r.dst, r.oif);
        if let Some(table) = r.table {
            t.push_str(&format!(" table {table}"));
        }
        if let Some(m) = r.metric {
            t.push_str(&format!(" metric {m}"));
        }
        t
    }

    impl FakeNet {
        fn tc(&self, index: u32, op: String) -> Result<()> {
            self.call("tc", format!("{op} on {index}"))?;
            let side = self.side;
            let mut w = self.world.borrow_mut();
            if !w.links.iter().any(|(s, l)| *s == side && l.index == index) {
                return Err(no_such(index));
            }
            w.tc.push((side, index, op));
            Ok(())
        }
    }

    impl TcOps for FakeNet {
        fn create_ifb_in_group(&mut self, name: &str, mtu: Option<u32>, group: u32) -> Result<()> {
            self.call("create ifb", name)?;
            if self.exists(self.side, name) {
                return Err(exists_err("create ifb", name));
            }
            let mut l = link(name, Some("ifb"), group, None);
            l.mtu = mtu.unwrap_or(1500);
            self.world.borrow_mut().add_link(self.side, l);
            Ok(())
        }
        fn add_tbf(&mut self, index: u32, _tbf: &Tbf) -> Result<()> {
            self.tc(index, "tbf".into())
        }
        fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
            self.tc(index, "ingress".into())
        }
        fn add_ingress_redirect(&mut self, index: u32, to: u32) -> Result<()> {
            self.tc(index, format!("redirect {to}"))
        }
        fn qdiscs(&mut self, index: u32) -> Result<Vec<QdiscInfo>> {
            // Opaque: CHECK's comparison of qdiscs is not modelled.
            self.call("list qdiscs", index)?;
            Ok(Vec::new())
        }
        fn ingress_filters(&mut self, index: u32) -> Result<Vec<FilterInfo>> {
            self.call("list filters", index)?;
            Ok(Vec::new())
        }
    }
}
