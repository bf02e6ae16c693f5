//! The CNI_* environment, parsed once into a typed struct.

use std::collections::HashMap;

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

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodArgs {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    /// Empty on containerd's second DEL (RemovePodSandbox).
    pub netns: String,
    pub ifname: String,
    pub pod: PodArgs,
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

/// Parses `K=V;K=V`. Key order is free and unknown keys are ignored (runtimes
/// add their own, e.g. K8S_POD_INFRA_CONTAINER_ID); only malformed pairs fail.
pub fn parse_cni_args(s: &str) -> Result<PodArgs, CniError> {
    let mut pod = PodArgs::default();
    for part in s.split(';') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(CniError::env(format!(
                "CNI_ARGS entry {part:?} is not KEY=VALUE"
            )));
        };
        match k.trim() {
            "K8S_POD_NAMESPACE" => pod.namespace = v.to_string(),
            "K8S_POD_NAME" => pod.name = v.to_string(),
            "K8S_POD_UID" => pod.uid = v.to_string(),
            _ => {}
        }
    }
    Ok(pod)
}

impl CniEnv {
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Self, CniError> {
        let get = |k: &str| vars.get(k).map(String::as_str).unwrap_or("");
        let command = parse_command(get("CNI_COMMAND"))?;
        let env = CniEnv {
            command,
            container_id: get("CNI_CONTAINERID").to_string(),
            netns: get("CNI_NETNS").to_string(),
            ifname: get("CNI_IFNAME").to_string(),
            pod: parse_cni_args(get("CNI_ARGS"))?,
        };
        match command {
            Command::Add | Command::Check => {
                env.require_attachment()?;
                if env.netns.is_empty() {
                    return Err(CniError::env("CNI_NETNS is required for ADD and CHECK"));
                }
            }
            Command::Del => env.require_attachment()?,
            Command::Gc | Command::Status | Command::Version => {}
        }
        Ok(env)
    }

    fn require_attachment(&self) -> Result<(), CniError> {
        if self.container_id.is_empty() {
            return Err(CniError::env("CNI_CONTAINERID is required"));
        }
        if self.container_id.len() > 256 || self.container_id.contains('/') {
            return Err(CniError::env(format!(
                "CNI_CONTAINERID {:?} is longer than 256 characters or contains '/'",
                self.container_id
            )));
        }
        if self.ifname.is_empty() {
            return Err(CniError::env("CNI_IFNAME is required"));
        }
        validate_ifname(&self.ifname).map_err(|e| CniError::env(format!("CNI_IFNAME: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cni_args_in_any_order_with_unknown_keys() {
        let a = parse_cni_args(
            "K8S_POD_UID=u-1;IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-w;K8S_POD_INFRA_CONTAINER_ID=abc",
        )
        .unwrap();
        assert_eq!(
            a,
            PodArgs {
                namespace: "default".into(),
                name: "pod-w".into(),
                uid: "u-1".into()
            }
        );
        let b = parse_cni_args("K8S_POD_NAME=x;;FOO=bar=baz;K8S_POD_NAMESPACE=ns;").unwrap();
        assert_eq!(b.name, "x");
        assert_eq!(b.namespace, "ns");
        assert_eq!(parse_cni_args("").unwrap(), PodArgs::default());
        assert_eq!(parse_cni_args("K8S_POD_NAME").unwrap_err().code, 4);
    }

    #[test]
    fn add_requires_its_variables() {
        let ok = vars(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(CniEnv::from_map(&ok).unwrap().command, Command::Add);
        for missing in ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"] {
            let mut v = ok.clone();
            v.remove(missing);
            let e = CniEnv::from_map(&v).unwrap_err();
            assert_eq!(e.code, 4, "{missing}");
            assert!(e.to_string().contains(missing), "{e} should name {missing}");
        }
        let mut long = ok.clone();
        long.insert("CNI_IFNAME".into(), "a-very-long-ifname".into());
        assert_eq!(CniEnv::from_map(&long).unwrap_err().code, 4);
    }

    #[test]
    fn del_tolerates_empty_netns() {
        let v = vars(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", ""),
            ("CNI_IFNAME", "eth0"),
        ]);
        let e = CniEnv::from_map(&v).unwrap();
        assert!(e.netns.is_empty());
    }

    #[test]
    fn version_needs_nothing_else() {
        let v = vars(&[("CNI_COMMAND", "VERSION")]);
        assert_eq!(CniEnv::from_map(&v).unwrap().command, Command::Version);
        let v = vars(&[("CNI_COMMAND", "FROB")]);
        assert_eq!(CniEnv::from_map(&v).unwrap_err().code, 4);
    }
}
