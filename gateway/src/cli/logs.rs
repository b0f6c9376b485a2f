//! `perch fn logs`: a function's log lines as it writes them.

use tokio::runtime::Runtime;

use super::FnTarget;
use crate::functions::control;

/// `perch fn logs`: for `--timeout-ms`, or with `--follow` until Ctrl-C.
pub(super) fn logs(
    runtime: &Runtime,
    name: &str,
    follow: bool,
    json: bool,
    target: FnTarget,
) -> anyhow::Result<()> {
    let endpoint = super::endpoint(target)?;
    let timeout = endpoint.timeout;
    let until = async move {
        if follow {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            tokio::time::sleep(timeout).await;
        }
    };
    runtime.block_on(control::follow_logs(&endpoint, name, until, |line| {
        println!("{}", log_line(line, json));
    }))?;
    Ok(())
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
