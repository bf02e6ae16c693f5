//! Conversions between the admin protocol (`rackline.admin.v1`) and the model.
//!
//! Proto messages carry strings and proto3 defaults (`0`, `""`); the model
//! carries typed values. Everything coming in is parsed and validated here,
//! before anything touches etcd, so a bad request gets one precise message
//! and writes nothing. Proto conventions kept: `vlan == 0` means untagged,
//! `mtu == 0` means inherit the master's, `Route.gw == ""` means via the
//! network's gateway.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rackline_model::network::{parse_cidr, validate_name};
use rackline_model::{AddrRange, Lease, NetworkSpec, PodRef, RouteSpec, ValidationError};
use rackline_proto::admin::v1 as pb;

use crate::admin::{LeaseFilter, NetworkView, PodFilter};

mod acl;
mod probe;
mod qos;
mod racks;
mod update;
pub use acl::*;
pub use probe::*;
pub use qos::*;
pub use racks::*;
pub use update::*;

/// Why a request could not be turned into model values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("the request carries no network")]
    MissingNetwork,
    #[error("{0} is required")]
    Required(&'static str),
    #[error("invalid gateway {0:?}: not an IPv4 address")]
    Gateway(String),
    #[error("invalid address filter {0:?}: not an IPv4 address")]
    AddressFilter(String),
    #[error("invalid pod filter {0:?}: write NAMESPACE/NAME or NAME")]
    PodFilter(String),
    /// `what` names the field, e.g. "node address".
    #[error("invalid {0} {1:?}: not an IPv4 address")]
    Address(&'static str, String),
    /// Two parts of a request that exclude each other.
    #[error("{0}")]
    Conflicting(String),
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

/// Parses and validates a network from a create request. Overlap with other
/// networks is not checked here: that needs etcd and is done by the store
/// inside the create transaction.
pub fn network_from_proto(n: &pb::Network) -> Result<NetworkSpec, ConvertError> {
    validate_name(&n.name)?;
    let subnet = parse_subnet(&n.subnet)?;
    if n.gateway.trim().is_empty() {
        return Err(ConvertError::Required("gateway"));
    }
    let gateway: Ipv4Addr = n
        .gateway
        .trim()
        .parse()
        .map_err(|_| ConvertError::Gateway(n.gateway.clone()))?;
    if n.master.is_empty() {
        return Err(ConvertError::Required("master"));
    }
    let spec = NetworkSpec {
        name: n.name.clone(),
        subnet,
        gateway,
        master: n.master.clone(),
        mtu: n.mtu,
        vlan: vlan_from_proto(n.vlan)?,
        exclude: n
            .exclude
            .iter()
            .map(|e| e.parse::<AddrRange>())
            .collect::<Result<_, _>>()?,
        routes: n
            .routes
            .iter()
            .map(route_from_proto)
            .collect::<Result<_, _>>()?,
        host_routes: n
            .host_routes
            .iter()
            .map(|h| parse_cidr(h))
            .collect::<Result<_, _>>()?,
        block_size: if n.block_size == 0 {
            rackline_model::block::DEFAULT_BLOCK_SIZE
        } else {
            n.block_size
        },
        sticky: n.sticky.as_ref().map(sticky_from_proto).transpose()?,
        qos: network_qos_from_proto(n.qos.as_ref()),
        probe: probe_from_proto(n.probe.as_ref())?,
    };
    spec.validate()?;
    Ok(spec)
}

fn sticky_from_proto(
    p: &pb::StickyPolicy,
) -> Result<rackline_model::StickyPolicy, ValidationError> {
    Ok(rackline_model::StickyPolicy {
        namespaces: p.namespaces.clone(),
        pod_patterns: p.pod_patterns.clone(),
        hold_secs: p
            .hold_secs
            .unwrap_or(rackline_model::sticky::DEFAULT_HOLD_SECS),
        cross_rack: if p.cross_rack.is_empty() {
            rackline_model::CrossRack::default()
        } else {
            p.cross_rack.parse().map_err(ValidationError::Sticky)?
        },
    })
}

pub fn sticky_to_proto(p: &rackline_model::StickyPolicy) -> pb::StickyPolicy {
    pb::StickyPolicy {
        namespaces: p.namespaces.clone(),
        pod_patterns: p.pod_patterns.clone(),
        hold_secs: Some(p.hold_secs),
        cross_rack: p.cross_rack.as_str().to_string(),
    }
}

pub fn reservation_to_proto(v: &crate::admin::ReservationView) -> pb::Reservation {
    let i = &v.identity;
    let l = v.lease.as_ref();
    pb::Reservation {
        network: i.network.clone(),
        namespace: i.namespace.clone(),
        name: i.name.clone(),
        address: i.address.to_string(),
        pinned: i.pinned,
        rack: i.rack.clone().unwrap_or_default(),
        state: v.state().to_string(),
        node: l.map(|l| l.node.clone()).unwrap_or_default(),
        container_id: l.map(|l| l.container_id.clone()).unwrap_or_default(),
        expires_unix_ms: l.and_then(|l| l.expires_unix_ms).unwrap_or(0),
    }
}

/// The subnet as written, host bits allowed: `NetworkSpec::validate` rejects
/// those with a "did you mean" hint, which `parse_cidr` would pre-empt.
pub(crate) fn parse_subnet(s: &str) -> Result<Ipv4Network, ValidationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ValidationError::Subnet(
            String::new(),
            "a CIDR is required".into(),
        ));
    }
    if !t.contains('/') {
        return Err(ValidationError::Subnet(
            s.to_string(),
            "missing prefix length (write e.g. 10.0.0.0/24)".into(),
        ));
    }
    t.parse()
        .map_err(|e| ValidationError::Subnet(s.to_string(), format!("{e}")))
}

/// Proto3 has no u16 and no optional scalar here: 0 means untagged. The range
/// is checked on the u32 the client sent: narrowing first would turn 65537
/// into VLAN 1.
pub fn vlan_from_proto(v: u32) -> Result<Option<u16>, ValidationError> {
    if v == 0 {
        return Ok(None);
    }
    if !(1..=4094).contains(&v) {
        return Err(ValidationError::Vlan(v));
    }
    u16::try_from(v)
        .map(Some)
        .map_err(|_| ValidationError::Vlan(v))
}

pub(crate) fn route_from_proto(r: &pb::Route) -> Result<RouteSpec, ValidationError> {
    let dst = parse_cidr(&r.dst)
        .map_err(|e| ValidationError::Route(format!("{:?}", r.dst), e.to_string()))?;
    let gw = if r.gw.trim().is_empty() {
        None
    } else {
        Some(r.gw.trim().parse::<Ipv4Addr>().map_err(|_| {
            ValidationError::Route(
                dst.to_string(),
                format!("next hop {:?} is not an IPv4 address", r.gw),
            )
        })?)
    };
    Ok(RouteSpec { dst, gw })
}

pub fn network_to_proto(v: &NetworkView) -> pb::Network {
    let s = &v.spec;
    pb::Network {
        name: s.name.clone(),
        subnet: s.subnet.to_string(),
        gateway: s.gateway.to_string(),
        master: s.master.clone(),
        mtu: s.mtu,
        vlan: s.vlan.map(u32::from).unwrap_or(0),
        exclude: s.exclude.iter().map(ToString::to_string).collect(),
        routes: s
            .routes
            .iter()
            .map(|r| pb::Route {
                dst: r.dst.to_string(),
                gw: r.gw.map(|g| g.to_string()).unwrap_or_default(),
            })
            .collect(),
        host_routes: s.host_routes.iter().map(ToString::to_string).collect(),
        block_size: s.block_size,
        sticky: s.sticky.as_ref().map(sticky_to_proto),
        probe: probe_to_proto(s.probe.as_ref()),
        capacity: v.capacity,
        allocated: v.allocated,
        qos: network_qos_to_proto(&s.qos),
        revision: v.revision,
    }
}

/// Addresses go out without a prefix length: the lease owns one address,
/// the prefix belongs to the network.
pub fn lease_to_proto(l: &Lease) -> pb::Lease {
    pb::Lease {
        network: l.network.clone(),
        address: l.address.to_string(),
        node: l.node.clone(),
        container_id: l.container_id.clone(),
        ifname: l.ifname.clone(),
        pod: Some(pod_to_proto(&l.pod)),
        created_unix_ms: l.created_unix_ms,
        state: l.state.as_str().to_string(),
        sticky: l.sticky,
        expires_unix_ms: l.expires_unix_ms.unwrap_or(0),
        conflict: conflict_to_proto(l.conflict.as_deref()),
    }
}

fn pod_to_proto(p: &PodRef) -> pb::PodRef {
    pb::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

/// Empty strings are absent filters (proto3 cannot tell them apart).
pub fn lease_filter_from_proto(r: &pb::ListLeasesRequest) -> Result<LeaseFilter, ConvertError> {
    let network = non_empty(&r.network);
    if let Some(n) = &network {
        // Also keeps a filter from widening the etcd prefix scan ("a/").
        validate_name(n)?;
    }
    let pod = non_empty(&r.pod)
        .map(|p| parse_pod_filter(&p))
        .transpose()?;
    let address = non_empty(&r.address)
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|_| ConvertError::AddressFilter(a.clone()))
        })
        .transpose()?;
    Ok(LeaseFilter {
        network,
        node: non_empty(&r.node),
        rack: rack_filter(&r.rack)?,
        pod,
        address,
    })
}

/// "namespace/name" matches one pod; "name" matches that name in any
/// namespace.
pub fn parse_pod_filter(s: &str) -> Result<PodFilter, ConvertError> {
    let bad = || ConvertError::PodFilter(s.to_string());
    match s.split_once('/') {
        Some((ns, name)) => {
            if ns.is_empty() || name.is_empty() || name.contains('/') {
                return Err(bad());
            }
            Ok(PodFilter {
                namespace: Some(ns.to_string()),
                name: name.to_string(),
            })
        }
        None if s.is_empty() => Err(bad()),
        None => Ok(PodFilter {
            namespace: None,
            name: s.to_string(),
        }),
    }
}

pub(crate) fn non_empty(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty()).then(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> pb::Network {
        pb::Network {
            name: "prod".into(),
            subnet: "10.10.0.0/24".into(),
            gateway: "10.10.0.1".into(),
            master: "uplink0".into(),
            mtu: 9000,
            vlan: 120,
            exclude: vec![
                "10.10.0.2-10.10.0.9".into(),
                "10.10.0.16/28".into(),
                "10.10.0.200".into(),
            ],
            routes: vec![
                pb::Route {
                    dst: "192.168.0.0/16".into(),
                    gw: "10.10.0.254".into(),
                },
                pb::Route {
                    dst: "172.16.0.0/12".into(),
                    gw: String::new(),
                },
            ],
            host_routes: vec!["10.96.0.0/12".into()],
            capacity: 0,
            allocated: 0,
            block_size: 0,
            sticky: None,
            qos: None,
            probe: None,
            revision: 0,
        }
    }

    #[test]
    fn a_full_network_round_trips() {
        let spec = network_from_proto(&net()).unwrap();
        assert_eq!(spec.vlan, Some(120));
        assert_eq!(spec.exclude.len(), 3);
        assert_eq!(spec.exclude[1].last, Ipv4Addr::new(10, 10, 0, 31));
        assert_eq!(spec.routes[0].gw, Some(Ipv4Addr::new(10, 10, 0, 254)));
        assert_eq!(spec.routes[1].gw, None);
        let view = NetworkView {
            spec,
            capacity: 7,
            allocated: 3,
            revision: 0,
        };
        let back = network_to_proto(&view);
        let mut want = net();
        // Ranges come back in their canonical "first-last" form.
        want.exclude[1] = "10.10.0.16-10.10.0.31".into();
        want.capacity = 7;
        want.allocated = 3;
        // 0 means "default": it comes back as the effective block size.
        want.block_size = rackline_model::block::DEFAULT_BLOCK_SIZE;
        assert_eq!(back, want);
        // And the canonical form parses to the same spec.
        assert_eq!(network_from_proto(&back).unwrap(), view.spec);
    }

    #[test]
    fn zero_vlan_and_mtu_mean_unset() {
        let mut n = net();
        n.vlan = 0;
        n.mtu = 0;
        let spec = network_from_proto(&n).unwrap();
        assert_eq!(spec.vlan, None);
        assert_eq!(spec.mtu, 0);
        let back = network_to_proto(&NetworkView {
            spec,
            capacity: 0,
            allocated: 0,
            revision: 0,
        });
        assert_eq!(back.vlan, 0);
    }

    #[test]
    fn vlan_range_is_checked_before_narrowing() {
        assert_eq!(vlan_from_proto(1).unwrap(), Some(1));
        assert_eq!(vlan_from_proto(4094).unwrap(), Some(4094));
        for v in [4095, 65535, 65536, 65537, 65536 + 100, u32::MAX] {
            let err = vlan_from_proto(v).unwrap_err();
            assert_eq!(err.to_string(), format!("VLAN id {v} is outside 1-4094"));
        }
    }

    #[test]
    fn each_bad_field_gets_a_clear_message() {
        type Mutate = Box<dyn Fn(&mut pb::Network)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (
                Box::new(|n| n.name = "Prod!".into()),
                "invalid network name \"Prod!\"",
            ),
            (
                Box::new(|n| n.name = String::new()),
                "invalid network name \"\"",
            ),
            (
                Box::new(|n| n.subnet = "10.10.0.0/33".into()),
                "invalid subnet \"10.10.0.0/33\"",
            ),
            (
                Box::new(|n| n.subnet = "banana".into()),
                "invalid subnet \"banana\": missing prefix length",
            ),
            (Box::new(|n| n.subnet = String::new()), "a CIDR is required"),
            (
                Box::new(|n| n.subnet = "10.10.0.7/24".into()),
                "did you mean 10.10.0.0/24?",
            ),
            (
                Box::new(|n| n.gateway = String::new()),
                "gateway is required",
            ),
            (
                Box::new(|n| n.gateway = "10.10.0.300".into()),
                "invalid gateway \"10.10.0.300\"",
            ),
            (
                Box::new(|n| n.gateway = "10.20.0.1".into()),
                "gateway 10.20.0.1 is outside subnet 10.10.0.0/24",
            ),
            (Box::new(|n| n.master = String::new()), "master is required"),
            (
                Box::new(|n| n.master = "x".repeat(16)),
                "invalid interface name",
            ),
            (
                Box::new(|n| n.vlan = 4095),
                "VLAN id 4095 is outside 1-4094",
            ),
            (
                Box::new(|n| n.vlan = 65537),
                "VLAN id 65537 is outside 1-4094",
            ),
            (Box::new(|n| n.mtu = 10), "MTU 10 is outside 68-65535"),
            (
                Box::new(|n| n.exclude = vec!["10.10.0.9-10.10.0.2".into()]),
                "invalid address range \"10.10.0.9-10.10.0.2\": first address is after last",
            ),
            (
                Box::new(|n| n.exclude = vec!["10.11.0.0/28".into()]),
                "excluded range 10.11.0.0-10.11.0.15 is outside subnet 10.10.0.0/24",
            ),
            (
                Box::new(|n| n.routes[0].dst = "192.168.1.1/16".into()),
                "route \"192.168.1.1/16\": invalid CIDR \"192.168.1.1/16\": host bits set",
            ),
            (
                Box::new(|n| n.routes[0].gw = "gw".into()),
                "route 192.168.0.0/16: next hop \"gw\" is not an IPv4 address",
            ),
            (
                Box::new(|n| n.routes[0].gw = "10.99.0.1".into()),
                "next hop 10.99.0.1 is not on subnet 10.10.0.0/24",
            ),
            (
                Box::new(|n| n.host_routes = vec!["10.96.1.0/12".into()]),
                "invalid CIDR \"10.96.1.0/12\": host bits set; did you mean 10.96.0.0/12?",
            ),
            (
                Box::new(|n| n.host_routes = vec!["banana".into()]),
                "invalid CIDR \"banana\"",
            ),
        ];
        for (mutate, want) in cases {
            let mut n = net();
            mutate(&mut n);
            let err = network_from_proto(&n).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn leases_go_out_without_prefix_length() {
        let l = Lease {
            network: "prod".into(),
            address: Ipv4Addr::new(10, 10, 0, 70),
            node: "n1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: "u1".into(),
            },
            created_unix_ms: 42,
            state: Default::default(),
            sticky: false,
            expires_unix_ms: None,
            conflict: None,
            new_identity: false,
            settings: None,
        };
        let p = lease_to_proto(&l);
        assert_eq!(p.address, "10.10.0.70");
        assert_eq!(p.pod.unwrap().name, "web-0");
    }

    #[test]
    fn lease_filters_parse() {
        let f = lease_filter_from_proto(&pb::ListLeasesRequest::default()).unwrap();
        assert_eq!(f, LeaseFilter::default());
        let f = lease_filter_from_proto(&pb::ListLeasesRequest {
            network: "prod".into(),
            node: "n1".into(),
            pod: "default/web-0".into(),
            address: "10.0.0.1".into(),
            rack: "r1".into(),
        })
        .unwrap();
        assert_eq!(f.network.as_deref(), Some("prod"));
        assert_eq!(f.rack.as_deref(), Some("r1"));
        assert_eq!(f.node.as_deref(), Some("n1"));
        assert_eq!(
            f.pod,
            Some(PodFilter {
                namespace: Some("default".into()),
                name: "web-0".into()
            })
        );
        assert_eq!(f.address, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(
            parse_pod_filter("web-0").unwrap(),
            PodFilter {
                namespace: None,
                name: "web-0".into()
            }
        );
        for bad in ["/x", "ns/", "a/b/c"] {
            let err = parse_pod_filter(bad).unwrap_err().to_string();
            assert!(err.contains("invalid pod filter"), "{err}");
        }
        let err = lease_filter_from_proto(&pb::ListLeasesRequest {
            address: "10.0.0.1/24".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid address filter \"10.0.0.1/24\": not an IPv4 address"
        );
        let err = lease_filter_from_proto(&pb::ListLeasesRequest {
            network: "a/b".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("invalid network name"), "{err}");
        let err = lease_filter_from_proto(&pb::ListLeasesRequest {
            rack: "R1".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("invalid rack name"), "{err}");
    }
}
