//! Loud failures at start: a second gateway on a data directory another one
//! holds exits non-zero naming the holder's pid, and a database in the data
//! directory that perch cannot write fails the start (before the ready line,
//! so before /readyz could say ready) with the `chown` that fixes it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{perch_bin, Gateway, READY_TIMEOUT};

fn data_dir_args(dir: &Path) -> [String; 2] {
    ["--data-dir".to_owned(), dir.display().to_string()]
}

#[test]
fn a_second_gateway_on_the_same_data_dir_exits_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let args = data_dir_args(dir.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Gateway::start(&args);
    let err = match Gateway::try_start(&args) {
        Ok(_) => panic!("a second gateway started on {}", dir.path().display()),
        Err(log) => log,
    };
    assert!(err.contains("exited with exit status: 1"), "{err}");
    assert!(
        err.contains(&format!(
            "the data directory {} is in use by another perch (pid {}, per {})",
            dir.path().display(),
            first.pid(),
            dir.path().join("lock").display()
        )),
        "{err}"
    );
    assert!(err.contains("--data-dir"), "{err}");
    assert!(!err.contains("perch ready"), "{err}");
    // The first one was not disturbed: its lock file still names it.
    let lock = std::fs::read_to_string(dir.path().join("lock")).unwrap();
    assert_eq!(lock.trim(), first.pid().to_string());

    // The lock dies with its holder, even by kill -9: the stale pid in the
    // file does not block the next start.
    first.signal("KILL");
    first.wait(READY_TIMEOUT).expect("perch exits on SIGKILL");
    let next = Gateway::start(&args);
    let lock = std::fs::read_to_string(dir.path().join("lock")).unwrap();
    assert_eq!(lock.trim(), next.pid().to_string());
}

/// Runs `perch run` on `dir` as `uid` (when set) until it exits; returns
/// whether it succeeded and what it logged.
fn run_to_exit(dir: &Path, uid: Option<u32>) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(perch_bin());
    cmd.args([
        "run",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
    ])
    .args(data_dir_args(dir))
    .env("NO_COLOR", "1")
    .env("RUST_LOG", "info")
    .env_remove("JOURNAL_STREAM")
    .env_remove("NOTIFY_SOCKET")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    let mut child = cmd.spawn().expect("starting perch run");
    let deadline = Instant::now() + READY_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "perch kept running on a data dir it cannot write:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), log)
}

#[test]
fn a_buffer_db_perch_cannot_write_fails_the_start_with_the_chown_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A first run creates every database, then stops cleanly.
    let args = data_dir_args(d);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut first = Gateway::start(&args);
    first.signal("TERM");
    assert!(first.wait(READY_TIMEOUT).is_some_and(|s| s.success()));
    let buffer = d.join("buffer.db");
    assert!(buffer.exists());

    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let (uid, user) = if root {
        // Permission bits do not bind root: run perch as `nobody`, owning
        // the data directory and everything in it but buffer.db, which
        // stays root's (as after a `sudo perch run`).
        let nobody = 65534;
        std::os::unix::fs::chown(d, Some(nobody), Some(nobody)).unwrap();
        for entry in std::fs::read_dir(d).unwrap() {
            let path = entry.unwrap().path();
            if path != buffer {
                std::os::unix::fs::chown(&path, Some(nobody), Some(nobody)).unwrap();
            }
        }
        (Some(nobody), "nobody".to_owned())
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&buffer, std::fs::Permissions::from_mode(0o444)).unwrap();
        let me = Command::new("id").arg("-un").output().unwrap();
        (None, String::from_utf8_lossy(&me.stdout).trim().to_owned())
    };

    let (ok, log) = run_to_exit(d, uid);
    assert!(!ok, "{log}");
    assert!(!log.contains("perch ready"), "{log}");
    assert!(
        log.contains(&format!("cannot write {}: ", buffer.display())),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "perch runs as {user} here, so give it the file with `chown {user} {}`",
            buffer.display()
        )),
        "{log}"
    );
}
