//! Who a client is, for binding payments and for the penalty box: an API-key header, the mTLS
//! peer principal, or the source address.

use std::net::IpAddr;

use crate::scope::fnv1a64;

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

/// The client a source address stands for: an IPv4 address, or the /64 an IPv6 client holds
/// (one subscriber gets a whole /64, so single addresses would be free to rotate).
pub fn client_address(address: &str) -> String {
    let host = strip_port(address);
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => host.to_string(),
    }
}

/// A stable, never-zero digest of an identity (FNV-1a 64 of the source's name and the value), so
/// that raw API keys never sit in shared memory and two sources never share a bucket.
pub fn identity_hash(source: &IdentitySource, value: &[u8]) -> u64 {
    let tag: &[u8] = match source {
        IdentitySource::Header(name) => name.as_bytes(),
        IdentitySource::MtlsPrincipal => b"@mtls",
        IdentitySource::SourceAddress => b"@source",
    };
    fnv1a64(&[tag, value]).max(1)
}

impl IdentitySource {
    /// The configuration's spelling, e.g. `header:x-api-key` (part of the per-client address
    /// derivation, see `xpub::index_of`).
    pub fn name(&self) -> String {
        match self {
            IdentitySource::Header(name) => format!("header:{name}"),
            IdentitySource::MtlsPrincipal => "mtls_principal".to_string(),
            IdentitySource::SourceAddress => "source_address".to_string(),
        }
    }

    /// How a client presents this identity, for the `identity_required` answer.
    pub fn describe(&self) -> String {
        match self {
            IdentitySource::Header(name) => format!("header {name}"),
            IdentitySource::MtlsPrincipal => "an mTLS client certificate".to_string(),
            IdentitySource::SourceAddress => "a source address".to_string(),
        }
    }
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
        let key = IdentitySource::Header("x-api-key".into());
        assert_eq!(identity_hash(&key, b"key-1"), identity_hash(&key, b"key-1"));
        assert_ne!(identity_hash(&key, b"key-1"), identity_hash(&key, b"key-2"));
        assert_ne!(identity_hash(&key, b"10.0.0.1"), identity_hash(&IdentitySource::SourceAddress, b"10.0.0.1"));
        assert_ne!(identity_hash(&key, b""), 0);
        // FNV-1a 64 is specified: this value must never change between releases.
        assert_eq!(identity_hash(&IdentitySource::SourceAddress, b"10.0.0.1"), 0x1ac7_05a3_bfaa_bd24);
    }

    #[test]
    fn sources_are_named_as_configured_and_described_for_clients() {
        let key = IdentitySource::Header("x-api-key".into());
        assert_eq!(IdentitySource::parse(&key.name()), Some(key.clone()), "name() is the config spelling");
        assert_eq!(key.name(), "header:x-api-key");
        assert_eq!(IdentitySource::MtlsPrincipal.name(), "mtls_principal");
        assert_eq!(IdentitySource::SourceAddress.name(), "source_address");
        assert_eq!(key.describe(), "header x-api-key");
        assert_eq!(IdentitySource::SourceAddress.describe(), "a source address");
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        assert_eq!(client_address("[2001:db8:1:2:aaaa::1]:443"), "2001:db8:1:2::/64");
        assert_eq!(client_address("[2001:db8:1:2:ffff::9]:1"), "2001:db8:1:2::/64");
        assert_ne!(client_address("[2001:db8:1:3::1]:1"), "2001:db8:1:2::/64");
        assert_eq!(client_address("10.1.2.3:5555"), "10.1.2.3");
        assert_eq!(client_address("[::ffff:10.1.2.3]:5555"), "10.1.2.3");
    }
}
