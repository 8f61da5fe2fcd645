//! Who a client is, for binding payments and for the penalty box: an API-key header, the mTLS
//! peer principal, or the source address.

use std::hash::{DefaultHasher, Hash, Hasher};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentitySource {
    /// A request header such as an API key (lowercase name).
    Header(String),
    /// The URI SAN of the client certificate (`spiffe://…` in Istio).
    MtlsPrincipal,
    /// The client IP address, without the port.
    SourceAddress,
}

impl IdentitySource {
    /// `header:<name>`, `mtls_principal` or `source_address`.
    pub fn parse(text: &str) -> Option<IdentitySource> {
        match text {
            "mtls_principal" => Some(IdentitySource::MtlsPrincipal),
            "source_address" => Some(IdentitySource::SourceAddress),
            _ => {
                let name = text.strip_prefix("header:")?.to_ascii_lowercase();
                let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                ok.then_some(IdentitySource::Header(name))
            }
        }
    }
}

/// The source address as Envoy gives it ("1.2.3.4:5678", "[::1]:5678"), without the port.
pub fn strip_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => address,
    }
}

/// A stable, never-zero digest of an identity, so that raw API keys never sit in shared memory.
/// Every worker runs the same module, so `DefaultHasher`'s fixed keys agree across workers.
pub fn identity_hash(value: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_sources() {
        assert_eq!(IdentitySource::parse("header:X-Api-Key"), Some(IdentitySource::Header("x-api-key".into())));
        assert_eq!(IdentitySource::parse("mtls_principal"), Some(IdentitySource::MtlsPrincipal));
        assert_eq!(IdentitySource::parse("source_address"), Some(IdentitySource::SourceAddress));
        for bad in ["", "header:", "header:a b", "cookie:x", "ip"] {
            assert_eq!(IdentitySource::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn strips_ports_from_v4_and_v6() {
        assert_eq!(strip_port("10.1.2.3:5555"), "10.1.2.3");
        assert_eq!(strip_port("[::1]:5555"), "::1");
        assert_eq!(strip_port("10.1.2.3"), "10.1.2.3");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn hashes_are_stable_distinct_and_non_zero() {
        assert_eq!(identity_hash(b"key-1"), identity_hash(b"key-1"));
        assert_ne!(identity_hash(b"key-1"), identity_hash(b"key-2"));
        assert_ne!(identity_hash(b""), 0);
    }
}
