//! netmaster high availability, end to end: a real etcd, three real
//! `rackline-netmaster` replicas and the real `racklinectl`, on loopback.
//!
//! The property under test is the one whose absence gave Hybridnet and
//! Kube-OVN duplicate addresses after a failover: at most one replica can
//! write at any time, a deposed leader's write never lands (its fence fails
//! in etcd), and nothing acknowledged is lost when the leader changes.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{create_args, ctl, network_names, runtime, store, Etcd, Netmaster, PREFIX};
use nix::sys::signal::Signal;
use rackline_admin_client::{AdminClient, Timeouts};
use rackline_model::NetworkSpec;
use rackline_proto::admin::v1 as pb;
use rackline_store::Keys;
use rackline_store::{Campaign, Fence, LeaderStore, Store, StoreError};
use rackline_testkit::fixtures::network;
use tokio::runtime::Runtime;
use tonic::Code;

fn replicas(etcd: &Etcd, ids: &[&str], ttl_secs: u32) -> Vec<Netmaster> {
    let ttl = ttl_secs.to_string();
    ids.iter()
        .map(|id| Netmaster::start_with(etcd, &["--id", id, "--lease-ttl-secs", &ttl]))
        .collect()
}

fn all_urls(nms: &[Netmaster]) -> String {
    nms.iter()
        .map(|n| n.url.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The Leader RPC of one replica (no failover: we ask exactly this one).
fn leader_of(rt: &Runtime, url: &str) -> Result<pb::LeaderReply, String> {
    let t = Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(2),
    };
    rt.block_on(async {
        let mut c = AdminClient::connect(url, t)
            .await
            .map_err(|e| e.to_string())?;
        c.leader().await.map_err(|e| e.to_string())
    })
}

/// Polls `nms[live]` until exactly one says it leads and (if given) it is
/// not `not_id`; returns its index into `nms` and how long that took.
fn wait_leader(
    rt: &Runtime,
    nms: &[Netmaster],
    live: &[usize],
    not_id: Option<&str>,
    within: Duration,
) -> (usize, pb::LeaderReply, Duration) {
    let start = Instant::now();
    loop {
        let leading: Vec<(usize, pb::LeaderReply)> = live
            .iter()
            .filter_map(|&i| leader_of(rt, &nms[i].url).ok().map(|r| (i, r)))
            .filter(|(_, r)| r.is_self && Some(r.id.as_str()) != not_id)
            .collect();
        assert!(leading.len() <= 1, "two replicas lead at once: {leading:?}");
        if let Some((i, r)) = leading.into_iter().next() {
            return (i, r, start.elapsed());
        }
        assert!(
            start.elapsed() < within,
            "no leader among {live:?} within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every replica in `live` names the same leader (followers learn it from a
/// watch, so allow them a moment).
fn assert_agree(rt: &Runtime, nms: &[Netmaster], live: &[usize], leader: &pb::LeaderReply) {
    let deadline = Instant::now() + Duration::from_secs(3);
    for &i in live {
        loop {
            let r = leader_of(rt, &nms[i].url);
            if matches!(&r, Ok(r) if r.id == leader.id && r.advertise == leader.advertise) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} disagrees about the leader {leader:?}: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn raw_create(
    rt: &Runtime,
    url: &str,
    name: &str,
    subnet: &str,
    gw: &str,
) -> Result<(), tonic::Status> {
    rt.block_on(async {
        let mut c = pb::admin_client::AdminClient::connect(url.to_string())
            .await
            .expect("connect to the replica");
        c.create_network(pb::CreateNetworkRequest {
            network: Some(pb::Network {
                name: name.into(),
                subnet: subnet.into(),
                gateway: gw.into(),
                master: "uplink0".into(),
                block_size: 16,
                probe: None,
                ..Default::default()
            }),
        })
        .await
        .map(|_| ())
    })
}

/// Campaigns with `lease` for the leader key, which must be free, and
/// returns the fence of the leadership won.
async fn win(s: &Store, lease: i64) -> Fence {
    match s
        .leader_key()
        .campaign(b"{}".to_vec(), lease)
        .await
        .expect("campaign")
    {
        Campaign::Won { create_revision } => Fence {
            key: Keys::new(PREFIX).leader(),
            create_revision,
        },
        lost => panic!("campaign on a free key lost: {lost:?}"),
    }
}

/// Runs `racklinectl network create` against `servers` until a leader takes
/// it: only "no leader" refusals (exit 3) are retried, for `within` at most.
/// Returns how long writes took to resume.
fn create_once_writable(servers: &str, args: &[&str], within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    loop {
        let out = ctl(servers, args);
        if out.code == 0 {
            return start.elapsed();
        }
        assert_eq!(out.code, 3, "{what}: {out:?}");
        assert!(
            start.elapsed() < within,
            "{what}: no write within {within:?}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stored_networks(rt: &Runtime, s: &Store) -> BTreeMap<String, NetworkSpec> {
    rt.block_on(s.list_networks())
        .expect("list networks in etcd")
        .0
        .into_iter()
        .map(|n| (n.spec.name.clone(), n.spec))
        .collect()
}

fn assert_no_overlap(nets: &BTreeMap<String, NetworkSpec>) {
    let v: Vec<&NetworkSpec> = nets.values().collect();
    for (i, a) in v.iter().enumerate() {
        for b in &v[i + 1..] {
            assert!(
                !a.subnet.overlaps(b.subnet),
                "{} ({}) and {} ({}) overlap",
                a.name,
                a.subnet,
                b.name,
                b.subnet
            );
        }
    }
}

#[test]
fn three_replicas_elect_one_leader_and_followers_send_writes_to_it() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let mut nms = replicas(&etcd, &["nm-a", "nm-b", "nm-c"], 3);

    let (li, leader, _) = wait_leader(&rt, &nms, &[0, 1, 2], None, Duration::from_secs(5));
    assert_eq!(leader.advertise, nms[li].addr());
    assert_agree(&rt, &nms, &[0, 1, 2], &leader);
    let followers: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    for &f in &followers {
        let r = leader_of(&rt, &nms[f].url).expect("follower answers Leader");
        assert!(!r.is_self, "{r:?}");
    }
    // The record in etcd names the same replica.
    let key = Keys::new(PREFIX).leader();
    let rec: serde_json::Value =
        serde_json::from_str(&etcd.ctl(&["get", &key, "--print-value-only"])).expect("leader JSON");
    assert_eq!(rec["id"], leader.id.as_str());
    assert_eq!(rec["advertise"], leader.advertise.as_str());
    assert!(rec["electedUnixMs"].as_i64().unwrap_or(0) > 0, "{rec}");

    // A follower refuses a write, naming the leader, and writes nothing.
    let f = &nms[followers[0]];
    let err = raw_create(&rt, &f.url, "direct", "10.1.0.0/24", "10.1.0.1").unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("not the leader; leader is {}", leader.advertise)),
        "{err:?}"
    );
    assert!(!stored_networks(&rt, &s).contains_key("direct"));

    // racklinectl follows: followers listed first, or a follower alone.
    let list = format!(
        "{},{},{}",
        nms[followers[0]].url, nms[followers[1]].url, nms[li].url
    );
    ctl(&list, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    ctl(&f.url, &create_args("dev", "10.20.0.0/24", "10.20.0.1")).ok();
    // Followers serve reads.
    assert_eq!(network_names(&f.url), vec!["dev", "prod"]);
    assert_eq!(stored_networks(&rt, &s).len(), 2);

    // A stopped leader revokes its lease: a follower leads at once, not
    // after the 3 s TTL.
    let stopped = Instant::now();
    nms[li].terminate(Duration::from_secs(15));
    let (ni, next, took) = wait_leader(&rt, &nms, &followers, None, Duration::from_secs(5));
    assert!(
        took < Duration::from_millis(1500),
        "handover after SIGTERM took {took:?} (TTL 3 s)"
    );
    assert_ne!(next.id, leader.id);
    eprintln!("graceful handover {:?} to {}", stopped.elapsed(), next.id);
    let other = followers.iter().copied().find(|&i| i != ni).expect("other");
    assert_agree(&rt, &nms, &[other], &next);
    ctl(
        &all_urls(&nms),
        &create_args("stage", "10.30.0.0/24", "10.30.0.1"),
    )
    .ok();
    assert_eq!(stored_networks(&rt, &s).len(), 3);
}

/// A writer: creates networks through racklinectl with every replica
/// listed, walking a subnet sequence it shares with the other writer, so
/// the two keep racing for the same subnets across the failover.
fn writer(
    tag: &'static str,
    servers: String,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<(String, String, Instant)>>>,
    odd: Arc<Mutex<Vec<String>>>,
) {
    let mut k: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let name = format!("{tag}{k}");
        let subnet = format!("10.{}.{}.0/24", 100 + k / 256, k % 256);
        let gw = format!("10.{}.{}.1", 100 + k / 256, k % 256);
        let out = ctl(&servers, &create_args(&name, &subnet, &gw));
        match out.code {
            0 => {
                acked.lock().unwrap().push((name, subnet, Instant::now()));
                k += 1;
            }
            // The other writer won this subnet, or our own earlier,
            // unacknowledged attempt landed.
            1 if out.stderr.contains("overlaps") || out.stderr.contains("already exists") => k += 1,
            // No leader yet / the one named is gone: try again.
            3 => std::thread::sleep(Duration::from_millis(50)),
            1 if out.stderr.contains("not the leader") => {
                std::thread::sleep(Duration::from_millis(50))
            }
            _ => {
                odd.lock().unwrap().push(format!("{out:?}"));
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn killing_the_leader_mid_writes_loses_no_acknowledged_create() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let mut nms = replicas(&etcd, &["nm-a", "nm-b", "nm-c"], 2);
    let (li, old, _) = wait_leader(&rt, &nms, &[0, 1, 2], None, Duration::from_secs(5));

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let odd = Arc::new(Mutex::new(Vec::new()));
    let servers = all_urls(&nms);
    let writers: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|tag| {
            let (servers, stop, acked, odd) = (
                servers.clone(),
                Arc::clone(&stop),
                Arc::clone(&acked),
                Arc::clone(&odd),
            );
            std::thread::spawn(move || writer(tag, servers, stop, acked, odd))
        })
        .collect();

    let warmup = Instant::now();
    while acked.lock().unwrap().len() < 10 {
        assert!(
            warmup.elapsed() < Duration::from_secs(20),
            "writes do not get through"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = Instant::now();
    nms[li].kill9();
    let live: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let (_, new, took) = wait_leader(&rt, &nms, &live, Some(&old.id), Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(6),
        "new leader after {took:?} (TTL 2 s)"
    );
    let elected = Instant::now();
    // Writes resume through the new leader.
    loop {
        let after = acked
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, t)| *t > elected)
            .count();
        if after >= 10 {
            break;
        }
        assert!(
            elected.elapsed() < Duration::from_secs(20),
            "writes did not resume after the failover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().expect("writer thread");
    }
    let odd = odd.lock().unwrap();
    assert!(odd.is_empty(), "unexpected racklinectl outcomes: {odd:#?}");

    let nets = stored_networks(&rt, &s);
    let acked = acked.lock().unwrap();
    for (name, subnet, _) in acked.iter() {
        let n = nets
            .get(name)
            .unwrap_or_else(|| panic!("acknowledged network {name} is lost"));
        assert_eq!(n.subnet.to_string(), *subnet);
    }
    assert_no_overlap(&nets);
    eprintln!(
        "new leader {} after {took:?} (killed at +{:?}); {} acknowledged creates, {} networks",
        new.id,
        killed.duration_since(warmup),
        acked.len(),
        nets.len()
    );
}

#[test]
fn a_frozen_leader_cannot_write_after_thawing() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let nms = replicas(&etcd, &["nm-a", "nm-b", "nm-c"], 2);
    let (li, old, _) = wait_leader(&rt, &nms, &[0, 1, 2], None, Duration::from_secs(5));
    ctl(
        &nms[li].url,
        &create_args("before", "10.1.0.0/24", "10.1.0.1"),
    )
    .ok();

    // Frozen: no keep-alives; its lease expires and another replica leads.
    nms[li].signal(Signal::SIGSTOP);
    let live: Vec<usize> = (0..3).filter(|&i| i != li).collect();
    let (ni, new, took) = wait_leader(&rt, &nms, &live, Some(&old.id), Duration::from_secs(10));
    assert!(took < Duration::from_secs(6), "new leader after {took:?}");
    ctl(
        &nms[ni].url,
        &create_args("after", "10.2.0.0/24", "10.2.0.1"),
    )
    .ok();

    // Thawed, and written to at once, before it can have noticed anything:
    // the write must not land, whether its permit check or its fence in
    // etcd stops it.
    nms[li].signal(Signal::SIGCONT);
    let err = raw_create(&rt, &nms[li].url, "stale", "10.3.0.0/24", "10.3.0.1").unwrap_err();
    eprintln!("thawed leader: {:?} {}", err.code(), err.message());
    assert!(
        matches!(err.code(), Code::FailedPrecondition | Code::Unavailable),
        "{err:?}"
    );
    // Even a subnet overlapping the new leader's network: not applied.
    let _ = raw_create(&rt, &nms[li].url, "stale2", "10.2.0.0/25", "10.2.0.1").unwrap_err();
    let nets = stored_networks(&rt, &s);
    assert_eq!(
        nets.keys().collect::<Vec<_>>(),
        vec!["after", "before"],
        "a deposed leader wrote"
    );

    // It rejoins as a follower of the new leader.
    assert_agree(&rt, &nms, &[0, 1, 2], &new);
    let r = leader_of(&rt, &nms[li].url).expect("old leader answers");
    assert!(!r.is_self, "{r:?}");
    let log = nms[li].stderr();
    assert!(log.contains("leadership lost"), "{log}");
}

#[test]
fn a_stale_fence_fails_the_write_in_etcd() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let spec = |name: &str, third: u8| {
        network(
            name,
            &format!("10.9.{third}.0/24"),
            &format!("10.9.{third}.1"),
        )
    };
    rt.block_on(async {
        let l1 = s.etcd_leases().grant(5).await.expect("grant");
        let fence1 = win(&s, l1.id).await;
        let leader1 = LeaderStore::fenced(s.clone(), fence1.clone());
        leader1
            .create_network(&spec("one", 1))
            .await
            .expect("the current leader writes");
        // A second candidate loses while the key is held.
        let l2 = s.etcd_leases().grant(5).await.expect("grant");
        assert!(matches!(
            s.leader_key()
                .campaign(b"{}".to_vec(), l2.id)
                .await
                .expect("campaign"),
            Campaign::Lost {
                current: Some(_),
                ..
            }
        ));

        // Leadership ends (lease revoked: the key goes with it).
        s.etcd_leases().revoke(l1.id).await.expect("revoke");
        let e = leader1.create_network(&spec("two", 2)).await.unwrap_err();
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");

        // Someone else leads now: the old fence still fails, the new works.
        let fence2 = win(&s, l2.id).await;
        assert_ne!(fence1, fence2);
        let e = leader1.create_network(&spec("three", 3)).await.unwrap_err();
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
        let e = leader1.delete_network("one", true).await.unwrap_err();
        assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
        LeaderStore::fenced(s.clone(), fence2.clone())
            .create_network(&spec("four", 4))
            .await
            .expect("the new leader writes");
        assert!(s
            .etcd_leases()
            .keep_alive(l1.id)
            .await
            .expect("keep-alive")
            .is_none());
        let mut ka = s
            .etcd_leases()
            .keep_alive(l2.id)
            .await
            .expect("keep-alive")
            .expect("alive");
        assert!(ka
            .refresh()
            .await
            .expect("refresh")
            .is_some_and(|ttl| ttl > 0));
    });
    let nets = stored_networks(&rt, &s);
    assert_eq!(nets.keys().collect::<Vec<_>>(), vec!["four", "one"]);
}

/// Reservation pin and release are leader writes like any other: a leader
/// deposed in etcd (its key revoked, another replica elected) while its own
/// view still says it leads — the window the fence exists for — gets both
/// refused by etcd, and nothing it asked for lands.
#[test]
fn a_deposed_leaders_pin_and_release_are_refused() {
    use rackline_netmaster::admin::{AdminError, AdminService};
    use rackline_netmaster::leader::{ElectionStatus, Role};

    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let spec = network("pins", "10.8.0.0/24", "10.8.0.1");
    let ip = |last: u8| std::net::Ipv4Addr::new(10, 8, 0, last);
    rt.block_on(async {
        // An admin service whose election view says "leader" for the whole
        // test: only etcd's fence compare can stop its writes.
        let admin_of = |fence: Fence, lease: i64| {
            let status = ElectionStatus::fixed(
                "nm-test",
                "127.0.0.1:1",
                Role::Leader {
                    fence,
                    lease,
                    valid_until: tokio::time::Instant::now() + Duration::from_secs(3600),
                },
            );
            AdminService::with_fence(s.clone(), Arc::new(status))
        };
        let l1 = s.etcd_leases().grant(5).await.expect("grant");
        let fence1 = win(&s, l1.id).await;
        let old = admin_of(fence1, l1.id);
        old.networks()
            .create_network(spec.clone())
            .await
            .expect("create");
        old.reservations()
            .pin_reservation("pins", "default", "web-0", ip(10))
            .await
            .expect("the current leader pins");

        // Deposed: its key goes with its lease, another replica wins.
        s.etcd_leases().revoke(l1.id).await.expect("revoke");
        let l2 = s.etcd_leases().grant(5).await.expect("grant");
        let fence2 = win(&s, l2.id).await;

        let e = old
            .reservations()
            .pin_reservation("pins", "default", "web-1", ip(11))
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::NotPermitted(_)), "{e}");
        assert!(e.to_string().contains("leadership lost"), "{e}");
        // Moving an existing pin deletes the old one first: refused too.
        let e = old
            .reservations()
            .pin_reservation("pins", "default", "web-0", ip(12))
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::NotPermitted(_)), "{e}");
        let e = old
            .reservations()
            .release_reservation("pins", "default", "web-0", false)
            .await
            .unwrap_err();
        assert!(matches!(e, AdminError::NotPermitted(_)), "{e}");

        // Nothing the deposed leader asked for landed.
        assert!(s
            .leases()
            .get_identity("pins", "default", "web-1")
            .await
            .expect("read")
            .is_none());
        assert!(s
            .leases()
            .get_lease("pins", ip(11))
            .await
            .expect("read")
            .is_none());
        assert!(s
            .leases()
            .get_lease("pins", ip(12))
            .await
            .expect("read")
            .is_none());
        let kept = s
            .leases()
            .get_identity("pins", "default", "web-0")
            .await
            .expect("read")
            .expect("the pin is still there");
        assert_eq!(kept.identity.address, ip(10));
        assert!(s
            .leases()
            .get_lease("pins", ip(10))
            .await
            .expect("read")
            .is_some());

        // The new leader's release goes through.
        let new = admin_of(fence2, l2.id);
        assert_eq!(
            new.reservations()
                .release_reservation("pins", "default", "web-0", false)
                .await
                .expect("the new leader releases"),
            ip(10)
        );
        assert!(s
            .leases()
            .get_identity("pins", "default", "web-0")
            .await
            .expect("read")
            .is_none());
    });
}

#[test]
fn restarting_every_replica_loses_nothing() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let mut nms = replicas(&etcd, &["nm-a", "nm-b", "nm-c"], 2);
    let servers = all_urls(&nms);
    for k in 0..5 {
        let (name, subnet, gw) = (
            format!("net{k}"),
            format!("10.{k}.0.0/24"),
            format!("10.{k}.0.1"),
        );
        ctl(&servers, &create_args(&name, &subnet, &gw)).ok();
    }
    let before = ctl(&servers, &["network", "list", "-o", "json"]).json();

    // Graceful restart of all (SIGTERM), then a crash of all (SIGKILL: the
    // last leader's key lingers until its lease expires).
    for (round, crash) in [(0, false), (1, true)] {
        for nm in &mut nms {
            if crash {
                nm.kill9();
            } else {
                nm.terminate(Duration::from_secs(15));
            }
        }
        nms = replicas(&etcd, &["nm-a", "nm-b", "nm-c"], 2);
        let servers = all_urls(&nms);
        // Reads need no leader.
        let mut after = ctl(&servers, &["network", "list", "-o", "json"]).json();
        if let Some(a) = after.as_array_mut() {
            a.retain(|n| !n["name"].as_str().unwrap_or("").starts_with("new"));
        }
        assert_eq!(after, before, "round {round}");
        // Writes resume once a leader is elected (after the TTL at most).
        let name = format!("new{round}");
        let subnet = format!("10.20{round}.0.0/24");
        let gw = format!("10.20{round}.0.1");
        let took = create_once_writable(
            &servers,
            &create_args(&name, &subnet, &gw),
            Duration::from_secs(6),
            &format!("round {round}"),
        );
        eprintln!("round {round}: writable after {took:?}");
    }
    let nets = stored_networks(&rt, &s);
    assert_eq!(nets.len(), 7);
    assert_no_overlap(&nets);
}

#[test]
fn a_leader_cut_off_from_etcd_stops_writing_before_its_lease_can_expire() {
    let mut etcd = Etcd::start();
    let rt = runtime();
    let nms = replicas(&etcd, &["nm-a", "nm-b"], 2);
    let (li, _, _) = wait_leader(&rt, &nms, &[0, 1], None, Duration::from_secs(5));

    // etcd gone: no keep-alive answers, and nobody can tell the leader it
    // lost. It must stop on its own, before the 2 s TTL could run out
    // (its deadline: last keep-alive sent + TTL - TTL/6).
    let cut = Instant::now();
    etcd.kill();
    loop {
        match leader_of(&rt, &nms[li].url) {
            Ok(r) if r.is_self => {}
            Ok(r) => panic!("leadership moved while etcd is down: {r:?}"),
            Err(e) => {
                assert!(e.contains("no leader"), "{e}");
                break;
            }
        }
        assert!(
            cut.elapsed() < Duration::from_secs(2),
            "still leading {:?} after losing etcd (TTL 2 s)",
            cut.elapsed()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("stopped leading {:?} after etcd went away", cut.elapsed());
    let out = ctl(
        &nms[li].url,
        &create_args("lost", "10.5.0.0/24", "10.5.0.1"),
    );
    assert_eq!(out.code, 3, "{out:?}");

    // etcd back: a leader again (the old lease, which etcd keeps across a
    // restart, expires first) and writes go through.
    etcd.restart();
    let took = create_once_writable(
        &all_urls(&nms),
        &create_args("back", "10.6.0.0/24", "10.6.0.1"),
        Duration::from_secs(8),
        "after etcd returned",
    );
    eprintln!("writable {took:?} after etcd returned");
    let s = store(&etcd, &rt);
    let nets = stored_networks(&rt, &s);
    assert_eq!(nets.keys().collect::<Vec<_>>(), vec!["back"]);
}
