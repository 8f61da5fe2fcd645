//! The root context: reads and checks the configuration, defines metrics, makes stream contexts,
//! and runs every explorer lookup of its worker (see `verifier`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::host::{self, HostStore, Metrics};
use super::ledger::{Answer, Enqueued, LedgerQueue};
use super::payment_check::PaymentCheck;
use super::verifier::{Call, Verifier};
use crate::breaker::{first_explorer, next_explorer, Breaker};
use crate::config::Config;
use crate::duration::millis;
use crate::esplora::{self, ExplorerError, TxAnswer, MAX_BODY_BYTES};
use crate::gate::{Effects, Gate, LookupResult, Stored, Verdict};
use crate::ledger::etcd::{parse_range, range_body, ChainFacts, EtcdError, RANGE_PATH};
use crate::metrics::Counter;
use crate::rejection::Rejection;
use crate::spv_lookup::{Env, Fetch, Next, Outcome, SpvLookup};
use crate::txid::Txid;

/// The tick only starts dispatches, so it runs as soon as the host allows and only while
/// lookups are pending.
const DISPATCH_TICK: Duration = Duration::from_millis(1);

/// While lookups are under way the tick also runs this often, to end any lookup that outlived
/// its deadline: a waiter must never hang until the client's own timeout, holding a slot.
const SWEEP_TICK: Duration = Duration::from_millis(500);

/// Grace past the deadline before a lookup is ended (its last call has the deadline as timeout).
const SWEEP_GRACE_MS: u64 = 1_000;

/// Below this much time left of the deadline, another explorer could not answer anyway.
const MIN_FAILOVER_BUDGET_MS: u64 = 100;

#[derive(Default)]
pub struct FilterRoot {
    gate: Option<Rc<Gate>>,
    metrics: Option<Rc<Metrics>>,
    verifier: Rc<RefCell<Verifier>>,
    /// Tokens of the posts to the node guard under way.
    guard_calls: Vec<u32>,
}

const GUARD_TIMEOUT: Duration = Duration::from_millis(250);

/// `<branch>/<hi>/<lo>` of a per-client address.
type DerivationPath = (u32, u32, u32);

/// Lookups that finished during one callback, answered after the verifier is released.
type Finished = Vec<(Txid, LookupResult)>;

impl FilterRoot {
    fn dispatch(gate: &Gate, explorer: usize, path: &str, timeout: Duration) -> Result<u32, ExplorerError> {
        let e = gate.config.explorers.get(explorer).ok_or(ExplorerError::NoResponse)?;
        let full_path = format!("{}{path}", e.path_prefix);
        let headers = vec![
            (":method", "GET"),
            (":path", full_path.as_str()),
            (":authority", e.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", concat!("txgate/", env!("CARGO_PKG_VERSION"))),
        ];
        hostcalls::dispatch_http_call(&e.cluster, headers, None, vec![], timeout).map_err(|status| {
            // Unknown cluster or missing pseudo-header: a deployment mistake, worth an error line.
            log::error!("txgate: cannot call explorer cluster {:?}: {status:?}", e.cluster);
            ExplorerError::NoResponse
        })
    }

    /// Sends `path` to the first usable explorer from `from` on, skipping open circuits and
    /// explorers the host refuses; returns the call's token and the explorer's index.
    fn dispatch_with_failover(
        &self,
        gate: &Gate,
        v: &mut Verifier,
        from: usize,
        path: &str,
        timeout: Duration,
        now_ms: u64,
    ) -> Option<(u32, usize)> {
        let mut next =
            if from == 0 { first_explorer(&v.breakers, now_ms) } else { next_explorer(&v.breakers, from, now_ms) };
        while let Some(explorer) = next {
            self.count(Counter::ExplorerCalls);
            match Self::dispatch(gate, explorer, path, timeout) {
                Ok(token) => return Some((token, explorer)),
                Err(_) => {
                    self.count(Counter::ExplorerErrors);
                    self.explorer_failed(gate, v, explorer, now_ms);
                    next = next_explorer(&v.breakers, explorer.saturating_add(1), now_ms);
                }
            }
        }
        None
    }

    /// A new lookup: with the ledger, first the chain facts another replica verified (one etcd
    /// read, no explorer call when they are there), else the explorers.
    fn start_lookup(&self, gate: &Gate, v: &mut Verifier, txid: Txid, now_ms: u64, done: &mut Finished) {
        if let (true, Some(key), Some(ledger)) =
            (gate.shares_chain_facts() && v.ledger.available(now_ms), gate.chain_facts_key(&txid), &gate.config.ledger)
        {
            self.count(Counter::LedgerCalls);
            if let Ok(token) = LedgerQueue::post(gate, RANGE_PATH, &range_body(&key), ledger.timeout) {
                v.calls.insert(token, Call::Facts { txid });
                return;
            }
            self.count(Counter::LedgerErrors);
        }
        self.dispatch_tx(gate, v, txid, 0, now_ms, done);
    }

    /// The ledger's answer about a payment's chain facts: used as the explorer's, or the
    /// explorers are asked when there are none (or etcd did not answer).
    fn on_facts_answer(
        &self,
        gate: &Gate,
        v: &mut Verifier,
        txid: Txid,
        answer: Result<(u16, Vec<u8>), ExplorerError>,
        now_ms: u64,
        done: &mut Finished,
    ) {
        if !v.lookups.contains_key(&txid) {
            return; // Ended by the sweep meanwhile: nobody waits for it.
        }
        let read = answer.map_err(|_| EtcdError::NoResponse).and_then(|(status, body)| parse_range(status, &body));
        let facts = match read {
            Ok(found) => found.and_then(|bytes| ChainFacts::decode(&bytes)),
            Err(error) => {
                self.count(Counter::LedgerErrors);
                log::warn!("txgate: reading the chain facts of {txid} from the ledger failed: {error}");
                None
            }
        };
        match facts.and_then(|f| gate.answer_from_facts(&f)) {
            Some(lookup) => {
                self.count(Counter::LedgerFactsHits);
                let explorer = first_explorer(&v.breakers, now_ms).unwrap_or(0);
                self.tx_known(gate, v, (txid, explorer), lookup, now_ms, done);
            }
            None => self.dispatch_tx(gate, v, txid, 0, now_ms, done),
        }
    }

    fn dispatch_tx(&self, gate: &Gate, v: &mut Verifier, txid: Txid, from: usize, now_ms: u64, done: &mut Finished) {
        // Later explorers get what is left of the deadline, so the whole lookup stays within it.
        let timeout = Self::deadline_at(gate, v, &txid).map_or(gate.config.timeout, |end| {
            gate.config.timeout.min(Duration::from_millis(end.saturating_sub(now_ms).max(1)))
        });
        match self.dispatch_with_failover(gate, v, from, &format!("/tx/{txid}"), timeout, now_ms) {
            Some((token, explorer)) => {
                v.calls.insert(token, Call::Tx { txid, explorer });
            }
            None => done.push((txid, LookupResult { tx: Err(ExplorerError::NoResponse), tip: None, explorer: from })),
        }
    }

    /// Starts (or, after a failure, moves on with) a `verify: spv` lookup at the first usable
    /// explorer from `from` on; `last` is what the lookup ends with when none is left.
    fn start_spv(
        &self,
        gate: &Gate,
        v: &mut Verifier,
        txid: Txid,
        (from, last): (usize, ExplorerError),
        now_ms: u64,
        done: &mut Finished,
    ) {
        let next =
            if from == 0 { first_explorer(&v.breakers, now_ms) } else { next_explorer(&v.breakers, from, now_ms) };
        let depth = v
            .lookups
            .get(&txid)
            .and_then(|l| l.waiters.iter().map(|(_, t)| t.policy.min_confirmations).max())
            .unwrap_or(1);
        let lookup = next.and_then(|explorer| SpvLookup::new(txid.as_str(), explorer, depth));
        let Some(mut spv) = lookup else {
            done.push((txid, LookupResult { tx: Err(last), tip: None, explorer: from }));
            return;
        };
        let first = spv.start();
        match v.lookups.get_mut(&txid) {
            Some(l) => l.spv = Some(spv),
            None => return,
        }
        self.spv_drive(gate, v, &txid, first, now_ms, done);
    }

    /// Hands one answer to the lookup's state machine.
    fn spv_feed(
        gate: &Gate,
        v: &mut Verifier,
        txid: &Txid,
        (explorer, fetch): (usize, Fetch),
        answer: Result<(u16, Vec<u8>), ExplorerError>,
        now_ms: u64,
    ) -> Next {
        let Some(spv_config) = gate.config.spv() else { return Next::Wait };
        let Some(answering) = v.lookups.get(txid).and_then(|l| l.spv.as_ref()).map(|s| s.explorer) else {
            return Next::Wait;
        };
        let others: Vec<usize> = (0..gate.config.explorers.len())
            .filter(|e| *e != answering && v.breakers.get(*e).is_some_and(|b| !b.is_open(now_ms)))
            .collect();
        let Some(spv) = v.lookups.get_mut(txid).and_then(|l| l.spv.as_mut()) else { return Next::Wait };
        let mut env =
            Env { floor: &spv_config.floor, quorum: spv_config.quorum, others: &others, headers: &mut v.headers };
        spv.on_answer(explorer, fetch, answer, &mut env)
    }

    /// Makes the calls the state machine asks for, until it waits or is done.
    fn spv_drive(&self, gate: &Gate, v: &mut Verifier, txid: &Txid, mut next: Next, now_ms: u64, done: &mut Finished) {
        loop {
            let requests = match next {
                Next::Wait => return,
                Next::Done(outcome) => return self.spv_done(gate, v, txid, outcome, now_ms, done),
                Next::Dispatch(requests) => requests,
            };
            let Some(answering) = v.lookups.get(txid).and_then(|l| l.spv.as_ref()).map(|s| s.explorer) else {
                return;
            };
            let timeout = Self::deadline_at(gate, v, txid).map_or(gate.config.timeout, |end| {
                gate.config.timeout.min(Duration::from_millis(end.saturating_sub(now_ms).max(1)))
            });
            let mut failed = Vec::new();
            for r in requests {
                self.count(Counter::ExplorerCalls);
                match Self::dispatch(gate, r.explorer, &r.fetch.path(txid.as_str()), timeout) {
                    Ok(token) => {
                        let call = Call::Spv { txid: txid.clone(), answering, explorer: r.explorer, fetch: r.fetch };
                        v.calls.insert(token, call);
                    }
                    Err(error) => {
                        self.count(Counter::ExplorerErrors);
                        self.explorer_failed(gate, v, r.explorer, now_ms);
                        failed.push((r, error));
                    }
                }
            }
            next = Next::Wait;
            let mut more = Vec::new();
            for (r, error) in failed {
                match Self::spv_feed(gate, v, txid, (r.explorer, r.fetch), Err(error), now_ms) {
                    Next::Wait => {}
                    Next::Dispatch(requests) => more.extend(requests),
                    finished @ Next::Done(_) => {
                        next = finished;
                        break;
                    }
                }
            }
            if matches!(next, Next::Wait) && !more.is_empty() {
                next = Next::Dispatch(more);
            }
        }
    }

    /// A `verify: spv` lookup's outcome: an answer, or a failure that moves to the next explorer.
    fn spv_done(&self, gate: &Gate, v: &mut Verifier, txid: &Txid, outcome: Outcome, now_ms: u64, done: &mut Finished) {
        let Some(spv) = v.lookups.get_mut(txid).and_then(|l| l.spv.take()) else { return };
        let answering = spv.explorer;
        let name = |e: usize| gate.config.explorers.get(e).map_or("", |x| x.cluster.as_str());
        let failover = |error: ExplorerError, done: &mut Finished, v: &mut Verifier| {
            let next = answering.saturating_add(1);
            if next < gate.config.explorers.len() && Self::within_deadline(gate, v, txid, now_ms) {
                self.start_spv(gate, v, txid.clone(), (next, error), now_ms, done);
            } else {
                done.push((txid.clone(), LookupResult { tx: Err(error), tip: None, explorer: answering }));
            }
        };
        match outcome {
            Outcome::Answer(tx) => {
                if let Some(b) = v.breakers.get_mut(answering) {
                    b.success();
                }
                if spv.headers_cached {
                    self.count(Counter::HeaderCacheHits);
                }
                log::info!(
                    "txgate: {txid} checked by proof of work with explorer {} in {} call(s){}",
                    name(answering),
                    spv.calls,
                    if spv.headers_cached { ", headers from the cache" } else { "" }
                );
                done.push((txid.clone(), LookupResult { tx: Ok(tx), tip: None, explorer: answering }));
            }
            Outcome::ExplorerFailed(error) => {
                log::warn!("txgate: explorer {} answer for {txid} unusable: {error}", name(answering));
                if !matches!(error, ExplorerError::TooLarge(_)) {
                    self.count(Counter::ExplorerErrors);
                    self.explorer_failed(gate, v, answering, now_ms);
                }
                failover(error, done, v);
            }
            Outcome::ProofInvalid(why) => {
                log::warn!(
                    "txgate: explorer {} served a proof for {txid} that does not verify: {why}",
                    name(answering)
                );
                self.count(Counter::InvalidProofs);
                self.explorer_failed(gate, v, answering, now_ms);
                failover(ExplorerError::ProofInvalid(why), done, v);
            }
            Outcome::QuorumUnavailable => {
                log::warn!("txgate: no second explorer answered for {txid}; payment not admitted");
                done.push((
                    txid.clone(),
                    LookupResult { tx: Err(ExplorerError::NoResponse), tip: None, explorer: answering },
                ));
            }
            Outcome::Disagreement { explorer, height, ours, theirs } => {
                let what = format!(
                    "block {height}: explorer {} has {ours}, explorer {} has {theirs}",
                    name(answering),
                    name(explorer)
                );
                log::warn!("txgate: explorers disagree for {txid}: {what}; payment not admitted");
                done.push((
                    txid.clone(),
                    LookupResult { tx: Err(ExplorerError::Disagreement(what)), tip: None, explorer: answering },
                ));
            }
            Outcome::QuorumBehind { explorer, height } => {
                log::info!("txgate: explorer {} has no block {height} yet for {txid}", name(explorer));
                done.push((
                    txid.clone(),
                    LookupResult { tx: Err(ExplorerError::QuorumBehind), tip: None, explorer: answering },
                ));
            }
        }
    }

    /// Reads the tip of `explorer` itself: confirmations are counted with the tip of the explorer
    /// that answered for the transaction, so one explorer's tip never inflates another's answers.
    fn dispatch_tip(&self, gate: &Gate, v: &mut Verifier, explorer: usize, now_ms: u64, done: &mut Finished) {
        if v.tips_in_flight.contains(&explorer) {
            return;
        }
        self.count(Counter::ExplorerCalls);
        match Self::dispatch(gate, explorer, "/blocks/tip/height", gate.config.timeout) {
            Ok(token) => {
                v.calls.insert(token, Call::Tip { explorer });
                v.tips_in_flight.push(explorer);
            }
            Err(_) => {
                self.count(Counter::ExplorerErrors);
                self.explorer_failed(gate, v, explorer, now_ms);
                // This explorer cannot tell its tip: whoever waits for it is decided without one.
                release_tip_waiters(v, explorer, None, done);
            }
        }
    }

    fn explorer_failed(&self, gate: &Gate, v: &mut Verifier, explorer: usize, now_ms: u64) {
        if let Some(breaker) = v.breakers.get_mut(explorer) {
            if breaker.failure(&gate.config.breaker, now_ms) {
                log::warn!(
                    "txgate: explorer {} failing, skipped for {:?}",
                    gate.config.explorers.get(explorer).map_or("", |e| e.cluster.as_str()),
                    gate.config.breaker.cool_down
                );
            }
        }
    }

    fn count(&self, counter: Counter) {
        if let Some(m) = &self.metrics {
            m.count(counter);
        }
    }

    /// When the lookup of `txid` must be over (unix ms).
    fn deadline_at(gate: &Gate, v: &Verifier, txid: &Txid) -> Option<u64> {
        v.lookups.get(txid).map(|l| l.started_ms.saturating_add(millis(gate.config.deadline)))
    }

    /// Whether enough of the deadline is left to ask another explorer.
    fn within_deadline(gate: &Gate, v: &Verifier, txid: &Txid, now_ms: u64) -> bool {
        Self::deadline_at(gate, v, txid).is_some_and(|end| now_ms.saturating_add(MIN_FAILOVER_BUDGET_MS) < end)
    }

    fn on_tx_answer(
        &self,
        gate: &Gate,
        v: &mut Verifier,
        (txid, explorer): (Txid, usize),
        answer: Result<TxAnswer, ExplorerError>,
        now_ms: u64,
        done: &mut Finished,
    ) {
        match answer {
            Err(error) => {
                log::warn!("txgate: explorer {explorer} answer for {txid} unusable: {error}");
                // A transaction too large to read is a fact about the transaction: another
                // explorer may still serve it, but this one is not failing, so no breaker trips.
                if !matches!(error, ExplorerError::TooLarge(_)) {
                    self.count(Counter::ExplorerErrors);
                    self.explorer_failed(gate, v, explorer, now_ms);
                }
                let next = explorer.saturating_add(1);
                if next < gate.config.explorers.len() && Self::within_deadline(gate, v, &txid, now_ms) {
                    self.dispatch_tx(gate, v, txid, next, now_ms, done);
                } else {
                    done.push((txid, LookupResult { tx: Err(error), tip: None, explorer }));
                }
            }
            Ok(lookup) => {
                if let Some(b) = v.breakers.get_mut(explorer) {
                    b.success();
                }
                self.tx_known(gate, v, (txid, explorer), lookup, now_ms, done);
            }
        }
    }

    /// The transaction is known (from `explorer`, or from the ledger): finish the lookup, after
    /// reading that explorer's tip when the block is above the tip it last told.
    fn tx_known(
        &self,
        gate: &Gate,
        v: &mut Verifier,
        (txid, explorer): (Txid, usize),
        lookup: TxAnswer,
        now_ms: u64,
        done: &mut Finished,
    ) {
        let block_height = lookup.block().map(|b| b.height);
        // A block above this explorer's known tip proves that tip old: read it again.
        let needs_tip = block_height.is_some_and(|h| {
            v.tips_in_flight.contains(&explorer) || gate.tip_needed(&HostStore, explorer, Some(h), now_ms)
        });
        if needs_tip {
            if let Some(l) = v.lookups.get_mut(&txid) {
                l.tx = Some((Ok(lookup), explorer));
            }
            self.dispatch_tip(gate, v, explorer, now_ms, done);
        } else {
            done.push((txid, LookupResult { tx: Ok(lookup), tip: None, explorer }));
        }
    }

    fn on_tip_answer(
        &self,
        gate: &Gate,
        v: &mut Verifier,
        explorer: usize,
        answer: Result<u64, ExplorerError>,
        now_ms: u64,
        done: &mut Finished,
    ) {
        v.tips_in_flight.retain(|e| *e != explorer);
        match answer {
            Ok(height) => {
                if let Some(b) = v.breakers.get_mut(explorer) {
                    b.success();
                }
                gate.record_tip(&HostStore, explorer, height, now_ms);
                release_tip_waiters(v, explorer, Some(height), done);
            }
            Err(error) => {
                self.count(Counter::ExplorerErrors);
                log::warn!("txgate: explorer {explorer} tip height unusable: {error}");
                self.explorer_failed(gate, v, explorer, now_ms);
                release_tip_waiters(v, explorer, None, done);
            }
        }
    }

    /// Answers every request that waited on the finished lookups.
    fn finish(&self, gate: &Gate, done: Finished) {
        let Some(metrics) = &self.metrics else { return };
        let now_ms = host::now_unix_ms();
        for (txid, result) in done {
            let waiters = match self.verifier.try_borrow_mut() {
                Ok(mut v) => v.finish(&txid),
                Err(_) => continue,
            };
            // One record per payee: with per-client addresses, each client's own outputs count.
            let mut stored_for: Vec<(Option<DerivationPath>, Stored)> = Vec::new();
            for (context_id, ticket) in waiters {
                let path = ticket.payee.as_ref().map(|p| p.path);
                let stored = match stored_for.iter().find(|(p, _)| *p == path) {
                    Some((_, stored)) => *stored,
                    None => {
                        let stored = gate.remember(&HostStore, &txid, ticket.payee.as_ref(), &result, now_ms);
                        stored_for.push((path, stored));
                        stored
                    }
                };
                let payee = ticket.payee.clone();
                let (verdict, effects) = gate.resolve(&HostStore, ticket, &result, stored, now_ms);
                self.answer(gate, metrics, (context_id, verdict, effects, payee), now_ms);
            }
        }
    }

    /// Answers one paused request, or parks it on the ledger when its payment needs etcd.
    fn answer(&self, gate: &Gate, metrics: &Metrics, answer: Answer, now_ms: u64) {
        let (context_id, mut verdict, effects, payee) = answer;
        host::count_effects(metrics, effects);
        self.start_refill(effects, now_ms);
        if let Verdict::Ledger(wait) = verdict {
            let policy = wait.ticket.policy;
            let queued = match self.verifier.try_borrow_mut() {
                Ok(mut v) => match v.ledger.enqueue(context_id, *wait, now_ms) {
                    Enqueued::Started | Enqueued::Joined => arm_tick(&mut v),
                    Enqueued::Busy => false,
                },
                Err(_) => false,
            };
            if queued {
                return;
            }
            verdict = Verdict::Reject { rejection: Rejection::VerificationBusy, policy: Some(policy) };
        }
        // A request that ended while waiting is gone from the host: nothing to answer.
        if hostcalls::set_effective_context(context_id).is_err() {
            return;
        }
        if let (true, Some(_)) = (effects.banned, &gate.config.guard) {
            let source = host::property(&["source", "address"]);
            if let (Some(source), Ok(mut v)) = (source, self.verifier.try_borrow_mut()) {
                queue_guard_post(&mut v, gate, &source, u64::MAX);
            }
        }
        host::carry_out_paused(context_id, gate, metrics, &verdict, payee.as_ref());
    }

    /// A request took its Envoy's held block to the low-water mark: reserve the next one now.
    fn start_refill(&self, effects: Effects, now_ms: u64) {
        start_refill(&self.verifier, effects, now_ms);
    }

    fn answer_all(&self, gate: &Gate, answers: Vec<Answer>) {
        let Some(metrics) = &self.metrics else { return };
        let now_ms = host::now_unix_ms();
        for answer in answers {
            self.answer(gate, metrics, answer, now_ms);
        }
    }
}

/// Finishes every lookup that had its transaction answer from `explorer` and waited for its tip.
fn release_tip_waiters(v: &mut Verifier, explorer: usize, tip: Option<u64>, done: &mut Finished) {
    v.tips_in_flight.retain(|e| *e != explorer);
    for txid in v.waiting_for_tip(explorer) {
        let tx = v.lookups.get_mut(&txid).and_then(|l| l.tx.take()).map(|(tx, _)| tx);
        done.push((txid, LookupResult { tx: tx.unwrap_or(Err(ExplorerError::NoResponse)), tip, explorer }));
    }
}

fn read_callout(num_headers: usize, body_size: usize) -> Result<(u16, Vec<u8>), ExplorerError> {
    if num_headers == 0 {
        return Err(ExplorerError::NoResponse);
    }
    let status = host::header_bytes(MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u16>().ok()))
        .ok_or(ExplorerError::NoResponse)?;
    if body_size > MAX_BODY_BYTES {
        return Err(ExplorerError::TooLarge(body_size));
    }
    let body = host::buffer(BufferType::HttpCallResponseBody, body_size).ok_or(ExplorerError::NoResponse)?;
    Ok((status, body))
}

impl Context for FilterRoot {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if let Some(i) = self.guard_calls.iter().position(|t| *t == token_id) {
            self.guard_calls.swap_remove(i);
            let status = host::header_bytes(MapType::HttpCallResponseHeaders, ":status");
            if status.as_deref() != Some(b"200".as_slice()) {
                self.count(Counter::GuardErrors);
                let status = status.and_then(|s| String::from_utf8(s).ok()).unwrap_or_default();
                log::warn!("txgate: the node guard did not take a ban: status {status}");
            }
            return;
        }
        let Some(gate) = self.gate.clone() else { return };
        let now_ms = host::now_unix_ms();
        let answer = read_callout(num_headers, body_size);
        let mut done = Finished::new();
        let mut ledger_done: Vec<Answer> = Vec::new();
        {
            let Ok(mut v) = self.verifier.try_borrow_mut() else {
                log::error!("txgate: explorer answer arrived while the verifier was busy; dropped");
                return;
            };
            match v.calls.remove(&token_id) {
                Some(Call::Tx { txid, explorer }) => {
                    let parsed = answer.and_then(|(s, b)| esplora::parse_tx_outputs(s, &b, &txid));
                    self.on_tx_answer(&gate, &mut v, (txid, explorer), parsed, now_ms, &mut done);
                }
                Some(Call::Facts { txid }) => self.on_facts_answer(&gate, &mut v, txid, answer, now_ms, &mut done),
                Some(Call::Tip { explorer }) => {
                    let parsed = answer.and_then(|(s, b)| esplora::parse_tip_height(s, &b));
                    self.on_tip_answer(&gate, &mut v, explorer, parsed, now_ms, &mut done);
                }
                Some(Call::Spv { txid, answering, explorer, fetch }) => {
                    let current = v.lookups.get(&txid).and_then(|l| l.spv.as_ref()).map(|s| s.explorer);
                    if current == Some(answering) {
                        if matches!(fetch, Fetch::BlockHeight(_)) {
                            // A quorum explorer that does not answer counts against its breaker.
                            if answer.as_ref().map_or(true, |(status, _)| *status >= 500) {
                                self.count(Counter::ExplorerErrors);
                                self.explorer_failed(&gate, &mut v, explorer, now_ms);
                            } else if let Some(b) = v.breakers.get_mut(explorer) {
                                b.success();
                            }
                        }
                        let next = Self::spv_feed(&gate, &mut v, &txid, (explorer, fetch), answer, now_ms);
                        self.spv_drive(&gate, &mut v, &txid, next, now_ms, &mut done);
                    }
                }
                None => {
                    let (Some(call), Some(metrics)) = (v.ledger.calls.remove(&token_id), &self.metrics) else { return };
                    v.ledger.on_response(&gate, metrics, call, answer.ok(), now_ms, &mut ledger_done);
                    if v.ledger.has_pending() && !arm_tick(&mut v) {
                        log::error!("txgate: arming the tick for a ledger retry failed");
                    }
                }
            }
        }
        self.answer_all(&gate, ledger_done);
        self.finish(&gate, done);
    }
}

impl RootContext for FilterRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        log::info!("txgate {} starting", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let Some(bytes) = host::buffer(BufferType::PluginConfiguration, plugin_configuration_size) else {
            log::error!("txgate: configuration refused: the plugin configuration could not be read");
            return false;
        };
        let config = match Config::from_json(&bytes) {
            Ok(config) => config,
            Err(err) => {
                log::error!("txgate: configuration refused: {err}");
                return false;
            }
        };
        let scope = crate::scope::Scopes::of(&config).payments;
        log::info!(
            "txgate configured: scope {scope}, network {}, {} address(es), price {} sats, {} route(s), {} explorer(s) starting with cluster {}, failure_mode {:?}, cache {} entries",
            config.network.name(),
            config.pay_to.len(),
            config.default_policy.price_sats,
            config.routes.len(),
            config.explorers.len(),
            config.explorers.first().map_or("", |e| e.cluster.as_str()),
            config.failure_mode,
            config.cache.max_entries,
        );
        if let Ok(mut v) = self.verifier.try_borrow_mut() {
            v.breakers = vec![Breaker::default(); config.explorers.len()];
        }
        let gate = Gate::new(config);
        gate.create_slots(&HostStore);
        self.gate = Some(Rc::new(gate));
        if self.metrics.is_none() {
            self.metrics = Some(Rc::new(Metrics::define()));
        }
        true
    }

    fn on_tick(&mut self) {
        let Some(gate) = self.gate.clone() else { return };
        let now_ms = host::now_unix_ms();
        let mut done = Finished::new();
        let posts;
        let sweep;
        let mut ledger_done: Vec<Answer> = Vec::new();
        {
            let Ok(mut v) = self.verifier.try_borrow_mut() else { return };
            let pending = std::mem::take(&mut v.pending);
            posts = std::mem::take(&mut v.guard_posts);
            if gate.config.spv().is_some() {
                // Proven depth needs no explorer's tip.
                for txid in pending {
                    self.start_spv(&gate, &mut v, txid, (0, ExplorerError::NoResponse), now_ms, &mut done);
                }
            } else {
                // Read the tip alongside, from the explorer the lookups will ask first, so a
                // confirmed payment does not wait a second round trip.
                if let Some(first) = first_explorer(&v.breakers, now_ms) {
                    if !pending.is_empty() && gate.tip_needed(&HostStore, first, None, now_ms) {
                        self.dispatch_tip(&gate, &mut v, first, now_ms, &mut done);
                    }
                }
                for txid in pending {
                    self.start_lookup(&gate, &mut v, txid, now_ms, &mut done);
                }
            }
            if let Some(metrics) = &self.metrics {
                v.ledger.dispatch_pending(&gate, metrics, now_ms, &mut ledger_done);
            }
            v.tick_armed = false;
            let limit = millis(gate.config.deadline).saturating_add(SWEEP_GRACE_MS);
            let overdue: Vec<Txid> = v
                .lookups
                .iter()
                .filter(|(_, l)| now_ms >= l.started_ms.saturating_add(limit))
                .map(|(txid, _)| txid.clone())
                .collect();
            for txid in overdue {
                log::warn!("txgate: lookup of {txid} outlived its deadline; its requests get 503");
                done.push((txid, LookupResult { tx: Err(ExplorerError::NoResponse), tip: None, explorer: 0 }));
            }
            sweep = !v.lookups.is_empty();
        }
        for (address, ttl) in posts {
            self.post_ban(&gate, &address, ttl);
        }
        let period = if sweep { SWEEP_TICK } else { Duration::ZERO };
        if let Err(status) = hostcalls::set_tick_period(period) {
            log::warn!("txgate: setting the tick failed: {status:?}");
        }
        self.answer_all(&gate, ledger_done);
        self.finish(&gate, done);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let metrics = self.metrics.clone().unwrap_or_default();
        Some(Box::new(PaymentCheck::new(context_id, self.gate.clone(), metrics, self.verifier.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl FilterRoot {
    /// Posts a ban to the node guard; a failure is counted and logged, never waited for.
    fn post_ban(&mut self, gate: &Gate, address: &str, ttl: u64) {
        let Some(guard) = &gate.config.guard else { return };
        let body = crate::guard::ban_body(address, ttl, "client_banned");
        let headers = vec![
            (":method", "POST"),
            (":path", "/v1/bans"),
            (":authority", "txgate-guard"),
            ("content-type", "application/json"),
        ];
        self.count(Counter::GuardPosts);
        match hostcalls::dispatch_http_call(&guard.cluster, headers, Some(body.as_bytes()), vec![], GUARD_TIMEOUT) {
            Ok(token) => {
                self.guard_calls.push(token);
                log::info!("txgate: ban of {address} for {ttl}s sent to the node guard");
            }
            Err(status) => {
                self.count(Counter::GuardErrors);
                log::warn!("txgate: cannot call the node guard's cluster {:?}: {status:?}", guard.cluster);
            }
        }
    }
}

/// Starts a background reservation when `effects` ask for one (warm path at the low-water mark).
pub fn start_refill(verifier: &RefCell<Verifier>, effects: Effects, now_ms: u64) {
    let Some((slot, record)) = effects.ledger_refill else { return };
    if let Ok(mut v) = verifier.try_borrow_mut() {
        if v.ledger.refill(slot, record, now_ms) && !arm_tick(&mut v) {
            log::error!("txgate: arming the tick for a ledger refill failed");
        }
    }
}

/// Queues a ban of `source` (Envoy's `source.address`) for the root's next tick; `l7_secs` is
/// what is left of the L7 ban (`u64::MAX` for a new one: the penalty box's `ban_time`).
pub fn queue_guard_post(v: &mut Verifier, gate: &Gate, source: &str, l7_secs: u64) {
    let (Some(guard), Some(address)) = (&gate.config.guard, crate::guard::ban_address(source)) else { return };
    let left = gate.config.penalty.as_ref().map_or(l7_secs, |p| l7_secs.min(p.ban_time.as_secs()));
    let ttl = crate::guard::ttl_secs(guard, left);
    if !v.guard_posts.iter().any(|(a, _)| *a == address) {
        v.guard_posts.push((address, ttl));
    }
    let _ = arm_tick(v);
}

/// Arms the root's tick from a request context (the host applies it to the root context).
pub fn arm_tick(v: &mut Verifier) -> bool {
    if v.tick_armed {
        return true;
    }
    match hostcalls::set_tick_period(DISPATCH_TICK) {
        Ok(()) => {
            v.tick_armed = true;
            true
        }
        Err(status) => {
            log::error!("txgate: arming the dispatch tick failed: {status:?}");
            false
        }
    }
}
