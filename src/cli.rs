//! Command line: LMGate's own options and subcommands, plus Pingora's (`-u` upgrade,
//! `-d` daemon, `-t` test) through the same parser.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// The config file used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "conf/lmgate.yaml";

/// `lmgate [--config FILE] [-u] [-d] [-t] [COMMAND]`
#[derive(Debug, Parser)]
#[command(
    name = "lmgate",
    version,
    about = "LLM API gateway: key allow-list, byte-exact passthrough, exact token accounting",
    after_help = "Without a command, runs the gateway. Signals: SIGTERM/SIGINT drain and exit, SIGQUIT hands the listeners to a new process started with --upgrade."
)]
pub struct Cli {
    /// LMGate's YAML config file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG, global = true)]
    pub config: PathBuf,

    /// Pingora's options. (`--conf` is Pingora's own server YAML; LMGate ignores it and
    /// derives Pingora's settings from `--config`.)
    #[command(flatten)]
    pub pingora: pingora::server::configuration::Opt,

    /// What to do instead of running the gateway.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, LMGATE_* overrides and the allow-list; print what would run.
    /// Exit 0 when all is well, 1 otherwise. Does not listen.
    Check,
    /// GET /healthz on the configured port (or --url); exit 0 on 200, 1 otherwise.
    /// Needs no shell tools: made for container health checks.
    Healthcheck {
        /// Full URL to check instead of the configured listen address.
        #[arg(long)]
        url: Option<String>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Read an API key on stdin and print its allow-list form `sha256:<hex>`, so the
    /// allow-list on disk need not hold live keys.
    HashKey,
    /// Usage report from the stats file and its rotated siblings.
    Report(crate::report::ReportArgs),
    /// Issue gateway keys into the allow-list (`keys new`) and list them (`keys list`).
    Keys(crate::keys::KeysArgs),
    /// The ClickHouse usage table: `clickhouse schema` prints its SQL
    /// (`lmgate clickhouse schema | clickhouse-client --multiquery`).
    #[command(subcommand)]
    Clickhouse(ClickhouseCommand),
}

/// `lmgate clickhouse ...`.
#[derive(Debug, Subcommand)]
pub enum ClickhouseCommand {
    /// Print the schema of the usage table (the SQL the shipper's inserts expect).
    Schema,
}
