//! `perch fn new|build|test|sign`: the function author's commands, which
//! need no gateway. The work is in [`super::devkit`] and [`super::keys`].

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{devkit, keys};
use crate::telemetry::{self, LogFormat};

/// `perch fn new`: a new function project.
pub(super) fn new(name: &str, lang: devkit::Lang, dir: Option<&Path>) -> anyhow::Result<()> {
    let dir = devkit::new(name, lang, dir)?;
    println!(
        "created {dir}: build it with `cd {dir} && perch fn build`, try it with \
         `perch fn test`",
        dir = dir.display()
    );
    Ok(())
}

/// `perch fn build`: the project's module, checked against the runtime.
pub(super) fn build(dir: &Path) -> anyhow::Result<()> {
    devkit::build(dir)?;
    Ok(())
}

/// `perch fn sign`: a signed bundle for a later deploy.
pub(super) fn sign(
    wasm: &Path,
    manifest: &Path,
    key: &Path,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (out, size) = keys::sign(wasm, manifest, key, out)?;
    println!("{}", out.display());
    eprintln!(
        "signed {} ({size} bytes): deploy it with `perch fn deploy {}`",
        out.display(),
        out.display()
    );
    Ok(())
}

/// `perch fn test`: the project run on sample events in the real runtime.
pub(super) fn test(
    dir: &Path,
    events: Option<PathBuf>,
    wasm: Option<PathBuf>,
) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Human);
    let (module, manifest) = match wasm {
        Some(path) => (path, devkit::read_manifest(dir)?),
        None => devkit::build(dir)?,
    };
    let wasm =
        std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
    let events = events.unwrap_or_else(|| dir.join("events.jsonl"));
    let report = devkit::test(manifest, &wasm, &events, &mut std::io::stdout().lock())?;
    anyhow::ensure!(
        report.failures == 0,
        "{} of {} events failed (see FAILED above)",
        report.failures,
        report.events
    );
    Ok(())
}
