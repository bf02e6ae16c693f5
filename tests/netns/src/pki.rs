//! The lab's certificates and tokens, made once per lab (rcgen, pure Rust) in `<dir>/pki/`:
//! TLS everywhere by default, as docs/security.md prescribes for production.
//!
//! - one CA; etcd's server certificate (SAN: `ctrl`'s address) with `--client-cert-auth`;
//! - a client certificate for the daemons (CN `rackline`) and one for etcdctl (CN `root`);
//! - netmaster's server certificate (SAN: `ctrl`'s address) and its auth file: an `admin`
//!   token for the lab's racklinectl and a `node` token for every ipamd;
//! - racklinectl's config file (`ca-file`, `token-file`).
//!
//! Generating all of it takes a few milliseconds (ECDSA P-256); handshakes on loopback-like
//! veths cost about a millisecond, so TLS adds no measurable start-up time.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rackline_testkit::pki::{write_private, Ca, CertFiles, Usage};

/// The files of a lab's PKI.
#[derive(Debug, Clone)]
pub struct LabPki {
    pub dir: PathBuf,
    /// The CA every certificate is signed by (and every client trusts).
    pub ca: PathBuf,
    pub etcd_server: CertFiles,
    /// ipamd's and netmaster's etcd client certificate.
    pub etcd_client: CertFiles,
    /// etcdctl's client certificate (CN `root`).
    pub etcdctl: CertFiles,
    pub netmaster: CertFiles,
    /// netmaster's `--auth-file`.
    pub auth_file: PathBuf,
    /// The racklinectl token (role admin).
    pub admin_token: PathBuf,
    /// The ipamd token (role node).
    pub node_token: PathBuf,
    /// racklinectl's `--config` (CA and admin token).
    pub ctl_config: PathBuf,
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

use rackline_security::sha256_hex;

impl LabPki {
    /// Makes every file under `<lab dir>/pki/` for a `ctrl` at `ctrl_addr`.
    pub fn generate(lab_dir: &Path, ctrl_addr: Ipv4Addr) -> Result<Self> {
        let dir = lab_dir.join("pki");
        std::fs::create_dir_all(&dir)?;
        let ca = Ca::new("rackline-lab-ca");
        let ctrl = ctrl_addr.to_string();
        // Every etcd member's address ([`crate::Lab::etcd_member_addr`]): one certificate
        // serves the whole cluster.
        let members: Vec<String> = (0..crate::daemons::MAX_ETCD_MEMBERS as u32)
            .map(|i| Ipv4Addr::from(u32::from(ctrl_addr) + i).to_string())
            .collect();
        let mut etcd_sans: Vec<&str> = members.iter().map(String::as_str).collect();
        etcd_sans.push("localhost");
        let pki = LabPki {
            ca: ca.write_cert(&dir.join("ca.crt")),
            etcd_server: ca.issue(&dir, "etcd", "etcd", &etcd_sans, Usage::Both),
            etcd_client: ca.issue(&dir, "etcd-client", "rackline", &[], Usage::Client),
            etcdctl: ca.issue(&dir, "etcdctl", "root", &[], Usage::Client),
            netmaster: ca.issue(
                &dir,
                "netmaster",
                "netmaster",
                &[&ctrl, "localhost"],
                Usage::Server,
            ),
            auth_file: dir.join("auth.toml"),
            admin_token: dir.join("admin.token"),
            node_token: dir.join("node.token"),
            ctl_config: dir.join("racklinectl.toml"),
            dir,
        };
        let (admin, node) = (random_token()?, random_token()?);
        write_private(&pki.admin_token, admin.as_bytes());
        write_private(&pki.node_token, node.as_bytes());
        write_private(
            &pki.auth_file,
            format!(
                "# rackline lab\n[[token]]\nname = \"lab-admin\"\nrole = \"admin\"\nsha256 = \"{}\"\n\n\
                 [[token]]\nname = \"lab-ipamd\"\nrole = \"node\"\nsha256 = \"{}\"\n",
                sha256_hex(&admin),
                sha256_hex(&node)
            )
            .as_bytes(),
        );
        write_private(
            &pki.ctl_config,
            format!(
                "ca-file = \"{}\"\ntoken-file = \"{}\"\n",
                pki.ca.display(),
                pki.admin_token.display()
            )
            .as_bytes(),
        );
        Ok(pki)
    }

    /// etcd's server flags.
    pub fn etcd_server_args(&self) -> Vec<String> {
        [
            "--cert-file",
            &self.etcd_server.cert.display().to_string(),
            "--key-file",
            &self.etcd_server.key.display().to_string(),
            "--client-cert-auth",
            "--trusted-ca-file",
            &self.ca.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    }

    /// etcdctl's TLS flags.
    pub fn etcdctl_args(&self) -> Vec<String> {
        vec![
            format!("--cacert={}", self.ca.display()),
            format!("--cert={}", self.etcdctl.cert.display()),
            format!("--key={}", self.etcdctl.key.display()),
        ]
    }

    /// The daemons' etcd credential flags.
    pub fn etcd_client_args(&self) -> Vec<String> {
        vec![
            "--etcd-ca-file".into(),
            self.ca.display().to_string(),
            "--etcd-cert-file".into(),
            self.etcd_client.cert.display().to_string(),
            "--etcd-key-file".into(),
            self.etcd_client.key.display().to_string(),
        ]
    }

    /// netmaster's listener flags.
    pub fn netmaster_args(&self) -> Vec<String> {
        vec![
            "--tls-cert-file".into(),
            self.netmaster.cert.display().to_string(),
            "--tls-key-file".into(),
            self.netmaster.key.display().to_string(),
            "--client-ca-file".into(),
            self.ca.display().to_string(),
            "--auth-file".into(),
            self.auth_file.display().to_string(),
        ]
    }

    /// ipamd's flags towards netmaster.
    pub fn ipamd_netmaster_args(&self) -> Vec<String> {
        vec![
            "--netmaster-ca-file".into(),
            self.ca.display().to_string(),
            "--netmaster-token-file".into(),
            self.node_token.display().to_string(),
        ]
    }
}
