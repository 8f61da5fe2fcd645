//! The 402 a person in a browser meets: one self-contained page (no external assets) with the
//! price, a QR code of the BIP21 URI drawn as SVG, the address, a wallet link, and a field for
//! the txid. Rendered once per route price and address; per request only the status line is
//! filled in. It works without JavaScript: the form sends the txid as `?txgate_txid=`, which
//! the filter turns into a cookie; the script only adds polling of the status endpoint.

use qrcodegen::{QrCode, QrCodeEcc, QrSegment};
use sha2::{Digest, Sha256};

use crate::ledger::b64;
use crate::payer::{bip21, btc_amount, escape_html, STATUS_PATH, TXID_COOKIE};

/// Where the per-request status line goes.
const STATUS_MARK: &str = "<!--status-->";

/// A rendered page and the Content-Security-Policy that lets exactly its own style and script run.
pub struct Page {
    before: String,
    after: String,
    pub csp: String,
    /// The page with no status line (a first 402), rendered once.
    pub blank: String,
}

/// What the page shows; strings are the operator's or ours, escaped when rendered.
pub struct PageFacts<'a> {
    pub title: &'a str,
    pub description: &'a str,
    pub network: &'a str,
    pub address: &'a str,
    pub price_sats: u64,
    pub min_confirmations: u32,
    pub max_age_secs: u64,
}

const STYLE: &str = "body{font:16px/1.5 system-ui,sans-serif;margin:0;background:#f6f6f4;color:#1b1b1b}\
main{max-width:30rem;margin:1.5rem auto;padding:1.5rem;background:#fff;border-radius:12px;box-shadow:0 1px 4px #0002}\
h1{font-size:1.4rem;margin:0 0 .25rem}.service{margin:0;font-weight:600;color:#555}.price{font-size:1.3rem;font-weight:600}\
.qr{display:block;width:15rem;height:15rem;margin:1rem auto}code{word-break:break-all;font-size:.95rem}\
.row{display:flex;gap:.5rem;align-items:center;flex-wrap:wrap}button,.wallet,input[type=submit]{font:inherit;padding:.45rem .9rem;border-radius:8px;border:1px solid #555;background:#fff;color:#1b1b1b;cursor:pointer;text-decoration:none}\
.wallet{background:#f7931a;border-color:#c46f00;color:#000;display:inline-block;margin:.5rem 0}\
input[type=text]{font:inherit;width:100%;box-sizing:border-box;padding:.4rem;font-family:monospace}\
#status{min-height:1.5em;font-weight:600;margin-top:.75rem}ol{padding-left:1.2rem}";

/// Polls the status endpoint (never the API, so no grant is used and nothing is struck) and,
/// once paid, sends the browser through the same `?txgate_txid=` step as the form.
const SCRIPT: &str = "(function(){var f=document.getElementById('pay'),s=document.getElementById('status'),\
t=document.getElementById('txid'),c=document.getElementById('copy'),a=document.getElementById('address');\
if(c&&navigator.clipboard){c.hidden=false;c.onclick=function(){navigator.clipboard.writeText(a.textContent).then(function(){s.textContent='Address copied.';});};}\
var timer=null,delay=10000;function check(){var id=t.value.trim().toLowerCase();\
fetch(f.dataset.status+'?txid='+encodeURIComponent(id)+'&path='+encodeURIComponent(location.pathname),{cache:'no-store'})\
.then(function(r){return r.json();}).then(function(j){s.textContent=j.message||j.state;\
if(j.state==='paid'){location.href=location.pathname+'?'+f.dataset.cookie+'='+id;return;}\
if(j.state==='not_found'||j.state==='confirming'){delay=Math.min(delay*1.5,60000);timer=setTimeout(check,j.retry_after_secs?Math.max(j.retry_after_secs*1000,delay):delay);}})\
.catch(function(){s.textContent='Could not reach the payment check; retrying.';timer=setTimeout(check,30000);});}\
f.addEventListener('submit',function(e){if(!/^[0-9a-fA-F]{64}$/.test(t.value.trim())){return;}e.preventDefault();\
clearTimeout(timer);delay=10000;s.textContent='Checking your payment\\u2026';check();});})();";

fn csp_hash(text: &str) -> String {
    format!("'sha256-{}'", b64::encode(&Sha256::digest(text.as_bytes())))
}

/// The QR code of a BIP21 URI as SVG paths, one run of dark modules per `h` segment. The
/// address is upper-cased so it fits QR's compact alphanumeric mode (BIP173 says so for QR).
pub fn qr_svg(address: &str, sats: u64) -> Option<String> {
    // Only bech32 is case-insensitive: a base58 address stays as it is (and goes in byte mode).
    let bech32 = ["bc1", "tb1", "bcrt1"].iter().any(|hrp| address.starts_with(hrp));
    let head = if bech32 { format!("BITCOIN:{}", address.to_ascii_uppercase()) } else { format!("bitcoin:{address}") };
    let tail = format!("?amount={}", btc_amount(sats));
    let first = if QrSegment::is_alphanumeric(&head) {
        QrSegment::make_alphanumeric(&head)
    } else {
        QrSegment::make_bytes(head.as_bytes())
    };
    let segments = [first, QrSegment::make_bytes(tail.as_bytes())];
    let qr = QrCode::encode_segments(&segments, QrCodeEcc::Medium).ok()?;
    let size = qr.size();
    let border: i32 = 4;
    let full = size.checked_add(border.checked_mul(2)?)?;
    let mut path = String::new();
    for y in 0..size {
        let mut x = 0;
        while x < size {
            if !qr.get_module(x, y) {
                x = x.checked_add(1)?;
                continue;
            }
            let start = x;
            while x < size && qr.get_module(x, y) {
                x = x.checked_add(1)?;
            }
            let run = x.checked_sub(start)?;
            path.push_str(&format!("M{},{}h{run}v1h-{run}z", start.checked_add(border)?, y.checked_add(border)?));
        }
    }
    Some(format!(
        "<svg class=\"qr\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {full} {full}\" role=\"img\" aria-label=\"QR code of the payment link\" shape-rendering=\"crispEdges\"><rect width=\"{full}\" height=\"{full}\" fill=\"#fff\"/><path fill=\"#000\" d=\"{path}\"/></svg>"
    ))
}

impl Page {
    pub fn render(facts: &PageFacts<'_>) -> Page {
        let uri = bip21(facts.address, facts.price_sats);
        let qr = qr_svg(facts.address, facts.price_sats).unwrap_or_default();
        let title = escape_html(facts.title);
        let address = escape_html(facts.address);
        let confirmations = match facts.min_confirmations {
            0 => "as soon as the explorer sees it".to_string(),
            1 => "after 1 confirmation".to_string(),
            n => format!("after {n} confirmations"),
        };
        let window = match facts.max_age_secs {
            0 => String::new(),
            secs => format!(" A payment is accepted for {} after its block.", human_duration(secs)),
        };
        let description = match facts.description {
            "" => String::new(),
            text => format!("<p>{}</p>", escape_html(text)),
        };
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>Payment required: {title}</title><style>{STYLE}</style></head><body><main>\
<h1>Payment required</h1><p class=\"service\">{title}</p>{description}<p class=\"price\">{sats} sats <span>({btc} BTC, {network})</span></p>\
<p>Pay this amount to the address below. This page lets you in {confirmations}.{window}</p>{qr}\
<div class=\"row\"><code id=\"address\">{address}</code> <button type=\"button\" id=\"copy\" hidden>Copy address</button></div>\
<a class=\"wallet\" href=\"{href}\">Open in wallet</a>\
<ol><li>Scan the code or open your wallet, and send {sats} sats.</li><li>Paste the transaction id below.</li><li>The page lets you in once the payment has {confirmations_short}.</li></ol>\
<form id=\"pay\" method=\"get\" data-status=\"{STATUS_PATH}\" data-cookie=\"{TXID_COOKIE}\"><label for=\"txid\">Transaction id</label>\
<input type=\"text\" id=\"txid\" name=\"{TXID_COOKIE}\" required pattern=\"[0-9a-fA-F]{{64}}\" autocomplete=\"off\" spellcheck=\"false\" inputmode=\"latin\">\
<p><input type=\"submit\" value=\"I have paid\"></p></form>\
<p id=\"status\" role=\"status\" aria-live=\"polite\">{STATUS_MARK}</p></main><script>{SCRIPT}</script></body></html>",
            sats = facts.price_sats,
            btc = btc_amount(facts.price_sats),
            network = escape_html(facts.network),
            href = escape_html(&uri),
            confirmations_short = match facts.min_confirmations {
                0 => "been seen".to_string(),
                1 => "1 confirmation".to_string(),
                n => format!("{n} confirmations"),
            },
        );
        let (before, after) = match page.split_once(STATUS_MARK) {
            Some((b, a)) => (b.to_string(), a.to_string()),
            None => (page, String::new()),
        };
        let csp = format!(
            "default-src 'none'; style-src {}; script-src {}; img-src data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
            csp_hash(STYLE),
            csp_hash(SCRIPT)
        );
        let blank = format!("{before}{after}");
        Page { before, after, csp, blank }
    }

    /// The page with this request's status line (plain text, escaped here).
    pub fn with_status(&self, status: &str) -> String {
        let status = escape_html(status);
        let mut out =
            String::with_capacity(self.before.len().saturating_add(self.after.len()).saturating_add(status.len()));
        out.push_str(&self.before);
        out.push_str(&status);
        out.push_str(&self.after);
        out
    }
}

fn human_duration(secs: u64) -> String {
    let unit = |n: u64, one: &str| if n == 1 { format!("1 {one}") } else { format!("{n} {one}s") };
    match secs {
        s if s >= 86_400 && s.is_multiple_of(86_400) => unit(s / 86_400, "day"),
        s if s >= 3_600 && s.is_multiple_of(3_600) => unit(s / 3_600, "hour"),
        s if s >= 60 && s.is_multiple_of(60) => unit(s / 60, "minute"),
        s => unit(s, "second"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(address: &str) -> PageFacts<'_> {
        PageFacts {
            title: "Demo <API>",
            description: "Market data & more",
            network: "regtest",
            address,
            price_sats: 1000,
            min_confirmations: 1,
            max_age_secs: 86_400,
        }
    }

    /// The SVG draws exactly the QR code's dark modules: rebuilt from its runs, module for module.
    /// (`x < size` → `x <= size`, in either loop, is equivalent: the module past the edge reads light.)
    #[test]
    fn the_qr_svg_draws_exactly_the_codes_dark_modules() {
        for address in ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"] {
            let svg = qr_svg(address, 1000).unwrap();
            let bech32 = address.starts_with("bcrt1");
            let head =
                if bech32 { format!("BITCOIN:{}", address.to_ascii_uppercase()) } else { format!("bitcoin:{address}") };
            let first =
                if bech32 { QrSegment::make_alphanumeric(&head) } else { QrSegment::make_bytes(head.as_bytes()) };
            let segments = [first, QrSegment::make_bytes(b"?amount=0.00001")];
            let qr = QrCode::encode_segments(&segments, QrCodeEcc::Medium).unwrap();
            let size = qr.size();
            let mut drawn = vec![vec![false; size as usize]; size as usize];
            let path = svg.split(" d=\"").nth(1).unwrap().split('"').next().unwrap();
            for run in path.split('z').filter(|r| !r.is_empty()) {
                let (start, rest) = run.trim_start_matches('M').split_once('h').unwrap();
                let (x, y) = start.split_once(',').unwrap();
                let (x, y): (i32, i32) = (x.parse::<i32>().unwrap() - 4, y.parse::<i32>().unwrap() - 4);
                let len: i32 = rest.split('v').next().unwrap().parse().unwrap();
                assert!(len > 0, "{run}");
                for dx in 0..len {
                    assert!(!drawn[y as usize][(x + dx) as usize], "a module drawn twice: {run}");
                    drawn[y as usize][(x + dx) as usize] = true;
                }
            }
            for y in 0..size {
                for x in 0..size {
                    assert_eq!(drawn[y as usize][x as usize], qr.get_module(x, y), "module ({x}, {y}) of {address}");
                }
            }
            let full = size + 8;
            assert!(svg.contains(&format!("viewBox=\"0 0 {full} {full}\"")), "a 4-module quiet zone");
        }
    }

    /// CSP hashes are `'sha256-<base64>'` of the exact text (the empty string's is well known).
    #[test]
    fn csp_hashes_are_sha256_in_base64() {
        assert_eq!(csp_hash(""), "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='");
    }

    #[test]
    fn the_page_is_self_contained_escaped_and_allowed_by_its_own_csp() {
        let page = Page::render(&facts("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"));
        assert_eq!(page.blank, page.with_status(""), "the first 402's page is the page with no status line");
        let html = page.with_status("<b>seen</b>");
        assert!(html.contains("1000 sats"));
        assert!(html.contains("0.00001 BTC"));
        assert!(html.contains("href=\"bitcoin:bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080?amount=0.00001\""));
        assert!(html.contains("<title>Payment required: Demo &lt;API&gt;</title>"));
        assert!(html.contains("Market data &amp; more"));
        assert!(html.contains("&lt;b&gt;seen&lt;/b&gt;"), "the status line is escaped");
        assert!(!html.contains("<b>"));
        assert!(html.contains("role=\"status\""));
        assert!(html.contains("name=\"txgate_txid\""));
        assert!(html.contains("accepted for 1 day"));
        for external in ["src=\"http", "href=\"http", "@import", "url("] {
            assert!(!html.contains(external), "{external}");
        }
        assert!(page.csp.contains(&csp_hash(STYLE)) && page.csp.contains(&csp_hash(SCRIPT)));
        assert!(page.csp.starts_with("default-src 'none'"));
        assert!(html.contains(&format!("<script>{SCRIPT}</script>")), "the hashed script is the one on the page");
        assert!(html.contains(&format!("<style>{STYLE}</style>")));
    }

    #[test]
    fn the_qr_code_is_compact_and_well_formed() {
        let svg = qr_svg("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", 1000).unwrap();
        // Alphanumeric mode keeps a regtest URI at version 4 (33 modules) or below: 41 with border.
        let side: u32 = svg.split("viewBox=\"0 0 ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
        assert!(side <= 41, "side {side}");
        assert!(svg.len() < 6000, "{} bytes", svg.len());
        // Base58 is case-sensitive: never upper-cased, encoded as bytes.
        assert!(qr_svg("mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn", 1).is_some());
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(86_400), "1 day");
        assert_eq!(human_duration(7_200), "2 hours");
        assert_eq!(human_duration(90), "90 seconds");
        assert_eq!(human_duration(120), "2 minutes");
        assert_eq!(human_duration(90_000), "25 hours", "over a day, not whole days");
        assert_eq!(human_duration(5_400), "90 minutes", "over an hour, not whole hours");
        assert_eq!(human_duration(61), "61 seconds");
    }
}
