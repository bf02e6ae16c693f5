//! The reconciler's decision, a pure function of what one pass observed, so
//! the rule "reclaim what is gone, never what is merely slow" is tested as a
//! table without etcd, a runtime or root.
//!
//! A subject (a lease's attachment, or a leftover node veth without a lease)
//! is reclaimed only when
//! - the sandbox source answered in this pass and in the previous one, and
//!   both times the subject's sandbox was absent (a pass whose listing
//!   failed resets what was seen: it is no evidence),
//! - its absence has lasted at least the grace (first seen absent at least
//!   `grace` before this pass), and
//! - for a lease, the lease itself is at least `grace` old: an ADD in flight
//!   holds a lease younger than that, and its sandbox may not be listed yet.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rackline_model::lease::PodRef;

/// The live pod sandboxes on this node, as one source listed them.
#[derive(Debug, Clone, Default)]
pub struct Sandboxes {
    /// CRI: sandbox ids (the CNI container id of their attachments).
    pub ids: HashSet<String>,
    /// Kubernetes: pods on this node by (namespace, name), with their UIDs.
    pub pods: HashMap<(String, String), HashSet<String>>,
}

impl Sandboxes {
    /// Whether the lease's sandbox is live. A source judges only what it
    /// can see: the CRI source by the container id (= sandbox id), the
    /// Kubernetes source by namespace/name/UID; a lease without a pod name
    /// cannot be judged by Kubernetes and counts as live.
    pub fn holds(&self, kind: SourceKind, container_id: &str, pod: &PodRef) -> bool {
        match kind {
            SourceKind::Cri => self.ids.contains(container_id),
            SourceKind::Kube => {
                if pod.name.is_empty() {
                    return true;
                }
                match self.pods.get(&(pod.namespace.clone(), pod.name.clone())) {
                    None => false,
                    // A listed pod without a UID cannot be told apart
                    // from the lease's: live.
                    Some(uids) => pod.uid.is_empty() || uids.is_empty() || uids.contains(&pod.uid),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Kube,
    Cri,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Kube => "kube",
            SourceKind::Cri => "cri",
        }
    }
}

/// An active lease of this node, as the engine's cache has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    pub network: String,
    pub address: std::net::Ipv4Addr,
    pub container_id: String,
    pub ifname: String,
    pub pod: PodRef,
    pub created_unix_ms: i64,
}

/// A node veth carrying an attachment's mark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkView {
    pub name: String,
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Subject {
    /// A lease's attachment on a network.
    Lease(String, String, String),
    /// A marked node veth of an attachment that holds no lease here.
    Link(String, String),
}

/// What one pass reclaims.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub leases: Vec<LeaseView>,
    /// Node veths to delete: those of reclaimed leases and leftovers.
    pub links: Vec<LinkView>,
}

/// Remembers since when each subject has been seen absent.
#[derive(Debug)]
pub struct Tracker {
    kind: SourceKind,
    grace: Duration,
    absent_since: HashMap<Subject, Duration>,
}

impl Tracker {
    pub fn new(kind: SourceKind, grace: Duration) -> Self {
        Self {
            kind,
            grace,
            absent_since: HashMap::new(),
        }
    }

    /// A pass whose listing failed: nothing is reclaimed and the absences
    /// seen so far no longer count as consecutive.
    pub fn unavailable(&mut self) {
        self.absent_since.clear();
    }

    /// One pass: `now` is monotonic time (absences), `wall_ms` the wall
    /// clock the leases' creation times are in.
    pub fn pass(
        &mut self,
        sandboxes: &Sandboxes,
        leases: &[LeaseView],
        links: &[LinkView],
        now: Duration,
        wall_ms: i64,
    ) -> Plan {
        let grace_ms = i64::try_from(self.grace.as_millis()).unwrap_or(i64::MAX);
        let prev = std::mem::take(&mut self.absent_since);
        let mut next: HashMap<Subject, Duration> = HashMap::new();
        let grace = self.grace;
        let mut plan = Plan::default();
        // Absent now; expired when it was absent in the previous pass too
        // and first seen absent at least the grace ago.
        let mut expired = |s: Subject| -> bool {
            let earlier = prev.get(&s).copied();
            next.insert(s, earlier.unwrap_or(now));
            earlier.is_some_and(|since| now.saturating_sub(since) >= grace)
        };
        let with_lease: HashSet<(&str, &str)> = leases
            .iter()
            .map(|l| (l.container_id.as_str(), l.ifname.as_str()))
            .collect();
        for l in leases {
            if sandboxes.holds(self.kind, &l.container_id, &l.pod) {
                continue;
            }
            let s = Subject::Lease(l.network.clone(), l.container_id.clone(), l.ifname.clone());
            let gone = expired(s);
            let old = l.created_unix_ms <= wall_ms.saturating_sub(grace_ms);
            if gone && old {
                plan.leases.push(l.clone());
                plan.links.extend(
                    links
                        .iter()
                        .filter(|k| k.container_id == l.container_id && k.ifname == l.ifname)
                        .cloned(),
                );
            }
        }
        for k in links {
            if with_lease.contains(&(k.container_id.as_str(), k.ifname.as_str())) {
                continue;
            }
            // No lease: the Kubernetes source cannot map a container id to a
            // pod, so the missing lease is the evidence (the plugin creates
            // links only after its lease exists); the CRI source also needs
            // the sandbox gone.
            if self.kind == SourceKind::Cri && sandboxes.ids.contains(&k.container_id) {
                continue;
            }
            let s = Subject::Link(k.container_id.clone(), k.ifname.clone());
            if expired(s) && !plan.links.contains(k) {
                plan.links.push(k.clone());
            }
        }
        self.absent_since = next;
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(300);
    const WALL: i64 = 1_800_000_000_000;

    fn pod(ns: &str, name: &str, uid: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    fn lease(cid: &str, p: PodRef, age: Duration) -> LeaseView {
        LeaseView {
            network: "blue".into(),
            address: "10.10.0.5".parse().unwrap(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod: p,
            created_unix_ms: WALL - age.as_millis() as i64,
        }
    }

    fn link(cid: &str) -> LinkView {
        LinkView {
            name: rackline_netlink::owner::host_veth(cid, "eth0"),
            container_id: cid.into(),
            ifname: "eth0".into(),
        }
    }

    fn cri(ids: &[&str]) -> Sandboxes {
        Sandboxes {
            ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn kube(pods: &[(&str, &str, &str)]) -> Sandboxes {
        let mut s = Sandboxes::default();
        for (ns, name, uid) in pods {
            s.pods
                .entry((ns.to_string(), name.to_string()))
                .or_default()
                .insert(uid.to_string());
        }
        s
    }

    fn cids(p: &Plan) -> Vec<&str> {
        p.leases.iter().map(|l| l.container_id.as_str()).collect()
    }

    fn link_cids(p: &Plan) -> Vec<&str> {
        p.links.iter().map(|l| l.container_id.as_str()).collect()
    }

    const MIN: Duration = Duration::from_secs(60);

    /// Two passes `gap` apart over the same observation; the second pass's
    /// plan.
    fn twice(
        kind: SourceKind,
        sb: &Sandboxes,
        leases: &[LeaseView],
        links: &[LinkView],
        gap: Duration,
    ) -> Plan {
        let mut t = Tracker::new(kind, GRACE);
        let first = t.pass(
            sb,
            leases,
            links,
            Duration::ZERO,
            WALL - gap.as_millis() as i64,
        );
        assert_eq!(first, Plan::default(), "a first pass never reclaims");
        t.pass(sb, leases, links, gap, WALL)
    }

    #[test]
    fn cri_table_of_leases_sandboxes_and_ages() {
        // (lease age, sandbox listed, gap between the two passes) -> reclaimed
        let rows = [
            (10 * MIN, false, 6 * MIN, true), // gone for good
            (10 * MIN, true, 6 * MIN, false), // live pod
            (2 * MIN, false, 6 * MIN, false), // young lease: ADD in flight
            (10 * MIN, false, MIN, false),    // absent, but not for the grace
            (10 * MIN, false, 5 * MIN, true), // exactly the grace
            (5 * MIN, false, 5 * MIN, true),  // lease exactly the grace old
        ];
        for (i, (age, listed, gap, want)) in rows.into_iter().enumerate() {
            let l = lease("c1", pod("shop", "web-0", "u1"), age);
            let sb = if listed {
                cri(&["c1"])
            } else {
                cri(&["other"])
            };
            let p = twice(SourceKind::Cri, &sb, &[l], &[link("c1")], gap);
            let expect: Vec<&str> = if want { vec!["c1"] } else { vec![] };
            assert_eq!(cids(&p), expect, "row {i}");
            assert_eq!(
                link_cids(&p),
                expect,
                "row {i}: the link goes with its lease"
            );
        }
    }

    #[test]
    fn kube_matches_namespace_name_and_uid() {
        let old = 10 * MIN;
        let sb = kube(&[("shop", "web-0", "u2"), ("shop", "web-1", "u1")]);
        let leases = [
            lease("a", pod("shop", "web-0", "u1"), old), // re-created: other UID
            lease("b", pod("shop", "web-1", "u1"), old), // live
            lease("c", pod("shop", "web-2", "u1"), old), // deleted
            lease("d", pod("", "", ""), old),            // no pod identity: cannot judge
            lease("e", pod("shop", "web-1", ""), old),   // no UID: the name decides
            lease("f", pod("other", "web-1", "u1"), old), // same name, other namespace
        ];
        let p = twice(SourceKind::Kube, &sb, &leases, &[], 6 * MIN);
        assert_eq!(cids(&p), vec!["a", "c", "f"]);
    }

    #[test]
    fn absence_must_be_consecutive_and_listing_failures_reset_it() {
        let l = [lease("c1", pod("shop", "web-0", "u1"), 10 * MIN)];
        let gone = cri(&[]);
        let live = cri(&["c1"]);
        let mut t = Tracker::new(SourceKind::Cri, GRACE);
        assert!(t
            .pass(&gone, &l, &[], Duration::ZERO, WALL)
            .leases
            .is_empty());
        // Back in between: the absence starts over.
        assert!(t.pass(&live, &l, &[], 3 * MIN, WALL).leases.is_empty());
        assert!(t.pass(&gone, &l, &[], 6 * MIN, WALL).leases.is_empty());
        assert!(t.pass(&gone, &l, &[], 10 * MIN, WALL).leases.is_empty());
        // A failed listing is no evidence.
        t.unavailable();
        assert!(t.pass(&gone, &l, &[], 12 * MIN, WALL).leases.is_empty());
        assert!(t.pass(&gone, &l, &[], 16 * MIN, WALL).leases.is_empty());
        assert_eq!(cids(&t.pass(&gone, &l, &[], 17 * MIN, WALL)), vec!["c1"]);
    }

    #[test]
    fn leftover_links_without_a_lease() {
        let l = [lease("c1", pod("shop", "web-0", "u1"), 10 * MIN)];
        let links = [link("c1"), link("c2"), link("c3")];
        // CRI: c2's sandbox is live (its lease may be on its way), c3's gone.
        let p = twice(SourceKind::Cri, &cri(&["c1", "c2"]), &l, &links, 6 * MIN);
        assert!(p.leases.is_empty());
        assert_eq!(link_cids(&p), vec!["c3"]);
        // Kubernetes: no lease is the evidence; c1's link stays with its
        // live lease.
        let sb = kube(&[("shop", "web-0", "u1")]);
        let p = twice(SourceKind::Kube, &sb, &l, &links, 6 * MIN);
        assert_eq!(link_cids(&p), vec!["c2", "c3"]);
        // Not for the grace yet: nothing.
        let p = twice(SourceKind::Kube, &sb, &l, &links, MIN);
        assert!(p.links.is_empty());
    }
}
