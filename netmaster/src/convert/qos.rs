//! QoS: proto <-> model for network QoS sections and policies.

use rackline_model::qos::QosPolicy;
use rackline_model::ValidationError;
use rackline_proto::admin::v1 as pb;

use super::ConvertError;

// The network QoS section's wire form is shared with racklinectl, which
// writes and reads it too.
pub use rackline_admin_client::qos::{
    bandwidth_from_proto, bandwidth_to_proto, network_qos_from_proto, network_qos_to_proto,
};

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
    fn policies_round_trip_and_validate() {
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
