//! Plumbing shared by the rack, node, block and utilisation modules:
//! consistent multi-key reads, batched count-only reads, and transactions,
//! each under the store's deadline.
//!
//! Why a transaction of gets: etcd serves every operation of one txn at one
//! revision, so several prefixes read this way are one consistent state. A
//! write validated against that state compares "nothing I read changed since
//! revision R" (`mod_revision(range) < R + 1`) and fails instead of slipping
//! past a concurrent change. Deleted keys do not show up in such a compare;
//! every caller documents why a deletion can only relax its check.

use std::time::{SystemTime, UNIX_EPOCH};

use etcd_client::{Compare, CompareOp, GetOptions, GetResponse, Txn, TxnOp, TxnOpResponse};

use crate::{Result, Store, StoreError};

/// etcd refuses a transaction with more than `--max-txn-ops` (default 128)
/// operations in one branch.
pub(crate) const MAX_TXN_OPS: usize = 100;

/// Records per page of a paged prefix read. etcd's client decodes at most
/// 4 MiB per answer: 100 000 leases (300–600 bytes each) do not fit in one,
/// 2 000 always do.
pub(crate) const PAGE: i64 = 2000;

/// How often a validated write is retried when something it validated
/// against changed in between.
pub(crate) const ATTEMPTS: u32 = 16;

pub(crate) fn get(key: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp::get(key, None)
}

pub(crate) fn get_prefix(prefix: impl Into<Vec<u8>>) -> TxnOp {
    TxnOp::get(prefix, Some(GetOptions::new().with_prefix()))
}

/// The exclusive end of a key range whose last key is `last` (keys of one
/// kind have a fixed width, so nothing else sorts in between).
pub(crate) fn after(last: &str) -> String {
    let mut end = last.to_string();
    end.push('\0');
    end
}

/// "No key under `prefix` was written after `revision`."
pub(crate) fn unchanged_prefix(prefix: &str, revision: i64) -> Compare {
    Compare::mod_revision(prefix, CompareOp::Less, revision + 1).with_prefix()
}

/// "No key in `[start, end)` was written after `revision`."
pub(crate) fn unchanged_range(start: &str, end: &str, revision: i64) -> Compare {
    Compare::mod_revision(start, CompareOp::Less, revision + 1).with_range(end)
}

pub(crate) fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    pub(crate) async fn commit(&self, txn: Txn) -> Result<etcd_client::TxnResponse> {
        let mut c = self.client();
        self.deadline(async move { c.txn(txn).await }).await
    }

    /// Runs `ops` (gets only) as one transaction: one consistent state and
    /// the revision it was read at.
    pub(crate) async fn read_at_once(&self, ops: Vec<TxnOp>) -> Result<(Vec<GetResponse>, i64)> {
        let resp = self.commit(Txn::new().and_then(ops)).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let gets = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => Ok(g),
                other => Err(StoreError::Corrupt {
                    key: "<read transaction>".into(),
                    reason: format!("unexpected response {other:?}"),
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((gets, rev))
    }

    /// Every record under `prefix` as of `revision` (0 = now), read in
    /// pages of [`PAGE`] records all at that one revision — the same
    /// consistent state a single read would give, without an answer larger
    /// than etcd's message limit. `f` gets each page in key order; returns
    /// the revision read at. Fails (etcd's "compacted") if etcd compacts past
    /// that revision between two pages; callers retry as for any failure.
    pub(crate) async fn for_each_page(
        &self,
        prefix: &str,
        revision: i64,
        mut f: impl FnMut(&[etcd_client::KeyValue]) -> Result<()>,
    ) -> Result<i64> {
        let mut end = prefix.as_bytes().to_vec();
        // Prefixes end in '/': the next byte value bounds them.
        if let Some(b) = end.last_mut() {
            *b += 1;
        }
        let mut start = prefix.as_bytes().to_vec();
        let mut rev = revision;
        loop {
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if rev > 0 {
                o = o.with_revision(rev);
            }
            let mut c = self.client();
            let key = start.clone();
            let resp = self
                .deadline(async move { c.get(key, Some(o)).await })
                .await?;
            if rev <= 0 {
                rev = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            f(resp.kvs())?;
            match resp.kvs().last() {
                Some(kv) if resp.more() => {
                    start = kv.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(rev),
            }
        }
    }

    /// The number of keys in each `[start, end)` range as of `revision`
    /// (count-only: no value crosses the wire), batched into as few
    /// transactions as etcd accepts.
    pub(crate) async fn count_ranges(
        &self,
        ranges: &[(String, String)],
        revision: i64,
    ) -> Result<Vec<u64>> {
        let mut out = Vec::with_capacity(ranges.len());
        for chunk in ranges.chunks(MAX_TXN_OPS) {
            let ops = chunk
                .iter()
                .map(|(start, end)| {
                    let mut o = GetOptions::new().with_range(end.clone()).with_count_only();
                    if revision > 0 {
                        o = o.with_revision(revision);
                    }
                    TxnOp::get(start.clone(), Some(o))
                })
                .collect();
            let (gets, _) = self.read_at_once(ops).await?;
            out.extend(gets.iter().map(|g| g.count().max(0) as u64));
        }
        Ok(out)
    }
}
