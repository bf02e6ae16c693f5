//! IPv4 routes in the main table: request builders and the [`Netlink`] verbs.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol,
    RouteScope as NlRouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::socket::Netlink;

/// `RT_TABLE_MAIN`.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// Scope of a route we create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RouteScope {
    /// Via a gateway, or anything not limited to the link.
    #[default]
    Universe,
    /// Directly reachable on the link (an on-link /32 without gateway, as
    /// `ip route add 10.0.0.5/32 dev veth0` would set).
    Link,
}

impl From<RouteScope> for NlRouteScope {
    fn from(scope: RouteScope) -> Self {
        match scope {
            RouteScope::Universe => Self::Universe,
            RouteScope::Link => Self::Link,
        }
    }
}

/// A route to add or delete in the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
    /// `RTNH_F_ONLINK`: trust that the gateway is on `oif` even though no
    /// address on `oif` covers it (a pod's gateway outside its /32).
    pub onlink: bool,
    pub scope: RouteScope,
    /// Preferred source (`RTA_PREFSRC`).
    pub src: Option<Ipv4Addr>,
    /// `RTA_PRIORITY` (the metric); `None` = 0. Routes to one destination
    /// with different metrics coexist (the lowest is used), so two
    /// attachments of one pod can each own a default route.
    pub metric: Option<u32>,
    /// The routing table; `None` = main. Tables above 255 travel in `RTA_TABLE`.
    pub table: Option<u32>,
}

impl RouteSpec {
    /// `dst via gateway dev oif`, scope universe.
    pub fn via(dst: Ipv4Network, gateway: Ipv4Addr, oif: u32) -> Self {
        Self {
            dst,
            gateway: Some(gateway),
            oif,
            onlink: false,
            scope: RouteScope::Universe,
            src: None,
            metric: None,
            table: None,
        }
    }

    /// `dst dev oif scope link`: directly connected, no gateway.
    pub fn on_link(dst: Ipv4Network, oif: u32) -> Self {
        Self {
            dst,
            gateway: None,
            oif,
            onlink: false,
            scope: RouteScope::Link,
            src: None,
            metric: None,
            table: None,
        }
    }
}

/// One IPv4 unicast route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    pub onlink: bool,
    /// `RTPROT_*`: 2 kernel (connected routes), 3 boot (ours, like `ip
    /// route add`), ...
    pub protocol: u8,
    /// `RTA_PRIORITY` (0 when absent).
    pub metric: u32,
}

impl RouteInfo {
    /// `None` for routes that are not IPv4 unicast routes of the main table
    /// (local/broadcast routes live in table 255; blackhole/unreachable
    /// routes have no next hop to report).
    pub fn from_message(msg: &RouteMessage) -> Option<Self> {
        let h = &msg.header;
        if h.address_family != AddressFamily::Inet || h.kind != RouteType::Unicast {
            return None;
        }
        // rtm_table is a u8; tables above 255 are only in RTA_TABLE.
        let mut table = u32::from(h.table);
        let mut dst = Ipv4Addr::UNSPECIFIED;
        let mut gateway = None;
        let mut oif = None;
        let mut metric = 0;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Table(t) => table = *t,
                RouteAttribute::Priority(p) => metric = *p,
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if table != MAIN_TABLE {
            return None;
        }
        Some(Self {
            dst: Ipv4Network::new(dst, h.destination_prefix_length).ok()?,
            gateway,
            oif,
            scope: h.scope.into(),
            onlink: h.flags.contains(RouteFlags::Onlink),
            protocol: h.protocol.into(),
            metric,
        })
    }
}

fn route_message(r: &RouteSpec) -> RouteMessage {
    let mut msg = RouteMessage::default();
    let h = &mut msg.header;
    h.address_family = AddressFamily::Inet;
    h.destination_prefix_length = r.dst.prefix();
    h.table = RouteHeader::RT_TABLE_MAIN;
    h.kind = RouteType::Unicast;
    if r.onlink {
        h.flags = RouteFlags::Onlink;
    }
    // The default route is "no RTA_DST, dst_len 0", as iproute2 sends it.
    if r.dst.prefix() > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet(
                r.dst.network(),
            )));
    }
    if let Some(gw) = r.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
    }
    msg.attributes.push(RouteAttribute::Oif(r.oif));
    if let Some(src) = r.src {
        msg.attributes
            .push(RouteAttribute::PrefSource(RouteAddress::Inet(src)));
    }
    if let Some(m) = r.metric {
        msg.attributes.push(RouteAttribute::Priority(m));
    }
    if let Some(t) = r.table {
        // iproute2's encoding: the header's u8 field only for small ids.
        msg.header.table = u8::try_from(t).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        msg.attributes.push(RouteAttribute::Table(t));
    }
    msg
}

/// `RTM_NEWROUTE` in the main table, protocol boot (what `ip route add`
/// uses), unicast, scope from the spec. Sent with `NLM_F_CREATE|NLM_F_EXCL`
/// so an existing route is `EEXIST` rather than silently replaced.
pub fn add_route_request(r: &RouteSpec) -> RouteNetlinkMessage {
    let mut msg = route_message(r);
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = r.scope.into();
    RouteNetlinkMessage::NewRoute(msg)
}

/// `RTM_DELROUTE`. `fib_table_delete()` treats scope `RT_SCOPE_NOWHERE` and
/// protocol 0 as wildcards (iproute2 sends the same), so the route is
/// matched by destination, gateway, oif and prefsrc — whatever scope or
/// protocol it was created with. `ESRCH` when nothing matches.
pub fn del_route_request(r: &RouteSpec) -> RouteNetlinkMessage {
    let mut msg = route_message(r);
    msg.header.protocol = RouteProtocol::Unspec;
    msg.header.scope = NlRouteScope::NoWhere;
    RouteNetlinkMessage::DelRoute(msg)
}

pub fn dump_routes_request() -> RouteNetlinkMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    RouteNetlinkMessage::GetRoute(msg)
}

fn describe(r: &RouteSpec) -> String {
    match r.gateway {
        Some(gw) => format!("{} via {gw} dev ifindex {}", r.dst, r.oif),
        None => format!("{} dev ifindex {}", r.dst, r.oif),
    }
}

impl Netlink {
    /// Adds a route; `EEXIST` (kept as errno) when it is already there.
    pub fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
        self.execute(
            "add route",
            &describe(r),
            add_route_request(r),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes a route; `ESRCH` (`is_not_found()`) when it is not there.
    pub fn del_route(&mut self, r: &RouteSpec) -> Result<()> {
        self.execute("delete route", &describe(r), del_route_request(r), 0)
            .map(drop)
    }

    /// IPv4 unicast routes of the main table. Filtered here: without
    /// `NETLINK_GET_STRICT_CHK` the kernel dumps every table.
    pub fn routes(&mut self) -> Result<Vec<RouteInfo>> {
        let replies = self.dump("dump routes", dump_routes_request())?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => RouteInfo::from_message(r),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn add_route_via_gateway() {
        let spec = RouteSpec {
            src: Some(ip("10.1.0.5")),
            ..RouteSpec::via(net("10.2.0.0/16"), ip("10.1.0.1"), 3)
        };
        let RouteNetlinkMessage::NewRoute(msg) = add_route_request(&spec) else {
            panic!("not RTM_NEWROUTE")
        };
        let h = &msg.header;
        assert_eq!(h.address_family, AddressFamily::Inet);
        assert_eq!(h.destination_prefix_length, 16);
        assert_eq!(h.table, 254);
        assert_eq!(h.protocol, RouteProtocol::Boot);
        assert_eq!(h.scope, NlRouteScope::Universe);
        assert_eq!(h.kind, RouteType::Unicast);
        assert_eq!(h.flags, RouteFlags::empty());
        assert_eq!(
            msg.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(ip("10.2.0.0"))),
                RouteAttribute::Gateway(RouteAddress::Inet(ip("10.1.0.1"))),
                RouteAttribute::Oif(3),
                RouteAttribute::PrefSource(RouteAddress::Inet(ip("10.1.0.5"))),
            ]
        );
    }

    #[test]
    fn default_route_onlink_has_no_dst_and_onlink_flag() {
        let spec = RouteSpec {
            onlink: true,
            ..RouteSpec::via(net("0.0.0.0/0"), ip("169.254.1.1"), 2)
        };
        let RouteNetlinkMessage::NewRoute(msg) = add_route_request(&spec) else {
            panic!()
        };
        assert_eq!(msg.header.destination_prefix_length, 0);
        assert_eq!(msg.header.flags, RouteFlags::Onlink);
        assert_eq!(
            msg.attributes,
            vec![
                RouteAttribute::Gateway(RouteAddress::Inet(ip("169.254.1.1"))),
                RouteAttribute::Oif(2),
            ]
        );
    }

    #[test]
    fn link_scope_host_route() {
        let RouteNetlinkMessage::NewRoute(msg) =
            add_route_request(&RouteSpec::on_link(net("10.3.0.7/32"), 9))
        else {
            panic!()
        };
        assert_eq!(msg.header.scope, NlRouteScope::Link);
        assert_eq!(msg.header.destination_prefix_length, 32);
        assert_eq!(
            msg.attributes,
            vec![
                RouteAttribute::Destination(RouteAddress::Inet(ip("10.3.0.7"))),
                RouteAttribute::Oif(9),
            ]
        );
    }

    #[test]
    fn delete_uses_wildcard_scope_and_protocol() {
        let RouteNetlinkMessage::DelRoute(msg) =
            del_route_request(&RouteSpec::on_link(net("10.3.0.7/32"), 9))
        else {
            panic!("not RTM_DELROUTE")
        };
        assert_eq!(msg.header.scope, NlRouteScope::NoWhere);
        assert_eq!(msg.header.protocol, RouteProtocol::Unspec);
        assert_eq!(msg.header.table, 254);
    }

    #[test]
    fn parses_main_table_unicast_only() {
        let RouteNetlinkMessage::NewRoute(mut msg) = add_route_request(&RouteSpec {
            onlink: true,
            ..RouteSpec::via(net("10.2.0.0/16"), ip("10.1.0.1"), 3)
        }) else {
            panic!()
        };
        msg.attributes.push(RouteAttribute::Table(254));
        assert_eq!(
            RouteInfo::from_message(&msg),
            Some(RouteInfo {
                dst: net("10.2.0.0/16"),
                gateway: Some(ip("10.1.0.1")),
                oif: Some(3),
                scope: 0,
                onlink: true,
                protocol: 3,
                metric: 0,
            })
        );
        let mut local = msg.clone();
        local.header.table = 255;
        local
            .attributes
            .retain(|a| !matches!(a, RouteAttribute::Table(_)));
        assert_eq!(RouteInfo::from_message(&local), None);
        let mut blackhole = msg;
        blackhole.header.kind = RouteType::BlackHole;
        assert_eq!(RouteInfo::from_message(&blackhole), None);
    }
}
