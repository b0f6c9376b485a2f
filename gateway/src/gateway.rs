//! The daemon: starts the stages in order, says when it is ready, and stops
//! them in stages on shutdown.
//!
//! Start order: state directory, the broker (its router first: every other
//! stage talks to it through in-process links), then the functions, whose
//! trigger links subscribe before the ready line is logged, so a client that
//! waits for it cannot publish past a function. Shutdown runs the other way:
//! stop accepting clients first, then stop the functions (each flushes its
//! state), then the broker's router goes with the runtime, all within
//! `gateway.shutdown_timeout_ms`; a stage still running at the deadline is
//! named in the log and dropped.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError};
use crate::config::Config;
use crate::functions::{Functions, FunctionsError, Output};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "cannot use data directory {path}: {source}; pass --data-dir or set gateway.data_dir \
         to a directory perch can write to"
    )]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Functions(#[from] FunctionsError),
}

/// A running gateway.
pub struct Gateway {
    id: String,
    config: Config,
    broker: Broker,
    functions: Functions,
    /// Takes `emit`/`forward` records until the aggregate and buffer stages
    /// (issue 4) take the receiving end of the channel instead.
    outputs: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Starts every stage and logs the ready line. Must run inside a tokio
    /// runtime.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let id = config.gateway.resolved_id();
        prepare_data_dir(&config.gateway.data_dir)?;
        let broker = Broker::start(&config.broker)?;
        let (outputs_tx, outputs_rx) = mpsc::channel(config.functions.output_queue_len);
        let functions = Functions::start(
            broker.links(),
            &config.functions,
            &config.gateway.data_dir,
            &id,
            outputs_tx,
        )
        .await?;
        let outputs = tokio::spawn(drain_outputs(outputs_rx));
        let listening = broker
            .listening()
            .iter()
            .map(|l| {
                let scheme = if l.tls { "mqtts" } else { "mqtt" };
                format!("{scheme}://{} ({})", l.addr, l.name)
            })
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            "perch ready: gateway {id}, data in {}, listening on {listening}",
            config.gateway.data_dir.display()
        );
        Ok(Gateway {
            id,
            config,
            broker,
            functions,
            outputs,
        })
    }

    /// This gateway's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The embedded broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// The functions stage.
    pub fn functions(&self) -> &Functions {
        &self.functions
    }

    /// Stops the stages in order within the configured deadline.
    pub async fn shutdown(mut self) {
        let deadline = Duration::from_millis(self.config.gateway.shutdown_timeout_ms);
        let mut stage = "listeners";
        let stages = async {
            tracing::info!("shutdown: no longer accepting MQTT clients");
            self.broker.stop_listening();
            stage = "functions";
            self.functions.shutdown().await;
            tracing::info!("shutdown: functions stopped, state saved");
            self.outputs.abort();
        };
        if tokio::time::timeout(deadline, stages).await.is_err() {
            tracing::warn!(
                ?deadline,
                stage,
                "shutdown: stages still running at the deadline were stopped"
            );
        }
        tracing::info!("shutdown complete");
    }
}

/// Runs a gateway until `shutdown` resolves, then stops it.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), GatewayError> {
    let gateway = Gateway::start(config).await?;
    shutdown.await;
    gateway.shutdown().await;
    Ok(())
}

/// The end of the `emit`/`forward` channel until the aggregate and buffer
/// stages exist: records are logged at debug level and dropped. The channel
/// and the [`Output`] type are the interface those stages plug into.
async fn drain_outputs(mut outputs: mpsc::Receiver<Output>) {
    while let Some(output) = outputs.recv().await {
        tracing::debug!(?output, "function output (no aggregate/buffer stage yet)");
    }
}

/// Creates the data directory and proves it is writable, so a read-only or
/// missing mount fails at start with its path instead of later in a stage.
fn prepare_data_dir(path: &PathBuf) -> Result<(), GatewayError> {
    let err = |source| GatewayError::DataDir {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(path).map_err(err)?;
    let probe = path.join(".perch-write-test");
    std::fs::write(&probe, b"ok").map_err(err)?;
    std::fs::remove_file(&probe).map_err(err)?;
    Ok(())
}
