//! LMGate: an LLM API gateway on Pingora.
//!
//! Module map:
//! - [`cli`]: command line (LMGate's options, subcommands, Pingora's options).
//! - [`commands`]: `check`, `healthcheck`, `hash-key`.
//! - [`config`]: YAML + `LMGATE_*` env overrides -> one validated [`config::Config`].
//! - [`providers`]: the provider table, upstream URLs, prefix routing (pure).
//! - [`auth`]: which key a request presents; [`auth::KeyTag`], the only way a key is shown.
//! - [`allowlist`]: CSV allow-list parser (pure), lock-free holder, hot-reload service.
//! - [`upstream`]: pre-resolved upstream peers; async DNS with background refresh.
//! - [`lifecycle`]: signals, in-flight count, the drain before exit.
//! - [`memory`]: returns freed heap to the OS after a burst of streams ends.
//! - [`inbound`]: what a request must look like before it is routed (pure).
//! - [`outcome`]: error kinds, the gateway's own error responses, the status a record shows.
//! - [`provider_error`]: the gateway's refusals in each provider's own error shape.
//! - [`proxy`]: the `ProxyHttp` hooks in phase order.
//! - [`usage`]: token usage from response bodies: JSON, SSE, JSON-array and Bedrock
//!   event-stream parsers (pure, incremental), decompression, the per-response `Collector`.
//! - [`record`]: the JSONL usage record.
//! - [`stats`]: the bounded channel and the stats writer service (flush, rotation, backlog).
//! - [`metrics`]: Prometheus metrics.
//! - [`logging`]: env_logger behind a key-redacting wrapper.
//! - [`report`]: `lmgate report`, usage totals and a chart from the stats files.
//! - [`server`]: builds the Pingora server from a `Config` (used by `main`).

pub mod allowlist;
pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod inbound;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod outcome;
pub mod provider_error;
pub mod providers;
pub mod proxy;
pub mod record;
pub mod report;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod usage;
