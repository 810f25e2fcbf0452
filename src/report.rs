//! `lmgate report`: usage grouped from the stats files. (Being written: issue #8.)

use std::path::PathBuf;

/// Arguments of `lmgate report`.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Stats file to read (its rotated siblings too); default: `stats.output_path` from the config.
    #[arg(long, value_name = "FILE")]
    pub stats: Option<PathBuf>,
}

/// Run the report; returns the process exit code.
pub fn run(_args: &ReportArgs, _config: &std::path::Path) -> std::process::ExitCode {
    eprintln!("lmgate report: not built yet (issue #8)");
    std::process::ExitCode::FAILURE
}
