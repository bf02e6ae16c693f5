//! Rackline ACLs end to end: racklinectl → netmaster → etcd → ipamd's watch → the Allocate
//! reply → the plugin programs the attachment's nftables table before the link exists; then
//! real packets (TCP connects and pings) from pods of both racks and from a plain host on rack
//! 1's TOR bridge, in both directions. The table is read back with `nft` inside the pod (an
//! independent reader), and a stranger's table in the same namespace must survive everything.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rackline_lab::{result_ipv4, Cidr4, Cmd, Lab, Pod};
use rackline_netlink::netns::{run_in_netns, Netns as NlNetns};

const HOST: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 40);
const TABLE: &str = "rackline-eth0";

fn ns_of(ns: &impl AsRef<rackline_lab::Netns>) -> Result<NlNetns> {
    Ok(NlNetns::open(&ns.as_ref().path())?)
}

/// A TCP listener inside `ns` (no accept needed: the kernel completes the handshake into the
/// backlog, which is all a connect test sees).
fn listen(ns: &impl AsRef<rackline_lab::Netns>, port: u16) -> Result<TcpListener> {
    Ok(run_in_netns(&ns_of(ns)?, || {
        TcpListener::bind(("0.0.0.0", port))
    })??)
}

/// Whether a TCP connect from `ns` to `to:port` completes within `wait`.
fn connects(
    ns: &impl AsRef<rackline_lab::Netns>,
    to: Ipv4Addr,
    port: u16,
    wait: Duration,
) -> Result<bool> {
    let addr = SocketAddr::from((to, port));
    Ok(run_in_netns(&ns_of(ns)?, || {
        TcpStream::connect_timeout(&addr, wait).is_ok()
    })?)
}

fn tables(lab: &Lab, pod: &Pod) -> Result<String> {
    Ok(lab
        .exec_in(pod, &["nft", "list", "tables"])?
        .check()?
        .stdout)
}

/// ADD `name`, retrying (DEL + ADD) until ipamd's watch has the ACL: the pod has its table.
fn add_filtered(lab: &Lab, node: usize, name: &str) -> Result<(Pod, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pod = lab.add_pod(node, name)?;
        lab.exec_in(&pod, &["nft", "add", "table", "inet", "stranger"])?
            .check()?;
        let result = lab.cni_add(&pod)?;
        if tables(lab, &pod)?.contains(TABLE) {
            return Ok((pod, result));
        }
        lab.cni_del(&pod)?;
        ensure!(
            Instant::now() < deadline,
            "{name} never got its filter table"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn acl_allows_and_denies_by_cidr_port_and_protocol_both_ways_and_follows_changes() -> Result<()> {
    Lab::builder().racks(2).nodes_per_rack(1).run(|lab| {
        let net1 = lab.network_of_node(1);
        lab.racklinectl(&[
            "acl",
            "default",
            &net1,
            "--ingress",
            "deny",
            "--egress",
            "allow",
        ])?;
        lab.racklinectl(&[
            "acl",
            "create",
            &net1,
            "default",
            "web",
            "--pods",
            "web-.*",
            "--ingress",
            "allow tcp:5201 10.11.0.0/24",
            "--ingress",
            &format!("allow icmp {HOST}"),
            "--egress",
            "deny tcp:5202 10.11.0.0/24",
        ])?;
        let listed = lab.racklinectl(&["acl", "list"])?;
        ensure!(
            listed["acls"][0]["ingress"][0] == "allow tcp:5201 10.11.0.0/24",
            "{listed}"
        );
        ensure!(listed["defaults"][0]["ingress"] == "deny", "{listed}");

        let (web, web_result) = add_filtered(lab, 1, "web-0")?;
        let web_ip = result_ipv4(&web_result)?.addr;
        let client = lab.add_pod(2, "client")?;
        let client_ip = result_ipv4(&lab.cni_add(&client)?)?.addr;
        let near = lab.add_pod(1, "near")?;
        let near_ip = result_ipv4(&lab.cni_add(&near)?)?.addr;
        let host = lab.add_host(
            "aclh",
            &[Cidr4 {
                addr: HOST,
                prefix: 24,
            }],
        )?;
        // Rack 2's network has no ACL and no default: no table at all. Rack 1's default
        // (ingress deny) gives every pod of that network one, selected by an ACL or not.
        ensure!(
            !tables(lab, &client)?.contains("rackline"),
            "rack 2 pod has a table"
        );
        ensure!(
            tables(lab, &near)?.contains(TABLE),
            "rack 1 pod without an ACL has no table"
        );
        let _l = [
            listen(&web, 5201)?,
            listen(&web, 5202)?,
            listen(&client, 5201)?,
            listen(&client, 5202)?,
        ];
        let t = Duration::from_millis(700);

        // Ingress: by CIDR and port (rack 2 on 5201 only), by protocol and CIDR (the host may
        // ping, not connect), default deny for everything else.
        ensure!(
            connects(&client, web_ip, 5201, t)?,
            "rack 2 pod → web:5201 must pass"
        );
        ensure!(
            !connects(&client, web_ip, 5202, t)?,
            "rack 2 pod → web:5202 must be dropped"
        );
        ensure!(
            !lab.ping_once(&client, web_ip)?,
            "rack 2 pod ping → web must be dropped"
        );
        ensure!(lab.ping(&host, web_ip)?, "TOR host ping → web must pass");
        ensure!(
            !connects(&host, web_ip, 5201, t)?,
            "TOR host → web:5201 must be dropped"
        );
        ensure!(
            !lab.ping_once(&near, web_ip)?,
            "rack 1 pod ping → web must be dropped"
        );
        ensure!(
            lab.ping(&near, client_ip)?,
            "egress allowed by default, the reply by conntrack"
        );
        let _ = near_ip;

        // Egress: port + CIDR deny, the rest allowed; replies come back through the
        // ingress default deny by conntrack.
        ensure!(
            connects(&web, client_ip, 5201, t)?,
            "web → rack 2 pod:5201 must pass"
        );
        ensure!(
            !connects(&web, client_ip, 5202, t)?,
            "web → rack 2 pod:5202 must be dropped"
        );
        ensure!(
            lab.ping(&web, HOST)?,
            "web → TOR host ping must pass (reply by conntrack)"
        );

        let listing = lab
            .exec_in(&web, &["nft", "list", "table", "inet", TABLE])?
            .check()?
            .stdout;
        ensure!(listing.contains("managed by rackline"), "{listing}");
        let dropped: u64 = listing
            .split("counter drop-ingress {")
            .nth(1)
            .and_then(|s| s.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .context("drop-ingress counter")?;
        ensure!(dropped > 0, "drops are counted: {listing}");

        // CHECK: intact passes; a rule deleted by hand fails it.
        let check = || lab.cni(Cmd::Check, &web).prev_result(&web_result).run();
        check()?.ok().context("CHECK of an intact filter")?;

        // A change reaches the running pod within a second, in place.
        lab.racklinectl(&[
            "acl",
            "create",
            &net1,
            "default",
            "web",
            "--pods",
            "web-.*",
            "--ingress",
            "allow tcp:5201-5202 10.11.0.0/24",
            "--egress",
            "deny tcp:5202 10.11.0.0/24",
        ])?;
        let changed = Instant::now();
        while !connects(&client, web_ip, 5202, Duration::from_millis(100))? {
            ensure!(
                changed.elapsed() < Duration::from_secs(1),
                "the ACL change was not applied within 1 s"
            );
        }
        eprintln!(
            "ACL change applied to the running pod in {:?}",
            changed.elapsed()
        );
        ensure!(
            !lab.ping_once(&host, web_ip)?,
            "the host's icmp rule is gone with the change"
        );
        // CHECK now compares with the new policy, which the table follows.
        check()?.ok().context("CHECK after the in-place change")?;
        lab.exec_in(
            &web,
            &["nft", "flush", "chain", "inet", TABLE, "acl-ingress"],
        )?
        .check()?;
        check()?
            .expect_error(103)
            .context("CHECK after flushing a chain by hand")?;

        // DEL removes our table and nothing else.
        lab.cni_del(&web)?;
        let left = tables(lab, &web)?;
        ensure!(
            !left.contains("rackline") && left.contains("table inet stranger"),
            "{left}"
        );
        Ok(())
    })
}

#[test]
fn bad_acl_input_is_refused_with_the_reason_and_nothing_is_stored() -> Result<()> {
    Lab::builder().racks(1).nodes_per_rack(1).run(|lab| {
        let net = lab.network_of_node(1);
        for (rule, why) in [
            ("allow tcp:0", "ports are 1-65535"),
            ("allow 10.0.0.1/8", "host bits set"),
            ("allow icmp:8", "icmp has no ports"),
            ("permit", "start with allow or deny"),
        ] {
            let out =
                lab.racklinectl_raw(&["acl", "create", &net, "default", "bad", "--ingress", rule])?;
            ensure!(
                !out.success() && out.stderr.contains(why),
                "{rule}: {out:?}"
            );
        }
        let out = lab.racklinectl_raw(&[
            "acl",
            "create",
            "nope",
            "default",
            "x",
            "--ingress",
            "allow",
        ])?;
        ensure!(!out.success(), "an ACL for a missing network: {out:?}");
        let out = lab.racklinectl_raw(&[
            "acl",
            "default",
            &net,
            "--ingress",
            "drop",
            "--egress",
            "allow",
        ])?;
        ensure!(
            !out.success() && out.stderr.contains("use allow or deny"),
            "{out:?}"
        );
        let listed = lab.racklinectl(&["acl", "list"])?;
        ensure!(
            listed["acls"].as_array().is_some_and(Vec::is_empty)
                && listed["defaults"].as_array().is_some_and(Vec::is_empty),
            "{listed}"
        );
        // Without any ACL a pod gets no table (today's behaviour).
        let pod = lab.add_pod(1, "plain")?;
        lab.cni_add(&pod)?;
        ensure!(!tables(lab, &pod)?.contains("rackline"));
        lab.cni_del(&pod)?;
        Ok(())
    })
}
