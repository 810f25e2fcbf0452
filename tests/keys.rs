//! Gateway keys and scopes through the real binary: `lmgate keys new|list`, hot reload of
//! an issued key, provider and model scopes refused in each provider's error shape, the
//! body read whole for a model scope (forwarded byte for byte), the buffered-body limit,
//! and the four-column allow-list loading as before.

mod common;

use common::*;
use lmgate::hashed_form;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// KEY_A: no scope. KEY_B: provider `gemini` only. KEY_C: models only (pass-through keys
/// with scopes, so these tests do not depend on provider credentials).
fn scoped_allowlist() -> String {
    format!(
        "id,api_key,owner,added,mode,providers,models\n\
         team-a,{KEY_A},alice,2026-01-01,,,\n\
         team-b,{KEY_B},bob,2026-01-02,passthrough,gemini,\n\
         team-c,{KEY_C},carol,2026-01-03,,,gpt-4o* gemini-2.0-* anthropic.claude-3-5-* claude-3-5-*\n"
    )
}

async fn scoped_gateway(extra_yaml: &str) -> (Mock, Gateway) {
    let mock = Mock::chat().await;
    let gw = Gateway::start(GatewayOpts {
        yaml: format!("{}{extra_yaml}", all_providers_at(mock.port)),
        allowlist: scoped_allowlist(),
        ..Default::default()
    });
    (mock, gw)
}

/// `lmgate <args>`: (success, stdout, stderr).
fn lmgate(args: &[&str]) -> (bool, String, String) {
    let out = Launch::lmgate().args(args).run();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `lmgate keys new --id team-new --owner carol <more>`.
fn issue_team_new(more: &[&str]) -> (bool, String, String) {
    let mut args = vec!["keys", "new", "--id", "team-new", "--owner", "carol"];
    args.extend_from_slice(more);
    lmgate(&args)
}

/// Panics if `needle` appears in the gateway's log or stats files.
fn assert_not_leaked(gw: &Gateway, needle: &str) {
    let mut texts = vec![gw.log()];
    for e in std::fs::read_dir(gw.stats_path.parent().unwrap())
        .unwrap()
        .flatten()
    {
        texts.push(String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()).to_string());
    }
    assert!(texts.iter().all(|t| !t.contains(needle)), "a gateway key leaked");
}

/// The record of the request to `endpoint` (the last one).
fn record_for(gw: &Gateway, endpoint: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        if let Some(r) = gw.records().into_iter().rev().find(|r| r["endpoint"] == endpoint) {
            return r;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no record for {endpoint}:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn keys_new_prints_a_key_once_and_stores_only_its_hash() {
    let dir = ConfigDir::new();
    let path = dir.allowlist.to_str().unwrap().to_owned();
    let before = std::fs::read_to_string(&dir.allowlist).unwrap();
    let (ok, stdout, stderr) = issue_team_new(&[
        "--allowlist",
        &path,
        "--providers",
        "openai",
        "anthropic",
        "--models",
        "gpt-4o*",
        "claude-*",
    ]);
    assert!(ok, "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "the key alone on stdout: {stdout}");
    let key = lines[0];
    assert!(key.starts_with("lmg_") && key.len() == 47, "{key}");
    assert!(key[4..].bytes().all(|b| b.is_ascii_alphanumeric()), "{key}");
    assert!(stderr.contains("not stored") && !stderr.contains(key), "{stderr}");

    let after = std::fs::read_to_string(&dir.allowlist).unwrap();
    assert!(!after.contains(key), "the file holds no key");
    let mut rows = after.lines();
    assert_eq!(rows.next(), Some("id,api_key,owner,added,mode,providers,models"));
    for old in before.lines().skip(1) {
        assert_eq!(
            rows.next(),
            Some(format!("{old},,,").as_str()),
            "old rows padded, bytes kept"
        );
    }
    let new = rows.next().unwrap();
    assert!(
        new.starts_with(&format!("team-new,{},carol,", hashed_form(key))),
        "{new}"
    );
    assert!(
        new.ends_with(",gateway,openai anthropic,gpt-4o* claude-*"),
        "{new}"
    );
    assert_eq!(rows.next(), None);

    // `keys list`, through --config this time: ids, owners, modes, scopes; no key, no hash.
    let cfg = dir.config("");
    let (ok, list, err) = lmgate(&["keys", "list", "--config", cfg.to_str().unwrap()]);
    assert!(ok, "{err}");
    let line = list.lines().find(|l| l.starts_with("team-new")).expect(&list);
    for part in ["carol", "gateway", "openai anthropic", "gpt-4o* claude-*"] {
        assert!(line.contains(part), "{part}: {line}");
    }
    assert!(
        list.lines()
            .any(|l| l.starts_with("team-a ") && l.contains("passthrough")),
        "{list}"
    );
    for secret in [key, "sha256", KEY_A, KEY_B] {
        assert!(!list.contains(secret), "keys list shows {secret}:\n{list}");
    }

    // The same id again: refused, file untouched.
    let (ok, out, err) = lmgate(&[
        "keys",
        "new",
        "--id",
        "team-new",
        "--owner",
        "x",
        "--allowlist",
        &path,
    ]);
    assert!(!ok && out.is_empty(), "{out}");
    assert!(err.contains("team-new") && err.contains("already"), "{err}");
    assert_eq!(std::fs::read_to_string(&dir.allowlist).unwrap(), after);
    // A provider the config does not know: refused.
    let (ok, _, err) = lmgate(&[
        "keys",
        "new",
        "--id",
        "t2",
        "--owner",
        "x",
        "--config",
        cfg.to_str().unwrap(),
        "--providers",
        "opnai",
    ]);
    assert!(
        !ok && err.contains("`opnai` is not a configured provider"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_key_works_on_the_running_gateway_after_hot_reload() {
    let (mock, gw) = chat_gateway().await;
    let (ok, stdout, stderr) = issue_team_new(&["--config", gw.config_path.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_owned();
    let target = "/openai/v1/chat/completions";
    // Recognised once the reload saw the renamed file: the gateway no longer answers with
    // its unknown-key 403. (Without a provider credential a gateway key is forwarded or
    // refused by the credential check; either way it is no longer an unknown key.)
    let start = Instant::now();
    loop {
        let resp = request_as(&gw.addr(), &key, "POST", target, br#"{"model":"gpt-4o"}"#).await;
        if resp.status != 403 || resp.json()["error"] != "forbidden" {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "new key never accepted:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gw.wait_log(&["allowlist reloaded", "(+1 -0)"]).await;
    wait_until(
        "a record of the new key",
        || {
            gw.records()
                .iter()
                .any(|r| r["lmgate_id"] == "team-new" && r["error_type"] != "forbidden")
        },
        || format!("{:?}", gw.records()),
    )
    .await;
    // The old keys still work.
    let resp = request_as(&gw.addr(), KEY_A, "POST", target, b"{}").await;
    assert_eq!(resp.status, 200);
    assert!(!mock.received().is_empty());
    assert_not_leaked(&gw, &key);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_scope_refusal_is_403_in_each_providers_shape_and_a_record() {
    let (mock, gw) = scoped_gateway("").await;
    let cases = [
        ("openai", "/openai/v1/chat/completions"),
        ("anthropic", "/anthropic/v1/messages"),
        (
            "google",
            "/google/v1/projects/p/locations/l/publishers/google/models/gemini-2.0-flash:generateContent",
        ),
        (
            "bedrock",
            "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        ),
    ];
    for (provider, target) in cases {
        let resp = request_as(&gw.addr(), KEY_B, "POST", target, br#"{"model":"gpt-4o"}"#).await;
        assert_eq!(resp.status, 403, "{provider}: {}", resp.text());
        assert_eq!(resp.header("content-type"), Some("application/json"));
        let v = resp.json();
        let want = format!("key team-b may not call provider {provider} (scope: providers)");
        match provider {
            "openai" => {
                assert_eq!(v["error"]["code"], "permission_denied");
                assert_eq!(v["error"]["message"], want.as_str());
            }
            "anthropic" => {
                assert_eq!(
                    (v["type"].as_str(), v["error"]["type"].as_str()),
                    (Some("error"), Some("permission_error"))
                );
                assert_eq!(v["error"]["message"], want.as_str());
            }
            "google" => {
                assert_eq!(
                    (v["error"]["code"].as_u64(), v["error"]["status"].as_str()),
                    (Some(403), Some("PERMISSION_DENIED"))
                );
                assert_eq!(v["error"]["message"], want.as_str());
            }
            _ => {
                assert_eq!(resp.header("x-amzn-errortype"), Some("AccessDeniedException"));
                assert_eq!(v["message"], want.as_str());
            }
        }
        let endpoint = target.split('?').next().unwrap();
        let r = record_for(&gw, endpoint);
        assert_eq!(
            (r["status"].as_u64(), r["error_type"].as_str()),
            (Some(403), Some("scope_denied")),
            "{r}"
        );
        assert_eq!(
            (r["lmgate_id"].as_str(), r["provider"].as_str()),
            (Some("team-b"), Some(provider))
        );
    }
    assert!(mock.received().is_empty(), "nothing reached the upstream");
    // In scope: forwarded. Out of scope on the same connection: the connection stays usable.
    let mut c = Client::connect(&gw.addr()).await;
    let auth = format!("Bearer {KEY_B}");
    for (method, target, status) in [
        (
            "POST",
            "/gemini/v1beta/models/gemini-1.5-pro:generateContent",
            200,
        ),
        ("POST", "/openai/v1/embeddings", 403),
        ("GET", "/gemini/v1beta/models", 200),
    ] {
        let body: &[u8] = if method == "POST" { b"{}" } else { b"" };
        let resp = c.request(method, target, &[("authorization", &auth)], body).await;
        assert_eq!(resp.status, status, "{target}");
    }
    assert_eq!(mock.received().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_scope_reads_the_model_from_the_url_for_gemini_vertex_and_bedrock() {
    let (mock, gw) = scoped_gateway("").await;
    let allowed = [
        "/gemini/v1beta/models/gemini-2.0-flash:generateContent",
        "/google/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash-001:streamGenerateContent",
        "/bedrock/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
    ];
    for target in allowed {
        let resp = request_as(&gw.addr(), KEY_C, "POST", target, b"{}").await;
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        assert_eq!(mock.received().last().unwrap().body, b"{}");
    }
    let refused = [
        (
            "/gemini/v1beta/models/gemini-1.5-pro:generateContent",
            "may not use model gemini-1.5-pro",
        ),
        (
            "/google/v1/projects/p/locations/l/publishers/google/models/gemini-1.5-pro:generateContent",
            "may not use model gemini-1.5-pro",
        ),
        (
            "/bedrock/model/meta.llama3-70b-instruct-v1%3A0/invoke",
            "may not use model meta.llama3-70b-instruct-v1:0",
        ),
        ("/gemini/v1beta/models", "could not be read"),
    ];
    for (target, message) in refused {
        let resp = request_as(&gw.addr(), KEY_C, "POST", target, b"{}").await;
        assert_eq!(resp.status, 403, "{target}");
        let v = resp.json();
        let text = if target.starts_with("/bedrock") {
            assert_eq!(resp.header("x-amzn-errortype"), Some("AccessDeniedException"));
            v["message"].as_str().unwrap().to_owned()
        } else {
            assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
            v["error"]["message"].as_str().unwrap().to_owned()
        };
        assert!(text.contains(message) && text.contains("scope: models"), "{text}");
        assert_eq!(record_for(&gw, target)["error_type"], "scope_denied");
    }
    assert_eq!(
        mock.received().len(),
        allowed.len(),
        "refused requests never reached the mock"
    );
}

/// `body` as chunked transfer coding in `size`-byte chunks.
fn chunked(body: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A JSON chat request naming `model`, padded to about `size` bytes.
fn chat_body(model: &str, size: usize) -> Vec<u8> {
    let head = r#"{"messages":[{"role":"user","content":""#;
    let tail = format!(r#""}}],"model":"{model}","stream":false}}"#);
    let pad = size.saturating_sub(head.len() + tail.len());
    let filler: String = (0..pad).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    format!("{head}{filler}{tail}").into_bytes()
}

/// Send `raw` (a whole request) on a fresh connection and read the answer.
async fn raw_request(addr: &str, raw: &[u8]) -> Response {
    let mut c = Client::connect(addr).await;
    c.sock.write_all(raw).await.unwrap();
    c.read_response("POST").await
}

fn chunked_request(target: &str, key: &str, body: &[u8], chunk: usize) -> Vec<u8> {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    raw.extend_from_slice(&chunked(body, chunk));
    raw
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_scope_reads_the_body_model_and_forwards_the_body_byte_for_byte() {
    let (mock, gw) = scoped_gateway("").await;
    let target = "/openai/v1/chat/completions";
    // Content-Length bodies, small and over Pingora's 64 KiB retry buffer.
    for size in [100, 70_000, 300_000] {
        let body = chat_body("gpt-4o-mini", size);
        let resp = request_as(&gw.addr(), KEY_C, "POST", target, &body).await;
        assert_eq!(resp.status, 200, "{size}: {}", resp.text());
        let got = mock.received().pop().unwrap();
        assert!(got.body == body, "{size}: body forwarded byte for byte");
        assert_eq!(
            got.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert!(got.header("transfer-encoding").is_none());
    }
    // Chunked uploads up to 64 KiB arrive upstream with a Content-Length.
    let body = chat_body("gpt-4o", 50_000);
    let resp = raw_request(&gw.addr(), &chunked_request(target, KEY_C, &body, 7_000)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = mock.received().pop().unwrap();
    assert!(got.body == body);
    assert_eq!(got.header("content-length"), Some("50000"));
    assert!(got.header("transfer-encoding").is_none());
    // ... longer ones are refused with a hint (the SDKs all send Content-Length).
    let long = chat_body("gpt-4o", 70_000);
    let resp = raw_request(&gw.addr(), &chunked_request(target, KEY_C, &long, 8_000)).await;
    assert_eq!(resp.status, 413);
    assert!(resp.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Content-Length"));

    // Expect: 100-continue is answered by the gateway, then the body is read and forwarded.
    let body = chat_body("gpt-4o", 2_000);
    let mut c = Client::connect(&gw.addr()).await;
    let auth = format!("Bearer {KEY_C}");
    c.send(
        "POST",
        target,
        &[("authorization", &auth), ("expect", "100-continue")],
        &body,
    )
    .await;
    let (status, _) = c.read_head().await;
    assert_eq!(status, 100);
    let resp = c.read_response("POST").await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("keep-alive"));
    let got = mock.received().pop().unwrap();
    assert!(got.body == body && got.header("expect").is_none());
    // Keep-alive: the same connection carries the next request.
    let resp = c
        .request(
            "POST",
            target,
            &[("authorization", &auth)],
            br#"{"model":"gpt-4o"}"#,
        )
        .await;
    assert_eq!(resp.status, 200);

    // Out of scope, or no readable model: 403 in the provider's shape, nothing upstream.
    let before = mock.received().len();
    for (target, body, message) in [
        (
            target,
            &br#"{"model":"o1","messages":[]}"#[..],
            "may not use model o1",
        ),
        (target, &b"not json"[..], "could not be read"),
        (
            target,
            &br#"{"model":"gpt-4o","model":"o1"}"#[..],
            "could not be read",
        ),
        (
            "/anthropic/v1/messages",
            &br#"{"model":"claude-3-opus-20240229"}"#[..],
            "may not use model claude-3-opus",
        ),
    ] {
        let resp = request_as(&gw.addr(), KEY_C, "POST", target, body).await;
        assert_eq!(resp.status, 403, "{target}");
        let v = resp.json();
        assert!(v["error"]["message"].as_str().unwrap().contains(message), "{v}");
    }
    let resp = request_as(&gw.addr(), KEY_C, "GET", "/openai/v1/models", b"").await;
    assert_eq!(resp.status, 403, "a model scope needs a model");
    assert_eq!(mock.received().len(), before);
    let resp = request_as(
        &gw.addr(),
        KEY_C,
        "POST",
        "/anthropic/v1/messages",
        br#"{"model":"claude-3-5-haiku"}"#,
    )
    .await;
    assert_eq!(resp.status, 200);
    // A key without a model scope is not buffered: chunked bodies of any size stream.
    let resp = raw_request(&gw.addr(), &chunked_request(target, KEY_A, &long, 8_000)).await;
    assert_eq!(resp.status, 200);
    let got = mock.received().pop().unwrap();
    assert!(got.body == long && got.header("transfer-encoding") == Some("chunked"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_buffer_limit_gets_413_and_the_connection_closes() {
    let (mock, gw) = scoped_gateway("server:\n  max_buffered_body_bytes: 4096\n").await;
    let big = chat_body("gpt-4o", 5_000);
    for target in ["/openai/v1/chat/completions", "/anthropic/v1/messages"] {
        let resp = request_as(&gw.addr(), KEY_C, "POST", target, &big).await;
        assert_eq!(resp.status, 413, "{target}: {}", resp.text());
        assert_eq!(resp.header("connection"), Some("close"));
        let v = resp.json();
        if target.starts_with("/openai") {
            assert_eq!(v["error"]["code"], "request_too_large");
        } else {
            assert_eq!(v["error"]["type"], "request_too_large");
        }
        let r = record_for(&gw, target);
        assert_eq!(
            (r["status"].as_u64(), r["error_type"].as_str()),
            (Some(413), Some("bad_request"))
        );
    }
    // Chunked: refused once the running total passes the limit.
    let resp = raw_request(
        &gw.addr(),
        &chunked_request("/openai/v1/chat/completions", KEY_C, &big, 1_000),
    )
    .await;
    assert_eq!(resp.status, 413);
    assert!(mock.received().is_empty());
    // The limit is for buffered bodies only: an unscoped key streams as before.
    let resp = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", &big).await;
    assert_eq!(resp.status, 200);
    assert_eq!(mock.received().pop().unwrap().body, big);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_four_column_allow_list_still_loads_and_works() {
    let mock = Mock::chat().await;
    let seed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("data/allowlist.csv")).unwrap();
    assert_eq!(seed.lines().next(), Some("id,api_key,owner,added"));
    let gw = Gateway::start(GatewayOpts {
        yaml: all_providers_at(mock.port),
        allowlist: seed,
        ..Default::default()
    });
    for target in [
        "/openai/v1/chat/completions",
        "/gemini/v1beta/models/x:generateContent",
        "/bedrock/model/m/invoke",
    ] {
        let resp = request_as(
            &gw.addr(),
            "sk-lmgate-demo-0000000000000001",
            "POST",
            target,
            b"{}",
        )
        .await;
        assert_eq!(resp.status, 200, "{target}");
    }
    assert_eq!(record_for(&gw, "/bedrock/model/m/invoke")["lmgate_id"], "demo-1");
}

#[test]
fn check_validates_the_scope_columns() {
    let dir = ConfigDir::new();
    let cfg = dir.config("");
    let c = cfg.to_str().unwrap();
    std::fs::write(&dir.allowlist, scoped_allowlist()).unwrap();
    let (ok, out, _) = lmgate(&["check", "--config", c]);
    assert!(ok, "{out}");
    std::fs::write(
        &dir.allowlist,
        "id,api_key,owner,added,mode,providers,models\na,k1,o,d,,,\nb,k2,o,d,gatway,,\n",
    )
    .unwrap();
    let (ok, out, _) = lmgate(&["check", "--config", c]);
    assert!(!ok);
    assert!(
        out.contains("line 3") && out.contains("`mode`") && out.contains("gatway"),
        "{out}"
    );
}
