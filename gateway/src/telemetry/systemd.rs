//! sd_notify without libsystemd: a few bytes on a Unix datagram socket.
//!
//! Under a `Type=notify` unit systemd passes `$NOTIFY_SOCKET` (a path, or
//! `@name` for the abstract namespace). perch sends `READY=1` once the
//! gateway is ready (after the ready line), `STOPPING=1` when it begins to
//! shut down, and, when the unit sets `WatchdogSec=` (systemd then passes
//! `$WATCHDOG_USEC`), `WATCHDOG=1` every half of that period from a task
//! on the async runtime, so a wedged runtime stops the pings and systemd
//! restarts the service. Without `$NOTIFY_SOCKET` every call does nothing.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification (e.g. `READY=1`). `Ok(false)`: not under systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = socket.to_string_lossy().into_owned();
    if socket.is_empty() {
        return Ok(false);
    }
    let sock = UnixDatagram::unbound()?;
    if let Some(name) = socket.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), &socket)?;
    }
    Ok(true)
}

/// Like [`notify`], logging a failure instead of returning it: a broken
/// notification socket must not stop the gateway.
pub fn notify_or_log(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(error = %e, state, "cannot notify systemd ($NOTIFY_SOCKET)");
    }
}

/// The watchdog ping interval: half of `$WATCHDOG_USEC`, when it is set and
/// meant for this process (`$WATCHDOG_PID`, when set, is our pid).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: it sets process-wide environment variables.
    #[test]
    fn notifies_a_real_datagram_socket_and_reads_the_watchdog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &path);
        assert!(notify("READY=1").unwrap());
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        std::env::set_var("WATCHDOG_USEC", "3000000");
        std::env::remove_var("WATCHDOG_PID");
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(1500)));
        std::env::set_var("WATCHDOG_PID", "1");
        assert_eq!(watchdog_interval(), None, "meant for another process");
        std::env::set_var("WATCHDOG_PID", std::process::id().to_string());
        assert_eq!(watchdog_interval(), Some(Duration::from_millis(1500)));

        std::env::remove_var("NOTIFY_SOCKET");
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        assert!(!notify("READY=1").unwrap(), "a no-op without systemd");
        assert_eq!(watchdog_interval(), None);
    }
}
