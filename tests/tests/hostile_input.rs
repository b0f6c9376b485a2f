//! Hostile MQTT input, sent raw over TCP to the real gateway while a probe
//! client keeps publishing and receiving: zero-length topics, unsolicited
//! acknowledgements, CONNECTs with garbage strings, an announced packet far
//! over the limit, bad flags, and slowloris clients. The broker must close
//! (or, where the specification says so, answer or ignore) the offending
//! client and keep serving every other one. The malformed packets
//! conformance.rs already covers (bad remaining length, reserved flags on
//! SUBSCRIBE, QoS 3, a first packet that is not CONNECT, a second CONNECT,
//! a packet over the size limit) are not repeated here.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::util::{temp_file, Gateway};

/// Every wait here; generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(15);

fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { b | 0x80 } else { b });
        if n == 0 {
            break;
        }
    }
}

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// A 3.1.1 CONNECT with clean session, keep-alive 30 s and `id`; `extra`
/// flags and fields (username, password) as given.
fn connect_with(id: &[u8], flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.push(4);
    body.push(0x02 | flags);
    body.extend_from_slice(&30u16.to_be_bytes());
    string(&mut body, id);
    body.extend_from_slice(rest);
    frame(0x10, &body)
}

fn connect(id: &str) -> Vec<u8> {
    connect_with(id.as_bytes(), 0, &[])
}

fn publish0(topic: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic);
    body.extend_from_slice(payload);
    frame(0x30, &body)
}

#[derive(Debug, PartialEq)]
enum End {
    Closed,
    Timeout,
}

struct Raw {
    s: TcpStream,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("TCP connect"),
        }
    }

    /// Opens a connection, sends a CONNECT for `id`, checks the CONNACK.
    async fn connected(addr: SocketAddr, id: &str) -> Raw {
        let mut raw = Raw::open(addr).await;
        raw.send(&connect(id)).await;
        let ack = raw.read(WAIT).await.expect("a CONNACK");
        assert_eq!(ack, (0x20, vec![0, 0]), "CONNACK accepted");
        raw
    }

    async fn send(&mut self, bytes: &[u8]) {
        // The server may already have closed: that is what some tests want.
        let _ = self.s.write_all(bytes).await;
    }

    async fn read(&mut self, wait: Duration) -> Result<(u8, Vec<u8>), End> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut head = [0u8; 1];
        match tokio::time::timeout_at(deadline, self.s.read_exact(&mut head)).await {
            Err(_) => return Err(End::Timeout),
            Ok(Err(_)) => return Err(End::Closed),
            Ok(Ok(_)) => {}
        }
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            match tokio::time::timeout_at(deadline, self.s.read_exact(&mut b)).await {
                Err(_) => return Err(End::Timeout),
                Ok(Err(_)) => return Err(End::Closed),
                Ok(Ok(_)) => {}
            }
            len |= usize::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        match tokio::time::timeout_at(deadline, self.s.read_exact(&mut body)).await {
            Err(_) => Err(End::Timeout),
            Ok(Err(_)) => Err(End::Closed),
            Ok(Ok(_)) => Ok((head[0], body)),
        }
    }

    /// Reads until the server closes; returns what it sent before.
    async fn until_closed(&mut self, what: &str) -> Vec<(u8, Vec<u8>)> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            match self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok(p) => seen.push(p),
                Err(End::Closed) => return seen,
                Err(End::Timeout) => panic!("{what}: not closed within {WAIT:?}; saw {seen:?}"),
            }
        }
    }

    /// Whether the connection still works: PINGREQ gets PINGRESP.
    async fn still_open(&mut self) -> bool {
        self.send(&[0xc0, 0]).await;
        loop {
            match self.read(WAIT).await {
                Ok((0xd0, _)) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}

/// A client that publishes `probe/x` every 20 ms at QoS 1 while another
/// receives them; counts both. Stopped by [`Probe::finish`], which checks
/// that every message arrived and none waited long.
struct Probe {
    sent: Arc<AtomicU64>,
    received: Arc<AtomicU64>,
    longest_gap_ms: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Probe {
    async fn start(addr: SocketAddr) -> Probe {
        let options = |id: &str| {
            let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
            o.set_keep_alive(Duration::from_secs(30));
            o
        };
        let (sub, mut sub_el) = AsyncClient::new(options("probe-sub"), 64);
        sub.subscribe("probe/#", QoS::AtLeastOnce).await.unwrap();
        loop {
            match tokio::time::timeout(WAIT, sub_el.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                other => panic!("probe subscriber: {other:?}"),
            }
        }
        let (publisher, mut pub_el) = AsyncClient::new(options("probe-pub"), 64);
        let sent = Arc::new(AtomicU64::new(0));
        let received = Arc::new(AtomicU64::new(0));
        let longest_gap_ms = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        {
            let (received, gap) = (received.clone(), longest_gap_ms.clone());
            tasks.push(tokio::spawn(async move {
                let mut last = Instant::now();
                loop {
                    match sub_el.poll().await {
                        Ok(Event::Incoming(Packet::Publish(_))) => {
                            received.fetch_add(1, Ordering::SeqCst);
                            let ms = last.elapsed().as_millis() as u64;
                            gap.fetch_max(ms, Ordering::SeqCst);
                            last = Instant::now();
                        }
                        Ok(_) => {}
                        Err(e) => panic!("the probe's subscriber lost its connection: {e}"),
                    }
                }
            }));
        }
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = pub_el.poll().await {
                    panic!("the probe's publisher lost its connection: {e}");
                }
            }
        }));
        {
            let (sent, stop) = (sent.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    publisher
                        .publish("probe/x", QoS::AtLeastOnce, false, b"p".to_vec())
                        .await
                        .unwrap();
                    sent.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Probe {
            sent,
            received,
            longest_gap_ms,
            stop,
            tasks,
        }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + WAIT;
        let sent = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = self.sent.load(Ordering::SeqCst);
            if self.received.load(Ordering::SeqCst) >= sent || Instant::now() > deadline {
                break sent;
            }
        };
        for t in &self.tasks {
            assert!(!t.is_finished(), "a probe task ended (lost its connection)");
            t.abort();
        }
        let received = self.received.load(Ordering::SeqCst);
        let gap = self.longest_gap_ms.load(Ordering::SeqCst);
        assert!(sent > 100, "the probe published only {sent} messages");
        assert_eq!(received, sent, "the probe lost messages");
        assert!(
            gap < 5_000,
            "the probe waited {gap} ms for a message while hostile clients were served"
        );
    }
}

/// A gateway whose broker closes a connection that sent no whole CONNECT
/// within 2 s.
fn gateway() -> (tempfile::TempDir, Gateway) {
    let (dir, path) = temp_file(
        "perch.toml",
        "[broker]\nconnection_timeout_ms = 2000\n\n[[broker.listeners]]\nname = \"local\"\n\
         listen = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let gw = Gateway::start(&["--config", path.to_str().unwrap()]);
    (dir, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mqtt_clients_are_closed_and_the_others_keep_being_served() {
    let (_dir, gw) = gateway();
    let addr = gw.addr();
    let probe = Probe::start(addr).await;

    // Slowloris: connections that dribble a CONNECT one byte a second, and
    // connections that send nothing, are closed at connection_timeout_ms
    // while everything else goes on. Started first, checked last.
    let slow: Vec<_> = (0..20)
        .map(|i| {
            tokio::spawn(async move {
                let mut raw = Raw::open(addr).await;
                let started = Instant::now();
                let bytes = connect(&format!("slow-{i}"));
                for b in bytes.iter().take(if i % 2 == 0 { bytes.len() } else { 0 }) {
                    raw.send(&[*b]).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if started.elapsed() > WAIT {
                        break;
                    }
                }
                raw.until_closed("slowloris").await;
                started.elapsed()
            })
        })
        .collect();

    // 3.1.1 §4.7.3 (MQTT-4.7.3-1): topic names and filters are at least one
    // character long. A PUBLISH to "" and a SUBSCRIBE to "" close that
    // client.
    let mut raw = Raw::connected(addr, "zero-pub").await;
    raw.send(&publish0(b"", b"x")).await;
    raw.until_closed("zero-length topic name").await;
    let mut raw = Raw::connected(addr, "zero-sub").await;
    let mut sub = vec![0, 1];
    string(&mut sub, b"");
    sub.push(0);
    raw.send(&frame(0x82, &sub)).await;
    let seen = raw.until_closed("zero-length topic filter").await;
    assert!(seen.iter().all(|p| p.0 != 0x90), "no SUBACK: {seen:?}");

    // Acknowledgements for packet ids this client never used (PUBACK,
    // PUBREC, PUBREL, PUBCOMP), one client each. Neither specification
    // names an answer for PUBACK/PUBREC/PUBCOMP (5.0 §4.13 lets the server
    // close on a protocol error); a PUBREL may get PUBCOMP (5.0: reason
    // 0x92). Whatever that client gets, it is only acks or a close: never
    // a routed message, and the probe goes on.
    for (i, first) in [0x40u8, 0x50, 0x62, 0x70].into_iter().enumerate() {
        let mut raw = Raw::connected(addr, &format!("acks-{i}")).await;
        raw.send(&[first, 2, 0x12, 0x34]).await;
        let mut seen = Vec::new();
        while let Ok(p) = raw.read(Duration::from_millis(1_500)).await {
            seen.push(p);
        }
        assert!(
            seen.iter().all(|(t, _)| *t == 0x70 || *t == 0x62),
            "only PUBCOMP/PUBREL in answer to an unsolicited {first:#04x}: {seen:?}"
        );
        let open = raw.still_open().await;
        eprintln!("hostile_input: unsolicited {first:#04x}: answered {seen:?}, open after: {open}");
    }
    // A PUBREL with reserved flags 0000 instead of 0010 is malformed
    // (3.1.1 §3.6.1, MQTT-3.6.1-1): closed.
    let mut raw = Raw::connected(addr, "pubrel-flags").await;
    raw.send(&[0x60, 2, 0, 1]).await;
    raw.until_closed("PUBREL with bad flags").await;

    // CONNECTs with garbage: not UTF-8 (3.1.1 §1.5.3, MQTT-1.5.3-1), a
    // username flag with no username, a string
    // longer than the packet, a wrong protocol name (MQTT-3.1.2-1). Each is
    // closed without being accepted.
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        (
            "client id not UTF-8",
            connect_with(&[0xff, 0xfe, 0x41], 0, &[]),
        ),
        (
            "username flag without a username",
            connect_with(b"u", 0x80, &[]),
        ),
        ("password flag without username flag", {
            let mut rest = Vec::new();
            string(&mut rest, b"pw");
            connect_with(b"p", 0x40, &rest)
        }),
        ("string longer than the packet", {
            let mut c = connect("toolong");
            let at = c.len() - 9; // the client id's length field
            c[at..at + 2].copy_from_slice(&0xfff0u16.to_be_bytes());
            c
        }),
        ("protocol name MQTX", {
            let mut c = connect("mqtx");
            c[7] = b'X';
            c
        }),
        (
            "random bytes",
            (0..64u32).map(|i| (i * 97 % 251) as u8).collect(),
        ),
    ];
    for (what, bytes) in &garbage {
        let mut raw = Raw::open(addr).await;
        raw.send(bytes).await;
        let seen = raw.until_closed(what).await;
        assert!(
            seen.iter().all(|(t, b)| *t != 0x20 || b.get(1) != Some(&0)),
            "{what}: accepted: {seen:?}"
        );
    }

    // A header that announces the largest possible packet (256 MiB), far
    // over max_packet_size_bytes, and then nothing: closed at once, without
    // waiting for (or allocating) the body.
    let mut raw = Raw::connected(addr, "huge").await;
    raw.send(&[0x30, 0xff, 0xff, 0xff, 0x7f, 0, 1, b'x']).await;
    let started = Instant::now();
    raw.until_closed("a 256 MiB announcement").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed promptly"
    );

    for task in slow {
        let took = task.await.expect("slowloris task");
        assert!(
            took < Duration::from_secs(10),
            "a slowloris connection was held {took:?}, connection_timeout_ms is 2000"
        );
    }
    probe.finish().await;
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}
