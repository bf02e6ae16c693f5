//! Root-only: IPv4 addresses and main-table routes inside a test namespace.

mod common;

use std::net::Ipv4Addr;

use common::{flags, link, TestNs};
use ipnetwork::Ipv4Network;
use nix::errno::Errno;
use rackline_netlink::{RouteScope, RouteSpec};

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[test]
fn addresses_add_list_delete() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-a", "rl-b", None, None).unwrap();
    let a = link(&mut nl, "rl-a");
    let b = link(&mut nl, "rl-b");

    nl.add_addr(a.index, net("10.99.0.2/24")).unwrap();
    nl.add_addr(a.index, net("10.99.1.2/32")).unwrap();
    nl.add_addr(b.index, net("10.99.0.3/24")).unwrap();

    let mine = nl.addrs(Some(a.index)).unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|x| x.index == a.index && x.scope == 0));
    assert!(mine.iter().any(|x| x.addr == net("10.99.0.2/24")));
    assert!(mine.iter().any(|x| x.addr == net("10.99.1.2/32")));
    let all = nl.addrs(None).unwrap();
    assert!(all
        .iter()
        .any(|x| x.index == b.index && x.addr == net("10.99.0.3/24")));

    let shown = t.ip_json(false, &["addr", "show", "dev", "rl-a"]);
    let infos = shown[0]["addr_info"].as_array().unwrap();
    let v4 = infos
        .iter()
        .find(|i| i["local"] == "10.99.0.2")
        .expect("address in ip output");
    assert_eq!(v4["prefixlen"], 24);
    assert_eq!(v4["broadcast"], "10.99.0.255");
    assert_eq!(v4["scope"], "global");
    let host = infos.iter().find(|i| i["local"] == "10.99.1.2").unwrap();
    assert!(
        host.get("broadcast").is_none(),
        "/32 has no broadcast: {host}"
    );

    let err = nl.add_addr(a.index, net("10.99.0.2/24")).unwrap_err();
    assert!(err.is_exists(), "{err}");

    nl.del_addr(a.index, net("10.99.0.2/24")).unwrap();
    assert!(!nl
        .addrs(Some(a.index))
        .unwrap()
        .iter()
        .any(|x| x.addr == net("10.99.0.2/24")));
    let err = nl.del_addr(a.index, net("10.99.0.2/24")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::EADDRNOTAVAIL), "{err}");
    assert!(err.is_not_found());

    let err = nl.add_addr(999_999, net("10.99.5.1/24")).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENODEV), "{err}");
}

#[test]
fn routes_add_list_delete() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-r", "rl-rp", None, None).unwrap();
    let r = link(&mut nl, "rl-r");
    let rp = link(&mut nl, "rl-rp");
    nl.set_up(r.index).unwrap();
    nl.set_up(rp.index).unwrap();
    nl.add_addr(r.index, net("10.50.0.2/24")).unwrap();

    // Pod style: a /32 to the gateway on the link, then a default via it.
    let gw_host = RouteSpec::on_link(net("169.254.1.1/32"), r.index);
    let default_onlink = RouteSpec {
        onlink: true,
        ..RouteSpec::via(net("0.0.0.0/0"), ip("169.254.1.1"), r.index)
    };
    let via = RouteSpec {
        src: Some(ip("10.50.0.2")),
        ..RouteSpec::via(net("10.60.0.0/16"), ip("10.50.0.1"), r.index)
    };
    let other_gw = RouteSpec::via(net("10.70.0.0/16"), ip("10.99.9.9"), r.index);
    for spec in [&gw_host, &default_onlink, &via] {
        nl.add_route(spec).unwrap();
    }
    // Without onlink the kernel rejects a gateway that is not reachable.
    let err = nl.add_route(&other_gw).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ENETUNREACH), "{err}");

    let routes = nl.routes().unwrap();
    let find = |dst: &str| routes.iter().find(|x| x.dst == net(dst)).copied();
    let host = find("169.254.1.1/32").expect("host route");
    assert_eq!(
        (host.gateway, host.oif, host.scope),
        (None, Some(r.index), 253)
    );
    assert_eq!(host.protocol, 3, "RTPROT_BOOT");
    let def = find("0.0.0.0/0").expect("default route");
    assert_eq!(
        (def.gateway, def.onlink, def.scope),
        (Some(ip("169.254.1.1")), true, 0)
    );
    let v = find("10.60.0.0/16").expect("via route");
    assert_eq!((v.gateway, v.onlink), (Some(ip("10.50.0.1")), false));
    let connected = find("10.50.0.0/24").expect("connected route of the address");
    assert_eq!(
        (connected.protocol, connected.scope),
        (2, 253),
        "RTPROT_KERNEL, link scope"
    );

    let shown = t.ip_json(false, &["route", "show"]);
    let rows = shown.as_array().unwrap();
    let row = |dst: &str| {
        rows.iter()
            .find(|x| x["dst"] == dst)
            .unwrap_or_else(|| panic!("{dst}: {shown}"))
    };
    assert_eq!(row("default")["gateway"], "169.254.1.1");
    assert!(flags(row("default")).contains(&"onlink".to_owned()));
    assert_eq!(row("169.254.1.1")["scope"], "link");
    assert_eq!(row("10.60.0.0/16")["prefsrc"], "10.50.0.2");
    assert_eq!(row("10.60.0.0/16")["dev"], "rl-r");

    let err = nl.add_route(&via).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert_eq!(err.errno(), Some(Errno::EEXIST));

    // Delete matches whatever scope/protocol the route has.
    for spec in [&via, &default_onlink, &gw_host] {
        nl.del_route(spec).unwrap();
    }
    let left = nl.routes().unwrap();
    assert!(
        !left
            .iter()
            .any(|x| x.dst == net("10.60.0.0/16") || x.dst.prefix() == 0),
        "{left:?}"
    );
    let err = nl.del_route(&via).unwrap_err();
    assert_eq!(err.errno(), Some(Errno::ESRCH), "{err}");
    assert!(err.is_not_found());

    // A spec with explicit link scope also works for a /32 without gateway.
    let explicit = RouteSpec {
        dst: net("10.80.0.9/32"),
        gateway: None,
        oif: r.index,
        onlink: false,
        scope: RouteScope::Link,
        src: None,
        metric: None,
        table: None,
    };
    nl.add_route(&explicit).unwrap();
    assert!(nl
        .routes()
        .unwrap()
        .iter()
        .any(|x| x.dst == net("10.80.0.9/32") && x.scope == 253));
}
