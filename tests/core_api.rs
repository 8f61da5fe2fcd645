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
use txgate::rejection::Rejection;
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
