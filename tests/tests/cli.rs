//! The one-shot subcommands: `config default`, `config check`, `passwd`.

use crate::util::{perch, perch_with_stdin, temp_file};

/// A file with mistakes of every kind: a misspelt key, a value of the
/// wrong type, a misspelt one in another section, an unusable value.
const SEVERAL_MISTAKES: &str = "[gateway]\nid = \"a/b\"\ndata_dri = \"/x\"\n\n\
    [broker]\nmax_packet_size_bytes = \"big\"\nmax_conections = 3\n\n\
    [buffer]\nwhen_ful = \"drop_oldest\"\n";

#[test]
fn every_mistake_in_a_file_is_reported_at_once_with_its_place() {
    let (code, err) = check(SEVERAL_MISTAKES);
    assert_eq!(code, 2, "{err}");
    for line in [
        "perch.toml:2:1: gateway.id: \"a/b\" is not a usable id",
        "perch.toml:3:1: gateway.data_dri: unknown field `data_dri`, expected one of `id`, \
         `data_dir`, `shutdown_timeout_ms`; did you mean `data_dir`?",
        "perch.toml:6:25: broker.max_packet_size_bytes: invalid type: string \"big\", expected",
        "perch.toml:7:1: broker.max_conections: unknown field",
        "perch.toml:10:1: buffer.when_ful: unknown field `when_ful`",
    ] {
        assert!(err.contains(line), "{line:?} missing from:\n{err}");
    }
    assert!(err.contains("did you mean `when_full`?"), "{err}");
    assert!(err.contains("did you mean `max_connections`?"), "{err}");
}

#[test]
fn config_check_json_is_an_array_of_located_problems() {
    let (_dir, path) = temp_file("perch.toml", SEVERAL_MISTAKES);
    let out = perch(&["config", "check", "--json", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let problems: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(problems.len(), 5, "{problems:#?}");
    let misspelt = problems
        .iter()
        .find(|p| p["key"] == "gateway.data_dri")
        .expect("the misspelt key");
    assert_eq!(misspelt["file"], path.to_str().unwrap());
    assert_eq!(
        (misspelt["line"].as_u64(), misspelt["column"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(misspelt["did_you_mean"], "data_dir");
    assert!(misspelt["expected"]
        .as_str()
        .unwrap()
        .contains("`data_dir`"));
    assert!(misspelt["message"]
        .as_str()
        .unwrap()
        .contains("unknown field"));

    // A good file is an empty array and exit 0.
    let (_dir, path) = temp_file("perch.toml", "[gateway]\nid = \"fine\"\n");
    let out = perch(&["config", "check", "--json", path.to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
}

#[test]
fn run_with_a_bad_config_prints_the_same_list_as_check() {
    let (dir, path) = temp_file("perch.toml", SEVERAL_MISTAKES);
    let (_, checked) = check(SEVERAL_MISTAKES);
    let data = dir.path().join("data");
    let out = perch(&[
        "run",
        "--config",
        path.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let ran = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = checked
        .lines()
        .filter(|l| l.contains("perch.toml:"))
        .collect();
    assert_eq!(problems.len(), 5, "{checked}");
    for line in problems {
        // The two runs wrote the file to different temp dirs.
        let tail = line.split("perch.toml:").nth(1).unwrap();
        assert!(
            ran.contains(tail),
            "{tail:?} missing from perch run's:\n{ran}"
        );
    }
}

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
    assert!(
        err.contains("perch.toml:5:1: broker.max_conections: unknown field"),
        "{err}"
    );
    assert!(err.contains("expected one of `max_connections`"), "{err}");
    assert!(err.contains("did you mean `max_connections`?"), "{err}");
}

#[test]
fn a_value_of_the_wrong_type_is_named() {
    let (code, err) = check("[broker]\nmax_packet_size_bytes = \"big\"\n");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("perch.toml:2:25: broker.max_packet_size_bytes: invalid type"),
        "{err}"
    );
}

#[test]
fn broken_toml_syntax_is_located() {
    let (code, err) = check("[broker\nmax_connections = 10\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("perch.toml:1:8: unclosed table"), "{err}");
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

/// How often `needle` appears in `haystack`.
fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn each_error_is_printed_once() {
    // A config file that does not exist.
    for args in [
        vec!["config", "check", "/nonexistent/perch.toml"],
        vec!["run", "--config", "/nonexistent/perch.toml"],
    ] {
        let out = perch(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(
            count(&err, "No such file or directory"),
            1,
            "{args:?}: {err}"
        );
        assert_eq!(count(&err, "/nonexistent/perch.toml"), 1, "{args:?}: {err}");
    }

    // A data directory that cannot be created: under a regular file (so
    // it fails for root too).
    let (_dir, file) = temp_file("not-a-dir", "");
    let data = file.join("data");
    let out = perch(&[
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("cannot use data directory"), "{err}");
    assert_eq!(count(&err, "Not a directory (os error 20)"), 1, "{err}");

    // A key file that does not exist.
    let out = perch(&["key", "public", "/nonexistent/key.pem"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert_eq!(count(&err, "No such file or directory"), 1, "{err}");
}
