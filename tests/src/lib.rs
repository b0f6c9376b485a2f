//! Helpers live in `tests/tests/util.rs`; this crate only hosts the end-to-end tests.
