//! `perch fn new | build | test`: a new function project builds, passes its
//! own tests, runs on sample events in the real runtime and deploys as it
//! is; every mistake along the way gets an error that says what to do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::util::functions::Gateway;
use crate::util::{output_text as text, perch_bin};

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

/// The AssemblyScript template: `perch fn build` installs the pinned
/// compiler from the npm registry into the project, the module passes
/// `perch fn test`, and a gateway runs it on a published reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_assemblyscript_function_builds_and_deploys_as_it_is() {
    use crate::util::functions::Client;
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(
        tmp.path(),
        &["fn", "new", "as-door", "--lang", "assemblyscript"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("as-door");
    for file in [
        "package.json",
        "asconfig.json",
        "assembly/index.ts",
        "assembly/perch.ts",
        "manifest.toml",
        "events.jsonl",
        "README.md",
    ] {
        assert!(project.join(file).exists(), "{file} missing");
    }

    // The first build installs the compiler and says so, with timings.
    let out = perch_in(&project, &["fn", "build"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains(&format!(
            "installing the AssemblyScript compiler {}",
            perch::cli::devkit::ASSEMBLYSCRIPT_VERSION
        )),
        "{shown}"
    );
    assert!(shown.contains("perch fn build: compiled in "), "{shown}");
    assert!(shown.contains("perch fn build: checked in "), "{shown}");
    assert!(
        shown.contains("runs in the perch runtime; built in "),
        "{shown}"
    );
    // The second does not install it again.
    let out = perch_in(&project, &["fn", "test"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(!shown.contains("installing the AssemblyScript"), "{shown}");
    assert!(
        shown.contains(
            "publish  alerts/t1/temperature  {\"device\":\"t1\",\"temperature\":31.5,\"limit\":30.0}"
        ),
        "{shown}"
    );
    assert!(shown.contains("3 events, 0 failed; 2 publishes"), "{shown}");

    // A gateway runs it as built.
    let data = tempfile::tempdir().unwrap();
    let gw = Gateway::start("devkit-as", data.path());
    let wasm = project.join("build/as-door.wasm");
    let manifest = project.join("manifest.toml");
    let (ok, reply) = gw.perch_fn(&[
        "deploy",
        wasm.to_str().unwrap(),
        "--manifest",
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{reply}\n{}", gw.log());
    gw.wait_for_function("as-door", |f| f["state"] == "running");
    let mut watcher = Client::connect(gw.addr, "watcher", &["alerts/#"]).await;
    let sensor = Client::connect(gw.addr, "sensor", &[]).await;
    sensor
        .publish("sensors/hall/temperature", r#"{"temperature":40.25}"#)
        .await;
    let (topic, payload) = watcher.next().await;
    assert_eq!(topic, "alerts/hall/temperature");
    assert_eq!(
        payload,
        r#"{"device":"hall","temperature":40.25,"limit":30.0}"#
    );
    let f = gw.wait_for_function("as-door", |f| f["invocations"] == 1);
    assert_eq!(f["errors"], 0, "{f:#}");

    // A type error: the compiler's message, then what to do; the last good
    // module stays.
    let index = project.join("assembly/index.ts");
    let source = std::fs::read_to_string(&index).unwrap();
    std::fs::write(&index, source.replace("return 0;", "return \"zero\";")).unwrap();
    let before = std::fs::read(&wasm).unwrap();
    let out = perch_in(&project, &["fn", "build"]);
    let shown = text(&out);
    assert!(!out.status.success(), "{shown}");
    assert!(
        shown.contains(
            "the AssemblyScript compiler could not build the function (its errors are above); \
             fix them and run `perch fn build` again"
        ),
        "{shown}"
    );
    assert!(shown.contains("assembly/index.ts"), "{shown}");
    assert_eq!(std::fs::read(&wasm).unwrap(), before);
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
        shown.contains("FAILED   the handler returned error 1 (PAYLOAD: "),
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

/// `perch fn` with PATH pointing at an empty directory: no toolchain.
fn perch_without_tools(dir: &Path, args: &[&str]) -> Output {
    let empty = tempfile::tempdir().unwrap();
    Command::new(perch_bin())
        .args(args)
        .current_dir(dir)
        .env("PATH", empty.path())
        .output()
        .expect("running perch")
}

fn fails_saying(out: &Output, what: &str) {
    let shown = text(out);
    assert!(!out.status.success(), "expected a failure:\n{shown}");
    assert!(shown.contains(what), "expected {what:?} in:\n{shown}");
}

/// Every way `perch fn build` and `perch fn test` can fail on a C project
/// names what happened and what to do, and a failed build leaves the last
/// good module in place.
#[test]
fn fn_build_and_test_say_what_went_wrong_and_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(tmp.path(), &["fn", "new", "probe", "--lang", "c"]);
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("probe");
    let source = project.join("function.c");
    let good = std::fs::read_to_string(&source).unwrap();

    // No compiler: which one, and how to install it.
    fails_saying(
        &perch_without_tools(&project, &["fn", "build"]),
        "clang is needed to build C functions: sudo apt-get install -y clang lld",
    );

    // A good build says what it does and how long it took.
    let out = perch_in(&project, &["fn", "build"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for step in [
        "perch fn build: compiling (clang --target=wasm32",
        "perch fn build: compiled in ",
        "perch fn build: checking ",
        "perch fn build: checked in ",
        "runs in the perch runtime; built in ",
        "deploy it: perch fn deploy ",
    ] {
        assert!(shown.contains(step), "{step:?} missing:\n{shown}");
    }
    let module = project.join("build/probe.wasm");
    let built = std::fs::read(&module).unwrap();

    // A compile error: the compiler's own errors, then what to do.
    std::fs::write(&source, good.replace("return 1;", "return 1")).unwrap();
    fails_saying(
        &perch_in(&project, &["fn", "build"]),
        "clang could not build the function (its errors are above); fix them and run `perch fn \
         build` again",
    );
    assert_eq!(std::fs::read(&module).unwrap(), built);

    // A module the runtime refuses is refused on the laptop, with the
    // runtime's reason.
    std::fs::write(
        &source,
        good.replace(
            "int perch_abi_version(void) { return 1; }",
            "int perch_abi_version(void) { return 2; }",
        ),
    )
    .unwrap();
    let out = perch_in(&project, &["fn", "build"]);
    fails_saying(
        &out,
        "the module just built does not start in the perch runtime",
    );
    fails_saying(&out, "the module speaks perch ABI version 2");
    fails_saying(&out, "build/probe.wasm is unchanged");
    assert_eq!(std::fs::read(&module).unwrap(), built);
    std::fs::write(&source, &good).unwrap();

    // Two C files: which one?
    std::fs::write(project.join("extra.c"), "int x;\n").unwrap();
    fails_saying(
        &perch_in(&project, &["fn", "build"]),
        "has several .c files; `perch fn build` compiles one",
    );
    std::fs::remove_file(project.join("extra.c")).unwrap();

    // `perch fn test` on files that are not there.
    let out = perch_in(&project, &["fn", "test", "--events", "nowhere.jsonl"]);
    fails_saying(&out, "cannot read the events file");
    fails_saying(&out, "write one event a line");
    let out = perch_in(&project, &["fn", "test", "--wasm", "nowhere.wasm"]);
    fails_saying(&out, "cannot read nowhere.wasm");
    let elsewhere = tempfile::tempdir().unwrap();
    let out = perch_in(
        elsewhere.path(),
        &["fn", "test", "--wasm", module.to_str().unwrap()],
    );
    fails_saying(&out, "manifest.toml");
    fails_saying(&out, "Start one with `perch fn new NAME`");

    // After all that, the project still builds, and leaves nothing behind.
    let out = perch_in(&project, &["fn", "build"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(std::fs::read(&module).unwrap(), built);
    assert!(!project.join("build/probe.partial.wasm").exists());
}

/// The AssemblyScript checks that come before npm: npm missing, a compiler
/// that is not pinned.
#[test]
fn an_assemblyscript_project_needs_npm_and_a_pinned_compiler() {
    let tmp = tempfile::tempdir().unwrap();
    let out = perch_in(
        tmp.path(),
        &["fn", "new", "as-probe", "--lang", "assemblyscript"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let project = tmp.path().join("as-probe");
    fails_saying(
        &perch_without_tools(&project, &["fn", "build"]),
        "npm is needed to install the AssemblyScript compiler: install Node.js 18 or newer with \
         npm (on Debian: sudo apt-get install -y nodejs npm)",
    );

    let package = project.join("package.json");
    let pinned = std::fs::read_to_string(&package).unwrap();
    let version = perch::cli::devkit::ASSEMBLYSCRIPT_VERSION;
    assert!(
        pinned.contains(&format!("\"assemblyscript\": \"{version}\"")),
        "{pinned}"
    );
    std::fs::write(&package, pinned.replace(version, "^0.27.0")).unwrap();
    fails_saying(
        &perch_in(&project, &["fn", "build"]),
        "asks for assemblyscript \"^0.27.0\"; pin an exact version",
    );
    std::fs::write(&package, "{\"name\": \"as-probe\"}").unwrap();
    fails_saying(
        &perch_in(&project, &["fn", "build"]),
        "has no devDependencies.assemblyscript; add \"assemblyscript\"",
    );
    std::fs::write(&package, "{").unwrap();
    fails_saying(&perch_in(&project, &["fn", "build"]), "is not valid JSON");
    // Nothing was installed or built along the way.
    assert!(!project.join("node_modules").exists());
    assert!(!project.join("build/as-probe.wasm").exists());
}

/// A new project of any language builds and tests with the installed
/// `perch` alone: nothing in it sends its reader to the perch repository
/// (`cargo run -p perch`).
#[test]
fn new_projects_name_only_the_perch_binary() {
    let tmp = tempfile::tempdir().unwrap();
    for lang in ["rust", "c", "assemblyscript"] {
        let name = format!("new-{lang}");
        let out = perch_in(tmp.path(), &["fn", "new", &name, "--lang", lang]);
        assert!(out.status.success(), "{}", text(&out));
        let mut files = vec![tmp.path().join(&name)];
        while let Some(path) = files.pop() {
            if path.is_dir() {
                files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            let content = std::fs::read_to_string(&path).unwrap_or_default();
            for bad in ["cargo run", "-p perch"] {
                assert!(!content.contains(bad), "{} says {bad:?}", path.display());
            }
        }
        let readme = std::fs::read_to_string(tmp.path().join(&name).join("README.md")).unwrap();
        assert!(
            readme.contains("perch fn build") && readme.contains("perch fn test"),
            "{readme}"
        );
    }
}
