//! Peer-set membership changes as element updates, in real namespaces
//! (needs root): rules and drop counters survive, membership is exact, and
//! the kernel enforces the new membership at once.

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use rackline_model::filter::{Chain, Layer, Peer, PodFilter, Rule, Verdict};
use rackline_netlink::netns::Netns;
use rackline_nft::{Applied, Drops, PodTable};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 2);

struct Ns(String);
impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("rl-sets-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        Ns(name)
    }
    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
    fn ip(&self, args: &str) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend(args.split_whitespace());
        ip(&a);
    }
    fn pings(&self, to: Ipv4Addr) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "ping", "-c1", "-W1", "-q"])
            .arg(to.to_string())
            .output()
            .unwrap()
            .status
            .success()
    }
}
impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Ingress only from set `np-web` (a 1 000-pod peer set by default).
fn filter(members: Vec<Ipv4Addr>) -> PodFilter {
    let mut netpol = Layer::allow_all();
    netpol.ingress = Chain {
        rules: vec![Rule {
            verdict: Verdict::Allow,
            peers: vec![Peer::Set("np-web".into())],
            ports: vec![],
        }],
        default: Verdict::Deny,
    };
    PodFilter {
        acl: Layer::allow_all(),
        netpol,
        always_allow: Vec::new(),
        sets: [("np-web".to_string(), members)].into(),
    }
}

/// `n` peer addresses in 10.33.0.0/16 starting at `from`.
fn peers(from: u32, n: u32) -> Vec<Ipv4Addr> {
    (from..from + n)
        .map(|i| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 33, 0, 0)) + i))
        .collect()
}

fn sorted(mut v: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
    v.sort();
    v
}

#[test]
fn a_set_only_change_updates_elements_and_keeps_rules_and_counters() {
    let server = Ns::new("srv");
    let client = Ns::new("cli");
    let (a, b) = (
        format!("rls{}a", std::process::id() % 100_000),
        format!("rls{}b", std::process::id() % 100_000),
    );
    ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
    ip(&["link", "set", &a, "netns", &server.0]);
    ip(&["link", "set", &b, "netns", &client.0]);
    server.ip(&format!("addr add {SERVER}/24 dev {a}"));
    server.ip(&format!("link set {a} up"));
    client.ip(&format!("addr add {CLIENT}/24 dev {b}"));
    client.ip(&format!("link set {b} up"));
    // The veth pair needs a moment to come up (and to resolve ARP).
    assert!(
        (0..5).any(|_| client.pings(SERVER)),
        "no filter yet: the link works"
    );

    let netns = Netns::open(&server.path()).unwrap();
    let mut t = PodTable::open(&netns, "eth0", SERVER).unwrap();
    let first = filter(peers(0, 1000));
    assert_eq!(t.apply(&first).unwrap(), Applied::Replaced);
    assert!(!client.pings(SERVER), "the client is not in the set");
    let dropped = t.drops().unwrap().unwrap();
    assert!(dropped.ingress >= 1, "{dropped:?}");
    assert_eq!(t.apply(&first).unwrap(), Applied::Unchanged);

    // Pod churn: 10 peers leave, 10 others arrive; the rules are the same.
    let mut next = peers(10, 1000);
    let second = filter(next.clone());
    assert_eq!(
        t.apply(&second).unwrap(),
        Applied::Sets {
            added: 10,
            removed: 10
        }
    );
    assert_eq!(
        sorted(t.set_members("np-web").unwrap()),
        sorted(next.clone())
    );
    assert_eq!(
        t.drops().unwrap().unwrap(),
        dropped,
        "the element update kept the drop counters"
    );
    assert!(t.verify(&second).unwrap().is_ok());
    assert!(
        t.verify(&first).unwrap().is_err(),
        "CHECK sees membership: the old set no longer matches"
    );

    // The client joins the set: the kernel lets it in at once.
    next.push(CLIENT);
    let third = filter(next.clone());
    assert_eq!(
        t.apply(&third).unwrap(),
        Applied::Sets {
            added: 1,
            removed: 0
        }
    );
    assert!(client.pings(SERVER), "the client is now a member");
    assert_eq!(sorted(t.set_members("np-web").unwrap()), sorted(next));

    // A rules change is a full replace: counters restart.
    let mut fourth = third.clone();
    fourth.netpol.egress.default = Verdict::Deny;
    assert_eq!(t.apply(&fourth).unwrap(), Applied::Replaced);
    assert_eq!(t.drops().unwrap().unwrap(), Drops::default());
    assert!(t.verify(&fourth).unwrap().is_ok());
}

/// Timing of a 1 000-pod peer set update (run by hand with
/// `--run-ignored only --no-capture`): full replace vs element update of
/// 10 leaving and 10 arriving members.
#[test]
#[ignore = "timing figures, run by hand"]
fn cost_of_a_thousand_member_set_update() {
    let ns = Ns::new("cost");
    let netns = Netns::open(&ns.path()).unwrap();
    let mut t = PodTable::open(&netns, "eth0", SERVER).unwrap();
    let (mut full, mut elems, mut dump) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..21u32 {
        let a = filter(peers(i * 10, 1000));
        let b = filter(peers(i * 10 + 10, 1000));
        t.program(&a).unwrap();
        let started = Instant::now();
        t.program(&b).unwrap();
        full.push(started.elapsed());
        t.program(&a).unwrap();
        let started = Instant::now();
        assert!(matches!(t.apply(&b).unwrap(), Applied::Sets { .. }));
        elems.push(started.elapsed());
        let started = Instant::now();
        assert_eq!(t.set_members("np-web").unwrap().len(), 1000);
        dump.push(started.elapsed());
    }
    dump.sort();
    full.sort();
    elems.sort();
    let med = |v: &[Duration]| v[v.len() / 2];
    eprintln!(
        "1000-member set, 10 out + 10 in: full replace median {:?} (min {:?}), element update median {:?} (min {:?}), of which reading the set back median {:?}",
        med(&full),
        full[0],
        med(&elems),
        elems[0],
        med(&dump)
    );
}
