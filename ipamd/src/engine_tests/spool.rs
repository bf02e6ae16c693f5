//! Draining the plugin's release spool (`crate::spool`).

use std::sync::Arc;
use std::time::Duration;

use rackline_model::spool::ReleaseRecord;

use super::*;
use crate::spool::{drain, Drained};

fn write(dir: &std::path::Path, network: &str, cid: &str) -> std::path::PathBuf {
    let r = ReleaseRecord {
        network: network.into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        spooled_unix_ms: 1,
    };
    let p = dir.join(r.file_name());
    std::fs::write(&p, serde_json::to_vec(&r).unwrap()).unwrap();
    p
}

#[tokio::test]
async fn spooled_release_frees_only_its_attachment() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    e.allocate(args("gone")).await.unwrap();
    let kept = e.allocate(args("alive")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = write(dir.path(), "prod", "gone");
    // A record for an unknown network and one for an attachment with no
    // lease: acted on (nothing to free) and removed.
    write(dir.path(), "nope", "x");
    write(dir.path(), "prod", "never-added");
    let d = drain(&e, dir.path()).await;
    assert_eq!(
        d,
        Drained {
            done: 3,
            kept: 0,
            dropped: 0
        }
    );
    assert!(!rec.exists());
    let live = store.live();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].address, kept.lease.address);
}

#[tokio::test]
async fn unusable_records_are_dropped_and_temporaries_ignored() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    e.allocate(args("c1")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Misnamed: an ADD could never find it to cancel it.
    let good = write(dir.path(), "prod", "c1");
    let misnamed = dir.path().join("0000.json");
    std::fs::rename(&good, &misnamed).unwrap();
    std::fs::write(dir.path().join("junk.json"), b"{not json").unwrap();
    // A control character ipamd refuses.
    write(dir.path(), "prod", "a\u{7}b");
    let tmp = dir.path().join(".x.json.1.tmp");
    std::fs::write(&tmp, b"partial").unwrap();
    nix::unistd::mkfifo(
        &dir.path().join("fifo.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let d = drain(&e, dir.path()).await;
    assert_eq!(d.dropped, 4, "{d:?}");
    assert_eq!(d.done, 0);
    assert!(tmp.exists(), "an in-flight temporary is not touched");
    assert_eq!(store.live().len(), 1, "nothing released");
}

#[tokio::test]
async fn a_record_removed_before_the_lock_releases_nothing() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    e.allocate(args("c1")).await.unwrap();
    // The ADD removed the record before it allocated: under the lock the
    // release sees it gone.
    let released = e
        .allocator()
        .release_if("prod", "c1", "eth0", false, || false)
        .await
        .unwrap();
    assert!(released.is_empty());
    assert_eq!(store.live().len(), 1);
}

#[tokio::test]
async fn records_wait_while_etcd_is_away() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    e.allocate(args("c1")).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rec = write(dir.path(), "prod", "c1");
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let d = drain(&e, dir.path()).await;
    assert_eq!(d.kept + d.done, 1, "{d:?}");
    if d.kept == 1 {
        assert!(rec.exists());
    }
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    e.outage().note_reachable();
    drain(&e, dir.path()).await;
    assert!(!rec.exists());
    assert!(store.live().is_empty());
}
