#!/usr/bin/env python3
"""Write the bench allow-list: KEY among 1,000 plaintext and 1,000 sha256: keys.

Usage: bench/allowlist.py PATH KEY [LIMITS]   (used by bench/run.sh and bench/callgrind.sh)
LIMITS: the bench key's `limits` column (`"rpm=1000000 usd_per_day=1000"`); the other
keys have none.
"""
import hashlib
import sys

path, bench_key = sys.argv[1], sys.argv[2]
limits = sys.argv[3] if len(sys.argv) > 3 else ""
with open(path, "w") as f:
    f.write("id,api_key,owner,added,limits\n")
    f.write(f"bench,{bench_key},bench@example.com,2026-11-23,{limits}\n")
    for i in range(1000):
        f.write(f"team-{i},sk-proj-{i:048d},owner{i}@example.com,2026-11-23,\n")
    for i in range(1000):
        h = hashlib.sha256(f"sk-hashed-{i:040d}".encode()).hexdigest()
        f.write(f"hashed-{i},sha256:{h},owner{i}@example.com,2026-11-23,\n")
