//! MQTT conformance: one test per behaviour the MQTT 3.1.1 and 5.0
//! specifications promise, against the real `perch` binary, with rumqttc
//! (v4 and v5) clients and, where a client library would hide the detail
//! (flags, codes, misbehaviour), raw packets over TCP.
//!
//! Each test cites the spec section it checks: "3.1.1 §x" is MQTT 3.1.1
//! (OASIS 2014), "5.0 §x" is MQTT 5.0 (OASIS 2019). Where rumqttd cannot be
//! brought to the spec from outside, the test is named `deviation_...`,
//! asserts what perch actually does (so it fails the day that changes) and
//! the README lists it under "Known deviations".

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::util::mqtt::{self, connect, next_publish, subscribe, wait_puback};
use crate::util::raw::{frame, string, varint, Encode, End, Raw, RawPacket};
use crate::util::{temp_file, Gateway};
use rumqttc::{QoS, SubscribeReasonCode};

// ---------------------------------------------------------------- helpers

/// How long to wait for something that must not happen.
const QUIET: Duration = Duration::from_millis(700);

/// A gateway whose `[broker]` table holds `keys`, on a free loopback port.
fn gateway_with(keys: &str) -> (tempfile::TempDir, Gateway) {
    let (dir, path) = temp_file(
        "perch.toml",
        &format!(
            "[broker]\n{keys}\n\n[[broker.listeners]]\nname = \"local\"\n\
             listen = \"127.0.0.1:0\"\nallow_anonymous = true\n"
        ),
    );
    let gw = Gateway::start(&["--config", path.to_str().unwrap()]);
    (dir, gw)
}

/// A will in a raw CONNECT: topic, payload, QoS, retain, encoded 5.0 will
/// properties.
type RawWill = (String, Vec<u8>, u8, bool, Vec<u8>);

/// A CONNECT, built field by field.
#[derive(Clone)]
struct Connect {
    level: u8,
    id: String,
    clean: bool,
    keep_alive: u16,
    /// topic, payload, qos, retain, 5.0 will properties (encoded)
    will: Option<RawWill>,
    /// 5.0 CONNECT properties (encoded)
    props: Vec<u8>,
}

impl Connect {
    fn v4(id: &str) -> Connect {
        Connect {
            level: 4,
            id: id.to_owned(),
            clean: true,
            keep_alive: 30,
            will: None,
            props: Vec::new(),
        }
    }

    fn v5(id: &str) -> Connect {
        Connect {
            level: 5,
            ..Connect::v4(id)
        }
    }

    fn clean(mut self, clean: bool) -> Connect {
        self.clean = clean;
        self
    }

    fn keep_alive(mut self, s: u16) -> Connect {
        self.keep_alive = s;
        self
    }

    fn will(mut self, topic: &str, payload: &[u8], qos: u8, retain: bool) -> Connect {
        self.will = Some((topic.into(), payload.into(), qos, retain, Vec::new()));
        self
    }

    fn will_props(mut self, props: &[u8]) -> Connect {
        self.will.as_mut().expect("a will").4 = props.to_vec();
        self
    }

    fn props(mut self, props: &[u8]) -> Connect {
        self.props = props.to_vec();
        self
    }

    fn encode(&self) -> Vec<u8> {
        let v5 = self.level == 5;
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', self.level];
        let mut flags = u8::from(self.clean) << 1;
        if let Some((_, _, qos, retain, _)) = &self.will {
            flags |= 0x04 | (qos << 3) | (u8::from(*retain) << 5);
        }
        body.push(flags);
        body.extend(self.keep_alive.to_be_bytes());
        if v5 {
            varint(&mut body, self.props.len());
            body.extend(&self.props);
        }
        string(&mut body, self.id.as_bytes());
        if let Some((topic, payload, _, _, props)) = &self.will {
            if v5 {
                varint(&mut body, props.len());
                body.extend(props);
            }
            string(&mut body, topic.as_bytes());
            string(&mut body, payload);
        }
        frame(0x10, &body)
    }
}

impl Encode for Connect {
    fn encode(&self) -> Vec<u8> {
        Connect::encode(self)
    }
}

/// A PUBLISH (5.0: with an empty property list).
fn publish(v5: bool, topic: &str, qos: u8, pkid: u16, retain: bool, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(&mut body, topic.as_bytes());
    if qos > 0 {
        body.extend(pkid.to_be_bytes());
    }
    if v5 {
        body.push(0);
    }
    body.extend(payload);
    frame(0x30 | (qos << 1) | u8::from(retain), &body)
}

/// A SUBSCRIBE to one filter (5.0: `props` are its properties).
fn subscribe_packet(v5: bool, pkid: u16, filter: &str, qos: u8, props: &[u8]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v5 {
        varint(&mut body, props.len());
        body.extend(props);
    }
    string(&mut body, filter.as_bytes());
    body.push(qos);
    frame(0x82, &body)
}

/// Topic, packet id and payload of a raw PUBLISH.
fn parse_publish(p: &RawPacket, v5: bool) -> (String, Option<u16>, Vec<u8>) {
    let b = &p.1;
    let tlen = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let topic = String::from_utf8(b[2..2 + tlen].to_vec()).unwrap();
    let mut at = 2 + tlen;
    let pkid = if (p.0 >> 1) & 3 > 0 {
        at += 2;
        Some(u16::from_be_bytes([b[at - 2], b[at - 1]]))
    } else {
        None
    };
    if v5 {
        // property length (one byte is enough for the tests' packets)
        at += 1 + usize::from(b[at]);
    }
    (topic, pkid, b[at..].to_vec())
}

/// A subscriber on `filter` (QoS 1) through rumqttc v4.
async fn subscriber(
    addr: SocketAddr,
    id: &str,
    filter: &str,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let (c, mut el) = connect(mqtt::options(id, addr)).await.unwrap();
    subscribe(&c, &mut el, filter).await;
    (c, el)
}

/// Publishes at QoS 1 through a fresh rumqttc client and waits for the PUBACK.
async fn publish_one(addr: SocketAddr, topic: &str, payload: &[u8], retain: bool) {
    let id = format!("pub-{}", rand_id());
    let (c, mut el) = connect(mqtt::options(&id, addr)).await.unwrap();
    c.publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
        .await
        .unwrap();
    wait_puback(&mut el).await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), el.poll()).await;
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Lets the broker notice that a dropped connection is gone before the same
/// client id connects again. perch waits for that itself (see
/// `connect_fast_reconnect_with_the_same_id_stays_up`); these tests are
/// about something else and do not lean on it.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// What a malformed or hostile client must not affect: a round trip
/// between two other clients still works.
async fn bystanders_still_served(addr: SocketAddr) {
    let id = rand_id();
    let (_s, mut sub_el) = subscriber(addr, &format!("bystander-sub-{id}"), "bystander/#").await;
    publish_one(addr, "bystander/x", b"ok", false).await;
    let got = next_publish(&mut sub_el, mqtt::WAIT).await;
    assert_eq!(got.map(|p| p.payload.to_vec()), Some(b"ok".to_vec()));
}

pub(crate) mod v5 {
    //! rumqttc v5 helpers with bounded waits.
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnAck, Packet, Publish, PublishProperties, SubscribeProperties, SubscribeReasonCode,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
    use std::net::SocketAddr;
    use std::time::Duration;
    use tokio::time::timeout;

    use crate::util::mqtt::WAIT;

    pub fn options(id: &str, addr: SocketAddr) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    pub async fn connect(opts: MqttOptions) -> (AsyncClient, EventLoop, ConnAck) {
        let (client, mut el) = AsyncClient::new(opts, 64);
        loop {
            match timeout(WAIT, el.poll()).await.expect("no CONNACK") {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return (client, el, ack),
                Ok(_) => continue,
                Err(e) => panic!("5.0 connect failed: {e:?}"),
            }
        }
    }

    pub async fn subscribe(
        client: &AsyncClient,
        el: &mut EventLoop,
        filter: &str,
        qos: QoS,
        props: Option<SubscribeProperties>,
    ) -> Vec<SubscribeReasonCode> {
        match props {
            Some(p) => client.subscribe_with_properties(filter, qos, p).await,
            None => client.subscribe(filter, qos).await,
        }
        .unwrap();
        loop {
            match timeout(WAIT, el.poll()).await.expect("no SUBACK").unwrap() {
                Event::Incoming(Packet::SubAck(ack)) => return ack.return_codes,
                _ => continue,
            }
        }
    }

    pub async fn next_publish(el: &mut EventLoop, wait: Duration) -> Option<Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match timeout(left, el.poll()).await {
                Err(_) => return None,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("5.0 connection failed while waiting for a publish: {e:?}"),
            }
        }
    }

    /// Drives the loop until the broker acknowledged the latest publish.
    pub async fn wait_ack(el: &mut EventLoop) {
        loop {
            match timeout(WAIT, el.poll()).await.expect("no ack").unwrap() {
                Event::Incoming(Packet::PubAck(_)) | Event::Incoming(Packet::PubComp(_)) => return,
                _ => continue,
            }
        }
    }
}

// ---------------------------------------------------------------- CONNECT

/// 3.1.1 §3.1.2.10 and 5.0 §3.1.2.10: keep-alive 0 switches the keep-alive
/// mechanism off; the server accepts it.
#[tokio::test]
async fn connect_keep_alive_zero_is_accepted() {
    let gw = Gateway::start(&[]);
    for c in [
        Connect::v4("ka0-4").keep_alive(0),
        Connect::v5("ka0-5").keep_alive(0),
    ] {
        let (mut raw, ack) = Raw::connect(gw.addr(), &c).await;
        assert_eq!(ack.1[1], 0, "level {}: accepted", c.level);
        // And it stays usable.
        raw.send(&[0xc0, 0]).await;
        assert_eq!(raw.read(mqtt::WAIT).await.unwrap().0, 0xd0, "PINGRESP");
    }
}

/// 3.1.1 §3.1.3.1 (MQTT-3.1.3-6): a zero-length client id with
/// CleanSession=1 is accepted and the server assigns an id; 5.0 §3.2.2.3.7:
/// the CONNACK carries the Assigned Client Identifier.
#[tokio::test]
async fn connect_empty_client_id_with_clean_session_is_assigned_an_id() {
    let gw = Gateway::start(&[]);
    let (mut raw, ack) = Raw::connect(gw.addr(), &Connect::v4("")).await;
    assert_eq!(ack.1, vec![0, 0], "3.1.1: accepted, no session");
    raw.send(&[0xc0, 0]).await;
    assert_eq!(raw.read(mqtt::WAIT).await.unwrap().0, 0xd0);

    let (_c, _el, ack) = v5::connect(v5::options("", gw.addr())).await;
    let assigned = ack
        .properties
        .and_then(|p| p.assigned_client_identifier)
        .expect("5.0: an assigned client identifier");
    assert!(!assigned.is_empty());
}

/// 3.1.1 §3.1.3.1 (MQTT-3.1.3-8): a zero-length client id with
/// CleanSession=0 gets CONNACK 0x02 (identifier rejected) and is closed.
/// 5.0 §3.1.3.1 lets the server refuse it the same way, with 0x85.
#[tokio::test]
async fn connect_empty_client_id_without_clean_session_is_refused() {
    let gw = Gateway::start(&[]);
    let (mut raw, ack) = Raw::connect(gw.addr(), &Connect::v4("").clean(false)).await;
    assert_eq!(ack.1, vec![0, 0x02]);
    raw.until_closed(mqtt::WAIT).await;

    let (mut raw, ack) = Raw::connect(gw.addr(), &Connect::v5("").clean(false)).await;
    assert_eq!(ack.1[1], 0x85, "5.0: Client Identifier not valid");
    raw.until_closed(mqtt::WAIT).await;
}

/// 3.1.1 §3.1.4 (MQTT-3.1.4-2), 5.0 §3.1.4: a second connection with the
/// same client id takes over: the first is closed, the second is served.
#[tokio::test]
async fn connect_same_client_id_takes_over_the_session() {
    let gw = Gateway::start(&[]);
    for c in [Connect::v4("twin"), Connect::v5("twin5")] {
        let (mut first, _) = Raw::connect(gw.addr(), &c).await;
        let (mut second, ack) = Raw::connect(gw.addr(), &c).await;
        assert_eq!(ack.1[1], 0);
        first.until_closed(mqtt::WAIT).await;
        second.send(&[0xc0, 0]).await;
        assert_eq!(second.read(mqtt::WAIT).await.unwrap().0, 0xd0);
    }
}

/// 3.1.1 §3.2.2.3 (codes 4 and 5), 5.0 §3.2.2.2 (0x86, 0x87): a refused
/// login gets its CONNACK with the reason before the socket closes.
#[tokio::test]
async fn connect_refused_login_gets_the_right_connack() {
    let (_dir, config) = crate::broker::auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let login = |mut c: Vec<u8>, user: &[u8], pass: &[u8]| {
        // Add user name and password flags and fields to an encoded CONNECT.
        let mut body = c.split_off(2);
        body[7] |= 0xc0;
        string(&mut body, user);
        string(&mut body, pass);
        frame(0x10, &body)
    };
    let cases = [
        (
            login(Connect::v4("l1").encode(), b"admin", b"wrong"),
            4u8,
            0x04u8,
        ),
        (Connect::v4("l2").encode(), 4, 0x05),
        (
            login(Connect::v5("l3").encode(), b"admin", b"wrong"),
            5,
            0x86,
        ),
        (Connect::v5("l4").encode(), 5, 0x87),
    ];
    for (connect, level, code) in cases {
        let mut raw = Raw::open(gw.addr()).await;
        raw.send(&connect).await;
        let seen = raw.until_closed(mqtt::WAIT).await;
        assert_eq!(
            seen.len(),
            1,
            "level {level}: one CONNACK, then closed: {seen:?}"
        );
        assert_eq!((seen[0].0, seen[0].1[1]), (0x20, code), "level {level}");
    }
}

/// 3.1.1 §3.1.2.10, 5.0 §3.1.2.10: a client silent for 1.5x its keep-alive
/// is disconnected, and not before.
#[tokio::test]
async fn connect_keep_alive_is_enforced_at_one_and_a_half_times() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v4("sleepy").keep_alive(2)).await;
    let start = Instant::now();
    // Still open past 1x (2 s) ...
    assert_eq!(
        raw.read(Duration::from_millis(2_400)).await,
        Err(End::Timeout)
    );
    // ... closed at 1.5x (3 s).
    raw.until_closed(Duration::from_secs(20)).await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(2_900),
        "closed after {took:?}"
    );
}

// ---------------------------------------------------------------- retained

/// 3.1.1 §3.3.1.3, 5.0 §3.3.1.3: a retained message is stored per topic,
/// sent to new subscribers with RETAIN=1, replaced by the next retained
/// publish, deleted by a retained publish with an empty payload; live
/// deliveries carry RETAIN=0.
#[tokio::test]
async fn retained_stored_replaced_and_deleted_per_topic() {
    let gw = Gateway::start(&[]);
    publish_one(gw.addr(), "ret/a", b"first", true).await;
    publish_one(gw.addr(), "ret/a", b"second", true).await;
    publish_one(gw.addr(), "ret/b", b"bee", true).await;
    publish_one(gw.addr(), "ret/c", b"sea", true).await;
    publish_one(gw.addr(), "ret/c", b"", true).await;

    for level in [4u8, 5] {
        let v5 = level == 5;
        let c = Connect {
            level,
            ..Connect::v4(&format!("ret-sub-{level}"))
        };
        let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
        raw.send(&subscribe_packet(v5, 1, "ret/#", 0, &[])).await;
        let mut got = Vec::new();
        while let Ok(p) = raw.next_publish(Duration::from_millis(1_500)).await {
            assert_eq!(p.0 & 1, 1, "RETAIN set on a retained delivery");
            let (topic, _, payload) = parse_publish(&p, v5);
            got.push((topic, payload));
        }
        got.sort();
        assert_eq!(
            got,
            vec![
                ("ret/a".to_owned(), b"second".to_vec()),
                ("ret/b".to_owned(), b"bee".to_vec())
            ],
            "level {level}"
        );
        // A live retained publish reaches this established subscriber with
        // RETAIN=0 (3.1.1 MQTT-3.3.1-9).
        publish_one(gw.addr(), "ret/d", b"live", true).await;
        let p = raw.next_publish(mqtt::WAIT).await.unwrap();
        assert_eq!(p.0 & 1, 0, "RETAIN cleared on a live delivery");
        publish_one(gw.addr(), "ret/d", b"", true).await;
        let _ = raw.next_publish(mqtt::WAIT).await;
    }
}

/// 3.1.1 §3.3.1.3, 5.0 §3.3.1.3 ("stored"): retained messages survive a
/// gateway restart (perch persists them in `<data_dir>/retained.db`); a
/// deleted one stays deleted.
#[tokio::test]
async fn retained_messages_survive_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut gw = Gateway::start(&["--data-dir", data]);
    publish_one(gw.addr(), "keep/a", b"kept", true).await;
    publish_one(gw.addr(), "keep/b", b"gone", true).await;
    publish_one(gw.addr(), "keep/b", b"", true).await;
    publish_one(gw.addr(), "keep/c", b"old", true).await;
    publish_one(gw.addr(), "keep/c", b"new", true).await;
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).is_some(), "perch stops");

    let gw = Gateway::start(&["--data-dir", data]);
    let (_c, mut el) = subscriber(gw.addr(), "after-restart", "keep/#").await;
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut el, Duration::from_millis(1_500)).await {
        assert!(p.retain);
        got.push((p.topic, p.payload.to_vec()));
    }
    got.sort();
    assert_eq!(
        got,
        vec![
            ("keep/a".to_owned(), b"kept".to_vec()),
            ("keep/c".to_owned(), b"new".to_vec())
        ]
    );
    assert!(
        gw.log_text().contains("retained messages restored"),
        "{}",
        gw.log_text()
    );
}

/// A restored retained message keeps its QoS (3.1.1 §3.3.1.3: the server
/// stores the message *and its QoS*), also after a kill -9 once the store
/// committed.
#[tokio::test]
async fn retained_qos_survives_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let gw = Gateway::start(&["--data-dir", data]);
    publish_one(gw.addr(), "kq/a", b"q1", true).await;
    // The store commits within milliseconds of the PUBLISH.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("KILL");
    drop(gw);
    let gw = Gateway::start(&["--data-dir", data]);
    let (_c, mut el) = subscriber(gw.addr(), "kq-sub", "kq/#").await;
    let p = next_publish(&mut el, mqtt::WAIT).await.expect("restored");
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"q1"[..]));
}

/// Deviation from 3.1.1 §3.3.1.3 (MQTT-3.3.1-10/11) and 5.0 §3.3.1.3: only a
/// *retained* zero-byte publish should delete the retained message; rumqttd
/// deletes it on any zero-byte publish to the topic.
#[tokio::test]
async fn deviation_an_empty_non_retained_publish_deletes_the_retained_message() {
    let gw = Gateway::start(&[]);
    publish_one(gw.addr(), "dv/a", b"kept?", true).await;
    publish_one(gw.addr(), "dv/a", b"", false).await;
    let (_c, mut el) = subscriber(gw.addr(), "dv-sub", "dv/#").await;
    assert!(
        next_publish(&mut el, QUIET).await.is_none(),
        "rumqttd now keeps the retained message: remove this deviation from docs/broker.md"
    );
}

/// 3.1.1 §3.3.1.3 (MQTT-3.3.1-6), 5.0 §3.3.1.3: on a new subscription every
/// matching retained message is sent, more of them than the in-flight
/// window.
#[tokio::test]
async fn retained_every_matching_message_is_sent_on_subscribe() {
    let (_dir, gw) = gateway_with("max_inflight_count = 5");
    for i in 0..8 {
        publish_one(gw.addr(), &format!("many/{i}"), b"r", true).await;
    }
    let (_c, mut el) = subscriber(gw.addr(), "many-sub", "many/#").await;
    let mut n = 0;
    while next_publish(&mut el, Duration::from_millis(1_500))
        .await
        .is_some()
    {
        n += 1;
    }
    assert_eq!(n, 8);
}

// ---------------------------------------------------------------- will

/// 3.1.1 §3.1.2.5, 5.0 §3.1.2.5: the will is published when the network
/// connection closes without DISCONNECT, with its retain flag honoured.
#[tokio::test]
async fn will_is_published_when_the_client_vanishes() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "will-watch", "status/#").await;
    for c in [
        Connect::v4("w4").will("status/w4", b"gone4", 1, false),
        Connect::v5("w5").will("status/w5", b"gone5", 1, false),
    ] {
        let (raw, _) = Raw::connect(gw.addr(), &c).await;
        drop(raw);
        let got = next_publish(&mut sub_el, mqtt::WAIT)
            .await
            .expect("the will");
        assert_eq!(got.topic, format!("status/{}", c.id));
    }
}

/// 3.1.1 §3.14.4 (MQTT-3.14.4-3), 5.0 §3.14.4 (reason 0x00): after a clean
/// DISCONNECT the will is discarded, not published.
#[tokio::test]
async fn will_is_not_published_after_disconnect() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "will-watch2", "status/#").await;
    for (c, disconnect) in [
        (
            Connect::v4("d4").will("status/d4", b"x", 1, false),
            &[0xe0u8, 0][..],
        ),
        (
            Connect::v5("d5").will("status/d5", b"x", 1, false),
            &[0xe0, 1, 0][..],
        ),
    ] {
        let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
        raw.send(disconnect).await;
        raw.until_closed(mqtt::WAIT).await;
    }
    assert!(next_publish(&mut sub_el, Duration::from_secs(2))
        .await
        .is_none());
}

/// 3.1.1 §3.1.2.5 ("the server detects ... keep-alive"), 5.0 §3.1.2.5: a
/// client that stops talking has its will published once keep-alive x1.5
/// expires; a retained will is retained (and persisted).
#[tokio::test]
async fn will_is_published_on_keep_alive_expiry() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "will-watch3", "status/#").await;
    let (_raw, _) = Raw::connect(
        gw.addr(),
        &Connect::v4("mute")
            .keep_alive(1)
            .will("status/mute", b"expired", 1, true),
    )
    .await;
    let got = next_publish(&mut sub_el, Duration::from_secs(20))
        .await
        .expect("the will after keep-alive expiry");
    assert_eq!(&got.payload[..], b"expired");
    // Retained: a late subscriber still sees it.
    let (_c, mut el) = subscriber(gw.addr(), "late", "status/mute").await;
    let p = next_publish(&mut el, mqtt::WAIT)
        .await
        .expect("retained will");
    assert!(p.retain);
}

/// 5.0 §3.1.3.2.2 (Will Delay Interval) and §3.1.2.11.2: the will waits for
/// its delay, or for the session to end if that comes first; a reconnect to
/// the session within the delay cancels it.
#[tokio::test]
async fn will_v5_delay_and_session_expiry() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "will-watch5", "late/#").await;
    // session expiry 60 s (property 0x11), will delay 2 s (property 0x18)
    let session = [0x11, 0, 0, 0, 60];
    let delay2 = [0x18, 0, 0, 0, 2];
    let c = Connect::v5("delayed")
        .clean(false)
        .props(&session)
        .will("late/delayed", b"d", 1, false)
        .will_props(&delay2);
    let (raw, _) = Raw::connect(gw.addr(), &c).await;
    let start = Instant::now();
    drop(raw);
    let got = next_publish(&mut sub_el, Duration::from_secs(20))
        .await
        .expect("the will");
    assert_eq!(got.topic, "late/delayed");
    assert!(
        start.elapsed() >= Duration::from_millis(1_800),
        "after the delay: {:?}",
        start.elapsed()
    );

    // Session expiry 1 s < will delay 30 s: the will goes when the session ends.
    let c = Connect::v5("short")
        .clean(false)
        .props(&[0x11, 0, 0, 0, 1])
        .will("late/short", b"s", 1, false)
        .will_props(&[0x18, 0, 0, 0, 30]);
    let (raw, _) = Raw::connect(gw.addr(), &c).await;
    drop(raw);
    let got = next_publish(&mut sub_el, Duration::from_secs(15))
        .await
        .expect("the will");
    assert_eq!(got.topic, "late/short");

    // Reconnecting to the session within the delay cancels the will.
    let c = Connect::v5("back")
        .clean(false)
        .props(&session)
        .will("late/back", b"b", 1, false)
        .will_props(&[0x18, 0, 0, 0, 3]);
    let (raw, _) = Raw::connect(gw.addr(), &c).await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_again, ack) =
        Raw::connect(gw.addr(), &Connect::v5("back").clean(false).props(&session)).await;
    assert_eq!(ack.1[1], 0);
    assert!(
        next_publish(&mut sub_el, Duration::from_secs(5))
            .await
            .is_none(),
        "will cancelled"
    );
}

/// 3.1.1 §3.1.4 (MQTT-3.1.4-2), 5.0 §3.1.4: a client that reconnects with
/// the same client id right after its connection dropped is served, and its
/// new connection stays up. (rumqttd alone could close it: it gave the new
/// connection the old one's connection id, and the old connection's late
/// "gone" event then closed the new one.)
#[tokio::test]
async fn connect_fast_reconnect_with_the_same_id_stays_up() {
    let gw = Gateway::start(&[]);
    for c in [Connect::v4("bouncy").clean(false), Connect::v5("bouncy5")] {
        for round in 0..15 {
            let (raw, _) = Raw::connect(gw.addr(), &c).await;
            drop(raw);
            let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            raw.send(&[0xc0, 0]).await;
            assert_eq!(
                raw.read(mqtt::WAIT).await,
                Ok((0xd0, Vec::new())),
                "{} round {round}: the new connection answers PINGREQ",
                c.id
            );
        }
    }
}

// ---------------------------------------------------------------- sessions

/// 3.1.1 §3.1.2.4 (MQTT-3.1.2-5), 5.0 §3.1.2.11: a client with a persistent
/// session gets, on reconnect, SessionPresent=1 and the QoS 1 and 2
/// messages published to its subscriptions while it was away.
#[tokio::test]
async fn session_persistent_client_gets_what_was_published_while_offline() {
    let gw = Gateway::start(&[]);
    let mut opts = mqtt::options("away", gw.addr());
    opts.set_clean_session(false);
    let (c, mut el) = connect(opts.clone()).await.unwrap();
    subscribe(&c, &mut el, "mail/#").await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while el.poll().await.is_ok() {}
    })
    .await;

    publish_one(gw.addr(), "mail/1", b"one", false).await;
    publish_one(gw.addr(), "mail/2", b"two", false).await;

    let (_c, mut el) = rumqttc::AsyncClient::new(opts, 16);
    let ack = loop {
        match tokio::time::timeout(mqtt::WAIT, el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(a)) => break a,
            _ => continue,
        }
    };
    assert!(ack.session_present, "SessionPresent=1");
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut el, Duration::from_secs(2)).await {
        got.push(p.payload.to_vec());
    }
    assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
}

/// 3.1.1 §4.4 (MQTT-4.4.0-1), 5.0 §4.4: a QoS 1 message sent but not
/// acknowledged before the connection dropped is sent again on reconnect
/// to the session, with DUP=1.
#[tokio::test]
async fn session_unacknowledged_messages_are_redelivered_with_dup() {
    let gw = Gateway::start(&[]);
    let c = Connect::v4("forgetful").clean(false);
    let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
    raw.send(&subscribe_packet(false, 1, "redo/#", 1, &[]))
        .await;
    assert_eq!(raw.read(mqtt::WAIT).await.unwrap().0, 0x90, "SUBACK");
    publish_one(gw.addr(), "redo/1", b"again", false).await;
    let first = raw.next_publish(mqtt::WAIT).await.expect("delivered");
    assert_eq!(first.0 & 0x08, 0, "first delivery without DUP");
    drop(raw); // no PUBACK
    settle().await;

    let (mut raw, ack) = Raw::connect(gw.addr(), &c).await;
    assert_eq!(ack.1, vec![1, 0], "session present");
    let again = raw.next_publish(mqtt::WAIT).await.expect("redelivered");
    let (topic, pkid, payload) = parse_publish(&again, false);
    assert_eq!((topic.as_str(), &payload[..]), ("redo/1", &b"again"[..]));
    assert_eq!(again.0 & 0x08, 0x08, "DUP set on redelivery");
    raw.send(&frame(0x40, &pkid.unwrap().to_be_bytes())).await;
}

/// 3.1.1 §3.1.2.4 (MQTT-3.1.2-6), 5.0 §3.1.2.4: CleanSession=1 discards the
/// previous session: SessionPresent=0 and nothing queued is delivered.
#[tokio::test]
async fn session_clean_start_discards_the_previous_session() {
    let gw = Gateway::start(&[]);
    let c = Connect::v4("fresh").clean(false);
    let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
    raw.send(&subscribe_packet(false, 1, "old/#", 1, &[])).await;
    raw.read(mqtt::WAIT).await.unwrap();
    raw.send(&[0xe0, 0]).await;
    raw.until_closed(mqtt::WAIT).await;
    publish_one(gw.addr(), "old/1", b"stale", false).await;
    let (mut raw, ack) = Raw::connect(gw.addr(), &Connect::v4("fresh")).await;
    assert_eq!(ack.1, vec![0, 0], "no session present");
    assert_eq!(raw.next_publish(QUIET).await, Err(End::Timeout));
}

/// 3.1.1 §4.1 and §3.2.2.2, 5.0 §4.1 and §3.1.2.11.2: session state lasts
/// as long as the session, gateway restarts included. A persistent session
/// (3.1.1 clean session 0; 5.0 session expiry > 0) reconnects after a
/// restart (SIGTERM, then kill -9) with SessionPresent=1 and its
/// subscriptions in place without subscribing again, and gets the QoS 1
/// messages published after the restart while it was offline. A clean
/// session's subscriptions are not kept.
#[tokio::test]
async fn session_survives_a_gateway_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut gw = Gateway::start(&["--data-dir", data]);
    // session expiry 3600 s (property 0x11)
    let sessions = [
        Connect::v4("durable4").clean(false),
        Connect::v5("durable5")
            .clean(false)
            .props(&[0x11, 0, 0, 0x0e, 0x10]),
        Connect::v4("forgotten"),
    ];
    for c in &sessions {
        let (mut raw, ack) = Raw::connect(gw.addr(), c).await;
        assert_eq!(ack.1[0], 0, "a new session");
        let v5 = c.level == 5;
        raw.send(&subscribe_packet(v5, 1, &format!("d/{}", c.id), 1, &[]))
            .await;
        assert_eq!(raw.read(mqtt::WAIT).await.unwrap().0, 0x90, "SUBACK");
        drop(raw);
    }
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).is_some());

    let mut gw = Gateway::start(&["--data-dir", data]);
    for c in &sessions {
        publish_one(gw.addr(), &format!("d/{}", c.id), b"after", false).await;
    }
    for c in &sessions[..2] {
        let (mut raw, ack) = Raw::connect(gw.addr(), c).await;
        assert_eq!(ack.1[0], 1, "{}: SessionPresent=1 after a restart", c.id);
        let p = raw
            .next_publish(mqtt::WAIT)
            .await
            .expect("queued while offline");
        let (topic, _, payload) = parse_publish(&p, c.level == 5);
        assert_eq!((topic, payload), (format!("d/{}", c.id), b"after".to_vec()));
        drop(raw);
    }
    let (mut raw, ack) = Raw::connect(gw.addr(), &sessions[2].clone().clean(false)).await;
    assert_eq!(ack.1[0], 0, "a clean session is not restored");
    assert_eq!(raw.next_publish(QUIET).await, Err(End::Timeout));
    drop(raw);

    // kill -9: the subscription is on disk milliseconds after its SUBACK.
    let c = Connect::v4("killed").clean(false);
    let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
    raw.send(&subscribe_packet(false, 1, "k/#", 1, &[])).await;
    raw.read(mqtt::WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("KILL");
    assert!(gw.wait(Duration::from_secs(30)).is_some());
    drop(gw);
    let gw = Gateway::start(&["--data-dir", data]);
    publish_one(gw.addr(), "k/1", b"k", false).await;
    let (mut raw, ack) = Raw::connect(gw.addr(), &c).await;
    assert_eq!(ack.1[0], 1, "SessionPresent=1 after kill -9");
    let p = raw.next_publish(mqtt::WAIT).await.expect("queued");
    assert_eq!(parse_publish(&p, false).0, "k/1");
}

/// Deviation from 3.1.1 §4.1 and 5.0 §4.1 (session state includes the QoS
/// 1/2 messages queued for an offline client): the session and its
/// subscriptions survive a gateway restart, but the messages rumqttd had
/// queued for it in memory before the restart do not. rumqttd keeps them in
/// per-filter logs shared by every subscriber of the filter, with a cursor
/// per session, so perch cannot put them back for one session alone without
/// forking it.
#[tokio::test]
async fn deviation_messages_queued_for_an_offline_session_do_not_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut gw = Gateway::start(&["--data-dir", data]);
    let c = Connect::v4("offline-q").clean(false);
    let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
    raw.send(&subscribe_packet(false, 1, "oq/#", 1, &[])).await;
    assert_eq!(raw.read(mqtt::WAIT).await.unwrap().0, 0x90, "SUBACK");
    drop(raw);
    publish_one(gw.addr(), "oq/before", b"queued", false).await;
    // Without a restart the queued message is delivered (see
    // `session_persistent_client_gets_what_was_published_while_offline`); here the
    // gateway stops cleanly first.
    gw.signal("TERM");
    assert!(gw.wait(Duration::from_secs(30)).is_some());
    drop(gw);
    let gw = Gateway::start(&["--data-dir", data]);
    let (mut raw, ack) = Raw::connect(gw.addr(), &c).await;
    assert_eq!(ack.1[0], 1, "the session itself survives");
    assert_eq!(
        raw.next_publish(QUIET).await,
        Err(End::Timeout),
        "perch now keeps queued messages across a restart: remove this deviation \
         from docs/broker.md and the README"
    );
}

/// 5.0 §3.1.2.11.2 (Session Expiry Interval), which rumqttd alone ignores
/// (it keeps every session forever): a session ends when its expiry runs
/// out after the connection closed, at once when it is 0 or absent, and a
/// clean start with an expiry starts a new session that outlives its
/// connection (MQTT-3.1.2-4, -23).
#[tokio::test]
async fn v5_session_expiry_is_honoured() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let session_present = |c: Connect| async move {
        let (_raw, ack) = Raw::connect(addr, &c).await;
        ack.1[0]
    };
    // Expiry 1 s: gone 2.5 s after the connection closed.
    let brief = Connect::v5("brief").clean(false).props(&[0x11, 0, 0, 0, 1]);
    subscribe_and_leave(addr, &brief).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(session_present(brief).await, 0, "expired after 1 s");
    // No expiry (0): the session ends with the connection.
    let zero = Connect::v5("zero").clean(false);
    subscribe_and_leave(addr, &zero).await;
    settle().await;
    assert_eq!(session_present(zero).await, 0, "ended with the connection");
    // Clean start with expiry 60 s: a new session that is kept.
    let fresh = Connect::v5("fresh").props(&[0x11, 0, 0, 0, 60]);
    subscribe_and_leave(addr, &fresh).await;
    settle().await;
    assert_eq!(session_present(fresh.clean(false)).await, 1, "kept");
}

/// Connects `c`, subscribes to `se/#` at QoS 1 and drops the connection.
async fn subscribe_and_leave(addr: SocketAddr, c: &Connect) {
    let (mut raw, _) = Raw::connect(addr, c).await;
    raw.send(&subscribe_packet(c.level == 5, 1, "se/#", 1, &[]))
        .await;
    assert_eq!(raw.read(mqtt::WAIT).await.unwrap().0, 0x90, "SUBACK");
    drop(raw);
}

// ---------------------------------------------------------------- subscriptions

/// 3.1.1 §4.7, 5.0 §4.7: `+` matches one level, `#` any number (including
/// the parent), and topics starting with `$` are not matched by filters
/// starting with a wildcard (MQTT-4.7.2-1). perch has no `$`-topics of its
/// own and clients may not use them (§4.7.2: the server SHOULD prevent it):
/// a SUBSCRIBE to one gets failure 0x80 and the connection stays up
/// (rumqttd alone drops the connection).
#[tokio::test]
async fn subscriptions_wildcards_and_dollar_topics() {
    let gw = Gateway::start(&[]);
    let (_a, mut plus) = subscriber(gw.addr(), "wc-plus", "wc/+/t").await;
    let (_b, mut hash) = subscriber(gw.addr(), "wc-hash", "wc/#").await;
    let (_c, mut all) = subscriber(gw.addr(), "wc-all", "#").await;
    let (d, mut dollar) = connect(mqtt::options("wc-dollar", gw.addr()))
        .await
        .unwrap();
    assert_eq!(
        subscribe(&d, &mut dollar, "$SYS/#").await,
        vec![SubscribeReasonCode::Failure]
    );
    for t in ["wc/a/t", "wc/a/b/t", "wc", "$SYS/x"] {
        publish_one(gw.addr(), t, t.as_bytes(), false).await;
    }
    assert_eq!(topics(&mut plus).await, vec!["wc/a/t"]);
    assert_eq!(topics(&mut hash).await, vec!["wc", "wc/a/b/t", "wc/a/t"]);
    // The gateway's own retained summary (perch/<id>/status) is an ordinary
    // topic that `#` rightly matches; it is not what this test is about.
    let all_topics: Vec<String> = topics(&mut all)
        .await
        .into_iter()
        .filter(|t| !t.starts_with("perch/"))
        .collect();
    assert_eq!(
        all_topics,
        vec!["wc", "wc/a/b/t", "wc/a/t"],
        "# does not match $SYS"
    );
    assert!(
        topics(&mut dollar).await.is_empty(),
        "still connected, nothing delivered"
    );
}

/// The topics of the publishes that arrive until the client is quiet.
async fn topics(el: &mut rumqttc::EventLoop) -> Vec<String> {
    let mut got = Vec::new();
    while let Some(p) = next_publish(el, Duration::from_millis(1_200)).await {
        got.push(p.topic);
    }
    got.sort();
    got
}

/// 3.1.1 §3.3.5 (MQTT-3.3.5-1): with overlapping subscriptions the message
/// is delivered respecting the maximum QoS of all matching subscriptions;
/// 5.0 §3.3.4 allows one copy per subscription. rumqttd sends one copy per
/// matching subscription, each at its own QoS; the highest one is among
/// them, which both versions accept.
#[tokio::test]
async fn subscriptions_overlapping_deliver_at_the_maximum_qos() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v4("overlap")).await;
    raw.send(&subscribe_packet(false, 1, "ov/#", 0, &[])).await;
    raw.read(mqtt::WAIT).await.unwrap();
    raw.send(&subscribe_packet(false, 2, "ov/+", 1, &[])).await;
    raw.read(mqtt::WAIT).await.unwrap();
    publish_one(gw.addr(), "ov/x", b"o", false).await;
    let mut qos = Vec::new();
    while let Ok(p) = raw.next_publish(Duration::from_millis(1_200)).await {
        let q = (p.0 >> 1) & 3;
        if q > 0 {
            let (_, pkid, _) = parse_publish(&p, false);
            raw.send(&frame(0x40, &pkid.unwrap().to_be_bytes())).await;
        }
        qos.push(q);
    }
    qos.sort();
    assert_eq!(
        qos,
        vec![0, 1],
        "one copy per subscription; the max QoS (1) among them"
    );
}

/// 3.1.1 §3.10.4 (MQTT-3.10.4-1..6), 5.0 §3.10.4: after UNSUBSCRIBE (and its
/// UNSUBACK) nothing more is delivered for that filter.
#[tokio::test]
async fn subscriptions_unsubscribe_stops_delivery() {
    let gw = Gateway::start(&[]);
    let (c, mut el) = subscriber(gw.addr(), "unsub", "u/#").await;
    publish_one(gw.addr(), "u/1", b"before", false).await;
    assert!(next_publish(&mut el, mqtt::WAIT).await.is_some());
    c.unsubscribe("u/#").await.unwrap();
    loop {
        match tokio::time::timeout(mqtt::WAIT, el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            rumqttc::Event::Incoming(rumqttc::Packet::UnsubAck(_)) => break,
            _ => continue,
        }
    }
    publish_one(gw.addr(), "u/2", b"after", false).await;
    assert!(next_publish(&mut el, Duration::from_secs(2))
        .await
        .is_none());
}

/// 3.1.1 §3.9.3 (0x80 Failure), 5.0 §3.9.3 (0x87 Not authorized): a filter
/// the ACL denies fails in the SUBACK; allowed filters in the same
/// SUBSCRIBE are granted.
#[tokio::test]
async fn subscriptions_denied_by_the_acl_get_failure_codes() {
    let (_dir, config) = crate::broker::auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let mut opts = mqtt::options("acl4", gw.addr());
    opts.set_credentials("sensor", "s3cret");
    let (c, mut el) = connect(opts).await.unwrap();
    assert_eq!(
        subscribe(&c, &mut el, "secrets/#").await,
        vec![SubscribeReasonCode::Failure]
    );
    assert_eq!(
        subscribe(&c, &mut el, "commands/x").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );

    let mut o = v5::options("acl5", gw.addr());
    o.set_credentials("sensor", "s3cret");
    let (c, mut el, _) = v5::connect(o).await;
    let codes = v5::subscribe(&c, &mut el, "secrets/#", v5::QoS::AtLeastOnce, None).await;
    assert_eq!(codes, vec![v5::SubscribeReasonCode::NotAuthorized]);
}

/// 5.0 §3.2.2.3.9, §3.4.2.2.2, §3.9.2.1.2, §3.14.2.2.3: each refusal
/// tells a 5.0 client why in a Reason String — a refused login's CONNACK, a
/// publish or subscription outside the ACL, a DISCONNECT for a malformed
/// packet — except, on acknowledgements, to a client that set Request
/// Problem Information to 0 (§3.1.2.11.7, MQTT-3.1.2-29).
#[tokio::test]
async fn v5_refusals_say_why_in_a_reason_string() {
    let (_dir, config) = crate::broker::auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let with_login = |c: Connect, user: &[u8], pass: &[u8]| {
        let mut c = c.encode();
        let mut body = c.split_off(2);
        body[7] |= 0xc0;
        string(&mut body, user);
        string(&mut body, pass);
        frame(0x10, &body)
    };
    let says = |packet: &RawPacket, text: &str| String::from_utf8_lossy(&packet.1).contains(text);
    // A refused login.
    let mut raw = Raw::open(gw.addr()).await;
    raw.send(&with_login(Connect::v5("rs1"), b"admin", b"wrong"))
        .await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(
        seen[0].1[1] == 0x86 && says(&seen[0], "unknown user name or wrong password"),
        "{seen:?}"
    );
    // A publish and a subscription outside the ACL.
    let (mut raw, ack) = Raw::connect(
        gw.addr(),
        &with_login(Connect::v5("rs2"), b"sensor", b"s3cret"),
    )
    .await;
    assert_eq!(ack.1[1], 0, "{ack:?}");
    raw.send(&publish(true, "secrets/x", 1, 7, false, b"x"))
        .await;
    let puback = raw.read(mqtt::WAIT).await.unwrap();
    assert!(
        puback.0 == 0x40
            && puback.1[2] == 0x87
            && says(&puback, "outside this client's publish ACL"),
        "{puback:?}"
    );
    raw.send(&subscribe_packet(true, 8, "secrets/#", 1, &[]))
        .await;
    let suback = raw.read(mqtt::WAIT).await.unwrap();
    assert!(
        suback.0 == 0x90 && says(&suback, "outside this client's subscribe ACL"),
        "{suback:?}"
    );
    // Request Problem Information 0 (property 0x17): no Reason String on
    // the PUBACK, still on the DISCONNECT.
    let quiet = Connect::v5("rs3").props(&[0x17, 0]);
    let (mut raw, _) = Raw::connect(gw.addr(), &with_login(quiet, b"sensor", b"s3cret")).await;
    raw.send(&publish(true, "secrets/x", 1, 9, false, b"x"))
        .await;
    let puback = raw.read(mqtt::WAIT).await.unwrap();
    assert_eq!(puback, (0x40, vec![0, 9, 0x87]), "no Reason String");
    raw.send(&[0xc1, 0]).await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(
        seen.iter()
            .any(|p| p.0 == 0xe0 && says(p, "malformed packet")),
        "{seen:?}"
    );
}

// ---------------------------------------------------------------- QoS 2

/// 3.1.1 §4.3.3, 5.0 §4.3.3: a QoS 2 message is delivered exactly once,
/// across versions.
#[tokio::test]
async fn qos2_is_delivered_exactly_once() {
    let gw = Gateway::start(&[]);
    let (c, mut sub_el) = connect(mqtt::options("q2sub", gw.addr())).await.unwrap();
    c.subscribe("q2/#", QoS::ExactlyOnce).await.unwrap();
    loop {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) =
            tokio::time::timeout(mqtt::WAIT, sub_el.poll())
                .await
                .unwrap()
                .unwrap()
        {
            break;
        }
    }
    let (p, mut pel, _) = v5::connect(v5::options("q2pub", gw.addr())).await;
    p.publish("q2/x", v5::QoS::ExactlyOnce, false, "once")
        .await
        .unwrap();
    v5::wait_ack(&mut pel).await;
    let got = next_publish(&mut sub_el, mqtt::WAIT)
        .await
        .expect("delivered");
    assert_eq!(got.qos, QoS::ExactlyOnce);
    assert!(
        next_publish(&mut sub_el, Duration::from_secs(2))
            .await
            .is_none(),
        "only once"
    );
}

/// 3.1.1 §4.3.3 and §4.4 (MQTT-4.4.0-1), 5.0 §4.4: a sender that got PUBREC
/// and lost the connection sends PUBREL after reconnecting to its session
/// and gets PUBCOMP; the message is delivered once.
#[tokio::test]
async fn qos2_pubrel_after_reconnect_completes_the_flow() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "q2watch", "q2r/#").await;
    let c = Connect::v4("q2sender").clean(false);
    let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
    raw.send(&publish(false, "q2r/x", 2, 7, false, b"exactly"))
        .await;
    let rec = raw.read(mqtt::WAIT).await.unwrap();
    assert_eq!(rec, (0x50, vec![0, 7]), "PUBREC");
    drop(raw);
    settle().await;
    let (mut raw, ack) = Raw::connect(gw.addr(), &c).await;
    assert_eq!(ack.1[0], 1, "session present");
    raw.send(&[0x62, 2, 0, 7]).await;
    assert_eq!(
        raw.read(mqtt::WAIT).await.unwrap(),
        (0x70, vec![0, 7]),
        "PUBCOMP"
    );
    let got = next_publish(&mut sub_el, mqtt::WAIT)
        .await
        .expect("delivered");
    assert_eq!(&got.payload[..], b"exactly");
    assert!(
        next_publish(&mut sub_el, Duration::from_secs(2))
            .await
            .is_none(),
        "only once"
    );
}

// ---------------------------------------------------------------- 5.0

/// 5.0 §3.3.2.3.4: a client that set a topic alias may publish with an
/// empty topic and the alias; subscribers get the real topic.
#[tokio::test]
async fn v5_topic_aliases_from_the_client() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "alias-sub", "alias/#").await;
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v5("aliaser")).await;
    // PUBLISH QoS 0 "alias/t" with topic alias 3 (property 0x23), then ""+alias.
    let with_alias = |topic: &str, payload: &[u8]| {
        let mut body = Vec::new();
        string(&mut body, topic.as_bytes());
        body.extend([3, 0x23, 0, 3]);
        body.extend(payload);
        frame(0x30, &body)
    };
    raw.send(&with_alias("alias/t", b"one")).await;
    raw.send(&with_alias("", b"two")).await;
    for want in [&b"one"[..], b"two"] {
        let p = next_publish(&mut sub_el, mqtt::WAIT)
            .await
            .expect("delivered");
        assert_eq!((p.topic.as_str(), &p.payload[..]), ("alias/t", want));
    }
}

/// 5.0 §3.3.2.3.3: a message whose expiry interval has passed is not
/// delivered (here: a retained one), and the interval is decreased by the
/// time the message waited.
#[tokio::test]
async fn v5_message_expiry() {
    let gw = Gateway::start(&[]);
    let (p, mut pel, _) = v5::connect(v5::options("exp-pub", gw.addr())).await;
    let props = |s| v5::PublishProperties {
        message_expiry_interval: Some(s),
        ..Default::default()
    };
    p.publish_with_properties("exp/short", v5::QoS::AtLeastOnce, true, "s", props(1))
        .await
        .unwrap();
    v5::wait_ack(&mut pel).await;
    p.publish_with_properties("exp/long", v5::QoS::AtLeastOnce, true, "l", props(600))
        .await
        .unwrap();
    v5::wait_ack(&mut pel).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (c, mut el, _) = v5::connect(v5::options("exp-sub", gw.addr())).await;
    v5::subscribe(&c, &mut el, "exp/#", v5::QoS::AtLeastOnce, None).await;
    let got = v5::next_publish(&mut el, mqtt::WAIT)
        .await
        .expect("the long one");
    assert_eq!(&got.topic[..], b"exp/long");
    let left = got
        .properties
        .and_then(|p| p.message_expiry_interval)
        .unwrap();
    assert!((590..600).contains(&left), "decreased by the wait: {left}");
    assert!(
        v5::next_publish(&mut el, QUIET).await.is_none(),
        "the expired one is gone"
    );
}

/// 5.0 §3.8.2.1.2 and §3.3.4: a subscription identifier given in SUBSCRIBE
/// comes back in each PUBLISH matched by that subscription.
#[tokio::test]
async fn v5_subscription_identifiers() {
    let gw = Gateway::start(&[]);
    let (c, mut el, _) = v5::connect(v5::options("subid", gw.addr())).await;
    let props = v5::SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    v5::subscribe(&c, &mut el, "sid/#", v5::QoS::AtLeastOnce, Some(props)).await;
    publish_one(gw.addr(), "sid/x", b"i", false).await;
    let got = v5::next_publish(&mut el, mqtt::WAIT)
        .await
        .expect("delivered");
    assert_eq!(
        got.properties.map(|p| p.subscription_identifiers),
        Some(vec![42])
    );
}

/// 5.0 §3.3.2.3.7 (user properties), §4.10 (request/response: response
/// topic §3.3.2.3.5, correlation data §3.3.2.3.6): forwarded unchanged.
#[tokio::test]
async fn v5_user_properties_and_request_response() {
    let gw = Gateway::start(&[]);
    let (responder, mut rel, _) = v5::connect(v5::options("responder", gw.addr())).await;
    v5::subscribe(&responder, &mut rel, "req/#", v5::QoS::AtLeastOnce, None).await;
    let (requester, mut qel, _) = v5::connect(v5::options("requester", gw.addr())).await;
    v5::subscribe(
        &requester,
        &mut qel,
        "resp/requester",
        v5::QoS::AtLeastOnce,
        None,
    )
    .await;
    let props = v5::PublishProperties {
        response_topic: Some("resp/requester".into()),
        correlation_data: Some(b"c-17".to_vec().into()),
        user_properties: vec![("unit".into(), "celsius".into())],
        ..Default::default()
    };
    requester
        .publish_with_properties("req/temp", v5::QoS::AtLeastOnce, false, "?", props)
        .await
        .unwrap();
    v5::wait_ack(&mut qel).await;
    let req = v5::next_publish(&mut rel, mqtt::WAIT)
        .await
        .expect("request");
    let p = req.properties.expect("properties forwarded");
    assert_eq!(
        p.user_properties,
        vec![("unit".to_owned(), "celsius".to_owned())]
    );
    assert_eq!(p.response_topic.as_deref(), Some("resp/requester"));
    let corr = p.correlation_data.clone().unwrap();
    assert_eq!(&corr[..], b"c-17");
    let reply = v5::PublishProperties {
        correlation_data: Some(corr),
        ..Default::default()
    };
    responder
        .publish_with_properties(
            p.response_topic.unwrap(),
            v5::QoS::AtLeastOnce,
            false,
            "21.5",
            reply,
        )
        .await
        .unwrap();
    v5::wait_ack(&mut rel).await;
    let resp = v5::next_publish(&mut qel, mqtt::WAIT)
        .await
        .expect("response");
    assert_eq!(&resp.payload[..], b"21.5");
    assert_eq!(
        resp.properties.and_then(|p| p.correlation_data).as_deref(),
        Some(&b"c-17"[..])
    );
}

/// 5.0 §4.8.2: a message matching a shared subscription
/// (`$share/group/filter`) goes to one member of the group only.
#[tokio::test]
async fn v5_shared_subscriptions() {
    let gw = Gateway::start(&[]);
    let (a, mut ael, _) = v5::connect(v5::options("share-a", gw.addr())).await;
    v5::subscribe(&a, &mut ael, "$share/g/jobs/#", v5::QoS::AtLeastOnce, None).await;
    let (b, mut bel, _) = v5::connect(v5::options("share-b", gw.addr())).await;
    v5::subscribe(&b, &mut bel, "$share/g/jobs/#", v5::QoS::AtLeastOnce, None).await;
    for i in 0..6 {
        publish_one(gw.addr(), &format!("jobs/{i}"), b"j", false).await;
    }
    let count = |mut el: v5::EventLoop| async move {
        let mut n = 0;
        while v5::next_publish(&mut el, Duration::from_millis(1_500))
            .await
            .is_some()
        {
            n += 1;
        }
        n
    };
    let (na, nb) = tokio::join!(count(ael), count(bel));
    assert_eq!(
        na + nb,
        6,
        "each message to exactly one member ({na} + {nb})"
    );
}

/// 5.0 §3.1.2.11.4 (the client's Maximum Packet Size: the server must not
/// send it a larger packet) and 5.0 §3.2.2.3.6 / 3.1.1 §4.8 (a packet
/// larger than the server accepts ends that connection only).
#[tokio::test]
async fn v5_maximum_packet_size() {
    // The smallest packet limit that still carries a deploy bundle (64 KiB
    // of headroom over functions.max_bundle_bytes).
    let (_dir, gw) =
        gateway_with("max_packet_size_bytes = 131072\n\n[functions]\nmax_bundle_bytes = 65536");
    // The CONNACK tells the limit (Maximum Packet Size, property 0x27).
    let (mut raw, ack) = Raw::connect(gw.addr(), &Connect::v5("big")).await;
    let props = &ack.1[3..];
    let told = [0x27, 0, 2, 0, 0];
    assert!(
        props.windows(5).any(|w| w == told),
        "Maximum Packet Size 131072 in the CONNACK's properties {props:?}"
    );
    // A 200 KiB publish ends that connection, with DISCONNECT 0x95 (Packet
    // too large) first.
    raw.send(&publish(
        true,
        "big/x",
        0,
        0,
        false,
        &vec![b'x'; 200 * 1024],
    ))
    .await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(
        seen.iter()
            .any(|p| p.0 == 0xe0 && p.1.first() == Some(&0x95)),
        "DISCONNECT 0x95 before the close; saw {seen:?}"
    );
    // 3.1.1 has no DISCONNECT from the server: the connection just closes.
    let (mut raw, ack) = Raw::connect(gw.addr(), &Connect::v4("big4")).await;
    assert_eq!(ack.1.len(), 2, "a 3.1.1 CONNACK has no properties");
    raw.send(&publish(
        false,
        "big/y",
        0,
        0,
        false,
        &vec![b'x'; 200 * 1024],
    ))
    .await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(seen.iter().all(|p| p.0 != 0xe0), "saw {seen:?}");
    bystanders_still_served(gw.addr()).await;
}

/// 5.0 §4.13.1: a 5.0 client that sends a malformed packet is sent
/// DISCONNECT 0x81 (Malformed Packet) before the connection closes, and
/// its will is published (the connection did not end with its DISCONNECT).
#[tokio::test]
async fn v5_a_malformed_packet_gets_disconnect_0x81_and_the_will_goes_out() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "mal-watch", "status/#").await;
    let c = Connect::v5("mal").will("status/mal", b"gone", 1, false);
    let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
    // PINGREQ with a flag set: the fixed header's reserved bits are wrong.
    raw.send(&[0xc1, 0]).await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(
        seen.iter()
            .any(|p| p.0 == 0xe0 && p.1.first() == Some(&0x81)),
        "DISCONNECT 0x81 before the close; saw {seen:?}"
    );
    let got = next_publish(&mut sub_el, mqtt::WAIT)
        .await
        .expect("the will");
    assert_eq!(got.topic, "status/mal");
}

/// 5.0 §3.1.2.11.4 (MQTT-3.1.2-24/25): the server does not send a client
/// a packet larger than the Maximum Packet Size it asked for; it discards
/// the message and behaves as if it had been delivered, so the QoS 1 and
/// QoS 2 flows go on (in rumqttd's order: the made-up acknowledgement of
/// the discarded message waits for the client's earlier one). The discard
/// is counted in `perch_broker_messages_too_large_total`.
#[tokio::test]
async fn v5_the_clients_maximum_packet_size_is_honoured() {
    let gw = Gateway::start(&[]);
    // Maximum Packet Size 64 (property 0x27)
    let (mut raw, _) =
        Raw::connect(gw.addr(), &Connect::v5("small").props(&[0x27, 0, 0, 0, 64])).await;
    raw.send(&subscribe_packet(true, 1, "mps/#", 2, &[])).await;
    raw.read(mqtt::WAIT).await.unwrap();
    // QoS 1: a small message left unacknowledged, then a big one (discarded
    // while the small one is still in flight), then another small one.
    publish_one(gw.addr(), "mps/1", b"first", false).await;
    let first = raw.next_publish(mqtt::WAIT).await.expect("first");
    publish_one(gw.addr(), "mps/big", &[b'y'; 200], false).await;
    publish_one(gw.addr(), "mps/2", b"second", false).await;
    let second = raw.next_publish(mqtt::WAIT).await.expect("second");
    assert_eq!(
        parse_publish(&second, true).0,
        "mps/2",
        "the big one is skipped"
    );
    for p in [&first, &second] {
        let pkid = parse_publish(p, true).1.unwrap().to_be_bytes();
        raw.send(&[0x40, 2, pkid[0], pkid[1]]).await;
    }
    // QoS 2: a big one and a small one from a QoS 2 publisher.
    let (c, mut el) = connect(mqtt::options("mps-q2", gw.addr())).await.unwrap();
    c.publish("mps/big2", QoS::ExactlyOnce, false, vec![b'z'; 200])
        .await
        .unwrap();
    c.publish("mps/3", QoS::ExactlyOnce, false, b"third".to_vec())
        .await
        .unwrap();
    let pump = tokio::spawn(async move { while el.poll().await.is_ok() {} });
    let third = raw.next_publish(mqtt::WAIT).await.expect("third");
    let (topic, pkid, _) = parse_publish(&third, true);
    assert_eq!((topic.as_str(), (third.0 >> 1) & 3), ("mps/3", 2));
    let pkid = pkid.unwrap().to_be_bytes();
    raw.send(&[0x50, 2, pkid[0], pkid[1]]).await;
    let rel = raw.read(mqtt::WAIT).await.expect("PUBREL");
    assert_eq!(rel.0, 0x62);
    raw.send(&[0x70, 2, pkid[0], pkid[1]]).await;
    // The connection is still up and served.
    publish_one(gw.addr(), "mps/4", b"fourth", false).await;
    let fourth = raw.next_publish(mqtt::WAIT).await.expect("fourth");
    assert_eq!(parse_publish(&fourth, true).0, "mps/4");
    pump.abort();
    let metrics = crate::admin::get(gw.admin.unwrap(), "/metrics", None).1;
    assert!(
        metrics.contains("\nperch_broker_messages_too_large_total 2\n"),
        "two discards counted:\n{metrics}"
    );
}

/// 5.0 §3.2.2.3.14 (Server Keep Alive, MQTT-3.2.2-21): the server may tell
/// the client to use another keep-alive. perch keeps a client's own
/// keep-alive (the CONNACK carries no Server Keep Alive; it is enforced,
/// see `connect_keep_alive_is_enforced_...`); a client that asked for 0
/// (off) is told the keep-alive perch enforces instead, 65,535 s.
#[tokio::test]
async fn v5_server_keep_alive() {
    let gw = Gateway::start(&[]);
    let (_c, _el, ack) = v5::connect(v5::options("ska", gw.addr())).await;
    assert_eq!(ack.properties.and_then(|p| p.server_keep_alive), None);
    let (_raw, ack) = Raw::connect(gw.addr(), &Connect::v5("ska0").keep_alive(0)).await;
    // CONNACK: flags, reason, property length, properties
    let props = &ack.1[3..];
    assert!(
        props.windows(3).any(|w| w == [0x13, 0xff, 0xff]),
        "Server Keep Alive 65535 in {props:?}"
    );
}

/// `broker.max_keep_alive_s`: a 5.0 client asking for more (or for 0) is
/// told the maximum in Server Keep Alive (5.0 §3.2.2.3.14) and held to it:
/// silent past 1.5 times it, it is dropped and its will published. A 3.1.1
/// client cannot be told, so one asking for more or for 0 is refused with
/// CONNACK 2, as Mosquitto's `max_keepalive` does; one within it connects.
#[tokio::test]
async fn max_keep_alive_is_told_to_5_0_clients_and_refused_to_3_1_1_ones() {
    let (_dir, gw) = gateway_with("max_keep_alive_s = 2");
    let ska = |ack: &RawPacket| {
        let props = &ack.1[3..];
        props
            .windows(3)
            .find(|w| w[0] == 0x13)
            .map(|w| u16::from_be_bytes([w[1], w[2]]))
    };
    let (_a, ack) = Raw::connect(gw.addr(), &Connect::v5("ka-long").keep_alive(60)).await;
    assert_eq!((ack.1[1], ska(&ack)), (0, Some(2)), "{ack:?}");
    let (_b, ack) = Raw::connect(gw.addr(), &Connect::v5("ka-short").keep_alive(1)).await;
    assert_eq!(
        (ack.1[1], ska(&ack)),
        (0, None),
        "within the maximum: {ack:?}"
    );
    let (_c, ack) = Raw::connect(gw.addr(), &Connect::v4("ka-v4").keep_alive(60)).await;
    assert_eq!(
        ack.1,
        vec![0, 2],
        "3.1.1 over the maximum: identifier rejected"
    );
    let (_d, ack) = Raw::connect(gw.addr(), &Connect::v4("ka-v4-0").keep_alive(0)).await;
    assert_eq!(
        ack.1,
        vec![0, 2],
        "3.1.1 asking for none: identifier rejected"
    );
    let (_e, ack) = Raw::connect(gw.addr(), &Connect::v4("ka-v4-ok").keep_alive(2)).await;
    assert_eq!(ack.1, vec![0, 0], "3.1.1 within the maximum connects");
    // Held to it: a 5.0 client that asked for none and stays silent is
    // dropped after 1.5 × 2 s, and its will goes out.
    let mut watch = mqtt::options("ka-watch", gw.addr());
    watch.set_keep_alive(Duration::from_secs(2));
    let (s, mut sub_el) = connect(watch).await.unwrap();
    subscribe(&s, &mut sub_el, "status/#").await;
    let c = Connect::v5("ka-mute")
        .keep_alive(0)
        .will("status/ka-mute", b"gone", 1, false);
    let (_mute, ack) = Raw::connect(gw.addr(), &c).await;
    assert_eq!(ska(&ack), Some(2));
    let got = next_publish(&mut sub_el, Duration::from_secs(15))
        .await
        .expect("the silent client's will");
    assert_eq!(got.topic, "status/ka-mute");
}

/// 5.0 §3.1.2.11.3 and §4.9 (MQTT-3.3.4-9): the server never has more
/// unacknowledged QoS 1/2 publishes towards a client than the client's
/// Receive Maximum; each PUBACK lets the next one through, in order, and
/// nothing is lost.
#[tokio::test]
async fn v5_receive_maximum_is_honoured() {
    let gw = Gateway::start(&[]);
    // Receive Maximum 2 (property 0x21)
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v5("slow").props(&[0x21, 0, 2])).await;
    raw.send(&subscribe_packet(true, 1, "rm/#", 1, &[])).await;
    raw.read(mqtt::WAIT).await.unwrap();
    for i in 0..5 {
        publish_one(gw.addr(), &format!("rm/{i}"), b"r", false).await;
    }
    let mut unacked = std::collections::VecDeque::new();
    while let Ok(p) = raw.next_publish(QUIET).await {
        unacked.push_back(parse_publish(&p, true));
    }
    assert_eq!(unacked.len(), 2, "no more than Receive Maximum in flight");
    let mut topics = Vec::new();
    while let Some((topic, pkid, _)) = unacked.pop_front() {
        topics.push(topic);
        let pkid = pkid.unwrap().to_be_bytes();
        raw.send(&[0x40, 2, pkid[0], pkid[1]]).await;
        // The PUBACK frees one slot: one more comes, not two.
        while let Ok(p) = raw.next_publish(QUIET).await {
            unacked.push_back(parse_publish(&p, true));
        }
        assert!(unacked.len() <= 2, "over Receive Maximum: {unacked:?}");
    }
    assert_eq!(topics, ["rm/0", "rm/1", "rm/2", "rm/3", "rm/4"]);
}

// ---------------------------------------------------------------- malformed

/// 3.1.1 §2.2.3 and §4.8, 5.0 §1.5.5 and §4.13: a remaining length longer
/// than four bytes is malformed; the server closes that connection.
#[tokio::test]
async fn malformed_remaining_length_closes_that_client_only() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v4("badlen")).await;
    raw.send(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 1, b'x'])
        .await;
    raw.until_closed(mqtt::WAIT).await;
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §2.2.2 (MQTT-2.2.2-2), 5.0 §2.1.3: reserved flag bits set (here a
/// SUBSCRIBE with flags 0000 instead of 0010) make the packet malformed;
/// the connection is closed.
#[tokio::test]
async fn malformed_reserved_flags_close_that_client_only() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v4("flags")).await;
    let mut sub = subscribe_packet(false, 1, "f/#", 0, &[]);
    sub[0] = 0x80;
    raw.send(&sub).await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(
        seen.iter().all(|p| p.0 != 0x90),
        "no SUBACK for a malformed SUBSCRIBE: {seen:?}"
    );
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §3.3.1.2 (MQTT-3.3.1-4), 5.0 §3.3.1.2: a PUBLISH with both QoS bits
/// set (QoS 3) is malformed; the connection is closed.
#[tokio::test]
async fn malformed_qos3_publish_closes_that_client_only() {
    let gw = Gateway::start(&[]);
    let (_s, mut sub_el) = subscriber(gw.addr(), "q3watch", "q3/#").await;
    for c in [Connect::v4("q3-4"), Connect::v5("q3-5")] {
        let (mut raw, _) = Raw::connect(gw.addr(), &c).await;
        let mut p = publish(c.level == 5, "q3/x", 1, 1, false, b"bad");
        p[0] |= 0x06;
        raw.send(&p).await;
        raw.until_closed(mqtt::WAIT).await;
    }
    assert!(
        next_publish(&mut sub_el, QUIET).await.is_none(),
        "not routed"
    );
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §3.1 (MQTT-3.1.0-1), 5.0 §3.1: the first packet must be CONNECT;
/// anything else closes the connection without a CONNACK.
#[tokio::test]
async fn malformed_first_packet_not_connect_is_closed_without_connack() {
    let gw = Gateway::start(&[]);
    let mut raw = Raw::open(gw.addr()).await;
    raw.send(&publish(false, "nc/x", 0, 0, false, b"x")).await;
    let seen = raw.until_closed(mqtt::WAIT).await;
    assert!(seen.is_empty(), "no CONNACK: {seen:?}");
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §3.1.0 (MQTT-3.1.0-2), 5.0 §3.1: a second CONNECT is a protocol
/// violation; the connection is closed.
#[tokio::test]
async fn malformed_second_connect_is_closed() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v4("twice")).await;
    raw.send(&Connect::v4("twice").encode()).await;
    raw.until_closed(mqtt::WAIT).await;
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §3.1.2.2 (MQTT-3.1.2-2): an unsupported protocol level gets CONNACK
/// 0x01 (unacceptable protocol version) and is closed. 5.0 §3.1.2.2 asks for
/// 0x84; a server that does not know the client's version answers in the
/// 3.1.1 encoding, which every client can read. Level 3 (MQTT 3.1) is
/// refused the same way.
#[tokio::test]
async fn malformed_protocol_level_gets_connack_unacceptable_version() {
    let gw = Gateway::start(&[]);
    for level in [3u8, 6, 0] {
        let mut raw = Raw::open(gw.addr()).await;
        let c = Connect {
            level,
            ..Connect::v4("lvl")
        };
        raw.send(&c.encode()).await;
        let seen = raw.until_closed(mqtt::WAIT).await;
        assert_eq!(seen, vec![(0x20, vec![0, 0x01])], "level {level}");
    }
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §2.2.1 (packet type 15 is reserved in 3.1.1; AUTH exists only in
/// 5.0 §3.15): an AUTH from a 3.1.1 client is malformed and closes that
/// connection (rumqttd's 3.1.1 codec panicked on it, leaking the
/// connection's slot in the router).
#[tokio::test]
async fn malformed_auth_from_a_311_client_closes_that_client_only() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &Connect::v4("auth4")).await;
    raw.send(&[0xf0, 0]).await;
    raw.until_closed(mqtt::WAIT).await;
    bystanders_still_served(gw.addr()).await;
}

/// 3.1.1 §1.5.3 (MQTT-1.5.3-2), 5.0 §1.5.4 (MQTT-1.5.4-2): a UTF-8 string
/// must not hold U+0000; a server that receives one closes the connection.
/// A client id or user name with a NUL gets no CONNACK, only the close.
#[tokio::test]
async fn malformed_nul_in_a_connect_string_closes_that_client_only() {
    let gw = Gateway::start(&[]);
    for c in [Connect::v4("nul\0id"), Connect::v5("nul\0id")] {
        let mut raw = Raw::open(gw.addr()).await;
        raw.send(&c.encode()).await;
        let seen = raw.until_closed(mqtt::WAIT).await;
        assert!(
            seen.iter().all(|p| p.0 != 0x20),
            "no CONNACK for a client id holding U+0000: {seen:?}"
        );
    }
    bystanders_still_served(gw.addr()).await;
}
