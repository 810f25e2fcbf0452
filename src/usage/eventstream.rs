//! Incremental decoder for AWS `application/vnd.amazon.eventstream` (Bedrock
//! ConverseStream and InvokeModelWithResponseStream). Pure.
//!
//! Each message is `total_len u32 | headers_len u32 | prelude_crc u32 | headers | payload |
//! message_crc u32`, big-endian, CRC-32 (IEEE). Both CRCs are checked; a bad frame stops the
//! scan (framing is lost) and marks the body malformed. Usage comes from the `metadata`
//! event (Converse) or from `chunk` events whose `bytes` field is base64 of an Anthropic
//! stream event (InvokeModel), the last one carrying `amazon-bedrock-invocationMetrics`.

use super::json::{merge_json_usage, quote_or_backslash};
use super::sse::may_carry_bedrock_usage;
use super::{ReadStatus, Usage, UsageReader};
use base64::Engine;
use serde::Deserialize;
use std::borrow::Cow;

const PRELUDE_LEN: usize = 12;
const MIN_MESSAGE_LEN: usize = PRELUDE_LEN + 4;

/// Scans an event-stream body for usage.
#[derive(Debug)]
pub struct EventStreamParser {
    buf: Vec<u8>,
    /// Bytes still to skip of a message larger than the cap.
    skip: usize,
    cap: usize,
    usage: Usage,
    /// `malformed`: a frame failed its length or CRC checks, or a payload was not JSON;
    /// `over_limit`: some message was larger than the cap.
    status: ReadStatus,
    messages: u64,
    exception: bool,
    /// The decoded `bytes` of the last `chunk` event, kept for its allocation.
    decoded: Vec<u8>,
}

impl EventStreamParser {
    /// A parser keeping at most `cap` bytes of one message.
    pub fn new(cap: usize) -> Self {
        EventStreamParser {
            buf: Vec::new(),
            skip: 0,
            cap,
            usage: Usage::default(),
            status: ReadStatus::default(),
            messages: 0,
            exception: false,
            decoded: Vec::new(),
        }
    }

    /// Messages decoded.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// An `exception` or `error` message was seen.
    pub fn exception(&self) -> bool {
        self.exception
    }
}

impl UsageReader for EventStreamParser {
    fn feed(&mut self, mut chunk: &[u8]) {
        if self.status.malformed {
            return;
        }
        if self.skip > 0 {
            let n = self.skip.min(chunk.len());
            self.skip -= n;
            chunk = &chunk[n..];
        }
        // Fast path: whole messages straight from the chunk, no copy.
        if self.buf.is_empty() {
            while let Some(used) = self.try_message(chunk) {
                chunk = &chunk[used..];
                if self.status.malformed || self.skip > 0 {
                    let n = self.skip.min(chunk.len());
                    self.skip -= n;
                    chunk = &chunk[n..];
                }
            }
            if self.status.malformed {
                return;
            }
            self.buf.extend_from_slice(chunk);
            return;
        }
        self.buf.extend_from_slice(chunk);
        let mut off = 0;
        let buf = std::mem::take(&mut self.buf);
        while let Some(used) = self.try_message(&buf[off..]) {
            off += used;
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - off);
                self.skip -= n;
                off += n;
            }
            if self.status.malformed {
                return;
            }
        }
        self.buf = buf;
        self.buf.drain(..off);
    }

    /// A message is read as soon as it is whole; a cut-off last one is not counted.
    fn finish(&mut self) {}

    fn status(&self) -> ReadStatus {
        self.status
    }

    fn usage(&self) -> &Usage {
        &self.usage
    }
}

impl EventStreamParser {
    /// Decode one message from the front of `b`; `None` when more bytes are needed.
    /// Returns the bytes consumed (for an oversized message: what was there of it).
    fn try_message(&mut self, b: &[u8]) -> Option<usize> {
        if self.status.malformed || b.len() < PRELUDE_LEN {
            return None;
        }
        let total = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let headers_len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
        let prelude_crc = u32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if crc32fast::hash(&b[..8]) != prelude_crc
            || total < MIN_MESSAGE_LEN
            || headers_len > total - MIN_MESSAGE_LEN
        {
            self.status.malformed = true;
            return None;
        }
        if total > self.cap {
            self.status.over_limit = true;
            let have = b.len().min(total);
            self.skip = total - have;
            return Some(have);
        }
        if b.len() < total {
            return None;
        }
        let msg = &b[..total];
        let crc = u32::from_be_bytes([msg[total - 4], msg[total - 3], msg[total - 2], msg[total - 1]]);
        if crc32fast::hash(&msg[..total - 4]) != crc {
            self.status.malformed = true;
            return None;
        }
        let headers = &msg[PRELUDE_LEN..PRELUDE_LEN + headers_len];
        let payload = &msg[PRELUDE_LEN + headers_len..total - 4];
        self.messages += 1;
        self.message(headers, payload);
        Some(total)
    }

    fn message(&mut self, headers: &[u8], payload: &[u8]) {
        let Some(h) = parse_headers(headers) else {
            self.status.malformed = true;
            return;
        };
        match h.message_type {
            Some(b"exception") | Some(b"error") => {
                self.exception = true;
                return;
            }
            _ => {}
        }
        if h.event_type == Some(b"chunk") {
            // InvokeModelWithResponseStream: {"bytes":"<base64 of the model's own event>"}.
            let b64 = match chunk_bytes(payload) {
                Some(b64) => Cow::Borrowed(b64),
                None => match chunk_bytes_serde(payload) {
                    Ok(Some(b64)) => b64,
                    Ok(None) => return,
                    Err(()) => {
                        self.status.malformed = true;
                        return;
                    }
                },
            };
            // Decoded into one buffer for the whole stream, not a new one per event.
            self.decoded.clear();
            if base64::engine::general_purpose::STANDARD
                .decode_vec(&b64[..], &mut self.decoded)
                .is_err()
            {
                self.status.malformed = true;
                return;
            }
            let inner = &self.decoded[..];
            if may_carry_bedrock_usage(inner, self.usage.model.is_none())
                && !merge_json_usage(&mut self.usage, inner)
            {
                self.status.malformed = true;
            }
            return;
        }
        if may_carry_bedrock_usage(payload, false) && !merge_json_usage(&mut self.usage, payload) {
            self.status.malformed = true;
        }
    }
}

/// The base64 of a `chunk` payload in the one layout Bedrock writes, `{"bytes":"<base64>"}`
/// or `{"bytes":"<base64>","p":"<letters and digits>"}`, read without serde (serde cost
/// more than the rest of an event's read). `None` for anything else: another order,
/// whitespace, an escape, other fields; [`chunk_bytes_serde`] reads those.
fn chunk_bytes(payload: &[u8]) -> Option<&[u8]> {
    let rest = payload.strip_prefix(br#"{"bytes":""#)?;
    let end = quote_or_backslash(rest, 0)?;
    let (b64, tail) = (&rest[..end], &rest[end..]);
    if tail == br#""}"# {
        return Some(b64);
    }
    let padding = tail.strip_prefix(br#"","p":""#)?.strip_suffix(br#""}"#)?;
    padding.iter().all(u8::is_ascii_alphanumeric).then_some(b64)
}

/// Any JSON `chunk` payload: its `bytes`, `None` without one, `Err` when it is not a JSON
/// object whose `bytes` is a string.
fn chunk_bytes_serde(payload: &[u8]) -> Result<Option<Cow<'_, [u8]>>, ()> {
    #[derive(Deserialize)]
    struct Chunk<'a> {
        // `Cow`: borrowed as a rule, owned should an encoder escape a `/` as `\/`.
        #[serde(borrow)]
        bytes: Option<Cow<'a, str>>,
    }
    let chunk = serde_json::from_slice::<Chunk>(payload).map_err(|_| ())?;
    Ok(chunk.bytes.map(|b| match b {
        Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
        Cow::Owned(s) => Cow::Owned(s.into_bytes()),
    }))
}

struct Headers<'a> {
    event_type: Option<&'a [u8]>,
    message_type: Option<&'a [u8]>,
}

/// Walk the typed headers; `None` when they are malformed.
fn parse_headers(mut b: &[u8]) -> Option<Headers<'_>> {
    let mut h = Headers {
        event_type: None,
        message_type: None,
    };
    while !b.is_empty() {
        let name_len = *b.first()? as usize;
        let name = b.get(1..1 + name_len)?;
        let ty = *b.get(1 + name_len)?;
        b = &b[2 + name_len..];
        let value_len = match ty {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => {
                let l = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
                b = &b[2..];
                l
            }
            _ => return None,
        };
        let value = b.get(..value_len)?;
        b = &b[value_len..];
        if ty == 7 {
            match name {
                b":event-type" => h.event_type = Some(value),
                b":message-type" => h.message_type = Some(value),
                _ => {}
            }
        }
    }
    Some(h)
}

/// Encode one message with string headers (tests, benches and mock upstreams).
#[cfg(any(test, feature = "test-support"))]
pub fn encode_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut hb = Vec::new();
    for (k, v) in headers {
        hb.push(k.len() as u8);
        hb.extend_from_slice(k.as_bytes());
        hb.push(7);
        hb.extend_from_slice(&(v.len() as u16).to_be_bytes());
        hb.extend_from_slice(v.as_bytes());
    }
    let total = PRELUDE_LEN + hb.len() + payload.len() + 4;
    let mut m = Vec::with_capacity(total);
    m.extend_from_slice(&(total as u32).to_be_bytes());
    m.extend_from_slice(&(hb.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&m[..8]);
    m.extend_from_slice(&prelude_crc.to_be_bytes());
    m.extend_from_slice(&hb);
    m.extend_from_slice(payload);
    let crc = crc32fast::hash(&m);
    m.extend_from_slice(&crc.to_be_bytes());
    m
}

/// An event message as Bedrock sends it.
#[cfg(any(test, feature = "test-support"))]
pub fn encode_event(event_type: &str, payload: &str) -> Vec<u8> {
    encode_message(
        &[
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.as_bytes(),
    )
}

/// A realistic ConverseStream body (tests and benches).
#[cfg(any(test, feature = "test-support"))]
pub fn sample_converse_stream() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend(encode_event("messageStart", r#"{"p":"abcd","role":"assistant"}"#));
    for text in ["Once", " upon", " a time"] {
        body.extend(encode_event(
            "contentBlockDelta",
            &format!(r#"{{"contentBlockIndex":0,"delta":{{"text":"{text}"}},"p":"abcdefgh"}}"#),
        ));
    }
    body.extend(encode_event(
        "contentBlockStop",
        r#"{"contentBlockIndex":0,"p":"ab"}"#,
    ));
    body.extend(encode_event(
        "messageStop",
        r#"{"p":"abcdef","stopReason":"end_turn"}"#,
    ));
    body.extend(encode_event(
        "metadata",
        r#"{"metrics":{"latencyMs":1180},"p":"abc","usage":{"inputTokens":25,"outputTokens":48,"totalTokens":73,"cacheReadInputTokens":3}}"#,
    ));
    body
}

/// A realistic InvokeModelWithResponseStream body for an Anthropic model.
#[cfg(any(test, feature = "test-support"))]
pub fn sample_invoke_stream() -> Vec<u8> {
    let events = [
        r#"{"type":"message_start","message":{"id":"msg_bdrk_01","type":"message","role":"assistant","model":"claude-3-5-haiku-20241022","content":[],"usage":{"input_tokens":14,"output_tokens":1}}}"#,
        r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
        r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}"#,
        r#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":14,"outputTokenCount":9,"invocationLatency":512,"firstByteLatency":301}}"#,
    ];
    let mut body = Vec::new();
    for e in events {
        let b64 = base64::engine::general_purpose::STANDARD.encode(e);
        body.extend(encode_event(
            "chunk",
            &format!(r#"{{"bytes":"{b64}","p":"abc"}}"#),
        ));
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::usage::testing::{read, same_at_every_split};

    /// Usage, status and messages decoded after `chunks`.
    fn parse(chunks: &[&[u8]]) -> (Usage, ReadStatus, u64) {
        let p = read(EventStreamParser::new(1 << 20), chunks);
        (p.usage().clone(), p.status(), p.messages())
    }

    #[test]
    fn a_chunk_with_an_escaped_slash_in_its_base64_is_read() {
        // JSON allows `\/` for `/`; base64 has `/` in its alphabet.
        let (inner, b64) = (0..1000)
            .map(|n| {
                // `?` (0x3f) at a byte offset of 2 mod 3 encodes as `/`.
                let inner = format!(r#"{{"type":"message_start","message":{{"model":"m???{n}","usage":{{"input_tokens":{n}}}}}}}"#);
                let b64 = base64::engine::general_purpose::STANDARD.encode(&inner);
                (n, b64)
            })
            .find(|(_, b64)| b64.contains('/'))
            .expect("some encoding holds a slash");
        let payload = format!(r#"{{"bytes":"{}"}}"#, b64.replace('/', "\\/"));
        let body = encode_event("chunk", &payload);
        let (u, status, messages) = parse(&[&body]);
        assert_eq!(
            (u.input_tokens, status, messages),
            (Some(inner), ReadStatus::default(), 1)
        );
    }

    #[test]
    fn the_envelope_fast_path_agrees_with_serde_or_leaves_the_payload_to_it() {
        let payloads: &[&[u8]] = &[
            br#"{"bytes":"eyJhIjoxfQ=="}"#,
            br#"{"bytes":"eyJhIjoxfQ==","p":"abcXYZ019"}"#,
            br#"{"bytes":""}"#,
            br#"{"bytes":"eyJhIjoxfQ==","p":""}"#,
            // Left to serde: escapes, order, whitespace, other fields, odd padding.
            br#"{"bytes":"ab\/c"}"#,
            br#"{"p":"abc","bytes":"eyJhIjoxfQ=="}"#,
            br#"{ "bytes":"eyJhIjoxfQ=="}"#,
            br#"{"bytes":"eyJhIjoxfQ==" }"#,
            br#"{"bytes":"eyJhIjoxfQ==","p":"a\"b"}"#,
            br#"{"bytes":"eyJhIjoxfQ==","p":"a b"}"#,
            br#"{"bytes":"eyJhIjoxfQ==","q":"abc"}"#,
            br#"{"bytes":"eyJhIjoxfQ==","p":"abc"}x"#,
            // Not JSON, or no usable `bytes`.
            br#"{"bytes":"eyJhIjoxfQ==""#,
            br#"{"bytes":"eyJhIjoxfQ==","p":"abc""#,
            br#"{"bytes":"eyJhIjoxfQ==}"#,
            br#"{"bytes":1}"#,
            br#"{"other":"x"}"#,
            b"[]",
            b"",
        ];
        let mut fast = 0;
        for p in payloads {
            let slow = chunk_bytes_serde(p);
            if let Some(b64) = chunk_bytes(p) {
                fast += 1;
                assert_eq!(
                    slow,
                    Ok(Some(Cow::Borrowed(b64))),
                    "{}",
                    String::from_utf8_lossy(p)
                );
            }
        }
        assert_eq!(fast, 4, "the layouts Bedrock writes take the fast path");
        let escaped = chunk_bytes_serde(br#"{"bytes":"ab\/c"}"#);
        assert_eq!(escaped, Ok(Some(Cow::Owned(b"ab/c".to_vec()))));
        assert_eq!(chunk_bytes_serde(br#"{"other":"x"}"#), Ok(None));
        assert_eq!(chunk_bytes_serde(br#"{"bytes":1}"#), Err(()));
    }

    #[test]
    fn converse_stream_metadata_usage_at_every_split() {
        let (u, status, n) = same_at_every_split(&sample_converse_stream(), parse);
        assert_eq!(status, ReadStatus::default());
        assert_eq!(n, 7);
        assert_eq!(
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens),
            (Some(25), Some(48), Some(3))
        );
    }

    #[test]
    fn invoke_model_stream_with_anthropic_chunks() {
        let (u, status, _) = same_at_every_split(&sample_invoke_stream(), parse);
        assert!(!status.malformed);
        assert_eq!((u.input_tokens, u.output_tokens), (Some(14), Some(9)));
        assert_eq!(u.model.as_deref(), Some("claude-3-5-haiku-20241022"));
    }

    #[test]
    fn a_corrupt_crc_stops_the_scan() {
        let mut body = sample_converse_stream();
        let last = body.len() - 1;
        body[last] ^= 0xff; // message CRC of the metadata event
        let (u, status, _) = parse(&[&body]);
        assert!(status.malformed);
        assert_eq!(u.input_tokens, None, "a frame that fails its CRC is not believed");
        let mut body = sample_converse_stream();
        body[9] ^= 1; // prelude CRC of the first message
        assert!(parse(&[&body]).1.malformed);
    }

    #[test]
    fn oversized_messages_are_skipped_by_length() {
        let big = format!(
            r#"{{"contentBlockIndex":0,"delta":{{"text":"{}"}}}}"#,
            "x".repeat(5000)
        );
        let mut body = encode_event("contentBlockDelta", &big);
        body.extend(encode_event(
            "metadata",
            r#"{"usage":{"inputTokens":1,"outputTokens":2}}"#,
        ));
        let chunks: Vec<&[u8]> = body.chunks(100).collect();
        let p = read(EventStreamParser::new(1024), &chunks);
        assert!(p.status().over_limit && !p.status().malformed);
        assert!(p.buf.len() <= 1024);
        assert_eq!(p.usage().output_tokens, Some(2));
    }

    #[test]
    fn exceptions_and_garbage() {
        let body = encode_message(
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
            ],
            br#"{"message":"slow down"}"#,
        );
        let p = read(EventStreamParser::new(1 << 20), &[&body]);
        assert!(p.exception() && !p.status().malformed);
        for junk in [
            &b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00"[..],
            b"garbage that is long enough",
            &[0xff; 64],
        ] {
            assert!(parse(&[junk]).1.malformed);
        }
    }
}
