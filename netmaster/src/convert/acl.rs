//! ACLs: proto <-> model. Rules travel in their text form
//! (`AclRule`'s `FromStr`/`Display`), parsed and validated here so a bad
//! rule is refused with its reason before anything is stored.

use rackline_model::acl::{Acl, AclDefault, AclRule};
use rackline_model::filter::Verdict;
use rackline_model::ValidationError;
use rackline_proto::admin::v1 as pb;

use super::ConvertError;

fn rules(list: &[String]) -> Result<Vec<AclRule>, ConvertError> {
    list.iter()
        .map(|r| {
            r.parse::<AclRule>()
                .map_err(|e| ConvertError::Invalid(ValidationError::from(e)))
        })
        .collect()
}

pub fn acl_from_proto(p: &pb::Acl) -> Result<Acl, ConvertError> {
    let acl = Acl {
        network: p.network.trim().to_string(),
        namespace: p.namespace.trim().to_string(),
        name: p.name.trim().to_string(),
        pod_pattern: Some(p.pod_pattern.trim().to_string()).filter(|s| !s.is_empty()),
        order: p.order,
        ingress: rules(&p.ingress)?,
        egress: rules(&p.egress)?,
    };
    acl.validate().map_err(ValidationError::from)?;
    Ok(acl)
}

pub fn acl_to_proto(a: &Acl) -> pb::Acl {
    pb::Acl {
        network: a.network.clone(),
        namespace: a.namespace.clone(),
        name: a.name.clone(),
        pod_pattern: a.pod_pattern.clone().unwrap_or_default(),
        order: a.order,
        ingress: a.ingress.iter().map(|r| r.to_string()).collect(),
        egress: a.egress.iter().map(|r| r.to_string()).collect(),
    }
}

pub fn verdict_from_str(what: &str, s: &str) -> Result<Verdict, ConvertError> {
    match s.trim().to_ascii_lowercase().as_str() {
        "allow" => Ok(Verdict::Allow),
        "deny" => Ok(Verdict::Deny),
        other => Err(ConvertError::Invalid(ValidationError::from(
            rackline_model::acl::AclError::Acl(
                format!("default {what}"),
                format!("{other:?}: use allow or deny"),
            ),
        ))),
    }
}

pub fn verdict_str(v: Verdict) -> String {
    match v {
        Verdict::Allow => "allow".into(),
        Verdict::Deny => "deny".into(),
    }
}

pub fn acl_default_from_proto(p: &pb::AclDefault) -> Result<(String, AclDefault), ConvertError> {
    let network = p.network.trim().to_string();
    rackline_model::network::validate_name(&network).map_err(ConvertError::Invalid)?;
    Ok((
        network,
        AclDefault {
            ingress: verdict_from_str("ingress", &p.ingress)?,
            egress: verdict_from_str("egress", &p.egress)?,
        },
    ))
}

pub fn acl_default_to_proto(network: &str, d: &AclDefault) -> pb::AclDefault {
    pb::AclDefault {
        network: network.to_string(),
        ingress: verdict_str(d.ingress),
        egress: verdict_str(d.egress),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_bad_rules_with_the_reason() {
        let p = pb::Acl {
            network: "prod".into(),
            namespace: "shop".into(),
            name: "web".into(),
            pod_pattern: "web-.*".into(),
            order: 10,
            ingress: vec!["allow tcp:80 10.0.0.0/8".into()],
            egress: vec!["deny udp:53".into()],
        };
        let m = acl_from_proto(&p).unwrap();
        assert_eq!(acl_to_proto(&m), p);
        let mut bad = p.clone();
        bad.ingress = vec!["allow tcp:80 10.0.0.1/8".into()];
        let e = acl_from_proto(&bad).unwrap_err().to_string();
        assert!(e.contains("host bits set"), "{e}");
        let e = acl_default_from_proto(&pb::AclDefault {
            network: "prod".into(),
            ingress: "drop".into(),
            egress: "allow".into(),
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("use allow or deny"), "{e}");
    }
}
