"""Erasure by selector, verified with counts where a count proves the answer (issue 19).

The real Training API client over HTTP against the Custom Vision emulator, a real store and the
jobs as a worker runs them (tests.test_deletion's Harness). One project built for the purpose:

    image A   tagged "jane" in the workspace and in both snapshots
    image B   untagged when iteration 1 was trained, tagged "jane" in the workspace since
    image C   tagged "jane" when iteration 1 was trained, since removed from the workspace:
              only iteration 1's snapshot holds it
    600 more  tagged "jane", added after iteration 1 (so in iteration 2 only among snapshots)
    fillers   tagged "other", never erased

A survivor the service leaves behind in one snapshot must be found and named with its exact
id, whether the snapshot still shows it with the tag (A, C: its count finds it) or without
(B: the count cannot see it, so it is read by id), and a snapshot the count proves empty of
the erased images is never read id by id beyond those it may hold without the tag.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.deletion import run_delete, run_preview
from bot.runner import JobContext, Outcome
from emulators.customvision import Call, Faults, Seed
from tests.harness import job_parts
from tests.test_deletion import KEY, Harness, assert_done_with_receipt


@dataclass
class People:
    h: Harness
    p: str
    jane: str
    it1: str
    it2: str
    a: str
    b: str
    c: str
    more: list[str]
    fillers: list[str]

    @property
    def erased(self) -> set[str]:
        return {self.a, self.b, self.c, *self.more}

    def request(self, selector: str) -> str:
        flag = f"--tag {self.jane}" if selector == "--tag" else '--tag-name "Jane"'
        return f"delete images {self.p} {flag}"


@pytest.fixture
def people(tmp_path: Path) -> Iterator[People]:
    made: list[Harness] = []

    def delete(ctx: JobContext) -> Outcome:
        h = made[0]
        return run_delete(ctx, verify_timeout=h.verify_timeout, verify_patience=0.0)

    seed = Seed(projects=0, iterations=0, predictions=0)
    handlers = {"preview": run_preview, "delete": delete}
    with job_parts(tmp_path, KEY, seed, Faults(async_delete_delay=0.05), handlers) as parts:
        cv, store, runner, client, clock = parts
        h = Harness(cv, store, runner, client, clock, tmp_path / "work")
        made.append(h)
        data = cv.data
        p = data.add_project("people")
        jane = data.add_tag(p, "jane")
        other = data.add_tag(p, "other")
        (a,) = data.add_images(p, 1, tag_ids=[jane])
        (b,) = data.add_images(p, 1)
        (c,) = data.add_images(p, 1, tag_ids=[jane])
        fillers = data.add_images(p, 5, tag_ids=[other])
        it1 = data.add_iteration(p)
        client.delete_images(p, [c], all_iterations=False)  # iteration 1 keeps it
        data.tag_images(p, [b], jane)
        more = data.add_images(p, 600, tag_ids=[jane])
        it2 = data.add_iteration(p)
        yield People(h, p, jane, it1, it2, a, b, c, more, fillers)


def verification_calls(h: Harness) -> list[Call]:
    """Return the calls after the last DeleteImages (the verification's)."""
    calls = list(h.cv.calls)
    last = max(n for n, c in enumerate(calls) if c.operation_id == "DeleteImages")
    return calls[last + 1 :]


@pytest.mark.parametrize("selector", ["--tag", "--tag-name"])
def test_a_tag_erasure_counts_each_snapshot_once_and_reads_by_id_only_what_a_count_cannot_see(
    people: People, selector: str
) -> None:
    s, h = people, people.h
    h.cv.faults.async_delete_delay = 0.0  # one verification pass: every call below is its
    record = h.submit(s.request(selector))
    assert record.status == "pending", record.error
    assert {i.target_id for i in h.items(record.number)} == s.erased

    h.approve(record.number)

    assert_done_with_receipt(h, record.number, len(s.erased))
    assert set(h.cv.deleted_image_counts()) == s.erased
    calls = verification_calls(h)
    # --tag lists and counts tagged images (GetTaggedImageCount), --tag-name all images with
    # the tags of that name (GetImageCount): the same filter as the preview's listing.
    counts = [c for c in calls if c.operation_id.endswith("ImageCount")]
    assert sorted(c.query["iterationId"] for c in counts) == sorted([s.it1, s.it2])
    assert {c.query["tagIds"] for c in counts} == {s.jane}
    by_id = [c for c in calls if c.operation_id == "GetImagesByIds"]
    # The workspace by id (603 ids: 3 calls); in each snapshot one call for the erased images
    # it may hold without the tag: B in iteration 1 (untagged there), C in iteration 2 (older
    # than it), and those uploaded while iteration 1 trained. Never one it showed tagged.
    assert sorted(c.query.get("iterationId", "") for c in by_id) == sorted(
        ["", "", "", s.it1, s.it2]
    )
    asked = {c.query.get("iterationId"): set(c.query["imageIds"].split(",")) for c in by_id}
    assert s.b in asked[s.it1] and s.c in asked[s.it2]
    assert not asked[s.it1] & {s.a, s.c} and not asked[s.it2] & {s.a, s.b}
    assert asked[s.it1] <= s.erased and asked[s.it2] <= s.erased


@pytest.mark.parametrize("selector", ["--tag", "--tag-name"])
def test_survivors_in_one_snapshot_are_found_by_count_and_by_id_and_named_exactly(
    people: People, selector: str
) -> None:
    s, h = people, people.h
    h.cv.faults.async_delete_delays[s.it1] = 3600.0  # the service leaves iteration 1 as it is
    h.verify_timeout = 0.3
    record = h.submit(s.request(selector))

    record = h.approve(record.number)

    assert record.status == "failed"
    assert record.error is not None
    assert record.error.startswith("Not every target was removed: 3 of 603 targets still exist")
    for image in (s.a, s.b, s.c):
        assert f"image {image}" in record.error
    document, rows = h.receipt(record.number)
    assert document["outcome"] == "survivors"
    survived = {r["target_id"] for r in rows if r["verified"] == "survived"}
    assert survived == {s.a, s.b, s.c}
    assert {r["verified"] for r in rows if r["target_id"] not in survived} == {"gone"}
    assert set(h.cv.data.image_ids(s.p, s.it1)) == {s.a, s.b, s.c, *s.fillers}


def test_a_survivor_the_count_cannot_see_is_still_found_when_the_tag_is_gone_from_the_workspace(
    people: People,
) -> None:
    # B carries the tag only in the workspace; iteration 1 holds it untagged. The tag's count
    # over iteration 1 is zero once A and C are gone, yet B is still there.
    s, h = people, people.h
    record = h.submit(s.request("--tag"))
    h.cv.faults.async_delete_delays[s.it1] = 3600.0
    h.verify_timeout = 0.3
    h.cv.data.settle()
    h.client.delete_images(s.p, [s.a, s.c], all_iterations=True)  # someone else, meanwhile
    h.cv.faults.async_delete_delays[s.it1] = 0.0
    h.cv.data.settle()
    h.cv.faults.async_delete_delays[s.it1] = 3600.0

    record = h.approve(record.number)

    assert record.status == "failed"
    _, rows = h.receipt(record.number)
    assert {r["target_id"] for r in rows if r["verified"] == "survived"} == {s.b}
    assert {(r["target_id"], r["status"]) for r in rows if r["target_id"] in (s.a, s.c)} == {
        (s.a, "gone"),
        (s.c, "gone"),
    }


def test_a_persons_erasure_is_compared_before_its_first_call_without_relisting_snapshots(
    people: People,
) -> None:
    # The plan is a promise: before the first DeleteImages the live contents are compared with
    # it. The workspace is listed again; a snapshot never gains an image, so only its tags are
    # read (a tag of that name could answer differently), never its images.
    s, h = people, people.h
    record = h.submit(s.request("--tag-name"))
    listed_before = len(h.cv.calls_to("GetImages"))

    h.approve(record.number)

    assert_done_with_receipt(h, record.number, len(s.erased))
    calls = list(h.cv.calls)
    first_delete = min(
        n
        for n, c in enumerate(calls)
        if c.operation_id == "DeleteImages" and c.query["allIterations"] == "true"
    )
    compared = [c for c in calls[:first_delete] if c.operation_id == "GetImages"][listed_before:]
    assert compared and {c.query.get("iterationId") for c in compared} == {None}
    tags_read = [c.query.get("iterationId") for c in calls[:first_delete][-12:]]
    assert {s.it1, s.it2} <= set(tags_read)


def test_an_image_tagged_since_the_preview_still_means_a_new_plan(people: People) -> None:
    s, h = people, people.h
    record = h.submit(s.request("--tag-name"))
    (late,) = s.fillers[:1]
    h.cv.data.tag_images(s.p, [late], s.jane)

    record = h.approve(record.number)

    assert record.status == "pending"
    assert record.approvals == ()
    assert {i.target_id for i in h.items(record.number)} == s.erased | {late}
    assert not [c for c in h.cv.calls_to("DeleteImages") if c.query["allIterations"] == "true"]
