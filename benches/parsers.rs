//! Usage parsers on realistic bodies, in bytes per second (the target is >= 1 GB/s on
//! SSE and JSON usage extraction).
//!
//! Streams are fed one event per chunk, as a live model sends them (and the proxy sees
//! them), and once as one whole chunk. The 20-event bodies are a short chat answer, the
//! 300-event ones a long answer; both are built from the event shapes in
//! `tests/fixtures/` (same fields, same nesting, same `"usage":null` on every OpenAI chunk).
//!
//! `cargo bench --bench parsers` (add `-- <filter>` for a subset).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lmgate::usage::array::JsonArrayParser;
use lmgate::usage::eventstream::{
    encode_event, sample_converse_stream, sample_invoke_stream, EventStreamParser,
};
use lmgate::usage::json::{parse_json_usage, parse_json_usage_serde, JsonOutcome};
use lmgate::usage::sse::SseUsageParser;
use lmgate::usage::{BodyKind, Collector, UsageReader, UsageStatus};
use std::time::Duration;

/// The proxy's default `stats.capture_limit_bytes`.
const CAP_BYTES: usize = 2 * 1024 * 1024;

/// Words of a plausible answer, cycled to make token deltas.
const WORDS: [&str; 16] = [
    " The",
    " boardwalk",
    " runs",
    " through",
    " a",
    " lush",
    " green",
    " meadow,",
    " with",
    " tall",
    " grass",
    " on",
    " both",
    " sides",
    " and",
    " clouds.",
];

fn word(i: usize) -> &'static str {
    WORDS[i % WORDS.len()]
}

/// A body split into the chunks a client would receive, one event each.
struct Stream {
    name: &'static str,
    events: Vec<Vec<u8>>,
}

impl Stream {
    fn bytes(&self) -> usize {
        self.events.iter().map(Vec::len).sum()
    }
    fn whole(&self) -> Vec<u8> {
        self.events.concat()
    }
}

fn sse(event: Option<&str>, data: &str) -> Vec<u8> {
    let mut s = String::new();
    if let Some(e) = event {
        s.push_str("event: ");
        s.push_str(e);
        s.push('\n');
    }
    s.push_str("data: ");
    s.push_str(data);
    s.push_str("\n\n");
    s.into_bytes()
}

/// OpenAI chat completions stream with `stream_options.include_usage`: every chunk says
/// `"usage":null`, the last one before `[DONE]` carries the counts.
fn openai_chat_stream(n: usize) -> Stream {
    let head = r#"{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion.chunk","created":1741570283,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_44709d6fcb","choices":"#;
    let mut ev = vec![sse(
        None,
        &format!(
            r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ),
    )];
    for i in 0..n.saturating_sub(4) {
        ev.push(sse(
            None,
            &format!(
                r#"{head}[{{"index":0,"delta":{{"content":"{}"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#,
                word(i)
            ),
        ));
    }
    ev.push(sse(
        None,
        &format!(
            r#"{head}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
        ),
    ));
    ev.push(sse(
        None,
        &format!(
            r#"{head}[],"usage":{{"prompt_tokens":1117,"completion_tokens":{},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":1024,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}}}}"#,
            n,
            1117 + n
        ),
    ));
    ev.push(sse(None, "[DONE]"));
    Stream {
        name: "openai_chat",
        events: ev,
    }
}

/// OpenAI Responses API stream: typed events, usage only in `response.completed`.
fn responses_stream(n: usize) -> Stream {
    let resp = |status: &str, usage: &str| {
        format!(
            r#"{{"id":"resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654","object":"response","created_at":1741290958,"status":"{status}","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-4.1-2025-04-14","output":[],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{{"effort":null,"summary":null}},"store":true,"temperature":1.0,"text":{{"format":{{"type":"text"}}}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{usage},"user":null,"metadata":{{}}}}"#
        )
    };
    let item = "msg_67c9fdcf37fc8190ba82116e33fb28c507b8b0ad4e5eb654";
    let mut ev = vec![
        sse(
            Some("response.created"),
            &format!(
                r#"{{"type":"response.created","sequence_number":0,"response":{}}}"#,
                resp("in_progress", "null")
            ),
        ),
        sse(
            Some("response.in_progress"),
            &format!(
                r#"{{"type":"response.in_progress","sequence_number":1,"response":{}}}"#,
                resp("in_progress", "null")
            ),
        ),
        sse(
            Some("response.output_item.added"),
            &format!(
                r#"{{"type":"response.output_item.added","sequence_number":2,"output_index":0,"item":{{"id":"{item}","type":"message","status":"in_progress","content":[],"role":"assistant"}}}}"#
            ),
        ),
        sse(
            Some("response.content_part.added"),
            &format!(
                r#"{{"type":"response.content_part.added","sequence_number":3,"item_id":"{item}","output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"text":""}}}}"#
            ),
        ),
    ];
    for i in 0..n.saturating_sub(8) {
        ev.push(sse(
            Some("response.output_text.delta"),
            &format!(
                r#"{{"type":"response.output_text.delta","sequence_number":{},"item_id":"{item}","output_index":0,"content_index":0,"delta":"{}"}}"#,
                i + 4,
                word(i)
            ),
        ));
    }
    ev.push(sse(
        Some("response.output_text.done"),
        &format!(
            r#"{{"type":"response.output_text.done","sequence_number":{},"item_id":"{item}","output_index":0,"content_index":0,"text":"The boardwalk runs through a lush green meadow."}}"#,
            n
        ),
    ));
    ev.push(sse(
        Some("response.content_part.done"),
        &format!(
            r#"{{"type":"response.content_part.done","sequence_number":{},"item_id":"{item}","output_index":0,"content_index":0,"part":{{"type":"output_text","annotations":[],"text":"The boardwalk runs through a lush green meadow."}}}}"#,
            n + 1
        ),
    ));
    ev.push(sse(
        Some("response.output_item.done"),
        &format!(
            r#"{{"type":"response.output_item.done","sequence_number":{},"output_index":0,"item":{{"id":"{item}","type":"message","status":"completed","content":[{{"type":"output_text","annotations":[],"text":"The boardwalk runs through a lush green meadow."}}],"role":"assistant"}}}}"#,
            n + 2
        ),
    ));
    ev.push(sse(
        Some("response.completed"),
        &format!(
            r#"{{"type":"response.completed","sequence_number":{},"response":{}}}"#,
            n + 3,
            resp(
                "completed",
                &format!(
                    r#"{{"input_tokens":37,"input_tokens_details":{{"cached_tokens":0}},"output_tokens":{n},"output_tokens_details":{{"reasoning_tokens":0}},"total_tokens":{}}}"#,
                    37 + n
                )
            )
        ),
    ));
    Stream {
        name: "openai_responses",
        events: ev,
    }
}

/// Anthropic Messages stream: usage in `message_start` and the cumulative `message_delta`.
fn anthropic_stream(n: usize) -> Stream {
    let mut ev = vec![
        sse(
            Some("message_start"),
            r#"{"type":"message_start","message":{"id":"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5-20250929","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,"cache_creation_input_tokens":12,"cache_read_input_tokens":2048,"output_tokens":2}}}"#,
        ),
        sse(
            Some("content_block_start"),
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
        ),
        sse(Some("ping"), r#"{"type": "ping"}"#),
    ];
    for i in 0..n.saturating_sub(6) {
        ev.push(sse(
            Some("content_block_delta"),
            &format!(
                r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"{}"}}}}"#,
                word(i)
            ),
        ));
    }
    ev.push(sse(
        Some("content_block_stop"),
        r#"{"type":"content_block_stop","index":0}"#,
    ));
    ev.push(sse(
        Some("message_delta"),
        &format!(
            r#"{{"type":"message_delta","delta":{{"stop_reason":"end_turn","stop_sequence":null}},"usage":{{"output_tokens":{n}}}}}"#
        ),
    ));
    ev.push(sse(Some("message_stop"), r#"{"type":"message_stop"}"#));
    Stream {
        name: "anthropic",
        events: ev,
    }
}

fn gemini_chunk(text: &str, last: bool, out_tokens: usize) -> String {
    let finish = if last { r#","finishReason": "STOP""# } else { "" };
    format!(
        r#"{{"candidates": [{{"content": {{"parts": [{{"text": "{text}"}}],"role": "model"}}{finish},"index": 0}}],"usageMetadata": {{"promptTokenCount": 10,"candidatesTokenCount": {out_tokens},"totalTokenCount": {},"thoughtsTokenCount": 36,"promptTokensDetails": [{{"modality": "TEXT","tokenCount": 10}}]}},"modelVersion": "gemini-2.5-flash","responseId": "UmdoaMbEBYWrnvgPg6eTkQw"}}"#,
        46 + out_tokens
    )
}

/// Gemini `streamGenerateContent?alt=sse`: every chunk carries `usageMetadata`.
fn gemini_sse_stream(n: usize) -> Stream {
    let ev = (0..n)
        .map(|i| sse(None, &gemini_chunk(word(i), i + 1 == n, i + 1)))
        .collect();
    Stream {
        name: "gemini_sse",
        events: ev,
    }
}

/// Gemini `streamGenerateContent` without `alt=sse`: one JSON array, an element per chunk.
fn gemini_array_stream(n: usize) -> Stream {
    let mut ev = Vec::with_capacity(n);
    for i in 0..n {
        let sep = if i == 0 { "[" } else { ",\r\n" };
        let mut e = format!("{sep}{}", gemini_chunk(word(i), i + 1 == n, i + 1)).into_bytes();
        if i + 1 == n {
            e.push(b']');
        }
        ev.push(e);
    }
    Stream {
        name: "gemini_array",
        events: ev,
    }
}

/// Bedrock ConverseStream event-stream: one message per chunk.
fn bedrock_converse_stream(n: usize) -> Stream {
    let mut ev = vec![encode_event("messageStart", r#"{"p":"abcd","role":"assistant"}"#)];
    for i in 0..n.saturating_sub(4) {
        ev.push(encode_event(
            "contentBlockDelta",
            &format!(
                r#"{{"contentBlockIndex":0,"delta":{{"text":"{}"}},"p":"abcdefghijklmnopq"}}"#,
                word(i)
            ),
        ));
    }
    ev.push(encode_event(
        "contentBlockStop",
        r#"{"contentBlockIndex":0,"p":"ab"}"#,
    ));
    ev.push(encode_event(
        "messageStop",
        r#"{"p":"abcdef","stopReason":"end_turn"}"#,
    ));
    ev.push(encode_event(
        "metadata",
        &format!(
            r#"{{"metrics":{{"latencyMs":1180}},"p":"abc","usage":{{"inputTokens":25,"outputTokens":{n},"totalTokens":{},"cacheReadInputTokens":3}}}}"#,
            25 + n
        ),
    ));
    Stream {
        name: "bedrock_converse",
        events: ev,
    }
}

/// Feed a fresh reader every chunk, end the body, and say whether it found tokens.
fn reader_usage(mut reader: impl UsageReader, chunks: &[Vec<u8>]) -> bool {
    for c in chunks {
        reader.feed(c);
    }
    reader.finish();
    reader.usage().has_tokens()
}

fn sse_usage(chunks: &[Vec<u8>]) -> bool {
    reader_usage(SseUsageParser::new(CAP_BYTES), chunks)
}

fn array_usage(chunks: &[Vec<u8>]) -> bool {
    reader_usage(JsonArrayParser::new(CAP_BYTES), chunks)
}

fn eventstream_usage(chunks: &[Vec<u8>]) -> bool {
    reader_usage(EventStreamParser::new(CAP_BYTES), chunks)
}

/// What the proxy runs per response: a `Collector` picked from the headers, fed every
/// chunk, finished, and asked for the outcome.
fn collector_usage(kind: BodyKind, chunks: &[Vec<u8>]) -> UsageStatus {
    let mut c = Collector::new(kind, None, CAP_BYTES);
    for ch in chunks {
        c.feed(ch);
    }
    c.finish();
    c.outcome().1
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

fn bench_sse(c: &mut Criterion) {
    let mut g = c.benchmark_group("sse");
    for n in [20, 300] {
        for s in [
            openai_chat_stream(n),
            responses_stream(n),
            anthropic_stream(n),
            gemini_sse_stream(n),
        ] {
            assert!(sse_usage(&s.events), "{} must carry usage", s.name);
            g.throughput(Throughput::Bytes(s.bytes() as u64));
            g.bench_with_input(
                BenchmarkId::new(format!("{}/per_event", s.name), n),
                &s.events,
                |b, ev| b.iter(|| sse_usage(black_box(ev))),
            );
            let whole = vec![s.whole()];
            g.bench_with_input(
                BenchmarkId::new(format!("{}/one_chunk", s.name), n),
                &whole,
                |b, ev| b.iter(|| sse_usage(black_box(ev))),
            );
        }
    }
    // The whole per-response path for the common case (Collector + SSE parser + outcome).
    let s = openai_chat_stream(300);
    g.throughput(Throughput::Bytes(s.bytes() as u64));
    g.bench_with_input(
        BenchmarkId::new("collector/openai_chat", 300),
        &s.events,
        |b, ev| b.iter(|| collector_usage(BodyKind::Sse, black_box(ev))),
    );
    g.finish();
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A non-streamed OpenAI chat completion whose answer makes the body about `bytes` long.
fn big_chat_completion(bytes: usize) -> Vec<u8> {
    let mut content = String::with_capacity(bytes);
    let mut i = 0;
    while content.len() + 700 < bytes {
        content.push_str(word(i));
        if i % 40 == 39 {
            content.push_str("\\n\\n"); // escaped newlines, as in a real long answer
        }
        i += 1;
    }
    format!(
        r#"{{"id":"chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG","object":"chat.completion","created":1741570283,"model":"gpt-4o-2024-08-06","choices":[{{"index":0,"message":{{"role":"assistant","content":"{content}","refusal":null,"annotations":[]}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":1117,"completion_tokens":{i},"total_tokens":{},"prompt_tokens_details":{{"cached_tokens":1024,"audio_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}},"service_tier":"default","system_fingerprint":"fp_fc9f1d7035"}}"#,
        1117 + i
    )
    .into_bytes()
}

fn json_tokens(body: &[u8]) -> bool {
    matches!(parse_json_usage(body), JsonOutcome::Parsed(u) if u.has_tokens())
}

fn bench_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("json");
    let mut bodies: Vec<(&str, Vec<u8>)> = [
        ("openai_chat", "openai_chat.json"),
        ("openai_responses", "openai_responses.json"),
        ("anthropic", "anthropic_message.json"),
        ("gemini", "gemini_generate.json"),
        ("bedrock_converse", "bedrock_converse.json"),
    ]
    .into_iter()
    .map(|(name, file)| (name, fixture(file)))
    .collect();
    bodies.push(("openai_chat_2mb", big_chat_completion(2_000_000)));
    for (name, body) in &bodies {
        assert!(json_tokens(body), "{name} must carry usage");
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("parse", name), body, |b, body| {
            b.iter(|| json_tokens(black_box(body)))
        });
        // The full serde pass the fast path replaced, for comparison.
        g.bench_with_input(BenchmarkId::new("serde_reference", name), body, |b, body| {
            b.iter(|| matches!(parse_json_usage_serde(black_box(body)), JsonOutcome::Parsed(u) if u.has_tokens()))
        });
    }
    // What the proxy runs: capture the body chunk by chunk (16 KiB reads), then parse.
    for (name, body) in [&bodies[0], &bodies[bodies.len() - 1]] {
        let chunks: Vec<Vec<u8>> = body.chunks(16 * 1024).map(<[u8]>::to_vec).collect();
        assert_eq!(collector_usage(BodyKind::Json, &chunks), UsageStatus::Exact);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_with_input(BenchmarkId::new("collector", name), &chunks, |b, ch| {
            b.iter(|| collector_usage(BodyKind::Json, black_box(ch)))
        });
    }
    g.finish();
}

fn bench_binary_streams(c: &mut Criterion) {
    let mut g = c.benchmark_group("streams");
    for n in [20, 300] {
        let s = gemini_array_stream(n);
        assert!(array_usage(&s.events), "gemini array must carry usage");
        g.throughput(Throughput::Bytes(s.bytes() as u64));
        g.bench_with_input(
            BenchmarkId::new("gemini_array/per_event", n),
            &s.events,
            |b, ev| b.iter(|| array_usage(black_box(ev))),
        );
        let s = bedrock_converse_stream(n);
        assert!(eventstream_usage(&s.events), "converse stream must carry usage");
        g.throughput(Throughput::Bytes(s.bytes() as u64));
        g.bench_with_input(
            BenchmarkId::new("bedrock_converse/per_event", n),
            &s.events,
            |b, ev| b.iter(|| eventstream_usage(black_box(ev))),
        );
    }
    for (name, body) in [
        ("bedrock_converse_sample", sample_converse_stream()),
        ("bedrock_invoke_sample", sample_invoke_stream()),
    ] {
        let chunks = vec![body];
        assert!(eventstream_usage(&chunks), "{name} must carry usage");
        g.throughput(Throughput::Bytes(chunks[0].len() as u64));
        g.bench_with_input(BenchmarkId::new(name, "one_chunk"), &chunks, |b, ch| {
            b.iter(|| eventstream_usage(black_box(ch)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_sse, bench_json, bench_binary_streams
}
criterion_main!(benches);
