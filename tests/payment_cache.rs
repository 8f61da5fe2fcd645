//! Paying once: the shared verified-payment cache, grants, binding, the penalty box, discounts,
//! coalescing and the in-flight cap, in a real Envoy with two workers.

mod common;

use std::time::Duration;

use common::{Stack, StackOptions};
use serde_json::{json, Value};

const UNKNOWN: &str = "00000000000000000000000000000000000000000000000000000000000000ff";

/// Two workers and the documented cache defaults (the harness turns caching off by default).
fn stack(plugin: Value) -> Stack {
    let mut plugin = plugin;
    if plugin.get("cache").is_none() {
        plugin["cache"] = json!({"max_entries": 1024});
    }
    Stack::start_with(StackOptions { plugin, concurrency: 2, ..StackOptions::default() })
}

#[test]
fn repeat_requests_make_no_explorer_call() {
    let stack = stack(json!({}));
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)]).status, 200);
    let after_first = stack.explorer_calls(0);
    assert!(after_first >= 1);
    for i in 0..1000 {
        let reply = if i % 10 == 0 {
            stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)])
        } else {
            stack.paid_get("/api/a", &txid)
        };
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    assert_eq!(stack.explorer_calls(0), after_first, "explorer calls per 1000 repeat requests must be 0");
    assert_eq!(stack.stat("txgate_cache_hits"), 1000);
    assert_eq!(stack.backend_seen().len(), 1001);
    assert_both_workers_served(&stack);
}

#[test]
fn request_grant_runs_out_exactly_across_workers() {
    let stack = stack(json!({"grant": {"requests": 5}}));
    let txid = stack.paid_and_mined(1000);
    let statuses: Vec<u16> = (0..9).map(|_| stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)]).status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 5, "{statuses:?}");
    let reply = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)]);
    assert_eq!(reply.status, 402);
    let body = reply.json();
    assert_eq!(body["error"], "payment_exhausted");
    assert_eq!(body["grant"]["requests"], 5);
    assert!(body["payment"].is_object(), "a new payment is what the client needs");
    assert_eq!(stack.backend_seen().len(), 5);
    assert_eq!(stack.stat("txgate_rejected_payment_exhausted"), 5);
    assert_both_workers_served(&stack);
}

#[test]
fn window_grant_closes_after_its_time() {
    let stack = stack(json!({"grant": {"window": "2s"}}));
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)]).status, 200);
    std::thread::sleep(Duration::from_millis(2600));
    let reply = stack.paid_get("/api/a", &txid);
    assert_eq!(reply.status, 402);
    assert_eq!(reply.json()["error"], "payment_exhausted");
}

#[test]
fn payment_is_bound_to_its_first_client_on_every_worker() {
    let stack = stack(json!({"bind_to": "header:x-api-key"}));
    let txid = stack.paid_and_mined(1000);
    let as_client = |key: &str| stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid), ("x-api-key", key)]);
    assert_eq!(as_client("alice").status, 200);
    for _ in 0..4 {
        let thief = as_client("mallory");
        assert_eq!(thief.status, 402);
        assert_eq!(thief.json()["error"], "payment_bound_to_other_client");
        assert_eq!(as_client("alice").status, 200);
    }
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 5);
    assert!(seen.iter().all(|r| r["headers"]["x-api-key"] == "alice"));
    assert_both_workers_served(&stack);
}

/// The cross-worker claims only mean something if both workers took connections.
fn assert_both_workers_served(stack: &Stack) {
    let per_worker = stack.worker_connections();
    assert_eq!(per_worker.len(), 2, "{per_worker:?}");
    assert!(per_worker.iter().all(|n| *n > 0), "connections per worker: {per_worker:?}");
}

#[test]
fn penalty_box_bans_without_explorer_calls_and_lifts() {
    let stack = stack(json!({
        "penalty": {"identity": "header:x-client", "max_strikes": 3, "find_time": "1m", "ban_time": "2s"},
        "cache": {"max_entries": 1024, "not_found_ttl": "0s"}
    }));
    let good = stack.paid_and_mined(1000);
    let bogus = |i: u32| format!("{:064x}", 0xdead_0000u64 + u64::from(i));
    for i in 0..3 {
        let reply = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &bogus(i)), ("x-client", "flooder")]);
        assert_eq!(reply.json()["error"], "tx_not_found");
    }
    let calls_at_ban = stack.explorer_stats(0)["tx"].as_u64().unwrap();
    for i in 3..20 {
        let reply = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &bogus(i)), ("x-client", "flooder")]);
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert_eq!(reply.json()["error"], "client_banned");
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry));
    }
    let banned_valid = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "flooder")]);
    assert_eq!(banned_valid.status, 429, "a ban covers every txid the client sends");
    assert_eq!(stack.explorer_stats(0)["tx"].as_u64().unwrap(), calls_at_ban, "no explorer call while banned");
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "honest")]).status, 200);
    std::thread::sleep(Duration::from_millis(2200));
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "flooder")]).status, 200);
    assert_eq!(stack.stat("txgate_penalty_bans"), 1);
    assert!(stack.stat("txgate_penalty_strikes") >= 3);
}

#[test]
fn discount_lowers_the_price_for_clients_following_the_policy() {
    let stack = stack(json!({"discounts": [
        {"name": "policy-v2", "percent": 20, "header": {"name": "x-security-policy", "value": "v2", "set_by_trusted_filter": true}}
    ]}));
    let challenge = stack.get("/api/a", &[("x-security-policy", "v2")]).json();
    assert_eq!(challenge["payment"]["price_sats"], 800);
    assert_eq!(stack.get("/api/a", &[]).json()["payment"]["price_sats"], 1000);
    let txid = stack.paid_and_mined(800);
    let full_price = stack.paid_get("/api/a", &txid).json();
    assert_eq!(full_price["error"], "insufficient_payment");
    assert_eq!(full_price["required_sats"], 1000);
    let reply = stack.get("/api/a", &[("x-bitcoin-txid", &txid), ("x-security-policy", "v2")]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(stack.backend_seen()[0]["headers"]["x-txgate-discount"], "policy-v2:20");
}

#[test]
fn concurrent_requests_for_one_txid_share_one_explorer_call() {
    let stack = Stack::start_with(StackOptions {
        plugin: json!({"cache": {"max_entries": 64}}),
        concurrency: 1,
        ..StackOptions::default()
    });
    let txid = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 400}));
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> =
            (0..8).map(|_| s.spawn(|| stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)]).status)).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(statuses, vec![200; 8]);
    assert_eq!(stack.explorer_stats(0)["tx"], 1, "{}", stack.explorer_stats(0));
}

#[test]
fn negative_answers_are_cached_and_a_burst_of_new_txids_reads_the_tip_once() {
    let stack = stack(json!({"cache": {"max_entries": 64, "not_found_ttl": "30s", "tip_ttl": "30s"}}));
    for _ in 0..5 {
        assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", UNKNOWN)]).json()["error"], "tx_not_found");
    }
    assert_eq!(stack.explorer_stats(0)["tx"], 1, "one call per distinct txid per negative-cache period");
    let txids: Vec<String> = (0..5).map(|_| stack.pay(1000)).collect();
    stack.mine(1);
    stack.reset_explorer_stats(0);
    for txid in &txids {
        assert_eq!(stack.paid_get("/api/a", txid).status, 200);
    }
    // The new block is above the tip read earlier, so the burst reads it once, then shares it.
    assert_eq!(stack.explorer_stats(0)["tip"], 1, "{}", stack.explorer_stats(0));
    assert_eq!(stack.explorer_stats(0)["tx"], 5);
}

#[test]
fn a_flood_of_bogus_txids_does_not_evict_verified_payments() {
    let stack = stack(json!({"cache": {"max_entries": 16, "not_found_ttl": "30s"}}));
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    for i in 0..200u64 {
        let reply = stack.paid_get("/api/a", &format!("{:064x}", 0xbad_0000 + i * 7919));
        assert_eq!(reply.status, 402);
    }
    let calls = stack.explorer_calls(0);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    assert_eq!(stack.explorer_calls(0), calls, "still served from the cache");
}

#[test]
fn too_many_lookups_in_flight_are_turned_away_with_retry_after() {
    let stack = Stack::start_with(StackOptions {
        plugin: json!({"max_inflight": 1, "timeout": "2s"}),
        ..StackOptions::default()
    });
    let first = stack.pay(1000);
    let second = stack.pay(1000);
    stack.mine(1);
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 800}));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| stack.get_fresh("/api/a", &[("x-bitcoin-txid", &first)]));
        std::thread::sleep(Duration::from_millis(200));
        let b = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &second)]);
        (a.join().unwrap(), b)
    });
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 503);
    assert_eq!(b.json()["error"], "verification_busy");
    assert_eq!(b.header("retry-after"), Some("1"));
}
