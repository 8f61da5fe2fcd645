//! The three ways to pay, with real clients against real Envoy: the stock x402 clients from npm
//! (`@x402/fetch`) and PyPI (`x402`, requests transport), each with a small bitcoin plug-in that
//! pays on the devnet, and curl, which gets the JSON challenge. The browser is `paywall_browser.rs`.
//! `make test` installs the clients (tests/payers/package-lock.json, the virtualenv).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Stack, MERCHANT};
use serde_json::{json, Value};

fn payers_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/payers")
}

/// Runs a client script and reads the one JSON line it prints.
fn run(mut cmd: Command, what: &str) -> Value {
    let out = cmd
        .current_dir(payers_dir())
        .output()
        .unwrap_or_else(|e| panic!("{what} could not start: {e} (run `make test`)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{what} printed {stdout:?}: {e}"))
}

fn check_paid(stack: &Stack, result: &Value, what: &str, path: &str) {
    assert_eq!(result["status"], 200, "{what}: {result}");
    let txid = result["paid_txid"].as_str().unwrap_or_else(|| panic!("{what} never paid: {result}"));
    assert_eq!(result["body"]["txgate"]["txid"], txid, "{what}: the API saw the txid the client paid");
    assert_eq!(result["body"]["path"], path);
    let response = &result["payment_response"];
    assert_eq!((response["success"].as_bool(), response["transaction"].as_str()), (Some(true), Some(txid)), "{what}");
    // Paid exactly the price to our address, confirmed as the offer asked.
    let tx = stack.get_explorer_tx(txid);
    let to_us: u64 = tx["vout"]
        .as_array()
        .expect("vout")
        .iter()
        .filter(|o| o["scriptpubkey_address"] == MERCHANT)
        .map(|o| o["value"].as_u64().unwrap_or(0))
        .sum();
    let price = if path.starts_with("/premium") { 5000 } else { 1000 };
    assert_eq!(to_us, price, "{what}");
}

#[test]
fn stock_x402_clients_pay_on_the_devnet_and_retry_by_themselves() {
    let stack = Stack::with_plugin(json!({}));
    let devnet = format!("http://127.0.0.1:{}", stack.explorer_ports[0]);
    for (path, interpreter, script) in [
        ("/api/report", "node", "x402_fetch_client.mjs"),
        ("/premium/report", "node", "x402_fetch_client.mjs"),
        ("/api/report", "python", "x402_requests_client.py"),
        ("/premium/report", "python", "x402_requests_client.py"),
    ] {
        let url = format!("http://127.0.0.1:{}{path}", stack.listener_port);
        let program = match interpreter {
            "python" => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
            _ => PathBuf::from("node"),
        };
        let mut cmd = Command::new(program);
        cmd.arg(script).arg(&url).arg(&devnet);
        let result = run(cmd, &format!("{script} {path}"));
        check_paid(&stack, &result, script, path);
    }
    assert_eq!(stack.backend_seen().len(), 4);
    assert_eq!(stack.stat("txgate_x402_signatures"), 4);
}

#[test]
fn curl_gets_the_json_challenge() {
    let stack = Stack::start();
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/api/report", stack.listener_port))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').expect("status line");
    assert_eq!(status, "402");
    let body: Value = serde_json::from_str(body).expect("JSON for curl");
    assert_eq!(body["payment"]["bip21"][0], format!("bitcoin:{MERCHANT}?amount=0.00001"));
}
