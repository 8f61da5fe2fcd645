//! What one payment buys: a number of requests, a time window from first use, or both; and
//! optionally only for the first client that uses it.

use std::time::Duration;

use crate::cache::{PaymentRecord, PaymentTable};
use crate::store::{update, SharedStore, UpdateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grant {
    pub requests: Option<u64>,
    pub window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Granted {
        remaining: Option<u64>,
    },
    Exhausted,
    BoundToOther,
    /// The entry left the slot (evicted) between reading and counting: look it up again.
    Gone,
}

impl Grant {
    pub fn is_unlimited(&self) -> bool {
        self.requests.is_none() && self.window.is_none()
    }

    /// Applies one request to the record: `None` means the record is unchanged.
    pub fn apply(&self, record: &PaymentRecord, identity: Option<u64>, now_secs: u64) -> (Option<PaymentRecord>, Use) {
        let mut next = *record;
        if let Some(id) = identity {
            if record.bound_to == 0 {
                next.bound_to = id;
            } else if record.bound_to != id {
                return (None, Use::BoundToOther);
            }
        }
        if let Some(window) = self.window {
            if record.first_used != 0 && now_secs >= record.first_used.saturating_add(window.as_secs()) {
                return (None, Use::Exhausted);
            }
        }
        if record.first_used == 0 {
            next.first_used = now_secs.max(1);
        }
        let remaining = match self.requests {
            Some(limit) if record.used >= limit => return (None, Use::Exhausted),
            Some(limit) => {
                next.used = record.used.saturating_add(1);
                Some(limit.saturating_sub(next.used))
            }
            None => None,
        };
        // An unlimited grant keeps no count, so the warm path then writes nothing after first use.
        if self.requests.is_none() {
            next.used = record.used;
        }
        let changed = next != *record;
        (changed.then_some(next), Use::Granted { remaining })
    }

    /// Counts one request against the cached payment in `slot`, atomically across workers.
    pub fn consume(
        &self,
        store: &dyn SharedStore,
        table: &PaymentTable,
        slot: usize,
        txid: &[u8; 32],
        identity: Option<u64>,
        now_secs: u64,
    ) -> Result<Use, UpdateError> {
        update(store, &table.key(slot), |bytes| match PaymentRecord::decode(bytes) {
            Some(record) if record.txid == *txid => {
                let (next, result) = self.apply(&record, identity, now_secs);
                (next.map(|r| r.encode()), result)
            }
            _ => (None, Use::Gone),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::PaymentState;
    use crate::store::memory::MemoryStore;

    const T: [u8; 32] = [7; 32];

    fn setup() -> (MemoryStore, PaymentTable, usize) {
        let store = MemoryStore::default();
        let table = PaymentTable::new("txgate/test/", "p", 4, Some(60));
        table.create(&store);
        let state = PaymentState::Unconfirmed { paid_sats: 1, seen_at_tip: 0 };
        let slot = table.put(&store, &T, state, 0, 0, 0).unwrap();
        (store, table, slot)
    }

    #[test]
    fn request_grant_runs_out_exactly() {
        let (store, table, slot) = setup();
        let grant = Grant { requests: Some(3), window: None };
        let uses: Vec<Use> = (0..5).map(|_| grant.consume(&store, &table, slot, &T, None, 100).unwrap()).collect();
        assert_eq!(
            uses,
            vec![
                Use::Granted { remaining: Some(2) },
                Use::Granted { remaining: Some(1) },
                Use::Granted { remaining: Some(0) },
                Use::Exhausted,
                Use::Exhausted
            ]
        );
    }

    #[test]
    fn request_grant_is_exact_under_concurrent_writers() {
        let (store, table, slot) = setup();
        let grant = Grant { requests: Some(10), window: None };
        let mut granted = 0;
        for i in 0..20 {
            store.interfering_writes.set(i % 4);
            if let Ok(Use::Granted { .. }) = grant.consume(&store, &table, slot, &T, None, 1) {
                granted += 1;
            }
        }
        assert_eq!(granted, 10);
    }

    #[test]
    fn window_starts_at_first_use_and_closes() {
        let (store, table, slot) = setup();
        let grant = Grant { requests: None, window: Some(Duration::from_secs(60)) };
        assert_eq!(grant.consume(&store, &table, slot, &T, None, 1000).unwrap(), Use::Granted { remaining: None });
        assert_eq!(grant.consume(&store, &table, slot, &T, None, 1059).unwrap(), Use::Granted { remaining: None });
        assert_eq!(grant.consume(&store, &table, slot, &T, None, 1060).unwrap(), Use::Exhausted);
    }

    #[test]
    fn unlimited_grant_writes_nothing_after_first_use() {
        let (store, table, slot) = setup();
        let grant = Grant::default();
        grant.consume(&store, &table, slot, &T, None, 5).unwrap();
        let before = store.get(&table.key(slot)).unwrap();
        grant.consume(&store, &table, slot, &T, None, 6).unwrap();
        assert_eq!(store.get(&table.key(slot)).unwrap(), before, "no write, same version");
    }

    #[test]
    fn binding_holds_for_the_first_identity() {
        let (store, table, slot) = setup();
        let grant = Grant::default();
        assert!(matches!(grant.consume(&store, &table, slot, &T, Some(11), 1).unwrap(), Use::Granted { .. }));
        assert!(matches!(grant.consume(&store, &table, slot, &T, Some(11), 2).unwrap(), Use::Granted { .. }));
        assert_eq!(grant.consume(&store, &table, slot, &T, Some(12), 3).unwrap(), Use::BoundToOther);
    }

    #[test]
    fn an_evicted_entry_is_reported_gone() {
        let (store, table, slot) = setup();
        assert_eq!(Grant::default().consume(&store, &table, slot, &[8; 32], None, 1).unwrap(), Use::Gone);
    }
}
