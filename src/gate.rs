//! The decision for one request, from what the glue read off the host and what the shared cache
//! knows. Explorer calls are the glue's job; this module says when one is needed and what its
//! answer means for every request waiting on it.

use crate::cache::{read_tip, txid_bytes, write_tip, PaymentRecord, PaymentState, PaymentTable};
use crate::config::{AccessRef, Config, FailureMode, Policy};
use crate::discount::{self, ClientFacts};
use crate::duration::millis;
use crate::esplora::{ExplorerError, TxLookup};
use crate::grant::Use;
use crate::identity::{identity_hash, strip_port, IdentitySource};
use crate::memo::LocalMemo;
use crate::payment::{decide, Decision, Receipt};
use crate::rejection::Rejection;
use crate::store::SharedStore;
use crate::txid::Txid;

/// Confirmed payments each worker keeps a copy of (about 150 bytes each).
const MEMO_CAPACITY: usize = 4096;

/// What the glue read from the host for one request.
pub struct RequestFacts<'a> {
    pub path: &'a str,
    /// Every request header (names lowercase), values as bytes.
    pub headers: &'a [(String, Vec<u8>)],
    /// URI SAN of the client certificate, when the connection is mTLS.
    pub principal: Option<&'a str>,
    /// `ip:port` of the client.
    pub source_address: Option<&'a str>,
    pub now_ms: u64,
}

impl RequestFacts<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    fn identity(&self, source: &IdentitySource) -> u64 {
        let value: &[u8] = match source {
            IdentitySource::Header(name) => self.header(name).unwrap_or_default(),
            IdentitySource::MtlsPrincipal => self.principal.unwrap_or_default().as_bytes(),
            IdentitySource::SourceAddress => strip_port(self.source_address.unwrap_or_default()).as_bytes(),
        };
        identity_hash(value)
    }
}

/// A request paused until the explorer answers about its txid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub txid: Txid,
    pub policy: Policy,
    /// `name:percent` of the applied discount.
    pub discount: Option<String>,
    pub bind_id: Option<u64>,
    pub client_id: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Free,
    Allow {
        txid: Txid,
        receipt: Receipt,
        discount: Option<String>,
        from_cache: bool,
    },
    /// failure_mode open and no explorer answered.
    AllowUnverified,
    Reject {
        rejection: Rejection,
        policy: Option<Policy>,
    },
    Lookup(Ticket),
}

/// What the explorer said about one txid (and the tip, when it was needed and read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResult {
    pub tx: Result<TxLookup, ExplorerError>,
    pub tip: Option<u64>,
}

/// Side effects the glue reports as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub struck: bool,
    pub banned: bool,
}

pub struct Gate {
    pub config: Config,
    pub payments: PaymentTable,
    memo: LocalMemo,
}

impl Gate {
    pub fn new(config: Config) -> Gate {
        let payments = PaymentTable::new(config.cache.max_entries);
        let memo = LocalMemo::new(config.cache.max_entries.min(MEMO_CAPACITY));
        Gate { config, payments, memo }
    }

    /// Creates every shared-data slot before traffic (see `cache`).
    pub fn create_slots(&self, store: &dyn SharedStore) {
        self.payments.create(store);
        if let Some(penalty) = &self.config.penalty {
            penalty.create(store);
        }
    }

    /// First look at a request: free, refused, answered from the cache, or needs the explorer.
    pub fn admit(
        &self,
        store: &dyn SharedStore,
        facts: &RequestFacts<'_>,
        txid_values: &[&[u8]],
    ) -> (Verdict, Effects) {
        let config = &self.config;
        let base = match config.access_for(facts.path) {
            AccessRef::Free => return (Verdict::Free, Effects::default()),
            AccessRef::Paid(policy) => policy,
        };
        let now_secs = facts.now_ms / 1000;
        let client = config.penalty.as_ref().map(|p| {
            let id = facts.identity(&p.identity);
            (id, p.client(store, id))
        });
        if let (Some(penalty), Some((_, record))) = (&config.penalty, &client) {
            if let Some(secs) = penalty.banned_for(record, now_secs) {
                let rejection = Rejection::ClientBanned { retry_after_secs: secs.max(1) };
                return (Verdict::Reject { rejection, policy: None }, Effects::default());
            }
        }
        let header = |name: &str| facts.header(name);
        let client_facts = ClientFacts {
            principal: facts.principal,
            header: &header,
            last_strike: client.as_ref().and_then(|(_, r)| (r.last_strike != 0).then_some(r.last_strike)),
            now_secs,
        };
        let mut policy = base.clone();
        let discount = discount::best(&config.discounts, &client_facts).map(|d| {
            policy.price_sats = discount::discounted(base.price_sats, d.percent);
            format!("{}:{}", d.name, d.percent)
        });
        let client_id = client.map(|(id, _)| id);
        let txid = match txid_values {
            [] => return reject(Rejection::PaymentRequired, policy),
            [one] => Txid::parse(one),
            _ => None,
        };
        let Some(txid) = txid else {
            let effects = self.strike(store, client_id, now_secs);
            return (Verdict::Reject { rejection: Rejection::InvalidTxid, policy: Some(policy) }, effects);
        };
        let bind_id = config.bind_to.as_ref().map(|source| facts.identity(source));
        let ticket = Ticket { txid, policy, discount, bind_id, client_id };
        let raw = txid_bytes(&ticket.txid);
        // Nothing counted or bound: a confirmed payment's shared record never changes.
        let immutable = self.config.grant.is_unlimited() && self.config.bind_to.is_none();
        let found = match self.memo.payment(&raw).filter(|_| immutable) {
            Some(hit) => Some(hit),
            None => {
                let found = self.payments.find(store, &raw);
                if let (Some((slot, record)), true) = (&found, immutable) {
                    self.memo.keep_payment(*slot, record);
                }
                found
            }
        };
        match found {
            Some((slot, record)) if record.is_fresh(facts.now_ms) => {
                let tip = self.memo.tip(store, facts.now_ms);
                let tip_fresh = tip.is_some_and(|(_, at)| self.tip_read_recently(at, facts.now_ms));
                // A mempool answer holds only until a new block may have taken the payment.
                if let PaymentState::Unconfirmed { seen_at_tip, .. } = record.state {
                    if !tip_fresh || tip.is_some_and(|(height, _)| height > seen_at_tip) {
                        return (Verdict::Lookup(ticket), Effects::default());
                    }
                }
                let known = Known { tip: tip.map(|(h, _)| h), tip_fresh, from_cache: true };
                self.judge(store, ticket, slot, &record, known, facts.now_ms)
            }
            _ => (Verdict::Lookup(ticket), Effects::default()),
        }
    }

    /// A tip height just read from an explorer, shared with every worker.
    pub fn record_tip(&self, store: &dyn SharedStore, height: u64, now_ms: u64) {
        let _ = write_tip(store, height, now_ms);
        self.memo.forget_tip();
    }

    /// Whether a lookup should also read the tip (the shared one is missing or stale).
    pub fn tip_needed(&self, store: &dyn SharedStore, now_ms: u64) -> bool {
        !read_tip(store).is_some_and(|(_, at)| self.tip_read_recently(at, now_ms))
    }

    /// A tip read at `at` is trusted for counting confirmations until `cache.tip_ttl` has passed.
    fn tip_read_recently(&self, at: u64, now_ms: u64) -> bool {
        now_ms < at.saturating_add(millis(self.config.cache.tip_ttl))
    }

    /// The best tip height known to every worker.
    pub fn shared_tip(&self, store: &dyn SharedStore) -> Option<u64> {
        read_tip(store).map(|(h, _)| h)
    }

    /// Stores an explorer answer in the shared cache; returns the slot it went to.
    pub fn remember(&self, store: &dyn SharedStore, txid: &Txid, result: &LookupResult, now_ms: u64) -> Option<usize> {
        if let Some(height) = result.tip {
            self.record_tip(store, height, now_ms);
        }
        let ttl = |d: std::time::Duration| now_ms.saturating_add(millis(d)).max(1);
        let (state, expires) = match &result.tx {
            Ok(TxLookup::NotFound) => (PaymentState::NotFound, ttl(self.config.cache.not_found_ttl)),
            Ok(TxLookup::Found(facts)) => match facts.block {
                Some(block) => (PaymentState::Confirmed { paid_sats: facts.paid_sats, block }, 0),
                None => {
                    let seen_at_tip = result.tip.or_else(|| self.shared_tip(store)).unwrap_or(0);
                    let state = PaymentState::Unconfirmed { paid_sats: facts.paid_sats, seen_at_tip };
                    (state, ttl(self.config.cache.unconfirmed_ttl))
                }
            },
            Err(_) => return None,
        };
        self.payments.put(store, &txid_bytes(txid), state, expires, now_ms).ok()
    }

    /// The answer for one waiting request once its lookup is done (after `remember`).
    pub fn resolve(
        &self,
        store: &dyn SharedStore,
        ticket: Ticket,
        result: &LookupResult,
        slot: Option<usize>,
        now_ms: u64,
    ) -> (Verdict, Effects) {
        if result.tx.is_err() {
            return (self.explorer_failed(&ticket), Effects::default());
        }
        let raw = txid_bytes(&ticket.txid);
        let cached = slot.and_then(|s| {
            let (bytes, _) = store.get(&PaymentTable::key(s))?;
            PaymentRecord::decode(&bytes).filter(|r| r.txid == raw).map(|r| (s, r))
        });
        let tip = result.tip.or_else(|| self.shared_tip(store));
        match cached {
            Some((slot, record)) => {
                self.judge(store, ticket, slot, &record, Known { tip, tip_fresh: true, from_cache: false }, now_ms)
            }
            // The slot was taken by another txid in the meantime: answer from the result itself,
            // without counting against a grant that no longer has a record.
            None => match &result.tx {
                Ok(TxLookup::Found(facts)) => match decide(&ticket.policy, facts, tip, now_ms / 1000) {
                    Decision::Paid(receipt) if self.config.grant.is_unlimited() && self.config.bind_to.is_none() => {
                        (allow(ticket, receipt, false), Effects::default())
                    }
                    Decision::Paid(_) => reject(Rejection::VerificationBusy, ticket.policy),
                    Decision::Refused(rejection) => self.refuse(store, ticket, rejection, now_ms),
                    Decision::TipUnknown => (self.explorer_failed(&ticket), Effects::default()),
                },
                _ => self.refuse(store, ticket, Rejection::TxNotFound, now_ms),
            },
        }
    }

    pub fn explorer_failed(&self, ticket: &Ticket) -> Verdict {
        match self.config.failure_mode {
            FailureMode::Closed => {
                Verdict::Reject { rejection: Rejection::ExplorerUnavailable, policy: Some(ticket.policy.clone()) }
            }
            FailureMode::Open => Verdict::AllowUnverified,
        }
    }

    fn judge(
        &self,
        store: &dyn SharedStore,
        ticket: Ticket,
        slot: usize,
        record: &PaymentRecord,
        known: Known,
        now_ms: u64,
    ) -> (Verdict, Effects) {
        let Some(facts) = record.facts() else {
            return self.refuse(store, ticket, Rejection::TxNotFound, now_ms);
        };
        let Known { tip, tip_fresh, from_cache } = known;
        match decide(&ticket.policy, &facts, tip, now_ms / 1000) {
            Decision::Paid(receipt) => {
                // Nothing to count or bind: skip the read-modify-write on the hot path.
                let used = if self.config.grant.is_unlimited() && ticket.bind_id.is_none() {
                    Ok(Use::Granted { remaining: None })
                } else {
                    self.config.grant.consume(store, slot, &record.txid, ticket.bind_id, now_ms / 1000)
                };
                match used {
                    Ok(Use::Granted { .. }) => (allow(ticket, receipt, from_cache), Effects::default()),
                    Ok(Use::Exhausted) => {
                        let grant = self.config.grant;
                        let rejection = Rejection::PaymentExhausted {
                            requests: grant.requests,
                            window_secs: grant.window.map(|w| w.as_secs()),
                        };
                        reject(rejection, ticket.policy)
                    }
                    Ok(Use::BoundToOther) => self.refuse(store, ticket, Rejection::BoundToOtherClient, now_ms),
                    Ok(Use::Gone) => (Verdict::Lookup(ticket), Effects::default()),
                    Err(_) => reject(Rejection::VerificationBusy, ticket.policy),
                }
            }
            // A confirmed payment short of confirmations may only look so through a stale tip.
            Decision::Refused(Rejection::InsufficientConfirmations { .. }) | Decision::TipUnknown
                if facts.block.is_some() && !tip_fresh =>
            {
                (Verdict::Lookup(ticket), Effects::default())
            }
            Decision::Refused(rejection) => self.refuse(store, ticket, rejection, now_ms),
            // The tip was just asked for and no explorer could tell it.
            Decision::TipUnknown => (self.explorer_failed(&ticket), Effects::default()),
        }
    }

    /// A rejection, with a strike for the kinds that mean "bogus or someone else's txid".
    fn refuse(&self, store: &dyn SharedStore, ticket: Ticket, rejection: Rejection, now_ms: u64) -> (Verdict, Effects) {
        let strikes = matches!(
            rejection,
            Rejection::TxNotFound
                | Rejection::InsufficientPayment { .. }
                | Rejection::PaymentExpired { .. }
                | Rejection::BoundToOtherClient
        );
        let effects = if strikes { self.strike(store, ticket.client_id, now_ms / 1000) } else { Effects::default() };
        (Verdict::Reject { rejection, policy: Some(ticket.policy) }, effects)
    }

    fn strike(&self, store: &dyn SharedStore, client_id: Option<u64>, now_secs: u64) -> Effects {
        match (&self.config.penalty, client_id) {
            (Some(penalty), Some(id)) => {
                let banned = penalty.strike(store, id, now_secs).ok().flatten().is_some();
                Effects { struck: true, banned }
            }
            _ => Effects::default(),
        }
    }
}

/// What is known besides the cached record when judging a request.
#[derive(Debug, Clone, Copy)]
struct Known {
    tip: Option<u64>,
    /// The tip was read within `cache.tip_ttl` (or just now).
    tip_fresh: bool,
    /// Answered without an explorer call for this request.
    from_cache: bool,
}

fn allow(ticket: Ticket, receipt: Receipt, from_cache: bool) -> Verdict {
    Verdict::Allow { txid: ticket.txid, receipt, discount: ticket.discount, from_cache }
}

fn reject(rejection: Rejection, policy: Policy) -> (Verdict, Effects) {
    (Verdict::Reject { rejection, policy: Some(policy) }, Effects::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esplora::{BlockPlace, TxFacts};
    use crate::store::memory::MemoryStore;
    use serde_json::json;

    const PAY_TO: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
    const TXID: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
    const NOW_MS: u64 = 1_700_000_000_000;

    fn gate(extra: serde_json::Value) -> (Gate, MemoryStore) {
        let mut config = json!({
            "network": "regtest", "pay_to": [PAY_TO], "price_sats": 1000,
            "explorers": [{"cluster": "e", "authority": "e"}],
            "routes": [{"prefix": "/free", "free": true}]
        });
        for (k, v) in extra.as_object().unwrap() {
            config[k] = v.clone();
        }
        let gate = Gate::new(Config::from_json(config.to_string().as_bytes()).unwrap());
        let store = MemoryStore::default();
        gate.create_slots(&store);
        (gate, store)
    }

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
    }

    fn admit(gate: &Gate, store: &MemoryStore, path: &str, hs: &[(&str, &str)], txids: &[&str]) -> (Verdict, Effects) {
        let headers = headers(hs);
        let facts = RequestFacts {
            path,
            headers: &headers,
            principal: None,
            source_address: Some("10.0.0.1:999"),
            now_ms: NOW_MS,
        };
        let values: Vec<&[u8]> = txids.iter().map(|t| t.as_bytes()).collect();
        gate.admit(store, &facts, &values)
    }

    /// A paid request for TXID on /api at another time.
    fn admit_at(gate: &Gate, store: &MemoryStore, now_ms: u64) -> Verdict {
        let facts = RequestFacts { path: "/api", headers: &[], principal: None, source_address: None, now_ms };
        gate.admit(store, &facts, &[TXID.as_bytes()]).0
    }

    fn ticket_of(v: Verdict) -> Ticket {
        match v {
            Verdict::Lookup(t) => t,
            other => panic!("expected a lookup, got {other:?}"),
        }
    }

    fn code(v: &Verdict) -> &'static str {
        match v {
            Verdict::Reject { rejection, .. } => rejection.code(),
            Verdict::Allow { .. } => "allow",
            Verdict::AllowUnverified => "allow_unverified",
            Verdict::Free => "free",
            Verdict::Lookup(_) => "lookup",
        }
    }

    fn found(paid: u64, height: Option<u64>) -> LookupResult {
        let block = height.map(|height| BlockPlace { height, time: NOW_MS / 1000 - 60 });
        LookupResult { tx: Ok(TxLookup::Found(TxFacts { paid_sats: paid, block })), tip: Some(110) }
    }

    /// Runs one request through admit, a lookup with `result` and resolve, as the glue does.
    fn verify(gate: &Gate, store: &MemoryStore, hs: &[(&str, &str)], result: &LookupResult) -> (Verdict, Effects) {
        let ticket = ticket_of(admit(gate, store, "/api", hs, &[TXID]).0);
        let slot = gate.remember(store, &ticket.txid, result, NOW_MS);
        gate.resolve(store, ticket, result, slot, NOW_MS)
    }

    #[test]
    fn free_routes_and_missing_or_bad_txids_need_no_lookup() {
        let (gate, store) = gate(json!({}));
        assert_eq!(admit(&gate, &store, "/free/x", &[], &[]).0, Verdict::Free);
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[]).0), "payment_required");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &["xyz"]).0), "invalid_txid");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID, TXID]).0), "invalid_txid");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "lookup");
    }

    #[test]
    fn a_verified_payment_is_answered_from_the_cache_afterwards() {
        let (gate, store) = gate(json!({}));
        let (first, _) = verify(&gate, &store, &[], &found(1000, Some(100)));
        assert!(
            matches!(first, Verdict::Allow { receipt: Receipt { paid_sats: 1000, confirmations: 11 }, .. }),
            "{first:?}"
        );
        let (again, _) = admit(&gate, &store, "/api", &[], &[TXID]);
        assert!(matches!(again, Verdict::Allow { from_cache: true, .. }), "{again:?}");
    }

    #[test]
    fn a_warm_request_reads_no_shared_data_when_nothing_is_counted() {
        let (gate, store) = gate(json!({}));
        verify(&gate, &store, &[], &found(1000, Some(100)));
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "allow");
        let reads = store.gets.get();
        assert!(matches!(admit(&gate, &store, "/api", &[], &[TXID]).0, Verdict::Allow { from_cache: true, .. }));
        assert_eq!(store.gets.get(), reads, "served from the worker's copy");
        let (counted, store) = self::gate(json!({"grant": {"requests": 5}}));
        verify(&counted, &store, &[], &found(1000, Some(100)));
        let reads = store.gets.get();
        admit(&counted, &store, "/api", &[], &[TXID]);
        assert!(store.gets.get() > reads, "a counted grant always asks the shared record");
    }

    #[test]
    fn negative_answers_are_cached_until_their_ttl() {
        let (gate, store) = gate(json!({"cache": {"not_found_ttl": "10s"}}));
        let result = LookupResult { tx: Ok(TxLookup::NotFound), tip: None };
        assert_eq!(code(&verify(&gate, &store, &[], &result).0), "tx_not_found");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "tx_not_found");
        assert_eq!(code(&admit_at(&gate, &store, NOW_MS + 10_000)), "lookup");
    }

    #[test]
    fn mempool_payments_wait_for_confirmations_and_are_asked_again_later() {
        let (gate, store) = gate(json!({"cache": {"unconfirmed_ttl": "30s"}}));
        assert_eq!(code(&verify(&gate, &store, &[], &found(1000, None)).0), "insufficient_confirmations");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "insufficient_confirmations");
        // Another worker saw a newer block: once this worker's copy of the tip is refreshed (at
        // most a second later) the payment is asked about again, without waiting for unconfirmed_ttl.
        crate::cache::write_tip(&store, 111, NOW_MS).unwrap();
        assert_eq!(code(&admit_at(&gate, &store, NOW_MS + 1_000)), "lookup");
    }

    #[test]
    fn a_stale_tip_that_looks_short_of_confirmations_is_read_again() {
        let (gate, store) = gate(json!({"min_confirmations": 3, "cache": {"tip_ttl": "1s"}}));
        let mut result = found(1000, Some(100));
        result.tip = Some(101);
        assert_eq!(code(&verify(&gate, &store, &[], &result).0), "insufficient_confirmations");
        assert_eq!(code(&admit_at(&gate, &store, NOW_MS + 5_000)), "lookup");
    }

    #[test]
    fn explorer_failure_follows_the_failure_mode() {
        let failed = LookupResult { tx: Err(ExplorerError::NoResponse), tip: None };
        let (closed, store) = gate(json!({}));
        assert_eq!(code(&verify(&closed, &store, &[], &failed).0), "explorer_unavailable");
        let (open, store) = gate(json!({"failure_mode": "open"}));
        assert_eq!(verify(&open, &store, &[], &failed).0, Verdict::AllowUnverified);
        let (closed, store) = gate(json!({}));
        let no_tip = LookupResult { tip: None, ..found(1000, Some(100)) };
        assert_eq!(code(&verify(&closed, &store, &[], &no_tip).0), "explorer_unavailable");
    }

    #[test]
    fn grants_run_out() {
        let (gate, store) = gate(json!({"grant": {"requests": 2}}));
        assert_eq!(code(&verify(&gate, &store, &[], &found(1000, Some(100))).0), "allow");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "allow");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "payment_exhausted");
    }

    #[test]
    fn binding_refuses_another_client_and_strikes_it() {
        let (gate, store) = gate(json!({"bind_to": "header:x-key", "penalty": {"identity": "header:x-key"}}));
        assert_eq!(code(&verify(&gate, &store, &[("x-key", "a")], &found(1000, Some(100))).0), "allow");
        let (verdict, effects) = admit(&gate, &store, "/api", &[("x-key", "b")], &[TXID]);
        assert_eq!(code(&verdict), "payment_bound_to_other_client");
        assert!(effects.struck);
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-key", "a")], &[TXID]).0), "allow");
    }

    #[test]
    fn strikes_lead_to_a_ban_that_needs_no_lookup() {
        let (gate, store) = gate(json!({"penalty": {"identity": "source_address", "max_strikes": 2}}));
        assert!(admit(&gate, &store, "/api", &[], &["bogus"]).1.struck);
        let (_, effects) = admit(&gate, &store, "/api", &[], &["bogus"]);
        assert!(effects.banned);
        let (verdict, _) = admit(&gate, &store, "/api", &[], &[TXID]);
        assert!(
            matches!(verdict, Verdict::Reject { rejection: Rejection::ClientBanned { retry_after_secs: 600 }, .. }),
            "{verdict:?}"
        );
        assert_eq!(admit(&gate, &store, "/free", &[], &[]).0, Verdict::Free, "free routes stay open");
    }

    #[test]
    fn discounts_lower_the_price_asked_and_checked() {
        let (gate, store) = gate(json!({"discounts": [{"name": "v2", "percent": 25, "header": {"name": "x-policy"}}]}));
        let (verdict, _) = admit(&gate, &store, "/api", &[("x-policy", "1")], &[]);
        assert!(matches!(verdict, Verdict::Reject { policy: Some(Policy { price_sats: 750, .. }), .. }));
        let (paid, _) = verify(&gate, &store, &[("x-policy", "1")], &found(750, Some(100)));
        assert!(matches!(&paid, Verdict::Allow { discount: Some(d), .. } if d == "v2:25"), "{paid:?}");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "insufficient_payment");
    }
}
