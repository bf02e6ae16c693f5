//! The tonic adapter: proto <-> engine types and error codes. The plugin maps
//! Unavailable to CNI code 11 ("try again later").

use std::collections::HashSet;
use std::sync::Arc;

use rackline_model::{Lease, NetworkSpec, PodRef};
use rackline_proto::ipam::v1 as pb;
use rackline_proto::reason::IpamReason;
use tonic::{Request, Response, Status};

use crate::engine::{AllocateArgs, ConflictArgs, Engine, IpamError};
use crate::filter::Filters;
use crate::pods::{PodCache, PodOptions, PodsError};
use crate::qos::QosState;
use crate::store::LeaseStore;

pub struct IpamService<S> {
    engine: Arc<Engine<S>>,
    qos: Arc<QosState>,
    filters: Arc<Filters>,
    attachments: Option<Arc<crate::reprogram::Attachments>>,
    pods: Option<Arc<PodCache>>,
    metrics: Option<Arc<crate::metrics::IpamMetrics>>,
}

impl<S> IpamService<S> {
    pub fn new(engine: Arc<Engine<S>>) -> Self {
        Self {
            engine,
            qos: QosState::new(None),
            filters: Filters::new(Vec::new()),
            attachments: None,
            pods: None,
            metrics: None,
        }
    }

    /// Counts Allocate/Release outcomes and the plugin's timing reports.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::IpamMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Reads pod annotations (requested address, sticky, bandwidth) from
    /// `pods` on every Allocate of a Kubernetes pod.
    pub fn with_pods(mut self, pods: Arc<PodCache>) -> Self {
        self.pods = Some(pods);
        self
    }

    async fn pod_options(&self, pod: &PodRef) -> Result<PodOptions, Status> {
        let Some(pods) = &self.pods else {
            return Ok(PodOptions::default());
        };
        // Not a Kubernetes pod (podman sends no namespace): nothing to read.
        if pod.namespace.is_empty() || pod.name.is_empty() {
            return Ok(PodOptions::default());
        }
        pods.options(&pod.namespace, &pod.name, &pod.uid)
            .await
            .map_err(|e| match &e {
                PodsError::Annotation { key, .. } if *key == crate::pods::ANNOTATION_IP => {
                    status_of(IpamError::RequestedAddress(e.to_string()))
                }
                PodsError::Annotation { .. } => IpamReason::BadAnnotation.status(e.to_string()),
                PodsError::Unavailable { .. } => IpamReason::Unavailable.status(e.to_string()),
            })
    }

    /// Answers with the node-class and policy QoS levels from `qos`.
    pub fn with_qos(mut self, qos: Arc<QosState>) -> Self {
        self.qos = qos;
        self
    }

    /// Answers with each pod's packet filter from `filters`.
    pub fn with_filters(mut self, filters: Arc<Filters>) -> Self {
        self.filters = filters;
        self
    }

    /// Records each attachment's namespace (from Allocate) in
    /// `attachments`, so its filter follows later policy changes.
    pub fn with_attachments(mut self, a: Arc<crate::reprogram::Attachments>) -> Self {
        self.attachments = Some(a);
        self
    }

    /// Fails closed while NetworkPolicy is enforced but its caches are not
    /// yet listed (right after ipamd starts): the filter assembled now
    /// would be allow-all whatever the pod's policy. Waits up to
    /// [`NETPOL_SYNC_WAIT`] for the sync, then refuses with UNAVAILABLE,
    /// which the plugin reports as CNI code 11 (try again later).
    async fn netpol_ready(&self) -> Result<(), Status> {
        if self.filters.wait_netpol_synced(NETPOL_SYNC_WAIT).await {
            return Ok(());
        }
        Err(IpamReason::PolicyNotSynced.status(format!(
            "NetworkPolicy caches not yet synced after {NETPOL_SYNC_WAIT:?} (ipamd starting): \
             refusing to start the pod without its policy; try again later"
        )))
    }

    /// The pod's packet filter as the reply carries it: empty = none.
    fn filter_for(&self, lease: &Lease) -> Vec<u8> {
        let f = self
            .filters
            .pod_filter(&lease.network, &lease.pod, lease.address);
        if f.is_allow_all() {
            Vec::new()
        } else {
            serde_json::to_vec(&f).expect("PodFilter serialises")
        }
    }

    /// Records a finished Allocate (`freed` None) or Release.
    fn count(
        &self,
        network: &str,
        started: std::time::Instant,
        freed: Option<bool>,
        err: Option<&IpamError>,
    ) where
        S: LeaseStore,
    {
        let Some(m) = &self.metrics else { return };
        // Only networks this node knows become label values.
        let net = if self.engine.mirror().knows_network(network) {
            network
        } else {
            ""
        };
        match freed {
            None => m.allocated(net, started, err),
            Some(f) => m.released(net, f, err),
        }
    }

    /// The network as this pod's plugin needs it, QoS levels included.
    fn network_for(&self, spec: &NetworkSpec, pod: &PodRef) -> pb::NetworkConfig {
        let mut net = network_to_pb(spec);
        self.qos.fill(&mut net, spec, pod);
        net
    }
}

/// gRPC metadata key that tells apart refusals sharing a gRPC code, so the
/// plugin maps each to its own CNI code.
pub const ERROR_KIND_KEY: &str = "rackline-error";
/// How long Allocate (and CHECK) wait for the NetworkPolicy caches.
pub const NETPOL_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// `ERROR_KIND_KEY` of a refused requested address (CNI code 107).
pub const ERROR_REQUESTED_ADDRESS: &str = "requested-address";

/// The reason ipamd gives for `e` (its gRPC code follows from the reason).
pub fn reason_of(e: &IpamError) -> IpamReason {
    match e {
        IpamError::UnknownNetwork(_) => IpamReason::UnknownNetwork,
        IpamError::Exhausted { .. } => IpamReason::Exhausted,
        IpamError::InvalidRequest(_) => IpamReason::InvalidRequest,
        IpamError::Unavailable(_) => IpamReason::Unavailable,
        IpamError::NotReady => IpamReason::NotReady,
        IpamError::Contended(_) => IpamReason::Contended,
        IpamError::NotInRack(_) => IpamReason::NotInRack,
        IpamError::IdentityLive(_) => IpamReason::StickyLiveElsewhere,
        IpamError::WrongRack(_) => IpamReason::StickyWrongRack,
        IpamError::RequestedAddress(_) => IpamReason::RequestedAddress,
        IpamError::Store(_) => IpamReason::Store,
    }
}

/// The status of `e`: the same gRPC code and message as before reasons
/// existed, plus the reason as an `ErrorInfo` detail.
pub fn status_of(e: IpamError) -> Status {
    let reason = reason_of(&e);
    let mut s = reason.status(e.to_string());
    if reason == IpamReason::RequestedAddress {
        // Still tagged the old way: plugins that predate reasons tell this
        // refusal from other preconditions by the tag alone.
        s.metadata_mut().insert(
            ERROR_KIND_KEY,
            tonic::metadata::MetadataValue::from_static(ERROR_REQUESTED_ADDRESS),
        );
    }
    s
}

/// The pod's `rackline.io/bandwidth` annotation, as the level above the
/// namespace/application policy: per direction it replaces the policy's
/// rate and burst (the plugin then layers the runtime's request on top and
/// clamps by the network maximum). It travels in the policy slot so the
/// plugin needs nothing new to apply it.
pub fn apply_pod_bandwidth(net: &mut pb::NetworkConfig, b: &rackline_model::Bandwidth) {
    let p = net.qos_policy.get_or_insert_with(Default::default);
    if let Some(rate) = b.ingress_rate {
        p.ingress_rate = rate;
        p.ingress_burst = b.ingress_burst.unwrap_or(0);
    }
    if let Some(rate) = b.egress_rate {
        p.egress_rate = rate;
        p.egress_burst = b.egress_burst.unwrap_or(0);
    }
}

fn pod_to_pb(p: &PodRef) -> pb::PodRef {
    pb::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        uid: p.uid.clone(),
    }
}

pub fn lease_to_pb(l: &Lease, prefix: u8) -> pb::Lease {
    pb::Lease {
        network: l.network.clone(),
        address: format!("{}/{}", l.address, prefix),
        node: l.node.clone(),
        container_id: l.container_id.clone(),
        ifname: l.ifname.clone(),
        pod: Some(pod_to_pb(&l.pod)),
        created_unix_ms: l.created_unix_ms,
    }
}

pub fn network_to_pb(n: &NetworkSpec) -> pb::NetworkConfig {
    pb::NetworkConfig {
        name: n.name.clone(),
        subnet: n.subnet.to_string(),
        gateway: n.gateway.to_string(),
        master: n.master.clone(),
        mtu: n.mtu,
        vlan: n.vlan.map(u32::from).unwrap_or(0),
        routes: n
            .routes
            .iter()
            .map(|r| pb::Route {
                dst: r.dst.to_string(),
                gw: r.gw.map(|g| g.to_string()).unwrap_or_default(),
            })
            .collect(),
        host_routes: n.host_routes.iter().map(|c| c.to_string()).collect(),
        probe: n.probe.map(|p| pb::ProbeConfig {
            count: p.count,
            interval_ms: p.interval_ms,
            quarantine_secs: p.quarantine_secs,
        }),
        qos_default: n.qos.default.as_ref().map(crate::qos::bandwidth_to_pb),
        qos_max: n.qos.max.as_ref().map(crate::qos::bandwidth_to_pb),
        // Node class and policy depend on the node and the pod:
        // `crate::qos::QosState::fill`.
        ..Default::default()
    }
}

/// The addresses an Allocate asks for, in order and without repeats.
fn parse_requested(list: &[String]) -> Result<Vec<std::net::Ipv4Addr>, Status> {
    let mut requested = Vec::with_capacity(list.len());
    for s in list {
        let ip = s.trim().parse().map_err(|_| {
            status_of(IpamError::RequestedAddress(format!(
                "requested address {s:?} is not an IPv4 address (no prefix length)"
            )))
        })?;
        if !requested.contains(&ip) {
            requested.push(ip);
        }
    }
    Ok(requested)
}

#[tonic::async_trait]
impl<S: LeaseStore> pb::ipam_server::Ipam for IpamService<S> {
    async fn allocate(
        &self,
        req: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateReply>, Status> {
        let started = std::time::Instant::now();
        let r = req.into_inner();
        if let Some(m) = &self.metrics {
            m.plugin_reported(&r.plugin_timings);
        }
        let network = r.network.clone();
        let pod = r.pod.unwrap_or_default();
        let pod = PodRef {
            namespace: pod.namespace,
            name: pod.name,
            uid: pod.uid,
        };
        let requested = parse_requested(&r.requested_addresses)?;
        let opts = self.pod_options(&pod).await?;
        self.netpol_ready().await?;
        let netns = r.netns.clone();
        let a = self
            .engine
            .allocate(AllocateArgs {
                network: r.network,
                container_id: r.container_id,
                ifname: r.ifname,
                pod,
                requested,
                sticky: opts.sticky,
                annotated: opts.addresses,
            })
            .await;
        self.count(&network, started, None, a.as_ref().err());
        let a = a.map_err(status_of)?;
        let mut network = self.network_for(&a.network, &a.lease.pod);
        if let Some(b) = &opts.bandwidth {
            apply_pod_bandwidth(&mut network, b);
        }
        if let (Some(reg), false) = (&self.attachments, netns.is_empty()) {
            reg.record(&crate::reprogram::AttachmentRecord {
                network: a.lease.network.clone(),
                container_id: a.lease.container_id.clone(),
                ifname: a.lease.ifname.clone(),
                netns: netns.into(),
                pod: a.lease.pod.clone(),
                address: a.lease.address,
            });
        }
        Ok(Response::new(pb::AllocateReply {
            lease: Some(lease_to_pb(&a.lease, a.network.subnet.prefix())),
            network: Some(network),
            existing: a.existing,
            sticky: a.lease.sticky,
            filter: self.filter_for(&a.lease),
        }))
    }

    async fn release(
        &self,
        req: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseReply>, Status> {
        let started = std::time::Instant::now();
        let r = req.into_inner();
        if let Some(m) = &self.metrics {
            m.plugin_reported(&r.plugin_timings);
        }
        let freed = self
            .engine
            .allocator()
            .release_if(&r.network, &r.container_id, &r.ifname, r.rollback, || true)
            .await;
        self.count(
            &r.network,
            started,
            Some(freed.as_ref().is_ok_and(|f| !f.is_empty())),
            freed.as_ref().err(),
        );
        let freed = freed.map_err(status_of)?;
        if let Some(reg) = &self.attachments {
            reg.forget(&r.network, &r.container_id, &r.ifname);
        }
        Ok(Response::new(pb::ReleaseReply {
            released: !freed.is_empty(),
            address: freed
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }))
    }

    async fn check(
        &self,
        req: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckReply>, Status> {
        let r = req.into_inner();
        match self
            .engine
            .allocator()
            .check(&r.network, &r.container_id, &r.ifname)
            .await
            .map_err(status_of)?
        {
            Some(a) => {
                // CHECK compares the pod's shaping with what ADD would give
                // now: the bandwidth annotation is part of that.
                // CHECK against an allow-all stand-in would call a
                // protected pod's table unexpected.
                self.netpol_ready().await?;
                let mut network = self.network_for(&a.network, &a.lease.pod);
                if let Some(b) = self.pod_options(&a.lease.pod).await?.bandwidth {
                    apply_pod_bandwidth(&mut network, &b);
                }
                // And whether the pod still runs as the network is
                // defined: settings recorded at ADD against today's.
                let out_of_spec = rackline_model::applied::out_of_spec(
                    &a.lease,
                    &a.network,
                    self.engine.mirror().node_class(),
                );
                Ok(Response::new(pb::CheckReply {
                    lease: Some(lease_to_pb(&a.lease, a.network.subnet.prefix())),
                    network: Some(network),
                    out_of_spec,
                    filter: self.filter_for(&a.lease),
                }))
            }
            None => Err(IpamReason::NoLease.status(format!(
                "no lease for container {} ifname {} on network {}",
                r.container_id, r.ifname, r.network
            ))),
        }
    }

    async fn gc(&self, req: Request<pb::GcRequest>) -> Result<Response<pb::GcReply>, Status> {
        let r = req.into_inner();
        let valid: HashSet<(String, String)> = r
            .valid
            .into_iter()
            .map(|a| (a.container_id, a.ifname))
            .collect();
        let (released, prefix) = self
            .engine
            .allocator()
            .gc(&r.network, &valid)
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::GcReply {
            released: released.iter().map(|l| lease_to_pb(l, prefix)).collect(),
        }))
    }

    async fn report_conflict(
        &self,
        req: Request<pb::ConflictRequest>,
    ) -> Result<Response<pb::ConflictReply>, Status> {
        let r = req.into_inner();
        let address = r.address.parse().map_err(|_| {
            IpamReason::InvalidRequest
                .status(format!("address {:?} is not an IPv4 address", r.address))
        })?;
        let q = self
            .engine
            .report_conflict(ConflictArgs {
                network: r.network,
                container_id: r.container_id,
                ifname: r.ifname,
                address,
                mac: r.conflicting_mac,
            })
            .await
            .map_err(status_of)?;
        Ok(Response::new(pb::ConflictReply {
            quarantined: q.quarantined,
            quarantine_secs: q.quarantine_secs,
        }))
    }

    async fn status(
        &self,
        req: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusReply>, Status> {
        let r = req.into_inner();
        let s = self.engine.status(&r.network).await.map_err(status_of)?;
        Ok(Response::new(pb::StatusReply {
            capacity: s.capacity,
            allocated: s.allocated,
            available: s.available,
            etcd_connected: s.etcd_connected,
            can_allocate: s.can_allocate,
            reason: s.reason,
        }))
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn every_refusal_keeps_its_code_and_message_and_carries_its_reason() {
        let cases = [
            (
                IpamError::UnknownNetwork("n".into()),
                Code::NotFound,
                IpamReason::UnknownNetwork,
            ),
            (
                IpamError::Exhausted {
                    network: "n".into(),
                    allocated: 2,
                    capacity: 2,
                },
                Code::ResourceExhausted,
                IpamReason::Exhausted,
            ),
            (
                IpamError::InvalidRequest("x".into()),
                Code::InvalidArgument,
                IpamReason::InvalidRequest,
            ),
            (
                IpamError::Unavailable("etcd".into()),
                Code::Unavailable,
                IpamReason::Unavailable,
            ),
            (IpamError::NotReady, Code::Unavailable, IpamReason::NotReady),
            (
                IpamError::Contended(3),
                Code::Aborted,
                IpamReason::Contended,
            ),
            (
                IpamError::NotInRack("r".into()),
                Code::FailedPrecondition,
                IpamReason::NotInRack,
            ),
            (
                IpamError::IdentityLive("l".into()),
                Code::AlreadyExists,
                IpamReason::StickyLiveElsewhere,
            ),
            (
                IpamError::WrongRack("w".into()),
                Code::OutOfRange,
                IpamReason::StickyWrongRack,
            ),
            (
                IpamError::RequestedAddress("gw".into()),
                Code::FailedPrecondition,
                IpamReason::RequestedAddress,
            ),
            (
                IpamError::Store(rackline_store::StoreError::NotFound("n".into())),
                Code::Internal,
                IpamReason::Store,
            ),
        ];
        for (e, code, reason) in cases {
            let msg = e.to_string();
            let s = status_of(e);
            assert_eq!(s.code(), code, "{msg}");
            assert_eq!(s.message(), msg);
            assert_eq!(IpamReason::of(&s), Some(reason), "{msg}");
            // The old tag stays for plugins that predate reasons.
            let tagged = s
                .metadata()
                .get(ERROR_KIND_KEY)
                .is_some_and(|v| v.as_bytes() == ERROR_REQUESTED_ADDRESS.as_bytes());
            assert_eq!(tagged, reason == IpamReason::RequestedAddress, "{msg}");
        }
    }
}
