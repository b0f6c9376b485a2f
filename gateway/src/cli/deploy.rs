//! `perch fn deploy`: a module and its manifest (or a bundle) sent to a
//! running gateway, with progress on stderr and one line that says what
//! was deployed.

use std::path::Path;
use std::time::Duration;

use tokio::runtime::Runtime;

use super::{keys, FnTarget};
use crate::functions::control;

/// `perch fn deploy`; fails when the gateway refused the deploy.
pub(super) fn deploy(
    runtime: &Runtime,
    wasm: &Path,
    manifest: Option<&Path>,
    key: Option<&Path>,
    options: control::DeployOptions,
    json: bool,
    target: FnTarget,
) -> anyhow::Result<()> {
    let bundle = keys::deploy_bundle(wasm, manifest, key)?;
    let mut progress = Progress::new(!json);
    let uploading = format!("uploading {}", human_bytes(bundle.len()));
    progress.step(&uploading);
    let ticker = progress.ticker(uploading, bundle.len());
    let started = std::time::Instant::now();
    let endpoint = super::endpoint(target)?;
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
    super::switch::warn_events_not_rerun(reply.state.as_ref());
    match reply.error {
        None if reply.ok => Ok(()),
        error => anyhow::bail!(
            "the gateway refused the deploy: {}",
            error.unwrap_or_default()
        ),
    }
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
    reply: &control::DeployReply,
    options: &control::DeployOptions,
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
    let state = super::switch::state_summary(reply.state.as_ref());
    format!("deployed {name} {version}{how} on {gateway} in {elapsed_ms} ms{state}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::control::{DeployOptions, DeployReply};

    #[test]
    fn the_deploy_summary_says_what_changed_in_one_line() {
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
            state: None,
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
    }
}
