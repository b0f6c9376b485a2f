//! A client that speaks raw MQTT over TCP, and the encoders its packets are
//! built with: for tests that send what a client library never would
//! (reserved flags, bad lengths, half a packet) or must see every byte the
//! broker answers with. Every read has a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long [`Raw::connect`] waits for the CONNACK.
pub const WAIT: Duration = Duration::from_secs(10);

/// Appends an MQTT variable-length integer.
pub fn varint(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            return;
        }
    }
}

/// Appends a length-prefixed MQTT string (or binary data).
pub fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u16).to_be_bytes());
    out.extend(s);
}

/// A whole packet: the first byte, the remaining length, the body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    varint(&mut out, body.len());
    out.extend(body);
    out
}

/// Something that encodes to the bytes of a CONNECT.
pub trait Encode {
    fn encode(&self) -> Vec<u8>;
}

impl Encode for [u8] {
    fn encode(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl Encode for Vec<u8> {
    fn encode(&self) -> Vec<u8> {
        self.clone()
    }
}

/// Why [`Raw::read`] returned no packet.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// The server closed the connection (or reset it).
    Closed,
    /// Nothing (whole) arrived before the deadline.
    Timeout,
}

/// One packet: first byte and body.
pub type RawPacket = (u8, Vec<u8>);

/// A client speaking raw MQTT over TCP.
pub struct Raw {
    s: TcpStream,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        Raw {
            s: TcpStream::connect(addr).await.expect("TCP connect"),
        }
    }

    /// Opens a connection, sends `connect` and returns the CONNACK (any
    /// return code).
    pub async fn connect<C: Encode + ?Sized>(addr: SocketAddr, connect: &C) -> (Raw, RawPacket) {
        let mut raw = Raw::open(addr).await;
        raw.send(&connect.encode()).await;
        let ack = raw.read(WAIT).await.expect("a CONNACK");
        assert_eq!(ack.0, 0x20, "CONNACK expected, got {ack:?}");
        (raw, ack)
    }

    /// Sends `bytes`; the connection must still be open.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("send");
    }

    /// Sends `bytes` to a server that may already have closed the
    /// connection; returns whether they could be written.
    pub async fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).await.is_ok()
    }

    /// The next packet, or why there is none within `wait`.
    pub async fn read(&mut self, wait: Duration) -> Result<RawPacket, End> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut first = [0u8; 1];
        match tokio::time::timeout_at(deadline, self.s.read(&mut first)).await {
            Err(_) => return Err(End::Timeout),
            Ok(Ok(0)) | Ok(Err(_)) => return Err(End::Closed),
            Ok(Ok(_)) => {}
        }
        let mut len = 0usize;
        for i in 0..4 {
            let mut b = [0u8; 1];
            match tokio::time::timeout_at(deadline, self.s.read_exact(&mut b)).await {
                Err(_) => return Err(End::Timeout),
                Ok(Err(_)) => return Err(End::Closed),
                Ok(Ok(_)) => {}
            }
            len |= usize::from(b[0] & 0x7f) << (7 * i);
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        match tokio::time::timeout_at(deadline, self.s.read_exact(&mut body)).await {
            Err(_) => Err(End::Timeout),
            Ok(Err(_)) => Err(End::Closed),
            Ok(Ok(_)) => Ok((first[0], body)),
        }
    }

    /// Reads packets until the server closes the connection: `Ok` with
    /// what it sent before, or `Err` with what it sent if it did not close
    /// within `wait`.
    pub async fn closed_within(
        &mut self,
        wait: Duration,
    ) -> Result<Vec<RawPacket>, Vec<RawPacket>> {
        let deadline = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read(left).await {
                Ok(p) => seen.push(p),
                Err(End::Closed) => return Ok(seen),
                Err(End::Timeout) => return Err(seen),
            }
        }
    }

    /// Reads packets until the server closes the connection; returns them.
    /// Panics if it is still open after `wait`.
    pub async fn until_closed(&mut self, wait: Duration) -> Vec<RawPacket> {
        match self.closed_within(wait).await {
            Ok(seen) => seen,
            Err(seen) => panic!("not closed within {wait:?}; saw {seen:?}"),
        }
    }

    /// The next PUBLISH, skipping other packets.
    pub async fn next_publish(&mut self, wait: Duration) -> Result<RawPacket, End> {
        let deadline = Instant::now() + wait;
        loop {
            let p = self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if p.0 >> 4 == 3 {
                return Ok(p);
            }
        }
    }

    /// Whether the connection still works: a PINGREQ gets its PINGRESP
    /// within `wait` (other packets before it are skipped).
    pub async fn still_open(&mut self, wait: Duration) -> bool {
        if !self.try_send(&[0xc0, 0]).await {
            return false;
        }
        let deadline = Instant::now() + wait;
        loop {
            match self
                .read(deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok((0xd0, _)) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}
