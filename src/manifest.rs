//! `GET /.well-known/txgate`: what this gate sells and how to pay, for programs that discover
//! before they call. Field names are the 402 `payment` object's, so one parser reads both; the
//! live 402 stays authoritative. Discount conditions' values (principals, header values, claims)
//! are never published: only name, percent and kind.

use crate::config::{Access, Config};
use crate::discount::Condition;
use crate::json_out::{self, array, Obj};
use crate::payer;
use crate::xpub::ScriptKind;

/// The manifest's schema major: clients should refuse a major they do not know.
pub const MANIFEST_VERSION: u64 = 1;

pub fn render(config: &Config) -> Option<String> {
    let service = config.manifest.as_ref()?;
    let policy = |o: Obj, p: &crate::config::Policy| {
        o.num("price_sats", p.price_sats)
            .num("min_confirmations", u64::from(p.min_confirmations))
            .num("max_age_secs", p.max_age.as_secs())
    };
    let routes = array(config.routes.iter().map(|r| {
        let o = Obj::new().str("prefix", &r.prefix);
        match &r.access {
            Access::Free => o.bool("free", true).end(),
            Access::Paid(p) => policy(o, p).end(),
        }
    }));
    let discounts = array(config.discounts.iter().map(|d| {
        let kind = match d.condition {
            Condition::MtlsPrincipalIn(_) => "mtls_principal",
            Condition::Header { .. } => "header",
            Condition::JwtClaim { .. } => "jwt_claim",
            Condition::NoStrikesFor(_) => "no_strikes_for",
        };
        Obj::new().str("name", &d.name).num("percent", u64::from(d.percent)).str("kind", kind).end()
    }));
    let service = Obj::new()
        .str("name", &service.name)
        .str("description", &service.description)
        .str("contact", &service.contact)
        .end();
    let grant = Obj::new()
        .opt_num("requests", config.grant.requests)
        .opt_num("window_secs", config.grant.window.map(|w| w.as_secs()))
        .end();
    let mut o = Obj::new()
        .num("txgate", MANIFEST_VERSION)
        .raw("service", &service)
        .str("network", config.network.name())
        .str("network_id", payer::network_id(config.network))
        .str("asset", &payer::asset_id(config.network))
        .str("header", &config.header)
        .bool("x402", true)
        .str("status", payer::STATUS_PATH)
        .raw("default", &policy(Obj::new(), &config.default_policy).end())
        .raw("grant", &grant)
        .num("tolerance_percent", u64::from(config.tolerance_percent))
        .raw("routes", &routes)
        .raw("discounts", &discounts);
    if config.txid_cookie {
        o = o.str("cookie", payer::TXID_COOKIE);
    }
    o = match (&config.pay_to_xpub, &config.bind_to) {
        // Each client pays its own address: the 402 for its identity shows it.
        (Some(xpub), Some(identity)) => {
            let script = match xpub.script {
                ScriptKind::P2wpkh => "p2wpkh",
                ScriptKind::P2tr => "p2tr",
            };
            let per_client = Obj::new()
                .str("identity", &identity.name())
                .str("script", script)
                .str("how", "send a request with your identity and no txid: the 402 shows your own address")
                .end();
            o.raw("pay_to_per_client", &per_client)
        }
        _ => o.raw("pay_to", &array(config.pay_to.iter().map(|a| json_out::string(a)))),
    };
    if let Some(identity) = &config.bind_to {
        o = o.str("bind_to", &identity.name());
    }
    Some(o.end())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
    fn with_per_client_addresses_the_manifest_says_how_to_get_yours_and_lists_none() {
        // BIP32 test vector 1's m/0' xpub, with testnet version bytes.
        let xpub = "xpub6BgBgsespWvERF3LHQu6CnqdvfEvtMcQjYrcRzx53QJjSxarj2afYWcLteoGVky7D3UKDP9QyrLprQ3VCECoY49yfdDEHGCtMMj92pReUsQ";
        let mut raw = bs58::decode(xpub).with_check(None).into_vec().unwrap();
        raw[..4].copy_from_slice(&[0x04, 0x35, 0x87, 0xcf]);
        let tpub = bs58::encode(raw).with_check().into_string();
        let text = render(&config(json!({
            "pay_to": {"xpub": tpub, "script": "p2tr"}, "bind_to": "header:x-api-key", "max_age": "1h"
        })))
        .unwrap();
        let m: Value = serde_json::from_str(&text).unwrap();
        assert!(m.get("pay_to").is_none(), "no shared address to publish: {m}");
        assert_eq!(m["pay_to_per_client"]["identity"], "header:x-api-key");
        assert_eq!(m["pay_to_per_client"]["script"], "p2tr");
        assert_eq!(m["bind_to"], "header:x-api-key");
        assert!(!text.contains(&tpub), "the key itself is not published");
    }

    #[test]
    fn a_disabled_manifest_is_not_rendered() {
        assert!(render(&config(json!({"manifest": {"enabled": false}}))).is_none());
        let m: Value = serde_json::from_str(&render(&config(json!({"txid_cookie": false}))).unwrap()).unwrap();
        assert!(m.get("cookie").is_none());
    }
}
