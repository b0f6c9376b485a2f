//! `[functions]`: gateway-wide settings of the functions stage. Per-function
//! limits live in each function's manifest, not here.

use serde::Deserialize;

use crate::config::Problem;

/// `[functions]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FunctionsConfig {
    /// Most functions deployed at once. Each has its own thread, its own
    /// broker link and its queue, so this bounds what functions can take.
    pub max_functions: usize,
    /// How often changed function state is written to SQLite (one
    /// transaction per function per interval). State written by a function
    /// in the last interval before a crash or power cut is lost; a clean
    /// shutdown writes everything.
    pub state_commit_interval_ms: u64,
    /// Records (`emit`, `forward`) waiting for the aggregate and buffer
    /// stages. When it is full, functions get `FULL` and the record is
    /// dropped and counted.
    pub output_queue_len: usize,
}

impl Default for FunctionsConfig {
    fn default() -> Self {
        FunctionsConfig {
            max_functions: 64,
            state_commit_interval_ms: 1_000,
            output_queue_len: 1_024,
        }
    }
}

impl FunctionsConfig {
    pub(crate) fn validate(&self, problems: &mut Vec<Problem>) {
        if self.max_functions == 0 {
            problems.push(Problem::new(
                "functions.max_functions",
                "must be at least 1 (no functions at all cannot be configured here)",
            ));
        }
        if self.state_commit_interval_ms == 0 {
            problems.push(Problem::new(
                "functions.state_commit_interval_ms",
                "must be greater than 0: a commit per write is what this interval avoids",
            ));
        }
        if self.output_queue_len == 0 {
            problems.push(Problem::new(
                "functions.output_queue_len",
                "must be greater than 0",
            ));
        }
    }
}
