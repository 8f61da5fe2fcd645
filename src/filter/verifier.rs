//! Per-worker bookkeeping of explorer lookups: which txids are being verified, who waits on
//! each (coalescing), which callout is which, and the explorers' circuit breakers.
//!
//! Lookups are dispatched and answered by the root context, never by a request's own context:
//! the root lives as long as the VM, so a client that disconnects cannot orphan the requests
//! waiting on its lookup, and answering other requests from a root callback does not re-enter
//! the SDK's stream table (proxy-wasm-rust-sdk#255).

use std::collections::HashMap;

use crate::breaker::Breaker;
use crate::esplora::{ExplorerError, TxLookup};
use crate::gate::Ticket;
use crate::txid::Txid;

pub struct Lookup {
    pub waiters: Vec<(u32, Ticket)>,
    pub started_ms: u64,
    /// The transaction answer, kept while the tip is still being read.
    pub tx: Option<Result<TxLookup, ExplorerError>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Tx { txid: Txid, explorer: usize },
    Tip { explorer: usize },
}

#[derive(Default)]
pub struct Verifier {
    pub lookups: HashMap<Txid, Lookup>,
    pub calls: HashMap<u32, Call>,
    /// Lookups waiting for the next tick to be dispatched.
    pub pending: Vec<Txid>,
    pub tip_in_flight: bool,
    pub tick_armed: bool,
    pub breakers: Vec<Breaker>,
}

pub enum Enqueued {
    /// Joined a lookup already under way for the same txid.
    Joined,
    /// Started a new lookup; the tick must be armed if it is not.
    Started,
    /// Too many lookups in flight on this worker.
    Busy,
}

impl Verifier {
    pub fn enqueue(&mut self, context_id: u32, ticket: Ticket, max_inflight: usize, now_ms: u64) -> Enqueued {
        if let Some(lookup) = self.lookups.get_mut(&ticket.txid) {
            lookup.waiters.push((context_id, ticket));
            return Enqueued::Joined;
        }
        if self.lookups.len() >= max_inflight {
            return Enqueued::Busy;
        }
        self.pending.push(ticket.txid.clone());
        let txid = ticket.txid.clone();
        self.lookups.insert(txid, Lookup { waiters: vec![(context_id, ticket)], started_ms: now_ms, tx: None });
        Enqueued::Started
    }

    /// Lookups whose transaction answer is in and that wait only for the tip.
    pub fn waiting_for_tip(&self) -> Vec<Txid> {
        self.lookups.iter().filter(|(_, l)| l.tx.is_some()).map(|(t, _)| t.clone()).collect()
    }

    /// Forgets a request that ended (client gone) while waiting.
    pub fn forget(&mut self, context_id: u32) {
        for lookup in self.lookups.values_mut() {
            lookup.waiters.retain(|(id, _)| *id != context_id);
        }
    }
}
