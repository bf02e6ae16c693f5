//! Per-pod bandwidth shaping, inside the pod netns, through netlink.
//!
//! * egress: a tbf as the root qdisc of the pod's macvlan;
//! * ingress: the ingress qdisc on the macvlan + a match-all u32 filter
//!   whose mirred action redirects every arriving frame to an ifb in the
//!   pod netns, which carries the tbf. (The reference `bandwidth` plugin
//!   needs a host-side veth peer, which a macvlan pod does not have
//!   (plugins #413); doing it all inside the pod is what works.)
//!
//! The ifb is born in the attachment's device group and carries its owner
//! mark, so DEL's one group delete removes it with the macvlan (whose
//! qdiscs and filter go with it). Qdiscs are only ever added to links this
//! ADD just created, and never deleted on their own.

use rackline_model::qos::{self, Bandwidth, Effective, Layers, Resolved};
use rackline_netlink::{LinkInfo, NetlinkError, Tbf};
use tracing::warn;

use crate::conf::NetConf;
use crate::datapath::Undo;
use crate::error::CniError;
use crate::ipam::QosLevels;
use crate::links::TcOps;
use crate::names;
use crate::owner::{Owner, Role};

/// Queue behind the bucket, as time at the rate. The reference bandwidth
/// plugin uses 25 ms; measured here (docs/benchmarks.md, qos) 25 ms let a
/// single TCP stream through an egress tbf reach only 92 % of the rate at
/// 50 Mbit/s (tail drops on the sender's own qdisc cut its window), 50 ms
/// reaches the wire ceiling (95.6 % goodput) at 10-200 Mbit/s.
const QUEUE_LATENCY_MS: u64 = 50;

/// containerd sends `u32::MAX` as the burst of a direction whose annotation
/// sets only a rate (kubelet has no burst annotation): "unset".
const RUNTIME_BURST_UNSET: u64 = u32::MAX as u64;

/// The pod's own request from `runtimeConfig.bandwidth`, validated before
/// anything is allocated or created (bad values: code 7). A direction with
/// rate and burst both 0 or absent is unset — containerd sends zeros for the
/// direction that has no annotation.
pub fn pod_request(conf: &NetConf) -> Result<Option<Bandwidth>, CniError> {
    let Some(raw) = &conf.runtime_config.bandwidth else {
        return Ok(None);
    };
    let direction = |what: &str,
                     rate: Option<u64>,
                     burst: Option<u64>|
     -> Result<(Option<u64>, Option<u64>), CniError> {
        let burst = burst.filter(|b| *b != RUNTIME_BURST_UNSET && *b != 0);
        match (rate.filter(|r| *r != 0), burst) {
            (None, None) => Ok((None, None)),
            (None, Some(_)) => Err(CniError::config(format!(
                "runtimeConfig.bandwidth: {what}Burst is set but {what}Rate is not (or 0)"
            ))),
            (r, b) => Ok((r, b)),
        }
    };
    let (ingress_rate, ingress_burst) = direction("ingress", raw.ingress_rate, raw.ingress_burst)?;
    let (egress_rate, egress_burst) = direction("egress", raw.egress_rate, raw.egress_burst)?;
    let b = Bandwidth {
        ingress_rate,
        ingress_burst,
        egress_rate,
        egress_burst,
    };
    b.validate("runtimeConfig.bandwidth")
        .map_err(|e| CniError::config(e.to_string()))?;
    Ok((!b.is_empty()).then_some(b))
}

/// Layers ipamd's levels (network default, node class, policy, max) with
/// the pod's request: the one [`qos::resolve`].
pub fn effective(conf: &NetConf, levels: &QosLevels) -> Result<Option<Effective>, CniError> {
    let pod = pod_request(conf)?;
    qos::resolve(&Layers {
        network_default: levels.network_default.as_ref(),
        node_class: levels.node_class.as_ref(),
        policy: levels.policy.as_ref(),
        pod: pod.as_ref(),
        max: levels.max.as_ref(),
    })
    .map_err(|e| CniError::IpamUnusable(format!("QoS levels: {e}")))
}

/// The tbf for one resolved direction on a device with `mtu`: rate and
/// burst in bytes, the burst at least one full frame of the device (else
/// tbf could never send a full-size packet), and a queue of
/// [`QUEUE_LATENCY_MS`] at the rate behind it.
pub fn tbf_for(r: &Resolved, mtu: u32) -> Tbf {
    let rate = (r.limit.rate / 8).max(1);
    let burst_bits = r
        .limit
        .burst
        .unwrap_or_else(|| qos::default_burst(r.limit.rate));
    let frame = u64::from(mtu) + 14;
    let burst = burst_bits.div_ceil(8).max(frame);
    let queue = rate * QUEUE_LATENCY_MS / 1000;
    Tbf {
        rate,
        burst: u32::try_from(burst).unwrap_or(u32::MAX),
        limit: u32::try_from(burst + queue.max(frame)).unwrap_or(u32::MAX),
    }
}

fn dp(what: &str, e: NetlinkError) -> CniError {
    CniError::datapath_by(format!("QoS: {what}"), e)
}

/// Applies `eff` to the pod interface `mv` (up, in the pod netns). The ifb
/// made here is in `undo` as soon as it exists, so the caller's rollback
/// deletes it; the qdiscs go with the macvlan, which that rollback deletes
/// as well.
pub(crate) fn apply(
    pod: &mut dyn TcOps,
    mv: &LinkInfo,
    owner: &Owner,
    eff: &Effective,
    undo: &mut Vec<Undo>,
) -> Result<(), CniError> {
    if let Some(e) = &eff.egress {
        pod.add_tbf(mv.index, &tbf_for(e, mv.mtu))
            .map_err(|e| dp("egress tbf", e))?;
    }
    let Some(i) = &eff.ingress else {
        return Ok(());
    };
    let name = names::ifb(&mv.name);
    // An ifb of this name left by an ADD of this attachment that died
    // before its DEL; removed only when it provably is this attachment's
    // (the macvlan next to it was just created by this ADD, which is the
    // proof an unmarked one needs). A stranger under the name fails the ADD.
    if let Some(stale) = pod
        .link_by_name(&name)
        .map_err(|e| dp("looking up the ifb", e))?
    {
        if owner.owns(&stale, Role::Ifb, true).is_none() {
            return Err(CniError::datapath(format!(
                "QoS: a link named {name} exists in the pod and is not this attachment's (kind {:?}, alias {:?})",
                stale.kind, stale.alias
            )));
        }
        warn!(%name, "removing a stale ifb from an earlier attempt");
        pod.delete_link(stale.index)
            .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
            .map_err(|e| dp("removing the stale ifb", e))?;
    }
    pod.create_ifb_in_group(&name, Some(mv.mtu), owner.group)
        .map_err(|e| dp(&format!("creating {name}"), e))?;
    // Read back by name: a failed read-back must not leak the ifb, so its
    // undo by name stands until it is known (then this step undoes it).
    undo.push(Undo::PodLinkNamed(name.clone(), Role::Ifb));
    let ifb = pod
        .link_by_name(&name)
        .map_err(|e| dp("looking up the ifb", e))?
        .ok_or_else(|| CniError::datapath(format!("QoS: {name} vanished right after creation")))?;
    // By index from now on. The ifb outlives the macvlan (only its qdiscs
    // and filter go with it), so a failure here or in a later step of ADD
    // must delete it.
    undo.pop();
    undo.push(Undo::PodLink(ifb.index, Role::Ifb));
    shape_ingress(pod, mv, &ifb, owner, i)
}

fn shape_ingress(
    pod: &mut dyn TcOps,
    mv: &LinkInfo,
    ifb: &LinkInfo,
    owner: &Owner,
    limit: &Resolved,
) -> Result<(), CniError> {
    pod.set_alias(ifb.index, &owner.mark)
        .map_err(|e| dp("marking the ifb", e))?;
    pod.set_up(ifb.index)
        .map_err(|e| dp("bringing the ifb up", e))?;
    pod.add_tbf(ifb.index, &tbf_for(limit, mv.mtu))
        .map_err(|e| dp("ingress tbf on the ifb", e))?;
    pod.add_ingress_qdisc(mv.index)
        .map_err(|e| dp("ingress qdisc", e))?;
    pod.add_ingress_redirect(mv.index, ifb.index)
        .map_err(|e| dp("ingress redirect to the ifb", e))
}

/// Verifies the shaping in the pod netns matches `eff` (CHECK).
pub fn check(
    pod: &mut dyn TcOps,
    mv: &LinkInfo,
    owner: &Owner,
    eff: Option<&Effective>,
) -> Result<(), CniError> {
    let qdiscs = pod.qdiscs(mv.index).map_err(|e| dp("listing qdiscs", e))?;
    check_egress(mv, eff, &qdiscs)?;
    check_ingress(pod, mv, owner, eff, &qdiscs)
}

fn check_failed(d: String) -> CniError {
    CniError::CheckFailed(format!("QoS: {d}"))
}

/// The egress tbf on the macvlan (`qdiscs`) is what `eff` gives, or absent
/// when no egress limit applies.
fn check_egress(
    mv: &LinkInfo,
    eff: Option<&Effective>,
    qdiscs: &[rackline_netlink::QdiscInfo],
) -> Result<(), CniError> {
    let fail = check_failed;
    let root_tbf = qdiscs.iter().find(|q| q.kind == "tbf").and_then(|q| q.tbf);
    match (eff.and_then(|e| e.egress.as_ref()), root_tbf) {
        (None, None) => Ok(()),
        (Some(want), Some(got)) => same_tbf("egress", &tbf_for(want, mv.mtu), &got).map_err(fail),
        (Some(_), None) => Err(fail(format!("the egress tbf on {} is missing", mv.name))),
        (None, Some(_)) => Err(fail(format!(
            "{} has an egress tbf but no limit applies",
            mv.name
        ))),
    }
}

/// The ingress path: this attachment's ifb, up, with the tbf `eff` gives,
/// and the macvlan's ingress qdisc redirecting everything to it; no ifb
/// when no ingress limit applies.
fn check_ingress(
    pod: &mut dyn TcOps,
    mv: &LinkInfo,
    owner: &Owner,
    eff: Option<&Effective>,
    qdiscs: &[rackline_netlink::QdiscInfo],
) -> Result<(), CniError> {
    let fail = check_failed;
    let name = names::ifb(&mv.name);
    let ifb = pod
        .link_by_name(&name)
        .map_err(|e| dp("looking up the ifb", e))?;
    let Some(want) = eff.and_then(|e| e.ingress.as_ref()) else {
        if ifb.is_some() {
            return Err(fail(format!("{name} exists but no ingress limit applies")));
        }
        return Ok(());
    };
    let ifb = ifb.ok_or_else(|| fail(format!("the ingress ifb {name} is missing")))?;
    if !ifb.up || owner.owns(&ifb, Role::Ifb, true).is_none() {
        return Err(fail(format!(
            "{name} is not this attachment's ifb, or it is down"
        )));
    }
    let got = pod
        .qdiscs(ifb.index)
        .map_err(|e| dp("listing ifb qdiscs", e))?
        .into_iter()
        .find_map(|q| q.tbf)
        .ok_or_else(|| fail(format!("the ingress tbf on {name} is missing")))?;
    same_tbf("ingress", &tbf_for(want, mv.mtu), &got).map_err(fail)?;
    if !qdiscs.iter().any(|q| q.kind == "ingress") {
        return Err(fail(format!("the ingress qdisc on {} is missing", mv.name)));
    }
    let filters = pod
        .ingress_filters(mv.index)
        .map_err(|e| dp("listing ingress filters", e))?;
    if !filters
        .iter()
        .any(|f| f.matches_all && f.redirect_to == Some(ifb.index))
    {
        return Err(fail(format!(
            "no match-all redirect from {} to {name}",
            mv.name
        )));
    }
    Ok(())
}

/// Rate and limit exactly; the burst as the kernel rounds it through psched
/// ticks (64 ns), i.e. within a few bytes.
fn same_tbf(dir: &str, want: &Tbf, got: &Tbf) -> Result<(), String> {
    let burst_ok = want.burst.abs_diff(got.burst) <= (want.rate / 1_000_000 + 2) as u32;
    if want.rate == got.rate && want.limit == got.limit && burst_ok {
        Ok(())
    } else {
        // Rates in the operator's unit (bit/s): the usual cause is a changed
        // network default, class, policy or maximum since the pod's ADD.
        Err(format!(
            "{dir} bandwidth: the pod is shaped to {} bit/s (burst {} B), its levels now give {} bit/s (burst {} B); {dir} tbf is {got:?}, expected {want:?}",
            got.rate * 8,
            got.burst,
            want.rate * 8,
            want.burst
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use rackline_model::qos::{Level, Limit};

    fn conf(rc: &str) -> NetConf {
        NetConf::parse(
            format!(r#"{{"cniVersion":"1.1.0","name":"n","runtimeConfig":{{"bandwidth":{rc}}}}}"#)
                .as_bytes(),
            crate::env::Command::Add,
        )
        .unwrap()
    }

    #[test]
    fn runtime_request_conventions() {
        // containerd: PascalCase, u32::MAX burst = unset, zeros = no annotation.
        let c = conf(
            r#"{"IngressRate":10000000,"IngressBurst":4294967295,"EgressRate":0,"EgressBurst":0}"#,
        );
        assert_eq!(
            pod_request(&c).unwrap(),
            Some(Bandwidth {
                ingress_rate: Some(10_000_000),
                ..Default::default()
            })
        );
        let c = conf(r#"{"egressRate":20000000,"egressBurst":800000}"#);
        assert_eq!(
            pod_request(&c).unwrap().unwrap().egress_burst,
            Some(800_000)
        );
        assert_eq!(pod_request(&conf("{}")).unwrap(), None);
    }

    #[test]
    fn invalid_runtime_requests_are_code_7() {
        for bad in [
            r#"{"ingressBurst":100000}"#,
            r#"{"ingressRate":0,"ingressBurst":100000}"#,
            r#"{"ingressRate":10}"#,
            r#"{"egressRate":10000000,"egressBurst":16}"#,
            r#"{"egressRate":5000000000000}"#,
        ] {
            let e = pod_request(&conf(bad)).unwrap_err();
            assert_eq!(e.code(), code::INVALID_CONFIG, "{bad}: {e}");
        }
        // Negative numbers do not even decode: also code 7.
        let e = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":{"ingressRate":-1}}}"#,
            crate::env::Command::Add,
        )
        .unwrap_err();
        assert_eq!(e.code(), code::INVALID_CONFIG);
    }

    #[test]
    fn layers_from_ipamd_and_pod() {
        let c = conf(r#"{"egressRate":20000000}"#);
        let levels = QosLevels {
            network_default: Some(Bandwidth {
                ingress_rate: Some(100_000_000),
                egress_rate: Some(100_000_000),
                ingress_burst: None,
                egress_burst: None,
            }),
            max: Some(Bandwidth {
                ingress_rate: Some(50_000_000),
                egress_rate: None,
                ingress_burst: None,
                egress_burst: None,
            }),
            ..Default::default()
        };
        let e = effective(&c, &levels).unwrap().unwrap();
        let i = e.ingress.unwrap();
        assert_eq!(
            (i.limit.rate, i.level, i.clamped),
            (50_000_000, Level::NetworkDefault, true)
        );
        let eg = e.egress.unwrap();
        assert_eq!((eg.limit.rate, eg.level), (20_000_000, Level::Pod));
        assert!(effective(&conf("{}"), &QosLevels::default())
            .unwrap()
            .is_none());
    }

    #[test]
    fn tbf_calibration() {
        let r = |rate: u64, burst: Option<u64>| Resolved {
            limit: Limit { rate, burst },
            level: Level::Pod,
            clamped: false,
        };
        // 10 Mbit/s, default burst (10 ms = 12.5 kB), 50 ms queue.
        let t = tbf_for(&r(10_000_000, None), 1500);
        assert_eq!(
            t,
            Tbf {
                rate: 1_250_000,
                burst: 12_500,
                limit: 12_500 + 62_500
            }
        );
        // A burst below one frame is raised to one frame of the device.
        let t = tbf_for(&r(10_000_000, Some(8_000)), 9000);
        assert_eq!(t.burst, 9014);
        // Tiny rates still queue at least one frame.
        let t = tbf_for(&r(1_000, None), 1500);
        assert!(t.limit >= t.burst + 1514, "{t:?}");
        assert!(same_tbf("x", &t, &t).is_ok());
        let mut off = t;
        off.rate += 1;
        assert!(same_tbf("x", &t, &off).is_err());
    }
}
