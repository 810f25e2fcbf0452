//! Errors the gateway itself decides (a scope refusal, a limit, a body too large for
//! signing, a credential that is not available), written in the shape the caller's
//! provider uses, so the official SDKs raise their usual exception types, retry what they
//! retry, and show the message.
//!
//! Pure: a [`ProviderError`] and an [`ApiFormat`] in, headers and a JSON body out. Shapes:
//! - OpenAI: `{"error":{"message","type","param":null,"code"}}`;
//! - Anthropic: `{"type":"error","error":{"type","message"}}`;
//! - Google (Gemini API, Vertex AI): `{"error":{"code","message","status"}}`;
//! - Bedrock (restJson1): `{"message"}` with the error code in `x-amzn-errortype`, which
//!   botocore reads as `Error.Code`.
//!
//! The gateway's own routing and key errors (404 no route, 403 unknown key) keep their
//! fixed bodies in `outcome.rs`: those come before LMGate knows which provider the caller
//! meant, and the README fixes them.

use crate::outcome::ErrorKind;
use crate::providers::ApiFormat;
use serde_json::json;

/// What kind of refusal this is; each maps to one error type per provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The key may not do this (scope): 403.
    Permission,
    /// The request is malformed or unsupported by the gateway: 400.
    InvalidRequest,
    /// The request body is larger than the gateway will read: 413.
    TooLarge,
    /// A rate limit: 429, retried by the SDKs after `Retry-After`.
    RateLimit,
    /// A budget is spent: 429 (OpenAI, Anthropic, Google; with `x-should-retry: false`,
    /// which the openai and anthropic SDKs honour) or 400 (Bedrock, whose SDKs retry every
    /// 429), so the SDKs do not retry it.
    Quota,
    /// The gateway cannot serve this now (a credential being refreshed): 503, retried.
    Unavailable,
    /// The client took too long to send the request body: 408.
    Timeout,
}

/// A refusal to write in the provider's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    /// The class, which picks the status and the provider's error type.
    pub class: ErrorClass,
    /// What the record's `error_type` says.
    pub kind: ErrorKind,
    /// The human-readable message (never a key or credential).
    pub message: String,
    /// Seconds for `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
}

/// A rendered error: status, extra headers (besides `content-type`), JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// HTTP status.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(&'static str, String)>,
    /// The JSON body.
    pub body: String,
}

impl ErrorClass {
    /// The HTTP status for this class with this provider.
    pub fn status(self, format: ApiFormat) -> u16 {
        match self {
            ErrorClass::Permission => 403,
            ErrorClass::InvalidRequest => 400,
            ErrorClass::TooLarge => 413,
            ErrorClass::RateLimit => 429,
            // botocore retries every 429 as throttling; a spent budget must not be retried.
            ErrorClass::Quota if format == ApiFormat::Bedrock => 400,
            ErrorClass::Quota => 429,
            ErrorClass::Unavailable => 503,
            ErrorClass::Timeout => 408,
        }
    }

    /// Each provider's name for this class, in one table so a class is read across.
    fn names(self) -> Names {
        use ErrorClass::*;
        let (openai, anthropic, google, bedrock) = match self {
            Permission => (
                ("invalid_request_error", "permission_denied"),
                "permission_error",
                "PERMISSION_DENIED",
                "AccessDeniedException",
            ),
            InvalidRequest => (
                ("invalid_request_error", "invalid_request"),
                "invalid_request_error",
                "INVALID_ARGUMENT",
                "ValidationException",
            ),
            TooLarge => (
                ("invalid_request_error", "request_too_large"),
                "request_too_large",
                "INVALID_ARGUMENT",
                "ValidationException",
            ),
            RateLimit => (
                ("requests", "rate_limit_exceeded"),
                "rate_limit_error",
                "RESOURCE_EXHAUSTED",
                "ThrottlingException",
            ),
            // The openai SDK does not retry `insufficient_quota`.
            Quota => (
                ("insufficient_quota", "insufficient_quota"),
                "rate_limit_error",
                "RESOURCE_EXHAUSTED",
                "ServiceQuotaExceededException",
            ),
            Unavailable => (
                ("server_error", "service_unavailable"),
                "api_error",
                "UNAVAILABLE",
                "ServiceUnavailableException",
            ),
            Timeout => (
                ("invalid_request_error", "request_timeout"),
                "timeout_error",
                "DEADLINE_EXCEEDED",
                "RequestTimeoutException",
            ),
        };
        Names {
            openai,
            anthropic,
            google,
            bedrock,
        }
    }
}

/// One class's error type in each provider's vocabulary.
struct Names {
    /// OpenAI `(error.type, error.code)`.
    openai: (&'static str, &'static str),
    /// Anthropic `error.type`.
    anthropic: &'static str,
    /// Google `error.status`.
    google: &'static str,
    /// Bedrock error code (`x-amzn-errortype`).
    bedrock: &'static str,
}

impl ProviderError {
    /// A refusal of `class`, recorded as `kind`.
    pub fn new(class: ErrorClass, kind: ErrorKind, message: impl Into<String>) -> Self {
        ProviderError {
            class,
            kind,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same refusal with a `Retry-After` of `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Status, headers and body in `format`'s shape.
    pub fn render(&self, format: ApiFormat) -> Rendered {
        let status = self.class.status(format);
        let names = self.class.names();
        let msg = self.message.as_str();
        let mut headers = Vec::new();
        if let Some(s) = self.retry_after {
            headers.push(("retry-after", s.to_string()));
        }
        if self.class == ErrorClass::Quota && matches!(format, ApiFormat::OpenAi | ApiFormat::Anthropic) {
            // The Stainless-generated SDKs retry every 429 unless told not to.
            headers.push(("x-should-retry", "false".to_string()));
        }
        let body = match format {
            ApiFormat::OpenAi => {
                let (kind, code) = names.openai;
                json!({"error": {"message": msg, "type": kind, "param": null, "code": code}})
            }
            ApiFormat::Anthropic => {
                json!({"type": "error", "error": {"type": names.anthropic, "message": msg}})
            }
            ApiFormat::Gemini => {
                json!({"error": {"code": status, "message": msg, "status": names.google}})
            }
            ApiFormat::Bedrock => {
                headers.push(("x-amzn-errortype", names.bedrock.to_string()));
                json!({"message": msg})
            }
        };
        Rendered {
            status,
            headers,
            body: body.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSES: [ErrorClass; 7] = [
        ErrorClass::Permission,
        ErrorClass::InvalidRequest,
        ErrorClass::TooLarge,
        ErrorClass::RateLimit,
        ErrorClass::Quota,
        ErrorClass::Unavailable,
        ErrorClass::Timeout,
    ];
    const FORMATS: [ApiFormat; 4] = [
        ApiFormat::OpenAi,
        ApiFormat::Anthropic,
        ApiFormat::Gemini,
        ApiFormat::Bedrock,
    ];

    fn render(class: ErrorClass, format: ApiFormat) -> (Rendered, serde_json::Value) {
        let e = ProviderError::new(class, ErrorKind::Internal, "model \"x\" is \\ not allowed");
        let r = e.render(format);
        let v = serde_json::from_str(&r.body).expect("valid JSON");
        (r, v)
    }

    #[test]
    fn every_shape_is_json_carrying_the_message() {
        for class in CLASSES {
            for format in FORMATS {
                let (_, v) = render(class, format);
                let msg = match format {
                    ApiFormat::Bedrock => &v["message"],
                    _ => &v["error"]["message"],
                };
                assert_eq!(msg, "model \"x\" is \\ not allowed", "{class:?} {format:?}");
            }
        }
    }

    #[test]
    fn each_provider_gets_its_own_error_type() {
        use ApiFormat::*;
        use ErrorClass::*;
        // (class, format, status, where the type is, the type)
        let cases = [
            (RateLimit, OpenAi, 429, "/error/code", "rate_limit_exceeded"),
            (RateLimit, Anthropic, 429, "/error/type", "rate_limit_error"),
            (RateLimit, Gemini, 429, "/error/status", "RESOURCE_EXHAUSTED"),
            (Permission, Anthropic, 403, "/error/type", "permission_error"),
            (Permission, Gemini, 403, "/error/status", "PERMISSION_DENIED"),
            (TooLarge, OpenAi, 413, "/error/code", "request_too_large"),
            (Unavailable, Anthropic, 503, "/error/type", "api_error"),
            (Timeout, Gemini, 408, "/error/status", "DEADLINE_EXCEEDED"),
        ];
        for (class, format, status, pointer, want) in cases {
            let (r, v) = render(class, format);
            assert_eq!(r.status, status, "{class:?} {format:?}");
            assert_eq!(
                v.pointer(pointer).and_then(|t| t.as_str()),
                Some(want),
                "{class:?} {format:?}"
            );
        }
        let (_, v) = render(RateLimit, Anthropic);
        assert_eq!(v["type"], "error");
        let (_, v) = render(RateLimit, Gemini);
        assert_eq!(v["error"]["code"], 429);
        for (class, code) in [
            (RateLimit, "ThrottlingException"),
            (Permission, "AccessDeniedException"),
        ] {
            let (r, v) = render(class, Bedrock);
            assert_eq!(r.status, class.status(Bedrock));
            assert_eq!(r.headers, vec![("x-amzn-errortype", code.to_string())]);
            assert!(v["message"].is_string());
        }
    }

    #[test]
    fn a_spent_budget_is_an_error_the_sdks_do_not_retry() {
        let (r, v) = render(ErrorClass::Quota, ApiFormat::OpenAi);
        assert_eq!(
            (r.status, v["error"]["type"].as_str()),
            (429, Some("insufficient_quota"))
        );
        assert_eq!(r.headers, vec![("x-should-retry", "false".to_string())]);
        let (r, _) = render(ErrorClass::Quota, ApiFormat::Anthropic);
        assert_eq!(r.headers, vec![("x-should-retry", "false".to_string())]);
        let (r, _) = render(ErrorClass::RateLimit, ApiFormat::OpenAi);
        assert!(r.headers.is_empty(), "a rate limit is retried");
        // botocore retries every 429; a budget error is a 400 with a non-retried code.
        let (r, _) = render(ErrorClass::Quota, ApiFormat::Bedrock);
        assert_eq!(r.status, 400);
        assert_eq!(r.headers[0].1, "ServiceQuotaExceededException");
    }
}
