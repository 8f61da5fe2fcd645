//! txgate: a Proxy-Wasm filter that lets a request through only when it carries the id of a
//! bitcoin transaction that paid for it.
//!
//! Everything but `filter` is plain Rust with no host calls, tested natively.

pub mod address;
pub mod config;
pub mod duration;
pub mod esplora;
pub mod metrics;
pub mod payment;
pub mod rejection;
pub mod txid;

#[cfg(target_family = "wasm")]
mod filter;
