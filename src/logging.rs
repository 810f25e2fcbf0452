//! Logging setup: `env_logger` behind a redacting wrapper.
//!
//! LMGate's own messages never contain a key (they use `KeyTag`), but Pingora's debug and
//! trace messages print whole request headers, the request line with its query string,
//! and the raw bytes written upstream. At those levels every message passes through
//! [`redact`], which blanks the values of `Authorization`, `x-api-key`, `x-goog-api-key`,
//! `x-amz-security-token` and a `key=` query parameter in all the shapes Pingora prints
//! them. Messages that mention none of these are passed through untouched (no copy).

use log::{LevelFilter, Log, Metadata, Record};
use std::borrow::Cow;

/// What replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// Install the logger: `level` from the config, `RUST_LOG` wins when set.
pub fn init(level: LevelFilter) {
    let inner = env_logger::Builder::new()
        .filter_level(level)
        .parse_default_env()
        .build();
    let max = inner.filter();
    if log::set_boxed_logger(Box::new(RedactingLogger { inner })).is_ok() {
        log::set_max_level(max);
    }
}

struct RedactingLogger {
    inner: env_logger::Logger,
}

impl Log for RedactingLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let msg = match record.args().as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(record.args().to_string()),
        };
        match redact(&msg) {
            Cow::Borrowed(_) => self.inner.log(record),
            Cow::Owned(clean) => self.inner.log(
                &Record::builder()
                    .args(format_args!("{clean}"))
                    .metadata(record.metadata().clone())
                    .module_path(record.module_path())
                    .file(record.file())
                    .line(record.line())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

/// Headers whose values are secrets: the keys, and the AWS session token the gateway adds
/// when it signs a Bedrock request (Pingora prints the upstream request header at debug).
const HEADER_NAMES: [&str; 4] = [
    "authorization",
    "x-api-key",
    "x-goog-api-key",
    "x-amz-security-token",
];

/// Blank key material in a log message. Borrowed when there was nothing to blank.
pub fn redact(msg: &str) -> Cow<'_, str> {
    let lower = msg.to_ascii_lowercase();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    // Header values: `authorization: v`, `"authorization": "v"`, `authorization: v\r\n`.
    for name in HEADER_NAMES {
        let mut from = 0;
        while let Some(i) = lower[from..].find(name) {
            let start = from + i;
            from = start + name.len();
            // A whole name, not part of a longer one.
            let escaped_newline = start >= 2 && &lower.as_bytes()[start - 2..start] == b"\\n";
            if start > 0 && is_name_char(lower.as_bytes()[start - 1]) && !escaped_newline {
                continue;
            }
            let b = lower.as_bytes();
            let mut j = from;
            if b.get(j) == Some(&b'"') {
                j += 1;
            }
            if b.get(j) != Some(&b':') {
                continue;
            }
            j += 1;
            while b.get(j) == Some(&b' ') {
                j += 1;
            }
            let quoted = b.get(j) == Some(&b'"');
            if quoted {
                j += 1;
            }
            let end = value_end(b, j);
            if end > j {
                spans.push((j, end));
            }
        }
    }
    // `?key=` / `&key=` query parameters.
    for pat in ["?key=", "&key="] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(pat) {
            let j = from + i + pat.len();
            from = j;
            let b = lower.as_bytes();
            let mut end = j;
            while end < b.len()
                && !matches!(
                    b[end],
                    b'&' | b' ' | b'"' | b'\\' | b'#' | b'\r' | b'\n' | b',' | b'}'
                )
            {
                end += 1;
            }
            if end > j {
                spans.push((j, end));
            }
        }
    }
    // A bare bearer token anywhere else.
    let mut from = 0;
    while let Some(i) = lower[from..].find("bearer ") {
        let j = from + i + "bearer ".len();
        from = j;
        let end = value_end(lower.as_bytes(), j);
        if end > j {
            spans.push((j, end));
        }
    }
    if spans.is_empty() {
        return Cow::Borrowed(msg);
    }
    spans.sort_unstable();
    let mut out = String::with_capacity(msg.len());
    let mut at = 0;
    for (s, e) in spans {
        if s < at {
            at = at.max(e);
            continue;
        }
        out.push_str(&msg[at..s]);
        out.push_str(REDACTED);
        at = e;
    }
    out.push_str(&msg[at..]);
    Cow::Owned(out)
}

fn is_name_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

/// End of a header value: a quote (the closing one, or the end of a Debug-printed byte
/// string), or the end of the line (a real `\r`/`\n`, or an escaped one).
fn value_end(b: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < b.len() && !matches!(b[end], b'"' | b'\r' | b'\n' | b'\\') {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "sk-test-0001-aaaaaaaaaaaaAAAAAA";

    #[test]
    fn every_shape_pingora_prints_is_blanked() {
        let samples = [
            format!(
                r#"Request header: Parts {{ uri: /openai/v1/x?key={K}&alt=sse, headers: {{"authorization": "Bearer {K}", "x-api-key": "{K}", "X-Goog-Api-Key": "{K}"}} }}"#
            ),
            format!(
                r#"Writing request header: b"GET /v1/x?key={K} HTTP/1.1\r\nAuthorization: Bearer {K}\r\nx-api-key: {K}\r\n\r\n""#
            ),
            format!("raw header authorization: Bearer {K}\r\nnext: 1"),
            format!("token Bearer {K} somewhere"),
            format!(r#"Sending header to upstream {{"x-amz-date": "20240101T000000Z", "x-amz-security-token": "{K}"}}"#),
            format!("Writing request header: b\"POST /model/m/converse HTTP/1.1\\r\\nx-amz-security-token: {K}\\r\\n\""),
        ];
        for s in samples {
            let r = redact(&s);
            assert!(!r.contains(K), "{r}");
            assert!(r.contains(REDACTED));
        }
        let msg = format!(r#"{{"authorization": "Bearer {K}", "content-type": "application/json"}}"#);
        let r = redact(&msg);
        assert_eq!(
            r,
            r#"{"authorization": "<redacted>", "content-type": "application/json"}"#
        );
    }

    #[test]
    fn clean_messages_are_not_copied() {
        for s in [
            "upstream api.openai.com resolved to 1.2.3.4",
            "proxy-authorization-ish text",
            "monkey=1",
        ] {
            assert!(matches!(redact(s), Cow::Borrowed(_)), "{s}");
        }
        assert!(matches!(
            redact("the authorization header is checked"),
            Cow::Borrowed(_)
        ));
    }
}
