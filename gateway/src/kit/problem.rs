//! [`Problem`]: one thing wrong with a config. Each stage checks its own
//! section and reports with it; `config.rs` gathers them into one refusal.

use std::fmt;

/// One thing wrong with a config: the key it concerns and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, e.g. `broker.listeners[0].listen`.
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}
