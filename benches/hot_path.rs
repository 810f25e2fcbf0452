//! The per-request pure pieces of the proxy, and config/allow-list loading
//! (targets: allow-list lookup <= 100 ns, usage record serialisation <= 1 µs).
//!
//! Also the SigV4 cost of a Bedrock request with a gateway key (`sigv4`: body hash + signing
//! for a 10 kB and a 1 MB body, and the signing alone).
//!
//! `cargo bench --bench hot_path` (add `-- <filter>` for a subset).

use arc_swap::ArcSwap;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use lmgate::usage::{model_from_path, BodyKind, Collector, Usage, UsageStatus};
use lmgate::Config;
use lmgate::{extract_key, KeyTag};
use lmgate::{hashed_form, parse_allowlist, AllowList, SharedAllowList};
use lmgate::{parse_models, parse_providers, request_model, Scope};
use lmgate::{upstream_target, ApiFormat, Router};
use lmgate::{CostStatus, RecordParts, UsageRecord};
use std::path::Path;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

/// A key shaped like an OpenAI project key (`sk-proj-` + 48 characters), deterministic.
fn key(i: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut s = String::from("sk-proj-");
    for _ in 0..48 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
    }
    s
}

/// Allow-list CSV with `n` keys, every one plaintext or every one `sha256:`.
fn allowlist_csv(n: u64, hashed: bool) -> Vec<u8> {
    let mut csv = String::from("id,api_key,owner,added\n");
    for i in 0..n {
        let k = if hashed { hashed_form(&key(i)) } else { key(i) };
        csv.push_str(&format!("team-{i},{k},owner{i}@example.com,2026-11-23\n"));
    }
    csv.into_bytes()
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

fn bench_allowlist(c: &mut Criterion) {
    let mut g = c.benchmark_group("allowlist_lookup");
    for n in [10u64, 100_000] {
        for hashed in [false, true] {
            let form = if hashed { "sha256" } else { "plain" };
            let list = parse_allowlist(&allowlist_csv(n, hashed)).expect("valid allow-list");
            let hit = key(n / 2);
            let miss = key(n + 7);
            assert!(list.lookup(&hit).is_some() && list.lookup(&miss).is_none());
            g.bench_function(BenchmarkId::new(format!("{form}/hit"), n), |b| {
                b.iter(|| list.lookup(black_box(&hit)).is_some())
            });
            g.bench_function(BenchmarkId::new(format!("{form}/miss"), n), |b| {
                b.iter(|| list.lookup(black_box(&miss)).is_some())
            });
        }
    }
    // As the proxy does it: ArcSwap load, lookup, clone the entry's Arc.
    let shared: SharedAllowList = Arc::new(ArcSwap::from_pointee(
        parse_allowlist(&allowlist_csv(100_000, false)).expect("valid allow-list"),
    ));
    let hit = key(4242);
    g.bench_function("shared_load_lookup_clone/plain/100000", |b| {
        b.iter(|| shared.load().lookup(black_box(&hit)))
    });
    g.finish();

    let mut g = c.benchmark_group("allowlist_parse");
    g.sample_size(10);
    for n in [10u64, 100_000] {
        for hashed in [false, true] {
            let form = if hashed { "sha256" } else { "plain" };
            let csv = allowlist_csv(n, hashed);
            g.throughput(Throughput::Bytes(csv.len() as u64));
            g.bench_with_input(BenchmarkId::new(form, n), &csv, |b, csv| {
                b.iter(|| parse_allowlist(black_box(csv)).map(|l: AllowList| l.len()))
            });
        }
    }
    g.finish();
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    // What an OpenAI SDK sends besides the key.
    for (k, v) in [
        ("content-type", "application/json"),
        ("accept", "application/json"),
        ("user-agent", "OpenAI/Python 1.54.4"),
        ("x-stainless-lang", "python"),
        ("x-stainless-package-version", "1.54.4"),
        ("content-length", "152"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).expect("header value"));
    }
    h
}

fn bench_request(c: &mut Criterion) {
    let k = key(1);
    let mut g = c.benchmark_group("extract_key");
    let bearer = headers(&[("authorization", &format!("Bearer {k}"))]);
    let x_api_key = headers(&[("x-api-key", &k)]);
    let goog = headers(&[("x-goog-api-key", &k)]);
    let none = headers(&[]);
    let query = format!("alt=sse&key={k}");
    g.bench_function("bearer", |b| {
        b.iter(|| extract_key(black_box(&bearer), None).map(|(_, k)| k.len()))
    });
    g.bench_function("x_api_key", |b| {
        b.iter(|| extract_key(black_box(&x_api_key), None).map(|(_, k)| k.len()))
    });
    g.bench_function("x_goog_api_key", |b| {
        b.iter(|| extract_key(black_box(&goog), None).map(|(_, k)| k.len()))
    });
    g.bench_function("query_key", |b| {
        b.iter(|| extract_key(black_box(&none), Some(black_box(&query))).map(|(_, k)| k.len()))
    });
    g.bench_function("key_tag", |b| b.iter(|| KeyTag::new(black_box(&k))));
    g.finish();

    let cfg = Config::from_yaml_str("", Path::new("bench.yaml"), Vec::new()).expect("default config");
    let router = Router::new(&cfg.providers);
    let mut g = c.benchmark_group("route");
    for (name, path) in [
        ("openai", "/openai/v1/chat/completions"),
        (
            "bedrock",
            "/bedrock/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse-stream",
        ),
        ("miss", "/unknown/v1/chat/completions"),
    ] {
        g.bench_function(BenchmarkId::new("match_path", name), |b| {
            b.iter(|| {
                router
                    .match_path(black_box(path))
                    .map(|(r, rest)| r.index + rest.len())
            })
        });
    }
    g.bench_function("upstream_target", |b| {
        b.iter(|| upstream_target(black_box(""), black_box("/v1/chat/completions"), None))
    });
    g.bench_function("model_from_path/gemini", |b| {
        b.iter(|| {
            model_from_path(black_box(
                "/gemini/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            ))
        })
    });
    g.finish();
}

fn usage() -> Usage {
    Usage {
        model: Some("gpt-4o-mini-2024-07-18".into()),
        input_tokens: Some(1117),
        output_tokens: Some(46),
        cache_read_input_tokens: Some(1024),
        cache_creation_input_tokens: None,
        reasoning_tokens: Some(0),
    }
}

/// The key id and provider a record shares with the allow-list and the route.
static TEAM: LazyLock<Arc<str>> = LazyLock::new(|| "team-a".into());
static PROVIDER: LazyLock<Arc<str>> = LazyLock::new(|| "openai".into());

fn parts(u: Usage) -> RecordParts<'static> {
    RecordParts {
        started_at: SystemTime::now(),
        lmgate_id: Some(Arc::clone(&TEAM)),
        provider: Some(Arc::clone(&PROVIDER)),
        endpoint: "/openai/v1/chat/completions",
        usage: u,
        url_model: None,
        status: 200,
        masked_key: Some("X9aB3c".into()),
        error_type: None,
        usage_status: UsageStatus::Exact,
        stream: false,
        duration_ms: 412,
        cost_micros: Some(1_234),
        cost_status: CostStatus::Exact,
        request_id: lmgate::next_request_id(1),
    }
}

fn bench_record(c: &mut Criterion) {
    let mut g = c.benchmark_group("record");
    g.bench_function("build", |b| {
        b.iter(|| UsageRecord::build(parts(black_box(usage()))))
    });
    let record = UsageRecord::build(parts(usage()));
    let mut line = Vec::with_capacity(1024);
    g.bench_function("write_line", |b| {
        b.iter(|| {
            line.clear();
            black_box(&record).write_line(&mut line);
            line.len()
        })
    });
    g.bench_function("build_and_write_line", |b| {
        b.iter(|| {
            line.clear();
            UsageRecord::build(parts(black_box(usage()))).write_line(&mut line);
            line.len()
        })
    });
    g.finish();

    // The per-response usage set-up the proxy does in `response_filter` and `logging`
    // for a small JSON answer: pick the kind, collect, read the outcome.
    let body: &[u8] = include_bytes!("../tests/fixtures/openai_chat.json");
    let mut g = c.benchmark_group("collector");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("json_response_987b", |b| {
        b.iter(|| {
            let kind = BodyKind::from_response(
                ApiFormat::OpenAi,
                Some("application/json"),
                "/openai/v1/chat/completions",
            );
            let mut c = Collector::new(kind, None, 2 * 1024 * 1024);
            c.feed(black_box(body));
            c.finish();
            c.outcome()
        })
    });
    g.finish();
}

fn bench_config(c: &mut Criterion) {
    let yaml = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/conf/lmgate.yaml"))
        .expect("conf/lmgate.yaml");
    let env: Vec<(String, String)> = [
        ("LMGATE_SERVER__PORT", "9000"),
        ("LMGATE_SERVER__THREADS", "4"),
        ("LMGATE_STATS__OUTPUT_PATH", "/var/lib/lmgate/stats.jsonl"),
        ("LMGATE_PROVIDERS__OPENAI__UPSTREAM", "http://127.0.0.1:9001"),
        ("PATH", "/usr/bin:/bin"),
        ("HOME", "/root"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let file = Path::new("conf/lmgate.yaml");
    let mut g = c.benchmark_group("config");
    g.bench_function("from_yaml_str/no_env", |b| {
        b.iter(|| Config::from_yaml_str(black_box(&yaml), file, Vec::new()).map(|c| c.server.port))
    });
    g.bench_function("from_yaml_str/4_env_overrides", |b| {
        b.iter(|| Config::from_yaml_str(black_box(&yaml), file, env.clone()).map(|c| c.server.port))
    });
    g.finish();
}

/// Key scopes as `request_filter` applies them: none (every four-column key), providers,
/// models from the URL, models from a JSON body of 1 KB and 100 KB.
fn bench_scope(c: &mut Criterion) {
    let mut g = c.benchmark_group("scope_check");
    let open = Scope::default();
    g.bench_function("unscoped", |b| {
        b.iter(|| black_box(&open).check_provider(black_box("openai")).is_none() && open.models.is_none())
    });
    let scoped = Scope {
        providers: parse_providers("anthropic gemini openai").expect("valid"),
        models: parse_models("claude-3-5-* gemini-2.0-* gpt-4o*").expect("valid"),
    };
    g.bench_function("providers/3", |b| {
        b.iter(|| black_box(&scoped).check_provider(black_box("openai")).is_none())
    });
    let path = "/v1beta/models/gemini-2.0-flash:generateContent";
    g.bench_function("models_url/3", |b| {
        b.iter(|| {
            let m = request_model(ApiFormat::Gemini, black_box(path), None);
            scoped.check_model(m.as_deref()).is_none()
        })
    });
    for size in [1_000usize, 100_000] {
        let text = "x".repeat(size);
        let body = format!(r#"{{"messages":[{{"role":"user","content":"{text}"}}],"model":"gpt-4o-mini"}}"#);
        g.throughput(Throughput::Bytes(body.len() as u64));
        g.bench_function(BenchmarkId::new("models_body/3", size), |b| {
            b.iter(|| {
                let m = request_model(
                    ApiFormat::OpenAi,
                    "/v1/chat/completions",
                    Some(black_box(body.as_bytes())),
                );
                scoped.check_model(m.as_deref()).is_none()
            })
        });
    }
    g.finish();
}

/// SigV4 for a Bedrock request with a gateway key: the body hash (per byte) and the
/// signature itself (per request, whatever the body size).
fn bench_sigv4(c: &mut Criterion) {
    use aws_credential_types::Credentials;
    use lmgate::{body_sha256_hex, sign_request, Forwarded};
    let creds = Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some("IQoJb3JpZ2luX2VjEXAMPLETOKEN".into()),
        None,
        "bench",
    );
    let mut g = c.benchmark_group("sigv4");
    for size in [10_000usize, 1_000_000] {
        let body = vec![b'x'; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("hash_and_sign", size), |b| {
            b.iter(|| {
                let hash = body_sha256_hex(black_box(&body));
                let req = Forwarded {
                    method: "POST",
                    host: "bedrock-runtime.us-east-1.amazonaws.com",
                    path_and_query: "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
                    content_type: Some("application/json"),
                    body_sha256_hex: &hash,
                };
                sign_request(&creds, "us-east-1", &req, SystemTime::now()).map(|h| h.len())
            })
        });
    }
    g.throughput(Throughput::Elements(1));
    let hash = body_sha256_hex(b"{}");
    g.bench_function("sign_only", |b| {
        b.iter(|| {
            let req = Forwarded {
                method: "POST",
                host: "bedrock-runtime.us-east-1.amazonaws.com",
                path_and_query: "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
                content_type: Some("application/json"),
                body_sha256_hex: black_box(&hash),
            };
            sign_request(&creds, "us-east-1", &req, SystemTime::now()).map(|h| h.len())
        })
    });
    g.finish();
}

/// A gateway-key request on its way upstream: the credential lookup (`request_filter`) and
/// the strip + insert (`upstream_request_filter`), on the upstream header an SDK sends. The
/// header copy each iteration starts from is made outside the measurement.
fn bench_inject(c: &mut Criterion) {
    use lmgate::{for_gateway_key, forwarded_query, inject_credential as apply};
    use lmgate::{Credential, CredentialSlot, CredentialSpec, Secret, SecretSource};
    use pingora::http::RequestHeader;
    use std::borrow::Cow;

    let upstream = |target: &str, key_header: Option<(&str, String)>| {
        let mut r = RequestHeader::build("POST", target.as_bytes(), Some(12)).expect("valid request");
        for (k, v) in [
            ("host", "api.openai.com"),
            ("content-type", "application/json"),
            ("content-length", "760"),
            ("accept", "application/json"),
            ("user-agent", "OpenAI/Python 1.99.0"),
            ("x-stainless-lang", "python"),
            ("x-stainless-retry-count", "0"),
        ] {
            r.insert_header(k, v).expect("valid header");
        }
        if let Some((k, v)) = key_header {
            r.insert_header(k.to_owned(), v).expect("valid header");
        }
        r
    };
    let mut g = c.benchmark_group("inject");
    for (name, format, template) in [
        (
            "openai_bearer",
            ApiFormat::OpenAi,
            upstream(
                "/v1/chat/completions",
                Some(("authorization", format!("Bearer {}", key(1)))),
            ),
        ),
        (
            "gemini_query_key",
            ApiFormat::Gemini,
            upstream(
                &format!(
                    "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={}",
                    key(1)
                ),
                None,
            ),
        ),
    ] {
        let slot = CredentialSlot::new(name, CredentialSpec::ApiKey(SecretSource::Env("K".into())));
        let secret = Secret::new(key(2));
        slot.store(Credential::header(format, false, &secret, None).expect("valid key"));
        g.bench_function(name, |b| {
            b.iter_batched(
                || template.clone(),
                |mut r| {
                    let credential = for_gateway_key("p", Some(&slot), SystemTime::now).expect("stored");
                    // What the target rewrite does besides its one URI parse.
                    let query = forwarded_query(r.uri.query(), true).map(Cow::into_owned);
                    apply(&mut r, credential.as_deref()).expect("applied");
                    (r, query)
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_allowlist, bench_request, bench_record, bench_config, bench_scope, bench_sigv4, bench_inject
}
criterion_main!(benches);
