//! DEL's half of the datapath: removes an attachment's links, and only
//! links that provably are that attachment's (`owner.rs`). Idempotent: a
//! missing netns, missing links and an empty CNI_NETNS all succeed, and a
//! stranger under one of our names is left alone.
//!
//! Link deletion waits for an RCU grace period (~20 ms) per kernel batch, so
//! when the attachment's device group in the pod holds nothing but its own
//! links, they are deleted as the group in one batch: macvlan, ifb, pod veth
//! and (through veth_dellink) the node end. Otherwise link by link.

use std::path::Path;

use rackline_netlink::{Netlink, NetlinkError, Netns, RuleSpec};
use tracing::{debug, warn};

use crate::datapath::{dp, is_own};
use crate::env::Attachment;
use crate::error::CniError;
use crate::links::LinkOps;
use crate::owner::{Owner, Role};
use crate::routes::host_net;

/// Opens CNI_NETNS for DEL: `None` when it no longer exists, and when it is
/// the plugin's own namespace (the node's): no pod links can be there, and
/// nothing of the node's is touched. A path that is not a network namespace
/// is an invalid environment (code 4): the real pod namespace is then
/// unknown, so nothing is removed and the lease is kept.
fn open_for_del(path: &Path) -> Result<Option<Netns>, CniError> {
    match Netns::open(path) {
        Ok(ns) if is_own(&ns, path)? => {
            warn!(netns = %path.display(), "CNI_NETNS is the plugin's own namespace; no pod links to remove there");
            Ok(None)
        }
        Ok(ns) => Ok(Some(ns)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(cause @ NetlinkError::NotANamespace { .. }) => Err(CniError::NotANetns {
            path: path.to_owned(),
            cause,
        }),
        Err(cause) => Err(CniError::NetnsOpen {
            path: path.to_owned(),
            cause,
        }),
    }
}

/// Removes the attachment's links. `unaddressed` is called once the pod no
/// longer carries the attachment's address — its IPv4 addresses are deleted
/// from its macvlan, before the slow link deletion (one RCU grace period per
/// batch) — so the caller may release the lease while the links go. It is not
/// called when removing the addresses failed, nor when there was nothing in
/// the pod to remove (the caller then releases after this returns).
pub fn del(
    att: &Attachment,
    netns: Option<&Path>,
    unaddressed: &mut dyn FnMut(),
) -> Result<(), CniError> {
    let owner = Owner::new(att);
    let pod_ns = match netns {
        Some(path) => open_for_del(path)?,
        None => None,
    };
    let mut host = {
        let _s = crate::step!("netlink_open");
        Netlink::new().map_err(|e| dp("opening netlink", e))?
    };
    if let Some(ns) = &pod_ns {
        del_in_pod(ns, &owner, att.ifname.as_str(), &mut host, unaddressed)?;
    }
    let _s = crate::step!("node_veth_check");
    remove_node_veth(&mut host, &owner)
}

/// The node end is normally gone with its peer; it remains when the pod
/// netns is unknown (containerd's second DEL) or a partial ADD left it.
/// Removed only when it provably is the attachment's.
pub(crate) fn remove_node_veth(host: &mut dyn LinkOps, owner: &Owner) -> Result<(), CniError> {
    let name = owner.name(Role::NodeVeth);
    if let Some(l) = host
        .link_by_name(&name)
        .map_err(|e| dp("looking up veth", e))?
    {
        if owner.owns(&l, Role::NodeVeth, false).is_some() {
            ignore_missing(host.delete_link(l.index)).map_err(|e| dp("deleting veth", e))?;
        } else {
            warn!(%name, kind = ?l.kind, alias = ?l.alias, "a node link has this attachment's veth name but is not its; leaving it");
        }
    }
    Ok(())
}

/// The attachment's packet filter table goes with it (none: nothing to
/// do). A foreign table with our name is left alone, with a warning.
fn remove_filter(ns: &Netns, ifname: &str) -> Result<(), CniError> {
    // The address only scopes rules; removal looks the table up by name.
    let removed = rackline_nft::PodTable::open(ns, ifname, std::net::Ipv4Addr::UNSPECIFIED)
        .and_then(|mut t| t.remove());
    match removed {
        Ok(_) => Ok(()),
        Err(e @ rackline_nft::NftError::Foreign(..)) => {
            warn!("{e}");
            Ok(())
        }
        Err(e) => Err(CniError::datapath(format!(
            "removing the pod packet filter: {e}"
        ))),
    }
}

fn del_in_pod(
    ns: &Netns,
    owner: &Owner,
    att_ifname: &str,
    host: &mut Netlink,
    unaddressed: &mut dyn FnMut(),
) -> Result<(), CniError> {
    {
        let _s = crate::step!("pod_filter_remove");
        remove_filter(ns, att_ifname)?;
    }
    let step = crate::step!("pod_netlink_open");
    let mut pod = Netlink::in_netns(ns).map_err(|e| dp("opening netlink in the pod netns", e))?;
    drop(step);
    remove_pod_links(&mut pod, host, owner, unaddressed)
}

/// Removes the attachment's links in the pod (`pod`): only those it
/// provably owns (`owner.rs`), its source rules and addresses first.
pub(crate) fn remove_pod_links(
    pod: &mut dyn LinkOps,
    host: &mut dyn LinkOps,
    owner: &Owner,
    unaddressed: &mut dyn FnMut(),
) -> Result<(), CniError> {
    let step = crate::step!("pod_links_list");
    let links = pod.links().map_err(|e| dp("listing pod links", e))?;
    let proven = unmarked_pair_proven(&links, host, owner)?;
    let ours = owner.pod_links(&links, proven);
    drop(step);
    if ours.is_empty() {
        debug!("no link of this attachment in the pod netns");
        return Ok(());
    }
    {
        let _s = crate::step!("source_rules");
        del_source_rules(pod, owner, &ours)?;
    }
    let addressless = {
        let _s = crate::step!("addrs_delete");
        match del_addresses(pod, &ours) {
            Ok(()) => true,
            // The links' deletion removes them anyway; only the early
            // release is given up.
            Err(e) => {
                debug!("could not remove the pod's addresses first: {e}");
                false
            }
        }
    };
    // After the step is closed: the release it lets start is timed after it.
    if addressless {
        unaddressed();
    }
    let _s = crate::step!("links_delete");
    delete_links(pod, owner, &links, ours)
}

/// Unmarked links (pods set up before marks) are ours only with the veth
/// peer proof: the pod's unmarked veth and its node peer are the pair
/// derived from this attachment.
fn unmarked_pair_proven(
    links: &[rackline_netlink::LinkInfo],
    host: &mut dyn LinkOps,
    owner: &Owner,
) -> Result<bool, CniError> {
    let pv_name = owner.name(Role::PodVeth);
    let Some(pv) = links
        .iter()
        .find(|l| l.name == pv_name && l.alias.is_none())
    else {
        return Ok(false);
    };
    let node = match pv.parent_index {
        Some(i) => host
            .link_by_index(i)
            .map_err(|e| dp("looking up the pod veth's peer", e))?,
        None => None,
    };
    Ok(owner.pod_veth_pair(pv, node.as_ref()))
}

/// Deletes the attachment's pod links (`ours`): as one group batch when
/// the group holds nothing else, otherwise link by link, the veth last.
fn delete_links(
    pod: &mut dyn LinkOps,
    owner: &Owner,
    links: &[rackline_netlink::LinkInfo],
    mut ours: Vec<(&rackline_netlink::LinkInfo, Role)>,
) -> Result<(), CniError> {
    if owner.group_is_all_ours(links, &ours) {
        match pod.delete_group(owner.group) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => warn!("group delete failed, deleting links one by one: {e}"),
        }
    } else {
        debug!(
            "the attachment's group also holds links that are not its own; deleting link by link"
        );
    }
    // The veth last: deleting it takes the node end and its route along.
    ours.sort_by_key(|(_, role)| matches!(role, Role::PodVeth));
    for (l, role) in ours {
        ignore_missing(pod.delete_link(l.index))
            .map_err(|e| dp(&format!("deleting {} ({})", l.name, role.kind()), e))?;
    }
    Ok(())
}

/// The source rule an additional attachment added (`datapath::pod_routes`):
/// deleted when it names this attachment's table AND one of the addresses
/// on this attachment's own macvlan — a rule only matching the table number
/// could be another container's attachment of the same ifname.
fn del_source_rules(
    pod: &mut dyn LinkOps,
    owner: &Owner,
    ours: &[(&rackline_netlink::LinkInfo, Role)],
) -> Result<(), CniError> {
    let mut addrs = Vec::new();
    for (l, role) in ours {
        if *role == Role::PodInterface {
            let a = pod
                .addrs(Some(l.index))
                .map_err(|e| dp("listing the pod interface's addresses", e))?;
            addrs.extend(a.into_iter().map(|a| host_net(a.addr.ip())));
        }
    }
    if addrs.is_empty() {
        return Ok(());
    }
    let rules = pod.rules().map_err(|e| dp("listing pod rules", e))?;
    for r in rules {
        let Some(src) = r.src else { continue };
        if r.table != owner.group || !addrs.contains(&src) {
            continue;
        }
        let spec = RuleSpec {
            src,
            table: r.table,
            priority: r.priority,
        };
        ignore_missing(pod.del_rule(&spec)).map_err(|e| dp("deleting a source rule", e))?;
    }
    Ok(())
}

/// Deletes the IPv4 addresses of the attachment's macvlan(s). After this the
/// pod neither answers ARP for them nor sources packets from them (routes
/// with them as preferred source go with them); a deleted address costs no
/// RCU grace period, unlike a deleted link.
fn del_addresses(
    pod: &mut dyn LinkOps,
    ours: &[(&rackline_netlink::LinkInfo, Role)],
) -> Result<(), NetlinkError> {
    for (l, role) in ours {
        if *role != Role::PodInterface {
            continue;
        }
        for a in pod.addrs(Some(l.index))? {
            ignore_missing(pod.del_addr(l.index, a.addr))?;
        }
    }
    Ok(())
}

fn ignore_missing(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}
