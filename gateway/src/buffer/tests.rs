//! The buffer against a real SQLite file.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use super::store::Pending;
use super::*;

fn config() -> BufferConfig {
    BufferConfig::default()
}

fn open(dir: &Path, config: &BufferConfig) -> Buffer {
    Buffer::open(config, &AggregateConfig::default(), dir).unwrap()
}

#[test]
fn records_are_committed_in_batches_and_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = open(dir.path(), &config());
    let intake = buffer.intake();
    for i in 0..5_000 {
        intake
            .forward(
                if i % 2 == 0 { "a" } else { "b" },
                format!("{i}").as_bytes(),
            )
            .unwrap();
    }
    intake.flush().unwrap();
    let reader = buffer.reader().unwrap();
    let all = reader.after(0, 10_000).unwrap();
    assert_eq!(all.len(), 5_000);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    let a: Vec<_> = all
        .iter()
        .filter(|r| r.stream == "a")
        .map(|r| r.payload.clone())
        .collect();
    assert_eq!(a[0], b"0");
    assert_eq!(a[1], b"2");
    let commits = buffer.stats().commits.load(Relaxed);
    assert!(commits <= 20, "5000 records took {commits} commits");
}

#[test]
fn a_batch_reads_what_after_reads_and_is_reused_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = open(dir.path(), &config());
    let intake = buffer.intake();
    // Runs of one stream, streams that alternate, an empty payload, and
    // bytes that are not UTF-8.
    let streams = ["a", "a", "a", "bb", "a", "bb", "bb", "ccc", "a"];
    for (i, s) in streams.iter().enumerate() {
        let payload: Vec<u8> = if i == 4 {
            vec![]
        } else {
            vec![i as u8, 0xff, b'x']
        };
        intake.forward(s, &payload).unwrap();
    }
    intake.flush().unwrap();
    let reader = buffer.reader().unwrap();
    let owned = reader.after(0, 100).unwrap();
    let mut batch = Batch::default();
    reader.read_after(0, i64::MAX, 100, &mut batch).unwrap();
    assert_eq!(batch.len(), streams.len());
    let read: Vec<RecordRef<'_>> = batch.iter().collect();
    let want: Vec<RecordRef<'_>> = owned.iter().map(StoredRecord::as_ref).collect();
    assert_eq!(read, want);
    assert_eq!(batch.last_seq(), owned.last().map(|r| r.seq));
    // The next query replaces the rows; `limit` and `after` hold.
    reader
        .read_after(owned[2].seq, i64::MAX, 3, &mut batch)
        .unwrap();
    let read: Vec<RecordRef<'_>> = batch.iter().collect();
    assert_eq!(read, want[3..6]);
    reader
        .read_after(owned[8].seq, i64::MAX, 3, &mut batch)
        .unwrap();
    assert!(batch.is_empty());
    assert_eq!(batch.last_seq(), None);
}

#[test]
fn acknowledged_records_are_deleted_and_the_rest_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let last_seq;
    {
        let buffer = open(dir.path(), &config());
        let intake = buffer.intake();
        for i in 0..10 {
            intake.forward("s", &[i]).unwrap();
        }
        intake.flush().unwrap();
        let rows = buffer.reader().unwrap().after(0, 100).unwrap();
        for r in &rows[..4] {
            intake.ack(r.seq);
        }
        intake.flush().unwrap();
        last_seq = rows.last().unwrap().seq;
        assert_eq!(buffer.stats().records.load(Relaxed), 6);
        buffer.close();
    }
    let buffer = open(dir.path(), &config());
    let rows = buffer.reader().unwrap().after(0, 100).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
        vec![4, 5, 6, 7, 8, 9]
    );
    // Ack everything, then add one: its seq continues, never reused.
    let intake = buffer.intake();
    for r in &rows {
        intake.ack(r.seq);
    }
    intake.forward("s", b"new").unwrap();
    intake.flush().unwrap();
    let rows = buffer.reader().unwrap().after(0, 100).unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].seq > last_seq);
}

/// Acks come per upstream message, out of order across streams, sometimes
/// twice (a re-delivery after a reconnect) or for records already gone:
/// exactly the acknowledged records go, and the totals stay right.
#[test]
fn scattered_and_repeated_acks_delete_exactly_the_acknowledged_records() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = open(dir.path(), &config());
    let intake = buffer.intake();
    for i in 0..100u8 {
        intake
            .forward(if i % 3 == 0 { "a" } else { "bb" }, &[i; 7])
            .unwrap();
    }
    intake.flush().unwrap();
    let rows = buffer.reader().unwrap().after(0, 1000).unwrap();
    let seq = |i: usize| rows[i].seq;
    // Runs, single records, a run given backwards, duplicates, and seqs
    // that do not exist (before the first, after the last).
    intake.ack_many((10..20).map(seq).collect());
    intake.ack_many(vec![seq(40), seq(42), seq(44)]);
    intake.ack_many((30..35).rev().map(seq).collect());
    intake.ack_many(vec![seq(12), seq(33), seq(0) - 5, seq(99) + 5]);
    intake.ack(seq(99));
    intake.flush().unwrap();
    let acked: std::collections::BTreeSet<usize> = (10..20)
        .chain([40, 42, 44])
        .chain(30..35)
        .chain([99])
        .collect();
    let left: Vec<i64> = buffer
        .reader()
        .unwrap()
        .after(0, 1000)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    let want: Vec<i64> = (0..100).filter(|i| !acked.contains(i)).map(seq).collect();
    assert_eq!(left, want);
    let stats = buffer.stats();
    assert_eq!(stats.acked.load(Relaxed), acked.len() as u64);
    assert_eq!(stats.records.load(Relaxed), want.len() as u64);
    let bytes: u64 = (0..100)
        .filter(|i| !acked.contains(i))
        .map(|i| if i % 3 == 0 { 1 + 7 } else { 2 + 7 })
        .sum();
    assert_eq!(stats.bytes.load(Relaxed), bytes);
    assert_eq!(
        buffer.reader().unwrap().totals().unwrap().1,
        bytes,
        "the running total matches the table"
    );
}

#[test]
fn runs_of_consecutive_seqs() {
    let runs = |v: &[i64]| super::store::runs(v).collect::<Vec<_>>();
    assert_eq!(runs(&[]), vec![]);
    assert_eq!(runs(&[5]), vec![(5, 5)]);
    assert_eq!(
        runs(&[1, 2, 3, 5, 7, 8, 10]),
        vec![(1, 3), (5, 5), (7, 8), (10, 10)]
    );
}

fn fill(policy: WhenFull) -> (tempfile::TempDir, Buffer) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BufferConfig {
        max_bytes: 64 * 1024,
        when_full: policy,
        commit_batch: 50,
        ..config()
    };
    let buffer = open(dir.path(), &cfg);
    let intake = buffer.intake();
    for i in 0..200u32 {
        let record = format!(
            "{{\"n\":{i},\"temperature\":{}.5,\"pad\":\"{}\"}}",
            i % 40,
            "x".repeat(900)
        );
        intake.forward("readings", record.as_bytes()).unwrap();
        if i % 50 == 49 {
            intake.flush().unwrap();
        }
    }
    intake.flush().unwrap();
    (dir, buffer)
}

#[test]
fn drop_oldest_keeps_the_newest_within_the_bound() {
    let (_dir, buffer) = fill(WhenFull::DropOldest);
    let stats = buffer.stats();
    assert!(stats.bytes.load(Relaxed) <= 64 * 1024);
    assert!(stats.dropped_oldest.load(Relaxed) > 0);
    let rows = buffer.reader().unwrap().after(0, 1000).unwrap();
    assert!(String::from_utf8_lossy(&rows.last().unwrap().payload).contains("\"n\":199"));
    assert_eq!(stats.dropped_oldest.load(Relaxed) + rows.len() as u64, 200);
}

#[test]
fn drop_newest_keeps_the_oldest_and_counts_the_refused() {
    let (_dir, buffer) = fill(WhenFull::DropNewest);
    let stats = buffer.stats();
    assert!(stats.bytes.load(Relaxed) <= 64 * 1024);
    let rows = buffer.reader().unwrap().after(0, 1000).unwrap();
    assert!(String::from_utf8_lossy(&rows[0].payload).contains("\"n\":0,"));
    assert_eq!(stats.dropped_newest.load(Relaxed) + rows.len() as u64, 200);
}

#[test]
fn a_record_a_client_waits_on_is_committed_within_the_ack_interval_or_refused() {
    use crate::kit::durable::{Gate, Lane, Outcome};
    let dir = tempfile::tempdir().unwrap();
    let cfg = BufferConfig {
        max_bytes: 64 * 1024,
        when_full: WhenFull::DropNewest,
        // Only the ack interval can make these commit in time.
        commit_interval_ms: 60_000,
        ..config()
    };
    let buffer = open(dir.path(), &cfg);
    let intake = buffer.intake();
    let gate = Gate::new();
    let pad = "x".repeat(900);
    // ~70 records of 900 bytes fill the 64 KiB; the rest are refused by
    // drop_newest, and their tickets say so.
    for n in 1..=100u64 {
        let ticket = Ticket::new(&gate, Lane::Buffer, n);
        intake
            .forward_kept("readings", pad.as_bytes(), Some(ticket))
            .unwrap();
    }
    let started = std::time::Instant::now();
    assert_eq!(
        gate.wait([1, 0], Duration::from_secs(10)),
        Outcome::Committed
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "committed by the ack interval, not commit_interval_ms"
    );
    assert_eq!(
        gate.wait([100, 0], Duration::from_secs(10)),
        Outcome::Refused
    );
    let kept = buffer.reader().unwrap().after(0, 1000).unwrap().len() as u64;
    assert!(kept > 0 && kept < 100, "{kept}");
    for n in 2..100 {
        let want = if n <= kept {
            Outcome::Committed
        } else {
            Outcome::Refused
        };
        assert_eq!(gate.poll([n, 0]), Some(want), "ticket {n}");
    }
}

#[test]
fn degrade_replaces_raw_records_by_a_summary_first() {
    let (_dir, buffer) = fill(WhenFull::Degrade);
    let stats = buffer.stats();
    assert!(stats.bytes.load(Relaxed) <= 64 * 1024);
    assert!(stats.degraded.load(Relaxed) > 0);
    assert_eq!(
        stats.dropped_oldest.load(Relaxed),
        0,
        "nothing dropped while raw records remain"
    );
    let rows = buffer.reader().unwrap().after(0, 1000).unwrap();
    let summaries: Vec<_> = rows.iter().filter(|r| r.kind == KIND_SUMMARY).collect();
    assert!(!summaries.is_empty());
    let s: serde_json::Value = serde_json::from_slice(&summaries[0].payload).unwrap();
    assert_eq!(s["degraded"], true);
    assert!(s["fields"]["temperature"]["max"].as_f64().is_some());
    let covered: u64 = summaries
        .iter()
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.payload).unwrap()["count"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let raw = rows.iter().filter(|r| r.kind == KIND_RECORD).count() as u64;
    assert_eq!(
        covered + raw,
        200,
        "every record is either kept or summarised"
    );
}

#[test]
fn old_records_expire() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BufferConfig {
        max_age_s: 1,
        ..config()
    };
    let buffer = open(dir.path(), &cfg);
    let intake = buffer.intake();
    intake.forward("s", b"old").unwrap();
    intake.flush().unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    intake.forward("s", b"new").unwrap();
    intake.flush().unwrap();
    let rows = buffer.reader().unwrap().after(0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].payload, b"new");
    assert_eq!(buffer.stats().expired.load(Relaxed), 1);
}

#[test]
fn intake_refuses_beyond_the_pending_bound() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = BufferConfig {
        max_pending_records: 3,
        commit_interval_ms: 60_000,
        commit_batch: 1_000_000,
        ..config()
    };
    let buffer = open(dir.path(), &cfg);
    let intake = buffer.intake();
    let results: Vec<_> = (0..1000).map(|_| intake.forward("s", b"x")).collect();
    // What waits counts until it is committed, not until the writer has
    // taken it: exactly the bound is accepted, the rest refused and counted.
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 3);
    assert!(results
        .iter()
        .skip(3)
        .all(|r| matches!(r, Err(BufferError::Backlog(3)))));
    assert_eq!(buffer.stats().refused_backlog.load(Relaxed), 997);
    let err = results[3].as_ref().unwrap_err().to_string();
    assert!(err.contains("3 records wait for the disk"), "{err}");
    // A commit makes room again.
    intake.flush().unwrap();
    intake.forward("s", b"y").unwrap();
    let err = intake.emit(&"m".repeat(65), "", 1.0, 0).unwrap_err();
    assert!(err.to_string().contains("longer than 64"), "{err}");
}

#[test]
fn open_windows_survive_a_restart_and_close_complete() {
    let dir = tempfile::tempdir().unwrap();
    let now = now_ms();
    // Two windows of a series open at once (event time, within the grace):
    // w1 a minute back, whose grace ends 4 s from now, and w2 after it.
    let w1 = now - 60_000 - (now - 60_000).rem_euclid(10_000);
    let w2 = w1 + 10_000;
    let aggregate = AggregateConfig {
        grace_ms: (now + 4_000 - (w1 + 10_000)) as u64,
        ..AggregateConfig::default()
    };
    let open = |dir: &Path| Buffer::open(&config(), &aggregate, dir).unwrap();
    {
        let buffer = open(dir.path());
        let intake = buffer.intake();
        intake.emit("temp", "t1", 10.0, w1 + 1).unwrap();
        intake.emit("temp", "t1", 5.0, w2 + 1).unwrap();
        intake.emit("temp", "t1", 20.0, w1 + 2).unwrap();
        intake.flush().unwrap();
        buffer.close();
    }
    let buffer = open(dir.path());
    assert_eq!(buffer.stats().open_windows.load(Relaxed), 2);
    let intake = buffer.intake();
    intake.emit("temp", "t1", 30.0, w1 + 3).unwrap();
    // w1's grace ends: the next commit writes it, w2 stays open.
    std::thread::sleep(Duration::from_millis((now + 4_500 - now_ms()).max(0) as u64));
    intake.flush().unwrap();
    let rows = buffer.reader().unwrap().after(0, 10).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].kind, KIND_AGGREGATE);
    assert_eq!(rows[0].stream, "aggregates");
    let agg: serde_json::Value = serde_json::from_slice(&rows[0].payload).unwrap();
    assert_eq!(
        (agg["window_start_ms"].as_i64(), agg["count"].as_u64()),
        (Some(w1), Some(3)),
        "values from before and after the restart: {agg}"
    );
    assert_eq!(agg["mean"], 20.0);
    assert_eq!(buffer.stats().open_windows.load(Relaxed), 1);
}

#[test]
fn a_full_disk_keeps_the_batch_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(FILE_NAME);
    let cfg = config();
    let mut store = Store::open(&path, &cfg).unwrap();
    let stats = Stats::default();
    let mut agg = Aggregator::new(AggregateConfig::default());
    // Pin the database to its current size: the next growth fails with
    // SQLITE_FULL, the error a full disk gives.
    let pages: i64 = store_conn(&store)
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    store_conn(&store)
        .pragma_update(None, "max_page_count", pages)
        .unwrap();
    let records: Vec<_> = (0..200)
        .map(|i| NewRecord {
            stream: "s".into(),
            kind: KIND_RECORD,
            created_ms: now_ms(),
            payload: vec![i as u8; 1000],
        })
        .collect();
    let mut pending = Pending {
        records,
        ..Pending::default()
    };
    let err = store
        .commit(&mut pending, &mut agg, now_ms(), &cfg, &stats, None)
        .unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    assert_eq!(
        pending.records.len(),
        200,
        "the batch is kept for the retry"
    );
    assert_eq!(store.records(), 0);
    // Space returns.
    store_conn(&store)
        .pragma_update(None, "max_page_count", 1_000_000)
        .unwrap();
    store
        .commit(&mut pending, &mut agg, now_ms(), &cfg, &stats, None)
        .unwrap();
    assert!(pending.is_empty());
    assert_eq!(store.records(), 200);
}

fn store_conn(store: &Store) -> &rusqlite::Connection {
    store.connection()
}

#[test]
fn dead_letters_are_kept_apart_and_replay_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = open(dir.path(), &config());
    let intake = buffer.intake();
    for i in 0..5u8 {
        intake.forward("s", &[i]).unwrap();
    }
    intake.flush().unwrap();
    let rows = buffer.reader().unwrap().after(0, 10).unwrap();
    intake.dead_letter(
        rows[..2].iter().map(|r| r.seq).collect(),
        400,
        "bad field".into(),
    );
    intake.flush().unwrap();
    let reader = buffer.reader().unwrap();
    assert_eq!(reader.after(0, 10).unwrap().len(), 3);
    let dead = reader.dead_letters().unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].status, dead[0].response.as_str()),
        (400, "bad field")
    );
    assert_eq!(buffer.stats().records.load(Relaxed), 3);
    assert_eq!(replay_dead_letters(&dir.path().join(FILE_NAME)).unwrap(), 2);
    let rows = reader.after(0, 10).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.payload[0]).collect::<Vec<_>>(),
        vec![2, 3, 4, 0, 1]
    );
    assert!(reader.dead_letters().unwrap().is_empty());
}

#[test]
fn the_disk_room_is_the_space_above_the_reserve_plus_the_files_free_pages() {
    use super::store::{disk_room, DISK_BYTES_PER_RECORD_BYTE as K};
    let mib = 1024 * 1024;
    assert_eq!(disk_room(100 * mib, 16 * mib, 0), 84 * mib / K);
    assert_eq!(
        disk_room(10 * mib, 16 * mib, 0),
        0,
        "below the reserve: full"
    );
    assert_eq!(
        disk_room(10 * mib, 16 * mib, 2 * mib),
        2 * mib,
        "pages deleted records left in the file are reused"
    );
    assert_eq!(disk_room(20 * mib, 16 * mib, mib), 4 * mib / K + mib);
    assert_eq!(disk_room(u64::MAX, 0, u64::MAX), u64::MAX);
}

#[test]
fn a_reserve_below_one_mib_is_refused_with_the_default_named() {
    let mut problems = Vec::new();
    BufferConfig {
        min_free_bytes: 4096,
        ..config()
    }
    .validate(&mut problems);
    let text = problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        text.contains("buffer.min_free_bytes: must be at least 1048576")
            && text.contains("16777216"),
        "{text}"
    );
    let mut problems = Vec::new();
    config().validate(&mut problems);
    assert!(problems.is_empty(), "the default is valid: {problems:?}");
}

/// A buffer whose file system reports `free` bytes free (set by the test).
fn open_with_free(dir: &Path, config: &BufferConfig, free: Arc<AtomicU64>) -> Buffer {
    Buffer::open_measured(
        config,
        &AggregateConfig::default(),
        dir,
        Box::new(move || Ok(free.load(Relaxed))),
    )
    .unwrap()
}

fn forward_n(intake: &Intake, range: std::ops::Range<u32>) {
    for i in range {
        // The same size whatever the digits of i.
        let pad = "x".repeat(900 - i.to_string().len());
        let record = format!("{{\"n\":{i},\"pad\":\"{pad}\"}}");
        intake.forward("readings", record.as_bytes()).unwrap();
    }
    intake.flush().unwrap();
}

fn seqs_and_ns(buffer: &Buffer) -> Vec<(i64, u32)> {
    buffer
        .reader()
        .unwrap()
        .after(0, 100_000)
        .unwrap()
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            (r.seq, v["n"].as_u64().unwrap() as u32)
        })
        .collect()
}

#[test]
fn below_the_reserve_drop_newest_refuses_new_records_until_acks_free_room() {
    let dir = tempfile::tempdir().unwrap();
    let mib = 1024 * 1024;
    let cfg = BufferConfig {
        when_full: WhenFull::DropNewest,
        ..config()
    };
    let free = Arc::new(AtomicU64::new(1024 * mib));
    let buffer = open_with_free(dir.path(), &cfg, free.clone());
    let intake = buffer.intake();
    let stats = buffer.stats();
    forward_n(&intake, 0..100);
    assert_eq!(stats.committed.load(Relaxed), 100);
    assert!(!stats.disk_full.load(Relaxed));

    // The disk is low: the buffer is full at its current size, whatever
    // max_bytes (64 MiB) says.
    free.store(cfg.min_free_bytes - 1, Relaxed);
    let bytes = stats.bytes.load(Relaxed);
    forward_n(&intake, 100..150);
    assert!(stats.disk_full.load(Relaxed));
    assert_eq!(stats.bytes.load(Relaxed), bytes, "the buffer did not grow");
    assert_eq!(
        stats.dropped_newest.load(Relaxed),
        50,
        "refused and counted"
    );
    assert_eq!(stats.write_errors.load(Relaxed), 0, "no commit failed");

    // Upstream acknowledges the first 60: the pages they held are reused,
    // so about as many new records fit again, still without the disk.
    let rows = seqs_and_ns(&buffer);
    intake.ack_many(rows[..60].iter().map(|(seq, _)| *seq).collect());
    intake.flush().unwrap();
    assert_eq!(stats.acked.load(Relaxed), 60);
    forward_n(&intake, 150..170);
    let rows = seqs_and_ns(&buffer);
    let ns: Vec<u32> = rows.iter().map(|(_, n)| *n).collect();
    let want: Vec<u32> = (60..100).chain(150..170).collect();
    assert_eq!(ns, want, "acked space is used again, in order");

    // Space returns: the reserve no longer binds.
    free.store(1024 * mib, Relaxed);
    forward_n(&intake, 170..300);
    assert!(!stats.disk_full.load(Relaxed));
    assert_eq!(seqs_and_ns(&buffer).len(), 40 + 20 + 130);
    assert_eq!(stats.dropped_newest.load(Relaxed), 50);
}

#[test]
fn below_the_reserve_drop_oldest_keeps_the_size_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config();
    let free = Arc::new(AtomicU64::new(u64::MAX));
    let buffer = open_with_free(dir.path(), &cfg, free.clone());
    let intake = buffer.intake();
    let stats = buffer.stats();
    forward_n(&intake, 0..100);
    let bytes = stats.bytes.load(Relaxed);
    free.store(0, Relaxed);
    forward_n(&intake, 100..130);
    assert!(
        stats.bytes.load(Relaxed) <= bytes,
        "the buffer did not grow"
    );
    assert_eq!(stats.dropped_oldest.load(Relaxed), 30, "counted");
    let ns: Vec<u32> = seqs_and_ns(&buffer).iter().map(|(_, n)| *n).collect();
    assert_eq!(ns, (30..130).collect::<Vec<_>>());
    // The file did not grow either: the new rows took the old rows' pages.
    let pages = |conn: &rusqlite::Connection| -> i64 {
        conn.query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap()
    };
    let conn = rusqlite::Connection::open(dir.path().join(FILE_NAME)).unwrap();
    let before = pages(&conn);
    forward_n(&intake, 130..230);
    assert_eq!(stats.dropped_oldest.load(Relaxed), 130);
    assert!(
        pages(&conn) <= before + 2,
        "{} pages after, {before} before",
        pages(&conn)
    );
}

#[test]
fn a_free_space_that_cannot_be_measured_leaves_max_bytes_as_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Buffer::open_measured(
        &config(),
        &AggregateConfig::default(),
        dir.path(),
        Box::new(|| Err(std::io::Error::other("no statvfs here"))),
    )
    .unwrap();
    forward_n(&buffer.intake(), 0..50);
    assert_eq!(buffer.stats().committed.load(Relaxed), 50);
    assert!(!buffer.stats().disk_full.load(Relaxed));
}

#[test]
fn the_real_free_space_of_the_data_directory_is_measured() {
    let dir = tempfile::tempdir().unwrap();
    let free = super::store::free_bytes(dir.path()).unwrap();
    assert!(free > 0, "a temp dir with no free space?");
    let buffer = open(dir.path(), &config());
    forward_n(&buffer.intake(), 0..5);
    assert!(buffer.stats().disk_free.load(Relaxed) > 0);
}

#[test]
fn link_totals_ride_along_with_commits_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = open(dir.path(), &config());
    let intake = buffer.intake();
    let links = &intake.stats().links;
    let a = links.slot("mqtt://h:1883", "alerts/a");
    links.add(a, Stage::Offered, 10, 1000);
    links.add(a, Stage::Sent, 10, 1000);
    links.add(a, Stage::Acked, 7, 700);
    // Counts alone make no transaction: they wait for one that writes.
    let commits = buffer.stats().commits.load(Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(buffer.stats().commits.load(Relaxed), commits);
    intake.forward("alerts/a", b"{}").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while buffer.stats().commits.load(Relaxed) == commits {
        assert!(std::time::Instant::now() < deadline, "no commit");
        std::thread::sleep(Duration::from_millis(10));
    }
    let reader = buffer.reader().unwrap();
    let persisted: i64 = reader
        .conn
        .query_row(
            "SELECT acked_records FROM link_totals WHERE stream = 'alerts/a'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(persisted, 7, "the record's commit carried the counts");
    // The last counts before close are written by the last commit.
    links.add(a, Stage::Acked, 3, 300);
    drop(intake);
    buffer.close();
    let buffer = open(dir.path(), &config());
    let rows = buffer.stats().links.snapshot();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].destination, "mqtt://h:1883");
    assert_eq!(rows[0].stream, "alerts/a");
    let t = rows[0].totals;
    assert_eq!(
        (
            t.offered_records,
            t.sent_bytes,
            t.acked_records,
            t.acked_bytes
        ),
        (10, 1000, 10, 1000),
        "the last count before close is persisted too"
    );
}
