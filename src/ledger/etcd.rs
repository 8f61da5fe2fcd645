//! etcd v3 through its JSON gateway (`POST /v3/kv/txn`, `/v3/lease/grant`): the key layout, the
//! two transactions, and their replies, as etcd 3.4 writes them (see the golden files, captured
//! from a real etcd 3.4.23).
//!
//! Gateway rules: keys and values are base64; int64 fields are JSON strings; fields holding their
//! default value are left out of replies, so a txn whose compare failed has no `succeeded`, and a
//! range that found nothing has no `kvs`.
//!
//! Keys, under `<key_prefix>v1/<network>/`:
//! - `pay/<record>`: created once, never changed: `<owner>|<first_used>|<block>|<limit>|<lease>`
//!   (the binding, the window start, the block size and request limit fixed at first use, and
//!   the lease every key of this payment lives on).
//! - `use/<record>`: requests handed out so far, `<used>|<replica>|<seq>`.
//! - `claim/<record>/<replica>`: this replica's last committed attempt, `<seq>:<k>`.
//! - `fact/<record>`: what the chain says of the payment, as the first replica verified it,
//!   `<paid_sats>|<block height>|<block time>`: written with the first use, on the same lease, so
//!   that other replicas need not ask an explorer about it again (`verify: explorer` only).
//!
//! `<record>` is the hex of the payment's cache key (the txid, or with per-client addresses the
//! txid and the client's derivation path).

use serde_json::Value;

use super::b64;

pub const TXN_PATH: &str = "/v3/kv/txn";
pub const LEASE_GRANT_PATH: &str = "/v3/lease/grant";
pub const RANGE_PATH: &str = "/v3/kv/range";

/// A payment's keys in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub pay: String,
    pub used: String,
    pub claim: String,
    pub fact: String,
}

impl Keys {
    /// `prefix` is `<key_prefix>v1/<network>/`; `replica` this replica's id.
    pub fn new(prefix: &str, record: &[u8; 32], replica: &str) -> Keys {
        let record = hex::encode(record);
        Keys {
            pay: format!("{prefix}pay/{record}"),
            used: format!("{prefix}use/{record}"),
            claim: format!("{prefix}claim/{record}/{replica}"),
            fact: format!("{prefix}fact/{record}"),
        }
    }
}

/// What `pay/<record>` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pay {
    /// Truncated SHA-256 of the first client's identity (see `owner`), zero when unbound.
    pub owner: [u8; 16],
    /// Unix seconds of the first granted request.
    pub first_used: u64,
    /// Requests per reservation.
    pub block: u64,
    /// Requests the payment buys in total; 0 = not counted (a window or a binding only).
    pub limit: u64,
    pub lease: u64,
}

impl Pay {
    pub fn encode(&self) -> String {
        let owner = if self.owner == [0; 16] { "-".to_string() } else { hex::encode(self.owner) };
        format!("{owner}|{}|{}|{}|{}", self.first_used, self.block, self.limit, self.lease)
    }

    pub fn decode(bytes: &[u8]) -> Option<Pay> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('|');
        let owner_text = parts.next()?;
        let mut owner = [0u8; 16];
        if owner_text != "-" {
            hex::decode_to_slice(owner_text, &mut owner).ok()?;
        }
        let mut number = || parts.next()?.parse::<u64>().ok();
        let pay = Pay { owner, first_used: number()?, block: number()?, limit: number()?, lease: number()? };
        (parts.next().is_none() && pay.block > 0).then_some(pay)
    }
}

/// A confirmed payment as the chain showed it to the replica that verified it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainFacts {
    pub paid_sats: u64,
    pub height: u64,
    pub time: u64,
}

impl ChainFacts {
    pub fn encode(&self) -> String {
        format!("{}|{}|{}", self.paid_sats, self.height, self.time)
    }

    pub fn decode(bytes: &[u8]) -> Option<ChainFacts> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut parts = text.split('|');
        let mut number = || parts.next()?.parse::<u64>().ok();
        let facts = ChainFacts { paid_sats: number()?, height: number()?, time: number()? };
        parts.next().is_none().then_some(facts)
    }
}

/// The `/v3/kv/range` body that reads one key.
pub fn range_body(key: &str) -> String {
    format!(r#"{{"key":"{}"}}"#, b64::encode(key.as_bytes()))
}

/// The value of the one key a range read asked for; `None` when there is none.
pub fn parse_range(status: u16, body: &[u8]) -> Result<Option<Vec<u8>>, EtcdError> {
    if status != 200 {
        return Err(EtcdError::Failed(error_text(status, body)));
    }
    let malformed = |why: &str| EtcdError::Failed(format!("range reply {why}"));
    let reply: Value = serde_json::from_slice(body).map_err(|_| malformed("is not JSON"))?;
    match reply.get("kvs").and_then(Value::as_array).and_then(|kvs| kvs.first()) {
        None => Ok(None),
        Some(kv) => match kv.get("value").and_then(Value::as_str) {
            None => Ok(Some(Vec::new())),
            Some(text) => b64::decode(text).map(Some).ok_or_else(|| malformed("has a value that is not base64")),
        },
    }
}

/// The count in `use/<record>`.
pub fn used_value(used: u64, replica: &str, seq: u64) -> String {
    format!("{used}|{replica}|{seq}")
}

pub fn parse_used(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.split('|').next()?.parse().ok()
}

pub fn claim_value(seq: u64, k: u64) -> String {
    format!("{seq}:{k}")
}

/// One attempt to change the ledger. Every retry of an attempt sends the same body, so at most
/// one of them can commit (its compare holds only once), and the claim key tells afterwards
/// whether one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// First use anywhere, or first contact of this replica: create `pay` (bind, start the
    /// window, fix the block size) and take the first block, or read what is there.
    First { pay: Pay, seq: u64, k: u64 },
    /// Take `k` more, if `use` is still at `rev` (holding `used`).
    Reserve { rev: u64, used: u64, seq: u64, k: u64, lease: u64 },
}

impl Attempt {
    pub fn seq(&self) -> u64 {
        match self {
            Attempt::First { seq, .. } | Attempt::Reserve { seq, .. } => *seq,
        }
    }

    pub fn k(&self) -> u64 {
        match self {
            Attempt::First { k, .. } | Attempt::Reserve { k, .. } => *k,
        }
    }

    pub fn lease(&self) -> u64 {
        match self {
            Attempt::First { pay, .. } => pay.lease,
            Attempt::Reserve { lease, .. } => *lease,
        }
    }

    /// The `/v3/kv/txn` body. Written by hand: every value is base64 or digits, so nothing
    /// needs escaping, and it keeps JSON building out of the wasm.
    pub fn body(&self, keys: &Keys, replica: &str) -> String {
        self.body_with_facts(keys, replica, None)
    }

    /// The body; a first use that creates `pay` also writes what the chain said (`fact`).
    pub fn body_with_facts(&self, keys: &Keys, replica: &str, facts: Option<&ChainFacts>) -> String {
        let key = |k: &str| b64::encode(k.as_bytes());
        let value = |v: &str| b64::encode(v.as_bytes());
        let range = |k: &str| format!(r#"{{"request_range":{{"key":"{}"}}}}"#, key(k));
        let claim = value(&claim_value(self.seq(), self.k()));
        let lease = self.lease();
        match self {
            Attempt::First { pay, seq, k } => format!(
                concat!(
                    r#"{{"compare":[{{"target":"CREATE","key":"{pay}","create_revision":"0"}}],"#,
                    r#""success":[{{"request_put":{{"key":"{pay}","value":"{pay_value}","lease":"{lease}"}}}},{fact_put}"#,
                    r#"{{"request_put":{{"key":"{used}","value":"{used_value}","lease":"{lease}"}}}},"#,
                    r#"{{"request_put":{{"key":"{claim_key}","value":"{claim}","lease":"{lease}"}}}}],"#,
                    r#""failure":[{r_pay},{r_used},{r_claim}]}}"#
                ),
                pay = key(&keys.pay),
                pay_value = value(&pay.encode()),
                used = key(&keys.used),
                used_value = value(&used_value(*k, replica, *seq)),
                claim_key = key(&keys.claim),
                r_pay = range(&keys.pay),
                r_used = range(&keys.used),
                r_claim = range(&keys.claim),
                lease = lease,
                claim = claim,
                fact_put = facts.map_or(String::new(), |f| format!(
                    r#"{{"request_put":{{"key":"{}","value":"{}","lease":"{lease}"}}}},"#,
                    key(&keys.fact),
                    value(&f.encode())
                )),
            ),
            Attempt::Reserve { rev, used, seq, k, .. } => format!(
                concat!(
                    r#"{{"compare":[{{"target":"MOD","key":"{used_key}","mod_revision":"{rev}"}}],"#,
                    r#""success":[{{"request_put":{{"key":"{used_key}","value":"{used_value}","ignore_lease":true}}}},"#,
                    r#"{{"request_put":{{"key":"{claim_key}","value":"{claim}","lease":"{lease}"}}}}],"#,
                    r#""failure":[{r_used},{r_claim}]}}"#
                ),
                used_key = key(&keys.used),
                used_value = value(&used_value(used.saturating_add(*k), replica, *seq)),
                claim_key = key(&keys.claim),
                r_used = range(&keys.used),
                r_claim = range(&keys.claim),
                lease = lease,
                claim = claim,
                rev = rev,
            ),
        }
    }
}

/// A key as a range returned it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub value: Vec<u8>,
    pub mod_revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnReply {
    /// The compare held; `revision` is the store revision the puts were written at.
    Succeeded { revision: u64 },
    /// The compare failed; one entry per `request_range` of the failure branch.
    Failed { ranges: Vec<Option<Kv>> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EtcdError {
    /// A reset, a timeout or a refused connection: the attempt may or may not have committed.
    NoResponse,
    /// The txn named a lease nobody has granted yet: grant it, then send the txn again.
    LeaseNotFound,
    /// Anything else that is not a txn reply: an etcd error (NOSPACE, auth, bad input), an
    /// Envoy 503/504, a body that does not parse.
    Failed(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::NoResponse => f.write_str("no response"),
            EtcdError::LeaseNotFound => f.write_str("lease not found"),
            EtcdError::Failed(why) => f.write_str(why),
        }
    }
}

/// An int64 as the gateway writes it (a string), or a plain number; absent reads as 0.
fn int64(value: Option<&Value>) -> Option<u64> {
    match value {
        None => Some(0),
        Some(Value::String(s)) => s.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        Some(_) => None,
    }
}

fn error_text(status: u16, body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed.as_ref().and_then(|v| v.get("error")).and_then(Value::as_str).map(str::to_string);
    let message = message
        .unwrap_or_else(|| String::from_utf8_lossy(body.get(..body.len().min(200)).unwrap_or_default()).into_owned());
    format!("status {status}: {message}")
}

pub fn parse_txn(status: u16, body: &[u8]) -> Result<TxnReply, EtcdError> {
    if status != 200 {
        if status == 404 && error_text(status, body).contains("requested lease not found") {
            return Err(EtcdError::LeaseNotFound);
        }
        return Err(EtcdError::Failed(error_text(status, body)));
    }
    let malformed = |why: &str| EtcdError::Failed(format!("txn reply {why}"));
    let reply: Value = serde_json::from_slice(body).map_err(|_| malformed("is not JSON"))?;
    let succeeded = match reply.get("succeeded") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(malformed("has a non-boolean succeeded")),
    };
    if succeeded {
        let revision = reply.get("header").and_then(|h| int64(h.get("revision")));
        return match revision {
            Some(revision) if revision > 0 => Ok(TxnReply::Succeeded { revision }),
            _ => Err(malformed("has no header revision")),
        };
    }
    let responses = match reply.get("responses") {
        None => return Ok(TxnReply::Failed { ranges: Vec::new() }),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(malformed("has non-list responses")),
    };
    let mut ranges = Vec::with_capacity(responses.len());
    for response in responses {
        let range = response.get("response_range").ok_or_else(|| malformed("has a response that is not a range"))?;
        let kv = match range.get("kvs").and_then(Value::as_array).and_then(|kvs| kvs.first()) {
            None => None,
            Some(kv) => {
                let value = match kv.get("value").and_then(Value::as_str) {
                    None => Vec::new(),
                    Some(text) => b64::decode(text).ok_or_else(|| malformed("has a value that is not base64"))?,
                };
                let mod_revision = int64(kv.get("mod_revision")).ok_or_else(|| malformed("has a bad mod_revision"))?;
                Some(Kv { value, mod_revision })
            }
        };
        ranges.push(kv);
    }
    Ok(TxnReply::Failed { ranges })
}

/// The `/v3/lease/grant` body for a client-chosen lease id.
pub fn lease_grant_body(id: u64, ttl_secs: u64) -> String {
    format!(r#"{{"ID":"{id}","TTL":"{ttl_secs}"}}"#)
}

/// A granted lease, or one that already exists (someone else granted it first), is a success.
pub fn parse_lease_grant(status: u16, body: &[u8]) -> Result<(), EtcdError> {
    match status {
        200 => Ok(()),
        412 if error_text(status, body).contains("lease already exists") => Ok(()),
        _ => Err(EtcdError::Failed(error_text(status, body))),
    }
}

/// The deterministic bucket lease for keys that may be dropped after `expires_secs`: the lease of
/// the bucket after the one that holds that time, so a key outlives its use by at least one
/// bucket. Every replica picks the same id; nothing renews a lease, it expires with its keys.
/// Returns (lease id, TTL in seconds from `now_secs`).
pub fn bucket_lease(prefix: &str, bucket_secs: u64, expires_secs: u64, now_secs: u64) -> (u64, u64) {
    let bucket_secs = bucket_secs.max(1);
    let bucket = expires_secs.checked_div(bucket_secs).unwrap_or(0).saturating_add(1);
    // 31 bits of the prefix, 32 of the bucket: positive as an int64, never 0.
    let tag = crate::scope::fnv1a64(&[prefix.as_bytes()]) & 0x7fff_ffff;
    let id = (tag << 32) | (bucket & 0xffff_ffff) | u64::from(bucket & 0xffff_ffff == 0);
    let ends = bucket.saturating_add(1).saturating_mul(bucket_secs);
    (id, ends.saturating_sub(now_secs).max(1))
}

/// The TTL to grant a bucket lease made by `bucket_lease` with, from `now_secs`.
pub fn lease_ttl(id: u64, bucket_secs: u64, now_secs: u64) -> u64 {
    let bucket = id & 0xffff_ffff;
    bucket.saturating_add(1).saturating_mul(bucket_secs.max(1)).saturating_sub(now_secs).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const REPLICA: &str = "r1";

    fn keys() -> Keys {
        Keys {
            pay: "t/v1/regtest/pay/aa".into(),
            used: "t/v1/regtest/use/aa".into(),
            claim: "t/v1/regtest/claim/aa/r1".into(),
            fact: "t/v1/regtest/fact/aa".into(),
        }
    }

    fn golden(name: &str) -> &'static [u8] {
        match name {
            "lease_not_found" => include_bytes!("golden/lease_not_found.json"),
            "lease_granted" => include_bytes!("golden/lease_granted.json"),
            "lease_exists" => include_bytes!("golden/lease_exists.json"),
            "first_contact_won" => include_bytes!("golden/first_contact_won.json"),
            "first_contact_existing" => include_bytes!("golden/first_contact_existing.json"),
            "reserve_won" => include_bytes!("golden/reserve_won.json"),
            "reserve_stale_claimed" => include_bytes!("golden/reserve_stale_claimed.json"),
            "reserve_missing" => include_bytes!("golden/reserve_missing.json"),
            "range_found" => include_bytes!("golden/range_found.json"),
            "range_missing" => include_bytes!("golden/range_missing.json"),
            "bad_request" => include_bytes!("golden/bad_request.json"),
            _ => panic!("no golden file {name}"),
        }
    }

    #[test]
    fn key_layout() {
        let k = Keys::new("txgate/v1/regtest/", &[0xab; 32], "n7");
        assert_eq!(k.pay, format!("txgate/v1/regtest/pay/{}", "ab".repeat(32)));
        assert_eq!(k.used, format!("txgate/v1/regtest/use/{}", "ab".repeat(32)));
        assert_eq!(k.claim, format!("txgate/v1/regtest/claim/{}/n7", "ab".repeat(32)));
    }

    #[test]
    fn first_contact_body_is_what_etcd_was_sent() {
        // The body whose reply is golden/first_contact_won.json.
        let pay = Pay { owner: [0; 16], first_used: 100, block: 8, limit: 50, lease: 7 };
        let body: Value = serde_json::from_str(&Attempt::First { pay, seq: 5, k: 8 }.body(&keys(), REPLICA)).unwrap();
        assert_eq!(
            body["compare"][0],
            json!({"target": "CREATE", "key": "dC92MS9yZWd0ZXN0L3BheS9hYQ==", "create_revision": "0"})
        );
        assert_eq!(body["success"][0]["request_put"]["value"], b64::encode(b"-|100|8|50|7"));
        assert_eq!(body["success"][0]["request_put"]["lease"], "7");
        assert_eq!(body["success"][1]["request_put"]["value"], b64::encode(b"8|r1|5"));
        assert_eq!(body["success"][2]["request_put"]["key"], b64::encode(b"t/v1/regtest/claim/aa/r1"));
        assert_eq!(body["success"][2]["request_put"]["value"], b64::encode(b"5:8"));
        assert_eq!(body["failure"].as_array().unwrap().len(), 3);
    }

    #[test]
    fn a_first_use_carries_the_chain_facts_on_the_same_lease_and_a_range_reads_them_back() {
        let pay = Pay { owner: [0; 16], first_used: 100, block: 8, limit: 50, lease: 7 };
        let facts = ChainFacts { paid_sats: 1000, height: 101, time: 1_700_000_000 };
        let attempt = Attempt::First { pay, seq: 5, k: 8 };
        let body: Value = serde_json::from_str(&attempt.body_with_facts(&keys(), REPLICA, Some(&facts))).unwrap();
        let success = body["success"].as_array().unwrap();
        assert_eq!(success.len(), 4);
        assert_eq!(success[1]["request_put"]["key"], b64::encode(b"t/v1/regtest/fact/aa"));
        assert_eq!(success[1]["request_put"]["value"], b64::encode(b"1000|101|1700000000"));
        assert_eq!(success[1]["request_put"]["lease"], "7");
        assert_eq!(body["failure"].as_array().unwrap().len(), 3, "nothing more is read when pay exists");
        // A reserve never writes facts; without facts the body is the plain first contact.
        let reserve = Attempt::Reserve { rev: 2, used: 8, seq: 6, k: 8, lease: 7 };
        assert_eq!(reserve.body_with_facts(&keys(), REPLICA, Some(&facts)), reserve.body(&keys(), REPLICA));
        assert!(!attempt.body(&keys(), REPLICA).contains(&b64::encode(b"t/v1/regtest/fact/aa")));
        // Replies captured from etcd 3.4.23 for the key written above, and for one never written.
        let found = parse_range(200, golden("range_found")).unwrap().unwrap();
        assert_eq!(ChainFacts::decode(&found), Some(facts));
        assert_eq!(parse_range(200, golden("range_missing")), Ok(None));
        assert!(parse_range(503, b"upstream connect error").is_err());
        assert!(parse_range(200, b"{\"kvs\":[{\"value\":\"%%\"}]}").is_err());
        assert_eq!(range_body("t/x"), format!("{{\"key\":\"{}\"}}", b64::encode(b"t/x")));
        for bad in ["1000|101", "1000|101|1|2", "x|1|2", ""] {
            assert_eq!(ChainFacts::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn reserve_body_is_a_tagged_compare_and_put() {
        let attempt = Attempt::Reserve { rev: 2, used: 8, seq: 6, k: 8, lease: 7 };
        let body: Value = serde_json::from_str(&attempt.body(&keys(), REPLICA)).unwrap();
        assert_eq!(
            body["compare"][0],
            json!({"target": "MOD", "key": b64::encode(b"t/v1/regtest/use/aa"), "mod_revision": "2"})
        );
        assert_eq!(body["success"][0]["request_put"]["value"], b64::encode(b"16|r1|6"));
        assert_eq!(body["success"][0]["request_put"]["ignore_lease"], true);
        assert_eq!(body["success"][1]["request_put"]["value"], b64::encode(b"6:8"));
        assert_eq!(body["success"][1]["request_put"]["lease"], "7");
        assert_eq!(
            body["failure"],
            json!([{"request_range": {"key": b64::encode(b"t/v1/regtest/use/aa")}}, {"request_range": {"key": b64::encode(b"t/v1/regtest/claim/aa/r1")}}])
        );
    }

    #[test]
    fn golden_replies_parse() {
        assert_eq!(parse_txn(200, golden("first_contact_won")), Ok(TxnReply::Succeeded { revision: 2 }));
        assert_eq!(parse_txn(200, golden("reserve_won")), Ok(TxnReply::Succeeded { revision: 3 }));
        // Absent `succeeded` is false; absent `kvs` is an absent key.
        let Ok(TxnReply::Failed { ranges }) = parse_txn(200, golden("first_contact_existing")) else { panic!() };
        assert_eq!(ranges.len(), 3);
        let pay = ranges[0].as_ref().unwrap();
        assert_eq!((pay.value.as_slice(), pay.mod_revision), (&b"o1|100|8|50|7"[..], 2));
        assert_eq!(parse_used(&ranges[1].as_ref().unwrap().value), Some(8));
        assert_eq!(ranges[2], None);
        let Ok(TxnReply::Failed { ranges }) = parse_txn(200, golden("reserve_stale_claimed")) else { panic!() };
        assert_eq!(ranges[0], Some(Kv { value: b"16|r1|6".to_vec(), mod_revision: 3 }));
        assert_eq!(ranges[1], Some(Kv { value: b"6:8".to_vec(), mod_revision: 3 }));
        assert_eq!(parse_txn(200, golden("reserve_missing")), Ok(TxnReply::Failed { ranges: vec![None, None] }));
    }

    #[test]
    fn golden_errors_parse() {
        assert_eq!(parse_txn(404, golden("lease_not_found")), Err(EtcdError::LeaseNotFound));
        let Err(EtcdError::Failed(why)) = parse_txn(400, golden("bad_request")) else { panic!() };
        assert!(why.contains("illegal base64"), "{why}");
        // What the logs say of each kind.
        assert_eq!(EtcdError::Failed(why.clone()).to_string(), why);
        assert_eq!(EtcdError::NoResponse.to_string(), "no response");
        assert_eq!(EtcdError::LeaseNotFound.to_string(), "lease not found");
        // Only a 404 that names the lease is LeaseNotFound; a 400 with that text is a failure.
        let Err(EtcdError::Failed(why)) = parse_txn(400, golden("lease_not_found")) else { panic!() };
        assert!(why.starts_with("status 400"), "{why}");
        // A success without a revision (or revision 0) is not one.
        for body in [r#"{"succeeded":true}"#, r#"{"header":{"revision":"0"},"succeeded":true}"#] {
            assert!(matches!(parse_txn(200, body.as_bytes()), Err(EtcdError::Failed(_))), "{body}");
        }
        assert_eq!(parse_lease_grant(200, golden("lease_granted")), Ok(()));
        assert_eq!(parse_lease_grant(412, golden("lease_exists")), Ok(()));
        assert!(parse_lease_grant(404, golden("lease_not_found")).is_err());
        // Envoy's own answers when etcd is down or slow.
        for (status, body) in [
            (503, &b"upstream connect error or disconnect/reset before headers. reset reason: connection failure"[..]),
            (504, b"upstream request timeout"),
            (200, b"{\"succeeded\":true}"),
            (200, b"{\"succeeded\":\"yes\"}"),
            (200, b"{\"responses\":[{\"response_put\":{}}]}"),
            (200, b"not json"),
        ] {
            assert!(
                matches!(parse_txn(status, body), Err(EtcdError::Failed(_))),
                "{status} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn pay_round_trips_and_refuses_garbage() {
        let pay = Pay { owner: [3; 16], first_used: 9, block: 4, limit: 100, lease: 77 };
        assert_eq!(Pay::decode(pay.encode().as_bytes()), Some(pay));
        let unbound = Pay { owner: [0; 16], ..pay };
        assert!(unbound.encode().starts_with("-|"));
        assert_eq!(Pay::decode(unbound.encode().as_bytes()), Some(unbound));
        for bad in ["", "-|1|2|3", "-|1|0|3|4", "zz|1|2|3|4", "-|1|2|3|4|5", "-|a|2|3|4"] {
            assert_eq!(Pay::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn bucket_leases_are_shared_and_outlive_their_keys() {
        let (id, ttl) = bucket_lease("p/", 3600, 10_000, 1_000);
        // Bucket 3 (10800..14400) is the one after the bucket holding 10000.
        assert_eq!(id & 0xffff_ffff, 3);
        assert_eq!(ttl, 14_400 - 1_000);
        assert_eq!(bucket_lease("p/", 3600, 10_500, 2_000).0, id, "same bucket, same lease");
        assert_ne!(bucket_lease("q/", 3600, 10_000, 1_000).0, id, "another prefix, another lease");
        assert!(id > 0 && id < (1 << 63));
        assert_eq!(lease_ttl(id, 3600, 1_000), ttl);
        assert_eq!(lease_grant_body(7, 600), r#"{"ID":"7","TTL":"600"}"#);
    }
}
