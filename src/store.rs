//! Proxy-Wasm shared data as the core sees it: a key-value map shared by every worker of one
//! `vm_id`, with compare-and-swap versions, no delete and no expiry (ABI 0.2.1).

use std::fmt;

/// Attempts before giving up on a contended key; workers can race on a slot, but a burst of
/// writers must not keep a request spinning.
pub const MAX_CAS_RETRIES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Another worker wrote the key between our read and our write.
    CasMismatch,
    /// The host refused the call.
    Host,
}

pub trait SharedStore {
    /// The value and its version, or `None` if the key was never written.
    fn get(&self, key: &str) -> Option<(Vec<u8>, u32)>;
    /// Writes `value` if the key is still at version `cas`.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
    /// Creates the key if it does not exist yet (used before traffic, so that every later write
    /// is a real compare-and-swap: the host inserts a missing key whatever `cas` says).
    fn create_if_missing(&self, key: &str, value: &[u8]) {
        if self.get(key).is_none() {
            let _ = self.set(key, value, 0);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    /// The key does not exist (it should have been created at configuration time).
    Missing,
    /// Still contended after `MAX_CAS_RETRIES` attempts, or the host refused.
    Contended,
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpdateError::Missing => f.write_str("shared-data key missing"),
            UpdateError::Contended => f.write_str("shared-data key still contended after retries"),
        }
    }
}

/// Read-modify-write with bounded retries. `change` sees the current value and returns the new
/// value and a result, or `None` with a result to leave the key untouched.
pub fn update<S: SharedStore + ?Sized, T>(
    store: &S,
    key: &str,
    mut change: impl FnMut(&[u8]) -> (Option<Vec<u8>>, T),
) -> Result<T, UpdateError> {
    for _ in 0..MAX_CAS_RETRIES {
        let (current, cas) = store.get(key).ok_or(UpdateError::Missing)?;
        let (new_value, result) = change(&current);
        let Some(new_value) = new_value else { return Ok(result) };
        match store.set(key, &new_value, cas) {
            Ok(()) => return Ok(result),
            Err(StoreError::CasMismatch) => continue,
            Err(StoreError::Host) => return Err(UpdateError::Contended),
        }
    }
    Err(UpdateError::Contended)
}

/// An in-process store with the host's semantics, for native tests.
#[cfg(test)]
pub mod memory {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct MemoryStore {
        map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
        next_cas: Cell<u32>,
        /// Simulates other workers: before each `set`, this many foreign writes bump the version.
        pub interfering_writes: Cell<u32>,
        /// Reads so far, to check what the warm path costs.
        pub gets: Cell<u32>,
    }

    impl MemoryStore {
        pub fn len(&self) -> usize {
            self.map.borrow().len()
        }

        pub fn bytes(&self) -> usize {
            self.map.borrow().iter().map(|(k, (v, _))| k.len() + v.len()).sum()
        }
    }

    impl SharedStore for MemoryStore {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            self.gets.set(self.gets.get() + 1);
            self.map.borrow().get(key).cloned()
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
            let mut map = self.map.borrow_mut();
            if self.interfering_writes.get() > 0 {
                self.interfering_writes.set(self.interfering_writes.get() - 1);
                if let Some(entry) = map.get_mut(key) {
                    self.next_cas.set(self.next_cas.get() + 1);
                    entry.1 = self.next_cas.get();
                }
            }
            self.next_cas.set(self.next_cas.get() + 1);
            match map.get(key) {
                Some((_, current)) if cas != 0 && *current != cas => Err(StoreError::CasMismatch),
                _ => {
                    map.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
                    Ok(())
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::memory::MemoryStore;
    use super::*;

    fn increment(store: &MemoryStore) -> Result<u8, UpdateError> {
        update(store, "k", |v| {
            let n = v.first().copied().unwrap_or(0) + 1;
            (Some(vec![n]), n)
        })
    }

    #[test]
    fn update_retries_after_a_concurrent_write() {
        let store = MemoryStore::default();
        store.create_if_missing("k", &[]);
        store.interfering_writes.set(3);
        assert_eq!(increment(&store), Ok(1));
        assert_eq!(increment(&store), Ok(2));
    }

    #[test]
    fn update_gives_up_when_always_contended() {
        let store = MemoryStore::default();
        store.create_if_missing("k", &[]);
        store.interfering_writes.set(u32::MAX);
        assert_eq!(increment(&store), Err(UpdateError::Contended));
    }

    #[test]
    fn update_of_a_missing_key_is_refused_not_inserted() {
        let store = MemoryStore::default();
        assert_eq!(increment(&store), Err(UpdateError::Missing));
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn create_if_missing_keeps_existing_values() {
        let store = MemoryStore::default();
        store.create_if_missing("k", &[7]);
        store.create_if_missing("k", &[]);
        assert_eq!(store.get("k").unwrap().0, vec![7]);
    }
}
