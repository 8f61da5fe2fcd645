//! The node guard (`txgate-guard`, in `guard/`): a source address the penalty box bans is posted
//! to the node's agent, which drops its packets in the kernel (XDP) until the ban expires.
//!
//! The L7 penalty box stays the authority: a post that fails leaves today's behaviour. A banned
//! client that still reaches the filter proves the kernel did not drop it (the agent restarted,
//! lost the post, or evicted the entry), so its ban is posted again, at most once per
//! `REPOST_INTERVAL_MS` per address and worker.

use std::net::IpAddr;
use std::time::Duration;

use crate::identity::strip_port;

/// The longest ban the agent takes.
pub const MAX_BAN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
pub const REPOST_INTERVAL_MS: u64 = 5_000;
/// Addresses a worker remembers re-posting; when full it forgets them all (a re-post too many).
const REPOSTS_REMEMBERED: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardConfig {
    /// The Envoy cluster of the agent's Unix socket (a `pipe` address).
    pub cluster: String,
    /// How long the kernel drops a banned source (at most the rest of the L7 ban).
    pub ban_ttl: Duration,
}

/// The address to ban for Envoy's `source.address` (`192.0.2.1:5555`, `[2001:db8::1]:443`):
/// the text as Envoy prints it, without the port (printing an `Ipv6Addr` again would cost the
/// wasm a few KB); an IPv4-mapped IPv6 address as its IPv4 address.
pub fn ban_address(source: &str) -> Option<String> {
    let text = strip_port(source);
    match text.parse::<IpAddr>().ok()? {
        IpAddr::V6(v6) => Some(v6.to_ipv4_mapped().map_or_else(|| text.to_string(), |v4| v4.to_string())),
        IpAddr::V4(_) => Some(text.to_string()),
    }
}

/// Seconds the kernel should drop for: the configured TTL, never past the L7 ban's end.
pub fn ttl_secs(config: &GuardConfig, l7_secs_left: u64) -> u64 {
    config.ban_ttl.as_secs().min(l7_secs_left).max(1)
}

/// The body of `POST /v1/bans` (the address is a printed `IpAddr`: nothing to escape).
pub fn ban_body(address: &str, ttl_secs: u64, reason: &str) -> String {
    format!(r#"{{"address":"{address}","ttl_secs":{ttl_secs},"reason":"{reason}"}}"#)
}

/// When each address was last posted again by this worker (unix ms), for the last
/// `REPOSTS_REMEMBERED` addresses; a forgotten one is posted again early, nothing worse.
#[derive(Debug, Default)]
pub struct Reposts {
    last: Vec<(String, u64)>,
}

impl Reposts {
    /// Whether a banned client seen at L7 should be posted again now; if so, it is recorded.
    pub fn due(&mut self, address: &str, now_ms: u64) -> bool {
        let address = strip_port(address);
        match self.last.iter_mut().find(|(a, _)| a == address) {
            Some((_, last)) if now_ms < last.saturating_add(REPOST_INTERVAL_MS) => false,
            Some((_, last)) => {
                *last = now_ms;
                true
            }
            None => {
                if self.last.len() >= REPOSTS_REMEMBERED {
                    self.last.remove(0);
                }
                self.last.push((address.to_string(), now_ms));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_lose_their_port_and_mapped_v4_is_v4() {
        assert_eq!(ban_address("192.0.2.1:5555").as_deref(), Some("192.0.2.1"));
        assert_eq!(ban_address("192.0.2.1").as_deref(), Some("192.0.2.1"));
        assert_eq!(ban_address("[2001:db8::1]:443").as_deref(), Some("2001:db8::1"));
        assert_eq!(ban_address("not-an-ip:80"), None);
        assert_eq!(ban_address("[::ffff:192.0.2.7]:80").as_deref(), Some("192.0.2.7"));
        assert_eq!(ban_address("envoy://internal"), None);
        assert_eq!(ban_address(""), None);
    }

    #[test]
    fn the_kernel_ban_never_outlasts_the_l7_one() {
        let config = GuardConfig { cluster: "g".into(), ban_ttl: Duration::from_secs(60) };
        assert_eq!(ttl_secs(&config, 600), 60);
        assert_eq!(ttl_secs(&config, 7), 7);
        assert_eq!(ttl_secs(&config, 0), 1);
    }

    #[test]
    fn the_body_is_the_agents_json() {
        let body = ban_body("2001:db8::1", 30, "client_banned");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({"address": "2001:db8::1", "ttl_secs": 30, "reason": "client_banned"}));
    }

    #[test]
    fn the_kernel_takes_bans_of_up_to_a_week() {
        let guard_of = |ban_time: &str, guard: serde_json::Value| {
            let config = serde_json::json!({
                "network": "regtest",
                "pay_to": ["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"],
                "price_sats": 1000,
                "explorers": [{"cluster": "explorer", "authority": "explorer.local", "path_prefix": "/api"}],
                "penalty": {"ban_time": ban_time},
                "guard": guard,
            });
            crate::config::Config::from_json(config.to_string().as_bytes()).map(|c| c.guard.map(|g| g.ban_ttl))
        };
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(guard_of("1h", serde_json::json!({"cluster": "g", "ban_ttl": "168h"})), Ok(Some(week)));
        let one_more = guard_of("1h", serde_json::json!({"cluster": "g", "ban_ttl": "604801s"}));
        assert_eq!(one_more.map_err(|e| e.field), Err("guard.ban_ttl".to_string()));
        // A longer L7 ban is cut to the longest the agent takes.
        assert_eq!(guard_of("400h", serde_json::json!({"cluster": "g"})), Ok(Some(week)));
        assert_eq!(guard_of("100h", serde_json::json!({"cluster": "g"})), Ok(Some(Duration::from_secs(100 * 3600))));
    }

    #[test]
    fn reposts_are_rate_limited_per_address_and_memory_is_bounded() {
        let mut r = Reposts::default();
        assert!(r.due("192.0.2.1", 1_000));
        assert!(!r.due("192.0.2.1", 1_000 + REPOST_INTERVAL_MS - 1));
        assert!(r.due("192.0.2.2", 1_001));
        assert!(r.due("192.0.2.1:7777", 1_000 + REPOST_INTERVAL_MS), "the port is not the client");
        assert!(!r.due("192.0.2.1:7778", 1_001 + REPOST_INTERVAL_MS));
        for i in 0..(REPOSTS_REMEMBERED * 2) {
            r.due(&format!("10.0.{}.{}", i / 256, i % 256), 5_000);
        }
        assert!(r.last.len() <= REPOSTS_REMEMBERED);
    }
}
