//! Arbitrary request targets: canonicalization never panics, a canonical path is its own
//! canonical form, and it never keeps what a backend could read two ways.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::path::{canonicalize, matching_form};

fuzz_target!(|data: &[u8]| {
    if let Ok(canonical) = canonicalize(data) {
        assert!(canonical.starts_with('/'));
        assert!(!canonical.contains("//"), "{canonical}");
        assert!(!canonical.contains('\\'));
        assert!(!canonical.split('/').any(|s| s == "." || s == ".."), "{canonical}");
        assert_eq!(canonicalize(canonical.as_bytes()).as_deref(), Ok(&*canonical));
        let _ = matching_form(&canonical);
    }
});
