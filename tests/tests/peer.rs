//! MQTT 5 side by side: the same feature checks, driven by a real rumqttc
//! v5 client, against perch and against a real Mosquitto started beside it.
//! perch must pass every check Mosquitto passes, except the deviations
//! named in [`PERCH_DEVIATIONS`] (each documented in docs/broker.md); a
//! deviation that perch starts passing fails the test too, so the list
//! stays true. The table each run prints is the one in docs/broker.md
//! ("Side by side with Mosquitto").

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{
    Filter, LastWill, LastWillProperties, PublishProperties, RetainForwardRule, SubscribeProperties,
};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, EventLoop};

use crate::conformance::v5;
use crate::store_forward::Mosquitto;
use crate::util::{free_port, Gateway};

/// How long to wait for something that must not arrive.
const QUIET: Duration = Duration::from_millis(700);
/// How long to wait for something that must arrive.
const WAIT: Duration = Duration::from_secs(5);

type Outcome = Result<(), String>;
type Check = fn(SocketAddr) -> Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// The checks, by the name docs/broker.md's table uses.
const CHECKS: &[(&str, Check)] = &[
    ("delivery QoS is min(publish, subscription)", |a| {
        Box::pin(delivery_qos(a))
    }),
    ("a repeated SUBSCRIBE replaces the QoS", |a| {
        Box::pin(resubscribe_qos(a))
    }),
    ("No Local", |a| Box::pin(no_local(a))),
    ("Retain As Published", |a| Box::pin(retain_as_published(a))),
    ("Retain Handling 0, new subscription", |a| {
        Box::pin(retain_handling(a, RetainForwardRule::OnEverySubscribe, 1))
    }),
    ("Retain Handling 1", |a| {
        Box::pin(retain_handling(a, RetainForwardRule::OnNewSubscribe, 1))
    }),
    ("Retain Handling 2", |a| {
        Box::pin(retain_handling(a, RetainForwardRule::Never, 0))
    }),
    ("Retain Handling 0, repeated subscription", |a| {
        Box::pin(retain_handling_0_again(a))
    }),
    ("Message Expiry Interval", |a| Box::pin(message_expiry(a))),
    ("User Properties, in order", |a| {
        Box::pin(user_properties(a))
    }),
    ("Response Topic, Correlation Data", |a| {
        Box::pin(request_response(a))
    }),
    ("Payload Format Indicator, Content Type", |a| {
        Box::pin(format_and_content_type(a))
    }),
    ("Subscription Identifiers", |a| {
        Box::pin(subscription_identifiers(a))
    }),
    ("Shared subscriptions", |a| {
        Box::pin(shared_subscriptions(a))
    }),
    ("Session Expiry Interval (CONNECT)", |a| {
        Box::pin(session_expiry(a))
    }),
    ("Assigned Client Identifier", |a| Box::pin(assigned_id(a))),
    ("Will Delay Interval", |a| Box::pin(will_delay(a))),
    ("Maximum Packet Size told in CONNACK", |a| {
        Box::pin(max_packet_size_told(a))
    }),
];

/// Checks Mosquitto passes and perch does not, each a deviation documented
/// in docs/broker.md with its reason.
const PERCH_DEVIATIONS: &[&str] = &[
    "Retain Handling 0, repeated subscription",
    "a repeated SUBSCRIBE replaces the QoS",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perch_passes_every_mqtt5_check_mosquitto_passes() {
    let gw = Gateway::start(&[]);
    let mosquitto = Mosquitto::start(free_port(), tempfile::tempdir().unwrap());
    let (perch, peer) = tokio::join!(run_all(gw.addr()), run_all(mosquitto.addr()));
    let mut table = String::from("| check | perch | Mosquitto |\n|---|---|---|\n");
    let mut wrong = Vec::new();
    for (((name, _), p), m) in CHECKS.iter().zip(&perch).zip(&peer) {
        let mark = |r: &Outcome| match r {
            Ok(()) => "pass".to_owned(),
            Err(e) => format!("fail: {e}"),
        };
        table.push_str(&format!("| {name} | {} | {} |\n", mark(p), mark(m)));
        let deviation = PERCH_DEVIATIONS.contains(name);
        match (p.is_ok(), m.is_ok(), deviation) {
            (false, true, false) => wrong.push(format!("perch fails {name:?}: {}", mark(p))),
            (true, _, true) => wrong.push(format!(
                "perch now passes {name:?}: remove it from PERCH_DEVIATIONS and from the \
                 deviations in docs/broker.md"
            )),
            (false, false, true) => wrong.push(format!(
                "{name:?} is listed as a deviation but Mosquitto fails it too: {}",
                mark(m)
            )),
            _ => {}
        }
    }
    println!("{table}");
    assert!(wrong.is_empty(), "{}\n\n{table}", wrong.join("\n"));
}

/// Runs every check against `addr`, one after the other; a check that
/// panics (a helper's bounded wait ran out) counts as failed.
async fn run_all(addr: SocketAddr) -> Vec<Outcome> {
    let mut out = Vec::new();
    for (name, check) in CHECKS {
        let start = Instant::now();
        let outcome = match tokio::spawn(check(addr)).await {
            Ok(r) => r,
            Err(e) => Err(format!("panicked: {e}")),
        };
        eprintln!("{addr}: {name}: {outcome:?} in {:?}", start.elapsed());
        out.push(outcome);
    }
    out
}

/// A connected v5 client whose event loop runs in the background, handing
/// every incoming PUBLISH to the returned receiver.
async fn client(
    addr: SocketAddr,
    id: &str,
    opts: impl FnOnce(&mut v5::MqttOptions),
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<v5::Publish>,
) {
    let mut o = v5::options(id, addr);
    opts(&mut o);
    let (c, el, _) = v5::connect(o).await;
    (c, pump(el))
}

fn pump(mut el: EventLoop) -> tokio::sync::mpsc::UnboundedReceiver<v5::Publish> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = el.poll().await {
            if let v5::Event::Incoming(v5::Packet::Publish(p)) = event {
                if tx.send(p).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn next(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<v5::Publish>,
    wait: Duration,
) -> Option<v5::Publish> {
    tokio::time::timeout(wait, rx.recv()).await.ok().flatten()
}

async fn sub(c: &AsyncClient, filter: Filter, props: Option<SubscribeProperties>) {
    match props {
        Some(p) => c.subscribe_many_with_properties([filter], p).await,
        None => c.subscribe_many([filter]).await,
    }
    .unwrap();
    // The SUBACK comes on the pumped loop; give the broker time to install it.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

async fn publish(c: &AsyncClient, topic: &str, qos: QoS, retain: bool, props: PublishProperties) {
    c.publish_with_properties(topic, qos, retain, "x", props)
        .await
        .unwrap();
}

fn expect(ok: bool, what: impl FnOnce() -> String) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

async fn delivery_qos(addr: SocketAddr) -> Outcome {
    let (s, mut rx) = client(addr, "pq-sub", |_| {}).await;
    sub(&s, filter("pq/#", QoS::ExactlyOnce), None).await;
    let (p, _prx) = client(addr, "pq-pub", |_| {}).await;
    let mut got = Vec::new();
    for (topic, q) in [("pq/0", QoS::AtMostOnce), ("pq/1", QoS::AtLeastOnce)] {
        publish(&p, topic, q, false, PublishProperties::default()).await;
        let m = next(&mut rx, WAIT).await.ok_or("not delivered")?;
        got.push(m.qos);
    }
    expect(got == [QoS::AtMostOnce, QoS::AtLeastOnce], || {
        format!("delivered at {got:?} to a QoS 2 subscription")
    })
}

async fn resubscribe_qos(addr: SocketAddr) -> Outcome {
    let (s, mut rx) = client(addr, "prq-sub", |_| {}).await;
    sub(&s, filter("prq/#", QoS::AtMostOnce), None).await;
    sub(&s, filter("prq/#", QoS::AtLeastOnce), None).await;
    let (p, _prx) = client(addr, "prq-pub", |_| {}).await;
    publish(&p, "prq/x", QoS::AtLeastOnce, false, Default::default()).await;
    let m = next(&mut rx, WAIT).await.ok_or("not delivered")?;
    expect(m.qos == QoS::AtLeastOnce, || {
        format!("delivered at {:?} after re-subscribing at QoS 1", m.qos)
    })
}

async fn no_local(addr: SocketAddr) -> Outcome {
    let (me, mut rx) = client(addr, "pnl", |_| {}).await;
    let mut f = filter("pnl/#", QoS::AtLeastOnce);
    f.nolocal = true;
    sub(&me, f, None).await;
    publish(&me, "pnl/own", QoS::AtLeastOnce, false, Default::default()).await;
    let (other, _orx) = client(addr, "pnl-other", |_| {}).await;
    publish(
        &other,
        "pnl/theirs",
        QoS::AtLeastOnce,
        false,
        Default::default(),
    )
    .await;
    let m = next(&mut rx, WAIT)
        .await
        .ok_or("another's publish not delivered")?;
    expect(&m.topic[..] == b"pnl/theirs", || {
        format!("own publish delivered: {:?}", m.topic)
    })
}

async fn retain_as_published(addr: SocketAddr) -> Outcome {
    let (s, mut rx) = client(addr, "prap", |_| {}).await;
    let mut f = filter("prap/#", QoS::AtLeastOnce);
    f.preserve_retain = true;
    sub(&s, f, None).await;
    let (p, _prx) = client(addr, "prap-pub", |_| {}).await;
    publish(&p, "prap/t", QoS::AtLeastOnce, true, Default::default()).await;
    let m = next(&mut rx, WAIT).await.ok_or("not delivered")?;
    expect(m.retain, || "RETAIN cleared on a live message".to_owned())
}

async fn retain_handling(addr: SocketAddr, rule: RetainForwardRule, want: usize) -> Outcome {
    let tag = match rule {
        RetainForwardRule::OnEverySubscribe => "prh0",
        RetainForwardRule::OnNewSubscribe => "prh1",
        RetainForwardRule::Never => "prh2",
    };
    let (p, _prx) = client(addr, &format!("{tag}-pub"), |_| {}).await;
    publish(
        &p,
        &format!("{tag}/t"),
        QoS::AtLeastOnce,
        true,
        Default::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, mut rx) = client(addr, &format!("{tag}-sub"), |_| {}).await;
    let mut f = filter(&format!("{tag}/#"), QoS::AtLeastOnce);
    f.retain_forward_rule = rule;
    sub(&s, f, None).await;
    let mut got = 0;
    while next(&mut rx, QUIET).await.is_some() {
        got += 1;
    }
    expect(got == want, || {
        format!("{got} retained messages sent, {want} expected")
    })
}

async fn retain_handling_0_again(addr: SocketAddr) -> Outcome {
    let (p, _prx) = client(addr, "prh0a-pub", |_| {}).await;
    publish(&p, "prh0a/t", QoS::AtLeastOnce, true, Default::default()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (s, mut rx) = client(addr, "prh0a-sub", |_| {}).await;
    sub(&s, filter("prh0a/#", QoS::AtLeastOnce), None).await;
    next(&mut rx, WAIT)
        .await
        .ok_or("no retained message on the first SUBSCRIBE")?;
    sub(&s, filter("prh0a/#", QoS::AtLeastOnce), None).await;
    next(&mut rx, WAIT)
        .await
        .map(|_| ())
        .ok_or_else(|| "no retained message on the repeated SUBSCRIBE".to_owned())
}

async fn message_expiry(addr: SocketAddr) -> Outcome {
    let (p, _prx) = client(addr, "pexp-pub", |_| {}).await;
    let expiring = |s| PublishProperties {
        message_expiry_interval: Some(s),
        ..Default::default()
    };
    publish(&p, "pexp/short", QoS::AtLeastOnce, true, expiring(1)).await;
    publish(&p, "pexp/long", QoS::AtLeastOnce, true, expiring(600)).await;
    tokio::time::sleep(Duration::from_millis(2_200)).await;
    let (s, mut rx) = client(addr, "pexp-sub", |_| {}).await;
    sub(&s, filter("pexp/#", QoS::AtLeastOnce), None).await;
    let m = next(&mut rx, WAIT)
        .await
        .ok_or("the unexpired one not sent")?;
    let left = m.properties.and_then(|p| p.message_expiry_interval);
    if &m.topic[..] != b"pexp/long" || !left.is_some_and(|l| (590..600).contains(&l)) {
        return Err(format!("got {:?} with expiry {left:?}", m.topic));
    }
    expect(next(&mut rx, QUIET).await.is_none(), || {
        "the expired one was sent".to_owned()
    })
}

/// Publishes with `props` and returns the properties the subscriber got.
async fn round_trip(
    addr: SocketAddr,
    tag: &str,
    props: PublishProperties,
) -> Result<PublishProperties, String> {
    let (s, mut rx) = client(addr, &format!("{tag}-sub"), |_| {}).await;
    sub(&s, filter(&format!("{tag}/#"), QoS::AtLeastOnce), None).await;
    let (p, _prx) = client(addr, &format!("{tag}-pub"), |_| {}).await;
    publish(&p, &format!("{tag}/t"), QoS::AtLeastOnce, false, props).await;
    let m = next(&mut rx, WAIT).await.ok_or("not delivered")?;
    Ok(m.properties.unwrap_or_default())
}

async fn user_properties(addr: SocketAddr) -> Outcome {
    let sent: Vec<(String, String)> = [("b", "2"), ("a", "1"), ("b", "3")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let props = PublishProperties {
        user_properties: sent.clone(),
        ..Default::default()
    };
    let got = round_trip(addr, "pup", props).await?.user_properties;
    expect(got == sent, || format!("got {got:?}"))
}

async fn request_response(addr: SocketAddr) -> Outcome {
    let props = PublishProperties {
        response_topic: Some("prr/reply".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"\x00\x01corr")),
        ..Default::default()
    };
    let got = round_trip(addr, "prr", props).await?;
    expect(
        got.response_topic.as_deref() == Some("prr/reply")
            && got.correlation_data.as_deref() == Some(&b"\x00\x01corr"[..]),
        || format!("got {:?} {:?}", got.response_topic, got.correlation_data),
    )
}

async fn format_and_content_type(addr: SocketAddr) -> Outcome {
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    let got = round_trip(addr, "pfc", props).await?;
    expect(
        got.payload_format_indicator == Some(1)
            && got.content_type.as_deref() == Some("application/json"),
        || {
            format!(
                "got {:?} {:?}",
                got.payload_format_indicator, got.content_type
            )
        },
    )
}

async fn subscription_identifiers(addr: SocketAddr) -> Outcome {
    let (s, mut rx) = client(addr, "psid", |_| {}).await;
    let props = SubscribeProperties {
        id: Some(42),
        user_properties: Vec::new(),
    };
    sub(&s, filter("psid/#", QoS::AtLeastOnce), Some(props)).await;
    let (p, _prx) = client(addr, "psid-pub", |_| {}).await;
    publish(&p, "psid/t", QoS::AtLeastOnce, false, Default::default()).await;
    let m = next(&mut rx, WAIT).await.ok_or("not delivered")?;
    let ids = m.properties.map(|p| p.subscription_identifiers);
    expect(ids == Some(vec![42]), || format!("got {ids:?}"))
}

async fn shared_subscriptions(addr: SocketAddr) -> Outcome {
    let (a, mut arx) = client(addr, "psh-a", |_| {}).await;
    let (b, mut brx) = client(addr, "psh-b", |_| {}).await;
    for c in [&a, &b] {
        sub(c, filter("$share/g/psh/#", QoS::AtLeastOnce), None).await;
    }
    let (p, _prx) = client(addr, "psh-pub", |_| {}).await;
    for i in 0..10 {
        let topic = format!("psh/{i}");
        publish(&p, &topic, QoS::AtLeastOnce, false, Default::default()).await;
    }
    let mut got = Vec::new();
    for rx in [&mut arx, &mut brx] {
        while let Some(m) = next(rx, QUIET).await {
            got.push(String::from_utf8_lossy(&m.topic).into_owned());
        }
    }
    got.sort();
    got.dedup();
    expect(got.len() == 10, || {
        format!(
            "{} distinct messages reached the group, 10 expected",
            got.len()
        )
    })
}

async fn session_expiry(addr: SocketAddr) -> Outcome {
    let persistent = |o: &mut v5::MqttOptions| {
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(60));
    };
    let (s, _rx) = client(addr, "pse", persistent).await;
    sub(&s, filter("pse/#", QoS::AtLeastOnce), None).await;
    s.disconnect().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (p, _prx) = client(addr, "pse-pub", |_| {}).await;
    publish(
        &p,
        "pse/queued",
        QoS::AtLeastOnce,
        false,
        Default::default(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_s, mut rx) = client(addr, "pse", persistent).await;
    let m = next(&mut rx, WAIT)
        .await
        .ok_or("the queued message was not sent")?;
    expect(&m.topic[..] == b"pse/queued", || {
        format!("got {:?}", m.topic)
    })
}

async fn assigned_id(addr: SocketAddr) -> Outcome {
    let (_c, _el, ack) = v5::connect(v5::options("", addr)).await;
    let id = ack.properties.and_then(|p| p.assigned_client_identifier);
    expect(id.is_some_and(|i| !i.is_empty()), || {
        "no identifier assigned".to_owned()
    })
}

async fn will_delay(addr: SocketAddr) -> Outcome {
    let (w, mut rx) = client(addr, "pwd-watch", |_| {}).await;
    sub(&w, filter("pwd/#", QoS::AtLeastOnce), None).await;
    let mut o = v5::options("pwd", addr);
    o.set_session_expiry_interval(Some(30));
    let props = LastWillProperties {
        delay_interval: Some(2),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    o.set_last_will(LastWill::new(
        "pwd/gone",
        "bye",
        QoS::AtLeastOnce,
        false,
        Some(props),
    ));
    let (c, el, _) = v5::connect(o).await;
    // The client vanishes: its socket closes without DISCONNECT.
    drop(el);
    drop(c);
    let start = Instant::now();
    next(&mut rx, Duration::from_secs(8))
        .await
        .ok_or("the will never came")?;
    let after = start.elapsed();
    expect(after >= Duration::from_millis(1_500), || {
        format!("the will came after {after:?}, before its 2 s delay")
    })
}

async fn max_packet_size_told(addr: SocketAddr) -> Outcome {
    let (_c, _el, ack) = v5::connect(v5::options("pmps", addr)).await;
    let max = ack.properties.and_then(|p| p.max_packet_size);
    expect(max.is_some(), || {
        "no Maximum Packet Size in the CONNACK".to_owned()
    })
}
