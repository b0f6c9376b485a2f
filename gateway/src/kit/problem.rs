//! [`Problem`]: one thing wrong with a config. Each stage checks its own
//! section and reports with it; `config.rs` gathers them into one refusal
//! and, when they come from a file, says where in it each one is.

use std::fmt;

/// One thing wrong with a config: the key it concerns and what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// Dotted path of the key, e.g. `broker.listeners[0].listen` (empty for
    /// a TOML syntax error, which concerns no key).
    pub key: String,
    /// What is wrong and what to do about it.
    pub message: String,
    /// Where in the file (1-based), when the problem comes from one and the
    /// key is in it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    /// What the key or value should have been, as the parser put it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<String>,
    /// For a misspelt key or value, the valid one nearest to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub did_you_mean: Option<String>,
}

impl Problem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            key: key.into(),
            message: message.into(),
            line: None,
            column: None,
            expected: None,
            did_you_mean: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(near) = &self.did_you_mean {
            write!(f, "; did you mean `{near}`?")?;
        }
        Ok(())
    }
}
