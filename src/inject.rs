//! Gateway keys on the way upstream: refuse what cannot be served, strip the gateway key,
//! add the provider's credential.
//!
//! Pure, and cheap on the request path: one `ArcSwap` load in [`for_gateway_key`] (in
//! `request_filter`, so a refusal comes before any upstream work; the clock is read only for
//! an expiring token), then in `upstream_request_filter` two header removals, one insert of
//! a prebuilt value (replacing the presented key when it sat in the same header) ([`apply`]),
//! and a scan of the query for `key` while the upstream target is built anyway
//! ([`forwarded_query`]). Pass-through keys
//! never come here: a pass-through key never gets a credential, and a gateway key is never
//! forwarded.
//!
//! Where each format takes its credential: OpenAI and Bedrock API keys
//! `Authorization: Bearer`, Anthropic `x-api-key`, the Gemini API `x-goog-api-key`, and a
//! Google OAuth token (Vertex AI) `Authorization: Bearer`.

use crate::auth::percent_decode;
use crate::config::CredentialSpec;
use crate::credentials::{Credential, CredentialSlot};
use crate::outcome::ErrorKind;
use crate::provider_error::{ErrorClass, ProviderError};
use crate::providers::ApiFormat;
use http::header::AUTHORIZATION;
use http::HeaderName;
use pingora::http::RequestHeader;
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

/// Every header a client may present a key in (as `auth::extract_key` reads them). A
/// gateway-key request loses all of them: whatever a client sent there is not for the
/// provider.
const CLIENT_KEY_HEADERS: [HeaderName; 3] = [
    AUTHORIZATION,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-goog-api-key"),
];

/// The query parameter a Gemini client may put its key in.
const KEY_PARAM: &str = "key";

/// The header a credential goes in, and the prefix before the secret: `bearer` for an
/// OAuth access token, otherwise the format's own API-key header.
pub fn credential_header(format: ApiFormat, bearer: bool) -> (HeaderName, &'static str) {
    match (format, bearer) {
        (_, true) | (ApiFormat::OpenAi | ApiFormat::Bedrock, false) => (AUTHORIZATION, "Bearer "),
        (ApiFormat::Anthropic, false) => (HeaderName::from_static("x-api-key"), ""),
        (ApiFormat::Gemini, false) => (HeaderName::from_static("x-goog-api-key"), ""),
    }
}

/// The credential header for a gateway-key request to `provider`, or the refusal to answer
/// in the provider's error shape: 403 `no_credential` when none is configured (a gateway
/// key is never forwarded in its place), 503 `credential_unavailable` when the configured
/// one is not available now (no token yet, or the last one expired while refreshes fail).
/// `Ok(None)` for an `aws` credential: the request is signed, not given a header, and the
/// AWS signing path decides availability itself.
#[inline]
pub fn for_gateway_key(
    provider: &str,
    slot: Option<&CredentialSlot>,
    now: impl FnOnce() -> SystemTime,
) -> Result<Option<Arc<Credential>>, ProviderError> {
    let Some(slot) = slot else {
        return Err(ProviderError::new(
            ErrorClass::Permission,
            ErrorKind::NoCredential,
            format!(
                "provider {provider} has no credential configured in LMGate, so gateway keys cannot call it"
            ),
        ));
    };
    if matches!(slot.spec(), CredentialSpec::Aws(_)) {
        return Ok(None);
    }
    slot.current(now).map(Some).ok_or_else(|| {
        ProviderError::new(
            ErrorClass::Unavailable,
            ErrorKind::CredentialUnavailable,
            format!(
                "the credential LMGate holds for provider {provider} is not available right now; retry later"
            ),
        )
    })
}

/// The query to forward: a gateway-key request's without its `key` parameters
/// ([`query_without_key`]), any other unchanged. Applied where the upstream target is built
/// anyway, so dropping `?key=` costs no second URI parse.
#[inline]
pub fn forwarded_query(query: Option<&str>, gateway: bool) -> Option<Cow<'_, str>> {
    let q = query?;
    if !gateway {
        return Some(Cow::Borrowed(q));
    }
    match query_without_key(q) {
        None => Some(Cow::Borrowed(q)),
        Some(kept) if kept.is_empty() => None,
        Some(kept) => Some(Cow::Owned(kept)),
    }
}

/// Strip the gateway key from the upstream request's headers (every key header) and add
/// `credential`'s header (none for a signed request); the other headers are untouched. The
/// `key` query parameter is dropped by [`forwarded_query`].
pub fn apply(req: &mut RequestHeader, credential: Option<&Credential>) -> pingora::Result<()> {
    for name in &CLIENT_KEY_HEADERS {
        // The credential's own header is not removed: the insert below replaces every value
        // it has (and its entry in Pingora's case map), one lookup instead of two.
        if credential.is_none_or(|c| c.name() != name) {
            req.remove_header(name);
        }
    }
    match credential {
        Some(c) => req.insert_header(c.name().clone(), c.value().clone()),
        None => Ok(()),
    }
}

/// `query` without its `key` parameters (by name, percent-decoded), other bytes and order
/// unchanged; `None` when it has none.
pub fn query_without_key(query: &str) -> Option<String> {
    let is_key = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        name == KEY_PARAM || (name.contains('%') && percent_decode(name, true) == KEY_PARAM)
    };
    if !query.split('&').any(is_key) {
        return None;
    }
    let mut out = String::with_capacity(query.len());
    for (i, pair) in query.split('&').filter(|p| !is_key(p)).enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(pair);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CredentialSpec, GoogleSpec, SecretSource};
    use crate::credentials::Secret;
    use std::time::Duration;

    fn request(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn header(r: &RequestHeader, name: &str) -> Option<String> {
        r.headers.get(name).map(|v| v.to_str().unwrap().to_owned())
    }

    fn credential(format: ApiFormat, bearer: bool, secret: &str) -> Credential {
        Credential::header(format, bearer, &Secret::new(secret), None).unwrap()
    }

    #[test]
    fn each_format_gets_its_own_header() {
        let cases = [
            (ApiFormat::OpenAi, false, "authorization", "Bearer real-key"),
            (ApiFormat::Bedrock, false, "authorization", "Bearer real-key"),
            (ApiFormat::Anthropic, false, "x-api-key", "real-key"),
            (ApiFormat::Gemini, false, "x-goog-api-key", "real-key"),
            (ApiFormat::Gemini, true, "authorization", "Bearer real-key"),
            (ApiFormat::Anthropic, true, "authorization", "Bearer real-key"),
        ];
        for (format, bearer, name, value) in cases {
            let mut r = request(
                "/v1/x",
                &[
                    ("authorization", "Bearer lmg_gateway"),
                    ("content-type", "application/json"),
                ],
            );
            apply(&mut r, Some(&credential(format, bearer, "real-key"))).unwrap();
            assert_eq!(header(&r, name).as_deref(), Some(value), "{format:?} {bearer}");
            assert_eq!(header(&r, "content-type").as_deref(), Some("application/json"));
            let all: Vec<String> = r
                .headers
                .iter()
                .map(|(_, v)| v.to_str().unwrap().to_owned())
                .collect();
            assert!(all.iter().all(|v| !v.contains("lmg_gateway")), "{all:?}");
            assert_eq!(r.headers.len(), 2, "{:?}", r.headers);
        }
    }

    #[test]
    fn the_gateway_key_is_removed_from_wherever_it_came() {
        for (k, v) in [
            ("authorization", "Bearer lmg_gateway"),
            ("x-api-key", "lmg_gateway"),
            ("x-goog-api-key", "lmg_gateway"),
            ("X-Goog-Api-Key", "lmg_gateway"),
        ] {
            let mut r = request("/v1/x", &[(k, v), ("anthropic-version", "2023-06-01")]);
            apply(&mut r, Some(&credential(ApiFormat::Anthropic, false, "real"))).unwrap();
            assert_eq!(header(&r, "x-api-key").as_deref(), Some("real"));
            assert!(header(&r, "authorization").is_none() && header(&r, "x-goog-api-key").is_none());
            assert_eq!(header(&r, "anthropic-version").as_deref(), Some("2023-06-01"));
        }
        let fq = |q: &'static str, gateway: bool| forwarded_query(Some(q), gateway).map(Cow::into_owned);
        assert_eq!(
            fq("alt=sse&key=lmg_gateway&x=%3A1", true).as_deref(),
            Some("alt=sse&x=%3A1")
        );
        assert_eq!(fq("key=lmg_gateway", true), None, "no empty `?`");
        assert_eq!(fq("pageSize=5", true).as_deref(), Some("pageSize=5"));
        assert_eq!(
            fq("key=sk-pass-through", false).as_deref(),
            Some("key=sk-pass-through")
        );
        assert_eq!(forwarded_query(None, true), None);
    }

    #[test]
    fn repeated_key_headers_all_go_and_the_wire_form_stays_consistent() {
        let mut r = request(
            "/v1/messages",
            &[
                ("Authorization", "Bearer lmg_gateway"),
                ("x-api-key", "lmg_gateway"),
                ("authorization", "Bearer lmg_other"),
                ("X-Api-Key", "lmg_gateway"),
                ("Accept", "application/json"),
            ],
        );
        apply(&mut r, Some(&credential(ApiFormat::OpenAi, false, "real"))).unwrap();
        let mut wire = Vec::new();
        r.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(!wire.contains("lmg_"), "{wire}");
        assert_eq!(wire.matches("Bearer real").count(), 1, "{wire}");
        assert!(wire.contains("Accept: application/json"), "{wire}");
        assert_eq!(r.headers.len(), 2);
    }

    #[test]
    fn query_keeps_every_other_byte() {
        assert_eq!(query_without_key("alt=sse"), None);
        assert_eq!(query_without_key("keys=1&monkey=2"), None);
        assert_eq!(query_without_key("key=a").as_deref(), Some(""));
        assert_eq!(query_without_key("key").as_deref(), Some(""));
        assert_eq!(
            query_without_key("a=%2F&key=x&b=&key=y&c").as_deref(),
            Some("a=%2F&b=&c")
        );
        assert_eq!(query_without_key("k%65y=x&a=1").as_deref(), Some("a=1"));
        assert_eq!(query_without_key("&&key=x&").as_deref(), Some("&&"));
    }

    #[test]
    fn a_gateway_key_gets_the_credential_or_a_refusal_in_the_provider_shape() {
        let now = SystemTime::now();
        let e = for_gateway_key("openai", None, || now).unwrap_err();
        assert_eq!(
            (e.class, e.kind),
            (ErrorClass::Permission, ErrorKind::NoCredential)
        );
        assert!(e.message.contains("openai"));
        assert_eq!(e.render(ApiFormat::OpenAi).status, 403);

        let slot = CredentialSlot::new(
            "google",
            CredentialSpec::Google(GoogleSpec::Adc { metadata_url: None }),
        );
        let e = for_gateway_key("google", Some(&slot), || now).unwrap_err();
        assert_eq!(
            (e.class, e.kind),
            (ErrorClass::Unavailable, ErrorKind::CredentialUnavailable)
        );
        assert_eq!(e.render(ApiFormat::Gemini).status, 503);
        let token = Credential::header(
            ApiFormat::Gemini,
            true,
            &Secret::new("ya29.t"),
            Some(now + Duration::from_secs(9)),
        );
        slot.store(token.unwrap());
        assert_eq!(
            for_gateway_key("google", Some(&slot), || now)
                .unwrap()
                .unwrap()
                .value(),
            "Bearer ya29.t"
        );
        assert!(for_gateway_key("google", Some(&slot), || now + Duration::from_secs(10)).is_err());

        let slot = CredentialSlot::new("openai", CredentialSpec::ApiKey(SecretSource::Env("K".into())));
        slot.store(credential(ApiFormat::OpenAi, false, "sk-real"));
        let c = for_gateway_key("openai", Some(&slot), || now).unwrap().unwrap();
        assert!(!e.message.contains("sk-real") && !format!("{c:?}").contains("sk-real"));

        // Signed, not given a header: the AWS signing path decides.
        let slot = CredentialSlot::new("bedrock", CredentialSpec::Aws(Default::default()));
        assert!(for_gateway_key("bedrock", Some(&slot), || now).unwrap().is_none());
    }

    #[test]
    fn a_signed_request_only_loses_the_gateway_key() {
        let mut r = request(
            "/model/m/converse",
            &[("authorization", "Bearer lmg_gateway"), ("x-amz-target", "t")],
        );
        apply(&mut r, None).unwrap();
        assert!(header(&r, "authorization").is_none());
        assert_eq!(header(&r, "x-amz-target").as_deref(), Some("t"));
    }
}
