//! IPv4 policy-routing rules (`ip rule`): "traffic from this source looks up that table". The
//! plugin gives each additional attachment of a pod its own table and a rule for its address,
//! so replies leave through the attachment they belong to.

use ipnetwork::Ipv4Network;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::socket::Netlink;

/// `from <src> lookup <table> priority <priority>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleSpec {
    pub src: Ipv4Network,
    pub table: u32,
    pub priority: u32,
}

/// One IPv4 rule as the kernel reports it (only the fields we act on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleInfo {
    pub src: Option<Ipv4Network>,
    pub table: u32,
    pub priority: u32,
    /// `FR_ACT_*`: 1 = to table.
    pub action: u8,
}

impl RuleInfo {
    pub fn from_message(msg: &RuleMessage) -> Option<Self> {
        if msg.header.family != AddressFamily::Inet {
            return None;
        }
        let mut src = None;
        let mut table = u32::from(msg.header.table);
        let mut priority = 0;
        for a in &msg.attributes {
            match a {
                RuleAttribute::Source(std::net::IpAddr::V4(ip)) => {
                    src = Ipv4Network::new(*ip, msg.header.src_len).ok()
                }
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Priority(p) => priority = *p,
                _ => {}
            }
        }
        Some(Self {
            src,
            table,
            priority,
            action: msg.header.action.into(),
        })
    }

    /// Whether this is exactly the rule `spec` describes.
    pub fn is(&self, spec: &RuleSpec) -> bool {
        self.src == Some(spec.src)
            && self.table == spec.table
            && self.priority == spec.priority
            && self.action == u8::from(RuleAction::ToTable)
    }
}

fn rule_message(r: &RuleSpec) -> RuleMessage {
    let mut msg = RuleMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.src_len = r.src.prefix();
    // Tables above 255 only fit in FRA_TABLE; the header says "unspec" (iproute2 does the same).
    msg.header.table = 0;
    msg.header.action = RuleAction::ToTable;
    msg.attributes
        .push(RuleAttribute::Source(std::net::IpAddr::V4(r.src.network())));
    msg.attributes.push(RuleAttribute::Table(r.table));
    msg.attributes.push(RuleAttribute::Priority(r.priority));
    msg
}

pub fn add_rule_request(r: &RuleSpec) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewRule(rule_message(r))
}

pub fn del_rule_request(r: &RuleSpec) -> RouteNetlinkMessage {
    RouteNetlinkMessage::DelRule(rule_message(r))
}

fn describe(r: &RuleSpec) -> String {
    format!("from {} lookup {} priority {}", r.src, r.table, r.priority)
}

impl Netlink {
    /// Adds a rule; `EEXIST` when exactly that rule exists.
    pub fn add_rule(&mut self, r: &RuleSpec) -> Result<()> {
        self.execute(
            "add rule",
            &describe(r),
            add_rule_request(r),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes exactly that rule; `ENOENT` (`is_not_found()`) when absent.
    pub fn del_rule(&mut self, r: &RuleSpec) -> Result<()> {
        self.execute("delete rule", &describe(r), del_rule_request(r), 0)
            .map(drop)
    }

    /// The IPv4 rules of this namespace.
    pub fn rules(&mut self) -> Result<Vec<RuleInfo>> {
        let mut msg = RuleMessage::default();
        msg.header.family = AddressFamily::Inet;
        let replies = self.dump("dump rules", RouteNetlinkMessage::GetRule(msg))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRule(r) => RuleInfo::from_message(r),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_request_attributes_and_round_trip() {
        let spec = RuleSpec {
            src: "10.10.0.70/32".parse().unwrap(),
            table: 0x8000_1234,
            priority: 1000,
        };
        let RouteNetlinkMessage::NewRule(msg) = add_rule_request(&spec) else {
            panic!()
        };
        assert_eq!(msg.header.src_len, 32);
        assert_eq!(msg.header.table, 0);
        assert_eq!(msg.header.action, RuleAction::ToTable);
        assert_eq!(
            msg.attributes,
            vec![
                RuleAttribute::Source("10.10.0.70".parse().unwrap()),
                RuleAttribute::Table(0x8000_1234),
                RuleAttribute::Priority(1000),
            ]
        );
        let info = RuleInfo::from_message(&msg).unwrap();
        assert!(info.is(&spec));
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
        let req = del_rule_request(&spec);
        let bytes = crate::socket::serialize(req.clone(), 0x405, 1);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(parsed.payload, NetlinkPayload::InnerMessage(req));
    }
}
