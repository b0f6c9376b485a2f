//! The function author's loop on a laptop, without a gateway: `perch fn new`
//! scaffolds a project, `perch fn build` turns it into a module checked
//! against the real runtime, `perch fn test` runs it on sample events in that
//! runtime and prints what it would publish, emit and forward.
//!
//! Templates are the SDK's own, shipped inside the binary: the Rust project
//! is `sdk/examples/threshold-alert` (handler, tests, build script) with a
//! vendored copy of `perch-sdk` in `perch-sdk/`, so it builds with nothing
//! but crates.io; the C project is `sdk/examples/c-threshold`; the
//! AssemblyScript project is `sdk/examples/as-threshold` (the handler and a
//! small ABI layer, `assembly/perch.ts`). All three build and deploy as they
//! are.
//!
//! `perch fn build` tells what it does and how long each step took: it
//! installs the toolchain piece that is missing (the rustup target
//! `wasm32-unknown-unknown`; the AssemblyScript compiler, pinned in the
//! project's package.json, with npm into the project's node_modules),
//! compiles, then checks the module in the real runtime.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context as _};

use crate::functions::manifest::Manifest;
use crate::functions::runtime::{Runtime, Seed};

/// The languages `perch fn new` can start a function in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    C,
    Assemblyscript,
}

/// The AssemblyScript compiler new projects pin (package.json); `perch fn
/// build` installs the version the project's package.json names.
pub const ASSEMBLYSCRIPT_VERSION: &str = "0.27.37";

/// The SDK, vendored into every new Rust project.
const SDK_FILES: [(&str, &str); 9] = [
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    (
        "src/config_cache.rs",
        include_str!("../../../sdk/src/config_cache.rs"),
    ),
    ("src/json.rs", include_str!("../../../sdk/src/json.rs")),
    (
        "src/context.rs",
        include_str!("../../../sdk/src/context.rs"),
    ),
    ("src/error.rs", include_str!("../../../sdk/src/error.rs")),
    ("src/export.rs", include_str!("../../../sdk/src/export.rs")),
    ("src/math.rs", include_str!("../../../sdk/src/math.rs")),
    ("src/sys.rs", include_str!("../../../sdk/src/sys.rs")),
    (
        "src/testing.rs",
        include_str!("../../../sdk/src/testing.rs"),
    ),
];

/// The vendored SDK's manifest: sdk/Cargo.toml with the workspace's
/// versions written out (a test checks they match).
const SDK_CARGO_TOML: &str = r#"[package]
name = "perch-sdk"
version = "VERSION"
edition = "2021"
publish = false
description = "Write perch functions in Rust (vendored by `perch fn new`; sdk/ in perch's repository)"

[features]
default = ["panic-handler"]
panic-handler = []

[dependencies]
heapless = { version = "0.9", default-features = false, features = ["serde"] }
serde-json-core = { version = "0.7", default-features = false, features = ["heapless"] }
libm = "0.2"
serde = { version = "1.0", default-features = false, features = ["derive"] }

[target.'cfg(not(target_arch = "wasm32"))'.dependencies]
toml = "0.9"
"#;

const RUST_LIB: &str = include_str!("../../../sdk/examples/threshold-alert/src/lib.rs");
const RUST_BUILD: &str = include_str!("../../../sdk/examples/threshold-alert/build.rs");
const RUST_MANIFEST: &str = include_str!("../../../sdk/examples/threshold-alert/manifest.toml");
const C_SOURCE: &str = include_str!("../../../sdk/examples/c-threshold/threshold.c");
const C_MANIFEST: &str = include_str!("../../../sdk/examples/c-threshold/manifest.toml");
const AS_INDEX: &str = include_str!("../../../sdk/examples/as-threshold/assembly/index.ts");
const AS_PERCH: &str = include_str!("../../../sdk/examples/as-threshold/assembly/perch.ts");
const AS_CONFIG: &str = include_str!("../../../sdk/examples/as-threshold/asconfig.json");
const AS_PACKAGE: &str = include_str!("../../../sdk/examples/as-threshold/package.json");
const AS_MANIFEST: &str = include_str!("../../../sdk/examples/as-threshold/manifest.toml");

/// Sample events for `perch fn test`, one JSON object a line.
const EVENTS: &str = r#"{"topic":"sensors/t1/temperature","payload":{"device":"t1","temperature":21.5}}
{"topic":"sensors/t1/temperature","payload":{"device":"t1","temperature":31.5}}
{"topic":"sensors/kitchen/temperature","payload":{"temperature":35}}
"#;

/// Creates a function project `name` in `dir` (default `./<name>`).
pub fn new(name: &str, lang: Lang, dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    check_name(name)?;
    let dir = dir
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!(
            "{} exists and is not empty; pick another name or --dir, or remove it",
            dir.display()
        );
    }
    let mut files: Vec<(String, String)> = vec![
        ("events.jsonl".into(), EVENTS.into()),
        ("README.md".into(), readme(name, lang)),
        (
            ".gitignore".into(),
            "/target\n/build\n/node_modules\n".into(),
        ),
    ];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), rust_cargo_toml(name)));
            files.push(("build.rs".into(), RUST_BUILD.into()));
            files.push(("manifest.toml".into(), rename(RUST_MANIFEST, name)?));
            files.push((
                "src/lib.rs".into(),
                RUST_LIB.replace("`threshold-alert`", &format!("`{name}`")),
            ));
            let version = env!("CARGO_PKG_VERSION");
            files.push((
                "perch-sdk/Cargo.toml".into(),
                SDK_CARGO_TOML.replace("VERSION", version),
            ));
            for (path, text) in SDK_FILES {
                files.push((format!("perch-sdk/{path}"), text.into()));
            }
        }
        Lang::C => {
            files.push(("manifest.toml".into(), rename(C_MANIFEST, name)?));
            files.push(("function.c".into(), C_SOURCE.into()));
        }
        Lang::Assemblyscript => {
            files.push(("manifest.toml".into(), rename(AS_MANIFEST, name)?));
            files.push(("package.json".into(), as_package_json(name)?));
            files.push(("asconfig.json".into(), AS_CONFIG.into()));
            files.push((
                "assembly/index.ts".into(),
                AS_INDEX.replacen("// as-threshold:", &format!("// {name}:"), 1),
            ));
            files.push(("assembly/perch.ts".into(), AS_PERCH.into()));
        }
    }
    for (path, text) in files {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// Names become topics, crate names and file names: keep them plain.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !ok {
        bail!(
            "{name:?} is not a usable function name: use 1 to 64 lowercase letters, digits \
             and '-', starting with a letter (e.g. door-alarm)"
        );
    }
    Ok(())
}

/// A template manifest with its `name` line replaced.
fn rename(manifest: &str, name: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    let mut done = false;
    for line in manifest.lines() {
        if !done && line.starts_with("name = ") {
            let _ = writeln!(out, "name = \"{name}\"");
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    anyhow::ensure!(done, "the template manifest has no name line (a perch bug)");
    Ok(out)
}

/// The template's package.json with the project's name; the compiler
/// version stays the one the template pins.
fn as_package_json(name: &str) -> anyhow::Result<String> {
    let mut package: serde_json::Value =
        serde_json::from_str(AS_PACKAGE).context("the template package.json (a perch bug)")?;
    package["name"] = name.into();
    anyhow::ensure!(
        package["devDependencies"]["assemblyscript"] == ASSEMBLYSCRIPT_VERSION,
        "the template package.json pins another assemblyscript than {ASSEMBLYSCRIPT_VERSION} \
         (a perch bug)"
    );
    Ok(serde_json::to_string_pretty(&package)? + "\n")
}

fn rust_cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2021"
publish = false

[lib]
# cdylib: the .wasm the gateway runs. `cargo test` still runs the unit
# tests in src/ natively against perch_sdk::testing::TestHost. Adding
# "rlib" (for tests in tests/) costs speed: rustc then inlines less across
# crates into the .wasm (the SDK's threshold-alert: up to 1.4x slower).
crate-type = ["cdylib"]

[dependencies]
perch-sdk = {{ path = "perch-sdk" }}
# Without std: a function must not link it.
serde = {{ version = "1.0", default-features = false, features = ["derive"] }}

# opt-level 3: the gateway's interpreter runs inlined code faster (the
# SDK's threshold-alert example: 1.2-1.3x) for a few KB more module.
[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A project of its own, even inside another cargo workspace.
[workspace]
"#
    )
}

fn readme(name: &str, lang: Lang) -> String {
    let source = match lang {
        Lang::Rust => "src/lib.rs (the handler and its tests; `cargo test` runs them natively)",
        Lang::C => "function.c (against the raw ABI: no libc, no allocator)",
        Lang::Assemblyscript => {
            "assembly/index.ts (assembly/perch.ts wraps the ABI; `perch fn build` installs \
             the AssemblyScript compiler pinned in package.json into node_modules with npm)"
        }
    };
    format!(
        "# {name}\n\n\
         A perch function. The handler is in {source}; manifest.toml says what \
         triggers it, what it may publish, its limits and its config.\n\n\
         ```sh\n\
         perch fn build                 # -> build/{name}.wasm, checked against the perch runtime\n\
         perch fn test                  # runs it on events.jsonl in the real runtime, no gateway needed\n\
         perch fn deploy build/{name}.wasm --manifest manifest.toml   # to a running gateway\n\
         ```\n\n\
         events.jsonl holds one event a line: `{{\"topic\": ..., \"payload\": <JSON, or a string \
         for raw text>}}`, optionally with `\"timestamp_ms\"`.\n"
    )
}

/// Prints what `perch fn build` is doing, and how long it took.
struct Progress {
    start: Instant,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
        }
    }

    /// Runs one step: says what it is before (tools print below it), and
    /// how long it took after it succeeded.
    fn step<T>(
        &self,
        doing: &str,
        done: &str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        eprintln!("perch fn build: {doing}");
        let start = Instant::now();
        let value = f()?;
        eprintln!("perch fn build: {done} in {}", seconds(start));
        Ok(value)
    }
}

fn seconds(since: Instant) -> String {
    format!("{:.1} s", since.elapsed().as_secs_f64())
}

/// What `perch fn build` made (`--json` prints it).
#[derive(Debug, serde::Serialize)]
pub struct Built {
    /// The function's name and version, from its manifest.
    pub name: String,
    pub version: String,
    /// `build/NAME.wasm`, the module checked in the runtime (absolute).
    pub wasm: PathBuf,
    pub manifest: PathBuf,
    pub bytes: usize,
    /// SHA-256 of the module, as the gateway reports it once deployed.
    pub sha256: String,
    /// How long the whole build took.
    pub seconds: f64,
    #[serde(skip)]
    pub parsed: Manifest,
}

/// Builds the project in `dir` to `dir/build/<name>.wasm` and checks it
/// against the runtime.
pub fn build(dir: &Path) -> anyhow::Result<Built> {
    let progress = Progress::new();
    let manifest = read_manifest(dir)?;
    let out_dir = dir.join("build");
    let out = out_dir.join(format!("{}.wasm", manifest.name));
    // Built beside it and renamed once the runtime accepted it, so
    // build/NAME.wasm is always the last module that runs.
    let partial = out_dir.join(format!("{}.partial.wasm", manifest.name));
    let built = if dir.join("Cargo.toml").exists() {
        create_dir(&out_dir)?;
        build_rust(&progress, dir, &partial)
    } else if dir.join("asconfig.json").exists() {
        create_dir(&out_dir)?;
        build_assemblyscript(&progress, dir, &partial)
    } else if let Some(source) = c_source(dir)? {
        create_dir(&out_dir)?;
        build_c(&progress, &source, &partial)
    } else {
        bail!(
            "{} has no Cargo.toml, asconfig.json or .c file: is it a function project? \
             Start one with `perch fn new NAME`",
            dir.display()
        );
    };
    let checked = built.and_then(|()| check(&progress, &manifest, &partial, &out));
    let _ = std::fs::remove_file(&partial);
    let (wasm, compiled) = checked?;
    eprintln!(
        "perch fn build: {} ({} bytes, sha256 {}) runs in the perch runtime; built in {}\n  \
         deploy it: perch fn deploy {} --manifest {}",
        out.display(),
        wasm.len(),
        compiled.sha256,
        seconds(progress.start),
        out.display(),
        dir.join("manifest.toml").display()
    );
    Ok(Built {
        name: manifest.name.clone(),
        version: manifest.version.to_string(),
        // Absolute: a script reading the JSON may run elsewhere.
        wasm: std::path::absolute(&out).unwrap_or(out),
        manifest: std::path::absolute(dir.join("manifest.toml"))?,
        bytes: wasm.len(),
        sha256: compiled.sha256.clone(),
        seconds: progress.start.elapsed().as_secs_f64(),
        parsed: manifest,
    })
}

/// Loads the module at `partial` into the real runtime and, once it
/// starts there, writes it to `out`.
fn check(
    progress: &Progress,
    manifest: &Manifest,
    partial: &Path,
    out: &Path,
) -> anyhow::Result<(Vec<u8>, crate::functions::runtime::Compiled)> {
    let wasm =
        std::fs::read(partial).with_context(|| format!("cannot read {}", partial.display()))?;
    let compiled = progress.step(
        &format!("checking {} in the perch runtime", out.display()),
        "checked",
        || {
            let (tx, _rx) = tokio::sync::mpsc::channel(1);
            let runtime = Runtime::new(tx);
            let compiled = runtime.compile(manifest.clone(), &wasm).with_context(|| {
                format!(
                    "the module just built is not one perch can run (sdk/ABI.md says what a \
                     module must export and may import); {} is unchanged",
                    out.display()
                )
            })?;
            runtime
                .instantiate(&compiled, Seed::default())
                .map_err(|(e, _)| e)
                .with_context(|| {
                    format!(
                        "the module just built does not start in the perch runtime; {} is \
                         unchanged",
                        out.display()
                    )
                })?;
            Ok(compiled)
        },
    )?;
    std::fs::write(out, &wasm).with_context(|| format!("cannot write {}", out.display()))?;
    Ok((wasm, compiled))
}

fn create_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

/// The manifest of the project in `dir`.
pub fn read_manifest(dir: &Path) -> anyhow::Result<Manifest> {
    let path = dir.join("manifest.toml");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: is {} a function project? Start one with `perch fn new NAME`",
            path.display(),
            dir.display()
        )
    })?;
    Manifest::from_toml(&text)
        .with_context(|| format!("{} is not a valid manifest", path.display()))
}

fn c_source(dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "c") {
            sources.push(path);
        }
    }
    match sources.len() {
        0 => Ok(None),
        1 => Ok(sources.pop()),
        _ => bail!(
            "{} has several .c files; `perch fn build` compiles one (build others with clang \
             yourself, see sdk/examples/c-threshold/build.sh)",
            dir.display()
        ),
    }
}

fn build_rust(progress: &Progress, dir: &Path, out: &Path) -> anyhow::Result<()> {
    ensure_wasm_target(progress)?;
    let cargo_toml = std::fs::read_to_string(dir.join("Cargo.toml"))?;
    let package: toml::Value = toml::from_str(&cargo_toml)
        .with_context(|| format!("{} is not valid TOML", dir.join("Cargo.toml").display()))?;
    let crate_name = package
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .context("Cargo.toml has no [package] name")?
        .replace('-', "_");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.join("target"));
    progress.step(
        "compiling (cargo build --release --target wasm32-unknown-unknown)",
        "compiled",
        || {
            let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
                .arg("--manifest-path")
                .arg(dir.join("Cargo.toml"))
                .env("CARGO_TARGET_DIR", &target_dir)
                // Tools' output is progress: stderr, so stdout carries only
                // what perch prints (the JSON of --json).
                .stdout(std::io::stderr())
                .status()
                .context("cannot run cargo: is Rust installed (https://rustup.rs)?")?;
            anyhow::ensure!(
                status.success(),
                "cargo could not build the function (its errors are above); fix them and run \
                 `perch fn build` again"
            );
            Ok(())
        },
    )?;
    let built = target_dir.join(format!("wasm32-unknown-unknown/release/{crate_name}.wasm"));
    std::fs::copy(&built, out).with_context(|| format!("cargo built no {}", built.display()))?;
    Ok(())
}

/// Installs the wasm32 target with rustup when it is missing, saying so.
fn ensure_wasm_target(progress: &Progress) -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output();
    match installed {
        Ok(out)
            if String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.trim() == "wasm32-unknown-unknown") =>
        {
            Ok(())
        }
        Ok(_) => progress.step(
            "the Rust target wasm32-unknown-unknown is missing; installing it \
             (rustup target add wasm32-unknown-unknown)",
            "installed wasm32-unknown-unknown",
            || {
                let status = Command::new("rustup")
                    .args(["target", "add", "wasm32-unknown-unknown"])
                    .stdout(std::io::stderr())
                    .status()?;
                anyhow::ensure!(
                    status.success(),
                    "rustup could not install wasm32-unknown-unknown; run \
                     `rustup target add wasm32-unknown-unknown` and try again"
                );
                Ok(())
            },
        ),
        // No rustup: cargo will say whether the target is there.
        Err(_) => Ok(()),
    }
}

/// Builds an AssemblyScript project with the compiler its package.json
/// pins, installing that compiler into the project's node_modules first
/// when it is not there yet.
fn build_assemblyscript(progress: &Progress, dir: &Path, out: &Path) -> anyhow::Result<()> {
    let version = pinned_assemblyscript(dir)?;
    let asc = dir.join("node_modules/.bin/asc");
    let installed = std::fs::read_to_string(dir.join("node_modules/assemblyscript/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|p| p["version"].as_str().map(str::to_owned));
    if installed.as_deref() != Some(version.as_str()) || !asc.exists() {
        if Command::new("npm").arg("--version").output().is_err() {
            bail!(
                "npm is needed to install the AssemblyScript compiler: install Node.js 18 or \
                 newer with npm (on Debian: sudo apt-get install -y nodejs npm) and run \
                 `perch fn build` again"
            );
        }
        progress.step(
            &format!(
                "installing the AssemblyScript compiler {version} into {} \
                 (npm install --no-save assemblyscript@{version})",
                dir.join("node_modules").display()
            ),
            &format!("installed assemblyscript {version}"),
            || {
                let status = Command::new("npm")
                    .args(["install", "--no-save", "--no-audit", "--no-fund"])
                    .arg(format!("assemblyscript@{version}"))
                    .current_dir(dir)
                    .stdout(std::io::stderr())
                    .status()
                    .context("cannot run npm")?;
                anyhow::ensure!(
                    status.success(),
                    "npm could not install assemblyscript@{version} (its errors are above); \
                     check the network and npm's registry setting (npm config get registry), \
                     then run `perch fn build` again"
                );
                Ok(())
            },
        )?;
    }
    progress.step(
        &format!("compiling (asc --config asconfig.json, AssemblyScript {version})"),
        "compiled",
        || {
            // asc is a node script; run it with node so a missing node says so.
            let status = Command::new("node")
                .arg(dir.join("node_modules/assemblyscript/bin/asc.js"))
                .args(["--config", "asconfig.json", "--outFile"])
                .arg(std::path::absolute(out)?)
                .current_dir(dir)
                .stdout(std::io::stderr())
                .status()
                .context(
                    "cannot run node: install Node.js 18 or newer (on Debian: sudo apt-get \
                     install -y nodejs npm)",
                )?;
            anyhow::ensure!(
                status.success(),
                "the AssemblyScript compiler could not build the function (its errors are \
                 above); fix them and run `perch fn build` again"
            );
            Ok(())
        },
    )
}

/// The assemblyscript version the project's package.json pins.
fn pinned_assemblyscript(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("package.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read {}: an AssemblyScript project pins its compiler there (perch fn new \
             NAME --lang assemblyscript writes one)",
            path.display()
        )
    })?;
    let package: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not valid JSON", path.display()))?;
    match package["devDependencies"]["assemblyscript"].as_str() {
        Some(v) if semver::Version::parse(v).is_ok() => Ok(v.to_owned()),
        Some(v) => bail!(
            "{} asks for assemblyscript {v:?}; pin an exact version (e.g. \
             \"{ASSEMBLYSCRIPT_VERSION}\") so every build uses the same compiler",
            path.display()
        ),
        None => bail!(
            "{} has no devDependencies.assemblyscript; add \"assemblyscript\": \
             \"{ASSEMBLYSCRIPT_VERSION}\" there",
            path.display()
        ),
    }
}

fn build_c(progress: &Progress, source: &Path, out: &Path) -> anyhow::Result<()> {
    for tool in ["clang", "wasm-ld"] {
        if Command::new(tool).arg("--version").output().is_err() {
            bail!("{tool} is needed to build C functions: sudo apt-get install -y clang lld");
        }
    }
    progress.step(
        &format!("compiling (clang --target=wasm32 {})", source.display()),
        "compiled",
        || {
            // The flags of sdk/examples/c-threshold/build.sh: a bare module with
            // the features ABI.md allows, a 16 KiB stack.
            let status = Command::new("clang")
                .args([
                    "--target=wasm32",
                    "-O2",
                    "-nostdlib",
                    "-ffreestanding",
                    "-std=c11",
                    "-Wall",
                    "-Wextra",
                    "-mcpu=mvp",
                    "-mmutable-globals",
                    "-msign-ext",
                    "-mbulk-memory",
                    "-Wl,--no-entry",
                    "-Wl,--strip-all",
                    "-Wl,-z,stack-size=16384",
                    "-o",
                ])
                .arg(out)
                .arg(source)
                .stdout(std::io::stderr())
                .status()
                .context("cannot run clang")?;
            anyhow::ensure!(
                status.success(),
                "clang could not build the function (its errors are above); fix them and run \
                 `perch fn build` again"
            );
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    /// Every source file of the SDK is vendored into new Rust projects: a
    /// module added to sdk/src and missing here breaks `perch fn build`.
    #[test]
    fn every_sdk_source_file_is_vendored() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/src");
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("src/{name}");
            assert!(
                super::SDK_FILES.iter().any(|(p, _)| *p == path),
                "sdk/src/{name} is not in cli::devkit::SDK_FILES"
            );
        }
    }
}
