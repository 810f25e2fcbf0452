//! A whole fleet on loopback: three real `lmgate` processes behind a real HAProxy, limits
//! shared through a real Redis, records shipped to a real ClickHouse (Debian's packages,
//! started by the harness). Clients and wrk go through the balancer; then Redis is
//! stopped and restarted, ClickHouse stopped and restarted, and one gateway killed with
//! SIGKILL and restarted while its records are unshipped. At the end ClickHouse holds
//! every record of every instance exactly once, and every answer a client saw.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// 52 bytes: reserves 13 input + 5 output tokens; the mock answers 9 + 2.
const BODY: &[u8] = br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#;
const PATH: &str = "/openai/v1/chat/completions";
/// team-a's fleet-wide budget.
const BUDGET: u64 = 2000;

fn allowlist() -> String {
    format!(
        "id,api_key,owner,added,mode,providers,models,limits\n\
         team-a,{KEY_A},alice,2026-01-01,,,,tokens_per_day={BUDGET}\n\
         team-b,{KEY_B},bob,2026-01-01,,,,\n\
         team-c,{KEY_C},carol,2026-01-01,,,,\n"
    )
}

fn instance(mock: &Mock, redis: &Engine, ch: &Engine) -> Gateway {
    Gateway::start(GatewayOpts {
        yaml: format!(
            "providers:\n{}fleet:\n  redis_url: redis://127.0.0.1:{}/0\n  instances: 3\n  sync_interval_ms: 100\n  \
             lease_seconds: 2\nclickhouse:\n  url: http://127.0.0.1:{}\n  batch_seconds: 1\n",
            provider_yaml("openai", mock.port, "openai"),
            redis.port,
            ch.port
        ),
        allowlist: allowlist(),
        ..Default::default()
    })
}

/// What the clients saw: each answer's status by its `x-lmgate-request-id`.
#[derive(Default)]
struct Seen(Mutex<BTreeMap<String, u16>>);

impl Seen {
    async fn send(&self, addr: &str, key: &str) -> u16 {
        let r = request_as(addr, key, "POST", PATH, BODY).await;
        let id = r
            .header("x-lmgate-request-id")
            .unwrap_or_else(|| panic!("an answer without a request id: {} {}", r.status, r.text()))
            .to_string();
        assert!(
            self.0.lock().unwrap().insert(id, r.status).is_none(),
            "a request id twice"
        );
        r.status
    }

    fn statuses(&self, status: u16) -> usize {
        self.0.lock().unwrap().values().filter(|&&s| s == status).count()
    }
}

/// Every record of every instance, by request id.
fn file_records(gws: &[&Gateway]) -> BTreeMap<String, serde_json::Value> {
    let mut out = BTreeMap::new();
    for gw in gws {
        for r in gw.records() {
            let id = r["request_id"].as_str().unwrap().to_string();
            assert!(out.insert(id, r).is_none(), "a request id in two records");
        }
    }
    out
}

fn metric(gw: &Gateway, name: &str) -> f64 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(gw.metrics_addr()).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// wrk through the balancer: (requests, non-2xx answers, socket errors).
fn wrk(addr: &str, key: &str, connections: u32, seconds: u32) -> (u64, u64, u64) {
    let wrk = engine_binary("wrk", "wrk");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("post.lua");
    std::fs::write(
        &script,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n\
             wrk.headers[\"Authorization\"] = \"Bearer {key}\"\n",
            std::str::from_utf8(BODY).unwrap()
        ),
    )
    .unwrap();
    let out = Command::new(wrk)
        .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s"), "-s"])
        .arg(&script)
        .arg(format!("http://{addr}{PATH}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "wrk failed:\n{text}");
    let requests = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .map(|(n, _)| n.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no request count from wrk:\n{text}"));
    let non2xx = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Non-2xx or 3xx responses:")
                .map(|n| n.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let errors = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|e| {
            e.split(',')
                .filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    (requests, non2xx, errors)
}

fn ch_ids(ch: &Engine) -> Vec<String> {
    clickhouse_query(
        ch,
        "SELECT request_id FROM lmgate.usage FINAL ORDER BY request_id FORMAT TSV",
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_behind_haproxy_keeps_one_budget_and_ships_every_record_once() {
    let mut redis = redis(true);
    let mut ch = clickhouse();
    clickhouse_schema(&ch);
    let mock = Mock::chat().await;
    let gws: Vec<Gateway> = (0..3).map(|_| instance(&mock, &redis, &ch)).collect();
    let mut gws = gws;
    let lb = haproxy(&gws.iter().map(|g| g.addr()).collect::<Vec<_>>());
    let front = lb.addr();
    let seen = Arc::new(Seen::default());

    // 1. A fleet-wide budget: 12 clients, 300 requests through the balancer.
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (seen, front) = (Arc::clone(&seen), front.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let s = seen.send(&front, KEY_A).await;
                assert!(s == 200 || s == 429, "status {s}");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let admitted = seen.statuses(200) as u64;
    assert!(admitted * 11 <= BUDGET, "overshoot: {} tokens", admitted * 11);
    // Under the budget by at most the others' unused leases (3 x 5 %) and one request.
    assert!(
        admitted * 11 >= BUDGET - 3 * 100 - 18,
        "only {} tokens admitted",
        admitted * 11
    );

    // 2. wrk through the balancer (a key without limits).
    let (requests, non2xx, errors) = wrk(&front, KEY_C, 16, 3);
    assert!(requests > 100, "wrk sent {requests}");
    assert_eq!((non2xx, errors), (0, 0), "wrk saw errors");

    // 3. Redis stopped: unlimited keys are served, the spent budget stays refused; then
    //    Redis restarts (its append-only file kept the figures).
    redis.stop();
    for _ in 0..15 {
        assert_eq!(seen.send(&front, KEY_B).await, 200);
    }
    for _ in 0..6 {
        let s = seen.send(&front, KEY_A).await;
        assert!(s == 429 || s == 503, "a spent budget with Redis down: {s}");
    }
    redis.restart(redis_ready);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // What the leases held unused before is free again; the budget still holds.
    let mut refused_in_a_row = 0;
    for _ in 0..100 {
        match seen.send(&front, KEY_A).await {
            200 => refused_in_a_row = 0,
            429 => refused_in_a_row += 1,
            s => panic!("team-a after Redis restarted: {s}"),
        }
        if refused_in_a_row == 6 {
            break;
        }
    }
    assert_eq!(refused_in_a_row, 6, "the budget never ran out again");
    let admitted = seen.statuses(200) as u64 - 15;
    assert!(
        admitted * 11 <= BUDGET,
        "overshoot after Redis restarted: {} tokens",
        admitted * 11
    );

    // 4. ClickHouse stopped while traffic goes on; the records wait in the files.
    ch.stop();
    for _ in 0..60 {
        assert_eq!(seen.send(&front, KEY_B).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let lag: f64 = gws.iter().map(|g| metric(g, "lmgate_ship_lag_bytes")).sum();
    assert!(lag > 0.0, "the shipper lag shows the outage");

    // 5. One gateway killed with SIGKILL while its records are unshipped, then restarted
    //    on the same files. (Records are on disk: the writer flushes every second.)
    let victim = &mut gws[1];
    let unshipped = victim.records().len();
    assert!(unshipped > 0);
    victim.signal(libc::SIGKILL);
    victim.wait_exit();
    victim.child = Some(victim.launch().spawn());
    victim.wait_ready();
    for _ in 0..30 {
        assert_eq!(seen.send(&front, KEY_B).await, 200);
    }

    // 6. ClickHouse back: everything arrives, once.
    ch.restart(clickhouse_ready);
    let refs: Vec<&Gateway> = gws.iter().collect();
    let start = Instant::now();
    let (files, shipped) = loop {
        let files = file_records(&refs);
        let shipped = ch_ids(&ch);
        if shipped.len() == files.len() && !files.is_empty() {
            break (files, shipped);
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "ClickHouse has {} records, the files {}",
            shipped.len(),
            files.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let shipped: BTreeSet<String> = shipped.into_iter().collect();
    let written: BTreeSet<String> = files.keys().cloned().collect();
    assert_eq!(shipped, written, "ClickHouse and the files hold the same records");
    // Every answer a client saw is there exactly once; wrk's make up the rest.
    let seen_ids: BTreeSet<String> = seen.0.lock().unwrap().keys().cloned().collect();
    assert!(seen_ids.is_subset(&shipped), "answers missing from ClickHouse");
    // wrk counts the requests it completed; the ones in flight when it stopped were
    // answered to a closed connection and recorded too (at most one per connection).
    let others = files.len() as u64 - seen_ids.len() as u64;
    assert!(
        (requests..=requests + 16).contains(&others),
        "{others} records for wrk's {requests} requests"
    );
    let distinct = clickhouse_query(
        &ch,
        "SELECT uniqExact(request_id), count() FROM lmgate.usage FINAL FORMAT TSV",
    );
    assert_eq!(distinct.trim(), format!("{0}\t{0}", files.len()));
    // The budget's spend agrees between ClickHouse and the clients.
    let tokens = clickhouse_query(
        &ch,
        "SELECT sum(input_tokens) + sum(output_tokens) FROM lmgate.usage FINAL WHERE lmgate_id = 'team-a' AND status = 200 FORMAT TSV",
    );
    assert_eq!(tokens.trim(), (admitted * 11).to_string());
}
