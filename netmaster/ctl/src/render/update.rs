//! `network update`'s report and the sticky cell of `network show`.

use std::fmt::Write as _;

use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use super::{bare_address, pod_display, LeaseJson, NetworkJson};

pub fn sticky_cell(p: Option<&pb::StickyPolicy>) -> String {
    let Some(p) = p else {
        return "off".into();
    };
    let who = match (p.namespaces.is_empty(), p.pod_patterns.is_empty()) {
        (true, true) => "every pod".to_string(),
        (false, true) => format!("namespaces {}", p.namespaces.join(", ")),
        (true, false) => format!("pods {}", p.pod_patterns.join(", ")),
        (false, false) => format!(
            "namespaces {}, pods {}",
            p.namespaces.join(", "),
            p.pod_patterns.join(", ")
        ),
    };
    let cross = if p.cross_rack.is_empty() {
        "strict"
    } else {
        p.cross_rack.as_str()
    };
    format!(
        "{who}; hold {}s; cross-rack {cross}",
        p.hold_secs
            .unwrap_or(rackline_model::sticky::DEFAULT_HOLD_SECS)
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DifferenceJson {
    pub lease: LeaseJson,
    pub differences: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateJson {
    pub network: Option<NetworkJson>,
    pub changes: Vec<String>,
    pub differing: Vec<DifferenceJson>,
    pub standby_returned: Vec<String>,
    pub standby_pending: Vec<String>,
    pub dry_run: bool,
}

impl From<&pb::UpdateNetworkReply> for UpdateJson {
    fn from(r: &pb::UpdateNetworkReply) -> Self {
        Self {
            network: r.network.as_ref().map(NetworkJson::from),
            changes: r.changes.clone(),
            differing: r
                .differing
                .iter()
                .filter_map(|d| {
                    d.lease.as_ref().map(|l| DifferenceJson {
                        lease: LeaseJson::from(l),
                        differences: d.differences.clone(),
                    })
                })
                .collect(),
            standby_returned: r.standby_returned.clone(),
            standby_pending: r.standby_pending.clone(),
            dry_run: r.dry_run,
        }
    }
}

/// What changed, and which running pods now differ (they keep what they
/// got at ADD until re-created).
pub fn update_report(r: &pb::UpdateNetworkReply) -> String {
    let name = r.network.as_ref().map(|n| n.name.as_str()).unwrap_or("");
    let mut out = String::new();
    let verb = if r.dry_run { "would change" } else { "changed" };
    if r.changes.is_empty() {
        let _ = writeln!(out, "network {name}: nothing to change");
    } else {
        let _ = writeln!(out, "network {name} {verb}:");
        for c in &r.changes {
            let _ = writeln!(out, "  {c}");
        }
    }
    if !r.standby_returned.is_empty() {
        let _ = writeln!(
            out,
            "standby addresses returned (now excluded): {}",
            r.standby_returned.join(", ")
        );
    }
    if !r.standby_pending.is_empty() {
        let what = if r.dry_run {
            "standby addresses their nodes would give back (now excluded)"
        } else {
            "standby addresses not given back yet (their ipamds return them on their own)"
        };
        let _ = writeln!(out, "{what}: {}", r.standby_pending.join(", "));
    }
    if !r.differing.is_empty() {
        let _ = writeln!(
            out,
            "{} running pod(s) differ from the network now (re-create them to apply it):",
            r.differing.len()
        );
        for d in &r.differing {
            let Some(l) = &d.lease else { continue };
            let pod = l.pod.as_ref().map(pod_display).unwrap_or_default();
            let who = if pod.is_empty() {
                format!("container {}", l.container_id)
            } else {
                pod
            };
            let _ = writeln!(
                out,
                "  {who} ({} on {}): {}",
                bare_address(&l.address),
                l.node,
                d.differences.join("; ")
            );
        }
    }
    out
}
