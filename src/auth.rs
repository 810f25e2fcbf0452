//! Which API key a request presents, and how a key may be shown ([`KeyTag`]).
//!
//! Pure functions over headers and the query string. Whether a key is allowed is
//! `allowlist.rs`; what happens on a bad key is `proxy.rs`.

use http::HeaderMap;
use std::borrow::Cow;
use std::fmt;

/// Where a key was found, highest priority first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// `Authorization: Bearer <key>` (OpenAI, Bedrock API keys, Vertex tokens).
    Bearer,
    /// `x-api-key` (Anthropic).
    XApiKey,
    /// `x-goog-api-key` (Gemini, Vertex express).
    XGoogApiKey,
    /// `?key=` (Gemini).
    QueryKey,
}

/// The key a request presents: the first present source wins, even when it is empty or
/// unusable (then the key is `""` and will not match), so a lower source never rescues a
/// bad higher one.
pub fn extract_key<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<(KeySource, Cow<'a, str>)> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let bytes = v.as_bytes();
        if bytes.len() >= 6
            && bytes[..6].eq_ignore_ascii_case(b"bearer")
            && (bytes.len() == 6 || bytes[6] == b' ')
        {
            let key = std::str::from_utf8(&bytes[6..]).unwrap_or("").trim();
            return Some((KeySource::Bearer, Cow::Borrowed(key)));
        }
    }
    for (name, source) in [
        ("x-api-key", KeySource::XApiKey),
        ("x-goog-api-key", KeySource::XGoogApiKey),
    ] {
        if let Some(v) = headers.get(name) {
            let key = v.to_str().unwrap_or("").trim();
            return Some((source, Cow::Borrowed(key)));
        }
    }
    query_param(query?, "key").map(|k| (KeySource::QueryKey, k))
}

/// First `name=value` in a query string, percent-decoded (an undecodable value is `""`).
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v, true))
    })
}

/// Percent-decode `v` (`+` as space when `plus_as_space`, as in query strings); an invalid
/// escape or non-UTF-8 result gives `""`, never a guess.
pub fn percent_decode(v: &str, plus_as_space: bool) -> Cow<'_, str> {
    if !(v.contains('%') || plus_as_space && v.contains('+')) {
        return Cow::Borrowed(v);
    }
    // The crate passes a broken escape (`%zz`, a trailing `%`) through as text; a key or
    // model id with one is refused instead.
    let escapes_ok = v.split('%').skip(1).all(|s| {
        s.as_bytes()
            .get(..2)
            .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    if !escapes_ok {
        return Cow::Borrowed("");
    }
    let spaced = if plus_as_space {
        Cow::Owned(v.replace('+', " "))
    } else {
        Cow::Borrowed(v)
    };
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map_or(Cow::Borrowed(""), |s| Cow::Owned(s.into_owned()))
}

/// The only form in which a key is ever shown: its last characters. Keys of 12 characters
/// or fewer show half their length at most, so a short key is never recorded whole.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyTag(String);

/// Characters of a key that a [`KeyTag`] keeps.
pub const KEY_TAG_CHARS: usize = 6;

impl KeyTag {
    /// Tag a presented key.
    pub fn new(key: &str) -> KeyTag {
        if key.is_ascii() {
            let keep = KEY_TAG_CHARS.min(key.len() / 2);
            return KeyTag(key[key.len() - keep..].to_owned());
        }
        let n = key.chars().count();
        let keep = KEY_TAG_CHARS.min(n / 2);
        KeyTag(key.chars().skip(n - keep).collect())
    }

    /// The visible tail.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The visible tail, owned (for the record, the tag's last use).
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for KeyTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "...{}", self.0)
    }
}

impl fmt::Debug for KeyTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyTag(...{})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn key<'a>(h: &'a HeaderMap, q: Option<&'a str>) -> Option<(KeySource, String)> {
        extract_key(h, q).map(|(s, k)| (s, k.into_owned()))
    }

    #[test]
    fn each_source_is_found() {
        use KeySource::*;
        assert_eq!(
            key(&headers(&[("authorization", "Bearer sk-1")]), None),
            Some((Bearer, "sk-1".into()))
        );
        assert_eq!(
            key(&headers(&[("authorization", "bearer  sk-1 ")]), None),
            Some((Bearer, "sk-1".into()))
        );
        assert_eq!(
            key(&headers(&[("x-api-key", "ak-1")]), None),
            Some((XApiKey, "ak-1".into()))
        );
        assert_eq!(
            key(&headers(&[("x-goog-api-key", "g-1")]), None),
            Some((XGoogApiKey, "g-1".into()))
        );
        assert_eq!(
            key(&headers(&[]), Some("alt=sse&key=g-2")),
            Some((QueryKey, "g-2".into()))
        );
        assert_eq!(
            key(&headers(&[]), Some("key=a%2Db")),
            Some((QueryKey, "a-b".into()))
        );
        assert_eq!(key(&headers(&[]), Some("alt=sse")), None);
        assert_eq!(key(&headers(&[]), None), None);
    }

    #[test]
    fn a_present_source_wins_even_when_empty() {
        use KeySource::*;
        let h = headers(&[("authorization", "Bearer "), ("x-api-key", "good")]);
        assert_eq!(key(&h, Some("key=good")), Some((Bearer, "".into())));
        let h = headers(&[("x-api-key", "a"), ("x-goog-api-key", "b")]);
        assert_eq!(key(&h, Some("key=c")), Some((XApiKey, "a".into())));
        let h = headers(&[("x-goog-api-key", "b")]);
        assert_eq!(key(&h, Some("key=c")), Some((XGoogApiKey, "b".into())));
        // Not a bearer token (AWS SigV4): the next source is used.
        let h = headers(&[
            ("authorization", "AWS4-HMAC-SHA256 Credential=x"),
            ("x-api-key", "a"),
        ]);
        assert_eq!(key(&h, None), Some((XApiKey, "a".into())));
        let h = headers(&[("authorization", "Bearerx")]);
        assert_eq!(key(&h, None), None);
    }

    #[test]
    fn broken_percent_encoding_gives_an_unusable_key() {
        assert_eq!(query_param("key=%zz", "key").unwrap(), "");
        assert_eq!(query_param("key=ab%2", "key").unwrap(), "");
        assert_eq!(query_param("key=%", "key").unwrap(), "");
        assert_eq!(query_param("key=%41", "key").unwrap(), "A");
        assert_eq!(query_param("key", "key").unwrap(), "");
        assert_eq!(query_param("keys=1", "key"), None);
        assert_eq!(percent_decode("a+b%2B%3a", true), "a b+:");
        assert_eq!(percent_decode("a+b%2F", false), "a+b/");
        assert_eq!(percent_decode("%ff", false), "", "not UTF-8");
    }

    #[test]
    fn key_tag_keeps_only_the_tail() {
        assert_eq!(KeyTag::new("sk-test-0001-abcdef").as_str(), "abcdef");
        assert_eq!(KeyTag::new("sk-test-0001-abcdef").to_string(), "...abcdef");
        assert_eq!(KeyTag::new("short").as_str(), "rt");
        assert_eq!(KeyTag::new("").as_str(), "");
        assert_eq!(KeyTag::new("ключ-секрет-длинный").as_str(), "линный");
        assert!(!format!("{:?}", KeyTag::new("sk-secret-123456")).contains("secret"));
    }
}
