//! Limits held by a fleet: several real `lmgate` processes sharing one real Redis
//! (Debian's `redis-server`, started on loopback by the harness). A fleet-wide budget
//! holding across instances, Redis stopped and restarted (fallback, then recovery), and a
//! killed instance whose unused share comes back when its lease expires.

mod common;

use common::*;
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// `team-a` (KEY_A) limited by `limits_a`, `team-b` (KEY_B) by `limits_b`.
fn allowlist_with(limits_a: &str, limits_b: &str) -> String {
    format!(
        "id,api_key,owner,added,mode,providers,models,limits\n\
         team-a,{KEY_A},alice,2026-01-01,,,,{limits_a}\n\
         team-b,{KEY_B},bob,2026-01-01,,,,{limits_b}\n"
    )
}

fn fleet_yaml(redis: &Engine, instances: u64, extra: &str) -> String {
    format!(
        "fleet:\n  redis_url: redis://127.0.0.1:{}/0\n  instances: {instances}\n  sync_interval_ms: 100\n{extra}",
        redis.port
    )
}

fn instance(mock: &Mock, allowlist: &str, fleet: &str) -> Gateway {
    Gateway::start(GatewayOpts {
        yaml: format!(
            "providers:\n{}{fleet}",
            provider_yaml("openai", mock.port, "openai")
        ),
        allowlist: allowlist.to_string(),
        ..Default::default()
    })
}

/// The mock answers 9 prompt + 2 completion tokens; this 52-byte body reserves 13 input
/// tokens (4 bytes each) + max_tokens 5 = 18.
const BODY: &[u8] = br#"{"model":"gpt-4o-mini","max_tokens":5,"messages":[]}"#;

async fn chat(gw: &Gateway, key: &str) -> Response {
    request_as(&gw.addr(), key, "POST", "/openai/v1/chat/completions", BODY).await
}

/// Whether some instance's figure for `id`'s daily token counter in Redis shows a lease
/// of at least `granted` with at least `used` used (`granted:used:expires_ms:seq`).
fn lease_reported(redis: &Engine, id: &str, granted: u64, used: u64) -> bool {
    let keys = redis_cmd(redis, &format!("KEYS lmgate:k:{id}:tokens_per_day:*"));
    let Some(key) = keys.lines().nth(2) else {
        return false;
    };
    redis_cmd(redis, &format!("HGETALL {key}")).lines().any(|l| {
        let f: Vec<u64> = l.split(':').filter_map(|x| x.parse().ok()).collect();
        f.len() == 4 && f[0] >= granted && f[1] >= used
    })
}

/// Tokens charged to `id` in the records of every instance, and its answered requests.
fn charged(gws: &[&Gateway], id: &str) -> (u64, usize) {
    let mut tokens = 0;
    let mut ok = 0;
    for gw in gws {
        for r in gw.records() {
            if r["lmgate_id"] == id && r["status"] == 200 {
                ok += 1;
                tokens += r["input_tokens"].as_u64().unwrap() + r["output_tokens"].as_u64().unwrap();
            }
        }
    }
    (tokens, ok)
}

fn metric(gw: &Gateway, name: &str) -> u64 {
    let text = scrape(&gw.metrics_addr());
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{name} not in /metrics:\n{text}"))
}

/// `GET /metrics` on `addr`, blocking.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// As in the limits tests: run inside one UTC minute (or day) where a test counts per
/// period; not a timing assertion.
async fn away_from_a_period_end(margin: u64) {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if secs % 60 >= 60 - margin {
        tokio::time::sleep(Duration::from_secs(60 - secs % 60) + Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_wide_budget_holds_across_three_instances() {
    let redis = redis(false);
    let mock = Mock::chat().await;
    // 1,000 tokens a day for team-a across the fleet; leases of 5 % (50 tokens).
    let list = allowlist_with("tokens_per_day=1000", "");
    let fleet = fleet_yaml(&redis, 3, "");
    let gws: Vec<Arc<Gateway>> = (0..3).map(|_| Arc::new(instance(&mock, &list, &fleet))).collect();
    let mut tasks = Vec::new();
    // 12 clients, 200 requests, spread over the three instances.
    for c in 0..12usize {
        let gws = gws.clone();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..17usize {
                let gw = &gws[(c + i) % 3];
                statuses.push(chat(gw, KEY_A).await.status);
            }
            statuses
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let refs: Vec<&Gateway> = gws.iter().map(|g| g.as_ref()).collect();
    let admitted = statuses.iter().filter(|&&s| s == 200).count();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!(
        admitted + refused,
        statuses.len(),
        "only 200 and 429: {statuses:?}"
    );
    // One record per answered request (the writers flush on their own period).
    wait_until(
        "a record for every answered request",
        || charged(&refs, "team-a").1 == admitted,
        || format!("{} records, {admitted} answered", charged(&refs, "team-a").1),
    )
    .await;
    let (tokens, ok) = charged(&refs, "team-a");
    assert_eq!(tokens, 11 * ok as u64);
    // Stated bound: never over the limit (each request reserves more than it uses);
    // under it by at most what other instances hold unused (3 x 50) plus one request.
    assert!(tokens <= 1000, "overshoot: {tokens} tokens > 1000");
    assert!(
        tokens >= 1000 - 150 - 18,
        "fleet admitted only {tokens} tokens of 1000"
    );
    // Every instance served some of it, and Redis holds one figure per instance.
    for gw in &refs {
        assert!(charged(&[gw], "team-a").1 > 0, "an instance served nothing");
    }
    let keys = redis_cmd(&redis, "KEYS lmgate:k:team-a:tokens_per_day:*");
    assert!(keys.starts_with("*1\r\n"), "one counter key: {keys}");
    let key = keys.lines().nth(2).unwrap().to_string();
    assert_eq!(redis_cmd(&redis, &format!("HLEN {key}")), ":3\r\n");
    // Far below one Redis command per request, even on a budget this small.
    let commands: u64 = refs
        .iter()
        .map(|g| metric(g, "lmgate_fleet_redis_commands_total"))
        .sum();
    assert!(
        (commands as usize) < statuses.len(),
        "{commands} Redis commands for {} requests",
        statuses.len()
    );
    // Refusals say what is spent, in OpenAI's shape.
    let r = chat(&gws[0], KEY_A).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["code"], "insufficient_quota", "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_falls_back_per_instance_and_recovers_by_itself() {
    let mut redis = redis(false);
    let mock = Mock::chat().await;
    // team-a: 30 requests a minute (fallback: 10 per instance); team-b: a budget.
    let list = allowlist_with("rpm=30", "tokens_per_day=100000");
    let fleet = fleet_yaml(&redis, 3, "  lease_seconds: 2\n");
    let gw = instance(&mock, &list, &fleet);
    away_from_a_period_end(20).await;
    for key in [KEY_A, KEY_B] {
        assert_eq!(chat(&gw, key).await.status, 200);
    }
    assert_eq!(metric(&gw, "lmgate_fleet_redis_up"), 1);

    redis.stop();
    // Its lease outlives Redis for up to lease_seconds; then the fallback.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut a = Vec::new();
    for _ in 0..12 {
        a.push(chat(&gw, KEY_A).await.status);
    }
    // One request of team-a this minute before; 10 per instance in the fallback.
    assert_eq!(a.iter().filter(|&&s| s == 200).count(), 9, "{a:?}");
    assert!(a[9..].iter().all(|&s| s == 429), "{a:?}");
    let b = chat(&gw, KEY_B).await;
    assert_eq!(
        b.status,
        503,
        "budgets are refused while Redis is down: {}",
        b.text()
    );
    assert!(
        b.text().contains("shared limit store is unreachable"),
        "{}",
        b.text()
    );
    assert_eq!(b.header("retry-after"), Some("1"));
    assert_eq!(metric(&gw, "lmgate_fleet_redis_up"), 0);
    assert!(metric(&gw, "lmgate_fleet_fallbacks_total") >= 2);
    assert!(metric(&gw, "lmgate_fleet_redis_errors_total") >= 1);
    gw.wait_log(&["fleet: Redis at redis://127.0.0.1", "unreachable"])
        .await;
    // Records are written as each request's logging ends, and the gateway's worker
    // threads can end them in another order than the answers went out: find team-b's.
    let records = gw.wait_records(15);
    let refused: Vec<_> = records
        .iter()
        .filter(|r| r["error_type"] == "limits_unavailable")
        .map(|r| r["lmgate_id"].clone())
        .collect();
    assert_eq!(refused, ["team-b"], "{records:?}");

    // Redis back (empty: no persistence): the instance reports its figures again and the
    // budget is served; nothing was reset for the instance's own use.
    redis.restart(redis_ready);
    let start = Instant::now();
    loop {
        let r = chat(&gw, KEY_B).await;
        if r.status == 200 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no recovery: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gw.wait_log(&["fleet: Redis reachable again"]).await;
    assert_eq!(metric(&gw, "lmgate_fleet_redis_up"), 1);
    let keys = redis_cmd(&redis, "KEYS lmgate:k:team-b:*");
    assert!(
        keys.starts_with("*1\r\n"),
        "team-b's figure is back in Redis: {keys}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_share_returns_when_its_lease_expires() {
    let redis = redis(false);
    let mock = Mock::chat().await;
    // 400 tokens; leases of half the limit (200) so one instance holds a large share.
    let list = allowlist_with("tokens_per_day=400", "");
    let fleet = fleet_yaml(&redis, 2, "  lease_percent: 50\n  lease_seconds: 2\n");
    let mut first = instance(&mock, &list, &fleet);
    let second = instance(&mock, &list, &fleet);
    assert_eq!(chat(&first, KEY_A).await.status, 200);
    // Kill it once Redis holds its lease with its use reported: not later, since an idle
    // lease is given back after 8 ticks (0.4 s here) and waiting for its record could
    // take longer than that.
    let start = Instant::now();
    while !lease_reported(&redis, "team-a", 200, 11) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no lease reported to Redis"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.signal(libc::SIGKILL);
    first.wait_exit();
    // While the dead instance's lease lives, the other gets at most what it left.
    let mut early = 0u64;
    loop {
        let r = chat(&second, KEY_A).await;
        if r.status != 200 {
            break;
        }
        early += 11;
        assert!(early <= 400);
    }
    assert!(
        early <= 400 - 200 + 11,
        "the dead instance's lease was not respected: {early}"
    );
    // After it expires (2 s), only what the dead instance used still counts.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // The instance learns of it at its next exchange with Redis, which a refused request
    // asks for within a sync interval (100 ms here): requests paced over ~0.8 s.
    let mut late = 0u64;
    for _ in 0..40 {
        if chat(&second, KEY_A).await.status == 200 {
            late += 11;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = 11 + early + late;
    assert!(total <= 400, "overshoot: {total}");
    assert!(total >= 400 - 18, "the share did not come back: {total} of 400");
    let records: Vec<Value> = second.records();
    assert!(records.iter().any(|r| r["status"] == 429));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_password_is_read_from_its_source_and_never_shown() {
    const PASSWORD: &str = "fleet-redis-secret-0001";
    let redis = redis_with(false, Some(PASSWORD));
    let mock = Mock::chat().await;
    let list = allowlist_with("tokens_per_day=1000", "");
    let fleet = format!(
        "{}  redis_password: env:LMGATE_TEST_REDIS_PASSWORD\n",
        fleet_yaml(&redis, 1, "")
    );
    let yaml = format!(
        "providers:\n{}{fleet}",
        provider_yaml("openai", mock.port, "openai")
    );
    let good = Gateway::start(GatewayOpts {
        yaml: yaml.clone(),
        allowlist: list.clone(),
        env: vec![("LMGATE_TEST_REDIS_PASSWORD".into(), PASSWORD.into())],
        ..Default::default()
    });
    assert_eq!(chat(&good, KEY_A).await.status, 200);
    let keys = redis_cmd(&redis, &format!("AUTH {PASSWORD}\r\nKEYS lmgate:*"));
    assert!(keys.contains("lmgate:k:team-a:tokens_per_day:"), "{keys}");
    // A wrong password: Redis refuses, the budget is unavailable (503), and neither
    // password appears in the log (trace level), the metrics or the answer.
    let bad = Gateway::start(GatewayOpts {
        yaml,
        allowlist: list,
        env: vec![("LMGATE_TEST_REDIS_PASSWORD".into(), "wrong-password-0002".into())],
        ..Default::default()
    });
    let r = chat(&bad, KEY_A).await;
    assert_eq!(r.status, 503, "{}", r.text());
    bad.wait_log(&["fleet: Redis at redis://127.0.0.1", "unreachable"])
        .await;
    for gw in [&good, &bad] {
        let text = format!("{}{}{}", gw.log(), scrape(&gw.metrics_addr()), r.text());
        assert!(
            !text.contains(PASSWORD) && !text.contains("wrong-password-0002"),
            "a password leaked"
        );
    }
    // A password source that cannot be read stops the start, naming the key.
    let mut unset = Gateway::spawn(GatewayOpts {
        yaml: format!(
            "providers:\n{}{fleet}",
            provider_yaml("openai", mock.port, "openai")
        ),
        allowlist: allowlist_with("", ""),
        ..Default::default()
    });
    assert!(!unset.wait_exit().success());
    assert!(
        unset
            .log()
            .contains("fleet.redis_password: environment variable LMGATE_TEST_REDIS_PASSWORD is not set"),
        "{}",
        unset.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reaches_redis_and_says_when_it_cannot() {
    let mut redis = redis(false);
    let dir = ConfigDir::new();
    let list = dir.write("allowlist.csv", &allowlist_with("rpm=10", ""));
    let yaml = format!(
        "auth:\n  allowlist_path: {}\n{}",
        list.display(),
        fleet_yaml(&redis, 3, "")
    );
    let config = dir.write("lmgate.yaml", &yaml);
    let out = Launch::lmgate().config(&config).arg("check").run();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "fleet: Redis at redis://127.0.0.1:{}/0 ok; limits shared by 3 instances",
            redis.port
        )),
        "{text}"
    );
    redis.stop();
    let out = Launch::lmgate().config(&config).arg("check").run();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAILS: cannot reach Redis"), "{text}");
}
