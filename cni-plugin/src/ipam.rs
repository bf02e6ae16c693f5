//! Client for rackline-ipamd over its unix socket. The plugin is synchronous;
//! each call runs on a current-thread runtime owned by this client.

use std::net::Ipv4Addr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use ipnetwork::Ipv4Network;
use rackline_model::filter::PodFilter;
use rackline_model::qos::Bandwidth;
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_client::IpamClient as GrpcClient;
use rackline_proto::reason::IpamReason;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::conf::ValidAttachment;
use crate::env::{Attachment, PodArgs};
use crate::error::CniError;
use crate::probe::ProbeParams;

/// ipamd's answer for an attachment (Allocate, Check) in the plugin's own
/// types: protobuf stops here, and a malformed answer is refused here
/// (code 104) before anything is planned or touched.
#[derive(Debug, Clone)]
pub struct Offer {
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub vlan: Option<u16>,
    /// 0 = inherit from the parent.
    pub mtu: u32,
    /// The network's uplink (the CNI config's `master` overrides it).
    pub master: String,
    /// Extra routes through the macvlan: (dst, next hop; the gateway when
    /// ipamd names none).
    pub routes: Vec<(Ipv4Network, Ipv4Addr)>,
    /// The network's host routes (the CNI config adds its own).
    pub host_routes: Vec<Ipv4Network>,
    pub qos: QosLevels,
    /// Duplicate-address probe; None = off.
    pub probe: Option<ProbeParams>,
    /// None = no filtering (the policy allows everything).
    pub filter: Option<PodFilter>,
}

/// ipamd's bandwidth levels for the pod (the pod's own request is layered
/// in by `qos::effective`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QosLevels {
    pub network_default: Option<Bandwidth>,
    pub node_class: Option<Bandwidth>,
    pub policy: Option<Bandwidth>,
    pub max: Option<Bandwidth>,
}

/// Allocate's answer. `offer` is an error when ipamd's answer cannot be
/// used: the lease is still the attachment's and the caller releases it.
#[derive(Debug)]
pub struct Allocation {
    /// The attachment already held this lease (a repeated ADD).
    pub existing: bool,
    pub sticky: bool,
    pub offer: Result<Offer, CniError>,
}

/// CHECK's answer.
#[derive(Debug)]
pub struct Checked {
    pub offer: Offer,
    /// Settings recorded at ADD that the network no longer has.
    pub out_of_spec: Vec<String>,
}

/// Converts ipamd's lease, network and packet filter into an [`Offer`].
pub fn offer_from(
    lease: Option<&pb::Lease>,
    net: Option<&pb::NetworkConfig>,
    filter: &[u8],
) -> Result<Offer, CniError> {
    let bad = CniError::IpamUnusable;
    let lease = lease.ok_or_else(|| bad("no lease in the reply".into()))?;
    let net = net.ok_or_else(|| bad("no network in the reply".into()))?;
    let address: Ipv4Network = lease
        .address
        .parse()
        .map_err(|e| bad(format!("address {:?}: {e}", lease.address)))?;
    let gateway: Ipv4Addr = net
        .gateway
        .parse()
        .map_err(|e| bad(format!("gateway {:?}: {e}", net.gateway)))?;
    let vlan = match net.vlan {
        0 => None,
        v @ 1..=4094 => Some(v as u16),
        v => return Err(bad(format!("VLAN {v} is outside 1-4094"))),
    };
    Ok(Offer {
        address,
        gateway,
        vlan,
        mtu: net.mtu,
        master: net.master.clone(),
        routes: routes_from(net, gateway)?,
        host_routes: host_routes_from(net)?,
        qos: QosLevels {
            network_default: bandwidth(net.qos_default.as_ref()),
            node_class: bandwidth(net.qos_node_class.as_ref()),
            policy: bandwidth(net.qos_policy.as_ref()),
            max: bandwidth(net.qos_max.as_ref()),
        },
        probe: probe_params(net.probe.as_ref()),
        filter: filter_from(filter)?,
    })
}

/// The network's routes: (dst, next hop; `gateway` when ipamd names none).
fn routes_from(
    net: &pb::NetworkConfig,
    gateway: Ipv4Addr,
) -> Result<Vec<(Ipv4Network, Ipv4Addr)>, CniError> {
    let bad = CniError::IpamUnusable;
    let mut routes = Vec::new();
    for r in &net.routes {
        let dst: Ipv4Network = r
            .dst
            .parse()
            .map_err(|e| bad(format!("route {:?}: {e}", r.dst)))?;
        let gw: Ipv4Addr = if r.gw.is_empty() {
            gateway
        } else {
            r.gw.parse()
                .map_err(|e| bad(format!("route gw {:?}: {e}", r.gw)))?
        };
        routes.push((dst, gw));
    }
    Ok(routes)
}

fn host_routes_from(net: &pb::NetworkConfig) -> Result<Vec<Ipv4Network>, CniError> {
    net.host_routes
        .iter()
        .map(|h| {
            h.parse()
                .map_err(|e| CniError::IpamUnusable(format!("host route {h:?}: {e}")))
        })
        .collect()
}

/// The packet filter as JSON; empty or allow-all: no filtering, no table.
fn filter_from(filter: &[u8]) -> Result<Option<PodFilter>, CniError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let f: PodFilter = serde_json::from_slice(filter)
        .map_err(|e| CniError::IpamUnusable(format!("packet filter: {e}")))?;
    Ok((!f.is_allow_all()).then_some(f))
}

/// A bandwidth level; 0 = unset, all unset = no level.
fn bandwidth(b: Option<&pb::Bandwidth>) -> Option<Bandwidth> {
    let b = b?;
    let nz = |v: u64| (v != 0).then_some(v);
    let out = Bandwidth {
        ingress_rate: nz(b.ingress_rate),
        ingress_burst: nz(b.ingress_burst),
        egress_rate: nz(b.egress_rate),
        egress_burst: nz(b.egress_burst),
    };
    (!out.is_empty()).then_some(out)
}

/// The network's probe settings; None = probe off. Out-of-range values (an
/// ipamd newer than this plugin, or a corrupt record) are clamped to the
/// documented bounds rather than turning one ADD into a long stall.
pub fn probe_params(p: Option<&pb::ProbeConfig>) -> Option<ProbeParams> {
    use rackline_model::probe::{PROBE_COUNT_RANGE, PROBE_INTERVAL_MS_RANGE};
    p.map(|p| ProbeParams {
        count: p
            .count
            .clamp(*PROBE_COUNT_RANGE.start(), *PROBE_COUNT_RANGE.end()),
        interval: Duration::from_millis(u64::from(p.interval_ms.clamp(
            *PROBE_INTERVAL_MS_RANGE.start(),
            *PROBE_INTERVAL_MS_RANGE.end(),
        ))),
    })
}

pub struct IpamClient {
    rt: tokio::runtime::Runtime,
    grpc: GrpcClient<Channel>,
    timeout: Duration,
    /// How long `connect` waited for the socket: a reconnect waits as long.
    wait: Duration,
    socket: PathBuf,
}

/// The call failed because the connection broke (ipamd killed or restarted between the dial
/// and the answer), not because ipamd answered.
fn connection_lost(e: &CniError) -> bool {
    matches!(e, CniError::IpamUnreachable { .. })
}

/// What the connector answers when tonic reconnects after the one
/// connection it was given broke (tonic reports it as UNAVAILABLE).
const CONNECTION_LOST: &str = "the connection to ipamd was lost";

fn unreachable(socket: &Path, why: impl std::fmt::Display) -> CniError {
    CniError::IpamUnreachable {
        socket: socket.to_owned(),
        why: why.to_string(),
    }
}

/// Maps an ipamd answer to the plugin's error. ipamd names its reason in
/// the status (`google.rpc.ErrorInfo`, [`IpamReason`]); an older ipamd
/// does not, and its reason is read from the gRPC code instead. Either way
/// the reason becomes a [`CniError`] in [`error_for`] alone.
pub fn map_status(s: tonic::Status, socket: &Path) -> CniError {
    use tonic::Code;
    let msg = s.message().to_string();
    // Not ipamd's answer but the broken connection's: unreachable, so the
    // idempotent calls dial again (`retrying`) instead of failing with 11.
    if s.message() == CONNECTION_LOST {
        return unreachable(socket, msg);
    }
    let reason = IpamReason::of(&s).or_else(|| {
        // ipamd tags refusals that share a gRPC code (see
        // rackline_ipamd::service::ERROR_KIND_KEY).
        let requested = s
            .metadata()
            .get("rackline-error")
            .is_some_and(|v| v.as_bytes() == b"requested-address");
        IpamReason::from_legacy_code(s.code(), requested)
    });
    match (reason, s.code()) {
        (Some(r), code) => error_for(r, code, msg),
        // Not ipamd's answer: tonic's own, about the connection.
        (None, Code::DeadlineExceeded | Code::Cancelled) => CniError::TryAgainLater(msg),
        (None, Code::Unknown) if msg.contains("transport") || msg.contains("connect") => {
            unreachable(socket, msg)
        }
        (None, status) => CniError::Ipam {
            status,
            message: msg,
        },
    }
}

/// The one mapping from ipamd's reason to the plugin's error (`code`: the
/// status's gRPC code, shown for the reasons the plugin has no name for).
fn error_for(reason: IpamReason, code: tonic::Code, msg: String) -> CniError {
    use IpamReason as R;
    match reason {
        R::UnknownNetwork => CniError::UnknownNetwork(msg),
        // CHECK turns "no network" into "no lease" too; said outright here.
        R::NoLease => CniError::NoLease(msg),
        R::Exhausted => CniError::Exhausted(msg),
        R::InvalidRequest | R::BadAnnotation => CniError::IpamRejected(msg),
        R::Unavailable | R::NotReady | R::PolicyNotSynced | R::Contended => {
            CniError::TryAgainLater(msg)
        }
        R::StickyLiveElsewhere => CniError::StickyLiveElsewhere(msg),
        R::StickyWrongRack => CniError::StickyWrongRack(msg),
        R::RequestedAddress => CniError::RequestedAddress(msg),
        R::NotInRack | R::Store => CniError::Ipam {
            status: code,
            message: msg,
        },
    }
}

/// Dials ipamd's socket, retrying while it is missing or refuses (ipamd
/// restarting: a DaemonSet rolling update removes the socket and binds it
/// again) with a growing pause, until `wait` has passed. A path that exists
/// but is not a socket is not waited for: ipamd never leaves one.
async fn dial(path: &Path, wait: Duration) -> Result<tokio::net::UnixStream, CniError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut pause = Duration::from_millis(20);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let err = match std::fs::metadata(path) {
            Ok(m) if !m.file_type().is_socket() => {
                return Err(unreachable(
                    path,
                    format!(
                        "it is {}, not a socket; check ipamdSocket",
                        crate::fsutil::kind_of(m.file_type())
                    ),
                ))
            }
            _ => match tokio::net::UnixStream::connect(path).await {
                Ok(s) => return Ok(s),
                Err(e) => e,
            },
        };
        let retry = matches!(
            err.kind(),
            std::io::ErrorKind::NotFound
                | std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::WouldBlock
        );
        let now = tokio::time::Instant::now();
        if !retry || now + pause > deadline {
            let waited = if attempts > 1 {
                format!(" (after {attempts} attempts over {wait:?})")
            } else {
                String::new()
            };
            return Err(unreachable(path, format!("{err}{waited}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

impl IpamClient {
    /// Connects to ipamd. `wait`: how long a missing or refusing socket is
    /// retried (ADD waits through an ipamd restart; DEL briefly, then spools
    /// the release). Every later call is bounded by `timeout`.
    pub fn connect(socket: &Path, timeout: Duration, wait: Duration) -> Result<Self, CniError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(CniError::ClientRuntime)?;
        let path = socket.to_path_buf();
        let stream = rt.block_on(dial(&path, wait))?;
        // The URI is a placeholder: the connector below hands tonic the
        // stream dialled above (once; a call whose connection breaks fails,
        // and Allocate/Release then dial again: see `retrying`).
        let endpoint = Endpoint::from_static("http://ipamd.invalid")
            .connect_timeout(timeout)
            .timeout(timeout);
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(stream)));
        let channel = rt
            .block_on(async move {
                tokio::time::timeout(
                    timeout,
                    endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                        let s = slot.lock().ok().and_then(|mut g| g.take());
                        async move {
                            s.map(TokioIo::new).ok_or_else(|| {
                                std::io::Error::new(
                                    std::io::ErrorKind::NotConnected,
                                    CONNECTION_LOST,
                                )
                            })
                        }
                    })),
                )
                .await
            })
            .map_err(|_| unreachable(&path, format!("no HTTP/2 connection within {timeout:?}")))?
            .map_err(|e| {
                let mut why = e.to_string();
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    // Transport errors repeat their cause in their own text.
                    let t = s.to_string();
                    if !why.contains(&t) {
                        why = format!("{why}: {t}");
                    }
                    src = s.source();
                }
                unreachable(&path, why)
            })?;
        Ok(Self {
            rt,
            grpc: GrpcClient::new(channel),
            timeout,
            wait,
            socket: path,
        })
    }

    /// `call`, and once more on a fresh connection when the first one broke before ipamd
    /// answered (a kill -9 or a rolling restart between dial and answer: measured, the
    /// socket is away for 0.8-1 s). Only for calls ipamd makes idempotent per attachment
    /// (Allocate returns the attachment's lease if it already holds one; Release of nothing
    /// is a no-op), so a request that did reach the old ipamd is harmless to repeat.
    fn retrying<T, F>(&mut self, f: impl Fn(GrpcClient<Channel>) -> F) -> Result<T, CniError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.call(&f) {
            Err(e) if connection_lost(&e) => {
                tracing::warn!("{e}; dialling rackline-ipamd again");
                *self = Self::connect(&self.socket, self.timeout, self.wait)?;
                self.call(&f)
            }
            other => other,
        }
    }

    fn call<T, F>(&mut self, f: impl FnOnce(GrpcClient<Channel>) -> F) -> Result<T, CniError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.grpc.clone();
        let timeout = self.timeout;
        let fut = f(client);
        match self
            .rt
            .block_on(async move { tokio::time::timeout(timeout, fut).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(map_status(s, &self.socket)),
            Err(_) => Err(CniError::IpamTimeout {
                socket: self.socket.clone(),
                after: timeout,
            }),
        }
    }

    /// Allocate for the attachment `att` of `pod` (netns `netns`), asking
    /// for `requested` if set. Also carries the plugin's pending timing
    /// reports (`crate::timing`).
    pub fn allocate(
        &mut self,
        network: &str,
        att: &Attachment,
        pod: &PodArgs,
        requested: Option<Ipv4Addr>,
        netns: &Path,
    ) -> Result<Allocation, CniError> {
        let req = pb::AllocateRequest {
            network: network.to_owned(),
            container_id: att.container_id.as_str().to_owned(),
            ifname: att.ifname.as_str().to_owned(),
            pod: Some(pb::PodRef {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
                uid: pod.uid.clone(),
            }),
            requested_addresses: requested.iter().map(Ipv4Addr::to_string).collect(),
            netns: netns.display().to_string(),
            plugin_timings: crate::timing::take(),
        };
        let r = self.retrying(|mut c| {
            let req = req.clone();
            async move { c.allocate(req).await }
        })?;
        Ok(Allocation {
            existing: r.existing,
            sticky: r.sticky,
            offer: offer_from(r.lease.as_ref(), r.network.as_ref(), &r.filter),
        })
    }

    /// Releases the attachment's lease (`rollback`: of an ADD that failed).
    /// Also carries the plugin's pending timing reports (`crate::timing`).
    pub fn release(
        &mut self,
        network: &str,
        att: &Attachment,
        rollback: bool,
    ) -> Result<Released, CniError> {
        let req = pb::ReleaseRequest {
            network: network.to_owned(),
            container_id: att.container_id.as_str().to_owned(),
            ifname: att.ifname.as_str().to_owned(),
            rollback,
            plugin_timings: crate::timing::take(),
        };
        let r = self.retrying(|mut c| {
            let req = req.clone();
            async move { c.release(req).await }
        })?;
        Ok(Released {
            released: r.released,
            address: r.address,
        })
    }

    pub fn check(&mut self, network: &str, att: &Attachment) -> Result<Checked, CniError> {
        let req = pb::CheckRequest {
            network: network.to_owned(),
            container_id: att.container_id.as_str().to_owned(),
            ifname: att.ifname.as_str().to_owned(),
        };
        let r = self.call(|mut c| async move { c.check(req).await })?;
        Ok(Checked {
            offer: offer_from(r.lease.as_ref(), r.network.as_ref(), &r.filter)?,
            out_of_spec: r.out_of_spec,
        })
    }

    /// Releases the network's leases on this node not in `valid`; how many.
    pub fn gc(&mut self, network: &str, valid: &[ValidAttachment]) -> Result<usize, CniError> {
        let req = pb::GcRequest {
            network: network.to_owned(),
            valid: valid
                .iter()
                .map(|a| pb::Attachment {
                    container_id: a.container_id.clone(),
                    ifname: a.ifname.clone(),
                })
                .collect(),
        };
        let r = self.call(|mut c| async move { c.gc(req).await })?;
        Ok(r.released.len())
    }

    /// Reports `address` of the attachment in use by `mac` (formatted);
    /// whether ipamd quarantined it.
    pub fn report_conflict(
        &mut self,
        network: &str,
        att: &Attachment,
        address: Ipv4Addr,
        mac: &str,
    ) -> Result<bool, CniError> {
        let req = pb::ConflictRequest {
            network: network.to_owned(),
            container_id: att.container_id.as_str().to_owned(),
            ifname: att.ifname.as_str().to_owned(),
            address: address.to_string(),
            conflicting_mac: mac.to_owned(),
        };
        let r = self.call(|mut c| async move { c.report_conflict(req).await })?;
        Ok(r.quarantined)
    }

    /// Whether ipamd can allocate on `network`: `Err(reason)` when not.
    pub fn status(&mut self, network: &str) -> Result<Result<(), String>, CniError> {
        let req = pb::StatusRequest {
            network: network.to_owned(),
        };
        let s = self.call(|mut c| async move { c.status(req).await })?;
        Ok(if s.can_allocate {
            Ok(())
        } else {
            Err(s.reason)
        })
    }
}

/// Release's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    /// A lease was released (false: there was none).
    pub released: bool,
    /// The released address ("" when none).
    pub address: String,
}

#[cfg(test)]
mod requested_tests {
    use super::*;
    use crate::error::code;

    #[test]
    fn a_refused_requested_address_is_code_107_other_preconditions_stay_104() {
        let mut s = tonic::Status::failed_precondition("10.0.0.5 is the gateway");
        s.metadata_mut().insert(
            "rackline-error",
            tonic::metadata::MetadataValue::from_static("requested-address"),
        );
        let e = map_status(s, Path::new("/run/rackline/ipamd.sock"));
        assert_eq!(e.code(), code::REQUESTED_ADDRESS);
        assert!(e.to_string().contains("10.0.0.5 is the gateway"), "{e}");
        let plain = map_status(
            tonic::Status::failed_precondition("rack-bound"),
            Path::new("/x"),
        );
        assert_eq!(plain.code(), code::IPAM);
    }

    fn net() -> pb::NetworkConfig {
        pb::NetworkConfig {
            gateway: "10.0.0.1".into(),
            master: "eth1".into(),
            routes: vec![pb::Route {
                dst: "192.168.0.0/16".into(),
                gw: String::new(),
            }],
            host_routes: vec!["10.96.0.0/12".into()],
            qos_default: Some(pb::Bandwidth::default()),
            qos_max: Some(pb::Bandwidth {
                egress_rate: 5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn lease(address: &str) -> pb::Lease {
        pb::Lease {
            address: address.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_offer_is_ipamds_answer_in_the_plugins_types() {
        let o = offer_from(Some(&lease("10.0.0.5/24")), Some(&net()), b"").unwrap();
        assert_eq!(o.address, "10.0.0.5/24".parse().unwrap());
        // A route without a next hop goes via the gateway.
        assert_eq!(
            o.routes,
            [(
                "192.168.0.0/16".parse().unwrap(),
                "10.0.0.1".parse().unwrap()
            )]
        );
        assert_eq!(o.host_routes, ["10.96.0.0/12".parse().unwrap()]);
        assert_eq!((o.vlan, o.master.as_str(), o.probe), (None, "eth1", None));
        // All-zero levels are no level; zero fields are unset.
        assert_eq!(o.qos.network_default, None);
        let max = o.qos.max.unwrap();
        assert_eq!((max.egress_rate, max.ingress_rate), (Some(5), None));
        assert!(o.filter.is_none());
    }

    #[test]
    fn an_unusable_answer_is_code_104_and_names_the_field() {
        let cases: [(Option<pb::Lease>, Option<pb::NetworkConfig>, &str); 6] = [
            (None, Some(net()), "no lease in the reply"),
            (Some(lease("10.0.0.5/24")), None, "no network in the reply"),
            (Some(lease("nope")), Some(net()), "address \"nope\""),
            (
                Some(lease("10.0.0.5/24")),
                Some(pb::NetworkConfig {
                    gateway: "x".into(),
                    ..net()
                }),
                "gateway \"x\"",
            ),
            (
                Some(lease("10.0.0.5/24")),
                Some(pb::NetworkConfig {
                    vlan: 4095,
                    ..net()
                }),
                "VLAN 4095 is outside 1-4094",
            ),
            (
                Some(lease("10.0.0.5/24")),
                Some(pb::NetworkConfig {
                    host_routes: vec!["10.96/x".into()],
                    ..net()
                }),
                "host route \"10.96/x\"",
            ),
        ];
        for (l, n, want) in cases {
            let e = offer_from(l.as_ref(), n.as_ref(), b"").unwrap_err();
            assert_eq!(e.code(), code::IPAM, "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
        let e = offer_from(Some(&lease("10.0.0.5/24")), Some(&net()), b"{").unwrap_err();
        assert!(e.to_string().contains("packet filter"), "{e}");
    }

    fn json(e: &CniError) -> serde_json::Value {
        serde_json::from_str(&e.to_json("1.1.0")).unwrap()
    }

    /// What an ipamd that predates reasons sends for `r`: the same code
    /// and message, no detail (and the old tag on a requested address).
    fn legacy(r: IpamReason, msg: &str) -> tonic::Status {
        let mut s = tonic::Status::new(r.code(), msg);
        if r == IpamReason::RequestedAddress {
            s.metadata_mut().insert(
                "rackline-error",
                tonic::metadata::MetadataValue::from_static("requested-address"),
            );
        }
        s
    }

    #[test]
    fn each_reason_maps_to_its_cni_code_and_an_older_ipamd_gets_the_same_answer() {
        use IpamReason as R;
        let socket = Path::new("/run/rackline/ipamd.sock");
        let want = [
            (R::UnknownNetwork, code::UNKNOWN_NETWORK),
            (R::NoLease, code::CHECK_FAILED),
            (R::Exhausted, code::EXHAUSTED),
            (R::InvalidRequest, code::INVALID_CONFIG),
            (R::BadAnnotation, code::INVALID_CONFIG),
            (R::Unavailable, code::TRY_AGAIN_LATER),
            (R::NotReady, code::TRY_AGAIN_LATER),
            (R::PolicyNotSynced, code::TRY_AGAIN_LATER),
            (R::Contended, code::TRY_AGAIN_LATER),
            (R::NotInRack, code::IPAM),
            (R::StickyLiveElsewhere, code::STICKY_LIVE),
            (R::StickyWrongRack, code::STICKY_WRONG_RACK),
            (R::RequestedAddress, code::REQUESTED_ADDRESS),
            (R::Store, code::IPAM),
        ];
        assert_eq!(want.len(), R::ALL.len(), "every reason has a row");
        for (r, cni) in want {
            let typed = map_status(r.status("why"), socket);
            assert_eq!(typed.code(), cni, "{r}: {typed}");
            assert!(typed.to_string().contains("why"), "{r}: {typed}");
            let old = map_status(legacy(r, "why"), socket);
            if r == R::NoLease {
                // The code alone cannot tell "no lease" from "no network";
                // CHECK turns the latter into the former (commands.rs).
                assert!(matches!(old, CniError::UnknownNetwork(_)), "{old}");
            } else {
                assert_eq!(json(&typed), json(&old), "{r}");
            }
        }
    }

    #[test]
    fn the_reason_wins_over_the_code_and_an_unknown_reason_falls_back_to_it() {
        use tonic_types::StatusExt;
        let socket = Path::new("/x");
        // A status whose code alone would say "ipamd failed" (104).
        let s = tonic::Status::with_error_details(
            tonic::Code::FailedPrecondition,
            "10.0.0.9 is excluded",
            tonic_types::ErrorDetails::with_error_info(
                IpamReason::RequestedAddress.as_str(),
                rackline_proto::reason::DOMAIN,
                std::collections::HashMap::new(),
            ),
        );
        assert!(matches!(
            map_status(s, socket),
            CniError::RequestedAddress(m) if m == "10.0.0.9 is excluded"
        ));
        // A newer ipamd's reason this plugin does not know: the code decides.
        let newer = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "full",
            tonic_types::ErrorDetails::with_error_info(
                "SOMETHING_NEWER",
                rackline_proto::reason::DOMAIN,
                std::collections::HashMap::new(),
            ),
        );
        assert_eq!(map_status(newer, socket).code(), code::EXHAUSTED);
    }

    #[test]
    fn answers_that_are_not_ipamds_keep_their_old_mapping() {
        let socket = Path::new("/run/rackline/ipamd.sock");
        let dl = map_status(tonic::Status::deadline_exceeded("slow"), socket);
        assert!(matches!(dl, CniError::TryAgainLater(_)), "{dl}");
        let tr = map_status(tonic::Status::unknown("transport error"), socket);
        assert!(matches!(tr, CniError::IpamUnreachable { .. }), "{tr}");
        // tonic's status when the connector, asked to reconnect, has no
        // connection left: the ipamd restart `retrying` dials again for.
        let lost = tonic::Status::from(std::io::Error::new(
            std::io::ErrorKind::NotConnected,
            CONNECTION_LOST,
        ));
        assert_eq!(lost.code(), tonic::Code::Unavailable);
        let lost = map_status(lost, socket);
        assert!(connection_lost(&lost), "{lost}");
        let other = map_status(tonic::Status::permission_denied("peer uid"), socket);
        assert_eq!(
            json(&other)["details"],
            "PermissionDenied: peer uid",
            "{other}"
        );
    }
}
