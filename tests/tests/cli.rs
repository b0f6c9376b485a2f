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

/// Drives `perch passwd` through a real pseudo-terminal (python3's `pty`):
/// answers each prompt with the next of `answers` and returns (exit code,
/// everything the terminal showed).
fn passwd_on_a_terminal(answers: &[&str]) -> (i32, String) {
    const DRIVER: &str = r#"
import os, pty, sys, time
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "passwd"])
out = b""
def read_until(marker):
    global out
    end = time.time() + 20
    while marker not in out and time.time() < end:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
for answer, prompt in zip(sys.argv[2:], (b"password: ", b"again")):
    read_until(prompt)
    os.write(fd, answer.encode() + b"\n")
read_until(b"\0never")
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#;
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(DRIVER)
        .arg(crate::util::perch_bin())
        .args(answers)
        .output()
        .expect("python3 drives the pseudo-terminal");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn passwd_on_a_terminal_hides_the_password_and_asks_twice() {
    let (code, screen) = passwd_on_a_terminal(&["tty-s3cret", "tty-s3cret"]);
    assert_eq!(code, 0, "{screen}");
    assert!(
        !screen.contains("tty-s3cret"),
        "the password was echoed: {screen}"
    );
    assert!(screen.contains("again"), "asked only once: {screen}");
    let hash = screen
        .lines()
        .find(|l| l.starts_with("$argon2id$"))
        .unwrap_or_else(|| panic!("no hash: {screen}"))
        .trim()
        .to_owned();

    // The hash is of what was typed: that password logs in.
    let (_dir, config) = temp_file(
        "perch.toml",
        &format!(
            "[gateway]\nid = \"tty\"\n[[broker.listeners]]\nname = \"local\"\n\
             listen = \"127.0.0.1:0\"\nallow_anonymous = false\n\
             [[broker.users]]\nname = \"ops\"\npassword_hash = \"{hash}\"\nadmin = true\n"
        ),
    );
    let gw = crate::util::Gateway::start(&["--config", config.to_str().unwrap()]);
    let port = gw.addr().port().to_string();
    let out = perch(&[
        "fn",
        "list",
        "--gateway",
        "tty",
        "-p",
        &port,
        "-u",
        "ops",
        "-P",
        "tty-s3cret",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn passwd_on_a_terminal_refuses_two_different_passwords() {
    let (code, screen) = passwd_on_a_terminal(&["first-try", "second-try"]);
    assert_eq!(code, 1, "{screen}");
    assert!(
        screen.contains("the two passwords differ; nothing was written"),
        "{screen}"
    );
    assert!(!screen.contains("$argon2"), "a hash was printed: {screen}");
}

#[test]
fn passwd_reads_a_piped_password_without_prompting() {
    let out = perch_with_stdin(&["passwd"], "piped-secret\n");
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("$argon2id$") && stdout.lines().count() == 1,
        "{stdout}"
    );
    assert!(
        out.stderr.is_empty(),
        "no prompt on a pipe: {:?}",
        out.stderr
    );
}
