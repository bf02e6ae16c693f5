//! Links: typed view of `RTM_NEWLINK` replies and the [`Netlink`] verbs on
//! them. The pure request builders live in `link/request.rs` (re-exported here).

mod request;

use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    InfoData, InfoMacVlan, InfoVlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
    MacVlanMode,
};
use netlink_packet_route::RouteNetlinkMessage;
use nix::errno::Errno;

pub use self::request::*;

use crate::error::{NetlinkError, Result};
use crate::netns::Netns;
use crate::socket::Netlink;
use crate::validate_ifname;

/// macvlan modes (`MACVLAN_MODE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacvlanMode {
    Private,
    Vepa,
    Bridge,
    Passthru,
    Source,
}

impl From<MacvlanMode> for MacVlanMode {
    fn from(mode: MacvlanMode) -> Self {
        match mode {
            MacvlanMode::Private => Self::Private,
            MacvlanMode::Vepa => Self::Vepa,
            MacvlanMode::Bridge => Self::Bridge,
            MacvlanMode::Passthru => Self::Passthrough,
            MacvlanMode::Source => Self::Source,
        }
    }
}

impl MacvlanMode {
    fn from_kernel(mode: MacVlanMode) -> Option<Self> {
        Some(match mode {
            MacVlanMode::Private => Self::Private,
            MacVlanMode::Vepa => Self::Vepa,
            MacVlanMode::Bridge => Self::Bridge,
            MacVlanMode::Passthrough => Self::Passthru,
            MacVlanMode::Source => Self::Source,
            _ => return None,
        })
    }
}

/// One link as the kernel reports it in the socket's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    /// `IFLA_INFO_KIND`: "veth", "macvlan", "bridge", "vlan", ...; `None`
    /// for devices without rtnl_link_ops (physical NICs, `lo`).
    pub kind: Option<String>,
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    /// Administrative `IFF_UP`, not carrier.
    pub up: bool,
    /// `IFLA_LINK`: macvlan/vlan parent, veth peer. The kernel only sends it
    /// when it differs from `index`. If the parent lives in another
    /// namespace (a macvlan in a pod) this index is in *that* namespace.
    pub parent_index: Option<u32>,
    pub vlan_id: Option<u16>,
    /// `IFLA_VLAN_PROTOCOL` in host order: 0x8100 (802.1Q) or 0x88a8 (802.1ad).
    pub vlan_protocol: Option<u16>,
    pub macvlan_mode: Option<MacvlanMode>,
    /// `IFLA_GROUP` (0 = the default group).
    pub group: u32,
    /// `IFLA_IFALIAS` (`ip link set … alias`); `None` when unset or empty.
    pub alias: Option<String>,
}

impl LinkInfo {
    /// Builds the typed view from an `RTM_NEWLINK` message; `None` when the
    /// message has no name (never for real links).
    pub fn from_message(msg: &LinkMessage) -> Option<Self> {
        let mut info = LinkInfo {
            index: msg.header.index,
            name: String::new(),
            kind: None,
            mtu: 0,
            mac: None,
            up: msg.header.flags.contains(LinkFlags::Up),
            parent_index: None,
            vlan_id: None,
            vlan_protocol: None,
            macvlan_mode: None,
            group: 0,
            alias: None,
        };
        let mut named = false;
        for attr in &msg.attributes {
            match attr {
                LinkAttribute::IfName(name) => {
                    info.name = name.clone();
                    named = true;
                }
                LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
                LinkAttribute::Address(mac) => info.mac = <[u8; 6]>::try_from(mac.as_slice()).ok(),
                LinkAttribute::Link(parent) => info.parent_index = Some(*parent),
                LinkAttribute::Group(g) => info.group = *g,
                LinkAttribute::IfAlias(a) if !a.is_empty() => info.alias = Some(a.clone()),
                LinkAttribute::LinkInfo(infos) => parse_link_info(infos, &mut info),
                _ => {}
            }
        }
        named.then_some(info)
    }
}

fn parse_link_info(infos: &[NlLinkInfo], info: &mut LinkInfo) {
    for item in infos {
        match item {
            NlLinkInfo::Kind(kind) => info.kind = Some(kind.to_string()),
            NlLinkInfo::Data(InfoData::Vlan(attrs)) => {
                for a in attrs {
                    match a {
                        InfoVlan::Id(id) => info.vlan_id = Some(*id),
                        InfoVlan::Protocol(p) => info.vlan_protocol = Some(u16::from(*p)),
                        _ => {}
                    }
                }
            }
            NlLinkInfo::Data(InfoData::MacVlan(attrs)) => {
                info.macvlan_mode = attrs.iter().find_map(|a| match a {
                    InfoMacVlan::Mode(mode) => MacvlanMode::from_kernel(*mode),
                    _ => None,
                });
            }
            _ => {}
        }
    }
}

// ---- verbs -----------------------------------------------------------------

fn ifindex(index: u32) -> String {
    format!("ifindex {index}")
}

fn link_replies(replies: Vec<RouteNetlinkMessage>) -> Vec<LinkInfo> {
    replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(link) => LinkInfo::from_message(link),
            _ => None,
        })
        .collect()
}

impl Netlink {
    /// `None` when no link has that name in this namespace.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<LinkInfo>> {
        validate_ifname(name)?;
        self.get_one_link("get link", name, get_link_by_name_request(name))
    }

    /// `None` when no link has that index in this namespace.
    pub fn link_by_index(&mut self, index: u32) -> Result<Option<LinkInfo>> {
        self.get_one_link(
            "get link",
            &ifindex(index),
            get_link_by_index_request(index),
        )
    }

    fn get_one_link(
        &mut self,
        op: &'static str,
        target: &str,
        req: RouteNetlinkMessage,
    ) -> Result<Option<LinkInfo>> {
        match self.execute(op, target, req, 0) {
            Ok(replies) => Ok(link_replies(replies).into_iter().next()),
            Err(e) if e.errno() == Some(Errno::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn links(&mut self) -> Result<Vec<LinkInfo>> {
        Ok(link_replies(self.dump("dump links", dump_links_request())?))
    }

    /// A macvlan whose parent is `parent_index` in THIS socket's namespace,
    /// created directly inside `target` when `Some` (`IFLA_NET_NS_FD`), else
    /// here. The new link is down; on `EEXIST` the name is taken in the
    /// namespace the link would be born in.
    pub fn create_macvlan(
        &mut self,
        name: &str,
        parent_index: u32,
        mode: MacvlanMode,
        mtu: Option<u32>,
        target: Option<&Netns>,
    ) -> Result<()> {
        validate_ifname(name)?;
        // The fd must stay open until the kernel has processed the request:
        // `target` is borrowed for the whole call.
        let req = macvlan_request(
            name,
            parent_index,
            mode,
            mtu,
            target.map(|ns| ns.as_fd().as_raw_fd()),
        );
        self.execute("create macvlan", name, req, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// [`Netlink::create_macvlan`] with the MAC given at creation.
    pub fn create_macvlan_with_mac(
        &mut self,
        name: &str,
        parent_index: u32,
        mode: MacvlanMode,
        mtu: Option<u32>,
        mac: [u8; 6],
        target: Option<&Netns>,
    ) -> Result<()> {
        validate_ifname(name)?;
        let req = macvlan_with_mac_request(
            name,
            parent_index,
            mode,
            mtu,
            mac,
            target.map(|ns| ns.as_fd().as_raw_fd()),
        );
        self.execute("create macvlan", name, req, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// A veth pair: `name` here, `peer_name` created directly in `peer_ns`
    /// when `Some`. Both ends start down.
    pub fn create_veth(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&Netns>,
        mtu: Option<u32>,
    ) -> Result<()> {
        validate_ifname(name)?;
        validate_ifname(peer_name)?;
        let req = veth_request(
            name,
            peer_name,
            peer_ns.map(|ns| ns.as_fd().as_raw_fd()),
            mtu,
        );
        self.execute("create veth", name, req, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// A VLAN sub-interface on `parent_index` (ids 1..=4094).
    pub fn create_vlan(
        &mut self,
        name: &str,
        parent_index: u32,
        vlan_id: u16,
        mtu: Option<u32>,
    ) -> Result<()> {
        validate_ifname(name)?;
        if !(1..=4094).contains(&vlan_id) {
            return Err(NetlinkError::InvalidArgument(format!(
                "vlan id {vlan_id} outside 1..=4094"
            )));
        }
        let req = vlan_request(name, parent_index, vlan_id, mtu);
        self.execute("create vlan", name, req, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// An ifb device in this socket's namespace (down).
    pub fn create_ifb(&mut self, name: &str, mtu: Option<u32>) -> Result<()> {
        validate_ifname(name)?;
        self.execute(
            "create ifb",
            name,
            ifb_request(name, mtu),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.execute(
            "set link up",
            &ifindex(index),
            set_up_request(index, true),
            0,
        )
        .map(drop)
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.execute(
            "set link down",
            &ifindex(index),
            set_up_request(index, false),
            0,
        )
        .map(drop)
    }

    /// Renames a link (`EEXIST` if the name is taken). Rename before
    /// `set_up` — e.g. a link born under a temporary name after a clash:
    /// kernels before 6.2 refuse to rename a running device (`EBUSY` from
    /// `dev_change_name()` while `IFF_UP`).
    pub fn rename(&mut self, index: u32, new_name: &str) -> Result<()> {
        validate_ifname(new_name)?;
        let req = set_attribute_request(index, LinkAttribute::IfName(new_name.to_owned()));
        self.execute(
            "rename link",
            &format!("ifindex {index} to {new_name}"),
            req,
            0,
        )
        .map(drop)
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        let req = set_attribute_request(index, LinkAttribute::Mtu(mtu));
        self.execute("set mtu", &format!("ifindex {index} to {mtu}"), req, 0)
            .map(drop)
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        let req = set_attribute_request(index, LinkAttribute::Address(mac.to_vec()));
        self.execute("set mac", &ifindex(index), req, 0).map(drop)
    }

    /// [`Netlink::create_macvlan_with_mac`] born in device group `group`
    /// (`IFLA_GROUP` is applied by `rtnl_create_link()`, so the link never
    /// exists outside the group).
    #[allow(clippy::too_many_arguments)]
    pub fn create_macvlan_in_group(
        &mut self,
        name: &str,
        parent_index: u32,
        mode: MacvlanMode,
        mtu: Option<u32>,
        mac: [u8; 6],
        target: Option<&Netns>,
        group: u32,
    ) -> Result<()> {
        validate_ifname(name)?;
        let req = in_group(
            macvlan_with_mac_request(
                name,
                parent_index,
                mode,
                mtu,
                mac,
                target.map(|ns| ns.as_fd().as_raw_fd()),
            ),
            group,
        );
        self.execute("create macvlan", name, req, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// [`Netlink::create_veth`] with both ends born in device group `group`.
    pub fn create_veth_in_group(
        &mut self,
        name: &str,
        peer_name: &str,
        peer_ns: Option<&Netns>,
        mtu: Option<u32>,
        group: u32,
    ) -> Result<()> {
        validate_ifname(name)?;
        validate_ifname(peer_name)?;
        let req = in_group(
            veth_request(
                name,
                peer_name,
                peer_ns.map(|ns| ns.as_fd().as_raw_fd()),
                mtu,
            ),
            group,
        );
        self.execute("create veth", name, req, NLM_F_CREATE | NLM_F_EXCL)
            .map(drop)
    }

    /// [`Netlink::create_ifb`] born in device group `group`.
    pub fn create_ifb_in_group(&mut self, name: &str, mtu: Option<u32>, group: u32) -> Result<()> {
        validate_ifname(name)?;
        self.execute(
            "create ifb",
            name,
            in_group(ifb_request(name, mtu), group),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Sets the link's alias (`IFLA_IFALIAS`, at most 255 bytes). The kernel
    /// ignores an alias in `RTM_NEWLINK`, so it is always a separate request.
    pub fn set_alias(&mut self, index: u32, alias: &str) -> Result<()> {
        validate_alias(alias)?;
        let req = set_attribute_request(index, LinkAttribute::IfAlias(alias.to_owned()));
        self.execute("set alias", &ifindex(index), req, 0).map(drop)
    }

    /// Puts a link into device group `group` (`IFLA_GROUP`).
    pub fn set_group(&mut self, index: u32, group: u32) -> Result<()> {
        let req = set_attribute_request(index, LinkAttribute::Group(group));
        self.execute("set group", &ifindex(index), req, 0).map(drop)
    }

    /// Deletes every link of device group `group` in this namespace in ONE
    /// kernel batch (`rtnl_group_dellink` -> one `unregister_netdevice_many`),
    /// so the whole set (veth peers in other namespaces included) costs a
    /// single RCU grace period instead of one per link (~20 ms each).
    /// Group 0 (every unconfigured link) is refused.
    pub fn delete_group(&mut self, group: u32) -> Result<()> {
        if group == 0 {
            return Err(crate::NetlinkError::InvalidArgument(
                "refusing to delete device group 0 (the default group of every link)".into(),
            ));
        }
        self.execute(
            "delete group",
            &format!("group {group}"),
            delete_group_request(group),
            0,
        )
        .map(drop)
    }

    /// Deletes a link (a veth takes its peer with it). `ENODEV` when absent:
    /// DEL paths check `is_not_found()`.
    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        self.execute(
            "delete link",
            &ifindex(index),
            delete_link_request(index),
            0,
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::link::InfoKind;

    #[test]
    fn parses_macvlan_reply() {
        let mut msg = LinkMessage::default();
        msg.header.index = 12;
        msg.header.flags = LinkFlags::Up | LinkFlags::Broadcast;
        msg.attributes = vec![
            LinkAttribute::IfName("eth0".into()),
            LinkAttribute::Mtu(1500),
            LinkAttribute::Address(vec![2, 0, 0, 0, 0, 1]),
            LinkAttribute::Link(4),
            LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::MacVlan),
                NlLinkInfo::Data(InfoData::MacVlan(vec![
                    InfoMacVlan::Mode(MacVlanMode::Bridge),
                    InfoMacVlan::BcQueueLen(1000),
                ])),
            ]),
        ];
        assert_eq!(
            LinkInfo::from_message(&msg).unwrap(),
            LinkInfo {
                index: 12,
                name: "eth0".into(),
                kind: Some("macvlan".into()),
                mtu: 1500,
                mac: Some([2, 0, 0, 0, 0, 1]),
                up: true,
                parent_index: Some(4),
                vlan_id: None,
                vlan_protocol: None,
                macvlan_mode: Some(MacvlanMode::Bridge),
                group: 0,
                alias: None,
            }
        );
    }

    #[test]
    fn parses_vlan_reply_and_rejects_nameless() {
        let mut msg = LinkMessage::default();
        msg.header.index = 3;
        msg.attributes = vec![
            LinkAttribute::IfName("eth0.7".into()),
            LinkAttribute::LinkInfo(vec![
                NlLinkInfo::Kind(InfoKind::Vlan),
                NlLinkInfo::Data(InfoData::Vlan(vec![
                    InfoVlan::Id(7),
                    InfoVlan::Protocol(netlink_packet_route::link::VlanProtocol::Ieee8021Ad),
                ])),
            ]),
        ];
        let info = LinkInfo::from_message(&msg).unwrap();
        assert_eq!(
            (
                info.kind.as_deref(),
                info.vlan_id,
                info.vlan_protocol,
                info.up
            ),
            (Some("vlan"), Some(7), Some(0x88a8), false)
        );
        assert!(LinkInfo::from_message(&LinkMessage::default()).is_none());
    }
}
