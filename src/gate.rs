//! The decision for one request, from what the glue read off the host and what the shared cache
//! knows. Explorer calls are the glue's job; this module says when one is needed and what its
//! answer means for every request waiting on it.

use crate::cache::{read_tip, txid_bytes, write_tip, PaymentRecord, PaymentState, PaymentTable};
use crate::config::{AccessRef, Config, FailureMode, Policy};
use crate::discount::{self, ClientFacts};
use crate::esplora::{ExplorerError, TxLookup};
use crate::grant::Use;
use crate::identity::{identity_hash, strip_port, IdentitySource};
use crate::payment::{decide, Decision, Receipt};
use crate::rejection::Rejection;
use crate::store::SharedStore;
use crate::txid::Txid;

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
}

impl Gate {
    pub fn new(config: Config) -> Gate {
        let payments = PaymentTable::new(config.cache.max_entries);
        Gate { config, payments }
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
        match self.payments.find(store, &raw) {
            Some((slot, record)) if record.is_fresh(facts.now_ms) => {
                let tip = read_tip(store);
                let tip_fresh =
                    tip.is_some_and(|(_, at)| facts.now_ms < at.saturating_add(duration_ms(self.config.cache.tip_ttl)));
                self.judge(store, ticket, slot, &record, tip.map(|(h, _)| h), tip_fresh, facts.now_ms)
            }
            _ => (Verdict::Lookup(ticket), Effects::default()),
        }
    }

    /// Whether a lookup should also read the tip (the shared one is missing or stale).
    pub fn tip_needed(&self, store: &dyn SharedStore, now_ms: u64) -> bool {
        read_tip(store).is_none_or(|(_, at)| now_ms >= at.saturating_add(duration_ms(self.config.cache.tip_ttl)))
    }

    /// The best tip height known to every worker.
    pub fn shared_tip(&self, store: &dyn SharedStore) -> Option<u64> {
        read_tip(store).map(|(h, _)| h)
    }

    /// Stores an explorer answer in the shared cache; returns the slot it went to.
    pub fn remember(&self, store: &dyn SharedStore, txid: &Txid, result: &LookupResult, now_ms: u64) -> Option<usize> {
        if let Some(height) = result.tip {
            let _ = write_tip(store, height, now_ms);
        }
        let ttl = |d: std::time::Duration| now_ms.saturating_add(duration_ms(d)).max(1);
        let (state, expires) = match &result.tx {
            Ok(TxLookup::NotFound) => (PaymentState::NotFound, ttl(self.config.cache.not_found_ttl)),
            Ok(TxLookup::Found(facts)) => match facts.block {
                Some(block) => (PaymentState::Confirmed { paid_sats: facts.paid_sats, block }, 0),
                None => {
                    (PaymentState::Unconfirmed { paid_sats: facts.paid_sats }, ttl(self.config.cache.unconfirmed_ttl))
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
            Some((slot, record)) => self.judge(store, ticket, slot, &record, tip, true, now_ms),
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

    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        store: &dyn SharedStore,
        ticket: Ticket,
        slot: usize,
        record: &PaymentRecord,
        tip: Option<u64>,
        tip_fresh: bool,
        now_ms: u64,
    ) -> (Verdict, Effects) {
        let Some(facts) = record.facts() else {
            return self.refuse(store, ticket, Rejection::TxNotFound, now_ms);
        };
        let from_cache = !tip_fresh || record.stored_ms < now_ms;
        match decide(&ticket.policy, &facts, tip, now_ms / 1000) {
            Decision::Paid(receipt) => {
                let used = self.config.grant.consume(store, slot, &record.txid, ticket.bind_id, now_ms / 1000);
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

fn allow(ticket: Ticket, receipt: Receipt, from_cache: bool) -> Verdict {
    Verdict::Allow { txid: ticket.txid, receipt, discount: ticket.discount, from_cache }
}

fn reject(rejection: Rejection, policy: Policy) -> (Verdict, Effects) {
    (Verdict::Reject { rejection, policy: Some(policy) }, Effects::default())
}

fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
