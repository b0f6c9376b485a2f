//! The daemon: starts the stages in order, says when it is ready, and stops
//! them in stages on shutdown.
//!
//! Start order follows the data's trip backwards so that nothing produces
//! into a stage that is not there yet: state directory, then the broker.
//! Shutdown runs the other way: stop accepting clients first, then let the
//! stages behind drain, all within `gateway.shutdown_timeout_ms`; a stage
//! still running at the deadline is named in the log and dropped.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::broker::{Broker, BrokerError};
use crate::config::Config;

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
}

/// A running gateway.
pub struct Gateway {
    id: String,
    config: Config,
    broker: Broker,
}

impl Gateway {
    /// Starts every stage and logs the ready line. Must run inside a tokio
    /// runtime.
    pub async fn start(config: Config) -> Result<Gateway, GatewayError> {
        let id = config.gateway.resolved_id();
        prepare_data_dir(&config.gateway.data_dir)?;
        let broker = Broker::start(&config.broker)?;
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
        Ok(Gateway { id, config, broker })
    }

    /// This gateway's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The embedded broker.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Stops the stages in order within the configured deadline.
    pub async fn shutdown(mut self) {
        let deadline = Duration::from_millis(self.config.gateway.shutdown_timeout_ms);
        let stages = async {
            tracing::info!("shutdown: no longer accepting MQTT clients");
            self.broker.stop_listening();
        };
        if tokio::time::timeout(deadline, stages).await.is_err() {
            tracing::warn!(
                ?deadline,
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
