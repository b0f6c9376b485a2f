//! The `perch` binary: all logic lives in the library (see `lib.rs`).

use clap::Parser;

fn main() -> std::process::ExitCode {
    perch::cli::main(perch::cli::Cli::parse())
}
