//! Google OAuth access tokens for Vertex AI, without a Google crate.
//!
//! A service-account key file gives an RS256 JWT (signed with ring, the private key parsed
//! once at start) exchanged at the token endpoint (`token_uri`, or `token_url` from the
//! config); Application Default Credentials on GCE, GKE or Cloud Run come from the metadata
//! server. Both answer `{"access_token","expires_in","token_type"}`. [`keep_fresh`] fetches
//! at start, then 5 minutes before each token expires, keeping the last good token (until
//! it expires) and backing off while fetches fail.
//!
//! Neither the key, the JWT nor a token is ever logged; errors carry the endpoint's status
//! and its `error`/`error_description` fields, which hold no secret.

use super::http::HttpClient;
use super::{Credential, CredentialSlot, EnvLookup, Secret};
use crate::config::GoogleSpec;
use crate::providers::ApiFormat;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use log::{info, warn};
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The OAuth scope Vertex AI needs.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Token endpoint when a key file names none.
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// Metadata server when neither the config nor `GCE_METADATA_HOST` names one.
const DEFAULT_METADATA_URL: &str = "http://metadata.google.internal";
/// Path of the default service account's token on the metadata server.
const METADATA_TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
/// A token is replaced this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Backoff after a failed fetch: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A refresh asked for by an upstream 401 waits until this long after the last fetch, so
/// a burst of 401s makes one token call.
const MIN_FORCED_INTERVAL: Duration = Duration::from_secs(10);
/// Lifetime of a signed JWT assertion (Google's maximum).
const JWT_LIFETIME_SECS: u64 = 3600;

/// A parsed service-account key file. Printing it shows the account, never the key.
pub struct ServiceAccount {
    /// `client_email`: the JWT issuer.
    pub client_email: String,
    /// `private_key_id`: the JWT `kid`.
    pub private_key_id: Option<String>,
    /// `token_uri`: where the JWT is exchanged.
    pub token_uri: String,
    key: RsaKeyPair,
}

impl fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .field("private_key", &super::REDACTED)
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

/// Parse a service-account key file (the JSON `gcloud iam service-accounts keys create`
/// writes). The reason never quotes the file.
pub fn parse_service_account(bytes: &[u8]) -> Result<ServiceAccount, String> {
    let f: KeyFile = serde_json::from_slice(bytes).map_err(|_| "not a JSON key file".to_owned())?;
    match f.kind.as_deref() {
        Some("service_account") | None => {}
        Some(other) => {
            return Err(format!(
                "`type` is `{other}`: only service_account key files are supported (for user credentials use adc on Google Cloud)"
            ))
        }
    }
    let client_email = f
        .client_email
        .filter(|e| !e.is_empty())
        .ok_or("no client_email")?;
    let pem = f.private_key.ok_or("no private_key")?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|_| "private_key is not a PKCS#8 PEM key (BEGIN PRIVATE KEY)".to_owned())?;
    let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|_| "private_key is not an RSA key ring can sign with".to_owned())?;
    Ok(ServiceAccount {
        client_email,
        private_key_id: f.private_key_id.filter(|k| !k.is_empty()),
        token_uri: f.token_uri.unwrap_or_else(|| DEFAULT_TOKEN_URI.to_owned()),
        key,
    })
}

/// The JWT bearer assertion for `aud` at `now`: `header.claims.signature`, base64url
/// without padding, signed RS256.
pub fn signed_jwt(sa: &ServiceAccount, aud: &str, now: SystemTime) -> Result<String, String> {
    let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = &sa.private_key_id {
        header["kid"] = kid.as_str().into();
    }
    let claims = serde_json::json!({
        "iss": sa.client_email, "scope": SCOPE, "aud": aud,
        "iat": iat, "exp": iat + JWT_LIFETIME_SECS,
    });
    let mut jwt = URL_SAFE_NO_PAD.encode(header.to_string());
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let mut sig = vec![0; sa.key.public().modulus_len()];
    sa.key
        .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), jwt.as_bytes(), &mut sig)
        .map_err(|_| "RSA signing failed".to_owned())?;
    jwt.push('.');
    jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(jwt)
}

/// An access token and how long it lives.
#[derive(Debug)]
pub struct Token {
    /// The bearer token.
    pub access_token: Secret,
    /// Its lifetime from when it was issued.
    pub expires_in: Duration,
}

#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<u64>,
    error: Option<String>,
    error_description: Option<String>,
}

/// Read a token endpoint's (or metadata server's) answer.
pub fn parse_token_answer(status: u16, body: &[u8]) -> Result<Token, String> {
    let answer: Option<TokenAnswer> = serde_json::from_slice(body).ok();
    if status != 200 {
        let detail = answer
            .and_then(|a| {
                let e = a.error?;
                Some(match a.error_description {
                    Some(d) => format!(" ({e}: {})", d.chars().take(200).collect::<String>()),
                    None => format!(" ({e})"),
                })
            })
            .unwrap_or_default();
        return Err(format!("token endpoint answered {status}{detail}"));
    }
    let a = answer.ok_or("token endpoint answered 200 without a JSON token")?;
    match (a.access_token, a.expires_in) {
        (Some(t), Some(s)) if !t.is_empty() && s > 0 => Ok(Token {
            access_token: Secret::new(t),
            expires_in: Duration::from_secs(s),
        }),
        _ => Err("token endpoint answered 200 without access_token and expires_in".into()),
    }
}

/// When to fetch the next token after one that lives `expires_in`: [`REFRESH_MARGIN`]
/// before it expires, or halfway through a token shorter than the margin (at least 1 s).
pub fn refresh_after(expires_in: Duration) -> Duration {
    match expires_in.checked_sub(REFRESH_MARGIN) {
        Some(d) if d >= Duration::from_secs(1) => d,
        _ => (expires_in / 2).max(Duration::from_secs(1)),
    }
}

/// Where tokens come from.
#[derive(Clone)]
pub(super) enum TokenSource {
    /// A service account's JWT exchanged at `token_url`.
    ServiceAccount {
        sa: Arc<ServiceAccount>,
        token_url: String,
    },
    /// The metadata server's token URL.
    Metadata { url: String },
}

impl TokenSource {
    /// From the config: a key file is read and parsed now (a start error if it cannot be);
    /// the metadata server is `metadata_url`, `GCE_METADATA_HOST` (the variable Google's own
    /// libraries honour) or `metadata.google.internal`.
    pub(super) fn from_spec(spec: &GoogleSpec, env: EnvLookup) -> Result<TokenSource, String> {
        match spec {
            GoogleSpec::ServiceAccount { path, token_url } => {
                let shown = path.display();
                let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
                let sa = parse_service_account(&bytes).map_err(|r| format!("{shown}: {r}"))?;
                let token_url = token_url.clone().unwrap_or_else(|| sa.token_uri.clone());
                Ok(TokenSource::ServiceAccount {
                    sa: Arc::new(sa),
                    token_url,
                })
            }
            GoogleSpec::Adc { metadata_url } => {
                let base = match metadata_url {
                    Some(u) => u.trim_end_matches('/').to_owned(),
                    None => match env("GCE_METADATA_HOST").filter(|h| !h.trim().is_empty()) {
                        Some(host) => format!("http://{}", host.trim()),
                        None => DEFAULT_METADATA_URL.to_owned(),
                    },
                };
                Ok(TokenSource::Metadata {
                    url: format!("{base}{METADATA_TOKEN_PATH}"),
                })
            }
        }
    }

    /// One token call.
    pub(super) async fn fetch(&self, client: &HttpClient) -> Result<Token, String> {
        let answer = match self {
            TokenSource::ServiceAccount { sa, token_url } => {
                // `aud` is the token endpoint the JWT is presented to.
                let jwt = signed_jwt(sa, token_url, SystemTime::now())?;
                // JWT characters ([A-Za-z0-9_-.]) need no form encoding.
                let form = format!(
                    "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={jwt}"
                );
                client
                    .call(
                        "POST",
                        token_url,
                        &[("content-type", "application/x-www-form-urlencoded")],
                        form.as_bytes(),
                    )
                    .await
            }
            TokenSource::Metadata { url } => {
                client
                    .call("GET", url, &[("metadata-flavor", "Google")], b"")
                    .await
            }
        };
        let answer = answer.map_err(|e| e.to_string())?;
        parse_token_answer(answer.status, &answer.body)
    }
}

/// The wait after a failure: `backoff` now, doubled (up to the maximum) for the next one.
fn next_backoff(backoff: &mut Duration) -> Duration {
    let wait = *backoff;
    *backoff = (wait * 2).min(BACKOFF_MAX);
    wait
}

/// Fetch a token now and before each one expires; store each in `slot`. On failure keep
/// the last token (usable until it expires) and retry with backoff.
pub(super) async fn keep_fresh(
    slot: Arc<CredentialSlot>,
    source: TokenSource,
    format: ApiFormat,
    client: Arc<HttpClient>,
) {
    let provider = slot.provider().to_owned();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let last_fetch = Instant::now();
        let issued = SystemTime::now();
        let wait = match source.fetch(&client).await {
            Ok(t) => {
                let expires_at = issued + t.expires_in;
                match Credential::header(format, true, &t.access_token, Some(expires_at)) {
                    Some(c) => {
                        slot.store(c);
                        slot.status.record_ok(Some(expires_at));
                        backoff = BACKOFF_FIRST;
                        let next = refresh_after(t.expires_in);
                        info!(
                            "credential {provider}: access token refreshed, expires in {} s, next refresh in {} s",
                            t.expires_in.as_secs(),
                            next.as_secs()
                        );
                        next
                    }
                    None => {
                        slot.status.record_failed();
                        warn!("credential {provider}: the token endpoint sent a token that is not a valid header value");
                        next_backoff(&mut backoff)
                    }
                }
            }
            Err(reason) => {
                slot.status.record_failed();
                warn!(
                    "credential {provider}: token refresh failed, retrying in {} s: {reason}",
                    backoff.as_secs()
                );
                next_backoff(&mut backoff)
            }
        };
        let forced = tokio::select! {
            _ = tokio::time::sleep(wait) => false,
            _ = slot.refresh_requested() => true,
        };
        if let Some(rest) = MIN_FORCED_INTERVAL
            .checked_sub(last_fetch.elapsed())
            .filter(|_| forced)
        {
            tokio::time::sleep(rest).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};

    fn key_file() -> Vec<u8> {
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/google_sa_test_key.pem"
        ))
        .unwrap();
        serde_json::json!({
            "type": "service_account",
            "project_id": "lmgate-test",
            "private_key_id": "kid-1",
            "private_key": pem,
            "client_email": "lmgate@lmgate-test.iam.gserviceaccount.com",
            "token_uri": "http://127.0.0.1:9/token",
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn a_service_account_jwt_verifies_with_its_public_key() {
        let sa = parse_service_account(&key_file()).unwrap();
        assert_eq!(sa.token_uri, "http://127.0.0.1:9/token");
        assert!(!format!("{sa:?}").contains("PRIVATE"), "{sa:?}");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let jwt = signed_jwt(&sa, "http://127.0.0.1:9/token", now).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, sa.key.public().as_ref());
        assert!(public.verify(input.as_bytes(), &sig).is_ok());
        assert!(public.verify(format!("{input}x").as_bytes(), &sig).is_err());
        let (header, claims) = input.split_once('.').unwrap();
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "kid": "kid-1"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({
                "iss": "lmgate@lmgate-test.iam.gserviceaccount.com",
                "scope": SCOPE,
                "aud": "http://127.0.0.1:9/token",
                "iat": 1_700_000_000u64,
                "exp": 1_700_003_600u64,
            })
        );
    }

    #[test]
    fn bad_key_files_say_what_is_wrong_without_quoting_them() {
        let err = |v: serde_json::Value| parse_service_account(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(parse_service_account(b"nope").unwrap_err(), "not a JSON key file");
        assert!(err(serde_json::json!({"type": "authorized_user"})).contains("authorized_user"));
        assert_eq!(err(serde_json::json!({"private_key": "x"})), "no client_email");
        let e = err(
            serde_json::json!({"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}),
        );
        assert!(e.starts_with("private_key is not"), "{e}");
        assert!(!e.contains("AAAA"));
        let sa = parse_service_account(
            serde_json::json!({"client_email": "a@b", "private_key": serde_json::from_slice::<serde_json::Value>(&key_file()).unwrap()["private_key"]})
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(sa.token_uri, DEFAULT_TOKEN_URI);
    }

    #[test]
    fn token_answers_parse_and_errors_carry_no_token() {
        let t = parse_token_answer(
            200,
            br#"{"access_token":"ya29.abc","expires_in":3599,"token_type":"Bearer"}"#,
        )
        .unwrap();
        assert_eq!(
            (t.access_token.expose(), t.expires_in.as_secs()),
            ("ya29.abc", 3599)
        );
        assert_eq!(
            format!("{t:?}"),
            "Token { access_token: <redacted>, expires_in: 3599s }"
        );
        assert_eq!(
            parse_token_answer(
                400,
                br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            )
            .unwrap_err(),
            "token endpoint answered 400 (invalid_grant: Invalid JWT Signature.)"
        );
        assert_eq!(
            parse_token_answer(503, b"<html>").unwrap_err(),
            "token endpoint answered 503"
        );
        assert!(parse_token_answer(200, br#"{"access_token":"ya29.abc"}"#).is_err());
        assert!(parse_token_answer(200, b"{}").is_err());
    }

    #[test]
    fn refresh_comes_five_minutes_before_expiry() {
        let s = Duration::from_secs;
        assert_eq!(refresh_after(s(3599)), s(3299));
        assert_eq!(refresh_after(s(302)), s(2));
        assert_eq!(refresh_after(s(300)), s(150));
        assert_eq!(refresh_after(s(60)), s(30));
        assert_eq!(refresh_after(s(1)), s(1));
    }

    #[test]
    fn the_metadata_server_comes_from_config_then_gce_metadata_host() {
        let url = |spec: GoogleSpec, env: EnvLookup| match TokenSource::from_spec(&spec, env).unwrap() {
            TokenSource::Metadata { url } => url,
            TokenSource::ServiceAccount { .. } => unreachable!(),
        };
        let none = |_: &str| None;
        let host = |k: &str| (k == "GCE_METADATA_HOST").then(|| "127.0.0.1:8181".to_string());
        assert_eq!(
            url(GoogleSpec::Adc { metadata_url: None }, &none),
            format!("{DEFAULT_METADATA_URL}{METADATA_TOKEN_PATH}")
        );
        assert_eq!(
            url(GoogleSpec::Adc { metadata_url: None }, &host),
            format!("http://127.0.0.1:8181{METADATA_TOKEN_PATH}")
        );
        let configured = GoogleSpec::Adc {
            metadata_url: Some("http://10.0.0.1:80/".into()),
        };
        assert_eq!(
            url(configured, &host),
            format!("http://10.0.0.1:80{METADATA_TOKEN_PATH}")
        );
    }
}
