//! The shipped deployment files (envoy/*.yaml, istio/*.yaml) against the filter itself: every plugin
//! configuration must be accepted by txgate's own parser, name explorer clusters that the same files
//! define (with TLS toward public explorers), and never fail open. `envoy --mode validate` of the
//! standalone configs runs the real wasm's on_configure too. Every shipped Envoy config also carries
//! the HCM hardening of README "Hardening Envoy in front of txgate", checked here field by field and,
//! for envoy/local.yaml, by real requests against that file running in Envoy.
// Test code: panicking with a message is how a check fails here (the lints guard the filter).
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used, clippy::indexing_slicing)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use txgate::config::Config;

use common::{start_envoy, wasm_path, Stack};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every YAML document of a file, as JSON values.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_norway::Value =
                serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(v).expect("YAML to JSON")
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn istio_documents() -> Vec<(PathBuf, Value)> {
    yaml_files("istio").into_iter().flat_map(|p| documents(&p).into_iter().map(move |d| (p.clone(), d))).collect()
}

fn parse(config: &Value, what: &str) -> Config {
    Config::from_json(config.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("{what}: txgate refuses its pluginConfig: {e}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

#[test]
fn every_istio_wasmplugin_config_is_accepted_and_fails_closed() {
    let docs = istio_documents();
    let plugins: Vec<&(PathBuf, Value)> = docs.iter().filter(|(_, d)| d["kind"] == "WasmPlugin").collect();
    assert!(plugins.len() >= 2, "expected a sidecar and a gateway WasmPlugin, found {}", plugins.len());
    for (path, plugin) in plugins {
        let what = path.display().to_string();
        let spec = &plugin["spec"];
        let config = parse(&spec["pluginConfig"], &what);
        assert_eq!(spec["failStrategy"], "FAIL_CLOSE", "{what}: a payment gate must not fail open");
        assert_eq!(spec["phase"], "AUTHZ", "{what}: runs after authentication (mTLS identity known)");
        assert_eq!(spec["pluginName"], "txgate", "{what}: root_id");
        assert!(str_at(spec, "/url").starts_with("oci://"), "{what}: url");
        let sha = str_at(spec, "/sha256");
        assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{what}: sha256 {sha:?}");
        assert_eq!(config.failure_mode, txgate::config::FailureMode::Closed, "{what}: failure_mode");
        for explorer in &config.explorers {
            check_istio_explorer(&docs, &what, &explorer.cluster, &explorer.authority);
        }
        if let Some(ledger) = &config.ledger {
            // An in-mesh etcd: its Service must exist on that port, and speak HTTP/1.1.
            check_istio_explorer(&docs, &what, &ledger.cluster, &ledger.authority);
            let host = ledger.cluster.rsplit('|').next().unwrap_or("");
            let rule =
                docs.iter().map(|(_, d)| d).find(|d| d["kind"] == "DestinationRule" && d["spec"]["host"] == host);
            let rule = rule.unwrap_or_else(|| panic!("{what}: no DestinationRule for the ledger's etcd {host}"));
            assert_eq!(
                rule["spec"]["trafficPolicy"]["connectionPool"]["http"]["h2UpgradePolicy"], "DO_NOT_UPGRADE",
                "{what}: etcd's JSON gateway takes HTTP/1.1 only"
            );
        }
    }
}

/// `outbound|PORT||HOST` must be defined by these files: a public host needs a ServiceEntry on that
/// port and a DestinationRule originating TLS with SNI = HOST; an in-mesh host a Service on that port.
fn check_istio_explorer(docs: &[(PathBuf, Value)], what: &str, cluster: &str, authority: &str) {
    let parts: Vec<&str> = cluster.split('|').collect();
    let [direction, port, subset, host] = parts.as_slice() else {
        panic!("{what}: {cluster:?} is not an Istio cluster name outbound|<port>||<host>")
    };
    assert_eq!((*direction, *subset), ("outbound", ""), "{what}: {cluster}");
    let port: u64 = port.parse().unwrap_or_else(|_| panic!("{what}: port in {cluster}"));
    let authority_host = authority.split(':').next().unwrap_or("");
    assert_eq!(authority_host, *host, "{what}: authority {authority} is not the cluster's host");
    let kind = |k: &'static str| docs.iter().map(|(_, d)| d).filter(move |d| d["kind"] == k);
    if let Some(svc) = host.strip_suffix(".svc.cluster.local") {
        let (name, namespace) = svc.split_once('.').unwrap_or((svc, ""));
        let service = kind("Service")
            .find(|s| s["metadata"]["name"] == name && s["metadata"]["namespace"] == namespace)
            .unwrap_or_else(|| panic!("{what}: no Service {name}.{namespace} for {cluster}"));
        let ports = service["spec"]["ports"].as_array().expect("ports");
        assert!(ports.iter().any(|p| p["port"] == port), "{what}: Service {name} has no port {port}");
        return;
    }
    let entry = kind("ServiceEntry")
        .find(|s| s["spec"]["hosts"].as_array().is_some_and(|h| h.iter().any(|x| x == host)))
        .unwrap_or_else(|| panic!("{what}: no ServiceEntry for {host}, so {cluster} would not exist"));
    let entry_port = entry["spec"]["ports"].as_array().and_then(|ps| ps.iter().find(|p| p["number"] == port));
    let entry_port = entry_port.unwrap_or_else(|| panic!("{what}: ServiceEntry for {host} lacks port {port}"));
    assert_eq!(entry_port["protocol"], "HTTP", "{what}: txgate's callout is HTTP; TLS comes from the DestinationRule");
    let rule = kind("DestinationRule")
        .find(|d| d["spec"]["host"] == *host)
        .unwrap_or_else(|| panic!("{what}: no DestinationRule for {host}: the call would be plaintext to :443"));
    let tls = rule["spec"]["trafficPolicy"]["portLevelSettings"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["port"]["number"] == port))
        .map(|p| &p["tls"])
        .unwrap_or(&rule["spec"]["trafficPolicy"]["tls"]);
    assert_eq!(tls["mode"], "SIMPLE", "{what}: DestinationRule for {host} must originate TLS");
    assert_eq!(tls["sni"], *host, "{what}: DestinationRule for {host} SNI");
}

#[test]
fn a_broken_plugin_config_is_refused() {
    // The check above can fail: the same documents, with a mainnet address on the wrong network.
    let docs = istio_documents();
    let (_, plugin) = docs.iter().find(|(_, d)| d["kind"] == "WasmPlugin").expect("a WasmPlugin");
    let mut config = plugin["spec"]["pluginConfig"].clone();
    config["network"] = Value::from("regtest");
    let err = Config::from_json(config.to_string().as_bytes()).expect_err("mainnet address on regtest");
    assert_eq!(err.field, "pay_to[0]");
    let mut config = plugin["spec"]["pluginConfig"].clone();
    config["failure_mod"] = Value::from("closed");
    assert!(Config::from_json(config.to_string().as_bytes()).is_err(), "unknown field accepted");
}

/// The txgate filter configurations of an Envoy bootstrap, with the cluster names it defines.
fn envoy_txgate_configs(doc: &Value) -> (Vec<&Value>, Vec<&Value>) {
    let clusters = doc["static_resources"]["clusters"].as_array().map(|c| c.iter().collect()).unwrap_or_default();
    let mut filters = Vec::new();
    for listener in doc["static_resources"]["listeners"].as_array().into_iter().flatten() {
        for chain in listener["filter_chains"].as_array().into_iter().flatten() {
            for filter in chain["filters"].as_array().into_iter().flatten() {
                for http in filter["typed_config"]["http_filters"].as_array().into_iter().flatten() {
                    if http["name"] == "txgate" {
                        filters.push(&http["typed_config"]["config"]);
                    }
                }
            }
        }
    }
    (filters, clusters)
}

#[test]
fn every_envoy_config_is_accepted_and_names_its_own_clusters() {
    let files = yaml_files("envoy");
    assert!(files.iter().any(|f| f.ends_with("mainnet.yaml")), "envoy/mainnet.yaml is shipped");
    for path in files {
        let what = path.display().to_string();
        let doc = documents(&path).pop().expect("one document");
        let (filters, clusters) = envoy_txgate_configs(&doc);
        assert!(!filters.is_empty(), "{what}: no txgate filter");
        for filter in filters {
            assert_eq!(filter["failure_policy"], "FAIL_CLOSED", "{what}: a payment gate must not fail open");
            assert_eq!(
                str_at(filter, "/vm_config/code/local/filename"),
                "target/txgate.wasm",
                "{what}: wasm path relative to the repository root"
            );
            let json: Value = serde_json::from_str(str_at(filter, "/configuration/value"))
                .unwrap_or_else(|e| panic!("{what}: configuration is not JSON: {e}"));
            let config = parse(&json, &what);
            if let Some(ledger) = &config.ledger {
                let cluster = clusters
                    .iter()
                    .find(|c| c["name"] == ledger.cluster.as_str())
                    .unwrap_or_else(|| panic!("{what}: ledger cluster {} is not defined", ledger.cluster));
                // etcd's gateway on a plaintext port takes HTTP/1.1 only (h2c goes to its gRPC server).
                assert!(
                    cluster.get("http2_protocol_options").is_none()
                        && cluster.get("typed_extension_protocol_options").is_none(),
                    "{what}: the ledger cluster must speak HTTP/1.1"
                );
            }
            for explorer in &config.explorers {
                let cluster = clusters
                    .iter()
                    .find(|c| c["name"] == explorer.cluster.as_str())
                    .unwrap_or_else(|| panic!("{what}: explorer cluster {} is not defined", explorer.cluster));
                let tls = &cluster["transport_socket"]["typed_config"];
                if explorer.authority.starts_with("127.") || explorer.authority.ends_with(".local") {
                    continue; // the local devnet explorer is plain HTTP on loopback
                }
                assert_eq!(tls["sni"], explorer.authority.as_str(), "{what}: {} SNI", explorer.cluster);
                assert_eq!(
                    str_at(tls, "/common_tls_context/validation_context/trusted_ca/filename"),
                    "/etc/ssl/certs/ca-certificates.crt",
                    "{what}: {} must verify the explorer's certificate",
                    explorer.cluster
                );
            }
        }
    }
}

/// The `:path` regex a route that skips txgate must carry for its prefix: canonical paths only.
fn canonical_only_regex(prefix: &str) -> String {
    format!("^{prefix}(/\\.*[A-Za-z0-9_~!$&'()*+,=:@-][A-Za-z0-9._~!$&'()*+,=:@-]*)*/?(\\?[^#]*)?$")
}

/// The headers txgate sets on a request it lets through: a route that skips txgate removes them.
const TXGATE_REQUEST_HEADERS: [&str; 7] = [
    "x-txgate-txid",
    "x-txgate-paid-sats",
    "x-txgate-confirmations",
    "x-txgate-discount",
    "x-txgate-address-path",
    "x-txgate-unverified",
    "x-txgate-shadow",
];

/// What is wrong with the routes of a bootstrap that disable txgate: each must take a prefix that
/// the txgate config in the same file makes free (with no paid route under it), admit only its
/// canonical spellings, and drop the headers txgate would have set.
fn skipping_route_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let (filters, _) = envoy_txgate_configs(doc);
    let configs: Vec<Config> = filters
        .iter()
        .filter_map(|f| serde_json::from_str::<Value>(str_at(f, "/configuration/value")).ok())
        .filter_map(|json| Config::from_json(json.to_string().as_bytes()).ok())
        .collect();
    for (_, hcm) in hcms(doc) {
        for vhost in hcm["route_config"]["virtual_hosts"].as_array().into_iter().flatten() {
            for route in vhost["routes"].as_array().into_iter().flatten() {
                let skip = &route["typed_per_filter_config"]["txgate"];
                if skip.is_null() {
                    continue;
                }
                let prefix = str_at(route, "/match/path_separated_prefix");
                let what = format!("route {prefix:?}");
                if skip["@type"] != "type.googleapis.com/envoy.config.route.v3.FilterConfig" || skip["disabled"] != true
                {
                    problems
                        .push(format!("{what}: per-route txgate config other than FilterConfig {{disabled: true}}"));
                }
                if prefix.is_empty() || route["match"].as_object().is_some_and(|m| m.len() != 2) {
                    problems.push(format!("{what}: must match path_separated_prefix and :path only"));
                }
                let headers = route["match"]["headers"].as_array().cloned().unwrap_or_default();
                let regex_ok = headers.len() == 1
                    && headers[0]["name"] == ":path"
                    && headers[0]["invert_match"].is_null()
                    && str_at(&headers[0], "/string_match/safe_regex/regex") == canonical_only_regex(prefix);
                if !regex_ok {
                    problems.push(format!("{what}: the :path match is not the canonical-only regex"));
                }
                let removed: Vec<&str> = route["request_headers_to_remove"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                for name in TXGATE_REQUEST_HEADERS {
                    if !removed.contains(&name) {
                        problems.push(format!("{what}: does not remove {name}"));
                    }
                }
                if configs.is_empty() {
                    problems.push(format!("{what}: no txgate config in this file says it is free"));
                }
                for config in &configs {
                    let free = |path: &str| config.access_for(path) == txgate::config::AccessRef::Free;
                    if !free(prefix) || !free(&format!("{prefix}/x")) {
                        problems.push(format!("{what}: txgate does not make {prefix} free"));
                    }
                    for paid in config.routes.iter().filter(|r| !matches!(r.access, txgate::config::Access::Free)) {
                        let under = paid.prefix.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'));
                        if under || paid.prefix == prefix {
                            problems.push(format!("{what}: txgate prices {} under it", paid.prefix));
                        }
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn routes_that_skip_txgate_are_free_canonical_and_strip_its_headers() {
    let mut skipping = 0;
    for path in yaml_files("envoy") {
        let doc = documents(&path).pop().expect("one document");
        assert_eq!(skipping_route_problems(&doc), Vec::<String>::new(), "{}", path.display());
        skipping += doc.to_string().matches("envoy.config.route.v3.FilterConfig").count();
    }
    assert!(skipping >= 4, "every shipped config skips txgate on its free prefix ({skipping})");
    // The check can fail: envoy/local.yaml with each safeguard broken in turn.
    let doc = documents(&repo().join("envoy/local.yaml")).pop().expect("local.yaml");
    let route =
        "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/routes/0";
    let config = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/1/typed_config/config/configuration/value";
    type Break = fn(&mut Value);
    let breaks: [(&str, Break); 6] = [
        ("regex widened", |r| r["match"]["headers"][0]["string_match"]["safe_regex"]["regex"] = json!("^/free.*")),
        ("no :path match", |r| r["match"].as_object_mut().map(|m| m.remove("headers")).map(drop).unwrap_or(())),
        ("plain prefix", |r| r["match"] = json!({"prefix": "/free", "headers": r["match"]["headers"].clone()})),
        ("headers kept", |r| r["request_headers_to_remove"] = json!(["x-txgate-txid"])),
        ("other prefix", |r| r["match"]["path_separated_prefix"] = json!("/api")),
        ("not disabled", |r| r["typed_per_filter_config"]["txgate"]["disabled"] = json!(false)),
    ];
    for (name, mutate) in breaks {
        let mut broken = doc.clone();
        mutate(broken.pointer_mut(route).expect("skipping route"));
        assert!(!skipping_route_problems(&broken).is_empty(), "not noticed: {name}");
    }
    for (name, routes) in [
        ("not free in txgate", r#"[{"prefix": "/premium", "price_sats": 5000}]"#),
        ("paid under it", r#"[{"prefix": "/free", "free": true}, {"prefix": "/free/pro", "price_sats": 5000}]"#),
    ] {
        let mut broken = doc.clone();
        let value = broken.pointer_mut(config).expect("txgate config");
        let mut json: Value = serde_json::from_str(value.as_str().expect("string")).expect("JSON");
        json["routes"] = serde_json::from_str(routes).expect("routes");
        *value = json!(json.to_string());
        assert!(!skipping_route_problems(&broken).is_empty(), "not noticed: {name}");
    }
}

fn envoy_bin() -> PathBuf {
    std::env::var_os("TXGATE_ENVOY").map(PathBuf::from).unwrap_or_else(|| repo().join(".venv/bin/envoy"))
}

#[test]
fn public_explorer_configs_pass_envoy_validate_with_the_real_wasm() {
    let envoy = envoy_bin();
    let wasm = repo().join("target/txgate.wasm");
    // `make test` provides both; a bare `cargo test` must say it did not check, not pass silently.
    // TXGATE_SKIP_ENVOY=1 is the explicit way to run the other tests without them.
    if std::env::var_os("TXGATE_SKIP_ENVOY").is_some() {
        eprintln!("skipped: TXGATE_SKIP_ENVOY is set");
        return;
    }
    assert!(envoy.exists(), "{} missing: run `make test` (or set TXGATE_SKIP_ENVOY=1)", envoy.display());
    assert!(wasm.exists(), "{} missing: run `make wasm` (or set TXGATE_SKIP_ENVOY=1)", wasm.display());
    let validate = |config: &Path| {
        Command::new(&envoy)
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(config)
            .current_dir(repo())
            .output()
            .expect("run envoy")
    };
    for name in ["envoy/mainnet.yaml", "envoy/signet.yaml"] {
        let out = validate(Path::new(name));
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // And a refused plugin configuration fails validation (on_configure runs in validate mode).
    // The `.yaml` suffix matters: without it Envoy parses the file as JSON and fails whatever it
    // holds. A good copy with the suffix must pass, so the refusal below is txgate's.
    let text = std::fs::read_to_string(repo().join("envoy/mainnet.yaml")).expect("mainnet.yaml");
    let good = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(good.path(), &text).expect("write");
    let out = validate(good.path());
    assert!(out.status.success(), "an unchanged copy: {}", String::from_utf8_lossy(&out.stderr));
    let bad_text = text.replace("\"network\": \"mainnet\"", "\"network\": \"regtest\"");
    assert_ne!(bad_text, text, "mainnet.yaml no longer sets the network the way this test expects");
    let bad = tempfile::Builder::new().suffix(".yaml").tempfile().expect("temp file");
    std::fs::write(bad.path(), bad_text).expect("write");
    let out = validate(bad.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "envoy accepted a configuration txgate refuses");
    assert!(stderr.contains("txgate: configuration refused"), "{stderr}");
    assert!(stderr.contains("pay_to[0]"), "{stderr}");
}

// --- HCM hardening (issue 9) ---

/// Every HttpConnectionManager of a bootstrap, with the listener that holds it.
fn hcms(doc: &Value) -> Vec<(&Value, &Value)> {
    let mut found = Vec::new();
    for listener in doc["static_resources"]["listeners"].as_array().into_iter().flatten() {
        for chain in listener["filter_chains"].as_array().into_iter().flatten() {
            for filter in chain["filters"].as_array().into_iter().flatten() {
                if filter["name"] == "envoy.filters.network.http_connection_manager" {
                    found.push((listener, &filter["typed_config"]));
                }
            }
        }
    }
    found
}

fn comma_list(v: &Value) -> Vec<String> {
    v.as_str().unwrap_or("").split(',').map(|s| s.trim().to_ascii_lowercase()).filter(|s| !s.is_empty()).collect()
}

/// What a bootstrap lacks of the shipped hardening, one line per missing or wrong setting.
fn hardening_problems(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let hcms = hcms(doc);
    check(!hcms.is_empty(), "no HttpConnectionManager".into());
    for (listener, hcm) in hcms {
        let name = listener["name"].as_str().unwrap_or("?");
        // Flow control above 64 KiB..1 MiB per connection; Envoy's default is 1 MiB when unset.
        let limit = listener["per_connection_buffer_limit_bytes"].as_u64().unwrap_or(0);
        check((64 * 1024..=1024 * 1024).contains(&limit), format!("{name}: per_connection_buffer_limit_bytes {limit}"));
        check(hcm["normalize_path"] == true, format!("{name}: normalize_path"));
        check(hcm["merge_slashes"] == true, format!("{name}: merge_slashes"));
        let escaped = str_at(hcm, "/path_with_escaped_slashes_action");
        check(
            escaped == "REJECT_REQUEST" || escaped == "UNESCAPE_AND_REDIRECT",
            format!("{name}: path_with_escaped_slashes_action {escaped:?}"),
        );
        check(hcm["use_remote_address"] == true, format!("{name}: use_remote_address"));
        check(hcm["xff_num_trusted_hops"] == 0, format!("{name}: xff_num_trusted_hops must be set (0 at the edge)"));
        check(
            str_at(hcm, "/common_http_protocol_options/headers_with_underscores_action") == "REJECT_REQUEST",
            format!("{name}: headers_with_underscores_action"),
        );
        let filters: Vec<&str> =
            hcm["http_filters"].as_array().into_iter().flatten().map(|f| f["name"].as_str().unwrap_or("")).collect();
        let cors = filters.iter().position(|f| *f == "envoy.filters.http.cors");
        let txgate = filters.iter().position(|f| *f == "txgate");
        check(
            matches!((cors, txgate), (Some(c), Some(t)) if c < t),
            format!("{name}: envoy.filters.http.cors must come before txgate, got {filters:?}"),
        );
        // The header browsers must be allowed to send: the one txgate reads.
        let header = hcm["http_filters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["name"] == "txgate")
            .and_then(|f| serde_json::from_str::<Value>(str_at(f, "/typed_config/config/configuration/value")).ok())
            .and_then(|c| c["header"].as_str().map(str::to_string))
            .unwrap_or_else(|| "x-bitcoin-txid".to_string());
        for vhost in hcm["route_config"]["virtual_hosts"].as_array().into_iter().flatten() {
            let vname = vhost["name"].as_str().unwrap_or("?");
            let at_vhost = &vhost["typed_per_filter_config"]["envoy.filters.http.cors"];
            let routes = vhost["routes"].as_array().cloned().unwrap_or_default();
            let policies: Vec<&Value> = if at_vhost.is_null() {
                routes.iter().map(|r| &r["typed_per_filter_config"]["envoy.filters.http.cors"]).collect()
            } else {
                vec![at_vhost]
            };
            // Without a policy (or if any route lacks one) the filter does nothing there.
            check(
                !policies.is_empty() && policies.iter().all(|p| !p.is_null()),
                format!("{name}/{vname}: no CORS policy"),
            );
            for policy in policies.into_iter().filter(|p| !p.is_null()) {
                check(
                    str_at(policy, "/@type") == "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy",
                    format!("{name}/{vname}: CORS policy type"),
                );
                let origins = policy["allow_origin_string_match"].as_array().cloned().unwrap_or_default();
                check(!origins.is_empty(), format!("{name}/{vname}: allow_origin_string_match is empty"));
                check(
                    comma_list(&policy["allow_headers"]).contains(&header),
                    format!("{name}/{vname}: allow_headers lacks {header}"),
                );
                check(
                    comma_list(&policy["allow_headers"]).iter().any(|h| h == "payment-signature"),
                    format!("{name}/{vname}: allow_headers lacks payment-signature (x402 clients in browsers)"),
                );
                let exposed = comma_list(&policy["expose_headers"]);
                for h in ["retry-after", "payment-required", "payment-response", "link"] {
                    check(exposed.iter().any(|e| e == h), format!("{name}/{vname}: expose_headers lacks {h}"));
                }
            }
        }
    }
    // A flood of paused requests must meet a heap cap: shrink first, then refuse new requests.
    let overload = &doc["overload_manager"];
    let heap = overload["resource_monitors"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == "envoy.resource_monitors.fixed_heap");
    let heap_bytes = heap.and_then(|m| m["typed_config"]["max_heap_size_bytes"].as_u64()).unwrap_or(0);
    check(heap_bytes >= 64 << 20, format!("overload_manager: fixed_heap max_heap_size_bytes {heap_bytes}"));
    let threshold = |action: &str| {
        overload["actions"].as_array().into_iter().flatten().find(|a| a["name"] == action).and_then(|a| {
            let t = a["triggers"].as_array()?.iter().find(|t| t["name"] == "envoy.resource_monitors.fixed_heap")?;
            t["threshold"]["value"].as_f64()
        })
    };
    let shrink = threshold("envoy.overload_actions.shrink_heap");
    let stop = threshold("envoy.overload_actions.stop_accepting_requests");
    check(
        matches!((shrink, stop), (Some(s), Some(t)) if 0.5 <= s && s < t && t < 1.0),
        format!("overload_manager: shrink_heap {shrink:?} must trigger below stop_accepting_requests {stop:?} (< 1.0)"),
    );
    problems
}

#[test]
fn every_envoy_config_carries_the_hcm_hardening() {
    for path in yaml_files("envoy") {
        let doc = documents(&path).pop().expect("one document");
        let problems = hardening_problems(&doc);
        assert!(problems.is_empty(), "{}:\n  {}", path.display(), problems.join("\n  "));
    }
}

#[test]
fn removing_any_hardening_setting_is_noticed() {
    // The check above can fail: each setting taken out of envoy/local.yaml in turn.
    let doc = documents(&repo().join("envoy/local.yaml")).pop().expect("local.yaml");
    let hcm = "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config";
    let removals = [
        "/static_resources/listeners/0/per_connection_buffer_limit_bytes".to_string(),
        format!("{hcm}/normalize_path"),
        format!("{hcm}/merge_slashes"),
        format!("{hcm}/path_with_escaped_slashes_action"),
        format!("{hcm}/use_remote_address"),
        format!("{hcm}/xff_num_trusted_hops"),
        format!("{hcm}/common_http_protocol_options/headers_with_underscores_action"),
        format!("{hcm}/http_filters/0"),
        format!("{hcm}/route_config/virtual_hosts/0/typed_per_filter_config"),
        "/overload_manager/resource_monitors/0".to_string(),
        "/overload_manager/actions/0".to_string(),
        "/overload_manager/actions/1".to_string(),
    ];
    for pointer in removals {
        let mut broken = doc.clone();
        let (parent, key) = pointer.rsplit_once('/').expect("pointer");
        match broken.pointer_mut(parent).expect(&pointer) {
            Value::Object(map) => assert!(map.remove(key).is_some(), "{pointer} not in local.yaml"),
            Value::Array(items) => {
                items.remove(key.parse().expect("index"));
            }
            _ => panic!("{pointer}"),
        }
        assert!(!hardening_problems(&broken).is_empty(), "removing {pointer} went unnoticed");
    }
    let mut late_cors = doc.clone();
    late_cors.pointer_mut(&format!("{hcm}/http_filters")).unwrap().as_array_mut().unwrap().swap(0, 1);
    assert!(!hardening_problems(&late_cors).is_empty(), "CORS after txgate went unnoticed");
}

/// envoy/local.yaml as shipped, moved onto free ports: listener and admin on 127.0.0.1:0, the api and
/// explorer clusters on the test stack's demo API and devnet explorer, the wasm by absolute path.
fn local_yaml_on(stack: &Stack) -> (String, Value) {
    let mut doc = documents(&repo().join("envoy/local.yaml")).pop().expect("local.yaml");
    let listener = &mut doc["static_resources"]["listeners"][0];
    assert_eq!(listener["address"]["socket_address"]["address"], "127.0.0.1");
    listener["address"]["socket_address"]["port_value"] = json!(0);
    for filter in listener["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array_mut().unwrap() {
        if filter["name"] == "txgate" {
            filter["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
                json!(wasm_path().display().to_string());
        }
    }
    doc["admin"]["address"]["socket_address"]["port_value"] = json!(0);
    for cluster in doc["static_resources"]["clusters"].as_array_mut().unwrap() {
        let port = match cluster["name"].as_str() {
            Some("demo_api") => stack.api_port,
            Some("explorer") => stack.explorer_ports[0],
            other => panic!("local.yaml has an unexpected cluster {other:?}"),
        };
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
            ["port_value"] = json!(port);
    }
    (serde_norway::to_string(&doc).expect("YAML"), doc)
}

struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.1 request exactly as written (no client normalizes the path or checks header names).
fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Raw {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: api.test\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    stream.write_all(request.as_bytes()).expect("write");
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Raw { status, head: head.to_string(), body: body.to_string() }
}

fn json_body(reply: &Raw) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", reply.head, reply.body))
}

#[test]
fn the_shipped_local_config_closes_the_ways_around_the_gate() {
    let mut stack = Stack::start();
    let (yaml, doc) = local_yaml_on(&stack);
    let dir = stack.dir.path().join("local");
    std::fs::create_dir_all(&dir).expect("dir");
    // Declared after the stack, so this Envoy stops first.
    let (_envoy, admin_port, listener_port) =
        start_envoy(&dir, &yaml, 1).unwrap_or_else(|log| panic!("envoy/local.yaml did not start:\n{log:?}"));
    // The shipped Envoy serves this test; the stack's own Envoy only gets its final check.
    let own_ports = (stack.admin_port, stack.listener_port);
    stack.shared_backend.store(true, std::sync::atomic::Ordering::Relaxed);
    stack.admin_port = admin_port;
    stack.listener_port = listener_port;
    let port = listener_port;
    let seen_paths = |stack: &Stack| -> Vec<String> {
        stack.backend_seen().iter().map(|r| r["path"].as_str().unwrap_or("").to_string()).collect()
    };

    // Encoded slashes and backslashes: refused by Envoy itself (its counter, not a txgate reply).
    for path in ["/free/..%2fapi/hello", "/free%2f..%2fapi/hello", "/free/..%5capi/hello"] {
        let reply = raw(port, "GET", path, &[]);
        assert_eq!(reply.status, 400, "{path}: {}\n{}", reply.head, reply.body);
    }
    assert_eq!(stack.stat("http.api.downstream_rq_failed_path_normalization"), 3);
    // Dot segments and double slashes: priced as the canonical path Envoy forwards.
    let reply = raw(port, "GET", "/free/../api/hello", &[]);
    assert_eq!((reply.status, json_body(&reply)["error"].as_str()), (402, Some("payment_required")), "{}", reply.body);
    let reply = raw(port, "GET", "//premium/x", &[]);
    let body = json_body(&reply);
    assert_eq!((reply.status, body["error"].as_str()), (402, Some("payment_required")), "{}", reply.body);
    assert_eq!(body["payment"]["price_sats"], 5000, "//premium/x must cost what /premium costs");
    assert!(seen_paths(&stack).is_empty(), "reached the API: {:?}", seen_paths(&stack));
    // ... and a paid request through a non-canonical path reaches the API under the canonical one.
    let txid = stack.paid_and_mined(5000);
    stack.mine(1);
    let reply = raw(port, "GET", "//premium/./x", &[("x-bitcoin-txid", &txid)]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(seen_paths(&stack), ["/premium/x"]);

    // Header names with underscores (x_txgate_* forgeries for CGI-style backends): 400 from Envoy.
    let reply = raw(port, "GET", "/free/underscore", &[("x_txgate_paid_sats", "1")]);
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(stack.stat("http1.requests_rejected_with_underscores_in_headers"), 1);
    assert!(!seen_paths(&stack).contains(&"/free/underscore".to_string()));

    // X-Forwarded-For: Envoy appends the peer it sees, so the client's claim never becomes the
    // address Envoy (and txgate's source_address) trusts: the rightmost entry is the same either way.
    assert_eq!(raw(port, "GET", "/free/xff-none", &[]).status, 200);
    assert_eq!(raw(port, "GET", "/free/xff-forged", &[("X-Forwarded-For", "203.0.113.9")]).status, 200);
    let seen = stack.backend_seen();
    let xff = |path: &str| -> String {
        let r = seen.iter().find(|r| r["path"] == path).unwrap_or_else(|| panic!("{path} not seen"));
        r["headers"]["x-forwarded-for"].as_str().unwrap_or("").to_string()
    };
    let own = xff("/free/xff-none");
    assert!(!own.is_empty() && !own.contains(','), "Envoy sets x-forwarded-for to the peer it sees: {own:?}");
    let forged = xff("/free/xff-forged");
    assert_eq!(forged.rsplit(',').next().map(str::trim), Some(own.as_str()), "x-forwarded-for {forged:?}");

    // The free prefix: a canonical path skips txgate (its route disables the filter), and Envoy
    // drops the headers txgate would set; every other spelling goes through txgate, which prices
    // it as its canonical form.
    let free = |stack: &Stack| stack.stat("txgate_requests_free");
    let before = free(&stack);
    let forged = [("x-txgate-paid-sats", "999999"), ("x-txgate-txid", "forged"), ("x-txgate-unverified", "no")];
    for path in ["/free", "/free/", "/free/skip", "/free/a.b/.c~d:e@f!$&'()*+,=-?x=/../api&y=%2f"] {
        let reply = raw(port, "GET", path, &forged);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    assert_eq!(free(&stack), before, "txgate ran for a canonical free path");
    for request in stack.backend_seen().iter().filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/free"))) {
        let headers = request["headers"].as_object().map(|h| h.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
        assert!(!headers.iter().any(|h| h.starts_with("x-txgate-")), "{request}");
    }
    let reached = seen_paths(&stack).len();
    for path in ["/free;v=1/x", "/free/.../x", "/free/x%20y"] {
        let reply = raw(port, "GET", path, &forged);
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    assert_eq!(free(&stack), before + 3, "a non-canonical free path skipped txgate");
    for path in
        ["/free/..;/api/hello", "/free/..\\api/hello", "/free/%2e%2e/api/hello", "/FREE/x", "/freeloader", "/free%20/x"]
    {
        let reply = raw(port, "GET", path, &forged);
        assert!(matches!(reply.status, 400 | 402), "{path}: {} {}", reply.status, reply.body);
    }
    assert_eq!(seen_paths(&stack).len(), reached + 3, "{:?}", seen_paths(&stack));

    // CORS: a browser preflight is answered by Envoy (before txgate, which would say 402) ...
    let origin = str_at(
        &doc,
        "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/route_config/virtual_hosts/0/typed_per_filter_config/envoy.filters.http.cors/allow_origin_string_match/0/exact",
    )
    .to_string();
    assert!(!origin.is_empty(), "local.yaml allows no exact origin");
    let before = stack.backend_seen().len();
    let preflight = raw(
        port,
        "OPTIONS",
        "/api/x",
        &[
            ("Origin", &origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "x-bitcoin-txid"),
        ],
    );
    assert_eq!(preflight.status, 200, "{}\n{}", preflight.head, preflight.body);
    assert_eq!(preflight.header("access-control-allow-origin"), Some(origin.as_str()));
    let allowed = preflight.header("access-control-allow-headers").unwrap_or("").to_ascii_lowercase();
    assert!(allowed.split(',').any(|h| h.trim() == "x-bitcoin-txid"), "allow-headers {allowed:?}");
    assert!(preflight.header("access-control-allow-methods").unwrap_or("").contains("GET"));
    assert_eq!(stack.backend_seen().len(), before, "the preflight reached the API");
    // ... and the cross-origin 402 can be read by the page, exposed headers included.
    let reply = raw(port, "GET", "/api/x", &[("Origin", &origin)]);
    assert_eq!(reply.status, 402);
    assert_eq!(reply.header("access-control-allow-origin"), Some(origin.as_str()));
    assert!(reply.header("access-control-expose-headers").unwrap_or("").contains("retry-after"), "{}", reply.head);

    // Bodies of paused requests: while txgate waits for the explorer, Envoy holds at most the
    // per-connection buffer limit of each body and then stops reading (flow control). It does not
    // answer 413 (txgate pauses with StopAllIterationAndWatermark), and it does not buffer 960 KiB
    // per request either, as it would with the default 1 MiB limit.
    stack.set_fault(0, json!({"mode": "delay", "delay_ms": 1500}));
    let paused_before = stack.stat("http.api.downstream_flow_control_paused_reading_total");
    // Live from the allocator (the server.memory_allocated gauge only moves on a stats flush).
    let heap = || -> u64 {
        let url = format!("http://127.0.0.1:{admin_port}/memory");
        let text = ureq::get(&url).call().expect("/memory").body_mut().read_to_string().expect("body");
        let allocated = &serde_json::from_str::<Value>(&text).expect("JSON")["allocated"];
        allocated.as_str().and_then(|s| s.parse().ok()).or(allocated.as_u64()).expect("allocated")
    };
    let heap_before = heap();
    const N: usize = 24;
    const BODY: usize = 960 * 1024;
    let posts: Vec<_> = (0..N)
        .map(|i| {
            std::thread::spawn(move || {
                // One txid for all: they wait on one lookup (txgate caps lookups per client, not
                // waiters under 32 per lookup), so every body is held while it is paused.
                let txid = format!("{:064x}", 0xdead_0000_u64);
                let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
                let head = format!(
                    "POST /api/upload{i} HTTP/1.1\r\nHost: api.test\r\nx-bitcoin-txid: {txid}\r\n\
                     Content-Length: {BODY}\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(head.as_bytes()).expect("write");
                let mut writer = stream.try_clone().expect("clone");
                // The body is written beside the reader: Envoy may answer and close before taking it all.
                let body = std::thread::spawn(move || {
                    let _ = writer.write_all(&vec![b'x'; BODY]);
                });
                let mut bytes = Vec::new();
                let _ = stream.read_to_end(&mut bytes);
                let _ = body.join();
                String::from_utf8_lossy(&bytes).split(' ').nth(1).and_then(|s| s.parse::<u16>().ok()).unwrap_or(0)
            })
        })
        .collect();
    let mut heap_peak = heap_before;
    let started = Instant::now();
    while posts.iter().any(|p| !p.is_finished()) && started.elapsed() < Duration::from_secs(30) {
        heap_peak = heap_peak.max(heap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let statuses: Vec<u16> = posts.into_iter().map(|p| p.join().expect("post")).collect();
    stack.set_fault(0, json!({"mode": "none"}));
    assert!(statuses.iter().all(|s| *s == 402), "unpaid uploads: {statuses:?}");
    assert!(!seen_paths(&stack).iter().any(|p| p.starts_with("/api/upload")), "an unpaid upload reached the API");
    let paused = stack.stat("http.api.downstream_flow_control_paused_reading_total") - paused_before;
    assert!(paused >= N as u64 / 2, "Envoy stopped reading only {paused} of {N} oversized paused bodies");
    let growth = heap_peak.saturating_sub(heap_before);
    // Measured: about 0.2 MiB per paused request with the 64 KiB limit, 1 MiB each without it.
    assert!(growth < (N * BODY / 2) as u64, "heap grew {} KiB for {N} paused uploads", growth / 1024);
    (stack.admin_port, stack.listener_port) = own_ports;
}

#[test]
fn istio_patches_harden_every_workload_a_wasmplugin_gates() {
    let patch = |name: &str| documents(&repo().join("istio/patches").join(name));
    let mesh = patch("mesh-config.yaml");
    assert_eq!(
        str_at(&mesh[0], "/spec/meshConfig/pathNormalization/normalization"),
        "DECODE_AND_MERGE_SLASHES",
        "BASE (Istio's default) leaves %2F and // alone"
    );
    let filters = patch("hcm-hardening.yaml");
    for (path, plugin) in istio_documents().iter().filter(|(_, d)| d["kind"] == "WasmPlugin") {
        let (namespace, labels) = (&plugin["metadata"]["namespace"], &plugin["spec"]["selector"]["matchLabels"]);
        let filter = filters
            .iter()
            .find(|f| {
                f["kind"] == "EnvoyFilter"
                    && &f["metadata"]["namespace"] == namespace
                    && &f["spec"]["workloadSelector"]["labels"] == labels
            })
            .unwrap_or_else(|| panic!("{}: no EnvoyFilter for the workload {labels} in {namespace}", path.display()));
        let patches = filter["spec"]["configPatches"].as_array().expect("configPatches");
        let hcm = patches
            .iter()
            .find(|p| p["applyTo"] == "NETWORK_FILTER")
            .map(|p| &p["patch"]["value"]["typed_config"])
            .expect("an HCM patch");
        assert_eq!(str_at(hcm, "/common_http_protocol_options/headers_with_underscores_action"), "REJECT_REQUEST");
        let listener = patches.iter().find(|p| p["applyTo"] == "LISTENER").expect("a listener patch");
        assert_eq!(listener["patch"]["value"]["per_connection_buffer_limit_bytes"], 65536);
    }
}
