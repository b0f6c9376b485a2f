//! A client command the gateway's broker refuses says who it tried to be,
//! what the command needs and the flags that supply it (issue 21).

use crate::util::{perch, perch_with_stdin, temp_file, Gateway};

fn hash(password: &str) -> String {
    let out = perch_with_stdin(&["passwd"], &format!("{password}\n"));
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A gateway whose only listener wants a login: `ops` is an admin,
/// `viewer` may read `sensors/#` only.
fn gateway() -> (Gateway, tempfile::TempDir) {
    let (dir, config) = temp_file(
        "perch.toml",
        &format!(
            "[gateway]\nid = \"locked\"\n\
             [[broker.listeners]]\nname = \"local\"\nlisten = \"127.0.0.1:0\"\n\
             allow_anonymous = false\n\
             [[broker.users]]\nname = \"ops\"\npassword_hash = \"{}\"\nadmin = true\n\
             [[broker.users]]\nname = \"viewer\"\npassword_hash = \"{}\"\n\
             subscribe = [\"sensors/#\"]\n",
            hash("ops-secret"),
            hash("viewer-secret")
        ),
    );
    (Gateway::start(&["--config", config.to_str().unwrap()]), dir)
}

fn fn_list(gw: &Gateway, login: &[&str]) -> (bool, String) {
    let port = gw.addr().port().to_string();
    let mut args = vec!["fn", "list", "--json", "--gateway", "locked", "-p", &port];
    args.extend_from_slice(login);
    args.extend_from_slice(&["--timeout-ms", "5000"]);
    let out = perch(&args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), err)
}

#[test]
fn a_refused_login_names_the_user_the_permission_and_the_flags() {
    let (gw, _dir) = gateway();

    let (ok, err) = fn_list(&gw, &[]);
    assert!(!ok);
    for part in [
        "refused perch's login anonymously (no --user) (not authorized)",
        "take an admin login: a [[broker.users]] entry with admin = true",
        "--user NAME --password PASSWORD",
        "PERCH_PASSWORD",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }

    let (ok, err) = fn_list(&gw, &["--user", "ops", "--password", "wrong"]);
    assert!(!ok);
    assert!(
        err.contains("refused perch's login as user \"ops\" (wrong user name or password)"),
        "{err}"
    );
    assert!(err.contains("--user NAME --password PASSWORD"), "{err}");

    // A user who may log in but is not an admin: the subscription to the
    // control plane's reply topic is refused.
    let (ok, err) = fn_list(&gw, &["-u", "viewer", "-P", "viewer-secret"]);
    assert!(!ok);
    assert!(
        err.contains("let perch in as user \"viewer\" but refused its subscription"),
        "{err}"
    );
    assert!(err.contains("admin = true"), "{err}");

    // The admin gets through, with the long and the short flags.
    for login in [
        ["--user", "ops", "--password", "ops-secret"],
        ["-u", "ops", "-P", "ops-secret"],
    ] {
        let (ok, err) = fn_list(&gw, &login);
        assert!(ok, "{login:?}: {err}");
    }
}

#[test]
fn a_password_without_a_user_is_an_error_not_an_anonymous_login() {
    let out = perch(&["fn", "list", "--password", "x"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no user name: give it with --user NAME"),
        "{err}"
    );
}

#[test]
fn status_says_who_was_refused_too() {
    let (gw, _dir) = gateway();
    let port = gw.addr().port().to_string();
    let out = perch(&[
        "status",
        "--gateway",
        "locked",
        "-p",
        &port,
        "-u",
        "ops",
        "-P",
        "nope",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("as user \"ops\" (wrong user name or password)"),
        "{err}"
    );
    assert!(
        err.contains("reading perch/locked/status takes a login"),
        "{err}"
    );
}

/// `perch fn deploy` refused: the login it tried, the admin it needs and
/// the flags; with the admin's login the same deploy goes through.
#[test]
fn a_refused_deploy_says_what_is_missing() {
    let (gw, dir) = gateway();
    let module = crate::util::functions::wasm_file(dir.path(), "echo");
    let manifest = crate::util::functions::file(
        dir.path(),
        "echo.toml",
        "name = \"echo\"\nversion = \"1.0.0\"\n[triggers]\ntopics = [\"tests/in/#\"]\n\
         [publish]\nallow = [\"out/#\"]\n",
    );
    let port = gw.addr().port().to_string();
    let deploy = |login: &[&str]| {
        let mut args = vec![
            "fn",
            "deploy",
            module.to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--gateway",
            "locked",
            "-p",
            &port,
            "--timeout-ms",
            "10000",
        ];
        args.extend_from_slice(login);
        perch(&args)
    };
    let out = deploy(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("anonymously (no --user)"), "{err}");
    assert!(err.contains("take an admin login"), "{err}");
    assert!(err.contains("--user NAME --password PASSWORD"), "{err}");

    let out = deploy(&["--user", "viewer", "--password", "viewer-secret"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("as user \"viewer\" but refused"), "{err}");

    let out = deploy(&["--user", "ops", "--password", "ops-secret"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
