//! Who is calling: bearer tokens and client certificates, mapped to roles by
//! the auth file (`--auth-file`), which netmaster re-reads when it changes.
//!
//! The file is TOML:
//!
//! ```toml
//! [[token]]
//! name = "alice"        # the identity audit lines name
//! role = "admin"        # read-only | operator | admin | node
//! sha256 = "5e88…"      # hex SHA-256 of the token (the token itself is never stored)
//!
//! [[certificate]]
//! name = "rackline-ipamd"   # a client certificate's CN or one of its SANs
//! role = "node"
//! ```
//!
//! Tokens are stored hashed so the file itself grants nothing when read;
//! unsalted SHA-256 is enough because tokens are random (at least 128 bits:
//! `openssl rand -hex 32`), not passwords.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rackline_security::listener::PeerInfo;
use rackline_security::tls::{CertSummary, Fingerprint};
use serde::Deserialize;
use tonic::Status;
use tracing::{info, warn};

/// What a caller may do. `read-only` ⊂ `operator` ⊂ `admin`; `node` is what
/// ipamd needs (register its node, acquire and release blocks) and nothing
/// else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ReadOnly,
    Operator,
    Admin,
    Node,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::ReadOnly, Role::Operator, Role::Admin, Role::Node];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
            Role::Node => "node",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
    /// "token", "certificate" or "anonymous" (authentication off).
    pub via: &'static str,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    token: Vec<TokenEntry>,
    #[serde(default)]
    certificate: Vec<CertEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CertEntry {
    name: String,
    role: Role,
}

/// The parsed auth file.
#[derive(Debug, Default, Clone)]
pub struct AuthTable {
    /// hex SHA-256 → (name, role)
    tokens: HashMap<String, (String, Role)>,
    /// certificate CN/SAN → role
    certificates: HashMap<String, Role>,
}

impl AuthTable {
    pub fn parse(text: &str) -> Result<Self, String> {
        let f: FileFormat = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut t = AuthTable::default();
        for e in f.token {
            let h = e.sha256.trim().to_ascii_lowercase();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "token {:?}: sha256 must be 64 hex digits (printf %s \"$TOKEN\" | sha256sum)",
                    e.name
                ));
            }
            if e.name.trim().is_empty() {
                return Err("a token entry has an empty name".into());
            }
            if t.tokens.insert(h, (e.name.clone(), e.role)).is_some() {
                return Err(format!(
                    "token {:?}: the same token hash is listed twice",
                    e.name
                ));
            }
        }
        for e in f.certificate {
            if e.name.trim().is_empty() {
                return Err("a certificate entry has an empty name".into());
            }
            if t.certificates.insert(e.name.clone(), e.role).is_some() {
                return Err(format!("certificate {:?} is listed twice", e.name));
            }
        }
        Ok(t)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the auth file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("auth file {}: {e}", path.display()))
    }
}

/// How often the auth file's fingerprint is checked (on a request).
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// Authentication: the auth file (re-read on change), or off.
pub struct Authenticator {
    file: Option<PathBuf>,
    state: Mutex<(Instant, Fingerprint, AuthTable)>,
}

impl Authenticator {
    /// Every caller is `anonymous` with role admin: only on loopback, or
    /// with `--insecure-listen` (the daemon enforces that).
    pub fn disabled() -> Self {
        Self {
            file: None,
            state: Mutex::new((Instant::now(), Fingerprint::of([]), AuthTable::default())),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, String> {
        let fp = Fingerprint::of([path]);
        let table = AuthTable::load(path)?;
        info!(
            file = %path.display(),
            tokens = table.tokens.len(),
            certificates = table.certificates.len(),
            "auth file loaded"
        );
        Ok(Self {
            file: Some(path.to_owned()),
            state: Mutex::new((Instant::now(), fp, table)),
        })
    }

    pub fn enabled(&self) -> bool {
        self.file.is_some()
    }

    /// The current table; re-read when the file changed (a file that does
    /// not parse keeps the previous table, logged).
    fn table(&self) -> AuthTable {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(path) = &self.file {
            if st.0.elapsed() >= RELOAD_CHECK {
                st.0 = Instant::now();
                let fp = Fingerprint::of([path.as_path()]);
                if fp != st.1 {
                    match AuthTable::load(path) {
                        Ok(t) => {
                            info!(
                                file = %path.display(),
                                tokens = t.tokens.len(),
                                certificates = t.certificates.len(),
                                "auth file reloaded"
                            );
                            st.1 = fp;
                            st.2 = t;
                        }
                        Err(e) => warn!("keeping the previous auth table: {e}"),
                    }
                }
            }
        }
        st.2.clone()
    }

    /// Who sent `metadata` over the connection `peer`. A token that is
    /// presented must be valid (no fallback to the certificate).
    pub fn authenticate(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        peer: Option<&PeerInfo>,
    ) -> Result<Caller, Status> {
        if !self.enabled() {
            return Ok(Caller {
                name: "anonymous".into(),
                role: Role::Admin,
                via: "anonymous",
            });
        }
        let table = self.table();
        if let Some(v) = metadata.get("authorization") {
            let v = v
                .to_str()
                .map_err(|_| Status::unauthenticated("malformed authorization header"))?;
            let token = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .ok_or_else(|| {
                    Status::unauthenticated("authorization header must be \"Bearer <token>\"")
                })?
                .trim();
            let hash = rackline_security::sha256_hex(token);
            return match table.tokens.get(&hash) {
                Some((name, role)) => Ok(Caller {
                    name: name.clone(),
                    role: *role,
                    via: "token",
                }),
                None => Err(Status::unauthenticated(
                    "unknown token (not in netmaster's auth file)",
                )),
            };
        }
        if let Some(leaf) = peer
            .and_then(|p| p.certs.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| CertSummary::parse(c).ok())
        {
            for id in leaf.identities() {
                if let Some(role) = table.certificates.get(id) {
                    return Ok(Caller {
                        name: id.to_string(),
                        role: *role,
                        via: "certificate",
                    });
                }
            }
            return Err(Status::unauthenticated(format!(
                "client certificate {:?} is not in netmaster's auth file",
                leaf.common_name.unwrap_or_default()
            )));
        }
        Err(Status::unauthenticated(
            "no credentials: present a bearer token (--token-file) or a client certificate (--cert-file/--key-file)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_files_are_validated() {
        let h = rackline_security::sha256_hex("t0k3n");
        let t = AuthTable::parse(&format!(
            "[[token]]\nname = \"alice\"\nrole = \"operator\"\nsha256 = \"{}\"\n\n[[certificate]]\nname = \"ipamd\"\nrole = \"node\"\n",
            h.to_uppercase()
        ))
        .unwrap();
        assert_eq!(t.tokens[&h], ("alice".to_string(), Role::Operator));
        assert_eq!(t.certificates["ipamd"], Role::Node);
        for bad in [
            "[[token]]\nname = \"a\"\nrole = \"root\"\nsha256 = \"00\"\n",
            "[[token]]\nname = \"a\"\nrole = \"admin\"\nsha256 = \"abc\"\n",
            "[[token]]\nname = \"a\"\nrole = \"admin\"\ntoken = \"plain\"\n",
            "[[certificate]]\nname = \"\"\nrole = \"admin\"\n",
            "[[user]]\nname = \"a\"\n",
        ] {
            assert!(AuthTable::parse(bad).is_err(), "{bad}");
        }
    }
}
