//! `GET /.well-known/txgate`: what this gate sells and how to pay, for programs that discover
//! before they call. Field names are the 402 `payment` object's, so one parser reads both; the
//! live 402 stays authoritative. Discount conditions' values (principals, header values, claims)
//! are never published: only name, percent and kind.

use serde_json::{json, Value};

use crate::config::{Access, Config};
use crate::discount::Condition;
use crate::payer;

/// The manifest's schema major: clients should refuse a major they do not know.
pub const MANIFEST_VERSION: u32 = 1;

pub fn render(config: &Config) -> Option<String> {
    let service = config.manifest.as_ref()?;
    let mut manifest = json!({
        "txgate": MANIFEST_VERSION,
        "service": {"name": service.name, "description": service.description, "contact": service.contact},
        "network": config.network.name(),
        "network_id": payer::network_id(config.network),
        "asset": payer::asset_id(config.network),
        "header": config.header,
        "x402": true,
        "status": payer::STATUS_PATH,
        "default": {
            "price_sats": config.default_policy.price_sats,
            "min_confirmations": config.default_policy.min_confirmations,
            "max_age_secs": config.default_policy.max_age.as_secs(),
        },
        "grant": {"requests": config.grant.requests, "window_secs": config.grant.window.map(|w| w.as_secs())},
        "tolerance_percent": config.tolerance_percent,
        "routes": config.routes.iter().map(|r| match &r.access {
            Access::Free => json!({"prefix": r.prefix, "free": true}),
            Access::Paid(p) => json!({
                "prefix": r.prefix,
                "price_sats": p.price_sats,
                "min_confirmations": p.min_confirmations,
                "max_age_secs": p.max_age.as_secs(),
            }),
        }).collect::<Vec<Value>>(),
        "discounts": config.discounts.iter().map(|d| json!({
            "name": d.name,
            "percent": d.percent,
            "kind": match d.condition {
                Condition::MtlsPrincipalIn(_) => "mtls_principal",
                Condition::Header { .. } => "header",
                Condition::JwtClaim { .. } => "jwt_claim",
                Condition::NoStrikesFor(_) => "no_strikes_for",
            },
        })).collect::<Vec<Value>>(),
    });
    let obj = manifest.as_object_mut()?;
    if config.txid_cookie {
        obj.insert("cookie".to_string(), json!(payer::TXID_COOKIE));
    }
    match (&config.pay_to_xpub, &config.bind_to) {
        // Each client pays its own address: the 402 for its identity shows it.
        (Some(xpub), Some(identity)) => {
            let per_client = json!({"identity": identity.name(), "script": format!("{:?}", xpub.script).to_lowercase(),
                "how": "send a request with your identity and no txid: the 402 shows your own address"});
            obj.insert("pay_to_per_client".to_string(), per_client);
        }
        _ => {
            obj.insert("pay_to".to_string(), json!(config.pay_to));
        }
    }
    if let Some(identity) = &config.bind_to {
        obj.insert("bind_to".to_string(), json!(identity.name()));
    }
    Some(manifest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: Value) -> Config {
        let mut base = json!({
            "network": "regtest", "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"], "price_sats": 1000,
            "explorers": [{"cluster": "e", "authority": "e"}],
            "routes": [{"prefix": "/free", "free": true}, {"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2}],
            "discounts": [{"name": "partner", "percent": 20, "mtls_principal_in": ["spiffe://secret/partner"]}],
        });
        if let (Some(b), Value::Object(e)) = (base.as_object_mut(), extra) {
            b.extend(e);
        }
        Config::from_json(base.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn the_manifest_lists_routes_in_order_and_hides_discount_values() {
        let text = render(&config(json!({"manifest": {"name": "Demo", "contact": "ops@example.com"}}))).unwrap();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(m["txgate"], 1);
        assert_eq!(m["service"]["name"], "Demo");
        assert_eq!(m["network_id"], "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
        assert_eq!(m["pay_to"][0], "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080");
        assert_eq!(m["default"]["price_sats"], 1000);
        assert_eq!(m["routes"][0], json!({"prefix": "/free", "free": true}));
        assert_eq!(m["routes"][1]["price_sats"], 5000);
        assert_eq!(m["routes"][1]["min_confirmations"], 2);
        assert_eq!(m["discounts"][0], json!({"name": "partner", "percent": 20, "kind": "mtls_principal"}));
        assert!(!text.contains("spiffe://secret"), "discount values stay private");
        assert_eq!(m["cookie"], "txgate_txid");
        assert_eq!(m["status"], "/.well-known/txgate/status");
    }

    #[test]
    fn a_disabled_manifest_is_not_rendered() {
        assert!(render(&config(json!({"manifest": {"enabled": false}}))).is_none());
        let m: Value = serde_json::from_str(&render(&config(json!({"txid_cookie": false}))).unwrap()).unwrap();
        assert!(m.get("cookie").is_none());
    }
}
