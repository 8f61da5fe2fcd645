//! Test infrastructure for txgate: a local regtest chain served over the
//! Esplora REST API with fault injection (`txgate-devnet`), and a demo API
//! backend that echoes what the filter forwarded (`txgate-demo-api`).

pub mod chain;
pub mod demo;
pub mod esplora;
pub mod explorer;
pub mod faults;
pub mod http;
pub mod lies;
pub mod store;
pub mod wallet;
