//! `perch config default|check`: the annotated default config, and the
//! check of a config file.

use super::{ConfigCommand, Reported, EXIT_BAD_CONFIG};
use crate::config::{Config, Problem, DEFAULT_TOML};

pub(super) fn command(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Default => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        ConfigCommand::Check { file, json: false } => Config::load(&file)
            .map(|_| println!("{}: ok", file.display()))
            .map_err(anyhow::Error::from),
        ConfigCommand::Check { file, json: true } => {
            let problems = match Config::load(&file) {
                Ok(_) => Vec::new(),
                Err(e) => e.problems(),
            };
            let name = file.display().to_string();
            let located: Vec<Located<'_>> = problems
                .iter()
                .map(|problem| Located {
                    file: &name,
                    problem,
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&located)?);
            if problems.is_empty() {
                Ok(())
            } else {
                Err(Reported(EXIT_BAD_CONFIG).into())
            }
        }
    }
}

/// One problem of `perch config check --json`: the file, then the
/// problem's fields (key, message, line, column, expected, did_you_mean).
#[derive(serde::Serialize)]
struct Located<'a> {
    file: &'a str,
    #[serde(flatten)]
    problem: &'a Problem,
}
