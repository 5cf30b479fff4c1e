"""bot.deletion: the pure plan, and every delete kind from preview to verified receipt.

The integration tests run the real Training API client over HTTP against the Custom Vision
emulator, the real Store on a temporary SQLite file, and the jobs through Runner.run_one (the
same path a worker takes), without starting worker threads.
"""

from __future__ import annotations

import csv
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bot.deletion import (
    NOUNS,
    Facts,
    IterationFacts,
    SubjectFacts,
    TagFacts,
    changes_since,
    describe_changes,
    plan_for,
    plan_items,
    preview_of,
    receipt_summary,
    run_delete,
    run_preview,
    subject_summary,
)
from bot.lifecycle import (
    DeletionItem,
    ItemStatus,
    JobKind,
    JobStatus,
    RequestRecord,
    Role,
    Status,
)
from bot.runner import JobContext, Outcome
from bot.wording import describe_counts
from emulators.customvision import Exchange, Faults, Seed
from tests.harness import REQUESTER, JobHarness, job_parts

KEY = "deletion-test-key-4Rt9"
APPROVER = "U0BOB"


# -- pure: plan and preview ----------------------------------------------------------------


def guid(n: int) -> str:
    return str(uuid.UUID(int=n))


P = guid(1)


def test_plan_items_batches_images_by_256_and_predictions_by_64() -> None:
    facts = Facts(
        kind="images",
        project_id=P,
        project_name="faces",
        workspace_images=300,
        iterations=(),
        images=tuple(guid(1000 + n) for n in range(300)),
        predictions=tuple(guid(5000 + n) for n in range(70)),
    )
    items = plan_items(facts)
    batches = [(b, [i.kind for i in items if i.batch == b]) for b in (1, 2, 3, 4)]
    assert [(b, kinds[0], len(kinds)) for b, kinds in batches] == [
        (1, "image", 256),
        (2, "image", 44),
        (3, "prediction", 64),
        (4, "prediction", 6),
    ]
    assert [i.target_id for i in items[:300]] == list(facts.images)
    assert {i.parent_id for i in items} == {None}


def project_facts(images: int, *, tags: int = 1, published: str = "") -> Facts:
    return Facts(
        kind="project",
        project_id=P,
        project_name="faces",
        workspace_images=images,
        iterations=(IterationFacts(guid(11), "Iteration 1", published, images, removed=True),),
        images=tuple(guid(1000 + n) for n in range(images)),
        tags=tuple(TagFacts(guid(20 + n), f"t{n}", 0) for n in range(tags)),
    )


def person_in(project: int, resource: str, images: int, *, published: str = "") -> Facts:
    """Return the facts of one person's `images` in one project of `resource`."""
    p = guid(project)
    ids = tuple(guid(project * 1000 + n) for n in range(images))
    return Facts(
        kind="images",
        project_id=p,
        project_name=f"faces-{project}",
        workspace_images=images - 1,
        iterations=(IterationFacts(guid(project + 50), "Iteration 1", published, images, False),),
        images=ids,
        selector="subject",
        matching="metadata customer=4711",
        resource=resource,
    )


def test_plan_for_a_subject_numbers_each_projects_batches_on_with_its_resource() -> None:
    facts = SubjectFacts(
        matching="metadata customer=4711",
        projects=(person_in(2, "main", 300, published="prod"), person_in(3, "dev", 2)),
        resources=("main", "dev"),
        projects_searched=5,
        iterations_searched=9,
    )
    items = plan_for(facts)
    assert [i.seq for i in items] == list(range(1, 303))
    batches = Counter((i.batch, i.resource, i.project_id) for i in items)
    assert batches == {(1, "main", guid(2)): 256, (2, "main", guid(2)): 44, (3, "dev", guid(3)): 2}
    assert {i.kind for i in items} == {"image"} and {i.parent_id for i in items} == {None}
    assert subject_summary(facts) == (
        "Deletes 302 images matching metadata customer=4711 everywhere, in 2 projects on 2"
        " resources (main and dev): 300 in the workspaces, and from 2 trained iteration"
        ' snapshots. Published iterations involved: "prod".'
    )
    # One more image of the person in the second project is new; one gone meanwhile is not.
    grown = replace(
        facts,
        projects=(
            replace(facts.projects[0], images=facts.projects[0].images[1:]),
            replace(facts.projects[1], images=(*facts.projects[1].images, guid(9999))),
        ),
    )
    assert changes_since(items, {}, grown) == {"image": 1}


def test_subject_summary_of_one_resource_names_it_only_when_several_were_searched() -> None:
    one = person_in(2, "dev", 1)
    facts = SubjectFacts('tag named "x"', (one,), ("main", "dev"), 3, 3)
    assert subject_summary(facts).startswith(
        'Deletes 1 image matching tag named "x" everywhere, in 1 project on dev: 0 in the'
        " workspace, and from 1 trained iteration snapshot."
    )
    alone = replace(facts, resources=("dev",))
    assert "in 1 project: 0 in the workspace" in subject_summary(alone)


def test_changes_since_counts_only_what_the_plan_would_now_remove_beyond_the_frozen_one() -> None:
    frozen = plan_items(project_facts(5))
    preview = preview_of(project_facts(5))
    assert changes_since(frozen, preview, project_facts(5)) == {}
    assert changes_since(frozen, preview, project_facts(3)) == {}  # gone meanwhile: fine
    changed = changes_since(frozen, preview, project_facts(12, tags=2, published="prod"))
    assert changed == {"unpublish": 1, "image": 7, "tag": 1}
    assert describe_changes(changed) == ("1 newly published iteration, 7 new images and 1 new tag")
    # Ids compare case-insensitively (a frozen plan in another case changes nothing).
    upper = [replace(i, target_id=i.target_id.upper()) for i in frozen]
    assert changes_since(upper, preview, project_facts(5)) == {}


def test_changes_since_a_tag_preview_counts_newly_tagged_images() -> None:
    def tag_facts(images: int) -> Facts:
        tag = TagFacts(guid(20), "faces", images)
        return Facts("tag", P, "faces", 0, (), tags=(tag,))

    frozen, preview = plan_items(tag_facts(4)), preview_of(tag_facts(4))
    assert changes_since(frozen, preview, tag_facts(4)) == {}
    assert changes_since(frozen, preview, tag_facts(2)) == {}
    assert changes_since(frozen, preview, tag_facts(7)) == {"tagged": 3}
    assert describe_changes({"tagged": 3}) == "3 more images carry the tag"


def test_plan_items_of_a_project_unpublish_first_then_one_covering_batch() -> None:
    it1 = IterationFacts(guid(11), "Iteration 1", "prod-1", 2, removed=True)
    it2 = IterationFacts(guid(12), "Iteration 2", "", 1, removed=True)
    facts = Facts(
        kind="project",
        project_id=P,
        project_name="faces",
        workspace_images=2,
        iterations=(it1, it2),
        images=(guid(100), guid(101), guid(102)),
        tags=(TagFacts(guid(20), "alice", 2),),
        predictions=(guid(30),),
    )
    assert [(i.batch, i.kind, i.target_id, i.parent_id) for i in plan_items(facts)] == [
        (1, "unpublish", "prod-1", guid(11)),
        (2, "project", P, None),
        (2, "image", guid(100), P),
        (2, "image", guid(101), P),
        (2, "image", guid(102), P),
        (2, "tag", guid(20), P),
        (2, "iteration", guid(11), P),
        (2, "iteration", guid(12), P),
        (2, "prediction", guid(30), P),
    ]
    preview = preview_of(facts)
    assert preview["unpublish"] == [{"iteration_id": guid(11), "publish_name": "prod-1"}]
    assert preview["images_targeted"] == 3
    assert preview["summary"] == (
        'Deletes project "faces" with everything in it: 3 images (2 in the workspace), 1 tag, '
        "2 iterations and 1 stored prediction. Unpublishes prod-1 first: that prediction endpoint "
        "stops working."
    )


def test_plan_items_of_iterations_deletes_own_images_with_their_iteration() -> None:
    it1 = IterationFacts(guid(11), "Iteration 1", "prod-1", 5, removed=True, own_images=(guid(7),))
    it2 = IterationFacts(guid(12), "Iteration 2", "", 3, removed=True)
    facts = Facts(
        kind="iterations",
        project_id=P,
        project_name="faces",
        workspace_images=0,
        iterations=(it1, it2),
    )
    assert [(i.batch, i.kind, i.target_id, i.parent_id) for i in plan_items(facts)] == [
        (1, "unpublish", "prod-1", guid(11)),
        (2, "iteration", guid(11), None),
        (2, "image", guid(7), guid(11)),
        (3, "iteration", guid(12), None),
    ]
    assert preview_of(facts)["summary"] == (
        'Deletes all 2 iterations ("Iteration 1" and "Iteration 2") of project "faces"; 1 image '
        "used by no other iteration and not in the workspace is deleted with them. "
        "Unpublishes prod-1 first: that prediction endpoint stops working."
    )


@pytest.mark.parametrize(
    ("counts", "text"),
    [
        ({}, "nothing"),
        ({"image": 1}, "1 image"),
        ({"image": 240, "tag": 4, "project": 1}, "240 images, 4 tags and 1 project"),
        ({"prediction": 2, "unpublish": 1}, "2 stored predictions and 1 iteration unpublished"),
    ],
)
def test_deletion_counts_read_as_words(counts: dict[str, int], text: str) -> None:
    assert describe_counts(counts, NOUNS) == text


def test_receipt_summary_counts_each_item_once_by_its_status_and_verdict() -> None:
    statuses = [
        ("deleted", "gone"),
        ("deleted", "survived"),
        ("gone", "gone"),
        ("sending", None),
        ("failed", "survived"),
        ("pending", None),
    ]
    items = [
        {"project_id": "p", "kind": "image", "status": status, "verified": verified}
        for status, verified in statuses
    ] + [{"project_id": "q", "kind": "tag", "status": "gone", "verified": "gone"}]
    across = [{**items[0], "resource": "dev"}, {**items[0], "project_id": "q", "resource": "eu"}]
    assert [(r["resource"], r["project_id"], r["planned"]) for r in receipt_summary(across)] == [
        ("dev", "p", 1),
        ("eu", "q", 1),
    ]
    assert receipt_summary(items) == [
        {
            "project_id": "p",
            "kind": "image",
            "planned": 6,
            "removed": 2,
            "already_absent": 1,
            "outcome_unknown": 1,
            "not_removed": 1,
            "not_attempted": 1,
            "verified_gone": 2,
            "survived": 2,
            "not_verified": 2,
        },
        {
            "project_id": "q",
            "kind": "tag",
            "planned": 1,
            "removed": 0,
            "already_absent": 1,
            "outcome_unknown": 0,
            "not_removed": 0,
            "not_attempted": 0,
            "verified_gone": 1,
            "survived": 0,
            "not_verified": 0,
        },
    ]


# -- the harness -------------------------------------------------------------------------------


@dataclass
class Harness(JobHarness):
    """A bot without Slack: store, runner (not started) and client against the emulator."""

    verify_timeout: float = 5.0
    verify_patience: float = 0.0
    verify_sleep: Callable[[float], None] | None = None

    @property
    def other(self) -> str:
        return self.projects[1]

    def submit(self, text: str) -> RequestRecord:
        """Store a deletion request as the service does, and run its preview job."""
        number = self.store_request(text, status=Status.PREVIEWING, job=JobKind.PREVIEW)
        self.run_jobs()
        return self.store.get(number)

    def approve(self, number: int, *, run: bool = True) -> RequestRecord:
        with self.store.write() as conn:
            self.store.add_approval(conn, number, APPROVER)
            assert self.store.transition(
                conn, number, to=Status.APPROVED, by=Role.APPROVER, actor=APPROVER
            )
            self.store.enqueue_job(conn, number, JobKind.DELETE)
        if run:
            self.run_jobs()
        return self.store.get(number)

    def retry(self, number: int) -> RequestRecord:
        job = self.store.job_for(number, JobKind.DELETE)
        assert job is not None
        with self.store.write() as conn:
            assert self.store.transition(
                conn, number, to=Status.APPROVED, by=Role.REQUESTER, actor=REQUESTER, error=None
            )
            self.store.requeue_job(conn, job.id)
        self.run_jobs()
        return self.store.get(number)

    def items(self, number: int) -> list[DeletionItem]:
        return self.store.deletion_items(number)

    def posts(self, number: int) -> list[str]:
        rows = self.store.db.conn.execute(
            "SELECT payload FROM outbox WHERE kind = 'post' AND request_id = ? ORDER BY id",
            (number,),
        ).fetchall()
        return [json.loads(payload)["text"] for (payload,) in rows]

    def receipt(self, number: int, suffix: str = "") -> tuple[dict[str, Any], list[dict[str, str]]]:
        folder = self.work_dir / f"R-{number}"
        document = json.loads((folder / f"receipt{suffix}.json").read_text(encoding="utf-8"))
        with (folder / f"receipt{suffix}.csv").open(encoding="utf-8", newline="") as fp:
            rows = list(csv.DictReader(fp))
        return document, rows

    def snapshot(self, project_id: str) -> dict[str | None, list[str]]:
        """Every image id per set (None = workspace) of a project."""
        data = self.cv.data
        sets: dict[str | None, list[str]] = {None: data.image_ids(project_id)}
        for it in data.iteration_ids(project_id):
            sets[it] = data.image_ids(project_id, it)
        return sets


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    seed = Seed(projects=2, iterations=2, tags=3, images=560, predictions=70, image_bytes=64)
    made: list[Harness] = []

    def delete(ctx: JobContext) -> Outcome:
        h = made[0]
        return run_delete(
            ctx,
            verify_timeout=h.verify_timeout,
            verify_patience=h.verify_patience,
            sleep=h.verify_sleep,
        )

    handlers = {"preview": run_preview, "delete": delete}
    faults = Faults(async_delete_delay=0.05)
    with job_parts(tmp_path, KEY, seed, faults, handlers) as (cv, store, runner, client, clock):
        work = tmp_path / "work"
        made.append(Harness(cv, store, runner, client, clock, work, tuple(cv.data.project_ids())))
        yield made[0]


def union(sets: dict[str | None, list[str]], keep: Any = None) -> list[str]:
    found: dict[str, None] = {}
    for location, ids in sets.items():
        found.update(dict.fromkeys(i for i in ids if keep is None or keep(location, i)))
    return list(found)


def assert_done_with_receipt(h: Harness, number: int, targets: int) -> dict[str, Any]:
    record = h.store.get(number)
    assert record.status == "done", record.error
    document, rows = h.receipt(number)
    assert len(rows) == len(document["items"]) == targets
    assert {r["verified"] for r in rows} == {"gone"}
    assert {r["status"] for r in rows} <= {"deleted", "gone"}
    assert all(r["at"] and r["operation"] for r in rows)
    assert document["request_id"] == record.id
    assert document["requester"] == REQUESTER
    assert document["approvers"] == [APPROVER]
    assert document["endpoint_host"] == urlsplit(h.cv.endpoint).netloc
    assert record.preview is not None
    assert document["preview_summary"] == record.preview["summary"]
    uploads = h.uploads(number)
    assert set(uploads) == {
        f"receipt:{number}:json",
        f"receipt:{number}:csv",
        f"receipt:{number}:html",
    }
    assert uploads[f"receipt:{number}:csv"]["filename"] == f"{record.id}-receipt.csv"
    return document


# -- every kind, from preview to verified receipt ---------------------------------------------


def select(h: Harness, p: str, selector: str, tag: str) -> list[str]:
    data = h.cv.data
    sets = h.snapshot(p)
    if selector == "--untagged":
        return union(sets, lambda loc, i: not data.image_tag_ids(p, i, loc))
    if selector == "--tag":
        return union(sets, lambda loc, i: tag in data.image_tag_ids(p, i, loc))
    return union(sets)


def without(sets: dict[str | None, list[str]], gone: list[str]) -> dict[str | None, list[str]]:
    drop = set(gone)
    return {loc: [i for i in ids if i not in drop] for loc, ids in sets.items()}


@pytest.mark.parametrize("selector", ["--all", "--untagged", "--tag"])
def test_delete_images_removes_each_selected_image_once_from_every_set(
    harness: Harness, selector: str
) -> None:
    h, p = harness, harness.p
    tag = h.cv.data.tag_ids(p)[0]
    expected = select(h, p, selector, tag)
    before, other_before = h.snapshot(p), h.snapshot(h.other)
    flag = f"--tag {tag}" if selector == "--tag" else selector
    record = h.submit(f'delete images {p} {flag} --ticket DSR-7 --reason "erasure request"')

    assert record.status == "pending"
    assert record.expires_at == h.clock.now() + timedelta(hours=24)
    preview = record.preview
    assert preview is not None
    assert preview["images_targeted"] == len(expected)
    assert preview["workspace_images"] == len(set(expected) & set(before[None]))
    assert preview["unpublish"] == []
    assert {it["id"]: it["images"] for it in preview["iterations"]} == {
        loc: len(set(ids) & set(expected)) for loc, ids in before.items() if loc is not None
    }
    items = h.items(record.number)
    assert sorted(i.target_id for i in items) == sorted(expected)
    sizes = Counter(i.batch for i in items)
    assert [sizes[b] for b in sorted(sizes)] == [
        min(256, len(expected) - n) for n in range(0, len(expected), 256)
    ]
    assert {i.kind for i in items} == {"image"}

    record = h.approve(record.number)

    assert h.cv.deleted_image_counts() == Counter(dict.fromkeys(expected, 1))
    assert h.snapshot(p) == without(before, expected)
    assert h.snapshot(h.other) == other_before
    calls = h.cv.calls_to("DeleteImages")
    assert [(c.status, c.query["allIterations"]) for c in calls] == [(202, "true")] * len(sizes)
    document = assert_done_with_receipt(h, record.number, len(expected))
    assert (document["ticket"], document["reason"]) == ("DSR-7", "erasure request")
    assert h.posts(record.number)[-1] == (
        f"<@{REQUESTER}> {record.id}: {len(expected):,} images deleted and verified gone; "
        "receipt attached."
    )
    api_calls = h.events(record.number, "api.call")
    assert [(e.details["operation"], e.details["http_status"], e.outcome) for e in api_calls] == [
        ("DeleteImages", 202, "ok")
    ] * len(sizes)
    assert sorted(t for e in api_calls for t in e.targets) == sorted(expected)
    completed = h.events(record.number, "request.completed")
    assert [e.details["counts"] for e in completed] == [{"image": len(expected)}]


def test_delete_images_by_id_lists_unknown_ids_and_reaches_iteration_only_images(
    harness: Harness,
) -> None:
    h, p = harness, harness.p
    before = h.snapshot(p)
    it1 = h.cv.data.iteration_ids(p)[0]
    only_in_iteration = next(i for i in before[it1] if i not in before[None])
    unknown = str(uuid.UUID(int=42))
    wanted = [*before[None][:3], only_in_iteration]
    record = h.submit(f"delete images {p} --ids {','.join([*wanted, unknown])}")

    preview = record.preview
    assert preview is not None
    assert (preview["images_targeted"], preview["workspace_images"]) == (4, 3)
    assert preview["images_not_found"] == [unknown]
    assert "1 requested id not found." in preview["summary"]

    h.approve(record.number)

    assert h.cv.deleted_image_counts() == Counter(dict.fromkeys(wanted, 1))
    assert h.snapshot(p) == without(before, wanted)
    assert_done_with_receipt(h, record.number, 4)


@pytest.mark.parametrize(
    ("request_text", "answer"),
    [
        ("images {p} --all", "no images"),
        ("images {p} --untagged", "no untagged images"),
        ("images {p} --tag {tag}", 'no images tagged "alice"'),
        ("images {p} --ids {unknown}", "none of the 1 requested image id"),
        ("predictions {p}", "no stored predictions"),
        ("predictions {p} --ids {unknown}", "no stored predictions with the 1 requested id"),
    ],
)
def test_a_deletion_matching_nothing_fails_at_the_preview(
    harness: Harness, request_text: str, answer: str
) -> None:
    h = harness
    p = h.cv.data.add_project("empty")
    tag = h.cv.data.add_tag(p, "alice")
    unknown = str(uuid.UUID(int=42))
    record = h.submit("delete " + request_text.format(p=p, tag=tag, unknown=unknown))
    assert record.status == "failed"
    assert record.error == f'Nothing to delete: project "empty" holds {answer}.'
    assert h.items(record.number) == []


def test_delete_project_unpublishes_first_and_receipt_lists_every_id(harness: Harness) -> None:
    h, p = harness, harness.p
    data = h.cv.data
    before, other_before = h.snapshot(p), h.snapshot(h.other)
    everything = union(before)
    it1, it2 = data.iteration_ids(p)
    tags = list(dict.fromkeys([*data.tag_ids(p), *data.tag_ids(p, it1), *data.tag_ids(p, it2)]))
    predictions = data.prediction_ids(p)
    assert data.publish_name(p, it1) == "prod-1"
    record = h.submit(f"delete project {p}")

    preview = record.preview
    assert preview is not None
    assert preview["unpublish"] == [{"iteration_id": it1, "publish_name": "prod-1"}]
    assert [(it["id"], it["published"], it["removed"]) for it in preview["iterations"]] == [
        (it1, True, True),
        (it2, False, True),
    ]
    assert preview["images_targeted"] == len(everything)
    assert preview["workspace_images"] == len(before[None])
    assert [t["id"] for t in preview["tags"]] == tags
    assert preview["predictions"] == len(predictions) == 70
    assert "Unpublishes prod-1 first: that prediction endpoint stops working." in preview["summary"]
    items = h.items(record.number)
    assert [(i.batch, i.kind, i.target_id) for i in items[:2]] == [
        (1, "unpublish", "prod-1"),
        (2, "project", p),
    ]
    assert {i.batch for i in items[1:]} == {2}
    assert {i.parent_id for i in items[2:]} == {p}
    assert Counter(i.kind for i in items) == Counter(
        unpublish=1, project=1, image=len(everything), tag=3, iteration=2, prediction=70
    )

    record = h.approve(record.number)

    assert data.project_ids() == [h.other]
    assert [c.operation_id for c in h.cv.calls if c.method == "DELETE"] == [
        "UnpublishIteration",
        "DeleteProject",
    ]
    assert h.cv.deleted_image_counts() == Counter()  # DeleteProject took them, not DeleteImages
    assert h.snapshot(h.other) == other_before
    document = assert_done_with_receipt(h, record.number, len(items))
    rows = {r["target_id"]: r for r in document["items"]}
    assert set(rows) == {"prod-1", p, *everything, *tags, it1, it2, *predictions}
    assert {(rows[i]["operation"], rows[i]["http_status"]) for i in everything} == {
        ("DeleteProject", 204)
    }
    assert (rows["prod-1"]["operation"], rows["prod-1"]["parent_id"]) == ("UnpublishIteration", it1)


def test_delete_published_iteration_unpublishes_it_and_takes_its_own_images(
    harness: Harness,
) -> None:
    h, p = harness, harness.p
    data = h.cv.data
    before = h.snapshot(p)
    it1, it2 = data.iteration_ids(p)
    own = [i for i in before[it1] if i not in before[None] and i not in before[it2]]
    assert own  # the seed retires a few images that only the first iteration keeps
    record = h.submit(f"delete iteration {p} {it1}")

    preview = record.preview
    assert preview is not None
    assert preview["iterations"] == [
        {
            "id": it1,
            "name": "Iteration 1",
            "images": len(before[it1]),
            "published": True,
            "publish_name": "prod-1",
            "removed": True,
        }
    ]
    assert preview["images_targeted"] == len(own)
    assert preview["unpublish"] == [{"iteration_id": it1, "publish_name": "prod-1"}]
    assert [(i.batch, i.kind) for i in h.items(record.number)] == [
        (1, "unpublish"),
        (2, "iteration"),
    ] + [(2, "image")] * len(own)

    record = h.approve(record.number)

    assert [c.operation_id for c in h.cv.calls if c.method == "DELETE"] == [
        "UnpublishIteration",
        "DeleteIteration",
    ]
    assert data.iteration_ids(p) == [it2]
    assert h.snapshot(p) == {None: before[None], it2: before[it2]}
    assert not any(data.image_exists(p, i) for i in own)
    assert_done_with_receipt(h, record.number, 2 + len(own))


def test_delete_iterations_removes_every_trained_iteration(harness: Harness) -> None:
    h, p = harness, harness.p
    data = h.cv.data
    before = h.snapshot(p)
    it1, it2 = data.iteration_ids(p)
    own = [i for i in union(before) if i not in before[None]]
    record = h.submit(f"delete iterations {p}")
    assert record.preview is not None
    assert record.preview["images_targeted"] == len(own)
    assert [it["id"] for it in record.preview["iterations"]] == [it1, it2]

    h.approve(record.number)

    assert [c.operation_id for c in h.cv.calls if c.method == "DELETE"] == [
        "UnpublishIteration",
        "DeleteIteration",
        "DeleteIteration",
    ]
    assert h.snapshot(p) == {None: before[None]}
    assert_done_with_receipt(h, record.number, 1 + 2 + len(own))


def test_delete_tag_removes_it_from_the_workspace_and_keeps_the_images(harness: Harness) -> None:
    h, p = harness, harness.p
    data = h.cv.data
    before = h.snapshot(p)
    tag = data.tag_ids(p)[1]
    tagged = [i for i in before[None] if tag in data.image_tag_ids(p, i)]
    record = h.submit(f"delete tag {p} {tag}")
    assert record.preview is not None
    assert record.preview["tags"] == [
        {"id": tag, "name": data.tag(p, tag).name, "images": len(tagged)}
    ]
    assert record.preview["images_targeted"] == 0

    h.approve(record.number)

    assert tag not in data.tag_ids(p)
    assert h.snapshot(p) == before
    assert not any(tag in data.image_tag_ids(p, i) for i in before[None])
    assert_done_with_receipt(h, record.number, 1)


@pytest.mark.parametrize("by_id", [False, True])
def test_delete_predictions_in_batches_of_64(harness: Harness, by_id: bool) -> None:
    h, p = harness, harness.p
    stored = h.cv.data.prediction_ids(p)
    unknown = str(uuid.UUID(int=43))
    wanted = stored[:2] if by_id else stored
    text = f"delete predictions {p}" + (f" --ids {','.join([*wanted, unknown])}" if by_id else "")
    record = h.submit(text)
    assert record.preview is not None
    assert record.preview["predictions"] == len(wanted)
    assert record.preview["predictions_not_found"] == ([unknown] if by_id else [])

    h.approve(record.number)

    assert h.cv.deleted_prediction_counts() == Counter(dict.fromkeys(wanted, 1))
    assert h.cv.data.prediction_ids(p) == [i for i in stored if i not in wanted]
    assert [len(c.query["ids"].split(",")) for c in h.cv.calls_to("DeletePrediction")] == (
        [2] if by_id else [64, 6]
    )
    assert_done_with_receipt(h, record.number, len(wanted))


# -- faults, retry, resume, survivors ---------------------------------------------------------


def sent_ids(calls: list[Any]) -> list[str]:
    return [i for c in calls for i in c.query["imageIds"].split(",")]


def test_fault_mid_plan_fails_with_partial_receipt_and_retry_sends_only_the_rest(
    harness: Harness,
) -> None:
    h, p = harness, harness.p
    expected = union(h.snapshot(p))
    record = h.submit(f"delete images {p} --all")
    n = record.number
    h.cv.faults.fail_after = {"DeleteImages": 1}

    record = h.approve(n)

    assert record.status == "failed"
    assert [(i.batch, i.status) for i in h.items(n) if i.seq in (1, 257, 513)] == [
        (1, "deleted"),
        (2, "failed"),
        (3, "pending"),
    ]
    assert record.error is not None
    assert "stopped at batch 2 of 3: Custom Vision failed DeleteImages (HTTP 500" in record.error
    assert f"Removed: 256 images. Not removed yet: {len(expected) - 256:,} images." in record.error
    document, rows = h.receipt(n)
    assert document["outcome"] == "partial"
    assert Counter((r["status"], r["verified"]) for r in rows) == Counter(
        {("deleted", ""): 256, ("failed", ""): 256, ("pending", ""): len(expected) - 512}
    )
    assert set(h.uploads(n)) == {f"receipt:{n}:json", f"receipt:{n}:csv", f"receipt:{n}:html"}
    assert h.posts(n)[-1] == (
        f"<@{REQUESTER}> {record.id} failed. {record.error} A retry continues where it stopped, "
        "without re-sending what was removed; partial receipt attached."
    )
    failed = h.events(n, "api.call")[-1]
    assert (failed.outcome, failed.details["operation"], failed.details["http_status"]) == (
        "failed",
        "DeleteImages",
        500,
    )

    h.cv.faults.fail_after = {}
    record = h.retry(n)

    assert record.status == "done", record.error
    accepted = [c for c in h.cv.calls_to("DeleteImages") if c.status == 202]
    assert len(accepted) == 3
    assert Counter(sent_ids(accepted)) == Counter(dict.fromkeys(expected, 1))  # none twice
    assert h.cv.deleted_image_counts() == Counter(dict.fromkeys(expected, 1))
    assert set(h.uploads(n)) == {
        f"receipt:{n}:json",
        f"receipt:{n}:csv",
        f"receipt:{n}:html",
        f"receipt:{n}:json:2",
        f"receipt:{n}:csv:2",
        f"receipt:{n}:html:2",
    }
    document, rows = h.receipt(n, "-2")
    assert document["outcome"] == "done"
    assert {(r["status"], r["verified"]) for r in rows} == {("deleted", "gone")}


@pytest.mark.parametrize("settled", [True, False])
def test_resume_probes_a_batch_left_sending_and_never_deletes_twice(
    harness: Harness, settled: bool
) -> None:
    h, p = harness, harness.p
    expected = union(h.snapshot(p))
    record = h.submit(f"delete images {p} --all")
    n = record.number
    h.approve(n, run=False)
    batch = {b: [i.target_id for i in h.items(n) if i.batch == b] for b in (1, 2, 3)}
    # The previous process died mid-call twice over: batch 1 reached the service, batch 2 not.
    with h.store.write() as conn:
        h.store.mark_items(conn, n, 1, status=ItemStatus.SENDING)
        h.store.mark_items(conn, n, 2, status=ItemStatus.SENDING)
    assert h.client.delete_images(p, batch[1]) == 202
    if settled:
        h.cv.data.settle()
    crashed = len(h.cv.calls_to("DeleteImages"))

    h.run_jobs()

    assert h.store.get(n).status == "done"
    resent = h.cv.calls_to("DeleteImages")[crashed:]
    if settled:
        # Batch 1 is gone everywhere: the probe finds nothing to send. It was present when
        # its call was sent, so that call removed it: this request did.
        assert [sorted(sent_ids([c])) for c in resent] == [sorted(batch[2]), sorted(batch[3])]
        assert {i.status for i in h.items(n) if i.batch == 1} == {"deleted"}
        probe = [e for e in h.events(n, "api.probe") if e.targets]
        assert [(e.outcome, sorted(e.targets)) for e in probe] == [("ok", sorted(batch[1]))]
        assert probe[0].details["resolved_by"] == "re-read"
        assert h.posts(n)[-1] == (
            f"<@{REQUESTER}> R-{n}: {len(expected):,} images deleted and verified gone; "
            "receipt attached."
        )
    assert h.cv.deleted_image_counts() == Counter(dict.fromkeys(expected, 1))
    assert union(h.snapshot(p)) == []
    _document, rows = h.receipt(n)
    assert {r["verified"] for r in rows} == {"gone"}


def test_a_stop_between_batches_resumes_at_the_checkpoint(harness: Harness) -> None:
    h, p = harness, harness.p
    expected = union(h.snapshot(p))
    record = h.submit(f"delete images {p} --all")
    n = record.number

    def stop_after_first_delete(exchange: Exchange) -> None:
        if exchange.operation_id == "DeleteImages":
            h.runner.stopping.set()  # SIGTERM while the first batch is in flight

    h.cv.hooks.append(stop_after_first_delete)
    h.approve(n, run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    h.runner.run_one(job)  # back to the queue at its checkpoint

    assert h.store.get(n).status == "running"  # left for the next worker
    job = h.store.job_for(n, JobKind.DELETE)
    assert job is not None
    assert (job.status, job.checkpoint["batch"]) == ("queued", 1)
    assert len(h.cv.calls_to("DeleteImages")) == 1

    h.cv.hooks.clear()
    h.runner.stopping.clear()
    h.run_jobs()

    assert h.store.get(n).status == "done"
    assert Counter(sent_ids(h.cv.calls_to("DeleteImages"))) == Counter(dict.fromkeys(expected, 1))
    # A stop and resume stay in one round: one receipt, no suffix.
    assert h.uploads(n).keys() == {f"receipt:{n}:json", f"receipt:{n}:csv", f"receipt:{n}:html"}


def test_survivors_fail_the_request_and_a_retry_verifies_again(harness: Harness) -> None:
    h, p = harness, harness.p
    before = h.snapshot(p)
    wanted = before[None][:5]
    h.cv.faults.async_delete_delay = 3600.0  # the 202's asynchronous part never lands in time
    h.verify_timeout = 0.3
    record = h.submit(f"delete images {p} --ids {','.join(wanted)}")
    n = record.number

    record = h.approve(n)

    assert record.status == "failed"
    assert record.error is not None
    assert record.error.startswith("Not every target was removed: 5 of 5 targets still exist")
    assert all(f"image {i}" in record.error for i in wanted)
    document, rows = h.receipt(n)
    assert document["outcome"] == "survivors"
    assert {(r["status"], r["verified"]) for r in rows} == {("deleted", "survived")}

    h.cv.data.settle()
    h.verify_timeout = 5.0
    calls = len(h.cv.calls_to("DeleteImages"))
    record = h.retry(n)

    assert record.status == "done", record.error
    assert len(h.cv.calls_to("DeleteImages")) == calls  # confirmed batches are never re-sent
    document, rows = h.receipt(n, "-2")
    assert {(r["status"], r["verified"]) for r in rows} == {("deleted", "gone")}


def test_a_concluded_outcome_comes_back_typed_from_its_checkpoint_json() -> None:
    # A restart returns the outcome saved with the receipt (JSON in the job's checkpoint).
    outcome = Outcome(
        request_status=Status.PENDING,
        new_plan=plan_items(project_facts(3)),
        audit_details={"changes": {"image": 2}},
    )
    back = Outcome(**json.loads(json.dumps(asdict(outcome))))
    assert back == outcome
    assert type(back.request_status) is Status and type(back.job_status) is JobStatus
    assert back.new_plan is not None and all(isinstance(i, DeletionItem) for i in back.new_plan)


# -- error codes no public source confirms (issue 15) --------------------------------------------


@pytest.mark.parametrize(
    ("variant", "status"),
    [
        ("BadRequestIterationNotPublished", "gone"),
        ("BadRequest", "gone"),
        ("204", "deleted"),
    ],
)
def test_unpublish_race_is_settled_by_reading_the_iteration_back_whatever_the_code(
    harness: Harness, variant: str, status: str
) -> None:
    """Someone unpublishes the iteration between the bot's probe and its UnpublishIteration:
    whatever the service answers then, the bot reads the iteration back instead of trusting
    the (guessed) code, and the deletion goes on."""
    h, p = harness, harness.p
    data = h.cv.data
    it1, it2 = data.iteration_ids(p)
    h.cv.faults.unpublish_unpublished = variant  # type: ignore[assignment]
    record = h.submit(f"delete iteration {p} {it1}")
    probes: list[int] = []

    def unpublish_after_probe(exchange: Exchange) -> None:
        if exchange.operation_id == "GetIteration" and not probes:
            probes.append(1)
            data.unpublish(p, it1)  # the portal, meanwhile

    h.cv.hooks.append(unpublish_after_probe)
    record = h.approve(record.number)
    assert record.status == "done", record.error
    assert probes == [1]
    assert data.iteration_ids(p) == [it2]
    unpublish = [i for i in h.items(record.number) if i.kind == "unpublish"]
    assert [str(i.status) for i in unpublish] == [status]


# -- iterations still training (issue 15) --------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["delete iteration {p} {t}", "delete iterations {p}", "delete project {p}"]
)
def test_deletion_of_an_iteration_in_training_stops_at_the_preview_with_a_clear_answer(
    harness: Harness, command: str
) -> None:
    h, p = harness, harness.p
    training = h.cv.data.add_iteration(p, status="Training")  # the service refuses changes
    record = h.submit(command.format(p=p, t=training))
    assert record.status == "failed"
    assert record.error == (
        f'Iteration "Iteration 3" ({training}) of project "Seed project 1" is still training: '
        "Custom Vision refuses to delete or unpublish it until training ends. Ask again once "
        "it has finished (the Custom Vision portal shows its progress)."
    )
    assert [c for c in h.cv.calls if c.method == "DELETE"] == []


# -- patient verification (issue 15) -------------------------------------------------------------


def test_verification_outlasts_a_202_lag_longer_than_its_first_window_across_a_restart(
    harness: Harness,
) -> None:
    h, p = harness, harness.p
    wanted = h.snapshot(p)[None][:5]
    record = h.submit(f"delete images {p} --ids {','.join(wanted)}")
    n = record.number
    h.cv.faults.async_delete_delay = 1.5  # the snapshots empty long after the first window
    h.verify_timeout = 0.2
    h.verify_patience = 3600.0
    reads: list[float] = []

    restarted: list[int] = []

    def restart_while_verifying(exchange: Exchange) -> None:
        # A stop once verification has gone past its first window: the process restarts.
        if exchange.operation_id == "GetImagesByIds":
            reads.append(time.monotonic())
            if reads[-1] - reads[0] > 0.5 and not restarted:
                restarted.append(1)
                h.runner.stopping.set()

    h.cv.hooks.append(restart_while_verifying)
    h.approve(n, run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    h.runner.run_one(job)
    record = h.store.get(n)
    assert restarted == [1]
    assert record.status == "running"  # stopped at a checkpoint, verifying
    started = h.store.job_for(n, JobKind.DELETE).checkpoint["verify_started"]  # type: ignore[union-attr]
    h.runner.stopping.clear()
    h.run_jobs()

    record = h.store.get(n)
    assert record.status == "done", record.error
    job = h.store.job_for(n, JobKind.DELETE)
    assert job is not None and job.checkpoint["verify_started"] == started  # the same wait
    said = [t for t in h.posts(n) if "deleted; Custom Vision removes images" in t]
    assert len(said) == 1, said  # once per round, not once per restart
    assert re.search(r"Verifying: \d of 5 confirmed gone so far", said[0])
    assert "after 1 hour at the most" in said[0]
    document, rows = h.receipt(n)
    assert document["outcome"] == "done"
    assert {(r["status"], r["verified"]) for r in rows} == {("deleted", "gone")}
    assert Counter(sent_ids(h.cv.calls_to("DeleteImages"))) == Counter(dict.fromkeys(wanted, 1))


def test_verification_gives_up_at_its_maximum_and_lists_the_survivors(harness: Harness) -> None:
    h, p = harness, harness.p
    wanted = h.snapshot(p)[None][:3]
    record = h.submit(f"delete images {p} --ids {','.join(wanted)}")
    h.cv.faults.async_delete_delay = 10 * 3600.0  # longer than the bot waits
    h.verify_timeout = 0.1
    h.verify_patience = 2 * 3600.0
    waited: list[float] = []

    def fake_wait(seconds: float) -> None:
        waited.append(seconds)
        time.sleep(min(seconds, 0.02))  # the first window is real time
        h.clock.advance(seconds=seconds)  # the bot's clock: hours pass at once

    h.verify_sleep = fake_wait
    record = h.approve(record.number)

    assert record.status == "failed"
    assert record.error is not None
    assert record.error.startswith(
        "Not every target was removed: 3 of 3 targets still exist after 2 hours of verification: "
    )
    assert max(waited) == 300.0  # backed off to five minutes between reads, no faster
    # Re-reads back off: about one every five minutes over the two hours, not a read storm.
    assert len(waited) < 2 * 3600 / 300 + 20, len(waited)
    document, rows = h.receipt(record.number)
    assert document["outcome"] == "survivors"
    assert {(r["status"], r["verified"]) for r in rows} == {("deleted", "survived")}
