//! Native tests of the core through the crate's public API: behaviour the unit tests in `src/`
//! leave open (found by the audit or by `make mutants`). The gate tests bring their own shared
//! store (the crate's in-memory store is test-only inside the crate).

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::{json, Value};
use txgate::config::Config;
use txgate::duration::{parse_duration, DurationError};
use txgate::esplora::{parse_tip_height, ExplorerError, MAX_BODY_BYTES};
use txgate::gate::{Gate, LookupResult, RequestFacts, Stored, Verdict};
use txgate::rejection::{PlainBodies, Rejection};
use txgate::store::{SharedStore, StoreError, UpdateError};

const PAY_TO: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";
const TXID: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
const NOW_MS: u64 = 1_700_000_000_000;

/// Shared data with the host's semantics: versions start at 1, a set needs the current version
/// (0 = unconditional).
#[derive(Default)]
struct Store(RefCell<HashMap<String, (Vec<u8>, u32)>>);

impl SharedStore for Store {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        self.0.borrow().get(key).cloned()
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut map = self.0.borrow_mut();
        let version = map.get(key).map_or(0, |(_, v)| *v);
        if map.contains_key(key) && cas != 0 && cas != version {
            return Err(StoreError::CasMismatch);
        }
        map.insert(key.to_string(), (value.to_vec(), version + 1));
        Ok(())
    }
}

fn gate(extra: Value) -> (Gate, Store) {
    let mut config = json!({
        "network": "regtest", "pay_to": [PAY_TO], "price_sats": 1000,
        "explorers": [{"cluster": "e", "authority": "e"}],
        "routes": [{"prefix": "/free", "free": true}]
    });
    for (k, v) in extra.as_object().unwrap() {
        config[k] = v.clone();
    }
    let gate = Gate::new(Config::from_json(config.to_string().as_bytes()).unwrap());
    let store = Store::default();
    gate.create_slots(&store);
    (gate, store)
}

fn admit(gate: &Gate, store: &Store, txids: &[&str]) -> Verdict {
    let facts = RequestFacts {
        path: "/api",
        headers: &[],
        principal: None,
        source_address: None,
        source_trusted: true,
        claims: &[],
        now_ms: NOW_MS,
    };
    let values: Vec<&[u8]> = txids.iter().map(|t| t.as_bytes()).collect();
    gate.admit(store, &facts, &values).0
}

fn rejection(v: &Verdict) -> &Rejection {
    match v {
        Verdict::Reject { rejection, .. } => rejection,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn failure_mode_open_still_refuses_requests_without_a_valid_txid() {
    for mode in ["closed", "open"] {
        let (gate, store) =
            gate(json!({"failure_mode": mode, "fail_open": (mode == "open").then(|| json!({"acknowledged": true}))}));
        assert_eq!(rejection(&admit(&gate, &store, &[])), &Rejection::PaymentRequired, "{mode}");
        assert_eq!(rejection(&admit(&gate, &store, &["abc"])), &Rejection::InvalidTxid, "{mode}");
        assert_eq!(rejection(&admit(&gate, &store, &[TXID, TXID])), &Rejection::InvalidTxid, "{mode}");
    }
    // Only a failed lookup of a well-formed txid is let through, and only in open mode.
    let (open, store) = gate(json!({"failure_mode": "open", "fail_open": {"acknowledged": true}}));
    let Verdict::Lookup(ticket) = admit(&open, &store, &[TXID]) else { panic!("expected a lookup") };
    let failed = LookupResult { tx: Err(ExplorerError::NoResponse), tip: None, explorer: 0 };
    let stored = open.remember(&store, &ticket.txid, None, &failed, NOW_MS);
    assert_eq!(stored, Stored::Elsewhere, "a failed lookup is not cached");
    assert_eq!(open.resolve(&store, ticket, &failed, stored, NOW_MS).0, Verdict::AllowUnverified);
    assert!(matches!(admit(&open, &store, &[TXID]), Verdict::Lookup(_)), "asked again next time");
}

#[test]
fn an_explorer_body_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
    let mut body = vec![b' '; MAX_BODY_BYTES - 3];
    body.extend_from_slice(b"812");
    assert_eq!(parse_tip_height(200, &body), Ok(812));
    body.push(b'\n');
    assert_eq!(parse_tip_height(200, &body), Err(ExplorerError::TooLarge(MAX_BODY_BYTES + 1)));
}

#[test]
fn a_tip_height_that_is_not_a_number_says_so() {
    for body in ["", "  ", "12a", "-1", "0x10"] {
        match parse_tip_height(200, body.as_bytes()) {
            Err(ExplorerError::Malformed(why)) => assert!(why.ends_with("is not a number"), "{body:?}: {why}"),
            other => panic!("{body:?}: {other:?}"),
        }
    }
    let too_big = parse_tip_height(200, b"18446744073709551616");
    assert_eq!(too_big, Err(ExplorerError::Malformed("tip height is out of range".to_string())));
}

#[test]
fn errors_explain_themselves() {
    assert_eq!(ExplorerError::NoResponse.to_string(), "no response (reset, refused or timed out)");
    assert_eq!(ExplorerError::Malformed("x".to_string()).to_string(), "malformed body: x");
    assert_eq!(ExplorerError::WrongTxid("ab".to_string()).to_string(), "answer is about another transaction (ab)");
    assert!(ExplorerError::Status(502).to_string().contains("502"));
    assert!(ExplorerError::TooLarge(9).to_string().contains('9'));
    assert_eq!(UpdateError::Missing.to_string(), "shared-data key missing");
    assert_eq!(UpdateError::Contended.to_string(), "shared-data key still contended after retries");
    assert_eq!(parse_duration("5"), Err(DurationError::MissingUnit));
    assert_eq!(
        DurationError::MissingUnit.to_string(),
        "the unit is missing: expected a duration such as \"250ms\", \"2s\", \"5m\" or \"24h\""
    );
}

/// Every rejection, with detail values that cannot be mistaken for one another.
fn every_rejection() -> Vec<Rejection> {
    vec![
        Rejection::PaymentRequired,
        Rejection::InvalidTxid,
        Rejection::TxNotFound,
        Rejection::InsufficientPayment { paid_sats: 11, required_sats: 12 },
        Rejection::InsufficientConfirmations { confirmations: 13, required: 14 },
        Rejection::PaymentExpired { block_time: 15, max_age_secs: 16 },
        Rejection::ExplorerUnavailable,
        Rejection::PaymentExhausted { requests: Some(17), window_secs: Some(18) },
        Rejection::BoundToOtherClient,
        Rejection::ClientBanned { retry_after_secs: 19 },
        Rejection::VerificationBusy,
        Rejection::Internal,
        Rejection::InvalidPath,
        Rejection::TxTooLarge,
        Rejection::IdentityRequired { identity: "header x-api-key".to_string() },
        Rejection::LedgerFull,
        Rejection::ForwardedForUntrusted,
        Rejection::ProofInvalid,
        Rejection::ExplorerDisagreement,
        Rejection::PaymentReorged,
        Rejection::LedgerUnavailable,
        Rejection::StatusLimited { retry_after_secs: 60 },
    ]
}

/// The README's "Error codes" table: (status, extra fields, Retry-After) by `error` code. The
/// extra fields are the backquoted names outside parentheses; a `Retry-After` without a number
/// is the `retry_after_secs` of the body.
fn readme_error_codes() -> HashMap<String, (u32, Vec<String>, Option<String>)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme.split("### Error codes").nth(1).unwrap();
    let backquoted = |text: &str| -> Vec<String> { text.split('`').skip(1).step_by(2).map(str::to_string).collect() };
    let mut rows = HashMap::new();
    for line in table.lines().skip_while(|l| !l.starts_with('|')).take_while(|l| l.starts_with('|')).skip(2) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (status, code, extra) = (cells[1].parse().unwrap(), backquoted(cells[2]).remove(0), cells[3]);
        let mut outside = String::new();
        let mut depth = 0;
        for c in extra.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ if depth == 0 => outside.push(c),
                _ => {}
            }
        }
        let retry_after = extra.contains("Retry-After").then(|| {
            let digits: String =
                extra.split("Retry-After").nth(1).unwrap().chars().filter(char::is_ascii_digit).collect();
            digits
        });
        rows.insert(code, (status, backquoted(&outside), retry_after));
    }
    rows
}

#[test]
fn every_rejection_answers_as_the_readme_table_says() {
    let config = Config::from_json(
        json!({"network": "regtest", "pay_to": [PAY_TO], "price_sats": 1000, "explorers": [{"cluster": "e", "authority": "e"}]})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    let table = readme_error_codes();
    let rejections = every_rejection();
    assert_eq!(table.len(), rejections.len(), "one README row per rejection");
    let mut messages = Vec::new();
    for r in &rejections {
        let code = r.code();
        let (status, fields, retry_after) = table.get(code).unwrap_or_else(|| panic!("{code} is not in the README"));
        assert_eq!(r.status(), *status, "{code}");
        let body: Value = serde_json::from_str(&r.body(&config, Some(&config.default_policy), None)).unwrap();
        assert_eq!(body["error"], code);
        let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected: Vec<&str> = fields.iter().map(String::as_str).chain(["error", "message"]).collect();
        expected.sort_unstable();
        assert_eq!(keys, expected, "{code}: the body's fields");
        let message = body["message"].as_str().unwrap().to_string();
        assert!(message.len() > 20, "{code}: {message:?}");
        messages.push(message);
        let headers = r.headers();
        assert!(headers.contains(&("cache-control", "no-store".to_string())), "{code}: never cached");
        let retry: Vec<&String> = headers.iter().filter(|(name, _)| *name == "retry-after").map(|(_, v)| v).collect();
        match (retry_after.as_deref(), r) {
            (None, _) => assert!(retry.is_empty(), "{code}: {retry:?}"),
            (
                Some(""),
                Rejection::ClientBanned { retry_after_secs } | Rejection::StatusLimited { retry_after_secs },
            ) => {
                assert_eq!(retry, [&retry_after_secs.to_string()]);
                assert_eq!(body["retry_after_secs"], *retry_after_secs);
            }
            (Some(secs), _) => assert_eq!(retry, [secs], "{code}"),
        }
    }
    messages.sort();
    messages.dedup();
    assert_eq!(messages.len(), rejections.len(), "each rejection says what is wrong in its own words");
}

/// The glue answers a rejection without a challenge from `PlainBodies`: byte for byte what
/// rendering it would give, for every rejection and for a configuration with its own header name;
/// rendered once for those that carry nothing of the request, per request for the rest.
#[test]
fn pre_rendered_bodies_are_the_rendered_ones() {
    let config = Config::from_json(
        json!({"network": "regtest", "pay_to": [PAY_TO], "price_sats": 1000, "header": "x-paid-with",
               "explorers": [{"cluster": "e", "authority": "e"}]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let plain = PlainBodies::render(&config);
    let mut borrowed = Vec::new();
    for r in every_rejection() {
        let body = plain.body(&r, &config);
        assert_eq!(body, r.body_with(&config, None), "{}", r.code());
        if matches!(body, std::borrow::Cow::Borrowed(_)) {
            borrowed.push(r.code());
        }
    }
    assert!(plain.body(&Rejection::InvalidTxid, &config).contains("x-paid-with"));
    let with_fields = [
        "insufficient_payment",
        "insufficient_confirmations",
        "payment_expired",
        "payment_exhausted",
        "client_banned",
        "identity_required",
        "status_rate_limited",
    ];
    let expected: Vec<&str> =
        every_rejection().iter().map(Rejection::code).filter(|c| !with_fields.contains(c)).collect();
    assert_eq!(borrowed, expected, "every rejection without fields is pre-rendered");
}

#[test]
fn rejection_details_carry_their_values() {
    let config = Config::from_json(
        json!({"network": "regtest", "pay_to": [PAY_TO], "price_sats": 1000, "explorers": [{"cluster": "e", "authority": "e"}],
               "header": "x-paid-with"})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let body =
        |r: Rejection| -> Value { serde_json::from_str(&r.body(&config, Some(&config.default_policy), None)).unwrap() };
    assert_eq!(body(Rejection::InvalidTxid)["header"], "x-paid-with");
    assert!(body(Rejection::PaymentRequired)["message"].as_str().unwrap().contains("x-paid-with"));
    assert_eq!(
        body(Rejection::PaymentExhausted { requests: Some(17), window_secs: None })["grant"],
        json!({"requests": 17, "window_secs": null})
    );
    assert_eq!(
        body(Rejection::IdentityRequired { identity: "an mTLS client certificate".into() })["identity"],
        "an mTLS client certificate"
    );
    let internal: Value = serde_json::from_str(&Rejection::Internal.body_without_config()).unwrap();
    assert_eq!(internal["error"], "internal_error");
    assert_eq!(
        internal["message"],
        body(Rejection::Internal)["message"],
        "without a configuration the same words as with one"
    );
}
