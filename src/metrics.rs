//! Counter names. Envoy shows them in `/stats` as they are (its `wasmcustom.` prefix is stripped),
//! so they carry the product prefix to stay apart from other plugins' metrics.

use crate::rejection::Rejection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Allowed,
    /// Allowed straight from the shared cache, with no explorer call.
    CacheHits,
    Strikes,
    Bans,
    Free,
    FailedOpen,
    Rejected(RejectionKind),
    ExplorerCalls,
    ExplorerErrors,
    /// Requests whose raw path differed from its canonical form (priced by the canonical one).
    NonCanonicalPaths,
    /// CORS preflights let through without payment.
    Preflights,
    /// A verified payment that found no slot it could take without losing a count or binding.
    LedgerFull,
    /// Requests refused an unverified pass because the client used up its fail-open allowance.
    FailOpenLimited,
    /// `verify: spv`: an explorer served a proof that did not verify (counted per proof, also
    /// when another explorer then verified the payment).
    InvalidProofs,
    /// `verify: spv`: verifications whose headers all came from the worker's header cache.
    HeaderCacheHits,
    /// Bans posted to the node guard (`guard`), first posts and re-posts.
    GuardPosts,
    /// Posts to the node guard that could not be sent or were not accepted.
    GuardErrors,
    /// Transactions sent to the ledger (etcd), including lease grants and retries.
    LedgerCalls,
    /// Ledger calls that failed (no answer, error status, unreadable reply).
    LedgerErrors,
    /// Blocks of requests the ledger granted to this Envoy.
    LedgerBlocks,
    /// Requests counted by this Envoy alone because the ledger was unreachable (failure_mode local).
    LedgerFallbacks,
    /// `mode: shadow`: requests that would have been refused, let through marked.
    Shadowed,
    /// Answers of the status endpoint (`/.well-known/txgate/status`).
    StatusAnswers,
    /// Answers of the manifest (`/.well-known/txgate`).
    ManifestAnswers,
    /// 402s answered with the HTML paywall.
    PaywallPages,
    /// Requests whose txid came in an x402 `PAYMENT-SIGNATURE` header.
    X402Signatures,
    /// Requests whose txid came in the `txgate_txid` cookie.
    CookieTxids,
    /// Lookups answered by the chain facts another replica verified (read from the ledger).
    LedgerFactsHits,
}

/// `Rejection` without its details, so that counters can be listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectionKind {
    PaymentRequired,
    InvalidTxid,
    TxNotFound,
    InsufficientPayment,
    InsufficientConfirmations,
    PaymentExpired,
    ExplorerUnavailable,
    PaymentExhausted,
    BoundToOtherClient,
    ClientBanned,
    VerificationBusy,
    Internal,
    InvalidPath,
    TxTooLarge,
    IdentityRequired,
    LedgerFull,
    ForwardedForUntrusted,
    ProofInvalid,
    ExplorerDisagreement,
    PaymentReorged,
    LedgerUnavailable,
    StatusLimited,
}

impl Counter {
    pub const ALL: [Counter; 49] = [
        Counter::Allowed,
        Counter::CacheHits,
        Counter::Strikes,
        Counter::Bans,
        Counter::Free,
        Counter::FailedOpen,
        Counter::Rejected(RejectionKind::PaymentRequired),
        Counter::Rejected(RejectionKind::InvalidTxid),
        Counter::Rejected(RejectionKind::TxNotFound),
        Counter::Rejected(RejectionKind::InsufficientPayment),
        Counter::Rejected(RejectionKind::InsufficientConfirmations),
        Counter::Rejected(RejectionKind::PaymentExpired),
        Counter::Rejected(RejectionKind::ExplorerUnavailable),
        Counter::Rejected(RejectionKind::PaymentExhausted),
        Counter::Rejected(RejectionKind::BoundToOtherClient),
        Counter::Rejected(RejectionKind::ClientBanned),
        Counter::Rejected(RejectionKind::VerificationBusy),
        Counter::Rejected(RejectionKind::Internal),
        Counter::Rejected(RejectionKind::InvalidPath),
        Counter::Rejected(RejectionKind::TxTooLarge),
        Counter::Rejected(RejectionKind::IdentityRequired),
        Counter::Rejected(RejectionKind::LedgerFull),
        Counter::Rejected(RejectionKind::ForwardedForUntrusted),
        Counter::Rejected(RejectionKind::ProofInvalid),
        Counter::Rejected(RejectionKind::ExplorerDisagreement),
        Counter::Rejected(RejectionKind::PaymentReorged),
        Counter::ExplorerCalls,
        Counter::ExplorerErrors,
        Counter::NonCanonicalPaths,
        Counter::Preflights,
        Counter::LedgerFull,
        Counter::FailOpenLimited,
        Counter::InvalidProofs,
        Counter::HeaderCacheHits,
        Counter::GuardPosts,
        Counter::GuardErrors,
        Counter::LedgerCalls,
        Counter::LedgerErrors,
        Counter::LedgerBlocks,
        Counter::LedgerFallbacks,
        Counter::Rejected(RejectionKind::LedgerUnavailable),
        Counter::Shadowed,
        Counter::StatusAnswers,
        Counter::ManifestAnswers,
        Counter::PaywallPages,
        Counter::X402Signatures,
        Counter::CookieTxids,
        Counter::Rejected(RejectionKind::StatusLimited),
        Counter::LedgerFactsHits,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::Allowed => "txgate_requests_allowed",
            Counter::CacheHits => "txgate_cache_hits",
            Counter::Strikes => "txgate_penalty_strikes",
            Counter::Bans => "txgate_penalty_bans",
            Counter::Free => "txgate_requests_free",
            Counter::FailedOpen => "txgate_requests_failed_open",
            Counter::Rejected(kind) => match kind {
                RejectionKind::PaymentRequired => "txgate_rejected_payment_required",
                RejectionKind::InvalidTxid => "txgate_rejected_invalid_txid",
                RejectionKind::TxNotFound => "txgate_rejected_tx_not_found",
                RejectionKind::InsufficientPayment => "txgate_rejected_insufficient_payment",
                RejectionKind::InsufficientConfirmations => "txgate_rejected_insufficient_confirmations",
                RejectionKind::PaymentExpired => "txgate_rejected_payment_expired",
                RejectionKind::ExplorerUnavailable => "txgate_rejected_explorer_unavailable",
                RejectionKind::PaymentExhausted => "txgate_rejected_payment_exhausted",
                RejectionKind::BoundToOtherClient => "txgate_rejected_payment_bound_to_other_client",
                RejectionKind::ClientBanned => "txgate_rejected_client_banned",
                RejectionKind::VerificationBusy => "txgate_rejected_verification_busy",
                RejectionKind::Internal => "txgate_rejected_internal_error",
                RejectionKind::InvalidPath => "txgate_rejected_invalid_path",
                RejectionKind::TxTooLarge => "txgate_rejected_tx_too_large",
                RejectionKind::IdentityRequired => "txgate_rejected_identity_required",
                RejectionKind::LedgerFull => "txgate_rejected_ledger_full",
                RejectionKind::ForwardedForUntrusted => "txgate_rejected_forwarded_for_untrusted",
                RejectionKind::ProofInvalid => "txgate_rejected_proof_invalid",
                RejectionKind::ExplorerDisagreement => "txgate_rejected_explorer_disagreement",
                RejectionKind::PaymentReorged => "txgate_rejected_payment_reorged",
                RejectionKind::LedgerUnavailable => "txgate_rejected_ledger_unavailable",
                RejectionKind::StatusLimited => "txgate_rejected_status_rate_limited",
            },
            Counter::ExplorerCalls => "txgate_explorer_calls",
            Counter::ExplorerErrors => "txgate_explorer_errors",
            Counter::NonCanonicalPaths => "txgate_paths_non_canonical",
            Counter::Preflights => "txgate_requests_preflight",
            Counter::LedgerFull => "txgate_ledger_full",
            Counter::FailOpenLimited => "txgate_failed_open_limited",
            Counter::InvalidProofs => "txgate_spv_invalid_proofs",
            Counter::HeaderCacheHits => "txgate_spv_header_cache_hits",
            Counter::GuardPosts => "txgate_guard_posts",
            Counter::GuardErrors => "txgate_guard_errors",
            Counter::LedgerCalls => "txgate_ledger_calls",
            Counter::LedgerErrors => "txgate_ledger_errors",
            Counter::LedgerBlocks => "txgate_ledger_blocks",
            Counter::LedgerFallbacks => "txgate_ledger_fallbacks",
            Counter::Shadowed => "txgate_requests_shadowed",
            Counter::StatusAnswers => "txgate_status_answers",
            Counter::ManifestAnswers => "txgate_manifest_answers",
            Counter::PaywallPages => "txgate_paywall_pages",
            Counter::X402Signatures => "txgate_x402_signatures",
            Counter::CookieTxids => "txgate_cookie_txids",
            Counter::LedgerFactsHits => "txgate_ledger_facts_hits",
        }
    }

    /// Position in `ALL`, used to find the host's metric id.
    pub fn index(self) -> usize {
        Counter::ALL.iter().position(|c| *c == self).unwrap_or(0)
    }
}

impl Rejection {
    pub fn counter(&self) -> Counter {
        Counter::Rejected(match self {
            Rejection::PaymentRequired => RejectionKind::PaymentRequired,
            Rejection::InvalidTxid => RejectionKind::InvalidTxid,
            Rejection::TxNotFound => RejectionKind::TxNotFound,
            Rejection::InsufficientPayment { .. } => RejectionKind::InsufficientPayment,
            Rejection::InsufficientConfirmations { .. } => RejectionKind::InsufficientConfirmations,
            Rejection::PaymentExpired { .. } => RejectionKind::PaymentExpired,
            Rejection::ExplorerUnavailable => RejectionKind::ExplorerUnavailable,
            Rejection::PaymentExhausted { .. } => RejectionKind::PaymentExhausted,
            Rejection::BoundToOtherClient => RejectionKind::BoundToOtherClient,
            Rejection::ClientBanned { .. } => RejectionKind::ClientBanned,
            Rejection::VerificationBusy => RejectionKind::VerificationBusy,
            Rejection::Internal => RejectionKind::Internal,
            Rejection::InvalidPath => RejectionKind::InvalidPath,
            Rejection::TxTooLarge => RejectionKind::TxTooLarge,
            Rejection::IdentityRequired { .. } => RejectionKind::IdentityRequired,
            Rejection::LedgerFull => RejectionKind::LedgerFull,
            Rejection::ForwardedForUntrusted => RejectionKind::ForwardedForUntrusted,
            Rejection::ProofInvalid => RejectionKind::ProofInvalid,
            Rejection::ExplorerDisagreement => RejectionKind::ExplorerDisagreement,
            Rejection::PaymentReorged => RejectionKind::PaymentReorged,
            Rejection::LedgerUnavailable => RejectionKind::LedgerUnavailable,
            Rejection::StatusLimited { .. } => RejectionKind::StatusLimited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_metric_is_named_after_its_error_code() {
        let rejections = [
            Rejection::PaymentRequired,
            Rejection::InvalidTxid,
            Rejection::TxNotFound,
            Rejection::InsufficientPayment { paid_sats: 0, required_sats: 1 },
            Rejection::InsufficientConfirmations { confirmations: 0, required: 1 },
            Rejection::PaymentExpired { block_time: 0, max_age_secs: 1 },
            Rejection::ExplorerUnavailable,
            Rejection::PaymentExhausted { requests: Some(1), window_secs: None },
            Rejection::BoundToOtherClient,
            Rejection::ClientBanned { retry_after_secs: 1 },
            Rejection::VerificationBusy,
            Rejection::Internal,
            Rejection::InvalidPath,
            Rejection::TxTooLarge,
            Rejection::IdentityRequired { identity: "header:x-api-key".into() },
            Rejection::LedgerFull,
            Rejection::ForwardedForUntrusted,
            Rejection::ProofInvalid,
            Rejection::ExplorerDisagreement,
            Rejection::PaymentReorged,
            Rejection::LedgerUnavailable,
            Rejection::StatusLimited { retry_after_secs: 60 },
        ];
        for r in rejections {
            assert_eq!(r.counter().name(), format!("txgate_rejected_{}", r.code()));
        }
    }

    #[test]
    fn names_are_unique_and_indexes_round_trip() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.name().starts_with("txgate_"));
            assert_eq!(Counter::ALL.iter().filter(|o| o.name() == c.name()).count(), 1);
        }
    }
}
