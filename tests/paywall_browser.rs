//! The paywall in headless Chromium (Debian's package, driven by Playwright from the
//! virtualenv; `make test` installs both): the page a person meets, its QR code decoded from a
//! screenshot with `zbarimg`, paying on the devnet and following the status line into the API,
//! with JavaScript and without. `TXGATE_UPDATE_DOCS=1` copies the screenshot to docs/.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Stack, MERCHANT};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn a_person_pays_through_the_paywall_with_and_without_javascript() {
    let stack = Stack::with_plugin(
        json!({"paywall": {"title": "Demo market data", "description": "Quotes and reports, paid per request."}}),
    );
    let url = format!("http://127.0.0.1:{}/api/report", stack.listener_port);
    let devnet = format!("http://127.0.0.1:{}", stack.explorer_ports[0]);
    let out_dir = stack.dir.path().join("browser");
    std::fs::create_dir_all(&out_dir).expect("out dir");
    let out = Command::new(repo().join(".venv/bin/python"))
        .arg(repo().join("tests/payers/paywall_browser.py"))
        .args([&url, &devnet])
        .arg(&out_dir)
        .output()
        .expect("python from the virtualenv (run `make test`)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser run failed ({}):\n{stdout}\n{}\nenvoy log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        stack.envoy_log()
    );
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line");

    assert_eq!(result["first_status"], 402);
    assert!(result["csp"].as_str().unwrap_or_default().starts_with("default-src 'none'"));
    assert_eq!(result["console_errors"], json!([]), "no CSP violation or script error");
    let aria = result["aria"].as_str().unwrap_or_default();
    for part in [
        "heading \"Payment required\"",
        "img \"QR code of the payment link\"",
        "link \"Open in wallet\"",
        "textbox \"Transaction id\"",
        "button \"I have paid\"",
        "status",
    ] {
        assert!(aria.contains(part), "accessibility tree lacks {part}:\n{aria}");
    }
    assert_eq!(result["address"], MERCHANT);
    let bip21 = format!("bitcoin:{MERCHANT}?amount=0.00001");
    assert_eq!(result["wallet_href"], bip21.as_str());

    // The QR code in the screenshot holds the BIP21 URI (upper-cased bech32, as BIP173 advises).
    let screenshot = out_dir.join("paywall.png");
    let zbar =
        Command::new("zbarimg").args(["-q", "--raw"]).arg(&screenshot).output().expect("zbarimg (run `make test`)");
    let decoded = String::from_utf8_lossy(&zbar.stdout).trim().to_string();
    assert_eq!(decoded, format!("BITCOIN:{}?amount=0.00001", MERCHANT.to_uppercase()), "zbarimg: {zbar:?}");
    assert!(decoded.eq_ignore_ascii_case(&bip21));
    if std::env::var_os("TXGATE_UPDATE_DOCS").is_some() {
        std::fs::copy(&screenshot, repo().join("docs/paywall.png")).expect("copy the screenshot to docs/");
    }

    // With JavaScript: the status line followed the payment, then the page became the API's answer.
    assert!(result["seen_text"].as_str().unwrap_or_default().contains("0 of 1 confirmations"), "{result}");
    assert_eq!(result["paid_body"]["ok"], true, "{result}");
    assert_eq!(result["paid_body"]["path"], "/api/report");
    assert_eq!(result["cookie"], json!(["txgate_txid"]));
    // Without JavaScript: form, redirect with the cookie, and the API's answer.
    assert!(result["nojs_url"].as_str().unwrap_or_default().ends_with("/api/report"), "{result}");
    assert_eq!(result["nojs_body"]["txgate"]["txid"], result["nojs_txid"]);
    // The two page loads reached the API; so does the browser's own favicon request, which
    // carries the cookie like any other (README: mark asset prefixes free).
    let paths: Vec<String> =
        stack.backend_seen().iter().map(|r| r["path"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(paths.iter().filter(|p| *p == "/api/report").count(), 2, "{paths:?}");
    assert!(paths.iter().all(|p| p == "/api/report" || p == "/favicon.ico"), "{paths:?}");
    assert_eq!(stack.stat("txgate_penalty_strikes"), 0);
}
