//! Committed records as the upstream reads them: one owned
//! ([`StoredRecord`]), borrowed ([`RecordRef`]), or many in a reusable
//! [`Batch`] that reads a backlog without an allocation per record.

/// A committed record, as upstream reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRecord {
    pub seq: i64,
    pub stream: String,
    pub kind: i64,
    pub created_ms: i64,
    pub payload: Vec<u8>,
}

impl StoredRecord {
    /// A record from a row whose first columns are `seq, stream, kind,
    /// created_ms, payload` (records and dead letters alike).
    pub(super) fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredRecord> {
        Ok(StoredRecord {
            seq: r.get(0)?,
            stream: r.get(1)?,
            kind: r.get(2)?,
            created_ms: r.get(3)?,
            payload: r.get(4)?,
        })
    }

    /// The record, borrowed.
    pub fn as_ref(&self) -> RecordRef<'_> {
        RecordRef {
            seq: self.seq,
            stream: &self.stream,
            kind: self.kind,
            created_ms: self.created_ms,
            payload: &self.payload,
        }
    }
}

/// One committed record, borrowed from a [`Batch`] or a [`StoredRecord`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordRef<'a> {
    pub seq: i64,
    pub stream: &'a str,
    pub kind: i64,
    pub created_ms: i64,
    pub payload: &'a [u8],
}

/// The records one query read ([`Reader::read_after`]), kept in a few
/// reusable allocations instead of a `String` and a `Vec` per row: a drain
/// reads its whole backlog through one `Batch`, so after the first query
/// reading costs no allocation at all.
#[derive(Debug, Default)]
pub struct Batch {
    rows: Vec<BatchRow>,
    /// Every distinct stream name of the batch, back to back (consecutive
    /// rows of one stream share one copy).
    streams: String,
    /// Every row's payload, back to back.
    payloads: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
struct BatchRow {
    seq: i64,
    kind: i64,
    created_ms: i64,
    /// Byte ranges in `streams` and `payloads`.
    stream: (usize, usize),
    payload: (usize, usize),
}

impl Batch {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The `seq` of the last row, if any.
    pub fn last_seq(&self) -> Option<i64> {
        self.rows.last().map(|r| r.seq)
    }

    /// The rows, in `seq` order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = RecordRef<'_>> + '_ {
        self.rows.iter().map(|r| RecordRef {
            seq: r.seq,
            stream: &self.streams[r.stream.0..r.stream.1],
            kind: r.kind,
            created_ms: r.created_ms,
            payload: &self.payloads[r.payload.0..r.payload.1],
        })
    }

    pub(super) fn clear(&mut self) {
        self.rows.clear();
        self.streams.clear();
        self.payloads.clear();
    }

    /// Appends one row read from `SELECT seq, stream, kind, created_ms,
    /// payload`.
    pub(super) fn push(&mut self, row: &rusqlite::Row<'_>) -> rusqlite::Result<()> {
        use rusqlite::types::Type;
        let bytes = |i: usize, ty: Type| -> rusqlite::Result<&[u8]> {
            row.get_ref(i)?
                .as_bytes()
                .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, ty, Box::new(e)))
        };
        let stream = bytes(1, Type::Text)?;
        let stream = match self.rows.last().map(|r| r.stream) {
            Some((a, b)) if self.streams.as_bytes()[a..b] == *stream => (a, b),
            _ => {
                let text = std::str::from_utf8(stream).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(1, Type::Text, Box::new(e))
                })?;
                let a = self.streams.len();
                self.streams.push_str(text);
                (a, self.streams.len())
            }
        };
        let payload = bytes(4, Type::Blob)?;
        let a = self.payloads.len();
        self.payloads.extend_from_slice(payload);
        self.rows.push(BatchRow {
            seq: row.get(0)?,
            kind: row.get(2)?,
            created_ms: row.get(3)?,
            stream,
            payload: (a, self.payloads.len()),
        });
        Ok(())
    }
}
