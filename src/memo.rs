//! Per-worker copies of what does not change once known, so that a warm request makes no
//! shared-data read: confirmed payments (only when nothing about them is counted or bound, so
//! the shared record is the same forever) and the tip height for up to a second.
//!
//! Every shared-data read is two crossings of the VM boundary (the call and the host allocating
//! the copy in wasm memory); on the warm path those crossings are most of the filter's cost.

use std::cell::RefCell;
use std::collections::HashMap;

use crate::cache::{PaymentRecord, PaymentState, Tips};
use crate::store::SharedStore;

/// How long a worker trusts its copy of the shared tip before reading it again.
const TIP_MEMO_MS: u64 = 1_000;

pub struct LocalMemo {
    /// Slot, record, and when it was copied here (unix ms).
    payments: RefCell<HashMap<[u8; 32], (usize, PaymentRecord, u64)>>,
    capacity: usize,
    /// Per explorer: (height, when the shared tip was read from the explorer, when copied here).
    tips: RefCell<Vec<Option<(u64, u64, u64)>>>,
}

impl LocalMemo {
    pub fn new(capacity: usize) -> LocalMemo {
        LocalMemo { payments: RefCell::new(HashMap::new()), capacity, tips: RefCell::new(Vec::new()) }
    }

    /// This worker's copy of a confirmed payment, if it was made less than `trust_ms` ago.
    pub fn payment(&self, txid: &[u8; 32], now_ms: u64, trust_ms: u64) -> Option<(usize, PaymentRecord)> {
        let map = self.payments.try_borrow().ok()?;
        let (slot, record, copied) = map.get(txid)?;
        (now_ms < copied.saturating_add(trust_ms)).then_some((*slot, *record))
    }

    /// Keeps a confirmed payment; forgets everything when full (simple and bounded).
    pub fn keep_payment(&self, slot: usize, record: &PaymentRecord, now_ms: u64) {
        if !matches!(record.state, PaymentState::Confirmed { .. }) {
            return;
        }
        if let Ok(mut map) = self.payments.try_borrow_mut() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(record.txid, (slot, *record, now_ms));
        }
    }

    /// Drops this worker's copy of a payment whose shared record changed (a reorg).
    pub fn forget_payment(&self, txid: &[u8; 32]) {
        if let Ok(mut map) = self.payments.try_borrow_mut() {
            map.remove(txid);
        }
    }

    /// `explorer`'s shared tip as (height, read-at ms), from this worker's copy when it is recent.
    pub fn tip(&self, tips: &Tips, store: &dyn SharedStore, explorer: u64, now_ms: u64) -> Option<(u64, u64)> {
        let index = usize::try_from(explorer).unwrap_or(usize::MAX);
        if let Ok(memo) = self.tips.try_borrow() {
            if let Some(Some((height, at, copied))) = memo.get(index) {
                if now_ms < copied.saturating_add(TIP_MEMO_MS) {
                    return Some((*height, *at));
                }
            }
        }
        let shared = tips.read(store, explorer);
        if let Ok(mut memo) = self.tips.try_borrow_mut() {
            if index < 64 {
                if memo.len() <= index {
                    memo.resize(index.saturating_add(1), None);
                }
                if let Some(entry) = memo.get_mut(index) {
                    *entry = shared.map(|(height, at)| (height, at, now_ms));
                }
            }
        }
        shared
    }

    /// After this worker wrote `explorer`'s shared tip.
    pub fn forget_tip(&self, explorer: u64) {
        if let Ok(mut memo) = self.tips.try_borrow_mut() {
            if let Some(entry) = memo.get_mut(usize::try_from(explorer).unwrap_or(usize::MAX)) {
                *entry = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esplora::BlockPlace;
    use crate::store::memory::MemoryStore;

    fn confirmed(txid: u8) -> PaymentRecord {
        let state = PaymentState::Confirmed { paid_sats: 1, block: BlockPlace { height: 1, time: 1 } };
        PaymentRecord::new([txid; 32], state, 0, 0)
    }

    #[test]
    fn keeps_only_confirmed_payments_and_stays_bounded() {
        let memo = LocalMemo::new(2);
        memo.keep_payment(0, &PaymentRecord::new([9; 32], PaymentState::NotFound, 5, 0), 0);
        assert!(memo.payment(&[9; 32], 0, u64::MAX).is_none());
        for t in 1..=3 {
            memo.keep_payment(usize::from(t), &confirmed(t), 0);
        }
        assert!(memo.payment(&[3; 32], 0, u64::MAX).is_some());
        assert!(memo.payments.borrow().len() <= 2);
        // A copy is trusted for as long as the caller says.
        memo.keep_payment(4, &confirmed(4), 1_000);
        assert!(memo.payment(&[4; 32], 1_999, 1_000).is_some());
        assert!(memo.payment(&[4; 32], 2_000, 1_000).is_none());
        assert!(memo.payment(&[4; 32], 1_000_000, u64::MAX).is_some());
    }

    #[test]
    fn tip_is_read_at_most_once_a_second() {
        let store = MemoryStore::default();
        let tips = Tips::new("txgate/t/", 2);
        tips.create(&store);
        tips.write(&store, 0, 100, 0).unwrap();
        let memo = LocalMemo::new(4);
        assert_eq!(memo.tip(&tips, &store, 0, 10), Some((100, 0)));
        tips.write(&store, 0, 101, 20).unwrap();
        let reads = store.gets.get();
        assert_eq!(memo.tip(&tips, &store, 0, 500), Some((100, 0)), "copy still recent");
        assert_eq!(store.gets.get(), reads);
        assert_eq!(memo.tip(&tips, &store, 0, 1_010), Some((101, 20)));
        tips.write(&store, 0, 102, 1_011).unwrap();
        memo.forget_tip(0);
        assert_eq!(memo.tip(&tips, &store, 0, 1_012), Some((102, 1_011)), "forgotten copies are read again");
        assert_eq!(memo.tip(&tips, &store, 1, 1_012), None, "each explorer has its own tip");
    }

    #[test]
    fn keeps_payments_up_to_its_capacity_then_starts_again() {
        let memo = LocalMemo::new(2);
        memo.keep_payment(1, &confirmed(1), 0);
        memo.keep_payment(2, &confirmed(2), 0);
        assert_eq!(memo.payment(&[1; 32], 0, u64::MAX), Some((1, confirmed(1))), "room for two");
        assert_eq!(memo.payment(&[2; 32], 0, u64::MAX), Some((2, confirmed(2))));
        memo.keep_payment(3, &confirmed(3), 0);
        assert_eq!(memo.payment(&[3; 32], 0, u64::MAX), Some((3, confirmed(3))));
        assert_eq!(memo.payment(&[1; 32], 0, u64::MAX), None, "full: forgot everything");
    }
}
