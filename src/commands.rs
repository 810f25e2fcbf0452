//! The small subcommands: `check`, `healthcheck`, `hash-key`, `clickhouse schema`. Each
//! returns an exit code.

use crate::allowlist;
use crate::config::{Config, IGNORED_ENV_REASON};
use crate::credentials::{self, Resolution};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// How long `lmgate check` waits for a Google token.
const CHECK_TOKEN_TIMEOUT: Duration = Duration::from_secs(5);

/// `lmgate check`: validate everything a start would, print what would run (and which
/// `LMGATE_*` variables it ignored), and whether each provider credential resolves now.
pub fn check(
    config: &Path,
    env: impl IntoIterator<Item = (String, String)>,
    out: &mut dyn Write,
) -> ExitCode {
    let env: HashMap<String, String> = env.into_iter().collect();
    let cfg = match Config::load(config, env.iter().map(|(k, v)| (k.clone(), v.clone()))) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "config error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let list = match allowlist::load_allowlist(&cfg.auth.allowlist_path) {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(out, "allowlist error: {}: {e}", cfg.auth.allowlist_path.display());
            return ExitCode::FAILURE;
        }
    };
    let _ = writeln!(out, "config {} ok", cfg.file.display());
    for var in &cfg.ignored_env {
        let _ = writeln!(out, "ignored environment variable {var}: {IGNORED_ENV_REASON}");
    }
    let _ = writeln!(
        out,
        "listen {} ({} threads)",
        cfg.server.listen_addr(),
        cfg.server.threads
    );
    let _ = writeln!(
        out,
        "allowlist {}: {} keys, reloaded every {}s",
        cfg.auth.allowlist_path.display(),
        list.len(),
        cfg.auth.poll_interval.as_secs()
    );
    let _ = writeln!(
        out,
        "stats {} (flush every {}s, rotate at {} bytes)",
        cfg.stats.output_path.display(),
        cfg.stats.flush_interval.as_secs(),
        cfg.stats.rotate_bytes
    );
    let sources = crate::prices::PriceSources {
        snapshot: cfg.prices.path.clone(),
        overrides: cfg.prices.override_path.clone(),
    };
    match sources.load() {
        Ok(table) => {
            let _ = writeln!(out, "prices: {}", sources.describe(&table));
        }
        Err(e) => {
            let _ = writeln!(out, "prices error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let limited = list
        .entries()
        .filter(|e| !e.limits.key.is_empty() || !e.limits.owner.is_empty())
        .count();
    if limited > 0 {
        let _ = writeln!(out, "limits: {limited} keys with rate limits or budgets");
    }
    let _ = writeln!(out, "routes:");
    for p in &cfg.providers {
        let u = &p.upstream;
        let scheme = if u.tls { "https" } else { "http" };
        let _ = writeln!(
            out,
            "  {:<24} -> {scheme}://{}{} ({}, format {:?})",
            p.prefix, u.host_header, u.base_path, p.name, p.format
        );
    }
    let credentials_ok = check_credentials(&cfg, &env, out);
    let clickhouse_ok = check_clickhouse(&cfg, &env, out);
    let fleet_ok = check_fleet(&cfg, &env, out);
    if credentials_ok && clickhouse_ok && fleet_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// When `fleet:` is set: reach Redis and load the lease script.
fn check_fleet(cfg: &Config, env: &HashMap<String, String>, out: &mut dyn Write) -> bool {
    let Some(f) = &cfg.fleet else {
        return true;
    };
    let lookup = |var: &str| env.get(var).cloned();
    match crate::limits::fleet::probe(f, &lookup) {
        Ok(()) => {
            let _ = writeln!(
                out,
                "fleet: Redis at {} ok; limits shared by {} instances (lease {} % of a limit, {} s)",
                f.redis_url,
                f.instances,
                f.lease_percent,
                f.lease_ttl.as_secs()
            );
            true
        }
        Err(e) => {
            let _ = writeln!(out, "fleet: Redis at {} FAILS: {e}", f.redis_url);
            false
        }
    }
}

/// When `clickhouse:` is set: reach the server and compare its table with the schema file
/// (columns and types, the engine). Prints each difference; `false` on any, or when the
/// server cannot be asked.
fn check_clickhouse(cfg: &Config, env: &HashMap<String, String>, out: &mut dyn Write) -> bool {
    use crate::ship::{clickhouse::ClickHouse, schema};
    let Some(c) = &cfg.clickhouse else {
        return true;
    };
    let _ = writeln!(out, "clickhouse {} table {}.{}:", c.url, c.database, c.table);
    let lookup = |var: &str| env.get(var).cloned();
    let ch = match ClickHouse::new(c, &lookup) {
        Ok(ch) => ch,
        Err(e) => {
            let _ = writeln!(out, "  FAILS: {e}");
            return false;
        }
    };
    let want = match schema::parse_columns(schema::SCHEMA_SQL) {
        Ok(w) => w,
        Err(e) => {
            let _ = writeln!(out, "  FAILS: the built-in schema does not parse: {e}");
            return false;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(out, "  FAILS: no runtime to check with: {e}");
            return false;
        }
    };
    let (db, table) = (&c.database, &c.table);
    let asked = runtime.block_on(async {
        let columns = ch
            .query(&format!(
                "SELECT name, type FROM system.columns WHERE database = '{db}' AND table = '{table}' FORMAT TabSeparated"
            ))
            .await?;
        let engine = ch
            .query(&format!(
                "SELECT engine FROM system.tables WHERE database = '{db}' AND name = '{table}' FORMAT TabSeparated"
            ))
            .await?;
        Ok::<_, crate::ship::clickhouse::Failure>((columns, engine))
    });
    let (columns, engine) = match asked {
        Ok(a) => a,
        Err(e) => {
            let _ = writeln!(out, "  FAILS: cannot query the server: {e}");
            return false;
        }
    };
    let engine = engine.trim();
    if engine.is_empty() {
        let _ = writeln!(
            out,
            "  FAILS: table {db}.{table} does not exist (create it: lmgate clickhouse schema | clickhouse-client --multiquery)"
        );
        return false;
    }
    let mut problems = schema::differences(&want, &schema::parse_tsv_columns(&columns));
    if engine != schema::ENGINE {
        problems.push(format!("engine is {engine}, the schema says {}", schema::ENGINE));
    }
    if problems.is_empty() {
        let _ = writeln!(out, "  matches the schema ({} columns, {engine})", want.len());
        return true;
    }
    for p in &problems {
        let _ = writeln!(out, "  MISMATCH: {p}");
    }
    false
}

/// `lmgate clickhouse schema`: print the usage table's SQL.
pub fn clickhouse_schema(out: &mut dyn Write) -> ExitCode {
    match out.write_all(crate::ship::schema::SCHEMA_SQL.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Print each provider's auth mode and whether its credential resolves now (never the
/// credential). `false` when one does not.
fn check_credentials(cfg: &Config, env: &HashMap<String, String>, out: &mut dyn Write) -> bool {
    let _ = writeln!(out, "auth per provider (gateway keys):");
    let lookup = |var: &str| env.get(var).cloned();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let mut all_ok = true;
    for p in &cfg.providers {
        let mode = credentials::describe(p.credential.as_ref(), &p.upstream.host);
        if p.credential.is_none() {
            let _ = writeln!(out, "  {:<12} {mode}", p.name);
            continue;
        }
        let resolution = match &runtime {
            Ok(rt) => rt.block_on(credentials::resolve_now(p, &lookup, CHECK_TOKEN_TIMEOUT)),
            Err(e) => Resolution::Fails(format!("no runtime to check with: {e}")),
        };
        let status = match resolution {
            Resolution::Resolves(detail) => format!("resolves ({detail})"),
            Resolution::Fails(reason) => {
                all_ok = false;
                format!("DOES NOT RESOLVE: {reason}")
            }
        };
        let _ = writeln!(out, "  {:<12} {mode}: {status}", p.name);
    }
    all_ok
}

/// `lmgate healthcheck`: GET /healthz, exit 0 on a 200.
pub fn healthcheck(config: &Path, url: Option<&str>, timeout: Duration) -> ExitCode {
    let (host, port, path) = match url {
        Some(u) => match parse_http_url(u) {
            Some(t) => t,
            None => {
                eprintln!("healthcheck: `{u}` is not an http:// URL");
                return ExitCode::FAILURE;
            }
        },
        None => match Config::load(config, std::env::vars()) {
            Ok(cfg) => {
                let host = match cfg.server.host.as_str() {
                    "0.0.0.0" | "" => "127.0.0.1".to_owned(),
                    "::" | "[::]" => "::1".to_owned(),
                    h => h.to_owned(),
                };
                (host, cfg.server.port, crate::proxy::HEALTH_PATH.to_owned())
            }
            Err(e) => {
                eprintln!("healthcheck: config error: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match http_get_status(&host, port, &path, timeout) {
        Ok(200) => ExitCode::SUCCESS,
        Ok(s) => {
            eprintln!("healthcheck: {host}:{port}{path} answered {s}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("healthcheck: {host}:{port}{path}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_http_url(u: &str) -> Option<(String, u16, String)> {
    let uri: http::Uri = u.parse().ok()?;
    if uri.scheme_str() != Some("http") {
        return None;
    }
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Some((host, port, path))
}

fn http_get_status(host: &str, port: u16, path: &str, timeout: Duration) -> std::io::Result<u16> {
    use std::net::ToSocketAddrs;
    let addr = (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("no address"))?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut head[n..])?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let line = String::from_utf8_lossy(&head[..n]);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// `lmgate hash-key`: stdin -> `sha256:<hex>` line for the allow-list.
pub fn hash_key(input: &mut dyn Read, out: &mut dyn Write) -> ExitCode {
    let mut raw = String::new();
    if input.read_to_string(&mut raw).is_err() {
        eprintln!("hash-key: stdin is not UTF-8 text");
        return ExitCode::FAILURE;
    }
    let key = raw.trim();
    if key.is_empty() || key.contains(char::is_whitespace) {
        eprintln!("hash-key: give exactly one key on stdin");
        return ExitCode::FAILURE;
    }
    let _ = writeln!(out, "{}", allowlist::hashed_form(key));
    ExitCode::SUCCESS
}
