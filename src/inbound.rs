//! What an inbound request must look like before it is routed. Pure: a request header in,
//! a refusal (or none) out; its status and body are in `outcome.rs`.
//!
//! Pingora already rejects malformed framing (duplicate or bad `Content-Length`, bad
//! chunked encoding, invalid header bytes) with 400 and answers `CONNECT` with 405 before
//! any hook runs. A request with both `Content-Length` and `Transfer-Encoding` is handled
//! by Pingora as RFC 9112 §6.1 allows: `Content-Length` is removed, the chunked framing is
//! used on both hops, and the client connection is closed after the response, so no
//! desync is possible. These are the checks Pingora leaves to the application.

use percent_encoding::percent_decode_str;
use pingora::http::RequestHeader;

/// Largest request header block accepted (names + values). LLM API calls send a few
/// hundred bytes; Pingora itself would read up to 1 MiB.
pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Absolute-form or asterisk-form target (LMGate is not a forward proxy).
    NotOriginForm,
    /// A `.` or `..` path segment (refused, never normalised).
    DotSegment,
    /// Header block over [`MAX_REQUEST_HEADER_BYTES`].
    HeadersTooLarge,
}

impl Refusal {
    /// After this refusal the connection cannot be trusted for another request.
    pub fn closes_connection(self) -> bool {
        matches!(self, Refusal::HeadersTooLarge)
    }
}

/// Check a request header; `None` when it may be routed.
pub fn check(req: &RequestHeader) -> Option<Refusal> {
    if !req.raw_path().starts_with(b"/") {
        return Some(Refusal::NotOriginForm);
    }
    if has_dot_segment(req.uri.path()) {
        return Some(Refusal::DotSegment);
    }
    let size: usize = req
        .headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if size > MAX_REQUEST_HEADER_BYTES {
        return Some(Refusal::HeadersTooLarge);
    }
    None
}

/// A `.` or `..` segment, plain or percent-encoded (`%2e`), anywhere in the path. Such
/// paths are refused rather than normalised: the gateway forwards bytes exactly, and an
/// upstream that normalises them could be steered somewhere the prefix did not name.
fn has_dot_segment(path: &str) -> bool {
    // Decoded byte by byte as an iterator: no allocation on the hot path, and a long
    // segment stops at its first byte that is not a dot.
    path.split('/').any(|seg| {
        let mut dots = 0;
        for b in percent_decode_str(seg) {
            if b != b'.' || dots == 2 {
                return false;
            }
            dots += 1;
        }
        dots > 0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", path.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn plain_requests_pass() {
        assert_eq!(
            check(&req(
                "/openai/v1/chat/completions?x=1",
                &[("content-length", "2")]
            )),
            None
        );
        assert_eq!(check(&req("/healthz", &[])), None);
    }

    #[test]
    fn each_refusal() {
        assert_eq!(check(&req("/openai/../x", &[])), Some(Refusal::DotSegment));
        let big = "x".repeat(MAX_REQUEST_HEADER_BYTES);
        assert_eq!(
            check(&req("/openai/v1", &[("x-big", &big)])),
            Some(Refusal::HeadersTooLarge)
        );
        assert!(Refusal::HeadersTooLarge.closes_connection() && !Refusal::DotSegment.closes_connection());
    }

    #[test]
    fn dot_segments_are_spotted_in_every_spelling() {
        for p in [
            "/openai/../anthropic/v1",
            "/openai/./v1",
            "/openai/v1/%2e%2e/x",
            "/openai/%2E./x",
            "/..",
            "/openai/%2e",
        ] {
            assert!(has_dot_segment(p), "{p}");
        }
        for p in [
            "/openai/v1/chat",
            "/openai/v1/a..b",
            "/openai/.well-known",
            "/openai/v1/...",
            "/openai/%2e%2e%2e",
            "/openai/%252e",
            "/openai/%2",
            "/openai/%",
            "//",
        ] {
            assert!(!has_dot_segment(p), "{p}");
        }
    }
}
