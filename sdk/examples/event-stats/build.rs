//! Links the `.wasm` with a 64 KiB stack instead of Rust's default 1 MiB, so
//! the module's memory fits the default `limits.memory_pages` (16 pages of
//! 64 KiB): with the default it needs 17 and the gateway refuses it.
fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("wasm32") {
        println!("cargo::rustc-link-arg-cdylib=-zstack-size=65536");
    }
}
