//! The chaos soak's short version (`rackline-bench soak` runs the long one): two minutes of
//! ADD/DEL churn of sticky and non-sticky pods on a three-member etcd cluster, two netmaster
//! replicas and six ipamds in two racks, with every kind of fault injected at least once (a
//! node removed for good among them). Every ipamd runs its leak reconciler against the
//! harness's own CRI runtime. No address may be held by two live pods, etcd's invariants must
//! hold throughout, and after healing, deleting every pod and letting the reconcilers run no
//! lease, no link and no attachment with two leases may be left, and no sticky pod may have
//! lost its address.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::time::Duration;

use anyhow::{ensure, Result};
use rackline_lab::bench::soak::{self, Fault, SoakOptions};

#[test]
fn two_minutes_of_churn_under_faults_never_duplicate_leak_or_lose_a_sticky_address() -> Result<()> {
    let secs = std::env::var("RACKLINE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let report = soak::run(&SoakOptions {
        duration: Duration::from_secs(secs),
        ..SoakOptions::default()
    })?;
    eprintln!("{}", report.markdown());
    ensure!(report.safe(), "the soak broke a safety invariant");
    ensure!(
        report.leaked_leases == 0,
        "{} lease(s) left after reconciliation: {:?}",
        report.leaked_leases,
        report.leaked_detail
    );
    ensure!(
        report.leaked_links.is_empty(),
        "links left after reconciliation: {:?}",
        report.leaked_links
    );
    ensure!(
        report.double_leases.is_empty(),
        "attachments with two leases after reconciliation: {:?}",
        report.double_leases
    );
    ensure!(
        report.allocations >= 100,
        "only {} allocations",
        report.allocations
    );
    ensure!(report.sticky_kept > 0, "no sticky pod came back");
    for f in Fault::ALL {
        ensure!(
            report.faults.get(&f).copied().unwrap_or(0) > 0,
            "{f:?} never injected"
        );
    }
    ensure!(
        report.fault_errors.is_empty(),
        "faults that could not be injected or healed: {:?}",
        report.fault_errors
    );
    Ok(())
}
