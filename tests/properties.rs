//! Property tests of the pure modules through the crate's public API (issue 5).
//!
//! Each property runs `CASES` cases (override with PROPTEST_CASES); the whole file takes a few
//! seconds. A failure prints the shrunk input: add it to `src/regressions.rs` as a unit test.

use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use serde_json::{json, Map, Value};

use txgate::cache::{PaymentRecord, PaymentState, RECORD_LEN};
use txgate::config::{Config, Policy};
use txgate::discount::discounted;
use txgate::esplora::{parse_tip_height, parse_tx, BlockPlace, ExplorerError, TxFacts, TxLookup};
use txgate::payment::{decide, Decision};
use txgate::rejection::Rejection;
use txgate::txid::Txid;

const CASES: u32 = 512;

const TXID: &str = "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b";
const OURS: [&str; 3] = [
    "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
    "mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn",
    "2N2JD6wb56AfK4tfmM6PwdVmoYk2dCKf4Br",
];
const THEIRS: [&str; 3] = [
    "bcrt1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3qzf4jry",
    // Differs from OURS[0] only in case: addresses are compared as the explorer prints them.
    "BCRT1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KYGT080",
    "",
];

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

fn txid() -> Txid {
    Txid::parse(TXID.as_bytes()).unwrap()
}

/// Any char, but often a multi-byte one or an ASCII one that matters to the parsers.
fn tricky_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec!['0', '9', 'a', 'f', 'A', 'F', 'g', ' ', '\n', '"', '\\', '-', '.', 'x']),
        2 => prop::sample::select(vec!['\u{e9}', '\u{660}', '\u{966}', '\u{ff11}', '\u{ff41}', '\u{1d7ce}', '\u{2028}', '\u{feff}']),
        1 => any::<char>(),
    ]
}

fn tricky_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(tricky_char(), 0..max).prop_map(|chars| chars.into_iter().collect())
}

// ---------------------------------------------------------------- txid

fn hex_digit() -> impl Strategy<Value = u8> {
    prop::sample::select(b"0123456789abcdefABCDEF".to_vec())
}

fn hex_string(len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(hex_digit(), len)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn txid_accepts_any_64_hex_digits_and_lowercases_them(raw in hex_string(64)) {
        let txid = Txid::parse(&raw).expect("64 hex digits are a txid");
        let lower = raw.to_ascii_lowercase();
        prop_assert_eq!(txid.as_str().as_bytes(), lower.as_slice());
        prop_assert_eq!(txid.to_string(), txid.as_str());
        // Parsing is idempotent: the normalised form parses to itself.
        prop_assert_eq!(Txid::parse(txid.as_str().as_bytes()), Some(txid.clone()));
    }

    #[test]
    fn txid_accepts_exactly_the_64_ascii_hex_byte_strings(
        raw in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..130),
            prop::collection::vec(any::<u8>(), 64),
            (hex_string(64), 0usize..64, any::<u8>()).prop_map(|(mut h, at, b)| { h[at] = b; h }),
        ]
    ) {
        let expected = raw.len() == 64 && raw.iter().all(u8::is_ascii_hexdigit);
        prop_assert_eq!(Txid::parse(&raw).is_some(), expected, "{:?}", String::from_utf8_lossy(&raw));
    }

    #[test]
    fn txid_refuses_other_lengths_of_hex(len in (0usize..200).prop_filter("not 64", |l| *l != 64), seed in hex_string(200)) {
        prop_assert_eq!(Txid::parse(&seed[..len]), None);
    }

    #[test]
    fn txid_refuses_unicode_digits_and_non_utf8(
        hex in hex_string(64),
        at in 0usize..64,
        digit in prop::sample::select(vec!['\u{660}', '\u{966}', '\u{ff11}', '\u{ff41}', '\u{1d7ce}', '\u{e9}']),
        high in 0x80u8..=0xff,
        keep_length in any::<bool>(),
    ) {
        // A look-alike digit in place of one hex digit (64 chars, more bytes), or squeezed in so
        // that the byte length is still 64.
        let mut text: Vec<u8> = hex.clone();
        let mut utf8 = [0u8; 4];
        let encoded = digit.encode_utf8(&mut utf8).as_bytes();
        if keep_length {
            text.truncate(64 - encoded.len());
        } else {
            text.remove(0);
        }
        let at = at.min(text.len());
        text.splice(at..at, encoded.iter().copied());
        prop_assert!(std::str::from_utf8(&text).is_ok());
        prop_assert_eq!(Txid::parse(&text), None);

        let mut invalid = hex;
        invalid[at.min(63)] = high;
        prop_assert!(std::str::from_utf8(&invalid).is_err());
        prop_assert_eq!(Txid::parse(&invalid), None);
    }
}

// ---------------------------------------------------------------- decide

/// Edge values are far likelier than in `any::<u64>()`.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        2 => 0u64..1_000,
        1 => prop::sample::select(vec![0, 1, u64::MAX - 1, u64::MAX, u64::from(u32::MAX), 1_700_000_000]),
        1 => (u64::MAX - 1_000)..=u64::MAX,
    ]
}

fn edgy_u32() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0u32..10, Just(u32::MAX)]
}

fn policy() -> impl Strategy<Value = Policy> {
    (edgy_u64(), edgy_u32(), edgy_u64()).prop_map(|(price_sats, min_confirmations, max_age)| Policy {
        price_sats,
        min_confirmations,
        max_age: Duration::from_secs(max_age),
    })
}

fn facts() -> impl Strategy<Value = TxFacts> {
    (edgy_u64(), prop::option::of((edgy_u64(), edgy_u64()))).prop_map(|(paid_sats, block)| TxFacts {
        paid_sats,
        block: block.map(|(height, time)| BlockPlace { height, time }),
    })
}

/// Confirmations as the README defines them: `tip - block_height + 1`, 0 in the mempool.
/// (Only for a tip at or above the block: below it is an explorer inconsistency, not a rule.)
fn readme_confirmations(tx: &TxFacts, tip: u64) -> Option<u128> {
    match tx.block {
        None => Some(0),
        Some(b) if tip >= b.height => Some(u128::from(tip - b.height) + 1),
        Some(_) => None,
    }
}

fn confirmations_of(d: &Decision) -> Option<u64> {
    match d {
        Decision::Paid(r) => Some(r.confirmations),
        Decision::Refused(Rejection::InsufficientConfirmations { confirmations, .. }) => Some(*confirmations),
        _ => None,
    }
}

proptest! {
    #![proptest_config(config())]

    /// Each outcome against the README's rules (How it decides, step 8), checked one rule at a
    /// time rather than against a copy of `decide`.
    #[test]
    fn decide_never_panics_and_follows_the_readme_rules(
        policy in policy(), tx in facts(), tip in prop::option::of(edgy_u64()), now in edgy_u64(),
    ) {
        let got = decide(&policy, &tx, tip, now);
        let expired = |b: BlockPlace| {
            policy.max_age.as_secs() > 0 && u128::from(b.time) + u128::from(policy.max_age.as_secs()) < u128::from(now)
        };
        match (&got, tip) {
            // In a block but no tip: confirmations cannot be counted.
            (Decision::TipUnknown, t) => prop_assert!(tx.block.is_some() && t.is_none()),
            (_, None) => prop_assert!(tx.block.is_none(), "a mined tx needs the tip: {:?}", got),
            _ => {}
        }
        if tx.block.is_none() || tip.is_some() {
            let confirmations = tip.map_or(Some(0), |t| readme_confirmations(&tx, t));
            // The order of the rules: price, then confirmations, then age.
            let short = |c: u128| c < u128::from(policy.min_confirmations);
            let want_kind = if tx.paid_sats < policy.price_sats {
                "insufficient_payment"
            } else if confirmations.is_some_and(short) {
                "insufficient_confirmations"
            } else if tx.block.is_some_and(expired) {
                "payment_expired"
            } else {
                "paid"
            };
            let kind = match &got {
                Decision::Paid(_) => "paid",
                Decision::Refused(r) => r.code(),
                Decision::TipUnknown => "tip_unknown",
            };
            // A tip below the block (no README count) still counts as mined: at least 1.
            if confirmations.is_some() || want_kind == "insufficient_payment" {
                prop_assert_eq!(kind, want_kind, "{:?}", got);
            } else {
                prop_assert!(kind != "insufficient_payment", "{:?}", got);
            }
            if tx.block.is_some() {
                prop_assert!(confirmations_of(&got).is_none_or(|c| c >= 1), "mined means 1 or more: {:?}", got);
            }
            match (&got, confirmations) {
                (Decision::Paid(r), Some(c)) => prop_assert_eq!(u128::from(r.confirmations), c.min(u128::from(u64::MAX))),
                (Decision::Refused(Rejection::InsufficientConfirmations { confirmations: got_c, required }), Some(c)) => {
                    prop_assert_eq!(u128::from(*got_c), c);
                    prop_assert_eq!(*required, policy.min_confirmations);
                }
                (Decision::Refused(Rejection::PaymentExpired { block_time, max_age_secs }), _) => {
                    prop_assert_eq!(Some(*block_time), tx.block.map(|b| b.time));
                    prop_assert_eq!(*max_age_secs, policy.max_age.as_secs());
                }
                _ => {}
            }
        }
        if let Decision::Paid(receipt) = got {
            prop_assert!(tx.paid_sats >= policy.price_sats);
            prop_assert_eq!(receipt.paid_sats, tx.paid_sats);
            prop_assert!(receipt.confirmations >= u64::from(policy.min_confirmations));
            if let (Some(b), true) = (tx.block, policy.max_age.as_secs() > 0) {
                prop_assert!(u128::from(b.time) + u128::from(policy.max_age.as_secs()) >= u128::from(now));
            }
        }
    }

    #[test]
    fn max_age_zero_never_expires(
        policy in policy(), tx in facts(), tip in prop::option::of(edgy_u64()), now in edgy_u64(),
    ) {
        let policy = Policy { max_age: Duration::ZERO, ..policy };
        let got = decide(&policy, &tx, tip, now);
        prop_assert!(!matches!(got, Decision::Refused(Rejection::PaymentExpired { .. })), "{:?}", got);
        // And the same payment with an expiry window can only do worse, never better.
        let windowed = decide(&Policy { max_age: Duration::from_secs(1), ..policy }, &tx, tip, now);
        if !matches!(got, Decision::Paid(_)) {
            prop_assert!(!matches!(windowed, Decision::Paid(_)), "{:?} vs {:?}", got, windowed);
        }
    }

    #[test]
    fn insufficient_payment_reports_the_actual_amounts(
        policy in policy(), tx in facts(), tip in edgy_u64(), now in edgy_u64(),
    ) {
        prop_assume!(tx.paid_sats < policy.price_sats);
        prop_assert_eq!(
            decide(&policy, &tx, Some(tip), now),
            Decision::Refused(Rejection::InsufficientPayment { paid_sats: tx.paid_sats, required_sats: policy.price_sats })
        );
    }

    #[test]
    fn more_payment_never_turns_paid_into_insufficient_payment(
        policy in policy(), tx in facts(), extra in edgy_u64(), tip in prop::option::of(edgy_u64()), now in edgy_u64(),
    ) {
        let before = decide(&policy, &tx, tip, now);
        let richer = TxFacts { paid_sats: tx.paid_sats.saturating_add(extra), ..tx };
        let after = decide(&policy, &richer, tip, now);
        if matches!(before, Decision::Paid(_)) {
            prop_assert!(matches!(after, Decision::Paid(r) if r.paid_sats == richer.paid_sats), "{:?}", after);
        }
        if !matches!(before, Decision::Refused(Rejection::InsufficientPayment { .. })) {
            prop_assert!(!matches!(after, Decision::Refused(Rejection::InsufficientPayment { .. })), "{:?}", after);
        }
    }

    #[test]
    fn a_higher_tip_never_lowers_confirmations(
        min in edgy_u32(), paid in edgy_u64(), height in edgy_u64(), time in edgy_u64(),
        tip in edgy_u64(), up in edgy_u64(), now in edgy_u64(),
    ) {
        // Price 0 and no expiry: every decision tells its confirmation count.
        let policy = Policy { price_sats: 0, min_confirmations: min, max_age: Duration::ZERO };
        let tx = TxFacts { paid_sats: paid, block: Some(BlockPlace { height, time }) };
        let low = confirmations_of(&decide(&policy, &tx, Some(tip), now)).unwrap();
        let high = confirmations_of(&decide(&policy, &tx, Some(tip.saturating_add(up)), now)).unwrap();
        prop_assert!(high >= low, "tip {} -> {} confirmations, tip +{} -> {}", tip, low, up, high);
        prop_assert!(low >= 1, "a transaction in a block has at least one confirmation");
    }
}

// ---------------------------------------------------------------- byte mutations

/// One change to a byte string: flip a bit, replace, insert or remove a byte.
#[derive(Debug, Clone)]
enum Edit {
    Flip(prop::sample::Index, u8),
    Replace(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
}

fn byte_edits() -> impl Strategy<Value = Vec<Edit>> {
    let byte = prop_oneof![
        2 => prop::sample::select(b"0123456789abcdef{}[]\":,-.eE \n\x00\xff".to_vec()),
        1 => any::<u8>(),
    ];
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), 0u8..8).prop_map(|(i, bit)| Edit::Flip(i, bit)),
        (any::<prop::sample::Index>(), byte.clone()).prop_map(|(i, b)| Edit::Replace(i, b)),
        (any::<prop::sample::Index>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<prop::sample::Index>().prop_map(Edit::Remove),
    ];
    prop::collection::vec(edit, 1..4)
}

fn mutate(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len();
        match edit {
            Edit::Insert(i, b) => bytes.insert(i.index(len + 1), *b),
            _ if len == 0 => {}
            Edit::Flip(i, bit) => bytes[i.index(len)] ^= 1 << bit,
            Edit::Replace(i, b) => bytes[i.index(len)] = *b,
            Edit::Remove(i) => {
                bytes.remove(i.index(len));
            }
        }
    }
    bytes
}

// ---------------------------------------------------------------- esplora

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![4 => Just(200u16), 1 => Just(404u16), 1 => any::<u16>()]
}

#[derive(Debug, Clone)]
struct Out {
    /// Index into OURS (0..3), THEIRS (3..6), or no address (6).
    who: usize,
    value: u64,
}

fn output_json(o: &Out) -> Value {
    let mut v = json!({"scriptpubkey": "0014751e76e8199196d454941c45d1b3a323f1433bd6",
                       "scriptpubkey_asm": "OP_0 OP_PUSHBYTES_20 751e76e8199196d454941c45d1b3a323f1433bd6",
                       "scriptpubkey_type": "v0_p2wpkh", "value": o.value});
    match o.who {
        0..=2 => v["scriptpubkey_address"] = json!(OURS[o.who]),
        3..=5 => v["scriptpubkey_address"] = json!(THEIRS[o.who - 3]),
        _ => v["scriptpubkey_type"] = json!("op_return"),
    }
    v
}

fn esplora_tx(txid: &str, outputs: &[Out], block: Option<(u64, u64)>) -> Vec<u8> {
    let status = match block {
        None => json!({"confirmed": false}),
        Some((h, t)) => json!({"confirmed": true, "block_height": h, "block_hash": "3a".repeat(32), "block_time": t}),
    };
    json!({
        "txid": txid, "version": 2, "locktime": 0,
        "vin": [{"txid": "6f".repeat(32), "vout": 1, "prevout": null, "scriptsig": "", "scriptsig_asm": "",
                 "witness": [], "is_coinbase": false, "sequence": 4294967293u32}],
        "vout": outputs.iter().map(output_json).collect::<Vec<_>>(),
        "size": 222, "weight": 561, "fee": 1000, "status": status
    })
    .to_string()
    .into_bytes()
}

fn outputs() -> impl Strategy<Value = Vec<Out>> {
    prop::collection::vec((0usize..7, edgy_u64()).prop_map(|(who, value)| Out { who, value }), 0..8)
}

fn pay_to() -> impl Strategy<Value = Vec<String>> {
    prop::sample::subsequence(OURS.to_vec(), 0..=3).prop_map(|v| v.into_iter().map(String::from).collect())
}

proptest! {
    #![proptest_config(config())]

    /// A valid Esplora answer with a few bytes flipped, replaced, inserted or removed: most cases
    /// still get through the JSON parser to the field checks (random bytes never did).
    #[test]
    fn parse_tx_never_panics_on_mutated_answers(
        outs in outputs(), block in prop::option::of((edgy_u64(), edgy_u64())), edits in byte_edits(),
    ) {
        let body = mutate(esplora_tx(TXID, &outs, block), &edits);
        let got = parse_tx(200, &body, &txid(), &[OURS[0].to_string()]);
        if let Ok(TxLookup::Found(facts)) = got {
            // Only a body still about our txid can be an answer. (Fields the parser skips are not
            // validated, so a bad escape or byte there may leave it unreadable as a full Value.)
            match serde_json::from_slice::<Value>(&body) {
                Ok(v) => {
                    prop_assert!(v["txid"].as_str().is_some_and(|t| t.eq_ignore_ascii_case(TXID)), "{}", v);
                    prop_assert_eq!(facts.block.is_some(), v["status"]["confirmed"] == true);
                }
                Err(_) => prop_assert!(String::from_utf8_lossy(&body).to_ascii_lowercase().contains(TXID)),
            }
        }
    }

    #[test]
    fn parse_tip_height_never_panics_on_mutated_answers(height in edgy_u64(), edits in byte_edits()) {
        let body = mutate(format!("{height}").into_bytes(), &edits);
        if let Ok(got) = parse_tip_height(200, &body) {
            prop_assert_eq!(std::str::from_utf8(&body).unwrap().trim().parse::<u64>().ok(), Some(got));
        }
    }

    #[test]
    fn parse_tip_height_never_panics_on_arbitrary_text(status in status(), text in tricky_string(80)) {
        match parse_tip_height(status, text.as_bytes()) {
            Ok(height) => prop_assert_eq!(text.trim().parse::<u64>().ok(), Some(height)),
            Err(ExplorerError::Malformed(why)) => prop_assert!(!why.is_empty()),
            Err(other) => prop_assert_ne!(status, 200, "{:?}", other),
        }
    }

    /// The txid field of an otherwise good answer may be anything an explorer fault produces.
    #[test]
    fn parse_tx_never_panics_on_an_arbitrary_txid_field(text in tricky_string(100), upper in any::<bool>()) {
        let claimed = if text.is_empty() { if upper { TXID.to_ascii_uppercase() } else { TXID.to_string() } } else { text };
        let body = esplora_tx(&claimed, &[Out { who: 0, value: 1 }], None);
        match parse_tx(200, &body, &txid(), &[OURS[0].to_string()]) {
            Ok(TxLookup::Found(f)) => {
                prop_assert!(claimed.eq_ignore_ascii_case(TXID));
                prop_assert_eq!(f.paid_sats, 1);
            }
            Err(ExplorerError::WrongTxid(shown)) => {
                prop_assert!(!claimed.eq_ignore_ascii_case(TXID));
                prop_assert!(claimed.starts_with(&shown), "{:?} is not a prefix of {:?}", shown, claimed);
                prop_assert!(shown.chars().count() <= 64, "shown is cut to 64 characters");
            }
            other => prop_assert!(false, "unexpected {:?}", other),
        }
    }

    #[test]
    fn parse_tx_sums_exactly_the_outputs_to_our_addresses(
        status in status(),
        outs in outputs(),
        pay_to in pay_to(),
        block in prop::option::of((edgy_u64(), edgy_u64())),
        upper in any::<bool>(),
    ) {
        let shown = if upper { TXID.to_ascii_uppercase() } else { TXID.to_string() };
        let body = esplora_tx(&shown, &outs, block);
        let got = parse_tx(status, &body, &txid(), &pay_to);
        let want: u128 = outs
            .iter()
            .filter(|o| o.who < 3 && pay_to.iter().any(|p| p == OURS[o.who]))
            .map(|o| u128::from(o.value))
            .sum();
        // Outputs that sum beyond u64 (a transaction no chain can hold) make the answer unusable,
        // whoever they pay.
        let all: u128 = outs.iter().map(|o| u128::from(o.value)).sum();
        let want = if u64::try_from(all).is_ok() { want } else { u128::MAX };
        match status {
            404 => prop_assert_eq!(got, Ok(TxLookup::NotFound)),
            200 => match u64::try_from(want) {
                Ok(paid_sats) => prop_assert_eq!(
                    got,
                    Ok(TxLookup::Found(TxFacts { paid_sats, block: block.map(|(height, time)| BlockPlace { height, time }) }))
                ),
                Err(_) => prop_assert!(matches!(got, Err(ExplorerError::Malformed(ref why)) if why.contains("overflow")), "{:?}", got),
            },
            other => prop_assert_eq!(got, Err(ExplorerError::Status(other))),
        }
    }
}

// ---------------------------------------------------------------- config

const TOP_FIELDS: [&str; 18] = [
    "header",
    "network",
    "pay_to",
    "price_sats",
    "min_confirmations",
    "max_age",
    "explorers",
    "timeout",
    "failure_mode",
    "routes",
    "cache",
    "grant",
    "bind_to",
    "penalty",
    "max_inflight",
    "discounts",
    "deadline",
    "circuit_breaker",
];
const INNER_FIELDS: [&str; 22] = [
    "cluster",
    "authority",
    "path_prefix",
    "prefix",
    "free",
    "max_entries",
    "not_found_ttl",
    "unconfirmed_ttl",
    "tip_ttl",
    "requests",
    "window",
    "identity",
    "max_strikes",
    "find_time",
    "ban_time",
    "max_clients",
    "name",
    "percent",
    "mtls_principal_in",
    "value",
    "no_strikes_for",
    "failures",
];

fn readme_config() -> Value {
    json!({
        "header": "x-bitcoin-txid", "network": "regtest", "pay_to": [OURS[0]], "price_sats": 1000,
        "min_confirmations": 1, "max_age": "24h",
        "explorers": [{"cluster": "explorer", "authority": "explorer.local", "path_prefix": "/api"}],
        "timeout": "2s", "failure_mode": "closed",
        "routes": [{"prefix": "/free", "free": true}, {"prefix": "/premium", "price_sats": 5000, "min_confirmations": 2}]
    })
}

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        edgy_u64().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "",
            "regtest",
            "mainnet",
            "bitcoin",
            "closed",
            "open",
            "0s",
            "1s",
            "2s",
            "250ms",
            "24h",
            "61s",
            "5m",
            "/",
            "/api",
            "/api/",
            "api",
            "explorer.local",
            "http://x/",
            "x-bitcoin-txid",
            "x-txgate-x",
            "header:x-api-key",
            "mtls_principal",
            "source_address",
            "header:",
            OURS[0],
            OURS[1],
            THEIRS[0],
        ])
        .prop_map(Value::from),
        tricky_string(20).prop_map(Value::from),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(TOP_FIELDS.to_vec()).prop_map(String::from),
        3 => prop::sample::select(INNER_FIELDS.to_vec()).prop_map(String::from),
        1 => tricky_string(8),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    json_leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((json_key(), inner), 0..6).prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// The README configuration with fields replaced, removed or added at random (top level and
/// one level down), so most cases get past the JSON shape check to the field checks.
fn mutated_config() -> impl Strategy<Value = Value> {
    let edit = (json_key(), prop::option::of(json_value()), any::<prop::sample::Index>(), any::<bool>());
    prop::collection::vec(edit, 1..5).prop_map(|edits| {
        let mut v = readme_config();
        for (key, value, pick, nested) in edits {
            let Some(top) = v.as_object_mut() else { continue };
            let target: &mut Map<String, Value> = if nested {
                let objects: Vec<&mut Map<String, Value>> = top
                    .values_mut()
                    .filter_map(|x| match x {
                        Value::Array(items) => items.first_mut().and_then(Value::as_object_mut),
                        other => other.as_object_mut(),
                    })
                    .collect();
                if objects.is_empty() {
                    continue;
                }
                let at = pick.index(objects.len());
                objects.into_iter().nth(at).unwrap()
            } else {
                top
            };
            match value {
                Some(value) => {
                    target.insert(key, value);
                }
                None => {
                    target.remove(&key);
                }
            }
        }
        v
    })
}

fn assert_names_a_field(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Err(err) = Config::from_json(bytes) {
        prop_assert!(!err.reason.is_empty(), "{:?}", err);
        let head = err.field.split(['.', '[']).next().unwrap_or_default();
        prop_assert!(
            head == "configuration" || TOP_FIELDS.contains(&head),
            "refusal names no field: {:?} for {}",
            err,
            String::from_utf8_lossy(bytes)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_never_panics_on_arbitrary_json_values(value in json_value()) {
        assert_names_a_field(value.to_string().as_bytes())?;
    }

    #[test]
    fn config_never_panics_on_mutated_readme_configs(value in mutated_config()) {
        assert_names_a_field(value.to_string().as_bytes())?;
    }

    /// The README's JSON text with a few bytes changed: reaches the field checks far more often
    /// than random bytes, which only ever met serde's syntax errors.
    #[test]
    fn config_never_panics_on_byte_mutated_readme_text(edits in byte_edits()) {
        assert_names_a_field(&mutate(readme_json_block().into_bytes(), &edits))?;
    }
}

/// The first ```json block after "## Configuration" in README.md, as documented.
fn readme_json_block() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README.md");
    let section = &readme[readme.find("## Configuration").expect("a Configuration section")..];
    let start = section.find("```json\n").expect("a json block in Configuration") + "```json\n".len();
    let len = section[start..].find("```").expect("the json block ends");
    section[start..start + len].to_string()
}

#[test]
fn the_readme_config_is_accepted() {
    let text = readme_json_block();
    let config = Config::from_json(text.as_bytes()).unwrap_or_else(|e| panic!("README config refused: {e}\n{text}"));
    // The hand copy the mutation properties start from says the same as the README.
    let readme: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(readme, readme_config(), "readme_config() in this file drifted from README.md");
    assert_eq!(config.default_policy.price_sats, 1000);
}

// ---------------------------------------------------------------- discount

proptest! {
    #![proptest_config(config())]

    #[test]
    fn discounted_price_is_the_rounded_up_share_and_never_free(price in edgy_u64().prop_filter("priced", |p| *p >= 1), percent in 0u8..=100) {
        let got = u128::from(discounted(price, percent));
        // The share kept, in hundredths of a sat: `got` is its ceiling in sats (the smallest whole
        // number of sats not below it), except that a priced route is never free.
        let share = u128::from(price) * u128::from(100 - percent);
        prop_assert!(got >= 1 && got <= u128::from(price));
        prop_assert!(got * 100 >= share, "{} sats is below the share {}/100", got, share);
        if got > 1 {
            prop_assert!((got - 1) * 100 < share, "{} sats is more than the ceiling of {}/100", got, share);
        } else {
            prop_assert!(share <= 100, "1 sat for a share of {}/100", share);
        }
    }

    #[test]
    fn discounted_price_with_out_of_range_percent_is_one_sat(price in edgy_u64(), percent in 101u8..=255) {
        prop_assert_eq!(discounted(price, percent), 1);
    }
}

// ---------------------------------------------------------------- payment records

/// Raw record fields: version 2, a kind byte (1 confirmed, 2 mempool, 3 not found), the txid
/// and nine u64 fields. Records are built through `decode` so that every state, whatever fields
/// it carries, is covered without this file naming them.
fn record_bytes() -> impl Strategy<Value = Vec<u8>> {
    (1u8..=3, any::<[u8; 32]>(), prop::collection::vec(edgy_u64(), 9)).prop_map(|(kind, txid, fields)| {
        let mut out = vec![2u8, kind];
        out.extend_from_slice(&txid);
        for f in fields {
            out.extend_from_slice(&f.to_le_bytes());
        }
        out
    })
}

fn payment_record() -> impl Strategy<Value = PaymentRecord> {
    prop_oneof![
        record_bytes().prop_map(|bytes| PaymentRecord::decode(&bytes).expect("well-formed record bytes decode")),
        (any::<[u8; 32]>(), edgy_u64(), edgy_u64(), edgy_u64(), edgy_u64(), edgy_u64()).prop_map(
            |(txid, paid_sats, height, time, expires_ms, now_ms)| {
                let state = if paid_sats % 2 == 0 {
                    PaymentState::Confirmed { paid_sats, block: BlockPlace { height, time } }
                } else {
                    PaymentState::NotFound
                };
                PaymentRecord::new(txid, state, expires_ms, now_ms)
            }
        ),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn payment_records_round_trip(record in payment_record()) {
        let bytes = record.encode();
        prop_assert_eq!(bytes.len(), RECORD_LEN);
        prop_assert_eq!(PaymentRecord::decode(&bytes), Some(record));
        // Any cut-short record is an empty slot, never a wrong record.
        for len in 0..RECORD_LEN {
            prop_assert_eq!(PaymentRecord::decode(&bytes[..len]), None);
        }
    }

    #[test]
    fn confirmed_records_re_encode_to_the_same_bytes(bytes in record_bytes()) {
        let record = PaymentRecord::decode(&bytes).unwrap();
        if matches!(record.state, PaymentState::Confirmed { .. }) {
            prop_assert_eq!(record.encode(), bytes);
        }
    }

    /// A valid record with a few bytes changed: decodes to nothing or to a record that
    /// round-trips (random bytes almost never got past the version and kind bytes).
    #[test]
    fn payment_record_decode_never_panics_on_mutated_records(record in payment_record(), edits in byte_edits()) {
        let original = record.encode();
        let bytes = mutate(original.clone(), &edits);
        match PaymentRecord::decode(&bytes) {
            Some(decoded) => {
                prop_assert_eq!(PaymentRecord::decode(&decoded.encode()), Some(decoded));
                prop_assert!(bytes.len() >= RECORD_LEN, "a short record decoded");
            }
            None => prop_assert!(bytes != original, "the unmutated record must decode"),
        }
    }
}
