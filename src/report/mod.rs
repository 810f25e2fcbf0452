//! `lmgate report`: usage totals from the stats file and its rotated siblings, or from the
//! ClickHouse table the shipper fills (`--source clickhouse`).
//!
//! One file a concern; all but this one are pure and unit-tested beside their code:
//! - `args`: [`ReportArgs`], the command line (dimensions, format, chart).
//! - `time`: RFC 3339 and plain dates to Unix ms and back (chrono), the `--since`/`--until`
//!   range.
//! - `files`: which files are the live stats file's rotated siblings, oldest first.
//! - `read`: one JSONL line into a record; the lines of any `BufRead`, each into one reused
//!   buffer of bounded size.
//! - `aggregate`: records grouped and summed (`Report`), allow-list owners, tokens per day
//!   for the chart.
//! - `render`: the table, CSV and JSON text of a report.
//! - `chart`: the SVG of the tokens per day.
//! - `sql`: the ClickHouse queries that group and sum in the server as `aggregate` does,
//!   SQL quoting, and reading their answers.
//! - `clickhouse`: the ClickHouse source: where the server is, sending the queries, and
//!   its errors.
//!
//! [`run`] (here) is the only part that touches files and the terminal: it reads the config
//! when a path must come from it, streams every stats file through `read` into `aggregate`
//! (or adds the groups ClickHouse summed), and writes the output and the chart. Both
//! sources feed the same `Report` and `DailyTokens`, so they print the same bytes.
//!
//! Memory grows with the number of groups (and days × series for the chart), never with the
//! number of records.

mod aggregate;
mod args;
mod chart;
mod clickhouse;
mod files;
mod read;
mod render;
mod sql;
#[cfg(test)]
mod test_support;
mod time;

pub use args::ReportArgs;

use crate::allowlist::load_allowlist;
use crate::config::Config;
use aggregate::{DailyTokens, Owners, Report, UNKNOWN_OWNER};
use args::{Dimension, Format, Source};
use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use time::{format_time, TimeRange};

/// Malformed lines reported one by one on stderr; beyond this only the total is printed.
const MAX_MALFORMED_SHOWN: u64 = 10;
const STATS_READ_BUFFER_BYTES: usize = 64 * 1024;

/// What stops a report (exit 1). Each names the file at fault.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    /// The config could not be loaded (needed for the stats path).
    #[error("config error: {0}")]
    Config(#[from] crate::config::ConfigError),
    /// A stats file or directory could not be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The chart could not be drawn or written.
    #[error("cannot write chart {}: {reason}", .path.display())]
    Chart {
        /// The SVG path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The report could not be written to stdout.
    #[error("cannot write the report: {0}")]
    Output(std::io::Error),
    /// The ClickHouse source failed.
    #[error("{0}")]
    ClickHouse(#[from] clickhouse::ClickHouseError),
    /// A flag of the other source.
    #[error("{flag} applies only to --source {belongs_to}")]
    MisplacedFlag {
        /// The flag.
        flag: &'static str,
        /// The source it belongs to.
        belongs_to: &'static str,
    },
    /// `--since` is not before `--until`.
    #[error("--since ({since}) must be before --until ({until})")]
    EmptyRange {
        /// `--since`, formatted.
        since: String,
        /// `--until`, formatted.
        until: String,
    },
}

/// The config, read only when a path must come from it, and at most once.
struct LazyConfig<'a> {
    path: &'a Path,
    loaded: Option<Result<Config, crate::config::ConfigError>>,
}

impl LazyConfig<'_> {
    fn get(&mut self) -> Result<&Config, crate::config::ConfigError> {
        let path = self.path;
        self.loaded
            .get_or_insert_with(|| Config::load(path, std::env::vars()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

/// Where a report's records come from.
enum Input {
    /// The live stats file (its rotated siblings too).
    Files(PathBuf),
    /// The ClickHouse usage table.
    ClickHouse(clickhouse::Server),
}

/// Run the report; returns the process exit code (0 done, 1 failed).
pub fn run(args: &ReportArgs, config: &Path) -> ExitCode {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match run_with(args, config, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lmgate report: {e}");
            ExitCode::FAILURE
        }
    }
}

/// [`run`] with its output streams given.
fn run_with(
    args: &ReportArgs,
    config_path: &Path,
    out: &mut impl Write,
    err: &mut impl Write,
) -> Result<(), ReportError> {
    let range = TimeRange {
        since: args.since,
        until: args.until,
    };
    if let (Some(s), Some(u)) = (range.since, range.until) {
        if s >= u {
            return Err(ReportError::EmptyRange {
                since: format_time(s),
                until: format_time(u),
            });
        }
    }
    let mut config = LazyConfig {
        path: config_path,
        loaded: None,
    };
    // Where the records come from, settled before anything is read.
    if let Some((flag, belongs_to)) = args.misplaced_flag() {
        return Err(ReportError::MisplacedFlag { flag, belongs_to });
    }
    let input = match args.source {
        Source::File => Input::Files(match &args.stats {
            Some(p) => p.clone(),
            None => config.get()?.stats.output_path.clone(),
        }),
        Source::ClickHouse => {
            let env = |k: &str| std::env::var(k).ok();
            let named =
                args.clickhouse_url.is_some() || env(clickhouse::URL_ENV).is_some_and(|u| !u.is_empty());
            // Without a URL from the flag or the environment: the shipper's server, from
            // the config (an unreadable config then means no URL).
            let shipper = if named {
                None
            } else {
                config.get().ok().and_then(|c| c.clickhouse.clone())
            };
            match shipper {
                Some(cfg) => Input::ClickHouse(clickhouse::Server::from_config(args, &cfg, &env)?),
                None => Input::ClickHouse(clickhouse::Server::from_args(args, env)?),
            }
        }
    };

    let mut report = Report::new(&args.by, Owners::unknown());
    if report.dims().contains(&Dimension::Owner) {
        let path = match &args.allowlist {
            Some(p) => Ok(p.clone()),
            None => config.get().map(|c| c.auth.allowlist_path.clone()),
        };
        let owners = match path {
            Ok(p) => match load_allowlist(&p) {
                Ok(list) => Owners::from_allowlist(&list),
                Err(e) => {
                    let _ = writeln!(
                        err,
                        "lmgate report: warning: allow-list {} unusable, owners shown as {UNKNOWN_OWNER}: {e}",
                        p.display()
                    );
                    Owners::unknown()
                }
            },
            Err(e) => {
                let _ = writeln!(
                    err,
                    "lmgate report: warning: no allow-list (config error: {e}), owners shown as {UNKNOWN_OWNER}"
                );
                Owners::unknown()
            }
        };
        report = Report::new(&args.by, owners);
    }
    let mut chart = args
        .chart
        .as_ref()
        .map(|_| DailyTokens::of(args.chart_by, args.chart_metric));

    let malformed = match &input {
        Input::Files(path) => read_files(path, range, &mut report, chart.as_mut(), err)?,
        Input::ClickHouse(server) => {
            let chart = chart.as_mut().map(|c| (c, args.chart_by, args.chart_metric));
            clickhouse::fill(server, range, &mut report, chart)?;
            // The shipper inserts only lines ClickHouse could parse: none are malformed.
            0
        }
    };

    // The chart first: when it cannot be written, the run fails before printing anything.
    if let (Some(path), Some(data)) = (&args.chart, &chart) {
        let chart_err = |reason: String| ReportError::Chart {
            path: path.clone(),
            reason,
        };
        let what = match args.chart_metric {
            args::ChartMetric::Tokens => "Tokens",
            args::ChartMetric::Cost => "Cost",
        };
        let mut title = format!("{what} per day by {}", args.chart_by.column());
        if let Some(s) = range.since {
            let _ = write!(title, ", from {}", format_time(s));
        }
        if let Some(u) = range.until {
            let _ = write!(title, ", until {}", format_time(u));
        }
        let svg = chart::render_chart(data, &title).map_err(chart_err)?;
        std::fs::write(path, svg).map_err(|e| chart_err(e.to_string()))?;
    }
    let text = match args.format {
        Format::Table => render::render_table(&report),
        Format::Csv => render::render_csv(&report),
        Format::Json => render::render_json(&report, range, malformed),
    };
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        // `lmgate report | head` closing the pipe early is not a failure.
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(ReportError::Output(e));
        }
    }

    Ok(())
}

/// Stream every stats file of `stats_path` into `report` (and `chart`); malformed lines
/// are reported on `err` and counted.
fn read_files(
    stats_path: &Path,
    range: TimeRange,
    report: &mut Report,
    mut chart: Option<&mut DailyTokens>,
    err: &mut impl Write,
) -> Result<u64, ReportError> {
    let mut malformed = 0u64;
    for file in files::stats_files(stats_path)? {
        let read_err = |source| ReportError::Read {
            path: file.clone(),
            source,
        };
        let f = std::fs::File::open(&file).map_err(read_err)?;
        let reader = std::io::BufReader::with_capacity(STATS_READ_BUFFER_BYTES, f);
        read::scan(
            reader,
            range,
            |r| {
                report.add(r);
                if let Some(c) = chart.as_mut() {
                    c.add(r);
                }
            },
            |line, e| {
                malformed += 1;
                if malformed <= MAX_MALFORMED_SHOWN {
                    let _ = writeln!(
                        err,
                        "lmgate report: {}:{line}: skipped malformed line: {e}",
                        file.display()
                    );
                }
            },
        )
        .map_err(read_err)?;
    }
    if malformed > MAX_MALFORMED_SHOWN {
        let _ = writeln!(err, "lmgate report: {malformed} malformed lines skipped in all");
    }

    Ok(malformed)
}

/// The stats files (rotated oldest first, then the live one): what the spend rebuild at
/// start reads.
pub(crate) fn stats_file_list(live: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    files::stats_files(live).map_err(|e| std::io::Error::other(e.to_string()))
}
