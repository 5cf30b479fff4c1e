"""End to end: the numbers a person reads agree with what they count.

Deletion receipts: a deletion whose items end differently (removed by this request; already
absent, because someone else deleted them first; outcome unknown, because the call and the
re-read after it both failed; not attempted; survived verification) runs through the surfaces:
signed commands and clicks into the bot, the Custom Vision emulator changed behind the bot's
back and its fault switches. The per-project summary of receipt.json, the per-item results of
receipt.csv and receipt.json, the summary table of receipt.html and the message in the
request's thread must all give the same numbers.

Export packages: index.html's counts (tags, images, COCO) and the "ready" message give the
manifest's numbers, for a project whose trained snapshots hold a tag the workspace no longer
has.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from bot import audit
from bot.deletion import SUMMARY_KEYS
from emulators.customvision import Exchange, Seed
from emulators.stack import APPROVER, CHANNEL, Stack
from tests.conftest import StartStack, exported, request_pending
from tests.test_e2e_plan import someone_else, thread

SEED = Seed(projects=2, iterations=2, tags=3, images=40, predictions=6, image_bytes=256)

# The per-item `result` words, and the summary column each one is counted in.
RESULT_COLUMN = {
    "removed by this request": "removed",
    "already absent (not removed by this request)": "already_absent",
    "outcome unknown (a retry re-reads it first)": "outcome_unknown",
    "not removed": "not_removed",
    "not attempted": "not_attempted",
}
VERIFIED_COLUMN = {"gone": "verified_gone", "survived": "survived", "": "not_verified"}
SUMMARY_TITLE = "What was removed, per project"
# receipt.json's summary keys are bot.deletion.SUMMARY_KEYS, in the order of receipt.html's
# columns; the browser test holds the headings' words.


class _Tables(HTMLParser):
    """Every <table> under the heading before it (h2 or h3): {heading: [header row, rows...]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.heading = ""
        self.in_heading = False
        self.cell: list[str] | None = None
        self.row: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3"):
            self.in_heading, self.heading = True, ""
        elif tag == "table":
            self.tables[self.heading] = []
        elif tag == "tr":
            self.row = []
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3"):
            self.in_heading = False
        elif tag in ("td", "th") and self.cell is not None:
            self.row.append("".join(self.cell))
            self.cell = None
        elif tag == "tr":
            self.tables[self.heading].append(self.row)

    def handle_data(self, data: str) -> None:
        if self.in_heading:
            self.heading += data
        elif self.cell is not None:
            self.cell.append(data)


def html_tables(page: str) -> dict[str, list[list[str]]]:
    parser = _Tables()
    parser.feed(page)
    return parser.tables


def receipt_files(stack: Stack, rid: str) -> list[dict[str, Any]]:
    """Each round's receipt as posted: {"json": document, "csv": rows, "html": text}."""
    stack.wait_delivered()
    posted = {f.name: f.data for f in stack.slack.files(CHANNEL)}
    rounds = []
    for n in range(1, 10):
        stem = f"{rid}-receipt" + ("" if n == 1 else f"-{n}")
        if f"{stem}.json" not in posted:
            break
        rounds.append(
            {
                "json": json.loads(posted[f"{stem}.json"]),
                "csv": list(csv.DictReader(io.StringIO(posted[f"{stem}.csv"].decode("utf-8")))),
                "html": posted[f"{stem}.html"].decode("utf-8"),
            }
        )
    return rounds


def tally(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
    """What the per-item results add up to, per project and kind."""
    out: dict[tuple[str, str], Counter[str]] = {}
    for item in items:
        row = out.setdefault((item["project_id"], item["kind"]), Counter())
        row["planned"] += 1
        row[RESULT_COLUMN[item["result"]]] += 1
        row[VERIFIED_COLUMN[item["verified"] or ""]] += 1
    return {key: {c: row[c] for c in SUMMARY_KEYS} for key, row in out.items()}


def assert_summaries_agree(receipt: dict[str, Any]) -> dict[str, int]:
    """receipt.json, .csv and .html agree with the items; return the image row of the summary."""
    document = receipt["json"]
    from_json = tally(document["items"])
    assert from_json == tally(receipt["csv"])
    table = html_tables(receipt["html"])[SUMMARY_TITLE]
    header, body = table[0], table[1:]
    assert header == ["Project", "What", *SUMMARY_KEYS.values()], table
    shown = {(row[0], row[1]): [int(v.replace(",", "")) for v in row[2:]] for row in body}
    plural = {"image": "images", "prediction": "stored predictions"}
    assert shown == {(p, plural[k]): list(c.values()) for (p, k), c in from_json.items()}
    summary = {(r["project_id"], r["kind"]): r for r in document["summary"]}
    assert {k: {c: r[c] for c in SUMMARY_KEYS} for k, r in summary.items()} == from_json
    (images,) = [counts for (_, kind), counts in from_json.items() if kind == "image"]
    return images


def test_e2e_receipt_summary_counts_what_this_request_removed(stacks: StartStack) -> None:
    stack = stacks(seed=SEED, verify_timeout=3.0)
    project = stack.cv.data.project_ids()[0]
    stack.cv.data.add_images(project, 600)  # three batches of at most 256
    rid = request_pending(stack, f"delete images {project} --untagged")
    number = stack.bot.store.get(rid).number
    batches: dict[int, list[str]] = {}
    for item in stack.bot.store.deletion_items(number):
        batches.setdefault(item.batch, []).append(item.target_id)
    first, second, third = (batches[b] for b in sorted(batches))
    assert len(first) == len(second) == 256 and third
    # Someone else deletes three images of the first batch and two of the third first.
    absent = first[:3] + third[:2]
    someone_else(stack).delete_images(project, absent, all_iterations=True)
    stack.cv.data.settle()

    def second_call_unanswered(exchange: Exchange) -> None:
        # The second DeleteImages is applied but never answered, and the service cannot be
        # read afterwards, so its outcome stays unknown.
        if exchange.operation_id != "DeleteImages":
            return
        if "DeleteImages" not in stack.cv.faults.fail_after_apply:
            stack.cv.faults.fail_after_apply["DeleteImages"] = "504"
        else:
            stack.cv.faults.fail_after["GetImagesByIds"] = 0

    stack.cv.hooks.append(second_call_unanswered)
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "failed", "done", timeout=120) == "failed"
    (partial,) = receipt_files(stack, rid)
    assert partial["json"]["outcome"] == "partial"
    images = assert_summaries_agree(partial)
    assert images == {
        "planned": 256 * 2 + len(third),
        "removed": 256 - 3,
        "already_absent": 3,
        "outcome_unknown": 256,
        "not_removed": 0,
        "not_attempted": len(third),
        "verified_gone": 0,
        "survived": 0,
        "not_verified": 256 * 2 + len(third),
    }
    said = "\n".join(thread(stack, rid))
    assert "Removed: 253 images." in said, said
    assert "Already absent (not removed by this request): 3 images." in said, said
    assert "Outcome unknown (the service could not be re-read): 256 images." in said, said
    assert f"Not removed yet: {len(third)} images." in said, said

    stack.cv.hooks.remove(second_call_unanswered)
    stack.cv.faults.fail_after.clear()
    stack.cv.faults.fail_after_apply.clear()
    stack.command(APPROVER, f"retry {rid}")
    assert stack.wait_status(rid, "done", "failed", timeout=120) == "done"
    _, final = receipt_files(stack, rid)
    assert final["json"]["outcome"] == "done"
    images = assert_summaries_agree(final)
    planned = 256 * 2 + len(third)
    assert images == {
        "planned": planned,
        "removed": planned - 5,  # the unknown ones were re-read first: gone, so removed
        "already_absent": 5,
        "outcome_unknown": 0,
        "not_removed": 0,
        "not_attempted": 0,
        "verified_gone": planned,
        "survived": 0,
        "not_verified": 0,
    }
    said = "\n".join(thread(stack, rid))
    assert f"{planned - 5} images deleted and verified gone" in said, said
    assert "5 images already absent (not removed by this request)" in said, said
    # The audit log's record of the outcome says the same.
    (completed,) = [
        e.details
        for e in audit.events(stack.bot.db.conn, request_id=rid)
        if e.action == "request.completed"
    ]
    assert completed == {
        "counts": {"image": planned},
        "removed": {"image": planned - 5},
        "already_absent": {"image": 5},
        "verified": planned,
    }


def test_e2e_receipt_summary_counts_survivors_apart(stacks: StartStack) -> None:
    stack = stacks(seed=SEED, verify_timeout=1.0)
    project = stack.cv.data.project_ids()[0]
    iteration = stack.cv.data.iteration_ids(project)[0]
    images = stack.cv.data.image_ids(project, iteration)[:4]
    assert len(images) == 4
    rid = request_pending(stack, f"delete images {project} --ids {','.join(images)}")
    someone_else(stack).delete_images(project, images[:1], all_iterations=True)
    stack.cv.data.settle()
    # The service empties the snapshots later than the verification waits.
    stack.cv.faults.async_delete_delay = 60.0
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "failed", "done", timeout=60) == "failed"
    (receipt,) = receipt_files(stack, rid)
    assert receipt["json"]["outcome"] == "survivors"
    assert assert_summaries_agree(receipt) == {
        "planned": 4,
        "removed": 3,
        "already_absent": 1,
        "outcome_unknown": 0,
        "not_removed": 0,
        "not_attempted": 0,
        "verified_gone": 1,
        "survived": 3,
        "not_verified": 0,
    }
    said = "\n".join(thread(stack, rid))
    assert "3 of 4 targets still exist" in said, said


def test_e2e_export_counts_in_the_message_and_manifest_agree_with_the_index(
    stacks: StartStack, tmp_path: Path
) -> None:
    stack = stacks(seed=SEED)
    data = stack.cv.data
    project = data.project_ids()[0]
    # A tag trained into a snapshot, then deleted from the workspace: the package holds it.
    old = data.add_tag(project, "old-tag")
    data.tag_images(project, data.image_ids(project)[:3], old)
    data.add_iteration(project)
    someone_else(stack).delete_tag(project, old)
    rid, parts = exported(stack, f"export project {project}")
    folder = tmp_path / "package"
    for part in parts:
        with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
            archive.extractall(folder)
    counts = json.loads((folder / "manifest.json").read_text("utf-8"))["counts"]
    page = (folder / "index.html").read_text("utf-8")
    tags = html_tables(page)["Tags"][1:]
    assert "old-tag" in {row[0] for row in tags}
    coco = json.loads((folder / f"annotations/{project}.coco.json").read_text("utf-8"))
    assert counts["tags"] == len(tags) == len(coco["categories"])
    assert counts["images"] == len(coco["images"])
    assert f"; {counts['images']:,} images, " in page  # the COCO file's line
    scopes = [int(n.replace(",", "")) for n in re.findall(r">Images 1 to [\d,]+ of ([\d,]+)", page)]
    assert counts["image_records"] == sum(scopes)
    stored = re.findall(r">Stored predictions 1 to [\d,]+ of ([\d,]+)", page)
    assert counts["predictions"] == sum(int(n.replace(",", "")) for n in stored)
    said = "\n".join(thread(stack, rid))
    assert f"{counts['tags']} tags, {counts['images']} images" in said, said
