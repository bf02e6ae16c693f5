//! Sticky reservations: list, pin ahead of time, release.
//!
//! Pin and release are leader writes like every other admin write: they
//! take a permit first (a follower refuses and names the leader) and their
//! transactions also compare the leadership fence, so a deposed leader's
//! write never lands. Each one also compares the exact revisions of the
//! identity and lease records it read (the same primitive ipamd uses), so
//! concurrent writers — ipamds claiming an identity, an expiring hold — make
//! it fail and retry rather than overwrite.

use std::net::Ipv4Addr;

use rackline_model::sticky::{pin_at, pin_from, PinAt, PinFrom};
use rackline_model::{Identity, Lease, LeaseState, PodRef};
use rackline_store::{StickyWrite, StoredLease};
use tracing::info;

use super::{AdminError, Reservations, Result};

const ATTEMPTS: u32 = 8;

/// A reservation as operators see it: the identity and the state of its
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservationView {
    pub identity: Identity,
    /// The lease record at the address (None: missing — a dangling identity
    /// the next ADD of the pod repairs).
    pub lease: Option<Lease>,
}

impl ReservationView {
    pub fn state(&self) -> &'static str {
        match &self.lease {
            Some(l) if l.state == LeaseState::Active => "active",
            Some(_) => "reserved",
            None => "missing",
        }
    }
}

impl Reservations<'_> {
    pub async fn list_reservations(&self, network: Option<&str>) -> Result<Vec<ReservationView>> {
        let ids = self
            .svc
            .store
            .admin_reads()
            .list_identities(network)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for i in ids {
            let lease = self
                .svc
                .store
                .leases()
                .get_lease(&i.identity.network, i.identity.address)
                .await?
                .map(|sl| sl.lease)
                .filter(|l| i.identity.is_named_by(l));
            out.push(ReservationView {
                identity: i.identity,
                lease,
            });
        }
        Ok(out)
    }

    /// Checks `ip` may be handed to pods of `network` and says which rack it
    /// belongs to (None on a network without rack bindings).
    async fn rack_of_address(&self, network: &str, ip: Ipv4Addr) -> Result<Option<String>> {
        let net = self
            .svc
            .store
            .get_network(network)
            .await?
            .ok_or_else(|| AdminError::NotFound(network.to_string()))?;
        let spec = net.spec;
        let bindings = self
            .svc
            .store
            .admin_reads()
            .list_racknets(Some(network), None)
            .await?;
        // The rule every ipamd pick obeys: no gateway, no node's own address.
        let mut infra = rackline_model::Infra::gateways(&spec, &bindings);
        for (a, node) in self.svc.store.node_addresses().await? {
            infra.add_node(&node, &[a]);
        }
        if let Some(why) = infra.refusal(ip) {
            return Err(AdminError::Refused(format!(
                "{why}: pods of network {network:?} never get it"
            )));
        }
        if bindings.is_empty() {
            if !rackline_model::Pool::new(&spec)
                .allocatable()
                .contains(u32::from(ip))
            {
                return Err(AdminError::Refused(format!(
                    "{ip} is not an address pods of network {network:?} can get (outside {}, excluded, or its network/broadcast/gateway address)",
                    spec.subnet
                )));
            }
            return Ok(None);
        }
        match bindings
            .iter()
            .find(|b| b.allocatable(&spec).contains(u32::from(ip)))
        {
            Some(b) => Ok(Some(b.rack.clone())),
            None => Err(AdminError::Refused(format!(
                "{ip} is inside no rack's ranges of network {network:?} (or is excluded, or a network/broadcast/gateway address); see `racklinectl rack list`"
            ))),
        }
    }

    /// Pins `ip` to pod `namespace/name` on `network`: the address is
    /// reserved for that identity until released, whatever the network's
    /// sticky policy. Re-pinning the identity's current address only makes
    /// it permanent.
    pub async fn pin_reservation(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
        ip: Ipv4Addr,
    ) -> Result<ReservationView> {
        for bad in [namespace, name] {
            if !rackline_model::sticky::is_dns_label(bad) {
                return Err(AdminError::Refused(format!(
                    "{bad:?} is not a valid Kubernetes name"
                )));
            }
        }
        let w = self.svc.writer()?;
        let rack = self.rack_of_address(network, ip).await?;
        let pod = PodRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: String::new(),
        };
        for _ in 0..ATTEMPTS {
            let view = self
                .svc
                .store
                .leases()
                .identity_view(network, namespace, name)
                .await?;
            let identity_rev = match &view {
                Some(v) => match self.unpin_other(&w, network, &pod, ip, v).await? {
                    Some(rev) => rev,
                    None => continue,
                },
                None => 0,
            };
            let cur = self.svc.store.leases().get_lease(network, ip).await?;
            let identity = Identity {
                pinned: true,
                rack: rack.clone(),
                ..identity_for(network, &pod, ip)
            };
            let (lease, lease_rev) = lease_to_pin(cur.as_ref(), &pod, &identity)?;
            // Written without an etcd lease: a pin never expires (this also
            // detaches a reservation that had a hold time).
            match w
                .write_sticky(&lease, lease_rev, &identity, identity_rev, None)
                .await?
            {
                StickyWrite::Done { .. } => {
                    info!(%network, %ip, pod = %pod.display(), "address pinned");
                    return Ok(ReservationView {
                        identity,
                        lease: Some(lease),
                    });
                }
                StickyWrite::Changed => w.check_fence().await?,
            }
        }
        Err(AdminError::Contended(ATTEMPTS))
    }

    /// The identity pinned elsewhere than `ip`: its old reservation (or a
    /// bare identity) is dropped first; refused while the pod runs with the
    /// old address (`sticky::pin_from`). Some(identity revision to compare)
    /// to go on, None when a record changed meanwhile (retry).
    async fn unpin_other(
        &self,
        w: &rackline_store::LeaderStore,
        network: &str,
        pod: &PodRef,
        ip: Ipv4Addr,
        v: &rackline_store::IdentityView,
    ) -> Result<Option<i64>> {
        let identity_rev = v.identity.mod_revision;
        let old = &v.identity.identity;
        let dropped = match pin_from(old, v.lease.as_ref().map(|sl| &sl.lease), ip) {
            PinFrom::Same => return Ok(Some(identity_rev)),
            PinFrom::Running { address, node } => {
                return Err(AdminError::Refused(format!(
                    "pod {} is running with {address} on node {node:?}; it keeps that address until it is deleted",
                    pod.display(),
                )));
            }
            // `pin_from` names the lease only when it is the identity's.
            PinFrom::DropReservation => {
                let rev = v.lease.as_ref().map_or(0, |sl| sl.mod_revision);
                w.delete_sticky(
                    network,
                    old.address,
                    rev,
                    &pod.namespace,
                    &pod.name,
                    identity_rev,
                )
                .await?
            }
            PinFrom::DropIdentity => {
                w.delete_identity(network, &pod.namespace, &pod.name, identity_rev)
                    .await?
            }
        };
        if !dropped {
            w.check_fence().await?;
            return Ok(None);
        }
        Ok(Some(0))
    }

    /// Releases the reservation of `namespace/name`: its address becomes
    /// free. Refused while the pod's lease is active (it keeps its address
    /// until DEL) unless `force` (its node is gone for good).
    pub async fn release_reservation(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
        force: bool,
    ) -> Result<Ipv4Addr> {
        let w = self.svc.writer()?;
        for _ in 0..ATTEMPTS {
            let Some(v) = self
                .svc
                .store
                .leases()
                .identity_view(network, namespace, name)
                .await?
            else {
                return Err(AdminError::Refused(format!(
                    "pod {namespace}/{name} has no reservation on network {network:?}"
                )));
            };
            let ip = v.identity.identity.address;
            let done = match v
                .lease
                .filter(|sl| v.identity.identity.is_named_by(&sl.lease))
            {
                Some(sl) if sl.lease.state.is_active() && !force => {
                    return Err(AdminError::Refused(format!(
                        "pod {namespace}/{name} is running with {ip} on node {:?} (container {}); delete the pod first. If that node is gone for good, release with --force",
                        sl.lease.node, sl.lease.container_id
                    )));
                }
                Some(sl) => {
                    w.delete_sticky(
                        network,
                        ip,
                        sl.mod_revision,
                        namespace,
                        name,
                        v.identity.mod_revision,
                    )
                    .await?
                }
                None => {
                    w.delete_identity(network, namespace, name, v.identity.mod_revision)
                        .await?
                }
            };
            if done {
                info!(%network, %ip, pod = %format!("{namespace}/{name}"), "reservation released");
                return Ok(ip);
            }
            w.check_fence().await?;
        }
        Err(AdminError::Contended(ATTEMPTS))
    }
}

fn identity_for(network: &str, pod: &PodRef, ip: Ipv4Addr) -> Identity {
    Identity {
        network: network.to_string(),
        namespace: pod.namespace.clone(),
        name: pod.name.clone(),
        address: ip,
        pinned: false,
        rack: None,
        created_unix_ms: now_ms(),
        opt_in: false,
    }
}

fn describe(l: &Lease) -> String {
    match l.state {
        LeaseState::Standby => format!("held in node {:?}'s outage reserve", l.node),
        LeaseState::Reserved => format!("reserved for pod {}", l.pod.display()),
        LeaseState::Conflict => format!(
            "quarantined: another host ({}) answered for it",
            l.conflict.as_ref().map_or("?", |c| c.mac.as_str())
        ),
        LeaseState::Active if l.pod.name.is_empty() => {
            format!("leased on node {:?} (container {})", l.node, l.container_id)
        }
        LeaseState::Active => format!("leased by pod {} on node {:?}", l.pod.display(), l.node),
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The lease the pin writes at `ip` and the revision to compare (0: none
/// there), by the rules of `sticky::pin_at`.
fn lease_to_pin(
    cur: Option<&StoredLease>,
    pod: &PodRef,
    identity: &Identity,
) -> Result<(Lease, i64)> {
    let rev = cur.map_or(0, |sl| sl.mod_revision);
    Ok(match pin_at(identity, cur.map(|sl| &sl.lease)) {
        PinAt::InUse => {
            return Err(AdminError::Refused(format!(
                "{} is in use: {}",
                identity.address,
                cur.map_or_else(String::new, |sl| describe(&sl.lease))
            )));
        }
        PinAt::KeepActive(lease) | PinAt::Unexpire(lease) => (lease, rev),
        PinAt::Reserve => (
            Lease {
                network: identity.network.clone(),
                address: identity.address,
                node: String::new(),
                container_id: String::new(),
                ifname: String::new(),
                pod: pod.clone(),
                created_unix_ms: now_ms(),
                state: LeaseState::Reserved,
                sticky: true,
                expires_unix_ms: None,
                conflict: None,
                new_identity: false,
                settings: None,
            },
            0,
        ),
    })
}
