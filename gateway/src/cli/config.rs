//! `perch config default|check`: the annotated default config, and the
//! check of a config file.

use super::ConfigCommand;
use crate::config::{Config, DEFAULT_TOML};

pub(super) fn command(command: ConfigCommand) -> anyhow::Result<()> {
    match command {
        ConfigCommand::Default => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        ConfigCommand::Check { file } => Config::load(&file)
            .map(|_| println!("{}: ok", file.display()))
            .map_err(anyhow::Error::from),
    }
}
