//! ipamd's client for netmaster: node registration and blocks. Never on the
//! ADD path: blocks are fetched ahead of need by the block manager.
//!
//! Any replica answers; writes on a follower are refused with the leader's
//! address in the message, which is tried next.

use std::net::Ipv4Addr;
use std::time::Duration;

use rackline_proto::admin::v1 as pb;
use rackline_proto::admin::v1::admin_client::AdminClient as RawClient;
use rackline_security::client::{ClientAuth, TokenInterceptor};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::debug;

type AdminClient = RawClient<InterceptedService<Channel, TokenInterceptor>>;

#[derive(Debug, thiserror::Error)]
pub enum NetmasterError {
    #[error("no netmaster endpoint configured (--netmaster)")]
    NotConfigured,
    #[error("the rack has no free block left")]
    Exhausted,
    #[error("netmaster: {0}")]
    Refused(String),
    #[error("netmaster unreachable: {0}")]
    Unreachable(String),
}

pub struct NetmasterClient {
    endpoints: Vec<String>,
    auth: ClientAuth,
    timeout: Duration,
    /// Index of the endpoint that answered last.
    preferred: std::sync::atomic::AtomicUsize,
}

/// A bare `host:port` gets `scheme` (https when TLS is configured).
fn normalise(ep: &str, scheme: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("{scheme}://{ep}")
    }
}

/// The leader a follower's refusal names (see
/// `rackline_admin_client::redirect`), as "<scheme>://10.0.0.3:7650".
fn leader_hint(s: &tonic::Status, scheme: &str) -> Option<String> {
    rackline_admin_client::redirect::leader_of(s).map(|addr| normalise(&addr, scheme))
}

impl NetmasterClient {
    /// `tls`: bare `host:port` endpoints are https:// (a CA is configured).
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        Self::with_auth(endpoints, timeout, ClientAuth::none(), false)
    }

    pub fn with_auth(endpoints: &[String], timeout: Duration, auth: ClientAuth, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        Self {
            endpoints: endpoints.iter().map(|e| normalise(e, scheme)).collect(),
            auth,
            timeout,
            preferred: 0.into(),
        }
    }

    pub fn is_configured(&self) -> bool {
        !self.endpoints.is_empty()
    }

    async fn connect(&self, ep: &str) -> Result<AdminClient, NetmasterError> {
        let ch = self
            .auth
            .endpoint(ep)
            .map_err(|e| NetmasterError::Refused(format!("bad endpoint {ep}: {e}")))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| {
                let chain = rackline_security::tls::error_chain(&e);
                let why = rackline_security::tls::explain_tls_failure(
                    &chain,
                    "netmaster",
                    "--netmaster-ca-file",
                    "--netmaster-cert-file",
                );
                NetmasterError::Unreachable(match why {
                    Some(w) => format!("{ep}: {w} ({chain})"),
                    None => format!("{ep}: {chain}"),
                })
            })?;
        Ok(RawClient::with_interceptor(ch, self.auth.interceptor()))
    }

    /// Runs `call` against the preferred endpoint, then the others; follows
    /// a leader hint once per endpoint.
    async fn with_failover<T, F, Fut>(&self, call: F) -> Result<T, NetmasterError>
    where
        F: Fn(AdminClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        if self.endpoints.is_empty() {
            return Err(NetmasterError::NotConfigured);
        }
        let n = self.endpoints.len();
        let start = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % n;
        let mut last = NetmasterError::NotConfigured;
        for i in 0..n {
            let idx = (start + i) % n;
            let mut target = self.endpoints[idx].clone();
            for _hop in 0..2 {
                let client = match self.connect(&target).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        break;
                    }
                };
                match call(client).await {
                    Ok(r) => {
                        self.preferred
                            .store(idx, std::sync::atomic::Ordering::Relaxed);
                        return Ok(r.into_inner());
                    }
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        return Err(NetmasterError::Exhausted)
                    }
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        let scheme = target.split("://").next().unwrap_or("http");
                        match leader_hint(&s, scheme) {
                            Some(l) if l != target => {
                                debug!(from = %target, to = %l, "following the netmaster leader");
                                target = l;
                                last = NetmasterError::Refused(s.message().to_string());
                            }
                            _ => return Err(NetmasterError::Refused(s.message().to_string())),
                        }
                    }
                    Err(s)
                        if matches!(
                            s.code(),
                            tonic::Code::Unavailable
                                | tonic::Code::DeadlineExceeded
                                | tonic::Code::Unknown
                        ) =>
                    {
                        last = NetmasterError::Unreachable(format!("{target}: {}", s.message()));
                        break;
                    }
                    Err(s) => return Err(NetmasterError::Refused(s.message().to_string())),
                }
            }
        }
        Err(last)
    }

    pub async fn register_node(&self, node: pb::Node) -> Result<pb::Node, NetmasterError> {
        self.with_failover(|mut c| {
            let node = node.clone();
            async move {
                c.register_node(pb::RegisterNodeRequest { node: Some(node) })
                    .await
            }
        })
        .await
    }

    /// A block for `node`; `known` lists the node's blocks this ipamd has
    /// seen, so netmaster answers a repeated request (a lost reply, or a
    /// block our watch has not delivered yet) with that block instead of a
    /// second one.
    pub async fn acquire_block(
        &self,
        network: &str,
        node: &str,
        known: &[Ipv4Addr],
    ) -> Result<pb::Block, NetmasterError> {
        let known = pb::KnownBlocks {
            first: known.iter().map(ToString::to_string).collect(),
        };
        self.with_failover(|mut c| {
            let req = pb::AcquireBlockRequest {
                network: network.to_string(),
                node: node.to_string(),
                known: Some(known.clone()),
            };
            async move { c.acquire_block(req).await }
        })
        .await
    }

    pub async fn release_block(
        &self,
        network: &str,
        first: &str,
        node: &str,
    ) -> Result<bool, NetmasterError> {
        self.with_failover(|mut c| {
            let req = pb::ReleaseBlockRequest {
                network: network.to_string(),
                first: first.to_string(),
                node: node.to_string(),
            };
            async move { c.release_block(req).await }
        })
        .await
        .map(|r| r.released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_hints_are_parsed() {
        let refused = |m: &str| tonic::Status::failed_precondition(m.to_string());
        assert_eq!(
            leader_hint(&refused("not the leader; leader is 10.0.0.3:7650"), "http").as_deref(),
            Some("http://10.0.0.3:7650")
        );
        assert_eq!(
            leader_hint(&refused("not the leader; leader is 10.0.0.3:7650"), "https").as_deref(),
            Some("https://10.0.0.3:7650")
        );
        assert_eq!(
            leader_hint(&refused("not the leader; leader is http://h:1."), "https").as_deref(),
            Some("http://h:1")
        );
        assert_eq!(leader_hint(&refused("no leader elected yet"), "http"), None);
        // The typed redirect of current replicas.
        let typed = rackline_admin_client::redirect::not_leader("refused".into(), "10.0.0.4:7650");
        assert_eq!(
            leader_hint(&typed, "https").as_deref(),
            Some("https://10.0.0.4:7650")
        );
    }
}
