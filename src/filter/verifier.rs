//! Per-worker bookkeeping of explorer lookups: which txids are being verified, who waits on
//! each (coalescing), which callout is which, and the explorers' circuit breakers.
//!
//! Lookups are dispatched and answered by the root context, never by a request's own context:
//! the root lives as long as the VM, so a client that disconnects cannot orphan the requests
//! waiting on its lookup, and answering other requests from a root callback does not re-enter
//! the SDK's stream table (proxy-wasm-rust-sdk#255).

use std::collections::HashMap;

use crate::breaker::Breaker;
use crate::esplora::{ExplorerError, TxAnswer};
use crate::gate::{Gate, Ticket};
use crate::spv_lookup::{Fetch, HeaderCache, SpvLookup};
use crate::txid::Txid;

pub struct Lookup {
    pub waiters: Vec<(u32, Ticket)>,
    pub started_ms: u64,
    /// The transaction answer and the explorer that gave it, kept while its tip is being read.
    pub tx: Option<(Result<TxAnswer, ExplorerError>, usize)>,
    /// Who started it, for the per-client in-flight count.
    pub client_key: u64,
    /// `verify: spv`: the verification under way at one explorer.
    pub spv: Option<SpvLookup>,
}

/// Requests that may wait on one lookup; more are turned away (each holds a buffered body).
const MAX_WAITERS_PER_LOOKUP: usize = 32;
/// Requests that may wait on a worker's lookups, per lookup allowed in flight.
const WAITERS_PER_INFLIGHT: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Tx {
        txid: Txid,
        explorer: usize,
    },
    Tip {
        explorer: usize,
    },
    /// The ledger read of a payment's chain facts, written by the replica that verified it.
    Facts {
        txid: Txid,
    },
    /// One call of a `verify: spv` lookup started at explorer `answering`.
    Spv {
        txid: Txid,
        answering: usize,
        explorer: usize,
        fetch: Fetch,
    },
}

#[derive(Default)]
pub struct Verifier {
    pub lookups: HashMap<Txid, Lookup>,
    pub calls: HashMap<u32, Call>,
    /// Lookups waiting for the next tick to be dispatched.
    pub pending: Vec<Txid>,
    /// Explorers whose tip is being read.
    pub tips_in_flight: Vec<usize>,
    pub tick_armed: bool,
    pub breakers: Vec<Breaker>,
    /// Requests waiting on any lookup of this worker.
    pub waiting: usize,
    /// `verify: spv`: headers this worker verified, by hash.
    pub headers: HeaderCache,
    /// Bans (address, seconds) the root posts to the node guard on its next tick.
    pub guard_posts: Vec<(String, u64)>,
    pub guard_reposts: crate::guard::Reposts,
    /// Requests and calls waiting on the ledger (etcd), when one is configured.
    pub ledger: super::ledger::LedgerQueue,
}

pub enum Enqueued {
    /// Joined a lookup already under way for the same txid.
    Joined,
    /// Started a new lookup; the tick must be armed if it is not.
    Started,
    /// Too many lookups in flight on this worker or for this client, or too many waiters.
    Busy,
}

impl Verifier {
    pub fn enqueue(&mut self, gate: &Gate, context_id: u32, ticket: Ticket, now_ms: u64) -> Enqueued {
        if self.waiting >= gate.config.max_inflight.saturating_mul(WAITERS_PER_INFLIGHT) {
            return Enqueued::Busy;
        }
        if let Some(lookup) = self.lookups.get_mut(&ticket.txid) {
            if lookup.waiters.len() >= MAX_WAITERS_PER_LOOKUP {
                return Enqueued::Busy;
            }
            lookup.waiters.push((context_id, ticket));
            self.waiting = self.waiting.saturating_add(1);
            return Enqueued::Joined;
        }
        let for_client = self.lookups.values().filter(|l| l.client_key == ticket.client_key).count();
        if !gate.lookup_fits(&ticket, self.lookups.len(), for_client) {
            return Enqueued::Busy;
        }
        self.pending.push(ticket.txid.clone());
        let txid = ticket.txid.clone();
        let client_key = ticket.client_key;
        self.lookups.insert(
            txid,
            Lookup { waiters: vec![(context_id, ticket)], started_ms: now_ms, tx: None, client_key, spv: None },
        );
        self.waiting = self.waiting.saturating_add(1);
        Enqueued::Started
    }

    /// Removes a finished lookup and returns who waited on it.
    pub fn finish(&mut self, txid: &Txid) -> Vec<(u32, Ticket)> {
        let waiters = self.lookups.remove(txid).map(|l| l.waiters).unwrap_or_default();
        self.waiting = self.waiting.saturating_sub(waiters.len());
        waiters
    }

    /// Lookups whose transaction answer came from `explorer` and that wait only for its tip.
    pub fn waiting_for_tip(&self, explorer: usize) -> Vec<Txid> {
        self.lookups
            .iter()
            .filter(|(_, l)| l.tx.as_ref().is_some_and(|(_, e)| *e == explorer))
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Forgets a request that ended (client gone) while waiting.
    pub fn forget(&mut self, context_id: u32) {
        self.ledger.forget(context_id);
        for lookup in self.lookups.values_mut() {
            let before = lookup.waiters.len();
            lookup.waiters.retain(|(id, _)| *id != context_id);
            self.waiting = self.waiting.saturating_sub(before.saturating_sub(lookup.waiters.len()));
        }
    }
}
