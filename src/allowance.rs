//! A per-client allowance in shared data: at most `per_window` uses per `window` for each client,
//! across workers. It limits the unverified passes of `failure_mode: open`, so that a client who
//! can make every explorer fail (by flooding them into rate limits) gets a handful of requests,
//! not the API.
//!
//! Clients live in a fixed table of slots (`<scope>o/<n>`), one per identity hash; clients whose
//! hashes collide share one slot's passes, which can only cost them passes, never add any.

use std::time::Duration;

use crate::record::{put_u64, Reader};
use crate::store::{update, SharedStore};

pub struct Allowance {
    prefix: String,
    slots: u64,
    per_window: u32,
    window_secs: u64,
}

impl Allowance {
    pub fn new(prefix: &str, slots: usize, per_window: u32, window: Duration) -> Allowance {
        Allowance {
            prefix: prefix.to_string(),
            slots: u64::try_from(slots.max(1)).unwrap_or(1),
            per_window,
            window_secs: window.as_secs().max(1),
        }
    }

    fn key(&self, id: u64) -> String {
        format!("{}{}", self.prefix, id.checked_rem(self.slots).unwrap_or(0))
    }

    pub fn create(&self, store: &dyn SharedStore) {
        for slot in 0..self.slots {
            store.create_if_missing(&format!("{}{slot}", self.prefix), &[]);
        }
    }

    /// Uses one of the client's passes; `false` when none is left (or the store refused).
    pub fn take(&self, store: &dyn SharedStore, id: u64, now_secs: u64) -> bool {
        update(store, &self.key(id), |bytes| {
            let mut r = Reader::new(bytes);
            let (start, used) = match (r.u64(), r.u64()) {
                (Some(start), Some(used)) if now_secs < start.saturating_add(self.window_secs) => (start, used),
                _ => (now_secs, 0),
            };
            if used >= u64::from(self.per_window) {
                return (None, false);
            }
            let mut out = Vec::with_capacity(16);
            for v in [start, used.saturating_add(1)] {
                put_u64(&mut out, v);
            }
            (Some(out), true)
        })
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    #[test]
    fn each_client_gets_its_passes_per_window() {
        let store = MemoryStore::default();
        let a = Allowance::new("txgate/t/o/", 64, 2, Duration::from_secs(60));
        a.create(&store);
        assert!(a.take(&store, 7, 100));
        assert!(a.take(&store, 7, 110));
        assert!(!a.take(&store, 7, 120), "third pass in the window");
        assert!(a.take(&store, 8, 120), "another client has its own");
        assert!(a.take(&store, 7, 160), "a new window");
        assert_eq!(store.len(), 64, "bounded");
    }

    #[test]
    fn clients_sharing_a_slot_share_its_passes_so_alternating_gains_nothing() {
        let store = MemoryStore::default();
        let a = Allowance::new("txgate/t/o/", 1, 2, Duration::from_secs(60));
        a.create(&store);
        assert!(a.take(&store, 7, 100));
        assert!(a.take(&store, 8, 101));
        assert!(!a.take(&store, 7, 102));
        assert!(!a.take(&store, 8, 103));
        assert!(a.take(&store, 8, 161), "the window ends for the slot");
    }

    #[test]
    fn a_missing_table_gives_no_passes() {
        let store = MemoryStore::default();
        let a = Allowance::new("txgate/t/o/", 4, 5, Duration::from_secs(60));
        assert!(!a.take(&store, 1, 1));
    }
}
