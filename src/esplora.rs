//! Reading Esplora REST answers (Blockstream esplora, mempool.space, electrs-esplora).
//!
//! Only the fields the payment rules need are read; anything missing, negative, out of range or
//! for another transaction makes the answer unusable, never a guess.

use std::fmt;

use serde::Deserialize;

use crate::txid::Txid;

/// Answers larger than this are refused without being read: a real payment is far smaller,
/// and an explorer fault must not make every worker copy megabytes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
struct RawTx {
    txid: String,
    vout: Vec<RawOutput>,
    status: RawStatus,
}

#[derive(Debug, Deserialize)]
struct RawOutput {
    scriptpubkey_address: Option<String>,
    value: u64,
}

#[derive(Debug, Deserialize)]
struct RawStatus {
    confirmed: bool,
    block_height: Option<u64>,
    block_time: Option<u64>,
}

/// What the payment rules need to know about one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFacts {
    /// Sum of the outputs that pay one of our addresses.
    pub paid_sats: u64,
    /// `None` while the transaction is in the mempool.
    pub block: Option<BlockPlace>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlace {
    pub height: u64,
    pub time: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxLookup {
    Found(TxFacts),
    NotFound,
}

/// Under `verify: spv`, a block proven by proof of work: its height and time from the verified
/// header, and how many linked headers were checked from it up (its confirmations, as far as the
/// quorum agreed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProvenBlock {
    pub place: BlockPlace,
    pub depth: u32,
}

/// What an explorer said about a transaction before it is judged for one payee: every output
/// that pays an address, so that each client's own address (see `xpub`) can be summed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxAnswer {
    Found {
        block: Option<BlockPlace>,
        outputs: Vec<(String, u64)>,
    },
    NotFound,
    /// `verify: spv`: read from raw bytes that hash to the txid, outputs by scriptPubKey;
    /// `block` is `None` for a transaction the explorer has no merkle proof for (mempool).
    Proven {
        block: Option<ProvenBlock>,
        outputs: Vec<(Vec<u8>, u64)>,
    },
}

impl TxAnswer {
    /// The facts for a payee with these addresses (as explorers print them) and scriptPubKeys
    /// (what a proven answer's outputs are matched by).
    pub fn for_payee(&self, addresses: &[String], scripts: &[Vec<u8>]) -> TxLookup {
        match self {
            TxAnswer::NotFound => TxLookup::NotFound,
            TxAnswer::Proven { block, outputs } => {
                // Output values were summed with checks when the raw transaction was read.
                let paid_sats = outputs
                    .iter()
                    .filter(|(script, _)| scripts.contains(script))
                    .fold(0u64, |sum, (_, value)| sum.saturating_add(*value));
                TxLookup::Found(TxFacts { paid_sats, block: block.map(|b| b.place) })
            }
            TxAnswer::Found { block, outputs } => {
                // Output values were checked to sum within u64 when the answer was read.
                let paid_sats = outputs
                    .iter()
                    .filter(|(address, _)| addresses.iter().any(|a| a == address))
                    .fold(0u64, |sum, (_, value)| sum.saturating_add(*value));
                TxLookup::Found(TxFacts { paid_sats, block: *block })
            }
        }
    }

    pub fn block(&self) -> Option<BlockPlace> {
        match self {
            TxAnswer::Found { block, .. } => *block,
            TxAnswer::Proven { block, .. } => block.map(|b| b.place),
            TxAnswer::NotFound => None,
        }
    }

    /// Headers proven from the payment's block up, under `verify: spv`.
    pub fn proven_depth(&self) -> Option<u32> {
        match self {
            TxAnswer::Proven { block: Some(b), .. } => Some(b.depth),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExplorerError {
    /// Reset, refused connection or timeout: Envoy gave no response.
    NoResponse,
    /// Any status other than the ones the API documents for this call.
    Status(u16),
    TooLarge(usize),
    Malformed(String),
    /// A valid answer about a different transaction.
    WrongTxid(String),
    /// `verify: spv`: the explorer's proof does not verify (what failed).
    ProofInvalid(String),
    /// `verify: spv`: another explorer reports another block hash at the height used.
    Disagreement(String),
    /// `verify: spv`: the quorum explorers do not have the block at the height used yet.
    QuorumBehind,
}

impl fmt::Display for ExplorerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplorerError::NoResponse => f.write_str("no response (reset, refused or timed out)"),
            ExplorerError::Status(s) => write!(f, "unexpected HTTP status {s}"),
            ExplorerError::TooLarge(n) => write!(f, "body of {n} bytes is over the {MAX_BODY_BYTES}-byte limit"),
            ExplorerError::Malformed(why) => write!(f, "malformed body: {why}"),
            ExplorerError::WrongTxid(t) => write!(f, "answer is about another transaction ({t})"),
            ExplorerError::ProofInvalid(why) => write!(f, "proof does not verify: {why}"),
            ExplorerError::Disagreement(what) => write!(f, "explorers disagree: {what}"),
            ExplorerError::QuorumBehind => f.write_str("the other explorers do not have that block yet"),
        }
    }
}

fn check_status_and_size(status: u16, body_len: usize) -> Result<(), ExplorerError> {
    if status != 200 {
        return Err(ExplorerError::Status(status));
    }
    if body_len > MAX_BODY_BYTES {
        return Err(ExplorerError::TooLarge(body_len));
    }
    Ok(())
}

/// Reads the answer to `GET /tx/:txid` for a payee with the addresses `pay_to`.
pub fn parse_tx(status: u16, body: &[u8], asked: &Txid, pay_to: &[String]) -> Result<TxLookup, ExplorerError> {
    parse_tx_outputs(status, body, asked).map(|answer| answer.for_payee(pay_to, &[]))
}

/// Reads the answer to `GET /tx/:txid`, keeping every output that pays an address.
pub fn parse_tx_outputs(status: u16, body: &[u8], asked: &Txid) -> Result<TxAnswer, ExplorerError> {
    if status == 404 {
        return Ok(TxAnswer::NotFound);
    }
    check_status_and_size(status, body.len())?;
    let raw: RawTx = serde_json::from_slice(body).map_err(|e| ExplorerError::Malformed(e.to_string()))?;
    if !raw.txid.eq_ignore_ascii_case(asked.as_str()) {
        let shown: String = raw.txid.chars().take(64).collect();
        return Err(ExplorerError::WrongTxid(shown));
    }
    let mut total: u64 = 0;
    let mut outputs = Vec::with_capacity(raw.vout.len());
    for output in raw.vout {
        total = total
            .checked_add(output.value)
            .ok_or_else(|| ExplorerError::Malformed("output values overflow".to_string()))?;
        if let Some(address) = output.scriptpubkey_address {
            outputs.push((address, output.value));
        }
    }
    let block = match (raw.status.confirmed, raw.status.block_height, raw.status.block_time) {
        (false, _, _) => None,
        (true, Some(height), Some(time)) => Some(BlockPlace { height, time }),
        (true, _, _) => {
            return Err(ExplorerError::Malformed("confirmed without block_height and block_time".to_string()))
        }
    };
    Ok(TxAnswer::Found { block, outputs })
}

/// Reads the answer to `GET /blocks/tip/height`: a bare decimal number.
pub fn parse_tip_height(status: u16, body: &[u8]) -> Result<u64, ExplorerError> {
    check_status_and_size(status, body.len())?;
    let text = std::str::from_utf8(body).map_err(|_| ExplorerError::Malformed("tip height is not text".to_string()))?;
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        let shown: String = text.chars().take(32).collect();
        return Err(ExplorerError::Malformed(format!("tip height {shown:?} is not a number")));
    }
    text.parse::<u64>().map_err(|_| ExplorerError::Malformed("tip height is out of range".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TXID: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
    const OURS: &str = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080";

    fn txid() -> Txid {
        Txid::parse(TXID.as_bytes()).unwrap()
    }

    /// The shape esplora serves, trimmed of nothing: extra fields must be ignored.
    fn esplora_tx(outputs: serde_json::Value, status: serde_json::Value) -> Vec<u8> {
        json!({
            "txid": TXID, "version": 2, "locktime": 0,
            "vin": [{"txid": "00".repeat(32), "vout": 0, "prevout": null, "scriptsig": "", "scriptsig_asm": "",
                     "witness": [], "is_coinbase": false, "sequence": 4294967293u32}],
            "vout": outputs, "size": 222, "weight": 561, "fee": 1000, "status": status
        })
        .to_string()
        .into_bytes()
    }

    fn output(address: &str, value: u64) -> serde_json::Value {
        json!({"scriptpubkey": "0014", "scriptpubkey_asm": "OP_0", "scriptpubkey_type": "v0_p2wpkh",
               "scriptpubkey_address": address, "value": value})
    }

    fn confirmed(height: u64, time: u64) -> serde_json::Value {
        json!({"confirmed": true, "block_height": height, "block_hash": "00".repeat(32), "block_time": time})
    }

    #[test]
    fn sums_only_outputs_to_our_addresses() {
        let body = esplora_tx(
            json!([output(OURS, 600), output("bcrt1qother", 5000), output(OURS, 400),
                   {"scriptpubkey": "6a", "scriptpubkey_asm": "OP_RETURN", "scriptpubkey_type": "op_return", "value": 0}]),
            confirmed(101, 1_700_000_000),
        );
        let found = parse_tx(200, &body, &txid(), &[OURS.to_string()]).unwrap();
        assert_eq!(
            found,
            TxLookup::Found(TxFacts { paid_sats: 1000, block: Some(BlockPlace { height: 101, time: 1_700_000_000 }) })
        );
    }

    #[test]
    fn mempool_transaction_has_no_block() {
        let body = esplora_tx(json!([output(OURS, 1)]), json!({"confirmed": false}));
        assert_eq!(
            parse_tx(200, &body, &txid(), &[OURS.to_string()]).unwrap(),
            TxLookup::Found(TxFacts { paid_sats: 1, block: None })
        );
    }

    #[test]
    fn not_found_is_an_answer_not_an_error() {
        assert_eq!(parse_tx(404, b"Transaction not found", &txid(), &[]).unwrap(), TxLookup::NotFound);
    }

    #[test]
    fn unusable_answers_are_errors() {
        let ours = [OURS.to_string()];
        let good = esplora_tx(json!([output(OURS, 1)]), confirmed(1, 1));
        assert_eq!(parse_tx(500, &good, &txid(), &ours), Err(ExplorerError::Status(500)));
        assert_eq!(parse_tx(429, &good, &txid(), &ours), Err(ExplorerError::Status(429)));
        assert!(matches!(parse_tx(200, &good[..good.len() / 2], &txid(), &ours), Err(ExplorerError::Malformed(_))));
        assert!(matches!(parse_tx(200, b"<html>oops</html>", &txid(), &ours), Err(ExplorerError::Malformed(_))));
        let big = vec![b' '; MAX_BODY_BYTES + 1];
        assert_eq!(parse_tx(200, &big, &txid(), &ours), Err(ExplorerError::TooLarge(MAX_BODY_BYTES + 1)));
        let negative = good.clone();
        let negative = String::from_utf8(negative).unwrap().replace("\"value\":1", "\"value\":-1");
        assert!(matches!(parse_tx(200, negative.as_bytes(), &txid(), &ours), Err(ExplorerError::Malformed(_))));
        let huge = String::from_utf8(good.clone()).unwrap().replace("\"value\":1", "\"value\":1e30");
        assert!(matches!(parse_tx(200, huge.as_bytes(), &txid(), &ours), Err(ExplorerError::Malformed(_))));
        let overflow = esplora_tx(json!([output(OURS, u64::MAX), output(OURS, 1)]), confirmed(1, 1));
        assert!(matches!(parse_tx(200, &overflow, &txid(), &ours), Err(ExplorerError::Malformed(_))));
        let half_status = esplora_tx(json!([]), json!({"confirmed": true}));
        assert!(matches!(parse_tx(200, &half_status, &txid(), &ours), Err(ExplorerError::Malformed(_))));
        let other = String::from_utf8(good).unwrap().replace(TXID, &"ab".repeat(32));
        assert_eq!(parse_tx(200, other.as_bytes(), &txid(), &ours), Err(ExplorerError::WrongTxid("ab".repeat(32))));
    }

    #[test]
    fn tip_height_is_a_bare_number() {
        assert_eq!(parse_tip_height(200, b"871234"), Ok(871_234));
        assert_eq!(parse_tip_height(200, b"101\n"), Ok(101));
        for bad in [&b"abc"[..], b"", b"-1", b"1.5", b"99999999999999999999999", b"\xff"] {
            assert!(matches!(parse_tip_height(200, bad), Err(ExplorerError::Malformed(_))), "{bad:?}");
        }
        assert_eq!(parse_tip_height(503, b"1"), Err(ExplorerError::Status(503)));
    }
}
