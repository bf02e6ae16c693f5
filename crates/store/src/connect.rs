//! Connecting to etcd: endpoints (several = failover; etcd-client balances
//! over every endpoint that connects), TLS with a CA bundle and a client
//! certificate, and username/password authentication.
//!
//! Credentials live in files and are re-read when they change on disk
//! (cert-manager and kubelet rotate certificates by replacing files): a
//! background check compares the files' fingerprints every
//! `reload_interval` and, on a change, builds a fresh client with the new
//! material and swaps it in. Calls already running finish on the old
//! client; every new call takes the new one. Material that does not load
//! (a half-written pair, a key that does not match) keeps the old client
//! until the next check.
//!
//! Problems with credentials (wrong CA, expired or unknown client
//! certificate, wrong password) are explained in the errors the calls
//! return, naming the file or flag to fix, so the daemons' "etcd
//! unreachable" lines say why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

use etcd_client::{Client, ConnectOptions};
use rackline_security::tls::{self, Fingerprint, IdentityFiles};
use rackline_security::{redact_url, redact_urls, Secret};
use tracing::{error, info, warn};

use crate::{Result, StoreError};

/// How to reach etcd. Build it from the daemons' flags.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Deadline of every etcd call.
    pub timeout: Duration,
    /// CA bundle that signed etcd's server certificate (`https://` only).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key, for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub username: Option<String>,
    /// The password, read from this file (never from a command line).
    pub password_file: Option<PathBuf>,
    /// How often credential files are checked for changes.
    pub reload_interval: Duration,
}

/// Default interval of the credential-file check.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(5);

impl EtcdConfig {
    /// Plaintext, no credentials.
    pub fn plain(endpoints: &[String], prefix: &str, timeout: Duration) -> Self {
        Self {
            endpoints: endpoints.to_vec(),
            prefix: prefix.to_string(),
            timeout,
            ca_file: None,
            cert_file: None,
            key_file: None,
            username: None,
            password_file: None,
            reload_interval: RELOAD_INTERVAL,
        }
    }

    fn tls(&self) -> bool {
        self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// Checks the combination of flags (not the files: see [`Material`]).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(StoreError::Config(m));
        if self.endpoints.is_empty() {
            return bad("no etcd endpoint given (--etcd-endpoints)".into());
        }
        for e in &self.endpoints {
            if let Some((scheme, _)) = e.split_once("://") {
                if scheme != "http" && scheme != "https" {
                    return bad(format!(
                        "etcd endpoint {}: unknown scheme {scheme:?}; use https:// (TLS) or http://",
                        redact_url(e)
                    ));
                }
            }
        }
        let https = self
            .endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https != 0 && https != self.endpoints.len() {
            return bad(format!(
                "etcd endpoints mix https:// and plaintext: {}",
                redact_urls(&self.endpoints)
            ));
        }
        let tls_files = self.ca_file.is_some() || self.cert_file.is_some();
        if tls_files && https == 0 {
            return bad(
                "--etcd-ca-file/--etcd-cert-file need https:// etcd endpoints (--etcd-endpoints https://HOST:2379)"
                    .into(),
            );
        }
        if https != 0 && self.ca_file.is_none() {
            return bad("https:// etcd endpoints need --etcd-ca-file: the CA bundle that signed etcd's server certificate".into());
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            return bad("--etcd-cert-file and --etcd-key-file go together".into());
        }
        if self.username.is_some() != self.password_file.is_some() {
            return bad("--etcd-username and --etcd-password-file go together".into());
        }
        if self.reload_interval.is_zero() {
            return bad("the credential reload interval must be positive".into());
        }
        Ok(())
    }

    fn watched_files(&self) -> Vec<&Path> {
        [
            &self.ca_file,
            &self.cert_file,
            &self.key_file,
            &self.password_file,
        ]
        .into_iter()
        .flatten()
        .map(PathBuf::as_path)
        .collect()
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(self.watched_files())
    }

    /// One line for the daemons' ready log: endpoints (redacted) and the
    /// kind of credentials, never their content.
    pub fn describe(&self) -> String {
        let mut parts = vec![redact_urls(&self.endpoints)];
        if self.tls() {
            parts.push("tls".into());
        }
        if self.cert_file.is_some() {
            parts.push("client-cert".into());
        }
        if let Some(u) = &self.username {
            parts.push(format!("user={u}"));
        }
        parts.join(" ")
    }
}

/// The etcd credential flags both daemons take (flattened into their own
/// arguments beside `--etcd-endpoints`, `--etcd-prefix` and
/// `--etcd-timeout-ms`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EtcdCredentialArgs {
    /// CA bundle (PEM) that signed etcd's server certificate; needs
    /// https:// endpoints.
    #[arg(long, env = "RACKLINE_ETCD_CA_FILE", value_name = "PEM")]
    pub etcd_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's --client-cert-auth; re-read when
    /// it changes on disk.
    #[arg(long, env = "RACKLINE_ETCD_CERT_FILE", value_name = "PEM")]
    pub etcd_cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "RACKLINE_ETCD_KEY_FILE", value_name = "PEM")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (with --etcd-password-file).
    #[arg(long, env = "RACKLINE_ETCD_USERNAME", value_name = "USER")]
    pub etcd_username: Option<String>,
    /// File holding the etcd user's password (never on the command line);
    /// re-read when it changes.
    #[arg(long, env = "RACKLINE_ETCD_PASSWORD_FILE", value_name = "FILE")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdCredentialArgs {
    /// The full configuration, with the daemon's endpoint, prefix and
    /// timeout flags.
    pub fn config(&self, endpoints: &[String], prefix: &str, timeout: Duration) -> EtcdConfig {
        EtcdConfig {
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            username: self.etcd_username.clone(),
            password_file: self.etcd_password_file.clone(),
            ..EtcdConfig::plain(endpoints, prefix, timeout)
        }
    }
}

/// Credentials as loaded from the files.
struct Material {
    tls: Option<Arc<rustls::ClientConfig>>,
    identity: Option<tls::LoadedIdentity>,
    password: Option<Secret>,
}

impl Material {
    fn load(cfg: &EtcdConfig) -> Result<Self> {
        let file_err = |e: tls::TlsFileError| StoreError::Config(format!("etcd TLS: {e}"));
        let identity = match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => Some(
                IdentityFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }
                .load()
                .map_err(file_err)?,
            ),
            _ => None,
        };
        let tls = match &cfg.ca_file {
            Some(ca) => {
                let roots = tls::load_certs("CA bundle", ca).map_err(file_err)?;
                let id = match (&identity, &cfg.key_file) {
                    (Some(id), Some(key)) => {
                        Some((id.chain.clone(), tls::load_key(key).map_err(file_err)?))
                    }
                    _ => None,
                };
                Some(
                    crate::channel::client_config(&roots, id)
                        .map_err(|e| StoreError::Config(format!("etcd TLS: {e}")))?,
                )
            }
            None => None,
        };
        let password = cfg
            .password_file
            .as_deref()
            .map(|p| {
                Secret::from_file(p).map_err(|e| {
                    StoreError::Config(format!(
                        "cannot read the etcd password file {}: {e}",
                        p.display()
                    ))
                })
            })
            .transpose()?;
        Ok(Self {
            tls,
            identity,
            password,
        })
    }

    /// "client certificate X expired at T", checked locally: etcd's TLS
    /// alert does not say why it refused a certificate.
    fn validity_problem(&self, cfg: &EtcdConfig) -> Option<String> {
        let id = self.identity.as_ref()?;
        let p = id.leaf.validity_problem(SystemTime::now())?;
        Some(format!(
            "etcd client certificate {} (--etcd-cert-file) {p}",
            cfg.cert_file.as_deref().unwrap_or(Path::new("")).display()
        ))
    }
}

/// The current etcd client, replaced when credential files change.
pub(crate) struct EtcdHandle {
    inner: Arc<Inner>,
}

impl Clone for EtcdHandle {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner {
    cfg: EtcdConfig,
    current: RwLock<Client>,
    /// A credential problem found locally or by etcd (wrong password,
    /// expired certificate, file that does not load); cleared when fixed.
    problem: Mutex<Option<String>>,
    /// Username/password accepted by etcd on the current client.
    authenticated: std::sync::atomic::AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

async fn build_client(cfg: &EtcdConfig, m: &Material) -> Result<Client> {
    let targets = cfg
        .endpoints
        .iter()
        .map(|e| {
            crate::channel::Target::parse(e).map_err(|why| {
                StoreError::Config(format!("etcd endpoint {}: {why}", redact_url(e)))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let n = targets.len() as u32;
    let connector = crate::channel::Failover {
        targets: Arc::new(targets),
        tls: m.tls.clone(),
        connect_timeout: cfg.timeout,
        next: Arc::new(0.into()),
    };
    // The URI only names the channel: the connector picks the endpoint.
    let channel = tonic::transport::Endpoint::from_static("http://etcd.rackline.invalid")
        .connect_timeout(cfg.timeout * (2 * n + 1))
        .timeout(cfg.timeout)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(cfg.timeout.max(Duration::from_secs(2)))
        .keep_alive_while_idle(true)
        .connect_with_connector_lazy(connector);
    // Tokens expire (etcd's simple tokens after 5 min idle, and on an etcd
    // restart): get a new one instead of failing. The user is
    // authenticated after the connect (see `authenticate`), so the daemons
    // start while etcd is down.
    let opts = ConnectOptions::new().with_auto_token_refresh(true);
    Client::from_channel(etcd_client::Channel::Tonic(channel), Some(opts))
        .await
        .map_err(|e| StoreError::Config(format!("cannot set up the etcd client: {e}")))
}

impl EtcdHandle {
    pub(crate) async fn connect(cfg: EtcdConfig) -> Result<Self> {
        cfg.validate()?;
        for e in &cfg.endpoints {
            if e.split_once("://")
                .is_some_and(|(_, r)| r.split('/').next().is_some_and(|a| a.contains('@')))
            {
                warn!(
                    endpoint = %redact_url(e),
                    "credentials in an etcd URL are ignored: use --etcd-username and --etcd-password-file"
                );
            }
        }
        let material = Material::load(&cfg)?;
        let fp = cfg.fingerprint();
        let client = build_client(&cfg, &material).await?;
        let problem = material.validity_problem(&cfg);
        if let Some(p) = &problem {
            error!("{p}");
        }
        let inner = Arc::new(Inner {
            current: RwLock::new(client),
            problem: Mutex::new(problem),
            authenticated: false.into(),
            task: Mutex::new(None),
            cfg,
        });
        let handle = Self { inner };
        if let Some(pw) = &material.password {
            handle.authenticate(pw).await;
        }
        if !handle.inner.cfg.watched_files().is_empty() {
            let weak = Arc::downgrade(&handle.inner);
            let task = tokio::spawn(maintain(weak, fp, material.password));
            *handle.inner.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        }
        Ok(handle)
    }

    pub(crate) fn client(&self) -> Client {
        self.inner
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn problem(&self) -> Option<String> {
        self.inner
            .problem
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_problem(&self, p: Option<String>) {
        *self.inner.problem.lock().unwrap_or_else(|e| e.into_inner()) = p;
    }

    /// Authenticates the current client; records why it failed.
    async fn authenticate(&self, password: &Secret) -> bool {
        let Some(user) = self.inner.cfg.username.clone() else {
            return true;
        };
        let mut c = self.client();
        let r = tokio::time::timeout(
            self.inner.cfg.timeout,
            c.update_user(Some((user.clone(), password.expose().to_string()))),
        )
        .await;
        let ok = match r {
            Ok(Ok(())) => {
                info!(user = %user, "authenticated to etcd");
                if self
                    .problem()
                    .is_some_and(|p| p.starts_with("etcd authentication"))
                {
                    self.set_problem(None);
                }
                true
            }
            Ok(Err(e)) => {
                let e = StoreError::from(e);
                if let StoreError::Etcd(_) = e {
                    let p = format!(
                        "etcd authentication failed for user {user:?}: {e} (check --etcd-username and --etcd-password-file)"
                    );
                    error!("{p}");
                    self.set_problem(Some(p));
                } else {
                    warn!("cannot authenticate to etcd yet: {e}");
                }
                false
            }
            Err(_) => false,
        };
        self.inner
            .authenticated
            .store(ok, std::sync::atomic::Ordering::SeqCst);
        ok
    }

    /// An error with the known credential problem in front, if any.
    pub(crate) fn explain(&self, e: StoreError) -> StoreError {
        match (self.problem(), e) {
            (Some(p), StoreError::Unavailable(m)) if !m.contains(&p) => {
                StoreError::Unavailable(format!("{p}; {m}"))
            }
            (Some(p), StoreError::Etcd(e)) => StoreError::Unavailable(format!("{p}; {e}")),
            (_, e) => e,
        }
    }
}

/// Loads the changed credential files and swaps in a client built from
/// them: Some(the password they hold) once swapped, None when they do not
/// load or connect yet (the previous client stays).
async fn reload(handle: &EtcdHandle) -> Option<Option<Secret>> {
    let m = match Material::load(&handle.inner.cfg) {
        Ok(m) => m,
        // Often a rotation caught half-way (new certificate, old key): the
        // next check sees the finished pair.
        Err(e) => {
            warn!("etcd credentials changed but do not load yet: {e}");
            return None;
        }
    };
    let client = match build_client(&handle.inner.cfg, &m).await {
        Ok(c) => c,
        Err(e) => {
            warn!("keeping the previous etcd client: {e}");
            return None;
        }
    };
    *handle
        .inner
        .current
        .write()
        .unwrap_or_else(|e| e.into_inner()) = client;
    let problem = m.validity_problem(&handle.inner.cfg);
    match &problem {
        Some(p) => error!("reloaded etcd credentials, but {p}"),
        None => info!("etcd credentials changed on disk: reconnected with them"),
    }
    handle.set_problem(problem);
    handle
        .inner
        .authenticated
        .store(false, std::sync::atomic::Ordering::SeqCst);
    Some(m.password)
}

/// Watches the credential files; swaps in a new client when they change,
/// and keeps trying to authenticate while etcd has not accepted the user.
async fn maintain(weak: Weak<Inner>, mut fp: Fingerprint, mut password: Option<Secret>) {
    loop {
        let (interval, unauthenticated) = match weak.upgrade() {
            Some(inner) => (
                inner.cfg.reload_interval,
                inner.cfg.username.is_some()
                    && !inner
                        .authenticated
                        .load(std::sync::atomic::Ordering::SeqCst),
            ),
            None => return,
        };
        // Unauthenticated, retry sooner: etcd may just have come up.
        let wait = if unauthenticated {
            interval.min(Duration::from_millis(500))
        } else {
            interval
        };
        tokio::time::sleep(wait).await;
        let Some(inner) = weak.upgrade() else { return };
        let handle = EtcdHandle { inner };
        let now = handle.inner.cfg.fingerprint();
        if now != fp {
            if let Some(pw) = reload(&handle).await {
                fp = now;
                password = pw;
            }
        }
        if let Some(pw) = &password {
            if !handle
                .inner
                .authenticated
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                handle.authenticate(pw).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(eps: &[&str]) -> EtcdConfig {
        EtcdConfig::plain(
            &eps.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            "/rackline",
            Duration::from_secs(1),
        )
    }

    #[test]
    fn flag_combinations_are_checked() {
        assert!(cfg(&["http://h:1", "h:2"]).validate().is_ok());
        let e = cfg(&["ftp://h:1"]).validate().unwrap_err().to_string();
        assert!(e.contains("unknown scheme"), "{e}");
        let e = cfg(&["https://h:1"]).validate().unwrap_err().to_string();
        assert!(e.contains("--etcd-ca-file"), "{e}");
        let mut c = cfg(&["http://h:1"]);
        c.ca_file = Some("/ca".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("need https://"), "{e}");
        let mut c = cfg(&["https://h:1", "http://h:2"]);
        c.ca_file = Some("/ca".into());
        assert!(c.validate().unwrap_err().to_string().contains("mix"));
        let mut c = cfg(&["https://h:1"]);
        c.ca_file = Some("/ca".into());
        c.cert_file = Some("/c".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("go together"));
        let mut c = cfg(&["http://h:1"]);
        c.username = Some("u".into());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("go together"));
    }

    #[test]
    fn userinfo_is_stripped_and_never_described() {
        let c = cfg(&["https://root:pw@h:1", "http://u:p@h:2/x"]);
        assert!(!c.describe().contains("pw"), "{}", c.describe());
    }
}
