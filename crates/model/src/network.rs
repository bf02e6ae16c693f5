//! Network definitions as stored in etcd and validated by netmaster.
//!
//! IPv4 only for now: the TOR-gateway underlays Rackline targets hand pods
//! IPv4 addresses; dual-stack is a later extension of `subnet`.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::IntervalSet;

/// Linux IFNAMSIZ minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("invalid network name {0:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
    Name(String),
    #[error("invalid subnet {0:?}: {1}")]
    Subnet(String, String),
    #[error("gateway {gateway} is outside subnet {subnet}")]
    GatewayOutside {
        gateway: Ipv4Addr,
        subnet: Ipv4Network,
    },
    #[error("gateway {0} is the subnet's network or broadcast address")]
    GatewayReserved(Ipv4Addr),
    #[error("invalid interface name {0:?}: 1-15 characters, no '/', ':' or whitespace")]
    IfName(String),
    #[error("VLAN id {0} is outside 1-4094")]
    Vlan(u32),
    #[error("MTU {0} is outside 68-65535")]
    Mtu(u32),
    #[error("invalid address range {0:?}: {1}")]
    Range(String, String),
    #[error("excluded range {range} is outside subnet {subnet}")]
    ExcludeOutside {
        range: AddrRange,
        subnet: Ipv4Network,
    },
    #[error("route {0}: {1}")]
    Route(String, String),
    #[error("invalid CIDR {0:?}: {1}")]
    Cidr(String, String),
    #[error(
        "subnet {subnet} of network {name:?} overlaps subnet {other_subnet} of network {other:?}"
    )]
    Overlap {
        name: String,
        subnet: Ipv4Network,
        other: String,
        other_subnet: Ipv4Network,
    },
    #[error("network {0:?} has no allocatable address left after exclusions")]
    Empty(String),
    #[error("invalid rack name {0:?}: use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit")]
    RackName(String),
    #[error("rack {rack:?} on network {network:?}: {why}")]
    RackNet {
        rack: String,
        network: String,
        why: String,
    },
    #[error("block size {0} must be a power of two between 4 and 256")]
    BlockSize(u32),
    #[error("sticky policy: {0}")]
    Sticky(String),
    #[error("invalid node name {0:?}: use 1-253 lowercase letters, digits, '-' and '.', starting and ending with a letter or digit")]
    NodeName(String),
    #[error("qos: {0}")]
    Qos(#[from] crate::qos::QosError),
    #[error("{0}")]
    Acl(#[from] crate::acl::AclError),
    #[error("duplicate-address probe: {0}")]
    Probe(String),
}

/// An inclusive range of IPv4 addresses. Written as `a.b.c.d`, `a.b.c.d/len`
/// or `a.b.c.d-e.f.g.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl FromStr for AddrRange {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ValidationError::Range(s.to_string(), why.to_string());
        let t = s.trim();
        if let Some((a, b)) = t.split_once('-') {
            let first: Ipv4Addr = a.trim().parse().map_err(|_| bad("bad first address"))?;
            let last: Ipv4Addr = b.trim().parse().map_err(|_| bad("bad last address"))?;
            if u32::from(first) > u32::from(last) {
                return Err(bad("first address is after last"));
            }
            Ok(Self { first, last })
        } else if t.contains('/') {
            let n: Ipv4Network = t.parse().map_err(|e| bad(&format!("{e}")))?;
            if n.network() != n.ip() {
                return Err(bad("host bits set; write the network address"));
            }
            Ok(Self {
                first: n.network(),
                last: n.broadcast(),
            })
        } else {
            let a: Ipv4Addr = t.parse().map_err(|_| bad("not an IPv4 address"))?;
            Ok(Self { first: a, last: a })
        }
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl Serialize for AddrRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AddrRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A route the pod takes through its macvlan (towards the underlay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    pub dst: Ipv4Network,
    /// Next hop; `None` means via the network's gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<Ipv4Addr>,
}

/// A Rackline network. Stored JSON tolerates unknown fields so an older
/// ipamd keeps reading records a newer netmaster wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    pub name: String,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// The node uplink the macvlans hang off (overridable per node in the
    /// CNI config, since uplink names differ between machine types).
    pub master: String,
    /// 0 = inherit the master's MTU.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<AddrRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    /// CIDRs the pod reaches through its node's veth (e.g. the service CIDR).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_routes: Vec<Ipv4Network>,
    /// Addresses per block handed to a node (rack-bound networks only).
    #[serde(default = "default_block_size")]
    pub block_size: u32,
    /// Which pods keep their address across re-creation (None = none but
    /// operator-pinned ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky: Option<crate::StickyPolicy>,
    /// Per-pod bandwidth: network default, maximum and node classes.
    #[serde(default, skip_serializing_if = "crate::qos::QosSpec::is_empty")]
    pub qos: crate::qos::QosSpec,
    /// Duplicate-address probe before an address is configured;
    /// None = off, the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<crate::ProbeSpec>,
}

fn default_block_size() -> u32 {
    crate::block::DEFAULT_BLOCK_SIZE
}

pub fn validate_name(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Name(name.to_string()))
    }
}

pub fn validate_ifname(name: &str) -> Result<(), ValidationError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME_LEN
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::IfName(name.to_string()))
    }
}

/// Parses a CIDR that must be written as its network address.
pub fn parse_cidr(s: &str) -> Result<Ipv4Network, ValidationError> {
    let n: Ipv4Network = s
        .trim()
        .parse()
        .map_err(|e| ValidationError::Cidr(s.to_string(), format!("{e}")))?;
    if n.network() != n.ip() {
        return Err(ValidationError::Cidr(
            s.to_string(),
            format!(
                "host bits set; did you mean {}/{}?",
                n.network(),
                n.prefix()
            ),
        ));
    }
    Ok(n)
}

impl NetworkSpec {
    /// A network with every optional setting at its default: the master's
    /// MTU, no VLAN, no exclusions or extra routes, blocks of
    /// `DEFAULT_BLOCK_SIZE`, not sticky, no QoS, no probe. Not validated.
    pub fn new(name: &str, subnet: Ipv4Network, gateway: Ipv4Addr, master: &str) -> Self {
        Self {
            name: name.to_string(),
            subnet,
            gateway,
            master: master.to_string(),
            mtu: 0,
            vlan: None,
            exclude: Vec::new(),
            routes: Vec::new(),
            host_routes: Vec::new(),
            block_size: crate::block::DEFAULT_BLOCK_SIZE,
            sticky: None,
            qos: crate::qos::QosSpec::default(),
            probe: None,
        }
    }

    /// Checks everything that can be checked without looking at other
    /// networks.
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(&self.name)?;
        self.validate_subnet()?;
        validate_ifname(&self.master)?;
        if let Some(v) = self.vlan {
            if !(1..=4094).contains(&v) {
                return Err(ValidationError::Vlan(u32::from(v)));
            }
            // The VLAN sub-interface "<master>.<vid>" must fit IFNAMSIZ too;
            // longer names get a deterministic short form in the plugin.
        }
        if self.mtu != 0 && !(68..=65535).contains(&self.mtu) {
            return Err(ValidationError::Mtu(self.mtu));
        }
        for r in &self.exclude {
            if !self.subnet.contains(r.first) || !self.subnet.contains(r.last) {
                return Err(ValidationError::ExcludeOutside {
                    range: *r,
                    subnet: self.subnet,
                });
            }
        }
        self.validate_routes()?;
        self.validate_host_routes()?;
        if !self.block_size.is_power_of_two()
            || !(crate::block::MIN_BLOCK_SIZE..=crate::block::MAX_BLOCK_SIZE)
                .contains(&self.block_size)
        {
            return Err(ValidationError::BlockSize(self.block_size));
        }
        if let Some(p) = &self.sticky {
            p.validate()?;
        }
        self.qos.validate()?;
        if let Some(p) = &self.probe {
            p.validate()?;
        }
        if crate::Pool::new(self).capacity() == 0 {
            return Err(ValidationError::Empty(self.name.clone()));
        }
        Ok(())
    }

    /// The subnet is a network address of a usable size and the gateway is
    /// a host inside it.
    fn validate_subnet(&self) -> Result<(), ValidationError> {
        let subnet = self.subnet;
        if subnet.network() != subnet.ip() {
            return Err(ValidationError::Subnet(
                subnet.to_string(),
                format!(
                    "host bits set; did you mean {}/{}?",
                    subnet.network(),
                    subnet.prefix()
                ),
            ));
        }
        if subnet.prefix() > 30 || subnet.prefix() < 8 {
            return Err(ValidationError::Subnet(
                subnet.to_string(),
                "prefix length must be between /8 and /30".into(),
            ));
        }
        if !subnet.contains(self.gateway) {
            return Err(ValidationError::GatewayOutside {
                gateway: self.gateway,
                subnet,
            });
        }
        if self.gateway == subnet.network() || self.gateway == subnet.broadcast() {
            return Err(ValidationError::GatewayReserved(self.gateway));
        }
        Ok(())
    }

    /// Extra routes: network addresses, no default (implied), not the own
    /// subnet, no duplicates, next hops that are hosts of the subnet.
    fn validate_routes(&self) -> Result<(), ValidationError> {
        let subnet = self.subnet;
        let mut seen = Vec::new();
        for r in &self.routes {
            let bad = |why: String| ValidationError::Route(r.dst.to_string(), why);
            if r.dst.network() != r.dst.ip() {
                return Err(bad("destination has host bits set".into()));
            }
            // The pod always gets the default route via the gateway and the
            // connected route of its subnet; a second one would make every
            // ADD fail with EEXIST.
            if r.dst.prefix() == 0 {
                return Err(bad(
                    "the default route via the gateway is implied; remove it".into(),
                ));
            }
            if r.dst == subnet {
                return Err(bad(format!("{subnet} is the pod's own subnet (on-link)")));
            }
            if seen.contains(&r.dst) {
                return Err(bad("listed twice".into()));
            }
            seen.push(r.dst);
            if let Some(gw) = r.gw {
                if !subnet.contains(gw) {
                    return Err(bad(format!("next hop {gw} is not on subnet {subnet}")));
                }
                if gw == subnet.network() || gw == subnet.broadcast() {
                    return Err(bad(format!(
                        "next hop {gw} is the subnet's network or broadcast address"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Node-side host routes: network addresses, each listed once.
    fn validate_host_routes(&self) -> Result<(), ValidationError> {
        let mut seen_host = Vec::new();
        for h in &self.host_routes {
            if seen_host.contains(h) {
                return Err(ValidationError::Cidr(h.to_string(), "listed twice".into()));
            }
            seen_host.push(*h);
        }
        for h in &self.host_routes {
            if h.network() != h.ip() {
                return Err(ValidationError::Cidr(h.to_string(), "host bits set".into()));
            }
        }
        Ok(())
    }

    /// Fails when this network's subnet overlaps any of `others` (a network
    /// with the same name is the one being replaced and is skipped).
    pub fn check_overlap<'a>(
        &self,
        others: impl IntoIterator<Item = &'a NetworkSpec>,
    ) -> Result<(), ValidationError> {
        for o in others {
            if o.name == self.name {
                continue;
            }
            if self.subnet.overlaps(o.subnet) {
                return Err(ValidationError::Overlap {
                    name: self.name.clone(),
                    subnet: self.subnet,
                    other: o.name.clone(),
                    other_subnet: o.subnet,
                });
            }
        }
        Ok(())
    }

    /// Addresses never handed out, as a set of runs (gateway included).
    pub fn reserved(&self) -> IntervalSet {
        let mut s = IntervalSet::new();
        s.insert(u32::from(self.gateway));
        for r in &self.exclude {
            s.insert_range(u32::from(r.first), u32::from(r.last));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        NetworkSpec {
            mtu: 1500,
            exclude: vec!["10.10.0.2-10.10.0.63".parse().unwrap()],
            host_routes: vec!["10.96.0.0/12".parse().unwrap()],
            ..NetworkSpec::new(
                "prod",
                "10.10.0.0/24".parse().unwrap(),
                "10.10.0.1".parse().unwrap(),
                "eth1",
            )
        }
    }

    #[test]
    fn accepts_a_sane_network() {
        spec().validate().unwrap();
    }

    #[test]
    fn rejects_each_bad_field_with_a_clear_error() {
        type Mutation = Box<dyn Fn(&mut NetworkSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|s| s.name = "Prod_1".into()),
                "invalid network name",
            ),
            (
                Box::new(|s| s.gateway = "10.10.1.1".parse().unwrap()),
                "outside subnet",
            ),
            (
                Box::new(|s| s.gateway = "10.10.0.255".parse().unwrap()),
                "broadcast",
            ),
            (
                Box::new(|s| s.subnet = "10.10.0.5/24".parse().unwrap()),
                "host bits",
            ),
            (
                Box::new(|s| s.subnet = "10.10.0.0/31".parse().unwrap()),
                "prefix length",
            ),
            (Box::new(|s| s.vlan = Some(4095)), "VLAN id 4095"),
            (Box::new(|s| s.vlan = Some(0)), "VLAN id 0"),
            (
                Box::new(|s| s.master = "a-very-long-interface".into()),
                "interface name",
            ),
            (Box::new(|s| s.mtu = 20), "MTU"),
            (Box::new(|s| s.block_size = 24), "block size"),
            (Box::new(|s| s.block_size = 512), "block size"),
            (
                Box::new(|s| {
                    s.probe = Some(crate::ProbeSpec {
                        count: 0,
                        ..Default::default()
                    })
                }),
                "duplicate-address probe: count 0",
            ),
            (
                Box::new(|s| s.exclude = vec!["10.11.0.0/24".parse().unwrap()]),
                "outside subnet",
            ),
            (
                Box::new(|s| s.exclude = vec!["10.10.0.0/24".parse().unwrap()]),
                "no allocatable address",
            ),
            (
                Box::new(|s| {
                    s.routes = vec![RouteSpec {
                        dst: "192.168.0.0/16".parse().unwrap(),
                        gw: Some("10.99.0.1".parse().unwrap()),
                    }]
                }),
                "not on subnet",
            ),
            (
                Box::new(|s| {
                    s.routes = vec![RouteSpec {
                        dst: "0.0.0.0/0".parse().unwrap(),
                        gw: None,
                    }]
                }),
                "implied",
            ),
            (
                Box::new(|s| {
                    s.routes = vec![RouteSpec {
                        dst: "10.10.0.0/24".parse().unwrap(),
                        gw: None,
                    }]
                }),
                "own subnet",
            ),
            (
                Box::new(|s| {
                    let r = RouteSpec {
                        dst: "192.168.0.0/16".parse().unwrap(),
                        gw: None,
                    };
                    s.routes = vec![r.clone(), r]
                }),
                "listed twice",
            ),
            (
                Box::new(|s| {
                    s.routes = vec![RouteSpec {
                        dst: "192.168.0.0/16".parse().unwrap(),
                        gw: Some("10.10.0.255".parse().unwrap()),
                    }]
                }),
                "broadcast",
            ),
            (
                Box::new(|s| s.host_routes = vec!["10.96.0.0/12".parse().unwrap(); 2]),
                "listed twice",
            ),
        ];
        for (mutate, want) in cases {
            let mut s = spec();
            mutate(&mut s);
            let err = s.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
        }
    }

    #[test]
    fn overlap_is_detected_but_not_with_itself() {
        let a = spec();
        let mut b = spec();
        b.name = "other".into();
        b.subnet = "10.10.0.128/25".parse().unwrap();
        b.gateway = "10.10.0.129".parse().unwrap();
        let err = a.check_overlap([&b]).unwrap_err().to_string();
        assert!(err.contains("overlaps"), "{err}");
        a.check_overlap([&a]).unwrap();
        b.subnet = "10.11.0.0/24".parse().unwrap();
        a.check_overlap([&b]).unwrap();
    }

    #[test]
    fn ranges_parse_in_all_three_forms_and_round_trip() {
        for (s, first, last) in [
            ("10.0.0.5", "10.0.0.5", "10.0.0.5"),
            ("10.0.0.0/30", "10.0.0.0", "10.0.0.3"),
            ("10.0.0.2 - 10.0.0.9", "10.0.0.2", "10.0.0.9"),
        ] {
            let r: AddrRange = s.parse().unwrap();
            assert_eq!(r.first.to_string(), first);
            assert_eq!(r.last.to_string(), last);
            let again: AddrRange = r.to_string().parse().unwrap();
            assert_eq!(again, r);
        }
        assert!("10.0.0.9-10.0.0.2".parse::<AddrRange>().is_err());
        assert!("10.0.0.1/24".parse::<AddrRange>().is_err());
        assert!("nope".parse::<AddrRange>().is_err());
    }

    #[test]
    fn stored_json_tolerates_unknown_fields() {
        let j = r#"{"name":"n","subnet":"10.0.0.0/24","gateway":"10.0.0.1","master":"eth1","futureField":1}"#;
        let s: NetworkSpec = serde_json::from_str(j).unwrap();
        assert_eq!(s.mtu, 0);
        assert_eq!(s.vlan, None);
        assert_eq!(s.probe, None, "the probe is off unless a network sets it");
        assert!(!serde_json::to_string(&s).unwrap().contains("probe"));
    }
}
