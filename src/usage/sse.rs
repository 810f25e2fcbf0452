//! Incremental Server-Sent Events usage scanner. Pure: bytes in, [`Usage`] out.
//!
//! Chunks may split anywhere (mid-line, mid-UTF-8, between `\r` and `\n`). Only the
//! unfinished event's `data` is kept, capped; events that cannot hold usage or a model are
//! skipped without JSON parsing. Every event that can is merged field by field (later
//! non-null values win), which is what each provider's stream needs:
//! OpenAI's final usage chunk, the Responses API's `response.completed`, Anthropic's
//! `message_start` (input, cache) plus the last cumulative `message_delta` (output), and
//! Gemini's last `usageMetadata`.

use super::json::merge_json_usage;
use super::{ReadStatus, Usage, UsageReader};
use memchr::arch::all::packedpair::HeuristicFrequencyRank;
use memchr::memmem::{Finder, FinderBuilder};
use std::sync::LazyLock;

/// `data:` starts a data field's line.
const DATA_FIELD: &[u8] = b"data:";
/// The longest prefix before a data value: `data: `.
const DATA_PREFIX_MAX: usize = DATA_FIELD.len() + 1;

/// Scans an SSE body for token usage as chunks arrive.
#[derive(Debug)]
pub struct SseUsageParser {
    /// Unfinished line from the previous chunk.
    line: Vec<u8>,
    /// `data` of the event being read (lines joined with `\n`).
    data: Vec<u8>,
    has_data: bool,
    /// The current event's data passed the cap: it is skipped.
    event_over: bool,
    /// A `\r` ended the last chunk: a `\n` starting the next one belongs to it.
    after_cr: bool,
    cap: usize,
    usage: Usage,
    /// `over_limit`: some event was larger than the cap; `malformed`: some event that
    /// could hold usage was not valid JSON.
    status: ReadStatus,
    events: u64,
}

impl SseUsageParser {
    /// A parser that keeps at most `cap` bytes of one event.
    pub fn new(cap: usize) -> Self {
        SseUsageParser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event_over: false,
            after_cr: false,
            cap,
            usage: Usage::default(),
            status: ReadStatus::default(),
            events: 0,
        }
    }

    /// Events with data read so far (those over the cap not counted).
    pub fn events(&self) -> u64 {
        self.events
    }
}

impl UsageReader for SseUsageParser {
    fn feed(&mut self, mut chunk: &[u8]) {
        if chunk.is_empty() {
            return; // nothing to do, and `after_cr` must outlive it
        }
        if self.after_cr {
            self.after_cr = false;
            if let [b'\n', rest @ ..] = chunk {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            let (end, keys) = line_end(chunk);
            match end {
                None => {
                    self.push_partial(chunk);
                    return;
                }
                Some(i) => {
                    let is_cr = chunk[i] == b'\r';
                    if !is_cr
                        && self.line.is_empty()
                        && !self.has_data
                        && !self.event_over
                        && chunk.get(i + 1) == Some(&b'\n')
                    {
                        if let Some(value) = data_value(&chunk[..i]).filter(|v| v.len() <= self.cap) {
                            // The usual event, one `data:` line and the blank line after
                            // it, whole in this chunk: read in place, not copied first,
                            // and looked at for `"usage` only where the line's scan left
                            // one possible.
                            let value_at = i - value.len();
                            self.read_event(value, keys.in_value_at(value_at));
                            chunk = &chunk[i + 2..];
                            continue;
                        }
                    }
                    if self.line.is_empty() {
                        self.line_done_slice(&chunk[..i]);
                    } else {
                        self.push_partial(&chunk[..i]);
                        let line = std::mem::take(&mut self.line);
                        self.line_done_slice(&line);
                        self.line = line;
                        self.line.clear();
                    }
                    chunk = &chunk[i + 1..];
                    if is_cr {
                        match chunk.first() {
                            Some(b'\n') => chunk = &chunk[1..],
                            None => self.after_cr = true,
                            _ => {}
                        }
                    }
                }
            }
        }
    }

    /// End of stream: a last event without its blank line still counts.
    fn finish(&mut self) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done_slice(&line);
        }
        self.dispatch();
    }

    fn status(&self) -> ReadStatus {
        self.status
    }

    fn usage(&self) -> &Usage {
        &self.usage
    }
}

impl SseUsageParser {
    fn push_partial(&mut self, bytes: &[u8]) {
        // A line is only kept while it may become `data:`; cap its length. Past the cap
        // plus the longest field prefix (`data: `), a data line's value is over the cap
        // however the line was chunked, so this decides as `line_done_slice` would on the
        // whole line: a data line puts the event over the limit, any other line is dropped.
        if self.line.len() + bytes.len() > self.cap.saturating_add(DATA_PREFIX_MAX) {
            if self
                .line
                .iter()
                .chain(bytes)
                .take(DATA_FIELD.len())
                .eq(DATA_FIELD)
            {
                self.event_over = true;
            }
            self.line.clear();
            // Keep a marker byte so that the rest of this line is not mistaken for a new one.
            self.line.push(b'x');
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn line_done_slice(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        let Some(value) = data_value(line) else {
            return; // event:, id:, retry:, comments: no usage there
        };
        if self.event_over {
            return;
        }
        if self.has_data {
            self.data.push(b'\n');
        }
        if self.data.len() + value.len() > self.cap {
            self.event_over = true;
            self.data.clear();
            return;
        }
        self.data.extend_from_slice(value);
        self.has_data = true;
    }

    fn dispatch(&mut self) {
        if self.event_over {
            self.status.over_limit = true;
        } else if self.has_data {
            let data = std::mem::take(&mut self.data);
            self.read_event(&data, UsageKeys::From(0));
            self.data = data;
        }
        self.data.clear();
        self.has_data = false;
        self.event_over = false;
    }

    /// One event's data, whole, and where `"usage` keys may start in it.
    fn read_event(&mut self, d: &[u8], keys: UsageKeys) {
        self.events += 1;
        if d != b"[DONE]"
            && may_carry_usage_at(d, keys, self.usage.model.is_none())
            && !merge_json_usage(&mut self.usage, d)
        {
            self.status.malformed = true;
        }
    }
}

/// Where `"usage` keys may start in a line: only where a `"u` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UsageKeys {
    /// The line holds no `"u`.
    None,
    /// Its only `"u` is at this index.
    One(usize),
    /// None starts before this index.
    From(usize),
}

impl UsageKeys {
    /// The same for the part of the line from `at` on (a `data:` line's value).
    fn in_value_at(self, at: usize) -> UsageKeys {
        match self {
            UsageKeys::None => UsageKeys::None,
            UsageKeys::One(q) if q >= at => UsageKeys::One(q - at),
            UsageKeys::One(q) | UsageKeys::From(q) => UsageKeys::From(q.saturating_sub(at)),
        }
    }
}

/// The index of the first `\n` or `\r` in `chunk` (where its first line ends), and where
/// `"usage` keys may start in that line. Where the CPU has AVX2, both come from one pass
/// that looks for `"u` (where every `"usage` starts) beside the line end, in place of a
/// `memchr2` for the end and a substring search over the same bytes for `"usage`.
/// Elsewhere, and for chunks shorter than one block: `memchr2`, and anywhere.
#[inline]
fn line_end(chunk: &[u8]) -> (Option<usize>, UsageKeys) {
    #[cfg(target_arch = "x86_64")]
    if chunk.len() >= 32 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, checked just above.
        return unsafe { avx2_line_end(chunk) };
    }
    (memchr::memchr2(b'\n', b'\r', chunk), UsageKeys::From(0))
}

/// [`line_end`] for a chunk of at least 32 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2_line_end(chunk: &[u8]) -> (Option<usize>, UsageKeys) {
    let len = chunk.len();
    let mut scan = Avx2LineScan {
        keys: UsageKeys::None,
        quote_before: 0,
    };
    let mut i = 0;
    while i + 32 <= len {
        if let Some(end) = scan.block(chunk, i, i) {
            return (Some(end), scan.keys);
        }
        i += 32;
    }
    // The last bytes: the last 32, those already seen shifted out (so the chunk's last
    // line, usually a whole event, is read to its end here too).
    if i < len {
        if let Some(end) = scan.block(chunk, i, len - 32) {
            return (Some(end), scan.keys);
        }
    }
    (None, scan.keys)
}

/// The state of [`avx2_line_end`] between 32-byte blocks.
#[cfg(target_arch = "x86_64")]
struct Avx2LineScan {
    keys: UsageKeys,
    /// 1 when the byte before the block is a `"` (whose `u` would be the block's first).
    quote_before: u64,
}

#[cfg(target_arch = "x86_64")]
impl Avx2LineScan {
    /// The bytes from `i` to `at + 32` (`at <= i`, `at + 32 <= chunk.len()`): the line's
    /// end if it is there; notes the `"u`s before it.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn block(&mut self, chunk: &[u8], i: usize, at: usize) -> Option<usize> {
        use std::arch::x86_64::{
            __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_set1_epi8,
        };
        assert!(at <= i && at + 32 <= chunk.len());
        // SAFETY: `at + 32 <= chunk.len()` (asserted): the load reads `chunk[at..at + 32]`,
        // with no alignment requirement.
        let v = unsafe { _mm256_loadu_si256(chunk.as_ptr().add(at).cast::<__m256i>()) };
        let bits = |c: u8| {
            (_mm256_movemask_epi8(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(c as i8))) as u32) >> (i - at)
        };
        // Bit k: the byte at `i + k`.
        let newlines = bits(b'\n') | bits(b'\r');
        let quotes = bits(b'"');
        // Bit j: a `"u` starting at `i - 1 + j`.
        let pairs = ((u64::from(quotes) << 1) | self.quote_before) & u64::from(bits(b'u'));
        self.quote_before = u64::from(quotes >> 31);
        if newlines == 0 && pairs == 0 {
            return None;
        }
        let end = (newlines != 0).then(|| i + newlines.trailing_zeros() as usize);
        // The pairs that start before the line's end.
        let in_line = end.map_or(pairs, |e| pairs & ((1u64 << (e - i + 1)) - 1));
        if in_line != 0 {
            let q = i + in_line.trailing_zeros() as usize - 1;
            self.keys = match self.keys {
                UsageKeys::None if in_line.count_ones() == 1 => UsageKeys::One(q),
                UsageKeys::None => UsageKeys::From(q),
                UsageKeys::One(first) | UsageKeys::From(first) => UsageKeys::From(first),
            };
        }
        end
    }
}

/// The value of a `data` field's line (`data: x`, `data:x`, `data`); `None` for any other
/// line (`event:`, `id:`, comments, a field named e.g. `database`).
#[inline]
fn data_value(line: &[u8]) -> Option<&[u8]> {
    match line.strip_prefix(b"data")? {
        [] => Some(&[][..]),
        [b':', b' ', v @ ..] => Some(v),
        [b':', v @ ..] => Some(v),
        _ => None,
    }
}

/// Cheap pre-filter: only events that can change the usage (or name a model, until one is
/// known) are parsed. An event can change the usage only if a `usage` or `usageMetadata`
/// key is followed by an object: OpenAI sends `"usage":null` in every chunk of a stream
/// with `include_usage`, and those chunks are skipped without parsing. A false positive
/// only costs a parse; there are no false negatives, because a usage object always has its
/// key followed by `{`. Bedrock's `amazon-bedrock-invocationMetrics`, which only Bedrock's
/// event streams carry, is looked for by [`may_carry_bedrock_usage`] (one more pass over
/// every event: 5.6k of a 24-event SSE stream's instructions when SSE looked for it too).
#[inline]
pub(crate) fn may_carry_usage(data: &[u8], want_model: bool) -> bool {
    may_carry_usage_at(data, UsageKeys::From(0), want_model)
}

/// [`may_carry_usage`] for data whose `"usage` keys can only start where `keys` says.
#[inline]
fn may_carry_usage_at(data: &[u8], keys: UsageKeys, want_model: bool) -> bool {
    // The searchers are built once: building one costs more than searching a chunk
    // (callgrind: 35k of the 72k instructions a 24-event stream cost were construction).
    const USAGE_KEY: &[u8] = b"\"usage";
    static USAGE: LazyLock<Finder<'static>> = LazyLock::new(|| json_finder(USAGE_KEY));
    static MODEL: LazyLock<Finder<'static>> = LazyLock::new(|| json_finder(b"odel"));
    let usage = match keys {
        UsageKeys::None => false,
        // The line's only `"u`: a usage key there or nowhere.
        UsageKeys::One(q) => data
            .get(q..)
            .and_then(|rest| rest.strip_prefix(USAGE_KEY))
            .is_some_and(usage_key_with_object),
        UsageKeys::From(mut from) => loop {
            // `find` in a loop rather than `find_iter`: the iterator copies the searcher
            // each time it is made, a fifth of this function's cost on a 250-byte event. A
            // key right at `from` (where the line's scan saw a `"u`) is taken without a
            // search.
            let Some(rest) = data.get(from..).filter(|r| r.len() >= USAGE_KEY.len()) else {
                break false;
            };
            let at = if rest.starts_with(USAGE_KEY) {
                0
            } else {
                match USAGE.find(rest) {
                    Some(at) => at,
                    None => break false,
                }
            };
            from += at + USAGE_KEY.len();
            if usage_key_with_object(&data[from..]) {
                break true;
            }
        },
    };
    usage || (want_model && MODEL.find(data).is_some())
}

/// A substring searcher tuned for JSON. memchr's SIMD prefilter looks for the needle's two
/// rarest bytes by a frequency table drawn from general text, where `"` counts as rare; in
/// JSON it is the commonest byte, so `"usage` was searched for as `"` and `g`, with a false
/// candidate at nearly every key. Here `"` and JSON's other punctuation rank as common and
/// letters by English frequency: `"usage` is searched for as `g` and `u`.
fn json_finder(needle: &'static [u8]) -> Finder<'static> {
    struct JsonRank;
    impl HeuristicFrequencyRank for JsonRank {
        fn rank(&self, byte: u8) -> u8 {
            /// Lowercase letters, commonest first.
            const LETTERS: &[u8; 26] = b"etaoinshrdlcumwfgypbvkjxqz";
            match byte {
                b'"' | b':' | b',' | b'{' | b'}' | b'[' | b']' | b' ' | b'0'..=b'9' => 255,
                b'a'..=b'z' => {
                    let order = LETTERS.iter().position(|&c| c == byte).unwrap_or(25) as u8;
                    250 - 5 * order
                }
                b'A'..=b'Z' => 100,
                _ => 50,
            }
        }
    }
    FinderBuilder::new().build_forward_with_ranker(JsonRank, needle)
}

/// [`may_carry_usage`], or Bedrock's `invocationMetrics`: for Bedrock's event streams.
#[inline]
pub(crate) fn may_carry_bedrock_usage(data: &[u8], want_model: bool) -> bool {
    static METRICS: LazyLock<Finder<'static>> = LazyLock::new(|| json_finder(b"Metrics"));
    may_carry_usage(data, want_model) || METRICS.find(data).is_some()
}

/// `rest` follows a `"usage`: it completes a `"usage"` or `"usageMetadata"` key that is
/// followed (after optional whitespace, `:`, whitespace) by `{`.
fn usage_key_with_object(rest: &[u8]) -> bool {
    let Some(after_key) = rest
        .strip_prefix(b"\"")
        .or_else(|| rest.strip_prefix(b"Metadata\""))
    else {
        return false;
    };
    let mut rest = after_key.iter().skip_while(|b| b.is_ascii_whitespace());
    rest.next() == Some(&b':') && rest.find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::testing::{expect, read, same_at_every_split};

    /// Usage and status after `chunks` and the end of the stream.
    fn parse_chunks(chunks: &[&[u8]]) -> (Usage, ReadStatus) {
        let p = read(SseUsageParser::new(2 * 1024 * 1024), chunks);
        (p.usage().clone(), p.status())
    }

    fn every_split_gives_the_same(body: &[u8]) -> Usage {
        same_at_every_split(body, parse_chunks).0
    }

    // Counts below: input, output, cache read, cache write, reasoning.

    #[test]
    fn anthropic_stream_input_from_start_output_from_last_delta() {
        assert_eq!(
            every_split_gives_the_same(include_bytes!("../../tests/fixtures/anthropic_stream.sse")),
            expect(
                Some("claude-sonnet-4-5-20250929"),
                [Some(472), Some(89), Some(2048), Some(12), None]
            )
        );
    }

    #[test]
    fn openai_chat_stream_with_crlf_and_include_usage() {
        assert_eq!(
            every_split_gives_the_same(include_bytes!("../../tests/fixtures/openai_chat_stream.sse")),
            expect(
                Some("gpt-4o-mini-2024-07-18"),
                [Some(19), Some(10), Some(0), None, Some(0)]
            )
        );
    }

    #[test]
    fn openai_chat_stream_without_usage_is_absent_not_zero() {
        assert_eq!(
            every_split_gives_the_same(include_bytes!(
                "../../tests/fixtures/openai_chat_stream_no_usage.sse"
            )),
            expect(Some("gpt-4o-mini-2024-07-18"), [None; 5])
        );
    }

    #[test]
    fn responses_api_stream_reads_response_completed() {
        assert_eq!(
            every_split_gives_the_same(include_bytes!("../../tests/fixtures/openai_responses_stream.sse")),
            expect(
                Some("gpt-4.1-2025-04-14"),
                [Some(37), Some(11), Some(0), None, Some(0)]
            )
        );
    }

    #[test]
    fn gemini_stream_last_usage_metadata_wins() {
        assert_eq!(
            every_split_gives_the_same(include_bytes!("../../tests/fixtures/gemini_stream.sse")),
            expect(
                Some("gemini-2.5-flash"),
                [Some(10), Some(12), None, None, Some(36)]
            )
        );
    }

    #[test]
    fn last_event_without_blank_line_counts_and_bare_cr_ends_lines() {
        let (u, ..) = parse_chunks(&[b"data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}"]);
        assert_eq!((u.input_tokens, u.output_tokens), (Some(3), Some(4)));
        let (u, ..) = parse_chunks(&[b"data:{\"usage\":{\"input_tokens\":5}}\r\r"]);
        assert_eq!(u.input_tokens, Some(5));
    }

    #[test]
    fn multi_line_data_is_joined() {
        let (u, ..) = parse_chunks(&[b"data: {\"usage\":\ndata: {\"prompt_tokens\":7}}\n\n"]);
        assert_eq!(u.input_tokens, Some(7));
    }

    #[test]
    fn an_event_over_the_cap_is_flagged_and_memory_stays_bounded() {
        let mut p = SseUsageParser::new(1024);
        p.feed(b"data: {\"usage\":{\"prompt_tokens\":1},\"pad\":\"");
        for _ in 0..1000 {
            p.feed(&[b'a'; 1000]);
        }
        assert!(p.line.len() <= 1024 + DATA_PREFIX_MAX && p.data.len() <= 1024);
        p.feed(b"\"}\n\ndata: {\"x\":1}\n\n");
        p.finish();
        assert!(p.status().over_limit);
        assert_eq!(p.usage().input_tokens, None);
        assert_eq!(p.events(), 1);
    }

    /// Found by `fuzz/fuzz_targets/sse.rs`: a long non-data line arriving in pieces used to
    /// flag its event as over the limit, and a data line just under the cap too (its
    /// `data: ` prefix was counted), while the same bytes in one chunk did not.
    #[test]
    fn over_limit_does_not_depend_on_where_long_lines_are_split() {
        let cap = 64;
        let long_comment = format!(": {}\n", "c".repeat(150));
        let value = format!(
            "{{\"usage\":{{\"input_tokens\":1}},\"p\":\"{}\"}}",
            "p".repeat(29)
        );
        assert_eq!(value.len(), cap);
        for (body, over, input) in [
            (
                format!("{long_comment}data: {{\"usage\":{{\"input_tokens\":5}}}}\n\n"),
                false,
                Some(5),
            ),
            (format!("data: {value}\n\n"), false, Some(1)),
            (format!("data: {value}x\n\n"), true, None),
        ] {
            let (usage, status, _) = same_at_every_split(body.as_bytes(), |chunks| {
                let p = read(SseUsageParser::new(cap), chunks);
                (p.usage().clone(), p.status(), p.events())
            });
            assert_eq!((status.over_limit, usage.input_tokens), (over, input));
        }
    }

    /// Found by `fuzz/fuzz_targets/sse.rs`: an empty chunk between the `\r` and the `\n`
    /// of a CRLF used to turn the `\n` into a blank line, ending the event early.
    #[test]
    fn an_empty_chunk_between_cr_and_lf_changes_nothing() {
        let body = b"data: {\"usage\":\r\ndata: {\"prompt_tokens\":7}}\r\n\r\n";
        let whole = parse_chunks(&[body]);
        assert_eq!((whole.0.input_tokens, whole.1), (Some(7), ReadStatus::default()));
        let cr = body.iter().position(|&b| b == b'\r').unwrap() + 1;
        assert_eq!(parse_chunks(&[&body[..cr], b"", &body[cr..]]), whole);
        let bytes: Vec<&[u8]> = body.iter().flat_map(|b| [std::slice::from_ref(b), b""]).collect();
        assert_eq!(parse_chunks(&bytes), whole);
    }

    #[test]
    fn the_prefilter_skips_null_usage_but_never_a_usage_object() {
        assert!(!may_carry_usage(br#"{"choices":[],"usage":null}"#, false));
        assert!(!may_carry_usage(br#"{"type":"x","note":"usage"}"#, false));
        assert!(may_carry_usage(br#"{"usage":{"prompt_tokens":1}}"#, false));
        assert!(may_carry_usage(
            br#"{"usage" :
 { "prompt_tokens":1}}"#,
            false
        ));
        assert!(may_carry_usage(
            br#"{"a":{"usage":null},"response":{"usage":{"input_tokens":2}}}"#,
            false
        ));
        assert!(may_carry_usage(
            br#"{"usageMetadata":{"promptTokenCount":1}}"#,
            false
        ));
        let bedrock = br#"{"amazon-bedrock-invocationMetrics":{"inputTokenCount":1}}"#;
        assert!(!may_carry_usage(bedrock, false), "no SSE stream carries it");
        assert!(may_carry_bedrock_usage(bedrock, false));
        assert!(may_carry_bedrock_usage(br#"{"usage":{"inputTokens":1}}"#, false));
        assert!(!may_carry_bedrock_usage(br#"{"usage":null}"#, false));
        assert!(may_carry_usage(br#"{"model":"m","usage":null}"#, true));
        assert!(!may_carry_usage(br#"{"model":"m","usage":null}"#, false));
    }

    #[test]
    fn the_line_scan_finds_the_end_and_skips_no_usage_key() {
        // The bytes that matter to the scan among filler, up to 160 bytes long (across
        // the 32-byte steps and the tail), from a fixed-seed generator; line ends are rare
        // enough that most lines run over several steps.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..160usize {
            for _ in 0..400 {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        match seed >> 56 {
                            0..2 => b'\n',
                            2..4 => b'\r',
                            8..40 => b'"',
                            40..70 => b'u',
                            _ => b'a',
                        }
                    })
                    .collect();
                let (end, keys) = line_end(&b);
                assert_eq!(end, memchr::memchr2(b'\n', b'\r', &b), "{b:?}");
                let line = &b[..end.unwrap_or(len)];
                let quote_u: Vec<usize> = line
                    .windows(2)
                    .enumerate()
                    .filter(|(_, w)| w == b"\"u")
                    .map(|(k, _)| k)
                    .collect();
                let from = match keys {
                    UsageKeys::None => {
                        assert!(quote_u.is_empty(), "{b:?}");
                        continue;
                    }
                    UsageKeys::One(q) => {
                        assert_eq!(quote_u, [q], "{b:?}");
                        continue;
                    }
                    UsageKeys::From(from) => from,
                };
                assert!(from <= line.len(), "{b:?}");
                // No `"u` starts before `from`.
                let before = &line[..(from + 1).min(line.len())];
                assert!(
                    !before.windows(2).any(|w| w == b"\"u"),
                    "a `\"u` before {from} in {b:?}"
                );
            }
        }
    }

    #[test]
    fn a_usage_object_is_read_wherever_it_starts_in_the_line() {
        // The key at every offset across two 32-byte steps, first in the line or after a
        // `"u` that is not it, with `"usage":null` elsewhere in the same event.
        for (pad, first) in (0..72).flat_map(|pad| [(pad, "url"), (pad, "id")]) {
            let body = format!(
                "data: {{\"{first}\":\"{}\",\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":2}},\"x\":{{\"usage\":null}}}}\n\n",
                "p".repeat(pad)
            );
            let (u, status) = parse_chunks(&[body.as_bytes()]);
            assert_eq!(
                (u.input_tokens, u.output_tokens),
                (Some(7), Some(2)),
                "pad {pad} {first}"
            );
            assert!(!status.malformed, "pad {pad} {first}");
            let null = body.replace("{\"prompt_tokens\":7,\"completion_tokens\":2}", "null");
            let (u, _) = parse_chunks(&[null.as_bytes()]);
            assert!(!u.has_tokens(), "pad {pad} {first}");
        }
    }

    #[test]
    fn garbage_never_panics_and_is_flagged() {
        let (u, status) = parse_chunks(&[b"data: {\"usage\": {nope}}\n\n"]);
        assert!(status.malformed && !status.over_limit && !u.has_tokens());
        for junk in [
            &b"\xff\xfe\r\n\r\ndata"[..],
            b"data",
            b":\n\n",
            b"\r",
            b"\n\n\n",
            b"data:\xc3",
        ] {
            let _ = parse_chunks(&[junk]);
        }
    }
}
