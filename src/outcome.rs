//! How a request ended: the [`ErrorKind`] a record carries, the error responses the gateway
//! writes itself (every body built here, from its kind), and the status a record shows.
//!
//! Pure: `proxy.rs` calls these from its hooks; nothing here touches a session.

use crate::inbound::Refusal;
use pingora::{Error, ErrorSource, ErrorType};

/// Why a request did not get a normal upstream answer. Its `as_str` goes into records, the
/// `error` field of the gateway's own error bodies, and the `kind` label of metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Missing, empty or unknown key.
    Forbidden,
    /// No provider prefix matched.
    NoRoute,
    /// A request LMGate refuses to forward (see `inbound.rs`).
    BadRequest,
    /// The upstream answered with status >= 400.
    UpstreamHttp,
    /// Could not connect, resolve, or complete TLS; or the connection broke.
    UpstreamConnect,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The client went away first.
    ClientDisconnected,
    /// A gateway key on a provider that has no credential configured.
    NoCredential,
    /// The provider's credential is configured but not available now (a token fetch failing).
    CredentialUnavailable,
    /// A bug or an unexpected state in the gateway.
    Internal,
    /// The key's scope does not cover this provider or model.
    ScopeDenied,
    /// A per-minute limit of the key or its owner (429, retried after `Retry-After`).
    RateLimited,
    /// A daily or monthly budget of the key or its owner is spent (not retried).
    BudgetExceeded,
    /// The model has no price and the key has a dollar budget.
    UnpricedModel,
    /// A fleet budget cannot be checked: the shared limit store (Redis) is unreachable
    /// and `fleet.fail_open` is off (503, retried).
    LimitsUnavailable,
}

impl ErrorKind {
    /// Record and response-body spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::UpstreamHttp => "upstream_http",
            ErrorKind::UpstreamConnect => "upstream_connect",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::ClientDisconnected => "client_disconnected",
            ErrorKind::NoCredential => "no_credential",
            ErrorKind::CredentialUnavailable => "credential_unavailable",
            ErrorKind::Internal => "internal",
            ErrorKind::ScopeDenied => "scope_denied",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::BudgetExceeded => "budget_exceeded",
            ErrorKind::UnpricedModel => "unpriced_model",
            ErrorKind::LimitsUnavailable => "limits_unavailable",
        }
    }
}

/// `{"error":"<kind>","message":"<message>"}` as a `&'static str`, so writing an error
/// response allocates nothing. The kind literal is checked against
/// [`ErrorKind::as_str`] by a unit test.
macro_rules! body {
    ($kind:literal, $message:literal) => {
        concat!(r#"{"error":""#, $kind, r#"","message":""#, $message, r#""}"#)
    };
}

/// Every error response the gateway writes itself (as opposed to the upstream's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayError {
    /// Missing, empty or unknown key: 403 with the body the README fixes.
    Forbidden,
    /// No provider prefix matched: 404.
    NoRoute,
    /// Refused before routing (`inbound.rs`).
    Refused(Refusal),
    /// The upstream did not answer in time: 504.
    UpstreamTimeout,
    /// The upstream could not be reached: 502.
    UpstreamConnect,
    /// Anything else, with the status Pingora's error carried (500 when none).
    Internal,
}

impl GatewayError {
    /// The kind the record carries.
    pub fn kind(self) -> ErrorKind {
        match self {
            GatewayError::Forbidden => ErrorKind::Forbidden,
            GatewayError::NoRoute => ErrorKind::NoRoute,
            GatewayError::Refused(_) => ErrorKind::BadRequest,
            GatewayError::UpstreamTimeout => ErrorKind::UpstreamTimeout,
            GatewayError::UpstreamConnect => ErrorKind::UpstreamConnect,
            GatewayError::Internal => ErrorKind::Internal,
        }
    }

    /// The status it is answered with (for `Internal`, the default when the failure
    /// carried none).
    pub fn status(self) -> u16 {
        match self {
            GatewayError::Forbidden => 403,
            GatewayError::NoRoute => 404,
            GatewayError::Refused(Refusal::HeadersTooLarge) => 431,
            GatewayError::Refused(_) => 400,
            GatewayError::UpstreamTimeout => 504,
            GatewayError::UpstreamConnect => 502,
            GatewayError::Internal => 500,
        }
    }

    /// The JSON body. Its `error` field is `self.kind().as_str()`.
    pub fn body(self) -> &'static str {
        match self {
            GatewayError::Forbidden => body!("forbidden", "API key not authorized"),
            GatewayError::NoRoute => body!("no_route", "no provider is configured for this path"),
            GatewayError::Refused(Refusal::NotOriginForm) => {
                body!("bad_request", "the request target must be a path (origin-form)")
            }
            GatewayError::Refused(Refusal::DotSegment) => {
                body!("bad_request", "the path must not contain . or .. segments")
            }
            GatewayError::Refused(Refusal::HeadersTooLarge) => {
                body!("bad_request", "request headers are too large")
            }
            GatewayError::UpstreamTimeout => {
                body!("upstream_timeout", "the upstream did not answer in time")
            }
            GatewayError::UpstreamConnect => {
                body!("upstream_connect", "the upstream could not be reached")
            }
            GatewayError::Internal => body!("internal", "the gateway could not handle this request"),
        }
    }

    /// The answer for a failure Pingora reported: what [`classify_error`] decided.
    pub fn for_failure(kind: ErrorKind) -> GatewayError {
        match kind {
            ErrorKind::UpstreamTimeout => GatewayError::UpstreamTimeout,
            ErrorKind::UpstreamConnect => GatewayError::UpstreamConnect,
            _ => GatewayError::Internal,
        }
    }
}

/// Classify a Pingora error: the status to answer with (0: the client is gone, answer
/// nothing) and the kind for the record.
pub fn classify_error(e: &Error) -> (u16, ErrorKind) {
    use ErrorType::*;
    match e.etype() {
        HTTPStatus(code) => (*code, ErrorKind::Internal),
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => match e.esource() {
            ErrorSource::Downstream => (0, ErrorKind::ClientDisconnected),
            _ => (504, ErrorKind::UpstreamTimeout),
        },
        _ => match e.esource() {
            ErrorSource::Upstream => (502, ErrorKind::UpstreamConnect),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => (0, ErrorKind::ClientDisconnected),
                _ => (400, ErrorKind::Internal),
            },
            ErrorSource::Internal | ErrorSource::Unset => (500, ErrorKind::Internal),
        },
    }
}

/// How a request ended, as the `logging` hook sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ending {
    /// The status of the response header the client was sent, if any.
    pub sent: Option<u16>,
    /// The whole response body went out (the body filter saw its end).
    pub complete: bool,
    /// The kind a hook decided first (a refusal, an upstream status >= 400).
    pub noted: Option<ErrorKind>,
    /// The kind of the error Pingora ended the request with, if any.
    pub failure: Option<ErrorKind>,
}

/// The status and error kind a record carries, decided once the request is over.
///
/// The first cause wins: a kind noted by a hook (an upstream 413 while the client was
/// still uploading) is kept over a later failure (the client then closing the upload).
/// A client that closes after it received the complete response did not disconnect early:
/// that is no error. With no response sent, a request that did not otherwise fail is one
/// the client left (499, as nginx records it); one that failed is a 500.
pub fn record_outcome(end: Ending) -> (u16, Option<ErrorKind>) {
    let failure = match end.failure {
        Some(ErrorKind::ClientDisconnected) if end.complete => None,
        other => other,
    };
    let kind = end.noted.or(failure);
    match end.sent {
        Some(status) => (status, kind),
        None => match kind {
            None | Some(ErrorKind::ClientDisconnected) => (499, Some(ErrorKind::ClientDisconnected)),
            Some(kind) => (500, Some(kind)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [GatewayError; 8] = [
        GatewayError::Forbidden,
        GatewayError::NoRoute,
        GatewayError::Refused(Refusal::NotOriginForm),
        GatewayError::Refused(Refusal::DotSegment),
        GatewayError::Refused(Refusal::HeadersTooLarge),
        GatewayError::UpstreamTimeout,
        GatewayError::UpstreamConnect,
        GatewayError::Internal,
    ];

    #[test]
    fn every_body_is_json_naming_its_kind_with_a_message() {
        for e in ALL {
            let v: serde_json::Value =
                serde_json::from_str(e.body()).unwrap_or_else(|err| panic!("{e:?}: {err}"));
            assert_eq!(v["error"], e.kind().as_str(), "{e:?}");
            assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{e:?}");
            assert_eq!(v.as_object().map(|o| o.len()), Some(2), "{e:?}");
        }
    }

    #[test]
    fn the_forbidden_body_is_the_one_the_readme_fixes() {
        assert_eq!(
            GatewayError::Forbidden.body(),
            r#"{"error":"forbidden","message":"API key not authorized"}"#
        );
        assert_eq!(GatewayError::Forbidden.status(), 403);
    }

    #[test]
    fn statuses_follow_the_kind() {
        assert_eq!(GatewayError::NoRoute.status(), 404);
        assert_eq!(GatewayError::Refused(Refusal::HeadersTooLarge).status(), 431);
        assert_eq!(GatewayError::Refused(Refusal::DotSegment).status(), 400);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
        assert_eq!(GatewayError::UpstreamConnect.status(), 502);
        assert_eq!(
            GatewayError::for_failure(ErrorKind::UpstreamTimeout),
            GatewayError::UpstreamTimeout
        );
        assert_eq!(
            GatewayError::for_failure(ErrorKind::UpstreamConnect),
            GatewayError::UpstreamConnect
        );
        assert_eq!(
            GatewayError::for_failure(ErrorKind::BadRequest),
            GatewayError::Internal
        );
    }

    #[test]
    fn pingora_errors_are_classified_by_type_and_side() {
        let up = |t| Error::explain(t, "x").into_up();
        let down = |t| Error::explain(t, "x").into_down();
        let cases = [
            (up(ErrorType::ConnectRefused), (502, ErrorKind::UpstreamConnect)),
            (up(ErrorType::ReadTimedout), (504, ErrorKind::UpstreamTimeout)),
            (down(ErrorType::ReadTimedout), (0, ErrorKind::ClientDisconnected)),
            (down(ErrorType::WriteError), (0, ErrorKind::ClientDisconnected)),
            (
                Error::explain(ErrorType::HTTPStatus(413), "x"),
                (413, ErrorKind::Internal),
            ),
            (
                Error::explain(ErrorType::InternalError, "x"),
                (500, ErrorKind::Internal),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(classify_error(&e), want, "{e}");
        }
    }

    fn end(sent: Option<u16>, noted: Option<ErrorKind>, failure: Option<ErrorKind>) -> Ending {
        Ending {
            sent,
            complete: false,
            noted,
            failure,
        }
    }

    #[test]
    fn a_sent_status_is_recorded_as_sent() {
        assert_eq!(record_outcome(end(Some(200), None, None)), (200, None));
        assert_eq!(
            record_outcome(end(Some(403), Some(ErrorKind::Forbidden), None)),
            (403, Some(ErrorKind::Forbidden))
        );
        assert_eq!(
            record_outcome(end(Some(200), None, Some(ErrorKind::UpstreamConnect))),
            (200, Some(ErrorKind::UpstreamConnect))
        );
    }

    #[test]
    fn nothing_sent_is_499_when_the_client_left_and_500_when_we_failed() {
        let left = (499, Some(ErrorKind::ClientDisconnected));
        assert_eq!(record_outcome(end(None, None, None)), left);
        assert_eq!(
            record_outcome(end(None, None, Some(ErrorKind::ClientDisconnected))),
            left
        );
        assert_eq!(
            record_outcome(end(None, None, Some(ErrorKind::UpstreamConnect))),
            (500, Some(ErrorKind::UpstreamConnect))
        );
        assert_eq!(
            record_outcome(end(None, Some(ErrorKind::Internal), None)),
            (500, Some(ErrorKind::Internal))
        );
    }

    #[test]
    fn an_upstream_error_status_wins_over_the_client_closing_its_upload() {
        // The upstream answered 413 before reading the whole body; the client, answered,
        // stopped sending and closed, and the body copy failed on the downstream side.
        for complete in [false, true] {
            let e = Ending {
                sent: Some(413),
                complete,
                noted: Some(ErrorKind::UpstreamHttp),
                failure: Some(ErrorKind::ClientDisconnected),
            };
            assert_eq!(record_outcome(e), (413, Some(ErrorKind::UpstreamHttp)));
        }
    }

    #[test]
    fn a_client_that_closes_after_the_complete_answer_did_not_disconnect() {
        let e = Ending {
            sent: Some(200),
            complete: true,
            noted: None,
            failure: Some(ErrorKind::ClientDisconnected),
        };
        assert_eq!(record_outcome(e), (200, None));
        // Cut off mid-body, it did.
        let cut = Ending { complete: false, ..e };
        assert_eq!(record_outcome(cut), (200, Some(ErrorKind::ClientDisconnected)));
        // A complete answer does not hide an upstream failure.
        let broken = Ending {
            failure: Some(ErrorKind::UpstreamConnect),
            ..e
        };
        assert_eq!(record_outcome(broken), (200, Some(ErrorKind::UpstreamConnect)));
    }
}
