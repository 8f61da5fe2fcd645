//! Arbitrary header bytes as a txid: accepted exactly when they are 64 ASCII hex digits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::txid::Txid;

fuzz_target!(|data: &[u8]| {
    let expected = data.len() == 64 && data.iter().all(u8::is_ascii_hexdigit);
    match Txid::parse(data) {
        Some(txid) => {
            assert!(expected);
            assert_eq!(txid.as_str().as_bytes(), data.to_ascii_lowercase().as_slice());
        }
        None => assert!(!expected),
    }
});
