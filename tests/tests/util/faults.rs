//! Helpers for the fault-injection tests (`faults.rs`): a TCP proxy that can
//! refuse, freeze, delay and cut the upstream link, a seeded random number
//! generator for kill points, the resident memory of a process, and the
//! suite's knobs (`PERCH_FAULT_FULL`, `PERCH_FAULT_CYCLES`,
//! `PERCH_FAULT_SEED`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, watch};

/// Whether the full (long) form of the suite was asked for.
pub fn full() -> bool {
    std::env::var("PERCH_FAULT_FULL").is_ok_and(|v| v == "1")
}

/// `short` in the bounded run, `long` with `PERCH_FAULT_FULL=1`.
pub fn scale(short: Duration, long: Duration) -> Duration {
    if full() {
        long
    } else {
        short
    }
}

/// Kill cycles: `PERCH_FAULT_CYCLES`, else 40 in the full run and 8 in the
/// bounded one (about a minute on a loaded 2-core machine).
pub fn cycles() -> usize {
    match std::env::var("PERCH_FAULT_CYCLES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PERCH_FAULT_CYCLES={v:?} is not a number")),
        Err(_) if full() => 40,
        Err(_) => 8,
    }
}

/// The seed of the kill points: `PERCH_FAULT_SEED`, else the clock. Every
/// test prints it so a failure can be replayed.
pub fn seed() -> u64 {
    match std::env::var("PERCH_FAULT_SEED") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PERCH_FAULT_SEED={v:?} is not a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// SplitMix64: small, deterministic for a seed, good enough to pick kill
/// points.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// Resident memory of process `pid` in KiB (VmRSS in /proc).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 200 ms until dropped; keeps the peak.
pub struct RssPeak {
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl RssPeak {
    pub fn watch(pid: u32) -> RssPeak {
        let peak = Arc::new(AtomicU64::new(0));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        RssPeak { peak, task }
    }

    /// The highest RSS seen so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the proxy does with the bytes and connections it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Forwards both ways.
    Pass = 0,
    /// Accepts new connections and closes them at once (the upstream is
    /// down); existing ones are cut when the mode is set.
    Refuse = 1,
    /// A silent partition: nothing is forwarded either way and nothing is
    /// closed, on existing and new connections alike, until the mode
    /// changes (bytes then flow again, late).
    Freeze = 2,
}

/// A TCP proxy on loopback between perch and its upstream broker, which
/// the test drives: refuse, freeze, delay, cut. It counts the connections
/// perch opens through it (its reconnect attempts).
pub struct FaultProxy {
    pub addr: SocketAddr,
    mode: watch::Sender<u8>,
    /// Delay added to every chunk travelling from the upstream to perch
    /// (its CONNACK, PUBACKs): a slow upstream.
    delay_ms: Arc<AtomicU64>,
    cut: broadcast::Sender<()>,
    attempts: Arc<Mutex<Vec<Instant>>>,
}

impl FaultProxy {
    pub async fn start(target: SocketAddr) -> FaultProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass as u8);
        let (cut, _) = broadcast::channel(16);
        let proxy = FaultProxy {
            addr,
            mode,
            delay_ms: Arc::new(AtomicU64::new(0)),
            cut,
            attempts: Arc::new(Mutex::new(Vec::new())),
        };
        let (mode, cut, delay, attempts) = (
            proxy.mode.clone(),
            proxy.cut.clone(),
            proxy.delay_ms.clone(),
            proxy.attempts.clone(),
        );
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                attempts.lock().unwrap().push(Instant::now());
                let _ = client.set_nodelay(true);
                let mut mode_rx = mode.subscribe();
                if *mode_rx.borrow() == Mode::Refuse as u8 {
                    drop(client);
                    continue;
                }
                let (cut, delay) = (cut.subscribe(), delay.clone());
                tokio::spawn(async move {
                    // A connection opened during a partition waits for it
                    // to heal before it reaches the upstream.
                    if !wait_unfrozen(&mut mode_rx).await {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = server.set_nodelay(true);
                    carry(client, server, mode_rx, cut, delay).await;
                });
            }
        });
        proxy
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode as u8);
        if mode == Mode::Refuse {
            self.cut_all();
        }
    }

    /// Closes every connection now (new ones are accepted as the mode says).
    pub fn cut_all(&self) {
        let _ = self.cut.send(());
    }

    /// Delays every chunk from the upstream to perch by `delay`.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Connections perch opened through the proxy so far.
    pub fn attempts(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }

    /// Connections opened at or after `since`.
    pub fn attempts_since(&self, since: Instant) -> Vec<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .copied()
            .filter(|t| *t >= since)
            .collect()
    }
}

/// Waits while the mode is `Freeze`; false when the proxy is gone.
async fn wait_unfrozen(mode: &mut watch::Receiver<u8>) -> bool {
    loop {
        if *mode.borrow_and_update() != Mode::Freeze as u8 {
            return true;
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

/// Carries bytes both ways until either side closes or the proxy cuts.
async fn carry(
    client: TcpStream,
    server: TcpStream,
    mode: watch::Receiver<u8>,
    mut cut: broadcast::Receiver<()>,
    delay_ms: Arc<AtomicU64>,
) {
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let no_delay = Arc::new(AtomicU64::new(0));
    tokio::select! {
        _ = pump(client_rx, server_tx, mode.clone(), no_delay) => {}
        _ = pump(server_rx, client_tx, mode, delay_ms) => {}
        _ = cut.recv() => {}
    }
}

/// One direction: read a chunk, hold it while frozen, deliver it `delay`
/// after it was read (chunks keep their order; a reader task keeps reading
/// meanwhile, so a delay adds latency without limiting throughput).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<u8>,
    delay_ms: Arc<AtomicU64>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(Instant, Vec<u8>)>(256);
    let mut read_mode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if !wait_unfrozen(&mut read_mode).await {
                return;
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                return;
            }
        }
    };
    let writer = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            let delay = Duration::from_millis(delay_ms.load(Ordering::Relaxed));
            tokio::time::sleep_until((read_at + delay).into()).await;
            if !wait_unfrozen(&mut mode).await {
                return;
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
    };
    // The reader's end (EOF) closes the channel: the writer delivers what
    // was read, then ends too.
    tokio::join!(reader, writer);
}
