//! What one Envoy knows and holds of a payment's ledger entry, in its shared data so that every
//! worker draws on one block: the `pay` facts once learned, the requests left in the blocks it
//! reserved, and the latest count and revision of `use` it has seen (for its next compare).
//!
//! `take` is the warm path (no etcd call while a block holds requests); `absorb` folds an etcd
//! reply into the record. Both are pure; `LedgerTable` applies them with shared-data CAS.

use super::etcd::{claim_value, parse_used, Attempt, Pay, TxnReply};
use crate::record::{put_u64, Reader};
use crate::store::{update, SharedStore, UpdateError};

const VERSION: u8 = 1;
pub const HELD_LEN: usize = 1 + 32 + 1 + 16 + 8 * 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Held {
    /// The payment's cache key (txid, or txid and derivation path).
    pub record: [u8; 32],
    /// `pay` is known: this Envoy made first contact.
    pub contacted: bool,
    pub pay: Pay,
    /// Requests left in the blocks this Envoy holds.
    pub left: u64,
    /// Requests handed out mesh-wide, as of `rev`.
    pub used_seen: u64,
    /// `mod_revision` of `use` when it held `used_seen`.
    pub rev: u64,
    /// A background refill is under way until then (unix ms); 0 = none.
    pub refill_until_ms: u64,
}

impl Default for Pay {
    fn default() -> Pay {
        Pay { owner: [0; 16], first_used: 0, block: 1, limit: 0, lease: 0 }
    }
}

impl Held {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HELD_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.record);
        out.push(u8::from(self.contacted));
        out.extend_from_slice(&self.pay.owner);
        for v in [
            self.pay.first_used,
            self.pay.block,
            self.pay.limit,
            self.pay.lease,
            self.left,
            self.used_seen,
            self.rev,
            self.refill_until_ms,
        ] {
            put_u64(&mut out, v);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Held> {
        if bytes.len() != HELD_LEN {
            return None;
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let record: [u8; 32] = r.take(32)?.try_into().ok()?;
        let contacted = r.u8()? == 1;
        let owner: [u8; 16] = r.take(16)?.try_into().ok()?;
        let pay = Pay { owner, first_used: r.u64()?, block: r.u64()?, limit: r.u64()?, lease: r.u64()? };
        Some(Held {
            record,
            contacted,
            pay,
            left: r.u64()?,
            used_seen: r.u64()?,
            rev: r.u64()?,
            refill_until_ms: r.u64()?,
        })
    }

    /// This record if it is about `record`, else a blank one for it.
    pub fn for_record(current: Option<Held>, record: &[u8; 32]) -> Held {
        match current {
            Some(h) if h.record == *record => h,
            _ => Held { record: *record, ..Held::default() },
        }
    }
}

/// What a request gets from the held state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Served from a held block (or a grant that counts nothing); `refill`: this request took
    /// the block to its low-water mark and should start a background reservation.
    Granted {
        refill: bool,
    },
    Exhausted,
    BoundToOther,
    /// This Envoy has not made first contact for the payment.
    Contact,
    /// The held blocks are empty and the ledger may have more: reserve before answering.
    Reserve,
}

/// What the request needs to be judged by the held state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// The request's owner id, when payments are bound.
    pub owner: Option<[u8; 16]>,
    pub window_secs: Option<u64>,
    pub now_ms: u64,
    /// How long a background refill may be under way before another worker starts one.
    pub refill_for_ms: u64,
}

/// When the held requests are low enough to reserve the next block in the background: half a
/// block, so the next block arrives before the held ones run out while an Envoy holds at most one
/// and a half blocks, and a payment used only a few times costs one etcd write. Measured with 16
/// connections on one payment, 2 loaded cores, refills taking 3-9 ms: with blocks of 256 (`auto`
/// for large grants) no request waited for a refill; with blocks of 64, 57 % of refills had
/// requests waiting (a quarter of a block was worse), so hot payments want large blocks.
pub fn low_water(block: u64) -> u64 {
    block / 2
}

/// Takes one request from the held state: the new state (if it changed) and the answer.
pub fn take(held: &Held, want: &Want) -> (Option<Held>, Take) {
    if !held.contacted {
        return (None, Take::Contact);
    }
    let pay = &held.pay;
    if let Some(me) = want.owner {
        if pay.owner != [0; 16] && pay.owner != me {
            return (None, Take::BoundToOther);
        }
    }
    let now_secs = want.now_ms / 1000;
    if let Some(window) = want.window_secs {
        if pay.first_used != 0 && now_secs >= pay.first_used.saturating_add(window) {
            return (None, Take::Exhausted);
        }
    }
    if pay.limit == 0 {
        return (None, Take::Granted { refill: false });
    }
    if held.left == 0 {
        let answer = if held.used_seen >= pay.limit { Take::Exhausted } else { Take::Reserve };
        return (None, answer);
    }
    let mut next = *held;
    next.left = held.left.saturating_sub(1);
    let refill = next.left <= low_water(pay.block) && held.used_seen < pay.limit && held.refill_until_ms <= want.now_ms;
    if refill {
        next.refill_until_ms = want.now_ms.saturating_add(want.refill_for_ms).max(1);
    }
    (Some(next), Take::Granted { refill })
}

/// How much the next reservation asks for: a block, or what is left of the limit.
fn block_size(pay: &Pay, used: u64) -> u64 {
    pay.block.min(pay.limit.saturating_sub(used))
}

/// The attempt that answers a `Contact` or `Reserve`.
pub fn attempt_for(held: &Held, first: Pay, seq: u64) -> Attempt {
    if held.contacted {
        let k = block_size(&held.pay, held.used_seen);
        Attempt::Reserve { rev: held.rev, used: held.used_seen, seq, k, lease: held.pay.lease }
    } else {
        let k = if first.limit == 0 { 0 } else { first.block.min(first.limit) };
        Attempt::First { pay: first, seq, k }
    }
}

/// What an etcd reply meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// This many requests are now held (0 when the compare failed and nothing was granted).
    Granted(u64),
    /// The ledger no longer has the payment (its lease expired): make first contact again.
    Gone,
}

/// A reply whose shape does not fit the attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unexpected(pub &'static str);

/// Folds the reply to `attempt` into the held state.
pub fn absorb(held: &Held, attempt: &Attempt, reply: &TxnReply) -> Result<(Held, Absorbed), Unexpected> {
    let mut next = *held;
    let mine = |claim: Option<&super::etcd::Kv>| {
        claim.is_some_and(|c| c.value == claim_value(attempt.seq(), attempt.k()).as_bytes())
    };
    let see = |next: &mut Held, used: u64, rev: u64| {
        if rev > next.rev {
            next.rev = rev;
            next.used_seen = used;
        }
    };
    let granted = match (attempt, reply) {
        (Attempt::First { pay, k, .. }, TxnReply::Succeeded { revision }) => {
            next.contacted = true;
            next.pay = *pay;
            see(&mut next, *k, *revision);
            *k
        }
        (Attempt::First { k, .. }, TxnReply::Failed { ranges }) => {
            let pay = ranges.first().and_then(|r| r.as_ref()).ok_or(Unexpected("first contact failed without pay"))?;
            let pay = Pay::decode(&pay.value).ok_or(Unexpected("pay value unreadable"))?;
            let used = ranges.get(1).and_then(|r| r.as_ref()).ok_or(Unexpected("pay without use"))?;
            let count = parse_used(&used.value).ok_or(Unexpected("use value unreadable"))?;
            next.contacted = true;
            next.pay = pay;
            see(&mut next, count, used.mod_revision);
            if mine(ranges.get(2).and_then(|r| r.as_ref())) {
                *k
            } else {
                0
            }
        }
        (Attempt::Reserve { used, k, .. }, TxnReply::Succeeded { revision }) => {
            see(&mut next, used.saturating_add(*k), *revision);
            *k
        }
        (Attempt::Reserve { k, .. }, TxnReply::Failed { ranges }) => {
            let Some(used) = ranges.first().and_then(|r| r.as_ref()) else {
                let blank = Held { record: held.record, ..Held::default() };
                return Ok((blank, Absorbed::Gone));
            };
            let count = parse_used(&used.value).ok_or(Unexpected("use value unreadable"))?;
            see(&mut next, count, used.mod_revision);
            if mine(ranges.get(1).and_then(|r| r.as_ref())) {
                *k
            } else {
                0
            }
        }
    };
    next.left = next.left.saturating_add(granted);
    if matches!(attempt, Attempt::Reserve { .. }) {
        next.refill_until_ms = 0;
    }
    Ok((next, Absorbed::Granted(granted)))
}

/// The held records of one Envoy: one shared-data key per payment-table slot, next to it.
#[derive(Debug)]
pub struct LedgerTable {
    prefix: String,
    slots: usize,
}

impl LedgerTable {
    pub fn new(scope: &str, slots: usize) -> LedgerTable {
        LedgerTable { prefix: format!("{scope}l/"), slots: slots.max(1) }
    }

    pub fn key(&self, slot: usize) -> String {
        format!("{}{slot}", self.prefix)
    }

    pub fn create(&self, store: &dyn SharedStore) {
        for slot in 0..self.slots {
            store.create_if_missing(&self.key(slot), &[]);
        }
    }

    pub fn read(&self, store: &dyn SharedStore, slot: usize, record: &[u8; 32]) -> Held {
        let current = store.get(&self.key(slot)).and_then(|(bytes, _)| Held::decode(&bytes));
        Held::for_record(current, record)
    }

    /// `take`, applied atomically across the Envoy's workers.
    pub fn take(
        &self,
        store: &dyn SharedStore,
        slot: usize,
        record: &[u8; 32],
        want: &Want,
    ) -> Result<Take, UpdateError> {
        update(store, &self.key(slot), |bytes| {
            let held = Held::for_record(Held::decode(bytes), record);
            let (next, answer) = take(&held, want);
            (next.map(|h| h.encode()), answer)
        })
    }

    /// `absorb`, applied atomically across the Envoy's workers.
    pub fn absorb(
        &self,
        store: &dyn SharedStore,
        slot: usize,
        record: &[u8; 32],
        attempt: &Attempt,
        reply: &TxnReply,
    ) -> Result<Result<Absorbed, Unexpected>, UpdateError> {
        update(store, &self.key(slot), |bytes| {
            let held = Held::for_record(Held::decode(bytes), record);
            match absorb(&held, attempt, reply) {
                Ok((next, absorbed)) => (Some(next.encode()), Ok(absorbed)),
                Err(e) => (None, Err(e)),
            }
        })
    }

    /// Ends a background refill that failed, so that the next low-water request starts another.
    pub fn refill_over(&self, store: &dyn SharedStore, slot: usize, record: &[u8; 32]) {
        let _ = update(store, &self.key(slot), |bytes| match Held::decode(bytes) {
            Some(mut h) if h.record == *record && h.refill_until_ms != 0 => {
                h.refill_until_ms = 0;
                (Some(h.encode()), ())
            }
            _ => (None, ()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::etcd::Kv;
    use super::*;

    const R: [u8; 32] = [9; 32];
    const ALICE: [u8; 16] = [1; 16];
    const BOB: [u8; 16] = [2; 16];

    fn want(owner: Option<[u8; 16]>, now_ms: u64) -> Want {
        Want { owner, window_secs: None, now_ms, refill_for_ms: 1000 }
    }

    fn pay(limit: u64, block: u64) -> Pay {
        Pay { owner: ALICE, first_used: 100, block, limit, lease: 7 }
    }

    fn contacted(limit: u64, block: u64, left: u64, used: u64) -> Held {
        Held { record: R, contacted: true, pay: pay(limit, block), left, used_seen: used, rev: 5, refill_until_ms: 0 }
    }

    #[test]
    fn encodes_round_trip() {
        let h = Held { refill_until_ms: 77, ..contacted(50, 8, 3, 16) };
        assert_eq!(Held::decode(&h.encode()), Some(h));
        assert_eq!(h.encode().len(), HELD_LEN);
        assert_eq!(Held::decode(&[]), None);
    }

    #[test]
    fn warm_path_takes_from_the_block_and_refills_at_low_water() {
        let h = contacted(50, 8, 6, 8);
        let (next, answer) = take(&h, &want(Some(ALICE), 1));
        assert_eq!(answer, Take::Granted { refill: false });
        let next = next.unwrap();
        assert_eq!(next.left, 5);
        let (next, answer) = take(&next, &want(Some(ALICE), 2));
        assert_eq!(answer, Take::Granted { refill: true }, "4 left with blocks of 8 is the low-water mark");
        let next = next.unwrap();
        assert_eq!(next.refill_until_ms, 1002);
        // One refill at a time per Envoy.
        assert_eq!(take(&next, &want(Some(ALICE), 3)).1, Take::Granted { refill: false });
        // No refill once the ledger has handed out everything.
        assert_eq!(take(&contacted(16, 8, 1, 16), &want(None, 1)).1, Take::Granted { refill: false });
    }

    #[test]
    fn empty_blocks_reserve_until_the_limit() {
        assert_eq!(take(&contacted(50, 8, 0, 48), &want(None, 1)), (None, Take::Reserve));
        assert_eq!(take(&contacted(50, 8, 0, 50), &want(None, 1)), (None, Take::Exhausted));
        assert_eq!(take(&Held::for_record(None, &R), &want(None, 1)), (None, Take::Contact));
    }

    #[test]
    fn binding_and_window_are_checked_locally() {
        assert_eq!(take(&contacted(50, 8, 4, 8), &want(Some(BOB), 1)), (None, Take::BoundToOther));
        let unbound = Held { pay: Pay { owner: [0; 16], ..pay(50, 8) }, ..contacted(50, 8, 4, 8) };
        assert!(matches!(take(&unbound, &want(Some(BOB), 1)).1, Take::Granted { .. }));
        let w = Want { window_secs: Some(60), ..want(None, 159_000) };
        assert!(matches!(take(&contacted(50, 8, 4, 8), &w).1, Take::Granted { .. }));
        let w = Want { window_secs: Some(60), ..want(None, 160_000) };
        assert_eq!(take(&contacted(50, 8, 4, 8), &w).1, Take::Exhausted);
        // A window-only grant counts nothing.
        assert_eq!(take(&contacted(0, 1, 0, 0), &want(None, 1)), (None, Take::Granted { refill: false }));
    }

    /// A slot's held state is kept only for the payment it is about: another payment that lands
    /// in the slot starts blank, with nothing of the first one's blocks or contact.
    #[test]
    fn a_slot_holding_another_payment_starts_blank() {
        let mine = Held { contacted: true, left: 5, used_seen: 3, rev: 8, ..Held::for_record(None, &R) };
        assert_eq!(Held::for_record(Some(mine), &R), mine);
        let other = Held { record: [7; 32], ..mine };
        let fresh = Held::for_record(Some(other), &R);
        assert_eq!(fresh, Held::for_record(None, &R));
        assert_eq!((fresh.record, fresh.contacted, fresh.left), (R, false, 0));
    }

    #[test]
    fn attempts_ask_for_a_block_or_what_is_left() {
        let blank = Held::for_record(None, &R);
        assert_eq!(attempt_for(&blank, pay(50, 8), 3), Attempt::First { pay: pay(50, 8), seq: 3, k: 8 });
        assert_eq!(attempt_for(&blank, pay(5, 8), 3), Attempt::First { pay: pay(5, 8), seq: 3, k: 5 });
        assert_eq!(attempt_for(&blank, pay(0, 1), 3), Attempt::First { pay: pay(0, 1), seq: 3, k: 0 });
        assert_eq!(
            attempt_for(&contacted(50, 8, 0, 48), pay(50, 8), 4),
            Attempt::Reserve { rev: 5, used: 48, seq: 4, k: 2, lease: 7 }
        );
    }

    fn kv(value: &str, rev: u64) -> Option<Kv> {
        Some(Kv { value: value.as_bytes().to_vec(), mod_revision: rev })
    }

    #[test]
    fn first_contact_replies() {
        let blank = Held::for_record(None, &R);
        let attempt = Attempt::First { pay: pay(50, 8), seq: 3, k: 8 };
        let (h, a) = absorb(&blank, &attempt, &TxnReply::Succeeded { revision: 9 }).unwrap();
        assert_eq!(
            (a, h.left, h.used_seen, h.rev, h.contacted, h.pay),
            (Absorbed::Granted(8), 8, 8, 9, true, pay(50, 8))
        );
        // Someone else was first: learn their pay (owner, block, limit), nothing granted yet.
        let theirs = Pay { owner: BOB, block: 4, ..pay(50, 8) };
        let reply = TxnReply::Failed { ranges: vec![kv(&theirs.encode(), 2), kv("12|x|1", 6), None] };
        let (h, a) = absorb(&blank, &attempt, &reply).unwrap();
        assert_eq!((a, h.left, h.used_seen, h.rev, h.pay), (Absorbed::Granted(0), 0, 12, 6, theirs));
        // A retry of our own committed first contact: the claim shows our seq.
        let reply = TxnReply::Failed { ranges: vec![kv(&pay(50, 8).encode(), 2), kv("20|x|1", 8), kv("3:8", 2)] };
        let (h, a) = absorb(&blank, &attempt, &reply).unwrap();
        assert_eq!((a, h.left, h.used_seen, h.rev), (Absorbed::Granted(8), 8, 20, 8));
        assert!(absorb(&blank, &attempt, &TxnReply::Failed { ranges: vec![None, None, None] }).is_err());
    }

    /// One key per slot, under the scope: a slot's held state is its own, and ending a failed
    /// refill touches only a refill of this payment that is under way.
    #[test]
    fn the_table_keeps_a_key_per_slot_and_ends_only_this_payments_refill() {
        use crate::store::memory::MemoryStore;
        let table = LedgerTable::new("scope/", 4);
        assert_eq!((table.key(0), table.key(3)), ("scope/l/0".to_string(), "scope/l/3".to_string()));
        let store = MemoryStore::default();
        table.create(&store);
        assert_eq!(store.len(), 4);
        let refilling = Held { refill_until_ms: 900, ..contacted(50, 8, 3, 8) };
        store.set(&table.key(1), &refilling.encode(), 0).unwrap();
        assert_eq!(table.read(&store, 1, &R), refilling);
        assert_eq!(table.read(&store, 2, &R), Held::for_record(None, &R), "another slot");
        let version = |slot| store.get(&table.key(slot)).map(|(_, cas)| cas);
        let before = version(1);
        table.refill_over(&store, 1, &[7; 32]);
        assert_eq!((table.read(&store, 1, &R), version(1)), (refilling, before), "another payment's refill");
        table.refill_over(&store, 1, &R);
        assert_eq!(table.read(&store, 1, &R), Held { refill_until_ms: 0, ..refilling });
        let before = version(1);
        table.refill_over(&store, 1, &R);
        assert_eq!(version(1), before, "no refill under way: nothing written");
    }

    #[test]
    fn reservation_replies_are_exactly_once() {
        let h = contacted(50, 8, 1, 8);
        let attempt = Attempt::Reserve { rev: 5, used: 8, seq: 4, k: 8, lease: 7 };
        let (n, a) = absorb(&h, &attempt, &TxnReply::Succeeded { revision: 11 }).unwrap();
        assert_eq!((a, n.left, n.used_seen, n.rev), (Absorbed::Granted(8), 9, 16, 11));
        // Stale compare, claim of an older attempt: nothing granted, fresh count learned.
        let reply = TxnReply::Failed { ranges: vec![kv("24|y|2", 12), kv("3:8", 4)] };
        let (n, a) = absorb(&h, &attempt, &reply).unwrap();
        assert_eq!((a, n.left, n.used_seen, n.rev), (Absorbed::Granted(0), 1, 24, 12));
        // The claim shows this attempt's seq: its lost reply had committed.
        let reply = TxnReply::Failed { ranges: vec![kv("24|y|2", 12), kv("4:8", 10)] };
        let (n, a) = absorb(&h, &attempt, &reply).unwrap();
        assert_eq!((a, n.left, n.used_seen), (Absorbed::Granted(8), 9, 24));
        // The payment left the ledger (lease expired).
        let (n, a) = absorb(&h, &attempt, &TxnReply::Failed { ranges: vec![None, None] }).unwrap();
        assert_eq!((a, n.contacted, n.left), (Absorbed::Gone, false, 0));
        assert_eq!(n, Held::for_record(None, &R), "blank, and still about this payment");
        // An older revision never rolls the count back.
        let reply = TxnReply::Failed { ranges: vec![kv("2|y|2", 3), None] };
        let (n, _) = absorb(&h, &attempt, &reply).unwrap();
        assert_eq!((n.used_seen, n.rev), (8, 5));
    }
}
