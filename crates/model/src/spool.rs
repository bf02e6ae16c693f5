//! The release spool: how the CNI plugin hands a release to ipamd when
//! ipamd cannot be reached during DEL.
//!
//! DEL removes the pod's links, then writes one small JSON record per
//! attachment (fsync'd file, atomic rename, fsync'd directory) and succeeds;
//! ipamd drains the spool at start and periodically, releasing by
//! (network, container id, ifname). Container ids are unique per sandbox, so
//! such a release can only free that attachment's own address; an ADD of the
//! same attachment (podman's `network reload` re-adds under the same id)
//! deletes the record before it allocates, and ipamd releases a record only
//! while it still exists, under the attachment's lock.
//!
//! ```text
//! <runtimeDir>/release/<node netns inode>/<32 hex>.json
//! ```
//!
//! Keyed by the node's network-namespace inode like the VLAN registry, so
//! simulated nodes sharing one filesystem never drain each other's records.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Sub-directory of the runtime directory that holds the spool.
pub const SPOOL_DIR: &str = "release";

/// Largest record ipamd reads (a real one is ~400 bytes).
pub const MAX_RECORD_LEN: u64 = 16 * 1024;

/// One pending release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRecord {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    /// When DEL wrote it (the plugin's clock), for operators.
    pub spooled_unix_ms: i64,
}

/// FNV-1a 64 over the parts, NUL-separated, with a seed prefix.
fn fnv(seed: &str, parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in std::iter::once(seed).chain(parts.iter().copied()) {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The record's file name: 128 bits of FNV-1a over (network, container id,
/// ifname), so any id is a safe, fixed-length name. Stable across releases:
/// the plugin and ipamd of different versions must agree.
pub fn record_file_name(network: &str, container_id: &str, ifname: &str) -> String {
    let parts = [network, container_id, ifname];
    format!(
        "{:016x}{:016x}.json",
        fnv("rackline-release-a", &parts),
        fnv("rackline-release-b", &parts)
    )
}

/// The spool directory of the node whose network namespace has inode `ino`.
pub fn spool_dir(runtime_dir: &Path, netns_ino: u64) -> PathBuf {
    runtime_dir.join(SPOOL_DIR).join(netns_ino.to_string())
}

impl ReleaseRecord {
    /// The file this record is stored in, inside its spool directory.
    pub fn file_name(&self) -> String {
        record_file_name(&self.network, &self.container_id, &self.ifname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_distinct() {
        let a = record_file_name("prod", "c1", "eth0");
        assert_eq!(a.len(), 32 + 5);
        assert_eq!(a, record_file_name("prod", "c1", "eth0"));
        assert_ne!(a, record_file_name("prod", "c1", "net1"));
        assert_ne!(a, record_file_name("prod2", "c1", "eth0"));
        // The separator keeps ("ab","c") and ("a","bc") apart.
        assert_ne!(
            record_file_name("n", "ab", "c"),
            record_file_name("n", "a", "bc")
        );
        // Pinned: the plugin and ipamd of different versions must agree.
        assert_eq!(
            record_file_name("prod", "c1", "eth0"),
            "db3a1fec9c6db66697baa9260247d2b3.json"
        );
    }

    #[test]
    fn record_round_trips_and_refuses_unknown_fields() {
        let r = ReleaseRecord {
            network: "prod".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            spooled_unix_ms: 5,
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(
            j,
            r#"{"network":"prod","containerId":"c1","ifname":"eth0","spooledUnixMs":5}"#
        );
        assert_eq!(serde_json::from_str::<ReleaseRecord>(&j).unwrap(), r);
        assert!(serde_json::from_str::<ReleaseRecord>(
            r#"{"network":"prod","containerId":"c1","ifname":"eth0","spooledUnixMs":5,"x":1}"#
        )
        .is_err());
        assert_eq!(
            spool_dir(Path::new("/run/rackline"), 42),
            PathBuf::from("/run/rackline/release/42")
        );
    }
}
