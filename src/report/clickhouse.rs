//! The ClickHouse source of `lmgate report`: where the server is ([`Server`], from the
//! flags and the environment), sending `sql`'s queries over the credentials' small HTTP
//! client, and turning the server's answers and refusals into groups or a
//! [`ClickHouseError`]. The grouping itself runs in the server (`sql.rs`); rendering is
//! the file source's own.
//!
//! The password comes only from the environment, goes only into the `Authorization`
//! header, and is never printed: errors show the URL, the table, and the server's own
//! message (which never repeats a password).

use super::aggregate::{DailyTokens, Report};
use super::args::{ChartBy, ChartMetric, ReportArgs};
use super::sql;
use super::time::TimeRange;
use crate::credentials::http::{HttpClient, HttpError};
use base64::Engine as _;
use std::time::Duration;

/// Environment variable with the server URL when `--clickhouse-url` is not given.
pub(super) const URL_ENV: &str = "LMGATE_CLICKHOUSE_URL";
/// Environment variable with the password of `--clickhouse-user`.
pub(super) const PASSWORD_ENV: &str = "LMGATE_CLICKHOUSE_PASSWORD";
/// A query's deadline: grouping months of records is seconds of work for the server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest answer read: one row per group, so this is about a million groups.
const MAX_ANSWER_BYTES: usize = 256 * 1024 * 1024;
/// Longest part of a server message shown in an error.
const MAX_MESSAGE_CHARS: usize = 1000;
/// ClickHouse error codes for an unknown table and an unknown database.
const UNKNOWN_TABLE: u32 = 60;
const UNKNOWN_DATABASE: u32 = 81;

/// Why the ClickHouse source failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum ClickHouseError {
    /// Neither the flag nor the environment names a server.
    #[error("--source clickhouse needs --clickhouse-url, {URL_ENV} or clickhouse.url in the config")]
    NoUrl,
    /// The config's ClickHouse user or password cannot be read (names the key, never the
    /// value).
    #[error("{0}")]
    Secret(String),
    /// The server could not be reached or did not answer.
    #[error("ClickHouse at {url} unreachable: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why (connect refused, timeout, TLS).
        reason: String,
    },
    /// The usage table (or its database) does not exist.
    #[error(
        "ClickHouse table {table} not found at {url}: create it with contrib/clickhouse/schema.sql \
         (server: {message})"
    )]
    NoTable {
        /// `database.table`.
        table: String,
        /// The URL.
        url: String,
        /// The server's message.
        message: String,
    },
    /// The server refused the query (bad credentials, a missing column, a syntax error).
    #[error("ClickHouse at {url} refused the query (HTTP {status}): {message}")]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The answer is not the rows asked for.
    #[error("ClickHouse at {url} answered rows LMGate cannot read: {reason}")]
    BadAnswer {
        /// The URL.
        url: String,
        /// What was wrong.
        reason: String,
    },
}

/// Where the usage table is and who reads it.
pub(super) struct Server {
    url: String,
    database: String,
    table: String,
    /// Basic-auth `user:password`, base64; never printed.
    authorization: Option<String>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("table", &self.table)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// HTTP basic auth for `user` (default: `default`) and `password`, when either is set.
fn basic(user: Option<&str>, password: Option<&str>) -> Option<String> {
    if user.is_none() && password.is_none() {
        return None;
    }
    let pair = format!("{}:{}", user.unwrap_or("default"), password.unwrap_or_default());
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

impl Server {
    /// From the flags, with `env` for what they leave out (the URL, the password). A
    /// password without `--clickhouse-user` is the `default` user's.
    pub(super) fn from_args(
        args: &ReportArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Server, ClickHouseError> {
        let url = args
            .clickhouse_url
            .clone()
            .or_else(|| env(URL_ENV).filter(|u| !u.is_empty()))
            .ok_or(ClickHouseError::NoUrl)?;
        let password = env(PASSWORD_ENV);
        let authorization = basic(args.clickhouse_user.as_deref(), password.as_deref());
        Ok(Server {
            url,
            database: args
                .clickhouse_database
                .clone()
                .unwrap_or_else(|| "lmgate".into()),
            table: args.clickhouse_table.clone().unwrap_or_else(|| "usage".into()),
            authorization,
        })
    }

    /// When neither the flag nor the environment names a server: the config's
    /// `clickhouse:` section (the shipper's server), its user and password read from their
    /// sources; the flags still choose the database, table and user.
    pub(super) fn from_config(
        args: &ReportArgs,
        cfg: &crate::config::ClickHouseConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Server, ClickHouseError> {
        let read = |source: &crate::config::SecretSource, key: &str| {
            crate::credentials::read_secret(source, env)
                .map(|s| s.expose().to_owned())
                .map_err(|e| ClickHouseError::Secret(format!("clickhouse.{key}: {e}")))
        };
        let user = match (&args.clickhouse_user, &cfg.user) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(source)) => Some(read(source, "user")?),
            (None, None) => None,
        };
        let password = match (env(PASSWORD_ENV), &cfg.password) {
            (Some(p), _) => Some(p),
            (None, Some(source)) => Some(read(source, "password")?),
            (None, None) => None,
        };
        let authorization = basic(user.as_deref(), password.as_deref());
        Ok(Server {
            url: cfg.url.clone(),
            database: args
                .clickhouse_database
                .clone()
                .unwrap_or_else(|| cfg.database.clone()),
            table: args.clickhouse_table.clone().unwrap_or_else(|| cfg.table.clone()),
            authorization,
        })
    }

    /// `database.table`, for messages.
    fn table_name(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }
}

/// What a refused query's answer says: the `Code: N` ClickHouse starts its message with,
/// and the message (trimmed, on one line, at most [`MAX_MESSAGE_CHARS`]).
fn server_message(body: &[u8]) -> (Option<u32>, String) {
    let text = String::from_utf8_lossy(body);
    let line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let code = line
        .strip_prefix("Code: ")
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok());
    let shown = match line.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line,
    };
    (code, shown)
}

/// Send one query; the body of a 200 answer.
fn query(rt: &tokio::runtime::Runtime, server: &Server, sql: &str) -> Result<Vec<u8>, ClickHouseError> {
    let client = HttpClient::new(QUERY_TIMEOUT);
    let mut headers = vec![("content-type", "text/plain; charset=utf-8")];
    if let Some(a) = &server.authorization {
        headers.push(("authorization", a));
    }
    let answer = rt
        .block_on(client.call_bounded("POST", &server.url, &headers, sql.as_bytes(), MAX_ANSWER_BYTES))
        .map_err(|e| ClickHouseError::Unreachable {
            url: server.url.clone(),
            reason: match e {
                // The URL error already quotes the URL.
                HttpError::Url(why) => why,
                e => e.to_string(),
            },
        })?;
    if answer.status == 200 {
        return Ok(answer.body);
    }
    let (code, message) = server_message(&answer.body);
    Err(match code {
        Some(UNKNOWN_TABLE | UNKNOWN_DATABASE) => ClickHouseError::NoTable {
            table: server.table_name(),
            url: server.url.clone(),
            message,
        },
        _ => ClickHouseError::Refused {
            url: server.url.clone(),
            status: answer.status,
            message,
        },
    })
}

/// Fill `report` (and `chart`) with the groups the server sums for `range`.
pub(super) fn fill(
    server: &Server,
    range: TimeRange,
    report: &mut Report,
    chart: Option<(&mut DailyTokens, ChartBy, ChartMetric)>,
) -> Result<(), ClickHouseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClickHouseError::Unreachable {
            url: server.url.clone(),
            reason: format!("no runtime to query with: {e}"),
        })?;
    let bad = |e: sql::AnswerError| ClickHouseError::BadAnswer {
        url: server.url.clone(),
        reason: e.to_string(),
    };
    let dims = report.dims().to_vec();
    let body = query(
        &rt,
        server,
        &sql::groups_query(&server.database, &server.table, &dims, range),
    )?;
    for (values, totals) in sql::parse_groups(&body, &dims).map_err(bad)? {
        report.add_summed(&values, &totals);
    }
    if let Some((daily, by, metric)) = chart {
        let body = query(
            &rt,
            server,
            &sql::chart_query(&server.database, &server.table, by, metric, range),
        )?;
        for (day, series, value) in sql::parse_chart(&body).map_err(bad)? {
            daily.add_summed(day, series, value);
        }
    }
    Ok(())
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

    fn args(flags: &[&str]) -> ReportArgs {
        let mut all = vec!["report"];
        all.extend_from_slice(flags);
        Cli::parse_from(all).args
    }

    #[test]
    fn the_server_comes_from_flags_then_environment_and_the_password_only_from_environment() {
        let none = |_: &str| None;
        let s = Server::from_args(&args(&["--clickhouse-url", "http://ch:8123"]), none).unwrap();
        assert_eq!(
            (s.url.as_str(), s.table_name().as_str()),
            ("http://ch:8123", "lmgate.usage")
        );
        assert!(s.authorization.is_none());

        let env = |k: &str| match k {
            URL_ENV => Some("http://env:8123".to_owned()),
            PASSWORD_ENV => Some("s3cret-pass".to_owned()),
            _ => None,
        };
        let s = Server::from_args(
            &args(&[
                "--clickhouse-user",
                "reporter",
                "--clickhouse-database",
                "db",
                "--clickhouse-table",
                "t",
            ]),
            env,
        )
        .unwrap();
        assert_eq!(
            (s.url.as_str(), s.table_name().as_str()),
            ("http://env:8123", "db.t")
        );
        let basic = base64::engine::general_purpose::STANDARD.encode("reporter:s3cret-pass");
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Basic {basic}").as_str())
        );
        assert!(
            !format!("{s:?}").contains(&basic),
            "Debug never shows the credentials"
        );

        let s = Server::from_args(&args(&[]), env).unwrap();
        let basic = base64::engine::general_purpose::STANDARD.encode("default:s3cret-pass");
        assert_eq!(
            s.authorization.as_deref(),
            Some(format!("Basic {basic}").as_str())
        );

        assert_eq!(
            Server::from_args(&args(&[]), none).unwrap_err(),
            ClickHouseError::NoUrl
        );
    }

    #[test]
    fn server_messages_give_their_code_on_one_bounded_line() {
        let (code, msg) = server_message(
            b"Code: 60, e.displayText() = DB::Exception: Table lmgate.usage doesn't exist., e.what() = DB::Exception\n",
        );
        assert_eq!(code, Some(60));
        assert!(msg.ends_with("e.what() = DB::Exception"), "{msg}");
        let (code, _) = server_message(
            b"Code: 81. DB::Exception: Database x doesn't exist. (UNKNOWN_DATABASE) (version 24.3)\n",
        );
        assert_eq!(code, Some(81));
        assert_eq!(server_message(b"busy\r\n\r\n").1, "busy");
        assert_eq!(server_message(b"").0, None);
        let (_, long) = server_message("é".repeat(5000).as_bytes());
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 3);
    }
}
