//! Per-key scopes: which providers a key may call and which models it may use. Pure: the
//! allow-list columns in, a [`Scope`] out; a request's provider and model in, a
//! [`Denial`] (or none) out.
//!
//! `allowlist.rs` parses the `providers` and `models` columns with [`parse_providers`] and
//! [`parse_models`]; `proxy.rs` applies [`Scope::check_provider`] and
//! [`Scope::check_model`] after the key lookup and writes the refusal in the provider's
//! error shape. Where the model comes from ([`model_from_url`], [`model_from_json_body`])
//! is decided here too, so the gate and the usage record read the same thing.

use crate::providers::ApiFormat;
use std::borrow::Cow;

/// A model pattern: `*` matches any run of characters (none included), `?` exactly one
/// character; every other character matches itself, case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Box<str>);

impl Pattern {
    /// Check one pattern as written in the allow-list.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        if s.is_empty() {
            return Err("a model pattern is empty".into());
        }
        if let Some(c) = s
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == ',')
        {
            return Err(format!("model pattern `{}` contains {c:?}", s.escape_debug()));
        }
        Ok(Pattern(s.into()))
    }

    /// Whether `model` matches. No allocation; O(pattern × model) at worst.
    #[inline]
    pub fn matches(&self, model: &str) -> bool {
        glob_match(&self.0, model)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Length of the UTF-8 sequence a leading byte starts (1 for anything else).
#[inline]
fn char_len(b: u8) -> usize {
    match b {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

/// `*`/`?` glob match over whole strings, without allocating: a left-to-right scan that
/// remembers the last `*` and, on a mismatch, lets it absorb one more character. Both
/// inputs are UTF-8, so a literal byte match never ends inside a character and `?` always
/// starts on a character boundary.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // (pattern index after the last `*`, text index that `*` has absorbed up to)
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                pi += 1;
                star = Some((pi, ti));
                continue;
            }
            Some(b'?') => {
                pi += 1;
                ti += char_len(t[ti]);
                continue;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        let Some((after_star, absorbed)) = star else {
            return false;
        };
        let next = absorbed + char_len(t[absorbed]);
        star = Some((after_star, next));
        pi = after_star;
        ti = next;
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// What a key may do. `None` in a field means "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Provider names (as configured: `openai`, `google`, ...) the key may call.
    pub providers: Option<Box<[Box<str>]>>,
    /// Model patterns the key may use.
    pub models: Option<Box<[Pattern]>>,
}

/// Which scope refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial<'a> {
    /// The key may not call this provider.
    Provider(&'a str),
    /// The key may not use this model.
    Model(&'a str),
    /// The key has a model scope and the request's model could not be read.
    ModelUnknown,
}

/// Longest model name echoed back in a refusal (the name comes from the caller).
const MAX_ECHOED_MODEL_CHARS: usize = 128;

impl Denial<'_> {
    /// The message for the caller (and nothing else: no key, no credential).
    pub fn message(&self, key_id: &str) -> String {
        match self {
            Denial::Provider(p) => format!("key {key_id} may not call provider {p} (scope: providers)"),
            Denial::Model(m) => {
                let shown: String = m.chars().take(MAX_ECHOED_MODEL_CHARS).collect();
                let more = if shown.len() < m.len() { "..." } else { "" };
                format!("key {key_id} may not use model {shown}{more} (scope: models)")
            }
            Denial::ModelUnknown => format!(
                "key {key_id} may only use some models, and the model of this request could not be read (scope: models)"
            ),
        }
    }
}

impl Scope {
    /// No restriction at all (the common case; what a four-column allow-list gives).
    #[inline]
    pub fn is_unrestricted(&self) -> bool {
        self.providers.is_none() && self.models.is_none()
    }

    /// Refuse a provider outside the scope.
    #[inline]
    pub fn check_provider<'a>(&self, provider: &'a str) -> Option<Denial<'a>> {
        let allowed = self.providers.as_ref()?;
        (!allowed.iter().any(|p| **p == *provider)).then_some(Denial::Provider(provider))
    }

    /// Refuse a model outside the scope, or an unknown model when there is a model scope.
    #[inline]
    pub fn check_model<'a>(&self, model: Option<&'a str>) -> Option<Denial<'a>> {
        let patterns = self.models.as_ref()?;
        let Some(model) = model else {
            return Some(Denial::ModelUnknown);
        };
        (!patterns.iter().any(|p| p.matches(model))).then_some(Denial::Model(model))
    }
}

/// Whether the model of a request in `format` is in its body (OpenAI, Anthropic) rather
/// than its URL (Gemini API, Vertex AI, Bedrock).
pub fn model_in_body(format: ApiFormat) -> bool {
    matches!(format, ApiFormat::OpenAi | ApiFormat::Anthropic)
}

/// The model a request names, where its format puts it: the JSON body's top-level
/// `"model"` (OpenAI, Anthropic; `body` is the buffered body, `None` when it was not read)
/// or the path after the provider prefix (Gemini API, Vertex AI, Bedrock).
pub fn request_model<'b>(format: ApiFormat, path: &str, body: Option<&'b [u8]>) -> Option<Cow<'b, str>> {
    if model_in_body(format) {
        body.and_then(model_from_json_body)
    } else {
        model_from_url(path).map(Cow::Owned)
    }
}

/// The model a request path names, as usage records read it (`.../models/<m>:<method>`,
/// `/model/<id>/<op>`, percent-decoded). A decoded name with a `.` or `..` segment is not
/// a model an upstream would resolve as written: it counts as unreadable.
pub fn model_from_url(path: &str) -> Option<String> {
    let m = crate::usage::model_from_path(path)?;
    (!m.split('/').any(|s| s == "." || s == "..")).then_some(m)
}

/// The top-level `"model"` string of a JSON request body. `None` when the body is not a
/// JSON object, has no `model` string, or names `model` twice (an upstream might read
/// either one).
pub fn model_from_json_body(body: &[u8]) -> Option<Cow<'_, str>> {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    // A derived struct also reads a JSON array positionally: only an object will do.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    serde_json::from_slice::<Top>(body).ok()?.model
}

/// Split a space-separated column value; empty means "no restriction".
fn words(field: &str) -> Option<impl Iterator<Item = &str>> {
    let field = field.trim();
    (!field.is_empty()).then(|| field.split_ascii_whitespace())
}

/// Whether `name` is spelt as a provider name can be (the config's rule: lowercase
/// letters, digits, `_` and `-`).
pub fn is_provider_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The `providers` column: space-separated provider names; empty = all.
pub fn parse_providers(field: &str) -> Result<Option<Box<[Box<str>]>>, String> {
    let Some(names) = words(field) else {
        return Ok(None);
    };
    let mut out: Vec<Box<str>> = Vec::new();
    for name in names {
        if !is_provider_name(name) {
            return Err(format!(
                "`{}` is not a provider name (lowercase letters, digits, `_` and `-`)",
                name.escape_debug()
            ));
        }
        if !out.iter().any(|n| **n == *name) {
            out.push(name.into());
        }
    }
    Ok(Some(out.into()))
}

/// The `models` column: space-separated patterns; empty = all.
pub fn parse_models(field: &str) -> Result<Option<Box<[Pattern]>>, String> {
    let Some(patterns) = words(field) else {
        return Ok(None);
    };
    patterns
        .map(Pattern::parse)
        .collect::<Result<Vec<_>, _>>()
        .map(|v| Some(v.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_and_question_mark() {
        let yes = [
            ("gpt-4o*", "gpt-4o"),
            ("gpt-4o*", "gpt-4o-mini-2024-07-18"),
            ("*", ""),
            ("*", "anything"),
            ("claude-3-?-sonnet*", "claude-3-5-sonnet-20240620"),
            ("*sonnet*", "anthropic.claude-3-5-sonnet-20240620-v1:0"),
            ("a*b*c", "aXXbYYc"),
            ("a*b*c", "abbbc"),
            ("a*a*a", "aaa"),
            ("??", "éa"),
            ("?", "日"),
            ("gemini-2.?-flash", "gemini-2.0-flash"),
            ("**x", "x"),
            ("exact", "exact"),
        ];
        for (p, t) in yes {
            assert!(glob_match(p, t), "{p} should match {t}");
        }
        let no = [
            ("gpt-4o*", "gpt-4"),
            ("gpt-4o*", "GPT-4o"),
            ("gpt-4o", "gpt-4o-mini"),
            ("?", ""),
            ("?", "ab"),
            ("??", "日"),
            ("a*b*c", "aXXbYY"),
            ("*sonnet", "sonnet-x"),
            ("exact", "exac"),
            ("", "x"),
        ];
        for (p, t) in no {
            assert!(!glob_match(p, t), "{p} should not match {t}");
        }
        assert!(glob_match("", ""));
    }

    /// A slow but obviously right matcher to compare with.
    fn reference(p: &[char], t: &[char]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
            Some(('?', rest)) => !t.is_empty() && reference(rest, &t[1..]),
            Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
        }
    }

    #[test]
    fn glob_agrees_with_a_reference_matcher_on_every_small_case() {
        let alphabet = ['a', 'b', 'é', '*', '?'];
        let texts = ['a', 'b', 'é'];
        let mut all = vec![String::new()];
        for len in 1..=4 {
            let mut next = Vec::new();
            for s in all.iter().filter(|s| s.chars().count() == len - 1) {
                for c in alphabet {
                    next.push(format!("{s}{c}"));
                }
            }
            all.extend(next);
        }
        let texts: Vec<String> = all
            .iter()
            .filter(|s| s.chars().all(|c| texts.contains(&c)))
            .cloned()
            .collect();
        for p in &all {
            let pc: Vec<char> = p.chars().collect();
            for t in &texts {
                let tc: Vec<char> = t.chars().collect();
                assert_eq!(glob_match(p, t), reference(&pc, &tc), "{p:?} vs {t:?}");
            }
        }
    }

    #[test]
    fn an_unrestricted_scope_allows_everything_even_an_unknown_model() {
        let s = Scope::default();
        assert!(s.is_unrestricted());
        assert_eq!(s.check_provider("openai"), None);
        assert_eq!(s.check_model(None), None);
        assert_eq!(s.check_model(Some("x")), None);
    }

    #[test]
    fn provider_and_model_scopes_refuse_what_they_do_not_list() {
        let s = Scope {
            providers: parse_providers("openai  anthropic").unwrap(),
            models: parse_models("gpt-4o* claude-3-5-*").unwrap(),
        };
        assert!(!s.is_unrestricted());
        assert_eq!(s.check_provider("openai"), None);
        assert_eq!(s.check_provider("gemini"), Some(Denial::Provider("gemini")));
        assert_eq!(s.check_model(Some("gpt-4o-mini")), None);
        assert_eq!(s.check_model(Some("claude-3-5-haiku")), None);
        assert_eq!(s.check_model(Some("o1")), Some(Denial::Model("o1")));
        assert_eq!(s.check_model(None), Some(Denial::ModelUnknown));
        let only_models = Scope {
            providers: None,
            models: parse_models("x").unwrap(),
        };
        assert_eq!(only_models.check_provider("bedrock"), None);
    }

    #[test]
    fn refusal_messages_name_the_scope_and_cap_the_echoed_model() {
        assert_eq!(
            Denial::Provider("gemini").message("team-a"),
            "key team-a may not call provider gemini (scope: providers)"
        );
        assert_eq!(
            Denial::Model("o1").message("team-a"),
            "key team-a may not use model o1 (scope: models)"
        );
        assert!(Denial::ModelUnknown.message("t").contains("could not be read"));
        let long = "m".repeat(1000);
        let msg = Denial::Model(&long).message("t");
        assert!(msg.len() < 200 && msg.contains("m..."), "{msg}");
    }

    #[test]
    fn columns_parse_and_reject_with_reasons() {
        assert_eq!(parse_providers("").unwrap(), None);
        assert_eq!(parse_providers("   ").unwrap(), None);
        assert_eq!(
            parse_providers("openai openai google").unwrap().unwrap().len(),
            2,
            "duplicates collapse"
        );
        assert!(parse_providers("OpenAI").unwrap_err().contains("`OpenAI`"));
        assert!(parse_providers("open;ai").is_err());
        assert_eq!(parse_models("").unwrap(), None);
        let m = parse_models("gpt-4o* o1").unwrap().unwrap();
        assert_eq!(
            m.iter().map(Pattern::as_str).collect::<Vec<_>>(),
            ["gpt-4o*", "o1"]
        );
        assert!(Pattern::parse("a,b").is_err());
        assert!(Pattern::parse("a\u{7}").is_err());
        assert!(Pattern::parse("").is_err());
    }

    #[test]
    fn the_body_model_is_the_top_level_string_only() {
        let m = |b: &str| model_from_json_body(b.as_bytes()).map(|c| c.into_owned());
        assert_eq!(
            m(r#"{"model":"gpt-4o","messages":[]}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            m(r#"{"messages":[{"model":"inner"}],"model":"gpt-4o\u002dmini"}"#).as_deref(),
            Some("gpt-4o-mini"),
            "escapes are decoded; nested keys do not count"
        );
        assert_eq!(m(r#"{"messages":[{"model":"inner"}]}"#), None);
        assert_eq!(
            m(r#"{"model":"a","model":"b"}"#),
            None,
            "a second model is ambiguous"
        );
        assert_eq!(m(r#"{"model":null}"#), None);
        assert_eq!(m(r#"{"model":4}"#), None);
        assert_eq!(m(r#"["model"]"#), None);
        assert_eq!(m(r#"{"model":"a"} trailing"#), None);
        assert_eq!(m(""), None);
        assert_eq!(m("model=gpt-4o"), None);
        let whole = r#"{"model":"gpt-4o"}"#;
        for cut in 0..whole.len() {
            assert_eq!(m(&whole[..cut]), None, "truncated at {cut}");
        }
    }

    #[test]
    fn the_url_model_is_the_records_one_without_dot_segments() {
        assert_eq!(
            model_from_url("/v1beta/models/gemini-2.0-flash:generateContent").as_deref(),
            Some("gemini-2.0-flash")
        );
        assert_eq!(
            model_from_url("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke").as_deref(),
            Some("anthropic.claude-3-5-sonnet-20240620-v1:0")
        );
        assert_eq!(
            model_from_url("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fus.x/converse")
                .as_deref(),
            Some("arn:aws:bedrock:us-east-1:1:inference-profile/us.x")
        );
        assert_eq!(model_from_url("/model/a%2F..%2Fb/invoke"), None);
        assert_eq!(model_from_url("/v1beta/models"), None);
        assert!(model_in_body(ApiFormat::OpenAi) && model_in_body(ApiFormat::Anthropic));
        let body = Some(&br#"{"model":"from-body"}"#[..]);
        let path = "/v1/models/from-url:generateContent";
        assert_eq!(
            request_model(ApiFormat::OpenAi, path, body).as_deref(),
            Some("from-body")
        );
        assert_eq!(request_model(ApiFormat::Anthropic, path, None), None);
        assert_eq!(
            request_model(ApiFormat::Gemini, path, body).as_deref(),
            Some("from-url")
        );
        assert_eq!(
            request_model(ApiFormat::Bedrock, "/model/m/invoke", None).as_deref(),
            Some("m")
        );
        assert!(!model_in_body(ApiFormat::Gemini) && !model_in_body(ApiFormat::Bedrock));
    }
}
