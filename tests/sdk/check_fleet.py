#!/usr/bin/env python3
"""The official openai and anthropic SDKs through a fleet: three real LMGate processes
behind a real HAProxy, limits shared through a real Redis, usage records shipped to a real
ClickHouse (Debian's redis-server, clickhouse-server and haproxy, started here on
127.0.0.1 and stopped at the end).

Run by scripts/sdk-check.sh after check_sdks.py (same venv, same binary). The mock
upstream is check_sdks.py's (each provider's real wire format, JSON gzipped, streams
chunked).

1. openai (chat, JSON and SSE with usage) and anthropic (messages, JSON and SSE) calls
   through the balancer, only the base URL changed; each answer carries its
   `x-lmgate-request-id`, and the calls land on every instance.
2. A fleet-wide `tokens_per_day` budget: openai calls until the SDK raises its
   RateLimitError (`insufficient_quota`, not retried). Each call reserves at least what
   it uses (a long enough prompt and `max_tokens`), so the stated overshoot is zero: the
   tokens admitted across the three instances never pass the budget, and fall short of it
   by at most one reservation plus the two other instances' unused leases.
3. ClickHouse holds every record of every instance exactly once (count with FINAL equals
   distinct request ids equals the files' lines), every request id an SDK saw, and for
   each of those the token counts the SDK got.

Prints one line per check and ends with `N passed, M failed`; exits 1 if anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_sdks import KEYS, MockUpstream, free_port, hermetic_env, log, short_exc  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUDGET_KEY = "sk-lmgate-fleet-budget-000000000000000001"
# One openai chat answer (tests/fixtures/openai_chat.json): 1117 prompt + 46 completion.
CHAT_TOKENS = 1163
BUDGET = 5000
# A call reserves ceil(body bytes / 4) + max_tokens before it is forwarded: a prompt of
# 5,000 bytes and max_tokens 50 reserve more than the answer's 1117 + 46 tokens.
MAX_TOKENS = 50
PROMPT = "word " * 1000
# fleet.lease_percent 5 of the budget.
CHUNK = BUDGET * 5 // 100


def engine(name: str) -> str:
    for d in os.environ.get("PATH", "").split(os.pathsep) + ["/usr/sbin", "/usr/bin"]:
        p = Path(d) / name
        if p.is_file():
            return str(p)
    raise RuntimeError(f"{name} not found: install the Debian package ({name}); scripts/dev test does")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, args: list[str], log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
        out = open(log_path, "ab")
        p = subprocess.Popen(args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, cwd=cwd)
        self.procs.append(p)
        return p

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def wait_for(what: str, cond, deadline: float) -> None:
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)


def http_ok(url: str, data: bytes | None = None) -> bytes | None:
    try:
        with urllib.request.urlopen(url, data=data, timeout=5) as r:
            return r.read()
    except Exception:  # noqa: BLE001
        return None


def ch_query(port: int, sql: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", data=sql.encode(), timeout=10) as r:
        return r.read().decode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gateway", default=str(ROOT / "target" / "debug" / "lmgate"))
    ap.add_argument("--timeout", type=float, default=150)
    args = ap.parse_args()
    args.gateway = str(Path(args.gateway).resolve())  # the gateways run in their own directories
    deadline = time.monotonic() + args.timeout
    hermetic_env()
    tmp = Path(tempfile.mkdtemp(prefix="lmgate-fleet-"))
    procs = Procs()
    mock = MockUpstream()
    passed: list[str] = []
    failed: list[str] = []

    def check(name: str, ok: bool, detail: str = "") -> None:
        (passed if ok else failed).append(name)
        log(f"{'ok  ' if ok else 'FAIL'} {name}{': ' + detail if detail else ''}")

    try:
        import anthropic
        import openai

        mock.release.set()  # streams flow without holding (the stream check is check_sdks.py's)
        mock.start()
        # Redis and ClickHouse.
        redis_port = free_port()
        procs.start(
            [engine("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp)],
            tmp / "redis.log",
        )
        ch_port = free_port()
        chdir = tmp / "clickhouse"
        chdir.mkdir()
        procs.start(
            [engine("clickhouse-server"), "--config-file=/etc/clickhouse-server/config.xml", "--",
             f"--path={chdir}/data/", f"--tmp_path={chdir}/tmp/", f"--user_files_path={chdir}/uf/",
             f"--format_schema_path={chdir}/fs/", f"--http_port={ch_port}", f"--tcp_port={free_port()}",
             f"--interserver_http_port={free_port()}", f"--logger.log={chdir}/server.log",
             f"--logger.errorlog={chdir}/err.log", "--logger.console=0", "--listen_host=127.0.0.1"],
            tmp / "clickhouse.out",
            cwd=chdir,
        )
        wait_for("ClickHouse", lambda: http_ok(f"http://127.0.0.1:{ch_port}/ping") == b"Ok.\n", deadline)
        schema = (ROOT / "contrib" / "clickhouse" / "schema.sql").read_text()
        schema = "\n".join(l for l in schema.splitlines() if not l.strip().startswith("--"))
        for stmt in [s.strip() for s in schema.split(";") if s.strip()]:
            ch_query(ch_port, stmt)

        # Three gateways with one allow-list.
        allowlist = tmp / "allowlist.csv"
        allowlist.write_text(
            "id,api_key,owner,added,limits\n"
            f"fleet-openai,{KEYS['openai']},sdk,2026-12-01,\n"
            f"fleet-anthropic,{KEYS['anthropic']},sdk,2026-12-01,\n"
            f"fleet-budget,{BUDGET_KEY},sdk,2026-12-01,tokens_per_day={BUDGET}\n"
        )
        gateways = []
        for i in range(3):
            d = tmp / f"gw{i}"
            d.mkdir()
            port = free_port()
            cfg = d / "lmgate.yaml"
            cfg.write_text(
                f"server: {{host: 127.0.0.1, port: {port}, threads: 2, drain_timeout_seconds: 5, "
                f"upgrade_sock: {d}/u.sock, pid_file: {d}/l.pid}}\n"
                f"auth: {{allowlist_path: {allowlist}, poll_interval_seconds: 1}}\n"
                f"stats: {{output_path: {d}/stats.jsonl, flush_interval_seconds: 1}}\n"
                f"metrics: {{listen: 127.0.0.1:{free_port()}}}\n"
                "providers:\n"
                f"  openai: {{upstream: 'http://127.0.0.1:{mock.port}'}}\n"
                f"  anthropic: {{upstream: 'http://127.0.0.1:{mock.port}'}}\n"
                "  google: {enabled: false}\n  gemini: {enabled: false}\n  bedrock: {enabled: false}\n"
                f"fleet: {{redis_url: 'redis://127.0.0.1:{redis_port}/0', instances: 3, sync_interval_ms: 100}}\n"
                f"clickhouse: {{url: 'http://127.0.0.1:{ch_port}', batch_seconds: 1}}\n"
            )
            procs.start([args.gateway, "--config", str(cfg)], d / "lmgate.log", cwd=d)
            gateways.append((port, d))
        for port, d in gateways:
            wait_for(f"gateway :{port}", lambda: http_ok(f"http://127.0.0.1:{port}/healthz") is not None, deadline)
        # HAProxy in front.
        lb_port = free_port()
        servers = "".join(f"  server gw{i} 127.0.0.1:{p} check\n" for i, (p, _) in enumerate(gateways))
        (tmp / "haproxy.cfg").write_text(
            "defaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n"
            "  option http-keep-alive\n  retries 0\n"
            f"frontend fleet\n  bind 127.0.0.1:{lb_port}\n  default_backend gws\n"
            "backend gws\n  balance roundrobin\n  option httpchk GET /healthz\n  default-server inter 200ms\n" + servers
        )
        procs.start([engine("haproxy"), "-db", "-f", str(tmp / "haproxy.cfg")], tmp / "haproxy.log")
        front = f"http://127.0.0.1:{lb_port}"
        wait_for("HAProxy", lambda: http_ok(f"{front}/healthz") is not None, deadline)
        log(f"fleet: 3 gateways behind HAProxy {front}, Redis :{redis_port}, ClickHouse :{ch_port}")

        # 1. SDK calls through the balancer; request id -> the tokens the SDK got.
        seen: dict[str, tuple[int, int]] = {}
        oa = openai.OpenAI(base_url=f"{front}/openai/v1", api_key=KEYS["openai"])
        an = anthropic.Anthropic(base_url=f"{front}/anthropic", api_key=KEYS["anthropic"])
        msgs = [{"role": "user", "content": "Hello"}]
        for _ in range(9):
            raw = oa.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=msgs)
            u = raw.parse().usage
            seen[raw.headers["x-lmgate-request-id"]] = (u.prompt_tokens, u.completion_tokens)
        for _ in range(3):
            with oa.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", messages=msgs, stream=True, stream_options={"include_usage": True}
            ) as resp:
                usage = [c.usage for c in resp.parse() if c.usage][-1]
                seen[resp.headers["x-lmgate-request-id"]] = (usage.prompt_tokens, usage.completion_tokens)
        for _ in range(6):
            raw = an.messages.with_raw_response.create(model="claude-sonnet-4-5", max_tokens=1024, messages=msgs)
            u = raw.parse().usage
            inp = u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)
            seen[raw.headers["x-lmgate-request-id"]] = (inp, u.output_tokens)
        for _ in range(3):
            with an.messages.with_streaming_response.create(
                model="claude-sonnet-4-5", max_tokens=1024, messages=msgs, stream=True
            ) as resp:
                events = list(resp.parse())
                start = next(e for e in events if e.type == "message_start").message.usage
                delta = [e for e in events if e.type == "message_delta"][-1].usage
                inp = start.input_tokens + (start.cache_read_input_tokens or 0) + (start.cache_creation_input_tokens or 0)
                seen[resp.headers["x-lmgate-request-id"]] = (inp, delta.output_tokens)
        check("openai and anthropic SDKs through the balancer", len(seen) == 21, f"{len(seen)} answers")
        instances = {rid.split("-")[0] for rid in seen}
        check("the calls reached every instance", len(instances) == 3, f"{len(instances)} instance ids")

        # 2. A fleet-wide budget, until the SDK raises its (non-retried) budget error.
        ob = openai.OpenAI(base_url=f"{front}/openai/v1", api_key=BUDGET_KEY)
        admitted = 0
        error = None
        long = [{"role": "user", "content": PROMPT}]
        for _ in range(20):
            try:
                raw = ob.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini", messages=long, max_tokens=MAX_TOKENS
                )
                u = raw.parse().usage
                seen[raw.headers["x-lmgate-request-id"]] = (u.prompt_tokens, u.completion_tokens)
                admitted += 1
            except openai.RateLimitError as e:
                error = e
                break
        tokens = admitted * CHAT_TOKENS
        check(
            "the budget error is openai's RateLimitError, insufficient_quota",
            error is not None and (error.body or {}).get("code") == "insufficient_quota",
            short_exc(error) if error else "no error",
        )
        import re

        m = re.search(r"needs up to (\d+)", str(error or ""))
        reserve = int(m.group(1)) if m else 0
        check("each call reserved more than it used", reserve >= CHAT_TOKENS, f"reserved {reserve}")
        check(
            "the fleet held the budget: never over, short by at most a reservation and two leases",
            BUDGET - reserve - 2 * CHUNK <= tokens <= BUDGET,
            f"{admitted} calls, {tokens} tokens of {BUDGET}",
        )

        # 3. ClickHouse: every record once, and the SDKs' counts.
        def file_lines() -> int:
            n = 0
            for _, d in gateways:
                for f in d.iterdir():
                    if f.name.startswith("stats.jsonl") and f.suffix not in (".lock", ".shipped") and "shipped" not in f.name:
                        n += sum(1 for l in f.read_text().splitlines() if l.strip())
            return n

        def shipped() -> int:
            return int(ch_query(ch_port, "SELECT count() FROM lmgate.usage FINAL").strip() or 0)

        time.sleep(1.5)  # the writers' flush
        wait_for("every record in ClickHouse", lambda: shipped() == file_lines() and file_lines() > 0, deadline)
        n = file_lines()
        distinct = int(ch_query(ch_port, "SELECT uniqExact(request_id) FROM lmgate.usage FINAL").strip())
        check("ClickHouse holds each record once", distinct == n == shipped(), f"{distinct} distinct, {n} in the files")
        ids = ",".join("'" + r.replace("'", "") + "'" for r in seen)
        rows = ch_query(
            ch_port,
            "SELECT request_id, ifNull(input_tokens, 0) + ifNull(cache_read_input_tokens, 0) * (provider = 'anthropic') "
            "+ ifNull(cache_creation_input_tokens, 0), ifNull(output_tokens, 0) "
            f"FROM lmgate.usage FINAL WHERE request_id IN ({ids}) FORMAT TSV",
        )
        got = {}
        for line in rows.splitlines():
            rid, i, o = line.split("\t")
            got[rid] = (int(i), int(o))
        missing = [r for r in seen if r not in got]
        wrong = [r for r in seen if r in got and got[r] != seen[r]]
        check("every SDK answer is in ClickHouse", not missing, f"{len(missing)} missing")
        check("with the token counts the SDK got", not wrong, f"{wrong[:3]} {[got.get(r) for r in wrong[:3]]} {[seen[r] for r in wrong[:3]]}")
    except Exception as e:  # noqa: BLE001
        failed.append(f"fleet check: {short_exc(e)}")
        log(f"FAIL {short_exc(e)}")
    finally:
        procs.stop_all()
        mock.stop()
        if failed:
            for f in sorted(tmp.rglob("*.log")):
                log(f"--- {f.relative_to(tmp)} (tail)")
                for line in f.read_text(errors="replace").splitlines()[-15:]:
                    log(f"    {line}")
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{len(passed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    sys.exit(main())
