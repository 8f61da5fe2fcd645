//! Which addresses may be banned. A ban of the node's own address, of loopback, or of a load
//! balancer or SNAT address that many clients share would cut everyone off: those are refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The longest ban the agent takes (a week); the filter's own penalty box stays the authority.
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

/// An address range `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// `192.0.2.0/24`, `2001:db8::/32`, or a bare address (a /32 or /128).
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr = parse_address(addr)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("bad prefix in {text:?}"))?,
        };
        Ok(Cidr { addr, prefix })
    }

    /// The range of `prefix` bits around `ip` (host bits cleared); the prefix is capped at the
    /// family's length.
    pub fn around(ip: IpAddr, prefix: u8) -> Cidr {
        match ip {
            IpAddr::V4(v4) => {
                let prefix = prefix.min(32);
                let mask = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(prefix))).unwrap_or(0);
                Cidr { addr: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)), prefix }
            }
            IpAddr::V6(v6) => {
                let prefix = prefix.min(128);
                let mask = u128::MAX.checked_shl(128u32.saturating_sub(u32::from(prefix))).unwrap_or(0);
                Cidr { addr: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)), prefix }
            }
        }
    }

    /// Whether the two ranges share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let shorter = if self.prefix <= other.prefix { self } else { other };
        let longer = if self.prefix <= other.prefix { other } else { self };
        shorter.contains(longer.addr)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32u32.saturating_sub(u32::from(self.prefix))).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128u32.saturating_sub(u32::from(self.prefix))).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// An address as the filter or an operator writes it: `192.0.2.1`, `2001:db8::1`, also with a
/// port (`192.0.2.1:443`, `[2001:db8::1]:443`, Envoy's `source.address`). An IPv4-mapped IPv6
/// address is its IPv4 address (that is what the packets carry on a dual-stack socket's wire).
pub fn parse_address(text: &str) -> Result<IpAddr, String> {
    let t = text.trim();
    let bare = if let Some(rest) = t.strip_prefix('[') {
        rest.split_once(']').map(|(a, _)| a).ok_or_else(|| format!("not an address: {text:?}"))?
    } else if t.matches(':').count() == 1 {
        t.split_once(':').map_or(t, |(a, _)| a)
    } else {
        t
    };
    let ip: IpAddr = bare.parse().map_err(|_| format!("not an address: {text:?}"))?;
    Ok(canonical(ip))
}

pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// The addresses never banned: the operator's list (load balancers, SNAT, node and pod CIDRs)
/// and the node's own addresses, read again at every ban (interfaces change).
#[derive(Debug, Clone, Default)]
pub struct Protected {
    pub never_ban: Vec<Cidr>,
}

impl Protected {
    /// Why `ip` must not be banned, if it must not.
    pub fn refusal(&self, ip: IpAddr, node_addresses: &[IpAddr]) -> Option<String> {
        let ip = canonical(ip);
        let special = match ip {
            IpAddr::V4(v4) => (v4.is_loopback() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast())
                .then_some("loopback, unspecified, broadcast or multicast"),
            IpAddr::V6(v6) => (v6.is_loopback() || v6.is_unspecified() || v6.is_multicast())
                .then_some("loopback, unspecified or multicast"),
        };
        if let Some(what) = special {
            return Some(format!("{ip} is {what}"));
        }
        if node_addresses.iter().any(|a| canonical(*a) == ip) {
            return Some(format!("{ip} is one of this node's addresses"));
        }
        self.never_ban.iter().find(|c| c.contains(ip)).map(|c| format!("{ip} is in the never-ban range {c}"))
    }
}

/// The prefix the penalty box bans an IPv6 client by (one subscriber holds a whole /64, so single
/// addresses would be free to rotate): the filter's `client_address`, and the kernel's too.
pub const V6_CLIENT_PREFIX: u8 = 64;

/// What the kernel drops for a ban of `ip` (already checked by `Protected::refusal`): an IPv4
/// address alone; for IPv6 the client's /64, as the penalty box bans it, unless that /64 holds
/// one of the node's addresses or part of a never-ban range: then the address alone (a neighbour
/// on the node's own link, or addresses the operator protects, must not go with it).
pub fn ban_range(ip: IpAddr, protected: &Protected, node_addresses: &[IpAddr]) -> Cidr {
    let ip = canonical(ip);
    let single = Cidr::around(ip, 128);
    if ip.is_ipv4() {
        return single;
    }
    let net = Cidr::around(ip, V6_CLIENT_PREFIX);
    let shared = node_addresses.iter().any(|a| net.contains(canonical(*a)))
        || protected.never_ban.iter().any(|c| c.overlaps(&net));
    if shared {
        single
    } else {
        net
    }
}

/// A ban as the API shows it: `192.0.2.1`, `2001:db8::1`, `2001:db8:1:2::/64`.
pub fn show(ban: &Cidr) -> String {
    let full = if ban.addr.is_ipv4() { 32 } else { 128 };
    if ban.prefix == full {
        ban.addr.to_string()
    } else {
        ban.to_string()
    }
}

/// Bytes of the key the XDP program looks up: network order, as on the wire.
pub fn v4_key(ip: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(ip.octets())
}

pub fn v4_from_key(key: u32) -> Ipv4Addr {
    Ipv4Addr::from(key.to_ne_bytes())
}

pub fn v6_key(ip: Ipv6Addr) -> [u8; 16] {
    ip.octets()
}

/// The key of `bans6net`: the first 64 bits of the address as the program reads them off the
/// packet (network order in memory); the low 64 bits play no part.
pub fn v6_net_key(ip: Ipv6Addr) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = ip.octets();
    u64::from_ne_bytes([a, b, c, d, e, f, g, h])
}

pub fn v6_from_net_key(key: u64) -> Ipv6Addr {
    let [a, b, c, d, e, f, g, h] = key.to_ne_bytes();
    Ipv6Addr::from([a, b, c, d, e, f, g, h, 0, 0, 0, 0, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_or_without_ports_and_mapped_v4_is_v4() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        for text in ["192.0.2.1", "192.0.2.1:443", " 192.0.2.1 ", "::ffff:192.0.2.1", "[::ffff:192.0.2.1]:80"] {
            assert_eq!(parse_address(text), Ok(v4), "{text}");
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        for text in ["2001:db8::1", "[2001:db8::1]", "[2001:db8::1]:8080"] {
            assert_eq!(parse_address(text), Ok(v6), "{text}");
        }
        for bad in ["", "example.com", "192.0.2.256", "[2001:db8::1", "1.2.3.4:5:6"] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_contain_what_they_should() {
        let net = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.255.1.2".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("::a00:1".parse().unwrap()));
        let one = Cidr::parse("192.0.2.7").unwrap();
        assert_eq!(one.prefix, 32);
        assert!(one.contains("192.0.2.7".parse().unwrap()));
        assert!(!one.contains("192.0.2.6".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8:1::/48").unwrap();
        assert!(v6.contains("2001:db8:1:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8:2::1".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "10.0.0.0/x", "nope/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_node_and_listed_addresses_are_refused_others_not() {
        let protected = Protected { never_ban: vec![Cidr::parse("198.51.100.0/24").unwrap()] };
        let node: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "2001:db8:7467::2".parse().unwrap()];
        for refused in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "0.0.0.0",
            "::",
            "198.51.100.20",
            "192.0.2.2",
            "2001:db8:7467::2",
            "::ffff:127.0.0.1",
            "255.255.255.255",
            "224.0.0.1",
        ] {
            assert!(protected.refusal(parse_address(refused).unwrap(), &node).is_some(), "{refused}");
        }
        for allowed in ["192.0.2.1", "2001:db8:7467::1", "198.51.101.1"] {
            assert_eq!(protected.refusal(parse_address(allowed).unwrap(), &node), None, "{allowed}");
        }
        assert!(protected.refusal("192.0.2.2".parse().unwrap(), &node).unwrap().contains("node"));
    }

    #[test]
    fn keys_are_in_network_order() {
        let ip = Ipv4Addr::new(192, 0, 2, 1);
        assert_eq!(v4_key(ip).to_ne_bytes(), [192, 0, 2, 1]);
        assert_eq!(v4_from_key(v4_key(ip)), ip);
        let v6: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        assert_eq!(v6_net_key(v6).to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 2]);
        assert_eq!(v6_net_key(v6), v6_net_key("2001:db8:1:2:ffff::9".parse().unwrap()), "one key per /64");
        assert_ne!(v6_net_key(v6), v6_net_key("2001:db8:1:3::1".parse().unwrap()));
        assert_eq!(v6_from_net_key(v6_net_key(v6)), "2001:db8:1:2::".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn ipv6_bans_cover_the_64_the_penalty_box_bans_unless_it_holds_the_node_or_a_protected_range() {
        let protected = Protected { never_ban: vec![Cidr::parse("2001:db8:5::10").unwrap()] };
        let node: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap(), "2001:db8:7467:1::2".parse().unwrap()];
        let range = |ip: &str| show(&ban_range(parse_address(ip).unwrap(), &protected, &node));
        // The filter's identity tests: both addresses are the client 2001:db8:1:2::/64.
        assert_eq!(range("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(range("[2001:db8:1:2:ffff::9]:1"), "2001:db8:1:2::/64");
        assert_eq!(range("2001:db8:1:3::1"), "2001:db8:1:3::/64");
        assert_eq!(range("192.0.2.1"), "192.0.2.1");
        assert_eq!(range("::ffff:192.0.2.1"), "192.0.2.1");
        // The node's own /64 (its link neighbours) and a /64 with a never-ban address: the address alone.
        assert_eq!(range("2001:db8:7467:1::1"), "2001:db8:7467:1::1");
        assert_eq!(range("2001:db8:5::99"), "2001:db8:5::99");
        assert_eq!(ban_range("2001:db8:1:2::1".parse().unwrap(), &protected, &node).prefix, 64);
        assert!(Cidr::parse("2001:db8::/32").unwrap().overlaps(&Cidr::parse("2001:db8:1:2::/64").unwrap()));
        assert!(Cidr::parse("2001:db8:1:2::/64").unwrap().overlaps(&Cidr::parse("2001:db8::/32").unwrap()));
        assert!(!Cidr::parse("2001:db8:1:3::/64").unwrap().overlaps(&Cidr::parse("2001:db8:1:2::5").unwrap()));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().overlaps(&Cidr::parse("::a00:0/104").unwrap()));
    }
}
