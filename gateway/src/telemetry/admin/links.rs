//! Records and bytes per upstream destination and stream (offered, sent,
//! acknowledged; [`crate::buffer::LinkTotals`]) as `perch status` and
//! `/status.json` show them. The totals are the persisted ones: a restart
//! goes on from them.

use serde::{Deserialize, Serialize};

use crate::buffer::{LinkRow, Totals};

/// One destination: its totals and those of each stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DestinationSummary {
    /// `mqtt://host:port` or the HTTP endpoint, as `upstream.endpoint`.
    pub destination: String,
    /// The sum over its streams.
    #[serde(flatten)]
    pub totals: Totals,
    pub streams: Vec<StreamSummary>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StreamSummary {
    pub stream: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// Groups `rows` by destination, in the order each was first counted.
pub fn summarize(rows: Vec<LinkRow>) -> Vec<DestinationSummary> {
    let mut out: Vec<DestinationSummary> = Vec::new();
    for r in rows {
        let i = match out.iter().position(|d| d.destination == r.destination) {
            Some(i) => i,
            None => {
                out.push(DestinationSummary {
                    destination: r.destination.clone(),
                    totals: Totals::default(),
                    streams: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[i].totals.merge(&r.totals);
        out[i].streams.push(StreamSummary {
            stream: r.stream,
            totals: r.totals,
        });
    }
    out
}

/// Streams `perch status` lists per destination (the most bytes acked).
const TABLE_STREAMS: usize = 10;

/// The lines `perch status` prints for the destinations.
pub fn table(out: &mut String, destinations: &[DestinationSummary]) {
    use std::fmt::Write;
    for d in destinations {
        let _ = writeln!(out, "link      {}: {}", d.destination, line(&d.totals));
        let mut streams: Vec<&StreamSummary> = d.streams.iter().collect();
        streams.sort_by_key(|s| std::cmp::Reverse(s.totals.acked_bytes));
        for s in streams.iter().take(TABLE_STREAMS) {
            let _ = writeln!(out, "            {}: {}", s.stream, line(&s.totals));
        }
        if streams.len() > TABLE_STREAMS {
            let _ = writeln!(
                out,
                "            ({} more streams: perch status --json)",
                streams.len() - TABLE_STREAMS
            );
        }
    }
}

fn line(t: &Totals) -> String {
    format!(
        "offered {} records ({} B), sent {} ({} B), acked {} ({} B)",
        t.offered_records,
        t.offered_bytes,
        t.sent_records,
        t.sent_bytes,
        t.acked_records,
        t.acked_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_grouped_by_destination_and_summed() {
        let row = |d: &str, s: &str, acked: u64| LinkRow {
            destination: d.into(),
            stream: s.into(),
            totals: Totals {
                acked_records: acked,
                acked_bytes: acked * 10,
                ..Totals::default()
            },
        };
        let ds = summarize(vec![
            row("mqtt://a:1", "x", 1),
            row("https://b/", "x", 5),
            row("mqtt://a:1", "y", 2),
        ]);
        assert_eq!(ds.len(), 2);
        assert_eq!(ds[0].destination, "mqtt://a:1");
        assert_eq!(ds[0].totals.acked_records, 3);
        assert_eq!(ds[0].totals.acked_bytes, 30);
        assert_eq!(ds[0].streams.len(), 2);
        let mut text = String::new();
        table(&mut text, &ds);
        assert!(
            text.contains(
                "link      mqtt://a:1: offered 0 records (0 B), sent 0 (0 B), acked 3 (30 B)"
            ),
            "{text}"
        );
        assert!(text.contains("            y: "), "{text}");
    }
}
