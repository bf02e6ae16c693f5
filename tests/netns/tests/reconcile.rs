//! The leak reconciler in the lab: real etcd, netmaster, ipamd and the plugin binary; the
//! node's runtime is a fake CRI runtime on a unix socket that lists the sandboxes the test
//! says are live (`ListPodSandbox` only, as ipamd calls it). Pods whose DEL was lost are
//! reclaimed after the grace — their lease, and their node veth when it outlived the pod's
//! namespace or CNI GC — while a live pod and a pod whose ADD is young are left alone.

mod observe_common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use observe_common::{count, ipamd, poll};
use rackline_lab::{Cmd, Lab, Pod};
use rackline_netlink::owner::host_veth;
use rackline_proto::cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use rackline_proto::cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox};
use serde_json::json;

/// Short enough for a test, long enough that "young" is measurable.
const GRACE_SECS: u64 = 10;

/// The sandboxes the fake runtime lists.
#[derive(Clone, Default)]
struct Live(Arc<Mutex<HashSet<String>>>);

#[tonic::async_trait]
impl RuntimeService for Live {
    async fn list_pod_sandbox(
        &self,
        _: tonic::Request<ListPodSandboxRequest>,
    ) -> Result<tonic::Response<ListPodSandboxResponse>, tonic::Status> {
        let items = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|id| PodSandbox {
                id: id.clone(),
                created_at: 1,
                ..Default::default()
            })
            .collect();
        Ok(tonic::Response::new(ListPodSandboxResponse { items }))
    }
}

impl Live {
    fn add(&self, pod: &Pod) {
        self.0.lock().unwrap().insert(pod.container_id.clone());
    }
}

/// Serves the fake runtime on `socket` from a thread of its own (the lab is synchronous).
fn serve(live: Live, socket: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let listener = rt.block_on(async { tokio::net::UnixListener::bind(socket) })?;
    std::thread::spawn(move || {
        rt.block_on(
            tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(live))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        )
    });
    Ok(())
}

fn node_veth(lab: &Lab, pod: &Pod) -> Result<bool> {
    Ok(lab
        .link(lab.node(pod.node), &host_veth(&pod.container_id, "eth0"))?
        .is_some())
}

fn leased(lab: &Lab, pod: &Pod) -> Result<bool> {
    Ok(!lab.leases_of(&pod.container_id)?.is_empty())
}

#[test]
fn reclaims_lost_dels_after_the_grace_and_never_a_live_or_young_pod() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("cri.sock");
    let live = Live::default();
    serve(live.clone(), &socket)?;
    let grace = GRACE_SECS.to_string();
    let socket_arg = socket.display().to_string();
    rackline_lab::Lab::builder()
        .nodes(1)
        .ipamd_args(&[
            "--reconcile-interval-secs",
            "1",
            "--reconcile-grace-secs",
            &grace,
            "--cri-socket",
            &socket_arg,
        ])
        .run(|lab| {
            // Nothing below is older than this: no reclaim may come before t0 + grace.
            let t0 = Instant::now();
            // A live pod, listed by the runtime throughout.
            let running = lab.add_pod(1, "running")?;
            lab.cni_add(&running)?;
            live.add(&running);
            // Its DEL was lost and its namespace is gone: the kernel took the veth pair, the
            // lease stays.
            let gone = lab.add_pod(1, "gone")?;
            lab.cni_add(&gone)?;
            lab.delete_pod_netns(&gone)?;
            // Its DEL was lost and its namespace outlived it (a leaked bind mount): lease and
            // node veth stay.
            let held = lab.add_pod(1, "held")?;
            lab.cni_add(&held)?;
            // CNI GC freed its lease but not its links.
            let collected = lab.add_pod(1, "collected")?;
            lab.cni_add(&collected)?;
            let valid: Vec<_> = [&running, &gone, &held]
                .iter()
                .map(|p| json!({"containerID": p.container_id, "ifname": "eth0"}))
                .collect();
            lab.cni_node(1, Cmd::Gc)
                .set("cni.dev/valid-attachments", json!(valid))
                .run()?
                .ok()?;
            ensure!(!leased(lab, &collected)? && node_veth(lab, &collected)?);
            ensure!(leased(lab, &gone)? && !node_veth(lab, &gone)?);
            ensure!(leased(lab, &held)? && node_veth(lab, &held)?);

            // Half a grace later a new pod's ADD: its sandbox is not listed yet (the runtime
            // lists it only once the ADD returns), and its lease is young.
            std::thread::sleep(Duration::from_secs(GRACE_SECS / 2));
            let young = lab.add_pod(1, "young")?;
            lab.cni_add(&young)?;

            poll(
                Duration::from_secs(GRACE_SECS * 4),
                "the leaked leases and node veths are reclaimed",
                || {
                    Ok((!leased(lab, &gone)?
                        && !leased(lab, &held)?
                        && !node_veth(lab, &held)?
                        && !node_veth(lab, &collected)?)
                    .then_some(()))
                },
            )?;
            let took = t0.elapsed();
            ensure!(
                took >= Duration::from_secs(GRACE_SECS),
                "reclaimed after {took:?}, before the grace of {GRACE_SECS} s"
            );
            ensure!(
                leased(lab, &running)? && node_veth(lab, &running)?,
                "the live pod keeps its lease and veth"
            );
            ensure!(
                leased(lab, &young)? && node_veth(lab, &young)?,
                "the young pod keeps its lease and veth"
            );
            let m = ipamd(lab, 1)?;
            ensure!(
                count(
                    &m,
                    "rackline_ipamd_reclaims_total",
                    &[("reason", "reconcile")]
                ) == 2.0,
                "two leases reclaimed by the reconciler"
            );
            ensure!(
                count(&m, "rackline_ipamd_reconcile_links_deleted_total", &[]) == 2.0,
                "two node veths deleted"
            );
            ensure!(
                lab.logs(400)
                    .contains("reclaimed the lease of a pod that is gone"),
                "each reclaim is logged"
            );

            // The runtime answers the young pod's sandbox; the normal teardown follows.
            live.add(&young);
            for p in [&running, &young] {
                lab.cni_del(p)?;
                lab.delete_pod_netns(p)?;
            }
            lab.delete_pod_netns(&held)?;
            lab.delete_pod_netns(&collected)?;
            let report = lab.check_invariants().context("invariants")?;
            ensure!(report.ok(), "invariants broken: {report}");
            Ok(())
        })
}

#[test]
fn an_unreachable_runtime_reclaims_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("absent.sock");
    let socket_arg = socket.display().to_string();
    rackline_lab::Lab::builder()
        .nodes(1)
        .ipamd_args(&[
            "--reconcile-interval-secs",
            "1",
            "--reconcile-grace-secs",
            "1",
            "--cri-socket",
            &socket_arg,
        ])
        .run(|lab| {
            let lost = lab.add_pod(1, "lost")?;
            lab.cni_add(&lost)?;
            std::thread::sleep(Duration::from_secs(5));
            ensure!(
                leased(lab, &lost)? && node_veth(lab, &lost)?,
                "nothing is reclaimed while the sandboxes cannot be listed"
            );
            let m = ipamd(lab, 1)?;
            ensure!(
                count(
                    &m,
                    "rackline_ipamd_reconcile_passes_total",
                    &[("source", "cri"), ("result", "unavailable")]
                ) >= 3.0,
                "the failed passes are counted"
            );
            lab.cni_del(&lost)?;
            lab.delete_pod_netns(&lost)
        })
}
