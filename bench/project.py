"""Benchmark 9: the metadata export of a whole full-size project, against the calls it must make.

I/O module. The project is as big as the service allows (bench.harness.full_size_project:
100,000 images, 20 trained iterations whose snapshots hold 20,000 to 100,000 images, a few
thousand images only a snapshot holds; `make bench` 2% of it). The emulator answers
at most 10 Training API calls per second (sliding window) and keeps Azure's link expiry and
asynchronous deletion lag. A fresh bot (its own process, CUSTOM_VISION_TPS=10) exports it
from a signed slash command, `export project <id> --no-images`, until the request is done.

The bound is the least number of Training API calls that export needs, at 10 per second:
GetProject and GetIterations; per trained iteration its performance and its exports; the tags
of the workspace and of each snapshot; the images of each scope (workspace and every
snapshot) in pages of 256, until a short page (n // 256 + 1 pages for n images, since the
service gives no total with a page); the stored predictions in pages of 256 by continuation.
Counting the images first (GetImageCount) is not needed to export them, so it is not in the
bound. Nothing else is: the package is written while the pages arrive.

Memory: the bot's peak RSS (VmHWM) for the full-size project against the same export of a
project of 2,000 images of the same shape (20 iterations; `make bench`: 2,000 against 500),
each in a fresh bot process.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from bench import report
from bench.harness import (
    BenchError,
    BotProcess,
    Emulators,
    full_size_project,
    scratch,
)
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from bot.training import MAX_TAKE
from emulators.customvision import Faults, Seed
from emulators.stack import REQUESTER

TPS = 10.0  # the service's cap; the smoke run allows 100 calls/s to stay quick
SMOKE_TPS = 100.0
BOUND_TARGET = 1.1
GROWTH_TARGET_MB = 30.0
# The comparison for memory: the same shape at 2,000 images (bench: 500, smoke: 50).
SMALL_SCALE: dict[Scale, float] = {"smoke": 0.0005, "bench": 0.005, "full": 0.02}
LISTINGS = frozenset({"GetImages", "GetTaggedImages", "GetUntaggedImages"})
COUNTS = frozenset({"GetImageCount", "GetTaggedImageCount", "GetUntaggedImageCount"})


@dataclass(frozen=True)
class Export:
    """One metadata export, as the emulator and the bot process saw it."""

    images: int  # workspace images
    snapshots: int  # trained iterations
    records: int  # image records listed: workspace plus every snapshot
    snapshot_only: int  # images only a snapshot holds
    least_calls: int
    calls: collections.Counter[str]  # answered Training API calls by operation
    throttled: int
    seconds: float
    calls_s: float  # from the first Training API call's arrival to the last one's
    tail_s: float  # from the last Training API call's arrival to the request done
    idle_mb: float
    peak_mb: float


def least_calls(emulators: Emulators, project: str) -> tuple[int, int, int, int]:
    """Return (least calls, least pages, image records, snapshot-only images) of `project`."""
    data = emulators.cv.data
    iterations = data.iteration_ids(project)
    sizes = [
        data.api_image_count(project, iteration_id=scope, status="All", tag_ids=())
        for scope in [None, *iterations]
    ]
    predictions = len(data.prediction_ids(project))
    pages = sum(n // MAX_TAKE + 1 for n in sizes)  # GetImages until a short page
    calls = (
        2  # GetProject, GetIterations
        + 2 * len(iterations)  # GetIterationPerformance, GetExports
        + len(sizes)  # GetTags per scope
        + pages
        + max(1, -(-predictions // MAX_TAKE))  # QueryPredictions
    )
    return calls, pages, sum(sizes), len(data.snapshot_only_ids(project))


def export_project(seed: Seed, tps: float) -> Export:
    """Export the seeded project's metadata in a fresh bot; return what it took."""
    emulators = Emulators.start(seed, Faults(tps_cap=tps))
    try:
        project = emulators.cv.data.project_ids()[0]
        least, least_pages, records, snapshot_only = least_calls(emulators, project)
        with (
            scratch("project") as folder,
            BotProcess(emulators, folder, CUSTOM_VISION_TPS=f"{tps:g}") as bot,
        ):
            idle = bot.peak_rss_mb()
            mark = emulators.mark()
            started = time.monotonic()  # the emulator's Call.time is monotonic too
            text = f"export project {project} --no-images --ticket BENCH-8"
            rid = bot.ask(REQUESTER.user_id, text)
            # Ten times the bound, plus start-up.
            bot.wait_status(rid, "done", timeout=60 + 10 * least / tps)
            ended = time.monotonic()
            peak = bot.peak_rss_mb()
        made = emulators.calls_since(mark)
    finally:
        emulators.close()
    api = [c for c in made if c.operation_id != "Blob"]
    calls = collections.Counter(c.operation_id for c in api if c.status != 429)
    pages = sum(calls[op] for op in LISTINGS)
    if pages < least_pages:
        raise BenchError(f"the bot listed {pages} pages of images, of at least {least_pages}")
    return Export(
        images=len(emulators.cv.data.image_ids(project)),
        snapshots=len(emulators.cv.data.iteration_ids(project)),
        records=records,
        snapshot_only=snapshot_only,
        least_calls=least,
        calls=calls,
        throttled=sum(1 for c in api if c.status == 429),
        seconds=ended - started,
        calls_s=max(c.time for c in api) - min(c.time for c in api),
        tail_s=ended - max(c.time for c in api),
        idle_mb=idle,
        peak_mb=peak,
    )


def measure(scale: Scale) -> Figures:
    """Export the full-size project and the 2,000-image one; return one run's figures."""
    tps = SMOKE_TPS if scale == "smoke" else TPS
    large = export_project(full_size_project(scale), tps)
    small = export_project(Seed.full_size(SMALL_SCALE[scale]), tps)
    bound = large.least_calls / tps
    made = sum(large.calls.values())
    return {
        "tps": tps,
        "images": large.images,
        "snapshots": large.snapshots,
        "records": large.records,
        "snapshot_only": large.snapshot_only,
        "least_calls": large.least_calls,
        "calls": made,
        "pages": sum(large.calls[op] for op in LISTINGS),
        "counts": sum(large.calls[op] for op in COUNTS),
        "throttled": large.throttled,
        "seconds": large.seconds,
        "tail_s": large.tail_s,
        "calls_s": large.calls_s,
        # The calls' own pace: their span against one call per 1/rate (the client's limiter
        # spaces them 5% wider, bot.training.HEADROOM, and widens after a 429).
        "pace": report.ratio(large.calls_s, max(1, made - 1) / tps),
        "bound_s": bound,
        "over_bound": report.ratio(large.seconds, bound),
        "calls_over_least": report.ratio(made, large.least_calls),
        "peak_mb": large.peak_mb,
        "idle_mb": large.idle_mb,
        "small_images": small.images,
        "small_peak_mb": small.peak_mb,
        "small_seconds": small.seconds,
        # A peak a little lower than the small one's is noise: no growth.
        "growth_mb": max(0.0, large.peak_mb - small.peak_mb),
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    return Result(
        key="project",
        title="9. Metadata export of a full-size project",
        setup=(
            f"`export project --no-images`: {f['images']:,.0f} images, {f['snapshots']:.0f} "
            f"trained iterations, {f['records']:,.0f} image records, "
            f"{f['snapshot_only']:,.0f} images only in snapshots; cap {f['tps']:g} Training "
            "API calls/s"
        ),
        rows=(
            Row("bot wall time (slash command → request done)", report.seconds(f["seconds"])),
            Row(
                f"bound: {f['least_calls']:,.0f} calls the export needs ÷ {f['tps']:g}/s",
                report.seconds(f["bound_s"]),
            ),
            report.within("bot ÷ bound", f["over_bound"], BOUND_TARGET),
            Row(
                f"Training API calls made ({f['pages']:,.0f} pages, {f['counts']:.0f} counts) "
                "÷ the least",
                report.times(f["calls_over_least"]),
            ),
            Row("429 answers (retried)", report.count(f["throttled"])),
            Row(
                "first → last Training API call ÷ (calls - 1) ÷ rate (the client's pacing)",
                f"{report.seconds(f['calls_s'])}, {report.times(f['pace'])}",
            ),
            Row("from the last Training API call to done", report.seconds(f["tail_s"])),
            Row("bot peak RSS", report.megabytes(f["peak_mb"])),
            Row(
                f"the same export of {f['small_images']:,.0f} images "
                f"({report.seconds(f['small_seconds'])}): peak RSS",
                report.megabytes(f["small_peak_mb"]),
            ),
            Row(
                f"peak RSS growth from {f['small_images']:,.0f} to {f['images']:,.0f} images",
                report.megabytes(f["growth_mb"]),
                f"\u2264 {GROWTH_TARGET_MB:g} MB",
                f["growth_mb"] <= GROWTH_TARGET_MB,
            ),
        ),
        figures=f,
    )


BENCHMARK = Benchmark("project", measure, present)
