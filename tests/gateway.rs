//! Gateway core through the real binary: routing, byte-exact passthrough, keys, hot reload,
//! streaming without buffering, upstream failures, bad config, graceful stop.

mod common;

/// Request headers as the raw client takes them.
type Headers<'a> = Vec<(&'a str, &'a str)>;

use common::*;

#[tokio::test(flavor = "multi_thread")]
async fn forwards_method_path_query_headers_and_body_unchanged() {
    let (mock, gw) = chat_gateway().await;
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi \u00e9"}]}"#;
    let auth = format!("Bearer {KEY_A}");
    let resp = request(
        &gw.addr(),
        "POST",
        "/openai/v1/chat/completions?api-version=2024%3A01&x=a%2Fb",
        &[
            ("authorization", &auth),
            ("x-custom", "Keep Me"),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), chat_json(), "response body byte-exact");
    let got = mock.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.target, "/v1/chat/completions?api-version=2024%3A01&x=a%2Fb");
    assert_eq!(r.body, body);
    assert_eq!(
        r.header("authorization"),
        Some(auth.as_str()),
        "the provider needs the key"
    );
    assert_eq!(r.header("x-custom"), Some("Keep Me"));
    assert_eq!(
        r.header("host"),
        Some(format!("127.0.0.1:{}", mock.port).as_str())
    );
    assert!(r.header("x-forwarded-for").is_none());
    assert!(r.header("forwarded").is_none());
    assert!(r.header("via").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_connections_are_reused() {
    let (mock, gw) = chat_gateway().await;
    for _ in 0..10 {
        // A new client connection each time: only the upstream side can be reused.
        let resp = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
        assert_eq!(resp.status, 200);
    }
    assert_eq!(mock.received().len(), 10);
    let conns = mock.connections.load(std::sync::atomic::Ordering::SeqCst);
    // Two proxy threads may each hold a pooled connection.
    assert!(
        conns <= 2,
        "{conns} upstream connections for 10 sequential requests"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_base_path_is_joined_without_doubling_slashes() {
    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = Gateway::start(GatewayOpts {
        yaml: format!(
            "providers:\n  local:\n    upstream: http://127.0.0.1:{}/v1/\n    prefix: /local/\n",
            mock.port
        ),
        ..Default::default()
    });
    for (sent, expected) in [
        ("/local/chat/completions", "/v1/chat/completions"),
        ("/local", "/v1"),
        ("/local/models/a%3Ab?q=1", "/v1/models/a%3Ab?q=1"),
    ] {
        let resp = request_as(&gw.addr(), KEY_A, "GET", sent, b"").await;
        assert_eq!(resp.status, 200, "{sent}");
        assert_eq!(mock.received().last().unwrap().target, expected, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_prefix_gets_404_json_and_healthz_needs_no_key() {
    let (mock, gw) = chat_gateway().await;
    for path in ["/openaix/v1/chat", "/nope/v1", "/", "//openai/v1", "/%6fpenai/v1"] {
        let resp = request_as(&gw.addr(), KEY_A, "GET", path, b"").await;
        assert_eq!(resp.status, 404, "{path}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(resp.json()["error"], "no_route");
    }
    let resp = request(&gw.addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!((resp.status, resp.text().as_str()), (200, "ok"));
    assert!(mock.received().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_key_source_is_accepted() {
    let (mock, gw) = chat_gateway().await;
    let bearer = format!("Bearer {KEY_A}");
    let cases: Vec<(&str, String, Headers)> = vec![
        (
            "/openai/v1/models",
            "/v1/models".into(),
            vec![("authorization", bearer.as_str())],
        ),
        (
            "/anthropic/v1/messages",
            "/v1/messages".into(),
            vec![("x-api-key", KEY_A)],
        ),
        (
            "/gemini/v1beta/models",
            "/v1beta/models".into(),
            vec![("x-goog-api-key", KEY_B)],
        ),
        (
            &*Box::leak(format!("/gemini/v1beta/models?key={KEY_B}").into_boxed_str()),
            format!("/v1beta/models?key={KEY_B}"),
            vec![],
        ),
    ];
    for (path, upstream_target, headers) in cases {
        let resp = request(&gw.addr(), "GET", path, &headers, b"").await;
        assert_eq!(resp.status, 200, "{path}");
        assert_eq!(mock.received().last().unwrap().target, upstream_target);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_get_the_exact_403_and_nothing_reaches_upstream() {
    let (mock, gw) = chat_gateway().await;
    let unknown = format!("Bearer {KEY_C}");
    let empty = "Bearer ".to_string();
    let cases: Vec<(&str, Headers)> = vec![
        ("/openai/v1/models", vec![]),
        ("/openai/v1/models", vec![("authorization", unknown.as_str())]),
        ("/openai/v1/models", vec![("authorization", empty.as_str())]),
        ("/anthropic/v1/messages", vec![("x-api-key", "")]),
        // A present higher source wins: an unknown bearer is not rescued by a good x-api-key.
        (
            "/anthropic/v1/messages",
            vec![("authorization", unknown.as_str()), ("x-api-key", KEY_A)],
        ),
        ("/gemini/v1beta/models?key=sk-test-nope", vec![]),
    ];
    for (path, headers) in cases {
        let resp = request(&gw.addr(), "POST", path, &headers, b"{}").await;
        assert_eq!(resp.status, 403, "{path} {headers:?}");
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.text(),
            r#"{"error":"forbidden","message":"API key not authorized"}"#
        );
    }
    assert!(
        mock.received().is_empty(),
        "a rejected request must not reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn connection_stays_usable_after_a_403() {
    let (mock, gw) = chat_gateway().await;
    let mut c = Client::connect(&gw.addr()).await;
    let resp = c
        .request("POST", "/openai/v1/chat/completions", &[], br#"{"a":1}"#)
        .await;
    assert_eq!(resp.status, 403);
    let auth = format!("Bearer {KEY_A}");
    let resp = c
        .request(
            "POST",
            "/openai/v1/chat/completions",
            &[("authorization", &auth)],
            br#"{"a":1}"#,
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), chat_json());
    assert_eq!(mock.received().len(), 1);
}

async fn status_with(gw: &Gateway, key: &str) -> u16 {
    request_as(&gw.addr(), key, "GET", "/openai/v1/models", b"")
        .await
        .status
}

async fn wait_status(gw: &Gateway, key: &str, want: u16) {
    let start = std::time::Instant::now();
    while status_with(gw, key).await != want {
        assert!(
            start.elapsed() < DEADLINE,
            "key never got {want}; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_hot_reload_sees_appends_and_renames_and_keeps_last_good() {
    let (_mock, gw) = chat_gateway().await;
    assert_eq!(status_with(&gw, KEY_C).await, 403);

    // In-place append.
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&gw.allowlist_path)
            .unwrap();
        writeln!(f, "team-c,{KEY_C},carol,2026-02-01").unwrap();
    }
    wait_status(&gw, KEY_C, 200).await;

    // A half-written / malformed file is rejected: the last good list stays.
    std::fs::write(
        &gw.allowlist_path,
        format!("id,api_key,owner,added\nteam-a,{KEY_A},alice\n"),
    )
    .unwrap();
    gw.wait_log(&["allowlist reload", "rejected"]).await;
    assert_eq!(status_with(&gw, KEY_C).await, 200, "last good list kept");
    assert_eq!(status_with(&gw, KEY_B).await, 200);

    // Deleted: still the last good list.
    std::fs::remove_file(&gw.allowlist_path).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(status_with(&gw, KEY_A).await, 200);

    // Atomic rename of a new list: only KEY_B remains.
    let tmp = gw.dir.path().join("allowlist.csv.tmp");
    std::fs::write(
        &tmp,
        format!("id,api_key,owner,added\nteam-b,{KEY_B},bob,2026-01-02\n"),
    )
    .unwrap();
    std::fs::rename(&tmp, &gw.allowlist_path).unwrap();
    wait_status(&gw, KEY_A, 403).await;
    assert_eq!(status_with(&gw, KEY_B).await, 200);
    assert_eq!(status_with(&gw, KEY_C).await, 403);

    let log = gw.log();
    assert!(
        log.contains("+0 -2") || log.contains("-2"),
        "reload logs counts:\n{log}"
    );
    for k in [KEY_A, KEY_B, KEY_C] {
        assert!(!log.contains(k), "a key leaked into the log");
    }
}

/// A chat completion request with KEY_A on a new connection, its response head read.
async fn open_chat(gw: &Gateway, body: &[u8]) -> (Client, u16, Vec<(String, String)>) {
    let (name, value) = bearer(KEY_A);
    Client::open(
        &gw.addr(),
        "POST",
        "/openai/v1/chat/completions",
        &[(name, &value)],
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_reach_the_client_before_the_upstream_sends_the_next() {
    let (mock, gate) = Mock::paused_stream(
        b"data: {\"n\":1}\n\n",
        &[b"data: {\"n\":2}\n\n", b"data: [DONE]\n\n"],
    )
    .await;
    let gw = Gateway::for_mock(&mock, "");
    let (mut c, status, headers) = open_chat(&gw, br#"{"stream":true}"#).await;
    assert_eq!(status, 200);
    assert!(headers
        .iter()
        .any(|(k, v)| k == "content-type" && v == "text/event-stream"));
    // The mock is parked before event 2: event 1 must already be here.
    let first = c.read_chunk().await.unwrap();
    assert_eq!(first, b"data: {\"n\":1}\n\n");
    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = c.read_chunk().await {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: {\"n\":2}\n\ndata: [DONE]\n\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_failures_map_to_502_and_504_with_json() {
    let dead_port = free_port();
    let hang = Mock::start(|_| Reply {
        hang: true,
        ..Reply::json(200, "")
    })
    .await;
    let gw = Gateway::start(GatewayOpts {
        yaml: format!(
            "upstream:\n  read_timeout_seconds: 1\n  connect_timeout_seconds: 2\nproviders:\n  dead:\n    upstream: http://127.0.0.1:{dead_port}\n  slow:\n    upstream: http://127.0.0.1:{}\n  nxdomain:\n    upstream: http://lmgate-test.invalid:80\n",
            hang.port
        ),
        ..Default::default()
    });
    for (path, status, kind) in [
        ("/dead/v1/x", 502, "upstream_connect"),
        ("/nxdomain/v1/x", 502, "upstream_connect"),
        ("/slow/v1/x", 504, "upstream_timeout"),
    ] {
        let resp = request_as(&gw.addr(), KEY_A, "GET", path, b"").await;
        assert_eq!(resp.status, status, "{path}");
        assert_eq!(resp.header("content-type"), Some("application/json"), "{path}");
        assert_eq!(resp.json()["error"], kind, "{path}");
    }
    // Still serving.
    let resp = request(&gw.addr(), "GET", "/healthz", &[], b"").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn query_keys_never_reach_the_log() {
    let dead_port = free_port();
    let gw = Gateway::start(GatewayOpts {
        yaml: format!("providers:\n  gemini:\n    upstream: http://127.0.0.1:{dead_port}\n"),
        ..Default::default()
    });
    let path = format!("/gemini/v1beta/models/m:generateContent?key={KEY_A}");
    let resp = request(&gw.addr(), "POST", &path, &[], b"{}").await;
    assert_eq!(resp.status, 502);
    let path = format!("/gemini/v1beta/models/m:generateContent?key={KEY_C}");
    assert_eq!(request(&gw.addr(), "POST", &path, &[], b"{}").await.status, 403);
    let log = gw.log();
    assert!(log.contains("generateContent"), "the failure is logged:\n{log}");
    assert!(
        !log.contains(KEY_A) && !log.contains(KEY_C),
        "a key leaked:\n{log}"
    );
}

#[test]
fn bad_config_fails_before_listening_naming_file_key_and_reason() {
    let dir = ConfigDir::new();
    let auth = dir.auth_yaml();
    let cases: Vec<(String, Headers, &str)> = vec![
        (
            format!("{auth}server: {{port: not-a-port}}\n"),
            vec![],
            "server.port",
        ),
        (
            format!("{auth}server: {{prot: 1}}\n"),
            vec![],
            "unknown field `prot`",
        ),
        (format!("{auth}server: [\n"), vec![], "bad.yaml"),
        (
            format!("{auth}providers: {{x: {{upstream: 'ftp://h'}}}}\n"),
            vec![],
            "providers.x.upstream",
        ),
        (
            auth.clone(),
            vec![("LMGATE_SERVER__PORT", "eighty")],
            "LMGATE_SERVER__PORT",
        ),
        (
            auth.clone(),
            vec![("LMGATE_PROVIDERS__OPENAI__UPSTREAM", "nope")],
            "providers.openai.upstream",
        ),
        (
            "auth: {allowlist_path: /nonexistent/allow.csv}\n".into(),
            vec![],
            "/nonexistent/allow.csv",
        ),
    ];
    for (yaml, env, needle) in cases {
        let cfg = dir.write("bad.yaml", &yaml);
        let (status, out) = run_binary(&cfg, &env);
        assert!(!status.success(), "{yaml} must fail");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {out}");
        assert!(out.contains(needle), "{needle} not in: {out}");
    }
    // Missing config file.
    let (status, out) = run_binary(&dir.path("missing.yaml"), &[]);
    assert!(!status.success());
    assert!(
        out.contains("missing.yaml") && out.contains("cannot read"),
        "{out}"
    );
    // Malformed allow-list at start: fail closed.
    std::fs::write(&dir.allowlist, "id,api_key,owner,added\n1,k\n").unwrap();
    let (status, out) = run_binary(&dir.write("bad.yaml", &auth), &[]);
    assert!(!status.success());
    assert!(out.contains("allow.csv") && out.contains("line 2"), "{out}");
}

#[test]
fn env_override_sets_the_port() {
    let port = free_port();
    // The config file says port 1; the gateway must answer on the port from the environment.
    let gw = Gateway::start(GatewayOpts {
        yaml: "server:\n  port: 1\n".into(),
        env: vec![("LMGATE_SERVER__PORT".into(), port.to_string())],
        port: Some(port),
        ..Default::default()
    });
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&gw.config_path).unwrap()).unwrap();
    assert_eq!(config["server"]["port"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_gateway_exits_zero_promptly_on_sigterm() {
    let (_mock, mut gw) = chat_gateway().await;
    let t = std::time::Instant::now();
    gw.signal(libc::SIGTERM);
    let st = gw.wait_exit();
    assert!(st.success(), "exit status {st:?}");
    // Not a timing assertion on speed: Pingora's default would wait 300 s; this only checks
    // the drain did not sit on a fixed grace period (the harness deadline is 20 s).
    assert!(
        t.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_in_flight_at_sigterm_completes() {
    let (mock, gate) = Mock::paused_stream(b"data: 1\n\n", &[b"data: 2\n\n"]).await;
    let mut gw = Gateway::for_mock(&mock, "");
    let (mut c, status, _) = open_chat(&gw, b"{}").await;
    assert_eq!(status, 200);
    assert_eq!(c.read_chunk().await.unwrap(), b"data: 1\n\n");
    gw.signal(libc::SIGTERM);
    // The gateway must still be running with the request open.
    gw.wait_log(&["draining 1 in-flight"]).await;
    assert!(
        gw.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "exited with a request in flight"
    );
    gate.notify_one();
    assert_eq!(c.read_chunk().await.unwrap(), b"data: 2\n\n");
    assert!(c.read_chunk().await.is_none());
    assert!(gw.wait_exit().success());
}
