//! The `perch` command line. Each subcommand is a thin layer over a module;
//! `main.rs` calls [`main`] and turns its result into an exit code. Two
//! subcommands are more than a layer and have their own module: [`demo`]
//! (`perch demo`) and [`devkit`] (`perch fn new|build|test`); [`keys`]
//! holds signing (`perch key generate|public`, `perch fn sign`, and the
//! bundle `perch fn deploy` sends).

pub mod demo;
pub mod devkit;
pub mod keys;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_TOML};
use crate::telemetry::{self, LogFormat};

/// Serverless functions at the edge: an MQTT broker, sandboxed WebAssembly
/// functions and store-and-forward, in one binary.
#[derive(Debug, Parser)]
#[command(name = "perch", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
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
    /// Hash a password for [[broker.users]].password_hash (reads it from stdin).
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
        #[arg(long, value_parser = parse_since)]
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
    },
}

/// Which gateway `perch fn` talks to.
#[derive(Debug, clap::Args)]
pub struct FnTarget {
    /// The gateway's MQTT broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883", env = "PERCH_BROKER")]
    pub broker: String,
    /// The gateway's id (gateway.id; the gateway's host name when unset).
    #[arg(long, env = "PERCH_GATEWAY")]
    pub gateway: Option<String>,
    /// MQTT username, for listeners that require a login.
    #[arg(long, visible_alias = "user", env = "PERCH_USERNAME")]
    pub username: Option<String>,
    /// MQTT password (prefer the environment variable).
    #[arg(long, env = "PERCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// How long to wait for the gateway's reply.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
}

#[derive(Debug, Subcommand)]
pub enum BufferCommand {
    /// Records waiting for upstream: count, bytes, oldest.
    Stats(DataDirArgs),
    /// The newest records, oldest first.
    Tail {
        #[command(flatten)]
        dir: DataDirArgs,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 10)]
        count: usize,
    },
    /// Records the upstream refused for good (HTTP 4xx), with its answer.
    Dead(DataDirArgs),
    /// Put every dead letter back in the queue to be sent again.
    Replay(DataDirArgs),
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
    /// Check a config file; print every problem and exit non-zero if any.
    Check {
        /// The file to check.
        file: PathBuf,
    },
}

/// Exit code for a config that was refused.
const EXIT_BAD_CONFIG: u8 = 2;

/// Runs the command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Demo(args) => demo(args),
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => Config::load(&file)
            .map(|_| println!("{}: ok", file.display()))
            .map_err(anyhow::Error::from),
        Command::Passwd => passwd(),
        Command::Fn(command) => fn_command(command),
        Command::Key(command) => key_command(command),
        Command::Buffer(command) => buffer(command),
        Command::Status { target, json } => status(target, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(EXIT_BAD_CONFIG)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init(args.log_format);
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = args.data_dir {
        config.gateway.data_dir = dir;
    }
    if let Some(addr) = args.listen {
        match config.broker.listeners.first_mut() {
            Some(l) => l.listen = addr,
            None => config.broker.listeners.push(Default::default()),
        }
        config.broker.listeners[0].listen = addr;
    }
    if let Some(addr) = args.admin_listen {
        config.admin.listen = addr;
    }
    // The overrides may have made a valid file invalid (e.g. --listen on a
    // network address with anonymous clients allowed).
    let origin = match &args.config {
        Some(p) => format!("{} with command-line overrides", p.display()),
        None => "the default config with command-line overrides".to_owned(),
    };
    config.validate(&origin)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("perch")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        // Handlers first: a signal that comes right after the ready line
        // must stop the gateway cleanly, not kill it.
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        crate::gateway::run(config, shutdown)
            .await
            .map_err(anyhow::Error::from)
    });
    // Connections still open are dropped here.
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

fn demo(args: demo::DemoArgs) -> anyhow::Result<()> {
    // The screen is the demo's output; the log says only what went wrong.
    telemetry::init_with_default_filter(LogFormat::Human, "warn,rumqttd=off");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("perch-demo")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = shutdown_signal().context("cannot install signal handlers")?;
        demo::run(args, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Installs SIGINT and SIGTERM handlers now; the future resolves on the
/// first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!("{name} received, shutting down");
    })
}

fn endpoint(t: FnTarget) -> crate::functions::control::Endpoint {
    crate::functions::control::Endpoint {
        broker: t.broker,
        gateway: t
            .gateway
            .unwrap_or_else(|| crate::config::GatewayConfig::default().resolved_id()),
        username: t.username,
        password: t.password,
        timeout: Duration::from_millis(t.timeout_ms),
    }
}

fn status(target: FnTarget, json: bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(crate::telemetry::admin::status::fetch(&endpoint(target)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!(
            "{}",
            crate::telemetry::admin::status::table(&summary, crate::buffer::now_ms())
        );
    }
    Ok(())
}

fn fn_command(command: FnCommand) -> anyhow::Result<()> {
    use crate::functions::control;
    match command {
        FnCommand::New { name, lang, dir } => {
            let dir = devkit::new(&name, lang, dir.as_deref())?;
            println!(
                "created {dir}: build it with `cd {dir} && perch fn build`, try it with \
                 `perch fn test`",
                dir = dir.display()
            );
            return Ok(());
        }
        FnCommand::Build { dir } => {
            devkit::build(&dir)?;
            return Ok(());
        }
        FnCommand::Sign {
            wasm,
            manifest,
            key,
            out,
        } => {
            let (out, size) = keys::sign(&wasm, &manifest, &key, out)?;
            println!("{}", out.display());
            eprintln!(
                "signed {} ({size} bytes): deploy it with `perch fn deploy {}`",
                out.display(),
                out.display()
            );
            return Ok(());
        }
        FnCommand::Test { dir, events, wasm } => {
            telemetry::init(LogFormat::Human);
            let (module, manifest) = match wasm {
                Some(path) => (path, devkit::read_manifest(&dir)?),
                None => devkit::build(&dir)?,
            };
            let wasm = std::fs::read(&module)
                .with_context(|| format!("cannot read {}", module.display()))?;
            let events = events.unwrap_or_else(|| dir.join("events.jsonl"));
            let report = devkit::test(manifest, &wasm, &events, &mut std::io::stdout().lock())?;
            anyhow::ensure!(
                report.failures == 0,
                "{} of {} events failed (see FAILED above)",
                report.failures,
                report.events
            );
            return Ok(());
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let verb = match &command {
        FnCommand::Rollback { .. } => "rollback",
        FnCommand::Promote { .. } => "promote",
        _ => "remove",
    };
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
            let bundle = keys::deploy_bundle(&wasm, manifest.as_deref(), key.as_deref())?;
            let options = control::DeployOptions {
                force,
                request_id: None,
                canary,
                shadow,
            };
            let mut progress = Progress::new(!json);
            let uploading = format!("uploading {}", human_bytes(bundle.len()));
            progress.step(&uploading);
            let ticker = progress.ticker(uploading, bundle.len());
            let started = std::time::Instant::now();
            let endpoint = endpoint(target);
            let mut ticker = Some(ticker);
            let reply = runtime.block_on(control::deploy_with_progress(
                &endpoint,
                &options,
                bundle,
                &mut || {
                    if let Some(t) = ticker.take() {
                        t.stop();
                    }
                    progress.step("sent, waiting for the gateway");
                },
            ));
            if let Some(t) = ticker.take() {
                t.stop();
            }
            let reply = match reply {
                Ok(reply) => reply,
                Err(e) => {
                    progress.done("failed");
                    return Err(e.into());
                }
            };
            let elapsed = started.elapsed().as_millis();
            progress.done(if reply.ok { "done" } else { "refused" });
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else if reply.ok {
                println!(
                    "{}",
                    deploy_summary(&reply, &options, &endpoint.gateway, elapsed)
                );
            }
            if let Some(warning) = &reply.warning {
                eprintln!("warning: {warning}");
            }
            match reply.error {
                None if reply.ok => Ok(()),
                error => anyhow::bail!(
                    "the gateway refused the deploy: {}",
                    error.unwrap_or_default()
                ),
            }
        }
        FnCommand::Rollback { name, json, target }
        | FnCommand::Remove { name, json, target }
        | FnCommand::Promote { name, json, target } => {
            let command = verb;
            let endpoint = endpoint(target);
            let started = std::time::Instant::now();
            let reply = runtime.block_on(control::command(&endpoint, command, &name))?;
            let elapsed = started.elapsed().as_millis();
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else if reply.ok {
                println!(
                    "{}",
                    command_summary(&reply, &name, &endpoint.gateway, elapsed)
                );
            }
            if let Some(warning) = &reply.warning {
                eprintln!("warning: {warning}");
            }
            match reply.error {
                None if reply.ok => Ok(()),
                error => anyhow::bail!(
                    "the gateway refused the {command}: {}",
                    error.unwrap_or_default()
                ),
            }
        }
        FnCommand::Invoke {
            name,
            payload,
            payload_file,
            topic,
            json,
            target,
        } => {
            let payload = match (payload, payload_file) {
                (Some(text), _) => {
                    if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                        anyhow::bail!(
                            "--payload is not valid JSON ({e}): give a JSON value such as \
                             '{{\"temp\": 21.5}}' (quoted for the shell), or any text with \
                             --payload-file FILE"
                        );
                    }
                    text
                }
                (None, Some(path)) => {
                    let bytes = std::fs::read(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    String::from_utf8(bytes).map_err(|e| {
                        anyhow::anyhow!(
                            "{} is not UTF-8 text ({e}); invoke takes a text payload",
                            path.display()
                        )
                    })?
                }
                (None, None) => String::new(),
            };
            let request = control::InvokeRequest {
                name,
                topic,
                payload,
                request_id: None,
            };
            let reply = runtime.block_on(control::invoke(&endpoint(target), request))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else if reply.error.is_none() {
                print!("{}", invoke_report(&reply));
            }
            if let Some(error) = reply.error {
                anyhow::bail!("the gateway refused the invoke: {error}");
            }
            match reply.failure {
                None => Ok(()),
                Some(failure) => anyhow::bail!("the invocation failed: {failure}"),
            }
        }
        FnCommand::Replay {
            name,
            since,
            version,
            json,
            target,
        } => {
            let request = control::ReplayRequest {
                name,
                since,
                version,
                request_id: None,
            };
            let reply = runtime.block_on(control::replay(&endpoint(target), request))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&reply)?);
            } else if reply.error.is_none() {
                print!("{}", replay_report(&reply));
            }
            match reply.error {
                None => Ok(()),
                Some(error) => anyhow::bail!("the gateway refused the replay: {error}"),
            }
        }
        FnCommand::Logs {
            name,
            follow,
            json,
            target,
        } => {
            let endpoint = endpoint(target);
            let timeout = endpoint.timeout;
            let until = async move {
                if follow {
                    let _ = tokio::signal::ctrl_c().await;
                } else {
                    tokio::time::sleep(timeout).await;
                }
            };
            runtime.block_on(control::follow_logs(&endpoint, &name, until, |line| {
                println!("{}", log_line(line, json));
            }))?;
            Ok(())
        }
        FnCommand::List { json, target } => {
            let functions = runtime.block_on(control::list(&endpoint(target)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&functions)?);
            } else {
                print!("{}", function_table(&functions));
            }
            Ok(())
        }
        FnCommand::Status { name, json, target } => {
            let f = runtime.block_on(control::status(&endpoint(target), &name))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&f)?);
            } else {
                print!("{}", function_table(std::slice::from_ref(&f)));
                println!("triggers:  {}", f.triggers.join(", "));
                if f.every_ms > 0 {
                    println!("timer:     every {} ms", f.every_ms);
                }
                println!("versions:  {}", f.versions.join(", "));
                println!("sha256:    {}", f.sha256);
                if let Some(reason) = &f.reason {
                    println!("stopped:   {reason}");
                }
                if let Some(e) = &f.last_error {
                    println!("last error: {e}");
                }
            }
            Ok(())
        }
        FnCommand::New { .. }
        | FnCommand::Build { .. }
        | FnCommand::Test { .. }
        | FnCommand::Sign { .. } => {
            unreachable!("handled above")
        }
    }
}

fn key_command(command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Generate { out, json } => {
            let public = keys::generate(&out)?;
            if json {
                let doc = serde_json::json!({
                    "private_key_file": out.display().to_string(),
                    "public_key": public.to_string(),
                });
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                eprintln!(
                    "wrote the private key to {} (mode 0600: keep it secret, keep a copy). \
                     Trust it on a gateway with this line in [functions]:\n  \
                     trusted_keys = [\"{public}\"]\nthe public key:",
                    out.display()
                );
                println!("{public}");
            }
        }
        KeyCommand::Public { key } => println!("{}", keys::public(&key)?),
    }
    Ok(())
}

/// The deploy's progress on stderr: one line that grows on a terminal
/// (`uploading 3.1 MiB … sent, waiting for the gateway … done`), one
/// line per step otherwise (logs, CI).
struct Progress {
    enabled: bool,
    tty: bool,
    started: bool,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        use std::io::IsTerminal;
        Progress {
            enabled,
            tty: std::io::stderr().is_terminal(),
            started: false,
        }
    }

    fn step(&mut self, text: &str) {
        use std::io::Write;
        if !self.enabled {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = if !self.tty {
            writeln!(err, "{text}")
        } else if self.started {
            write!(err, " … {text}")
        } else {
            write!(err, "{text}")
        };
        let _ = err.flush();
        self.started = true;
    }

    /// On a terminal, for a bundle of [`TICKER_MIN_BYTES`] or more: redraws
    /// `line` with the seconds spent uploading, four times a second, until
    /// stopped. (A bundle is one MQTT packet written in one go: the client
    /// library reports no bytes sent, only the broker's acknowledgement, so
    /// the time is what there is to show.)
    fn ticker(&self, line: String, size: usize) -> Ticker {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let thread = (self.enabled && self.tty && size >= TICKER_MIN_BYTES).then(|| {
            let stop = stop.clone();
            let started = std::time::Instant::now();
            std::thread::spawn(move || {
                use std::io::Write;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(250));
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut err = std::io::stderr().lock();
                    let _ = write!(err, "\r{line} ({:.1} s)", started.elapsed().as_secs_f64());
                    let _ = err.flush();
                }
                // Leave the line as it started, for the steps that follow.
                let _ = write!(std::io::stderr().lock(), "\r\x1b[K{line}");
            })
        });
        Ticker { stop, thread }
    }

    fn done(&mut self, text: &str) {
        self.step(text);
        if self.enabled && self.tty {
            eprintln!();
        }
        self.enabled = false;
    }
}

/// `deployed echo 1.2.0 (was 1.1.0) on gw-1 in 12 ms`, or for a rollout
/// `deployed echo 1.2.0 as a canary on 10% of the events on gw-1 in 12 ms`.
fn deploy_summary(
    reply: &crate::functions::control::DeployReply,
    options: &crate::functions::control::DeployOptions,
    gateway: &str,
    elapsed_ms: u128,
) -> String {
    let name = reply.name.as_deref().unwrap_or("?");
    let version = reply.version.as_deref().unwrap_or("?");
    let how = match (options.canary, options.shadow, &reply.replaced) {
        (Some(percent), _, _) => format!(" as a canary on {percent}% of the events"),
        (None, true, _) => " as a shadow".to_owned(),
        (None, false, Some(was)) => format!(" (was {was})"),
        (None, false, None) => String::new(),
    };
    format!("deployed {name} {version}{how} on {gateway} in {elapsed_ms} ms")
}

/// `rolled back echo to 1.1.0 (was 1.2.0) on gw-1 in 9 ms`, `promoted …`,
/// `removed echo (was 1.2.0) …`.
fn command_summary(
    reply: &crate::functions::control::CommandReply,
    name: &str,
    gateway: &str,
    elapsed_ms: u128,
) -> String {
    let was = reply
        .replaced
        .as_deref()
        .map(|v| format!(" (was {v})"))
        .unwrap_or_default();
    let now = reply.version.as_deref().unwrap_or("?");
    let what = match reply.command.as_str() {
        "rollback" => format!("rolled back {name} to {now}{was}"),
        "promote" => format!("promoted {name} {now}{was}"),
        _ => format!("removed {name}{was}"),
    };
    format!("{what} on {gateway} in {elapsed_ms} ms")
}

/// What `perch fn invoke` prints: a line about the invocation, then each
/// output and log line, in order.
fn invoke_report(reply: &crate::functions::control::InvokeReply) -> String {
    use crate::functions::control::InvokeOutput;
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "invoked {} {} on {} in {:.3} ms ({} fuel): {}",
        reply.name.as_deref().unwrap_or("?"),
        reply.version.as_deref().unwrap_or("?"),
        reply.topic.as_deref().unwrap_or("?"),
        reply.duration_us as f64 / 1000.0,
        reply.fuel_used,
        reply.failure.as_deref().unwrap_or("ok"),
    );
    for o in &reply.outputs {
        let _ = match o {
            InvokeOutput::Publish { topic, payload } => {
                writeln!(out, "publish  {topic}  {payload}")
            }
            InvokeOutput::Emit { metric, key, value } if key.is_empty() => {
                writeln!(out, "emit     {metric} = {value}")
            }
            InvokeOutput::Emit { metric, key, value } => {
                writeln!(out, "emit     {metric} [{key}] = {value}")
            }
            InvokeOutput::Forward { stream, record } => {
                writeln!(out, "forward  {stream}  {record}")
            }
        };
    }
    for line in &reply.logs {
        let _ = writeln!(
            out,
            "log      {:<5} {}",
            line["level"].as_str().unwrap_or("").to_uppercase(),
            line["message"].as_str().unwrap_or("")
        );
    }
    if reply.outputs.is_empty() && reply.logs.is_empty() {
        out.push_str("(no outputs, no log lines)\n");
    }
    out.push_str("nothing was delivered: invoke captures the outputs\n");
    out
}

/// `--since`: checked here so a bad duration never reaches the gateway.
fn parse_since(text: &str) -> Result<String, String> {
    crate::functions::control::parse_duration(text).map(|_| text.trim().to_owned())
}

/// What `perch fn replay` prints: the summary, then the first outputs.
fn replay_report(reply: &crate::functions::control::ReplayReply) -> String {
    use crate::functions::control::InvokeOutput;
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "replayed {} {} over {} of {} kept events in {:.3} ms: {} failed",
        reply.name.as_deref().unwrap_or("?"),
        reply.version.as_deref().unwrap_or("?"),
        reply.replayed,
        reply.events,
        reply.duration_us as f64 / 1000.0,
        reply.errors,
    );
    for e in &reply.first_errors {
        let _ = writeln!(out, "failure  {e}");
    }
    let _ = writeln!(
        out,
        "outputs  {} publishes, {} emits, {} forwards",
        reply.publishes, reply.emits, reply.forwards
    );
    if let Some(d) = reply.differed {
        let _ = writeln!(out, "differed from the live version on {d} events");
    }
    for o in &reply.outputs {
        let _ = match o {
            InvokeOutput::Publish { topic, payload } => {
                writeln!(out, "publish  {topic}  {payload}")
            }
            InvokeOutput::Emit { metric, key, value } if key.is_empty() => {
                writeln!(out, "emit     {metric} = {value}")
            }
            InvokeOutput::Emit { metric, key, value } => {
                writeln!(out, "emit     {metric} [{key}] = {value}")
            }
            InvokeOutput::Forward { stream, record } => {
                writeln!(out, "forward  {stream}  {record}")
            }
        };
    }
    out.push_str("nothing was delivered: replay captures the outputs\n");
    out
}

/// Bundles from this size on get a ticker while they upload.
const TICKER_MIN_BYTES: usize = 256 * 1024;

/// The upload ticker of [`Progress::ticker`].
struct Ticker {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread {
            let _ = t.join();
        }
    }
}

/// 3.1 MiB, 12.0 KiB, 800 bytes.
fn human_bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

/// One line of `perch fn logs`: `12:03:04.120 WARN  1.2.0  message`, or
/// the JSON as published.
fn log_line(payload: &[u8], json: bool) -> String {
    let text = String::from_utf8_lossy(payload);
    if json {
        return text.into_owned();
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
        return text.into_owned();
    };
    let ms = v["ts_ms"].as_i64().unwrap_or(0);
    let day_ms = ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03} {:<5} {:<10} {}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000,
        v["level"].as_str().unwrap_or("").to_uppercase(),
        v["version"].as_str().unwrap_or(""),
        v["message"].as_str().unwrap_or("")
    )
}

/// `perch fn list` as a table.
fn function_table(functions: &[crate::functions::control::FunctionInfo]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if functions.is_empty() {
        out.push_str("no functions deployed\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24} {:<12} {:<9} {:>11} {:>8} {:>8} {:>6}",
        "NAME", "VERSION", "STATE", "INVOCATIONS", "ERRORS", "DROPPED", "QUEUED"
    );
    for f in functions {
        let _ = writeln!(
            out,
            "{:<24} {:<12} {:<9} {:>11} {:>8} {:>8} {:>6}",
            f.name, f.version, f.state, f.invocations, f.errors, f.dropped, f.queued
        );
    }
    out
}

fn passwd() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!("password (the input is shown; pipe it in to avoid that):");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from stdin")?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(
        !password.is_empty(),
        "the password is empty; type it, or pipe it in: echo 'secret' | perch passwd"
    );
    println!("{}", crate::broker::auth::hash_password(password));
    Ok(())
}

fn buffer(command: BufferCommand) -> anyhow::Result<()> {
    let dir = match &command {
        BufferCommand::Stats(d)
        | BufferCommand::Tail { dir: d, .. }
        | BufferCommand::Dead(d)
        | BufferCommand::Replay(d) => d.resolve()?,
    };
    let path = dir.join(crate::buffer::FILE_NAME);
    anyhow::ensure!(
        path.exists(),
        "no buffer at {}: has perch run with this data directory? Pass --data-dir or --config",
        path.display()
    );
    let reader = crate::buffer::Reader::open(&path)?;
    let kind_name = |kind| match kind {
        crate::buffer::KIND_AGGREGATE => "aggregate",
        crate::buffer::KIND_SUMMARY => "summary",
        _ => "record",
    };
    match command {
        BufferCommand::Dead(_) => {
            let dead = reader
                .dead_letters()
                .with_context(|| format!("reading {}", path.display()))?;
            if dead.is_empty() {
                println!("no dead letters");
            }
            for d in dead {
                let text: String = String::from_utf8_lossy(&d.record.payload)
                    .chars()
                    .take(120)
                    .collect();
                println!(
                    "{:>8}  {:<24} {:<9} HTTP {} {:?}  {}",
                    d.record.seq,
                    d.record.stream,
                    kind_name(d.record.kind),
                    d.status,
                    d.response.chars().take(80).collect::<String>(),
                    text
                );
            }
        }
        BufferCommand::Replay(_) => {
            let n = crate::buffer::replay_dead_letters(&path)?;
            println!("{n} dead letters queued again");
        }
        BufferCommand::Stats(_) => {
            let (records, bytes, oldest) = reader
                .totals()
                .with_context(|| format!("reading {}", path.display()))?;
            println!("buffer:  {}", path.display());
            println!("records: {records}");
            println!("bytes:   {bytes}");
            match oldest {
                Some(ms) => {
                    let age_s = (crate::buffer::now_ms() - ms).max(0) as f64 / 1000.0;
                    println!("oldest:  {age_s:.1} s ago");
                }
                None => println!("oldest:  -"),
            }
        }
        BufferCommand::Tail { count, .. } => {
            let rows = reader
                .tail(count)
                .with_context(|| format!("reading {}", path.display()))?;
            for r in rows {
                let kind = kind_name(r.kind);
                let text = String::from_utf8_lossy(&r.payload);
                let text: String = text.chars().take(200).collect();
                println!("{:>8}  {:<24} {:<9} {}", r.seq, r.stream, kind, text);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::control::{
        CommandReply, DeployOptions, DeployReply, InvokeOutput, InvokeReply,
    };

    #[test]
    fn summaries_say_what_changed_in_one_line() {
        let reply = DeployReply {
            ok: true,
            bundle_sha256: String::new(),
            request_id: None,
            name: Some("threshold-alert".into()),
            version: Some("1.2.0".into()),
            sha256: None,
            replaced: Some("1.1.0".into()),
            error: None,
            warning: None,
        };
        let plain = DeployOptions::default();
        assert_eq!(
            deploy_summary(&reply, &plain, "gw-1", 12),
            "deployed threshold-alert 1.2.0 (was 1.1.0) on gw-1 in 12 ms"
        );
        let canary = DeployOptions {
            canary: Some(10),
            ..DeployOptions::default()
        };
        assert_eq!(
            deploy_summary(&reply, &canary, "gw-1", 12),
            "deployed threshold-alert 1.2.0 as a canary on 10% of the events on gw-1 in 12 ms"
        );
        let rollback = CommandReply {
            ok: true,
            command: "rollback".into(),
            version: Some("1.1.0".into()),
            replaced: Some("1.2.0".into()),
            ..CommandReply::default()
        };
        assert_eq!(
            command_summary(&rollback, "threshold-alert", "gw-1", 9),
            "rolled back threshold-alert to 1.1.0 (was 1.2.0) on gw-1 in 9 ms"
        );
        let remove = CommandReply {
            ok: true,
            command: "remove".into(),
            replaced: Some("1.1.0".into()),
            ..CommandReply::default()
        };
        assert_eq!(
            command_summary(&remove, "threshold-alert", "gw-1", 3),
            "removed threshold-alert (was 1.1.0) on gw-1 in 3 ms"
        );
    }

    #[test]
    fn the_invoke_report_lists_every_output_and_says_nothing_was_delivered() {
        let reply = InvokeReply {
            ok: false,
            name: Some("f".into()),
            version: Some("1.0.0".into()),
            topic: Some("a/b".into()),
            duration_us: 412,
            fuel_used: 99,
            outputs: vec![
                InvokeOutput::Publish {
                    topic: "out".into(),
                    payload: "1".into(),
                },
                InvokeOutput::Emit {
                    metric: "t".into(),
                    key: String::new(),
                    value: 2.5,
                },
            ],
            logs: vec![serde_json::json!({"level": "warn", "message": "hot"})],
            failure: Some("handler returned error 1".into()),
            ..InvokeReply::default()
        };
        let text = invoke_report(&reply);
        assert_eq!(
            text,
            "invoked f 1.0.0 on a/b in 0.412 ms (99 fuel): handler returned error 1\n\
             publish  out  1\n\
             emit     t = 2.5\n\
             log      WARN  hot\n\
             nothing was delivered: invoke captures the outputs\n"
        );
    }
}
