//! Token usage from one JSON document: a whole response body, one SSE event's data, one
//! element of a Gemini JSON-array stream, or one Bedrock event payload. Pure.
//!
//! One borrowed serde shape covers every provider: each knows only the fields where usage
//! and the model live, and everything else is skipped without being built.
//!
//! | provider | input | output | cache read | cache write | reasoning |
//! |---|---|---|---|---|---|
//! | OpenAI chat | `usage.prompt_tokens` | `usage.completion_tokens` | `prompt_tokens_details.cached_tokens` | - | `completion_tokens_details.reasoning_tokens` |
//! | OpenAI responses | `usage.input_tokens` | `usage.output_tokens` | `input_tokens_details.cached_tokens` | - | `output_tokens_details.reasoning_tokens` |
//! | Anthropic | `usage.input_tokens` | `usage.output_tokens` | `cache_read_input_tokens` | `cache_creation_input_tokens` | - |
//! | Gemini/Vertex | `usageMetadata.promptTokenCount` | `candidatesTokenCount` | `cachedContentTokenCount` | - | `thoughtsTokenCount` |
//! | Bedrock Converse | `usage.inputTokens` | `usage.outputTokens` | `cacheReadInputTokens` | `cacheWriteInputTokens` | - |
//! | Bedrock InvokeModel stream | `amazon-bedrock-invocationMetrics.inputTokenCount` | `outputTokenCount` | `cacheReadInputTokenCount` | `cacheWriteInputTokenCount` | - |
//!
//! Each count is the provider's own: OpenAI's input includes cached tokens, Anthropic's
//! does not. Nothing is added up, so nothing is counted twice.
//!
//! This file is the mapping (the `Doc` shape, `apply_doc`, the serde reference
//! [`parse_json_usage_serde`]) and [`JsonBodyReader`] for a whole JSON body; `scan.rs` is
//! the fast structural scanner that reads a document into the same `Doc`.

mod scan;

use super::{ReadStatus, Usage, UsageReader};
pub(crate) use scan::{quote_or_backslash, quote_or_backslash_bits, HIGH, ONES};
use scan::{scan_doc, scan_object_prefix, NotRead};
use serde::Deserialize;
use std::borrow::Cow;

#[derive(Deserialize, Default)]
struct Doc<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(rename = "modelVersion", borrow, default)]
    model_version: Option<Cow<'a, str>>,
    #[serde(default)]
    usage: Option<UsageObj>,
    #[serde(rename = "usageMetadata", default)]
    usage_metadata: Option<GeminiUsage>,
    /// Responses API stream events (`response.completed`) nest the response.
    #[serde(borrow, default)]
    response: Option<Box<Doc<'a>>>,
    /// Anthropic `message_start` nests the message.
    #[serde(borrow, default)]
    message: Option<Box<Doc<'a>>>,
    /// Bedrock InvokeModelWithResponseStream, last chunk.
    #[serde(rename = "amazon-bedrock-invocationMetrics", default)]
    bedrock_metrics: Option<BedrockMetrics>,
}

#[derive(Deserialize, Default)]
struct UsageObj {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens_details: Option<Details>,
    completion_tokens_details: Option<Details>,
    input_tokens_details: Option<Details>,
    output_tokens_details: Option<Details>,
    #[serde(rename = "inputTokens")]
    input_tokens_camel: Option<u64>,
    #[serde(rename = "outputTokens")]
    output_tokens_camel: Option<u64>,
    #[serde(rename = "cacheReadInputTokens")]
    cache_read_camel: Option<u64>,
    #[serde(rename = "cacheWriteInputTokens")]
    cache_write_camel: Option<u64>,
}

#[derive(Deserialize, Default)]
struct Details {
    cached_tokens: Option<u64>,
    reasoning_tokens: Option<u64>,
}

#[derive(Deserialize, Default)]
struct GeminiUsage {
    #[serde(rename = "promptTokenCount")]
    prompt: Option<u64>,
    #[serde(rename = "candidatesTokenCount")]
    candidates: Option<u64>,
    #[serde(rename = "thoughtsTokenCount")]
    thoughts: Option<u64>,
    #[serde(rename = "cachedContentTokenCount")]
    cached: Option<u64>,
}

#[derive(Deserialize, Default)]
struct BedrockMetrics {
    #[serde(rename = "inputTokenCount")]
    input: Option<u64>,
    #[serde(rename = "outputTokenCount")]
    output: Option<u64>,
    #[serde(rename = "cacheReadInputTokenCount")]
    cache_read: Option<u64>,
    #[serde(rename = "cacheWriteInputTokenCount")]
    cache_write: Option<u64>,
}

/// What one JSON document said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonOutcome {
    /// Valid JSON; `usage` holds whatever usage and model fields it had (maybe none).
    Parsed(Usage),
    /// Not valid JSON (or not an object).
    Malformed,
}

/// Reads a whole JSON body: kept up to the cap as it arrives, parsed once at its end.
#[derive(Debug)]
pub struct JsonBodyReader {
    body: Vec<u8>,
    cap: usize,
    /// `over_limit`: the body was larger than the cap; `malformed`: it was not a JSON object.
    status: ReadStatus,
    finished: bool,
    usage: Usage,
}

impl JsonBodyReader {
    /// A reader keeping at most `cap` bytes of the body.
    pub fn new(cap: usize) -> Self {
        JsonBodyReader {
            body: Vec::new(),
            cap,
            status: ReadStatus::default(),
            finished: false,
            usage: Usage::default(),
        }
    }
}

impl UsageReader for JsonBodyReader {
    fn feed(&mut self, chunk: &[u8]) {
        if self.status.over_limit || self.finished {
            return;
        }
        if self.body.len() + chunk.len() > self.cap {
            self.status.over_limit = true;
            self.body = Vec::new();
        } else {
            self.body.extend_from_slice(chunk);
        }
    }

    /// Parse the body. An empty (or all-whitespace) body says nothing, which is not malformed.
    fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        if !self.status.over_limit && !self.body.iter().all(u8::is_ascii_whitespace) {
            self.status.malformed = !merge_json_usage(&mut self.usage, &self.body);
        }
        self.body = Vec::new();
    }

    fn status(&self) -> ReadStatus {
        self.status
    }

    fn usage(&self) -> &Usage {
        &self.usage
    }
}

/// Read usage and model from one JSON document.
pub fn parse_json_usage(bytes: &[u8]) -> JsonOutcome {
    let mut usage = Usage::default();
    if merge_json_usage(&mut usage, bytes) {
        JsonOutcome::Parsed(usage)
    } else {
        JsonOutcome::Malformed
    }
}

/// Merge one JSON document's usage into `into` (later non-null fields win). Returns
/// `false` when the bytes are not a JSON object.
///
/// The fast path (`scan::scan_doc`) walks the document's structure, jumping over string
/// contents, and reads only the values of the keys it knows (`model`, `usage`, ...): about
/// half the time of the full serde parse on a chat completion (measured numbers in
/// `json/scan.rs`). Where it cannot decide, the full serde parse answers.
pub fn merge_json_usage(into: &mut Usage, bytes: &[u8]) -> bool {
    match scan_doc(bytes) {
        Ok(doc) => {
            apply_doc(into, &doc);
            true
        }
        Err(NotRead::Malformed) => false,
        Err(NotRead::Unsure) => match serde_json::from_slice::<Doc>(bytes) {
            Ok(doc) => {
                apply_doc(into, &doc);
                true
            }
            Err(_) => false,
        },
    }
}

/// A JSON object at the start of some bytes, read by the fast path: where it ends, and
/// what it says, merged on demand. For a reader that would otherwise find the object's end
/// by one scan and then read it by another ([`super::array`]).
pub(crate) struct ObjectPrefix<'a> {
    /// The index after the object's `}`.
    pub end: usize,
    doc: Doc<'a>,
}

impl ObjectPrefix<'_> {
    /// Merge the object's usage into `into`, as [`merge_json_usage`] of its bytes would.
    pub fn merge_into(&self, into: &mut Usage) {
        apply_doc(into, &self.doc);
    }
}

/// The object starting at `bytes[0]` when the fast path reads it whole; `None` when it is
/// cut off, malformed or left to serde (the caller then reads it as before).
pub(crate) fn object_prefix(bytes: &[u8]) -> Option<ObjectPrefix<'_>> {
    let (doc, end) = scan_object_prefix(bytes).ok()?;
    Some(ObjectPrefix { end, doc })
}

/// The full serde parse of `Doc`, kept as the reference the fast path is checked
/// against (unit tests, the `json_usage` fuzz target, the parser benches).
pub fn parse_json_usage_serde(bytes: &[u8]) -> JsonOutcome {
    // A document is an object. (serde alone would also read a struct from an array, by
    // field position: `[]` would be an empty usage rather than malformed.)
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return JsonOutcome::Malformed;
    }
    let mut usage = Usage::default();
    match serde_json::from_slice::<Doc>(bytes) {
        Ok(doc) => {
            apply_doc(&mut usage, &doc);
            JsonOutcome::Parsed(usage)
        }
        Err(_) => JsonOutcome::Malformed,
    }
}

fn apply_doc(u: &mut Usage, d: &Doc) {
    if let Some(m) = d.model.as_deref().or(d.model_version.as_deref()) {
        if !m.is_empty() && u.model.as_deref() != Some(m) {
            u.model = Some(m.to_owned());
        }
    }
    if let Some(x) = &d.usage {
        set(
            &mut u.input_tokens,
            x.prompt_tokens.or(x.input_tokens).or(x.input_tokens_camel),
        );
        set(
            &mut u.output_tokens,
            x.completion_tokens.or(x.output_tokens).or(x.output_tokens_camel),
        );
        let cached = x
            .prompt_tokens_details
            .as_ref()
            .and_then(|d| d.cached_tokens)
            .or_else(|| x.input_tokens_details.as_ref().and_then(|d| d.cached_tokens));
        set(
            &mut u.cache_read_input_tokens,
            x.cache_read_input_tokens.or(cached).or(x.cache_read_camel),
        );
        set(
            &mut u.cache_creation_input_tokens,
            x.cache_creation_input_tokens.or(x.cache_write_camel),
        );
        let reasoning = x
            .completion_tokens_details
            .as_ref()
            .and_then(|d| d.reasoning_tokens)
            .or_else(|| x.output_tokens_details.as_ref().and_then(|d| d.reasoning_tokens));
        set(&mut u.reasoning_tokens, reasoning);
    }
    if let Some(g) = &d.usage_metadata {
        set(&mut u.input_tokens, g.prompt);
        set(&mut u.output_tokens, g.candidates);
        set(&mut u.reasoning_tokens, g.thoughts);
        set(&mut u.cache_read_input_tokens, g.cached);
    }
    if let Some(b) = &d.bedrock_metrics {
        set(&mut u.input_tokens, b.input);
        set(&mut u.output_tokens, b.output);
        set(&mut u.cache_read_input_tokens, b.cache_read);
        set(&mut u.cache_creation_input_tokens, b.cache_write);
    }
    if let Some(inner) = &d.response {
        apply_doc(u, inner);
    }
    if let Some(inner) = &d.message {
        apply_doc(u, inner);
    }
}

#[inline]
fn set(slot: &mut Option<u64>, v: Option<u64>) {
    if v.is_some() {
        *slot = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::testing::expect;

    fn usage(json: &str) -> Usage {
        match parse_json_usage(json.as_bytes()) {
            JsonOutcome::Parsed(u) => u,
            JsonOutcome::Malformed => panic!("malformed: {json}"),
        }
    }

    /// Each provider's fixture reads as the table in the module doc says. Counts: input,
    /// output, cache read, cache write, reasoning.
    #[test]
    fn every_provider_fixture_reads_as_the_table_says() {
        for (name, body, want) in [
            (
                "openai chat",
                include_str!("../../../tests/fixtures/openai_chat.json"),
                expect(
                    Some("gpt-4o-2024-08-06"),
                    [Some(1117), Some(46), Some(1024), None, Some(0)],
                ),
            ),
            (
                "openai responses",
                include_str!("../../../tests/fixtures/openai_responses.json"),
                expect(
                    Some("o4-mini-2025-04-16"),
                    [Some(328), Some(52), Some(0), None, Some(32)],
                ),
            ),
            (
                "openai embeddings",
                include_str!("../../../tests/fixtures/openai_embeddings.json"),
                expect(Some("text-embedding-3-small"), [Some(8), None, None, None, None]),
            ),
            (
                "anthropic: cache read and write kept apart from input",
                include_str!("../../../tests/fixtures/anthropic_message.json"),
                expect(
                    Some("claude-sonnet-4-5-20250929"),
                    [Some(2095), Some(503), Some(1800), Some(248), None],
                ),
            ),
            (
                "gemini",
                include_str!("../../../tests/fixtures/gemini_generate.json"),
                expect(
                    Some("gemini-2.5-flash"),
                    [Some(8), Some(21), Some(4), None, Some(140)],
                ),
            ),
            (
                "bedrock converse: no model in the body, the URL names it",
                include_str!("../../../tests/fixtures/bedrock_converse.json"),
                expect(None, [Some(21), Some(39), Some(5), Some(2), None]),
            ),
        ] {
            assert_eq!(usage(body), want, "{name}");
        }
    }

    #[test]
    fn absent_and_malformed_are_told_apart() {
        let u = usage(r#"{"error":{"message":"bad","type":"invalid_request_error"}}"#);
        assert!(!u.has_tokens());
        let u = usage(r#"{"usage":null,"model":"m"}"#);
        assert!(!u.has_tokens());
        assert_eq!(
            parse_json_usage(b"{\"usage\":{\"prompt_tokens\":1"),
            JsonOutcome::Malformed
        );
        assert_eq!(parse_json_usage(b"<html>502</html>"), JsonOutcome::Malformed);
        assert_eq!(parse_json_usage(b"[1,2]"), JsonOutcome::Malformed);
        assert_eq!(
            parse_json_usage(b" []"),
            JsonOutcome::Malformed,
            "an array is not a document"
        );
        // serde's struct-from-array reading of a nested `message` is kept (found by fuzzing).
        let u = usage(r#"{"message":[null,null,{"prompt_tokens":5}]}"#);
        assert_eq!(u.input_tokens, Some(5));
        assert_eq!(parse_json_usage(b""), JsonOutcome::Malformed);
    }

    #[test]
    fn later_documents_override_field_by_field() {
        let mut u = Usage::default();
        assert!(merge_json_usage(&mut u, br#"{"type":"message_start","message":{"model":"claude","usage":{"input_tokens":10,"cache_read_input_tokens":3,"output_tokens":1}}}"#));
        assert!(merge_json_usage(
            &mut u,
            br#"{"type":"message_delta","usage":{"output_tokens":15}}"#
        ));
        assert!(merge_json_usage(
            &mut u,
            br#"{"type":"message_delta","usage":{"output_tokens":30}}"#
        ));
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (Some(10), Some(30), Some(3))
        );
        assert!(!merge_json_usage(&mut u, b"not json"));
        assert_eq!(u.output_tokens, Some(30));
    }
}
