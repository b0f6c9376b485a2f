//! The docs stay true to the code: every error message the troubleshooting
//! page explains is one perch still prints, and every relative link in the
//! docs and the README points at a file that exists.

use std::path::{Path, PathBuf};

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The gateway's source with string continuations (`\` + newline +
/// indentation) joined, so a message reads as it is printed.
fn gateway_text() -> String {
    let mut files = Vec::new();
    rust_sources(
        &crate::util::workspace_root().join("gateway/src"),
        &mut files,
    );
    let mut text = String::new();
    for file in files {
        let source = std::fs::read_to_string(file).unwrap();
        let mut lines = source.lines().peekable();
        while let Some(line) = lines.next() {
            match line.strip_suffix('\\') {
                Some(joined) => {
                    text.push_str(joined);
                    if let Some(next) = lines.peek_mut() {
                        *next = next.trim_start();
                    }
                }
                None => {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    text
}

#[test]
fn every_message_on_the_troubleshooting_page_is_one_perch_prints() {
    let page =
        std::fs::read_to_string(crate::util::workspace_root().join("docs/troubleshooting.md"))
            .unwrap();
    let source = gateway_text();
    let mut checked = 0;
    for heading in page.lines().filter(|l| l.starts_with("### `")) {
        let message = heading.trim_start_matches("### `").trim_end_matches('`');
        for fragment in message.split('…').map(str::trim).filter(|f| !f.is_empty()) {
            assert!(
                source.contains(fragment),
                "docs/troubleshooting.md explains {fragment:?}, which perch no longer prints \
                 (heading: {heading})"
            );
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} messages found on the page");
}

#[test]
fn relative_links_in_the_docs_point_at_files_that_exist() {
    let root = crate::util::workspace_root();
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        pages.push(entry.unwrap().path());
    }
    let mut checked = 0;
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let target = &rest[..rest.find(')').unwrap()];
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = target.split('#').next().unwrap();
            let path = page.parent().unwrap().join(file);
            assert!(
                path.exists(),
                "{} links to {target}, which does not exist",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 10, "only {checked} links found");
}

/// SECURITY.md names the test behind every defence it claims: each
/// `module::test` it names must be a test function of this suite (or, with
/// a `tests::` path, a unit test in gateway/src), so a renamed or deleted
/// test cannot leave a defence claimed with nothing checking it.
#[test]
fn every_test_security_md_names_exists() {
    let root = crate::util::workspace_root();
    let text = std::fs::read_to_string(root.join("SECURITY.md")).unwrap();
    let mut sources = Vec::new();
    rust_sources(&root.join("tests/tests"), &mut sources);
    rust_sources(&root.join("gateway/src"), &mut sources);
    let code: String = sources
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    let named: Vec<&str> = text
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.contains("::")
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == ':')
        })
        .collect();
    assert!(
        named.len() > 20,
        "SECURITY.md names too few tests: {named:?}"
    );
    let missing: Vec<&&str> = named
        .iter()
        .filter(|path| {
            let name = path.rsplit("::").next().unwrap();
            !code.contains(&format!("fn {name}()"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "SECURITY.md names tests that do not exist: {missing:?}"
    );
}
