//! The shared messages moved to `rackline.common.v1` without changing a byte
//! on the wire: each encoding is compared with bytes written out by hand from
//! the field numbers and types the two APIs had before.

use prost::Message;

use crate::{admin, common, ipam};

/// Both APIs name the same Rust type, so no conversion is needed between them.
#[test]
fn both_apis_name_the_shared_types() {
    let pod: ipam::v1::PodRef = admin::v1::PodRef::default();
    let _: common::v1::PodRef = pod;
    let route: ipam::v1::Route = admin::v1::Route::default();
    let _: common::v1::Route = route;
    let bw: ipam::v1::Bandwidth = admin::v1::Bandwidth::default();
    let _: common::v1::Bandwidth = bw;
    let probe: ipam::v1::ProbeConfig = admin::v1::Probe::default();
    let _: common::v1::Probe = probe;
}

#[test]
fn pod_ref_encodes_as_before() {
    let pod = ipam::v1::PodRef {
        namespace: "ns".into(),
        name: "p".into(),
        uid: "u1".into(),
    };
    // 1: string "ns", 2: string "p", 3: string "u1".
    let want = b"\x0a\x02ns\x12\x01p\x1a\x02u1";
    assert_eq!(pod.encode_to_vec(), want);
    assert_eq!(ipam::v1::PodRef::decode(&want[..]).unwrap(), pod);
    assert_eq!(admin::v1::PodRef::decode(&want[..]).unwrap(), pod);
}

#[test]
fn route_bandwidth_and_probe_encode_as_before() {
    let route = admin::v1::Route {
        dst: "0.0.0.0/0".into(),
        gw: "10.0.0.1".into(),
    };
    assert_eq!(route.encode_to_vec(), b"\x0a\x090.0.0.0/0\x12\x0810.0.0.1");

    // Four uint64 varints, fields 1..4.
    let bw = ipam::v1::Bandwidth {
        ingress_rate: 1,
        ingress_burst: 300,
        egress_rate: 3,
        egress_burst: 4,
    };
    assert_eq!(bw.encode_to_vec(), b"\x08\x01\x10\xac\x02\x18\x03\x20\x04");

    // uint32 count = 1, uint32 interval_ms = 2, uint64 quarantine_secs = 3.
    let probe = ipam::v1::ProbeConfig {
        count: 3,
        interval_ms: 100,
        quarantine_secs: 600,
    };
    assert_eq!(probe.encode_to_vec(), b"\x08\x03\x10\x64\x18\xd8\x04");
}

/// The messages that embed the shared ones keep their field numbers: a pod
/// inside an AllocateRequest (field 4) and a Lease of either API (field 6),
/// a probe inside a NetworkConfig (field 9) and an admin Network (field 14).
#[test]
fn embedding_messages_encode_as_before() {
    let pod = common::v1::PodRef {
        namespace: "ns".into(),
        name: "p".into(),
        uid: "u1".into(),
    };
    let pod_bytes: &[u8] = b"\x0a\x02ns\x12\x01p\x1a\x02u1";

    let req = ipam::v1::AllocateRequest {
        pod: Some(pod.clone()),
        ..Default::default()
    };
    let mut want = vec![0x22, pod_bytes.len() as u8];
    want.extend_from_slice(pod_bytes);
    assert_eq!(req.encode_to_vec(), want);

    let mut want = vec![0x32, pod_bytes.len() as u8];
    want.extend_from_slice(pod_bytes);
    let ipam_lease = ipam::v1::Lease {
        pod: Some(pod.clone()),
        ..Default::default()
    };
    assert_eq!(ipam_lease.encode_to_vec(), want);
    let admin_lease = admin::v1::Lease {
        pod: Some(pod),
        ..Default::default()
    };
    assert_eq!(admin_lease.encode_to_vec(), want);

    let probe = common::v1::Probe {
        count: 3,
        interval_ms: 0,
        quarantine_secs: 0,
    };
    let cfg = ipam::v1::NetworkConfig {
        probe: Some(probe),
        ..Default::default()
    };
    assert_eq!(cfg.encode_to_vec(), b"\x4a\x02\x08\x03");
    let net = admin::v1::Network {
        probe: Some(probe),
        ..Default::default()
    };
    // Field 14, length-delimited: tag (14 << 3) | 2 = 0x72.
    assert_eq!(net.encode_to_vec(), b"\x72\x02\x08\x03");
}
