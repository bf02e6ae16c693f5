//! Tables and JSON for QoS: policies, and the QoS lines of a network.

use rackline_model::qos::Bandwidth;
use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use super::table;

fn bw(b: Option<&pb::Bandwidth>) -> Bandwidth {
    b.map(rackline_admin_client::qos::bandwidth_from_proto)
        .unwrap_or_default()
}

/// `ingress=100M,egress=50M` or "-".
pub fn bandwidth_cell(b: Option<&pb::Bandwidth>) -> String {
    bw(b).to_string()
}

/// The QoS line of `network show`: default, max and classes.
pub fn network_qos_cell(q: Option<&pb::NetworkQos>) -> String {
    let Some(q) = q else {
        return "-".into();
    };
    let mut parts = Vec::new();
    if q.default.is_some() {
        parts.push(format!("default {}", bandwidth_cell(q.default.as_ref())));
    }
    if q.max.is_some() {
        parts.push(format!("max {}", bandwidth_cell(q.max.as_ref())));
    }
    let mut classes: Vec<_> = q.node_classes.iter().collect();
    classes.sort_by(|a, b| a.0.cmp(b.0));
    for (name, b) in classes {
        parts.push(format!("class {name} {}", bandwidth_cell(Some(b))));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

/// A policy as `racklinectl qos ... -o json` prints it: bits and bits/s,
/// `null` for what the policy does not set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QosPolicyJson {
    pub network: String,
    pub namespace: String,
    pub name: String,
    pub pod_pattern: String,
    pub ingress_rate: Option<u64>,
    pub ingress_burst: Option<u64>,
    pub egress_rate: Option<u64>,
    pub egress_burst: Option<u64>,
}

impl From<&pb::QosPolicy> for QosPolicyJson {
    fn from(p: &pb::QosPolicy) -> Self {
        let b = bw(p.bandwidth.as_ref());
        Self {
            network: p.network.clone(),
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            pod_pattern: p.pod_pattern.clone(),
            ingress_rate: b.ingress_rate,
            ingress_burst: b.ingress_burst,
            egress_rate: b.egress_rate,
            egress_burst: b.egress_burst,
        }
    }
}

pub fn qos_policies_table(ps: &[pb::QosPolicy]) -> String {
    let rows: Vec<Vec<String>> = ps
        .iter()
        .map(|p| {
            vec![
                p.network.clone(),
                p.namespace.clone(),
                p.name.clone(),
                if p.pod_pattern.is_empty() {
                    "*".into()
                } else {
                    p.pod_pattern.clone()
                },
                bandwidth_cell(p.bandwidth.as_ref()),
            ]
        })
        .collect();
    table(
        &["NETWORK", "NAMESPACE", "NAME", "PODS", "BANDWIDTH"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_json() {
        let b = pb::Bandwidth {
            ingress_rate: 100_000_000,
            egress_rate: 50_000_000,
            ..Default::default()
        };
        assert_eq!(bandwidth_cell(Some(&b)), "ingress=100M,egress=50M");
        let mut q = pb::NetworkQos {
            default: Some(b),
            ..Default::default()
        };
        q.node_classes.insert("small".into(), b);
        assert_eq!(
            network_qos_cell(Some(&q)),
            "default ingress=100M,egress=50M; class small ingress=100M,egress=50M"
        );
        assert_eq!(network_qos_cell(None), "-");
        let p = pb::QosPolicy {
            network: "prod".into(),
            namespace: "shop".into(),
            name: "web".into(),
            pod_pattern: String::new(),
            bandwidth: Some(b),
        };
        let j = serde_json::to_value(QosPolicyJson::from(&p)).unwrap();
        assert_eq!(j["egressRate"], 50_000_000);
        assert!(j["egressBurst"].is_null());
        let t = qos_policies_table(&[p]);
        assert!(t.contains("shop") && t.contains("*"), "{t}");
    }
}
