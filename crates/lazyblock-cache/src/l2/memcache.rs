//! A minimal memcached client: the text protocol's `get` and `set`, over pooled TCP
//! connections, each request bounded by a timeout.
//!
//! The response parser ([`parse_get`], [`parse_store`]) is pure and is what the fuzz target
//! `memcache_response` drives: a cache node is not trusted to answer sanely, so a malformed,
//! oversized or truncated answer is an error, never a panic or an unbounded buffer.
//!
//! A connection returns to its node's pool only after a request completed cleanly; one whose
//! request failed, timed out or was cancelled (the L2 reader drops the stripes it no longer
//! needs) is closed, since its stream may hold half an answer. An I/O error (refused, reset)
//! also drops the node's idle connections; a timeout or a malformed answer does not.

use std::ops::Range;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What went wrong talking to one node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McError {
    /// Could not connect, or the connection broke.
    #[error("{0}")]
    Io(String),
    /// No complete answer within the request timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The node answered something that is not the protocol, or larger than allowed.
    #[error("malformed answer: {0}")]
    Protocol(String),
    /// The node refused the request (`SERVER_ERROR`, `CLIENT_ERROR`, `NOT_STORED`, ...).
    #[error("refused: {0}")]
    Refused(String),
}

/// The outcome of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The answer is not complete yet.
    Incomplete,
    /// The answer, and how many bytes of the buffer it used.
    Done(T, usize),
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The longest header line we wait for before calling the answer malformed.
const MAX_LINE: usize = 512;

/// Parses the answer to `get <key>`: `END\r\n` (a miss) or
/// `VALUE <key> <flags> <bytes>\r\n<data>\r\nEND\r\n`, giving where the value lies in `buf`
/// (so the caller can take it without a copy). A value longer than `max_value`, for another
/// key, or any other line is a protocol error.
pub fn parse_get(
    buf: &[u8],
    key: &[u8],
    max_value: usize,
) -> Result<Parsed<Option<Range<usize>>>, McError> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > MAX_LINE {
            return Err(McError::Protocol("header line too long".into()));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = &buf[..eol];
    if line == b"END" {
        return Ok(Parsed::Done(None, eol + 2));
    }
    if let Some(refusal) = refusal(line) {
        return Err(refusal);
    }
    let mut parts = line.split(|&b| b == b' ');
    if parts.next() != Some(b"VALUE".as_slice()) {
        return Err(McError::Protocol(format!(
            "unexpected line {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        )));
    }
    if parts.next() != Some(key) {
        return Err(McError::Protocol("value for another key".into()));
    }
    let _flags = parts
        .next()
        .and_then(parse_u64)
        .ok_or_else(|| McError::Protocol("bad flags".into()))?;
    let len = parts
        .next()
        .and_then(parse_u64)
        .ok_or_else(|| McError::Protocol("bad length".into()))?;
    // An optional CAS unique may follow; nothing else.
    if parts.next().is_some_and(|p| parse_u64(p).is_none()) || parts.next().is_some() {
        return Err(McError::Protocol("trailing fields".into()));
    }
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max_value)
        .ok_or_else(|| McError::Protocol(format!("value of {len} bytes exceeds {max_value}")))?;
    let start = eol + 2;
    let end = start + len;
    let tail = b"\r\nEND\r\n";
    if buf.len() < end + tail.len() {
        return Ok(Parsed::Incomplete);
    }
    if &buf[end..end + tail.len()] != tail {
        return Err(McError::Protocol("value not followed by END".into()));
    }
    Ok(Parsed::Done(Some(start..end), end + tail.len()))
}

/// Parses the answer to `set`: `STORED\r\n`, or a refusal.
pub fn parse_store(buf: &[u8]) -> Result<Parsed<()>, McError> {
    let Some(eol) = find_crlf(buf) else {
        if buf.len() > MAX_LINE {
            return Err(McError::Protocol("answer line too long".into()));
        }
        return Ok(Parsed::Incomplete);
    };
    let line = &buf[..eol];
    if line == b"STORED" {
        return Ok(Parsed::Done((), eol + 2));
    }
    Err(refusal(line).unwrap_or_else(|| {
        McError::Protocol(format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        ))
    }))
}

fn refusal(line: &[u8]) -> Option<McError> {
    let known = [
        b"SERVER_ERROR".as_slice(),
        b"CLIENT_ERROR",
        b"ERROR",
        b"NOT_STORED",
    ];
    known.iter().any(|k| line.starts_with(k)).then(|| {
        McError::Refused(String::from_utf8_lossy(&line[..line.len().min(128)]).into_owned())
    })
}

fn parse_u64(b: &[u8]) -> Option<u64> {
    if b.is_empty() || b.len() > 20 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// One memcached node: its address and a pool of idle connections.
#[derive(Debug)]
pub struct Node {
    addr: String,
    idle: Mutex<Vec<TcpStream>>,
    max_idle: usize,
    connect_timeout: Duration,
}

impl Node {
    /// A node at `addr` (`host:port`). Connections are made on demand.
    pub fn new(addr: String, max_idle: usize, connect_timeout: Duration) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::new()),
            max_idle,
            connect_timeout,
        }
    }

    /// The node's address as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    async fn conn(&self) -> Result<TcpStream, McError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() {
            return Ok(c);
        }
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| McError::Timeout(self.connect_timeout))?
            .map_err(|e| McError::Io(format!("connect {}: {e}", self.addr)))?;
        // Requests are single writes followed by a read; Nagle would only add delay.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    fn release(&self, conn: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Drops every idle connection (after a connection to the node broke, the others likely
    /// are broken too). Requests do this themselves on an I/O error.
    fn forget_idle(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// `get key`: the value, `None` on a miss. Values longer than `max_value` are an error.
    /// The value is the receive buffer itself, sliced (no copy).
    pub async fn get(
        &self,
        key: &str,
        max_value: usize,
        timeout: Duration,
    ) -> Result<Option<Bytes>, McError> {
        let request = format!("get {key}\r\n");
        let key = key.as_bytes().to_vec();
        // Room for the whole answer: the header line, the value and the trailer.
        let capacity = max_value + key.len() + 64;
        let (range, buf) = self
            .request(request.into_bytes(), timeout, capacity, move |buf| {
                parse_get(buf, &key, max_value)
            })
            .await?;
        Ok(range.map(|r| Bytes::from(buf).slice(r)))
    }

    /// `set key 0 <ttl> <len>` with `value`; `ttl_secs` 0 keeps it until evicted.
    pub async fn set(
        &self,
        key: &str,
        value: &[u8],
        ttl_secs: u32,
        timeout: Duration,
    ) -> Result<(), McError> {
        let mut request = format!("set {key} 0 {ttl_secs} {}\r\n", value.len()).into_bytes();
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
        self.request(request, timeout, 256, parse_store)
            .await
            .map(|((), _)| ())
    }

    /// Sends `request` and reads until `parse` says the answer is complete; returns the parsed
    /// answer and the receive buffer.
    async fn request<T>(
        &self,
        request: Vec<u8>,
        timeout: Duration,
        capacity: usize,
        parse: impl Fn(&[u8]) -> Result<Parsed<T>, McError>,
    ) -> Result<(T, Vec<u8>), McError> {
        let exchange = async {
            let mut conn = self.conn().await?;
            let io = |e: std::io::Error| McError::Io(format!("{}: {e}", self.addr));
            conn.write_all(&request).await.map_err(io)?;
            let mut buf = Vec::with_capacity(capacity);
            loop {
                if let Parsed::Done(value, used) = parse(&buf)? {
                    if used == buf.len() {
                        self.release(conn);
                    }
                    return Ok((value, buf));
                }
                let before = buf.len();
                if buf.capacity() - buf.len() < 4096 {
                    buf.reserve(64 << 10);
                }
                let n = conn.read_buf(&mut buf).await.map_err(io)?;
                if n == 0 || buf.len() == before {
                    return Err(McError::Io(format!(
                        "{}: connection closed mid-answer",
                        self.addr
                    )));
                }
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Err(e @ McError::Io(_))) => {
                self.forget_idle();
                Err(e)
            }
            Ok(result) => result,
            Err(_) => Err(McError::Timeout(timeout)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_answers() {
        let k = b"k1";
        assert_eq!(parse_get(b"END\r\n", k, 10), Ok(Parsed::Done(None, 5)));
        assert_eq!(parse_get(b"EN", k, 10), Ok(Parsed::Incomplete));
        let hit = b"VALUE k1 0 3\r\nabc\r\nEND\r\n";
        assert_eq!(
            parse_get(hit, k, 10),
            Ok(Parsed::Done(Some(14..17), hit.len()))
        );
        for cut in 0..hit.len() {
            assert_eq!(
                parse_get(&hit[..cut], k, 10),
                Ok(Parsed::Incomplete),
                "cut {cut}"
            );
        }
        let cas = b"VALUE k1 5 3 99\r\nabc\r\nEND\r\n";
        assert!(matches!(
            parse_get(cas, k, 10),
            Ok(Parsed::Done(Some(_), _))
        ));
        assert!(matches!(
            parse_get(hit, b"k2", 10),
            Err(McError::Protocol(_))
        ));
        assert!(matches!(parse_get(hit, k, 2), Err(McError::Protocol(_))));
        assert!(matches!(
            parse_get(b"VALUE k1 0 3\r\nabcXXEND\r\n", k, 10),
            Err(McError::Protocol(_))
        ));
        assert!(matches!(
            parse_get(b"VALUE k1 0 -3\r\n", k, 10),
            Err(McError::Protocol(_))
        ));
        assert!(matches!(
            parse_get(b"VALUE k1 0 99999999999999999999999\r\n", k, 10),
            Err(McError::Protocol(_))
        ));
        assert!(matches!(
            parse_get(b"SERVER_ERROR out of memory\r\n", k, 10),
            Err(McError::Refused(_))
        ));
        assert!(matches!(
            parse_get(b"HELLO\r\n", k, 10),
            Err(McError::Protocol(_))
        ));
        assert!(matches!(
            parse_get(&[b'x'; 600], k, 10),
            Err(McError::Protocol(_))
        ));
    }

    #[test]
    fn store_answers() {
        assert_eq!(parse_store(b"STORED\r\n"), Ok(Parsed::Done((), 8)));
        assert_eq!(parse_store(b"STOR"), Ok(Parsed::Incomplete));
        assert!(matches!(
            parse_store(b"NOT_STORED\r\n"),
            Err(McError::Refused(_))
        ));
        assert!(matches!(
            parse_store(b"SERVER_ERROR object too large for cache\r\n"),
            Err(McError::Refused(_))
        ));
        assert!(matches!(
            parse_store(b"WHAT\r\n"),
            Err(McError::Protocol(_))
        ));
    }
}
