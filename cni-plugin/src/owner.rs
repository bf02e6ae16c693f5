//! Which links belong to an attachment: the one rule every removal path
//! (DEL, a failed ADD's rollback, the stale-link cleanup of a repeated ADD)
//! and CHECK apply. Pure functions over what the kernel reports, so the rule
//! is unit-tested without root.
//!
//! A link is the attachment's when it carries the attachment's **mark**
//! (`names::owner_mark`, in the link's alias) AND has the kind and the device
//! group Rackline gives that role. A link carrying any other alias — another
//! pod's mark, an operator's description — is never ours, whatever its name.
//!
//! **Unmarked links** are the pods set up by versions before marks, and a
//! link caught between its creation and its marking (a crash in that
//! window): accepted only by name, kind and group, and — for the pod side —
//! by the veth peer relation: the pod veth's peer is the node veth whose name
//! is derived from this very container id and ifname, and that node veth's
//! peer is the pod veth. Only with that proof does the pod's macvlan (and its
//! ifb) count as this attachment's, so a second container's DEL in the same
//! namespace never takes the first one's `eth0`.

use rackline_netlink::LinkInfo;

use crate::env::Attachment;
use crate::names;

/// What a link is to an attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pod's macvlan (`CNI_IFNAME`).
    PodInterface,
    /// The pod end of the node veth (`rl-<ifname>`).
    PodVeth,
    /// The node end (`rl<12 hex>`).
    NodeVeth,
    /// The ingress shaper's ifb in the pod.
    Ifb,
}

impl Role {
    pub fn kind(self) -> &'static str {
        match self {
            Role::PodInterface => "macvlan",
            Role::PodVeth | Role::NodeVeth => "veth",
            Role::Ifb => "ifb",
        }
    }

    /// The pod-side role a link of this kind would have.
    pub fn in_pod(kind: Option<&str>) -> Option<Role> {
        match kind? {
            "macvlan" => Some(Role::PodInterface),
            "veth" => Some(Role::PodVeth),
            "ifb" => Some(Role::Ifb),
            _ => None,
        }
    }

    fn name(self, att: &Attachment) -> String {
        let ifname = att.ifname.as_str();
        match self {
            Role::PodInterface => ifname.to_owned(),
            Role::PodVeth => names::pod_veth(ifname),
            Role::NodeVeth => names::host_veth(att.container_id.as_str(), ifname),
            Role::Ifb => names::ifb(ifname),
        }
    }
}

/// How a link proved it is the attachment's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    Marked,
    /// No alias: name, kind, group (and the veth peer relation for the pod
    /// side).
    Unmarked,
}

/// The attachment's identity as its links carry it.
#[derive(Debug, Clone)]
pub struct Owner {
    pub mark: String,
    pub group: u32,
    att: Attachment,
}

impl Owner {
    pub fn new(att: &Attachment) -> Self {
        Self {
            mark: names::owner_mark(att.container_id.as_str(), att.ifname.as_str()),
            group: names::link_group(att.ifname.as_str()),
            att: att.clone(),
        }
    }

    pub fn attachment(&self) -> &Attachment {
        &self.att
    }

    /// The name Rackline gives `role`.
    pub fn name(&self, role: Role) -> String {
        role.name(&self.att)
    }

    /// Whether `link` is this attachment's `role`. `pod_proven`: the pod's
    /// unmarked veth passed [`Owner::pod_veth_pair`] (needed for unmarked
    /// pod-side links only).
    pub fn owns(&self, link: &LinkInfo, role: Role, pod_proven: bool) -> Option<Proof> {
        if link.kind.as_deref() != Some(role.kind()) {
            return None;
        }
        match &link.alias {
            Some(a) if *a == self.mark => (link.group == self.group).then_some(Proof::Marked),
            Some(_) => None,
            None => {
                if link.name != self.name(role) {
                    return None;
                }
                let ok = match role {
                    // Versions before marks left the node end in group 0.
                    Role::NodeVeth => link.group == 0 || link.group == self.group,
                    Role::PodVeth | Role::PodInterface | Role::Ifb => {
                        link.group == self.group && pod_proven
                    }
                };
                ok.then_some(Proof::Unmarked)
            }
        }
    }

    /// The veth peer relation that proves an unmarked pod veth is this
    /// attachment's: `pod_veth` (in the pod) and `node_veth` (the link with
    /// index `pod_veth.parent_index` in the node) are each other's peers, and
    /// the node end has the name derived from this container id.
    pub fn pod_veth_pair(&self, pod_veth: &LinkInfo, node_veth: Option<&LinkInfo>) -> bool {
        let Some(node) = node_veth else {
            return false;
        };
        pod_veth.alias.is_none()
            && pod_veth.kind.as_deref() == Some("veth")
            && pod_veth.name == self.name(Role::PodVeth)
            && pod_veth.group == self.group
            && pod_veth.parent_index == Some(node.index)
            && node.parent_index == Some(pod_veth.index)
            && self.owns(node, Role::NodeVeth, false).is_some()
    }

    /// The links of `links` (one pod namespace) that are this attachment's,
    /// with their role.
    pub fn pod_links<'a>(
        &self,
        links: &'a [LinkInfo],
        pod_proven: bool,
    ) -> Vec<(&'a LinkInfo, Role)> {
        links
            .iter()
            .filter_map(|l| {
                let role = Role::in_pod(l.kind.as_deref())?;
                self.owns(l, role, pod_proven).map(|_| (l, role))
            })
            .collect()
    }

    /// Whether deleting the attachment's device group in that namespace
    /// removes only its own links (then one kernel batch is enough).
    pub fn group_is_all_ours(&self, links: &[LinkInfo], ours: &[(&LinkInfo, Role)]) -> bool {
        !ours.is_empty()
            && links
                .iter()
                .filter(|l| l.group == self.group)
                .all(|l| ours.iter().any(|(o, _)| o.index == l.index))
    }
}

pub use rackline_netlink::owner::is_rackline_node_veth;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{ContainerId, IfName};

    fn att(id: &str, ifname: &str) -> Attachment {
        Attachment {
            container_id: ContainerId::parse(id).unwrap(),
            ifname: IfName::parse(ifname).unwrap(),
        }
    }

    fn link(index: u32, name: &str, kind: &str, group: u32, alias: Option<&str>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            kind: Some(kind.into()),
            mtu: 1500,
            mac: None,
            up: true,
            parent_index: None,
            vlan_id: None,
            vlan_protocol: None,
            macvlan_mode: None,
            group,
            alias: alias.map(str::to_owned),
        }
    }

    #[test]
    fn marked_links_need_mark_kind_and_group() {
        let o = Owner::new(&att("c1", "eth0"));
        let g = o.group;
        let m = o.mark.clone();
        let mv = link(5, "eth0", "macvlan", g, Some(&m));
        assert_eq!(o.owns(&mv, Role::PodInterface, false), Some(Proof::Marked));
        // Renamed, still ours: the mark is the proof.
        let renamed = link(5, "other", "macvlan", g, Some(&m));
        assert_eq!(
            o.owns(&renamed, Role::PodInterface, false),
            Some(Proof::Marked)
        );
        for bad in [
            link(5, "eth0", "veth", g, Some(&m)),
            link(5, "eth0", "macvlan", 0, Some(&m)),
            link(5, "eth0", "macvlan", g, Some("rackline:c2:eth0")),
            link(5, "eth0", "macvlan", g, Some("uplink to rack 3")),
        ] {
            assert_eq!(o.owns(&bad, Role::PodInterface, true), None, "{bad:?}");
        }
    }

    #[test]
    fn another_containers_links_are_never_ours() {
        let a = Owner::new(&att("ca", "eth0"));
        let b = Owner::new(&att("cb", "eth0"));
        // Same ifname, same group number, same names in the pod.
        assert_eq!(a.group, b.group);
        let links = vec![
            link(2, "eth0", "macvlan", a.group, Some(&a.mark)),
            link(3, "rl-eth0", "veth", a.group, Some(&a.mark)),
        ];
        assert!(b.pod_links(&links, true).is_empty());
        assert_eq!(a.pod_links(&links, false).len(), 2);
        assert!(a.group_is_all_ours(&links, &a.pod_links(&links, false)));
        assert!(!b.group_is_all_ours(&links, &b.pod_links(&links, false)));
    }

    #[test]
    fn unmarked_pod_links_need_the_veth_peer_proof() {
        let o = Owner::new(&att("c1", "eth0"));
        let g = o.group;
        let mut pv = link(3, "rl-eth0", "veth", g, None);
        let mut nv = link(40, &names::host_veth("c1", "eth0"), "veth", 0, None);
        pv.parent_index = Some(40);
        nv.parent_index = Some(3);
        assert!(o.pod_veth_pair(&pv, Some(&nv)));
        let mv = link(2, "eth0", "macvlan", g, None);
        assert_eq!(o.owns(&mv, Role::PodInterface, true), Some(Proof::Unmarked));
        assert_eq!(o.owns(&mv, Role::PodInterface, false), None);
        // Another container's node veth is no proof for c1.
        let other = Owner::new(&att("c2", "eth0"));
        assert!(!other.pod_veth_pair(&pv, Some(&nv)));
        // Nor is a peer that does not point back, or a missing one.
        let mut wrong = nv.clone();
        wrong.parent_index = Some(99);
        assert!(!o.pod_veth_pair(&pv, Some(&wrong)));
        assert!(!o.pod_veth_pair(&pv, None));
        // A stranger named eth0 of another kind is never ours.
        let stranger = link(2, "eth0", "veth", g, None);
        assert_eq!(o.owns(&stranger, Role::PodInterface, true), None);
        // An unmarked link outside the group is not ours either.
        let loose = link(2, "eth0", "macvlan", 0, None);
        assert_eq!(o.owns(&loose, Role::PodInterface, true), None);
    }

    #[test]
    fn node_veth_rules() {
        let o = Owner::new(&att("c1", "eth0"));
        let name = names::host_veth("c1", "eth0");
        assert!(o
            .owns(&link(7, &name, "veth", 0, None), Role::NodeVeth, false)
            .is_some());
        assert!(o
            .owns(
                &link(7, &name, "veth", o.group, Some(&o.mark)),
                Role::NodeVeth,
                false
            )
            .is_some());
        // A stranger with our name but another kind or a foreign alias.
        assert!(o
            .owns(&link(7, &name, "bridge", 0, None), Role::NodeVeth, false)
            .is_none());
        assert!(o
            .owns(
                &link(7, &name, "veth", 0, Some("mine")),
                Role::NodeVeth,
                false
            )
            .is_none());
        assert!(is_rackline_node_veth(&link(7, &name, "veth", 0, None)));
        assert!(is_rackline_node_veth(&link(
            7,
            "x",
            "veth",
            9,
            Some("rackline:z:eth0")
        )));
        assert!(!is_rackline_node_veth(&link(7, "uplink0", "veth", 0, None)));
        assert!(!is_rackline_node_veth(&link(7, &name, "macvlan", 0, None)));
    }

    #[test]
    fn a_stranger_in_the_group_means_link_by_link() {
        let o = Owner::new(&att("c1", "eth0"));
        let links = vec![
            link(2, "eth0", "macvlan", o.group, Some(&o.mark)),
            link(3, "rl-eth0", "veth", o.group, Some(&o.mark)),
            link(4, "vpn0", "veth", o.group, None),
        ];
        let ours = o.pod_links(&links, false);
        assert_eq!(ours.len(), 2);
        assert!(!o.group_is_all_ours(&links, &ours));
    }
}
