//! Per-instance fault injection and request counters for the explorer.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    None,
    #[serde(rename = "status_500")]
    Status500,
    #[serde(rename = "status_502")]
    Status502,
    #[serde(rename = "status_429")]
    Status429,
    Delay,
    Reset,
    TruncatedJson,
    HtmlError,
    HugeBody,
    WrongTxid,
    BadTip,
    NegativeValues,
    HugeValues,
    // Lies an SPV client must catch (issue 10); see `crate::lies`.
    /// `/tx/:txid/hex` (and `/raw`) serve bytes that do not hash to the txid.
    RawTxMismatch,
    /// `/tx/:txid` JSON amounts differ from the raw transaction.
    JsonAmountLie,
    /// `/tx/:txid/merkle-proof` serves a branch that misses the block's merkle root.
    BadMerkleBranch,
    /// Every block from `from_height` is served re-mined at `bits` (default 207fffff).
    HeaderBelowFloor,
    /// A fake payment confirmed in `depth` fake blocks mined at `bits` on the tip at fault time.
    FakeLowWorkChain,
    /// The tip block is served as a sibling with another hash (a one-block fork).
    TipDisagrees,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    pub mode: Mode,
    /// Only requests for `/tx/<txid>...` of this txid are affected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txid: Option<String>,
    /// Sleep before answering: the whole point of `delay`, and added in front
    /// of any other mode when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// Status for `html_error` (default 503; 200 simulates a captive portal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Affect only the next N matching requests, then clear (default: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// nBits (8 hex digits) for `header_below_floor` and `fake_low_work_chain`; default 207fffff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits: Option<String>,
    /// `header_below_floor`: first height served re-mined (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_height: Option<u32>,
    /// `fake_low_work_chain`: who the fake payment pays, how much, and how many fake blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sats: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<u32>,
    /// `fake_low_work_chain`: the first fake height (set to tip + 1 when the fault is posted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fork_height: Option<u32>,
}

/// Which explorer endpoint family a request hits; decides fault applicability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// `/tx/<id>...` with the raw id segment.
    Tx(&'a str),
    /// `/blocks/tip/height` or `/blocks/tip/hash`.
    Tip,
    Other,
}

impl Fault {
    pub fn parse(body: &[u8]) -> Result<Fault, String> {
        let f: Fault = serde_json::from_slice(body).map_err(|e| format!("bad fault: {e}"))?;
        if let Some(t) = &f.txid {
            if t.len() != 64 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("fault txid must be 64 hex chars".into());
            }
        }
        f.bits()?;
        if f.mode == Mode::FakeLowWorkChain && (f.address.is_none() || f.sats.unwrap_or(0) == 0) {
            return Err("fake_low_work_chain needs address and sats".into());
        }
        if f.depth == Some(0) {
            return Err("depth must be at least 1".into());
        }
        Ok(f)
    }

    /// The nBits a forging fault mines at.
    pub fn bits(&self) -> Result<u32, String> {
        match &self.bits {
            None => Ok(crate::chain::REGTEST_BITS),
            Some(text) => parse_bits(text),
        }
    }

    /// Faults that serve a whole other chain (every endpoint lies consistently).
    pub fn forges_chain(&self) -> bool {
        matches!(self.mode, Mode::HeaderBelowFloor | Mode::FakeLowWorkChain | Mode::TipDisagrees)
    }

    /// How long to stall first: `delay_ms`, or 3 s for a bare `delay`.
    pub fn delay(&self) -> Option<u64> {
        self.delay_ms.or((self.mode == Mode::Delay).then_some(3000))
    }

    /// Does this fault change the answer to a request of this kind?
    pub fn applies(&self, kind: Kind) -> bool {
        let in_scope = match (&self.txid, kind) {
            (None, _) => true,
            // A forged chain is one consistent story: scoping it to one txid would contradict it.
            _ if self.forges_chain() => true,
            (Some(t), Kind::Tx(id)) => t.eq_ignore_ascii_case(id),
            (Some(_), _) => false,
        };
        let relevant = match self.mode {
            Mode::None => false,
            Mode::BadTip => kind == Kind::Tip,
            Mode::WrongTxid
            | Mode::NegativeValues
            | Mode::HugeValues
            | Mode::RawTxMismatch
            | Mode::JsonAmountLie
            | Mode::BadMerkleBranch => matches!(kind, Kind::Tx(_)),
            _ => true,
        };
        in_scope && relevant
    }
}

/// Takes the fault for one request, consuming one use of a counted fault.
pub fn take(slot: &mut Option<Fault>, kind: Kind) -> Option<Fault> {
    let f = slot.as_mut()?;
    if !f.applies(kind) {
        return None;
    }
    let taken = f.clone();
    if let Some(n) = f.count.as_mut() {
        *n = n.saturating_sub(1);
        if *n == 0 {
            *slot = None;
        }
    }
    Some(taken)
}

/// nBits as 8 hex digits that decode to a positive, non-overflowing target.
pub fn parse_bits(text: &str) -> Result<u32, String> {
    let bits = (text.len() == 8 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(text, 16).ok())
        .flatten()
        .ok_or_else(|| format!("bits must be 8 hex digits, got {text:?}"))?;
    let mantissa = bits & 0x007f_ffff;
    let exponent = bits >> 24;
    if mantissa == 0 || bits & 0x0080_0000 != 0 || !(3..=0x20).contains(&exponent) {
        return Err(format!("bits {text} is not a usable target"));
    }
    Ok(bits)
}

pub fn html_page(status: u16) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><title>{status} Service Unavailable</title></head>\n\
         <body><h1>Service Unavailable</h1><p>The explorer is temporarily down for maintenance.</p></body></html>\n"
    )
}

/// About 2 MiB of syntactically valid JSON that starts like a transaction.
pub fn huge_body(txid: &str) -> String {
    let pad = "x".repeat(2 * 1024 * 1024);
    format!("{{\"txid\":\"{txid}\",\"padding\":\"{pad}\",\"vout\":[]}}")
}

/// Content mutations applied to a rendered tx JSON.
pub fn mutate_tx(mode: Mode, tx: &mut Value) {
    match mode {
        Mode::NegativeValues => {
            if let Some(vout) = tx["vout"].as_array_mut() {
                for o in vout {
                    let v = o["value"].as_i64().unwrap_or(0);
                    o["value"] = json!(if v == 0 { -1 } else { -v });
                }
            }
        }
        Mode::JsonAmountLie => {
            // Each output claims one more bitcoin than the raw transaction pays.
            if let Some(vout) = tx["vout"].as_array_mut() {
                for o in vout {
                    let v = o["value"].as_u64().unwrap_or(0);
                    o["value"] = json!(v.saturating_add(100_000_000));
                }
            }
        }
        Mode::HugeValues => {
            if let Some(vout) = tx["vout"].as_array_mut() {
                for o in vout {
                    o["value"] = json!(1e30);
                }
            }
            mutate_status(mode, &mut tx["status"]);
        }
        _ => {}
    }
}

pub fn mutate_status(mode: Mode, status: &mut Value) {
    if mode == Mode::HugeValues && status["confirmed"] == json!(true) {
        // Larger than any sane height and right at the u64 edge.
        status["block_height"] = json!(u64::MAX);
    }
}

#[derive(Debug, Default)]
pub struct Stats {
    total: u64,
    tx: u64,
    tip: u64,
    by_path: BTreeMap<String, u64>,
}

impl Stats {
    pub fn record(&mut self, raw_path: &str, kind: Kind) {
        self.total += 1;
        match kind {
            Kind::Tx(_) => self.tx += 1,
            Kind::Tip => self.tip += 1,
            Kind::Other => {}
        }
        *self.by_path.entry(raw_path.to_string()).or_default() += 1;
    }

    pub fn to_json(&self) -> Value {
        json!({ "total": self.total, "tx": self.tx, "tip": self.tip, "by_path": self.by_path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    #[test]
    fn scoping_and_counting() {
        let f = Fault::parse(format!(r#"{{"mode":"status_500","txid":"{T}","count":2}}"#).as_bytes()).unwrap();
        assert!(f.applies(Kind::Tx(T)));
        assert!(f.applies(Kind::Tx(&T.to_uppercase())));
        assert!(!f.applies(Kind::Tx("bb")));
        assert!(!f.applies(Kind::Tip));
        let mut slot = Some(f);
        assert!(take(&mut slot, Kind::Tip).is_none());
        assert!(take(&mut slot, Kind::Tx(T)).is_some());
        assert!(take(&mut slot, Kind::Tx(T)).is_some());
        assert!(slot.is_none());
    }

    #[test]
    fn mode_relevance() {
        let f = |m: &str| Fault::parse(format!(r#"{{"mode":"{m}"}}"#).as_bytes()).unwrap();
        assert!(f("bad_tip").applies(Kind::Tip) && !f("bad_tip").applies(Kind::Tx(T)));
        assert!(f("wrong_txid").applies(Kind::Tx(T)) && !f("wrong_txid").applies(Kind::Tip));
        assert!(f("reset").applies(Kind::Other));
        assert!(!f("none").applies(Kind::Tx(T)));
        assert!(Fault::parse(br#"{"mode":"explode"}"#).is_err());
        assert!(Fault::parse(br#"{"mode":"delay","txid":"zz"}"#).is_err());
    }

    #[test]
    fn value_mutations() {
        let mut tx = json!({"vout":[{"value":5},{"value":0}],"status":{"confirmed":true,"block_height":7}});
        mutate_tx(Mode::NegativeValues, &mut tx);
        assert_eq!(tx["vout"][0]["value"], -5);
        assert_eq!(tx["vout"][1]["value"], -1);
        mutate_tx(Mode::HugeValues, &mut tx);
        assert_eq!(tx["vout"][0]["value"].as_f64(), Some(1e30));
        assert_eq!(tx["status"]["block_height"], u64::MAX);
    }

    #[test]
    fn bits_and_forging_faults() {
        assert_eq!(parse_bits("207fffff"), Ok(0x207f_ffff));
        assert_eq!(parse_bits("1f00ffff"), Ok(0x1f00_ffff));
        for bad in ["", "207ffff", "+07fffff", "zz7fffff", "04923456", "1d000000", "2100ffff", "0200ffff"] {
            assert!(parse_bits(bad).is_err(), "{bad}");
        }
        let f = |body: &str| Fault::parse(body.as_bytes());
        let forged =
            f(r#"{"mode":"tip_disagrees","txid":"aa00000000000000000000000000000000000000000000000000000000000000"}"#)
                .unwrap();
        // A forged chain ignores txid scoping: every endpoint must tell the same story.
        assert!(forged.applies(Kind::Tip) && forged.applies(Kind::Other));
        let raw = f(r#"{"mode":"raw_tx_mismatch"}"#).unwrap();
        assert!(raw.applies(Kind::Tx(T)) && !raw.applies(Kind::Tip));
        assert!(f(r#"{"mode":"fake_low_work_chain","sats":1}"#).is_err());
        assert!(f(r#"{"mode":"header_below_floor","bits":"04923456"}"#).is_err());
        assert_eq!(f(r#"{"mode":"header_below_floor"}"#).unwrap().bits(), Ok(crate::chain::REGTEST_BITS));
    }
}
