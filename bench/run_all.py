"""Run every benchmark in bench/, one after the other, and write one table of their figures.

Each `bench/*_bench.py` runs as its own subprocess with a timeout; its human output is shown
as it goes, and its figures are the `BENCH {"name", "value", "unit"}` lines it prints. The
table, with a description of the machine (CPU, cores, memory, Python, PostgreSQL, Redis, the
Bitcoin node, the date), goes to bench/RESULTS.md and replaces the part of README.md between
the `bench-results` markers.

    .venv/bin/python bench/run_all.py [--only lifecycle] [--timeout 1200] [--no-readme]
    make bench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
BASE_DIR = BENCH_DIR.parent
RESULTS = BENCH_DIR / "RESULTS.md"
README = BASE_DIR / "README.md"
README_START = "<!-- bench-results:start -->"
README_END = "<!-- bench-results:end -->"
# The usual order: libraries first, then the watchers, then the whole engine, then the API.
PREFERRED = ["vaultero", "devnode", "bitcoin", "chainwatch", "lifecycle", "api"]
BENCH_LINE = re.compile(r"^BENCH (\{.*\})\s*$")


@dataclass
class Outcome:
    name: str
    status: str = "ok"
    seconds: float = 0.0
    figures: list[dict[str, Any]] = field(default_factory=list)
    tail: str = ""


def discover(only: list[str]) -> list[tuple[str, Path]]:
    found = {p.name.removesuffix("_bench.py"): p for p in BENCH_DIR.glob("*_bench.py")}
    order = [n for n in PREFERRED if n in found] + sorted(set(found) - set(PREFERRED))
    if only:
        unknown = set(only) - set(found)
        if unknown:
            raise SystemExit(f"run_all: no such benchmark: {', '.join(sorted(unknown))}")
        order = [n for n in order if n in only]
    return [(name, found[name]) for name in order]


def run_one(name: str, path: Path, timeout: float) -> Outcome:
    outcome = Outcome(name)
    print(f"\n=== {name} ({path.relative_to(BASE_DIR)}, timeout {timeout:.0f} s)", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        cwd=BASE_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its nodes and workers share its process group
    )
    lines: list[str] = []

    def relay() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            print(f"  | {lines[-1]}", flush=True)

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        outcome.status = f"timed out after {timeout:.0f} s"
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(timeout=10)
    outcome.seconds = time.monotonic() - started
    if outcome.status == "ok" and proc.returncode != 0:
        outcome.status = f"failed (exit {proc.returncode})"
    for line in lines:
        match = BENCH_LINE.match(line)
        if match:
            with suppress(json.JSONDecodeError):  # a garbled line is not a figure
                outcome.figures.append(json.loads(match.group(1)))
    if outcome.status == "ok" and not outcome.figures:
        outcome.status = "no figures printed"
    outcome.tail = "\n".join(lines[-5:])
    return outcome


# --- the machine ----------------------------------------------------------------------------
def _first(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def machine(load_at_start: float) -> dict[str, str]:
    cpu = _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown"
    memory = _first("/proc/meminfo", "MemTotal")
    if memory.endswith("kB"):
        memory = f"{int(memory.split()[0]) / 1024**2:.1f} GiB"
    described = {
        "date (UTC)": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "CPU": cpu,
        "cores": str(os.cpu_count()),
        "memory": memory or "unknown",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "PostgreSQL": _postgres_version(),
        "Redis": _redis_version(),
        "Bitcoin node": _bitcoin_node(),
        # Other work on the machine skews the figures: this says how busy it was.
        "load average (1 min), start / end": f"{load_at_start:.2f} / {os.getloadavg()[0]:.2f}",
    }
    return described


def _postgres_version() -> str:
    try:
        import psycopg2

        conn = psycopg2.connect("dbname=postgres user=postgres host=127.0.0.1 port=5432")
        with conn.cursor() as cursor:
            cursor.execute("SHOW server_version")
            row = cursor.fetchone()
        conn.close()
        return str(row[0]) if row else "unknown"
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def _redis_version() -> str:
    try:
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        version = str(client.info("server").get("redis_version", "unknown"))
        client.close()
        return version
    except Exception as exc:
        return f"unreachable ({type(exc).__name__})"


def _bitcoin_node() -> str:
    sys.path.insert(0, str(BASE_DIR))
    from btcloan.dev.localnodes import find_bitcoind

    binary = find_bitcoind()
    return f"bitcoind ({binary})" if binary else "devnode (embedded, libbitcoinkernel)"


# --- the table ------------------------------------------------------------------------------
def fmt(value: float) -> str:
    if value != value:  # NaN: no sample
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(outcomes: list[Outcome], described: dict[str, str], load_at_start: float) -> str:
    lines = ["| machine | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in described.items()]
    lines += ["", "| benchmark | figure | value | unit |", "|---|---|---:|---|"]
    for outcome in outcomes:
        if outcome.status != "ok" and not outcome.figures:
            lines.append(f"| {outcome.name} | **{outcome.status}** | | |")
            continue
        for figure in outcome.figures:
            name = str(figure.get("name", "?"))
            label = name.split(": ", 1)[1] if name.startswith(f"{outcome.name}: ") else name
            lines.append(
                f"| {outcome.name} | {label} | {fmt(float(figure.get('value', float('nan'))))} "
                f"| {figure.get('unit', '')} |"
            )
        if outcome.status != "ok":
            lines.append(f"| {outcome.name} | **{outcome.status}** | | |")
    took = ", ".join(f"{o.name} {o.seconds:.0f} s" for o in outcomes)
    lines += ["", f"Run time: {took}."]
    if max(os.getloadavg()[0], load_at_start) > (os.cpu_count() or 1):
        lines += [
            "",
            "The machine was busy with other work during this run (load average above its "
            "core count): these figures are lower than a quiet machine gives.",
        ]
    return "\n".join(lines) + "\n"


def write_results(body: str) -> None:
    RESULTS.write_text(
        "# Benchmark results\n\n"
        "Written by `bench/run_all.py` (`make bench`); each figure comes from the benchmark's "
        "own `BENCH` line. What each measures and how: the docstring of `bench/<name>_bench.py`."
        "\n\n" + body
    )


def update_readme(body: str) -> bool:
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    README.write_text(text[: start + len(README_START)] + "\n" + body + text[end:])
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="a benchmark's short name")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per benchmark")
    parser.add_argument("--no-readme", action="store_true", help="leave README.md alone")
    args = parser.parse_args()

    load_at_start = os.getloadavg()[0]
    benches = discover(args.only)
    print("benchmarks: " + ", ".join(name for name, _ in benches))
    outcomes = [run_one(name, path, args.timeout) for name, path in benches]
    body = table(outcomes, machine(load_at_start), load_at_start)
    write_results(body)
    print(f"\nwrote {RESULTS.relative_to(BASE_DIR)}")
    if not args.no_readme and update_readme(body):
        print(f"updated the Benchmarks section of {README.relative_to(BASE_DIR)}")
    print()
    print(body)
    return 0 if all(o.status == "ok" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
