//! Properties behind the security fixes.
//!
//! Path canonicalization against an independent model of a lenient backend: for any path the
//! filter lets through, the route such a backend serves is never dearer than the route the filter
//! charged. The backend model is written here from the findings' description
//! (percent-decode everything, backslashes as slashes, `;` parameters dropped, dot segments
//! removed and clamped at the root, repeated slashes merged, optionally case-insensitive), not
//! from `src/path.rs`.

use proptest::prelude::*;
use serde_json::json;
use txgate::config::{Access, AccessRef, Config};
use txgate::path::{canonicalize, matching_form};
use txgate::scope::Scopes;

fn config() -> Config {
    let v = json!({
        "network": "regtest",
        "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"],
        "price_sats": 1000,
        "explorers": [{"cluster": "e", "authority": "e"}],
        "routes": [
            {"prefix": "/free", "free": true},
            {"prefix": "/premium", "price_sats": 5000},
            {"prefix": "/cheap/", "price_sats": 10},
            {"prefix": "/Docs", "free": true}
        ]
    });
    Config::from_json(v.to_string().as_bytes()).unwrap()
}

fn percent_decode_all(raw: &str) -> Vec<u8> {
    let b = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The path a lenient backend serves for this request target.
fn lenient_backend(target: &str, case_insensitive: bool) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    let decoded = String::from_utf8_lossy(&percent_decode_all(path)).replace('\\', "/");
    let mut stack: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        let segment = segment.split(';').next().unwrap_or("");
        match segment {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(if case_insensitive { s.to_ascii_lowercase() } else { s.to_string() }),
        }
    }
    format!("/{}", stack.join("/"))
}

/// The price of the first route the backend would serve `path` under (free = 0).
fn backend_price(config: &Config, path: &str, case_insensitive: bool) -> u64 {
    for route in &config.routes {
        let prefix = if case_insensitive { route.prefix.to_ascii_lowercase() } else { route.prefix.clone() };
        let covered =
            path == prefix.trim_end_matches('/') || path.starts_with(&format!("{}/", prefix.trim_end_matches('/')));
        if covered {
            return match &route.access {
                Access::Free => 0,
                Access::Paid(p) => p.price_sats,
            };
        }
    }
    config.default_policy.price_sats
}

fn charged(config: &Config, target: &str) -> Option<u64> {
    let canonical = canonicalize(target.as_bytes()).ok()?;
    Some(match config.access_for(&matching_form(&canonical)) {
        AccessRef::Free => 0,
        AccessRef::Paid(p) => p.price_sats,
    })
}

fn target() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "/",
        "//",
        "free",
        "premium",
        "PREMIUM",
        "Premium",
        "cheap",
        "docs",
        "Docs",
        "api",
        "..",
        ".",
        "%2e",
        "%2E%2e",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        ";x",
        ";",
        "%70",
        "%00",
        "%",
        "%zz",
        "a",
        "?q=/../free",
        "#f",
        "é",
        "%41",
        "%3b",
        "%3B",
        "%3Bx",
        "%2C",
    ]);
    prop::collection::vec(token, 0..12).prop_map(|parts| format!("/{}", parts.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_lenient_backend_never_serves_a_dearer_route_than_the_one_charged(target in target()) {
        let config = config();
        if let Some(charged) = charged(&config, &target) {
            for case_insensitive in [false, true] {
                let served = lenient_backend(&target, case_insensitive);
                let price = backend_price(&config, &served, case_insensitive);
                prop_assert!(
                    price <= charged,
                    "{target:?} charged {charged}, a backend ({}) serves {served:?} at {price}",
                    if case_insensitive { "case-insensitive" } else { "case-sensitive" }
                );
            }
        }
    }

    #[test]
    fn canonical_paths_are_fixed_points_and_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(c) = canonicalize(&bytes) {
            prop_assert_eq!(canonicalize(c.as_bytes()), Ok(c.clone()));
            prop_assert!(c.starts_with('/') && !c.contains("//") && !c.contains('\\'));
        }
    }
}

#[test]
fn the_model_agrees_with_the_findings_examples() {
    assert_eq!(lenient_backend("/free/..%2fapi/hello", false), "/api/hello");
    assert_eq!(lenient_backend("/free\\..\\api", false), "/api");
    assert_eq!(lenient_backend("/free/..;/api", false), "/api");
    assert_eq!(lenient_backend("/PREMIUM/x", true), "/premium/x");
    let config = config();
    assert_eq!(backend_price(&config, "/premium/x", false), 5000);
    assert_eq!(charged(&config, "/free/..%2fapi/hello"), None, "refused, not charged");
    assert_eq!(charged(&config, "//premium/x"), Some(5000));
}

// ------------------------------------------------------------------------------ key scoping

/// Two addresses on each of two networks (BIP-173 vectors).
fn addresses(network: &str) -> [&'static str; 2] {
    match network {
        "regtest" => ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "bcrt1qgmwevycpm6p3a0jlq5kpq3vzfdajhyd3z9pw96"],
        _ => [
            "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx",
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        ],
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Setup {
    network: &'static str,
    pay_to: Vec<usize>,
    explorers: Vec<&'static str>,
    grant: Option<u64>,
    bind: bool,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop::sample::select(vec!["regtest", "testnet"]),
        prop::sample::select(vec![vec![0], vec![1], vec![0, 1], vec![1, 0]]),
        prop::sample::select(vec![vec!["a"], vec!["b"], vec!["a", "b"], vec!["b", "a"]]),
        prop::option::of(1u64..4),
        any::<bool>(),
    )
        .prop_map(|(network, pay_to, explorers, grant, bind)| Setup { network, pay_to, explorers, grant, bind })
}

fn scopes_of(s: &Setup) -> Scopes {
    let addrs = addresses(s.network);
    let mut v = json!({
        "network": s.network,
        "pay_to": s.pay_to.iter().map(|i| addrs[*i]).collect::<Vec<_>>(),
        "price_sats": 1000,
        "explorers": s.explorers.iter().map(|c| json!({"cluster": c, "authority": "e"})).collect::<Vec<_>>(),
    });
    if let Some(n) = s.grant {
        v["grant"] = json!({"requests": n});
    }
    if s.bind {
        v["bind_to"] = json!("header:x-api-key");
    }
    Scopes::of(&Config::from_json(v.to_string().as_bytes()).unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn payments_are_shared_exactly_when_what_they_depend_on_is_the_same(a in setup(), b in setup()) {
        let (sa, sb) = (scopes_of(&a), scopes_of(&b));
        let mut pay_a: Vec<usize> = a.pay_to.clone();
        let mut pay_b: Vec<usize> = b.pay_to.clone();
        pay_a.sort();
        pay_b.sort();
        let same_chain = a.network == b.network && a.explorers == b.explorers;
        let same_payments = same_chain && pay_a == pay_b && a.grant == b.grant && a.bind == b.bind;
        prop_assert_eq!(sa.chain == sb.chain, same_chain, "{:?} / {:?}", a, b);
        prop_assert_eq!(sa.payments == sb.payments, same_payments, "{:?} / {:?}", a, b);
    }
}
