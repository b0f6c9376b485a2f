//! A minimal HTTP/1.1 responder: one request per connection, GET and HEAD,
//! bounded in size and time.
//!
//! Why not axum/hyper (which rumqttd already pulls in): the admin listener
//! serves five small read-only pages to Prometheus and a browser. Reading one
//! request head and writing one response with `Connection: close` is ~150
//! lines that are easy to bound (head size, read deadline, connection count)
//! and add nothing to the binary; hyper's server would add its HTTP state
//! machine for features (keep-alive, pipelining, bodies, upgrades) this
//! listener does not want.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of a request the admin listener looks at.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
}

/// Why a request could not be read; each maps to a status code.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// Closed before a full head arrived; nothing to answer.
    Closed,
    TooLarge,
    Timeout,
    Malformed(&'static str),
}

/// Reads one request head.
pub async fn read_request<S: AsyncReadExt + Unpin>(stream: &mut S) -> Result<Request, BadRequest> {
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let mut chunk = [0u8; 1024];
        loop {
            if let Some(end) = find_head_end(&buf) {
                return parse_head(&buf[..end]);
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err(BadRequest::TooLarge);
            }
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|_| BadRequest::Closed)?;
            if n == 0 {
                return Err(BadRequest::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or(Err(BadRequest::Timeout))
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses a request head (without the final blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, BadRequest> {
    let head = std::str::from_utf8(head).map_err(|_| BadRequest::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest::Malformed(
            "the request line is not METHOD TARGET VERSION",
        ));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(BadRequest::Malformed("only HTTP/1.x is served"));
    }
    if method.is_empty() || !target.starts_with('/') {
        return Err(BadRequest::Malformed("the request target must be a path"));
    }
    let mut authorization = None;
    for header in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = header.split_once(':') else {
            return Err(BadRequest::Malformed("a header line has no ':'"));
        };
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(value.trim().to_owned());
        }
    }
    let path = target.split(['?', '#']).next().unwrap_or("/").to_owned();
    Ok(Request {
        method: method.to_owned(),
        path,
        authorization,
    })
}

/// A response to write.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header lines, each without the CRLF.
    pub headers: Vec<String>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
        body.push(b'\n');
        Response::new(status, "application/json", body)
    }

    /// Writes the response; the connection closes after it.
    pub async fn write<S: AsyncWriteExt + Unpin>(
        &self,
        stream: &mut S,
        head_only: bool,
    ) -> std::io::Result<()> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        )
        .into_bytes();
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        stream.write_all(&out).await?;
        stream.shutdown().await
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Decodes standard base64 (for `Authorization: Basic`); `None` if invalid.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_is_parsed() {
        let r =
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nauthorization:  Bearer abc \r\n")
                .unwrap();
        assert_eq!(
            r,
            Request {
                method: "GET".into(),
                path: "/metrics".into(),
                authorization: Some("Bearer abc".into())
            }
        );
    }

    #[test]
    fn malformed_heads_are_refused() {
        for head in [
            &b"GET /\r\n"[..],
            b"GET / HTTP/2\r\n",
            b"GET http://x/ HTTP/1.1\r\n",
            b"GET / HTTP/1.1\r\nno colon here\r\n",
            b"GET / HTTP/1.1 extra\r\n",
        ] {
            assert!(
                matches!(parse_head(head), Err(BadRequest::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_head_is_refused() {
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        let mut stream = big.as_bytes();
        assert_eq!(read_request(&mut stream).await, Err(BadRequest::TooLarge));
        let mut cut: &[u8] = b"GET / HTTP/1.1\r\nHost";
        assert_eq!(read_request(&mut cut).await, Err(BadRequest::Closed));
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("YWRtaW46czNjcmV0").unwrap(), b"admin:s3cret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("a!==").is_none());
    }
}
