"""Benchmark 1: an export with files against its bound, a bare parallel fetch, and the SDK way.

I/O module. Two projects, exported one after the other: 3,000 images and 20,000 in `make
bench-full` (1,500 and 3,000 in `make bench`, to keep it under 15 minutes); the emulator
answers at most 10 Training API calls per second (a sliding window) and adds a blob-storage
delay to every download. For each:

- the bot (its own process, CUSTOM_VISION_TPS=10) exports the project's images with their
  files from a signed slash command until the request is done; its CPU time (user + system,
  from /proc) over that span, with that of its download process (bot.fetcher, ended and
  reaped before the request is done: /proc's cutime + cstime), gives its CPU seconds per
  1,000 images, and the download process's share is shown too;
- its lower bound comes from what the run did: its Training API calls at 10 per second, or its
  downloads times the delay spread over its download threads, whichever is larger (each part
  is a floor: nothing the bot adds to the calls and downloads, listing, packaging, upload,
  is counted in it);
- the bare parallel fetch (bench.barefetch, its own process) fetches the same images from the
  same emulator: GetImages pages of 256 and the same number of download threads, writing
  nothing. The bot's packaging must hide behind the network: bot ÷ bare fetch is what it adds.

With the first project the sequential baseline (bench.baseline, the SDK samples' way) also runs, on
the first SEQUENTIAL_IMAGES images: one download at a time, so its time grows in step with the
images, and the table shows it scaled to the whole project.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from bench import report
from bench.barefetch import fetch
from bench.baseline import export_sequentially
from bench.harness import BenchError, BotProcess, Emulators, request_id, scratch
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from bot.config import Config
from emulators.customvision import Faults, Seed
from emulators.stack import CHANNEL, REQUESTER, TRAINING_KEY

TPS = 10.0
BOUND_TARGET = 1.15
BARE_TARGET = 1.25
SPEEDUP_TARGET = 8.0
SEQUENTIAL_IMAGES = 500
LISTINGS = frozenset({"GetImages", "GetTaggedImages", "GetUntaggedImages"})


@dataclass(frozen=True)
class Size:
    images: int
    large: int  # images of the second project
    blob_latency: float  # seconds added to every blob download


SIZES: dict[Scale, Size] = {
    "smoke": Size(images=60, large=120, blob_latency=0.005),
    "bench": Size(images=1_500, large=3_000, blob_latency=0.040),
    "full": Size(images=3_000, large=20_000, blob_latency=0.040),
}


def measure(scale: Scale, *, concurrency: int | None = None) -> Figures:
    """Export both projects with the bot and fetch them bare; return one run's figures."""
    size = SIZES[scale]
    threads = concurrency or Config().download_concurrency
    figures = dict(_export(size.images, size.blob_latency, threads, sequential=True))
    large = _export(size.large, size.blob_latency, threads, sequential=False)
    figures.update({f"large_{key}": value for key, value in large.items()})
    return figures


def _export(images: int, blob_latency: float, threads: int, *, sequential: bool) -> Figures:
    seed = Seed(projects=1, iterations=1, tags=4, images=images, predictions=0)
    faults = Faults(tps_cap=TPS, blob_latency=blob_latency)
    overrides = {"CUSTOM_VISION_TPS": f"{TPS:g}", "BOT_DOWNLOAD_CONCURRENCY": str(threads)}
    emulators = Emulators.start(seed, faults)
    figures: dict[str, float] = {}
    try:
        endpoint = emulators.cv.endpoint
        project = emulators.cv.data.project_ids()[0]
        expected = len(emulators.cv.data.image_ids(project))
        with scratch("export") as folder:
            with BotProcess(emulators, folder / "bot", **overrides) as bot:
                mark = emulators.mark()
                cpu = bot.cpu_seconds()
                fetcher_cpu = _children_cpu(bot.pid)
                started = time.monotonic()  # the emulator's clock: comparable with calls
                answer = bot.driver().command(
                    REQUESTER.user_id, CHANNEL, f"export images {project} --ticket BENCH-1"
                )
                rid = request_id(answer)
                # Generous: ten times the slowest plausible run, plus start-up.
                timeout = 60 + 10 * expected * blob_latency
                bot.wait_status(rid, "done", timeout=timeout)
                bot_s = time.monotonic() - started
                fetcher_cpu = _children_cpu(bot.pid) - fetcher_cpu
                bot_cpu = bot.cpu_seconds() - cpu + fetcher_cpu
                peak_mb = bot.peak_rss_mb()
            calls = emulators.calls_since(mark)
            bare_mark = emulators.mark()
            bare = fetch(endpoint, TRAINING_KEY, project, threads=threads, tps=TPS)
            bare_calls = emulators.calls_since(bare_mark)
            if sequential:
                limit = min(expected, SEQUENTIAL_IMAGES)
                baseline = export_sequentially(
                    endpoint, TRAINING_KEY, project, folder / "baseline", limit=limit
                )
                scaled = baseline.seconds * expected / max(1, baseline.downloads)
                figures.update(
                    baseline_s=scaled,
                    baseline_measured_s=baseline.seconds,
                    baseline_images=baseline.downloads,
                    baseline_pages=baseline.pages,
                    baseline_over_bot=report.ratio(scaled, bot_s),
                    baseline_throttled=baseline.throttled,
                )
    finally:
        emulators.close()

    api = [c for c in calls if c.operation_id != "Blob"]
    answered = [c for c in api if c.status != 429]
    blobs = [c.time for c in calls if c.operation_id == "Blob" and c.status == 200]
    downloads = len(blobs)
    if downloads < expected:
        raise BenchError(f"the bot downloaded {downloads} files of {expected} images")
    if bare.downloads != expected:
        raise BenchError(f"the bare fetch downloaded {bare.downloads} files of {expected} images")
    api_bound = len(answered) / TPS
    download_bound = downloads * blob_latency / threads
    bound = max(api_bound, download_bound)
    return {
        **figures,
        "images": expected,
        "bot_s": bot_s,
        "bound_s": bound,
        "api_bound_s": api_bound,
        "download_bound_s": download_bound,
        "api_calls": len(answered),
        "pages": sum(1 for c in answered if c.operation_id in LISTINGS),
        "downloads": downloads,
        "concurrency": threads,
        "blob_latency_s": blob_latency,
        "bot_over_bound": report.ratio(bot_s, bound),
        "bare_s": bare.seconds,
        "bare_pages": bare.pages,
        "bot_over_bare": report.ratio(bot_s, bare.seconds),
        "bot_cpu_per_1000": bot_cpu * 1000 / expected,
        "fetcher_cpu_per_1000": fetcher_cpu * 1000 / expected,
        "bare_cpu_per_1000": bare.cpu_s * 1000 / expected,
        "first_download_s": min(blobs) - started,
        "after_downloads_s": started + bot_s - max(blobs),
        "throttled": sum(1 for c in calls if c.status == 429),
        "bare_throttled": sum(1 for c in bare_calls if c.status == 429),
        "peak_rss_mb": peak_mb,
    }


def _children_cpu(pid: int) -> float:
    """Return the CPU time (user + system) of the ended and reaped children of a live
    process (proc(5)'s cutime and cstime), in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fp:
        fields = fp.read().rpartition(")")[2].split()  # fields 16 and 17: the 14th and 15th
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _rows(f: Figures, prefix: str) -> list[Row]:
    """Return the rows of one project's export (figures under `prefix`)."""

    def g(key: str) -> float:
        return f[prefix + key]

    n = f"{g('images'):,.0f} images"
    delay_ms = g("blob_latency_s") * 1000
    return [
        Row(f"{n}: bot wall time (slash command → request done)", report.seconds(g("bot_s"))),
        Row(
            f"{n}: lower bound: max({g('api_calls'):.0f} API calls ({g('pages'):.0f} pages) ÷ "
            f"{TPS:g}/s, {g('downloads'):,.0f} downloads {report.MUL} {delay_ms:g} ms ÷ "
            f"{g('concurrency'):.0f} threads)",
            report.seconds(g("bound_s")),
        ),
        report.within(f"{n}: bot ÷ bound", g("bot_over_bound"), BOUND_TARGET),
        Row(
            f"{n}: bare parallel fetch ({g('bare_pages'):.0f} pages of 256, "
            f"{g('concurrency'):.0f} threads, nothing written)",
            report.seconds(g("bare_s")),
        ),
        report.within(f"{n}: bot ÷ bare fetch", g("bot_over_bare"), BARE_TARGET),
        Row(
            f"{n}: CPU seconds per 1,000 images: bot with its download process (of which the "
            "download process) / bare fetch",
            f"{g('bot_cpu_per_1000'):.2f} s ({g('fetcher_cpu_per_1000'):.2f} s) / "
            f"{g('bare_cpu_per_1000'):.2f} s",
        ),
        Row(
            f"{n}: bot timeline: first download answered / last download → done",
            f"{report.seconds(g('first_download_s'))} / {report.seconds(g('after_downloads_s'))}",
        ),
        Row(
            f"{n}: 429 answers: bot / bare fetch",
            f"{g('throttled'):.0f} / {g('bare_throttled'):.0f}",
        ),
        Row(f"{n}: bot peak RSS", report.megabytes(g("peak_rss_mb"))),
    ]


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    delay_ms = f["blob_latency_s"] * 1000
    rows = _rows(f, "")
    rows += [
        Row(
            f"sequential baseline ({f['baseline_pages']:.0f} pages of 50, one download at "
            f"a time; {f['baseline_measured_s']:.1f} s for the first "
            f"{f['baseline_images']:,.0f} images, scaled to {f['images']:,.0f})",
            report.seconds(f["baseline_s"]),
        ),
        Row(
            "baseline ÷ bot",
            report.times(f["baseline_over_bot"]),
            report.at_least(SPEEDUP_TARGET),
            f["baseline_over_bot"] >= SPEEDUP_TARGET,
        ),
    ]
    rows += _rows(f, "large_")
    return Result(
        key="export",
        title="1. Export with files",
        setup=(
            f"{f['images']:,.0f} and {f['large_images']:,.0f} images with files, "
            f"{delay_ms:g} ms per blob download, cap {TPS:g} Training API calls/s"
        ),
        rows=tuple(rows),
        figures=f,
    )


BENCHMARK = Benchmark("export", measure, present)
