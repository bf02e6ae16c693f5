//! Traffic control: the [`Netlink`] verbs per-pod QoS needs (a tbf shaper,
//! the ingress qdisc, a match-all u32 filter redirecting to an ifb) and a
//! typed view of the qdisc and filter dumps for CHECK. Pure request
//! builders live in `tc/request.rs` (re-exported here).

mod request;

use netlink_packet_core::{Nla, NlasIterator, NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcActionAttribute, TcActionMirrorOption, TcActionOption, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirrorActionType, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;

pub use self::request::*;

use crate::error::{NetlinkError, Result};
use crate::socket::Netlink;

/// One qdisc as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QdiscInfo {
    pub index: u32,
    pub kind: String,
    pub handle: TcHandle,
    pub parent: TcHandle,
    /// tbf parameters when `kind == "tbf"`; `burst` recovered from the
    /// dumped `buffer` ticks (the kernel does not echo `TCA_TBF_BURST`).
    pub tbf: Option<Tbf>,
}

/// One filter as dumped by the kernel (only what CHECK needs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterInfo {
    pub kind: String,
    /// The u32 selector has exactly one key with mask 0 (matches all).
    pub matches_all: bool,
    /// ifindex of a mirred egress redirect among the filter's actions.
    pub redirect_to: Option<u32>,
}

impl QdiscInfo {
    pub fn from_message(msg: &TcMessage) -> Option<Self> {
        let kind = msg.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })?;
        let tbf = if kind == "tbf" {
            msg.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(opts) => parse_tbf(opts),
                _ => None,
            })
        } else {
            None
        };
        Some(Self {
            index: u32::try_from(msg.header.index).ok()?,
            kind,
            handle: msg.header.handle,
            parent: msg.header.parent,
            tbf,
        })
    }
}

/// netlink-packet-route has no tbf type, so the dumped `TCA_OPTIONS`
/// arrives as one opaque attribute; walk its nested attributes ourselves.
fn parse_tbf(opts: &[TcOption]) -> Option<Tbf> {
    let mut nested = Vec::new();
    for o in opts {
        let mut v = vec![0u8; o.value_len()];
        o.emit_value(&mut v);
        nested.extend_from_slice(&v);
    }
    let mut qopt: Option<Vec<u8>> = None;
    let mut rate64: Option<u64> = None;
    for nla in NlasIterator::new(&nested[..]).flatten() {
        match nla.kind() {
            TCA_TBF_PARMS => qopt = Some(nla.value().to_vec()),
            TCA_TBF_RATE64 => rate64 = nla.value().try_into().ok().map(u64::from_ne_bytes),
            _ => {}
        }
    }
    let q = qopt.filter(|q| q.len() >= 36)?;
    let u32_at = |o: usize| u32::from_ne_bytes(q[o..o + 4].try_into().expect("4 bytes"));
    let rate = rate64.unwrap_or(u64::from(u32_at(8)));
    let burst = Tbf::burst_from_ticks(rate, u32_at(28));
    Some(Tbf {
        rate,
        burst: u32::try_from(burst).unwrap_or(u32::MAX),
        limit: u32_at(24),
    })
}

impl FilterInfo {
    pub fn from_message(msg: &TcMessage) -> Option<Self> {
        let kind = msg.attributes.iter().find_map(|a| match a {
            TcAttribute::Kind(k) => Some(k.clone()),
            _ => None,
        })?;
        let mut info = FilterInfo {
            kind,
            matches_all: false,
            redirect_to: None,
        };
        // The kernel dumps the filter's root hash table too (no options):
        // only entries with options describe a rule.
        let opts = msg.attributes.iter().find_map(|a| match a {
            TcAttribute::Options(o) => Some(o),
            _ => None,
        })?;
        for o in opts {
            match o {
                TcOption::U32(TcFilterU32Option::Selector(sel)) => {
                    info.matches_all = sel.keys.len() == 1 && sel.keys[0].mask == 0;
                }
                TcOption::U32(TcFilterU32Option::Action(actions)) => {
                    for attr in actions.iter().flat_map(|a| &a.attributes) {
                        let TcActionAttribute::Options(aopts) = attr else {
                            continue;
                        };
                        for ao in aopts {
                            if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = ao {
                                if m.eaction == TcMirrorActionType::EgressRedir {
                                    info.redirect_to = Some(m.ifindex);
                                }
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Some(info)
    }
}

fn target(index: u32) -> String {
    format!("ifindex {index}")
}

impl Netlink {
    /// Root tbf on `index`. Fails with `EEXIST` if a root qdisc other than
    /// the device default is already there.
    pub fn add_tbf(&mut self, index: u32, tbf: &Tbf) -> Result<()> {
        if tbf.rate == 0 || tbf.burst == 0 {
            return Err(NetlinkError::InvalidArgument(format!(
                "tbf needs a rate and a burst, got {tbf:?}"
            )));
        }
        self.execute(
            "add tbf qdisc",
            &target(index),
            tbf_qdisc_request(index, tbf),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        self.execute(
            "add ingress qdisc",
            &target(index),
            ingress_qdisc_request(index),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Deletes the root or ingress qdisc (and with it its filters). `ENOENT`
    /// / `EINVAL` when there is none: callers on DEL paths ignore them.
    pub fn delete_qdisc(&mut self, index: u32, slot: QdiscSlot) -> Result<()> {
        self.execute(
            "delete qdisc",
            &target(index),
            delete_qdisc_request(index, slot),
            0,
        )
        .map(drop)
    }

    /// Redirects every frame arriving on `index` to `to` (see
    /// [`redirect_filter_request`]). Needs the ingress qdisc first.
    pub fn add_ingress_redirect(&mut self, index: u32, to: u32) -> Result<()> {
        self.execute(
            "add ingress redirect filter",
            &target(index),
            redirect_filter_request(index, to),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Qdiscs of `index` in this namespace (the kernel dumps every device's;
    /// filtered here).
    pub fn qdiscs(&mut self, index: u32) -> Result<Vec<QdiscInfo>> {
        let replies = self.dump("dump qdiscs", dump_qdiscs_request())?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewQueueDiscipline(q) => QdiscInfo::from_message(q),
                _ => None,
            })
            .filter(|q| q.index == index)
            .collect())
    }

    /// Filters under the ingress qdisc of `index` that carry options.
    pub fn ingress_filters(&mut self, index: u32) -> Result<Vec<FilterInfo>> {
        let replies = self.dump("dump filters", dump_filters_request(index, INGRESS_HANDLE))?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) => FilterInfo::from_message(f),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tbf_dump_is_parsed_back() {
        let tbf = Tbf {
            rate: 25_000_000,
            burst: 250_000,
            limit: 875_000,
        };
        // What the kernel dumps: the request's options re-parsed the way
        // netlink-packet-route parses an unknown kind (one opaque NLA).
        let RouteNetlinkMessage::NewQueueDiscipline(req) = tbf_qdisc_request(5, &tbf) else {
            panic!()
        };
        let bytes = crate::socket::serialize(RouteNetlinkMessage::NewQueueDiscipline(req), 0, 1);
        let parsed =
            netlink_packet_core::NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes)
                .unwrap();
        let netlink_packet_core::NetlinkPayload::InnerMessage(
            RouteNetlinkMessage::NewQueueDiscipline(m),
        ) = parsed.payload
        else {
            panic!()
        };
        let q = QdiscInfo::from_message(&m).unwrap();
        assert_eq!((q.index, q.kind.as_str()), (5, "tbf"));
        assert_eq!(q.tbf, Some(tbf));
    }

    #[test]
    fn filter_dump_finds_the_redirect() {
        let RouteNetlinkMessage::NewTrafficFilter(m) = redirect_filter_request(4, 9) else {
            panic!()
        };
        let f = FilterInfo::from_message(&m).unwrap();
        assert_eq!(
            f,
            FilterInfo {
                kind: "u32".into(),
                matches_all: true,
                redirect_to: Some(9)
            }
        );
        // A root hash-table entry without options is not a rule.
        let mut bare = TcMessage::with_index(4);
        bare.attributes.push(TcAttribute::Kind("u32".into()));
        assert!(FilterInfo::from_message(&bare).is_none());
    }
}
