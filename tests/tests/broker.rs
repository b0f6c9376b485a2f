//! The embedded broker as a client sees it: round trips over both protocol
//! versions, logins refused with the right CONNACK code, ACLs, TLS.

use std::time::Duration;

use rumqttc::{ConnectReturnCode, ConnectionError, QoS, SubscribeReasonCode};

use crate::util::mqtt::{self, connect, next_publish, subscribe, wait_puback};
use crate::util::{perch_with_stdin, temp_file, Gateway};

#[tokio::test]
async fn a_message_round_trips_through_the_broker() {
    let gw = Gateway::start(&[]);
    let (sub, mut sub_el) = connect(mqtt::options("sub", gw.addr())).await.unwrap();
    assert_eq!(
        subscribe(&sub, &mut sub_el, "x/#").await,
        vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)]
    );
    let (publ, mut pub_el) = connect(mqtt::options("pub", gw.addr())).await.unwrap();
    publ.publish("x/y", QoS::AtLeastOnce, false, "hi")
        .await
        .unwrap();
    wait_puback(&mut pub_el).await;
    let got = next_publish(&mut sub_el, mqtt::WAIT)
        .await
        .expect("the message arrives");
    assert_eq!(&got.topic, "x/y");
    assert_eq!(&got.payload[..], b"hi");
}

#[tokio::test]
async fn mqtt5_clients_share_the_port_with_311_clients() {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    use rumqttc::v5::{mqttbytes::QoS as Q5, AsyncClient as C5, Event as E5, MqttOptions as O5};

    let gw = Gateway::start(&[]);
    let (sub, mut sub_el) = connect(mqtt::options("sub311", gw.addr())).await.unwrap();
    subscribe(&sub, &mut sub_el, "v5/#").await;

    let opts = O5::new("pub5", gw.addr().ip().to_string(), gw.addr().port());
    let (client, mut el) = C5::new(opts, 16);
    client
        .publish("v5/t", Q5::AtLeastOnce, false, "five")
        .await
        .unwrap();
    let acked = tokio::time::timeout(mqtt::WAIT, async {
        loop {
            if let E5::Incoming(P5::PubAck(_)) = el.poll().await.expect("v5 connection") {
                break;
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the 5.0 client got its PUBACK");
    let got = next_publish(&mut sub_el, mqtt::WAIT)
        .await
        .expect("delivered across versions");
    assert_eq!(&got.payload[..], b"five");
}

/// Keep-alive 0 means "off" in both specs (3.1.1 §3.1.2.10, 5.0 §3.1.2.10);
/// rumqttd alone closes such connections without a CONNACK. rumqttc and the
/// Mosquitto clients refuse to send 0, so the CONNECT is written by hand.
#[tokio::test]
async fn keep_alive_zero_is_accepted_in_both_versions() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gw = Gateway::start(&[]);
    let v4: &[u8] = &[
        0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 0, 0, 3, b'k', b'a', b'4',
    ];
    let v5: &[u8] = &[
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 0, 0, 0, 3, b'k', b'a', b'5',
    ];
    for (name, connect) in [("3.1.1", v4), ("5.0", v5)] {
        let mut s = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
        s.write_all(connect).await.unwrap();
        let mut ack = [0u8; 4];
        tokio::time::timeout(mqtt::WAIT, s.read_exact(&mut ack))
            .await
            .unwrap_or_else(|_| panic!("{name}: no CONNACK"))
            .unwrap_or_else(|e| panic!("{name}: connection closed without CONNACK: {e}"));
        assert_eq!(ack[0], 0x20, "{name}: CONNACK");
        assert_eq!(ack[3], 0x00, "{name}: accepted");
    }
}

/// A config with one loopback listener that requires a login, an `admin` who
/// may do anything and a `sensor` limited to its own topics.
pub(crate) fn auth_config() -> (tempfile::TempDir, std::path::PathBuf) {
    // The hash comes from the real `perch passwd`.
    let out = perch_with_stdin(&["passwd"], "s3cret\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    temp_file(
        "perch.toml",
        &format!(
            r##"
[[broker.listeners]]
name = "secure"
listen = "127.0.0.1:0"
allow_anonymous = false

[[broker.users]]
name = "admin"
password_hash = "{hash}"
publish = ["#"]
subscribe = ["#"]

[[broker.users]]
name = "sensor"
password_hash = "{hash}"
publish = ["sensors/#"]
subscribe = ["commands/+"]
"##
        ),
    )
}

#[tokio::test]
async fn a_wrong_password_gets_connack_bad_credentials() {
    let (_dir, config) = auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);

    let mut opts = mqtt::options("intruder", gw.addr());
    opts.set_credentials("admin", "wrong");
    match connect(opts).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::BadUserNamePassword)
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }

    let opts = mqtt::options("anonymous", gw.addr());
    match connect(opts).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::NotAuthorized)
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }

    let mut opts = mqtt::options("admin-1", gw.addr());
    opts.set_credentials("admin", "s3cret");
    assert!(connect(opts).await.is_ok(), "the right password logs in");
}

#[tokio::test]
async fn mqtt5_wrong_password_gets_reason_0x86() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as R5;
    use rumqttc::v5::{AsyncClient as C5, ConnectionError as CE5, MqttOptions as O5};

    let (_dir, config) = auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let mut opts = O5::new("intruder5", gw.addr().ip().to_string(), gw.addr().port());
    opts.set_credentials("admin", "wrong");
    let (_client, mut el) = C5::new(opts, 4);
    let result = tokio::time::timeout(mqtt::WAIT, el.poll())
        .await
        .expect("an answer");
    match result {
        Err(CE5::ConnectionRefused(code)) => assert_eq!(code, R5::BadUserNamePassword),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_login_does_not_take_over_the_real_clients_session() {
    let (_dir, config) = auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let mut opts = mqtt::options("victim", gw.addr());
    opts.set_credentials("admin", "s3cret");
    let (victim, mut victim_el) = connect(opts).await.unwrap();
    subscribe(&victim, &mut victim_el, "news/#").await;

    // Same client id, wrong password: refused, and must not kick the victim.
    let mut opts = mqtt::options("victim", gw.addr());
    opts.set_credentials("admin", "wrong");
    assert!(connect(opts).await.is_err());

    let mut opts = mqtt::options("publisher", gw.addr());
    opts.set_credentials("admin", "s3cret");
    let (publ, mut pub_el) = connect(opts).await.unwrap();
    publ.publish("news/1", QoS::AtLeastOnce, false, "still here")
        .await
        .unwrap();
    wait_puback(&mut pub_el).await;
    let got = next_publish(&mut victim_el, mqtt::WAIT).await;
    assert_eq!(
        got.map(|p| p.payload.to_vec()),
        Some(b"still here".to_vec())
    );
}

#[tokio::test]
async fn publishes_and_subscriptions_outside_the_acl_are_refused() {
    let (_dir, config) = auth_config();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);

    let mut opts = mqtt::options("watcher", gw.addr());
    opts.set_credentials("admin", "s3cret");
    let (watcher, mut watch_el) = connect(opts).await.unwrap();
    subscribe(&watcher, &mut watch_el, "#").await;

    let mut opts = mqtt::options("sensor-1", gw.addr());
    opts.set_credentials("sensor", "s3cret");
    let (sensor, mut sensor_el) = connect(opts).await.unwrap();

    // Denied filters fail; allowed ones are granted, in the client's order.
    sensor
        .subscribe_many([
            rumqttc::SubscribeFilter::new("commands/1".into(), QoS::AtLeastOnce),
            rumqttc::SubscribeFilter::new("secrets/#".into(), QoS::AtLeastOnce),
        ])
        .await
        .unwrap();
    let codes = loop {
        match tokio::time::timeout(mqtt::WAIT, sensor_el.poll())
            .await
            .unwrap()
            .unwrap()
        {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) => break a.return_codes,
            _ => continue,
        }
    };
    assert_eq!(
        codes,
        vec![
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure
        ]
    );
    assert_eq!(
        subscribe(&sensor, &mut sensor_el, "#").await,
        vec![SubscribeReasonCode::Failure],
        "a subscription wider than the ACL fails"
    );

    // A QoS 1 publish outside the ACL is acknowledged (MQTT-3.3.5-2) but not
    // delivered; the allowed one after it is.
    sensor
        .publish("commands/1", QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    wait_puback(&mut sensor_el).await;
    sensor
        .publish("sensors/1/t", QoS::AtLeastOnce, false, "21.5")
        .await
        .unwrap();
    wait_puback(&mut sensor_el).await;
    sensor
        .publish("alerts/x", QoS::AtMostOnce, false, "forged too")
        .await
        .unwrap();
    sensor
        .publish("sensors/1/h", QoS::AtMostOnce, false, "40")
        .await
        .unwrap();
    // QoS 0 publishes leave only when the event loop runs.
    tokio::spawn(async move { while sensor_el.poll().await.is_ok() {} });

    // The watcher's `#` also matches the gateway's own retained summary
    // (perch/<id>/status); only the sensor's publishes matter here.
    async fn next_sensor_publish(
        el: &mut rumqttc::EventLoop,
        wait: Duration,
    ) -> Option<rumqttc::Publish> {
        loop {
            let p = next_publish(el, wait).await?;
            if !p.topic.starts_with("perch/") {
                return Some(p);
            }
        }
    }
    let first = next_sensor_publish(&mut watch_el, mqtt::WAIT).await;
    let first = first.unwrap_or_else(|| panic!("allowed publish lost:\n{}", gw.log_text()));
    assert_eq!(&first.topic, "sensors/1/t");
    let second = next_sensor_publish(&mut watch_el, mqtt::WAIT).await;
    let second = second.unwrap_or_else(|| panic!("allowed publish lost:\n{}", gw.log_text()));
    assert_eq!(&second.topic, "sensors/1/h");
    let extra = next_sensor_publish(&mut watch_el, Duration::from_millis(500)).await;
    assert!(extra.is_none(), "a denied publish leaked: {extra:?}");
}

#[tokio::test]
async fn tls_clients_connect_with_the_configured_certificate() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert_path = dir.path().join("server.crt");
    let key_path = dir.path().join("server.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let config = dir.path().join("perch.toml");
    std::fs::write(
        &config,
        format!(
            "[[broker.listeners]]\nname = \"tls\"\nlisten = \"127.0.0.1:0\"\nallow_anonymous = true\n\
             tls = {{ cert_path = \"{}\", key_path = \"{}\" }}\n",
            cert_path.display(),
            key_path.display()
        ),
    )
    .unwrap();
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);

    let mut opts = rumqttc::MqttOptions::new("tls-client", "localhost", gw.listener("tls").port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: cert.cert.pem().into_bytes(),
            alpn: None,
            client_auth: None,
        },
    ));
    let (client, mut el) = connect(opts).await.expect("TLS connect");
    subscribe(&client, &mut el, "tls/#").await;
    client
        .publish("tls/t", QoS::AtLeastOnce, false, "secret")
        .await
        .unwrap();
    let got = next_publish(&mut el, mqtt::WAIT)
        .await
        .expect("round trip over TLS");
    assert_eq!(&got.payload[..], b"secret");

    // A plain-TCP client on the TLS port gets no MQTT session.
    let plain = connect(mqtt::options("plain", gw.listener("tls"))).await;
    assert!(plain.is_err(), "plain MQTT on a TLS listener must fail");

    // A client that connects and never starts its handshake does not hold
    // up the next one (rumqttd alone would wait for it forever).
    let _stalled = tokio::net::TcpStream::connect(gw.listener("tls"))
        .await
        .unwrap();
    let mut opts =
        rumqttc::MqttOptions::new("tls-client-2", "localhost", gw.listener("tls").port());
    opts.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Simple {
            ca: cert.cert.pem().into_bytes(),
            alpn: None,
            client_auth: None,
        },
    ));
    assert!(
        connect(opts).await.is_ok(),
        "a stalled handshake blocked the listener"
    );
}

/// rumqttd keeps a log per filter; unbounded, it grows with traffic until
/// the OOM killer comes (bytebeamio/rumqtt #599, #1001). With perch's segment
/// bounds, 100 MiB through one topic must not grow the process by anywhere
/// near that.
#[tokio::test]
async fn memory_stays_bounded_under_steady_traffic() {
    let (_dir, config) = temp_file(
        "perch.toml",
        "[broker]\nmax_segment_size_bytes = 65536\nmax_segment_count = 4\n\
         [[broker.listeners]]\nname = \"local\"\nlisten = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let rss_kib = || {
        let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .unwrap()
            .to_owned();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };

    // A subscriber that reads everything it is sent, so the log is consumed.
    let (sub, mut sub_el) = connect(mqtt::options("drain", gw.addr())).await.unwrap();
    subscribe(&sub, &mut sub_el, "load/#").await;
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Ok(event) = sub_el.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::Publish(_)) = event {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });

    let before = rss_kib();
    // The load is written as raw QoS 0 PUBLISH packets, so the client is
    // never the bottleneck.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut load = tokio::net::TcpStream::connect(gw.addr()).await.unwrap();
    load.write_all(&[
        0x10, 16, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 4, b'l', b'o', b'a', b'd',
    ])
    .await
    .unwrap();
    let mut ack = [0u8; 4];
    load.read_exact(&mut ack).await.unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    const N: usize = 25_000;
    const SIZE: usize = 4096;
    let mut packet = vec![0x30, 0x88, 0x20, 0, 6];
    packet.extend_from_slice(b"load/a");
    packet.resize(packet.len() + SIZE, b'x');
    assert_eq!(
        packet.len() - 3,
        0x1008,
        "remaining length 0x88 0x20 = 4104"
    );
    let chunk = packet.repeat(100);
    for _ in 0..N / 100 {
        load.write_all(&chunk).await.unwrap();
    }
    // Give the broker a moment to route what it read, then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib();
    let grown_mib = after.saturating_sub(before) / 1024;
    println!(
        "RSS {before} KiB -> {after} KiB after {N} x {SIZE} bytes; subscriber received {}",
        received.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(
        grown_mib < 40,
        "RSS grew by {grown_mib} MiB for 100 MiB of traffic"
    );
    assert!(received.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test]
async fn client_ids_of_the_gateways_own_links_are_refused() {
    let gw = Gateway::start(&[]);
    match connect(mqtt::options("perch-internal-fn-threshold", gw.addr())).await {
        Err(ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, ConnectReturnCode::BadClientId)
        }
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// `broker.max_filters`: rumqttd keeps a log per distinct filter until the
/// gateway stops, so a subscription to a new filter past the bound is
/// refused with a SUBACK failure and counted; filters already subscribed
/// (by any client) still work.
#[tokio::test]
async fn subscriptions_to_new_filters_past_max_filters_are_refused_and_counted() {
    let (_dir, config) = temp_file(
        "perch.toml",
        "[broker]\nmax_filters = 2\nmax_message_log_bytes = 65536\n\
         [[broker.listeners]]\nname = \"local\"\nlisten = \"127.0.0.1:0\"\nallow_anonymous = true\n",
    );
    let gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    let (a, mut a_el) = connect(mqtt::options("a", gw.addr())).await.unwrap();
    let ok = vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)];
    assert_eq!(subscribe(&a, &mut a_el, "f/1").await, ok);
    assert_eq!(subscribe(&a, &mut a_el, "f/2").await, ok);
    assert_eq!(
        subscribe(&a, &mut a_el, "f/3").await,
        vec![SubscribeReasonCode::Failure],
        "a third distinct filter is past max_filters = 2"
    );
    // Another client may still subscribe to a filter already counted, and
    // messages flow on it.
    let (b, mut b_el) = connect(mqtt::options("b", gw.addr())).await.unwrap();
    assert_eq!(subscribe(&b, &mut b_el, "f/2").await, ok);
    let (p, mut p_el) = connect(mqtt::options("p", gw.addr())).await.unwrap();
    p.publish("f/2", QoS::AtLeastOnce, false, "x")
        .await
        .unwrap();
    wait_puback(&mut p_el).await;
    let got = next_publish(&mut b_el, mqtt::WAIT)
        .await
        .expect("the message on a counted filter arrives");
    assert_eq!(&got.topic, "f/2");

    let admin = gw.admin.expect("the admin listener");
    let (status, body) = crate::admin::get(admin, "/metrics", None);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.lines()
            .any(|l| l == "perch_broker_refused_total{what=\"filter\"} 1"),
        "{body}"
    );
    assert!(
        gw.log_text().contains("broker.max_filters"),
        "the refusal is logged:\n{}",
        gw.log_text()
    );
}
