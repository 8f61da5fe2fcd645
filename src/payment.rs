//! The payment rules: does this transaction pay for this route, now?

use crate::config::Policy;
use crate::esplora::TxFacts;
use crate::rejection::Rejection;

/// What a verified payment tells the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub paid_sats: u64,
    pub confirmations: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Paid(Receipt),
    Refused(Rejection),
    /// The transaction is in a block but the tip height is unknown: an explorer failure.
    TipUnknown,
}

pub fn decide(policy: &Policy, tx: &TxFacts, tip_height: Option<u64>, now_secs: u64) -> Decision {
    let confirmations = match (tx.block, tip_height) {
        (None, _) => 0,
        (Some(_), None) => return Decision::TipUnknown,
        // A tip behind the block (explorers behind a load balancer) still means "in a block".
        (Some(block), Some(tip)) => tip.checked_sub(block.height).map_or(1, |d| d.saturating_add(1)),
    };
    if tx.paid_sats < policy.price_sats {
        return Decision::Refused(Rejection::InsufficientPayment {
            paid_sats: tx.paid_sats,
            required_sats: policy.price_sats,
        });
    }
    if confirmations < u64::from(policy.min_confirmations) {
        return Decision::Refused(Rejection::InsufficientConfirmations {
            confirmations,
            required: policy.min_confirmations,
        });
    }
    if let Some(block) = tx.block {
        let max_age = policy.max_age.as_secs();
        if max_age > 0 && block.time.saturating_add(max_age) < now_secs {
            return Decision::Refused(Rejection::PaymentExpired { block_time: block.time, max_age_secs: max_age });
        }
    }
    Decision::Paid(Receipt { paid_sats: tx.paid_sats, confirmations })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::esplora::BlockPlace;
    use std::time::Duration;

    const NOW: u64 = 1_700_000_000;

    fn policy(price: u64, confs: u32, max_age_secs: u64) -> Policy {
        Policy { price_sats: price, min_confirmations: confs, max_age: Duration::from_secs(max_age_secs) }
    }

    fn tx(paid: u64, block: Option<(u64, u64)>) -> TxFacts {
        TxFacts { paid_sats: paid, block: block.map(|(height, time)| BlockPlace { height, time }) }
    }

    #[test]
    fn enough_payment_with_enough_confirmations_passes() {
        let got = decide(&policy(1000, 2, 3600), &tx(1500, Some((100, NOW - 60))), Some(101), NOW);
        assert_eq!(got, Decision::Paid(Receipt { paid_sats: 1500, confirmations: 2 }));
    }

    #[test]
    fn exact_price_and_exact_confirmations_pass() {
        let got = decide(&policy(1000, 1, 3600), &tx(1000, Some((100, NOW))), Some(100), NOW);
        assert_eq!(got, Decision::Paid(Receipt { paid_sats: 1000, confirmations: 1 }));
    }

    #[test]
    fn underpayment_is_refused_with_amounts() {
        let got = decide(&policy(1000, 1, 0), &tx(999, Some((100, NOW))), Some(100), NOW);
        assert_eq!(got, Decision::Refused(Rejection::InsufficientPayment { paid_sats: 999, required_sats: 1000 }));
    }

    #[test]
    fn mempool_payment_passes_only_with_zero_confirmations_required() {
        assert_eq!(
            decide(&policy(1000, 1, 3600), &tx(1000, None), None, NOW),
            Decision::Refused(Rejection::InsufficientConfirmations { confirmations: 0, required: 1 })
        );
        assert_eq!(
            decide(&policy(1000, 0, 3600), &tx(1000, None), None, NOW),
            Decision::Paid(Receipt { paid_sats: 1000, confirmations: 0 })
        );
    }

    #[test]
    fn too_few_confirmations_are_reported() {
        assert_eq!(
            decide(&policy(1, 6, 0), &tx(1, Some((100, NOW))), Some(102), NOW),
            Decision::Refused(Rejection::InsufficientConfirmations { confirmations: 3, required: 6 })
        );
    }

    #[test]
    fn old_payments_expire_and_zero_max_age_disables_expiry() {
        assert_eq!(
            decide(&policy(1, 1, 3600), &tx(1, Some((100, NOW - 3601))), Some(100), NOW),
            Decision::Refused(Rejection::PaymentExpired { block_time: NOW - 3601, max_age_secs: 3600 })
        );
        assert!(matches!(
            decide(&policy(1, 1, 3600), &tx(1, Some((100, NOW - 3600))), Some(100), NOW),
            Decision::Paid(_)
        ));
        assert!(matches!(decide(&policy(1, 1, 0), &tx(1, Some((100, 0))), Some(100), NOW), Decision::Paid(_)));
    }

    #[test]
    fn confirmed_without_tip_cannot_be_decided() {
        assert_eq!(decide(&policy(1, 0, 0), &tx(1, Some((100, NOW))), None, NOW), Decision::TipUnknown);
    }

    #[test]
    fn tip_behind_block_counts_one_confirmation_and_extremes_do_not_overflow() {
        assert!(matches!(
            decide(&policy(1, 1, 0), &tx(1, Some((500, NOW))), Some(400), NOW),
            Decision::Paid(Receipt { confirmations: 1, .. })
        ));
        assert!(matches!(
            decide(&policy(1, 1, u64::MAX / 1000), &tx(1, Some((0, u64::MAX))), Some(u64::MAX), u64::MAX),
            Decision::Paid(Receipt { confirmations: u64::MAX, .. })
        ));
    }
}
