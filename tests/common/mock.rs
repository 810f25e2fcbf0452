//! The upstream side of the harness: [`Mock`], a server on `127.0.0.1:0` that records each
//! request and answers as the test says (whole bodies, chunked streams that pause or stop
//! short, or no answer), and the provider bodies that several tests answer with.

use super::{find, header, parse_head};
use lmgate::usage::eventstream::{sample_converse_stream, sample_invoke_stream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The first header called `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// One piece of a mock answer.
pub enum Part {
    /// Raw bytes written as they are.
    Bytes(Vec<u8>),
    /// Wait until the test calls `gate.notify_one()`.
    Wait(Arc<Notify>),
    /// Close the connection now (abrupt end).
    Close,
}

impl Part {
    /// `body` as `Bytes` parts of `size` bytes each (the last one may be shorter).
    pub fn chunks(body: &[u8], size: usize) -> Vec<Part> {
        body.chunks(size).map(|c| Part::Bytes(c.to_vec())).collect()
    }
}

/// The mock's answer: a status line + headers are written first, then the parts in order.
/// With `chunked`, each `Bytes` part is sent as one HTTP chunk and a final `0` chunk ends it.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunked: bool,
    pub parts: Vec<Part>,
    /// Do not answer at all (never send headers).
    pub hang: bool,
}

impl Reply {
    /// A complete JSON answer with Content-Length.
    pub fn json(status: u16, body: &str) -> Reply {
        Reply::full(status, "application/json", body.as_bytes().to_vec())
    }
    /// A complete answer with Content-Length.
    pub fn full(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type".into(), content_type.into()),
                ("content-length".into(), body.len().to_string()),
            ],
            chunked: false,
            parts: vec![Part::Bytes(body)],
            hang: false,
        }
    }
    /// A chunked stream of the given content type.
    pub fn stream(content_type: &str, parts: Vec<Part>) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            chunked: true,
            parts,
            hang: false,
        }
    }
    /// SSE, one chunk per event string.
    pub fn sse(events: &[&str]) -> Reply {
        Reply::stream(
            "text/event-stream",
            events
                .iter()
                .map(|e| Part::Bytes(e.as_bytes().to_vec()))
                .collect(),
        )
    }
    /// Add a header.
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A mock upstream on `127.0.0.1:0`.
pub struct Mock {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    /// Answers abandoned because the gateway closed the connection while the mock was
    /// parked at a `Part::Wait` (the upstream request was cancelled).
    pub cancelled: Arc<AtomicUsize>,
    /// Connections accepted (to see upstream connection reuse).
    pub connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// Start a mock whose answers come from `handler`.
    pub async fn start(handler: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> Mock {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let reqs = Arc::clone(&requests);
        let cancelled = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&cancelled);
        let connections = Arc::new(AtomicUsize::new(0));
        let conns = Arc::clone(&connections);
        let task = tokio::spawn(async move {
            loop {
                let (sock, _) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // A transient failure (EMFILE, an aborted handshake) must not stop
                    // the mock for the rest of the test.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                conns.fetch_add(1, Ordering::SeqCst);
                let handler = Arc::clone(&handler);
                let reqs = Arc::clone(&reqs);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    let _ = serve_conn(sock, handler, reqs, c).await;
                });
            }
        });
        Mock {
            port,
            requests,
            cancelled,
            connections,
            task,
        }
    }

    /// A mock that answers every request with [`chat_json`].
    pub async fn chat() -> Mock {
        let body = chat_json();
        Mock::start(move |_| Reply::json(200, &body)).await
    }

    /// A mock that answers every request with an event stream: `before` as one chunk, then,
    /// once the test calls `notify_one()` on the returned gate, each of `after` as a chunk.
    pub async fn paused_stream(before: &[u8], after: &[&[u8]]) -> (Mock, Arc<Notify>) {
        let gate = Arc::new(Notify::new());
        let g = Arc::clone(&gate);
        let before = before.to_vec();
        let after: Vec<Vec<u8>> = after.iter().map(|a| a.to_vec()).collect();
        let mock = Mock::start(move |_| {
            let mut parts = vec![Part::Bytes(before.clone()), Part::Wait(Arc::clone(&g))];
            parts.extend(after.iter().map(|a| Part::Bytes(a.clone())));
            Reply::stream("text/event-stream", parts)
        })
        .await;
        (mock, gate)
    }

    /// A mock that answers by path: the fixture each provider endpoint would send.
    pub async fn providers() -> Mock {
        Mock::start(|req| {
            let path = req.target.as_str();
            // Streams go out in uneven chunks so events straddle chunk boundaries.
            let sse = |name: &str| Reply::stream("text/event-stream", Part::chunks(&fixture(name), 37));
            let json = |name: &str| Reply::full(200, "application/json", fixture(name));
            let stream = find(&req.body, b"stream").is_some();
            let sse_or_json = |sse_name: &str, json_name: &str| {
                if stream {
                    sse(sse_name)
                } else {
                    json(json_name)
                }
            };
            if path.starts_with("/v1/chat/completions") {
                let sse_name = if find(&req.body, b"include_usage").is_some() {
                    "openai_chat_stream.sse"
                } else {
                    "openai_chat_stream_no_usage.sse"
                };
                sse_or_json(sse_name, "openai_chat.json")
            } else if path.starts_with("/v1/responses") {
                sse_or_json("openai_responses_stream.sse", "openai_responses.json")
            } else if path.starts_with("/v1/embeddings") {
                json("openai_embeddings.json")
            } else if path.starts_with("/v1/messages") {
                sse_or_json("anthropic_stream.sse", "anthropic_message.json")
            } else if path.contains(":streamGenerateContent") {
                if path.contains("alt=sse") {
                    sse("gemini_stream.sse")
                } else {
                    let parts = Part::chunks(&fixture("gemini_stream_array.json"), 50);
                    Reply::stream("application/json; charset=UTF-8", parts)
                }
            } else if path.contains(":generateContent") {
                Reply::full(
                    200,
                    "application/json; charset=UTF-8",
                    fixture("gemini_generate.json"),
                )
            } else if path.ends_with("/converse-stream") {
                let parts = Part::chunks(&sample_converse_stream(), 29);
                Reply::stream("application/vnd.amazon.eventstream", parts)
            } else if path.ends_with("/converse") {
                json("bedrock_converse.json")
            } else if path.ends_with("/invoke-with-response-stream") {
                let parts = Part::chunks(&sample_invoke_stream(), 64);
                Reply::stream("application/vnd.amazon.eventstream", parts)
            } else if path.ends_with("/invoke") {
                json("anthropic_message.json")
            } else {
                Reply::json(404, r#"{"error":{"message":"not found"}}"#)
            }
        })
        .await
    }

    /// Requests received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    handler: Handler,
    reqs: Arc<Mutex<Vec<Recorded>>>,
    cancelled: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await? else {
            return Ok(());
        };
        reqs.lock().unwrap().push(req.clone());
        let reply = handler(&req);
        if reply.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            return Ok(());
        }
        let mut head = format!("HTTP/1.1 {} X\r\n", reply.status);
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if reply.chunked {
            head.push_str("transfer-encoding: chunked\r\n");
        }
        head.push_str("\r\n");
        sock.write_all(head.as_bytes()).await?;
        for part in reply.parts {
            match part {
                Part::Bytes(b) if reply.chunked => {
                    if b.is_empty() {
                        continue;
                    }
                    sock.write_all(format!("{:x}\r\n", b.len()).as_bytes()).await?;
                    sock.write_all(&b).await?;
                    sock.write_all(b"\r\n").await?;
                }
                Part::Bytes(b) => sock.write_all(&b).await?,
                Part::Wait(n) => {
                    let mut probe = [0u8; 1];
                    tokio::select! {
                        _ = n.notified() => {}
                        r = sock.read(&mut probe) => {
                            if matches!(r, Ok(0) | Err(_)) {
                                cancelled.fetch_add(1, Ordering::SeqCst);
                                return Ok(());
                            }
                        }
                    }
                }
                Part::Close => {
                    sock.flush().await?;
                    return Ok(());
                }
            }
            sock.flush().await?;
        }
        if reply.chunked {
            sock.write_all(b"0\r\n\r\n").await?;
        }
    }
}

/// Read one HTTP/1.1 request (Content-Length or chunked body). `None` at clean EOF.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Option<Recorded>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        let mut tmp = [0u8; 8192];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    buf.drain(..head_end + 4);
    let (start, headers) = parse_head(&head);
    let mut it = start.split(' ');
    let method = it.next().unwrap_or("").to_string();
    let target = it.next().unwrap_or("").to_string();
    let mut body = Vec::new();
    if let Some(len) = header(&headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        while buf.len() < len {
            let mut tmp = [0u8; 8192];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&tmp[..n]);
        }
        body = buf.drain(..len).collect();
    } else if header(&headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = read_chunked(sock, buf).await?;
    }
    Ok(Some(Recorded {
        method,
        target,
        headers,
        body,
    }))
}

async fn fill(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut tmp = [0u8; 8192];
    let n = sock.read(&mut tmp).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&tmp[..n]);
    Ok(())
}

async fn read_chunked(sock: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            fill(sock, buf).await?;
        };
        let size_str = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_str.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        buf.drain(..line_end + 2);
        if size == 0 {
            while find(buf, b"\r\n").is_none() {
                fill(sock, buf).await?;
            }
            let e = find(buf, b"\r\n").unwrap();
            buf.drain(..e + 2);
            return Ok(body);
        }
        while buf.len() < size + 2 {
            fill(sock, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

// ------------------------------------------------------------------------------------------
// Provider bodies
// ------------------------------------------------------------------------------------------

/// An OpenAI chat completion `chatcmpl-<id>` from gpt-4o-mini that answers `content` (plain
/// text: no quotes or backslashes), with the usage block OpenAI puts at its end.
pub fn chat_completion(id: u64, content: &str, prompt_tokens: u64, completion_tokens: u64) -> String {
    let total = prompt_tokens + completion_tokens;
    format!(
        r#"{{"id":"chatcmpl-{id}","object":"chat.completion","model":"gpt-4o-mini","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{total}}}}}"#
    )
}

/// The same completion streamed with `stream_options.include_usage`: one SSE event per
/// piece of the answer, then, as the last string, the usage event and `data: [DONE]`.
pub fn chat_completion_stream(
    id: u64,
    pieces: &[&str],
    prompt_tokens: u64,
    completion_tokens: u64,
) -> Vec<String> {
    let chunk = |choices: &str, usage: &str| {
        format!(
            r#"data: {{"id":"chatcmpl-{id}","object":"chat.completion.chunk","model":"gpt-4o-mini","choices":[{choices}],"usage":{usage}}}"#
        ) + "\n\n"
    };
    let mut events: Vec<String> = pieces
        .iter()
        .map(|p| chunk(&format!(r#"{{"index":0,"delta":{{"content":"{p}"}}}}"#), "null"))
        .collect();
    let total = prompt_tokens + completion_tokens;
    let usage = format!(
        r#"{{"prompt_tokens":{prompt_tokens},"completion_tokens":{completion_tokens},"total_tokens":{total}}}"#
    );
    events.push(chunk("", &usage) + "data: [DONE]\n\n");
    events
}

/// The chat completion most tests answer with: 9 prompt and 2 completion tokens.
pub fn chat_json() -> String {
    chat_completion(1, "hi", 9, 2)
}

/// A file of `tests/fixtures/`: real provider responses.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}
