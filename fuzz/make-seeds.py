#!/usr/bin/env python3
"""Write the seed corpus, fuzz/corpus/<target>/, from tests/fixtures/ (and conf/, data/).

Run from anywhere: python3 fuzz/make-seeds.py. It rewrites only the files it names, so
re-running after a fixture changes is safe. Python's standard library only; zstd seeds
need the `zstd` command and are skipped without it. The input layouts are described in
fuzz/src/lib.rs and at the top of each target.
"""
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import zlib
import base64

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
OUT = os.path.join(ROOT, "fuzz", "corpus")

# Index of each cap in lmgate_fuzz::CAPS.
CAP_64, CAP_1K, CAP_2M = 2, 4, 7


def fixture(name):
    with open(os.path.join(FIX, name), "rb") as f:
        return f.read()


def split_header(body, cuts=(), cap=CAP_2M, extra=0):
    """The `Split` layout: flags, then each cut as u16 LE, then the body."""
    assert len(cuts) <= 7 and 0 <= cap <= 7 and 0 <= extra <= 3
    head = bytes([len(cuts) | cap << 3 | extra << 6])
    return head + b"".join(struct.pack("<H", c) for c in cuts) + body


def thirds(body):
    n = len(body)
    return (n // 3, n // 2, 2 * n // 3)


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- AWS event stream (mirrors src/usage/eventstream.rs encode_message) -----------------


def es_message(headers, payload):
    hb = b""
    for k, v in headers:
        kb, vb = k.encode(), v.encode()
        hb += bytes([len(kb)]) + kb + b"\x07" + struct.pack(">H", len(vb)) + vb
    total = 12 + len(hb) + len(payload) + 4
    prelude = struct.pack(">II", total, len(hb))
    m = prelude + struct.pack(">I", zlib.crc32(prelude)) + hb + payload
    return m + struct.pack(">I", zlib.crc32(m))


def es_event(event_type, payload):
    return es_message(
        [
            (":event-type", event_type),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.encode(),
    )


def converse_stream():
    body = es_event("messageStart", '{"p":"abcd","role":"assistant"}')
    for text in ["Once", " upon"]:
        body += es_event(
            "contentBlockDelta",
            json.dumps({"contentBlockIndex": 0, "delta": {"text": text}}, separators=(",", ":")),
        )
    body += es_event("messageStop", '{"p":"abcdef","stopReason":"end_turn"}')
    body += es_event(
        "metadata",
        '{"metrics":{"latencyMs":1180},"usage":{"inputTokens":25,"outputTokens":48,'
        '"totalTokens":73,"cacheReadInputTokens":3,"cacheWriteInputTokens":1}}',
    )
    return body


def invoke_stream():
    events = [
        '{"type":"message_start","message":{"model":"claude-3-5-haiku-20241022",'
        '"usage":{"input_tokens":14,"output_tokens":1}}}',
        '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":9}}',
        '{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":14,'
        '"outputTokenCount":9,"cacheReadInputTokenCount":2,"cacheWriteInputTokenCount":0}}',
    ]
    body = b""
    for e in events:
        b64 = base64.b64encode(e.encode()).decode()
        body += es_event("chunk", '{"bytes":"%s","p":"abc"}' % b64)
    return body


def exception_stream():
    return es_event("metadata", '{"usage":{"inputTokens":1}}') + es_message(
        [(":exception-type", "throttlingException"), (":message-type", "exception")],
        b'{"message":"slow down"}',
    )


# --- compression ------------------------------------------------------------------------


def brotli_stored(data):
    """A valid brotli stream of uncompressed meta-blocks (RFC 7932 section 9.2)."""
    out = bytearray()
    acc, nbits = 0, 0

    def bits(value, n):
        nonlocal acc, nbits
        acc |= value << nbits
        nbits += n
        while nbits >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nbits -= 8

    def align():
        nonlocal acc, nbits
        if nbits:
            out.append(acc & 0xFF)
            acc, nbits = 0, 0

    bits(0, 1)  # WBITS = 16
    for i in range(0, len(data), 65536):
        block = data[i : i + 65536]
        bits(0, 1)  # ISLAST = 0
        bits(0, 2)  # MNIBBLES = 4
        bits(len(block) - 1, 16)  # MLEN - 1
        bits(1, 1)  # ISUNCOMPRESSED
        align()
        out += block
    bits(1, 1)  # ISLAST
    bits(1, 1)  # ISLASTEMPTY
    align()
    return bytes(out)


def zstd(data):
    if not shutil.which("zstd"):
        return None
    return subprocess.run(
        ["zstd", "-q", "-c", "-3"], input=data, stdout=subprocess.PIPE, check=True
    ).stdout


# --- targets ----------------------------------------------------------------------------


def sse():
    for name in [
        "anthropic_stream.sse",
        "openai_chat_stream.sse",
        "openai_chat_stream_no_usage.sse",
        "openai_responses_stream.sse",
        "gemini_stream.sse",
    ]:
        body = fixture(name)
        stem = name.rsplit(".", 1)[0]
        write("sse", stem + "-whole", split_header(body))
        write("sse", stem + "-cuts-cap1k", split_header(body, thirds(body), CAP_1K))
    write(
        "sse",
        "crlf-bare-cr-multiline-cap64",
        split_header(
            b'data: {"usage":\r\ndata: {"prompt_tokens":7}}\r\r: comment\n'
            b'event: x\ndata:{"usage":{"input_tokens":5}}',
            (10, 10, 27, 28),
            CAP_64,
        ),
    )


def json_usage():
    for name in [
        "openai_chat.json",
        "openai_responses.json",
        "openai_embeddings.json",
        "anthropic_message.json",
        "gemini_generate.json",
        "bedrock_converse.json",
    ]:
        write("json_usage", name.rsplit(".", 1)[0], fixture(name))
    write(
        "json_usage",
        "anthropic-start-then-delta",
        b'{"type":"message_start","message":{"model":"claude","usage":{"input_tokens":10,'
        b'"cache_read_input_tokens":3,"output_tokens":1}}}\x00'
        b'{"type":"message_delta","usage":{"output_tokens":15}}',
    )
    write(
        "json_usage",
        "responses-completed-then-bedrock",
        b'{"type":"response.completed","response":{"model":"gpt","usage":{"input_tokens":3,'
        b'"input_tokens_details":{"cached_tokens":1},"output_tokens_details":{"reasoning_tokens":2}}}}\x00'
        b'{"amazon-bedrock-invocationMetrics":{"inputTokenCount":4,"outputTokenCount":5}}',
    )


def json_array():
    body = fixture("gemini_stream_array.json")
    write("json_array", "gemini_stream_array-whole", split_header(body))
    write("json_array", "gemini_stream_array-cuts-cap64", split_header(body, thirds(body), CAP_64))
    write(
        "json_array",
        "strings-with-brackets",
        split_header(
            b'[{"a":"]}[{\\"","usageMetadata":{"promptTokenCount":1}},\r\n'
            b'{"modelVersion":"m","b":[1,{"c":"}"}]}]',
            (3, 9, 40),
            CAP_1K,
        ),
    )


def eventstream():
    conv, inv, exc = converse_stream(), invoke_stream(), exception_stream()
    write("eventstream", "converse-whole", split_header(conv))
    write("eventstream", "converse-cuts-fixcrc", split_header(conv, thirds(conv), CAP_1K, extra=1))
    write("eventstream", "invoke-cuts-cap64", split_header(inv, thirds(inv), CAP_64))
    write("eventstream", "invoke-fixcrc", split_header(inv, (), CAP_2M, extra=1))
    write("eventstream", "exception", split_header(exc, (5, 40)))


# Collector select byte: encoding index (bits 0-3), kind (bits 4-6), end (bit 7).
ENC = {"none": 0, "gzip": 1, "deflate": 2, "br": 3, "zstd": 4, "identity": 6}
KIND = {"json": 0, "sse": 1, "array": 2, "events": 3, "other": 4}


def collector_input(enc, kind, body, cuts=(), cap=CAP_2M, end=True):
    select = ENC[enc] | KIND[kind] << 4 | (0x80 if end else 0)
    return bytes([select]) + split_header(body, cuts, cap)


def collector():
    chat = fixture("openai_chat.json")
    stream = fixture("anthropic_stream.sse")
    array = fixture("gemini_stream_array.json")
    conv = converse_stream()
    write("collector", "json-identity", collector_input("none", "json", chat, thirds(chat)))
    write("collector", "sse-truncated", collector_input("identity", "sse", stream, (100,), end=False))
    write("collector", "array-cap64", collector_input("none", "array", array, thirds(array), CAP_64))
    write("collector", "events", collector_input("none", "events", conv, thirds(conv)))
    write("collector", "other", collector_input("none", "other", b"<html>bad gateway</html>"))
    write("collector", "sse-gzip", collector_input("gzip", "sse", gzip.compress(stream, mtime=0), (20, 200)))
    write("collector", "json-deflate", collector_input("deflate", "json", zlib.compress(chat), (9,)))
    write("collector", "array-br", collector_input("br", "array", brotli_stored(array), (2, 3, 300)))
    z = zstd(conv)
    if z is not None:
        write("collector", "events-zstd", collector_input("zstd", "events", z, (4, 50)))


def allowlist():
    write("allowlist", "demo", open(os.path.join(ROOT, "data", "allowlist.csv"), "rb").read())
    write(
        "allowlist",
        "bom-spaces-blank-lines-order",
        "\ufeffowner, api_key ,id,added\n\n alice , sk-test-0001 , 1 , 2026-01-01\n   \n"
        '"bob","sk-test-0002",2,2026\n'.encode(),
    )
    digest = hashlib.sha256(b"sk-live-secret-1").hexdigest()
    write(
        "allowlist",
        "hashed-and-plain",
        f"id,api_key,owner,added\n1,sha256:{digest.upper()},a,d\n2,sk-plain-2,b,d\n".encode(),
    )
    write(
        "allowlist",
        "duplicate-across-forms",
        f"id,api_key,owner,added\n1,sha256:{digest},a,d\n2,sk-live-secret-1,b,d\n".encode(),
    )
    write("allowlist", "bad-utf8-and-short-row", b"id,api_key,owner,added\n1,sk-\xff,a,b\n2,sk-x,c\n")


def config():
    # The example config without its comment-only lines (inline comments stay), so that it
    # fits the target's -max_len.
    with open(os.path.join(ROOT, "conf", "lmgate.yaml"), "rb") as f:
        lines = [l for l in f.read().splitlines(keepends=True) if not l.lstrip().startswith(b"#")]
    write("config", "lmgate.yaml", b"".join(lines))
    write(
        "config",
        "full-flow-style",
        b"server: {host: 127.0.0.1, port: 9000, threads: 3, drain_timeout_seconds: 5, "
        b"upgrade_sock: /tmp/u.sock, pid_file: /tmp/p.pid}\n"
        b"auth: {allowlist_path: a.csv, poll_interval_seconds: 2}\n"
        b"stats: {output_path: s.jsonl, flush_interval_seconds: 1, capture_limit_bytes: 4096, "
        b"channel_capacity: 10, rotate_bytes: 8192}\n"
        b"logging: {level: debug}\n"
        b"upstream: {connect_timeout_seconds: 1, read_timeout_seconds: 2, write_timeout_seconds: 3, "
        b"idle_timeout_seconds: 4, dns_refresh_seconds: 5}\n"
        b"providers:\n  openai: {enabled: false}\n  google: {enabled: false}\n"
        b'  local: {upstream: "http://[::1]:8000/v1/", prefix: /local/, format: anthropic}\n',
    )
    write(
        "config",
        "env-overrides",
        b"server: {port: 8080}\n\x00"
        b"SERVER__PORT=9000\nPROVIDERS__OPENAI__UPSTREAM=http://127.0.0.1:9001\n"
        b"LMGATE_AUTH__ALLOWLIST_PATH=123\nPROVIDERS__LOCAL__UPSTREAM=http://127.0.0.1:8000\n",
    )
    write(
        "config",
        "anchors-and-bad-env",
        b"providers:\n  openai: &a {enabled: false}\n  google: *a\n"
        b"  gemini: {prefix: /g, upstream: 'https://h:8443/base'}\n\x00"
        b"SERVER__PORT=eighty\nSERVER=1\n",
    )


if __name__ == "__main__":
    sse()
    json_usage()
    json_array()
    eventstream()
    collector()
    allowlist()
    config()
    for t in sorted(os.listdir(OUT)):
        d = os.path.join(OUT, t)
        if os.path.isdir(d) and not t.endswith("-work"):
            files = os.listdir(d)
            size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
            print(f"{t}: {len(files)} files, {size} bytes")
