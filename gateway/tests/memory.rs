//! Memory regressions that measure this process's resident memory. They
//! live in a test binary of their own: the unit tests run many at a time in
//! one process, and their allocations would count here too.

use perch::functions::manifest::Manifest;
use perch::functions::runtime::{Runtime, Seed};
use tokio::sync::mpsc;

#[path = "../benches/common/module_200kb.rs"]
mod module_200kb;

/// Resident memory of this process, from /proc.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages in /proc/self/statm");
    pages * 4096
}

/// Regression: every version compiled on the gateway's one wasmi engine
/// stayed in memory for good (wasmi's code map only grows; what it kept:
/// docs/performance.md). Each version now has its own engine, and
/// deploying and dropping 200 versions of a 200 KB module leaves the
/// resident memory where it was, within the bound below.
#[test]
fn a_replaced_version_gives_its_memory_back() {
    let (tx, _rx) = mpsc::channel(64);
    let rt = Runtime::new(tx);
    let wasm = module_200kb::module_200kb();
    let manifest = Manifest::from_toml(
        "name = \"big\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"sensors/#\"]\n",
    )
    .unwrap();
    let deploy = || {
        let compiled = rt.compile(manifest.clone(), &wasm).unwrap();
        let mut instance = rt
            .instantiate(&compiled, Seed::default())
            .map_err(|(e, _)| e)
            .unwrap();
        // Translate a function or two, as a first event does.
        instance.on_event(b"sensors/x", b"3", 0).unwrap();
    };
    for _ in 0..20 {
        deploy();
    }
    let before = rss_bytes();
    for _ in 0..200 {
        deploy();
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 20 * 1024 * 1024,
        "200 deploys of a 200 KB module kept {grown} bytes"
    );
}
