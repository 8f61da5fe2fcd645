//! Per-worker copies of what does not change once known, so that a warm request makes no
//! shared-data read: confirmed payments (only when nothing about them is counted or bound, so
//! the shared record is the same forever) and the tip height for up to a second.
//!
//! Every shared-data read is two crossings of the VM boundary (the call and the host allocating
//! the copy in wasm memory); on the warm path those crossings are most of the filter's cost.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use crate::cache::{read_tip, PaymentRecord, PaymentState};
use crate::store::SharedStore;

/// How long a worker trusts its copy of the shared tip before reading it again.
const TIP_MEMO_MS: u64 = 1_000;

pub struct LocalMemo {
    payments: RefCell<HashMap<[u8; 32], (usize, PaymentRecord)>>,
    capacity: usize,
    /// (height, when the shared tip was read from the explorer, when this worker copied it).
    tip: Cell<Option<(u64, u64, u64)>>,
}

impl LocalMemo {
    pub fn new(capacity: usize) -> LocalMemo {
        LocalMemo { payments: RefCell::new(HashMap::new()), capacity, tip: Cell::new(None) }
    }

    pub fn payment(&self, txid: &[u8; 32]) -> Option<(usize, PaymentRecord)> {
        self.payments.try_borrow().ok()?.get(txid).copied()
    }

    /// Keeps a confirmed payment; forgets everything when full (simple and bounded).
    pub fn keep_payment(&self, slot: usize, record: &PaymentRecord) {
        if !matches!(record.state, PaymentState::Confirmed { .. }) {
            return;
        }
        if let Ok(mut map) = self.payments.try_borrow_mut() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(record.txid, (slot, *record));
        }
    }

    /// The shared tip as (height, read-at ms), from this worker's copy when it is recent.
    pub fn tip(&self, store: &dyn SharedStore, now_ms: u64) -> Option<(u64, u64)> {
        if let Some((height, at, copied)) = self.tip.get() {
            if now_ms < copied.saturating_add(TIP_MEMO_MS) {
                return Some((height, at));
            }
        }
        let shared = read_tip(store);
        self.tip.set(shared.map(|(height, at)| (height, at, now_ms)));
        shared
    }

    /// After this worker wrote the shared tip.
    pub fn forget_tip(&self) {
        self.tip.set(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{write_tip, PaymentTable};
    use crate::esplora::BlockPlace;
    use crate::store::memory::MemoryStore;

    fn confirmed(txid: u8) -> PaymentRecord {
        let state = PaymentState::Confirmed { paid_sats: 1, block: BlockPlace { height: 1, time: 1 } };
        PaymentRecord::new([txid; 32], state, 0, 0)
    }

    #[test]
    fn keeps_only_confirmed_payments_and_stays_bounded() {
        let memo = LocalMemo::new(2);
        memo.keep_payment(0, &PaymentRecord::new([9; 32], PaymentState::NotFound, 5, 0));
        assert!(memo.payment(&[9; 32]).is_none());
        for t in 1..=3 {
            memo.keep_payment(usize::from(t), &confirmed(t));
        }
        assert!(memo.payment(&[3; 32]).is_some());
        assert!(memo.payments.borrow().len() <= 2);
    }

    #[test]
    fn tip_is_read_at_most_once_a_second() {
        let store = MemoryStore::default();
        PaymentTable::new(1).create(&store);
        write_tip(&store, 100, 0).unwrap();
        let memo = LocalMemo::new(4);
        assert_eq!(memo.tip(&store, 10), Some((100, 0)));
        write_tip(&store, 101, 20).unwrap();
        let reads = store.gets.get();
        assert_eq!(memo.tip(&store, 500), Some((100, 0)), "copy still recent");
        assert_eq!(store.gets.get(), reads);
        assert_eq!(memo.tip(&store, 1_010), Some((101, 20)));
        // This worker wrote a newer tip: its copy must not hide it for the rest of the second.
        write_tip(&store, 102, 1_011).unwrap();
        memo.forget_tip();
        assert_eq!(memo.tip(&store, 1_011), Some((102, 1_011)));
    }

    #[test]
    fn keeps_payments_up_to_its_capacity_then_starts_again() {
        let memo = LocalMemo::new(2);
        memo.keep_payment(1, &confirmed(1));
        memo.keep_payment(2, &confirmed(2));
        assert_eq!(memo.payment(&[1; 32]), Some((1, confirmed(1))), "room for two");
        assert_eq!(memo.payment(&[2; 32]), Some((2, confirmed(2))));
        memo.keep_payment(3, &confirmed(3));
        assert_eq!(memo.payment(&[3; 32]), Some((3, confirmed(3))));
        assert_eq!(memo.payment(&[1; 32]), None, "full: forgot everything");
    }
}
