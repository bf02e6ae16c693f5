//! Networks: create (validated and overlap-checked under the networks guard), read, delete.

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};
use rackline_model::NetworkSpec;
use tracing::debug;

use crate::*;

impl Store {
    pub async fn list_networks(&self) -> Result<(Vec<StoredNetwork>, i64)> {
        let prefix = self.keys.networks_prefix();
        let mut c = self.client();
        let resp = self
            .deadline(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let nets = resp
            .kvs()
            .iter()
            .map(decode_network)
            .collect::<Result<Vec<_>>>()?;
        Ok((nets, rev))
    }

    pub async fn get_network(&self, name: &str) -> Result<Option<StoredNetwork>> {
        let key = self.keys.network(name);
        let mut c = self.client();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        resp.kvs().first().map(decode_network).transpose()
    }
}

impl AdminReads<'_> {
    /// The network's lease records by kind (what a delete would refuse
    /// for), with the revision of the read.
    pub async fn network_census(&self, name: &str) -> Result<(LeaseCensus, i64)> {
        let (leases, rev) = self.list_leases(Some(name)).await?;
        Ok((LeaseCensus::of(leases.iter().map(|l| &l.lease)), rev))
    }
}

impl LeaderStore {
    /// Validates `spec` against every other network and writes it, all under
    /// the networks guard key so two overlapping creates cannot both succeed.
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<StoredNetwork> {
        spec.validate()?;
        let guard = self.keys.networks_guard();
        for _ in 0..16 {
            // The guard is compared against the revision of the very read the
            // overlap check used: any create or delete committed after that
            // read bumps the guard past it and fails this transaction. (Reading
            // the guard separately would leave a window between the two reads.)
            // Rack bindings carry subnets of their own: those of other
            // networks may not overlap this one either (read at the same
            // revision, and compared below like the guard).
            let racknets = self.keys.all_racknets_prefix();
            let (r, list_rev) = self
                .read_at_once(vec![
                    reads::get_prefix(self.keys.networks_prefix()),
                    reads::get_prefix(racknets.clone()),
                ])
                .await?;
            check_room_for(self, spec, r[0].kvs(), r[1].kvs())?;
            let key = self.keys.network(&spec.name);
            let value = serde_json::to_vec(spec).expect("NetworkSpec serialises");
            let txn = Txn::new()
                .when(self.guard(vec![
                    Compare::mod_revision(guard.clone(), CompareOp::Less, list_rev + 1),
                    Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                    reads::unchanged_prefix(&racknets, list_rev),
                ]))
                .and_then([
                    TxnOp::put(key.clone(), value, None),
                    TxnOp::put(guard.clone(), spec.name.clone(), None),
                ]);
            let mut c = self.client();
            let resp = self.deadline(async move { c.txn(txn).await }).await?;
            if resp.succeeded() {
                let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(StoredNetwork {
                    spec: spec.clone(),
                    create_revision: rev,
                    mod_revision: rev,
                });
            }
            self.check_fence().await?;
            debug!(network = %spec.name, "network create raced another update; retrying");
        }
        Err(StoreError::Contended(16))
    }

    /// Deletes a network. Without `force` it refuses while lease records
    /// other than conflict quarantines exist (pods, reservations, standby
    /// reserves: the latter are given back by their ipamds once the
    /// network's drain marker is up); the transaction also fails if a lease
    /// record was written after the check. The network's rack bindings,
    /// blocks, sticky identities, QoS policies, quarantine records and
    /// drain markers go with it (a network re-created under the same name
    /// must not inherit them).
    pub async fn delete_network(&self, name: &str, force: bool) -> Result<u64> {
        let key = self.keys.network(name);
        let leases_prefix = self.keys.leases_prefix(name);
        for _ in 0..16 {
            let Some(net) = self.get_network(name).await? else {
                return Err(StoreError::NotFound(name.to_string()));
            };
            let (leases, rev) = self.list_leases(Some(name)).await?;
            if !force {
                if let Some(detail) = in_use(&leases) {
                    return Err(StoreError::InUse {
                        name: name.to_string(),
                        detail,
                    });
                }
            }
            let mut when = vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                net.create_revision,
            )];
            if !force {
                // No lease key may have been written since we looked.
                when.push(
                    Compare::mod_revision(leases_prefix.clone(), CompareOp::Less, rev + 1)
                        .with_prefix(),
                );
            }
            let txn = Txn::new()
                .when(self.guard(when))
                .and_then(delete_ops(&self.keys, name));
            let mut c = self.client();
            let resp = self.deadline(async move { c.txn(txn).await }).await?;
            if resp.succeeded() {
                let deleted = resp
                    .op_responses()
                    .into_iter()
                    .nth(1)
                    .and_then(|r| match r {
                        TxnOpResponse::Delete(d) => Some(d.deleted()),
                        _ => None,
                    })
                    .unwrap_or(0);
                return Ok(deleted.max(0) as u64);
            }
            self.check_fence().await?;
        }
        Err(StoreError::Contended(16))
    }
}

/// Why `leases` keep the network from being deleted without force: records
/// in use, or standby records their ipamds have not given back yet.
fn in_use(leases: &[StoredLease]) -> Option<String> {
    let census = LeaseCensus::of(leases.iter().map(|l| &l.lease));
    census.blocking(false).or_else(|| {
        census.standby_phrase().map(|s| {
            format!(
                "{s}, not given back yet; their ipamds return them while the \
                 network is being deleted (is each of them running?), or delete \
                 with --force"
            )
        })
    })
}

/// Everything a network's deletion removes, in one transaction. The lease
/// delete stays second: its count is the deletion's answer.
fn delete_ops(keys: &crate::Keys, name: &str) -> Vec<TxnOp> {
    vec![
        TxnOp::delete(keys.network(name), None),
        TxnOp::delete(
            keys.leases_prefix(name),
            Some(DeleteOptions::new().with_prefix()),
        ),
        TxnOp::put(keys.networks_guard(), format!("-{name}"), None),
        TxnOp::delete(
            keys.blocks_prefix(name),
            Some(DeleteOptions::new().with_prefix()),
        ),
        TxnOp::delete(
            keys.racknets_prefix(name),
            Some(DeleteOptions::new().with_prefix()),
        ),
        // Sticky identities go with their leases.
        TxnOp::delete(
            keys.identities_prefix(name),
            Some(DeleteOptions::new().with_prefix()),
        ),
        // QoS policies too: a re-created network starts without them.
        TxnOp::delete(
            keys.qos_prefix(name),
            Some(DeleteOptions::new().with_prefix()),
        ),
        // And the drain markers that led here.
        TxnOp::delete(
            keys.drain(&rackline_model::DrainTarget::Network(name.to_string())),
            None,
        ),
        TxnOp::delete(
            keys.racknet_drains_prefix(name),
            Some(DeleteOptions::new().with_prefix()),
        ),
    ]
}

/// Refuses `spec` when its name is taken or its subnet overlaps another
/// network's or another network's rack binding (`networks` and
/// `bindings`: one read of both prefixes).
fn check_room_for(
    store: &Store,
    spec: &NetworkSpec,
    networks: &[etcd_client::KeyValue],
    bindings: &[etcd_client::KeyValue],
) -> Result<()> {
    let existing = networks
        .iter()
        .map(decode_network)
        .collect::<Result<Vec<_>>>()?;
    if existing.iter().any(|n| n.spec.name == spec.name) {
        return Err(StoreError::AlreadyExists(spec.name.clone()));
    }
    spec.check_overlap(existing.iter().map(|n| &n.spec))?;
    for b in store.decode_bindings(bindings, None, None)? {
        if b.network != spec.name && spec.subnet.overlaps(b.subnet) {
            return Err(ValidationError::Overlap {
                name: spec.name.clone(),
                subnet: spec.subnet,
                other: format!("{} (rack {})", b.network, b.rack),
                other_subnet: b.subnet,
            }
            .into());
        }
    }
    Ok(())
}
