//! The defaults the docs quote are the compiled-in ones: every figure
//! written as "`key` (VALUE" or "(`key`, VALUE" on docs/configuration.md,
//! where `key` is a numeric key of the config, is compared with what
//! `perch config default` prints, so a changed default fails here until
//! the page follows it.

use std::collections::BTreeMap;

use crate::util::{perch, workspace_root};

/// The default config as dotted key -> value (tables only; arrays of
/// tables such as `[[broker.listeners]]` are left out).
fn defaults() -> BTreeMap<String, toml::Value> {
    let out = perch(&["config", "default"]);
    assert!(out.status.success());
    let table: toml::Table = toml::from_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
    let mut flat = BTreeMap::new();
    flatten("", &table, &mut flat);
    flat
}

fn flatten(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(t) => flatten(&path, t, out),
            other => {
                out.insert(path, other.clone());
            }
        }
    }
}

/// `broker.max_filters`, `[buffer] min_free_bytes`, or a bare `max_fuel`
/// when exactly one section has it.
fn resolve(written: &str, defaults: &BTreeMap<String, toml::Value>) -> Option<String> {
    let key = match written.strip_prefix('[').and_then(|r| r.split_once("] ")) {
        Some((section, key)) => format!("{section}.{key}"),
        None => written.to_owned(),
    };
    if defaults.contains_key(&key) {
        return Some(key);
    }
    let mut found = defaults
        .keys()
        .filter(|k| k.rsplit('.').next() == Some(key.as_str()));
    match (found.next(), found.next()) {
        (Some(only), None) => Some(only.clone()),
        _ => None,
    }
}

/// "5,000,000,000 per invocation", "32 MiB", "5 s", "1,000 ms" in the
/// unit of `key` (its suffix: `_ms`, `_s`, `_bytes`, or a plain count).
fn parse_figure(key: &str, text: &str) -> Option<f64> {
    let text = text
        .trim_start()
        .trim_start_matches("default ")
        .trim_start();
    let number: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',' || *c == '.')
        .collect();
    let value: f64 = number.replace(',', "").trim_end_matches('.').parse().ok()?;
    let unit = text[number.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    let scale = match (key.rsplit('_').next().unwrap_or(""), unit) {
        ("ms", "ms") | ("s", "s") => 1.0,
        ("ms", "s") => 1_000.0,
        ("ms", "min") => 60_000.0,
        ("s", "min") => 60.0,
        ("s", "h") => 3_600.0,
        ("bytes", "KiB") => 1024.0,
        ("bytes", "MiB") => 1024.0 * 1024.0,
        ("bytes", "GiB") => 1024.0 * 1024.0 * 1024.0,
        // A plain count ("256", "16,384 events", "20 failures") or bytes.
        (_, u) if !["ms", "s", "min", "h", "KiB", "MiB", "GiB"].contains(&u) => 1.0,
        _ => return None,
    };
    Some(value * scale)
}

/// Every (key as written, the text after it) of the page's figures.
fn figures(page: &str) -> Vec<(String, String)> {
    let text = page.replace('\n', " ");
    let mut found = Vec::new();
    for (i, _) in text.match_indices('`') {
        let rest = &text[i + 1..];
        let Some(end) = rest.find('`') else { continue };
        let key = &rest[..end];
        if key.is_empty() || key.contains(['`', '=', '"']) {
            continue;
        }
        let after = &rest[end + 1..];
        // "`key` (VALUE" and "(`key`, VALUE".
        if let Some(figure) = after.strip_prefix(" (") {
            found.push((key.to_owned(), figure.to_owned()));
        } else if text[..i].ends_with('(') {
            if let Some(figure) = after.strip_prefix(", ") {
                found.push((key.to_owned(), figure.to_owned()));
            }
        }
    }
    found
}

#[test]
fn the_defaults_docs_configuration_md_quotes_are_the_compiled_in_ones() {
    let defaults = defaults();
    let page = std::fs::read_to_string(workspace_root().join("docs/configuration.md")).unwrap();
    let mut checked = Vec::new();
    let mut wrong = Vec::new();
    for (written, after) in figures(&page) {
        let Some(key) = resolve(&written, &defaults) else {
            continue;
        };
        let Some(default) = defaults[&key]
            .as_integer()
            .map(|i| i as f64)
            .or_else(|| defaults[&key].as_float())
        else {
            continue;
        };
        let quoted: String = after.chars().take(40).collect();
        match parse_figure(&key, &after) {
            Some(figure) if figure == default => checked.push(key),
            Some(figure) => wrong.push(format!(
                "`{written}` ({quoted}...): the page says {figure}, `perch config default` \
                 says {key} = {default}"
            )),
            None => wrong.push(format!(
                "`{written}` ({quoted}...): no figure this test can read; write the default \
                 as a number and a unit (ms, s, min, KiB, MiB) right after the key"
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/configuration.md quotes defaults the binary does not have:\n{}",
        wrong.join("\n")
    );
    assert!(
        checked.len() >= 12,
        "only {} figures checked ({checked:?}): has the page's wording changed?",
        checked.len()
    );
}

#[test]
fn the_figure_reader_reads_what_the_page_writes() {
    assert_eq!(parse_figure("a.timeout_ms", "5 s); at most"), Some(5000.0));
    assert_eq!(parse_figure("a.max_fuel", "5,000,000,000 per"), Some(5e9));
    assert_eq!(
        parse_figure("a.log_bytes", "32 MiB, counted"),
        Some(33554432.0)
    );
    assert_eq!(
        parse_figure("a.min_free_bytes", "default 16777216, 16"),
        Some(16777216.0)
    );
    assert_eq!(
        parse_figure("a.default_timeout_ms", "1,000 ms)"),
        Some(1000.0)
    );
    assert_eq!(parse_figure("a.timeout_ms", "a minute"), None);
    let found = figures("`broker.max_filters` (256) and (`tls_handshake_timeout_ms`, 10 s)");
    assert_eq!(
        found,
        [
            (
                "broker.max_filters".to_owned(),
                "256) and (`tls_handshake_timeout_ms`, 10 s)".to_owned()
            ),
            ("tls_handshake_timeout_ms".to_owned(), "10 s)".to_owned()),
        ]
    );
}
