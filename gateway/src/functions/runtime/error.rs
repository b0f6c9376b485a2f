//! Why a module could not be deployed or instantiated.

use super::*;

/// Why a module could not be deployed or instantiated. Each says what is
/// wrong with the module and, where it helps, what to do.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(
        "not a WebAssembly module: the file starts with {found} instead of the wasm magic \
         00 61 73 6d (\"\\0asm\"); deploy the .wasm file your toolchain built, not source, \
         text (.wat) or an archive"
    )]
    NotWasm { found: String },
    #[error(
        "this is a WebAssembly component (or another wasm binary version), not a core module; \
         perch runs core modules: build for wasm32-unknown-unknown (or wasm32-wasip1 as a reactor)"
    )]
    NotCoreModule,
    #[error("the module is not valid WebAssembly for perch: {0}")]
    Invalid(String),
    #[error(
        "the module does not export `{name}` ({signature}), which the perch ABI requires{why}; \
         see sdk/ABI.md"
    )]
    MissingExport {
        name: &'static str,
        signature: &'static str,
        why: &'static str,
    },
    #[error(
        "the module exports `{name}` as {found}, but the perch ABI needs {expected}; see sdk/ABI.md"
    )]
    WrongExport {
        name: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error(
        "the module imports `{module}.{name}` ({ty}), which perch does not offer; a function may \
         import only these, from module `perch`: {offered}"
    )]
    UnknownImport {
        module: String,
        name: String,
        ty: String,
        offered: String,
    },
    #[error(
        "the module imports `perch.{name}` as {found}, but perch offers it as {expected}; \
         rebuild it against perch ABI version {ABI_VERSION}"
    )]
    ImportSignature {
        name: String,
        found: String,
        expected: String,
    },
    #[error(
        "the module speaks perch ABI version {found}, but this gateway speaks version \
         {ABI_VERSION}; rebuild it with an SDK for ABI version {ABI_VERSION}"
    )]
    AbiVersion { found: i32 },
    #[error(
        "the module's memory starts at {initial} pages of 64 KiB, more than the manifest's \
         limits.memory_pages = {limit}; raise the limit or make the module's memory smaller"
    )]
    MemoryTooLarge { initial: u64, limit: u32 },
    #[error(
        "the event buffer (perch_event_buffer() = {ptr}, perch_event_buffer_len() = {len}) does \
         not lie inside the module's memory of {memory} bytes"
    )]
    EventBuffer { ptr: i32, len: i32, memory: usize },
    #[error("the module could not be instantiated: {0}")]
    Instantiate(String),
    #[error("calling `{export}` failed while starting the module: {failure}")]
    Start {
        export: &'static str,
        failure: Failure,
    },
    #[error(
        "`perch_migrate` failed on the state version {from} left: {failure}; nothing was \
         switched and the state is unchanged: fix the migration (it must return 0), or deploy \
         a version without perch_migrate"
    )]
    Migrate { from: String, failure: Failure },
    /// The state could not be prepared for the takeover; says why.
    #[error("{0}")]
    Upgrade(String),
}
