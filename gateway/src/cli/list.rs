//! `perch fn list` and `perch fn status`: the gateway's functions with
//! their state and counters.

use tokio::runtime::Runtime;

use super::FnTarget;
use crate::functions::control;

/// `perch fn list`: every function, as a table or JSON.
pub(super) fn list(runtime: &Runtime, json: bool, target: FnTarget) -> anyhow::Result<()> {
    let functions = runtime.block_on(control::list(&super::endpoint(target)?))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&functions)?);
    } else {
        print!("{}", function_table(&functions));
    }
    Ok(())
}

/// `perch fn status`: one function, in full.
pub(super) fn status(
    runtime: &Runtime,
    name: &str,
    json: bool,
    target: FnTarget,
) -> anyhow::Result<()> {
    let f = runtime.block_on(control::status(&super::endpoint(target)?, name))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&f)?);
    } else {
        print!("{}", function_table(std::slice::from_ref(&f)));
        println!("triggers:  {}", f.triggers.join(", "));
        if f.every_ms > 0 {
            println!("timer:     every {} ms", f.every_ms);
        }
        println!("versions:  {}", f.versions.join(", "));
        if !f.snapshots.is_empty() {
            let kept: Vec<String> = f
                .snapshots
                .iter()
                .map(|s| format!("{} (state {} left)", s.id, s.version))
                .collect();
            println!("snapshots: {}", kept.join(", "));
        }
        if let Some(note) = &f.state_upgrade {
            let said = super::switch::state_summary(Some(note));
            let said = said.trim_start_matches("; ");
            let said = if said.is_empty() { "kept" } else { said };
            println!("state:     {said} ({})", note.kind);
            if let Some(why) = &note.events_not_rerun {
                println!("           not re-run: {why}");
            }
        }
        println!("sha256:    {}", f.sha256);
        if let Some(reason) = &f.reason {
            println!("stopped:   {reason}");
        }
        if let Some(e) = &f.last_error {
            println!("last error: {e}");
        }
    }
    Ok(())
}

/// `perch fn list` as a table.
fn function_table(functions: &[control::FunctionInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if functions.is_empty() {
        out.push_str("no functions deployed\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<9} {:>11} {:>8} {:>8} {:>6}",
        "NAME", "VERSION", "STATE", "INVOCATIONS", "ERRORS", "DROPPED", "QUEUED"
    );
    for f in functions {
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<9} {:>11} {:>8} {:>8} {:>6}",
            f.name, f.version, f.state, f.invocations, f.errors, f.dropped, f.queued
        );
    }
    out
}
