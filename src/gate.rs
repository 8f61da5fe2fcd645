//! The decision for one request, from what the glue read off the host and what the shared cache
//! knows. Explorer calls are the glue's job; this module says when one is needed and what its
//! answer means for every request waiting on it.

use std::rc::Rc;

use crate::allowance::Allowance;
use crate::cache::{txid_bytes, PaymentRecord, PaymentState, PaymentTable, PutError, Tips};
use crate::config::{AccessRef, Config, FailureMode, Policy};
use crate::discount::{self, ClientFacts, Condition};
use crate::duration::millis;
use crate::esplora::{ExplorerError, TxAnswer, TxLookup};
use crate::grant::Use;
use crate::identity::{client_address, identity_hash, IdentitySource};
use crate::ledger::config::LedgerFailureMode;
use crate::ledger::etcd::{bucket_lease, Attempt, ChainFacts, Pay};
use crate::ledger::held::{attempt_for, LedgerTable, Take, Want};
use crate::ledger::owner::owner_id;
use crate::memo::LocalMemo;
use crate::payment::{decide, Decision, Receipt};
use crate::penalty::ClientRecord;
use crate::rejection::{Challenge, PlainBodies, Rejection};
use crate::scope::Scopes;
use crate::store::SharedStore;
use crate::txid::Txid;
use crate::xpub;

/// Confirmed payments each worker keeps a copy of (about 150 bytes each).
const MEMO_CAPACITY: usize = 4096;

/// What the glue read from the host for one request.
pub struct RequestFacts<'a> {
    /// The canonical path in matching form (see `path`).
    pub path: &'a str,
    /// Every request header (names lowercase), values as bytes.
    pub headers: &'a [(String, Vec<u8>)],
    /// URI SAN of the client certificate, when the connection is mTLS.
    pub principal: Option<&'a str>,
    /// `ip:port` of the client.
    pub source_address: Option<&'a str>,
    /// Whether `source_address` is the client's own: false when the request carries
    /// X-Forwarded-For on a listener where Envoy takes that header as the source (no
    /// `use_remote_address`), so that it names whatever source the client likes.
    pub source_trusted: bool,
    /// Claims Envoy's `jwt_authn` verified, as (metadata_key, claim, value).
    pub claims: &'a [(String, String, String)],
    pub now_ms: u64,
}

impl RequestFacts<'_> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
    }

    /// The identity's value under `source`, or `None` when the request does not carry one.
    fn identity_value(&self, source: &IdentitySource) -> Option<Vec<u8>> {
        let value: Vec<u8> = match source {
            IdentitySource::Header(name) => self.header(name)?.to_vec(),
            IdentitySource::MtlsPrincipal => self.principal?.as_bytes().to_vec(),
            IdentitySource::SourceAddress => client_address(self.source_address?).into_bytes(),
        };
        (!value.is_empty()).then_some(value)
    }

    /// The client's identity under `source`, hashed, or `None` when the request has none.
    fn identity(&self, source: &IdentitySource) -> Option<u64> {
        self.identity_value(source).map(|value| identity_hash(source, &value))
    }

    /// The source address as an identity (IPv6 grouped by /64).
    fn source_id(&self) -> Option<u64> {
        self.identity(&IdentitySource::SourceAddress)
    }
}

/// The address one client pays to when `pay_to` is an xpub, and where it was derived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress {
    pub address: String,
    /// `<branch>/<hi>/<lo>` below the configured key.
    pub path: (u32, u32, u32),
}

impl ClientAddress {
    pub fn path_text(&self) -> String {
        let (branch, hi, lo) = self.path;
        format!("{branch}/{hi}/{lo}")
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
    /// Penalty-box identities to strike, each with the strikes that ban it: the configured one
    /// (or the source address when the request has none), plus the source address when the
    /// configured one is client-chosen.
    pub client_ids: Vec<(u64, u32)>,
    /// Who this client is for in-flight limits and fail-open passes.
    pub client_key: u64,
    /// The client has strikes: it may not use the share of lookups kept for clean clients.
    pub has_strikes: bool,
    /// Lookups this client may have in flight on one worker.
    pub inflight_limit: usize,
    /// This client's own address, when `pay_to` is an xpub.
    pub payee: Option<ClientAddress>,
    /// The ledger's owner id of the `bind_to` identity (see `ledger::owner`), with a ledger.
    pub owner: Option<[u8; 16]>,
    /// Asked by the status endpoint: nothing is used, bound, struck or let through unverified.
    pub probe: bool,
}

/// What the status endpoint answers about one txid for one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentStatus {
    pub txid: Txid,
    pub policy: Policy,
    pub outcome: Result<Receipt, Rejection>,
}

/// A paid request that waits for the ledger (etcd): first contact on this Envoy, or its held
/// blocks are empty. What it needs to be answered once the ledger replied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerWait {
    pub ticket: Ticket,
    /// The payment's slot in the cache, and its cache key.
    pub slot: usize,
    pub record: [u8; 32],
    pub receipt: Receipt,
    pub from_cache: bool,
    /// When the payment stops buying anything (unix s): its ledger keys' lease outlives it.
    pub expires_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Free,
    Allow {
        txid: Txid,
        receipt: Receipt,
        discount: Option<String>,
        from_cache: bool,
        /// `<branch>/<hi>/<lo>` of the client's own address, when `pay_to` is an xpub.
        address_path: Option<String>,
        /// Counted by this Envoy alone because the ledger was unreachable (`ledger.failure_mode`
        /// local): marked `x-txgate-unverified: ledger_unavailable`.
        ledger_fallback: bool,
    },
    /// failure_mode open and no explorer answered.
    AllowUnverified,
    Reject {
        rejection: Rejection,
        policy: Option<Policy>,
    },
    Lookup(Ticket),
    /// Paid, but the ledger must be asked before the request can be counted.
    Ledger(Box<LedgerWait>),
    /// The status endpoint's answer (see `Gate::status`).
    Status(Box<PaymentStatus>),
}

/// What the explorer said about one txid (and its tip, when it was needed and read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupResult {
    pub tx: Result<TxAnswer, ExplorerError>,
    /// The tip height told by the explorer that answered for the transaction.
    pub tip: Option<u64>,
    /// Which explorer answered for the transaction.
    pub explorer: usize,
}

/// Where `remember` put an explorer answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// In this slot of the payment table.
    Payment(usize),
    /// A negative answer (its own table), or nothing worth keeping.
    Elsewhere,
    /// A payment with no slot it could take: both hold payments that still count something.
    Full,
    /// `verify: spv`: a payment cached as confirmed is now unconfirmed or unknown (its block
    /// left the best chain); the record now says so.
    Reorged,
}

/// Side effects the glue reports as metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    pub struck: bool,
    pub banned: bool,
    pub ledger_full: bool,
    pub fail_open_limited: bool,
    /// This request took its Envoy's held block to the low-water mark: reserve the next block
    /// in the background (payment slot and cache key).
    pub ledger_refill: Option<(usize, [u8; 32])>,
    /// Counted locally because the ledger was unreachable (`ledger.failure_mode` local).
    pub ledger_fallback: bool,
}

pub struct Gate {
    pub config: Config,
    pub scopes: Scopes,
    pub payments: PaymentTable,
    negatives: PaymentTable,
    tips: Tips,
    fail_open: Option<Allowance>,
    memo: LocalMemo,
    lowest_price: u64,
    /// Per-client addresses this worker derived, by path (derivation is two point operations).
    addresses: std::cell::RefCell<std::collections::HashMap<(u32, u32), String>>,
    /// scriptPubKeys of `pay_to`, what a proven (`verify: spv`) answer's outputs are matched by.
    pay_to_scripts: Vec<Vec<u8>>,
    /// This Envoy's held ledger blocks, one per payment slot (with `ledger`).
    pub ledger: Option<LedgerTable>,
    /// The rendered `/.well-known/txgate` manifest, when enabled.
    pub manifest: Option<String>,
    /// Cold status checks per client (`Gate::status`).
    status_lookups: Allowance,
    /// 402 challenges this worker rendered, by price and payee (see `Challenge`).
    challenges: std::cell::RefCell<std::collections::HashMap<ChallengeKey, Rc<Challenge>>>,
    /// The bodies of the rejections that carry nothing of the request (see `PlainBodies`).
    pub plain_bodies: PlainBodies,
}

/// A challenge is rendered per price and per client address (its derivation path).
type ChallengeKey = (Policy, Option<(u32, u32, u32)>);

/// How long a worker trusts its copy of a proven payment under `verify: spv` (see `admit_as`).
const PAYMENT_MEMO_SPV_MS: u64 = 1_000;
/// Status checks that may ask an explorer, per client and window: a person polling a few tabs
/// stays far below it; a script probing random txids does not get far.
const STATUS_LOOKUPS_PER_WINDOW: u32 = 30;
const STATUS_WINDOW_SECS: u64 = 60;
const STATUS_SLOTS: usize = 1024;
/// Rendered challenges a worker keeps: routes × discounts, and per-client addresses.
const CHALLENGE_MEMO: usize = 1024;

/// Derived addresses each worker keeps (about 100 bytes each).
const ADDRESS_MEMO: usize = 4096;

/// Share of `max_inflight` kept for clients with no strikes (a quarter, at least one).
fn reserved_for_clean(max_inflight: usize) -> usize {
    (max_inflight / 4).max(1).min(max_inflight.saturating_sub(1))
}

impl Gate {
    pub fn new(mut config: Config) -> Gate {
        let scopes = Scopes::of(&config);
        let scopes_clients = scopes.clients.clone();
        if let Some(penalty) = config.penalty.as_mut() {
            penalty.prefix = format!("{}c/", scopes.clients);
        }
        let slots = config.cache.max_entries;
        let longest_max_age_secs = config.longest_max_age().map(|d| d.as_secs());
        let payments = PaymentTable::new(&scopes.payments, "p", slots, longest_max_age_secs);
        let negatives = PaymentTable::new(&scopes.payments, "n", slots, Some(0));
        let tips = Tips::new(&scopes.chain, config.explorers.len());
        let fail_open = match config.failure_mode {
            FailureMode::Open { per_client, window } => {
                Some(Allowance::new(&format!("{}o/", scopes.clients), slots, per_client, window))
            }
            FailureMode::Closed => None,
        };
        let memo = LocalMemo::new(slots.min(MEMO_CAPACITY));
        let manifest = crate::manifest::render(&config);
        let lowest_price = config.lowest_price();
        // The addresses were checked in `Config::from_json`, so each has a script.
        let pay_to_scripts =
            config.pay_to.iter().filter_map(|a| crate::address::script_pubkey(a, config.network).ok()).collect();
        let ledger = config.ledger.as_ref().map(|_| LedgerTable::new(&scopes.payments, slots));
        let plain_bodies = PlainBodies::render(&config);
        Gate {
            config,
            scopes,
            payments,
            negatives,
            tips,
            fail_open,
            memo,
            lowest_price,
            addresses: std::cell::RefCell::new(std::collections::HashMap::new()),
            pay_to_scripts,
            ledger,
            manifest,
            status_lookups: Allowance::new(
                &format!("{}s/", scopes_clients),
                STATUS_SLOTS,
                STATUS_LOOKUPS_PER_WINDOW,
                std::time::Duration::from_secs(STATUS_WINDOW_SECS),
            ),
            challenges: std::cell::RefCell::new(std::collections::HashMap::new()),
            plain_bodies,
        }
    }

    /// The rendered challenge for a price and payee: rendered on first use, then kept.
    pub fn challenge(&self, policy: &Policy, payee: Option<&ClientAddress>) -> Rc<Challenge> {
        let key = (*policy, payee.map(|p| p.path));
        if let Some(hit) = self.challenges.try_borrow().ok().and_then(|m| m.get(&key).cloned()) {
            return hit;
        }
        let rendered = Rc::new(Challenge::render(&self.config, policy, payee));
        if let Ok(mut memo) = self.challenges.try_borrow_mut() {
            if memo.len() >= CHALLENGE_MEMO {
                memo.clear();
            }
            memo.insert(key, rendered.clone());
        }
        rendered
    }

    /// Creates every shared-data slot before traffic (see `cache`).
    pub fn create_slots(&self, store: &dyn SharedStore) {
        self.payments.create(store);
        self.negatives.create(store);
        self.tips.create(store);
        if let Some(penalty) = &self.config.penalty {
            penalty.create(store);
        }
        if let Some(allowance) = &self.fail_open {
            allowance.create(store);
        }
        self.status_lookups.create(store);
        if let Some(ledger) = &self.ledger {
            ledger.create(store);
        }
    }

    fn immutable(&self) -> bool {
        self.config.grant.is_unlimited() && self.config.bind_to.is_none()
    }

    /// This client's own address when `pay_to` is an xpub: `None` without an xpub, an
    /// `identity_required` rejection when the request carries no identity.
    pub fn client_address(&self, facts: &RequestFacts<'_>) -> Option<Result<ClientAddress, Rejection>> {
        let xpub_pay_to = self.config.pay_to_xpub.as_ref()?;
        let source = self.config.bind_to.as_ref()?;
        let Some(value) = facts.identity_value(source) else {
            return Some(Err(Rejection::IdentityRequired { identity: source.describe() }));
        };
        let (hi, lo) = xpub::index_of(&source.name(), &value);
        let path = (xpub_pay_to.branch, hi, lo);
        if let Some(address) = self.addresses.try_borrow().ok().and_then(|m| m.get(&(hi, lo)).cloned()) {
            return Some(Ok(ClientAddress { address, path }));
        }
        let derived = xpub_pay_to
            .key
            .derive(&[path.0, hi, lo])
            .and_then(|child| xpub::address(&child.public_key, xpub_pay_to.script, self.config.network));
        match derived {
            Ok(address) => {
                if let Ok(mut memo) = self.addresses.try_borrow_mut() {
                    if memo.len() >= ADDRESS_MEMO {
                        memo.clear();
                    }
                    memo.insert((hi, lo), address.clone());
                }
                Some(Ok(ClientAddress { address, path }))
            }
            // 2^-127 per index: refused, never paid to a wrong address.
            Err(_) => Some(Err(Rejection::Internal)),
        }
    }

    /// The cache key of a payment: the txid, or with per-client addresses the txid and the
    /// client's path, since one transaction can pay several clients different amounts.
    fn record_key(txid: &Txid, payee: Option<&ClientAddress>) -> [u8; 32] {
        let mut key = txid_bytes(txid);
        if let Some(p) = payee {
            let (_, hi, lo) = p.path;
            if let Some(tail) = key.get_mut(24..32) {
                tail.copy_from_slice(&[hi.to_le_bytes(), lo.to_le_bytes()].concat());
            }
        }
        key
    }

    /// The addresses a payee's outputs are summed over.
    fn payee_addresses<'a>(&'a self, payee: Option<&'a ClientAddress>) -> std::borrow::Cow<'a, [String]> {
        match payee {
            Some(p) => std::borrow::Cow::Owned(vec![p.address.clone()]),
            None => std::borrow::Cow::Borrowed(&self.config.pay_to),
        }
    }

    /// The scriptPubKeys a payee's outputs are summed over under `verify: spv`.
    fn payee_scripts<'a>(&'a self, payee: Option<&'a ClientAddress>) -> std::borrow::Cow<'a, [Vec<u8>]> {
        match payee {
            Some(p) => std::borrow::Cow::Owned(
                crate::address::script_pubkey(&p.address, self.config.network).ok().into_iter().collect(),
            ),
            None => std::borrow::Cow::Borrowed(&self.pay_to_scripts),
        }
    }

    fn judged_for(&self, answer: &TxAnswer, payee: Option<&ClientAddress>) -> TxLookup {
        answer.for_payee(&self.payee_addresses(payee), &self.payee_scripts(payee))
    }

    /// Under `verify: spv` a confirmed record counts only the depth it was proven to: the "tip"
    /// is the top of its proven headers, never an explorer's word. From the cache, a payment
    /// short of a route's depth is answered 402 for `cache.tip_ttl` after it was verified, then
    /// verified again (and a block that left the best chain is noticed then).
    fn proven(&self, record: &PaymentRecord, known: Known, now_ms: u64) -> Known {
        if self.config.spv().is_none() {
            return known;
        }
        let tip = match record.state {
            PaymentState::Confirmed { block, .. } if record.proven_depth > 0 => {
                Some(block.height.saturating_add(record.proven_depth).saturating_sub(1))
            }
            _ => None,
        };
        // A confirmed record without a proven depth (never written under spv) is asked again.
        let unproven = matches!(record.state, PaymentState::Confirmed { .. }) && tip.is_none();
        let tip_fresh = !unproven && (!known.from_cache || self.tip_read_recently(record.stored_ms, now_ms));
        Known { tip, tip_fresh, from_cache: known.from_cache }
    }

    /// First look at a request: free, refused, answered from the cache, or needs the explorer.
    pub fn admit(
        &self,
        store: &dyn SharedStore,
        facts: &RequestFacts<'_>,
        txid_values: &[&[u8]],
    ) -> (Verdict, Effects) {
        self.admit_as(store, facts, txid_values, false, false)
    }

    /// Whether a request may be judged without its client's penalty records, and so without
    /// reading its address: the penalty box is on, but no client is banned (the ban horizon has
    /// passed), and nothing else asks who the client is (a `source_address` binding, a
    /// `no_strikes_for` discount, per-client fail-open allowances). `source_trusted` as for
    /// `RequestFacts`: a listener that lets clients name their address refuses them instead.
    pub fn may_skip_client(&self, store: &dyn SharedStore, source_trusted: bool, now_ms: u64) -> bool {
        let Some(penalty) = &self.config.penalty else { return false };
        source_trusted
            && self.config.bind_to != Some(IdentitySource::SourceAddress)
            && self.fail_open.is_none()
            && !self.config.discounts.iter().any(|d| matches!(d.condition, Condition::NoStrikesFor(_)))
            && !penalty.bans_active(store, now_ms / 1000)
    }

    /// `admit` without the client's penalty records (if `may_skip_client`): the verdict when
    /// it is one that no client record could change (let through, a 402 challenge, a used-up or
    /// bound payment); `None` when it could (a strike, a lookup): then `admit` with the client.
    /// Nothing is counted, bound or struck for a verdict that is not returned.
    pub fn admit_without_client(
        &self,
        store: &dyn SharedStore,
        facts: &RequestFacts<'_>,
        txid_values: &[&[u8]],
    ) -> Option<(Verdict, Effects)> {
        if !self.may_skip_client(store, facts.source_trusted, facts.now_ms) {
            return None;
        }
        let (verdict, effects) = self.admit_as(store, facts, txid_values, false, true);
        let settled = match &verdict {
            Verdict::Allow { .. } | Verdict::Free => true,
            Verdict::Reject { rejection, .. } => matches!(
                rejection,
                Rejection::PaymentRequired
                    | Rejection::PaymentExhausted { .. }
                    | Rejection::BoundToOtherClient
                    | Rejection::IdentityRequired { .. }
            ),
            _ => false,
        };
        settled.then_some((verdict, effects))
    }

    /// What `GET /.well-known/txgate/status` answers: the same decision as for a request to
    /// `facts.path`, with nothing used, bound or struck. Cold lookups are limited per client
    /// (`status_lookups`), since a status check of an unknown txid costs no strike.
    pub fn status(&self, store: &dyn SharedStore, facts: &RequestFacts<'_>, txid: &[u8]) -> (Verdict, Effects) {
        let (verdict, effects) = self.admit_as(store, facts, &[txid], true, false);
        match verdict {
            Verdict::Lookup(ticket) => {
                if self.status_lookups.take(store, ticket.client_key, facts.now_ms / 1000) {
                    (Verdict::Lookup(ticket), effects)
                } else {
                    let rejection = Rejection::StatusLimited { retry_after_secs: STATUS_WINDOW_SECS };
                    (Verdict::Reject { rejection, policy: Some(ticket.policy) }, effects)
                }
            }
            Verdict::Reject { rejection: Rejection::InvalidTxid, policy } => {
                (Verdict::Reject { rejection: Rejection::InvalidTxid, policy }, effects)
            }
            other => match Txid::parse(txid) {
                Some(txid) => as_status(txid, other, effects),
                None => (other, effects),
            },
        }
    }

    fn admit_as(
        &self,
        store: &dyn SharedStore,
        facts: &RequestFacts<'_>,
        txid_values: &[&[u8]],
        probe: bool,
        skip_client: bool,
    ) -> (Verdict, Effects) {
        let config = &self.config;
        let base = match config.access_for(facts.path) {
            AccessRef::Free => return (Verdict::Free, Effects::default()),
            AccessRef::Paid(policy) => policy,
        };
        let now_secs = facts.now_ms / 1000;
        let source_id = facts.source_trusted.then(|| facts.source_id()).flatten();
        // A source address the client chose cannot stand for it where one is needed as its
        // identity: refused rather than trusted (see `RequestFacts::source_trusted`).
        let untrusted = |needed: bool| needed && !facts.source_trusted && facts.source_address.is_some();
        if untrusted(config.bind_to == Some(IdentitySource::SourceAddress)) {
            return (Verdict::Reject { rejection: Rejection::ForwardedForUntrusted, policy: None }, Effects::default());
        }
        // A request without the configured identity is struck as its source address: clients
        // without one are not pooled into a single bucket that a few bad requests could ban.
        let mut client_ids: Vec<(u64, u32)> = Vec::new();
        let mut clients: Vec<ClientRecord> = Vec::new();
        if let Some(penalty) = config.penalty.as_ref().filter(|_| !skip_client) {
            let own = facts
                .identity(&penalty.identity)
                .filter(|_| penalty.identity != IdentitySource::SourceAddress || facts.source_trusted);
            if own.is_none() && untrusted(true) {
                let rejection = Rejection::ForwardedForUntrusted;
                return (Verdict::Reject { rejection, policy: None }, Effects::default());
            }
            // Keyed per deployment: identities cannot be crafted to share a client's slot.
            let keyed = |id: u64| self.payments.keyed(id);
            client_ids.extend(own.or(source_id).map(|id| (keyed(id), penalty.limit(false))));
            // A header or certificate is the client's to choose or rotate; its address is not.
            if own.is_some() && penalty.identity != IdentitySource::SourceAddress && penalty.source_factor > 0 {
                client_ids.extend(source_id.map(|id| (keyed(id), penalty.limit(true))));
            }
            for (id, _) in &client_ids {
                let record = penalty.client(store, *id);
                if let Some(secs) = penalty.banned_for(&record, now_secs) {
                    let rejection = Rejection::ClientBanned { retry_after_secs: secs.max(1) };
                    return (Verdict::Reject { rejection, policy: None }, Effects::default());
                }
                clients.push(record);
            }
        }
        let primary = clients.first();
        if let (Some(penalty), Some(record)) = (&config.penalty, primary) {
            if config.discounts.iter().any(|d| matches!(d.condition, Condition::NoStrikesFor(_))) {
                penalty.touch(store, record, now_secs);
            }
        }
        let header = |name: &str| facts.header(name);
        let client_facts = ClientFacts {
            principal: facts.principal,
            header: &header,
            claims: facts.claims,
            last_strike: primary.and_then(|r| (r.last_strike != 0).then_some(r.last_strike)),
            first_seen: primary.and_then(|r| (r.first_seen != 0).then_some(r.first_seen)),
            now_secs,
        };
        let mut policy = base;
        let discount = discount::best(&config.discounts, &client_facts).map(|d| {
            policy.price_sats = discount::discounted(base.price_sats, d.percent);
            format!("{}:{}", d.name, d.percent)
        });
        // With per-client addresses even the first challenge needs the client's identity: it
        // shows the client's own address, never a shared one.
        let payee = match self.client_address(facts) {
            Some(Ok(address)) => Some(address),
            Some(Err(rejection)) => return reject(rejection, policy),
            None => None,
        };
        let txid = match txid_values {
            [] => return reject(Rejection::PaymentRequired, policy),
            [one] => Txid::parse(one),
            _ => None,
        };
        let Some(txid) = txid else {
            let effects = if probe { Effects::default() } else { self.strike(store, &client_ids, now_secs) };
            return (Verdict::Reject { rejection: Rejection::InvalidTxid, policy: Some(policy) }, effects);
        };
        let bind_id = match &config.bind_to {
            // A status check reads; it neither binds nor needs the identity a binding would.
            Some(_) if probe => None,
            Some(source) => match facts.identity(source) {
                Some(id) => Some(id),
                None => {
                    let rejection = Rejection::IdentityRequired { identity: source.describe() };
                    return reject(rejection, policy);
                }
            },
            None => None,
        };
        // The ledger's owner id: a specified hash every replica computes alike (not bind_id).
        let owner = match (&config.ledger, &config.bind_to) {
            (Some(ledger), Some(source)) => facts
                .identity_value(source)
                .map(|value| owner_id(&source.name(), &value, ledger.owner_secret.as_deref())),
            _ => None,
        };
        let strikes: u64 = primary.map_or(0, |c| c.strikes);
        let inflight_limit = match &config.penalty {
            // A client can have no more lookups under way than strikes it has left, so a burst
            // of bogus txids costs at most what the same txids sent one by one would.
            Some(penalty) => {
                let left = u64::from(penalty.max_strikes).saturating_sub(strikes).max(1);
                config.max_inflight_per_client.min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => config.max_inflight_per_client,
        };
        let client_key = client_ids.first().map(|(id, _)| *id).or(source_id).unwrap_or(0);
        let ticket = Ticket {
            txid,
            policy,
            discount,
            bind_id,
            client_ids,
            client_key,
            has_strikes: strikes > 0,
            inflight_limit,
            payee,
            owner,
            probe,
        };
        let raw = Self::record_key(&ticket.txid, ticket.payee.as_ref());
        // Nothing counted or bound: a confirmed payment's shared record never changes.
        let immutable = self.immutable();
        // Under spv another worker may find the block gone (a reorg): a copy is trusted for a
        // second, as the tip is; otherwise a confirmed, uncounted record never changes.
        let trust_ms = if self.config.spv().is_some() { PAYMENT_MEMO_SPV_MS } else { u64::MAX };
        let found = match self.memo.payment(&raw, facts.now_ms, trust_ms).filter(|_| immutable) {
            Some(hit) => Some((true, hit)),
            None => {
                let found = self.payments.find(store, &raw).map(|f| (true, f));
                if let (Some((_, (slot, record))), true) = (&found, immutable) {
                    self.memo.keep_payment(*slot, record, facts.now_ms);
                }
                found.or_else(|| self.negatives.find(store, &raw).map(|f| (false, f)))
            }
        };
        match found {
            Some((in_payments, (slot, record))) if record.is_fresh(facts.now_ms) => {
                let (tip, tip_fresh) = if self.config.spv().is_some() {
                    // Proven records carry their own depth; explorers' tips are not read.
                    (None, self.tip_read_recently(record.stored_ms, facts.now_ms))
                } else {
                    let tip = self.memo.tip(&self.tips, store, record.explorer, facts.now_ms);
                    (tip, tip.is_some_and(|(_, at)| self.tip_read_recently(at, facts.now_ms)))
                };
                // A mempool answer holds only until a new block may have taken the payment.
                if let PaymentState::Unconfirmed { seen_at_tip, .. } = record.state {
                    if !tip_fresh || tip.is_some_and(|(height, _)| height > seen_at_tip) {
                        return (Verdict::Lookup(ticket), Effects::default());
                    }
                }
                let known = Known { tip: tip.map(|(h, _)| h), tip_fresh, from_cache: true };
                let known = self.proven(&record, known, facts.now_ms);
                let slot = in_payments.then_some(slot);
                self.judge(store, ticket, slot, &record, known, facts.now_ms)
            }
            _ => (Verdict::Lookup(ticket), Effects::default()),
        }
    }

    /// A tip height `explorer` just told, shared with every worker.
    pub fn record_tip(&self, store: &dyn SharedStore, explorer: usize, height: u64, now_ms: u64) {
        let _ = self.tips.write(store, explorer as u64, height, now_ms);
        self.memo.forget_tip(explorer as u64);
    }

    /// Whether `explorer`'s tip must be read before counting confirmations of a block at
    /// `height` (`None`: whenever it is stale).
    pub fn tip_needed(&self, store: &dyn SharedStore, explorer: usize, height: Option<u64>, now_ms: u64) -> bool {
        match self.tips.read(store, explorer as u64) {
            Some((tip, at)) => !self.tip_read_recently(at, now_ms) || height.is_some_and(|h| tip < h),
            None => true,
        }
    }

    /// A tip read at `at` is trusted for counting confirmations until `cache.tip_ttl` has passed.
    fn tip_read_recently(&self, at: u64, now_ms: u64) -> bool {
        now_ms < at.saturating_add(millis(self.config.cache.tip_ttl))
    }

    /// Stores an explorer answer in the shared cache, as it pays `payee` (or `pay_to`).
    pub fn remember(
        &self,
        store: &dyn SharedStore,
        txid: &Txid,
        payee: Option<&ClientAddress>,
        result: &LookupResult,
        now_ms: u64,
    ) -> Stored {
        let explorer = result.explorer;
        if let Some(height) = result.tip {
            self.record_tip(store, explorer, height, now_ms);
        }
        let ttl = |d: std::time::Duration| now_ms.saturating_add(millis(d)).max(1);
        let judged = result.tx.as_ref().map(|answer| self.judged_for(answer, payee));
        let proven_depth = result.tx.as_ref().ok().and_then(TxAnswer::proven_depth).map_or(0, u64::from);
        let (state, expires) = match &judged {
            Ok(TxLookup::NotFound) => (PaymentState::NotFound, ttl(self.config.cache.not_found_ttl)),
            Ok(TxLookup::Found(facts)) => match facts.block {
                Some(block) => (PaymentState::Confirmed { paid_sats: facts.paid_sats, block }, 0),
                None => {
                    // The newest tip this explorer told, fresh or not: a mempool answer is asked
                    // again once a newer block is seen, and 0 would make that the next request.
                    let last_told = || self.tips.read(store, explorer as u64).map(|(h, _)| h);
                    let seen_at_tip = result.tip.or_else(last_told).unwrap_or(0);
                    let state = PaymentState::Unconfirmed { paid_sats: facts.paid_sats, seen_at_tip };
                    (state, ttl(self.config.cache.unconfirmed_ttl))
                }
            },
            Err(_) => return Stored::Elsewhere,
        };
        let raw = Self::record_key(txid, payee);
        if self.config.spv().is_some() && !matches!(state, PaymentState::Confirmed { .. }) {
            // A payment proven confirmed before and now unconfirmed or unknown: its block left
            // the best chain. The record says so from now on (keeping what it counted).
            if let Some((_, old)) = self.payments.find(store, &raw) {
                if matches!(old.state, PaymentState::Confirmed { .. }) {
                    let _ = self.payments.put(store, &raw, state, expires, explorer as u64, now_ms);
                    // This worker's copy goes too; other workers' copies serve routes the
                    // proven depth satisfied until they check it again (README, trust model).
                    self.memo.forget_payment(&raw);
                    return Stored::Reorged;
                }
            }
        }
        let paid = match state {
            PaymentState::Confirmed { paid_sats, .. } | PaymentState::Unconfirmed { paid_sats, .. } => paid_sats,
            PaymentState::NotFound => 0,
        };
        if paid < self.lowest_price {
            // Buys nothing anywhere: a negative answer, kept apart from real payments.
            let expires = expires.max(ttl(self.config.cache.not_found_ttl));
            let _ = self.negatives.put_proven(store, &raw, state, expires, (explorer as u64, proven_depth), now_ms);
            return Stored::Elsewhere;
        }
        match self.payments.put_proven(store, &raw, state, expires, (explorer as u64, proven_depth), now_ms) {
            Ok(slot) => Stored::Payment(slot),
            Err(PutError::Full) => Stored::Full,
            Err(PutError::Store(_)) => Stored::Elsewhere,
        }
    }

    /// The answer for one waiting request once its lookup is done (after `remember`).
    pub fn resolve(
        &self,
        store: &dyn SharedStore,
        ticket: Ticket,
        result: &LookupResult,
        stored: Stored,
        now_ms: u64,
    ) -> (Verdict, Effects) {
        if ticket.probe {
            let txid = ticket.txid.clone();
            let (verdict, effects) = self.resolve_ticket(store, ticket, result, stored, now_ms);
            return as_status(txid, verdict, effects);
        }
        self.resolve_ticket(store, ticket, result, stored, now_ms)
    }

    fn resolve_ticket(
        &self,
        store: &dyn SharedStore,
        ticket: Ticket,
        result: &LookupResult,
        stored: Stored,
        now_ms: u64,
    ) -> (Verdict, Effects) {
        if stored == Stored::Reorged {
            return reject(Rejection::PaymentReorged, ticket.policy);
        }
        let judged = result.tx.as_ref().map(|answer| self.judged_for(answer, ticket.payee.as_ref()));
        let facts = match judged {
            // The transaction, not the explorer, is the problem: no strike, no 503.
            Err(ExplorerError::TooLarge(_)) => return reject(Rejection::TxTooLarge, ticket.policy),
            // Evidence of a lying or broken explorer: never an unverified pass (failure_mode open
            // covers silence only), never a strike against the client.
            Err(ExplorerError::ProofInvalid(_)) => return reject(Rejection::ProofInvalid, ticket.policy),
            Err(ExplorerError::Disagreement(_)) => return reject(Rejection::ExplorerDisagreement, ticket.policy),
            Err(ExplorerError::QuorumBehind) => {
                let required = ticket.policy.min_confirmations;
                return reject(Rejection::InsufficientConfirmations { confirmations: 0, required }, ticket.policy);
            }
            Err(_) => return self.explorer_failed(store, &ticket, now_ms),
            Ok(TxLookup::NotFound) => return self.refuse(store, ticket, Rejection::TxNotFound, now_ms),
            Ok(TxLookup::Found(facts)) => facts,
        };
        // The tip of the explorer that answered: just told, or as last told (fresh or not).
        let (tip, tip_fresh) = match result.tip {
            Some(height) => (Some(height), true),
            None => match self.tips.read(store, result.explorer as u64) {
                Some((height, at)) => (Some(height), self.tip_read_recently(at, now_ms)),
                None => (None, false),
            },
        };
        let known = Known { tip, tip_fresh, from_cache: false };
        let raw = Self::record_key(&ticket.txid, ticket.payee.as_ref());
        if let Stored::Payment(slot) = stored {
            if let Some(record) = self.payments.at(store, slot, &raw) {
                let known = self.proven(&record, known, now_ms);
                return self.judge(store, ticket, Some(slot), &record, known, now_ms);
            }
        }
        // Not stored (negative, or no room): answer from the result itself, counting nothing.
        let mut record = PaymentRecord::new(raw, state_of(&facts), 0, now_ms);
        record.proven_depth = result.tx.as_ref().ok().and_then(TxAnswer::proven_depth).map_or(0, u64::from);
        let known = self.proven(&record, known, now_ms);
        let (verdict, mut effects) = self.judge(store, ticket, None, &record, known, now_ms);
        if stored != Stored::Full {
            return (verdict, effects);
        }
        effects.ledger_full = true;
        match verdict {
            // A payment that must be counted or bound but has no slot to be counted in.
            Verdict::Reject { rejection: Rejection::VerificationBusy, policy } => {
                (Verdict::Reject { rejection: Rejection::LedgerFull, policy }, effects)
            }
            other => (other, effects),
        }
    }

    /// No explorer could answer: 503, or (failure_mode open) an unverified pass while the
    /// client has passes left in its window.
    pub fn explorer_failed(&self, store: &dyn SharedStore, ticket: &Ticket, now_ms: u64) -> (Verdict, Effects) {
        let unavailable = Verdict::Reject { rejection: Rejection::ExplorerUnavailable, policy: Some(ticket.policy) };
        match &self.fail_open {
            None => (unavailable, Effects::default()),
            Some(_) if ticket.probe => (unavailable, Effects::default()),
            Some(allowance) => {
                if allowance.take(store, ticket.client_key, now_ms / 1000) {
                    (Verdict::AllowUnverified, Effects::default())
                } else {
                    (unavailable, Effects { fail_open_limited: true, ..Effects::default() })
                }
            }
        }
    }

    fn judge(
        &self,
        store: &dyn SharedStore,
        ticket: Ticket,
        slot: Option<usize>,
        record: &PaymentRecord,
        known: Known,
        now_ms: u64,
    ) -> (Verdict, Effects) {
        let Some(facts) = record.facts() else {
            return self.refuse(store, ticket, Rejection::TxNotFound, now_ms);
        };
        let Known { tip, tip_fresh, from_cache } = known;
        let accepting = Policy { price_sats: self.config.accepted_sats(ticket.policy.price_sats), ..ticket.policy };
        let decision = match decide(&accepting, &facts, tip, now_ms / 1000) {
            // Refused under the tolerance: the client is told the price, not the tolerance.
            Decision::Refused(Rejection::InsufficientPayment { paid_sats, .. }) => {
                Decision::Refused(Rejection::InsufficientPayment { paid_sats, required_sats: ticket.policy.price_sats })
            }
            other => other,
        };
        match decision {
            Decision::Paid(receipt) => {
                // Nothing to count or bind: skip the read-modify-write on the hot path.
                let used = if ticket.probe || (self.config.grant.is_unlimited() && ticket.bind_id.is_none()) {
                    Ok(Use::Granted { remaining: None })
                } else if let (Some(_), Some(slot)) = (&self.ledger, slot) {
                    let wait = LedgerWait {
                        slot,
                        record: record.txid,
                        receipt,
                        from_cache,
                        expires_secs: self.expires_secs(&facts, now_ms),
                        ticket,
                    };
                    return self.ledger_take(store, wait, now_ms);
                } else if let Some(slot) = slot {
                    self.config.grant.consume(store, &self.payments, slot, &record.txid, ticket.bind_id, now_ms / 1000)
                } else {
                    Ok(Use::Gone)
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
                    Ok(Use::Gone) if from_cache => (Verdict::Lookup(ticket), Effects::default()),
                    Ok(Use::Gone) | Err(_) => reject(Rejection::VerificationBusy, ticket.policy),
                }
            }
            // A confirmed payment short of confirmations may only look so through a stale tip:
            // ask again, and never answer 402 from a tip that is not fresh.
            Decision::Refused(Rejection::InsufficientConfirmations { .. }) | Decision::TipUnknown
                if facts.block.is_some() && !tip_fresh =>
            {
                if from_cache {
                    (Verdict::Lookup(ticket), Effects::default())
                } else {
                    self.explorer_failed(store, &ticket, now_ms)
                }
            }
            Decision::Refused(rejection) => self.refuse(store, ticket, rejection, now_ms),
            // The tip was just asked for and no explorer could tell it.
            Decision::TipUnknown => self.explorer_failed(store, &ticket, now_ms),
        }
    }

    /// A rejection, with a strike for the kinds that mean "bogus txid". Losing a binding race is
    /// not one: txids are public, and the payer whose txid someone else used first must not be
    /// banned for it.
    fn refuse(&self, store: &dyn SharedStore, ticket: Ticket, rejection: Rejection, now_ms: u64) -> (Verdict, Effects) {
        let strikes = !ticket.probe
            && matches!(
                rejection,
                Rejection::TxNotFound | Rejection::InsufficientPayment { .. } | Rejection::PaymentExpired { .. }
            );
        let effects = if strikes { self.strike(store, &ticket.client_ids, now_ms / 1000) } else { Effects::default() };
        (Verdict::Reject { rejection, policy: Some(ticket.policy) }, effects)
    }

    fn strike(&self, store: &dyn SharedStore, client_ids: &[(u64, u32)], now_secs: u64) -> Effects {
        let Some(penalty) = &self.config.penalty else { return Effects::default() };
        self.payments.refresh(store);
        let mut effects = Effects::default();
        for (id, limit) in client_ids {
            effects.struck = true;
            effects.banned |= penalty.strike_up_to(store, *id, *limit, now_secs).ok().flatten().is_some();
        }
        effects
    }

    /// When a payment stops buying anything (unix s): `max_age` after its block (or after now,
    /// while it is in the mempool), under the longest `max_age` of any route.
    fn expires_secs(&self, facts: &crate::esplora::TxFacts, now_ms: u64) -> u64 {
        let since = facts.block.map_or(now_ms / 1000, |b| b.time.max(1));
        let longest = self.config.longest_max_age().map_or(0, |d| d.as_secs());
        since.max(now_ms / 1000).saturating_add(longest)
    }

    /// A paid request with a ledger: served from this Envoy's held block, answered from what it
    /// knows (exhausted, bound to another), or sent to wait for etcd.
    pub fn ledger_take(&self, store: &dyn SharedStore, wait: LedgerWait, now_ms: u64) -> (Verdict, Effects) {
        let (Some(table), Some(ledger)) = (&self.ledger, &self.config.ledger) else {
            return reject(Rejection::Internal, wait.ticket.policy);
        };
        let want = Want {
            owner: wait.ticket.owner,
            window_secs: self.config.grant.window.map(|w| w.as_secs()),
            now_ms,
            refill_for_ms: millis(ledger.deadline),
        };
        match table.take(store, wait.slot, &wait.record, &want) {
            Ok(Take::Granted { refill }) => {
                let effects =
                    Effects { ledger_refill: refill.then_some((wait.slot, wait.record)), ..Effects::default() };
                (allow(wait.ticket, wait.receipt, wait.from_cache), effects)
            }
            Ok(Take::Exhausted) => self.exhausted(wait.ticket.policy),
            Ok(Take::BoundToOther) => self.refuse(store, wait.ticket, Rejection::BoundToOtherClient, now_ms),
            Ok(Take::Contact | Take::Reserve) => (Verdict::Ledger(Box::new(wait)), Effects::default()),
            Err(_) => reject(Rejection::VerificationBusy, wait.ticket.policy),
        }
    }

    fn exhausted(&self, policy: Policy) -> (Verdict, Effects) {
        let grant = self.config.grant;
        reject(
            Rejection::PaymentExhausted { requests: grant.requests, window_secs: grant.window.map(|w| w.as_secs()) },
            policy,
        )
    }

    /// The etcd attempt that answers a waiting request, from this Envoy's held state: first
    /// contact (bind, window start, first block) or the next reservation.
    pub fn ledger_attempt(
        &self,
        store: &dyn SharedStore,
        slot: usize,
        record: &[u8; 32],
        first: Option<&LedgerWait>,
        seq: u64,
        now_ms: u64,
    ) -> Option<Attempt> {
        let (table, ledger) = (self.ledger.as_ref()?, self.config.ledger.as_ref()?);
        let held = table.read(store, slot, record);
        let limit = self.config.grant.requests.unwrap_or(0);
        let now_secs = now_ms / 1000;
        let expires = first.map_or(now_secs, |w| w.expires_secs);
        let prefix = ledger.prefix(self.config.network.name());
        let (lease, _) = bucket_lease(&prefix, ledger.lease_bucket.as_secs(), expires, now_secs);
        let pay = Pay {
            owner: first.and_then(|w| w.ticket.owner).unwrap_or([0; 16]),
            first_used: now_secs.max(1),
            block: ledger.block_for(limit),
            limit,
            lease,
        };
        if !held.contacted && first.is_none() {
            return None;
        }
        Some(attempt_for(&held, pay, seq))
    }

    /// Whether replicas share what the chain said of a payment through the ledger, so that one
    /// verification serves the whole mesh: with `verify: explorer` (a proven payment's facts are
    /// this replica's to prove) and fixed `pay_to` addresses (a lookup serves every payee then).
    pub fn shares_chain_facts(&self) -> bool {
        self.ledger.is_some() && self.config.spv().is_none() && self.config.pay_to_xpub.is_none()
    }

    /// What a first use writes to the ledger about a confirmed payment in `slot`.
    pub fn chain_facts(&self, store: &dyn SharedStore, slot: usize, record: &[u8; 32]) -> Option<ChainFacts> {
        if !self.shares_chain_facts() {
            return None;
        }
        match self.payments.at(store, slot, record)?.state {
            PaymentState::Confirmed { paid_sats, block } => {
                Some(ChainFacts { paid_sats, height: block.height, time: block.time })
            }
            _ => None,
        }
    }

    /// The ledger key of a payment's chain facts, and the record they belong to.
    pub fn chain_facts_key(&self, txid: &Txid) -> Option<String> {
        let ledger = self.config.ledger.as_ref()?;
        let record = Self::record_key(txid, None);
        Some(crate::ledger::etcd::Keys::new(&ledger.prefix(self.config.network.name()), &record, "").fact)
    }

    /// Another replica's verification, as if an explorer had answered it (to `pay_to[0]`).
    pub fn answer_from_facts(&self, facts: &ChainFacts) -> Option<TxAnswer> {
        let address = self.config.pay_to.first()?;
        let block = Some(crate::esplora::BlockPlace { height: facts.height, time: facts.time });
        Some(TxAnswer::Found { block, outputs: vec![(address.clone(), facts.paid_sats)] })
    }

    /// The etcd could not be asked in time: 503 `ledger_unavailable` (closed), or counted by
    /// this Envoy alone and marked (local).
    pub fn ledger_failed(&self, store: &dyn SharedStore, wait: LedgerWait, now_ms: u64) -> (Verdict, Effects) {
        let mode = self.config.ledger.as_ref().map_or(LedgerFailureMode::Closed, |l| l.failure_mode);
        if mode == LedgerFailureMode::Closed {
            return reject(Rejection::LedgerUnavailable, wait.ticket.policy);
        }
        let used = self.config.grant.consume(
            store,
            &self.payments,
            wait.slot,
            &wait.record,
            wait.ticket.bind_id,
            now_ms / 1000,
        );
        match used {
            Ok(Use::Granted { .. }) => {
                let effects = Effects { ledger_fallback: true, ..Effects::default() };
                match allow(wait.ticket, wait.receipt, wait.from_cache) {
                    Verdict::Allow { txid, receipt, discount, from_cache, address_path, .. } => (
                        Verdict::Allow { txid, receipt, discount, from_cache, address_path, ledger_fallback: true },
                        effects,
                    ),
                    other => (other, effects),
                }
            }
            Ok(Use::Exhausted) => self.exhausted(wait.ticket.policy),
            Ok(Use::BoundToOther) => self.refuse(store, wait.ticket, Rejection::BoundToOtherClient, now_ms),
            Ok(Use::Gone) | Err(_) => reject(Rejection::LedgerUnavailable, wait.ticket.policy),
        }
    }

    /// Whether a new lookup for this ticket fits within the worker's budget: `inflight` lookups
    /// under way, `for_client` of them this client's. A share of the budget is kept for clients
    /// with no strikes, so a flood from struck clients cannot starve honest payers.
    pub fn lookup_fits(&self, ticket: &Ticket, inflight: usize, for_client: usize) -> bool {
        let max = self.config.max_inflight;
        let budget = if ticket.has_strikes { max.saturating_sub(reserved_for_clean(max)) } else { max };
        inflight < budget && for_client < ticket.inflight_limit
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

fn state_of(facts: &crate::esplora::TxFacts) -> PaymentState {
    match facts.block {
        Some(block) => PaymentState::Confirmed { paid_sats: facts.paid_sats, block },
        None => PaymentState::Unconfirmed { paid_sats: facts.paid_sats, seen_at_tip: 0 },
    }
}

fn allow(ticket: Ticket, receipt: Receipt, from_cache: bool) -> Verdict {
    let address_path = ticket.payee.as_ref().map(ClientAddress::path_text);
    Verdict::Allow {
        txid: ticket.txid,
        receipt,
        discount: ticket.discount,
        from_cache,
        address_path,
        ledger_fallback: false,
    }
}

/// A status check's verdict as the status endpoint answers it; a lookup stays a lookup.
fn as_status(txid: Txid, verdict: Verdict, effects: Effects) -> (Verdict, Effects) {
    let (outcome, policy) = match verdict {
        Verdict::Allow { receipt, .. } => (Ok(receipt), None),
        Verdict::Reject { rejection, policy } => (Err(rejection), policy),
        other => return (other, effects),
    };
    let policy = policy.unwrap_or(Policy { price_sats: 0, min_confirmations: 0, max_age: std::time::Duration::ZERO });
    (Verdict::Status(Box::new(PaymentStatus { txid, policy, outcome })), effects)
}

fn reject(rejection: Rejection, policy: Policy) -> (Verdict, Effects) {
    (Verdict::Reject { rejection, policy: Some(policy) }, Effects::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esplora::BlockPlace;
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
            source_trusted: true,
            claims: &[],
            now_ms: NOW_MS,
        };
        let values: Vec<&[u8]> = txids.iter().map(|t| t.as_bytes()).collect();
        gate.admit(store, &facts, &values)
    }

    /// A paid request for TXID on /api at another time.
    fn admit_at(gate: &Gate, store: &MemoryStore, now_ms: u64) -> Verdict {
        let facts = RequestFacts {
            path: "/api",
            headers: &[],
            principal: None,
            source_address: Some("10.0.0.1:999"),
            source_trusted: true,
            claims: &[],
            now_ms,
        };
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
            Verdict::Ledger(_) => "ledger",
            Verdict::Status(_) => "status",
        }
    }

    fn found(paid: u64, height: Option<u64>) -> LookupResult {
        let block = height.map(|height| BlockPlace { height, time: NOW_MS / 1000 - 60 });
        let outputs = vec![(PAY_TO.to_string(), paid), ("bcrt1qother".to_string(), 5)];
        LookupResult { tx: Ok(TxAnswer::Found { block, outputs }), tip: Some(110), explorer: 0 }
    }

    /// Runs one request through admit, a lookup with `result` and resolve, as the glue does.
    fn verify(gate: &Gate, store: &MemoryStore, hs: &[(&str, &str)], result: &LookupResult) -> (Verdict, Effects) {
        let ticket = ticket_of(admit(gate, store, "/api", hs, &[TXID]).0);
        let stored = gate.remember(store, &ticket.txid, ticket.payee.as_ref(), result, NOW_MS);
        gate.resolve(store, ticket, result, stored, NOW_MS)
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
        // ... and goes by what it says now: another worker found the payment back in the mempool
        // (a reorg), so it no longer has its confirmation.
        let result = found(1000, None);
        let stored = counted.remember(&store, &Txid::parse(TXID.as_bytes()).unwrap(), None, &result, NOW_MS);
        assert!(matches!(stored, Stored::Payment(_)), "{stored:?}");
        let (again, _) = admit(&counted, &store, "/api", &[], &[TXID]);
        assert!(!matches!(again, Verdict::Allow { .. }), "{again:?}");
    }

    #[test]
    fn negative_answers_are_cached_until_their_ttl() {
        let (gate, store) = gate(json!({"cache": {"not_found_ttl": "10s"}}));
        let result = LookupResult { tx: Ok(TxAnswer::NotFound), tip: None, explorer: 0 };
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
        gate.record_tip(&store, 0, 111, NOW_MS);
        assert_eq!(code(&admit_at(&gate, &store, NOW_MS + 1_000)), "lookup");
    }

    #[test]
    fn a_mempool_answer_that_came_before_the_tip_is_kept_until_a_newer_block() {
        let (gate, store) = gate(json!({"cache": {"unconfirmed_ttl": "30s", "tip_ttl": "5s"}}));
        gate.record_tip(&store, 0, 110, NOW_MS - 60_000);
        // The transaction's answer arrived before this lookup's tip read: no tip in the result.
        let mempool = LookupResult { tip: None, ..found(1000, None) };
        assert_eq!(code(&verify(&gate, &store, &[], &mempool).0), "insufficient_confirmations");
        gate.record_tip(&store, 0, 110, NOW_MS);
        assert_eq!(code(&admit_at(&gate, &store, NOW_MS + 1_000)), "insufficient_confirmations", "from the cache");
        gate.record_tip(&store, 0, 111, NOW_MS + 1_000);
        assert_eq!(code(&admit_at(&gate, &store, NOW_MS + 2_100)), "lookup", "a newer block: asked again");
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
        let failed = LookupResult { tx: Err(ExplorerError::NoResponse), tip: None, explorer: 0 };
        let (closed, store) = gate(json!({}));
        assert_eq!(code(&verify(&closed, &store, &[], &failed).0), "explorer_unavailable");
        let (open, store) = gate(json!({"failure_mode": "open", "fail_open": {"acknowledged": true, "per_client": 2}}));
        assert_eq!(verify(&open, &store, &[], &failed).0, Verdict::AllowUnverified);
        assert_eq!(verify(&open, &store, &[], &failed).0, Verdict::AllowUnverified);
        let (third, effects) = verify(&open, &store, &[], &failed);
        assert_eq!(
            (code(&third), effects.fail_open_limited),
            ("explorer_unavailable", true),
            "passes are limited per client"
        );
        // Open mode never lets a request without a payment, or with a malformed one, through.
        assert_eq!(code(&admit(&open, &store, "/api", &[], &[]).0), "payment_required");
        assert_eq!(code(&admit(&open, &store, "/api", &[], &["nope"]).0), "invalid_txid");
        let (closed, store) = gate(json!({}));
        let no_tip = LookupResult { tip: None, ..found(1000, Some(100)) };
        assert_eq!(code(&verify(&closed, &store, &[], &no_tip).0), "explorer_unavailable");
    }

    /// `verify` at another time (admit and resolve both at `now_ms`).
    fn verify_at(gate: &Gate, store: &MemoryStore, result: &LookupResult, now_ms: u64) -> (Verdict, Effects) {
        let facts = RequestFacts { now_ms, ..from_source("10.0.0.1:999") };
        let ticket = ticket_of(gate.admit(store, &facts, &[TXID.as_bytes()]).0);
        let stored = gate.remember(store, &ticket.txid, ticket.payee.as_ref(), result, now_ms);
        gate.resolve(store, ticket, result, stored, now_ms)
    }

    #[test]
    fn windows_are_counted_in_seconds_of_the_clock() {
        // Fail-open passes: 2 per client per minute.
        let failed = LookupResult { tx: Err(ExplorerError::NoResponse), tip: None, explorer: 0 };
        let (open, store) = gate(json!({"failure_mode": "open", "fail_open": {"acknowledged": true, "per_client": 2}}));
        assert_eq!(verify_at(&open, &store, &failed, NOW_MS).0, Verdict::AllowUnverified);
        assert_eq!(verify_at(&open, &store, &failed, NOW_MS + 1_000).0, Verdict::AllowUnverified);
        assert_eq!(code(&verify_at(&open, &store, &failed, NOW_MS + 2_000).0), "explorer_unavailable");
        assert_eq!(verify_at(&open, &store, &failed, NOW_MS + 60_000).0, Verdict::AllowUnverified, "a new minute");
        // A grant window of 10 s from the first use.
        let (windowed, store) = gate(json!({"grant": {"requests": 100, "window": "10s"}}));
        assert_eq!(code(&verify_at(&windowed, &store, &found(1000, Some(100)), NOW_MS).0), "allow");
        assert_eq!(code(&admit_at(&windowed, &store, NOW_MS + 9_999)), "allow");
        assert_eq!(code(&admit_at(&windowed, &store, NOW_MS + 10_000)), "payment_exhausted");
        // Strikes from the explorer's answers: 2 within find_time ban, 2 a minute apart do not.
        let (strict, store) = gate(
            json!({"penalty": {"identity": "source_address", "max_strikes": 2, "find_time": "1m"}, "cache": {"not_found_ttl": "0s"}}),
        );
        let missing = LookupResult { tx: Ok(TxAnswer::NotFound), tip: Some(110), explorer: 0 };
        assert!(!verify_at(&strict, &store, &missing, NOW_MS).1.banned);
        assert!(!verify_at(&strict, &store, &missing, NOW_MS + 61_000).1.banned, "the first strike's window ended");
        assert!(verify_at(&strict, &store, &missing, NOW_MS + 62_000).1.banned, "two within a minute");
    }

    #[test]
    fn a_counted_payment_with_no_slot_is_never_sent_to_the_explorer_again() {
        let (gate, store) = gate(json!({"grant": {"requests": 5}}));
        let ticket = ticket_of(admit(&gate, &store, "/api", &[], &[TXID]).0);
        let (verdict, effects) = gate.resolve(&store, ticket, &found(1000, Some(100)), Stored::Full, NOW_MS);
        assert!(effects.ledger_full);
        assert_ne!(code(&verdict), "lookup", "{verdict:?}");
        // A negative answer is kept elsewhere: no slot was wanted, none is missing.
        let ticket = ticket_of(admit(&gate, &store, "/api", &[], &[TXID]).0);
        let missing = LookupResult { tx: Ok(TxAnswer::NotFound), tip: Some(110), explorer: 0 };
        let (verdict, effects) = gate.resolve(&store, ticket, &missing, Stored::Elsewhere, NOW_MS);
        assert_eq!((code(&verdict), effects.ledger_full), ("tx_not_found", false));
    }

    /// What a request to /api from `source` with no headers tells the gate.
    fn from_source(source: &str) -> RequestFacts<'_> {
        RequestFacts {
            path: "/api",
            headers: &[],
            principal: None,
            source_address: Some(source),
            source_trusted: true,
            claims: &[],
            now_ms: NOW_MS,
        }
    }

    fn status(gate: &Gate, store: &MemoryStore, txid: &str, source: &str) -> (Verdict, Effects) {
        gate.status(store, &from_source(source), txid.as_bytes())
    }

    fn state(v: &Verdict) -> Result<Receipt, &'static str> {
        match v {
            Verdict::Status(s) => s.outcome.clone().map_err(|r| r.code()),
            other => Err(code(other)),
        }
    }

    #[test]
    fn a_status_check_uses_no_grant_binds_nothing_and_strikes_nobody() {
        let (gate, store) = gate(json!({
            "grant": {"requests": 1}, "bind_to": "header:x-key",
            "penalty": {"identity": "source_address", "max_strikes": 1}
        }));
        // Unknown txid: a lookup, resolved as a status without a strike (max_strikes 1 would ban).
        let ticket = ticket_of(status(&gate, &store, TXID, "10.0.0.9:1").0);
        assert!(ticket.probe && ticket.bind_id.is_none());
        let missing = LookupResult { tx: Ok(TxAnswer::NotFound), tip: None, explorer: 0 };
        let stored = gate.remember(&store, &ticket.txid, None, &missing, NOW_MS);
        let (verdict, effects) = gate.resolve(&store, ticket, &missing, stored, NOW_MS);
        assert_eq!((state(&verdict), effects.struck), (Err("tx_not_found"), false));
        assert_eq!(state(&status(&gate, &store, "zz", "10.0.0.9:1").0), Err("invalid_txid"));
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-key", "a")], &[]).0), "payment_required", "not banned");
        // A paid txid: the status says paid as often as asked, and the one-request grant and
        // the binding are still there for the first real request.
        let (gate, store) = self::gate(json!({"grant": {"requests": 1}, "bind_to": "header:x-key", "max_age": "1h"}));
        let ticket = ticket_of(status(&gate, &store, TXID, "10.0.0.9:1").0);
        let result = found(1200, Some(100));
        let stored = gate.remember(&store, &ticket.txid, None, &result, NOW_MS);
        let paid = Ok(Receipt { paid_sats: 1200, confirmations: 11 });
        assert_eq!(state(&gate.resolve(&store, ticket, &result, stored, NOW_MS).0), paid);
        for _ in 0..3 {
            assert_eq!(state(&status(&gate, &store, TXID, "10.0.0.9:1").0), paid);
        }
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-key", "b")], &[TXID]).0), "allow");
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-key", "a")], &[TXID]).0), "payment_bound_to_other_client");
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-key", "b")], &[TXID]).0), "payment_exhausted");
        assert_eq!(state(&status(&gate, &store, TXID, "10.0.0.9:1").0), paid, "a status check never says exhausted");
    }

    #[test]
    fn a_status_check_never_passes_unverified_and_its_cold_lookups_are_limited_per_client() {
        let (gate, store) = gate(json!({"failure_mode": "open", "fail_open": {"acknowledged": true}}));
        let ticket = ticket_of(status(&gate, &store, TXID, "10.0.0.9:1").0);
        let failed = LookupResult { tx: Err(ExplorerError::Status(502)), tip: None, explorer: 0 };
        let (verdict, _) = gate.resolve(&store, ticket, &failed, Stored::Elsewhere, NOW_MS);
        assert_eq!(state(&verdict), Err("explorer_unavailable"));
        let (gate, store) = self::gate(json!({}));
        let other = |i: u32| format!("{:064x}", i);
        for i in 0..STATUS_LOOKUPS_PER_WINDOW {
            assert_eq!(code(&status(&gate, &store, &other(i), "10.0.0.9:1").0), "lookup", "lookup {i}");
        }
        assert_eq!(state(&status(&gate, &store, &other(99), "10.0.0.9:1").0), Err("status_rate_limited"));
        assert_eq!(code(&status(&gate, &store, &other(99), "10.0.0.8:1").0), "lookup", "another client has its own");
    }

    #[test]
    fn status_lookups_are_counted_per_minute_of_the_clock() {
        let (gate, store) = gate(json!({}));
        let at = |i: u32, now_ms: u64| {
            let facts = RequestFacts { now_ms, ..from_source("10.0.0.9:1") };
            code(&gate.status(&store, &facts, format!("{i:064x}").as_bytes()).0)
        };
        // One a second: the 31st within the minute is refused, a minute after the first it is not.
        for i in 0..STATUS_LOOKUPS_PER_WINDOW {
            assert_eq!(at(i, NOW_MS + u64::from(i) * 1000), "lookup", "lookup {i}");
        }
        assert_eq!(at(99, NOW_MS + 30_500), "status_rate_limited");
        assert_eq!(at(99, NOW_MS + 59_999), "status_rate_limited");
        assert_eq!(at(99, NOW_MS + 60_000), "lookup", "a new minute");
    }

    #[test]
    fn a_source_address_identity_is_struck_once_per_bad_request() {
        let (gate, store) = gate(json!({"penalty": {"identity": "source_address", "max_strikes": 3}}));
        for i in 0..2 {
            let (verdict, effects) = admit(&gate, &store, "/api", &[], &["bogus"]);
            assert_eq!((code(&verdict), effects.banned), ("invalid_txid", false), "bad request {i}");
        }
        let (verdict, effects) = admit(&gate, &store, "/api", &[], &["bogus"]);
        assert_eq!((code(&verdict), effects.banned), ("invalid_txid", true), "the third bans");
    }

    #[test]
    fn rotating_keys_runs_out_on_the_source_address() {
        let (gate, store) =
            gate(json!({"penalty": {"identity": "header:x-api-key", "max_strikes": 2, "source_factor": 2}}));
        // Each key is struck once, never banned; the address behind them all is struck each time.
        for i in 0..4 {
            let key = format!("key-{i}");
            let (verdict, effects) = admit(&gate, &store, "/api", &[("x-api-key", &key)], &["bogus"]);
            assert_eq!((code(&verdict), effects.banned), ("invalid_txid", i == 3), "key {i}");
        }
        let (verdict, _) = admit(&gate, &store, "/api", &[("x-api-key", "key-new")], &[TXID]);
        assert_eq!(code(&verdict), "client_banned", "a fresh key from a banned address");
        let (off, store) =
            self::gate(json!({"penalty": {"identity": "header:x-api-key", "max_strikes": 2, "source_factor": 0}}));
        for i in 0..6 {
            let key = format!("key-{i}");
            assert!(!admit(&off, &store, "/api", &[("x-api-key", &key)], &["bogus"]).1.banned, "factor 0: key {i}");
        }
    }

    #[test]
    fn under_spv_a_cached_payment_without_a_proven_depth_is_asked_again() {
        let (gate, store) = gate(json!({"verify": "spv", "cache": {"tip_ttl": "5s"}}));
        // Stored as an explorer's word only (no proof): a confirmed record with no proven depth.
        let txid = Txid::parse(TXID.as_bytes()).unwrap();
        let stored = gate.remember(&store, &txid, None, &found(1000, Some(100)), NOW_MS);
        assert!(matches!(stored, Stored::Payment(_)), "{stored:?}");
        let (verdict, _) = admit(&gate, &store, "/api", &[], &[TXID]);
        assert_eq!(code(&verdict), "lookup", "never judged from an unproven record");
    }

    #[test]
    fn tolerance_forgives_a_small_underpayment_and_reports_the_price() {
        let (gate, store) = gate(json!({"tolerance_percent": 2}));
        assert_eq!(code(&verify(&gate, &store, &[], &found(980, Some(100))).0), "allow");
        let (gate, store) = self::gate(json!({"tolerance_percent": 2}));
        let (verdict, _) = verify(&gate, &store, &[], &found(979, Some(100)));
        assert!(
            matches!(
                verdict,
                Verdict::Reject {
                    rejection: Rejection::InsufficientPayment { paid_sats: 979, required_sats: 1000 },
                    ..
                }
            ),
            "{verdict:?}"
        );
        let (strict, store) = self::gate(json!({}));
        assert_eq!(code(&verify(&strict, &store, &[], &found(999, Some(100))).0), "insufficient_payment");
        assert_eq!(strict.config.accepted_sats(1), 1);
        assert_eq!(gate.config.accepted_sats(1), 1, "a price is never forgiven to nothing");
        assert_eq!(gate.config.accepted_sats(1000), 980);
    }

    #[test]
    fn grants_run_out() {
        let (gate, store) = gate(json!({"grant": {"requests": 2}}));
        assert_eq!(code(&verify(&gate, &store, &[], &found(1000, Some(100))).0), "allow");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "allow");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "payment_exhausted");
    }

    #[test]
    fn binding_refuses_another_client_without_striking_it() {
        let (gate, store) = gate(json!({"bind_to": "header:x-key", "penalty": {"identity": "header:x-key"}}));
        assert_eq!(code(&verify(&gate, &store, &[("x-key", "a")], &found(1000, Some(100))).0), "allow");
        let (verdict, effects) = admit(&gate, &store, "/api", &[("x-key", "b")], &[TXID]);
        assert_eq!(code(&verdict), "payment_bound_to_other_client");
        assert!(!effects.struck, "txids are public: losing the race to use one is no offence");
        let (verdict, _) = admit(&gate, &store, "/api", &[], &[TXID]);
        assert!(
            matches!(&verdict, Verdict::Reject { rejection: Rejection::IdentityRequired { identity }, .. } if identity == "header x-key"),
            "{verdict:?}"
        );
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

    /// What the glue does: the verdict without the client if it is settled, else `admit` with
    /// the client's address; and whether the address was needed.
    fn admit_as_glue(gate: &Gate, store: &MemoryStore, source: &str, txids: &[&str], now_ms: u64) -> (Verdict, bool) {
        let values: Vec<&[u8]> = txids.iter().map(|t| t.as_bytes()).collect();
        let facts = |source_address| RequestFacts {
            path: "/api",
            headers: &[],
            principal: None,
            source_address,
            source_trusted: true,
            claims: &[],
            now_ms,
        };
        match gate.admit_without_client(store, &facts(None), &values) {
            Some((verdict, _)) => (verdict, false),
            None => (gate.admit(store, &facts(Some(source)), &values).0, true),
        }
    }

    #[test]
    fn with_no_client_banned_paid_and_unpaid_requests_need_no_client_record() {
        let (gate, store) =
            gate(json!({"penalty": {"identity": "source_address", "max_strikes": 2, "ban_time": "10m"}}));
        let (paid, _) = verify(&gate, &store, &[], &found(1000, Some(100)));
        assert!(matches!(paid, Verdict::Allow { .. }), "{paid:?}");
        let a = "10.0.0.7:1";
        assert_eq!(code(&admit_as_glue(&gate, &store, a, &[TXID], NOW_MS).0), "allow");
        assert!(!admit_as_glue(&gate, &store, a, &[TXID], NOW_MS).1, "a cached payment needs no address");
        assert_eq!(
            admit_as_glue(&gate, &store, a, &[], NOW_MS),
            (reject(Rejection::PaymentRequired, gate.config.default_policy).0, false)
        );
        // What can strike, or must be looked up, is judged with the client.
        let unknown = "11".repeat(32);
        assert_eq!(code(&admit_as_glue(&gate, &store, a, &[&unknown], NOW_MS).0), "lookup");
        assert!(admit_as_glue(&gate, &store, a, &[&unknown], NOW_MS).1);
        assert_eq!(admit_as_glue(&gate, &store, a, &["bogus"], NOW_MS), (code_reject("invalid_txid", &gate), true));
        // The second strike bans a; from then on every request is judged with its client ...
        let (second, used) = admit_as_glue(&gate, &store, a, &["bogus"], NOW_MS);
        assert_eq!((code(&second), used), ("invalid_txid", true));
        for txids in [&[TXID][..], &[][..]] {
            let (verdict, used) = admit_as_glue(&gate, &store, a, txids, NOW_MS + 1000);
            assert_eq!((code(&verdict), used), ("client_banned", true), "{txids:?}");
            // ... and other clients are judged as before, only with their address read.
            let (other, used) = admit_as_glue(&gate, &store, "10.0.0.8:1", txids, NOW_MS + 1000);
            assert_ne!(code(&other), "client_banned");
            assert!(used);
        }
        // When the ban has ended, nobody's address is needed again.
        let later = NOW_MS + 601_000;
        assert_eq!(code(&admit_as_glue(&gate, &store, a, &[TXID], later).0), "allow");
        assert!(!admit_as_glue(&gate, &store, a, &[TXID], later).1);
    }

    fn code_reject(code: &str, gate: &Gate) -> Verdict {
        let rejection = match code {
            "invalid_txid" => Rejection::InvalidTxid,
            other => panic!("{other}"),
        };
        Verdict::Reject { rejection, policy: Some(gate.config.default_policy) }
    }

    #[test]
    fn challenges_are_rendered_once_per_price_up_to_the_memos_capacity() {
        let (gate, _) = gate(json!({}));
        let price = |sats: u64| Policy { price_sats: sats, ..gate.config.default_policy };
        let first = gate.challenge(&price(1000), None);
        let other = gate.challenge(&price(2000), None);
        assert!(!Rc::ptr_eq(&first, &other));
        assert!(Rc::ptr_eq(&first, &gate.challenge(&price(1000), None)), "kept beside another price");
        for sats in 0..CHALLENGE_MEMO as u64 - 2 {
            gate.challenge(&price(10_000 + sats), None);
        }
        assert!(Rc::ptr_eq(&first, &gate.challenge(&price(1000), None)), "kept while the memo has room");
        gate.challenge(&price(1), None);
        assert!(!Rc::ptr_eq(&first, &gate.challenge(&price(1000), None)), "a full memo starts again");
    }

    #[test]
    fn what_asks_who_the_client_is_keeps_reading_it() {
        let address = gate(json!({"penalty": {"identity": "source_address"}, "bind_to": "source_address"}));
        let discount = gate(json!({"penalty": {"identity": "source_address"},
            "discounts": [{"name": "calm", "percent": 10, "no_strikes_for": "1h"}]}));
        let open = gate(
            json!({"penalty": {"identity": "source_address"}, "failure_mode": "open", "fail_open": {"acknowledged": true}}),
        );
        let none = gate(json!({}));
        for (what, (gate, store)) in
            [("bind_to", address), ("no_strikes_for", discount), ("fail open", open), ("no penalty box", none)]
        {
            assert!(!gate.may_skip_client(&store, true, NOW_MS), "{what}");
            assert!(admit_as_glue(&gate, &store, "10.0.0.7:1", &[], NOW_MS).1, "{what}");
        }
        let (gate, store) = gate(json!({"penalty": {"identity": "source_address"}}));
        assert!(gate.may_skip_client(&store, true, NOW_MS));
        assert!(!gate.may_skip_client(&store, false, NOW_MS), "an address the client chose is refused in full");
    }

    #[test]
    fn discounts_lower_the_price_asked_and_checked() {
        let (gate, store) = gate(
            json!({"discounts": [{"name": "v2", "percent": 25, "header": {"name": "x-policy", "set_by_trusted_filter": true}}]}),
        );
        let (verdict, _) = admit(&gate, &store, "/api", &[("x-policy", "1")], &[]);
        assert!(matches!(verdict, Verdict::Reject { policy: Some(Policy { price_sats: 750, .. }), .. }));
        let (paid, _) = verify(&gate, &store, &[("x-policy", "1")], &found(750, Some(100)));
        assert!(matches!(&paid, Verdict::Allow { discount: Some(d), .. } if d == "v2:25"), "{paid:?}");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "insufficient_payment");
    }

    /// The BIP-86 test vector's account key re-encoded as a tpub, for regtest.
    fn regtest_tpub() -> String {
        let xpub = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";
        let mut raw = bs58::decode(xpub).with_check(None).into_vec().unwrap();
        raw[..4].copy_from_slice(&[0x04, 0x35, 0x87, 0xcf]);
        bs58::encode(raw).with_check().into_string()
    }

    fn address_of(gate: &Gate, key: &str) -> ClientAddress {
        let headers = headers(&[("x-api-key", key)]);
        let facts = RequestFacts {
            path: "/api",
            headers: &headers,
            principal: None,
            source_address: None,
            source_trusted: true,
            claims: &[],
            now_ms: NOW_MS,
        };
        gate.client_address(&facts).unwrap().unwrap()
    }

    fn paying(address: &str, sats: u64) -> LookupResult {
        let block = Some(BlockPlace { height: 100, time: NOW_MS / 1000 - 60 });
        LookupResult {
            tx: Ok(TxAnswer::Found { block, outputs: vec![(address.to_string(), sats)] }),
            tip: Some(110),
            explorer: 0,
        }
    }

    #[test]
    fn each_clients_address_is_derived_once_per_worker() {
        let (gate, _) = gate(json!({
            "pay_to": {"xpub": regtest_tpub(), "script": "p2wpkh", "branch": 0},
            "bind_to": "header:x-api-key"
        }));
        let a = address_of(&gate, "client-a");
        let b = address_of(&gate, "client-b");
        assert_ne!(a.address, b.address);
        assert_eq!(gate.addresses.borrow().len(), 2, "both kept: a derivation costs about 2 ms of CPU");
        assert_eq!(address_of(&gate, "client-a"), a);
        assert_eq!(gate.addresses.borrow().len(), 2);
    }

    #[test]
    fn every_client_pays_its_own_address_and_nobody_can_use_it_first() {
        let (gate, store) = gate(json!({
            "pay_to": {"xpub": regtest_tpub(), "script": "p2wpkh", "branch": 0},
            "bind_to": "header:x-api-key"
        }));
        // No identity: told what to present, never shown a shared address.
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[]).0), "identity_required");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "identity_required");
        let alice = address_of(&gate, "alice");
        let bob = address_of(&gate, "bob");
        assert_ne!(alice.address, bob.address);
        assert!(alice.address.starts_with("bcrt1q"), "{}", alice.address);
        assert_eq!(address_of(&gate, "alice"), alice, "stable (and cached)");
        // The thief presents alice's txid first, with its own identity: its address got nothing.
        let (thief, _) = verify(&gate, &store, &[("x-api-key", "bob")], &paying(&alice.address, 1000));
        assert!(
            matches!(&thief, Verdict::Reject { rejection: Rejection::InsufficientPayment { paid_sats: 0, .. }, .. }),
            "{thief:?}"
        );
        let (paid, _) = verify(&gate, &store, &[("x-api-key", "alice")], &paying(&alice.address, 1000));
        match paid {
            Verdict::Allow { address_path, .. } => assert_eq!(address_path, Some(alice.path_text())),
            other => panic!("alice paid her own address: {other:?}"),
        }
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-api-key", "alice")], &[TXID]).0), "allow");
        assert_eq!(code(&admit(&gate, &store, "/api", &[("x-api-key", "bob")], &[TXID]).0), "insufficient_payment");
    }

    #[test]
    fn an_xpub_needs_a_binding_identity_and_its_network() {
        let base = json!({"network": "regtest", "price_sats": 1000, "explorers": [{"cluster": "e", "authority": "e"}]});
        let with = |pay_to: serde_json::Value, bind: bool| {
            let mut v = base.clone();
            v["pay_to"] = pay_to;
            if bind {
                v["bind_to"] = json!("header:x-api-key");
            }
            Config::from_json(v.to_string().as_bytes()).map(|_| ()).map_err(|e| e.field)
        };
        assert_eq!(with(json!({"xpub": regtest_tpub(), "script": "p2tr"}), false), Err("bind_to".to_string()));
        assert_eq!(with(json!({"xpub": regtest_tpub(), "script": "p2tr"}), true), Ok(()));
        let mainnet = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";
        assert_eq!(with(json!({"xpub": mainnet, "script": "p2tr"}), true), Err("pay_to.xpub".to_string()));
        assert_eq!(with(json!({"xpub": regtest_tpub(), "script": "p2pkh"}), true), Err("pay_to.script".to_string()));
        assert_eq!(with(json!({"xpub": regtest_tpub()}), true), Err("pay_to.script".to_string()));
        assert_eq!(
            with(json!({"xpub": regtest_tpub(), "script": "p2tr", "branch": 2147483648u64}), true),
            Err("pay_to.branch".to_string())
        );
        assert_eq!(
            with(json!({"xpub": regtest_tpub(), "script": "p2tr", "extra": 1}), true),
            Err("pay_to".to_string())
        );
    }

    #[test]
    fn clients_without_the_identity_are_struck_by_their_own_address() {
        let (gate, store) = gate(json!({"penalty": {"identity": "header:x-key", "max_strikes": 2}}));
        let from = |source: &str| gate.admit(&store, &from_source(source), &[b"bogus".as_slice()]).0;
        assert_eq!(code(&from("10.0.0.1:1")), "invalid_txid");
        assert_eq!(code(&from("10.0.0.1:2")), "invalid_txid");
        assert_eq!(code(&from("10.0.0.1:3")), "client_banned", "two strikes for 10.0.0.1");
        assert_eq!(code(&from("10.0.0.2:1")), "invalid_txid", "another address is another client");
    }

    #[test]
    fn a_quarter_of_the_lookups_is_kept_for_clients_without_strikes() {
        assert_eq!(reserved_for_clean(64), 16);
        assert_eq!(reserved_for_clean(2), 1);
        assert_eq!(reserved_for_clean(1), 0, "a single lookup is for everyone");
        let (gate, _) = gate(json!({"max_inflight": 8}));
        let mut ticket = ticket_of(admit(&gate, &MemoryStore::default(), "/api", &[], &[TXID]).0);
        assert!(gate.lookup_fits(&ticket, 7, 0));
        ticket.has_strikes = true;
        assert!(gate.lookup_fits(&ticket, 5, 0));
        assert!(!gate.lookup_fits(&ticket, 6, 0), "the last two are kept for clean clients");
        assert!(!gate.lookup_fits(&ticket, 0, ticket.inflight_limit), "and each client has its own cap");
    }

    #[test]
    fn a_ticket_says_whether_its_client_has_strikes() {
        let (gate, store) = gate(json!({"penalty": {"identity": "source_address", "max_strikes": 5}}));
        assert!(!ticket_of(admit(&gate, &store, "/api", &[], &[TXID]).0).has_strikes, "a clean client");
        admit(&gate, &store, "/api", &[], &["bogus"]);
        let ticket = ticket_of(admit(&gate, &store, "/api", &[], &[TXID]).0);
        assert!(ticket.has_strikes, "after a strike");
        assert_eq!(ticket.inflight_limit, 4, "no more lookups than strikes left");
    }

    #[test]
    fn a_no_strikes_discount_counts_from_the_first_visit_or_the_last_strike() {
        let (gate, store) = gate(json!({
            "penalty": {"identity": "source_address", "max_strikes": 5},
            "discounts": [{"name": "calm", "percent": 10, "no_strikes_for": "1h"}]
        }));
        let price_at = |now_ms: u64| {
            let facts = RequestFacts { now_ms, ..from_source("10.0.0.5:1") };
            match gate.admit(&store, &facts, &[]).0 {
                Verdict::Reject { policy: Some(policy), .. } => policy.price_sats,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(price_at(NOW_MS), 1000, "first seen now");
        assert_eq!(price_at(NOW_MS + 3_599_000), 1000);
        assert_eq!(price_at(NOW_MS + 3_600_000), 900, "an hour without strikes since the first visit");
        let facts = RequestFacts { now_ms: NOW_MS + 4_000_000, ..from_source("10.0.0.5:1") };
        assert!(gate.admit(&store, &facts, &[b"bogus"]).1.struck);
        assert_eq!(price_at(NOW_MS + 4_000_000 + 3_599_000), 1000, "an hour after the strike, not yet");
        assert_eq!(price_at(NOW_MS + 4_000_000 + 3_600_000), 900);
    }

    #[test]
    fn the_tip_is_read_when_unknown_stale_or_below_the_block() {
        let (gate, store) = gate(json!({"cache": {"tip_ttl": "5s"}}));
        assert!(gate.tip_needed(&store, 0, None, NOW_MS), "never read");
        gate.record_tip(&store, 0, 110, NOW_MS);
        assert!(!gate.tip_needed(&store, 0, None, NOW_MS + 4_999), "fresh");
        assert!(!gate.tip_needed(&store, 0, Some(110), NOW_MS), "a block at the tip");
        assert!(!gate.tip_needed(&store, 0, Some(100), NOW_MS), "a block below it");
        assert!(gate.tip_needed(&store, 0, Some(111), NOW_MS), "a block above the tip it knows");
        assert!(gate.tip_needed(&store, 0, None, NOW_MS + 5_000), "stale");
        assert!(gate.tip_needed(&store, 1, Some(100), NOW_MS), "another explorer's tip is its own");
    }

    #[test]
    fn remembering_a_confirmed_payment_again_is_no_reorg() {
        let txid = Txid::parse(TXID.as_bytes()).unwrap();
        for verify in ["explorer", "spv"] {
            let (gate, store) = gate(json!({"verify": verify}));
            let result = if verify == "spv" { proven(1000, Some(100), 1) } else { found(1000, Some(100)) };
            assert!(matches!(gate.remember(&store, &txid, None, &result, NOW_MS), Stored::Payment(_)), "{verify}");
            let again = gate.remember(&store, &txid, None, &result, NOW_MS + 1000);
            assert!(matches!(again, Stored::Payment(_)), "{verify}: {again:?}");
        }
    }

    #[test]
    fn a_derivation_path_reads_branch_then_the_two_halves() {
        let a = ClientAddress { address: "bcrt1q".into(), path: (3, 12, 34) };
        assert_eq!(a.path_text(), "3/12/34");
    }

    #[test]
    fn a_source_address_the_client_chose_never_stands_for_it() {
        let untrusted = |gate: &Gate, store: &MemoryStore, hs: &[(&str, &str)]| {
            let headers = headers(hs);
            let facts = RequestFacts {
                path: "/api",
                headers: &headers,
                principal: None,
                source_address: Some("198.51.100.7:1"),
                source_trusted: false,
                claims: &[],
                now_ms: NOW_MS,
            };
            gate.admit(store, &facts, &[TXID.as_bytes()]).0
        };
        let (by_source, store) = gate(json!({"penalty": {"identity": "source_address"}}));
        assert_eq!(code(&untrusted(&by_source, &store, &[])), "forwarded_for_untrusted");
        let (bound, store) = gate(json!({"bind_to": "source_address"}));
        assert_eq!(code(&untrusted(&bound, &store, &[])), "forwarded_for_untrusted");
        // A client with its own identity is judged by it; its claimed address is not struck.
        let (by_key, store) = gate(json!({"penalty": {"identity": "header:x-key"}}));
        let verdict = untrusted(&by_key, &store, &[("x-key", "k")]);
        match verdict {
            Verdict::Lookup(ticket) => assert_eq!(ticket.client_ids.len(), 1, "no address bucket"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            code(&untrusted(&by_key, &store, &[])),
            "forwarded_for_untrusted",
            "no identity: its address would be"
        );
    }

    fn proven(paid: u64, height: Option<u64>, depth: u32) -> LookupResult {
        let script = crate::address::script_pubkey(PAY_TO, crate::address::Network::Regtest).unwrap();
        let block = height.map(|height| crate::esplora::ProvenBlock {
            place: BlockPlace { height, time: NOW_MS / 1000 - 60 },
            depth,
        });
        let outputs = vec![(script, paid), (vec![0x51], 5)];
        LookupResult { tx: Ok(TxAnswer::Proven { block, outputs }), tip: None, explorer: 0 }
    }

    #[test]
    fn under_spv_every_worker_notices_a_reorg_within_a_second() {
        // Two workers: one shared store, each gate with its own per-worker memo.
        let (a, store) = gate(json!({"verify": "spv", "cache": {"tip_ttl": "5s"}}));
        let b = Gate::new(
            Config::from_json(
                json!({"network": "regtest", "pay_to": [PAY_TO], "price_sats": 1000,
                   "explorers": [{"cluster": "e", "authority": "e"}], "routes": [{"prefix": "/free", "free": true}],
                   "verify": "spv", "cache": {"tip_ttl": "5s"}})
                .to_string()
                .as_bytes(),
            )
            .unwrap(),
        );
        b.create_slots(&store);
        let (first, _) = verify(&a, &store, &[], &proven(1000, Some(100), 1));
        assert!(matches!(first, Verdict::Allow { .. }), "{first:?}");
        assert_eq!(code(&admit_at(&a, &store, NOW_MS + 100)), "allow", "a copies it");
        // b learns that the block left the best chain.
        let txid = Txid::parse(TXID.as_bytes()).unwrap();
        let gone = LookupResult { tx: Ok(TxAnswer::NotFound), tip: None, explorer: 0 };
        assert_eq!(b.remember(&store, &txid, None, &gone, NOW_MS + 200), Stored::Reorged);
        assert_eq!(code(&admit_at(&a, &store, NOW_MS + 1_099)), "allow", "a's copy, at most a second old");
        assert_ne!(code(&admit_at(&a, &store, NOW_MS + 1_100)), "allow", "then a reads the shared record");
    }

    #[test]
    fn spv_counts_only_the_proven_depth_and_notices_a_reorg() {
        let (gate, store) = gate(json!({
            "verify": "spv", "cache": {"tip_ttl": "5s"},
            "routes": [{"prefix": "/deep", "min_confirmations": 3}]
        }));
        let (first, _) = verify(&gate, &store, &[], &proven(1000, Some(100), 1));
        assert!(
            matches!(first, Verdict::Allow { receipt: Receipt { paid_sats: 1000, confirmations: 1 }, .. }),
            "{first:?}"
        );
        // An explorer's tip far above changes nothing: only proven headers count.
        gate.record_tip(&store, 0, 500, NOW_MS);
        let deep = |now_ms: u64| {
            let facts = RequestFacts {
                path: "/deep",
                headers: &[],
                principal: None,
                source_address: None,
                source_trusted: true,
                claims: &[],
                now_ms,
            };
            gate.admit(&store, &facts, &[TXID.as_bytes()]).0
        };
        assert!(matches!(admit(&gate, &store, "/api", &[], &[TXID]).0, Verdict::Allow { from_cache: true, .. }));
        let short = deep(NOW_MS + 1_000);
        assert!(
            matches!(
                &short,
                Verdict::Reject {
                    rejection: Rejection::InsufficientConfirmations { confirmations: 1, required: 3 },
                    ..
                }
            ),
            "{short:?}"
        );
        // After tip_ttl the short payment is verified again...
        let ticket = ticket_of(deep(NOW_MS + 5_000));
        // ...and its block has left the chain: the explorer no longer knows the transaction.
        let gone = LookupResult { tx: Ok(TxAnswer::NotFound), tip: None, explorer: 0 };
        let stored = gate.remember(&store, &ticket.txid, None, &gone, NOW_MS + 5_000);
        assert_eq!(stored, Stored::Reorged);
        assert_eq!(code(&gate.resolve(&store, ticket, &gone, stored, NOW_MS + 5_000).0), "payment_reorged");
        assert_eq!(
            code(&admit(&gate, &store, "/api", &[], &[TXID]).0),
            "tx_not_found",
            "no longer allowed from the cache"
        );
        // Proven three deep: /deep passes.
        let (gate, store) =
            self::gate(json!({"verify": "spv", "routes": [{"prefix": "/deep", "min_confirmations": 3}]}));
        let ticket = ticket_of(admit(&gate, &store, "/deep", &[], &[TXID]).0);
        let result = proven(1000, Some(100), 3);
        let stored = gate.remember(&store, &ticket.txid, None, &result, NOW_MS);
        assert!(matches!(gate.resolve(&store, ticket, &result, stored, NOW_MS).0, Verdict::Allow { .. }));
    }

    #[test]
    fn spv_failures_are_refusals_not_unverified_passes() {
        let (gate, store) = gate(json!({
            "verify": "spv", "failure_mode": "open", "fail_open": {"acknowledged": true}
        }));
        let failed = |error: ExplorerError| LookupResult { tx: Err(error), tip: None, explorer: 0 };
        let code_of = |error: ExplorerError| code(&verify(&gate, &store, &[], &failed(error)).0);
        assert_eq!(code_of(ExplorerError::ProofInvalid("x".into())), "proof_invalid");
        assert_eq!(code_of(ExplorerError::Disagreement("x".into())), "explorer_disagreement");
        assert_eq!(code_of(ExplorerError::QuorumBehind), "insufficient_confirmations");
        assert_eq!(verify(&gate, &store, &[], &failed(ExplorerError::NoResponse)).0, Verdict::AllowUnverified);
        // Outputs are matched by script: 999 sats to us is not enough, whatever else it pays; and
        // the cached negative answer says so again (never an unverified pass).
        assert_eq!(code(&verify(&gate, &store, &[], &proven(999, Some(100), 1)).0), "insufficient_payment");
        assert_eq!(code(&admit(&gate, &store, "/api", &[], &[TXID]).0), "insufficient_payment");
        // A mempool transaction under spv: insufficient confirmations, as in explorer mode.
        let (gate, store) = self::gate(json!({"verify": "spv"}));
        assert_eq!(code(&verify(&gate, &store, &[], &proven(1000, None, 0)).0), "insufficient_confirmations");
    }

    #[test]
    fn spv_sums_each_clients_own_script_from_the_raw_transaction() {
        let (gate, store) = gate(json!({
            "verify": "spv",
            "pay_to": {"xpub": regtest_tpub(), "script": "p2wpkh", "branch": 0},
            "bind_to": "header:x-api-key"
        }));
        let alice = address_of(&gate, "alice");
        let script = crate::address::script_pubkey(&alice.address, crate::address::Network::Regtest).unwrap();
        let block =
            Some(crate::esplora::ProvenBlock { place: BlockPlace { height: 100, time: NOW_MS / 1000 - 60 }, depth: 1 });
        let result =
            LookupResult { tx: Ok(TxAnswer::Proven { block, outputs: vec![(script, 1000)] }), tip: None, explorer: 0 };
        let (thief, _) = verify(&gate, &store, &[("x-api-key", "bob")], &result);
        assert_eq!(code(&thief), "insufficient_payment");
        let (paid, _) = verify(&gate, &store, &[("x-api-key", "alice")], &result);
        assert!(
            matches!(paid, Verdict::Allow { receipt: Receipt { paid_sats: 1000, confirmations: 1 }, .. }),
            "{paid:?}"
        );
        // max_age is judged by the proven header's time.
        let (gate, store) = self::gate(json!({"verify": "spv"}));
        let mut expired = proven(1000, Some(100), 1);
        if let Ok(TxAnswer::Proven { block: Some(block), .. }) = &mut expired.tx {
            block.place.time = NOW_MS / 1000 - 90_000;
        }
        assert_eq!(code(&verify(&gate, &store, &[], &expired).0), "payment_expired");
    }

    mod ledger {
        use super::*;
        use crate::ledger::etcd::{parse_txn, Keys};
        use crate::ledger::model::Etcd;

        fn ledger_gate(extra: serde_json::Value) -> (Gate, MemoryStore) {
            let mut config = json!({"ledger": {"etcd": {"cluster": "etcd", "authority": "etcd"}, "block": 2}});
            for (k, v) in extra.as_object().unwrap() {
                config[k] = v.clone();
            }
            gate(config)
        }

        /// One request on one Envoy, through the explorer and the ledger as the glue would.
        fn serve(gate: &Gate, store: &MemoryStore, etcd: &mut Etcd, replica: &str, client: &str) -> &'static str {
            serve_with_effects(gate, store, etcd, replica, client).0
        }

        fn serve_with_effects(
            gate: &Gate,
            store: &MemoryStore,
            etcd: &mut Etcd,
            replica: &str,
            client: &str,
        ) -> (&'static str, Effects) {
            let (mut verdict, mut effects) = admit(gate, store, "/api", &[("x-api-key", client)], &[TXID]);
            if let Verdict::Lookup(ticket) = verdict {
                let result = found(5000, Some(100));
                let stored = gate.remember(store, &ticket.txid, None, &result, NOW_MS);
                (verdict, effects) = gate.resolve(store, ticket, &result, stored, NOW_MS);
            }
            // Attempt numbers are unique per replica: a claim names the attempt that committed.
            let mut rounds = 0;
            while let Verdict::Ledger(wait) = verdict {
                rounds += 1;
                assert!(rounds < 10, "the ledger never settled");
                let seq = etcd.next_seq();
                let attempt = gate.ledger_attempt(store, wait.slot, &wait.record, Some(&wait), seq, NOW_MS).unwrap();
                let keys = Keys::new("txgate/v1/regtest/", &wait.record, replica);
                let reply = parse_txn(200, &etcd.txn(&attempt.body(&keys, replica))).unwrap();
                gate.ledger
                    .as_ref()
                    .unwrap()
                    .absorb(store, wait.slot, &wait.record, &attempt, &reply)
                    .unwrap()
                    .unwrap();
                (verdict, effects) = gate.ledger_take(store, *wait, NOW_MS);
            }
            (code(&verdict), effects)
        }

        /// The wait of a first paid request on a ledger gate (explorer answered `result`).
        fn first_wait(gate: &Gate, store: &MemoryStore, result: &LookupResult, now_ms: u64) -> Box<LedgerWait> {
            let facts = RequestFacts { now_ms, ..from_source("10.0.0.1:999") };
            let verdict = match gate.admit(store, &facts, &[TXID.as_bytes()]).0 {
                Verdict::Lookup(ticket) => {
                    let stored = gate.remember(store, &ticket.txid, None, result, now_ms);
                    gate.resolve(store, ticket, result, stored, now_ms).0
                }
                cached => cached,
            };
            match verdict {
                Verdict::Ledger(wait) => wait,
                other => panic!("expected to wait for the ledger, got {other:?}"),
            }
        }

        #[test]
        fn a_first_use_starts_at_the_clock_and_its_keys_outlive_the_longest_max_age() {
            let (gate, store) = ledger_gate(json!({"grant": {"requests": 5}, "max_age": "2h"}));
            let now = NOW_MS + 1_500;
            let wait = first_wait(&gate, &store, &found(1000, Some(100)), now);
            // The block is a minute old: the payment buys until 2 h from now at most.
            assert_eq!(wait.expires_secs, now / 1000 + 7200);
            let (unconfirmed, store2) = ledger_gate(json!({"grant": {"requests": 5}, "min_confirmations": 0}));
            let mempool = first_wait(&unconfirmed, &store2, &found(1000, None), now);
            assert_eq!(mempool.expires_secs, now / 1000 + 86_400);
            let Some(Attempt::First { pay, .. }) =
                gate.ledger_attempt(&store, wait.slot, &wait.record, Some(&wait), 1, now)
            else {
                panic!("a first use makes first contact")
            };
            assert_eq!((pay.first_used, pay.limit), (now / 1000, 5));
            // With nothing waiting and no first contact made, there is nothing to ask etcd.
            assert_eq!(gate.ledger_attempt(&store, wait.slot, &wait.record, None, 2, now), None);
        }

        #[test]
        fn chain_facts_are_shared_only_for_explorer_verified_fixed_addresses() {
            let (gate, store) = ledger_gate(json!({"grant": {"requests": 5}}));
            assert!(gate.shares_chain_facts());
            let wait = first_wait(&gate, &store, &found(1000, Some(100)), NOW_MS);
            let facts = gate.chain_facts(&store, wait.slot, &wait.record).expect("a confirmed payment's facts");
            assert_eq!((facts.paid_sats, facts.height, facts.time), (1000, 100, NOW_MS / 1000 - 60));
            let Some(TxAnswer::Found { block, outputs }) = gate.answer_from_facts(&facts) else { panic!() };
            assert_eq!(
                (block.map(|b| (b.height, b.time)), outputs),
                (Some((100, facts.time)), vec![(PAY_TO.to_string(), 1000)])
            );
            let key = gate.chain_facts_key(&Txid::parse(TXID.as_bytes()).unwrap()).unwrap();
            assert_eq!(key, Keys::new("txgate/v1/regtest/", &wait.record, "").fact);
            assert!(key.starts_with("txgate/v1/regtest/") && key.len() > "txgate/v1/regtest/".len(), "{key}");
            // A mempool payment has no chain facts to share yet.
            let (other, store2) = ledger_gate(json!({"grant": {"requests": 5}, "min_confirmations": 0}));
            let pending = first_wait(&other, &store2, &found(1000, None), NOW_MS);
            assert_eq!(other.chain_facts(&store2, pending.slot, &pending.record), None);
            // Not shared: spv (each replica proves), per-client addresses, or no ledger.
            let spv = ledger_gate(json!({"verify": "spv", "grant": {"requests": 5}})).0;
            let xpub = ledger_gate(json!({"pay_to": {"xpub": regtest_tpub(), "script": "p2wpkh", "branch": 0},
                                            "bind_to": "header:x-api-key"}))
            .0;
            let alone = super::gate(json!({})).0;
            for (what, g) in [("spv", &spv), ("xpub", &xpub), ("no ledger", &alone)] {
                assert!(!g.shares_chain_facts(), "{what}");
            }
            assert_eq!(spv.chain_facts(&store, wait.slot, &wait.record), None);
            assert_eq!(alone.chain_facts_key(&Txid::parse(TXID.as_bytes()).unwrap()), None);
        }

        #[test]
        fn a_local_fallback_counts_its_window_in_seconds_of_the_clock() {
            let (gate, store) = ledger_gate(json!({"grant": {"requests": 100, "window": "10s"}, "ledger": {
                "etcd": {"cluster": "etcd", "authority": "etcd"}, "failure_mode": "local"}}));
            let wait = first_wait(&gate, &store, &found(1000, Some(100)), NOW_MS);
            let (slot, record) = (wait.slot, wait.record);
            assert_eq!(code(&gate.ledger_failed(&store, *wait, NOW_MS).0), "allow");
            let again = |now_ms: u64| {
                let wait = first_wait(&gate, &store, &found(1000, Some(100)), now_ms);
                assert_eq!((wait.slot, wait.record), (slot, record));
                code(&gate.ledger_failed(&store, *wait, now_ms).0)
            };
            assert_eq!(again(NOW_MS + 9_999), "allow");
            assert_eq!(again(NOW_MS + 10_000), "payment_exhausted");
        }

        #[test]
        fn a_grant_is_exact_across_two_envoys() {
            let mut etcd = Etcd::default();
            let (a, sa) = ledger_gate(json!({"grant": {"requests": 5}}));
            let (b, sb) = ledger_gate(json!({"grant": {"requests": 5}}));
            let answers: Vec<&str> =
                (0..8)
                    .map(|i| {
                        if i % 2 == 0 {
                            serve(&a, &sa, &mut etcd, "a", "k")
                        } else {
                            serve(&b, &sb, &mut etcd, "b", "k")
                        }
                    })
                    .collect();
            // A holds a block of 2 and B a block of 2; the fifth request is A's third, a block of 1.
            assert_eq!(answers.iter().filter(|c| **c == "allow").count(), 5, "{answers:?}");
            assert!(answers[5..].iter().all(|c| *c == "payment_exhausted"), "{answers:?}");
        }

        #[test]
        fn a_binding_holds_on_every_envoy() {
            let mut etcd = Etcd::default();
            let extra = json!({"grant": {"requests": 10}, "bind_to": "header:x-api-key"});
            let (a, sa) = ledger_gate(extra.clone());
            let (b, sb) = ledger_gate(extra);
            assert_eq!(serve(&a, &sa, &mut etcd, "a", "alice"), "allow");
            assert_eq!(serve(&b, &sb, &mut etcd, "b", "bob"), "payment_bound_to_other_client");
            assert_eq!(serve(&b, &sb, &mut etcd, "b", "alice"), "allow");
            assert_eq!(serve(&a, &sa, &mut etcd, "a", "bob"), "payment_bound_to_other_client");
        }

        #[test]
        fn consume_once_buys_one_request_mesh_wide() {
            let mut etcd = Etcd::default();
            let extra = json!({"ledger": {"etcd": {"cluster": "etcd", "authority": "etcd"}, "consume": "once"}});
            let (a, sa) = ledger_gate(extra.clone());
            let (b, sb) = ledger_gate(extra);
            assert_eq!(serve(&b, &sb, &mut etcd, "b", "k"), "allow");
            assert_eq!(serve(&a, &sa, &mut etcd, "a", "k"), "payment_exhausted");
            assert_eq!(serve(&b, &sb, &mut etcd, "b", "k"), "payment_exhausted");
        }

        #[test]
        fn warm_requests_need_no_ledger_and_signal_the_refill() {
            let mut etcd = Etcd::default();
            let (a, sa) = ledger_gate(
                json!({"grant": {"requests": 100}, "ledger": {"etcd": {"cluster": "e", "authority": "e"}, "block": 8}}),
            );
            // First use takes a block of 8 and leaves 7: no refill yet.
            let (answer, effects) = serve_with_effects(&a, &sa, &mut etcd, "a", "k");
            assert_eq!((answer, effects.ledger_refill), ("allow", None));
            // The next 7 come straight from the held block; the third leaves 4, half a block, and
            // asks for the next block in the background; the rest ask for no second refill while
            // the first is under way (one at a time per Envoy).
            let refills: Vec<bool> = (0..7)
                .map(|_| {
                    let (v, effects) = admit(&a, &sa, "/api", &[], &[TXID]);
                    assert_eq!(code(&v), "allow");
                    effects.ledger_refill.is_some()
                })
                .collect();
            assert_eq!(refills, [false, false, true, false, false, false, false]);
            // The refill never came: the block is empty, so the next request waits for etcd.
            assert_eq!(code(&admit(&a, &sa, "/api", &[], &[TXID]).0), "ledger");
        }

        #[test]
        fn an_unreachable_ledger_is_a_503_or_a_marked_local_count() {
            let (a, sa) = ledger_gate(json!({"grant": {"requests": 2}}));
            let (v, _) = admit(&a, &sa, "/api", &[], &[TXID]);
            let result = found(5000, Some(100));
            let stored = a.remember(&sa, &ticket_of(v.clone()).txid, None, &result, NOW_MS);
            let Verdict::Ledger(wait) = a.resolve(&sa, ticket_of(v), &result, stored, NOW_MS).0 else { panic!() };
            let (v, _) = a.ledger_failed(&sa, (*wait).clone(), NOW_MS);
            assert_eq!(code(&v), "ledger_unavailable");
            let local = json!({"grant": {"requests": 2}, "ledger": {"etcd": {"cluster": "e", "authority": "e"}, "failure_mode": "local"}});
            let (l, sl) = ledger_gate(local);
            let (v, _) = admit(&l, &sl, "/api", &[], &[TXID]);
            let stored = l.remember(&sl, &ticket_of(v.clone()).txid, None, &result, NOW_MS);
            let Verdict::Ledger(wait) = l.resolve(&sl, ticket_of(v), &result, stored, NOW_MS).0 else { panic!() };
            let answers: Vec<(Verdict, Effects)> =
                (0..3).map(|_| l.ledger_failed(&sl, (*wait).clone(), NOW_MS)).collect();
            assert!(matches!(
                answers[0],
                (Verdict::Allow { ledger_fallback: true, .. }, Effects { ledger_fallback: true, .. })
            ));
            assert_eq!(code(&answers[1].0), "allow");
            assert_eq!(code(&answers[2].0), "payment_exhausted", "the local count still ends at the grant");
        }
    }
}
