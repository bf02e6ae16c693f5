//! ipamd's client for netmaster: node registration and blocks. Never on the
//! ADD path: blocks are fetched ahead of need by the block manager.
//!
//! The failover is the shared admin client's (`rackline-admin-client`): any
//! replica answers, a write refused by a follower is retried at the leader
//! it names. On top of it, what a daemon needs: one connection for every
//! task, made when first needed (ipamd starts while netmaster is down) and
//! made again from the first endpoint after netmaster went away, so every
//! endpoint gets its turn; and the errors the block manager acts on.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rackline_admin_client::{AdminClient, ClientError, Raw, Timeouts};
use rackline_proto::admin::v1 as pb;
use rackline_security::client::ClientAuth;
use tonic::transport::Endpoint;
use tonic::{Code, Status};
use tracing::warn;

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
    /// The endpoints as configured (scheme added), for messages.
    named: String,
    /// Those that parse, in the configured order.
    servers: Vec<Endpoint>,
    /// Why the first endpoint that does not parse was left out: the answer
    /// when none is left.
    bad: Option<String>,
    auth: ClientAuth,
    timeouts: Timeouts,
    /// The connected client, kept between calls. Each call works on a clone
    /// (its own failover position; the channel is shared) and puts back
    /// where it ended up, e.g. at the leader it was sent to.
    kept: Mutex<Option<AdminClient>>,
}

/// A bare `host:port` gets `scheme` (https when TLS is configured).
fn normalise(ep: &str, scheme: &str) -> String {
    if ep.contains("://") {
        ep.to_string()
    } else {
        format!("{scheme}://{ep}")
    }
}

/// True when netmaster (or its etcd) is down rather than refusing: the
/// connection is made again for the next call.
fn went_away<T>(r: &Result<T, ClientError>) -> bool {
    r.as_ref().is_err_and(ClientError::is_unavailable)
}

/// The shared client's error as the block manager acts on it; `server` is
/// the replica that answered.
fn classify(e: ClientError, server: &str) -> NetmasterError {
    match e {
        ClientError::BadServer(ep, why) => {
            NetmasterError::Refused(format!("bad endpoint {ep}: {why}"))
        }
        ClientError::Unreachable { server, reason } => {
            NetmasterError::Unreachable(format!("{server}: {reason}"))
        }
        ClientError::Rpc(s) => match s.code() {
            Code::ResourceExhausted => NetmasterError::Exhausted,
            Code::Unavailable | Code::DeadlineExceeded | Code::Unknown => {
                NetmasterError::Unreachable(format!("{server}: {}", s.message()))
            }
            _ => NetmasterError::Refused(s.message().to_string()),
        },
    }
}

impl NetmasterClient {
    pub fn new(endpoints: &[String], timeout: Duration) -> Self {
        Self::with_auth(endpoints, timeout, ClientAuth::none(), false)
    }

    /// `tls`: bare `host:port` endpoints are https:// (a CA is configured).
    /// An endpoint that does not parse is left out (with a warning), the
    /// others still serve.
    pub fn with_auth(endpoints: &[String], timeout: Duration, auth: ClientAuth, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        let timeouts = Timeouts {
            connect: timeout,
            request: timeout,
        };
        let named: Vec<String> = endpoints.iter().map(|e| normalise(e, scheme)).collect();
        let (mut servers, mut bad) = (Vec::new(), None);
        for ep in &named {
            match rackline_admin_client::endpoints(ep, timeouts, &auth) {
                Ok(list) => servers.extend(list),
                Err(e) => {
                    warn!(endpoint = %ep, error = %e, "netmaster endpoint left out");
                    bad.get_or_insert_with(|| classify(e, ep).to_string());
                }
            }
        }
        Self {
            named: named.join(","),
            servers,
            bad,
            auth,
            timeouts,
            kept: Mutex::new(None),
        }
    }

    pub fn is_configured(&self) -> bool {
        !self.named.is_empty()
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Option<AdminClient>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A fresh connection to the first endpoint that answers.
    async fn connect(&self) -> Result<AdminClient, NetmasterError> {
        if self.servers.is_empty() {
            let why = self.bad.clone().unwrap_or_default();
            return Err(NetmasterError::Refused(why));
        }
        AdminClient::connect_to(
            self.servers.clone(),
            &self.named,
            self.timeouts,
            self.auth.clone(),
        )
        .await
        .map_err(|e| classify(e, &self.named))
    }

    /// Runs `rpc` with the shared client's failover. A kept connection
    /// whose replica went away gets one more try from a fresh connection:
    /// the shared client only moves forward in the list, and the endpoints
    /// before the kept one deserve their turn too.
    async fn call<T, F, Fut>(&self, mut rpc: F) -> Result<T, NetmasterError>
    where
        F: FnMut(Raw) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if !self.is_configured() {
            return Err(NetmasterError::NotConfigured);
        }
        let kept = self.kept().clone();
        let retry = kept.is_some();
        let mut client = match kept {
            Some(c) => c,
            None => self.connect().await?,
        };
        let mut result = client.call(&mut rpc).await;
        if retry && went_away(&result) {
            *self.kept() = None;
            client = self.connect().await?;
            result = client.call(&mut rpc).await;
        }
        *self.kept() = (!went_away(&result)).then(|| client.clone());
        result.map_err(|e| classify(e, &client.server()))
    }

    pub async fn register_node(&self, node: pb::Node) -> Result<pb::Node, NetmasterError> {
        self.call(|mut c| {
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
        self.call(|mut c| {
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
        self.call(|mut c| {
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
    fn bare_endpoints_take_the_scheme_of_the_tls_setting() {
        assert_eq!(normalise("10.0.0.3:7650", "http"), "http://10.0.0.3:7650");
        assert_eq!(normalise("10.0.0.3:7650", "https"), "https://10.0.0.3:7650");
        assert_eq!(normalise("http://h:1", "https"), "http://h:1");
        let c = NetmasterClient::new(
            &["10.0.0.2:7650".into(), "h:1".into()],
            Duration::from_secs(1),
        );
        assert_eq!(c.named, "http://10.0.0.2:7650,http://h:1");
        assert_eq!(c.servers.len(), 2);
    }

    #[test]
    fn an_endpoint_that_does_not_parse_is_left_out() {
        let t = Duration::from_secs(1);
        // https:// without a CA cannot be reached; the other endpoint can.
        let c = NetmasterClient::new(&["https://10.0.0.2:7650".into(), "10.0.0.3:7650".into()], t);
        assert!(c.is_configured());
        assert_eq!(c.servers.len(), 1);
        assert_eq!(c.servers[0].uri().to_string(), "http://10.0.0.3:7650/");
        let none = NetmasterClient::new(&["https://10.0.0.2:7650".into()], t);
        assert!(none.servers.is_empty());
        assert!(none
            .bad
            .as_deref()
            .is_some_and(|b| b.contains("https://10.0.0.2:7650")));
        assert!(!NetmasterClient::new(&[], t).is_configured());
    }

    #[test]
    fn errors_are_sorted_for_the_block_manager() {
        let rpc = |s: Status| classify(ClientError::Rpc(s), "http://h:1");
        assert!(matches!(
            rpc(Status::resource_exhausted("rack full")),
            NetmasterError::Exhausted
        ));
        assert!(matches!(
            rpc(Status::unavailable("no leader elected yet")),
            NetmasterError::Unreachable(m) if m == "http://h:1: no leader elected yet"
        ));
        assert!(matches!(
            rpc(Status::failed_precondition("not the leader; leader is h:2")),
            NetmasterError::Refused(m) if m == "not the leader; leader is h:2"
        ));
        assert!(matches!(
            rpc(Status::invalid_argument("no such network")),
            NetmasterError::Refused(_)
        ));
    }

    #[tokio::test]
    async fn calls_without_an_endpoint_are_not_configured() {
        let c = NetmasterClient::new(&[], Duration::from_secs(1));
        let r = c.register_node(pb::Node::default()).await;
        assert!(matches!(r, Err(NetmasterError::NotConfigured)), "{r:?}");
    }

    #[tokio::test]
    async fn an_unreachable_netmaster_is_named() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let ep = format!("127.0.0.1:{port}");
        let c = NetmasterClient::new(std::slice::from_ref(&ep), Duration::from_secs(2));
        match c.release_block("n", "10.0.0.0", "node").await {
            Err(NetmasterError::Unreachable(m)) => assert!(m.contains(&ep), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(c.kept().is_none());
    }
}
