//! The stream context: one per request. Reads the txid header, asks the explorer, answers.

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};

use super::host::{self, Metrics};
use crate::config::{AccessRef, Config, Explorer, FailureMode, Policy};
use crate::esplora::{self, ExplorerError, TxLookup, MAX_BODY_BYTES};
use crate::metrics::{Counter, RejectionKind};
use crate::payment::{decide, Decision, Receipt};
use crate::rejection::Rejection;
use crate::txid::Txid;

/// Headers only the filter may set; whatever a client sends under this prefix is removed.
const OWN_HEADER_PREFIX: &str = "x-txgate-";

pub struct PaymentCheck {
    id: u32,
    config: Option<Rc<Config>>,
    metrics: Rc<Metrics>,
    lookup: Option<Lookup>,
}

/// A request paused while its payment is looked up.
struct Lookup {
    txid: Txid,
    policy: Policy,
    tx_call: Call<TxLookup>,
    tip_call: Call<u64>,
}

enum Call<T> {
    InFlight(u32),
    Done(Result<T, ExplorerError>),
}

impl<T> Call<T> {
    fn is_done(&self) -> bool {
        matches!(self, Call::Done(_))
    }
}

impl PaymentCheck {
    pub fn new(id: u32, config: Option<Rc<Config>>, metrics: Rc<Metrics>) -> PaymentCheck {
        PaymentCheck { id, config, metrics, lookup: None }
    }

    fn reject(&self, config: &Config, rejection: &Rejection, policy: Option<&Policy>) {
        self.metrics.count(rejection.counter());
        let body = rejection.body(config, policy);
        let extra = rejection.headers();
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(extra.iter().map(|(k, v)| (*k, v.as_str())));
        if let Err(status) = hostcalls::send_http_response(rejection.status(), headers, Some(body.as_bytes())) {
            log::error!("#{} txgate: sending the {} reply failed: {status:?}", self.id, rejection.code());
        }
    }

    fn dispatch(&self, explorer: &Explorer, path: &str) -> Result<u32, ExplorerError> {
        let config = self.config.as_deref().ok_or(ExplorerError::NoResponse)?;
        let full_path = format!("{}{path}", explorer.path_prefix);
        let headers = vec![
            (":method", "GET"),
            (":path", full_path.as_str()),
            (":authority", explorer.authority.as_str()),
            ("accept", "application/json"),
            ("user-agent", concat!("txgate/", env!("CARGO_PKG_VERSION"))),
        ];
        self.metrics.count(Counter::ExplorerCalls);
        hostcalls::dispatch_http_call(&explorer.cluster, headers, None, vec![], config.timeout).map_err(|status| {
            // Unknown cluster or missing pseudo-header: a deployment mistake, worth an error line.
            log::error!("#{} txgate: cannot call explorer cluster {:?}: {status:?}", self.id, explorer.cluster);
            ExplorerError::NoResponse
        })
    }

    /// Strips forged `x-txgate-*` headers and returns the request's path and txid header values.
    fn read_request(&self, config: &Config) -> Option<(String, Vec<Vec<u8>>)> {
        let headers = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(h) => h,
            Err(status) => {
                log::error!("#{} txgate: reading request headers failed: {status:?}", self.id);
                return None;
            }
        };
        let mut path = String::new();
        let mut txids = Vec::new();
        let mut forged: Vec<&str> = Vec::new();
        for (name, value) in &headers {
            if name == ":path" {
                path = String::from_utf8_lossy(value).into_owned();
            } else if *name == config.header {
                txids.push(value.clone());
            } else if name.starts_with(OWN_HEADER_PREFIX) && !forged.contains(&name.as_str()) {
                forged.push(name);
            }
        }
        for name in forged {
            if let Err(status) = hostcalls::remove_map_value(MapType::HttpRequestHeaders, name) {
                log::error!("#{} txgate: removing client header {name} failed: {status:?}", self.id);
                return None;
            }
        }
        Some((path, txids))
    }

    fn start(&mut self, config: &Config) -> Action {
        let Some((path, txids)) = self.read_request(config) else {
            self.reject(config, &Rejection::Internal, None);
            return Action::Pause;
        };
        let policy = match config.access_for(&path) {
            AccessRef::Free => {
                self.metrics.count(Counter::Free);
                return Action::Continue;
            }
            AccessRef::Paid(policy) => policy.clone(),
        };
        let txid = match txids.as_slice() {
            [] => {
                self.reject(config, &Rejection::PaymentRequired, Some(&policy));
                return Action::Pause;
            }
            [one] => Txid::parse(one),
            _ => None,
        };
        let Some(txid) = txid else {
            self.reject(config, &Rejection::InvalidTxid, Some(&policy));
            return Action::Pause;
        };
        let Some(explorer) = config.explorers.first() else {
            self.reject(config, &Rejection::ExplorerUnavailable, Some(&policy));
            return Action::Pause;
        };
        let tx_call = match self.dispatch(explorer, &format!("/tx/{txid}")) {
            Ok(token) => Call::InFlight(token),
            Err(err) => Call::Done(Err(err)),
        };
        let tip_call = match self.dispatch(explorer, "/blocks/tip/height") {
            Ok(token) => Call::InFlight(token),
            Err(err) => Call::Done(Err(err)),
        };
        self.lookup = Some(Lookup { txid, policy, tx_call, tip_call });
        self.finish_if_ready(config)
    }

    /// Answers once no callout is in flight, so that no callback can arrive for a finished request.
    fn finish_if_ready(&mut self, config: &Config) -> Action {
        let Some(lookup) = &self.lookup else { return Action::Continue };
        if !(lookup.tx_call.is_done() && lookup.tip_call.is_done()) {
            return Action::Pause;
        }
        let Some(lookup) = self.lookup.take() else { return Action::Continue };
        let tip = match lookup.tip_call {
            Call::Done(Ok(height)) => Some(height),
            _ => None,
        };
        let decision = match lookup.tx_call {
            Call::Done(Ok(TxLookup::Found(facts))) => decide(&lookup.policy, &facts, tip, host::now_unix_secs()),
            Call::Done(Ok(TxLookup::NotFound)) => Decision::Refused(Rejection::TxNotFound),
            _ => Decision::TipUnknown,
        };
        match decision {
            Decision::Paid(receipt) => self.allow(&lookup.txid, receipt),
            Decision::Refused(rejection) => {
                log::debug!("#{} txgate: {} refused: {}", self.id, lookup.txid, rejection.code());
                self.reject(config, &rejection, Some(&lookup.policy));
                Action::Pause
            }
            Decision::TipUnknown => self.explorer_failed(config, &lookup),
        }
    }

    fn allow(&self, txid: &Txid, receipt: Receipt) -> Action {
        let added = [
            ("x-txgate-txid", txid.to_string()),
            ("x-txgate-paid-sats", receipt.paid_sats.to_string()),
            ("x-txgate-confirmations", receipt.confirmations.to_string()),
        ];
        for (name, value) in &added {
            if let Err(status) = hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value) {
                log::error!("#{} txgate: adding {name} failed: {status:?}", self.id);
            }
        }
        self.metrics.count(Counter::Allowed);
        self.resume();
        Action::Continue
    }

    fn explorer_failed(&self, config: &Config, lookup: &Lookup) -> Action {
        match config.failure_mode {
            FailureMode::Closed => {
                self.reject(config, &Rejection::ExplorerUnavailable, Some(&lookup.policy));
                Action::Pause
            }
            FailureMode::Open => {
                log::warn!(
                    "#{} txgate: explorer unavailable, letting {} through unverified (failure_mode open)",
                    self.id,
                    lookup.txid
                );
                if let Err(status) =
                    hostcalls::add_map_value(MapType::HttpRequestHeaders, "x-txgate-unverified", "explorer_unavailable")
                {
                    log::error!("#{} txgate: adding x-txgate-unverified failed: {status:?}", self.id);
                }
                self.metrics.count(Counter::FailedOpen);
                self.resume();
                Action::Continue
            }
        }
    }

    fn resume(&self) {
        if let Err(status) = hostcalls::resume_http_request() {
            log::error!("#{} txgate: resuming the request failed: {status:?}", self.id);
        }
    }
}

fn read_callout(num_headers: usize, body_size: usize) -> Result<(u16, Vec<u8>), ExplorerError> {
    if num_headers == 0 {
        return Err(ExplorerError::NoResponse);
    }
    let status = host::header_bytes(MapType::HttpCallResponseHeaders, ":status")
        .and_then(|s| std::str::from_utf8(&s).ok().and_then(|s| s.parse::<u16>().ok()))
        .ok_or(ExplorerError::NoResponse)?;
    if body_size > MAX_BODY_BYTES {
        return Err(ExplorerError::TooLarge(body_size));
    }
    let body = host::buffer(BufferType::HttpCallResponseBody, body_size).ok_or(ExplorerError::NoResponse)?;
    Ok((status, body))
}

impl Context for PaymentCheck {
    fn on_http_call_response(&mut self, token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(config) = self.config.clone() else { return };
        let Some(lookup) = self.lookup.as_mut() else { return };
        let answer = read_callout(num_headers, body_size);
        let error = match (&lookup.tx_call, &lookup.tip_call) {
            (Call::InFlight(t), _) if *t == token_id => {
                let result = answer.and_then(|(s, b)| esplora::parse_tx(s, &b, &lookup.txid, &config.pay_to));
                let error = result.as_ref().err().cloned();
                lookup.tx_call = Call::Done(result);
                error
            }
            (_, Call::InFlight(t)) if *t == token_id => {
                let result = answer.and_then(|(s, b)| esplora::parse_tip_height(s, &b));
                let error = result.as_ref().err().cloned();
                lookup.tip_call = Call::Done(result);
                error
            }
            _ => return,
        };
        if let Some(error) = error {
            self.metrics.count(Counter::ExplorerErrors);
            log::warn!("#{} txgate: explorer answer unusable: {error}", self.id);
        }
        self.finish_if_ready(&config);
    }
}

impl HttpContext for PaymentCheck {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.config.clone() {
            Some(config) => self.start(&config),
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
