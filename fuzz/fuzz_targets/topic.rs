//! The topic matcher shared by the broker's ACLs and the functions'
//! triggers and publish rules (`perch::kit::topic`), against the rules of
//! MQTT 3.1.1 / 5.0 §4.7 restated plainly:
//!
//! - a valid name matches itself as a filter, and matches `#`;
//! - a filter without wildcards matches exactly the name equal to it;
//! - `covers(outer, inner)` (an ACL check) is sound: any name `inner`
//!   matches, `outer` matches too;
//! - nothing panics, for valid or invalid input.
//!
//! The input is up to three strings separated by NUL bytes: two filters
//! and a name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::kit::topic::{covers, matches, validate_filter, validate_name};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\0');
    let outer = parts.next().unwrap_or("");
    let inner = parts.next().unwrap_or("");
    let name = parts.next().unwrap_or("");
    // Invalid input must not panic either.
    let _ = (matches(outer, name), covers(outer, inner));

    let name_ok = validate_name(name).is_ok();
    let outer_ok = validate_filter(outer).is_ok();
    let inner_ok = validate_filter(inner).is_ok();
    if name_ok {
        assert!(matches(name, name), "{name:?} must match itself");
        if !name.starts_with('$') {
            assert!(matches("#", name), "# must match {name:?}");
        }
    }
    if name_ok && outer_ok && !outer.contains(['+', '#']) {
        assert_eq!(matches(outer, name), outer == name, "{outer:?} vs {name:?}");
    }
    if name_ok && outer_ok && inner_ok && covers(outer, inner) && matches(inner, name) {
        assert!(
            matches(outer, name),
            "covers({outer:?}, {inner:?}) but {inner:?} matches {name:?} and {outer:?} does not"
        );
    }
});
