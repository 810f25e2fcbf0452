//! Usage records through the real binary: every provider format, streamed and not,
//! compressed, rejected, truncated and disconnected requests, and the writer's flush.

mod common;

/// Request headers as the raw client takes them.
type Headers<'a> = &'a [(&'a str, &'a str)];

use common::*;
use lmgate::usage::decode::{encode, Encoding};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;

/// The record fields a test pins down (timestamp and duration vary).
fn stable(r: &Value) -> Value {
    let mut r = r.clone();
    let obj = r.as_object_mut().unwrap();
    let ts = obj.remove("timestamp").unwrap();
    let ts = ts.as_str().unwrap();
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[19] == b'.',
        "timestamp {ts}"
    );
    assert!(obj.remove("duration_ms").unwrap().is_u64());
    // Costs at the snapshot's prices are pinned by tests/limits.rs; here: present.
    let cost = obj.remove("cost_micros").unwrap();
    let status = obj.remove("cost_status").unwrap();
    assert!(
        cost.is_u64() || (cost.is_null() && status != "exact"),
        "{cost} {status}"
    );
    let id = obj.remove("request_id").unwrap();
    let id = id.as_str().unwrap();
    assert!(id.len() == 21 && id.as_bytes()[8] == b'-', "request_id {id}");
    r
}

#[allow(clippy::too_many_arguments)]
fn expect(
    provider: &str,
    endpoint: &str,
    model: Option<&str>,
    tokens: (Option<u64>, Option<u64>),
    cache: (Option<u64>, Option<u64>),
    reasoning: Option<u64>,
    stream: bool,
    usage_status: &str,
) -> Value {
    json!({
        "lmgate_id": "team-a", "provider": provider, "endpoint": endpoint, "model": model,
        "status": 200, "input_tokens": tokens.0, "output_tokens": tokens.1,
        "cache_read_input_tokens": cache.0, "cache_creation_input_tokens": cache.1,
        "reasoning_tokens": reasoning, "masked_key": "AAAAAA", "error_type": null,
        "usage_status": usage_status, "stream": stream,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_format_gives_exact_records() {
    let mock = Mock::providers().await;
    let gw = Gateway::for_mock(&mock, "");
    let bearer = format!("Bearer {KEY_A}");
    let b: Headers = &[("authorization", &bearer)];
    let x: Headers = &[("x-api-key", KEY_A)];
    let g: Headers = &[("x-goog-api-key", KEY_A)];
    let cases: Vec<(&str, Headers, &str, Value)> = vec![
        ("/openai/v1/chat/completions", b, r#"{"model":"gpt-4o"}"#,
         expect("openai", "/openai/v1/chat/completions", Some("gpt-4o-2024-08-06"), (Some(1117), Some(46)), (Some(1024), None), Some(0), false, "exact")),
        ("/openai/v1/chat/completions?x=1", b, r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
         expect("openai", "/openai/v1/chat/completions", Some("gpt-4o-mini-2024-07-18"), (Some(19), Some(10)), (Some(0), None), Some(0), true, "exact")),
        ("/openai/v1/chat/completions", b, r#"{"stream":true}"#,
         expect("openai", "/openai/v1/chat/completions", Some("gpt-4o-mini-2024-07-18"), (None, None), (None, None), None, true, "absent")),
        ("/openai/v1/responses", b, r#"{"input":"hi"}"#,
         expect("openai", "/openai/v1/responses", Some("o4-mini-2025-04-16"), (Some(328), Some(52)), (Some(0), None), Some(32), false, "exact")),
        ("/openai/v1/responses", b, r#"{"stream":true}"#,
         expect("openai", "/openai/v1/responses", Some("gpt-4.1-2025-04-14"), (Some(37), Some(11)), (Some(0), None), Some(0), true, "exact")),
        ("/openai/v1/embeddings", b, r#"{"input":"hi"}"#,
         expect("openai", "/openai/v1/embeddings", Some("text-embedding-3-small"), (Some(8), None), (None, None), None, false, "exact")),
        ("/anthropic/v1/messages", x, r#"{"max_tokens":10}"#,
         expect("anthropic", "/anthropic/v1/messages", Some("claude-sonnet-4-5-20250929"), (Some(2095), Some(503)), (Some(1800), Some(248)), None, false, "exact")),
        ("/anthropic/v1/messages", x, r#"{"stream":true}"#,
         expect("anthropic", "/anthropic/v1/messages", Some("claude-sonnet-4-5-20250929"), (Some(472), Some(89)), (Some(2048), Some(12)), None, true, "exact")),
        ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", g, "{}",
         expect("gemini", "/gemini/v1beta/models/gemini-2.5-flash:generateContent", Some("gemini-2.5-flash"), (Some(8), Some(21)), (Some(4), None), Some(140), false, "exact")),
        ("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", g, "{}",
         expect("gemini", "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent", Some("gemini-2.5-flash"), (Some(10), Some(12)), (None, None), Some(36), true, "exact")),
        ("/google/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent", g, "{}",
         expect("google", "/google/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent", Some("gemini-2.0-flash"), (Some(7), Some(23)), (None, None), None, true, "exact")),
        ("/bedrock/model/amazon.nova-lite-v1:0/converse", b, "{}",
         expect("bedrock", "/bedrock/model/amazon.nova-lite-v1:0/converse", Some("amazon.nova-lite-v1:0"), (Some(21), Some(39)), (Some(5), Some(2)), None, false, "exact")),
        ("/bedrock/model/amazon.nova-lite-v1:0/converse-stream", b, "{}",
         expect("bedrock", "/bedrock/model/amazon.nova-lite-v1:0/converse-stream", Some("amazon.nova-lite-v1:0"), (Some(25), Some(48)), (Some(3), None), None, true, "exact")),
        ("/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke", b, "{}",
         expect("bedrock", "/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke", Some("claude-sonnet-4-5-20250929"), (Some(2095), Some(503)), (Some(1800), Some(248)), None, false, "exact")),
        ("/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke-with-response-stream", b, "{}",
         expect("bedrock", "/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke-with-response-stream", Some("claude-3-5-haiku-20241022"), (Some(14), Some(9)), (None, None), None, true, "exact")),
    ];
    let mut c = Client::connect(&gw.addr()).await;
    for (path, headers, body, _) in &cases {
        let resp = c.request("POST", path, headers, body.as_bytes()).await;
        assert_eq!(resp.status, 200, "{path}");
    }
    let records = gw.wait_records(cases.len());
    assert_eq!(records.len(), cases.len());
    for (i, (path, _, _, want)) in cases.iter().enumerate() {
        assert_eq!(stable(&records[i]), *want, "record for {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streamed_bytes_reach_the_client_unchanged_and_compressed_bodies_are_counted() {
    let plain = fixture("anthropic_stream.sse");
    let mut variants = Vec::new();
    for (name, enc) in [
        ("gzip", Encoding::Gzip),
        ("br", Encoding::Brotli),
        ("zstd", Encoding::Zstd),
        ("deflate", Encoding::Deflate),
    ] {
        variants.push((name, encode(enc, &plain)));
    }
    let v2 = variants.clone();
    let mock = Mock::start(move |req| {
        let enc = req.header("x-want").unwrap_or("").to_string();
        let (name, body) = v2.iter().find(|(n, _)| *n == enc).unwrap().clone();
        Reply::stream("text/event-stream", Part::chunks(&body, 11)).with_header("content-encoding", name)
    })
    .await;
    let gw = Gateway::for_mock(&mock, "");
    for (name, packed) in &variants {
        let resp = request(
            &gw.addr(),
            "POST",
            "/anthropic/v1/messages",
            &[
                ("x-api-key", KEY_A),
                ("accept-encoding", "gzip, br, zstd, deflate"),
                ("x-want", name),
            ],
            br#"{"stream":true}"#,
        )
        .await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-encoding"), Some(*name));
        assert_eq!(
            &resp.body, packed,
            "{name}: the client gets the compressed bytes untouched"
        );
        let sent = mock.received();
        assert_eq!(
            sent.last().unwrap().header("accept-encoding"),
            Some("gzip, br, zstd, deflate")
        );
    }
    let records = gw.wait_records(variants.len());
    for r in &records {
        assert_eq!(
            (r["input_tokens"].as_u64(), r["output_tokens"].as_u64()),
            (Some(472), Some(89)),
            "{r}"
        );
        assert_eq!(r["usage_status"], "exact");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_and_unrouted_requests_are_recorded_healthz_is_not() {
    let mock = Mock::providers().await;
    let gw = Gateway::for_mock(&mock, "");
    let unknown = format!("Bearer {KEY_C}");
    assert_eq!(request(&gw.addr(), "GET", "/healthz", &[], b"").await.status, 200);
    assert_eq!(
        request(
            &gw.addr(),
            "POST",
            "/openai/v1/chat/completions?key=zzz",
            &[("authorization", &unknown)],
            b"{}"
        )
        .await
        .status,
        403
    );
    assert_eq!(request(&gw.addr(), "GET", "/nope/x", &[], b"").await.status, 404);
    assert_eq!(
        request(
            &gw.addr(),
            "POST",
            "/anthropic/v1/unknown",
            &[("x-api-key", KEY_B)],
            b"{}"
        )
        .await
        .status,
        404
    );
    let mut records = gw.wait_records(3);
    assert_eq!(records.len(), 3, "healthz writes no record: {records:?}");
    // A record is written when its request's `logging` hook ends, after the response went
    // out; the next request (a new connection, maybe on the other worker thread) can get
    // there first. Put them in the order the requests were sent.
    let sent = ["/openai/v1/chat/completions", "/nope/x", "/anthropic/v1/unknown"];
    records.sort_by_key(|r| sent.iter().position(|e| r["endpoint"] == *e));
    assert_eq!(
        stable(&records[0]),
        json!({"lmgate_id": null, "provider": "openai", "endpoint": "/openai/v1/chat/completions", "model": null,
               "status": 403, "input_tokens": null, "output_tokens": null, "cache_read_input_tokens": null,
               "cache_creation_input_tokens": null, "reasoning_tokens": null, "masked_key": "CCCCCC",
               "error_type": "forbidden", "usage_status": "absent", "stream": false})
    );
    assert_eq!(
        (
            records[1]["provider"].clone(),
            records[1]["status"].clone(),
            records[1]["error_type"].clone(),
            records[1]["masked_key"].clone()
        ),
        (Value::Null, json!(404), json!("no_route"), Value::Null)
    );
    assert_eq!(
        (
            records[2]["lmgate_id"].clone(),
            records[2]["status"].clone(),
            records[2]["error_type"].clone(),
            records[2]["usage_status"].clone()
        ),
        (
            json!("team-b"),
            json!(404),
            json!("upstream_http"),
            json!("absent")
        )
    );
    let text = std::fs::read_to_string(&gw.stats_path).unwrap();
    for k in [KEY_A, KEY_B, KEY_C] {
        assert!(!text.contains(k));
    }
}

/// The Anthropic stream fixture cut where `message_delta` (the output tokens) starts.
fn anthropic_stream_cut() -> (Vec<u8>, Vec<u8>) {
    let body = fixture("anthropic_stream.sse");
    let cut = find(&body, b"event: message_delta").unwrap();
    let (head, tail) = body.split_at(cut);
    (head.to_vec(), tail.to_vec())
}

/// A streamed Anthropic request on a new connection, its response head read (200).
async fn open_anthropic_stream(gw: &Gateway) -> Client {
    let (c, status, _) = Client::open(
        &gw.addr(),
        "POST",
        "/anthropic/v1/messages",
        &[("x-api-key", KEY_A)],
        br#"{"stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_reset_mid_stream_is_truncated_with_tokens_seen() {
    let (head, _) = anthropic_stream_cut();
    let sent = head.clone();
    let mock = Mock::start(move |_| {
        Reply::stream("text/event-stream", vec![Part::Bytes(sent.clone()), Part::Close])
    })
    .await;
    let gw = Gateway::for_mock(&mock, "");
    let mut c = open_anthropic_stream(&gw).await;
    let mut got = Vec::new();
    while let Some(chunk) = c.read_chunk().await {
        got.extend(chunk);
    }
    assert_eq!(
        got, head,
        "the client saw everything sent before the reset, then the end"
    );
    let r = &gw.wait_records(1)[0];
    assert_eq!(r["usage_status"], "truncated");
    assert_eq!(
        (r["input_tokens"].as_u64(), r["output_tokens"].as_u64()),
        (Some(472), Some(2))
    );
    assert_eq!(r["error_type"], "upstream_connect");
    assert_eq!(r["status"], 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn client_disconnect_mid_stream_still_gets_a_record() {
    let (head, tail) = anthropic_stream_cut();
    let (mock, gate) = Mock::paused_stream(&head, &[&tail]).await;
    let gw = Gateway::for_mock(&mock, "");
    let mut c = open_anthropic_stream(&gw).await;
    c.read_chunk().await.unwrap();
    drop(c); // client gone
             // The gateway notices the dead client and cancels the upstream request while the
             // upstream is still parked mid-stream (the gate is never opened).
    wait_until(
        "upstream request never cancelled",
        || mock.cancelled.load(Ordering::SeqCst) > 0,
        || gw.log(),
    )
    .await;
    drop(gate);
    let r = &gw.wait_records(1)[0];
    assert_eq!(r["error_type"], "client_disconnected", "{r}");
    assert_eq!(r["usage_status"], "truncated");
    assert_eq!(r["input_tokens"].as_u64(), Some(472));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_capture_limit_is_forwarded_whole_with_null_tokens() {
    let mut big = fixture("openai_chat.json");
    let pad = format!(",\"pad\":\"{}\"}}", "x".repeat(8000));
    big.truncate(big.iter().rposition(|&b| b == b'}').unwrap());
    big.extend_from_slice(pad.as_bytes());
    let b2 = big.clone();
    let mock = Mock::start(move |_| Reply::full(200, "application/json", b2.clone())).await;
    let gw = Gateway::for_mock(&mock, "stats:\n  capture_limit_bytes: 4096\n");
    let resp = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
    assert_eq!(resp.body, big);
    let r = &gw.wait_records(1)[0];
    assert_eq!(r["usage_status"], "over_limit");
    assert_eq!(
        (r["input_tokens"].clone(), r["output_tokens"].clone()),
        (Value::Null, Value::Null)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_flushes_every_record_before_exit() {
    let mock = Mock::providers().await;
    // A flush interval far longer than the test: only the shutdown flush can write.
    let mut gw = Gateway::for_mock(&mock, "stats:\n  flush_interval_seconds: 3600\n");
    let auth = format!("Bearer {KEY_A}");
    let mut c = Client::connect(&gw.addr()).await;
    for i in 0..50 {
        let resp = c
            .request(
                "POST",
                &format!("/openai/v1/chat/completions?n={i}"),
                &[("authorization", &auth)],
                b"{}",
            )
            .await;
        assert_eq!(resp.status, 200);
    }
    drop(c);
    assert!(gw.records().is_empty(), "nothing written before the flush");
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit().success());
    let records = gw.records();
    assert_eq!(records.len(), 50);
    assert!(records.iter().all(|r| r["input_tokens"] == 1117));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_stats_path_never_fails_a_request() {
    let mock = Mock::providers().await;
    let gw = Gateway::for_mock(&mock, "stats:\n  output_path: /dev/full/stats.jsonl\n");
    for _ in 0..5 {
        let resp = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
        assert_eq!(resp.status, 200);
    }
    gw.wait_log(&["unwritable"]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_answer_carries_its_record_request_id_beside_the_provider_one() {
    let mock =
        Mock::start(|_| Reply::json(200, &chat_json()).with_header("x-request-id", "req_provider_123")).await;
    let gw = Gateway::for_mock(&mock, "");
    let ok = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
    let refused = request_as(
        &gw.addr(),
        "sk-unknown-key-000000",
        "POST",
        "/openai/v1/chat/completions",
        b"{}",
    )
    .await;
    assert_eq!(
        ok.header("x-request-id"),
        Some("req_provider_123"),
        "the provider's passes unchanged"
    );
    let ids: Vec<String> = [&ok, &refused]
        .iter()
        .map(|r| {
            r.header("x-lmgate-request-id")
                .expect("ours on every answer")
                .to_owned()
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(ids[0][..8], ids[1][..8], "one process, one prefix");
    let records = gw.wait_records(2);
    let mut recorded: Vec<&str> = records
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    recorded.sort();
    let mut sent: Vec<&str> = ids.iter().map(String::as_str).collect();
    sent.sort();
    assert_eq!(recorded, sent);
}
