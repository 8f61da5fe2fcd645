//! The ban API, independent of the kernel: `BanStore` is the XDP maps in the agent and a plain
//! map in the tests.
//!
//! - `POST /v1/bans {"address": "192.0.2.1", "ttl_secs": 600, "reason": "client_banned"}`: bans
//!   the address, or for IPv6 the client's /64 as the penalty box does (`policy::ban_range`)
//! - `DELETE /v1/bans/<address>` (lifts the bans that cover it) or `/v1/bans/<net>/64`
//! - `GET /v1/bans`, `GET /metrics`, `GET /healthz`
//!
//! Only the configured uids (Envoy's) and root may call it: the peer's uid comes from the kernel
//! (`SO_PEERCRED`), never from the request.

use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;

use crate::http::{Request, Response};
use crate::policy::{ban_range, parse_address, show, Cidr, Protected, MAX_TTL_SECS, V6_CLIENT_PREFIX};

const NANOS: u64 = 1_000_000_000;

/// The kernel's counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct XdpCounters {
    pub dropped: u64,
    pub passed: u64,
    pub expired: u64,
    pub banned_other_port: u64,
}

/// Bans by source range (an address, a /32 or /128, or an IPv6 /64, as `policy::ban_range` makes
/// them), with their expiry on CLOCK_MONOTONIC (ns), as the XDP program reads it.
pub trait BanStore {
    fn insert(&mut self, ban: Cidr, expires_ns: u64) -> Result<(), String>;
    fn get(&self, ban: Cidr) -> Option<u64>;
    fn remove(&mut self, ban: Cidr) -> Result<bool, String>;
    fn list(&self) -> Vec<(Cidr, u64)>;
    fn counters(&self) -> XdpCounters;
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApiCounters {
    pub bans_added: u64,
    pub bans_refused_protected: u64,
    pub bans_refused_invalid: u64,
    pub bans_removed: u64,
    pub forbidden: u64,
    pub store_errors: u64,
}

pub struct Api {
    pub protected: Protected,
    /// Uids allowed to call (root always is).
    pub allowed_uids: Vec<u32>,
    pub counters: ApiCounters,
}

/// What the agent knows about the caller and the moment.
pub struct Call<'a> {
    pub peer_uid: Option<u32>,
    pub now_ns: u64,
    pub node_addresses: &'a [IpAddr],
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanRequest {
    address: String,
    ttl_secs: u64,
    #[serde(default)]
    reason: Option<String>,
}

fn secs_left(expires_ns: u64, now_ns: u64) -> u64 {
    expires_ns.saturating_sub(now_ns).div_ceil(NANOS)
}

impl Api {
    pub fn new(protected: Protected, allowed_uids: Vec<u32>) -> Api {
        Api { protected, allowed_uids, counters: ApiCounters::default() }
    }

    pub fn handle(&mut self, store: &mut dyn BanStore, req: &Request, call: &Call<'_>) -> Response {
        let allowed = call.peer_uid.is_some_and(|uid| uid == 0 || self.allowed_uids.contains(&uid));
        if !allowed {
            self.counters.forbidden = self.counters.forbidden.saturating_add(1);
            let who = call.peer_uid.map_or("unknown".to_string(), |u| u.to_string());
            return Response::error(403, "forbidden", format!("uid {who} may not use the ban API"));
        }
        let path = req.path.split('?').next().unwrap_or_default();
        match (req.method.as_str(), path) {
            ("POST", "/v1/bans") => self.ban(store, &req.body, call),
            ("GET", "/v1/bans") => Self::list(store, call.now_ns),
            ("DELETE", p) if p.starts_with("/v1/bans/") => {
                self.unban(store, p.trim_start_matches("/v1/bans/").replace("%3A", ":").replace("%3a", ":").as_str())
            }
            ("GET", "/metrics") => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4",
                body: self.metrics(store, call.now_ns),
            },
            ("GET", "/healthz") => Response::json(200, json!({"ok": true})),
            (_, "/v1/bans" | "/metrics" | "/healthz") => Response::error(405, "method_not_allowed", req.method.clone()),
            _ => Response::error(404, "not_found", path.to_string()),
        }
    }

    fn invalid(&mut self, detail: String) -> Response {
        self.counters.bans_refused_invalid = self.counters.bans_refused_invalid.saturating_add(1);
        Response::error(400, "invalid", detail)
    }

    fn ban(&mut self, store: &mut dyn BanStore, body: &[u8], call: &Call<'_>) -> Response {
        let req: BanRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return self.invalid(format!("bad ban request: {e}")),
        };
        let ip = match parse_address(&req.address) {
            Ok(ip) => ip,
            Err(e) => return self.invalid(e),
        };
        if req.ttl_secs == 0 || req.ttl_secs > MAX_TTL_SECS {
            return self.invalid(format!("ttl_secs {} is not between 1 and {MAX_TTL_SECS}", req.ttl_secs));
        }
        if let Some(why) = self.protected.refusal(ip, call.node_addresses) {
            self.counters.bans_refused_protected = self.counters.bans_refused_protected.saturating_add(1);
            log::warn!("txgate-guard: refused a ban of {ip}: {why}");
            return Response::error(422, "protected", why);
        }
        let range = ban_range(ip, &self.protected, call.node_addresses);
        let wanted = call.now_ns.saturating_add(req.ttl_secs.saturating_mul(NANOS));
        // A shorter ban never cuts a longer one short.
        let expires = store.get(range).filter(|e| *e > wanted).unwrap_or(wanted);
        if let Err(e) = store.insert(range, expires) {
            self.counters.store_errors = self.counters.store_errors.saturating_add(1);
            return Response::error(500, "store", e);
        }
        self.counters.bans_added = self.counters.bans_added.saturating_add(1);
        log::info!(
            "txgate-guard: banned {} for {}s ({})",
            show(&range),
            secs_left(expires, call.now_ns),
            req.reason.as_deref().unwrap_or("no reason given")
        );
        Response::json(200, json!({"address": show(&range), "expires_in_secs": secs_left(expires, call.now_ns)}))
    }

    /// An address lifts every ban that covers it (its own, and for IPv6 its /64's); `net/64` or a
    /// full-length `addr/128` lifts that one ban.
    fn unban(&mut self, store: &mut dyn BanStore, address: &str) -> Response {
        let (label, bans) = if address.contains('/') {
            match Cidr::parse(address) {
                Ok(c)
                    if c == Cidr::around(c.addr, c.prefix)
                        && (c.prefix == Cidr::around(c.addr, 128).prefix
                            || (c.addr.is_ipv6() && c.prefix == V6_CLIENT_PREFIX)) =>
                {
                    (show(&c), vec![c])
                }
                Ok(c) => return self.invalid(format!("{c}: bans are single addresses or IPv6 /64s")),
                Err(e) => return self.invalid(e),
            }
        } else {
            match parse_address(address) {
                Ok(ip) if ip.is_ipv6() => {
                    (ip.to_string(), vec![Cidr::around(ip, 128), Cidr::around(ip, V6_CLIENT_PREFIX)])
                }
                Ok(ip) => (ip.to_string(), vec![Cidr::around(ip, 32)]),
                Err(e) => return self.invalid(e),
            }
        };
        let mut removed = false;
        for ban in bans {
            match store.remove(ban) {
                Ok(gone) => {
                    if gone {
                        removed = true;
                        self.counters.bans_removed = self.counters.bans_removed.saturating_add(1);
                    }
                }
                Err(e) => {
                    self.counters.store_errors = self.counters.store_errors.saturating_add(1);
                    return Response::error(500, "store", e);
                }
            }
        }
        Response::json(200, json!({"address": label, "removed": removed}))
    }

    fn list(store: &dyn BanStore, now_ns: u64) -> Response {
        let mut bans: Vec<(Cidr, u64)> = store.list().into_iter().filter(|(_, e)| *e > now_ns).collect();
        bans.sort();
        let bans: Vec<_> = bans
            .iter()
            .map(|(ban, e)| json!({"address": show(ban), "expires_in_secs": secs_left(*e, now_ns)}))
            .collect();
        Response::json(200, json!({ "bans": bans }))
    }

    /// Prometheus text exposition.
    pub fn metrics(&self, store: &dyn BanStore, now_ns: u64) -> String {
        let active: Vec<IpAddr> =
            store.list().into_iter().filter(|(_, e)| *e > now_ns).map(|(ban, _)| ban.addr).collect();
        let v4 = active.iter().filter(|ip| ip.is_ipv4()).count();
        let v6 = active.len().saturating_sub(v4);
        let x = store.counters();
        let c = &self.counters;
        let mut out = String::new();
        let mut put = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let (v4, v6) = (u64::try_from(v4).unwrap_or(u64::MAX), u64::try_from(v6).unwrap_or(u64::MAX));
        put("txgate_guard_bans", "gauge", "Bans in force.", &[("{family=\"ipv4\"}", v4), ("{family=\"ipv6\"}", v6)]);
        put("txgate_guard_bans_added_total", "counter", "Bans taken through the API.", &[("", c.bans_added)]);
        put(
            "txgate_guard_bans_refused_total",
            "counter",
            "Bans refused: a protected address, or an invalid request.",
            &[("{reason=\"protected\"}", c.bans_refused_protected), ("{reason=\"invalid\"}", c.bans_refused_invalid)],
        );
        put("txgate_guard_bans_removed_total", "counter", "Bans lifted through the API.", &[("", c.bans_removed)]);
        put("txgate_guard_forbidden_total", "counter", "Calls from a uid that may not call.", &[("", c.forbidden)]);
        put("txgate_guard_store_errors_total", "counter", "Failed BPF map updates.", &[("", c.store_errors)]);
        put("txgate_guard_dropped_packets_total", "counter", "Packets dropped in XDP.", &[("", x.dropped)]);
        put("txgate_guard_passed_packets_total", "counter", "Packets passed by XDP.", &[("", x.passed)]);
        put("txgate_guard_expired_bans_total", "counter", "Expired bans the kernel removed.", &[("", x.expired)]);
        put(
            "txgate_guard_banned_unprotected_packets_total",
            "counter",
            "Packets from banned sources to unprotected ports (passed).",
            &[("", x.banned_other_port)],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::policy::Cidr;

    #[derive(Default)]
    struct Mem(HashMap<Cidr, u64>);

    fn one(ip: &str) -> Cidr {
        let ip: IpAddr = ip.parse().unwrap();
        Cidr::around(ip, 128)
    }

    fn net(cidr: &str) -> Cidr {
        Cidr::parse(cidr).unwrap()
    }

    impl BanStore for Mem {
        fn insert(&mut self, ban: Cidr, expires_ns: u64) -> Result<(), String> {
            self.0.insert(ban, expires_ns);
            Ok(())
        }
        fn get(&self, ban: Cidr) -> Option<u64> {
            self.0.get(&ban).copied()
        }
        fn remove(&mut self, ban: Cidr) -> Result<bool, String> {
            Ok(self.0.remove(&ban).is_some())
        }
        fn list(&self) -> Vec<(Cidr, u64)> {
            self.0.iter().map(|(k, v)| (*k, *v)).collect()
        }
        fn counters(&self) -> XdpCounters {
            XdpCounters { dropped: 7, ..XdpCounters::default() }
        }
    }

    const NOW: u64 = 1_000 * NANOS;

    fn api() -> Api {
        Api::new(Protected { never_ban: vec![Cidr::parse("198.51.100.0/24").unwrap()] }, vec![1337])
    }

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request { method: method.into(), path: path.into(), body: body.as_bytes().to_vec() }
    }

    fn call(api: &mut Api, store: &mut Mem, uid: u32, r: Request) -> (u16, serde_json::Value) {
        let node: Vec<IpAddr> = vec!["192.0.2.2".parse().unwrap()];
        let resp = api.handle(store, &r, &Call { peer_uid: Some(uid), now_ns: NOW, node_addresses: &node });
        (resp.status, serde_json::from_str(&resp.body).unwrap_or(serde_json::Value::Null))
    }

    #[test]
    fn a_ban_is_stored_with_its_expiry_listed_and_lifted() {
        let (mut api, mut store) = (api(), Mem::default());
        let (status, body) = call(
            &mut api,
            &mut store,
            1337,
            req("POST", "/v1/bans", r#"{"address":"192.0.2.1:5555","ttl_secs":30,"reason":"client_banned"}"#),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["address"], "192.0.2.1");
        assert_eq!(store.get(one("192.0.2.1")), Some(NOW + 30 * NANOS));
        let (_, list) = call(&mut api, &mut store, 1337, req("GET", "/v1/bans", ""));
        assert_eq!(list["bans"], json!([{"address": "192.0.2.1", "expires_in_secs": 30}]));
        let (status, body) = call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/192.0.2.1", ""));
        assert_eq!((status, body["removed"].clone()), (200, json!(true)));
        assert!(store.0.is_empty());
        let (_, body) = call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/192.0.2.1", ""));
        assert_eq!(body["removed"], json!(false));
        assert_eq!(api.counters.bans_added, 1);
        assert_eq!(api.counters.bans_removed, 1);
    }

    #[test]
    fn a_shorter_ban_keeps_the_longer_one_and_expired_bans_are_not_listed() {
        let (mut api, mut store) = (api(), Mem::default());
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", r#"{"address":"2001:db8::1","ttl_secs":100}"#));
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", r#"{"address":"2001:db8::1","ttl_secs":5}"#));
        assert_eq!(store.get(net("2001:db8::/64")), Some(NOW + 100 * NANOS));
        store.0.insert(one("192.0.2.9"), NOW - 1);
        let (_, list) = call(&mut api, &mut store, 1337, req("GET", "/v1/bans", ""));
        assert_eq!(list["bans"], json!([{"address": "2001:db8::/64", "expires_in_secs": 100}]));
    }

    #[test]
    fn only_allowed_uids_and_root_may_call() {
        let (mut api, mut store) = (api(), Mem::default());
        let ban = r#"{"address":"192.0.2.1","ttl_secs":30}"#;
        let (status, body) = call(&mut api, &mut store, 1000, req("POST", "/v1/bans", ban));
        assert_eq!((status, body["error"].clone()), (403, json!("forbidden")));
        assert!(store.0.is_empty());
        let none = api.handle(
            &mut store,
            &req("GET", "/v1/bans", ""),
            &Call { peer_uid: None, now_ns: NOW, node_addresses: &[] },
        );
        assert_eq!(none.status, 403);
        assert_eq!(api.counters.forbidden, 2);
        assert_eq!(call(&mut api, &mut store, 0, req("POST", "/v1/bans", ban)).0, 200);
    }

    #[test]
    fn protected_and_invalid_bans_are_refused() {
        let (mut api, mut store) = (api(), Mem::default());
        for address in ["127.0.0.1", "::1", "192.0.2.2", "198.51.100.7", "::ffff:127.0.0.1"] {
            let body = format!(r#"{{"address":"{address}","ttl_secs":30}}"#);
            let (status, reply) = call(&mut api, &mut store, 1337, req("POST", "/v1/bans", &body));
            assert_eq!((status, reply["error"].clone()), (422, json!("protected")), "{address}");
        }
        for body in [
            r#"{"address":"192.0.2.1","ttl_secs":0}"#,
            r#"{"address":"192.0.2.1","ttl_secs":604801}"#,
            r#"{"address":"nope","ttl_secs":3}"#,
            r#"{"address":"192.0.2.1"}"#,
            r#"{"address":"192.0.2.1","ttl_secs":3,"extra":1}"#,
            "not json",
        ] {
            let (status, reply) = call(&mut api, &mut store, 1337, req("POST", "/v1/bans", body));
            assert_eq!((status, reply["error"].clone()), (400, json!("invalid")), "{body}");
        }
        assert!(store.0.is_empty());
        assert_eq!((api.counters.bans_refused_protected, api.counters.bans_refused_invalid), (5, 6));
    }

    #[test]
    fn metrics_show_bans_by_family_and_the_kernel_counters() {
        let (mut api, mut store) = (api(), Mem::default());
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", r#"{"address":"192.0.2.1","ttl_secs":3}"#));
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", r#"{"address":"2001:db8::1","ttl_secs":3}"#));
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", r#"{"address":"2001:db8:0:1::1","ttl_secs":3}"#));
        let resp = api.handle(
            &mut store,
            &req("GET", "/metrics", ""),
            &Call { peer_uid: Some(0), now_ns: NOW, node_addresses: &[] },
        );
        assert_eq!(resp.status, 200);
        for line in [
            "txgate_guard_bans{family=\"ipv4\"} 1",
            "txgate_guard_bans{family=\"ipv6\"} 2",
            "txgate_guard_bans_added_total 3",
            "txgate_guard_dropped_packets_total 7",
            "# TYPE txgate_guard_dropped_packets_total counter",
        ] {
            assert!(resp.body.lines().any(|l| l == line), "{line} missing in\n{}", resp.body);
        }
    }

    #[test]
    fn an_ipv6_ban_covers_the_clients_64_as_the_penalty_box_does() {
        let (mut api, mut store) = (api(), Mem::default());
        let ban = |address: &str, ttl: u64| format!(r#"{{"address":"{address}","ttl_secs":{ttl}}}"#);
        let (status, body) =
            call(&mut api, &mut store, 1337, req("POST", "/v1/bans", &ban("[2001:db8:1:2:aaaa::1]:443", 30)));
        assert_eq!((status, body["address"].clone()), (200, json!("2001:db8:1:2::/64")), "{body}");
        // Another address of the same /64 (a rotated one) is the same ban, not a second entry.
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", &ban("2001:db8:1:2:ffff::9", 60)));
        assert_eq!(store.0.len(), 1, "{:?}", store.0);
        assert_eq!(store.get(net("2001:db8:1:2::/64")), Some(NOW + 60 * NANOS));
        // Any address of it lifts it; so does the /64 itself.
        let (status, body) = call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001:db8:1:2::7", ""));
        assert_eq!((status, body["removed"].clone()), (200, json!(true)), "{body}");
        assert!(store.0.is_empty());
        call(&mut api, &mut store, 1337, req("POST", "/v1/bans", &ban("2001:db8:1:2::1", 30)));
        let (_, body) = call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001:db8:1:2::/64", ""));
        assert_eq!(body["removed"], json!(true), "{body}");
        assert_eq!(call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001:db8:1:2::/48", "")).0, 400);
        assert_eq!(call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001:db8::/32", "")).0, 400);
        assert_eq!(call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/192.0.2.1/32", "")).0, 200);
        assert_eq!(call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001:db8:1:2::1/64", "")).0, 400);
        // A /64 holding the node's address (its own link): the address alone.
        let node: Vec<IpAddr> = vec!["2001:db8:7467:1::2".parse().unwrap()];
        let r = req("POST", "/v1/bans", &ban("2001:db8:7467:1::1", 30));
        let resp = api.handle(&mut store, &r, &Call { peer_uid: Some(0), now_ns: NOW, node_addresses: &node });
        assert!(resp.body.contains(r#""address":"2001:db8:7467:1::1""#), "{}", resp.body);
        assert_eq!(store.0.keys().copied().collect::<Vec<_>>(), vec![one("2001:db8:7467:1::1")]);
        let (_, body) = call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001:db8:7467:1::1", ""));
        assert_eq!(body["removed"], json!(true), "{body}");
        assert!(store.0.is_empty());
        assert_eq!(api.counters.bans_removed, 3);
    }

    #[test]
    fn unknown_routes_and_methods() {
        let (mut api, mut store) = (api(), Mem::default());
        assert_eq!(call(&mut api, &mut store, 0, req("GET", "/nope", "")).0, 404);
        assert_eq!(call(&mut api, &mut store, 0, req("PUT", "/v1/bans", "")).0, 405);
        assert_eq!(call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/x", "")).0, 400);
        assert_eq!(call(&mut api, &mut store, 0, req("DELETE", "/v1/bans/2001%3Adb8%3A%3A1", "")).0, 200);
    }
}
