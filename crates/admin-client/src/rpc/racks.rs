//! Client calls for racks, rack bindings, nodes, blocks, utilisation and
//! reservations; each goes through
//! [`AdminClient::call`](crate::AdminClient::call) for replica failover and
//! leader following.

use rackline_proto::admin::v1 as pb;

use super::{Blocks, Nodes, Racks, Reservations};
use crate::Result;

impl Racks<'_> {
    pub async fn create_rack(&mut self, rack: pb::Rack) -> Result<pb::Rack> {
        let req = pb::CreateRackRequest { rack: Some(rack) };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.create_rack(req).await }
            })
            .await
    }

    pub async fn get_rack(&mut self, name: &str) -> Result<pb::RackDetail> {
        let req = pb::GetRackRequest {
            name: name.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_rack(req).await }
            })
            .await
    }

    pub async fn list_racks(&mut self) -> Result<Vec<pb::Rack>> {
        self.client
            .call(|mut c| async move { c.list_racks(pb::ListRacksRequest {}).await })
            .await
            .map(|r| r.racks)
    }

    pub async fn delete_rack(&mut self, name: &str) -> Result<()> {
        let req = pb::DeleteRackRequest {
            name: name.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.delete_rack(req).await }
            })
            .await
            .map(|_| ())
    }

    pub async fn bind_rack(&mut self, binding: pb::RackNet) -> Result<pb::RackNet> {
        let req = pb::BindRackRequest {
            binding: Some(binding),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.bind_rack(req).await }
            })
            .await
    }

    pub async fn unbind_rack(&mut self, rack: &str, network: &str, wait_secs: u32) -> Result<()> {
        let req = pb::UnbindRackRequest {
            rack: rack.to_string(),
            network: network.to_string(),
            wait_seconds: wait_secs,
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.unbind_rack(req).await }
            })
            .await
            .map(|_| ())
    }

    /// Filters: "" matches every network / rack.
    pub async fn list_rack_nets(&mut self, network: &str, rack: &str) -> Result<Vec<pb::RackNet>> {
        let req = pb::ListRackNetsRequest {
            network: network.to_string(),
            rack: rack.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_rack_nets(req).await }
            })
            .await
            .map(|r| r.bindings)
    }
}

impl Nodes<'_> {
    pub async fn register_node(&mut self, node: pb::Node) -> Result<pb::Node> {
        let req = pb::RegisterNodeRequest { node: Some(node) };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.register_node(req).await }
            })
            .await
    }

    pub async fn get_node(&mut self, name: &str) -> Result<pb::NodeDetail> {
        let req = pb::GetNodeRequest {
            name: name.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.get_node(req).await }
            })
            .await
    }

    /// `rack` "" lists every node.
    pub async fn list_nodes(&mut self, rack: &str) -> Result<Vec<pb::NodeDetail>> {
        let req = pb::ListNodesRequest {
            rack: rack.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_nodes(req).await }
            })
            .await
            .map(|r| r.nodes)
    }

    /// Marks a node drained, or lifts the mark (`undo`).
    pub async fn drain_node(&mut self, name: &str, undo: bool) -> Result<pb::NodeDetail> {
        let req = pb::DrainNodeRequest {
            name: name.to_string(),
            undo,
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.drain_node(req).await }
            })
            .await
    }

    pub async fn delete_node(&mut self, name: &str, force: bool) -> Result<pb::DeleteNodeReply> {
        let req = pb::DeleteNodeRequest {
            name: name.to_string(),
            force,
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.delete_node(req).await }
            })
            .await
    }
}

impl Blocks<'_> {
    pub async fn acquire_block(&mut self, network: &str, node: &str) -> Result<pb::Block> {
        let req = pb::AcquireBlockRequest {
            network: network.to_string(),
            node: node.to_string(),
            known: None,
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.acquire_block(req).await }
            })
            .await
    }

    /// `false` when the block was already gone.
    pub async fn release_block(&mut self, network: &str, first: &str, node: &str) -> Result<bool> {
        let req = pb::ReleaseBlockRequest {
            network: network.to_string(),
            first: first.to_string(),
            node: node.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.release_block(req).await }
            })
            .await
            .map(|r| r.released)
    }

    pub async fn list_blocks(&mut self, filter: pb::ListBlocksRequest) -> Result<Vec<pb::Block>> {
        self.client
            .call(|mut c| {
                let req = filter.clone();
                async move { c.list_blocks(req).await }
            })
            .await
            .map(|r| r.blocks)
    }

    /// `network` "" covers every network.
    pub async fn utilization(&mut self, network: &str) -> Result<Vec<pb::UtilizationRow>> {
        let req = pb::UtilizationRequest {
            network: network.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.utilization(req).await }
            })
            .await
            .map(|r| r.rows)
    }
}

impl Reservations<'_> {
    pub async fn list_reservations(&mut self, network: &str) -> Result<Vec<pb::Reservation>> {
        let req = pb::ListReservationsRequest {
            network: network.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_reservations(req).await }
            })
            .await
            .map(|r| r.reservations)
    }

    pub async fn pin_reservation(
        &mut self,
        req: pb::PinReservationRequest,
    ) -> Result<pb::Reservation> {
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.pin_reservation(req).await }
            })
            .await
    }

    pub async fn release_reservation(
        &mut self,
        req: pb::ReleaseReservationRequest,
    ) -> Result<pb::ReleaseReservationReply> {
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.release_reservation(req).await }
            })
            .await
    }
}
