"""End to end: approvals count only while their approver is authorised (issue 12, item 3).

An approver removed from BOT_APPROVERS (a restart with new config) or from an approver user
group (in Slack) used to keep counting; group membership was cached for 5 minutes. Now every
recorded approval is re-checked when an approval is added, stale ones are dropped (said in the
thread, audited), and an approval decision reads group membership fresh.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from bot import audit
from bot.service import FRESH_FOR_APPROVALS
from emulators.customvision import Seed
from emulators.stack import (
    APPROVER,
    CHANNEL,
    GROUP_APPROVER,
    PRIVACY_GROUP,
    Person,
    Stack,
)
from tests.conftest import StartStack, click_answer, request_pending
from tests.test_e2e_ack import tag_deletion

SEED = Seed(projects=1, iterations=1, tags=2, images=12, predictions=2, image_bytes=128)
DAVE = Person("U0DAVE", "dave")


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    running = stacks(seed=SEED, env={"BOT_REQUIRED_APPROVALS": "2"})
    running.slack.add_user(DAVE.user_id, DAVE.name)
    running.slack.add_usergroup(
        PRIVACY_GROUP, "privacy-team", [GROUP_APPROVER.user_id, DAVE.user_id]
    )
    return running


def thread(stack: Stack, rid: str) -> list[str]:
    stack.wait_delivered()
    ts = stack.bot.store.get(rid).message_ts
    return [m.text for m in stack.slack.messages(CHANNEL, thread_ts=ts)]


def remove_bob_from_config(stack: Stack) -> None:
    stack.restart_bot(BOT_APPROVERS=PRIVACY_GROUP)


def remove_carol_from_group(stack: Stack) -> None:
    stack.slack.add_usergroup(PRIVACY_GROUP, "privacy-team", [DAVE.user_id])
    time.sleep(FRESH_FOR_APPROVALS)  # longer than a cached "yes" may answer an approval


@pytest.mark.parametrize(
    ("first", "remove", "second"),
    [
        pytest.param(APPROVER, remove_bob_from_config, GROUP_APPROVER, id="removed-from-config"),
        pytest.param(GROUP_APPROVER, remove_carol_from_group, APPROVER, id="removed-from-group"),
    ],
)
def test_approvers_a_removed_approver_no_longer_counts(
    stack: Stack, first: Person, remove: Callable[[Stack], None], second: Person
) -> None:
    rid = request_pending(stack, tag_deletion(stack))
    assert "1 more approval needed" in click_answer(stack, first, rid, "approve")
    remove(stack)

    answer = click_answer(stack, second, rid, "approve")
    assert f"<@{first.user_id}> is no longer an approver" in answer, answer
    assert "1 more approval needed" in answer
    assert stack.status(rid) == "pending"
    assert stack.bot.store.get(rid).approvals == (second.user_id,)
    said = [t for t in thread(stack, rid) if "no longer an approver" in t]
    assert len(said) == 1 and f"<@{first.user_id}>" in said[0] and "1 more" in said[0]
    dropped = [e for e in audit.events(stack.bot.db.conn) if e.action == "approval.dropped"]
    assert [(e.actor, e.details["approver"]) for e in dropped] == [("bot", first.user_id)]
    assert stack.cv.deleted_image_counts() == {}

    # A third, authorised approver completes it; the receipt names only those who count.
    stack.click(DAVE, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    approved = [e for e in audit.events(stack.bot.db.conn) if e.action == "request.approved"]
    assert approved[-1].details["approvers"] == [second.user_id, DAVE.user_id]


def test_approvers_group_membership_is_read_fresh_for_an_approval(stacks: StartStack) -> None:
    stack = stacks(seed=SEED)  # one approval needed
    rid = request_pending(
        stack, tag_deletion(stack)
    )  # the request read the group: carol is cached as a member
    stack.slack.add_usergroup(PRIVACY_GROUP, "privacy-team", [])
    time.sleep(FRESH_FOR_APPROVALS)
    assert "Only approvers" in click_answer(stack, GROUP_APPROVER, rid, "approve")
    assert stack.status(rid) == "pending"
    assert stack.slack.calls_to("usergroups.users.list")[-1].ok
