//! Conversions for racks, rack bindings, nodes, blocks and utilisation.
//!
//! What can be checked without etcd is checked here (names, addresses,
//! CIDRs, range syntax); checks against the network and the other racks
//! are the store's, inside its transactions.

use std::net::Ipv4Addr;

use rackline_model::network::{parse_cidr, validate_name};
use rackline_model::rack::validate_node_name;
use rackline_model::{AddrRange, Block, Node, Rack, RackNet, ValidationError};
use rackline_proto::admin::v1 as pb;
use rackline_store::{BlockFilter, BlockUsage, NodeInfo, RackInfo, Utilization};

use super::{non_empty, ConvertError};

pub fn rack_from_proto(r: &pb::Rack) -> Result<Rack, ConvertError> {
    let rack = Rack {
        name: r.name.trim().to_string(),
        description: r.description.trim().to_string(),
    };
    rack.validate()?;
    Ok(rack)
}

pub fn rack_to_proto(r: &Rack) -> pb::Rack {
    pb::Rack {
        name: r.name.clone(),
        description: r.description.clone(),
    }
}

pub fn validate_rack_name(name: &str) -> Result<(), ConvertError> {
    validate_name(name).map_err(|_| ValidationError::RackName(name.to_string()).into())
}

/// An optional rack filter: "" is none; anything else must be a rack name
/// (a filter never widens an etcd prefix scan).
pub fn rack_filter(s: &str) -> Result<Option<String>, ConvertError> {
    non_empty(s)
        .map(|r| validate_rack_name(&r).map(|()| r))
        .transpose()
}

pub fn network_filter(s: &str) -> Result<Option<String>, ConvertError> {
    non_empty(s)
        .map(|n| validate_name(&n).map(|()| n).map_err(ConvertError::from))
        .transpose()
}

pub fn node_filter(s: &str) -> Result<Option<String>, ConvertError> {
    non_empty(s)
        .map(|n| {
            validate_node_name(&n)
                .map(|()| n)
                .map_err(ConvertError::from)
        })
        .transpose()
}

/// A binding as requested: names, subnet, gateway and range syntax. Whether
/// it fits its network and the other racks is decided by the store.
pub fn racknet_from_proto(b: &pb::RackNet) -> Result<RackNet, ConvertError> {
    let rack = b.rack.trim().to_string();
    validate_rack_name(&rack)?;
    let network = b.network.trim().to_string();
    validate_name(&network)?;
    if b.subnet.trim().is_empty() {
        return Err(ConvertError::Required("subnet"));
    }
    let subnet = parse_cidr(&b.subnet)?;
    if b.gateway.trim().is_empty() {
        return Err(ConvertError::Required("gateway"));
    }
    let gateway: Ipv4Addr = b
        .gateway
        .trim()
        .parse()
        .map_err(|_| ConvertError::Gateway(b.gateway.clone()))?;
    let ranges = b
        .ranges
        .iter()
        .map(|r| r.parse::<AddrRange>())
        .collect::<Result<_, _>>()?;
    let exclude = b
        .exclude
        .iter()
        .map(|r| r.parse::<AddrRange>())
        .collect::<Result<_, _>>()?;
    Ok(RackNet {
        rack,
        network,
        subnet,
        gateway,
        ranges,
        exclude,
    })
}

pub fn racknet_to_proto(b: &RackNet) -> pb::RackNet {
    pb::RackNet {
        rack: b.rack.clone(),
        network: b.network.clone(),
        subnet: b.subnet.to_string(),
        gateway: b.gateway.to_string(),
        ranges: b.ranges.iter().map(ToString::to_string).collect(),
        exclude: b.exclude.iter().map(ToString::to_string).collect(),
    }
}

pub fn rack_detail_to_proto(r: &RackInfo) -> pb::RackDetail {
    pb::RackDetail {
        rack: Some(rack_to_proto(&r.rack)),
        networks: r.bindings.iter().map(racknet_to_proto).collect(),
        nodes: r.nodes.clone(),
    }
}

/// The registration time is the server's to set.
pub fn node_from_proto(n: &pb::Node) -> Result<Node, ConvertError> {
    let node = Node {
        name: n.name.trim().to_string(),
        rack: n.rack.trim().to_string(),
        addresses: n
            .addresses
            .iter()
            .map(|a| {
                a.trim()
                    .parse::<Ipv4Addr>()
                    .map_err(|_| ConvertError::Address("node address", a.clone()))
            })
            .collect::<Result<_, _>>()?,
        registered_unix_ms: 0,
    };
    node.validate()?;
    Ok(node)
}

pub fn node_to_proto(n: &Node) -> pb::Node {
    pb::Node {
        name: n.name.clone(),
        rack: n.rack.clone(),
        addresses: n.addresses.iter().map(ToString::to_string).collect(),
        registered_unix_ms: n.registered_unix_ms,
    }
}

pub fn node_detail_to_proto(n: &NodeInfo) -> pb::NodeDetail {
    pb::NodeDetail {
        node: Some(node_to_proto(&n.node)),
        blocks: n.blocks.iter().map(block_usage_to_proto).collect(),
        leases: n.leases,
        draining: n.draining,
        live: n.live,
    }
}

pub fn block_to_proto(b: &Block, leased: u64) -> pb::Block {
    pb::Block {
        network: b.network.clone(),
        rack: b.rack.clone(),
        first: b.first.to_string(),
        size: b.size,
        node: b.node.clone(),
        created_unix_ms: b.created_unix_ms,
        leased,
    }
}

pub fn block_usage_to_proto(b: &BlockUsage) -> pb::Block {
    block_to_proto(&b.block, b.leased)
}

pub fn block_filter_from_proto(r: &pb::ListBlocksRequest) -> Result<BlockFilter, ConvertError> {
    Ok(BlockFilter {
        network: network_filter(&r.network)?,
        rack: rack_filter(&r.rack)?,
        node: node_filter(&r.node)?,
    })
}

/// An AcquireBlock request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    pub network: String,
    pub node: String,
    /// The node's blocks the caller knows (None: unset, always a new block).
    pub known: Option<Vec<Ipv4Addr>>,
}

/// An acquire request: network and node required, known blocks optional.
pub fn acquire_from_proto(r: &pb::AcquireBlockRequest) -> Result<Acquire, ConvertError> {
    let network = network_filter(&r.network)?.ok_or(ConvertError::Required("network"))?;
    let node = node_filter(&r.node)?.ok_or(ConvertError::Required("node"))?;
    let known = match &r.known {
        None => None,
        Some(k) => Some(
            k.first
                .iter()
                .map(|f| {
                    f.trim()
                        .parse()
                        .map_err(|_| ConvertError::Address("block address", f.clone()))
                })
                .collect::<Result<Vec<Ipv4Addr>, _>>()?,
        ),
    };
    Ok(Acquire {
        network,
        node,
        known,
    })
}

/// (network, first address, node) of a release request; all required.
pub fn release_from_proto(
    r: &pb::ReleaseBlockRequest,
) -> Result<(String, Ipv4Addr, String), ConvertError> {
    let network = network_filter(&r.network)?.ok_or(ConvertError::Required("network"))?;
    let node = node_filter(&r.node)?.ok_or(ConvertError::Required("node"))?;
    let first = non_empty(&r.first).ok_or(ConvertError::Required("first"))?;
    let first = first
        .parse()
        .map_err(|_| ConvertError::Address("block address", r.first.clone()))?;
    Ok((network, first, node))
}

pub fn utilization_to_proto(u: &Utilization) -> pb::UtilizationRow {
    pb::UtilizationRow {
        network: u.network.clone(),
        rack: u.rack.clone(),
        capacity: u.capacity,
        blocks: u.blocks,
        in_blocks: u.in_blocks,
        leased: u.leased,
        free: u.free,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding() -> pb::RackNet {
        pb::RackNet {
            rack: "r1".into(),
            network: "prod".into(),
            subnet: "10.10.0.0/16".into(),
            gateway: "10.10.0.1".into(),
            ranges: vec!["10.10.1.0/24".into(), "10.10.2.5-10.10.2.9".into()],
            exclude: vec!["10.10.1.0/29".into()],
        }
    }

    #[test]
    fn a_binding_round_trips_in_canonical_form() {
        let b = racknet_from_proto(&binding()).unwrap();
        assert_eq!(b.ranges.len(), 2);
        let back = racknet_to_proto(&b);
        let mut want = binding();
        want.ranges[0] = "10.10.1.0-10.10.1.255".into();
        want.exclude[0] = "10.10.1.0-10.10.1.7".into();
        assert_eq!(back, want);
        assert_eq!(racknet_from_proto(&back).unwrap(), b);
    }

    #[test]
    fn each_bad_binding_field_gets_a_clear_message() {
        type Mutate = Box<dyn Fn(&mut pb::RackNet)>;
        let cases: Vec<(Mutate, &str)> = vec![
            (
                Box::new(|b| b.rack = "Rack 1".into()),
                "invalid rack name \"Rack 1\"",
            ),
            (
                Box::new(|b| b.network = "a/b".into()),
                "invalid network name \"a/b\"",
            ),
            (Box::new(|b| b.subnet = String::new()), "subnet is required"),
            (
                Box::new(|b| b.subnet = "10.10.0.1/16".into()),
                "did you mean 10.10.0.0/16?",
            ),
            (
                Box::new(|b| b.gateway = String::new()),
                "gateway is required",
            ),
            (
                Box::new(|b| b.gateway = "gw".into()),
                "invalid gateway \"gw\"",
            ),
            (
                Box::new(|b| b.ranges = vec!["10.10.1.9-10.10.1.2".into()]),
                "first address is after last",
            ),
            (
                Box::new(|b| b.exclude = vec!["10.10.1.x".into()]),
                "10.10.1.x",
            ),
        ];
        for (mutate, want) in cases {
            let mut b = binding();
            mutate(&mut b);
            let err = racknet_from_proto(&b).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn racks_and_nodes_are_validated() {
        let r = rack_from_proto(&pb::Rack {
            name: " r1 ".into(),
            description: "row 3".into(),
        })
        .unwrap();
        assert_eq!(r.name, "r1");
        assert_eq!(rack_to_proto(&r).description, "row 3");
        let err = rack_from_proto(&pb::Rack {
            name: "R_1".into(),
            description: String::new(),
        })
        .unwrap_err();
        assert!(
            err.to_string().contains("invalid rack name \"R_1\""),
            "{err}"
        );

        let n = node_from_proto(&pb::Node {
            name: "worker-1.example".into(),
            rack: "r1".into(),
            addresses: vec!["10.0.0.11".into()],
            registered_unix_ms: 99,
        })
        .unwrap();
        assert_eq!(n.registered_unix_ms, 0, "the server stamps the time");
        assert_eq!(node_to_proto(&n).addresses, ["10.0.0.11"]);
        for (bad, want) in [
            (
                pb::Node {
                    name: "n1".into(),
                    rack: "r1".into(),
                    addresses: vec!["10.0.0.0/24".into()],
                    registered_unix_ms: 0,
                },
                "invalid node address \"10.0.0.0/24\"",
            ),
            (
                pb::Node {
                    name: "n/1".into(),
                    rack: "r1".into(),
                    ..Default::default()
                },
                "invalid node name \"n/1\"",
            ),
            (
                pb::Node {
                    name: "n1".into(),
                    rack: String::new(),
                    ..Default::default()
                },
                "invalid rack name \"\"",
            ),
        ] {
            let err = node_from_proto(&bad).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn block_requests_need_their_fields() {
        let f = block_filter_from_proto(&pb::ListBlocksRequest {
            network: "prod".into(),
            rack: String::new(),
            node: "n1".into(),
        })
        .unwrap();
        assert_eq!(
            f,
            BlockFilter {
                network: Some("prod".into()),
                rack: None,
                node: Some("n1".into()),
            }
        );
        let err = block_filter_from_proto(&pb::ListBlocksRequest {
            rack: "a/b".into(),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("invalid rack name"), "{err}");

        let err = acquire_from_proto(&pb::AcquireBlockRequest {
            network: "prod".into(),
            node: String::new(),
            known: None,
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "node is required");
        let a = acquire_from_proto(&pb::AcquireBlockRequest {
            network: "prod".into(),
            node: "n1".into(),
            known: Some(pb::KnownBlocks {
                first: vec!["10.0.0.16".into()],
            }),
        })
        .unwrap();
        assert_eq!(a.known, Some(vec![Ipv4Addr::new(10, 0, 0, 16)]));
        let a = acquire_from_proto(&pb::AcquireBlockRequest {
            network: "prod".into(),
            node: "n1".into(),
            known: Some(pb::KnownBlocks { first: vec![] }),
        })
        .unwrap();
        assert_eq!(a.known, Some(vec![]), "set but empty is not unset");
        let err = acquire_from_proto(&pb::AcquireBlockRequest {
            network: "prod".into(),
            node: "n1".into(),
            known: Some(pb::KnownBlocks {
                first: vec!["nope".into()],
            }),
        })
        .unwrap_err();
        assert!(err.to_string().contains("\"nope\""), "{err}");
        let (net, first, node) = release_from_proto(&pb::ReleaseBlockRequest {
            network: "prod".into(),
            first: "10.0.0.16".into(),
            node: "n1".into(),
        })
        .unwrap();
        assert_eq!(
            (net.as_str(), first, node.as_str()),
            ("prod", Ipv4Addr::new(10, 0, 0, 16), "n1")
        );
        let err = release_from_proto(&pb::ReleaseBlockRequest {
            network: "prod".into(),
            first: "x".into(),
            node: "n1".into(),
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid block address \"x\": not an IPv4 address"
        );
    }

    #[test]
    fn blocks_and_rows_go_out_as_is() {
        let b = Block {
            network: "prod".into(),
            rack: "r1".into(),
            first: Ipv4Addr::new(10, 0, 0, 16),
            size: 16,
            node: "n1".into(),
            created_unix_ms: 5,
        };
        let p = block_to_proto(&b, 3);
        assert_eq!((p.first.as_str(), p.size, p.leased), ("10.0.0.16", 16, 3));
        let row = utilization_to_proto(&Utilization {
            network: "prod".into(),
            rack: "r1".into(),
            capacity: 10,
            blocks: 1,
            in_blocks: 8,
            leased: 2,
            free: 8,
        });
        assert_eq!((row.capacity, row.in_blocks, row.free), (10, 8, 8));
    }
}
