//! Paying once: the shared verified-payment cache, grants, binding, the penalty box, discounts,
//! coalescing and the in-flight cap, in a real Envoy with two workers.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 1001);
    for (i, request) in seen.iter().enumerate() {
        let headers = &request["headers"];
        assert_eq!(headers["x-txgate-paid-sats"], "1000", "request {i}: {headers}");
        assert_eq!(headers["x-txgate-txid"], txid.as_str(), "request {i}: {headers}");
    }
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

/// Waits for the start of a new unix second (within its first 100 ms). Windows and bans are
/// counted in whole unix seconds, so a "2s" one started at x.05 s lasts 1.95 s: starting near the
/// second's start lets a test pin both sides of the boundary.
fn at_the_start_of_a_second() -> Instant {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut last = u64::MAX;
    loop {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        // A fresh second, seen arriving (not one we were already 100 ms into).
        if now.subsec_millis() < 100 && last != u64::MAX && last != now.as_secs() {
            return Instant::now();
        }
        last = now.as_secs();
        assert!(Instant::now() < deadline, "the clock does not move");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn sleep_until(t: Instant) {
    std::thread::sleep(t.saturating_duration_since(Instant::now()));
}

#[test]
fn window_grant_closes_after_its_time() {
    let stack = stack(json!({"grant": {"window": "2s"}}));
    let txid = stack.paid_and_mined(1000);
    // No injectable clock: both sides of the boundary are pinned with real time instead.
    let start = at_the_start_of_a_second();
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &txid)]).status, 200);
    sleep_until(start + Duration::from_millis(1200));
    let still_open = stack.paid_get("/api/a", &txid);
    assert_eq!(still_open.status, 200, "the window is open 1.2 s after its start: {}", still_open.body);
    sleep_until(start + Duration::from_millis(2600));
    let reply = stack.paid_get("/api/a", &txid);
    assert_eq!(reply.status, 402);
    assert_eq!(reply.json()["error"], "payment_exhausted");
    assert_eq!(reply.json()["grant"]["window_secs"], 2);
    assert_eq!(stack.backend_seen().len(), 3);
    assert_eq!(stack.stat("txgate_rejected_payment_exhausted"), 1);
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
    let start = at_the_start_of_a_second();
    for i in 0..3 {
        let reply = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &bogus(i)), ("x-client", "flooder")]);
        assert_eq!(reply.status, 402, "{}", reply.body);
        assert_eq!(reply.json()["error"], "tx_not_found");
    }
    let calls_at_ban = stack.explorer_stats(0)["tx"].as_u64().unwrap();
    for i in 3..20 {
        let reply = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &bogus(i)), ("x-client", "flooder")]);
        assert_eq!(reply.status, 429, "{}", reply.body);
        assert_eq!(reply.json()["error"], "client_banned");
        let retry: u64 = reply.header("retry-after").unwrap().parse().unwrap();
        if i == 3 {
            assert_eq!(retry, 2, "the whole ban is left right after it started");
        }
        assert!((1..=2).contains(&retry));
    }
    let banned_valid = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "flooder")]);
    assert_eq!(banned_valid.status, 429, "a ban covers every txid the client sends");
    let banned_unpaid = stack.get_fresh("/api/a", &[("x-client", "flooder")]);
    assert_eq!(banned_unpaid.status, 429, "and its requests without one: {}", banned_unpaid.body);
    assert_eq!(stack.explorer_stats(0)["tx"].as_u64().unwrap(), calls_at_ban, "no explorer call while banned");
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "honest")]).status, 200);
    sleep_until(start + Duration::from_millis(1200));
    let still = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "flooder")]);
    assert_eq!(still.status, 429, "still banned 1.2 s into a 2 s ban: {}", still.body);
    sleep_until(start + Duration::from_millis(2200));
    assert_eq!(stack.get_fresh("/api/a", &[("x-bitcoin-txid", &good), ("x-client", "flooder")]).status, 200);
    let seen = stack.backend_seen();
    let clients: Vec<&str> = seen.iter().map(|r| r["headers"]["x-client"].as_str().unwrap()).collect();
    assert_eq!(clients, ["honest", "flooder"], "only the honest request and the one after the ban");
    assert_eq!(stack.stat("txgate_penalty_bans"), 1);
    assert_eq!(stack.stat("txgate_penalty_strikes"), 3);
    assert_eq!(stack.stat("txgate_rejected_client_banned"), 20);
    assert_eq!(stack.stat("txgate_rejected_tx_not_found"), 3);
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
    let full_price = stack.paid_get("/api/a", &txid);
    assert_eq!(full_price.status, 402, "{}", full_price.body);
    assert_eq!(full_price.json()["error"], "insufficient_payment");
    assert_eq!(full_price.json()["required_sats"], 1000);
    assert!(stack.backend_seen().is_empty());
    let reply = stack.get("/api/a", &[("x-bitcoin-txid", &txid), ("x-security-policy", "v2")]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["headers"]["x-txgate-discount"], "policy-v2:20");
    assert_eq!(seen[0]["headers"]["x-txgate-paid-sats"], "800");
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
    // All 8 waited on that one call: none was answered from the cache after it.
    assert_eq!(stack.stat("txgate_cache_hits"), 0);
    assert_eq!(stack.stat("txgate_requests_allowed"), 8);
    assert_eq!(stack.backend_seen().len(), 8);
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

/// A txid made of well-mixed bytes (splitmix64 of `i`), so that a set of them spreads over
/// every cache slot, as real txids do.
fn spread_txid(i: u64) -> String {
    let mut state = i.wrapping_mul(4).wrapping_add(0x5eed);
    (0..4)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

#[test]
fn a_flood_of_bogus_txids_does_not_evict_verified_payments() {
    let stack = stack(json!({"cache": {"max_entries": 16, "not_found_ttl": "30s"}}));
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    let tx_calls = |stack: &Stack| stack.explorer_stats(0)["tx"].as_u64().unwrap();
    let before = tx_calls(&stack);
    // 200 distinct txids with 2 candidate slots each over 16 slots: every slot, the payment's
    // included, is a candidate of about 25 of them (missing one slot entirely: p < 1e-11).
    let bogus: Vec<String> = (0..200).map(spread_txid).collect();
    for id in &bogus {
        let reply = stack.paid_get("/api/a", id);
        assert_eq!(reply.status, 402, "{}", reply.body);
        assert_eq!(reply.json()["error"], "tx_not_found");
    }
    // Each was really looked up and stored (not refused before reaching the cache).
    assert_eq!(tx_calls(&stack), before + 200);
    assert_eq!(stack.stat("txgate_rejected_tx_not_found"), 200);
    let calls = stack.explorer_calls(0);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    assert_eq!(stack.explorer_calls(0), calls, "still served from the cache");
    assert_eq!(stack.stat("txgate_cache_hits"), 1);
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
        // Wait until A's lookup is at the explorer, so A really holds the only slot.
        let deadline = Instant::now() + Duration::from_secs(5);
        while stack.explorer_stats(0)["tx"] != 1 {
            assert!(Instant::now() < deadline, "A's lookup never reached the explorer");
            std::thread::sleep(Duration::from_millis(10));
        }
        let b = stack.get_fresh("/api/a", &[("x-bitcoin-txid", &second)]);
        (a.join().unwrap(), b)
    });
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 503);
    assert_eq!(b.json()["error"], "verification_busy");
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(stack.backend_seen().len(), 1);
    assert_eq!(stack.stat("txgate_rejected_verification_busy"), 1);
    assert_eq!(stack.explorer_stats(0)["tx"], 1, "B made no explorer call");
}

/// With the documented cache defaults (a mempool answer kept for 30 s, the tip for 5 s), a
/// mempool payment is accepted as soon as any lookup sees the block that confirms it.
#[test]
fn a_cached_mempool_payment_is_accepted_once_a_new_block_is_seen() {
    let stack = Stack::start_with(StackOptions {
        plugin: json!({"cache": {"max_entries": 64}}),
        concurrency: 1,
        ..StackOptions::default()
    });
    // A first payment makes the filter read the tip. (Without a known tip, a mempool answer that
    // arrives before the parallel tip answer is stored as seen at tip 0 and never served from the
    // cache: a filter quirk this test steps around, noted in TESTING.md.)
    let first = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/data", &first).status, 200);
    let txid = stack.pay(1000);
    let reply = stack.paid_get("/api/data", &txid);
    assert_eq!(reply.status, 402, "{}", reply.body);
    assert_eq!(reply.json()["error"], "insufficient_confirmations");
    let again = stack.paid_get("/api/data", &txid);
    assert_eq!(again.json()["error"], "insufficient_confirmations");
    assert_eq!(stack.explorer_stats(0)["tx"], 2, "the mempool answer is cached");
    // Another payment in the same block: its lookup sees a block above the known tip.
    let other = stack.pay(1000);
    stack.mine(1);
    assert_eq!(stack.paid_get("/api/data", &other).status, 200);
    let reply = stack.paid_get("/api/data", &txid);
    assert_eq!(reply.status, 200, "the cached mempool answer gave way to the new block: {}", reply.body);
    assert_eq!(stack.backend_seen().len(), 3);
    assert_eq!(stack.stat("txgate_rejected_insufficient_confirmations"), 2);
}
