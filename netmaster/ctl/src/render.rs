//! What racklinectl prints: aligned plain-text tables for people, one JSON
//! document for scripts.
//!
//! JSON follows the proto messages with camelCase names and proto values
//! (`vlan: 0` untagged, `mtu: 0` inherit, `gw: ""` via the gateway); every
//! field is always present so `jq` filters need no defaults. Lease addresses
//! never carry a prefix length.

use std::fmt::Write as _;

use rackline_proto::admin::v1 as pb;
use serde::Serialize;

mod probe;
mod qos;
mod racks;
mod reservations;
mod update;
pub use probe::*;
pub use qos::*;
pub use racks::*;
pub use reservations::{reservations_table, ReservationJson};
pub use update::{sticky_cell, update_report, UpdateJson};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteJson {
    pub dst: String,
    pub gw: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkJson {
    pub name: String,
    pub subnet: String,
    pub gateway: String,
    pub master: String,
    pub mtu: u32,
    pub vlan: u32,
    pub exclude: Vec<String>,
    pub routes: Vec<RouteJson>,
    pub host_routes: Vec<String>,
    pub capacity: u64,
    pub allocated: u64,
    /// Rates in bits/s, bursts in bits; `{}` without QoS.
    pub qos: rackline_model::QosSpec,
    /// null = no duplicate-address probe.
    pub probe: Option<ProbeJson>,
    /// The etcd revision of the record's last write (`network update
    /// --expect-revision`).
    pub revision: i64,
}

impl From<&pb::Network> for NetworkJson {
    fn from(n: &pb::Network) -> Self {
        Self {
            name: n.name.clone(),
            subnet: n.subnet.clone(),
            gateway: n.gateway.clone(),
            master: n.master.clone(),
            mtu: n.mtu,
            vlan: n.vlan,
            exclude: n.exclude.clone(),
            routes: n
                .routes
                .iter()
                .map(|r| RouteJson {
                    dst: r.dst.clone(),
                    gw: r.gw.clone(),
                })
                .collect(),
            host_routes: n.host_routes.clone(),
            capacity: n.capacity,
            allocated: n.allocated,
            qos: rackline_admin_client::qos::network_qos_from_proto(n.qos.as_ref()),
            probe: n.probe.as_ref().map(ProbeJson::from),
            revision: n.revision,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodJson {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseJson {
    pub network: String,
    pub address: String,
    pub node: String,
    pub container_id: String,
    pub ifname: String,
    pub pod: PodJson,
    pub created_unix_ms: i64,
    /// "active", "standby" (a node's outage reserve), "reserved" (held
    /// for a sticky pod identity) or "conflict" (a quarantine record:
    /// another host answered the pod's ARP probe).
    pub state: String,
    /// Belongs to a sticky pod identity.
    pub sticky: bool,
    /// A reserved lease's end of hold (0: pinned or not reserved).
    pub expires_unix_ms: i64,
    /// Set on "conflict" records, else null.
    pub conflict: Option<ConflictJson>,
}

impl From<&pb::Lease> for LeaseJson {
    fn from(l: &pb::Lease) -> Self {
        let pod = l
            .pod
            .as_ref()
            .map(|p| PodJson {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                uid: p.uid.clone(),
            })
            .unwrap_or_default();
        Self {
            network: l.network.clone(),
            address: bare_address(&l.address).to_string(),
            node: l.node.clone(),
            container_id: l.container_id.clone(),
            ifname: l.ifname.clone(),
            pod,
            created_unix_ms: l.created_unix_ms,
            state: if l.state.is_empty() {
                "active".into()
            } else {
                l.state.clone()
            },
            sticky: l.sticky,
            expires_unix_ms: l.expires_unix_ms,
            conflict: l.conflict.as_ref().map(ConflictJson::from),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeleteJson {
    pub leases_deleted: u64,
}

/// "10.0.0.5/24" -> "10.0.0.5" (the server sends bare addresses already;
/// this keeps the contract if it ever does not).
fn bare_address(a: &str) -> &str {
    a.split_once('/').map_or(a, |(ip, _)| ip)
}

/// Columns padded to their widest cell, three spaces apart, no trailing
/// blanks.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for r in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i > 0 {
                line.push_str("   ");
            }
            line.push_str(c);
            let pad = widths
                .get(i)
                .copied()
                .unwrap_or(0)
                .saturating_sub(c.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn vlan_cell(v: u32) -> String {
    if v == 0 {
        "-".into()
    } else {
        v.to_string()
    }
}

fn mtu_cell(m: u32) -> String {
    if m == 0 {
        "auto".into()
    } else {
        m.to_string()
    }
}

pub fn networks_table(nets: &[pb::Network]) -> String {
    let rows: Vec<Vec<String>> = nets
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                n.subnet.clone(),
                n.gateway.clone(),
                n.master.clone(),
                vlan_cell(n.vlan),
                mtu_cell(n.mtu),
                format!("{}/{}", n.allocated, n.capacity),
            ]
        })
        .collect();
    table(
        &[
            "NETWORK",
            "SUBNET",
            "GATEWAY",
            "MASTER",
            "VLAN",
            "MTU",
            "USED/CAPACITY",
        ],
        &rows,
    )
}

/// One network, one field per line (for `show` and `create`).
pub fn network_detail(n: &pb::Network) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    let routes: Vec<String> = n
        .routes
        .iter()
        .map(|r| {
            if r.gw.is_empty() {
                format!("{} via gateway", r.dst)
            } else {
                format!("{} via {}", r.dst, r.gw)
            }
        })
        .collect();
    let fields = [
        ("Name", n.name.clone()),
        ("Subnet", n.subnet.clone()),
        ("Gateway", n.gateway.clone()),
        ("Master", n.master.clone()),
        ("VLAN", vlan_cell(n.vlan)),
        ("MTU", mtu_cell(n.mtu)),
        ("Used/Capacity", format!("{}/{}", n.allocated, n.capacity)),
        ("Exclude", list(&n.exclude)),
        ("Routes", list(&routes)),
        ("Host routes", list(&n.host_routes)),
        ("QoS", network_qos_cell(n.qos.as_ref())),
        ("Probe", probe_cell(n.probe.as_ref())),
        ("Sticky", sticky_cell(n.sticky.as_ref())),
        ("Block size", n.block_size.to_string()),
        ("Revision", n.revision.to_string()),
    ];
    let mut out = String::new();
    for (k, v) in fields {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{:<15}{v}", format!("{k}:"));
    }
    out
}

pub fn leases_table(leases: &[pb::Lease], now_unix_ms: i64) -> String {
    let rows: Vec<Vec<String>> = leases
        .iter()
        .map(|l| {
            // A node's outage reserve has no pod: say so instead of a dash.
            let pod = if l.state == "standby" {
                "(standby reserve)".to_string()
            } else if l.state == "reserved" {
                format!(
                    "{} (reserved)",
                    l.pod.as_ref().map(pod_display).unwrap_or_default()
                )
            } else if let Some(c) = l.conflict.as_ref().filter(|_| l.state == "conflict") {
                conflict_cell(l, c)
            } else {
                l.pod.as_ref().map(pod_display).unwrap_or_default()
            };
            vec![
                bare_address(&l.address).to_string(),
                l.network.clone(),
                or_dash(&l.node),
                or_dash(&pod),
                or_dash(&short_id(&l.container_id)),
                or_dash(&l.ifname),
                age(l.created_unix_ms, now_unix_ms),
            ]
        })
        .collect();
    table(
        &[
            "ADDRESS",
            "NETWORK",
            "NODE",
            "POD",
            "CONTAINER",
            "IFNAME",
            "AGE",
        ],
        &rows,
    )
}

fn pod_display(p: &pb::PodRef) -> String {
    if p.name.is_empty() {
        String::new()
    } else if p.namespace.is_empty() {
        p.name.clone()
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

/// Container ids are 64 hex digits; 12 identify them in practice (as
/// `docker ps`/`crictl ps` show them).
fn short_id(id: &str) -> String {
    id.chars().take(12).collect()
}

/// kubectl-style age: the largest unit, plus the next one while small.
pub fn age(created_unix_ms: i64, now_unix_ms: i64) -> String {
    if created_unix_ms <= 0 {
        return "-".into();
    }
    let s = (now_unix_ms.saturating_sub(created_unix_ms) / 1000).max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if d < 2 => format!("{h}h"),
        _ if d < 8 => format!("{d}d{}h", h % 24),
        _ => format!("{d}d"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(name: &str, vlan: u32, mtu: u32) -> pb::Network {
        pb::Network {
            name: name.into(),
            subnet: "10.10.0.0/24".into(),
            gateway: "10.10.0.1".into(),
            master: "uplink0".into(),
            mtu,
            vlan,
            exclude: vec!["10.10.0.2-10.10.0.63".into()],
            routes: vec![pb::Route {
                dst: "192.168.0.0/16".into(),
                gw: String::new(),
            }],
            host_routes: vec![],
            capacity: 190,
            allocated: 3,
            block_size: 16,
            sticky: None,
            qos: None,
            probe: None,
            revision: 7,
        }
    }

    fn lease(addr: &str, created: i64) -> pb::Lease {
        pb::Lease {
            network: "prod".into(),
            address: addr.into(),
            node: "n1".into(),
            container_id: "0123456789abcdef0123".into(),
            ifname: "eth0".into(),
            pod: Some(pb::PodRef {
                namespace: "default".into(),
                name: "web-0".into(),
                uid: "u".into(),
            }),
            created_unix_ms: created,
            state: "active".into(),
            sticky: false,
            expires_unix_ms: 0,
            conflict: None,
        }
    }

    #[test]
    fn network_table_is_aligned() {
        let got = networks_table(&[net("prod", 0, 0), net("storage-backend", 120, 9000)]);
        let want = "\
NETWORK           SUBNET         GATEWAY     MASTER    VLAN   MTU    USED/CAPACITY
prod              10.10.0.0/24   10.10.0.1   uplink0   -      auto   3/190
storage-backend   10.10.0.0/24   10.10.0.1   uplink0   120    9000   3/190
";
        assert_eq!(got, want);
    }

    #[test]
    fn empty_tables_keep_their_header() {
        assert_eq!(
            networks_table(&[]),
            "NETWORK   SUBNET   GATEWAY   MASTER   VLAN   MTU   USED/CAPACITY\n"
        );
    }

    #[test]
    fn lease_table_shortens_ids_and_strips_prefixes() {
        let now = 1_000_000_000;
        let mut anonymous = lease("10.10.0.100", 0);
        anonymous.pod = None;
        anonymous.node = String::new();
        let got = leases_table(&[lease("10.10.0.64/24", now - 75_000), anonymous], now);
        let want = "\
ADDRESS       NETWORK   NODE   POD             CONTAINER      IFNAME   AGE
10.10.0.64    prod      n1     default/web-0   0123456789ab   eth0     75s
10.10.0.100   prod      -      -               0123456789ab   eth0     -
";
        assert_eq!(got, want);
    }

    #[test]
    fn detail_lists_every_field() {
        let got = network_detail(&net("prod", 120, 0));
        let want = "\
Name:          prod
Subnet:        10.10.0.0/24
Gateway:       10.10.0.1
Master:        uplink0
VLAN:          120
MTU:           auto
Used/Capacity: 3/190
Exclude:       10.10.0.2-10.10.0.63
Routes:        192.168.0.0/16 via gateway
Host routes:   -
QoS:           -
Probe:         off
Sticky:        off
Block size:    16
Revision:      7
";
        assert_eq!(got, want);
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = 10_000_000_000;
        let ago = |s: i64| age(now - s * 1000, now);
        assert_eq!(ago(0), "0s");
        assert_eq!(ago(119), "119s");
        assert_eq!(ago(125), "2m5s");
        assert_eq!(ago(30 * 60), "30m");
        assert_eq!(ago(5 * 3600 + 60 * 7), "5h7m");
        assert_eq!(ago(20 * 3600), "20h");
        assert_eq!(ago(3 * 86400 + 3600), "3d1h");
        assert_eq!(ago(30 * 86400), "30d");
        // Clock skew never shows a negative age.
        assert_eq!(age(now + 5000, now), "0s");
        assert_eq!(age(0, now), "-");
    }

    #[test]
    fn json_uses_camel_case_and_bare_addresses() {
        let v = serde_json::to_value(LeaseJson::from(&lease("10.10.0.64/24", 7))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "network": "prod", "address": "10.10.0.64", "node": "n1",
                "containerId": "0123456789abcdef0123", "ifname": "eth0",
                "pod": {"namespace": "default", "name": "web-0", "uid": "u"},
                "createdUnixMs": 7, "state": "active", "sticky": false, "expiresUnixMs": 0,
                "conflict": null
            })
        );
        let v = serde_json::to_value(NetworkJson::from(&net("prod", 0, 1500))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "name": "prod", "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
                "master": "uplink0", "mtu": 1500, "vlan": 0,
                "exclude": ["10.10.0.2-10.10.0.63"],
                "routes": [{"dst": "192.168.0.0/16", "gw": ""}],
                "hostRoutes": [], "capacity": 190, "allocated": 3, "qos": {}, "probe": null,
                "revision": 7
            })
        );
        let v = serde_json::to_value(DeleteJson { leases_deleted: 2 }).unwrap();
        assert_eq!(v, serde_json::json!({"leasesDeleted": 2}));
    }
}
