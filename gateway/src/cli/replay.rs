//! `perch fn replay`: a version of a function run over the trigger events
//! the gateway kept for it, and a summary of what it did.

use tokio::runtime::Runtime;

use super::FnTarget;
use crate::functions::control;

/// `perch fn replay`; fails when the gateway refused it.
pub(super) fn replay(
    runtime: &Runtime,
    name: String,
    since: String,
    version: Option<String>,
    json: bool,
    target: FnTarget,
) -> anyhow::Result<()> {
    let request = control::ReplayRequest {
        name,
        since,
        version,
        request_id: None,
    };
    let reply = runtime.block_on(control::replay(&super::endpoint(target)?, request))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else if reply.error.is_none() {
        print!("{}", replay_report(&reply));
    }
    match reply.error {
        None => Ok(()),
        Some(error) => anyhow::bail!("the gateway refused the replay: {error}"),
    }
}

/// `--since`: checked here so a bad duration never reaches the gateway.
pub(super) fn parse_since(text: &str) -> Result<String, String> {
    control::parse_duration(text).map(|_| text.trim().to_owned())
}

/// What `perch fn replay` prints: the summary, then the first outputs.
fn replay_report(reply: &control::ReplayReply) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replayed {} {} over {} of {} kept events in {:.3} ms: {} failed",
        reply.name.as_deref().unwrap_or("?"),
        reply.version.as_deref().unwrap_or("?"),
        reply.replayed,
        reply.events,
        reply.duration_us as f64 / 1000.0,
        reply.errors,
    );
    for e in &reply.first_errors {
        let _ = writeln!(out, "failure  {e}");
    }
    let _ = writeln!(
        out,
        "outputs  {} publishes, {} emits, {} forwards",
        reply.publishes, reply.emits, reply.forwards
    );
    if let Some(d) = reply.differed {
        let _ = writeln!(out, "differed from the live version on {d} events");
    }
    super::invoke::write_outputs(&mut out, &reply.outputs);
    out.push_str("nothing was delivered: replay captures the outputs\n");
    out
}
