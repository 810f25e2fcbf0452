//! Gateway keys and provider credentials through the real binary: the credential each
//! provider format takes, the gateway key gone from everything forwarded, pass-through keys
//! untouched, the refusals (403 `no_credential`, 503 `credential_unavailable`), a rotated
//! key file, Google service-account tokens refreshed before they expire (the mock plays the
//! token endpoint and checks the JWT signature), ADC from a metadata server, and
//! `lmgate check`.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use ring::signature::{RsaKeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Request headers as the raw client takes them.
type Headers<'a> = Vec<(&'a str, &'a str)>;

const CLIENT_EMAIL: &str = "lmgate-test@lmgate-test.iam.gserviceaccount.com";
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const VERTEX_PATH: &str =
    "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent";

fn test_key_pem() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/google_sa_test_key.pem"
    ))
    .unwrap()
}

/// The mock's token endpoint and metadata server: what they were asked, and how they answer.
#[derive(Default)]
struct TokenEndpoint {
    /// Tokens issued so far (each one `TOKEN_PREFIX` + its number).
    issued: AtomicUsize,
    /// Token requests refused: bad signature, claims or form, or a missing metadata header.
    bad: AtomicUsize,
    /// Answer 500 to every token request.
    failing: AtomicBool,
    /// `expires_in` of the tokens issued.
    expires_in: AtomicU64,
}

impl TokenEndpoint {
    fn new(expires_in: u64, failing: bool) -> Arc<TokenEndpoint> {
        let t = TokenEndpoint::default();
        t.expires_in.store(expires_in, Ordering::SeqCst);
        t.failing.store(failing, Ordering::SeqCst);
        Arc::new(t)
    }

    /// A service-account JWT exchange: the signature must verify with the test key's public
    /// half, the claims name the account, the scope and this endpoint.
    fn exchange(&self, r: &Recorded) -> Reply {
        if let Err(why) = verify_assertion(r) {
            self.bad.fetch_add(1, Ordering::SeqCst);
            return Reply::json(
                400,
                &format!(r#"{{"error":"invalid_grant","error_description":"{why}"}}"#),
            );
        }
        self.issue()
    }

    fn metadata(&self, r: &Recorded) -> Reply {
        if r.header("metadata-flavor") != Some("Google") {
            self.bad.fetch_add(1, Ordering::SeqCst);
            return Reply::json(403, r#"{"error":"missing Metadata-Flavor"}"#);
        }
        self.issue()
    }

    fn issue(&self) -> Reply {
        if self.failing.load(Ordering::SeqCst) {
            return Reply::json(
                500,
                r#"{"error":"internal_failure","error_description":"try later"}"#,
            );
        }
        let n = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        let expires_in = self.expires_in.load(Ordering::SeqCst);
        Reply::json(
            200,
            &format!(
                r#"{{"access_token":"{TOKEN_PREFIX}{n}","expires_in":{expires_in},"token_type":"Bearer"}}"#
            ),
        )
    }
}

fn verify_assertion(r: &Recorded) -> Result<(), &'static str> {
    let form = std::str::from_utf8(&r.body).map_err(|_| "form not UTF-8")?;
    let mut grant = None;
    let mut assertion = None;
    for pair in form.split('&') {
        match pair.split_once('=') {
            Some(("grant_type", v)) => grant = Some(v),
            Some(("assertion", v)) => assertion = Some(v),
            _ => {}
        }
    }
    if grant != Some("urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer") {
        return Err("grant_type");
    }
    if r.header("content-type") != Some("application/x-www-form-urlencoded") {
        return Err("content-type");
    }
    let jwt = assertion.ok_or("no assertion")?;
    let (input, sig) = jwt.rsplit_once('.').ok_or("not a JWT")?;
    let sig = URL_SAFE_NO_PAD
        .decode(sig)
        .map_err(|_| "signature not base64url")?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(test_key_pem().as_bytes()).unwrap();
    let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).unwrap();
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public().as_ref())
        .verify(input.as_bytes(), &sig)
        .map_err(|_| "Invalid JWT Signature.")?;
    let (header, claims) = input.split_once('.').ok_or("not a JWT")?;
    let json = |b64: &str| -> Result<serde_json::Value, &'static str> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).map_err(|_| "not base64url")?)
            .map_err(|_| "not JSON")
    };
    let (header, claims) = (json(header)?, json(claims)?);
    if header["alg"] != "RS256" || header["kid"] != "test-key-1" {
        return Err("header");
    }
    let aud = format!("http://{}/token", r.header("host").unwrap_or(""));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().ok_or("iat")?;
    if claims["iss"] != CLIENT_EMAIL
        || claims["aud"] != aud.as_str()
        || claims["scope"] != "https://www.googleapis.com/auth/cloud-platform"
        || iat.abs_diff(now) > 60
        || claims["exp"].as_u64() != Some(iat + 3600)
    {
        return Err("claims");
    }
    Ok(())
}

/// A mock that is at once every provider's upstream (answering a chat completion), the
/// token endpoint (`/token`) and the metadata server.
async fn provider_mock(tokens: &Arc<TokenEndpoint>) -> Mock {
    let t = Arc::clone(tokens);
    let body = chat_json();
    Mock::start(move |r| match r.target.as_str() {
        "/token" => t.exchange(r),
        METADATA_TOKEN_PATH => t.metadata(r),
        _ => Reply::json(200, &body),
    })
    .await
}

/// The allow-list: KEY_A and KEY_B pass-through (one explicit, one by default), and
/// GATEWAY_KEY as a `gateway` key stored as its hash.
fn allowlist() -> String {
    format!(
        "id,api_key,owner,added,mode\nteam-a,{KEY_A},alice,2026-01-01,passthrough\nteam-b,{KEY_B},bob,2026-01-02,\ngw-team,{},carol,2026-01-03,gateway\n",
        lmgate::hashed_form(GATEWAY_KEY)
    )
}

/// Files the providers' credentials point at, kept for the test's life.
struct Secrets {
    dir: tempfile::TempDir,
    anthropic_key: PathBuf,
    service_account: PathBuf,
}

impl Secrets {
    fn new(mock_port: u16) -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        let anthropic_key = dir.path().join("anthropic.key");
        std::fs::write(&anthropic_key, format!("{ANTHROPIC_SECRET}\n")).unwrap();
        let service_account = dir.path().join("sa.json");
        let sa = serde_json::json!({
            "type": "service_account",
            "project_id": "lmgate-test",
            "private_key_id": "test-key-1",
            "private_key": test_key_pem(),
            "client_email": CLIENT_EMAIL,
            "token_uri": format!("http://127.0.0.1:{mock_port}/token"),
        });
        std::fs::write(&service_account, sa.to_string()).unwrap();
        Secrets {
            dir,
            anthropic_key,
            service_account,
        }
    }

    /// Replace the key file as Kubernetes does: write aside, rename over.
    fn rotate_anthropic(&self, key: &str) {
        let tmp = self.dir.path().join("anthropic.key.new");
        std::fs::write(&tmp, format!("{key}\n")).unwrap();
        std::fs::rename(&tmp, &self.anthropic_key).unwrap();
    }
}

/// Every provider at `mock`: openai (env), anthropic (file), gemini (env), google (service
/// account), vertex-adc (metadata server), bedrock and local (no credential).
fn providers_yaml(mock: &Mock, s: &Secrets) -> String {
    let up = format!("http://127.0.0.1:{}", mock.port);
    format!(
        "providers:
  openai: {{upstream: '{up}', format: openai, credential: {{api_key: 'env:LMG_TEST_OPENAI_KEY'}}}}
  anthropic: {{upstream: '{up}', format: anthropic, credential: {{api_key: 'file:{}'}}}}
  gemini: {{upstream: '{up}', format: gemini, credential: {{api_key: 'env:LMG_TEST_GEMINI_KEY'}}}}
  google: {{upstream: '{up}', format: gemini, credential: {{google: {{service_account: '{}'}}}}}}
  vertex-adc: {{upstream: '{up}', format: gemini, credential: {{google: {{adc: true, metadata_url: '{up}'}}}}}}
  bedrock: {{upstream: '{up}', format: bedrock}}
  local: {{upstream: '{up}', format: openai}}
",
        s.anthropic_key.display(),
        s.service_account.display()
    )
}

fn env() -> Vec<(String, String)> {
    vec![
        ("LMG_TEST_OPENAI_KEY".into(), OPENAI_SECRET.into()),
        ("LMG_TEST_GEMINI_KEY".into(), GEMINI_SECRET.into()),
    ]
}

/// A gateway in front of [`provider_mock`] with every credential configured.
async fn start(tokens: &Arc<TokenEndpoint>) -> (Mock, Secrets, Gateway) {
    let mock = provider_mock(tokens).await;
    let secrets = Secrets::new(mock.port);
    let gw = Gateway::start(GatewayOpts {
        yaml: providers_yaml(&mock, &secrets),
        allowlist: allowlist(),
        env: env(),
        ..Default::default()
    });
    (mock, secrets, gw)
}

/// Everything of a forwarded request as text: target, every header, body.
fn raw(r: &Recorded) -> String {
    let mut s = r.target.clone();
    for (k, v) in &r.headers {
        s.push_str(&format!("\n{k}: {v}"));
    }
    s + "\n" + &String::from_utf8_lossy(&r.body)
}

/// The upstream requests the mock got as a provider (not token calls).
fn forwarded(mock: &Mock) -> Vec<Recorded> {
    mock.received()
        .into_iter()
        .filter(|r| r.target != "/token" && r.target != METADATA_TOKEN_PATH)
        .collect()
}

/// POST `{}` to `target` on a fresh connection.
async fn post(gw: &Gateway, target: &str, headers: Vec<(&str, String)>) -> Response {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(&gw.addr(), "POST", target, &headers, b"{}").await
}

/// Wait until at least `n` records match `pred`; those records.
fn records_where(
    gw: &Gateway,
    n: usize,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let start = Instant::now();
    loop {
        let got: Vec<_> = gw.records().into_iter().filter(|r| pred(r)).collect();
        if got.len() >= n {
            return got;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} of {n} records: {:?}",
            got.len(),
            gw.records()
        );
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

/// Send until the answer is no 503 (a token not fetched yet); the last answer.
async fn until_not_503(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> Response {
    let start = Instant::now();
    loop {
        let resp = request(&gw.addr(), "POST", target, headers, b"{}").await;
        if resp.status != 503 {
            return resp;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "still 503: {}\n{}",
            resp.text(),
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_key_gets_each_providers_credential_and_is_never_forwarded() {
    let tokens = TokenEndpoint::new(3600, false);
    let (mock, _secrets, gw) = start(&tokens).await;
    let bearer = format!("Bearer {GATEWAY_KEY}");
    let bearer = bearer.as_str();
    let vertex = format!("/google{VERTEX_PATH}");
    let vertex_adc = format!("/vertex-adc{VERTEX_PATH}");
    let gemini_query =
        format!("/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={GATEWAY_KEY}");
    // (sent to, the key where the client puts it, forwarded target, header, value)
    let cases: Vec<(&str, Headers, &str, &str, String)> = vec![
        (
            "/openai/v1/chat/completions",
            vec![("authorization", bearer)],
            "/v1/chat/completions",
            "authorization",
            format!("Bearer {OPENAI_SECRET}"),
        ),
        (
            "/anthropic/v1/messages",
            vec![("x-api-key", GATEWAY_KEY), ("anthropic-version", "2023-06-01")],
            "/v1/messages",
            "x-api-key",
            ANTHROPIC_SECRET.into(),
        ),
        (
            "/anthropic/v1/messages",
            vec![("authorization", bearer), ("anthropic-version", "2023-06-01")],
            "/v1/messages",
            "x-api-key",
            ANTHROPIC_SECRET.into(),
        ),
        (
            gemini_query.as_str(),
            vec![],
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            "x-goog-api-key",
            GEMINI_SECRET.into(),
        ),
        (
            "/gemini/v1/models/gemini-2.5-flash:generateContent",
            vec![("x-goog-api-key", GATEWAY_KEY)],
            "/v1/models/gemini-2.5-flash:generateContent",
            "x-goog-api-key",
            GEMINI_SECRET.into(),
        ),
        (
            vertex.as_str(),
            vec![("authorization", bearer)],
            VERTEX_PATH,
            "authorization",
            format!("Bearer {TOKEN_PREFIX}"),
        ),
        (
            vertex_adc.as_str(),
            vec![("x-goog-api-key", GATEWAY_KEY)],
            VERTEX_PATH,
            "authorization",
            format!("Bearer {TOKEN_PREFIX}"),
        ),
    ];
    for (target, headers, upstream, name, value) in &cases {
        let before = forwarded(&mock).len();
        let mut headers = headers.clone();
        headers.push(("content-type", "application/json"));
        let resp = until_not_503(&gw, target, &headers).await;
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        let got = forwarded(&mock);
        assert_eq!(got.len(), before + 1, "{target}");
        let r = got.last().unwrap();
        assert_eq!(&r.target, upstream, "{target}");
        let sent = r
            .header(name)
            .unwrap_or_else(|| panic!("{target}: no {name}: {}", raw(r)));
        assert!(sent.starts_with(value.as_str()), "{target}: {name}: {sent}");
        let key_headers = ["authorization", "x-api-key", "x-goog-api-key"];
        let present: Vec<&str> = key_headers
            .into_iter()
            .filter(|h| r.header(h).is_some())
            .collect();
        assert_eq!(present, [*name], "{target}: only the credential header");
        assert!(
            !raw(r).contains(GATEWAY_KEY),
            "{target}: gateway key forwarded: {}",
            raw(r)
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    assert_eq!(tokens.bad.load(Ordering::SeqCst), 0, "every JWT verified");
    let ok = records_where(&gw, cases.len(), |r| r["status"] == 200);
    for r in ok {
        assert_eq!(r["lmgate_id"], "gw-team");
        assert_eq!(r["masked_key"], &GATEWAY_KEY[GATEWAY_KEY.len() - 6..]);
        assert_eq!(r["error_type"], serde_json::Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pass_through_key_is_forwarded_unchanged_and_gets_no_credential() {
    let tokens = TokenEndpoint::new(3600, false);
    let (mock, _secrets, gw) = start(&tokens).await;
    let bearer_a = format!("Bearer {KEY_A}");
    let bearer_a = bearer_a.as_str();
    let gemini_query = format!("/gemini/v1beta/models/g:generateContent?key={KEY_B}&alt=sse");
    let vertex = format!("/google{VERTEX_PATH}");
    let cases: Vec<(&str, Headers, &str, &str)> = vec![
        (
            "/openai/v1/chat/completions",
            vec![("authorization", bearer_a)],
            "authorization",
            bearer_a,
        ),
        (
            "/anthropic/v1/messages",
            vec![("x-api-key", KEY_B)],
            "x-api-key",
            KEY_B,
        ),
        (
            "/gemini/v1/models/g:generateContent",
            vec![("x-goog-api-key", KEY_A)],
            "x-goog-api-key",
            KEY_A,
        ),
        (gemini_query.as_str(), vec![], "host", ""),
        (
            vertex.as_str(),
            vec![("authorization", bearer_a)],
            "authorization",
            bearer_a,
        ),
    ];
    for (target, headers, name, value) in &cases {
        let resp = request(&gw.addr(), "POST", target, headers, b"{}").await;
        assert_eq!(resp.status, 200, "{target}: {}", resp.text());
        let got = forwarded(&mock);
        let r = got.last().unwrap();
        if !value.is_empty() {
            assert_eq!(r.header(name), Some(*value), "{target}");
        }
        let text = raw(r);
        for secret in [OPENAI_SECRET, ANTHROPIC_SECRET, GEMINI_SECRET, TOKEN_PREFIX] {
            assert!(
                !text.contains(secret),
                "{target}: a credential was injected: {text}"
            );
        }
        let key_headers = ["authorization", "x-api-key", "x-goog-api-key"];
        let present = key_headers.into_iter().filter(|h| r.header(h).is_some()).count();
        assert_eq!(present, headers.len(), "{target}: no header added: {text}");
    }
    let r = forwarded(&mock);
    assert_eq!(
        r[3].target,
        format!("/v1beta/models/g:generateContent?key={KEY_B}&alt=sse"),
        "the query is forwarded as sent"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_key_on_a_provider_without_a_credential_gets_403_no_credential() {
    let tokens = TokenEndpoint::new(3600, false);
    let (mock, _secrets, gw) = start(&tokens).await;
    let bearer = format!("Bearer {GATEWAY_KEY}");
    let resp = request(
        &gw.addr(),
        "POST",
        "/bedrock/model/amazon.nova-lite-v1%3A0/converse",
        &[("authorization", &bearer)],
        b"{}",
    )
    .await;
    assert_eq!(resp.status, 403, "{}", resp.text());
    assert_eq!(resp.header("x-amzn-errortype"), Some("AccessDeniedException"));
    assert!(resp.json()["message"]
        .as_str()
        .unwrap()
        .contains("provider bedrock"));
    let resp = request(
        &gw.addr(),
        "POST",
        "/local/v1/chat/completions",
        &[("authorization", &bearer)],
        b"{}",
    )
    .await;
    assert_eq!(resp.status, 403);
    let v = resp.json();
    assert_eq!(v["error"]["code"], "permission_denied", "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("provider local"));
    assert!(!resp.text().contains(GATEWAY_KEY));
    assert!(forwarded(&mock).is_empty(), "nothing reaches the provider");
    for r in &records_where(&gw, 2, |_| true) {
        assert_eq!(
            (r["status"].as_u64(), r["error_type"].as_str()),
            (Some(403), Some("no_credential")),
            "{r}"
        );
        assert_eq!(r["lmgate_id"], "gw-team");
    }
    // A pass-through key on the same provider is forwarded as before.
    let resp = request_as(&gw.addr(), KEY_A, "POST", "/local/v1/chat/completions", b"{}").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_key_file_is_used_by_the_next_requests() {
    let tokens = TokenEndpoint::new(3600, false);
    let (mock, secrets, gw) = start(&tokens).await;
    let send = || {
        post(
            &gw,
            "/anthropic/v1/messages",
            vec![("x-api-key", GATEWAY_KEY.to_owned())],
        )
    };
    assert_eq!(send().await.status, 200);
    assert_eq!(forwarded(&mock)[0].header("x-api-key"), Some(ANTHROPIC_SECRET));
    secrets.rotate_anthropic(ANTHROPIC_SECRET_ROTATED);
    let start = Instant::now();
    loop {
        assert_eq!(send().await.status, 200);
        let last = forwarded(&mock).pop().unwrap();
        if last.header("x-api-key") == Some(ANTHROPIC_SECRET_ROTATED) {
            break;
        }
        assert_eq!(last.header("x-api-key"), Some(ANTHROPIC_SECRET));
        assert!(start.elapsed() < DEADLINE, "rotation never seen:\n{}", gw.log());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    gw.wait_log(&["credential anthropic: key file", "reloaded"]).await;
    // An empty file (a half-written secret) is refused; the rotated key stays.
    std::fs::write(&secrets.anthropic_key, "").unwrap();
    gw.wait_log(&["key file reload rejected, keeping the last good key"])
        .await;
    assert_eq!(send().await.status, 200);
    assert_eq!(
        forwarded(&mock).pop().unwrap().header("x-api-key"),
        Some(ANTHROPIC_SECRET_ROTATED)
    );
}

/// The `lmgate_credential_refreshes_total{provider,result}` value on `/metrics`.
async fn refreshes(gw: &Gateway, provider: &str, result: &str) -> u64 {
    let text = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    let series = format!(r#"lmgate_credential_refreshes_total{{provider="{provider}",result="{result}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .map_or(0, |v| v.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn vertex_tokens_are_refreshed_before_they_expire() {
    // 302 s tokens, refreshed 5 minutes before expiry: a new token every ~2 s.
    let tokens = TokenEndpoint::new(302, false);
    let (mock, _secrets, gw) = start(&tokens).await;
    let bearer = format!("Bearer {GATEWAY_KEY}");
    let target = format!("/google{VERTEX_PATH}");
    let first = until_not_503(&gw, &target, &[("authorization", &bearer)]).await;
    assert_eq!(first.status, 200);
    let token_of = |r: &Recorded| r.header("authorization").unwrap().to_owned();
    let t1 = token_of(forwarded(&mock).last().unwrap());
    let issued = tokens.issued.load(Ordering::SeqCst);
    wait_until(
        "no token refresh",
        || tokens.issued.load(Ordering::SeqCst) > issued,
        || gw.log(),
    )
    .await;
    // The refreshed token reaches the next request once stored (a moment after issue).
    let start = Instant::now();
    let t2 = loop {
        let resp = request(&gw.addr(), "POST", &target, &[("authorization", &bearer)], b"{}").await;
        assert_eq!(resp.status, 200, "a refresh never leaves a gap: {}", resp.text());
        let t = token_of(forwarded(&mock).last().unwrap());
        if t != t1 {
            break t;
        }
        assert!(start.elapsed() < DEADLINE, "the refreshed token was never used");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(
        t1.starts_with(&format!("Bearer {TOKEN_PREFIX}"))
            && t2.starts_with(&format!("Bearer {TOKEN_PREFIX}"))
    );
    assert_eq!(tokens.bad.load(Ordering::SeqCst), 0, "every JWT verified");
    // Refreshes are counted (the ADC provider refreshes on the same schedule).
    assert!(refreshes(&gw, "google", "ok").await >= 2);
    assert_eq!(refreshes(&gw, "google", "error").await, 0);
    let metrics = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    let expiry: i64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"lmgate_credential_expiry_seconds{provider="google"} "#))
        .unwrap()
        .parse()
        .unwrap();
    assert!((290..=302).contains(&expiry), "{expiry}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_token_endpoint_gives_503_then_recovers_and_an_expired_token_is_not_used() {
    let tokens = TokenEndpoint::new(3600, true);
    let (mock, _secrets, gw) = start(&tokens).await;
    let bearer = format!("Bearer {GATEWAY_KEY}");
    let target = format!("/google{VERTEX_PATH}");
    let send = || post(&gw, &target, vec![("authorization", bearer.clone())]);
    wait_until(
        "no failed token fetch",
        || gw.log().contains("token refresh failed"),
        || gw.log(),
    )
    .await;
    let resp = send().await;
    assert_eq!(resp.status, 503, "{}", resp.text());
    let v = resp.json();
    assert_eq!(
        (v["error"]["code"].as_u64(), v["error"]["status"].as_str()),
        (Some(503), Some("UNAVAILABLE")),
        "{v}"
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("provider google"));
    assert!(forwarded(&mock).is_empty());
    assert!(refreshes(&gw, "google", "error").await >= 1);
    // The endpoint recovers: the retry (with backoff) gets a token, requests go through.
    // Short tokens now: 2 s, refreshed after 1 s.
    tokens.expires_in.store(2, Ordering::SeqCst);
    tokens.failing.store(false, Ordering::SeqCst);
    let resp = until_not_503(&gw, &target, &[("authorization", &bearer)]).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // It fails again: the last token is used until it expires, then 503 again.
    tokens.failing.store(true, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let resp = send().await;
        if resp.status == 503 {
            break;
        }
        assert_eq!(resp.status, 200);
        assert!(start.elapsed() < DEADLINE, "an expired token kept being used");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    records_where(&gw, 2, |r| r["error_type"] == "credential_unavailable");
    assert!(gw
        .records()
        .iter()
        .filter(|r| r["status"] == 503)
        .all(|r| r["error_type"] == "credential_unavailable" && r["lmgate_id"] == "gw-team"));
}

/// `lmgate check` with `config` and `env`: (exit code, stdout).
fn check(config: &Path, env: &[(String, String)]) -> (i32, String) {
    let out = Launch::lmgate()
        .config(config)
        .arg("check")
        .envs(env.iter().cloned())
        .run();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_each_auth_mode_and_whether_it_resolves_never_the_secret() {
    let tokens = TokenEndpoint::new(3600, false);
    let mock = provider_mock(&tokens).await;
    let secrets = Secrets::new(mock.port);
    let dir = ConfigDir::new();
    std::fs::write(&dir.allowlist, allowlist()).unwrap();
    let aws = "  bedrock: {upstream: 'https://bedrock-runtime.eu-west-3.amazonaws.com', format: bedrock, credential: {aws: {}}}\n";
    let yaml = providers_yaml(&mock, &secrets).replace(
        &format!(
            "  bedrock: {{upstream: 'http://127.0.0.1:{}', format: bedrock}}\n",
            mock.port
        ),
        aws,
    );
    let config = dir.config(&yaml);
    // `lmgate check` runs without a runtime on the main thread; the token calls are real.
    // The AWS chain finds static keys in the environment, and nothing else.
    let mut with_aws = env();
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "AKIDLMGATETEST000001"),
        ("AWS_SECRET_ACCESS_KEY", "lmgate-test-aws-secret-not-real"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ] {
        with_aws.push((k.into(), v.into()));
    }
    let (code, out) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || check(&config, &with_aws)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}");
    for line in [
        "  openai       api_key from env:LMG_TEST_OPENAI_KEY: resolves (present)".to_string(),
        format!(
            "  anthropic    api_key from file:{}: resolves (present)",
            secrets.anthropic_key.display()
        ),
        "  gemini       api_key from env:LMG_TEST_GEMINI_KEY: resolves (present)".to_string(),
        format!(
            "  google       google service account {}: resolves (token fetched, expires in 3600 s)",
            secrets.service_account.display()
        ),
        "  vertex-adc   google ADC: resolves (token fetched, expires in 3600 s)".to_string(),
        "  bedrock      aws default chain, region eu-west-3: resolves (credentials loaded, no expiry)"
            .to_string(),
        "  local        pass-through only".to_string(),
    ] {
        assert!(out.lines().any(|l| l == line), "missing {line:?} in:\n{out}");
    }
    assert_eq!(tokens.bad.load(Ordering::SeqCst), 0);
    for secret in SCANNED_SECRETS.iter().chain(&["lmgate-test-aws-secret-not-real"]) {
        assert!(!out.contains(secret), "{secret} printed:\n{out}");
    }
    // A variable that is not set, a token endpoint that fails: exit 1, saying which.
    tokens.failing.store(true, Ordering::SeqCst);
    let (code, out) = tokio::task::spawn_blocking(move || check(&config, &env()[..1]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("  gemini       api_key from env:LMG_TEST_GEMINI_KEY: DOES NOT RESOLVE: environment variable LMG_TEST_GEMINI_KEY is not set"), "{out}");
    assert!(
        out.contains("DOES NOT RESOLVE: token endpoint answered 500 (internal_failure: try later)"),
        "{out}"
    );
    assert!(!out.contains(OPENAI_SECRET));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unset_variable_or_unreadable_file_stops_the_start_naming_it() {
    let tokens = TokenEndpoint::new(3600, false);
    let mock = provider_mock(&tokens).await;
    let secrets = Secrets::new(mock.port);
    let dir = ConfigDir::new();
    let config = dir.config(&providers_yaml(&mock, &secrets));
    let (status, text) = run_binary(&config, &[("LMG_TEST_OPENAI_KEY", OPENAI_SECRET)]);
    assert!(!status.success());
    assert!(
        text.contains(&format!(
            "{}: providers.gemini.credential.api_key: environment variable LMG_TEST_GEMINI_KEY is not set",
            config.display()
        )),
        "{text}"
    );
    assert!(!text.contains(OPENAI_SECRET));
    std::fs::remove_file(&secrets.anthropic_key).unwrap();
    let env: Vec<(&str, &str)> = vec![
        ("LMG_TEST_OPENAI_KEY", OPENAI_SECRET),
        ("LMG_TEST_GEMINI_KEY", GEMINI_SECRET),
    ];
    let (status, text) = run_binary(&config, &env);
    assert!(!status.success());
    assert!(
        text.contains("providers.anthropic.credential.api_key: cannot read"),
        "{text}"
    );
}
