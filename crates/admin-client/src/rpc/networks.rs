//! Client calls for networks, leases, the leader and the event stream
//! (through [`AdminClient::call`]).

use rackline_proto::admin::v1 as pb;

use super::Networks;
use crate::{AdminClient, Result};

impl AdminClient {
    /// Which replica leads, as the replica we talk to knows it.
    pub async fn leader(&mut self) -> Result<pb::LeaderReply> {
        self.call(|mut c| async move { c.leader(pb::LeaderRequest {}).await })
            .await
    }

    /// Opens the IP event stream (replica failover applies to the opening
    /// only; a stream that breaks later ends with its error).
    pub async fn watch_events(
        &mut self,
        from_revision: i64,
        follow: bool,
    ) -> Result<tonic::Streaming<pb::WatchEventsReply>> {
        let req = pb::WatchEventsRequest {
            from_revision,
            follow,
        };
        self.call(|mut c| async move { c.watch_events(req).await })
            .await
    }
}

impl Networks<'_> {
    pub async fn create_network(&mut self, network: pb::Network) -> Result<pb::Network> {
        let req = pb::CreateNetworkRequest {
            network: Some(network),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_network(req).await }
            })
            .await
    }

    pub async fn get_network(&mut self, name: &str) -> Result<pb::Network> {
        let req = pb::GetNetworkRequest {
            name: name.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_network(req).await }
            })
            .await
    }

    pub async fn list_networks(&mut self) -> Result<Vec<pb::Network>> {
        let reply = self
            .client
            .call(|mut c| async move { c.list_networks(pb::ListNetworksRequest {}).await })
            .await?;
        Ok(reply.networks)
    }

    /// Returns how many leases were deleted with the network.
    pub async fn delete_network(&mut self, name: &str, force: bool, wait_secs: u32) -> Result<u64> {
        let req = pb::DeleteNetworkRequest {
            name: name.to_string(),
            force,
            wait_seconds: wait_secs,
        };
        let reply = self
            .client
            .call(|mut c| {
                let req = req.clone();
                async move { c.delete_network(req).await }
            })
            .await?;
        Ok(reply.leases_deleted)
    }

    pub async fn update_network(
        &mut self,
        req: pb::UpdateNetworkRequest,
    ) -> Result<pb::UpdateNetworkReply> {
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.update_network(req).await }
            })
            .await
    }

    pub async fn list_leases(&mut self, filter: pb::ListLeasesRequest) -> Result<Vec<pb::Lease>> {
        let reply = self
            .client
            .call(|mut c| {
                let req = filter.clone();
                async move { c.list_leases(req).await }
            })
            .await?;
        Ok(reply.leases)
    }
}
