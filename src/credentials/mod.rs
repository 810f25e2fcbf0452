//! Provider credentials held by the gateway, for requests authenticated by a gateway key.
//!
//! Three parts, split as the allow-list is: values that never print ([`Secret`] and
//! [`Credential`], whose `Debug` and `Display` say `<redacted>`), the lock-free holder the
//! proxy reads ([`CredentialSlot`], one `ArcSwap` load per gateway-key request), and the
//! background service that keeps the holders fresh ([`CredentialRefresher`]):
//! - `api_key.rs`: `env:` (read once at start) and `file:` (re-read when the file changes,
//!   keeping the last good value on a bad read);
//! - `google.rs`: OAuth access tokens from a service-account key (an RS256 JWT signed with
//!   ring) or from the metadata server (ADC), refreshed 5 minutes before they expire;
//! - `http.rs`: the small HTTP/1.1 client those token calls use (tokio + rustls on ring,
//!   asynchronous DNS), off the proxy threads; `lmgate report` sends its ClickHouse
//!   queries through it too;
//! - [`aws`]: the gateway's AWS identity (default chain, optional AssumeRole), cached and
//!   refreshed by its own service, for SigV4-signing Bedrock requests (`sigv4.rs`).
//!
//! What a request gets (strip the gateway key, add the header) is `inject.rs`; the config
//! shapes are `config/model.rs`. An `aws` credential gets a slot too (it is configured),
//! but its identity, cache and signing are [`aws`]'s: such a request is signed, not given a
//! header.

mod api_key;
pub mod aws;
mod google;
pub(crate) mod http;

use crate::config::{ConfigError, CredentialSpec, GoogleSpec, SecretSource};
use crate::providers::{ApiFormat, ProviderConfig};
use ::http::{HeaderName, HeaderValue};
use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use log::info;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// What replaces a secret wherever one would be printed.
pub const REDACTED: &str = "<redacted>";

/// Secret text (an API key, an access token). Printing it shows [`REDACTED`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap secret text.
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    /// The text itself, for building a header; never for a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A credential ready for the request path: the header a gateway-key request gets, built
/// once per value (marked sensitive, so `http` never prints it), and when it stops being
/// usable. Printing it shows the header name and [`REDACTED`].
#[derive(Clone)]
pub struct Credential {
    name: HeaderName,
    value: HeaderValue,
    expires_at: Option<SystemTime>,
}

impl Credential {
    /// The header for `secret` with `format`'s conventions (`inject::credential_header`);
    /// `bearer` for an OAuth access token. `None` when the secret cannot be a header value
    /// (control characters): the reason never includes it.
    pub fn header(
        format: ApiFormat,
        bearer: bool,
        secret: &Secret,
        expires_at: Option<SystemTime>,
    ) -> Option<Credential> {
        let (name, prefix) = crate::inject::credential_header(format, bearer);
        let mut text = String::with_capacity(prefix.len() + secret.expose().len());
        text.push_str(prefix);
        text.push_str(secret.expose());
        let mut value = HeaderValue::from_str(&text).ok()?;
        value.set_sensitive(true);
        Some(Credential {
            name,
            value,
            expires_at,
        })
    }

    /// The header name.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The header value (sensitive).
    pub fn value(&self) -> &HeaderValue {
        &self.value
    }

    /// When it expires (`None`: a static key).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// Still good now; the clock is read only for a credential that expires.
    #[inline]
    pub fn usable(&self, now: impl FnOnce() -> SystemTime) -> bool {
        self.expires_at.is_none_or(|t| now() < t)
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credential({}: {REDACTED})", self.name)
    }
}

impl fmt::Display for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// Refresh counts and the current expiry of one provider's credential; read by `/metrics`.
#[derive(Debug, Default)]
pub struct RefreshStatus {
    /// Successful refreshes (a token fetched, a changed file read) since start.
    pub ok: AtomicU64,
    /// Failed refreshes since start.
    pub failed: AtomicU64,
    /// When the credential in use expires (Unix seconds); 0 when it does not.
    pub expires_at_unix: AtomicU64,
}

impl RefreshStatus {
    fn record_ok(&self, expires_at: Option<SystemTime>) {
        let unix = expires_at
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        self.expires_at_unix.store(unix, Ordering::Relaxed);
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    fn record_failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }
}

/// One provider's credential: what the proxy loads, and how the refresher reaches it.
pub struct CredentialSlot {
    provider: String,
    spec: CredentialSpec,
    current: ArcSwapOption<Credential>,
    /// Refresh counts and expiry, for metrics.
    pub status: RefreshStatus,
    refresh_now: Notify,
}

impl fmt::Debug for CredentialSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSlot")
            .field("provider", &self.provider)
            .field("spec", &self.spec)
            .field("loaded", &self.current.load().is_some())
            .finish()
    }
}

impl CredentialSlot {
    /// An empty slot for `provider`'s `spec`: unavailable until something is stored.
    pub fn new(provider: &str, spec: CredentialSpec) -> CredentialSlot {
        CredentialSlot {
            provider: provider.to_owned(),
            spec,
            current: ArcSwapOption::empty(),
            status: RefreshStatus::default(),
            refresh_now: Notify::new(),
        }
    }

    /// The provider's name.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How the credential is configured.
    pub fn spec(&self) -> &CredentialSpec {
        &self.spec
    }

    /// The credential to inject now (`now` gives the time, read only for an expiring
    /// credential): one atomic load, no lock. `None` when none has been obtained yet or the
    /// last one expired.
    #[inline]
    pub fn current(&self, now: impl FnOnce() -> SystemTime) -> Option<Arc<Credential>> {
        self.current.load_full().filter(|c| c.usable(now))
    }

    /// Swap in a new credential (the refresher, and the initial load).
    pub fn store(&self, c: Credential) {
        self.current.store(Some(Arc::new(c)));
    }

    /// Ask the refresher to refresh now (the upstream refused the credential with a 401).
    /// Coalesced: many calls before the refresher runs make one refresh.
    pub fn refresh_soon(&self) {
        self.refresh_now.notify_one();
    }

    /// Wait until [`CredentialSlot::refresh_soon`] is called.
    async fn refresh_requested(&self) {
        self.refresh_now.notified().await
    }
}

/// Every provider's credential slot, indexed like the provider list (and the routes'
/// `index`).
#[derive(Debug, Default)]
pub struct ProviderCredentials {
    by_provider: Vec<Option<Arc<CredentialSlot>>>,
}

impl ProviderCredentials {
    /// The slot of the provider at `index`; `None`: it has no credential (pass-through only).
    #[inline]
    pub fn get(&self, index: usize) -> Option<&CredentialSlot> {
        self.by_provider.get(index)?.as_deref()
    }

    /// Every configured slot, in provider order.
    pub fn slots(&self) -> impl Iterator<Item = &Arc<CredentialSlot>> {
        self.by_provider.iter().flatten()
    }
}

/// Read a secret from its source once (`env:` set and not empty, `file:` readable); the
/// reason never holds the secret. For secrets that are not provider credentials (the
/// ClickHouse user and password).
pub(crate) fn read_secret(source: &SecretSource, env: EnvLookup) -> Result<Secret, String> {
    api_key::read(source, env).map(|(s, _)| s)
}

/// Where a secret source is read from, for the `env:` lookup (the process environment in
/// the binary; a map in tests).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Read every provider's credential as the gateway starts: `env:` variables must be set,
/// `file:` and service-account files readable and well formed. Google tokens are fetched
/// by the refresher, not here: the network may not be up yet (requests get 503
/// `credential_unavailable` until the first token arrives). Errors name the config file,
/// the key and the reason, never a secret.
pub fn load(
    config_file: &Path,
    providers: &[ProviderConfig],
    env: EnvLookup,
    poll_interval: Duration,
) -> Result<(Arc<ProviderCredentials>, CredentialRefresher), ConfigError> {
    let mut by_provider = Vec::with_capacity(providers.len());
    let mut tasks = Vec::new();
    for p in providers {
        let Some(spec) = &p.credential else {
            by_provider.push(None);
            continue;
        };
        let slot = Arc::new(CredentialSlot::new(&p.name, spec.clone()));
        let err = |sub: &str, reason: String| {
            ConfigError::new(
                config_file.display().to_string(),
                format!("providers.{}.credential.{sub}", p.name),
                reason,
            )
        };
        match spec {
            CredentialSpec::ApiKey(source) => {
                let (secret, seen) = api_key::read(source, env).map_err(|r| err("api_key", r))?;
                let c = Credential::header(p.format, false, &secret, None)
                    .ok_or_else(|| err("api_key", format!("{source}: not a valid header value")))?;
                slot.store(c);
                if let SecretSource::File(path) = source {
                    tasks.push(Task::File {
                        slot: Arc::clone(&slot),
                        path: path.clone(),
                        format: p.format,
                        seen,
                    });
                }
            }
            CredentialSpec::Google(g) => {
                let source = google::TokenSource::from_spec(g, env).map_err(|r| err("google", r))?;
                tasks.push(Task::Google {
                    slot: Arc::clone(&slot),
                    source,
                    format: p.format,
                });
            }
            // Signed per request by the AWS module, with its own identity cache.
            CredentialSpec::Aws(_) => {}
        }
        by_provider.push(Some(slot));
    }
    let credentials = Arc::new(ProviderCredentials { by_provider });
    Ok((credentials, CredentialRefresher { tasks, poll_interval }))
}

/// The auth mode `lmgate check` prints for a provider (never a secret).
pub fn describe(spec: Option<&CredentialSpec>, upstream_host: &str) -> String {
    match spec {
        None => "pass-through only".into(),
        Some(CredentialSpec::ApiKey(source)) => format!("api_key from {source}"),
        Some(CredentialSpec::Google(GoogleSpec::ServiceAccount { path, .. })) => {
            format!("google service account {}", path.display())
        }
        Some(CredentialSpec::Google(GoogleSpec::Adc { .. })) => "google ADC".into(),
        Some(CredentialSpec::Aws(a)) => {
            let region = aws::signing_region(a.region.as_deref(), upstream_host);
            let mut s = format!(
                "aws default chain, region {}",
                region.as_deref().unwrap_or("unknown")
            );
            if let Some(p) = &a.profile {
                s.push_str(&format!(", profile {p}"));
            }
            if let Some(arn) = &a.assume_role_arn {
                s.push_str(&format!(", assume role {arn}"));
            }
            s
        }
    }
}

/// Whether a provider's credential resolves now, for `lmgate check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// It does; a detail to print (never the secret).
    Resolves(String),
    /// It does not, and why.
    Fails(String),
}

/// Try a provider's credential now: `env:`/`file:` present and non-empty, a Google token
/// or AWS credentials fetched within `timeout`.
pub async fn resolve_now(p: &ProviderConfig, env: EnvLookup<'_>, timeout: Duration) -> Resolution {
    match &p.credential {
        None => Resolution::Resolves("no credential".into()),
        Some(CredentialSpec::ApiKey(source)) => match api_key::read(source, env) {
            Ok((secret, _)) if Credential::header(p.format, false, &secret, None).is_some() => {
                Resolution::Resolves("present".into())
            }
            Ok(_) => Resolution::Fails(format!("{source}: not a valid header value")),
            Err(reason) => Resolution::Fails(reason),
        },
        Some(CredentialSpec::Google(g)) => {
            let source = match google::TokenSource::from_spec(g, env) {
                Ok(s) => s,
                Err(reason) => return Resolution::Fails(reason),
            };
            let client = http::HttpClient::new(timeout);
            match source.fetch(&client).await {
                Ok(t) => {
                    Resolution::Resolves(format!("token fetched, expires in {} s", t.expires_in.as_secs()))
                }
                Err(e) => Resolution::Fails(e),
            }
        }
        Some(CredentialSpec::Aws(a)) => {
            let Some(region) = aws::signing_region(a.region.as_deref(), &p.upstream.host) else {
                return Resolution::Fails("no signing region".into());
            };
            let settings = aws::AwsSettings {
                region,
                assume_role_arn: a.assume_role_arn.clone(),
                profile: a.profile.clone(),
            };
            match tokio::time::timeout(timeout, aws::fetch_once(&settings)).await {
                Ok(Ok(None)) => Resolution::Resolves("credentials loaded, no expiry".into()),
                Ok(Ok(Some(t))) => {
                    let left = t.duration_since(SystemTime::now()).unwrap_or_default();
                    Resolution::Resolves(format!("credentials loaded, expire in {} s", left.as_secs()))
                }
                Ok(Err(reason)) => Resolution::Fails(reason),
                Err(_) => Resolution::Fails(format!("no credentials within {} s", timeout.as_secs())),
            }
        }
    }
}

/// One credential kept fresh in the background.
enum Task {
    /// A `file:` API key, re-read when the file changes.
    File {
        slot: Arc<CredentialSlot>,
        path: PathBuf,
        format: ApiFormat,
        seen: Option<crate::allowlist::Fingerprint>,
    },
    /// A Google access token, fetched before the last one expires.
    Google {
        slot: Arc<CredentialSlot>,
        source: google::TokenSource,
        format: ApiFormat,
    },
}

/// Keeps `file:` keys and Google tokens fresh: one task per credential on this service's
/// own runtime thread, so no token fetch, DNS lookup or file read ever runs on a proxy
/// thread.
pub struct CredentialRefresher {
    tasks: Vec<Task>,
    poll_interval: Duration,
}

impl fmt::Debug for CredentialRefresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialRefresher")
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

impl CredentialRefresher {
    /// Nothing to refresh (env keys only, or no credentials).
    pub fn is_idle(&self) -> bool {
        self.tasks.is_empty()
    }
}

/// Budget for one token call (connect, TLS, request, answer).
const TOKEN_CALL_TIMEOUT: Duration = Duration::from_secs(15);

#[async_trait]
impl BackgroundService for CredentialRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = Arc::new(http::HttpClient::new(TOKEN_CALL_TIMEOUT));
        let mut set = tokio::task::JoinSet::new();
        for task in &self.tasks {
            match task {
                Task::File {
                    slot,
                    path,
                    format,
                    seen,
                } => {
                    set.spawn(api_key::watch_file(
                        Arc::clone(slot),
                        path.clone(),
                        *format,
                        self.poll_interval,
                        *seen,
                    ));
                }
                Task::Google { slot, source, format } => {
                    set.spawn(google::keep_fresh(
                        Arc::clone(slot),
                        source.clone(),
                        *format,
                        Arc::clone(&client),
                    ));
                }
            }
        }
        info!(
            "credential refresher started: {} credentials to keep fresh",
            set.len()
        );
        let _ = shutdown.changed().await;
        set.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AwsSpec;

    #[test]
    fn secrets_and_credentials_never_print() {
        let s = Secret::new("sk-live-123456");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        let c = Credential::header(ApiFormat::OpenAi, false, &s, None).unwrap();
        assert_eq!(format!("{c}"), "<redacted>");
        assert_eq!(format!("{c:?}"), "Credential(authorization: <redacted>)");
        assert!(c.value().is_sensitive());
        assert_eq!(c.value(), "Bearer sk-live-123456");
        let slot = CredentialSlot::new("openai", CredentialSpec::ApiKey(SecretSource::Env("K".into())));
        slot.store(c);
        assert!(!format!("{slot:?}").contains("sk-live"));
    }

    #[test]
    fn a_secret_that_cannot_be_a_header_is_refused() {
        assert!(Credential::header(ApiFormat::Anthropic, false, &Secret::new("a\nb"), None).is_none());
    }

    #[test]
    fn an_expired_credential_is_not_current() {
        let now = SystemTime::now();
        let slot = CredentialSlot::new(
            "google",
            CredentialSpec::Google(GoogleSpec::Adc { metadata_url: None }),
        );
        assert!(slot.current(|| now).is_none(), "empty until the first token");
        let t = Credential::header(
            ApiFormat::Gemini,
            true,
            &Secret::new("ya29.x"),
            Some(now + Duration::from_secs(60)),
        );
        slot.store(t.unwrap());
        assert!(slot.current(|| now).is_some());
        assert!(slot.current(|| now + Duration::from_secs(61)).is_none());
    }

    fn provider(name: &str, format: ApiFormat, credential: Option<CredentialSpec>) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            prefix: format!("/{name}"),
            upstream: crate::providers::UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            format,
            credential,
        }
    }

    #[test]
    fn load_reads_env_and_file_keys_and_names_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("anthropic");
        std::fs::write(&file, "sk-ant-from-file\n").unwrap();
        let providers = vec![
            provider(
                "openai",
                ApiFormat::OpenAi,
                Some(CredentialSpec::ApiKey(SecretSource::Env("OA".into()))),
            ),
            provider(
                "anthropic",
                ApiFormat::Anthropic,
                Some(CredentialSpec::ApiKey(SecretSource::File(file))),
            ),
            provider("gemini", ApiFormat::Gemini, None),
            provider(
                "bedrock",
                ApiFormat::Bedrock,
                Some(CredentialSpec::Aws(AwsSpec::default())),
            ),
        ];
        let env = |k: &str| (k == "OA").then(|| " sk-openai-env ".to_string());
        let (creds, refresher) = load(Path::new("c.yaml"), &providers, &env, Duration::from_secs(1)).unwrap();
        let now = SystemTime::now();
        let oa = creds.get(0).unwrap().current(|| now).unwrap();
        assert_eq!(
            (oa.name().as_str(), oa.value().to_str().unwrap()),
            ("authorization", "Bearer sk-openai-env")
        );
        let an = creds.get(1).unwrap().current(|| now).unwrap();
        assert_eq!(
            (an.name().as_str(), an.value().to_str().unwrap()),
            ("x-api-key", "sk-ant-from-file")
        );
        assert!(creds.get(2).is_none());
        assert!(
            creds.get(3).unwrap().current(|| now).is_none(),
            "aws requests are signed instead"
        );
        assert_eq!(creds.slots().count(), 3);
        assert!(!refresher.is_idle(), "the file is watched");

        let load_err = |providers: &[ProviderConfig], env: EnvLookup| {
            load(Path::new("c.yaml"), providers, env, Duration::from_secs(1)).unwrap_err()
        };
        let none = |_: &str| None;
        assert_eq!(
            load_err(&providers[..1], &none).to_string(),
            "c.yaml: providers.openai.credential.api_key: environment variable OA is not set"
        );
        let empty = |_: &str| Some("  ".to_string());
        assert_eq!(
            load_err(&providers[..1], &empty).reason,
            "environment variable OA is empty"
        );
        let missing = vec![provider(
            "anthropic",
            ApiFormat::Anthropic,
            Some(CredentialSpec::ApiKey(SecretSource::File(
                dir.path().join("nope"),
            ))),
        )];
        let e = load_err(&missing, &none);
        assert_eq!(e.key, "providers.anthropic.credential.api_key");
        assert!(
            e.reason
                .starts_with(&format!("cannot read {}", dir.path().join("nope").display())),
            "{e}"
        );
    }

    #[test]
    fn check_describes_each_mode_without_secrets() {
        use CredentialSpec::{ApiKey, Aws, Google};
        let role = AwsSpec {
            region: Some("us-east-1".into()),
            assume_role_arn: Some("arn:aws:iam::1:role/r".into()),
            profile: None,
        };
        let sa = GoogleSpec::ServiceAccount {
            path: "/sa.json".into(),
            token_url: None,
        };
        let cases = [
            (None, "api.openai.com", "pass-through only"),
            (
                Some(ApiKey(SecretSource::Env("X".into()))),
                "",
                "api_key from env:X",
            ),
            (
                Some(ApiKey(SecretSource::File("/s/k".into()))),
                "",
                "api_key from file:/s/k",
            ),
            (Some(Google(sa)), "", "google service account /sa.json"),
            (
                Some(Google(GoogleSpec::Adc { metadata_url: None })),
                "",
                "google ADC",
            ),
            (
                Some(Aws(AwsSpec::default())),
                "bedrock-runtime.eu-west-3.amazonaws.com",
                "aws default chain, region eu-west-3",
            ),
            (
                Some(Aws(role)),
                "127.0.0.1",
                "aws default chain, region us-east-1, assume role arn:aws:iam::1:role/r",
            ),
        ];
        for (spec, host, want) in cases {
            assert_eq!(describe(spec.as_ref(), host), want);
        }
    }
}
