//! The client side of the harness: [`Client`], a raw HTTP/1.1 keep-alive connection that
//! writes requests as given and reads responses byte for byte (chunk by chunk when a test
//! needs to see streaming), and one-shot helpers on a fresh connection.

use super::{find, header, parse_head, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response as received.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Body after de-chunking.
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }
    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

/// A keep-alive connection to the gateway.
pub struct Client {
    pub sock: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// Connect to `addr` (`127.0.0.1:port`).
    pub async fn connect(addr: &str) -> Client {
        Client {
            sock: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Send a request on a new connection and read only the response head: (the
    /// connection, status, headers). The body is left to read, chunk by chunk if need be.
    pub async fn open(
        addr: &str,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (Client, u16, Vec<(String, String)>) {
        let mut c = Client::connect(addr).await;
        c.send(method, target, headers, body).await;
        let (status, headers) = c.read_head().await;
        (c, status, headers)
    }

    /// Send a request: `headers` are written as given; a body gets a Content-Length.
    pub async fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) {
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: gateway\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.sock.write_all(&bytes).await.unwrap();
    }

    /// Read a response head; returns (status, headers).
    pub async fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            self.fill().await.expect("connection closed before response head");
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
        self.buf.drain(..end + 4);
        let (status_line, headers) = parse_head(&head);
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        (status, headers)
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16384];
        let n = tokio::time::timeout(DEADLINE, self.sock.read(&mut tmp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "read deadline"))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Read the next chunk of a chunked body (`None` at the last chunk).
    pub async fn read_chunk(&mut self) -> Option<Vec<u8>> {
        let line_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await.ok()?;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&self.buf[..line_end]).trim(), 16).ok()?;
        self.buf.drain(..line_end + 2);
        while self.buf.len() < size + 2 {
            self.fill().await.ok()?;
        }
        let data = self.buf[..size].to_vec();
        self.buf.drain(..size + 2);
        (size > 0).then_some(data)
    }

    /// Read a whole response (Content-Length, chunked, or until close).
    pub async fn read_response(&mut self, method: &str) -> Response {
        let (status, headers) = self.read_head().await;
        let get = |n: &str| header(&headers, n).map(str::to_owned);
        let mut body = Vec::new();
        if method == "HEAD" || status == 204 || status == 304 {
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                self.fill().await.expect("closed mid-body");
            }
            body = self.buf.drain(..len).collect();
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(c) = self.read_chunk().await {
                body.extend_from_slice(&c);
            }
        } else {
            while self.fill().await.is_ok() {}
            body = std::mem::take(&mut self.buf);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    /// Send and read one request.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(method, target, headers, body).await;
        self.read_response(method).await
    }
}

/// One request on a fresh connection.
pub async fn request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Client::connect(addr)
        .await
        .request(method, target, headers, body)
        .await
}

/// One request with `key` as a bearer token, on a fresh connection.
pub async fn request_as(addr: &str, key: &str, method: &str, target: &str, body: &[u8]) -> Response {
    let (name, value) = bearer(key);
    request(addr, method, target, &[(name, &value)], body).await
}

/// Bearer auth header for a key.
pub fn bearer(key: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {key}"))
}
