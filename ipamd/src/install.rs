//! `rackline-install`: puts the CNI plugin binary and the conflist into the
//! host's CNI directories (the DaemonSet's init container runs it with the
//! host's directories mounted).
//!
//! Every file is written atomically: a temporary name in the destination
//! directory, fsync, rename over the final name, fsync of the directory. A
//! runtime that execs the plugin at any moment therefore finds either the
//! old complete binary or the new one, never a partial file, and a running
//! ADD keeps executing its old inode (writing into a running executable
//! would fail with ETXTBSY or corrupt it). A file whose content is already
//! the wanted one is left alone, so a re-run changes nothing.
//! Everything is validated before anything is written.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The conflist shipped with the image (conf/10-rackline.conflist).
pub const DEFAULT_CONFLIST: &str = include_str!("../../conf/10-rackline.conflist");
pub const DEFAULT_CONFLIST_NAME: &str = "10-rackline.conflist";
/// Prefix of temporary files; leftovers of an interrupted run are removed.
const TMP_PREFIX: &str = ".rackline-install.";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid conflist {origin}: {why}")]
    Conflist { origin: String, why: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InstallError + '_ {
    move |source| InstallError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The plugin binary to copy (in the image).
    pub plugin: PathBuf,
    /// The host's CNI binary directory (as mounted).
    pub bin_dir: PathBuf,
    /// The host's CNI configuration directory (as mounted).
    pub conf_dir: PathBuf,
    /// The conflist's content and where it came from (for messages).
    pub conflist: String,
    pub conflist_origin: String,
    /// File name in `conf_dir`.
    pub conflist_name: String,
}

/// What happened to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed(PathBuf),
    UpToDate(PathBuf),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Installed(p) => write!(f, "installed {}", p.display()),
            Outcome::UpToDate(p) => write!(f, "up to date {}", p.display()),
        }
    }
}

/// Checks that `text` is a conflist the plugin can run from: JSON with a
/// `cniVersion`, a `name` and a `plugins` array holding a `rackline` entry.
pub fn validate_conflist(text: &str, origin: &str) -> Result<(), InstallError> {
    let bad = |why: String| InstallError::Conflist {
        origin: origin.to_string(),
        why,
    };
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
    for key in ["cniVersion", "name"] {
        if v.get(key)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .is_empty()
        {
            return Err(bad(format!("{key:?} missing or not a non-empty string")));
        }
    }
    let plugins = v
        .get("plugins")
        .and_then(|p| p.as_array())
        .ok_or_else(|| bad("\"plugins\" missing or not an array".into()))?;
    if !plugins
        .iter()
        .any(|p| p.get("type").and_then(|t| t.as_str()) == Some("rackline"))
    {
        return Err(bad("no plugin of type \"rackline\" in \"plugins\"".into()));
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), InstallError> {
    if name.is_empty()
        || name.contains('/')
        || name.starts_with('.')
        || !(name.ends_with(".conflist") || name.ends_with(".conf"))
    {
        return Err(InstallError::Invalid(format!(
            "conflist name {name:?}: a plain file name ending in .conflist"
        )));
    }
    Ok(())
}

fn check_dir(dir: &Path, what: &str) -> Result<(), InstallError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(InstallError::Invalid(format!(
            "{what} {} is not a directory",
            dir.display()
        ))),
        Err(e) => Err(InstallError::Invalid(format!(
            "{what} {}: {e} (mount the host's directory there)",
            dir.display()
        ))),
    }
}

/// Validates the whole plan, then installs the plugin, then the conflist
/// (a runtime that sees the new conflist must find the plugin it names).
pub fn run(plan: &Plan) -> Result<Vec<Outcome>, InstallError> {
    validate_name(&plan.conflist_name)?;
    validate_conflist(&plan.conflist, &plan.conflist_origin)?;
    check_dir(&plan.bin_dir, "CNI binary directory")?;
    check_dir(&plan.conf_dir, "CNI configuration directory")?;
    let binary = fs::read(&plan.plugin).map_err(io(&plan.plugin))?;
    if !binary.starts_with(b"\x7fELF") {
        return Err(InstallError::Invalid(format!(
            "{} is not an executable (no ELF header)",
            plan.plugin.display()
        )));
    }
    sweep_temporaries(&plan.bin_dir);
    sweep_temporaries(&plan.conf_dir);
    Ok(vec![
        put(&plan.bin_dir, "rackline", &binary, 0o755)?,
        put(
            &plan.conf_dir,
            &plan.conflist_name,
            plan.conflist.as_bytes(),
            0o644,
        )?,
    ])
}

/// Writes `content` to `dir/name` atomically unless it is already there
/// with that content and mode.
pub fn put(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<Outcome, InstallError> {
    let dest = dir.join(name);
    if let Ok(m) = fs::metadata(&dest) {
        if m.is_file()
            && m.permissions().mode() & 0o7777 == mode
            && m.len() == content.len() as u64
            && fs::read(&dest).is_ok_and(|c| c == content)
        {
            return Ok(Outcome::UpToDate(dest));
        }
    }
    let tmp = dir.join(format!("{TMP_PREFIX}{}.{name}", std::process::id()));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(content).map_err(io(&tmp))?;
        // The umask may have narrowed the mode given to open.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        fs::rename(&tmp, &dest).map_err(io(&dest))
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // The rename is durable once the directory is.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(Outcome::Installed(dest))
}

/// Removes temporaries an interrupted run left (never another file).
fn sweep_temporaries(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            let _ = fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn plan(root: &Path) -> Plan {
        let bin = root.join("opt/cni/bin");
        let conf = root.join("etc/cni/net.d");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(&conf).unwrap();
        let plugin = root.join("rackline-src");
        fs::write(&plugin, b"\x7fELF fake plugin").unwrap();
        Plan {
            plugin,
            bin_dir: bin,
            conf_dir: conf,
            conflist: DEFAULT_CONFLIST.to_string(),
            conflist_origin: "built-in".into(),
            conflist_name: DEFAULT_CONFLIST_NAME.into(),
        }
    }

    #[test]
    fn installs_then_leaves_identical_files_alone() {
        let root = tempfile::tempdir().unwrap();
        let p = plan(root.path());
        let out = run(&p).unwrap();
        assert!(matches!(&out[0], Outcome::Installed(_)), "{out:?}");
        let bin = p.bin_dir.join("rackline");
        let m = fs::metadata(&bin).unwrap();
        assert_eq!(m.permissions().mode() & 0o7777, 0o755);
        let conf = p.conf_dir.join(DEFAULT_CONFLIST_NAME);
        assert_eq!(fs::read_to_string(&conf).unwrap(), DEFAULT_CONFLIST);
        assert_eq!(
            fs::metadata(&conf).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        let ino = m.ino();
        let again = run(&p).unwrap();
        assert!(
            again.iter().all(|o| matches!(o, Outcome::UpToDate(_))),
            "{again:?}"
        );
        assert_eq!(fs::metadata(&bin).unwrap().ino(), ino, "rewritten");
        // A changed source replaces the file by rename (a new inode), and
        // a wrong mode is repaired.
        fs::write(&p.plugin, b"\x7fELF new plugin").unwrap();
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o600)).unwrap();
        let out = run(&p).unwrap();
        assert!(out.iter().all(|o| matches!(o, Outcome::Installed(_))));
        assert_ne!(fs::metadata(&bin).unwrap().ino(), ino);
        assert_eq!(fs::read(&bin).unwrap(), b"\x7fELF new plugin");
        // No temporary is left behind.
        for d in [&p.bin_dir, &p.conf_dir] {
            let names: Vec<_> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names.len(), 1, "{names:?}");
        }
    }

    #[test]
    fn bad_input_is_refused_before_anything_is_written() {
        let root = tempfile::tempdir().unwrap();
        let p = plan(root.path());
        let cases: Vec<(Plan, &str)> = vec![
            (
                Plan {
                    conflist: "{".into(),
                    ..p.clone()
                },
                "not JSON",
            ),
            (
                Plan {
                    conflist: r#"{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"macvlan"}]}"#
                        .into(),
                    ..p.clone()
                },
                "no plugin of type \"rackline\"",
            ),
            (
                Plan {
                    conflist: r#"{"name":"x","plugins":[{"type":"rackline"}]}"#.into(),
                    ..p.clone()
                },
                "\"cniVersion\" missing",
            ),
            (
                Plan {
                    conflist_name: "../evil.conflist".into(),
                    ..p.clone()
                },
                "plain file name",
            ),
            (
                Plan {
                    bin_dir: root.path().join("missing"),
                    ..p.clone()
                },
                "mount the host's directory",
            ),
            (
                Plan {
                    plugin: p.conf_dir.join("nope"),
                    ..p.clone()
                },
                "nope",
            ),
        ];
        for (bad, needle) in cases {
            let e = run(&bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{needle}: {e}");
            assert_eq!(fs::read_dir(&p.bin_dir).unwrap().count(), 0);
            assert_eq!(fs::read_dir(&p.conf_dir).unwrap().count(), 0);
        }
        // Not an executable.
        fs::write(&p.plugin, b"#!/bin/sh\n").unwrap();
        assert!(run(&p).unwrap_err().to_string().contains("ELF"));
    }

    #[test]
    fn leftovers_of_an_interrupted_run_are_removed_and_others_kept() {
        let root = tempfile::tempdir().unwrap();
        let p = plan(root.path());
        fs::write(p.bin_dir.join(".rackline-install.77.rackline"), b"half").unwrap();
        fs::write(p.bin_dir.join("loopback"), b"other plugin").unwrap();
        run(&p).unwrap();
        let mut names: Vec<_> = fs::read_dir(&p.bin_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["loopback", "rackline"]);
    }

    #[test]
    fn the_shipped_conflist_is_valid() {
        validate_conflist(DEFAULT_CONFLIST, "conf/10-rackline.conflist").unwrap();
    }
}
