//! Mosquitto's habits in perch's flags (issue 21): `perch run -p PORT -v`,
//! `-h HOST -p PORT -u USER -P PASSWORD` on the commands that talk to a
//! gateway, and no command that exits 0 on a flag it did not use.

use crate::util::{free_port, output_text as text, perch, Gateway};

#[test]
fn run_takes_the_listener_port_with_p_and_debug_logging_with_v() {
    let port = free_port();
    let gw = Gateway::start(&["-p", &port.to_string(), "-v"]);
    assert_eq!(gw.addr().port(), port, "{:?}", gw.listeners);
    assert!(gw.addr().ip().is_loopback(), "keeps the listener's address");
    let log = gw.log_text();
    assert!(log.contains("verbose: perch logs at debug level"), "{log}");

    // The long form, and without -v no debug line.
    let port = free_port();
    let gw = Gateway::start(&["--port", &port.to_string()]);
    assert_eq!(gw.addr().port(), port, "{:?}", gw.listeners);
    assert!(!gw.log_text().contains("verbose:"), "{}", gw.log_text());
}

#[test]
fn run_refuses_p_together_with_listen() {
    let out = perch(&["run", "-p", "1883", "--listen", "127.0.0.1:1884"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--listen"), "{}", text(&out));
}

#[test]
fn client_commands_reach_the_gateway_with_host_and_port_flags() {
    let gw = Gateway::start(&[]);
    let port = gw.addr().port().to_string();
    for args in [
        vec!["fn", "list", "--json", "-h", "127.0.0.1", "-p", &port],
        vec![
            "fn",
            "list",
            "--json",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
        ],
        // -p replaces only the port of --broker.
        vec![
            "fn",
            "list",
            "--json",
            "--broker",
            "127.0.0.1:1",
            "-p",
            &port,
        ],
        // -h replaces only the host.
        vec![
            "fn",
            "list",
            "--json",
            "--broker",
            "192.0.2.1:1",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ],
    ] {
        let out = perch(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let listed: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", text(&out)));
        assert_eq!(listed, serde_json::json!([]), "{args:?}");
    }
    // The gateway's status summary over the same flags (retained, so it is
    // there from the start).
    let out = perch(&["status", "--json", "-h", "127.0.0.1", "-p", &port]);
    assert!(out.status.success(), "{}", text(&out));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(summary["gateway"].is_string(), "{summary}");
}

#[test]
fn the_host_and_port_flags_go_where_they_say() {
    // Nothing listens on port 1 of loopback: the error names the address
    // made of -h and -p, so neither was ignored.
    let out = perch(&[
        "fn",
        "list",
        "-h",
        "127.0.0.1",
        "-p",
        "1",
        "--timeout-ms",
        "2000",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.1:1"), "{}", text(&out));
    let out = perch(&["fn", "list", "--broker", "localhost:abc"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("\"localhost:abc\" (or PERCH_BROKER) is not host:port"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_flag_a_command_does_not_take_is_an_error_naming_it() {
    for (args, flag) in [
        (vec!["run", "-h", "127.0.0.1"], "'-h'"),
        (vec!["config", "default", "-p", "1883"], "'-p'"),
        (vec!["fn", "new", "x", "-h", "127.0.0.1"], "'-h'"),
        (vec!["buffer", "stats", "-p", "1883"], "'-p'"),
        (vec!["passwd", "--host", "a"], "'--host'"),
        (vec!["key", "generate", "-u", "admin"], "'-u'"),
    ] {
        let out = perch(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?} does not name {flag}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed: {}", text(&out));
    }
    // Help is --help everywhere, and a bare `perch -h`.
    for args in [
        vec!["fn", "list", "--help"],
        vec!["run", "--help"],
        vec!["-h"],
    ] {
        let out = perch(&args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: perch"));
    }
}
