//! A mesh-wide ledger of grants and bindings on etcd (see the README's "One ledger for the mesh").
//!
//! Pure logic only: the configuration, the etcd transactions and their replies, owner ids, and
//! the per-Envoy block accounting. The glue (`filter::ledger`) sends the transactions.

pub mod b64;
pub mod config;
pub mod etcd;
pub mod held;
pub mod owner;

#[cfg(test)]
pub(crate) mod model;
