//! Hostile MQTT input, sent raw over TCP to the real gateway: malformed
//! packets, zero-length topics, unsolicited acknowledgements, CONNECTs with
//! garbage, announced packets far over the limit, and slowloris clients
//! that never finish their CONNECT. The broker must close (or, where the
//! specification says so, answer) the offending client and keep serving
//! every other one, which a probe client checks throughout. The raw client
//! is `util::raw`, shared with conformance.rs.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::util::functions::{file, wasm_file, Client, Gateway as FnGateway};
use crate::util::raw::{frame, string, End, Raw};
use crate::util::{perch_with_stdin, temp_file, Gateway};

/// Every wait here; generous for a loaded machine.
const WAIT: Duration = Duration::from_secs(15);

/// A 3.1.1 CONNECT with clean session, keep-alive 30 s and `id`; `flags`
/// added to the connect flags and `rest` (username, password) appended.
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

/// Opens a connection, sends a CONNECT for `id`, checks it is accepted.
async fn connected(addr: SocketAddr, id: &str) -> Raw {
    let (raw, ack) = Raw::connect(addr, &connect(id)).await;
    assert_eq!(ack, (0x20, vec![0, 0]), "CONNACK accepted");
    raw
}

/// Reads until the server closes `raw`; returns what it sent before.
async fn closed(raw: &mut Raw, what: &str) -> Vec<(u8, Vec<u8>)> {
    match raw.closed_within(WAIT).await {
        Ok(seen) => seen,
        Err(seen) => panic!("{what}: not closed within {WAIT:?}; saw {seen:?}"),
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
        // At least 100 messages (2 s at one per 20 ms), so the probe spans
        // the attacks and what follows them.
        let deadline = Instant::now() + WAIT;
        while self.sent.load(Ordering::SeqCst) < 100 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + WAIT;
        let sent = loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let sent = self.sent.load(Ordering::SeqCst);
            if self.received.load(Ordering::SeqCst) >= sent || Instant::now() > deadline {
                break sent;
            }
        };
        // The first two poll the connections and end only if one is lost;
        // the publishing loop ends when told to stop.
        for t in &self.tasks[..2] {
            assert!(!t.is_finished(), "a probe task ended (lost its connection)");
        }
        for t in &self.tasks {
            t.abort();
        }
        let received = self.received.load(Ordering::SeqCst);
        let gap = self.longest_gap_ms.load(Ordering::SeqCst);
        assert!(sent >= 100, "the probe published only {sent} messages");
        assert_eq!(received, sent, "the probe lost messages");
        assert!(
            gap < 5_000,
            "the probe waited {gap} ms for a message while hostile clients were served"
        );
    }
}

/// A gateway whose broker closes a connection that sent no whole CONNECT
/// within `timeout_ms`, with `extra` keys in `[broker]`.
fn gateway_with(timeout_ms: u64, extra: &str) -> (tempfile::TempDir, Gateway) {
    let (dir, path) = temp_file(
        "perch.toml",
        &format!(
            "[broker]\nconnection_timeout_ms = {timeout_ms}\n{extra}\n\n[[broker.listeners]]\n\
             name = \"local\"\nlisten = \"127.0.0.1:0\"\nallow_anonymous = true\n"
        ),
    );
    let gw = Gateway::start(&["--config", path.to_str().unwrap()]);
    (dir, gw)
}

/// Opens a connection and sends `bytes` one at a time, `every` apart
/// (nothing if empty), until the server closes it. Returns how long after
/// opening it was closed, or `None` if it was still open after [`WAIT`].
/// Panics if the server answers anything: it never got a whole CONNECT.
async fn dribble(addr: SocketAddr, bytes: Vec<u8>, every: Duration) -> Option<Duration> {
    let mut raw = Raw::open(addr).await;
    let started = Instant::now();
    let mut next = 0;
    while started.elapsed() < WAIT {
        if let Some(b) = bytes.get(next) {
            if !raw.try_send(&[*b]).await {
                return Some(started.elapsed());
            }
            next += 1;
        }
        match raw.read(every).await {
            Err(End::Closed) => return Some(started.elapsed()),
            Err(End::Timeout) => {}
            Ok(p) => panic!("a client that sent {next} bytes of a CONNECT got {p:?}"),
        }
    }
    None
}

/// A well-behaved client connects, subscribes and gets its own message
/// back; returns how long that took.
async fn round_trip(addr: SocketAddr, id: &str) -> Duration {
    let started = Instant::now();
    let mut options = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = AsyncClient::new(options, 16);
    client.subscribe("rt/#", QoS::AtLeastOnce).await.unwrap();
    client
        .publish("rt/x", QoS::AtLeastOnce, false, b"ok".to_vec())
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(WAIT, el.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                assert_eq!(&p.payload[..], b"ok");
                break;
            }
            Ok(Ok(_)) => {}
            other => panic!("{id}: no round trip: {other:?}"),
        }
    }
    let took = started.elapsed();
    client.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_mqtt_clients_are_closed_and_the_others_keep_being_served() {
    let (_dir, gw) = gateway_with(2_000, "");
    let addr = gw.addr();
    let probe = Probe::start(addr).await;
    let started = Instant::now();
    let phase = |what: &str| eprintln!("hostile_input: {what} done at {:?}", started.elapsed());

    // 3.1.1 §4.7.3 (MQTT-4.7.3-1): topic names and filters are at least one
    // character long. A PUBLISH to "" and a SUBSCRIBE to "" close that
    // client.
    let mut raw = connected(addr, "zero-pub").await;
    raw.try_send(&publish0(b"", b"x")).await;
    closed(&mut raw, "zero-length topic name").await;
    let mut raw = connected(addr, "zero-sub").await;
    let mut sub = vec![0, 1];
    string(&mut sub, b"");
    sub.push(0);
    raw.try_send(&frame(0x82, &sub)).await;
    let seen = closed(&mut raw, "zero-length topic filter").await;
    assert!(seen.iter().all(|p| p.0 != 0x90), "no SUBACK: {seen:?}");

    phase("zero-length topics");
    // Malformed packets after a good CONNECT (3.1.1 §4.8: the server closes
    // the connection; 5.0 §4.13 the same).
    let mut sub_flags = vec![0, 1];
    string(&mut sub_flags, b"a/b");
    sub_flags.push(0);
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        // A remaining length with a continuation bit on its fourth byte
        // (§2.2.3: at most four bytes).
        (
            "remaining length of five bytes",
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        // §3.3.1.2, MQTT-3.3.1-4: QoS 3 is malformed.
        ("PUBLISH with QoS 3", {
            let mut p = publish0(b"a/b", b"x");
            p[0] |= 0b0110;
            p
        }),
        // §3.8.1, MQTT-3.8.1-1: SUBSCRIBE's flags are 0010.
        ("SUBSCRIBE with flags 0000", frame(0x80, &sub_flags)),
        // §3.6.1, MQTT-3.6.1-1: PUBREL's flags are 0010.
        ("PUBREL with flags 0000", vec![0x60, 2, 0, 1]),
        // MQTT-3.1.0-2: a second CONNECT is a protocol violation.
        ("a second CONNECT", connect("again")),
        // Packet type 0 is reserved.
        ("packet type 0", vec![0x00, 0]),
        // A remaining length shorter than the packet's own fields.
        ("PUBLISH cut inside its topic", vec![0x30, 2, 0, 9]),
    ];
    for (i, (what, bytes)) in malformed.iter().enumerate() {
        let mut raw = connected(addr, &format!("malformed-{i}")).await;
        raw.try_send(bytes).await;
        let seen = closed(&mut raw, what).await;
        assert!(
            seen.iter().all(|(t, _)| *t >> 4 != 3),
            "{what}: a message was routed to the offender: {seen:?}"
        );
    }

    phase("malformed packets");
    // Acknowledgements for packet ids this client never used (PUBACK,
    // PUBREC, PUBREL, PUBCOMP), one client each. Neither specification
    // names an answer for PUBACK/PUBREC/PUBCOMP (5.0 §4.13 lets the server
    // close on a protocol error); a PUBREL may get PUBCOMP (5.0: reason
    // 0x92). Whatever that client gets, it is only acks or a close: never
    // a routed message, and the probe goes on.
    for (i, first) in [0x40u8, 0x50, 0x62, 0x70].into_iter().enumerate() {
        let mut raw = connected(addr, &format!("acks-{i}")).await;
        raw.try_send(&[first, 2, 0x12, 0x34]).await;
        let mut seen = Vec::new();
        while let Ok(p) = raw.read(Duration::from_millis(1_500)).await {
            seen.push(p);
        }
        assert!(
            seen.iter().all(|(t, _)| *t == 0x70 || *t == 0x62),
            "only PUBCOMP/PUBREL in answer to an unsolicited {first:#04x}: {seen:?}"
        );
        let open = raw.still_open(WAIT).await;
        eprintln!("hostile_input: unsolicited {first:#04x}: answered {seen:?}, open after: {open}");
    }

    phase("unsolicited acks");
    // A first packet that is not a CONNECT (MQTT-3.1.0-1): closed, nothing
    // routed.
    let mut raw = Raw::open(addr).await;
    raw.try_send(&publish0(b"probe/x", b"before connect")).await;
    let seen = closed(&mut raw, "PUBLISH before CONNECT").await;
    assert!(
        seen.is_empty(),
        "answered a PUBLISH before CONNECT: {seen:?}"
    );

    phase("PUBLISH before CONNECT");
    // CONNECTs with garbage: not UTF-8 (3.1.1 §1.5.3, MQTT-1.5.3-1), U+0000
    // in the client id (MQTT-1.5.3-2), a username flag with no username, a
    // password flag without the username flag (MQTT-3.1.2-22), a string
    // longer than the packet, a wrong protocol name (MQTT-3.1.2-1), the
    // reserved connect flag set (MQTT-3.1.2-3), will QoS 3
    // (MQTT-3.1.2-14), random bytes. Each is closed without being accepted.
    let garbage: Vec<(&str, Vec<u8>)> = vec![
        (
            "client id not UTF-8",
            connect_with(&[0xff, 0xfe, 0x41], 0, &[]),
        ),
        ("client id with U+0000", connect_with(b"a\0b", 0, &[])),
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
            "reserved connect flag set",
            connect_with(b"reserved", 0x01, &[]),
        ),
        ("will QoS 3", {
            let mut rest = Vec::new();
            string(&mut rest, b"will/t");
            string(&mut rest, b"w");
            connect_with(b"willqos", 0x04 | 0x18, &rest)
        }),
        (
            "random bytes",
            (0..64u32).map(|i| (i * 97 % 251) as u8).collect(),
        ),
    ];
    for (what, bytes) in &garbage {
        let mut raw = Raw::open(addr).await;
        raw.try_send(bytes).await;
        let seen = closed(&mut raw, what).await;
        assert!(
            seen.iter().all(|(t, b)| *t != 0x20 || b.get(1) != Some(&0)),
            "{what}: accepted: {seen:?}"
        );
    }

    phase("garbage CONNECTs");
    // A protocol level perch does not speak (3.1's "MQIsdp" 3, or 6): the
    // server answers CONNACK 0x01, unacceptable protocol version (3.1.1
    // §3.1.2.2, MQTT-3.1.2-2), then closes.
    for (what, name, level) in [("MQTT 3.1", &b"MQIsdp"[..], 3u8), ("level 6", b"MQTT", 6)] {
        let mut body = Vec::new();
        string(&mut body, name);
        body.extend([level, 0x02, 0, 30]);
        string(&mut body, b"old");
        let mut raw = Raw::open(addr).await;
        raw.try_send(&frame(0x10, &body)).await;
        let seen = closed(&mut raw, what).await;
        assert_eq!(seen, vec![(0x20, vec![0, 1])], "{what}: CONNACK 0x01");
    }

    phase("unknown protocol levels");
    // Headers that announce the largest possible packet (256 MiB), far over
    // max_packet_size_bytes, and then nothing: closed at once, without
    // waiting for (or buffering) the body. As the first packet (a CONNECT)
    // and after a good CONNECT (a PUBLISH).
    for (what, first) in [
        ("a 256 MiB CONNECT", None),
        ("a 256 MiB PUBLISH", Some("huge")),
    ] {
        let (mut raw, header) = match first {
            None => (Raw::open(addr).await, 0x10),
            Some(id) => (connected(addr, id).await, 0x30),
        };
        let started = Instant::now();
        raw.try_send(&[header, 0xff, 0xff, 0xff, 0x7f, 0, 4, b'M', b'Q'])
            .await;
        closed(&mut raw, what).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{what}: closed after {:?}, not at once (connection_timeout_ms is 2000)",
            started.elapsed()
        );
    }

    phase("256 MiB announcements");
    probe.finish().await;
    phase("the probe");
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Slowloris: 200 connections that never finish their CONNECT (half send
/// nothing, half dribble it a byte every 300 ms, which alone would take
/// longer than the deadline) are each closed at `connection_timeout_ms`,
/// and a well-behaved client connects and round-trips among them at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_at_the_connect_deadline() {
    let (_dir, gw) = gateway_with(2_000, "");
    let addr = gw.addr();
    let slow: Vec<_> = (0..200)
        .map(|i| {
            let bytes = if i % 2 == 0 {
                connect(&format!("slowloris-{i}"))
            } else {
                Vec::new()
            };
            tokio::spawn(dribble(addr, bytes, Duration::from_millis(300)))
        })
        .collect();
    // While they are all open (the first closes at 2 s).
    let took = round_trip(addr, "among-the-slow").await;
    assert!(
        took < Duration::from_secs(5),
        "a well-behaved client took {took:?} to connect and round-trip among 200 slow ones"
    );
    let mut longest = Duration::ZERO;
    for (i, task) in slow.into_iter().enumerate() {
        let held = task.await.expect("slowloris task");
        let held = held.unwrap_or_else(|| panic!("slow connection {i} still open after {WAIT:?}"));
        longest = longest.max(held);
    }
    eprintln!(
        "hostile_input: 200 slow connections, the longest held {longest:?}; \
         a good client's round trip among them took {took:?}"
    );
    assert!(
        longest < Duration::from_secs(8),
        "a slow connection was held {longest:?}; connection_timeout_ms is 2000"
    );
    round_trip(addr, "after-the-slow").await;
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// `broker.max_pending_connections` bounds the connections that have not
/// finished their CONNECT: past it a new connection is closed at once
/// (logged, naming the key) instead of holding a socket until the
/// deadline; once the pending ones are gone, clients get in again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_pending_connections_are_closed_at_once() {
    let (_dir, gw) = gateway_with(6_000, "max_pending_connections = 20");
    let addr = gw.addr();
    let started = Instant::now();
    let silent: Vec<_> = (0..30)
        .map(|_| tokio::spawn(dribble(addr, Vec::new(), Duration::from_millis(200))))
        .collect();
    let mut at_once = 0;
    let mut at_deadline = 0;
    for task in silent {
        let held = task.await.expect("silent task").expect("closed in the end");
        if held < Duration::from_secs(3) {
            at_once += 1;
        } else {
            at_deadline += 1;
        }
    }
    assert!(
        started.elapsed() < WAIT,
        "the pending connections took {:?} to close",
        started.elapsed()
    );
    assert_eq!(
        (at_once, at_deadline),
        (10, 20),
        "10 of 30 closed at once, 20 held to the 6 s deadline"
    );
    round_trip(addr, "after-the-pending").await;
    let log = gw.log_text();
    assert!(log.contains("broker.max_pending_connections"), "{log}");
    let m = crate::admin::metrics(gw.admin.expect("the admin listener"));
    assert_eq!(
        crate::admin::metric(&m, "perch_broker_connections_shed_total"),
        10.0,
        "the connections closed at once are counted"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// A CONNECT with a user name and password: 3.1.1 (`level` 4) or 5.0 (5).
fn login(level: u8, id: &str, user: &str, password: &str) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.extend([level, 0xc2, 0, 30]);
    if level == 5 {
        body.push(0); // no properties
    }
    string(&mut body, id.as_bytes());
    string(&mut body, user.as_bytes());
    string(&mut body, password.as_bytes());
    frame(0x10, &body)
}

/// Password guessing: past `broker.max_failed_logins_per_minute` failed
/// logins, a login that needs a password check is refused without one
/// (3.1.1 CONNACK 3, server unavailable; 5.0 0x9F, connection rate
/// exceeded), the right password of a user not seen since the start
/// included; a user whose password already verified still gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_past_the_limit_are_refused_without_a_password_check() {
    let out = perch_with_stdin(&["passwd"], "s3cret\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let users = ["early", "late"]
        .map(|u| {
            format!(
                "[[broker.users]]\nname = \"{u}\"\npassword_hash = '{hash}'\npublish = [\"#\"]\n\
                 subscribe = [\"#\"]\n"
            )
        })
        .join("\n");
    let (_dir, gw) = gateway_with(
        5_000,
        &format!("max_failed_logins_per_minute = 3\n\n{users}"),
    );
    let addr = gw.addr();
    let ack = |level: u8, user: &str, password: &str| {
        let bytes = login(level, &format!("{user}-{password}"), user, password);
        async move {
            let (mut raw, ack) = Raw::connect(addr, &bytes).await;
            if ack.1.get(1) != Some(&0) {
                closed(&mut raw, "a refused login").await;
            }
            ack.1[1]
        }
    };
    assert_eq!(ack(4, "early", "s3cret").await, 0, "the right password");
    for (user, password) in [
        ("early", "guess1"),
        ("nobody", "guess2"),
        ("late", "guess3"),
    ] {
        assert_eq!(
            ack(4, user, password).await,
            4,
            "{user}: bad user name or password"
        );
    }
    // The budget (3 a minute) is spent.
    let started = Instant::now();
    assert_eq!(
        ack(4, "late", "guess4").await,
        3,
        "3.1.1: server unavailable"
    );
    assert_eq!(
        ack(5, "late", "guess5").await,
        0x9f,
        "5.0: connection rate exceeded"
    );
    assert_eq!(
        ack(4, "late", "s3cret").await,
        3,
        "an unverified right password waits too"
    );
    eprintln!(
        "hostile_input: three logins refused by the limiter in {:?}",
        started.elapsed()
    );
    assert_eq!(
        ack(4, "early", "s3cret").await,
        0,
        "a verified password gets in"
    );
    let m = crate::admin::metrics(gw.admin.expect("the admin listener"));
    assert_eq!(
        crate::admin::metric(&m, "perch_broker_logins_throttled_total"),
        3.0,
        "the limiter's refusals are counted"
    );
    assert_eq!(
        crate::admin::metric(&m, "perch_broker_refused_total{what=\"login\"}"),
        6.0,
        "three bad passwords and three throttled"
    );
    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// The echo test function (tests/wat/echo.wat: publishes each event's
/// payload to its config value `out`) with `limits` added to its manifest.
fn echo_manifest(version: &str, out: &str, allow: &str, limits: &str) -> String {
    format!(
        "name = \"echo\"\nversion = \"{version}\"\n[triggers]\ntopics = [\"hostile/in\"]\n\
         [limits]\n{limits}\n[publish]\nallow = [\"{allow}\"]\n[config]\nout = \"{out}\"\n"
    )
}

/// Deploys echo.wat with `manifest` through `perch fn deploy`; returns
/// (accepted, the CLI's output).
fn deploy_echo(gw: &FnGateway, manifest: &str) -> (bool, String) {
    let d = &gw.data_dir;
    let module = wasm_file(d, "echo");
    let manifest = file(d, "echo.toml", manifest);
    gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--json",
    ])
}

/// A manifest asking for more than a `[functions]` cap allows is refused
/// with a reply naming the limit, the value, the cap and the key to raise,
/// one line per limit over; the running version keeps running. A cap
/// lowered later keeps a stored version over it from starting (logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_over_a_gateway_cap_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let caps = "max_fuel = 20000000\nmax_memory_pages = 32\nmax_output_bytes = 100000\n\
                max_queue_len = 512\n";
    let gw = FnGateway::start_with("e2e-caps", dir.path(), caps);
    let v1 = echo_manifest("1.0.0", "hostile/out", "hostile/#", "fuel = 15000000");
    let (ok, out) = deploy_echo(&gw, &v1);
    assert!(ok, "v1 within the caps: {out}\n{}", gw.log());

    let over = [
        (
            "fuel = 20000001",
            "limits.fuel = 20000001",
            "cap of 20000000",
            "functions.max_fuel",
        ),
        (
            "memory_pages = 33",
            "limits.memory_pages = 33",
            "cap of 32",
            "functions.max_memory_pages",
        ),
        (
            "output_bytes = 100001",
            "limits.output_bytes = 100001",
            "cap of 100000",
            "functions.max_output_bytes",
        ),
        (
            "queue_len = 513",
            "limits.queue_len = 513",
            "cap of 512",
            "functions.max_queue_len",
        ),
    ];
    for (limit, asked, cap, key) in over {
        let (ok, out) = deploy_echo(
            &gw,
            &echo_manifest("2.0.0", "hostile/v2", "hostile/#", limit),
        );
        assert!(
            !ok && out.contains("\"ok\": false"),
            "{limit}: refused: {out}"
        );
        for part in [asked, cap, key, "lower it in the manifest, or raise"] {
            assert!(
                out.contains(part),
                "{limit}: the reply names {part:?}: {out}"
            );
        }
    }
    let all: Vec<&str> = over.iter().map(|o| o.0).collect();
    let (ok, out) = deploy_echo(
        &gw,
        &echo_manifest("2.0.0", "hostile/v2", "hostile/#", &all.join("\n")),
    );
    assert!(!ok, "{out}");
    for (_, asked, _, _) in over {
        assert!(
            out.contains(asked),
            "every limit over is named: {asked}: {out}"
        );
    }

    // v1 still runs and answers.
    assert_eq!(gw.function("echo")["version"], "1.0.0");
    let mut c = Client::connect(gw.addr, "caps-probe", &["hostile/#"]).await;
    c.publish("hostile/in", "still v1").await;
    loop {
        let (topic, payload) = c.next().await;
        if topic == "hostile/out" {
            assert_eq!(payload, "still v1");
            break;
        }
    }
    drop(c);

    // The operator lowers max_fuel under what v1 asks for and restarts.
    let config = gw.data_dir.join("perch.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert_eq!(text.matches("max_fuel = 20000000").count(), 1);
    std::fs::write(
        &config,
        text.replace("max_fuel = 20000000", "max_fuel = 10000000"),
    )
    .unwrap();
    let gw = gw.restart();
    let deadline = Instant::now() + WAIT;
    loop {
        let log = gw.log();
        if log.contains("cannot start the deployed function")
            && log.contains("limits.fuel = 15000000 is over this gateway's cap of 10000000")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no log of the refused start:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!gw.log().contains("panicked"));
}

/// A function may not publish under `perch/` even with `#` allowed: its
/// fake gateway status is refused (DENIED, counted in
/// `perch_function_refused_outputs_total{reason="denied"}`) and the
/// retained status stays the gateway's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_cannot_fake_the_gateways_status() {
    let dir = tempfile::tempdir().unwrap();
    let gw = FnGateway::start("e2e-spoof", dir.path());
    let status_topic = "perch/e2e-spoof/status";
    let (ok, out) = deploy_echo(&gw, &echo_manifest("1.0.0", status_topic, "#", ""));
    assert!(ok, "{out}\n{}", gw.log());
    let mut c = Client::connect(gw.addr, "spoof-probe", &[status_topic]).await;
    let (topic, real) = c.next().await;
    assert_eq!(topic, status_topic, "the retained status first");
    assert!(!real.contains("fake"), "{real}");
    c.publish("hostile/in", "{\"state\":\"fake\"}").await;

    // The refusal is counted once the invocation ran.
    let deadline = Instant::now() + WAIT;
    let denied = loop {
        let (status, body) = crate::admin::get(gw.admin(), "/metrics", None);
        assert_eq!(status, 200, "{body}");
        let denied: f64 = body
            .lines()
            .find(|l| {
                l.starts_with("perch_function_refused_outputs_total{")
                    && l.contains("function=\"echo\"")
                    && l.contains("reason=\"denied\"")
            })
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0);
        if denied > 0.0 || Instant::now() > deadline {
            break denied;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        denied, 1.0,
        "the fake status publish was refused and counted"
    );
    // Nothing fake reached the status topic, and a new subscriber gets the
    // gateway's own retained status.
    let quiet_until = Instant::now() + Duration::from_secs(1);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        match tokio::time::timeout(left, c.next()).await {
            Ok((_, payload)) => assert!(!payload.contains("fake"), "{payload}"),
            Err(_) => break,
        }
    }
    let mut late = Client::connect(gw.addr, "spoof-late", &[status_topic]).await;
    let (_, retained) = late.next().await;
    assert!(!retained.contains("fake"), "{retained}");
    assert!(!gw.log().contains("panicked"));
}
