//! `perch fn invoke`: a function run once on one event through the
//! gateway, its outputs and log lines captured and printed.

use std::path::PathBuf;

use anyhow::Context;
use tokio::runtime::Runtime;

use super::FnTarget;
use crate::functions::control::{self, InvokeOutput};

/// `perch fn invoke`; fails when the gateway refused it or the invocation
/// failed.
pub(super) fn invoke(
    runtime: &Runtime,
    name: String,
    payload: Option<String>,
    payload_file: Option<PathBuf>,
    topic: Option<String>,
    json: bool,
    target: FnTarget,
) -> anyhow::Result<()> {
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
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
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
    let reply = runtime.block_on(control::invoke(&super::endpoint(target)?, request))?;
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

/// What `perch fn invoke` prints: a line about the invocation, then each
/// output and log line, in order.
pub(super) fn invoke_report(reply: &control::InvokeReply) -> String {
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
    write_outputs(&mut out, &reply.outputs);
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

/// One line per output, as `perch fn invoke` and `perch fn replay` print
/// them: `publish  TOPIC  PAYLOAD`, `emit     METRIC [KEY] = VALUE`,
/// `forward  STREAM  RECORD`.
pub(super) fn write_outputs(out: &mut String, outputs: &[InvokeOutput]) {
    use std::fmt::Write;
    for o in outputs {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::functions::control::InvokeReply;

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
