//! The penalty box: a client that keeps sending bogus or unpaid txids is refused for a while
//! without any explorer call (fail2ban at layer 7).
//!
//! Clients live in a fixed table of shared-data slots (`txgate/c/<n>`), one slot per identity
//! hash; a colliding newcomer replaces the older client, so memory is bounded.
//!
//! Beside them, the ban horizon (`txgate/c/horizon`): the latest `banned_until` of any ban this
//! Envoy started. While it is past, no client is banned, and a request whose answer cannot strike
//! needs neither the client's address nor its record (see `Gate::may_skip_client`).

use std::time::Duration;

use crate::identity::IdentitySource;
use crate::record::{put_u64, Reader};
use crate::store::{update, SharedStore, UpdateError};

const VERSION: u8 = 2;
pub const CLIENT_RECORD_LEN: usize = 1 + 6 * 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PenaltyConfig {
    pub identity: IdentitySource,
    pub max_strikes: u32,
    /// When the identity is a header or certificate (which a client may rotate), its source
    /// address is struck too and banned after `max_strikes × source_factor` strikes (0: never).
    /// Higher than `max_strikes` because many honest clients may share one address (NAT, a
    /// gateway in front).
    pub source_factor: u32,
    pub find_time: Duration,
    pub ban_time: Duration,
    pub slots: usize,
    /// `<clients scope>c/`, set once the configuration's scope is known.
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientRecord {
    pub id: u64,
    pub strikes: u64,
    pub window_start: u64,
    pub banned_until: u64,
    pub last_strike: u64,
    /// Unix seconds when this client was first seen, 0 if never recorded.
    pub first_seen: u64,
}

impl ClientRecord {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CLIENT_RECORD_LEN);
        out.push(VERSION);
        for v in [self.id, self.strikes, self.window_start, self.banned_until, self.last_strike, self.first_seen] {
            put_u64(&mut out, v);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Option<ClientRecord> {
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        Some(ClientRecord {
            id: r.u64()?,
            strikes: r.u64()?,
            window_start: r.u64()?,
            banned_until: r.u64()?,
            last_strike: r.u64()?,
            first_seen: r.u64()?,
        })
    }
}

impl PenaltyConfig {
    pub fn key(&self, id: u64) -> String {
        let slots = u64::try_from(self.slots.max(1)).unwrap_or(1);
        format!("{}{}", self.prefix, id.checked_rem(slots).unwrap_or(0))
    }

    pub fn create(&self, store: &dyn SharedStore) {
        for slot in 0..self.slots {
            store.create_if_missing(&format!("{}{slot}", self.prefix), &[]);
        }
        store.create_if_missing(&self.horizon_key(), &[]);
    }

    fn horizon_key(&self) -> String {
        format!("{}horizon", self.prefix)
    }

    /// Whether some client may be banned now. A horizon that cannot be read says yes: then
    /// every request reads its client's record, as it would without the horizon.
    pub fn bans_active(&self, store: &dyn SharedStore, now_secs: u64) -> bool {
        match store.get(&self.horizon_key()) {
            Some((bytes, _)) if bytes.is_empty() => false,
            Some((bytes, _)) => Reader::new(&bytes).u64().is_none_or(|until| now_secs < until),
            None => true,
        }
    }

    /// Moves the horizon out to `until` (never in).
    fn extend_horizon(&self, store: &dyn SharedStore, until: u64) -> Result<(), UpdateError> {
        update(store, &self.horizon_key(), |bytes| {
            let current = if bytes.is_empty() { Some(0) } else { Reader::new(bytes).u64() };
            match current {
                Some(current) if current >= until => (None, ()),
                _ => {
                    let mut out = Vec::with_capacity(8);
                    put_u64(&mut out, until);
                    (Some(out), ())
                }
            }
        })
    }

    /// Records when a client was first seen, once (for `no_strikes_for`); a client that lost its
    /// slot to another starts again, which only ever delays a discount.
    pub fn touch(&self, store: &dyn SharedStore, record: &ClientRecord, now_secs: u64) {
        if record.first_seen != 0 {
            return;
        }
        let id = record.id;
        let _ = update(store, &self.key(id), |bytes| {
            let mut r =
                ClientRecord::decode(bytes).filter(|r| r.id == id).unwrap_or(ClientRecord { id, ..Default::default() });
            if r.first_seen != 0 {
                return (None, ());
            }
            r.first_seen = now_secs.max(1);
            (Some(r.encode()), ())
        });
    }

    /// What is known of this client; a fresh record if its slot holds someone else.
    pub fn client(&self, store: &dyn SharedStore, id: u64) -> ClientRecord {
        store
            .get(&self.key(id))
            .and_then(|(bytes, _)| ClientRecord::decode(&bytes))
            .filter(|r| r.id == id)
            .unwrap_or(ClientRecord { id, ..ClientRecord::default() })
    }

    /// Whether a client's strikes are older than `find_time`: the next strike starts afresh.
    fn window_over(&self, record: &ClientRecord, now_secs: u64) -> bool {
        now_secs >= record.window_start.saturating_add(self.find_time.as_secs())
    }

    /// Seconds left on a ban, if the client is banned now.
    pub fn banned_for(&self, record: &ClientRecord, now_secs: u64) -> Option<u64> {
        (record.banned_until > now_secs).then(|| record.banned_until.saturating_sub(now_secs))
    }

    /// Strikes that ban an identity, or a source address struck alongside another identity.
    pub fn limit(&self, as_source: bool) -> u32 {
        if as_source {
            self.max_strikes.saturating_mul(self.source_factor)
        } else {
            self.max_strikes
        }
    }

    /// Records one strike; returns the ban length in seconds if this strike started a ban.
    pub fn strike(&self, store: &dyn SharedStore, id: u64, now_secs: u64) -> Result<Option<u64>, UpdateError> {
        self.strike_up_to(store, id, self.max_strikes, now_secs)
    }

    /// `strike` with another number of strikes to a ban (`limit`); 0 records nothing.
    pub fn strike_up_to(
        &self,
        store: &dyn SharedStore,
        id: u64,
        max_strikes: u32,
        now_secs: u64,
    ) -> Result<Option<u64>, UpdateError> {
        if max_strikes == 0 {
            return Ok(None);
        }
        // The horizon goes out first: a ban it does not cover would go unchecked on the
        // requests that skip the client's record. At worst it covers a strike that banned no one.
        let until = now_secs.saturating_add(self.ban_time.as_secs());
        let known = self.client(store, id);
        let live = if self.window_over(&known, now_secs) { 0 } else { known.strikes };
        let extended = live.saturating_add(1) >= u64::from(max_strikes);
        if extended {
            self.extend_horizon(store, until)?;
        }
        let banned = update(store, &self.key(id), |bytes| {
            let mut r = match ClientRecord::decode(bytes) {
                Some(r) if r.id == id => r,
                // Another client's ban holds its slot: a newcomer never lifts it by striking.
                Some(r) if r.banned_until > now_secs => return (None, None),
                _ => ClientRecord { id, ..Default::default() },
            };
            if self.window_over(&r, now_secs) {
                r.window_start = now_secs;
                r.strikes = 0;
            }
            r.strikes = r.strikes.saturating_add(1);
            r.last_strike = now_secs;
            if r.first_seen == 0 {
                r.first_seen = now_secs.max(1);
            }
            let mut banned = None;
            if r.strikes >= u64::from(max_strikes) {
                r.banned_until = now_secs.saturating_add(self.ban_time.as_secs());
                r.strikes = 0;
                r.window_start = now_secs;
                banned = Some(self.ban_time.as_secs());
            }
            (Some(r.encode()), banned)
        })?;
        // Another worker's strike came in between: the ban is recorded, and covered now.
        if banned.is_some() && !extended {
            self.extend_horizon(store, until)?;
        }
        Ok(banned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn config() -> PenaltyConfig {
        PenaltyConfig {
            identity: IdentitySource::SourceAddress,
            max_strikes: 3,
            source_factor: 4,
            find_time: Duration::from_secs(60),
            ban_time: Duration::from_secs(600),
            slots: 8,
            prefix: "txgate/test/c/".to_string(),
        }
    }

    #[test]
    fn strikes_within_find_time_ban_then_the_ban_lifts() {
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        assert_eq!(c.strike(&store, 42, 100).unwrap(), None);
        assert_eq!(c.strike(&store, 42, 110).unwrap(), None);
        assert_eq!(c.strike(&store, 42, 120).unwrap(), Some(600));
        let r = c.client(&store, 42);
        assert_eq!(c.banned_for(&r, 121), Some(599));
        assert_eq!(c.banned_for(&r, 720), None);
        assert_eq!(c.banned_for(&c.client(&store, 43), 121), None, "other clients are not banned");
    }

    #[test]
    fn a_colliding_newcomer_never_lifts_a_ban() {
        let store = MemoryStore::default();
        let mut c = config();
        c.slots = 1;
        c.create(&store);
        for t in 0..3 {
            c.strike(&store, 42, 100 + t).unwrap();
        }
        assert!(c.banned_for(&c.client(&store, 42), 103).is_some());
        assert_eq!(c.strike(&store, 43, 104).unwrap(), None);
        assert!(c.banned_for(&c.client(&store, 42), 105).is_some(), "still banned");
        assert_eq!(c.client(&store, 43).strikes, 0, "the newcomer's strike could not be kept");
        // The ban started at 102 and lasts 600 s: it is over at 702, to the second.
        c.strike(&store, 43, 701).unwrap();
        assert_eq!(c.client(&store, 43).strikes, 0, "a second before its end");
        c.strike(&store, 43, 702).unwrap();
        assert_eq!(c.client(&store, 43).strikes, 1, "once the ban is over the slot is free");
    }

    #[test]
    fn a_client_is_first_seen_at_its_first_strike_and_stays_so() {
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        c.strike(&store, 42, 100).unwrap();
        c.strike(&store, 42, 130).unwrap();
        let r = c.client(&store, 42);
        assert_eq!((r.first_seen, r.last_strike, r.strikes), (100, 130, 2));
        // A visit recorded before any strike is kept by the strikes that follow.
        c.touch(&store, &c.client(&store, 7), 50);
        c.strike(&store, 7, 60).unwrap();
        assert_eq!(c.client(&store, 7).first_seen, 50);
    }

    #[test]
    fn strikes_spread_wider_than_find_time_do_not_ban() {
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        for t in [0, 61, 122, 183, 244] {
            assert_eq!(c.strike(&store, 42, t).unwrap(), None);
        }
        assert_eq!(c.client(&store, 42).last_strike, 244);
    }

    #[test]
    fn clients_sharing_a_slot_replace_each_other_and_memory_is_bounded() {
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        for id in 1..1000u64 {
            c.strike(&store, id, 1).unwrap();
        }
        assert_eq!(store.len(), 8 + 1, "the slots and the ban horizon");
        assert_eq!(c.client(&store, 1).strikes, 0, "replaced by a later client in its slot");
        // 993 was the last to strike in client 1's slot (993 % 8 == 1): its strike is what is kept.
        let last = c.client(&store, 993);
        assert_eq!((last.id, last.strikes, last.last_strike), (993, 1, 1));
    }

    #[test]
    fn the_ban_horizon_covers_every_ban_and_passes_when_they_end() {
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        assert!(!c.bans_active(&store, 100), "no ban yet");
        // Scoped like the slots (one penalty box per deployment), beside them, not one of them.
        assert_eq!(c.horizon_key(), "txgate/test/c/horizon");
        c.strike(&store, 42, 100).unwrap();
        c.strike(&store, 42, 110).unwrap();
        assert!(!c.bans_active(&store, 110), "strikes short of a ban leave it");
        assert_eq!(c.strike(&store, 42, 120).unwrap(), Some(600));
        assert!(c.bans_active(&store, 121) && c.bans_active(&store, 719));
        assert!(!c.bans_active(&store, 720), "the ban ended at 720");
        // A later, shorter-lived ban never pulls it in; a longer one pushes it out.
        let short = PenaltyConfig { ban_time: Duration::from_secs(10), ..config() };
        for t in [130, 131, 132] {
            short.strike(&store, 7, t).unwrap();
        }
        assert!(c.bans_active(&store, 700));
        for t in [800, 801, 802] {
            c.strike(&store, 9, t).unwrap();
        }
        assert!(c.bans_active(&store, 1401) && !c.bans_active(&store, 1402));
        // Strikes of an old window do not count towards the next ban.
        c.strike(&store, 5, 2000).unwrap();
        c.strike(&store, 5, 2001).unwrap();
        assert_eq!(c.strike(&store, 5, 2100).unwrap(), None);
        assert!(!c.bans_active(&store, 2100), "a first strike in a new window bans no one");
    }

    #[test]
    fn a_ban_horizon_that_cannot_be_read_counts_as_a_ban() {
        let store = MemoryStore::default();
        let c = config();
        assert!(c.bans_active(&store, 100), "missing");
        c.create(&store);
        store.set(&c.horizon_key(), &[1, 2], 0).unwrap();
        assert!(c.bans_active(&store, 100), "unreadable");
    }

    /// A store whose first read of one key returns an older value: another worker's write
    /// landed between that read and the next.
    struct StaleOnce<'a> {
        inner: &'a MemoryStore,
        stale: std::cell::RefCell<Option<(String, Vec<u8>)>>,
    }

    impl SharedStore for StaleOnce<'_> {
        fn get(&self, key: &str) -> Option<(Vec<u8>, u32)> {
            let current = self.inner.get(key)?;
            match self.stale.borrow_mut().take_if(|(k, _)| k == key) {
                Some((_, old)) => Some((old, current.1)),
                None => Some(current),
            }
        }

        fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), crate::store::StoreError> {
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn a_ban_another_worker_brought_closer_meanwhile_is_covered() {
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        c.strike(&store, 42, 100).unwrap();
        let one = store.get(&c.key(42)).unwrap().0;
        c.strike(&store, 42, 101).unwrap();
        // This strike first reads one strike (no ban in sight), then finds two and bans.
        let racing = StaleOnce { inner: &store, stale: std::cell::RefCell::new(Some((c.key(42), one))) };
        assert_eq!(c.strike(&racing, 42, 102).unwrap(), Some(600));
        assert!(c.bans_active(&store, 103), "the ban is covered after the fact");
    }

    #[test]
    fn client_records_are_49_bytes_and_round_trip() {
        let r =
            ClientRecord { id: 1, strikes: 2, window_start: 3, banned_until: 4, last_strike: u64::MAX, first_seen: 5 };
        assert_eq!(CLIENT_RECORD_LEN, 49, "the size the README documents");
        assert_eq!(r.encode().len(), CLIENT_RECORD_LEN);
        assert_eq!(ClientRecord::decode(&r.encode()), Some(r));
        // A client never seen gets a fresh record of its own.
        let store = MemoryStore::default();
        let c = config();
        c.create(&store);
        assert_eq!(c.client(&store, 77), ClientRecord { id: 77, ..ClientRecord::default() });
    }
}
