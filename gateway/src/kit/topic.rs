//! MQTT topic names and filters: validation and matching.
//!
//! One implementation shared by the broker's ACLs and the functions'
//! triggers, written to the MQTT 3.1.1 §4.7 / 5.0 §4.7 rules:
//! `+` matches exactly one level, `#` matches the parent level and everything
//! below it and must be last, and a filter starting with a wildcard does not
//! match topics starting with `$` (§4.7.2). Matching allocates nothing.

/// Why a topic name or filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("is empty")]
    Empty,
    #[error("is longer than 65535 bytes")]
    TooLong,
    #[error("contains a NUL character")]
    Nul,
    #[error("contains a wildcard ('+' or '#'), which only filters may contain")]
    WildcardInName,
    #[error("uses '#' somewhere other than alone in the last level")]
    MisplacedHash,
    #[error("uses '+' together with other characters in one level")]
    MisplacedPlus,
}

/// Checks a topic *name* (what is published to).
pub fn validate_name(name: &str) -> Result<(), TopicError> {
    common(name)?;
    if name.contains(['+', '#']) {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Checks a topic *filter* (what is subscribed to or allowed by an ACL).
pub fn validate_filter(filter: &str) -> Result<(), TopicError> {
    common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::MisplacedHash);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::MisplacedPlus);
        }
    }
    Ok(())
}

fn common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > usize::from(u16::MAX) {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// Whether `topic` (a valid name) matches `filter` (a valid filter).
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => continue,
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Whether `topic` matches any of `filters`.
pub fn matches_any<S: AsRef<str>>(filters: &[S], topic: &str) -> bool {
    filters.iter().any(|f| matches(f.as_ref(), topic))
}

/// Whether every topic that `inner` can match is also matched by `outer`:
/// used to check that a subscription stays inside what an ACL allows.
pub fn covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && outer.starts_with(['+', '#']) {
        return false;
    }
    let mut inner_levels = inner.split('/');
    for o in outer.split('/') {
        if o == "#" {
            return true;
        }
        match inner_levels.next() {
            // `#` in the subscription reaches deeper than anything but `#`.
            Some("#") => return false,
            Some("+") if o == "+" => continue,
            Some("+") => return false,
            Some(i) if o == "+" || o == i => continue,
            _ => return false,
        }
    }
    inner_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_the_spec_says() {
        assert!(matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!matches("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(matches("sport/#", "sport"));
        assert!(matches("sport/#", "sport/tennis/player1"));
        assert!(matches("#", "a/b/c"));
        assert!(matches("+/+", "/finance"));
        assert!(matches("/+", "/finance"));
        assert!(!matches("+", "/finance"));
        assert!(matches("a/b", "a/b"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("a/b/c", "a/b"));
        assert!(matches("+/tennis/#", "sport/tennis"));
    }

    #[test]
    fn dollar_topics_are_not_matched_by_leading_wildcards() {
        assert!(!matches("#", "$SYS/uptime"));
        assert!(!matches("+/uptime", "$SYS/uptime"));
        assert!(matches("$SYS/#", "$SYS/uptime"));
        assert!(matches("$SYS/+", "$SYS/uptime"));
    }

    #[test]
    fn filters_are_validated() {
        assert_eq!(validate_filter("a/#"), Ok(()));
        assert_eq!(validate_filter("+/b/+"), Ok(()));
        assert_eq!(validate_filter("#"), Ok(()));
        assert_eq!(validate_filter("a/#/b"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a#"), Err(TopicError::MisplacedHash));
        assert_eq!(validate_filter("a/b+"), Err(TopicError::MisplacedPlus));
        assert_eq!(validate_filter(""), Err(TopicError::Empty));
        assert_eq!(validate_filter("a\0"), Err(TopicError::Nul));
    }

    #[test]
    fn names_may_not_hold_wildcards() {
        assert_eq!(validate_name("a/b"), Ok(()));
        assert_eq!(validate_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_name(""), Err(TopicError::Empty));
    }

    #[test]
    fn covers_checks_a_filter_inside_another() {
        assert!(covers("#", "a/b"));
        assert!(covers("a/#", "a/+/c"));
        assert!(covers("a/#", "a/#"));
        assert!(covers("a/+", "a/b"));
        assert!(covers("a/+", "a/+"));
        assert!(!covers("a/+", "a/#"));
        assert!(!covers("a/b", "a/+"));
        assert!(!covers("a/+", "b/+"));
        assert!(!covers("#", "$SYS/#"));
        assert!(!covers("a/b", "a/b/c"));
    }
}
