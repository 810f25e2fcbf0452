//! Prometheus metrics: counters and histograms fed from each finished request's record, and
//! gauges read from the shared counters (in flight, stats writer, allow-list) at scrape
//! time. Rendered in the Prometheus text exposition format by the `prometheus` crate.
//!
//! No key and no key tail is ever a label; `lmgate_id` is one only with
//! `metrics.per_key_labels: true` (cardinality).

use crate::allowlist::ReloadStatus;
use crate::credentials::aws::AwsCredentials;
use crate::credentials::ProviderCredentials;
use crate::lifecycle::InFlight;
use crate::limits::fleet::FleetStats;
use crate::record::UsageRecord;
use crate::ship::ShipCounters;
use crate::stats::StatsCounters;
use crate::usage::UsageStatus;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Path of the metrics endpoint.
pub const METRICS_PATH: &str = "/metrics";
/// Longest model name used as a label; longer ones are cut (cardinality, hostile upstreams).
const MAX_LABEL_CHARS: usize = 80;

/// Latency buckets (seconds): sub-millisecond proxying up to minutes-long generations.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0,
];

/// Shared state the gauges are read from.
pub struct MetricsSources {
    /// Requests in flight.
    pub in_flight: Arc<InFlight>,
    /// Stats writer counters.
    pub stats: Arc<StatsCounters>,
    /// Allow-list reload status.
    pub allowlist: Arc<ReloadStatus>,
    /// Provider credentials (refresh counts, expiry).
    pub credentials: Arc<ProviderCredentials>,
    /// Each AWS identity and its provider's name (refresh counts, expiry).
    pub aws: Vec<(String, Arc<AwsCredentials>)>,
    /// The fleet lease service's counters, when limits are shared through Redis.
    pub fleet: Option<Arc<FleetStats>>,
    /// The ClickHouse shipper, when `clickhouse:` is configured.
    pub ship: Option<Arc<ShipCounters>>,
}

/// The ClickHouse shipper's series (registered only when it ships).
struct ShipSeries {
    lag_bytes: IntGauge,
    lag_seconds: IntGauge,
    rows: IntCounter,
    batches: IntCounter,
    errors: IntCounter,
    rejected: IntCounter,
    up: IntGauge,
}

impl ShipSeries {
    fn new(r: &Registry) -> ShipSeries {
        ShipSeries {
            lag_bytes: gauge(
                r,
                "lmgate_ship_lag_bytes",
                "Bytes of usage records written to the stats files and not yet in ClickHouse.",
            ),
            lag_seconds: gauge(
                r,
                "lmgate_ship_lag_seconds",
                "Age of the oldest usage record not yet in ClickHouse (0 when none).",
            ),
            rows: counter(
                r,
                "lmgate_ship_rows_total",
                "Usage records inserted into ClickHouse.",
            ),
            batches: counter(
                r,
                "lmgate_ship_batches_total",
                "Successful inserts into ClickHouse.",
            ),
            errors: counter(
                r,
                "lmgate_ship_errors_total",
                "Failed ClickHouse calls (each retry counts).",
            ),
            rejected: counter(
                r,
                "lmgate_ship_rejected_total",
                "Record lines ClickHouse refused as data (kept in the .rejected file).",
            ),
            up: gauge(
                r,
                "lmgate_ship_up",
                "1 while ClickHouse answers the shipper, 0 while it does not.",
            ),
        }
    }

    fn update(&self, c: &ShipCounters) {
        self.lag_bytes.set(c.lag_bytes.load(Ordering::Relaxed) as i64);
        self.lag_seconds.set(c.lag_seconds.load(Ordering::Relaxed) as i64);
        self.up.set(c.up.load(Ordering::Relaxed) as i64);
        for (series, n) in [
            (&self.rows, &c.rows),
            (&self.batches, &c.batches),
            (&self.errors, &c.errors),
            (&self.rejected, &c.rejected),
        ] {
            series.inc_by(n.load(Ordering::Relaxed).saturating_sub(series.get()));
        }
    }
}

/// All of LMGate's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttfb: HistogramVec,
    input_tokens: IntCounterVec,
    output_tokens: IntCounterVec,
    cache_read_tokens: IntCounterVec,
    cache_write_tokens: IntCounterVec,
    reasoning_tokens: IntCounterVec,
    cost_micros: IntCounterVec,
    usage_status: IntCounterVec,
    upstream_errors: IntCounterVec,
    key_requests: Option<IntCounterVec>,
    key_tokens: Option<IntCounterVec>,
    in_flight: IntGauge,
    stats_written: IntCounter,
    stats_dropped: IntCounter,
    stats_write_errors: IntCounter,
    stats_backlog: IntGauge,
    allowlist_keys: IntGauge,
    allowlist_loaded: Gauge,
    allowlist_last_ok: IntGauge,
    allowlist_reloads: IntCounterVec,
    credential_refreshes: IntCounterVec,
    credential_expiry: IntGaugeVec,
    ship: Option<ShipSeries>,
    sources: MetricsSources,
    by_provider: ArcSwap<HashMap<Box<str>, Arc<ProviderSeries>>>,
    /// Last values copied from the shared counters (counters only go up by the delta).
    copied: Mutex<[u64; 5]>,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric definition");
    r.register(Box::new(h.clone())).expect("metric registered once");
    h
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric definition");
    r.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric definition");
    r.register(Box::new(g.clone())).expect("metric registered once");
    g
}

/// Status class labels, indexed by [`status_class`].
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every usage status, in the enum's order (indexed by `as usize`).
const USAGE_STATUSES: [UsageStatus; 5] = [
    UsageStatus::Exact,
    UsageStatus::Absent,
    UsageStatus::OverLimit,
    UsageStatus::Truncated,
    UsageStatus::Unparsed,
];

/// Index into [`STATUS_CLASSES`].
fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One provider's per-request series, resolved once.
struct ProviderSeries {
    requests: [IntCounter; 5],
    usage_status: [IntCounter; 5],
    duration: Histogram,
    ttfb: Histogram,
    models: ArcSwap<HashMap<Box<str>, Arc<ModelSeries>>>,
}

/// Token counters of one (provider, model): input, output, cache read, cache write, reasoning.
struct ModelSeries([IntCounter; 6]);

fn label(s: Option<&str>) -> &str {
    match s {
        None => "",
        Some(s) if s.len() <= MAX_LABEL_CHARS => s,
        Some(s) => {
            let mut end = MAX_LABEL_CHARS;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            &s[..end]
        }
    }
}

impl Metrics {
    /// Register every metric.
    pub fn new(sources: MetricsSources, per_key_labels: bool) -> Metrics {
        let r = Registry::new();
        let build = IntGaugeVec::new(
            Opts::new("lmgate_build_info", "Build information; always 1."),
            &["version"],
        )
        .expect("valid metric definition");
        r.register(Box::new(build.clone()))
            .expect("metric registered once");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let per_key = |name: &str, help: &str, labels: &[&str]| {
            per_key_labels.then(|| counter_vec(&r, name, help, labels))
        };
        let allowlist_loaded = Gauge::new(
            "lmgate_allowlist_loaded_timestamp_seconds",
            "When the allow-list in use was loaded (Unix time).",
        )
        .expect("valid metric definition");
        r.register(Box::new(allowlist_loaded.clone()))
            .expect("metric registered once");
        Metrics {
            requests: counter_vec(
                &r,
                "lmgate_requests_total",
                "Requests answered, by provider and status class.",
                &["provider", "status_class"],
            ),
            duration: histogram_vec(
                &r,
                "lmgate_request_duration_seconds",
                "Request start to end of response.",
                &["provider"],
            ),
            ttfb: histogram_vec(
                &r,
                "lmgate_time_to_first_byte_seconds",
                "Request start to upstream response header.",
                &["provider"],
            ),
            input_tokens: counter_vec(
                &r,
                "lmgate_input_tokens_total",
                "Input tokens, as the provider counts them.",
                &["provider", "model"],
            ),
            output_tokens: counter_vec(
                &r,
                "lmgate_output_tokens_total",
                "Output tokens.",
                &["provider", "model"],
            ),
            cache_read_tokens: counter_vec(
                &r,
                "lmgate_cache_read_input_tokens_total",
                "Input tokens read from cache.",
                &["provider", "model"],
            ),
            cache_write_tokens: counter_vec(
                &r,
                "lmgate_cache_creation_input_tokens_total",
                "Input tokens written to cache.",
                &["provider", "model"],
            ),
            reasoning_tokens: counter_vec(
                &r,
                "lmgate_reasoning_tokens_total",
                "Reasoning tokens.",
                &["provider", "model"],
            ),
            cost_micros: counter_vec(
                &r,
                "lmgate_cost_micros_total",
                "Cost in micro-dollars (the records' cost_micros; unpriced requests add nothing).",
                &["provider", "model"],
            ),
            usage_status: counter_vec(
                &r,
                "lmgate_usage_records_total",
                "Usage records by usage_status.",
                &["provider", "usage_status"],
            ),
            upstream_errors: counter_vec(
                &r,
                "lmgate_errors_total",
                "Failed requests by error_type.",
                &["provider", "kind"],
            ),
            key_requests: per_key(
                "lmgate_key_requests_total",
                "Requests by allow-list id.",
                &["lmgate_id"],
            ),
            key_tokens: per_key(
                "lmgate_key_tokens_total",
                "Tokens by allow-list id and direction.",
                &["lmgate_id", "direction"],
            ),
            in_flight: gauge(&r, "lmgate_requests_in_flight", "Requests being handled now."),
            stats_written: counter(
                &r,
                "lmgate_stats_records_written_total",
                "Usage records written to the stats file.",
            ),
            stats_dropped: counter(
                &r,
                "lmgate_stats_records_dropped_total",
                "Usage records dropped (queue or backlog full).",
            ),
            stats_write_errors: counter(
                &r,
                "lmgate_stats_write_errors_total",
                "Failed writes to the stats file.",
            ),
            stats_backlog: gauge(
                &r,
                "lmgate_stats_backlog_records",
                "Usage records waiting to be written.",
            ),
            allowlist_keys: gauge(&r, "lmgate_allowlist_keys", "Keys in the allow-list in use."),
            allowlist_loaded,
            allowlist_last_ok: gauge(
                &r,
                "lmgate_allowlist_last_reload_ok",
                "1 when the last reload attempt succeeded.",
            ),
            allowlist_reloads: counter_vec(
                &r,
                "lmgate_allowlist_reloads_total",
                "Allow-list reloads by result.",
                &["result"],
            ),
            credential_refreshes: counter_vec(
                &r,
                "lmgate_credential_refreshes_total",
                "Provider credential refreshes (token fetches, key file reloads) by result.",
                &["provider", "result"],
            ),
            credential_expiry: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "lmgate_credential_expiry_seconds",
                        "Seconds until the provider credential in use expires (expiring credentials only).",
                    ),
                    &["provider"],
                )
                .expect("valid metric definition");
                r.register(Box::new(g.clone())).expect("metric registered once");
                g
            },
            ship: sources.ship.as_ref().map(|_| ShipSeries::new(&r)),
            registry: r,
            sources,
            by_provider: ArcSwap::from_pointee(HashMap::new()),
            copied: Mutex::new([0; 5]),
        }
    }

    /// The series of one provider, created on first use and then found with one hash
    /// lookup (instead of one `with_label_values` per metric per request).
    fn provider_series(&self, provider: &str) -> Arc<ProviderSeries> {
        if let Some(p) = self.by_provider.load().get(provider) {
            return Arc::clone(p);
        }
        let series = Arc::new(ProviderSeries {
            requests: STATUS_CLASSES.map(|c| self.requests.with_label_values(&[provider, c])),
            usage_status: USAGE_STATUSES
                .map(|u| self.usage_status.with_label_values(&[provider, u.as_str()])),
            duration: self.duration.with_label_values(&[provider]),
            ttfb: self.ttfb.with_label_values(&[provider]),
            models: ArcSwap::from_pointee(HashMap::new()),
        });
        self.by_provider.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(provider.into()).or_insert_with(|| Arc::clone(&series));
            m
        });
        series
    }

    fn model_series(&self, p: &ProviderSeries, provider: &str, model: &str) -> Arc<ModelSeries> {
        if let Some(m) = p.models.load().get(model) {
            return Arc::clone(m);
        }
        let labels = [provider, model];
        let series = Arc::new(ModelSeries([
            self.input_tokens.with_label_values(&labels),
            self.output_tokens.with_label_values(&labels),
            self.cache_read_tokens.with_label_values(&labels),
            self.cache_write_tokens.with_label_values(&labels),
            self.reasoning_tokens.with_label_values(&labels),
            self.cost_micros.with_label_values(&labels),
        ]));
        p.models.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(model.into()).or_insert_with(|| Arc::clone(&series));
            m
        });
        series
    }

    /// Count one finished request.
    pub fn observe(&self, rec: &UsageRecord, ttfb: Option<Duration>) {
        let provider = label(rec.provider.as_deref());
        let p = self.provider_series(provider);
        p.requests[status_class(rec.status)].inc();
        p.usage_status[rec.usage_status as usize].inc();
        if rec.provider.is_some() {
            p.duration.observe(rec.duration_ms as f64 / 1000.0);
        }
        if let Some(t) = ttfb {
            p.ttfb.observe(t.as_secs_f64());
        }
        if let Some(kind) = rec.error_type {
            self.upstream_errors.with_label_values(&[provider, kind]).inc();
        }
        let tokens = [
            rec.input_tokens,
            rec.output_tokens,
            rec.cache_read_input_tokens,
            rec.cache_creation_input_tokens,
            rec.reasoning_tokens,
            rec.cost_micros,
        ];
        if tokens.iter().any(Option::is_some) {
            let m = self.model_series(&p, provider, label(rec.model.as_deref()));
            for (counter, value) in m.0.iter().zip(tokens) {
                if let Some(v) = value {
                    counter.inc_by(v);
                }
            }
        }
        if let (Some(kr), Some(kt), Some(id)) =
            (&self.key_requests, &self.key_tokens, rec.lmgate_id.as_deref())
        {
            let id = label(Some(id));
            kr.with_label_values(&[id]).inc();
            if let Some(v) = rec.input_tokens {
                kt.with_label_values(&[id, "input"]).inc_by(v);
            }
            if let Some(v) = rec.output_tokens {
                kt.with_label_values(&[id, "output"]).inc_by(v);
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let s = &self.sources;
        self.in_flight.set(s.in_flight.count() as i64);
        if let (Some(series), Some(c)) = (&self.ship, &s.ship) {
            series.update(c);
        }
        self.stats_backlog
            .set(s.stats.backlog.load(Ordering::Relaxed) as i64);
        self.allowlist_keys
            .set(s.allowlist.keys.load(Ordering::Relaxed) as i64);
        self.allowlist_loaded
            .set(s.allowlist.loaded_at_ms.load(Ordering::Relaxed) as f64 / 1000.0);
        self.allowlist_last_ok
            .set(s.allowlist.last_ok.load(Ordering::Relaxed) as i64);
        {
            let mut copied = self.copied.lock().unwrap_or_else(|p| p.into_inner());
            let now = [
                s.stats.written.load(Ordering::Relaxed),
                s.stats.dropped.load(Ordering::Relaxed),
                s.stats.write_errors.load(Ordering::Relaxed),
                s.allowlist.reloads_ok.load(Ordering::Relaxed),
                s.allowlist.reloads_rejected.load(Ordering::Relaxed),
            ];
            let targets = [
                &self.stats_written,
                &self.stats_dropped,
                &self.stats_write_errors,
                &self.allowlist_reloads.with_label_values(&["ok"]),
                &self.allowlist_reloads.with_label_values(&["rejected"]),
            ];
            for ((c, n), last) in targets.into_iter().zip(now).zip(copied.iter_mut()) {
                c.inc_by(n.saturating_sub(*last));
                *last = n.max(*last);
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let headers = s.credentials.slots().map(|slot| {
            let st = &slot.status;
            let expires = st.expires_at_unix.load(Ordering::Relaxed);
            let counts = (st.ok.load(Ordering::Relaxed), st.failed.load(Ordering::Relaxed));
            (slot.provider(), counts, (expires > 0).then_some(expires))
        });
        let aws = s.aws.iter().map(|(name, holder)| {
            let expires = holder
                .current(std::time::SystemTime::now())
                .and_then(|c| c.expiry())
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            (name.as_str(), (holder.refreshes(), holder.failures()), expires)
        });
        for (provider, (ok, failed), expires) in headers.chain(aws) {
            let p = label(Some(provider));
            for (result, n) in [("ok", ok), ("error", failed)] {
                let c = self.credential_refreshes.with_label_values(&[p, result]);
                c.inc_by(n.saturating_sub(c.get()));
            }
            if let Some(t) = expires {
                self.credential_expiry
                    .with_label_values(&[p])
                    .set(t as i64 - now as i64);
            }
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        if let Some(f) = &s.fleet {
            fleet_series(f, &mut out);
        }
        out
    }
}

/// The fleet service's series, in the text format (plain counters read from its atomics).
fn fleet_series(f: &FleetStats, out: &mut Vec<u8>) {
    use std::io::Write;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let series: [(&str, &str, &str, u64); 6] = [
        (
            "lmgate_fleet_redis_up",
            "gauge",
            "1 when the last lease exchange with Redis succeeded.",
            u64::from(f.redis_up.load(Ordering::Relaxed)),
        ),
        (
            "lmgate_fleet_redis_commands_total",
            "counter",
            "Redis commands sent for leases (one per counter exchanged).",
            load(&f.commands),
        ),
        (
            "lmgate_fleet_redis_errors_total",
            "counter",
            "Lease exchanges with Redis that failed.",
            load(&f.errors),
        ),
        (
            "lmgate_fleet_fallbacks_total",
            "counter",
            "Counters switched to the per-instance fallback after their lease expired with Redis unreachable.",
            load(&f.fallbacks),
        ),
        (
            "lmgate_fleet_lease_waits_total",
            "counter",
            "Requests that waited for a larger lease.",
            load(&f.waits),
        ),
        (
            "lmgate_fleet_lease_wait_timeouts_total",
            "counter",
            "Lease waits that ended without an exchange.",
            load(&f.wait_timeouts),
        ),
    ];
    for (name, kind, help, value) in series {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
}

/// The content type of the text exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Serves `/metrics` on a separate listener (`metrics.listen`).
pub struct MetricsApp(pub Arc<Metrics>);

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, ctype, body) = if session.req_header().uri.path() == METRICS_PATH {
            (200, CONTENT_TYPE, self.0.render())
        } else {
            (404, "text/plain", b"not found\n".to_vec())
        };
        http::Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, ctype)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordParts;
    use crate::usage::Usage;

    #[test]
    fn records_become_series_and_keys_never_labels() {
        let sources = MetricsSources {
            in_flight: Arc::new(InFlight::default()),
            stats: Arc::new(StatsCounters::default()),
            allowlist: Arc::new(ReloadStatus::loaded(3)),
            credentials: Arc::default(),
            aws: Vec::new(),
            fleet: Some(Arc::new(FleetStats::default())),
            ship: None,
        };
        sources.stats.written.store(7, Ordering::Relaxed);
        let m = Metrics::new(sources, false);
        let rec = UsageRecord::build(RecordParts {
            started_at: std::time::SystemTime::now(),
            lmgate_id: Some("team-a".into()),
            provider: Some("openai".into()),
            endpoint: "/openai/v1/chat/completions",
            usage: Usage {
                model: Some("gpt-4o".into()),
                input_tokens: Some(10),
                output_tokens: Some(5),
                ..Default::default()
            },
            url_model: None,
            status: 200,
            masked_key: Some("abcdef".into()),
            error_type: None,
            usage_status: UsageStatus::Exact,
            stream: false,
            duration_ms: 12,
            cost_micros: Some(4321),
            cost_status: crate::cost::CostStatus::Exact,
            request_id: crate::request_id::next(1),
        });
        for (i, u) in USAGE_STATUSES.iter().enumerate() {
            assert_eq!(*u as usize, i, "USAGE_STATUSES follows the enum order");
        }
        m.observe(&rec, Some(Duration::from_millis(3)));
        m.observe(&rec, None);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(
            text.contains(r#"lmgate_requests_total{provider="openai",status_class="2xx"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"lmgate_input_tokens_total{model="gpt-4o",provider="openai"} 20"#));
        assert!(text.contains(r#"lmgate_output_tokens_total{model="gpt-4o",provider="openai"} 10"#));
        assert!(text.contains("lmgate_stats_records_written_total 7"));
        assert!(text.contains("lmgate_allowlist_keys 3"));
        assert!(text.contains(r#"lmgate_build_info{version=""#));
        assert!(!text.contains("team-a") && !text.contains("abcdef"));
        // Copied counters only move by the delta.
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("lmgate_stats_records_written_total 7"));
    }

    #[test]
    fn credential_refreshes_and_expiry_are_series_without_the_credential() {
        use crate::config::{CredentialSpec, SecretSource};
        use crate::providers::{ApiFormat, ProviderConfig, UpstreamUrl};
        let provider = ProviderConfig {
            name: "google".into(),
            prefix: "/google".into(),
            upstream: UpstreamUrl::parse("http://127.0.0.1:1").unwrap(),
            format: ApiFormat::Gemini,
            credential: Some(CredentialSpec::ApiKey(SecretSource::Env("K".into()))),
        };
        let env = |_: &str| Some("secret-value-123".to_string());
        let (credentials, _) = crate::credentials::load(
            std::path::Path::new("c.yaml"),
            &[provider],
            &env,
            Duration::from_secs(1),
        )
        .unwrap();
        let slot = credentials.slots().next().unwrap();
        slot.status.ok.fetch_add(3, Ordering::Relaxed);
        slot.status.failed.fetch_add(1, Ordering::Relaxed);
        let in_an_hour = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        slot.status.expires_at_unix.store(in_an_hour, Ordering::Relaxed);
        let m = Metrics::new(
            MetricsSources {
                in_flight: Arc::new(InFlight::default()),
                stats: Arc::new(StatsCounters::default()),
                allowlist: Arc::new(ReloadStatus::loaded(0)),
                credentials: Arc::clone(&credentials),
                aws: Vec::new(),
                fleet: None,
                ship: None,
            },
            false,
        );
        for _ in 0..2 {
            let text = String::from_utf8(m.render()).unwrap();
            assert!(
                text.contains(r#"lmgate_credential_refreshes_total{provider="google",result="ok"} 3"#),
                "{text}"
            );
            assert!(text.contains(r#"lmgate_credential_refreshes_total{provider="google",result="error"} 1"#));
            let expiry = text
                .lines()
                .find_map(|l| l.strip_prefix(r#"lmgate_credential_expiry_seconds{provider="google"} "#))
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap();
            assert!((3590..=3600).contains(&expiry), "{expiry}");
            assert!(!text.contains("secret-value"));
        }
    }
}
