//! The deploy path up to the switch-over, on arbitrary bytes: the deploy
//! request's options line, the bundle header, the manifest (TOML), and the
//! module's validation against the ABI (`Runtime::compile`). Every input
//! must end in `Ok` or a typed error whose message is not empty; none may
//! panic, hang or allocate without bound.
//!
//! The bundle goes through `bundle::parse` (both formats: lengths,
//! signature, content hash) and the trust check, as the deploy path does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perch::functions::bundle;
use perch::functions::control::decode_deploy_request;
use perch::functions::manifest::Manifest;
use perch::functions::runtime::Runtime;

fuzz_target!(|data: &[u8]| {
    let (_options, bundle) = match decode_deploy_request(data) {
        Ok(parts) => parts,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let bundle = match bundle::parse(bundle) {
        Ok(parsed) => parsed,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    if let Err(e) = bundle::check_trust(&bundle, &[]) {
        assert!(!e.to_string().is_empty());
    }
    let (manifest, wasm) = (bundle.manifest, bundle.wasm);
    let manifest = match Manifest::from_toml(manifest) {
        Ok(m) => m,
        Err(e) => return assert!(!e.to_string().is_empty()),
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(1);
    if let Err(e) = Runtime::new(tx).compile(manifest, wasm) {
        assert!(!e.to_string().is_empty());
    }
});
