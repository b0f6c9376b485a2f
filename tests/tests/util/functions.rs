//! Helpers for the functions end-to-end tests: a gateway with a fixed id and
//! data directory (so it can be restarted on the same state), `perch fn`,
//! WAT modules from `tests/wat/`, and an MQTT client that collects what its
//! subscriptions receive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::perch_bin;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// How long anything in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A gateway with a fixed id and data directory, so it can be restarted on
/// the same state; built on [`super::Gateway`] (killed on drop).
pub struct Gateway {
    process: super::Gateway,
    pub addr: SocketAddr,
    pub id: String,
    pub data_dir: PathBuf,
    config: PathBuf,
    /// The admin login [`Gateway::list`] uses (anonymous when unset: fine
    /// while no user is an admin; see [`Gateway::with_admin`]).
    admin: Option<(String, String)>,
}

impl Gateway {
    /// Starts a gateway with id `id` on a free loopback port, keeping its
    /// state in `data_dir`.
    pub fn start(id: &str, data_dir: &Path) -> Gateway {
        Gateway::start_with(id, data_dir, "")
    }

    /// Like [`Gateway::start`], with more `[functions]` keys (TOML lines);
    /// `state_commit_interval_ms` is 100 unless they set it.
    pub fn start_with(id: &str, data_dir: &Path, functions_toml: &str) -> Gateway {
        let config = data_dir.join("perch.toml");
        let interval = if functions_toml.contains("state_commit_interval_ms") {
            ""
        } else {
            "state_commit_interval_ms = 100\n"
        };
        std::fs::write(
            &config,
            format!(
                "[gateway]\nid = \"{id}\"\nshutdown_timeout_ms = 5000\n\n\
                 [functions]\n{interval}{functions_toml}\n"
            ),
        )
        .unwrap();
        Gateway::spawn(id, data_dir, config)
    }

    fn spawn(id: &str, data_dir: &Path, config: PathBuf) -> Gateway {
        let process = super::Gateway::start(&[
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ]);
        Gateway {
            addr: process.addr(),
            process,
            id: id.to_owned(),
            data_dir: data_dir.to_owned(),
            config,
            admin: None,
        }
    }

    /// Makes [`Gateway::list`] (and so [`Gateway::function`] and
    /// [`Gateway::wait_for_function`]) log in as this admin user, for
    /// gateways where anonymous clients are not admins.
    pub fn with_admin(mut self, user: &str, password: &str) -> Gateway {
        self.admin = Some((user.to_owned(), password.to_owned()));
        self
    }

    /// Stops the gateway with SIGTERM (a clean, staged shutdown) and starts
    /// it again on the same data directory.
    pub fn restart(mut self) -> Gateway {
        self.terminate();
        let (id, dir, config) = (self.id.clone(), self.data_dir.clone(), self.config.clone());
        let admin = self.admin.take();
        Gateway {
            admin,
            ..Gateway::spawn(&id, &dir, config)
        }
    }

    /// SIGKILL (no shutdown at all: what a crash or power cut leaves on
    /// disk), then starts it again on the same data directory.
    pub fn kill_and_restart(mut self) -> Gateway {
        self.process.signal("KILL");
        assert!(
            self.process.wait(DEADLINE).is_some(),
            "perch did not die of SIGKILL"
        );
        let (id, dir, config) = (self.id.clone(), self.data_dir.clone(), self.config.clone());
        let admin = self.admin.take();
        Gateway {
            admin,
            ..Gateway::spawn(&id, &dir, config)
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(&mut self) {
        self.process.signal("TERM");
        match self.process.wait(DEADLINE) {
            Some(status) => assert!(status.success(), "perch exited with {status}"),
            None => panic!("perch did not stop within {DEADLINE:?} after SIGTERM"),
        }
    }

    /// The admin HTTP listener's address (metrics, health).
    pub fn admin(&self) -> SocketAddr {
        self.process
            .admin
            .expect("the ready line names the admin listener")
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        self.process.wait(Duration::ZERO).is_none()
    }

    /// Everything perch logged so far.
    pub fn log(&self) -> String {
        self.process.log_text()
    }

    /// Runs `perch fn <args>` against this gateway; returns (success,
    /// stdout + stderr). The CLI has its own reply timeout, so this ends.
    pub fn perch_fn(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(perch_bin())
            .arg("fn")
            .args(args)
            .args(["--broker", &self.addr.to_string(), "--gateway", &self.id])
            .args(["--timeout-ms", "15000"])
            .output()
            .expect("running perch fn");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// `perch fn list`, parsed.
    pub fn list(&self) -> Vec<serde_json::Value> {
        let mut args = vec!["list", "--json"];
        if let Some((user, password)) = &self.admin {
            args.extend_from_slice(&["--user", user, "--password", password]);
        }
        let (ok, text) = self.perch_fn(&args);
        assert!(ok, "perch fn list failed: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    /// The `perch fn list` entry of one function.
    pub fn function(&self, name: &str) -> serde_json::Value {
        self.list()
            .into_iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed"))
    }

    /// Polls `perch fn list` until `check` holds for `name`.
    pub fn wait_for_function(
        &self,
        name: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let f = self.function(name);
            if check(&f) {
                return f;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{name} did not reach the expected state: {f:#}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Compiles a WAT file from `tests/wat/` to wasm in `dir`; returns its path.
pub fn wasm_file(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("wat")
        .join(format!("{name}.wat"));
    let wasm = wat::parse_file(&source).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, wasm).unwrap();
    path
}

/// Writes a file into `dir`; returns its path.
pub fn file(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

/// An MQTT client of the gateway: publishes, and collects what arrives on
/// its subscriptions.
pub struct Client {
    client: AsyncClient,
    received: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Client {
    /// Connects and subscribes to `filters` (waiting for the SUBACKs).
    pub async fn connect(addr: SocketAddr, name: &str, filters: &[&str]) -> Client {
        let mut options = MqttOptions::new(name, addr.ip().to_string(), addr.port());
        options.set_keep_alive(Duration::from_secs(30));
        // Room for deploy bundles (rumqttc's default limit is 10 KiB).
        options.set_max_packet_size(8 << 20, 8 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((p.topic, p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = acked_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for f in filters {
            client.subscribe(*f, QoS::AtLeastOnce).await.unwrap();
        }
        for _ in filters {
            tokio::time::timeout(DEADLINE, acked_rx.recv())
                .await
                .expect("SUBACK within the deadline");
        }
        Client {
            client,
            received,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.as_bytes().to_vec())
            .await
            .unwrap();
    }

    pub async fn publish_bytes(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// The next message on the subscriptions, within the deadline.
    pub async fn next(&mut self) -> (String, String) {
        let (topic, payload) = tokio::time::timeout(DEADLINE, self.received.recv())
            .await
            .expect("a message within the deadline")
            .expect("the client task runs");
        (topic, String::from_utf8_lossy(&payload).into_owned())
    }

    /// The first message within `wait` whose payload contains `needle`,
    /// skipping others (a retained status the gateway republishes on its
    /// own timer may arrive any time).
    pub async fn any_containing_within(
        &mut self,
        needle: &str,
        wait: Duration,
    ) -> Option<(String, String)> {
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some((topic, payload))) =
            tokio::time::timeout_at(deadline, self.received.recv()).await
        {
            let payload = String::from_utf8_lossy(&payload).into_owned();
            if payload.contains(needle) {
                return Some((topic, payload));
            }
        }
        None
    }

    /// Whether nothing arrives within `wait`.
    pub async fn nothing_within(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .is_err()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}
