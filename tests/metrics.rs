//! `/metrics` after real traffic through the binary, compared with the stats file.

mod common;

use common::*;
use std::collections::HashMap;

const CLAUDE_JSON: &str =
    r#"{"model":"claude-x","usage":{"input_tokens":30,"output_tokens":7,"cache_read_input_tokens":4}}"#;

/// `name{labels} value` lines -> map from `name{labels}` to value.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Claude answers on `/v1/messages`, a 500 on `/v1/fail`, [`chat_json`] on anything else.
async fn mock() -> Mock {
    let chat = chat_json();
    Mock::start(move |req| {
        if req.target.starts_with("/v1/messages") {
            Reply::json(200, CLAUDE_JSON)
        } else if req.target.starts_with("/v1/fail") {
            Reply::json(500, r#"{"error":"boom"}"#)
        } else {
            Reply::json(200, &chat)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_the_stats_file_after_real_traffic() {
    let mock = mock().await;
    let gw = Gateway::for_mock(&mock, "");
    let auth = format!("Bearer {KEY_A}");
    let mut c = Client::connect(&gw.addr()).await;
    for _ in 0..3 {
        assert_eq!(
            c.request(
                "POST",
                "/openai/v1/chat/completions",
                &[("authorization", &auth)],
                b"{}"
            )
            .await
            .status,
            200
        );
    }
    for _ in 0..2 {
        assert_eq!(
            c.request("POST", "/anthropic/v1/messages", &[("x-api-key", KEY_B)], b"{}")
                .await
                .status,
            200
        );
    }
    assert_eq!(
        c.request("POST", "/openai/v1/fail", &[("authorization", &auth)], b"{}")
            .await
            .status,
        500
    );
    assert_eq!(
        c.request("POST", "/openai/v1/x", &[("authorization", "Bearer nope")], b"{}")
            .await
            .status,
        403
    );
    let records = gw.wait_records(7);

    let resp = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text();
    let m = parse_metrics(&text);
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("{k} missing in:\n{text}"))
    };

    // Requests by provider and class, from the records.
    let mut by_class: HashMap<(String, String), f64> = HashMap::new();
    for r in &records {
        let class = format!("{}xx", r["status"].as_u64().unwrap() / 100);
        *by_class
            .entry((r["provider"].as_str().unwrap().to_string(), class))
            .or_default() += 1.0;
    }
    for ((p, class), n) in &by_class {
        assert_eq!(
            get(&format!(
                "lmgate_requests_total{{provider=\"{p}\",status_class=\"{class}\"}}"
            )),
            *n
        );
    }
    // Tokens by provider and model equal the sums in the stats file.
    let mut tokens: HashMap<(String, String), (f64, f64)> = HashMap::new();
    for r in records.iter().filter(|r| r["input_tokens"].is_u64()) {
        let e = tokens
            .entry((
                r["provider"].as_str().unwrap().into(),
                r["model"].as_str().unwrap().into(),
            ))
            .or_default();
        e.0 += r["input_tokens"].as_f64().unwrap();
        e.1 += r["output_tokens"].as_f64().unwrap();
    }
    assert_eq!(tokens.len(), 2);
    for ((p, model), (i, o)) in &tokens {
        assert_eq!(
            get(&format!(
                "lmgate_input_tokens_total{{model=\"{model}\",provider=\"{p}\"}}"
            )),
            *i
        );
        assert_eq!(
            get(&format!(
                "lmgate_output_tokens_total{{model=\"{model}\",provider=\"{p}\"}}"
            )),
            *o
        );
    }
    assert_eq!(
        get(r#"lmgate_input_tokens_total{model="gpt-4o-mini",provider="openai"}"#),
        27.0
    );
    assert_eq!(
        get(r#"lmgate_cache_read_input_tokens_total{model="claude-x",provider="anthropic"}"#),
        8.0
    );
    assert_eq!(
        get(r#"lmgate_errors_total{kind="upstream_http",provider="openai"}"#),
        1.0
    );
    assert_eq!(
        get(r#"lmgate_errors_total{kind="forbidden",provider="openai"}"#),
        1.0
    );
    assert_eq!(
        get(r#"lmgate_request_duration_seconds_count{provider="openai"}"#),
        5.0
    );
    assert_eq!(
        get(r#"lmgate_time_to_first_byte_seconds_count{provider="anthropic"}"#),
        2.0
    );
    assert_eq!(
        get("lmgate_requests_in_flight"),
        0.0,
        "the scrape on its own listener is not a proxied request"
    );
    assert_eq!(get("lmgate_allowlist_keys"), 2.0);
    assert_eq!(get("lmgate_stats_records_written_total"), records.len() as f64);
    assert_eq!(get("lmgate_stats_records_dropped_total"), 0.0);
    assert!(get("lmgate_allowlist_loaded_timestamp_seconds") > 1.7e9);
    // No key material and no key ids by default.
    for secret in [KEY_A, KEY_B, "AAAAAA", "BBBBBB", "team-a", "team-b"] {
        assert!(!text.contains(secret), "{secret} leaked into /metrics");
    }
    // The scrape is not a usage record.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(gw.records().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_are_off_the_client_port_with_per_key_labels() {
    let mock = mock().await;
    let gw = Gateway::for_mock(&mock, "metrics:\n  per_key_labels: true\n");
    let resp = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
    assert_eq!(resp.status, 200);
    // The client port does not serve them: there /metrics is an unknown path.
    let on_client_port = request(&gw.addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(on_client_port.status, 404);
    assert_eq!(on_client_port.json()["error"], "no_route");
    let resp = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(resp.status, 200);
    let m = parse_metrics(&resp.text());
    assert_eq!(
        m.get(r#"lmgate_key_requests_total{lmgate_id="team-a"}"#),
        Some(&1.0)
    );
    assert_eq!(
        m.get(r#"lmgate_key_tokens_total{direction="input",lmgate_id="team-a"}"#),
        Some(&9.0)
    );
    assert!(!resp.text().contains(KEY_A));
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_reloads_are_counted() {
    let mock = mock().await;
    let gw = Gateway::for_mock(&mock, "");
    std::fs::write(&gw.allowlist_path, "id,api_key,owner,added\nbroken\n").unwrap();
    let start = std::time::Instant::now();
    loop {
        let m = parse_metrics(
            &request(&gw.metrics_addr(), "GET", "/metrics", &[], b"")
                .await
                .text(),
        );
        if m.get(r#"lmgate_allowlist_reloads_total{result="rejected"}"#) == Some(&1.0) {
            assert_eq!(m.get("lmgate_allowlist_last_reload_ok"), Some(&0.0));
            assert_eq!(m.get("lmgate_allowlist_keys"), Some(&2.0), "last good list kept");
            break;
        }
        assert!(start.elapsed() < DEADLINE, "rejection never counted");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_on_the_main_port_only_when_asked() {
    let mock = mock().await;
    let gw = Gateway::for_mock(&mock, "metrics:\n  listen: main\n");
    let resp = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
    assert_eq!(resp.status, 200);
    let resp = request(&gw.addr(), "GET", "/metrics", &[], b"").await;
    assert_eq!(resp.status, 200);
    let m = parse_metrics(&resp.text());
    assert_eq!(
        m.get(r#"lmgate_requests_total{provider="openai",status_class="2xx"}"#),
        Some(&1.0)
    );
    // No separate listener then.
    assert!(std::net::TcpStream::connect(gw.metrics_addr()).is_err());
}
