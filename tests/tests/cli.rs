//! The one-shot subcommands: `config default`, `config check`, `passwd`.

use crate::util::{perch, perch_with_stdin, temp_file};

fn check(text: &str) -> (i32, String) {
    let (_dir, path) = temp_file("perch.toml", text);
    let out = perch(&["config", "check", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stderr)
}

#[test]
fn the_printed_default_config_checks_clean() {
    let out = perch(&["config", "default"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[broker]") && text.contains("max_segment_size_bytes"));
    let (code, stderr) = check(&text);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn an_unknown_key_names_the_key_the_line_and_what_was_expected() {
    let (code, err) = check("[gateway]\nid = \"edge-1\"\n\n[broker]\nmax_conections = 10\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("max_conections"), "{err}");
    assert!(
        err.contains("max_connections"),
        "lists the expected keys: {err}"
    );
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    let (code, err) = check("[broker]\nmax_packet_size_bytes = \"big\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("line 2") && err.contains("max_packet_size_bytes"),
        "{err}"
    );
}

#[test]
fn broken_toml_syntax_is_located() {
    let (code, err) = check("[broker\nmax_connections = 10\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn an_open_network_listener_is_refused() {
    let (code, err) = check(
        "[[broker.listeners]]\nname = \"lan\"\nlisten = \"0.0.0.0:1883\"\nallow_anonymous = true\n",
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("broker.listeners[0].allow_anonymous"), "{err}");
    assert!(err.contains("no [[broker.users]]"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once() {
    let (code, err) = check(
        "[gateway]\nid = \"a/b\"\n[broker]\nmax_segment_size_bytes = 10\n\
         [[broker.users]]\nname = \"u\"\npassword_hash = \"plain\"\n",
    );
    assert_eq!(code, 2, "{err}");
    for key in [
        "gateway.id",
        "broker.max_segment_size_bytes",
        "broker.users[0].password_hash",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let out = perch(&["config", "check", "/nonexistent/perch.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/perch.toml"), "{err}");
}

#[test]
fn passwd_refuses_an_empty_password() {
    let out = perch_with_stdin(&["passwd"], "\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password is empty"));
}
