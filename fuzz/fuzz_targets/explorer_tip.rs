//! Arbitrary explorer answers to `GET /blocks/tip/height`: status (2 bytes LE) then body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::esplora::parse_tip_height;

fuzz_target!(|data: &[u8]| {
    let (status, body) = match data {
        [lo, hi, rest @ ..] => (u16::from_le_bytes([*lo, *hi]), rest),
        _ => (200, data),
    };
    let status = if status % 8 == 0 { status } else { 200 };
    if let Ok(height) = parse_tip_height(status, body) {
        let text = std::str::from_utf8(body).expect("a parsed height is text");
        assert_eq!(text.trim().parse::<u64>().ok(), Some(height));
    }
});
