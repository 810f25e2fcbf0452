//! Integration-test harness, split by role as Pingora's own `tests/utils/` is:
//!
//! - [`gateway`]: the one way to start the real `lmgate` binary ([`Launch`], which clears
//!   every inherited `LMGATE_*` variable), and [`Gateway`], a running instance on an
//!   ephemeral loopback port with a temp config, allow-list and stats directory;
//! - [`mock`]: the upstream on `127.0.0.1:0` that speaks the providers' wire formats (JSON,
//!   SSE, chunked, binary frames), and the provider bodies the tests answer with;
//! - [`client`]: a small raw HTTP/1.1 client, so tests see the exact bytes on the wire;
//! - [`engines`]: real Redis, ClickHouse and HAProxy on loopback for the fleet tests.
//!
//! This module holds what they share: the fake keys, the deadline, and byte helpers.
#![allow(dead_code, unused_imports)] // each test file uses a different part of the harness

mod client;
mod engines;
mod gateway;
mod mock;

pub use client::*;
pub use engines::*;
pub use gateway::*;
pub use mock::*;

use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Deadline for anything that could hang; only fails a hung test, never measures.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Demo keys used by the tests' allow-lists (fakes).
pub const KEY_A: &str = "sk-test-0001-aaaaaaaaaaaaAAAAAA";
pub const KEY_B: &str = "sk-test-0002-bbbbbbbbbbbbBBBBBB";
pub const KEY_C: &str = "sk-test-0003-ccccccccccccCCCCCC";

/// An allow-list with KEY_A (id `team-a`) and KEY_B (id `team-b`).
pub fn default_allowlist() -> String {
    format!("id,api_key,owner,added\nteam-a,{KEY_A},alice,2026-01-01\nteam-b,{KEY_B},bob,2026-01-02\n")
}

/// A free loopback port (bound and released; the gateway binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Where `needle` first occurs in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Poll `done` (without blocking the runtime) until it holds; past [`DEADLINE`], panic
/// with `what` and the text `context` gives then (a log, a count).
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool, context: impl Fn() -> String) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < DEADLINE, "{what}:\n{}", context());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Split an HTTP/1.1 head (without its blank line) into its first line and its headers,
/// names lower-cased, in order.
fn parse_head(head: &str) -> (&str, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let first = lines.next().unwrap_or("");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (first, headers)
}

/// The first header called `name` (lower case) in parsed headers.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A gateway key (LMGate-issued, `lmg_`), allow-listed in `sha256:` form with mode
/// `gateway` by the credential tests.
pub const GATEWAY_KEY: &str = "lmg_test0001GatewayKeyGGGGGGGGGGGGGGGGGGGG";
/// Provider credentials the gateway holds in the credential tests (fakes).
pub const OPENAI_SECRET: &str = "sk-provider-openai-secret-0001";
pub const ANTHROPIC_SECRET: &str = "sk-ant-provider-secret-0001";
pub const ANTHROPIC_SECRET_ROTATED: &str = "sk-ant-provider-secret-0002-rotated";
pub const GEMINI_SECRET: &str = "AIzaProviderGeminiSecret0001";
/// Every OAuth access token the mock token endpoints issue starts with this.
pub const TOKEN_PREFIX: &str = "ya29.lmgate-test-token-";

/// Besides the test keys, what the all-suite key scan looks for: the gateway key, the
/// provider credentials and any access token.
pub const SCANNED_SECRETS: &[&str] = &[
    GATEWAY_KEY,
    OPENAI_SECRET,
    ANTHROPIC_SECRET,
    ANTHROPIC_SECRET_ROTATED,
    GEMINI_SECRET,
    TOKEN_PREFIX,
];
