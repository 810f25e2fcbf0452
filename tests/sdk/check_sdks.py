#!/usr/bin/env python3
"""The official Python SDKs through the real LMGate binary, with only the base URL changed.

Run by scripts/sdk-check.sh (which installs the SDKs pinned in requirements.txt into
.tools/sdk-venv and builds the gateway). Everything stays on 127.0.0.1:

1. A mock upstream (stdlib http.server) speaks each provider's wire format: OpenAI Chat
   Completions and Responses (JSON, SSE), Anthropic Messages (JSON, SSE), Gemini API and
   Vertex AI generateContent (JSON) and streamGenerateContent (?alt=sse), Bedrock Converse
   (JSON) and ConverseStream (application/vnd.amazon.eventstream, CRC32-checked frames).
   Bodies come from tests/fixtures/; JSON bodies are gzipped when the SDK accepts gzip, as
   the providers do. Streams pause after their first event until the SDK has it, so a
   gateway that buffers a stream fails. It records every request it gets.
2. The gateway (target/debug/lmgate) runs on a temp config that points every provider at
   the mock, with a temp allow-list of fake keys and a temp stats file.
3. Each SDK call is made twice: once straight at the mock (the reference: what the SDK
   itself sends) and once through the gateway. The SDK must get the right content and
   usage back, and the request that reaches the mock through the gateway must be the
   reference request: same method, path and query (the prefix stripped, byte for byte),
   same body, same headers (the key header unchanged), only Host and hop-by-hop headers
   may differ.
   boto3 sends a Bedrock API key only to an https:// endpoint_url, so the Bedrock calls go
   to the gateway's own TLS listener (server.tls_port, with a throwaway certificate for
   localhost and 127.0.0.1 from a throwaway CA that boto3 trusts through AWS_CA_BUNDLE).
   The reference Bedrock calls reach the plain-HTTP mock through a small TLS relay.
4. A key that is not allow-listed gets the SDK's own 403 error and nothing reaches the mock.
4b. boto3 with a gateway key (an LMGate-issued `lmg_` key, both ways the README shows:
   AWS_BEARER_TOKEN_BEDROCK over the TLS listener, and plain HTTP with
   signature_version=UNSIGNED plus a header hook): the gateway signs each request with its
   own AWS identity (static test keys in its environment), and the mock checks that
   signature with botocore's signer and the gateway's secret (a wrong secret must fail).
5. Gateway keys (LMGate-issued, allow-listed with mode `gateway`): the same SDK calls with a
   gateway key where the SDK takes its API key. The gateway holds the provider credentials
   (OpenAI and Gemini keys from environment variables, the Anthropic key from a file, a
   Vertex AI service account whose token endpoint the mock plays, checking the RS256 JWT
   signature). The request that reaches the mock carries the provider credential in the
   provider's header, the gateway key nowhere, and is otherwise the SDK's own request.
6. SIGTERM: the gateway exits 0 and the stats file holds exactly one record per gateway
   call (a refused one included), with the exact token counts of the mock's bodies.
7. Limits (keys with a `limits` column, run before 6), with the SDKs' default retries:
   - rate limit: the openai SDK with an `rpm=1` key makes a call (its raw answer carries
     `x-ratelimit-limit-requests: 1`) and, in the same minute (the check waits for second
     :55 of a UTC minute), a second one. The gateway answers that with a 429 and
     `Retry-After` (the seconds left in the minute); the SDK waits and retries by itself,
     and the call returns normally. The key's records: 200, `rate_limited`, 200.
   - budgets: a `tokens_per_day` key per SDK (openai, anthropic, google-genai Gemini API,
     boto3 Bedrock Converse) that the first call fits and the second does not (the
     gateway reserves ceil(body bytes / 4) + the request's output cap before forwarding,
     and settles to the exact usage). The second call raises the SDK's error naming the
     spent budget (openai and anthropic RateLimitError 429, google-genai ClientError 429,
     boto3 ServiceQuotaExceededException 400), and the key has exactly one
     `budget_exceeded` record: the SDK did not retry it.

Prints one line per SDK call and ends with `N passed, M failed`; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import gzip
import http.server
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

# Fake keys, one per SDK (the allow-list id tells the records apart).
KEYS = {
    "openai": "sk-lmgate-sdk-check-openai-00000000000001",
    "anthropic": "sk-ant-lmgate-sdk-check-00000000000002",
    "gemini": "AIzaLMGateSdkCheckGemini0000000000003",
    "google": "AQ.LMGateSdkCheckVertexExpress0000004",
    "bedrock": "ABSKLMGateSdkCheckBedrockApiKey000005",
}
BAD_KEY = "sk-lmgate-sdk-check-NOT-ALLOWED-999999"
BEDROCK_MODEL = "amazon.nova-lite-v1:0"
# How long a stream waits, after its first event, for the SDK to have received it.
HOLD_SECONDS = 5.0

# Headers that may differ between a direct request and one through the gateway.
HOP_BY_HOP = {
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# Headers an SDK sets afresh on every request (compared by presence only).
PER_REQUEST = {"amz-sdk-invocation-id", "x-stainless-retry-count"}


def log(msg: str) -> None:
    print(msg, flush=True)


class GlobalTimeout(BaseException):
    """Raised by SIGALRM: the whole check ran out of time."""


# --------------------------------------------------------------------------------------
# AWS event-stream encoding (application/vnd.amazon.eventstream)
# --------------------------------------------------------------------------------------


def eventstream_message(headers: list[tuple[str, str]], payload: bytes) -> bytes:
    """One event-stream message: prelude (total length, headers length, prelude CRC32),
    headers (string-typed, type 7), payload, message CRC32 over everything before it."""
    hdr = b""
    for name, value in headers:
        n = name.encode()
        v = value.encode()
        hdr += struct.pack(">B", len(n)) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 12 + len(hdr) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hdr))
    prelude += struct.pack(">I", zlib.crc32(prelude) & 0xFFFFFFFF)
    msg = prelude + hdr + payload
    return msg + struct.pack(">I", zlib.crc32(msg) & 0xFFFFFFFF)


def bedrock_event(event_type: str, payload: dict[str, Any]) -> bytes:
    return eventstream_message(
        [
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        json.dumps(payload, separators=(",", ":")).encode(),
    )


def converse_stream_body() -> bytes:
    """What Bedrock ConverseStream sends (the same events as the Rust tests' sample,
    `p` being Bedrock's length-hiding padding)."""
    body = bedrock_event("messageStart", {"p": "abcd", "role": "assistant"})
    for text in ["Once", " upon", " a time"]:
        body += bedrock_event(
            "contentBlockDelta",
            {"contentBlockIndex": 0, "delta": {"text": text}, "p": "abcdefgh"},
        )
    body += bedrock_event("contentBlockStop", {"contentBlockIndex": 0, "p": "ab"})
    body += bedrock_event("messageStop", {"p": "abcdef", "stopReason": "end_turn"})
    body += bedrock_event(
        "metadata",
        {
            "metrics": {"latencyMs": 1180},
            "p": "abc",
            "usage": {"inputTokens": 25, "outputTokens": 48, "totalTokens": 73, "cacheReadInputTokens": 3},
        },
    )
    return body


# --------------------------------------------------------------------------------------
# Mock upstream
# --------------------------------------------------------------------------------------


@dataclass
class Received:
    method: str
    target: str  # path and query exactly as they arrived
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


class MockUpstream:
    """Answers by path with each provider's real wire format; records every request."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.lock = threading.Lock()
        # Streams pause after their first event until the SDK has it (see `stream`).
        self.release = threading.Event()
        self.held_too_long = 0
        self.gzipped = 0
        self.token_endpoint = TokenEndpoint()
        mock = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                mock.handle(self)

            do_GET = do_POST

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                # A client (the gateway) that goes away mid-answer, e.g. when killed.
                exc = sys.exc_info()[1]
                if not isinstance(exc, (ConnectionError, BrokenPipeError, TimeoutError)):
                    log(f"mock: error answering {client_address}: {short_exc(exc)}")

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="mock", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():  # shutdown() waits for a serve_forever that never ran
            self.server.shutdown()
        self.server.server_close()

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def since(self, n: int) -> list[Received]:
        with self.lock:
            return list(self.received[n:])

    @staticmethod
    def read_body(h: http.server.BaseHTTPRequestHandler) -> bytes:
        if "chunked" in (h.headers.get("Transfer-Encoding") or "").lower():
            out = b""
            while True:
                size = int(h.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += h.rfile.read(size)
                h.rfile.readline()
        n = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(n) if n else b""

    def handle(self, h: http.server.BaseHTTPRequestHandler) -> None:
        body = self.read_body(h)
        if h.path == "/token":  # the Vertex service account's token endpoint
            self.token_endpoint.answer(h, body)
            return
        req = Received(h.command, h.path, list(h.headers.items()), body)
        with self.lock:
            self.received.append(req)
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        path, _, query = h.path.partition("?")
        streamed = isinstance(doc, dict) and doc.get("stream") is True
        sse = "text/event-stream; charset=utf-8"
        if path == "/v1/chat/completions":
            if streamed:
                usage = (doc.get("stream_options") or {}).get("include_usage")
                name = "openai_chat_stream.sse" if usage else "openai_chat_stream_no_usage.sse"
                self.stream(h, sse, fixture(name), 37)
            else:
                self.full(h, 200, "application/json", fixture("openai_chat.json"))
        elif path == "/v1/responses":
            if streamed:
                self.stream(h, sse, fixture("openai_responses_stream.sse"), 37)
            else:
                self.full(h, 200, "application/json", fixture("openai_responses.json"))
        elif path == "/v1/messages":
            if streamed:
                self.stream(h, sse, fixture("anthropic_stream.sse"), 37)
            else:
                self.full(h, 200, "application/json", fixture("anthropic_message.json"))
        elif path.endswith(":streamGenerateContent"):
            if "alt=sse" in query.split("&"):
                self.stream(h, "text/event-stream", fixture("gemini_stream.sse"), 37)
            else:
                self.stream(h, "application/json; charset=UTF-8", fixture("gemini_stream_array.json"), 50)
        elif path.endswith(":generateContent"):
            self.full(h, 200, "application/json; charset=UTF-8", fixture("gemini_generate.json"))
        elif path.startswith("/model/") and path.endswith("/converse-stream"):
            self.stream(
                h,
                "application/vnd.amazon.eventstream",
                converse_stream_body(),
                29,
                extra=[("x-amzn-RequestId", "a1b2c3d4-0000-4000-8000-000000000001")],
            )
        elif path.startswith("/model/") and path.endswith("/converse"):
            self.full(
                h,
                200,
                "application/json",
                fixture("bedrock_converse.json"),
                extra=[("x-amzn-RequestId", "a1b2c3d4-0000-4000-8000-000000000002")],
            )
        else:
            self.full(h, 404, "application/json", b'{"error":{"message":"mock: no such endpoint"}}')

    def full(self, h, status: int, ctype: str, body: bytes, extra: list[tuple[str, str]] = ()) -> None:
        """A whole JSON body, gzip-compressed when the client accepts it (as the providers'
        front ends do): the gateway reads usage from a decoded copy, the SDK decodes."""
        accepts = [e.split(";")[0].strip().lower() for e in (h.headers.get("Accept-Encoding") or "").split(",")]
        gzipped = status == 200 and "gzip" in accepts
        if gzipped:
            body = gzip.compress(body)
            with self.lock:
                self.gzipped += 1
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        if gzipped:
            h.send_header("Content-Encoding", "gzip")
            h.send_header("Vary", "Accept-Encoding")
        for k, v in extra:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    def stream(self, h, ctype: str, body: bytes, size: int, extra: list[tuple[str, str]] = ()) -> None:
        """A chunked stream in `size`-byte pieces (events straddle pieces). After the first
        event the mock waits until the SDK says it has that event (`release`): a proxy that
        buffers the stream instead of passing it on is caught here."""
        first = first_event_end(ctype, body)
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        h.send_header("Transfer-Encoding", "chunked")
        h.send_header("Cache-Control", "no-cache")
        for k, v in extra:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.flush()

        def send(b: bytes) -> None:
            for p in pieces(b, size):
                h.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
                h.wfile.flush()

        send(body[:first])
        if not self.release.wait(HOLD_SECONDS):
            with self.lock:
                self.held_too_long += 1
        send(body[first:])
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


def first_event_end(ctype: str, body: bytes) -> int:
    """Where the first whole event of a streamed body ends."""
    if ctype.startswith("application/vnd.amazon.eventstream"):
        return struct.unpack(">I", body[:4])[0]
    if ctype.startswith("text/event-stream"):
        # The first empty line; lines end in CRLF, LF or CR (some fixtures use CRLF).
        i = 0
        while i < len(body):
            ends = [k for k in (body.find(b"\r", i), body.find(b"\n", i)) if k >= 0]
            if not ends:
                break
            j = min(ends)
            nxt = j + (2 if body[j : j + 2] == b"\r\n" else 1)
            if j == i:
                return nxt
            i = nxt
        return len(body)
    # A JSON array: up to the comma after the first element.
    return body.index(b"\n,") + 2


# --------------------------------------------------------------------------------------
# The gateway
# --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GatewayProcess:
    def __init__(self, binary: Path, tmp: Path, mock_port: int) -> None:
        self.binary = binary
        self.tmp = tmp
        self.mock_port = mock_port
        self.stats_path = tmp / "stats" / "stats.jsonl"
        self.log_path = tmp / "lmgate.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        # The HTTPS listener (server.tls_port): set by `start` when given a certificate.
        self.tls_port = 0
        self.metrics_port = 0
        self.tls: tuple[Path, Path, Path] | None = None  # (ca.pem, cert.pem, key.pem)

    def config(self) -> str:
        allowlist = self.tmp / "allowlist.csv"
        # Every row has all the columns (empty: all providers, all models, no limits).
        lines = ["id,api_key,owner,added,mode,providers,models,limits"]
        lines += [f"sdk-{name},{key},sdk-check,2026-11-23,passthrough,,," for name, key in KEYS.items()]
        lines += [
            f"sdk-{name}-gateway,{hashed(key)},sdk-check,2026-11-23,gateway,,," for name, key in GATEWAY_KEYS.items()
        ]
        # The keys of the limits section (7), each with its own limits.
        lines += [
            f"{kid},{key},sdk-check,2026-11-23,passthrough,,,{limits}" for kid, (key, limits) in LIMIT_KEYS.items()
        ]
        allowlist.write_text("\n".join(lines) + "\n")
        up = f"http://127.0.0.1:{self.mock_port}"
        creds = provider_credentials(self.tmp, self.mock_port)
        providers = "".join(
            f"  {p}:\n    upstream: {up}\n" + creds.get(p, "") for p in ["openai", "anthropic", "google", "gemini", "bedrock"]
        )
        # Bedrock requests with a gateway key are signed with the gateway's AWS identity.
        providers += "    credential: {aws: {region: us-east-1}}\n"
        return (
            "server:\n"
            "  host: 127.0.0.1\n"
            f"  port: {self.port}\n"
            "  threads: 2\n"
            "  drain_timeout_seconds: 10\n"
            f"  upgrade_sock: {self.tmp / 'upgrade.sock'}\n"
            f"  pid_file: {self.tmp / 'lmgate.pid'}\n"
            + (
                f"  tls_port: {self.tls_port}\n"
                f"  tls_cert_path: {self.tls[1]}\n"
                f"  tls_key_path: {self.tls[2]}\n"
                if self.tls
                else ""
            )
            + "auth:\n"
            f"  allowlist_path: {allowlist}\n"
            "  poll_interval_seconds: 1\n"
            "stats:\n"
            f"  output_path: {self.stats_path}\n"
            "  flush_interval_seconds: 1\n"
            "logging:\n"
            "  level: info\n"
            "upstream:\n"
            "  connect_timeout_seconds: 5\n"
            "  read_timeout_seconds: 30\n"
            "metrics:\n"
            f"  listen: 127.0.0.1:{self.metrics_port}\n"
            "providers:\n" + providers
        )

    def start(self, deadline: float, tls: tuple[Path, Path, Path] | None = None) -> None:
        """Start and wait until /healthz answers on the plain listener and, with `tls`
        (ca.pem, cert.pem, key.pem), on the TLS listener too (verified against ca.pem)."""
        import ssl

        self.tls = tls
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cafile=str(tls[0]))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMGATE_") and k != "RUST_LOG"}
        env.update(GATEWAY_AWS)
        env.update(PROVIDER_SECRET_ENV)
        for attempt in range(3):
            self.port = free_port()
            self.tls_port = free_port() if tls else 0
            self.metrics_port = free_port()
            while tls and self.tls_port == self.port:
                self.tls_port = free_port()
            cfg = self.tmp / "lmgate.yaml"
            cfg.write_text(self.config())
            logf = open(self.log_path, "ab")
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(cfg)],
                cwd=self.tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
            )
            logf.close()
            pending = [self.base] + ([self.tls_base] if tls else [])
            last_err = ""
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{pending[0]}/healthz", timeout=1, context=ctx) as r:
                        if r.status == 200 and r.read() == b"ok":
                            pending.pop(0)
                            if not pending:
                                return
                            continue
                except OSError as e:  # urllib.error.URLError included
                    reason = getattr(e, "reason", e)
                    if isinstance(reason, ssl.SSLCertVerificationError):
                        raise RuntimeError(f"gateway TLS listener {self.tls_base}: certificate not accepted: {reason}")
                    last_err = short_exc(reason) if isinstance(reason, BaseException) else str(reason)
                time.sleep(0.05)
            if self.proc.poll() is None:
                raise RuntimeError(f"gateway did not answer {pending[0]}/healthz in time (last error: {last_err})")
            # Exited early (a port taken between free_port and bind?): try another port.
        raise RuntimeError(f"gateway exited at start (code {self.proc.returncode})")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_base(self) -> str:
        """The TLS listener by name (the certificate names localhost and 127.0.0.1; a name
        makes the client send SNI, as a real one does)."""
        return f"https://localhost:{self.tls_port}"

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait; the exit code, or None if it had to be killed."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def records(self) -> list[dict[str, Any]]:
        if not self.stats_path.exists():
            return []
        return [json.loads(line) for line in self.stats_path.read_text().splitlines() if line.strip()]

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no gateway log)"
        return "\n".join("  gateway| " + line for line in lines[-n:])


# --------------------------------------------------------------------------------------
# TLS (boto3 sends a Bedrock API key only to an https:// endpoint)
# --------------------------------------------------------------------------------------


def make_tls_files(tmp: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1:
    (ca.pem, cert.pem, key.pem)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    import ipaddress

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lmgate sdk-check test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class TlsFront:
    """Terminates TLS on 127.0.0.1 and relays the plain bytes, untouched, to a port. Only in
    front of the mock, for the reference Bedrock calls (the mock speaks plain HTTP; the
    gateway's Bedrock calls use its own TLS listener)."""

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        import asyncio
        import ssl

        self.target_port = target_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(
            asyncio.start_server(self.relay, "127.0.0.1", 0, ssl=self.ctx)
        )
        self.port = self.server.sockets[0].getsockname()[1]
        self.thread = threading.Thread(target=self.loop.run_forever, name="tls-front", daemon=True)
        self.thread.start()

    async def relay(self, reader, writer) -> None:
        import asyncio

        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return

        async def pipe(r, w) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer), return_exceptions=True)

    def stop(self) -> None:
        def close() -> None:
            self.server.close()
            self.loop.stop()

        self.loop.call_soon_threadsafe(close)
        self.thread.join(timeout=5)


# --------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------


class CheckFailed(Exception):
    pass


def eq(what: str, got: Any, want: Any) -> None:
    if got != want:
        raise CheckFailed(f"{what}: got {got!r}, want {want!r}")


def truthy(what: str, cond: Any) -> None:
    if not cond:
        raise CheckFailed(what)


@dataclass
class Case:
    """One SDK call: `run(base_url_of, key)` makes it against a base (the mock or the
    gateway) and checks what the SDK returned."""

    name: str
    provider: str
    key_headers: list[tuple[str, str]]  # where the SDK may put the key (lower case), and how
    endpoint: str  # the SDK's path (no query) as the gateway sees it, prefix included
    target: str  # what must reach the mock: the SDK's path and query, prefix stripped
    run: Callable[[str, str], None]
    record: dict[str, Any]  # expected record fields (status 200 ones)
    errors: list[str] = field(default_factory=list)
    info: str = ""


def header_map(req: Received) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in req.headers:
        out.setdefault(k.lower(), []).append(v)
    return out


def compare_forwarded(direct: Received, via: Received) -> list[str]:
    """The request through the gateway must be the SDK's own request, unchanged."""
    errs = []
    if via.method != direct.method:
        errs.append(f"method {via.method} != SDK's {direct.method}")
    if via.target != direct.target:
        errs.append(f"upstream target {via.target!r} != SDK's {direct.target!r}")
    if via.body != direct.body:
        errs.append(f"body changed ({len(via.body)} bytes vs SDK's {len(direct.body)})")
    d, g = header_map(direct), header_map(via)
    for name in sorted(set(d) | set(g)):
        if name in HOP_BY_HOP:
            continue
        if name not in g:
            errs.append(f"header {name} dropped")
        elif name not in d:
            errs.append(f"header {name}: {g[name]!r} added")
        elif name not in PER_REQUEST and d[name] != g[name]:
            errs.append(f"header {name}: {g[name]!r} != SDK's {d[name]!r}")
    return errs


def make_cases(mock: MockUpstream) -> list[Case]:
    import anthropic
    import boto3
    import openai
    from google import genai
    from google.genai import types

    def openai_client(base: str, key: str):
        return openai.OpenAI(base_url=f"{base}/v1", api_key=key)

    def anthropic_client(base: str, key: str):
        return anthropic.Anthropic(base_url=base, api_key=key)

    def gemini_client(base: str, key: str):
        return genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))

    def vertex_client(base: str, key: str):
        return genai.Client(vertexai=True, api_key=key, http_options=types.HttpOptions(base_url=base))

    def bedrock_client(base: str, key: str):
        os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
        return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=base)

    msgs = [{"role": "user", "content": "Say hello"}]
    # Stream loops call this on each event: the mock holds the rest of a stream until the
    # first event has reached the SDK.
    got_event = mock.release.set

    # ---- OpenAI
    def chat(base: str, key: str) -> None:
        r = openai_client(base, key).chat.completions.create(model="gpt-4o", messages=msgs)
        eq("content", r.choices[0].message.content[:15], "The image shows")
        eq("model", r.model, "gpt-4o-2024-08-06")
        eq("usage", (r.usage.prompt_tokens, r.usage.completion_tokens), (1117, 46))

    def chat_stream(base: str, key: str) -> None:
        text, usage = "", None
        for chunk in openai_client(base, key).chat.completions.create(
            model="gpt-4o-mini", messages=msgs, stream=True, stream_options={"include_usage": True}
        ):
            got_event()
            for c in chunk.choices:
                text += c.delta.content or ""
            if chunk.usage is not None:
                usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        eq("streamed text", text, "Hello")
        eq("usage chunk", usage, (19, 10))

    def responses(base: str, key: str) -> None:
        r = openai_client(base, key).responses.create(model="o4-mini", input="Describe the image")
        eq("output_text", r.output_text, "The image depicts a scenic landscape with a wooden boardwalk or pathway.")
        eq("usage", (r.usage.input_tokens, r.usage.output_tokens), (328, 52))

    def responses_stream(base: str, key: str) -> None:
        deltas, final = "", None
        for ev in openai_client(base, key).responses.create(model="gpt-4.1", input="Hi", stream=True):
            got_event()
            if ev.type == "response.output_text.delta":
                deltas += ev.delta
            elif ev.type == "response.completed":
                final = ev.response
        eq("streamed delta", deltas, "Hi")
        truthy("no response.completed event", final is not None)
        eq("final text", final.output_text, "Hi there! How can I assist you today?")
        eq("usage", (final.usage.input_tokens, final.usage.output_tokens), (37, 11))

    # ---- Anthropic
    def messages(base: str, key: str) -> None:
        r = anthropic_client(base, key).messages.create(model="claude-sonnet-4-6", max_tokens=64, messages=msgs)
        eq("text", r.content[0].text[:6], "Hello!")
        eq("model", r.model, "claude-sonnet-4-5-20250929")
        u = r.usage
        eq(
            "usage",
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens),
            (2095, 503, 1800, 248),
        )

    def messages_stream(base: str, key: str) -> None:
        with anthropic_client(base, key).messages.stream(
            model="claude-sonnet-4-6", max_tokens=64, messages=msgs
        ) as s:
            text = ""
            for ev in s:
                got_event()
                if ev.type == "text":
                    text += ev.text
            final = s.get_final_message()
        eq("streamed text", text, 'Okay here is "usage": {"output_tokens": 999} ünïcödé')
        u = final.usage
        eq(
            "final usage",
            (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens),
            (472, 89, 2048, 12),
        )

    # ---- Google (Gemini API and Vertex AI express mode share the bodies)
    def generate(client_of):
        def run(base: str, key: str) -> None:
            client = client_of(base, key)  # keep a reference: a collected Client closes its transport
            r = client.models.generate_content(model="gemini-2.5-flash", contents="Explain AI")
            eq("text", r.text, "AI learns patterns from data to make predictions or decisions.")
            m = r.usage_metadata
            eq("usage", (m.prompt_token_count, m.candidates_token_count, m.thoughts_token_count), (8, 21, 140))

        return run

    def generate_stream(client_of):
        def run(base: str, key: str) -> None:
            text, last = "", None
            client = client_of(base, key)
            for chunk in client.models.generate_content_stream(
                model="gemini-2.5-flash", contents="Why is the sky blue?"
            ):
                got_event()
                text += chunk.text or ""
                last = chunk.usage_metadata
            eq("streamed text", text, "The sky is blue.")
            truthy("no usage_metadata", last is not None)
            eq("last usage", (last.prompt_token_count, last.candidates_token_count), (10, 12))

        return run

    # ---- Bedrock
    def converse(base: str, key: str) -> None:
        r = bedrock_client(base, key).converse(
            modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "A story"}]}]
        )
        eq("http status", r["ResponseMetadata"]["HTTPStatusCode"], 200)
        eq("text", r["output"]["message"]["content"][0]["text"][:17], "Here is a short s")
        eq("usage", (r["usage"]["inputTokens"], r["usage"]["outputTokens"]), (21, 39))

    def converse_stream(base: str, key: str) -> None:
        r = bedrock_client(base, key).converse_stream(
            modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "A story"}]}]
        )
        text, usage, kinds = "", None, []
        for ev in r["stream"]:
            got_event()
            kinds += list(ev)
            if "contentBlockDelta" in ev:
                text += ev["contentBlockDelta"]["delta"]["text"]
            if "metadata" in ev:
                usage = ev["metadata"]["usage"]
        eq(
            "events",
            kinds,
            ["messageStart"] + ["contentBlockDelta"] * 3 + ["contentBlockStop", "messageStop", "metadata"],
        )
        eq("streamed text", text, "Once upon a time")
        eq("usage", (usage["inputTokens"], usage["outputTokens"], usage.get("cacheReadInputTokens")), (25, 48, 3))

    def rec(model, tokens, cache, reasoning, stream):
        return {
            "model": model,
            "input_tokens": tokens[0],
            "output_tokens": tokens[1],
            "cache_read_input_tokens": cache[0],
            "cache_creation_input_tokens": cache[1],
            "reasoning_tokens": reasoning,
            "stream": stream,
        }

    def bearer(p):
        return ("authorization", f"Bearer {KEYS[p]}")

    oa = [bearer("openai")]
    # The README's table says x-api-key; anthropic 2.x sends api_key as a bearer token.
    an = [("x-api-key", KEYS["anthropic"]), bearer("anthropic")]
    ge = [("x-goog-api-key", KEYS["gemini"])]
    vx = [("x-goog-api-key", KEYS["google"])]
    br = [bearer("bedrock")]
    bm = "/model/amazon.nova-lite-v1%3A0"  # botocore percent-encodes the model id label
    gm = "/v1/models/gemini-2.5-flash"  # google-genai 3.x defaults to the v1 Gemini API
    vm = "/v1beta1/publishers/google/models/gemini-2.5-flash"
    C = Case
    return [
        C("openai chat.completions.create", "openai", oa, "/openai/v1/chat/completions", "/v1/chat/completions",
          chat, rec("gpt-4o-2024-08-06", (1117, 46), (1024, None), 0, False)),
        C("openai chat.completions.create stream=True include_usage", "openai", oa, "/openai/v1/chat/completions",
          "/v1/chat/completions", chat_stream, rec("gpt-4o-mini-2024-07-18", (19, 10), (0, None), 0, True)),
        C("openai responses.create", "openai", oa, "/openai/v1/responses", "/v1/responses",
          responses, rec("o4-mini-2025-04-16", (328, 52), (0, None), 32, False)),
        C("openai responses.create stream=True", "openai", oa, "/openai/v1/responses", "/v1/responses",
          responses_stream, rec("gpt-4.1-2025-04-14", (37, 11), (0, None), 0, True)),
        C("anthropic messages.create", "anthropic", an, "/anthropic/v1/messages", "/v1/messages",
          messages, rec("claude-sonnet-4-5-20250929", (2095, 503), (1800, 248), None, False)),
        C("anthropic messages.stream", "anthropic", an, "/anthropic/v1/messages", "/v1/messages",
          messages_stream, rec("claude-sonnet-4-5-20250929", (472, 89), (2048, 12), None, True)),
        C("gemini models.generate_content", "gemini", ge, f"/gemini{gm}:generateContent",
          f"{gm}:generateContent", generate(gemini_client),
          rec("gemini-2.5-flash", (8, 21), (4, None), 140, False)),
        C("gemini models.generate_content_stream", "gemini", ge, f"/gemini{gm}:streamGenerateContent",
          f"{gm}:streamGenerateContent?alt=sse", generate_stream(gemini_client),
          rec("gemini-2.5-flash", (10, 12), (None, None), 36, True)),
        C("vertex (express) models.generate_content", "google", vx, f"/google{vm}:generateContent",
          f"{vm}:generateContent", generate(vertex_client),
          rec("gemini-2.5-flash", (8, 21), (4, None), 140, False)),
        C("vertex (express) models.generate_content_stream", "google", vx, f"/google{vm}:streamGenerateContent",
          f"{vm}:streamGenerateContent?alt=sse", generate_stream(vertex_client),
          rec("gemini-2.5-flash", (10, 12), (None, None), 36, True)),
        C("bedrock converse", "bedrock", br, f"/bedrock{bm}/converse", f"{bm}/converse",
          converse, rec(BEDROCK_MODEL, (21, 39), (5, 2), None, False)),
        C("bedrock converse_stream", "bedrock", br, f"/bedrock{bm}/converse-stream", f"{bm}/converse-stream",
          converse_stream, rec(BEDROCK_MODEL, (25, 48), (3, None), None, True)),
    ]


@dataclass
class Negative:
    """An SDK call with a key that is not allow-listed: the SDK raises its 403 error."""

    name: str
    provider: str
    endpoint: str
    model: str | None  # the record's model (from the URL when the path names one)
    run: Callable[[str, str], None]
    errors: list[str] = field(default_factory=list)
    info: str = ""


def make_negatives() -> list[Negative]:
    import anthropic
    import boto3
    import botocore.exceptions
    import openai
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types

    def expect_raise(exc_types, check):
        def wrap(call):
            def run(base: str, key: str) -> None:
                try:
                    call(base, key)
                except exc_types as e:  # noqa: PERF203
                    check(e)
                    return
                raise CheckFailed("the SDK raised no error")

            return run

        return wrap

    def openai_403(e):
        truthy(f"not PermissionDeniedError: {type(e).__name__}", isinstance(e, openai.PermissionDeniedError))
        eq("status", e.status_code, 403)

    def anthropic_403(e):
        truthy(f"not PermissionDeniedError: {type(e).__name__}", isinstance(e, anthropic.PermissionDeniedError))
        eq("status", e.status_code, 403)

    def genai_403(e):
        eq("code", e.code, 403)

    def boto_403(e):
        eq("status", e.response["ResponseMetadata"]["HTTPStatusCode"], 403)

    @expect_raise(openai.APIStatusError, openai_403)
    def oa(base, key):
        openai.OpenAI(base_url=f"{base}/v1", api_key=key).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )

    @expect_raise(anthropic.APIStatusError, anthropic_403)
    def an(base, key):
        anthropic.Anthropic(base_url=base, api_key=key).messages.create(
            model="claude-sonnet-4-6", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
        )

    @expect_raise(genai_errors.ClientError, genai_403)
    def ge(base, key):
        client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")

    @expect_raise(genai_errors.ClientError, genai_403)
    def vx(base, key):
        client = genai.Client(vertexai=True, api_key=key, http_options=types.HttpOptions(base_url=base))
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")

    @expect_raise(botocore.exceptions.ClientError, boto_403)
    def br(base, key):
        os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
        boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=base).converse(
            modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}]
        )

    N = Negative
    return [
        N("openai chat.completions.create, key not allowed -> 403", "openai", "/openai/v1/chat/completions", None, oa),
        N("anthropic messages.create, key not allowed -> 403", "anthropic", "/anthropic/v1/messages", None, an),
        N("gemini generate_content, key not allowed -> 403", "gemini",
          "/gemini/v1/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", ge),
        N("vertex (express) generate_content, key not allowed -> 403", "google",
          "/google/v1beta1/publishers/google/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", vx),
        N("bedrock converse, key not allowed -> 403", "bedrock",
          "/bedrock/model/amazon.nova-lite-v1%3A0/converse", BEDROCK_MODEL, br),
    ]


# --------------------------------------------------------------------------------------
# Bedrock with a gateway key: the gateway signs with its own AWS identity (SigV4)
# --------------------------------------------------------------------------------------

# LMGate-issued keys (the allow-list holds their sha256: form).
GATEWAY_KEYS = {"bedrock": "lmg_LMGateSdkCheckBedrockGatewayKey00000000006"}
# The gateway's own AWS identity: static test keys in its environment. The mock checks the
# gateway's signatures with this secret.
GATEWAY_AWS = {
    "AWS_ACCESS_KEY_ID": "AKIDLMGATESDKCHECK006",
    "AWS_SECRET_ACCESS_KEY": "lmgate/sdk+check000000000000000000Secret6",
    "AWS_SESSION_TOKEN": "IQoJLMGateSdkCheckGatewaySessionToken000006",
}


def hashed(key: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def sigv4_problem(req: Received, secret: str) -> str | None:
    """Why the request's SigV4 signature does not verify with `secret`, or None if it does.
    botocore's own signer re-signs the received request (its method, raw path, the headers
    it names as signed, its body, its x-amz-date): independent of the gateway's code."""
    import re

    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    auth = req.header("authorization") or ""
    m = re.fullmatch(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
        r"SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})",
        auth,
    )
    if not m:
        return f"not a SigV4 authorization header ({auth[:24]!r}...)"
    akid, _, region, service, signed, signature = m.groups()
    names = signed.split(";")
    if any(req.header(n) is None for n in names):
        return f"a signed header is missing: {signed}"
    headers = {n: req.header(n) for n in names}
    aws_req = AWSRequest(method=req.method, url=f"http://{req.header('host')}{req.target}", data=req.body, headers=headers)
    aws_req.context["timestamp"] = req.header("x-amz-date")
    signer = SigV4Auth(Credentials(akid, secret, req.header("x-amz-security-token")), service, region)
    canonical = signer.canonical_request(aws_req)
    expected = signer.signature(signer.string_to_sign(aws_req, canonical), aws_req)
    return None if expected == signature else "signature mismatch"


def signed_request_errors(req: Received) -> list[str]:
    """A request the gateway signed: botocore verifies it with the gateway's secret (and not
    with another), only the gateway's signature and what it signs reach the upstream."""
    errs = []
    problem = sigv4_problem(req, GATEWAY_AWS["AWS_SECRET_ACCESS_KEY"])
    if problem:
        errs.append(f"SigV4 with the gateway's secret: {problem}")
    if sigv4_problem(req, GATEWAY_AWS["AWS_SECRET_ACCESS_KEY"] + "x") is None:
        errs.append("the signature also verifies with a wrong secret")
    signed = (req.header("authorization") or "").partition("SignedHeaders=")[2].partition(",")[0]
    if signed != "content-type;host;x-amz-date;x-amz-security-token":
        errs.append(f"signed headers {signed!r}")
    if req.header("x-amz-security-token") != GATEWAY_AWS["AWS_SESSION_TOKEN"]:
        errs.append("x-amz-security-token is not the gateway's session token")
    if not (req.header("authorization") or "").startswith(
        f"AWS4-HMAC-SHA256 Credential={GATEWAY_AWS['AWS_ACCESS_KEY_ID']}/"
    ):
        errs.append("not signed with the gateway's access key id")
    if any(GATEWAY_KEYS["bedrock"] in v for _, v in req.headers):
        errs.append("the gateway key reached the upstream")
    if req.header("content-length") != str(len(req.body)) or req.header("transfer-encoding"):
        errs.append("the body did not go upstream with its Content-Length")
    if req.header("x-amz-content-sha256") is not None:
        errs.append("x-amz-content-sha256 reached the upstream")
    return errs


@dataclass
class SignedCase:
    """A boto3 call with a gateway key, which the gateway signs for the upstream."""

    name: str
    endpoint: str  # as the gateway sees it
    target: str  # what must reach the mock
    run: Callable[[], None]
    record: dict[str, Any]
    errors: list[str] = field(default_factory=list)
    info: str = ""


def make_signed_cases(gw: GatewayProcess, mock: MockUpstream) -> list[SignedCase]:
    """boto3 with a gateway key, both ways the README shows: AWS_BEARER_TOKEN_BEDROCK over
    the TLS listener, and plain HTTP with signature_version=UNSIGNED and a header hook."""
    import boto3
    import botocore
    import botocore.config

    key = GATEWAY_KEYS["bedrock"]
    msgs = [{"role": "user", "content": [{"text": "A story"}]}]

    def bearer_over_tls():
        os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
        return boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=f"{gw.tls_base}/bedrock")

    def unsigned_over_http():
        os.environ.pop("AWS_BEARER_TOKEN_BEDROCK", None)
        client = boto3.client(
            "bedrock-runtime",
            region_name="us-east-1",
            endpoint_url=f"{gw.base}/bedrock",
            config=botocore.config.Config(signature_version=botocore.UNSIGNED),
        )

        def add_gateway_key(request, **_):
            request.headers["Authorization"] = f"Bearer {key}"

        client.meta.events.register("before-send.bedrock-runtime.*", add_gateway_key)
        return client

    def converse(make_client):
        def run() -> None:
            r = make_client().converse(modelId=BEDROCK_MODEL, messages=msgs)
            eq("text", r["output"]["message"]["content"][0]["text"][:17], "Here is a short s")
            eq("usage", (r["usage"]["inputTokens"], r["usage"]["outputTokens"]), (21, 39))

        return run

    def converse_stream(make_client):
        def run() -> None:
            text, usage = "", None
            for ev in make_client().converse_stream(modelId=BEDROCK_MODEL, messages=msgs)["stream"]:
                mock.release.set()
                if "contentBlockDelta" in ev:
                    text += ev["contentBlockDelta"]["delta"]["text"]
                if "metadata" in ev:
                    usage = ev["metadata"]["usage"]
            eq("streamed text", text, "Once upon a time")
            eq("usage", (usage["inputTokens"], usage["outputTokens"]), (25, 48))

        return run

    bm = "/model/amazon.nova-lite-v1%3A0"
    rec = {"model": BEDROCK_MODEL, "input_tokens": 21, "output_tokens": 39, "stream": False}
    rec_stream = {"model": BEDROCK_MODEL, "input_tokens": 25, "output_tokens": 48, "stream": True}
    S = SignedCase
    return [
        S("bedrock converse, gateway key (AWS_BEARER_TOKEN_BEDROCK, TLS) -> signed by the gateway",
          f"/bedrock{bm}/converse", f"{bm}/converse", converse(bearer_over_tls), rec),
        S("bedrock converse_stream, gateway key (AWS_BEARER_TOKEN_BEDROCK, TLS) -> signed by the gateway",
          f"/bedrock{bm}/converse-stream", f"{bm}/converse-stream", converse_stream(bearer_over_tls), rec_stream),
        S("bedrock converse, gateway key (plain HTTP, UNSIGNED + header hook) -> signed by the gateway",
          f"/bedrock{bm}/converse", f"{bm}/converse", converse(unsigned_over_http), rec),
    ]


def run_signed_cases(cases: list[SignedCase], mock: MockUpstream, gw: GatewayProcess, deadline: float) -> None:
    # The gateway loads its AWS credentials in the background after start (requests get
    # 503 until then); it logs when they are in place.
    while "aws credentials loaded" not in gw.log_path.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise RuntimeError("the gateway never logged that its AWS credentials were loaded")
        time.sleep(0.05)
    for c in cases:
        n0 = mock.count()
        mock.release.clear()
        held = mock.held_too_long
        try:
            c.run()
        except Exception as e:  # noqa: BLE001
            c.errors.append(f"through the gateway: {short_exc(e)}")
        if mock.held_too_long != held:
            c.errors.append("the first event did not reach the SDK while the mock held the stream")
        via = mock.since(n0)
        if len(via) != 1:
            c.errors.append(f"{len(via)} requests reached the mock, want 1")
            continue
        r = via[0]
        if r.target != c.target:
            c.errors.append(f"the mock got {r.method} {r.target!r}, want {c.target!r}")
        c.errors += signed_request_errors(r)
        c.info = "botocore verifies the gateway's SigV4 (a wrong secret fails)"


# --------------------------------------------------------------------------------------
# Gateway keys: the gateway holds the provider credentials
# --------------------------------------------------------------------------------------

# More LMGate-issued keys, one per SDK (allow-listed like the Bedrock one).
GATEWAY_KEYS.update(
    {
        "openai": "lmg_SdkCheckGatewayKeyOpenAi00000000000001",
        "anthropic": "lmg_SdkCheckGatewayKeyAnthropic000000002",
        "gemini": "lmg_SdkCheckGatewayKeyGemini00000000000003",
        "google": "lmg_SdkCheckGatewayKeyVertex00000000000004",
    }
)
# The provider credentials the gateway holds (fakes); Vertex gets OAuth tokens instead.
PROVIDER_SECRETS = {
    "openai": "sk-sdkcheck-provider-openai-secret-0001",
    "anthropic": "sk-ant-sdkcheck-provider-secret-0002",
    "gemini": "AIzaSdkCheckProviderGeminiSecret0003",
}
# How the gateway process gets the env: credentials.
PROVIDER_SECRET_ENV = {
    "SDK_CHECK_OPENAI_KEY": PROVIDER_SECRETS["openai"],
    "SDK_CHECK_GEMINI_KEY": PROVIDER_SECRETS["gemini"],
}
# Every access token the mock's token endpoint issues starts with this.
TOKEN_PREFIX = "ya29.sdk-check-token-"
VERTEX_PROJECT = "lmgate-sdk-check"
VERTEX_LOCATION = "us-central1"
SA_EMAIL = "lmgate-sdk-check@lmgate-sdk-check.iam.gserviceaccount.com"
KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key")

_sa_key = None


def service_account_key():
    """The Vertex service account's RSA key, made once per run."""
    global _sa_key
    if _sa_key is None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        _sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _sa_key


def provider_credentials(tmp: Path, mock_port: int) -> dict[str, str]:
    """The `credential:` YAML of each provider (indented under `providers.<name>:`), and the
    files they name: the Anthropic key file and the Vertex service-account key file, whose
    token_uri is the mock."""
    from cryptography.hazmat.primitives import serialization

    key_file = tmp / "anthropic.key"
    key_file.write_text(PROVIDER_SECRETS["anthropic"] + "\n")
    pem = service_account_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    sa = tmp / "vertex-sa.json"
    sa.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": VERTEX_PROJECT,
                "private_key_id": "sdk-check-key-1",
                "private_key": pem.decode(),
                "client_email": SA_EMAIL,
                "token_uri": f"http://127.0.0.1:{mock_port}/token",
            }
        )
    )
    return {
        "openai": "    credential: {api_key: 'env:SDK_CHECK_OPENAI_KEY'}\n",
        "anthropic": f"    credential: {{api_key: 'file:{key_file}'}}\n",
        "gemini": "    credential: {api_key: 'env:SDK_CHECK_GEMINI_KEY'}\n",
        "google": f"    credential: {{google: {{service_account: '{sa}'}}}}\n",
    }


class TokenEndpoint:
    """POST /token on the mock: Google's OAuth token endpoint for the service account. It
    verifies the RS256 JWT assertion with the account's public key (and its claims) and
    issues an hour-long token; anything else gets Google's 400 invalid_grant."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.issued = 0
        self.refused: list[str] = []

    def verify(self, host: str, body: bytes) -> str | None:
        """Why the exchange is refused, or None."""
        import base64
        import urllib.parse

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        form = urllib.parse.parse_qs(body.decode())
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return "grant_type"
        jwt = (form.get("assertion") or [""])[0]
        parts = jwt.split(".")
        if len(parts) != 3:
            return "not a JWT"

        def b64(s: str) -> bytes:
            return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

        try:
            service_account_key().public_key().verify(
                b64(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        header, claims = json.loads(b64(parts[0])), json.loads(b64(parts[1]))
        if header.get("alg") != "RS256" or header.get("kid") != "sdk-check-key-1":
            return f"JWT header {header}"
        want = {"iss": SA_EMAIL, "aud": f"http://{host}/token", "scope": "https://www.googleapis.com/auth/cloud-platform"}
        if any(claims.get(k) != v for k, v in want.items()) or claims.get("exp") != claims.get("iat", 0) + 3600:
            return f"JWT claims {claims}"
        if abs(claims["iat"] - time.time()) > 60:
            return "JWT iat is not now"
        return None

    def answer(self, h, body: bytes) -> None:
        why = self.verify(h.headers.get("Host") or "", body)
        with self.lock:
            if why:
                self.refused.append(why)
                status, doc = 400, {"error": "invalid_grant", "error_description": why}
            else:
                self.issued += 1
                status = 200
                doc = {"access_token": f"{TOKEN_PREFIX}{self.issued}", "expires_in": 3599, "token_type": "Bearer"}
        out = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(out)))
        h.end_headers()
        h.wfile.write(out)
        h.wfile.flush()


@dataclass
class GatewayCase:
    """One SDK call (a `Case`) made with a gateway key; the provider credential must reach
    the mock in `header`, its value starting with `value`."""

    name: str
    case: Case
    header: str
    value: str
    errors: list[str] = field(default_factory=list)
    info: str = ""

    @property
    def provider(self) -> str:
        return self.case.provider


def make_gateway_cases(mock: MockUpstream) -> list[GatewayCase]:
    from google import genai
    from google.genai import types
    import google.oauth2.credentials

    base = {c.name: c for c in make_cases(mock)}
    express = base["vertex (express) models.generate_content"]

    def vertex_oauth(base_url: str, key: str) -> None:
        # The gateway key where Vertex takes OAuth credentials: project paths, as with a
        # real service account, the gateway swapping the key for its own token.
        client = genai.Client(
            vertexai=True,
            project=VERTEX_PROJECT,
            location=VERTEX_LOCATION,
            credentials=google.oauth2.credentials.Credentials(token=key),
            http_options=types.HttpOptions(base_url=base_url),
        )
        r = client.models.generate_content(model="gemini-2.5-flash", contents="Explain AI")
        eq("text", r.text, "AI learns patterns from data to make predictions or decisions.")
        m = r.usage_metadata
        eq("usage", (m.prompt_token_count, m.candidates_token_count, m.thoughts_token_count), (8, 21, 140))

    vp = f"/v1beta1/projects/{VERTEX_PROJECT}/locations/{VERTEX_LOCATION}/publishers/google/models/gemini-2.5-flash"
    oauth = Case(
        "vertex models.generate_content, OAuth credentials",
        "google",
        [],
        f"/google{vp}:generateContent",
        f"{vp}:generateContent",
        vertex_oauth,
        dict(express.record),
    )
    bearer = lambda p: f"Bearer {PROVIDER_SECRETS[p]}"  # noqa: E731
    token = f"Bearer {TOKEN_PREFIX}"
    G = GatewayCase
    return [
        G("openai chat.completions.create, gateway key", base["openai chat.completions.create"], "authorization", bearer("openai")),
        G("openai chat.completions.create stream=True, gateway key",
          base["openai chat.completions.create stream=True include_usage"], "authorization", bearer("openai")),
        G("anthropic messages.create, gateway key", base["anthropic messages.create"], "x-api-key", PROVIDER_SECRETS["anthropic"]),
        G("anthropic messages.stream, gateway key", base["anthropic messages.stream"], "x-api-key", PROVIDER_SECRETS["anthropic"]),
        G("gemini models.generate_content, gateway key", base["gemini models.generate_content"],
          "x-goog-api-key", PROVIDER_SECRETS["gemini"]),
        G("gemini models.generate_content_stream, gateway key", base["gemini models.generate_content_stream"],
          "x-goog-api-key", PROVIDER_SECRETS["gemini"]),
        G("vertex models.generate_content, gateway key as api_key -> service-account token", express, "authorization", token),
        G("vertex models.generate_content_stream, gateway key as api_key -> service-account token",
          base["vertex (express) models.generate_content_stream"], "authorization", token),
        G("vertex models.generate_content, gateway key as OAuth credentials -> service-account token", oauth,
          "authorization", token),
    ]


def without_key_headers(r: Received) -> Received:
    return Received(r.method, r.target, [(k, v) for k, v in r.headers if k.lower() not in KEY_HEADERS], r.body)


def run_gateway_cases(mock: MockUpstream, gcases: list[GatewayCase], bases: Callable[[str], tuple[str, str]]) -> None:
    """Each call twice with the gateway key: straight at the mock (the SDK's own request,
    the reference) and through the gateway. What reaches the mock through the gateway is the
    reference with the key headers replaced by the provider credential alone."""
    for g in gcases:
        c, key = g.case, GATEWAY_KEYS[g.provider]
        direct_base, gateway_base = bases(g.provider)
        n0 = mock.count()
        mock.release.clear()
        try:
            c.run(direct_base, key)
        except Exception as e:  # noqa: BLE001
            g.errors.append(f"direct to the mock (reference) failed: {short_exc(e)}")
        direct = mock.since(n0)
        n1 = mock.count()
        mock.release.clear()
        held, refused = mock.held_too_long, len(mock.token_endpoint.refused)
        t = time.monotonic()
        try:
            c.run(gateway_base, key)
        except Exception as e:  # noqa: BLE001
            g.errors.append(f"through the gateway: {short_exc(e)}")
        ms = (time.monotonic() - t) * 1000
        if mock.held_too_long != held:
            g.errors.append("the first event did not reach the SDK while the mock held the stream")
        if len(mock.token_endpoint.refused) != refused:
            g.errors.append(f"token endpoint refused the gateway's JWT: {mock.token_endpoint.refused[refused:]}")
        via = mock.since(n1)
        if len(via) != 1:
            g.errors.append(f"{len(via)} requests reached the mock through the gateway, want 1")
            continue
        r = via[0]
        if r.target != c.target:
            g.errors.append(f"the mock got {r.method} {r.target!r}, want {c.target!r}")
        got = r.header(g.header) or ""
        if not got.startswith(g.value):
            g.errors.append(f"{g.header} at the mock is not the provider credential")
        others = [h for h in KEY_HEADERS if h != g.header and r.header(h) is not None]
        if others:
            g.errors.append(f"key headers besides {g.header} reached the mock: {others}")
        text = r.target + "".join(f"{k}: {v}" for k, v in r.headers) + r.body.decode(errors="replace")
        if key in text:
            g.errors.append("the gateway key reached the mock")
        if len(direct) == 1:
            g.errors += compare_forwarded(without_key_headers(direct[0]), without_key_headers(r))
        else:
            g.errors.append(f"{len(direct)} reference requests, want 1")
        shown = got if g.header != "authorization" or not got.startswith(f"Bearer {TOKEN_PREFIX}") else f"Bearer {TOKEN_PREFIX}N"
        if g.provider != "google":
            shown = "the provider key"
        g.info = f"{g.header}: {shown}, gateway key gone, {ms:.0f} ms"


def check_gateway_records(gcases: list[GatewayCase], records: list[dict], mismatch) -> None:
    """One record per gateway-key call, with the gateway key's id and exact usage."""
    for g in gcases:
        key = GATEWAY_KEYS[g.provider]
        want = dict(
            g.case.record,
            provider=g.provider,
            endpoint=g.case.endpoint,
            status=200,
            lmgate_id=f"sdk-{g.provider}-gateway",
            masked_key=key[-6:],
            error_type=None,
            usage_status="exact",
        )
        got = [
            r
            for r in records
            if r.get("lmgate_id") == f"sdk-{g.provider}-gateway"
            and r.get("endpoint") == g.case.endpoint
            and r.get("stream") == g.case.record["stream"]
        ]
        error = mismatch(got, want, "matching records")
        if error:
            g.errors.append(error)


# --------------------------------------------------------------------------------------
# Limits: a rate limit the SDK waits out, a spent budget it reports without retrying
# --------------------------------------------------------------------------------------

# The budget calls cap their output at BUDGET_MAX_OUT tokens. Before forwarding one, the
# gateway reserves ceil(body bytes / 4) input tokens + BUDGET_MAX_OUT output tokens; after
# the answer it settles to the exact usage (every input token, cached ones included, and
# every output token, reasoning included). With the SDKs' bodies and the mock's fixtures:
#
#   call (fixture)                                 body    reserved    usage once answered
#   openai chat (openai_chat.json)                  86 B   22 + 100    1117 in + 46 out = 1163
#   anthropic messages (anthropic_message.json)     97 B   25 + 100    2095 in + 1800 cache read
#                                                                      + 248 cache write + 503 out = 4646
#   gemini generate_content (gemini_generate.json) 113 B   29 + 100    8 in + 21 out + 140 thoughts = 169
#   bedrock converse (bedrock_converse.json)       105 B   27 + 100    21 in + 5 cache read
#                                                                      + 2 cache write + 39 out = 67
#
# tokens_per_day = BUDGET_MAX_OUT + 64 = 164: the first call (reserving at most 164 for any
# body up to 256 bytes) fits; the second needs at least 67 used + 100 > 164 and is refused.
# The check recomputes this from the body that reached the mock and prints it.
BUDGET_MAX_OUT = 100
BUDGET_TOKENS = BUDGET_MAX_OUT + 64
# Allow-list id -> (key, limits column).
LIMIT_KEYS = {
    "sdk-limits-rpm": ("sk-lmgate-sdk-check-limits-rpm-000000000007", "rpm=1"),
    "sdk-budget-openai": ("sk-lmgate-sdk-check-budget-openai-00000008", f"tokens_per_day={BUDGET_TOKENS}"),
    "sdk-budget-anthropic": ("sk-ant-lmgate-sdk-check-budget-000000009", f"tokens_per_day={BUDGET_TOKENS}"),
    "sdk-budget-gemini": ("AIzaLMGateSdkCheckBudgetGemini000000010", f"tokens_per_day={BUDGET_TOKENS}"),
    "sdk-budget-bedrock": ("ABSKLMGateSdkCheckBudgetBedrock00000011", f"tokens_per_day={BUDGET_TOKENS}"),
}


@dataclass
class LimitCase:
    """SDK calls with a limited key (allow-list id `lmgate_id`): `run(gateway base, key)`
    makes them, checks what the SDK returned and raised, and says what it saw. Then exactly
    `upstream` requests must have reached the mock, and the key's records, in order, must
    have the fields of `records`."""

    name: str
    provider: str
    lmgate_id: str
    run: Callable[[str, str], str]
    upstream: int
    records: list[dict[str, Any]]
    errors: list[str] = field(default_factory=list)
    info: str = ""

    @property
    def key(self) -> str:
        return LIMIT_KEYS[self.lmgate_id][0]


def wait_for_minute_end(deadline: float) -> None:
    """Sleep until the UTC second of the minute is 55 to 57 (from 58 on, until the next
    minute's 55), so that a call made now is refused by an exhausted per-minute limit for at
    most a few seconds, and still in the same minute as the one just before it."""
    s = time.time() % 60
    wait = 55 - s if s < 55 else (115 - s if s >= 58 else 0.0)
    if time.monotonic() + wait + 20 > deadline:
        raise CheckFailed(f"not enough time left to wait {wait:.0f} s for second :55 (raise --timeout)")
    if wait > 1:
        log(f"rate-limit check: waiting {wait:.0f} s for second :55 of the UTC minute")
    time.sleep(wait)


def wait_past_midnight() -> None:
    """A daily budget starts afresh at 00:00 UTC: keep the two budget calls in one day."""
    left = 86_400 - time.time() % 86_400
    if left < 15:
        time.sleep(left + 0.5)


def make_limit_cases(mock: MockUpstream, deadline: float) -> list[LimitCase]:
    import anthropic
    import boto3
    import botocore.exceptions
    import openai
    from google import genai
    from google.genai import errors as genai_errors
    from google.genai import types

    msgs = [{"role": "user", "content": "Say hello"}]

    # ---- The rate limit (rpm=1), with the openai SDK's default retries.
    def rpm(base: str, key: str) -> str:
        seen: list[tuple[int, str | None, float]] = []  # every response the SDK got

        def on_response(r) -> None:
            seen.append((r.status_code, r.headers.get("retry-after"), time.time()))

        # The SDK's own httpx client (its defaults), only watched: the SDK hides a retried 429.
        client = openai.OpenAI(
            base_url=f"{base}/v1",
            api_key=key,
            http_client=openai.DefaultHttpxClient(event_hooks={"response": [on_response]}),
        )
        n0 = mock.count()
        wait_for_minute_end(deadline)
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=msgs)
        eq("first answer's x-ratelimit-limit-requests", raw.headers.get("x-ratelimit-limit-requests"), "1")
        eq("first answer's x-ratelimit-remaining-requests", raw.headers.get("x-ratelimit-remaining-requests"), "0")
        r = raw.parse()
        eq("first usage", (r.usage.prompt_tokens, r.usage.completion_tokens), (1117, 46))
        t = time.monotonic()
        try:
            r = client.chat.completions.create(model="gpt-4o", messages=msgs)
        except openai.APIStatusError as e:
            raise CheckFailed(f"the second call raised instead of being retried: {short_exc(e)}") from None
        waited = time.monotonic() - t
        eq("second content", r.choices[0].message.content[:15], "The image shows")
        eq("second usage", (r.usage.prompt_tokens, r.usage.completion_tokens), (1117, 46))
        eq("statuses the SDK got", [s for s, _, _ in seen], [200, 429, 200])
        _, retry_after, at = seen[1]
        truthy("the 429 has no Retry-After", retry_after is not None and retry_after.isdigit())
        ra = int(retry_after)
        left = 60 - at % 60
        # The gateway counts whole seconds to the end of the minute, so its retry lands in the next.
        truthy(f"Retry-After: {ra} at second :{at % 60:.1f}, want the {left:.1f} s left in the minute", 0 <= ra - left < 2)
        truthy(f"the SDK retried after {waited:.1f} s, before Retry-After: {ra}", waited >= ra - 0.1)
        via = mock.since(n0)
        retries = [q.header("x-stainless-retry-count") for q in via]
        eq("x-stainless-retry-count of the requests that reached the mock", retries, ["0", "1"])
        return (
            f"x-ratelimit-limit-requests: 1; at :{at % 60:02.0f} 429 Retry-After: {ra}, "
            f"the SDK waited {waited:.1f} s and its retry (x-stainless-retry-count: 1) got 200"
        )

    # ---- Budgets (tokens_per_day), each SDK with its own key and default retries.
    def first_fits(n0: int, used: int) -> str:
        """The budget's premise, from the body that reached the mock (see BUDGET_TOKENS)."""
        via = mock.since(n0)
        if len(via) != 1:
            raise CheckFailed(f"{len(via)} requests reached the mock on the first call, want 1")
        size = len(via[0].body)
        est = -(-size // 4) + BUDGET_MAX_OUT
        truthy(f"premise: the first call reserves {est}, over tokens_per_day={BUDGET_TOKENS}", est <= BUDGET_TOKENS)
        truthy(f"premise: {used} used + {est} fits tokens_per_day={BUDGET_TOKENS}", used + est > BUDGET_TOKENS)
        return (
            f"tokens_per_day={BUDGET_TOKENS}: 1st reserves {est - BUDGET_MAX_OUT}+{BUDGET_MAX_OUT} ({size} B body), "
            f"uses {used}; 2nd needs {used}+{est}"
        )

    def refused(call: Callable[[], Any], exc_type) -> Any:
        try:
            call()
        except exc_type as e:
            return e
        raise CheckFailed("the second call went through: the budget did not refuse it")

    def says_budget(message: Any) -> None:
        truthy(f"message without 'budget exhausted': {str(message)[:200]!r}", "budget exhausted" in str(message))

    def openai_budget(base: str, key: str) -> str:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key)

        def call():
            return client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=BUDGET_MAX_OUT)

        n0 = mock.count()
        r = call()
        eq("first usage", (r.usage.prompt_tokens, r.usage.completion_tokens), (1117, 46))
        info = first_fits(n0, 1117 + 46)
        e = refused(call, openai.APIStatusError)
        truthy(f"{type(e).__name__}, want RateLimitError", isinstance(e, openai.RateLimitError))
        eq("status", e.status_code, 429)
        eq("code", e.code, "insufficient_quota")
        eq("x-should-retry", e.response.headers.get("x-should-retry"), "false")
        says_budget(e.message)
        return f"{info} -> RateLimitError 429 insufficient_quota, x-should-retry: false"

    def anthropic_budget(base: str, key: str) -> str:
        client = anthropic.Anthropic(base_url=base, api_key=key)

        def call():
            return client.messages.create(model="claude-sonnet-4-6", max_tokens=BUDGET_MAX_OUT, messages=msgs)

        n0 = mock.count()
        u = call().usage
        got = (u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens)
        eq("first usage", got, (2095, 503, 1800, 248))
        info = first_fits(n0, sum(got))
        e = refused(call, anthropic.APIStatusError)
        truthy(f"{type(e).__name__}, want RateLimitError", isinstance(e, anthropic.RateLimitError))
        eq("status", e.status_code, 429)
        eq("x-should-retry", e.response.headers.get("x-should-retry"), "false")
        says_budget(e.message)
        return f"{info} -> RateLimitError 429, x-should-retry: false"

    def gemini_budget(base: str, key: str) -> str:
        client = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))

        def call():
            return client.models.generate_content(
                model="gemini-2.5-flash",
                contents="Explain AI",
                config=types.GenerateContentConfig(max_output_tokens=BUDGET_MAX_OUT),
            )

        n0 = mock.count()
        m = call().usage_metadata
        got = (m.prompt_token_count, m.candidates_token_count, m.thoughts_token_count)
        eq("first usage", got, (8, 21, 140))
        info = first_fits(n0, sum(got))
        e = refused(call, genai_errors.APIError)
        truthy(f"{type(e).__name__}, want ClientError", isinstance(e, genai_errors.ClientError))
        eq("code", e.code, 429)
        eq("status", e.status, "RESOURCE_EXHAUSTED")
        says_budget(e.message)
        return f"{info} -> ClientError 429 RESOURCE_EXHAUSTED"

    def bedrock_budget(base: str, key: str) -> str:
        os.environ["AWS_BEARER_TOKEN_BEDROCK"] = key
        client = boto3.client("bedrock-runtime", region_name="us-east-1", endpoint_url=base)

        def call():
            return client.converse(
                modelId=BEDROCK_MODEL,
                messages=[{"role": "user", "content": [{"text": "A story"}]}],
                inferenceConfig={"maxTokens": BUDGET_MAX_OUT},
            )

        n0 = mock.count()
        u = call()["usage"]
        got = (u["inputTokens"], u["outputTokens"], u.get("cacheReadInputTokens"), u.get("cacheWriteInputTokens"))
        eq("first usage", got, (21, 39, 5, 2))
        info = first_fits(n0, sum(got))
        e = refused(call, botocore.exceptions.ClientError)
        eq("error code", e.response["Error"]["Code"], "ServiceQuotaExceededException")
        eq("status", e.response["ResponseMetadata"]["HTTPStatusCode"], 400)
        eq("botocore's RetryAttempts", e.response["ResponseMetadata"].get("RetryAttempts"), 0)
        says_budget(e.response["Error"].get("Message"))
        return f"{info} -> ClientError 400 ServiceQuotaExceededException"

    def ok(model: str, tokens: tuple[int, int]) -> dict[str, Any]:
        return {
            "status": 200,
            "error_type": None,
            "model": model,
            "input_tokens": tokens[0],
            "output_tokens": tokens[1],
            "usage_status": "exact",
            "cost_status": "exact",
        }

    def refusal(status: int, kind: str) -> dict[str, Any]:
        return {"status": status, "error_type": kind, "input_tokens": None, "output_tokens": None, "cost_micros": None}

    chat = ok("gpt-4o-2024-08-06", (1117, 46))
    L = LimitCase
    return [
        L("openai chat.completions, budget (tokens_per_day) -> RateLimitError, not retried", "openai",
          "sdk-budget-openai", openai_budget, 1, [chat, refusal(429, "budget_exceeded")]),
        L("anthropic messages.create, budget (tokens_per_day) -> RateLimitError, not retried", "anthropic",
          "sdk-budget-anthropic", anthropic_budget, 1,
          [ok("claude-sonnet-4-5-20250929", (2095, 503)), refusal(429, "budget_exceeded")]),
        L("gemini generate_content, budget (tokens_per_day) -> ClientError 429, not retried", "gemini",
          "sdk-budget-gemini", gemini_budget, 1, [ok("gemini-2.5-flash", (8, 21)), refusal(429, "budget_exceeded")]),
        L("bedrock converse, budget (tokens_per_day) -> ServiceQuotaExceededException, not retried", "bedrock",
          "sdk-budget-bedrock", bedrock_budget, 1, [ok(BEDROCK_MODEL, (21, 39)), refusal(400, "budget_exceeded")]),
        L("openai chat.completions, rate limit (rpm=1) -> 429 Retry-After, the SDK retries and succeeds", "openai",
          "sdk-limits-rpm", rpm, 2, [chat, refusal(429, "rate_limited"), chat]),
    ]


def run_limit_cases(mock: MockUpstream, lcases: list[LimitCase], gateway_base: Callable[[str], str]) -> None:
    wait_past_midnight()
    for c in lcases:
        n0 = mock.count()
        try:
            c.info = c.run(gateway_base(c.provider), c.key)
        except Exception as e:  # noqa: BLE001
            c.errors.append(short_exc(e))
        reached = len(mock.since(n0))
        if reached != c.upstream:
            c.errors.append(f"{reached} requests reached the mock, want {c.upstream}")


def check_limit_records(lcases: list[LimitCase], records: list[dict], mismatch) -> None:
    """The key's records in order: answered calls exact (usage and cost), each refusal
    recorded once with its error_type; a budget refusal once means the SDK did not retry."""
    for c in lcases:
        got = [r for r in records if r.get("lmgate_id") == c.lmgate_id]
        budget = sum(r.get("error_type") == "budget_exceeded" for r in got)
        if any(w["error_type"] == "budget_exceeded" for w in c.records) and budget != 1:
            c.errors.append(
                f"{budget} budget_exceeded records: the SDK made {budget} attempts at the refused call, want 1"
            )
        summary = [(r.get("status"), r.get("error_type")) for r in got]
        want = [(w["status"], w["error_type"]) for w in c.records]
        if summary != want:
            c.errors.append(f"records (status, error_type) {summary}, want {want}")
            continue
        for i, (r, w) in enumerate(zip(got, c.records)):
            error = mismatch([r], dict(w, provider=c.provider, masked_key=c.key[-6:]), "records")
            if error:
                c.errors.append(f"record {i + 1}: {error}")
            elif w["status"] == 200 and not (isinstance(r.get("cost_micros"), int) and r["cost_micros"] > 0):
                c.errors.append(f"record {i + 1}: cost_micros {r.get('cost_micros')!r}")
        if not c.errors:
            costs = [r["cost_micros"] for r in got if r.get("cost_micros") is not None]
            c.info += "; records " + " ".join(
                f"{s}" + (f"/{k}" if k else "") for s, k in summary
            ) + f", cost_micros {costs} exact"


def short_exc(e: BaseException) -> str:
    s = f"{type(e).__name__}: {e}"
    return s if len(s) < 400 else s[:400] + "..."


def hermetic_env() -> None:
    """Nothing from the caller's environment may steer the SDKs (real keys, AWS profiles,
    Google projects, proxies), and boto3 must not look for EC2 instance credentials."""
    for k in list(os.environ):
        if k.startswith(("OPENAI_", "ANTHROPIC_", "GOOGLE_", "GEMINI_", "AWS_", "VERTEX")) or k.lower() in (
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ):
            del os.environ[k]
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull


def sdk_versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ["openai", "anthropic", "google-genai", "boto3", "botocore"])


def check_botocore_bearer() -> None:
    """Bedrock API keys need a botocore that reads AWS_BEARER_TOKEN_BEDROCK and whose
    bedrock-runtime model allows bearer auth."""
    import botocore
    import botocore.session
    import botocore.utils

    if not hasattr(botocore.utils, "get_token_from_environment"):
        raise RuntimeError(f"botocore {botocore.__version__} does not support Bedrock API keys (AWS_BEARER_TOKEN_BEDROCK)")
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    auth = model.metadata.get("auth") or []
    if "smithy.api#httpBearerAuth" not in auth:
        raise RuntimeError(f"botocore {botocore.__version__}: bedrock-runtime does not allow bearer auth ({auth})")


def note_bedrock_plain_http() -> None:
    """Not counted: the README's plain http:// endpoint_url for Bedrock. botocore refuses to
    send a bearer token (Bedrock API key) to a non-https endpoint, before any I/O. Probed
    against a closed port so that, should botocore ever allow it, nothing is recorded."""
    import boto3
    import botocore.config
    import botocore.exceptions

    endpoint = f"http://127.0.0.1:{free_port()}/bedrock"
    os.environ["AWS_BEARER_TOKEN_BEDROCK"] = KEYS["bedrock"]
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=1),
    )
    try:
        client.converse(modelId=BEDROCK_MODEL, messages=[{"role": "user", "content": [{"text": "hi"}]}])
    except botocore.exceptions.InvalidEndpointConfigurationError as e:
        log(f"note: boto3 with a Bedrock API key and endpoint_url=http://...: {e} (so Bedrock is checked through TLS)")
    except Exception as e:  # noqa: BLE001
        log(f"note: boto3 now sends a Bedrock API key to a plain http:// endpoint_url ({short_exc(e)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateway", default=str(ROOT / "target" / "debug" / "lmgate"), help="the lmgate binary")
    ap.add_argument("--timeout", type=float, default=120, help="global time limit, seconds")
    args = ap.parse_args()

    started = time.monotonic()
    deadline = started + args.timeout

    def on_alarm(signum, frame):
        raise GlobalTimeout(f"the check took longer than {args.timeout:.0f} s")

    def on_term(signum, frame):
        raise GlobalTimeout(f"stopped by signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(args.timeout))
    # SIGTERM/SIGINT (a CI runner, `timeout`, Ctrl-C): clean up as on a timeout.
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)

    hermetic_env()
    results: list[tuple[str, list[str], str]] = []  # name, errors, info
    fatal: list[str] = []
    mock = MockUpstream()
    tmpdir = tempfile.TemporaryDirectory(prefix="lmgate-sdk-")
    tmp = Path(tmpdir.name)
    gw = GatewayProcess(Path(args.gateway).resolve(), tmp, mock.port)
    cases: list[Case] = []
    negatives: list[Negative] = []
    signed_cases: list[SignedCase] = []
    gateway_cases: list[GatewayCase] = []
    limit_cases: list[LimitCase] = []
    fronts: list[TlsFront] = []
    try:
        binary = gw.binary
        if not binary.is_file():
            raise RuntimeError(f"no gateway binary at {binary} (scripts/dev build)")
        log(f"SDKs: {sdk_versions()}")
        check_botocore_bearer()
        import anthropic, boto3, openai  # noqa: E401,F401  (import time is most of the run)
        from google import genai  # noqa: F401

        log(f"SDKs imported in {time.monotonic() - started:.1f} s")
        mock.start()
        ca, cert, key = make_tls_files(tmp)
        gw.start(deadline, tls=(ca, cert, key))
        mock_tls = TlsFront(mock.port, cert, key)
        fronts.append(mock_tls)
        # botocore's own setting for a private CA: the client code stays as in the README.
        os.environ["AWS_CA_BUNDLE"] = str(ca)
        log(
            f"mock upstream on 127.0.0.1:{mock.port} (TLS relay for the reference :{mock_tls.port}), "
            f"gateway on 127.0.0.1:{gw.port} (own TLS listener {gw.tls_base})"
        )
        prefix_of = {"openai": "/openai", "anthropic": "/anthropic", "gemini": "/gemini", "google": "/google", "bedrock": "/bedrock"}

        def bases(provider: str) -> tuple[str, str]:
            """(straight at the mock, through the gateway) for one provider's SDK."""
            if provider == "bedrock":
                return f"https://127.0.0.1:{mock_tls.port}", f"{gw.tls_base}/bedrock"
            return f"http://127.0.0.1:{mock.port}", gw.base + prefix_of[provider]

        log(f"gateway ready at {time.monotonic() - started:.1f} s")
        note_bedrock_plain_http()

        cases = make_cases(mock)
        for c in cases:
            key = KEYS[c.provider]
            # 1. Reference: the same call straight at the mock.
            n0 = mock.count()
            direct_base, gateway_base = bases(c.provider)
            mock.release.clear()
            held = mock.held_too_long
            try:
                c.run(direct_base, key)
            except Exception as e:  # noqa: BLE001
                c.errors.append(f"direct to the mock (reference) failed: {short_exc(e)}")
            if mock.held_too_long != held:
                c.errors.append("direct to the mock (reference): the SDK did not get the first event while the stream was held")
            direct = mock.since(n0)
            # 2. Through the gateway: only the base URL differs.
            n1 = mock.count()
            mock.release.clear()
            held, gz = mock.held_too_long, mock.gzipped
            t = time.monotonic()
            try:
                c.run(gateway_base, key)
            except Exception as e:  # noqa: BLE001
                c.errors.append(f"through the gateway: {short_exc(e)}")
            ms = (time.monotonic() - t) * 1000
            if mock.held_too_long != held:
                c.errors.append(
                    f"the first event did not reach the SDK within {HOLD_SECONDS:g} s while the mock held "
                    "the rest of the stream: the gateway buffered the stream"
                )
            via = mock.since(n1)
            if c.record["stream"]:
                c.info += "streamed event by event, "
            elif mock.gzipped != gz:
                c.info += "gzip body, "
            if len(via) != 1:
                c.errors.append(f"{len(via)} requests reached the mock through the gateway, want 1")
            if via:
                r = via[0]
                if r.target != c.target:
                    c.errors.append(f"the mock got {r.method} {r.target!r}, want {c.target!r}")
                sent = [h for h, v in c.key_headers if r.header(h) == v]
                if not sent:
                    c.errors.append(
                        "the key did not reach the mock unchanged in any of "
                        + ", ".join(f"{h}: {r.header(h)!r}" for h, _ in c.key_headers)
                    )
                c.info += f"key in {'+'.join(sent)}, "
                if r.header("host") != f"127.0.0.1:{mock.port}":
                    c.errors.append(f"Host at the mock: {r.header('host')!r}")
                if len(direct) == 1:
                    c.errors += compare_forwarded(direct[0], r)
                else:
                    c.errors.append(f"{len(direct)} reference requests, want 1")
            c.info += f"{ms:.0f} ms"

        negatives = make_negatives()
        for n in negatives:
            before = mock.count()
            try:
                n.run(bases(n.provider)[1], BAD_KEY)
            except Exception as e:  # noqa: BLE001
                n.errors.append(short_exc(e))
            reached = mock.since(before)
            if reached:
                n.errors.append(f"{len(reached)} request(s) reached the mock: {[r.target for r in reached]}")
        signed_cases = make_signed_cases(gw, mock)
        run_signed_cases(signed_cases, mock, gw, deadline)
        gateway_cases = make_gateway_cases(mock)
        run_gateway_cases(mock, gateway_cases, bases)
        limit_cases = make_limit_cases(mock, deadline)
        run_limit_cases(mock, limit_cases, lambda provider: bases(provider)[1])
        # ---- Stop the gateway and read its records.
        log(f"SDK calls done at {time.monotonic() - started:.1f} s; SIGTERM to the gateway")
        code = gw.stop(timeout=20)
        stop_errors = []
        if code != 0:
            stop_errors.append(f"gateway exit status {code} after SIGTERM, want 0")
        records = gw.records()
        want_n = len(cases) + len(negatives) + len(signed_cases) + len(gateway_cases)
        want_n += sum(len(c.records) for c in limit_cases)  # refusals are recorded too
        if len(records) != want_n:
            stop_errors.append(f"{len(records)} records in the stats file, want {want_n} (one per gateway call)")

        def take(pred) -> list[dict]:
            return [r for r in records if pred(r)]

        def mismatch(got: list[dict], want: dict, what: str) -> str | None:
            """Why `got` is not exactly one record with the fields of `want`; None if it is."""
            if len(got) != 1:
                return f"{len(got)} {what}, want 1"
            diffs = {k: (got[0].get(k), v) for k, v in want.items() if got[0].get(k) != v}
            if diffs:
                return "record " + ", ".join(f"{k}={g!r} (want {w!r})" for k, (g, w) in diffs.items())
            return None

        for c in cases:
            want = dict(
                c.record,
                provider=c.provider,
                endpoint=c.endpoint,
                status=200,
                lmgate_id=f"sdk-{c.provider}",
                masked_key=KEYS[c.provider][-6:],
                error_type=None,
                usage_status="exact",
            )
            got = take(
                lambda r: r.get("provider") == c.provider
                and r.get("lmgate_id") == f"sdk-{c.provider}"
                and r.get("endpoint") == c.endpoint
                and r.get("stream") == c.record["stream"]
                and r.get("status") == 200
            )
            error = mismatch(got, want, "matching records")
            if error:
                c.errors.append(error)
            else:
                c.info += f", record in={got[0]['input_tokens']} out={got[0]['output_tokens']} exact"
        for n in negatives:
            want = {
                "provider": n.provider,
                "endpoint": n.endpoint,
                "model": n.model,
                "status": 403,
                "lmgate_id": None,
                "masked_key": BAD_KEY[-6:],
                "error_type": "forbidden",
                "usage_status": "absent",
                "input_tokens": None,
                "output_tokens": None,
                "stream": False,
            }
            got = take(lambda r: r.get("provider") == n.provider and r.get("status") == 403)
            error = mismatch(got, want, "403 records")
            if error:
                n.errors.append(error)
            else:
                n.info = "403, nothing reached the mock, record forbidden"
        signed_records = take(lambda r: r.get("lmgate_id") == "sdk-bedrock-gateway")
        if len(signed_records) != len(signed_cases):
            stop_errors.append(f"{len(signed_records)} gateway-key records, want {len(signed_cases)}")
        for c in signed_cases:
            want = dict(
                c.record,
                provider="bedrock",
                endpoint=c.endpoint,
                status=200,
                masked_key=GATEWAY_KEYS["bedrock"][-6:],
                error_type=None,
                usage_status="exact",
            )
            got = [r for r in signed_records if r.get("endpoint") == c.endpoint and r.get("stream") == c.record["stream"]]
            # Two calls share the Converse endpoint: each must find one exact record.
            if not any(mismatch([r], want, "records") is None for r in got):
                c.errors.append(mismatch(got[:1], want, "gateway-key records") or "no exact record")
        stats_text = gw.stats_path.read_text() if gw.stats_path.exists() else ""
        check_gateway_records(gateway_cases, records, mismatch)
        check_limit_records(limit_cases, records, mismatch)
        limit_keys = [key for key, _ in LIMIT_KEYS.values()]
        for k in list(KEYS.values()) + list(GATEWAY_KEYS.values()) + list(GATEWAY_AWS.values()) + [BAD_KEY] + list(
            PROVIDER_SECRETS.values()
        ) + limit_keys:
            if k in stats_text:
                stop_errors.append("a full key appears in the stats file")
        log_text = gw.log_path.read_text(errors="replace") if gw.log_path.exists() else ""
        for k in list(GATEWAY_KEYS.values()) + [GATEWAY_AWS["AWS_SECRET_ACCESS_KEY"], GATEWAY_AWS["AWS_SESSION_TOKEN"]]:
            if k in log_text:
                stop_errors.append("a gateway key or AWS secret appears in the gateway log")
        results += [(c.name, c.errors, c.info) for c in cases]
        results += [(n.name, n.errors, n.info) for n in negatives]
        results += [(c.name, c.errors, c.info) for c in signed_cases]
        results += [(g.name, g.errors, g.info) for g in gateway_cases]
        results += [(c.name, c.errors, c.info) for c in limit_cases]
        results.append(("gateway SIGTERM -> exit 0, one exact record per call", stop_errors, f"{len(records)} records"))
    except GlobalTimeout as e:
        fatal.append(str(e))
    except RuntimeError as e:  # a precondition, said in full
        fatal.append(str(e))
    except Exception as e:  # noqa: BLE001
        fatal.append(short_exc(e))
        traceback.print_exc()
    finally:
        signal.alarm(0)
        gw.kill()
        for stop in [f.stop for f in fronts] + [mock.stop]:
            try:
                stop()
            except Exception:  # noqa: BLE001
                pass
        gateway_log = gw.log_tail() if gw.proc is not None else ""
        tmpdir.cleanup()

    if fatal:
        done = {name for name, _, _ in results}
        for c in [*cases, *negatives, *signed_cases, *gateway_cases, *limit_cases]:
            if c.name not in done:
                results.append((c.name, c.errors or ["not completed"], ""))
        results.append(("check run", fatal, ""))

    if gateway_log and (fatal or any(errs for _, errs, _ in results)):
        log("gateway log (last lines):")
        log(gateway_log)
    passed = failed = 0
    for name, errs, info in results:
        if errs:
            failed += 1
            log(f"FAIL {name}")
            for e in errs:
                log(f"     - {e}")
        else:
            passed += 1
            log(f"PASS {name}" + (f" ({info})" if info else ""))
    log(f"time: {time.monotonic() - started:.1f} s")
    log(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


if __name__ == "__main__":
    sys.exit(main())
