//! Shipping usage records to a real ClickHouse (Debian's 18.16, started on loopback by the
//! harness): every answered request arrives once, by `request_id`, through an outage, a
//! SIGKILL of the gateway, rotations and retention; `lmgate check` compares the table with
//! the schema. Outages here last a few seconds of traffic, not minutes: the shipper's
//! behaviour does not depend on how long the server is gone (its backoff is capped at 30 s,
//! which these tests stay under).

mod common;

use common::*;
use std::collections::BTreeSet;
use std::path::Path;

/// Create the usage table from the binary's own schema (`lmgate clickhouse schema`), as
/// the README tells operators to.
fn create_schema(ch: &Engine) {
    let out = Launch::lmgate().args(["clickhouse", "schema"]).run();
    assert!(out.status.success());
    let sql: String = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in sql.split(';').filter(|s| !s.trim().is_empty()) {
        clickhouse_query(ch, statement);
    }
}

/// The gateway's `clickhouse:` section (1 s partial batches unless `extra` sets a wait) and
/// the keys in `extra`.
fn ship_yaml(ch: &Engine, extra: &str) -> String {
    let wait = if extra.contains("batch_seconds") {
        ""
    } else {
        "  batch_seconds: 1\n"
    };
    format!(
        "clickhouse:\n  url: http://127.0.0.1:{}\n  timeout_seconds: 2\n{wait}{extra}",
        ch.port
    )
}

async fn gateway(mock: &Mock, ch: &Engine, extra: &str) -> Gateway {
    Gateway::start(GatewayOpts {
        yaml: format!("{}{}", all_providers_at(mock.port), ship_yaml(ch, extra)),
        ..Default::default()
    })
}

/// `n` answered requests.
async fn traffic(gw: &Gateway, n: usize) {
    for _ in 0..n {
        let r = request_as(&gw.addr(), KEY_A, "POST", "/openai/v1/chat/completions", b"{}").await;
        assert_eq!(r.status, 200);
    }
}

/// `(count() FINAL, count(DISTINCT request_id))` of the usage table.
fn counts(ch: &Engine) -> (u64, u64) {
    let a = clickhouse_query(
        ch,
        "SELECT count(), count(DISTINCT request_id) FROM lmgate.usage FINAL",
    );
    let mut it = a.split_whitespace().map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn shipped_ids(ch: &Engine) -> BTreeSet<String> {
    clickhouse_query(ch, "SELECT request_id FROM lmgate.usage FINAL")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The request ids in the stats files (lines written by older versions have none).
fn file_ids(gw: &Gateway) -> BTreeSet<String> {
    gw.records()
        .iter()
        .filter_map(|r| Some(r["request_id"].as_str()?.to_owned()))
        .collect()
}

/// Wait until the table holds `n` distinct records (FINAL).
async fn wait_shipped(ch: &Engine, gw: &Gateway, n: u64) {
    wait_until(
        &format!("{n} records in ClickHouse"),
        || counts(ch).0 == n,
        || format!("counts {:?}\nlog:\n{}", counts(ch), gw.log()),
    )
    .await;
}

/// A metric's value from `/metrics`.
async fn metric(gw: &Gateway, name: &str) -> f64 {
    let text = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"")
        .await
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

async fn wait_metric(gw: &Gateway, name: &str, ok: impl Fn(f64) -> bool) {
    let start = std::time::Instant::now();
    loop {
        let v = metric(gw, name).await;
        if ok(v) {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{name} stuck at {v}; log:\n{}",
            gw.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn rotated_files(stats: &Path) -> Vec<String> {
    let live = stats.file_name().unwrap().to_string_lossy().to_string();
    let mut v: Vec<String> = std::fs::read_dir(stats.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("{live}.2")))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn every_answered_request_arrives_once_by_request_id() {
    let ch = clickhouse();
    create_schema(&ch);
    let mock = Mock::chat().await;
    let gw = gateway(&mock, &ch, "").await;
    traffic(&gw, 25).await;
    gw.wait_records(25);
    // A file from before records had ids, and a line ClickHouse cannot take: the first
    // gets a legacy id, the second is set aside without holding up the rest.
    let old = gw.stats_path.with_file_name("stats.jsonl.20261101T000000.000Z");
    let legacy = r#"{"timestamp":"2026-11-01T00:00:00.000Z","lmgate_id":"team-a","provider":"openai","endpoint":"/openai/v1/x","model":null,"status":200,"input_tokens":1,"output_tokens":2,"cache_read_input_tokens":null,"cache_creation_input_tokens":null,"reasoning_tokens":null,"masked_key":"...AAAAAA","error_type":null,"usage_status":"exact","stream":false,"duration_ms":3,"cost_micros":null,"cost_status":"unpriced"}"#;
    let bad = r#"{"timestamp":"2026-11-01T00:00:01.000Z","status":"not a number","request_id":"bad-1"}"#;
    std::fs::write(&old, format!("{legacy}\n{bad}\n{legacy}\n")).unwrap();

    wait_shipped(&ch, &gw, 25 + 2).await;
    let mut want = file_ids(&gw);
    assert!(want.remove("bad-1"), "the refused line is not in the table");
    assert_eq!(want.len(), 25, "the gateway's own records have unique ids");
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&old).unwrap());
    let second = legacy.len() + 1 + bad.len() + 1;
    want.insert(format!("legacy-{ino}-0"));
    want.insert(format!("legacy-{ino}-{second}"));
    assert_eq!(shipped_ids(&ch), want);
    assert_eq!(counts(&ch), (27, 27));
    let rejected = std::fs::read_to_string(gw.stats_path.with_file_name("stats.jsonl.rejected")).unwrap();
    assert_eq!(rejected, format!("{bad}\n"));
    wait_metric(&gw, "lmgate_ship_lag_bytes", |v| v == 0.0).await;
    assert_eq!(metric(&gw, "lmgate_ship_rejected_total").await, 1.0);
    assert_eq!(metric(&gw, "lmgate_ship_rows_total").await, 27.0);
    assert_eq!(metric(&gw, "lmgate_ship_up").await, 1.0);
    assert_eq!(metric(&gw, "lmgate_ship_lag_seconds").await, 0.0);
    assert!(
        gw.log().contains("clickhouse refused a usage record line"),
        "{}",
        gw.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_loses_and_duplicates_nothing_and_the_lag_returns_to_zero() {
    let mut ch = clickhouse();
    create_schema(&ch);
    let mock = Mock::chat().await;
    let gw = gateway(&mock, &ch, "").await;
    traffic(&gw, 10).await;
    wait_shipped(&ch, &gw, 10).await;

    // Down mid-traffic (a few seconds here, any length in production).
    ch.stop();
    traffic(&gw, 20).await;
    gw.wait_records(30);
    wait_metric(&gw, "lmgate_ship_up", |v| v == 0.0).await;
    wait_metric(&gw, "lmgate_ship_lag_bytes", |v| v > 0.0).await;
    wait_metric(&gw, "lmgate_ship_lag_seconds", |v| v >= 1.0).await;
    traffic(&gw, 5).await;
    gw.wait_records(35);

    ch.restart(clickhouse_ready);
    wait_shipped(&ch, &gw, 35).await;
    wait_metric(&gw, "lmgate_ship_lag_bytes", |v| v == 0.0).await;
    wait_metric(&gw, "lmgate_ship_up", |v| v == 1.0).await;
    assert_eq!(counts(&ch), (35, 35));
    assert_eq!(shipped_ids(&ch), file_ids(&gw));
    assert!(metric(&gw, "lmgate_ship_errors_total").await >= 1.0);
    let log = gw.log();
    assert_eq!(
        log.matches("not reachable or failing").count(),
        1,
        "one warning per outage:\n{log}"
    );
    assert_eq!(log.matches("reachable again").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_gateway_ships_its_unshipped_records_once_after_restart() {
    let mut ch = clickhouse();
    create_schema(&ch);
    let mock = Mock::chat().await;
    let mut gw = gateway(&mock, &ch, "  batch_rows: 4\n").await;
    traffic(&gw, 10).await;
    wait_shipped(&ch, &gw, 10).await;
    // Records written but not shipped when the process dies.
    ch.stop();
    traffic(&gw, 15).await;
    gw.wait_records(25);
    gw.signal(libc::SIGKILL);
    gw.wait_exit();

    ch.restart(clickhouse_ready);
    gw.child = Some(gw.launch().spawn());
    gw.wait_ready();
    wait_shipped(&ch, &gw, 25).await;
    wait_metric(&gw, "lmgate_ship_lag_bytes", |v| v == 0.0).await;
    assert_eq!(counts(&ch), (25, 25));
    assert_eq!(shipped_ids(&ch), file_ids(&gw));

    // A crash between an insert and its checkpoint re-sends rows: the table keeps one of
    // each (here the whole history is re-sent, the worst case).
    gw.signal(libc::SIGKILL);
    gw.wait_exit();
    std::fs::remove_file(gw.stats_path.with_file_name("stats.jsonl.shipped")).unwrap();
    gw.child = Some(gw.launch().spawn());
    gw.wait_ready();
    wait_metric(&gw, "lmgate_ship_rows_total", |v| v >= 25.0).await;
    wait_metric(&gw, "lmgate_ship_lag_bytes", |v| v == 0.0).await;
    assert_eq!(counts(&ch), (25, 25));
    let raw: u64 = clickhouse_query(&ch, "SELECT count() FROM lmgate.usage")
        .trim()
        .parse()
        .unwrap();
    assert!(raw >= 25, "{raw}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rotated_files_are_shipped_and_retention_waits_for_the_shipper() {
    let mut ch = clickhouse();
    create_schema(&ch);
    let mock = Mock::chat().await;
    let retention = "stats:\n  rotate_bytes: 4096\n  retention:\n    keep_files: 1\n";
    // Small files, one rotated sibling kept.
    let gw = Gateway::start(GatewayOpts {
        yaml: format!("{}{}{retention}", all_providers_at(mock.port), ship_yaml(&ch, "")),
        ..Default::default()
    });
    // Rounds of a flush each, so the writer rotates between them.
    let mut sent = 0;
    for _ in 0..4 {
        traffic(&gw, 8).await;
        sent += 8;
        wait_shipped(&ch, &gw, sent as u64).await;
    }
    wait_until(
        "shipped rotated files beyond keep_files deleted",
        || rotated_files(&gw.stats_path).len() <= 1,
        || format!("{:?}\n{}", rotated_files(&gw.stats_path), gw.log()),
    )
    .await;
    assert!(gw.log().contains("stats retention: deleted"), "{}", gw.log());
    let ids_before = shipped_ids(&ch);

    // Unshipped rotated files are kept beyond keep_files while ClickHouse is down.
    ch.stop();
    for _ in 0..4 {
        traffic(&gw, 8).await;
        sent += 8;
        // Records of deleted files are gone from disk: count what is left plus what was shipped.
        wait_until(
            "records written",
            || {
                gw.records()
                    .iter()
                    .filter(|r| !ids_before.contains(r["request_id"].as_str().unwrap()))
                    .count()
                    >= sent - ids_before.len()
            },
            || gw.log(),
        )
        .await;
    }
    let kept = rotated_files(&gw.stats_path);
    assert!(kept.len() >= 3, "unshipped rotated files kept: {kept:?}");

    ch.restart(clickhouse_ready);
    wait_shipped(&ch, &gw, sent as u64).await;
    wait_until(
        "shipped rotated files deleted",
        || rotated_files(&gw.stats_path).len() <= 1,
        || format!("{:?}\n{}", rotated_files(&gw.stats_path), gw.log()),
    )
    .await;
    assert_eq!(counts(&ch), (sent as u64, sent as u64));
    let on_disk = file_ids(&gw);
    assert!(on_disk.is_subset(&shipped_ids(&ch)));
}

#[tokio::test(flavor = "multi_thread")]
async fn check_compares_the_table_with_the_schema_and_names_a_missing_column() {
    let ch = clickhouse();
    create_schema(&ch);
    let dir = ConfigDir::new();
    let config = dir.config(&format!("clickhouse: {{url: 'http://127.0.0.1:{}'}}\n", ch.port));
    let out = Launch::lmgate().config(&config).arg("check").run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("matches the schema"), "{text}");

    clickhouse_query(
        &ch,
        "CREATE TABLE lmgate.usage_old (timestamp String, time DateTime MATERIALIZED parseDateTimeBestEffort(timestamp), request_id String) ENGINE = MergeTree ORDER BY (time, request_id)",
    );
    let config = dir.config(&format!(
        "clickhouse: {{url: 'http://127.0.0.1:{}', table: usage_old}}\n",
        ch.port
    ));
    let out = Launch::lmgate().config(&config).arg("check").run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("missing column `cost_micros` Nullable(UInt64)"),
        "{text}"
    );
    assert!(text.contains("engine is MergeTree"), "{text}");

    // Unreachable: fails too.
    let config = dir.config(&format!(
        "clickhouse: {{url: 'http://127.0.0.1:{}'}}\n",
        free_port()
    ));
    let out = Launch::lmgate().config(&config).arg("check").run();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("cannot query the server"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_gateway_ships_what_it_wrote_before_exiting() {
    let ch = clickhouse();
    create_schema(&ch);
    let mock = Mock::chat().await;
    // A long batch wait: only the last shipping at exit sends these records.
    let mut gw = gateway(&mock, &ch, "  batch_seconds: 600\n").await;
    traffic(&gw, 12).await;
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit().success());
    assert_eq!(counts(&ch), (12, 12));
    assert_eq!(shipped_ids(&ch), file_ids(&gw));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_upgrade_hands_shipping_to_the_new_process_without_duplicates() {
    let ch = clickhouse();
    create_schema(&ch);
    let mock = Mock::chat().await;
    let mut gw = gateway(&mock, &ch, "").await;
    traffic(&gw, 10).await;
    wait_shipped(&ch, &gw, 10).await;

    // The upgrade dance of `scripts/upgrade.sh`: the new process takes the sockets, the old
    // one drains and exits.
    let sock = gw.dir.path().join("upgrade.sock");
    let mut new = ChildGuard(Some(gw.launch().arg("--upgrade").spawn()));
    wait_until(
        "the new process listens on the upgrade socket",
        || sock.exists(),
        || gw.log(),
    )
    .await;
    let mut old = gw.child.take().unwrap();
    send_signal(old.id(), libc::SIGQUIT);
    traffic(&gw, 10).await;
    wait_until(
        "the old process exits",
        || old.try_wait().unwrap().is_some(),
        || gw.log(),
    )
    .await;
    gw.child = new.0.take();
    traffic(&gw, 10).await;
    wait_shipped(&ch, &gw, 30).await;
    wait_metric(&gw, "lmgate_ship_lag_bytes", |v| v == 0.0).await;
    assert_eq!(counts(&ch), (30, 30));
    assert_eq!(shipped_ids(&ch), file_ids(&gw));
    // Shipping started twice: the first process, then the new one after the old exited.
    assert_eq!(
        gw.log().matches("clickhouse shipping to").count(),
        2,
        "{}",
        gw.log()
    );
}
