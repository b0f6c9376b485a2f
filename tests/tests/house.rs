//! The house rules of `docs/architecture.md`, checked against the source
//! tree with the test suite: no `unsafe` in `gateway/src`, no source file
//! there over [`MAX_LINES`] and no function over [`MAX_FN_LINES`], imports
//! only down the layers (the foundation
//! below the stages, the stages in the order of an event's trip, telemetry,
//! config, the gateway and the CLI above them), and no file of the
//! repository referring to design text outside it.
//!
//! The size and import rules have an allowlist of today's exceptions. They
//! are debts: an entry may be removed when its exception is gone (and must
//! be, the checks say so), never added to without a reason written beside
//! it. There is no `unsafe` to allow.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The longest a source file in `gateway/src` may be.
const MAX_LINES: usize = 800;

/// Files over [`MAX_LINES`] today, each with its line count as a ceiling:
/// such a file may shrink, never grow past it. Split it, then lower its
/// entry, or remove it once the file is within the limit (the check asks
/// for that).
const OVERSIZED: &[(&str, usize)] = &[];

/// The longest a function in `gateway/src` may be, from its `fn` line to
/// its closing brace.
const MAX_FN_LINES: usize = 120;

/// Functions over [`MAX_FN_LINES`] today, as (file, name, line count as a
/// ceiling). Most are in files other work was changing when this list was
/// made.
const LONG_FUNCTIONS: &[(&str, &str, usize)] = &[("buffer/store.rs", "commit", 185)];

/// The layers, lowest first: a module may import the modules of a lower
/// layer, never of a higher one. A new top-level module needs a place here
/// and in docs/architecture.md.
const LAYERS: &[&[&str]] = &[
    // The foundation: imports no stage.
    &["kit"],
    // The stages, in the order of an event's trip.
    &["broker"],
    &["functions"],
    &["aggregate"],
    &["buffer"],
    &["upstream"],
    // Reads the stages' counters.
    &["telemetry"],
    // The config file as a whole: every stage's section.
    &["config"],
    // Wires the stages together.
    &["gateway"],
    &["cli"],
];

/// Imports against the layers today, as (file, the module it imports):
/// each a debt named in docs/architecture.md ("Import rules").
const BACK_EDGES: &[(&str, &str)] = &[
    // The buffer's record and event types (`Name`, `NewEvent`,
    // `KeptEvent`) in the functions' `Output`; replay opens buffer.db
    // (`FILE_NAME`, `Reader`).
    ("functions/dispatch.rs", "buffer"),
    ("functions/dispatch/handle.rs", "buffer"),
    ("functions/mod.rs", "buffer"),
    ("functions/invoke.rs", "buffer"),
    ("functions/runtime.rs", "buffer"),
    ("functions/runtime/host.rs", "buffer"),
];

fn gateway_src() -> PathBuf {
    crate::util::workspace_root().join("gateway/src")
}

/// Every `.rs` file under `dir`, as (path relative to `dir` with `/`, text).
fn sources(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap();
                let rel = rel.to_string_lossy().replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `text` with comments, string literals and char literals blanked
/// (replaced by spaces, newlines kept), so that what is left is code.
fn code_only(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |ch: char| if ch == '\n' { '\n' } else { ' ' };
    let starts_word = |k: usize| k == 0 || !(c[k - 1].is_alphanumeric() || c[k - 1] == '_');
    let mut i = 0;
    while i < c.len() {
        if c[i] == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c[i] == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (c.get(i + 1) == Some(&'"') || c.get(i + 1) == Some(&'#'))
            && (starts_word(i) || (c[i - 1] == 'b' && starts_word(i - 1)))
        {
            // A raw string: r"...", r#"..."#, br#"..."#, ...
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(c[i..j.min(c.len())].iter().map(|&ch| blank(ch)));
            i = j;
        } else if c[i] == '"' {
            out.push(' ');
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < c.len() {
                    out.push(blank(c[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c[i] == '\'' && c.get(i + 1) == Some(&'\\') {
            // An escaped char literal: '\n', '\'', '\u{..}'.
            let mut j = i + 3;
            while j < c.len() && c[j] != '\'' {
                j += 1;
            }
            out.extend(std::iter::repeat_n(' ', j + 1 - i));
            i = j + 1;
        } else if c[i] == '\'' && c.get(i + 2) == Some(&'\'') {
            out.push_str("   ");
            i += 3;
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

/// `code` (from [`code_only`]) without the items marked `#[cfg(test)]`,
/// and the names of the out-of-line modules so marked (`mod tests;`).
fn without_tests(code: &str) -> (String, Vec<String>) {
    const MARK: &str = "#[cfg(test)]";
    let mut out = String::with_capacity(code.len());
    let mut test_mods = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        let item = &rest[at..];
        // The item ends at its first `;` or at the brace that closes its
        // first `{`, whichever comes first.
        let mut depth = 0usize;
        let mut end = item.len();
        for (k, ch) in item.char_indices().skip(MARK.len()) {
            match ch {
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        let words: Vec<&str> = item[MARK.len()..end]
            .split(|ch: char| !(ch.is_alphanumeric() || ch == '_' || ch == ';'))
            .filter(|w| !w.is_empty())
            .collect();
        if let Some(p) = words.iter().position(|w| *w == "mod") {
            if let Some(name) = words.get(p + 1).filter(|w| w.ends_with(';')) {
                test_mods.push(name.trim_end_matches(';').to_owned());
            }
        }
        out.extend(
            item[..end]
                .chars()
                .map(|ch| if ch == '\n' { '\n' } else { ' ' }),
        );
        rest = &item[end..];
    }
    out.push_str(rest);
    (out, test_mods)
}

/// The top-level modules of the crate that `code` names through `crate::`
/// (or through enough `super::` to reach the crate root from a file at
/// `depth`, 1 for `gateway.rs`, 2 for `broker/codec.rs`), each with a line.
fn imported_modules(code: &str, depth: usize) -> Vec<(String, usize)> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|ch| ch.is_alphanumeric() || *ch == '_')
            .collect()
    };
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    let push_group = |after: &str, at: usize, found: &mut Vec<(String, usize)>| {
        let after = after.trim_start();
        if let Some(group) = after.strip_prefix('{') {
            // crate::{a, b::c, d::{e, f}}: the first name of each part.
            let mut depth = 0;
            let mut start = true;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    ch if start && (ch.is_alphanumeric() || ch == '_') => {
                        found.push((ident(&group[k..]), line_of(at)));
                        start = false;
                    }
                    ch if !ch.is_whitespace() => start = false,
                    _ => {}
                }
            }
        } else {
            let name = ident(after);
            if !name.is_empty() {
                found.push((name, line_of(at)));
            }
        }
    };
    let word_start =
        |at: usize| at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
    for (at, _) in code.match_indices("crate::") {
        if word_start(at) {
            push_group(&code[at + "crate::".len()..], at, &mut found);
        }
    }
    for (at, _) in code.match_indices("super::") {
        if !word_start(at) || (at >= 2 && &code[at - 2..at] == "::") {
            continue;
        }
        let mut rest = &code[at..];
        let mut supers = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            supers += 1;
            rest = r.trim_start();
        }
        if supers >= depth {
            push_group(rest, at, &mut found);
        }
    }
    found.retain(|(name, _)| name != "self");
    found
}

/// The top-level module a file of `gateway/src` belongs to: `broker` for
/// `broker/codec.rs`, `gateway` for `gateway.rs`.
fn module_of(file: &str) -> &str {
    file.split('/').next().unwrap().trim_end_matches(".rs")
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

#[test]
fn no_file_in_gateway_src_has_unsafe() {
    let mut bad = Vec::new();
    for (file, text) in sources(&gateway_src()) {
        let code = code_only(&text);
        let b = code.as_bytes();
        let has = code.match_indices("unsafe").any(|(at, _)| {
            let before = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_');
            let after = b
                .get(at + "unsafe".len())
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
            before && after
        });
        if has {
            bad.push(format!(
                "gateway/src/{file} uses `unsafe`: perch has none of its own; use a safe API \
                 (a crate that wraps the call, such as socket2 or rustix) instead"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn no_file_in_gateway_src_passes_800_lines() {
    let mut bad = Vec::new();
    let files = sources(&gateway_src());
    for (file, text) in &files {
        let lines = text.lines().count();
        match OVERSIZED.iter().find(|(f, _)| f == file) {
            None if lines > MAX_LINES => bad.push(format!(
                "gateway/src/{file} has {lines} lines, over {MAX_LINES}: split it into modules a \
                 reader can hold (by concern, or one file per command or theme of tests)"
            )),
            Some((_, ceiling)) if lines > *ceiling => bad.push(format!(
                "gateway/src/{file} has {lines} lines, over its ceiling of {ceiling} in OVERSIZED \
                 (tests/tests/house.rs): it is already too long; move code out of it instead \
                 of adding to it"
            )),
            Some(_) if lines <= MAX_LINES => bad.push(format!(
                "gateway/src/{file} has {lines} lines, within the limit of {MAX_LINES}: remove \
                 its entry from OVERSIZED (tests/tests/house.rs)"
            )),
            _ => {}
        }
    }
    for (listed, _) in OVERSIZED {
        if !files.iter().any(|(f, _)| f == listed) {
            bad.push(format!(
                "gateway/src/{listed} no longer exists: remove it from OVERSIZED \
                 (tests/tests/house.rs)"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// Every function with a body in `code` (from [`code_only`]): its name,
/// the line of its `fn` and its length in lines.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let b = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    for (at, _) in code.match_indices("fn ") {
        if at > 0 && (b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_') {
            continue;
        }
        let rest = code[at + 3..].trim_start();
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue; // a `fn (..)` pointer type
        }
        let Some(open) = code[at..].find(['{', ';']).map(|k| at + k) else {
            continue;
        };
        if b[open] == b';' {
            continue; // a declaration without a body
        }
        let mut depth = 0usize;
        for (k, ch) in code[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        let lines = line_of(open + k) - line_of(at) + 1;
                        out.push((name, line_of(at), lines));
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

#[test]
fn no_function_in_gateway_src_passes_120_lines() {
    let mut bad = Vec::new();
    let mut seen = BTreeSet::new();
    for (file, text) in sources(&gateway_src()) {
        for (name, line, lines) in functions(&code_only(&text)) {
            if lines <= MAX_FN_LINES {
                continue;
            }
            match LONG_FUNCTIONS
                .iter()
                .find(|(f, n, _)| *f == file && *n == name)
            {
                None => bad.push(format!(
                    "gateway/src/{file}:{line}: `{name}` has {lines} lines, over \
                     {MAX_FN_LINES}: split it into functions that each do one named step"
                )),
                Some((_, _, ceiling)) if lines > *ceiling => bad.push(format!(
                    "gateway/src/{file}:{line}: `{name}` has {lines} lines, over its ceiling \
                     of {ceiling} in LONG_FUNCTIONS (tests/tests/house.rs): it is already too \
                     long; move steps out of it instead of adding to it"
                )),
                Some(_) => {
                    seen.insert((file.clone(), name));
                }
            }
        }
    }
    for (file, name, _) in LONG_FUNCTIONS {
        if !seen.contains(&(file.to_string(), name.to_string())) {
            bad.push(format!(
                "gateway/src/{file}: `{name}` is no longer over {MAX_FN_LINES} lines (or is \
                 gone): remove it from LONG_FUNCTIONS in tests/tests/house.rs"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn modules_import_only_down_the_layers() {
    let files = sources(&gateway_src());
    // Out-of-line test modules (`#[cfg(test)] mod tests;`) are test code,
    // as (folder + name) without `.rs`.
    let mut test_files = BTreeSet::new();
    let mut edges = BTreeSet::new();
    let mut bad = Vec::new();
    for (file, text) in &files {
        let (_, mods) = without_tests(&code_only(text));
        let dir = match file.rsplit_once('/') {
            Some((dir, "mod.rs")) => format!("{dir}/"),
            Some(_) => format!("{}/", file.trim_end_matches(".rs")),
            None if file == "lib.rs" || file == "main.rs" => String::new(),
            None => format!("{}/", file.trim_end_matches(".rs")),
        };
        for m in mods {
            test_files.insert(format!("{dir}{m}"));
        }
    }
    // A test module's file (`tests.rs`) and every file under its folder.
    let is_test = |file: &str| {
        test_files.iter().any(|m| {
            file.strip_prefix(m.as_str())
                .is_some_and(|rest| rest == ".rs" || rest.starts_with('/'))
        })
    };
    for (file, text) in &files {
        if file == "lib.rs" || file == "main.rs" || is_test(file) {
            continue;
        }
        let from = module_of(file);
        let Some(from_layer) = layer_of(from) else {
            bad.push(format!(
                "gateway/src/{file}: the module `{from}` has no layer: add it to LAYERS in \
                 tests/tests/house.rs and describe it in docs/architecture.md"
            ));
            continue;
        };
        let depth = file.matches('/').count() + 1;
        let (code, _) = without_tests(&code_only(text));
        for (to, line) in imported_modules(&code, depth) {
            if to == from {
                continue;
            }
            let Some(to_layer) = layer_of(&to) else {
                continue; // not a module (a macro or item at the crate root)
            };
            if to_layer < from_layer {
                continue;
            }
            if BACK_EDGES.contains(&(file.as_str(), to.as_str())) {
                edges.insert((file.clone(), to));
                continue;
            }
            bad.push(format!(
                "gateway/src/{file}:{line} imports `crate::{to}`, which is above `{from}` in \
                 the layers (docs/architecture.md, \"Import rules\"): move what it needs down \
                 (into the foundation, or into the lower stage that owns the type) or hand it \
                 over through a channel wired in gateway.rs"
            ));
        }
    }
    for (file, to) in BACK_EDGES {
        if !edges.contains(&(file.to_string(), to.to_string())) {
            bad.push(format!(
                "gateway/src/{file} no longer imports `crate::{to}`: remove the pair from \
                 BACK_EDGES in tests/tests/house.rs and the debt from docs/architecture.md"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_source_file_the_architecture_page_names_exists() {
    let root = crate::util::workspace_root();
    let src = gateway_src();
    let page = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let files: Vec<String> = sources(&src).into_iter().map(|(f, _)| f).collect();
    let mut bad = Vec::new();
    for name in page.split('`').skip(1).step_by(2) {
        if !name.ends_with(".rs") || name.contains(char::is_whitespace) {
            continue;
        }
        // `broker/codec.rs` from gateway/src (or the repository), a bare
        // `codec.rs` anywhere in gateway/src.
        let exists = if name.contains('/') {
            src.join(name).is_file() || root.join(name).is_file()
        } else {
            files.iter().any(|f| f.rsplit('/').next() == Some(name))
        };
        if !exists {
            bad.push(format!(
                "docs/architecture.md names `{name}`, which is not a file of gateway/src (or \
                 the repository): update the page to the code's layout"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn every_layer_is_a_module_and_named_in_the_architecture_page() {
    let src = gateway_src();
    let page = std::fs::read_to_string(crate::util::workspace_root().join("docs/architecture.md"))
        .unwrap();
    let mut bad = Vec::new();
    for module in LAYERS.iter().flat_map(|l| l.iter()) {
        let (file, dir) = (format!("{module}.rs"), format!("{module}/"));
        if !src.join(&file).is_file() && !src.join(&dir).is_dir() {
            bad.push(format!(
                "LAYERS in tests/tests/house.rs names `{module}`, which is not a module of \
                 gateway/src: remove it"
            ));
        }
        if !page.contains(&format!("`{file}`")) && !page.contains(&format!("`{dir}`")) {
            bad.push(format!(
                "docs/architecture.md does not name the module `{module}` (as `{file}` or \
                 `{dir}`): add it to the table of the parts"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The files of the repository: what git tracks, or, outside a git
/// checkout, every file but build output.
fn repository_files() -> Vec<PathBuf> {
    let root = crate::util::workspace_root();
    let git = std::process::Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output();
    if let Some(out) = git
        .ok()
        .filter(|o| o.status.success() && !o.stdout.is_empty())
    {
        return out
            .stdout
            .split(|b| *b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| root.join(String::from_utf8_lossy(p).as_ref()))
            .filter(|p| p.is_file())
            .collect();
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy();
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(&path, out);
                }
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&root, &mut out);
    out
}

#[test]
fn no_file_in_the_repository_refers_to_design_text_outside_it() {
    // Spelt in pieces, so this file does not match itself.
    let outside = [
        ["shared", "/"].concat(),
        ["DESIGN", ".md"].concat(),
        ["CRATES", ".md"].concat(),
    ];
    let root = crate::util::workspace_root();
    let mut bad = Vec::new();
    for path in repository_files() {
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        let text = String::from_utf8_lossy(&bytes);
        for (n, line) in text.lines().enumerate() {
            for word in &outside {
                if line.contains(word.as_str()) {
                    bad.push(format!(
                        "{}:{}: refers to {word}, which is not in the repository: write what \
                         it says into the repository's own docs (docs/architecture.md, \
                         docs/performance.md) and refer to those",
                        path.strip_prefix(&root).unwrap_or(&path).display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_source_scanner_sees_code_not_comments_or_strings() {
    let code = code_only(
        "use crate::a; // crate::b\n/* crate::c /* crate::d */ */ let s = \"crate::e\";\n\
         let r = r#\"crate::f \"# ; let b = br#\"crate::z\"#; let c = '\"'; let d = '\\''; fn f<'a>() { crate::g::h(); }\n\
         use crate::{i::j, k, l::{m, n}};\n",
    );
    let names: Vec<String> = imported_modules(&code, 1)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["a", "g", "i", "k", "l"]);
    // super:: reaches the crate root only with enough of them.
    let code = code_only("use super::x; use super::super::y;");
    let names: Vec<String> = imported_modules(&code, 2)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["y"]);
    let (code, mods) = without_tests(&code_only(
        "use crate::a;\n#[cfg(test)]\nmod tests;\n#[cfg(test)]\nmod more {\n use crate::b;\n}\n\
         #[cfg(test)]\nuse crate::c;\nuse crate::d;",
    ));
    assert_eq!(mods, ["tests"]);
    let names: Vec<String> = imported_modules(&code, 1)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["a", "d"]);
    let code = code_only(
        "fn a() {\n    let s = \"fn x() {\";\n}\ntrait T { fn b(&self); }\n\
         fn c<F: Fn(u8) -> u8>(f: F) -> u8\nwhere F: Copy\n{\n    f(1)\n}\n",
    );
    let found: Vec<(String, usize, usize)> = functions(&code);
    assert_eq!(
        found,
        [("a".to_owned(), 1, 3), ("c".to_owned(), 5, 5)],
        "{code}"
    );
}
