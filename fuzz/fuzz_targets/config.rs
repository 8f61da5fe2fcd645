//! Arbitrary bytes as the plugin configuration: must be a Config or a refusal naming a field.
#![no_main]

use libfuzzer_sys::fuzz_target;
use txgate::config::Config;

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(config) => {
            assert!(!config.pay_to.is_empty() && !config.explorers.is_empty());
            assert!(config.default_policy.price_sats >= 1);
        }
        Err(err) => assert!(!err.field.is_empty() && !err.reason.is_empty(), "{err:?}"),
    }
});
