"""Benchmark 1: export throughput against the service's cap, and against the SDK-sample way.

I/O module. One project of a few thousand images; the emulator answers at most 10 Training
API calls per second and adds a blob-storage delay to every download. The bot (its own process,
CUSTOM_VISION_TPS=10) exports the project's images with their files from a signed slash
command until the request is done. The lower bound comes from what the run did: its Training
API calls at 10 per second, or its downloads times the delay spread over the bot's download
concurrency, whichever is larger. Then, in this process against the same emulator, the
sequential baseline (bench.baseline) exports the same images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import report
from bench.baseline import export_sequentially
from bench.harness import BenchError, BotProcess, Emulators, request_id, scratch
from bench.report import Result, Row
from bot.config import Config
from emulators.customvision import Faults, Seed
from emulators.stack import CHANNEL, REQUESTER, TRAINING_KEY

TPS = 10.0
BOUND_TARGET = 1.3
SPEEDUP_TARGET = 8.0
LISTINGS = frozenset({"GetImages", "GetTaggedImages", "GetUntaggedImages"})


@dataclass(frozen=True)
class Size:
    images: int
    blob_latency: float  # seconds added to every blob download


FULL = Size(images=3_000, blob_latency=0.040)
SMOKE = Size(images=60, blob_latency=0.005)


def run(*, smoke: bool = False, concurrency: int | None = None) -> Result:
    """Export with the bot, then with the baseline; return the figures."""
    size = SMOKE if smoke else FULL
    seed = Seed(projects=1, iterations=1, tags=4, images=size.images, predictions=0)
    faults = Faults(tps_cap=TPS, blob_latency=size.blob_latency)
    threads = concurrency or Config().download_concurrency
    overrides = {"CUSTOM_VISION_TPS": f"{TPS:g}", "BOT_DOWNLOAD_CONCURRENCY": str(threads)}
    emulators = Emulators.start(seed, faults)
    try:
        project = emulators.cv.data.project_ids()[0]
        expected = len(emulators.cv.data.image_ids(project))
        with scratch("export") as folder:
            with BotProcess(emulators, folder / "bot", **overrides) as bot:
                mark = emulators.mark()
                started = time.monotonic()  # the emulator's clock: comparable with calls
                answer = bot.driver().command(
                    REQUESTER.user_id, CHANNEL, f"export images {project} --ticket BENCH-1"
                )
                rid = request_id(answer)
                # Generous: ten times the slowest plausible run, plus start-up.
                timeout = 60 + 10 * expected * size.blob_latency
                bot.wait_status(rid, "done", timeout=timeout)
                bot_s = time.monotonic() - started
                peak_mb = bot.peak_rss_mb()
            calls = emulators.calls_since(mark)
            baseline_mark = emulators.mark()
            baseline = export_sequentially(
                emulators.cv.endpoint, TRAINING_KEY, project, folder / "baseline"
            )
            baseline_calls = emulators.calls_since(baseline_mark)
    finally:
        emulators.close()

    api = [c for c in calls if c.operation_id != "Blob"]
    answered = [c for c in api if c.status != 429]
    pages = sum(1 for c in answered if c.operation_id in LISTINGS)
    blobs = [c.time for c in calls if c.operation_id == "Blob" and c.status == 200]
    downloads = len(blobs)
    throttled = sum(1 for c in calls if c.status == 429)
    baseline_throttled = sum(1 for c in baseline_calls if c.status == 429)
    if downloads < expected:
        raise BenchError(f"the bot downloaded {downloads} files of {expected} images")
    first_download = min(blobs) - started
    after_downloads = started + bot_s - max(blobs)
    api_bound = len(answered) / TPS
    download_bound = downloads * size.blob_latency / threads
    bound = max(api_bound, download_bound)
    over_bound = report.ratio(bot_s, bound)
    speedup = report.ratio(baseline.seconds, bot_s)
    notes = []
    if baseline.downloads != downloads:
        notes.append(
            f"the baseline downloaded {baseline.downloads:,} files, the bot {downloads:,} "
            "(the bot also reads what the samples skip)."
        )
    delay_ms = size.blob_latency * 1000
    return Result(
        key="export",
        title="1. Export throughput",
        setup=(
            f"{expected:,} images with files, {delay_ms:g} ms per blob download, "
            f"cap {TPS:g} Training API calls/s"
        ),
        rows=(
            Row("bot wall time (slash command → request done)", report.seconds(bot_s)),
            Row(
                f"lower bound: max({len(answered)} API calls ({pages} pages) ÷ {TPS:g}/s, "
                f"{downloads:,} downloads {report.MUL} {delay_ms:g} ms ÷ {threads} threads)",
                report.seconds(bound),
            ),
            report.within("bot ÷ bound", over_bound, BOUND_TARGET),
            Row(
                f"sequential baseline ({baseline.pages} pages of 50, one download at a time)",
                report.seconds(baseline.seconds),
            ),
            Row(
                "baseline ÷ bot",
                report.times(speedup),
                report.at_least(SPEEDUP_TARGET),
                speedup >= SPEEDUP_TARGET,
            ),
            Row(
                "bot timeline: first download answered / last download → done",
                f"{report.seconds(first_download)} / {report.seconds(after_downloads)}",
            ),
            Row("429 answers: bot / baseline", f"{throttled} / {baseline_throttled}"),
            Row("bot peak RSS", report.megabytes(peak_mb)),
        ),
        figures={
            "images": expected,
            "bot_s": bot_s,
            "bound_s": bound,
            "api_bound_s": api_bound,
            "download_bound_s": download_bound,
            "api_calls": len(answered),
            "pages": pages,
            "downloads": downloads,
            "concurrency": threads,
            "blob_latency_s": size.blob_latency,
            "bot_over_bound": over_bound,
            "first_download_s": first_download,
            "after_downloads_s": after_downloads,
            "baseline_s": baseline.seconds,
            "baseline_pages": baseline.pages,
            "baseline_downloads": baseline.downloads,
            "baseline_over_bot": speedup,
            "throttled": throttled,
            "baseline_throttled": baseline_throttled,
            "peak_rss_mb": peak_mb,
        },
        notes=tuple(notes),
    )
