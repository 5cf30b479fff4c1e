"""Benchmark 2: the bot's memory does not grow with the project.

I/O module. Each run is a fresh bot process (peak RSS is a per-process high-water mark:
VmHWM in /proc/<pid>/status) exporting one project from a signed slash command: the metadata
of a small and of a very large project (`export images <p> --no-files`), and the files of a
project of a few thousand images. The emulator caps Training API calls at 10 per second as the
service does, so listings take as long as they would for real.

The index pages and COCO file (bot.browse) are measured on their own, in a fresh process per
size (`python -m bench.memory pages N`): a package of N images with their files and listing,
then `add_views`; the growth of the peak from the small to the large package is the figure.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import report
from bench.harness import BotProcess, Emulators, child_env, peak_rss_mb, scratch
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from emulators.customvision import Faults, Seed
from emulators.stack import REQUESTER

TPS = 10.0
GROWTH_TARGET_MB = 30.0
PAGES_GROWTH_TARGET_MB = 15.0


@dataclass(frozen=True)
class Sizes:
    small: int  # images, metadata only
    large: int  # images, metadata only
    files: int  # images, with their files
    pages_small: int  # images of a package whose index pages are built
    pages_large: int


SIZES: dict[Scale, Sizes] = {
    "smoke": Sizes(small=100, large=600, files=60, pages_small=50, pages_large=600),
    "bench": Sizes(small=2_000, large=10_000, files=1_500, pages_small=2_000, pages_large=10_000),
    "full": Sizes(small=2_000, large=100_000, files=3_000, pages_small=2_000, pages_large=20_000),
}


@dataclass(frozen=True)
class Measured:
    images: int
    idle_mb: float  # peak RSS once serving, before the export
    peak_mb: float  # peak RSS after the export
    seconds: float


def measure_export(images: int, *, files: bool) -> Measured:
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
            rid = bot.ask(REQUESTER.user_id, text)
            # Listing alone takes images / 256 pages at 10 per second; allow ten times that.
            bot.wait_status(rid, "done", timeout=60 + images / 256 / TPS * 10 + images * 0.01)
            seconds = time.perf_counter() - started
            peak = bot.peak_rss_mb()
    finally:
        emulators.close()
    return Measured(images, idle, peak, seconds)


def _image(n: int) -> dict[str, object]:
    """A training image as the Training API lists it: tags, regions, metadata, addresses."""
    tags = [(str(uuid.UUID(int=t + 1)), f"tag {t}") for t in (n % 7, (n + 3) % 7)]
    return {
        "id": str(uuid.UUID(int=(n + 1) << 64)),
        "created": "2025-01-12T09:00:00Z",
        "width": 640 + n % 400,
        "height": 480 + n % 300,
        "resizedImageUri": f"https://blob.example/i-{n}?sig=abc",
        "thumbnailUri": f"https://blob.example/t-{n}?sig=abc",
        "originalImageUri": f"https://blob.example/o-{n}?sig=abc",
        "tags": [
            {"tagId": i, "tagName": name, "created": "2025-01-12T09:00:02Z"} for i, name in tags
        ],
        "regions": [
            {
                "regionId": str(uuid.UUID(int=n * 8 + k + 1)),
                "tagId": i,
                "tagName": name,
                "left": 0.1 * k,
                "top": 0.2,
                "width": 0.3,
                "height": 0.25,
            }
            for k, (i, name) in enumerate(tags)
        ],
        "metadata": {"camera": f"cam-{n % 13}", "site": "north"},
    }


def build_pages(images: int, folder: Path) -> dict[str, float]:
    """Build a package of `images` images and its index pages; return peak RSS and seconds."""
    from bot import browse
    from bot.package import PackageInfo, PackageWriter, image_path
    from bot.pngbytes import png

    now = datetime(2026, 1, 1, tzinfo=UTC)
    project = str(uuid.UUID(int=7))
    info = PackageInfo("R-1", "U1", None, None, "export project", "bench", "v3.3", now)
    with PackageWriter(folder, info, max_part_bytes=100 << 20, clock=lambda: now) as writer:
        writer.write_json(
            "projects.json",
            [
                {
                    "id": project,
                    "name": "Bench",
                    "description": None,
                    "settings": {"classificationType": None},
                }
            ],
        )
        writer.write_json(
            "tags.json",
            {
                "workspace": [
                    {
                        "id": str(uuid.UUID(int=t + 1)),
                        "name": f"tag {t}",
                        "description": None,
                        "type": "Regular",
                        "imageCount": 0,
                    }
                    for t in range(7)
                ]
            },
        )
        picture = png(64, 48, "bench")
        with writer.jsonl("images.jsonl") as sink:
            for n in range(images):
                image = _image(n)
                name = image_path(str(image["id"]), None, "png")
                src = writer.temp_dir / f"{n}.png"
                src.write_bytes(picture)
                writer.add_file(name, src)
                sink.write(
                    {"scope": "workspace", "iterationId": None, "image": image, "file": name}
                )
        listed_mb = peak_rss_mb(os.getpid())
        # Linux: writing 5 to clear_refs resets the peak (VmHWM) to the current RSS, so the
        # figure is the pages' own peak, not the listing's before nor the manifest's after.
        with contextlib.suppress(OSError):  # without it: the growth of the peak, a lower bound
            Path("/proc/self/clear_refs").write_text("5")
        before_mb = peak_rss_mb(os.getpid())
        started = time.perf_counter()
        browse.add_views(writer, info, built_at=now, project_id=project)
        seconds = time.perf_counter() - started
        pages_mb = peak_rss_mb(os.getpid()) - before_mb
        writer.finish()
    return {"listed_mb": listed_mb, "pages_mb": pages_mb, "seconds": seconds}


def measure_pages(images: int) -> dict[str, float]:
    """Run `build_pages` in a fresh process (its own peak RSS); return its figures."""
    with scratch("pages") as folder:
        done = subprocess.run(
            [sys.executable, "-m", "bench.memory", "pages", str(images), str(folder)],
            env=child_env({}),
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def measure(scale: Scale) -> Figures:
    """Measure the three exports and the index pages; return one run's figures."""
    sizes = SIZES[scale]
    small = measure_export(sizes.small, files=False)
    large = measure_export(sizes.large, files=False)
    with_files = measure_export(sizes.files, files=True)
    pages_small = measure_pages(sizes.pages_small)
    pages_large = measure_pages(sizes.pages_large)
    return {
        "small_images": small.images,
        "large_images": large.images,
        "files_images": with_files.images,
        "small_mb": small.peak_mb,
        "large_mb": large.peak_mb,
        "files_mb": with_files.peak_mb,
        "idle_mb": small.idle_mb,
        "growth_mb": large.peak_mb - small.peak_mb,
        "small_s": small.seconds,
        "large_s": large.seconds,
        "files_s": with_files.seconds,
        "pages_small_images": sizes.pages_small,
        "pages_large_images": sizes.pages_large,
        "pages_small_mb": pages_small["pages_mb"],
        "pages_large_mb": pages_large["pages_mb"],
        "pages_growth_mb": max(0.0, pages_large["pages_mb"] - pages_small["pages_mb"]),
        "pages_small_s": pages_small["seconds"],
        "pages_large_s": pages_large["seconds"],
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    small, large = f"{f['small_images']:,.0f}", f"{f['large_images']:,.0f}"
    pages_small, pages_large = f"{f['pages_small_images']:,.0f}", f"{f['pages_large_images']:,.0f}"
    return Result(
        key="memory",
        title="2. Memory",
        setup=(
            f"peak RSS (VmHWM) of a fresh bot process per export, cap {TPS:g} Training API calls/s"
        ),
        rows=(
            Row(
                f"metadata of {small} images ({report.seconds(f['small_s'])})",
                report.megabytes(f["small_mb"]),
            ),
            Row(
                f"metadata of {large} images ({report.seconds(f['large_s'])})",
                report.megabytes(f["large_mb"]),
            ),
            Row(
                f"growth from {small} to {large} images",
                report.megabytes(f["growth_mb"]),
                f"< {GROWTH_TARGET_MB:g} MB",
                f["growth_mb"] < GROWTH_TARGET_MB,
            ),
            Row(
                f"files of {f['files_images']:,.0f} images ({report.seconds(f['files_s'])})",
                report.megabytes(f["files_mb"]),
            ),
            Row("bot idle after start-up (context)", report.megabytes(f["idle_mb"])),
            Row(
                f"index pages + COCO of {pages_small} images, peak above the "
                f"package writer's ({report.seconds(f['pages_small_s'])})",
                report.megabytes(f["pages_small_mb"]),
            ),
            Row(
                f"index pages + COCO of {pages_large} images, peak above the "
                f"package writer's ({report.seconds(f['pages_large_s'])})",
                report.megabytes(f["pages_large_mb"]),
            ),
            Row(
                f"growth of the pages' peak from {pages_small} to {pages_large} images",
                report.megabytes(f["pages_growth_mb"]),
                f"< {PAGES_GROWTH_TARGET_MB:g} MB",
                f["pages_growth_mb"] < PAGES_GROWTH_TARGET_MB,
            ),
        ),
        figures=f,
    )


BENCHMARK = Benchmark("memory", measure, present)


if __name__ == "__main__":  # python -m bench.memory pages N FOLDER (measure_pages' child)
    if len(sys.argv) != 4 or sys.argv[1] != "pages":
        raise SystemExit("usage: python -m bench.memory pages N FOLDER")
    print(json.dumps(build_pages(int(sys.argv[2]), Path(sys.argv[3]))))
