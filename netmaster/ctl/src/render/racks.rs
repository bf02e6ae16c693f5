//! Tables and JSON for racks, rack bindings, nodes, blocks and the pool
//! utilisation view. Same rules as the rest of `render`: JSON follows the
//! proto messages in camelCase with every field present; tables show "-"
//! for empty cells.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use super::{age, or_dash, table};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RackJson {
    pub name: String,
    pub description: String,
}

impl From<&pb::Rack> for RackJson {
    fn from(r: &pb::Rack) -> Self {
        Self {
            name: r.name.clone(),
            description: r.description.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RackNetJson {
    pub rack: String,
    pub network: String,
    pub subnet: String,
    pub gateway: String,
    pub ranges: Vec<String>,
    pub exclude: Vec<String>,
}

impl From<&pb::RackNet> for RackNetJson {
    fn from(b: &pb::RackNet) -> Self {
        Self {
            rack: b.rack.clone(),
            network: b.network.clone(),
            subnet: b.subnet.clone(),
            gateway: b.gateway.clone(),
            ranges: b.ranges.clone(),
            exclude: b.exclude.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RackDetailJson {
    pub rack: RackJson,
    pub networks: Vec<RackNetJson>,
    pub nodes: Vec<String>,
}

impl From<&pb::RackDetail> for RackDetailJson {
    fn from(d: &pb::RackDetail) -> Self {
        Self {
            rack: d.rack.as_ref().map(RackJson::from).unwrap_or_default(),
            networks: d.networks.iter().map(RackNetJson::from).collect(),
            nodes: d.nodes.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeJson {
    pub name: String,
    pub rack: String,
    pub addresses: Vec<String>,
    pub registered_unix_ms: i64,
}

impl From<&pb::Node> for NodeJson {
    fn from(n: &pb::Node) -> Self {
        Self {
            name: n.name.clone(),
            rack: n.rack.clone(),
            addresses: n.addresses.clone(),
            registered_unix_ms: n.registered_unix_ms,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDetailJson {
    pub node: NodeJson,
    pub blocks: Vec<BlockJson>,
    pub leases: u64,
    /// `ready` or `draining`.
    pub state: &'static str,
    pub live: bool,
}

impl From<&pb::NodeDetail> for NodeDetailJson {
    fn from(d: &pb::NodeDetail) -> Self {
        Self {
            node: d.node.as_ref().map(NodeJson::from).unwrap_or_default(),
            blocks: d.blocks.iter().map(BlockJson::from).collect(),
            leases: d.leases,
            state: node_state(d),
            live: d.live,
        }
    }
}

/// A node's drain state as `node list` shows it.
pub fn node_state(d: &pb::NodeDetail) -> &'static str {
    if d.draining {
        "draining"
    } else {
        "ready"
    }
}

/// The reply of `node delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeDeleteJson {
    pub leases_freed: u64,
    pub reserved: u64,
    pub standby_freed: u64,
    pub blocks_returned: u64,
}

impl From<&pb::DeleteNodeReply> for NodeDeleteJson {
    fn from(r: &pb::DeleteNodeReply) -> Self {
        Self {
            leases_freed: r.leases_freed,
            reserved: r.reserved,
            standby_freed: r.standby_freed,
            blocks_returned: r.blocks_returned,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockJson {
    pub network: String,
    pub rack: String,
    pub first: String,
    pub size: u32,
    pub node: String,
    pub created_unix_ms: i64,
    pub leased: u64,
}

impl From<&pb::Block> for BlockJson {
    fn from(b: &pb::Block) -> Self {
        Self {
            network: b.network.clone(),
            rack: b.rack.clone(),
            first: b.first.clone(),
            size: b.size,
            node: b.node.clone(),
            created_unix_ms: b.created_unix_ms,
            leased: b.leased,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UtilizationJson {
    pub network: String,
    pub rack: String,
    pub capacity: u64,
    pub blocks: u64,
    pub in_blocks: u64,
    pub leased: u64,
    pub free: u64,
}

impl From<&pb::UtilizationRow> for UtilizationJson {
    fn from(u: &pb::UtilizationRow) -> Self {
        Self {
            network: u.network.clone(),
            rack: u.rack.clone(),
            capacity: u.capacity,
            blocks: u.blocks,
            in_blocks: u.in_blocks,
            leased: u.leased,
            free: u.free,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleasedJson {
    pub released: bool,
}

/// `{}`: the reply of a delete/unbind, for scripts that want one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EmptyJson {}

fn list(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

fn fields(pairs: &[(&str, String)]) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{:<13}{v}", format!("{k}:"));
    }
    out
}

/// "a-b" of a block, from its first address and size.
fn block_span(b: &pb::Block) -> String {
    match b.first.parse::<Ipv4Addr>() {
        Ok(first) if b.size > 1 => {
            let last = Ipv4Addr::from(u32::from(first).saturating_add(b.size - 1));
            format!("{first}-{last}")
        }
        _ => b.first.clone(),
    }
}

pub fn racks_table(racks: &[pb::Rack]) -> String {
    let rows: Vec<Vec<String>> = racks
        .iter()
        .map(|r| vec![r.name.clone(), or_dash(&r.description)])
        .collect();
    table(&["RACK", "DESCRIPTION"], &rows)
}

/// `rack list`: the racks, then every binding (ranges and exclusions), so
/// one command shows which addresses each rack's pods may get.
pub fn racks_and_bindings(racks: &[pb::Rack], bindings: &[pb::RackNet]) -> String {
    let mut out = racks_table(racks);
    if !bindings.is_empty() {
        out.push('\n');
        out.push_str(&racknets_table(bindings));
    }
    out
}

pub fn rack_detail(d: &pb::RackDetail) -> String {
    let rack = d.rack.clone().unwrap_or_default();
    let mut out = fields(&[
        ("Name", rack.name),
        ("Description", or_dash(&rack.description)),
        ("Nodes", list(&d.nodes)),
    ]);
    if d.networks.is_empty() {
        out.push_str("Networks:    -\n");
    } else {
        out.push_str("Networks:\n");
        for line in racknets_table(&d.networks).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

pub fn racknet_detail(b: &pb::RackNet) -> String {
    fields(&[
        ("Rack", b.rack.clone()),
        ("Network", b.network.clone()),
        ("Subnet", b.subnet.clone()),
        ("Gateway", b.gateway.clone()),
        (
            "Ranges",
            if b.ranges.is_empty() {
                "whole subnet".into()
            } else {
                b.ranges.join(", ")
            },
        ),
        ("Exclude", or_dash(&b.exclude.join(", "))),
    ])
}

pub fn racknets_table(bindings: &[pb::RackNet]) -> String {
    let rows: Vec<Vec<String>> = bindings
        .iter()
        .map(|b| {
            vec![
                b.network.clone(),
                b.rack.clone(),
                b.subnet.clone(),
                b.gateway.clone(),
                if b.ranges.is_empty() {
                    "whole subnet".into()
                } else {
                    b.ranges.join(",")
                },
                or_dash(&b.exclude.join(",")),
            ]
        })
        .collect();
    table(
        &["NETWORK", "RACK", "SUBNET", "GATEWAY", "RANGES", "EXCLUDE"],
        &rows,
    )
}

pub fn nodes_table(nodes: &[pb::NodeDetail], now_unix_ms: i64) -> String {
    let rows: Vec<Vec<String>> = nodes
        .iter()
        .map(|d| {
            let n = d.node.clone().unwrap_or_default();
            let in_blocks: u64 = d.blocks.iter().map(|b| u64::from(b.size)).sum();
            vec![
                n.name,
                n.rack,
                node_state(d).to_string(),
                if d.live { "yes" } else { "no" }.to_string(),
                list(&n.addresses),
                d.blocks.len().to_string(),
                in_blocks.to_string(),
                d.leases.to_string(),
                age(n.registered_unix_ms, now_unix_ms),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "RACK",
            "STATE",
            "LIVE",
            "ADDRESSES",
            "BLOCKS",
            "IN-BLOCKS",
            "LEASES",
            "REGISTERED",
        ],
        &rows,
    )
}

pub fn node_detail(d: &pb::NodeDetail, now_unix_ms: i64) -> String {
    let n = d.node.clone().unwrap_or_default();
    let mut out = fields(&[
        ("Name", n.name),
        ("Rack", n.rack),
        ("State", node_state(d).to_string()),
        ("Live", if d.live { "yes" } else { "no" }.to_string()),
        ("Addresses", list(&n.addresses)),
        ("Registered", age(n.registered_unix_ms, now_unix_ms)),
        ("Leases", d.leases.to_string()),
    ]);
    if d.blocks.is_empty() {
        out.push_str("Blocks:      -\n");
    } else {
        out.push_str("Blocks:\n");
        for line in blocks_table(&d.blocks, now_unix_ms).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// A registered node (the reply of `node register`).
pub fn node_record(n: &pb::Node) -> String {
    fields(&[
        ("Name", n.name.clone()),
        ("Rack", n.rack.clone()),
        ("Addresses", list(&n.addresses)),
    ])
}

pub fn blocks_table(blocks: &[pb::Block], now_unix_ms: i64) -> String {
    let rows: Vec<Vec<String>> = blocks
        .iter()
        .map(|b| {
            vec![
                b.network.clone(),
                block_span(b),
                b.size.to_string(),
                b.rack.clone(),
                b.node.clone(),
                b.leased.to_string(),
                age(b.created_unix_ms, now_unix_ms),
            ]
        })
        .collect();
    table(
        &["NETWORK", "BLOCK", "SIZE", "RACK", "NODE", "LEASED", "AGE"],
        &rows,
    )
}

/// `leased / capacity` as a percentage with one decimal ("-" for an empty
/// pool).
pub fn used_percent(leased: u64, capacity: u64) -> String {
    if capacity == 0 {
        return "-".into();
    }
    let tenths = (u128::from(leased) * 1000 + u128::from(capacity) / 2) / u128::from(capacity);
    format!("{}.{}%", tenths / 10, tenths % 10)
}

/// The operator's at-a-glance view: one line per network × rack.
pub fn pool_table(rows: &[pb::UtilizationRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|u| {
            vec![
                u.network.clone(),
                or_dash(&u.rack),
                u.capacity.to_string(),
                u.blocks.to_string(),
                u.in_blocks.to_string(),
                u.leased.to_string(),
                u.free.to_string(),
                used_percent(u.leased, u.capacity),
            ]
        })
        .collect();
    table(
        &[
            "NETWORK",
            "RACK",
            "CAPACITY",
            "BLOCKS",
            "IN-BLOCKS",
            "LEASED",
            "FREE",
            "USED%",
        ],
        &cells,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        net: &str,
        rack: &str,
        cap: u64,
        blocks: u64,
        inb: u64,
        leased: u64,
    ) -> pb::UtilizationRow {
        pb::UtilizationRow {
            network: net.into(),
            rack: rack.into(),
            capacity: cap,
            blocks,
            in_blocks: inb,
            leased,
            free: cap - leased,
        }
    }

    #[test]
    fn pool_table_reads_at_a_glance() {
        let got = pool_table(&[
            row("dev", "", 253, 0, 0, 3),
            row("prod", "r1", 256, 2, 32, 17),
            row("prod", "r2", 1000, 0, 0, 0),
        ]);
        let want = "\
NETWORK   RACK   CAPACITY   BLOCKS   IN-BLOCKS   LEASED   FREE   USED%
dev       -      253        0        0           3        250    1.2%
prod      r1     256        2        32          17       239    6.6%
prod      r2     1000       0        0           0        1000   0.0%
";
        assert_eq!(got, want);
    }

    #[test]
    fn percentages_round_to_one_decimal() {
        assert_eq!(used_percent(0, 0), "-");
        assert_eq!(used_percent(1, 3), "33.3%");
        assert_eq!(used_percent(2, 3), "66.7%");
        assert_eq!(used_percent(16, 16), "100.0%");
        assert_eq!(used_percent(u64::MAX, u64::MAX), "100.0%");
    }

    #[test]
    fn blocks_show_their_span_and_json_is_camel_case() {
        let b = pb::Block {
            network: "prod".into(),
            rack: "r1".into(),
            first: "10.10.0.16".into(),
            size: 16,
            node: "n1".into(),
            created_unix_ms: 0,
            leased: 3,
        };
        let got = blocks_table(std::slice::from_ref(&b), 0);
        assert_eq!(
            got,
            "\
NETWORK   BLOCK                   SIZE   RACK   NODE   LEASED   AGE
prod      10.10.0.16-10.10.0.31   16     r1     n1     3        -
"
        );
        let v = serde_json::to_value(BlockJson::from(&b)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "network": "prod", "rack": "r1", "first": "10.10.0.16", "size": 16,
                "node": "n1", "createdUnixMs": 0, "leased": 3
            })
        );
        let v = serde_json::to_value(UtilizationJson::from(&row("p", "r", 4, 1, 4, 1))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "network": "p", "rack": "r", "capacity": 4, "blocks": 1,
                "inBlocks": 4, "leased": 1, "free": 3
            })
        );
    }

    #[test]
    fn rack_detail_lists_bindings_and_nodes() {
        let d = pb::RackDetail {
            rack: Some(pb::Rack {
                name: "r1".into(),
                description: String::new(),
            }),
            networks: vec![pb::RackNet {
                rack: "r1".into(),
                network: "prod".into(),
                subnet: "10.10.0.0/24".into(),
                gateway: "10.10.0.1".into(),
                ranges: vec![],
                exclude: vec!["10.10.0.2-10.10.0.9".into()],
            }],
            nodes: vec!["n1".into(), "n2".into()],
        };
        let want = "\
Name:        r1
Description: -
Nodes:       n1, n2
Networks:
  NETWORK   RACK   SUBNET         GATEWAY     RANGES         EXCLUDE
  prod      r1     10.10.0.0/24   10.10.0.1   whole subnet   10.10.0.2-10.10.0.9
";
        assert_eq!(rack_detail(&d), want);
        let v = serde_json::to_value(RackDetailJson::from(&d)).unwrap();
        assert_eq!(
            v["rack"],
            serde_json::json!({"name": "r1", "description": ""})
        );
        assert_eq!(v["networks"][0]["ranges"], serde_json::json!([]));
        assert_eq!(
            v["networks"][0]["exclude"],
            serde_json::json!(["10.10.0.2-10.10.0.9"])
        );
        assert_eq!(v["nodes"], serde_json::json!(["n1", "n2"]));
    }
}
