//! Reference filter of the benchmarks: the fixed price of any Rust Proxy-Wasm filter, and the
//! *twin* of each answer txgate gives, so that every txgate scenario is compared with a filter that
//! gives the same shape of answer and does nothing else.
//!
//! The plugin configuration is a list of `;`-separated lines (`bench.py` writes it):
//!   `<ops>`                     first line: a comma-separated list of extra host calls (profile), may be empty
//!   `reply <status>`            answer every request locally with this status ...
//!   `header <hex name> <hex value>`  ... and these response headers ...
//!   `body <hex>`                ... and this body (txgate's own answer, byte for byte)
//!   `add <hex name> <hex value>` pass the request on with this request header added (txgate's receipt)
//!   `callout <hex cluster> <hex authority> <hex path prefix> [tip|spv]`  before passing the request
//!                               on, ask the explorer for the txid (`<prefix>/tx/<txid>`; with `tip`,
//!                               `<prefix>/blocks/tip/height` too, in parallel; with `spv`,
//!                               `<prefix>/tx/<txid>/hex` and `<prefix>/tx/<txid>/merkle-proof` in
//!                               parallel instead, the first round of `verify: spv`), read the
//!                               bodies, then resume: txgate's cold path without its decisions
//! With no `reply` the request goes on (with the `add` headers). Whatever the configuration, the
//! filter first reads the `x-bitcoin-txid` request header, as the original reference did.
//!
//! The ops, for `bench.py`'s host-call profile:
//!   all_headers  read the whole request header map (what txgate does to find path, txid, x-txgate-*)
//!   headers10    read ten named request headers one host call each (what txgate would do instead
//!                if Envoy stripped its own header names: path, method, origin, cookie, ...)
//!   metric       increment a counter
//!   metric2      increment two counters (txgate counts `allowed` and `cache_hits` on a warm hit)
//!   shared_get   read one shared-data key (a payment cache lookup)
//!   property     read `source.address` (the penalty box's identity)
//!   add_headers  add three request headers (what txgate adds to a paid request)
//!   time         read the clock
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

#[derive(Default)]
struct Ops {
    all_headers: bool,
    headers10: bool,
    metric: Option<u32>,
    metric2: Option<u32>,
    shared_get: bool,
    property: bool,
    add_headers: bool,
    time: bool,
    reply: Option<u32>,
    reply_headers: Vec<(String, String)>,
    body: Vec<u8>,
    add: Vec<(String, String)>,
    callout: Option<(String, String, String, Vec<&'static str>)>,
}

#[derive(Default)]
struct Root {
    ops: Rc<Ops>,
}

impl Context for Root {}

fn unhex(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => 0,
    };
    b.chunks(2).filter(|p| p.len() == 2).map(|p| digit(p[0]) * 16 + digit(p[1])).collect()
}

fn text(s: &str) -> String {
    String::from_utf8_lossy(&unhex(s)).into_owned()
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        let mut lines = config.trim_matches('"').split(';');
        let mut ops = Ops::default();
        for op in lines.next().unwrap_or("").split(',').map(str::trim) {
            match op {
                "all_headers" => ops.all_headers = true,
                "headers10" => ops.headers10 = true,
                "metric" => {
                    ops.metric = hostcalls::define_metric(MetricType::Counter, "bench_reference_requests").ok()
                }
                "metric2" => {
                    ops.metric = hostcalls::define_metric(MetricType::Counter, "bench_reference_requests").ok();
                    ops.metric2 = hostcalls::define_metric(MetricType::Counter, "bench_reference_hits").ok();
                }
                "shared_get" => ops.shared_get = true,
                "property" => ops.property = true,
                "add_headers" => ops.add_headers = true,
                "time" => ops.time = true,
                _ => {}
            }
        }
        for line in lines {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["reply", status] => ops.reply = status.parse().ok(),
                ["header", name, value] => ops.reply_headers.push((text(name), text(value))),
                ["body", body] => ops.body = unhex(body),
                ["add", name, value] => ops.add.push((text(name), text(value))),
                ["callout", cluster, authority, prefix, rest @ ..] => {
                    let suffixes = match rest {
                        ["tip"] => vec!["/tx/{txid}", "/blocks/tip/height"],
                        ["spv"] => vec!["/tx/{txid}/hex", "/tx/{txid}/merkle-proof"],
                        _ => vec!["/tx/{txid}"],
                    };
                    ops.callout = Some((text(cluster), text(authority), text(prefix), suffixes))
                }
                _ => {}
            }
        }
        self.ops = Rc::new(ops);
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reference { ops: self.ops.clone(), waiting: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Reference {
    ops: Rc<Ops>,
    /// Callouts still under way.
    waiting: u32,
}

impl Reference {
    fn pass_on(&self) {
        for (k, v) in &self.ops.add {
            let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, k, v);
        }
    }
}

impl Context for Reference {
    fn on_http_call_response(&mut self, _token: u32, _headers: usize, body_size: usize, _trailers: usize) {
        let _ = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size);
        self.waiting = self.waiting.saturating_sub(1);
        if self.waiting == 0 {
            self.pass_on();
            let _ = hostcalls::resume_http_request();
        }
    }
}

impl HttpContext for Reference {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let ops = &self.ops;
        let txid = hostcalls::get_map_value(MapType::HttpRequestHeaders, "x-bitcoin-txid").ok().flatten();
        if ops.all_headers {
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        }
        if ops.headers10 {
            for name in [
                ":path",
                ":method",
                ":scheme",
                ":authority",
                "origin",
                "payment-signature",
                "cookie",
                "content-length",
                "transfer-encoding",
                "x-forwarded-for",
            ] {
                let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, name);
            }
        }
        if ops.property {
            let _ = hostcalls::get_property(vec!["source", "address"]);
        }
        if ops.shared_get {
            let _ = hostcalls::get_shared_data("bench-reference-key");
        }
        if ops.time {
            let _ = hostcalls::get_current_time();
        }
        if ops.add_headers {
            for (k, v) in [
                ("x-bench-a", "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"),
                ("x-bench-b", "1000"),
                ("x-bench-c", "1"),
            ] {
                let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, k, v);
            }
        }
        if let Some(id) = ops.metric {
            let _ = hostcalls::increment_metric(id, 1);
        }
        if let Some(id) = ops.metric2 {
            let _ = hostcalls::increment_metric(id, 1);
        }
        if let Some(status) = ops.reply {
            let headers: Vec<(&str, &str)> = ops.reply_headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let _ = hostcalls::send_http_response(status, headers, Some(&ops.body));
            return Action::Pause;
        }
        if let Some((cluster, authority, prefix, suffixes)) = &ops.callout {
            let txid = txid.unwrap_or_default();
            for suffix in suffixes {
                let path = format!("{prefix}{}", suffix.replace("{txid}", &txid));
                let headers = vec![(":method", "GET"), (":path", path.as_str()), (":authority", authority.as_str())];
                if hostcalls::dispatch_http_call(cluster, headers, None, vec![], std::time::Duration::from_secs(5)).is_ok() {
                    self.waiting += 1;
                }
            }
            if self.waiting > 0 {
                return Action::Pause;
            }
        }
        self.pass_on();
        Action::Continue
    }
}
