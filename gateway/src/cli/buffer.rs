//! `perch buffer stats|tail|dead|replay`: a look into the store-and-forward
//! buffer, through a read-only connection (works while perch runs).

use anyhow::Context;

use super::BufferCommand;

pub(super) fn buffer(command: BufferCommand) -> anyhow::Result<()> {
    let dir = match &command {
        BufferCommand::Stats(d)
        | BufferCommand::Tail { dir: d, .. }
        | BufferCommand::Dead(d)
        | BufferCommand::Replay(d) => d.resolve()?,
    };
    let path = dir.join(crate::buffer::FILE_NAME);
    anyhow::ensure!(
        path.exists(),
        "no buffer at {}: has perch run with this data directory? Pass --data-dir or --config",
        path.display()
    );
    let reader = crate::buffer::Reader::open(&path)?;
    let kind_name = |kind| match kind {
        crate::buffer::KIND_AGGREGATE => "aggregate",
        crate::buffer::KIND_SUMMARY => "summary",
        crate::buffer::KIND_MIRROR => "mirror",
        _ => "record",
    };
    match command {
        BufferCommand::Dead(_) => {
            let dead = reader
                .dead_letters()
                .with_context(|| format!("reading {}", path.display()))?;
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
        BufferCommand::Replay(_) => {
            let n = crate::buffer::replay_dead_letters(&path)?;
            println!("{n} dead letters queued again");
        }
        BufferCommand::Stats(_) => {
            let (records, bytes, oldest) = reader
                .totals()
                .with_context(|| format!("reading {}", path.display()))?;
            println!("buffer:  {}", path.display());
            println!("records: {records}");
            println!("bytes:   {bytes}");
            match oldest {
                Some(ms) => {
                    let age_s = (crate::kit::clock::now_ms() - ms).max(0) as f64 / 1000.0;
                    println!("oldest:  {age_s:.1} s ago");
                }
                None => println!("oldest:  -"),
            }
        }
        BufferCommand::Tail { count, .. } => {
            let rows = reader
                .tail(count)
                .with_context(|| format!("reading {}", path.display()))?;
            for r in rows {
                let kind = kind_name(r.kind);
                let text = String::from_utf8_lossy(&r.payload);
                let text: String = text.chars().take(200).collect();
                println!("{:>8}  {:<24} {:<9} {}", r.seq, r.stream, kind, text);
            }
        }
    }
    Ok(())
}
