//! TLS material from files: certificates, keys and CA bundles in PEM, checked
//! up front so a misconfiguration is reported by name (which file, what is
//! wrong with it) instead of as a handshake failure later; change detection
//! for rotation (cert-manager and kubelet replace files in place or swap a
//! symlink); and the rustls server configuration of netmaster's listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{what} {path} is not valid PEM: {reason}")]
    BadPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path} holds a certificate that cannot be parsed: {reason}")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("private key {key} does not belong to certificate {cert}: {reason}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Config(String),
}

/// Reads a whole file (PEM material is small).
fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate of a PEM file (a chain or a CA bundle), at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::BadPem {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::NoCertificate {
            what,
            path: path.to_owned(),
        });
    }
    for c in &certs {
        CertSummary::parse(c).map_err(|reason| TlsFileError::BadCertificate {
            what,
            path: path.to_owned(),
            reason,
        })?;
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsFileError> {
    let pem = read("private key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsFileError::BadPem {
        what: "private key",
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// What Rackline needs to know of a certificate: who it names and when it is
/// valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub common_name: Option<String>,
    /// DNS names, URIs, e-mail addresses and IP addresses of the
    /// subjectAltName extension, as text.
    pub alt_names: Vec<String>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

impl CertSummary {
    pub fn parse(der: &CertificateDer<'_>) -> Result<Self, String> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        let mut alt_names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) => {
                        alt_names.push(s.to_string())
                    }
                    GeneralName::IPAddress(b) => {
                        if let Ok(a) = <[u8; 4]>::try_from(*b) {
                            alt_names.push(std::net::Ipv4Addr::from(a).to_string())
                        } else if let Ok(a) = <[u8; 16]>::try_from(*b) {
                            alt_names.push(std::net::Ipv6Addr::from(a).to_string())
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Self {
            common_name,
            alt_names,
            not_before: system_time(cert.validity().not_before),
            not_after: system_time(cert.validity().not_after),
        })
    }

    /// Names a peer can be identified by: the CN first, then the SANs.
    pub fn identities(&self) -> impl Iterator<Item = &str> {
        self.common_name
            .as_deref()
            .into_iter()
            .chain(self.alt_names.iter().map(String::as_str))
    }

    /// `Some(problem)` when the certificate is not valid at `now`.
    pub fn validity_problem(&self, now: SystemTime) -> Option<String> {
        if now > self.not_after {
            Some(format!("expired at {}", fmt_time(self.not_after)))
        } else if now < self.not_before {
            Some(format!("not valid before {}", fmt_time(self.not_before)))
        } else {
            None
        }
    }
}

/// RFC 3339 UTC, second precision (no date crate needed for a log line).
pub fn fmt_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_else(|e| -(e.duration().as_secs() as i64));
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of the day `days` after 1970-01-01 (negative: before),
/// by H. Hinnant's civil-from-days algorithm. Shared by every date this
/// project prints; date crates refuse or panic on times before the epoch,
/// which a hostile certificate can carry.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A client or server identity: certificate chain and key from two files,
/// checked to belong together.
#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// An identity as loaded: the PEM text (what tonic's TLS configs take) and
/// the leaf certificate's summary.
#[derive(Debug, Clone)]
pub struct LoadedIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub chain: Vec<CertificateDer<'static>>,
    pub leaf: CertSummary,
}

impl IdentityFiles {
    pub fn load(&self) -> Result<LoadedIdentity, TlsFileError> {
        let chain = load_certs("certificate", &self.cert)?;
        let key = load_key(&self.key)?;
        let provider = rustls::crypto::ring::default_provider();
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |e| TlsFileError::KeyMismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
                reason: e.to_string(),
            },
        )?;
        let leaf =
            CertSummary::parse(&chain[0]).map_err(|reason| TlsFileError::BadCertificate {
                what: "certificate",
                path: self.cert.clone(),
                reason,
            })?;
        Ok(LoadedIdentity {
            cert_pem: read("certificate", &self.cert)?,
            key_pem: read("private key", &self.key)?,
            chain,
            leaf,
        })
    }
}

/// Reads a CA bundle as PEM text (checked to hold at least one certificate).
pub fn load_ca_pem(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    load_certs("CA bundle", path)?;
    read("CA bundle", path)
}

/// What identifies a file's current content without reading it: replaced
/// files (a new inode, as `mv` or a symlink swap make) and files rewritten in
/// place (mtime, size) both change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(Vec<Option<FileStat>>);

/// dev, inode, mtime (s, ns), size.
type FileStat = (u64, u64, i64, i64, u64);

impl Fingerprint {
    /// `stat` (following symlinks) of every path; a missing file is part of
    /// the fingerprint too.
    pub fn of<'a>(paths: impl IntoIterator<Item = &'a Path>) -> Self {
        use std::os::unix::fs::MetadataExt;
        Self(
            paths
                .into_iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .map(|m| (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()))
                })
                .collect(),
        )
    }
}

/// netmaster's listener: its certificate and key, and, with `client_ca`,
/// client certificates verified against that bundle. Clients without a
/// certificate are still admitted at the TLS layer (they may carry a bearer
/// token); authorisation decides later.
pub fn server_config(
    identity: &LoadedIdentity,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsFileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsFileError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs("client CA bundle", ca)? {
                roots.add(c).map_err(|e| {
                    TlsFileError::Config(format!("client CA bundle {}: {e}", ca.display()))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsFileError::Config(format!("client CA bundle: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(identity.chain.clone(), load_key(key)?)
        .map_err(|e| TlsFileError::Config(format!("server certificate: {e}")))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Turns a TLS failure buried in an error chain into a sentence that names
/// the likely cause and the flag that fixes it. `peer` names the server
/// ("etcd", "netmaster"); `flags` the caller's CA and certificate flags.
pub fn explain_tls_failure(
    chain: &str,
    peer: &str,
    ca_flag: &str,
    cert_flag: &str,
) -> Option<String> {
    let has = |s: &str| chain.contains(s);
    if has("UnknownIssuer") || has("BadSignature") {
        Some(format!(
            "{peer}'s server certificate is not signed by a CA in {ca_flag} (wrong CA bundle?)"
        ))
    } else if has("NotValidForName") {
        Some(format!(
            "{peer}'s server certificate does not name the address used to reach it (add it as a SAN, or connect by a name the certificate has)"
        ))
    } else if has("invalid peer certificate: Expired") {
        Some(format!("{peer}'s server certificate has expired"))
    } else if has("CertificateRequired") {
        Some(format!(
            "{peer} requires a client certificate: set {cert_flag} and its key"
        ))
    } else if has("BadCertificate")
        || has("UnknownCA")
        || has("CertificateExpired")
        || has("CertificateUnknown")
        || has("CertificateRevoked")
        || has("certificate required")
    {
        Some(format!(
            "{peer} rejected our client certificate ({cert_flag}): it is expired or not signed by a CA {peer} trusts"
        ))
    } else if has("InvalidContentType") || has("CorruptMessage") || has("wrong version number") {
        Some(format!(
            "{peer} does not speak TLS on this port (use an http:// URL, or enable TLS on {peer})"
        ))
    } else {
        None
    }
}

/// The whole `source()` chain of an error, `: `-separated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_formatted_as_utc() {
        assert_eq!(fmt_time(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            fmt_time(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            fmt_time(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn days_before_the_epoch_and_leap_days_are_civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-25_567), (1900, 1, 1));
        assert_eq!(
            fmt_time(UNIX_EPOCH - Duration::from_secs(1)),
            "1969-12-31T23:59:59Z"
        );
    }

    fn self_signed(cn: &str, san: &str) -> (String, String) {
        let mut p = rcgen::CertificateParams::new(vec![san.to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, cn.to_string());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn identities_load_and_mismatched_keys_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = self_signed("alice", "alice.example");
        let (_, k2) = self_signed("bob", "bob.example");
        let w = |n: &str, s: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, s).unwrap();
            p
        };
        let ok = IdentityFiles {
            cert: w("c1", &c1),
            key: w("k1", &k1),
        }
        .load()
        .unwrap();
        assert_eq!(ok.leaf.common_name.as_deref(), Some("alice"));
        assert_eq!(ok.leaf.alt_names, ["alice.example"]);
        assert!(ok.leaf.validity_problem(SystemTime::now()).is_none());
        let bad = IdentityFiles {
            cert: w("c1", &c1),
            key: w("k2", &k2),
        }
        .load()
        .unwrap_err();
        assert!(matches!(bad, TlsFileError::KeyMismatch { .. }), "{bad}");
        let e = load_certs("CA bundle", &w("junk", "hello")).unwrap_err();
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = load_certs("CA bundle", &dir.path().join("missing")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read CA bundle"), "{e}");
    }

    #[test]
    fn fingerprints_see_replacement_and_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "a").unwrap();
        let f0 = Fingerprint::of([p.as_path()]);
        assert_eq!(f0, Fingerprint::of([p.as_path()]));
        let tmp = dir.path().join("g");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        assert_ne!(f0, Fingerprint::of([p.as_path()]));
        std::fs::remove_file(&p).unwrap();
        assert_ne!(f0, Fingerprint::of([p.as_path()]));
    }

    #[test]
    fn tls_failures_are_explained() {
        let e = explain_tls_failure(
            "transport error: invalid peer certificate: UnknownIssuer",
            "etcd",
            "--etcd-ca-file",
            "--etcd-cert-file",
        )
        .unwrap();
        assert!(e.contains("--etcd-ca-file"), "{e}");
        let e = explain_tls_failure(
            "transport error: received fatal alert: BadCertificate",
            "etcd",
            "--etcd-ca-file",
            "--etcd-cert-file",
        )
        .unwrap();
        assert!(e.contains("rejected our client certificate"), "{e}");
        assert!(explain_tls_failure("connection refused", "etcd", "a", "b").is_none());
    }
}
