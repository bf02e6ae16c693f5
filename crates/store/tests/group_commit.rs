//! Group commit against a real etcd: concurrent lease creations share
//! transactions, yet each is decided by its own guards — a taken address, a
//! stale block or a re-created network fails only its own lease, and two
//! creations of one address never both succeed.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::Lease;
use rackline_store::{BlockGuard, CreateLease, Store};
use rackline_testkit::Etcd;

const NETWORK: &str =
    r#"{"name":"g","subnet":"10.50.0.0/24","gateway":"10.50.0.1","master":"uplink0"}"#;
const BLOCK_KEY: &str = "/rackline/v1/blocks/g/010.050.000.000";
const BLOCK: &str = r#"{"network":"g","rack":"ra","first":"10.50.0.0","size":256,"node":"n1"}"#;

fn lease(ip: Ipv4Addr, cid: &str) -> Lease {
    rackline_testkit::fixtures::lease("g", ip)
        .container(cid)
        .build()
}

async fn setup(etcd: &Etcd) -> (Store, i64, BlockGuard) {
    etcd.ctl(&["put", "/rackline/v1/networks/g", NETWORK]);
    etcd.ctl(&["put", BLOCK_KEY, BLOCK]);
    let plain = Store::connect(&[etcd.endpoint()], "/rackline", Duration::from_secs(5))
        .await
        .unwrap();
    let net = plain.get_network("g").await.unwrap().unwrap();
    let snap = plain.snapshot().await.unwrap();
    let block = snap
        .blocks
        .iter()
        .find(|b| b.block.network == "g")
        .expect("the block");
    let guard = BlockGuard {
        key: BLOCK_KEY.into(),
        mod_revision: block.mod_revision,
    };
    (plain, net.create_revision, guard)
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 50, 0, last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_creations_are_each_decided_by_their_own_guards() {
    let etcd = Etcd::start();
    let (plain, net_rev, guard) = setup(&etcd).await;
    // .10 already belongs to someone else.
    let owner = lease(ip(10), "owner");
    assert!(matches!(
        plain
            .leases()
            .create_lease_guarded(&owner, net_rev, Some(&guard))
            .await,
        Ok(CreateLease::Created { .. })
    ));
    // One committer slot: whatever arrives during a transaction waits and
    // joins the next, so the creations below share transactions.
    let store = Arc::new(plain.clone().with_group_commit(64, 1));
    let stale = BlockGuard {
        key: BLOCK_KEY.into(),
        mod_revision: guard.mod_revision - 1,
    };
    let mut tasks = Vec::new();
    for last in 10..=60u8 {
        let (store, guard, stale) = (store.clone(), guard.clone(), stale.clone());
        tasks.push(tokio::spawn(async move {
            let l = lease(ip(last), &format!("c{last}"));
            let r = match last {
                // A stale block guard and a network incarnation that is not
                // the stored one: each must fail alone.
                20 => {
                    store
                        .leases()
                        .create_lease_guarded(&l, net_rev, Some(&stale))
                        .await
                }
                30 => {
                    store
                        .leases()
                        .create_lease_guarded(&l, net_rev + 1, Some(&guard))
                        .await
                }
                _ => {
                    store
                        .leases()
                        .create_lease_guarded(&l, net_rev, Some(&guard))
                        .await
                }
            };
            (last, r.expect("etcd answers"))
        }));
    }
    let mut revisions = BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        let (last, r) = t.await.unwrap();
        match (last, r) {
            (10, CreateLease::Taken(Some(o))) => assert_eq!(o.container_id, "owner"),
            (20, CreateLease::BlockChanged) | (30, CreateLease::NetworkGone) => {}
            (l, CreateLease::Created { mod_revision }) if ![10, 20, 30].contains(&l) => {
                created += 1;
                revisions.insert(mod_revision);
            }
            (l, other) => panic!(".{l}: unexpected {other:?}"),
        }
    }
    assert_eq!(created, 48);
    assert!(
        revisions.len() < created,
        "no two creations shared a transaction ({} revisions for {created} leases)",
        revisions.len()
    );
    // etcd holds exactly the leases that were reported created, plus the owner's.
    let (stored, _) = plain.list_leases(Some("g")).await.unwrap();
    let held: BTreeSet<u8> = stored.iter().map(|s| s.lease.address.octets()[3]).collect();
    let expected: BTreeSet<u8> = (10..=60u8).filter(|l| ![20, 30].contains(l)).collect();
    assert_eq!(held, expected);
    let owner_now = stored.iter().find(|s| s.lease.address == ip(10)).unwrap();
    assert_eq!(owner_now.lease.container_id, "owner");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_asked_for_many_times_at_once_is_granted_once() {
    let etcd = Etcd::start();
    let (plain, net_rev, guard) = setup(&etcd).await;
    let store = Arc::new(plain.clone().with_group_commit(64, 1));
    let mut tasks = Vec::new();
    for k in 0..40u8 {
        let (store, guard) = (store.clone(), guard.clone());
        tasks.push(tokio::spawn(async move {
            // Every fourth caller wants .99; the others their own address.
            let (addr, cid) = if k % 4 == 0 {
                (ip(99), format!("want99-{k}"))
            } else {
                (ip(100 + k), format!("own-{k}"))
            };
            let r = store
                .leases()
                .create_lease_guarded(&lease(addr, &cid), net_rev, Some(&guard))
                .await
                .expect("etcd answers");
            (addr, cid, r)
        }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (addr, cid, r) = t.await.unwrap();
        match r {
            CreateLease::Created { .. } if addr == ip(99) => winners.push(cid),
            CreateLease::Created { .. } => {}
            CreateLease::Taken(Some(o)) if addr == ip(99) => {
                assert!(o.container_id.starts_with("want99-"))
            }
            other => panic!("{addr} for {cid}: unexpected {other:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let stored = plain
        .leases()
        .get_lease("g", ip(99))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.lease.container_id, winners[0]);
    let (all, _) = plain.list_leases(Some("g")).await.unwrap();
    assert_eq!(all.len(), 31);
}
