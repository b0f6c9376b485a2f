//! `perch demo`: the whole trip of an event on one screen, with nothing to
//! set up and no network.
//!
//! It owns the demo's parts and nothing the gateway itself uses:
//!
//! - a stand-in cloud: a second embedded broker on a free loopback port,
//!   with an in-process subscriber that counts what arrives;
//! - a gateway on the embedded defaults whose `[upstream.mqtt]` is that
//!   cloud, with its data in a fresh temporary directory (removed at the
//!   end) unless `--data-dir` is given;
//! - the example functions from `sdk/examples/`, shipped inside the binary
//!   (`gateway/demo/*.wasm`, rebuilt by `sdk/update-demo.sh`) and deployed
//!   through the same path as `perch fn deploy`;
//! - simulated sensors: real MQTT clients (rumqttc) publishing temperature
//!   and humidity JSON, with an occasional spike so alerts and anomalies
//!   happen;
//! - the view: redrawn once a second on a terminal, one `key=value` line a
//!   second otherwise (`--plain`), and a summary line when it stops.
//!
//! Ctrl-C (or `--duration-s`) stops sensors, gateway and cloud in that order
//! and exits 0.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use rumqttd::local::LinkRx;
use tokio::sync::watch;

use crate::broker::Broker;
use crate::config::Config;
use crate::functions::control::{encode_bundle, FunctionInfo};
use crate::gateway::Gateway;

/// The example functions the demo deploys: (manifest, module).
const FUNCTIONS: [(&str, &[u8]); 3] = [
    (
        include_str!("../../../sdk/examples/threshold-alert/manifest.toml"),
        include_bytes!("../../demo/threshold-alert.wasm"),
    ),
    (
        include_str!("../../../sdk/examples/moving-average/manifest.toml"),
        include_bytes!("../../demo/moving-average.wasm"),
    ),
    (
        include_str!("../../../sdk/examples/anomaly-zscore/manifest.toml"),
        include_bytes!("../../demo/anomaly-zscore.wasm"),
    ),
];

/// The functions `perch demo` deploys, as (manifest TOML, wasm module), for
/// tests that check they are the SDK examples.
pub fn bundled_functions() -> &'static [(&'static str, &'static [u8])] {
    &FUNCTIONS
}

/// `perch demo` options.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Address of the gateway's MQTT listener, for your own clients
    /// (`mosquitto_sub -t 'alerts/#'`). When the default port is taken, a
    /// free one is picked and shown.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub listen: SocketAddr,
    /// Keep the gateway's data here instead of a temporary directory that is
    /// removed at the end.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Simulated sensor devices.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub devices: u32,
    /// Readings per second per device and quantity (temperature, humidity).
    #[arg(long, default_value_t = 5.0)]
    pub rate_hz: f64,
    /// Length of the aggregate windows, in seconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub window_s: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration_s: Option<u64>,
    /// One `key=value` line per second instead of a redrawn screen (the
    /// default when stdout is not a terminal).
    #[arg(long)]
    pub plain: bool,
}

/// `perch demo`: the demo on a runtime of its own until Ctrl-C (or its
/// `--duration`).
pub(super) fn command(args: DemoArgs) -> anyhow::Result<()> {
    // The screen is the demo's output; the log says only what went wrong.
    crate::telemetry::init_with_default_filter(
        crate::telemetry::LogFormat::Human,
        "warn,rumqttd=off",
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("perch-demo")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(async {
        let shutdown = super::run::shutdown_signal().context("cannot install signal handlers")?;
        run(args, shutdown).await
    });
    runtime.shutdown_timeout(Duration::from_millis(500));
    result
}

/// Runs the demo until `shutdown` resolves or the duration passes.
pub async fn run(
    args: DemoArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate_hz > 0.0 && args.rate_hz <= 1000.0,
        "--rate-hz must be between 0 and 1000 (readings per second per device), not {}",
        args.rate_hz
    );
    let plain = args.plain || !std::io::stdout().is_terminal();
    let data_dir = DataDir::new(args.data_dir.clone())?;

    // The cloud first, so the gateway's upstream finds it at once.
    let cloud = Broker::start(
        &Config::from_toml(
            "[[broker.listeners]]\nname = \"cloud\"\nlisten = \"127.0.0.1:0\"\nallow_anonymous = true\n",
            "the demo's cloud",
        )?
        .broker,
    )
    .context("cannot start the demo's stand-in cloud broker")?;
    let cloud_addr = cloud.listening()[0].addr;
    let counts = Arc::new(Counts::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    let (cloud_tx, cloud_rx) = cloud.link("demo-cloud")?;
    tasks.push(watch_link(
        cloud_tx,
        cloud_rx,
        "#",
        counts.clone(),
        stop.clone(),
        Counts::cloud,
    )?);

    let config = gateway_config(&args, &data_dir.path, cloud_addr)?;
    let gateway = Gateway::start(config)
        .await
        .context("cannot start the demo's gateway")?;
    let addr = gateway.broker().listening()[0].addr;

    deploy_bundled(&gateway).await?;

    for (name, filter, on) in [
        ("demo-sensors", "sensors/#", Counts::sensor as Handler),
        ("demo-alerts", "alerts/#", Counts::alert),
    ] {
        let (tx, rx) = gateway.broker().link(name)?;
        tasks.push(watch_link(
            tx,
            rx,
            filter,
            counts.clone(),
            stop.clone(),
            on,
        )?);
    }
    for device in 1..=args.devices {
        tasks.push(tokio::spawn(sensor(
            addr,
            device,
            args.rate_hz,
            stop.clone(),
        )));
    }

    let mut view = View {
        plain,
        started: Instant::now(),
        gateway_addr: addr,
        admin_addr: gateway.admin_addr(),
        cloud_addr,
        last_events: 0,
        last_tick: Instant::now(),
    };
    let deadline = args
        .duration_s
        .map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let until_deadline = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick.tick() => view.draw(&gateway, &counts),
            _ = &mut shutdown => break,
            _ = until_deadline => break,
        }
    }

    // Sensors stop first, so the last events still reach the functions.
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
    let functions = gateway.functions().list();
    gateway.shutdown().await;
    drop(cloud);
    println!("{}", summary(&counts, &functions, view.started.elapsed()));
    data_dir.remove();
    Ok(())
}

/// Deploys the example functions shipped in the binary; one already
/// running (a kept `--data-dir`) is fine.
async fn deploy_bundled(gateway: &Gateway) -> anyhow::Result<()> {
    for (manifest, wasm) in FUNCTIONS {
        let reply = gateway
            .functions()
            .deploy(Bytes::from(encode_bundle(manifest, wasm)))
            .await;
        if !reply.ok {
            let name = reply.name.clone().unwrap_or_default();
            // A kept --data-dir already runs the functions from last time.
            let running = gateway
                .functions()
                .list()
                .iter()
                .any(|f| f.name == name && f.state == "running");
            anyhow::ensure!(
                running,
                "the demo could not deploy {name}: {}",
                reply.error.unwrap_or_default()
            );
        }
    }
    Ok(())
}

/// The gateway's config: the embedded defaults, with the demo's listener,
/// data directory, short windows and the stand-in cloud as upstream.
fn gateway_config(
    args: &DemoArgs,
    data_dir: &std::path::Path,
    cloud: SocketAddr,
) -> anyhow::Result<Config> {
    let text = format!(
        "[gateway]\nid = \"demo\"\n\
         [aggregate]\nwindow_s = {}\n\
         [upstream]\nforward_topics = [\"alerts/#\"]\n\
         [upstream.mqtt]\nhost = \"{}\"\nport = {}\ntopic_prefix = \"cloud/{{id}}\"\n",
        args.window_s,
        cloud.ip(),
        cloud.port()
    );
    let mut config = Config::from_toml(&text, "the demo's gateway config")?;
    config.gateway.data_dir = data_dir.to_owned();
    // A taken default port is no reason to fail a demo: pick a free one.
    let mut listen = args.listen;
    if std::net::TcpListener::bind(listen).is_err() {
        eprintln!("perch demo: {listen} is in use; using a free port instead (shown below)");
        listen.set_port(0);
    }
    config.broker.listeners[0].listen = listen;
    // The status page on a free port: a gateway already running here (or
    // another demo) keeps the default one.
    config.admin.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.validate("the demo's gateway config")?;
    Ok(config)
}

/// What the demo has seen, counted by its subscribers.
#[derive(Default)]
struct Counts {
    events: AtomicU64,
    alerts: AtomicU64,
    cloud_aggregates: AtomicU64,
    cloud_records: AtomicU64,
    latest_alert: Mutex<String>,
    latest_aggregate: Mutex<String>,
}

type Handler = fn(&Counts, &str, &[u8]);

impl Counts {
    fn sensor(&self, _topic: &str, _payload: &[u8]) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    fn alert(&self, topic: &str, payload: &[u8]) {
        self.alerts.fetch_add(1, Ordering::Relaxed);
        *self.latest_alert.lock().unwrap_or_else(|p| p.into_inner()) =
            format!("{topic} {}", String::from_utf8_lossy(payload));
    }

    /// One message at the cloud: an envelope, or an array of them.
    fn cloud(&self, _topic: &str, payload: &[u8]) {
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(payload) else {
            return;
        };
        let envelopes = match value {
            serde_json::Value::Array(items) => items,
            one => vec![one],
        };
        for envelope in envelopes {
            if envelope["kind"] == "aggregate" {
                self.cloud_aggregates.fetch_add(1, Ordering::Relaxed);
                let d = &envelope["data"];
                *self
                    .latest_aggregate
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = format!(
                    "{} {}: {} readings, mean {:.2}, min {:.2}, max {:.2}",
                    d["metric"].as_str().unwrap_or("?"),
                    d["key"].as_str().unwrap_or(""),
                    d["count"],
                    d["mean"].as_f64().unwrap_or(f64::NAN),
                    d["min"].as_f64().unwrap_or(f64::NAN),
                    d["max"].as_f64().unwrap_or(f64::NAN),
                );
            } else {
                self.cloud_records.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Subscribes a local link to `filter` and calls `on` for every message.
fn watch_link(
    mut tx: rumqttd::local::LinkTx,
    mut rx: LinkRx,
    filter: &str,
    counts: Arc<Counts>,
    mut stop: watch::Receiver<bool>,
    on: Handler,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    tx.subscribe(filter)
        .with_context(|| format!("the demo cannot subscribe to {filter}"))?;
    Ok(tokio::spawn(async move {
        let _tx = tx; // dropping it would end the link
        loop {
            let next = tokio::select! {
                n = rx.next() => n,
                _ = stop.changed() => return,
            };
            match next {
                Ok(Some(rumqttd::Notification::Forward(f))) => on(
                    &counts,
                    &String::from_utf8_lossy(&f.publish.topic),
                    &f.publish.payload,
                ),
                Ok(Some(rumqttd::Notification::Unschedule)) => {
                    if rx.ready().is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }))
}

/// One simulated device: temperature and humidity readings at `rate_hz`
/// each, a slow random walk with a spike now and then.
async fn sensor(addr: SocketAddr, device: u32, rate_hz: f64, mut stop: watch::Receiver<bool>) {
    use rand::Rng;
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let id = format!("t{device}");
    let mut options = MqttOptions::new(
        format!("demo-sensor-{id}"),
        addr.ip().to_string(),
        addr.port(),
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let driver = tokio::spawn(async move {
        loop {
            if eventloop.poll().await.is_err() {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    });
    let mut temperature = 21.0 + device as f64 * 0.7;
    let mut humidity = 45.0 + device as f64;
    let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / rate_hz));
    let (t_topic, h_topic) = (
        format!("sensors/{id}/temperature"),
        format!("sensors/{id}/humidity"),
    );
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => break,
        }
        let (t, h) = {
            let mut rng = rand::thread_rng();
            temperature += rng.gen_range(-0.15..0.15);
            humidity = (humidity + rng.gen_range(-0.3..0.3)).clamp(20.0, 90.0);
            // About one reading in fifty is a spike over the limit.
            let spike = if rng.gen_bool(0.02) {
                rng.gen_range(9.0..14.0)
            } else {
                0.0
            };
            (temperature + spike, humidity)
        };
        let reading = format!("{{\"device\":\"{id}\",\"temperature\":{t:.2}}}");
        let humid = format!("{{\"device\":\"{id}\",\"humidity\":{h:.1}}}");
        if client
            .publish(&t_topic, QoS::AtMostOnce, false, reading)
            .await
            .is_err()
            || client
                .publish(&h_topic, QoS::AtMostOnce, false, humid)
                .await
                .is_err()
        {
            break;
        }
    }
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    driver.abort();
}

struct View {
    plain: bool,
    started: Instant,
    gateway_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    cloud_addr: SocketAddr,
    last_events: u64,
    last_tick: Instant,
}

impl View {
    fn draw(&mut self, gateway: &Gateway, counts: &Counts) {
        let events = counts.events.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (events - self.last_events) as f64
            / now.duration_since(self.last_tick).as_secs_f64().max(0.001);
        (self.last_events, self.last_tick) = (events, now);
        let functions = gateway.functions().list();
        let buffer = gateway.buffer().stats();
        let upstream = gateway.upstream_stats();
        let waiting = buffer.records.load(Ordering::Relaxed);
        let oldest_ms = buffer.oldest_ms.load(Ordering::Relaxed);
        let oldest_s = if oldest_ms == 0 {
            0.0
        } else {
            (crate::kit::clock::now_ms() - oldest_ms).max(0) as f64 / 1000.0
        };
        let elapsed = self.started.elapsed().as_secs();
        let invocations: u64 = functions.iter().map(|f| f.invocations).sum();
        let mut out = std::io::stdout().lock();
        if self.plain {
            let _ = writeln!(
                out,
                "t={elapsed}s events_in_per_s={rate:.0} events_in={events} invocations={invocations} \
                 alerts={} buffer_records={waiting} upstream_connected={} upstream_acked={} \
                 cloud_aggregates={} cloud_records={}",
                counts.alerts.load(Ordering::Relaxed),
                upstream.connected.load(Ordering::Relaxed) == 1,
                upstream.acked.load(Ordering::Relaxed),
                counts.cloud_aggregates.load(Ordering::Relaxed),
                counts.cloud_records.load(Ordering::Relaxed),
            );
            return;
        }
        let mut s = String::new();
        // Home, clear: one screen, redrawn.
        s.push_str("\x1b[H\x1b[2J");
        s.push_str(&format!(
            "perch demo  {elapsed:>4}s   sensors -> mqtt://{}   cloud: mqtt://{}   Ctrl-C stops\n\n",
            self.gateway_addr, self.cloud_addr
        ));
        s.push_str(&format!(
            "events in     {rate:>7.0}/s   {events} so far\n\n"
        ));
        s.push_str(&format!(
            "{:<18} {:>8} {:>9} {:>12} {:>7} {:>8}\n",
            "function", "version", "state", "invocations", "errors", "queued"
        ));
        for f in &functions {
            s.push_str(&format!(
                "{:<18} {:>8} {:>9} {:>12} {:>7} {:>8}\n",
                f.name, f.version, f.state, f.invocations, f.errors, f.queued
            ));
        }
        s.push_str(&format!(
            "\nbuffer        {waiting} records waiting, oldest {oldest_s:.1} s, {} commits\n",
            buffer.commits.load(Ordering::Relaxed)
        ));
        s.push_str(&format!(
            "upstream      {}, {} sent, {} acknowledged\n",
            if upstream.connected.load(Ordering::Relaxed) == 1 {
                "connected"
            } else {
                "not connected"
            },
            upstream.sent.load(Ordering::Relaxed),
            upstream.acked.load(Ordering::Relaxed),
        ));
        s.push_str(&format!(
            "cloud         {} aggregates, {} records (alerts, anomalies)\n\n",
            counts.cloud_aggregates.load(Ordering::Relaxed),
            counts.cloud_records.load(Ordering::Relaxed),
        ));
        let latest = |m: &Mutex<String>| m.lock().unwrap_or_else(|p| p.into_inner()).clone();
        s.push_str(&format!(
            "latest alert      {}\n",
            or_none(latest(&counts.latest_alert))
        ));
        s.push_str(&format!(
            "latest aggregate  {}\n\n",
            or_none(latest(&counts.latest_aggregate))
        ));
        s.push_str(&format!(
            "watch it yourself:  mosquitto_sub -h {} -p {} -t 'alerts/#' -t 'averages/#' -v\n",
            self.gateway_addr.ip(),
            self.gateway_addr.port()
        ));
        if let Some(admin) = self.admin_addr {
            s.push_str(&format!(
                "status page:        http://{admin}/   (metrics: http://{admin}/metrics)\n"
            ));
        }
        let _ = out.write_all(s.as_bytes());
        let _ = out.flush();
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "(none yet)".to_owned()
    } else {
        s
    }
}

/// The line printed when the demo stops (also what its test reads).
fn summary(counts: &Counts, functions: &[FunctionInfo], elapsed: Duration) -> String {
    let per_function: BTreeMap<&str, u64> = functions
        .iter()
        .map(|f| (f.name.as_str(), f.invocations))
        .collect();
    let errors: u64 = functions.iter().map(|f| f.errors).sum();
    format!(
        "perch demo summary: seconds={} events_in={} invocations={} function_errors={errors} \
         alerts={} cloud_aggregates={} cloud_records={}",
        elapsed.as_secs(),
        counts.events.load(Ordering::Relaxed),
        per_function
            .iter()
            .map(|(n, i)| format!("{n}:{i}"))
            .collect::<Vec<_>>()
            .join(","),
        counts.alerts.load(Ordering::Relaxed),
        counts.cloud_aggregates.load(Ordering::Relaxed),
        counts.cloud_records.load(Ordering::Relaxed),
    )
}

/// The gateway's data directory: the user's, or a temporary one removed at
/// the end.
struct DataDir {
    path: PathBuf,
    temporary: bool,
}

impl DataDir {
    fn new(given: Option<PathBuf>) -> anyhow::Result<DataDir> {
        if let Some(path) = given {
            return Ok(DataDir {
                path,
                temporary: false,
            });
        }
        let path = std::env::temp_dir().join(format!("perch-demo-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| {
            format!("cannot create the demo's data directory {}", path.display())
        })?;
        Ok(DataDir {
            path,
            temporary: true,
        })
    }

    fn remove(self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
