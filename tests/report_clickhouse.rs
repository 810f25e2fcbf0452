//! `lmgate report --source clickhouse` against a real ClickHouse (Debian's 18.16 here): the
//! same records loaded into the shipper's table (`contrib/clickhouse/schema.sql`) with the
//! shipper's insert, some of them twice, must print byte for byte what the file source
//! prints for them, in every format, grouping, time range and chart; and an unreachable
//! server, a missing table or a refused query end the run with a clear error.

mod common;

use common::{clickhouse, clickhouse_query, clickhouse_schema, Engine, Launch, DEADLINE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats_history")
}

fn allowlist() -> String {
    fixture_dir().join("allowlist.csv").display().to_string()
}

/// The records: every well-formed line of the report fixture history (three days, many
/// providers, models and keys, nulls, errors, every usage status), then lines of our own
/// for what the fixture lacks: costs (exact, partial, unpriced, no usage, and a record from
/// before costs), another month, awkward ids and models (quotes, backslash, tab, newline,
/// non-ASCII, empty), offsets, fractions past milliseconds, a timestamp without them, and
/// records a millisecond either side of the range boundaries the tests use. Each gets a
/// unique `request_id` (ClickHouse keeps one row per `(time, request_id)`).
fn records() -> Vec<String> {
    let mut lines: Vec<serde_json::Value> = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("stats.jsonl")
        })
        .collect();
    files.sort();
    for f in files {
        for l in std::fs::read_to_string(&f).unwrap().lines() {
            // The fixture's one line cut short mid-write cannot be inserted; it is the file
            // source's concern (tests/report.rs).
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                lines.push(v);
            }
        }
    }
    assert_eq!(lines.len(), 39, "the fixture's well-formed records");
    let own = |ts: &str,
               id: Option<&str>,
               provider: Option<&str>,
               model: Option<&str>,
               tokens: Option<(u64, u64)>,
               cost: Option<(Option<u64>, &str)>,
               status: &str,
               error: Option<&str>,
               stream: bool| {
        let (input, output) = tokens.unzip();
        let mut r = serde_json::json!({
            "timestamp": ts, "lmgate_id": id, "provider": provider,
            "endpoint": "/openai/v1/chat/completions", "model": model,
            "status": if error.is_some() { 502 } else { 200 },
            "input_tokens": input, "output_tokens": output,
            "cache_read_input_tokens": tokens.map(|_| 7), "cache_creation_input_tokens": null,
            "reasoning_tokens": output.map(|o| o / 3), "masked_key": "a1b2c3",
            "error_type": error, "usage_status": status, "stream": stream, "duration_ms": 10
        });
        if let Some((micros, status)) = cost {
            r["cost_micros"] = serde_json::json!(micros);
            r["cost_status"] = serde_json::json!(status);
        }
        r
    };
    let exact = "exact";
    lines.extend([
        own(
            "2026-10-31T23:59:59.999Z",
            Some("team-a"),
            Some("openai"),
            Some("gpt-4o-mini"),
            Some((100, 20)),
            Some((Some(1_234_567), "exact")),
            exact,
            None,
            false,
        ),
        own(
            "2026-11-01T00:00:00.000Z",
            Some("team-a"),
            Some("openai"),
            Some("gpt-4o-mini"),
            Some((1, 1)),
            Some((Some(1), "exact")),
            exact,
            None,
            true,
        ),
        own(
            "2026-11-21T12:00:00.500Z",
            Some("team-b"),
            Some("openai"),
            Some("gpt-4.1"),
            Some((300, 40)),
            Some((Some(250_000), "partial")),
            exact,
            None,
            true,
        ),
        own(
            "2026-11-21T12:00:00.499Z",
            Some("team-b"),
            Some("openai"),
            Some("gpt-9-unknown"),
            Some((50, 5)),
            Some((None, "unpriced")),
            exact,
            None,
            false,
        ),
        own(
            "2026-11-21T12:00:00.501Z",
            Some("team-b"),
            Some("openai"),
            Some("gpt-9-unknown"),
            Some((60, 6)),
            Some((None, "unpriced")),
            "truncated",
            None,
            true,
        ),
        own(
            "2026-11-21T14:00:00+02:00",
            Some("team-a"),
            Some("anthropic"),
            Some("claude-sonnet-4-5"),
            None,
            Some((None, "no_usage")),
            "absent",
            Some("upstream_error"),
            false,
        ),
        own(
            "2026-11-21T23:30:00.250-01:00",
            Some("team-c"),
            Some("gemini"),
            Some("gemini-2.5-flash"),
            Some((9, 9)),
            Some((Some(90), "exact")),
            exact,
            None,
            true,
        ),
        own(
            "2026-11-22T00:00:00Z",
            Some("team-c"),
            Some("gemini"),
            Some("gemini-2.5-flash"),
            Some((7, 7)),
            None,
            exact,
            None,
            false,
        ),
        own(
            "2026-11-22T00:00:00.000999Z",
            Some("team-c"),
            Some("gemini"),
            Some("gemini-2.5-flash"),
            Some((5, 5)),
            None,
            "over_limit",
            None,
            false,
        ),
        own(
            "2026-11-22T00:00:00.001Z",
            Some("it's \"q\" a\\b\tc\nd é 😀"),
            Some("openai"),
            Some("m,with'quote"),
            Some((3, 4)),
            Some((Some(5), "exact")),
            exact,
            None,
            false,
        ),
        own(
            "2026-11-22T05:00:00.123456789Z",
            Some(""),
            Some("openai"),
            Some(""),
            Some((11, 12)),
            Some((Some(13), "exact")),
            "unparsed",
            Some(""),
            true,
        ),
        own(
            "2026-11-22T06:00:00.000Z",
            None,
            None,
            None,
            None,
            None,
            "absent",
            Some("forbidden"),
            false,
        ),
        own(
            "2026-12-01T09:00:00.000Z",
            Some("team-x"),
            Some("bedrock"),
            Some("anthropic.claude-3-haiku-20240307-v1:0"),
            Some((1000, 2000)),
            Some((Some(3_000_000), "exact")),
            exact,
            None,
            false,
        ),
        own(
            "2026-12-02T09:00:00.000Z",
            Some("team-a"),
            Some("openai"),
            Some("\\N"),
            Some((2, 2)),
            Some((Some(2), "exact")),
            exact,
            None,
            false,
        ),
    ]);
    lines
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            v["request_id"] = serde_json::json!(format!("req-{i:04}"));
            v.to_string()
        })
        .collect()
}

/// The shipper's insert: the record lines as they are, in one POST.
fn insert(e: &Engine, lines: &[String]) {
    let body = lines.join("\n") + "\n";
    let target = "/?query=INSERT%20INTO%20lmgate.usage%20FORMAT%20JSONEachRow\
                  &input_format_skip_unknown_fields=1&date_time_input_format=best_effort";
    let mut s = TcpStream::connect(e.addr()).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "POST {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        e.addr(),
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "insert refused:\n{answer}");
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    Launch::lmgate()
        .config(Path::new("/nonexistent/lmgate.yaml"))
        .arg("report")
        .args(args)
        .envs(env.iter().copied())
        .run()
}

fn stdout(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Run the same report from the file and from ClickHouse; both outputs (and charts, when
/// `chart` is set) must be identical. Returns the file source's stdout.
fn same(file: &str, url: &str, dir: &Path, args: &[&str], chart: bool) -> String {
    let mut outs = Vec::new();
    for (name, source) in [
        ("file", vec!["--stats", file]),
        (
            "clickhouse",
            vec!["--source", "clickhouse", "--clickhouse-url", url],
        ),
    ] {
        let svg = dir.join(format!("{name}.svg"));
        let mut all = source;
        all.extend_from_slice(args);
        let svg_arg = svg.display().to_string();
        if chart {
            all.extend(["--chart", svg_arg.as_str()]);
        }
        let what = format!("{name} {args:?}");
        let out = stdout(&run(&all, &[]), &what);
        let svg = chart.then(|| std::fs::read_to_string(&svg).expect("chart written"));
        outs.push((out, svg));
    }
    assert_eq!(outs[0].0, outs[1].0, "stdout differs for {args:?}");
    assert_eq!(outs[0].1, outs[1].1, "chart differs for {args:?}");
    outs.swap_remove(0).0
}

#[test]
fn clickhouse_source_prints_what_the_file_source_prints_for_the_same_records() {
    let ch = clickhouse();
    clickhouse_schema(&ch);
    let lines = records();
    insert(&ch, &lines);
    // Re-sent batches: the first 20 lines again, and one line a third time. Until a merge,
    // the table holds them twice; every read uses FINAL.
    insert(&ch, &lines[..20]);
    insert(&ch, &lines[5..6]);
    let raw: usize = clickhouse_query(&ch, "SELECT count() FROM lmgate.usage")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(raw, lines.len() + 21, "duplicates are stored until a merge");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("stats.jsonl");
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let file = file.display().to_string();
    let url = format!("http://{}", ch.addr());
    let al = allowlist();

    let table = same(&file, &url, dir.path(), &[], false);
    assert!(table.lines().last().unwrap().starts_with("total "), "{table}");
    assert_eq!(
        table.lines().last().unwrap().split_whitespace().nth(1),
        Some(lines.len().to_string().as_str()),
        "every record counted once:\n{table}"
    );

    let groupings = [
        "key",
        "owner",
        "provider",
        "model",
        "day",
        "day,model",
        "owner,provider",
        "model,key,owner",
        "key,owner,day,model,provider",
    ];
    let ranges: [&[&str]; 7] = [
        &[],
        &["--since", "2026-11-21"],
        &["--until", "2026-11-22"],
        // A record on each boundary: since takes it, until does not; .499/.501 either side.
        &[
            "--since",
            "2026-11-21T12:00:00.500Z",
            "--until",
            "2026-11-22T00:00:00.001Z",
        ],
        &[
            "--since",
            "2026-11-21T12:00:00.501Z",
            "--until",
            "2026-11-22T00:00:00Z",
        ],
        // Offsets, and a month boundary one millisecond after a record.
        &[
            "--since",
            "2026-11-01T01:00:00+01:00",
            "--until",
            "2026-11-22T01:00:00.000+01:00",
        ],
        // Nothing in range.
        &["--since", "2030-01-01"],
    ];
    for by in groupings {
        for format in ["table", "csv", "json"] {
            for range in ranges {
                let mut args = vec!["--by", by, "--format", format, "--allowlist", &al];
                args.extend_from_slice(range);
                same(&file, &url, dir.path(), &args, false);
            }
        }
    }

    for chart_by in ["key", "model"] {
        for metric in ["tokens", "cost"] {
            for range in [ranges[0], ranges[3], ranges[5]] {
                let mut args = vec!["--chart-by", chart_by, "--chart-metric", metric, "--by", "day"];
                args.extend_from_slice(range);
                same(&file, &url, dir.path(), &args, true);
            }
        }
    }

    // Another database and table name, given by flags; the URL from the environment; the
    // `default` user named, with its (empty) password.
    clickhouse_query(&ch, "CREATE DATABASE `other db`");
    clickhouse_query(&ch, "CREATE TABLE `other db`.`usage 2` AS lmgate.usage");
    clickhouse_query(&ch, "INSERT INTO `other db`.`usage 2` (timestamp, lmgate_id, provider, endpoint, model, status, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens, masked_key, error_type, usage_status, stream, duration_ms, cost_micros, cost_status, request_id) SELECT timestamp, lmgate_id, provider, endpoint, model, status, input_tokens, output_tokens, cache_read_input_tokens, cache_creation_input_tokens, reasoning_tokens, masked_key, error_type, usage_status, stream, duration_ms, cost_micros, cost_status, request_id FROM lmgate.usage FINAL");
    let out = run(
        &[
            "--source",
            "clickhouse",
            "--clickhouse-database",
            "other db",
            "--clickhouse-table",
            "usage 2",
            "--clickhouse-user",
            "default",
        ],
        &[("LMGATE_CLICKHOUSE_URL", url.as_str())],
    );
    assert_eq!(stdout(&out, "other table"), table);

    // A line whose usage_status LMGate never writes, and one whose timestamp ClickHouse
    // reads but RFC 3339 does not (no offset), are skipped by both sources (the file
    // source reports them on stderr).
    let odd_line = |i: usize, field: &str, value: &str| {
        let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
        v[field] = serde_json::json!(value);
        v["request_id"] = serde_json::json!(format!("req-odd-{i}"));
        v.to_string()
    };
    let odd = [
        odd_line(0, "usage_status", "pretty_sure"),
        odd_line(1, "timestamp", "2026-11-22 08:37:11"),
    ];
    insert(&ch, &odd);
    let with_odd = dir.path().join("odd.jsonl");
    std::fs::write(&with_odd, lines.join("\n") + "\n" + &odd.join("\n") + "\n").unwrap();
    let from_file = run(&["--stats", with_odd.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&from_file.stderr);
    assert!(
        stderr.contains("unknown usage_status") && stderr.contains("bad timestamp"),
        "{stderr}"
    );
    assert_eq!(stdout(&from_file, "file with odd lines"), table);
    let raw: usize = clickhouse_query(&ch, "SELECT count() FROM lmgate.usage FINAL")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(raw, lines.len() + 2, "ClickHouse took both odd lines");
    assert_eq!(
        stdout(
            &run(&["--source", "clickhouse", "--clickhouse-url", &url], &[]),
            "clickhouse with odd lines"
        ),
        table
    );

    // Without a URL flag: the config's `clickhouse:` section (the shipper's server).
    let config = dir.path().join("lmgate.yaml");
    std::fs::write(&config, format!("clickhouse:\n  url: {url}\n")).unwrap();
    let from_config = Launch::lmgate()
        .config(&config)
        .args(["report", "--source", "clickhouse"])
        .run();
    assert_eq!(stdout(&from_config, "clickhouse from the config"), table);

    // A missing table or database: exit 1, the table named, the schema file pointed to.
    for flags in [["--clickhouse-table", "nope"], ["--clickhouse-database", "nodb"]] {
        let mut args = vec!["--source", "clickhouse", "--clickhouse-url", &url];
        args.extend_from_slice(&flags);
        let out = run(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{flags:?}");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("lmgate report: ClickHouse table "), "{err}");
        assert!(
            err.contains("not found at http://127.0.0.1:") && err.contains("contrib/clickhouse/schema.sql"),
            "{err}"
        );
        assert!(err.contains("nope") || err.contains("nodb"), "{err}");
    }

    // Refused: an unknown user, and a wrong password. The server's message is shown, the
    // password never.
    let secret = "pw-never-printed-0001";
    for (user, env) in [
        ("nobody", vec![("LMGATE_CLICKHOUSE_PASSWORD", secret)]),
        ("default", vec![("LMGATE_CLICKHOUSE_PASSWORD", secret)]),
    ] {
        let out = run(
            &[
                "--source",
                "clickhouse",
                "--clickhouse-url",
                &url,
                "--clickhouse-user",
                user,
            ],
            &env,
        );
        assert_eq!(out.status.code(), Some(1), "{user}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.starts_with("lmgate report: ClickHouse at http://127.0.0.1:"),
            "{err}"
        );
        assert!(
            err.contains("refused the query") && err.contains("Code: "),
            "{err}"
        );
        assert!(!err.contains(secret), "{err}");
    }
}

#[test]
fn an_unreachable_server_or_missing_url_exits_1_with_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run(&["--source", "clickhouse", "--clickhouse-url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "lmgate report: ClickHouse at {url} unreachable: cannot connect"
        )),
        "{err}"
    );

    let out = run(&["--source", "clickhouse", "--clickhouse-url", "ftp://x"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("`ftp://x` is not http:// or https://"), "{err}");

    let out = run(&["--source", "clickhouse"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--source clickhouse needs --clickhouse-url, LMGATE_CLICKHOUSE_URL or clickhouse.url in the config"),
        "{err}"
    );

    let out = run(
        &[
            "--source",
            "clickhouse",
            "--clickhouse-url",
            &url,
            "--stats",
            "x.jsonl",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("--stats applies only to --source file"), "{err}");
    let out = run(&["--stats", "x.jsonl", "--clickhouse-url", &url], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("--clickhouse-url applies only to --source clickhouse"),
        "{err}"
    );
}
