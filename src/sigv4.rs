//! AWS Signature Version 4 for Bedrock requests made with a gateway key: the gateway signs,
//! with its own AWS identity, exactly the request it forwards.
//!
//! Pure: credentials, the forwarded method, host, path and query, content type and body
//! hash in; the headers to set out. Where the credentials come from and how they are kept
//! fresh is `credentials/aws.rs`; reading the whole body first is `body_buffer.rs`; the hook
//! that applies the headers is `proxy.rs`.
//!
//! What is signed (the same canonical request botocore and the AWS SDK for Rust build for
//! `bedrock-runtime`, checked against botocore's signer in the tests below):
//! - the method, and the path and query exactly as forwarded: still percent-encoded, then
//!   encoded once more for the canonical request (`%3A` becomes `%253A`), as every AWS
//!   service except S3 expects;
//! - `host`, `content-type` (when the request has one), `x-amz-date` and
//!   `x-amz-security-token` (when the identity has a session token), and no other header;
//! - the SHA-256 of the whole body, never `UNSIGNED-PAYLOAD` (which Bedrock refuses).
//!
//! `x-amz-content-sha256` is not sent: neither botocore nor the Rust SDK send it to Bedrock
//! (it is an S3 header), and the body hash is part of the signature anyway.

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningError, SigningSettings};
use aws_sigv4::sign::v4;
use sha2::{Digest, Sha256};
use std::time::SystemTime;

/// The SigV4 service name of the Bedrock runtime API.
pub const SERVICE: &str = "bedrock";

/// Headers a client's own signature (or a client-side SigV4 attempt) may have left on the
/// request; the gateway removes them before it signs, so that only its own go upstream.
pub const CLIENT_SIGNATURE_HEADERS: [&str; 4] = [
    "authorization",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// The path ending of `InvokeModelWithBidirectionalStream`: an HTTP/2 event stream in both
/// directions, whose body cannot be read before it is signed.
pub const BIDIRECTIONAL_STREAM_SUFFIX: &str = "/invoke-with-bidirectional-stream";

/// The request as it will be forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded<'a> {
    /// `POST`.
    pub method: &'a str,
    /// The upstream `Host` header value.
    pub host: &'a str,
    /// Path and query exactly as forwarded (after the prefix strip), still encoded.
    pub path_and_query: &'a str,
    /// The `content-type` header, when the request has one.
    pub content_type: Option<&'a str>,
    /// Lower-case hex SHA-256 of the whole forwarded body ([`body_sha256_hex`]).
    pub body_sha256_hex: &'a str,
}

/// Why a request could not be signed (a path or header the signer cannot parse).
#[derive(Debug, thiserror::Error)]
#[error("sigv4: cannot sign the request: {0}")]
pub struct SignError(#[from] SigningError);

/// Lower-case hex SHA-256 of `body`, as the canonical request and the signature use it.
pub fn body_sha256_hex(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The headers to set on the forwarded request, lower-case names: `x-amz-date`,
/// `authorization`, and `x-amz-security-token` when `creds` has a session token.
pub fn sign_request(
    creds: &Credentials,
    region: &str,
    req: &Forwarded<'_>,
    now: SystemTime,
) -> Result<Vec<(&'static str, String)>, SignError> {
    // An Arc clone: Credentials share one allocation.
    let identity = creds.clone().into();
    // The defaults are what botocore and the Rust SDK use for non-S3 services: double
    // percent-encoding of the path, path normalization, the session token signed, no
    // x-amz-content-sha256 header.
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .expect("identity, region, name, time and settings are all set")
        .into();
    // Only the headers given here are signed, plus the x-amz-date and x-amz-security-token
    // the signer adds itself: whatever else the request carries stays unsigned.
    let ct = req.content_type.map(|ct| ("content-type", ct));
    let headers = [("host", req.host)].into_iter().chain(ct);
    let uri = format!("https://{}{}", req.host, req.path_and_query);
    let signable = SignableRequest::new(
        req.method,
        uri,
        headers,
        SignableBody::Precomputed(req.body_sha256_hex.to_owned()),
    )?;
    let (instructions, _signature) = sign(signable, &params)?.into_parts();
    let (headers, _query) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name(), h.value().to_owned()))
        .collect())
}

/// `InvokeModelWithBidirectionalStream`, which the gateway refuses for gateway keys.
pub fn is_bidirectional_stream(path: &str) -> bool {
    path.ends_with(BIDIRECTIONAL_STREAM_SUFFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
    const PATH: &str = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke";
    const BODY: &[u8] =
        br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":16,"messages":[{"role":"user","content":"hi"}]}"#;
    const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLETOKEN";
    /// 2024-01-01T00:00:00Z.
    const JAN_1_2024: u64 = 1_704_067_200;

    fn creds(token: Option<&str>) -> Credentials {
        Credentials::new("AKIDEXAMPLE", SECRET, token.map(str::to_owned), None, "test")
    }

    fn signed(creds: &Credentials, body: &[u8], path: &str) -> Vec<(&'static str, String)> {
        let hash = body_sha256_hex(body);
        let req = Forwarded {
            method: "POST",
            host: HOST,
            path_and_query: path,
            content_type: Some("application/json"),
            body_sha256_hex: &hash,
        };
        sign_request(
            creds,
            "us-east-1",
            &req,
            UNIX_EPOCH + Duration::from_secs(JAN_1_2024),
        )
        .unwrap()
    }

    fn header<'a>(h: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    // The expected values come from botocore 1.44.5's own signer (`SigV4Auth.add_auth`,
    // service `bedrock`, region `us-east-1`, clock fixed at 2024-01-01T00:00:00Z) on a
    // request with the same URL, Content-Type and body; it signs the same headers here.
    #[test]
    fn signature_matches_botocore_with_a_session_token() {
        let h = signed(&creds(Some(TOKEN)), BODY, PATH);
        assert_eq!(header(&h, "x-amz-date"), Some("20240101T000000Z"));
        assert_eq!(header(&h, "x-amz-security-token"), Some(TOKEN));
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, \
                 Signature=5dcf3177a268fe7b1a9dcb365374ad627b9403c1fd81d261b57480d27c30d4da"
            )
        );
        assert_eq!(h.len(), 3, "{h:?}");
    }

    #[test]
    fn signature_matches_botocore_without_a_session_token() {
        let h = signed(&creds(None), BODY, PATH);
        assert_eq!(
            header(&h, "authorization"),
            Some(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20240101/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date, \
                 Signature=082c8e13a2bad18b21d57428f36092b3af309032f8afbdc919d800854c2e8dd7"
            )
        );
        assert_eq!(header(&h, "x-amz-security-token"), None);
        assert_eq!(header(&h, "x-amz-content-sha256"), None);
    }

    #[test]
    fn body_path_and_secret_each_change_the_signature() {
        let base = signed(&creds(Some(TOKEN)), BODY, PATH);
        let auth = |h: &[(&'static str, String)]| header(h, "authorization").unwrap().to_owned();
        assert_ne!(auth(&signed(&creds(Some(TOKEN)), b"{}", PATH)), auth(&base));
        let decoded = PATH.replace("%3A", ":");
        assert_ne!(auth(&signed(&creds(Some(TOKEN)), BODY, &decoded)), auth(&base));
        let other = Credentials::new("AKIDEXAMPLE", "another-secret", Some(TOKEN.into()), None, "t");
        assert_ne!(auth(&signed(&other, BODY, PATH)), auth(&base));
    }

    #[test]
    fn body_hash_is_lower_case_hex_sha256() {
        assert_eq!(
            body_sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            body_sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn only_the_bidirectional_stream_path_is_refused() {
        assert!(is_bidirectional_stream(
            "/model/amazon.nova-sonic-v1%3A0/invoke-with-bidirectional-stream"
        ));
        assert!(!is_bidirectional_stream("/model/m/invoke-with-response-stream"));
        assert!(!is_bidirectional_stream("/model/m/converse-stream"));
    }
}
