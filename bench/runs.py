"""How a benchmark is run: at which scale, how many times, and the median and spread of its runs.

A benchmark is two functions (`Benchmark`): `measure(scale)` does one run and returns its
figures (plain numbers: sizes, seconds, counts, and every ratio a target is judged on, computed
within that run so that the machine's load cancels), and `present(figures)` turns figures into
the rows of the table. `Benchmark.run` measures `runs` times, presents the median of each
figure (so a target counts as met only on the median), and gives each row the spread of its
value: the same row presented from the lowest and from the highest value of every figure.
`present` therefore only formats and compares; it never divides one figure by another.

Scales: "smoke" (tiny, seconds: the test suite runs it), "bench" (`make bench`: the same code
at sizes that keep the whole suite of three runs under 15 minutes on a 2-core machine) and
"full" (`make bench-full`: the sizes the issues name).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal, get_args

from bench.report import DASH, Result

Scale = Literal["smoke", "bench", "full"]
SCALES: tuple[Scale, ...] = get_args(Scale)
RUNS = 3  # the default number of runs (smoke: 1)
Figures = Mapping[str, float]


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: a key (the --only name), one run's measurement, and its presentation."""

    key: str
    measure: Callable[[Scale], Figures]
    present: Callable[[Figures], Result]

    def run(
        self,
        scale: Scale = "smoke",
        runs: int = 1,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> Result:
        """Measure `runs` times at `scale`; return the result of the medians with spreads."""
        samples: list[Figures] = []
        for number in range(1, runs + 1):
            started = time.perf_counter()
            samples.append(dict(self.measure(scale)))
            if progress is not None and runs > 1:
                progress(f"run {number}/{runs}: {time.perf_counter() - started:.0f} s")
        return summarize(self, samples)


def summarize(benchmark: Benchmark, samples: Sequence[Figures]) -> Result:
    """Return `benchmark`'s result for the medians of `samples`, each row with its spread.

    A figure missing from some runs is summarized over the runs that have it.
    """
    if not samples:
        raise ValueError("no runs to summarize")
    keys = list(dict.fromkeys(key for sample in samples for key in sample))
    values = {key: [s[key] for s in samples if key in s] for key in keys}
    median = {key: float(statistics.median(v)) for key, v in values.items()}
    shown = benchmark.present(median)
    rows = shown.rows
    if len(samples) > 1:
        low = benchmark.present({key: min(v) for key, v in values.items()}).rows
        high = benchmark.present({key: max(v) for key, v in values.items()}).rows
        if len(low) == len(high) == len(rows):
            rows = tuple(
                replace(row, spread=_spread(a.value, b.value))
                for row, a, b in zip(rows, low, high, strict=True)
            )
    return replace(shown, rows=rows, figures=median, samples=tuple(samples))


def _spread(low: str, high: str) -> str:
    return "" if low == high else f"{low} {DASH} {high}"


def stderr(message: str) -> None:
    """Print a progress line to stderr (the table goes to stdout)."""
    print(message, file=sys.stderr, flush=True)
