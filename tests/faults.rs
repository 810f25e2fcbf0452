//! Reliability and bad input through the real binary: request smuggling shapes, odd
//! request targets, a bad upstream certificate, resets, allow-list damage, a failing stats
//! disk, and many idle or slow clients. Each: a clean answer, the gateway stays up, and a
//! record where one is due.

mod common;

use common::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Send raw bytes, read until the gateway closes or a full response head + `content-length`
/// body arrived; returns the status (0 when the connection closed with no answer).
async fn raw(addr: &str, bytes: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let read = async {
        let mut tmp = [0u8; 8192];
        loop {
            match s.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if let Some(h) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if len.is_some_and(|l| buf.len() >= h + 4 + l) {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_and_malformed_requests_get_a_4xx_and_nothing_is_forwarded() {
    let (mock, gw) = chat_gateway().await;
    let auth = format!("Authorization: Bearer {KEY_A}\r\n");
    let big = "x".repeat(100 * 1024);
    let cases: Vec<(&str, String)> = vec![
        (
            "duplicate content-length",
            format!("POST /openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ),
        (
            "malformed chunked body",
            format!("POST /openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ),
        ("oversized header", format!("GET /openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}X-Big: {big}\r\n\r\n")),
        ("invalid header name", format!("GET /openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}Bad Header: 1\r\n\r\n")),
        ("control byte in header value", format!("GET /openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}X-A: a\x01b\r\n\r\n")),
        ("absolute-form target", format!("GET http://example.com/openai/v1/x HTTP/1.1\r\nHost: example.com\r\n{auth}\r\n")),
        ("CONNECT", format!("CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n{auth}\r\n")),
        ("dot-dot segment", format!("GET /openai/../anthropic/v1/messages HTTP/1.1\r\nHost: a\r\n{auth}\r\n")),
        ("encoded dot-dot", format!("GET /openai/v1/%2e%2e/x HTTP/1.1\r\nHost: a\r\n{auth}\r\n")),
        ("lookalike prefix", format!("GET /%6fpenai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}\r\n")),
        ("prefix with dots", format!("GET /openai../v1/x HTTP/1.1\r\nHost: a\r\n{auth}\r\n")),
        ("double slash", format!("GET //openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}\r\n")),
    ];
    let mut seen = Vec::new();
    let mut bad = Vec::new();
    for (name, req) in &cases {
        let (status, text) = raw(&gw.addr(), req.as_bytes()).await;
        if !(status == 0 || (400..500).contains(&status)) {
            bad.push(format!(
                "{name}: got {status}: {}",
                text.lines().next().unwrap_or("")
            ));
        }
        seen.push(format!("{name}: {status}"));
    }
    eprintln!("observed: {seen:#?}");
    assert!(bad.is_empty(), "expected a 4xx or a closed connection: {bad:#?}");
    assert!(
        mock.received().is_empty(),
        "something was forwarded: {:?}",
        mock.received()
    );
    // Still serving.
    let resp = request_as(&gw.addr(), KEY_A, "GET", "/openai/v1/x", b"").await;
    assert_eq!(resp.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn our_own_refusals_have_json_bodies_and_records() {
    let (_mock, gw) = chat_gateway().await;
    let auth = format!("Authorization: Bearer {KEY_A}\r\n");
    let (status, text) = raw(
        &gw.addr(),
        format!("GET /openai/./v1/x HTTP/1.1\r\nHost: a\r\n{auth}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(text.contains(r#""error":"bad_request""#), "{text}");
    let (status, _) = raw(
        &gw.addr(),
        format!("GET http://a/openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 400);
    let big = "x".repeat(70 * 1024);
    let (status, _) = raw(
        &gw.addr(),
        format!("GET /openai/v1/x HTTP/1.1\r\nHost: a\r\n{auth}X-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    // Pingora answers CONNECT with 405 itself, before any hook: no record for it.
    let (status, text) = raw(
        &gw.addr(),
        format!("CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n{auth}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 405, "{text}");
    let records = gw.wait_records(3);
    assert_eq!(records.len(), 3);
    assert!(
        records.iter().all(|r| r["error_type"] == "bad_request"),
        "{records:?}"
    );
}

/// Both framings at once: Pingora keeps Transfer-Encoding, drops Content-Length (RFC 9112
/// §6.1), forwards one unambiguous chunked body, and closes the client connection after
/// the answer, so a smuggled second request never runs.
#[tokio::test(flavor = "multi_thread")]
async fn content_length_with_transfer_encoding_cannot_smuggle() {
    let (mock, gw) = chat_gateway().await;
    let smuggled = format!(
        "POST /openai/v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {KEY_A}\r\nContent-Length: 60\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /openai/v1/smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    );
    let (status, text) = raw(&gw.addr(), smuggled.as_bytes()).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(text.matches("HTTP/1.1").count(), 1, "one answer only: {text}");
    let got = mock.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body, b"hello");
    assert!(got[0].header("content-length").is_none());
    assert!(got.iter().all(|r| !r.target.contains("smuggled")));
}

/// A TLS upstream with a self-signed certificate: the gateway must refuse it.
#[tokio::test(flavor = "multi_thread")]
async fn a_self_signed_upstream_certificate_is_refused_with_502() {
    use tokio_rustls::rustls;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let (h, s) = (Arc::clone(&handshakes), Arc::clone(&served));
    let server = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                return;
            };
            h.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(sock).await {
                    s.fetch_add(1, Ordering::SeqCst);
                    let mut buf = [0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                        .await;
                }
            });
        }
    });
    let gw = Gateway::start(GatewayOpts {
        yaml: format!("providers:\n  selfsigned:\n    upstream: https://localhost:{port}\n"),
        ..Default::default()
    });
    let resp = request_as(&gw.addr(), KEY_A, "GET", "/selfsigned/v1/x", b"").await;
    assert_eq!(resp.status, 502, "{}", resp.text());
    assert_eq!(resp.json()["error"], "upstream_connect");
    assert!(handshakes.load(Ordering::SeqCst) >= 1, "the gateway did try");
    assert_eq!(
        served.load(Ordering::SeqCst),
        0,
        "no request went over the unverified connection"
    );
    let r = &gw.wait_records(1)[0];
    assert_eq!(
        (r["status"].as_u64(), r["error_type"].as_str()),
        (Some(502), Some("upstream_connect"))
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_reset_mid_body_is_truncated() {
    let mock = Mock::start(|_| Reply {
        status: 200,
        headers: vec![
            ("content-type".into(), "application/json".into()),
            ("content-length".into(), "500".into()),
        ],
        chunked: false,
        parts: vec![Part::Bytes(chat_json().as_bytes()[..20].to_vec()), Part::Close],
        hang: false,
    })
    .await;
    let gw = Gateway::for_mock(&mock, "");
    let (status, _) = raw(
        &gw.addr(),
        format!("GET /openai/v1/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {KEY_A}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "the header was already sent");
    let r = &gw.wait_records(1)[0];
    assert_eq!(r["usage_status"], "truncated");
    assert_eq!(r["error_type"], "upstream_connect");
    assert_eq!(request(&gw.addr(), "GET", "/healthz", &[], b"").await.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn allowlist_damage_keeps_the_last_good_list_and_warns_once_per_change() {
    let (_mock, gw) = chat_gateway().await;
    let ok = |key: &'static str| {
        let addr = gw.addr();
        async move { request_as(&addr, key, "GET", "/openai/v1/x", b"").await.status }
    };
    let rejections = || gw.log().matches("allowlist reload of").count();
    let wait_rejections = |n: usize| {
        let start = Instant::now();
        while rejections() < n {
            assert!(
                start.elapsed() < DEADLINE,
                "expected {n} rejections:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Emptied.
    std::fs::write(&gw.allowlist_path, "").unwrap();
    wait_rejections(1);
    assert_eq!(ok(KEY_A).await, 200);
    // Three more polls of the same bad file: still one warning.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(rejections(), 1, "one warning per change, not per poll");
    // A bad row.
    std::fs::write(
        &gw.allowlist_path,
        format!("id,api_key,owner,added\n1,{KEY_C},,2026\n"),
    )
    .unwrap();
    wait_rejections(2);
    // Unreadable: a directory where the file was.
    std::fs::remove_file(&gw.allowlist_path).unwrap();
    std::fs::create_dir(&gw.allowlist_path).unwrap();
    wait_rejections(3);
    assert_eq!(ok(KEY_A).await, 200);
    assert_eq!(ok(KEY_C).await, 403);
    // Fixed: reloaded.
    std::fs::remove_dir(&gw.allowlist_path).unwrap();
    std::fs::write(
        &gw.allowlist_path,
        format!("id,api_key,owner,added\n3,{KEY_C},carol,2026\n"),
    )
    .unwrap();
    let start = Instant::now();
    while ok(KEY_C).await != 200 {
        assert!(start.elapsed() < DEADLINE, "fixed list never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ok(KEY_A).await, 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broken_stats_disk_keeps_records_in_memory_until_it_recovers() {
    let mock = Mock::chat().await;
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the stats directory should be: every write fails.
    let blocker = dir.path().join("stats");
    std::fs::write(&blocker, "not a directory").unwrap();
    let out = blocker.join("stats.jsonl");
    let gw = Gateway::for_mock(&mock, &format!("stats:\n  output_path: {}\n", out.display()));
    for i in 0..20 {
        let resp = request_as(&gw.addr(), KEY_A, "GET", &format!("/openai/v1/x{i}"), b"").await;
        assert_eq!(resp.status, 200, "a stats failure never fails a request");
    }
    gw.wait_log(&["unwritable"]).await;
    // The disk comes back.
    std::fs::remove_file(&blocker).unwrap();
    let records = {
        let start = Instant::now();
        loop {
            let r = read_records(&blocker);
            if r.len() >= 20 {
                break r;
            }
            assert!(start.elapsed() < DEADLINE, "backlog never written: {}", r.len());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    assert_eq!(records.len(), 20, "each record exactly once");
    let mut endpoints: Vec<_> = records
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap().to_string())
        .collect();
    endpoints.sort();
    endpoints.dedup();
    assert_eq!(endpoints.len(), 20);
    let resp = request(&gw.metrics_addr(), "GET", "/metrics", &[], b"").await;
    assert!(
        resp.text().contains("lmgate_stats_records_dropped_total 0"),
        "nothing dropped"
    );
    assert_no_keys_leaked(&gw.log_path, &blocker);
}

/// An upstream that answers as soon as it has read a request head, without reading the
/// body, as providers do for an oversized body or a bad key while a large prompt is still
/// uploading. It then holds the connection open, reading nothing, until the test ends.
async fn answers_before_the_body(status: u16, body: String) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut head = Vec::new();
            let mut tmp = [0u8; 1];
            while find(&head, b"\r\n\r\n").is_none() {
                match sock.read(&mut tmp).await {
                    Ok(1) => head.push(tmp[0]),
                    _ => break,
                }
            }
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(answer.as_bytes()).await;
            held.push(sock);
        }
    });
    (port, task)
}

/// Send a request head and `first` body bytes, read the whole answer, then close without
/// sending the rest of the body.
async fn answered_mid_upload(addr: &str, head: &str, first: &[u8]) -> Response {
    let mut c = Client::connect(addr).await;
    c.sock.write_all(head.as_bytes()).await.unwrap();
    c.sock.write_all(first).await.unwrap();
    let resp = tokio::time::timeout(DEADLINE, c.read_response("POST"))
        .await
        .expect("answered while the body was still uploading");
    drop(c);
    resp
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_413_mid_upload_is_recorded_as_upstream_http() {
    let err = r#"{"error":{"message":"Request too large","type":"invalid_request_error"}}"#;
    let (port, _upstream) = answers_before_the_body(413, err.to_string()).await;
    let gw = Gateway::start(GatewayOpts {
        yaml: all_providers_at(port),
        ..Default::default()
    });
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        4 * 1024 * 1024
    );
    let resp = answered_mid_upload(&gw.addr(), &head, &vec![b' '; 256 * 1024]).await;
    assert_eq!(resp.status, 413);
    assert_eq!(resp.body, err.as_bytes());
    let r = &gw.wait_records(1)[0];
    assert_eq!(r["status"], 413);
    assert_eq!(r["error_type"], "upstream_http", "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_complete_answer_before_the_chunked_upload_ended_is_no_failure() {
    let (port, _upstream) = answers_before_the_body(200, chat_completion(7, "early", 11, 3)).await;
    let gw = Gateway::start(GatewayOpts {
        yaml: all_providers_at(port),
        ..Default::default()
    });
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {KEY_A}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    let resp = answered_mid_upload(&gw.addr(), &head, chunk.as_bytes()).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, chat_completion(7, "early", 11, 3).as_bytes());
    let r = &gw.wait_records(1)[0];
    assert_eq!(r["status"], 200);
    assert_eq!(r["error_type"], serde_json::Value::Null, "{r}");
    assert_eq!(
        (r["input_tokens"].clone(), r["output_tokens"].clone()),
        (11.into(), 3.into())
    );
    assert_eq!(r["usage_status"], "exact");
}
