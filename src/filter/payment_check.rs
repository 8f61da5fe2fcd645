//! The stream context: one per request. Reads what the gate needs off the host, carries out the
//! verdict, or parks the request with the worker's verifier until the explorer answers.

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, MapType};

use super::host::{self, HostStore, Metrics, ReplyFacts, Sent};
use super::ledger::Enqueued as LedgerEnqueued;
use super::root::{arm_tick, queue_guard_post, start_refill};
use super::verifier::{Enqueued, Verifier};
use crate::config::{AccessRef, Policy};
use crate::discount::Condition;
use crate::gate::{ClientAddress, Gate, RequestFacts, Ticket, Verdict};
use crate::identity::{client_address, identity_hash, IdentitySource};
use crate::metrics::{Counter, RejectionKind};
use crate::path;
use crate::payer;
use crate::rejection::Rejection;
use crate::store::SharedStore;

/// Headers only the filter may set; whatever a client sends under this prefix is removed.
const OWN_HEADER_PREFIX: &str = "x-txgate-";

/// Set once a request arrives without X-Forwarded-For: this Envoy does not append the peer.
/// Shared by every configuration of the VM: it is a fact about the listener's HCM, and wrong
/// only in the safe direction when two listeners differ.
const XFF_NOT_APPENDED_KEY: &str = "txgate/xff-not-appended";

thread_local! {
    /// This worker's copy of that fact, and when it last read the shared one (unix ms).
    static XFF_NOT_APPENDED: std::cell::Cell<(bool, u64)> = const { std::cell::Cell::new((false, 0)) };
}

/// Whether a header or trailer name is one of ours, also spelled with `_` for `-` (CGI, WSGI,
/// PHP and Rack map both to the same variable, `HTTP_X_TXGATE_...`).
fn is_own_header(name: &str) -> bool {
    let n = name.as_bytes();
    let p = OWN_HEADER_PREFIX.as_bytes();
    n.len() >= p.len()
        && n.iter().zip(p).all(|(a, b)| {
            let a = if *a == b'_' { b'-' } else { a.to_ascii_lowercase() };
            a == *b
        })
}

/// Claims that Envoy's `jwt_authn` filter verified, for the discounts that ask about them.
fn jwt_claims(config: &crate::config::Config) -> Vec<(String, String, String)> {
    let mut claims = Vec::new();
    for d in &config.discounts {
        if let Condition::JwtClaim { metadata_key, claim, .. } = &d.condition {
            let path = ["metadata", "filter_metadata", "envoy.filters.http.jwt_authn", metadata_key, claim];
            if let Some(value) = host::property(&path) {
                claims.push((metadata_key.clone(), claim.clone(), value));
            }
        }
    }
    claims
}

pub struct PaymentCheck {
    id: u32,
    gate: Option<Rc<Gate>>,
    metrics: Rc<Metrics>,
    verifier: Rc<RefCell<Verifier>>,
    waiting: bool,
    /// The txid came in an x402 PAYMENT-SIGNATURE: the response gets PAYMENT-RESPONSE.
    x402: bool,
}

/// The client's identity facts, read off the host (see `PaymentCheck::client`).
struct ClientFacts {
    principal: Option<String>,
    source_address: Option<String>,
    source_trusted: bool,
    claims: Vec<(String, String, String)>,
    now_ms: u64,
}

impl ClientFacts {
    fn facts<'a>(&'a self, path: &'a str, headers: &'a [(String, Vec<u8>)]) -> RequestFacts<'a> {
        RequestFacts {
            path,
            headers,
            principal: self.principal.as_deref(),
            source_address: self.source_address.as_deref(),
            source_trusted: self.source_trusted,
            claims: &self.claims,
            now_ms: self.now_ms,
        }
    }
}

impl PaymentCheck {
    pub fn new(id: u32, gate: Option<Rc<Gate>>, metrics: Rc<Metrics>, verifier: Rc<RefCell<Verifier>>) -> PaymentCheck {
        PaymentCheck { id, gate, metrics, verifier, waiting: false, x402: false }
    }

    fn check(&mut self, gate: &Gate) -> Action {
        let headers = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(status) => {
                log::error!("#{} txgate: reading request headers failed: {status:?}", self.id);
                return self.refuse(gate, Rejection::Internal);
            }
        };
        let config = &gate.config;
        let mut forged = false;
        let mut raw_path: &[u8] = b"";
        let mut preflight = (false, false, false);
        let mut has_body = false;
        let mut forwarded_for = false;
        let mut txids: Vec<&[u8]> = Vec::new();
        let mut method: &[u8] = b"";
        let mut signature: Option<&[u8]> = None;
        let mut cookies: Vec<&[u8]> = Vec::new();
        for (name, value) in &headers {
            match name.as_str() {
                ":path" => raw_path = value,
                ":method" => {
                    method = value;
                    preflight.0 = value.as_slice() == b"OPTIONS";
                }
                "origin" => preflight.1 = true,
                payer::PAYMENT_SIGNATURE => signature = Some(value),
                "cookie" => cookies.push(value),
                "access-control-request-method" => preflight.2 = true,
                "transfer-encoding" => has_body = true,
                "content-length" => has_body |= value.as_slice() != b"0",
                "x-forwarded-for" => forwarded_for = true,
                _ if *name == config.header => txids.push(value),
                _ if is_own_header(name) => forged = true,
                _ => {}
            }
        }
        let canonical = match path::canonicalize(raw_path) {
            Ok(p) => p,
            Err(why) => {
                log::info!("#{} txgate: refused path {:?}: {why}", self.id, String::from_utf8_lossy(raw_path));
                return self.refuse(gate, Rejection::InvalidPath);
            }
        };
        let raw_without_query = raw_path.split(|b| *b == b'?' || *b == b'#').next().unwrap_or(raw_path);
        if canonical.as_bytes() != raw_without_query {
            // Priced as its canonical form; counted so that path tricks show up in the metrics.
            self.metrics.count(Counter::NonCanonicalPaths);
            log::debug!(
                "#{} txgate: path {:?} priced as {canonical:?}",
                self.id,
                String::from_utf8_lossy(raw_without_query)
            );
        }
        let reading = method == b"GET" || method == b"HEAD";
        if reading && canonical == payer::MANIFEST_PATH {
            if let Some(manifest) = &gate.manifest {
                self.metrics.count(Counter::ManifestAnswers);
                host::send_own_answer(self.id, manifest, "max-age=300");
                return Action::Pause;
            }
        }
        if reading && canonical == payer::STATUS_PATH {
            return self.status(gate, &headers, raw_path, forwarded_for, forged);
        }
        let matching = path::matching_form(&canonical);
        // A free route needs nothing else from the host: no identity, no clock, no shared data.
        if config.access_for(&matching) == AccessRef::Free {
            return self.forward(gate, &headers, forged, &Verdict::Free);
        }
        // A CORS preflight carries no credentials by design; browsers send it before the paid
        // request and fail the page when it is refused. It never has a body: one that does is
        // not a preflight, whatever its headers say.
        if preflight == (true, true, true) && !has_body {
            self.metrics.count(Counter::Preflights);
            return self.forward(gate, &headers, forged, &Verdict::Free);
        }
        if config.txid_cookie && reading {
            // The paywall's form (no script needed): the txid becomes a cookie, and the browser
            // comes back to the same path without it. Only this path: no open redirect.
            if let Some(value) = payer::query_param(raw_path, payer::TXID_COOKIE) {
                let location = payer::redirect_target(&canonical, raw_path, payer::TXID_COOKIE);
                return self.set_txid_cookie(gate, &headers, &location, value, forged);
            }
        }
        let signed_txid;
        if txids.is_empty() {
            if let Some(value) = signature {
                self.metrics.count(Counter::X402Signatures);
                self.x402 = true;
                // Filled in when the request is let through, here or from the root context.
                host::expect_receipt(self.id);
                // A header that is no x402 payload is refused as a bad txid, like the header's.
                signed_txid = payer::txid_from_payment_signature(value);
                txids.push(signed_txid.as_deref().map_or(value, str::as_bytes));
            } else if config.txid_cookie {
                if let Some(value) = cookies.iter().find_map(|c| payer::cookie(c, payer::TXID_COOKIE)) {
                    self.metrics.count(Counter::CookieTxids);
                    txids.push(value);
                }
            }
        }
        let needs_source = config.penalty.is_some() || config.bind_to == Some(IdentitySource::SourceAddress);
        // While no client is banned, most answers need no client record: the address (a property
        // read) only when one does.
        let mut client = self.client(gate, needs_source, forwarded_for, false);
        let settled = gate.admit_without_client(&HostStore, &client.facts(&matching, &headers), &txids);
        let (verdict, effects) = match settled {
            Some(settled) => settled,
            None => {
                if needs_source {
                    client.source_address = host::property(&["source", "address"]);
                }
                gate.admit(&HostStore, &client.facts(&matching, &headers), &txids)
            }
        };
        let now_ms = client.now_ms;
        let facts = client.facts(&matching, &headers);
        let source_address = client.source_address.as_deref();
        host::count_effects(&self.metrics, effects);
        if let (Some(_), Some(source)) = (&config.guard, source_address) {
            // A banned client that reached L7 was not dropped in the kernel: posted again.
            let left = match &verdict {
                Verdict::Reject { rejection: Rejection::ClientBanned { retry_after_secs }, .. } => {
                    Some(*retry_after_secs)
                }
                _ => None,
            };
            if let Ok(mut v) = self.verifier.try_borrow_mut() {
                match left {
                    Some(left) if v.guard_reposts.due(source, now_ms) => queue_guard_post(&mut v, gate, source, left),
                    None if effects.banned => queue_guard_post(&mut v, gate, source, u64::MAX),
                    _ => {}
                }
            }
        }
        start_refill(&self.verifier, effects, now_ms);
        let ticket = match verdict {
            Verdict::Lookup(ticket) => ticket,
            Verdict::Ledger(wait) => {
                // The request goes on later, from the root context: drop forged headers now.
                if forged && !self.remove_own(MapType::HttpRequestHeaders, &headers) {
                    return self.refuse(gate, Rejection::Internal);
                }
                let Ok(mut v) = self.verifier.try_borrow_mut() else {
                    return self.refuse(gate, Rejection::VerificationBusy);
                };
                let queued = match v.ledger.enqueue(self.id, *wait, now_ms) {
                    LedgerEnqueued::Started | LedgerEnqueued::Joined => arm_tick(&mut v),
                    LedgerEnqueued::Busy => false,
                };
                drop(v);
                if !queued {
                    return self.refuse(gate, Rejection::VerificationBusy);
                }
                self.waiting = true;
                return Action::Pause;
            }
            Verdict::Reject { rejection, policy } => {
                // A 402 shows the client its own address (xpub pay_to; derived once per identity).
                let payee = (rejection.status() == 402).then(|| gate.client_address(&facts)).flatten();
                let payee = payee.and_then(Result::ok);
                let reply = ReplyFacts::of(&headers);
                return self.reject(gate, &headers, forged, &rejection, policy.as_ref(), payee.as_ref(), &reply);
            }
            Verdict::Status(status) => {
                host::send_status(self.id, gate, &self.metrics, &status);
                return Action::Pause;
            }
            forwarded => return self.forward(gate, &headers, forged, &forwarded),
        };
        self.park(gate, &headers, forged, ticket, now_ms)
    }

    /// Parks a request whose txid the explorer must be asked about, with the worker's verifier.
    fn park(
        &mut self,
        gate: &Gate,
        headers: &[(String, Vec<u8>)],
        forged: bool,
        mut ticket: Ticket,
        now_ms: u64,
    ) -> Action {
        if ticket.client_key == 0 {
            // Lookups are limited per client: read who this is only now, on the cold path.
            let source = host::property(&["source", "address"]).unwrap_or_default();
            ticket.client_key = identity_hash(&IdentitySource::SourceAddress, client_address(&source).as_bytes());
        }
        // The request will go on later, from the root context: drop forged headers now.
        if forged && !self.remove_own(MapType::HttpRequestHeaders, headers) {
            return self.refuse(gate, Rejection::Internal);
        }
        let Ok(mut v) = self.verifier.try_borrow_mut() else {
            return self.refuse(gate, Rejection::VerificationBusy);
        };
        let txid = ticket.txid.clone();
        match v.enqueue(gate, self.id, ticket, now_ms) {
            Enqueued::Joined => {}
            Enqueued::Started => {
                if !arm_tick(&mut v) {
                    v.finish(&txid);
                    v.pending.retain(|t| *t != txid);
                    drop(v);
                    return self.refuse(gate, Rejection::Internal);
                }
            }
            Enqueued::Busy => {
                drop(v);
                return self.refuse(gate, Rejection::VerificationBusy);
            }
        }
        self.waiting = true;
        Action::Pause
    }

    /// Lets the request go on now, with forged `x-txgate-*` headers dropped and ours added. With
    /// headers to change, the whole map is written back in one host call instead of one per header.
    fn forward(&self, gate: &Gate, headers: &[(String, Vec<u8>)], forged: bool, verdict: &Verdict) -> Action {
        let ours = host::forwarded_headers(verdict);
        if !forged {
            for (name, value) in &ours {
                host::add_request_header(self.id, name, value);
            }
        } else {
            let mut map: Vec<(&str, &[u8])> = headers
                .iter()
                .filter(|(name, _)| !is_own_header(name))
                .map(|(name, value)| (name.as_str(), value.as_slice()))
                .collect();
            map.extend(ours.iter().map(|(name, value)| (*name, value.as_bytes())));
            if let Err(status) = hostcalls::set_map_bytes(MapType::HttpRequestHeaders, map) {
                log::error!("#{} txgate: writing request headers failed: {status:?}", self.id);
                return self.refuse(gate, Rejection::Internal);
            }
        }
        host::count_forwarded(self.id, &self.metrics, verdict);
        if self.x402 {
            host::keep_receipt(self.id, verdict);
        }
        Action::Continue
    }

    /// Whether `source.address` is the client's own address. With `use_remote_address: true` Envoy
    /// appends the peer to X-Forwarded-For on every request; without it, Envoy takes the client's
    /// X-Forwarded-For as the source address. A request that reaches us with no X-Forwarded-For
    /// at all proves the listener does not append, and from then on a request that carries one
    /// names whatever source it likes: it is refused rather than trusted.
    fn source_is_the_peer(&self, forwarded_for: bool, now_ms: u64) -> bool {
        let (known, read_at) = XFF_NOT_APPENDED.get();
        if !forwarded_for {
            if !known {
                XFF_NOT_APPENDED.set((true, now_ms));
                if HostStore.get(XFF_NOT_APPENDED_KEY).is_none_or(|(v, _)| v.is_empty()) {
                    log::error!(
                        "txgate: this listener does not set use_remote_address: true, so X-Forwarded-For is the client's to choose; requests that carry it are refused while a source_address identity is in use"
                    );
                    let _ = HostStore.set(XFF_NOT_APPENDED_KEY, b"1", 0);
                }
            }
            return true;
        }
        if known {
            return false;
        }
        // Another worker may have learned it: look at most once a second.
        if now_ms >= read_at.saturating_add(1_000) {
            let shared = HostStore.get(XFF_NOT_APPENDED_KEY).is_some_and(|(v, _)| !v.is_empty());
            XFF_NOT_APPENDED.set((shared, now_ms));
            return !shared;
        }
        true
    }

    /// Removes every `x-txgate-*` name (any spelling) from a header or trailer map; false when
    /// the host refused a removal (each is tried and logged).
    fn remove_own(&self, map: MapType, entries: &[(String, Vec<u8>)]) -> bool {
        let mut removed: Vec<&str> = Vec::new();
        let mut all = true;
        for (name, _) in entries {
            if is_own_header(name) && !removed.contains(&name.as_str()) {
                if let Err(status) = hostcalls::remove_map_value(map, name) {
                    log::error!("#{} txgate: removing client {name} ({map:?}) failed: {status:?}", self.id);
                    all = false;
                }
                removed.push(name);
            }
        }
        all
    }

    fn refuse(&self, gate: &Gate, rejection: Rejection) -> Action {
        let reply = ReplyFacts::default();
        let policy = Some(&gate.config.default_policy);
        match host::send_rejection(self.id, gate, &self.metrics, &rejection, policy, None, &reply, false) {
            Sent::Replied => Action::Pause,
            // Shadow mode: the forged headers were not looked at yet; dropped on the way.
            Sent::GoesOn => match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
                Ok(headers) => {
                    if !self.remove_own(MapType::HttpRequestHeaders, &headers) {
                        log::error!("#{} txgate: shadow mode could not drop forged headers", self.id);
                    }
                    Action::Continue
                }
                Err(_) => Action::Continue,
            },
        }
    }

    /// Refuses the request, or in shadow mode lets it go on marked (forged headers dropped).
    #[allow(clippy::too_many_arguments)]
    fn reject(
        &self,
        gate: &Gate,
        headers: &[(String, Vec<u8>)],
        forged: bool,
        rejection: &Rejection,
        policy: Option<&Policy>,
        payee: Option<&ClientAddress>,
        reply: &ReplyFacts,
    ) -> Action {
        if forged && gate.config.shadow && !self.remove_own(MapType::HttpRequestHeaders, headers) {
            return self.refuse(gate, Rejection::Internal);
        }
        match host::send_rejection(self.id, gate, &self.metrics, rejection, policy, payee, reply, false) {
            Sent::Replied => Action::Pause,
            Sent::GoesOn => Action::Continue,
        }
    }

    /// Who the client is, as the gate needs it: read off the host once per request (its address
    /// only with `read_source`).
    fn client(&self, gate: &Gate, needs_source: bool, forwarded_for: bool, read_source: bool) -> ClientFacts {
        let config = &gate.config;
        let uses = |source: &IdentitySource| {
            config.bind_to.as_ref() == Some(source) || config.penalty.as_ref().is_some_and(|p| &p.identity == source)
        };
        let principal = (uses(&IdentitySource::MtlsPrincipal)
            || config.discounts.iter().any(|d| matches!(d.condition, Condition::MtlsPrincipalIn(_))))
        .then(|| host::property(&["connection", "uri_san_peer_certificate"]))
        .flatten();
        let now_ms = host::now_unix_ms();
        let source_trusted = !needs_source || self.source_is_the_peer(forwarded_for, now_ms);
        let source_address = (needs_source && read_source).then(|| host::property(&["source", "address"])).flatten();
        ClientFacts { principal, source_address, source_trusted, claims: jwt_claims(config), now_ms }
    }

    /// `GET /.well-known/txgate/status?txid=…&path=…`: answered here, never forwarded; the
    /// txid is judged for `path` (default `/`) with nothing used, bound or struck.
    fn status(
        &mut self,
        gate: &Gate,
        headers: &[(String, Vec<u8>)],
        raw_path: &[u8],
        forwarded_for: bool,
        forged: bool,
    ) -> Action {
        let local = |this: &Self, rejection: Rejection| {
            let reply = ReplyFacts::default();
            let _ = host::send_rejection(this.id, gate, &this.metrics, &rejection, None, None, &reply, true);
            Action::Pause
        };
        let route = match payer::query_param(raw_path, "path") {
            None => b"/".to_vec(),
            Some(value) => match payer::percent_decode(value) {
                Some(decoded) => decoded,
                None => return local(self, Rejection::InvalidPath),
            },
        };
        let Ok(canonical) = path::canonicalize(&route) else { return local(self, Rejection::InvalidPath) };
        let matching = path::matching_form(&canonical);
        let txid = payer::query_param(raw_path, "txid").unwrap_or(b"");
        if gate.config.access_for(&matching) == AccessRef::Free {
            // Nothing to pay there: said as a state, so a page can simply go on.
            self.metrics.count(Counter::StatusAnswers);
            let free = crate::json_out::Obj::new().str("state", "free").str("message", "This route is free.").end();
            host::send_own_answer(self.id, &free, "no-store");
            return Action::Pause;
        }
        // Always read the source address: cold status checks are limited per client.
        let client = self.client(gate, true, forwarded_for, true);
        let facts = client.facts(&matching, headers);
        let (verdict, effects) = gate.status(&HostStore, &facts, txid);
        host::count_effects(&self.metrics, effects);
        match verdict {
            Verdict::Status(status) => {
                host::send_status(self.id, gate, &self.metrics, &status);
                Action::Pause
            }
            Verdict::Lookup(ticket) => self.park(gate, headers, forged, ticket, client.now_ms),
            Verdict::Reject { rejection, .. } => local(self, rejection),
            _ => local(self, Rejection::Internal),
        }
    }

    /// `?txgate_txid=<txid>` from the paywall's form: 303 back to the same path with the txid in
    /// an HttpOnly cookie, so that the browser presents it on every request from then on.
    fn set_txid_cookie(
        &self,
        gate: &Gate,
        headers: &[(String, Vec<u8>)],
        location: &str,
        value: &[u8],
        forged: bool,
    ) -> Action {
        let Some(txid) = crate::txid::Txid::parse(value) else {
            let reply = ReplyFacts::of(headers);
            return self.reject(gate, headers, forged, &Rejection::InvalidTxid, None, None, &reply);
        };
        let https = headers.iter().any(|(n, v)| n == ":scheme" && v.as_slice() == b"https");
        let max_age = gate.config.longest_max_age().map_or(String::new(), |d| format!("; Max-Age={}", d.as_secs()));
        let cookie = format!(
            "{}={txid}; Path=/; HttpOnly; SameSite=Lax{max_age}{}",
            payer::TXID_COOKIE,
            if https { "; Secure" } else { "" }
        );
        let reply = vec![("location", location), ("set-cookie", cookie.as_str()), ("cache-control", "no-store")];
        if let Err(status) = hostcalls::send_http_response(303, reply, None) {
            log::error!("#{} txgate: sending the cookie redirect failed: {status:?}", self.id);
        }
        Action::Pause
    }
}

impl Context for PaymentCheck {
    fn on_done(&mut self) -> bool {
        if self.x402 {
            // A receipt kept for a response that never came (reset, local reply) goes too.
            let _ = host::take_receipt(self.id);
        }
        if self.waiting {
            if let Ok(mut v) = self.verifier.try_borrow_mut() {
                v.forget(self.id);
            }
        }
        true
    }
}

impl HttpContext for PaymentCheck {
    /// A request an x402 `PAYMENT-SIGNATURE` paid for gets `PAYMENT-RESPONSE` (x402 v2).
    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if !self.x402 {
            return Action::Continue;
        }
        if let (Some(gate), Some((txid, paid))) = (&self.gate, host::take_receipt(self.id)) {
            let value = payer::payment_response_header(gate.config.network, &txid, &paid);
            if let Err(status) = hostcalls::add_map_value(MapType::HttpResponseHeaders, payer::PAYMENT_RESPONSE, &value)
            {
                log::error!("#{} txgate: adding payment-response failed: {status:?}", self.id);
            }
        }
        Action::Continue
    }

    /// Forged `x-txgate-*` trailers would reach an HTTP/2 backend that reads trailers.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        let Ok(trailers) = hostcalls::get_map_bytes(MapType::HttpRequestTrailers) else { return Action::Continue };
        // A removal the host refuses is logged; the request goes on, as it always has here.
        let _ = self.remove_own(MapType::HttpRequestTrailers, &trailers);
        Action::Continue
    }

    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.gate.clone() {
            Some(gate) => self.check(&gate),
            None => {
                log::error!("#{} txgate: no valid configuration; refusing the request", self.id);
                self.metrics.count(Counter::Rejected(RejectionKind::Internal));
                let _ = hostcalls::send_http_response(
                    500,
                    vec![("content-type", "application/json")],
                    Some(Rejection::Internal.body_without_config().as_bytes()),
                );
                Action::Pause
            }
        }
    }
}
