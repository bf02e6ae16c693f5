//! CNI results, rendered in the version the config asks for: 0.3.x/0.4.0
//! carry `"version": "4"` on each IP; 1.x does not; 1.1.0 may carry the
//! interface MTU.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container.
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: Ipv4Network,
    pub gateway: Option<Ipv4Addr>,
    pub interface: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Network,
    pub gw: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
}

pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl CniResult {
    pub fn to_json(&self, cni_version: &str) -> Value {
        let v1 = cni_version.starts_with("1.");
        let with_mtu = cni_version == "1.1.0";
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut o = json!({ "name": i.name, "mac": i.mac });
                if let Some(s) = &i.sandbox {
                    o["sandbox"] = json!(s);
                }
                if let (true, Some(m)) = (with_mtu, i.mtu) {
                    o["mtu"] = json!(m);
                }
                o
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({ "address": ip.address.to_string(), "interface": ip.interface });
                if let Some(g) = ip.gateway {
                    o["gateway"] = json!(g.to_string());
                }
                if !v1 {
                    o["version"] = json!("4");
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = json!({ "dst": r.dst.to_string() });
                if let Some(g) = r.gw {
                    o["gw"] = json!(g.to_string());
                }
                o
            })
            .collect();
        json!({
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": {},
        })
    }

    /// Reads the parts of a prevResult CHECK needs (any supported version).
    pub fn from_prev(v: &Value) -> Result<Self, String> {
        let mut r = CniResult::default();
        for i in v
            .get("interfaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            r.interfaces.push(Interface {
                name: i
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                mac: i
                    .get("mac")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                mtu: i.get("mtu").and_then(Value::as_u64).map(|m| m as u32),
                sandbox: i.get("sandbox").and_then(Value::as_str).map(str::to_string),
            });
        }
        for ip in v.get("ips").and_then(Value::as_array).into_iter().flatten() {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or("prevResult ip without address")?;
            let address: Ipv4Network = addr
                .parse()
                .map_err(|e| format!("prevResult address {addr:?}: {e}"))?;
            let gateway = match ip.get("gateway").and_then(Value::as_str) {
                Some(g) => Some(
                    g.parse()
                        .map_err(|e| format!("prevResult gateway {g:?}: {e}"))?,
                ),
                None => None,
            };
            let interface = ip.get("interface").and_then(Value::as_u64).unwrap_or(0) as usize;
            r.ips.push(IpConfig {
                address,
                gateway,
                interface,
            });
        }
        for rt in v
            .get("routes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let dst = rt
                .get("dst")
                .and_then(Value::as_str)
                .ok_or("prevResult route without dst")?;
            let dst: Ipv4Network = dst
                .parse()
                .map_err(|e| format!("prevResult route {dst:?}: {e}"))?;
            let gw = match rt.get("gw").and_then(Value::as_str) {
                Some(g) => Some(
                    g.parse()
                        .map_err(|e| format!("prevResult route gw {g:?}: {e}"))?,
                ),
                None => None,
            };
            r.routes.push(Route { dst, gw });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                mtu: Some(1500),
                sandbox: Some("/var/run/netns/p".into()),
            }],
            ips: vec![IpConfig {
                address: "10.10.0.64/24".parse().unwrap(),
                gateway: Some("10.10.0.1".parse().unwrap()),
                interface: 0,
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.10.0.1".parse().unwrap()),
            }],
        }
    }

    #[test]
    fn old_versions_carry_ip_version() {
        for v in ["0.3.1", "0.4.0"] {
            let j = sample().to_json(v);
            assert_eq!(j["ips"][0]["version"], "4", "{v}");
            assert_eq!(j["cniVersion"], v);
            assert!(j["interfaces"][0].get("mtu").is_none());
        }
    }

    #[test]
    fn v1_has_no_ip_version_and_1_1_has_mtu() {
        let j = sample().to_json("1.0.0");
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][0].get("mtu").is_none());
        let j = sample().to_json("1.1.0");
        assert_eq!(j["interfaces"][0]["mtu"], 1500);
        assert_eq!(j["ips"][0]["interface"], 0);
        assert_eq!(j["routes"][0]["gw"], "10.10.0.1");
    }

    #[test]
    fn prev_result_round_trips() {
        for v in ["0.4.0", "1.1.0"] {
            let back = CniResult::from_prev(&sample().to_json(v)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.routes, sample().routes);
            assert_eq!(back.interfaces[0].name, "eth0");
        }
    }
}
