//! The command line of `lmgate report`: [`ReportArgs`] and the choices it offers (grouping
//! dimensions, output format, what the chart stacks). Reading `--since`/`--until` is left to
//! [`super::time::parse_time`].

use super::time::parse_time;
use std::path::PathBuf;

/// Arguments of `lmgate report`.
#[derive(Debug, clap::Args)]
#[command(after_help = "Times are UTC. --since is inclusive and --until exclusive, so \
`--since 2026-11-01 --until 2026-12-01` is November. Exit 0 on success, 1 on error \
(unreadable file, bad config, ClickHouse unreachable or refusing the query); malformed lines \
are skipped and reported on stderr. --source clickhouse reads the table the ClickHouse shipper \
fills (contrib/clickhouse/schema.sql), grouped and summed by the server; its password is read \
from LMGATE_CLICKHOUSE_PASSWORD.")]
pub struct ReportArgs {
    /// Where the records are read: the stats files, or the ClickHouse table the shipper
    /// fills (grouped and summed by the server).
    #[arg(long, value_enum, default_value_t = Source::File)]
    pub(super) source: Source,

    /// ClickHouse HTTP URL (`http://127.0.0.1:8123`) for `--source clickhouse`; default:
    /// the environment's `LMGATE_CLICKHOUSE_URL`, else the config's `clickhouse.url` (the
    /// shipper's server, with its user and password).
    #[arg(long, value_name = "URL")]
    pub(super) clickhouse_url: Option<String>,

    /// ClickHouse database of the usage table [default: the config's
    /// `clickhouse.database`, else lmgate].
    #[arg(long, value_name = "NAME")]
    pub(super) clickhouse_database: Option<String>,

    /// ClickHouse usage table (`contrib/clickhouse/schema.sql`) [default: the config's
    /// `clickhouse.table`, else usage].
    #[arg(long, value_name = "NAME")]
    pub(super) clickhouse_table: Option<String>,

    /// ClickHouse user (HTTP basic auth); its password is read from the environment's
    /// `LMGATE_CLICKHOUSE_PASSWORD`, never from the command line.
    #[arg(long, value_name = "USER")]
    pub(super) clickhouse_user: Option<String>,

    /// Stats file to read (its rotated siblings too); default: `stats.output_path` from the config.
    #[arg(long, value_name = "FILE")]
    pub(super) stats: Option<PathBuf>,

    /// Allow-list CSV mapping `lmgate_id` to owner (for `--by owner`); default:
    /// `auth.allowlist_path` from the config.
    #[arg(long, value_name = "FILE")]
    pub(super) allowlist: Option<PathBuf>,

    /// Only records at or after TIME: RFC 3339 (`2026-11-21T08:00:00Z`, offsets allowed) or a
    /// date (`2026-11-21`, midnight UTC).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(super) since: Option<i64>,

    /// Only records before TIME (exclusive); same forms as --since.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub(super) until: Option<i64>,

    /// Group by one or more of key, owner, provider, model, day (comma-separated, in order).
    #[arg(
        long = "by",
        visible_alias = "group-by",
        value_name = "DIM[,DIM...]",
        value_enum,
        value_delimiter = ',',
        default_value = "key"
    )]
    pub(super) by: Vec<Dimension>,

    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub(super) format: Format,

    /// Also draw input + output tokens (or cost, --chart-metric) per day, stacked by
    /// --chart-by, into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub(super) chart: Option<PathBuf>,

    /// What the chart's stacks are.
    #[arg(long, value_enum, default_value_t = ChartBy::Key, value_name = "WHAT")]
    pub(super) chart_by: ChartBy,

    /// What the chart sums per day: input + output tokens, or cost.
    #[arg(long, value_enum, default_value_t = ChartMetric::Tokens, value_name = "METRIC")]
    pub(super) chart_metric: ChartMetric,
}

impl ReportArgs {
    /// A flag given for the other source (`--stats` with ClickHouse, `--clickhouse-url` or
    /// `--clickhouse-user` with files): (the flag, the source it belongs to).
    pub(super) fn misplaced_flag(&self) -> Option<(&'static str, &'static str)> {
        match self.source {
            Source::ClickHouse if self.stats.is_some() => Some(("--stats", "file")),
            Source::File if self.clickhouse_url.is_some() => Some(("--clickhouse-url", "clickhouse")),
            Source::File if self.clickhouse_user.is_some() => Some(("--clickhouse-user", "clickhouse")),
            _ => None,
        }
    }
}

/// Where a report reads its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Source {
    /// The stats file and its rotated siblings (`--stats`).
    File,
    /// The ClickHouse usage table (`--clickhouse-*`).
    #[value(name = "clickhouse")]
    ClickHouse,
}

/// What the chart sums per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum ChartMetric {
    /// Input + output tokens.
    Tokens,
    /// Cost (the records' `cost_micros`), drawn in dollars.
    Cost,
}

/// A grouping dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub(super) enum Dimension {
    /// The record's `lmgate_id` (the allow-list id, never the key).
    #[value(alias = "lmgate_id", alias = "key_id")]
    Key,
    /// The allow-list owner of the `lmgate_id`.
    Owner,
    /// Provider name.
    Provider,
    /// Model.
    Model,
    /// UTC date of the record's `timestamp`.
    Day,
}

impl Dimension {
    /// Column name in every output format.
    pub(super) fn column(self) -> &'static str {
        match self {
            Dimension::Key => "lmgate_id",
            Dimension::Owner => "owner",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
            Dimension::Day => "day",
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// Aligned columns with a total row.
    Table,
    /// CSV with a header row; a null group value is an empty field.
    Csv,
    /// One JSON document: groups, total, filters.
    Json,
}

/// What the chart stacks per day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum ChartBy {
    /// `lmgate_id`.
    Key,
    /// Model.
    Model,
}

impl ChartBy {
    /// Column name of what is stacked (the legend title and the chart title).
    pub(super) fn column(self) -> &'static str {
        match self {
            ChartBy::Key => "lmgate_id",
            ChartBy::Model => "model",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ReportArgs,
    }

    fn misplaced(flags: &[&str]) -> Option<(&'static str, &'static str)> {
        let mut all = vec!["report"];
        all.extend_from_slice(flags);
        Cli::try_parse_from(all).unwrap().args.misplaced_flag()
    }

    #[test]
    fn each_source_refuses_the_other_sources_flags() {
        assert_eq!(misplaced(&[]), None);
        assert_eq!(misplaced(&["--stats", "s.jsonl"]), None);
        let ch = ["--source", "clickhouse", "--clickhouse-url", "http://h:8123"];
        assert_eq!(misplaced(&ch), None);
        assert_eq!(
            misplaced(&[&ch[..], &["--stats", "s"]].concat()),
            Some(("--stats", "file"))
        );
        assert_eq!(
            misplaced(&["--clickhouse-url", "http://h:8123"]),
            Some(("--clickhouse-url", "clickhouse"))
        );
        assert_eq!(
            misplaced(&["--source", "file", "--clickhouse-user", "u"]),
            Some(("--clickhouse-user", "clickhouse"))
        );
        let parse = |f: &[&str]| Cli::try_parse_from([&["report"][..], f].concat()).map(|c| c.args.source);
        assert_eq!(parse(&["--source", "clickhouse"]).unwrap(), Source::ClickHouse);
        assert!(parse(&["--source", "ClickHouse"]).is_err());
    }
}
