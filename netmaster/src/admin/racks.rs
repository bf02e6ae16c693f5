//! Racks, rack bindings, nodes, blocks and utilisation.
//!
//! Every write takes its permit first and hands the permit's fence to the
//! store, whose transaction compares it: a deposed leader writes nothing.
//! Checks that span records are the store's, inside its transactions.

use std::net::Ipv4Addr;

use rackline_model::{Block, Node, Rack, RackNet};
use rackline_store::{
    BlockFilter, BlockUsage, NodeInfo, Object, RackInfo, RetireMode, RetireReport, Utilization,
};
use tracing::info;

use super::{AdminError, Blocks, Nodes, Racks, Result};

impl Racks<'_> {
    pub async fn create_rack(&self, rack: Rack) -> Result<Rack> {
        let w = self.svc.writer()?;
        let rack = w.create_rack(&rack).await?;
        info!(rack = %rack.name, "rack created");
        Ok(rack)
    }

    pub async fn get_rack(&self, name: &str) -> Result<RackInfo> {
        self.svc
            .store
            .admin_reads()
            .get_rack(name)
            .await?
            .ok_or_else(|| AdminError::Missing(Object::Rack(name.to_string())))
    }

    pub async fn list_racks(&self) -> Result<Vec<Rack>> {
        Ok(self.svc.store.admin_reads().list_racks().await?)
    }

    /// Returns how many bindings went with the rack.
    pub async fn delete_rack(&self, name: &str) -> Result<usize> {
        let w = self.svc.writer()?;
        let bindings = w.delete_rack(name).await?;
        info!(rack = %name, bindings, "rack deleted");
        Ok(bindings)
    }

    pub async fn bind_rack(&self, binding: RackNet) -> Result<RackNet> {
        let w = self.svc.writer()?;
        let b = w.bind_rack(&binding).await?;
        info!(rack = %b.rack, network = %b.network, subnet = %b.subnet, "rack bound");
        Ok(b)
    }

    pub async fn list_racknets(
        &self,
        network: Option<&str>,
        rack: Option<&str>,
    ) -> Result<Vec<RackNet>> {
        Ok(self
            .svc
            .store
            .admin_reads()
            .list_racknets(network, rack)
            .await?)
    }
}

impl Nodes<'_> {
    /// Registers (or refreshes) a node; the stored record comes back with
    /// its registration time.
    pub async fn register_node(&self, node: Node) -> Result<Node> {
        let w = self.svc.writer()?;
        let n = w.register_node(&node).await?;
        info!(node = %n.name, rack = %n.rack, "node registered");
        Ok(n)
    }

    pub async fn get_node(&self, name: &str) -> Result<NodeInfo> {
        self.svc
            .store
            .admin_reads()
            .get_node(name)
            .await?
            .ok_or_else(|| AdminError::Missing(Object::Node(name.to_string())))
    }

    pub async fn list_nodes(&self, rack: Option<&str>) -> Result<Vec<NodeInfo>> {
        Ok(self.svc.store.admin_reads().list_nodes(rack).await?)
    }

    /// Deletes a node for good (see `rackline_store::RetireMode::Delete`).
    pub async fn delete_node(&self, name: &str, force: bool) -> Result<RetireReport> {
        let w = self.svc.writer()?;
        let r = w
            .retirement()
            .retire_node(name, RetireMode::Delete { force })
            .await?;
        info!(node = %name, force, ?r, "node deleted");
        Ok(r)
    }
}

impl Blocks<'_> {
    /// A new block for `node`, or (with `known`) the node's block the caller
    /// has not seen yet: see `LeaderStore::acquire_block` for why that makes a
    /// retried request harmless. The flag says whether the block is new.
    pub async fn acquire_block(
        &self,
        network: &str,
        node: &str,
        known: Option<&[Ipv4Addr]>,
    ) -> Result<(Block, bool)> {
        let w = self.svc.writer()?;
        let got = w.acquire_block(network, node, known).await?;
        let b = got.block.block;
        if got.created {
            info!(
                %network, %node, rack = %b.rack, first = %b.first, size = b.size,
                "block acquired"
            );
        } else {
            info!(
                %network, %node, rack = %b.rack, first = %b.first, size = b.size,
                "block requested again; answered with the node's block it has not seen"
            );
        }
        Ok((b, got.created))
    }

    /// `false` when the block was already gone.
    pub async fn release_block(&self, network: &str, first: Ipv4Addr, node: &str) -> Result<bool> {
        let w = self.svc.writer()?;
        let released = w.release_block(network, first, node).await?;
        if released {
            info!(%network, %node, %first, "block released");
        }
        Ok(released)
    }

    pub async fn list_blocks(&self, filter: &BlockFilter) -> Result<Vec<BlockUsage>> {
        Ok(self.svc.store.admin_reads().list_blocks(filter).await?)
    }

    pub async fn utilization(&self, network: Option<&str>) -> Result<Vec<Utilization>> {
        Ok(self.svc.store.admin_reads().utilization(network).await?)
    }
}
