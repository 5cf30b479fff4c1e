"""End to end: a finished result is never lost on its way to Slack, and Slack's rate tiers hold.

Every test drives the bot through signed HTTP and watches the unmodified slack-sdk client
talk to the Slack emulator, whose switches (an injected error, a channel the bot was removed
from or that was archived, rate tiers) play real Slack's behaviours.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
import requests

from bot import audit, runner
from emulators.customvision import Seed
from emulators.slack.records import Message
from emulators.stack import (
    APPROVER,
    AUDIT_CHANNEL,
    CHANNEL,
    PUBLIC_CHANNEL,
    REQUESTER,
    STRANGER,
    Stack,
)
from handlers import blocks
from tests.conftest import StartStack, request_pending

SEED = Seed(projects=2, iterations=1, tags=3, images=20, predictions=2, image_bytes=200)
DM = f"D{REQUESTER.user_id[1:]}"  # the emulator's id of the bot's DM with the requester


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=SEED)


def wait(predicate: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def thread(stack: Stack, rid: str) -> list[Message]:
    """The request's thread: none until its announcement is posted (the outbox may not have
    reached it yet when the job is done)."""
    ts = stack.bot.store.get(rid).message_ts
    return [] if ts is None else stack.slack.messages(CHANNEL, ts)


def said_ready(stack: Stack, rid: str) -> list[Message]:
    return [m for m in thread(stack, rid) if "export is ready" in m.text]


def package_files(stack: Stack, rid: str) -> list[str]:
    return [f.name for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")]


def ephemeral(response: requests.Response) -> str:
    text = response.json()["text"]
    assert isinstance(text, str)
    return text


def actions(stack: Stack, rid: str) -> list[audit.Event]:
    return list(audit.events(stack.bot.db.conn, request_id=rid))


def test_e2e_refused_upload_is_held_never_called_ready_kept_and_resent(stack: Stack) -> None:
    """The issue's case: one not_in_channel from files.completeUploadExternal."""
    stack.slack.inject_error("files.completeUploadExternal", "not_in_channel", times=1)
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.wait_delivered()

    # Never called ready without its file; held at once (one attempt, no retries); kept.
    assert package_files(stack, rid) == []
    assert said_ready(stack, rid) == []
    assert len(stack.slack.calls_to("files.completeUploadExternal")) == 2  # package, trail
    (notice,) = [m for m in thread(stack, rid) if "resend" in m.text]
    assert f"<@{REQUESTER.user_id}>" in notice.text and "not_in_channel" not in notice.text
    assert f"/cv resend {rid}" in notice.text and "invite it back" in notice.text
    # The request's later delivery (its audit trail) was not blocked behind the held one.
    assert [f for f in stack.slack.files(CHANNEL) if "audit-trail" in f.name]
    folder = stack.config.work_dir / rid
    stack.bot.service.housekeeping()
    assert folder.is_dir() and any(folder.glob("*.zip"))

    # /cv status tells what is held and how to resend.
    status = ephemeral(stack.command(REQUESTER, f"status {rid}"))
    assert f"{rid}-export" in status and "`not_in_channel`" in status
    assert f"/cv resend {rid}" in status
    assert rid in ephemeral(stack.command(REQUESTER, "status"))

    # Only the requester or an approver may resend; nothing changes on a refusal.
    refused = ephemeral(stack.command(STRANGER, f"resend {rid}"))
    assert "Only the requester or an approver may resend" in refused
    assert "R-x" in ephemeral(stack.command(REQUESTER, "resend R-x"))
    assert stack.bot.store.held_deliveries(stack.bot.store.get(rid).number)

    answer = ephemeral(stack.command(APPROVER, f"resend {rid}"))
    assert f"of {rid} again" in answer
    stack.wait_delivered()
    assert len(package_files(stack, rid)) == 1
    (ready,) = said_ready(stack, rid)
    (share,) = [m for m in thread(stack, rid) if m.via == "files.completeUploadExternal"][-1:]
    assert float(share.ts) < float(ready.ts)  # ready only after Slack confirmed the file
    assert stack.bot.store.held_deliveries(stack.bot.store.get(rid).number) == []
    stack.bot.service.housekeeping()
    assert not folder.exists()
    nothing = ephemeral(stack.command(REQUESTER, f"resend {rid}"))
    assert "nothing held" in nothing

    names = [e.action for e in actions(stack, rid)]
    assert "delivery.held" in names and "delivery.resent" in names
    assert "resend.refused" in names
    assert audit.verify(stack.bot.db.conn).ok


def test_e2e_bot_removed_mid_request_tells_the_requester_by_dm_and_resends(
    stack: Stack,
) -> None:
    stack.cv.faults.latency = 0.3  # the export runs for seconds
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
    wait(lambda: stack.bot.store.get(rid).message_ts, "the announcement")
    stack.slack.set_bot_member(CHANNEL, False)  # someone removes the bot from the channel
    assert stack.status(rid) in {"queued", "running"}
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.cv.faults.latency = 0.0
    wait(lambda: stack.slack.messages(DM), "a DM to the requester")
    stack.wait_delivered()

    (dm,) = stack.slack.messages(DM)
    assert rid in dm.text and f"/cv resend {rid}" in dm.text
    assert "channel_not_found" not in dm.text  # said in words: invite the bot back
    assert package_files(stack, rid) == []
    stack.bot.service.housekeeping()
    assert (stack.config.work_dir / rid).is_dir()
    # Held without retrying for 45 minutes: each refused call was made once.
    assert len(stack.slack.calls_to("files.completeUploadExternal")) <= 2

    # Resent before the cause is fixed: held again, and the requester is told again.
    stack.command(REQUESTER, f"resend {rid}", channel=PUBLIC_CHANNEL)
    wait(lambda: len(stack.slack.messages(DM)) == 2, "a second DM")

    stack.slack.set_bot_member(CHANNEL, True)
    answer = ephemeral(stack.command(REQUESTER, f"resend {rid}", channel=PUBLIC_CHANNEL))
    assert f"of {rid} again" in answer
    stack.wait_delivered()
    assert len(package_files(stack, rid)) == 1
    assert len(said_ready(stack, rid)) == 1
    stack.bot.service.housekeeping()
    assert not (stack.config.work_dir / rid).exists()


def deletion_approved_after(stack: Stack, change: Callable[[], object]) -> str:
    """Type a deletion of one image, run `change` while it awaits approval, approve it; wait
    for its end, a DM to the requester and the outbox; return its request id."""
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = request_pending(stack, f"delete images {project} --ids {image}")
    change()
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    wait(lambda: stack.slack.messages(DM), "a DM to the requester")
    stack.wait_delivered()
    return rid


def test_e2e_archived_channel_holds_the_deletion_receipt_until_resent(stack: Stack) -> None:
    # Archived while the approval was pending.
    rid = deletion_approved_after(stack, lambda: stack.slack.set_archived(CHANNEL, True))

    number = stack.bot.store.get(rid).number
    held = stack.bot.store.held_deliveries(number)
    assert {h.error for h in held} >= {"is_archived"}
    assert any(h.name.endswith("receipt.json") for h in held)
    assert not [f for f in stack.slack.files(CHANNEL) if "receipt" in f.name]
    assert "unarchive" in stack.slack.messages(DM)[0].text
    stack.bot.service.housekeeping()
    assert any((stack.config.work_dir / rid).glob("receipt*.json"))
    status = ephemeral(stack.command(REQUESTER, f"status {rid}", channel=PUBLIC_CHANNEL))
    assert "receipt.json" in status and "is_archived" in status

    stack.slack.set_archived(CHANNEL, False)
    stack.command(REQUESTER, f"resend {rid}", channel=PUBLIC_CHANNEL)
    stack.wait_delivered()
    assert {f.name for f in stack.slack.files(CHANNEL) if "receipt" in f.name} == {
        f"{rid}-receipt.json",
        f"{rid}-receipt.csv",
        f"{rid}-receipt.html",
    }
    assert any("receipt attached" in m.text for m in thread(stack, rid))
    assert stack.bot.store.held_deliveries(number) == []


def test_e2e_audit_mirror_held_while_the_bot_is_out_of_the_audit_channel_then_catches_up(
    stack: Stack,
) -> None:
    stack.bot.deliverer.mirror_probe_interval = 0.5
    stack.slack.set_bot_member(AUDIT_CHANNEL, False)
    for _ in range(3):
        stack.command(STRANGER, "status R-1001")
    stack.wait_delivered()
    held = stack.bot.db.conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'mirror' AND status = 'held'"
    ).fetchone()[0]
    assert held >= 3
    (count,) = stack.bot.db.conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()
    held_events = [e for e in audit.events(stack.bot.db.conn) if e.action == "delivery.held"]
    assert len(held_events) == 1  # audited once, not once per line (its own line is held too)

    stack.slack.set_bot_member(AUDIT_CHANNEL, True)  # an admin invites the bot back
    wait(
        lambda: (
            len(
                [
                    p
                    for m in stack.slack.messages(AUDIT_CHANNEL)
                    for p in audit.parse_mirror_lines(m.text)
                ]
            )
            == count
        ),
        "the mirror to catch up",
    )
    witnessed = [
        p for m in stack.slack.messages(AUDIT_CHANNEL) for p in audit.parse_mirror_lines(m.text)
    ]
    assert [seq for seq, _ in witnessed] == list(range(1, count + 1))


# --- Slack's rate tiers ------------------------------------------------------------------------


def test_e2e_outbox_stays_within_slack_rate_tiers_and_batches_the_mirror(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SEED, rate_tiers=True)
    projects = stack.cv.data.project_ids()
    rids = [stack.request_id(stack.command(REQUESTER, f"export project {p}")) for p in projects]
    # Refused commands: each one an audit event, so a burst of mirror lines.
    senders = [
        threading.Thread(target=stack.command, args=(STRANGER, f"delete project {projects[0]}"))
        for _ in range(30)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    for rid in rids:
        assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.wait_delivered(timeout=120)

    assert stack.slack.rate_limited() == 0, [
        (c.method, c.params.get("channel")) for c in stack.slack.calls if c.error == "ratelimited"
    ]
    for rid in rids:
        assert len(said_ready(stack, rid)) == 1
    (events,) = stack.bot.db.conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()
    mirror = stack.slack.messages(AUDIT_CHANNEL)
    witnessed = [pair for m in mirror for pair in audit.parse_mirror_lines(m.text)]
    assert [seq for seq, _ in witnessed] == list(range(1, events + 1))
    assert len(mirror) < events / 2  # several events per message when they come in a burst
    assert max(len(audit.parse_mirror_lines(m.text)) for m in mirror) >= 10


def test_e2e_request_thread_is_not_starved_behind_the_audit_mirror(stacks: StartStack) -> None:
    stack = stacks(seed=SEED, rate_tiers=True)
    project = stack.cv.data.project_ids()[0]
    # A backlog of mirror lines far longer than one outbox round, and than the export takes
    # on a loaded machine: 1,200 lines are 30 messages at about one a second.
    with stack.bot.store.write() as conn:
        for n in range(1_200):
            stack.bot.store.audit(conn, STRANGER.user_id, "command.refused", details={"n": n})
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project} --no-images"))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    wait(lambda: said_ready(stack, rid), "the export's thread", timeout=60)
    pending_mirror = stack.bot.db.conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'mirror' AND status = 'pending'"
    ).fetchone()[0]
    assert pending_mirror > 0  # the thread went first, while the mirror still catches up
    stack.wait_delivered(timeout=120)
    assert stack.slack.rate_limited() == 0


def test_e2e_progress_edits_coalesce_within_slacks_update_tier(
    stacks: StartStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every step of the job is reported (as a long export reports over hours, every 2 s):
    # many more progress states than chat.update's tier (about 50 a minute) lets through.
    monkeypatch.setattr(runner, "PROGRESS_INTERVAL", timedelta(0))
    steps: list[dict[str, object]] = []
    report = runner.JobContext.progress

    def counted(
        ctx: runner.JobContext, done: int, total: int | None, phase: str, **kw: bool
    ) -> None:
        steps.append({"done": done, "total": total, "phase": phase})
        report(ctx, done, total, phase, **kw)

    monkeypatch.setattr(runner.JobContext, "progress", counted)
    # Listing without downloads: a step per page of 256 images, many a second.
    seed = Seed(projects=1, iterations=1, tags=3, images=8_000, predictions=0, image_bytes=64)
    stack = stacks(seed=seed, rate_tiers=True)
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project} --no-images"))
    assert stack.wait_status(rid, "done", "failed", timeout=120) == "done"
    stack.wait_delivered(timeout=120)

    final = f"{rid}: {blocks.progress_text(steps[-1])}"
    assert len(steps) >= 30
    # One progress message in the thread, edited far fewer times than there were steps...
    bars = [m for m in thread(stack, rid) if m.text.startswith(f"{rid}: ") and "▓" in m.text]
    assert [m.text for m in bars] == [final]
    edits = [c for c in stack.slack.calls_to("chat.update") if c.params.get("ts") == bars[0].ts]
    assert len(edits) == bars[0].updates
    assert 1 <= len(edits) <= len(steps) / 4, (len(edits), len(steps))
    # ...the last edit carrying the last state, and Slack never answered `ratelimited`.
    assert edits[-1].params["text"] == final
    assert stack.bot.store.get(rid).progress == steps[-1]
    assert stack.slack.rate_limited() == 0
