//! The payment gate end to end: real Envoy, real wasm, the regtest explorer and the demo API.

mod common;

use common::{Stack, StackOptions, MERCHANT};
use serde_json::json;

// Not on the devnet chain (the regtest genesis coinbase txid would be: it is the mainnet one).
const UNKNOWN_TXID: &str = "5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b4a";

#[test]
fn request_without_txid_gets_a_payment_challenge_and_reaches_nothing() {
    let stack = Stack::start();
    let reply = stack.get("/api/data", &[]);
    assert_eq!(reply.status, 402, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    assert_eq!(body["error"], "payment_required");
    assert_eq!(
        body["payment"],
        json!({"network": "regtest", "pay_to": [MERCHANT], "price_sats": 1000, "min_confirmations": 1,
               "max_age_secs": 86400, "header": "x-bitcoin-txid",
               "network_id": "bip122:0f9188f13cb7b2c71f2a335e3a4fc328", "amount_btc": "0.00001",
               "bip21": [format!("bitcoin:{MERCHANT}?amount=0.00001")], "manifest": "/.well-known/txgate"})
    );
    let premium = stack.get("/premium/report", &[]).json();
    assert_eq!(premium["payment"]["price_sats"], 5000);
    assert_eq!(premium["payment"]["min_confirmations"], 2);
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.explorer_calls(0), 0);
    assert_eq!(stack.stat("txgate_rejected_payment_required"), 2);
}

#[test]
fn malformed_txids_get_400_without_an_explorer_call() {
    let stack = Stack::start();
    let long = format!("{UNKNOWN_TXID}0");
    let spaced = format!("{} {}", &UNKNOWN_TXID[..32], &UNKNOWN_TXID[33..]);
    let non_hex = format!("z{}", &UNKNOWN_TXID[1..]);
    for bad in ["", "abc", &UNKNOWN_TXID[..63], long.as_str(), spaced.as_str(), non_hex.as_str()] {
        let reply = stack.get("/api/data", &[("x-bitcoin-txid", bad)]);
        assert_eq!(reply.status, 400, "{bad:?}: {}", reply.body);
        assert_eq!(reply.json()["error"], "invalid_txid");
    }
    let repeated = stack.get("/api/data", &[("x-bitcoin-txid", UNKNOWN_TXID), ("x-bitcoin-txid", UNKNOWN_TXID)]);
    assert_eq!(repeated.status, 400);
    let mut raw = b"GET /api/data HTTP/1.1\r\nHost: x\r\nx-bitcoin-txid: ".to_vec();
    raw.extend_from_slice(&[0xff; 64]);
    raw.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(stack.raw_status(&raw), 400, "non-UTF-8 header value");
    assert_eq!(stack.explorer_calls(0), 0);
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.stat("txgate_rejected_invalid_txid"), 8);
}

#[test]
fn confirmed_payment_reaches_the_backend_with_receipt_headers() {
    let stack = Stack::start();
    let txid = stack.paid_and_mined(1500);
    stack.mine(1);
    let reply = stack.get(
        "/api/data?x=1",
        &[("x-bitcoin-txid", &txid.to_uppercase()), ("x-txgate-paid-sats", "99999999"), ("x-txgate-admin", "yes")],
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0]["headers"];
    assert_eq!(headers["x-txgate-txid"], txid.as_str());
    assert_eq!(headers["x-txgate-paid-sats"], "1500");
    assert_eq!(headers["x-txgate-confirmations"], "2");
    assert!(headers.get("x-txgate-admin").is_none(), "forged header reached the backend: {headers}");
    assert_eq!(stack.stat("txgate_requests_allowed"), 1);
    assert_eq!(stack.stat("txgate_cache_hits"), 0);
    assert!(stack.explorer_calls(0) >= 1);
    // The second request is a cache hit, which forwards on its own path: forged headers must go
    // there too, and the receipt must be the payment's, not the client's.
    let forged = [
        ("x-bitcoin-txid", txid.as_str()),
        ("x-txgate-paid-sats", "99999999"),
        ("x-txgate-confirmations", "999"),
        ("x-txgate-admin", "yes"),
        ("X-Txgate-Txid", UNKNOWN_TXID),
    ];
    let reply = stack.get("/api/data?x=2", &forged);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 2);
    let headers = &seen[1]["headers"];
    assert!(headers.get("x-txgate-admin").is_none(), "forged header reached the backend on a cache hit: {headers}");
    assert_eq!(headers["x-txgate-txid"], txid.as_str(), "{headers}");
    assert_eq!(headers["x-txgate-paid-sats"], "1500", "{headers}");
    assert_eq!(headers["x-txgate-confirmations"], "2", "{headers}");
    assert_eq!(stack.stat("txgate_cache_hits"), 1);
    assert_eq!(stack.stat("txgate_requests_allowed"), 2);
}

#[test]
fn unknown_transaction_is_tx_not_found() {
    let stack = Stack::start();
    let reply = stack.paid_get("/api/data", UNKNOWN_TXID);
    assert_eq!(reply.status, 402);
    let body = reply.json();
    assert_eq!(body["error"], "tx_not_found");
    assert_eq!(body["payment"]["price_sats"], 1000);
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.stat("txgate_rejected_tx_not_found"), 1);
}

#[test]
fn mempool_payment_waits_for_its_confirmation() {
    let stack = Stack::start();
    let txid = stack.pay(1000);
    let reply = stack.paid_get("/api/data", &txid);
    assert_eq!(reply.status, 402);
    let body = reply.json();
    assert_eq!(body["error"], "insufficient_confirmations");
    assert_eq!((body["confirmations"].as_u64(), body["required"].as_u64()), (Some(0), Some(1)));
    assert!(stack.backend_seen().is_empty());
    stack.mine(1);
    assert_eq!(stack.paid_get("/api/data", &txid).status, 200);
    // The premium route wants 2 confirmations and 5000 sats.
    let reply = stack.paid_get("/premium/x", &txid);
    assert_eq!(reply.status, 402, "{}", reply.body);
    let premium = reply.json();
    assert_eq!(premium["error"], "insufficient_payment");
    assert_eq!((premium["paid_sats"].as_u64(), premium["required_sats"].as_u64()), (Some(1000), Some(5000)));
    let big = stack.paid_and_mined(5000);
    let reply = stack.paid_get("/premium/x", &big);
    assert_eq!(reply.status, 402, "{}", reply.body);
    let premium = reply.json();
    assert_eq!(premium["error"], "insufficient_confirmations");
    assert_eq!((premium["confirmations"].as_u64(), premium["required"].as_u64()), (Some(1), Some(2)));
    stack.mine(1);
    assert_eq!(stack.paid_get("/premium/x", &big).status, 200);
    assert_eq!(stack.backend_seen().len(), 2);
}

#[test]
fn zero_confirmations_accepts_mempool_payments() {
    let stack = Stack::with_plugin(json!({"min_confirmations": 0, "routes": []}));
    let txid = stack.pay(1000);
    let reply = stack.paid_get("/api/data", &txid);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(stack.backend_seen()[0]["headers"]["x-txgate-confirmations"], "0");
}

#[test]
fn underpayment_and_payment_to_someone_else_are_refused() {
    let stack = Stack::start();
    let small = stack.paid_and_mined(999);
    let reply = stack.paid_get("/api/data", &small);
    assert_eq!(reply.status, 402, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "insufficient_payment");
    assert_eq!((body["paid_sats"].as_u64(), body["required_sats"].as_u64()), (Some(999), Some(1000)));
    let elsewhere = stack.pay_to(&stack.other_address(), 100_000);
    stack.mine(1);
    let reply = stack.paid_get("/api/data", &elsewhere);
    assert_eq!(reply.status, 402, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "insufficient_payment");
    assert_eq!(body["paid_sats"], 0);
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.stat("txgate_rejected_insufficient_payment"), 2);
}

#[test]
fn payment_older_than_max_age_has_expired() {
    let stack = Stack::with_plugin(json!({"max_age": "1h"}));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let old = stack.pay(1000);
    stack.mine_at(1, now - 7200);
    let reply = stack.paid_get("/api/data", &old);
    assert_eq!(reply.status, 402, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["error"], "payment_expired");
    assert_eq!(body["max_age_secs"], 3600);
    let fresh = stack.pay(1000);
    stack.mine_at(1, now - 60);
    assert_eq!(stack.paid_get("/api/data", &fresh).status, 200);
    assert_eq!(stack.backend_seen().len(), 1);
    assert_eq!(stack.stat("txgate_rejected_payment_expired"), 1);
}

#[test]
fn free_route_needs_no_payment_and_loses_forged_headers() {
    let stack = Stack::start();
    let reply = stack.get("/free/info", &[("x-txgate-txid", UNKNOWN_TXID)]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0]["headers"].get("x-txgate-txid").is_none());
    assert_eq!(stack.explorer_calls(0), 0);
    assert_eq!(stack.stat("txgate_requests_free"), 1);
}

#[test]
fn unreachable_explorer_fails_closed_with_503_and_envoy_keeps_serving() {
    let stack = Stack::start_with(StackOptions { dead_explorer: true, ..StackOptions::default() });
    for _ in 0..3 {
        let reply = stack.paid_get("/api/data", UNKNOWN_TXID);
        assert_eq!(reply.status, 503, "{}", reply.body);
        assert_eq!(reply.json()["error"], "explorer_unavailable");
        assert_eq!(reply.header("retry-after"), Some("5"));
    }
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.get("/api/data", &[]).status, 402, "the VM is still alive");
    assert_eq!(stack.get("/free/x", &[]).status, 200);
    assert_eq!(stack.stat("txgate_rejected_explorer_unavailable"), 3);
}

#[test]
fn failure_mode_open_forwards_marked_unverified() {
    let stack = Stack::start_with(StackOptions {
        dead_explorer: true,
        plugin: json!({"failure_mode": "open", "fail_open": {"acknowledged": true}}),
        ..StackOptions::default()
    });
    let reply = stack.paid_get("/api/data", UNKNOWN_TXID);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = stack.backend_seen();
    assert_eq!(seen[0]["headers"]["x-txgate-unverified"], "explorer_unavailable");
    assert!(seen[0]["headers"].get("x-txgate-paid-sats").is_none());
    assert_eq!(stack.stat("txgate_requests_failed_open"), 1);
    // Open means "when the explorer cannot tell", never "without a payment".
    let unpaid = stack.get("/api/data", &[]);
    assert_eq!(unpaid.status, 402, "{}", unpaid.body);
    assert_eq!(unpaid.json()["error"], "payment_required");
    let malformed = stack.paid_get("/api/data", &UNKNOWN_TXID[..63]);
    assert_eq!(malformed.status, 400, "{}", malformed.body);
    assert_eq!(malformed.json()["error"], "invalid_txid");
    assert_eq!(stack.backend_seen().len(), 1);
    assert_eq!(stack.stat("txgate_requests_failed_open"), 1);
    assert_eq!(stack.stat("txgate_rejected_payment_required"), 1);
    assert_eq!(stack.stat("txgate_rejected_invalid_txid"), 1);
}

#[test]
fn explorer_faults_get_503_and_the_next_valid_request_succeeds() {
    let stack = Stack::start();
    // bad_tip first: later, a tip read earlier is still a sound lower bound and the payment passes.
    let mut faults = common::explorer_faults();
    faults.insert(0, json!({"mode": "bad_tip"}));
    // A verified payment is cached, so each fault gets a txid the filter has not seen yet.
    let txids: Vec<String> = faults.iter().map(|_| stack.pay(1000)).collect();
    stack.mine(1);
    for (fault, txid) in faults.iter().zip(&txids) {
        let txid = txid.as_str();
        stack.set_fault(0, fault.clone());
        let reply = stack.paid_get("/api/data", txid);
        // An answer too large to read is a fact about the transaction, not an explorer failure.
        let (status, error) =
            if fault["mode"] == "huge_body" { (402, "tx_too_large") } else { (503, "explorer_unavailable") };
        assert_eq!(reply.status, status, "{fault}: {}", reply.body);
        assert_eq!(reply.json()["error"], error, "{fault}");
        stack.set_fault(0, json!({"mode": "none"}));
        let reply = stack.paid_get("/api/data", txid);
        assert_eq!(reply.status, 200, "after {fault}: {}", reply.body);
    }
    assert_eq!(stack.backend_seen().len(), 12, "only the valid requests reached the backend");
    assert_eq!(stack.stat("txgate_rejected_explorer_unavailable"), 11);
    assert_eq!(stack.stat("txgate_rejected_tx_too_large"), 1);
    assert!(stack.stat("txgate_explorer_errors") >= 11);
    // The VM never died: it still answers with its own JSON. (The stack's final check also reads
    // Envoy's whole log for panic and critical lines once Envoy has stopped and flushed it.)
    assert_eq!(stack.get("/api/data", &[]).json()["error"], "payment_required");
    // With a tip known from earlier requests, a broken tip endpoint no longer blocks payments.
    let late = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "bad_tip"}));
    assert_eq!(stack.paid_get("/api/data", &late).status, 200);
}

#[test]
fn metrics_are_visible_in_envoy_stats() {
    let stack = Stack::start();
    let reply = stack.get("/api/data", &[]);
    assert_eq!(reply.status, 402, "{}", reply.body);
    assert_eq!(stack.stat("txgate_rejected_payment_required"), 1);
    assert_eq!(stack.stat("txgate_requests_allowed"), 0);
    // A request the filter lets through moves its own counter (and no other).
    assert_eq!(stack.get("/free/x", &[]).status, 200);
    assert_eq!(stack.stat("txgate_requests_free"), 1);
    assert_eq!(stack.stat("txgate_rejected_payment_required"), 1);
    let stats = stack.stats_text();
    for name in [
        "txgate_requests_allowed",
        "txgate_requests_free",
        "txgate_rejected_payment_required",
        "txgate_rejected_invalid_txid",
        "txgate_rejected_explorer_unavailable",
        "txgate_explorer_calls",
    ] {
        assert!(stats.contains(&format!("{name}: ")), "{name} missing from /stats");
    }
}
