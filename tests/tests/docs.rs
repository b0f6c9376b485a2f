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

/// One command line of a fenced shell block: where it is, and its words.
struct DocCommand {
    place: String,
    line: String,
    args: Vec<String>,
}

/// Splits a shell line into words and operators the way sh would for the
/// plain lines docs hold: quotes, backslashes, comments, `|`, `&&`, `||`,
/// `;`, `&` and redirections (their target is dropped). Each element is one
/// simple command's words.
fn shell_commands(line: &str) -> Vec<Vec<String>> {
    let mut commands = vec![Vec::new()];
    let mut word = String::new();
    let mut in_word = false;
    let mut skip_next_word = false;
    let mut chars = line.chars().peekable();
    let finish = |word: &mut String,
                  in_word: &mut bool,
                  skip: &mut bool,
                  commands: &mut Vec<Vec<String>>| {
        if *in_word {
            if *skip {
                *skip = false;
            } else {
                commands.last_mut().unwrap().push(std::mem::take(word));
            }
            word.clear();
            *in_word = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.push(c);
                }
            }
            '"' => {
                in_word = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => word.extend(chars.next()),
                        c => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.extend(chars.next());
            }
            '#' if !in_word => break,
            c if c.is_whitespace() => {
                finish(&mut word, &mut in_word, &mut skip_next_word, &mut commands)
            }
            '|' | '&' | ';' => {
                finish(&mut word, &mut in_word, &mut skip_next_word, &mut commands);
                while chars.next_if(|n| matches!(n, '|' | '&')).is_some() {}
                commands.push(Vec::new());
            }
            '>' | '<' => {
                // `2>` and `>` alike: drop the descriptor and the target.
                if in_word && word.chars().all(|c| c.is_ascii_digit()) {
                    word.clear();
                    in_word = false;
                }
                finish(&mut word, &mut in_word, &mut skip_next_word, &mut commands);
                while chars.next_if(|n| matches!(n, '>' | '&')).is_some() {}
                skip_next_word = true;
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    finish(&mut word, &mut in_word, &mut skip_next_word, &mut commands);
    commands.retain(|c| !c.is_empty());
    commands
}

/// perch's arguments in a simple command that runs perch: `perch ...`,
/// `./target/release/perch ...`, `sudo perch ...`, `cargo run ... -p perch
/// -- ...`. None for any other command.
fn perch_args(words: &[String]) -> Option<Vec<String>> {
    let mut words = words;
    while let Some(first) = words.first() {
        if first == "sudo" || first.contains('=') {
            words = &words[1..];
        } else {
            break;
        }
    }
    let first = words.first()?;
    if first == "perch" || first.ends_with("/perch") {
        return Some(words[1..].to_vec());
    }
    if first == "cargo" && words.get(1).is_some_and(|w| w == "run") {
        let package = words.windows(2).any(|w| w[0] == "-p" && w[1] == "perch");
        let dashes = words.iter().position(|w| w == "--");
        if package {
            return Some(dashes.map_or(Vec::new(), |i| words[i + 1..].to_vec()));
        }
    }
    None
}

/// Every command line in the fenced shell blocks (```sh, ```bash, ```shell,
/// ```console, or a bare ```) of README.md and docs/*.md that runs perch.
/// Continuation lines are joined; a leading `$ ` prompt is dropped.
fn documented_perch_commands() -> Vec<DocCommand> {
    let root = crate::util::workspace_root();
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    let mut found = Vec::new();
    for page in pages {
        let text = std::fs::read_to_string(&page).unwrap();
        let name = page.strip_prefix(&root).unwrap().display().to_string();
        let mut fence: Option<bool> = None; // Some(is shell) inside a block
        let mut pending = String::new();
        let mut start = 0;
        for (i, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            if let Some(info) = trimmed.strip_prefix("```") {
                fence = match fence {
                    Some(_) => None,
                    None => Some(matches!(
                        info.trim(),
                        "" | "sh" | "bash" | "shell" | "console"
                    )),
                };
                pending.clear();
                continue;
            }
            if fence != Some(true) {
                continue;
            }
            if pending.is_empty() {
                start = i + 1;
            }
            let line = line.trim().strip_prefix("$ ").unwrap_or(line.trim());
            if let Some(joined) = line.strip_suffix('\\') {
                pending.push_str(joined);
                pending.push(' ');
                continue;
            }
            pending.push_str(line);
            let full = std::mem::take(&mut pending);
            for words in shell_commands(&full) {
                if let Some(args) = perch_args(&words) {
                    found.push(DocCommand {
                        place: format!("{name}:{start}"),
                        line: full.trim().to_owned(),
                        args,
                    });
                }
            }
        }
    }
    found
}

/// A placeholder the docs write for a value the reader fills in (NAME,
/// FILE.wasm, ADDR): clap may refuse it as a value, which is no drift.
fn is_placeholder(value: &str) -> bool {
    let stem = value.split('.').next().unwrap_or("");
    !stem.is_empty()
        && stem
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
}

#[test]
fn shell_lines_split_as_sh_would() {
    let split = shell_commands(
        "echo 'a b' | perch passwd > hash.txt 2>&1 && perch fn list --gateway \"$(hostname)\" # x",
    );
    assert_eq!(
        split,
        vec![
            vec!["echo".to_owned(), "a b".into()],
            vec!["perch".into(), "passwd".into()],
            vec![
                "perch".into(),
                "fn".into(),
                "list".into(),
                "--gateway".into(),
                "$(hostname)".into()
            ],
        ]
    );
    let cargo: Vec<String> = ["cargo", "run", "--release", "-p", "perch", "--", "demo"]
        .map(String::from)
        .to_vec();
    assert_eq!(perch_args(&cargo), Some(vec!["demo".to_owned()]));
    assert_eq!(perch_args(&["mosquitto_sub".to_owned()]), None);
    assert!(is_placeholder("FILE.wasm") && is_placeholder("ADDR") && !is_placeholder("x.toml"));
}

/// The docs cannot drift from the binary: every `perch ...` line in a shell
/// block of the README or docs/ is parsed by perch's own command line
/// (`perch::cli::Cli`, the parser the binary runs), so a renamed
/// subcommand or flag fails here. A synopsis's optional parts (`[--force]`)
/// are checked as if given.
/// Whether perch's own command line (`perch::cli::Cli`, the parser the
/// binary runs) accepts `args`; the first line of clap's error if not.
/// `--help` and `--version` are accepted, and so is a placeholder value
/// (`--listen ADDR`) where clap checks the value's type.
fn accepted(args: &[String]) -> Result<(), String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    use clap::Parser as _;
    let Err(e) = perch::cli::Cli::try_parse_from(
        std::iter::once("perch".to_owned()).chain(args.iter().cloned()),
    ) else {
        return Ok(());
    };
    let placeholder = matches!(e.kind(), ErrorKind::ValueValidation)
        && matches!(
            e.get(ContextKind::InvalidValue),
            Some(ContextValue::String(v)) if is_placeholder(v)
        );
    if placeholder || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        return Ok(());
    }
    Err(e
        .render()
        .to_string()
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

#[test]
fn the_docs_check_refuses_what_perch_refuses() {
    let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
    assert!(accepted(&words("fn deploy FILE.wasm --manifest FILE.toml --force")).is_ok());
    assert!(accepted(&words("run --listen ADDR --admin-listen 127.0.0.1:0")).is_ok());
    assert!(accepted(&words("fn deploy x.wasm --manifst m.toml")).is_err());
    assert!(accepted(&words("fn rollback")).is_err());
    assert!(accepted(&words("function list")).is_err());
    assert!(accepted(&words("run --listen localhost")).is_err());
}

/// The docs cannot drift from the binary: every `perch ...` line in a shell
/// block of the README or docs/ is parsed by perch's own command line, so a
/// renamed subcommand or flag fails here. A synopsis's optional parts
/// (`[--force]`) are checked as if given.
#[test]
fn every_perch_command_in_the_docs_is_one_the_binary_accepts() {
    let commands = documented_perch_commands();
    let mut problems = Vec::new();
    for command in &commands {
        let args: Vec<String> = command
            .args
            .iter()
            .map(|a| a.trim_start_matches('[').trim_end_matches(']').to_owned())
            .filter(|a| !a.is_empty())
            .collect();
        if let Err(e) = accepted(&args) {
            problems.push(format!(
                "{}: `{}`\n  perch {}\n  {e}",
                command.place,
                command.line,
                args.join(" ")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "commands in the docs that perch does not accept:\n{}",
        problems.join("\n")
    );
    assert!(
        commands.len() >= 25,
        "only {} perch commands found in the docs' shell blocks",
        commands.len()
    );
    // Every page with a shell block that runs perch was seen.
    for page in [
        "README.md",
        "docs/deploying.md",
        "docs/operating.md",
        "docs/getting-started.md",
    ] {
        assert!(
            commands.iter().any(|c| c.place.starts_with(page)),
            "no perch command found in {page}"
        );
    }
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

/// The quickstart builds perch once and runs it by name: README.md and
/// docs/getting-started.md install it with `cargo install`, and no shell
/// line in the README or docs/ runs perch through `cargo run` (a second,
/// debug build and a minute of compiling on every command).
#[test]
fn the_docs_run_one_installed_perch_not_cargo_run() {
    let root = crate::util::workspace_root();
    for page in ["README.md", "docs/getting-started.md"] {
        let text = std::fs::read_to_string(root.join(page)).unwrap();
        assert!(
            text.contains("cargo install --path gateway --locked"),
            "{page} does not install perch with `cargo install --path gateway --locked`"
        );
    }
    let through_cargo: Vec<String> = documented_perch_commands()
        .into_iter()
        .filter(|c| c.line.starts_with("cargo"))
        .map(|c| format!("{}: {}", c.place, c.line))
        .collect();
    assert!(
        through_cargo.is_empty(),
        "run the installed `perch` instead:\n{}",
        through_cargo.join("\n")
    );
}
