//! `verify: "spv"` end to end (issue 10): real Envoy with the release wasm, two devnet explorer
//! instances on one regtest chain, each with its own lying fault. A payment counts only when the
//! raw transaction hashes to the txid, its merkle branch folds to a header's merkle root, the
//! headers link and carry proof of work no easier than the floor, and the quorum explorer reports
//! the same block hash at the top height used.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Reply, Stack, StackOptions, MERCHANT};
use serde_json::{json, Value};

/// A floor above regtest's limit (207fffff): honest blocks in these tests are mined at it
/// (about 256 hashes each), forged ones at regtest's easy bits are below it.
const FLOOR: &str = "2000ffff";

fn stack(plugin: Value) -> Stack {
    Stack::start_with(StackOptions { plugin, explorers: 2, ..StackOptions::default() })
}

fn spv(extra: Value) -> Stack {
    let mut plugin = json!({"verify": "spv"});
    if let (Some(p), Some(e)) = (plugin.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    stack(plugin)
}

/// POST/GET on an explorer instance's control API (the harness's own helper is private).
fn control(stack: &Stack, explorer: usize, method: &str, path: &str, body: Option<Value>) -> Value {
    let url = format!("http://127.0.0.1:{}{path}", stack.explorer_ports[explorer]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let mut response = match body {
        Some(b) => agent.post(&url).send_json(&b),
        None => agent.get(&url).call(),
    }
    .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = response.body_mut().read_to_string().unwrap_or_default();
    assert_eq!(response.status().as_u16(), 200, "{method} {path}: {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn mine_bits(stack: &Stack, blocks: u64, bits: &str) -> Value {
    control(stack, 0, "POST", "/control/mine", Some(json!({"blocks": blocks, "bits": bits})))
}

fn height(stack: &Stack) -> u64 {
    control(stack, 0, "GET", "/control/info", None)["height"].as_u64().expect("height")
}

/// Esplora calls an explorer instance received since its counters were reset, by path.
fn calls(stack: &Stack, explorer: usize) -> BTreeMap<String, u64> {
    let stats = stack.explorer_stats(explorer);
    stats["by_path"].as_object().expect("by_path").iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0))).collect()
}

fn reset_calls(stack: &Stack) {
    stack.reset_explorer_stats(0);
    stack.reset_explorer_stats(1);
}

fn expect(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    if !code.is_empty() {
        assert_eq!(reply.json()["error"], code, "{}", reply.body);
    }
}

fn map(pairs: &[(String, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().cloned().collect()
}

#[test]
fn honest_payment_is_proven_in_four_calls_and_headers_are_cached() {
    let stack = spv(json!({}));
    let first = stack.pay(5000);
    let second = stack.pay(1000);
    stack.mine(1);
    let h = height(&stack);
    reset_calls(&stack);

    let reply = stack.paid_get("/api/data", &first);
    expect(&reply, 200, "");
    assert_eq!(reply.json()["txgate"]["confirmations"], 1, "the proven depth");
    // Round 1: the raw transaction and its merkle proof; round 2: the headers from the payment's
    // block up (one /blocks page), and the second explorer's hash at the top height.
    assert_eq!(
        calls(&stack, 0),
        map(&[
            (format!("/api/tx/{first}/hex"), 1),
            (format!("/api/tx/{first}/merkle-proof"), 1),
            (format!("/api/blocks/{h}"), 1),
        ])
    );
    assert_eq!(calls(&stack, 1), map(&[(format!("/api/block-height/{h}"), 1)]));
    // The warm path: no explorer call.
    expect(&stack.paid_get("/api/data", &first), 200, "");
    assert_eq!(stack.explorer_calls(0) + stack.explorer_calls(1), 4);

    // Another payment in the same block: its header is in the worker's cache, no /blocks call.
    reset_calls(&stack);
    expect(&stack.paid_get("/api/data", &second), 200, "");
    assert_eq!(
        calls(&stack, 0),
        map(&[(format!("/api/tx/{second}/hex"), 1), (format!("/api/tx/{second}/merkle-proof"), 1)])
    );
    assert_eq!(calls(&stack, 1), map(&[(format!("/api/block-height/{h}"), 1)]));
    assert_eq!(stack.stat("txgate_spv_header_cache_hits"), 1);

    // /premium needs 2 confirmations: only one block is proven, so 402 until the next block.
    let short = stack.paid_get("/premium/x", &first);
    expect(&short, 402, "insufficient_confirmations");
    assert_eq!((short.json()["confirmations"].as_u64(), short.json()["required"].as_u64()), (Some(1), Some(2)));
    stack.mine(1);
    let deep = stack.paid_get("/premium/x", &first);
    expect(&deep, 200, "");
    assert_eq!(deep.json()["txgate"]["confirmations"], 2);
    assert_eq!(stack.stat("txgate_spv_invalid_proofs"), 0);

    // max_age (24h) is judged by the proven header's time: a block stamped two days ago.
    let old = stack.pay(1000);
    let two_days_ago = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() - 172_800;
    stack.mine_at(1, two_days_ago);
    let expired = stack.paid_get("/api/data", &old);
    expect(&expired, 402, "payment_expired");
    assert_eq!(expired.json()["block_time"], two_days_ago);
}

#[test]
fn json_amounts_do_not_matter_under_spv_but_fool_explorer_mode() {
    // The same lie against both modes: explorer 0's JSON adds a bitcoin to every output.
    let proven = spv(json!({}));
    let trusting = stack(json!({"verify": "explorer"}));
    for s in [&proven, &trusting] {
        s.set_fault(0, json!({"mode": "json_amount_lie"}));
    }
    let under_spv = proven.pay(500);
    proven.mine(1);
    let under_explorer = trusting.pay(500);
    trusting.mine(1);
    reset_calls(&trusting);

    let refused = proven.paid_get("/api/data", &under_spv);
    expect(&refused, 402, "insufficient_payment");
    assert_eq!(refused.json()["paid_sats"], 500, "read from the raw transaction");
    // Explorer mode believes the JSON: 500 sats buy a 1000-sat request. One /tx call, plus its
    // tip (read once or twice here, as tip_ttl is 0s in these tests; shared per tip_ttl otherwise).
    expect(&trusting.paid_get("/api/data", &under_explorer), 200, "");
    let seen = calls(&trusting, 0);
    assert_eq!(seen.get(&format!("/api/tx/{under_explorer}")), Some(&1), "{seen:?}");
    assert!((1..=2).contains(seen.get("/api/blocks/tip/height").unwrap_or(&0)), "{seen:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    // An honest payment still passes under spv with the liar answering first.
    let honest = proven.pay(1000);
    proven.mine(1);
    expect(&proven.paid_get("/api/data", &honest), 200, "");
}

#[test]
fn lies_about_the_transaction_fail_over_to_the_honest_explorer() {
    let stack = spv(json!({}));
    let mut invalid = 0;
    for fault in ["raw_tx_mismatch", "bad_merkle_branch"] {
        stack.set_fault(0, json!({"mode": fault}));
        let txid = stack.pay(1000);
        stack.mine(1);
        reset_calls(&stack);
        expect(&stack.paid_get("/api/data", &txid), 200, "");
        invalid += 1;
        assert_eq!(stack.stat("txgate_spv_invalid_proofs"), invalid, "{fault}: explorer 0's proof refused");
        // Explorer 1 proved it; explorer 0 (honest about blocks) was the quorum.
        let second = calls(&stack, 1);
        assert_eq!(second.get(&format!("/api/tx/{txid}/hex")), Some(&1), "{fault}: {second:?}");
        assert!(stack.envoy_logged("served a proof for"), "{fault}: logged");

        // Both explorers lying: nothing verifies, 503 proof_invalid (never an unverified pass).
        stack.set_fault(1, json!({"mode": fault}));
        let txid = stack.pay(1000);
        stack.mine(1);
        let refused = stack.paid_get("/api/data", &txid);
        expect(&refused, 503, "proof_invalid");
        invalid += 2;
        assert_eq!(stack.stat("txgate_rejected_proof_invalid"), if fault == "raw_tx_mismatch" { 1 } else { 2 });
        stack.set_fault(0, json!({"mode": "none"}));
        stack.set_fault(1, json!({"mode": "none"}));
        // The circuit breakers (3 failures) are still closed: the next payment is proven.
        let txid = stack.pay(1000);
        stack.mine(1);
        expect(&stack.paid_get("/api/data", &txid), 200, "");
    }
    assert!(stack.backend_seen().len() >= 4);
}

#[test]
fn headers_below_the_floor_and_forged_chains_are_refused() {
    let stack = spv(json!({"spv_floor_bits": FLOOR}));
    // Honest work at the floor passes.
    let honest = stack.pay(1000);
    mine_bits(&stack, 1, FLOOR);
    expect(&stack.paid_get("/api/data", &honest), 200, "");
    // A block at regtest's easy bits, served honestly by both explorers, is below the floor.
    let easy = stack.pay(1000);
    stack.mine(1);
    expect(&stack.paid_get("/api/data", &easy), 503, "proof_invalid");
    let invalid = stack.stat("txgate_spv_invalid_proofs");
    assert_eq!(invalid, 2, "both explorers' headers refused");

    // header_below_floor: explorer 0 serves the chain re-mined at easy bits. Its proof is
    // refused, explorer 1 proves the payment, but explorer 0 then reports another block hash at
    // that height: the explorers disagree, and that is never an admit.
    let paid = stack.pay(1000);
    mine_bits(&stack, 1, FLOOR);
    stack.set_fault(0, json!({"mode": "header_below_floor"}));
    let refused = stack.paid_get("/api/data", &paid);
    expect(&refused, 503, "explorer_disagreement");
    assert_eq!(stack.stat("txgate_spv_invalid_proofs"), invalid + 1);
    assert!(stack.envoy_logged("explorers disagree"), "{}", stack.envoy_log());
    stack.set_fault(0, json!({"mode": "none"}));

    // fake_low_work_chain: explorer 0 invents a confirmed payment to us in a block of its own at
    // easy bits. Refused by the floor; explorer 1 never heard of it.
    let fake = control(
        &stack,
        0,
        "POST",
        "/control/fault",
        Some(json!({"mode": "fake_low_work_chain", "address": MERCHANT, "sats": 50_000, "depth": 2})),
    );
    let fake_txid = fake["fake_txid"].as_str().expect("fake txid").to_string();
    let refused = stack.paid_get("/premium/x", &fake_txid);
    expect(&refused, 402, "tx_not_found");
    assert_eq!(stack.stat("txgate_spv_invalid_proofs"), invalid + 2);
    assert_eq!(stack.backend_seen().len(), 1, "only the honest payment reached the API");
}

#[test]
fn a_forged_block_at_regtest_difficulty_still_needs_the_quorum() {
    // Regtest's floor is its pow limit: headers prove nothing here, only the quorum does.
    let stack = spv(json!({}));
    let fake = control(
        &stack,
        0,
        "POST",
        "/control/fault",
        Some(json!({"mode": "fake_low_work_chain", "address": MERCHANT, "sats": 50_000, "depth": 1})),
    );
    let fake_txid = fake["fake_txid"].as_str().expect("fake txid").to_string();
    let fake_hash = fake["fake_hashes"][0].as_str().expect("fake hash").to_string();
    // Explorer 1 has no block at the fake height yet: not confirmed as far as the quorum goes.
    let behind = stack.paid_get("/api/data", &fake_txid);
    expect(&behind, 402, "insufficient_confirmations");
    assert_eq!(behind.json()["confirmations"], 0);
    // Once the real chain has a block there, explorer 1 names another hash.
    stack.mine(1);
    expect(&stack.paid_get("/api/data", &fake_txid), 503, "explorer_disagreement");
    assert!(stack.envoy_logged(&fake_hash), "the log names explorer 0's hash");
    stack.set_fault(0, json!({"mode": "none"}));

    // tip_disagrees: explorer 0 serves its tip block as a sibling with another hash.
    let txid = stack.pay(1000);
    let mined = stack.mine(1);
    let real_tip = mined["hashes"][0].as_str().expect("hash").to_string();
    stack.set_fault(0, json!({"mode": "tip_disagrees"}));
    expect(&stack.paid_get("/api/data", &txid), 503, "explorer_disagreement");
    assert!(stack.envoy_logged(&real_tip), "the log names explorer 1's hash");
    assert_eq!(stack.stat("txgate_rejected_explorer_disagreement"), 2);
    stack.set_fault(0, json!({"mode": "none"}));
    expect(&stack.paid_get("/api/data", &txid), 200, "");
    assert_eq!(stack.backend_seen().len(), 1);
}

#[test]
fn a_payment_whose_block_left_the_chain_is_refused() {
    let stack = spv(json!({}));
    let txid = stack.pay(5000);
    stack.mine(1);
    // One confirmation buys /api; the payment is cached as proven one block deep.
    expect(&stack.paid_get("/api/data", &txid), 200, "");
    // The block is replaced by two empty ones: the payment is gone from the chain.
    let reorg = control(&stack, 0, "POST", "/control/reorg", Some(json!({"depth": 1})));
    assert!(reorg["dropped"].as_array().unwrap().iter().any(|t| t == txid.as_str()), "{reorg}");
    // /premium needs 2 confirmations, more than were proven: the payment is checked again, and
    // its block is no longer in the best chain.
    reset_calls(&stack);
    expect(&stack.paid_get("/premium/x", &txid), 402, "payment_reorged");
    assert_eq!(stack.stat("txgate_rejected_payment_reorged"), 1);
    assert_eq!(
        calls(&stack, 0),
        map(&[(format!("/api/tx/{txid}/hex"), 1), (format!("/api/tx/{txid}/merkle-proof"), 1)])
    );
    // The record says so from now on: /api, which one proven block satisfied, is refused too.
    assert_ne!(stack.paid_get("/api/data", &txid).status, 200);
    assert_eq!(stack.backend_seen().len(), 1);
}

#[test]
fn with_a_quorum_of_one_cached_headers_finish_the_proof_at_once() {
    // One explorer's word (quorum 1): once a block's headers are cached, a second payment in it
    // needs only its transaction and proof, and no answer is left to wait for.
    let stack = Stack::start_with(StackOptions {
        plugin: json!({"verify": "spv", "quorum": 1, "timeout": "1s", "deadline": "2s"}),
        ..StackOptions::default()
    });
    let first = stack.pay(1000);
    let second = stack.pay(1000);
    stack.mine(1);
    assert_eq!(stack.paid_get("/api/a", &first).status, 200);
    stack.reset_explorer_stats(0);
    let reply = stack.paid_get("/api/b", &second);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let want = map(&[(format!("/api/tx/{second}/hex"), 1), (format!("/api/tx/{second}/merkle-proof"), 1)]);
    assert_eq!(calls(&stack, 0), want, "headers came from the cache");
    assert_eq!(stack.stat("txgate_spv_header_cache_hits"), 1);
}
