//! Arbitrary explorer answers to `GET /tx/:txid`: the first two bytes are the HTTP status
//! (little endian), the rest the body. Must never panic; a Found answer must be consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::esplora::{parse_tx, TxLookup};
use txgate::txid::Txid;

const TXID: &[u8] = b"4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
const PAY_TO: [&str; 2] = ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn"];

fuzz_target!(|data: &[u8]| {
    let Some(txid) = Txid::parse(TXID) else { return };
    let pay_to: Vec<String> = PAY_TO.iter().map(|a| a.to_string()).collect();
    let (status, body) = match data {
        [lo, hi, rest @ ..] => (u16::from_le_bytes([*lo, *hi]), rest),
        _ => (200, data),
    };
    // Bias towards 200 so that most inputs reach the JSON reader.
    let status = if status % 8 == 0 { status } else { 200 };
    if let Ok(TxLookup::Found(_)) = parse_tx(status, body, &txid, &pay_to) {
        assert_eq!(status, 200);
    }
});
