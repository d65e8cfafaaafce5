"""Run every benchmark (bench/bench_*.py) and print a summary of ratios against their targets.

    .venv/bin/python bench/run.py [--only catalog] [--seconds 5] [--rounds 3]

bench_scale.py (a million products, 20 million views) runs only when named: --only scale.

A missed target is a finding, not a failure: the exit code is 0 unless a benchmark could not
run. Results also go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from common import RESULTS_DIR, Context, Result, choose_load_generator, finish

BENCH_DIR = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only bench_<NAME>.py (repeatable), e.g. --only catalog",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="auto: wrk (a prerequisite) if installed, else the harness's Python threads",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=4,
        help="concurrent connections of the load generator (default 4)",
    )
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="length of each throughput round (default 5)"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating throughput rounds per server (default 3)"
    )
    parser.add_argument(
        "--latency-requests",
        type=int,
        default=300,
        help="sequential requests timed per catalog size (default 300)",
    )
    parser.add_argument(
        "--keep-databases",
        action="store_true",
        help="leave the bench_* databases in MariaDB after the run",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="where to write the results (default bench/results/latest.json)",
    )
    args = parser.parse_args(argv)
    if not (0.5 <= args.seconds <= 60 and 1 <= args.rounds <= 10 and 1 <= args.connections <= 64):
        parser.error("--seconds must be 0.5-60, --rounds 1-10, --connections 1-64")
    if not 10 <= args.latency_requests <= 5000:
        parser.error("--latency-requests must be 10-5000")
    return args


# Run only when named with --only: building their databases takes many minutes.
ON_REQUEST = {"bench_scale"}


def discover(only: list[str]) -> list[str]:
    names = sorted(path.stem for path in BENCH_DIR.glob("bench_*.py"))
    if not only:
        return [name for name in names if name not in ON_REQUEST]
    wanted = {name if name.startswith("bench_") else f"bench_{name}" for name in only}
    unknown = wanted - set(names)
    if unknown:
        raise SystemExit(f"No such benchmark: {', '.join(sorted(unknown))} (have {names})")
    return [name for name in names if name in wanted]


def table(results: list[Result]) -> str:
    rows = [("Benchmark", "Measured", "Ratio", "Target", "Result")]
    rows += [
        (r.name, r.measured, f"{r.ratio:.3f}", str(r.target), "PASS" if r.passed else "MISS")
        for r in results
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def machine_load() -> str:
    """CPU count and load average: other work on the machine skews every figure."""
    one, five, _fifteen = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} (1 min), {five:.2f} (5 min)"


def stop_on_sigterm(_signum, _frame) -> None:
    # Turn SIGTERM into an exception so every server is stopped on the way out.
    raise KeyboardInterrupt


def run_all(names: list[str], ctx: Context, results: list[Result], failed: list[str]) -> None:
    for name in names:
        print(f"\n== {name} ({machine_load()})", flush=True)
        module_started = time.monotonic()
        try:
            results.extend(importlib.import_module(name).run(ctx))
        except KeyboardInterrupt:
            raise
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"  ({time.monotonic() - module_started:.0f}s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    started = time.monotonic()
    began_at = datetime.now(UTC)
    names = discover(args.only)
    print(f"Benchmarks: {', '.join(names)}", flush=True)
    ctx = Context(
        load=choose_load_generator(args.load_generator, args.connections),
        rounds=args.rounds,
        seconds=args.seconds,
        latency_requests=args.latency_requests,
        keep_databases=args.keep_databases,
    )
    print(f"Load generator: {ctx.load.name}", flush=True)
    load_before = machine_load()
    print(f"Machine: {load_before}", flush=True)

    results: list[Result] = []
    failed: list[str] = []
    try:
        run_all(names, ctx, results, failed)
    except KeyboardInterrupt:
        print("\nInterrupted.", file=sys.stderr)
        return 130
    finally:
        if left := finish():
            print(f"ended what was left running: {left}", flush=True)

    elapsed = time.monotonic() - started
    print()
    if results:
        print(table(results))
    for name in failed:
        print(f"ERROR: {name} could not run (see above).")
    load_after = machine_load()
    print(f"\nMachine at the end: {load_after}")
    print(f"Total time: {elapsed:.0f}s", flush=True)

    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "started_at": began_at.isoformat(timespec="seconds"),
                "seconds": round(elapsed, 1),
                "load_generator": ctx.load.name,
                "machine": {"before": load_before, "after": load_after},
                "results": [result.as_dict() for result in results],
                "errors": failed,
            },
            indent=2,
        )
        + "\n"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
