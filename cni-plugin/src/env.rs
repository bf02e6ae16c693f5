//! The CNI_* environment, parsed once from the raw process environment into
//! typed values.
//!
//! The runtime passes its whole environment through, so the plugin reads it
//! as `OsString`: a variable that is not UTF-8 is ignored unless it is one of
//! ours, and then it is an invalid environment (code 4), never a panic.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rackline_model::network::validate_ifname;

use crate::error::CniError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

/// The variables the plugin reads; any other is ignored.
const OURS: &[&str] = &[
    "CNI_COMMAND",
    "CNI_CONTAINERID",
    "CNI_NETNS",
    "CNI_IFNAME",
    "CNI_ARGS",
];

/// Longest container id: what ipamd stores and a link alias can carry
/// (hashed beyond, see `names::owner_mark`).
pub const MAX_CONTAINER_ID_LEN: usize = 256;
/// `PATH_MAX` - 1.
const MAX_NETNS_PATH_LEN: usize = 4095;
/// A sanity bound on the whole of CNI_ARGS (unknown keys included); real
/// runtimes send a few hundred bytes.
pub const MAX_CNI_ARGS_LEN: usize = 64 * 1024;
/// Kubernetes' limits: a namespace is a DNS-1123 label, a pod name a
/// DNS-1123 subdomain, a UID a UUID (36) — allowed up to 128 for runtimes
/// that put something else there.
pub const MAX_POD_NAMESPACE_LEN: usize = 63;
pub const MAX_POD_NAME_LEN: usize = 253;
pub const MAX_POD_UID_LEN: usize = 128;

/// A container id as the CNI spec defines it: an alphanumeric character,
/// then alphanumerics, `_`, `.` or `-`; at most 256 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ContainerId(String);

impl ContainerId {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_CONTAINER_ID_LEN {
            return Err(format!(
                "is {} bytes long; 1-{MAX_CONTAINER_ID_LEN} allowed",
                s.len()
            ));
        }
        let mut chars = s.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
        if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
            return Err(
                "must start with a letter or digit and contain only letters, digits, '_', '.' and '-' (the CNI spec's rule)"
                    .into(),
            );
        }
        Ok(Self(s.to_owned()))
    }

    /// What earlier versions of the plugin (and ipamd) accepted: 1-256
    /// bytes, no `/`, no control character. DEL and GC accept these so pods
    /// set up before the spec rule was enforced stay removable.
    pub fn parse_previous(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > MAX_CONTAINER_ID_LEN {
            return Err(format!(
                "is {} bytes long; 1-{MAX_CONTAINER_ID_LEN} allowed",
                s.len()
            ));
        }
        if s.chars().any(|c| c.is_control() || c == '/') {
            return Err("contains '/' or a control character".into());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ContainerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An interface name the kernel accepts (IFNAMSIZ, no `/`, `:`, whitespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn parse(s: &str) -> Result<Self, String> {
        validate_ifname(s).map_err(|e| e.to_string())?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One attachment: what every lease, link mark and spool record is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: ContainerId,
    pub ifname: IfName,
}

/// The pod identity from CNI_ARGS (empty = not given).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Everything CNI_ARGS carries that the plugin uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod: PodArgs,
    /// `IP=`: the address the runtime asks for (podman `--ip`).
    pub ip: Option<Ipv4Addr>,
}

/// The environment of one invocation, validated for its verb.
#[derive(Debug, Clone)]
pub enum CniEnv {
    Add(PodEnv),
    Check(PodEnv),
    Del(DelEnv),
    Gc,
    Status,
    Version,
}

/// ADD and CHECK: everything required.
#[derive(Debug, Clone)]
pub struct PodEnv {
    pub attachment: Attachment,
    pub netns: PathBuf,
    pub args: CniArgs,
}

/// DEL: the netns may be empty (containerd's second DEL); an attachment no
/// ADD could ever have accepted is `None` (DEL then has nothing to remove).
#[derive(Debug, Clone)]
pub struct DelEnv {
    pub attachment: Result<Attachment, String>,
    pub netns: Option<PathBuf>,
}

impl CniEnv {
    pub fn command(&self) -> Command {
        match self {
            CniEnv::Add(_) => Command::Add,
            CniEnv::Check(_) => Command::Check,
            CniEnv::Del(_) => Command::Del,
            CniEnv::Gc => Command::Gc,
            CniEnv::Status => Command::Status,
            CniEnv::Version => Command::Version,
        }
    }
}

fn parse_command(s: &str) -> Result<Command, CniError> {
    Ok(match s {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        "GC" => Command::Gc,
        "STATUS" => Command::Status,
        "VERSION" => Command::Version,
        "" => return Err(CniError::env("CNI_COMMAND is not set")),
        other => {
            return Err(CniError::env(format!(
                "CNI_COMMAND={other:?} is not one of ADD, DEL, CHECK, GC, STATUS, VERSION"
            )))
        }
    })
}

/// Our variables from the raw environment: each at most once, UTF-8.
fn our_vars(raw: &[(OsString, OsString)]) -> Result<[Option<String>; 5], CniError> {
    let mut out: [Option<String>; 5] = Default::default();
    for (k, v) in raw {
        let Some(i) = OURS.iter().position(|o| k.as_bytes() == o.as_bytes()) else {
            continue;
        };
        if out[i].is_some() {
            return Err(CniError::env(format!(
                "{} is set more than once in the environment",
                OURS[i]
            )));
        }
        let s = v.to_str().ok_or_else(|| {
            CniError::env(format!(
                "{} is not valid UTF-8: {:?}",
                OURS[i],
                OsStr::new(v).to_string_lossy()
            ))
        })?;
        out[i] = Some(s.to_owned());
    }
    Ok(out)
}

fn check_netns_path(s: &str) -> Result<PathBuf, CniError> {
    if !s.starts_with('/') {
        return Err(CniError::env(format!(
            "CNI_NETNS={s:?} is not an absolute path"
        )));
    }
    if s.len() > MAX_NETNS_PATH_LEN {
        return Err(CniError::env(format!(
            "CNI_NETNS is {} bytes long; at most {MAX_NETNS_PATH_LEN}",
            s.len()
        )));
    }
    Ok(PathBuf::from(s))
}

impl CniEnv {
    /// Parses and validates the environment for its command. VERSION, GC and
    /// STATUS read only CNI_COMMAND; DEL reads no CNI_ARGS (it must succeed on
    /// anything it can identify).
    pub fn from_os(raw: &[(OsString, OsString)]) -> Result<Self, CniError> {
        let [command, container_id, netns, ifname, args] = our_vars(raw)?;
        let command = parse_command(command.as_deref().unwrap_or(""))?;
        let container_id = container_id.unwrap_or_default();
        let ifname = ifname.unwrap_or_default();
        let netns = netns.unwrap_or_default();
        match command {
            Command::Version => Ok(CniEnv::Version),
            Command::Gc => Ok(CniEnv::Gc),
            Command::Status => Ok(CniEnv::Status),
            Command::Add | Command::Check => {
                let attachment = required_attachment(&container_id, &ifname, true)?;
                if netns.is_empty() {
                    return Err(CniError::env("CNI_NETNS is required for ADD and CHECK"));
                }
                let env = PodEnv {
                    attachment,
                    netns: check_netns_path(&netns)?,
                    args: parse_cni_args(args.as_deref().unwrap_or(""))?,
                };
                Ok(if command == Command::Add {
                    CniEnv::Add(env)
                } else {
                    CniEnv::Check(env)
                })
            }
            Command::Del => {
                if container_id.is_empty() {
                    return Err(CniError::env("CNI_CONTAINERID is required"));
                }
                if ifname.is_empty() {
                    return Err(CniError::env("CNI_IFNAME is required"));
                }
                let netns = if netns.is_empty() {
                    None
                } else {
                    Some(check_netns_path(&netns)?)
                };
                Ok(CniEnv::Del(DelEnv {
                    attachment: required_attachment(&container_id, &ifname, false)
                        .map_err(|e| e.details()),
                    netns,
                }))
            }
        }
    }
}

fn required_attachment(id: &str, ifname: &str, strict: bool) -> Result<Attachment, CniError> {
    if id.is_empty() {
        return Err(CniError::env("CNI_CONTAINERID is required"));
    }
    if ifname.is_empty() {
        return Err(CniError::env("CNI_IFNAME is required"));
    }
    let parsed = if strict {
        ContainerId::parse(id)
    } else {
        ContainerId::parse_previous(id)
    };
    let container_id =
        parsed.map_err(|e| CniError::env(format!("CNI_CONTAINERID {:?} {e}", truncated(id))))?;
    let ifname = IfName::parse(ifname).map_err(|e| CniError::env(format!("CNI_IFNAME: {e}")))?;
    Ok(Attachment {
        container_id,
        ifname,
    })
}

/// At most 80 characters of `s` for messages (a 100 KB value must not fill
/// the runtime's log).
pub fn truncated(s: &str) -> String {
    if s.chars().count() <= 80 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(80).collect::<String>())
    }
}

fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Letters, digits, `_`, `.`, `-`, starting with a letter or digit: a
/// Kubernetes pod name (DNS-1123 subdomain) or a podman container name,
/// which podman 4 sends as K8S_POD_NAME.
fn object_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn uid_ok(s: &str) -> bool {
    s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Parses one requested address: a plain IPv4 address or an address with a
/// prefix length (`10.10.0.70/24`); the prefix is dropped (the network
/// decides it). IPv6 is refused: this version is IPv4 only.
pub fn parse_requested(s: &str) -> Result<Ipv4Addr, String> {
    let t = s.trim();
    let (addr, prefix) = match t.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (t, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", truncated(s)))?;
    let IpAddr::V4(v4) = ip else {
        return Err(format!(
            "{:?} is IPv6; this version of Rackline is IPv4 only",
            truncated(s)
        ));
    };
    if let Some(p) = prefix {
        match p.parse::<u8>() {
            Ok(n) if n <= 32 => {}
            _ => return Err(format!("{:?} has an invalid prefix length", truncated(s))),
        }
    }
    if v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() || v4.is_loopback() {
        return Err(format!("{v4} cannot be a pod's address"));
    }
    Ok(v4)
}

/// Parses `K=V;K=V`. Key order is free and unknown keys are ignored
/// (runtimes add their own, e.g. K8S_POD_INFRA_CONTAINER_ID, IgnoreUnknown).
/// The keys Rackline reads are bounded by Kubernetes' own limits, may appear
/// once, and are refused (code 4) beyond.
pub fn parse_cni_args(s: &str) -> Result<CniArgs, CniError> {
    if s.len() > MAX_CNI_ARGS_LEN {
        return Err(CniError::env(format!(
            "CNI_ARGS is {} bytes long; at most {MAX_CNI_ARGS_LEN}",
            s.len()
        )));
    }
    let mut out = CniArgs::default();
    let mut seen: Vec<&str> = Vec::new();
    for part in s.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(CniError::env(format!(
                "CNI_ARGS entry {:?} is not KEY=VALUE",
                truncated(part)
            )));
        };
        let k = k.trim();
        if !matches!(
            k,
            "K8S_POD_NAMESPACE" | "K8S_POD_NAME" | "K8S_POD_UID" | "IP"
        ) {
            continue;
        }
        if seen.contains(&k) {
            return Err(CniError::env(format!("CNI_ARGS sets {k} more than once")));
        }
        seen.push(k);
        apply_cni_arg(&mut out, k, v)
            .map_err(|why| CniError::env(format!("CNI_ARGS {k}={:?}: {why}", truncated(v))))?;
    }
    Ok(out)
}

/// One of the CNI_ARGS keys Rackline reads, checked and stored; the error
/// says why the value is refused.
fn apply_cni_arg(out: &mut CniArgs, k: &str, v: &str) -> Result<(), String> {
    match k {
        "K8S_POD_NAMESPACE" => {
            if v.len() > MAX_POD_NAMESPACE_LEN {
                return Err(format!(
                    "{} bytes; a Kubernetes namespace has at most {MAX_POD_NAMESPACE_LEN}",
                    v.len()
                ));
            }
            if !v.is_empty() && !dns_label(v) {
                return Err("not a DNS-1123 label (lowercase letters, digits, '-')".into());
            }
            out.pod.namespace = v.to_owned();
        }
        "K8S_POD_NAME" => {
            if v.len() > MAX_POD_NAME_LEN {
                return Err(format!(
                    "{} bytes; a Kubernetes pod name has at most {MAX_POD_NAME_LEN}",
                    v.len()
                ));
            }
            if !v.is_empty() && !object_name(v) {
                return Err(
                    "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'".into(),
                );
            }
            out.pod.name = v.to_owned();
        }
        "K8S_POD_UID" => {
            if v.len() > MAX_POD_UID_LEN {
                return Err(format!("{} bytes; at most {MAX_POD_UID_LEN}", v.len()));
            }
            if !uid_ok(v) {
                return Err("only letters, digits, '_', '.' and '-' are allowed".into());
            }
            out.pod.uid = v.to_owned();
        }
        _ => {
            // "IP": one address, or a comma list (the host-local
            // convention) holding at most one IPv4 address.
            let mut ips: Vec<Ipv4Addr> = Vec::new();
            for item in v.split(',').filter(|i| !i.trim().is_empty()) {
                let ip = parse_requested(item)?;
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            if ips.len() > 1 {
                return Err(format!(
                    "{} IPv4 addresses; an attachment has exactly one",
                    ips.len()
                ));
            }
            out.ip = ips.first().copied();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStringExt;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn add_vars() -> Vec<(OsString, OsString)> {
        vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ])
    }

    #[test]
    fn cni_args_in_any_order_with_unknown_keys() {
        let a = parse_cni_args(
            "K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-w;K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .unwrap();
        assert_eq!(
            a.pod,
            PodArgs {
                namespace: "default".into(),
                name: "pod-w".into(),
                uid: "u-1".into()
            }
        );
        let b = parse_cni_args("K8S_POD_NAME=x;;FOO=bar=baz;K8S_POD_NAMESPACE=ns;").unwrap();
        assert_eq!(b.pod.name, "x");
        assert_eq!(b.pod.namespace, "ns");
        assert_eq!(parse_cni_args("").unwrap(), CniArgs::default());
        assert_eq!(parse_cni_args("K8S_POD_NAME").unwrap_err().code(), 4);
        // podman sends its container name, which may hold uppercase and '_'.
        assert_eq!(
            parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=My_app.1")
                .unwrap()
                .pod
                .name,
            "My_app.1"
        );
    }

    #[test]
    fn cni_args_are_bounded_by_kubernetes_limits() {
        let ok = format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
            "n".repeat(63),
            "p".repeat(253),
            "u".repeat(128)
        );
        parse_cni_args(&ok).unwrap();
        for bad in [
            format!("K8S_POD_NAMESPACE={}", "n".repeat(64)),
            format!("K8S_POD_NAME={}", "p".repeat(254)),
            format!("K8S_POD_NAME={}", "p".repeat(100_000)),
            format!("K8S_POD_UID={}", "u".repeat(129)),
            "K8S_POD_NAMESPACE=Default".into(),
            "K8S_POD_NAMESPACE=-ns".into(),
            "K8S_POD_NAME=a\u{1}b".into(),
            "K8S_POD_NAME=-x".into(),
            "K8S_POD_NAME=a b".into(),
            "K8S_POD_UID=a/b".into(),
            "K8S_POD_NAME=a;K8S_POD_NAME=b".into(),
            format!("X={}", "x".repeat(MAX_CNI_ARGS_LEN)),
        ] {
            let e = parse_cni_args(&bad).unwrap_err();
            assert_eq!(e.code(), 4, "{bad:.80}: {e}");
            assert!(e.to_string().len() < 400, "message not bounded: {e}");
        }
    }

    #[test]
    fn requested_ip_from_cni_args() {
        let a = parse_cni_args("IP=10.10.0.70").unwrap();
        assert_eq!(a.ip, Some(Ipv4Addr::new(10, 10, 0, 70)));
        let a = parse_cni_args("IP=10.10.0.70/24,10.10.0.70").unwrap();
        assert_eq!(a.ip, Some(Ipv4Addr::new(10, 10, 0, 70)));
        assert_eq!(parse_cni_args("IP=").unwrap().ip, None);
        for bad in [
            "IP=10.10.0.70,10.10.0.71",
            "IP=fd00::1",
            "IP=nope",
            "IP=10.10.0.70/33",
            "IP=0.0.0.0",
            "IP=255.255.255.255",
            "IP=224.0.0.1",
            "IP=127.0.0.1",
            "IP=1;IP=2",
        ] {
            assert_eq!(parse_cni_args(bad).unwrap_err().code(), 4, "{bad}");
        }
    }

    #[test]
    fn add_requires_its_variables() {
        let ok = add_vars();
        assert_eq!(CniEnv::from_os(&ok).unwrap().command(), Command::Add);
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let v: Vec<_> = ok.iter().filter(|(k, _)| k != missing).cloned().collect();
            let e = CniEnv::from_os(&v).unwrap_err();
            assert_eq!(e.code(), 4, "{missing}");
            assert!(e.to_string().contains(missing), "{e} should name {missing}");
        }
        for (k, v) in [
            ("CNI_IFNAME", "a-very-long-ifname"),
            ("CNI_CONTAINERID", "c\u{1}1"),
            ("CNI_CONTAINERID", "c/1"),
            ("CNI_CONTAINERID", "-c1"),
            ("CNI_CONTAINERID", "c 1"),
            ("CNI_NETNS", "relative/path"),
        ] {
            let mut bad: Vec<_> = ok.iter().filter(|(key, _)| key != k).cloned().collect();
            bad.push((k.into(), v.into()));
            assert_eq!(CniEnv::from_os(&bad).unwrap_err().code(), 4, "{k}={v:?}");
        }
        let long: String = "a".repeat(257);
        let mut bad: Vec<_> = ok
            .iter()
            .filter(|(k, _)| k != "CNI_CONTAINERID")
            .cloned()
            .collect();
        bad.push(("CNI_CONTAINERID".into(), long.into()));
        assert_eq!(CniEnv::from_os(&bad).unwrap_err().code(), 4);
    }

    #[test]
    fn non_utf8_is_ignored_unless_ours() {
        let mut v = add_vars();
        v.push((OsString::from("JUNK"), OsString::from_vec(vec![0xff, 0xfe])));
        v.push((OsString::from_vec(vec![0xff]), OsString::from("x")));
        assert_eq!(CniEnv::from_os(&v).unwrap().command(), Command::Add);
        for k in [
            "CNI_COMMAND",
            "CNI_CONTAINERID",
            "CNI_NETNS",
            "CNI_IFNAME",
            "CNI_ARGS",
        ] {
            let mut bad: Vec<_> = add_vars().into_iter().filter(|(key, _)| key != k).collect();
            bad.push((k.into(), OsString::from_vec(b"a\xffb".to_vec())));
            let e = CniEnv::from_os(&bad).unwrap_err();
            assert_eq!(e.code(), 4, "{k}");
            assert!(e.to_string().contains("UTF-8"), "{e}");
        }
    }

    #[test]
    fn duplicated_variables_are_refused() {
        let mut v = add_vars();
        v.push(("CNI_IFNAME".into(), "net1".into()));
        assert_eq!(CniEnv::from_os(&v).unwrap_err().code(), 4);
    }

    #[test]
    fn del_tolerates_empty_netns_and_never_added_ids() {
        let v = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
            // DEL does not read CNI_ARGS.
            ("CNI_ARGS", "K8S_POD_NAME=a;K8S_POD_NAME=b"),
        ]);
        let CniEnv::Del(d) = CniEnv::from_os(&v).unwrap() else {
            panic!()
        };
        assert!(d.netns.is_none());
        assert_eq!(d.attachment.unwrap().container_id.as_str(), "c1");
        // An id an earlier version accepted (space) is still deletable...
        let v = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "old id"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let CniEnv::Del(d) = CniEnv::from_os(&v).unwrap() else {
            panic!()
        };
        assert!(d.attachment.is_ok());
        // ...one nothing ever accepted is "never added".
        let v = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "a\u{7}b"),
            ("CNI_IFNAME", "eth0"),
        ]);
        let CniEnv::Del(d) = CniEnv::from_os(&v).unwrap() else {
            panic!()
        };
        assert!(d.attachment.is_err());
    }

    #[test]
    fn version_needs_nothing_else() {
        let v = vars(&[("CNI_COMMAND", "VERSION")]);
        assert_eq!(CniEnv::from_os(&v).unwrap().command(), Command::Version);
        let v = vars(&[("CNI_COMMAND", "FROB")]);
        assert_eq!(CniEnv::from_os(&v).unwrap_err().code(), 4);
    }
}
