//! Every way a request can be refused: its stable `error` code, HTTP status and JSON body.

use crate::config::{Config, Policy};
use crate::gate::ClientAddress;
use crate::json_out::{self, array, Obj};
use crate::payer;
use crate::paywall::{Page, PageFacts};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    PaymentRequired,
    InvalidTxid,
    TxNotFound,
    InsufficientPayment {
        paid_sats: u64,
        required_sats: u64,
    },
    InsufficientConfirmations {
        confirmations: u64,
        required: u32,
    },
    PaymentExpired {
        block_time: u64,
        max_age_secs: u64,
    },
    ExplorerUnavailable,
    /// The payment's grant (requests or window) is used up.
    PaymentExhausted {
        requests: Option<u64>,
        window_secs: Option<u64>,
    },
    /// The payment was first used by another client identity (`bind_to`).
    BoundToOtherClient,
    /// The client is in the penalty box.
    ClientBanned {
        retry_after_secs: u64,
    },
    /// Too many verifications in flight on this worker.
    VerificationBusy,
    /// The filter itself could not do its job (host call failed, no configuration).
    Internal,
    /// The path cannot be read one way only (encoded `/` or `\\`, `..` above the root, ...).
    InvalidPath,
    /// The transaction is larger than an explorer answer the filter reads.
    TxTooLarge,
    /// `bind_to` needs an identity that the request did not carry.
    IdentityRequired {
        identity: String,
    },
    /// Every slot that could hold a new payment holds one that is still counted or bound.
    LedgerFull,
    /// The request carries X-Forwarded-For on a listener that takes it as the source address.
    ForwardedForUntrusted,
    /// `verify: spv`: every explorer asked served a proof that does not verify.
    ProofInvalid,
    /// `verify: spv`: explorers disagree on the block hash at the height the proof reaches.
    ExplorerDisagreement,
    /// `verify: spv`: a payment seen confirmed before is no longer in the best chain.
    PaymentReorged,
    /// The payment must be counted or bound in the mesh-wide ledger (etcd), which did not answer.
    LedgerUnavailable,
    /// The status endpoint asked the explorer about too many txids for this client lately.
    StatusLimited {
        retry_after_secs: u64,
    },
}

const INTERNAL_MESSAGE: &str = "The payment gate could not check this request; the operator's logs say why.";

/// Seconds a client should wait before retrying when no explorer answered.
pub const EXPLORER_RETRY_AFTER_SECS: u32 = 5;

/// Seconds to wait before asking again about a transaction the explorer did not know.
pub const TX_NOT_FOUND_RETRY_AFTER_SECS: u64 = 10;
/// Seconds to wait for the next block (a tenth of the ten-minute average).
pub const CONFIRMATIONS_RETRY_AFTER_SECS: u64 = 60;

/// Seconds a client should wait before retrying when the ledger (etcd) did not answer.
pub const LEDGER_RETRY_AFTER_SECS: u32 = 2;

impl Rejection {
    /// The stable, documented code in the body's `error` field (and in the metric name).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::PaymentRequired => "payment_required",
            Rejection::InvalidTxid => "invalid_txid",
            Rejection::TxNotFound => "tx_not_found",
            Rejection::InsufficientPayment { .. } => "insufficient_payment",
            Rejection::InsufficientConfirmations { .. } => "insufficient_confirmations",
            Rejection::PaymentExpired { .. } => "payment_expired",
            Rejection::ExplorerUnavailable => "explorer_unavailable",
            Rejection::PaymentExhausted { .. } => "payment_exhausted",
            Rejection::BoundToOtherClient => "payment_bound_to_other_client",
            Rejection::ClientBanned { .. } => "client_banned",
            Rejection::VerificationBusy => "verification_busy",
            Rejection::Internal => "internal_error",
            Rejection::InvalidPath => "invalid_path",
            Rejection::TxTooLarge => "tx_too_large",
            Rejection::IdentityRequired { .. } => "identity_required",
            Rejection::LedgerFull => "ledger_full",
            Rejection::ForwardedForUntrusted => "forwarded_for_untrusted",
            Rejection::ProofInvalid => "proof_invalid",
            Rejection::ExplorerDisagreement => "explorer_disagreement",
            Rejection::PaymentReorged => "payment_reorged",
            Rejection::LedgerUnavailable => "ledger_unavailable",
            Rejection::StatusLimited { .. } => "status_rate_limited",
        }
    }

    pub fn status(&self) -> u32 {
        match self {
            Rejection::InvalidTxid | Rejection::InvalidPath | Rejection::ForwardedForUntrusted => 400,
            Rejection::IdentityRequired { .. } => 401,
            Rejection::ExplorerUnavailable
            | Rejection::VerificationBusy
            | Rejection::LedgerFull
            | Rejection::ProofInvalid
            | Rejection::ExplorerDisagreement
            | Rejection::LedgerUnavailable => 503,
            Rejection::ClientBanned { .. } | Rejection::StatusLimited { .. } => 429,
            Rejection::Internal => 500,
            _ => 402,
        }
    }

    pub fn message(&self, config: &Config) -> String {
        match self {
            Rejection::PaymentRequired => format!(
                "This API needs a bitcoin payment: pay the price to one of the addresses, then send the transaction id in the {} header.",
                config.header
            ),
            Rejection::InvalidTxid => {
                format!("The {} header must hold one transaction id of exactly 64 hex characters.", config.header)
            }
            Rejection::TxNotFound => "The explorer does not know this transaction; if you just sent it, retry shortly.".to_string(),
            Rejection::InsufficientPayment { .. } => "This transaction pays less than the price to our addresses.".to_string(),
            Rejection::InsufficientConfirmations { .. } => {
                "This transaction does not have enough confirmations yet; retry after the next block.".to_string()
            }
            Rejection::PaymentExpired { .. } => "This payment is older than the accepted window; make a new payment.".to_string(),
            Rejection::ExplorerUnavailable => "The payment could not be verified because no block explorer answered; retry shortly.".to_string(),
            Rejection::PaymentExhausted { .. } => "This payment has been used up; make a new payment.".to_string(),
            Rejection::BoundToOtherClient => "This payment belongs to another client; make your own payment.".to_string(),
            Rejection::ClientBanned { .. } => "Too many invalid or unpaid transaction ids; wait before retrying.".to_string(),
            Rejection::VerificationBusy => "Too many payments are being verified right now; retry shortly.".to_string(),
            Rejection::Internal => INTERNAL_MESSAGE.to_string(),
            Rejection::InvalidPath => "The request path cannot be read one way only (encoded '/' or '\\', a '\\', NUL, bad escapes or '..' above the root).".to_string(),
            Rejection::TxTooLarge => "This transaction is too large for the payment gate to read; pay with a smaller transaction.".to_string(),
            Rejection::IdentityRequired { identity } => {
                format!("Payments here belong to one client: present your identity ({identity}) with the request.")
            }
            Rejection::LedgerFull => "The payment gate is tracking as many payments as it can hold; retry shortly.".to_string(),
            Rejection::ForwardedForUntrusted => "This listener cannot trust X-Forwarded-For (its Envoy does not set use_remote_address); send the request without it.".to_string(),
            Rejection::ProofInvalid => "The block explorers' proof of this payment did not verify; retry shortly.".to_string(),
            Rejection::ExplorerDisagreement => "The block explorers disagree about the chain this payment is in; retry shortly.".to_string(),
            Rejection::PaymentReorged => "This payment's block is no longer in the best chain; wait for it to confirm again or make a new payment.".to_string(),
            Rejection::LedgerUnavailable => "The payment ledger could not be reached to count this request; retry shortly.".to_string(),
            Rejection::StatusLimited { .. } => "Too many payment status checks of unknown transactions; wait before checking again.".to_string(),
        }
    }

    /// For the one case where there is no configuration to describe the payment with.
    pub fn body_without_config(&self) -> String {
        Obj::new().str("error", self.code()).str("message", INTERNAL_MESSAGE).end()
    }

    /// The JSON body. Every 402 carries the payment challenge, so a client can pay without docs.
    pub fn body(&self, config: &Config, policy: Option<&Policy>, payee: Option<&ClientAddress>) -> String {
        let challenge = policy.map(|p| Challenge::render(config, p, payee));
        self.body_with(config, challenge.as_ref())
    }

    /// The JSON body with the route's pre-rendered challenge (see `Challenge`).
    pub fn body_with(&self, config: &Config, challenge: Option<&Challenge>) -> String {
        let o = Obj::new().str("error", self.code()).str("message", &self.message(config));
        let o = match self {
            Rejection::InsufficientPayment { paid_sats, required_sats } => {
                o.num("paid_sats", *paid_sats).num("required_sats", *required_sats)
            }
            Rejection::InsufficientConfirmations { confirmations, required } => o
                .num("confirmations", *confirmations)
                .num("required", u64::from(*required))
                .num("retry_after_secs", CONFIRMATIONS_RETRY_AFTER_SECS),
            Rejection::PaymentExpired { block_time, max_age_secs } => {
                o.num("block_time", *block_time).num("max_age_secs", *max_age_secs)
            }
            Rejection::InvalidTxid => o.str("header", &config.header),
            Rejection::PaymentExhausted { requests, window_secs } => {
                let grant = Obj::new().opt_num("requests", *requests).opt_num("window_secs", *window_secs).end();
                o.raw("grant", &grant)
            }
            Rejection::ClientBanned { retry_after_secs } | Rejection::StatusLimited { retry_after_secs } => {
                o.num("retry_after_secs", *retry_after_secs)
            }
            Rejection::TxNotFound => o.num("retry_after_secs", TX_NOT_FOUND_RETRY_AFTER_SECS),
            Rejection::IdentityRequired { identity } => o.str("identity", identity),
            _ => o,
        };
        match (self.status(), challenge) {
            (402, Some(challenge)) => o.raw("payment", &challenge.payment).end(),
            _ => o.end(),
        }
    }

    /// Extra response headers beside `content-type`.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("cache-control", "no-store".to_string())];
        let retry_after = match self {
            Rejection::ExplorerUnavailable | Rejection::ProofInvalid | Rejection::ExplorerDisagreement => {
                Some(u64::from(EXPLORER_RETRY_AFTER_SECS))
            }
            Rejection::VerificationBusy => Some(1),
            Rejection::LedgerFull => Some(5),
            Rejection::LedgerUnavailable => Some(u64::from(LEDGER_RETRY_AFTER_SECS)),
            Rejection::ClientBanned { retry_after_secs } | Rejection::StatusLimited { retry_after_secs } => {
                Some(*retry_after_secs)
            }
            // Waiting helps these two: the transaction may reach the explorer, or a block come.
            Rejection::TxNotFound => Some(TX_NOT_FOUND_RETRY_AFTER_SECS),
            Rejection::InsufficientConfirmations { .. } => Some(CONFIRMATIONS_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry_after {
            headers.push(("retry-after", secs.to_string()));
        }
        headers
    }
}

/// The rejections whose JSON body carries nothing of the request (no challenge: a 402 with a
/// route's price is the `Challenge`'s). Their bodies are rendered once per configuration.
const PLAIN: [Rejection; 15] = [
    Rejection::PaymentRequired,
    Rejection::InvalidTxid,
    Rejection::TxNotFound,
    Rejection::ExplorerUnavailable,
    Rejection::BoundToOtherClient,
    Rejection::VerificationBusy,
    Rejection::Internal,
    Rejection::InvalidPath,
    Rejection::TxTooLarge,
    Rejection::LedgerFull,
    Rejection::ForwardedForUntrusted,
    Rejection::ProofInvalid,
    Rejection::ExplorerDisagreement,
    Rejection::PaymentReorged,
    Rejection::LedgerUnavailable,
];

/// The bodies of the `PLAIN` rejections for one configuration: a flood of malformed txids or bad
/// paths costs no rendering.
pub struct PlainBodies(Vec<String>);

impl PlainBodies {
    pub fn render(config: &Config) -> PlainBodies {
        PlainBodies(PLAIN.iter().map(|r| r.body_with(config, None)).collect())
    }

    /// The body without a challenge: pre-rendered for a plain rejection, rendered for the rest.
    pub fn body(&self, rejection: &Rejection, config: &Config) -> std::borrow::Cow<'_, str> {
        match PLAIN.iter().position(|p| p == rejection).and_then(|i| self.0.get(i)) {
            Some(body) => std::borrow::Cow::Borrowed(body),
            None => std::borrow::Cow::Owned(rejection.body_with(config, None)),
        }
    }
}

/// How to pay for the route: everything a client needs to build the payment. With per-client
/// addresses, `pay_to` holds this client's own address and `derivation` where it comes from.
pub fn challenge(config: &Config, policy: &Policy, payee: Option<&ClientAddress>) -> String {
    let addresses = addresses_for(config, payee);
    let quoted = |items: &mut dyn Iterator<Item = String>| array(items.map(|a| json_out::string(&a)));
    let mut o = Obj::new()
        .str("network", config.network.name())
        .raw("pay_to", &quoted(&mut addresses.iter().cloned()))
        .num("price_sats", policy.price_sats)
        .num("min_confirmations", u64::from(policy.min_confirmations))
        .num("max_age_secs", policy.max_age.as_secs())
        .str("header", &config.header)
        .str("network_id", payer::network_id(config.network))
        .str("amount_btc", &payer::btc_amount(policy.price_sats))
        .raw("bip21", &quoted(&mut addresses.iter().map(|a| payer::bip21(a, policy.price_sats))));
    if let Some(p) = payee {
        o = o.raw("derivation", &Obj::new().str("path", &p.path_text()).end());
    }
    if config.manifest.is_some() {
        o = o.str("manifest", payer::MANIFEST_PATH);
    }
    if config.tolerance_percent > 0 {
        o = o.num("accepted_sats", config.accepted_sats(policy.price_sats));
    }
    o.end()
}

fn addresses_for(config: &Config, payee: Option<&ClientAddress>) -> Vec<String> {
    match payee {
        Some(p) => vec![p.address.clone()],
        None => config.pay_to.clone(),
    }
}

/// Everything of a 402 that depends only on the route's price and the payee, rendered once
/// (per worker, on first use) instead of per request: the `payment` member of the JSON body,
/// the x402 `accepts[]` (encoded in the header's tail), and the paywall page.
pub struct Challenge {
    pub payment: String,
    pub page: Option<Page>,
    /// The x402 header's `"accepts":[…]}` in base64 (`payer::payment_required_tail`).
    pub x402_tail: String,
    /// The x402 header's head for `payment_required` (`payer::payment_required_head`).
    pub required_head: String,
    /// The whole JSON body of a `payment_required` 402: nothing in it depends on the request.
    pub required_body: String,
    /// The last `payment_required` header and the URL it was made for: a client asking the same
    /// path again costs no encoding (one per challenge, so memory stays bounded).
    last_required: std::cell::RefCell<Option<(String, std::rc::Rc<str>)>>,
}

/// The x402 `accepts[]` for a price and payee.
fn x402_accepts(config: &Config, policy: &Policy, addresses: &[String]) -> String {
    let offer = payer::Offer {
        network: config.network,
        addresses,
        price_sats: policy.price_sats,
        min_confirmations: policy.min_confirmations,
        max_age_secs: policy.max_age.as_secs(),
        header: &config.header,
    };
    offer.x402_accepts()
}

impl Challenge {
    pub fn render(config: &Config, policy: &Policy, payee: Option<&ClientAddress>) -> Challenge {
        let addresses = addresses_for(config, payee);
        let page = match (&config.paywall, addresses.first()) {
            (Some(paywall), Some(address)) => Some(Page::render(&PageFacts {
                title: &paywall.title,
                description: &paywall.description,
                network: config.network.name(),
                address,
                price_sats: policy.price_sats,
                min_confirmations: policy.min_confirmations,
                max_age_secs: policy.max_age.as_secs(),
            })),
            _ => None,
        };
        let required = Rejection::PaymentRequired;
        let mut rendered = Challenge {
            payment: challenge(config, policy, payee),
            x402_tail: payer::payment_required_tail(&x402_accepts(config, policy, &addresses)),
            required_head: payer::payment_required_head(required.code(), &required.message(config)),
            page,
            required_body: String::new(),
            last_required: std::cell::RefCell::new(None),
        };
        rendered.required_body = required.body_with(config, Some(&rendered));
        rendered
    }

    /// The x402 `PAYMENT-REQUIRED` value of a 402 for `url`.
    pub fn x402_header(&self, rejection: &Rejection, config: &Config, url: &str) -> std::rc::Rc<str> {
        match rejection {
            Rejection::PaymentRequired => {
                let last = self.last_required.try_borrow().ok().and_then(|last| {
                    last.as_ref().filter(|(for_url, _)| for_url == url).map(|(_, header)| header.clone())
                });
                if let Some(header) = last {
                    return header;
                }
                let header: std::rc::Rc<str> =
                    payer::payment_required_header_with(&self.required_head, url, &self.x402_tail).into();
                if let Ok(mut last) = self.last_required.try_borrow_mut() {
                    *last = Some((url.to_string(), header.clone()));
                }
                header
            }
            other => {
                let head = payer::payment_required_head(other.code(), &other.message(config));
                payer::payment_required_header_with(&head, url, &self.x402_tail).into()
            }
        }
    }

    /// The JSON body of a 402 (pre-rendered for `payment_required`).
    pub fn json_body(&self, rejection: &Rejection, config: &Config) -> std::borrow::Cow<'_, str> {
        match rejection {
            Rejection::PaymentRequired => std::borrow::Cow::Borrowed(&self.required_body),
            other => std::borrow::Cow::Owned(other.body_with(config, Some(self))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn config() -> Config {
        Config::regtest_example()
    }

    fn body_of(r: &Rejection) -> Value {
        let c = config();
        serde_json::from_str(&r.body(&c, Some(&c.default_policy), None)).unwrap()
    }

    #[test]
    fn payment_required_carries_the_challenge() {
        let body = body_of(&Rejection::PaymentRequired);
        assert_eq!(body["error"], "payment_required");
        assert_eq!(
            body["payment"],
            json!({"network": "regtest", "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"], "price_sats": 1000,
                   "min_confirmations": 1, "max_age_secs": 86400, "header": "x-bitcoin-txid",
                   "network_id": "bip122:0f9188f13cb7b2c71f2a335e3a4fc328", "amount_btc": "0.00001",
                   "bip21": ["bitcoin:bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080?amount=0.00001"],
                   "manifest": "/.well-known/txgate"})
        );
        assert_eq!(Rejection::PaymentRequired.status(), 402);
    }

    /// What is rendered once per route is what would be rendered per request.
    #[test]
    fn the_pre_rendered_answers_equal_the_per_request_renderings() {
        let c = config();
        let challenge = Challenge::render(&c, &c.default_policy, None);
        let url = "http://api.example/data?x=\"1\"";
        let decode = |h: &str| -> Value { serde_json::from_slice(&crate::ledger::b64::decode(h).unwrap()).unwrap() };
        for r in [
            Rejection::PaymentRequired,
            Rejection::TxNotFound,
            Rejection::PaymentExhausted { requests: Some(3), window_secs: None },
        ] {
            assert_eq!(challenge.json_body(&r, &c), r.body_with(&c, Some(&challenge)), "{}", r.code());
            let accepts = x402_accepts(&c, &c.default_policy, &c.pay_to);
            let whole = payer::payment_required_header(r.code(), &r.message(&c), url, &accepts);
            assert_eq!(decode(&challenge.x402_header(&r, &c, url)), decode(&whole), "{}", r.code());
        }
        // The header kept for the last URL is that URL's, and only for it.
        let required = Rejection::PaymentRequired;
        let resource = |h: &str| -> String { decode(h)["resource"]["url"].as_str().unwrap().to_string() };
        let a = challenge.x402_header(&required, &c, "http://api.example/a");
        assert!(std::rc::Rc::ptr_eq(&a, &challenge.x402_header(&required, &c, "http://api.example/a")), "kept");
        assert_eq!(resource(&challenge.x402_header(&required, &c, "http://api.example/b")), "http://api.example/b");
        assert_eq!(resource(&challenge.x402_header(&required, &c, "http://api.example/a")), "http://api.example/a");
        assert_eq!(
            resource(&challenge.x402_header(&Rejection::TxNotFound, &c, "http://api.example/c")),
            "http://api.example/c"
        );
        assert_eq!(resource(&challenge.x402_header(&required, &c, "http://api.example/a")), "http://api.example/a");
    }

    #[test]
    fn detail_fields_are_present() {
        let b = body_of(&Rejection::InsufficientPayment { paid_sats: 5, required_sats: 1000 });
        assert_eq!(
            (b["error"].as_str(), b["paid_sats"].as_u64(), b["required_sats"].as_u64()),
            (Some("insufficient_payment"), Some(5), Some(1000))
        );
        let b = body_of(&Rejection::InsufficientConfirmations { confirmations: 0, required: 1 });
        assert_eq!((b["confirmations"].as_u64(), b["required"].as_u64()), (Some(0), Some(1)));
        assert!(b["payment"].is_object());
        let b = body_of(&Rejection::PaymentExpired { block_time: 7, max_age_secs: 60 });
        assert_eq!((b["block_time"].as_u64(), b["max_age_secs"].as_u64()), (Some(7), Some(60)));
    }

    #[test]
    fn non_402_answers_carry_no_challenge() {
        let b = body_of(&Rejection::InvalidTxid);
        assert_eq!((b["error"].as_str(), Rejection::InvalidTxid.status()), (Some("invalid_txid"), 400));
        assert!(b.get("payment").is_none());
        let b = body_of(&Rejection::ExplorerUnavailable);
        assert_eq!(Rejection::ExplorerUnavailable.status(), 503);
        assert!(b.get("payment").is_none());
        assert!(Rejection::ExplorerUnavailable.headers().contains(&("retry-after", "5".to_string())));
    }
}
