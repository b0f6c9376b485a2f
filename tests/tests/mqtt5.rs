//! What a subscriber is sent and how a 5.0 session ends, against the real
//! `perch` binary with rumqttc (v4 and v5) clients and raw packets: the
//! delivery QoS rule everywhere a message reaches a subscriber, control
//! requests kept from non-admins, No Local, and a Session Expiry Interval
//! set in DISCONNECT. Sections cite the specs as `conformance.rs` does.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS};

use crate::conformance::v5;
use crate::util::functions::{self, file, wasm_file};
use crate::util::mqtt::{self, WAIT};
use crate::util::raw::{frame, string, varint, Raw};
use crate::util::{perch_with_stdin, Gateway};

/// How long to wait for something that must not happen.
const QUIET: Duration = Duration::from_millis(700);

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> v5::QoS {
    match q {
        0 => v5::QoS::AtMostOnce,
        1 => v5::QoS::AtLeastOnce,
        _ => v5::QoS::ExactlyOnce,
    }
}

/// A publish as a subscriber saw it: topic, QoS, RETAIN.
type Seen = (String, u8, bool);

/// A 3.1.1 or 5.0 subscriber on one filter at one QoS, through rumqttc.
enum Sub {
    V4(AsyncClient, Box<EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

impl Sub {
    async fn connect(v5: bool, addr: SocketAddr, id: &str, filter: &str, q: u8) -> Sub {
        if v5 {
            let (c, mut el, _) = v5::connect(v5::options(id, addr)).await;
            v5::subscribe(&c, &mut el, filter, qos5(q), None).await;
            Sub::V5(c, Box::new(el))
        } else {
            let (c, mut el) = mqtt::connect(mqtt::options(id, addr)).await.unwrap();
            subscribe_v4(&c, &mut el, filter, q).await;
            Sub::V4(c, Box::new(el))
        }
    }

    /// Everything that arrives until nothing has for [`QUIET`] (at least
    /// `n` messages are waited for up to [`WAIT`]), sorted.
    async fn collect(&mut self, n: usize) -> Vec<Seen> {
        let mut got = Vec::new();
        loop {
            let wait = if got.len() < n { WAIT } else { QUIET };
            let next = match self {
                Sub::V4(_, el) => mqtt::next_publish(el, wait)
                    .await
                    .map(|p| (p.topic, p.qos as u8, p.retain)),
                Sub::V5(_, el) => v5::next_publish(el, wait).await.map(|p| {
                    let topic = String::from_utf8(p.topic.to_vec()).unwrap();
                    (topic, p.qos as u8, p.retain)
                }),
            };
            match next {
                Some(seen) => got.push(seen),
                None => break,
            }
        }
        got.sort();
        got
    }
}

async fn subscribe_v4(c: &AsyncClient, el: &mut EventLoop, filter: &str, q: u8) {
    c.subscribe(filter, qos(q)).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("no SUBACK")
        {
            Ok(Event::Incoming(Packet::SubAck(_))) => return,
            Ok(_) => continue,
            Err(e) => panic!("subscribe failed: {e}"),
        }
    }
}

/// Publishes `topic` (its name as the payload) at QoS `q` through a fresh
/// 3.1.1 or 5.0 client, waits for the PUBACK or PUBCOMP, and disconnects
/// (for QoS 0 the DISCONNECT follows the PUBLISH).
async fn publish(v5: bool, addr: SocketAddr, id: &str, topic: &str, q: u8, retain: bool) {
    if v5 {
        let (c, mut el, _) = v5::connect(v5::options(id, addr)).await;
        c.publish(topic, qos5(q), retain, topic.to_owned())
            .await
            .unwrap();
        if q > 0 {
            v5::wait_ack(&mut el).await;
        }
        c.disconnect().await.unwrap();
        drain_v5(&mut el).await;
    } else {
        let (c, mut el) = mqtt::connect(mqtt::options(id, addr)).await.unwrap();
        c.publish(topic, qos(q), retain, topic.to_owned())
            .await
            .unwrap();
        if q > 0 {
            loop {
                match tokio::time::timeout(WAIT, el.poll()).await.expect("no ack") {
                    Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_))) => break,
                    Ok(_) => continue,
                    Err(e) => panic!("publish failed: {e}"),
                }
            }
        }
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(WAIT, async { while el.poll().await.is_ok() {} }).await;
    }
}

async fn drain_v5(el: &mut v5::EventLoop) {
    let _ = tokio::time::timeout(WAIT, async { while el.poll().await.is_ok() {} }).await;
}

/// What a subscriber at `sub` QoS must see of publishes at QoS 0, 1 and 2
/// to `<prefix>/0`, `/1` and `/2`.
fn expected(prefix: &str, sub: u8, retain: bool) -> Vec<Seen> {
    (0..=2u8)
        .map(|p| (format!("{prefix}/{p}"), p.min(sub), retain))
        .collect()
}

// ---------------------------------------------------------------- delivery QoS

/// 3.1.1 §3.8.4 and 5.0 §3.8.4 (MQTT-3.8.4-8 in 5.0, the table in 3.1.1
/// §4.3): a message is delivered at the lower of its publish QoS and the
/// subscription's maximum, for each of the nine pairs, whatever version
/// the publisher speaks. rumqttd alone delivers at the subscription's QoS
/// (a QoS 0 publish reached a QoS 2 subscriber as QoS 2).
async fn delivery_qos_is_the_lower_of_publish_and_subscription(v5: bool) {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let tag = if v5 { "v5" } else { "v4" };
    let mut subs = Vec::new();
    for s in 0..=2u8 {
        let id = format!("dq-{tag}-sub{s}");
        subs.push(Sub::connect(v5, addr, &id, &format!("dq-{tag}/#"), s).await);
    }
    for publisher_v5 in [false, true] {
        for p in 0..=2u8 {
            let topic = format!("dq-{tag}/from-v{}/{p}", if publisher_v5 { 5 } else { 4 });
            publish(
                publisher_v5,
                addr,
                &format!("dq-{tag}-pub"),
                &topic,
                p,
                false,
            )
            .await;
        }
    }
    for (s, sub) in subs.iter_mut().enumerate() {
        let mut want = expected(&format!("dq-{tag}/from-v4"), s as u8, false);
        want.extend(expected(&format!("dq-{tag}/from-v5"), s as u8, false));
        assert_eq!(sub.collect(6).await, want, "{tag} subscriber at QoS {s}");
    }
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription_3_1_1() {
    delivery_qos_is_the_lower_of_publish_and_subscription(false).await;
}

#[tokio::test]
async fn delivery_qos_is_the_lower_of_publish_and_subscription_5_0() {
    delivery_qos_is_the_lower_of_publish_and_subscription(true).await;
}

/// The same rule for retained messages sent on subscribe (RETAIN=1), also
/// once they were restored from disk after a restart (a stored QoS 2
/// message goes to a QoS 2 subscriber at QoS 2).
#[tokio::test]
async fn delivery_qos_of_retained_messages_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut gw = Gateway::start(&["--data-dir", data]);
    for p in 0..=2u8 {
        publish(false, gw.addr(), "rq-pub", &format!("rq/{p}"), p, true).await;
    }
    retained_at_the_lower_qos(gw.addr(), "live").await;
    // The store commits within milliseconds of the PUBLISH.
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("TERM");
    gw.wait(WAIT).expect("perch stops");
    drop(gw);
    let gw = Gateway::start(&["--data-dir", data]);
    retained_at_the_lower_qos(gw.addr(), "restored").await;
}

/// New subscribers at each QoS, both versions, get the retained `rq/0..2`
/// (published at QoS 0, 1, 2) at the lower QoS, with RETAIN=1.
async fn retained_at_the_lower_qos(addr: SocketAddr, round: &str) {
    for v5 in [false, true] {
        for s in 0..=2u8 {
            let id = format!("rq-{round}-{v5}-{s}");
            let mut sub = Sub::connect(v5, addr, &id, "rq/#", s).await;
            assert_eq!(
                sub.collect(3).await,
                expected("rq", s, true),
                "{round}, v5 {v5}, subscriber at QoS {s}"
            );
        }
    }
}

/// The same rule for what an offline persistent session had queued: it is
/// sent on reconnect at the lower of each message's QoS and the
/// subscription's.
#[tokio::test]
async fn delivery_qos_of_an_offline_sessions_queue() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    for v5 in [false, true] {
        let id = format!("oq-away-{v5}");
        let prefix = format!("oq{}", u8::from(v5));
        match Sub::connect_persistent(v5, addr, &id, &format!("{prefix}/#")).await {
            Sub::V4(c, mut el) => {
                c.disconnect().await.unwrap();
                let _ =
                    tokio::time::timeout(WAIT, async { while el.poll().await.is_ok() {} }).await;
            }
            Sub::V5(c, mut el) => {
                c.disconnect().await.unwrap();
                drain_v5(&mut el).await;
            }
        }
        for p in 1..=2u8 {
            publish(v5, addr, "oq-pub", &format!("{prefix}/{p}"), p, false).await;
        }
        let mut sub = Sub::resume(v5, addr, &id).await;
        let got = sub.collect(2).await;
        // QoS 0 messages may be queued or not (3.1.1 §3.1.2.4, 5.0
        // §3.1.2.4); none was published.
        assert_eq!(
            got,
            vec![
                (format!("{prefix}/1"), 1, false),
                (format!("{prefix}/2"), 2, false)
            ],
            "v5 {v5}"
        );
    }
}

impl Sub {
    /// A subscriber at QoS 2 with a session that outlives the connection.
    async fn connect_persistent(v5: bool, addr: SocketAddr, id: &str, filter: &str) -> Sub {
        if v5 {
            let mut o = v5::options(id, addr);
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(600));
            let (c, mut el, _) = v5::connect(o).await;
            v5::subscribe(&c, &mut el, filter, v5::QoS::ExactlyOnce, None).await;
            Sub::V5(c, Box::new(el))
        } else {
            let mut o = mqtt::options(id, addr);
            o.set_clean_session(false);
            let (c, mut el) = mqtt::connect(o).await.unwrap();
            subscribe_v4(&c, &mut el, filter, 2).await;
            Sub::V4(c, Box::new(el))
        }
    }

    /// Reconnects to the session of [`Sub::connect_persistent`].
    async fn resume(v5: bool, addr: SocketAddr, id: &str) -> Sub {
        if v5 {
            let mut o = v5::options(id, addr);
            o.set_clean_start(false);
            o.set_session_expiry_interval(Some(600));
            let (c, el, ack) = v5::connect(o).await;
            assert!(ack.session_present, "{id}: SessionPresent=1");
            Sub::V5(c, Box::new(el))
        } else {
            let mut o = mqtt::options(id, addr);
            o.set_clean_session(false);
            let (c, el) = mqtt::connect(o).await.unwrap();
            Sub::V4(c, Box::new(el))
        }
    }
}

/// The same rule for wills (published by the gateway on the client's
/// behalf): a QoS 0 will reaches a QoS 2 subscriber at QoS 0, a QoS 2 will
/// at QoS 2.
#[tokio::test]
async fn delivery_qos_of_wills() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let mut sub = Sub::connect(true, addr, "will-watch", "wq/#", 2).await;
    for w in 0..=2u8 {
        for v5 in [false, true] {
            let connect = raw_connect(v5, &format!("wq-{w}-{v5}"), true, None)
                .with_will(&format!("wq/{w}/{}", u8::from(v5)), w);
            let (raw, _) = Raw::connect(addr, &connect).await;
            drop(raw);
        }
    }
    let want: Vec<Seen> = (0..=2u8)
        .flat_map(|w| (0..=1).map(move |v| (format!("wq/{w}/{v}"), w, false)))
        .collect();
    assert_eq!(sub.collect(6).await, want);
}

/// The same rule for what the gateway's functions publish: in-process
/// publishes are QoS 0, so a QoS 2 subscriber gets them at QoS 0.
#[tokio::test]
async fn delivery_qos_of_function_publishes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let gw = functions::Gateway::start("e2e-fnqos", d);
    let module = wasm_file(d, "echo");
    let manifest = file(d, "echo.toml", echo_manifest("fq"));
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", gw.log());
    for v5 in [false, true] {
        let mut sub = Sub::connect(v5, gw.addr, &format!("fq-sub-{v5}"), "out/#", 2).await;
        publish(false, gw.addr, "fq-pub", "tests/in/x", 2, false).await;
        assert_eq!(
            sub.collect(1).await,
            vec![("out/fq".to_owned(), 0, false)],
            "v5 {v5}"
        );
    }
}

fn echo_manifest(tag: &str) -> String {
    format!(
        "name = \"echo\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"tests/in/#\"]\n\
         [publish]\nallow = [\"out/#\"]\n[config]\nout = \"out/{tag}\"\n"
    )
}

// ---------------------------------------------------------------- control plane

/// Control requests (a deploy carries the module and the manifest's
/// `[config]` values) and their replies are sent to admins only, whatever
/// a client's subscribe ACL allows: with the default anonymous ACL
/// (`subscribe = ["#"]`) and an admin user, an anonymous subscriber to `#`
/// or `perch/#` gets no byte of a deploy, while statuses stay readable and
/// the admin deploys with `perch fn deploy` as before.
#[tokio::test]
async fn control_requests_and_replies_reach_admins_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = perch_with_stdin(&["passwd"], "ops-pw\n");
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let gw = functions::Gateway::start_with(
        "e2e-secret",
        d,
        &format!("[[broker.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nadmin = true\n"),
    )
    .with_admin("ops", "ops-pw");
    let readers = [
        Reader::connect(gw.addr, "anon-all", "#", None).await,
        Reader::connect(gw.addr, "anon-perch", "perch/#", None).await,
        // An admin may subscribe within perch/+/fn/# without a subscribe list.
        Reader::connect(
            gw.addr,
            "ops-reader",
            "perch/+/fn/#",
            Some(("ops", "ops-pw")),
        )
        .await,
    ];
    let mut anon5 = Sub::connect(true, gw.addr, "anon-perch5", "perch/#", 1).await;

    let secret = "api-key-7f3a9c";
    let module = wasm_file(d, "echo");
    let manifest = file(d, "echo.toml", echo_manifest(secret));
    let (ok, out) = gw.perch_fn(&[
        "deploy",
        module.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
        "--user",
        "ops",
        "--password",
        "ops-pw",
    ]);
    assert!(ok, "{out}\n{}", gw.log());

    let deploy = "perch/e2e-secret/fn/deploy";
    let status = "perch/e2e-secret/fn/echo/status";
    let [all, perch, ops] = readers;
    for mut anon in [all, perch] {
        let got = anon.collect().await;
        let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
        assert!(
            topics.contains(&status),
            "{}: statuses stay readable: {topics:?}",
            anon.id
        );
        for (topic, payload) in &got {
            assert!(!topic.starts_with(deploy), "{}: got {topic}", anon.id);
            assert!(
                !contains(payload, secret.as_bytes()) && !contains(payload, b"\0asm"),
                "{}: {topic} carried the manifest or module",
                anon.id
            );
        }
    }
    let got = anon5.collect(1).await;
    assert!(
        got.iter().all(|(t, _, _)| !t.starts_with(deploy)),
        "{got:?}"
    );
    assert!(got.iter().any(|(t, _, _)| t == status), "{got:?}");

    let mut ops = ops;
    let got = ops.collect().await;
    let request = got.iter().find(|(t, _)| t == deploy);
    let request = request.expect("the admin is sent the deploy request");
    assert!(contains(&request.1, secret.as_bytes()));
    assert!(
        got.iter().any(|(t, _)| t == &format!("{deploy}/reply")),
        "the admin is sent the reply"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A 3.1.1 client that records every message on its subscription, with
/// room for a deploy bundle.
struct Reader {
    id: String,
    el: EventLoop,
    _c: AsyncClient,
}

impl Reader {
    async fn connect(
        addr: SocketAddr,
        id: &str,
        filter: &str,
        login: Option<(&str, &str)>,
    ) -> Reader {
        let mut o = mqtt::options(id, addr);
        o.set_max_packet_size(8 << 20, 8 << 20);
        if let Some((user, pw)) = login {
            o.set_credentials(user, pw);
        }
        let (c, mut el) = mqtt::connect(o).await.unwrap();
        subscribe_v4(&c, &mut el, filter, 1).await;
        Reader {
            id: id.to_owned(),
            el,
            _c: c,
        }
    }

    /// What arrived so far, until nothing more does for a second.
    async fn collect(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut got = Vec::new();
        while let Some(p) = mqtt::next_publish(&mut self.el, Duration::from_secs(1)).await {
            got.push((p.topic, p.payload.to_vec()));
        }
        got
    }
}

// ---------------------------------------------------------------- No Local

/// 5.0 §3.8.3.1 (MQTT-3.8.3-3): with No Local set, the server does not
/// send a client its own publishes through that subscription; others'
/// publishes still arrive, and so do its own through a subscription
/// without the option. rumqttd alone ignores the option.
#[tokio::test]
async fn v5_no_local() {
    use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let (me, mut me_el, _) = v5::connect(v5::options("nl-me", addr)).await;
    let no_local = |path: &str, q: v5::QoS| Filter {
        path: path.to_owned(),
        qos: q,
        nolocal: true,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    };
    me.subscribe_many([
        no_local("nl/#", v5::QoS::AtLeastOnce),
        no_local("nl0/#", v5::QoS::AtMostOnce),
    ])
    .await
    .unwrap();
    wait_suback(&mut me_el).await;
    let mut other = Sub::connect(true, addr, "nl-other", "nl/#", 1).await;

    for (topic, q) in [
        ("nl0/mine", v5::QoS::AtMostOnce),
        ("nl/mine", v5::QoS::AtLeastOnce),
    ] {
        me.publish(topic, q, false, "own").await.unwrap();
    }
    own_publish_acked(&mut me_el).await;
    assert_eq!(
        other.collect(1).await,
        vec![("nl/mine".to_owned(), 1, false)],
        "others get it"
    );
    publish(true, addr, "nl-third", "nl/theirs", 1, false).await;
    let got = v5::next_publish(&mut me_el, WAIT)
        .await
        .expect("another's publish");
    assert_eq!(&got.topic[..], b"nl/theirs", "own publishes were withheld");
    assert!(v5::next_publish(&mut me_el, QUIET).await.is_none());

    // An overlapping subscription without No Local gets one copy.
    v5::subscribe(&me, &mut me_el, "nl/+", v5::QoS::AtLeastOnce, None).await;
    me.publish("nl/again", v5::QoS::AtLeastOnce, false, "own")
        .await
        .unwrap();
    let got = v5::next_publish(&mut me_el, WAIT).await.expect("one copy");
    assert_eq!(&got.topic[..], b"nl/again");
    assert!(
        v5::next_publish(&mut me_el, QUIET).await.is_none(),
        "only one copy: the No Local one was withheld"
    );
}

/// No Local stays with the session: a client that resumes its session
/// (SessionPresent=1, its subscription kept by the broker), also after a
/// gateway restart, is still not sent its own publishes.
#[tokio::test]
async fn v5_no_local_holds_for_a_resumed_session_and_after_a_restart() {
    use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let mut gw = Gateway::start(&["--data-dir", data]);
    let options = |addr| {
        let mut o = v5::options("nl-keep", addr);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(600));
        o
    };
    let (me, mut el, _) = v5::connect(options(gw.addr())).await;
    me.subscribe_many([Filter {
        path: "nlk/#".to_owned(),
        qos: v5::QoS::AtLeastOnce,
        nolocal: true,
        preserve_retain: false,
        retain_forward_rule: RetainForwardRule::OnEverySubscribe,
    }])
    .await
    .unwrap();
    wait_suback(&mut el).await;
    me.disconnect().await.unwrap();
    drain_v5(&mut el).await;
    for round in ["resumed", "restored"] {
        if round == "restored" {
            // The session store commits within milliseconds.
            tokio::time::sleep(Duration::from_millis(500)).await;
            gw.signal("TERM");
            gw.wait(WAIT).expect("perch stops");
            gw = Gateway::start(&["--data-dir", data]);
        }
        let (me, mut el, ack) = v5::connect(options(gw.addr())).await;
        assert!(ack.session_present, "{round}: SessionPresent=1");
        me.publish("nlk/mine", v5::QoS::AtLeastOnce, false, "own")
            .await
            .unwrap();
        own_publish_acked(&mut el).await;
        publish(true, gw.addr(), "nlk-other", "nlk/theirs", 1, false).await;
        let got = v5::next_publish(&mut el, WAIT).await.expect("another's");
        assert_eq!(&got.topic[..], b"nlk/theirs", "{round}: own one withheld");
        me.disconnect().await.unwrap();
        drain_v5(&mut el).await;
    }
}

/// Drives `el` until the broker acknowledged the client's QoS 1 publish;
/// a message sent to the client meanwhile fails the test (at QoS 0 its own
/// earlier publish would have come back by then).
async fn own_publish_acked(el: &mut v5::EventLoop) {
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("no PUBACK")
        {
            Ok(v5::Event::Incoming(v5::Packet::PubAck(_))) => return,
            Ok(v5::Event::Incoming(v5::Packet::Publish(p))) => {
                panic!("sent its own publish: {:?}", p.topic)
            }
            Ok(_) => continue,
            Err(e) => panic!("publish failed: {e:?}"),
        }
    }
}

async fn wait_suback(el: &mut v5::EventLoop) {
    loop {
        match tokio::time::timeout(WAIT, el.poll())
            .await
            .expect("no SUBACK")
        {
            Ok(v5::Event::Incoming(v5::Packet::SubAck(_))) => return,
            Ok(_) => continue,
            Err(e) => panic!("subscribe failed: {e:?}"),
        }
    }
}

// ---------------------------------------------------------------- DISCONNECT

/// A raw CONNECT: 3.1.1 or 5.0, clean or not, an optional 5.0 Session
/// Expiry Interval, an optional will (topic, QoS).
struct RawConnect {
    v5: bool,
    id: String,
    clean: bool,
    expiry: Option<u32>,
    will: Option<(String, u8)>,
    /// More 5.0 CONNECT properties, encoded.
    props: Vec<u8>,
}

fn raw_connect(v5: bool, id: &str, clean: bool, expiry: Option<u32>) -> RawConnect {
    RawConnect {
        v5,
        id: id.to_owned(),
        clean,
        expiry,
        will: None,
        props: Vec::new(),
    }
}

impl RawConnect {
    fn with_will(mut self, topic: &str, q: u8) -> RawConnect {
        self.will = Some((topic.to_owned(), q));
        self
    }

    fn with_props(mut self, props: &[u8]) -> RawConnect {
        self.props = props.to_vec();
        self
    }
}

impl crate::util::raw::Encode for RawConnect {
    fn encode(&self) -> Vec<u8> {
        let level = if self.v5 { 5 } else { 4 };
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level];
        let mut flags = u8::from(self.clean) << 1;
        if let Some((_, q)) = &self.will {
            flags |= 0x04 | (q << 3);
        }
        body.push(flags);
        body.extend(30u16.to_be_bytes());
        if self.v5 {
            let mut props: Vec<u8> = match self.expiry {
                Some(s) => [&[0x11][..], &s.to_be_bytes()].concat(),
                None => Vec::new(),
            };
            props.extend(&self.props);
            varint(&mut body, props.len());
            body.extend(props);
        }
        string(&mut body, self.id.as_bytes());
        if let Some((topic, _)) = &self.will {
            if self.v5 {
                body.push(0);
            }
            string(&mut body, topic.as_bytes());
            string(&mut body, b"gone");
        }
        frame(0x10, &body)
    }
}

/// A 5.0 DISCONNECT, reason 0, setting the Session Expiry Interval.
fn disconnect_with_expiry(s: u32) -> Vec<u8> {
    let mut body = vec![0, 5, 0x11];
    body.extend(s.to_be_bytes());
    frame(0xe0, &body)
}

/// Connects `c`, subscribes to `se/#` (so there is a session to find) and
/// returns the connection.
async fn connect_and_subscribe(addr: SocketAddr, c: &RawConnect) -> Raw {
    let (mut raw, ack) = Raw::connect(addr, c).await;
    assert_eq!(ack.1[1], 0, "{}: accepted", c.id);
    let mut body = 1u16.to_be_bytes().to_vec();
    body.push(0);
    string(&mut body, b"se/#");
    body.push(1);
    raw.send(&frame(0x82, &body)).await;
    assert_eq!(raw.read(WAIT).await.unwrap().0, 0x90, "SUBACK");
    raw
}

/// Whether a CONNECT to `c`'s session finds it (SessionPresent).
async fn session_present(addr: SocketAddr, c: &RawConnect) -> bool {
    let (_raw, ack) = Raw::connect(addr, c).await;
    ack.1[0] & 1 == 1
}

/// 5.0 §3.14.2.2.2: a DISCONNECT may set the Session Expiry Interval, which
/// then applies instead of the CONNECT's: 0 ends the session with the
/// connection, a longer one keeps it past the CONNECT's expiry.
#[tokio::test]
async fn v5_session_expiry_set_in_disconnect_applies() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    // CONNECT 60 s, DISCONNECT 0: gone at once.
    let c = raw_connect(true, "sx-end", false, Some(60));
    let mut raw = connect_and_subscribe(addr, &c).await;
    raw.send(&disconnect_with_expiry(0)).await;
    assert!(
        raw.closed_within(WAIT).await.is_ok(),
        "closed after DISCONNECT"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !session_present(addr, &c).await,
        "expiry 0 set in DISCONNECT"
    );

    // CONNECT 1 s, DISCONNECT 60 s: still there after 2.5 s.
    let c = raw_connect(true, "sx-longer", false, Some(1));
    let mut raw = connect_and_subscribe(addr, &c).await;
    raw.send(&disconnect_with_expiry(60)).await;
    assert!(raw.closed_within(WAIT).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(
        session_present(addr, &c).await,
        "expiry 60 set in DISCONNECT"
    );

    // And a DISCONNECT without the property keeps the CONNECT's (1 s).
    let c = raw_connect(true, "sx-kept", false, Some(1));
    let mut raw = connect_and_subscribe(addr, &c).await;
    raw.send(&frame(0xe0, &[0, 0])).await;
    assert!(raw.closed_within(WAIT).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!session_present(addr, &c).await, "the CONNECT's 1 s");
}

/// 5.0 §3.14.2.2.2: after a CONNECT with expiry 0 (or none), a DISCONNECT
/// that sets a non-zero expiry is a protocol error, not a valid DISCONNECT:
/// the server sends DISCONNECT 0x82 and closes, the will is published (it
/// was not a normal disconnect) and the session ends with the connection.
#[tokio::test]
async fn v5_a_disconnect_setting_an_expiry_after_none_is_a_protocol_error() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let mut watch = Sub::connect(true, addr, "sx-watch", "sxw/#", 1).await;
    let c = raw_connect(true, "sx-none", false, None).with_will("sxw/none", 1);
    let mut raw = connect_and_subscribe(addr, &c).await;
    raw.send(&disconnect_with_expiry(5)).await;
    let seen = raw.closed_within(WAIT).await.expect("closed");
    assert_eq!(seen.len(), 1, "DISCONNECT 0x82 first: {seen:?}");
    assert_eq!((seen[0].0, seen[0].1[0]), (0xe0, 0x82), "{seen:?}");
    assert!(
        String::from_utf8_lossy(&seen[0].1).ends_with("protocol error"),
        "with its Reason String: {seen:?}"
    );
    assert_eq!(
        watch.collect(1).await,
        vec![("sxw/none".to_owned(), 1, false)],
        "the will"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = raw_connect(true, "sx-none", false, None);
    assert!(
        !session_present(addr, &c).await,
        "ended with the connection"
    );
}

// ---------------------------------------------------------------- retain options

/// A 5.0 subscription to `filter` at QoS 1 with Retain As Published and
/// Retain Handling `rh`; waits for the SUBACK.
async fn subscribe_retain(
    c: &v5::AsyncClient,
    el: &mut v5::EventLoop,
    filter: &str,
    rap: bool,
    rh: u8,
) {
    use rumqttc::v5::mqttbytes::v5::{Filter, RetainForwardRule};
    let retain_forward_rule = match rh {
        0 => RetainForwardRule::OnEverySubscribe,
        1 => RetainForwardRule::OnNewSubscribe,
        _ => RetainForwardRule::Never,
    };
    c.subscribe_many([Filter {
        path: filter.to_owned(),
        qos: v5::QoS::AtLeastOnce,
        nolocal: false,
        preserve_retain: rap,
        retain_forward_rule,
    }])
    .await
    .unwrap();
    wait_suback(el).await;
}

/// 5.0 §3.8.3.1 (Retain As Published, MQTT-3.3.1-12/13): a live message
/// published with RETAIN=1 keeps the flag for a subscription with the
/// option and loses it for one without; a message published without it
/// never has it. rumqttd alone clears it for everyone.
#[tokio::test]
async fn v5_retain_as_published() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let (kept, mut kept_el, _) = v5::connect(v5::options("rap-kept", addr)).await;
    subscribe_retain(&kept, &mut kept_el, "rap/#", true, 0).await;
    let mut plain = Sub::connect(true, addr, "rap-plain", "rap/#", 1).await;
    publish(true, addr, "rap-pub", "rap/retained", 1, true).await;
    publish(false, addr, "rap-pub4", "rap/retained4", 1, true).await;
    publish(true, addr, "rap-pub", "rap/live", 1, false).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = v5::next_publish(&mut kept_el, WAIT)
            .await
            .expect("a publish");
        got.push((String::from_utf8(p.topic.to_vec()).unwrap(), p.retain));
    }
    got.sort();
    let want = [
        ("rap/live", false),
        ("rap/retained", true),
        ("rap/retained4", true),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(t, r)| (t.to_string(), *r)).collect();
    assert_eq!(got, want, "with Retain As Published");
    assert_eq!(
        plain.collect(3).await,
        vec![
            ("rap/live".to_owned(), 1, false),
            ("rap/retained".to_owned(), 1, false),
            ("rap/retained4".to_owned(), 1, false),
        ],
        "without it"
    );
}

/// 5.0 §3.8.3.1 (Retain Handling, MQTT-3.3.1-9/10): 0 and 1 send the
/// retained messages when the subscription is made, 2 never does (live
/// messages still arrive); 1 does not send them again for a subscription
/// that already exists.
#[tokio::test]
async fn v5_retain_handling() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    publish(true, addr, "rh-pub", "rh/a", 1, true).await;
    for rh in 0..=2u8 {
        let (c, mut el, _) = v5::connect(v5::options(&format!("rh-{rh}"), addr)).await;
        subscribe_retain(&c, &mut el, "rh/#", false, rh).await;
        let first = v5::next_publish(&mut el, QUIET).await;
        if rh == 2 {
            assert!(first.is_none(), "Retain Handling 2: no retained message");
        } else {
            let p = first.unwrap_or_else(|| panic!("Retain Handling {rh}: the retained one"));
            assert!(p.retain && &p.topic[..] == b"rh/a", "Retain Handling {rh}");
        }
        if rh == 1 {
            subscribe_retain(&c, &mut el, "rh/#", false, 1).await;
            assert!(
                v5::next_publish(&mut el, QUIET).await.is_none(),
                "Retain Handling 1: not again for an existing subscription"
            );
        }
        publish(true, addr, "rh-pub", "rh/live", 1, false).await;
        let p = v5::next_publish(&mut el, WAIT)
            .await
            .expect("live messages");
        assert_eq!(
            (&p.topic[..], p.retain),
            (&b"rh/live"[..], false),
            "rh {rh}"
        );
    }
}

/// Deviation from 5.0 §3.8.3.1 (Retain Handling 0, MQTT-3.3.1-9): a
/// SUBSCRIBE to a filter the client already has should be sent the
/// retained messages again; rumqttd sends them only for a new
/// subscription, so perch behaves as Retain Handling 1 there.
#[tokio::test]
async fn deviation_v5_retain_handling_0_sends_nothing_again_on_a_repeated_subscribe() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    publish(true, addr, "rh0-pub", "rh0/a", 1, true).await;
    let (c, mut el, _) = v5::connect(v5::options("rh0", addr)).await;
    subscribe_retain(&c, &mut el, "rh0/#", false, 0).await;
    assert!(
        v5::next_publish(&mut el, WAIT).await.is_some(),
        "first time"
    );
    subscribe_retain(&c, &mut el, "rh0/#", false, 0).await;
    assert!(
        v5::next_publish(&mut el, QUIET).await.is_none(),
        "not sent again (the spec says it should be)"
    );
}

// ---------------------------------------------------------------- properties

/// 5.0 §3.3.2.3.2 (Payload Format Indicator), §3.3.2.3.9 (Content Type),
/// §3.3.2.3.7 (User Properties, "in the same order"): forwarded unchanged
/// to every subscriber, at every QoS, live and retained; a 3.1.1 publish
/// reaches a 5.0 subscriber with none of them.
#[tokio::test]
async fn v5_properties_pass_through_unchanged() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    let props = v5::PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        user_properties: vec![
            ("b".into(), "2".into()),
            ("a".into(), "1".into()),
            ("b".into(), "3".into()),
        ],
        ..Default::default()
    };
    let mut subs = Vec::new();
    for s in 0..=2u8 {
        let (c, mut el, _) = v5::connect(v5::options(&format!("pp-sub{s}"), addr)).await;
        v5::subscribe(&c, &mut el, "pp/#", qos5(s), None).await;
        subs.push((c, el));
    }
    let (p, mut pel, _) = v5::connect(v5::options("pp-pub", addr)).await;
    for (q, indicator) in [(0u8, Some(1)), (1, Some(0)), (2, None)] {
        let props = v5::PublishProperties {
            payload_format_indicator: indicator,
            ..props.clone()
        };
        p.publish_with_properties(format!("pp/{q}"), qos5(q), q == 2, "{}", props)
            .await
            .unwrap();
        if q > 0 {
            v5::wait_ack(&mut pel).await;
        }
    }
    publish(false, addr, "pp-v4", "pp/v4", 1, false).await;
    let check = |p: &v5::Publish, who: &str| {
        let topic = String::from_utf8(p.topic.to_vec()).unwrap();
        let got = p.properties.clone().unwrap_or_default();
        if topic == "pp/v4" {
            assert_eq!(got.payload_format_indicator, None, "{who}: {topic}");
            assert!(got.user_properties.is_empty() && got.content_type.is_none());
            return;
        }
        let indicator = match topic.as_str() {
            "pp/0" => Some(1),
            "pp/1" => Some(0),
            _ => None,
        };
        assert_eq!(got.payload_format_indicator, indicator, "{who}: {topic}");
        assert_eq!(got.content_type, props.content_type, "{who}: {topic}");
        assert_eq!(got.user_properties, props.user_properties, "{who}: {topic}");
    };
    for (s, (_, el)) in subs.iter_mut().enumerate() {
        for _ in 0..4 {
            let p = v5::next_publish(el, WAIT).await.expect("a publish");
            check(&p, &format!("subscriber at QoS {s}"));
        }
    }
    // The retained one, sent on subscribe.
    let (c, mut el, _) = v5::connect(v5::options("pp-late", addr)).await;
    v5::subscribe(&c, &mut el, "pp/2", v5::QoS::ExactlyOnce, None).await;
    let p = v5::next_publish(&mut el, WAIT)
        .await
        .expect("the retained one");
    assert!(p.retain);
    check(&p, "retained");
}

/// 5.0 §3.3.2.3.2: the Payload Format Indicator is 0 or 1; a PUBLISH with
/// another value closes that client (as Mosquitto does), and others are
/// served.
#[tokio::test]
async fn v5_a_payload_format_indicator_other_than_0_or_1_closes_the_client() {
    let gw = Gateway::start(&[]);
    let (mut raw, _) = Raw::connect(gw.addr(), &raw_connect(true, "pfi-bad", true, None)).await;
    let mut body = Vec::new();
    string(&mut body, b"pfi/x");
    body.extend([2, 0x01, 0x85]);
    body.extend(b"x");
    raw.send(&frame(0x30, &body)).await;
    assert!(raw.closed_within(WAIT).await.is_ok(), "closed");
    let mut sub = Sub::connect(true, gw.addr(), "pfi-sub", "pfi/#", 1).await;
    publish(true, gw.addr(), "pfi-pub", "pfi/ok", 1, false).await;
    assert_eq!(sub.collect(1).await, vec![("pfi/ok".to_owned(), 1, false)]);
}

/// 5.0 §4.12 (MQTT-4.12.0-1): a CONNECT with an Authentication Method the
/// server does not support (perch supports none: no enhanced
/// authentication) gets CONNACK 0x8C (Bad authentication method) and the
/// connection is closed. rumqttd alone accepts it and ignores the method.
#[tokio::test]
async fn v5_an_authentication_method_is_refused_with_0x8c() {
    let gw = Gateway::start(&[]);
    let mut method = vec![0x15];
    string(&mut method, b"SCRAM-SHA-1");
    let c = raw_connect(true, "auth-method", true, None).with_props(&method);
    let (mut raw, ack) = Raw::connect(gw.addr(), &c).await;
    assert_eq!(ack.1[1], 0x8c, "CONNACK reason: {ack:?}");
    assert!(raw.closed_within(WAIT).await.is_ok(), "closed");
}

/// Deviation from 3.1.1 and 5.0 §3.8.4 (MQTT-3.8.4-3): a SUBSCRIBE to a
/// filter the client already has must replace that subscription, its QoS
/// included. rumqttd keeps the subscription it has (its data request keeps
/// the first QoS), so messages keep coming at the first QoS, lowered or
/// raised, though the SUBACK grants the new one (the other subscription
/// options do change). Subscribe at the QoS you need the first time, or
/// unsubscribe first. The same holds for 3.1.1 clients.
#[tokio::test]
async fn deviation_a_repeated_subscribe_keeps_the_first_qos() {
    let gw = Gateway::start(&[]);
    let addr = gw.addr();
    for (first, again) in [
        (v5::QoS::AtLeastOnce, v5::QoS::AtMostOnce),
        (v5::QoS::AtMostOnce, v5::QoS::AtLeastOnce),
    ] {
        let id = format!("rq{}", first as u8);
        let (c, mut el, _) = v5::connect(v5::options(&id, addr)).await;
        let filter = format!("{id}/#");
        v5::subscribe(&c, &mut el, &filter, first, None).await;
        let granted = v5::subscribe(&c, &mut el, &filter, again, None).await;
        assert_eq!(granted, vec![v5::SubscribeReasonCode::Success(again)]);
        publish(
            true,
            addr,
            &format!("{id}-pub"),
            &format!("{id}/x"),
            1,
            false,
        )
        .await;
        let got = v5::next_publish(&mut el, WAIT).await.expect("delivered");
        assert_eq!(
            got.qos, first,
            "the first QoS stays (the spec says {again:?})"
        );
    }
}
