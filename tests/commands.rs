//! The subcommands through the real binary: `check`, `hash-key`, `healthcheck`.

mod common;

use common::*;
use std::process::ExitStatus;

/// `lmgate <args>` with `stdin` and `env`: (exit status, stdout followed by stderr).
fn run_lmgate(args: &[&str], stdin: &str, env: &[(&str, &str)]) -> (ExitStatus, String) {
    let out = Launch::lmgate()
        .args(args)
        .stdin(stdin)
        .envs(env.iter().copied())
        .run();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status, text)
}

/// `lmgate <args>` with `stdin`: (success, stdout followed by stderr).
fn lmgate(args: &[&str], stdin: &str) -> (bool, String) {
    let (status, text) = run_lmgate(args, stdin, &[]);
    (status.success(), text)
}

#[test]
fn check_prints_what_would_run_and_fails_on_bad_input() {
    let dir = ConfigDir::new();
    let cfg =
        dir.config("server: {port: 9123}\nproviders:\n  local: {upstream: 'http://127.0.0.1:8000/v1'}\n");
    let c = cfg.to_str().unwrap();
    let (ok, out) = lmgate(&["check", "--config", c], "");
    assert!(ok, "{out}");
    assert!(out.contains("0.0.0.0:9123"), "{out}");
    assert!(out.contains("2 keys"), "{out}");
    assert!(
        out.contains("/local") && out.contains("http://127.0.0.1:8000/v1"),
        "{out}"
    );
    assert!(
        out.contains("/anthropic") && out.contains("https://api.anthropic.com"),
        "{out}"
    );
    assert!(!out.contains(KEY_A), "check never prints keys");
    // `--config` may also come before the subcommand.
    assert!(lmgate(&["--config", c, "check"], "").0);

    std::fs::write(&dir.allowlist, "id,api_key,owner,added\n1,k\n").unwrap();
    let (ok, out) = lmgate(&["check", "--config", c], "");
    assert!(!ok);
    assert!(out.contains("allow.csv") && out.contains("line 2"), "{out}");
    std::fs::write(&cfg, "server: {port: x}\n").unwrap();
    let (ok, out) = lmgate(&["check", "--config", c], "");
    assert!(!ok);
    assert!(out.contains("server.port"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hash_key_output_is_accepted_by_the_gateway() {
    let (ok, line) = lmgate(&["hash-key"], &format!("{KEY_C}\n"));
    assert!(ok, "{line}");
    let line = line.trim();
    assert!(line.starts_with("sha256:") && line.len() == 71, "{line}");
    assert!(!line.contains(KEY_C));
    assert!(!lmgate(&["hash-key"], "").0, "an empty key is refused");
    assert!(!lmgate(&["hash-key"], "two keys\n").0);

    let mock = Mock::start(|_| Reply::json(200, "{}")).await;
    let gw = Gateway::start(GatewayOpts {
        yaml: all_providers_at(mock.port),
        allowlist: format!("{}team-c,{line},carol,2026-03-01\n", default_allowlist()),
        ..Default::default()
    });
    let resp = request_as(&gw.addr(), KEY_C, "GET", "/openai/v1/models", b"").await;
    assert_eq!(resp.status, 200);
    let resp = request_as(&gw.addr(), line, "GET", "/openai/v1/models", b"").await;
    assert_eq!(resp.status, 403, "the hash itself is not a key");
    // The two requests used two connections: their records may land in either order.
    let records = gw.wait_records(2);
    let r = records
        .iter()
        .find(|r| r["status"] == 200)
        .expect("a record for the accepted request");
    assert_eq!(r["lmgate_id"], "team-c");
}

#[test]
fn healthcheck_exits_zero_only_when_the_gateway_answers() {
    let gw = Gateway::start(GatewayOpts::default());
    let c = gw.config_path.to_str().unwrap();
    let (ok, out) = lmgate(&["healthcheck", "--config", c], "");
    assert!(ok, "{out}");
    let url = format!("http://127.0.0.1:{}/healthz", gw.port);
    assert!(lmgate(&["healthcheck", "--url", &url], "").0);
    let dead = format!("http://127.0.0.1:{}/healthz", free_port());
    let (ok, out) = lmgate(&["healthcheck", "--url", &dead, "--timeout", "1"], "");
    assert!(!ok);
    assert!(out.contains("healthcheck"), "{out}");
}

#[test]
fn check_ignores_lmgate_variables_outside_the_config_but_not_misspelt_keys() {
    let dir = ConfigDir::new();
    let cfg = dir.config("");
    let check_with = |var: &str, value: &str| {
        let (status, text) = run_lmgate(&["check", "--config", cfg.to_str().unwrap()], "", &[(var, value)]);
        (status.code(), text)
    };
    let (code, out) = check_with("LMGATE_HOME", "/x");
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("ignored environment variable LMGATE_HOME"), "{out}");
    let (code, out) = check_with("LMGATE_SERVER__PORTT", "1");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("environment variable LMGATE_SERVER__PORTT: server.portt: unknown field `portt`"),
        "{out}"
    );
}
