//! The verified-payment cache in shared data, seen by every worker of the `vm_id`.
//!
//! Shared data has no delete and no expiry, so the cache is two fixed tables of `slots` keys
//! created at configuration time under the configuration's scope (see `scope`):
//! - `<scope>p/<n>`: payments that pay at least the lowest price anyone is asked, confirmed or in
//!   the mempool. A record that holds a grant count, a window start or a binding is never evicted
//!   while some route could still accept the payment: evicting it would hand back what it counts.
//!   When both slots of a new payment hold such records, the payment is not stored (`Full`).
//! - `<scope>n/<n>`: negative answers (unknown txids, transactions that pay us less than any
//!   price). A flood of bogus txids only ever displaces other negative answers.
//!
//! A txid may live in one of two slots of a table, chosen by a hash keyed with a secret made per
//! deployment (kept in shared data), so nobody can aim txids at a victim's slots. Memory is
//! bounded by `2 × slots × (key + RECORD_LEN)` whatever clients send.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, DefaultHasher, Hasher};

use crate::esplora::{BlockPlace, TxFacts};
use crate::record::{put_u64, Reader};
use crate::store::{update, SharedStore, UpdateError};

pub const RECORD_LEN: usize = 1 + 1 + 32 + 9 * 8;
const VERSION: u8 = 2;
const LOW_32: u64 = 0xffff_ffff;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentState {
    /// In a block: the facts never change (barring a reorg deeper than the cache's life).
    Confirmed { paid_sats: u64, block: BlockPlace },
    /// In the mempool when the tip was `seen_at_tip`; good until `expires_ms` or a newer tip.
    Unconfirmed { paid_sats: u64, seen_at_tip: u64 },
    /// The explorer did not know it; good until `expires_ms`.
    NotFound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentRecord {
    pub txid: [u8; 32],
    pub state: PaymentState,
    /// Requests granted so far (see `grant`).
    pub used: u64,
    /// Unix seconds of the first granted request, 0 before.
    pub first_used: u64,
    /// Identity hash the payment is bound to, 0 when unbound.
    pub bound_to: u64,
    /// When a negative or mempool entry must be asked again; 0 = never.
    pub expires_ms: u64,
    pub stored_ms: u64,
    /// Index of the explorer that answered: its own tip counts the confirmations. Stored in the
    /// low 32 bits of the record's last word.
    pub explorer: u64,
    /// `verify: spv`: headers proven from the payment's block up (its confirmations when it was
    /// verified); 0 when the explorer's word was taken. The high 32 bits of the last word.
    pub proven_depth: u64,
}

impl PaymentRecord {
    pub fn new(txid: [u8; 32], state: PaymentState, expires_ms: u64, now_ms: u64) -> PaymentRecord {
        PaymentRecord {
            txid,
            state,
            used: 0,
            first_used: 0,
            bound_to: 0,
            expires_ms,
            stored_ms: now_ms,
            explorer: 0,
            proven_depth: 0,
        }
    }

    pub fn is_fresh(&self, now_ms: u64) -> bool {
        self.expires_ms == 0 || now_ms < self.expires_ms
    }

    /// The facts the payment rules need, or `None` for a transaction the explorer did not know.
    pub fn facts(&self) -> Option<TxFacts> {
        match self.state {
            PaymentState::Confirmed { paid_sats, block } => Some(TxFacts { paid_sats, block: Some(block) }),
            PaymentState::Unconfirmed { paid_sats, .. } => Some(TxFacts { paid_sats, block: None }),
            PaymentState::NotFound => None,
        }
    }

    /// Whether the record holds something a re-verification would hand back.
    pub fn counts_something(&self) -> bool {
        self.used != 0 || self.first_used != 0 || self.bound_to != 0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN);
        let (kind, paid, height, time) = match self.state {
            PaymentState::Confirmed { paid_sats, block } => (1, paid_sats, block.height, block.time),
            PaymentState::Unconfirmed { paid_sats, seen_at_tip } => (2, paid_sats, seen_at_tip, 0),
            PaymentState::NotFound => (3, 0, 0, 0),
        };
        out.push(VERSION);
        out.push(kind);
        out.extend_from_slice(&self.txid);
        for v in [
            paid,
            height,
            time,
            self.used,
            self.first_used,
            self.bound_to,
            self.expires_ms,
            self.stored_ms,
            (self.explorer & LOW_32) | (self.proven_depth & LOW_32).checked_shl(32).unwrap_or(0),
        ] {
            put_u64(&mut out, v);
        }
        out
    }

    /// `None` for an empty slot or bytes this version does not understand.
    pub fn decode(bytes: &[u8]) -> Option<PaymentRecord> {
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let kind = r.u8()?;
        let txid: [u8; 32] = r.take(32)?.try_into().ok()?;
        let (paid_sats, height, time) = (r.u64()?, r.u64()?, r.u64()?);
        let last = bytes.get(RECORD_LEN.saturating_sub(8)..).and_then(|b| <[u8; 8]>::try_from(b).ok());
        let last = u64::from_le_bytes(last?);
        let state = match kind {
            1 => PaymentState::Confirmed { paid_sats, block: BlockPlace { height, time } },
            2 => PaymentState::Unconfirmed { paid_sats, seen_at_tip: height },
            3 => PaymentState::NotFound,
            _ => return None,
        };
        Some(PaymentRecord {
            txid,
            state,
            used: r.u64()?,
            first_used: r.u64()?,
            bound_to: r.u64()?,
            expires_ms: r.u64()?,
            stored_ms: r.u64()?,
            explorer: last & LOW_32,
            proven_depth: last.checked_shr(32).unwrap_or(0),
        })
    }

    /// Lower is evicted first: stale entries, then negative ones, then the oldest.
    fn keep_priority(&self, now_ms: u64) -> (u8, u64) {
        let rank = match (self.is_fresh(now_ms), self.state) {
            (false, _) => 0,
            (true, PaymentState::NotFound) => 1,
            (true, PaymentState::Unconfirmed { .. }) => 2,
            (true, PaymentState::Confirmed { .. }) => 3,
        };
        (rank, self.stored_ms)
    }

    /// Whether no route could accept this payment any more (older than the longest max_age).
    fn past_every_max_age(&self, longest_max_age_secs: Option<u64>, now_ms: u64) -> bool {
        let Some(longest) = longest_max_age_secs else { return false };
        let since = match self.state {
            PaymentState::Confirmed { block, .. } => block.time,
            // Not in a block yet: its max_age cannot have started; count from when it was seen.
            PaymentState::Unconfirmed { .. } | PaymentState::NotFound => self.stored_ms / 1000,
        };
        since.saturating_add(longest) < now_ms / 1000
    }
}

/// Raw txid bytes from its 64-hex display form.
pub fn txid_bytes(txid: &crate::txid::Txid) -> [u8; 32] {
    let mut out = [0u8; 32];
    let _ = hex::decode_to_slice(txid.as_str(), &mut out);
    out
}

/// Why a payment could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutError {
    /// Both slots hold payments that still count something.
    Full,
    Store(UpdateError),
}

#[derive(Debug)]
pub struct PaymentTable {
    /// `<scope>p/` or `<scope>n/`.
    prefix: String,
    slots: usize,
    secret_key: String,
    /// The deployment's slot secret as this worker last read it.
    secret: Cell<[u8; 16]>,
    /// The longest max_age of any route (`None`: some route keeps payments forever): a record
    /// that counts something is kept at least that long.
    keep_secs: Option<u64>,
}

impl PaymentTable {
    pub fn new(scope: &str, table: &str, slots: usize, keep_secs: Option<u64>) -> PaymentTable {
        PaymentTable {
            prefix: format!("{scope}{table}/"),
            slots: slots.max(1),
            secret_key: format!("{scope}slot-secret"),
            secret: Cell::new([0; 16]),
            keep_secs,
        }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn key(&self, slot: usize) -> String {
        format!("{}{slot}", self.prefix)
    }

    /// Creates every slot and the slot secret; run in `on_configure`, before traffic.
    pub fn create(&self, store: &dyn SharedStore) {
        for slot in 0..self.slots {
            store.create_if_missing(&self.key(slot), &[]);
        }
        if store.get(&self.secret_key).is_none_or(|(v, _)| v.len() != 16) {
            let random = RandomState::new();
            let mut secret = Vec::with_capacity(16);
            for part in [random.hash_one(1u8), random.hash_one(2u8)] {
                put_u64(&mut secret, part);
            }
            let _ = store.set(&self.secret_key, &secret, 0);
        }
        self.refresh_secret(store);
    }

    /// Reads the shared secret again: two workers configuring at once may both have written one,
    /// and every write to the table goes through here first, so no worker writes with a stale one.
    fn refresh_secret(&self, store: &dyn SharedStore) {
        if let Some((bytes, _)) = store.get(&self.secret_key) {
            if let Ok(secret) = <[u8; 16]>::try_from(bytes.as_slice()) {
                self.secret.set(secret);
            }
        }
    }

    /// An identity hash keyed with the deployment's secret, so that nobody can craft identities
    /// that land in another client's penalty-box slot.
    pub fn keyed(&self, id: u64) -> u64 {
        let mut h = DefaultHasher::new();
        h.write(&self.secret.get());
        h.write_u64(id);
        h.finish().max(1)
    }

    /// Reads the deployment's secret again (before a write that depends on it).
    pub fn refresh(&self, store: &dyn SharedStore) {
        self.refresh_secret(store);
    }

    /// The two slots a txid may live in, from a hash keyed with the deployment's secret.
    pub fn candidates(&self, txid: &[u8; 32]) -> [usize; 2] {
        let hash = |lane: u8| {
            let mut h = DefaultHasher::new();
            h.write(&self.secret.get());
            h.write_u8(lane);
            h.write(txid);
            h.finish()
        };
        let n = self.slots as u64;
        let a = hash(0).checked_rem(n).unwrap_or(0);
        let mut b = hash(1).checked_rem(n).unwrap_or(0);
        if b == a && n > 1 {
            b = a.wrapping_add(1).checked_rem(n).unwrap_or(0);
        }
        [usize::try_from(a).unwrap_or(0), usize::try_from(b).unwrap_or(0)]
    }

    pub fn find(&self, store: &dyn SharedStore, txid: &[u8; 32]) -> Option<(usize, PaymentRecord)> {
        self.candidates(txid).into_iter().find_map(|slot| {
            let (bytes, _) = store.get(&self.key(slot))?;
            let record = PaymentRecord::decode(&bytes)?;
            (record.txid == *txid).then_some((slot, record))
        })
    }

    /// The record in `slot` if it is still `txid`'s.
    pub fn at(&self, store: &dyn SharedStore, slot: usize, txid: &[u8; 32]) -> Option<PaymentRecord> {
        let (bytes, _) = store.get(&self.key(slot))?;
        PaymentRecord::decode(&bytes).filter(|r| r.txid == *txid)
    }

    /// Stores what the explorer said, keeping the usage and binding of an earlier entry for the
    /// same txid (so re-verifying a mempool payment does not reset its grant). Never overwrites a
    /// record that counts something for another txid.
    pub fn put(
        &self,
        store: &dyn SharedStore,
        txid: &[u8; 32],
        state: PaymentState,
        expires_ms: u64,
        explorer: u64,
        now_ms: u64,
    ) -> Result<usize, PutError> {
        self.put_proven(store, txid, state, expires_ms, (explorer, 0), now_ms)
    }

    /// `put`, recording also the depth proven by `verify: spv` (`answer` = explorer, depth).
    pub fn put_proven(
        &self,
        store: &dyn SharedStore,
        txid: &[u8; 32],
        state: PaymentState,
        expires_ms: u64,
        (explorer, proven_depth): (u64, u64),
        now_ms: u64,
    ) -> Result<usize, PutError> {
        let longest_max_age_secs = self.keep_secs;
        self.refresh_secret(store);
        let slot = match self.find(store, txid) {
            Some((slot, _)) => slot,
            None => self.victim(store, txid, now_ms, longest_max_age_secs).ok_or(PutError::Full)?,
        };
        let stored = update(store, &self.key(slot), |bytes| {
            let mut record = PaymentRecord::new(*txid, state, expires_ms, now_ms);
            record.explorer = explorer;
            record.proven_depth = proven_depth;
            match PaymentRecord::decode(bytes) {
                Some(old) if old.txid == *txid => {
                    record.used = old.used;
                    record.first_used = old.first_used;
                    record.bound_to = old.bound_to;
                }
                // Another worker put a counted payment here since we chose the slot.
                Some(old) if !evictable(&old, now_ms, longest_max_age_secs) => return (None, false),
                _ => {}
            }
            (Some(record.encode()), true)
        });
        match stored {
            Ok(true) => Ok(slot),
            Ok(false) => Err(PutError::Full),
            Err(e) => Err(PutError::Store(e)),
        }
    }

    /// The slot a new txid takes: the least valuable of its two that may be evicted at all.
    fn victim(&self, store: &dyn SharedStore, txid: &[u8; 32], now_ms: u64, longest: Option<u64>) -> Option<usize> {
        self.candidates(txid)
            .into_iter()
            .filter_map(|slot| {
                let record = store.get(&self.key(slot)).and_then(|(bytes, _)| PaymentRecord::decode(&bytes));
                match record {
                    None => Some((slot, (0, 0))),
                    Some(r) if evictable(&r, now_ms, longest) => Some((slot, r.keep_priority(now_ms))),
                    Some(_) => None,
                }
            })
            .min_by_key(|(_, priority)| *priority)
            .map(|(slot, _)| slot)
    }
}

/// A record may give way unless it counts something a route could still accept.
fn evictable(record: &PaymentRecord, now_ms: u64, longest_max_age_secs: Option<u64>) -> bool {
    !record.counts_something() || record.past_every_max_age(longest_max_age_secs, now_ms)
}

/// The tips of one scope's explorers: `<scope>tip/<explorer>` = (height, unix ms when read).
pub struct Tips {
    prefix: String,
    explorers: usize,
}

impl Tips {
    pub fn new(scope: &str, explorers: usize) -> Tips {
        Tips { prefix: format!("{scope}tip/"), explorers }
    }

    fn key(&self, explorer: u64) -> String {
        format!("{}{explorer}", self.prefix)
    }

    pub fn create(&self, store: &dyn SharedStore) {
        for explorer in 0..self.explorers {
            store.create_if_missing(&self.key(explorer as u64), &[]);
        }
    }

    /// The tip `explorer` last told, as (height, read-at ms).
    pub fn read(&self, store: &dyn SharedStore, explorer: u64) -> Option<(u64, u64)> {
        let (bytes, _) = store.get(&self.key(explorer))?;
        let mut r = Reader::new(&bytes);
        Some((r.u64()?, r.u64()?))
    }

    /// Records what the explorer just said. It may be lower than before (a reorg, or a lagging
    /// explorer behind a load balancer): the newest answer wins, never the highest.
    pub fn write(&self, store: &dyn SharedStore, explorer: u64, height: u64, now_ms: u64) -> Result<(), UpdateError> {
        update(store, &self.key(explorer), |_| {
            let mut out = Vec::with_capacity(16);
            put_u64(&mut out, height);
            put_u64(&mut out, now_ms);
            (Some(out), ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::StoreError;

    const NOW: u64 = 1_700_000_000_000;

    fn txid(n: u32) -> [u8; 32] {
        let mut t = [0u8; 32];
        t[..4].copy_from_slice(&n.to_le_bytes());
        t[31] = 0xee;
        t
    }

    fn confirmed(paid: u64) -> PaymentState {
        PaymentState::Confirmed { paid_sats: paid, block: BlockPlace { height: 100, time: NOW / 1000 } }
    }

    fn table(store: &MemoryStore, slots: usize) -> PaymentTable {
        let t = PaymentTable::new("txgate/test/", "p", slots, Some(86_400));
        t.create(store);
        t
    }

    #[test]
    fn the_proven_depth_shares_the_explorer_word_and_survives_a_put() {
        let state = PaymentState::Confirmed { paid_sats: 5, block: BlockPlace { height: 7, time: 8 } };
        let mut record = PaymentRecord::new([4; 32], state, 0, 9);
        (record.explorer, record.proven_depth) = (3, 6);
        let bytes = record.encode();
        assert_eq!(bytes.len(), RECORD_LEN);
        assert_eq!(bytes[RECORD_LEN - 8..], (3u64 | 6 << 32).to_le_bytes());
        assert_eq!(PaymentRecord::decode(&bytes), Some(record));
        let (t, store) = (PaymentTable::new("s/", "p", 8, None), MemoryStore::default());
        t.create(&store);
        let slot = t.put_proven(&store, &[4; 32], state, 0, (1, 2), 9).unwrap();
        let stored = t.at(&store, slot, &[4; 32]).unwrap();
        assert_eq!((stored.explorer, stored.proven_depth), (1, 2));
    }

    fn put(t: &PaymentTable, store: &MemoryStore, id: &[u8; 32], state: PaymentState) -> Result<usize, PutError> {
        t.put(store, id, state, 0, 0, NOW)
    }

    fn count_use(t: &PaymentTable, store: &MemoryStore, slot: usize) {
        update(store, &t.key(slot), |b| {
            let mut r = PaymentRecord::decode(b).unwrap();
            r.used += 1;
            (Some(r.encode()), ())
        })
        .unwrap();
    }

    #[test]
    fn records_round_trip_in_a_fixed_size() {
        for state in [confirmed(5), PaymentState::Unconfirmed { paid_sats: 9, seen_at_tip: 3 }, PaymentState::NotFound]
        {
            let mut r = PaymentRecord::new(txid(1), state, 77, 66);
            r.used = 3;
            r.first_used = 4;
            r.bound_to = 5;
            r.explorer = 1;
            let bytes = r.encode();
            assert_eq!(bytes.len(), RECORD_LEN);
            assert_eq!(PaymentRecord::decode(&bytes), Some(r));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(PaymentRecord::decode(&longer), None, "trailing bytes are refused");
        }
        assert_eq!(PaymentRecord::decode(&[]), None);
        assert_eq!(PaymentRecord::decode(&[9; RECORD_LEN]), None);
        assert_eq!(PaymentRecord::decode(&[1, 1, 0]), None);
    }

    #[test]
    fn stored_payments_are_found_by_txid() {
        let store = MemoryStore::default();
        let t = table(&store, 64);
        put(&t, &store, &txid(1), confirmed(1000)).unwrap();
        let (_, found) = t.find(&store, &txid(1)).unwrap();
        assert_eq!(found.state, confirmed(1000));
        assert!(t.find(&store, &txid(2)).is_none());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_txids() {
        let store = MemoryStore::default();
        let t = table(&store, 16);
        for i in 0..10_000u32 {
            t.put(&store, &txid(i), PaymentState::NotFound, NOW + 5_000, 0, NOW + u64::from(i)).unwrap();
        }
        assert_eq!(store.len(), 17, "16 slots and the secret");
        assert!(store.bytes() <= 16 * (RECORD_LEN + 32) + 64);
    }

    #[test]
    fn slots_depend_on_the_deployment_secret() {
        let (a, b) = (MemoryStore::default(), MemoryStore::default());
        let (ta, tb) = (table(&a, 4096), table(&b, 4096));
        let differ = (0..64u32).filter(|i| ta.candidates(&txid(*i)) != tb.candidates(&txid(*i))).count();
        assert!(differ > 60, "two deployments place txids differently ({differ} of 64)");
        let again = PaymentTable::new("txgate/test/", "p", 4096, None);
        again.create(&a);
        assert_eq!(again.candidates(&txid(7)), ta.candidates(&txid(7)), "workers of one deployment agree");
    }

    #[test]
    fn txids_spread_over_the_slots() {
        let store = MemoryStore::default();
        let t = table(&store, 16);
        let mut seen = [false; 16];
        for i in 0..200u32 {
            for s in t.candidates(&txid(i)) {
                seen[s] = true;
            }
        }
        assert!(seen.iter().all(|s| *s), "{seen:?}");
    }

    #[test]
    fn a_record_that_counts_something_is_never_evicted() {
        let store = MemoryStore::default();
        let t = table(&store, 2);
        let paid = txid(0);
        let slot = put(&t, &store, &paid, confirmed(1000)).unwrap();
        count_use(&t, &store, slot);
        let other = txid(1);
        let slot_b = put(&t, &store, &other, confirmed(1000)).unwrap();
        count_use(&t, &store, slot_b);
        for i in 2..200u32 {
            assert_eq!(put(&t, &store, &txid(i), confirmed(1000)), Err(PutError::Full), "entry {i}");
            assert!(t.find(&store, &paid).is_some(), "evicted by entry {i}");
        }
        assert_eq!(t.find(&store, &paid).unwrap().1.used, 1, "the count was not reset");
    }

    #[test]
    fn an_uncounted_or_expired_record_gives_way() {
        let store = MemoryStore::default();
        let t = table(&store, 1);
        put(&t, &store, &txid(0), confirmed(1000)).unwrap();
        put(&t, &store, &txid(1), confirmed(1000)).unwrap();
        assert!(t.find(&store, &txid(0)).is_none(), "nothing counted: replaced");
        count_use(&t, &store, 0);
        let later = NOW + 86_401_000 + 1000;
        let old = PaymentState::Confirmed { paid_sats: 1, block: BlockPlace { height: 1, time: NOW / 1000 } };
        assert!(t.put(&store, &txid(2), old, 0, 0, NOW).is_err());
        assert!(t.put(&store, &txid(2), old, 0, 0, later).is_ok(), "older than every max_age");
        assert!(t.put(&store, &txid(3), old, 0, 0, later).is_ok(), "uncounted");
        let forever = PaymentTable::new("txgate/other/", "p", 1, None);
        forever.create(&store);
        let slot = forever.put(&store, &txid(4), old, 0, 0, NOW).unwrap();
        count_use(&forever, &store, slot);
        assert!(forever.put(&store, &txid(5), old, 0, 0, later).is_err(), "no max_age: kept for good");
    }

    #[test]
    fn re_verifying_keeps_usage_and_binding() {
        let store = MemoryStore::default();
        let t = table(&store, 8);
        let id = txid(5);
        let slot = put(&t, &store, &id, PaymentState::Unconfirmed { paid_sats: 1000, seen_at_tip: 0 }).unwrap();
        update(&store, &t.key(slot), |b| {
            let mut r = PaymentRecord::decode(b).unwrap();
            r.used = 7;
            r.bound_to = 42;
            (Some(r.encode()), ())
        })
        .unwrap();
        put(&t, &store, &id, confirmed(1000)).unwrap();
        let (_, r) = t.find(&store, &id).unwrap();
        assert_eq!((r.used, r.bound_to, r.state), (7, 42, confirmed(1000)));
    }

    #[test]
    fn expiry_and_candidates() {
        let r = PaymentRecord::new(txid(1), PaymentState::NotFound, 100, 0);
        assert!(r.is_fresh(99) && !r.is_fresh(100));
        assert!(PaymentRecord::new(txid(1), confirmed(1), 0, 0).is_fresh(u64::MAX));
        let store = MemoryStore::default();
        let t = table(&store, 4);
        let [a, b] = t.candidates(&txid(1));
        assert_ne!(a, b);
        assert!(a < 4 && b < 4);
        assert_eq!(table(&store, 1).candidates(&txid(2)), [0, 0]);
    }

    #[test]
    fn tips_are_per_explorer_and_can_go_down() {
        let store = MemoryStore::default();
        let tips = Tips::new("txgate/test/", 2);
        tips.create(&store);
        assert_eq!(tips.read(&store, 0), None);
        tips.write(&store, 0, 100, 1).unwrap();
        tips.write(&store, 1, 5_000_000, 1).unwrap();
        assert_eq!(tips.read(&store, 0), Some((100, 1)), "one explorer's tip does not touch another's");
        tips.write(&store, 0, 99, 2).unwrap();
        assert_eq!(tips.read(&store, 0), Some((99, 2)), "a reorg or a lagging explorer lowers it");
    }

    #[test]
    fn any_count_window_or_binding_makes_a_record_worth_keeping() {
        let base = PaymentRecord::new(txid(1), confirmed(1), 0, 0);
        assert!(!base.counts_something());
        for r in [
            PaymentRecord { used: 1, ..base },
            PaymentRecord { first_used: 1, ..base },
            PaymentRecord { bound_to: 1, ..base },
        ] {
            assert!(r.counts_something(), "{r:?}");
        }
    }

    #[test]
    fn a_record_is_past_every_max_age_only_strictly_after_it() {
        let longest = Some(100);
        let r = PaymentRecord::new(txid(1), confirmed(1), 0, 0); // block time NOW / 1000
        let at = |secs: u64| r.past_every_max_age(longest, (NOW / 1000 + secs) * 1000);
        assert!(!at(100), "at exactly max_age a route still accepts it");
        assert!(at(101));
        assert!(!r.past_every_max_age(None, u64::MAX), "no max_age: never");
        // Not in a block: counted from when it was stored (ms).
        let seen = PaymentRecord::new(txid(1), PaymentState::Unconfirmed { paid_sats: 1, seen_at_tip: 0 }, 0, 5_000);
        assert!(!seen.past_every_max_age(longest, 105_000));
        assert!(seen.past_every_max_age(longest, 106_000));
    }

    #[test]
    fn the_oldest_uncounted_payment_gives_way_first() {
        let store = MemoryStore::default();
        let t = table(&store, 2);
        // Two slots: every txid's candidates are both of them.
        let old = txid(10);
        let new = txid(11);
        t.put(&store, &old, confirmed(1000), 0, 0, NOW).unwrap();
        t.put(&store, &new, confirmed(1000), 0, 0, NOW + 1_000).unwrap();
        t.put(&store, &txid(12), confirmed(1000), 0, 0, NOW + 2_000).unwrap();
        assert!(t.find(&store, &old).is_none(), "the older one was evicted");
        assert!(t.find(&store, &new).is_some());
        // A stale mempool answer goes before a fresh confirmed one, however new it is.
        let stale = txid(13);
        t.put(
            &store,
            &stale,
            PaymentState::Unconfirmed { paid_sats: 1000, seen_at_tip: 0 },
            NOW + 2_500,
            0,
            NOW + 3_000,
        )
        .unwrap();
        t.put(&store, &txid(14), confirmed(1000), 0, 0, NOW + 4_000).unwrap();
        assert!(t.find(&store, &stale).is_none(), "expired at NOW + 2500: evicted first");
    }

    #[test]
    fn a_new_payment_takes_the_slot_that_may_give_way_even_if_the_other_is_older() {
        let store = MemoryStore::default();
        let t = table(&store, 2);
        let counted = txid(20);
        let slot = t.put(&store, &counted, confirmed(1000), 0, 0, NOW).unwrap();
        count_use(&t, &store, slot);
        t.put(&store, &txid(21), confirmed(1000), 0, 0, NOW + 1_000).unwrap();
        assert!(t.put(&store, &txid(22), confirmed(1000), 0, 0, NOW + 2_000).is_ok(), "the uncounted one gives way");
        assert!(t.find(&store, &counted).is_some());
        assert!(t.find(&store, &txid(21)).is_none());
    }

    /// A store where another worker writes `record` into `key` just before this worker's first
    /// write to it, so that write's compare-and-swap fails and the update reads again.
    struct RacingStore {
        inner: MemoryStore,
        key: String,
        record: Cell<Option<PaymentRecord>>,
    }

    impl SharedStore for RacingStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.inner.get(key)
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            if let Some(theirs) = self.record.take().filter(|_| key == self.key) {
                self.inner.set(key, &theirs.encode(), 0).unwrap();
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_counted_payment_another_worker_stored_meanwhile_is_not_overwritten() {
        let t = PaymentTable::new("txgate/test/", "p", 1, Some(86_400));
        let inner = MemoryStore::default();
        t.create(&inner);
        let mut theirs = PaymentRecord::new(txid(1), confirmed(1000), 0, NOW);
        theirs.used = 3;
        let store = RacingStore { inner, key: t.key(0), record: Cell::new(Some(theirs)) };
        assert_eq!(t.put(&store, &txid(2), confirmed(1000), 0, 0, NOW), Err(PutError::Full));
        assert!(store.record.take().is_none(), "the other worker did write first");
        assert_eq!(t.at(&store.inner, 0, &txid(1)), Some(theirs), "their payment and its count are kept");
        // An uncounted one in its place gives way.
        let inner = MemoryStore::default();
        t.create(&inner);
        let uncounted = PaymentRecord { used: 0, ..theirs };
        let store = RacingStore { inner, key: t.key(0), record: Cell::new(Some(uncounted)) };
        assert_eq!(t.put(&store, &txid(2), confirmed(1000), 0, 0, NOW), Ok(0));
        assert!(store.record.take().is_none());
        assert!(t.at(&store.inner, 0, &txid(2)).is_some());
    }

    #[test]
    fn an_evicted_payment_hands_nothing_to_the_one_that_replaces_it() {
        let store = MemoryStore::default();
        let t = table(&store, 1);
        let slot = put(&t, &store, &txid(0), confirmed(1000)).unwrap();
        update(&store, &t.key(slot), |b| {
            let mut r = PaymentRecord::decode(b).unwrap();
            (r.used, r.first_used, r.bound_to) = (5, NOW / 1000, 42);
            (Some(r.encode()), ())
        })
        .unwrap();
        // Older than the longest max_age (one day): it gives way, and what it counted goes with it.
        let later = NOW + 86_402_000;
        assert_eq!(t.put(&store, &txid(1), confirmed(1000), 0, 0, later), Ok(slot));
        let new = t.at(&store, slot, &txid(1)).unwrap();
        assert_eq!((new.used, new.first_used, new.bound_to), (0, 0, 0), "a fresh payment starts from nothing");
    }

    #[test]
    fn txid_bytes_are_the_hex_digits_in_order() {
        let id = crate::txid::Txid::parse(b"0001020304050607080910111213141516171819202122232425262728293031").unwrap();
        let bytes = txid_bytes(&id);
        assert_eq!(bytes[0], 0x00);
        assert_eq!(bytes[1], 0x01);
        assert_eq!(bytes[31], 0x31);
    }

    #[test]
    fn tables_know_their_size_and_keyed_ids_depend_on_the_secret() {
        let (a, b) = (MemoryStore::default(), MemoryStore::default());
        let (ta, tb) = (table(&a, 64), table(&b, 64));
        assert_eq!(ta.slots(), 64);
        assert_ne!(ta.keyed(7), ta.keyed(8));
        assert_ne!(ta.keyed(7), tb.keyed(7), "another deployment, another slot");
        assert!(ta.keyed(7) > 1);
    }

    #[test]
    fn a_worker_picks_up_a_secret_another_worker_wrote() {
        let store = MemoryStore::default();
        let t = table(&store, 4096);
        let before = t.candidates(&txid(3));
        store.set("txgate/test/slot-secret", &[9u8; 16], 0).unwrap();
        assert_eq!(t.candidates(&txid(3)), before, "kept until refreshed");
        t.refresh(&store);
        assert_ne!(t.candidates(&txid(3)), before);
    }

    #[test]
    fn the_two_candidate_slots_are_independent() {
        let store = MemoryStore::default();
        let t = table(&store, 4096);
        let adjacent = (0..200u32).filter(|i| {
            let [a, b] = t.candidates(&txid(*i));
            b == (a + 1) % 4096
        });
        assert!(adjacent.count() < 5, "the second slot is not derived from the first");
        let small = table(&store, 4);
        for i in 0..200u32 {
            let [a, b] = small.candidates(&txid(i));
            assert_ne!(a, b, "two different slots, even when both hashes agree");
        }
    }
}
