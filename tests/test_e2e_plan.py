"""End to end: nothing is deleted beyond the approved plan, and receipts say what this bot did.

Through the surfaces: signed commands and clicks into the running bot, the Custom Vision
emulator changed behind the bot's back (someone adds images, tags, trains; someone else deletes),
its fault switches (a change applied but never answered, upper-case GUIDs), and a fake clock
for approvals that age.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest

from bot import audit
from bot.clock import FakeClock
from bot.training import TrainingClient
from emulators.customvision import Exchange, Seed
from emulators.stack import (
    APPROVER,
    CHANNEL,
    GROUP_APPROVER,
    PRIVACY_GROUP,
    REQUESTER,
    Stack,
)
from tests.conftest import StartStack, request_pending

SEED = Seed(projects=2, iterations=2, tags=3, images=40, predictions=6, image_bytes=256)
CHANGED = "changed since the preview"


@pytest.fixture
def stacks(stacks: StartStack) -> StartStack:
    def start(**options: Any) -> Stack:
        env = options.pop("env", {})
        return stacks(seed=SEED, env=env, verify_timeout=10.0, **options)

    return start


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks()


def thread(stack: Stack, rid: str) -> list[str]:
    stack.wait_delivered()
    ts = stack.bot.store.get(rid).message_ts
    return [m.text for m in stack.slack.messages(CHANNEL, ts)]


def receipts(stack: Stack, rid: str) -> list[dict[str, Any]]:
    stack.wait_delivered()
    return [
        json.loads(f.data)
        for f in stack.slack.files(CHANNEL)
        if f.name.startswith(rid) and f.name.endswith(".json") and "receipt" in f.name
    ]


def actions(stack: Stack, rid: str) -> list[str]:
    return [e.action for e in audit.events(stack.bot.db.conn, request_id=rid)]


def deletes(stack: Stack) -> list[str]:
    return [c.operation_id for c in stack.cv.calls if c.method == "DELETE" and c.status < 300]


def someone_else(stack: Stack) -> TrainingClient:
    """Another user of the same resource, working through the Training API."""
    return TrainingClient(stack.cv.endpoint, stack.env["CUSTOM_VISION_TRAINING_KEY"])


def unpublish_all(stack: Stack, project: str) -> None:
    for iteration in stack.cv.data.iteration_ids(project):
        if stack.cv.data.publish_name(project, iteration):
            stack.cv.data.unpublish(project, iteration)


def assert_fresh_approval_asked(stack: Stack, rid: str, *what: str) -> None:
    """The request stopped before any deletion and waits for new approvals on a new preview."""
    assert stack.wait_status(rid, "pending", "done", "failed") == "pending"
    record = stack.bot.store.get(rid)
    assert record.approvals == ()  # the old approvals do not carry over
    said = "\n".join(thread(stack, rid))
    assert CHANGED in said, said
    for words in what:
        assert words in said, said
    assert "plan.changed" in actions(stack, rid)
    shown = stack.announcement(rid)
    buttons = [b for b in shown.blocks if b["type"] == "actions"]
    assert buttons and buttons[0]["elements"][0]["action_id"] == "request.approve"


# ---------------------------------------------------------------------------------------------
# Item 2: containers are compared with the frozen plan before they are removed


def test_e2e_delete_project_never_removes_images_added_after_the_preview(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    rid = request_pending(stack, f"delete project {project} --ticket DSR-7")
    first = stack.bot.store.get(rid).preview
    assert first is not None
    added = stack.cv.data.add_images(project, 7)

    stack.click(APPROVER, rid, "approve")
    assert_fresh_approval_asked(stack, rid, "7 new images")
    assert deletes(stack) == []  # not even the unpublish ran
    assert set(added) <= set(stack.cv.data.image_ids(project))
    preview = stack.bot.store.get(rid).preview
    assert preview is not None and preview["images_targeted"] == first["images_targeted"] + 7

    stack.click(APPROVER, rid, "approve")  # approves the new plan, which holds them
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert project not in stack.cv.data.project_ids()
    listed = {i["target_id"] for i in receipts(stack, rid)[-1]["items"] if i["kind"] == "image"}
    assert set(added) <= listed
    assert audit.verify(stack.bot.db.conn).ok


@pytest.mark.parametrize("change", ["tag", "iteration", "prediction"])
def test_e2e_delete_project_stops_on_any_new_content(stack: Stack, change: str) -> None:
    project = stack.cv.data.project_ids()[0]
    unpublish_all(stack, project)
    rid = request_pending(stack, f"delete project {project}")
    if change == "tag":
        stack.cv.data.add_tag(project, "added-later")
        expected = "1 new tag"
    elif change == "iteration":
        stack.cv.data.add_iteration(project)
        expected = "1 new iteration"
    else:
        stack.cv.data.add_predictions(project, 2)
        expected = "2 new stored predictions"
    stack.click(APPROVER, rid, "approve")
    assert_fresh_approval_asked(stack, rid, expected)
    assert deletes(stack) == []
    assert project in stack.cv.data.project_ids()


def test_e2e_contents_changing_mid_run_stop_before_the_project_with_a_receipt_of_what_ran(
    stack: Stack,
) -> None:
    project = stack.cv.data.project_ids()[0]
    published = [
        i for i in stack.cv.data.iteration_ids(project) if stack.cv.data.publish_name(project, i)
    ]
    assert published
    rid = request_pending(stack, f"delete project {project}")
    added: list[str] = []

    def someone_uploads(exchange: Exchange) -> None:
        # While the bot unpublishes, someone uploads three images.
        if exchange.operation_id == "UnpublishIteration" and not added:
            added.extend(stack.cv.data.add_images(project, 3))

    stack.cv.hooks.append(someone_uploads)
    stack.click(APPROVER, rid, "approve")
    assert_fresh_approval_asked(stack, rid, "3 new images", "Removed so far: ")
    assert "DeleteProject" not in deletes(stack)
    assert set(added) <= set(stack.cv.data.image_ids(project))
    (stopped,) = receipts(stack, rid)
    assert stopped["outcome"] == "stopped"
    unpublished = [i for i in stopped["items"] if i["kind"] == "unpublish"]
    assert {i["result"] for i in unpublished} == {"unpublished by this request"}
    assert {i["result"] for i in stopped["items"] if i["kind"] != "unpublish"} == {"not attempted"}

    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert project not in stack.cv.data.project_ids()
    final = receipts(stack, rid)[-1]
    assert final["outcome"] == "done" and final["attempt"] == 2
    assert set(added) <= {i["target_id"] for i in final["items"]}


def test_e2e_delete_tag_stops_when_images_were_tagged_after_the_preview(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    tag = stack.cv.data.tag_ids(project)[0]
    untagged = [
        i
        for i in stack.cv.data.image_ids(project)
        if tag not in stack.cv.data.image_tag_ids(project, i)
    ][:3]
    rid = request_pending(stack, f"delete tag {project} {tag}")
    stack.cv.data.tag_images(project, untagged, tag)
    stack.click(APPROVER, rid, "approve")
    assert_fresh_approval_asked(stack, rid, "3 more images carry the tag")
    assert deletes(stack) == []
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    assert deletes(stack) == ["DeleteTag"]


def test_e2e_delete_iteration_stops_when_more_images_would_go_with_it(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    unpublish_all(stack, project)
    fresh = stack.cv.data.add_images(project, 2)
    iteration = stack.cv.data.add_iteration(project)  # the only snapshot holding `fresh`
    rid = request_pending(stack, f"delete iteration {project} {iteration}")
    # Someone removes the two images from the workspace only: now the snapshot alone holds
    # them, so deleting the iteration would delete them too.
    someone_else(stack).delete_images(project, fresh, all_iterations=False)
    stack.click(APPROVER, rid, "approve")
    assert_fresh_approval_asked(stack, rid, "2 new images")
    assert iteration in stack.cv.data.iteration_ids(project)
    assert deletes(stack) == ["DeleteImages"]  # only someone else's


def test_e2e_delete_images_by_tag_keeps_images_tagged_after_the_preview(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    tag = stack.cv.data.tag_ids(project)[0]
    rid = request_pending(stack, f"delete images {project} --tag {tag}")
    later = stack.cv.data.add_images(project, 4, tag_ids=[tag])
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    assert not set(later) & set(stack.cv.deleted_image_counts())
    assert set(later) <= set(stack.cv.data.image_ids(project))


# ---------------------------------------------------------------------------------------------
# Item 2: a retry never outlives the approval, nor the approver's authority


def failed_project_deletion(stack: Stack) -> tuple[str, str]:
    project = stack.cv.data.project_ids()[0]
    unpublish_all(stack, project)
    rid = request_pending(stack, f"delete project {project}")
    stack.cv.faults.fail_after["DeleteProject"] = 0
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "failed", "done", timeout=60) == "failed"
    stack.cv.faults.fail_after.clear()
    return rid, project


def test_e2e_retry_after_the_approval_window_needs_new_approvals(stacks: StartStack) -> None:
    clock = FakeClock()
    stack = stacks(clock=clock, env={"BOT_APPROVAL_TTL_HOURS": "24"})
    rid, project = failed_project_deletion(stack)
    clock.advance(days=3)
    stack.command(REQUESTER, f"retry {rid}")
    assert stack.wait_status(rid, "pending", "done", "failed") == "pending"
    said = "\n".join(thread(stack, rid))
    assert "new approval" in said, said
    assert stack.bot.store.get(rid).approvals == ()
    assert project in stack.cv.data.project_ids()
    assert "request.reapproval" in actions(stack, rid)

    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert project not in stack.cv.data.project_ids()


def test_e2e_retry_within_the_window_rechecks_the_recorded_approvers(
    stacks: StartStack,
) -> None:
    clock = FakeClock()
    stack = stacks(clock=clock)
    rid, project = failed_project_deletion(stack)
    clock.advance(hours=1)
    stack.restart_bot(BOT_APPROVERS=PRIVACY_GROUP)  # bob is no longer an approver
    stack.command(REQUESTER, f"retry {rid}")
    assert stack.wait_status(rid, "pending", "done", "failed") == "pending"
    said = "\n".join(thread(stack, rid))
    assert f"<@{APPROVER.user_id}> is no longer an approver" in said, said
    assert project in stack.cv.data.project_ids()

    stack.click(GROUP_APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    assert stack.bot.store.get(rid).approvals == (GROUP_APPROVER.user_id,)


def test_e2e_retry_days_later_with_new_images_and_a_removed_approver(stacks: StartStack) -> None:
    """The issue's report: requester alone, days later, 20 new images, approver gone."""
    clock = FakeClock()
    stack = stacks(clock=clock)
    rid, project = failed_project_deletion(stack)
    first = stack.bot.store.get(rid).preview
    assert first is not None
    clock.advance(days=4)
    added = stack.cv.data.add_images(project, 20)
    stack.restart_bot(BOT_APPROVERS=PRIVACY_GROUP)
    stack.command(REQUESTER, f"retry {rid}")
    assert stack.wait_status(rid, "pending", "done", "failed") == "pending"
    assert set(added) <= set(stack.cv.data.image_ids(project))
    assert stack.cv.calls_to("DeleteProject")[-1].status == 500  # no call after the failure
    preview = stack.bot.store.get(rid).preview
    assert preview is not None and preview["images_targeted"] == first["images_targeted"] + 20


# ---------------------------------------------------------------------------------------------
# Item 6: receipts say what this bot did


def test_e2e_images_deleted_by_someone_else_are_listed_as_already_absent(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    images = stack.cv.data.image_ids(project)[:4]
    rid = request_pending(stack, f"delete images {project} --ids {','.join(images)}")
    someone_else(stack).delete_images(project, images[:2], all_iterations=True)
    stack.cv.data.settle()
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    sent = stack.cv.calls_to("DeleteImages")[-1].query["imageIds"].split(",")
    assert sorted(sent) == sorted(images[2:])
    rows = {i["target_id"]: i for i in receipts(stack, rid)[-1]["items"]}
    for image in images[:2]:
        assert rows[image]["status"] == "gone"
        assert rows[image]["result"] == "already absent (not removed by this request)"
        assert rows[image]["http_status"] is None
    for image in images[2:]:
        assert rows[image]["status"] == "deleted"
        assert rows[image]["result"] == "removed by this request"
    said = "\n".join(thread(stack, rid))
    assert "2 images deleted and verified gone" in said, said
    assert "2 images already absent (not removed by this request)" in said, said


def test_e2e_predictions_deleted_by_someone_else_are_listed_as_already_absent(
    stack: Stack,
) -> None:
    project = stack.cv.data.project_ids()[0]
    predictions = stack.cv.data.prediction_ids(project)[:3]
    rid = request_pending(stack, f"delete predictions {project} --ids {','.join(predictions)}")
    someone_else(stack).delete_predictions(project, predictions[:1])
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    assert stack.cv.calls_to("DeletePrediction")[-1].query["ids"].split(",") == predictions[1:]
    rows = {i["target_id"]: i for i in receipts(stack, rid)[-1]["items"]}
    assert rows[predictions[0]]["result"] == "already absent (not removed by this request)"


@pytest.mark.parametrize("mode", ["drop", "504"])
def test_e2e_delete_images_applied_but_unanswered_is_reported_as_removed(
    stack: Stack, mode: Literal["drop", "504"]
) -> None:
    project = stack.cv.data.project_ids()[0]
    images = stack.cv.data.image_ids(project)[:5]
    rid = request_pending(stack, f"delete images {project} --ids {','.join(images)}")
    stack.cv.faults.fail_after_apply["DeleteImages"] = mode
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=90) == "done", stack.bot.store.get(
        rid
    ).error
    rows = receipts(stack, rid)[-1]["items"]
    assert {r["result"] for r in rows} == {"removed by this request"}
    assert {r["verified"] for r in rows} == {"gone"}
    said = "\n".join(thread(stack, rid))
    assert "not removed" not in said.lower(), said
    assert "re-read" in json.dumps(
        [e.details for e in audit.events(stack.bot.db.conn, request_id=rid)]
    )


def test_e2e_delete_predictions_applied_but_unanswered_is_reported_as_removed(
    stack: Stack,
) -> None:
    project = stack.cv.data.project_ids()[0]
    predictions = stack.cv.data.prediction_ids(project)[:2]
    rid = request_pending(stack, f"delete predictions {project} --ids {','.join(predictions)}")
    stack.cv.faults.fail_after_apply["DeletePrediction"] = "500"
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=90) == "done"
    rows = receipts(stack, rid)[-1]["items"]
    assert {r["result"] for r in rows} == {"removed by this request"}


def test_e2e_upper_case_ids_from_the_service(stacks: StartStack) -> None:
    stack = stacks()
    stack.cv.faults.upper_case_ids = True
    project = stack.cv.data.project_ids()[0]
    unpublish_all(stack, project)
    iteration = stack.cv.data.iteration_ids(project)[0]
    # The user types the ids in upper case; the service answers in upper case too.
    rid = request_pending(stack, f"delete iteration {project.upper()} {iteration.upper()}")
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    assert iteration not in stack.cv.data.iteration_ids(project)

    images = stack.cv.data.image_ids(project)[:3]
    typed = ",".join([images[0].upper(), *images[1:]])
    rid = request_pending(stack, f"delete images {project} --ids {typed}")
    someone_else(stack).delete_images(project, images[:1], all_iterations=True)
    stack.cv.data.settle()
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    rows = {i["target_id"].lower(): i for i in receipts(stack, rid)[-1]["items"]}
    assert rows[images[0]]["status"] == "gone"
    assert {rows[i]["status"] for i in images[1:]} == {"deleted"}
    assert {r["verified"] for r in rows.values()} == {"gone"}

    predictions = stack.cv.data.prediction_ids(project)[:2]
    rid = request_pending(stack, f"delete predictions {project} --ids {','.join(predictions)}")
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done", stack.bot.store.get(rid).error
    assert not set(predictions) & set(stack.cv.data.prediction_ids(project))
