//! The client adapter racklinectl uses: one channel to netmaster, one method
//! per RPC, and errors sorted by what the operator can do about them
//! (fix the request, or get the server back), which is what the exit codes
//! of CONTRACTS.md distinguish.

use std::time::Duration;

use rackline_proto::admin::v1 as pb;
use rackline_proto::admin::v1::admin_client::AdminClient as RawClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

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

const MAX_REPLY_BYTES: usize = 256 << 20;

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

pub struct AdminClient {
    inner: RawClient<Channel>,
}

impl AdminClient {
    /// Connects eagerly so an unreachable server is reported as such, not as
    /// the failure of whatever call came first.
    pub async fn connect(server: &str, t: Timeouts) -> Result<Self> {
        let endpoint = Endpoint::from_shared(server.to_string())
            .map_err(|e| ClientError::BadServer(server.to_string(), e.to_string()))?
            .connect_timeout(t.connect)
            .timeout(t.request);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| ClientError::Unreachable {
                server: server.to_string(),
                reason: error_chain(&e),
            })?;
        Ok(Self {
            // tonic's 4 MiB default is ~20k leases; a big rack's full lease
            // list must still come back in one reply (until the API pages).
            inner: RawClient::new(channel).max_decoding_message_size(MAX_REPLY_BYTES),
        })
    }

    pub async fn create_network(&mut self, network: pb::Network) -> Result<pb::Network> {
        let req = pb::CreateNetworkRequest {
            network: Some(network),
        };
        Ok(self
            .inner
            .create_network(req)
            .await
            .map_err(ClientError::Rpc)?
            .into_inner())
    }

    pub async fn get_network(&mut self, name: &str) -> Result<pb::Network> {
        let req = pb::GetNetworkRequest {
            name: name.to_string(),
        };
        Ok(self
            .inner
            .get_network(req)
            .await
            .map_err(ClientError::Rpc)?
            .into_inner())
    }

    pub async fn list_networks(&mut self) -> Result<Vec<pb::Network>> {
        Ok(self
            .inner
            .list_networks(pb::ListNetworksRequest {})
            .await
            .map_err(ClientError::Rpc)?
            .into_inner()
            .networks)
    }

    /// Returns how many leases were deleted with the network.
    pub async fn delete_network(&mut self, name: &str, force: bool) -> Result<u64> {
        let req = pb::DeleteNetworkRequest {
            name: name.to_string(),
            force,
        };
        Ok(self
            .inner
            .delete_network(req)
            .await
            .map_err(ClientError::Rpc)?
            .into_inner()
            .leases_deleted)
    }

    pub async fn list_leases(&mut self, filter: pb::ListLeasesRequest) -> Result<Vec<pb::Lease>> {
        Ok(self
            .inner
            .list_leases(filter)
            .await
            .map_err(ClientError::Rpc)?
            .into_inner()
            .leases)
    }
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
