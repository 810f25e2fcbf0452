//! Bedrock with a gateway key, through the real binary: the gateway signs each request with
//! its own AWS identity (SigV4), and the mock upstream checks that signature with the
//! test's secret, using a verifier written here from the AWS specification (so a mistake
//! in the gateway's encoding cannot cancel out in the check). Credentials come from the
//! environment or from a mock ECS container-credentials endpoint, which also shows the
//! refresh before expiry and the refresh at once on `ExpiredTokenException`.

mod common;

use common::*;
use lmgate::usage::eventstream::sample_converse_stream;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// A gateway key (the allow-list holds its `sha256:` form).
const GATEWAY_KEY: &str = "lmg_test0BedrockGatewayKey00000000000000000001";
const ACCESS_KEY_ID: &str = "AKIDLMGATETEST000001";
const SECRET: &str = "lmgate/test+Secret0000000000000000000001";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjLMGATETESTSESSIONTOKEN0001";
const REGION: &str = "us-east-1";
const MODEL_PATH: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0";
/// The largest body the gateway reads whole to sign it (the README says 20 MiB).
const BODY_LIMIT: usize = 20 * 1024 * 1024;

// ---------------------------------------------------------------------------------------
// The verifier: AWS Signature Version 4 from the specification, with sha2 and a
// hand-written HMAC. Only what a Bedrock request needs: no query string.
// ---------------------------------------------------------------------------------------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The canonical URI of a non-S3 service: the path as received (already percent-encoded),
/// encoded once more, `/` kept.
fn canonical_uri(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the signature of a received request says, once checked.
#[derive(Debug)]
struct Verified {
    access_key_id: String,
    signed_headers: String,
}

/// Check the SigV4 signature of a received request, given the secret of the access key id
/// it names. `Err` says why it does not verify.
fn verify(req: &Recorded, secret_of: impl Fn(&str) -> Option<String>) -> Result<Verified, String> {
    let auth = req.header("authorization").ok_or("no authorization header")?;
    let fields = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| format!("not a SigV4 authorization: {auth}"))?;
    let field = |name: &str| {
        fields
            .split(", ")
            .find_map(|f| f.strip_prefix(name))
            .ok_or_else(|| format!("no {name} in {auth}"))
    };
    let (credential, signed_headers, signature) = (
        field("Credential=")?,
        field("SignedHeaders=")?,
        field("Signature=")?,
    );
    let scope: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminator] = scope[..] else {
        return Err(format!("bad credential scope {credential}"));
    };
    if (region, service, terminator) != (REGION, "bedrock", "aws4_request") {
        return Err(format!("scope {credential} is not {REGION}/bedrock"));
    }
    let amz_date = req.header("x-amz-date").ok_or("no x-amz-date")?;
    if !amz_date.starts_with(date) {
        return Err(format!("x-amz-date {amz_date} is not of the scope's day {date}"));
    }
    let secret = secret_of(akid).ok_or_else(|| format!("unknown access key id {akid}"))?;
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let value = req
            .header(name)
            .ok_or_else(|| format!("signed header {name} not received"))?;
        let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    if !query.is_empty() {
        return Err("the verifier does not handle query strings".into());
    }
    let canonical_request = format!(
        "{}\n{}\n\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        canonical_uri(path),
        hex(&Sha256::digest(&req.body))
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac_sha256(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, service, "aws4_request"] {
        key = hmac_sha256(&key, part.as_bytes());
    }
    let expected = hex(&hmac_sha256(&key, string_to_sign.as_bytes()));
    if expected != signature {
        return Err(format!(
            "signature mismatch (canonical request:\n{canonical_request})"
        ));
    }
    Ok(Verified {
        access_key_id: akid.to_owned(),
        signed_headers: signed_headers.to_owned(),
    })
}

/// The static test identity's secret.
fn static_secret(akid: &str) -> Option<String> {
    (akid == ACCESS_KEY_ID).then(|| SECRET.to_owned())
}

/// Verify `req` with the static identity and check what the gateway must (not) forward.
fn assert_signed(req: &Recorded) -> Verified {
    let v = verify(req, static_secret).unwrap_or_else(|e| panic!("{} {}: {e}", req.method, req.target));
    assert_gateway_signed(req, &v);
    v
}

/// Only the gateway's signature and what it signs go upstream: no gateway key anywhere,
/// no client signature, no unsigned payload, the body with a Content-Length.
fn assert_gateway_signed(req: &Recorded, v: &Verified) {
    let all = format!("{:?}", req.headers);
    assert!(!all.contains(GATEWAY_KEY), "the gateway key was forwarded: {all}");
    assert_eq!(
        req.headers.iter().filter(|(k, _)| k == "authorization").count(),
        1,
        "{all}"
    );
    assert!(
        req.header("x-api-key").is_none() && req.header("x-goog-api-key").is_none(),
        "{all}"
    );
    assert!(req.header("x-amz-content-sha256").is_none(), "{all}");
    assert!(req.header("transfer-encoding").is_none(), "{all}");
    assert_eq!(
        req.header("content-length"),
        Some(req.body.len().to_string().as_str()),
        "{all}"
    );
    let mut expected = vec!["host", "x-amz-date"];
    if req.header("content-type").is_some() {
        expected.insert(0, "content-type");
    }
    if req.header("x-amz-security-token").is_some() {
        expected.push("x-amz-security-token");
    }
    assert_eq!(v.signed_headers, expected.join(";"));
}

// The verifier itself, on botocore's own signature of a request (botocore 1.44.5
// `SigV4Auth`, clock fixed at 2024-01-01T00:00:00Z; the same vector as the unit tests of
// `sigv4.rs`): it accepts it, and refuses it with a wrong secret or a changed body.
#[test]
fn the_verifier_accepts_botocores_signature_and_refuses_a_wrong_secret() {
    let body = br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    let mut req = Recorded {
        method: "POST".into(),
        target: "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke".into(),
        headers: vec![
            h("host", "bedrock-runtime.us-east-1.amazonaws.com"),
            h("content-type", "application/json"),
            h("x-amz-date", "20240101T000000Z"),
            h("x-amz-security-token", "IQoJb3JpZ2luX2VjEXAMPLETOKEN"),
            h(
                "authorization",
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
                 Signature=5dcf3177a268fe7b1a9dcb365374ad627b9403c1fd81d261b57480d27c30d4da",
            ),
        ],
        body: body.to_vec(),
    };
    let right = |_: &str| Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned());
    let wrong = |_: &str| Some("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEX".to_owned());
    assert_eq!(verify(&req, right).unwrap().access_key_id, "AKIDEXAMPLE");
    assert!(verify(&req, wrong).unwrap_err().contains("signature mismatch"));
    req.body.push(b' ');
    assert!(verify(&req, right).is_err());
}

// ---------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------

/// An allow-list with KEY_A as a pass-through key (`team-a`) and [`GATEWAY_KEY`] as a
/// gateway key (`team-g`).
fn allowlist() -> String {
    format!(
        "id,api_key,owner,added,mode\nteam-a,{KEY_A},alice,2026-01-01,passthrough\nteam-g,{},gina,2026-01-02,gateway\n",
        lmgate::hashed_form(GATEWAY_KEY)
    )
}

/// The gateway's AWS environment: nothing from the shell running the tests (every `AWS_*`
/// variable it has is blanked, which the AWS chain treats as unset), no shared config files
/// (temp paths that do not exist), no instance metadata; then `vars`.
fn aws_env(dir: &std::path::Path, vars: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("AWS_"))
        .map(|(k, _)| (k, String::new()))
        .collect();
    env.push((
        "AWS_CONFIG_FILE".into(),
        dir.join("aws-config").display().to_string(),
    ));
    env.push((
        "AWS_SHARED_CREDENTIALS_FILE".into(),
        dir.join("aws-credentials").display().to_string(),
    ));
    env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    env
}

/// The static identity, with a session token.
fn static_identity() -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET.into()),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN.into()),
    ]
}

/// A gateway whose `bedrock` provider points at `mock` and signs with the identity `vars`
/// give it.
async fn signing_gateway(mock: &Mock, dir: &tempfile::TempDir, vars: &[(&str, String)]) -> Gateway {
    let gw = Gateway::start(GatewayOpts {
        yaml: format!(
            "providers:\n  bedrock:\n    upstream: http://127.0.0.1:{}\n    format: bedrock\n    credential:\n      aws: {{region: {REGION}}}\n",
            mock.port
        ),
        allowlist: allowlist(),
        env: aws_env(dir.path(), vars),
        ..Default::default()
    });
    // Credentials are fetched in the background after start; until then (or while no
    // source works) requests get 503.
    gw.wait_log(&["bedrock: aws credentials"]).await;
    gw
}

/// No secret of the test in the gateway's log or stats files (the harness checks the
/// allow-list's fake keys on drop; these are this test's own).
fn assert_no_secrets(gw: &Gateway, secrets: &[&str]) {
    let mut texts = vec![gw.log()];
    for r in gw.records() {
        texts.push(r.to_string());
    }
    for text in texts {
        for s in secrets.iter().chain([&GATEWAY_KEY]) {
            if let Some(i) = text.find(s) {
                let line_start = text[..i].rfind('\n').map_or(0, |n| n + 1);
                let line_end = text[i..].find('\n').map_or(text.len(), |n| i + n);
                panic!(
                    "a secret leaked into the log or records: {}",
                    &text[line_start..line_end]
                );
            }
        }
    }
}

/// A Bedrock mock: Converse, ConverseStream and InvokeModel answers.
async fn bedrock_mock() -> Mock {
    Mock::start(|req| {
        let path = req.target.as_str();
        if path.ends_with("/converse-stream") {
            Reply::stream(
                "application/vnd.amazon.eventstream",
                Part::chunks(&sample_converse_stream(), 29),
            )
        } else if path.ends_with("/converse") {
            Reply::full(200, "application/json", fixture("bedrock_converse.json"))
        } else if path.ends_with("/invoke") {
            Reply::full(200, "application/json", fixture("anthropic_message.json"))
        } else {
            Reply::json(404, r#"{"message":"not found"}"#)
        }
    })
    .await
}

/// `(header, value)` pairs that authenticate with the gateway key as boto3 does with
/// `AWS_BEARER_TOKEN_BEDROCK`.
fn gateway_auth() -> (&'static str, String) {
    bearer(GATEWAY_KEY)
}

const CONVERSE_BODY: &str = r#"{"messages":[{"role":"user","content":[{"text":"Tell me a story"}]}]}"#;

fn field<'a>(r: &'a Value, k: &str) -> &'a Value {
    &r[k]
}

#[tokio::test(flavor = "multi_thread")]
async fn converse_stream_and_invoke_are_signed_by_the_gateway_with_exact_records() {
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &static_identity()).await;
    let (name, value) = gateway_auth();
    let json_ct = ("content-type", "application/json");
    let mut c = Client::connect(&gw.addr()).await;
    // Converse, then ConverseStream and InvokeModel on the same connection; the last one
    // with a body well over Pingora's 64 KiB retry buffer, also one that boto3 would have
    // signed itself (its signature must not survive).
    let r = c
        .request(
            "POST",
            &format!("/bedrock{MODEL_PATH}/converse"),
            &[(name, &value), json_ct],
            CONVERSE_BODY.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, fixture("bedrock_converse.json"));
    let r = c
        .request(
            "POST",
            &format!("/bedrock{MODEL_PATH}/converse-stream"),
            &[(name, &value), json_ct],
            CONVERSE_BODY.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, sample_converse_stream());
    let big = format!(
        r#"{{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "a".repeat(200_000)
    );
    let r = c
        .request(
            "POST",
            &format!("/bedrock{MODEL_PATH}/invoke"),
            &[
                (name, &value),
                json_ct,
                ("x-amz-date", "20240101T000000Z"),
                ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
            ],
            big.as_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);

    let got = mock.received();
    assert_eq!(got.len(), 3);
    let targets: Vec<&str> = got.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            format!("{MODEL_PATH}/converse"),
            format!("{MODEL_PATH}/converse-stream"),
            format!("{MODEL_PATH}/invoke")
        ]
    );
    for req in &got {
        let v = assert_signed(req);
        assert_eq!(v.access_key_id, ACCESS_KEY_ID);
        assert_eq!(req.header("x-amz-security-token"), Some(SESSION_TOKEN));
        assert_eq!(
            req.header("host"),
            Some(format!("127.0.0.1:{}", mock.port).as_str())
        );
    }
    assert_eq!(got[0].body, CONVERSE_BODY.as_bytes());
    assert_eq!(got[2].body, big.as_bytes());
    assert_ne!(got[2].header("x-amz-date"), Some("20240101T000000Z"));

    let records = gw.wait_records(3);
    let endpoint = |op: &str| format!("/bedrock{MODEL_PATH}/{op}");
    let model = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    let expected = [
        (endpoint("converse"), model, 21, 39, false),
        (endpoint("converse-stream"), model, 25, 48, true),
        (endpoint("invoke"), "claude-sonnet-4-5-20250929", 2095, 503, false),
    ];
    for (r, (endpoint, model, input, output, stream)) in records.iter().zip(expected) {
        assert_eq!(field(r, "endpoint"), endpoint.as_str(), "{r}");
        assert_eq!(field(r, "model"), model, "{r}");
        assert_eq!(
            (field(r, "input_tokens"), field(r, "output_tokens")),
            (&Value::from(input), &Value::from(output)),
            "{r}"
        );
        assert_eq!(field(r, "stream"), stream, "{r}");
        assert_eq!(field(r, "usage_status"), "exact", "{r}");
        assert_eq!(field(r, "lmgate_id"), "team-g", "{r}");
        assert_eq!(
            field(r, "masked_key"),
            &GATEWAY_KEY[GATEWAY_KEY.len() - 6..],
            "{r}"
        );
        assert_eq!(field(r, "status"), 200, "{r}");
    }
    assert_no_secrets(&gw, &[SECRET, SESSION_TOKEN]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_upload_is_signed_and_forwarded_with_content_length() {
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &static_identity()).await;
    let body = CONVERSE_BODY.as_bytes();
    let mut c = Client::connect(&gw.addr()).await;
    let mut raw = format!(
        "POST /bedrock{MODEL_PATH}/converse HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {GATEWAY_KEY}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for piece in body.chunks(10) {
        raw.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        raw.extend_from_slice(piece);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.sock.write_all(&raw).await.unwrap();
    let r = c.read_response("POST").await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same connection still serves a Content-Length request after it.
    let (name, value) = gateway_auth();
    let r = c
        .request(
            "POST",
            &format!("/bedrock{MODEL_PATH}/converse"),
            &[(name, &value), ("content-type", "application/json")],
            body,
        )
        .await;
    assert_eq!(r.status, 200);
    let got = mock.received();
    assert_eq!(got.len(), 2);
    for req in &got {
        assert_signed(req);
        assert_eq!(req.body, body);
    }
    assert_no_secrets(&gw, &[SECRET, SESSION_TOKEN]);
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_too_large_to_sign_get_413_in_bedrocks_shape() {
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &static_identity()).await;
    let target = format!("/bedrock{MODEL_PATH}/converse");
    // Over the limit by Content-Length: refused before a byte of the body is read.
    let over = BODY_LIMIT + 1;
    let mut c = Client::connect(&gw.addr()).await;
    let head = format!(
        "POST {target} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {GATEWAY_KEY}\r\ncontent-type: application/json\r\ncontent-length: {over}\r\n\r\n"
    );
    c.sock.write_all(head.as_bytes()).await.unwrap();
    c.sock.write_all(b"{\"messages\":").await.unwrap();
    let r = c.read_response("POST").await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-amzn-errortype"), Some("ValidationException"));
    assert_eq!(r.header("connection"), Some("close"));
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains(&BODY_LIMIT.to_string()), "{msg}");
    // Chunked and over Pingora's 64 KiB retry buffer: cannot be signed, says why.
    let mut c = Client::connect(&gw.addr()).await;
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {GATEWAY_KEY}\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..10 {
        raw.extend_from_slice(format!("{:x}\r\n", 10_000).as_bytes());
        raw.extend_from_slice(&[b'a'; 10_000]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.sock.write_all(&raw).await.unwrap();
    let r = c.read_response("POST").await;
    assert_eq!(r.status, 413);
    assert_eq!(r.header("x-amzn-errortype"), Some("ValidationException"));
    assert!(r.text().contains("Content-Length"), "{}", r.text());

    assert!(mock.received().is_empty());
    let records = gw.wait_records(2);
    for r in &records {
        assert_eq!(
            (field(r, "status"), field(r, "error_type")),
            (&Value::from(413), &Value::from("bad_request")),
            "{r}"
        );
        assert_eq!(field(r, "lmgate_id"), "team-g");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bidirectional_stream_is_refused_with_a_clear_400() {
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &static_identity()).await;
    let r = request_as(
        &gw.addr(),
        GATEWAY_KEY,
        "POST",
        "/bedrock/model/amazon.nova-sonic-v1%3A0/invoke-with-bidirectional-stream",
        b"{}",
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.header("x-amzn-errortype"), Some("ValidationException"));
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("InvokeModelWithBidirectionalStream"), "{msg}");
    assert!(mock.received().is_empty());
    let r = &gw.wait_records(1)[0];
    assert_eq!(
        (field(r, "status"), field(r, "error_type")),
        (&Value::from(400), &Value::from("bad_request"))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_through_key_on_the_same_route_is_forwarded_unsigned() {
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &static_identity()).await;
    let r = request_as(
        &gw.addr(),
        KEY_A,
        "POST",
        &format!("/bedrock{MODEL_PATH}/converse"),
        b"{}",
    )
    .await;
    assert_eq!(r.status, 200);
    let got = mock.received();
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {KEY_A}").as_str())
    );
    assert!(got[0].header("x-amz-date").is_none() && got[0].header("x-amz-security-token").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_a_gateway_key_gets_503_and_nothing_is_sent() {
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    // No identity anywhere: the chain fails (not fatal), requests are refused until it works.
    let gw = signing_gateway(&mock, &dir, &[]).await;
    gw.wait_log(&["aws credentials could not be loaded"]).await;
    let r = request_as(
        &gw.addr(),
        GATEWAY_KEY,
        "POST",
        &format!("/bedrock{MODEL_PATH}/converse"),
        b"{}",
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-amzn-errortype"), Some("ServiceUnavailableException"));
    assert!(mock.received().is_empty());
    let r = &gw.wait_records(1)[0];
    assert_eq!(field(r, "error_type"), "credential_unavailable");
}

// ---------------------------------------------------------------------------------------
// Refresh: credentials from a mock ECS container-credentials endpoint
// ---------------------------------------------------------------------------------------

/// A mock of the ECS container-credentials endpoint: the n-th fetch (from 1) hands out
/// `AKIDECS<n>` with secret `ecs-secret-<n>` and token `ecs-token-<n>`, expiring
/// `lifetime` from now.
async fn ecs_mock(lifetime: Duration) -> (Mock, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&fetches);
    let mock = Mock::start(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let expiry = humantime::format_rfc3339_seconds(SystemTime::now() + lifetime);
        Reply::json(
            200,
            &format!(
                r#"{{"AccessKeyId":"AKIDECS{i}","SecretAccessKey":"ecs-secret-{i}","Token":"ecs-token-{i}","Expiration":"{expiry}"}}"#
            ),
        )
    })
    .await;
    (mock, fetches)
}

fn ecs_secret(akid: &str) -> Option<String> {
    akid.strip_prefix("AKIDECS").map(|i| format!("ecs-secret-{i}"))
}

fn ecs_identity(ecs: &Mock) -> Vec<(&'static str, String)> {
    vec![(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        format!("http://127.0.0.1:{}/v2/credentials/test", ecs.port),
    )]
}

/// The gateway logs each credential fetch after storing its result: first "loaded", then
/// "refreshed" (debug; the tests run at trace level).
const LOADED: &str = "aws credentials loaded";
const REFRESHED: &str = "aws credentials refreshed";

#[tokio::test(flavor = "multi_thread")]
async fn expired_token_answer_refreshes_the_credentials_at_once() {
    // Credentials valid for an hour: the next scheduled refresh is 55 minutes away, so a
    // second fetch within the test can only come from the ExpiredToken answer.
    let (ecs, fetches) = ecs_mock(Duration::from_secs(3600)).await;
    let answered = Arc::new(AtomicUsize::new(0));
    let a = Arc::clone(&answered);
    let mock = Mock::start(move |_| {
        if a.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::json(
                403,
                r#"{"message":"The security token included in the request is expired"}"#,
            )
            .with_header(
                "x-amzn-errortype",
                "ExpiredTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/",
            )
        } else {
            Reply::full(200, "application/json", fixture("bedrock_converse.json"))
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &ecs_identity(&ecs)).await;
    gw.wait_log(&[LOADED]).await;
    let target = format!("/bedrock{MODEL_PATH}/converse");
    let r = request_as(&gw.addr(), GATEWAY_KEY, "POST", &target, CONVERSE_BODY.as_bytes()).await;
    assert_eq!(r.status, 403, "the upstream's answer goes to the client");
    gw.wait_log(&[REFRESHED]).await;
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    let r = request_as(&gw.addr(), GATEWAY_KEY, "POST", &target, CONVERSE_BODY.as_bytes()).await;
    assert_eq!(r.status, 200);
    let got = mock.received();
    let used: Vec<String> = got
        .iter()
        .map(|req| {
            let v = verify(req, ecs_secret).unwrap_or_else(|e| panic!("{e}"));
            assert_gateway_signed(req, &v);
            v.access_key_id
        })
        .collect();
    assert_eq!(used, ["AKIDECS1", "AKIDECS2"]);
    assert_eq!(got[1].header("x-amz-security-token"), Some("ecs-token-2"));
    assert_no_secrets(
        &gw,
        &["ecs-secret-1", "ecs-secret-2", "ecs-token-1", "ecs-token-2"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_refreshed_before_they_expire() {
    // Expiring in 5 min 3 s: the refresher comes back 5 minutes before that, in ~3 s.
    let (ecs, fetches) = ecs_mock(Duration::from_secs(5 * 60 + 3)).await;
    let mock = bedrock_mock().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = signing_gateway(&mock, &dir, &ecs_identity(&ecs)).await;
    gw.wait_log(&[REFRESHED]).await;
    assert!(fetches.load(Ordering::SeqCst) >= 2);
    let target = format!("/bedrock{MODEL_PATH}/converse");
    let r = request_as(&gw.addr(), GATEWAY_KEY, "POST", &target, CONVERSE_BODY.as_bytes()).await;
    assert_eq!(r.status, 200);
    let got = mock.received();
    let v = verify(&got[0], ecs_secret).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(
        v.access_key_id, "AKIDECS1",
        "signed with the refreshed credentials"
    );
    assert_no_secrets(
        &gw,
        &["ecs-secret-1", "ecs-secret-2", "ecs-token-1", "ecs-token-2"],
    );
}
