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
    /// Index into `interfaces`; `None` = not tied to one (the spec's field is optional).
    pub interface: Option<usize>,
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
                let mut o = json!({ "address": ip.address.to_string() });
                if let Some(i) = ip.interface {
                    o["interface"] = json!(i);
                }
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
    /// Every value must have its documented JSON type: a prevResult that is
    /// not a result is invalid input (code 7 at the caller), not a CHECK
    /// failure.
    pub fn from_prev(v: &Value) -> Result<Self, String> {
        let obj = v
            .as_object()
            .ok_or_else(|| format!("must be an object, not {}", kind(v)))?;
        let mut r = CniResult::default();
        for i in array(obj, "interfaces")? {
            let i = i
                .as_object()
                .ok_or_else(|| format!("interfaces[] must be objects, not {}", kind(i)))?;
            r.interfaces.push(Interface {
                name: string(i, "interfaces[].name")?.unwrap_or_default(),
                mac: string(i, "interfaces[].mac")?.unwrap_or_default(),
                mtu: match i.get("mtu") {
                    None | Some(Value::Null) => None,
                    Some(m) => Some(
                        m.as_u64()
                            .and_then(|m| u32::try_from(m).ok())
                            .ok_or("interfaces[].mtu must be an unsigned 32-bit integer")?,
                    ),
                },
                sandbox: string(i, "interfaces[].sandbox")?,
            });
        }
        for ip in array(obj, "ips")? {
            let ip = prev_ip(ip, r.interfaces.len())?;
            r.ips.push(ip);
        }
        for rt in array(obj, "routes")? {
            let rt = rt
                .as_object()
                .ok_or_else(|| format!("routes[] must be objects, not {}", kind(rt)))?;
            let dst = string(rt, "routes[].dst")?.ok_or("route without dst")?;
            let dst: Ipv4Network = dst.parse().map_err(|e| format!("route {dst:?}: {e}"))?;
            let gw = match string(rt, "routes[].gw")? {
                Some(g) => Some(g.parse().map_err(|e| format!("route gw {g:?}: {e}"))?),
                None => None,
            };
            r.routes.push(Route { dst, gw });
        }
        Ok(r)
    }
}

/// One `ips[]` entry of a prevResult; `interfaces` is how many the result
/// lists, for the entry's `interface` index.
fn prev_ip(ip: &Value, interfaces: usize) -> Result<IpConfig, String> {
    let ip = ip
        .as_object()
        .ok_or_else(|| format!("ips[] must be objects, not {}", kind(ip)))?;
    let addr = string(ip, "ips[].address")?.ok_or("ips[] without address")?;
    let address: Ipv4Network = addr.parse().map_err(|e| format!("address {addr:?}: {e}"))?;
    let gateway = match string(ip, "ips[].gateway")? {
        Some(g) => Some(g.parse().map_err(|e| format!("gateway {g:?}: {e}"))?),
        None => None,
    };
    let interface = match ip.get("interface") {
        None | Some(Value::Null) => None,
        Some(n) => {
            let i = n
                .as_u64()
                .and_then(|i| usize::try_from(i).ok())
                .ok_or("ips[].interface must be an unsigned integer")?;
            if i >= interfaces {
                return Err(format!(
                    "ips[].interface {i} points past the {interfaces} interfaces"
                ));
            }
            Some(i)
        }
    };
    Ok(IpConfig {
        address,
        gateway,
        interface,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn array<'a>(o: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match o.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(v) => Err(format!("{key} must be an array, not {}", kind(v))),
    }
}

fn string(o: &serde_json::Map<String, Value>, what: &str) -> Result<Option<String>, String> {
    let key = what.rsplit('.').next().unwrap_or(what);
    match o.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(format!("{what} must be a string, not {}", kind(v))),
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
                interface: Some(0),
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
    fn prev_result_of_the_wrong_shape_is_an_error() {
        for bad in [
            json!("x"),
            json!([1]),
            json!(5),
            json!({"ips": {"address": "10.0.0.1/24"}}),
            json!({"ips": ["10.0.0.1/24"]}),
            json!({"ips": [{"address": 5}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "interface": -1}], "interfaces": [{}]}),
            json!({"ips": [{"address": "10.0.0.1/24", "interface": 1}], "interfaces": [{}]}),
            json!({"interfaces": [{"name": 3}]}),
            json!({"interfaces": [{"mtu": "1500"}]}),
            json!({"routes": [{"gw": "10.0.0.1"}]}),
            json!({"routes": "default"}),
        ] {
            assert!(CniResult::from_prev(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            CniResult::from_prev(&json!({})).unwrap(),
            CniResult::default()
        );
        // `interface` is optional: absent stays absent through a round trip (found by the
        // prev_result fuzz target: it used to come back as index 0 into no interfaces).
        let r = CniResult::from_prev(&json!({"ips": [{"address": "10.0.0.1/24"}]})).unwrap();
        assert_eq!(r.ips[0].interface, None);
        let back = CniResult::from_prev(&r.to_json("1.1.0")).unwrap();
        assert_eq!(back, r);
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
