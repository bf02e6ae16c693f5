//! Requested addresses: the runtime (CNI_ARGS `IP=`, the `ips` capability)
//! or the pod (annotation `rackline.io/ip`) names the address it wants.
//! ipamd gives one of them or refuses with the reason for each; it never
//! silently hands out another.
//!
//! An address may be given when it is inside this node's share of the
//! network (its rack's ranges, or the flat network's range: never a
//! gateway, an excluded address, another rack's, or any registered node's
//! own address — the same refusal every picked address obeys) and it is free, this node's own standby address, or the
//! sticky address of this very pod (claimed by the identity path before
//! this module runs). The write is the same create-if-absent transaction as
//! any allocation, fenced on the block the address lies in, so two pods
//! asking for one address at once cannot both get it: one transaction
//! wins, the other finds the key and is refused.
//!
//! Requested addresses need etcd: offline, only unrecorded or standby
//! addresses could be handed out and neither is the one asked for.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use rackline_model::{Identity, Lease, LeaseState};
use rackline_store::{CreateLease, StickyWrite, StoreError, StoredLease};
use tracing::info;

use super::allocator::{fresh_lease, Settled};
use super::{AllocateArgs, Allocated, Allocator, IpamError};
use crate::netstate::{NetState, Pick};
use crate::store::LeaseStore;

/// How often one requested address is retried when its block changed under
/// the write (the watch brings the new block record meanwhile).
const BLOCK_RETRIES: u32 = 3;

/// "10.0.0.5" or "10.0.0.5, 10.0.0.6".
pub(super) fn list(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A repeated ADD of an attachment that already holds `held`: idempotent
/// when `held` is one of the requested addresses, refused otherwise (the
/// runtime asks for something else than it got the first time).
pub(super) fn check_held(a: &AllocateArgs, held: &Lease) -> Result<(), IpamError> {
    if a.requested.is_empty() || a.requested.contains(&held.address) {
        return Ok(());
    }
    Err(IpamError::RequestedAddress(format!(
        "container {} ifname {} already holds {} on network {:?}; it asked for {} (DEL the attachment first)",
        a.container_id,
        a.ifname,
        held.address,
        a.network,
        list(&a.requested)
    )))
}

/// The annotation's addresses that belong to this network on this node
/// (its subnet here): a pod on several networks lists one per network.
pub(super) fn from_annotation(
    net: &NetState,
    a: &AllocateArgs,
) -> Result<Vec<Ipv4Addr>, IpamError> {
    let (subnet, _) = net.addressing();
    let mine: Vec<Ipv4Addr> = a
        .annotated
        .iter()
        .copied()
        .filter(|ip| subnet.contains(*ip))
        .collect();
    if mine.is_empty() {
        return Err(IpamError::RequestedAddress(format!(
            "pod {} asks for {} (annotation {}), none of which is inside {subnet}, network {:?}'s subnet on this node",
            a.pod.display(),
            list(&a.annotated),
            crate::pods::ANNOTATION_IP,
            a.network
        )));
    }
    Ok(mine)
}

fn describe_holder(l: &Lease) -> String {
    match l.state {
        LeaseState::Active => format!(
            "in use by pod {} (container {}, node {:?})",
            l.pod.display(),
            l.container_id,
            l.node
        ),
        LeaseState::Reserved => format!("reserved for the sticky pod {}", l.pod.display()),
        LeaseState::Standby => format!("held in node {:?}'s outage reserve", l.node),
        LeaseState::Conflict => {
            let mac = l.conflict.as_ref().map(|c| c.mac.as_str()).unwrap_or("?");
            format!("quarantined: another host ({mac}) answered for it")
        }
    }
}

/// One requested address's outcome.
enum Try {
    Done(Box<Allocated>),
    /// Not this one; why, for the error message.
    Refused(String),
}

impl<S: LeaseStore> Allocator<'_, S> {
    /// Allocates one of `a.requested` (in order) for a new attachment;
    /// `identity` is set for a sticky pod that has none yet (it is created
    /// with the address, as for a picked one).
    pub(super) async fn allocate_requested(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        identity: Option<Identity>,
    ) -> Result<Allocated, IpamError> {
        // The watch keeps the node addresses current; a node that registered
        // a moment ago may not have reached it yet, and an address asked for
        // by name is exactly where that would matter. The refusal itself is
        // the one every pick obeys (`NetState::refusal`).
        let nodes = self.store.node_addresses().await.map_err(|e| {
            self.outage.note_store_error(&e);
            requested_needs_etcd(a, e)
        })?;
        let mut by_node: BTreeMap<String, Vec<Ipv4Addr>> = BTreeMap::new();
        for (ip, node) in nodes {
            by_node.entry(node).or_default().push(ip);
        }
        self.mirror.learn_node_addresses(by_node);
        let mut why = Vec::new();
        for &ip in &a.requested {
            if let Some(r) = net.refusal(ip) {
                why.push(r);
                continue;
            }
            match self.try_requested(net, a, ip, identity.as_ref()).await? {
                Try::Done(done) => return Ok(*done),
                Try::Refused(r) => why.push(r),
            }
        }
        Err(IpamError::RequestedAddress(format!(
            "no requested address can be given to pod {} on network {:?}: {}",
            a.pod.display(),
            a.network,
            why.join("; ")
        )))
    }

    async fn try_requested(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        ip: Ipv4Addr,
        identity: Option<&Identity>,
    ) -> Result<Try, IpamError> {
        let lease = fresh_lease(&self.node, net, a, ip, identity.is_some());
        for _ in 0..BLOCK_RETRIES {
            if let Some(held) = net.leases().at(ip) {
                if held.lease.is_standby() && held.lease.node == self.node {
                    return self.take_own_standby(net, lease, held, identity).await;
                }
                return Ok(Try::Refused(format!(
                    "{ip} is {}",
                    describe_holder(&held.lease)
                )));
            }
            let Some(pick) = net.picks().pick_exact(ip) else {
                return Ok(Try::Refused(format!(
                    "{ip} is being given to another attachment on this node right now"
                )));
            };
            let created = match self.create_fresh(net, &lease, identity, &pick).await {
                // The identity appeared meanwhile (the same pod is being
                // started elsewhere): the retry claims it properly.
                Ok(None) => {
                    net.picks().unpick(ip);
                    return Err(IpamError::Contended(1));
                }
                Ok(Some(c)) => Ok(c),
                Err(e) => Err(e),
            };
            if let Some(done) = self.requested_outcome(net, a, &pick, &lease, created)? {
                return Ok(done);
            }
        }
        Err(IpamError::Contended(BLOCK_RETRIES))
    }

    /// Acts on the outcome of the requested address's create: the answer,
    /// or None to try the same address again (its block changed).
    fn requested_outcome(
        &self,
        net: &NetState,
        a: &AllocateArgs,
        pick: &Pick,
        lease: &Lease,
        created: Result<CreateLease, StoreError>,
    ) -> Result<Option<Try>, IpamError> {
        let ip = pick.ip;
        match self.settle_create(net, a, pick, lease, created)? {
            Settled::Created => Ok(Some(Try::Done(Box::new(Allocated {
                lease: lease.clone(),
                network: net.effective_spec(),
                existing: false,
            })))),
            Settled::Taken(owner) => {
                let who = owner
                    .as_ref()
                    .map(|o| describe_holder(o))
                    .unwrap_or_else(|| "taken".to_string());
                Ok(Some(Try::Refused(format!("{ip} is {who}"))))
            }
            Settled::BlockChanged => Ok(None),
            Settled::NetworkGone => Err(IpamError::UnknownNetwork(a.network.clone())),
            // The write may have been applied: the retry or the DEL
            // resolves it.
            Settled::Unavailable(m) => Err(requested_needs_etcd(a, StoreError::Unavailable(m))),
        }
    }

    /// The requested address is one of this node's standby records: it is
    /// turned into the attachment's lease (compared on the record's
    /// revision, as any standby activation).
    async fn take_own_standby(
        &self,
        net: &Arc<NetState>,
        lease: Lease,
        held: StoredLease,
        identity: Option<&Identity>,
    ) -> Result<Try, IpamError> {
        let ip = lease.address;
        let written = match identity {
            None => self
                .store
                .replace_lease(&lease, held.mod_revision)
                .await
                .map_err(|e| {
                    self.outage.note_store_error(&e);
                    IpamError::from(e)
                })?,
            Some(i) => {
                let ident = Identity {
                    address: ip,
                    ..i.clone()
                };
                match self
                    .store
                    .write_sticky(&lease, held.mod_revision, &ident, 0, None, None, None)
                    .await
                    .map_err(|e| {
                        self.outage.note_store_error(&e);
                        IpamError::from(e)
                    })? {
                    StickyWrite::Done { mod_revision } => Some(mod_revision),
                    StickyWrite::Changed => None,
                }
            }
        };
        match written {
            Some(mod_revision) => {
                net.observe(
                    StoredLease {
                        lease: lease.clone(),
                        mod_revision,
                    },
                    &self.node,
                );
                info!(network = %lease.network, %ip, requested = true, container = %lease.container_id, "leased from this node's reserve");
                Ok(Try::Done(Box::new(Allocated {
                    lease,
                    network: net.effective_spec(),
                    existing: false,
                })))
            }
            // The reserve record changed meanwhile (handed to another ADD or
            // given back): report it like any other holder.
            None => Ok(Try::Refused(format!(
                "{ip} changed while being claimed; try again"
            ))),
        }
    }
}

fn requested_needs_etcd(a: &AllocateArgs, e: StoreError) -> IpamError {
    match e {
        StoreError::Unavailable(m) => IpamError::Unavailable(format!(
            "pod {} asks for {} and requested addresses can only be claimed through etcd ({m}); retry",
            a.pod.display(),
            list(&a.requested)
        )),
        other => IpamError::Store(other),
    }
}
