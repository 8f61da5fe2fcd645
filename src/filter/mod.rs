//! The Proxy-Wasm glue: moves bytes between Envoy and the plain-Rust core. Every host call goes
//! through `proxy_wasm::hostcalls` so that its error is handled here instead of unwrapped.

mod host;
mod ledger;
mod payment_check;
mod root;
mod verifier;

proxy_wasm::main! {{
    host::install_logger_and_panic_hook();
    proxy_wasm::set_root_context(|_| Box::new(root::FilterRoot::default()));
}}
