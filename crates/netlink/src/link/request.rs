//! Pure builders for every link request: no socket, no fds opened, so the
//! exact attributes (kind, parent `IFLA_LINK`, `IFLA_NET_NS_FD`, macvlan
//! mode, veth peer, vlan id) are unit-tested without root.

use std::os::fd::RawFd;

use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoVeth, InfoVlan, LinkAttribute, LinkExtentMask, LinkFlags,
    LinkInfo as NlLinkInfo, LinkMessage, VlanProtocol,
};
use netlink_packet_route::RouteNetlinkMessage;

use super::MacvlanMode;

/// `IFLA_EXT_MASK = RTEXT_FILTER_SKIP_STATS`: we never read counters, and
/// leaving out `IFLA_STATS`/`IFLA_STATS64` saves about 300 bytes per link reply.
fn skip_stats() -> LinkAttribute {
    LinkAttribute::ExtMask(vec![LinkExtentMask::SkipStats])
}

fn link_info(kind: InfoKind, data: InfoData) -> LinkAttribute {
    LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(kind), NlLinkInfo::Data(data)])
}

pub fn get_link_by_name_request(name: &str) -> RouteNetlinkMessage {
    // Index 0 + IFLA_IFNAME: rtnl_getlink() looks the name up (ENODEV if absent).
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes.push(skip_stats());
    RouteNetlinkMessage::GetLink(msg)
}

pub fn get_link_by_index_request(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(skip_stats());
    RouteNetlinkMessage::GetLink(msg)
}

pub fn dump_links_request() -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(skip_stats());
    RouteNetlinkMessage::GetLink(msg)
}

/// A macvlan on `parent_index` (an index in the *sending* socket's
/// namespace). With `target_fd` the top-level `IFLA_NET_NS_FD` makes
/// `rtnl_newlink()` create the device directly in that namespace while it
/// resolves `IFLA_LINK` in the socket's namespace — the macvlan is born in
/// the pod, never visible on the host (netavark `vlan.rs::setup`).
pub fn macvlan_request(
    name: &str,
    parent_index: u32,
    mode: MacvlanMode,
    mtu: Option<u32>,
    target_fd: Option<RawFd>,
) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes.push(LinkAttribute::Link(parent_index));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(fd) = target_fd {
        msg.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    msg.attributes.push(link_info(
        InfoKind::MacVlan,
        InfoData::MacVlan(vec![InfoMacVlan::Mode(mode.into())]),
    ));
    RouteNetlinkMessage::NewLink(msg)
}

/// [`macvlan_request`] with the device's MAC set at creation
/// (`IFLA_ADDRESS`), so the link never carries a random MAC the kernel
/// could announce or a neighbour could learn: the MAC is derived from the
/// pod's address, so a sticky pod keeps it across nodes.
pub fn macvlan_with_mac_request(
    name: &str,
    parent_index: u32,
    mode: MacvlanMode,
    mtu: Option<u32>,
    mac: [u8; 6],
    target_fd: Option<RawFd>,
) -> RouteNetlinkMessage {
    let mut req = macvlan_request(name, parent_index, mode, mtu, target_fd);
    if let RouteNetlinkMessage::NewLink(msg) = &mut req {
        // Before IFLA_LINKINFO, as iproute2 orders it; the kernel accepts any order.
        let at = msg.attributes.len() - 1;
        msg.attributes
            .insert(at, LinkAttribute::Address(mac.to_vec()));
    }
    req
}

/// A veth pair. The peer is a whole `ifinfomsg` + attributes nested in
/// `IFLA_INFO_DATA/VETH_INFO_PEER`; `veth_newlink()` resolves the peer's
/// namespace from *that* nested message's `IFLA_NET_NS_FD`, so the peer is
/// born in `peer_ns_fd` while `name` stays here. The MTU is set on both ends:
/// the peer does not inherit it (it is created from its own attributes).
pub fn veth_request(
    name: &str,
    peer_name: &str,
    peer_ns_fd: Option<RawFd>,
    mtu: Option<u32>,
) -> RouteNetlinkMessage {
    let mut peer = LinkMessage::default();
    peer.attributes
        .push(LinkAttribute::IfName(peer_name.to_owned()));
    if let Some(mtu) = mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(fd) = peer_ns_fd {
        peer.attributes.push(LinkAttribute::NetNsFd(fd));
    }

    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg.attributes.push(link_info(
        InfoKind::Veth,
        InfoData::Veth(InfoVeth::Peer(peer)),
    ));
    RouteNetlinkMessage::NewLink(msg)
}

/// An 802.1Q sub-interface (`IFLA_INFO_KIND "vlan"`, `IFLA_VLAN_ID`) on
/// `parent_index`. `IFLA_VLAN_PROTOCOL` is sent explicitly as 802.1Q
/// (0x8100, big endian on the wire): the kernel defaults to it today, but
/// naming it keeps an 802.1ad (QinQ, 0x88a8) device from ever being what we
/// asked for, and it is what reuse verifies. Needs the 8021q driver; without
/// it the kernel answers `EOPNOTSUPP` (no rtnl_link_ops for "vlan").
pub fn vlan_request(
    name: &str,
    parent_index: u32,
    vlan_id: u16,
    mtu: Option<u32>,
) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    msg.attributes.push(LinkAttribute::Link(parent_index));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg.attributes.push(link_info(
        InfoKind::Vlan,
        InfoData::Vlan(vec![
            InfoVlan::Id(vlan_id),
            InfoVlan::Protocol(VlanProtocol::Ieee8021Q),
        ]),
    ));
    RouteNetlinkMessage::NewLink(msg)
}

/// An ifb device (intermediate functional block): the target of the
/// ingress redirect, so ingress traffic can be shaped by an egress qdisc.
/// Created by a socket inside the pod netns, it is born there.
pub fn ifb_request(name: &str, mtu: Option<u32>) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
            InfoKind::Ifb,
        )]));
    RouteNetlinkMessage::NewLink(msg)
}

/// Adds `IFLA_GROUP` to a link-creation request — and to a veth's peer, which
/// `veth_newlink()` creates from its own nested attributes — so the new
/// links are born in `group`. Other messages are returned unchanged.
pub fn in_group(req: RouteNetlinkMessage, group: u32) -> RouteNetlinkMessage {
    let RouteNetlinkMessage::NewLink(mut msg) = req else {
        return req;
    };
    for attr in &mut msg.attributes {
        if let LinkAttribute::LinkInfo(infos) = attr {
            for info in infos {
                if let NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = info {
                    peer.attributes.push(LinkAttribute::Group(group));
                }
            }
        }
    }
    // Before IFLA_LINKINFO, as iproute2 orders it; the kernel accepts any order.
    let at = msg
        .attributes
        .iter()
        .position(|a| matches!(a, LinkAttribute::LinkInfo(_)))
        .unwrap_or(msg.attributes.len());
    msg.attributes.insert(at, LinkAttribute::Group(group));
    RouteNetlinkMessage::NewLink(msg)
}

/// `IFALIASZ` is 256 including the terminating NUL (`dev_set_alias()`
/// refuses `len >= IFALIASZ`).
pub const MAX_ALIAS_LEN: usize = 255;

/// Checks an alias against the kernel's limits before anything is sent.
pub fn validate_alias(alias: &str) -> crate::Result<()> {
    if alias.len() > MAX_ALIAS_LEN || alias.contains('\0') {
        return Err(crate::NetlinkError::InvalidArgument(format!(
            "link alias of {} bytes is longer than {MAX_ALIAS_LEN} or contains NUL",
            alias.len()
        )));
    }
    Ok(())
}

/// `IFF_UP` set or cleared: `flags` carries the value and `change_mask`
/// selects which flags `dev_change_flags()` may touch, so nothing else moves.
pub fn set_up_request(index: u32, up: bool) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if up {
        msg.header.flags = LinkFlags::Up;
    }
    msg.header.change_mask = LinkFlags::Up;
    RouteNetlinkMessage::SetLink(msg)
}

/// `RTM_SETLINK` by index carrying one attribute (`IFLA_IFNAME`, `IFLA_MTU`,
/// `IFLA_ADDRESS`): the index selects the device, so an `IFLA_IFNAME` here
/// renames it.
pub fn set_attribute_request(index: u32, attr: LinkAttribute) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(attr);
    RouteNetlinkMessage::SetLink(msg)
}

pub fn delete_link_request(index: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    RouteNetlinkMessage::DelLink(msg)
}

/// `RTM_DELLINK` with no index and `IFLA_GROUP`: the kernel deletes every
/// link of that group in the socket's namespace.
pub fn delete_group_request(group: u32) -> RouteNetlinkMessage {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::Group(group));
    RouteNetlinkMessage::DelLink(msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::MacVlanMode;

    fn new_link(msg: RouteNetlinkMessage) -> LinkMessage {
        match msg {
            RouteNetlinkMessage::NewLink(m) => m,
            other => panic!("expected RTM_NEWLINK, got {other:?}"),
        }
    }

    fn set_link(msg: RouteNetlinkMessage) -> LinkMessage {
        match msg {
            RouteNetlinkMessage::SetLink(m) => m,
            other => panic!("expected RTM_SETLINK, got {other:?}"),
        }
    }

    #[test]
    fn macvlan_in_target_netns() {
        let msg = new_link(macvlan_request(
            "eth0",
            7,
            MacvlanMode::Bridge,
            Some(1450),
            Some(33),
        ));
        assert_eq!(msg.header.index, 0);
        assert_eq!(
            msg.attributes,
            vec![
                LinkAttribute::IfName("eth0".into()),
                LinkAttribute::Link(7),
                LinkAttribute::Mtu(1450),
                // Top level: the new device's namespace, not the parent's.
                LinkAttribute::NetNsFd(33),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::MacVlan),
                    NlLinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                        MacVlanMode::Bridge
                    )])),
                ]),
            ]
        );
    }

    #[test]
    fn macvlan_with_mac_carries_ifla_address() {
        let mac = [0x0a, 0x58, 10, 10, 0, 70];
        let msg = new_link(macvlan_with_mac_request(
            "eth0",
            7,
            MacvlanMode::Bridge,
            None,
            mac,
            Some(33),
        ));
        assert_eq!(
            msg.attributes,
            vec![
                LinkAttribute::IfName("eth0".into()),
                LinkAttribute::Link(7),
                LinkAttribute::NetNsFd(33),
                LinkAttribute::Address(mac.to_vec()),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::MacVlan),
                    NlLinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(
                        MacVlanMode::Bridge
                    )])),
                ]),
            ]
        );
    }

    #[test]
    fn macvlan_here_has_no_netns_fd_and_maps_modes() {
        for (mode, kernel) in [
            (MacvlanMode::Private, MacVlanMode::Private),
            (MacvlanMode::Vepa, MacVlanMode::Vepa),
            (MacvlanMode::Bridge, MacVlanMode::Bridge),
            (MacvlanMode::Passthru, MacVlanMode::Passthrough),
            (MacvlanMode::Source, MacVlanMode::Source),
        ] {
            let msg = new_link(macvlan_request("mv", 2, mode, None, None));
            assert!(!msg
                .attributes
                .iter()
                .any(|a| matches!(a, LinkAttribute::NetNsFd(_) | LinkAttribute::Mtu(_))));
            assert!(msg.attributes.contains(&LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::MacVlan),
                NlLinkInfo::Data(InfoData::MacVlan(vec![InfoMacVlan::Mode(kernel)])),
            ])));
            assert_eq!(MacvlanMode::from_kernel(kernel), Some(mode));
        }
    }

    #[test]
    fn veth_peer_carries_its_own_netns_fd() {
        let msg = new_link(veth_request("host0", "pod0", Some(41), Some(9000)));
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName("pod0".into()),
            LinkAttribute::Mtu(9000),
            LinkAttribute::NetNsFd(41),
        ];
        assert_eq!(
            msg.attributes,
            vec![
                LinkAttribute::IfName("host0".into()),
                LinkAttribute::Mtu(9000),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::Veth),
                    NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
                ]),
            ]
        );
        // The host end itself is not moved.
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::NetNsFd(_))));
    }

    #[test]
    fn veth_without_peer_ns() {
        let msg = new_link(veth_request("a", "b", None, None));
        let mut peer = LinkMessage::default();
        peer.attributes = vec![LinkAttribute::IfName("b".into())];
        assert_eq!(
            msg.attributes,
            vec![
                LinkAttribute::IfName("a".into()),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::Veth),
                    NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
                ]),
            ]
        );
    }

    #[test]
    fn requests_survive_the_wire_format() {
        // Emit and re-parse: the nested veth peer (a whole ifinfomsg inside
        // IFLA_INFO_DATA) and the macvlan data must round-trip byte-exactly.
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
        for req in [
            veth_request("host0", "pod0", Some(41), Some(9000)),
            macvlan_request("eth0", 7, MacvlanMode::Private, None, Some(33)),
            vlan_request("v", 2, 4094, Some(1500)),
        ] {
            let bytes = crate::socket::serialize(req.clone(), 0x405, 1);
            let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
            assert_eq!(parsed.payload, NetlinkPayload::InnerMessage(req));
        }
    }

    #[test]
    fn in_group_tags_the_link_and_a_veth_peer() {
        let msg = new_link(in_group(veth_request("h", "p", Some(5), None), 0x8000_0007));
        assert_eq!(msg.attributes[1], LinkAttribute::Group(0x8000_0007));
        let LinkAttribute::LinkInfo(infos) = &msg.attributes[2] else {
            panic!("{:?}", msg.attributes)
        };
        let NlLinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))) = &infos[1] else {
            panic!("{infos:?}")
        };
        assert!(peer.attributes.contains(&LinkAttribute::Group(0x8000_0007)));
        let mv = new_link(in_group(
            macvlan_with_mac_request("eth0", 2, MacvlanMode::Bridge, None, [2; 6], Some(3)),
            9,
        ));
        let n = mv.attributes.len();
        assert_eq!(mv.attributes[n - 2], LinkAttribute::Group(9));
        // Wire round trip (the peer nests a whole ifinfomsg).
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
        let req = in_group(veth_request("h", "p", Some(5), Some(1400)), 3);
        let bytes = crate::socket::serialize(req.clone(), 0x405, 1);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(parsed.payload, NetlinkPayload::InnerMessage(req));
        // Not a creation: unchanged.
        let del = delete_link_request(4);
        assert_eq!(in_group(del.clone(), 1), del);
    }

    #[test]
    fn alias_limits() {
        validate_alias(&"a".repeat(255)).unwrap();
        assert!(validate_alias(&"a".repeat(256)).is_err());
        assert!(validate_alias("a\0b").is_err());
    }

    #[test]
    fn ifb_request_attributes() {
        let msg = new_link(ifb_request("rlifb-eth0", Some(1500)));
        assert_eq!(
            msg.attributes,
            vec![
                LinkAttribute::IfName("rlifb-eth0".into()),
                LinkAttribute::Mtu(1500),
                LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(InfoKind::Ifb)]),
            ]
        );
    }

    #[test]
    fn vlan_request_attributes() {
        let msg = new_link(vlan_request("eth0.100", 3, 100, None));
        assert_eq!(msg.header.index, 0);
        assert_eq!(
            msg.attributes,
            vec![
                LinkAttribute::IfName("eth0.100".into()),
                // The parent, resolved in the sending socket's namespace.
                LinkAttribute::Link(3),
                LinkAttribute::LinkInfo(vec![
                    NlLinkInfo::Kind(InfoKind::Vlan),
                    NlLinkInfo::Data(InfoData::Vlan(vec![
                        InfoVlan::Id(100),
                        InfoVlan::Protocol(VlanProtocol::Ieee8021Q),
                    ])),
                ]),
            ]
        );
        // No namespace move: the VLAN device lives on the node, next to its parent.
        assert!(!msg
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::NetNsFd(_))));
        let with_mtu = new_link(vlan_request("eth0.7", 3, 7, Some(9000)));
        assert_eq!(with_mtu.attributes[2], LinkAttribute::Mtu(9000));
    }

    /// Finds the payload of the first NLA of type `kind` in a run of NLAs.
    fn find_nla(mut buf: &[u8], kind: u16) -> Option<&[u8]> {
        while buf.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
            let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
            if len < 4 || len > buf.len() {
                return None;
            }
            if ty == kind {
                return Some(&buf[4..len]);
            }
            buf = &buf[(len + 3) & !3..];
        }
        None
    }

    #[test]
    fn vlan_request_exact_bytes() {
        // The bytes the kernel's vlan_newlink() parses: IFLA_LINK (5) = parent,
        // IFLA_LINKINFO (18) { IFLA_INFO_KIND (1) = "vlan\0", IFLA_INFO_DATA (2)
        // { IFLA_VLAN_ID (1) = u16 host order, IFLA_VLAN_PROTOCOL (5) = __be16 0x8100 } }.
        let bytes = crate::socket::serialize(vlan_request("eth0.100", 3, 100, None), 0x405, 1);
        // nlmsghdr (16) + ifinfomsg (16), then the attributes.
        assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), 16, "RTM_NEWLINK");
        let attrs = &bytes[32..];
        assert_eq!(find_nla(attrs, 3).unwrap(), b"eth0.100\0");
        assert_eq!(find_nla(attrs, 5).unwrap(), 3u32.to_ne_bytes());
        let linkinfo = find_nla(attrs, 18).expect("IFLA_LINKINFO");
        assert_eq!(find_nla(linkinfo, 1).unwrap(), b"vlan\0");
        let data = find_nla(linkinfo, 2).expect("IFLA_INFO_DATA");
        assert_eq!(find_nla(data, 1).unwrap(), 100u16.to_ne_bytes());
        assert_eq!(find_nla(data, 5).unwrap(), [0x81, 0x00]);
    }

    #[test]
    fn up_down_touch_only_iff_up() {
        let up = set_link(set_up_request(5, true));
        assert_eq!(
            (up.header.index, up.header.flags, up.header.change_mask),
            (5, LinkFlags::Up, LinkFlags::Up)
        );
        assert!(up.attributes.is_empty());
        let down = set_link(set_up_request(5, false));
        assert_eq!(
            (down.header.flags, down.header.change_mask),
            (LinkFlags::empty(), LinkFlags::Up)
        );
    }

    #[test]
    fn delete_by_group_has_no_index_and_only_the_group() {
        match delete_group_request(0x8000_0001) {
            RouteNetlinkMessage::DelLink(m) => {
                assert_eq!(m.header.index, 0);
                assert_eq!(m.attributes, vec![LinkAttribute::Group(0x8000_0001)]);
            }
            other => panic!("{other:?}"),
        }
        let m = set_link(set_attribute_request(4, LinkAttribute::Group(7)));
        assert_eq!(m.attributes, vec![LinkAttribute::Group(7)]);
    }

    #[test]
    fn set_and_delete_by_index() {
        let m = set_link(set_attribute_request(
            9,
            LinkAttribute::IfName("eth0".into()),
        ));
        assert_eq!(m.header.index, 9);
        assert_eq!(m.attributes, vec![LinkAttribute::IfName("eth0".into())]);
        match delete_link_request(9) {
            RouteNetlinkMessage::DelLink(m) => {
                assert_eq!(m.header.index, 9);
                assert!(m.attributes.is_empty());
            }
            other => panic!("{other:?}"),
        }
        match get_link_by_name_request("lo") {
            RouteNetlinkMessage::GetLink(m) => {
                assert_eq!(m.header.index, 0);
                assert_eq!(m.attributes[0], LinkAttribute::IfName("lo".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}
