//! What payers meet besides the JSON body: BIP21 URIs and CAIP-2 network ids for programs, the
//! x402 v2 `PAYMENT-REQUIRED` / `PAYMENT-SIGNATURE` / `PAYMENT-RESPONSE` headers for x402
//! clients, and the cookie and query parameter a browser presents its txid with.

use serde_json::Value;

use crate::address::Network;
use crate::json_out::{array, Obj};
use crate::ledger::b64;

/// The cookie (and query parameter) a browser presents its txid with; the paywall sets it.
pub const TXID_COOKIE: &str = "txgate_txid";
/// Where the filter answers with the manifest, and with payment status.
pub const MANIFEST_PATH: &str = "/.well-known/txgate";
pub const STATUS_PATH: &str = "/.well-known/txgate/status";
/// x402 v2 header names (HTTP header names are case-insensitive; Envoy gives them lowercase).
pub const PAYMENT_REQUIRED: &str = "payment-required";
pub const PAYMENT_SIGNATURE: &str = "payment-signature";
pub const PAYMENT_RESPONSE: &str = "payment-response";
/// A PAYMENT-SIGNATURE is a txid in a small JSON document: anything longer is not ours to decode.
const MAX_SIGNATURE_BYTES: usize = 4096;
/// `maxTimeoutSeconds` must be positive in x402; a route with `max_age: 0s` never expires payments.
const NO_EXPIRY_TIMEOUT_SECS: u64 = 10 * 365 * 24 * 3600;
const SATS_PER_BTC: u64 = 100_000_000;

/// The CAIP-2 id of a network: `bip122:` and the first 32 hex digits of its genesis block hash.
/// Every regtest chain (and every custom signet) shares one genesis: the id names a kind of chain.
pub fn network_id(network: Network) -> &'static str {
    match network {
        Network::Mainnet => "bip122:000000000019d6689c085ae165831e93",
        Network::Testnet => "bip122:000000000933ea01ad0ee984209779ba",
        Network::Testnet4 => "bip122:00000000da84f2bafbbc53dee25a72ae",
        Network::Signet => "bip122:00000008819873e925422c1ff0f99f7c",
        Network::Regtest => "bip122:0f9188f13cb7b2c71f2a335e3a4fc328",
    }
}

/// The CAIP-19 id of bitcoin on that network.
pub fn asset_id(network: Network) -> String {
    format!("{}/slip44:0", network_id(network))
}

/// Sats as decimal BTC with integer arithmetic only: at most 8 decimals, no exponent, no
/// trailing zeros (BIP21/BIP321 `amount`): 1000 → `0.00001`, 100000000 → `1`.
pub fn btc_amount(sats: u64) -> String {
    let whole = sats.checked_div(SATS_PER_BTC).unwrap_or(0);
    let fraction = sats.checked_rem(SATS_PER_BTC).unwrap_or(0);
    if fraction == 0 {
        return whole.to_string();
    }
    let digits = format!("{fraction:08}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// `bitcoin:<address>?amount=<btc>`: what a wallet opens, and what the QR code holds.
pub fn bip21(address: &str, sats: u64) -> String {
    format!("bitcoin:{address}?amount={}", btc_amount(sats))
}

/// What the 402 asks for, in the shapes x402 clients and scripts read.
pub struct Offer<'a> {
    pub network: Network,
    pub addresses: &'a [String],
    pub price_sats: u64,
    pub min_confirmations: u32,
    pub max_age_secs: u64,
    pub header: &'a str,
}

impl Offer<'_> {
    /// x402 `accepts[]`: one entry per address (x402 `payTo` is a single string).
    pub fn x402_accepts(&self) -> String {
        let timeout = if self.max_age_secs == 0 { NO_EXPIRY_TIMEOUT_SECS } else { self.max_age_secs };
        let amount = self.price_sats.to_string();
        let asset = asset_id(self.network);
        array(self.addresses.iter().map(|address| {
            let extra = Obj::new()
                .str("paymentFlow", "upfront")
                .str("assetTransferMethod", "transaction-proof")
                .str("unit", "sat")
                .num("minConfirmations", u64::from(self.min_confirmations))
                .num("maxAgeSeconds", self.max_age_secs)
                .str("txidHeader", self.header)
                .str("bip21", &bip21(address, self.price_sats))
                .end();
            Obj::new()
                .str("scheme", "exact")
                .str("network", network_id(self.network))
                .str("amount", &amount)
                .str("asset", &asset)
                .str("payTo", address)
                .num("maxTimeoutSeconds", timeout)
                .raw("extra", &extra)
                .end()
        }))
    }
}

/// The x402 v2 `PAYMENT-REQUIRED` header: standard base64 of the PaymentRequired JSON.
/// `accepts` is the rendered `accepts[]` (built once per route and address).
pub fn payment_required_header(code: &str, message: &str, url: &str, accepts: &str) -> String {
    payment_required_header_with(&payment_required_head(code, message), url, &payment_required_tail(accepts))
}

/// The start of the PaymentRequired JSON, up to the request's URL:
/// `{"x402Version":2,"error":"<code>: <message>","resource":{"url":` (rendered once per route
/// for `payment_required`, see `Challenge`).
pub fn payment_required_head(code: &str, message: &str) -> String {
    let mut head = Obj::new().num("x402Version", 2).str("error", &format!("{code}: {message}")).end();
    head.pop(); // the closing brace: the resource follows
    head.push_str(",\"resource\":{\"url\":");
    head
}

/// The end of the PaymentRequired JSON, `"accepts":[…]}`, already in base64: the same for every
/// request of a route and payee, so it is encoded once (see `payment_required_header_with`).
pub fn payment_required_tail(accepts: &str) -> String {
    b64::encode(format!("\"accepts\":{accepts}}}").as_bytes())
}

/// The header from its pre-rendered parts: only the head and the URL are encoded per request.
/// They are padded with spaces (JSON whitespace between members) to a multiple of 3 bytes, so
/// that their base64 ends on a group boundary and the tail's base64 follows it unchanged.
pub fn payment_required_header_with(head: &str, url: &str, tail: &str) -> String {
    let mut text = String::with_capacity(head.len().saturating_add(url.len()).saturating_add(8));
    text.push_str(head);
    text.push_str(&crate::json_out::string(url));
    text.push_str("},");
    while !text.len().is_multiple_of(3) {
        text.push(' ');
    }
    let mut out = String::with_capacity(text.len().div_ceil(3).saturating_mul(4).saturating_add(tail.len()));
    b64::encode_into(text.as_bytes(), &mut out);
    out.push_str(tail);
    out
}

/// The txid inside an x402 `PAYMENT-SIGNATURE` header (`payload.txid`, or `payload.txRef` as in
/// the draft txid scheme), as the client wrote it: the caller checks it like the txid header.
/// `None` when the header is not an x402 v2 payload at all. Network and payTo are not trusted
/// for anything: the gate checks the transaction against its own addresses.
pub fn txid_from_payment_signature(value: &[u8]) -> Option<String> {
    if value.len() > MAX_SIGNATURE_BYTES {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let json: Value = serde_json::from_slice(&b64::decode(text.trim())?).ok()?;
    if json.get("x402Version").and_then(Value::as_u64) != Some(2) {
        return None;
    }
    let payload = json.get("payload")?;
    let txid = payload.get("txid").or_else(|| payload.get("txRef"))?;
    txid.as_str().map(str::to_string)
}

/// The x402 `PAYMENT-RESPONSE` header of a request a PAYMENT-SIGNATURE paid for.
pub fn payment_response_header(network: Network, txid: &str, paid_sats: &str) -> String {
    let body = Obj::new()
        .bool("success", true)
        .str("transaction", txid)
        .str("network", network_id(network))
        .str("amount", paid_sats)
        .end();
    b64::encode(body.as_bytes())
}

/// The value of one cookie in a `cookie` header (`a=1; b=2`).
pub fn cookie<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (key, value) = pair.split_at_checked(pair.iter().position(|b| *b == b'=')?)?;
        (key == name.as_bytes()).then(|| value.get(1..)).flatten()
    })
}

/// The value of a query parameter, raw (txids need no decoding; anything else is refused later).
pub fn query_param<'a>(path: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let start = path.iter().position(|b| *b == b'?')?;
    let query = path.get(start.checked_add(1)?..)?;
    let query = query.split(|b| *b == b'#').next().unwrap_or(query);
    query.split(|b| *b == b'&').find_map(|pair| {
        let cut = pair.iter().position(|b| *b == b'=').unwrap_or(pair.len());
        let (key, value) = pair.split_at_checked(cut)?;
        (key == name.as_bytes()).then(|| value.get(1..).unwrap_or(b""))
    })
}

/// A percent-encoded query value decoded (`+` stays `+`: it is a path, not a form field);
/// `None` for a malformed escape.
pub fn percent_decode(value: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    let mut bytes = value.iter();
    while let Some(b) = bytes.next() {
        if *b != b'%' {
            out.push(*b);
            continue;
        }
        let hex = [*bytes.next()?, *bytes.next()?];
        let text = std::str::from_utf8(&hex).ok()?;
        out.push(u8::from_str_radix(text, 16).ok()?);
    }
    Some(out)
}

/// The path with one query parameter removed (where the paywall form sends the browser back).
pub fn without_param(path: &[u8], name: &str) -> Vec<u8> {
    let Some(start) = path.iter().position(|b| *b == b'?') else { return path.to_vec() };
    let (base, rest) = path.split_at(start);
    let query = rest.get(1..).unwrap_or(b"");
    let kept: Vec<&[u8]> = query
        .split(|b| *b == b'&')
        .filter(|pair| {
            let cut = pair.iter().position(|b| *b == b'=').unwrap_or(pair.len());
            !pair.is_empty() && pair.get(..cut) != Some(name.as_bytes())
        })
        .collect();
    let mut out = base.to_vec();
    if !kept.is_empty() {
        out.push(b'?');
        out.extend(kept.join(&b'&'));
    }
    out
}

/// Where the paywall form's redirect goes: the request's canonical path (never the raw one: a
/// raw `//host/x` would be a protocol-relative URL to another site) and its query without `name`.
pub fn redirect_target(canonical: &str, raw_path: &[u8], name: &str) -> String {
    let kept = without_param(raw_path, name);
    let query = kept.iter().position(|b| *b == b'?').and_then(|at| kept.get(at..)).unwrap_or(b"");
    format!("{canonical}{}", String::from_utf8_lossy(query))
}

/// A browser asking for a page (x402's rule): `Accept` names `text/html` and the user agent is
/// a browser's. curl, SDKs and scripts keep getting JSON.
pub fn wants_html(accept: Option<&[u8]>, user_agent: Option<&[u8]>) -> bool {
    let has = |hay: Option<&[u8]>, needle: &[u8]| hay.is_some_and(|h| h.windows(needle.len()).any(|w| w == needle));
    has(accept, b"text/html") && has(user_agent, b"Mozilla")
}

/// Text made safe for HTML element content and double-quoted attributes.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_are_decimal_btc_without_floats_or_exponents() {
        for (sats, text) in [
            (0, "0"),
            (1, "0.00000001"),
            (1000, "0.00001"),
            (1500, "0.000015"),
            (123_456_789, "1.23456789"),
            (100_000_000, "1"),
            (2_100_000_000_000_000, "21000000"),
            (u64::MAX, "184467440737.09551615"),
        ] {
            assert_eq!(btc_amount(sats), text, "{sats} sats");
        }
        assert_eq!(bip21("bcrt1qabc", 1000), "bitcoin:bcrt1qabc?amount=0.00001");
    }

    #[test]
    fn network_ids_are_the_genesis_hash_prefixes() {
        // CAIP-2 bip122 test cases (mainnet, testnet) and Bitcoin Core's genesis hashes.
        assert_eq!(network_id(Network::Mainnet), "bip122:000000000019d6689c085ae165831e93");
        assert_eq!(network_id(Network::Testnet), "bip122:000000000933ea01ad0ee984209779ba");
        assert_eq!(network_id(Network::Regtest), "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
        assert_eq!(asset_id(Network::Signet), "bip122:00000008819873e925422c1ff0f99f7c/slip44:0");
        for n in [Network::Mainnet, Network::Testnet, Network::Testnet4, Network::Signet, Network::Regtest] {
            assert_eq!(network_id(n).len(), "bip122:".len() + 32);
        }
    }

    fn offer(addresses: &[String], max_age_secs: u64) -> Offer<'_> {
        Offer {
            network: Network::Regtest,
            addresses,
            price_sats: 1500,
            min_confirmations: 2,
            max_age_secs,
            header: "x-bitcoin-txid",
        }
    }

    #[test]
    fn the_payment_required_header_is_an_x402_v2_challenge() {
        let addresses = vec!["bcrt1qa".to_string(), "bcrt1qb".to_string()];
        let accepts = offer(&addresses, 0).x402_accepts();
        let header = payment_required_header("payment_required", "pay \"now\"", "http://h/p?q=1", &accepts);
        let decoded: Value = serde_json::from_slice(&b64::decode(&header).unwrap()).unwrap();
        assert_eq!(decoded["x402Version"], 2);
        assert_eq!(decoded["error"], "payment_required: pay \"now\"");
        assert_eq!(decoded["resource"]["url"], "http://h/p?q=1");
        let accepts = decoded["accepts"].as_array().unwrap();
        assert_eq!(accepts.len(), 2);
        assert_eq!(accepts[1]["payTo"], "bcrt1qb");
        assert_eq!(accepts[0]["amount"], "1500");
        assert_eq!(accepts[0]["network"], "bip122:0f9188f13cb7b2c71f2a335e3a4fc328");
        assert_eq!(accepts[0]["scheme"], "exact");
        assert_eq!(accepts[0]["maxTimeoutSeconds"], 315_360_000, "x402 needs a positive timeout: ten years");
        assert_eq!(accepts[0]["extra"]["paymentFlow"], "upfront");
        assert_eq!(accepts[0]["extra"]["minConfirmations"], 2);
        assert_eq!(accepts[0]["extra"]["bip21"], "bitcoin:bcrt1qa?amount=0.000015");
        let with_age: Value = serde_json::from_str(&offer(&addresses, 3600).x402_accepts()).unwrap();
        assert_eq!(with_age[0]["maxTimeoutSeconds"], 3600);
    }

    /// The pre-encoded tail joins the per-request part on a base64 group boundary whatever the
    /// URL's length: the header decodes to the same JSON as one encoded in a single piece.
    #[test]
    fn the_pre_encoded_tail_gives_the_same_challenge_for_every_url_length() {
        let addresses = vec!["bcrt1qa".to_string()];
        let accepts = offer(&addresses, 0).x402_accepts();
        let tail = payment_required_tail(&accepts);
        let head = payment_required_head("payment_required", "pay \"now\" é");
        for n in 0..12 {
            let url = format!("https://h/{}?q=\"x\"", "a".repeat(n));
            let header = payment_required_header_with(&head, &url, &tail);
            assert!(header.trim_end_matches('=').chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/'));
            let decoded: Value = serde_json::from_slice(&b64::decode(&header).unwrap()).unwrap();
            let whole = Obj::new()
                .num("x402Version", 2)
                .str("error", "payment_required: pay \"now\" é")
                .raw("resource", &Obj::new().str("url", &url).end())
                .raw("accepts", &accepts)
                .end();
            assert_eq!(decoded, serde_json::from_str::<Value>(&whole).unwrap(), "url of {n} extra bytes");
        }
    }

    fn signature(body: &Value) -> Vec<u8> {
        b64::encode(body.to_string().as_bytes()).into_bytes()
    }

    #[test]
    fn a_payment_signature_gives_its_txid_and_nothing_else_does() {
        let txid = "ab".repeat(32);
        let v2 = json!({"x402Version": 2, "payload": {"txid": txid}, "accepted": {"network": "bip122:x"}});
        assert_eq!(txid_from_payment_signature(&signature(&v2)), Some(txid.clone()));
        let tx_ref = json!({"x402Version": 2, "payload": {"txRef": "x"}});
        assert_eq!(txid_from_payment_signature(&signature(&tx_ref)), Some("x".to_string()));
        for bad in [
            json!({"x402Version": 1, "payload": {"txid": txid}}),
            json!({"payload": {"txid": txid}}),
            json!({"x402Version": 2, "payload": {"txid": 7}}),
            json!({"x402Version": 2}),
        ] {
            assert_eq!(txid_from_payment_signature(&signature(&bad)), None, "{bad}");
        }
        assert_eq!(txid_from_payment_signature(b"not base64!"), None);
        let long = json!({"x402Version": 2, "payload": {"txid": txid, "pad": "x".repeat(4000)}});
        assert_eq!(txid_from_payment_signature(&signature(&long)), None, "over 4 KiB");
        let mut at_limit = signature(&v2);
        at_limit.resize(MAX_SIGNATURE_BYTES, b' ');
        assert_eq!(txid_from_payment_signature(&at_limit), Some(txid.clone()), "exactly 4 KiB");
        at_limit.push(b' ');
        assert_eq!(txid_from_payment_signature(&at_limit), None, "one byte over");
        let response: Value =
            serde_json::from_slice(&b64::decode(&payment_response_header(Network::Regtest, &txid, "1000")).unwrap())
                .unwrap();
        assert_eq!(response["success"], true);
        assert_eq!(response["transaction"], txid.as_str());
        assert_eq!(response["amount"], "1000");
    }

    #[test]
    fn cookies_and_query_parameters_are_found_by_exact_name() {
        let header = b"a=1; xtxgate_txid=no;txgate_txid=abc ; b";
        assert_eq!(cookie(header, "txgate_txid"), Some(&b"abc"[..]));
        assert_eq!(cookie(b"txgate_txid", "txgate_txid"), None);
        assert_eq!(cookie(b"", "txgate_txid"), None);
        assert_eq!(query_param(b"/p?x=1&txgate_txid=ab#f", "txgate_txid"), Some(&b"ab"[..]));
        assert_eq!(query_param(b"/p?txgate_txid", "txgate_txid"), Some(&b""[..]));
        assert_eq!(query_param(b"/p?atxgate_txid=1", "txgate_txid"), None);
        assert_eq!(query_param(b"/p", "txgate_txid"), None);
        assert_eq!(without_param(b"/p?x=1&txgate_txid=ab&y=2", "txgate_txid"), b"/p?x=1&y=2");
        assert_eq!(without_param(b"/p?txgate_txid=ab", "txgate_txid"), b"/p");
        assert_eq!(without_param(b"/p", "txgate_txid"), b"/p");
        assert_eq!(percent_decode(b"%2Fpremium%2freport+x"), Some(b"/premium/report+x".to_vec()));
        assert_eq!(
            redirect_target("/evil.example/api", b"//evil.example/api?a=1&txgate_txid=x", "txgate_txid"),
            "/evil.example/api?a=1"
        );
        assert_eq!(redirect_target("/api", b"/./api?txgate_txid=x", "txgate_txid"), "/api");
        assert_eq!(percent_decode(b"%2"), None);
        assert_eq!(percent_decode(b"%zz"), None);
    }

    #[test]
    fn only_browsers_asking_for_html_get_the_page() {
        let ua: &[u8] = b"Mozilla/5.0 (X11; Linux x86_64) Chrome/156";
        assert!(wants_html(Some(b"text/html,application/xhtml+xml;q=0.9"), Some(ua)));
        assert!(!wants_html(Some(b"*/*"), Some(ua)));
        assert!(!wants_html(Some(b"text/html"), Some(b"curl/8.0")));
        assert!(!wants_html(Some(b"text/html,*/*;q=0.8"), Some(b"curl/8.4.0")), "a script asking for HTML too");
        assert!(!wants_html(Some(b"application/json, */*"), Some(ua)), "a browser's fetch asking for JSON");
        assert!(!wants_html(None, Some(ua)));
        assert_eq!(escape_html("<a href=\"x\">'&'</a>"), "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;");
    }
}
