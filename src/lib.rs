//! LMGate: an LLM API gateway on Pingora.
//!
//! Module map, in the order a request meets them (then the commands):
//! - [`cli`]: command line (LMGate's options, subcommands, Pingora's options).
//! - [`commands`]: `check`, `healthcheck`, `hash-key`, `clickhouse schema`.
//! - [`config`]: YAML + `LMGATE_*` env overrides -> one validated [`config::Config`].
//! - [`providers`]: the provider table, upstream URLs, prefix routing (pure).
//! - [`auth`]: which key a request presents; [`auth::KeyTag`], the only way a key is shown.
//! - [`allowlist`]: CSV allow-list parser (pure), lock-free holder, hot-reload service.
//! - [`scope`]: per-key provider and model scopes (pure).
//! - [`credentials`]: provider credentials the gateway holds for gateway keys (env and file
//!   API keys, Google OAuth tokens, the AWS identity that signs Bedrock requests), lock-free
//!   holders, refreshed in the background.
//! - [`inject`]: a gateway key's way upstream: refuse, strip the key, add the credential (pure).
//! - [`sigv4`]: SigV4 signing of exactly the Bedrock request that is forwarded (pure).
//! - [`upstream`]: pre-resolved upstream peers; async DNS with background refresh.
//! - [`lifecycle`]: signals, the stop phase, in-flight count, the drain before exit.
//! - [`connections`]: client connections through a stop (idle keep-alive ones kept open
//!   for their next request, cut at the drain deadline).
//! - [`memory`]: returns freed heap to the OS after a burst of streams ends.
//! - [`inbound`]: what a request must look like before it is routed (pure).
//! - [`body_buffer`]: reading a whole request body before the upstream header is written.
//! - [`outcome`]: error kinds, the gateway's own error responses, the status a record shows.
//! - [`provider_error`]: the gateway's refusals in each provider's own error shape.
//! - [`limits`]: per-key and per-owner rate limits and budgets: the `limits` column,
//!   lock-free meters, reserve before forwarding and settle after, the rebuild at start.
//! - [`prices`]: model prices (the dated snapshot and the override file), hot-reloaded.
//! - [`cost`]: a request's cost in integer micro-dollars from its counts and price (pure).
//! - [`proxy`]: the `ProxyHttp` hooks in phase order.
//! - [`usage`]: token usage from response bodies: JSON, SSE, JSON-array and Bedrock
//!   event-stream parsers (pure, incremental), decompression, the per-response `Collector`.
//! - [`record`]: the JSONL usage record.
//! - [`request_id`]: per-request ids (`x-lmgate-request-id`, the record's `request_id`).
//! - [`stats`]: the bounded channel and the stats writer service (flush, rotation, backlog).
//! - [`stats_files`]: the stats files on disk, oldest first, and their complete lines.
//! - [`ship`]: the stats files as an outbox: records shipped to ClickHouse, rotated files
//!   retired by the retention policy.
//! - [`metrics`]: Prometheus metrics.
//! - [`logging`]: env_logger behind a key-redacting wrapper.
//! - [`report`]: `lmgate report`, usage totals and a chart from the stats files or from
//!   ClickHouse (grouped by the server).
//! - [`keys`]: `lmgate keys new|list`, issuing gateway keys into the allow-list.
//! - [`server`]: builds the Pingora server from a `Config` (used by `main`).

// Every module is private: `pub` inside one is crate-visible only, so an item nothing
// uses is a dead-code warning. What `main`, the benches, the fuzz targets and the
// integration tests need is re-exported below; `usage` stays a public module because its
// parsers are what the benches and fuzz targets drive.
mod allowlist;
mod auth;
mod body_buffer;
mod cli;
mod commands;
mod config;
mod connections;
mod cost;
mod credentials;
mod inbound;
mod inject;
mod keys;
mod lifecycle;
mod limits;
mod logging;
mod memory;
mod metrics;
mod outcome;
mod prices;
mod provider_error;
mod providers;
mod proxy;
mod record;
mod report;
mod request_id;
mod scope;
mod server;
mod ship;
mod sigv4;
mod stats;
mod stats_files;
mod upstream;
pub mod usage;

// The binary (`main.rs`).
pub use cli::{Cli, ClickhouseCommand, Command};
pub use commands::{check, clickhouse_schema, hash_key, healthcheck};
pub use config::{Config, ConfigError, ENV_PREFIX, IGNORED_ENV_REASON};
pub use keys::run as run_keys;
pub use lifecycle::Signals;
pub use logging::init as init_logging;
pub use report::run as run_report;
pub use server::{build as build_server, raise_open_file_limit};

// Benches and fuzz targets: the pure pieces of the request path.
pub use allowlist::{hashed_form, parse_allowlist, AllowList, SharedAllowList, HASH_PREFIX};
pub use auth::{extract_key, KeyTag};
pub use config::{CredentialSpec, SecretSource};
pub use cost::CostStatus;
pub use credentials::{Credential, CredentialSlot, Secret};
pub use inject::{apply as inject_credential, for_gateway_key, forwarded_query};
pub use providers::{upstream_target, ApiFormat, Router};
pub use record::{RecordParts, UsageRecord};
pub use request_id::{next as next_request_id, RequestId};
pub use scope::{parse_models, parse_providers, request_model, Scope};
pub use sigv4::{body_sha256_hex, sign_request, Forwarded};
