//! Test certificates made with rcgen (pure Rust): a CA per test, server
//! certificates for loopback, client certificates by common name, expired
//! ones, all written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority that signs test certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub cert_pem: String,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// etcd members use one certificate for both sides.
    Both,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = p.self_signed(&key).expect("self-signing the CA");
        Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// Writes the CA certificate to `path`.
    pub fn write_cert(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.cert_pem).expect("writing CA cert");
        path.to_owned()
    }

    /// Issues a certificate for `cn` with `sans` (DNS names or IP
    /// addresses) and writes `<dir>/<stem>.crt` and `<stem>.key`.
    pub fn issue(
        &self,
        dir: &Path,
        stem: &str,
        cn: &str,
        sans: &[&str],
        usage: Usage,
    ) -> CertFiles {
        self.issue_with(dir, stem, cn, sans, usage, false)
    }

    /// Same, already expired (valid 2000-01-01 to 2001-01-01).
    pub fn issue_expired(&self, dir: &Path, stem: &str, cn: &str, usage: Usage) -> CertFiles {
        self.issue_with(dir, stem, cn, &[], usage, true)
    }

    fn issue_with(
        &self,
        dir: &Path,
        stem: &str,
        cn: &str,
        sans: &[&str],
        usage: Usage,
        expired: bool,
    ) -> CertFiles {
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("certificate params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = match usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Usage::Both => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        if expired {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().expect("key");
        let cert = p.signed_by(&key, &self.issuer).expect("signing");
        let files = CertFiles {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        write_private(&files.cert, cert.pem().as_bytes());
        write_private(&files.key, key.serialize_pem().as_bytes());
        files
    }
}

/// Writes a file by rename (as cert-manager and kubelet replace theirs), so
/// a reader never sees half a file; mode 0600.
pub fn write_private(path: &Path, content: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!(
        "tmp{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .expect("creating a PEM file");
        f.write_all(content).expect("writing a PEM file");
    }
    std::fs::rename(&tmp, path).expect("renaming a PEM file into place");
}
