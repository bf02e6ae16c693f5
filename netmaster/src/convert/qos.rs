//! QoS: proto <-> model for network QoS sections and policies.

use rackline_model::qos::{Bandwidth, QosPolicy, QosSpec};
use rackline_model::ValidationError;
use rackline_proto::admin::v1 as pb;

use super::ConvertError;

pub fn bandwidth_from_proto(b: &pb::Bandwidth) -> Bandwidth {
    let nz = |v: u64| (v != 0).then_some(v);
    Bandwidth {
        ingress_rate: nz(b.ingress_rate),
        ingress_burst: nz(b.ingress_burst),
        egress_rate: nz(b.egress_rate),
        egress_burst: nz(b.egress_burst),
    }
}

pub fn bandwidth_to_proto(b: &Bandwidth) -> pb::Bandwidth {
    pb::Bandwidth {
        ingress_rate: b.ingress_rate.unwrap_or(0),
        ingress_burst: b.ingress_burst.unwrap_or(0),
        egress_rate: b.egress_rate.unwrap_or(0),
        egress_burst: b.egress_burst.unwrap_or(0),
    }
}

/// An absent or all-zero bandwidth is "this level says nothing".
fn level(b: Option<&pb::Bandwidth>) -> Option<Bandwidth> {
    b.map(bandwidth_from_proto).filter(|b| !b.is_empty())
}

/// Validated by `NetworkSpec::validate` with the rest of the network.
pub fn network_qos_from_proto(q: Option<&pb::NetworkQos>) -> QosSpec {
    let Some(q) = q else {
        return QosSpec::default();
    };
    QosSpec {
        default: level(q.default.as_ref()),
        max: level(q.max.as_ref()),
        node_classes: q
            .node_classes
            .iter()
            .map(|(k, v)| (k.clone(), bandwidth_from_proto(v)))
            .collect(),
    }
}

pub fn network_qos_to_proto(q: &QosSpec) -> Option<pb::NetworkQos> {
    (!q.is_empty()).then(|| pb::NetworkQos {
        default: q.default.as_ref().map(bandwidth_to_proto),
        max: q.max.as_ref().map(bandwidth_to_proto),
        node_classes: q
            .node_classes
            .iter()
            .map(|(k, v)| (k.clone(), bandwidth_to_proto(v)))
            .collect(),
    })
}

pub fn policy_from_proto(p: &pb::QosPolicy) -> Result<QosPolicy, ConvertError> {
    let policy = QosPolicy {
        network: p.network.trim().to_string(),
        namespace: p.namespace.trim().to_string(),
        name: p.name.trim().to_string(),
        pod_pattern: Some(p.pod_pattern.trim().to_string()).filter(|s| !s.is_empty()),
        bandwidth: p
            .bandwidth
            .as_ref()
            .map(bandwidth_from_proto)
            .unwrap_or_default(),
    };
    policy.validate().map_err(ValidationError::from)?;
    Ok(policy)
}

pub fn policy_to_proto(p: &QosPolicy) -> pb::QosPolicy {
    pb::QosPolicy {
        network: p.network.clone(),
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        pod_pattern: p.pod_pattern.clone().unwrap_or_default(),
        bandwidth: Some(bandwidth_to_proto(&p.bandwidth)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_validates() {
        let mut q = QosSpec::default();
        assert!(network_qos_to_proto(&q).is_none());
        q.default = Some(Bandwidth::parse_spec("ingress=100M,egress=100M").unwrap());
        q.node_classes
            .insert("small".into(), Bandwidth::parse_spec("egress=50M").unwrap());
        let pbq = network_qos_to_proto(&q).unwrap();
        assert_eq!(network_qos_from_proto(Some(&pbq)), q);

        let p = pb::QosPolicy {
            network: "prod".into(),
            namespace: "shop".into(),
            name: "web".into(),
            pod_pattern: "web-.*".into(),
            bandwidth: Some(pb::Bandwidth {
                egress_rate: 10_000_000,
                ..Default::default()
            }),
        };
        let m = policy_from_proto(&p).unwrap();
        assert_eq!(policy_to_proto(&m), p);
        let mut empty = p.clone();
        empty.bandwidth = None;
        assert!(policy_from_proto(&empty).is_err());
    }
}
