"""`python -m bench [--smoke | --full] [--runs N] [--only export,audit] [--json FILE]`.

Runs the selected benchmarks (bench.runs): each `--runs` times (default 3; --smoke 1) at the
scale asked for: `--smoke` tiny sizes in seconds, the default the scaled sizes of `make bench`
(under 15 minutes in all), `--full` the issues' sizes (`make bench-full`). Each benchmark starts
its own emulators (and bot process), is bounded in time and stops by itself. Progress goes to
stderr; the markdown table of the medians and their spread (for the README) goes to stdout at
the end. The exit code is 0 when every selected benchmark ran (missed targets show as FAIL in
the table; add --strict to exit 1 for them too), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench import (
    ack,
    auditlog,
    burst,
    deletion,
    export,
    memory,
    project,
    report,
    resources,
    search,
)
from bench.report import Result
from bench.runs import RUNS, Benchmark, Scale, stderr

BENCHMARKS: dict[str, Benchmark] = {
    b.key: b
    for b in (
        export.BENCHMARK,
        memory.BENCHMARK,
        deletion.BENCHMARK,
        ack.BENCHMARK,
        auditlog.BENCHMARK,
        burst.BENCHMARK,
        resources.BENCHMARK,
        search.BENCHMARK,
        project.BENCHMARK,
    )
}


def _selection(text: str | None) -> list[str]:
    if not text:
        return list(BENCHMARKS)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    return [name for name in BENCHMARKS if name in chosen]  # the table keeps its order


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _progress(step: str, text: str) -> None:
    stderr(f"{step}: {text}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, not minutes")
    sizes.add_argument("--full", action="store_true", help="the issues' full sizes (long)")
    parser.add_argument(
        "--runs",
        type=_positive,
        metavar="N",
        help=f"runs per benchmark; the table shows medians and spread (default {RUNS}, smoke 1)",
    )
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument(
        "--download-concurrency",
        type=int,
        metavar="N",
        help="BOT_DOWNLOAD_CONCURRENCY for the export benchmark (default: the bot's default)",
    )
    args = parser.parse_args(argv)
    names = _selection(args.only)
    scale: Scale = "smoke" if args.smoke else "full" if args.full else "bench"
    runs = args.runs or (1 if args.smoke else RUNS)

    load = [report.load_average()]
    began = time.perf_counter()
    results: list[Result] = []
    failed: list[str] = []
    for number, name in enumerate(names, 1):
        benchmark = BENCHMARKS[name]
        if name == "export" and args.download_concurrency:
            measure = functools.partial(export.measure, concurrency=args.download_concurrency)
            benchmark = dataclasses.replace(benchmark, measure=measure)
        step = f"[{number}/{len(names)}] {name}"
        stderr(f"{step} ({scale}, {runs} run{'' if runs == 1 else 's'}) ...")
        started = time.perf_counter()
        try:
            result = benchmark.run(scale, runs, progress=functools.partial(_progress, step))
        except Exception:
            traceback.print_exc()
            failed.append(name)
            stderr(f"{step} could not run")
            continue
        results.append(result)
        verdict = "targets met" if result.ok else "TARGET MISSED"
        stderr(f"{step}: {verdict} ({time.perf_counter() - started:.0f} s)")
    load.append(report.load_average())
    stderr(f"all benchmarks: {time.perf_counter() - began:.0f} s")

    facts = report.machine(load)
    print(report.render(results, facts, smoke=args.smoke))
    if failed:
        print(f"Could not run: {', '.join(failed)} (see the errors above).")
    if args.json is not None:
        data = report.to_json(results, facts, smoke=args.smoke)
        data["scale"] = scale
        data["failed"] = failed
        data["seconds"] = time.perf_counter() - began
        args.json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", "utf-8")
    if failed:
        return 1
    if args.strict and not args.smoke and not all(r.ok for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
