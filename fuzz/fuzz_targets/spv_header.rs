//! Arbitrary block headers (`/block/:hash/header` hex bodies and raw 80-byte chunks), nBits and
//! `/blocks/:height` JSON bodies. Must never panic; parsed headers round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::spv::{check_chain, parse_blocks_json, Header, Target};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Header::from_hex_body(data) {
        assert_eq!(Header::from_bytes(&h.to_bytes()), Ok(h));
    }
    let headers: Vec<Header> = data.chunks_exact(80).filter_map(|c| Header::from_bytes(c).ok()).collect();
    assert_eq!(headers.len(), data.len() / 80);
    if let Some(bits) = data.first_chunk::<4>() {
        if let Ok(floor) = Target::from_compact(u32::from_le_bytes(*bits)) {
            let _ = check_chain(&headers, &floor);
        }
    }
    if let Ok(blocks) = parse_blocks_json(data) {
        for pair in blocks.windows(2) {
            assert_eq!(pair[0].0 + 1, pair[1].0);
        }
    }
});
