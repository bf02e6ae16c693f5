//! Pure builders for the traffic-control requests QoS needs, unit-tested on
//! exact attributes and bytes without root.
//!
//! netlink-packet-route 0.34 types `ingress`, `u32` and `mirred` (used
//! here) but not `tbf`: its options are built from raw attributes below,
//! laid out as `struct tc_tbf_qopt` in `<linux/pkt_sched.h>` (native
//! endian, like every tc struct).

use netlink_packet_core::DefaultNla;
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute,
    TcFilterU32Option, TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key,
    TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

pub const TCA_TBF_PARMS: u16 = 1;
pub const TCA_TBF_RATE64: u16 = 4;
pub const TCA_TBF_BURST: u16 = 6;
/// `TC_LINKLAYER_ETHERNET`: with the link layer stated the kernel needs no
/// legacy 1 KiB rate table (`TCA_TBF_RTAB`); it computes transmit times
/// from the rate itself (`psched_ratecfg_precompute`).
const TC_LINKLAYER_ETHERNET: u8 = 1;
/// `PSCHED_SHIFT`: one psched tick is 64 ns (`PSCHED_TICKS2NS`).
const PSCHED_SHIFT: u32 = 6;
/// `htons(ETH_P_ALL)` in the low 16 bits of `tcm_info`: every protocol.
const ETH_P_ALL_BE: u32 = 0x0003_u16.to_be() as u32;
/// Priority of our single ingress filter.
pub const REDIRECT_PRIO: u32 = 1;

/// The handle of our root tbf (`1:`).
pub const TBF_HANDLE: TcHandle = TcHandle { major: 1, minor: 0 };
/// The handle of the ingress qdisc (`ffff:`), and the parent of its filters.
pub const INGRESS_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// A token bucket filter, in the kernel's units (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tbf {
    /// bytes per second.
    pub rate: u64,
    /// bucket size in bytes (`max_size`: the largest packet that can pass).
    pub burst: u32,
    /// bytes that may wait in the queue behind the bucket.
    pub limit: u32,
}

impl Tbf {
    /// `buffer` in psched ticks: the time the burst takes at the rate. The
    /// kernel recomputes it from `TCA_TBF_BURST`, but dumps report it, and
    /// older kernels read only this field.
    pub fn buffer_ticks(&self) -> u32 {
        let ns = u128::from(self.burst) * 1_000_000_000 / u128::from(self.rate.max(1));
        u32::try_from(ns >> PSCHED_SHIFT).unwrap_or(u32::MAX)
    }

    /// Burst in bytes recovered from dumped `buffer` ticks (inverse of
    /// [`Tbf::buffer_ticks`], exact to one tick of the rate).
    pub fn burst_from_ticks(rate: u64, ticks: u32) -> u64 {
        let ns = u128::from(ticks) << PSCHED_SHIFT;
        (ns * u128::from(rate) / 1_000_000_000) as u64
    }
}

/// `struct tc_ratespec` (12 bytes).
fn ratespec(rate: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[1] = TC_LINKLAYER_ETHERNET;
    // Rates of 4 GB/s and more travel in TCA_TBF_RATE64; iproute2 puts ~0 here.
    let r32 = u32::try_from(rate).unwrap_or(u32::MAX);
    b[8..12].copy_from_slice(&r32.to_ne_bytes());
    b
}

/// `struct tc_tbf_qopt`: rate, peakrate, limit, buffer, mtu (36 bytes).
pub fn tbf_qopt_bytes(t: &Tbf) -> Vec<u8> {
    let mut v = Vec::with_capacity(36);
    v.extend_from_slice(&ratespec(t.rate));
    v.extend_from_slice(&[0u8; 12]); // no peak rate
    v.extend_from_slice(&t.limit.to_ne_bytes());
    v.extend_from_slice(&t.buffer_ticks().to_ne_bytes());
    v.extend_from_slice(&0u32.to_ne_bytes()); // mtu: only with a peak rate
    v
}

fn tc_message(index: u32, handle: TcHandle, parent: TcHandle) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = handle;
    msg.header.parent = parent;
    msg
}

/// `tc qdisc add dev <index> root handle 1: tbf rate .. burst .. limit ..`.
pub fn tbf_qdisc_request(index: u32, tbf: &Tbf) -> RouteNetlinkMessage {
    let mut msg = tc_message(index, TBF_HANDLE, TcHandle::ROOT);
    let mut opts = vec![TcOption::Other(DefaultNla::new(
        TCA_TBF_PARMS,
        tbf_qopt_bytes(tbf),
    ))];
    if tbf.rate >= 1 << 32 {
        opts.push(TcOption::Other(DefaultNla::new(
            TCA_TBF_RATE64,
            tbf.rate.to_ne_bytes().to_vec(),
        )));
    }
    opts.push(TcOption::Other(DefaultNla::new(
        TCA_TBF_BURST,
        tbf.burst.to_ne_bytes().to_vec(),
    )));
    msg.attributes.push(TcAttribute::Kind("tbf".into()));
    msg.attributes.push(TcAttribute::Options(opts));
    RouteNetlinkMessage::NewQueueDiscipline(msg)
}

/// `tc qdisc add dev <index> handle ffff: ingress`.
pub fn ingress_qdisc_request(index: u32) -> RouteNetlinkMessage {
    let mut msg = tc_message(index, INGRESS_HANDLE, TcHandle::INGRESS);
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    RouteNetlinkMessage::NewQueueDiscipline(msg)
}

/// Which qdisc slot of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QdiscSlot {
    Root,
    Ingress,
}

/// `tc qdisc del dev <index> root|ingress`.
pub fn delete_qdisc_request(index: u32, slot: QdiscSlot) -> RouteNetlinkMessage {
    let parent = match slot {
        QdiscSlot::Root => TcHandle::ROOT,
        QdiscSlot::Ingress => TcHandle::INGRESS,
    };
    RouteNetlinkMessage::DelQueueDiscipline(tc_message(index, TcHandle::UNSPEC, parent))
}

pub fn dump_qdiscs_request() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default())
}

/// `tc filter add dev <index> parent ffff: protocol all prio 1 u32 match
/// u32 0 0 action mirred egress redirect dev <target>`: every frame that
/// arrives on `index` leaves through `target` (the ifb carrying the
/// ingress shaper). The kernel has neither matchall nor flower here, so a
/// u32 key with mask 0 is the match-everything classifier.
pub fn redirect_filter_request(index: u32, target: u32) -> RouteNetlinkMessage {
    let mut msg = tc_message(index, TcHandle::UNSPEC, INGRESS_HANDLE);
    msg.header.info = (REDIRECT_PRIO << 16) | ETH_P_ALL_BE;

    let mut sel = TcU32Selector::default();
    sel.flags = TcU32SelectorFlags::Terminal;
    sel.nkeys = 1;
    sel.keys = vec![TcU32Key::default()]; // mask 0, val 0, off 0

    let mut mirror = TcMirror::default();
    // TC_ACT_STOLEN: the redirected packet leaves this device's pipeline.
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = target;
    let mut action = TcAction::default(); // tab 1: first action of the list
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
            mirror,
        ))]),
    ];
    msg.attributes.push(TcAttribute::Kind("u32".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(sel)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    RouteNetlinkMessage::NewTrafficFilter(msg)
}

/// Filters attached to `parent` of device `index` (`tc filter show`). The
/// kernel needs both to find the block to dump.
pub fn dump_filters_request(index: u32, parent: TcHandle) -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetTrafficFilter(tc_message(index, TcHandle::UNSPEC, parent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NetlinkMessage, NetlinkPayload};

    const TBF: Tbf = Tbf {
        rate: 1_250_000, // 10 Mbit/s
        burst: 12_500,
        limit: 43_750,
    };

    fn tc(msg: RouteNetlinkMessage) -> TcMessage {
        match msg {
            RouteNetlinkMessage::NewQueueDiscipline(m)
            | RouteNetlinkMessage::DelQueueDiscipline(m)
            | RouteNetlinkMessage::NewTrafficFilter(m)
            | RouteNetlinkMessage::GetTrafficFilter(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tbf_qopt_layout_is_the_kernel_struct() {
        let b = tbf_qopt_bytes(&TBF);
        assert_eq!(b.len(), 36);
        // rate: cell_log 0, linklayer ethernet, overhead/align/mpu 0, rate.
        assert_eq!(&b[..8], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[8..12], &1_250_000u32.to_ne_bytes());
        assert_eq!(&b[12..24], &[0u8; 12]);
        assert_eq!(&b[24..28], &43_750u32.to_ne_bytes());
        // 12500 B at 1.25 MB/s = 10 ms = 156250 ticks of 64 ns.
        assert_eq!(&b[28..32], &156_250u32.to_ne_bytes());
        assert_eq!(&b[32..36], &[0u8; 4]);
        assert_eq!(Tbf::burst_from_ticks(TBF.rate, 156_250), 12_500);
    }

    #[test]
    fn tbf_request_attributes_and_bytes() {
        let m = tc(tbf_qdisc_request(7, &TBF));
        assert_eq!(m.header.index, 7);
        assert_eq!(m.header.handle, TcHandle { major: 1, minor: 0 });
        assert_eq!(m.header.parent, TcHandle::ROOT);
        assert_eq!(m.attributes[0], TcAttribute::Kind("tbf".into()));
        let mut bytes = vec![0u8; m.buffer_len()];
        m.emit(&mut bytes);
        // tcmsg (20) + KIND "tbf\0" (8) + OPTIONS hdr (4) + PARMS (4+36)
        // + BURST (4+4): no RATE64 below 4 GB/s.
        assert_eq!(bytes.len(), 20 + 8 + 4 + 40 + 8);
        assert_eq!(&bytes[28..32], &[52, 0, 2, 0]); // TCA_OPTIONS, len 52
        assert_eq!(&bytes[32..36], &[40, 0, 1, 0]); // TCA_TBF_PARMS
        assert_eq!(&bytes[72..76], &[8, 0, 6, 0]); // TCA_TBF_BURST
        assert_eq!(&bytes[76..80], &12_500u32.to_ne_bytes());

        let fast = Tbf {
            rate: 5_000_000_000,
            ..TBF
        };
        let m = tc(tbf_qdisc_request(7, &fast));
        let TcAttribute::Options(opts) = &m.attributes[1] else {
            panic!()
        };
        assert_eq!(opts.len(), 3, "RATE64 for >= 4 GB/s");
        assert_eq!(&tbf_qopt_bytes(&fast)[8..12], &u32::MAX.to_ne_bytes());
    }

    #[test]
    fn ingress_and_delete_requests() {
        let m = tc(ingress_qdisc_request(3));
        assert_eq!(m.header.parent, TcHandle::INGRESS);
        assert_eq!(u32::from(m.header.handle), 0xffff_0000);
        assert_eq!(m.attributes, vec![TcAttribute::Kind("ingress".into())]);
        let d = tc(delete_qdisc_request(3, QdiscSlot::Root));
        assert_eq!(
            (d.header.index, d.header.parent, d.header.handle),
            (3, TcHandle::ROOT, TcHandle::UNSPEC)
        );
        assert!(d.attributes.is_empty());
        let d = tc(delete_qdisc_request(3, QdiscSlot::Ingress));
        assert_eq!(u32::from(d.header.parent), 0xffff_fff1);
    }

    #[test]
    fn redirect_filter_matches_everything_and_redirects() {
        let m = tc(redirect_filter_request(4, 9));
        assert_eq!(m.header.index, 4);
        assert_eq!(u32::from(m.header.parent), 0xffff_0000);
        // prio 1, protocol htons(ETH_P_ALL) as the kernel reads tcm_info.
        assert_eq!(m.header.info >> 16, 1);
        assert_eq!((m.header.info & 0xffff) as u16, u16::from_be(0x0003));
        let TcAttribute::Options(opts) = &m.attributes[1] else {
            panic!()
        };
        let TcOption::U32(TcFilterU32Option::Selector(sel)) = &opts[0] else {
            panic!()
        };
        assert_eq!((sel.nkeys, sel.keys[0].mask, sel.keys[0].val), (1, 0, 0));
        assert!(sel.flags.contains(TcU32SelectorFlags::Terminal));
        let TcOption::U32(TcFilterU32Option::Action(acts)) = &opts[1] else {
            panic!()
        };
        assert_eq!(
            acts[0].attributes[0],
            TcActionAttribute::Kind("mirred".into())
        );
        // Round trip through the wire format: the kernel-facing bytes parse
        // back to the same typed message.
        let req = redirect_filter_request(4, 9);
        let bytes = crate::socket::serialize(req.clone(), 0x605, 1);
        let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes).unwrap();
        assert_eq!(parsed.payload, NetlinkPayload::InnerMessage(req));
    }
}
