//! Spend control through the real binary: prices and cost in every record (each provider
//! format, streamed and not), the report and the metrics agreeing to the micro-dollar,
//! every limit kind, concurrent admission against a nearly spent budget, a cut stream,
//! restarts and upgrades that keep the spend, and a price-file reload.

mod common;

use common::*;
use serde_json::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type Headers<'a> = &'a [(&'a str, &'a str)];

/// One price row per provider, at round rates: $1 per million input tokens (one
/// micro-dollar a token), $2 output, $0.50 cache read, $3 cache write; reasoning at the
/// output rate. Only some model families are priced, so the rest come out unpriced.
const ROUND_PRICES: &str = "\
provider,model,input,output,cache_read,cache_write,reasoning
openai,gpt-4o*,1000000,2000000,500000,3000000,
openai,text-embedding-*,1000000,2000000,500000,3000000,
anthropic,claude-*,1000000,2000000,500000,3000000,
gemini,gemini-*,1000000,2000000,500000,3000000,
google,gemini-*,1000000,2000000,500000,3000000,
bedrock,amazon.*,1000000,2000000,500000,3000000,
";

/// A snapshot with no rows: only the override file prices anything.
const NO_SNAPSHOT: &str = "provider,model,input,output\n";

/// An allow-list with the `limits` column: `team-a` (KEY_A) gets `limits`, `team-b`
/// (KEY_B, same owner) and `team-c` (KEY_C, another owner) none.
fn allowlist_with(limits_a: &str, limits_b: &str) -> String {
    format!(
        "id,api_key,owner,added,mode,providers,models,limits\n\
         team-a,{KEY_A},alice,2026-01-01,,,,{limits_a}\n\
         team-b,{KEY_B},alice,2026-01-01,,,,{limits_b}\n\
         team-c,{KEY_C},carol,2026-01-01,,,,\n"
    )
}

/// A gateway in front of `mock` whose prices are `prices` only (no snapshot rows).
fn gateway(mock: &Mock, allowlist: String, prices: &str, prices_dir: &ConfigDir, extra: &str) -> Gateway {
    let snapshot = prices_dir.write("snapshot.csv", NO_SNAPSHOT);
    let overrides = prices_dir.write("prices.csv", prices);
    Gateway::start(GatewayOpts {
        yaml: format!(
            "{}prices:\n  path: {}\n  override_path: {}\n  poll_interval_seconds: 1\n{extra}",
            all_providers_at(mock.port),
            snapshot.display(),
            overrides.display()
        ),
        allowlist,
        ..Default::default()
    })
}

/// Wait, when the current UTC minute is about to end, until the next one starts: the
/// per-minute tests then run inside one minute (this keeps them deterministic, it is not
/// a timing assertion).
async fn start_of_a_minute() {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if secs % 60 >= 45 {
        tokio::time::sleep(Duration::from_secs(60 - secs % 60) + Duration::from_millis(200)).await;
    }
}

/// POST `body` to the OpenAI chat route with `key` as the bearer token.
async fn chat_as(gw: &Gateway, key: &str, body: &[u8]) -> Response {
    request_as(&gw.addr(), key, "POST", "/openai/v1/chat/completions", body).await
}

fn chat_body(max_tokens: u64) -> String {
    format!(r#"{{"model":"gpt-4o-mini","max_tokens":{max_tokens},"messages":[]}}"#)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_provider_format_is_priced_exactly_and_report_and_metrics_agree() {
    let mock = Mock::providers().await;
    let dir = ConfigDir::new();
    let gw = gateway(&mock, default_allowlist(), ROUND_PRICES, &dir, "");
    let bearer = format!("Bearer {KEY_A}");
    let b: Headers = &[("authorization", &bearer)];
    let x: Headers = &[("x-api-key", KEY_A)];
    let g: Headers = &[("x-goog-api-key", KEY_A)];
    // (path, headers, body, cost_micros, cost_status); the counts are the fixtures' (see
    // tests/usage.rs), the costs worked out by hand from ROUND_PRICES.
    let cases: Vec<(&str, Headers, &str, Option<u64>, &str)> = vec![
        // 1117 input of which 1024 cached, 46 output: 93 + 512 + 92.
        ("/openai/v1/chat/completions", b, r#"{"model":"gpt-4o"}"#, Some(697), "exact"),
        // gpt-4o-mini-2024-07-18 (matches gpt-4o*), 19 in, 10 out.
        ("/openai/v1/chat/completions", b, r#"{"stream":true,"stream_options":{"include_usage":true}}"#, Some(39), "exact"),
        // A stream without include_usage carries no counts.
        ("/openai/v1/chat/completions", b, r#"{"stream":true}"#, None, "no_usage"),
        // o4-mini and gpt-4.1 have no price here: never $0.
        ("/openai/v1/responses", b, r#"{"input":"hi"}"#, None, "unpriced"),
        ("/openai/v1/responses", b, r#"{"stream":true}"#, None, "unpriced"),
        ("/openai/v1/embeddings", b, r#"{"input":"hi"}"#, Some(8), "exact"),
        // 2095 in, 503 out, 1800 cache read, 248 cache write: 2095 + 1006 + 900 + 744.
        ("/anthropic/v1/messages", x, r#"{"max_tokens":10}"#, Some(4745), "exact"),
        // 472 + 2 x 89 + 2048 / 2 + 3 x 12.
        ("/anthropic/v1/messages", x, r#"{"stream":true}"#, Some(1710), "exact"),
        // 8 prompt (4 cached), 21 candidates + 140 thoughts: 4 + 2 + 42 + 280.
        ("/gemini/v1beta/models/gemini-2.5-flash:generateContent", g, "{}", Some(328), "exact"),
        // 10 + 2 x 12 + 2 x 36 thoughts.
        ("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", g, "{}", Some(106), "exact"),
        ("/google/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:streamGenerateContent", g, "{}", Some(53), "exact"),
        // 21 + 78 + 2.5 + 6 = 107.5, rounded half up once for the whole request.
        ("/bedrock/model/amazon.nova-lite-v1:0/converse", b, "{}", Some(108), "exact"),
        // 25 + 96 + 1.5 = 122.5.
        ("/bedrock/model/amazon.nova-lite-v1:0/converse-stream", b, "{}", Some(123), "exact"),
        ("/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke", b, "{}", None, "unpriced"),
        ("/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/invoke-with-response-stream", b, "{}", None, "unpriced"),
    ];
    let mut c = Client::connect(&gw.addr()).await;
    for (path, headers, body, _, _) in &cases {
        let resp = c.request("POST", path, headers, body.as_bytes()).await;
        assert_eq!(resp.status, 200, "{path}");
        assert!(
            resp.header("x-ratelimit-limit-requests").is_none(),
            "no limits, no headers"
        );
    }
    let records = gw.wait_records(cases.len());
    for (r, (path, _, _, cost, status)) in records.iter().zip(&cases) {
        assert_eq!(
            (r["cost_micros"].as_u64(), r["cost_status"].as_str().unwrap()),
            (*cost, *status),
            "{path}: {r}"
        );
    }
    let total: u64 = cases.iter().filter_map(|c| c.3).sum();
    assert_eq!(total, 7917);

    // The report sums the same micro-dollars, per group and in all.
    let out = Launch::lmgate()
        .config(&gw.config_path)
        .args(["report", "--by", "provider", "--format", "json"])
        .run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"]["cost_micros"], total);
    assert_eq!(v["total"]["unpriced"], 4);
    for group in v["groups"].as_array().unwrap() {
        let provider = group["provider"].as_str().unwrap();
        let from_records: u64 = records
            .iter()
            .filter(|r| r["provider"] == provider)
            .filter_map(|r| r["cost_micros"].as_u64())
            .sum();
        assert_eq!(group["cost_micros"], from_records, "{provider}");
    }
    // And /metrics counts it per provider and model.
    let m = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    for line in [
        r#"lmgate_cost_micros_total{model="gpt-4o-2024-08-06",provider="openai"} 697"#,
        r#"lmgate_cost_micros_total{model="claude-sonnet-4-5-20250929",provider="anthropic"} 6455"#,
        r#"lmgate_cost_micros_total{model="amazon.nova-lite-v1:0",provider="bedrock"} 231"#,
    ] {
        assert!(m.contains(line), "{line} not in\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_per_minute_answer_429_in_the_provider_shape_with_retry_after() {
    let mock = Mock::providers().await;
    let dir = ConfigDir::new();
    // The owner's limit binds team-b too, though team-b's row names no limits.
    let gw = gateway(
        &mock,
        allowlist_with("rpm=2 owner.rpm=3", ""),
        ROUND_PRICES,
        &dir,
        "",
    );
    start_of_a_minute().await;
    let body = chat_body(5);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = chat_as(&gw, KEY_A, body.as_bytes()).await;
        seen.push((
            r.status,
            r.header("x-ratelimit-limit-requests").map(str::to_owned),
            r.header("x-ratelimit-remaining-requests").map(str::to_owned),
        ));
        if r.status == 429 {
            let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            let v = r.json();
            assert_eq!(v["error"]["code"], "rate_limit_exceeded");
            assert_eq!(v["error"]["type"], "requests");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.starts_with("rate limit reached for key team-a: 2 requests per minute"),
                "{msg}"
            );
            assert!(!msg.contains(KEY_A));
        }
    }
    let s = |n| Some(String::from(n));
    assert_eq!(
        seen,
        [(200, s("2"), s("1")), (200, s("2"), s("0")), (429, None, None)]
    );
    // team-b (same owner): the owner's third request of the minute passes, its fourth not,
    // in the Anthropic shape this time.
    let x = |k| [("x-api-key", k), ("anthropic-version", "2023-06-01")];
    let ok = request(
        &gw.addr(),
        "POST",
        "/anthropic/v1/messages",
        &x(KEY_B),
        br#"{"max_tokens":5}"#,
    )
    .await;
    assert_eq!(ok.status, 200);
    let no = request(
        &gw.addr(),
        "POST",
        "/anthropic/v1/messages",
        &x(KEY_B),
        br#"{"max_tokens":5}"#,
    )
    .await;
    assert_eq!(no.status, 429);
    assert_eq!(no.json()["error"]["type"], "rate_limit_error");
    assert!(no.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("owner alice (all keys)"));
    assert!(no.header("retry-after").is_some());
    // team-c (another owner, no limits) is not affected.
    let free = request(
        &gw.addr(),
        "POST",
        "/anthropic/v1/messages",
        &x(KEY_C),
        br#"{"max_tokens":5}"#,
    )
    .await;
    assert_eq!(free.status, 200);
    // Records by key (the writer may take two requests' records in either order).
    let records = gw.wait_records(6);
    let kinds = |id: &str| {
        let mut k: Vec<&str> = records
            .iter()
            .filter(|r| r["lmgate_id"] == id)
            .map(|r| r["error_type"].as_str().unwrap_or("-"))
            .collect();
        k.sort();
        k
    };
    assert_eq!(kinds("team-a"), ["-", "-", "rate_limited"]);
    assert_eq!(kinds("team-b"), ["-", "rate_limited"]);
    assert_eq!(kinds("team-c"), ["-"]);
    assert_eq!(mock.received().len(), 4, "refusals never reach the provider");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_limits_reserve_the_estimate_and_charge_exact_counts() {
    // The mock answers 9 prompt + 2 completion tokens. The request body is 52 bytes: a
    // reservation of 13 input tokens (4 bytes each) + max_tokens 5 = 18 tokens.
    let mock = Mock::chat().await;
    let dir = ConfigDir::new();
    let gw = gateway(
        &mock,
        allowlist_with("tpm=100 input_tpm=1000 output_tpm=1000", ""),
        ROUND_PRICES,
        &dir,
        "",
    );
    start_of_a_minute().await;
    let body = chat_body(5);
    assert_eq!(body.len(), 52);
    let mut remaining = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let r = chat_as(&gw, KEY_A, body.as_bytes()).await;
        statuses.push(r.status);
        remaining.push(r.header("x-ratelimit-remaining-tokens").map(str::to_owned));
        if r.status == 429 {
            assert_eq!(r.json()["error"]["code"], "rate_limit_exceeded");
            assert!(r.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains("100 tokens per minute"));
        }
    }
    // Admitted while used + 18 <= 100, each settling to 11: 8 pass (77 + 18 = 95), the
    // ninth (88 + 18) does not. The header counts this request's reservation.
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 200, 429, 429]);
    let want: Vec<Option<String>> = (0..8u64)
        .map(|i| Some((100 - 11 * i - 18).to_string()))
        .chain([None, None])
        .collect();
    assert_eq!(remaining, want);
    // A request that alone is over the limit says so (400, not retried).
    let big = chat_as(&gw, KEY_B, b"{}").await;
    assert_eq!(big.status, 200, "team-b has no limits");
    let alone = chat_body(500);
    let r = chat_as(&gw, KEY_A, alone.as_bytes()).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("this request alone may use up to 514"));
}

#[tokio::test(flavor = "multi_thread")]
async fn spent_budgets_are_errors_the_sdks_do_not_retry() {
    let mock = Mock::chat().await;
    let dir = ConfigDir::new();
    // Each answer costs 9 + 2 x 2 = 13 micro-dollars; the reservation is 13 input tokens
    // (52 bytes) + 5 output = 13 + 10 = 23.
    let gw = gateway(
        &mock,
        allowlist_with("usd_per_day=0.00004 tokens_per_month=1000", "tokens_per_day=30"),
        ROUND_PRICES,
        &dir,
        "",
    );
    let body = chat_body(5);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = chat_as(&gw, KEY_A, body.as_bytes()).await;
        statuses.push(r.status);
        if r.status != 200 {
            assert_eq!(r.status, 429);
            assert_eq!(r.header("x-should-retry"), Some("false"));
            assert!(r.header("retry-after").is_none());
            let v = r.json();
            assert_eq!(v["error"]["code"], "insufficient_quota");
            let msg = v["error"]["message"].as_str().unwrap();
            assert!(
                msg.starts_with("budget exhausted for key team-a: daily budget of $0.00004 ($0.000026 used, this request needs up to $0.000023)"),
                "{msg}"
            );
            assert!(msg.contains("resets at ") && msg.ends_with("T00:00:00Z"), "{msg}");
        }
    }
    // 0 + 23 and 13 + 23 fit in 40; 26 + 23 does not.
    assert_eq!(statuses, [200, 200, 429, 429]);
    // Bedrock: a spent budget is a 400 ServiceQuotaExceededException (boto3 retries 429s).
    // Reservation 9 input tokens (36 bytes) + 2 = 11, and each answer settles to 9 + 2:
    // the third would pass 30.
    let b = format!("Bearer {KEY_B}");
    let h: Headers = &[("authorization", &b)];
    let mut last = None;
    for _ in 0..3 {
        last = Some(
            request(
                &gw.addr(),
                "POST",
                "/bedrock/model/amazon.nova-lite-v1:0/converse",
                h,
                br#"{"inferenceConfig":{"maxTokens":2}}"#,
            )
            .await,
        );
    }
    let last = last.unwrap();
    assert_eq!(last.status, 400);
    assert_eq!(
        last.header("x-amzn-errortype"),
        Some("ServiceQuotaExceededException")
    );
    assert!(last.json()["message"]
        .as_str()
        .unwrap()
        .contains("daily token budget of 30"));
    let records = gw.wait_records(7);
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| r["error_type"] == "budget_exceeded")
        .collect();
    assert_eq!(refused.len(), 3, "two of team-a, one of team-b");
    assert!(refused
        .iter()
        .all(|r| r["cost_micros"].is_null() && r["cost_status"] == "no_usage"));
    let bedrock_ok = records
        .iter()
        .filter(|r| r["provider"] == "bedrock" && r["status"] == 200);
    assert!(bedrock_ok
        .map(|r| r["input_tokens"].as_u64())
        .all(|n| n == Some(9)));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unpriced_model_is_refused_under_a_dollar_budget_unless_allowed() {
    let mock = Mock::chat().await;
    let dir = ConfigDir::new();
    let gw = gateway(
        &mock,
        allowlist_with("usd_per_month=10", "usd_per_month=10 unpriced=allow"),
        ROUND_PRICES,
        &dir,
        "",
    );
    let body = br#"{"model":"o9-preview","max_tokens":5}"#;
    let r = chat_as(&gw, KEY_A, body).await;
    assert_eq!(r.status, 400);
    let msg = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("model `o9-preview` on openai has no price"), "{msg}");
    // No model named at all: refused too.
    let r = chat_as(&gw, KEY_A, b"{}").await;
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("names no model"));
    // Allowed: served, recorded as unpriced (the mock answers as gpt-4o-mini, which is
    // priced: the record prices the model the provider says it used).
    let r = chat_as(&gw, KEY_B, body).await;
    assert_eq!(r.status, 200);
    let records = gw.wait_records(3);
    let kinds = |id: &str| -> Vec<Value> {
        records
            .iter()
            .filter(|r| r["lmgate_id"] == id)
            .map(|r| r["error_type"].clone())
            .collect()
    };
    assert_eq!(kinds("team-a"), ["unpriced_model", "unpriced_model"]);
    assert_eq!(kinds("team-b"), [Value::Null]);
    assert_eq!(mock.received().len(), 1);
}

/// The overshoot bound, measured: 50 requests at once against a budget with room for 5.
/// With honest estimates (the reservation covers the answer) no request passes the
/// budget; with estimates set too low on purpose, the overshoot stays within the stated
/// bound: the sum over the admitted requests of (actual - reserved).
#[tokio::test(flavor = "multi_thread")]
async fn fifty_parallel_requests_overshoot_a_budget_by_at_most_what_the_reservations_allow() {
    for (bytes_per_token, budget_micros) in [(4u64, 85u64), (64, 15)] {
        let gate = Arc::new(tokio::sync::Notify::new());
        let g = Arc::clone(&gate);
        let held = Arc::new(AtomicUsize::new(0));
        let h = Arc::clone(&held);
        // Every answer waits until the test lets them all go, so all admitted requests
        // are in flight together.
        let mock = Mock::start(move |_| {
            h.fetch_add(1, Ordering::SeqCst);
            let body = chat_json().into_bytes();
            let mut reply = Reply::full(200, "application/json", body.clone());
            reply.parts = vec![Part::Wait(Arc::clone(&g)), Part::Bytes(body)];
            reply
        })
        .await;
        let dir = ConfigDir::new();
        let dollars = format!("0.{budget_micros:06}");
        let gw = gateway(
            &mock,
            allowlist_with(&format!("usd_per_month={dollars}"), ""),
            ROUND_PRICES,
            &dir,
            &format!("limits:\n  bytes_per_input_token: {bytes_per_token}\n"),
        );
        let body = chat_body(2);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (addr, body) = (gw.addr(), body.clone());
                tokio::spawn(async move {
                    request_as(
                        &addr,
                        KEY_A,
                        "POST",
                        "/openai/v1/chat/completions",
                        body.as_bytes(),
                    )
                    .await
                })
            })
            .collect();
        // Refusals come back at once; the admitted ones wait at the mock.
        let mut results = Vec::new();
        wait_until(
            "every request admitted or refused",
            || {
                let refused = gw.records().len();
                refused + held.load(Ordering::SeqCst) == 50
            },
            || gw.log(),
        )
        .await;
        while held.load(Ordering::SeqCst) > 0 && results.len() < 50 {
            gate.notify_waiters();
            tokio::time::sleep(Duration::from_millis(20)).await;
            if tasks.iter().all(|t| t.is_finished()) {
                break;
            }
        }
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let admitted = results.iter().filter(|r| r.status == 200).count() as u64;
        let refused = results.iter().filter(|r| r.status == 429).count() as u64;
        assert_eq!(admitted + refused, 50);
        let records = gw.wait_records(50);
        let spent: u64 = records.iter().filter_map(|r| r["cost_micros"].as_u64()).sum();
        // Each answer costs 9 + 2 x 2 = 13; the reservation is 13 input + 2 output = 17 at
        // 4 bytes a token (above the cost), 1 + 4 = 5 at 64 bytes a token (below it).
        let reserved = if bytes_per_token == 4 { 17 } else { 5 };
        assert_eq!(
            admitted,
            budget_micros / reserved,
            "admitted at once: as many reservations as fit"
        );
        let overshoot = spent.saturating_sub(budget_micros);
        let bound = admitted * 13u64.saturating_sub(reserved);
        assert!(overshoot <= bound, "overshoot {overshoot} > bound {bound}");
        if bytes_per_token == 4 {
            assert_eq!(overshoot, 0);
        } else {
            assert_eq!(overshoot, admitted * 13 - budget_micros);
        }
        eprintln!(
            "50 parallel, budget {budget_micros} µ$, reservation {reserved} µ$: admitted {admitted}, \
             spent {spent} µ$, overshoot {overshoot} µ$ (bound {bound})"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_cut_mid_way_is_charged_its_reservation() {
    let body = fixture("anthropic_stream.sse");
    let cut = find(&body, b"event: message_delta").unwrap();
    let (mock, gate) = Mock::paused_stream(&body[..cut], &[&body[cut..]]).await;
    let dir = ConfigDir::new();
    let gw = gateway(
        &mock,
        allowlist_with("usd_per_month=1", ""),
        ROUND_PRICES,
        &dir,
        "",
    );
    let req = br#"{"model":"claude-sonnet-4-5-20250929","max_tokens":1000,"stream":true}"#;
    let (mut c, status, _) = Client::open(
        &gw.addr(),
        "POST",
        "/anthropic/v1/messages",
        &[("x-api-key", KEY_A)],
        req,
    )
    .await;
    assert_eq!(status, 200);
    assert!(c.read_chunk().await.is_some());
    drop(c);
    let r = &gw.wait_records(1)[0];
    gate.notify_one();
    assert_eq!(r["usage_status"], "truncated");
    // Seen: 472 input, 2048 cache read, 12 cache write, 2 output = 472 + 1024 + 36 + 4 =
    // 1536. Reserved: 70 bytes -> 18 input tokens + 1000 output = 18 + 2000 = 2018: the
    // larger is charged (the output tokens sent before the cut are not counted by the
    // provider until its last event, so the reservation is the bound).
    assert_eq!(req.len(), 70);
    assert_eq!(
        (r["cost_micros"].as_u64(), r["cost_status"].as_str()),
        (Some(2018), Some("partial"))
    );
    assert_eq!(r["status"], 200);
}

/// Spend survives a restart and a graceful upgrade: both rebuild it from the records.
#[tokio::test(flavor = "multi_thread")]
async fn restart_and_upgrade_keep_the_spend() {
    let mock = Mock::chat().await;
    let dir = ConfigDir::new();
    // Room for five requests of 13 (reservation 23): 4 x 13 + 23 = 75.
    let mut gw = gateway(
        &mock,
        allowlist_with("usd_per_month=0.000075", ""),
        ROUND_PRICES,
        &dir,
        "",
    );
    let body = chat_body(5);
    let send = |addr: String| {
        let body = body.clone();
        async move {
            request_as(
                &addr,
                KEY_A,
                "POST",
                "/openai/v1/chat/completions",
                body.as_bytes(),
            )
            .await
            .status
        }
    };
    for _ in 0..4 {
        assert_eq!(send(gw.addr()).await, 200);
    }
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit().success());
    gw.child = Some(gw.launch().spawn());
    gw.wait_ready();
    gw.wait_log(&["spend of 1 limited key ids rebuilt from 4 records"])
        .await;
    assert_eq!(send(gw.addr()).await, 200, "the fifth fits");
    assert_eq!(
        send(gw.addr()).await,
        429,
        "the sixth does not: the restart refilled nothing"
    );

    // A graceful upgrade: the new process rebuilds from the records too.
    gw.wait_records(6);
    let old = gw.child.take().unwrap();
    let new = gw.launch().arg("--upgrade").spawn();
    // Let the new process reach the upgrade socket before the old one hands over.
    wait_until(
        "the new process waits for the listeners",
        || {
            gw.log()
                .matches("spend of 1 limited key ids rebuilt from 5 records")
                .count()
                == 1
        },
        || gw.log(),
    )
    .await;
    send_signal(old.id(), libc::SIGQUIT);
    let mut old = ChildGuard(Some(old));
    gw.child = Some(new);
    wait_until(
        "the old process exits",
        || old.0.as_mut().unwrap().try_wait().unwrap().is_some(),
        || gw.log(),
    )
    .await;
    assert_eq!(send(gw.addr()).await, 429, "the upgrade refilled nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_price_file_reload_changes_costs_and_a_bad_one_keeps_the_last_good() {
    let mock = Mock::chat().await;
    let dir = ConfigDir::new();
    let gw = gateway(&mock, default_allowlist(), ROUND_PRICES, &dir, "");
    let cost = || async {
        let n = gw.records().len();
        let r = chat_as(&gw, KEY_A, b"{}").await;
        assert_eq!(r.status, 200);
        gw.wait_records(n + 1)[n]["cost_micros"].as_u64()
    };
    assert_eq!(cost().await, Some(9 + 2 * 2));
    let path = dir.path("prices.csv");
    let tmp = dir.path("prices.csv.tmp");
    std::fs::write(
        &tmp,
        "provider,model,input,output\nopenai,gpt-4o-mini,10000000,20000000\n",
    )
    .unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    gw.wait_log(&["prices reloaded: 0 snapshot rows, 1 override rows"])
        .await;
    assert_eq!(cost().await, Some(90 + 40));
    std::fs::write(&tmp, "provider,model,input,output\nopenai,gpt-4o-mini,2.5,1\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    gw.wait_log(&[
        "price reload rejected, keeping the prices in use",
        "line 2: `input`: `2.5`",
    ])
    .await;
    assert_eq!(cost().await, Some(130));
    // `lmgate check` names the bad file, line and column.
    let out = Launch::lmgate().config(&gw.config_path).arg("check").run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success());
    assert!(
        text.contains("prices error: ") && text.contains("prices.csv: line 2: `input`"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_limits_column_fails_the_start_and_a_bad_reload_keeps_the_meters() {
    let dir = ConfigDir::new();
    let mock = Mock::chat().await;
    let bad = allowlist_with("rpm=ten", "");
    let mut gw = Gateway::spawn(GatewayOpts {
        yaml: all_providers_at(mock.port),
        allowlist: bad,
        ..Default::default()
    });
    assert!(!gw.wait_exit().success());
    assert!(
        gw.log()
            .contains("line 2: `limits`: `rpm`: `ten` is not a whole number"),
        "{}",
        gw.log()
    );
    let gw = gateway(&mock, allowlist_with("rpm=1", ""), ROUND_PRICES, &dir, "");
    start_of_a_minute().await;
    assert_eq!(chat_as(&gw, KEY_A, b"{}").await.status, 200);
    std::fs::write(
        &gw.allowlist_path,
        allowlist_with("rpm=1 owner.rpm=2", "owner.rpm=3"),
    )
    .unwrap();
    gw.wait_log(&[
        "allowlist reload of",
        "owner `alice`: its owner.* limits differ from line 2",
    ])
    .await;
    assert_eq!(
        chat_as(&gw, KEY_A, b"{}").await.status,
        429,
        "the last good list and its meter still apply"
    );
}

/// Each limit kind on its own key, refused at the request the arithmetic says. The mock
/// answers 9 input + 2 output tokens (13 micro-dollars); each request reserves 13 input +
/// 5 output tokens (23 micro-dollars).
#[tokio::test(flavor = "multi_thread")]
async fn each_limit_kind_refuses_at_its_own_count() {
    let mock = Mock::chat().await;
    let dir = ConfigDir::new();
    // (id, limits, the kind's refusal code, admitted before the first refusal)
    let cases = [
        ("in-tpm", "input_tpm=30", "rate_limit_exceeded", 2),
        ("out-tpm", "output_tpm=12", "rate_limit_exceeded", 4),
        ("tok-month", "tokens_per_month=40", "insufficient_quota", 3),
        ("usd-month", "usd_per_month=0.00004", "insufficient_quota", 2),
        ("owner-day-1", "owner.tokens_per_day=40", "insufficient_quota", 3),
    ];
    let key = |id: &str| format!("sk-test-limit-{id}-0123456789");
    let mut csv = String::from("id,api_key,owner,added,limits\n");
    for (id, limits, _, _) in &cases {
        csv.push_str(&format!("{id},{},{id}-owner,2026-01-01,{limits}\n", key(id)));
    }
    // A second key of the owner of `owner-day-1`, without limits of its own.
    csv.push_str(&format!(
        "owner-day-2,{},owner-day-1-owner,2026-01-01,\n",
        key("owner-day-2")
    ));
    let gw = gateway(&mock, csv, ROUND_PRICES, &dir, "");
    start_of_a_minute().await;
    let body = chat_body(5);
    for (id, limits, code, admitted) in cases {
        let mut n = 0;
        loop {
            // The owner case alternates between the owner's two keys.
            let k = if id == "owner-day-1" && n % 2 == 1 {
                key("owner-day-2")
            } else {
                key(id)
            };
            let r = chat_as(&gw, &k, body.as_bytes()).await;
            if r.status == 200 {
                n += 1;
                assert!(n <= admitted, "{id}: more than {admitted} admitted");
                continue;
            }
            assert_eq!(r.status, 429, "{id}");
            assert_eq!(r.json()["error"]["code"], code, "{id} ({limits})");
            break;
        }
        assert_eq!(n, admitted, "{id} ({limits})");
    }
}

/// A request the old process finishes after a graceful upgrade handed its sockets over:
/// its record lands after the new process rebuilt the spend, and the new one counts it.
#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_counts_what_the_old_process_finishes_after_the_handover() {
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = Arc::clone(&gate);
    let mock = Mock::start(move |req| {
        let body = chat_json().into_bytes();
        let mut reply = Reply::full(200, "application/json", body.clone());
        if find(&req.body, b"hold").is_some() {
            reply.parts = vec![Part::Wait(Arc::clone(&g)), Part::Bytes(body)];
        }
        reply
    })
    .await;
    let dir = ConfigDir::new();
    // Room for 75 micro-dollars: each answer costs 13, each reservation 23.
    let mut gw = gateway(
        &mock,
        allowlist_with("usd_per_month=0.000075", ""),
        ROUND_PRICES,
        &dir,
        "",
    );
    for _ in 0..2 {
        assert_eq!(chat_as(&gw, KEY_A, chat_body(5).as_bytes()).await.status, 200);
    }
    // A request the old process holds through the handover (the same length as the
    // others: "hold" replaces 4 characters of the model name).
    let held_body = r#"{"model":"gpt-4o-hold","max_tokens":5,"messages":[]}"#;
    assert_eq!(held_body.len(), chat_body(5).len());
    let addr = gw.addr();
    let held = tokio::spawn(async move {
        request_as(
            &addr,
            KEY_A,
            "POST",
            "/openai/v1/chat/completions",
            held_body.as_bytes(),
        )
        .await
    });
    wait_until(
        "the held request reaches the mock",
        || mock.received().len() == 3,
        || gw.log(),
    )
    .await;

    gw.wait_records(2);
    let old = gw.child.take().unwrap();
    gw.child = Some(gw.launch().arg("--upgrade").spawn());
    wait_until(
        "the new process rebuilt the spend",
        || {
            gw.log()
                .contains("spend of 1 limited key ids rebuilt from 2 records")
        },
        || gw.log(),
    )
    .await;
    send_signal(old.id(), libc::SIGQUIT);
    let mut old = ChildGuard(Some(old));
    // The old process answers the held request (its record lands after the rebuild,
    // whenever the handover happens), then exits.
    gate.notify_waiters();
    wait_until("the held request is answered", || held.is_finished(), || gw.log()).await;
    assert_eq!(held.await.unwrap().status, 200);
    wait_until(
        "the old process exits",
        || old.0.as_mut().unwrap().try_wait().unwrap().is_some(),
        || gw.log(),
    )
    .await;
    gw.wait_log(&["spend catch-up: 1 records of another process added"])
        .await;
    // 3 x 13 = 39 spent: 39 + 23 and 52 + 23 fit, 65 + 23 does not. Without the
    // catch-up a third request would fit.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(chat_as(&gw, KEY_A, chat_body(5).as_bytes()).await.status);
    }
    assert_eq!(statuses, [200, 200, 429]);
}
