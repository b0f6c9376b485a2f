//! The buffer's write path, side by side in one run:
//!
//! - `buffer/batched`: records through `Intake::forward` + `flush`, i.e.
//!   perch's real path (channel, writer thread, one transaction per batch);
//! - `buffer/autocommit`: the same rows, schema and pragmas, inserted one
//!   autocommit transaction per record, as a hand-written gateway would;
//! - `*_full`: the same with `synchronous = FULL` (every commit synced);
//! - `buffer/drain_local`: the local half of draining a backlog: read in
//!   `seq` order, wrap each record in its upstream envelope, acknowledge,
//!   delete (everything but the network).
//!
//! Throughput is records/s; the ratio batched/autocommit is the point.
//! Run: `cargo bench -p perch --bench buffer`.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use perch::aggregate::AggregateConfig;
use perch::buffer::{Buffer, BufferConfig, Synchronous};

const RECORD: &[u8] = br#"{"device":"t1","temperature":31.5,"humidity":40.2,"ts":1795305600000}"#;

fn batched(c: &mut Criterion) {
    batched_with(c, Synchronous::Normal, "batched");
    batched_with(c, Synchronous::Full, "batched_full");
}

fn batched_with(c: &mut Criterion, synchronous: Synchronous, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let config = BufferConfig {
        max_bytes: 1 << 34,
        max_pending_records: 1 << 20,
        synchronous,
        ..BufferConfig::default()
    };
    let buffer = Buffer::open(&config, &AggregateConfig::default(), dir.path()).unwrap();
    let intake = buffer.intake();
    let mut group = c.benchmark_group("buffer");
    group.measurement_time(Duration::from_secs(5));
    const N: u64 = 10_000;
    group.throughput(Throughput::Elements(N));
    group.bench_function(name, |b| {
        b.iter(|| {
            for _ in 0..N {
                intake.forward("readings", RECORD).unwrap();
            }
            intake.flush().unwrap();
        })
    });

    if synchronous == Synchronous::Full {
        group.finish();
        return;
    }
    let reader = buffer.reader().unwrap();
    let mut envelope = Vec::new();
    group.bench_function("drain_local", |b| {
        b.iter_batched(
            || {
                for _ in 0..N {
                    intake.forward("readings", RECORD).unwrap();
                }
                intake.flush().unwrap();
            },
            |()| {
                let mut after = 0;
                loop {
                    let rows = reader.after(after, 100).unwrap();
                    if rows.is_empty() {
                        break;
                    }
                    for r in &rows {
                        perch::upstream::envelope("gw", r.as_ref(), &mut envelope);
                        intake.ack(r.seq);
                    }
                    after = rows.last().unwrap().seq;
                }
                intake.flush().unwrap();
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn autocommit(c: &mut Criterion) {
    autocommit_with(c, "NORMAL", "autocommit");
    autocommit_with(c, "FULL", "autocommit_full");
}

fn autocommit_with(c: &mut Criterion, synchronous: &str, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("naive.db")).unwrap();
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", synchronous)
        .unwrap();
    conn.execute_batch(
        "CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, stream TEXT NOT NULL,
         kind INTEGER NOT NULL, created_ms INTEGER NOT NULL, payload BLOB NOT NULL)",
    )
    .unwrap();
    let mut insert = conn
        .prepare("INSERT INTO records (stream, kind, created_ms, payload) VALUES (?1, 0, ?2, ?3)")
        .unwrap();
    let mut group = c.benchmark_group("buffer");
    group.measurement_time(Duration::from_secs(5));
    const N: u64 = 1_000;
    group.throughput(Throughput::Elements(N));
    group.bench_function(name, |b| {
        b.iter(|| {
            for _ in 0..N {
                insert
                    .execute(rusqlite::params![
                        "readings",
                        perch::kit::clock::now_ms(),
                        RECORD
                    ])
                    .unwrap();
            }
        })
    });
    group.finish();
}

criterion_group!(benches, batched, autocommit);
criterion_main!(benches);
