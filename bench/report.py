"""Results and the table they are printed as. Pure, except `machine()` (reads /proc and the clock).

A benchmark's `present` turns figures (the median of its runs, see bench.runs) into one
`Result`: rows, some of them checks against the issue's targets (`ok` True/False), the rest
context (`ok` None), each with the spread of its value over the runs, and the numbers in
`figures` (medians) and `samples` (every run's) for `--json` and the smoke tests. `render`
makes one markdown table of every result, headed by the date, the machine and its load, ready
for the README.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

PASS = "pass"
MUL = "\u00d7"  # the multiplication sign of ratios, escaped for the linter
FAIL = "FAIL"
DASH = "\u2013"  # the en dash of ranges (min \u2013 max)


@dataclass(frozen=True)
class Row:
    """One line of the table: a measure, its value, and optionally a target and its verdict."""

    measure: str
    value: str  # the median of the runs
    target: str = ""
    ok: bool | None = None  # None: context, not a check; a check is judged on the median
    spread: str = ""  # the lowest and highest value over the runs ("" for one run)


@dataclass(frozen=True)
class Result:
    """What one benchmark measured."""

    key: str  # "export", "memory", ... (the --only names)
    title: str  # "1. Export throughput"
    setup: str  # sizes and emulator settings, one line
    rows: tuple[Row, ...]
    figures: Mapping[str, float] = field(default_factory=dict)  # medians over the runs
    notes: tuple[str, ...] = ()
    samples: tuple[Mapping[str, float], ...] = ()  # every run's figures, in order

    @property
    def runs(self) -> int:
        """Return how many runs the figures summarize."""
        return max(1, len(self.samples))

    @property
    def checks(self) -> tuple[Row, ...]:
        """Return the rows that are checks against a target."""
        return tuple(r for r in self.rows if r.ok is not None)

    @property
    def ok(self) -> bool:
        """Return True when every check passed."""
        return all(r.ok for r in self.checks)


@dataclass(frozen=True)
class Machine:
    """Facts about the machine a run was measured on."""

    date: str
    cores: int
    memory_gib: float
    cpu: str
    python: str
    system: str
    load: tuple[float, ...] = ()  # 1-minute load averages seen during the run (start, end)

    def line(self) -> str:
        """Return the one-line description printed above the table."""
        text = (
            f"{self.date}, {self.cores} cores ({self.cpu}), {self.memory_gib:.1f} GiB RAM, "
            f"Python {self.python}, {self.system}"
        )
        if self.load:
            text += f", load average {' → '.join(f'{v:.1f}' for v in self.load)}"
        return text


def load_average() -> float:
    """Return the machine's 1-minute load average (0 where the system has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def machine(load: Sequence[float] = ()) -> Machine:
    """Return the facts of this machine (reads /proc where it exists), with `load` seen."""
    memory = 0.0
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/meminfo", encoding="ascii") as fp:
            for line in fp:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) / 1024 / 1024
                    break
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fp:
            for line in fp:
                if line.startswith("model name"):
                    cpu = " ".join(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return Machine(
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        cores=cores or 1,
        memory_gib=memory,
        cpu=cpu or "unknown CPU",
        python=platform.python_version(),
        system=f"{platform.system()} {platform.release()}".strip(),
        load=tuple(load),
    )


# --- formatting ------------------------------------------------------------------------------


def seconds(value: float) -> str:
    """Return a duration for the table: "16.2 s", "0.84 s", "131 s"."""
    if value >= 100:
        return f"{value:,.0f} s"
    if value >= 10:
        return f"{value:.1f} s"
    return f"{value:.2f} s"


def millis(value: float) -> str:
    """Return seconds shown as milliseconds: "12 ms", "3,000 ms"."""
    return f"{value * 1000:,.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def megabytes(value: float) -> str:
    """Return megabytes: "48.3 MB"."""
    return f"{value:,.1f} MB"


def times(value: float) -> str:
    """Return a ratio: 1.08 followed by the multiplication sign."""
    if not math.isfinite(value):
        return f"\u221e{MUL}"
    return f"{value:.1f}{MUL}" if value >= 10 else f"{value:.2f}{MUL}"


def at_most(limit: float) -> str:
    """Return the target text of a ratio that must not exceed `limit`."""
    return f"\u2264 {limit:g}{MUL}"


def within(measure: str, ratio: float, limit: float) -> Row:
    """Return the row of a ratio that must not exceed `limit`, with its target and verdict."""
    return Row(measure, times(ratio), at_most(limit), ratio <= limit)


def at_least(limit: float) -> str:
    """Return the target text of a ratio that must reach `limit`."""
    return f"\u2265 {limit:g}{MUL}"


def count(value: float) -> str:
    """Return a whole number with thousands separators."""
    return f"{round(value):,}"


def percentile(values: Sequence[float], pct: float) -> float:
    """Return the nearest-rank percentile of `values` (pct in 0..100); raise ValueError if empty."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread(values: Sequence[float]) -> str:
    """Return "p50 / p99 / max" of latencies in milliseconds."""
    return " / ".join(
        millis(v) for v in (percentile(values, 50), percentile(values, 99), max(values))
    )


def ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator, infinity when the denominator is zero."""
    return numerator / denominator if denominator > 0 else math.inf


def _verdict(row: Row) -> str:
    if row.ok is None:
        return ""
    return PASS if row.ok else FAIL


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: Sequence[Result], facts: Machine, *, smoke: bool = False) -> str:
    """Return the markdown table of `results`, headed by the machine facts and the runs."""
    runs = sorted({r.runs for r in results})
    lines = [f"Benchmarks measured {facts.line()}."]
    if runs and runs != [1]:
        told = "/".join(str(n) for n in runs)
        lines.append(
            f"Each value is the median of {told} runs, and each target is judged on it; "
            "the spread is the lowest and the highest value of the runs."
        )
    if smoke:
        lines.append(
            "SMOKE RUN: tiny sizes that only show the benchmarks work; the targets do not apply."
        )
    lines += [
        "",
        "| Benchmark | Measure | Median | Spread | Target | Result |",
        "|---|---|---:|---:|---|---|",
    ]
    for result in results:
        first = True
        for row in result.rows:
            name = f"**{result.title}** ({result.setup})" if first else ""
            verdict = "n/a" if smoke and row.ok is not None else _verdict(row)
            lines.append(
                f"| {_cell(name)} | {_cell(row.measure)} | {_cell(row.value)} "
                f"| {_cell(row.spread)} | {_cell(row.target)} | {verdict} |"
            )
            first = False
    notes = [f"- {result.title}: {note}" for result in results for note in result.notes]
    if notes:
        lines += ["", *notes]
    if not smoke:
        checks = [row for result in results for row in result.checks]
        passed = sum(1 for row in checks if row.ok)
        lines += ["", f"{passed} of {len(checks)} targets met."]
    return "\n".join(lines) + "\n"


def to_json(results: Sequence[Result], facts: Machine, *, smoke: bool) -> dict[str, object]:
    """Return every figure and verdict as a JSON-ready dict."""
    return {
        "machine": facts.__dict__,
        "smoke": smoke,
        "python_executable": sys.executable,
        "results": [
            {
                "key": r.key,
                "title": r.title,
                "setup": r.setup,
                "ok": r.ok,
                "runs": r.runs,
                "figures": dict(r.figures),
                "samples": [dict(sample) for sample in r.samples],
                "rows": [row.__dict__ for row in r.rows],
                "notes": list(r.notes),
            }
            for r in results
        ],
    }
