//! `perch-load`: the benchmark suite's load generator.
//!
//! N publisher connections send JSON sensor payloads (with their send time
//! embedded, see `perch_bench::sensor`) at a total rate or as fast as the
//! broker takes them, at QoS 0 or 1, for a duration. One subscriber (on the
//! same broker, or on another one: the upstream of an edge job) measures the
//! end-to-end latency of what arrives and counts what never does. At QoS 1
//! the publishers also measure each publish's PUBACK latency (publish ->
//! PUBACK, `ack_p50_ms`...): what a sensor waits for. The result is one
//! JSON line on stdout.
//!
//! `--null-sink` points the publishers at a sink inside this process that
//! answers CONNECT and otherwise only reads: the generator's own ceiling.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use clap::Parser;
use perch_bench::{mqtt, sensor};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

#[derive(Parser, Debug, Clone)]
#[command(about = "perch's benchmark load generator: MQTT publishers and a measuring subscriber")]
struct Args {
    /// Broker the publishers connect to (ignored with --null-sink).
    #[arg(long, default_value = "127.0.0.1:1883")]
    broker: String,
    /// Publisher connections.
    #[arg(long, default_value_t = 10)]
    publishers: usize,
    /// Payload size in bytes (at least the ~80 bytes the fields take).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Total messages per second over all publishers; 0 = as fast as the
    /// broker takes them.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// QoS of the publishes and of the subscription: 0 or 1.
    #[arg(long, default_value_t = 0)]
    qos: u8,
    /// How long the publishers send, in seconds.
    #[arg(long, default_value_t = 5.0)]
    duration_s: f64,
    /// Topics are `<prefix>/s<index>/temperature`.
    #[arg(long, default_value = "sensors")]
    topic_prefix: String,
    /// Broker the subscriber connects to; default: the publishers' broker.
    #[arg(long)]
    sub_broker: Option<String>,
    /// The subscriber's topic filter; default `<prefix>/+/temperature`.
    #[arg(long)]
    sub_topic: Option<String>,
    /// The subscriber expects only readings whose seq is a multiple of this
    /// (100 for an edge job that forwards 1 in 100).
    #[arg(long, default_value_t = 1)]
    expect_every: u64,
    /// No subscriber: measure what the publishers get in only.
    #[arg(long)]
    no_subscriber: bool,
    /// Publish into a sink inside this process that only reads (implies
    /// --no-subscriber): the generator's own ceiling.
    #[arg(long)]
    null_sink: bool,
    /// After the publishers stop, wait at most this long for the rest.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout_s: f64,
    /// Unacknowledged QoS 1 publishes per connection, at most.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// A name for this run, copied into the result line.
    #[arg(long, default_value = "")]
    label: String,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Connects and waits for a CONNACK that accepts us.
async fn connect(addr: &str, client_id: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to the broker at {addr}: is it running?"))?;
    stream.set_nodelay(true)?;
    stream.write_all(&mqtt::connect(client_id)).await?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut connack))
        .await
        .with_context(|| format!("no CONNACK from {addr} within 10 s"))?
        .with_context(|| format!("{addr} closed the connection instead of a CONNACK"))?;
    if connack[0] >> 4 != mqtt::CONNACK || connack[3] != 0 {
        bail!("{addr} refused the connection of {client_id}: CONNACK {connack:02x?}");
    }
    Ok(stream)
}

/// What all publishers share.
struct Counters {
    sent: Vec<AtomicU64>,
}

/// One publisher: paced to `rate` msgs/s (0 = flat out) until `deadline`.
/// Returns the PUBACK latencies (µs) of its QoS 1 publishes.
async fn publish(
    args: Arc<Args>,
    addr: String,
    index: usize,
    rate: f64,
    start: Instant,
    deadline: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<Vec<u64>> {
    let stream = connect(&addr, &format!("perch-load-pub-{index}")).await?;
    let (mut rd, mut wr) = stream.into_split();
    let topic = format!("{}/s{index:04}/temperature", args.topic_prefix);
    let window = Arc::new(Semaphore::new(args.inflight.max(1)));
    // When each packet id was last written (µs after `start`): a packet id
    // is reused only after its PUBACK, so the reader finds its own.
    let written_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..=u16::MAX).map(|_| AtomicU64::new(0)).collect());
    let since_start = move || Instant::now().saturating_duration_since(start).as_micros() as u64;
    // QoS 1: a reader returns a window permit per PUBACK and notes its
    // latency. QoS 0: it drains whatever the broker might send, so the
    // socket never fills.
    let acks = {
        let (window, written_at) = (window.clone(), written_at.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut buf = vec![0u8; 64 * 1024];
            let mut filled = 0;
            loop {
                let n = rd.read(&mut buf[filled..]).await?;
                if n == 0 {
                    return Ok::<_, io::Error>(latencies);
                }
                filled += n;
                let now = since_start();
                let mut at = 0;
                while let Some(p) = mqtt::next_packet(&buf[..filled], at)? {
                    if p.header >> 4 == mqtt::PUBACK && p.body.len() >= 2 {
                        let id = u16::from_be_bytes([buf[p.body.start], buf[p.body.start + 1]]);
                        let sent = written_at[usize::from(id)].load(Ordering::Relaxed);
                        latencies.push(now.saturating_sub(sent));
                        window.add_permits(1);
                    }
                    at = p.body.end;
                }
                buf.copy_within(at..filled, 0);
                filled -= at;
            }
        })
    };
    let mut payload = Vec::with_capacity(args.size + 64);
    let mut out = Vec::with_capacity(256 * 1024);
    let mut seq = 0u64;
    let mut packet_id = 0u16;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = if rate > 0.0 {
            (rate * (now - start).as_secs_f64()) as u64 + 1
        } else {
            seq + 256
        };
        if seq >= due {
            let next = start + Duration::from_secs_f64((seq as f64) / rate);
            tokio::time::sleep_until(next.min(deadline).into()).await;
            continue;
        }
        let ts = now_us();
        while seq < due && out.len() < 200 * 1024 {
            if args.qos > 0 {
                if out.is_empty() {
                    window.acquire().await?.forget();
                } else if let Ok(permit) = window.try_acquire() {
                    permit.forget();
                } else {
                    break;
                }
                packet_id = packet_id.checked_add(1).unwrap_or(1);
            }
            sensor::write(&mut payload, index, seq, ts, args.size);
            mqtt::put_publish(&mut out, &topic, args.qos, packet_id, &payload);
            if args.qos > 0 {
                written_at[usize::from(packet_id)].store(since_start(), Ordering::Relaxed);
            }
            seq += 1;
        }
        wr.write_all(&out).await?;
        out.clear();
        counters.sent[index].store(seq, Ordering::Relaxed);
    }
    if args.qos > 0 {
        // Every publish acknowledged before we say it was sent.
        let all = args.inflight.max(1) as u32;
        let _ = tokio::time::timeout(
            Duration::from_secs_f64(args.drain_timeout_s),
            window.acquire_many(all),
        )
        .await;
    }
    let _ = wr.write_all(&[0xE0, 0x00]).await;
    let _ = wr.shutdown().await;
    // The reader ends when the broker closes the connection after the
    // DISCONNECT; one that does not is not waited for.
    let latencies = match tokio::time::timeout(Duration::from_secs(5), acks).await {
        Ok(Ok(Ok(latencies))) => latencies,
        _ => Vec::new(),
    };
    Ok(latencies)
}

/// What the subscriber measured.
#[derive(Default)]
struct Received {
    unique: u64,
    duplicates: u64,
    unexpected: u64,
    latencies_us: Vec<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Per-publisher bitsets of the seqs seen, to count duplicates.
struct Seen(Vec<Vec<u64>>);

impl Seen {
    fn insert(&mut self, device: usize, seq: u64) -> bool {
        if device >= self.0.len() {
            self.0.resize_with(device + 1, Vec::new);
        }
        let bits = &mut self.0[device];
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if word >= bits.len() {
            bits.resize(word + 1, 0);
        }
        let new = bits[word] & (1 << bit) == 0;
        bits[word] |= 1 << bit;
        new
    }
}

async fn flush_acks(wr: &mut OwnedWriteHalf, acks: &mut Vec<u8>) -> io::Result<()> {
    if !acks.is_empty() {
        wr.write_all(acks).await?;
        acks.clear();
    }
    Ok(())
}

/// Subscribes, signals `ready`, then reads until `stop` says everything
/// expected arrived or the drain deadline passed.
async fn subscribe(
    args: Arc<Args>,
    addr: String,
    filter: String,
    publishers: usize,
    ready: tokio::sync::oneshot::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<Option<(u64, Instant)>>,
) -> anyhow::Result<Received> {
    let mut stream = connect(&addr, "perch-load-sub").await?;
    stream
        .write_all(&mqtt::subscribe(1, &filter, args.qos))
        .await?;
    let mut buf = vec![0u8; 1024 * 1024];
    let mut filled = 0;
    // Wait for the SUBACK.
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf[filled..]))
            .await
            .context("no SUBACK within 10 s")??;
        if n == 0 {
            bail!("{addr} closed the subscriber's connection before its SUBACK");
        }
        filled += n;
        if let Some(p) = mqtt::next_packet(&buf[..filled], 0)? {
            if p.header >> 4 != mqtt::SUBACK || buf[p.body.end - 1] & 0x80 != 0 {
                bail!("{addr} refused the subscription to {filter}");
            }
            buf.copy_within(p.body.end..filled, 0);
            filled -= p.body.end;
            break;
        }
    }
    let _ = ready.send(());
    let (mut rd, mut wr) = stream.into_split();
    let mut got = Received {
        latencies_us: Vec::with_capacity(1 << 20),
        ..Received::default()
    };
    let mut seen = Seen(vec![Vec::new(); publishers]);
    let mut acks = Vec::with_capacity(64 * 1024);
    let mut pending = filled;
    loop {
        // Parse what is buffered.
        let mut at = 0;
        let now = Instant::now();
        let now_wall = now_us();
        while let Some(p) = mqtt::next_packet(&buf[..pending], at)? {
            at = p.body.end;
            if p.header >> 4 != mqtt::PUBLISH {
                continue;
            }
            let Some((id, payload)) = mqtt::publish_parts(p.header, &buf[p.body.clone()]) else {
                got.unexpected += 1;
                continue;
            };
            if let Some(id) = id {
                mqtt::put_puback(&mut acks, id);
            }
            match sensor::read(payload) {
                Some(s) if s.seq % args.expect_every == 0 => {
                    if seen.insert(s.device, s.seq) {
                        got.unique += 1;
                        got.latencies_us.push(now_wall.saturating_sub(s.ts_us));
                        got.first.get_or_insert(now);
                        got.last = Some(now);
                    } else {
                        got.duplicates += 1;
                    }
                }
                _ => got.unexpected += 1,
            }
        }
        buf.copy_within(at..pending, 0);
        pending -= at;
        flush_acks(&mut wr, &mut acks).await?;
        let state = *stop.borrow();
        if let Some((expected, deadline)) = state {
            if got.unique >= expected || Instant::now() >= deadline {
                break;
            }
        }
        if pending == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        tokio::select! {
            n = rd.read(&mut buf[pending..]) => {
                let n = n?;
                if n == 0 {
                    bail!("{addr} closed the subscriber's connection");
                }
                pending += n;
            }
            _ = stop.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let _ = wr.write_all(&[0xE0, 0x00]).await;
    Ok(got)
}

/// A sink that accepts MQTT connections, answers CONNECT (and PUBACKs QoS 1)
/// and otherwise only reads.
async fn null_sink() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let mut filled = 0;
                let mut out = Vec::new();
                loop {
                    let n = stream.read(&mut buf[filled..]).await?;
                    if n == 0 {
                        return Ok::<_, io::Error>(());
                    }
                    filled += n;
                    let mut at = 0;
                    while let Some(p) = mqtt::next_packet(&buf[..filled], at)? {
                        match p.header >> 4 {
                            mqtt::CONNECT => out.extend_from_slice(&[0x20, 2, 0, 0]),
                            mqtt::PUBLISH => {
                                if let Some((Some(id), _)) =
                                    mqtt::publish_parts(p.header, &buf[p.body.clone()])
                                {
                                    mqtt::put_puback(&mut out, id);
                                }
                            }
                            mqtt::PINGREQ => out.extend_from_slice(&[0xD0, 0]),
                            _ => {}
                        }
                        at = p.body.end;
                    }
                    buf.copy_within(at..filled, 0);
                    filled -= at;
                    if !out.is_empty() {
                        stream.write_all(&out).await?;
                        out.clear();
                    }
                }
            });
        }
    });
    Ok(addr)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn validate(args: &Args) -> anyhow::Result<()> {
    if args.qos > 1 {
        bail!("--qos {} is not supported: use 0 or 1", args.qos);
    }
    if args.publishers == 0 || args.publishers > 10_000 {
        bail!(
            "--publishers {} is out of range: use 1 to 10000",
            args.publishers
        );
    }
    if !(args.duration_s > 0.0 && args.duration_s <= 3600.0) {
        bail!(
            "--duration-s {} is out of range: use more than 0 and at most 3600",
            args.duration_s
        );
    }
    if args.expect_every == 0 {
        bail!("--expect-every 0 is meaningless: use 1 (every message) or more");
    }
    if args.size > 1024 * 1024 {
        bail!("--size {} is over 1 MiB: use a smaller payload", args.size);
    }
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<String> {
    validate(&args)?;
    let args = Arc::new(args);
    let addr = if args.null_sink {
        null_sink().await?
    } else {
        args.broker.clone()
    };
    let with_subscriber = !(args.no_subscriber || args.null_sink);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let subscriber = if with_subscriber {
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let sub_addr = args.sub_broker.clone().unwrap_or_else(|| addr.clone());
        let filter = args
            .sub_topic
            .clone()
            .unwrap_or_else(|| format!("{}/+/temperature", args.topic_prefix));
        let task = tokio::spawn(subscribe(
            args.clone(),
            sub_addr,
            filter,
            args.publishers,
            ready_tx,
            stop_rx,
        ));
        if ready_rx.await.is_err() {
            // The task ended before subscribing: its error says why.
            task.await??;
            bail!("the subscriber stopped before it subscribed");
        }
        Some(task)
    } else {
        None
    };

    let counters = Arc::new(Counters {
        sent: (0..args.publishers).map(|_| AtomicU64::new(0)).collect(),
    });
    // All publishers connect first, so the clock starts with all of them.
    let start = Instant::now() + Duration::from_millis(200 + args.publishers as u64 * 2);
    let deadline = start + Duration::from_secs_f64(args.duration_s);
    let per_publisher = args.rate as f64 / args.publishers as f64;
    let mut publishers = Vec::with_capacity(args.publishers);
    for index in 0..args.publishers {
        let (args, addr, counters) = (args.clone(), addr.clone(), counters.clone());
        publishers.push(tokio::spawn(async move {
            tokio::time::sleep_until(start.into()).await;
            publish(args, addr, index, per_publisher, start, deadline, counters).await
        }));
    }
    let mut ack_latencies_us = Vec::new();
    for p in publishers {
        ack_latencies_us.extend(p.await??);
    }
    ack_latencies_us.sort_unstable();
    let send_elapsed = start.elapsed().as_secs_f64();
    let sent: u64 = counters
        .sent
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .sum();
    let expected: u64 = counters
        .sent
        .iter()
        .map(|s| s.load(Ordering::Relaxed).div_ceil(args.expect_every))
        .sum();
    let mut line = format!(
        r#"{{"label":"{}","publishers":{},"size":{},"qos":{},"rate_target":{},"duration_s":{},"sent":{},"send_rate":{:.0}"#,
        args.label.replace('"', "'"),
        args.publishers,
        args.size,
        args.qos,
        args.rate,
        args.duration_s,
        sent,
        sent as f64 / send_elapsed
    );
    if args.qos > 0 {
        line += &format!(
            r#","acked":{},"ack_p50_ms":{:.3},"ack_p99_ms":{:.3},"ack_max_ms":{:.3}"#,
            ack_latencies_us.len(),
            percentile(&ack_latencies_us, 50.0) as f64 / 1000.0,
            percentile(&ack_latencies_us, 99.0) as f64 / 1000.0,
            ack_latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
    if let Some(task) = subscriber {
        let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout_s);
        let _ = stop_tx.send(Some((expected, drain_deadline)));
        let mut got = task.await??;
        got.latencies_us.sort_unstable();
        let recv_span = match got.last {
            Some(last) if last > start => (last - start).as_secs_f64(),
            _ => send_elapsed,
        };
        line += &format!(
            r#","expected":{},"received":{},"lost":{},"duplicates":{},"unexpected":{},"recv_rate":{:.0},"p50_ms":{:.3},"p99_ms":{:.3},"max_ms":{:.3}"#,
            expected,
            got.unique,
            expected.saturating_sub(got.unique),
            got.duplicates,
            got.unexpected,
            got.unique as f64 / recv_span,
            percentile(&got.latencies_us, 50.0) as f64 / 1000.0,
            percentile(&got.latencies_us, 99.0) as f64 / 1000.0,
            got.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
    }
    line.push('}');
    Ok(line)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(line) => println!("{line}"),
        Err(e) => {
            eprintln!("perch-load: {e:#}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["perch-load"];
        argv.extend_from_slice(extra);
        Args::parse_from(argv)
    }

    #[test]
    fn bad_options_say_what_to_use_instead() {
        for (extra, expected) in [
            (&["--qos", "2"][..], "--qos 2 is not supported: use 0 or 1"),
            (&["--publishers", "0"], "use 1 to 10000"),
            (&["--duration-s", "0"], "use more than 0"),
            (&["--expect-every", "0"], "use 1 (every message) or more"),
            (&["--size", "2000000"], "use a smaller payload"),
        ] {
            let err = validate(&args(extra)).unwrap_err().to_string();
            assert!(err.contains(expected), "{extra:?}: {err}");
        }
        validate(&args(&[])).unwrap();
    }

    #[tokio::test]
    async fn publishes_into_the_null_sink_at_the_rate_asked() {
        let line = run(args(&[
            "--null-sink",
            "--publishers",
            "3",
            "--rate",
            "3000",
            "--duration-s",
            "0.5",
            "--label",
            "t",
        ]))
        .await
        .unwrap();
        let sent: u64 = line
            .split(r#""sent":"#)
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no sent count in {line}"));
        // 1500 due in 0.5 s, never more (3 publishers may round up by one
        // each); a loaded machine may stall a publisher near the end, so
        // fewer only has to be most of them.
        assert!((750..=1503).contains(&sent), "{line}");
        assert!(line.starts_with(r#"{"label":"t","publishers":3"#), "{line}");
        assert!(
            !line.contains("p99_ms"),
            "no subscriber, no latency: {line}"
        );
    }

    #[tokio::test]
    async fn qos1_publishes_report_their_puback_latency() {
        let line = run(args(&[
            "--null-sink",
            "--qos",
            "1",
            "--publishers",
            "2",
            "--rate",
            "2000",
            "--duration-s",
            "0.5",
        ]))
        .await
        .unwrap();
        let number = |name: &str| -> f64 {
            line.split(&format!(r#""{name}":"#))
                .nth(1)
                .and_then(|s| s.split([',', '}']).next())
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {line}"))
        };
        assert_eq!(
            number("acked"),
            number("sent"),
            "every publish acknowledged: {line}"
        );
        assert!(number("ack_p50_ms") <= number("ack_p99_ms"), "{line}");
        assert!(number("ack_max_ms") < 10_000.0, "{line}");
    }

    #[tokio::test]
    async fn a_broker_that_is_not_there_is_named_in_the_error() {
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = run(args(&["--broker", &format!("127.0.0.1:{port}")]))
            .await
            .unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("cannot connect to the broker at 127.0.0.1:{port}")),
            "{text}"
        );
    }
}
