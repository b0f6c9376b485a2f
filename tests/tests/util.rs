//! Shared helpers for the end-to-end tests: build and start the real `perch`
//! binary, learn its port from the ready line, stop it, and connect real MQTT
//! clients. Every wait is bounded so a broken gateway fails a test instead of
//! hanging it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod faults;
pub mod functions;
pub mod raw;

/// How long a gateway may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The `perch` binary, built once per test process so it is never stale.
pub fn perch_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("PERCH_BIN") {
            return PathBuf::from(bin);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        // With the whole workspace's test feature set (`--workspace
        // --tests`), the resolution `cargo test --workspace` uses: a plain
        // `-p perch` build resolves dependency features differently, and the
        // two builds then rebuild each other's dependencies on every run.
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "--workspace",
                "--tests",
                "--bin",
                "perch",
            ])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for the perch binary");
        assert!(status.success(), "cargo build -p perch failed");
        // target/debug/deps/<test> -> target/debug/perch
        let exe = std::env::current_exe().expect("test executable path");
        let dir = exe.parent().and_then(Path::parent).expect("target dir");
        let bin = dir.join("perch");
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
    .clone()
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_owned()
}

/// A finished command's stdout then stderr, as text (for messages and
/// `contains` checks).
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `perch ARGS` to completion (for the one-shot subcommands).
pub fn perch(args: &[&str]) -> Output {
    perch_with_stdin(args, "")
}

pub fn perch_with_stdin(args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(perch_bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting perch");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    wait_output(child, Duration::from_secs(30))
}

fn wait_output(child: Child, timeout: Duration) -> Output {
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("waiting for perch"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("perch did not finish within {timeout:?}");
        }
    }
}

/// A running `perch run`, killed when dropped.
pub struct Gateway {
    child: Option<Child>,
    /// Listener name -> bound address, from the ready line.
    pub listeners: Vec<(String, SocketAddr)>,
    /// The admin HTTP listener's address, from the ready line.
    pub admin: Option<SocketAddr>,
    /// Every stderr line so far (the reader thread keeps appending).
    pub log: Arc<Mutex<Vec<String>>>,
    pub data_dir: tempfile::TempDir,
}

impl Gateway {
    /// Starts `perch run` on a free loopback port with a fresh data dir, plus
    /// `extra` arguments, and waits for its ready line.
    pub fn start(extra: &[&str]) -> Gateway {
        Gateway::try_start(extra).unwrap_or_else(|log| panic!("perch did not become ready:\n{log}"))
    }

    /// Like `try_start`, with extra environment variables for perch.
    pub fn try_start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Gateway, String> {
        Gateway::spawn(extra, env)
    }

    /// Like `start`, but returns the log if perch exits or never gets ready.
    pub fn try_start(extra: &[&str]) -> Result<Gateway, String> {
        Gateway::spawn(extra, &[])
    }

    fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Result<Gateway, String> {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = vec!["run".into()];
        if !extra.contains(&"--data-dir") {
            args.push("--data-dir".into());
            args.push(data_dir.path().display().to_string());
        }
        // `-p`/`--port` sets the port of the default listener itself.
        let listen_given = ["--config", "--listen", "-p", "--port"]
            .iter()
            .any(|flag| extra.contains(flag));
        if !listen_given {
            args.push("--listen".into());
            args.push("127.0.0.1:0".into());
        }
        // Tests run in parallel: never the fixed default admin port.
        if !extra.contains(&"--admin-listen") {
            args.push("--admin-listen".into());
            args.push("127.0.0.1:0".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut child = Command::new(perch_bin())
            .args(&args)
            .env(
                "RUST_LOG",
                std::env::var("PERCH_TEST_LOG").unwrap_or_else(|_| "info".to_owned()),
            )
            .env("NO_COLOR", "1")
            // The same log shape and no systemd whatever runs the tests.
            .env_remove("JOURNAL_STREAM")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting perch run");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                // Read to the end whatever the bytes: a line that is not
                // UTF-8 must not stop the reader, or the pipe fills and
                // perch blocks on its next log line.
                for line in BufReader::new(stderr).split(b'\n').map_while(Result::ok) {
                    let line = strip_ansi(&String::from_utf8_lossy(&line));
                    if line.contains("perch ready") {
                        let _ = ready_tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(line) = ready_rx.recv_timeout(Duration::from_millis(50)) {
                return Ok(Gateway {
                    child: Some(child),
                    listeners: parse_listeners(&line),
                    admin: parse_admin(&line),
                    log,
                    data_dir,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                let log = log.lock().unwrap().join("\n");
                return Err(format!("exited with {status}:\n{log}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let log = log.lock().unwrap().join("\n");
                return Err(format!("no ready line within {READY_TIMEOUT:?}:\n{log}"));
            }
        }
    }

    /// The address of the first listener.
    pub fn addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// The address of the listener called `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners))
            .1
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends a signal (e.g. "TERM", "INT", "KILL").
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// Waits for the process to exit, at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// "..., admin on http://127.0.0.1:9181, listening on ..."
fn parse_admin(line: &str) -> Option<SocketAddr> {
    let rest = line.split("admin on http://").nth(1)?;
    rest.split(',').next()?.trim().parse().ok()
}

/// "... listening on mqtt://127.0.0.1:1883 (local), mqtts://127.0.0.1:8883 (tls)"
fn parse_listeners(line: &str) -> Vec<(String, SocketAddr)> {
    let rest = line
        .split("listening on ")
        .nth(1)
        .expect("ready line names listeners");
    rest.split(", ")
        .map(|item| {
            let (url, name) = item.split_once(" (").expect("url (name)");
            let addr = url.split("://").nth(1).expect("scheme://addr");
            (
                name.trim_end_matches(')').to_owned(),
                addr.parse().expect("socket address"),
            )
        })
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes `text` to a file in a new temp dir; returns (dir, path).
pub fn temp_file(name: &str, text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// A free loopback port (for configs that must name one).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub mod mqtt {
    //! rumqttc clients with bounded waits.

    use std::net::SocketAddr;
    use std::time::Duration;

    use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
    use tokio::time::timeout;

    pub const WAIT: Duration = Duration::from_secs(10);

    pub fn options(id: &str, addr: SocketAddr) -> MqttOptions {
        let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connects and waits for the CONNACK; returns the refusal if any.
    pub async fn connect(opts: MqttOptions) -> Result<(AsyncClient, EventLoop), ConnectionError> {
        let (client, mut el) = AsyncClient::new(opts, 64);
        loop {
            match timeout(WAIT, el.poll())
                .await
                .expect("no answer to CONNECT")
            {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, el)),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Subscribes and waits for the SUBACK; returns its return codes.
    pub async fn subscribe(
        client: &AsyncClient,
        el: &mut EventLoop,
        filter: &str,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        loop {
            match timeout(WAIT, el.poll()).await.expect("no SUBACK").unwrap() {
                Event::Incoming(Packet::SubAck(ack)) => return ack.return_codes,
                _ => continue,
            }
        }
    }

    /// Polls until a PUBLISH arrives or `wait` passes.
    pub async fn next_publish(el: &mut EventLoop, wait: Duration) -> Option<rumqttc::Publish> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match timeout(left, el.poll()).await {
                Err(_) => return None,
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) => return Some(p),
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => panic!("connection failed while waiting for a publish: {e}"),
            }
        }
    }

    /// Drives the event loop until the PUBACK for the latest QoS 1 publish.
    pub async fn wait_puback(el: &mut EventLoop) {
        loop {
            match timeout(WAIT, el.poll()).await.expect("no PUBACK").unwrap() {
                Event::Incoming(Packet::PubAck(_)) => return,
                _ => continue,
            }
        }
    }
}

/// A TCP proxy on loopback that the test can cut and restore, to fake an
/// upstream outage while the real upstream broker stays up.
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::broadcast::Sender<()>,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let (up2, cut2) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.recv() => {}
                    }
                });
            }
        });
        Proxy { addr, up, cut }
    }

    /// Cuts every connection and refuses new ones.
    pub fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    pub fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
