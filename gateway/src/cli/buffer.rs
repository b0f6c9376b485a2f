//! `perch buffer stats|tail|dead|replay`: a look into the store-and-forward
//! buffer, through a read-only connection (works while perch runs), as text
//! or, with `--json`, as JSON.

use anyhow::Context;
use serde_json::json;

use super::BufferCommand;
use crate::buffer::StoredRecord;

pub(super) fn buffer(command: BufferCommand) -> anyhow::Result<()> {
    let dir = match &command {
        BufferCommand::Stats { dir, .. }
        | BufferCommand::Tail { dir, .. }
        | BufferCommand::Dead { dir, .. }
        | BufferCommand::Replay { dir, .. } => dir.resolve()?,
    };
    let path = dir.join(crate::buffer::FILE_NAME);
    anyhow::ensure!(
        path.exists(),
        "no buffer at {}: has perch run with this data directory? Pass --data-dir or --config",
        path.display()
    );
    let reader = crate::buffer::Reader::open(&path)?;
    let reading = || format!("reading {}", path.display());
    match command {
        BufferCommand::Dead { json, .. } => {
            let dead = reader.dead_letters().with_context(reading)?;
            if json {
                let rows: Vec<_> = dead
                    .iter()
                    .map(|d| {
                        let mut row = record_json(&d.record);
                        row["status"] = json!(d.status);
                        row["response"] = json!(d.response);
                        row["failed_ms"] = json!(d.failed_ms);
                        row
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            if dead.is_empty() {
                println!("no dead letters");
            }
            for d in dead {
                let text: String = String::from_utf8_lossy(&d.record.payload)
                    .chars()
                    .take(120)
                    .collect();
                println!(
                    "{:>8}  {:<24} {:<9} HTTP {} {:?}  {}",
                    d.record.seq,
                    d.record.stream,
                    kind_name(d.record.kind),
                    d.status,
                    d.response.chars().take(80).collect::<String>(),
                    text
                );
            }
        }
        BufferCommand::Replay { json, .. } => {
            let n = crate::buffer::replay_dead_letters(&path)?;
            if json {
                println!("{}", json!({ "requeued": n }));
            } else {
                println!("{n} dead letters queued again");
            }
        }
        BufferCommand::Stats { json, .. } => {
            let (records, bytes, oldest) = reader.totals().with_context(reading)?;
            let age_s = oldest.map(|ms| (crate::kit::clock::now_ms() - ms).max(0) as f64 / 1000.0);
            if json {
                let stats = json!({
                    "buffer": path.display().to_string(),
                    "records": records,
                    "bytes": bytes,
                    "oldest_ms": oldest,
                    "oldest_age_s": age_s,
                });
                println!("{}", serde_json::to_string_pretty(&stats)?);
                return Ok(());
            }
            println!("buffer:  {}", path.display());
            println!("records: {records}");
            println!("bytes:   {bytes}");
            match age_s {
                Some(age_s) => println!("oldest:  {age_s:.1} s ago"),
                None => println!("oldest:  -"),
            }
        }
        BufferCommand::Tail { count, json, .. } => {
            let rows = reader.tail(count).with_context(reading)?;
            if json {
                let rows: Vec<_> = rows.iter().map(record_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(());
            }
            for r in rows {
                let text = String::from_utf8_lossy(&r.payload);
                let text: String = text.chars().take(200).collect();
                println!(
                    "{:>8}  {:<24} {:<9} {}",
                    r.seq,
                    r.stream,
                    kind_name(r.kind),
                    text
                );
            }
        }
    }
    Ok(())
}

fn kind_name(kind: i64) -> &'static str {
    match kind {
        crate::buffer::KIND_AGGREGATE => "aggregate",
        crate::buffer::KIND_SUMMARY => "summary",
        crate::buffer::KIND_MIRROR => "mirror",
        _ => "record",
    }
}

/// A record as JSON; the payload as text (invalid UTF-8 replaced), whole.
fn record_json(r: &StoredRecord) -> serde_json::Value {
    json!({
        "seq": r.seq,
        "stream": r.stream,
        "kind": kind_name(r.kind),
        "created_ms": r.created_ms,
        "payload": String::from_utf8_lossy(&r.payload),
    })
}
