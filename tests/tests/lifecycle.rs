//! Starting and stopping: clean exits on signals, and starts that are
//! refused with a message instead of a half-working gateway.

use std::time::{Duration, Instant};

use crate::util::mqtt::{self, connect};
use crate::util::{temp_file, Gateway};

#[tokio::test]
async fn sigterm_stops_the_gateway_cleanly_within_five_seconds() {
    let mut gw = Gateway::start(&[]);
    // With a client connected, so shutdown has something to close.
    let (_client, _el) = connect(mqtt::options("c", gw.addr())).await.unwrap();
    let started = Instant::now();
    gw.signal("TERM");
    let status = gw.wait(Duration::from_secs(5)).expect("exited within 5 s");
    assert!(status.success(), "exit status {status}\n{}", gw.log_text());
    assert!(started.elapsed() < Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(100));
    let log = gw.log_text();
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(log.contains("shutdown complete"), "{log}");
}

#[test]
fn sigint_stops_the_gateway_with_exit_code_zero() {
    let mut gw = Gateway::start(&[]);
    gw.signal("INT");
    let status = gw.wait(Duration::from_secs(5)).expect("exited within 5 s");
    assert!(status.success(), "exit status {status}");
}

#[test]
fn a_taken_port_is_reported_and_nothing_starts() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = Gateway::try_start(&["--listen", &addr])
        .err()
        .expect("start refused");
    assert!(err.contains("cannot listen on"), "{err}");
    assert!(err.contains(&addr), "{err}");
    assert!(err.contains("exit status: 1"), "{err}");
}

#[test]
fn a_bad_config_never_starts_a_gateway() {
    let (_dir, path) = temp_file("perch.toml", "[broker]\nmax_connections = -1\n");
    let err = Gateway::try_start(&["--config", path.to_str().unwrap()])
        .err()
        .expect("start refused");
    assert!(err.contains("max_connections"), "{err}");
    assert!(!err.contains("perch ready"), "{err}");
    assert!(err.contains("exit status: 2"), "{err}");
}

#[test]
fn listen_on_a_network_address_with_anonymous_clients_is_refused() {
    let err = Gateway::try_start(&["--listen", "0.0.0.0:0"])
        .err()
        .expect("start refused");
    assert!(err.contains("allow_anonymous"), "{err}");
    assert!(err.contains("command-line overrides"), "{err}");
}

#[test]
fn an_unwritable_data_dir_is_named() {
    let (_dir, file) = temp_file("not-a-dir", "x");
    let data_dir = file.join("data");
    let err = Gateway::try_start(&["--data-dir", data_dir.to_str().unwrap()])
        .err()
        .expect("start refused");
    assert!(err.contains("cannot use data directory"), "{err}");
}
