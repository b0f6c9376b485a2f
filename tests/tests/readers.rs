//! Another process may read perch's databases while it runs (`perch buffer
//! stats`, a backup, sqlite3): perch keeps its SQLite locks the whole time,
//! so such a reader neither resets the shared WAL index under it (perch
//! died of SIGBUS when one did) nor sees a half-written transaction.

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use rumqttc::QoS;

use crate::util::mqtt::{self, connect, wait_puback};
use crate::util::{free_port, perch, temp_file, Gateway};

/// Records in the buffer, from `perch buffer stats` run beside perch.
fn buffered(gw: &Gateway) -> u64 {
    let dir = gw.data_dir.path().display().to_string();
    let out = perch(&["buffer", "stats", "--data-dir", &dir]);
    assert!(out.status.success(), "perch buffer stats failed: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("records:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no records: line in {text}"))
}

/// The byte ranges of the POSIX record locks process `pid` holds on the
/// file with inode `ino`, from /proc/locks (`1: POSIX ADVISORY READ <pid>
/// <maj>:<min>:<ino> <start> <end>`).
fn posix_locks(pid: u32, ino: u64) -> Vec<String> {
    let locks = std::fs::read_to_string("/proc/locks").expect("/proc/locks");
    locks
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (kind, holder, file) = (f.get(1)?, f.get(4)?, f.get(5)?);
            let inode: u64 = file.rsplit(':').next()?.parse().ok()?;
            (*kind == "POSIX" && holder.parse() == Ok(pid) && inode == ino)
                .then(|| f[6..].join("-"))
        })
        .collect()
}

async fn publish(addr: std::net::SocketAddr, first: u64, count: u64) {
    let (client, mut el) = connect(mqtt::options(&format!("reader-test-{first}"), addr))
        .await
        .expect("the sensor connects");
    for n in first..first + count {
        client
            .publish(
                "sensors/t",
                QoS::AtLeastOnce,
                false,
                format!("{{\"n\":{n}}}"),
            )
            .await
            .unwrap();
        wait_puback(&mut el).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_beside_perch_leaves_its_locks_and_wal_index_alone() {
    // An upstream nobody listens on: every record stays in the buffer.
    let (_cfg, config) = temp_file(
        "perch.toml",
        &format!(
            "[gateway]\nid = \"gw-readers\"\n\n[[broker.listeners]]\nname = \"local\"\n\
             listen = \"127.0.0.1:0\"\nallow_anonymous = true\n\n[upstream]\n\
             forward_topics = [\"sensors/#\"]\n\n[upstream.mqtt]\nhost = \"127.0.0.1\"\n\
             port = {}\n",
            free_port()
        ),
    );
    let mut gw = Gateway::start(&["--config", config.to_str().unwrap()]);
    publish(gw.addr(), 0, 50).await;

    // perch holds SQLite's locks on the WAL index (the `-shm` file) while
    // it has the buffer open; the one at byte 128 tells a newcomer that
    // the index is live and must not be reset.
    let shm = gw.data_dir.path().join("buffer.db-shm");
    let ino = std::fs::metadata(&shm).expect("buffer.db-shm exists").ino();
    let held = posix_locks(gw.pid(), ino);
    assert!(
        held.iter().any(|range| range == "128-128"),
        "perch holds no lock on byte 128 of {} (it holds {held:?}): another process \
         opening the buffer would truncate the WAL index under perch",
        shm.display()
    );

    // Readers come and go while perch keeps writing.
    for round in 1..=3u64 {
        assert_eq!(buffered(&gw), 50 * round, "records after round {round}");
        publish(gw.addr(), 50 * round, 50).await;
        assert!(
            gw.wait(Duration::ZERO).is_none(),
            "perch died while another process read its buffer:\n{}",
            gw.log_text()
        );
    }
    assert_eq!(buffered(&gw), 200);
    assert!(
        posix_locks(gw.pid(), ino).iter().any(|r| r == "128-128"),
        "perch lost its lock on the WAL index"
    );
}
