//! `perch fn new | build | test`: a new function project builds, passes its
//! own tests, runs on sample events in the real runtime and deploys as it
//! is; every mistake along the way gets an error that says what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::functions::Gateway;
use crate::util::perch_bin;

/// One cargo target directory for every scaffolded Rust project of the run,
/// so their dependencies build once.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("devkit-target")
}

fn perch_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(perch_bin())
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("running perch")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_new_rust_function_builds_tests_and_deploys_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "door-alarm"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("door-alarm");
    for file in [
        "Cargo.toml",
        "manifest.toml",
        "src/lib.rs",
        "events.jsonl",
        "README.md",
    ] {
        assert!(project.join(file).exists(), "{file} missing");
    }

    // Its sample events run in the real runtime.
    let out = perch_in(&project, &["fn", "test"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("publish  alerts/t1/temperature  {\"device\":\"t1\",\"temperature\":31.5"),
        "{shown}"
    );
    assert!(shown.contains("3 events, 0 failed; 2 publishes"), "{shown}");
    assert!(project.join("build/door-alarm.wasm").exists());

    // Its own unit tests pass against the vendored SDK's TestHost.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["test", "--quiet"])
        .current_dir(&project)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cargo test in the new project:\n{}",
        text(&out)
    );

    // And a gateway runs it as built.
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start("devkit", data.path());
    let wasm = project.join("build/door-alarm.wasm");
    let manifest = project.join("manifest.toml");
    let (ok, reply) = gw.perch_fn(&[
        "deploy",
        wasm.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{reply}\n{}", gw.log());
    gw.wait_for_function("door-alarm", |f| f["state"] == "running");
}

#[test]
fn a_new_c_function_builds_and_runs_on_its_events() {
    let tmp = tempfile::tempdir().unwrap();
    let project = tmp.path().join("c-door");
    let out = perch_in(
        tmp.path(),
        &[
            "fn",
            "new",
            "c-door",
            "--lang",
            "c",
            "--dir",
            project.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = perch_in(&project, &["fn", "test"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("3 events, 0 failed; 2 publishes"), "{shown}");
    assert!(project.join("build/c-door.wasm").exists());
}

#[test]
fn fn_test_reports_failing_events_and_exits_non_zero() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "probe", "--lang", "c"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("probe");
    std::fs::write(
        project.join("bad.jsonl"),
        "{\"topic\":\"sensors/t1/temperature\",\"payload\":\"not json\"}\n\
         {\"topic\":\"other/topic\",\"payload\":{\"temperature\":40}}\n",
    )
    .unwrap();
    let out = perch_in(&project, &["fn", "test", "--events", "bad.jsonl"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains("FAILED   the handler returned error code 1"),
        "{shown}"
    );
    assert!(
        shown.contains("no trigger of the manifest matches this topic"),
        "{shown}"
    );
    assert!(shown.contains("1 of 2 events failed"), "{shown}");

    // A line that is not an event names its line.
    std::fs::write(project.join("broken.jsonl"), "{\"topic\":\"a\"}\n").unwrap();
    let out = perch_in(&project, &["fn", "test", "--events", "broken.jsonl"]);
    let shown = text(&out);
    assert!(!out.status.success());
    assert!(
        shown.contains("broken.jsonl line 1: not an event"),
        "{shown}"
    );
}

#[test]
fn fn_new_and_build_refuse_bad_input_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "Door_Alarm"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not a usable function name"),
        "{}",
        text(&out)
    );

    std::fs::create_dir(tmp.path().join("taken")).unwrap();
    std::fs::write(tmp.path().join("taken/keep.txt"), "mine").unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "taken"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("exists and is not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("taken/keep.txt")).unwrap(),
        "mine"
    );

    let out = perch_in(tmp.path(), &["fn", "build"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("Start one with `perch fn new NAME`"),
        "{}",
        text(&out)
    );

    // A manifest with a mistake is named before anything is built.
    let out = perch_in(tmp.path(), &["fn", "new", "typo", "--lang", "c"]);
    assert!(out.status.success());
    let manifest = tmp.path().join("typo/manifest.toml");
    // A misspelt top-level key (the config table at the end takes any key).
    let broken = format!(
        "fuel_limit = 3\n{}",
        std::fs::read_to_string(&manifest).unwrap()
    );
    std::fs::write(&manifest, broken).unwrap();
    let out = perch_in(&tmp.path().join("typo"), &["fn", "build"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("is not a valid manifest"),
        "{}",
        text(&out)
    );
}

/// The SDK copy `perch fn new` writes asks for the same dependency versions
/// as the workspace's own SDK.
#[test]
fn the_vendored_sdk_uses_the_workspace_versions() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "versions"]);
    assert!(out.status.success(), "{}", text(&out));
    let vendored: toml::Value = toml::from_str(
        &std::fs::read_to_string(tmp.path().join("versions/perch-sdk/Cargo.toml")).unwrap(),
    )
    .unwrap();
    let root: toml::Value = toml::from_str(
        &std::fs::read_to_string(crate::util::workspace_root().join("Cargo.toml")).unwrap(),
    )
    .unwrap();
    let version = |v: &toml::Value| match v {
        toml::Value::String(s) => s.clone(),
        t => t["version"].as_str().unwrap().to_owned(),
    };
    let deps = vendored["dependencies"].as_table().unwrap().iter().chain(
        vendored["target"]["cfg(not(target_arch = \"wasm32\"))"]["dependencies"]
            .as_table()
            .unwrap(),
    );
    for (name, spec) in deps {
        let workspace = &root["workspace"]["dependencies"][name.as_str()];
        assert_eq!(version(spec), version(workspace), "{name}");
    }
}
