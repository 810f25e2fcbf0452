//! Usage accounting: what a response says about tokens, read from a copy of the bytes as
//! they stream past. Everything here is pure (no I/O, no clock), so it is unit-tested at
//! every split point, fuzzed and benchmarked.
//!
//! - [`json`]: one JSON document -> usage and model (every provider's shape).
//! - [`sse`]: incremental SSE scanner.
//! - [`array`]: incremental JSON-array scanner (Gemini `streamGenerateContent` without SSE).
//! - [`eventstream`]: incremental AWS event-stream decoder (Bedrock streams).
//! - [`decode`]: streaming gzip/deflate/br/zstd decoding of the copy.
//! - [`Collector`]: picks the scanner from the response headers and turns what it saw into
//!   a [`Usage`] and a [`UsageStatus`].

pub mod array;
pub mod decode;
pub mod eventstream;
pub mod json;
pub mod sse;

use crate::providers::ApiFormat;
use decode::{Decoder, Encoding};
use serde::Serialize;

/// Token counts and model, each `None` when the response did not say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Model named by the response.
    pub model: Option<String>,
    /// Input (prompt) tokens, as the provider counts them.
    pub input_tokens: Option<u64>,
    /// Output (completion) tokens.
    pub output_tokens: Option<u64>,
    /// Input tokens served from cache.
    pub cache_read_input_tokens: Option<u64>,
    /// Input tokens written to cache (Anthropic, Bedrock).
    pub cache_creation_input_tokens: Option<u64>,
    /// Reasoning / thinking tokens.
    pub reasoning_tokens: Option<u64>,
}

impl Usage {
    /// Any token count at all.
    pub fn has_tokens(&self) -> bool {
        self.input_tokens.is_some() || self.output_tokens.is_some()
    }

    /// The same usage without token counts (model kept).
    fn without_tokens(self) -> Usage {
        Usage {
            model: self.model,
            ..Usage::default()
        }
    }
}

/// How far the token counts in a record can be trusted; a null is never ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageStatus {
    /// Read from the response.
    Exact,
    /// The response carried none (an error, or an OpenAI stream without `include_usage`).
    Absent,
    /// The body (or one stream event) was over `stats.capture_limit_bytes`.
    OverLimit,
    /// The stream ended early: tokens as far as seen.
    Truncated,
    /// Malformed, undecodable, or a format LMGate does not read.
    Unparsed,
}

impl UsageStatus {
    /// The record spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UsageStatus::Exact => "exact",
            UsageStatus::Absent => "absent",
            UsageStatus::OverLimit => "over_limit",
            UsageStatus::Truncated => "truncated",
            UsageStatus::Unparsed => "unparsed",
        }
    }
}

/// The shape of a response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document (captured whole, up to the cap).
    Json,
    /// `text/event-stream`.
    Sse,
    /// A JSON array streamed element by element.
    JsonArray,
    /// `application/vnd.amazon.eventstream`.
    EventStream,
    /// Anything else: not read.
    Other,
}

impl BodyKind {
    /// Pick from the response content type and the request path.
    pub fn from_response(format: ApiFormat, content_type: Option<&str>, path: &str) -> BodyKind {
        let ct = content_type.map_or("", |c| c.split(';').next().unwrap_or("").trim());
        let is = |name: &str| ct.eq_ignore_ascii_case(name);
        let json_suffix = ct.len() >= 5 && ct.as_bytes()[ct.len() - 5..].eq_ignore_ascii_case(b"+json");
        match ct {
            _ if is("text/event-stream") => BodyKind::Sse,
            _ if is("application/vnd.amazon.eventstream") => BodyKind::EventStream,
            "" => BodyKind::Json,
            _ if is("application/json") || json_suffix => {
                if format == ApiFormat::Gemini && path.contains(":streamGenerateContent") {
                    BodyKind::JsonArray
                } else {
                    BodyKind::Json
                }
            }
            _ => BodyKind::Other,
        }
    }

    /// A streamed answer.
    pub fn is_stream(self) -> bool {
        matches!(self, BodyKind::Sse | BodyKind::JsonArray | BodyKind::EventStream)
    }
}

enum State {
    Json { buf: Vec<u8>, over: bool },
    Sse(sse::SseUsageParser),
    Array(array::JsonArrayParser),
    Events(eventstream::EventStreamParser),
    Other,
}

/// Reads usage from a response body as its chunks pass. Memory is bounded by the cap.
pub struct Collector {
    kind: BodyKind,
    state: State,
    decoder: Option<Decoder>,
    unsupported_encoding: bool,
    cap: usize,
    bytes: u64,
    complete: bool,
}

impl Collector {
    /// A collector for a response with these headers.
    pub fn new(kind: BodyKind, content_encoding: Option<&str>, cap: usize) -> Collector {
        let (decoder, unsupported_encoding) = match content_encoding.map(Encoding::from_header) {
            None | Some(Ok(None)) => (None, false),
            Some(Ok(Some(e))) => (Some(Decoder::new(e)), false),
            Some(Err(())) => (None, true),
        };
        let state = if unsupported_encoding {
            State::Other
        } else {
            match kind {
                BodyKind::Json => State::Json {
                    buf: Vec::new(),
                    over: false,
                },
                BodyKind::Sse => State::Sse(sse::SseUsageParser::new(cap)),
                BodyKind::JsonArray => State::Array(array::JsonArrayParser::new(cap)),
                BodyKind::EventStream => State::Events(eventstream::EventStreamParser::new(cap)),
                BodyKind::Other => State::Other,
            }
        };
        Collector {
            kind,
            state,
            decoder,
            unsupported_encoding,
            cap,
            bytes: 0,
            complete: false,
        }
    }

    /// The body kind.
    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Feed a chunk exactly as it goes to the client.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if matches!(self.state, State::Other) {
            return;
        }
        match self.decoder.as_mut() {
            Some(d) => {
                let out = d.decode(chunk);
                self.feed_plain(&out);
            }
            None => self.feed_plain(chunk),
        }
    }

    fn feed_plain(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        match &mut self.state {
            State::Json { buf, over } => {
                if *over {
                } else if buf.len() + chunk.len() > self.cap {
                    *over = true;
                    *buf = Vec::new();
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            State::Sse(p) => p.feed(chunk),
            State::Array(p) => p.feed(chunk),
            State::Events(p) => p.feed(chunk),
            State::Other => {}
        }
    }

    /// The body ended normally.
    pub fn finish(&mut self) {
        if self.complete {
            return;
        }
        self.complete = true;
        if let Some(d) = self.decoder.as_mut() {
            let out = d.finish();
            self.feed_plain(&out);
        }
    }

    /// Usage and its status. A body that did not end normally is `Truncated` with the
    /// tokens seen so far.
    pub fn outcome(&mut self) -> (Usage, UsageStatus) {
        let decode_failed = self.decoder.as_ref().is_some_and(|d| d.failed);
        let (usage, over, malformed) = match &mut self.state {
            State::Json { buf, over } => {
                if *over || !self.complete {
                    (Usage::default(), *over, false)
                } else if buf.iter().all(u8::is_ascii_whitespace) {
                    (Usage::default(), false, false)
                } else {
                    match json::parse_json_usage(buf) {
                        json::JsonOutcome::Parsed(u) => (u, false, false),
                        json::JsonOutcome::Malformed => (Usage::default(), false, true),
                    }
                }
            }
            State::Sse(p) => {
                let u = if self.complete {
                    p.finish()
                } else {
                    p.usage().clone()
                };
                (u, p.over_limit, p.malformed)
            }
            State::Array(p) => (
                p.usage().clone(),
                p.over_limit,
                p.malformed || (self.complete && !p.closed && self.bytes > 0),
            ),
            State::Events(p) => (p.usage().clone(), p.over_limit, p.malformed),
            State::Other => (Usage::default(), false, self.bytes > 0),
        };
        let status = if !self.complete {
            UsageStatus::Truncated
        } else if self.unsupported_encoding || decode_failed {
            UsageStatus::Unparsed
        } else if over {
            UsageStatus::OverLimit
        } else if usage.has_tokens() {
            UsageStatus::Exact
        } else if malformed {
            UsageStatus::Unparsed
        } else {
            UsageStatus::Absent
        };
        let usage = match status {
            UsageStatus::OverLimit | UsageStatus::Unparsed => usage.without_tokens(),
            _ => usage,
        };
        (usage, status)
    }
}

/// The model named in a request path: Gemini/Vertex `.../models/<m>:<method>`, Bedrock
/// `/model/<id>/<op>` (percent-decoded: Bedrock ARNs arrive as `%3A`, `%2F`).
pub fn model_from_path(path: &str) -> Option<String> {
    let (start, stop): (usize, &[char]) = if let Some(i) = path.find("/models/") {
        (i + "/models/".len(), &[':', '/'])
    } else if let Some(i) = path.find("/model/") {
        (i + "/model/".len(), &['/'])
    } else {
        return None;
    };
    let rest = &path[start..];
    let end = rest.find(stop).unwrap_or(rest.len());
    let raw = &rest[..end];
    if raw.is_empty() {
        return None;
    }
    match crate::auth::percent_decode(raw, false) {
        m if m.is_empty() => Some(raw.to_owned()),
        m => Some(m.into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kind: BodyKind, enc: Option<&str>, chunks: &[&[u8]], end: bool) -> (Usage, UsageStatus) {
        let mut c = Collector::new(kind, enc, 1 << 20);
        for ch in chunks {
            c.feed(ch);
        }
        if end {
            c.finish();
        }
        c.outcome()
    }

    #[test]
    fn kind_from_headers() {
        use BodyKind::*;
        let k = |ct: Option<&str>, f, p| BodyKind::from_response(f, ct, p);
        assert_eq!(
            k(
                Some("text/event-stream; charset=utf-8"),
                ApiFormat::OpenAi,
                "/v1/chat"
            ),
            Sse
        );
        assert_eq!(k(Some("application/json"), ApiFormat::OpenAi, "/v1/chat"), Json);
        assert_eq!(
            k(
                Some("application/json; charset=UTF-8"),
                ApiFormat::Gemini,
                "/v1beta/models/m:streamGenerateContent"
            ),
            JsonArray
        );
        assert_eq!(
            k(
                Some("application/json"),
                ApiFormat::Gemini,
                "/v1beta/models/m:generateContent"
            ),
            Json
        );
        assert_eq!(
            k(
                Some("application/vnd.amazon.eventstream"),
                ApiFormat::Bedrock,
                "/model/x/converse-stream"
            ),
            EventStream
        );
        assert_eq!(k(Some("text/html"), ApiFormat::OpenAi, "/"), Other);
        assert_eq!(k(None, ApiFormat::OpenAi, "/"), Json);
    }

    #[test]
    fn statuses() {
        let body = include_bytes!("../../tests/fixtures/openai_chat.json");
        let (u, s) = run(BodyKind::Json, None, &[&body[..100], &body[100..]], true);
        assert_eq!((s, u.input_tokens), (UsageStatus::Exact, Some(1117)));
        let (u, s) = run(BodyKind::Json, None, &[&body[..100]], false);
        assert_eq!((s, u.input_tokens), (UsageStatus::Truncated, None));
        let (_, s) = run(BodyKind::Json, None, &[br#"{"error":{"message":"x"}}"#], true);
        assert_eq!(s, UsageStatus::Absent);
        let (_, s) = run(BodyKind::Json, None, &[b"<html>bad gateway</html>"], true);
        assert_eq!(s, UsageStatus::Unparsed);
        let (_, s) = run(BodyKind::Json, None, &[], true);
        assert_eq!(s, UsageStatus::Absent);
        let (_, s) = run(BodyKind::Other, None, &[b"hello"], true);
        assert_eq!(s, UsageStatus::Unparsed);
        let (_, s) = run(BodyKind::Json, Some("compress"), &[body], true);
        assert_eq!(s, UsageStatus::Unparsed);
    }

    #[test]
    fn over_the_cap_is_forwarded_but_counted_as_over_limit() {
        let body = include_bytes!("../../tests/fixtures/openai_chat.json");
        let mut c = Collector::new(BodyKind::Json, None, 1024);
        c.feed(&body.repeat(2));
        c.finish();
        let (u, s) = c.outcome();
        assert_eq!((s, u.input_tokens), (UsageStatus::OverLimit, None));
    }

    #[test]
    fn truncated_stream_keeps_tokens_seen() {
        let body: &[u8] = include_bytes!("../../tests/fixtures/anthropic_stream.sse");
        let cut = memchr::memmem::find(body, b"event: message_delta").unwrap();
        let (u, s) = run(BodyKind::Sse, None, &[&body[..cut]], false);
        assert_eq!(s, UsageStatus::Truncated);
        assert_eq!((u.input_tokens, u.output_tokens), (Some(472), Some(2)));
    }

    #[test]
    fn compressed_bodies_are_read_from_a_decoded_copy() {
        let body: &[u8] = include_bytes!("../../tests/fixtures/anthropic_stream.sse");
        for (name, enc) in [
            ("gzip", Encoding::Gzip),
            ("br", Encoding::Brotli),
            ("zstd", Encoding::Zstd),
            ("deflate", Encoding::Deflate),
        ] {
            let packed = decode::encode(enc, body);
            let chunks: Vec<&[u8]> = packed.chunks(5).collect();
            let (u, s) = run(BodyKind::Sse, Some(name), &chunks, true);
            assert_eq!(s, UsageStatus::Exact, "{name}");
            assert_eq!((u.input_tokens, u.output_tokens), (Some(472), Some(89)), "{name}");
        }
        let (_, s) = run(BodyKind::Json, Some("gzip"), &[b"not gzip at all"], true);
        assert_eq!(s, UsageStatus::Unparsed);
    }

    #[test]
    fn models_from_paths() {
        assert_eq!(
            model_from_path("/gemini/v1beta/models/gemini-2.5-flash:generateContent").as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(
            model_from_path("/google/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent").as_deref(),
            Some("gemini-2.5-pro")
        );
        assert_eq!(
            model_from_path("/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse").as_deref(),
            Some("anthropic.claude-3-5-haiku-20241022-v1:0")
        );
        assert_eq!(
            model_from_path(
                "/bedrock/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/invoke"
            )
            .as_deref(),
            Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.x")
        );
        assert_eq!(model_from_path("/openai/v1/chat/completions"), None);
        assert_eq!(model_from_path("/gemini/v1beta/models/"), None);
    }
}
