//! Overlapping creates racing inside one process, through separate etcd
//! connections: far more contention than the CLI race in admin_cli.rs can
//! produce. A guard read separate from the overlap check's listing once let
//! about one pair in four both succeed; this is the regression test.

mod common;

use std::time::Duration;

use common::{Etcd, PREFIX};
use rackline_model::NetworkSpec;
use rackline_netmaster::{AdminError, AdminService};

fn spec(name: String, subnet: String, gateway: String) -> NetworkSpec {
    rackline_testkit::fixtures::network(&name, &subnet, &gateway)
}

#[test]
fn overlapping_creates_never_both_win() {
    let etcd = Etcd::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    let endpoints = vec![etcd.endpoint()];
    rt.block_on(async {
        let mut admins = Vec::new();
        for _ in 0..4 {
            admins.push(
                AdminService::connect(&endpoints, PREFIX, Duration::from_secs(2))
                    .await
                    .expect("connect"),
            );
        }
        let rounds = 40;
        for r in 0..rounds {
            // /16 ⊃ /20 ⊃ /24, and a /24 elsewhere in the /16.
            let specs = [
                spec(
                    format!("a{r}"),
                    format!("10.{r}.0.0/16"),
                    format!("10.{r}.0.1"),
                ),
                spec(
                    format!("b{r}"),
                    format!("10.{r}.16.0/20"),
                    format!("10.{r}.16.1"),
                ),
                spec(
                    format!("c{r}"),
                    format!("10.{r}.17.0/24"),
                    format!("10.{r}.17.1"),
                ),
                spec(
                    format!("d{r}"),
                    format!("10.{r}.200.0/24"),
                    format!("10.{r}.200.1"),
                ),
            ];
            let results = create_all(&admins, &specs).await;
            let mut won = Vec::new();
            for (s, res) in specs.iter().zip(results) {
                match res {
                    Ok(_) => won.push(s.clone()),
                    Err(AdminError::Invalid(e)) => {
                        assert!(e.to_string().contains("overlaps"), "{e}")
                    }
                    Err(e) => panic!("unexpected error for {}: {e}", s.name),
                }
            }
            // Every pair overlaps except c/d; at most those two may coexist,
            // and at least one create must have gone through.
            assert!(!won.is_empty(), "round {r}: nobody won");
            for (i, a) in won.iter().enumerate() {
                for b in &won[i + 1..] {
                    assert!(
                        !a.subnet.overlaps(b.subnet),
                        "round {r}: {} {} and {} {} both created",
                        a.name,
                        a.subnet,
                        b.name,
                        b.subnet
                    );
                }
            }
        }
    });
}

/// Runs the four creates concurrently, each on its own connection.
async fn create_all(
    admins: &[AdminService],
    specs: &[NetworkSpec; 4],
) -> Vec<Result<rackline_netmaster::NetworkView, AdminError>> {
    let mut handles = Vec::new();
    for (admin, s) in admins.iter().zip(specs.iter()) {
        let (admin, s) = (admin.clone(), s.clone());
        handles.push(tokio::spawn(async move {
            admin.networks().create_network(s).await
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("create task"));
    }
    out
}
