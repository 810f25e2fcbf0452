//! The optional HTTPS listener (`server.tls_port`): clients that send keys only over TLS
//! (boto3 with a Bedrock API key refuses `http://` endpoints) can talk to LMGate directly.

mod common;

use common::*;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn write_cert(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    rustls::pki_types::CertificateDer<'static>,
) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k, cert.cert.der().clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_over_the_tls_listener_are_proxied_and_recorded() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mock = Mock::start(|_| Reply::json(200, r#"{"usage":{"inputTokens":3,"outputTokens":4}}"#)).await;
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, der) = write_cert(certs.path());
    let tls_port = free_port();
    let gw = Gateway::for_mock(
        &mock,
        &format!(
            "server:\n  tls_port: {tls_port}\n  tls_cert_path: {}\n  tls_key_path: {}\n",
            cert.display(),
            key.display(),
        ),
    );
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let req = format!(
        "POST /bedrock/model/amazon.nova-lite-v1:0/converse HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY_A}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, tls.read_to_end(&mut resp)).await;
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(mock.received()[0].target, "/model/amazon.nova-lite-v1:0/converse");
    let r = &gw.wait_records(1)[0];
    assert_eq!(
        (r["input_tokens"].as_u64(), r["output_tokens"].as_u64()),
        (Some(3), Some(4))
    );
    // The plain listener still works.
    assert_eq!(request(&gw.addr(), "GET", "/healthz", &[], b"").await.status, 200);
}

#[test]
fn an_unusable_certificate_stops_the_start_with_one_line() {
    let dir = ConfigDir::new();
    let bad = dir.write("bad.pem", "not a certificate");
    let cfg = dir.config(&format!(
        "server: {{host: 127.0.0.1, port: {}, tls_port: {}, tls_cert_path: {b}, tls_key_path: {b}}}\n",
        free_port(),
        free_port(),
        b = bad.display()
    ));
    let (status, out) = run_binary(&cfg, &[]);
    assert!(!status.success());
    assert!(out.contains("tls_cert_path") && out.contains("bad.pem"), "{out}");
}
