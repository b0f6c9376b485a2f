//! `$SYS/#`, the Mosquitto habit: perch serves no `$`-topics, so the
//! subscription is refused, the connection stays up, and the client (5.0:
//! in the SUBACK's Reason String) and the log say where the same facts
//! are: the retained summary on `perch/<id>/status` and `/metrics`.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{mqtt, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sys_subscription_is_refused_with_where_to_look_instead() {
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, SubscribeReasonCode};
    use rumqttc::v5::{mqttbytes::QoS as Q5, AsyncClient as C5, Event as E5, MqttOptions as O5};
    let gw = Gateway::start(&[]);

    // MQTT 5.0: the SUBACK says it.
    let mut opts = O5::new("sys-v5", "127.0.0.1", gw.addr().port());
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut el) = C5::new(opts, 16);
    client.subscribe("$SYS/#", Q5::AtMostOnce).await.unwrap();
    let ack = tokio::time::timeout(mqtt::WAIT, async {
        loop {
            match el.poll().await.expect("the 5.0 connection") {
                E5::Incoming(P5::SubAck(ack)) => return ack,
                _ => continue,
            }
        }
    })
    .await
    .expect("a SUBACK");
    assert_eq!(ack.return_codes, vec![SubscribeReasonCode::NotAuthorized]);
    let reason = ack
        .properties
        .and_then(|p| p.reason_string)
        .expect("a Reason String");
    assert!(
        reason.contains("perch/<gateway id>/status") && reason.contains("/metrics"),
        "{reason}"
    );
    // Still connected: an ordinary subscription works.
    client.subscribe("a/b", Q5::AtMostOnce).await.unwrap();
    let ok = tokio::time::timeout(mqtt::WAIT, async {
        loop {
            match el.poll().await.expect("still connected") {
                E5::Incoming(P5::SubAck(ack)) => return ack.return_codes,
                _ => continue,
            }
        }
    })
    .await
    .expect("a second SUBACK");
    assert_eq!(ok, vec![SubscribeReasonCode::Success(Q5::AtMostOnce)]);

    // mosquitto_sub as a 3.1.1 user would run it: refused, and the log
    // names the alternatives.
    let out = tokio::task::spawn_blocking({
        let port = gw.addr().port().to_string();
        move || {
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port, "-t", "$SYS/#", "-W", "5"])
                .stdin(Stdio::null())
                .output()
                .expect("running mosquitto_sub (test.sh installs mosquitto-clients)")
        }
    })
    .await
    .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        said.contains("All subscription requests were denied"),
        "mosquitto_sub: {said}"
    );
    let log = gw.log_text();
    assert!(
        log.contains("subscription refused: perch has no $SYS topics")
            && log.contains("filter=\"$SYS/#\"")
            && log.contains("/metrics"),
        "{log}"
    );
}
