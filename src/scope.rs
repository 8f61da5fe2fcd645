//! Shared-data namespaces. Every txgate configuration in one Envoy shares one key space when the
//! `vm_id` is the same (or blank, as Istio generates it), so each key is prefixed with a
//! fingerprint of what its value depends on: a payment verified for merchant A on regtest must
//! never be read by merchant B or by a mainnet listener, and one explorer set's tip never
//! counts confirmations for another.
//!
//! The fingerprint is FNV-1a 64 over a canonical text of the settings (stable across builds and
//! workers, unlike Rust's `DefaultHasher`, which is not specified).

use crate::config::Config;
use crate::identity::IdentitySource;

/// FNV-1a, 64 bits: small, specified, and enough for telling operator configurations apart.
pub fn fnv1a64(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0x1f]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// Key prefixes, each ending in '/'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    /// Network and explorer set: the tips.
    pub chain: String,
    /// Plus addresses, grant and binding rules, table size: payments, grants, bindings.
    pub payments: String,
    /// Plus the penalty rules: strikes, bans, first-seen times, fail-open passes.
    pub clients: String,
}

impl Scopes {
    pub fn of(config: &Config) -> Scopes {
        let mut chain_text = format!("v2|{}", config.network.name());
        for e in &config.explorers {
            chain_text.push_str(&format!("|{}|{}|{}", e.cluster, e.authority, e.path_prefix));
        }
        let chain = fnv1a64(&[chain_text.as_bytes()]);
        let mut pay_to = config.pay_to.clone();
        pay_to.sort();
        if let Some(x) = &config.pay_to_xpub {
            pay_to.push(format!("{}|{}|{}", x.text, x.script.name(), x.branch));
        }
        let grant_requests = config.grant.requests.map_or(String::new(), |n| n.to_string());
        let grant_window = config.grant.window.map_or(String::new(), |w| w.as_secs().to_string());
        let bind_to = config.bind_to.as_ref().map_or(String::new(), IdentitySource::describe);
        let payments = fnv1a64(&[
            &chain.to_le_bytes(),
            pay_to.join(",").as_bytes(),
            grant_requests.as_bytes(),
            grant_window.as_bytes(),
            bind_to.as_bytes(),
            &(config.cache.max_entries as u64).to_le_bytes(),
            &config.lowest_price().to_le_bytes(),
        ]);
        let penalty = match &config.penalty {
            Some(p) => format!(
                "{}|{}|{}|{}|{}|{}",
                p.identity.describe(),
                p.max_strikes,
                p.source_factor,
                p.find_time.as_secs(),
                p.ban_time.as_secs(),
                p.slots
            ),
            None => String::new(),
        };
        let clients = fnv1a64(&[&payments.to_le_bytes(), penalty.as_bytes()]);
        Scopes {
            chain: format!("txgate/{chain:016x}/"),
            payments: format!("txgate/{payments:016x}/"),
            clients: format!("txgate/{clients:016x}/"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scopes(extra: serde_json::Value) -> Scopes {
        let mut v = json!({
            "network": "regtest",
            "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"],
            "price_sats": 1000,
            "explorers": [{"cluster": "explorer", "authority": "explorer.local"}]
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        Scopes::of(&Config::from_json(v.to_string().as_bytes()).unwrap())
    }

    #[test]
    fn fnv_matches_the_published_test_vectors() {
        // FNV-1a 64 of "a" is af63dc4c8601ec8c; our separator byte follows each part.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        hash ^= u64::from(b'a');
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(hash, 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a64(&[b"ab"]), fnv1a64(&[b"a", b"b"]), "parts are separated");
    }

    #[test]
    fn what_a_verdict_depends_on_changes_the_scope() {
        let base = scopes(json!({}));
        assert_eq!(base, scopes(json!({})), "stable");
        let other_merchant = scopes(json!({"pay_to": ["bcrt1qgmwevycpm6p3a0jlq5kpq3vzfdajhyd3z9pw96"]}));
        assert_ne!(base.payments, other_merchant.payments);
        assert_eq!(base.chain, other_merchant.chain, "same network and explorers share the tip");
        let testnet = scopes(json!({"network": "testnet", "pay_to": ["tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx"]}));
        assert_ne!(base.chain, testnet.chain);
        assert_ne!(base.payments, testnet.payments);
        let explorers = scopes(json!({"explorers": [{"cluster": "other", "authority": "explorer.local"}]}));
        assert_ne!(base.chain, explorers.chain);
        assert_ne!(base.payments, explorers.payments);
        let grant = scopes(json!({"grant": {"requests": 3}}));
        assert_ne!(base.payments, grant.payments);
        let bound = scopes(json!({"bind_to": "header:x-api-key"}));
        assert_ne!(base.payments, bound.payments);
        let penalty = scopes(json!({"penalty": {"max_strikes": 2}}));
        assert_eq!(base.payments, penalty.payments);
        assert_ne!(base.clients, penalty.clients);
        let routes = scopes(json!({"routes": [{"prefix": "/premium", "price_sats": 5000}]}));
        assert_eq!(base.payments, routes.payments, "prices do not change what a payment is");
    }
}
