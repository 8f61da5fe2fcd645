//! SPV: verifying an explorer's answer by proof of work instead of trusting it (issue 10).
//!
//! Pure functions over the bodies of Esplora's `/tx/:txid/hex`, `/tx/:txid/merkle-proof`,
//! `/block/:hash/header` and `/blocks/:height`; see `../shared/design/spv-design.md` for the
//! formats and the reasoning. [`proof::verify`] ties the checks together.

pub mod hash;
pub mod header;
pub mod merkle;
pub mod proof;
pub mod target;
pub mod tx;

#[cfg(test)]
pub(crate) mod vectors;

pub use hash::{decode_hex_body, dsha256, Hash256, HexError};
pub use header::{check_chain, headers_at, parse_blocks_json, BlocksError, ChainError, Header, HeaderError};
pub use merkle::{fold_branch, MerkleError, MerkleProof};
pub use proof::{verify, Evidence, ProofError, Verified};
pub use target::{default_floor, default_floor_bits, parse_floor_bits, CompactError, Target};
pub use tx::{paid_to, parse_tx, Tx, TxError, TxOut};
