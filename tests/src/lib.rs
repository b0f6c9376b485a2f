//! End-to-end tests of perch live in `tests/` (one binary, `tests/main.rs`);
//! helpers shared by them are in `tests/util.rs`. This crate has no code.
