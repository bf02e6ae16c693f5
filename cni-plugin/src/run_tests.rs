//! The whole plugin in-process through [`crate::run_with`], without root:
//! raw environment and stdin in, CNI JSON out, over a fake datapath (ADD's
//! steps, `datapath::attach`, on the fakes of `links::fake` and
//! `podside::fake`) and a fake ipamd on a unix socket. What is proven: ADD, CHECK and DEL in sequence; a
//! datapath failure rolls back every link and releases the fresh lease;
//! DEL is idempotent.

use std::ffi::OsString;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackline_netlink::Netns;
use serde_json::{json, Value};

use crate::datapath::{attach, AddPlan, Added, PodSide};
use crate::dataplane::Datapath;
use crate::env::Attachment;
use crate::error::CniError;
use crate::fake_ipamd::{serve, Answer, Seen};
use crate::links::fake::{self, FakeNet, Side};
use crate::owner::Owner;
use crate::podside::fake::FakeSysctls;
use crate::result::CniResult;
use crate::{run_with, teardown, verify, Invocation};

const UPLINK: u32 = 2;

/// ADD's steps on the fakes (links, address, routes, the node's /32); DEL's
/// link removal and CHECK's comparison on the same fake namespaces.
struct FakeDatapath {
    node: FakeNet,
    pod: FakeNet,
    calls: Vec<&'static str>,
}

impl FakeDatapath {
    fn new() -> Self {
        let (node, pod) = fake::pair();
        let mut up = fake::link("uplink", None, 0, None);
        up.index = UPLINK;
        node.world.borrow_mut().add_link(Side::Node, up);
        Self {
            node,
            pod,
            calls: Vec::new(),
        }
    }
}

impl Datapath for FakeDatapath {
    fn open_pod_netns(&mut self, _: &Path) -> Result<(), CniError> {
        self.calls.push("open");
        Ok(())
    }

    fn add(&mut self, plan: &AddPlan) -> Result<Added, CniError> {
        self.calls.push("add");
        // Any handle sends the fake's links to the pod side.
        let ns = Netns::current().expect("the test's own netns handle");
        let mut sysctls = FakeSysctls(self.node.world.clone());
        let pod = PodSide {
            nl: &mut self.pod,
            ns: Some(&ns),
            sysctls: &mut sysctls,
            arp: None,
            filter: None,
            arp_notify: None,
        };
        attach(&mut self.node, pod, plan)
    }

    fn describe(&mut self, _: &AddPlan) -> Result<CniResult, CniError> {
        Err(CniError::datapath("not answered from the fake"))
    }

    fn check(&mut self, plan: &AddPlan, prev_mac: Option<&str>) -> Result<(), CniError> {
        self.calls.push("check");
        let (_, hv) = verify::check_links(plan, prev_mac, &mut self.pod, &mut self.node)?;
        verify::check_node_route(plan, &mut self.node, &hv)
    }

    fn del(
        &mut self,
        att: &Attachment,
        _: Option<&Path>,
        unaddressed: &mut dyn FnMut(),
    ) -> Result<(), CniError> {
        self.calls.push("del");
        let owner = Owner::new(att);
        teardown::remove_pod_links(&mut self.pod, &mut self.node, &owner, unaddressed)?;
        teardown::remove_node_veth(&mut self.node, &owner)
    }
}

struct Lab {
    dir: tempfile::TempDir,
    seen: Arc<Mutex<Seen>>,
    dp: FakeDatapath,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let seen = serve(
            dir.path().join("ipamd.sock"),
            Duration::ZERO,
            Answer::lease(),
        );
        Self {
            dir,
            seen,
            dp: FakeDatapath::new(),
        }
    }

    /// Runs one verb; (exit code, stdout as JSON if any).
    fn run(&mut self, cmd: &str, prev: Option<&Value>) -> (i32, Option<Value>) {
        let _turn = crate::steps::TEST_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut conf = json!({
            "cniVersion": "1.1.0",
            "name": "prod",
            "type": "rackline",
            "ipamdSocket": self.dir.path().join("ipamd.sock"),
            "runtimeDir": self.dir.path().join("run"),
            "timeoutMs": 2000,
        });
        if let Some(p) = prev {
            conf["prevResult"] = p.clone();
        }
        let env = [
            ("CNI_COMMAND", cmd),
            ("CNI_CONTAINERID", "c0ffee"),
            ("CNI_NETNS", "/var/run/netns/fake"),
            ("CNI_IFNAME", "eth0"),
        ]
        .iter()
        .map(|(k, v)| (OsString::from(k), OsString::from(v)))
        .collect();
        let inv = Invocation {
            env,
            stdin: serde_json::to_vec(&conf).unwrap(),
            stdin_problem: None,
        };
        let mut out = Vec::new();
        let code = run_with(&inv, &mut out, &mut self.dp);
        let text = String::from_utf8(out).unwrap();
        (code, serde_json::from_str(text.trim()).ok())
    }
}

#[test]
fn add_check_del_in_process_without_root() {
    let mut lab = Lab::new();
    let (code, result) = lab.run("ADD", None);
    let result = result.expect("ADD answers");
    assert_eq!(code, 0, "{result}");
    assert_eq!(result["ips"][0]["address"], "10.0.0.5/24", "{result}");
    assert_eq!(result["interfaces"][0]["name"], "eth0", "{result}");
    assert_eq!(lab.dp.pod.names(), ["eth0", "rl-eth0"]);

    let (code, out) = lab.run("CHECK", Some(&result));
    assert_eq!((code, out), (0, None));

    let (code, out) = lab.run("DEL", Some(&result));
    assert_eq!((code, out), (0, None));
    assert!(lab.dp.pod.names().is_empty());
    assert_eq!(lab.dp.node.names(), ["uplink"]);
    // A second DEL (the runtime retries) finds nothing and succeeds.
    let (code, _) = lab.run("DEL", Some(&result));
    assert_eq!(code, 0);
    let seen = lab.seen.lock().unwrap();
    assert_eq!(seen.allocate.len(), 1);
    assert_eq!(seen.release.len(), 2);
    assert!(seen.release.iter().all(|r| !r.rollback));
    assert_eq!(lab.dp.calls, ["open", "add", "open", "check", "del", "del"]);
}

#[test]
fn check_after_the_pod_lost_its_address_is_code_103() {
    let mut lab = Lab::new();
    let (_, result) = lab.run("ADD", None);
    lab.dp.node.world.borrow_mut().addrs.clear();
    let (code, out) = lab.run("CHECK", result.as_ref());
    let out = out.expect("an error document");
    assert_eq!((code, out["code"].as_u64()), (1, Some(103)), "{out}");
    assert!(
        out["details"].as_str().unwrap().contains("does not carry"),
        "{out}"
    );
}

#[test]
fn a_datapath_failure_rolls_back_every_link_and_releases_the_lease() {
    // How many netlink calls a clean ADD makes, then fail each in turn.
    let total = {
        let mut lab = Lab::new();
        assert_eq!(lab.run("ADD", None).0, 0);
        let n = lab.dp.node.world.borrow().calls.len();
        n
    };
    for n in 1..=total {
        let mut lab = Lab::new();
        lab.dp.node.world.borrow_mut().fail_at = Some(n);
        let (code, out) = lab.run("ADD", None);
        let out = out.expect("an error document");
        assert_eq!(
            (code, out["code"].as_u64()),
            (1, Some(100)),
            "call {n}: {out}"
        );
        assert!(
            lab.dp.pod.names().is_empty(),
            "call {n}: {:?}",
            lab.dp.pod.names()
        );
        assert_eq!(lab.dp.node.names(), ["uplink"], "call {n}");
        let seen = lab.seen.lock().unwrap();
        assert_eq!(
            seen.release.len(),
            1,
            "call {n}: the fresh lease is released"
        );
        assert!(seen.release[0].rollback, "call {n}");
    }
}
