//! Reference filter of the benchmarks. With an empty plugin configuration it does nothing but read
//! the `x-bitcoin-txid` request header and continue: the fixed price of any Rust Proxy-Wasm filter.
//!
//! For `bench.py --profile` the configuration is a comma-separated list of extra host calls to make
//! on each request, so that the cost of each kind of call can be measured on its own:
//!   all_headers  read the whole request header map (what txgate does to find path, txid, x-txgate-*)
//!   metric       increment a counter
//!   shared_get   read one shared-data key (a payment cache lookup)
//!   add_headers  add three request headers (what txgate adds to a paid request)
//!   time         read the clock
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

#[derive(Clone, Copy, Default)]
struct Ops {
    all_headers: bool,
    metric: Option<u32>,
    shared_get: bool,
    add_headers: bool,
    time: bool,
}

#[derive(Default)]
struct Root {
    ops: Ops,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let config = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten().unwrap_or_default();
        let config = String::from_utf8_lossy(&config).into_owned();
        for op in config.trim_matches('"').split(',').map(str::trim) {
            match op {
                "all_headers" => self.ops.all_headers = true,
                "metric" => self.ops.metric = hostcalls::define_metric(MetricType::Counter, "bench_reference_requests").ok(),
                "shared_get" => self.ops.shared_get = true,
                "add_headers" => self.ops.add_headers = true,
                "time" => self.ops.time = true,
                _ => {}
            }
        }
        true
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Reference { ops: self.ops }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Reference {
    ops: Ops,
}

impl Context for Reference {}

impl HttpContext for Reference {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let _txid = self.get_http_request_header("x-bitcoin-txid");
        if self.ops.all_headers {
            let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
        }
        if self.ops.shared_get {
            let _ = hostcalls::get_shared_data("bench-reference-key");
        }
        if self.ops.time {
            let _ = hostcalls::get_current_time();
        }
        if self.ops.add_headers {
            for (k, v) in [("x-bench-a", "0123456789abcdef"), ("x-bench-b", "1000"), ("x-bench-c", "1")] {
                let _ = hostcalls::add_map_value(MapType::HttpRequestHeaders, k, v);
            }
        }
        if let Some(id) = self.ops.metric {
            let _ = hostcalls::increment_metric(id, 1);
        }
        Action::Continue
    }
}
