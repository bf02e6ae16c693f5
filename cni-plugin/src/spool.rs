//! The plugin's side of the release spool (format and rules:
//! `rackline_model::spool`): DEL records a release ipamd could not take, and
//! ADD removes a record for its own attachment before it allocates, so a
//! spooled release can never free the address of a re-added attachment.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rackline_model::spool::{record_file_name, spool_dir, ReleaseRecord};

use crate::env::Attachment;
use crate::fsutil;

fn dir(runtime_dir: &Path) -> io::Result<PathBuf> {
    Ok(spool_dir(runtime_dir, fsutil::node_netns_ino()?))
}

/// Durably records that (network, attachment) must be released; returns the
/// record's path.
pub fn write(runtime_dir: &Path, network: &str, att: &Attachment) -> io::Result<PathBuf> {
    let dir = dir(runtime_dir)?;
    fsutil::ensure_dir(&dir)?;
    let rec = ReleaseRecord {
        network: network.to_owned(),
        container_id: att.container_id.as_str().to_owned(),
        ifname: att.ifname.as_str().to_owned(),
        spooled_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0),
    };
    let name = rec.file_name();
    let bytes = serde_json::to_vec(&rec).map_err(io::Error::other)?;
    fsutil::write_atomic(&dir, &name, &bytes)?;
    Ok(dir.join(name))
}

/// Removes the attachment's record, if any (ADD, before Allocate).
pub fn forget(runtime_dir: &Path, network: &str, att: &Attachment) -> io::Result<()> {
    let dir = dir(runtime_dir)?;
    let name = record_file_name(network, att.container_id.as_str(), att.ifname.as_str());
    fsutil::remove_if_present(&dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{ContainerId, IfName};

    #[test]
    fn write_then_forget() {
        let d = tempfile::tempdir().unwrap();
        let att = Attachment {
            container_id: ContainerId::parse("c1").unwrap(),
            ifname: IfName::parse("eth0").unwrap(),
        };
        let p = write(d.path(), "prod", &att).unwrap();
        let rec: ReleaseRecord =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(
            (
                rec.network.as_str(),
                rec.container_id.as_str(),
                rec.ifname.as_str()
            ),
            ("prod", "c1", "eth0")
        );
        assert!(p.starts_with(d.path().join("release")));
        // Idempotent.
        write(d.path(), "prod", &att).unwrap();
        forget(d.path(), "prod", &att).unwrap();
        assert!(!p.exists());
        forget(d.path(), "prod", &att).unwrap();
    }
}
