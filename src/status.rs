//! The status endpoint's answer (`GET /.well-known/txgate/status?txid=…&path=…`): the gate's
//! decision for that txid and route, as a state a page or script can follow. Nothing is used,
//! bound or struck to answer it (see `Gate::status`).

use crate::config::Config;
use crate::gate::PaymentStatus;
use crate::json_out::Obj;
use crate::rejection::{Rejection, CONFIRMATIONS_RETRY_AFTER_SECS, TX_NOT_FOUND_RETRY_AFTER_SECS};

/// The JSON body, or `None` when the outcome is not about the payment (a ban, an explorer that
/// did not answer, ...): that is answered as the rejection it is.
pub fn body(status: &PaymentStatus, config: &Config) -> Option<String> {
    let mut confirmations = None;
    let mut paid_sats = None;
    let mut retry_after = None;
    let (state, rejection) = match &status.outcome {
        Ok(receipt) => {
            confirmations = Some(receipt.confirmations);
            paid_sats = Some(receipt.paid_sats);
            ("paid", None)
        }
        Err(rejection) => {
            let state = match rejection {
                Rejection::TxNotFound => {
                    retry_after = Some(TX_NOT_FOUND_RETRY_AFTER_SECS);
                    "not_found"
                }
                Rejection::InsufficientConfirmations { confirmations: c, .. } => {
                    confirmations = Some(*c);
                    retry_after = Some(CONFIRMATIONS_RETRY_AFTER_SECS);
                    "confirming"
                }
                Rejection::InsufficientPayment { paid_sats: p, .. } => {
                    paid_sats = Some(*p);
                    "insufficient"
                }
                Rejection::PaymentExpired { .. } => "expired",
                Rejection::PaymentReorged => "reorged",
                Rejection::PaymentExhausted { .. } => "exhausted",
                Rejection::BoundToOtherClient => "bound",
                _ => return None,
            };
            (state, Some(rejection))
        }
    };
    let message = match rejection {
        None => "Paid: you can go ahead.".to_string(),
        Some(Rejection::InsufficientConfirmations { confirmations, required }) => {
            format!("Payment seen: {confirmations} of {required} confirmations so far; waiting for the next block.")
        }
        Some(r) => r.message(config),
    };
    let body = Obj::new()
        .str("txid", status.txid.as_str())
        .str("state", state)
        .opt_str("error", rejection.map(Rejection::code))
        .str("message", &message)
        .opt_num("confirmations", confirmations)
        .num("required", u64::from(status.policy.min_confirmations))
        .opt_num("paid_sats", paid_sats)
        .num("required_sats", status.policy.price_sats)
        .opt_num("retry_after_secs", retry_after)
        .end();
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use crate::payment::Receipt;
    use crate::txid::Txid;
    use serde_json::Value;
    use std::time::Duration;

    fn config() -> Config {
        Config::regtest_example()
    }

    fn of(outcome: Result<Receipt, Rejection>) -> Option<Value> {
        let status = PaymentStatus {
            txid: Txid::parse("ab".repeat(32).as_bytes()).unwrap(),
            policy: Policy { price_sats: 1000, min_confirmations: 2, max_age: Duration::from_secs(60) },
            outcome,
        };
        body(&status, &config()).map(|b| serde_json::from_str(&b).unwrap())
    }

    #[test]
    fn each_payment_state_is_named_with_its_figures() {
        let paid = of(Ok(Receipt { paid_sats: 1200, confirmations: 3 })).unwrap();
        assert_eq!((paid["state"].as_str(), paid["error"].is_null()), (Some("paid"), true));
        assert_eq!((paid["paid_sats"].as_u64(), paid["confirmations"].as_u64()), (Some(1200), Some(3)));
        let waiting = of(Err(Rejection::InsufficientConfirmations { confirmations: 1, required: 2 })).unwrap();
        assert_eq!(waiting["state"], "confirming");
        assert_eq!(waiting["error"], "insufficient_confirmations");
        assert_eq!((waiting["confirmations"].as_u64(), waiting["required"].as_u64()), (Some(1), Some(2)));
        assert_eq!(waiting["retry_after_secs"], 60);
        assert!(waiting["message"].as_str().unwrap().contains("1 of 2"));
        let unknown = of(Err(Rejection::TxNotFound)).unwrap();
        assert_eq!((unknown["state"].as_str(), unknown["retry_after_secs"].as_u64()), (Some("not_found"), Some(10)));
        let short = of(Err(Rejection::InsufficientPayment { paid_sats: 5, required_sats: 1000 })).unwrap();
        assert_eq!((short["state"].as_str(), short["paid_sats"].as_u64()), (Some("insufficient"), Some(5)));
        assert_eq!(short["required_sats"], 1000);
        for (r, state) in [
            (Rejection::PaymentExpired { block_time: 1, max_age_secs: 1 }, "expired"),
            (Rejection::PaymentReorged, "reorged"),
            (Rejection::BoundToOtherClient, "bound"),
            (Rejection::PaymentExhausted { requests: Some(1), window_secs: None }, "exhausted"),
        ] {
            assert_eq!(of(Err(r)).unwrap()["state"], state);
        }
    }

    #[test]
    fn answers_that_are_not_about_the_payment_stay_rejections() {
        for r in [
            Rejection::ExplorerUnavailable,
            Rejection::ClientBanned { retry_after_secs: 5 },
            Rejection::VerificationBusy,
        ] {
            assert!(of(Err(r)).is_none());
        }
    }
}
