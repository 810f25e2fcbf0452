//! A minimal HTTP/1.1 client for token calls: one request per connection
//! (`connection: close`), asynchronous DNS (`tokio::net::lookup_host`), TLS through
//! Pingora's own rustls on ring with the platform's CA certificates, a bounded answer and
//! one deadline for the whole call.
//!
//! Why not Pingora's upstream connector: at trace level it prints response chunks, which
//! for a token endpoint hold the access token; and a token call an hour is no reason for a
//! connection pool. Nothing here logs a header value or a body.

use pingora::tls::{ClientConfig, RootCertStore, ServerName, TlsConnector};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read (head and body); token answers are a few hundred bytes.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Why a call failed, in words without any header value or body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http(s)://host[:port]/path`.
    #[error("bad URL: {0}")]
    Url(String),
    /// Name resolution or TCP connect failed.
    #[error("cannot connect to {0}")]
    Connect(String),
    /// TLS setup or handshake failed.
    #[error("TLS with {0}")]
    Tls(String),
    /// Reading or writing failed.
    #[error("I/O with {0}")]
    Io(String),
    /// No complete answer within the deadline.
    #[error("no answer from {0} within {1} s")]
    Timeout(String, u64),
    /// The answer is not HTTP/1.1 we understand, or too large.
    #[error("bad answer from {0}: {1}")]
    Malformed(String, &'static str),
}

/// A status and a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body, de-chunked.
    pub body: Vec<u8>,
}

/// Makes one call at a time; cheap to share.
pub struct HttpClient {
    tls: Result<TlsConnector, String>,
    timeout: Duration,
}

impl HttpClient {
    /// A client whose calls each finish within `timeout`. The CA certificates are read now
    /// (on the caller's thread: the refresher's, or `lmgate check`'s); without any, https
    /// calls fail and http ones still work.
    pub fn new(timeout: Duration) -> HttpClient {
        HttpClient {
            tls: tls_connector(),
            timeout,
        }
    }

    /// `method url` with `headers` and `body` (a `content-length` is added). The answer is
    /// read whole.
    pub async fn call(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Answer, HttpError> {
        self.call_bounded(method, url, headers, body, MAX_ANSWER_BYTES)
            .await
    }

    /// [`HttpClient::call`] for answers larger than a token answer (a report's rows): the
    /// answer (head and body) may hold up to `max_answer_bytes`.
    pub async fn call_bounded(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        max_answer_bytes: usize,
    ) -> Result<Answer, HttpError> {
        let target = Target::parse(url)?;
        let endpoint = format!("{}:{}", target.host, target.port);
        let call = self.call_inner(&target, method, headers, body, max_answer_bytes);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(endpoint, self.timeout.as_secs())),
        }
    }

    async fn call_inner(
        &self,
        t: &Target,
        method: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        max: usize,
    ) -> Result<Answer, HttpError> {
        let endpoint = format!("{}:{}", t.host, t.port);
        let connect = |e: std::io::Error| HttpError::Connect(format!("{endpoint}: {e}"));
        let mut last = None;
        let mut stream = None;
        for addr in tokio::net::lookup_host((t.host.as_str(), t.port))
            .await
            .map_err(connect)?
        {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let tcp = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) => return Err(connect(e)),
            (None, None) => return Err(HttpError::Connect(format!("{endpoint}: no address"))),
        };
        let _ = tcp.set_nodelay(true);
        let mut req = format!(
            "{method} {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\naccept: application/json\r\ncontent-length: {}\r\n",
            t.path_and_query,
            t.host_header,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(k);
            req.push_str(": ");
            req.push_str(v);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        if !t.tls {
            return exchange(tcp, req.as_bytes(), body, &endpoint, max).await;
        }
        let connector = self
            .tls
            .as_ref()
            .map_err(|e| HttpError::Tls(format!("{endpoint}: {e}")))?;
        let name = ServerName::try_from(t.host.clone())
            .map_err(|_| HttpError::Url(format!("`{}` is not a TLS server name", t.host)))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| HttpError::Tls(format!("{endpoint}: {e}")))?;
        exchange(tls, req.as_bytes(), body, &endpoint, max).await
    }
}

fn tls_connector() -> Result<TlsConnector, String> {
    pingora::tls::install_default_crypto_provider();
    let mut roots = RootCertStore::empty();
    pingora::tls::load_platform_certs_incl_env_into_store(&mut roots)
        .map_err(|e| format!("CA certificates: {e}"))?;
    if roots.is_empty() {
        return Err("no CA certificates found (SSL_CERT_FILE, SSL_CERT_DIR or the system store)".into());
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Write the request, read the answer (at most `max` bytes) until it is complete (or the
/// peer closes).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    head: &[u8],
    body: &[u8],
    endpoint: &str,
    max: usize,
) -> Result<Answer, HttpError> {
    let io = |e: std::io::Error| HttpError::Io(format!("{endpoint}: {e}"));
    s.write_all(head).await.map_err(io)?;
    s.write_all(body).await.map_err(io)?;
    s.flush().await.map_err(io)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        // Parsing re-reads the whole buffer: past a token answer's size, only try where a
        // chunked answer can end (a `\r\n`), or the peer closing (we sent `connection:
        // close`), so a large answer is not parsed once per read.
        if buf.len() <= MAX_ANSWER_BYTES || buf.ends_with(b"\r\n") {
            match parse_answer(&buf, false) {
                Parsed::Done(a) => return Ok(a),
                Parsed::Bad(why) => return Err(HttpError::Malformed(endpoint.to_owned(), why)),
                Parsed::Incomplete => {}
            }
        }
        if buf.len() > max {
            return Err(HttpError::Malformed(endpoint.to_owned(), "answer too large"));
        }
        let n = match s.read(&mut chunk).await {
            Ok(n) => n,
            // A TLS peer that closes without close_notify: end of the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            Err(e) => return Err(io(e)),
        };
        if n == 0 {
            return match parse_answer(&buf, true) {
                Parsed::Done(a) => Ok(a),
                Parsed::Bad(why) => Err(HttpError::Malformed(endpoint.to_owned(), why)),
                Parsed::Incomplete => Err(HttpError::Malformed(
                    endpoint.to_owned(),
                    "connection closed mid-answer",
                )),
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A URL split for a call.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    host: String,
    port: u16,
    host_header: String,
    path_and_query: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, HttpError> {
        let uri: ::http::Uri = url
            .parse()
            .map_err(|_| HttpError::Url(format!("`{url}` is not a URL")))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(HttpError::Url(format!("`{url}` is not http:// or https://"))),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| HttpError::Url(format!("`{url}` has no host")))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Target {
            tls,
            host,
            port,
            host_header: authority.as_str().to_owned(),
            path_and_query: uri
                .path_and_query()
                .map_or("/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// Progress of reading an answer.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Incomplete,
    Done(Answer),
    Bad(&'static str),
}

/// Parse a whole answer from `buf`; `eof`: the peer has closed (an answer with neither
/// `content-length` nor chunking ends there). Interim `1xx` answers are skipped.
fn parse_answer(mut buf: &[u8], eof: bool) -> Parsed {
    loop {
        let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Parsed::Incomplete;
        };
        let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
            return Parsed::Bad("head is not UTF-8");
        };
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
            return Parsed::Bad("not an HTTP/1.x answer");
        }
        let Some(status) = parts.next().and_then(|s| s.parse::<u16>().ok()) else {
            return Parsed::Bad("no status code");
        };
        let rest = &buf[head_end + 4..];
        if (100..200).contains(&status) {
            buf = rest;
            continue;
        }
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((k, v)) = line.split_once(':') else {
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                match v.parse::<usize>() {
                    Ok(n) => length = Some(n),
                    Err(_) => return Parsed::Bad("bad content-length"),
                }
            } else if k.eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
        return if chunked {
            match dechunk(rest) {
                Ok(Some(body)) => Parsed::Done(Answer { status, body }),
                Ok(None) if eof => Parsed::Bad("connection closed mid-answer"),
                Ok(None) => Parsed::Incomplete,
                Err(why) => Parsed::Bad(why),
            }
        } else if let Some(n) = length {
            if rest.len() >= n {
                Parsed::Done(Answer {
                    status,
                    body: rest[..n].to_vec(),
                })
            } else {
                Parsed::Incomplete
            }
        } else if eof {
            Parsed::Done(Answer {
                status,
                body: rest.to_vec(),
            })
        } else {
            Parsed::Incomplete
        };
    }
}

/// A chunked body: `Ok(None)` while incomplete.
fn dechunk(mut b: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|_| "bad chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| "bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            return Ok(b.windows(2).position(|w| w == b"\r\n").map(|_| out));
        }
        if b.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(status: u16, body: &[u8]) -> Parsed {
        Parsed::Done(Answer {
            status,
            body: body.to_vec(),
        })
    }

    #[test]
    fn answers_parse_at_every_split_point() {
        let whole: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\nhello",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\n\r\n",
        ];
        for w in whole {
            assert_eq!(parse_answer(w, false), done(200, b"hello"));
            for cut in 0..w.len() {
                assert_eq!(parse_answer(&w[..cut], false), Parsed::Incomplete, "cut at {cut}");
            }
        }
        assert_eq!(
            parse_answer(b"HTTP/1.0 503 X\r\n\r\nbusy", true),
            done(503, b"busy")
        );
        assert_eq!(
            parse_answer(b"HTTP/1.0 503 X\r\n\r\nbusy", false),
            Parsed::Incomplete
        );
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        let cases: [(&[u8], bool, &str); 5] = [
            (b"SSH-2.0\r\n\r\n", false, "not an HTTP/1.x answer"),
            (b"HTTP/1.1 abc\r\n\r\n", false, "no status code"),
            (
                b"HTTP/1.1 200\r\ncontent-length: x\r\n\r\n",
                false,
                "bad content-length",
            ),
            (
                b"HTTP/1.1 200\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                false,
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200\r\ntransfer-encoding: chunked\r\n\r\n3\r\nab",
                true,
                "connection closed mid-answer",
            ),
        ];
        for (bytes, eof, why) in cases {
            assert_eq!(
                parse_answer(bytes, eof),
                Parsed::Bad(why),
                "{}",
                bytes.escape_ascii()
            );
        }
    }

    #[test]
    fn urls_split_into_host_port_and_target() {
        let t = Target::parse("https://oauth2.googleapis.com/token").unwrap();
        assert_eq!(
            t,
            Target {
                tls: true,
                host: "oauth2.googleapis.com".into(),
                port: 443,
                host_header: "oauth2.googleapis.com".into(),
                path_and_query: "/token".into()
            }
        );
        let t = Target::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path_and_query.as_str()),
            ("::1", 8080, "/")
        );
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("/token").is_err());
    }

    #[tokio::test]
    async fn a_call_over_loopback_sends_the_request_and_reads_the_answer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut b = [0u8; 1024];
            while !got.ends_with(b"a=1") {
                let n = s.read(&mut b).await.unwrap();
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            String::from_utf8(got).unwrap()
        });
        let client = HttpClient::new(Duration::from_secs(5));
        let url = format!("http://127.0.0.1:{port}/token?x=y");
        let a = client
            .call("POST", &url, &[("content-type", "text/plain")], b"a=1")
            .await
            .unwrap();
        assert_eq!(
            a,
            Answer {
                status: 200,
                body: b"ok".to_vec()
            }
        );
        let req = server.await.unwrap();
        assert!(req.starts_with("POST /token?x=y HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains(&format!("host: 127.0.0.1:{port}\r\n")) && req.contains("content-length: 3\r\n"),
            "{req}"
        );
        // A large chunked answer: refused by `call` (a token answer's bound), read whole
        // by `call_bounded`.
        let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = big.clone();
        let server = tokio::spawn(async move {
            for _ in 0..2 {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await.unwrap();
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for part in answer.chunks(10_000) {
                    let _ = s.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await;
                    let _ = s.write_all(part).await;
                    let _ = s.write_all(b"\r\n").await;
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
            }
        });
        let url = format!("http://127.0.0.1:{port}/");
        let e = client.call("POST", &url, &[], b"q").await.unwrap_err();
        assert_eq!(
            e,
            HttpError::Malformed(format!("127.0.0.1:{port}"), "answer too large")
        );
        let a = client
            .call_bounded("POST", &url, &[], b"q", 1024 * 1024)
            .await
            .unwrap();
        assert_eq!(a.body, big);
        server.await.unwrap();

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = client
            .call("GET", &format!("http://127.0.0.1:{port}/"), &[], b"")
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Connect(_)), "{e}");
    }
}
