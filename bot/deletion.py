"""Erasure: the impact preview, the frozen plan, its execution, verification and the receipt.

Two job handlers (I/O through the job context): `run_preview` (job "preview") reads the live
project and freezes the plan as `deletion_items`; `run_delete` (job "delete", after approval)
executes that plan batch by batch, verifies that every target is gone, and writes the receipt.
Pure: `Facts` -> `plan_items` / `preview_of`, and the receipt rows and texts.

The plan (table deletion_items, in `seq` order)
-----------------------------------------------
One batch is one change call. The first item of a batch (lowest seq) says which call:

    kind        call                                  target_id       parent_id
    unpublish   UnpublishIteration(parent_id)         publish name    the iteration
    image       DeleteImages(every id of the batch,   image id        -
                allIterations=true), <= 256 ids
    prediction  DeletePrediction(every id), <= 64     prediction id   -
    tag         DeleteTag(target_id)                  tag id          -
    iteration   DeleteIteration(target_id)            iteration id    -
    project     DeleteProject(target_id)              project id      -

Batches run in that order: unpublish first (a published iteration cannot be deleted), the
project last. Objects that a call removes together with its target are "covered" items: they
sit in the same batch after the first item, carry parent_id = the call's target (the project,
or the iteration whose snapshot alone held an image), and are marked with the call's outcome.
So `delete project` is unpublish batches plus ONE batch: the project item, then every image,
tag, iteration and stored prediction the project holds, all removed by DeleteProject.

Item status: pending -> sending (committed before the call) -> deleted (removed by this
request: the call answered 2xx, or its outcome was unknown and a re-read found the target
gone) | gone (already absent, not removed by this request: a re-read before the call, or the
call's NotFound) | failed (the call failed for good and the target is still there). A batch
whose items are all deleted/gone is never sent again. Image and prediction batches (and any
batch left sending or failed) are re-read before the call and only what still exists is sent;
an item left `sending` by an interrupted call was present when sent, so one found absent then
was removed by this request. A call that fails with an unknown outcome (timeout, dropped
connection, 5xx) is settled by re-reading at once. Verification then sets `verified` to
gone | survived for every item. Receipts say each item's `result` in words and count the items
per project and kind by the same table (RESULTS, `receipt_summary`); messages count by it too.

A `delete subject` plan spans projects and resources: `_subject_facts` runs `find`'s count
search over the scope, reads the ids in each project holding matches (`SubjectFacts`, one
`Facts` per project), and `plan_for` numbers each project's image batches on, one after the
other; every item carries its project and its `resource`, so each call (and every re-read,
verification and resumed batch) goes to that project's own resource client (`_client_of`).
One preview (`subject_preview`: the totals, then per project), one approval, one receipt.

Verification reads in the fewest calls that prove each answer. Images: the workspace by id
(one GetImagesByIds per 256; its tags and metadata change, so no count there proves an image
gone), then, for the ids not found there, each remaining snapshot the cheaper way: by id, or,
when the preview froze the count that matches exactly what the selector picked in that
snapshot (SnapshotCount: a tag, tag names, untagged, all; not ids or metadata, which can
change on a snapshot's image), one count, plus a read by id of only the erased images the
snapshot may hold without matching. A count of zero proves every picked image gone, because a
snapshot never gains an image or a tag; a count above zero lists what it still finds.

The plan is a promise: before the first call and before every container call (DeleteProject,
DeleteIteration, DeleteTag remove whatever they hold at that moment) the live contents are read
again (`collect_facts`) and compared with the frozen plan (`changes_since`). Anything new stops
the request before the call with a new plan and preview (Outcome.new_plan): the request is
pending again and every earlier approval is withdrawn. An erasure of one person (selectors:
`delete subject`, `delete images --metadata/--tag-name`) is compared before its first call
too, across every project searched: an image of theirs found since the preview is new. For
`delete images` with a selector that first comparison lists only the workspace (and reads each
snapshot's tags for tag names): a snapshot never gains an image (`_nothing_new`).

The preview counts what the deletion removes: `workspace_images` the targeted images found in
the workspace, `iterations[].images` the images it takes out of that snapshot (all of them when
the iteration itself is removed), `images_targeted` the distinct images removed anywhere
(for an iteration: the images only its snapshot held), `tags[].images` the workspace images
carrying the tag.
"""

from __future__ import annotations

import base64
import csv
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bot import commands, parser, subject, webpage, wording
from bot.clock import iso, parse_iso
from bot.deadline import Deadline, deadline_fields
from bot.errors import (
    BotError,
    NotFound,
    ServiceError,
    TrainingApiError,
    WorkDirFull,
    is_disk_full,
)
from bot.lifecycle import DeletionItem, ItemStatus, JobStatus, Status
from bot.models import Image, Iteration
from bot.resources import narrowed
from bot.runner import JobContext, Outcome
from bot.training import (
    MAX_IMAGE_IDS,
    MAX_PREDICTION_IDS,
    MAX_TAG_IDS,
    ImageKind,
    TrainingClient,
    chunks,
)

DEFAULT_VERIFY_TIMEOUT = 60.0  # seconds to wait for the asynchronous image deletion (202)
# After that first window, verification goes on for up to this long (the bot's setting
# BOT_VERIFY_MAX_HOURS); 0: the receipt comes after the first window.
DEFAULT_VERIFY_PATIENCE = 0.0
PATIENT_POLL_CAP = 300.0  # seconds between re-reads once the first window has passed
PATIENT_PHASE = "deleted, verifying: confirmed gone"

OPERATIONS = {
    "unpublish": "UnpublishIteration",
    "image": "DeleteImages",
    "prediction": "DeletePrediction",
    "tag": "DeleteTag",
    "iteration": "DeleteIteration",
    "project": "DeleteProject",
}
PHASES = {
    "unpublish": "unpublishing iterations",
    "image": "deleting images",
    "prediction": "deleting predictions",
    "tag": "deleting tags",
    "iteration": "deleting iterations",
    "project": "deleting the project",
}
CONFIRMED = frozenset({ItemStatus.DELETED, ItemStatus.GONE})
MULTI = frozenset({"image", "prediction"})  # one call removes every item of the batch
NOUNS = {  # (singular, plural), for counts in messages, in the order messages name them
    "image": ("image", "images"),
    "prediction": ("stored prediction", "stored predictions"),
    "tag": ("tag", "tags"),
    "iteration": ("iteration", "iterations"),
    "project": ("project", "projects"),
    "unpublish": ("iteration unpublished", "iterations unpublished"),
}
COUNT_ORDER = tuple(NOUNS)
RECEIPT_COLUMNS = (
    "request_id",
    "project_id",
    "resource",  # the project's resource when the plan spans several (delete subject)
    "kind",
    "target_id",
    "parent_id",
    "batch",
    "status",
    "operation",
    "http_status",
    "at",
    "verified",
    "result",
)
SURVIVORS_SHOWN = 20
CONTAINERS = frozenset({"project", "iteration", "tag"})  # their call removes what they hold
# What this request did to an item, by its status: the receipt summary's column (SUMMARY_KEYS)
# and the words of the item's `result`. Every count of a receipt or message comes from here.
RESULTS = {
    ItemStatus.DELETED: ("removed", "removed by this request"),
    ItemStatus.GONE: ("already_absent", "already absent (not removed by this request)"),
    ItemStatus.SENDING: ("outcome_unknown", "outcome unknown (a retry re-reads it first)"),
    ItemStatus.FAILED: ("not_removed", "not removed"),
    ItemStatus.PENDING: ("not_attempted", "not attempted"),
}
UNPUBLISH_RESULTS = {
    ItemStatus.DELETED: "unpublished by this request",
    ItemStatus.GONE: "already unpublished (not by this request)",
}
VERIFIED = {"gone": "verified_gone", "survived": "survived", None: "not_verified"}
# One summary row per project and kind: the planned items, what became of them, and what the
# verification found. receipt.html shows the same columns under these headings.
SUMMARY_KEYS = {
    "planned": "Planned",
    "removed": "Removed by this request",
    "already_absent": "Already absent",
    "outcome_unknown": "Outcome unknown",
    "not_removed": "Not removed",
    "not_attempted": "Not attempted",
    "verified_gone": "Verified gone",
    "survived": "Survived",
    "not_verified": "Not verified",
}


# ---------------------------------------------------------------------------------------------
# Pure: facts -> plan and preview


@dataclass(frozen=True)
class IterationFacts:
    """One trained iteration as the plan sees it."""

    id: str
    name: str
    publish_name: str  # "" when not published
    images: int  # images the deletion takes out of this snapshot (all of them when removed)
    removed: bool  # the plan deletes this iteration
    own_images: tuple[str, ...] = ()  # images no other snapshot holds: deleted with it


@dataclass(frozen=True)
class TagFacts:
    id: str
    name: str
    images: int


@dataclass(frozen=True)
class SnapshotCount:
    """How verification proves a selector's images gone from one trained snapshot.

    `kind` and `tag_ids` are the count (GetImageCount with iterationId) that matches exactly
    what the selector picked there at the preview; `possible` is False when nothing could
    match there (the tag is not in that snapshot). `others` are the erased images the
    snapshot may hold without matching (not picked there, uploaded before it was trained):
    the count cannot see those, so they are read by id.
    """

    iteration_id: str
    kind: ImageKind
    tag_ids: tuple[str, ...]
    possible: bool
    others: frozenset[str]


@dataclass(frozen=True)
class Facts:
    """What the live API says about the targets of one deletion request."""

    kind: str  # commands.DeleteKind value
    project_id: str
    project_name: str
    workspace_images: int  # targeted images found in the workspace
    iterations: tuple[IterationFacts, ...]  # the snapshots the deletion touches
    images: tuple[str, ...] = ()  # images removed (DeleteImages; or covered by the project)
    images_not_found: tuple[str, ...] = ()
    tags: tuple[TagFacts, ...] = ()  # tags removed
    predictions: tuple[str, ...] = ()
    predictions_not_found: tuple[str, ...] = ()
    selector: str = ""  # images: the command's selector (ids | tag | untagged | all | subject)
    matching: str = ""  # images of one person (subject): the selectors in words
    tag_name: str = ""  # images --tag: the tag's name (its id when the workspace lacks it)
    resource: str | None = None  # the resource holding the project (delete subject), else None
    counts: tuple[SnapshotCount, ...] = ()  # images: how verification proves each snapshot

    @property
    def images_targeted(self) -> int:
        """Return how many distinct images the deletion removes."""
        own = sum(len(it.own_images) for it in self.iterations)
        return len(self.images) + own


def plan_items(facts: Facts) -> list[DeletionItem]:
    """Return the deletion items in execution order, with batch numbers (see module doc)."""
    items: list[DeletionItem] = []
    batch = 0
    p = facts.project_id

    def add(kind: str, target: str, parent: str | None = None) -> None:
        items.append(
            DeletionItem(
                seq=len(items) + 1,
                kind=kind,
                project_id=p,
                target_id=target,
                parent_id=parent,
                batch=batch,
                resource=facts.resource,
            )
        )

    for it in facts.iterations:
        if it.removed and it.publish_name:
            batch += 1
            add("unpublish", it.publish_name, it.id)
    if facts.kind == commands.DeleteKind.PROJECT:
        batch += 1
        add("project", p)
        for image in facts.images:
            add("image", image, p)
        for tag in facts.tags:
            add("tag", tag.id, p)
        for it in facts.iterations:
            add("iteration", it.id, p)
        for prediction in facts.predictions:
            add("prediction", prediction, p)
        return items
    for chunk in chunks(facts.images, MAX_IMAGE_IDS):
        batch += 1
        for image in chunk:
            add("image", image)
    for chunk in chunks(facts.predictions, MAX_PREDICTION_IDS):
        batch += 1
        for prediction in chunk:
            add("prediction", prediction)
    for tag in facts.tags:
        batch += 1
        add("tag", tag.id)
    for it in facts.iterations:
        if it.removed:
            batch += 1
            add("iteration", it.id)
            for image in it.own_images:
                add("image", image, it.id)
    return items


@dataclass(frozen=True)
class SubjectFacts:
    """What the live API holds of one person's images across every project searched
    (`delete subject`): one Facts (kind images, selector subject, its resource) per project
    holding matches, and the scope searched."""

    matching: str  # the selectors in words
    projects: tuple[Facts, ...]
    resources: tuple[str, ...]  # the resources searched, as configured
    projects_searched: int
    iterations_searched: int  # trained iterations searched
    unknown_projects: tuple[str, ...] = ()  # --project ids found on no resource searched

    @property
    def workspace_images(self) -> int:
        """Return how many of the person's images the workspaces hold."""
        return sum(f.workspace_images for f in self.projects)

    @property
    def images_targeted(self) -> int:
        """Return how many distinct images the deletion removes, over every project."""
        return sum(f.images_targeted for f in self.projects)


AnyFacts = Facts | SubjectFacts


def plan_for(facts: AnyFacts) -> list[DeletionItem]:
    """Return the plan of `facts`: a subject's is each project's plan in turn, numbered on."""
    if isinstance(facts, Facts):
        return plan_items(facts)
    items: list[DeletionItem] = []
    for project in facts.projects:
        batches = items[-1].batch if items else 0
        for item in plan_items(project):
            items.append(replace(item, seq=len(items) + 1, batch=batches + item.batch))
    return items


def _quoted(name: str) -> str:
    return f'"{name}"'


def images_phrase(facts: Facts, count: int) -> str:
    """Return `count` images described by the request's selector: `12 untagged images`."""
    images = wording.count(count, "image")
    if facts.selector == "ids":
        return f"{images} given by id"
    if facts.selector == "tag":
        return f"{images} tagged {_quoted(facts.tag_name)}"
    if facts.selector == "untagged":
        return images.replace(" image", " untagged image", 1)
    if facts.selector == "subject":
        return f"{images} matching {facts.matching}"
    return f"all {images}"


def summary_of(facts: Facts) -> str:
    """Return the preview's one plain line."""
    project = f"project {_quoted(facts.project_name)}"
    removed = [it for it in facts.iterations if it.removed]
    published = [it.publish_name for it in removed if it.publish_name]
    kind = facts.kind
    if kind == commands.DeleteKind.PROJECT:
        parts = [
            wording.count(facts.images_targeted, "image")
            + f" ({facts.workspace_images:,} in the workspace)",
            wording.count(len(facts.tags), "tag"),
            wording.count(len(removed), "iteration"),
            wording.count(len(facts.predictions), *NOUNS["prediction"]),
        ]
        text = f"Deletes {project} with everything in it: {wording.join_words(parts)}."
    elif kind in (commands.DeleteKind.ITERATION, commands.DeleteKind.ITERATIONS):
        names = wording.join_words(_quoted(it.name) for it in removed)
        if kind == commands.DeleteKind.ITERATION:
            which = f"iteration {names}"
        else:
            which = f"all {wording.count(len(removed), 'iteration')} ({names})"
        own = facts.images_targeted
        text = (
            f"Deletes {which} of {project}; {wording.count(own, 'image')} used by no other "
            "iteration and not in the workspace "
            f"{'is' if own == 1 else 'are'} deleted with {'it' if len(removed) == 1 else 'them'}."
        )
    elif kind == commands.DeleteKind.TAG:
        tag = facts.tags[0]
        text = (
            f"Deletes tag {_quoted(tag.name)} of {project}"
            f" (on {wording.count(tag.images, 'image')} in the workspace); the images stay,"
            " and trained iterations keep their snapshot."
        )
    elif kind == commands.DeleteKind.IMAGES:
        held = [it for it in facts.iterations if it.images]
        text = (
            f"Deletes {images_phrase(facts, facts.images_targeted)} of {project} "
            f"everywhere: {facts.workspace_images:,} in the workspace, and from "
            f"{wording.count(len(held), 'trained iteration snapshot')}."
        )
        if facts.images_not_found:
            text += f" {wording.count(len(facts.images_not_found), 'requested id')} not found."
    else:
        predictions = wording.count(len(facts.predictions), *NOUNS["prediction"])
        text = f"Deletes {predictions} of {project}."
        if facts.predictions_not_found:
            text += f" {wording.count(len(facts.predictions_not_found), 'requested id')} not found."
    if published:
        stop = "that prediction endpoint stops" if len(published) == 1 else "those endpoints stop"
        text += f" Unpublishes {wording.join_words(published)} first: {stop} working."
    return text


def subject_summary(facts: SubjectFacts) -> str:
    """Return a subject preview's one plain line: the totals across projects."""
    projects = facts.projects
    held = sum(1 for f in projects for it in f.iterations if it.images)
    names = list(dict.fromkeys(f.resource or "" for f in projects))
    where = wording.count(len(projects), "project")
    if len(names) > 1:
        where += f" on {wording.count(len(names), 'resource')} ({wording.join_words(names)})"
    elif len(facts.resources) > 1:
        where += f" on {names[0]}"
    workspaces = "workspace" if len(projects) == 1 else "workspaces"
    text = (
        f"Deletes {wording.count(facts.images_targeted, 'image')} matching {facts.matching}"
        f" everywhere, in {where}: {facts.workspace_images:,} in the {workspaces}, and from"
        f" {wording.count(held, 'trained iteration snapshot')}."
    )
    published = [
        _quoted(it.publish_name) for f in projects for it in f.iterations if it.publish_name
    ]
    if published:
        text += f" Published iterations involved: {wording.join_words(published)}."
    return text


def subject_preview(facts: SubjectFacts) -> dict[str, Any]:
    """Return the plain-data preview of a subject deletion: the totals, and per project
    (with its resource) what `preview_of` shows of one project."""
    return {
        "kind": commands.DeleteKind.SUBJECT.value,
        "matching": facts.matching,
        "projects": [{**preview_of(f), "resource": f.resource} for f in facts.projects],
        "workspace_images": facts.workspace_images,
        "images_targeted": facts.images_targeted,
        "iterations": [],
        "images_not_found": [],
        "tags": [],
        "predictions": 0,
        "predictions_not_found": [],
        "unpublish": [],
        "searched": {
            "resources": list(facts.resources),
            "projects": facts.projects_searched,
            "iterations": facts.iterations_searched,
        },
        "unknown_projects": list(facts.unknown_projects),
        "summary": subject_summary(facts),
    }


def preview_for(facts: AnyFacts) -> dict[str, Any]:
    """Return the preview of `facts`, of one project or of a subject across projects."""
    return preview_of(facts) if isinstance(facts, Facts) else subject_preview(facts)


def nothing_to_delete(facts: AnyFacts) -> str:
    """Return the answer to a request that matches nothing."""
    if isinstance(facts, SubjectFacts):
        searched = wording.count(facts.projects_searched, "project")
        return f"Nothing to delete: no images match {facts.matching} ({searched} searched)."
    text = f"Nothing to delete: project {_quoted(facts.project_name)} holds "
    if facts.kind == commands.DeleteKind.IMAGES:
        if facts.selector == "ids":
            text += (
                f"none of the {wording.count(len(facts.images_not_found), 'requested image id')}"
            )
        else:
            text += "no " + images_phrase(facts, 0).removeprefix("all ").removeprefix("0 ")
    else:
        text += "no stored predictions"
        if facts.predictions_not_found:
            text += f" with the {wording.count(len(facts.predictions_not_found), 'requested id')}"
    return text + "."


def preview_of(facts: Facts) -> dict[str, Any]:
    """Return the plain-data preview an approver reads (rendered by the Slack side)."""
    return {
        "kind": facts.kind,
        "project": {"id": facts.project_id, "name": facts.project_name},
        "workspace_images": facts.workspace_images,
        "iterations": [
            {
                "id": it.id,
                "name": it.name,
                "images": it.images,
                "published": bool(it.publish_name),
                "publish_name": it.publish_name or None,
                "removed": it.removed,
            }
            for it in facts.iterations
        ],
        "images_targeted": facts.images_targeted,
        "images_not_found": list(facts.images_not_found),
        "tags": [{"id": t.id, "name": t.name, "images": t.images} for t in facts.tags],
        "predictions": len(facts.predictions),
        "predictions_not_found": list(facts.predictions_not_found),
        "unpublish": [
            {"iteration_id": it.id, "publish_name": it.publish_name}
            for it in facts.iterations
            if it.removed and it.publish_name
        ],
        "summary": summary_of(facts),
        **({"verification": verification_of(facts)} if facts.counts else {}),
    }


def verification_of(facts: Facts) -> dict[str, Any]:
    """Return what verification needs of the preview: the count of each snapshot (SnapshotCount),
    its `others` as a bitmap over the erased image ids in sorted order (a few KB at 100,000)."""
    order = sorted(facts.images)
    return {
        "images": len(order),
        "snapshots": [
            {
                "iteration_id": c.iteration_id,
                "kind": c.kind,
                "tag_ids": list(c.tag_ids),
                "possible": c.possible,
                "others": _bitmap(order, c.others),
            }
            for c in facts.counts
        ],
    }


def snapshot_counts(
    preview: Mapping[str, Any] | None, items: Sequence[DeletionItem]
) -> dict[str, SnapshotCount]:
    """Return the preview's SnapshotCount per iteration id for these plan items.

    A preview of several projects (`delete subject`) holds one per project. A project whose
    preview does not describe exactly its planned images has none: its snapshots are read by
    id.
    """
    preview = preview or {}
    previews = [preview, *(preview.get("projects") or ())]
    found: dict[str, SnapshotCount] = {}
    for one in previews:
        stored = one.get("verification")
        if not isinstance(stored, Mapping):
            continue
        p = str((one.get("project") or {}).get("id"))
        order = sorted({i.target_id for i in items if i.kind == "image" and i.project_id == p})
        if stored.get("images") != len(order):
            continue
        counts: dict[str, SnapshotCount] = {}
        for entry in stored.get("snapshots") or ():
            others = _members(order, str(entry["others"]))
            if others is None:
                counts = {}
                break
            counts[str(entry["iteration_id"])] = SnapshotCount(
                str(entry["iteration_id"]),
                entry["kind"],
                tuple(entry["tag_ids"]),
                bool(entry["possible"]),
                others,
            )
        found.update(counts)
    return found


def _bitmap(order: Sequence[str], members: frozenset[str]) -> str:
    bits = bytearray((len(order) + 7) // 8)
    for n, image in enumerate(order):
        if image in members:
            bits[n // 8] |= 1 << (n % 8)
    return base64.b64encode(bytes(bits)).decode("ascii")


def _members(order: Sequence[str], text: str) -> frozenset[str] | None:
    bits = base64.b64decode(text)
    if len(bits) != (len(order) + 7) // 8:
        return None
    return frozenset(image for n, image in enumerate(order) if bits[n // 8] >> (n % 8) & 1)


def changes_since(
    frozen: Sequence[DeletionItem], preview: Mapping[str, Any], facts: AnyFacts
) -> dict[str, int]:
    """Return what the live `facts` would remove beyond the frozen plan, by kind (none: {}).

    Every object the plan would now remove and the frozen plan does not hold counts (images,
    tags, iterations, stored predictions, publications to stop). Objects gone meanwhile do not:
    they are simply absent when their turn comes. DeleteTag also takes the tag off every image
    carrying it, so for `delete tag` more tagged images than the preview showed count too.
    """
    known = {(i.kind, str(i.target_id).lower()) for i in frozen}
    new: dict[str, int] = {}
    for item in plan_for(facts):
        if (item.kind, str(item.target_id).lower()) not in known:
            new[item.kind] = new.get(item.kind, 0) + 1
    if isinstance(facts, Facts) and facts.kind == commands.DeleteKind.TAG:
        shown = {str(t["id"]).lower(): int(t["images"]) for t in preview.get("tags") or ()}
        more = sum(max(0, t.images - shown.get(t.id.lower(), 0)) for t in facts.tags)
        if more:
            new["tagged"] = more
    return new


def describe_changes(changes: Mapping[str, int]) -> str:
    """Return changes as words: `7 new images and 1 new tag`."""
    words = {
        "image": ("new image", "new images"),
        "prediction": ("new stored prediction", "new stored predictions"),
        "tag": ("new tag", "new tags"),
        "iteration": ("new iteration", "new iterations"),
        "unpublish": ("newly published iteration", "newly published iterations"),
        "project": ("project", "projects"),
        "tagged": ("more image carries the tag", "more images carry the tag"),
    }
    return wording.join_words(wording.count(n, *words[k]) for k, n in changes.items() if n)


def counts_of(items: Iterable[DeletionItem]) -> dict[str, int]:
    """Return how many items of each kind a plan holds (keys in COUNT_ORDER, zero omitted)."""
    counts = dict.fromkeys(COUNT_ORDER, 0)
    for item in items:
        counts[item.kind] += 1
    return {kind: n for kind, n in counts.items() if n}


def _described(counts: Mapping[str, int]) -> str:
    """Return item counts as words: `240 images, 4 tags and 1 project`."""
    return wording.describe_counts(counts, NOUNS)


def batches_of(items: Sequence[DeletionItem]) -> list[list[DeletionItem]]:
    """Return the items grouped by batch, in execution order."""
    grouped: dict[int, list[DeletionItem]] = {}
    for item in sorted(items, key=lambda i: i.seq):
        grouped.setdefault(item.batch, []).append(item)
    return [grouped[b] for b in sorted(grouped)]


def result_of(kind: str, status: ItemStatus) -> str:
    """Return what a receipt says this request did to one item."""
    if kind == "unpublish" and status in UNPUBLISH_RESULTS:
        return UNPUBLISH_RESULTS[status]
    return RESULTS[status][1]


def outcome_of(row: Mapping[str, Any]) -> str:
    """Return the summary column (a key of SUMMARY_KEYS) a receipt row's status counts in."""
    return RESULTS[row["status"]][0]


def with_outcome(items: Iterable[DeletionItem], outcome: str) -> dict[str, int]:
    """Return counts_of the items whose status counts in summary column `outcome`."""
    return counts_of(i for i in items if RESULTS[i.status][0] == outcome)


def receipt_summary(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Return the receipt's summary rows: `project_id`, `kind` and the counts of SUMMARY_KEYS
    (and `resource`, first, when the rows name one: a plan across resources).

    One row per project and kind, in the order the receipt rows first name them.
    """
    summary: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        resource = row.get("resource")
        key = (str(resource or ""), str(row["project_id"]), str(row["kind"]))
        if key not in summary:
            summary[key] = {
                **({"resource": resource} if resource else {}),
                "project_id": key[1],
                "kind": key[2],
                **dict.fromkeys(SUMMARY_KEYS, 0),
            }
        counts = summary[key]
        counts["planned"] += 1
        counts[outcome_of(row)] += 1
        counts[VERIFIED[row["verified"]]] += 1
    return list(summary.values())


def receipt_rows(request_id: str, items: Sequence[DeletionItem]) -> list[dict[str, Any]]:
    """Return one receipt row per item (RECEIPT_COLUMNS), in execution order."""
    return [
        {
            "request_id": request_id,
            "project_id": item.project_id,
            "resource": item.resource,
            "kind": item.kind,
            "target_id": item.target_id,
            "parent_id": item.parent_id,
            "batch": item.batch,
            "status": item.status,
            "operation": item.operation,
            "http_status": item.http_status,
            "at": item.at,
            "verified": item.verified,
            "result": result_of(item.kind, item.status),
        }
        for item in sorted(items, key=lambda i: i.seq)
    ]


def receipt_view(
    document: Mapping[str, Any],
) -> tuple[webpage.Header, list[tuple[str, list[str], list[list[str]]]], list[list[str]]]:
    """Return receipt.html's header, summary tables and item rows from receipt.json's data."""
    items: Sequence[Mapping[str, Any]] = document["items"]
    approvals = document.get("approvals") or []
    approved = "; ".join(f"{a['approver']} at {a['at']}" for a in approvals) or ", ".join(
        document.get("approvers") or ()
    )
    head_of_log = document.get("audit_head") or {}
    seq, digest = head_of_log.get("seq", "?"), head_of_log.get("hash", "?")
    head = webpage.Header(
        title=f"Deletion receipt, request {document['request_id']}",
        rows=(
            ("Request", str(document["request_id"])),
            ("Outcome", f"{document['outcome']}: {document.get('note') or ''}"),
            ("Requested by", str(document.get("requester") or "")),
            ("Ticket", str(document.get("ticket") or "")),
            ("Reason", str(document.get("reason") or "")),
            ("Statutory deadline", str(document.get("deadline") or "-")),
            ("Command", str(document.get("command") or "")),
            ("Approved by", approved),
            ("Preview", str(document.get("preview_summary") or "")),
            ("Custom Vision endpoint", str(document.get("endpoint_host") or "")),
            ("Started", str(document.get("started_at") or "")),
            ("Finished", str(document.get("finished_at") or "")),
            ("Attempt", str(document.get("attempt") or "")),
            ("Audit log head", f"event #{seq}, SHA-256 {digest}"),
        ),
    )
    per_snapshot: dict[tuple[str, str], list[int]] = {}
    for item in items:
        if item["kind"] in ("image", "iteration"):
            snapshot = item["target_id"] if item["kind"] == "iteration" else item["parent_id"]
            if item["kind"] == "image" and snapshot is None:
                where = "workspace and every snapshot (DeleteImages, allIterations)"
            elif snapshot == item["project_id"]:
                where = "the whole project (DeleteProject)"
            else:
                where = f"snapshot of iteration {snapshot}"
            cell = per_snapshot.setdefault((str(item["project_id"]), where), [0, 0, 0])
            if item["kind"] == "image":
                cell[0] += 1
                cell[1] += outcome_of(item) == "removed"
            else:
                cell[2] = outcome_of(item) == "removed"
    summary = receipt_summary(items)
    # A plan across resources names each project's resource in a first column.
    named = any("resource" in row for row in summary)
    summaries: list[tuple[str, list[str], list[list[str]]]] = [
        (
            "What was removed, per project",
            [*(["Resource"] if named else []), "Project", "What", *SUMMARY_KEYS.values()],
            [
                [
                    *([str(row.get("resource") or "")] if named else []),
                    row["project_id"],
                    NOUNS[row["kind"]][1],
                    *(f"{row[k]:,}" for k in SUMMARY_KEYS),
                ]
                for row in summary
            ],
        ),
        (
            "Per snapshot",
            [
                "Project",
                "Workspace or iteration snapshot",
                "Images planned",
                "Images removed by this request",
                "Iteration removed by this request",
            ],
            [
                [p, where, f"{images:,}", f"{removed:,}", "yes" if its else ""]
                for (p, where), (images, removed, its) in per_snapshot.items()
            ],
        ),
    ]
    rows = [["" if item[c] is None else str(item[c]) for c in RECEIPT_COLUMNS] for item in items]
    return head, summaries, rows


def _shown(kind: str, target: str, parent: str | None) -> str:
    if kind == "unpublish":
        return f"publication {target} of iteration {parent}"
    return f"{NOUNS[kind][0]} {target}"


# ---------------------------------------------------------------------------------------------
# Preview (I/O): read the live project


def _project_name(client: TrainingClient, project_id: str) -> str:
    try:
        return client.get_project(project_id).name
    except NotFound:
        raise NotFound(
            f"There is no project {project_id} (or the training key cannot see it): "
            "nothing to delete."
        ) from None


def _ids(client: TrainingClient, project_id: str, iteration_id: str | None) -> list[str]:
    return [image.id for image in client.iter_images(project_id, iteration_id=iteration_id)]


@dataclass(frozen=True)
class _Query:
    """The count that matches what a selector picks in one image set (see SnapshotCount)."""

    kind: ImageKind
    tag_ids: tuple[str, ...] = ()
    possible: bool = True


def _selected(
    client: TrainingClient, command: commands.Delete, p: str, iteration_id: str | None
) -> tuple[list[Image], _Query | None]:
    """Return the images the selector picks in the workspace or one snapshot, and the count
    that matches exactly those (None: no count can, as for ids or a metadata filter, which
    someone may change on an image of a snapshot too)."""
    query: _Query | None = None
    try:
        if command.selector == "tag":
            assert command.tag_id is not None
            query = _Query("tagged", (command.tag_id,))
            found = client.iter_images(
                p, kind="tagged", iteration_id=iteration_id, tag_ids=[command.tag_id]
            )
        elif command.selector == "untagged":
            query = _Query("untagged")
            found = client.iter_images(p, kind="untagged", iteration_id=iteration_id)
        elif command.selector == "ids":
            found = iter(client.get_images_by_ids(p, command.image_ids, iteration_id))
        elif command.selector == "subject":  # one person's images, as `find` counts them
            assert command.selectors is not None
            tags, possible = subject.matching_tag_ids(
                client, p, iteration_id, command.selectors.tag_names
            )
            ids = tuple(tag.id for tag in tags)
            if not command.selectors.metadata and len(ids) <= MAX_TAG_IDS:
                query = _Query("all", ids, possible)
            if not possible:
                return [], query
            found = client.iter_images(
                p,
                iteration_id=iteration_id,
                tag_ids=list(ids),
                where=subject.metadata_filter(command.selectors.metadata),
            )
        else:
            query = _Query("all")
            found = client.iter_images(p, iteration_id=iteration_id)
        return list(found), query
    except NotFound:
        # e.g. the tag is not in this snapshot: nothing can match there
        return [], None if query is None else replace(query, possible=False)


def _service_time(text: str | None) -> datetime | None:
    """Return a time the service wrote (zone-less ones are UTC), None when absent or unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _trained_by(iteration: Iteration) -> datetime | None:
    """Return the latest time an image can have joined this iteration's snapshot (None: unknown).

    A trained iteration's snapshot is the workspace as training took it: an image uploaded
    after training finished cannot be in it (inferred from what a snapshot is; the spec says
    only that images are read "from the workspace unless iterationId is given").
    """
    times = [t for t in map(_service_time, (iteration.created, iteration.trained_at)) if t]
    return max(times) if times else None


def _snapshot_count(
    iteration: Iteration,
    query: _Query,
    picked: Iterable[str],
    images: Mapping[str, Image],
) -> SnapshotCount:
    """Return how verification proves `images` gone from this snapshot (SnapshotCount).

    `picked`: what the selector picked there. A snapshot's images and their tags are fixed at
    training (no operation adds an image or a tag to one; DeleteImages with allIterations and
    DeleteIteration only take away), so once the count is zero every picked image is gone.
    """
    here = set(picked)
    bound = _trained_by(iteration) if iteration.is_trained else None

    def may_hold(image: Image) -> bool:
        uploaded = _service_time(image.created)
        return bound is None or uploaded is None or uploaded <= bound

    others = frozenset(i for i, im in images.items() if i not in here and may_hold(im))
    return SnapshotCount(iteration.id, query.kind, query.tag_ids, query.possible, others)


def _image_facts(
    ctx: JobContext,
    command: commands.Delete,
    p: str,
    name: str,
    client: TrainingClient | None = None,
) -> Facts:
    """Return the facts of the images `command` picks in project `p` (on `client`'s resource;
    None: the request's own)."""
    client = client or ctx.client
    workspace, _ = _selected(client, command, p, None)
    union = {image.id: image for image in workspace}
    iterations: list[IterationFacts] = []
    picked: list[tuple[Iteration, _Query | None, list[str]]] = []
    for it in client.get_iterations(p):
        ctx.check()
        held, query = _selected(client, command, p, it.id)
        for image in held:
            union.setdefault(image.id, image)
        picked.append((it, query, [image.id for image in held]))
        if held:
            iterations.append(
                IterationFacts(it.id, it.name, it.publish_name or "", len(held), removed=False)
            )
    counts: tuple[SnapshotCount, ...] = ()
    if all(query is not None for _, query, _ in picked):
        counts = tuple(_snapshot_count(it, query, ids, union) for it, query, ids in picked if query)
    not_found: tuple[str, ...] = ()
    if command.selector == "ids":
        not_found = tuple(i for i in command.image_ids if i not in union)
    tag_name = ""
    if command.selector == "tag":
        assert command.tag_id is not None
        try:
            tag_name = client.get_tag(p, command.tag_id).name
        except NotFound:
            tag_name = command.tag_id
    return Facts(
        kind=command.kind.value,
        project_id=p,
        project_name=name,
        workspace_images=len(workspace),
        iterations=tuple(iterations),
        images=tuple(union),
        images_not_found=not_found,
        selector=command.selector or "all",
        tag_name=tag_name,
        matching="" if command.selectors is None else command.selectors.describe(),
        counts=counts,
    )


def _refuse_training(project_name: str, iterations: Sequence[Iteration]) -> None:
    """Raise BotError when the plan would delete or unpublish an iteration still training.

    The service refuses to change an iteration while it trains (the emulator plays both
    answers; the code is not public), so such a plan would fail mid-way: it is refused at the
    preview, before anything is sent, and the person asks again once training has ended.
    """
    for it in iterations:
        if (it.status or "").lower() == "training":
            raise BotError(
                f"Iteration {_quoted(it.name)} ({it.id}) of project {_quoted(project_name)} is "
                "still training: Custom Vision refuses to delete or unpublish it until training "
                "ends. Ask again once it has finished (the Custom Vision portal shows its "
                "progress)."
            )


def _iteration_facts(ctx: JobContext, command: commands.Delete, p: str, name: str) -> Facts:
    client = ctx.client
    listed = client.get_iterations(p)
    if command.kind == commands.DeleteKind.ITERATION:
        assert command.iteration_id is not None
        removed = [it for it in listed if it.id == command.iteration_id]
        if not removed:
            raise NotFound(
                f"Project {_quoted(name)} has no iteration {command.iteration_id}: "
                "nothing to delete."
            )
    else:
        removed = list(listed)
        if not removed:
            raise BotError(f"Project {_quoted(name)} has no trained iterations: nothing to delete.")
    _refuse_training(name, removed)
    gone = {it.id for it in removed}
    # Images that survive elsewhere: in the workspace or a snapshot the plan keeps.
    kept = set(_ids(client, p, None))
    for it in listed:
        if it.id not in gone:
            ctx.check()
            kept.update(_ids(client, p, it.id))
    snapshots = {}
    for it in removed:
        ctx.check()
        snapshots[it.id] = _ids(client, p, it.id)
    # An image held by several removed snapshots goes with the last one deleted.
    owner: dict[str, str] = {}
    for it in removed:
        for image in snapshots[it.id]:
            if image not in kept:
                owner[image] = it.id
    facts = tuple(
        IterationFacts(
            it.id,
            it.name,
            it.publish_name or "",
            len(snapshots[it.id]),
            removed=True,
            own_images=tuple(i for i in dict.fromkeys(snapshots[it.id]) if owner.get(i) == it.id),
        )
        for it in removed
    )
    return Facts(
        kind=command.kind.value,
        project_id=p,
        project_name=name,
        workspace_images=0,
        iterations=facts,
    )


def _project_facts(ctx: JobContext, command: commands.Delete, p: str, name: str) -> Facts:
    client = ctx.client
    workspace = _ids(client, p, None)
    union = dict.fromkeys(workspace)
    tags = {t.id: TagFacts(t.id, t.name, t.image_count or 0) for t in client.get_tags(p)}
    iterations = []
    listed = client.get_iterations(p)
    _refuse_training(name, listed)
    for it in listed:
        ctx.check()
        held = _ids(client, p, it.id)
        union.update(dict.fromkeys(held))
        for tag in client.get_tags(p, it.id):
            tags.setdefault(tag.id, TagFacts(tag.id, tag.name, 0))
        iterations.append(
            IterationFacts(it.id, it.name, it.publish_name or "", len(held), removed=True)
        )
    predictions = tuple(dict.fromkeys(pr.id for pr in client.iter_predictions(p)))
    return Facts(
        kind=command.kind.value,
        project_id=p,
        project_name=name,
        workspace_images=len(workspace),
        iterations=tuple(iterations),
        images=tuple(union),
        tags=tuple(tags.values()),
        predictions=predictions,
    )


def _tag_facts(ctx: JobContext, command: commands.Delete, p: str, name: str) -> Facts:
    assert command.tag_id is not None
    try:
        tag = ctx.client.get_tag(p, command.tag_id)
    except NotFound:
        raise NotFound(
            f"Project {_quoted(name)} has no tag {command.tag_id} in its workspace: "
            "nothing to delete."
        ) from None
    count = tag.image_count
    if count is None:
        count = ctx.client.count_images(p, kind="tagged", tag_ids=[tag.id])
    return Facts(
        kind=command.kind.value,
        project_id=p,
        project_name=name,
        workspace_images=0,
        iterations=(),
        tags=(TagFacts(tag.id, tag.name, count),),
    )


def _prediction_facts(ctx: JobContext, command: commands.Delete, p: str, name: str) -> Facts:
    stored = list(dict.fromkeys(pr.id for pr in ctx.client.iter_predictions(p)))
    not_found: tuple[str, ...] = ()
    if command.selector == "ids":
        # Ids are lower case on both sides (the parser and models normalise them).
        present = set(stored)
        wanted = list(dict.fromkeys(command.prediction_ids))
        stored = [i for i in wanted if i in present]
        not_found = tuple(i for i in wanted if i not in present)
    return Facts(
        kind=command.kind.value,
        project_id=p,
        project_name=name,
        workspace_images=0,
        iterations=(),
        predictions=tuple(stored),
        predictions_not_found=not_found,
    )


_COLLECTORS: dict[str, Callable[[JobContext, commands.Delete, str, str], Facts]] = {
    commands.DeleteKind.PROJECT: _project_facts,
    commands.DeleteKind.ITERATION: _iteration_facts,
    commands.DeleteKind.ITERATIONS: _iteration_facts,
    commands.DeleteKind.TAG: _tag_facts,
    commands.DeleteKind.IMAGES: _image_facts,
    commands.DeleteKind.PREDICTIONS: _prediction_facts,
}


def _subject_facts(ctx: JobContext, command: commands.Delete) -> SubjectFacts:
    """Return one person's images in every project searched: `find`'s count search over the
    scope (resources in parallel), then the ids in each project holding matches, read with
    that project's own resource client.

    Raises TrainingApiError when some project or resource could not be searched: a plan
    made from a partial search would leave the person's images there and say it erased them.
    """
    selectors = command.selectors
    assert selectors is not None  # a subject is parsed with its selectors
    clients = narrowed(ctx.clients, selectors.resources)
    result = subject.find(clients, selectors)
    if not subject.complete(result):
        failed = [
            f"project {_quoted(p.place.project_name)} ({p.place.project_id}) on"
            f" {p.place.resource}: {p.problem}"
            for p in result.projects
            if p.problem is not None
        ]
        failed += [f"resource {r}: {why}" for r, why in result.unreadable_resources]
        raise TrainingApiError(
            f"Could not search every project for {selectors.describe()}: {'; '.join(failed)}."
            " No deletion is planned from a partial search (it could leave some of the"
            f" person's images behind); `retry {ctx.request.id}` searches again."
        )
    projects: list[Facts] = []
    for found in result.projects:
        if not found.matched:
            continue
        ctx.check()
        place = found.place
        one = replace(
            command,
            kind=commands.DeleteKind.IMAGES,
            project_id=place.project_id,
            selector="subject",
        )
        facts = _image_facts(
            ctx, one, place.project_id, place.project_name, client=clients[place.resource]
        )
        if facts.images_targeted:
            projects.append(replace(facts, resource=place.resource))
    return SubjectFacts(
        matching=selectors.describe(),
        projects=tuple(projects),
        resources=tuple(clients),
        projects_searched=len(result.projects),
        iterations_searched=sum(len(p.sets) - 1 for p in result.projects),
        unknown_projects=result.unknown_projects,
    )


def collect_facts(ctx: JobContext, command: commands.Delete) -> AnyFacts:
    """Return what the live API holds for `command`; raise NotFound/BotError when nothing."""
    if command.kind == commands.DeleteKind.SUBJECT:
        return _subject_facts(ctx, command)
    collector = _COLLECTORS.get(command.kind)
    if collector is None or command.project_id is None:
        raise BotError(f"{command.describe()} is not something this job can delete.")
    name = _project_name(ctx.client, command.project_id)
    return collector(ctx, command, command.project_id, name)


def run_preview(ctx: JobContext) -> Outcome:
    """Compute the preview, freeze the plan as deletion items; the request becomes pending."""
    command = parser.load_delete(ctx.request.command)
    facts = collect_facts(ctx, command)
    items = plan_for(facts)
    if not items:
        raise BotError(nothing_to_delete(facts))
    preview = preview_for(facts)
    counts = counts_of(items)
    ttl = ctx.settings.approval_ttl
    # The plan replaces any earlier one (a preview run again after a restart or a retry).
    return Outcome(
        request_status=Status.PENDING,
        request_fields={"preview": preview, "expires_at": iso(ctx.clock.now() + ttl)},
        audit_action="preview.computed",
        audit_details={"counts": counts, "summary": preview["summary"]},
        message=None,
        mention_requester=False,
        new_plan=items,
    )


# ---------------------------------------------------------------------------------------------
# Execution (I/O)


def _client_of(ctx: JobContext, item: DeletionItem) -> TrainingClient:
    """Return the client of the resource holding the item's project (its own, in a plan
    across resources; else the request's); raise ResourceError when not configured any more."""
    return ctx.client if item.resource is None else ctx.resources.client(item.resource)


def _per_project(items: Sequence[DeletionItem]) -> list[list[DeletionItem]]:
    """Return the items grouped by resource and project, in plan order."""
    grouped: dict[tuple[str | None, str], list[DeletionItem]] = {}
    for item in items:
        grouped.setdefault((item.resource, item.project_id), []).append(item)
    return list(grouped.values())


def _present_images(client: TrainingClient, p: str, ids: Sequence[str]) -> set[str]:
    """Return which of `ids` the workspace or any remaining snapshot still holds."""
    present = {image.id for image in client.get_images_by_ids(p, ids)}
    if len(present) == len(set(ids)):
        return present  # all in the workspace: no snapshot needs reading
    for it in client.get_iterations(p):
        rest = [i for i in ids if i not in present]
        if not rest:
            break
        try:
            present.update(image.id for image in client.get_images_by_ids(p, rest, it.id))
        except NotFound:
            continue  # the iteration went meanwhile
    return present


def _present(
    client: TrainingClient, p: str, kind: str, item: DeletionItem, targets: Sequence[str]
) -> list[str]:
    """Return the targets that still exist (an unpublish target: still published)."""
    try:
        if kind == "image":
            present = _present_images(client, p, targets)
            return [t for t in targets if t in present]
        if kind == "prediction":
            stored = {pr.id for pr in client.iter_predictions(p)}
            return [t for t in targets if t in stored]
        if kind == "tag":
            client.get_tag(p, item.target_id)
        elif kind == "iteration":
            client.get_iteration(p, item.target_id)
        elif kind == "project":
            client.get_project(p)
        elif kind == "unpublish" and not client.get_iteration(p, _iteration_of(item)).publish_name:
            return []
        return list(targets)
    except NotFound:
        return []


def _call(
    client: TrainingClient, p: str, kind: str, item: DeletionItem, targets: Sequence[str]
) -> int:
    if kind == "image":
        return client.delete_images(p, targets, all_iterations=True)
    if kind == "prediction":
        return client.delete_predictions(p, targets)
    if kind == "tag":
        return client.delete_tag(p, item.target_id)
    if kind == "iteration":
        return client.delete_iteration(p, item.target_id)
    if kind == "project":
        return client.delete_project(p)
    return client.unpublish_iteration(p, _iteration_of(item))


def _iteration_of(unpublish: DeletionItem) -> str:
    """Return the iteration an unpublish item stops publishing (its parent, always set)."""
    assert unpublish.parent_id is not None, unpublish
    return unpublish.parent_id


def _already_gone(
    client: TrainingClient, p: str, kind: str, item: DeletionItem, exc: TrainingApiError
) -> bool:
    """True when a refused call's target was already gone, so nothing is left to do.

    No public source gives the code for unpublishing an iteration that is not published
    (BadRequestIterationNotPublished is a guess; 400 BadRequest or even 204 are as
    plausible), so an unpublish refused with any 4xx is settled by reading the iteration back.
    """
    if isinstance(exc, NotFound):
        return True
    if kind != "unpublish" or exc.status is None or not 400 <= exc.status < 500:
        return False
    try:
        return not client.get_iteration(p, _iteration_of(item)).publish_name
    except NotFound:
        return True


class _BatchFailed(Exception):
    def __init__(self, error: TrainingApiError, batch: int) -> None:
        super().__init__(error.user_message)
        self.error = error
        self.batch = batch


def _mark(
    ctx: JobContext,
    batch: Sequence[DeletionItem],
    targets: Sequence[str] | None,
    *,
    status: ItemStatus,
    http_status: int | None,
    action: str,
    outcome: str,
    details: Mapping[str, Any],
) -> None:
    """Mark a batch (or some targets of a multi-id batch) and audit it, in one transaction."""
    first = batch[0]
    kind = first.kind
    selected = list(targets) if targets is not None and kind in MULTI else None
    shown = selected if selected is not None else [first.target_id]
    with ctx.transaction() as tx:
        tx.mark_items(
            first.batch,
            status=status,
            http_status=http_status,
            operation=OPERATIONS[kind],
            target_ids=selected,
        )
        tx.audit(
            action,
            targets=shown,
            outcome=outcome,
            details={
                "operation": OPERATIONS[kind],
                "project_id": first.project_id,
                "batch": first.batch,
                "http_status": http_status,
                **({"iteration_id": first.parent_id} if kind == "unpublish" else {}),
                **({"covered": len(batch) - 1} if kind not in MULTI and len(batch) > 1 else {}),
                **details,
            },
        )


def _run_batch(ctx: JobContext, batch: Sequence[DeletionItem], *, resolve_timeout: float) -> None:
    """Send one batch unless the service already confirmed it; raise _BatchFailed."""
    first = batch[0]
    kind = first.kind
    p = first.project_id
    open_items = [i for i in batch if i.status not in CONFIRMED]
    if not open_items:
        return
    client = _client_of(ctx, first)
    targets = [i.target_id for i in open_items] if kind in MULTI else [first.target_id]
    step = "api.probe"
    try:
        # Re-read before sending. Ids already absent were not removed by this request; those
        # left `sending` by a call whose outcome never came (present when it was sent) were.
        # Image and prediction batches are always re-read, so the receipt never claims a
        # removal someone else made; an unpublish too (someone may have unpublished).
        if (
            kind in MULTI
            or kind == "unpublish"
            or any(i.status != ItemStatus.PENDING for i in open_items)
        ):
            present = _present(client, p, kind, first, targets)
            _settle_absent(ctx, batch, open_items, [t for t in targets if t not in present])
            targets = present
            if not targets:
                return
        step = "api.call"
        with ctx.transaction() as tx:
            tx.mark_items(
                first.batch,
                status=ItemStatus.SENDING,
                target_ids=targets if kind in MULTI else None,
            )
        try:
            status = _call(client, p, kind, first, targets)
        except ServiceError as exc:
            if not _already_gone(client, p, kind, first, exc):
                raise
            _mark(
                ctx,
                batch,
                targets,
                status=ItemStatus.GONE,
                http_status=exc.status,
                action=step,
                outcome="gone",
                details={"code": exc.code},
            )
            return
        _mark(
            ctx,
            batch,
            targets,
            status=ItemStatus.DELETED,
            http_status=status,
            action=step,
            outcome="ok",
            details={},
        )
    except TrainingApiError as exc:
        if step == "api.call" and exc.maybe_applied:
            if _resolve(ctx, batch, targets, exc, timeout=resolve_timeout):
                return
        else:
            _mark(
                ctx,
                batch,
                targets,
                status=ItemStatus.FAILED,
                http_status=exc.status,
                action=step,
                outcome="failed",
                details={"code": exc.code, "error": exc.user_message},
            )
        raise _BatchFailed(exc, first.batch) from exc


def _settle_absent(
    ctx: JobContext,
    batch: Sequence[DeletionItem],
    open_items: Sequence[DeletionItem],
    absent: Sequence[str],
) -> None:
    """Record targets found absent before a call: removed by an earlier send, or by others."""
    if not absent:
        return
    kind = batch[0].kind
    if kind in MULTI:
        sent = {i.target_id for i in open_items if i.status == ItemStatus.SENDING}
    else:
        sent = set(absent) if batch[0].status == ItemStatus.SENDING else set()
    ours = [t for t in absent if t in sent]
    others = [t for t in absent if t not in sent]
    if ours:
        _mark(
            ctx,
            batch,
            ours,
            status=ItemStatus.DELETED,
            http_status=None,
            action="api.probe",
            outcome="ok",
            details={"resolved_by": "re-read", "absent": len(ours)},
        )
    if others:
        _mark(
            ctx,
            batch,
            others,
            status=ItemStatus.GONE,
            http_status=None,
            action="api.probe",
            outcome="gone",
            details={"probed": len(open_items), "absent": len(others)},
        )


def _resolve(
    ctx: JobContext,
    batch: Sequence[DeletionItem],
    targets: Sequence[str],
    error: TrainingApiError,
    *,
    timeout: float,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Settle a call whose outcome is unknown by re-reading; return True when it was applied.

    Every target was present just before the call, so one absent now was removed by it.
    Re-reads with backoff for up to `timeout` seconds (DeleteImages with allIterations answers
    202 and empties the snapshots later). When the re-read itself fails, the items stay
    `sending`: still unknown, and a retry re-reads them before anything else.
    """
    first = batch[0]
    kind = first.kind
    client = _client_of(ctx, first)
    deadline = time.monotonic() + timeout
    delay = 0.05
    present: list[str] = list(targets)
    try:
        while True:
            present = _present(client, first.project_id, kind, first, targets)
            if not present or time.monotonic() >= deadline:
                break
            sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
    except TrainingApiError as exc:
        with ctx.transaction() as tx:
            tx.audit(
                "api.call",
                targets=list(targets),
                outcome="unknown",
                details={"error": error.user_message, "re_read_error": exc.user_message},
            )
        return False
    removed = [t for t in targets if t not in present]
    details = {"resolved_by": "re-read", "error": error.user_message}
    if removed:
        _mark(
            ctx,
            batch,
            removed,
            status=ItemStatus.DELETED,
            http_status=None,
            action="api.call",
            outcome="ok",
            details=details,
        )
    if present:
        _mark(
            ctx,
            batch,
            present,
            status=ItemStatus.FAILED,
            http_status=error.status,
            action="api.call",
            outcome="failed",
            details={**details, "code": error.code},
        )
    return not present


# ---------------------------------------------------------------------------------------------
# Verification (I/O)


def survivors(
    client: TrainingClient,
    items: Sequence[DeletionItem],
    counts: Mapping[str, SnapshotCount] | None = None,
) -> set[int]:
    """Return the seq of every item whose target still exists (unpublish: still published).

    `counts`: how the preview lets a count prove images gone from each snapshot
    (snapshot_counts); a snapshot without one is read id by id.
    """
    if not items:
        return set()
    p = items[0].project_id
    try:
        client.get_project(p)
    except NotFound:
        return set()  # the project, and everything in it, is gone
    listed = {it.id: it for it in client.get_iterations(p)}
    left: set[int] = set()
    images = [i for i in items if i.kind == "image"]
    if images:
        ids = [i.target_id for i in images]
        # The workspace by id: its tags and metadata change, so no count there proves anything.
        present = {im.id for im in client.get_images_by_ids(p, ids)}
        for iteration_id in listed:
            rest = [i for i in ids if i not in present]
            if not rest:
                break  # every one is still in the workspace: no snapshot can change that
            try:
                present |= _held(client, p, iteration_id, rest, (counts or {}).get(iteration_id))
            except NotFound:
                continue  # the iteration went meanwhile, with its snapshot
        left.update(i.seq for i in images if i.target_id in present)
    predictions = [i for i in items if i.kind == "prediction"]
    if predictions:
        stored = {pr.id for pr in client.iter_predictions(p)}
        left.update(i.seq for i in predictions if i.target_id in stored)
    for item in items:
        kind = item.kind
        if kind == "iteration" and item.target_id in listed:
            left.add(item.seq)
        elif kind == "unpublish":
            iteration = listed.get(_iteration_of(item))
            if iteration is not None and iteration.publish_name:
                left.add(item.seq)
        elif kind == "project":
            left.add(item.seq)
        elif kind == "tag":
            try:
                client.get_tag(p, item.target_id)
                left.add(item.seq)
            except NotFound:
                pass
    return left


def _held(
    client: TrainingClient,
    p: str,
    iteration_id: str,
    ids: Sequence[str],
    count: SnapshotCount | None,
) -> set[str]:
    """Return which of `ids` one snapshot still holds, in the fewest calls.

    Reading every id costs one call per 256. With the preview's SnapshotCount it costs one
    count, plus one call per 256 of the ids the count cannot see (`others`), plus, only when
    the count is not zero, the listing of the images it still finds (each one an erased image:
    a snapshot's picks never grow). The cheaper way is taken.
    """
    by_id = -(-len(ids) // MAX_IMAGE_IDS)
    if count is None:
        return {im.id for im in client.get_images_by_ids(p, ids, iteration_id)}
    others = [i for i in ids if i in count.others]
    if int(count.possible) + -(-len(others) // MAX_IMAGE_IDS) >= by_id:
        return {im.id for im in client.get_images_by_ids(p, ids, iteration_id)}
    found: set[str] = set()
    if count.possible:
        try:
            left = client.count_images(
                p, kind=count.kind, iteration_id=iteration_id, tag_ids=count.tag_ids
            )
            if left:
                matching = client.iter_images(
                    p, kind=count.kind, iteration_id=iteration_id, tag_ids=count.tag_ids
                )
                wanted = set(ids)
                found.update(im.id for im in matching if im.id in wanted)
        except NotFound:
            pass  # the tag, or the iteration, is gone from it: nothing matches there
    if others:
        found.update(im.id for im in client.get_images_by_ids(p, others, iteration_id))
    return found


def verify(
    ctx: JobContext,
    items: Sequence[DeletionItem],
    *,
    timeout: float,
    patience: float = 0.0,
    sleep: Callable[[float], None] | None = None,
) -> set[int]:
    """Re-read until every item is gone or the verification's time is up; store verdicts.

    Returns the seq of the survivors. Polls with backoff because DeleteImages with
    allIterations=true answers 202 and removes the images asynchronously, with undocumented
    timing. The first window is `timeout` seconds of this attempt; if targets remain then,
    the request says "deleted, verifying" in its thread and verification goes on, backing off
    up to PATIENT_POLL_CAP between reads, until `patience` seconds after verification first
    started in this round (ctx.clock, kept in the checkpoint: a restart resumes the same
    wait and re-reads only what is not confirmed gone yet).
    """
    wait = sleep if sleep is not None else _stoppable_sleep(ctx)
    started = _verification_started(ctx)
    give_up_at = started + timedelta(seconds=max(patience, 0.0))
    window_end = time.monotonic() + timeout
    delay = 0.05
    # Verdicts of gone are final (stored per round); a resumed job re-reads only the rest.
    remaining = [i for i in items if i.verified != "gone"]
    total = len(items)
    phase = "verifying"
    counts = snapshot_counts(ctx.request.preview, items)
    while True:
        ctx.progress(total - len(remaining), total, phase)
        left = {
            seq
            for group in _per_project(remaining)
            for seq in survivors(_client_of(ctx, group[0]), group, counts)
        }
        gone = [i for i in remaining if i.seq not in left]
        _store_verdicts(ctx, gone, "gone")
        remaining = [i for i in remaining if i.seq in left]
        if not remaining:
            break
        in_window = time.monotonic() < window_end
        if not in_window and ctx.clock.now() >= give_up_at:
            break
        if not in_window and phase == "verifying":
            phase = PATIENT_PHASE
            _say_still_verifying(ctx, total - len(remaining), total, patience)
        ctx.check()
        cap = 5.0 if in_window else PATIENT_POLL_CAP
        pause = min(delay, cap)
        if in_window:
            pause = min(pause, max(0.0, window_end - time.monotonic()))
        wait(pause)
        ctx.check()
        delay = min(delay * 2, cap)
    _store_verdicts(ctx, remaining, "survived")
    ctx.progress(total - len(remaining), total, phase, force=True)
    return {i.seq for i in remaining}


def _stoppable_sleep(ctx: JobContext) -> Callable[[float], None]:
    """Sleep that ends early when the bot stops (the job then resumes at its checkpoint)."""

    def wait(seconds: float) -> None:
        ctx.runner.stopping.wait(seconds)

    return wait


def _verification_started(ctx: JobContext) -> datetime:
    """Return when this round's verification began (saved once, so restarts keep it)."""
    saved = ctx.checkpoint.get("verify_started")
    if isinstance(saved, dict) and saved.get("round") == ctx.round:
        return parse_iso(str(saved["at"]))
    now = ctx.clock.now()
    ctx.save(verify_started={"round": ctx.round, "at": iso(now)})
    return now


def _say_still_verifying(ctx: JobContext, gone: int, total: int, patience: float) -> None:
    """Tell the thread, once per round, that the deletion is done and verification goes on."""
    ctx.post(
        f"{ctx.request.id}: deleted; Custom Vision removes images from trained iterations "
        f"asynchronously. Verifying: {gone:,} of {total:,} confirmed gone so far. The receipt "
        f"follows once everything is confirmed gone, or after "
        f"{wording.describe_wait(patience)} at the most, listing what still exists.",
        key=f"verifying:{ctx.request.number}:{ctx.round}",
    )


def _store_verdicts(ctx: JobContext, items: Sequence[DeletionItem], verdict: str) -> None:
    if not items:
        return
    with ctx.transaction() as tx:
        tx.mark_verified([i.target_id for i in items], verdict)


# ---------------------------------------------------------------------------------------------
# Receipt (I/O: two files and their upload)


def write_receipt(
    ctx: JobContext,
    *,
    outcome: str,
    started_at: str,
    note: str,
    then: Outcome,
) -> Outcome:
    """Write receipt.json, .csv and .html for this round, queue the uploads; return `then`.

    A round runs the job to an outcome: a retry after a failure starts a new one (and a new
    receipt); a restart stays in its round. `then`, the outcome the receipt reports, is saved
    in the checkpoint in the same transaction, so a restart returns it instead of concluding
    (and posting a receipt) a second time.

    When the work directory is full the deletion's outcome stands: the uploads carry the
    receipt itself, the outbox writes the files once there is room and posts them, and the
    returned outcome says the receipt follows.
    """
    record = ctx.request
    items = ctx.plan()
    rows = receipt_rows(record.id, items)
    preview = record.preview or {}
    meta = record.command.get("meta") or {}
    attempt = ctx.round
    suffix = "" if attempt <= 1 else f"-{attempt}"
    json_path = ctx.work_dir / f"receipt{suffix}.json"
    csv_path = ctx.work_dir / f"receipt{suffix}.csv"
    html_path = ctx.work_dir / f"receipt{suffix}.html"
    endpoint = _endpoints(ctx, items)
    document = {
        "request_id": record.id,
        "outcome": outcome,
        "note": note,
        "requester": record.requester,
        "approvers": list(record.approvals),
        "ticket": meta.get("ticket"),
        "reason": meta.get("reason"),
        **deadline_fields(record.deadline),
        "deadline": _receipt_clock(record.deadline, outcome, ctx.clock.now().date()),
        "command": record.text,
        "preview_summary": preview.get("summary"),
        "project": preview.get("project"),
        "endpoint_host": endpoint,
        "started_at": started_at,
        "finished_at": iso(ctx.clock.now()),
        "attempt": attempt,
        "summary": receipt_summary(rows),
        "approvals": [{"approver": who, "at": at} for who, at in ctx.approval_times()],
        "audit_head": dict(zip(("seq", "hash"), ctx.audit_head(), strict=True)),
        "items": rows,
    }
    render: dict[str, Any] | None = None
    try:
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        for path in (json_path, csv_path, html_path):
            render_receipt(document, path)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        full = WorkDirFull(ctx.work_dir, "It is posted in this thread as soon as there is room.")
        render = {"receipt": document}
        then = replace(
            then,
            message=f"{(then.message or '').replace('receipt attached.', 'receipt to follow.')} "
            f"The receipt could not be written yet: {full.user_message}",
            audit_details={**then.audit_details, "receipt": "waiting for room"},
            await_uploads=False,
        )
    key = f"receipt:{record.number}"
    key_suffix = "" if attempt <= 1 else f":{attempt}"
    label = "deletion receipt" if outcome == "done" else f"deletion receipt ({outcome})"
    with ctx.transaction() as tx:
        for path, fmt in ((json_path, "json"), (csv_path, "csv"), (html_path, "html")):
            tx.queue_upload(
                f"{key}:{fmt}{key_suffix}",
                path,
                filename=f"{record.id}-receipt{suffix}.{fmt}",
                title=f"{record.id} {label} ({fmt.upper()})",
                comment=f"{record.id} {label}: {note}" if fmt == "json" else None,
                render=render,
            )
        tx.save(concluded={"round": attempt, "outcome": asdict(then)})
    return then


def _endpoints(ctx: JobContext, items: Sequence[DeletionItem]) -> str:
    """Return the endpoint host the receipt names: the request's, or each resource's of a
    plan across resources (`host (name)`, joined)."""
    names = list(dict.fromkeys(i.resource for i in items if i.resource is not None))
    if not names:
        return ctx.client.endpoint_host
    return ", ".join(f"{ctx.resources.client(n).endpoint_host} ({n})" for n in names)


def _receipt_clock(deadline: Deadline | None, outcome: str, today: date) -> str:
    """Return the receipt's clock line: completed today (met or late) when the deletion is done,
    else where the clock stands today ("-" for requests stored before the clock existed)."""
    if deadline is None:
        return "-"
    if outcome == "done":
        return replace(deadline, completed=deadline.completed or today).describe()
    return deadline.describe(today)


def render_receipt(document: Mapping[str, Any], path: Path) -> None:
    """Write a receipt document as JSON, or its items as CSV rows (`.csv`), or as receipt.html."""
    partial = path.with_name(path.name + ".partial")
    try:
        with partial.open("w", encoding="utf-8", newline="") as fp:
            if path.suffix == ".csv":
                # The request's clock on every row: the CSV is read on its own, row by row.
                writer = csv.DictWriter(fp, fieldnames=(*RECEIPT_COLUMNS, "request_deadline"))
                writer.writeheader()
                clock = document.get("deadline") or "-"
                writer.writerows({**row, "request_deadline": clock} for row in document["items"])
            elif path.suffix == ".html":
                head, summaries, rows = receipt_view(document)
                for chunk in webpage.receipt_page(head, summaries, RECEIPT_COLUMNS, rows):
                    fp.write(chunk)
            else:
                json.dump(document, fp, ensure_ascii=False, indent=1)
                fp.write("\n")
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# The delete job


def _is_open(batch: Sequence[DeletionItem]) -> bool:
    return any(i.status not in CONFIRMED for i in batch)


def _compare_with_plan(
    ctx: JobContext, batch: Sequence[DeletionItem], started_at: str
) -> Outcome | None:
    """Read the live contents; return the new-plan outcome when they outgrew the frozen plan."""
    command = parser.load_delete(ctx.request.command)
    try:
        if _nothing_new(ctx, command):
            return None
        facts = collect_facts(ctx, command)
    except TrainingApiError as exc:
        if not isinstance(exc, NotFound):
            raise _BatchFailed(exc, batch[0].batch) from exc
        return None  # the target is gone: nothing new can go with it
    except BotError:
        return None  # e.g. no iterations left: nothing new either
    record = ctx.request
    changes = changes_since(ctx.plan(), record.preview or {}, facts)
    if not changes:
        return None
    return _replanned(ctx, facts, changes, OPERATIONS[batch[0].kind], started_at)


def _nothing_new(ctx: JobContext, command: commands.Delete) -> bool:
    """True when a short read proves that a selector's erasure (`delete images`) would remove
    nothing beyond its frozen plan; False when it cannot (then the facts are read in full).

    Only the workspace can gain a matching image: it is listed with the selector. A trained
    snapshot never gains an image or a tag, so one the preview counted (SnapshotCount) can gain
    no match either, unless its tags now answer the selector's tag names differently (its
    tags are read, one call each), or it is an iteration trained since (GetIterations).
    """
    p = command.project_id
    if command.kind != commands.DeleteKind.IMAGES or p is None or command.selector == "ids":
        return False
    items = ctx.plan()
    counts = snapshot_counts(ctx.request.preview, items)
    client = ctx.client
    listed = client.get_iterations(p)
    if any(it.id not in counts for it in listed):
        return False
    planned = {i.target_id for i in items if i.kind == "image"}
    workspace, _ = _selected(client, command, p, None)
    if any(image.id not in planned for image in workspace):
        return False
    if command.selector == "subject":
        assert command.selectors is not None
        for it in listed:
            ctx.check()
            tags, possible = subject.matching_tag_ids(client, p, it.id, command.selectors.tag_names)
            count = counts[it.id]
            if (tuple(t.id for t in tags), possible) != (count.tag_ids, count.possible):
                return False
    return True


def _replanned(
    ctx: JobContext, facts: AnyFacts, changes: Mapping[str, int], before: str, started_at: str
) -> Outcome:
    """Stop before `before`: freeze a new plan from `facts`; its preview needs new approvals."""
    record = ctx.request
    items = plan_for(facts)
    preview = preview_for(facts)
    done = with_outcome(ctx.plan(), "removed")
    what = describe_changes(changes)
    so_far = (
        f"Removed so far: {_described(done)} (receipt attached)."
        if done
        else "Nothing was deleted."
    )
    text = (
        f"{record.id} stopped before {before}: the contents changed since the preview "
        f"({what}). {so_far} A fresh preview replaces the approved one and needs new "
        "approval; earlier approvals do not carry over."
    )
    outcome = Outcome(
        request_status=Status.PENDING,
        request_fields={
            "preview": preview,
            "expires_at": iso(ctx.clock.now() + ctx.settings.approval_ttl),
            "progress": None,
        },
        message=text,
        audit_action="plan.changed",
        audit_details={
            "changes": dict(changes),
            "before": before,
            "withdrawn_approvals": list(record.approvals),
            "counts": counts_of(items),
            "summary": preview["summary"],
        },
        new_plan=items,
    )
    if done:
        note = f"stopped before {before}: the contents changed since the preview ({what})."
        outcome = write_receipt(
            ctx, outcome="stopped", started_at=started_at, note=note, then=outcome
        )
    return outcome


def run_delete(
    ctx: JobContext,
    *,
    verify_timeout: float = DEFAULT_VERIFY_TIMEOUT,
    verify_patience: float = DEFAULT_VERIFY_PATIENCE,
    sleep: Callable[[float], None] | None = None,
) -> Outcome:
    """Execute the frozen plan, verify, post the receipt; return the request's outcome."""
    record = ctx.request
    items = ctx.plan()
    if not items:
        raise BotError(f"{record.id} has no frozen deletion plan; run a new request.")
    concluded = ctx.checkpoint.get("concluded")
    if isinstance(concluded, dict) and concluded.get("round") == ctx.round:
        # Restarted after this round's receipt was queued: its outcome stands.
        return Outcome(**concluded["outcome"])
    started_at = ctx.checkpoint.get("started_at")
    if not isinstance(started_at, str):
        started_at = iso(ctx.clock.now())
        ctx.save(started_at=started_at)
    batches = batches_of(items)
    total = len(items)
    done = sum(1 for i in items if i.status in CONFIRMED)
    # Before the first call and before every container call, the live contents are compared
    # with the frozen plan (a container's call removes whatever it holds at that moment). A
    # person's erasure (selectors) promises every image of theirs, so it is compared before
    # its first call too: one found since the preview means a new plan, not a partial erasure.
    person = bool((record.command or {}).get("selectors"))
    containers = person or any(b[0].kind in CONTAINERS for b in batches if _is_open(b))
    compared = False
    try:
        for batch in batches:
            if _is_open(batch):
                if (containers and not compared) or batch[0].kind in CONTAINERS:
                    replanned = _compare_with_plan(ctx, batch, started_at)
                    if replanned is not None:
                        return replanned
                compared = True
            ctx.progress(done, total, PHASES[batch[0].kind])
            _run_batch(ctx, batch, resolve_timeout=verify_timeout)
            done += len(batch)
            ctx.save(batch=batch[0].batch)
    except _BatchFailed as failure:
        return _failed_outcome(ctx, failure, started_at)
    ctx.progress(total, total, "verifying", force=True)
    items = ctx.plan()
    try:
        left = verify(ctx, items, timeout=verify_timeout, patience=verify_patience, sleep=sleep)
    except TrainingApiError as exc:
        note = f"verification could not finish: {exc.user_message}"
        unverified = _outcome_failed(
            ctx,
            f"Every deletion call was answered, but the {note}",
            {"error": exc.user_message},
            advice="A retry verifies again without re-sending anything; receipt attached.",
        )
        return write_receipt(
            ctx, outcome="unverified", started_at=started_at, note=note, then=unverified
        )
    items = ctx.plan()
    counts = counts_of(items)
    if left:
        alive = [i for i in items if i.seq in left]
        shown = [_shown(i.kind, i.target_id, i.parent_id) for i in alive]
        listed = "; ".join(shown[:SURVIVORS_SHOWN])
        more = f" and {len(shown) - SURVIVORS_SHOWN} more" if len(shown) > SURVIVORS_SHOWN else ""
        note = (
            f"{len(alive)} of {total} targets still exist after "
            f"{_verified_for(verify_timeout, verify_patience)}: "
            f"{listed}{more}. They are listed as survived in the receipt."
        )
        survived = _outcome_failed(
            ctx,
            f"Not every target was removed: {note}",
            {"survivors": len(alive), "survivor_ids": [i.target_id for i in alive][:100]},
            advice="A retry verifies again without re-sending confirmed calls; receipt attached.",
        )
        return write_receipt(
            ctx, outcome="survivors", started_at=started_at, note=note, then=survived
        )
    removed = with_outcome(items, "removed")
    absent = with_outcome(items, "already_absent")
    summary = _described(removed) + " deleted and verified gone"
    if absent:
        summary += f"; {_described(absent)} already absent (not removed by this request)"
    # `counts` is the plan; what this request removed and what it found absent are apart.
    tally = {"counts": counts, "removed": removed, "already_absent": absent, "verified": total}
    finished = Outcome(
        request_status=Status.DONE,
        result=tally,
        message=f"{record.id}: {summary}; receipt attached.",
        audit_action="request.completed",
        audit_details=tally,
    )
    return write_receipt(
        ctx, outcome="done", started_at=started_at, note=f"{summary}.", then=finished
    )


def _verified_for(timeout: float, patience: float) -> str:
    if patience > timeout:
        return f"{wording.describe_wait(patience)} of verification"
    return f"{timeout:g} s"


def _outcome_failed(
    ctx: JobContext, text: str, details: Mapping[str, Any], *, advice: str
) -> Outcome:
    return Outcome(
        request_status=Status.FAILED,
        job_status=JobStatus.FAILED,
        error=text,
        message=f"{ctx.request.id} failed. {text} {advice}",
        audit_action="request.failed",
        audit_details=dict(details),
    )


def _failed_outcome(ctx: JobContext, failure: _BatchFailed, started_at: str) -> Outcome:
    items = ctx.plan()
    removed = with_outcome(items, "removed")
    absent = with_outcome(items, "already_absent")
    unknown = with_outcome(items, "outcome_unknown")
    remaining = counts_of(
        i for i in items if RESULTS[i.status][0] in ("not_removed", "not_attempted")
    )
    batches = len({i.batch for i in items})
    note = (
        f"stopped at batch {failure.batch} of {batches}: {failure.error.user_message} "
        f"Removed: {_described(removed)}."
    )
    if absent:
        note += f" Already absent (not removed by this request): {_described(absent)}."
    if unknown:
        note += f" Outcome unknown (the service could not be re-read): {_described(unknown)}."
    note += f" Not removed yet: {_described(remaining)}."
    stopped = _outcome_failed(
        ctx,
        f"The deletion {note}",
        {
            "error": failure.error.user_message,
            "batch": failure.batch,
            "removed": removed,
            "remaining": remaining,
            "already_absent": absent,
            "unknown": unknown,
        },
        advice="A retry continues where it stopped, without re-sending what was removed; "
        "partial receipt attached.",
    )
    return write_receipt(ctx, outcome="partial", started_at=started_at, note=note, then=stopped)
