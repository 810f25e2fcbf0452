//! The gateway's own AWS identity, which signs Bedrock requests made with a gateway key.
//!
//! Where the credentials come from is aws-config's default chain, as every AWS SDK reads
//! it: environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), the
//! shared config and credentials files (`profile`), web identity (EKS IRSA), the ECS
//! container endpoint, the EC2 instance metadata service; optionally wrapped with STS
//! AssumeRole (`assume_role_arn`). SSO profiles and `credential_process` are not supported
//! (aws-config features left off).
//!
//! The chain does not cache, so [`AwsCredentials`] is the cache: a holder the proxy reads
//! with one `ArcSwap` load, filled by [`AwsRefresher`], a background service that fetches
//! at start (a failure is not fatal: requests get 503 until a fetch succeeds), again five
//! minutes before the credentials expire, and at once when an upstream answer says the
//! token has expired ([`AwsCredentials::expired`], a `Notify` the proxy pokes without
//! waiting). A failed refresh keeps the last good credentials and retries with backoff.
//!
//! Signing itself is `sigv4.rs`. Nothing here logs a secret: [`AwsCredentials`]' `Debug`
//! shows only whether credentials are held and when they expire.

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use aws_config::sts::AssumeRoleProvider;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use log::{debug, info, warn};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Refresh this long before the credentials expire.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Credentials without an expiry (static keys) are re-read this often anyway, so that a
/// rotated profile file is picked up.
pub const STATIC_RECHECK: Duration = Duration::from_secs(60 * 60);
/// Never refresh more often than this, whatever the expiry says (a source that keeps
/// handing out credentials about to expire).
pub const MIN_REFRESH_WAIT: Duration = Duration::from_secs(2);
/// After a failed fetch, retry after 1 s, doubling up to this.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);
/// The STS session name when `assume_role_arn` is set (CloudTrail shows it).
const SESSION_NAME: &str = "lmgate";

/// What the identity is built from: `providers.<name>.credential.aws`, with the region
/// already settled ([`signing_region`]).
#[derive(Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// Signing region, and the region of STS calls.
    pub region: String,
    /// Assume this role with the chain's credentials.
    pub assume_role_arn: Option<String>,
    /// A named profile of the shared config files, instead of `AWS_PROFILE` / `default`.
    pub profile: Option<String>,
}

impl fmt::Debug for AwsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsSettings")
            .field("region", &self.region)
            .field("assume_role_arn", &self.assume_role_arn)
            .field("profile", &self.profile)
            .finish()
    }
}

/// The region to sign for: the configured one, else the one in a Bedrock runtime host name
/// (`bedrock-runtime.<region>.amazonaws.com`, `bedrock-runtime-fips.<region>...`,
/// `<vpce-id>.bedrock-runtime.<region>.vpce.amazonaws.com`). `None`: it must be configured.
pub fn signing_region(configured: Option<&str>, upstream_host: &str) -> Option<String> {
    if let Some(r) = configured.map(str::trim).filter(|r| !r.is_empty()) {
        return Some(r.to_owned());
    }
    let mut labels = upstream_host.split('.');
    labels.find(|l| l.starts_with("bedrock-runtime"))?;
    let region = labels.next()?;
    let looks_like_region = region.contains('-')
        && region.ends_with(|c: char| c.is_ascii_digit())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    looks_like_region.then(|| region.to_owned())
}

/// Whether an upstream error says the signing credentials have expired: Bedrock puts its
/// error code in `x-amzn-errortype` (`ExpiredTokenException[:<namespace>]`); STS-style
/// services say `ExpiredToken`.
pub fn is_expired_token(status: u16, errortype: Option<&[u8]>) -> bool {
    (400..500).contains(&status) && errortype.is_some_and(|e| e.starts_with(b"ExpiredToken"))
}

/// The cached credentials of one provider's AWS identity. The proxy reads it; only
/// [`AwsRefresher`] writes it.
pub struct AwsCredentials {
    region: String,
    current: ArcSwapOption<Credentials>,
    refresh_now: Notify,
    refreshes: AtomicU64,
    failures: AtomicU64,
}

impl fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.current.load();
        f.debug_struct("AwsCredentials")
            .field("region", &self.region)
            .field("held", &held.is_some())
            .field("expiry", &held.as_ref().and_then(|c| c.expiry()))
            .finish()
    }
}

impl AwsCredentials {
    /// An empty holder for `region`; [`AwsRefresher`] fills it.
    pub fn new(region: String) -> AwsCredentials {
        AwsCredentials {
            region,
            current: ArcSwapOption::empty(),
            refresh_now: Notify::new(),
            refreshes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The signing region.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Credentials usable at `now`: none before the first fetch, and none once the held
    /// ones have expired (a signature with them would only earn an `ExpiredToken`).
    pub fn current(&self, now: SystemTime) -> Option<Arc<Credentials>> {
        let c = self.current.load_full()?;
        match c.expiry() {
            Some(exp) if exp <= now => None,
            _ => Some(c),
        }
    }

    /// An upstream said the credentials expired: refresh now. Never waits (a `Notify`
    /// permit; several calls before the refresher wakes make one refresh).
    pub fn expired(&self) {
        self.refresh_now.notify_one();
    }

    /// Successful fetches so far (the first one included).
    pub fn refreshes(&self) -> u64 {
        self.refreshes.load(Ordering::Relaxed)
    }

    /// Failed fetches so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    fn store(&self, c: Credentials) {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        self.current.store(Some(Arc::new(c)));
    }
}

/// How long to wait before the next refresh of credentials that expire at `expiry`.
pub fn refresh_wait(expiry: Option<SystemTime>, now: SystemTime) -> Duration {
    match expiry {
        None => STATIC_RECHECK,
        Some(exp) => exp
            .duration_since(now)
            .unwrap_or_default()
            .saturating_sub(REFRESH_BEFORE_EXPIRY)
            .max(MIN_REFRESH_WAIT),
    }
}

/// The background service that keeps an [`AwsCredentials`] filled.
pub struct AwsRefresher {
    /// The provider name, for logs (`bedrock`).
    name: String,
    settings: AwsSettings,
    holder: Arc<AwsCredentials>,
}

impl AwsRefresher {
    /// A refresher for `holder`, built from `settings`, logging as provider `name`.
    pub fn new(name: String, settings: AwsSettings, holder: Arc<AwsCredentials>) -> AwsRefresher {
        AwsRefresher {
            name,
            settings,
            holder,
        }
    }

    /// The holder it fills.
    pub fn holder(&self) -> &Arc<AwsCredentials> {
        &self.holder
    }
}

/// The credential chain for `settings`. Every HTTP call it makes (IMDS, ECS, STS) goes
/// through hyper on rustls with ring: with its default features off, aws-config has no
/// HTTP client of its own and would fail at the first network source.
async fn build_provider(settings: &AwsSettings) -> SharedCredentialsProvider {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .region(Region::new(settings.region.clone()));
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    let sdk = loader.load().await;
    let chain = sdk
        .credentials_provider()
        .expect("aws_config::defaults always sets the default credentials chain");
    match &settings.assume_role_arn {
        None => chain,
        Some(arn) => SharedCredentialsProvider::new(
            AssumeRoleProvider::builder(arn.clone())
                .session_name(SESSION_NAME)
                // Base credentials, region and HTTP client all come from `sdk`.
                .configure(&sdk)
                .build()
                .await,
        ),
    }
}

/// One fetch from the chain for `settings` (for `lmgate check`): when the credentials
/// expire (`None`: static), or why there are none.
pub async fn fetch_once(settings: &AwsSettings) -> Result<Option<SystemTime>, String> {
    let provider = build_provider(settings).await;
    match provider.provide_credentials().await {
        Ok(c) => Ok(c.expiry()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// An error and its causes on one line (the chain's errors nest the useful part).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[async_trait]
impl BackgroundService for AwsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let provider = tokio::select! {
            _ = shutdown.changed() => return,
            p = build_provider(&self.settings) => p,
        };
        let mut retry = Duration::from_secs(1);
        loop {
            let fetched = tokio::select! {
                _ = shutdown.changed() => return,
                r = provider.provide_credentials() => r,
            };
            let last = Instant::now();
            let wait = match fetched {
                Ok(c) => {
                    retry = Duration::from_secs(1);
                    let wait = refresh_wait(c.expiry(), SystemTime::now());
                    let first = self.holder.refreshes() == 0;
                    // Stored before it is logged: the log line means requests can use it.
                    self.holder.store(c);
                    if first {
                        info!(
                            "{}: aws credentials loaded, region {}, next refresh in {}s",
                            self.name,
                            self.holder.region,
                            wait.as_secs()
                        );
                    } else {
                        debug!(
                            "{}: aws credentials refreshed, next refresh in {}s",
                            self.name,
                            wait.as_secs()
                        );
                    }
                    wait
                }
                Err(e) => {
                    self.holder.failures.fetch_add(1, Ordering::Relaxed);
                    let kept = if self.holder.current.load().is_some() {
                        "keeping the last good ones"
                    } else {
                        "bedrock requests with gateway keys get 503 until one succeeds"
                    };
                    warn!(
                        "{}: aws credentials could not be loaded ({kept}; {} failures so far), retry in {}s: {}",
                        self.name,
                        self.holder.failures(),
                        retry.as_secs(),
                        error_chain(&e)
                    );
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY_WAIT);
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.holder.refresh_now.notified() => {
                    debug!("{}: upstream said the aws token expired, refreshing", self.name);
                    // Several requests may see the same expired token: one refresh at
                    // most every MIN_REFRESH_WAIT.
                    let since = last.elapsed();
                    if since < MIN_REFRESH_WAIT {
                        tokio::select! {
                            _ = shutdown.changed() => return,
                            _ = tokio::time::sleep(MIN_REFRESH_WAIT - since) => {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn region_comes_from_config_or_the_bedrock_host() {
        let host = "bedrock-runtime.eu-west-3.amazonaws.com";
        assert_eq!(
            signing_region(Some("us-west-2"), host).as_deref(),
            Some("us-west-2")
        );
        assert_eq!(signing_region(None, host).as_deref(), Some("eu-west-3"));
        assert_eq!(signing_region(Some(" "), host).as_deref(), Some("eu-west-3"));
        assert_eq!(
            signing_region(None, "bedrock-runtime-fips.us-gov-west-1.amazonaws.com").as_deref(),
            Some("us-gov-west-1")
        );
        assert_eq!(
            signing_region(None, "vpce-0a1b.bedrock-runtime.ap-south-1.vpce.amazonaws.com").as_deref(),
            Some("ap-south-1")
        );
        assert_eq!(
            signing_region(None, "bedrock-runtime.cn-north-1.amazonaws.com.cn").as_deref(),
            Some("cn-north-1")
        );
        assert_eq!(signing_region(None, "127.0.0.1"), None);
        assert_eq!(signing_region(None, "bedrock-runtime.amazonaws.com"), None);
        assert_eq!(signing_region(None, "bedrock-proxy.internal"), None);
    }

    #[test]
    fn expired_token_is_a_client_error_with_that_code() {
        let code =
            Some(&b"ExpiredTokenException:http://internal.amazon.com/coral/com.amazon.coral.service/"[..]);
        assert!(is_expired_token(403, code));
        assert!(is_expired_token(400, Some(b"ExpiredToken")));
        assert!(!is_expired_token(403, Some(b"AccessDeniedException")));
        assert!(!is_expired_token(403, None));
        assert!(!is_expired_token(200, Some(b"ExpiredTokenException")));
        assert!(!is_expired_token(503, Some(b"ExpiredTokenException")));
    }

    #[test]
    fn refresh_is_five_minutes_before_expiry_but_never_a_busy_loop() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(refresh_wait(None, now), STATIC_RECHECK);
        assert_eq!(refresh_wait(Some(now + hour), now), hour - REFRESH_BEFORE_EXPIRY);
        assert_eq!(
            refresh_wait(Some(now + Duration::from_secs(60)), now),
            MIN_REFRESH_WAIT
        );
        assert_eq!(refresh_wait(Some(now - hour), now), MIN_REFRESH_WAIT);
    }

    #[test]
    fn the_holder_serves_only_unexpired_credentials() {
        let now = SystemTime::now();
        let holder = AwsCredentials::new("us-east-1".into());
        assert!(holder.current(now).is_none());
        let c = Credentials::new(
            "AKID",
            "s3cr3t-value",
            None,
            Some(now + Duration::from_secs(60)),
            "t",
        );
        holder.store(c);
        assert!(holder.current(now).is_some());
        assert!(holder.current(now + Duration::from_secs(61)).is_none());
        assert_eq!(holder.refreshes(), 1);
    }

    #[test]
    fn debug_shows_no_secret() {
        let holder = AwsCredentials::new("us-east-1".into());
        holder.store(Credentials::new(
            "AKIDSECRETLESS",
            "s3cr3t-value",
            Some("tok3n".into()),
            None,
            "t",
        ));
        let d = format!("{holder:?}");
        assert!(d.contains("held: true"), "{d}");
        for secret in ["AKIDSECRETLESS", "s3cr3t-value", "tok3n"] {
            assert!(!d.contains(secret), "{d}");
        }
    }

    #[tokio::test]
    async fn expired_wakes_a_waiting_refresher_without_blocking() {
        let holder = Arc::new(AwsCredentials::new("us-east-1".into()));
        let h = Arc::clone(&holder);
        let waiter = tokio::spawn(async move { h.refresh_now.notified().await });
        tokio::task::yield_now().await;
        holder.expired();
        holder.expired();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
