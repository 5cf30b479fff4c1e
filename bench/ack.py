"""Benchmark 4: acknowledgement latency while exports run.

I/O module. Eight `export images` requests (with files, so they run for a while) are sent
first; then 200 signed slash commands (`status`, `status R-…`, `help export`), 20 at a time,
each timed from sending to the HTTP answer. A missed acknowledgement is what Slack would show
the user as a timeout: no answer within 3 s, or an answer other than 200. The same load then
goes, in the same run, to a Bolt app wired the default way (bench.default_bolt: the slow work
in a lazy listener on Bolt's own pool), served the same way.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench import report
from bench.harness import (
    BenchError,
    BotProcess,
    Emulators,
    command_bodies,
    scratch,
    send_load,
    wait_until,
)
from bench.load import Answer
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from emulators.customvision import Faults, Seed
from emulators.slack.driver import SlackDriver
from emulators.stack import GROUP_APPROVER, REQUESTER, STRANGER

TPS = 10.0
ACK_LIMIT = 3.0  # Slack's deadline
P99_TARGET = 0.300


@dataclass(frozen=True)
class Size:
    exports: int
    images: int  # per exported project
    blob_latency: float
    commands: int
    concurrency: int


SIZES: dict[Scale, Size] = {
    "smoke": Size(exports=2, images=40, blob_latency=0.005, commands=20, concurrency=5),
    "bench": Size(exports=8, images=1_000, blob_latency=0.030, commands=200, concurrency=20),
    "full": Size(exports=8, images=1_000, blob_latency=0.030, commands=200, concurrency=20),
}


@dataclass(frozen=True)
class LoadRun:
    answers: tuple[Answer, ...]
    export_answers: tuple[Answer, ...]
    busy_after: bool  # exports were still running when the load ended

    def latencies(self) -> list[float]:
        return [a.latency for a in self.answers]

    def missed(self) -> int:
        return sum(1 for a in self.answers if a.missed(ACK_LIMIT))


def _bodies(driver: SlackDriver, texts: Sequence[str]) -> list[bytes]:
    people = (REQUESTER, GROUP_APPROVER, STRANGER)
    return command_bodies(driver, ((people[i % 3].user_id, t) for i, t in enumerate(texts)))


def _start_exports(driver: SlackDriver, projects: Sequence[str]) -> list[Answer]:
    # Sent together, as eight people would; the answers tell whether the exports were accepted.
    bodies = _bodies(driver, [f"export images {p} --ticket BENCH-4" for p in projects])
    return send_load(driver, bodies, concurrency=len(bodies), timeout=ACK_LIMIT)


def _load_texts(size: Size) -> list[str]:
    cycle = ("status", "status R-1001", "help export")
    return [cycle[i % len(cycle)] for i in range(size.commands)]


def _measure(process: BotProcess, projects: Sequence[str], size: Size, *, bot: bool) -> LoadRun:
    driver = process.driver(timeout=ACK_LIMIT)
    exports = _start_exports(driver, projects)
    if bot:
        if any(a.status != 200 for a in exports):
            raise BenchError("the bot did not accept the export requests")
        wait_until(
            lambda: process.statuses().get("running", 0) > 0,
            timeout=30,
            what="an export to start running",
        )
    else:
        time.sleep(0.5)  # the lazy listeners have started on Bolt's pool
    answers = send_load(
        driver,
        _bodies(driver, _load_texts(size)),
        concurrency=size.concurrency,
        timeout=ACK_LIMIT,
    )
    busy = True
    if bot:
        busy = any(process.statuses().get(s, 0) > 0 for s in ("running", "queued"))
    return LoadRun(tuple(answers), tuple(exports), busy)


def measure(scale: Scale) -> Figures:
    """Measure the bot, then the default-way Bolt app, under the same load; return figures."""
    size = SIZES[scale]
    seed = Seed(projects=size.exports, iterations=1, tags=4, images=size.images, predictions=0)
    faults = Faults(tps_cap=TPS, blob_latency=size.blob_latency)
    emulators = Emulators.start(seed, faults)
    try:
        projects = emulators.cv.data.project_ids()
        with scratch("ack") as folder:
            env = {"CUSTOM_VISION_TPS": f"{TPS:g}"}
            with BotProcess(emulators, folder / "bot", **env) as process:
                ours = _measure(process, projects, size, bot=True)
            with BotProcess.default_bolt(emulators, folder / "bolt", **env) as process:
                theirs = _measure(process, projects, size, bot=False)
    finally:
        emulators.close()
    mine, other = ours.latencies(), theirs.latencies()
    bot_p99 = report.percentile(mine, 99)
    bolt_p99 = report.percentile(other, 99)
    return {
        "exports": size.exports,
        "images": size.images,
        "blob_latency_s": size.blob_latency,
        "concurrency": size.concurrency,
        "commands": len(ours.answers),
        "bot_p50_s": report.percentile(mine, 50),
        "bot_p99_s": bot_p99,
        "bot_max_s": max(mine),
        "bot_missed": ours.missed(),
        "bolt_commands": len(theirs.answers),
        "bolt_p50_s": report.percentile(other, 50),
        "bolt_p99_s": bolt_p99,
        "bolt_max_s": max(other),
        "bolt_missed": theirs.missed(),
        "bolt_exports": len(theirs.export_answers),
        "bolt_export_missed": sum(1 for a in theirs.export_answers if a.missed(ACK_LIMIT)),
        "bolt_over_bot_p99": report.ratio(bolt_p99, bot_p99),
        "bot_busy_after_load": float(ours.busy_after),
    }


def _latencies(f: Figures, app: str) -> str:
    return " / ".join(report.millis(f[f"{app}_{p}_s"]) for p in ("p50", "p99", "max"))


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    notes = []
    if not f["bot_busy_after_load"]:
        notes.append("the bot's exports had all finished before the load ended.")
    n = f"{f['commands']:.0f}"
    return Result(
        key="ack",
        title="4. Acknowledgement latency",
        setup=(
            f"{n} slash commands, {f['concurrency']:.0f} at a time, while "
            f"{f['exports']:.0f} exports of {f['images']:,.0f} images with files run "
            f"({f['blob_latency_s'] * 1000:g} ms per blob, cap {TPS:g} calls/s)"
        ),
        rows=(
            Row("cv-dsr-bot: p50 / p99 / max", _latencies(f, "bot")),
            Row(
                "cv-dsr-bot p99",
                report.millis(f["bot_p99_s"]),
                f"< {P99_TARGET * 1000:g} ms",
                f["bot_p99_s"] < P99_TARGET,
            ),
            Row(
                "cv-dsr-bot missed acknowledgements (> 3 s or not 200)",
                f"{f['bot_missed']:.0f} of {n}",
                "0",
                f["bot_missed"] == 0,
            ),
            Row(
                "default Bolt app (lazy listener on Bolt's pool): p50 / p99 / max",
                _latencies(f, "bolt"),
            ),
            Row(
                "default Bolt app missed acknowledgements",
                f"{f['bolt_missed']:.0f} of {f['bolt_commands']:.0f} "
                f"(and {f['bolt_export_missed']:.0f} of its {f['bolt_exports']:.0f} "
                "export commands)",
            ),
            Row("default p99 ÷ cv-dsr-bot p99", report.times(f["bolt_over_bot_p99"])),
        ),
        figures=f,
        notes=tuple(notes),
    )


BENCHMARK = Benchmark("ack", measure, present)
