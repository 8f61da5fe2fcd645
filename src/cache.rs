//! The verified-payment cache in shared data, seen by every worker of the `vm_id`.
//!
//! Shared data has no delete and no expiry, so the cache is a fixed table of `slots` keys created
//! at configuration time (`txgate/p/<n>`). A txid may live in one of two slots chosen from its own
//! bytes (two-choice hashing); a new txid takes an empty or expired slot, else evicts the less
//! valuable entry (negative before positive, then the older). Memory is therefore bounded by
//! `slots × (key + RECORD_LEN)` whatever clients send, and every write is a compare-and-swap on a
//! key that already exists.

use crate::esplora::{BlockPlace, TxFacts};
use crate::record::{put_u64, Reader};
use crate::store::{update, SharedStore, UpdateError};

pub const RECORD_LEN: usize = 1 + 1 + 32 + 8 * 8;
const VERSION: u8 = 1;
const TIP_KEY: &str = "txgate/tip";

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
}

impl PaymentRecord {
    pub fn new(txid: [u8; 32], state: PaymentState, expires_ms: u64, now_ms: u64) -> PaymentRecord {
        PaymentRecord { txid, state, used: 0, first_used: 0, bound_to: 0, expires_ms, stored_ms: now_ms }
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
        for v in [paid, height, time, self.used, self.first_used, self.bound_to, self.expires_ms, self.stored_ms] {
            put_u64(&mut out, v);
        }
        out
    }

    /// `None` for an empty slot or bytes this version does not understand.
    pub fn decode(bytes: &[u8]) -> Option<PaymentRecord> {
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let kind = r.u8()?;
        let txid: [u8; 32] = r.take(32)?.try_into().ok()?;
        let (paid_sats, height, time) = (r.u64()?, r.u64()?, r.u64()?);
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
}

/// Raw txid bytes from its 64-hex display form.
pub fn txid_bytes(txid: &crate::txid::Txid) -> [u8; 32] {
    let mut out = [0u8; 32];
    let _ = hex::decode_to_slice(txid.as_str(), &mut out);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PaymentTable {
    slots: usize,
}

impl PaymentTable {
    pub fn new(slots: usize) -> PaymentTable {
        PaymentTable { slots: slots.max(1) }
    }

    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn key(slot: usize) -> String {
        format!("txgate/p/{slot}")
    }

    /// Creates every slot and the tip key; run in `on_configure`, before traffic.
    pub fn create(&self, store: &dyn SharedStore) {
        for slot in 0..self.slots {
            store.create_if_missing(&Self::key(slot), &[]);
        }
        store.create_if_missing(TIP_KEY, &[]);
    }

    /// The two slots a txid may live in, from two independent parts of its (random) bytes.
    pub fn candidates(&self, txid: &[u8; 32]) -> [usize; 2] {
        let word = |at: usize| {
            let mut raw = [0u8; 8];
            if let Some(part) = txid.get(at..at.saturating_add(8)) {
                raw.copy_from_slice(part);
            }
            u64::from_le_bytes(raw)
        };
        let n = self.slots as u64;
        let a = word(0).checked_rem(n).unwrap_or(0);
        let mut b = word(8).checked_rem(n).unwrap_or(0);
        if b == a && n > 1 {
            b = a.wrapping_add(1).checked_rem(n).unwrap_or(0);
        }
        [usize::try_from(a).unwrap_or(0), usize::try_from(b).unwrap_or(0)]
    }

    pub fn find(&self, store: &dyn SharedStore, txid: &[u8; 32]) -> Option<(usize, PaymentRecord)> {
        self.candidates(txid).into_iter().find_map(|slot| {
            let (bytes, _) = store.get(&Self::key(slot))?;
            let record = PaymentRecord::decode(&bytes)?;
            (record.txid == *txid).then_some((slot, record))
        })
    }

    /// Stores what the explorer said, keeping the usage and binding of an earlier entry for the
    /// same txid (so re-verifying a mempool payment does not reset its grant).
    pub fn put(
        &self,
        store: &dyn SharedStore,
        txid: &[u8; 32],
        state: PaymentState,
        expires_ms: u64,
        now_ms: u64,
    ) -> Result<usize, UpdateError> {
        let slot = match self.find(store, txid) {
            Some((slot, _)) => slot,
            None => self.victim(store, txid, now_ms),
        };
        update(store, &Self::key(slot), |bytes| {
            let mut record = PaymentRecord::new(*txid, state, expires_ms, now_ms);
            if let Some(old) = PaymentRecord::decode(bytes).filter(|old| old.txid == *txid) {
                record.used = old.used;
                record.first_used = old.first_used;
                record.bound_to = old.bound_to;
            }
            (Some(record.encode()), slot)
        })
    }

    fn victim(&self, store: &dyn SharedStore, txid: &[u8; 32], now_ms: u64) -> usize {
        let priority = |slot: usize| {
            store
                .get(&Self::key(slot))
                .and_then(|(bytes, _)| PaymentRecord::decode(&bytes))
                .map_or((0, 0), |r| r.keep_priority(now_ms))
        };
        let [a, b] = self.candidates(txid);
        if priority(b) < priority(a) {
            b
        } else {
            a
        }
    }
}

/// The chain tip as last read by any worker: (height, unix ms when read).
pub fn read_tip(store: &dyn SharedStore) -> Option<(u64, u64)> {
    let (bytes, _) = store.get(TIP_KEY)?;
    let mut r = Reader::new(&bytes);
    Some((r.u64()?, r.u64()?))
}

/// Records a freshly read tip. A lower height than the stored one (an explorer behind the others)
/// only refreshes the time, so confirmations never go backwards.
pub fn write_tip(store: &dyn SharedStore, height: u64, now_ms: u64) -> Result<u64, UpdateError> {
    update(store, TIP_KEY, |bytes| {
        let mut r = Reader::new(bytes);
        let best = match (r.u64(), r.u64()) {
            (Some(old), Some(_)) => old.max(height),
            _ => height,
        };
        let mut out = Vec::with_capacity(16);
        put_u64(&mut out, best);
        put_u64(&mut out, now_ms);
        (Some(out), best)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn txid(first: u8, second: u8) -> [u8; 32] {
        let mut t = [0u8; 32];
        t[0] = first;
        t[8] = second;
        t[31] = 0xee;
        t
    }

    fn confirmed(paid: u64) -> PaymentState {
        PaymentState::Confirmed { paid_sats: paid, block: BlockPlace { height: 100, time: 1_700_000_000 } }
    }

    #[test]
    fn records_round_trip_in_a_fixed_size() {
        for state in [confirmed(5), PaymentState::Unconfirmed { paid_sats: 9, seen_at_tip: 3 }, PaymentState::NotFound]
        {
            let mut r = PaymentRecord::new(txid(1, 2), state, 77, 66);
            r.used = 3;
            r.first_used = 4;
            r.bound_to = 5;
            let bytes = r.encode();
            assert_eq!(bytes.len(), RECORD_LEN);
            assert_eq!(PaymentRecord::decode(&bytes), Some(r));
        }
        assert_eq!(PaymentRecord::decode(&[]), None);
        assert_eq!(PaymentRecord::decode(&[9; RECORD_LEN]), None);
        assert_eq!(PaymentRecord::decode(&[1, 1, 0]), None);
    }

    #[test]
    fn stored_payments_are_found_by_txid() {
        let store = MemoryStore::default();
        let table = PaymentTable::new(64);
        table.create(&store);
        table.put(&store, &txid(1, 2), confirmed(1000), 0, 10).unwrap();
        let (_, found) = table.find(&store, &txid(1, 2)).unwrap();
        assert_eq!(found.state, confirmed(1000));
        assert!(table.find(&store, &txid(3, 4)).is_none());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_txids() {
        let store = MemoryStore::default();
        let table = PaymentTable::new(16);
        table.create(&store);
        for i in 0..10_000u32 {
            let mut t = [0u8; 32];
            t[..4].copy_from_slice(&i.to_le_bytes());
            t[8..12].copy_from_slice(&(i.wrapping_mul(7919)).to_le_bytes());
            table.put(&store, &t, PaymentState::NotFound, 5_000, u64::from(i)).unwrap();
        }
        assert_eq!(store.len(), 17, "16 slots and the tip");
        assert!(store.bytes() <= 17 * (RECORD_LEN + 16));
    }

    #[test]
    fn a_flood_of_negative_entries_does_not_evict_verified_payments() {
        let store = MemoryStore::default();
        let table = PaymentTable::new(2);
        table.create(&store);
        let paid = txid(0, 1);
        table.put(&store, &paid, confirmed(1000), 0, 1).unwrap();
        for i in 1..50u8 {
            table.put(&store, &txid(i, i.wrapping_add(1)), PaymentState::NotFound, 1_000, 2).unwrap();
            assert!(table.find(&store, &paid).is_some(), "evicted by flood entry {i}");
        }
    }

    #[test]
    fn re_verifying_keeps_usage_and_binding() {
        let store = MemoryStore::default();
        let table = PaymentTable::new(8);
        table.create(&store);
        let t = txid(5, 6);
        let slot =
            table.put(&store, &t, PaymentState::Unconfirmed { paid_sats: 1000, seen_at_tip: 0 }, 100, 1).unwrap();
        update(&store, &PaymentTable::key(slot), |b| {
            let mut r = PaymentRecord::decode(b).unwrap();
            r.used = 7;
            r.bound_to = 42;
            (Some(r.encode()), ())
        })
        .unwrap();
        table.put(&store, &t, confirmed(1000), 0, 200).unwrap();
        let (_, r) = table.find(&store, &t).unwrap();
        assert_eq!((r.used, r.bound_to, r.state), (7, 42, confirmed(1000)));
    }

    #[test]
    fn expiry_and_candidates() {
        let r = PaymentRecord::new(txid(1, 1), PaymentState::NotFound, 100, 0);
        assert!(r.is_fresh(99) && !r.is_fresh(100));
        assert!(PaymentRecord::new(txid(1, 1), confirmed(1), 0, 0).is_fresh(u64::MAX));
        let table = PaymentTable::new(4);
        let [a, b] = table.candidates(&txid(1, 1));
        assert_ne!(a, b);
        assert!(a < 4 && b < 4);
        assert_eq!(PaymentTable::new(1).candidates(&txid(1, 2)), [0, 0]);
    }

    #[test]
    fn tip_never_goes_backwards() {
        let store = MemoryStore::default();
        PaymentTable::new(1).create(&store);
        assert_eq!(read_tip(&store), None);
        write_tip(&store, 100, 1).unwrap();
        write_tip(&store, 99, 2).unwrap();
        assert_eq!(read_tip(&store), Some((100, 2)));
        write_tip(&store, 101, 3).unwrap();
        assert_eq!(read_tip(&store), Some((101, 3)));
    }
}
