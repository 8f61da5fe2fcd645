//! Small wrappers over host calls that cannot panic and say what failed.

use std::borrow::Cow;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

use crate::config::Policy;
use crate::duration::millis;
use crate::gate::{ClientAddress, Effects, Gate, PaymentStatus, Verdict};
use crate::metrics::Counter;
use crate::payer;
use crate::rejection::Rejection;
use crate::store::{SharedStore, StoreError};

/// The SDK's own logger and panic hook unwrap the host's answer; these ignore it instead, since a
/// log line that cannot be written must not take the VM down.
struct HostLogger;

static LOGGER: HostLogger = HostLogger;

impl log::Log for HostLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        let _ = hostcalls::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

pub fn install_logger_and_panic_hook() {
    let _ = log::set_logger(&LOGGER);
    // Envoy filters by its own `wasm` log level as well; let everything through to it.
    log::set_max_level(log::LevelFilter::Debug);
    std::panic::set_hook(Box::new(|info| {
        let _ = hostcalls::log(LogLevel::Critical, &format!("txgate panicked: {info}"));
    }));
}

/// Counter ids as the host assigned them; a counter that could not be defined is a no-op.
#[derive(Debug, Default)]
pub struct Metrics {
    ids: Vec<Option<u32>>,
}

impl Metrics {
    pub fn define() -> Metrics {
        let ids = Counter::ALL
            .iter()
            .map(|c| match hostcalls::define_metric(MetricType::Counter, c.name()) {
                Ok(id) => Some(id),
                Err(status) => {
                    log::warn!("txgate: metric {} not defined: {status:?}", c.name());
                    None
                }
            })
            .collect();
        Metrics { ids }
    }

    pub fn count(&self, counter: Counter) {
        if let Some(Some(id)) = self.ids.get(counter.index()) {
            let _ = hostcalls::increment_metric(*id, 1);
        }
    }
}

pub fn buffer(kind: BufferType, size: usize) -> Option<Vec<u8>> {
    match hostcalls::get_buffer(kind, 0, size) {
        Ok(bytes) => Some(bytes.unwrap_or_default()),
        Err(status) => {
            log::warn!("txgate: reading {kind:?} failed: {status:?}");
            None
        }
    }
}

pub fn header_bytes(map: MapType, name: &str) -> Option<Vec<u8>> {
    hostcalls::get_map_value_bytes(map, name).ok().flatten()
}

pub fn now_unix_ms() -> u64 {
    hostcalls::get_current_time().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, millis)
}

/// Proxy-Wasm shared data (one map per `vm_id`, shared by every worker).
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(value), Some(cas))) => Some((value, cas)),
            Ok((None, Some(cas))) => Some((Vec::new(), cas)),
            _ => None,
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), Some(cas)) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => {
                log::warn!("txgate: writing shared data {key} failed: {status:?}");
                Err(StoreError::Host)
            }
        }
    }
}

/// A connection property as text (e.g. `source.address`), if the host has it.
pub fn property(path: &[&str]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok().flatten()?;
    String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
}

/// What a local reply needs to know of its request: read by the stream context from the headers
/// it has, or from the host again for a request answered from the root context.
#[derive(Debug, Default, Clone)]
pub struct ReplyFacts {
    /// A browser asking for a page: a 402 is the paywall.
    pub html: bool,
    /// `scheme://authority/path` for the x402 `resource.url`.
    pub url: String,
    /// A cross-origin request: the x402 headers are exposed to its script.
    pub origin: bool,
}

impl ReplyFacts {
    pub fn of(headers: &[(String, Vec<u8>)]) -> ReplyFacts {
        let get = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
        let text = |name: &str| get(name).map(String::from_utf8_lossy).unwrap_or_default();
        ReplyFacts {
            html: payer::wants_html(get("accept"), get("user-agent")),
            url: format!("{}://{}{}", text(":scheme"), text(":authority"), text(":path")),
            origin: get("origin").is_some(),
        }
    }

    /// For a request answered from the root context: only a 402 uses these facts, so only a 402
    /// reads the request's headers from the host again.
    pub fn for_paused(rejection: &Rejection) -> ReplyFacts {
        if rejection.status() != 402 {
            return ReplyFacts::default();
        }
        hostcalls::get_map_bytes(MapType::HttpRequestHeaders).map(|h| ReplyFacts::of(&h)).unwrap_or_default()
    }
}

/// How a rejection was carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// A local reply went out: the request must not be resumed.
    Replied,
    /// The request must go on (`mode: shadow` marked it instead of refusing it).
    GoesOn,
}

/// Sends the local reply for a rejection, or in shadow mode marks the request instead (except
/// where there is nothing to forward to: `local_only`, and internal errors).
/// `payee` is the client's own address (xpub `pay_to`), shown in the challenge instead of `pay_to`.
#[allow(clippy::too_many_arguments)]
pub fn send_rejection(
    context_id: u32,
    gate: &Gate,
    metrics: &Metrics,
    rejection: &Rejection,
    policy: Option<&Policy>,
    payee: Option<&ClientAddress>,
    reply: &ReplyFacts,
    local_only: bool,
) -> Sent {
    metrics.count(rejection.counter());
    if gate.config.shadow && !local_only && *rejection != Rejection::Internal {
        metrics.count(Counter::Shadowed);
        add_request_header(context_id, "x-txgate-shadow", rejection.code());
        return Sent::GoesOn;
    }
    let extra = rejection.headers();
    // The code in a header, for access logs (fail2ban): Envoy logs no details for a Wasm local reply.
    let mut headers: Vec<(&str, &str)> = vec![("x-txgate-error", rejection.code())];
    headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
    let challenge = policy.filter(|_| rejection.status() == 402).map(|p| gate.challenge(p, payee));
    let x402;
    let page;
    let body: Cow<'_, str> = match &challenge {
        Some(challenge) => {
            // Rendered once per route and payee: only the URL is encoded per request (and, for
            // a 402 other than payment_required, its message).
            x402 = challenge.x402_header(rejection, &gate.config, &reply.url);
            headers.push((payer::PAYMENT_REQUIRED, &x402));
            if gate.manifest.is_some() {
                headers.push(("link", "</.well-known/txgate>; rel=\"service-meta\""));
            }
            if reply.origin {
                headers
                    .push(("access-control-expose-headers", "payment-required, payment-response, retry-after, link"));
            }
            match (&challenge.page, reply.html) {
                (Some(p), true) => {
                    metrics.count(Counter::PaywallPages);
                    page = p;
                    headers.push(("content-type", "text/html; charset=utf-8"));
                    headers.push(("content-security-policy", &page.csp));
                    headers.push(("x-content-type-options", "nosniff"));
                    match rejection {
                        Rejection::PaymentRequired => Cow::Borrowed(page.blank.as_str()),
                        other => Cow::Owned(page.with_status(&other.message(&gate.config))),
                    }
                }
                _ => {
                    headers.push(("content-type", "application/json"));
                    challenge.json_body(rejection, &gate.config)
                }
            }
        }
        None => {
            headers.push(("content-type", "application/json"));
            gate.plain_bodies.body(rejection, &gate.config)
        }
    };
    if let Err(status) = hostcalls::send_http_response(rejection.status(), headers, Some(body.as_bytes())) {
        log::error!("#{context_id} txgate: sending the {} reply failed: {status:?}", rejection.code());
    }
    Sent::Replied
}

/// A local 200 answer of the filter's own (manifest, status), never cached by shared caches
/// unless `cache_control` says so.
pub fn send_own_answer(context_id: u32, body: &str, cache_control: &str) {
    let headers = vec![
        ("content-type", "application/json"),
        ("cache-control", cache_control),
        ("access-control-allow-origin", "*"),
    ];
    if let Err(status) = hostcalls::send_http_response(200, headers, Some(body.as_bytes())) {
        log::error!("#{context_id} txgate: sending an answer failed: {status:?}");
    }
}

/// The status endpoint's answer for a status verdict: 200 with the state, or the rejection it is.
pub fn send_status(context_id: u32, gate: &Gate, metrics: &Metrics, status: &PaymentStatus) {
    match crate::status::body(status, &gate.config) {
        Some(body) => {
            metrics.count(Counter::StatusAnswers);
            send_own_answer(context_id, &body, "no-store");
        }
        None => {
            if let Err(rejection) = &status.outcome {
                let reply = ReplyFacts::default();
                let _ = send_rejection(context_id, gate, metrics, rejection, None, None, &reply, true);
            }
        }
    }
}

/// A request's receipt (txid, paid sats), once it is let through.
type Receipt = Option<(String, String)>;

thread_local! {
    /// Receipts for the x402 requests waiting for their response headers (which answer with
    /// PAYMENT-RESPONSE): in the response phase the request headers can no longer be read (the
    /// SDK panics on the host's refusal), and a request let through from the root context
    /// cannot tell its own stream context.
    static RECEIPTS: std::cell::RefCell<Vec<(u32, Receipt)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks a request as wanting its receipt (it paid through an x402 PAYMENT-SIGNATURE).
pub fn expect_receipt(context_id: u32) {
    RECEIPTS.with(|r| {
        if let Ok(mut r) = r.try_borrow_mut() {
            if !r.iter().any(|(id, _)| *id == context_id) {
                r.push((context_id, None));
            }
        }
    });
}

/// Keeps the receipt of a request let through, if it expects one.
pub fn keep_receipt(context_id: u32, verdict: &Verdict) {
    if let Verdict::Allow { txid, receipt, .. } = verdict {
        RECEIPTS.with(|r| {
            if let Ok(mut r) = r.try_borrow_mut() {
                if let Some((_, kept)) = r.iter_mut().find(|(id, _)| *id == context_id) {
                    *kept = Some((txid.to_string(), receipt.paid_sats.to_string()));
                }
            }
        });
    }
}

/// Takes the kept receipt of a request (also to forget it when the request ends).
pub fn take_receipt(context_id: u32) -> Receipt {
    RECEIPTS.with(|r| {
        let mut r = r.try_borrow_mut().ok()?;
        let at = r.iter().position(|(id, _)| *id == context_id)?;
        r.swap_remove(at).1
    })
}

pub fn add_request_header(context_id: u32, name: &str, value: &str) {
    if let Err(status) = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value) {
        log::error!("#{context_id} txgate: adding {name} failed: {status:?}");
    }
}

/// The headers a forwarded request carries to the API for this verdict.
pub fn forwarded_headers(verdict: &Verdict) -> Vec<(&'static str, String)> {
    match verdict {
        Verdict::Allow { txid, receipt, discount, address_path, ledger_fallback, .. } => {
            let mut headers = vec![
                ("x-txgate-txid", txid.to_string()),
                ("x-txgate-paid-sats", receipt.paid_sats.to_string()),
                ("x-txgate-confirmations", receipt.confirmations.to_string()),
            ];
            if let Some(discount) = discount {
                headers.push(("x-txgate-discount", discount.clone()));
            }
            if let Some(path) = address_path {
                headers.push(("x-txgate-address-path", path.clone()));
            }
            if *ledger_fallback {
                headers.push(("x-txgate-unverified", "ledger_unavailable".to_string()));
            }
            headers
        }
        Verdict::AllowUnverified => vec![("x-txgate-unverified", "explorer_unavailable".to_string())],
        _ => Vec::new(),
    }
}

/// Counts a verdict that lets the request go on.
pub fn count_forwarded(context_id: u32, metrics: &Metrics, verdict: &Verdict) {
    match verdict {
        Verdict::Free => metrics.count(Counter::Free),
        Verdict::Allow { from_cache, .. } => {
            metrics.count(Counter::Allowed);
            if *from_cache {
                metrics.count(Counter::CacheHits);
            }
        }
        Verdict::AllowUnverified => {
            log::warn!(
                "#{context_id} txgate: explorer unavailable, request let through unverified (failure_mode open)"
            );
            metrics.count(Counter::FailedOpen);
        }
        _ => {}
    }
}

/// Carries out the verdict on a paused request from the root context (after
/// `set_effective_context`): adds the headers and resumes it, or sends the rejection.
pub fn carry_out_paused(
    context_id: u32,
    gate: &Gate,
    metrics: &Metrics,
    verdict: &Verdict,
    payee: Option<&ClientAddress>,
) {
    let sent = match verdict {
        Verdict::Reject { rejection, policy } => {
            let reply = ReplyFacts::for_paused(rejection);
            send_rejection(context_id, gate, metrics, rejection, policy.as_ref(), payee, &reply, false)
        }
        Verdict::Lookup(ticket) if ticket.probe => {
            let busy = Rejection::VerificationBusy;
            send_rejection(context_id, gate, metrics, &busy, None, None, &ReplyFacts::default(), true)
        }
        Verdict::Lookup(ticket) => {
            let busy = Rejection::VerificationBusy;
            let reply = ReplyFacts::for_paused(&busy);
            send_rejection(context_id, gate, metrics, &busy, Some(&ticket.policy), payee, &reply, false)
        }
        Verdict::Ledger(wait) => {
            let busy = Rejection::VerificationBusy;
            let reply = ReplyFacts::for_paused(&busy);
            send_rejection(context_id, gate, metrics, &busy, Some(&wait.ticket.policy), payee, &reply, false)
        }
        Verdict::Status(status) => {
            send_status(context_id, gate, metrics, status);
            Sent::Replied
        }
        Verdict::Free | Verdict::Allow { .. } | Verdict::AllowUnverified => {
            for (name, value) in forwarded_headers(verdict) {
                add_request_header(context_id, name, &value);
            }
            count_forwarded(context_id, metrics, verdict);
            keep_receipt(context_id, verdict);
            Sent::GoesOn
        }
    };
    if sent == Sent::GoesOn {
        if let Err(status) = hostcalls::resume_http_request() {
            log::error!("#{context_id} txgate: resuming the request failed: {status:?}");
        }
    }
}

pub fn count_effects(metrics: &Metrics, effects: Effects) {
    if effects.struck {
        metrics.count(Counter::Strikes);
    }
    if effects.banned {
        metrics.count(Counter::Bans);
    }
    if effects.ledger_full {
        log::warn!("txgate: a verified payment found no free cache slot; raise cache.max_entries");
        metrics.count(Counter::LedgerFull);
    }
    if effects.fail_open_limited {
        metrics.count(Counter::FailOpenLimited);
    }
    if effects.ledger_fallback {
        log::warn!("txgate: ledger unavailable, request counted by this Envoy alone (ledger.failure_mode local)");
        metrics.count(Counter::LedgerFallbacks);
    }
}
