//! The ClickHouse end: one HTTP call per insert or query through the gateway's own minimal
//! client (`credentials/http.rs`: one request per connection, a bounded answer, one
//! deadline), authenticated with `X-ClickHouse-User` / `X-ClickHouse-Key` when configured.
//!
//! Inserts are `INSERT INTO <db>.<table> FORMAT JSONEachRow` with the lines as the body,
//! `input_format_skip_unknown_fields=1` (a newer gateway's extra fields are ignored) and
//! `date_time_input_format=best_effort`. An answer is sorted by [`classify`]: the server
//! refusing the data itself (a parse error code, whatever the HTTP status: 18.16 answers
//! 500 for those) is [`Failure::Refused`], told apart from everything else (unreachable,
//! overloaded, a missing table, a wrong password), which is [`Failure::Down`] and retried.
//! The password is only ever a header value: no message here holds it.

use crate::config::ClickHouseConfig;
use crate::credentials::http::HttpClient;
use crate::credentials::{read_secret, EnvLookup, Secret};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server refused the rows as data (a line it cannot parse): retrying the same
    /// rows cannot succeed.
    Refused(String),
    /// Anything else (unreachable, timeout, 5xx, authentication, missing table): retried.
    Down(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(m) => write!(f, "rows refused: {m}"),
            Failure::Down(m) => f.write_str(m),
        }
    }
}

/// ClickHouse error codes that mean "this input cannot be parsed into the table"
/// (`CANNOT_PARSE_*`, `INCORRECT_DATA`, `TYPE_MISMATCH` and their kin).
const DATA_ERROR_CODES: &[u32] = &[6, 25, 26, 27, 32, 33, 38, 41, 53, 69, 70, 72, 117, 130, 131, 349];

/// Longest server message kept (the first line of it).
const MAX_MESSAGE_CHARS: usize = 300;

/// Sort an answer: `Ok` for 2xx, else the failure with the server's message.
pub fn classify(status: u16, body: &[u8]) -> Result<(), Failure> {
    if (200..300).contains(&status) {
        return Ok(());
    }
    let text = String::from_utf8_lossy(body);
    let first = text.lines().next().unwrap_or("").trim();
    let message: String = format!("HTTP {status}: {first}")
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .collect();
    let code = first
        .strip_prefix("Code: ")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|c| c.parse::<u32>().ok());
    match code {
        Some(c) if DATA_ERROR_CODES.contains(&c) => Err(Failure::Refused(message)),
        _ => Err(Failure::Down(message)),
    }
}

/// `/?query=INSERT...&settings` for `db.table`, URL-encoded.
pub fn insert_path(database: &str, table: &str) -> String {
    let query = format!("INSERT INTO {database}.{table} FORMAT JSONEachRow");
    format!(
        "/?query={}&input_format_skip_unknown_fields=1&date_time_input_format=best_effort",
        utf8_percent_encode(&query, NON_ALPHANUMERIC)
    )
}

/// A configured ClickHouse server.
pub struct ClickHouse {
    client: HttpClient,
    base: String,
    insert_url: String,
    user: Option<Secret>,
    password: Option<Secret>,
}

impl ClickHouse {
    /// Read the user and password from their sources (`env` for `env:`); the error names
    /// the key and why, never a value.
    pub fn new(cfg: &ClickHouseConfig, env: EnvLookup) -> Result<ClickHouse, String> {
        let read = |s: &Option<crate::config::SecretSource>, key: &str| match s {
            None => Ok(None),
            Some(src) => read_secret(src, env)
                .map(Some)
                .map_err(|e| format!("clickhouse.{key} ({src}): {e}")),
        };
        Ok(ClickHouse {
            client: HttpClient::new(cfg.timeout),
            base: cfg.url.clone(),
            insert_url: format!("{}{}", cfg.url, insert_path(&cfg.database, &cfg.table)),
            user: read(&cfg.user, "user")?,
            password: read(&cfg.password, "password")?,
        })
    }

    /// The server's URL (no secrets in it).
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn post(&self, url: &str, body: &[u8]) -> Result<Vec<u8>, Failure> {
        let mut headers = Vec::with_capacity(2);
        if let Some(u) = &self.user {
            headers.push(("x-clickhouse-user", u.expose()));
        }
        if let Some(p) = &self.password {
            headers.push(("x-clickhouse-key", p.expose()));
        }
        let answer = self
            .client
            .call("POST", url, &headers, body)
            .await
            .map_err(|e| Failure::Down(e.to_string()))?;
        classify(answer.status, &answer.body)?;
        Ok(answer.body)
    }

    /// Insert JSONEachRow lines.
    pub async fn insert(&self, lines: &[u8]) -> Result<(), Failure> {
        self.post(&self.insert_url, lines).await.map(|_| ())
    }

    /// Run a query; its answer's body (TabSeparated unless the query says otherwise).
    pub async fn query(&self, sql: &str) -> Result<String, Failure> {
        let body = self.post(&format!("{}/", self.base), sql.as_bytes()).await?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_are_refusals_and_everything_else_is_an_outage() {
        assert_eq!(classify(200, b""), Ok(()));
        let refused = classify(
            500,
            b"Code: 27, e.displayText() = DB::Exception: Cannot parse input: expected \" before: abc\n, e.what() = DB::Exception\n",
        );
        assert!(
            matches!(&refused, Err(Failure::Refused(m)) if m.starts_with("HTTP 500: Code: 27,")),
            "{refused:?}"
        );
        assert!(matches!(
            classify(400, b"Code: 117. DB::Exception: bad"),
            Err(Failure::Refused(_))
        ));
        for (status, body) in [
            (
                500,
                &b"Code: 60, e.displayText() = DB::Exception: Table lmgate.usage doesn't exist."[..],
            ),
            (516, b"Code: 516. DB::Exception: default: Authentication failed"),
            (503, b""),
            (404, b"Not found"),
        ] {
            assert!(
                matches!(classify(status, body), Err(Failure::Down(_))),
                "{status}"
            );
        }
        let long = format!("Code: 27, {}", "x".repeat(1000));
        let Err(Failure::Refused(m)) = classify(500, long.as_bytes()) else {
            panic!()
        };
        assert_eq!(m.chars().count(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn the_insert_query_is_url_encoded_with_its_settings() {
        assert_eq!(
            insert_path("lmgate", "usage"),
            "/?query=INSERT%20INTO%20lmgate%2Eusage%20FORMAT%20JSONEachRow\
             &input_format_skip_unknown_fields=1&date_time_input_format=best_effort"
        );
    }
}
