"""End to end: deletions from the slash command through four-eyes approval to the receipt.

Everything goes through the surfaces: signed commands and clicks into the bot, the Slack
emulator's record of what the bot posted, and the Custom Vision emulator's record of calls.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from typing import Any

import pytest

from bot import audit
from emulators.customvision import Seed
from emulators.stack import (
    APPROVER,
    CHANNEL,
    GROUP_APPROVER,
    REQUESTER,
    STRANGER,
    Person,
    Stack,
)
from tests.conftest import DIALOG_OPENED, StartStack, click_answer, request_pending

SEED = Seed(projects=2, iterations=2, tags=3, images=60, predictions=6, image_bytes=256)


@pytest.fixture
def stacks(stacks: StartStack) -> StartStack:
    """Stacks with this module's data; keyword arguments are environment variables."""

    def start(**env: str) -> Stack:
        return stacks(seed=SEED, env=env, verify_timeout=10.0)

    return start


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks()


def receipt(stack: Stack, rid: str) -> dict[str, Any]:
    stack.wait_delivered()
    files = [
        f
        for f in stack.slack.files(CHANNEL)
        if f.name.startswith(rid) and f.name.endswith("receipt.json")
    ]
    assert len(files) >= 1, [f.name for f in stack.slack.files(CHANNEL)]
    data = json.loads(files[-1].data)
    assert isinstance(data, dict)
    return data


def test_e2e_delete_tag_images_preview_approve_receipt(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    tag = stack.cv.data.tag_ids(project)[0]
    targeted = {
        i
        for scope in [None, *stack.cv.data.iteration_ids(project)]
        for i in stack.cv.data.image_ids(project, scope)
        if tag in stack.cv.data.image_tag_ids(project, i, scope)
    }
    assert targeted
    other_images = set(stack.cv.data.image_ids(stack.cv.data.project_ids()[1]))
    rid = request_pending(stack, f"delete images {project} --tag {tag} --ticket DSR-1")

    announcement = stack.announcement(rid)
    actions = next(b for b in announcement.blocks if b["type"] == "actions")
    assert [e["action_id"] for e in actions["elements"]] == [
        "request.approve",
        "request.reject",
        "request.cancel",
    ]
    assert {e["value"] for e in actions["elements"]} == {rid}
    assert "confirm" in actions["elements"][0]
    shown = json.dumps(announcement.blocks)
    assert "Waiting for approval" in shown and "Expires" in shown
    assert str(len(targeted)) in shown

    # Four eyes: the requester and a stranger cannot approve; each refusal is explained.
    assert "cannot approve your own request" in click_answer(stack, REQUESTER, rid, "approve")
    assert "Only approvers" in click_answer(stack, STRANGER, rid, "approve")
    assert stack.status(rid) == "pending"
    assert stack.cv.deleted_image_counts() == {}

    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    counts = stack.cv.deleted_image_counts()
    assert set(counts) == targeted
    assert set(counts.values()) == {1}
    assert other_images == set(stack.cv.data.image_ids(stack.cv.data.project_ids()[1]))

    data = receipt(stack, rid)
    assert data["request_id"] == rid
    assert data["requester"] == REQUESTER.user_id
    assert data["approvers"] == [APPROVER.user_id]
    items = data["items"]
    assert isinstance(items, list)
    assert {i["target_id"] for i in items if i["kind"] == "image"} == targeted
    assert {i["verified"] for i in items} == {"gone"}
    csv_file = [f for f in stack.slack.files(CHANNEL) if f.name.endswith("receipt.csv")][-1]
    rows = list(csv.DictReader(io.StringIO(csv_file.data.decode("utf-8"))))
    assert len(rows) == len(items)

    actions_in_order = [e.action for e in audit.events(stack.bot.db.conn, request_id=rid)]
    for expected in (
        "command.received",
        "request.queued",
        "preview.computed",
        "approval.posted",
        "approval.refused",
        "approval.granted",
        "request.approved",
        "api.call",
        "request.completed",
    ):
        assert expected in actions_in_order, expected
    assert audit.verify(stack.bot.db.conn).ok


def test_e2e_click_answers_are_awaited_when_the_response_url_post_is_late(stack: Stack) -> None:
    # The answer to a click reaches Slack through its response_url after the ack: here each
    # post takes a second, so it lands well after the click's HTTP response, while the outbox
    # is empty. Reading the ephemerals once the outbox was empty (what this suite once did)
    # found none.
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = request_pending(stack, f"delete images {project} --ids {image}")
    stack.slack.inject_latency("response_url", 1.0, times=None)
    assert "Only approvers" in click_answer(stack, STRANGER, rid, "approve")
    assert "cannot approve your own request" in click_answer(stack, REQUESTER, rid, "approve")
    assert [c.status for c in stack.slack.calls_to("response_url")] == [200, 200]
    assert stack.status(rid) == "pending"


def test_e2e_group_approver_and_two_required_approvals(stacks: StartStack) -> None:
    stack = stacks(BOT_REQUIRED_APPROVALS="2")
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = request_pending(stack, f"delete images {project} --ids {image}")
    assert "1 more approval needed" in click_answer(stack, GROUP_APPROVER, rid, "approve")
    # The same person twice counts once.
    assert "already approved" in click_answer(stack, GROUP_APPROVER, rid, "approve")
    assert stack.status(rid) == "pending"
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    assert stack.cv.deleted_image_counts() == {image: 1}
    assert stack.bot.store.get(rid).approvals == (GROUP_APPROVER.user_id, APPROVER.user_id)
    # Both approvers, listed as every list reads: "a and b", "a, b and c".
    both = f"<@{GROUP_APPROVER.user_id}> and <@{APPROVER.user_id}>"
    stack.wait_delivered()
    assert f"Approvals: {both} (2 of 2 needed)" in json.dumps(stack.announcement(rid).blocks)
    assert f"Approved by {both}" in stack.command(REQUESTER, f"status {rid}").json()["text"]


def test_e2e_simultaneous_approvals_execute_once(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    images = stack.cv.data.image_ids(project)[:3]
    rid = request_pending(stack, f"delete images {project} --ids {','.join(images)}")
    barrier = threading.Barrier(4)

    def click(person: Person) -> None:
        barrier.wait()
        stack.click(person, rid, "approve")

    threads = [
        threading.Thread(target=click, args=(p,))
        for p in (APPROVER, GROUP_APPROVER, APPROVER, GROUP_APPROVER)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stack.wait_status(rid, "done", "failed") == "done"
    assert dict(stack.cv.deleted_image_counts()) == {i: 1 for i in images}
    delete_calls = stack.cv.calls_to("DeleteImages")
    assert len(delete_calls) == 1
    jobs = stack.bot.db.conn.execute("SELECT COUNT(*) FROM jobs WHERE kind = 'delete'").fetchone()[
        0
    ]
    assert jobs == 1


def test_e2e_reject_with_reason_and_cancel(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = request_pending(stack, f"delete images {project} --ids {image}")
    assert click_answer(stack, APPROVER, rid, "reject") == DIALOG_OPENED
    views = stack.slack.views(APPROVER.user_id)
    assert views and views[-1].callback_id == "request.reject_reason"
    assert stack.driver is not None
    empty = stack.driver.submit_view(
        APPROVER.user_id,
        "request.reject_reason",
        views[-1].view["private_metadata"],
        {"reason": {"value": "   "}},
    )
    assert empty.json()["response_action"] == "errors"
    stack.driver.submit_view(
        APPROVER.user_id,
        "request.reject_reason",
        views[-1].view["private_metadata"],
        {"reason": {"value": "Wrong subject <!channel>"}},
    )
    assert stack.wait_status(rid, "rejected") == "rejected"
    record = stack.bot.store.get(rid)
    assert record.decided_by == APPROVER.user_id
    assert record.decision_reason == "Wrong subject <!channel>"
    stack.wait_delivered()
    shown = stack.announcement(rid)
    assert "<!channel>" not in shown.text
    assert "Rejected" in json.dumps(shown.blocks)
    assert "rejected and can no longer be decided" in click_answer(stack, APPROVER, rid, "approve")

    rid2 = request_pending(stack, f"delete images {project} --ids {image}")
    assert "Only the requester may cancel" in click_answer(stack, APPROVER, rid2, "cancel")
    stack.click(REQUESTER, rid2, "cancel")
    assert stack.wait_status(rid2, "cancelled") == "cancelled"
    assert stack.cv.deleted_image_counts() == {}


def test_e2e_expired_request_cannot_be_approved(stacks: StartStack) -> None:
    stack = stacks(BOT_APPROVAL_TTL_HOURS="0.0003")  # about one second
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = request_pending(stack, f"delete images {project} --ids {image}")
    assert stack.wait_status(rid, "expired", timeout=10) == "expired"
    assert "can no longer be decided" in click_answer(stack, APPROVER, rid, "approve")
    assert stack.cv.deleted_image_counts() == {}
    assert "request.expired" in [e.action for e in audit.events(stack.bot.db.conn, request_id=rid)]


def test_e2e_delete_iteration_unpublishes_first(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    published = [
        i for i in stack.cv.data.iteration_ids(project) if stack.cv.data.publish_name(project, i)
    ]
    assert published
    iteration = published[0]
    name = stack.cv.data.publish_name(project, iteration)
    rid = request_pending(stack, f"delete iteration {project} {iteration}")
    assert name in json.dumps(stack.announcement(rid).blocks)
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    operations = [c.operation_id for c in stack.cv.calls if c.method == "DELETE"]
    assert operations == ["UnpublishIteration", "DeleteIteration"]
    assert iteration not in stack.cv.data.iteration_ids(project)


def test_e2e_fault_mid_batch_then_retry_finishes_without_resending(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    stack.cv.data.add_images(project, 600)  # three batches of at most 256
    rid = request_pending(stack, f"delete images {project} --untagged")
    targeted = set(stack.cv.data.image_ids(project)) - {
        i for i in stack.cv.data.image_ids(project) if stack.cv.data.image_tag_ids(project, i)
    }
    stack.cv.faults.fail_after["DeleteImages"] = 1  # the second batch fails, every retry too
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "failed", "done", timeout=60) == "failed"
    partial = receipt(stack, rid)
    assert any(i["status"] == "pending" for i in partial["items"])
    first_batch = stack.cv.calls_to("DeleteImages")[0].query["imageIds"].split(",")

    stack.cv.faults.fail_after.clear()
    stack.command(APPROVER, f"retry {rid}")  # an approver may resume; no new approval
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    sent_after = [
        c.query["imageIds"].split(",")
        for c in stack.cv.calls_to("DeleteImages")
        if c.status in (202, 204)
    ]
    assert sent_after[0] == first_batch
    assert not set(first_batch) & {i for batch in sent_after[1:] for i in batch}
    counts = stack.cv.deleted_image_counts()
    assert set(counts) >= targeted
    assert set(counts.values()) == {1}
