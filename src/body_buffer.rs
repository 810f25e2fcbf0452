//! Reading a whole request body before Pingora writes the upstream header, for the requests
//! whose header depends on the body (a model scope that reads the model from the JSON body,
//! a SigV4 signature over the body hash). Every other request keeps streaming untouched.
//!
//! Pingora 0.9 writes the upstream header, then copies the body; a body already read in
//! `request_filter` would never be sent (the copy loop starts "done" and calls
//! `request_body_filter` only for a retry buffer or an empty body: pingora issues #349 and
//! #688). The way through: arm Pingora's retry buffer (fixed at 64 KiB) so it ends up
//! holding the *tail* of the body; the proxy then calls `request_body_filter` once with
//! that tail and `end_of_stream`, and [`emit_whole_body`] replaces it with the whole body.
//! - `Content-Length` bodies: any size up to the limit (the buffer is armed once the rest
//!   fits in it).
//! - Chunked bodies: armed at once, so only bodies up to 64 KiB can be buffered; a longer
//!   one is refused (413, "send Content-Length"). Every official SDK sends a length.
//!
//! Hooks: [`read_whole_body`] in `request_filter` (after the key and provider checks),
//! [`frame_upstream_request`] in `upstream_request_filter`, [`emit_whole_body`] in
//! `request_body_filter`. [`needs_body`] decides which requests pay for this.

use crate::allowlist::KeyEntry;
use crate::outcome::ErrorKind;
use crate::provider_error::{ErrorClass, ProviderError};
use crate::providers::ApiFormat;
use crate::scope;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};
use pingora_core::protocols::http::ServerSession;
use std::time::Duration;

/// Pingora's retry buffer capacity (`BODY_BUF_LIMIT` in pingora-core's `v1/common.rs`,
/// neither public nor configurable).
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// The whole body must arrive within this long (each read also has Pingora's own 60 s
/// idle timeout). A 20 MiB body at 1 Mbit/s takes under three minutes.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(300);

/// The buffer starts at most this large, whatever `Content-Length` announces, so a client
/// that announces a large body and sends nothing holds no large allocation.
const INITIAL_CAPACITY_BYTES: usize = 1024 * 1024;

/// Whether this request's body must be read whole before the upstream header is written:
/// a key with a model scope on a format whose model is in the JSON body, or a request
/// whose upstream signature covers the body (`signs_body`: a gateway key on a route that
/// signs with SigV4), or a key under a token or dollar limit (the estimate reads it).
#[inline]
pub fn needs_body(format: ApiFormat, key: &KeyEntry, signs_body: bool) -> bool {
    signs_body || (key.scope.models.is_some() && scope::model_in_body(format)) || key.limits.needs_estimate()
}

/// Why a body was not buffered (nothing was sent upstream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRefusal {
    /// Larger than `server.max_buffered_body_bytes`.
    TooLarge {
        /// The limit, for the message.
        limit: usize,
    },
    /// A chunked body (no `Content-Length`) over [`RETRY_BUFFER_BYTES`].
    ChunkedTooLarge,
    /// Not received within [`BODY_READ_TIMEOUT`] (or a read stalled past Pingora's idle
    /// timeout).
    Timeout,
}

impl BodyRefusal {
    /// The refusal in the provider's terms; both leave the rest of the body unread, so the
    /// connection is closed after the answer.
    pub fn provider_error(self) -> ProviderError {
        let (class, message) = match self {
            BodyRefusal::TooLarge { limit } => (
                ErrorClass::TooLarge,
                format!("request body is larger than the gateway reads for this key ({limit} bytes)"),
            ),
            BodyRefusal::ChunkedTooLarge => (
                ErrorClass::TooLarge,
                format!(
                    "a request body without Content-Length is limited to {} KiB for this key; send Content-Length",
                    RETRY_BUFFER_BYTES / 1024
                ),
            ),
            BodyRefusal::Timeout => (
                ErrorClass::Timeout,
                "the request body did not arrive in time".to_owned(),
            ),
        };
        ProviderError::new(class, ErrorKind::BadRequest, message)
    }
}

/// The body length the request's framing announces; `None` for chunked.
fn declared_length(req: &RequestHeader) -> Option<usize> {
    if req.headers.contains_key(http::header::TRANSFER_ENCODING) {
        return None;
    }
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.trim().parse().ok())
}

/// `Expect: 100-continue` on an HTTP/1.1 request.
fn expects_continue(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Read the whole request body, up to `limit` bytes and within `timeout`, and arm Pingora's
/// retry buffer so the proxy will forward it (see the module comment). `Ok(Err(_))`: a
/// refusal to answer (413 before a byte is read when `Content-Length` is over the limit,
/// and before any `100 Continue`); `Err(_)`: the client failed (went away).
pub async fn read_whole_body(
    session: &mut ServerSession,
    limit: usize,
    timeout: Duration,
) -> Result<std::result::Result<Bytes, BodyRefusal>> {
    if session.is_body_empty() {
        return Ok(Ok(Bytes::new()));
    }
    let declared = declared_length(session.req_header());
    if declared.is_some_and(|n| n > limit) {
        return Ok(Err(BodyRefusal::TooLarge { limit }));
    }
    if expects_continue(session.req_header()) {
        // Nobody upstream sees the request yet: without this the client waits ~1 s
        // before it sends the body anyway. Pingora 0.9 turns keep-alive off for any
        // response header written before the body is read, 1xx included
        // (`close_on_response_before_downstream_finish`); a 100 does not end the exchange.
        session.set_close_on_response_before_downstream_finish(false);
        let written = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        written?;
    }
    match tokio::time::timeout(timeout, read_loop(session, declared, limit)).await {
        Ok(done) => done,
        Err(_) => Ok(Err(BodyRefusal::Timeout)),
    }
}

async fn read_loop(
    session: &mut ServerSession,
    declared: Option<usize>,
    limit: usize,
) -> Result<std::result::Result<Bytes, BodyRefusal>> {
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(INITIAL_CAPACITY_BYTES));
    // Bytes read since the retry buffer was armed: exactly what it holds.
    let mut in_retry_buffer: Option<usize> = None;
    loop {
        if in_retry_buffer.is_none() {
            let rest = declared.map(|n| n.saturating_sub(session.body_bytes_read()));
            if rest.is_none_or(|r| r <= RETRY_BUFFER_BYTES) {
                session.enable_retry_buffering();
                in_retry_buffer = Some(0);
            }
        }
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Ok(Err(BodyRefusal::TooLarge { limit }));
                }
                if let Some(n) = in_retry_buffer.as_mut() {
                    *n += chunk.len();
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) if e.etype() == &ErrorType::ReadTimedout => return Ok(Err(BodyRefusal::Timeout)),
            Err(e) => return Err(e),
        }
    }
    match in_retry_buffer {
        _ if buf.is_empty() => Ok(Ok(Bytes::new())),
        Some(n) if n > RETRY_BUFFER_BYTES => Ok(Err(BodyRefusal::ChunkedTooLarge)),
        // Pingora would forward nothing and the request would hang: fail it instead.
        None | Some(0) => Error::e_explain(
            ErrorType::InternalError,
            "request body read before the retry buffer was armed",
        ),
        Some(_) => Ok(Ok(buf.freeze())),
    }
}

/// Frame the upstream request for the buffered body: its exact length, no
/// `Transfer-Encoding`, no `Expect` (already answered). A request that came without any
/// body framing and has no body is left as it was.
pub fn frame_upstream_request(req: &mut RequestHeader, body: &Bytes) -> Result<()> {
    let had_framing = req.headers.contains_key(http::header::CONTENT_LENGTH)
        || req.headers.contains_key(http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::TRANSFER_ENCODING);
    req.remove_header(&http::header::EXPECT);
    if had_framing || !body.is_empty() {
        req.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    }
    Ok(())
}

/// In `request_body_filter`: whatever Pingora passes (the retry buffer's tail), send the
/// whole buffered body at the end and nothing before it. Runs again on a retry, so the
/// body is cloned (a reference count), never taken.
#[inline]
pub fn emit_whole_body(buffered: &Bytes, body: &mut Option<Bytes>, end_of_stream: bool) {
    *body = if end_of_stream {
        Some(buffered.clone())
    } else {
        // `Some(empty)`, not `None`: Pingora reads `None` as the end of the body.
        Some(Bytes::new())
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope::{parse_models, Scope};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, ReadHalf};

    fn key(models: &str) -> KeyEntry {
        KeyEntry {
            id: "k".into(),
            owner: "o".into(),
            added: "d".into(),
            mode: Default::default(),
            scope: Scope {
                providers: None,
                models: parse_models(models).unwrap(),
            },
            limits: Default::default(),
            meters: None,
        }
    }

    #[test]
    fn only_body_model_scopes_and_signing_need_the_body() {
        let scoped = key("gpt-4o*");
        let open = key("");
        assert!(needs_body(ApiFormat::OpenAi, &scoped, false));
        assert!(needs_body(ApiFormat::Anthropic, &scoped, false));
        assert!(!needs_body(ApiFormat::Gemini, &scoped, false), "model in the URL");
        assert!(!needs_body(ApiFormat::Bedrock, &scoped, false));
        assert!(!needs_body(ApiFormat::OpenAi, &open, false));
        assert!(needs_body(ApiFormat::Bedrock, &open, true));
    }

    #[test]
    fn refusals_are_413_or_408_recorded_as_bad_requests() {
        for (r, status) in [
            (BodyRefusal::TooLarge { limit: 10 }, 413),
            (BodyRefusal::ChunkedTooLarge, 413),
            (BodyRefusal::Timeout, 408),
        ] {
            let e = r.provider_error();
            assert_eq!(e.class.status(ApiFormat::OpenAi), status, "{r:?}");
            assert_eq!(e.kind, ErrorKind::BadRequest);
        }
        assert!(BodyRefusal::ChunkedTooLarge
            .provider_error()
            .message
            .contains("Content-Length"));
    }

    #[test]
    fn the_upstream_request_carries_the_exact_length_and_no_chunking_or_expect() {
        let mut req = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        req.insert_header("transfer-encoding", "chunked").unwrap();
        req.insert_header("expect", "100-continue").unwrap();
        frame_upstream_request(&mut req, &Bytes::from_static(b"hello")).unwrap();
        assert_eq!(req.headers.get("content-length").unwrap(), "5");
        assert!(req.headers.get("transfer-encoding").is_none());
        assert!(req.headers.get("expect").is_none());
        let mut get = RequestHeader::build("GET", b"/v1/models", None).unwrap();
        frame_upstream_request(&mut get, &Bytes::new()).unwrap();
        assert!(
            get.headers.get("content-length").is_none(),
            "a GET stays as it was"
        );
    }

    #[test]
    fn the_whole_body_goes_out_at_the_end_of_every_pass() {
        let full = Bytes::from_static(b"whole body");
        for _retry in 0..2 {
            let mut tail = Some(Bytes::from_static(b"body"));
            emit_whole_body(&full, &mut tail, true);
            assert_eq!(tail.as_deref(), Some(&b"whole body"[..]));
        }
        let mut early = Some(Bytes::from_static(b"x"));
        emit_whole_body(&full, &mut early, false);
        assert_eq!(early, Some(Bytes::new()));
    }

    /// A server session reading `head` + `body` from a client that sends it in `pieces`
    /// bytes at a time (and keeps the connection open); the client end is returned so
    /// the test can read what the server wrote (a `100 Continue`).
    async fn session(
        head: &str,
        body: Vec<u8>,
        pieces: usize,
        stall: bool,
    ) -> (ServerSession, ReadHalf<DuplexStream>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let (rd, mut wr) = tokio::io::split(client);
        let head = head.to_owned();
        tokio::spawn(async move {
            wr.write_all(head.as_bytes()).await.unwrap();
            for piece in body.chunks(pieces.max(1)) {
                if wr.write_all(piece).await.is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
            if stall {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
            let _ = wr.shutdown().await;
        });
        let mut s = ServerSession::new_http1(Box::new(server));
        assert!(s.read_request().await.unwrap(), "request head parsed");
        (s, rd)
    }

    fn body_of(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8).collect()
    }

    fn chunked(body: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for c in body.chunks(size) {
            out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend_from_slice(c);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\n\r\n");
        out
    }

    const LIMIT: usize = 1 << 20;
    const T: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn content_length_bodies_of_any_size_leave_their_tail_in_the_retry_buffer() {
        for n in [1, 100, RETRY_BUFFER_BYTES, RETRY_BUFFER_BYTES + 1, 300_000] {
            let body = body_of(n);
            let head = format!("POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: {n}\r\n\r\n");
            let (mut s, _c) = session(&head, body.clone(), 7_000, false).await;
            let got = read_whole_body(&mut s, LIMIT, T).await.unwrap().unwrap();
            assert_eq!(got.len(), n);
            assert!(got[..] == body[..], "body intact at {n}");
            let tail = s
                .get_retry_buffer()
                .expect("the proxy forwards only if this is set");
            assert!(!tail.is_empty() && tail.len() <= RETRY_BUFFER_BYTES, "{n}");
            assert!(body.ends_with(&tail), "{n}: the buffer holds the tail");
        }
    }

    #[tokio::test]
    async fn chunked_bodies_up_to_64_kib_are_buffered_and_longer_ones_refused() {
        for (n, ok) in [
            (10, true),
            (50_000, true),
            (RETRY_BUFFER_BYTES, true),
            (RETRY_BUFFER_BYTES + 1, false),
        ] {
            let body = body_of(n);
            let head = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
            let (mut s, _c) = session(head, chunked(&body, 3_000), 5_000, false).await;
            let got = read_whole_body(&mut s, LIMIT, T).await.unwrap();
            if ok {
                assert!(got.unwrap()[..] == body[..], "{n}");
                assert_eq!(s.get_retry_buffer().map(|b| b.len()), Some(n));
            } else {
                assert_eq!(got, Err(BodyRefusal::ChunkedTooLarge), "{n}");
            }
        }
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_before_reading_when_the_length_says_so() {
        let head = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n";
        let (mut s, mut client) = session(head, Vec::new(), 1, true).await;
        let got = read_whole_body(&mut s, 4096, T).await.unwrap();
        assert_eq!(got, Err(BodyRefusal::TooLarge { limit: 4096 }));
        assert_eq!(s.body_bytes_read(), 0);
        assert!(
            s.response_written().is_none(),
            "no 100 Continue for a refused body"
        );
        drop(s);
        let mut seen = Vec::new();
        let _ = client.read_to_end(&mut seen).await;
        assert!(seen.is_empty(), "{:?}", String::from_utf8_lossy(&seen));
        // Chunked: refused once the running total passes the limit.
        let head = "POST /x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (mut s, _c) = session(head, chunked(&body_of(5000), 1000), 1000, false).await;
        assert_eq!(
            read_whole_body(&mut s, 4096, T).await.unwrap(),
            Err(BodyRefusal::TooLarge { limit: 4096 })
        );
    }

    #[tokio::test]
    async fn expect_100_continue_is_answered_before_reading() {
        let head = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        let (mut s, mut client) = session(head, b"abc".to_vec(), 3, false).await;
        let got = read_whole_body(&mut s, LIMIT, T).await.unwrap().unwrap();
        assert_eq!(&got[..], b"abc");
        let mut seen = [0u8; 25];
        client.read_exact(&mut seen).await.unwrap();
        assert!(
            seen.starts_with(b"HTTP/1.1 100 Continue\r\n"),
            "{:?}",
            String::from_utf8_lossy(&seen)
        );
    }

    #[tokio::test]
    async fn a_stalled_upload_times_out() {
        let head = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n";
        let (mut s, _c) = session(head, body_of(10), 10, true).await;
        let got = read_whole_body(&mut s, LIMIT, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!(got, Err(BodyRefusal::Timeout));
    }

    #[tokio::test]
    async fn an_empty_body_needs_no_reading() {
        let (mut s, _c) = session("GET /x HTTP/1.1\r\nHost: h\r\n\r\n", Vec::new(), 1, true).await;
        assert_eq!(read_whole_body(&mut s, LIMIT, T).await.unwrap(), Ok(Bytes::new()));
        let head = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n";
        let (mut s, _c) = session(head, Vec::new(), 1, true).await;
        assert_eq!(read_whole_body(&mut s, LIMIT, T).await.unwrap(), Ok(Bytes::new()));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_is_an_error_not_a_refusal() {
        let head = "POST /x HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n";
        let (mut s, _c) = session(head, body_of(10), 10, false).await;
        assert!(read_whole_body(&mut s, LIMIT, T).await.is_err());
    }
}
