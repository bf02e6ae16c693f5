//! This node's pods as the API server has them, for the annotations users
//! set on a pod: a requested address (`rackline.io/ip`), sticky opt-in or
//! opt-out (`rackline.io/sticky`) and per-pod bandwidth with bursts
//! (`rackline.io/bandwidth`, which works whatever the runtime passes in
//! `runtimeConfig`).
//!
//! A kube-rs reflector keeps a cache of the pods whose `spec.nodeName` is
//! this node (one LIST, then a WATCH), so an ADD costs no API round trip.
//! The watch can lag a pod created a moment ago: on a cache miss (or a cache
//! entry of another incarnation, told apart by the UID the runtime passes)
//! the pod is read directly. A pod the API server does not know (deleted
//! already, or a container started outside Kubernetes) has no annotations;
//! an API server that cannot be reached fails the ADD with "try again
//! later" rather than silently ignoring a requested address.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use rackline_model::Bandwidth;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

/// Address(es) the pod asks for: `10.10.0.70`, or a comma-separated list
/// (one per Rackline network the pod is attached to; on each network the
/// addresses inside its subnet are requested).
pub const ANNOTATION_IP: &str = "rackline.io/ip";
/// `"true"`: the pod keeps its address across re-creation whatever the
/// network's sticky policy; `"false"`: it does not, even if the policy says
/// so (an operator pin still applies).
pub const ANNOTATION_STICKY: &str = "rackline.io/sticky";
/// Per-pod bandwidth in racklinectl's syntax
/// (`ingress=100M,egress=50M,ingress-burst=1M,egress-burst=512k`).
pub const ANNOTATION_BANDWIDTH: &str = "rackline.io/bandwidth";

/// How long an ADD waits for a direct read of a pod the cache lacks.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// What a pod's annotations ask of Rackline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOptions {
    pub addresses: Vec<Ipv4Addr>,
    pub sticky: Option<bool>,
    pub bandwidth: Option<Bandwidth>,
}

#[derive(Debug, thiserror::Error)]
pub enum PodsError {
    /// An annotation's value cannot be used; the ADD fails on it.
    #[error("pod {pod}: annotation {key}: {why}")]
    Annotation {
        pod: String,
        key: &'static str,
        why: String,
    },
    /// The pod is not cached and the API server did not answer.
    #[error("cannot read pod {pod} from the Kubernetes API server: {why}")]
    Unavailable { pod: String, why: String },
}

/// Parses Rackline's annotations (others are ignored).
pub fn parse(pod: &str, annotations: &BTreeMap<String, String>) -> Result<PodOptions, PodsError> {
    let bad = |key: &'static str, why: String| PodsError::Annotation {
        pod: pod.to_string(),
        key,
        why,
    };
    let mut o = PodOptions::default();
    if let Some(v) = annotations.get(ANNOTATION_IP) {
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ip: Ipv4Addr = part.parse().map_err(|_| {
                bad(
                    ANNOTATION_IP,
                    format!("{part:?} is not an IPv4 address (no prefix length)"),
                )
            })?;
            if !o.addresses.contains(&ip) {
                o.addresses.push(ip);
            }
        }
        if o.addresses.is_empty() {
            return Err(bad(ANNOTATION_IP, "empty".into()));
        }
    }
    if let Some(v) = annotations.get(ANNOTATION_STICKY) {
        o.sticky = Some(match v.trim() {
            "true" => true,
            "false" => false,
            other => {
                return Err(bad(
                    ANNOTATION_STICKY,
                    format!("{other:?}: use \"true\" or \"false\""),
                ))
            }
        });
    }
    if let Some(v) = annotations.get(ANNOTATION_BANDWIDTH) {
        o.bandwidth =
            Some(Bandwidth::parse_spec(v).map_err(|e| bad(ANNOTATION_BANDWIDTH, e.to_string()))?);
    }
    Ok(o)
}

/// The cached watch of this node's pods.
pub struct PodCache {
    reader: reflector::Store<Pod>,
    client: Client,
}

impl PodCache {
    /// Starts the watch of pods on `node`; the returned task runs until
    /// `shutdown` (its owner aborts it).
    pub fn start(
        client: Client,
        node: &str,
        mut shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let (reader, writer) = reflector::store::<Pod>();
        let api: Api<Pod> = Api::all(client.clone());
        let cfg = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let node = node.to_string();
        let task = tokio::spawn(async move {
            // Only metadata is read: drop what would bloat the cache.
            let stream = watcher(api, cfg)
                .default_backoff()
                .modify(|p: &mut Pod| {
                    p.managed_fields_mut().clear();
                    p.status = None;
                })
                .reflect(writer)
                .applied_objects();
            tokio::pin!(stream);
            let mut failing = false;
            loop {
                tokio::select! {
                    ev = stream.next() => match ev {
                        Some(Ok(p)) => {
                            if failing {
                                info!(%node, "pod watch recovered");
                                failing = false;
                            }
                            debug!(pod = %format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()), "pod seen");
                        }
                        Some(Err(e)) => {
                            if !failing {
                                warn!(%node, "pod watch failing (ADDs read pods directly meanwhile): {e}");
                            }
                            failing = true;
                        }
                        None => return,
                    },
                    _ = shutdown.changed() => return,
                }
            }
        });
        (Arc::new(Self { reader, client }), task)
    }

    fn cached(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.reader
            .get(&ObjectRef::<Pod>::new(name).within(namespace))
    }
}

fn options_of(pod: &Pod, display: &str) -> Result<PodOptions, PodsError> {
    match pod.metadata.annotations.as_ref() {
        Some(a) => parse(display, a),
        None => Ok(PodOptions::default()),
    }
}

fn uid_matches(pod: &Pod, uid: &str) -> bool {
    uid.is_empty() || pod.metadata.uid.as_deref() == Some(uid)
}

impl PodCache {
    /// The options of pod `namespace/name` with `uid` (empty = any
    /// incarnation): from the cache, else read directly.
    pub async fn options(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
    ) -> Result<PodOptions, PodsError> {
        let who = format!("{namespace}/{name}");
        if let Some(p) = self.cached(namespace, name).filter(|p| uid_matches(p, uid)) {
            return options_of(&p, &who);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let read = tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await;
        match read {
            Ok(Ok(Some(p))) if uid_matches(&p, uid) => options_of(&p, &who),
            Ok(Ok(Some(_))) => {
                // Another incarnation under that name: the pod this ADD is
                // for is gone (its DEL follows).
                debug!(pod = %who, uid, "pod UID differs: no annotations");
                Ok(PodOptions::default())
            }
            Ok(Ok(None)) => Ok(PodOptions::default()),
            Ok(Err(e)) => Err(PodsError::Unavailable {
                pod: who,
                why: e.to_string(),
            }),
            Err(_) => Err(PodsError::Unavailable {
                pod: who,
                why: format!("no answer within {LOOKUP_TIMEOUT:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_annotation_and_ignores_others() {
        let o = parse(
            "shop/web-0",
            &ann(&[
                (ANNOTATION_IP, "10.10.0.70, 10.20.0.70,10.10.0.70"),
                (ANNOTATION_STICKY, "true"),
                (
                    ANNOTATION_BANDWIDTH,
                    "ingress=10M,egress-burst=1M,egress=20M",
                ),
                ("kubernetes.io/ingress-bandwidth", "5M"),
            ]),
        )
        .unwrap();
        assert_eq!(
            o.addresses,
            vec![
                "10.10.0.70".parse::<Ipv4Addr>().unwrap(),
                "10.20.0.70".parse().unwrap()
            ]
        );
        assert_eq!(o.sticky, Some(true));
        let b = o.bandwidth.unwrap();
        assert_eq!(b.ingress_rate, Some(10_000_000));
        assert_eq!(b.egress_rate, Some(20_000_000));
        assert_eq!(b.egress_burst, Some(1_000_000));
        assert_eq!(b.ingress_burst, None);
        assert_eq!(
            parse("a/b", &ann(&[(ANNOTATION_STICKY, "false")]))
                .unwrap()
                .sticky,
            Some(false)
        );
        assert_eq!(parse("a/b", &ann(&[])).unwrap(), PodOptions::default());
    }

    #[test]
    fn bad_values_name_the_annotation() {
        for (k, v, needle) in [
            (ANNOTATION_IP, "10.10.0.70/24", "not an IPv4 address"),
            (ANNOTATION_IP, " , ", "empty"),
            (ANNOTATION_STICKY, "yes", "use \"true\" or \"false\""),
            (ANNOTATION_BANDWIDTH, "ingress=fast", "bandwidth"),
            (ANNOTATION_BANDWIDTH, "egress-burst=1M", "burst"),
        ] {
            let e = parse("shop/web-0", &ann(&[(k, v)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(k) && e.contains("shop/web-0"), "{e}");
            assert!(e.contains(needle), "{k}={v}: {e}");
        }
    }
}
