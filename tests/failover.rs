//! Explorers that are slow, down or wrong: failover, circuit breakers, deadlines, and requests
//! with bodies while they wait; plus hostile header values. Real Envoy, two explorer instances.

mod common;

use std::time::Duration;

use common::{Stack, StackOptions};
use serde_json::{json, Value};

fn two_explorers(plugin: Value) -> Stack {
    Stack::start_with(StackOptions { plugin, explorers: 2, ..StackOptions::default() })
}

/// The VM is alive: under FAIL_CLOSED a dead VM answers every request with Envoy's bare 503, so
/// only a live filter answers with its own 402 JSON. (VM stats do not move in this mode; the
/// stack's final check also reads Envoy's whole, flushed log for panic lines.)
fn assert_filter_answers(stack: &Stack) {
    let reply = stack.get("/api/vm-check", &[]);
    assert_eq!(reply.status, 402, "{}", reply.body);
    assert_eq!(reply.json()["error"], "payment_required");
}

fn tx_calls(stack: &Stack, explorer: usize) -> u64 {
    stack.explorer_stats(explorer)["tx"].as_u64().expect("tx")
}

#[test]
fn every_explorer_fault_fails_over_to_the_next_explorer() {
    // A circuit that never opens, so that every fault is really served by explorer 0.
    let stack = two_explorers(json!({"timeout": "1s", "circuit_breaker": {"failures": 1000}}));
    let faults = common::explorer_faults();
    let txids: Vec<String> = faults.iter().map(|_| stack.pay(1000)).collect();
    stack.mine(1);
    for (fault, txid) in faults.iter().zip(&txids) {
        stack.set_fault(0, fault.clone());
        let (before0, before1) = (tx_calls(&stack, 0), tx_calls(&stack, 1));
        let reply = stack.paid_get("/api/data", txid);
        assert_eq!(reply.status, 200, "{fault}: {}", reply.body);
        assert_eq!(tx_calls(&stack, 0), before0 + 1, "{fault}: explorer 0 was asked (and its answer refused)");
        assert_eq!(tx_calls(&stack, 1), before1 + 1, "{fault}: second explorer used");
        assert_eq!(stack.backend_seen().last().unwrap()["headers"]["x-txgate-paid-sats"], "1000", "{fault}");
        stack.set_fault(0, json!({"mode": "none"}));
    }
    assert_eq!(stack.backend_seen().len(), faults.len());
    assert_eq!(stack.stat("txgate_requests_allowed"), faults.len() as u64);
    assert_filter_answers(&stack);
}

#[test]
fn circuit_breaker_skips_a_failing_explorer_and_brings_it_back() {
    let stack = two_explorers(json!({"circuit_breaker": {"failures": 2, "cool_down": "2s"}}));
    let txids: Vec<String> = (0..4).map(|_| stack.pay(1000)).collect();
    stack.mine(1);
    stack.set_fault(0, json!({"mode": "status_500"}));
    assert_eq!(stack.paid_get("/api/a", &txids[0]).status, 200);
    let failing_calls = stack.explorer_calls(0);
    assert_eq!(failing_calls, 2, "tx and tip calls failed on explorer 0: circuit opens");
    assert_eq!(tx_calls(&stack, 1), 1, "the first lookup failed over");
    assert_eq!(stack.paid_get("/api/a", &txids[1]).status, 200);
    assert_eq!(stack.paid_get("/api/a", &txids[2]).status, 200);
    assert_eq!(stack.explorer_calls(0), failing_calls, "skipped while the circuit is open");
    assert_eq!(tx_calls(&stack, 1), 3, "the second explorer answered both");
    std::thread::sleep(Duration::from_millis(2200));
    stack.set_fault(0, json!({"mode": "none"}));
    let before_second = stack.explorer_calls(1);
    assert_eq!(stack.paid_get("/api/a", &txids[3]).status, 200);
    assert!(stack.explorer_calls(0) > failing_calls, "tried again after the cool-down");
    assert_eq!(stack.explorer_calls(1), before_second, "and it answered, so no failover");
}

#[test]
fn when_every_explorer_fails_the_answer_is_503_and_recovery_is_immediate() {
    let stack = two_explorers(json!({"circuit_breaker": {"failures": 1, "cool_down": "1m"}}));
    let txid = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "status_502"}));
    stack.set_fault(1, json!({"mode": "reset"}));
    let reply = stack.paid_get("/api/a", &txid);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "explorer_unavailable");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert!(stack.backend_seen().is_empty());
    stack.set_fault(0, json!({"mode": "none"}));
    stack.set_fault(1, json!({"mode": "none"}));
    // Both circuits are open for a minute, yet the first explorer is probed and answers.
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
}

#[test]
fn failover_stops_at_the_overall_deadline() {
    let stack = two_explorers(json!({"timeout": "1s", "deadline": "1s"}));
    let txid = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 1500}));
    let reply = stack.paid_get("/api/a", &txid);
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "explorer_unavailable", "the filter's answer, not a dead VM's");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(tx_calls(&stack, 0), 1);
    assert_eq!(stack.explorer_stats(1)["tx"], 0, "no time left for the second explorer");
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.stat("txgate_rejected_explorer_unavailable"), 1);
    assert_filter_answers(&stack);
}

#[test]
fn a_request_body_waits_with_its_request_and_arrives_whole() {
    let stack = Stack::with_plugin(json!({"timeout": "2s"}));
    let txid = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 300}));
    // Larger than Envoy's default 1 MiB buffer: the client is slowed by flow control, not refused.
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let digest = {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new("sha256sum").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(&body).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
    };
    let reply = stack.post_bytes("/api/upload", &[("x-bitcoin-txid", &txid)], body.clone());
    assert_eq!(reply.status, 200, "{}", reply.body);
    let seen = stack.backend_seen();
    assert_eq!(seen[0]["body_bytes"], body.len());
    assert_eq!(seen[0]["body_sha256"], digest);
    let unpaid = stack.post_bytes("/api/upload", &[], body);
    assert_eq!(unpaid.status, 402);
    assert_eq!(stack.backend_seen().len(), 1);
}

#[test]
fn hostile_header_values_get_clear_answers_and_the_vm_survives() {
    let stack = Stack::start();
    let fullwidth: String = std::iter::repeat_n('\u{ff11}', 64).collect();
    let lookalikes = [fullwidth.as_str(), &"\u{0430}".repeat(64), &"0".repeat(8 * 1024)];
    for value in lookalikes {
        let reply = stack.get("/api/a", &[("x-bitcoin-txid", value)]);
        assert_eq!(reply.status, 400, "{}", reply.body);
    }
    // 64 KiB: over Envoy's own header limit, which answers before the filter runs.
    let mut raw = b"GET /api/a HTTP/1.1\r\nHost: x\r\nx-bitcoin-txid: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 64 * 1024));
    raw.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(stack.raw_status(&raw), 431);
    let mut raw = b"GET /api/a HTTP/1.1\r\nHost: x\r\nx-bitcoin-txid: ".to_vec();
    raw.extend_from_slice(&[0xc3, 0x28, 0xa0, 0xa1]);
    raw.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(stack.raw_status(&raw), 400);
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.explorer_calls(0), 0);
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200, "still serving");
    assert_filter_answers(&stack);
}

#[test]
fn an_explorer_cluster_missing_from_envoy_is_an_explorer_failure_not_a_crash() {
    let stack = Stack::with_plugin(json!({
        "explorers": [{"cluster": "no-such-cluster", "authority": "x"}, {"cluster": "explorer0", "authority": "explorer.local", "path_prefix": "/api"}]
    }));
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200, "the second explorer is a real cluster");
    assert!(stack.envoy_logged("cannot call explorer cluster \"no-such-cluster\""), "{}", stack.envoy_log());
    let alone = Stack::with_plugin(json!({"explorers": [{"cluster": "no-such-cluster", "authority": "x"}]}));
    let reply = alone.paid_get("/api/a", &txid);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "explorer_unavailable");
}

#[test]
fn a_later_explorer_only_gets_what_is_left_of_the_deadline() {
    let stack = two_explorers(json!({"timeout": "1s", "deadline": "1500ms"}));
    let txid = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 1300}));
    // Within the full 1 s timeout this would answer; within the 0.5 s left of the deadline it cannot.
    stack.set_fault(1, json!({"mode": "delay", "delay_ms": 800}));
    let reply = stack.paid_get("/api/a", &txid);
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "explorer_unavailable", "the filter's answer, not a dead VM's");
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(stack.explorer_stats(1)["tx"], 1, "the second explorer was tried");
    assert!(stack.backend_seen().is_empty());
    assert_filter_answers(&stack);
    stack.set_fault(1, json!({"mode": "none"}));
    assert_eq!(stack.paid_get("/api/a", &txid).status, 200);
    assert_eq!(stack.backend_seen().len(), 1);
}
