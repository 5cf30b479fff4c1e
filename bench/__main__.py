"""`python -m bench [--smoke] [--only export,audit] [--json FILE]`: benchmarks and their table.

Each benchmark starts its own emulators (and bot process), is bounded in time and stops by
itself. Progress goes to stderr; the markdown table (for the README) goes to stdout at the end.
The exit code is 0 when every selected benchmark ran (missed targets show as FAIL in the
table; add --strict to exit 1 for them too), 1 when one could not run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import ack, auditlog, burst, deletion, export, memory, report, resources
from bench.report import Result

BENCHMARKS: dict[str, Callable[..., Result]] = {
    "export": export.run,
    "memory": memory.run,
    "deletion": deletion.run,
    "ack": ack.run,
    "audit": auditlog.run,
    "burst": burst.run,
    "resources": resources.run,
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks; return the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: seconds, not minutes")
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

    results: list[Result] = []
    failed: list[str] = []
    for number, name in enumerate(names, 1):
        print(f"[{number}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        try:
            options = {"concurrency": args.download_concurrency} if name == "export" else {}
            result = BENCHMARKS[name](smoke=args.smoke, **options)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            print(f"[{number}/{len(names)}] {name} could not run", file=sys.stderr, flush=True)
            continue
        results.append(result)
        verdict = "targets met" if result.ok else "TARGET MISSED"
        elapsed = time.perf_counter() - started
        print(
            f"[{number}/{len(names)}] {name}: {verdict} ({elapsed:.0f} s)",
            file=sys.stderr,
            flush=True,
        )

    facts = report.machine()
    print(report.render(results, facts, smoke=args.smoke))
    if failed:
        print(f"Could not run: {', '.join(failed)} (see the errors above).")
    if args.json is not None:
        data = report.to_json(results, facts, smoke=args.smoke)
        data["failed"] = failed
        args.json.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", "utf-8")
    if failed:
        return 1
    if args.strict and not args.smoke and not all(r.ok for r in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
