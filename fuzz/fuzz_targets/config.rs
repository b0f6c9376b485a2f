//! The config file parser and its checks (`Config::from_toml`), on
//! arbitrary text: `Ok`, or an error that names what is wrong; never a
//! panic (a config value that overflows a computation in the checks, a
//! listener address that cannot be parsed, ...).
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml(text, "fuzz.toml") {
        Ok(config) => config.validate("fuzz.toml").expect("an accepted config stays valid"),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
