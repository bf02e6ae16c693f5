//! The QoS sections' wire form: proto <-> model for bandwidths and a
//! network's QoS section. netmaster reads what racklinectl writes with the
//! same functions, so an unset level means the same on both sides.

use rackline_model::qos::{Bandwidth, QosSpec};
use rackline_proto::admin::v1 as pb;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_qos_round_trips() {
        let mut q = QosSpec::default();
        assert!(network_qos_to_proto(&q).is_none());
        q.default = Some(Bandwidth::parse_spec("ingress=100M,egress=100M").unwrap());
        q.node_classes
            .insert("small".into(), Bandwidth::parse_spec("egress=50M").unwrap());
        let pbq = network_qos_to_proto(&q).unwrap();
        assert_eq!(network_qos_from_proto(Some(&pbq)), q);
        // An all-zero level says nothing.
        let zero = pb::NetworkQos {
            default: Some(pb::Bandwidth::default()),
            ..Default::default()
        };
        assert_eq!(network_qos_from_proto(Some(&zero)), QosSpec::default());
    }
}
