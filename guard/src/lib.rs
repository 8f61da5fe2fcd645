//! txgate-guard's pure parts, tested natively: which addresses may be banned, the ban API (HTTP
//! over a Unix socket) and the Prometheus text. `main.rs` holds what touches the kernel.

pub mod api;
pub mod http;
pub mod policy;
