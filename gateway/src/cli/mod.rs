//! The `perch` command line: the clap definitions and the dispatch, one
//! file per command. `main.rs` calls [`main`] and turns its result into an
//! exit code.
//!
//! - the gateway: `perch run` (`run.rs`), `perch demo` ([`demo`]:
//!   simulated sensors, the example functions, a stand-in cloud, on one
//!   screen), `perch status` (`status.rs`), `perch config` (`config.rs`),
//!   `perch passwd` (`passwd.rs`), `perch buffer` (`buffer.rs`);
//! - functions on a running gateway, over MQTT: `perch fn deploy`
//!   (`deploy.rs`), `rollback|promote|remove` (`switch.rs`), `invoke`
//!   (`invoke.rs`), `replay` (`replay.rs`), `logs` (`logs.rs`),
//!   `list|status` (`list.rs`);
//! - the function author's loop without a gateway: `perch fn
//!   new|build|test|sign` (`author.rs`, over [`devkit`], `fn_test.rs` and
//!   [`keys`]), and
//!   signing keys, `perch key` ([`keys`]).

mod author;
mod buffer;
mod config;
pub mod demo;
mod deploy;
pub mod devkit;
mod fn_test;
mod invoke;
pub mod keys;
mod list;
mod logs;
mod passwd;
mod replay;
mod run;
mod status;
mod switch;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::functions::control;
use crate::telemetry::LogFormat;

/// Serverless functions at the edge: an MQTT broker, sandboxed WebAssembly
/// functions and store-and-forward, in one binary.
///
/// `-h` is `--host` on the commands that talk to a gateway (as in
/// `mosquitto_sub -h HOST`), so help is `--help` on every command; a bare
/// `perch -h` still prints this help.
#[derive(Debug, Parser)]
#[command(
    name = "perch",
    version,
    propagate_version = true,
    disable_help_flag = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Print help (`--help` on every command; `-h` only here).
    #[arg(short = 'h', action = clap::ArgAction::Help)]
    short_help: Option<bool>,
    /// Print help.
    #[arg(long, global = true, action = clap::ArgAction::Help)]
    help: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Watch events flow: simulated sensors, the example functions, the
    /// buffer and a stand-in cloud, on one screen. Needs no setup or network.
    Demo(demo::DemoArgs),
    /// Print the default config or check a config file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Hash a password for [[broker.users]].password_hash: on a terminal it
    /// asks twice without echo; from a pipe it reads one line.
    Passwd,
    /// Deploy, roll back, remove and inspect functions on a running gateway
    /// (over MQTT).
    #[command(subcommand)]
    Fn(FnCommand),
    /// Signing keys for deploy bundles (functions.trusted_keys).
    #[command(subcommand)]
    Key(KeyCommand),
    /// Look into the store-and-forward buffer (works while perch runs).
    #[command(subcommand)]
    Buffer(BufferCommand),
    /// Show a running gateway's status (its retained perch/<id>/status
    /// summary) as a table.
    Status {
        #[command(flatten)]
        target: FnTarget,
        /// Print the summary as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a signing key: writes the private key (PEM, mode 0600) and
    /// prints its public key as functions.trusted_keys takes it.
    Generate {
        /// Where to write the private key; never overwritten.
        #[arg(long, short, default_value = keys::DEFAULT_KEY_FILE)]
        out: PathBuf,
        /// Print {"private_key_file", "public_key"} as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the public key of a private key file.
    Public {
        /// The private key (PEM).
        key: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum FnCommand {
    /// Deploy a function: FILE.wasm with --manifest (signed on the fly with
    /// --key), or a bundle made by `perch fn sign`. Prints one line saying
    /// what was deployed (progress goes to stderr), or with --json the
    /// gateway's JSON reply; exits non-zero if the gateway refused it.
    Deploy {
        /// The WebAssembly module, or a bundle.
        wasm: PathBuf,
        /// The function's manifest (TOML, see sdk/ABI.md); not with a bundle.
        #[arg(long, short)]
        manifest: Option<PathBuf>,
        /// Sign the bundle with this private key (`perch key generate`).
        #[arg(long)]
        key: Option<PathBuf>,
        /// Deploy even if the version is older than the running one.
        #[arg(long)]
        force: bool,
        /// Print the gateway's JSON reply instead of a line of text, and no
        /// progress on stderr.
        #[arg(long)]
        json: bool,
        /// Run it as a canary on this share of the events (1-99 percent)
        /// beside the running version, until `perch fn promote` (rolled
        /// back automatically if it fails too often).
        #[arg(long, value_name = "PERCENT", conflicts_with = "shadow")]
        canary: Option<u8>,
        /// Run it as a shadow on a copy of the events, its outputs
        /// discarded and compared with the running version's.
        #[arg(long)]
        shadow: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Make a function's canary or shadow its only version.
    Promote {
        /// The function's name.
        name: String,
        /// Print the gateway's JSON reply instead of a line of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Build a signed bundle from a module and its manifest, for
    /// `perch fn deploy BUNDLE` (or any MQTT client) later.
    Sign {
        /// The WebAssembly module.
        wasm: PathBuf,
        /// The function's manifest (TOML).
        #[arg(long, short)]
        manifest: PathBuf,
        /// The private key (`perch key generate`).
        #[arg(long)]
        key: PathBuf,
        /// Where to write the bundle (default: the module's path, .bundle).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Return a function to the version that ran before the current one,
    /// exactly as it was deployed.
    Rollback {
        /// The function's name.
        name: String,
        /// Print the gateway's JSON reply instead of a line of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Stop a function and delete its versions and its state.
    Remove {
        /// The function's name.
        name: String,
        /// Print the gateway's JSON reply instead of a line of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Run a function once on one event through the gateway and print what
    /// it published, emitted and forwarded and what it logged. Nothing is
    /// delivered: the outputs are captured, the function's state and
    /// counters are left as they were. Exits non-zero if the invocation
    /// failed.
    Invoke {
        /// The function's name.
        name: String,
        /// The event's payload: JSON.
        #[arg(long, conflicts_with = "payload_file")]
        payload: Option<String>,
        /// The event's payload, read from this file (any UTF-8 text).
        #[arg(long, value_name = "FILE")]
        payload_file: Option<PathBuf>,
        /// The event's topic (default: the function's first trigger, each
        /// wildcard level replaced by `invoke`).
        #[arg(long)]
        topic: Option<String>,
        /// Print the gateway's JSON reply instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Run a version of a function over the trigger events the gateway kept
    /// for it (manifest option `[replay] keep_events_s`) since DURATION ago,
    /// in order, on a copy of its state, and print a summary: events run,
    /// failures, outputs by kind, the first outputs. Nothing is delivered.
    /// (`--version` names the function's version here, not perch's.)
    #[command(disable_version_flag = true)]
    Replay {
        /// The function's name.
        name: String,
        /// How far back: a whole number and a unit, such as 30s, 10m, 1h, 1d.
        #[arg(long, value_parser = replay::parse_since)]
        since: String,
        /// A version the gateway keeps (default: the live one); the reply
        /// then also counts the events whose outputs differ from the live
        /// version's.
        #[arg(long)]
        version: Option<String>,
        /// Print the gateway's JSON reply instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Print a function's log lines as it writes them (live: lines are not
    /// kept), for --timeout-ms or, with --follow, until Ctrl-C.
    Logs {
        /// The function's name.
        name: String,
        /// Keep printing until Ctrl-C.
        #[arg(long, short)]
        follow: bool,
        /// Print each line as the JSON the gateway publishes.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// List the gateway's functions with their status and counters.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// One function's status (its retained status topic).
    Status {
        /// The function's name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: FnTarget,
    },
    /// Start a function project: handler, manifest, tests, sample events.
    New {
        /// The function's name (lowercase letters, digits, '-').
        name: String,
        /// The language of the handler.
        #[arg(long, value_enum, default_value_t = devkit::Lang::Rust)]
        lang: devkit::Lang,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Build the project in DIR to build/NAME.wasm and check it against the
    /// perch runtime.
    Build {
        /// The project (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Print what was built as JSON on stdout: name, version, wasm,
        /// manifest, bytes, sha256, seconds (progress stays on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Build the project, then run it on sample events in the real runtime,
    /// locally, and print what it publishes, emits and forwards. Exits 1 if
    /// an event failed.
    Test {
        /// The project (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Events, one JSON object a line (default: DIR/events.jsonl).
        #[arg(long)]
        events: Option<PathBuf>,
        /// Run the module at this path instead of building.
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Print one JSON object: "events" (each with its topic, payload,
        /// outputs and error) and "summary" (the counts).
        #[arg(long)]
        json: bool,
    },
}

/// Which gateway `perch fn` and `perch status` talk to. The short flags are
/// mosquitto_sub's: `-h HOST`, `-p PORT`, `-u USER`, `-P PASSWORD`.
#[derive(Debug, clap::Args)]
pub struct FnTarget {
    /// The gateway's MQTT broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883", env = "PERCH_BROKER")]
    pub broker: String,
    /// The broker's host; replaces the host of --broker.
    #[arg(short = 'h', long)]
    pub host: Option<String>,
    /// The broker's port; replaces the port of --broker.
    #[arg(short = 'p', long)]
    pub port: Option<u16>,
    /// The gateway's id (gateway.id; the gateway's host name when unset).
    #[arg(long, env = "PERCH_GATEWAY")]
    pub gateway: Option<String>,
    /// MQTT username, for listeners that require a login.
    #[arg(long, short = 'u', visible_alias = "user", env = "PERCH_USERNAME")]
    pub username: Option<String>,
    /// MQTT password (prefer the environment variable).
    #[arg(long, short = 'P', env = "PERCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// How long to wait for the gateway's reply.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum BufferCommand {
    /// Records waiting for upstream: count, bytes, oldest.
    Stats {
        #[command(flatten)]
        dir: DataDirArgs,
        /// Print {"buffer", "records", "bytes", "oldest_ms", "oldest_age_s"}
        /// as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The newest records, oldest first.
    Tail {
        #[command(flatten)]
        dir: DataDirArgs,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
        /// Print a JSON array of {"seq", "stream", "kind", "created_ms",
        /// "payload"}.
        #[arg(long)]
        json: bool,
    },
    /// Records the upstream refused for good (HTTP 4xx), with its answer.
    Dead {
        #[command(flatten)]
        dir: DataDirArgs,
        /// Print a JSON array of the records, each with "status",
        /// "response" and "failed_ms".
        #[arg(long)]
        json: bool,
    },
    /// Put every dead letter back in the queue to be sent again.
    Replay {
        #[command(flatten)]
        dir: DataDirArgs,
        /// Print {"requeued": N} as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct DataDirArgs {
    /// The gateway's data directory (default: gateway.data_dir of --config,
    /// else ./perch-data).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Config file to take gateway.data_dir from.
    #[arg(long, short, env = "PERCH_CONFIG")]
    pub config: Option<PathBuf>,
}

impl DataDirArgs {
    fn resolve(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        Ok(match &self.config {
            Some(path) => Config::load(path)?.gateway.data_dir,
            None => Config::default().gateway.data_dir,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Config file (TOML). Without one, perch runs on the defaults
    /// (`perch config default` prints them).
    #[arg(long, short, env = "PERCH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for perch's state; overrides gateway.data_dir.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the main MQTT listener; overrides the first
    /// [[broker.listeners]] entry. Port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Port of the main MQTT listener (as `mosquitto -p`): the first
    /// [[broker.listeners]] entry keeps its address and takes this port.
    #[arg(short = 'p', long, conflicts_with = "listen")]
    pub port: Option<u16>,
    /// Debug logging from perch (added to RUST_LOG or the default filter).
    #[arg(short = 'v', long)]
    pub verbose: bool,
    /// Address of the admin HTTP listener (metrics, health, status page);
    /// overrides admin.listen. Port 0 picks a free port.
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Log format (human lines are journald-friendly under systemd).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the annotated default config.
    Default,
    /// Check a config file; print every problem (file:line:column, key,
    /// what was expected) and exit 2 if there is any.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Print the problems as a JSON array (`[]` when there are none):
        /// file, line, column, key, message, expected, did_you_mean.
        #[arg(long)]
        json: bool,
    },
}

/// Exit code for a config that was refused.
const EXIT_BAD_CONFIG: u8 = 2;

/// A failure the command has already reported in full (as JSON on
/// stdout): `main` exits with its code and prints nothing more.
#[derive(Debug, thiserror::Error)]
#[error("exit code {0}")]
struct Reported(u8);

/// Runs the command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Demo(args) => demo::command(args),
        Command::Config(command) => config::command(command),
        Command::Passwd => passwd::passwd(),
        Command::Fn(command) => fn_command(command),
        Command::Key(command) => keys::command(command),
        Command::Buffer(command) => buffer::buffer(command),
        Command::Status { target, json } => status::status(target, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Reported>().is_some() => {
            ExitCode::from(e.downcast_ref::<Reported>().map_or(1, |r| r.0))
        }
        Err(e) => {
            eprintln!("error: {}", chain(&e));
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes joined with `: `, as `{:#}` prints them, but
/// each message once: a cause whose text is already there is left out
/// (many of perch's messages embed their source, "cannot read X: {source}",
/// and would otherwise print an OS error twice).
fn chain(e: &anyhow::Error) -> String {
    let mut text = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// `perch fn ...`: the author's commands run here; the others talk to a
/// gateway over MQTT, on a runtime of their own.
fn fn_command(command: FnCommand) -> anyhow::Result<()> {
    match command {
        FnCommand::New { name, lang, dir } => return author::new(&name, lang, dir.as_deref()),
        FnCommand::Build { dir, json } => return author::build(&dir, json),
        FnCommand::Sign {
            wasm,
            manifest,
            key,
            out,
        } => return author::sign(&wasm, &manifest, &key, out),
        FnCommand::Test {
            dir,
            events,
            wasm,
            json,
        } => return author::test(&dir, events, wasm, json),
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match command {
        FnCommand::Deploy {
            wasm,
            manifest,
            key,
            force,
            json,
            canary,
            shadow,
            target,
        } => {
            let options = control::DeployOptions {
                force,
                request_id: None,
                canary,
                shadow,
            };
            let (manifest, key) = (manifest.as_deref(), key.as_deref());
            deploy::deploy(&runtime, &wasm, manifest, key, options, json, target)
        }
        FnCommand::Rollback { name, json, target } => {
            switch::switch(&runtime, "rollback", &name, json, target)
        }
        FnCommand::Promote { name, json, target } => {
            switch::switch(&runtime, "promote", &name, json, target)
        }
        FnCommand::Remove { name, json, target } => {
            switch::switch(&runtime, "remove", &name, json, target)
        }
        FnCommand::Invoke {
            name,
            payload,
            payload_file,
            topic,
            json,
            target,
        } => invoke::invoke(&runtime, name, payload, payload_file, topic, json, target),
        FnCommand::Replay {
            name,
            since,
            version,
            json,
            target,
        } => replay::replay(&runtime, name, since, version, json, target),
        FnCommand::Logs {
            name,
            follow,
            json,
            target,
        } => logs::logs(&runtime, &name, follow, json, target),
        FnCommand::List { json, target } => list::list(&runtime, json, target),
        FnCommand::Status { name, json, target } => list::status(&runtime, &name, json, target),
        FnCommand::New { .. }
        | FnCommand::Build { .. }
        | FnCommand::Test { .. }
        | FnCommand::Sign { .. } => {
            unreachable!("handled above")
        }
    }
}

/// The gateway `perch fn` and `perch status` talk to: `--broker`, its host
/// or port replaced by `--host` / `--port`.
fn endpoint(t: FnTarget) -> anyhow::Result<control::Endpoint> {
    let (host, port) = split_broker(&t.broker)?;
    let host = t.host.unwrap_or(host);
    anyhow::ensure!(
        !host.is_empty(),
        "--host is empty: give the gateway's host name or address, e.g. -h 192.168.1.20"
    );
    let port = t.port.unwrap_or(port);
    anyhow::ensure!(
        t.password.is_none() || t.username.is_some(),
        "a password was given (--password or PERCH_PASSWORD) but no user name: give it with \
         --user NAME (-u, or PERCH_USERNAME)"
    );
    let broker = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(control::Endpoint {
        broker,
        gateway: t
            .gateway
            .unwrap_or_else(|| crate::config::GatewayConfig::default().resolved_id()),
        username: t.username,
        password: t.password,
        timeout: Duration::from_millis(t.timeout_ms),
    })
}

/// `host:port` (`[v6]:port` for IPv6) into its parts; a bad port is an
/// error rather than a silent 1883.
fn split_broker(broker: &str) -> anyhow::Result<(String, u16)> {
    let bad = || {
        anyhow::anyhow!(
            "--broker {broker:?} (or PERCH_BROKER) is not host:port: write it as \
             127.0.0.1:1883 or [::1]:1883, or give -h HOST and -p PORT"
        )
    };
    let (host, port) = broker.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    let host = host.strip_prefix('[').unwrap_or(host);
    let host = host.strip_suffix(']').unwrap_or(host);
    Ok((host.to_owned(), port))
}
