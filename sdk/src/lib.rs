//! The guest library for perch functions. The host ABI it targets is in
//! `sdk/ABI.md`; the functions issue fills this crate in.
#![no_std]

/// The host ABI version this SDK speaks.
pub const ABI_VERSION: u32 = 1;
