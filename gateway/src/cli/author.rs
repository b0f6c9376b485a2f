//! `perch fn new|build|test|sign`: the function author's commands, which
//! need no gateway. The work is in [`super::devkit`] and [`super::keys`].

use std::path::{Path, PathBuf};

use anyhow::Context;

use std::io::Write as _;

use super::{devkit, fn_test, keys};
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

/// `perch fn build`: the project's module, checked against the runtime;
/// with `json`, what was built on stdout (progress stays on stderr).
pub(super) fn build(dir: &Path, json: bool) -> anyhow::Result<()> {
    let built = devkit::build(dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&built)?);
    }
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

/// `perch fn test`: the project run on sample events in the real runtime,
/// printed event by event, or with `json` as one JSON object: `events`
/// (each with its outputs and error) and `summary`.
pub(super) fn test(
    dir: &Path,
    events: Option<PathBuf>,
    wasm: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Human);
    let (module, manifest) = match wasm {
        Some(path) => (path, devkit::read_manifest(dir)?),
        None => {
            let built = devkit::build(dir)?;
            (built.wasm, built.parsed)
        }
    };
    let wasm =
        std::fs::read(&module).with_context(|| format!("cannot read {}", module.display()))?;
    let events = events.unwrap_or_else(|| dir.join("events.jsonl"));
    let mut runs = Vec::new();
    let mut stdout = std::io::stdout().lock();
    let report = fn_test::run(manifest, &wasm, &events, |run| {
        if json {
            runs.push(serde_json::to_value(run).map_err(std::io::Error::other)?);
            Ok(())
        } else {
            fn_test::print(&mut stdout, run)
        }
    })?;
    if json {
        let all = serde_json::json!({ "events": runs, "summary": report });
        writeln!(stdout, "{}", serde_json::to_string_pretty(&all)?)?;
        if report.failures > 0 {
            return Err(super::Reported(1).into());
        }
        return Ok(());
    }
    writeln!(
        stdout,
        "{} events, {} failed; {} publishes, {} emits, {} forwards",
        report.events, report.failures, report.publishes, report.emits, report.forwards
    )?;
    anyhow::ensure!(
        report.failures == 0,
        "{} of {} events failed (see FAILED above)",
        report.failures,
        report.events
    );
    Ok(())
}
