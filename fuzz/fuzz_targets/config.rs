//! The config parsers (TOML, the seed's now.json, a JSON app spec) never panic; a config that
//! parses survives a round trip through its normalized JSON form.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serverless_core::{AppSpec, Config};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for config in [Config::from_toml(text), Config::from_now_json(text)]
        .into_iter()
        .flatten()
    {
        // Every app of a valid config is a valid app spec again once normalized.
        for app in &config.apps {
            let json = serde_json::to_string(app).expect("an app spec serializes");
            let again = AppSpec::from_json(&json)
                .unwrap_or_else(|e| panic!("normalized app spec {json} does not parse: {e}"));
            assert_eq!(&again, app, "round trip changed the app spec");
        }
    }
    let _ = AppSpec::from_json(text);
});
