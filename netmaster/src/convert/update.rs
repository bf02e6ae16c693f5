//! `UpdateNetworkRequest` -> [`NetworkPatch`]: every value parsed here, so a
//! malformed one is refused before anything is read from etcd.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rackline_model::network::parse_cidr;
use rackline_model::network_update::{Edit, ListEdit, ProbeEdit, QosEdit, StickyEdit};
use rackline_model::{AddrRange, NetworkPatch, ValidationError};
use rackline_proto::admin::v1 as pb;

use super::{bandwidth_from_proto, parse_subnet, route_from_proto, vlan_from_proto, ConvertError};

fn list<T>(
    e: Option<&pb::ListEdit>,
    parse: impl Fn(&str) -> Result<T, ValidationError>,
) -> Result<ListEdit<T>, ValidationError> {
    let Some(e) = e else {
        return Ok(ListEdit::default());
    };
    Ok(ListEdit {
        clear: e.clear,
        remove: e
            .remove
            .iter()
            .map(|s| parse(s))
            .collect::<Result<_, _>>()?,
        add: e.add.iter().map(|s| parse(s)).collect::<Result<_, _>>()?,
    })
}

fn text(s: &str) -> Result<String, ValidationError> {
    Ok(s.to_string())
}

// Stays long: one validated field per optional field of the update
// request, in proto order; a single linear mapping.
pub fn patch_from_proto(r: &pb::UpdateNetworkRequest) -> Result<NetworkPatch, ConvertError> {
    rackline_model::network::validate_name(&r.name)?;
    let gateway = r
        .gateway
        .as_deref()
        .map(|g| {
            g.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| ConvertError::Gateway(g.to_string()))
        })
        .transpose()?;
    let routes = match &r.routes {
        None => ListEdit::default(),
        Some(e) => ListEdit {
            clear: e.clear,
            remove: e
                .remove
                .iter()
                .map(|d| parse_cidr(d))
                .collect::<Result<Vec<Ipv4Network>, _>>()?,
            add: e
                .add
                .iter()
                .map(route_from_proto)
                .collect::<Result<_, _>>()?,
        },
    };
    let sticky = match &r.sticky {
        None => StickyEdit::default(),
        Some(s) => StickyEdit {
            disable: s.disable,
            enable: s.enable,
            namespaces: list(s.namespaces.as_ref(), text)?,
            pod_patterns: list(s.pod_patterns.as_ref(), text)?,
            hold_secs: s.hold_secs,
            cross_rack: match s.cross_rack.trim() {
                "" => None,
                c => Some(c.parse().map_err(ValidationError::Sticky)?),
            },
        },
    };
    let qos = match &r.qos {
        None => QosEdit::default(),
        Some(q) => {
            let level = |set: Option<&pb::Bandwidth>, clear: bool, what: &str| match (set, clear) {
                (Some(_), true) => Err(ConvertError::Conflicting(format!(
                    "{what}: set and cleared at once"
                ))),
                (Some(b), false) => Ok(Some(Edit::Set(bandwidth_from_proto(b)))),
                (None, true) => Ok(Some(Edit::Clear)),
                (None, false) => Ok(None),
            };
            let mut add: Vec<_> = q
                .set_classes
                .iter()
                .map(|(k, v)| (k.trim().to_string(), bandwidth_from_proto(v)))
                .collect();
            add.sort_by(|a, b| a.0.cmp(&b.0));
            QosEdit {
                default: level(q.set_default.as_ref(), q.clear_default, "QoS default")?,
                max: level(q.set_max.as_ref(), q.clear_max, "QoS max")?,
                classes: ListEdit {
                    clear: q.clear_classes,
                    remove: q
                        .remove_classes
                        .iter()
                        .map(|c| c.trim().to_string())
                        .collect(),
                    add,
                },
            }
        }
    };
    let probe = match &r.probe {
        None => ProbeEdit::default(),
        Some(p) => ProbeEdit {
            disable: p.disable,
            enable: p.enable,
            count: p.count,
            interval_ms: p.interval_ms,
            quarantine_secs: p.quarantine_secs,
        },
    };
    Ok(NetworkPatch {
        subnet: r.subnet.as_deref().map(parse_subnet).transpose()?,
        gateway,
        master: r.master.clone(),
        vlan: r.vlan.map(vlan_from_proto).transpose()?,
        mtu: r.mtu,
        block_size: r.block_size,
        exclude: list(r.exclude.as_ref(), |s| s.parse::<AddrRange>())?,
        routes,
        host_routes: list(r.host_routes.as_ref(), parse_cidr)?,
        sticky,
        qos,
        probe,
    })
}

pub fn update_report_to_proto(r: &crate::admin::UpdateReport) -> pb::UpdateNetworkReply {
    pb::UpdateNetworkReply {
        network: Some(super::network_to_proto(&r.view)),
        changes: r.changes.clone(),
        differing: r
            .differing
            .iter()
            .map(|(l, d)| pb::PodDifference {
                lease: Some(super::lease_to_proto(l)),
                differences: d.clone(),
            })
            .collect(),
        standby_returned: r.standby_returned.iter().map(ToString::to_string).collect(),
        standby_pending: r.standby_pending.iter().map(ToString::to_string).collect(),
        dry_run: r.dry_run,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_are_no_change_and_values_are_parsed() {
        let p = patch_from_proto(&pb::UpdateNetworkRequest {
            name: "prod".into(),
            mtu: Some(9000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            p,
            NetworkPatch {
                mtu: Some(9000),
                ..Default::default()
            }
        );
        let bad = patch_from_proto(&pb::UpdateNetworkRequest {
            name: "prod".into(),
            exclude: Some(pb::ListEdit {
                add: vec!["10.0.0.9-10.0.0.2".into()],
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            bad.to_string().contains("first address is after last"),
            "{bad}"
        );
        let bad = patch_from_proto(&pb::UpdateNetworkRequest {
            name: "prod".into(),
            vlan: Some(5000),
            ..Default::default()
        })
        .unwrap_err();
        assert!(bad.to_string().contains("VLAN id 5000"), "{bad}");
    }
}
