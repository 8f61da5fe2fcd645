//! txgate: a Proxy-Wasm filter that lets a request through only when it carries the id of a
//! bitcoin transaction that paid for it.
//!
//! Everything but `filter` is plain Rust with no host calls, tested natively.

// The in-memory test store only needs `len`.
#![cfg_attr(test, allow(clippy::len_without_is_empty))]

pub mod address;
pub mod allowance;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod discount;
pub mod duration;
pub mod esplora;
pub mod gate;
pub mod grant;
pub mod guard;
pub mod identity;
pub mod json_out;
pub mod ledger;
pub mod manifest;
pub mod memo;
pub mod metrics;
pub mod path;
pub mod payer;
pub mod payment;
pub mod paywall;
pub mod penalty;
pub mod record;
pub mod rejection;
pub mod scope;
pub mod spv;
pub mod spv_lookup;
pub mod status;
pub mod store;
pub mod txid;
pub mod xpub;

#[cfg(test)]
mod regressions;

#[cfg(target_family = "wasm")]
mod filter;
