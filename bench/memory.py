"""Benchmark 2: the bot's memory does not grow with the project.

I/O module. Each run is a fresh bot process (peak RSS is a per-process high-water mark:
VmHWM in /proc/<pid>/status) exporting one project from a signed slash command: the metadata
of a small and of a very large project (`export images <p> --no-files`), and the files of a
project of a few thousand images. The emulator caps Training API calls at 10 per second as the
service does, so listings take as long as they would for real.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import report
from bench.harness import BotProcess, Emulators, request_id, scratch
from bench.report import Result, Row
from bot.emulators.customvision import Faults, Seed
from bot.emulators.stack import CHANNEL, REQUESTER

TPS = 10.0
GROWTH_TARGET_MB = 30.0


@dataclass(frozen=True)
class Sizes:
    small: int  # images, metadata only
    large: int  # images, metadata only
    files: int  # images, with their files


FULL = Sizes(small=2_000, large=100_000, files=3_000)
SMOKE = Sizes(small=100, large=600, files=60)


@dataclass(frozen=True)
class Measured:
    images: int
    idle_mb: float  # peak RSS once serving, before the export
    peak_mb: float  # peak RSS after the export
    seconds: float


def measure(images: int, *, files: bool) -> Measured:
    """Export `images` images (metadata only unless `files`) in a fresh bot; return its RSS."""
    seed = Seed(projects=1, iterations=1, tags=4, images=images, predictions=0)
    emulators = Emulators.start(seed, Faults(tps_cap=TPS))
    try:
        project = emulators.cv.data.project_ids()[0]
        text = f"export images {project}" + ("" if files else " --no-files")
        with (
            scratch("memory") as folder,
            BotProcess(emulators, folder, CUSTOM_VISION_TPS=f"{TPS:g}") as bot,
        ):
            idle = bot.peak_rss_mb()
            started = time.perf_counter()
            rid = request_id(bot.driver().command(REQUESTER.user_id, CHANNEL, text))
            # Listing alone takes images / 256 pages at 10 per second; allow ten times that.
            bot.wait_status(rid, "done", timeout=60 + images / 256 / TPS * 10 + images * 0.01)
            seconds = time.perf_counter() - started
            peak = bot.peak_rss_mb()
    finally:
        emulators.close()
    return Measured(images, idle, peak, seconds)


def run(*, smoke: bool = False) -> Result:
    """Measure the three exports; return the figures."""
    sizes = SMOKE if smoke else FULL
    small = measure(sizes.small, files=False)
    large = measure(sizes.large, files=False)
    with_files = measure(sizes.files, files=True)
    growth = large.peak_mb - small.peak_mb
    return Result(
        key="memory",
        title="2. Memory",
        setup=(
            f"peak RSS (VmHWM) of a fresh bot process per export, cap {TPS:g} Training API calls/s"
        ),
        rows=(
            Row(
                f"metadata of {small.images:,} images ({report.seconds(small.seconds)})",
                report.megabytes(small.peak_mb),
            ),
            Row(
                f"metadata of {large.images:,} images ({report.seconds(large.seconds)})",
                report.megabytes(large.peak_mb),
            ),
            Row(
                f"growth from {small.images:,} to {large.images:,} images",
                report.megabytes(growth),
                f"< {GROWTH_TARGET_MB:g} MB",
                growth < GROWTH_TARGET_MB,
            ),
            Row(
                f"files of {with_files.images:,} images ({report.seconds(with_files.seconds)})",
                report.megabytes(with_files.peak_mb),
            ),
            Row("bot idle after start-up (context)", report.megabytes(small.idle_mb)),
        ),
        figures={
            "small_images": small.images,
            "large_images": large.images,
            "files_images": with_files.images,
            "small_mb": small.peak_mb,
            "large_mb": large.peak_mb,
            "files_mb": with_files.peak_mb,
            "idle_mb": small.idle_mb,
            "growth_mb": growth,
            "small_s": small.seconds,
            "large_s": large.seconds,
            "files_s": with_files.seconds,
        },
    )
