#!/usr/bin/env python3
"""Generate prices/snapshot.csv, a dated snapshot of model prices, from litellm's price map.

The source is `litellm/model_prices_and_context_window_backup.json` inside the litellm
wheel on PyPI (the litellm project is MIT-licensed; see the wheel's dist-info/licenses).
The script downloads the wheel with pip (or takes one already downloaded), reads the
map, keeps the chat/completion/responses/embedding entries of the providers LMGate knows
(openai, anthropic, google = Vertex AI, gemini, bedrock), and writes one row per
(provider, model) with prices in integer micro-dollars per million tokens.

No floating point: the JSON is parsed with `parse_float=decimal.Decimal`, so each price
is the exact decimal string from the file, scaled by 10^12 (dollars per token ->
micro-dollars per million tokens). A value that is not then an integer is rounded half
up, counted, and listed on stderr.

Usage (Python 3.11, stdlib only; run from anywhere):

    python3 scripts/gen-prices.py                      # newest litellm on PyPI
    python3 scripts/gen-prices.py --version 1.110.2    # a given litellm version
    python3 scripts/gen-prices.py --wheel litellm-1.110.2-...whl --out /tmp/prices.csv

The CSV goes to --out (default: prices/snapshot.csv at the repository root); the summary
(rows per provider, skips by reason, rounded values, conflicting duplicates) goes to
stderr.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import decimal
import hashlib
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "litellm"
JSON_PATH = "litellm/model_prices_and_context_window_backup.json"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data" / "prices.csv"

HEADER = ("provider", "model", "input", "output", "cache_read", "cache_write", "reasoning")
KEPT_MODES = ("chat", "completion", "responses", "embedding")

# CSV column -> litellm field (dollars per token). Everything else in an entry
# (tiers above N tokens, batch/flex/priority prices, audio/image/character/second
# prices, per-query costs) is ignored.
PRICE_FIELDS = {
    "input": "input_cost_per_token",
    "output": "output_cost_per_token",
    "cache_read": "cache_read_input_token_cost",
    "cache_write": "cache_creation_input_token_cost",
    "reasoning": "output_cost_per_reasoning_token",
}

SCALE = 12  # dollars per token * 10^12 = micro-dollars per million tokens
EXACT = decimal.Context(prec=200, rounding=decimal.ROUND_HALF_UP)

# Comma, quote, whitespace, control characters: never in a model name we emit.
BAD_NAME = re.compile(r'[,"\s\x00-\x1f\x7f-\x9f]')

# Candidate priorities when several litellm keys give the same (provider, model):
# a key used as is beats one that had a prefix stripped, which beats a name derived
# from a Vertex `@` name.
PRIO_PLAIN, PRIO_STRIPPED, PRIO_DERIVED = 0, 1, 2


@dataclasses.dataclass
class Source:
    """The wheel and the JSON file read from it."""

    wheel_name: str
    wheel_sha256: str
    version: str
    json_sha256: str
    text: str


@dataclasses.dataclass
class Candidate:
    """One possible CSV row and where it came from."""

    provider: str
    model: str
    prices: tuple[int | None, ...]  # in HEADER[2:] order
    key: str  # the litellm key
    rounded: tuple[str, ...]  # notes on values that were rounded
    prio: int


def log(msg: str = "") -> None:
    print(msg, file=sys.stderr)


# --------------------------------------------------------------------------- source


def download_wheel(version: str | None, dest: pathlib.Path) -> pathlib.Path:
    """`pip download` one litellm wheel (no dependencies) into `dest`; return its path."""
    spec = f"{PACKAGE}=={version}" if version else PACKAGE
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", spec, "-d", str(dest)]
    log("running: " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=sys.stderr)
    wheels = sorted(dest.glob(f"{PACKAGE}-*.whl"))
    if len(wheels) != 1:
        sys.exit(f"gen-prices: expected one {PACKAGE} wheel in {dest}, found {wheels}")
    return wheels[0]


def read_wheel(path: pathlib.Path) -> Source:
    """Read the price map, the version and the checksums from a litellm wheel."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        if JSON_PATH not in names:
            found = [n for n in names if "model_prices" in n]
            sys.exit(f"gen-prices: {JSON_PATH} not in {path.name} (found: {found})")
        raw = zf.read(JSON_PATH)
        metadata = [n for n in names if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if len(metadata) != 1:
            sys.exit(f"gen-prices: no single dist-info/METADATA in {path.name}")
        meta = zf.read(metadata[0]).decode("utf-8")
    fields = dict(line.split(": ", 1) for line in meta.splitlines()
                  if ": " in line and not line.startswith(" "))
    if fields.get("Name", "").lower() != PACKAGE:
        sys.exit(f"gen-prices: {path.name} is not a {PACKAGE} wheel")
    version = fields.get("Version", "")
    if not path.name.startswith(f"{PACKAGE}-{version}-"):
        sys.exit(f"gen-prices: wheel name {path.name} does not match version {version!r}")
    return Source(
        wheel_name=path.name,
        wheel_sha256=hashlib.sha256(data).hexdigest(),
        version=version,
        json_sha256=hashlib.sha256(raw).hexdigest(),
        text=raw.decode("utf-8"),
    )


# --------------------------------------------------------------------------- prices


def to_micro_per_million(value: object, what: str, rounded: list[str]) -> int:
    """Dollars per token (exact Decimal or int from the JSON) -> integer micro-dollars
    per million tokens. Rounds half up when needed and records it in `rounded`.
    Raises ValueError for anything that is not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, decimal.Decimal)):
        raise ValueError(f"not a number: {value!r}")
    d = decimal.Decimal(value)
    if not d.is_finite() or d < 0:
        raise ValueError(f"not a finite non-negative number: {value!r}")
    scaled = d.scaleb(SCALE, context=EXACT)
    whole = scaled.to_integral_value(rounding=decimal.ROUND_HALF_UP, context=EXACT)
    if whole != scaled:
        rounded.append(f"{what}: {d} $/token -> {scaled} rounded to {whole}")
    return int(whole)


def entry_prices(key: str, entry: dict) -> tuple[tuple[int | None, ...], tuple[str, ...]] | str:
    """The row's prices and notes on rounded values, or a skip reason."""
    has_in = PRICE_FIELDS["input"] in entry
    has_out = PRICE_FIELDS["output"] in entry
    embedding_input_only = entry.get("mode") == "embedding" and has_in and not has_out
    if not (has_in and has_out) and not embedding_input_only:
        return "no per-token input and output price"
    local: list[str] = []
    out: list[int | None] = []
    try:
        for col in HEADER[2:]:
            field = PRICE_FIELDS[col]
            if field in entry:
                out.append(to_micro_per_million(entry[field], f"{key} {field}", local))
            elif col == "output":
                out.append(0)  # embedding without an output price
            else:
                out.append(None)  # not priced separately
    except ValueError:
        return "price is not a finite non-negative number"
    return tuple(out), tuple(local)


# ------------------------------------------------------------------------- mapping


def strip_prefix(key: str, prefixes: tuple[str, ...]) -> tuple[str, bool]:
    """Strip the first matching prefix; say whether one was stripped."""
    for p in prefixes:
        if key.startswith(p):
            return key[len(p):], True
    return key, False


def map_entry(key: str, provider: str) -> tuple[str, list[tuple[str, int]]] | str:
    """(LMGate provider, [(model, priority)]) for a litellm key, or a skip reason."""
    if provider in ("openai", "text-completion-openai"):
        if key.startswith("ft:"):
            return "fine-tune key (ft:)"
        if "/" in key:
            return "'/' in model key"
        return "openai", [(key, PRIO_PLAIN)]
    if provider == "anthropic":
        if "/" in key:
            return "'/' in model key"
        return "anthropic", [(key, PRIO_PLAIN)]
    if provider == "gemini":
        model, stripped = strip_prefix(key, ("gemini/",))
        if "/" in model:
            return "'/' left after stripping the prefix"
        return "gemini", [(model, PRIO_STRIPPED if stripped else PRIO_PLAIN)]
    if provider == "vertex_ai" or provider.startswith("vertex_ai-"):
        model, stripped = strip_prefix(key, ("vertex_ai/",))
        if "/" in model:
            return "'/' left after stripping the prefix"
        names = [(model, PRIO_STRIPPED if stripped else PRIO_PLAIN)]
        if "@" in model:
            # Vertex takes `name@version` in the URL; the response body's model field
            # says `name-version`. `name@default` is an alias of plain `name`.
            base, _, ver = model.partition("@")
            names.append((base if ver == "default" else f"{base}-{ver}", PRIO_DERIVED))
        return "google", names
    if provider in ("bedrock", "bedrock_converse"):
        # Longest prefix first. Inference-profile ids (us./eu./apac./global. ...) stay.
        model, stripped = strip_prefix(key, ("bedrock/converse/", "bedrock/"))
        if "/" in model:
            return "'/' left after stripping the prefix (region/commitment/route key)"
        return "bedrock", [(model, PRIO_STRIPPED if stripped else PRIO_PLAIN)]
    return "provider not mapped"


def build_rows(price_map: dict) -> tuple[list[Candidate], dict]:
    """Resolve the price map into sorted rows; also return the report data."""
    skipped: collections.Counter[str] = collections.Counter()
    skipped_modes: collections.Counter[str] = collections.Counter()
    unmapped: collections.Counter[str] = collections.Counter()
    conflicts: list[str] = []
    shadowed_diff: list[str] = []
    chosen: dict[tuple[str, str], Candidate] = {}

    for key, entry in price_map.items():
        if key == "sample_spec" or not isinstance(entry, dict):
            skipped["sample_spec / not an entry"] += 1
            continue
        mode = entry.get("mode")
        if mode not in KEPT_MODES:
            skipped["mode not chat/completion/responses/embedding"] += 1
            skipped_modes[str(mode)] += 1
            continue
        litellm_provider = str(entry.get("litellm_provider", ""))
        mapped = map_entry(key, litellm_provider)
        if isinstance(mapped, str):
            skipped[mapped] += 1
            if mapped == "provider not mapped":
                unmapped[litellm_provider] += 1
            continue
        provider, names = mapped
        priced = entry_prices(key, entry)
        if isinstance(priced, str):
            skipped[priced] += 1
            continue
        prices, rounded = priced
        for model, prio in names:
            if not model or BAD_NAME.search(model):
                skipped["model name has a comma, quote, whitespace or control char"] += 1
                continue
            cand = Candidate(provider, model, prices, key, rounded, prio)
            have = chosen.get((provider, model))
            if have is None:
                chosen[(provider, model)] = cand
                continue
            # Lower priority number wins; on a tie the first key (JSON order) stays.
            winner, loser = (cand, have) if cand.prio < have.prio else (have, cand)
            chosen[(provider, model)] = winner
            if loser.prio == PRIO_DERIVED:
                skipped["derived '@' name already priced by its own key"] += 1
            elif loser.prio != winner.prio:
                skipped["duplicate: prefixed key shadowed by the plain key"] += 1
                if loser.prices != winner.prices:
                    shadowed_diff.append(describe_pair(winner, loser))
            else:
                skipped["duplicate: same name, first key kept"] += 1
                if loser.prices != winner.prices:
                    conflicts.append(describe_pair(winner, loser))

    rows = sorted(chosen.values(), key=lambda c: (c.provider, c.model))
    report = {
        "skipped": skipped,
        "skipped_modes": skipped_modes,
        "unmapped": unmapped,
        "rounded": [f"{r.provider}/{r.model}: {note}" for r in rows for note in r.rounded],
        "conflicts": conflicts,
        "shadowed_diff": shadowed_diff,
    }
    return rows, report


def describe_pair(kept: Candidate, dropped: Candidate) -> str:
    return (f"{kept.provider}/{kept.model}: kept {kept.key!r} {fmt_prices(kept.prices)}, "
            f"dropped {dropped.key!r} {fmt_prices(dropped.prices)}")


def fmt_prices(prices: tuple[int | None, ...]) -> str:
    return "[" + ",".join("" if p is None else str(p) for p in prices) + "]"


# -------------------------------------------------------------------------- output


def header_comment(src: Source, today: str) -> list[str]:
    regen = f"python3 scripts/gen-prices.py --version {src.version}"
    return [
        "# LMGate model prices: a dated snapshot of per-token list prices, one row per",
        "# (provider, model); provider is LMGate's provider name (its URL prefix), model is",
        "# the name as the provider returns it.",
        # One line in the `# source:` form (lowercase) that LMGate shows as the snapshot's
        # origin; the details follow.
        f"# source: {PACKAGE} {src.version} ({JSON_PATH}, MIT), generated {today}",
        f"# Wheel: {src.wheel_name} from PyPI",
        f"#   (sha256 {src.wheel_sha256});",
        f"#   {JSON_PATH} in it has sha256 {src.json_sha256}.",
        "# Licence: litellm is Copyright (c) 2023 Berri AI, MIT License (everything outside",
        "#   its enterprise/ directory); the price data is used under that licence.",
        f"# Generated: {today} (UTC).",
        f"# Regenerate: {regen}",
        "# Units: integer micro-dollars (USD 1e-6) per 1,000,000 tokens",
        "#   (litellm's dollars-per-token * 10^12; e.g. 2500000 = $2.50 per 1M tokens).",
        "# Columns: input and output are always set (0 output for embedding models without",
        "#   one); cache_read, cache_write (cache creation) and reasoning are empty when not",
        "#   priced separately.",
        "# Not represented: tiered prices (above 128k/200k tokens), batch/flex/priority",
        "#   prices, audio/image/character/second prices, per-request and per-query costs.",
    ]


def render(rows: list[Candidate], src: Source, today: str) -> str:
    lines = header_comment(src, today)
    lines.append(",".join(HEADER))
    for r in rows:
        lines.append(",".join([r.provider, r.model] +
                              ["" if p is None else str(p) for p in r.prices]))
    return "\n".join(lines) + "\n"


def print_summary(rows: list[Candidate], report: dict, src: Source, out: pathlib.Path) -> None:
    per_provider = collections.Counter(r.provider for r in rows)
    log(f"\n{PACKAGE} {src.version}: {src.wheel_name} sha256 {src.wheel_sha256}")
    log(f"wrote {len(rows)} rows to {out}")
    for p, n in sorted(per_provider.items()):
        log(f"  {p:<10} {n}")
    log("skipped, by reason:")
    for reason, n in report["skipped"].most_common():
        log(f"  {n:>5}  {reason}")
    if report["skipped_modes"]:
        modes = ", ".join(f"{m} {n}" for m, n in report["skipped_modes"].most_common())
        log(f"  (modes skipped: {modes})")
    if report["unmapped"]:
        log(f"  (unmapped litellm providers in kept modes: {len(report['unmapped'])})")
    if report["shadowed_diff"]:
        log(f"prefixed keys shadowed by a plain key with different prices "
            f"({len(report['shadowed_diff'])}):")
        for line in report["shadowed_diff"]:
            log("  " + line)
    if report["conflicts"]:
        log(f"duplicates with different prices, first kept ({len(report['conflicts'])}):")
        for line in report["conflicts"]:
            log("  " + line)
    log(f"values rounded half up to an integer (in the rows written): {len(report['rounded'])}")
    for line in report["rounded"]:
        log("  " + line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src_group = ap.add_mutually_exclusive_group()
    src_group.add_argument("--version", help="litellm version to download (default: newest)")
    src_group.add_argument("--wheel", type=pathlib.Path, help="an already-downloaded litellm wheel")
    ap.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT,
                    help=f"output CSV (default: {DEFAULT_OUT.relative_to(REPO_ROOT)})")
    args = ap.parse_args()

    if args.wheel:
        src = read_wheel(args.wheel)
    else:
        with tempfile.TemporaryDirectory(prefix="gen-prices-") as tmp:
            src = read_wheel(download_wheel(args.version, pathlib.Path(tmp)))
    log(f"using {PACKAGE} {src.version} ({src.wheel_name})")

    price_map = json.loads(src.text, parse_float=decimal.Decimal,
                           parse_constant=decimal.Decimal)  # NaN/Infinity -> skipped
    rows, report = build_rows(price_map)
    if not rows:
        sys.exit("gen-prices: no rows; refusing to write an empty price list")

    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        f.write(render(rows, src, today))
    print_summary(rows, report, src, args.out)


if __name__ == "__main__":
    main()
