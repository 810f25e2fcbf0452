//! Command line: LMGate's own options plus Pingora's (`-u` upgrade, `-d` daemon, `-t` test)
//! through the same parser.

use clap::Parser;
use std::path::PathBuf;

/// The config file used when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "conf/lmgate.yaml";

/// `lmgate [--config FILE] [-u] [-d] [-t]`
#[derive(Debug, Parser)]
#[command(
    name = "lmgate",
    version,
    about = "LLM API gateway: key allow-list, passthrough, exact token accounting"
)]
pub struct Cli {
    /// LMGate's YAML config file.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,

    /// Pingora's options. (`--conf` is Pingora's own server YAML; LMGate ignores it and
    /// derives Pingora's settings from `--config`.)
    #[command(flatten)]
    pub pingora: pingora::server::configuration::Opt,
}
