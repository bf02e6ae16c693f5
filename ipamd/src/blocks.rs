//! The block manager: keeps each rack-bound network stocked with free
//! addresses in this node's own blocks, ahead of need, so an ADD never waits
//! for netmaster; returns blocks that stayed empty past a hold-down, and
//! every empty block at once while a drain marker concerns the network here.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::engine::Engine;
use crate::netmaster::{NetmasterClient, NetmasterError};
use crate::netstate::BlockUsage;
use crate::store::LeaseStore;

#[derive(Debug, Clone)]
pub struct BlockPolicy {
    /// Acquire another block when fewer free addresses than this remain in
    /// the node's own blocks.
    pub low_watermark: u64,
    /// A block empty for this long is returned, if the node keeps at least
    /// twice the watermark free without it.
    pub hold_down: Duration,
    /// How often the manager looks when nothing signals demand.
    pub interval: Duration,
}

impl Default for BlockPolicy {
    fn default() -> Self {
        Self {
            low_watermark: 4,
            hold_down: Duration::from_secs(30),
            interval: Duration::from_millis(500),
        }
    }
}

pub async fn run<S: LeaseStore>(
    engine: Arc<Engine<S>>,
    client: Arc<NetmasterClient>,
    policy: BlockPolicy,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut empty_since: HashMap<(String, u32), Instant> = HashMap::new();
    let mut retry_at: HashMap<String, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(policy.interval) => {}
            _ = engine.block_demand().notified() => {}
            _ = shutdown.changed() => return,
        }
        // Block decisions need a view etcd confirmed: not while offline or
        // suspect, nor from the persisted reserve (it lists no blocks, so
        // every network would look block-less).
        if !engine.outage().etcd_ok() || engine.outage().from_persisted() {
            continue;
        }
        for net in engine.mirror().networks() {
            if !net.is_racked() {
                continue;
            }
            let name = net.spec.name.clone();
            let usage = net.blocks().usage();
            let now = Instant::now();
            // Under a drain marker nothing is acquired and every empty
            // block goes back at once (engine/mirror.rs).
            let draining = engine.mirror().draining(&net).is_some();
            if !draining
                && usage.own_available < policy.low_watermark
                && retry_at.get(&name).is_none_or(|t| now >= *t)
            {
                acquire(&engine, &client, &name, &usage, now, &mut retry_at).await;
            }
            return_empty(
                &engine,
                &client,
                &policy,
                (&name, &usage, draining),
                now,
                &mut empty_since,
            )
            .await;
        }
        empty_since
            .retain(|(n, _), _| engine.mirror().networks().iter().any(|s| &s.spec.name == n));
    }
}

/// Asks netmaster for one more block for `name`; a refusal schedules the
/// next attempt in `retry_at`.
async fn acquire<S: LeaseStore>(
    engine: &Engine<S>,
    client: &NetmasterClient,
    name: &str,
    usage: &BlockUsage,
    now: Instant,
    retry_at: &mut HashMap<String, Instant>,
) {
    let known: Vec<Ipv4Addr> = usage
        .own_blocks
        .iter()
        .map(|(lo, ..)| Ipv4Addr::from(*lo))
        .collect();
    match client.acquire_block(name, engine.node(), &known).await {
        Ok(b) => {
            info!(network = %name, first = %b.first, size = b.size, "acquired block");
            retry_at.remove(name);
        }
        Err(NetmasterError::Exhausted) => {
            debug!(network = %name, "rack has no free block; borrowing until one frees up");
            retry_at.insert(name.to_string(), now + Duration::from_secs(2));
        }
        Err(e) => {
            warn!(network = %name, "cannot acquire a block: {e}");
            retry_at.insert(name.to_string(), now + Duration::from_secs(1));
        }
    }
}

/// Returns the network's blocks that stayed empty past the hold-down (every
/// empty one at once while draining), keeping twice the watermark spare.
async fn return_empty<S: LeaseStore>(
    engine: &Engine<S>,
    client: &NetmasterClient,
    policy: &BlockPolicy,
    (name, usage, draining): (&str, &BlockUsage, bool),
    now: Instant,
    empty_since: &mut HashMap<(String, u32), Instant>,
) {
    let mut spare = usage.own_available;
    for (lo, hi, taken, _key, _rev) in &usage.own_blocks {
        let k = (name.to_string(), *lo);
        if *taken > 0 {
            empty_since.remove(&k);
            continue;
        }
        let since = *empty_since.entry(k.clone()).or_insert(now);
        let size = u64::from(hi - lo) + 1;
        if !draining
            && (now.duration_since(since) < policy.hold_down
                || spare < size + 2 * policy.low_watermark)
        {
            continue;
        }
        let first = Ipv4Addr::from(*lo).to_string();
        match client.release_block(name, &first, engine.node()).await {
            Ok(true) => {
                info!(network = %name, %first, draining, "returned empty block");
                spare = spare.saturating_sub(size);
                empty_since.remove(&k);
            }
            Ok(false) => debug!(network = %name, %first, "block not returned (in use)"),
            Err(e) => warn!(network = %name, %first, "cannot return block: {e}"),
        }
    }
}
