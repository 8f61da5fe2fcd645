//! Per-worker bookkeeping of ledger (etcd) calls: requests waiting on a payment's ledger entry
//! (coalesced: one call per payment per worker), which callout is which, attempts whose reply
//! was lost (resent as they were, so a late commit is counted once), and etcd's circuit breaker.
//!
//! Like explorer lookups, every call is dispatched from the root context on its tick and
//! answered from the root's callback, so a client that goes away cannot orphan other waiters.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Duration;

use proxy_wasm::hostcalls;

use super::host::{HostStore, Metrics};
use crate::breaker::Breaker;
use crate::duration::millis;
use crate::gate::{ClientAddress, Effects, Gate, LedgerWait, Verdict};
use crate::ledger::etcd::{
    self, lease_grant_body, lease_ttl, parse_lease_grant, parse_txn, Attempt, EtcdError, Keys, LEASE_GRANT_PATH,
    TXN_PATH,
};
use crate::ledger::held::Absorbed;
use crate::metrics::Counter;

/// Requests that may wait on one payment's ledger call; more are turned away.
const MAX_WAITERS_PER_OP: usize = 64;
/// Requests that may wait on the ledger in one worker.
const MAX_WAITING: usize = 1024;
/// Attempts with an unknown outcome kept per worker; beyond, a lost reply's block may go unserved
/// (never served twice).
const MAX_UNCERTAIN: usize = 4096;

/// One payment's ledger work in this worker.
pub struct Op {
    slot: usize,
    waiters: Vec<(u32, LedgerWait)>,
    /// What first contact writes (owner, expiry), from the first waiter; `None` for a
    /// background refill, which only ever reserves.
    template: Option<LedgerWait>,
    started_ms: u64,
}

pub enum Call {
    Txn { record: [u8; 32], attempt: Attempt },
    Lease { record: [u8; 32], attempt: Attempt },
}

#[derive(Default)]
pub struct LedgerQueue {
    /// This VM's replica id in etcd's claim keys (random per VM, so a restart never reuses one).
    replica: String,
    next_seq: u64,
    ops: HashMap<[u8; 32], Op>,
    pub calls: HashMap<u32, Call>,
    pending: Vec<[u8; 32]>,
    /// Attempts whose outcome is unknown (no reply): resent unchanged before anything new.
    uncertain: HashMap<[u8; 32], Attempt>,
    breaker: Breaker,
    waiting: usize,
}

/// A request to answer once the verifier is released: context, verdict, effects, and the
/// client's own address (xpub `pay_to`) for a 402 challenge.
pub type Answer = (u32, Verdict, Effects, Option<ClientAddress>);

pub enum Enqueued {
    Started,
    Joined,
    Busy,
}

impl LedgerQueue {
    fn replica(&mut self) -> String {
        if self.replica.is_empty() {
            let random = std::collections::hash_map::RandomState::new();
            self.replica = format!("{:016x}", random.hash_one(0x7478_6761_7465u64));
        }
        self.replica.clone()
    }

    fn seq(&mut self, now_ms: u64) -> u64 {
        self.next_seq = self.next_seq.saturating_add(1).max(now_ms);
        self.next_seq
    }

    /// Whether etcd may be asked now (its circuit is closed).
    pub fn available(&self, now_ms: u64) -> bool {
        !self.breaker.is_open(now_ms)
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Parks a request on its payment's ledger call (starting one if none is under way).
    pub fn enqueue(&mut self, context_id: u32, wait: LedgerWait, now_ms: u64) -> Enqueued {
        if self.waiting >= MAX_WAITING {
            return Enqueued::Busy;
        }
        if let Some(op) = self.ops.get_mut(&wait.record) {
            if op.waiters.len() >= MAX_WAITERS_PER_OP {
                return Enqueued::Busy;
            }
            if op.template.is_none() {
                op.template = Some(wait.clone());
            }
            op.waiters.push((context_id, wait));
            self.waiting = self.waiting.saturating_add(1);
            return Enqueued::Joined;
        }
        let record = wait.record;
        let op =
            Op { slot: wait.slot, waiters: vec![(context_id, wait.clone())], template: Some(wait), started_ms: now_ms };
        self.ops.insert(record, op);
        self.pending.push(record);
        self.waiting = self.waiting.saturating_add(1);
        Enqueued::Started
    }

    /// Starts a background reservation for a payment whose held block is running low.
    pub fn refill(&mut self, slot: usize, record: [u8; 32], now_ms: u64) -> bool {
        if self.ops.contains_key(&record) {
            return false;
        }
        self.ops.insert(record, Op { slot, waiters: Vec::new(), template: None, started_ms: now_ms });
        self.pending.push(record);
        true
    }

    /// Forgets a request that ended (client gone) while waiting.
    pub fn forget(&mut self, context_id: u32) {
        for op in self.ops.values_mut() {
            let before = op.waiters.len();
            op.waiters.retain(|(id, _)| *id != context_id);
            self.waiting = self.waiting.saturating_sub(before.saturating_sub(op.waiters.len()));
        }
    }

    fn remove(&mut self, record: &[u8; 32]) -> Option<Op> {
        let op = self.ops.remove(record)?;
        self.waiting = self.waiting.saturating_sub(op.waiters.len());
        Some(op)
    }

    /// Ends an op: every waiter is answered as the ledger being unavailable.
    fn fail(&mut self, gate: &Gate, record: &[u8; 32], now_ms: u64, done: &mut Vec<Answer>) {
        let Some(op) = self.remove(record) else { return };
        if let Some(table) = &gate.ledger {
            table.refill_over(&HostStore, op.slot, record);
        }
        for (context_id, wait) in op.waiters {
            let payee = wait.ticket.payee.clone();
            let (verdict, effects) = gate.ledger_failed(&HostStore, wait, now_ms);
            done.push((context_id, verdict, effects, payee));
        }
    }

    fn within_deadline(gate: &Gate, op: &Op, now_ms: u64) -> bool {
        let deadline = gate.config.ledger.as_ref().map_or(0, |l| millis(l.deadline));
        now_ms < op.started_ms.saturating_add(deadline)
    }

    pub(super) fn post(gate: &Gate, path: &str, body: &str, timeout: Duration) -> Result<u32, ()> {
        let Some(ledger) = &gate.config.ledger else { return Err(()) };
        let headers = vec![
            (":method", "POST"),
            (":path", path),
            (":authority", ledger.authority.as_str()),
            ("content-type", "application/json"),
            ("user-agent", concat!("txgate/", env!("CARGO_PKG_VERSION"))),
        ];
        hostcalls::dispatch_http_call(&ledger.cluster, headers, Some(body.as_bytes()), vec![], timeout).map_err(
            |status| {
                log::error!("txgate: cannot call ledger cluster {:?}: {status:?}", ledger.cluster);
            },
        )
    }

    /// The per-call timeout, cut to what is left of the op's deadline.
    fn timeout(gate: &Gate, op: &Op, now_ms: u64) -> Duration {
        let Some(ledger) = &gate.config.ledger else { return Duration::from_millis(1) };
        let end = op.started_ms.saturating_add(millis(ledger.deadline));
        ledger.timeout.min(Duration::from_millis(end.saturating_sub(now_ms).max(1)))
    }

    /// Sends every pending op's attempt (from the root's tick).
    pub fn dispatch_pending(&mut self, gate: &Gate, metrics: &Metrics, now_ms: u64, done: &mut Vec<Answer>) {
        let Some(ledger) = &gate.config.ledger else { return };
        let prefix = ledger.prefix(gate.config.network.name());
        let replica = self.replica();
        for record in std::mem::take(&mut self.pending) {
            let seq = self.seq(now_ms);
            let Some(op) = self.ops.get(&record) else { continue };
            if self.breaker.is_open(now_ms) || !Self::within_deadline(gate, op, now_ms) {
                self.fail(gate, &record, now_ms, done);
                continue;
            }
            let attempt = match self.uncertain.get(&record) {
                Some(attempt) => Some(attempt.clone()),
                None => gate.ledger_attempt(&HostStore, op.slot, &record, op.template.as_ref(), seq, now_ms),
            };
            let Some(attempt) = attempt else {
                // A background refill for a payment this Envoy no longer knows: nothing to do.
                self.fail(gate, &record, now_ms, done);
                continue;
            };
            // The first use also tells the other replicas what the chain said (no re-verification).
            let facts = match &attempt {
                etcd::Attempt::First { .. } => gate.chain_facts(&HostStore, op.slot, &record),
                etcd::Attempt::Reserve { .. } => None,
            };
            let body = attempt.body_with_facts(&Keys::new(&prefix, &record, &replica), &replica, facts.as_ref());
            metrics.count(Counter::LedgerCalls);
            match Self::post(gate, TXN_PATH, &body, Self::timeout(gate, op, now_ms)) {
                Ok(token) => {
                    self.calls.insert(token, Call::Txn { record, attempt });
                }
                Err(()) => {
                    metrics.count(Counter::LedgerErrors);
                    self.breaker.failure(&ledger.breaker, now_ms);
                    self.fail(gate, &record, now_ms, done);
                }
            }
        }
    }

    /// A ledger callout came back (`answer`: status and body, or no response at all).
    pub fn on_response(
        &mut self,
        gate: &Gate,
        metrics: &Metrics,
        call: Call,
        answer: Option<(u16, Vec<u8>)>,
        now_ms: u64,
        done: &mut Vec<Answer>,
    ) {
        let Some(ledger) = &gate.config.ledger else { return };
        let (record, attempt, result) = match call {
            Call::Lease { record, attempt } => {
                let granted = match &answer {
                    Some((status, body)) => parse_lease_grant(*status, body),
                    None => Err(EtcdError::NoResponse),
                };
                match granted {
                    Ok(()) => {
                        // The txn that named the lease was refused, so it did not commit: send
                        // it again as it was.
                        self.uncertain.insert(record, attempt);
                        self.retry_or_fail(gate, &record, now_ms, done);
                    }
                    Err(error) => self.failed(gate, metrics, record, attempt, &error, now_ms, done),
                }
                return;
            }
            Call::Txn { record, attempt } => {
                let result = match &answer {
                    Some((status, body)) => parse_txn(*status, body),
                    None => Err(EtcdError::NoResponse),
                };
                (record, attempt, result)
            }
        };
        let reply = match result {
            Ok(reply) => reply,
            Err(EtcdError::LeaseNotFound) => {
                let (id, bucket) = (attempt.lease(), ledger.lease_bucket.as_secs());
                let body = lease_grant_body(id, lease_ttl(id, bucket, now_ms / 1000));
                metrics.count(Counter::LedgerCalls);
                let timeout = self.ops.get(&record).map_or(ledger.timeout, |op| Self::timeout(gate, op, now_ms));
                match Self::post(gate, LEASE_GRANT_PATH, &body, timeout) {
                    Ok(token) => {
                        self.calls.insert(token, Call::Lease { record, attempt });
                    }
                    Err(()) => self.failed(gate, metrics, record, attempt, &EtcdError::NoResponse, now_ms, done),
                }
                return;
            }
            Err(error) => {
                self.failed(gate, metrics, record, attempt, &error, now_ms, done);
                return;
            }
        };
        self.breaker.success();
        if self.uncertain.get(&record) == Some(&attempt) {
            self.uncertain.remove(&record);
        }
        let slot = self.ops.get(&record).map(|op| op.slot);
        let absorbed = match (&gate.ledger, slot) {
            (Some(table), Some(slot)) => table.absorb(&HostStore, slot, &record, &attempt, &reply),
            _ => return,
        };
        match absorbed {
            Ok(Ok(Absorbed::Granted(k))) if k > 0 => metrics.count(Counter::LedgerBlocks),
            Ok(Ok(_)) => {}
            Ok(Err(why)) => log::error!("txgate: ledger reply for {} does not fit: {}", hex::encode(record), why.0),
            Err(e) => log::warn!("txgate: recording a ledger reply failed: {e}"),
        }
        // Every waiter is judged again from the new held state; those the block did not cover
        // wait for another reservation.
        let Some(mut op) = self.remove(&record) else { return };
        let mut still = Vec::new();
        for (context_id, wait) in std::mem::take(&mut op.waiters) {
            let payee = wait.ticket.payee.clone();
            match gate.ledger_take(&HostStore, wait, now_ms) {
                (Verdict::Ledger(wait), _) => still.push((context_id, *wait)),
                (verdict, effects) => done.push((context_id, verdict, effects, payee)),
            }
        }
        if still.is_empty() {
            return;
        }
        self.waiting = self.waiting.saturating_add(still.len());
        op.template = still.first().map(|(_, w)| w.clone());
        op.waiters = still;
        self.ops.insert(record, op);
        self.retry_or_fail(gate, &record, now_ms, done);
    }

    fn retry_or_fail(&mut self, gate: &Gate, record: &[u8; 32], now_ms: u64, done: &mut Vec<Answer>) {
        match self.ops.get(record) {
            Some(op) if Self::within_deadline(gate, op, now_ms) && !self.breaker.is_open(now_ms) => {
                self.pending.push(*record);
            }
            Some(_) => self.fail(gate, record, now_ms, done),
            None => {}
        }
    }

    /// A call that failed: its attempt may have committed, so it is kept and resent unchanged.
    #[allow(clippy::too_many_arguments)]
    fn failed(
        &mut self,
        gate: &Gate,
        metrics: &Metrics,
        record: [u8; 32],
        attempt: Attempt,
        error: &etcd::EtcdError,
        now_ms: u64,
        done: &mut Vec<Answer>,
    ) {
        metrics.count(Counter::LedgerErrors);
        log::warn!("txgate: ledger call for {} failed: {error}", hex::encode(record));
        if self.uncertain.len() < MAX_UNCERTAIN || self.uncertain.contains_key(&record) {
            self.uncertain.insert(record, attempt);
        }
        if let Some(ledger) = &gate.config.ledger {
            if self.breaker.failure(&ledger.breaker, now_ms) {
                log::warn!("txgate: ledger failing, not asked for {:?}", ledger.breaker.cool_down);
            }
        }
        self.retry_or_fail(gate, &record, now_ms, done);
    }
}
