//! What the host ABI (`sdk/ABI.md`) requires of a module's imports and
//! exports, checked when a version is compiled: a module that fails here is
//! refused at deploy with a message naming the import or export.

use wasmi::{ExternType, Module, ValType};

use super::manifest::Manifest;
use super::runtime::RuntimeError;

/// The imports perch offers, in module `perch`, with their signatures.
const IMPORTS: &[(&str, &[ValType], &[ValType])] = {
    use ValType::{F64, I32, I64};
    &[
        ("publish", &[I32, I32, I32, I32], &[I32]),
        ("emit", &[I32, I32, I32, I32, F64], &[I32]),
        ("emit_at", &[I32, I32, I32, I32, F64, I64], &[I32]),
        ("forward", &[I32, I32, I32, I32], &[I32]),
        ("state_get", &[I32, I32, I32, I32], &[I32]),
        ("state_set", &[I32, I32, I32, I32], &[I32]),
        ("state_delete", &[I32, I32], &[I32]),
        ("config_get", &[I32, I32, I32, I32], &[I32]),
        ("log", &[I32, I32, I32], &[]),
        ("now_ms", &[], &[I64]),
    ]
};

pub(super) fn signature(params: &[ValType], results: &[ValType]) -> String {
    let names = |tys: &[ValType]| {
        tys.iter()
            .map(|t| match t {
                ValType::I32 => "i32",
                ValType::I64 => "i64",
                ValType::F32 => "f32",
                ValType::F64 => "f64",
                ValType::V128 => "v128",
                ValType::FuncRef => "funcref",
                ValType::ExternRef => "externref",
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match results {
        [] => format!("func ({})", names(params)),
        _ => format!("func ({}) -> {}", names(params), names(results)),
    }
}

pub(super) fn extern_type(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => signature(f.params(), f.results()),
        ExternType::Memory(_) => "memory".into(),
        ExternType::Table(_) => "table".into(),
        ExternType::Global(_) => "global".into(),
    }
}

pub(super) fn check_imports(module: &Module) -> Result<(), RuntimeError> {
    for import in module.imports() {
        let offered = || {
            IMPORTS
                .iter()
                .map(|(n, _, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let known = (import.module() == "perch")
            .then(|| IMPORTS.iter().find(|(n, _, _)| *n == import.name()))
            .flatten();
        let Some((name, params, results)) = known else {
            return Err(RuntimeError::UnknownImport {
                module: import.module().to_owned(),
                name: import.name().to_owned(),
                ty: extern_type(import.ty()),
                offered: offered(),
            });
        };
        let matches = import
            .ty()
            .func()
            .is_some_and(|f| f.params() == *params && f.results() == *results);
        if !matches {
            return Err(RuntimeError::ImportSignature {
                name: (*name).to_owned(),
                found: extern_type(import.ty()),
                expected: signature(params, results),
            });
        }
    }
    Ok(())
}

pub(super) fn check_exports(module: &Module, manifest: &Manifest) -> Result<(), RuntimeError> {
    use ValType::{I32, I64};
    match module.get_export("memory") {
        Some(ExternType::Memory(ty)) => {
            let limit = manifest.limits.memory_pages;
            if ty.minimum() > u64::from(limit) {
                return Err(RuntimeError::MemoryTooLarge {
                    initial: ty.minimum(),
                    limit,
                });
            }
        }
        Some(other) => {
            return Err(RuntimeError::WrongExport {
                name: "memory",
                expected: "memory",
                found: extern_type(&other),
            })
        }
        None => {
            return Err(RuntimeError::MissingExport {
                name: "memory",
                signature: "memory",
                why: "",
            })
        }
    }
    let funcs: [(&'static str, &[ValType], bool, &'static str, &'static str); 7] = [
        ("perch_abi_version", &[], true, "func () -> i32", ""),
        ("perch_event_buffer", &[], true, "func () -> i32", ""),
        ("perch_event_buffer_len", &[], true, "func () -> i32", ""),
        ("perch_init", &[], false, "func () -> i32", ""),
        ("perch_migrate", &[I32], false, "func (i32) -> i32", ""),
        (
            "perch_on_event",
            &[I32, I32, I64],
            !manifest.triggers.topics.is_empty(),
            "func (i32, i32, i64) -> i32",
            " because the manifest has triggers.topics",
        ),
        (
            "perch_on_timer",
            &[I64],
            manifest.triggers.every_ms > 0,
            "func (i64) -> i32",
            " because the manifest has triggers.every_ms",
        ),
    ];
    for (name, params, required, sig, why) in funcs {
        match module.get_export(name) {
            Some(ExternType::Func(f)) if f.params() == params && f.results() == [I32] => {}
            Some(other) => {
                return Err(RuntimeError::WrongExport {
                    name,
                    expected: sig,
                    found: extern_type(&other),
                })
            }
            None if required => {
                return Err(RuntimeError::MissingExport {
                    name,
                    signature: sig,
                    why,
                })
            }
            None => {}
        }
    }
    Ok(())
}

/// The declared size of a code section that declares zero function bodies
/// but more bytes than that count takes, if `wasm` has one. Such a module is
/// invalid, but wasmi 2.0's parser divides the section's size by its count
/// before it notices (a division by zero: a panic, and with `panic = "abort"`
/// the whole gateway), so it is refused before wasmi sees it. Found by the
/// `bundle` fuzz target.
pub(super) fn empty_code_section_with_bytes(wasm: &[u8]) -> Option<u32> {
    /// An unsigned LEB128 u32 at `at`: its value and its length.
    fn leb(wasm: &[u8], at: usize) -> Option<(u32, usize)> {
        let mut value = 0u32;
        for i in 0..5 {
            let byte = *wasm.get(at + i)?;
            value |= u32::from(byte & 0x7f).checked_shl(7 * i as u32)?;
            if byte & 0x80 == 0 {
                return Some((value, i + 1));
            }
        }
        None
    }
    let mut at = 8;
    while at < wasm.len() {
        let id = wasm[at];
        let (size, n) = leb(wasm, at + 1)?;
        let payload = at + 1 + n;
        if id == 10 {
            let (count, n) = leb(wasm, payload)?;
            return (count == 0 && size as usize > n).then_some(size);
        }
        at = payload.checked_add(size as usize)?;
    }
    None
}
