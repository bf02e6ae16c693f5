//! ipamd's client for netmaster: node registration and blocks. Never on the
//! ADD path: blocks are fetched ahead of need by the block manager.
//!
//! Any replica answers; writes on a follower are refused with the leader's
//! address in the message, which is tried next.

use std::time::Duration;

use rackline_proto::admin::v1 as pb;
use rackline_proto::admin::v1::admin_client::AdminClient;
use tonic::transport::{Channel, Endpoint};
use tracing::debug;

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
    timeout: Duration,
    /// Index of the endpoint that answered last.
    preferred: std::sync::atomic::AtomicUsize,
}

fn normalise(ep: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("http://{ep}")
    }
}

/// "not the leader; leader is 10.0.0.3:7650" -> "http://10.0.0.3:7650".
fn leader_hint(msg: &str) -> Option<String> {
    let rest = msg.split("leader is ").nth(1)?;
    let addr = rest
        .split_whitespace()
        .next()?
        .trim_end_matches(['.', ',', ';']);
    (!addr.is_empty()).then(|| normalise(addr))
}

impl NetmasterClient {
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        Self {
            endpoints: endpoints.iter().map(|e| normalise(e)).collect(),
            timeout,
            preferred: 0.into(),
        }
    }

    pub fn is_configured(&self) -> bool {
        !self.endpoints.is_empty()
    }

    async fn connect(&self, ep: &str) -> Result<AdminClient<Channel>, NetmasterError> {
        let ch = Endpoint::from_shared(ep.to_string())
            .map_err(|e| NetmasterError::Refused(format!("bad endpoint {ep}: {e}")))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .connect()
            .await
            .map_err(|e| NetmasterError::Unreachable(format!("{ep}: {e}")))?;
        Ok(AdminClient::new(ch))
    }

    /// Runs `call` against the preferred endpoint, then the others; follows
    /// a leader hint once per endpoint.
    async fn with_failover<T, F, Fut>(&self, call: F) -> Result<T, NetmasterError>
    where
        F: Fn(AdminClient<Channel>) -> Fut,
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
                        match leader_hint(s.message()) {
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

    pub async fn acquire_block(
        &self,
        network: &str,
        node: &str,
    ) -> Result<pb::Block, NetmasterError> {
        self.with_failover(|mut c| {
            let req = pb::AcquireBlockRequest {
                network: network.to_string(),
                node: node.to_string(),
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
        assert_eq!(
            leader_hint("not the leader; leader is 10.0.0.3:7650").as_deref(),
            Some("http://10.0.0.3:7650")
        );
        assert_eq!(
            leader_hint("not the leader; leader is http://h:1.").as_deref(),
            Some("http://h:1")
        );
        assert_eq!(leader_hint("no leader elected yet"), None);
    }
}
