//! `racklinectl network update` end to end: a real etcd, the real
//! rackline-netmaster and the real racklinectl, on loopback. Leases are
//! written into etcd as ipamd writes them.

mod common;

use std::time::Duration;

use common::{create_args, ctl, ctl_spawn, put_lease, runtime, store, Etcd, Netmaster, PREFIX};
use rackline_model::{Lease, Liveness, NetworkSpec, PodSettings};
use rackline_proto::admin::v1 as pb;
use rackline_store::Keys;
use rackline_store::{
    CreateLease, Fence, LeaderStore, NodeLock, Store, StoreError, UpdateGuards, UpdateOutcome,
};
use serde_json::Value;
use tokio::runtime::Runtime;

fn stored(rt: &Runtime, s: &Store, name: &str) -> NetworkSpec {
    rt.block_on(s.get_network(name))
        .expect("read network")
        .expect("network exists")
        .spec
}

/// A network with a value in every mutable setting.
fn create_full(server: &str) -> Value {
    let mut args = create_args("prod", "10.10.0.0/24", "10.10.0.1");
    args.extend([
        "--mtu",
        "1500",
        "--vlan",
        "120",
        "--exclude",
        "10.10.0.2-10.10.0.9",
        "--route",
        "192.168.0.0/16@10.10.0.254",
        "--host-route",
        "10.96.0.0/12",
        "--sticky-namespace",
        "db",
        "--qos-default",
        "egress=100M",
        "--probe",
        "-o",
        "json",
    ]);
    ctl(server, &args).json()
}

/// Writes `lease` as ipamd would (create-if-absent on its key).
fn put(rt: &Runtime, s: &Store, lease: &Lease) {
    let net = rt
        .block_on(s.get_network(&lease.network))
        .expect("get network")
        .expect("network exists");
    match rt
        .block_on(s.leases().create_lease(lease, net.create_revision))
        .expect("create lease")
    {
        CreateLease::Created { .. } => {}
        other => panic!("lease {} not created: {other:?}", lease.address),
    }
}

#[test]
fn a_partial_update_changes_only_what_it_names() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let rt = runtime();
    let s = store(&etcd, &rt);
    let created = create_full(&nm.url);
    let before = stored(&rt, &s, "prod");

    let r = ctl(
        &nm.url,
        &["network", "update", "prod", "--mtu", "9000", "-o", "json"],
    )
    .json();
    assert_eq!(
        r["changes"],
        serde_json::json!(["mtu: 1500 -> 9000"]),
        "{r}"
    );
    assert_eq!(r["dryRun"], false);
    let after = stored(&rt, &s, "prod");
    assert_eq!(after.mtu, 9000);
    assert_eq!(
        NetworkSpec {
            mtu: 1500,
            ..after.clone()
        },
        before,
        "every other field kept"
    );
    // The reply is the stored network, at a newer revision.
    let mut shown = r["network"].clone();
    assert!(
        shown["revision"].as_i64() > created["revision"].as_i64(),
        "{r}"
    );
    for v in [&mut shown, &mut created.clone()] {
        v.as_object_mut().expect("object").remove("revision");
        v.as_object_mut().expect("object").remove("mtu");
    }
    let mut want = created.clone();
    want.as_object_mut().expect("object").remove("revision");
    want.as_object_mut().expect("object").remove("mtu");
    assert_eq!(shown, want);

    // Lists are edited: one host route added, the exclusion list replaced,
    // the route removed; QoS default cleared, sticky and probe untouched.
    let out = ctl(
        &nm.url,
        &[
            "network",
            "update",
            "prod",
            "--host-route",
            "10.200.0.0/16",
            "--clear-exclude",
            "--exclude",
            "10.10.0.250-10.10.0.254",
            "--remove-route",
            "192.168.0.0/16",
            "--clear-qos-default",
        ],
    );
    out.ok();
    assert!(out.stdout.starts_with("network prod changed:\n"), "{out:?}");
    assert!(
        out.stdout
            .contains("  host routes: 10.96.0.0/12 -> 10.96.0.0/12, 10.200.0.0/16\n"),
        "{out:?}"
    );
    let now = stored(&rt, &s, "prod");
    assert_eq!(
        now.host_routes,
        vec![
            "10.96.0.0/12".parse().unwrap(),
            "10.200.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(
        now.exclude,
        vec!["10.10.0.250-10.10.0.254".parse().unwrap()]
    );
    assert!(now.routes.is_empty());
    assert_eq!(now.qos.default, None);
    assert_eq!(now.sticky, before.sticky);
    assert_eq!(now.probe, before.probe);
    assert_eq!((now.vlan, now.mtu), (Some(120), 9000));

    // Removing what is not there names the list and what it has; nothing
    // is written.
    let rev = now_revision(&nm.url);
    ctl(
        &nm.url,
        &[
            "network",
            "update",
            "prod",
            "--remove-host-route",
            "10.1.0.0/16",
        ],
    )
    .refused("host routes: 10.1.0.0/16 is not in the list (it has 10.96.0.0/12, 10.200.0.0/16)");
    assert_eq!(now_revision(&nm.url), rev);
    // A dry run reports and writes nothing.
    let dry = ctl(
        &nm.url,
        &[
            "network",
            "update",
            "prod",
            "--mtu",
            "1400",
            "--dry-run",
            "-o",
            "json",
        ],
    )
    .json();
    assert_eq!(dry["changes"], serde_json::json!(["mtu: 9000 -> 1400"]));
    assert_eq!(dry["dryRun"], true);
    assert_eq!(stored(&rt, &s, "prod").mtu, 9000);
    // The update is audited like every mutation.
    assert!(
        nm.stderr().contains("method=\"UpdateNetwork\"")
            || nm.stderr().contains("method=UpdateNetwork"),
        "no audit line for UpdateNetwork:\n{}",
        nm.stderr()
    );
}

fn now_revision(server: &str) -> i64 {
    ctl(server, &["network", "show", "prod", "-o", "json"]).json()["revision"]
        .as_i64()
        .expect("revision")
}

#[test]
fn immutable_settings_are_refused_naming_the_setting() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let rt = runtime();
    let s = store(&etcd, &rt);
    create_full(&nm.url);
    let before = stored(&rt, &s, "prod");

    let u = |extra: &[&str]| {
        let mut a = vec!["network", "update", "prod"];
        a.extend(extra);
        ctl(&nm.url, &a)
    };
    u(&["--subnet", "10.10.0.0/23"])
        .refused("subnet cannot be changed (10.10.0.0/24 -> 10.10.0.0/23)");
    u(&["--gateway", "10.10.0.254"])
        .refused("gateway cannot be changed (10.10.0.1 -> 10.10.0.254)");
    // Restating the current value is no change.
    let same = u(&[
        "--subnet",
        "10.10.0.0/24",
        "--gateway",
        "10.10.0.1",
        "-o",
        "json",
    ])
    .json();
    assert_eq!(same["changes"], serde_json::json!([]));

    // Master and VLAN: refused while a pod runs on the network, with the
    // number of pods; fine once none does.
    put_lease(&rt, &s, "prod", "10.10.0.50", "n1", ("default", "web-0"));
    u(&["--master", "uplink1"])
        .refused("master cannot be changed (uplink0 -> uplink1) while 1 pod(s) run on the network");
    u(&["--vlan", "0"]).refused("vlan cannot be changed (120 -> untagged) while 1 pod(s)");
    assert_eq!(stored(&rt, &s, "prod"), before, "nothing was written");

    let mut empty = create_args("idle", "10.30.0.0/24", "10.30.0.1");
    empty.push("--vlan");
    empty.push("7");
    ctl(&nm.url, &empty).ok();
    ctl(
        &nm.url,
        &[
            "network", "update", "idle", "--master", "uplink1", "--vlan", "8",
        ],
    )
    .ok();
    let idle = stored(&rt, &s, "idle");
    assert_eq!((idle.master.as_str(), idle.vlan), ("uplink1", Some(8)));
}

#[test]
fn an_exclusion_over_a_live_lease_is_refused_unless_forced() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let rt = runtime();
    let s = store(&etcd, &rt);
    create_full(&nm.url);
    let spec = stored(&rt, &s, "prod");
    // Two pods: web-0 inside the range about to be excluded, web-1 outside
    // (added under today's settings); a node's standby record inside too.
    let web0 = put_lease(&rt, &s, "prod", "10.10.0.50", "n1", ("default", "web-0"));
    let mut web1 = Lease {
        address: "10.10.0.80".parse().unwrap(),
        container_id: format!("{:0<64}", "c0ffee80"),
        ..web0.clone()
    };
    web1.pod.name = "web-1".into();
    web1.settings = Some(Box::new(PodSettings::of(&spec)));
    put(&rt, &s, &web1);
    let standby = Lease::standby("prod", "10.10.0.52".parse().unwrap(), "n2", 1);
    put(&rt, &s, &standby);
    let rev = now_revision(&nm.url);

    let excl = ["network", "update", "prod", "--exclude", "10.10.0.48/29"];
    ctl(&nm.url, &excl).refused(
        "the new exclusions cover 1 leased address(es): 10.10.0.50 (pod default/web-0 on node n1); release them first, or pass --force",
    );
    assert_eq!(now_revision(&nm.url), rev, "nothing written");
    assert!(rt
        .block_on(s.leases().get_lease("prod", "10.10.0.52".parse().unwrap()))
        .expect("read")
        .is_some());

    // Forced, but n2 has no live ipamd: only n2 may give its standby record
    // back (it may be serving a pod from it without etcd), so nothing is
    // written and the record stays, whatever --force says.
    let mut forced = excl.to_vec();
    forced.extend(["--force", "--host-route", "10.200.0.0/16", "-o", "json"]);
    ctl(&nm.url, &forced).refused(
        "the new exclusions cover 1 standby record(s) of node(s) n2, whose ipamd is not live: 10.10.0.52 (node n2); only that ipamd can give them back",
    );
    assert_eq!(now_revision(&nm.url), rev, "nothing written");
    assert!(rt
        .block_on(s.leases().get_lease("prod", "10.10.0.52".parse().unwrap()))
        .expect("read")
        .is_some());

    // n2's ipamd is live: the update is written and waits for n2 to give the
    // record back, as n2's ipamd does once it sees the new exclusion.
    let g = rt.block_on(s.etcd_leases().grant(60)).unwrap();
    let live = Liveness {
        instance: "test-n2".into(),
        host: "test".into(),
        pid: 1,
        since_unix_ms: 1,
        ttl_secs: 60,
    };
    let locked = rt
        .block_on(s.liveness().try_lock_node("n2", &live, g.id))
        .unwrap();
    assert!(matches!(locked, NodeLock::Acquired { .. }), "{locked:?}");
    // The update runs while this test plays n2's ipamd.
    let update = ctl_spawn(&nm.url, &forced);
    let ip = "10.10.0.52".parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the update was never written"
        );
        if stored(&rt, &s, "prod")
            .exclude
            .contains(&"10.10.0.48/29".parse().unwrap())
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let sl = rt
        .block_on(s.leases().get_lease("prod", ip))
        .unwrap()
        .unwrap();
    assert!(
        rt.block_on(s.leases().delete_lease("prod", ip, sl.mod_revision))
            .unwrap(),
        "netmaster deleted the standby record itself"
    );
    let r = update.wait().json();
    assert_eq!(
        r["standbyReturned"],
        serde_json::json!(["10.10.0.52"]),
        "{r}"
    );
    assert_eq!(r["standbyPending"], serde_json::json!([]), "{r}");
    let differing = r["differing"].as_array().expect("differing");
    let why = |addr: &str| -> Vec<String> {
        differing
            .iter()
            .find(|d| d["lease"]["address"] == addr)
            .map(|d| {
                d["differences"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    // web-0 has no recorded settings: its address is what differs.
    assert_eq!(
        why("10.10.0.50"),
        vec!["address 10.10.0.50 is excluded by the network now (10.10.0.48-10.10.0.55)"]
    );
    // web-1 got today's settings at ADD: the new host route differs.
    assert_eq!(
        why("10.10.0.80"),
        vec!["host routes: the pod has 10.96.0.0/12, the network now has 10.96.0.0/12, 10.200.0.0/16"]
    );
    assert_eq!(differing.len(), 2, "{r}");
    assert!(rt
        .block_on(s.leases().get_lease("prod", "10.10.0.50".parse().unwrap()))
        .expect("read")
        .is_some());
    assert!(rt
        .block_on(s.leases().get_lease("prod", "10.10.0.52".parse().unwrap()))
        .expect("read")
        .is_none());
    assert!(stored(&rt, &s, "prod")
        .exclude
        .contains(&"10.10.0.48/29".parse().unwrap()));
}

#[test]
fn a_concurrent_update_fails_with_a_retryable_error() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let rt = runtime();
    let s = store(&etcd, &rt);
    create_full(&nm.url);
    let rev = now_revision(&nm.url).to_string();

    // Two operators decided on the same version: the second loses.
    ctl(
        &nm.url,
        &[
            "network",
            "update",
            "prod",
            "--mtu",
            "1400",
            "--expect-revision",
            &rev,
        ],
    )
    .ok();
    ctl(
        &nm.url,
        &[
            "network",
            "update",
            "prod",
            "--mtu",
            "1300",
            "--expect-revision",
            &rev,
        ],
    )
    .refused("was changed by someone else");
    assert_eq!(stored(&rt, &s, "prod").mtu, 1400);

    // The store's write itself compares the record's revision: a write
    // decided on a version that changed since is not applied.
    let seen = rt
        .block_on(s.admin_reads().network_state("prod"))
        .expect("read")
        .expect("exists");
    ctl(&nm.url, &["network", "update", "prod", "--mtu", "1200"]).ok();
    let mut stale = seen.network.spec.clone();
    stale.mtu = 1100;
    let out = rt
        .block_on(
            // The test is the only writer here: no election to lose.
            LeaderStore::single_writer(s.clone()).update_network(
                &stale,
                &seen,
                UpdateGuards::default(),
            ),
        )
        .expect("update");
    assert!(
        matches!(out, UpdateOutcome::NetworkChanged { .. }),
        "{out:?}"
    );
    assert_eq!(stored(&rt, &s, "prod").mtu, 1200);

    // Racing updates through the server: each either applies or is told to
    // run again (gRPC ABORTED, exit 1), never lost silently.
    let runs: Vec<_> = (0..6)
        .map(|i| {
            let mtu = (1300 + i).to_string();
            common::ctl_spawn(
                &nm.url,
                &["network", "update", "prod", "--mtu", &mtu, "-o", "json"],
            )
        })
        .collect();
    let mut applied = Vec::new();
    for (i, r) in runs.into_iter().enumerate() {
        let out = r.wait();
        match out.code {
            0 => applied.push(1300 + i as u32),
            1 => assert!(out.stderr.contains("run the update again"), "{out:?}"),
            _ => panic!("{out:?}"),
        }
    }
    assert!(!applied.is_empty());
    assert!(
        applied.contains(&stored(&rt, &s, "prod").mtu),
        "{applied:?}"
    );
}

#[test]
fn a_follower_refuses_an_update_and_a_stale_fence_writes_nothing() {
    let etcd = Etcd::start();
    let rt = runtime();
    let s = store(&etcd, &rt);
    let a = Netmaster::start_with(&etcd, &["--id", "nm-a", "--lease-ttl-secs", "3"]);
    let b = Netmaster::start_with(&etcd, &["--id", "nm-b", "--lease-ttl-secs", "3"]);
    let leads = |url: &str| {
        rt.block_on(async {
            let mut c = rackline_admin_client::AdminClient::connect(
                url,
                rackline_admin_client::Timeouts::default(),
            )
            .await
            .ok()?;
            c.leader().await.ok().map(|l| l.is_self)
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (leader, follower) = loop {
        match (leads(&a.url), leads(&b.url)) {
            (Some(true), _) => break (&a, &b),
            (_, Some(true)) => break (&b, &a),
            _ => {
                assert!(std::time::Instant::now() < deadline, "no leader");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    create_full(&leader.url);
    let err = rt
        .block_on(async {
            let mut c = pb::admin_client::AdminClient::connect(follower.url.clone())
                .await
                .expect("connect");
            c.update_network(pb::UpdateNetworkRequest {
                name: "prod".into(),
                mtu: Some(4000),
                ..Default::default()
            })
            .await
        })
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("not the leader"), "{err:?}");
    assert_eq!(stored(&rt, &s, "prod").mtu, 1500);
    // racklinectl given the follower follows the leader.
    ctl(
        &follower.url,
        &["network", "update", "prod", "--mtu", "4000"],
    )
    .ok();
    assert_eq!(stored(&rt, &s, "prod").mtu, 4000);

    // A deposed leader's fence fails the write in etcd.
    let keys = Keys::new(PREFIX);
    let seen = rt
        .block_on(s.admin_reads().network_state("prod"))
        .expect("read")
        .expect("exists");
    // A fence on the leader key at a revision it never had: what a leader
    // deposed (its key expired and re-created) holds.
    let stale = Fence {
        key: keys.leader(),
        create_revision: 1,
    };
    let mut spec = seen.network.spec.clone();
    spec.mtu = 3000;
    let e = rt
        .block_on(LeaderStore::fenced(s.clone(), stale).update_network(
            &spec,
            &seen,
            UpdateGuards::default(),
        ))
        .unwrap_err();
    assert!(matches!(e, StoreError::Fenced { .. }), "{e}");
    assert_eq!(stored(&rt, &s, "prod").mtu, 4000);
}
