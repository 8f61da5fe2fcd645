//! Arbitrary bytes as a raw transaction (`/tx/:txid/hex` after hex decoding). Must never panic;
//! what parses must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::spv::{dsha256, parse_tx, tx::is_64_byte_tx};

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = parse_tx(data) {
        assert!(!tx.outputs.is_empty());
        assert!(tx.stripped_len <= data.len());
        if !tx.segwit {
            // A legacy serialization is its own stripped form.
            assert_eq!(tx.stripped_len, data.len());
            assert_eq!(tx.txid, dsha256(data));
        }
        for out in &tx.outputs {
            assert!(out.script_pubkey.len() < data.len());
        }
    }
    if let Ok(node) = <[u8; 64]>::try_from(data) {
        assert_eq!(is_64_byte_tx(&node), data[4] != 0 && parse_tx(data).is_ok());
    }
});
