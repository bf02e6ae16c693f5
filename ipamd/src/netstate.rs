//! In-memory state of one network on this node: a cache of etcd, never the
//! authority. Every decision that matters is re-checked by an etcd
//! transaction, so a stale cache costs a retry, never a duplicate address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use rackline_model::{Infra, Lease, NetworkSpec, Pool, RackNet};
use rackline_store::{BlockGuard, StoredBlock, StoredLease};

/// (container id, ifname): what CNI calls an attachment.
pub type AttachmentKey = (String, String);

pub struct NetState {
    pub spec: NetworkSpec,
    /// etcd create revision of the network key; leases are written only
    /// while the network is still this incarnation.
    pub create_revision: i64,
    /// `spec.sticky` with its patterns compiled once (asked on every ADD).
    pub sticky_matcher: Option<rackline_model::sticky::StickyMatcher>,
    /// This rack's binding of a rack-bound network (persisted with the
    /// reserve, so an ipamd restarted offline gives pods the rack's subnet).
    pub binding: Option<RackNet>,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Flat network: the whole range. Rack-bound network: this node's own
    /// blocks only.
    pool: Pool,
    rack: Option<RackCtx>,
    leases: HashMap<Ipv4Addr, StoredLease>,
    /// This node's attachments. A set because a lost create response (etcd
    /// answered after our deadline) can leave two leases for one attachment;
    /// release frees them all.
    mine: HashMap<AttachmentKey, BTreeSet<Ipv4Addr>>,
    /// Creates whose outcome is unknown (deadline passed after the request
    /// left). Resolved by reading the key before the next allocation or
    /// release of that attachment.
    uncertain: HashMap<AttachmentKey, BTreeSet<Ipv4Addr>>,
    /// This node's standby records: address -> mod revision.
    standby: BTreeMap<Ipv4Addr, i64>,
    /// Addresses released while etcd was unreachable: still recorded in
    /// etcd until the journal is replayed, so not reusable before that.
    released_offline: BTreeSet<Ipv4Addr>,
    /// Sticky leases by pod identity (namespace, name): a hint that the pod
    /// has an identity record, derived from the lease records (which name
    /// their identity) so it needs no second cache. The record itself is
    /// always read from etcd before it is used.
    sticky: HashMap<(String, String), Ipv4Addr>,
    /// This node has served (or holds a reserve for) pods on this network:
    /// only then is a reserve worth keeping (a node does not use every
    /// network that exists).
    in_use_here: bool,
    /// The state a snapshot replaced this one with: leases observed here
    /// afterwards (an allocation in flight across the snapshot) are passed
    /// on, so a release right after does not miss them.
    successor: Option<std::sync::Weak<NetState>>,
    /// The network's and its racks' gateways (fixed for this state: a
    /// binding change rebuilds it).
    gateways: Infra,
    /// `gateways` plus every registered node's addresses: withheld from both
    /// pools, so no pick ever returns one (see `rackline_model::infra`).
    infra: Infra,
}

/// This node's share of a rack-bound network.
struct RackCtx {
    node: String,
    /// The rack's subnet and gateway (its TOR): what pods here are given.
    subnet: ipnetwork::Ipv4Network,
    gateway: Ipv4Addr,
    /// The whole rack (every node's blocks and unassigned space), taken =
    /// every lease in it: where an address is borrowed from when the node's
    /// own blocks are full and the rack has no free block.
    rack_pool: Pool,
    /// Blocks of this network in this rack, by first address, with the key
    /// lease writes inside them are guarded by.
    blocks: BTreeMap<u32, (StoredBlock, String)>,
}

impl RackCtx {
    fn block_at(&self, x: u32) -> Option<&(StoredBlock, String)> {
        let (_, b) = self.blocks.range(..=x).next_back()?;
        b.0.block.contains(Ipv4Addr::from(x)).then_some(b)
    }
}

/// Where a picked address came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub ip: Ipv4Addr,
    /// The block it lies in, if any.
    pub guard: Option<BlockGuard>,
    /// Taken from another node's block or unassigned rack space.
    pub borrowed: bool,
}

/// This node's share of a network, for the metrics (one pass, one lock).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeGauges {
    /// Active leases of this node's pods.
    pub held: u64,
    /// Of those, outside this node's own blocks (rack-bound networks).
    pub borrowed: u64,
    /// This node's standby reserve.
    pub standby: u64,
    /// Sticky reservations last held on this node.
    pub reserved: u64,
    /// Quarantine records found by this node's pods.
    pub quarantined: u64,
    /// Blocks this node owns.
    pub blocks: u64,
    /// Of the active leases, those whose pod does not run as the network is
    /// defined now (after `network update`): excluded address or other
    /// settings recorded at ADD.
    pub out_of_spec: u64,
}

/// Numbers the block manager works from.
#[derive(Debug, Clone, Default)]
pub struct BlockUsage {
    pub own_available: u64,
    pub rack_available: u64,
    /// This node's blocks: (first, last, taken, key, mod_revision).
    pub own_blocks: Vec<(u32, u32, u64, String, i64)>,
}

fn sticky_key(l: &Lease) -> Option<(String, String)> {
    l.sticky
        .then(|| (l.pod.namespace.clone(), l.pod.name.clone()))
}

fn key_of(l: &Lease) -> AttachmentKey {
    (l.container_id.clone(), l.ifname.clone())
}

impl NetState {
    /// See [`Leases`].
    pub fn leases(&self) -> Leases<'_> {
        Leases(self)
    }

    /// See [`Standby`].
    pub fn standby(&self) -> Standby<'_> {
        Standby(self)
    }

    /// See [`Uncertain`].
    pub fn uncertain(&self) -> Uncertain<'_> {
        Uncertain(self)
    }

    /// See [`Blocks`].
    pub fn blocks(&self) -> Blocks<'_> {
        Blocks(self)
    }

    /// See [`Picks`].
    pub fn picks(&self) -> Picks<'_> {
        Picks(self)
    }

    /// A network without rack bindings: the whole range, no blocks.
    pub fn new(spec: NetworkSpec, create_revision: i64) -> Self {
        let pool = Pool::new(&spec);
        let gateways = Infra::gateways(&spec, []);
        Self::with(spec, create_revision, pool, None, gateways)
    }

    /// A rack-bound network seen from `node` in the rack of `binding`: the
    /// node allocates from its own blocks (added as they are observed) and
    /// borrows from the rest of the rack. `bindings` are all of the
    /// network's (their gateways are never handed out).
    pub fn new_racked(
        spec: NetworkSpec,
        create_revision: i64,
        binding: &RackNet,
        bindings: &[&RackNet],
        node: &str,
    ) -> Self {
        let gateways = Infra::gateways(&spec, bindings.iter().copied().chain([binding]));
        let rack_pool = Pool::from_allocatable(binding.allocatable(&spec));
        let ctx = RackCtx {
            node: node.to_string(),
            subnet: binding.subnet,
            gateway: binding.gateway,
            rack_pool,
            blocks: BTreeMap::new(),
        };
        let pool = Pool::from_allocatable(rackline_model::IntervalSet::new());
        let mut st = Self::with(spec, create_revision, pool, Some(ctx), gateways);
        st.binding = Some(binding.clone());
        st
    }

    fn with(
        spec: NetworkSpec,
        create_revision: i64,
        pool: Pool,
        rack: Option<RackCtx>,
        gateways: Infra,
    ) -> Self {
        let st = Self {
            sticky_matcher: spec.sticky.as_ref().map(|p| p.matcher()),
            binding: None,
            spec,
            create_revision,
            inner: Mutex::new(Inner {
                pool,
                rack,
                leases: HashMap::new(),
                mine: HashMap::new(),
                uncertain: HashMap::new(),
                standby: BTreeMap::new(),
                released_offline: BTreeSet::new(),
                sticky: HashMap::new(),
                in_use_here: false,
                successor: None,
                infra: Infra::default(),
                gateways,
            }),
        };
        st.set_node_addresses(&BTreeMap::new());
        st
    }

    /// Registered nodes' own addresses (by node name) changed: they and the
    /// gateways are withheld from every pick, including addresses inside
    /// blocks assigned before the node registered.
    pub fn set_node_addresses(&self, nodes: &BTreeMap<String, Vec<Ipv4Addr>>) {
        let mut g = self.lock();
        let g = &mut *g;
        let mut infra = g.gateways.clone();
        for (name, addrs) in nodes {
            infra.add_node(name, addrs);
        }
        if infra == g.infra {
            return;
        }
        let set = infra.set();
        g.pool.withhold(&set);
        if let Some(r) = g.rack.as_mut() {
            r.rack_pool.withhold(&set);
        }
        g.infra = infra;
        // Withholding forgets taken marks; whatever is held stays taken.
        let held: Vec<Ipv4Addr> = g
            .leases
            .keys()
            .chain(g.uncertain.values().flatten())
            .copied()
            .collect();
        for ip in held {
            g.mark(ip);
        }
    }

    /// Why `ip` is infrastructure (a node's own address, a gateway), if it is.
    pub fn infra_refusal(&self, ip: Ipv4Addr) -> Option<String> {
        self.lock().infra.refusal(ip)
    }

    /// The subnet and gateway pods of this node get: the rack's for a
    /// rack-bound network, else the network's.
    pub fn addressing(&self) -> (ipnetwork::Ipv4Network, Ipv4Addr) {
        match self.lock().rack.as_ref() {
            Some(r) => (r.subnet, r.gateway),
            None => (self.spec.subnet, self.spec.gateway),
        }
    }

    /// What a pod added now gets from the network, recorded on its lease
    /// (see `rackline_model::applied`).
    pub fn pod_settings(&self) -> Option<Box<rackline_model::PodSettings>> {
        Some(Box::new(rackline_model::PodSettings::of(&self.spec)))
    }

    /// The spec as this node's pods see it (rack subnet and gateway).
    pub fn effective_spec(&self) -> NetworkSpec {
        let (subnet, gateway) = self.addressing();
        let mut s = self.spec.clone();
        s.subnet = subnet;
        s.gateway = gateway;
        s
    }

    pub fn is_racked(&self) -> bool {
        self.lock().rack.is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; the
        // data is still a consistent cache, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a lease record seen in etcd (snapshot, watch or a read).
    pub fn observe(&self, sl: StoredLease, node: &str) {
        let mut g = self.lock();
        let ip = sl.lease.address;
        if let Some(old) = g.leases.get(&ip) {
            if old.mod_revision >= sl.mod_revision {
                return;
            }
            let old_key = key_of(&old.lease);
            let old_node = old.lease.node.clone();
            let old_pod = sticky_key(&old.lease);
            if old_node == node {
                remove_from(&mut g.mine, &old_key, ip);
            }
            if let Some(p) = old_pod {
                g.sticky.remove(&p);
            }
        }
        g.mark(ip);
        g.standby.remove(&ip);
        g.released_offline.remove(&ip);
        let key = key_of(&sl.lease);
        if sl.lease.node == node {
            g.in_use_here = true;
            if sl.lease.is_standby() {
                g.standby.insert(ip, sl.mod_revision);
            } else if sl.lease.state.is_active() {
                // A reservation is nobody's attachment: only live leases
                // are this node's to return on DEL.
                g.mine.entry(key.clone()).or_default().insert(ip);
            }
        }
        if let Some(p) = sticky_key(&sl.lease) {
            g.sticky.insert(p, ip);
        }
        remove_from(&mut g.uncertain, &key, ip);
        let next = g.successor.as_ref().and_then(|w| w.upgrade());
        g.leases.insert(ip, sl.clone());
        drop(g);
        if let Some(next) = next {
            next.observe(sl, node);
        }
    }

    /// Applies a deletion seen at `mod_revision` (0 = unconditional).
    pub fn forget(&self, ip: Ipv4Addr, mod_revision: i64) {
        let mut g = self.lock();
        let Some(old) = g.leases.get(&ip) else {
            return;
        };
        if mod_revision != 0 && old.mod_revision > mod_revision {
            return;
        }
        let key = key_of(&old.lease);
        if let Some(p) = sticky_key(&old.lease) {
            g.sticky.remove(&p);
        }
        g.leases.remove(&ip);
        remove_from(&mut g.mine, &key, ip);
        g.standby.remove(&ip);
        g.released_offline.remove(&ip);
        g.unmark(ip);
    }

    // ---- standby reserve and offline operation ----

    pub fn in_use_here(&self) -> bool {
        self.lock().in_use_here
    }

    /// Free addresses the rack (or the flat network) still has, not counting
    /// anything held in reserve.
    pub fn free_for_anyone(&self) -> u64 {
        let g = self.lock();
        match g.rack.as_ref() {
            Some(r) => r.rack_pool.available(),
            None => g.pool.available(),
        }
    }

    pub fn own_available(&self) -> u64 {
        self.lock().pool.available()
    }

    /// The address a sticky lease of pod `namespace/name` holds, as far as
    /// this cache knows.
    pub fn sticky_hint(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        self.lock()
            .sticky
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
    }

    /// Whether `ip` lies in what pods of this node are given: this node's
    /// rack's ranges on a rack-bound network, the network's range on a flat
    /// one (infrastructure addresses inside them included: see `refusal`).
    pub fn serves(&self, ip: Ipv4Addr) -> bool {
        self.lock().serves(ip)
    }

    /// Why pods of this node may not be given `ip` on this network (None =
    /// they may): a registered node's own address or a gateway, outside the
    /// subnet, the network/broadcast address, excluded, or another rack's.
    pub fn refusal(&self, ip: Ipv4Addr) -> Option<String> {
        if let Some(why) = self.infra_refusal(ip) {
            return Some(why);
        }
        if self.serves(ip) {
            return None;
        }
        let g = self.lock();
        let (subnet, gateway, whose) = match g.rack.as_ref() {
            Some(r) => (r.subnet, r.gateway, "this node's rack"),
            None => (self.spec.subnet, self.spec.gateway, "the network"),
        };
        let name = &self.spec.name;
        Some(if !subnet.contains(ip) {
            format!("{ip} is outside {whose}'s subnet {subnet} of network {name:?}")
        } else if ip == gateway {
            format!("{ip} is the gateway of network {name:?}")
        } else if ip == subnet.network() || ip == subnet.broadcast() {
            format!("{ip} is the network or broadcast address of {subnet}")
        } else if g.rack.is_some() {
            format!(
                "{ip} is not in {whose}'s ranges of network {name:?} (excluded, or another rack's)"
            )
        } else {
            format!("{ip} is excluded from network {name:?}")
        })
    }

    /// (capacity, allocated, available): of the network for a flat network,
    /// of the node's rack for a rack-bound one (what it can still get).
    pub fn usage(&self) -> (u64, u64, u64) {
        let g = self.lock();
        let p = g.rack.as_ref().map(|r| &r.rack_pool).unwrap_or(&g.pool);
        (p.capacity(), p.allocated(), p.available())
    }
}

/// A view of [`NetState`] (`net.standby()`, `net.blocks()`, ...): a borrow
/// under the same lock, so the locking is exactly that of the state itself;
/// it reads the whole state through `Deref`.
macro_rules! view {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// A borrow of the [`NetState`] under the same lock, so the locking
        /// is exactly that of the state itself.
        #[derive(Clone, Copy)]
        pub struct $name<'a>(&'a NetState);

        impl std::ops::Deref for $name<'_> {
            type Target = NetState;
            fn deref(&self) -> &NetState {
                self.0
            }
        }
    };
}

view!(
    /// The standby reserve of this network (`net.standby()`): records this node holds ahead of an etcd outage, and the offline leases taken from them.
    Standby
);

impl Standby<'_> {
    /// Standby records of OTHER nodes in this node's rack (or flat network):
    /// addresses that come back when those nodes see the shortage.
    pub fn foreign(&self) -> usize {
        let g = self.lock();
        let mine = |l: &StoredLease| g.rack.as_ref().is_some_and(|r| r.node == l.lease.node);
        g.leases
            .values()
            .filter(|l| l.lease.is_standby() && !g.standby.contains_key(&l.lease.address))
            .filter(|l| !mine(l))
            .filter(|l| match g.rack.as_ref() {
                Some(r) => r
                    .rack_pool
                    .allocatable()
                    .contains(u32::from(l.lease.address)),
                None => true,
            })
            .count()
    }
    pub fn count(&self) -> usize {
        self.lock().standby.len()
    }
    pub fn list(&self) -> Vec<(Ipv4Addr, i64)> {
        self.lock().standby.iter().map(|(a, r)| (*a, *r)).collect()
    }
    /// Standby records outside what pods of this node are given now: a
    /// `network update` excluded them. They are given back (see
    /// `Engine::maintain_standby`), never handed out.
    pub fn excluded(&self) -> Vec<(Ipv4Addr, i64)> {
        let g = self.lock();
        g.standby
            .iter()
            .filter(|(a, _)| !g.serves(**a))
            .map(|(a, r)| (*a, *r))
            .collect()
    }
    /// Takes a standby address out of the reserve (it stays taken). A
    /// record at an infrastructure address (made before that node registered)
    /// or inside an exclusion added since it was made is never handed out.
    pub fn take(&self) -> Option<(Ipv4Addr, i64)> {
        let mut g = self.lock();
        let (ip, rev) = g
            .standby
            .iter()
            .find(|(a, _)| !g.infra.contains(**a) && g.serves(**a))
            .map(|(a, r)| (*a, *r))?;
        g.standby.remove(&ip);
        Some((ip, rev))
    }
    /// Takes one given standby address out of the reserve (to give it
    /// back); None if it is not (or no longer) in it.
    pub fn withdraw(&self, ip: Ipv4Addr) -> Option<i64> {
        self.lock().standby.remove(&ip)
    }
    pub fn give_back(&self, ip: Ipv4Addr, rev: i64) {
        self.lock().standby.insert(ip, rev);
    }
    /// Records a lease decided offline (journalled) in the cache; its
    /// revision is the standby record's until the journal is replayed.
    pub fn activate_offline(&self, lease: Lease, standby_revision: i64) {
        let mut g = self.lock();
        let ip = lease.address;
        g.standby.remove(&ip);
        g.mine.entry(key_of(&lease)).or_default().insert(ip);
        g.mark(ip);
        g.leases.insert(
            ip,
            StoredLease {
                lease,
                mod_revision: standby_revision,
            },
        );
    }
    /// Drops an attachment released offline from the cache; the address
    /// stays taken until the journal replay deletes its record.
    pub fn release_offline(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        remove_from(&mut g.mine, key, ip);
        g.released_offline.insert(ip);
    }
}

view!(
    /// Creates whose answer was lost (`net.uncertain()`): addresses an attachment may hold in etcd without knowing it, until resolved.
    Uncertain
);

impl Uncertain<'_> {
    pub fn take(&self, key: &AttachmentKey) -> Vec<Ipv4Addr> {
        let mut g = self.lock();
        g.uncertain
            .remove(key)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }
    pub fn mark(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        g.mark(ip);
        g.uncertain.entry(key.clone()).or_default().insert(ip);
    }
    /// An uncertain create turned out not to exist.
    pub fn resolve_absent(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        remove_from(&mut g.uncertain, key, ip);
        if !g.leases.contains_key(&ip) {
            g.unmark(ip);
        }
    }
    /// Carries the unknown-outcome set over from the state this one replaces,
    /// so a re-list does not forget which creates still need resolving.
    pub fn inherit(&self, old: &NetState) {
        if old.create_revision != self.create_revision {
            return;
        }
        let u = old.lock().uncertain.clone();
        let mut me = self.lock();
        for ips in u.values() {
            for ip in ips {
                me.mark(*ip);
            }
        }
        me.uncertain = u;
    }
}

view!(
    /// The rack's blocks as this network sees them (`net.blocks()`).
    Blocks
);

impl Blocks<'_> {
    /// Applies a block record of this network (any rack; others ignored).
    pub fn observe(&self, sb: StoredBlock, key: String) {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(rack) = g.rack.as_mut() else { return };
        let (lo, hi) = sb.block.span();
        if let Some((old, _)) = rack.blocks.get(&lo) {
            if old.mod_revision >= sb.mod_revision {
                return;
            }
            if old.block.node == rack.node {
                let (olo, ohi) = old.block.span();
                g.pool.remove_allocatable(olo, ohi);
            }
        }
        if !rack.rack_pool.in_ranges(Ipv4Addr::from(lo)) {
            // Another rack's block (by its ranges: its first address may be
            // a withheld one of ours).
            return;
        }
        if sb.block.node == rack.node {
            g.pool.add_allocatable(lo, hi);
            for x in lo..=hi {
                if g.leases.contains_key(&Ipv4Addr::from(x)) {
                    g.pool.mark_taken(Ipv4Addr::from(x));
                }
            }
        }
        rack.blocks.insert(lo, (sb, key));
    }
    /// Applies a block deletion (by first address).
    pub fn forget(&self, first: Ipv4Addr) {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(rack) = g.rack.as_mut() else { return };
        if let Some((old, _)) = rack.blocks.remove(&u32::from(first)) {
            if old.block.node == rack.node {
                let (lo, hi) = old.block.span();
                g.pool.remove_allocatable(lo, hi);
            }
        }
    }
    /// Forgets the block holding `ip` after etcd said it changed: until the
    /// watch delivers its new record, addresses there are only borrowable.
    pub fn drop_at(&self, ip: Ipv4Addr) {
        let mut g = self.lock();
        let g = &mut *g;
        let Some(rack) = g.rack.as_mut() else { return };
        let Some(first) = rack.block_at(u32::from(ip)).map(|(b, _)| b.block.span().0) else {
            return;
        };
        if let Some((old, _)) = rack.blocks.remove(&first) {
            if old.block.node == rack.node {
                let (lo, hi) = old.block.span();
                g.pool.remove_allocatable(lo, hi);
            }
        }
    }
    pub fn usage(&self) -> BlockUsage {
        let g = self.lock();
        let Some(rack) = g.rack.as_ref() else {
            return BlockUsage::default();
        };
        let own_blocks = rack
            .blocks
            .values()
            .filter(|(b, _)| b.block.node == rack.node)
            .map(|(b, k)| {
                let (lo, hi) = b.block.span();
                (lo, hi, g.pool.taken_in(lo, hi), k.clone(), b.mod_revision)
            })
            .collect();
        BlockUsage {
            own_available: g.pool.available(),
            rack_available: rack.rack_pool.available(),
            own_blocks,
        }
    }
}

view!(
    /// Choosing a candidate address (`net.picks()`): marked taken here until
    /// its durable write settles, with the block guard the write must check.
    Picks
);

impl Picks<'_> {
    /// Picks from the node's OWN pool only (never borrowed): where standby
    /// records are made, since they must belong to this node.
    pub fn pick_own(&self) -> Option<Pick> {
        let mut g = self.lock();
        let g = &mut *g;
        let ip = g.pool.take_next()?;
        let guard = g.rack.as_mut().and_then(|r| {
            r.rack_pool.mark_taken(ip);
            r.block_at(u32::from(ip)).map(|(b, k)| BlockGuard {
                key: k.clone(),
                mod_revision: b.mod_revision,
            })
        });
        Some(Pick {
            ip,
            guard,
            borrowed: false,
        })
    }

    /// Marks `ip` taken for a requested allocation, as `pick` does for a
    /// chosen one. None when something here already holds it or an
    /// allocation of this node is writing it right now.
    pub fn pick_exact(&self, ip: Ipv4Addr) -> Option<Pick> {
        let mut g = self.lock();
        let g = &mut *g;
        if g.leases.contains_key(&ip) {
            return None;
        }
        let own = g.pool.is_allocatable(ip);
        let taken = match g.rack.as_ref() {
            Some(r) => r.rack_pool.is_taken(ip) || g.pool.is_taken(ip),
            None => g.pool.is_taken(ip),
        };
        if taken {
            return None;
        }
        g.mark(ip);
        let guard = g.rack.as_ref().and_then(|r| {
            r.block_at(u32::from(ip)).map(|(b, k)| BlockGuard {
                key: k.clone(),
                mod_revision: b.mod_revision,
            })
        });
        Some(Pick {
            ip,
            guard,
            borrowed: g.rack.is_some() && !own,
        })
    }

    /// Picks a candidate and marks it taken until the durable write settles:
    /// from the node's own pool first; on a rack-bound network with nothing
    /// left there, borrowed from the rest of the rack.
    pub fn pick(&self) -> Option<Pick> {
        let mut g = self.lock();
        let g = &mut *g;
        if let Some(ip) = g.pool.take_next() {
            let guard = g.rack.as_mut().and_then(|r| {
                r.rack_pool.mark_taken(ip);
                r.block_at(u32::from(ip)).map(|(b, k)| BlockGuard {
                    key: k.clone(),
                    mod_revision: b.mod_revision,
                })
            });
            return Some(Pick {
                ip,
                guard,
                borrowed: false,
            });
        }
        let rack = g.rack.as_mut()?;
        let ip = rack.rack_pool.take_next()?;
        let guard = rack.block_at(u32::from(ip)).map(|(b, k)| BlockGuard {
            key: k.clone(),
            mod_revision: b.mod_revision,
        });
        Some(Pick {
            ip,
            guard,
            borrowed: true,
        })
    }

    /// Returns a candidate whose write failed cleanly.
    pub fn unpick(&self, ip: Ipv4Addr) {
        let mut g = self.lock();
        if !g.leases.contains_key(&ip) {
            g.unmark(ip);
        }
    }
}

view!(
    /// The leases this network knows (`net.leases()`): lookups by attachment,
    /// address and node, and handing them over to a fresh state.
    Leases
);

impl Leases<'_> {
    /// The lease this node already holds for the attachment, if any.
    pub fn existing(&self, key: &AttachmentKey) -> Option<StoredLease> {
        let g = self.lock();
        let ip = g.mine.get(key)?.iter().next().copied()?;
        g.leases.get(&ip).cloned()
    }
    /// Every address this node holds (or may hold) for the attachment.
    pub fn held(&self, key: &AttachmentKey) -> Vec<(Ipv4Addr, Option<i64>)> {
        let g = self.lock();
        let mut out = Vec::new();
        for ip in g.mine.get(key).into_iter().flatten() {
            out.push((*ip, g.leases.get(ip).map(|l| l.mod_revision)));
        }
        for ip in g.uncertain.get(key).into_iter().flatten() {
            if !out.iter().any(|(i, _)| i == ip) {
                out.push((*ip, None));
            }
        }
        out
    }
    pub fn of_node(&self, node: &str) -> Vec<StoredLease> {
        let g = self.lock();
        g.mine
            .values()
            .flatten()
            .filter_map(|ip| g.leases.get(ip))
            .filter(|l| l.lease.node == node && !l.lease.is_standby())
            .cloned()
            .collect()
    }
    pub fn snapshot(&self) -> Vec<StoredLease> {
        self.lock().leases.values().cloned().collect()
    }
    pub fn at(&self, ip: Ipv4Addr) -> Option<StoredLease> {
        self.lock().leases.get(&ip).cloned()
    }
    /// What this node holds on the network (see [`NodeGauges`]).
    pub fn node_gauges(
        &self,
        node: &str,
        class: rackline_model::applied::NodeClass<'_>,
    ) -> NodeGauges {
        let g = self.lock();
        let mut out = NodeGauges::default();
        let own_block = |ip: Ipv4Addr| {
            g.rack.as_ref().is_some_and(|r| {
                r.block_at(u32::from(ip))
                    .is_some_and(|(b, _)| b.block.node == r.node)
            })
        };
        for sl in g.leases.values() {
            let l = &sl.lease;
            if l.node != node {
                continue;
            }
            match l.state {
                rackline_model::LeaseState::Active => {
                    out.held += 1;
                    if !rackline_model::applied::out_of_spec(l, &self.spec, class).is_empty() {
                        out.out_of_spec += 1;
                    }
                    if g.rack.is_some() && !own_block(l.address) {
                        out.borrowed += 1;
                    }
                }
                // Counted from the reserve itself below (an address taken
                // offline is no longer in it, though etcd still says standby).
                rackline_model::LeaseState::Standby => {}
                rackline_model::LeaseState::Reserved => out.reserved += 1,
                rackline_model::LeaseState::Conflict => out.quarantined += 1,
            }
        }
        out.standby = g.standby.len() as u64;
        if let Some(r) = g.rack.as_ref() {
            out.blocks = r
                .blocks
                .values()
                .filter(|(b, _)| b.block.node == r.node)
                .count() as u64;
        }
        out
    }
    /// Drops `ip` from this node's attachment without freeing it (someone
    /// else owns it now).
    pub fn disown(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        remove_from(&mut g.mine, key, ip);
        remove_from(&mut g.uncertain, key, ip);
    }
    /// `next` (built from a snapshot at `revision`) replaces this state:
    /// leases observed here that are newer than the snapshot go over now,
    /// and any observed from now on follow (see `observe`). Both under this
    /// state's lock, so nothing observed concurrently falls between.
    pub fn hand_over(&self, next: &std::sync::Arc<NetState>, revision: i64, node: &str) {
        let newer: Vec<StoredLease> = {
            let mut g = self.lock();
            g.successor = Some(std::sync::Arc::downgrade(next));
            g.leases
                .values()
                .filter(|l| l.mod_revision > revision)
                .cloned()
                .collect()
        };
        for sl in newer {
            next.observe(sl, node);
        }
    }
}

impl Inner {
    fn serves(&self, ip: Ipv4Addr) -> bool {
        match self.rack.as_ref() {
            Some(r) => r.rack_pool.in_ranges(ip),
            None => self.pool.in_ranges(ip),
        }
    }

    fn mark(&mut self, ip: Ipv4Addr) {
        self.pool.mark_taken(ip);
        if let Some(r) = self.rack.as_mut() {
            r.rack_pool.mark_taken(ip);
        }
    }

    fn unmark(&mut self, ip: Ipv4Addr) {
        self.pool.mark_free(ip);
        if let Some(r) = self.rack.as_mut() {
            r.rack_pool.mark_free(ip);
        }
    }
}

fn remove_from(
    m: &mut HashMap<AttachmentKey, BTreeSet<Ipv4Addr>>,
    key: &AttachmentKey,
    ip: Ipv4Addr,
) {
    if let Some(s) = m.get_mut(key) {
        s.remove(&ip);
        if s.is_empty() {
            m.remove(key);
        }
    }
}
