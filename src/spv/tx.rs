//! Raw transactions as `/tx/:txid/hex` serves them: legacy or BIP-144 (segwit) serialization.
//!
//! Parsed the way Bitcoin Core deserializes (cited through rust-bitcoin, which ports it): minimal
//! CompactSize, at least one input and one output, flag 0x01 after the segwit marker, witnesses not
//! all empty, no trailing byte. Outputs borrow from the input; nothing is re-encoded.

use super::hash::{dsha256, Hash256};
use std::fmt;

/// A parsed transaction. `txid` hashes the witness-stripped serialization, sliced from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tx<'a> {
    pub txid: Hash256,
    pub outputs: Vec<TxOut<'a>>,
    /// Length of the witness-stripped serialization (64 is the CVE-2017-12842 shape).
    pub stripped_len: usize,
    pub segwit: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxOut<'a> {
    pub value: u64,
    pub script_pubkey: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxError {
    /// The bytes ended inside a field.
    Truncated,
    /// Bytes left after the lock time.
    TrailingBytes,
    /// A CompactSize that a shorter encoding could hold.
    NonMinimalCompactSize,
    /// A count or length larger than the bytes that remain.
    CountTooLarge,
    NoInputs,
    NoOutputs,
    /// Segwit marker followed by a flag other than 0x01.
    BadSegwitFlag(u8),
    /// Segwit serialization whose witnesses are all empty (Core refuses it).
    EmptyWitnesses,
}

impl fmt::Display for TxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxError::Truncated => f.write_str("raw transaction ends inside a field"),
            TxError::TrailingBytes => f.write_str("raw transaction has bytes after its lock time"),
            TxError::NonMinimalCompactSize => f.write_str("raw transaction has a non-minimal CompactSize"),
            TxError::CountTooLarge => f.write_str("raw transaction has a count larger than its remaining bytes"),
            TxError::NoInputs => f.write_str("raw transaction has no inputs"),
            TxError::NoOutputs => f.write_str("raw transaction has no outputs"),
            TxError::BadSegwitFlag(flag) => write!(f, "raw transaction has segwit flag 0x{flag:02x}, not 0x01"),
            TxError::EmptyWitnesses => f.write_str("raw transaction is segwit-serialized with all witnesses empty"),
        }
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Reader<'a> {
        Reader { data, pos: 0 }
    }

    fn pos(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.data.len().saturating_sub(self.pos)
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], TxError> {
        let end = self.pos.checked_add(n).ok_or(TxError::Truncated)?;
        let slice = self.data.get(self.pos..end).ok_or(TxError::Truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], TxError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, TxError> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn peek(&self, offset: usize) -> Option<u8> {
        self.data.get(self.pos.checked_add(offset)?).copied()
    }

    fn u64_le(&mut self) -> Result<u64, TxError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Bitcoin's CompactSize, refused unless minimal.
    fn compact_size(&mut self) -> Result<u64, TxError> {
        let (value, min) = match self.byte()? {
            0xfd => (u64::from(u16::from_le_bytes(self.array()?)), 0xfd),
            0xfe => (u64::from(u32::from_le_bytes(self.array()?)), 0x1_0000),
            0xff => (self.u64_le()?, 0x1_0000_0000),
            small => return Ok(u64::from(small)),
        };
        if value < min {
            return Err(TxError::NonMinimalCompactSize);
        }
        Ok(value)
    }

    /// A count of items each at least `min_item` bytes long: refused early when the rest cannot
    /// hold them, so that a forged count never drives a long loop.
    fn count(&mut self, min_item: usize) -> Result<usize, TxError> {
        let n = usize::try_from(self.compact_size()?).map_err(|_| TxError::CountTooLarge)?;
        if n.checked_mul(min_item).is_none_or(|bytes| bytes > self.remaining()) {
            return Err(TxError::CountTooLarge);
        }
        Ok(n)
    }

    fn var_bytes(&mut self) -> Result<&'a [u8], TxError> {
        let len = self.count(1)?;
        self.take(len)
    }
}

// prevout(36) + script length(1) + sequence(4); value(8) + script length(1).
const MIN_INPUT_LEN: usize = 41;
const MIN_OUTPUT_LEN: usize = 9;

/// Parses a whole raw transaction; the bytes must hold exactly one.
pub fn parse_tx(raw: &[u8]) -> Result<Tx<'_>, TxError> {
    let mut r = Reader::new(raw);
    r.take(4)?; // version
                // BIP-144: a zero where the input count would be is the marker; a flag must follow.
    let segwit = r.peek(0) == Some(0);
    if segwit {
        let flag = r.peek(1).ok_or(TxError::Truncated)?;
        if flag != 1 {
            return Err(TxError::BadSegwitFlag(flag));
        }
        r.take(2)?;
    }
    let body_start = r.pos();
    let inputs = r.count(MIN_INPUT_LEN)?;
    if inputs == 0 {
        return Err(TxError::NoInputs);
    }
    for _ in 0..inputs {
        r.take(36)?; // prevout
        r.var_bytes()?; // scriptSig
        r.take(4)?; // sequence
    }
    let n_outputs = r.count(MIN_OUTPUT_LEN)?;
    if n_outputs == 0 {
        return Err(TxError::NoOutputs);
    }
    let mut outputs = Vec::with_capacity(n_outputs);
    for _ in 0..n_outputs {
        let value = r.u64_le()?;
        let script_pubkey = r.var_bytes()?;
        outputs.push(TxOut { value, script_pubkey });
    }
    let body_end = r.pos();
    if segwit {
        let mut any_witness = false;
        for _ in 0..inputs {
            let items = r.count(1)?;
            any_witness |= items > 0;
            for _ in 0..items {
                r.var_bytes()?;
            }
        }
        if !any_witness {
            return Err(TxError::EmptyWitnesses);
        }
    }
    let lock_time = r.take(4)?;
    if !r.is_empty() {
        return Err(TxError::TrailingBytes);
    }
    let version = raw.get(..4).ok_or(TxError::Truncated)?;
    let body = raw.get(body_start..body_end).ok_or(TxError::Truncated)?;
    let mut stripped = Vec::with_capacity(body.len().saturating_add(8));
    stripped.extend_from_slice(version);
    stripped.extend_from_slice(body);
    stripped.extend_from_slice(lock_time);
    Ok(Tx { txid: dsha256(&stripped), outputs, stripped_len: stripped.len(), segwit })
}

/// True when 64 bytes parse as a legacy transaction: the CVE-2017-12842 shape, whose txid equals
/// a merkle inner node. Segwit serializations do not count (they hash to a wtxid, not a txid).
pub fn is_64_byte_tx(node: &[u8; 64]) -> bool {
    node.get(4) != Some(&0) && parse_tx(node).is_ok()
}

/// Sum of the outputs whose scriptPubKey is byte-for-byte one of `ours`. `None` on overflow,
/// which only a forged transaction could reach.
pub fn paid_to(tx: &Tx<'_>, ours: &[Vec<u8>]) -> Option<u64> {
    tx.outputs
        .iter()
        .filter(|out| ours.iter().any(|s| s.as_slice() == out.script_pubkey))
        .try_fold(0u64, |sum, out| sum.checked_add(out.value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spv::vectors::*;

    /// CompactSizes at the edge of each width: the smallest value a width may carry is minimal;
    /// one less had to use the narrower width.
    #[test]
    fn compact_sizes_are_minimal_at_each_edge() {
        let read = |bytes: &[u8]| Reader::new(bytes).compact_size();
        assert_eq!(read(&[0xfc]), Ok(0xfc));
        assert_eq!(read(&[0xfd, 0xfd, 0x00]), Ok(0xfd));
        assert_eq!(read(&[0xfd, 0xfc, 0x00]), Err(TxError::NonMinimalCompactSize));
        assert_eq!(read(&[0xfe, 0x00, 0x00, 0x01, 0x00]), Ok(0x1_0000));
        assert_eq!(read(&[0xfe, 0xff, 0xff, 0x00, 0x00]), Err(TxError::NonMinimalCompactSize));
        assert_eq!(read(&[0xff, 0, 0, 0, 0, 1, 0, 0, 0]), Ok(0x1_0000_0000));
        assert_eq!(read(&[0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]), Err(TxError::NonMinimalCompactSize));
    }

    /// A count may claim exactly the bytes that remain, not one item more.
    #[test]
    fn a_count_may_fill_the_rest_exactly() {
        assert_eq!(Reader::new(&[0x02, 0xaa, 0xbb]).count(1), Ok(2));
        assert_eq!(Reader::new(&[0x03, 0xaa, 0xbb]).count(1), Err(TxError::CountTooLarge));
        assert_eq!(Reader::new(&[0x01, 0xaa, 0xbb]).count(2), Ok(1));
        assert_eq!(Reader::new(&[0x02, 0xaa, 0xbb]).count(2), Err(TxError::CountTooLarge));
    }

    #[test]
    fn refusals_say_what_is_wrong_with_the_transaction() {
        let texts = [
            (TxError::Truncated, "raw transaction ends inside a field"),
            (TxError::TrailingBytes, "raw transaction has bytes after its lock time"),
            (TxError::NonMinimalCompactSize, "raw transaction has a non-minimal CompactSize"),
            (TxError::CountTooLarge, "raw transaction has a count larger than its remaining bytes"),
            (TxError::NoInputs, "raw transaction has no inputs"),
            (TxError::NoOutputs, "raw transaction has no outputs"),
            (TxError::BadSegwitFlag(2), "raw transaction has segwit flag 0x02, not 0x01"),
            (TxError::EmptyWitnesses, "raw transaction is segwit-serialized with all witnesses empty"),
        ];
        for (error, text) in texts {
            assert_eq!(error.to_string(), text);
        }
    }

    fn raw(hex_text: &str) -> Vec<u8> {
        hex::decode(hex_text).unwrap()
    }

    #[test]
    fn genesis_coinbase() {
        let bytes = raw(GENESIS_COINBASE);
        let tx = parse_tx(&bytes).unwrap();
        assert_eq!(tx.txid.to_display_hex(), GENESIS_COINBASE_TXID);
        assert!(!tx.segwit);
        assert_eq!(tx.outputs.len(), 1);
        assert_eq!(tx.outputs[0].value, 5_000_000_000);
        assert_eq!(tx.outputs[0].script_pubkey.len(), 67); // P2PK: push 65, key, OP_CHECKSIG
    }

    #[test]
    fn first_payment_block_170() {
        let bytes = raw(B170_TX1);
        let tx = parse_tx(&bytes).unwrap();
        assert_eq!(tx.txid.to_display_hex(), B170_TX1_TXID);
        let values: Vec<u64> = tx.outputs.iter().map(|o| o.value).collect();
        assert_eq!(values, [1_000_000_000, 4_000_000_000]);
    }

    #[test]
    fn p2pkh_outputs_block_169482() {
        let bytes = raw(B169482_TX9);
        let tx = parse_tx(&bytes).unwrap();
        assert_eq!(tx.txid.to_display_hex(), B169482_TX9_TXID);
        assert_eq!(tx.outputs[0].value, 647_499_350);
        assert_eq!(hex::encode(tx.outputs[0].script_pubkey), "76a9146cf42c3a2d8c1555a7209949b3233fd70afbf06f88ac");
        assert_eq!(tx.outputs[1].value, 31_495_238);
    }

    #[test]
    fn segwit_coinbase_block_481829_hashes_without_witness() {
        let bytes = raw(B481829_COINBASE);
        let tx = parse_tx(&bytes).unwrap();
        assert!(tx.segwit);
        assert_eq!(tx.txid.to_display_hex(), B481829_COINBASE_TXID);
        // Hashing the bytes as served gives the wtxid (bitcoinj BlockTest asserts both).
        assert_eq!(dsha256(&bytes).to_display_hex(), B481829_COINBASE_WTXID);
        assert_eq!(tx.outputs[0].value, 1_749_653_928);
        assert_eq!(tx.stripped_len, bytes.len() - 2 - 1 - 1 - 32);
    }

    #[test]
    fn segwit_signet_payment_to_p2wsh() {
        let bytes = raw(SIGNET_TX);
        let tx = parse_tx(&bytes).unwrap();
        assert!(tx.segwit);
        assert_eq!(tx.txid.to_display_hex(), SIGNET_TXID);
        assert_eq!(tx.outputs.len(), 1);
        assert_eq!(tx.outputs[0].script_pubkey.len(), 34);
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_refused() {
        for vector in [GENESIS_COINBASE, B170_TX1, B481829_COINBASE, SIGNET_TX] {
            let bytes = raw(vector);
            for len in 0..bytes.len() {
                assert!(parse_tx(&bytes[..len]).is_err(), "prefix of {len} bytes accepted");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(parse_tx(&longer), Err(TxError::TrailingBytes));
        }
    }

    #[test]
    fn malformed_shapes() {
        let bytes = raw(B170_TX1);
        // Input count 0x01 written as 0xfd 0x01 0x00.
        let mut non_minimal = bytes[..4].to_vec();
        non_minimal.extend_from_slice(&[0xfd, 0x01, 0x00]);
        non_minimal.extend_from_slice(&bytes[5..]);
        assert_eq!(parse_tx(&non_minimal), Err(TxError::NonMinimalCompactSize));
        // A huge input count is refused before any loop.
        let mut huge = bytes[..4].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]);
        assert_eq!(parse_tx(&huge), Err(TxError::CountTooLarge));
        // Segwit marker with a bad flag.
        let seg = raw(SIGNET_TX);
        let mut bad_flag = seg.clone();
        bad_flag[5] = 2;
        assert_eq!(parse_tx(&bad_flag), Err(TxError::BadSegwitFlag(2)));
        // Segwit serialization with every witness emptied.
        let mut no_witness = raw(SIGNET_TX);
        let lock = no_witness.split_off(no_witness.len() - 4);
        // The signet tx's single witness is `01 01 51`: one item `51`. Replace it with 0 items.
        assert_eq!(&no_witness[no_witness.len() - 3..], &[1, 1, 0x51]);
        no_witness.truncate(no_witness.len() - 3);
        no_witness.push(0);
        no_witness.extend_from_slice(&lock);
        assert_eq!(parse_tx(&no_witness), Err(TxError::EmptyWitnesses));
        // No outputs: version, 1 input of B170_TX1, 0 outputs, lock time.
        let tx = parse_tx(&bytes).unwrap();
        let input_end = bytes.len() - 4 - tx.outputs.iter().map(|o| 9 + o.script_pubkey.len()).sum::<usize>() - 1;
        let mut no_outputs = bytes[..input_end].to_vec();
        no_outputs.push(0);
        no_outputs.extend_from_slice(&[0; 4]);
        assert_eq!(parse_tx(&no_outputs), Err(TxError::NoOutputs));
        assert_eq!(parse_tx(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Err(TxError::BadSegwitFlag(0)));
    }

    #[test]
    fn electrum_64_byte_transaction_is_recognised() {
        // Electrum tests/test_verifier.py VALID_64_BYTE_TX (mined on testnet3 for CVE-2017-12842).
        let bytes: [u8; 64] = raw(ELECTRUM_64_BYTE_TX).try_into().unwrap();
        assert!(is_64_byte_tx(&bytes));
        assert_eq!(parse_tx(&bytes).unwrap().stripped_len, 64);
        // Two real txids side by side (an honest inner node) do not parse.
        let mut node = [0u8; 64];
        node[..32].copy_from_slice(&Hash256::from_display_hex(B170_TX1_TXID).unwrap().0);
        node[32..].copy_from_slice(&Hash256::from_display_hex(GENESIS_COINBASE_TXID).unwrap().0);
        assert!(!is_64_byte_tx(&node));
    }

    #[test]
    fn sums_only_our_scripts() {
        let bytes = raw(B169482_TX9);
        let tx = parse_tx(&bytes).unwrap();
        let first = tx.outputs[0].script_pubkey.to_vec();
        let second = tx.outputs[1].script_pubkey.to_vec();
        assert_eq!(paid_to(&tx, &[]), Some(0));
        assert_eq!(paid_to(&tx, std::slice::from_ref(&first)), Some(647_499_350));
        assert_eq!(paid_to(&tx, &[first, second]), Some(647_499_350 + 31_495_238));
        // A prefix of a script is not the script.
        let prefix = tx.outputs[0].script_pubkey[..24].to_vec();
        assert_eq!(paid_to(&tx, &[prefix]), Some(0));
    }

    proptest::proptest! {
        /// Real transactions with bytes flipped, cut or appended: never a panic, and a legacy parse
        /// always hashes the whole input.
        #[test]
        fn mutated_real_transactions_never_panic(
            which in 0usize..4,
            flips in proptest::collection::vec((0usize..4096, proptest::num::u8::ANY), 0..4),
            cut in 0usize..4096,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..3),
        ) {
            let mut bytes = raw([GENESIS_COINBASE, B170_TX1, B481829_COINBASE, SIGNET_TX][which]);
            for (at, value) in flips {
                let len = bytes.len();
                bytes[at % len] = value;
            }
            bytes.truncate(cut.max(1).min(bytes.len()));
            bytes.extend_from_slice(&tail);
            if let Ok(tx) = parse_tx(&bytes) {
                if !tx.segwit {
                    proptest::prop_assert_eq!(tx.txid, dsha256(&bytes));
                }
            }
        }
    }
}
