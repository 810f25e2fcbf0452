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

use super::Usage;
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
/// The fast path ([`scan_doc`]) walks the document's structure, jumping over string
/// contents with `memchr`, and hands only the values of the keys it knows (`model`,
/// `usage`, ...) to serde; a 760-byte chat completion costs about a fifth of a full serde
/// pass. Where it cannot decide, the full serde parse answers.
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

/// The full serde parse of [`Doc`], kept as the reference the fast path is checked
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

/// Why the fast path gave no [`Doc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotRead {
    /// Certainly not what serde would accept as a `Doc`.
    Malformed,
    /// Something the scanner does not judge itself (a known key with escapes, a nesting
    /// deeper than serde's limit): ask serde.
    Unsure,
}

/// serde_json's recursion limit: deeper documents are errors there.
const MAX_DEPTH: usize = 127;

/// The document's top-level object, reading only the known keys' values with serde.
///
/// Grammar is checked as serde would for everything the record depends on: the object
/// structure, every key, strings being closed, literals, brackets matching, nothing after
/// the document. Inside skipped values the scanner does not re-check number syntax,
/// escape sequences or raw control characters in strings (serde would reject those): such
/// a document is still read, since the usage it carries is intact.
fn scan_doc(b: &[u8]) -> Result<Doc<'_>, NotRead> {
    let mut doc = Doc::default();
    let end = scan_object(b, ws(b, 0), &mut doc, 0)?;
    if ws(b, end) != b.len() {
        return Err(NotRead::Malformed);
    }
    Ok(doc)
}

#[inline]
fn ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\n' | b'\r' | b'\t') {
        i += 1;
    }
    i
}

/// The end of the string starting at `b[i] == '"'` (one past its closing quote), and
/// whether it holds a backslash.
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j = quote_or_backslash(b, j)?;
        match b[j] {
            b'"' => return Some((j + 1, escaped)),
            _ => {
                escaped = true;
                j += 2;
            }
        }
    }
}

/// The index of the first `"` or `\` at or after `j`. Most strings are short keys and
/// values: eight bytes at a time in a register for the first 64 bytes, then `memchr2`
/// (SIMD) for long ones such as message content. The byte loop this replaced was a third
/// of a chat completion's scan.
#[inline]
fn quote_or_backslash(b: &[u8], mut j: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let stop = j.saturating_add(64).min(b.len());
    while j + 8 <= stop {
        let w = u64::from_le_bytes(b[j..j + 8].try_into().expect("8 bytes"));
        let q = w ^ (ONES * u64::from(b'"'));
        let s = w ^ (ONES * u64::from(b'\\'));
        // A zero byte in q or s is a match; the lowest flagged byte is always a real one.
        let m = ((q.wrapping_sub(ONES) & !q) | (s.wrapping_sub(ONES) & !s)) & HIGH;
        if m != 0 {
            return Some(j + (m.trailing_zeros() / 8) as usize);
        }
        j += 8;
    }
    if j < stop || stop == b.len() {
        // Fewer than 8 bytes before the end of the input.
        return b
            .get(j..)?
            .iter()
            .position(|&c| c == b'"' || c == b'\\')
            .map(|k| j + k);
    }
    memchr::memchr2(b'"', b'\\', &b[j..]).map(|k| j + k)
}

/// Parse the object at `b[i]` into `doc`; returns the index after its `}`.
fn scan_object<'a>(b: &'a [u8], mut i: usize, doc: &mut Doc<'a>, depth: usize) -> Result<usize, NotRead> {
    if b.get(i) != Some(&b'{') {
        return Err(NotRead::Malformed);
    }
    if depth >= MAX_DEPTH {
        return Err(NotRead::Unsure);
    }
    i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Ok(i + 1);
    }
    let mut seen = 0u8;
    loop {
        if b.get(i) != Some(&b'"') {
            return Err(NotRead::Malformed);
        }
        let (key_end, key_escaped) = string_end(b, i).ok_or(NotRead::Malformed)?;
        let key = &b[i + 1..key_end - 1];
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return Err(NotRead::Malformed);
        }
        let v = ws(b, i + 1);
        let field = if key_escaped {
            // `"mod\u0065l"` is `model` to serde; rare enough to leave to it.
            return Err(NotRead::Unsure);
        } else {
            Field::of(key)
        };
        let v_end = match field {
            Field::Other => skip_value(b, v, depth + 1).ok_or(NotRead::Malformed)?,
            known => {
                let bit = 1u8 << known as u8;
                if seen & bit != 0 {
                    return Err(NotRead::Malformed); // serde: duplicate field
                }
                seen |= bit;
                read_field(b, v, known, doc, depth + 1)?
            }
        };
        i = ws(b, v_end);
        match b.get(i) {
            Some(b',') => i = ws(b, i + 1),
            Some(b'}') => return Ok(i + 1),
            _ => return Err(NotRead::Malformed),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Model,
    ModelVersion,
    Usage,
    UsageMetadata,
    Response,
    Message,
    BedrockMetrics,
    Other,
}

impl Field {
    #[inline]
    fn of(key: &[u8]) -> Field {
        match key {
            b"model" => Field::Model,
            b"modelVersion" => Field::ModelVersion,
            b"usage" => Field::Usage,
            b"usageMetadata" => Field::UsageMetadata,
            b"response" => Field::Response,
            b"message" => Field::Message,
            b"amazon-bedrock-invocationMetrics" => Field::BedrockMetrics,
            _ => Field::Other,
        }
    }
}

/// Deserialize one known value with serde; returns the index after it.
fn read_field<'a>(
    b: &'a [u8],
    v: usize,
    field: Field,
    doc: &mut Doc<'a>,
    depth: usize,
) -> Result<usize, NotRead> {
    fn de<'a, T: Deserialize<'a>>(b: &'a [u8], v: usize) -> Result<(T, usize), NotRead> {
        // serde reads one value and says where it ended.
        let mut values =
            serde_json::Deserializer::from_slice(b.get(v..).ok_or(NotRead::Malformed)?).into_iter::<T>();
        match values.next() {
            Some(Ok(t)) => Ok((t, v + values.byte_offset())),
            _ => Err(NotRead::Malformed),
        }
    }
    match field {
        Field::Model => de(b, v).map(|(x, e)| {
            doc.model = x;
            e
        }),
        Field::ModelVersion => de(b, v).map(|(x, e)| {
            doc.model_version = x;
            e
        }),
        // The usage objects are read by hand where they take the usual form (serde spent
        // ~5k instructions on OpenAI's ~300-byte object), by serde where they do not.
        Field::Usage => fast_usage(b, v, depth)
            .map_or_else(|| de(b, v), Ok)
            .map(|(x, e)| {
                doc.usage = x;
                e
            }),
        Field::UsageMetadata => fast_gemini(b, v, depth)
            .map_or_else(|| de(b, v), Ok)
            .map(|(x, e)| {
                doc.usage_metadata = x;
                e
            }),
        Field::BedrockMetrics => fast_bedrock(b, v, depth)
            .map_or_else(|| de(b, v), Ok)
            .map(|(x, e)| {
                doc.bedrock_metrics = x;
                e
            }),
        Field::Response | Field::Message => {
            if b.get(v) == Some(&b'[') {
                // serde reads a struct from an array too (fields by position): found by
                // the json_usage fuzz target; leave that oddity to serde itself.
                return Err(NotRead::Unsure);
            }
            let (inner, end) = if b[v..].starts_with(b"null") {
                (None, v + 4)
            } else {
                let mut inner = Doc::default();
                let end = scan_object(b, v, &mut inner, depth)?;
                (Some(Box::new(inner)), end)
            };
            if field == Field::Response {
                doc.response = inner;
            } else {
                doc.message = inner;
            }
            Ok(end)
        }
        Field::Other => unreachable!("skipped by the caller"),
    }
}

/// The object at `b[i]` read without serde: `known` numbers the fields `read(field, at)`
/// takes (it returns the index after the value), any other field is skipped as the
/// document's are. `None` leaves the object to serde: an escaped key, a repeated known
/// field (an error there), a value `read` does not take, broken structure.
fn fast_object(
    b: &[u8],
    i: usize,
    depth: usize,
    known: impl Fn(&[u8]) -> Option<usize>,
    mut read: impl FnMut(usize, usize) -> Option<usize>,
) -> Option<usize> {
    if b.get(i) != Some(&b'{') || depth >= MAX_DEPTH {
        return None;
    }
    let mut i = ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    let mut seen = 0u32;
    loop {
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = string_end(b, i)?;
        if escaped {
            return None;
        }
        let key = &b[i + 1..key_end - 1];
        i = ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        let v = ws(b, i + 1);
        let end = match known(key) {
            Some(f) => {
                if seen & (1 << f) != 0 {
                    return None;
                }
                seen |= 1 << f;
                read(f, v)?
            }
            None => skip_value(b, v, depth + 1)?,
        };
        i = ws(b, end);
        match b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// `null` (`None`) or an object read by `read_object`, as serde reads an `Option<T>`.
fn fast_option<T>(
    b: &[u8],
    i: usize,
    read_object: impl FnOnce() -> Option<(T, usize)>,
) -> Option<(Option<T>, usize)> {
    if b.get(i..)?.starts_with(b"null") {
        return Some((None, i + 4));
    }
    read_object().map(|(t, end)| (Some(t), end))
}

/// An `Option<u64>` in the form serde certainly reads the same: `null` or 1-19 digits
/// without a leading zero or a fraction/exponent. Anything else (`-0`, `1e3`, `"5"`, a
/// 20-digit number) is left to serde.
#[inline]
fn fast_u64(b: &[u8], i: usize) -> Option<(Option<u64>, usize)> {
    let rest = b.get(i..)?;
    if rest.starts_with(b"null") {
        return Some((None, i + 4));
    }
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 || (digits > 1 && rest[0] == b'0') {
        return None;
    }
    if matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    let n = rest[..digits]
        .iter()
        .fold(0u64, |n, &c| n * 10 + u64::from(c - b'0'));
    Some((Some(n), i + digits))
}

/// `null` or an object whose known fields (numbered by `known`) are all `Option<u64>`.
fn fast_counts<const N: usize>(
    b: &[u8],
    i: usize,
    depth: usize,
    known: impl Fn(&[u8]) -> Option<usize>,
) -> Option<(Option<[Option<u64>; N]>, usize)> {
    fast_option(b, i, || {
        let mut counts = [None; N];
        let end = fast_object(b, i, depth, known, |f, v| {
            let (x, end) = fast_u64(b, v)?;
            *counts.get_mut(f)? = x;
            Some(end)
        })?;
        Some((counts, end))
    })
}

fn fast_details(b: &[u8], i: usize, depth: usize) -> Option<(Option<Details>, usize)> {
    let known = |k: &[u8]| match k {
        b"cached_tokens" => Some(0),
        b"reasoning_tokens" => Some(1),
        _ => None,
    };
    let (counts, end) = fast_counts(b, i, depth, known)?;
    let details = counts.map(|[cached_tokens, reasoning_tokens]| Details {
        cached_tokens,
        reasoning_tokens,
    });
    Some((details, end))
}

fn fast_usage(b: &[u8], i: usize, depth: usize) -> Option<(Option<UsageObj>, usize)> {
    let known = |k: &[u8]| match k {
        b"prompt_tokens" => Some(0),
        b"completion_tokens" => Some(1),
        b"input_tokens" => Some(2),
        b"output_tokens" => Some(3),
        b"cache_read_input_tokens" => Some(4),
        b"cache_creation_input_tokens" => Some(5),
        b"inputTokens" => Some(6),
        b"outputTokens" => Some(7),
        b"cacheReadInputTokens" => Some(8),
        b"cacheWriteInputTokens" => Some(9),
        b"prompt_tokens_details" => Some(10),
        b"completion_tokens_details" => Some(11),
        b"input_tokens_details" => Some(12),
        b"output_tokens_details" => Some(13),
        _ => None,
    };
    fast_option(b, i, || {
        let mut u = UsageObj::default();
        let end = fast_object(b, i, depth, known, |f, v| {
            if f < 10 {
                let (x, end) = fast_u64(b, v)?;
                *[
                    &mut u.prompt_tokens,
                    &mut u.completion_tokens,
                    &mut u.input_tokens,
                    &mut u.output_tokens,
                    &mut u.cache_read_input_tokens,
                    &mut u.cache_creation_input_tokens,
                    &mut u.input_tokens_camel,
                    &mut u.output_tokens_camel,
                    &mut u.cache_read_camel,
                    &mut u.cache_write_camel,
                ][f] = x;
                Some(end)
            } else {
                let (x, end) = fast_details(b, v, depth + 1)?;
                *[
                    &mut u.prompt_tokens_details,
                    &mut u.completion_tokens_details,
                    &mut u.input_tokens_details,
                    &mut u.output_tokens_details,
                ][f - 10] = x;
                Some(end)
            }
        })?;
        Some((u, end))
    })
}

fn fast_gemini(b: &[u8], i: usize, depth: usize) -> Option<(Option<GeminiUsage>, usize)> {
    let known = |k: &[u8]| match k {
        b"promptTokenCount" => Some(0),
        b"candidatesTokenCount" => Some(1),
        b"thoughtsTokenCount" => Some(2),
        b"cachedContentTokenCount" => Some(3),
        _ => None,
    };
    let (counts, end) = fast_counts(b, i, depth, known)?;
    let usage = counts.map(|[prompt, candidates, thoughts, cached]| GeminiUsage {
        prompt,
        candidates,
        thoughts,
        cached,
    });
    Some((usage, end))
}

fn fast_bedrock(b: &[u8], i: usize, depth: usize) -> Option<(Option<BedrockMetrics>, usize)> {
    let known = |k: &[u8]| match k {
        b"inputTokenCount" => Some(0),
        b"outputTokenCount" => Some(1),
        b"cacheReadInputTokenCount" => Some(2),
        b"cacheWriteInputTokenCount" => Some(3),
        _ => None,
    };
    let (counts, end) = fast_counts(b, i, depth, known)?;
    let metrics = counts.map(|[input, output, cache_read, cache_write]| BedrockMetrics {
        input,
        output,
        cache_read,
        cache_write,
    });
    Some((metrics, end))
}

/// The index after the JSON value at `b[i]`, checking its structure (see [`scan_doc`]).
fn skip_value(b: &[u8], i: usize, depth: usize) -> Option<usize> {
    if depth > MAX_DEPTH {
        return None;
    }
    match *b.get(i)? {
        b'"' => string_end(b, i).map(|(e, _)| e),
        b'{' => {
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b'}') {
                return Some(i + 1);
            }
            loop {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                i = ws(b, string_end(b, i)?.0);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = ws(b, skip_value(b, ws(b, i + 1), depth + 1)?);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b'}' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b'[' => {
            let mut i = ws(b, i + 1);
            if b.get(i) == Some(&b']') {
                return Some(i + 1);
            }
            loop {
                i = ws(b, skip_value(b, i, depth + 1)?);
                match b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b']' => return Some(i + 1),
                    _ => return None,
                }
            }
        }
        b't' => b[i..].starts_with(b"true").then_some(i + 4),
        b'f' => b[i..].starts_with(b"false").then_some(i + 5),
        b'n' => b[i..].starts_with(b"null").then_some(i + 4),
        b'-' | b'0'..=b'9' => {
            let mut j = i + 1;
            while j < b.len() && matches!(b[j], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-') {
                j += 1;
            }
            Some(j)
        }
        _ => None,
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

    fn usage(json: &str) -> Usage {
        match parse_json_usage(json.as_bytes()) {
            JsonOutcome::Parsed(u) => u,
            JsonOutcome::Malformed => panic!("malformed: {json}"),
        }
    }

    #[test]
    fn openai_chat_completion() {
        let u = usage(include_str!("../../tests/fixtures/openai_chat.json"));
        assert_eq!(u.model.as_deref(), Some("gpt-4o-2024-08-06"));
        assert_eq!((u.input_tokens, u.output_tokens), (Some(1117), Some(46)));
        assert_eq!(u.cache_read_input_tokens, Some(1024));
        assert_eq!(u.reasoning_tokens, Some(0));
        assert_eq!(u.cache_creation_input_tokens, None);
    }

    #[test]
    fn openai_responses_and_embeddings() {
        let u = usage(include_str!("../../tests/fixtures/openai_responses.json"));
        assert_eq!((u.input_tokens, u.output_tokens), (Some(328), Some(52)));
        assert_eq!(
            (u.cache_read_input_tokens, u.reasoning_tokens),
            (Some(0), Some(32))
        );
        assert_eq!(u.model.as_deref(), Some("o4-mini-2025-04-16"));
        let u = usage(include_str!("../../tests/fixtures/openai_embeddings.json"));
        assert_eq!((u.input_tokens, u.output_tokens), (Some(8), None));
        assert_eq!(u.model.as_deref(), Some("text-embedding-3-small"));
    }

    #[test]
    fn anthropic_message_keeps_cache_fields_apart() {
        let u = usage(include_str!("../../tests/fixtures/anthropic_message.json"));
        assert_eq!((u.input_tokens, u.output_tokens), (Some(2095), Some(503)));
        assert_eq!(u.cache_read_input_tokens, Some(1800));
        assert_eq!(u.cache_creation_input_tokens, Some(248));
        assert_eq!(u.model.as_deref(), Some("claude-sonnet-4-5-20250929"));
    }

    #[test]
    fn gemini_generate_content() {
        let u = usage(include_str!("../../tests/fixtures/gemini_generate.json"));
        assert_eq!((u.input_tokens, u.output_tokens), (Some(8), Some(21)));
        assert_eq!(
            (u.reasoning_tokens, u.cache_read_input_tokens),
            (Some(140), Some(4))
        );
        assert_eq!(u.model.as_deref(), Some("gemini-2.5-flash"));
    }

    #[test]
    fn bedrock_converse() {
        let u = usage(include_str!("../../tests/fixtures/bedrock_converse.json"));
        assert_eq!((u.input_tokens, u.output_tokens), (Some(21), Some(39)));
        assert_eq!(
            (u.cache_read_input_tokens, u.cache_creation_input_tokens),
            (Some(5), Some(2))
        );
        assert_eq!(u.model, None, "Converse names no model: the URL does");
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

    /// Every document the fixtures hold: whole bodies and each SSE event's data.
    fn fixture_documents() -> Vec<Vec<u8>> {
        let mut docs: Vec<Vec<u8>> = [
            include_str!("../../tests/fixtures/openai_chat.json"),
            include_str!("../../tests/fixtures/openai_responses.json"),
            include_str!("../../tests/fixtures/openai_embeddings.json"),
            include_str!("../../tests/fixtures/anthropic_message.json"),
            include_str!("../../tests/fixtures/gemini_generate.json"),
            include_str!("../../tests/fixtures/bedrock_converse.json"),
            r#"{"usage":null,"model":"m","response":null,"message":{"model":"x","usage":{"input_tokens":3}}}"#,
            r#"{"mod\u0065l":"escaped-key","usage":{"prompt_tokens":1}}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"usage":{"prompt_tokens":1},"x":[1,{"usage":{"prompt_tokens":9}},"\"usage\":{}"]}"#,
            r#"{"model":"m","x":01,"usage":{"prompt_tokens":2}}"#,
            r#"{"model":"m","x":"a\qb","usage":{"prompt_tokens":2}}"#,
            r#"{"response":["resp-model"],"usage":{"prompt_tokens":4}}"#,
            r#"{"message":[null,null,{"prompt_tokens":5}]}"#,
            "[]",
        ]
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .collect();
        for sse in [
            include_str!("../../tests/fixtures/openai_chat_stream.sse"),
            include_str!("../../tests/fixtures/anthropic_stream.sse"),
            include_str!("../../tests/fixtures/gemini_stream.sse"),
            include_str!("../../tests/fixtures/openai_responses_stream.sse"),
        ] {
            for line in sse.lines().filter_map(|l| l.strip_prefix("data: ")) {
                docs.push(line.as_bytes().to_vec());
            }
        }
        docs
    }

    /// The fast path agrees with the full serde parse wherever serde accepts the document,
    /// and is never stricter: every prefix of every fixture document, every one-byte
    /// deletion, and a few byte substitutions.
    #[test]
    fn the_fast_path_agrees_with_serde() {
        // Where serde rejects a document the fast path may still read it (see the next
        // test for what it leaves unchecked), so only serde's acceptances bind it.
        let check = |d: &[u8]| {
            if let JsonOutcome::Parsed(u) = parse_json_usage_serde(d) {
                assert_eq!(
                    parse_json_usage(d),
                    JsonOutcome::Parsed(u),
                    "{}",
                    String::from_utf8_lossy(d)
                );
            }
        };
        let mut n = 0;
        for doc in fixture_documents() {
            for cut in 0..=doc.len() {
                check(&doc[..cut]);
                n += 1;
            }
            for del in 0..doc.len() {
                let mut d = doc.clone();
                d.remove(del);
                check(&d);
                n += 1;
            }
            for at in (0..doc.len()).step_by(3) {
                for b in [b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b' ', b'1', b'n'] {
                    let mut d = doc.clone();
                    d[at] = b;
                    check(&d);
                    n += 1;
                }
            }
        }
        assert!(n > 10_000, "{n} documents checked");
    }

    #[test]
    fn what_the_fast_path_leaves_unchecked_inside_skipped_values() {
        // serde rejects these; the usage they carry is intact, so they are read.
        for d in [
            &br#"{"model":"m","x":01,"usage":{"prompt_tokens":2}}"#[..],
            br#"{"model":"m","x":"a\qb","usage":{"prompt_tokens":2}}"#,
        ] {
            assert_eq!(parse_json_usage_serde(d), JsonOutcome::Malformed);
            let JsonOutcome::Parsed(u) = parse_json_usage(d) else {
                panic!("read")
            };
            assert_eq!((u.model.as_deref(), u.input_tokens), (Some("m"), Some(2)));
        }
        // Structure is always checked.
        for d in [
            &br#"{"model":"m","x":[1,2}"#[..],
            br#"{"model":"m","x":"open}"#,
            br#"{"model":"m" "usage":null}"#,
            br#"{"model":"m"} trailing"#,
            br#"{"model":"m","x":tru}"#,
            br#"{"model":"m","usage":{"prompt_tokens":"1"}}"#,
        ] {
            assert_eq!(
                parse_json_usage(d),
                JsonOutcome::Malformed,
                "{}",
                String::from_utf8_lossy(d)
            );
        }
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(
            parse_json_usage(deep.as_bytes()),
            JsonOutcome::Malformed,
            "depth limit"
        );
    }

    #[test]
    fn usage_objects_in_unusual_forms_are_read_exactly_as_serde_reads_them() {
        // The hand-written usage reader takes the usual form and hands the rest to serde.
        for (usage, input) in [
            ("18446744073709551615", Some(u64::MAX)), // 20 digits: serde's
            ("9999999999999999999", Some(9_999_999_999_999_999_999)),
            ("0", Some(0)),
            ("null", None),
            ("  7 ", Some(7)),
        ] {
            let d = format!(r#"{{"usage":{{"prompt_tokens":{usage},"x":[1,{{"y":null}}]}}}}"#);
            let serde = parse_json_usage_serde(d.as_bytes());
            assert_eq!(parse_json_usage(d.as_bytes()), serde, "{d}");
            let JsonOutcome::Parsed(u) = serde else {
                panic!("{d}")
            };
            assert_eq!(u.input_tokens, input, "{d}");
        }
        for d in [
            r#"{"usage":{"prompt_tokens":1e3}}"#,
            r#"{"usage":{"prompt_tokens":1.0}}"#,
            r#"{"usage":{"prompt_tokens":"5"}}"#,
            r#"{"usage":{"prompt_tokens":01}}"#,
            r#"{"usage":{"prompt_tokens":-1}}"#,
            r#"{"usage":{"prompt_tokens":-0}}"#,
            r#"{"usage":{"prompt_tokens":18446744073709551616}}"#,
            r#"{"usage":{"prompt_tokens":1,"prompt_tokens":2}}"#,
            r#"{"usage":{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":1}}}"#,
            r#"{"usage":{"prompt_tokens_details":[1]}}"#,
            r#"{"usage":[1,2]}"#,
            r#"{"usageMetadata":{"promptTokenCount":true}}"#,
            r#"{"amazon-bedrock-invocationMetrics":{"inputTokenCount":{}}}"#,
        ] {
            assert_eq!(
                parse_json_usage_serde(d.as_bytes()),
                JsonOutcome::Malformed,
                "{d}"
            );
            assert_eq!(parse_json_usage(d.as_bytes()), JsonOutcome::Malformed, "{d}");
        }
        // An escaped key is still the same key to serde.
        let d = br#"{"usage":{"prompt\u005ftokens":3,"completion_tokens":4}}"#;
        let JsonOutcome::Parsed(u) = parse_json_usage(d) else {
            panic!()
        };
        assert_eq!((u.input_tokens, u.output_tokens), (Some(3), Some(4)));
        assert_eq!(parse_json_usage(d), parse_json_usage_serde(d));
    }

    #[test]
    fn quote_or_backslash_finds_the_first_one_at_every_offset_and_length() {
        // Every position of a `"` or `\\` in inputs of every length up to 150 (across the
        // 8-byte words, the 64-byte window and the memchr tail), among bytes that are
        // near misses for the word trick: high bytes, `"` +/- 1, `\\` +/- 1, zero.
        let fill = [0x80u8, 0xff, b'!', b'#', b'[', b']', 0, b'a', 0x22 ^ 0x80];
        for len in 0..150usize {
            let base: Vec<u8> = (0..len).map(|k| fill[k % fill.len()]).collect();
            for start in [0, 1, 7, 8, 9, 63, 64, 65] {
                assert_eq!(quote_or_backslash(&base, start), None, "len {len} start {start}");
                for at in start..len {
                    for c in [b'"', b'\\'] {
                        let mut d = base.clone();
                        d[at] = c;
                        if at + 3 < len {
                            d[at + 3] = b'"'; // a later match never wins
                        }
                        assert_eq!(
                            quote_or_backslash(&d, start),
                            Some(at),
                            "len {len} start {start} at {at}"
                        );
                    }
                }
            }
        }
        assert_eq!(quote_or_backslash(b"ab", 3), None);
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
