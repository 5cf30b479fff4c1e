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
from bench.runs import Benchmark, Figures, Scale
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


SIZES: dict[Scale, Size] = {
    "smoke": Size(images=60, blob_latency=0.005),
    "bench": Size(images=3_000, blob_latency=0.040),
    "full": Size(images=3_000, blob_latency=0.040),
}


def measure(scale: Scale, *, concurrency: int | None = None) -> Figures:
    """Export with the bot, then with the baseline; return one run's figures."""
    size = SIZES[scale]
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
    blobs = [c.time for c in calls if c.operation_id == "Blob" and c.status == 200]
    downloads = len(blobs)
    if downloads < expected:
        raise BenchError(f"the bot downloaded {downloads} files of {expected} images")
    api_bound = len(answered) / TPS
    download_bound = downloads * size.blob_latency / threads
    bound = max(api_bound, download_bound)
    return {
        "images": expected,
        "bot_s": bot_s,
        "bound_s": bound,
        "api_bound_s": api_bound,
        "download_bound_s": download_bound,
        "api_calls": len(answered),
        "pages": sum(1 for c in answered if c.operation_id in LISTINGS),
        "downloads": downloads,
        "concurrency": threads,
        "blob_latency_s": size.blob_latency,
        "bot_over_bound": report.ratio(bot_s, bound),
        "first_download_s": min(blobs) - started,
        "after_downloads_s": started + bot_s - max(blobs),
        "baseline_s": baseline.seconds,
        "baseline_pages": baseline.pages,
        "baseline_downloads": baseline.downloads,
        "baseline_over_bot": report.ratio(baseline.seconds, bot_s),
        "throttled": sum(1 for c in calls if c.status == 429),
        "baseline_throttled": sum(1 for c in baseline_calls if c.status == 429),
        "peak_rss_mb": peak_mb,
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    notes = []
    if f["baseline_downloads"] != f["downloads"]:
        notes.append(
            f"the baseline downloaded {f['baseline_downloads']:,.0f} files, the bot "
            f"{f['downloads']:,.0f} (the bot also reads what the samples skip)."
        )
    delay_ms = f["blob_latency_s"] * 1000
    return Result(
        key="export",
        title="1. Export throughput",
        setup=(
            f"{f['images']:,.0f} images with files, {delay_ms:g} ms per blob download, "
            f"cap {TPS:g} Training API calls/s"
        ),
        rows=(
            Row("bot wall time (slash command → request done)", report.seconds(f["bot_s"])),
            Row(
                f"lower bound: max({f['api_calls']:.0f} API calls ({f['pages']:.0f} pages) ÷ "
                f"{TPS:g}/s, {f['downloads']:,.0f} downloads {report.MUL} {delay_ms:g} ms ÷ "
                f"{f['concurrency']:.0f} threads)",
                report.seconds(f["bound_s"]),
            ),
            report.within("bot ÷ bound", f["bot_over_bound"], BOUND_TARGET),
            Row(
                f"sequential baseline ({f['baseline_pages']:.0f} pages of 50, one download at "
                "a time)",
                report.seconds(f["baseline_s"]),
            ),
            Row(
                "baseline ÷ bot",
                report.times(f["baseline_over_bot"]),
                report.at_least(SPEEDUP_TARGET),
                f["baseline_over_bot"] >= SPEEDUP_TARGET,
            ),
            Row(
                "bot timeline: first download answered / last download → done",
                f"{report.seconds(f['first_download_s'])} / "
                f"{report.seconds(f['after_downloads_s'])}",
            ),
            Row(
                "429 answers: bot / baseline",
                f"{f['throttled']:.0f} / {f['baseline_throttled']:.0f}",
            ),
            Row("bot peak RSS", report.megabytes(f["peak_rss_mb"])),
        ),
        figures=f,
        notes=tuple(notes),
    )


BENCHMARK = Benchmark("export", measure, present)
