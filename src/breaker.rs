//! Per-explorer circuit breakers (per worker): an explorer that keeps failing is skipped for a
//! cool-down, then given one trial request again.

use crate::config::BreakerConfig;
use crate::duration::millis;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Breaker {
    failures: u32,
    open_until_ms: u64,
}

impl Breaker {
    pub fn is_open(&self, now_ms: u64) -> bool {
        now_ms < self.open_until_ms
    }

    pub fn success(&mut self) {
        *self = Breaker::default();
    }

    /// Returns true when this failure opened the circuit.
    pub fn failure(&mut self, config: &BreakerConfig, now_ms: u64) -> bool {
        self.failures = self.failures.saturating_add(1);
        if self.failures >= config.failures {
            self.failures = 0;
            self.open_until_ms = now_ms.saturating_add(millis(config.cool_down));
            return true;
        }
        false
    }
}

/// The first explorer at or after `from` whose circuit is closed (or whose cool-down is over).
pub fn next_explorer(breakers: &[Breaker], from: usize, now_ms: u64) -> Option<usize> {
    breakers.iter().enumerate().skip(from).find(|(_, b)| !b.is_open(now_ms)).map(|(i, _)| i)
}

/// Where a lookup starts: the first closed circuit, or, when every circuit is open, the explorer
/// whose cool-down ends first, so that a full outage is probed instead of failing for a whole
/// cool-down after the explorers come back.
pub fn first_explorer(breakers: &[Breaker], now_ms: u64) -> Option<usize> {
    next_explorer(breakers, 0, now_ms)
        .or_else(|| breakers.iter().enumerate().min_by_key(|(_, b)| b.open_until_ms).map(|(i, _)| i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CONFIG: BreakerConfig = BreakerConfig { failures: 2, cool_down: Duration::from_secs(10) };

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_cool_down() {
        let mut b = Breaker::default();
        assert!(!b.failure(&CONFIG, 0));
        assert!(b.failure(&CONFIG, 1));
        assert!(b.is_open(5_000));
        assert!(!b.is_open(10_001));
    }

    #[test]
    fn a_success_resets_the_count() {
        let mut b = Breaker::default();
        b.failure(&CONFIG, 0);
        b.success();
        assert!(!b.failure(&CONFIG, 1));
        assert!(!b.is_open(2));
    }

    #[test]
    fn next_explorer_skips_open_circuits() {
        let mut breakers = [Breaker::default(); 3];
        breakers[0].failure(&CONFIG, 0);
        breakers[0].failure(&CONFIG, 0);
        assert_eq!(next_explorer(&breakers, 0, 1), Some(1));
        assert_eq!(next_explorer(&breakers, 2, 1), Some(2));
        assert_eq!(next_explorer(&breakers, 3, 1), None);
        assert_eq!(next_explorer(&breakers, 0, 20_000), Some(0));
    }

    #[test]
    fn when_every_circuit_is_open_the_soonest_to_close_is_probed() {
        let mut breakers = [Breaker::default(); 2];
        for (i, b) in breakers.iter_mut().enumerate() {
            b.failure(&CONFIG, 100 - i as u64);
            b.failure(&CONFIG, 100 - i as u64);
        }
        assert_eq!(next_explorer(&breakers, 0, 200), None);
        assert_eq!(first_explorer(&breakers, 200), Some(1));
        assert_eq!(first_explorer(&[], 0), None);
    }
}
