//! What payers meet, through real Envoy: x402 headers on every 402, a txid presented in an x402
//! PAYMENT-SIGNATURE, the browser paywall and its no-script cookie flow, the status endpoint
//! and the manifest (answered by the filter, never by the API), shadow mode, and tolerance.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use base64::Engine;
use common::{Stack, MERCHANT};
use serde_json::{json, Value};

const BROWSER: &[(&str, &str)] = &[
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0 Safari/537.36"),
];

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn unb64(text: &str) -> Value {
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).expect("standard base64");
    serde_json::from_slice(&bytes).expect("JSON inside the base64")
}

/// One HTTP/1.1 request without following redirects: status, headers (lowercase names), body.
fn raw_get(stack: &Stack, path: &str, headers: &[(&str, &str)]) -> (u16, Vec<(String, String)>, String) {
    let mut stream = TcpStream::connect(("127.0.0.1", stack.listener_port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut request = format!("GET {path} HTTP/1.1\r\nhost: api.local\r\nconnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn every_402_carries_an_x402_challenge_a_bip21_uri_and_a_link_to_the_manifest() {
    let stack = Stack::with_plugin(json!({"manifest": {"name": "Demo API"}}));
    for (path, sats, btc) in [("/api/report?x=1", 1000, "0.00001"), ("/premium/report", 5000, "0.00005")] {
        let reply = stack.get(path, &[("origin", "https://app.example")]);
        assert_eq!(reply.status, 402, "{path}: {}", reply.body);
        let body = reply.json();
        assert_eq!(body["error"], "payment_required");
        let payment = &body["payment"];
        assert_eq!(payment["network_id"], "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
        assert_eq!(payment["bip21"], json!([format!("bitcoin:{MERCHANT}?amount={btc}")]));
        assert_eq!(payment["amount_btc"], btc);
        let challenge = unb64(reply.header("payment-required").expect("PAYMENT-REQUIRED header"));
        assert_eq!(challenge["x402Version"], 2);
        assert_eq!(challenge["resource"]["url"], format!("http://127.0.0.1:{}{path}", stack.listener_port));
        let offer = &challenge["accepts"][0];
        assert_eq!(
            (offer["scheme"].as_str(), offer["payTo"].as_str(), offer["amount"].as_str()),
            (Some("exact"), Some(MERCHANT), Some(sats.to_string().as_str()))
        );
        assert_eq!(offer["network"], "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
        assert_eq!(offer["extra"]["paymentFlow"], "upfront");
        assert!(challenge["error"].as_str().unwrap().starts_with("payment_required: "));
        assert_eq!(reply.header("link"), Some("</.well-known/txgate>; rel=\"service-meta\""));
        assert!(reply.header("access-control-expose-headers").unwrap_or_default().contains("payment-required"));
    }
    // Waiting helps: Retry-After on a txid the explorer does not know yet.
    let unknown = stack.paid_get("/api", &"ab".repeat(32));
    assert_eq!((unknown.status, unknown.header("retry-after")), (402, Some("10")), "{}", unknown.body);
    let txid = stack.pay(1000);
    let waiting = stack.paid_get("/api", &txid);
    assert_eq!(
        (waiting.json()["error"].as_str(), waiting.header("retry-after")),
        (Some("insufficient_confirmations"), Some("60"))
    );
    assert!(stack.backend_seen().is_empty());
}

fn signature(txid: &str) -> String {
    b64(&json!({
        "x402Version": 2,
        "resource": {"url": "http://api.local/api"},
        "accepted": {"scheme": "exact", "network": "bip122:0f9188f13cb7b2c71f2a335e3a4fc328", "payTo": MERCHANT},
        "payload": {"txid": txid},
    })
    .to_string())
}

#[test]
fn a_txid_in_an_x402_payment_signature_pays_and_gets_a_payment_response() {
    let stack = Stack::start();
    let txid = stack.paid_and_mined(1000);
    let reply = stack.get("/api/data", &[("payment-signature", &signature(&txid))]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["txgate"]["txid"], txid.as_str());
    let response = unb64(reply.header("payment-response").expect("PAYMENT-RESPONSE"));
    assert_eq!((response["success"].as_bool(), response["transaction"].as_str()), (Some(true), Some(txid.as_str())));
    assert_eq!(response["amount"], "1000");
    // Again, now from the cache: the same answer.
    let again = stack.get("/api/data", &[("payment-signature", &signature(&txid))]);
    assert_eq!(again.status, 200);
    assert_eq!(
        unb64(again.header("payment-response").expect("PAYMENT-RESPONSE on a cache hit"))["transaction"],
        txid.as_str()
    );
    // The txid header wins over a signature; a signature that is no x402 payload is a bad txid.
    let other = stack.paid_and_mined(1000);
    let both = stack.get("/api/data", &[("x-bitcoin-txid", &other), ("payment-signature", &signature(&txid))]);
    assert_eq!(both.json()["txgate"]["txid"], other.as_str());
    assert!(both.header("payment-response").is_none(), "no x402 request, no x402 answer");
    for bad in [b64("{\"x402Version\":1,\"payload\":{\"txid\":\"00\"}}"), "garbage!".to_string(), signature("xyz")] {
        let refused = stack.get("/api/data", &[("payment-signature", &bad)]);
        assert_eq!((refused.status, refused.json()["error"].as_str()), (400, Some("invalid_txid")), "{bad}");
    }
    // An underpaying txid is judged like the header's: 402 with the amounts.
    let short = stack.paid_and_mined(10);
    let refused = stack.get("/api/data", &[("payment-signature", &signature(&short))]);
    assert_eq!(refused.json()["error"], "insufficient_payment");
    assert_eq!(stack.backend_seen().len(), 3);
    assert_eq!(stack.stat("txgate_x402_signatures"), 6, "not counted when the txid header came too");
}

#[test]
fn the_status_endpoint_answers_without_the_backend_a_grant_or_a_strike() {
    let stack = Stack::with_plugin(json!({
        "grant": {"requests": 1},
        "penalty": {"identity": "source_address", "max_strikes": 1, "ban_time": "1h"},
    }));
    let status = |txid: &str, path: &str| {
        let reply = stack.get(&format!("/.well-known/txgate/status?txid={txid}&path={path}"), &[]);
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.header("cache-control"), Some("no-store"));
        reply.json()
    };
    // Unknown txids, many times: one strike would ban this client, a status check gives none.
    for i in 0..3 {
        let unknown = status(&format!("{i:064x}"), "%2Fapi");
        assert_eq!((unknown["state"].as_str(), unknown["retry_after_secs"].as_u64()), (Some("not_found"), Some(10)));
    }
    assert_eq!(stack.get("/api", &[]).json()["error"], "payment_required", "not banned");
    let txid = stack.pay(1000);
    let seen = status(&txid, "/api");
    assert_eq!((seen["state"].as_str(), seen["confirmations"].as_u64()), (Some("confirming"), Some(0)));
    assert_eq!(seen["required"], 1);
    stack.mine(1);
    for _ in 0..3 {
        let paid = status(&txid, "/api");
        assert_eq!((paid["state"].as_str(), paid["paid_sats"].as_u64()), (Some("paid"), Some(1000)), "{paid}");
    }
    // The premium route asks 5000 sats and 2 confirmations of the same payment.
    let premium = status(&txid, "%2Fpremium%2Freport");
    assert_eq!((premium["state"].as_str(), premium["required_sats"].as_u64()), (Some("insufficient"), Some(5000)));
    // The grant of one request is still whole, and the status endpoint never reached the API.
    assert!(stack.backend_seen().is_empty());
    assert_eq!(stack.paid_get("/api", &txid).status, 200);
    assert_eq!(stack.paid_get("/api", &txid).json()["error"], "payment_exhausted");
    assert_eq!(stack.backend_seen().len(), 1);
    let bad = stack.get("/.well-known/txgate/status?txid=nope", &[]);
    assert_eq!((bad.status, bad.json()["error"].as_str()), (400, Some("invalid_txid")));
    let free = stack.get(&format!("/.well-known/txgate/status?txid={txid}&path=/free/x"), &[]);
    assert_eq!((free.status, free.json()["state"].as_str()), (200, Some("free")));
    assert_eq!(stack.stat("txgate_penalty_strikes"), 0);
    assert!(stack.stat("txgate_status_answers") >= 8);
}

#[test]
fn the_manifest_is_answered_by_the_filter_and_can_be_turned_off() {
    let stack = Stack::with_plugin(json!({"manifest": {"name": "Demo API", "contact": "ops@example.com"}}));
    let reply = stack.get("/.well-known/txgate", &[]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("max-age=300"));
    let manifest = reply.json();
    assert_eq!(manifest["txgate"], 1);
    assert_eq!(manifest["service"]["name"], "Demo API");
    assert_eq!(manifest["pay_to"], json!([MERCHANT]));
    assert_eq!(
        manifest["routes"][1],
        json!({"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2, "max_age_secs": 86400})
    );
    assert!(stack.backend_seen().is_empty());
    drop(stack);
    let off = Stack::with_plugin(json!({"manifest": {"enabled": false}}));
    let reply = off.get("/.well-known/txgate", &[]);
    assert_eq!(
        (reply.status, reply.json()["error"].as_str()),
        (402, Some("payment_required")),
        "a paid path like any other"
    );
    assert!(reply.header("link").is_none());
}

#[test]
fn a_browser_gets_the_paywall_and_pays_through_a_cookie_without_javascript() {
    let stack = Stack::start();
    let (status, headers, page) = raw_get(&stack, "/api/report", BROWSER);
    assert_eq!(status, 402, "{page}");
    assert_eq!(header(&headers, "content-type"), Some("text/html; charset=utf-8"));
    assert!(header(&headers, "content-security-policy").unwrap_or_default().starts_with("default-src 'none'"));
    assert!(header(&headers, "payment-required").is_some(), "x402 clients in browsers read it too");
    assert!(page.contains("1000 sats") && page.contains("<svg") && page.contains(MERCHANT), "{page}");
    assert!(page.contains(&format!("href=\"bitcoin:{MERCHANT}?amount=0.00001\"")));
    // curl and SDKs keep JSON.
    assert_eq!(stack.get("/api/report", &[("accept", "*/*")]).json()["error"], "payment_required");
    // The form sends the txid as a query parameter: a redirect to the same path sets the cookie.
    let txid = stack.pay(1000);
    let (status, headers, _) = raw_get(&stack, &format!("/api/report?a=1&txgate_txid={txid}"), BROWSER);
    assert_eq!(status, 303);
    assert_eq!(header(&headers, "location"), Some("/api/report?a=1"));
    let cookie = header(&headers, "set-cookie").expect("set-cookie");
    assert!(cookie.starts_with(&format!("txgate_txid={txid}; Path=/; HttpOnly; SameSite=Lax")), "{cookie}");
    // Not confirmed yet: the page again, saying so.
    let with_cookie = [BROWSER[0], BROWSER[1], ("cookie", &format!("theme=dark; txgate_txid={txid}"))];
    let (status, _, page) = raw_get(&stack, "/api/report", &with_cookie);
    assert_eq!(status, 402);
    assert!(page.contains("does not have enough confirmations yet"), "{page}");
    stack.mine(1);
    let (status, _, body) = raw_get(&stack, "/api/report", &with_cookie);
    assert_eq!(status, 200, "{body}");
    assert_eq!(stack.backend_seen().len(), 1);
    // The redirect goes to the canonical path: `//host/...` is never a link to another site.
    let (status, headers, _) = raw_get(&stack, &format!("//evil.example/api?txgate_txid={txid}"), BROWSER);
    assert_eq!((status, header(&headers, "location")), (303, Some("/evil.example/api")));
    // A query parameter that is no txid is refused, never redirected anywhere.
    let (status, headers, _) = raw_get(&stack, "/api/report?txgate_txid=https://evil.example", BROWSER);
    assert_eq!((status, header(&headers, "location")), (400, None));
    assert_eq!(stack.stat("txgate_paywall_pages"), 2);
    assert_eq!(stack.stat("txgate_cookie_txids"), 2);
}

#[test]
fn without_txid_cookies_the_cookie_is_not_read() {
    let stack = Stack::with_plugin(json!({"txid_cookie": false, "paywall": {"enabled": false}}));
    let txid = stack.paid_and_mined(1000);
    let reply = stack.get("/api", &[("cookie", &format!("txgate_txid={txid}"))]);
    assert_eq!(reply.json()["error"], "payment_required");
    let (status, headers, body) = raw_get(&stack, "/api", BROWSER);
    assert_eq!((status, header(&headers, "content-type")), (402, Some("application/json")), "{body}");
    assert_eq!(raw_get(&stack, &format!("/api?txgate_txid={txid}"), BROWSER).0, 402, "no redirect either");
}

#[test]
fn shadow_mode_lets_every_request_through_marked_with_the_code_it_would_have_got() {
    let stack = Stack::with_plugin(json!({"mode": "shadow"}));
    let txid = stack.paid_and_mined(1000);
    let short = stack.paid_and_mined(10);
    type Case<'a> = (&'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: [Case; 5] = [
        (&[], Some("payment_required")),
        // A client cannot mark itself: its own x-txgate-shadow is dropped, refused or not.
        (&[("x-txgate-shadow", "none")], Some("payment_required")),
        (&[("x-bitcoin-txid", "nope")], Some("invalid_txid")),
        (&[("x-bitcoin-txid", &short)], Some("insufficient_payment")),
        (&[("x-bitcoin-txid", &txid), ("x-txgate-shadow", "none")], None),
    ];
    for (headers, _) in &cases {
        let reply = stack.get("/api", headers);
        assert_eq!(reply.status, 200, "{headers:?}: {}", reply.body);
    }
    let marks: Vec<Value> = stack.backend_seen().iter().map(|r| r["headers"]["x-txgate-shadow"].clone()).collect();
    let expected: Vec<Value> = cases.iter().map(|(_, code)| code.map_or(Value::Null, |c| json!(c))).collect();
    assert_eq!(marks, expected);
    assert_eq!(stack.stat("txgate_requests_shadowed"), 4);
    assert_eq!(stack.stat("txgate_rejected_insufficient_payment"), 1, "decided and counted as in enforce mode");
    // The filter's own endpoints are answered as always: there is nothing behind them to shadow.
    let status = stack.get(&format!("/.well-known/txgate/status?txid={txid}"), &[]);
    assert_eq!(status.json()["state"], "paid");
}

#[test]
fn a_small_underpayment_within_tolerance_pays_and_the_receipt_says_what_was_paid() {
    let stack = Stack::with_plugin(json!({"tolerance_percent": 5}));
    let within = stack.paid_and_mined(950);
    let reply = stack.paid_get("/api", &within);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["txgate"]["paid_sats"], 950);
    let below = stack.paid_and_mined(949);
    let refused = stack.paid_get("/api", &below).json();
    assert_eq!(
        (refused["error"].as_str(), refused["required_sats"].as_u64()),
        (Some("insufficient_payment"), Some(1000))
    );
    assert_eq!(refused["payment"]["accepted_sats"], 950);
    // Overpaying is fine.
    assert_eq!(stack.paid_get("/api", &stack.paid_and_mined(5000)).status, 200);
}
