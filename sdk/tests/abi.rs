//! Checks that every example module matches `sdk/ABI.md`, read from the
//! document itself: imports (module `perch`, names, exact signatures),
//! exports (names, kinds, exact signatures, which are required for the
//! manifest's triggers), the wasm features used, the memory against the
//! manifest's `limits.memory_pages`, and the constant values of
//! `perch_abi_version` and the event buffer.
//!
//! The modules are built by `sdk/build-examples.sh` into a directory of its
//! own under cargo's test tmpdir (a separate target dir, so it never waits on
//! the build lock of the `cargo test` that runs this). If they cannot be
//! built the tests fail and say what to install; they never pass without
//! having looked at a module.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use wasmparser::{
    ExternalKind, FuncType, Operator, Parser, Payload, TypeRef, ValType, Validator, WasmFeatures,
};

const SDK_DIR: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------- ABI.md --

/// What ABI.md says, parsed from its tables.
#[derive(Debug)]
struct Abi {
    features: WasmFeatures,
    /// Export name -> (signature, `None` for the memory; when it is required).
    exports: BTreeMap<String, (Option<FuncType>, Required)>,
    /// Import name (module `perch`) -> signature.
    imports: BTreeMap<String, FuncType>,
}

#[derive(Debug, Clone, PartialEq)]
enum Required {
    Yes,
    No,
    /// Required when the manifest has `triggers.<key>`.
    IfTrigger(String),
}

fn abi() -> &'static Abi {
    static ABI: OnceLock<Abi> = OnceLock::new();
    ABI.get_or_init(|| {
        let path = Path::new(SDK_DIR).join("ABI.md");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        parse_abi(&text)
    })
}

fn parse_abi(text: &str) -> Abi {
    let features = parse_features(text);
    let mut exports = BTreeMap::new();
    let mut imports = BTreeMap::new();
    let mut section = "";
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = if heading.starts_with("Exports") {
                "exports"
            } else if heading.starts_with("Imports") {
                "imports"
            } else {
                ""
            };
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        let code = |cell: &str| cell.trim_matches('`').to_string();
        let name = code(cells[0]);
        match section {
            "exports" => {
                let sig = (cells[1] != "memory").then(|| parse_signature(&code(cells[1])));
                let required = match cells[2] {
                    "yes" => Required::Yes,
                    "no" => Required::No,
                    other => {
                        let key = other
                            .strip_prefix("if the manifest has `triggers.")
                            .and_then(|k| k.strip_suffix('`'))
                            .unwrap_or_else(|| {
                                panic!("ABI.md: cannot read `required` = {other:?} of {name}")
                            });
                        Required::IfTrigger(key.to_string())
                    }
                };
                exports.insert(name, (sig, required));
            }
            "imports" => {
                imports.insert(name, parse_signature(&code(cells[1])));
            }
            _ => {}
        }
    }
    Abi {
        features,
        exports,
        imports,
    }
}

/// `(wasm32, MVP features plus `mutable-globals`, `sign-ext`, ...)` ->
/// WasmFeatures. The list may wrap across lines; it ends at `)`.
fn parse_features(text: &str) -> WasmFeatures {
    let (_, rest) = text
        .split_once("MVP features plus")
        .expect("ABI.md: no sentence saying which wasm features (\"MVP features plus ...\")");
    let list = &rest[..rest
        .find(')')
        .expect("ABI.md: the feature list ends with `)`")];
    let mut features = WasmFeatures::MVP;
    for name in list.split('`').skip(1).step_by(2) {
        features |= match name {
            "mutable-globals" => WasmFeatures::MUTABLE_GLOBAL,
            "sign-ext" => WasmFeatures::SIGN_EXTENSION,
            "bulk-memory" => WasmFeatures::BULK_MEMORY,
            "multi-value" => WasmFeatures::MULTI_VALUE,
            "nontrapping-fptoint" => WasmFeatures::SATURATING_FLOAT_TO_INT,
            "reference-types" => WasmFeatures::REFERENCE_TYPES,
            other => {
                panic!("ABI.md names wasm feature {other:?}, which this checker does not know")
            }
        };
    }
    features
}

/// `(a, b: i32, c: i64) -> i32` -> FuncType. Names without a type take the
/// next type given (`(ptr, len: i32)` is two i32).
fn parse_signature(sig: &str) -> FuncType {
    let val = |t: &str| match t.trim() {
        "i32" => ValType::I32,
        "i64" => ValType::I64,
        "f64" => ValType::F64,
        "f32" => ValType::F32,
        other => panic!("ABI.md: unknown type {other:?} in {sig:?}"),
    };
    let (params, results) = match sig.split_once("->") {
        Some((p, r)) => (p.trim(), vec![val(r)]),
        None => (sig.trim(), vec![]),
    };
    let inner = params
        .strip_prefix('(')
        .and_then(|p| p.strip_suffix(')'))
        .unwrap_or_else(|| panic!("ABI.md: signature {sig:?} is not `(...)`"));
    let mut types = Vec::new();
    let mut untyped = 0;
    for param in inner.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match param.split_once(':') {
            None => untyped += 1,
            Some((_, t)) => {
                types.extend(std::iter::repeat_n(val(t), untyped + 1));
                untyped = 0;
            }
        }
    }
    assert_eq!(
        untyped, 0,
        "ABI.md: parameters without a type at the end of {sig:?}"
    );
    FuncType::new(types, results)
}

#[test]
fn abi_md_is_read_as_written() {
    // Guards the parser above: if ABI.md's tables change shape, this says so
    // before the module checks report nonsense.
    let abi = abi();
    assert_eq!(abi.imports.len(), 10, "{:?}", abi.imports.keys());
    assert_eq!(
        abi.imports["emit"],
        FuncType::new(
            [
                ValType::I32,
                ValType::I32,
                ValType::I32,
                ValType::I32,
                ValType::F64
            ],
            [ValType::I32]
        )
    );
    assert_eq!(abi.imports["log"], FuncType::new([ValType::I32; 3], []));
    assert_eq!(abi.imports["now_ms"], FuncType::new([], [ValType::I64]));
    assert_eq!(abi.exports.len(), 8, "{:?}", abi.exports.keys());
    assert_eq!(
        abi.exports["perch_migrate"],
        (
            Some(FuncType::new([ValType::I32], [ValType::I32])),
            Required::No
        )
    );
    assert_eq!(abi.exports["memory"], (None, Required::Yes));
    assert_eq!(
        abi.exports["perch_on_event"],
        (
            Some(FuncType::new(
                [ValType::I32, ValType::I32, ValType::I64],
                [ValType::I32]
            )),
            Required::IfTrigger("topics".into())
        )
    );
    assert_eq!(abi.exports["perch_init"].1, Required::No);
    assert!(abi.features.contains(WasmFeatures::BULK_MEMORY));
    assert!(!abi.features.contains(WasmFeatures::SIMD));
}

// ------------------------------------------------------------ the modules --

/// Builds all examples once per test run; returns the output directory.
fn examples_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("perch-wasm");
        let out = base.join("perch-examples");
        let script = Path::new(SDK_DIR).join("build-examples.sh");
        let output = Command::new("bash")
            .arg(&script)
            .env("CARGO_TARGET_DIR", &base)
            .env("PERCH_EXAMPLES_OUT", &out)
            .output()
            .map_err(|e| format!("could not run bash {}: {e}", script.display()))?;
        if !output.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}\n{}\nIt needs the rustup target wasm32-unknown-unknown \
                 (`rustup target add wasm32-unknown-unknown`) and clang + lld for the C example \
                 (`apt-get install -y clang lld`); ./test.sh installs both.",
                script.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            ));
        }
        Ok(out)
    });
    match dir {
        Ok(dir) => dir,
        Err(e) => panic!("the example modules could not be built: {e}"),
    }
}

/// A module and the manifest it ships with.
struct Example {
    name: &'static str,
    wasm: Vec<u8>,
    manifest: toml::Table,
}

fn example(name: &'static str) -> Example {
    let dir = examples_dir();
    let read = |ext: &str| {
        let path = dir.join(format!("{name}.{ext}"));
        std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{} missing after build-examples.sh: {e}", path.display()))
    };
    let manifest = String::from_utf8(read("toml")).unwrap();
    Example {
        name,
        wasm: read("wasm"),
        manifest: manifest
            .parse()
            .unwrap_or_else(|e| panic!("{name}.toml: {e}")),
    }
}

/// What a module imports and exports, as the checks need it.
#[derive(Default)]
struct Shape {
    imports: BTreeMap<String, FuncType>,
    /// Export name -> signature (`None`: not a function, with its kind).
    exports: BTreeMap<String, Result<FuncType, ExternalKind>>,
    memory_min_pages: Option<u64>,
    /// Export name -> the i32 constant its body returns, if it is exactly
    /// `i32.const N; end`.
    constants: BTreeMap<String, i32>,
}

fn shape(ex: &Example) -> Shape {
    let mut types: Vec<FuncType> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new(); // imported functions first, then defined
    let mut imported_funcs = 0;
    let mut shape = Shape::default();
    let mut func_names: BTreeMap<u32, String> = BTreeMap::new();
    let mut bodies = Vec::new();
    for payload in Parser::new(0).parse_all(&ex.wasm) {
        match payload.unwrap_or_else(|e| panic!("{}: not a wasm module: {e}", ex.name)) {
            Payload::TypeSection(reader) => {
                for group in reader {
                    for ty in group.unwrap().into_types() {
                        types.push(ty.unwrap_func().clone());
                    }
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import.unwrap();
                    let TypeRef::Func(ty) = import.ty else {
                        panic!(
                            "{}: imports {}::{} which is not a function",
                            ex.name, import.module, import.name
                        );
                    };
                    assert_eq!(
                        import.module, "perch",
                        "{}: imports {}::{}; only module `perch` exists",
                        ex.name, import.module, import.name
                    );
                    func_types.push(ty);
                    imported_funcs += 1;
                    shape
                        .imports
                        .insert(import.name.to_string(), types[ty as usize].clone());
                }
            }
            Payload::FunctionSection(reader) => {
                func_types.extend(reader.into_iter().map(Result::unwrap))
            }
            Payload::MemorySection(reader) => {
                for memory in reader {
                    let memory = memory.unwrap();
                    assert!(
                        !memory.memory64 && !memory.shared,
                        "{}: memory must be 32-bit, not shared",
                        ex.name
                    );
                    assert!(
                        shape.memory_min_pages.is_none(),
                        "{}: more than one memory",
                        ex.name
                    );
                    shape.memory_min_pages = Some(memory.initial);
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.unwrap();
                    let entry = match export.kind {
                        ExternalKind::Func => {
                            func_names.insert(export.index, export.name.to_string());
                            Ok(types[func_types[export.index as usize] as usize].clone())
                        }
                        kind => Err(kind),
                    };
                    shape.exports.insert(export.name.to_string(), entry);
                }
            }
            Payload::CodeSectionEntry(body) => bodies.push(body),
            _ => {}
        }
    }
    for (i, body) in bodies.into_iter().enumerate() {
        let index = (imported_funcs + i) as u32;
        let Some(name) = func_names.get(&index) else {
            continue;
        };
        let ops: Vec<Operator> = body
            .get_operators_reader()
            .unwrap()
            .into_iter()
            .map(Result::unwrap)
            .collect();
        if let [Operator::I32Const { value }, Operator::End] = ops.as_slice() {
            shape.constants.insert(name.clone(), *value);
        }
    }
    shape
}

fn has_trigger(manifest: &toml::Table, key: &str) -> bool {
    match manifest.get("triggers").and_then(|t| t.get(key)) {
        Some(toml::Value::Array(a)) => !a.is_empty(),
        Some(toml::Value::Integer(n)) => *n > 0,
        Some(other) => panic!("triggers.{key} = {other}: unexpected type"),
        None => false,
    }
}

/// Every rule of ABI.md a module can break on its own.
fn check(name: &'static str) -> Shape {
    let ex = example(name);
    let abi = abi();

    if let Err(e) = Validator::new_with_features(abi.features).validate_all(&ex.wasm) {
        panic!("{name}: invalid with the wasm features ABI.md allows: {e}");
    }
    let shape = shape(&ex);

    for (import, ty) in &shape.imports {
        match abi.imports.get(import) {
            None => panic!("{name}: imports perch::{import}, which ABI.md does not have"),
            Some(want) => assert_eq!(ty, want, "{name}: perch::{import} has the wrong signature"),
        }
    }

    for (export, (want, required)) in &abi.exports {
        let needed = match required {
            Required::Yes => true,
            Required::No => false,
            Required::IfTrigger(key) => has_trigger(&ex.manifest, key),
        };
        match (shape.exports.get(export), want) {
            (None, _) => assert!(
                !needed,
                "{name}: missing export {export} (required: {required:?})"
            ),
            (Some(Err(ExternalKind::Memory)), None) => {}
            (Some(Ok(got)), Some(want)) => {
                assert_eq!(got, want, "{name}: export {export} has the wrong signature")
            }
            (Some(got), _) => panic!("{name}: export {export} is {got:?}, ABI.md wants {want:?}"),
        }
    }
    for export in shape.exports.keys() {
        // Linker symbols such as `__data_end` are harmless; anything else
        // is a function exported by mistake or an ABI name misspelled.
        assert!(
            abi.exports.contains_key(export) || export.starts_with("__"),
            "{name}: exports {export}, which ABI.md does not have"
        );
    }

    assert_eq!(
        shape.constants.get("perch_abi_version"),
        Some(&1),
        "{name}: perch_abi_version must return 1"
    );
    let pages = shape.memory_min_pages.expect("a memory") as i64;
    let limit = ex
        .manifest
        .get("limits")
        .and_then(|l| l.get("memory_pages"))
        .map(|p| p.as_integer().expect("memory_pages is an integer"))
        .unwrap_or(16);
    assert!(
        pages <= limit,
        "{name}: needs {pages} memory pages at start, the manifest allows {limit}"
    );
    let (Some(&ptr), Some(&len)) = (
        shape.constants.get("perch_event_buffer"),
        shape.constants.get("perch_event_buffer_len"),
    ) else {
        panic!("{name}: perch_event_buffer and perch_event_buffer_len should return constants");
    };
    assert!(len > 0, "{name}: empty event buffer");
    assert!(
        ptr >= 0 && (ptr as i64 + len as i64) <= pages * 65536,
        "{name}: event buffer {ptr}+{len} lies outside the initial memory ({pages} pages)"
    );
    shape
}

#[test]
fn threshold_alert_matches_the_abi() {
    let shape = check("threshold-alert");
    assert_eq!(
        shape.constants["perch_event_buffer_len"], 4096,
        "set by `event_buffer: 4096`"
    );
    assert!(!shape.exports.contains_key("perch_on_timer"));
}

#[test]
fn unit_convert_matches_the_abi() {
    check("unit-convert");
}

#[test]
fn moving_average_matches_the_abi() {
    let shape = check("moving-average");
    for import in ["state_get", "state_set", "publish"] {
        assert!(
            shape.imports.contains_key(import),
            "moving-average should use {import}"
        );
    }
}

#[test]
fn anomaly_zscore_matches_the_abi() {
    let shape = check("anomaly-zscore");
    assert!(shape.imports.contains_key("forward"));
}

#[test]
fn abi_probe_has_every_import_and_export() {
    let shape = check("abi-probe");
    let abi = abi();
    assert_eq!(
        shape.imports.keys().collect::<Vec<_>>(),
        abi.imports.keys().collect::<Vec<_>>(),
        "the SDK should declare every import of ABI.md with its signature"
    );
    for export in abi.exports.keys() {
        assert!(
            shape.exports.contains_key(export),
            "abi-probe: missing {export}"
        );
    }
    assert_eq!(
        shape.constants["perch_event_buffer_len"],
        16 * 1024,
        "the SDK's default event buffer"
    );
}

#[test]
fn event_stats_matches_the_abi() {
    let shape = check("event-stats");
    assert!(
        shape.exports.contains_key("perch_migrate"),
        "set by `migrate: migrate`"
    );
}

#[test]
fn c_threshold_matches_the_abi() {
    let shape = check("c-threshold");
    assert_eq!(shape.constants["perch_event_buffer_len"], 4096);
}
