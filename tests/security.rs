//! Regression tests for the security findings of 2026-11-25 (F1–F16 in
//! ../shared/security-findings-2026-11-25.md), each in real Envoy with the release wasm and the
//! local regtest explorer. Every test here failed on 3e8acb5.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{envoy_yaml, start_envoy, wasm_path, Proc, Stack, StackOptions};
use serde_json::{json, Value};

/// A regtest address that is not the merchant's.
const OTHER: &str = "bcrt1qgmwevycpm6p3a0jlq5kpq3vzfdajhyd3z9pw96";
/// A testnet address (BIP-173 vector), for a listener on another network.
const TESTNET_PAY_TO: &str = "tb1qw508d6qejxtdg4y5r3zarvary0c5xw7kxpjzsx";

fn stack(plugin: Value) -> Stack {
    Stack::with_plugin(plugin)
}

fn random_txid() -> String {
    let mut bytes = [0u8; 32];
    let mut f = std::fs::File::open("/dev/urandom").expect("urandom");
    f.read_exact(&mut bytes).expect("random");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Status and body of a raw HTTP/1.1 request (for paths no HTTP client sends as they are).
fn raw(port: u16, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A GET of `path` exactly as written, with extra header lines.
fn raw_get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: api.local\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Connection: close\r\n\r\n");
    raw(port, &req)
}

fn error_of(body: &str) -> String {
    serde_json::from_str::<Value>(body).map(|v| v["error"].as_str().unwrap_or("").to_string()).unwrap_or_default()
}

/// A GET from a chosen loopback source address (curl binds it), returning status and body.
fn get_from(source: &str, port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "20", "-w", "\n%{http_code}", "--interface", source]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(format!("http://127.0.0.1:{port}{path}"));
    let out = cmd.output().expect("curl (make test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl said {text:?}"));
    let status = status.trim().parse().unwrap_or_else(|_| panic!("curl said {text:?}"));
    assert_ne!(status, 0, "curl could not reach Envoy from {source}");
    (status, body.to_string())
}

fn admin_get(admin_port: u16, path: &str) -> String {
    let (status, body) = raw_get(admin_port, path, &[]);
    assert_eq!(status, 200, "admin {path}");
    body
}

/// A counter of an Envoy started outside the stack; absent counters are an error.
fn stat_at(admin_port: u16, name: &str) -> u64 {
    let body = admin_get(admin_port, &format!("/stats?filter={name}$"));
    body.lines()
        .find_map(|l| {
            let (key, value) = l.split_once(": ")?;
            (key == name || key == format!("wasmcustom.{name}")).then(|| value.trim().parse().ok())?
        })
        .unwrap_or_else(|| panic!("no counter {name} in {body}"))
}

/// One listener of a multi-listener Envoy: its plugin config, `vm_id`, and explorer port.
struct Listener {
    name: &'static str,
    plugin: Value,
    vm_id: &'static str,
    explorer_port: u16,
}

/// The merchant's plugin config (the harness's) for one listener, with overrides; its explorer
/// cluster is `explorer_<name>`.
fn listener_plugin(name: &str, overrides: Value) -> Value {
    let mut config = common::plugin_config(1, &overrides);
    if overrides.get("explorers").is_none() {
        config["explorers"][0]["cluster"] = json!(format!("explorer_{name}"));
    }
    config
}

/// Several txgate listeners in one Envoy (one VM per `vm_id`, as operators and Istio deploy
/// them), in front of the stack's demo API. Returns Envoy, its admin port and the listener ports.
fn multi_listener_envoy(stack: &Stack, listeners: &[Listener]) -> (Proc, u16, HashMap<&'static str, u16>) {
    let mut blocks = String::new();
    let mut clusters = String::new();
    for (i, l) in listeners.iter().enumerate() {
        let yaml = envoy_yaml(&l.plugin, stack.api_port, &[l.explorer_port], &wasm_path());
        let listener =
            yaml.split("  clusters:\n").next().expect("listeners").replacen("static_resources:\n  listeners:\n", "", 1);
        let name = if i == 0 { "api".to_string() } else { l.name.to_string() };
        blocks.push_str(
            &listener
                .replacen("- name: api\n", &format!("- name: {name}\n"), 1)
                .replace("vm_id: txgate\n", &format!("vm_id: \"{}\"\n", l.vm_id)),
        );
        clusters.push_str(&format!(
            "  - name: explorer_{}\n    type: STATIC\n    connect_timeout: 0.5s\n    load_assignment:\n      cluster_name: explorer_{}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}\n",
            l.name, l.name, l.explorer_port
        ));
    }
    let base = envoy_yaml(&listeners[0].plugin, stack.api_port, &[], &wasm_path());
    let api_cluster = base.split("  clusters:\n").nth(1).expect("clusters").split("admin:").next().expect("api");
    let yaml = format!(
        "static_resources:\n  listeners:\n{blocks}  clusters:\n{api_cluster}{clusters}admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\n"
    );
    stack.shared_backend.store(true, std::sync::atomic::Ordering::Relaxed);
    let dir = stack.dir.path().join("multi");
    std::fs::create_dir_all(&dir).expect("dir");
    let (envoy, admin, first) =
        start_envoy(&dir, &yaml, 2).unwrap_or_else(|log| panic!("Envoy did not start:\n{log:?}"));
    let mut ports = HashMap::new();
    ports.insert(listeners[0].name, first);
    let text = admin_get(admin, "/listeners");
    for l in &listeners[1..] {
        let port = text
            .lines()
            .find_map(|line| {
                line.strip_prefix(&format!("{}::", l.name)).and_then(|a| a.rsplit(':').next()?.parse().ok())
            })
            .unwrap_or_else(|| panic!("listener {} not in {text}", l.name));
        ports.insert(l.name, port);
    }
    (envoy, admin, ports)
}

/// An explorer for another network: its tip is far above the regtest chain, and it knows no
/// transaction. Serves until the test process ends.
fn other_network_explorer(tip: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || loop {
                let mut buf = [0u8; 4096];
                let Ok(n) = stream.read(&mut buf) else { return };
                if n == 0 {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split(' ').nth(1).unwrap_or("");
                let (status, body) = if path.ends_with("/blocks/tip/height") {
                    ("200 OK", tip.to_string())
                } else {
                    ("404 Not Found", "Transaction not found".to_string())
                };
                let reply = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                if stream.write_all(reply.as_bytes()).is_err() {
                    return;
                }
            });
        }
    });
    port
}

// ------------------------------------------------------------------------------------- F1, F2

#[test]
fn f1_payments_never_cross_merchants_networks_or_blank_vm_ids() {
    let stack = Stack::start();
    let explorer = stack.explorer_ports[0];
    let (_envoy, admin, port) = multi_listener_envoy(
        &stack,
        &[
            Listener { name: "a", plugin: listener_plugin("a", json!({})), vm_id: "", explorer_port: explorer },
            Listener {
                name: "b",
                plugin: listener_plugin("b", json!({"pay_to": [OTHER]})),
                vm_id: "",
                explorer_port: explorer,
            },
            Listener {
                name: "t",
                plugin: listener_plugin("t", json!({"network": "testnet", "pay_to": [TESTNET_PAY_TO]})),
                vm_id: "",
                explorer_port: explorer,
            },
        ],
    );
    let paid = stack.paid_and_mined(1000);
    let (status, body) = raw_get(port["a"], "/api/a", &[("x-bitcoin-txid", &paid)]);
    assert_eq!(status, 200, "merchant A's own payment: {body}");
    let (status, body) = raw_get(port["b"], "/api/b", &[("x-bitcoin-txid", &paid)]);
    assert_eq!((status, error_of(&body)), (402, "insufficient_payment".into()), "merchant B was not paid: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["paid_sats"], 0);
    let (status, body) = raw_get(port["t"], "/api/t", &[("x-bitcoin-txid", &paid)]);
    assert_eq!(status, 402, "a regtest payment never opens the testnet listener: {body}");
    // The other way round: B sees a fresh payment to A first; A's own payer still gets in.
    let fresh = stack.paid_and_mined(1000);
    assert_eq!(raw_get(port["b"], "/api/b", &[("x-bitcoin-txid", &fresh)]).0, 402);
    let (status, body) = raw_get(port["a"], "/api/a", &[("x-bitcoin-txid", &fresh)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.backend_seen().len(), 2, "only merchant A's two requests reached the API");
    assert_eq!(stat_at(admin, "txgate_requests_allowed"), 2);
}

#[test]
fn f2_a_tip_from_another_network_or_listener_never_counts_confirmations() {
    let stack = Stack::start();
    let far = other_network_explorer(5_000_000);
    let (_envoy, _admin, port) = multi_listener_envoy(
        &stack,
        &[
            Listener {
                name: "a",
                plugin: listener_plugin(
                    "a",
                    json!({"routes": [{"prefix": "/premium", "price_sats": 1000, "min_confirmations": 6}]}),
                ),
                vm_id: "txgate",
                explorer_port: stack.explorer_ports[0],
            },
            Listener {
                name: "t",
                plugin: listener_plugin("t", json!({"network": "testnet", "pay_to": [TESTNET_PAY_TO]})),
                vm_id: "txgate",
                explorer_port: far,
            },
        ],
    );
    let paid = stack.paid_and_mined(1000);
    let (status, body) = raw_get(port["a"], "/premium/x", &[("x-bitcoin-txid", &paid)]);
    assert_eq!((status, error_of(&body)), (402, "insufficient_confirmations".into()), "{body}");
    // The testnet listener reads its explorer's tip of 5,000,000.
    let (status, body) = raw_get(port["t"], "/api/y", &[("x-bitcoin-txid", &random_txid())]);
    assert_eq!((status, error_of(&body)), (402, "tx_not_found".into()), "{body}");
    let (status, body) = raw_get(port["a"], "/premium/x", &[("x-bitcoin-txid", &paid)]);
    assert_eq!(status, 402, "one real confirmation is still one: {body}");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["confirmations"], 1);
    assert!(stack.backend_seen().is_empty());
}

#[test]
fn f2_no_tip_from_the_explorer_is_a_503_never_a_402_from_an_old_tip() {
    let stack = stack(json!({}));
    // A first payment makes the filter read and keep the tip.
    let first = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &first).status, 200);
    let premium = stack.paid_and_mined(5000);
    stack.set_fault(0, json!({"mode": "bad_tip"}));
    let reply = stack.paid_get("/premium/x", &premium);
    assert_eq!((reply.status, reply.json()["error"].as_str()), (503, Some("explorer_unavailable")), "{}", reply.body);
    stack.set_fault(0, json!({"mode": "none"}));
    let reply = stack.paid_get("/premium/x", &premium);
    assert_eq!(reply.status, 402, "{}", reply.body);
    assert_eq!(reply.json()["confirmations"], 1);
    assert_eq!(stack.backend_seen().len(), 1);
}

// ---------------------------------------------------------------------------------- F3–F5, F16

/// Paths that a lenient backend could read as something other than a free route.
const AMBIGUOUS: [&str; 10] = [
    "/free/..%2fapi/hello",
    "/free%2f..%2fapi/hello",
    "/free\\..\\api\\hello",
    "/free/..%5capi",
    "/free/..;/api/hello",
    "/free%00/../api",
    "/free/%2E%2E%2Fapi",
    "/free/a%2",
    "/../api",
    "/free/.;/../api",
];

/// Paths that resolve to a paid route, however they are spelled.
const RESOLVED: [&str; 8] = [
    "/free/../api/hello",
    "/free/%2e%2e/api/hello",
    "/free;x/../api",
    "/free//../api/hello",
    "/free/x/../../api/hello",
    "/free/./../api",
    "/FREE/x",
    "/freeloader",
];

#[test]
fn f3_f16_paths_around_a_free_route_are_refused_or_priced_and_counted() {
    let stack = stack(json!({}));
    for path in AMBIGUOUS {
        let (status, body) = raw_get(stack.listener_port, path, &[]);
        assert_eq!((status, error_of(&body)), (400, "invalid_path".into()), "{path}: {body}");
    }
    for path in RESOLVED {
        let (status, body) = raw_get(stack.listener_port, path, &[]);
        assert_eq!((status, error_of(&body)), (402, "payment_required".into()), "{path}: {body}");
    }
    let (status, body) = raw(
        stack.listener_port,
        &format!(
            "GET http://127.0.0.1:{}/free/../api/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            stack.listener_port
        ),
    );
    assert_eq!((status, error_of(&body)), (402, "payment_required".into()), "absolute form: {body}");
    assert!(stack.backend_seen().is_empty(), "nothing reached the API unpaid");
    assert_eq!(stack.stat("txgate_rejected_invalid_path"), AMBIGUOUS.len() as u64);
    assert_eq!(stack.stat("txgate_requests_free"), 0, "no bypass counted as free traffic");
    assert!(stack.stat("txgate_paths_non_canonical") >= 6);
    // The canonical free paths stay free.
    for path in ["/free", "/free/", "/free/x", "/free/x?y=/../api"] {
        assert_eq!(raw_get(stack.listener_port, path, &[]).0, 200, "{path}");
    }
    assert_eq!(stack.stat("txgate_requests_free"), 4);
}

#[test]
fn f4_every_spelling_of_a_premium_path_costs_the_premium_price() {
    let stack = stack(json!({}));
    let cheap = stack.paid_and_mined(1000);
    for path in [
        "/premium/x",
        "//premium/x",
        "/api/../premium/x",
        "/%70remium/x",
        "/Premium/x",
        "/PREMIUM/x",
        "/./premium/x",
        "/api/%2e%2e/premium/x",
        "/premium;v=1/x",
    ] {
        let (status, body) = raw_get(stack.listener_port, path, &[("x-bitcoin-txid", &cheap)]);
        assert_eq!((status, error_of(&body)), (402, "insufficient_payment".into()), "{path}: {body}");
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["required_sats"], 5000, "{path}");
    }
    assert!(stack.backend_seen().is_empty());
}

#[test]
fn f5_a_free_prefix_covers_whole_path_segments_only() {
    let stack = stack(json!({"routes": [{"prefix": "/free", "free": true}, {"prefix": "/healthz", "free": true}]}));
    for path in ["/freeloader", "/free-stuff/api", "/healthz-and-everything-else", "/healthzX/x"] {
        let reply = stack.get(path, &[]);
        assert_eq!((reply.status, reply.json()["error"].as_str()), (402, Some("payment_required")), "{path}");
    }
    for path in ["/free", "/free/x", "/healthz"] {
        assert_eq!(stack.get(path, &[]).status, 200, "{path}");
    }
    assert_eq!(stack.backend_seen().len(), 3);
}

// ------------------------------------------------------------------------------------ F6, F7

#[test]
fn f6_a_payer_whose_txid_someone_used_first_is_never_struck_or_banned() {
    let stack = stack(json!({
        "bind_to": "header:x-api-key",
        "penalty": {"identity": "header:x-api-key", "max_strikes": 2, "ban_time": "10m"}
    }));
    let txid = stack.paid_and_mined(1000);
    assert_eq!(stack.get("/api/steal", &[("x-api-key", "attacker"), ("x-bitcoin-txid", &txid)]).status, 200);
    for _ in 0..4 {
        let reply = stack.get("/api/mine", &[("x-api-key", "victim"), ("x-bitcoin-txid", &txid)]);
        assert_eq!(
            (reply.status, reply.json()["error"].as_str()),
            (402, Some("payment_bound_to_other_client")),
            "{}",
            reply.body
        );
    }
    assert_eq!(stack.stat("txgate_penalty_strikes"), 0);
    let own = stack.paid_and_mined(1000);
    assert_eq!(stack.get("/api/mine", &[("x-api-key", "victim"), ("x-bitcoin-txid", &own)]).status, 200);
}

#[test]
fn f7_no_flood_of_txids_resets_a_grant_or_moves_a_binding() {
    let stack = stack(json!({
        "grant": {"requests": 2},
        "bind_to": "header:x-api-key",
        "cache": {"max_entries": 2, "not_found_ttl": "0s", "unconfirmed_ttl": "0s", "tip_ttl": "0s"}
    }));
    let victim = stack.paid_and_mined(1000);
    let as_victim = [("x-api-key", "victim"), ("x-bitcoin-txid", victim.as_str())];
    assert_eq!(stack.get("/api/v", &as_victim).status, 200);
    assert_eq!(stack.get("/api/v", &as_victim).status, 200);
    assert_eq!(stack.get("/api/v", &as_victim).json()["error"], "payment_exhausted");
    // A newer confirmed payment beside the victim's, then bogus txids: in a 2-slot table each
    // of them lands on both payments' slots.
    let own = stack.paid_and_mined(1000);
    assert_eq!(stack.get("/api/a", &[("x-api-key", "attacker"), ("x-bitcoin-txid", &own)]).status, 200);
    for _ in 0..40 {
        let reply = stack.get("/api/x", &[("x-api-key", "attacker"), ("x-bitcoin-txid", &random_txid())]);
        assert_eq!(reply.json()["error"], "tx_not_found");
    }
    let reply = stack.get("/api/v", &as_victim);
    assert_eq!(reply.json()["error"], "payment_exhausted", "the grant did not restart: {}", reply.body);
    let reply = stack.get("/api/a", &[("x-api-key", "attacker"), ("x-bitcoin-txid", &victim)]);
    assert_eq!(reply.json()["error"], "payment_bound_to_other_client", "the binding did not move: {}", reply.body);
    assert_eq!(stack.backend_seen().len(), 3);
}

#[test]
fn f7_a_full_ledger_refuses_new_payments_instead_of_forgetting_counted_ones() {
    let stack = stack(json!({
        "grant": {"requests": 1},
        "cache": {"max_entries": 1, "not_found_ttl": "0s", "unconfirmed_ttl": "0s", "tip_ttl": "0s"}
    }));
    let first = stack.paid_and_mined(1000);
    assert_eq!(stack.paid_get("/api/a", &first).status, 200);
    let second = stack.paid_and_mined(1000);
    let reply = stack.paid_get("/api/b", &second);
    assert_eq!((reply.status, reply.json()["error"].as_str()), (503, Some("ledger_full")), "{}", reply.body);
    assert_eq!(stack.paid_get("/api/a", &first).json()["error"], "payment_exhausted");
    assert_eq!(stack.stat("txgate_ledger_full"), 1);
    assert_eq!(stack.backend_seen().len(), 1);
}

// ------------------------------------------------------------------------------ F8, F9, F10

#[test]
fn f8_x_forwarded_for_cannot_choose_the_source_address() {
    let stack = stack(json!({
        "bind_to": "source_address",
        "penalty": {"identity": "source_address", "max_strikes": 3, "ban_time": "10m"}
    }));
    let port = stack.listener_port;
    let txid = stack.paid_and_mined(1000);
    // Bound to 127.0.0.60 by its first use (a request without X-Forwarded-For, as most are).
    assert_eq!(get_from("127.0.0.60", port, "/api/a", &[("x-bitcoin-txid", &txid)]).0, 200);
    let (status, body) =
        get_from("127.0.0.61", port, "/api/a", &[("x-bitcoin-txid", &txid), ("x-forwarded-for", "127.0.0.60")]);
    assert_eq!((status, error_of(&body)), (400, "forwarded_for_untrusted".into()), "{body}");
    // Nobody can get someone else banned by naming them, nor escape a ban by renaming itself.
    for i in 0..3 {
        let (status, _) = get_from(
            "127.0.0.62",
            port,
            "/api/p",
            &[("x-bitcoin-txid", "nope"), ("x-forwarded-for", &format!("198.51.100.{i}"))],
        );
        assert_eq!(status, 400);
    }
    for _ in 0..3 {
        assert_eq!(get_from("127.0.0.63", port, "/api/p", &[("x-bitcoin-txid", "nope")]).0, 400);
    }
    let (status, body) = get_from("127.0.0.63", port, "/api/p", &[("x-bitcoin-txid", "nope")]);
    assert_eq!((status, error_of(&body)), (429, "client_banned".into()));
    let (status, _) = get_from("127.0.0.63", port, "/api/p", &[("x-forwarded-for", "203.0.113.9")]);
    assert_eq!(status, 400, "a banned client cannot rename itself");
    assert_eq!(get_from("127.0.0.60", port, "/api/a", &[("x-bitcoin-txid", &txid)]).0, 200);
    assert_eq!(stack.stat("txgate_rejected_forwarded_for_untrusted"), 5);
    assert!(stack.envoy_logged("does not set use_remote_address"));
}

#[test]
fn f9_clients_without_an_identity_are_not_one_bucket_and_rotating_keys_runs_out() {
    let stack = stack(json!({
        "penalty": {"identity": "header:x-api-key", "max_strikes": 3, "find_time": "1m", "ban_time": "10m"}
    }));
    let port = stack.listener_port;
    for _ in 0..3 {
        assert_eq!(get_from("127.0.0.30", port, "/api/k", &[("x-bitcoin-txid", "nope")]).0, 400);
    }
    assert_eq!(get_from("127.0.0.30", port, "/api/k", &[("x-bitcoin-txid", "nope")]).0, 429);
    let honest = stack.paid_and_mined(1000);
    let (status, body) = get_from("127.0.0.31", port, "/api/k", &[("x-bitcoin-txid", &honest)]);
    assert_eq!(status, 200, "a keyless client elsewhere is not banned with them: {body}");
    // Fresh keys from one address: 3 × 4 strikes ban the address itself.
    let mut statuses = Vec::new();
    for i in 0..13 {
        let key = format!("rot-{i}");
        statuses.push(get_from("127.0.0.32", port, "/api/k", &[("x-api-key", &key), ("x-bitcoin-txid", "nope")]).0);
    }
    assert_eq!(statuses[..12], [400; 12]);
    assert_eq!(statuses[12], 429, "{statuses:?}");
}

#[test]
fn f9_a_binding_needs_the_identity_it_binds_to() {
    let stack = stack(json!({"bind_to": "mtls_principal", "grant": {"requests": 1000, "window": "24h"}}));
    let txid = stack.paid_and_mined(1000);
    let reply = stack.paid_get("/api/a", &txid);
    assert_eq!((reply.status, reply.json()["error"].as_str()), (401, Some("identity_required")), "{}", reply.body);
    assert_eq!(reply.json()["identity"], "an mTLS client certificate");
    assert!(stack.backend_seen().is_empty(), "a plaintext replay of the txid gets nothing either");
}

#[test]
fn f10_discounts_come_only_from_verified_facts() {
    let (refused, log) = common::envoy_refuses(&common::plugin_config(
        1,
        &json!({"discounts": [{"name": "policy-v2", "percent": 50, "header": {"name": "x-security-policy", "value": "v2"}}]}),
    ));
    assert!(refused && log.contains("discounts[0].header.set_by_trusted_filter"), "{log}");
    let stack = stack(json!({
        "penalty": {"identity": "source_address"},
        "discounts": [{"name": "good-standing", "percent": 5, "no_strikes_for": "24h"}]
    }));
    let paid = stack.paid_and_mined(950);
    let reply = stack.paid_get("/api/x", &paid);
    assert_eq!((reply.status, reply.json()["error"].as_str()), (402, Some("insufficient_payment")), "{}", reply.body);
    assert_eq!(reply.json()["required_sats"], 1000, "a client never seen before has no good standing");
}

// ----------------------------------------------------------------------------- F11, F12, F13

#[test]
fn f11_a_flood_from_one_client_does_not_starve_payers_or_the_explorer() {
    let stack = stack(json!({"penalty": {"identity": "source_address", "max_strikes": 5}}));
    let honest = stack.paid_and_mined(1000);
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 800}));
    let before = stack.explorer_stats(0)["tx"].as_u64().unwrap();
    let port = stack.listener_port;
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let txid = random_txid();
            std::thread::spawn(move || get_from("127.0.0.50", port, "/api/f", &[("x-bitcoin-txid", &txid)]).0)
        })
        .collect();
    // Wait until the flood's lookups are under way, then pay.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.explorer_stats(0)["tx"].as_u64().unwrap() == before {
        assert!(Instant::now() < deadline, "the flood never reached the explorer");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, body) = get_from("127.0.0.41", port, "/api/f", &[("x-bitcoin-txid", &honest)]);
    assert_eq!(status, 200, "the payer got through during the flood: {body}");
    let statuses: Vec<u16> = flood.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| [402, 429, 503].contains(s)), "{statuses:?}");
    let flood_lookups = stack.explorer_stats(0)["tx"].as_u64().unwrap() - before - 1;
    assert!(flood_lookups <= 5, "one client made {flood_lookups} explorer lookups (max_strikes 5)");
    stack.set_fault(0, json!({"mode": "none"}));
}

#[test]
fn f12_requests_waiting_on_one_lookup_are_capped() {
    let stack = stack(json!({}));
    // Long enough for every request to arrive while the lookup is under way, within the timeout.
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 800}));
    let txid = random_txid();
    let port = stack.listener_port;
    let waiters: Vec<_> = (0..48)
        .map(|_| {
            let txid = txid.clone();
            std::thread::spawn(move || {
                let body = "x".repeat(4 * 1024);
                let req = format!(
                    "POST /api/mem HTTP/1.1\r\nHost: x\r\nx-bitcoin-txid: {txid}\r\ncontent-length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let (status, body) = raw(port, &req);
                (status, error_of(&body))
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = waiters.into_iter().map(|t| t.join().unwrap()).collect();
    let busy = answers.iter().filter(|(s, e)| *s == 503 && e == "verification_busy").count();
    let answered = answers.iter().filter(|(s, e)| *s == 402 && e == "tx_not_found").count();
    assert_eq!(busy + answered, 48, "{answers:?}");
    assert!(answered <= 32, "at most 32 requests wait on one lookup, {answered} did");
    assert!(busy >= 16, "{answers:?}");
    assert_eq!(stack.explorer_stats(0)["tx"], 1, "one lookup for all of them");
    assert!(stack.backend_seen().is_empty());
    stack.set_fault(0, json!({"mode": "none"}));
}

#[test]
fn f13_fail_open_needs_an_acknowledgement_and_is_limited_per_client() {
    let (refused, log) = common::envoy_refuses(&common::plugin_config(1, &json!({"failure_mode": "open"})));
    assert!(refused && log.contains("fail_open.acknowledged"), "{log}");
    let stack = Stack::start_with(StackOptions {
        plugin: json!({"failure_mode": "open", "fail_open": {"acknowledged": true, "per_client": 2, "window": "1h"}}),
        dead_explorer: true,
        ..StackOptions::default()
    });
    for _ in 0..2 {
        let reply = stack.paid_get("/api/open", &random_txid());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let reply = stack.paid_get("/api/open", &random_txid());
    assert_eq!((reply.status, reply.json()["error"].as_str()), (503, Some("explorer_unavailable")), "{}", reply.body);
    assert_eq!(stack.get("/api/open", &[]).json()["error"], "payment_required");
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|r| r["headers"]["x-txgate-unverified"] == "explorer_unavailable"));
    assert_eq!(stack.stat("txgate_requests_failed_open"), 2);
    assert_eq!(stack.stat("txgate_failed_open_limited"), 1);
}

// ----------------------------------------------------------------------------- F14, F15, CORS

#[test]
fn f14_underscore_spellings_of_our_headers_never_reach_the_api() {
    let stack = stack(json!({}));
    let forged = [("x_txgate_paid_sats", "999999"), ("x_txgate_txid", "forged"), ("X_TXGATE-confirmations", "9")];
    assert_eq!(stack.get("/free/e", &forged).status, 200);
    let txid = stack.paid_and_mined(1000);
    let mut paid: Vec<(&str, &str)> = forged.to_vec();
    paid.push(("x-bitcoin-txid", &txid));
    assert_eq!(stack.get("/api/i", &paid).status, 200);
    assert_eq!(stack.get("/api/i", &paid).status, 200, "cache hit");
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        let names: Vec<String> = request["headers"].as_object().unwrap().keys().cloned().collect();
        assert!(!names.iter().any(|n| n.replace('_', "-").starts_with("x-txgate-") && n.contains('_')), "{names:?}");
    }
    assert_eq!(seen[2]["headers"]["x-txgate-paid-sats"], "1000");
}

#[test]
fn f15_forged_trailers_never_reach_the_api() {
    let stack = Stack::start();
    let trailers_on = |yaml: String| {
        yaml.replacen(
            "          stat_prefix: api\n",
            "          stat_prefix: api\n          http_protocol_options: {enable_trailers: true}\n",
            1,
        )
        .replacen(
            "  - name: demo_api\n",
            "  - name: demo_api\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config:\n          http_protocol_options: {enable_trailers: true}\n",
            1,
        )
    };
    let plugin = common::plugin_config(1, &json!({}));
    let yaml = trailers_on(envoy_yaml(&plugin, stack.api_port, &stack.explorer_ports, &wasm_path()));
    stack.shared_backend.store(true, std::sync::atomic::Ordering::Relaxed);
    let dir = stack.dir.path().join("trailers");
    std::fs::create_dir_all(&dir).unwrap();
    let (_envoy, _admin, port) = start_envoy(&dir, &yaml, 1).unwrap_or_else(|log| panic!("{log:?}"));
    let txid = stack.paid_and_mined(1000);
    for (path, txid) in [("/free/t", None), ("/api/t", Some(txid.as_str()))] {
        let mut req = format!("POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n");
        if let Some(t) = txid {
            req.push_str(&format!("x-bitcoin-txid: {t}\r\n"));
        }
        req.push_str(
            "\r\n3\r\nabc\r\n0\r\nx-txgate-paid-sats: 99999\r\nx_txgate_txid: forged\r\nx-other: kept\r\n\r\n",
        );
        let (status, body) = raw(port, &req);
        assert_eq!(status, 200, "{path}: {body}");
    }
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        let trailers = request["trailers"].as_object().expect("trailers");
        assert_eq!(
            trailers.get("x-other").and_then(Value::as_str),
            Some("kept"),
            "trailers do reach the API: {request}"
        );
        assert!(!trailers.keys().any(|k| k.replace('_', "-").starts_with("x-txgate-")), "{request}");
    }
}

#[test]
fn cors_preflights_pass_free_and_other_options_requests_pay() {
    let stack = stack(json!({}));
    let preflight = [("origin", "https://app.example"), ("access-control-request-method", "GET")];
    let (status, _) = raw(
        stack.listener_port,
        &format!(
            "OPTIONS /api/x HTTP/1.1\r\nHost: x\r\n{}: {}\r\n{}: {}\r\nConnection: close\r\n\r\n",
            preflight[0].0, preflight[0].1, preflight[1].0, preflight[1].1
        ),
    );
    assert_eq!(status, 200);
    let (status, body) = raw(stack.listener_port, "OPTIONS /api/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!((status, error_of(&body)), (402, "payment_required".into()), "not a preflight: {body}");
    let (status, body) = raw(
        stack.listener_port,
        "OPTIONS /api/x HTTP/1.1\r\nHost: x\r\norigin: https://a\r\naccess-control-request-method: GET\r\ncontent-length: 4\r\nConnection: close\r\n\r\nbody",
    );
    assert_eq!((status, error_of(&body)), (402, "payment_required".into()), "a preflight has no body: {body}");
    let seen = stack.backend_seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["method"], "OPTIONS");
    assert_eq!(stack.stat("txgate_requests_preflight"), 1);
}

/// An HS256 token for the test provider (the JWKS below holds the same key).
fn jwt(claims: &Value, key: &[u8]) -> String {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string());
    let body = b64.encode(claims.to_string());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("key");
    mac.update(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", b64.encode(mac.finalize().into_bytes()))
}

#[test]
fn f10_a_jwt_claim_discount_needs_a_token_envoy_verified() {
    use base64::Engine;
    let key = b"txgate-test-key-0123456789abcdef";
    let stack = Stack::start();
    let jwks = json!({"keys": [{"kty": "oct", "alg": "HS256", "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)}]});
    let jwt_filter = format!(
        "          http_filters:\n          - name: envoy.filters.http.jwt_authn\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication\n              providers:\n                test:\n                  issuer: txgate-test\n                  local_jwks: {{inline_string: {}}}\n                  payload_in_metadata: jwt_payload\n              rules:\n              - match: {{prefix: \"/\"}}\n                requires: {{requires_any: {{requirements: [{{provider_name: test}}, {{allow_missing: {{}}}}]}}}}\n",
        serde_json::to_string(&jwks.to_string()).unwrap()
    );
    let plugin = common::plugin_config(
        1,
        &json!({"discounts": [{"name": "gold", "percent": 40, "jwt_claim": {"metadata_key": "jwt_payload", "claim": "tier", "value": "gold"}}]}),
    );
    let yaml = envoy_yaml(&plugin, stack.api_port, &stack.explorer_ports, &wasm_path()).replacen(
        "          http_filters:\n",
        &jwt_filter,
        1,
    );
    stack.shared_backend.store(true, std::sync::atomic::Ordering::Relaxed);
    let dir = stack.dir.path().join("jwt");
    std::fs::create_dir_all(&dir).unwrap();
    let (_envoy, _admin, port) = start_envoy(&dir, &yaml, 1).unwrap_or_else(|log| panic!("{log:?}"));
    let gold = jwt(&json!({"iss": "txgate-test", "tier": "gold"}), key);
    let silver = jwt(&json!({"iss": "txgate-test", "tier": "silver"}), key);
    let forged = jwt(&json!({"iss": "txgate-test", "tier": "gold"}), b"not-the-key-not-the-key-not-the-");
    let price = |headers: &[(&str, &str)]| {
        let (status, body) = raw_get(port, "/api/x", headers);
        (
            status,
            serde_json::from_str::<Value>(&body).map(|v| v["payment"]["price_sats"].clone()).unwrap_or(Value::Null),
        )
    };
    assert_eq!(price(&[("authorization", &format!("Bearer {gold}"))]), (402, json!(600)), "verified gold claim");
    assert_eq!(price(&[("authorization", &format!("Bearer {silver}"))]), (402, json!(1000)));
    assert_eq!(price(&[]), (402, json!(1000)), "no token");
    assert_eq!(price(&[("authorization", &format!("Bearer {forged}"))]).0, 401, "jwt_authn refuses a forged token");
    let paid = stack.paid_and_mined(600);
    let (status, body) =
        raw_get(port, "/api/x", &[("authorization", &format!("Bearer {gold}")), ("x-bitcoin-txid", &paid)]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.backend_seen()[0]["headers"]["x-txgate-discount"], "gold:40");
}
