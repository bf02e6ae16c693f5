//! In-memory state of one network on this node: a cache of etcd, never the
//! authority. Every decision that matters is re-checked by an etcd
//! transaction, so a stale cache costs a retry, never a duplicate address.

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Mutex;

use rackline_model::{Lease, NetworkSpec, Pool};
use rackline_store::StoredLease;

/// (container id, ifname): what CNI calls an attachment.
pub type AttachmentKey = (String, String);

pub struct NetState {
    pub spec: NetworkSpec,
    /// etcd create revision of the network key; leases are written only
    /// while the network is still this incarnation.
    pub create_revision: i64,
    inner: Mutex<Inner>,
}

struct Inner {
    pool: Pool,
    leases: HashMap<Ipv4Addr, StoredLease>,
    /// This node's attachments. A set because a lost create response (etcd
    /// answered after our deadline) can leave two leases for one attachment;
    /// release frees them all.
    mine: HashMap<AttachmentKey, BTreeSet<Ipv4Addr>>,
    /// Creates whose outcome is unknown (deadline passed after the request
    /// left). Resolved by reading the key before the next allocation or
    /// release of that attachment.
    uncertain: HashMap<AttachmentKey, BTreeSet<Ipv4Addr>>,
}

fn key_of(l: &Lease) -> AttachmentKey {
    (l.container_id.clone(), l.ifname.clone())
}

impl NetState {
    pub fn new(spec: NetworkSpec, create_revision: i64) -> Self {
        let pool = Pool::new(&spec);
        Self {
            spec,
            create_revision,
            inner: Mutex::new(Inner {
                pool,
                leases: HashMap::new(),
                mine: HashMap::new(),
                uncertain: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in this module; the
        // data is still a consistent cache, so keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Carries the unknown-outcome set over from the state this one replaces,
    /// so a re-list does not forget which creates still need resolving.
    pub fn inherit_uncertain(&self, old: &NetState) {
        if old.create_revision != self.create_revision {
            return;
        }
        let u = old.lock().uncertain.clone();
        let mut me = self.lock();
        for ips in u.values() {
            for ip in ips {
                me.pool.mark_taken(*ip);
            }
        }
        me.uncertain = u;
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
            if old_node == node {
                remove_from(&mut g.mine, &old_key, ip);
            }
        }
        g.pool.mark_taken(ip);
        let key = key_of(&sl.lease);
        if sl.lease.node == node {
            g.mine.entry(key.clone()).or_default().insert(ip);
        }
        remove_from(&mut g.uncertain, &key, ip);
        g.leases.insert(ip, sl);
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
        g.leases.remove(&ip);
        remove_from(&mut g.mine, &key, ip);
        g.pool.mark_free(ip);
    }

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

    pub fn take_uncertain(&self, key: &AttachmentKey) -> Vec<Ipv4Addr> {
        let mut g = self.lock();
        g.uncertain
            .remove(key)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default()
    }

    pub fn mark_uncertain(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        g.pool.mark_taken(ip);
        g.uncertain.entry(key.clone()).or_default().insert(ip);
    }

    /// An uncertain create turned out not to exist.
    pub fn resolve_absent(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        remove_from(&mut g.uncertain, key, ip);
        if !g.leases.contains_key(&ip) {
            g.pool.mark_free(ip);
        }
    }

    /// Drops `ip` from this node's attachment without freeing it (someone
    /// else owns it now).
    pub fn disown(&self, key: &AttachmentKey, ip: Ipv4Addr) {
        let mut g = self.lock();
        remove_from(&mut g.mine, key, ip);
        remove_from(&mut g.uncertain, key, ip);
    }

    /// Picks a candidate and marks it taken until the durable write settles.
    pub fn pick(&self) -> Option<Ipv4Addr> {
        self.lock().pool.take_next()
    }

    /// Returns a candidate whose write failed cleanly.
    pub fn unpick(&self, ip: Ipv4Addr) {
        let mut g = self.lock();
        if !g.leases.contains_key(&ip) {
            g.pool.mark_free(ip);
        }
    }

    pub fn leases_of_node(&self, node: &str) -> Vec<StoredLease> {
        let g = self.lock();
        g.mine
            .values()
            .flatten()
            .filter_map(|ip| g.leases.get(ip))
            .filter(|l| l.lease.node == node)
            .cloned()
            .collect()
    }

    pub fn leases_snapshot(&self) -> Vec<StoredLease> {
        self.lock().leases.values().cloned().collect()
    }

    pub fn lease_at(&self, ip: Ipv4Addr) -> Option<StoredLease> {
        self.lock().leases.get(&ip).cloned()
    }

    /// (capacity, allocated, available)
    pub fn usage(&self) -> (u64, u64, u64) {
        let g = self.lock();
        (g.pool.capacity(), g.pool.allocated(), g.pool.available())
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
