//! The datapath as the verbs (`commands.rs`) see it: one trait, so `run`
//! can be driven in-process with a fake one. [`Kernel`] is the real one:
//! netlink, nftables, sysctls and ARP in the node and the pod namespace.

use std::path::Path;

use rackline_netlink::Netns;

use crate::datapath::{self, AddPlan, Added};
use crate::env::Attachment;
use crate::error::CniError;
use crate::result::CniResult;
use crate::{teardown, verify};

pub trait Datapath {
    /// Opens CNI_NETNS for ADD and CHECK and validates it (codes 3, 4);
    /// ADD's attempts then work in it.
    fn open_pod_netns(&mut self, path: &Path) -> Result<(), CniError>;
    /// Builds the attachment `plan` describes in the namespace opened
    /// last; everything is rolled back unless it ends configured.
    fn add(&mut self, plan: &AddPlan) -> Result<Added, CniError>;
    /// The result of an attachment that is already there and intact.
    fn describe(&mut self, plan: &AddPlan) -> Result<CniResult, CniError>;
    /// CHECK: the attachment, its routes, shaping and packet filter are as
    /// ADD left them (code 103 otherwise).
    fn check(&mut self, plan: &AddPlan, prev_mac: Option<&str>) -> Result<(), CniError>;
    /// Removes the attachment's links (`teardown::del`).
    fn del(
        &mut self,
        att: &Attachment,
        netns: Option<&Path>,
        unaddressed: &mut dyn FnMut(),
    ) -> Result<(), CniError>;
}

/// The real datapath.
#[derive(Default)]
pub struct Kernel {
    pod_ns: Option<Netns>,
}

impl Datapath for Kernel {
    fn open_pod_netns(&mut self, path: &Path) -> Result<(), CniError> {
        self.pod_ns = Some(datapath::open_pod_netns(path)?);
        Ok(())
    }

    fn add(&mut self, plan: &AddPlan) -> Result<Added, CniError> {
        let ns = match &self.pod_ns {
            Some(ns) => ns,
            None => self
                .pod_ns
                .insert(datapath::open_pod_netns(&plan.netns_path)?),
        };
        datapath::add(plan, ns)
    }

    fn describe(&mut self, plan: &AddPlan) -> Result<CniResult, CniError> {
        verify::describe(plan)
    }

    fn check(&mut self, plan: &AddPlan, prev_mac: Option<&str>) -> Result<(), CniError> {
        verify::check(plan, prev_mac)?;
        check_filter(plan)
    }

    fn del(
        &mut self,
        att: &Attachment,
        netns: Option<&Path>,
        unaddressed: &mut dyn FnMut(),
    ) -> Result<(), CniError> {
        teardown::del(att, netns, unaddressed)
    }
}

/// The attachment's packet filter table is what its policy programs now
/// (none when the policy needs none).
fn check_filter(plan: &AddPlan) -> Result<(), CniError> {
    let ns = datapath::open_pod_netns(&plan.netns_path)?;
    let want = plan
        .filter
        .clone()
        .unwrap_or_else(rackline_model::filter::PodFilter::allow_all);
    let verdict = rackline_nft::PodTable::open(&ns, plan.ifname(), plan.address.ip())
        .and_then(|mut t| t.verify(&want))
        .map_err(|e| CniError::datapath(format!("reading the pod packet filter: {e}")))?;
    verdict.map_err(|m| CniError::FilterDiffers(m.to_string()))
}
