"""End to end: every reply the bot sends fits Slack's limits (issue 13, item 3).

Long lists page ("showing 20 of 55") and `/cv status --all` posts the rest as a file; a
deletion preview that does not fit keeps its totals and warnings in the message and attaches
the full preview to the thread before the Approve button appears.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from emulators.customvision import Seed
from emulators.slack.records import ApiCall
from emulators.stack import APPROVER, CHANNEL, PUBLIC_CHANNEL, REQUESTER, Stack
from handlers.limits import (
    MAX_BLOCKS_TEXT,
    MAX_REPLY_TEXT,
    MAX_SECTION_TEXT,
    blocks_text_units,
    units,
)
from tests.conftest import StartStack, request_pending

LONG_REASON = "Erasure request received by post; the customer asked for every trace " * 13


def _ack_text(response: Any) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def _long_delete(stack: Stack, project: str, n: int) -> str:
    ids = stack.cv.data.image_ids(project)[n % 5 :][:40]
    return (
        f"delete images {project} --ids {','.join(ids)} --ticket DSR-{9000 + n}-ÄÖÜ-🙂 "
        f'--reason "{LONG_REASON[:990]}"'
    )


@pytest.fixture
def busy_stack(stacks: StartStack) -> Stack:
    """A stack where the requester has 55 open deletions with very long commands."""
    stack = stacks(seed=Seed(projects=1, iterations=2, tags=3, images=120, predictions=4))
    project = stack.cv.data.project_ids()[0]
    ids = [
        stack.request_id(stack.command(REQUESTER, _long_delete(stack, project, n)))
        for n in range(55)
    ]
    for rid in ids:
        stack.wait_status(rid, "pending")
    stack.wait_delivered()
    return stack


def test_e2e_status_of_55_open_requests_fits_and_counts_all(busy_stack: Stack) -> None:
    text = _ack_text(busy_stack.command(REQUESTER, "status"))
    assert units(text) <= MAX_REPLY_TEXT, units(text)
    assert "Your open requests (55)" in text
    assert "showing 20 of 55" in text
    assert "/cv status --all" in text
    assert text.count("• R-") == 20
    # the newest first, every line names its request
    assert "• R-1055 " in text and "• R-1036 " in text and "• R-1035 " not in text


def test_e2e_status_all_posts_every_open_request_as_a_file(busy_stack: Stack) -> None:
    text = _ack_text(busy_stack.command(REQUESTER, "status --all"))
    assert "55 open requests" in text, text
    busy_stack.wait_delivered()
    files = [f for f in busy_stack.slack.files(CHANNEL) if f.name.startswith("status-")]
    assert len(files) == 1, [f.name for f in busy_stack.slack.files(CHANNEL)]
    body = files[0].data.decode("utf-8")
    for number in range(1001, 1056):
        assert f"R-{number} " in body
    assert LONG_REASON[:990] in body  # the file holds what the message could not
    assert "DSR-9054-ÄÖÜ-🙂" in body


def test_e2e_status_all_refused_in_a_public_channel(busy_stack: Stack) -> None:
    before = len(busy_stack.slack.files())
    text = _ack_text(busy_stack.command(REQUESTER, "status --all", channel=PUBLIC_CHANNEL))
    assert "public channel" in text and "private channel" in text, text
    busy_stack.wait_delivered()
    assert len(busy_stack.slack.files()) == before


# -- the deletion preview ----------------------------------------------------------------------

BIG = Seed(projects=1, iterations=20, tags=500, images=200, predictions=7, image_bytes=128)


def _has_approve(blocks: list[dict[str, Any]]) -> bool:
    return any(
        element.get("action_id") == "request.approve"
        for block in blocks
        if block.get("type") == "actions"
        for element in block.get("elements", [])
    )


def _blocks_of(call: ApiCall) -> list[dict[str, Any]]:
    raw = call.params.get("blocks")
    if isinstance(raw, str):
        raw = json.loads(raw)
    return list(raw or [])


def test_e2e_preview_of_20_iterations_and_500_tags_keeps_every_warning(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=BIG)
    project = stack.cv.data.project_ids()[0]
    rid = request_pending(stack, f"delete project {project}")
    message = stack.announcement(rid)
    shown = "\n".join(str(block.get("text", {}).get("text", "")) for block in message.blocks)
    assert blocks_text_units(message.blocks) <= MAX_BLOCKS_TEXT
    for block in message.blocks:
        text = block.get("text")
        if isinstance(text, dict):
            assert units(str(text["text"])) <= MAX_SECTION_TEXT
    # totals and every warning stay in the message
    assert "Stored predictions: 7" in shown, shown
    assert "prod-1" in shown  # the published endpoint that stops working
    assert "20 iterations" in shown and "500 tags" in shown
    assert f"{rid}-preview.txt" in shown, shown
    # the full preview is a file in the thread, posted before any Approve button
    files = [f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-preview.txt"]
    assert len(files) == 1
    full = files[0].data.decode("utf-8")
    assert full.count("Iteration ") >= 20
    for tag in stack.cv.data.tag_ids(project)[:3]:
        assert tag in full
    assert "Stored predictions: 7" in full
    assert files[0].thread_ts == message.ts
    calls = stack.slack.calls
    shared = next(
        n
        for n, call in enumerate(calls)
        if call.method == "files.completeUploadExternal" and call.ok and rid in str(call.params)
    )
    with_button = [
        n
        for n, call in enumerate(calls)
        if call.method in ("chat.postMessage", "chat.update") and _has_approve(_blocks_of(call))
    ]
    assert with_button, "the Approve button never appeared"
    assert min(with_button) > shared
    assert _has_approve(message.blocks)
    # and the approval works as before
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"


def test_e2e_preview_file_refused_keeps_the_approve_button_away(stacks: StartStack) -> None:
    stack = stacks(seed=BIG)
    project = stack.cv.data.project_ids()[0]
    stack.slack.inject_error("files.completeUploadExternal", "restricted_action", times=1000)
    rid = stack.request_id(stack.command(REQUESTER, f"delete project {project}"))
    assert stack.wait_status(rid, "pending", "failed") == "pending"
    stack.slack.wait_for(
        lambda: any(
            c.method == "files.completeUploadExternal" and not c.ok for c in stack.slack.calls
        )
    )
    stack.wait_delivered()
    message = stack.announcement(rid)
    assert not _has_approve(message.blocks)
    assert not any(_has_approve(v.blocks) for v in message.history)
    shown = json.dumps(message.blocks)
    assert "could not be attached" in shown, shown
    # a click that reaches the bot anyway (an old client, a forged payload) approves nothing
    stack.click(APPROVER, rid, "approve")
    stack.wait_delivered()
    assert stack.status(rid) == "pending"
    assert stack.bot.store.get(rid).approvals == ()


# -- neighbours: other messages that could outgrow Slack ----------------------------------------


def test_e2e_announcement_with_a_reason_of_emoji_fits(stack: Stack) -> None:
    # 1,000 emoji is a valid --reason (1,000 characters) but 2,008 UTF-16 units with its label:
    # more than a section field's 2,000. The old builder counted code points and Slack refused.
    project = stack.cv.data.project_ids()[0]
    reason = "🙂" * 1000
    rid = stack.request_id(
        stack.command(REQUESTER, f'export project {project} --no-images --reason "{reason}"')
    )
    stack.wait_status(rid, "done", "failed")
    stack.wait_delivered()
    refused = [c for c in stack.slack.calls if c.error in ("invalid_blocks", "msg_blocks_too_long")]
    assert refused == []
    fields = next(b for b in stack.announcement(rid).blocks if b.get("block_id") == "meta")
    shown = fields["fields"][1]["text"]
    assert units(shown) <= 2000 and shown.startswith("Reason: 🙂🙂")


def test_e2e_thread_post_longer_than_a_message_says_what_it_left_out(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project} --no-images"))
    stack.wait_status(rid, "done", "failed")
    stack.wait_delivered()
    record = stack.bot.store.get(rid)
    lines = [f"• part-{n:03d}.zip: 1.0 MB, SHA-256 {'ab' * 32}" for n in range(120)]
    with stack.bot.store.write() as conn:
        stack.bot.store.post(conn, record.number, record.channel, "\n".join(lines))
    stack.wait_delivered()
    thread = stack.slack.messages(CHANNEL, record.message_ts)
    found = [m for m in thread if "part-000" in m.text]
    assert len(found) == 1, [(c.method, c.error) for c in stack.slack.calls][-5:]
    posted = found[0]
    assert posted.thread_ts == record.message_ts
    assert units(posted.text) <= MAX_REPLY_TEXT
    kept = posted.text.count("• part-")
    assert 0 < kept < 120
    assert f"… ({120 - kept} more lines did not fit in one Slack message)" in posted.text


def test_e2e_status_with_emoji_tickets_still_shows_20_whole_lines(stacks: StartStack) -> None:
    # A ticket of 100 emoji is 200 UTF-16 units, and it is also quoted in the command.
    stack = stacks(seed=Seed(projects=1, iterations=1, tags=2, images=20, predictions=3))
    project = stack.cv.data.project_ids()[0]
    rids = [
        stack.request_id(
            stack.command(REQUESTER, f"delete predictions {project} --ticket {'🙂' * 100}")
        )
        for _ in range(21)
    ]
    for rid in rids:
        stack.wait_status(rid, "pending")
    text = _ack_text(stack.command(REQUESTER, "status"))
    assert units(text) <= MAX_REPLY_TEXT, units(text)
    assert text.count("• R-") == 20 and "showing 20 of 21" in text
    assert "did not fit" not in text


def _hold_announcements(stack: Stack) -> None:
    """Hold up every post and update: the announcement showing the current preview and its
    Approve button stays unposted until `_approved_once_posted`."""
    for method in ("chat.postMessage", "chat.update"):
        stack.slack.inject_latency(method, 8.0, times=None)


def _crafted_approval_counts_nothing(stack: Stack, rid: str, ts: str) -> None:
    """Send a signed Approve click for `rid` on the message `ts` (a forged payload, a stale
    client: the button carries only the request id); it is refused and counts nothing."""
    assert stack.driver is not None
    answer = stack.driver.click(APPROVER.user_id, CHANNEL, ts, "request.approve", rid)
    assert answer.status_code == 200, answer.text

    def refusals() -> list[str]:
        events = stack.bot.store.audit_events(request_id=rid)
        return [str(e.details["reason"]) for e in events if e.action == "approval.refused"]

    assert stack.slack.wait_for(lambda: bool(refusals()))
    assert "has not been posted with its Approve button yet" in refusals()[-1]
    assert stack.status(rid) == "pending"
    assert stack.bot.store.get(rid).approvals == ()


def _approved_once_posted(stack: Stack, rid: str) -> None:
    """Let the announcement through; its Approve button then approves, and the deletion runs."""
    stack.slack.clear_latency()
    stack.wait_delivered(timeout=60)
    assert _has_approve(stack.announcement(rid).blocks)
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"


def test_e2e_a_crafted_approval_before_the_preview_is_posted_counts_nothing(
    stack: Stack,
) -> None:
    # A message of the channel to craft the click on: another request's announcement.
    other = stack.request_id(stack.command(REQUESTER, "export projects"))
    stack.wait_status(other, "done", "failed")
    stack.wait_delivered()
    _hold_announcements(stack)
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project, None)[0]
    rid = stack.request_id(stack.command(REQUESTER, f"delete images {project} --ids {image}"))
    assert stack.wait_status(rid, "pending", "failed") == "pending"
    ts = stack.bot.store.get(rid).message_ts or stack.bot.store.get(other).message_ts
    assert ts is not None
    _crafted_approval_counts_nothing(stack, rid, ts)
    _approved_once_posted(stack, rid)


def test_e2e_a_crafted_approval_after_a_new_preview_before_it_is_posted_counts_nothing(
    stacks: StartStack,
) -> None:
    # Window 2: the old preview (whole in its file, in the thread; that file's delivery the
    # request's latest) was posted and approved; the run found the project changed and froze
    # a new plan, whose preview is computed but not posted yet. A click on the old message
    # (a stale client, a forged payload) approves nothing of the new plan.
    stack = stacks(seed=BIG)
    project = stack.cv.data.project_ids()[0]
    rid = request_pending(stack, f"delete project {project}")
    assert [f.name for f in stack.slack.files(CHANNEL)] == [f"{rid}-preview.txt"]
    stack.cv.data.add_images(project, 7)
    _hold_announcements(stack)
    stack.click(APPROVER, rid, "approve")
    stack.slack.wait_for(lambda: "plan.changed" in _actions(stack, rid))
    assert stack.wait_status(rid, "pending", "failed") == "pending"
    assert stack.bot.store.get(rid).approvals == ()
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    _crafted_approval_counts_nothing(stack, rid, ts)
    assert project in stack.cv.data.project_ids()
    _approved_once_posted(stack, rid)
    assert project not in stack.cv.data.project_ids()


def _actions(stack: Stack, rid: str) -> list[str]:
    return [e.action for e in stack.bot.store.audit_events(request_id=rid)]
