//! Reading a config file so that every mistake in it is reported at once,
//! each at its line and column with its key path.
//!
//! serde stops at the first key it cannot take, so the document is parsed
//! once into a tree that keeps the source spans (`toml::de::DeTable`), and
//! deserializing is repeated: each failure is located in the tree by its
//! span, recorded, and the entry at fault removed (it falls back to its
//! default), until the rest deserializes. A syntax error stops there: what
//! follows it is not reliable. The checks of the values ([`Config::validate`])
//! then run on what was read, and their problems are located by key path.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::{Config, Problem};

/// At most this many schema errors are collected from one file (each is a
/// deserialization of the whole document).
const MAX_SCHEMA_ERRORS: usize = 64;

/// Parses `text`: the config, or every problem found in it, each located.
pub(super) fn parse(text: &str) -> Result<Config, Vec<Problem>> {
    let (mut root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return Err(syntax
            .iter()
            .map(|e| locate(text, e.span(), Problem::new("", e.message())))
            .collect());
    }
    let original = root.clone();
    let mut problems = Vec::new();
    let config = loop {
        let error = match Config::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(config) => break config,
            Err(e) => e,
        };
        let span = error.span();
        let path = span.clone().and_then(|s| entry_at(root.get_ref(), s.start));
        let key = path.as_deref().map(render).unwrap_or_default();
        problems.push(locate(text, span, schema_problem(&key, error.message())));
        let removed = path.is_some_and(|p| remove(root.get_mut(), &p));
        if !removed || problems.len() >= MAX_SCHEMA_ERRORS {
            // Nothing more can be learnt by deserializing again.
            return Err(problems);
        }
    };
    if let Err(super::ConfigError::Invalid { problems: more, .. }) = config.validate("") {
        problems.extend(more.into_iter().map(|p| {
            let span = span_of(original.get_ref(), &p.key);
            locate(text, span, p)
        }));
    }
    // In the file's order; problems of values not in the file last.
    problems.sort_by_key(|p| (p.line.is_none(), p.line, p.column));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// One step of a key path: a table's key or an array's index.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// `broker.users[0].name`.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// The path of the deepest entry whose key or value covers byte `at`. A
/// table's span need not cover its entries (a `[table]` header is its own
/// span), so every branch is searched.
fn entry_at(table: &DeTable<'_>, at: usize) -> Option<Vec<Step>> {
    table.iter().find_map(|(key, value)| {
        let here = vec![Step::Key(key.get_ref().to_string())];
        if let Some(rest) = value_at(value, at) {
            return Some([here, rest].concat());
        }
        (covers(key.span(), at) || covers(value.span(), at)).then_some(here)
    })
}

/// Like [`entry_at`], inside a value: the steps below it.
fn value_at(value: &Spanned<DeValue<'_>>, at: usize) -> Option<Vec<Step>> {
    match value.get_ref() {
        DeValue::Table(t) => entry_at(t, at),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let here = vec![Step::Index(i)];
            if let Some(rest) = value_at(item, at) {
                return Some([here, rest].concat());
            }
            covers(item.span(), at).then_some(here)
        }),
        _ => None,
    }
}

fn covers(span: Range<usize>, at: usize) -> bool {
    span.start <= at && at < span.end.max(span.start + 1)
}

/// Removes the entry at `path`; whether there was one.
fn remove(table: &mut DeTable<'_>, path: &[Step]) -> bool {
    let Some((Step::Key(first), rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        return table.remove(first.as_str()).is_some();
    }
    table
        .iter_mut()
        .find(|(k, _)| k.get_ref() == first)
        .is_some_and(|(_, v)| remove_in(v.get_mut(), rest))
}

fn remove_in(value: &mut DeValue<'_>, path: &[Step]) -> bool {
    match (value, path) {
        (DeValue::Table(t), _) => remove(t, path),
        (DeValue::Array(items), [Step::Index(i)]) if *i < items.len() => {
            let i = *i;
            *items = std::mem::replace(items, toml::de::DeArray::new())
                .into_iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, v)| v)
                .collect();
            true
        }
        (DeValue::Array(items), [Step::Index(i), rest @ ..]) => items
            .get_mut(*i)
            .is_some_and(|item| remove_in(item.get_mut(), rest)),
        _ => false,
    }
}

/// The span of the entry a validation problem names (`broker.listeners[0].
/// listen`; any text after the path is ignored), or of its nearest
/// ancestor in the file when the key itself is not there (a default).
fn span_of(root: &DeTable<'_>, key: &str) -> Option<Range<usize>> {
    let path = key.split([':', ' ']).next().unwrap_or("");
    let mut steps = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (name, indexes) = part.split_once('[').unwrap_or((part, ""));
        steps.push(Step::Key(name.to_owned()));
        for index in indexes.split('[') {
            if let Ok(i) = index.trim_end_matches(']').parse() {
                steps.push(Step::Index(i));
            }
        }
    }
    let mut span = None;
    let mut table = Some(root);
    let mut value: Option<&Spanned<DeValue<'_>>> = None;
    for step in &steps {
        let next = match (step, table, value.map(|v| v.get_ref())) {
            (Step::Key(k), Some(t), _) => {
                t.iter()
                    .find(|(key, _)| key.get_ref() == k)
                    .map(|(key, v)| {
                        span = Some(key.span());
                        v
                    })
            }
            (Step::Index(i), _, Some(DeValue::Array(items))) => items.get(*i).inspect(|v| {
                span = Some(v.span());
            }),
            _ => None,
        };
        let Some(next) = next else { break };
        value = Some(next);
        table = match next.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => None,
        };
    }
    span
}

/// A problem from the deserializer: the key path, its message, what was
/// expected and, for a misspelt key or value, the nearest valid one.
fn schema_problem(key: &str, message: &str) -> Problem {
    let message = message.trim_end();
    let mut problem = Problem::new(key, message);
    if let Some((_, expected)) = message.split_once("expected ") {
        problem.expected = Some(expected.to_owned());
        let unknown = ["unknown field `", "unknown variant `"]
            .iter()
            .find_map(|p| message.strip_prefix(p))
            .and_then(|rest| rest.split('`').next());
        if let Some(unknown) = unknown {
            let choices = expected.split('`').skip(1).step_by(2);
            problem.did_you_mean = closest(unknown, choices);
        }
    }
    problem
}

/// The choice nearest to `word` by edit distance, if near enough to be a
/// likely misspelling.
fn closest<'a>(word: &str, choices: impl Iterator<Item = &'a str>) -> Option<String> {
    let limit = (word.chars().count() / 3).max(2);
    choices
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c.to_owned())
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Sets the problem's line and column (1-based, in characters) from the
/// byte offset where `span` starts.
fn locate(text: &str, span: Option<Range<usize>>, mut problem: Problem) -> Problem {
    if let Some(span) = span {
        let start = span.start.min(text.len());
        let before = text.get(..start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        problem.line = Some(line);
        problem.column = Some(column);
    }
    problem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misspellings_find_the_nearest_key() {
        let keys = ["id", "data_dir", "shutdown_timeout_ms"];
        assert_eq!(
            closest("data_dri", keys.into_iter()),
            Some("data_dir".into())
        );
        assert_eq!(closest("zzzzzzzz", keys.into_iter()), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_mistake_is_found_and_located() {
        let text = "[gateway]\nid = \"a\"\ndata_dri = \"/x\"\n\n[broker]\n\
                    max_packet_size_bytes = \"big\"\nmax_conections = 3\n";
        let problems = parse(text).unwrap_err();
        let found: Vec<_> = problems
            .iter()
            .map(|p| (p.key.as_str(), p.line, p.column, p.did_you_mean.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("gateway.data_dri", Some(3), Some(1), Some("data_dir")),
                ("broker.max_packet_size_bytes", Some(6), Some(25), None),
                (
                    "broker.max_conections",
                    Some(7),
                    Some(1),
                    Some("max_connections")
                ),
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn value_problems_are_located_by_their_key() {
        let text = "[gateway]\nid = \"a/b\"\n";
        let problems = parse(text).unwrap_err();
        assert_eq!(problems[0].key, "gateway.id");
        assert_eq!((problems[0].line, problems[0].column), (Some(2), Some(1)));
    }
}
