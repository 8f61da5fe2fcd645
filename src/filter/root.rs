//! The root context: reads and checks the configuration, defines metrics, makes stream contexts,
//! and runs every explorer lookup of its worker (see `verifier`).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, MapType};

use super::host::{self, HostStore, Metrics};
use super::ledger::{Answer, Enqueued};
use super::payment_check::PaymentCheck;
use super::verifier::{Call, Verifier};
use crate::breaker::{first_explorer, next_explorer, Breaker};
use crate::config::Config;
use crate::duration::millis;
use crate::esplora::{self, ExplorerError, TxAnswer, MAX_BODY_BYTES};
use crate::gate::{Effects, Gate, LookupResult, Stored, Verdict};
use crate::metrics::Counter;
use crate::rejection::Rejection;
use crate::txid::Txid;

/// The tick only starts dispatches, so it runs as soon as the host allows and only while
/// lookups are pending.
const DISPATCH_TICK: Duration = Duration::from_millis(1);

/// Below this much time left of the deadline, another explorer could not answer anyway.
const MIN_FAILOVER_BUDGET_MS: u64 = 100;

#[derive(Default)]
pub struct FilterRoot {
    gate: Option<Rc<Gate>>,
    metrics: Option<Rc<Metrics>>,
    verifier: Rc<RefCell<Verifier>>,
}

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
                Some(Call::Tip { explorer }) => {
                    let parsed = answer.and_then(|(s, b)| esplora::parse_tip_height(s, &b));
                    self.on_tip_answer(&gate, &mut v, explorer, parsed, now_ms, &mut done);
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
        let mut ledger_done: Vec<Answer> = Vec::new();
        {
            let Ok(mut v) = self.verifier.try_borrow_mut() else { return };
            let pending = std::mem::take(&mut v.pending);
            // Read the tip alongside, from the explorer the lookups will ask first, so a
            // confirmed payment does not wait a second round trip.
            if let Some(first) = first_explorer(&v.breakers, now_ms) {
                if !pending.is_empty() && gate.tip_needed(&HostStore, first, None, now_ms) {
                    self.dispatch_tip(&gate, &mut v, first, now_ms, &mut done);
                }
            }
            for txid in pending {
                self.dispatch_tx(&gate, &mut v, txid, 0, now_ms, &mut done);
            }
            if let Some(metrics) = &self.metrics {
                v.ledger.dispatch_pending(&gate, metrics, now_ms, &mut ledger_done);
            }
            v.tick_armed = false;
        }
        if let Err(status) = hostcalls::set_tick_period(Duration::ZERO) {
            log::warn!("txgate: stopping the tick failed: {status:?}");
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

/// Starts a background reservation when `effects` ask for one (warm path at the low-water mark).
pub fn start_refill(verifier: &RefCell<Verifier>, effects: Effects, now_ms: u64) {
    let Some((slot, record)) = effects.ledger_refill else { return };
    if let Ok(mut v) = verifier.try_borrow_mut() {
        if v.ledger.refill(slot, record, now_ms) && !arm_tick(&mut v) {
            log::error!("txgate: arming the tick for a ledger refill failed");
        }
    }
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
