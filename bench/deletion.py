"""Benchmark 3: erasure throughput under the service's cap, without provoking throttling.

I/O module. A project of 50,000 images (its workspace and one trained iteration); the emulator
answers at most 10 Training API calls per second. The requester asks for
`delete images <p> --all`, the bot computes the preview, an approver clicks Approve, and the
bot deletes in batches of 256 (DeleteImages, allIterations=true), then verifies. Timed from the
click to the last DeleteImages answer; the bound is the batches sent at 10 per second. The
429 answers are counted from the emulator's call record over the whole request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench import report
from bench.harness import BenchError, BotProcess, Emulators, request_id, scratch
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from bot.training import MAX_IMAGE_IDS
from emulators.customvision import Faults, Seed
from emulators.stack import APPROVER, CHANNEL, REQUESTER

TPS = 10.0
BOUND_TARGET = 1.15


@dataclass(frozen=True)
class Size:
    workspace: int  # workspace images; the seeded iteration also keeps 1 in 20 retired ones


# Seed(iterations=1) keeps every 20th image only in the trained iteration: 47,500 workspace
# images make 50,000 distinct images to erase.
SIZES: dict[Scale, Size] = {
    "smoke": Size(workspace=570),
    "bench": Size(workspace=9_500),
    "full": Size(workspace=47_500),
}


def measure(scale: Scale) -> Figures:
    """Preview, approve and execute the deletion; return one run's figures."""
    size = SIZES[scale]
    seed = Seed(projects=1, iterations=1, tags=4, images=size.workspace, predictions=0)
    emulators = Emulators.start(seed, Faults(tps_cap=TPS))
    try:
        data = emulators.cv.data
        project = data.project_ids()[0]
        targets = set(data.image_ids(project))
        for iteration in data.iteration_ids(project):
            targets.update(data.image_ids(project, iteration))
        batches_expected = -(-len(targets) // MAX_IMAGE_IDS)
        calls_per_pass = batches_expected * (1 + len(data.iteration_ids(project)))
        with (
            scratch("deletion") as folder,
            BotProcess(emulators, folder, CUSTOM_VISION_TPS=f"{TPS:g}") as bot,
        ):
            mark = emulators.mark()
            driver = bot.driver()
            asked = time.perf_counter()
            rid = request_id(
                driver.command(
                    REQUESTER.user_id,
                    CHANNEL,
                    f"delete images {project} --all --ticket BENCH-3 --reason benchmark",
                )
            )
            bot.wait_status(rid, "pending", timeout=60 + 5 * calls_per_pass / TPS)
            preview_s = time.perf_counter() - asked
            ts = bot.message_ts(rid)
            approved_at = emulators.cv.clock()
            clicked = time.perf_counter()
            click = driver.click(APPROVER.user_id, CHANNEL, ts, "request.approve", rid)
            if click.status_code != 200:
                raise BenchError(f"the approval click was answered {click.status_code}")
            bot.wait_status(rid, "done", timeout=120 + 5 * calls_per_pass / TPS)
            done_s = time.perf_counter() - clicked
        calls = emulators.calls_since(mark)
        deleted = len(emulators.cv.deleted_image_counts())
    finally:
        emulators.close()

    deletes = [c for c in calls if c.operation_id == "DeleteImages" and c.status in (200, 202, 204)]
    if not deletes:
        raise BenchError("the bot sent no DeleteImages call")
    if deleted != len(targets):
        raise BenchError(f"{deleted} images deleted of {len(targets)}")
    delete_s = max(c.time for c in deletes) - approved_at
    bound = len(deletes) / TPS
    return {
        "images": deleted,
        "batches": len(deletes),
        "delete_s": delete_s,
        "bound_s": bound,
        "delete_over_bound": report.ratio(delete_s, bound),
        "throttled": sum(1 for c in calls if c.status == 429),
        "throttled_while_deleting": sum(
            1 for c in calls if c.status == 429 and c.time >= approved_at
        ),
        "preview_s": preview_s,
        "done_s": done_s,
        "api_calls": sum(1 for c in calls if c.operation_id != "Blob"),
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    return Result(
        key="deletion",
        title="3. Deletion throughput",
        setup=(
            f"{f['images']:,.0f} images (workspace and one trained iteration), cap {TPS:g} "
            "Training API calls/s"
        ),
        rows=(
            Row("images deleted (and verified gone)", report.count(f["images"])),
            Row("approval click → last DeleteImages answered", report.seconds(f["delete_s"])),
            Row(
                f"bound: {f['batches']:.0f} batches of 256 ÷ {TPS:g}/s",
                report.seconds(f["bound_s"]),
            ),
            report.within("deletion ÷ bound", f["delete_over_bound"], BOUND_TARGET),
            Row(
                "429 answers provoked (preview, deletion and verification)",
                report.count(f["throttled"]),
                "0",
                f["throttled"] == 0,
            ),
            Row("preview (command → pending, context)", report.seconds(f["preview_s"])),
            Row(
                "approval click → done, with verification (context)",
                report.seconds(f["done_s"]),
            ),
        ),
        figures=f,
    )


BENCHMARK = Benchmark("deletion", measure, present)
