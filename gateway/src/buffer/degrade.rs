//! The `degrade` policy at the buffer's bound: the oldest raw records of a
//! stream are replaced by one summary record (count, time range, and
//! min/max/mean of each numeric JSON field) before anything is dropped.

use rusqlite::{params, OptionalExtension};

use super::store::{KIND_RECORD, KIND_SUMMARY};

/// Replaces up to 1000 of the oldest raw records of one stream by a single
/// summary record. Returns (records removed, bytes freed, bytes added).
pub(super) fn degrade_oldest(
    tx: &rusqlite::Transaction,
    now_ms: i64,
) -> rusqlite::Result<(u64, u64, u64)> {
    let stream: Option<String> = tx
        .query_row(
            "SELECT stream FROM records WHERE kind = ?1 ORDER BY seq LIMIT 1",
            [KIND_RECORD],
            |r| r.get(0),
        )
        .optional()?;
    let Some(stream) = stream else {
        return Ok((0, 0, 0));
    };
    let mut summary = Summary::default();
    let mut last_seq = 0;
    {
        let mut stmt = tx.prepare(
            "SELECT seq, created_ms, payload FROM records WHERE kind = ?1 AND stream = ?2 ORDER BY seq LIMIT 1000",
        )?;
        let mut rows = stmt.query(params![KIND_RECORD, stream])?;
        while let Some(row) = rows.next()? {
            last_seq = row.get(0)?;
            summary.add(row.get(1)?, &row.get::<_, Vec<u8>>(2)?);
        }
    }
    if summary.count < 2 {
        // Summarising one record frees nothing.
        return Ok((0, 0, 0));
    }
    let (n, freed) = {
        let mut stmt = tx.prepare(
            "DELETE FROM records WHERE kind = ?1 AND stream = ?2 AND seq <= ?3 \
             RETURNING length(stream) + length(payload)",
        )?;
        let mut rows = stmt.query(params![KIND_RECORD, stream, last_seq])?;
        let (mut n, mut size) = (0u64, 0u64);
        while let Some(row) = rows.next()? {
            n += 1;
            size += row.get::<_, i64>(0)? as u64;
        }
        (n, size)
    };
    let payload = summary.to_json();
    tx.execute(
        "INSERT INTO records (stream, kind, created_ms, payload) VALUES (?1, ?2, ?3, ?4)",
        params![stream, KIND_SUMMARY, now_ms, payload],
    )?;
    Ok((n, freed, (stream.len() + payload.len()) as u64))
}

/// What `degrade` keeps of the records it replaces.
#[derive(Default)]
struct Summary {
    count: u64,
    first_ms: i64,
    last_ms: i64,
    fields: std::collections::BTreeMap<String, (u64, f64, f64, f64)>,
}

impl Summary {
    fn add(&mut self, created_ms: i64, payload: &[u8]) {
        if self.count == 0 {
            self.first_ms = created_ms;
        }
        self.count += 1;
        self.last_ms = created_ms;
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(payload) {
            for (k, v) in map {
                if let Some(x) = v.as_f64() {
                    let e = self.fields.entry(k).or_insert((0, f64::MAX, f64::MIN, 0.0));
                    e.0 += 1;
                    e.1 = e.1.min(x);
                    e.2 = e.2.max(x);
                    e.3 += x;
                }
            }
        }
    }

    fn to_json(&self) -> Vec<u8> {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(k, (n, min, max, sum))| {
                (
                    k.clone(),
                    serde_json::json!({"count": n, "min": min, "max": max, "mean": sum / *n as f64}),
                )
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "degraded": true,
            "count": self.count,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
            "fields": fields,
        }))
        .expect("a summary serialises")
    }
}
