//! Plugin configuration: the JSON an operator writes, checked once in `on_configure`.
//!
//! Every field is validated here so that a mistake is refused with the field's name and the
//! reason, instead of surfacing later as a wrong answer to a paying client.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::address::{normalise_address, Network};
use crate::discount::{discounted, Condition, Discount};
use crate::duration::parse_duration;
use crate::grant::Grant;
use crate::guard::{GuardConfig, MAX_BAN_TTL};
use crate::identity::IdentitySource;
use crate::ledger::config::LedgerConfig;
use crate::path::{canonicalize, prefix_covers, prefix_covers_ignoring_case};
use crate::penalty::PenaltyConfig;
use crate::spv::{default_floor_bits, parse_floor_bits, Target};
use crate::xpub::{ExtendedPublicKey, ScriptKind};

/// All the bitcoin there will ever be, in sats: a price above it is a typo.
const MAX_SATS: u64 = 2_100_000_000_000_000;
/// Far more than any payment gate needs; the limit keeps a wrong value from meaning "forever".
const MAX_CONFIRMATIONS: u32 = 10_000;
/// Under `verify: spv` every required header is fetched and checked (10 per explorer call).
pub const MAX_SPV_CONFIRMATIONS: u32 = 100;
/// BTCPay's default payment tolerance is 0 %; wallets' fee surprises are a few percent at most.
const MAX_TOLERANCE_PERCENT: u8 = 10;
/// Operator texts shown on the paywall and in the manifest.
const MAX_TEXT_FIELD: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    header: Option<String>,
    network: Option<String>,
    /// A list of addresses, or one extended public key (see `xpub`).
    pay_to: Option<serde_json::Value>,
    price_sats: Option<u64>,
    min_confirmations: Option<u32>,
    max_age: Option<String>,
    explorers: Option<Vec<RawExplorer>>,
    timeout: Option<String>,
    failure_mode: Option<String>,
    routes: Option<Vec<RawRoute>>,
    cache: Option<RawCache>,
    grant: Option<RawGrant>,
    bind_to: Option<String>,
    penalty: Option<RawPenalty>,
    max_inflight: Option<u32>,
    discounts: Option<Vec<RawDiscount>>,
    deadline: Option<String>,
    circuit_breaker: Option<RawBreaker>,
    fail_open: Option<RawFailOpen>,
    max_inflight_per_client: Option<u32>,
    verify: Option<String>,
    quorum: Option<u32>,
    spv_floor_bits: Option<String>,
    /// Read by hand (`validate_guard`): a derived struct costs the wasm about 2 KB.
    guard: Option<serde_json::Value>,
    ledger: Option<serde_json::Value>,
    mode: Option<String>,
    tolerance_percent: Option<u8>,
    paywall: Option<serde_json::Value>,
    manifest: Option<serde_json::Value>,
    txid_cookie: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXpub {
    xpub: Option<String>,
    script: Option<String>,
    branch: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFailOpen {
    acknowledged: Option<bool>,
    per_client: Option<u32>,
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwtClaim {
    metadata_key: Option<String>,
    claim: Option<String>,
    value: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCache {
    max_entries: Option<usize>,
    not_found_ttl: Option<String>,
    unconfirmed_ttl: Option<String>,
    tip_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    requests: Option<u64>,
    window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPenalty {
    identity: Option<String>,
    max_strikes: Option<u32>,
    source_factor: Option<u32>,
    find_time: Option<String>,
    ban_time: Option<String>,
    max_clients: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDiscount {
    name: Option<String>,
    percent: Option<u8>,
    mtls_principal_in: Option<Vec<String>>,
    header: Option<RawHeaderMatch>,
    jwt_claim: Option<RawJwtClaim>,
    no_strikes_for: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeaderMatch {
    name: Option<String>,
    value: Option<String>,
    set_by_trusted_filter: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Option<u32>,
    cool_down: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExplorer {
    cluster: Option<String>,
    authority: Option<String>,
    path_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Option<String>,
    free: Option<bool>,
    price_sats: Option<u64>,
    min_confirmations: Option<u32>,
    max_age: Option<String>,
}

/// What a paid route asks of a payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Policy {
    pub price_sats: u64,
    pub min_confirmations: u32,
    /// `Duration::ZERO` disables the age check.
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Free,
    Paid(Policy),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub prefix: String,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explorer {
    /// Envoy cluster name (in Istio: `outbound|443||blockstream.info`).
    pub cluster: String,
    /// Sent as `:authority`; Envoy refuses a callout without it.
    pub authority: String,
    /// Prepended to the Esplora paths, e.g. "/api"; never ends with '/'.
    pub path_prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureMode {
    /// No explorer answer means no access (503).
    Closed,
    /// No explorer answer lets the request through, marked as unverified, up to `per_client`
    /// times per `window` for each client.
    Open { per_client: u32, window: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Lowercase, as Envoy stores header names.
    pub header: String,
    pub network: Network,
    /// Normalised as explorers print them; empty when `pay_to_xpub` is set.
    pub pay_to: Vec<String>,
    /// An address of its own for every client, derived from an extended public key.
    pub pay_to_xpub: Option<XpubPayTo>,
    pub default_policy: Policy,
    pub explorers: Vec<Explorer>,
    pub timeout: Duration,
    pub failure_mode: FailureMode,
    pub routes: Vec<Route>,
    pub cache: CacheConfig,
    pub grant: Grant,
    pub bind_to: Option<IdentitySource>,
    pub penalty: Option<PenaltyConfig>,
    /// Explorer lookups in flight per worker before new ones are turned away.
    pub max_inflight: usize,
    pub discounts: Vec<Discount>,
    /// Overall time for one verification across every explorer tried.
    pub deadline: Duration,
    pub breaker: BreakerConfig,
    /// Explorer lookups in flight per client on one worker.
    pub max_inflight_per_client: usize,
    /// How a payment is established: on the explorers' word, or by proof of work.
    pub verify: Verify,
    /// Bans of source addresses posted to the node guard (`txgate-guard`).
    pub guard: Option<GuardConfig>,
    /// Grants and bindings kept mesh-wide on etcd (see `ledger`); `None`: per Envoy.
    pub ledger: Option<LedgerConfig>,
    /// `mode: shadow`: every request is decided and counted, and let through marked.
    pub shadow: bool,
    /// An underpayment by at most this share of the price is accepted (fee surprises).
    pub tolerance_percent: u8,
    /// The browser page for 402s; `None` when `paywall.enabled` is false.
    pub paywall: Option<PaywallConfig>,
    /// `GET /.well-known/txgate`; `None` when `manifest.enabled` is false.
    pub manifest: Option<ManifestConfig>,
    /// The txid may come in the `txgate_txid` cookie (the paywall sets it).
    pub txid_cookie: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaywallConfig {
    pub title: String,
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestConfig {
    pub name: String,
    pub description: String,
    pub contact: String,
}

/// `verify`: what an explorer's answer must carry before a payment counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// The explorer's JSON is believed (amounts, addresses, height, time, tip).
    Explorer,
    /// The raw transaction, its merkle proof and the headers above it are checked by proof of
    /// work, and `quorum` explorers must agree on the block hash at the top height used.
    Spv(SpvConfig),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpvConfig {
    /// Explorers (the answering one included) that must report the same block hash.
    pub quorum: usize,
    /// Every header's target must be at least this hard.
    pub floor: Target,
    /// The floor as configured (8 hex digits of nBits), for logs.
    pub floor_bits: u32,
}

impl Config {
    pub fn spv(&self) -> Option<&SpvConfig> {
        match &self.verify {
            Verify::Spv(spv) => Some(spv),
            Verify::Explorer => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Slots of the shared payment table (fixed memory, see `cache`).
    pub max_entries: usize,
    pub not_found_ttl: Duration,
    pub unconfirmed_ttl: Duration,
    pub tip_ttl: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open an explorer's circuit.
    pub failures: u32,
    /// How long an open circuit skips the explorer before trying it again.
    pub cool_down: Duration,
}

/// `pay_to` as an extended public key: each `bind_to` identity pays to
/// `<key>/<branch>/<hi>/<lo>` (see `xpub`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XpubPayTo {
    pub text: String,
    pub key: ExtendedPublicKey,
    pub script: ScriptKind,
    pub branch: u32,
}

/// A refusal that names the field, e.g. "pay_to[1]: not a valid address".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn refuse<T>(field: impl Into<String>, reason: impl fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError { field: field.into(), reason: reason.to_string() })
}

fn required<T>(value: Option<T>, field: &str) -> Result<T, ConfigError> {
    match value {
        Some(v) => Ok(v),
        None => refuse(field, "is required"),
    }
}

impl Config {
    /// The smallest valid configuration, for other modules' unit tests.
    #[cfg(test)]
    pub(crate) fn regtest_example() -> Config {
        let text = r#"{"network": "regtest", "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"],
                       "price_sats": 1000, "explorers": [{"cluster": "e", "authority": "e"}]}"#;
        Config::from_json(text.as_bytes()).expect("the example configuration is valid")
    }

    pub fn from_json(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return refuse("configuration", "is empty; pay_to, price_sats, network and explorers are required");
        }
        let raw: RawConfig = match serde_json::from_slice(bytes) {
            Ok(raw) => raw,
            Err(err) => return refuse("configuration", format!("is not valid txgate JSON: {err}")),
        };
        Config::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
        let header = validate_header(raw.header)?;
        let network_name = required(raw.network, "network")?;
        let Some(network) = Network::parse(&network_name) else {
            return refuse(
                "network",
                format!("\"{network_name}\" is not one of mainnet, testnet, testnet4, signet, regtest"),
            );
        };
        let (pay_to, pay_to_xpub) = match required(raw.pay_to, "pay_to")? {
            serde_json::Value::Object(object) => {
                let raw_xpub: RawXpub = match serde_json::from_value(serde_json::Value::Object(object)) {
                    Ok(raw) => raw,
                    Err(err) => {
                        return refuse("pay_to", format!("is not a list of addresses or an xpub object: {err}"))
                    }
                };
                (Vec::new(), Some(validate_xpub(raw_xpub, network)?))
            }
            list => match serde_json::from_value::<Vec<String>>(list) {
                Ok(addresses) => (validate_pay_to(addresses, network)?, None),
                Err(err) => return refuse("pay_to", format!("is not a list of addresses or an xpub object: {err}")),
            },
        };
        let default_policy = Policy {
            price_sats: validate_price(required(raw.price_sats, "price_sats")?, "price_sats")?,
            min_confirmations: validate_confirmations(raw.min_confirmations.unwrap_or(1), "min_confirmations")?,
            max_age: validate_duration(raw.max_age.as_deref().unwrap_or("24h"), "max_age")?,
        };
        let explorers = validate_explorers(required(raw.explorers, "explorers")?)?;
        let timeout = validate_duration(raw.timeout.as_deref().unwrap_or("2s"), "timeout")?;
        if timeout.is_zero() {
            // Envoy treats 0 as "no timeout": a hung explorer would hold requests forever.
            return refuse("timeout", "must be greater than 0");
        }
        if timeout > Duration::from_secs(60) {
            return refuse("timeout", "must be at most 60s: clients are waiting");
        }
        let failure_mode = validate_failure_mode(raw.failure_mode.as_deref(), raw.fail_open)?;
        let routes = validate_routes(raw.routes.unwrap_or_default(), &default_policy)?;
        let cache = validate_cache(raw.cache)?;
        let grant_given = raw.grant.is_some();
        let mut grant = validate_grant(raw.grant)?;
        let ledger = raw.ledger.map(crate::ledger::config::validate).transpose()?;
        if ledger.as_ref().is_some_and(|l| l.consume_once) {
            if grant_given {
                return refuse(
                    "ledger.consume",
                    "\"once\" buys one request per payment: remove grant, or use consume \"grant\"",
                );
            }
            grant = Grant { requests: Some(1), window: None };
        }
        let bind_to = raw.bind_to.map(|text| validate_identity(&text, "bind_to")).transpose()?;
        let penalty = raw.penalty.map(validate_penalty).transpose()?;
        let max_inflight = match raw.max_inflight.unwrap_or(64) {
            0 => return refuse("max_inflight", "must be at least 1"),
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let discounts = validate_discounts(raw.discounts.unwrap_or_default(), penalty.is_some())?;
        let deadline = validate_duration(raw.deadline.as_deref().unwrap_or("5s"), "deadline")?;
        if deadline < timeout {
            return refuse("deadline", "must be at least the per-call timeout");
        }
        let breaker = validate_breaker(raw.circuit_breaker)?;
        let max_inflight_per_client = match raw.max_inflight_per_client.unwrap_or(4) {
            0 => return refuse("max_inflight_per_client", "must be at least 1"),
            n => usize::try_from(n).unwrap_or(usize::MAX).min(max_inflight),
        };
        let verify = validate_verify(
            network,
            raw.verify.as_deref(),
            raw.quorum,
            raw.spv_floor_bits.as_deref(),
            explorers.len(),
        )?;
        if matches!(verify, Verify::Spv(_)) {
            validate_spv_routes(&default_policy, &routes)?;
        }
        let guard = raw.guard.map(|g| validate_guard(g, penalty.as_ref())).transpose()?;
        let shadow = match raw.mode.as_deref() {
            None | Some("enforce") => false,
            Some("shadow") => true,
            Some(other) => return refuse("mode", format!("\"{other}\" is not one of enforce, shadow")),
        };
        let tolerance_percent = raw.tolerance_percent.unwrap_or(0);
        if tolerance_percent > MAX_TOLERANCE_PERCENT {
            return refuse(
                "tolerance_percent",
                format!("must be at most {MAX_TOLERANCE_PERCENT}: it forgives fee surprises, not prices"),
            );
        }
        let paywall = validate_paywall(raw.paywall)?;
        let manifest = validate_manifest(raw.manifest)?;
        let config = Config {
            header,
            network,
            pay_to,
            pay_to_xpub,
            default_policy,
            explorers,
            timeout,
            failure_mode,
            routes,
            cache,
            grant,
            bind_to,
            penalty,
            max_inflight,
            discounts,
            deadline,
            breaker,
            max_inflight_per_client,
            verify,
            guard,
            ledger,
            shadow,
            tolerance_percent,
            paywall,
            manifest,
            txid_cookie: raw.txid_cookie.unwrap_or(true),
        };
        if config.pay_to_xpub.is_some() && config.bind_to.is_none() {
            return refuse(
                "bind_to",
                "pay_to with an xpub needs bind_to: the identity each client gets its own address for (a secret API-key header, mtls_principal, or a jwt claim)",
            );
        }
        if let Some(ledger) = &config.ledger {
            if config.grant.is_unlimited() && config.bind_to.is_none() {
                return refuse(
                    "ledger",
                    "has nothing to keep: set grant, bind_to or ledger.consume \"once\" (payments that buy unlimited requests need no ledger)",
                );
            }
            if config.longest_max_age().is_none() {
                return refuse(
                    "max_age",
                    "must be more than 0s on every paid route with the ledger: its keys live on leases tied to max_age, and a payment whose keys expired could be spent again",
                );
            }
            if ledger.failure_mode == crate::ledger::config::LedgerFailureMode::Local && ledger.consume_once {
                return refuse("ledger.failure_mode", "\"local\" would let one payment buy a request on every Envoy: use \"closed\" with consume \"once\"");
            }
        }
        if (!config.grant.is_unlimited() || config.bind_to.is_some()) && config.longest_max_age().is_none() {
            // A counted or bound payment can only leave the fixed-size cache once no route can
            // accept it; with no max_age it never could, and the cache would fill for good.
            return refuse("max_age", "grant and bind_to need a max_age on every route (0s keeps payments forever)");
        }
        Ok(config)
    }

    /// The access rule for a canonical path in matching form (see `path`).
    ///
    /// Case rule: prefixes match case-sensitively, first match wins. A backend may serve paths
    /// case-insensitively, so when the path matched ignoring ASCII case would fall under another
    /// route, the stricter of the two applies: a path is free only if both say free, and two
    /// prices combine into the highest price, the most confirmations and the shortest max_age.
    pub fn access_for(&self, path: &str) -> AccessRef {
        let exact = self.routes.iter().find(|r| prefix_covers(&r.prefix, path));
        let folded = self.routes.iter().find(|r| prefix_covers_ignoring_case(&r.prefix, path));
        let rule = |route: Option<&Route>| match route.map(|r| &r.access) {
            Some(Access::Free) => AccessRef::Free,
            Some(Access::Paid(policy)) => AccessRef::Paid(*policy),
            None => AccessRef::Paid(self.default_policy),
        };
        let same = match (exact, folded) {
            (Some(a), Some(b)) => std::ptr::eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return rule(exact);
        }
        match (rule(exact), rule(folded)) {
            (AccessRef::Free, other) | (other, AccessRef::Free) => other,
            (AccessRef::Paid(a), AccessRef::Paid(b)) => AccessRef::Paid(a.stricter(&b)),
        }
    }

    /// The lowest price any request can be asked (after the largest discount): a transaction
    /// paying less than this can never buy anything, so it is a negative answer for the cache.
    pub fn lowest_price(&self) -> u64 {
        let best_discount = self.discounts.iter().map(|d| d.percent).max();
        let prices = self.routes.iter().filter_map(|r| match &r.access {
            Access::Paid(p) => Some(p.price_sats),
            Access::Free => None,
        });
        let lowest = prices.chain([self.default_policy.price_sats]).min().unwrap_or(1);
        self.accepted_sats(best_discount.map_or(lowest, |percent| discounted(lowest, percent)))
    }

    /// The least a payment may pay for `price_sats` under `tolerance_percent` (rounded in the
    /// payer's favour by at most one sat, never below 1 for a non-zero price).
    pub fn accepted_sats(&self, price_sats: u64) -> u64 {
        let forgiven = price_sats.saturating_mul(u64::from(self.tolerance_percent)) / 100;
        price_sats.saturating_sub(forgiven).max(price_sats.min(1))
    }

    /// The longest `max_age` of any route; `None` when some route never expires payments.
    pub fn longest_max_age(&self) -> Option<Duration> {
        let ages = self.routes.iter().filter_map(|r| match &r.access {
            Access::Paid(p) => Some(p.max_age),
            Access::Free => None,
        });
        let mut longest = self.default_policy.max_age;
        for age in ages {
            if age.is_zero() || longest.is_zero() {
                return None;
            }
            longest = longest.max(age);
        }
        (!longest.is_zero()).then_some(longest)
    }
}

impl Policy {
    /// What a request must meet when two rules might apply to it.
    pub fn stricter(&self, other: &Policy) -> Policy {
        let max_age = match (self.max_age.is_zero(), other.max_age.is_zero()) {
            (true, _) => other.max_age,
            (_, true) => self.max_age,
            _ => self.max_age.min(other.max_age),
        };
        Policy {
            price_sats: self.price_sats.max(other.price_sats),
            min_confirmations: self.min_confirmations.max(other.min_confirmations),
            max_age,
        }
    }
}

/// The access rule that applies to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessRef {
    Free,
    Paid(Policy),
}

fn validate_cache(raw: Option<RawCache>) -> Result<CacheConfig, ConfigError> {
    let raw = raw.unwrap_or(RawCache { max_entries: None, not_found_ttl: None, unconfirmed_ttl: None, tip_ttl: None });
    let max_entries = raw.max_entries.unwrap_or(4096);
    if !(1..=1_000_000).contains(&max_entries) {
        return refuse("cache.max_entries", format!("{max_entries} is not between 1 and 1000000"));
    }
    Ok(CacheConfig {
        max_entries,
        not_found_ttl: validate_duration(raw.not_found_ttl.as_deref().unwrap_or("10s"), "cache.not_found_ttl")?,
        unconfirmed_ttl: validate_duration(raw.unconfirmed_ttl.as_deref().unwrap_or("30s"), "cache.unconfirmed_ttl")?,
        tip_ttl: validate_duration(raw.tip_ttl.as_deref().unwrap_or("5s"), "cache.tip_ttl")?,
    })
}

fn validate_grant(raw: Option<RawGrant>) -> Result<Grant, ConfigError> {
    let Some(raw) = raw else { return Ok(Grant::default()) };
    if raw.requests == Some(0) {
        return refuse("grant.requests", "must be at least 1");
    }
    let window = raw.window.map(|w| validate_duration(&w, "grant.window")).transpose()?;
    if window.is_some_and(|w| w.as_secs() == 0) {
        return refuse("grant.window", "must be at least 1s");
    }
    if raw.requests.is_none() && window.is_none() {
        return refuse("grant", "needs requests, window or both");
    }
    Ok(Grant { requests: raw.requests, window })
}

fn validate_identity(text: &str, field: &str) -> Result<IdentitySource, ConfigError> {
    match IdentitySource::parse(text) {
        Some(source) => Ok(source),
        None => refuse(field, format!("\"{text}\" is not one of header:<name>, mtls_principal, source_address")),
    }
}

fn validate_penalty(raw: RawPenalty) -> Result<PenaltyConfig, ConfigError> {
    let identity = validate_identity(raw.identity.as_deref().unwrap_or("source_address"), "penalty.identity")?;
    let max_strikes = raw.max_strikes.unwrap_or(5);
    if max_strikes == 0 {
        return refuse("penalty.max_strikes", "must be at least 1");
    }
    let slots = raw.max_clients.unwrap_or(4096);
    if !(1..=1_000_000).contains(&slots) {
        return refuse("penalty.max_clients", format!("{slots} is not between 1 and 1000000"));
    }
    let find_time = validate_duration(raw.find_time.as_deref().unwrap_or("1m"), "penalty.find_time")?;
    let ban_time = validate_duration(raw.ban_time.as_deref().unwrap_or("10m"), "penalty.ban_time")?;
    if find_time.as_secs() == 0 || ban_time.as_secs() == 0 {
        return refuse("penalty", "find_time and ban_time must be at least 1s");
    }
    let source_factor = raw.source_factor.unwrap_or(4);
    Ok(PenaltyConfig { identity, max_strikes, source_factor, find_time, ban_time, slots, prefix: String::new() })
}

/// The node guard bans addresses: only a penalty box that judges clients by theirs may feed it.
/// Reads an optional object of text fields and an `enabled` flag; `None` when disabled.
fn text_fields(
    raw: Option<serde_json::Value>,
    field: &str,
    names: &[&str],
) -> Result<Option<Vec<String>>, ConfigError> {
    let raw = raw.unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    let Some(fields) = raw.as_object() else { return refuse(field, "must be an object") };
    if let Some(unknown) = fields.keys().find(|k| *k != "enabled" && !names.contains(&k.as_str())) {
        return refuse(field, format!("unknown field `{unknown}`, expected `enabled` or one of {}", names.join(", ")));
    }
    match fields.get("enabled") {
        None | Some(serde_json::Value::Bool(true)) => {}
        Some(serde_json::Value::Bool(false)) => return Ok(None),
        Some(_) => return refuse(format!("{field}.enabled"), "must be true or false"),
    }
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let text = match fields.get(*name) {
            None => String::new(),
            Some(serde_json::Value::String(text)) if text.len() <= MAX_TEXT_FIELD => text.clone(),
            Some(_) => {
                return refuse(format!("{field}.{name}"), format!("must be text of at most {MAX_TEXT_FIELD} bytes"))
            }
        };
        out.push(text);
    }
    Ok(Some(out))
}

fn validate_paywall(raw: Option<serde_json::Value>) -> Result<Option<PaywallConfig>, ConfigError> {
    let Some(texts) = text_fields(raw, "paywall", &["title", "description"])? else { return Ok(None) };
    let mut texts = texts.into_iter();
    let title = texts.next().filter(|t| !t.is_empty()).unwrap_or_else(|| "this API".to_string());
    Ok(Some(PaywallConfig { title, description: texts.next().unwrap_or_default() }))
}

fn validate_manifest(raw: Option<serde_json::Value>) -> Result<Option<ManifestConfig>, ConfigError> {
    let Some(texts) = text_fields(raw, "manifest", &["name", "description", "contact"])? else { return Ok(None) };
    let mut texts = texts.into_iter();
    let mut next = || texts.next().unwrap_or_default();
    Ok(Some(ManifestConfig { name: next(), description: next(), contact: next() }))
}

fn validate_guard(raw: serde_json::Value, penalty: Option<&PenaltyConfig>) -> Result<GuardConfig, ConfigError> {
    let Some(penalty) = penalty.filter(|p| p.identity == IdentitySource::SourceAddress) else {
        return refuse("guard", "needs penalty with identity source_address: the guard bans source addresses");
    };
    let Some(fields) = raw.as_object() else { return refuse("guard", "must be an object") };
    if let Some(unknown) = fields.keys().find(|k| *k != "cluster" && *k != "ban_ttl") {
        return refuse("guard", format!("unknown field `{unknown}`, expected `cluster` or `ban_ttl`"));
    }
    let text = |name: &str| match fields.get(name) {
        None => Ok(None),
        Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or(()),
    };
    let Ok(Some(cluster)) = text("cluster") else {
        return refuse("guard.cluster", "must name the Envoy cluster of the guard's Unix socket");
    };
    if cluster.trim().is_empty() {
        return refuse("guard.cluster", "must name the Envoy cluster of the guard's Unix socket");
    }
    let Ok(ban_ttl) = text("ban_ttl") else { return refuse("guard.ban_ttl", "must be a duration such as \"10m\"") };
    let ban_ttl = match ban_ttl {
        Some(text) => validate_duration(&text, "guard.ban_ttl")?,
        None => penalty.ban_time.min(MAX_BAN_TTL),
    };
    if ban_ttl.as_secs() == 0 || ban_ttl > MAX_BAN_TTL {
        return refuse("guard.ban_ttl", "must be between 1s and 168h");
    }
    Ok(GuardConfig { cluster, ban_ttl })
}

fn validate_discounts(raw: Vec<RawDiscount>, penalty_on: bool) -> Result<Vec<Discount>, ConfigError> {
    let mut out: Vec<Discount> = Vec::with_capacity(raw.len());
    for (i, d) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("discounts[{i}].{name}");
        let name = required(d.name, &field("name"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return refuse(field("name"), "must be letters, digits, '-' or '_' (it is sent in x-txgate-discount)");
        }
        if out.iter().any(|o| o.name == name) {
            return refuse(field("name"), format!("\"{name}\" is used twice"));
        }
        let percent = required(d.percent, &field("percent"))?;
        if !(1..=99).contains(&percent) {
            return refuse(field("percent"), "must be between 1 and 99 (use a free route for 100)");
        }
        let mut conditions = Vec::new();
        if let Some(list) = d.mtls_principal_in {
            if list.is_empty() {
                return refuse(field("mtls_principal_in"), "must list at least one principal");
            }
            conditions.push(Condition::MtlsPrincipalIn(list));
        }
        if let Some(h) = d.header {
            let name = required(h.name, &field("header.name"))?.to_ascii_lowercase();
            if h.set_by_trusted_filter != Some(true) {
                return refuse(
                    field("header.set_by_trusted_filter"),
                    "a client can send any header it likes; set it to true only when a filter in front of txgate sets or removes this header (see the README), or use mtls_principal_in or jwt_claim",
                );
            }
            conditions.push(Condition::Header { name, value: h.value });
        }
        if let Some(j) = d.jwt_claim {
            let metadata_key = required(j.metadata_key, &field("jwt_claim.metadata_key"))?;
            let claim = required(j.claim, &field("jwt_claim.claim"))?;
            if metadata_key.is_empty() || claim.is_empty() {
                return refuse(field("jwt_claim"), "metadata_key and claim must not be empty");
            }
            conditions.push(Condition::JwtClaim { metadata_key, claim, value: j.value });
        }
        if let Some(period) = d.no_strikes_for {
            if !penalty_on {
                return refuse(field("no_strikes_for"), "needs the penalty box (penalty) to know about strikes");
            }
            conditions.push(Condition::NoStrikesFor(validate_duration(&period, &field("no_strikes_for"))?));
        }
        let condition = match conditions.len() {
            1 => conditions.pop(),
            _ => None,
        };
        let Some(condition) = condition else {
            return refuse(field("name"), "needs exactly one of mtls_principal_in, header, jwt_claim, no_strikes_for");
        };
        out.push(Discount { name, percent, condition });
    }
    Ok(out)
}

fn validate_failure_mode(mode: Option<&str>, raw: Option<RawFailOpen>) -> Result<FailureMode, ConfigError> {
    match mode.unwrap_or("closed") {
        "closed" => match raw {
            Some(_) => refuse("fail_open", "only applies with failure_mode \"open\""),
            None => Ok(FailureMode::Closed),
        },
        "open" => {
            let raw = raw.unwrap_or(RawFailOpen { acknowledged: None, per_client: None, window: None });
            if raw.acknowledged != Some(true) {
                return refuse(
                    "fail_open.acknowledged",
                    "failure_mode \"open\" lets unpaid requests through whenever no explorer answers, which a client can bring about (e.g. by getting the gateway rate-limited); set it to true to accept that",
                );
            }
            let per_client = raw.per_client.unwrap_or(10);
            if per_client == 0 {
                return refuse("fail_open.per_client", "must be at least 1 (use failure_mode \"closed\" for none)");
            }
            let window = validate_duration(raw.window.as_deref().unwrap_or("1m"), "fail_open.window")?;
            if window.as_secs() == 0 {
                return refuse("fail_open.window", "must be at least 1s");
            }
            Ok(FailureMode::Open { per_client, window })
        }
        other => refuse("failure_mode", format!("\"{other}\" is not one of closed, open")),
    }
}

/// `verify`, `quorum` and `spv_floor_bits`. `spv` is the default on mainnet, where proof of work
/// costs an attacker real money; elsewhere headers are cheap to forge and `explorer` is the default.
fn validate_verify(
    network: Network,
    verify: Option<&str>,
    quorum: Option<u32>,
    floor: Option<&str>,
    explorers: usize,
) -> Result<Verify, ConfigError> {
    let spv = match verify {
        None => network == Network::Mainnet,
        Some("spv") => true,
        Some("explorer") => false,
        Some(other) => return refuse("verify", format!("\"{other}\" is not one of spv, explorer")),
    };
    if !spv {
        if quorum.is_some() {
            return refuse("quorum", "only applies with verify \"spv\"");
        }
        if floor.is_some() {
            return refuse("spv_floor_bits", "only applies with verify \"spv\"");
        }
        return Ok(Verify::Explorer);
    }
    let quorum = match quorum {
        None => explorers.min(2),
        Some(0) => return refuse("quorum", "must be at least 1 (the explorer that answers)"),
        Some(n) => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > explorers {
                return refuse("quorum", format!("{n} is more than the {explorers} configured explorer(s)"));
            }
            n
        }
    };
    let limit_bits = default_floor_bits(network);
    let limit = Target::from_compact(limit_bits).map_err(|e| ConfigError {
        field: "network".to_string(),
        reason: format!("has no usable difficulty floor: {e}"),
    })?;
    let (floor, floor_bits) = match floor {
        None => (limit, limit_bits),
        Some(text) => {
            let Some(target) = parse_floor_bits(text) else {
                return refuse("spv_floor_bits", format!("\"{text}\" is not 8 hex digits of a usable nBits target"));
            };
            // Never easier than the network's proof-of-work limit: easier headers are not valid
            // anywhere, and would let cheap forgeries through.
            let pow_limit = pow_limit_bits(network);
            if !Target::from_compact(pow_limit).is_ok_and(|l| target.within(&l)) {
                return refuse(
                    "spv_floor_bits",
                    format!("\"{text}\" is easier than {}'s proof-of-work limit {pow_limit:08x}", network.name()),
                );
            }
            (target, u32::from_str_radix(text, 16).unwrap_or(limit_bits))
        }
    };
    Ok(Verify::Spv(SpvConfig { quorum, floor, floor_bits }))
}

/// The easiest nBits a network's headers may have (its proof-of-work limit).
fn pow_limit_bits(network: Network) -> u32 {
    match network {
        Network::Mainnet => crate::spv::target::TESTNET_FLOOR_BITS,
        other => default_floor_bits(other),
    }
}

/// Under `spv`, every route needs at least one confirmation (a mempool payment has no block to
/// prove) and at most `MAX_SPV_CONFIRMATIONS` (each header is fetched).
fn validate_spv_routes(default: &Policy, routes: &[Route]) -> Result<(), ConfigError> {
    let policies = std::iter::once(("min_confirmations".to_string(), default)).chain(
        routes.iter().enumerate().filter_map(|(i, r)| match &r.access {
            Access::Paid(p) => Some((format!("routes[{i}].min_confirmations"), p)),
            Access::Free => None,
        }),
    );
    for (field, policy) in policies {
        if policy.min_confirmations == 0 {
            return refuse(
                field,
                "0 (mempool payments) cannot be proven with verify \"spv\": there is no block yet; set verify \"explorer\" to take mempool payments on the explorers' word",
            );
        }
        if policy.min_confirmations > MAX_SPV_CONFIRMATIONS {
            return refuse(
                field,
                format!("at most {MAX_SPV_CONFIRMATIONS} with verify \"spv\" (every header is fetched and checked)"),
            );
        }
    }
    Ok(())
}

fn validate_breaker(raw: Option<RawBreaker>) -> Result<BreakerConfig, ConfigError> {
    let raw = raw.unwrap_or(RawBreaker { failures: None, cool_down: None });
    let failures = raw.failures.unwrap_or(3);
    if failures == 0 {
        return refuse("circuit_breaker.failures", "must be at least 1");
    }
    let cool_down = validate_duration(raw.cool_down.as_deref().unwrap_or("30s"), "circuit_breaker.cool_down")?;
    Ok(BreakerConfig { failures, cool_down })
}

fn validate_header(header: Option<String>) -> Result<String, ConfigError> {
    let header = header.unwrap_or_else(|| "x-bitcoin-txid".to_string()).to_ascii_lowercase();
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if header.is_empty() || !header.chars().all(is_token_char) {
        return refuse("header", format!("\"{header}\" is not a valid HTTP header name"));
    }
    if header.starts_with("x-txgate-") {
        return refuse("header", "must not start with x-txgate-: those headers are removed from every request");
    }
    Ok(header)
}

fn validate_xpub(raw: RawXpub, network: Network) -> Result<XpubPayTo, ConfigError> {
    let text = required(raw.xpub, "pay_to.xpub")?;
    let script_name = required(raw.script, "pay_to.script")?;
    let Some(script) = ScriptKind::parse(&script_name) else {
        return refuse("pay_to.script", format!("\"{script_name}\" is not one of p2wpkh, p2tr"));
    };
    let branch = raw.branch.unwrap_or(0);
    if branch >= 0x8000_0000 {
        return refuse("pay_to.branch", "must be below 2147483648 (a non-hardened index)");
    }
    match ExtendedPublicKey::parse(&text, network, script) {
        Ok(key) => Ok(XpubPayTo { text, key, script, branch }),
        Err(err) => refuse("pay_to.xpub", format!("on {}: {err}", network.name())),
    }
}

fn validate_pay_to(addresses: Vec<String>, network: Network) -> Result<Vec<String>, ConfigError> {
    if addresses.is_empty() {
        return refuse("pay_to", "must list at least one address");
    }
    let mut normalised: Vec<String> = Vec::with_capacity(addresses.len());
    for (i, address) in addresses.iter().enumerate() {
        let field = format!("pay_to[{i}]");
        match normalise_address(address, network) {
            Ok(a) if normalised.contains(&a) => return refuse(field, format!("\"{address}\" is listed twice")),
            Ok(a) => normalised.push(a),
            Err(err) => return refuse(field, format!("\"{address}\" on {}: {err}", network.name())),
        }
    }
    Ok(normalised)
}

fn validate_price(price: u64, field: &str) -> Result<u64, ConfigError> {
    if price == 0 {
        return refuse(field, "must be at least 1 sat (use a free route for no payment)");
    }
    if price > MAX_SATS {
        return refuse(field, format!("{price} is more than 21 million bitcoin"));
    }
    Ok(price)
}

fn validate_confirmations(value: u32, field: &str) -> Result<u32, ConfigError> {
    if value > MAX_CONFIRMATIONS {
        return refuse(field, format!("{value} is more than {MAX_CONFIRMATIONS}"));
    }
    Ok(value)
}

fn validate_duration(text: &str, field: &str) -> Result<Duration, ConfigError> {
    match parse_duration(text) {
        Ok(d) => Ok(d),
        Err(err) => refuse(field, format!("\"{text}\": {err}")),
    }
}

fn validate_explorers(raw: Vec<RawExplorer>) -> Result<Vec<Explorer>, ConfigError> {
    if raw.is_empty() {
        return refuse("explorers", "must list at least one explorer");
    }
    let mut explorers = Vec::with_capacity(raw.len());
    for (i, e) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("explorers[{i}].{name}");
        let cluster = required(e.cluster, &field("cluster"))?;
        if cluster.trim().is_empty() || cluster.trim() != cluster {
            return refuse(field("cluster"), "must be an Envoy cluster name without spaces around it");
        }
        let authority = required(e.authority, &field("authority"))?;
        if authority.is_empty() || authority.contains(['/', ' ', '\t']) {
            return refuse(field("authority"), format!("\"{authority}\" must be a host name (and port), not a URL"));
        }
        let path_prefix = e.path_prefix.unwrap_or_default();
        if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
            return refuse(field("path_prefix"), format!("\"{path_prefix}\" must be empty or start with '/'"));
        }
        if path_prefix.contains(['?', '#', ' ']) {
            return refuse(field("path_prefix"), format!("\"{path_prefix}\" must be a plain path"));
        }
        let path_prefix = path_prefix.trim_end_matches('/').to_string();
        explorers.push(Explorer { cluster, authority, path_prefix });
    }
    Ok(explorers)
}

fn validate_routes(raw: Vec<RawRoute>, default: &Policy) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("routes[{i}].{name}");
        let prefix = required(r.prefix, &field("prefix"))?;
        if !prefix.starts_with('/') {
            return refuse(field("prefix"), format!("\"{prefix}\" must start with '/'"));
        }
        if prefix.contains(['?', '#', '%', '\\', ';'])
            || canonicalize(prefix.as_bytes()).ok().as_deref() != Some(prefix.as_str())
        {
            return refuse(field("prefix"), format!("\"{prefix}\" must be a canonical path (no dot segments, repeated slashes, escapes, '?', '#' or ';')"));
        }
        if let Some(earlier) = routes.iter().position(|e| prefix_covers(&e.prefix, &prefix)) {
            return refuse(
                field("prefix"),
                format!(
                    "\"{prefix}\" can never match: routes[{earlier}] (\"{}\") comes first",
                    routes.get(earlier).map_or("", |e| e.prefix.as_str())
                ),
            );
        }
        let access = if r.free.unwrap_or(false) {
            if r.price_sats.is_some() || r.min_confirmations.is_some() || r.max_age.is_some() {
                return refuse(field("free"), "a free route cannot also set price_sats, min_confirmations or max_age");
            }
            Access::Free
        } else {
            Access::Paid(Policy {
                price_sats: match r.price_sats {
                    Some(p) => validate_price(p, &field("price_sats"))?,
                    None => default.price_sats,
                },
                min_confirmations: match r.min_confirmations {
                    Some(c) => validate_confirmations(c, &field("min_confirmations"))?,
                    None => default.min_confirmations,
                },
                max_age: match r.max_age {
                    Some(text) => validate_duration(&text, &field("max_age"))?,
                    None => default.max_age,
                },
            })
        };
        routes.push(Route { prefix, access });
    }
    Ok(routes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub const PAY_TO: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

    fn minimal() -> Value {
        json!({
            "network": "regtest",
            "pay_to": [PAY_TO],
            "price_sats": 1000,
            "explorers": [{"cluster": "explorer", "authority": "explorer.local", "path_prefix": "/api"}]
        })
    }

    fn parse(v: &Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes())
    }

    fn refusal(v: &Value) -> ConfigError {
        parse(v).expect_err("config should be refused")
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = minimal();
        v[field] = value;
        v
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(&minimal()).unwrap();
        assert_eq!(c.header, "x-bitcoin-txid");
        assert_eq!(c.network, Network::Regtest);
        assert_eq!(
            c.default_policy,
            Policy { price_sats: 1000, min_confirmations: 1, max_age: Duration::from_secs(86_400) }
        );
        assert_eq!(c.timeout, Duration::from_secs(2));
        assert_eq!(c.failure_mode, FailureMode::Closed);
        assert!(c.routes.is_empty());
        assert_eq!(c.explorers[0].path_prefix, "/api");
    }

    #[test]
    fn full_example_from_the_readme_parses() {
        let v = json!({
            "header": "X-Bitcoin-Txid",
            "network": "regtest",
            "pay_to": [PAY_TO],
            "price_sats": 1000,
            "min_confirmations": 0,
            "max_age": "0s",
            "explorers": [{"cluster": "explorer", "authority": "explorer.local", "path_prefix": "/api/"}],
            "timeout": "250ms",
            "failure_mode": "open",
            "fail_open": {"acknowledged": true},
            "routes": [{"prefix": "/free", "free": true}, {"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2}]
        });
        let c = parse(&v).unwrap();
        assert_eq!(c.header, "x-bitcoin-txid");
        assert_eq!(c.default_policy.min_confirmations, 0);
        assert_eq!(c.default_policy.max_age, Duration::ZERO);
        assert_eq!(c.explorers[0].path_prefix, "/api");
        assert_eq!(c.failure_mode, FailureMode::Open { per_client: 10, window: Duration::from_secs(60) });
        assert_eq!(c.access_for("/free/x"), AccessRef::Free);
        assert_eq!(
            c.access_for("/premium"),
            AccessRef::Paid(Policy { price_sats: 5000, min_confirmations: 2, max_age: Duration::ZERO })
        );
        assert_eq!(c.access_for("/other"), AccessRef::Paid(c.default_policy));
    }

    /// Each limit accepts its edge and refuses one past it; a refusal reads "field: reason".
    #[test]
    fn limits_hold_at_their_edges() {
        let at = |pairs: &[(&str, Value)]| {
            let mut v = minimal();
            for (k, value) in pairs {
                v[*k] = value.clone();
            }
            v
        };
        let err = refusal(&with("timeout", json!("61s")));
        assert_eq!(err.to_string(), format!("timeout: {}", err.reason));
        assert!(err.to_string().starts_with("timeout: must be at most 60s"), "{err}");
        let edge = parse(&at(&[("timeout", json!("60s")), ("deadline", json!("60s"))])).unwrap();
        assert_eq!((edge.timeout, edge.deadline), (Duration::from_secs(60), Duration::from_secs(60)));
        assert_eq!(refusal(&at(&[("timeout", json!("3s")), ("deadline", json!("2999ms"))])).field, "deadline");
        let max = u64::from(MAX_TOLERANCE_PERCENT);
        assert_eq!(parse(&with("tolerance_percent", json!(max))).unwrap().tolerance_percent, MAX_TOLERANCE_PERCENT);
        assert_eq!(refusal(&with("tolerance_percent", json!(max + 1))).field, "tolerance_percent");
        for (find, ban) in [("500ms", "10m"), ("1m", "999ms")] {
            let v = with("penalty", json!({"identity": "source_address", "find_time": find, "ban_time": ban}));
            assert_eq!(refusal(&v).field, "penalty", "find_time {find}, ban_time {ban}");
        }
        let long = "t".repeat(MAX_TEXT_FIELD);
        let page = parse(&with("paywall", json!({"title": long.clone()}))).unwrap().paywall.unwrap();
        assert_eq!(page.title, long);
        let too_long = "t".repeat(MAX_TEXT_FIELD + 1);
        assert_eq!(refusal(&with("paywall", json!({"title": too_long}))).field, "paywall.title");
        let named = parse(&with("paywall", json!({"title": "Weather API"}))).unwrap().paywall.unwrap();
        assert_eq!(named.title, "Weather API");
        let blank = parse(&with("paywall", json!({"title": ""}))).unwrap().paywall.unwrap();
        assert_eq!(blank.title, "this API");
        let two = json!([{"cluster": "a", "authority": "a"}, {"cluster": "b", "authority": "b"}]);
        let spv = |quorum: u32, confirmations: u32| {
            at(&[
                ("explorers", two.clone()),
                ("verify", json!("spv")),
                ("quorum", json!(quorum)),
                ("min_confirmations", json!(confirmations)),
            ])
        };
        match parse(&spv(2, MAX_SPV_CONFIRMATIONS)).unwrap().verify {
            Verify::Spv(spv) => assert_eq!(spv.quorum, 2, "a quorum of every explorer"),
            Verify::Explorer => panic!("verify spv was configured"),
        }
        assert_eq!(refusal(&spv(3, 6)).field, "quorum");
        assert_eq!(refusal(&spv(2, MAX_SPV_CONFIRMATIONS + 1)).field, "min_confirmations");
        assert_eq!(parse(&with("price_sats", json!(MAX_SATS))).unwrap().default_policy.price_sats, MAX_SATS);
        assert_eq!(refusal(&with("price_sats", json!(MAX_SATS + 1))).field, "price_sats");
        let most = parse(&with("min_confirmations", json!(MAX_CONFIRMATIONS))).unwrap();
        assert_eq!(most.default_policy.min_confirmations, MAX_CONFIRMATIONS);
        assert_eq!(refusal(&with("min_confirmations", json!(MAX_CONFIRMATIONS + 1))).field, "min_confirmations");
        for cluster in ["", " c", "c "] {
            let e = with("explorers", json!([{"cluster": cluster, "authority": "a"}]));
            assert_eq!(refusal(&e).field, "explorers[0].cluster", "{cluster:?}");
        }
        for extra in [json!({"min_confirmations": 2}), json!({"max_age": "1h"}), json!({"price_sats": 5})] {
            let mut route = json!({"prefix": "/a", "free": true});
            route.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            assert_eq!(refusal(&with("routes", json!([route]))).field, "routes[0].free", "{extra}");
        }
        let nameless = with("discounts", json!([{"name": "", "percent": 5, "no_strikes_for": "1h"}]));
        assert_eq!(refusal(&nameless).field, "discounts[0].name");
        let header =
            |name: &str| json!({"name": name, "percent": 5, "header": {"name": "x-d", "set_by_trusted_filter": true}});
        let dashed = parse(&with("discounts", json!([header("a-b_c9")]))).unwrap();
        assert_eq!(dashed.discounts.first().map(|d| d.name.as_str()), Some("a-b_c9"));
        assert_eq!(refusal(&with("discounts", json!([header("a.b")]))).field, "discounts[0].name");
        let twice = refusal(&with("discounts", json!([header("d"), header("e"), header("d")])));
        assert_eq!((twice.field.as_str(), twice.reason.as_str()), ("discounts[2].name", "\"d\" is used twice"));
        for (key, claim) in [("", "tier"), ("jwt", "")] {
            let d = json!([{"name": "j", "percent": 5, "jwt_claim": {"metadata_key": key, "claim": claim}}]);
            assert_eq!(refusal(&with("discounts", d)).field, "discounts[0].jwt_claim", "{key:?} {claim:?}");
        }
    }

    /// A `max_age` of 0 means no limit: combined with a real one, the real one is stricter.
    #[test]
    fn a_max_age_of_zero_is_the_loosest() {
        let policy = |secs| Policy { price_sats: 1, min_confirmations: 1, max_age: Duration::from_secs(secs) };
        let (none, hour, day) = (policy(0), policy(3600), policy(86_400));
        assert_eq!(none.stricter(&hour).max_age, hour.max_age);
        assert_eq!(hour.stricter(&none).max_age, hour.max_age);
        assert_eq!(day.stricter(&hour).max_age, hour.max_age);
        assert_eq!(none.stricter(&none).max_age, Duration::ZERO);
    }

    #[test]
    fn every_bad_field_is_named() {
        let explorer = |e: Value| with("explorers", json!([e]));
        let cases: Vec<(Value, &str)> = vec![
            (json!({}), "network"),
            (with("network", json!("mainnet")), "pay_to[0]"),
            (with("network", json!("moon")), "network"),
            (with("pay_to", json!([])), "pay_to"),
            (with("pay_to", json!(["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"])), "pay_to[0]"),
            (with("pay_to", json!([PAY_TO, PAY_TO])), "pay_to[1]"),
            (with("price_sats", json!(0)), "price_sats"),
            (with("price_sats", json!(2_100_000_000_000_001u64)), "price_sats"),
            (with("min_confirmations", json!(10_001)), "min_confirmations"),
            (with("max_age", json!("1d")), "max_age"),
            (with("timeout", json!("0s")), "timeout"),
            (with("timeout", json!("2m")), "timeout"),
            (with("failure_mode", json!("maybe")), "failure_mode"),
            (with("header", json!("x bad")), "header"),
            (with("header", json!("x-txgate-txid")), "header"),
            (with("explorers", json!([])), "explorers"),
            (explorer(json!({"authority": "a"})), "explorers[0].cluster"),
            (explorer(json!({"cluster": "c"})), "explorers[0].authority"),
            (explorer(json!({"cluster": "c", "authority": "http://a/"})), "explorers[0].authority"),
            (explorer(json!({"cluster": "c", "authority": "a", "path_prefix": "api"})), "explorers[0].path_prefix"),
            (with("routes", json!([{"free": true}])), "routes[0].prefix"),
            (with("routes", json!([{"prefix": "x", "free": true}])), "routes[0].prefix"),
            (with("routes", json!([{"prefix": "/a", "free": true, "price_sats": 5}])), "routes[0].free"),
            (with("routes", json!([{"prefix": "/a"}, {"prefix": "/a/b"}])), "routes[1].prefix"),
            (with("routes", json!([{"prefix": "/a/../b"}])), "routes[0].prefix"),
            (with("routes", json!([{"prefix": "//a"}])), "routes[0].prefix"),
            (with("routes", json!([{"prefix": "/a%2Fb"}])), "routes[0].prefix"),
            (with("failure_mode", json!("open")), "fail_open.acknowledged"),
            (with("fail_open", json!({"acknowledged": true})), "fail_open"),
            (with("max_inflight_per_client", json!(0)), "max_inflight_per_client"),
            (
                with("discounts", json!([{"name": "h", "percent": 10, "header": {"name": "x-policy"}}])),
                "discounts[0].header.set_by_trusted_filter",
            ),
            (
                with("discounts", json!([{"name": "j", "percent": 10, "jwt_claim": {"metadata_key": "jwt"}}])),
                "discounts[0].jwt_claim.claim",
            ),
            (with("routes", json!([{"prefix": "/a", "price_sats": 0}])), "routes[0].price_sats"),
            (with("deadline", json!("1s")), "deadline"),
            (with("grant", json!({"requests": 0})), "grant.requests"),
            (
                with("discounts", json!([{"name": "d", "percent": 0, "header": {"name": "x-d"}}])),
                "discounts[0].percent",
            ),
            (
                with("discounts", json!([{"name": "d", "percent": 100, "header": {"name": "x-d"}}])),
                "discounts[0].percent",
            ),
            (
                with("discounts", json!([{"name": "d", "percent": 5, "no_strikes_for": "1h"}])),
                "discounts[0].no_strikes_for",
            ),
            (with("circuit_breaker", json!({"failures": 0})), "circuit_breaker.failures"),
            (with("max_inflight", json!(0)), "max_inflight"),
            (with("cache", json!({"max_entries": 0})), "cache.max_entries"),
            (with("cache", json!({"max_entries": 1_000_001})), "cache.max_entries"),
        ];
        for (value, field) in cases {
            let err = refusal(&value);
            assert_eq!(err.field, field, "for {value}: {err}");
            assert!(!err.reason.is_empty());
        }
    }

    #[test]
    fn counted_or_bound_payments_need_a_max_age_everywhere() {
        let mut v = with("grant", json!({"requests": 3}));
        v["max_age"] = json!("0s");
        assert_eq!(refusal(&v).field, "max_age");
        let mut v = with("bind_to", json!("header:x-api-key"));
        v["routes"] = json!([{"prefix": "/forever", "max_age": "0s"}]);
        assert_eq!(refusal(&v).field, "max_age");
        assert!(parse(&with("grant", json!({"requests": 3}))).is_ok());
    }

    #[test]
    fn routes_match_whole_segments_and_the_stricter_case_wins() {
        let v = with(
            "routes",
            json!([{"prefix": "/free", "free": true}, {"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2, "max_age": "1h"},
                   {"prefix": "/Docs/", "free": true}]),
        );
        let c = parse(&v).unwrap();
        let premium = Policy { price_sats: 5000, min_confirmations: 2, max_age: Duration::from_secs(3600) };
        assert_eq!(c.access_for("/free"), AccessRef::Free);
        assert_eq!(c.access_for("/free/a"), AccessRef::Free);
        assert_eq!(c.access_for("/freeloader"), AccessRef::Paid(c.default_policy), "segment boundary");
        assert_eq!(c.access_for("/FREE/a"), AccessRef::Paid(c.default_policy), "free only in its own case");
        assert_eq!(c.access_for("/premium/x"), AccessRef::Paid(premium));
        assert_eq!(c.access_for("/PREMIUM/x"), AccessRef::Paid(premium), "a case-insensitive backend serves /premium");
        assert_eq!(c.access_for("/Premiums"), AccessRef::Paid(c.default_policy));
        assert_eq!(c.access_for("/Docs/a"), AccessRef::Free);
        assert_eq!(c.access_for("/docs/a"), AccessRef::Paid(c.default_policy));
        assert_eq!(c.lowest_price(), 1000);
        assert_eq!(c.longest_max_age(), Some(Duration::from_secs(86_400)));
    }

    #[test]
    fn missing_required_fields_are_reported_one_by_one() {
        for field in ["network", "pay_to", "price_sats", "explorers"] {
            let mut v = minimal();
            v.as_object_mut().unwrap().remove(field);
            let err = refusal(&v);
            assert_eq!(err.field, field);
            assert_eq!(err.reason, "is required");
        }
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_refused() {
        for v in [with("pay_too", json!([])), with("price_sats", json!("1000")), with("price_sats", json!(-1))] {
            let err = refusal(&v);
            assert_eq!(err.field, "configuration");
        }
        let err = refusal(&with("routes", json!([{"prefix": "/a", "price": 1}])));
        assert!(err.reason.contains("unknown field `price`"), "{err}");
        assert_eq!(Config::from_json(b"").unwrap_err().field, "configuration");
        assert_eq!(Config::from_json(b"not json").unwrap_err().field, "configuration");
    }

    #[test]
    fn verify_defaults_per_network_and_spv_fields_are_checked() {
        let mainnet = |extra: Value| {
            let mut v = json!({
                "network": "mainnet", "pay_to": ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"], "price_sats": 1000,
                "explorers": [{"cluster": "a", "authority": "a"}, {"cluster": "b", "authority": "b"}]
            });
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        let c = parse(&mainnet(json!({}))).unwrap();
        let spv = c.spv().expect("spv is mainnet's default");
        assert_eq!((spv.quorum, spv.floor_bits), (2, 0x1709_030c));
        assert_eq!(parse(&mainnet(json!({"verify": "explorer"}))).unwrap().verify, Verify::Explorer);
        assert_eq!(parse(&minimal()).unwrap().verify, Verify::Explorer, "regtest defaults to explorer");
        let regtest_spv = parse(&with("verify", json!("spv"))).unwrap();
        assert_eq!(regtest_spv.spv().map(|s| (s.quorum, s.floor_bits)), Some((1, 0x207f_ffff)));
        let mut one = mainnet(json!({}));
        one["explorers"] = json!([{"cluster": "a", "authority": "a"}]);
        assert_eq!(parse(&one).unwrap().spv().map(|s| s.quorum), Some(1), "one explorer: quorum 1");
        let harder = parse(&mainnet(json!({"spv_floor_bits": "1702b3a1", "quorum": 1}))).unwrap();
        assert_eq!(harder.spv().map(|s| (s.quorum, s.floor_bits)), Some((1, 0x1702_b3a1)));
        let cases: Vec<(Value, &str)> = vec![
            (mainnet(json!({"verify": "trust"})), "verify"),
            (mainnet(json!({"quorum": 3})), "quorum"),
            (mainnet(json!({"quorum": 0})), "quorum"),
            (mainnet(json!({"verify": "explorer", "quorum": 1})), "quorum"),
            (mainnet(json!({"verify": "explorer", "spv_floor_bits": "1709030c"})), "spv_floor_bits"),
            (mainnet(json!({"spv_floor_bits": "1709030"})), "spv_floor_bits"),
            (mainnet(json!({"spv_floor_bits": "zz09030c"})), "spv_floor_bits"),
            (mainnet(json!({"spv_floor_bits": "00000000"})), "spv_floor_bits"),
            // Easier than mainnet's proof-of-work limit, and regtest's limit on mainnet.
            (mainnet(json!({"spv_floor_bits": "1d01ffff"})), "spv_floor_bits"),
            (mainnet(json!({"spv_floor_bits": "207fffff"})), "spv_floor_bits"),
            (mainnet(json!({"min_confirmations": 0})), "min_confirmations"),
            (mainnet(json!({"min_confirmations": 101})), "min_confirmations"),
            (mainnet(json!({"routes": [{"prefix": "/x", "min_confirmations": 0}]})), "routes[0].min_confirmations"),
        ];
        for (config, field) in cases {
            let err = refusal(&config);
            assert_eq!(err.field, field, "{config}: {err}");
        }
        assert!(refusal(&mainnet(json!({"min_confirmations": 0}))).reason.contains("verify \"explorer\""));
        // Regtest: its own limit is accepted, anything harder too; mempool routes are fine under explorer.
        assert!(parse(&with("spv_floor_bits", json!("2000ffff"))).is_err(), "needs verify spv");
        let mut v = with("verify", json!("spv"));
        v["spv_floor_bits"] = json!("2000ffff");
        assert_eq!(parse(&v).unwrap().spv().map(|s| s.floor_bits), Some(0x2000_ffff));
        assert!(parse(&with("min_confirmations", json!(0))).is_ok());
    }
    #[test]
    fn guard_needs_a_source_address_penalty_box_and_a_cluster() {
        let penalty = json!({"ban_time": "2m"});
        let mut v = with("penalty", penalty.clone());
        v["guard"] = json!({"cluster": "txgate_guard"});
        let guard = parse(&v).unwrap().guard.unwrap();
        assert_eq!((guard.cluster.as_str(), guard.ban_ttl), ("txgate_guard", Duration::from_secs(120)));
        v["guard"] = json!({"cluster": "txgate_guard", "ban_ttl": "30s"});
        assert_eq!(parse(&v).unwrap().guard.unwrap().ban_ttl, Duration::from_secs(30));
        assert_eq!(parse(&minimal()).unwrap().guard, None);
        let refused = |v: &Value, field: &str| {
            let err = parse(v).unwrap_err();
            assert_eq!(err.field, field, "{v}: {err}");
        };
        refused(&with("guard", json!({"cluster": "g"})), "guard");
        let mut header_box = with("penalty", json!({"identity": "header:x-api-key"}));
        header_box["guard"] = json!({"cluster": "g"});
        refused(&header_box, "guard");
        for (bad, field) in [
            (json!({}), "guard.cluster"),
            (json!({"cluster": " "}), "guard.cluster"),
            (json!({"cluster": "g", "ban_ttl": "0s"}), "guard.ban_ttl"),
            (json!({"cluster": "g", "ban_ttl": "169h"}), "guard.ban_ttl"),
            (json!({"cluster": "g", "ban_ttl": "soon"}), "guard.ban_ttl"),
        ] {
            v["guard"] = bad;
            refused(&v, field);
        }
        v["guard"] = json!({"cluster": "g", "ban_ttl": 30});
        refused(&v, "guard.ban_ttl");
        v["guard"] = json!({"cluster": 5});
        refused(&v, "guard.cluster");
        v["guard"] = json!("txgate_guard");
        refused(&v, "guard");
        v["guard"] = json!({"cluster": "g", "timeout": "1s"});
        refused(&v, "guard");
    }
}
