//! The bad-input matrix: the real `rackline` binary, executed from a node's namespace the way a
//! runtime executes it, fed what a hostile runtime or a careless operator would feed it —
//! environment (missing, not UTF-8, malformed ids), stdin, netconf keys, network-namespace kinds
//! (missing, file, directory, FIFO, socket, device, the plugin's own namespace directly, through
//! a symlink and through a bind mount, another container's), ipamd socket kinds (missing,
//! regular file, FIFO, directory, a socket nobody listens on, a server that never answers),
//! CNI_ARGS, prevResult, GC lists and stranger links under Rackline's names.
//!
//! Every case asserts the exit code and the CNI error code, that the plugin neither panicked nor
//! hung, and that the node's namespace, a scratch pod's namespace and a live pod's namespace
//! (links with all details, addresses, routes of every table, rules, qdiscs, IPv4 sysctls) and
//! the etcd leases are byte-for-byte what they were before. One lab serves every case; cases run
//! one after the other.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use rackline_lab::{Cmd, CniCall, Lab, NsState, Pod};
use serde_json::{json, Value};

/// Far below the harness's 30 s: a hang shows up as a failed case, not a stuck suite.
const CASE_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Exit 0.
    Ok,
    /// Exit non-zero with this CNI error code on stdout.
    Code(u64),
}

type Build = Box<dyn for<'a> Fn(&'a Ctx<'a>) -> CniCall<'a>>;
type Step = Box<dyn Fn(&Ctx) -> Result<()>>;

struct Case {
    name: String,
    expect: Expect,
    build: Build,
    setup: Option<Step>,
    cleanup: Option<Step>,
}

fn case(
    name: &str,
    expect: Expect,
    build: impl for<'a> Fn(&'a Ctx<'a>) -> CniCall<'a> + 'static,
) -> Case {
    Case {
        name: name.to_owned(),
        expect,
        build: Box::new(build),
        setup: None,
        cleanup: None,
    }
}

impl Case {
    fn around(
        mut self,
        setup: impl Fn(&Ctx) -> Result<()> + 'static,
        cleanup: impl Fn(&Ctx) -> Result<()> + 'static,
    ) -> Self {
        self.setup = Some(Box::new(setup));
        self.cleanup = Some(Box::new(cleanup));
        self
    }
}

/// What the cases share.
struct Ctx<'a> {
    lab: &'a Lab,
    /// An empty pod sandbox on n1.
    p: Pod,
    /// A live pod on n1 (eth0 added).
    a: Pod,
    a_result: Value,
    tmp: PathBuf,
    /// The node's bind-mounted namespace (the plugin's own).
    node_ns: String,
}

impl Ctx<'_> {
    fn path(&self, name: &str) -> String {
        self.tmp.join(name).display().to_string()
    }

    fn add_p(&self) -> CniCall<'_> {
        self.lab.cni(Cmd::Add, &self.p)
    }

    fn del_p(&self) -> CniCall<'_> {
        self.lab.cni(Cmd::Del, &self.p)
    }

    /// DEL of an attachment no ADD ever made.
    fn del_never(&self) -> CniCall<'_> {
        self.del_p().container_id("neveradded0")
    }

    fn check_a(&self) -> CniCall<'_> {
        self.lab
            .cni(Cmd::Check, &self.a)
            .prev_result(&self.a_result)
    }

    fn gc(&self) -> CniCall<'_> {
        self.lab.cni_node(1, Cmd::Gc)
    }

    fn a_listed(&self) -> Value {
        json!([{"containerID": self.a.container_id, "ifname": "eth0"}])
    }
}

/// `rl` + 12 hex digits: the node end of an attachment's veth (docs/architecture.md,
/// "Deterministic names": low 48 bits of FNV-1a-64 over `containerId \0 ifname \0`).
fn node_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("rl{:012x}", h & 0xffff_ffff_ffff)
}

fn bytes(b: &[u8]) -> OsString {
    OsString::from_vec(b.to_vec())
}

fn ip(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>, args: &[&str]) -> Result<()> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    lab.exec_in(ns, &argv)?.check().map(drop)
}

fn env_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        case("env: no CNI_COMMAND", Code(4), |c| {
            c.add_p().unset("CNI_COMMAND")
        }),
        case("env: CNI_COMMAND=add", Code(4), |c| {
            c.add_p().env("CNI_COMMAND", "add")
        }),
        case("env: CNI_COMMAND=FROB", Code(4), |c| {
            c.add_p().env("CNI_COMMAND", "FROB")
        }),
        case("env: CNI_COMMAND not UTF-8", Code(4), |c| {
            c.add_p().env_os("CNI_COMMAND", bytes(b"AD\xffD"))
        }),
        case("env: ADD without CNI_CONTAINERID", Code(4), |c| {
            c.add_p().unset("CNI_CONTAINERID")
        }),
        case("env: ADD without CNI_IFNAME", Code(4), |c| {
            c.add_p().unset("CNI_IFNAME")
        }),
        case("env: ADD without CNI_NETNS", Code(4), |c| {
            c.add_p().unset("CNI_NETNS")
        }),
        case("env: ADD with empty CNI_NETNS", Code(4), |c| {
            c.add_p().netns("")
        }),
        case("env: relative CNI_NETNS", Code(4), |c| {
            c.add_p().netns("var/run/netns/x")
        }),
        case("env: control character in the container id", Code(4), |c| {
            c.add_p().container_id("abc\u{1}def")
        }),
        case("env: '/' in the container id", Code(4), |c| {
            c.add_p().container_id("abc/def")
        }),
        case("env: 300-byte container id", Code(4), |c| {
            c.add_p().container_id(&"a".repeat(300))
        }),
        case("env: container id starting with '-'", Code(4), |c| {
            c.add_p().container_id("-abc")
        }),
        case("env: 16-byte ifname", Code(4), |c| {
            c.add_p().ifname("abcdefghijklmnop")
        }),
        case("env: ifname with '/'", Code(4), |c| c.add_p().ifname("a/b")),
        case("env: ifname with a space", Code(4), |c| {
            c.add_p().ifname("a b")
        }),
        case("env: CNI_CONTAINERID not UTF-8", Code(4), |c| {
            c.add_p().env_os("CNI_CONTAINERID", bytes(b"ab\xfe"))
        }),
        case("env: CNI_NETNS not UTF-8", Code(4), |c| {
            c.add_p().env_os("CNI_NETNS", bytes(b"/var/run/netns/\xff"))
        }),
        case("env: CNI_IFNAME not UTF-8", Code(4), |c| {
            c.add_p().env_os("CNI_IFNAME", bytes(b"eth\xff"))
        }),
        case("env: CNI_ARGS not UTF-8", Code(4), |c| {
            c.add_p().env_os("CNI_ARGS", bytes(b"K8S_POD_NAME=\xff"))
        }),
        case(
            "env: VERSION with an unrelated non-UTF-8 variable",
            Ok,
            |c| {
                c.lab
                    .cni_node(1, Cmd::Version)
                    .env_os("JUNK", bytes(b"\xff\xfe"))
            },
        ),
        case("env: VERSION with a non-UTF-8 variable name", Ok, |c| {
            c.lab
                .cni_node(1, Cmd::Version)
                .env_os(bytes(b"J\xffNK"), "x")
        }),
        case(
            "env: STATUS with an unrelated non-UTF-8 variable",
            Ok,
            |c| {
                c.lab
                    .cni_node(1, Cmd::Status)
                    .env_os("JUNK", bytes(b"\xff"))
            },
        ),
        case(
            "env: DEL of a container id no ADD accepts (control character)",
            Ok,
            |c| c.del_p().container_id("abc\u{7}def"),
        ),
        case("env: DEL of a container id with '/'", Ok, |c| {
            c.del_p().container_id("../../x")
        }),
        case("env: DEL without CNI_CONTAINERID", Code(4), |c| {
            c.del_p().unset("CNI_CONTAINERID")
        }),
        case("env: DEL without CNI_IFNAME", Code(4), |c| {
            c.del_p().unset("CNI_IFNAME")
        }),
        case("env: DEL with a relative CNI_NETNS", Code(4), |c| {
            c.del_never().netns("x")
        }),
        case("env: CHECK without CNI_NETNS", Code(4), |c| {
            c.check_a().unset("CNI_NETNS")
        }),
    ]
}

fn stdin_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        case("stdin: empty", Code(6), |c| c.add_p().stdin_raw("")),
        case("stdin: not JSON", Code(6), |c| {
            c.add_p().stdin_raw("not json")
        }),
        case("stdin: a JSON array", Code(6), |c| {
            c.add_p().stdin_raw("[]")
        }),
        case("stdin: null", Code(6), |c| c.add_p().stdin_raw("null")),
        case("stdin: a number", Code(6), |c| c.add_p().stdin_raw("42")),
        case("stdin: truncated", Code(6), |c| {
            c.add_p().stdin_raw("{\"cniVersion\": ")
        }),
        case("stdin: invalid UTF-8 inside JSON", Code(6), |c| {
            c.add_p()
                .stdin_raw(b"{\"cniVersion\":\"1.1.0\",\"name\":\"\xff\"}".to_vec())
        }),
        case("stdin: 5 MiB", Code(6), |c| {
            c.add_p().stdin_raw(vec![b' '; 5 << 20])
        }),
        case("stdin: DEL with garbage", Code(6), |c| {
            c.del_never().stdin_raw("{oops")
        }),
        case("stdin: GC with garbage", Code(6), |c| {
            c.gc().stdin_raw("][")
        }),
    ]
}

fn netconf_cases() -> Vec<Case> {
    use Expect::*;
    let key = |name: &'static str, k: &'static str, v: Value, code: Expect| {
        case(name, code, move |c| c.add_p().set(k, v.clone()))
    };
    vec![
        case("netconf: no cniVersion", Code(7), |c| {
            let mut conf = c.lab.conf(1);
            conf.as_object_mut().unwrap().remove("cniVersion");
            c.add_p().conf(conf)
        }),
        key(
            "netconf: cniVersion 9.9.9",
            "cniVersion",
            json!("9.9.9"),
            Code(1),
        ),
        key(
            "netconf: cniVersion a number",
            "cniVersion",
            json!(1),
            Code(7),
        ),
        case("netconf: no name", Code(7), |c| {
            let mut conf = c.lab.conf(1);
            conf.as_object_mut().unwrap().remove("name");
            c.add_p().conf(conf)
        }),
        key("netconf: type macvlan", "type", json!("macvlan"), Code(7)),
        key(
            "netconf: invalid network name",
            "network",
            json!("Bad_Name"),
            Code(7),
        ),
        key(
            "netconf: relative ipamdSocket",
            "ipamdSocket",
            json!("ipamd.sock"),
            Code(7),
        ),
        key(
            "netconf: ipamdSocket a number",
            "ipamdSocket",
            json!(5),
            Code(7),
        ),
        key("netconf: timeoutMs 1", "timeoutMs", json!(1), Code(7)),
        key(
            "netconf: timeoutMs a string",
            "timeoutMs",
            json!("5000"),
            Code(7),
        ),
        key(
            "netconf: hostRoutes a string",
            "hostRoutes",
            json!("10.96.0.0/12"),
            Code(7),
        ),
        key(
            "netconf: hostRoutes of numbers",
            "hostRoutes",
            json!([1]),
            Code(7),
        ),
        key(
            "netconf: hostRoutes with host bits",
            "hostRoutes",
            json!(["10.96.0.1/12"]),
            Code(7),
        ),
        key(
            "netconf: master with a space",
            "master",
            json!("has space"),
            Code(7),
        ),
        key(
            "netconf: runtimeConfig an array",
            "runtimeConfig",
            json!([{"bandwidth": {}}]),
            Code(7),
        ),
        key(
            "netconf: bandwidth an array",
            "runtimeConfig",
            json!({"bandwidth": [10_000_000, 0, 0, 0]}),
            Code(7),
        ),
        key(
            "netconf: bandwidth a string",
            "runtimeConfig",
            json!({"bandwidth": "fast"}),
            Code(7),
        ),
        key(
            "netconf: negative rate",
            "runtimeConfig",
            json!({"bandwidth": {"ingressRate": -1}}),
            Code(7),
        ),
        key(
            "netconf: burst without rate",
            "runtimeConfig",
            json!({"bandwidth": {"ingressBurst": 100_000}}),
            Code(7),
        ),
        key(
            "netconf: ips IPv6",
            "runtimeConfig",
            json!({"ips": ["fd00::1"]}),
            Code(7),
        ),
        key(
            "netconf: ips two IPv4",
            "runtimeConfig",
            json!({"ips": ["10.10.0.70", "10.10.0.71/24"]}),
            Code(7),
        ),
        key(
            "netconf: ips a string",
            "runtimeConfig",
            json!({"ips": "10.10.0.70"}),
            Code(7),
        ),
        key(
            "netconf: vlanCleanup junk",
            "vlanCleanup",
            json!("sometimes"),
            Code(7),
        ),
        key(
            "netconf: relative runtimeDir",
            "runtimeDir",
            json!("run/rackline"),
            Code(7),
        ),
        key(
            "netconf: ADD with prevResult a string",
            "prevResult",
            json!("x"),
            Code(7),
        ),
        case(
            "netconf: logFile a FIFO (then a missing netns)",
            Code(3),
            |c| {
                c.add_p()
                    .set("logFile", json!(c.path("fifo")))
                    .netns("/var/run/netns/rackline-missing-netns")
            },
        ),
        case(
            "netconf: logFile a directory (then a missing netns)",
            Code(3),
            |c| {
                c.add_p()
                    .set("logFile", json!(c.path("dir")))
                    .netns("/var/run/netns/rackline-missing-netns")
            },
        ),
        case(
            "netconf: logFile /dev/null (then a missing netns)",
            Code(3),
            |c| {
                c.add_p()
                    .set("logFile", json!("/dev/null"))
                    .netns("/var/run/netns/rackline-missing-netns")
            },
        ),
        case("netconf: DEL with a bandwidth string", Ok, |c| {
            c.del_never()
                .set("runtimeConfig", json!({"bandwidth": "fast", "ips": [5]}))
        }),
        case(
            "netconf: DEL with junk prevResult, hostRoutes, master",
            Ok,
            |c| {
                c.del_never()
                    .set("prevResult", json!("x"))
                    .set("hostRoutes", json!("nope"))
                    .set("master", json!("bad name"))
            },
        ),
    ]
}

fn netns_cases() -> Vec<Case> {
    use Expect::*;
    vec![
        case("netns: ADD, missing", Code(3), |c| {
            c.add_p().netns("/var/run/netns/rackline-missing-netns")
        }),
        case("netns: ADD, regular file", Code(4), |c| {
            c.add_p().netns(&c.path("file"))
        }),
        case("netns: ADD, directory", Code(4), |c| {
            c.add_p().netns(&c.path("dir"))
        }),
        case("netns: ADD, FIFO", Code(4), |c| {
            c.add_p().netns(&c.path("fifo"))
        }),
        case("netns: ADD, socket", Code(4), |c| {
            c.add_p().netns(&c.path("dead.sock"))
        }),
        case("netns: ADD, /dev/null", Code(4), |c| {
            c.add_p().netns("/dev/null")
        }),
        case("netns: ADD, a mount namespace", Code(4), |c| {
            c.add_p().netns("/proc/self/ns/mnt")
        }),
        case(
            "netns: ADD, the plugin's own (/proc/self/ns/net)",
            Code(4),
            |c| c.add_p().netns("/proc/self/ns/net"),
        ),
        case(
            "netns: ADD, the plugin's own through a symlink",
            Code(4),
            |c| c.add_p().netns(&c.path("own-link")),
        ),
        case(
            "netns: ADD, the plugin's own through its bind mount",
            Code(4),
            |c| c.add_p().netns(&c.node_ns),
        ),
        case(
            "netns: ADD, the plugin's own through a symlink to the bind mount",
            Code(4),
            |c| c.add_p().netns(&c.path("node-link")),
        ),
        case(
            "netns: ADD of another container into a live pod's netns",
            Code(100),
            |c| c.add_p().netns(&c.a.netns_path()),
        ),
        case(
            "netns: DEL of another container in a live pod's netns",
            Ok,
            |c| c.del_p().netns(&c.a.netns_path()),
        ),
        case(
            "netns: CHECK of another container in a live pod's netns",
            Code(103),
            |c| {
                c.lab
                    .cni(Cmd::Check, &c.p)
                    .netns(&c.a.netns_path())
                    .prev_result(&c.a_result)
            },
        ),
        case("netns: DEL, FIFO", Code(4), |c| {
            c.del_never().netns(&c.path("fifo"))
        }),
        case("netns: DEL, directory", Code(4), |c| {
            c.del_never().netns(&c.path("dir"))
        }),
        case("netns: DEL, missing", Ok, |c| {
            c.del_never().netns("/var/run/netns/rackline-missing-netns")
        }),
        case(
            "netns: DEL, own namespace with a node interface's name",
            Ok,
            |c| c.del_never().netns("/proc/self/ns/net").ifname("uplink0"),
        ),
        case(
            "netns: DEL, own bind mount, the live pod's id, a node interface's name",
            Ok,
            |c| {
                c.lab
                    .cni(Cmd::Del, &c.a)
                    .netns(&c.node_ns)
                    .ifname("uplink0")
            },
        ),
        case("netns: DEL, own bind mount with lo", Ok, |c| {
            c.del_never().netns(&c.node_ns).ifname("lo")
        }),
        case("netns: CHECK, FIFO", Code(4), |c| {
            c.check_a().netns(&c.path("fifo"))
        }),
        case("netns: CHECK, own namespace", Code(4), |c| {
            c.check_a().netns("/proc/self/ns/net")
        }),
    ]
}

fn socket_cases() -> Vec<Case> {
    use Expect::*;
    let add = |name: &'static str, sock: &'static str| {
        case(name, Code(11), move |c| {
            c.add_p()
                .set("ipamdSocket", json!(c.path(sock)))
                .set("timeoutMs", json!(300))
        })
    };
    vec![
        add("ipamd socket: missing", "missing.sock"),
        add("ipamd socket: regular file", "file"),
        add("ipamd socket: FIFO", "fifo"),
        add("ipamd socket: directory", "dir"),
        add("ipamd socket: nobody listens", "dead.sock"),
        add("ipamd socket: a server that never answers", "silent.sock"),
        case("ipamd socket: STATUS on a FIFO", Code(50), |c| {
            c.lab
                .cni_node(1, Cmd::Status)
                .set("ipamdSocket", json!(c.path("fifo")))
        }),
        case("ipamd socket: STATUS on a silent server", Code(50), |c| {
            c.lab
                .cni_node(1, Cmd::Status)
                .set("ipamdSocket", json!(c.path("silent.sock")))
                .set("timeoutMs", json!(300))
        }),
        case("ipamd socket: GC on a dead socket", Code(11), |c| {
            c.gc()
                .set("cni.dev/valid-attachments", c.a_listed())
                .set("ipamdSocket", json!(c.path("dead.sock")))
        }),
        case(
            "ipamd socket: DEL via a silent server (release spooled)",
            Ok,
            |c| {
                c.del_never()
                    .set("ipamdSocket", json!(c.path("silent.sock")))
                    .set("timeoutMs", json!(300))
            },
        ),
        case("ipamd socket: DEL via a FIFO (release spooled)", Ok, |c| {
            c.del_never().set("ipamdSocket", json!(c.path("fifo")))
        }),
    ]
}

fn args_cases() -> Vec<Case> {
    use Expect::*;
    let args =
        |name: &'static str, a: String, code: Expect| case(name, code, move |c| c.add_p().args(&a));
    vec![
        args("CNI_ARGS: pair without '='", "K8S_POD_NAME".into(), Code(4)),
        args(
            "CNI_ARGS: 100 KB pod name",
            format!("K8S_POD_NAME={}", "p".repeat(100_000)),
            Code(4),
        ),
        args(
            "CNI_ARGS: 254-byte pod name",
            format!("K8S_POD_NAME={}", "p".repeat(254)),
            Code(4),
        ),
        args(
            "CNI_ARGS: uppercase namespace",
            "K8S_POD_NAMESPACE=Default".into(),
            Code(4),
        ),
        args(
            "CNI_ARGS: 64-byte namespace",
            format!("K8S_POD_NAMESPACE={}", "n".repeat(64)),
            Code(4),
        ),
        args(
            "CNI_ARGS: 129-byte uid",
            format!("K8S_POD_UID={}", "u".repeat(129)),
            Code(4),
        ),
        args(
            "CNI_ARGS: pod name twice",
            "K8S_POD_NAME=a;K8S_POD_NAME=b".into(),
            Code(4),
        ),
        args(
            "CNI_ARGS: control character in the pod name",
            "K8S_POD_NAME=a\u{1}b".into(),
            Code(4),
        ),
        args("CNI_ARGS: IP=IPv6", "IP=fd00::1".into(), Code(4)),
        args(
            "CNI_ARGS: IP=two addresses",
            "IP=10.10.0.70,10.10.0.71".into(),
            Code(4),
        ),
        args("CNI_ARGS: IP=not an address", "IP=nope".into(), Code(4)),
        case("CNI_ARGS: IP= and ips disagree", Code(7), |c| {
            c.add_p()
                .args("IP=10.10.0.70")
                .set("runtimeConfig", json!({"ips": ["10.10.0.71"]}))
        }),
    ]
}

fn prev_result_cases() -> Vec<Case> {
    use Expect::*;
    let prev = |name: &'static str, v: Value| {
        case(name, Code(7), move |c| {
            c.lab.cni(Cmd::Check, &c.a).prev_result(&v)
        })
    };
    vec![
        case("prevResult: CHECK without it", Code(7), |c| {
            c.lab.cni(Cmd::Check, &c.a)
        }),
        prev("prevResult: a string", json!("x")),
        prev("prevResult: an array", json!([1, 2])),
        prev(
            "prevResult: ips an object",
            json!({"ips": {"address": "10.10.0.64/24"}}),
        ),
        prev(
            "prevResult: a bad address",
            json!({"ips": [{"address": "10.10.0.999/24"}]}),
        ),
        prev(
            "prevResult: interface index out of range",
            json!({"interfaces": [], "ips": [{"address": "10.10.0.64/24", "interface": 3}]}),
        ),
        prev("prevResult: routes a string", json!({"routes": "default"})),
        case("prevResult: CHECK with cniVersion 0.3.1", Code(1), |c| {
            c.check_a().set("cniVersion", json!("0.3.1"))
        }),
        case(
            "prevResult: another address than the lease",
            Code(103),
            |c| {
                c.lab.cni(Cmd::Check, &c.a).prev_result(&json!({
                "cniVersion": "1.1.0",
                "interfaces": [{"name": "eth0", "mac": "0a:58:0a:0a:00:fe", "sandbox": c.a.netns_path()}],
                "ips": [{"address": "10.10.0.254/24", "interface": 0}]
            }))
            },
        ),
        case("prevResult: a valid CHECK of the live pod", Ok, |c| {
            c.check_a()
        }),
    ]
}

fn gc_cases() -> Vec<Case> {
    use Expect::*;
    let list = |name: &'static str, v: Value| {
        case(name, Code(7), move |c| {
            c.gc().set("cni.dev/valid-attachments", v.clone())
        })
    };
    vec![
        case("GC: no list", Code(7), |c| c.gc()),
        list(
            "GC: list an object",
            json!({"containerID": "a", "ifname": "eth0"}),
        ),
        list("GC: list of arrays", json!([["a", "eth0"]])),
        list("GC: entry without ifname", json!([{"containerID": "a"}])),
        list("GC: list a string", json!("all")),
        case("GC: the live pod listed", Ok, |c| {
            c.gc().set("cni.dev/valid-attachments", c.a_listed())
        }),
    ]
}

fn stranger_cases() -> Vec<Case> {
    use Expect::*;
    let x = "strangerx0";
    vec![
        case(
            "stranger: a veth named eth0 in the pod, DEL",
            Ok,
            move |c| c.del_p().container_id(x),
        )
        .around(
            |c| {
                ip(
                    c.lab,
                    &c.p,
                    &[
                        "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
                    ],
                )
            },
            |c| ip(c.lab, &c.p, &["link", "del", "eth0"]),
        ),
        case(
            "stranger: a bridge named rl-eth0 in the pod, DEL",
            Ok,
            move |c| c.del_p().container_id(x),
        )
        .around(
            |c| ip(c.lab, &c.p, &["link", "add", "rl-eth0", "type", "bridge"]),
            |c| ip(c.lab, &c.p, &["link", "del", "rl-eth0"]),
        ),
        case(
            "stranger: a macvlan named eth0 in the pod, ADD (rolled back)",
            Code(100),
            move |c| c.add_p().container_id(x),
        )
        .around(stranger_macvlan, |c| {
            ip(c.lab, &c.p, &["link", "del", "eth0"])
        }),
        case(
            "stranger: a macvlan named eth0 in the pod, DEL",
            Ok,
            move |c| c.del_p().container_id(x),
        )
        .around(stranger_macvlan, |c| {
            ip(c.lab, &c.p, &["link", "del", "eth0"])
        }),
        case(
            "stranger: a bridge under the attachment's node veth name, ADD",
            Code(100),
            move |c| c.add_p().container_id(x),
        )
        .around(
            move |c| {
                ip(
                    c.lab,
                    c.lab.node(1),
                    &["link", "add", &node_veth_name(x, "eth0"), "type", "bridge"],
                )
            },
            move |c| {
                ip(
                    c.lab,
                    c.lab.node(1),
                    &["link", "del", &node_veth_name(x, "eth0")],
                )
            },
        ),
        case(
            "stranger: a bridge under the attachment's node veth name, DEL",
            Ok,
            move |c| c.del_p().container_id(x).netns(""),
        )
        .around(
            move |c| {
                ip(
                    c.lab,
                    c.lab.node(1),
                    &["link", "add", &node_veth_name(x, "eth0"), "type", "bridge"],
                )
            },
            move |c| {
                ip(
                    c.lab,
                    c.lab.node(1),
                    &["link", "del", &node_veth_name(x, "eth0")],
                )
            },
        ),
        case(
            "stranger: a veth with a foreign alias under the node veth name, DEL",
            Ok,
            move |c| c.del_p().container_id(x).netns(""),
        )
        .around(
            move |c| {
                let n = node_veth_name(x, "eth0");
                ip(
                    c.lab,
                    c.lab.node(1),
                    &[
                        "link", "add", &n, "type", "veth", "peer", "name", "strpeer0",
                    ],
                )?;
                ip(
                    c.lab,
                    c.lab.node(1),
                    &["link", "set", &n, "alias", "operator's link"],
                )
            },
            move |c| {
                ip(
                    c.lab,
                    c.lab.node(1),
                    &["link", "del", &node_veth_name(x, "eth0")],
                )
            },
        ),
        case(
            "stranger: another pod's mark on a veth named eth0, DEL",
            Ok,
            move |c| c.del_p().container_id(x),
        )
        .around(
            |c| {
                ip(
                    c.lab,
                    &c.p,
                    &[
                        "link", "add", "eth0", "type", "veth", "peer", "name", "rl-eth0",
                    ],
                )?;
                let mark = format!("rackline:{}:eth0", c.a.container_id);
                ip(c.lab, &c.p, &["link", "set", "eth0", "alias", &mark])
            },
            |c| ip(c.lab, &c.p, &["link", "del", "eth0"]),
        ),
    ]
}

/// A macvlan on n1's uplink moved into the scratch pod and renamed eth0.
fn stranger_macvlan(c: &Ctx) -> Result<()> {
    let node = c.lab.node(1);
    ip(
        c.lab,
        node,
        &[
            "link", "add", "link", "uplink0", "name", "strmv0", "type", "macvlan", "mode", "bridge",
        ],
    )?;
    ip(
        c.lab,
        node,
        &["link", "set", "strmv0", "netns", c.p.netns.name()],
    )?;
    ip(c.lab, &c.p, &["link", "set", "strmv0", "name", "eth0"])
}

#[derive(PartialEq, Eq)]
struct World {
    n1: NsState,
    p: NsState,
    a: NsState,
    leases: Vec<Value>,
}

fn world(c: &Ctx) -> Result<World> {
    let mut leases = c.lab.leases()?;
    leases.sort_by_key(|l| l["address"].as_str().unwrap_or_default().to_owned());
    Ok(World {
        n1: c.lab.ns_state(c.lab.node(1))?,
        p: c.lab.ns_state(&c.p)?,
        a: c.lab.ns_state(&c.a)?,
        leases,
    })
}

fn diff(before: &World, after: &World) -> String {
    let mut out = String::new();
    for (what, b, a) in [
        ("node n1", &before.n1, &after.n1),
        ("scratch pod", &before.p, &after.p),
        ("live pod", &before.a, &after.a),
    ] {
        let d = b.diff(a);
        if !d.is_empty() {
            out.push_str(&format!("== {what} ==\n{d}"));
        }
    }
    if before.leases != after.leases {
        out.push_str(&format!(
            "== leases ==\nbefore: {:?}\nafter: {:?}\n",
            before.leases, after.leases
        ));
    }
    out
}

/// A unix socket server that accepts and then never reads or answers.
fn silent_server(path: &Path) -> Result<Arc<Mutex<Vec<UnixStream>>>> {
    let listener = UnixListener::bind(path)?;
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            keep.lock().unwrap().push(s);
        }
    });
    Ok(held)
}

fn run_case(c: &Ctx, case: &Case) -> Result<()> {
    let started = Instant::now();
    let out = (case.build)(c).timeout(CASE_TIMEOUT).run()?;
    ensure!(
        !out.stderr.contains("panicked"),
        "the plugin panicked\n{out}"
    );
    match case.expect {
        Expect::Ok => {
            ensure!(out.success(), "expected exit 0\n{out}");
            ensure!(
                out.stdout.trim().is_empty() || out.stdout_json.is_some(),
                "stdout is neither empty nor JSON\n{out}"
            );
        }
        Expect::Code(code) => {
            ensure!(out.exit_code == 1, "expected exit 1\n{out}");
            out.expect_error(code)?;
        }
    }
    ensure!(
        started.elapsed() < CASE_TIMEOUT,
        "took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[test]
fn bad_input_matrix() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let tmp = lab.dir().join("bad-input");
        std::fs::create_dir_all(tmp.join("dir"))?;
        std::fs::write(tmp.join("file"), b"not a namespace")?;
        nix::unistd::mkfifo(
            &tmp.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )?;
        drop(UnixListener::bind(tmp.join("dead.sock"))?);
        let _silent = silent_server(&tmp.join("silent.sock"))?;
        std::os::unix::fs::symlink("/proc/self/ns/net", tmp.join("own-link"))?;
        let node_ns = lab.node(1).netns().path();
        std::os::unix::fs::symlink(&node_ns, tmp.join("node-link"))?;

        let a = lab.add_pod(1, "live")?;
        let a_result = lab.cni_add(&a)?;
        let p = lab.add_pod(1, "scratch")?;
        let ctx = Ctx {
            lab,
            p,
            a,
            a_result,
            tmp,
            node_ns: node_ns.display().to_string(),
        };

        let cases: Vec<Case> = [
            env_cases(),
            stdin_cases(),
            netconf_cases(),
            netns_cases(),
            socket_cases(),
            args_cases(),
            prev_result_cases(),
            gc_cases(),
            stranger_cases(),
        ]
        .into_iter()
        .flatten()
        .collect();
        ensure!(cases.len() >= 80, "only {} cases", cases.len());

        // The kernel finishes the new links on its own (IPv6 link-local addresses after
        // duplicate address detection, their routes): wait until two snapshots agree.
        let settle = Instant::now();
        let mut prev = world(&ctx)?;
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = world(&ctx)?;
            if now == prev && now.n1.settled() && now.p.settled() && now.a.settled() {
                break;
            }
            ensure!(
                settle.elapsed() < Duration::from_secs(20),
                "the lab does not settle:\n{}",
                diff(&prev, &now)
            );
            prev = now;
        }

        let t0 = Instant::now();
        let mut failures = Vec::new();
        let mut before: Option<World> = Some(prev);
        for case in &cases {
            if let Some(setup) = &case.setup {
                before = None;
                if let Err(e) = setup(&ctx) {
                    // A state an earlier case should not have left behind.
                    failures.push(format!("{}: setup failed: {e:#}", case.name));
                    continue;
                }
            }
            let b = match before.take() {
                Some(b) => b,
                None => world(&ctx)?,
            };
            if let Err(e) = run_case(&ctx, case) {
                failures.push(format!("{}: {e:#}", case.name));
            }
            let after = world(&ctx)?;
            let d = diff(&b, &after);
            if !d.is_empty() {
                failures.push(format!("{}: state changed\n{d}", case.name));
            }
            before = Some(after);
            if let Some(cleanup) = &case.cleanup {
                if let Err(e) = cleanup(&ctx) {
                    failures.push(format!("{}: cleanup failed: {e:#}", case.name));
                }
                before = None;
            }
        }
        eprintln!("{} cases in {:?}", cases.len(), t0.elapsed());
        ensure!(
            failures.is_empty(),
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n\n")
        );
        // The live pod still works and is still removable.
        ensure!(lab.ping(lab.node(1), rackline_lab::result_ipv4(&ctx.a_result)?.addr)?);
        lab.cni(Cmd::Del, &ctx.a).run()?.ok()?;
        ensure!(
            lab.link_names(&ctx.a)? == ["lo"],
            "the live pod's links survived its DEL"
        );
        Ok(())
    })
}
