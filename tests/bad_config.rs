//! A configuration the filter refuses stops Envoy from starting, with the reason in its log.

mod common;

use common::{envoy_refuses, plugin_config, MERCHANT};
use serde_json::json;

#[test]
fn each_bad_field_is_refused_loudly() {
    let cases = [
        (json!({"pay_to": ["bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"]}), "pay_to[0]"),
        (json!({"price_sats": 0}), "price_sats"),
        (json!({"max_age": "1 day"}), "max_age"),
        (json!({"network": null}), "network: is required"),
        (json!({"surprise": true}), "unknown field `surprise`"),
    ];
    for (overrides, expected) in cases {
        let plugin = plugin_config(1, &overrides);
        let (refused, log) = envoy_refuses(&plugin);
        assert!(refused, "Envoy started with {overrides}");
        assert!(log.contains("txgate: configuration refused"), "{overrides}: {log}");
        assert!(log.contains(expected), "{overrides}: expected {expected:?} in\n{log}");
    }
}

#[test]
fn a_good_configuration_starts() {
    let plugin = plugin_config(1, &json!({"pay_to": [MERCHANT]}));
    let (refused, log) = envoy_refuses(&plugin);
    assert!(!refused, "{log}");
    // Started with txgate configured, not merely started.
    assert!(log.contains("txgate configured: scope txgate/"), "{log}");
    assert!(log.contains("network regtest, 1 address(es), price 1000 sats"), "{log}");
    assert!(!log.contains("configuration refused"), "{log}");
}
