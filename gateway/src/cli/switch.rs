//! `perch fn rollback|promote|remove`: the commands that switch a running
//! function to another version (or off), and the line that says what
//! changed.

use tokio::runtime::Runtime;

use super::FnTarget;
use crate::functions::control;

/// `perch fn <command> NAME` for `rollback`, `promote` or `remove`; fails
/// when the gateway refused it.
pub(super) fn switch(
    runtime: &Runtime,
    command: &str,
    name: &str,
    json: bool,
    target: FnTarget,
) -> anyhow::Result<()> {
    let endpoint = super::endpoint(target)?;
    let started = std::time::Instant::now();
    let reply = runtime.block_on(control::command(&endpoint, command, name))?;
    let elapsed = started.elapsed().as_millis();
    if json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else if reply.ok {
        println!(
            "{}",
            command_summary(&reply, name, &endpoint.gateway, elapsed)
        );
    }
    if let Some(warning) = &reply.warning {
        eprintln!("warning: {warning}");
    }
    warn_events_not_rerun(reply.state.as_ref());
    match reply.error {
        None if reply.ok => Ok(()),
        error => anyhow::bail!(
            "the gateway refused the {command}: {}",
            error.unwrap_or_default()
        ),
    }
}

/// `rolled back echo to 1.1.0 (was 1.2.0) on gw-1 in 9 ms`, `promoted …`,
/// `removed echo (was 1.2.0) …`.
fn command_summary(
    reply: &control::CommandReply,
    name: &str,
    gateway: &str,
    elapsed_ms: u128,
) -> String {
    let was = reply
        .replaced
        .as_deref()
        .map(|v| format!(" (was {v})"))
        .unwrap_or_default();
    let now = reply.version.as_deref().unwrap_or("?");
    let what = match reply.command.as_str() {
        "rollback" => format!("rolled back {name} to {now}{was}"),
        "promote" => format!("promoted {name} {now}{was}"),
        _ => format!("removed {name}{was}"),
    };
    let state = state_summary(reply.state.as_ref());
    format!("{what} on {gateway} in {elapsed_ms} ms{state}")
}

/// What a command did to the function's state, for the end of its line:
/// `; state migrated from 1.0.0`, `; state restored from snapshot 3, 3
/// kept events re-run`; empty when nothing worth saying.
pub(super) fn state_summary(note: Option<&control::StateNote>) -> String {
    let Some(note) = note else {
        return String::new();
    };
    let mut parts = Vec::new();
    if let Some(from) = &note.migrated_from {
        parts.push(format!("state migrated from {from}"));
    }
    if let Some(id) = note.snapshot_restored {
        parts.push(format!("state restored from snapshot {id}"));
    }
    if note.events_rerun > 0 {
        parts.push(format!("{} kept events re-run", note.events_rerun));
    }
    match parts.is_empty() {
        true => String::new(),
        false => format!("; {}", parts.join(", ")),
    }
}

/// Says on stderr when the events since a snapshot or a canary's start
/// could not be run again (the state lacks their effect).
pub(super) fn warn_events_not_rerun(note: Option<&control::StateNote>) {
    if let Some(why) = note.and_then(|n| n.events_not_rerun.as_deref()) {
        eprintln!("warning: the function's state does not include the events since: {why}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::control::CommandReply;

    #[test]
    fn the_summary_says_what_changed_in_one_line() {
        let rollback = CommandReply {
            ok: true,
            command: "rollback".into(),
            version: Some("1.1.0".into()),
            replaced: Some("1.2.0".into()),
            ..CommandReply::default()
        };
        assert_eq!(
            command_summary(&rollback, "threshold-alert", "gw-1", 9),
            "rolled back threshold-alert to 1.1.0 (was 1.2.0) on gw-1 in 9 ms"
        );
        let remove = CommandReply {
            ok: true,
            command: "remove".into(),
            replaced: Some("1.1.0".into()),
            ..CommandReply::default()
        };
        assert_eq!(
            command_summary(&remove, "threshold-alert", "gw-1", 3),
            "removed threshold-alert (was 1.1.0) on gw-1 in 3 ms"
        );
        let restored = CommandReply {
            state: Some(control::StateNote {
                kind: "rollback".into(),
                snapshot_restored: Some(3),
                events_rerun: 12,
                ..control::StateNote::default()
            }),
            ..rollback
        };
        assert_eq!(
            command_summary(&restored, "counter", "gw-1", 9),
            "rolled back counter to 1.1.0 (was 1.2.0) on gw-1 in 9 ms; state restored from \
             snapshot 3, 12 kept events re-run"
        );
    }
}
