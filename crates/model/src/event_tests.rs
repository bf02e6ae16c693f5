use super::*;
use crate::lease::ConflictInfo;

fn lease(state: LeaseState, container: &str) -> Lease {
    Lease {
        network: "prod".into(),
        address: "10.10.0.70".parse().unwrap(),
        node: "n1".into(),
        container_id: container.into(),
        ifname: if container.is_empty() { "" } else { "eth0" }.into(),
        pod: PodRef {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: "u1".into(),
        },
        created_unix_ms: 1_000,
        state,
        sticky: false,
        new_identity: false,
        settings: None,
        expires_unix_ms: None,
        conflict: None,
    }
}

fn json(l: &Lease) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(l).unwrap())
}

fn change(prev: Option<Vec<u8>>, cur: Option<Vec<u8>>) -> RawChange {
    RawChange {
        record: Record::Lease {
            network: "prod".into(),
            address: "10.10.0.70".parse().unwrap(),
        },
        prev,
        cur,
    }
}

fn rack(_: &str, _: Ipv4Addr, node: &str) -> String {
    if node.is_empty() { "?" } else { "r1" }.to_string()
}

fn one(ch: RawChange) -> Option<LeaseEvent> {
    let mut v = derive(42, &[ch], 9_999, &rack);
    assert!(v.len() <= 1, "{v:?}");
    v.pop()
}

fn kind(ch: RawChange) -> Option<EventKind> {
    one(ch).map(|e| e.kind)
}

#[test]
fn lease_transitions_map_to_kinds() {
    use LeaseState::*;
    let active = lease(Active, "c1");
    let standby = lease(Standby, "");
    let mut reserved = lease(Reserved, "");
    reserved.sticky = true;
    reserved.expires_unix_ms = Some(5_000);
    let conflict = active
        .clone()
        .into_conflict("02:00:00:00:00:09", 3_000, 600);
    let cases = [
        (None, Some(&active), Some(EventKind::Allocated)),
        (None, Some(&standby), None),
        (Some(&standby), None, None),
        (Some(&standby), Some(&active), Some(EventKind::Allocated)),
        (Some(&active), Some(&standby), Some(EventKind::Released)),
        (Some(&active), None, Some(EventKind::Released)),
        (Some(&active), Some(&reserved), Some(EventKind::Reserved)),
        (Some(&reserved), Some(&active), Some(EventKind::Allocated)),
        (Some(&reserved), None, Some(EventKind::Unreserved)),
        (Some(&reserved), Some(&reserved), None),
        (Some(&active), Some(&conflict), Some(EventKind::Conflict)),
        (Some(&conflict), None, Some(EventKind::Unquarantined)),
        (Some(&active), Some(&active), None),
    ];
    for (prev, cur, want) in cases {
        let got = kind(change(prev.and_then(json), cur.and_then(json)));
        assert_eq!(
            got,
            want,
            "{:?} -> {:?}",
            prev.map(|l| l.state),
            cur.map(|l| l.state)
        );
    }
    // A new incarnation taking the lease over.
    let mut taken = active.clone();
    taken.container_id = "c2".into();
    assert_eq!(
        kind(change(json(&active), json(&taken))),
        Some(EventKind::Allocated)
    );
}

#[test]
fn events_carry_the_record_and_the_right_time() {
    let active = lease(LeaseState::Active, "c1");
    let e = one(change(None, json(&active))).unwrap();
    assert_eq!(e.revision, 42);
    assert_eq!((e.index, e.time_unix_ms), (0, 1_000));
    assert_eq!(e.mac, "0a:58:0a:0a:00:46");
    assert_eq!((e.rack.as_str(), e.node.as_str()), ("r1", "n1"));
    assert_eq!((e.container_id.as_str(), e.ifname.as_str()), ("c1", "eth0"));
    assert_eq!(e.pod.name, "web-0");
    // A deletion: the record that went away, stamped when it was seen.
    let e = one(change(json(&active), None)).unwrap();
    assert_eq!((e.kind, e.time_unix_ms), (EventKind::Released, 9_999));
    assert_eq!(e.container_id, "c1");
    // JSON is camelCase with kebab-case kinds.
    let j = serde_json::to_value(&e).unwrap();
    assert_eq!(j["kind"], "released");
    assert_eq!(j["containerId"], "c1");
    assert_eq!(j["address"], "10.10.0.70");
    let back: LeaseEvent = serde_json::from_value(j).unwrap();
    assert_eq!(back, e);
}

#[test]
fn the_reclaim_marker_turns_a_release_into_a_reclaim() {
    let active = lease(LeaseState::Active, "c1");
    let marked = marked_lease_json(&active, reclaim::GC, 7_777);
    // Old readers still read the marked record.
    let decoded: Lease = serde_json::from_slice(&marked).unwrap();
    assert_eq!(decoded, active);
    assert_eq!(reclaim_marker(&marked), Some(("gc".into(), 7_777)));
    assert_eq!(reclaim_marker(&json(&active).unwrap()), None);
    // Marking is no event; the delete that follows is a reclaim.
    assert_eq!(kind(change(json(&active), Some(marked.clone()))), None);
    let e = one(change(Some(marked.clone()), None)).unwrap();
    assert_eq!(e.kind, EventKind::Reclaimed);
    assert_eq!((e.reason.as_str(), e.time_unix_ms), ("gc", 7_777));
    // A sticky pod's lease reclaimed: reserved, with the reason and the
    // container that left.
    let mut reserved = lease(LeaseState::Reserved, "");
    reserved.sticky = true;
    let e = one(change(Some(marked), json(&reserved))).unwrap();
    assert_eq!(e.kind, EventKind::Reserved);
    assert_eq!((e.reason.as_str(), e.container_id.as_str()), ("gc", "c1"));
}

#[test]
fn conflicts_quarantined_or_recorded_on_a_sticky_lease() {
    let active = lease(LeaseState::Active, "c1");
    let q = active
        .clone()
        .into_conflict("02:00:00:00:00:09", 3_000, 600);
    let e = one(change(json(&active), json(&q))).unwrap();
    assert_eq!(e.kind, EventKind::Conflict);
    assert!(e.quarantined);
    assert_eq!(e.conflict_mac, "02:00:00:00:00:09");
    assert_eq!((e.container_id.as_str(), e.time_unix_ms), ("c1", 3_000));
    let mut sticky = active.clone();
    sticky.sticky = true;
    let mut flagged = sticky.clone();
    flagged.conflict = Some(Box::new(ConflictInfo {
        mac: "02:00:00:00:00:0a".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
        detected_unix_ms: 4_000,
        quarantine_secs: 0,
    }));
    let e = one(change(json(&sticky), json(&flagged))).unwrap();
    assert_eq!(e.kind, EventKind::Conflict);
    assert!(!e.quarantined);
    assert_eq!(e.conflict_mac, "02:00:00:00:00:0a");
    // The same conflict recorded again is no new event.
    assert_eq!(kind(change(json(&flagged), json(&flagged))), None);
    let e = one(change(json(&q), None)).unwrap();
    assert_eq!(e.kind, EventKind::Unquarantined);
}

#[test]
fn a_pin_is_one_event_with_the_identity() {
    let ident = Identity {
        network: "prod".into(),
        namespace: "shop".into(),
        name: "db-0".into(),
        address: "10.10.0.70".parse().unwrap(),
        pinned: true,
        rack: Some("r1".into()),
        created_unix_ms: 1,
        opt_in: false,
    };
    let mut reserved = lease(LeaseState::Reserved, "");
    reserved.sticky = true;
    reserved.pod.name = "db-0".into();
    let changes = [
        RawChange {
            record: Record::Identity {
                network: "prod".into(),
                namespace: "shop".into(),
                name: "db-0".into(),
            },
            prev: None,
            cur: Some(serde_json::to_vec(&ident).unwrap()),
        },
        change(None, json(&reserved)),
    ];
    let v = derive(7, &changes, 5_000, &rack);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].kind, EventKind::Pinned);
    assert_eq!(v[0].pod.name, "db-0");
    assert_eq!(v[0].time_unix_ms, 5_000);
    // Re-writing an already pinned identity is no event.
    let again = [RawChange {
        prev: Some(serde_json::to_vec(&ident).unwrap()),
        ..changes[0].clone()
    }];
    assert!(derive(8, &again, 5_000, &rack).is_empty());
}

#[test]
fn several_changes_of_one_revision_are_indexed_in_order() {
    let a = lease(LeaseState::Active, "c1");
    let mut b = lease(LeaseState::Active, "c2");
    b.address = "10.10.0.71".parse().unwrap();
    let mut ch_b = change(None, json(&b));
    ch_b.record = Record::Lease {
        network: "prod".into(),
        address: b.address,
    };
    let v = derive(9, &[change(json(&a), None), ch_b], 1, &rack);
    let got: Vec<(u32, EventKind)> = v.iter().map(|e| (e.index, e.kind)).collect();
    assert_eq!(got, [(0, EventKind::Released), (1, EventKind::Allocated)]);
    for k in EventKind::ALL {
        assert_eq!(EventKind::parse(k.as_str()), Some(k));
    }
}
