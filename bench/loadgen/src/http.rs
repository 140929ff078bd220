//! Minimal HTTP/1.1 client side: one request at a time on a connection,
//! response head parsing, and body framing (Content-Length, chunked, or EOF).

use std::io;
use tokio::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body (1xx, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Body runs until the server closes the connection.
    UntilEof,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    /// Bytes taken by the status line, headers and the blank line.
    pub len: usize,
    pub body: Body,
    /// The connection cannot be reused after this response.
    pub close: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)` means more bytes
/// are needed; `Err` means the bytes are not an HTTP/1.x response.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let end = match find(buf, b"\r\n\r\n") {
        Some(i) => i,
        None if buf.len() > MAX_HEAD => return Err("response head too large".into()),
        None => {
            // Reject garbage early instead of waiting for a timeout.
            let n = buf.len().min(7);
            if buf[..n] != b"HTTP/1."[..n] {
                return Err("not an HTTP/1.x response".into());
            }
            return Ok(None);
        }
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let rest = status_line
        .strip_prefix("HTTP/1.")
        .ok_or("not an HTTP/1.x response")?;
    let mut parts = rest.splitn(3, ' ');
    let minor = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !(minor == "0" || minor == "1") {
        return Err(format!("unsupported HTTP version in {status_line:?}"));
    }
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("bad status line {status_line:?}"));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| format!("bad status line {status_line:?}"))?;
    if !(100..=599).contains(&status) {
        return Err(format!("bad status code {status}"));
    }

    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut conn_close = minor == "0";
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad header line {line:?}"))?;
        let name = name.trim();
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: u64 = value
                .parse()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err("conflicting Content-Length headers".into());
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if name.eq_ignore_ascii_case("connection") {
            for tok in value.split(',') {
                let tok = tok.trim();
                if tok.eq_ignore_ascii_case("close") {
                    conn_close = true;
                } else if tok.eq_ignore_ascii_case("keep-alive") && minor == "0" {
                    conn_close = false;
                }
            }
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Body::Empty
    } else if chunked {
        Body::Chunked
    } else if let Some(n) = content_length {
        Body::Length(n)
    } else {
        Body::UntilEof
    };
    Ok(Some(Head {
        status,
        len: end + 4,
        body,
        close: conn_close || body == Body::UntilEof,
    }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Why a request/response exchange failed after the connection was made.
#[derive(Debug)]
pub enum ExchangeError {
    Io(io::Error),
    /// The server closed the connection before the response was complete.
    Eof {
        got_bytes: bool,
    },
    Bad(String),
}

impl From<io::Error> for ExchangeError {
    fn from(e: io::Error) -> Self {
        ExchangeError::Io(e)
    }
}

pub struct Response {
    pub status: u16,
    pub first_byte: Instant,
    pub close: bool,
}

pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(READ_CHUNK),
        }
    }

    /// Reads more bytes into the buffer; errors with `Eof` on a closed connection.
    async fn fill(&mut self, got_bytes: bool) -> Result<(), ExchangeError> {
        self.buf.reserve(READ_CHUNK);
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(ExchangeError::Eof { got_bytes });
        }
        Ok(())
    }

    /// Sends `request` and reads one full response.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Response, ExchangeError> {
        self.stream.write_all(request).await?;
        // Leftover bytes would be a server sending unsolicited data; drop them.
        self.buf.clear();
        self.fill(false).await?;
        let first_byte = Instant::now();
        let head = loop {
            match parse_head(&self.buf).map_err(ExchangeError::Bad)? {
                Some(h) if (100..200).contains(&h.status) => {
                    // Interim response (e.g. 100 Continue): skip it.
                    self.buf.drain(..h.len);
                }
                Some(h) => break h,
                None => self.fill(true).await?,
            }
        };
        self.buf.drain(..head.len);
        match head.body {
            Body::Empty => {}
            Body::Length(n) => self.skip(n).await?,
            Body::Chunked => self.read_chunked().await?,
            Body::UntilEof => loop {
                self.buf.clear();
                match self.fill(true).await {
                    Ok(()) => {}
                    Err(ExchangeError::Eof { .. }) => break,
                    Err(e) => return Err(e),
                }
            },
        }
        Ok(Response {
            status: head.status,
            first_byte,
            close: head.close,
        })
    }

    /// Consumes `n` body bytes, part of which may already be buffered.
    async fn skip(&mut self, mut n: u64) -> Result<(), ExchangeError> {
        loop {
            let have = self.buf.len() as u64;
            if have >= n {
                // n <= buf.len(), so it fits in usize.
                self.buf.drain(..n as usize);
                return Ok(());
            }
            n -= have;
            self.buf.clear();
            self.fill(true).await?;
        }
    }

    /// Reads a line ending in CRLF at the start of the buffer, returns its
    /// length without the CRLF.
    async fn line(&mut self) -> Result<usize, ExchangeError> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                return Ok(i);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ExchangeError::Bad("chunked framing line too long".into()));
            }
            self.fill(true).await?;
        }
    }

    async fn read_chunked(&mut self) -> Result<(), ExchangeError> {
        loop {
            let len = self.line().await?;
            let size = parse_chunk_size(&self.buf[..len]).map_err(ExchangeError::Bad)?;
            self.buf.drain(..len + 2);
            if size == 0 {
                // Trailers, up to an empty line.
                loop {
                    let len = self.line().await?;
                    self.buf.drain(..len + 2);
                    if len == 0 {
                        return Ok(());
                    }
                }
            }
            self.skip(size).await?;
            let len = self.line().await?;
            if len != 0 {
                return Err(ExchangeError::Bad("chunk not followed by CRLF".into()));
            }
            self.buf.drain(..2);
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<u64, String> {
    let text = std::str::from_utf8(line).map_err(|_| "bad chunk size line")?;
    let hex = text.split(';').next().unwrap_or("").trim();
    u64::from_str_radix(hex, 16).map_err(|_| format!("bad chunk size {hex:?}"))
}

/// Builds the request bytes once per run.
pub fn build_request(path: &str, host: &str, close: bool) -> Vec<u8> {
    let conn = if close { "close" } else { "keep-alive" };
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: {conn}\r\n\r\n").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_with_content_length() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: x\r\n\r\nok";
        let h = parse_head(raw).expect("parse").expect("complete");
        assert_eq!(h.status, 200);
        assert_eq!(h.len, raw.len() - 2);
        assert_eq!(h.body, Body::Length(2));
        assert!(!h.close);
    }

    #[test]
    fn head_variants() {
        // Incomplete head: need more bytes.
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le"), Ok(None));
        assert_eq!(parse_head(b"HTT"), Ok(None));
        // Chunked wins over Content-Length; Connection: close is seen.
        let h = parse_head(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\nConnection: close\r\n\r\n",
        )
        .expect("parse")
        .expect("complete");
        assert_eq!((h.status, h.body, h.close), (404, Body::Chunked, true));
        // No framing: body until EOF, so the connection closes.
        let h = parse_head(b"HTTP/1.1 200 OK\r\n\r\n")
            .expect("parse")
            .expect("complete");
        assert_eq!((h.body, h.close), (Body::UntilEof, true));
        // HTTP/1.0 closes unless keep-alive; 204 has no body.
        let h = parse_head(b"HTTP/1.0 204 No Content\r\nConnection: keep-alive\r\n\r\n")
            .expect("parse")
            .expect("complete");
        assert_eq!((h.status, h.body, h.close), (204, Body::Empty, false));
        // Garbage and broken heads are errors.
        assert!(parse_head(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 2x0 OK\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/2 200\r\n\r\n").is_err());
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Ok(26));
        assert_eq!(parse_chunk_size(b"0;ext=1"), Ok(0));
        assert!(parse_chunk_size(b"zz").is_err());
    }

    #[tokio::test]
    async fn exchange_over_loopback() -> Result<(), Box<dyn std::error::Error>> {
        // A scripted server on an ephemeral loopback port: one keep-alive
        // response with Content-Length, then a chunked one.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await?;
            s.write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
            )
            .await?;
            let _ = s.read(&mut buf).await?;
            s.write_all(
                b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .await?;
            Ok::<_, io::Error>(())
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await?);
        let req = build_request("/", "127.0.0.1", false);
        let r = conn.exchange(&req).await.map_err(|e| format!("{e:?}"))?;
        assert_eq!((r.status, r.close), (200, false));
        let r = conn.exchange(&req).await.map_err(|e| format!("{e:?}"))?;
        assert_eq!((r.status, r.close), (500, false));
        server.await??;
        Ok(())
    }
}
