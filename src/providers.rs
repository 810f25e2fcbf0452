//! Providers as data: the default table, the validated [`ProviderConfig`], upstream URLs,
//! and the pure routing rules (prefix match on a segment boundary, path join onto an
//! upstream base path).
//!
//! Nothing here does I/O and nothing here reads the config: `config` builds
//! [`ProviderConfig`]s with these types and rules (the dependency is one-way). Resolving
//! upstream names is `upstream.rs`, refusing dot segments is `inbound.rs`, and the hooks
//! that use these rules are in `proxy.rs`.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How a provider's responses carry token usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiFormat {
    /// OpenAI Chat Completions, Responses, Embeddings (and OpenAI-compatible servers).
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
    /// Gemini API and Vertex AI `generateContent`.
    Gemini,
    /// AWS Bedrock runtime (Converse, ConverseStream, InvokeModel).
    Bedrock,
}

/// One built-in provider.
#[derive(Debug, Clone, Copy)]
pub struct DefaultProvider {
    /// Name and default prefix (`/<name>`).
    pub name: &'static str,
    /// Upstream base URL.
    pub upstream: &'static str,
    /// Usage format.
    pub format: ApiFormat,
}

/// The built-in provider table; config may override any field, disable an entry
/// (`enabled: false`) or add new providers.
pub const DEFAULT_PROVIDERS: &[DefaultProvider] = &[
    DefaultProvider {
        name: "openai",
        upstream: "https://api.openai.com",
        format: ApiFormat::OpenAi,
    },
    DefaultProvider {
        name: "anthropic",
        upstream: "https://api.anthropic.com",
        format: ApiFormat::Anthropic,
    },
    DefaultProvider {
        name: "google",
        upstream: "https://aiplatform.googleapis.com",
        format: ApiFormat::Gemini,
    },
    DefaultProvider {
        name: "gemini",
        upstream: "https://generativelanguage.googleapis.com",
        format: ApiFormat::Gemini,
    },
    DefaultProvider {
        name: "bedrock",
        upstream: "https://bedrock-runtime.us-east-1.amazonaws.com",
        format: ApiFormat::Bedrock,
    },
];

/// A parsed upstream URL: `http[s]://host[:port][/base/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port (scheme default when absent).
    pub port: u16,
    /// Base path without a trailing slash; empty for none.
    pub base_path: String,
    /// The `Host` header value to send (`host` or `host:port` for a non-default port).
    pub host_header: String,
}

impl UpstreamUrl {
    /// Parse and check an upstream URL. The error is a reason in words.
    pub fn parse(raw: &str) -> Result<UpstreamUrl, String> {
        let raw = raw.trim();
        let uri: http::Uri = raw.parse().map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            Some(other) => return Err(format!("scheme `{other}` is not http or https")),
            None => return Err(format!("`{raw}` needs a scheme: http:// or https://")),
        };
        let authority = uri.authority().ok_or_else(|| format!("`{raw}` has no host"))?;
        if authority.as_str().contains('@') {
            return Err("credentials in the upstream URL are not supported".into());
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("`{raw}` has no host"));
        }
        if uri.query().is_some() {
            return Err("an upstream URL cannot carry a query string".into());
        }
        let default_port = if tls { 443 } else { 80 };
        let port = authority.port_u16().unwrap_or(default_port);
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let host_for_header = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_owned()
        };
        let host_header = if port == default_port {
            host_for_header
        } else {
            format!("{host_for_header}:{port}")
        };
        Ok(UpstreamUrl {
            tls,
            host: host.to_owned(),
            port,
            base_path,
            host_header,
        })
    }

    /// The host is an IP literal: no DNS needed.
    pub fn ip(&self) -> Option<std::net::IpAddr> {
        self.host.parse().ok()
    }
}

/// Check and tidy a configured prefix: starts with `/`, no trailing `/`, not `/` alone.
pub fn normalize_prefix(raw: &str) -> Result<String, String> {
    let p = raw.trim();
    if !p.starts_with('/') {
        return Err(format!("`{p}` must start with `/`"));
    }
    let p = p.trim_end_matches('/');
    if p.is_empty() {
        return Err("`/` alone would capture every path; use a named prefix".into());
    }
    if p.contains(['?', '#', '%', ' ']) || p.contains("//") {
        return Err(format!(
            "`{p}` must be a plain path (no `?`, `#`, `%`, spaces or `//`)"
        ));
    }
    Ok(p.to_owned())
}

/// One provider after defaults and overrides (built and validated by `config`).
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// Name, as used in records (`openai`).
    pub name: String,
    /// Path prefix, `/openai`; no trailing slash.
    pub prefix: String,
    /// Where requests go.
    pub upstream: UpstreamUrl,
    /// How responses are read for usage.
    pub format: ApiFormat,
    /// What LMGate uses for gateway keys; `None`: pass-through keys only.
    pub credential: Option<crate::config::CredentialSpec>,
}

/// A provider as the proxy sees it.
#[derive(Debug)]
pub struct Route {
    /// Provider name (shared with every usage record).
    pub name: Arc<str>,
    /// Path prefix.
    pub prefix: String,
    /// Upstream URL.
    pub upstream: UpstreamUrl,
    /// Usage format.
    pub format: ApiFormat,
    /// Index into the peer table (`upstream.rs`).
    pub index: usize,
    /// `Host` for upstream requests, built once.
    pub host_header: http::HeaderValue,
}

/// Prefix routing table. Longest prefix wins; a handful of routes, so a scan.
#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Arc<Route>>,
}

impl Router {
    /// Build from validated providers.
    pub fn new(providers: &[ProviderConfig]) -> Router {
        let mut routes: Vec<Arc<Route>> = providers
            .iter()
            .enumerate()
            .map(|(index, p)| {
                Arc::new(Route {
                    name: p.name.as_str().into(),
                    prefix: p.prefix.clone(),
                    upstream: p.upstream.clone(),
                    format: p.format,
                    index,
                    host_header: http::HeaderValue::from_str(&p.upstream.host_header)
                        .expect("a parsed URI authority is a valid header value"),
                })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Router { routes }
    }

    /// All routes, longest prefix first.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The route whose prefix matches `path` on a segment boundary, and the rest of the path
    /// after the prefix (empty or starting with `/`).
    pub fn match_path<'p>(&self, path: &'p str) -> Option<(&Arc<Route>, &'p str)> {
        self.routes
            .iter()
            .find_map(|r| strip_segment_prefix(path, &r.prefix).map(|rest| (r, rest)))
    }
}

/// `path` minus `prefix` when `prefix` ends on a segment boundary of `path`.
pub fn strip_segment_prefix<'p>(path: &'p str, prefix: &str) -> Option<&'p str> {
    let rest = path.strip_prefix(prefix)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// The upstream request target: base path + rest of the path + `?query`, exact bytes,
/// never a doubled slash at the join and never empty.
pub fn upstream_target(base_path: &str, rest: &str, query: Option<&str>) -> String {
    let mut out = String::with_capacity(base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    out.push_str(base_path);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(prefixes: &[(&str, &str)]) -> Router {
        let providers: Vec<ProviderConfig> = prefixes
            .iter()
            .map(|(name, prefix)| ProviderConfig {
                name: name.to_string(),
                prefix: prefix.to_string(),
                upstream: UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
                format: ApiFormat::OpenAi,
                credential: None,
            })
            .collect();
        Router::new(&providers)
    }

    #[test]
    fn prefix_matches_on_segment_boundary_only() {
        let r = router(&[("openai", "/openai"), ("local", "/openai/local")]);
        let m = |p| r.match_path(p).map(|(r, rest)| (&*r.name, rest));
        assert_eq!(m("/openai/v1/chat"), Some(("openai", "/v1/chat")));
        assert_eq!(m("/openai"), Some(("openai", "")));
        assert_eq!(m("/openai/"), Some(("openai", "/")));
        assert_eq!(m("/openaix/v1"), None);
        assert_eq!(m("/openai/local/v1"), Some(("local", "/v1")));
        assert_eq!(m("/openai/localx"), Some(("openai", "/localx")));
        assert_eq!(m("//openai/v1"), None);
        assert_eq!(m("/%6fpenai/v1"), None);
        assert_eq!(m("/"), None);
    }

    #[test]
    fn target_joins_without_doubling_and_keeps_bytes() {
        assert_eq!(upstream_target("", "/v1/chat", None), "/v1/chat");
        assert_eq!(
            upstream_target("/v1", "/chat", Some("a=1&b=%3A")),
            "/v1/chat?a=1&b=%3A"
        );
        assert_eq!(upstream_target("", "", None), "/");
        assert_eq!(upstream_target("", "", Some("x=1")), "/?x=1");
        assert_eq!(upstream_target("/v1", "", None), "/v1");
        assert_eq!(
            upstream_target("", "/v1/models/gemini-2.5:generateContent%3A", Some("key=k")),
            "/v1/models/gemini-2.5:generateContent%3A?key=k"
        );
    }

    #[test]
    fn upstream_urls_parse_and_reject() {
        let u = UpstreamUrl::parse("https://api.openai.com").unwrap();
        assert_eq!(
            (u.tls, u.port, u.base_path.as_str(), u.host_header.as_str()),
            (true, 443, "", "api.openai.com")
        );
        let u = UpstreamUrl::parse("http://127.0.0.1:8000/v1/").unwrap();
        assert_eq!(
            (u.tls, u.port, u.base_path.as_str(), u.host_header.as_str()),
            (false, 8000, "/v1", "127.0.0.1:8000")
        );
        assert!(u.ip().is_some());
        let u = UpstreamUrl::parse("http://[::1]:9000").unwrap();
        assert_eq!((u.host.as_str(), u.host_header.as_str()), ("::1", "[::1]:9000"));
        assert!(UpstreamUrl::parse("ftp://x").unwrap_err().contains("scheme"));
        assert!(UpstreamUrl::parse("api.openai.com").is_err());
        assert!(UpstreamUrl::parse("http://u:p@x").is_err());
        assert!(UpstreamUrl::parse("http://x/?a=1").is_err());
        assert!(UpstreamUrl::parse("not a url").is_err());
    }

    #[test]
    fn prefixes_are_normalized_or_rejected() {
        assert_eq!(normalize_prefix("/openai/").unwrap(), "/openai");
        assert_eq!(normalize_prefix("/a/b").unwrap(), "/a/b");
        assert!(normalize_prefix("openai").is_err());
        assert!(normalize_prefix("/").is_err());
        assert!(normalize_prefix("/a%20").is_err());
    }
}
