//! The structural scanner behind [`super::merge_json_usage`]. It walks one JSON document,
//! jumping over string contents (`quote_or_backslash`: sixteen bytes at a time, then
//! `memchr2`), checks the structure as serde would, and reads only the values of the keys
//! that carry usage or the model: usage objects by hand (`fast_usage`, `fast_counts`), the
//! model with serde. Whatever it cannot decide goes to the full serde parse
//! (`NotRead::Unsure`).
//!
//! Measured, not estimated:
//! - `cargo bench --profile profiling --bench parsers -- json/` (release code generation:
//!   fat LTO, one codegen unit; on the shared 2-core VM at load average ~9, so the times
//!   are upper bounds): the 987-byte OpenAI chat completion fixture in 1.08 µs
//!   (870 MiB/s) against 2.09 µs for the full serde parse (`json/serde_reference`); a 2 MB
//!   completion in 455 µs (4.1 GiB/s) against 725 µs; the whole `Collector` path
//!   (captured in 16 KiB chunks, then parsed) 1.19 µs and 570 µs.
//! - `KEEP=1 bench/callgrind.sh`, then `callgrind_annotate --inclusive=yes` on the kept
//!   `lmgate.cg.1`: per request for the 760-byte chat completion, `merge_json_usage` costs
//!   6,327 instructions (`scan_object` 5,742 of them) of LMGate's ~123k per JSON request;
//!   bare Pingora's is ~99k.

use super::{BedrockMetrics, Details, Doc, GeminiUsage, UsageObj};
use serde::Deserialize;
use std::borrow::Cow;

/// Why the fast path gave no [`Doc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NotRead {
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
pub(super) fn scan_doc(b: &[u8]) -> Result<Doc<'_>, NotRead> {
    let mut doc = Doc::default();
    let end = scan_object(b, ws(b, 0), &mut doc, 0)?;
    if ws(b, end) != b.len() {
        return Err(NotRead::Malformed);
    }
    Ok(doc)
}

/// The object at `b[0]`, which may be followed by anything, and the index after its `}`.
pub(super) fn scan_object_prefix(b: &[u8]) -> Result<(Doc<'_>, usize), NotRead> {
    let mut doc = Doc::default();
    let end = scan_object(b, 0, &mut doc, 0)?;
    Ok((doc, end))
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

/// Eight copies of the byte 1, and of the high bit.
pub(crate) const ONES: u64 = 0x0101_0101_0101_0101;
pub(crate) const HIGH: u64 = 0x8080_8080_8080_8080;

/// Masked with [`HIGH`]: the high bit of each byte of `w` (eight bytes, little-endian)
/// that is a `"` or a `\`. The zero-byte test behind it can also flag a byte above a real
/// match, never below one: the lowest flagged byte is always a real match, and whether
/// any byte is flagged is exact. Shared by the scanner and the record line's escape check.
#[inline]
pub(crate) fn quote_or_backslash_bits(w: u64) -> u64 {
    let q = w ^ (ONES * u64::from(b'"'));
    let s = w ^ (ONES * u64::from(b'\\'));
    (q.wrapping_sub(ONES) & !q) | (s.wrapping_sub(ONES) & !s)
}

/// The index of the first `"` or `\` at or after `j`. Most strings are short keys and
/// values: the first 64 bytes are checked sixteen at a time in one SSE2 register (x86_64's
/// baseline, so no feature detection) or eight at a time in a general register elsewhere,
/// then `memchr2` (AVX2 where the CPU has it) takes long ones such as message content. The
/// byte loop this replaced was a third of a chat completion's scan; SSE2 in place of the
/// eight-byte words took another ~1.5k instructions off a 760-byte completion's scan.
#[inline]
pub(crate) fn quote_or_backslash(b: &[u8], mut j: usize) -> Option<usize> {
    let stop = j.saturating_add(64).min(b.len());
    #[cfg(target_arch = "x86_64")]
    while j + 16 <= stop {
        if let Some(k) = sse2_quote_or_backslash(b[j..j + 16].try_into().expect("16 bytes")) {
            return Some(j + k);
        }
        j += 16;
    }
    while j + 8 <= stop {
        let w = u64::from_le_bytes(b[j..j + 8].try_into().expect("8 bytes"));
        let m = quote_or_backslash_bits(w) & HIGH;
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

/// The index of the first `"` or `\` in sixteen bytes.
#[cfg(target_arch = "x86_64")]
#[inline]
fn sse2_quote_or_backslash(block: &[u8; 16]) -> Option<usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: the sixteen bytes loaded are `block`'s, and the load has no alignment
    // requirement. SSE2 is part of every x86_64 target, so the intrinsics'
    // `target_feature` holds.
    let mask = unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let hits = _mm_or_si128(
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8)),
            _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8)),
        );
        _mm_movemask_epi8(hits) as u32
    };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
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
        Field::Model => fast_str(b, v).map_or_else(|| de(b, v), Ok).map(|(x, e)| {
            doc.model = x;
            e
        }),
        Field::ModelVersion => fast_str(b, v).map_or_else(|| de(b, v), Ok).map(|(x, e)| {
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

/// An `Option<Cow<str>>` in the form serde certainly reads the same: `null`, or a string
/// without escapes or control characters that is valid UTF-8, borrowed. Anything else
/// (escapes, a raw control character, a number) is left to serde.
#[inline]
fn fast_str(b: &[u8], i: usize) -> Option<(Option<Cow<'_, str>>, usize)> {
    match *b.get(i)? {
        b'n' if b[i..].starts_with(b"null") => Some((None, i + 4)),
        b'"' => {
            let (end, escaped) = string_end(b, i)?;
            let raw = &b[i + 1..end - 1];
            if escaped || raw.iter().any(|&c| c < 0x20) {
                return None;
            }
            Some((Some(Cow::Borrowed(std::str::from_utf8(raw).ok()?)), end))
        }
        _ => None,
    }
}

/// `null` or an object whose known fields, named in order by `keys`, are all
/// `Option<u64>`; `build` makes the value from the counts read.
fn fast_counts<T, const N: usize>(
    b: &[u8],
    i: usize,
    depth: usize,
    keys: [&[u8]; N],
    build: impl FnOnce([Option<u64>; N]) -> T,
) -> Option<(Option<T>, usize)> {
    fast_option(b, i, || {
        let mut counts = [None; N];
        let known = |k: &[u8]| keys.iter().position(|&key| key == k);
        let end = fast_object(b, i, depth, known, |f, v| {
            let (x, end) = fast_u64(b, v)?;
            *counts.get_mut(f)? = x;
            Some(end)
        })?;
        Some((build(counts), end))
    })
}

fn fast_details(b: &[u8], i: usize, depth: usize) -> Option<(Option<Details>, usize)> {
    let keys: [&[u8]; 2] = [b"cached_tokens", b"reasoning_tokens"];
    fast_counts(b, i, depth, keys, |[cached_tokens, reasoning_tokens]| Details {
        cached_tokens,
        reasoning_tokens,
    })
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
    let keys: [&[u8]; 4] = [
        b"promptTokenCount",
        b"candidatesTokenCount",
        b"thoughtsTokenCount",
        b"cachedContentTokenCount",
    ];
    fast_counts(b, i, depth, keys, |[prompt, candidates, thoughts, cached]| {
        GeminiUsage {
            prompt,
            candidates,
            thoughts,
            cached,
        }
    })
}

fn fast_bedrock(b: &[u8], i: usize, depth: usize) -> Option<(Option<BedrockMetrics>, usize)> {
    let keys: [&[u8]; 4] = [
        b"inputTokenCount",
        b"outputTokenCount",
        b"cacheReadInputTokenCount",
        b"cacheWriteInputTokenCount",
    ];
    fast_counts(b, i, depth, keys, |[input, output, cache_read, cache_write]| {
        BedrockMetrics {
            input,
            output,
            cache_read,
            cache_write,
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::json::{parse_json_usage, parse_json_usage_serde, JsonOutcome};

    /// Every document the fixtures hold: whole bodies and each SSE event's data.
    fn fixture_documents() -> Vec<Vec<u8>> {
        let mut docs: Vec<Vec<u8>> = [
            include_str!("../../../tests/fixtures/openai_chat.json"),
            include_str!("../../../tests/fixtures/openai_responses.json"),
            include_str!("../../../tests/fixtures/openai_embeddings.json"),
            include_str!("../../../tests/fixtures/anthropic_message.json"),
            include_str!("../../../tests/fixtures/gemini_generate.json"),
            include_str!("../../../tests/fixtures/bedrock_converse.json"),
            r#"{"usage":null,"model":"m","response":null,"message":{"model":"x","usage":{"input_tokens":3}}}"#,
            r#"{"mod\u0065l":"escaped-key","usage":{"prompt_tokens":1}}"#,
            r#"{"model":"a","model":"b"}"#,
            r#"{"model":"q\"uote","modelVersion":"v\u00e9","usage":null}"#,
            "{\"model\":\"tab\there\",\"modelVersion\":\"é\"}",
            r#"{"model":5,"modelVersion":null}"#,
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
            include_str!("../../../tests/fixtures/openai_chat_stream.sse"),
            include_str!("../../../tests/fixtures/anthropic_stream.sse"),
            include_str!("../../../tests/fixtures/gemini_stream.sse"),
            include_str!("../../../tests/fixtures/openai_responses_stream.sse"),
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
        // 16-byte blocks, the 8-byte words, the 64-byte window and the memchr tail), among
        // bytes that are near misses for the word trick: high bytes, `"` +/- 1, `\\` +/- 1,
        // zero.
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
}
