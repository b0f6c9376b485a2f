//! `perch run`: the gateway in the foreground until SIGINT or SIGTERM.

use std::time::Duration;

use anyhow::Context;

use super::RunArgs;
use crate::config::Config;
use crate::telemetry;

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    telemetry::init_verbose(args.log_format, args.verbose);
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
    if let Some(port) = args.port {
        if config.broker.listeners.is_empty() {
            config.broker.listeners.push(Default::default());
        }
        config.broker.listeners[0].listen.set_port(port);
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

/// Installs SIGINT and SIGTERM handlers now; the future resolves on the
/// first of them.
pub(super) fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
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
