"""Benchmark 7: the same search on two Custom Vision resources, in parallel and one by one.

I/O module. Two resources, each its own emulator (own key, data, and the service's cap of 10
Training API calls per second), each with the same number of projects. The requester types
`/cv find --metadata customer=4711` over signed HTTP; timed from the command to the private
answer. The baseline, measured in the same run: a bot configured with only the first resource,
then one with only the second, one after the other (the sum of the two). Each resource has its
own client and rate limiter, so the two together should take about as long as the slower one.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.harness import BenchError
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from emulators.customvision import Faults, Seed
from emulators.stack import REQUESTER, Stack, start_stack

TPS = 10.0
TARGET = 0.6
FIND = "find --metadata customer=4711"
ANSWERED = "Nothing was changed."


@dataclass(frozen=True)
class Size:
    projects: int  # per resource
    iterations: int


SIZES: dict[Scale, Size] = {
    "smoke": Size(projects=2, iterations=1),
    "bench": Size(projects=12, iterations=2),
    "full": Size(projects=12, iterations=2),
}


def _seed(size: Size, number: int) -> Seed:
    return Seed(
        projects=size.projects,
        iterations=size.iterations,
        tags=2,
        images=20,
        predictions=0,
        image_bytes=64,
        seed=number,
    )


def _timed_find(folder: Path, first: Seed, more: Mapping[str, Seed]) -> tuple[float, int, int]:
    """Start a stack (one resource, or `first` plus `more`), run the find; return its wall
    time, the Training API calls it made on every resource, and how many were answered 429
    (the client waits and retries them)."""
    stack: Stack = start_stack(
        folder,
        seed=first,
        faults=Faults(tps_cap=TPS),
        env={"CUSTOM_VISION_TPS": f"{TPS:g}"},
        more_resources=more,
    )
    try:
        seen = len(stack.slack.ephemerals(user_id=REQUESTER.user_id))
        started = time.perf_counter()
        if stack.command(REQUESTER, FIND).status_code != 200:
            raise BenchError("the find command was not acknowledged")

        def answered() -> bool:
            fresh = stack.slack.ephemerals(user_id=REQUESTER.user_id)[seen:]
            return any(ANSWERED in e.text for e in fresh)

        if not stack.slack.wait_for(answered, timeout=300):
            raise BenchError("find did not answer")
        elapsed = time.perf_counter() - started
        calls = sum(len(cv.calls) for cv in stack.cvs.values())
        throttled = sum(1 for cv in stack.cvs.values() for c in cv.calls if c.status == 429)
        return elapsed, calls - throttled, throttled
    finally:
        stack.close()


def measure(scale: Scale) -> Figures:
    """Time the find on both resources at once and on each alone; return one run's figures."""
    size = SIZES[scale]
    main, dev = _seed(size, 1), _seed(size, 2)
    with tempfile.TemporaryDirectory(prefix="bench-resources-") as scratch:
        folder = Path(scratch)
        # Back to back, so load drift hits both alike.
        both, calls_together, t1 = _timed_find(folder / "both", main, {"dev": dev})
        alone_main, calls_main, t2 = _timed_find(folder / "main", main, {})
        alone_dev, calls_dev, t3 = _timed_find(folder / "dev", dev, {})
    apart = alone_main + alone_dev
    return {
        "projects": size.projects,
        "iterations": size.iterations,
        "together_s": both,
        "apart_s": apart,
        "ratio": report.ratio(both, apart),
        "calls_together": calls_together,
        "calls_apart": calls_main + calls_dev,
        "throttled": t1 + t2 + t3,
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    return Result(
        key="resources",
        title="7. Two resources",
        setup=(
            f"`find --metadata` over {f['projects']:.0f} projects {report.MUL} "
            f"{f['iterations']:.0f} trained iterations on each of 2 resources, cap {TPS:g} "
            "Training API calls/s per resource"
        ),
        rows=(
            Row(
                f"both resources at once ({f['calls_together']:.0f} calls)",
                report.seconds(f["together_s"]),
            ),
            Row(
                f"one after the other: each resource alone, summed ({f['calls_apart']:.0f} calls)",
                report.seconds(f["apart_s"]),
            ),
            report.within("at once ÷ one after the other", f["ratio"], TARGET),
            Row("429 answers per run (context; retried)", report.count(f["throttled"])),
        ),
        figures=f,
    )


BENCHMARK = Benchmark("resources", measure, present)
