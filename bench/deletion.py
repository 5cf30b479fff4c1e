"""Benchmark 3: a tag-based erasure across every snapshot, each phase against its own bound.

I/O module. One project shaped as the service allows it at full size (Seed.full_size): 100,000
workspace images and 20 trained iterations whose snapshots hold 20,000 to 100,000 of them, plus
about 4,800 images that only a snapshot still holds; one tag of four marks a fifth of them
(20,000 in the workspace). The emulator answers at most 10 Training API calls per second and
keeps its asynchronous 202 deletion lag on. The requester asks for `delete images <p>
--tag-name NAME` (the images carrying the tag, in the workspace or in any snapshot), the bot
previews, an approver clicks Approve, and the bot deletes in batches of 256 (DeleteImages,
allIterations=true), verifies, and posts the receipt. `make bench` runs it at a tenth of that.

Each phase is timed on the emulator's clock and compared with the bound of its own calls (the
calls it made, at 10 per second):
- preview: the command -> the request is pending (its calls: those answered meanwhile);
- deletion: the approval click -> the last DeleteImages answered;
- verification: the last DeleteImages answered -> its last read answered (the receipt is
  written after it, inside the whole erasure's time). The 202 lag is inside
  it but overlapped: the verification reads the workspace (one call per 256 ids) before it
  counts the snapshots, so by then the last batch's lag has passed; only a lag longer than
  those reads would add to the phase, and the bound adds that remainder
  (`unoverlapped_lag_s`).
The whole erasure, command -> done without the approval wait (pending -> click), is compared
with the sum of the three bounds. The 429 answers are counted over the whole request, and the
busiest second of the calls the emulator counted shows the client kept its window full and no
fuller.
"""

from __future__ import annotations

from dataclasses import replace

from bench import report
from bench.harness import BenchError, BotProcess, Emulators, scratch
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from emulators.customvision import Faults, Seed, busiest_second
from emulators.stack import APPROVER, CHANNEL, REQUESTER

TPS = 10.0
PHASE_TARGET = 1.1
WHOLE_TARGET = 1.15
LAG = Faults().async_delete_delay  # the emulator's 202 lag per snapshot, left on


# Scales of the full-size project (emulators.cvdata Seed.full_size: 20 trained iterations;
# the smoke run trains 4, to take seconds).
SIZES: dict[Scale, float] = {"smoke": 0.006, "bench": 0.1, "full": 1.0}


def seed(scale: Scale) -> Seed:
    """Return the full-size project at `scale`, with four tags: one marks a fifth of the
    images (20,000 of the workspace's 100,000 at full size), in every snapshot that holds them."""
    full = replace(Seed.full_size(SIZES[scale]), tags=4, predictions=0)
    return replace(full, iterations=4) if scale == "smoke" else full


def measure(scale: Scale) -> Figures:
    """Preview, approve, delete and verify a tag's images; return one run's figures."""
    emulators = Emulators.start(seed(scale), Faults(tps_cap=TPS))
    cv = emulators.cv
    try:
        data = cv.data
        project = data.project_ids()[0]
        tag = data.tag_ids(project)[0]
        name = data.tag(project, tag).name
        scopes: list[str | None] = [None, *data.iteration_ids(project)]
        targets = {
            image
            for scope in scopes
            for image in data.image_ids(project, scope)
            if tag in data.image_tag_ids(project, image, scope)
        }
        generous = 120 + 10 * len(targets) * len(scopes) / 256 / TPS
        with (
            scratch("deletion") as folder,
            BotProcess(emulators, folder, CUSTOM_VISION_TPS=f"{TPS:g}") as bot,
        ):
            mark = emulators.mark()
            driver = bot.driver()
            asked = cv.clock()
            typed = driver.command(
                REQUESTER.user_id,
                CHANNEL,
                f'delete images {project} --tag-name "{name}" --ticket BENCH-3 --reason benchmark',
            )
            if typed.status_code != 200:
                raise BenchError(f"the command was answered {typed.status_code}")
            # The ack may come before the request is stored (the search of its selectors).
            rid = bot.first_request(timeout=generous)
            bot.wait_status(rid, "pending", timeout=generous)
            pending = cv.clock()
            ts = bot.message_ts(rid)
            bot.wait_approvable(rid)
            clicked = cv.clock()
            click = driver.click(APPROVER.user_id, CHANNEL, ts, "request.approve", rid)
            if click.status_code != 200:
                raise BenchError(f"the approval click was answered {click.status_code}")
            bot.wait_status(rid, "done", timeout=generous)
            done = cv.clock()
        calls = [c for c in emulators.calls_since(mark) if c.operation_id != "Blob"]
        deleted = set(cv.deleted_image_counts())
    finally:
        emulators.close()

    if deleted != targets:
        raise BenchError(f"{len(deleted)} images deleted of {len(targets)}")
    deletes = [c for c in calls if c.operation_id == "DeleteImages" and c.status in (202, 204)]
    last_delete = max(c.time for c in deletes)
    preview_calls = sum(1 for c in calls if c.time <= pending)
    delete_calls = sum(1 for c in calls if clicked <= c.time <= last_delete)
    verify = [c for c in calls if c.time > last_delete]
    verified = max(c.time for c in verify) if verify else last_delete
    # The reads before the first snapshot count overlap the last batch's lag.
    first_count = next(
        (c.time for c in verify if c.operation_id == "GetImageCount" and "iterationId" in c.query),
        last_delete,
    )
    unoverlapped = max(0.0, LAG - (first_count - last_delete))
    preview_s, delete_s, verify_s = pending - asked, last_delete - clicked, verified - last_delete
    bounds = (preview_calls / TPS, delete_calls / TPS, len(verify) / TPS + unoverlapped)
    whole_s = done - asked - (clicked - pending)
    return {
        "images": len(deleted),
        "snapshots": len(scopes) - 1,
        "batches": len(deletes),
        "preview_calls": preview_calls,
        "preview_s": preview_s,
        "preview_bound_s": bounds[0],
        "preview_over_bound": report.ratio(preview_s, bounds[0]),
        "delete_calls": delete_calls,
        "delete_s": delete_s,
        "delete_bound_s": bounds[1],
        "delete_over_bound": report.ratio(delete_s, bounds[1]),
        "verify_calls": len(verify),
        "verify_s": verify_s,
        "unoverlapped_lag_s": unoverlapped,
        "verify_bound_s": bounds[2],
        "verify_over_bound": report.ratio(verify_s, bounds[2]),
        "whole_s": whole_s,
        "whole_bound_s": sum(bounds),
        "whole_over_bound": report.ratio(whole_s, sum(bounds)),
        "throttled": sum(1 for c in calls if c.status == 429),
        "busiest_second": busiest_second(calls),
        "throttled_preview": sum(1 for c in calls if c.status == 429 and c.time <= pending),
        "throttled_deleting": sum(
            1 for c in calls if c.status == 429 and clicked <= c.time <= last_delete
        ),
        "throttled_verifying": sum(1 for c in calls if c.status == 429 and c.time > last_delete),
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    rows: list[Row] = [Row("images erased (and verified gone)", report.count(f["images"]))]
    for key, phase in (("preview", "preview"), ("delete", "deletion"), ("verify", "verification")):
        rows += [
            Row(
                f"{phase}: {f[f'{key}_calls']:,.0f} calls, "
                f"bound {report.seconds(f[f'{key}_bound_s'])}",
                report.seconds(f[f"{key}_s"]),
            ),
            report.within(f"{phase} ÷ its bound", f[f"{key}_over_bound"], PHASE_TARGET),
        ]
    rows += [
        Row(
            "command → receipt without the approval wait, "
            f"bound {report.seconds(f['whole_bound_s'])}",
            report.seconds(f["whole_s"]),
        ),
        report.within("whole erasure ÷ sum of the bounds", f["whole_over_bound"], WHOLE_TARGET),
        Row("429 answers provoked", report.count(f["throttled"]), "0", f["throttled"] == 0),
        Row(
            f"busiest second the emulator counted (context: the cap is {TPS:g})",
            report.count(f["busiest_second"]),
        ),
    ]
    return Result(
        key="deletion",
        title="3. Tag-based erasure across every snapshot",
        setup=(
            f"{f['images']:,.0f} images carrying one tag, in the workspace and "
            f"{f['snapshots']:.0f} trained snapshots; cap {TPS:g} Training API calls/s, "
            f"202 lag {LAG:g} s per snapshot"
        ),
        rows=tuple(rows),
        figures=f,
    )


BENCHMARK = Benchmark("deletion", measure, present)
