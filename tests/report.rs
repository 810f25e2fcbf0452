//! `lmgate report` end to end: the real binary on a fixture history
//! (`tests/fixtures/stats_history/`: two rotated files and the live one, 39 records over
//! 2026-11-20..22, one line cut short mid-write, an empty `.lock` sidecar, an allow-list).
//! Expected numbers were computed independently of LMGate from the same files.

mod common;

use common::Launch;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stats_history")
}

fn stats() -> String {
    fixture_dir().join("stats.jsonl").display().to_string()
}

fn allowlist() -> String {
    fixture_dir().join("allowlist.csv").display().to_string()
}

/// `lmgate --config <config> report <args>`, hermetic: no `LMGATE_*` from our environment.
fn lmgate_report(config: &Path, args: &[&str]) -> Output {
    Launch::lmgate().config(config).arg("report").args(args).run()
}

/// `report --stats <fixture> <args>`; the config is never read.
fn report(args: &[&str]) -> Output {
    let stats = stats();
    let mut all = vec!["--stats", stats.as_str()];
    all.extend_from_slice(args);
    lmgate_report(Path::new("/nonexistent/lmgate.yaml"), &all)
}

fn ok_stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok_stdout(out)).expect("stdout is one JSON document")
}

const TABLE_BY_KEY: &str = "\
lmgate_id  requests  errors  input  output  cache_read  cache_write  reasoning   cost  unpriced  exact  absent  over_limit  truncated  unparsed
(none)            3       3      0       0           0            0          0  $0.00         0      0       3           0          0         0
team-a           16       3  16586    4517        7058         1065        276  $0.00         0     11       2           1          1         1
team-b           11       1  12596    4365        3072          175        664  $0.00         0      9       1           0          1         0
team-c            7       0   7881    1919           0            0        261  $0.00         0      4       1           1          0         1
team-x            2       0   5364     748        2048            0          0  $0.00         0      2       0           0          0         0
total            39       7  42427   11549       12178         1240       1201  $0.00         0     26       7           2          2         2
";

#[test]
fn table_by_key_is_the_default_with_exact_sums_across_rotated_files() {
    let out = report(&[]);
    assert_eq!(ok_stdout(&out), TABLE_BY_KEY);
}

#[test]
fn a_malformed_line_is_skipped_and_reported_with_file_and_line() {
    let out = report(&["--format", "json"]);
    assert_eq!(json(&out)["malformed_lines"], 1);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("stats.jsonl.20261122T000004.907Z:7: skipped malformed line"),
        "{stderr}"
    );
}

#[test]
fn csv_by_day_and_model_has_exact_numbers() {
    let out = report(&["--by", "day,model", "--format", "csv"]);
    assert_eq!(
        ok_stdout(&out),
        "\
day,model,requests,errors,input_tokens,output_tokens,cache_read_input_tokens,cache_creation_input_tokens,reasoning_tokens,cost_micros,unpriced,exact,absent,over_limit,truncated,unparsed
2026-11-20,,1,1,0,0,0,0,0,0,0,0,1,0,0,0
2026-11-20,anthropic.claude-3-haiku-20240307-v1:0,1,0,837,860,0,0,0,0,0,1,0,0,0,0
2026-11-20,claude-sonnet-4-5,3,1,2002,156,0,0,0,0,0,1,0,1,1,0
2026-11-20,gemini-2.5-flash,2,0,3641,914,0,0,664,0,0,2,0,0,0,0
2026-11-20,gpt-4.1,3,1,1930,509,1024,0,0,0,0,1,2,0,0,0
2026-11-20,gpt-4o-mini,4,0,4981,1567,3072,0,0,0,0,4,0,0,0,0
2026-11-21,,2,1,0,0,0,0,0,0,0,0,1,0,0,1
2026-11-21,anthropic.claude-3-haiku-20240307-v1:0,1,0,2088,675,0,0,0,0,0,1,0,0,0,0
2026-11-21,claude-sonnet-4-5,3,0,3162,1462,1418,1051,0,0,0,3,0,0,0,0
2026-11-21,gemini-2.5-flash,2,1,2861,116,0,0,276,0,0,1,0,0,1,0
2026-11-21,gpt-4.1,1,0,1436,250,0,0,0,0,0,1,0,0,0,0
2026-11-21,gpt-4o-mini,4,1,5266,1526,2048,0,0,0,0,3,1,0,0,0
2026-11-22,,2,1,0,0,0,0,0,0,0,0,1,0,0,1
2026-11-22,anthropic.claude-3-haiku-20240307-v1:0,1,0,2741,83,0,0,0,0,0,1,0,0,0,0
2026-11-22,claude-sonnet-4-5,3,0,1370,1176,1544,189,0,0,0,2,0,1,0,0
2026-11-22,gemini-2.5-flash,1,0,2215,301,0,0,261,0,0,1,0,0,0,0
2026-11-22,gpt-4.1,3,0,5210,1081,2048,0,0,0,0,3,0,0,0,0
2026-11-22,gpt-4o-mini,2,0,2687,873,1024,0,0,0,0,1,1,0,0,0
"
    );
}

/// (group values joined with `|`) -> [requests, errors, input, output, cost_micros,
/// unpriced, exact, absent, over_limit, truncated, unparsed].
fn groups(v: &serde_json::Value, dims: &[&str]) -> BTreeMap<String, [u64; 11]> {
    let fields = [
        "requests",
        "errors",
        "input_tokens",
        "output_tokens",
        "cost_micros",
        "unpriced",
        "exact",
        "absent",
        "over_limit",
        "truncated",
        "unparsed",
    ];
    v["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            let key: Vec<String> = dims
                .iter()
                .map(|d| g[d].as_str().unwrap_or("null").to_owned())
                .collect();
            (key.join("|"), fields.map(|f| g[f].as_u64().expect(f)))
        })
        .collect()
}

#[test]
fn json_by_owner_and_provider_maps_ids_through_the_allow_list() {
    let al = allowlist();
    let v = json(&report(&[
        "--by",
        "owner,provider",
        "--format",
        "json",
        "--allowlist",
        &al,
    ]));
    assert_eq!(v["group_by"], serde_json::json!(["owner", "provider"]));
    let g = groups(&v, &["owner", "provider"]);
    let want: BTreeMap<String, [u64; 11]> = [
        ("null|null", [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        ("null|anthropic", [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        ("null|openai", [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
        ("(unknown)|openai", [2, 0, 5364, 748, 0, 0, 2, 0, 0, 0, 0]),
        ("alice|anthropic", [6, 1, 6233, 1972, 0, 0, 4, 0, 1, 1, 0]),
        ("alice|gemini", [2, 0, 2535, 75, 0, 0, 1, 0, 0, 0, 1]),
        ("alice|openai", [8, 2, 7818, 2470, 0, 0, 6, 2, 0, 0, 0]),
        ("bob|anthropic", [2, 0, 301, 822, 0, 0, 2, 0, 0, 0, 0]),
        ("bob|gemini", [3, 1, 3967, 955, 0, 0, 2, 0, 0, 1, 0]),
        ("bob|openai", [6, 0, 8328, 2588, 0, 0, 5, 1, 0, 0, 0]),
        ("carol|anthropic", [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]),
        ("carol|bedrock", [4, 0, 5666, 1618, 0, 0, 3, 0, 0, 0, 1]),
        ("carol|gemini", [1, 0, 2215, 301, 0, 0, 1, 0, 0, 0, 0]),
        ("carol|openai", [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(g, want);
    assert_eq!(
        v["total"],
        serde_json::json!({
            "requests": 39, "errors": 7, "input_tokens": 42427, "output_tokens": 11549,
            "cache_read_input_tokens": 12178, "cache_creation_input_tokens": 1240,
            "reasoning_tokens": 1201, "cost_micros": 0, "unpriced": 0, "exact": 26, "absent": 7, "over_limit": 2,
            "truncated": 2, "unparsed": 2
        })
    );
}

#[test]
fn since_is_inclusive_until_exclusive_and_offsets_are_honoured() {
    // 2026-11-22T12:00:00+02:00 is 10:00Z.
    let v = json(&report(&[
        "--format",
        "json",
        "--since",
        "2026-11-21",
        "--until",
        "2026-11-22T12:00:00+02:00",
    ]));
    assert_eq!(v["since"], "2026-11-21T00:00:00.000Z");
    assert_eq!(v["until"], "2026-11-22T10:00:00.000Z");
    let g = groups(&v, &["lmgate_id"]);
    assert_eq!(g["null"], [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(g["team-a"], [7, 1, 11252, 2213, 0, 0, 6, 1, 0, 0, 0]);
    assert_eq!(g["team-b"], [5, 1, 5143, 2360, 0, 0, 4, 0, 0, 1, 0]);
    assert_eq!(g["team-c"], [2, 0, 2088, 675, 0, 0, 1, 0, 0, 0, 1]);
    assert_eq!(g["team-x"], [1, 0, 2443, 465, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(v["total"]["requests"], 16);

    // A day is [midnight, next midnight): each of the three days alone sums to the whole.
    let per_day: Vec<u64> = [
        ("2026-11-20", "2026-11-21"),
        ("2026-11-21", "2026-11-22"),
        ("2026-11-22", "2026-11-23"),
    ]
    .iter()
    .map(|(s, u)| {
        json(&report(&["--format", "json", "--since", s, "--until", u]))["total"]["requests"]
            .as_u64()
            .unwrap()
    })
    .collect();
    assert_eq!(per_day, [14, 13, 12]);

    assert_eq!(
        ok_stdout(&report(&["--by", "provider", "--since", "2026-11-22"])),
        "\
provider   requests  errors  input  output  cache_read  cache_write  reasoning   cost  unpriced  exact  absent  over_limit  truncated  unparsed
anthropic         4       1   1370    1176        1544          189          0  $0.00         0      2       1           1          0         0
bedrock           1       0   2741      83           0            0          0  $0.00         0      1       0           0          0         0
gemini            2       0   2215     301           0            0        261  $0.00         0      1       0           0          0         1
openai            5       0   7897    1954        3072            0          0  $0.00         0      4       1           0          0         0
total            12       1  14223    3514        4616          189        261  $0.00         0      8       2           1          0         1
"
    );
}

#[test]
fn a_bad_or_empty_time_range_is_refused() {
    let out = report(&["--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
    let out = report(&["--since", "2026-11-22", "--until", "2026-11-21"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be before --until"));
}

#[test]
fn paths_come_from_the_config_when_not_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("lmgate.yaml");
    std::fs::write(
        &config,
        format!(
            "auth:\n  allowlist_path: {}\nstats:\n  output_path: {}\n",
            allowlist(),
            stats()
        ),
    )
    .unwrap();
    let out = lmgate_report(&config, &[]);
    assert_eq!(ok_stdout(&out), TABLE_BY_KEY);
    let v = json(&lmgate_report(
        &config,
        &["--group-by", "owner", "--format", "json"],
    ));
    let g = groups(&v, &["owner"]);
    let owners: Vec<&str> = g.keys().map(String::as_str).collect();
    assert_eq!(owners, ["(unknown)", "alice", "bob", "carol", "null"]);
    assert_eq!(g["alice"][0], 16);
}

#[test]
fn an_unreadable_allow_list_shows_owners_as_unknown_with_a_warning() {
    let out = report(&["--by", "owner", "--allowlist", "/nonexistent/allowlist.csv"]);
    assert_eq!(
        ok_stdout(&out),
        "\
owner      requests  errors  input  output  cache_read  cache_write  reasoning   cost  unpriced  exact  absent  over_limit  truncated  unparsed
(none)            3       3      0       0           0            0          0  $0.00         0      0       3           0          0         0
(unknown)        36       4  42427   11549       12178         1240       1201  $0.00         0     26       4           2          2         2
total            39       7  42427   11549       12178         1240       1201  $0.00         0     26       7           2          2         2
"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("warning: allow-list /nonexistent/allowlist.csv unusable"),
        "{stderr}"
    );
}

#[test]
fn a_missing_stats_file_or_config_exits_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none").join("stats.jsonl");
    let out = lmgate_report(
        Path::new("/nonexistent/lmgate.yaml"),
        &["--stats", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");

    let out = lmgate_report(Path::new("/nonexistent/lmgate.yaml"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/lmgate.yaml"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// SVG: parsed with roxmltree, which accepts only well-formed XML (balanced tags, quoted and
// unique attributes, known entities, no control characters, one root element).
// ---------------------------------------------------------------------------------------------

const SVG_NS: &str = "http://www.w3.org/2000/svg";

#[test]
fn the_well_formedness_check_catches_broken_documents() {
    assert!(roxmltree::Document::parse("<svg a=\"1\"><text>x &amp; y</text><rect/></svg>").is_ok());
    for bad in [
        "<svg><text>x</svg>",
        "<svg>",
        "<svg a=1/>",
        "<svg>x & y</svg>",
        "<svg>&nbsp;</svg>",
        "<svg/><svg/>",
        "<svg>\u{1}</svg>",
        "<svg a=\"1\" a=\"2\"/>",
    ] {
        assert!(roxmltree::Document::parse(bad).is_err(), "{bad}");
    }
}

/// The text directly inside an element (not inside its child elements).
fn own_text(node: roxmltree::Node) -> String {
    node.children()
        .filter_map(|c| c.is_text().then(|| c.text()).flatten())
        .collect()
}

/// Draw the chart; return (legend labels, distinct bar colours, text of every `<text>`).
fn chart(chart_by: &str) -> (Vec<String>, BTreeSet<String>, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let svg_path = dir.path().join("usage.svg");
    let out = report(&["--chart", svg_path.to_str().unwrap(), "--chart-by", chart_by]);
    assert_eq!(ok_stdout(&out), TABLE_BY_KEY, "the report is printed as usual");
    let svg = std::fs::read_to_string(&svg_path).expect("chart written");
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.tag_name().namespace(), Some(SVG_NS));
    assert!(
        root.namespaces()
            .any(|ns| ns.name().is_none() && ns.uri() == SVG_NS),
        "xmlns=\"{SVG_NS}\" on the root"
    );
    let elements: Vec<roxmltree::Node> = root.descendants().filter(|n| n.is_element()).collect();
    let texts: Vec<String> = elements
        .iter()
        .filter(|e| e.tag_name().name() == "text")
        .map(|e| own_text(*e).trim().to_owned())
        .collect();
    // The legend: its title (the series kind), then one label per series.
    let title_at = texts
        .iter()
        .rposition(|t| t == if chart_by == "key" { "lmgate_id" } else { "model" })
        .expect("legend title");
    let legend = texts[title_at + 1..].to_vec();
    let colours: BTreeSet<String> = elements
        .iter()
        .filter(|e| e.tag_name().name() == "rect")
        .filter_map(|e| e.attribute("fill").map(str::to_owned))
        .filter(|f| f != "#FFFFFF" && f != "none")
        .collect();
    (legend, colours, texts)
}

#[test]
fn chart_by_key_is_valid_svg_with_one_series_per_key() {
    let (legend, colours, texts) = chart("key");
    // Largest first; the three 403s (no key) have no tokens, so no series.
    assert_eq!(legend, ["team-a", "team-b", "team-c", "team-x"]);
    assert_eq!(colours.len(), 4, "one colour per series: {colours:?}");
    for day in ["2026-11-20", "2026-11-21", "2026-11-22"] {
        assert!(texts.iter().any(|t| t == day), "day label {day}");
    }
}

#[test]
fn chart_by_model_is_valid_svg_with_one_series_per_model() {
    let (legend, colours, _) = chart("model");
    assert_eq!(
        legend,
        [
            "gpt-4o-mini",
            "gpt-4.1",
            "gemini-2.5-flash",
            "claude-sonnet-4-5",
            "anthropic.claude-3-haiku-20240307-v1:0"
        ]
    );
    assert_eq!(colours.len(), 5, "{colours:?}");
}

#[test]
fn an_unwritable_chart_path_exits_1_before_printing() {
    let out = report(&["--chart", "/nonexistent/dir/usage.svg"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("cannot write chart /nonexistent/dir/usage.svg"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Cost: a history of our own, written as the gateway writes records now (`cost_micros` and
// `cost_status` last), with one record from before costs existed.
// ---------------------------------------------------------------------------------------------

/// One usage record line; `cost: None` leaves both cost fields out (a pre-cost record),
/// `Some((micros, status))` writes them.
fn cost_line(
    timestamp: &str,
    id: &str,
    model: &str,
    tokens: Option<(u64, u64)>,
    cost: Option<(Option<u64>, &str)>,
) -> String {
    let (input, output) = tokens.unzip();
    let mut r = serde_json::json!({
        "timestamp": timestamp, "lmgate_id": id, "provider": "openai",
        "endpoint": "/openai/v1/chat/completions", "model": model,
        "status": if tokens.is_some() { 200 } else { 502 },
        "input_tokens": input, "output_tokens": output,
        "cache_read_input_tokens": null, "cache_creation_input_tokens": null,
        "reasoning_tokens": null, "masked_key": "a1b2c3",
        "error_type": if tokens.is_some() { None } else { Some("upstream_error") },
        "usage_status": if tokens.is_some() { "exact" } else { "absent" },
        "stream": false, "duration_ms": 10
    });
    if let Some((micros, status)) = cost {
        r["cost_micros"] = serde_json::json!(micros);
        r["cost_status"] = serde_json::json!(status);
    }
    r.to_string()
}

#[test]
fn cost_is_summed_to_the_micro_dollar_and_unpriced_records_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.jsonl");
    let lines = [
        cost_line(
            "2026-11-20T10:00:00Z",
            "team-a",
            "gpt-4o-mini",
            Some((100, 20)),
            Some((Some(1_234_567), "exact")),
        ),
        cost_line(
            "2026-11-20T11:00:00Z",
            "team-a",
            "gpt-4o-mini",
            Some((1, 1)),
            Some((Some(1), "exact")),
        ),
        cost_line(
            "2026-11-21T10:00:00Z",
            "team-b",
            "gpt-4.1",
            Some((300, 40)),
            Some((Some(250_000), "partial")),
        ),
        cost_line(
            "2026-11-21T11:00:00Z",
            "team-b",
            "gpt-9-unknown",
            Some((50, 5)),
            Some((None, "unpriced")),
        ),
        cost_line(
            "2026-11-21T12:00:00Z",
            "team-a",
            "gpt-4o-mini",
            None,
            Some((None, "no_usage")),
        ),
        // Written before costs existed: counts as cost 0, not unpriced.
        cost_line(
            "2026-11-21T13:00:00Z",
            "team-c",
            "gpt-4o-mini",
            Some((7, 7)),
            None,
        ),
    ];
    std::fs::write(&stats, lines.join("\n") + "\n").unwrap();
    let stats = stats.to_str().unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["--stats", stats];
        all.extend_from_slice(args);
        lmgate_report(Path::new("/nonexistent/lmgate.yaml"), &all)
    };

    // CSV: exact integer micro-dollars per group; only the null-cost "unpriced" record is
    // counted as unpriced (not "no_usage", not the pre-cost record).
    let csv = ok_stdout(&run(&["--format", "csv"]));
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (cost, unpriced) = (col("cost_micros"), col("unpriced"));
    assert_eq!(cost, col("reasoning_tokens") + 1, "{header:?}");
    assert_eq!(unpriced, cost + 1, "{header:?}");
    let got: Vec<(String, String, String)> = rows
        .map(|r| {
            let f: Vec<&str> = r.split(',').collect();
            (f[0].to_owned(), f[cost].to_owned(), f[unpriced].to_owned())
        })
        .collect();
    let want = [
        ("team-a", "1234568", "0"),
        ("team-b", "250000", "1"),
        ("team-c", "0", "0"),
    ];
    assert_eq!(
        got,
        want.map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );

    // JSON: the total to the micro-dollar.
    let v = json(&run(&["--format", "json"]));
    assert_eq!(v["total"]["cost_micros"], 1_484_568);
    assert_eq!(v["total"]["unpriced"], 1);
    assert_eq!(v["total"]["requests"], 6);

    // Table: dollars, trailing zeros trimmed beyond the cents.
    let table = ok_stdout(&run(&["--by", "model"]));
    let cells = |first: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("row {first} in\n{table}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let head = cells("model");
    let (cost, unpriced) = (
        head.iter().position(|h| h == "cost").expect("cost header"),
        head.iter()
            .position(|h| h == "unpriced")
            .expect("unpriced header"),
    );
    for (model, dollars, n) in [
        ("gpt-4.1", "$0.25", "0"),
        ("gpt-4o-mini", "$1.234568", "0"),
        ("gpt-9-unknown", "$0.00", "1"),
        ("total", "$1.484568", "1"),
    ] {
        let row = cells(model);
        assert_eq!(
            (row[cost].as_str(), row[unpriced].as_str()),
            (dollars, n),
            "{table}"
        );
    }

    // The cost chart: y axis in dollars; only records with a cost make series.
    let svg_path = dir.path().join("cost.svg");
    let out = run(&["--chart", svg_path.to_str().unwrap(), "--chart-metric", "cost"]);
    ok_stdout(&out);
    let svg = std::fs::read_to_string(&svg_path).expect("chart written");
    let doc = roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("not well-formed XML: {e}\n{svg}"));
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == "text")
        .map(|n| own_text(n).trim().to_owned())
        .collect();
    assert!(texts.iter().any(|t| t == "cost (USD)"), "{texts:?}");
    assert!(
        texts.iter().any(|t| t.starts_with("Cost per day by lmgate_id")),
        "{texts:?}"
    );
    let title_at = texts
        .iter()
        .rposition(|t| t == "lmgate_id")
        .expect("legend title");
    assert_eq!(texts[title_at + 1..], ["team-a", "team-b"], "team-c has no cost");
}
