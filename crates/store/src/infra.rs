//! Infrastructure addresses a pod must never be given even when asked for
//! it by name: every registered node's own addresses.

use std::net::Ipv4Addr;

use rackline_model::Node;

use crate::racks::decode_all;
use crate::reads::get_prefix;
use crate::{Result, Store};

impl Store {
    /// Every registered node's addresses, with the node's name (one range
    /// read of `nodes/`, no lease or block records).
    pub async fn node_addresses(&self) -> Result<Vec<(Ipv4Addr, String)>> {
        let (r, _) = self
            .read_at_once(vec![get_prefix(self.keys.nodes_prefix())])
            .await?;
        Ok(decode_all::<Node>(r[0].kvs())?
            .into_iter()
            .flat_map(|n| {
                let name = n.name.clone();
                n.addresses.into_iter().map(move |a| (a, name.clone()))
            })
            .collect())
    }
}
