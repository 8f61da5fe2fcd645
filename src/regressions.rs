//! Minimal reproducers of bugs found by the fuzz targets (fuzz/) and property tests
//! (tests/properties.rs). Each test names the target or property that found it.

#[cfg(test)]
mod tests {
    use crate::esplora::{parse_tip_height, parse_tx, ExplorerError};
    use crate::txid::Txid;

    const TXID: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";

    /// Found by fuzz target `explorer_tip` (in under a second) and property
    /// `parse_tip_height_never_panics_on_arbitrary_text`: a non-numeric tip answer was cut to 32
    /// bytes for the error message with `String::truncate`, which panics when byte 32 falls inside a
    /// multi-byte character. In Envoy (panic = "abort") an explorer answer could kill the Wasm VM.
    #[test]
    fn tip_height_error_with_a_multibyte_char_at_byte_32_does_not_panic() {
        // 31 ASCII bytes, then 'é' (2 bytes) covering bytes 31..33.
        let body = format!("{}\u{e9}", "x".repeat(31));
        assert!(matches!(parse_tip_height(200, body.as_bytes()), Err(ExplorerError::Malformed(_))));
        // The fuzzer's own input: status 11983 % 8 != 0 is mapped to 200 by the target.
        let fuzzed: &[u8] = b"\n3\n\n\n\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\n3\n\n\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\x1e\n\xcf\x9d";
        assert!(matches!(parse_tip_height(200, fuzzed), Err(ExplorerError::Malformed(_))));
    }

    /// Found by property `parse_tx_never_panics_on_an_arbitrary_txid_field`: the txid of an answer
    /// about another transaction was cut to 64 bytes with `String::truncate` for `WrongTxid`, which
    /// panics when byte 64 falls inside a multi-byte character.
    #[test]
    fn wrong_txid_with_a_multibyte_char_at_byte_64_does_not_panic() {
        let asked = Txid::parse(TXID.as_bytes()).unwrap();
        let claimed = format!("{}\u{e9}", "a".repeat(63));
        let body = serde_json::json!({"txid": claimed, "vout": [], "status": {"confirmed": false}}).to_string();
        match parse_tx(200, body.as_bytes(), &asked, &[]) {
            Err(ExplorerError::WrongTxid(shown)) => assert!(claimed.starts_with(&shown) && shown.chars().count() <= 64),
            other => panic!("expected WrongTxid, got {other:?}"),
        }
    }
}
