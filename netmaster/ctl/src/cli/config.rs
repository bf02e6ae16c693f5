//! racklinectl's connection settings: flags, then `RACKLINE_*` variables
//! (clap merges those two), then the config file, then the default.
//!
//! The config file (`--config`, `RACKLINE_CONFIG`, default
//! `~/.config/rackline/config`) is TOML, like a small kubeconfig:
//!
//! ```toml
//! server = "https://10.0.0.2:7650,https://10.0.0.3:7650"
//! ca-file = "ca.crt"            # relative paths: to the config file's directory
//! token-file = "token"          # or cert-file + key-file
//! ```
//!
//! A missing default file is fine; a missing file named explicitly is a
//! usage error. Secrets stay in their files: the config only points at them.

use std::path::{Path, PathBuf};

use rackline_security::client::{ClientCredentials, FlagNames};
use serde::Deserialize;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7650";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigFile {
    pub server: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

pub const FLAGS: FlagNames = FlagNames {
    ca: "--ca-file",
    cert: "--cert-file",
    key: "--key-file",
    token: "--token-file",
};

/// `~/.config/rackline/config` (`$HOME` unset: none).
pub fn default_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/rackline/config"))
}

impl ConfigFile {
    /// Reads `explicit`, or the default file if it exists.
    pub fn load(explicit: Option<&Path>) -> Result<Self, String> {
        let (path, required) = match explicit {
            Some(p) => (p.to_owned(), true),
            None => match default_path() {
                Some(p) => (p, false),
                None => return Ok(Self::default()),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::default())
            }
            Err(e) => return Err(format!("cannot read config file {}: {e}", path.display())),
        };
        let mut c: ConfigFile =
            toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))?;
        // Paths are relative to the file, like kubeconfig's.
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [
            &mut c.ca_file,
            &mut c.cert_file,
            &mut c.key_file,
            &mut c.token_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        Ok(c)
    }
}

/// The effective server list and credential files.
#[derive(Debug, Clone)]
pub struct Connection {
    pub server: String,
    pub credentials: ClientCredentials,
}

/// Flags (and their variables) win over the file, per setting; a
/// certificate and its key come from the same place.
pub fn resolve(server: Option<String>, flags: ClientCredentials, file: ConfigFile) -> Connection {
    let (cert_file, key_file) = if flags.cert_file.is_some() || flags.key_file.is_some() {
        (flags.cert_file, flags.key_file)
    } else {
        (file.cert_file, file.key_file)
    };
    Connection {
        server: server
            .or(file.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string()),
        credentials: ClientCredentials {
            ca_file: flags.ca_file.or(file.ca_file),
            cert_file,
            key_file,
            token_file: flags.token_file.or(file.token_file),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_the_file_and_paths_are_relative_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config");
        std::fs::write(
            &p,
            "server = \"https://h:7650\"\nca-file = \"ca.crt\"\ntoken-file = \"/abs/token\"\n",
        )
        .unwrap();
        let f = ConfigFile::load(Some(&p)).unwrap();
        assert_eq!(
            f.ca_file.as_deref(),
            Some(dir.path().join("ca.crt").as_path())
        );
        let c = resolve(
            None,
            ClientCredentials {
                token_file: Some("/flag/token".into()),
                ..Default::default()
            },
            f,
        );
        assert_eq!(c.server, "https://h:7650");
        assert_eq!(
            c.credentials.token_file.as_deref(),
            Some(Path::new("/flag/token"))
        );
        assert!(ConfigFile::load(Some(&dir.path().join("missing"))).is_err());
        std::fs::write(&p, "server = \"x\"\npassword = \"no\"\n").unwrap();
        assert!(ConfigFile::load(Some(&p)).is_err());
        let c = resolve(None, ClientCredentials::default(), ConfigFile::default());
        assert_eq!(c.server, DEFAULT_SERVER);
    }
}
