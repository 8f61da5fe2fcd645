//! The `ledger` section of the plugin configuration.
//!
//! ```json
//! "ledger": {
//!   "etcd": {"cluster": "etcd", "authority": "etcd", "key_prefix": "txgate/"},
//!   "block": 16,                 // or "auto"
//!   "failure_mode": "closed",    // or "local"
//!   "timeout": "500ms", "deadline": "2s",
//!   "circuit_breaker": {"failures": 3, "cool_down": "5s"},
//!   "lease_bucket": "1h",
//!   "consume": "grant",          // or "once": one payment buys one request, mesh-wide
//!   "owner_secret": "..."        // optional HMAC key for owner ids
//! }
//! ```

use std::time::Duration;

use serde::Deserialize;

use crate::config::{BreakerConfig, ConfigError};
use crate::duration::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    etcd: Option<RawEtcd>,
    block: Option<serde_json::Value>,
    failure_mode: Option<String>,
    timeout: Option<String>,
    deadline: Option<String>,
    circuit_breaker: Option<RawBreaker>,
    lease_bucket: Option<String>,
    consume: Option<String>,
    owner_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    cluster: Option<String>,
    authority: Option<String>,
    key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    failures: Option<u32>,
    cool_down: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockSize {
    Fixed(u64),
    /// clamp(requests / 32, 1, 256): exact (one txn per request) for grants up to 63 requests; an
    /// Envoy holds at most two blocks, so at most 1/16 of a grant waits in one Envoy.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerFailureMode {
    /// A request that needs etcd and cannot reach it gets 503 `ledger_unavailable`.
    Closed,
    /// It is counted in this Envoy's shared data instead, marked `x-txgate-unverified`.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    pub cluster: String,
    pub authority: String,
    /// Ends with '/'.
    pub key_prefix: String,
    pub block: BlockSize,
    pub failure_mode: LedgerFailureMode,
    pub timeout: Duration,
    pub deadline: Duration,
    pub breaker: BreakerConfig,
    pub lease_bucket: Duration,
    /// One payment buys exactly one request, mesh-wide.
    pub consume_once: bool,
    pub owner_secret: Option<Vec<u8>>,
}

impl LedgerConfig {
    /// Requests per reservation for a grant of `requests` (0 = not counted).
    pub fn block_for(&self, requests: u64) -> u64 {
        if requests == 0 {
            return 1;
        }
        let k = match self.block {
            BlockSize::Fixed(k) => k,
            BlockSize::Auto => (requests / 32).clamp(1, 256),
        };
        k.clamp(1, requests)
    }

    /// `<key_prefix>v1/<network>/`.
    pub fn prefix(&self, network: &str) -> String {
        format!("{}v1/{network}/", self.key_prefix)
    }
}

fn refuse<T>(field: &str, reason: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError { field: format!("ledger.{field}"), reason: reason.to_string() })
}

fn duration(text: Option<&str>, default: &str, field: &str) -> Result<Duration, ConfigError> {
    match parse_duration(text.unwrap_or(default)) {
        Ok(d) => Ok(d),
        Err(err) => refuse(field, err),
    }
}

pub fn validate(raw: serde_json::Value) -> Result<LedgerConfig, ConfigError> {
    let raw: RawLedger = match serde_json::from_value(raw) {
        Ok(raw) => raw,
        Err(err) => return Err(ConfigError { field: "ledger".into(), reason: format!("is not valid: {err}") }),
    };
    let Some(etcd) = raw.etcd else { return refuse("etcd", "is required (cluster and authority of the etcd cluster)") };
    let cluster = match etcd.cluster {
        Some(c) if !c.is_empty() => c,
        _ => return refuse("etcd.cluster", "is required: the Envoy cluster of etcd's client port (HTTP/1.1)"),
    };
    let authority = match etcd.authority {
        Some(a) if !a.is_empty() => a,
        _ => return refuse("etcd.authority", "is required (sent as :authority)"),
    };
    let key_prefix = etcd.key_prefix.unwrap_or_else(|| "txgate/".to_string());
    if key_prefix.is_empty() || !key_prefix.ends_with('/') || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
        return refuse("etcd.key_prefix", "must be printable ASCII without spaces and end with '/'");
    }
    let block = match raw.block {
        None => BlockSize::Auto,
        Some(serde_json::Value::String(s)) if s == "auto" => BlockSize::Auto,
        Some(serde_json::Value::Number(n)) => match n.as_u64() {
            Some(k) if (1..=100_000).contains(&k) => BlockSize::Fixed(k),
            _ => return refuse("block", "must be between 1 and 100000, or \"auto\""),
        },
        Some(_) => return refuse("block", "must be a number of requests or \"auto\""),
    };
    let failure_mode = match raw.failure_mode.as_deref().unwrap_or("closed") {
        "closed" => LedgerFailureMode::Closed,
        "local" => LedgerFailureMode::Local,
        other => return refuse("failure_mode", format!("\"{other}\" is not one of closed, local")),
    };
    let timeout = duration(raw.timeout.as_deref(), "500ms", "timeout")?;
    if timeout.is_zero() || timeout > Duration::from_secs(30) {
        return refuse("timeout", "must be more than 0 and at most 30s");
    }
    let deadline = duration(raw.deadline.as_deref(), "2s", "deadline")?;
    if deadline < timeout || deadline > Duration::from_secs(60) {
        return refuse("deadline", "must be at least ledger.timeout and at most 60s");
    }
    let raw_breaker = raw.circuit_breaker.unwrap_or(RawBreaker { failures: None, cool_down: None });
    let failures = raw_breaker.failures.unwrap_or(3);
    if failures == 0 {
        return refuse("circuit_breaker.failures", "must be at least 1");
    }
    let cool_down = duration(raw_breaker.cool_down.as_deref(), "5s", "circuit_breaker.cool_down")?;
    let lease_bucket = duration(raw.lease_bucket.as_deref(), "1h", "lease_bucket")?;
    if lease_bucket < Duration::from_secs(60) {
        return refuse("lease_bucket", "must be at least 1m (etcd leases are coarse)");
    }
    let consume_once = match raw.consume.as_deref().unwrap_or("grant") {
        "grant" => false,
        "once" => true,
        other => return refuse("consume", format!("\"{other}\" is not one of grant, once")),
    };
    let owner_secret = match raw.owner_secret {
        Some(s) if s.len() < 16 => return refuse("owner_secret", "must be at least 16 characters"),
        other => other.map(String::into_bytes),
    };
    Ok(LedgerConfig {
        cluster,
        authority,
        key_prefix,
        block,
        failure_mode,
        timeout,
        deadline,
        breaker: BreakerConfig { failures, cool_down },
        lease_bucket,
        consume_once,
        owner_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(v: serde_json::Value) -> LedgerConfig {
        validate(v).unwrap()
    }

    fn field(v: serde_json::Value) -> String {
        validate(v).unwrap_err().field
    }

    #[test]
    fn defaults() {
        let c = ok(json!({"etcd": {"cluster": "etcd", "authority": "etcd"}}));
        assert_eq!(c.key_prefix, "txgate/");
        assert_eq!(c.block, BlockSize::Auto);
        assert_eq!(c.failure_mode, LedgerFailureMode::Closed);
        assert_eq!((c.timeout, c.deadline), (Duration::from_millis(500), Duration::from_secs(2)));
        assert!(!c.consume_once);
        assert_eq!(c.prefix("regtest"), "txgate/v1/regtest/");
    }

    /// A minimal ledger config with `extra`'s fields set.
    fn with(extra: serde_json::Value) -> Result<LedgerConfig, ConfigError> {
        let mut v = json!({"etcd": {"cluster": "etcd", "authority": "etcd"}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        validate(v)
    }

    #[test]
    fn refusals_name_the_field() {
        let e = |extra: serde_json::Value| with(extra).unwrap_err().field;
        assert_eq!(field(json!({})), "ledger.etcd");
        assert_eq!(field(json!({"etcd": {"authority": "a"}})), "ledger.etcd.cluster");
        assert_eq!(field(json!({"etcd": {"cluster": "a"}})), "ledger.etcd.authority");
        assert_eq!(
            field(json!({"etcd": {"cluster": "a", "authority": "a", "key_prefix": "x"}})),
            "ledger.etcd.key_prefix"
        );
        assert_eq!(field(json!({"etcd": {"cluster": "a", "authority": "a", "port": 1}})), "ledger");
        assert_eq!(e(json!({"bogus": 1})), "ledger");
        assert_eq!(e(json!({"block": 0})), "ledger.block");
        assert_eq!(e(json!({"block": "big"})), "ledger.block");
        assert_eq!(e(json!({"failure_mode": "open"})), "ledger.failure_mode");
        assert_eq!(e(json!({"timeout": "0s"})), "ledger.timeout");
        assert_eq!(e(json!({"deadline": "100ms"})), "ledger.deadline");
        assert_eq!(e(json!({"circuit_breaker": {"failures": 0}})), "ledger.circuit_breaker.failures");
        assert_eq!(e(json!({"lease_bucket": "10s"})), "ledger.lease_bucket");
        assert_eq!(e(json!({"consume": "twice"})), "ledger.consume");
        assert_eq!(e(json!({"owner_secret": "short"})), "ledger.owner_secret");
    }

    #[test]
    fn limits_hold_at_their_edges() {
        assert_eq!(field(json!({"etcd": {"cluster": "", "authority": "a"}})), "ledger.etcd.cluster");
        assert_eq!(field(json!({"etcd": {"cluster": "a", "authority": ""}})), "ledger.etcd.authority");
        assert_eq!(with(json!({"block": "auto"})).unwrap().block, BlockSize::Auto);
        assert_eq!(with(json!({"block": "Auto"})).unwrap_err().field, "ledger.block");
        assert_eq!(with(json!({"block": 100_000})).unwrap().block, BlockSize::Fixed(100_000));
        assert_eq!(with(json!({"block": 100_001})).unwrap_err().field, "ledger.block");
        // timeout: (0, 30s]; deadline: [timeout, 60s].
        assert_eq!(with(json!({"timeout": "30s", "deadline": "30s"})).unwrap().timeout, Duration::from_secs(30));
        assert_eq!(with(json!({"timeout": "31s", "deadline": "40s"})).unwrap_err().field, "ledger.timeout");
        assert_eq!(with(json!({"timeout": "1s", "deadline": "1s"})).unwrap().deadline, Duration::from_secs(1));
        assert_eq!(with(json!({"timeout": "1s", "deadline": "999ms"})).unwrap_err().field, "ledger.deadline");
        assert_eq!(with(json!({"deadline": "60s"})).unwrap().deadline, Duration::from_secs(60));
        assert_eq!(with(json!({"deadline": "61s"})).unwrap_err().field, "ledger.deadline");
        assert_eq!(with(json!({"lease_bucket": "1m"})).unwrap().lease_bucket, Duration::from_secs(60));
        assert_eq!(with(json!({"lease_bucket": "59s"})).unwrap_err().field, "ledger.lease_bucket");
        let secret = "0123456789abcdef";
        assert_eq!(with(json!({"owner_secret": secret})).unwrap().owner_secret.as_deref(), Some(secret.as_bytes()));
        assert_eq!(with(json!({"owner_secret": &secret[1..]})).unwrap_err().field, "ledger.owner_secret");
    }

    #[test]
    fn block_sizes() {
        let mut c = ok(json!({"etcd": {"cluster": "e", "authority": "e"}}));
        assert_eq!([c.block_for(10), c.block_for(100), c.block_for(1000), c.block_for(100_000)], [1, 3, 31, 256]);
        c.block = BlockSize::Fixed(8);
        assert_eq!([c.block_for(5), c.block_for(50), c.block_for(0)], [5, 8, 1]);
    }

    fn whole(extra: serde_json::Value) -> Result<crate::config::Config, ConfigError> {
        let mut v = json!({
            "network": "regtest", "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"], "price_sats": 1000,
            "explorers": [{"cluster": "e", "authority": "e"}],
            "ledger": {"etcd": {"cluster": "etcd", "authority": "etcd"}}
        });
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        crate::config::Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn the_ledger_in_the_whole_configuration() {
        let c = whole(json!({"grant": {"requests": 10}})).unwrap();
        assert_eq!(c.ledger.unwrap().cluster, "etcd");
        assert_eq!(whole(json!({})).unwrap_err().field, "ledger", "nothing to keep");
        let e = whole(json!({"grant": {"requests": 10}, "max_age": "0s"})).unwrap_err();
        assert_eq!(e.field, "max_age");
        let routes = json!([{"prefix": "/old", "max_age": "0s"}]);
        assert_eq!(whole(json!({"bind_to": "header:x-api-key", "routes": routes})).unwrap_err().field, "max_age");
        let once = json!({"etcd": {"cluster": "etcd", "authority": "etcd"}, "consume": "once"});
        let c = whole(json!({"ledger": once})).unwrap();
        assert_eq!(c.grant, crate::grant::Grant { requests: Some(1), window: None });
        let e = whole(json!({"ledger": once, "grant": {"requests": 5}})).unwrap_err();
        assert_eq!(e.field, "ledger.consume");
        let local_once =
            json!({"etcd": {"cluster": "etcd", "authority": "etcd"}, "consume": "once", "failure_mode": "local"});
        assert_eq!(whole(json!({"ledger": local_once})).unwrap_err().field, "ledger.failure_mode");
        let e =
            whole(json!({"grant": {"requests": 10}, "ledger": {"etcd": {"cluster": "e", "authority": "e"}, "x": 1}}));
        assert_eq!(e.unwrap_err().field, "ledger");
    }
}
