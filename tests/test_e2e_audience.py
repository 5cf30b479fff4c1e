"""End to end: a channel that became public or shared after a request was made gets none of
its personal data; the delivery is held, the requester told by DM, and `resend` posts it once
the channel is private again.

Every test types the request through signed HTTP, then changes the channel in the Slack
emulator (as a workspace admin does: `set_audience`) while the job runs, and reads what the
unmodified slack-sdk client made of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from bot import audit
from emulators.stack import APPROVER, CHANNEL, PUBLIC_CHANNEL, REQUESTER, Stack
from tests.conftest import StartStack, request_pending
from tests.test_e2e_delivery import DM, SEED, deletion_approved_after, ephemeral, wait

# How an admin widens the private channel's audience, what the bot then holds the delivery
# with, what the requester reads about it, and how the test undoes it.
WIDENED: dict[str, tuple[dict[str, bool], str, str, dict[str, bool]]] = {
    "made public": (
        {"is_private": False},
        "channel_public",
        "make the channel private again",
        {"is_private": True},
    ),
    "Slack Connect": (
        {"is_ext_shared": True},
        "channel_ext_shared",
        "another organisation",
        {"is_ext_shared": False},
    ),
    "Slack Connect invitation": (
        {"is_pending_ext_shared": True},
        "channel_ext_shared",
        "another organisation",
        {"is_pending_ext_shared": False},
    ),
    "Enterprise Grid": (
        {"is_org_shared": True},
        "channel_org_shared",
        "other workspaces",
        {"is_org_shared": False},
    ),
}


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=SEED)


def files_of(stack: Stack, rid: str) -> list[str]:
    return [f.name for f in stack.slack.files(CHANNEL) if f.name.startswith(rid)]


def thread_texts(stack: Stack, rid: str) -> list[str]:
    ts = stack.bot.store.get(rid).message_ts
    assert ts is not None
    return [m.text for m in stack.slack.messages(CHANNEL, ts)]


def held_events(stack: Stack, rid: str) -> list[audit.Event]:
    events = audit.events(stack.bot.db.conn, request_id=rid)
    return [e for e in events if e.action == "delivery.held"]


def export_while(stack: Stack, change: Callable[[], Any]) -> str:
    """Type an export of a project's images, run `change` once it is announced (while its job
    runs), wait for the job's end and the outbox; return its request id."""
    stack.cv.faults.latency = 0.3  # the export runs for seconds
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
    wait(lambda: stack.bot.store.get(rid).message_ts, "the announcement")
    change()
    assert stack.status(rid) in {"queued", "running"}
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.cv.faults.latency = 0.0
    stack.wait_delivered()
    return rid


@pytest.mark.parametrize("how", list(WIDENED))
def test_e2e_channel_widened_after_the_request_holds_its_package_until_resent(
    stack: Stack, how: str
) -> None:
    widen, error, advice, undo = WIDENED[how]
    rid = export_while(stack, lambda: stack.slack.set_audience(CHANNEL, **widen))

    # Nothing personal reached the channel: no package, no audit trail, no "ready".
    assert files_of(stack, rid) == []
    assert not [t for t in thread_texts(stack, rid) if "export is ready" in t]
    # The requester is told by DM (not in the now wider channel) why, and how to resume.
    wait(lambda: stack.slack.messages(DM), "a DM to the requester")
    (dm,) = stack.slack.messages(DM)
    assert rid in dm.text and advice in dm.text and f"/cv resend {rid}" in dm.text
    assert not [t for t in thread_texts(stack, rid) if "resend" in t]
    # Kept, shown in status, audited.
    stack.bot.service.housekeeping()
    assert any((stack.config.work_dir / rid).glob("*.zip"))
    status = ephemeral(stack.command(REQUESTER, f"status {rid}", channel=PUBLIC_CHANNEL))
    assert f"{rid}-export" in status and f"`{error}`" in status
    assert f"/cv resend {rid}" in status
    (held, *_) = held_events(stack, rid)
    assert held.details["error"] == error and held.outcome == "held"

    # Resent before the cause is fixed: Slack is asked again, and the answer says why not.
    early = ephemeral(stack.command(REQUESTER, f"resend {rid}", channel=PUBLIC_CHANNEL))
    assert early.startswith(f"{rid} stays held, and nothing was resent") and advice in early
    assert f"/cv resend {rid}" in early
    stack.wait_delivered()
    assert files_of(stack, rid) == [] and len(stack.slack.messages(DM)) == 1

    # Fixed a moment later: the resend asks Slack afresh, not the answer it just had.
    stack.slack.set_audience(CHANNEL, **undo)
    answer = ephemeral(stack.command(APPROVER, f"resend {rid}", channel=PUBLIC_CHANNEL))
    assert f"of {rid} again" in answer
    stack.wait_delivered()
    assert [n for n in files_of(stack, rid) if n.startswith(f"{rid}-export")]
    assert [t for t in thread_texts(stack, rid) if "export is ready" in t]
    assert stack.bot.store.held_deliveries(stack.bot.store.get(rid).number) == []
    assert audit.verify(stack.bot.db.conn).ok


def test_e2e_deletion_receipt_is_held_when_the_channel_became_public_during_approval(
    stack: Stack,
) -> None:
    rid = deletion_approved_after(
        stack, lambda: stack.slack.set_audience(CHANNEL, is_private=False)
    )

    number = stack.bot.store.get(rid).number
    held = stack.bot.store.held_deliveries(number)
    assert any(h.name == f"{rid}-receipt.json" and h.error == "channel_public" for h in held)
    assert not [f for f in stack.slack.files(CHANNEL) if "receipt" in f.name]
    # The message naming the image ids the deletion removed waits with its receipt.
    assert not [t for t in thread_texts(stack, rid) if "receipt attached" in t]

    stack.slack.set_audience(CHANNEL, is_private=True)
    stack.command(REQUESTER, f"resend {rid}", channel=PUBLIC_CHANNEL)
    stack.wait_delivered()
    assert {f"{rid}-receipt.json", f"{rid}-receipt.csv"} <= set(files_of(stack, rid))
    assert [t for t in thread_texts(stack, rid) if "receipt attached" in t]


@pytest.mark.parametrize(
    "setting, widen",
    [
        ("BOT_ALLOW_PUBLIC_EXPORTS", {"is_private": False}),
        ("BOT_ALLOW_SHARED_CHANNEL_EXPORTS", {"is_ext_shared": True}),
    ],
)
def test_e2e_channel_widened_is_delivered_when_the_setting_allows_it(
    stacks: StartStack, setting: str, widen: dict[str, bool]
) -> None:
    stack = stacks(seed=SEED, env={setting: "true"})
    rid = export_while(stack, lambda: stack.slack.set_audience(CHANNEL, **widen))
    assert [n for n in files_of(stack, rid) if n.startswith(f"{rid}-export")]
    assert stack.bot.store.held_deliveries(stack.bot.store.get(rid).number) == []
    assert stack.slack.messages(DM) == []


def test_e2e_audience_unknown_is_never_delivered_and_retried(stack: Stack) -> None:
    """conversations.info failing (a Slack error, then HTTP 503s) at delivery time: the package
    waits, and goes once Slack says the channel is still private."""
    stack.bot.deliverer.audience_ttl = 0.0  # every delivery asks Slack

    def fail() -> None:
        stack.slack.inject_error("conversations.info", "internal_error", times=1)
        stack.slack.inject_server_error("conversations.info", 503, times=2)

    rid = export_while(stack, fail)
    info = stack.slack.calls_to("conversations.info")
    failed = [c for c in info if not c.ok]
    assert len(failed) == 1 + 2
    shares = stack.slack.calls_to("files.completeUploadExternal")
    assert shares and all(s.time > failed[-1].time for s in shares)
    assert [n for n in files_of(stack, rid) if n.startswith(f"{rid}-export")]
    assert stack.slack.messages(DM) == []


def test_e2e_audit_file_is_not_posted_into_a_channel_made_public_and_its_asker_is_told(
    stack: Stack,
) -> None:
    """A file a command posts (no request to resend): withheld, and its asker told by DM."""
    stack.slack.inject_latency("files.getUploadURLExternal", 1.0)  # the outbox is slow today
    answer = ephemeral(stack.command(APPROVER, "audit"))
    assert "audit" in answer.lower()
    stack.slack.set_audience(CHANNEL, is_private=False)
    dm = f"D{APPROVER.user_id[1:]}"
    wait(lambda: stack.slack.messages(dm), "a DM to the approver")
    stack.wait_delivered()

    assert not [f for f in stack.slack.files(CHANNEL) if f.name.startswith("audit-")]
    (told,) = stack.slack.messages(dm)
    assert "did not post audit-all-" in told.text and "public channel" in told.text
    assert "Run the command again in a private channel" in told.text
    assert stack.slack.messages(DM) == []


def test_e2e_status_file_in_a_group_dm_is_still_delivered_after_the_check(stack: Stack) -> None:
    """A group DM's members are all it has: the delivery's check lets its file through."""
    group_dm = "G0GROUPDM"
    stack.slack.add_channel(group_dm, "mpdm-alice--bob-1", is_mpim=True)
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    request_pending(stack, f"delete images {project} --ids {image}")  # open until approved
    stack.command(REQUESTER, "status --all", channel=group_dm)
    stack.wait_delivered()
    assert [f.name for f in stack.slack.files(group_dm) if f.name.startswith("status-")]
    checked = [c.params.get("channel") for c in stack.slack.calls_to("conversations.info")]
    assert group_dm in checked
    assert stack.slack.messages(DM) == []
