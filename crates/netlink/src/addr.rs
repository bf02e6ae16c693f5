//! IPv4 addresses: request builders and the [`Netlink`] verbs.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::socket::Netlink;

/// One IPv4 address as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrInfo {
    pub index: u32,
    /// The local address with its prefix length.
    pub addr: Ipv4Network,
    /// `RT_SCOPE_*` (0 universe, 253 link, 254 host).
    pub scope: u8,
}

impl AddrInfo {
    /// `None` for non-IPv4 messages.
    pub fn from_message(msg: &AddressMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer
        // on point-to-point links and equals IFA_LOCAL elsewhere. Prefer the
        // local one, fall back for messages that only carry IFA_ADDRESS.
        let mut local = None;
        let mut address = None;
        for attr in &msg.attributes {
            match attr {
                AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                _ => {}
            }
        }
        let ip = local.or(address)?;
        Some(Self {
            index: msg.header.index,
            addr: Ipv4Network::new(ip, msg.header.prefix_len).ok()?,
            scope: msg.header.scope.into(),
        })
    }
}

fn addr_message(index: u32, addr: Ipv4Network) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix();
    msg.header.scope = AddressScope::Universe;
    msg.header.index = index;
    // IFA_LOCAL is what `inet_rtm_newaddr()` assigns; IFA_ADDRESS equal to it
    // marks the address as not point-to-point (what `ip addr add` sends).
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr.ip())));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr.ip())));
    msg
}

/// `RTM_NEWADDR`: IFA_LOCAL + IFA_ADDRESS, scope universe, and IFA_BROADCAST
/// for prefixes up to /30. The kernel does not derive a broadcast address
/// itself (`ip addr add ... brd +` computes it in userspace); /31 (RFC 3021)
/// and /32 have none.
pub fn add_addr_request(index: u32, addr: Ipv4Network) -> RouteNetlinkMessage {
    let mut msg = addr_message(index, addr);
    if addr.prefix() < 31 {
        msg.attributes
            .push(AddressAttribute::Broadcast(addr.broadcast()));
    }
    RouteNetlinkMessage::NewAddress(msg)
}

/// `RTM_DELADDR`: `inet_rtm_deladdr()` matches IFA_LOCAL, the prefix length
/// and IFA_ADDRESS on that interface (`EADDRNOTAVAIL` when none matches).
pub fn del_addr_request(index: u32, addr: Ipv4Network) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelAddress(addr_message(index, addr))
}

pub fn dump_addrs_request() -> RouteNetlinkMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    RouteNetlinkMessage::GetAddress(msg)
}

impl Netlink {
    /// Adds an IPv4 address (`EEXIST` if that address/prefix is already on
    /// the link).
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()> {
        let target = format!("{addr} on ifindex {index}");
        self.execute(
            "add address",
            &target,
            add_addr_request(index, addr),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Removes an IPv4 address (`EADDRNOTAVAIL`, i.e. `is_not_found()`, when
    /// it is not there).
    pub fn del_addr(&mut self, index: u32, addr: Ipv4Network) -> Result<()> {
        let target = format!("{addr} on ifindex {index}");
        self.execute("delete address", &target, del_addr_request(index, addr), 0)
            .map(drop)
    }

    /// IPv4 addresses in this namespace, optionally only those of one link.
    /// Filtered here: the kernel ignores `ifa_index` in a dump request unless
    /// the socket enabled `NETLINK_GET_STRICT_CHK`.
    pub fn addrs(&mut self, index: Option<u32>) -> Result<Vec<AddrInfo>> {
        let replies = self.dump("dump addresses", dump_addrs_request())?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => AddrInfo::from_message(a),
                _ => None,
            })
            .filter(|a| index.is_none_or(|i| a.index == i))
            .collect())
    }
}

/// The all-ones host address of `net`, for callers that want it explicitly.
pub fn broadcast_of(net: Ipv4Network) -> Option<Ipv4Addr> {
    (net.prefix() < 31).then(|| net.broadcast())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn add_addr_has_local_address_broadcast_universe() {
        let RouteNetlinkMessage::NewAddress(msg) = add_addr_request(4, net("10.1.2.3/24")) else {
            panic!("not RTM_NEWADDR")
        };
        assert_eq!(msg.header.family, AddressFamily::Inet);
        assert_eq!(msg.header.prefix_len, 24);
        assert_eq!(msg.header.index, 4);
        assert_eq!(msg.header.scope, AddressScope::Universe);
        let ip: Ipv4Addr = "10.1.2.3".parse().unwrap();
        assert_eq!(
            msg.attributes,
            vec![
                AddressAttribute::Local(ip.into()),
                AddressAttribute::Address(ip.into()),
                AddressAttribute::Broadcast("10.1.2.255".parse().unwrap()),
            ]
        );
    }

    #[test]
    fn host_and_p2p_prefixes_have_no_broadcast() {
        for p in ["10.1.2.3/32", "10.1.2.2/31"] {
            let RouteNetlinkMessage::NewAddress(msg) = add_addr_request(1, net(p)) else {
                panic!()
            };
            assert_eq!(msg.attributes.len(), 2, "{p}");
            assert!(!msg
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Broadcast(_))));
        }
        assert_eq!(
            broadcast_of(net("10.0.0.1/30")),
            Some("10.0.0.3".parse().unwrap())
        );
        assert_eq!(broadcast_of(net("10.0.0.1/31")), None);
    }

    #[test]
    fn del_addr_matches_local_and_prefix() {
        let RouteNetlinkMessage::DelAddress(msg) = del_addr_request(4, net("10.1.2.3/24")) else {
            panic!("not RTM_DELADDR")
        };
        assert_eq!((msg.header.prefix_len, msg.header.index), (24, 4));
        assert_eq!(msg.attributes.len(), 2);
    }

    #[test]
    fn parses_reply_preferring_local() {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.prefix_len = 32;
        msg.header.index = 2;
        msg.header.scope = AddressScope::Host;
        msg.attributes = vec![
            AddressAttribute::Address("10.0.0.9".parse::<Ipv4Addr>().unwrap().into()),
            AddressAttribute::Local("10.0.0.1".parse::<Ipv4Addr>().unwrap().into()),
        ];
        assert_eq!(
            AddrInfo::from_message(&msg),
            Some(AddrInfo {
                index: 2,
                addr: net("10.0.0.1/32"),
                scope: 254
            })
        );
        msg.header.family = AddressFamily::Inet6;
        assert_eq!(AddrInfo::from_message(&msg), None);
    }
}
