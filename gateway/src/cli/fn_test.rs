//! `perch fn test`'s run: a module over sample events in the real runtime,
//! locally. Each event's outputs are gathered into an [`EventRun`], which
//! the command prints as it goes (text) or collects (`--json`).

use std::io::BufRead;
use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

use crate::functions::manifest::Manifest;
use crate::functions::runtime::{Failure, Runtime, Seed};
use crate::functions::Output;

/// One line of an events file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleEvent {
    topic: String,
    payload: serde_json::Value,
    #[serde(default)]
    timestamp_ms: Option<i64>,
}

/// The totals of a run.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct TestReport {
    pub events: usize,
    pub failures: usize,
    pub publishes: usize,
    pub emits: usize,
    pub forwards: usize,
}

/// One event and what the function made of it.
#[derive(Debug, Serialize)]
pub struct EventRun {
    /// 1 for the first event of the file.
    pub event: usize,
    pub topic: String,
    /// The payload as the function got it (invalid UTF-8 replaced).
    pub payload: String,
    /// Whether a trigger of the manifest matches the topic (a gateway
    /// would not deliver the event otherwise).
    pub triggered: bool,
    pub outputs: Vec<TestOutput>,
    /// Why the invocation failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One output of an invocation, in the order the function made them.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TestOutput {
    Publish {
        topic: String,
        payload: String,
    },
    Emit {
        metric: String,
        #[serde(skip_serializing_if = "String::is_empty")]
        key: String,
        value: f64,
    },
    Forward {
        stream: String,
        record: String,
    },
}

/// Runs the module over the events in `events` (JSON lines), handing each
/// event's [`EventRun`] to `each` as soon as it ran.
pub fn run(
    manifest: Manifest,
    wasm: &[u8],
    events: &Path,
    mut each: impl FnMut(&EventRun) -> std::io::Result<()>,
) -> anyhow::Result<TestReport> {
    let file = std::fs::File::open(events).with_context(|| {
        format!(
            "cannot read the events file {}; write one event a line: \
             {{\"topic\":\"sensors/t1/temperature\",\"payload\":{{\"temperature\":21.5}}}}",
            events.display()
        )
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let runtime = Runtime::new(tx);
    let filters = manifest.triggers.topics.clone();
    let compiled = runtime.compile(manifest, wasm)?;
    let mut instance = runtime
        .instantiate(&compiled, Seed::default())
        .map_err(|(e, _)| e)?;
    let mut report = TestReport::default();
    let start_ms = crate::kit::clock::now_ms();
    for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let event: SampleEvent = serde_json::from_str(&line).with_context(|| {
            format!(
                "{} line {}: not an event; expected {{\"topic\": ..., \"payload\": ...}}",
                events.display(),
                n + 1
            )
        })?;
        let payload = match &event.payload {
            serde_json::Value::String(s) => s.clone().into_bytes(),
            other => serde_json::to_vec(other)?,
        };
        report.events += 1;
        let ts = event.timestamp_ms.unwrap_or(start_ms + n as i64);
        let result = instance.on_event(event.topic.as_bytes(), &payload, ts);
        let mut outputs = Vec::new();
        instance.release(|topic, payload| {
            outputs.push(TestOutput::Publish {
                topic: String::from_utf8_lossy(&topic).into_owned(),
                payload: String::from_utf8_lossy(&payload).into_owned(),
            });
        });
        while let Ok(output) = rx.try_recv() {
            match output {
                Output::Metric {
                    metric, key, value, ..
                } => outputs.push(TestOutput::Emit {
                    metric: metric.to_string(),
                    key: key.to_string(),
                    value,
                }),
                // `perch fn test` keeps no trigger events.
                Output::Event(_) => {}
                Output::Record { stream, record, .. } => outputs.push(TestOutput::Forward {
                    stream: stream.to_string(),
                    record: String::from_utf8_lossy(&record).into_owned(),
                }),
            }
        }
        for output in &outputs {
            match output {
                TestOutput::Publish { .. } => report.publishes += 1,
                TestOutput::Emit { .. } => report.emits += 1,
                TestOutput::Forward { .. } => report.forwards += 1,
            }
        }
        let error = result.err().map(|failure| describe(&failure));
        report.failures += usize::from(error.is_some());
        each(&EventRun {
            event: report.events,
            triggered: crate::kit::topic::matches_any(&filters, &event.topic),
            topic: event.topic,
            payload: String::from_utf8_lossy(&payload).into_owned(),
            outputs,
            error,
        })?;
    }
    Ok(report)
}

/// An event and its outputs as `perch fn test` prints them.
pub fn print(out: &mut impl std::io::Write, run: &EventRun) -> std::io::Result<()> {
    writeln!(out, "event {}  {}  {}", run.event, run.topic, run.payload)?;
    if !run.triggered {
        writeln!(
            out,
            "  note: no trigger of the manifest matches this topic; a gateway would not \
             deliver it"
        )?;
    }
    for output in &run.outputs {
        match output {
            TestOutput::Publish { topic, payload } => {
                writeln!(out, "  publish  {topic}  {payload}")?
            }
            TestOutput::Emit { metric, key, value } if key.is_empty() => {
                writeln!(out, "  emit     {metric} = {value}")?
            }
            TestOutput::Emit { metric, key, value } => {
                writeln!(out, "  emit     {metric} [{key}] = {value}")?
            }
            TestOutput::Forward { stream, record } => {
                writeln!(out, "  forward  {stream}  {record}")?
            }
        }
    }
    if let Some(error) = &run.error {
        writeln!(out, "  FAILED   {error}")?;
    }
    Ok(())
}

fn describe(failure: &Failure) -> String {
    match failure {
        Failure::Returned(code) => format!(
            "the handler returned {}",
            crate::functions::failure::describe_handler_code(*code)
        ),
        other => other.to_string(),
    }
}
