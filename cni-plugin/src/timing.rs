//! The plugin's own wall time of ADD and DEL, for ipamd's
//! `rackline_plugin_command_duration_seconds`.
//!
//! A plugin process cannot report its own duration in its own call (the
//! call is part of what is measured), so each finished ADD or DEL leaves a
//! tiny file under `<runtimeDir>/timings/`, and the next Allocate or Release
//! of any invocation on the node carries the pending ones to ipamd
//! (`plugin_timings`). One file per invocation needs no lock between
//! concurrent plugins: a file is claimed by unlinking it, which succeeds for
//! exactly one of them.
//!
//! Strictly best effort: every error is ignored, nothing here can fail or
//! delay a CNI call noticeably (one create + rename when recording, a
//! readdir + read/unlink per pending report when sending), and a report
//! whose call fails is lost, never retried.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rackline_proto::ipam::v1 as pb;

/// Reports sent with one call at most (and files read per call).
const MAX_REPORTS: usize = 64;
/// A directory this full is not drained fast enough: stop adding to it.
const MAX_PENDING_FILES: usize = 1024;

static DIR: OnceLock<PathBuf> = OnceLock::new();

/// `<runtime_dir>/timings`, where this invocation records and reads.
pub fn dir_for(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("timings")
}

/// Sets the directory for this invocation (from the netconf's runtimeDir).
pub fn init(runtime_dir: &Path) {
    let _ = DIR.set(dir_for(runtime_dir));
}

/// Records one finished invocation (ADD or DEL) for a later call to carry.
pub fn record(command: &str, elapsed: Duration, ok: bool) {
    if let Some(dir) = DIR.get() {
        let _ = record_in(dir, command, elapsed, ok);
    }
}

pub fn record_in(dir: &Path, command: &str, elapsed: Duration, ok: bool) -> std::io::Result<()> {
    if !matches!(command, "ADD" | "DEL") {
        return Ok(());
    }
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    } else if fs::read_dir(dir)?.take(MAX_PENDING_FILES).count() >= MAX_PENDING_FILES {
        return Ok(());
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = format!("{nanos:x}-{}", std::process::id());
    // Written under a temporary name and renamed: a reader never sees a
    // half-written report.
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(
        f,
        "{command} {} {}",
        elapsed.as_micros(),
        if ok { 1 } else { 0 }
    )?;
    drop(f);
    fs::rename(&tmp, dir.join(name))
}

fn parse(s: &str) -> Option<pb::PluginTiming> {
    let mut it = s.split_whitespace();
    let command = it.next()?.to_string();
    let duration_us = it.next()?.parse().ok()?;
    let ok = it.next()? == "1";
    Some(pb::PluginTiming {
        command,
        duration_us,
        ok,
    })
}

/// Takes the pending reports (for the next Allocate or Release).
pub fn take() -> Vec<pb::PluginTiming> {
    DIR.get().map(|d| take_from(d)).unwrap_or_default()
}

pub fn take_from(dir: &Path) -> Vec<pb::PluginTiming> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        if out.len() >= MAX_REPORTS {
            break;
        }
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        // Never a blocking open: a FIFO planted here is skipped.
        let Ok(text) = crate::fsutil::read_small(&path, 256) else {
            continue;
        };
        // Unlinking claims it: of two plugins that read the same file, only
        // the one whose unlink succeeds sends it.
        if fs::remove_file(&path).is_ok() {
            if let Some(t) = parse(&text) {
                out.push(t);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_round_trip_once() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_for(tmp.path());
        record_in(&dir, "ADD", Duration::from_micros(12_345), true).unwrap();
        record_in(&dir, "DEL", Duration::from_millis(30), false).unwrap();
        record_in(&dir, "CHECK", Duration::from_millis(1), true).unwrap();
        let mut got = take_from(&dir);
        got.sort_by(|a, b| a.command.cmp(&b.command));
        assert_eq!(
            got,
            vec![
                pb::PluginTiming {
                    command: "ADD".into(),
                    duration_us: 12_345,
                    ok: true
                },
                pb::PluginTiming {
                    command: "DEL".into(),
                    duration_us: 30_000,
                    ok: false
                },
            ]
        );
        assert!(take_from(&dir).is_empty(), "each report is sent once");
        // A half-written report (temporary name) is left alone.
        fs::write(dir.join(".x.tmp"), "ADD 1").unwrap();
        assert!(take_from(&dir).is_empty());
        // A missing directory is no error.
        assert!(take_from(&tmp.path().join("nope")).is_empty());
    }
}
