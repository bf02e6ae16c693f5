//! The admin client: one channel to netmaster, replica failover and
//! leader following for every call, and errors sorted by what the caller
//! can do about them (fix the request, or get the server back), which is
//! what racklinectl's exit codes (CONTRACTS.md) and ipamd's retries
//! distinguish.
//!
//! Replicas: the client is given one address or a list. It talks to the
//! first that connects; a call answered `Unavailable` (replica or its etcd
//! down, no leader yet) moves on to the next listed replica; a write refused
//! by a follower (the [`redirect`](crate::redirect) naming the leader) is
//! retried once at that leader. Every RPC goes through
//! [`AdminClient::call`] to get this.

use std::future::Future;
use std::time::Duration;

use rackline_proto::admin::v1::admin_client::AdminClient as RawClient;
use rackline_security::client::{ClientAuth, TokenInterceptor};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::debug;

/// The generated client over one channel, every request carrying our
/// bearer token (if any).
pub type Raw = RawClient<InterceptedService<Channel, TokenInterceptor>>;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid server address {0:?}: {1}")]
    BadServer(String, String),
    #[error("cannot reach netmaster at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered with an error; its message is for the operator.
    #[error("{}", .0.message())]
    Rpc(Status),
}

impl ClientError {
    /// True when retrying later may help: the server or its etcd is down.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Rpc(s) => matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded),
            ClientError::BadServer(..) => false,
        }
    }
}

/// The largest reply accepted. tonic's 4 MiB default is ~20k leases; a big
/// rack's full lease list must still come back in one reply (until the API
/// pages).
pub const MAX_REPLY_BYTES: usize = 256 << 20;

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// Per request; the server retries contended etcd transactions, so this
    /// is generous.
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
        }
    }
}

/// Cloning is cheap (the channel is shared) and gives an independent
/// failover position: concurrent callers each clone one.
#[derive(Clone)]
pub struct AdminClient {
    inner: Raw,
    auth: ClientAuth,
    /// The replicas given, in order.
    servers: Vec<Endpoint>,
    /// Index in `servers` of the replica `inner` talks to (a leader we were
    /// sent to keeps the index of the replica that sent us).
    current: usize,
    timeouts: Timeouts,
}

/// The comma-separated `servers` as endpoints. Validates every address
/// first: a typo is a usage error even when an earlier replica would have
/// answered.
pub fn endpoints(servers: &str, t: Timeouts, auth: &ClientAuth) -> Result<Vec<Endpoint>> {
    let list: Vec<Endpoint> = servers
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            auth.endpoint(s)
                .map(|e| e.connect_timeout(t.connect).timeout(t.request))
                .map_err(|e| ClientError::BadServer(s.to_string(), e))
        })
        .collect::<Result<_>>()?;
    if list.is_empty() {
        return Err(ClientError::BadServer(
            servers.to_string(),
            "no address given".into(),
        ));
    }
    Ok(list)
}

/// A channel to `endpoint`. A TLS handshake that fails says why in the
/// caller's own flag names (`--ca-file` for racklinectl,
/// `--netmaster-ca-file` for ipamd: the ones `auth` was loaded with).
async fn open(endpoint: &Endpoint, auth: &ClientAuth) -> Result<Raw> {
    let channel = endpoint.connect().await.map_err(|e| {
        let chain = error_chain(&e);
        let flags = auth.flag_names();
        ClientError::Unreachable {
            server: rackline_security::redact_url(&endpoint.uri().to_string()),
            reason: match rackline_security::tls::explain_tls_failure(
                &chain,
                "netmaster",
                flags.ca,
                flags.cert,
            ) {
                Some(why) => format!("{why} ({chain})"),
                None => chain,
            },
        }
    })?;
    Ok(RawClient::with_interceptor(channel, auth.interceptor())
        .max_decoding_message_size(MAX_REPLY_BYTES))
}

impl AdminClient {
    /// Connects eagerly (to the first of the comma-separated `servers` that
    /// answers) so an unreachable server is reported as such, not as the
    /// failure of whatever call came first.
    pub async fn connect(servers: &str, t: Timeouts) -> Result<Self> {
        Self::connect_with(servers, t, ClientAuth::none()).await
    }

    /// Same, with TLS and credentials (`https://` servers need a CA).
    pub async fn connect_with(servers: &str, t: Timeouts, auth: ClientAuth) -> Result<Self> {
        let list = endpoints(servers, t, &auth)?;
        Self::connect_to(list, servers, t, auth).await
    }

    /// Connects to the first of `list` (already validated, see
    /// [`endpoints`]) that answers; `named` is how the caller wrote the
    /// list, for the error when none does.
    pub async fn connect_to(
        list: Vec<Endpoint>,
        named: &str,
        t: Timeouts,
        auth: ClientAuth,
    ) -> Result<Self> {
        let mut reasons = Vec::new();
        for (i, e) in list.iter().enumerate() {
            match open(e, &auth).await {
                Ok(inner) => {
                    return Ok(Self {
                        inner,
                        auth,
                        servers: list,
                        current: i,
                        timeouts: t,
                    })
                }
                Err(ClientError::Unreachable { server, reason }) if list.len() > 1 => {
                    reasons.push(format!("{server}: {reason}"))
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Unreachable {
            server: named.to_string(),
            reason: reasons.join("; "),
        })
    }

    /// The listed replica this client talks to (credentials in the URL
    /// redacted), for messages.
    pub fn server(&self) -> String {
        rackline_security::redact_url(&self.servers[self.current].uri().to_string())
    }

    /// Runs one RPC with replica failover: on `Unavailable` the next listed
    /// replica that connects gets the same request; on a follower's refusal
    /// naming the leader, the leader gets it (once). Retrying is safe for
    /// every admin write: creates are refused as duplicates and deletes as
    /// not found if the first attempt did land.
    pub async fn call<T, F, Fut>(&mut self, mut rpc: F) -> Result<T>
    where
        F: FnMut(Raw) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let mut followed = false;
        let mut next = self.current + 1;
        loop {
            let status = match rpc(self.inner.clone()).await {
                Ok(reply) => return Ok(reply.into_inner()),
                Err(s) => connection_lost(s),
            };
            if !followed {
                if let Some(leader) = self.leader_named_by(&status)? {
                    followed = true;
                    debug!(from = %self.server(), to = %leader.uri(), "following the netmaster leader");
                    // An unreachable leader is "try again later" (exit 3):
                    // a successor is elected within the lease TTL.
                    self.inner = open(&leader, &self.auth).await?;
                    continue;
                }
            }
            if status.code() == Code::Unavailable && self.fail_over(&mut next).await {
                continue;
            }
            return Err(ClientError::Rpc(status));
        }
    }

    /// The leader a follower's refusal names, reached the way the replicas
    /// are (https:// stays https://); `None` when `status` is no redirect.
    /// A leader address that does not parse leaves the refusal as the
    /// answer.
    fn leader_named_by(&self, status: &Status) -> Result<Option<Endpoint>> {
        let Some(addr) = crate::redirect::leader_of(status) else {
            return Ok(None);
        };
        let scheme = self.servers[self.current]
            .uri()
            .scheme_str()
            .unwrap_or("http");
        let url = if addr.contains("://") {
            addr
        } else {
            format!("{scheme}://{addr}")
        };
        endpoints(&url, self.timeouts, &self.auth)
            .map(|mut list| Some(list.remove(0)))
            .map_err(|_| ClientError::Rpc(status.clone()))
    }

    /// Moves to the next listed replica (from `*next` on) that connects;
    /// false when none is left.
    async fn fail_over(&mut self, next: &mut usize) -> bool {
        while *next < self.servers.len() {
            let i = *next;
            *next += 1;
            if let Ok(inner) = open(&self.servers[i], &self.auth).await {
                self.inner = inner;
                self.current = i;
                return true;
            }
        }
        false
    }
}

/// A call whose connection broke (the replica died mid-request) comes back
/// as `Unknown: transport error`; it is an unavailable server, not a
/// refusal: the next replica is tried and racklinectl exits 3.
pub(crate) fn connection_lost(s: Status) -> Status {
    use std::error::Error as _;
    let mut cur = s.source();
    while let Some(e) = cur {
        if e.is::<tonic::transport::Error>() {
            return Status::unavailable(format!(
                "connection to netmaster lost: {}",
                error_chain(e)
            ));
        }
        cur = e.source();
    }
    s
}

/// tonic's transport error says only "transport error"; the cause (e.g.
/// "Connection refused") is further down the chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_security::client::{ClientCredentials, FlagNames};
    use rackline_security::listener::ServerTls;
    use rackline_security::tls::IdentityFiles;
    use rackline_testkit::pki::Usage;

    #[test]
    fn every_listed_server_is_validated_first() {
        let t = Timeouts::default();
        let a = ClientAuth::none();
        let list = endpoints("http://10.0.0.2:7650, http://10.0.0.3:7650,", t, &a).unwrap();
        let uris: Vec<String> = list.iter().map(|e| e.uri().to_string()).collect();
        assert_eq!(uris, ["http://10.0.0.2:7650/", "http://10.0.0.3:7650/"]);
        let e = endpoints("http://10.0.0.2:7650,not a url", t, &a).unwrap_err();
        assert!(
            matches!(&e, ClientError::BadServer(s, _) if s == "not a url"),
            "{e}"
        );
        assert!(matches!(
            endpoints(" , ", t, &a),
            Err(ClientError::BadServer(..))
        ));
    }

    /// A client over `servers` that has not connected (nothing listens).
    fn unconnected(servers: &str, auth: ClientAuth) -> AdminClient {
        let t = Timeouts::default();
        let list = endpoints(servers, t, &auth).unwrap();
        let inner = RawClient::with_interceptor(list[0].connect_lazy(), auth.interceptor());
        AdminClient {
            inner,
            auth,
            servers: list,
            current: 0,
            timeouts: t,
        }
    }

    #[tokio::test]
    async fn leader_hints_are_followed_the_way_the_replicas_are_reached() {
        let refused = |m: &str| Status::failed_precondition(m.to_string());
        let leader = |c: &AdminClient, s: &Status| {
            c.leader_named_by(s).unwrap().map(|e| e.uri().to_string())
        };
        let plain = unconnected("http://10.0.0.2:7650", ClientAuth::none());
        assert_eq!(
            leader(&plain, &refused("not the leader; leader is 10.0.0.3:7650")).as_deref(),
            Some("http://10.0.0.3:7650/")
        );
        assert_eq!(leader(&plain, &refused("no leader elected yet")), None);
        assert_eq!(leader(&plain, &Status::unavailable("no leader yet")), None);

        // Replicas reached over TLS: so is the leader they name.
        let dir = tempfile::tempdir().unwrap();
        let ca = rackline_testkit::pki::Ca::new("netmaster-ca");
        let creds = ClientCredentials {
            ca_file: Some(ca.write_cert(&dir.path().join("ca.pem"))),
            ..Default::default()
        };
        let tls = unconnected("https://10.0.0.2:7650", creds.load(IPAMD_FLAGS).unwrap());
        assert_eq!(
            leader(&tls, &refused("not the leader; leader is 10.0.0.3:7650")).as_deref(),
            Some("https://10.0.0.3:7650/")
        );
        // A leader named with its scheme keeps it.
        assert_eq!(
            leader(&tls, &refused("not the leader; leader is http://h:1.")).as_deref(),
            Some("http://h:1/")
        );
        // The typed redirect of current replicas.
        let typed = crate::redirect::not_leader("refused".into(), "10.0.0.4:7650");
        assert_eq!(
            leader(&tls, &typed).as_deref(),
            Some("https://10.0.0.4:7650/")
        );
        // A leader address that does not parse: the refusal is the answer.
        let odd = refused("not the leader; leader is ftp://h:1");
        assert!(matches!(
            tls.leader_named_by(&odd),
            Err(ClientError::Rpc(s)) if s.message() == odd.message()
        ));
    }

    const IPAMD_FLAGS: FlagNames = FlagNames {
        ca: "--netmaster-ca-file",
        cert: "--netmaster-cert-file",
        key: "--netmaster-key-file",
        token: "--netmaster-token-file",
    };

    #[tokio::test]
    async fn a_failed_handshake_is_explained_in_the_callers_flags() {
        // netmaster's certificate is signed by a CA ipamd was not given: the
        // explanation names ipamd's flag, not racklinectl's.
        let dir = tempfile::tempdir().unwrap();
        let trusted = rackline_testkit::pki::Ca::new("netmaster-ca");
        let other = rackline_testkit::pki::Ca::new("other-ca");
        let served = other.issue(dir.path(), "nm", "netmaster", &["127.0.0.1"], Usage::Server);
        let tls = ServerTls::load(
            IdentityFiles {
                cert: served.cert,
                key: served.key,
            },
            None,
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = acceptor.accept(s).await;
            }
        });
        let creds = ClientCredentials {
            ca_file: Some(trusted.write_cert(&dir.path().join("ca.pem"))),
            ..Default::default()
        };
        let t = Timeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(5),
        };
        let e = AdminClient::connect_with(
            &format!("https://{addr}"),
            t,
            creds.load(IPAMD_FLAGS).unwrap(),
        )
        .await
        .err()
        .expect("the handshake must fail");
        match &e {
            ClientError::Unreachable { server, reason } => {
                assert!(server.contains(&addr.to_string()), "{e}");
                assert!(
                    reason.contains("not signed by a CA in --netmaster-ca-file"),
                    "{e}"
                );
            }
            other => panic!("{other}"),
        }
        assert!(e.is_unavailable());
    }

    #[test]
    fn only_transport_failures_become_unavailable() {
        let refused = Status::failed_precondition("not the leader; leader is h:1");
        assert_eq!(connection_lost(refused).code(), Code::FailedPrecondition);
        let plain = Status::unknown("transport error");
        assert_eq!(connection_lost(plain).code(), Code::Unknown);
    }
}
