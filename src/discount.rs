//! Discounts for clients that follow our security policies. The best matching rule applies.

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The request came over mTLS with one of these peer principals (URI SANs).
    MtlsPrincipalIn(Vec<String>),
    /// The request carries this header (with this exact value, if given). Only allowed when the
    /// operator marks the header as set by a trusted filter in front of txgate.
    Header { name: String, value: Option<String> },
    /// A claim of a JWT that Envoy's `jwt_authn` filter verified (read from its dynamic
    /// metadata, never from the request): `metadata_key` is its `payload_in_metadata`.
    JwtClaim { metadata_key: String, claim: String, value: Option<String> },
    /// The client was first seen at least this long ago and has had no strike since then.
    NoStrikesFor(Duration),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discount {
    pub name: String,
    /// 1 to 99: a 100 % discount would be a free route, which says so explicitly.
    pub percent: u8,
    pub condition: Condition,
}

/// What the discount rules may look at for one request.
pub struct ClientFacts<'a> {
    pub principal: Option<&'a str>,
    pub header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
    /// Verified JWT claims the glue read, as (metadata_key, claim, value).
    pub claims: &'a [(String, String, String)],
    /// Unix seconds of the client's last strike, `None` if never struck (or not tracked).
    pub last_strike: Option<u64>,
    /// Unix seconds the client was first seen, `None` if unknown.
    pub first_seen: Option<u64>,
    pub now_secs: u64,
}

impl Discount {
    pub fn applies(&self, facts: &ClientFacts<'_>) -> bool {
        match &self.condition {
            Condition::MtlsPrincipalIn(list) => facts.principal.is_some_and(|p| list.iter().any(|l| l == p)),
            Condition::Header { name, value } => match ((facts.header)(name), value) {
                (Some(_), None) => true,
                (Some(got), Some(want)) => got == want.as_bytes(),
                (None, _) => false,
            },
            Condition::JwtClaim { metadata_key, claim, value } => facts
                .claims
                .iter()
                .any(|(k, c, v)| k == metadata_key && c == claim && value.as_ref().is_none_or(|want| want == v)),
            Condition::NoStrikesFor(period) => {
                let long_enough = |t: u64| facts.now_secs >= t.saturating_add(period.as_secs());
                facts.first_seen.is_some_and(long_enough) && facts.last_strike.is_none_or(long_enough)
            }
        }
    }
}

pub fn best<'a>(rules: &'a [Discount], facts: &ClientFacts<'_>) -> Option<&'a Discount> {
    rules.iter().filter(|d| d.applies(facts)).max_by_key(|d| d.percent)
}

/// The price after a discount, rounded up so that a discount never makes a payment free.
pub fn discounted(price: u64, percent: u8) -> u64 {
    let keep = u128::from(100u8.saturating_sub(percent));
    let scaled = u128::from(price).saturating_mul(keep).div_ceil(100);
    u64::try_from(scaled).unwrap_or(price).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<Discount> {
        vec![
            Discount {
                name: "mtls".into(),
                percent: 20,
                condition: Condition::MtlsPrincipalIn(vec!["spiffe://a".into()]),
            },
            Discount {
                name: "policy".into(),
                percent: 10,
                condition: Condition::Header { name: "x-policy".into(), value: Some("v2".into()) },
            },
            Discount {
                name: "clean".into(),
                percent: 5,
                condition: Condition::NoStrikesFor(Duration::from_secs(3600)),
            },
        ]
    }

    fn facts<'a>(
        principal: Option<&'a str>,
        header: &'a dyn Fn(&str) -> Option<&'a [u8]>,
        last: Option<u64>,
    ) -> ClientFacts<'a> {
        ClientFacts { principal, header, claims: &[], last_strike: last, first_seen: Some(1), now_secs: 10_000 }
    }

    #[test]
    fn the_best_matching_rule_wins() {
        let rules = rules();
        let with_policy = |n: &str| (n == "x-policy").then_some(&b"v2"[..]);
        let none = |_: &str| None;
        assert_eq!(best(&rules, &facts(Some("spiffe://a"), &with_policy, None)).unwrap().name, "mtls");
        assert_eq!(best(&rules, &facts(Some("spiffe://b"), &with_policy, None)).unwrap().name, "policy");
        assert_eq!(best(&rules, &facts(None, &none, None)).unwrap().name, "clean");
        assert_eq!(best(&rules, &facts(None, &none, Some(9_000))), None, "struck 1000 s ago");
        let wrong_value = |n: &str| (n == "x-policy").then_some(&b"v1"[..]);
        assert_eq!(best(&rules, &facts(None, &wrong_value, Some(9_999))), None);
    }

    #[test]
    fn no_strikes_for_needs_a_client_seen_that_long_ago() {
        let rule = [Discount {
            name: "clean".into(),
            percent: 5,
            condition: Condition::NoStrikesFor(Duration::from_secs(3600)),
        }];
        let none = |_: &str| None;
        let seen = |first_seen| ClientFacts {
            principal: None,
            header: &none,
            claims: &[],
            last_strike: None,
            first_seen,
            now_secs: 10_000,
        };
        assert!(best(&rule, &seen(None)).is_none(), "never seen: no discount");
        assert!(best(&rule, &seen(Some(9_000))).is_none(), "seen 1000 s ago");
        assert!(best(&rule, &seen(Some(6_400))).is_some(), "seen an hour ago, never struck");
    }

    #[test]
    fn jwt_claims_come_from_the_verified_metadata() {
        let rule = [Discount {
            name: "tier".into(),
            percent: 30,
            condition: Condition::JwtClaim {
                metadata_key: "jwt".into(),
                claim: "tier".into(),
                value: Some("gold".into()),
            },
        }];
        let none = |_: &str| None;
        let claims = [("jwt".to_string(), "tier".to_string(), "gold".to_string())];
        let with = |claims| ClientFacts {
            principal: None,
            header: &none,
            claims,
            last_strike: None,
            first_seen: None,
            now_secs: 1,
        };
        assert!(best(&rule, &with(&claims)).is_some());
        let silver = [("jwt".to_string(), "tier".to_string(), "silver".to_string())];
        assert!(best(&rule, &with(&silver)).is_none());
        assert!(best(&rule, &with(&[])).is_none());
    }

    #[test]
    fn discounted_prices_round_up_and_never_reach_zero() {
        assert_eq!(discounted(1000, 20), 800);
        assert_eq!(discounted(999, 10), 900);
        assert_eq!(discounted(1, 99), 1);
        assert!(discounted(u64::MAX, 1) < u64::MAX);
    }
}
