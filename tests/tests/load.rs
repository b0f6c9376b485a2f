//! Load (issue 9): 1,000 client connections and a burst of small messages
//! against a real gateway. The gateway's resident memory must stay under a
//! stated bound, it must not die, and a probe client must be served during
//! the burst and after it.
//!
//! The 1,000 clients speak raw MQTT 3.1.1 over TCP (a client library's
//! event loop per connection would cost the test more than the broker);
//! each subscribes to its own topic `load/<i>` and drains what it gets.
//! Four raw publishers send the burst at QoS 0 to those topics in turn, so
//! every message is routed to one subscriber. The default run sends 100,000
//! messages; `PERCH_LOAD_FULL=1` (run by `tests/faults.sh --full`) sends
//! 1,000,000. The test prints the figures (connections, messages, delivered,
//! peak RSS, time, slowest probe).
//!
//! The memory bound is derived from the broker's configuration: rumqttd
//! keeps every message in its filter's log after delivering it, until the
//! log's oldest segment is dropped, so what the logs hold is bounded by
//! `max_message_log_bytes` (shared by `max_filters`), not by the burst.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Event, EventLoop, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::util::faults::{rss_kib, RssPeak};
use crate::util::mqtt;
use crate::util::raw::{frame, string};
use crate::util::{temp_file, Gateway};

/// Idle subscriber connections held open during the burst.
const CONNECTIONS: usize = 1_000;
/// Raw publisher connections sharing the burst.
const PUBLISHERS: usize = 4;
/// The broker settings the test runs with, written out because the memory
/// bound is derived from them: the default `max_filters` and segment count,
/// and half the default `max_message_log_bytes`, so that 1,000 filters of
/// the smallest messages stay within what a 512 MiB board can spare.
const MAX_MESSAGE_LOG_BYTES: u64 = 8 * 1024 * 1024;
const MAX_FILTERS: u64 = 1_024;
const MAX_SEGMENT_COUNT: u64 = 4;
/// What the burst's messages count for in the logs, as rumqttd counts
/// them: 4 bytes, the topic (`load/0` at the shortest) and the payload.
const MIN_COUNTED_BYTES: u64 = 4 + 6 + 16;
/// What one message kept in a log costs the gateway's memory, measured (the
/// growth of the peak RSS over the messages kept, docs/broker.md,
/// "Memory"): rumqttd's log entry (~230 bytes), its share of the read
/// buffer it was parsed from, and what the allocator keeps as segments are
/// dropped and started. Debug build; a measured figure, not a derived one.
const KEPT_MESSAGE_BYTES: u64 = 600;
/// The default `max_outgoing_packet_count`: packets the router queues
/// towards one client.
const MAX_OUTGOING_PACKET_COUNT: u64 = 200;
/// What one packet queued towards a client costs (the router's queue
/// entry and the connection's write buffer), an estimate from the same
/// measurement.
const QUEUED_PACKET_BYTES: u64 = 150;
/// How long one probe round trip may take, during the burst included.
const PROBE_BOUND: Duration = Duration::from_secs(10);
/// How long the whole test may take before it is a failure.
const DEADLINE: Duration = Duration::from_secs(300);

/// Messages in the burst: 1,000,000 with `PERCH_LOAD_FULL=1`, else 100,000.
fn messages() -> usize {
    if std::env::var("PERCH_LOAD_FULL").is_ok_and(|v| v == "1") {
        1_000_000
    } else {
        100_000
    }
}

/// The soft limit on open files of this process (the gateway it starts
/// inherits it): raised to the hard limit with `prlimit` when it is below
/// `needed`; a clear failure when that is not enough.
fn ensure_open_files(needed: u64) {
    let soft = || {
        let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line in /proc/self/limits");
        let mut fields = line["Max open files".len()..].split_whitespace();
        let parse = |f: Option<&str>| match f {
            Some("unlimited") => u64::MAX,
            Some(n) => n.parse().expect("a number of files"),
            None => panic!("no limit in {line:?}"),
        };
        (parse(fields.next()), parse(fields.next()))
    };
    let (current, hard) = soft();
    if current >= needed {
        return;
    }
    let to = if hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    let _ = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &std::process::id().to_string(),
            &format!("--nofile={to}:{to}"),
        ])
        .status();
    let (now, _) = soft();
    assert!(
        now >= needed,
        "the load test needs {needed} open files (1,000 client sockets here, as many in the \
         gateway) but this process may open {now} (hard limit {hard}); raise it with \
         `ulimit -n {needed}` before `cargo test`"
    );
}

/// A 3.1.1 CONNECT with a clean session and a long keep-alive.
fn connect_packet(id: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.extend([4, 0x02]);
    body.extend(600u16.to_be_bytes());
    string(&mut body, id.as_bytes());
    frame(0x10, &body)
}

/// Reads exactly one packet of type `kind` (the first byte's high nibble);
/// panics on anything else, a closed connection or a timeout.
async fn expect_packet(s: &mut TcpStream, kind: u8, what: &str) -> Vec<u8> {
    let mut head = [0u8; 2];
    tokio::time::timeout(mqtt::WAIT, s.read_exact(&mut head))
        .await
        .unwrap_or_else(|_| panic!("no {what} within {:?}", mqtt::WAIT))
        .unwrap_or_else(|e| panic!("the connection closed before the {what}: {e}"));
    assert_eq!(head[0] >> 4, kind, "{what} expected, got {head:?}");
    let mut body = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut body).await.expect("the packet's body");
    body
}

/// Opens subscriber `i`: CONNECT, CONNACK, SUBSCRIBE `load/<i>`, SUBACK.
async fn subscriber(addr: SocketAddr, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| {
        panic!("connection {i} of {CONNECTIONS} could not be opened: {e}");
    });
    s.write_all(&connect_packet(&format!("load-{i}")))
        .await
        .unwrap();
    let ack = expect_packet(&mut s, 2, "CONNACK").await;
    assert_eq!(ack, [0, 0], "connection {i} was refused");
    let mut body = 1u16.to_be_bytes().to_vec();
    string(&mut body, format!("load/{i}").as_bytes());
    body.push(0);
    s.write_all(&frame(0x82, &body)).await.unwrap();
    expect_packet(&mut s, 9, "SUBACK").await;
    s
}

/// Counts the PUBLISH packets arriving on `s` until it closes.
async fn drain(mut s: TcpStream, delivered: Arc<AtomicU64>) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut at = 0;
        while let Some((len, head)) = remaining_length(&pending[at..]) {
            if pending.len() < at + head + len {
                break;
            }
            if pending[at] >> 4 == 3 {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            at += head + len;
        }
        pending.drain(..at);
    }
}

/// A packet's remaining length and the size of its fixed header, when the
/// fixed header is complete in `b`.
fn remaining_length(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *b.get(1 + i)?;
        len |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((len, 2 + i));
        }
    }
    panic!(
        "a remaining length over four bytes from the broker: {:?}",
        &b[..5]
    );
}

/// Publisher `p`'s share of the burst: QoS 0 publishes of a 16-byte
/// payload to `load/<k mod CONNECTIONS>`, written in large chunks, then a
/// PINGREQ whose PINGRESP proves the broker read all of it.
async fn publish_share(addr: SocketAddr, p: usize, share: usize) {
    let mut s = TcpStream::connect(addr).await.expect("publisher connect");
    s.write_all(&connect_packet(&format!("load-pub-{p}")))
        .await
        .unwrap();
    expect_packet(&mut s, 2, "CONNACK").await;
    let mut chunk = Vec::with_capacity(64 * 1024);
    for k in 0..share {
        let mut body = Vec::with_capacity(32);
        string(
            &mut body,
            format!("load/{}", (k * PUBLISHERS + p) % CONNECTIONS).as_bytes(),
        );
        body.extend(format!("{:016}", k).as_bytes());
        chunk.extend(frame(0x30, &body));
        if chunk.len() >= 60 * 1024 {
            s.write_all(&chunk)
                .await
                .expect("the broker took the burst");
            chunk.clear();
        }
    }
    chunk.extend([0xC0, 0x00]);
    s.write_all(&chunk)
        .await
        .expect("the broker took the burst");
    // The subscribers' deliveries may hold the broker up; its PINGRESP
    // comes after everything this publisher sent was read.
    let mut head = [0u8; 2];
    tokio::time::timeout(DEADLINE, s.read_exact(&mut head))
        .await
        .expect("a PINGRESP after the burst")
        .expect("the publisher's connection stayed open");
    assert_eq!(head, [0xD0, 0x00], "PINGRESP expected");
}

/// A client that publishes to itself at QoS 1 every 100 ms and records
/// each round trip; stops when `stop` is set, returning the round trips.
async fn probe(addr: SocketAddr, id: &str, stop: Arc<AtomicU64>) -> Vec<Duration> {
    let (client, mut el) = mqtt::connect(mqtt::options(id, addr))
        .await
        .unwrap_or_else(|e| panic!("the probe {id} could not connect: {e}"));
    let topic = format!("probe/{id}");
    let codes = mqtt::subscribe(&client, &mut el, &topic).await;
    assert_eq!(codes.len(), 1);
    let mut trips = Vec::new();
    while stop.load(Ordering::Relaxed) == 0 || trips.is_empty() {
        let sent = Instant::now();
        let seq = trips.len().to_string();
        client
            .publish(&topic, QoS::AtLeastOnce, false, seq.clone())
            .await
            .unwrap();
        let trip = tokio::time::timeout(PROBE_BOUND, echo(&mut el, &seq))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "probe {id}: message {seq} did not come back within {PROBE_BOUND:?} \
                     (the broker stopped serving)"
                )
            });
        assert!(trip, "probe {id}: its connection failed");
        trips.push(sent.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(client);
    trips
}

/// Polls until the probe's own message `seq` comes back (true) or the
/// connection fails (false).
async fn echo(el: &mut EventLoop, seq: &str) -> bool {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::Publish(p))) if p.payload == seq.as_bytes() => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_and_a_burst_keep_memory_bounded_and_the_broker_serving() {
    let n = messages();
    ensure_open_files(2 * CONNECTIONS as u64 + 512);
    let (_dir, config) = temp_file(
        "perch.toml",
        &format!(
            "[broker]\nmax_connections = 2048\nmax_pending_connections = 256\n\
             max_message_log_bytes = {MAX_MESSAGE_LOG_BYTES}\nmax_filters = {MAX_FILTERS}\n\
             max_segment_count = {MAX_SEGMENT_COUNT}\n\
             max_outgoing_packet_count = {MAX_OUTGOING_PACKET_COUNT}\n\n\
             [[broker.listeners]]\nname = \"default\"\nlisten = \"127.0.0.1:0\"\n\
             allow_anonymous = true\n"
        ),
    );
    // Started after the gateway: starting it may build the binary first.
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let started = Instant::now();
    let addr = gw.addr();
    let pid = gw.pid();
    let idle_kib = rss_kib(pid).expect("the gateway's RSS");
    let peak = RssPeak::watch(pid);

    // 1,000 connections, 50 opening at a time (below
    // broker.max_pending_connections).
    let delivered = Arc::new(AtomicU64::new(0));
    let mut drains = JoinSet::new();
    let mut opened = 0;
    while opened < CONNECTIONS {
        let mut batch = JoinSet::new();
        for i in opened..(opened + 50).min(CONNECTIONS) {
            batch.spawn(subscriber(addr, i));
        }
        while let Some(s) = batch.join_next().await {
            let s = s.expect("a subscriber task");
            drains.spawn(drain(s, delivered.clone()));
            opened += 1;
        }
    }
    let connected_in = started.elapsed();
    let connected_kib = rss_kib(pid).expect("the gateway's RSS");

    // The probe runs through the burst.
    let stop = Arc::new(AtomicU64::new(0));
    let during = tokio::spawn(probe(addr, "during", stop.clone()));
    let burst_start = Instant::now();
    let mut publishers = JoinSet::new();
    for p in 0..PUBLISHERS {
        let share = n / PUBLISHERS + usize::from(p < n % PUBLISHERS);
        publishers.spawn(publish_share(addr, p, share));
    }
    while let Some(r) = tokio::time::timeout(DEADLINE, publishers.join_next())
        .await
        .expect("the burst within the deadline")
    {
        r.expect("a publisher");
    }
    let burst = burst_start.elapsed();

    // Deliveries trail the burst: wait until all arrived or none arrived
    // for two seconds (QoS 0 may be dropped towards a slow subscriber).
    let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
    loop {
        let now = delivered.load(Ordering::Relaxed);
        if now as usize >= n || last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the test ran past {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered_n = delivered.load(Ordering::Relaxed);
    stop.store(1, Ordering::Relaxed);
    let trips = during.await.expect("the probe during the burst");

    // After the burst: still alive, a new client is served.
    assert!(
        rss_kib(pid).is_some(),
        "the gateway died during the burst:\n{}",
        gw.log_text()
    );
    let after = probe(addr, "after", stop.clone()).await;
    let peak_kib = peak.peak_kib().max(rss_kib(pid).unwrap_or(0));
    // The bound: the gateway with its connections, plus the most messages
    // the logs can keep and the most packets queued towards the clients. Each filter keeps MAX_SEGMENT_COUNT segments of
    // MAX_MESSAGE_LOG_BYTES / (MAX_FILTERS * MAX_SEGMENT_COUNT) bytes, each
    // overshooting by at most one message.
    let segment = MAX_MESSAGE_LOG_BYTES / (MAX_FILTERS * MAX_SEGMENT_COUNT);
    let per_filter = MAX_SEGMENT_COUNT * (segment / MIN_COUNTED_BYTES + 1);
    let kept = (n as u64).min(MAX_FILTERS * per_filter);
    let queued = CONNECTIONS as u64 * MAX_OUTGOING_PACKET_COUNT;
    let bound_kib =
        connected_kib + (kept * KEPT_MESSAGE_BYTES + queued * QUEUED_PACKET_BYTES) / 1024;
    let slowest = trips.iter().max().copied().unwrap_or_default();
    println!(
        "load: {CONNECTIONS} connections (opened in {:.1} s), {n} messages from {PUBLISHERS} \
         publishers in {:.1} s ({:.0}/s), {delivered_n} delivered; gateway RSS idle {} KiB, \
         with the connections {} KiB, peak {} KiB (bound {} KiB: at most {kept} messages kept); {} probe round trips during \
         the burst, slowest {:.0} ms; after: {:.0} ms; total {:.1} s",
        connected_in.as_secs_f64(),
        burst.as_secs_f64(),
        n as f64 / burst.as_secs_f64(),
        idle_kib,
        connected_kib,
        peak_kib,
        bound_kib,
        trips.len(),
        slowest.as_secs_f64() * 1e3,
        after[0].as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64()
    );
    assert!(
        peak_kib < bound_kib,
        "the gateway's RSS peaked at {peak_kib} KiB, over the bound of {bound_kib} KiB \
         ({connected_kib} KiB with the connections, then at most {kept} messages kept in the \
         broker's logs at {KEPT_MESSAGE_BYTES} bytes each and {queued} packets queued at \
         {QUEUED_PACKET_BYTES})"
    );
    assert!(
        delivered_n > 0,
        "no message of the burst reached a subscriber"
    );
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
    drains.abort_all();
}
