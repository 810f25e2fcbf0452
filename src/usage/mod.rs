//! Usage accounting: what a response says about tokens, read from a copy of the bytes as
//! they stream past. Everything here is pure (no I/O, no clock), so it is unit-tested at
//! every split point, fuzzed and benchmarked.
//!
//! One reader per wire format, each a [`UsageReader`] (`feed`, `finish`, `status`, `usage`):
//! - [`json`]: one JSON document -> usage and model (every provider's shape), its fast
//!   scanner in `json/scan.rs`, and [`json::JsonBodyReader`] for a whole JSON body.
//! - [`sse`]: incremental SSE scanner.
//! - [`array`](mod@array): incremental JSON-array scanner (Gemini `streamGenerateContent` without SSE).
//! - [`eventstream`]: incremental AWS event-stream decoder (Bedrock streams).
//!
//! Around them:
//! - [`decode`]: streaming gzip/deflate/br/zstd decoding of the copy.
//! - [`Collector`]: picks the reader ([`BodyReader`]) from the response headers and turns
//!   what it saw into a [`Usage`] and a [`UsageStatus`].

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

/// One wire format's usage reader: decoded body bytes in, [`Usage`] out. Pure and
/// incremental. [`Collector`] drives every reader through this trait alone.
pub trait UsageReader {
    /// Read the next chunk of the body; chunks may split anywhere.
    fn feed(&mut self, chunk: &[u8]);
    /// The body ended normally: read what is still held. A second call changes nothing.
    fn finish(&mut self);
    /// What has gone wrong so far.
    fn status(&self) -> ReadStatus;
    /// Usage seen so far: all of it after [`finish`](UsageReader::finish).
    fn usage(&self) -> &Usage;
}

/// What a [`UsageReader`] has run into; the [`Collector`] turns it into a [`UsageStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStatus {
    /// The body, or one of its events, elements or messages, was over the cap: not read.
    pub over_limit: bool,
    /// Something that could carry usage was not valid in its format.
    pub malformed: bool,
    /// The format's own framing is still open (a JSON array before its `]`): a body that
    /// ends here with any bytes in it is malformed.
    pub open: bool,
}

impl ReadStatus {
    /// A body LMGate does not read: never whole, so any bytes make it unparsed.
    const NOT_READ: ReadStatus = ReadStatus {
        over_limit: false,
        malformed: false,
        open: true,
    };
}

/// The reader of each [`BodyKind`] that is read, dispatched by `match`: no allocation
/// and no virtual call per response.
#[derive(Debug)]
pub enum BodyReader {
    /// [`BodyKind::Json`].
    Json(json::JsonBodyReader),
    /// [`BodyKind::Sse`].
    Sse(sse::SseUsageParser),
    /// [`BodyKind::JsonArray`].
    Array(array::JsonArrayParser),
    /// [`BodyKind::EventStream`].
    Events(eventstream::EventStreamParser),
}

impl BodyReader {
    /// The reader for `kind`, keeping at most `cap` bytes of one body, event, element or
    /// message; `None` for [`BodyKind::Other`].
    pub fn for_kind(kind: BodyKind, cap: usize) -> Option<BodyReader> {
        Some(match kind {
            BodyKind::Json => BodyReader::Json(json::JsonBodyReader::new(cap)),
            BodyKind::Sse => BodyReader::Sse(sse::SseUsageParser::new(cap)),
            BodyKind::JsonArray => BodyReader::Array(array::JsonArrayParser::new(cap)),
            BodyKind::EventStream => BodyReader::Events(eventstream::EventStreamParser::new(cap)),
            BodyKind::Other => return None,
        })
    }
}

/// `$body` with `$r` bound to whichever reader `$self` holds.
macro_rules! each_reader {
    ($self:expr, $r:ident => $body:expr) => {
        match $self {
            BodyReader::Json($r) => $body,
            BodyReader::Sse($r) => $body,
            BodyReader::Array($r) => $body,
            BodyReader::Events($r) => $body,
        }
    };
}

impl UsageReader for BodyReader {
    #[inline]
    fn feed(&mut self, chunk: &[u8]) {
        each_reader!(self, r => r.feed(chunk))
    }
    #[inline]
    fn finish(&mut self) {
        each_reader!(self, r => r.finish())
    }
    #[inline]
    fn status(&self) -> ReadStatus {
        each_reader!(self, r => r.status())
    }
    #[inline]
    fn usage(&self) -> &Usage {
        each_reader!(self, r => r.usage())
    }
}

/// Reads usage from a response body as its chunks pass: decodes a copy when the body is
/// compressed, hands it to a [`UsageReader`] (by default the one for the body's kind) and
/// turns what the reader saw into a [`UsageStatus`]. Memory is bounded by the cap.
pub struct Collector<R = BodyReader> {
    kind: BodyKind,
    /// `None`: a body that is not read (another content type, or an encoding LMGate
    /// cannot decode).
    reader: Option<R>,
    decoder: Option<Decoder>,
    unsupported_encoding: bool,
    /// Body bytes as they went to the client.
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
        let reader = if unsupported_encoding {
            None
        } else {
            BodyReader::for_kind(kind, cap)
        };
        Collector {
            kind,
            reader,
            decoder,
            unsupported_encoding,
            bytes: 0,
            complete: false,
        }
    }
}

impl<R: UsageReader> Collector<R> {
    /// The body kind.
    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Body bytes seen so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Feed a chunk exactly as it goes to the client.
    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        let Some(reader) = self.reader.as_mut() else {
            return; // not read, so not decoded either
        };
        match self.decoder.as_mut() {
            Some(d) => feed_plain(reader, &d.decode(chunk)),
            None => feed_plain(reader, chunk),
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
            if let Some(reader) = self.reader.as_mut() {
                feed_plain(reader, &out);
            }
        }
        if let Some(reader) = self.reader.as_mut() {
            reader.finish();
        }
    }

    /// Usage and its status. A body that did not end normally is `Truncated` with the
    /// tokens seen so far.
    pub fn outcome(&self) -> (Usage, UsageStatus) {
        let decode_failed = self.decoder.as_ref().is_some_and(|d| d.failed);
        let (usage, read) = match &self.reader {
            Some(r) => (r.usage().clone(), r.status()),
            None => (Usage::default(), ReadStatus::NOT_READ),
        };
        let status = if !self.complete {
            UsageStatus::Truncated
        } else if self.unsupported_encoding || decode_failed {
            UsageStatus::Unparsed
        } else if read.over_limit {
            UsageStatus::OverLimit
        } else if usage.has_tokens() {
            UsageStatus::Exact
        } else if read.malformed || (read.open && self.bytes > 0) {
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

/// Decoding may yield nothing for a chunk: no reader needs to see that.
#[inline]
fn feed_plain<R: UsageReader>(reader: &mut R, chunk: &[u8]) {
    if !chunk.is_empty() {
        reader.feed(chunk);
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

/// Test helpers that every reader's tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Usage, UsageReader};
    use std::fmt::Debug;

    /// The whole usage a test expects: the model, then input, output, cache read, cache
    /// write and reasoning tokens (`None` where the response says nothing).
    pub(crate) fn expect(model: Option<&str>, counts: [Option<u64>; 5]) -> Usage {
        let [input, output, cache_read, cache_write, reasoning] = counts;
        Usage {
            model: model.map(str::to_owned),
            input_tokens: input,
            output_tokens: output,
            cache_read_input_tokens: cache_read,
            cache_creation_input_tokens: cache_write,
            reasoning_tokens: reasoning,
        }
    }

    /// `reader` after it was fed `chunks` in order and finished.
    pub(crate) fn read<R: UsageReader>(mut reader: R, chunks: &[&[u8]]) -> R {
        for c in chunks {
            reader.feed(c);
        }
        reader.finish();
        reader
    }

    /// What `seen` makes of `body` fed whole, which must not change when the body is cut
    /// in two at every point, fed byte by byte, or cut in three at a stride.
    pub(crate) fn same_at_every_split<T: PartialEq + Debug>(body: &[u8], seen: impl Fn(&[&[u8]]) -> T) -> T {
        let whole = seen(&[body]);
        for cut in 0..=body.len() {
            let (a, b) = body.split_at(cut);
            assert_eq!(seen(&[a, b]), whole, "split at {cut}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(seen(&bytes), whole, "byte by byte");
        for i in (0..body.len()).step_by(7) {
            for j in (i..body.len()).step_by(13) {
                assert_eq!(seen(&[&body[..i], &body[i..j], &body[j..]]), whole, "{i}/{j}");
            }
        }
        whole
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
