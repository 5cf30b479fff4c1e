"""End to end: the audit log through Slack, its Slack witness, and the offline verifier."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bot import audit
from bot.db import connect
from emulators.customvision import Seed
from emulators.stack import (
    APPROVER,
    AUDIT_CHANNEL,
    CHANNEL,
    REQUESTER,
    STRANGER,
    Stack,
)
from tests.conftest import StartStack

SEED = Seed(projects=1, iterations=1, tags=2, images=12, predictions=2, image_bytes=200)


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=SEED)


def run_deletion(stack: Stack) -> str:
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    rid = stack.request_id(stack.command(REQUESTER, f"delete images {project} --ids {image}"))
    stack.wait_status(rid, "pending")
    stack.wait_delivered()
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    stack.wait_delivered()
    return rid


def tamper(database: Path, sql: str) -> None:
    conn = connect(database)
    try:
        conn.execute("DROP TRIGGER audit_events_no_update")
        conn.execute("DROP TRIGGER audit_events_no_delete")
        conn.execute(sql)
    finally:
        conn.close()


def offline_verify(stack: Stack, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {"BOT_DATABASE": str(stack.config.database), "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        [sys.executable, "-m", "bot", "audit", "verify", *extra],
        env=env,
        cwd=stack.config.database.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_e2e_audit_trail_of_a_deletion_holds_every_event_in_order(stack: Stack) -> None:
    rid = run_deletion(stack)
    actions = [e.action for e in audit.events(stack.bot.db.conn, request_id=rid)]
    expected = [
        "command.received",
        "request.queued",
        "preview.computed",
        "approval.posted",
        "approval.granted",
        "request.approved",
        "api.call",
        "request.completed",
        "file.posted",  # the receipt, delivered after the outcome was committed
    ]
    positions = [actions.index(a) for a in expected]
    assert positions == sorted(positions), actions
    received = next(audit.events(stack.bot.db.conn, request_id=rid))
    assert received.details["command"]["verb"] == "delete"  # the parsed request, not the text
    posted = [
        e for e in audit.events(stack.bot.db.conn, request_id=rid) if e.action == "file.posted"
    ]
    assert {len(e.details["sha256"]) for e in posted} == {64}
    trail = [f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-audit-trail.jsonl"]
    assert len(trail) == 1
    assert trail[0].thread_ts == stack.bot.store.get(rid).message_ts


def test_e2e_audit_export_and_verify_through_slack(stack: Stack) -> None:
    rid = run_deletion(stack)
    refused = stack.command(STRANGER, "audit").json()
    assert "Only approvers may read the whole audit log" in refused["text"]
    body = stack.command(APPROVER, f"audit --request {rid} --format csv").json()
    assert "audit events" in body["text"]
    stack.wait_delivered()
    exported = [f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"audit-{rid}")][-1]
    rows = list(csv.DictReader(io.StringIO(exported.data.decode("utf-8"))))
    assert {r["request_id"] for r in rows} == {rid}
    assert exported.initial_comment and "Audit log intact" in exported.initial_comment
    verdict = stack.command(APPROVER, "audit verify").json()
    assert verdict["response_type"] == "in_channel"
    assert verdict["text"].startswith("Audit log intact:")
    refusals = [e for e in audit.events(stack.bot.db.conn) if e.action == "audit.refused"]
    assert [e.actor for e in refusals] == [STRANGER.user_id]


def test_e2e_edited_row_is_named_by_audit_verify(stack: Stack) -> None:
    run_deletion(stack)
    tamper(stack.config.database, "UPDATE audit_events SET actor = 'U0FORGED' WHERE seq = 5")
    verdict = stack.command(APPROVER, "audit verify").json()
    assert verdict["text"].startswith("Audit log BROKEN at event #5")
    result = offline_verify(stack)
    assert result.returncode == 1
    assert "BROKEN at event #5" in result.stdout


def test_e2e_slack_witness_catches_a_truncated_database(stack: Stack) -> None:
    run_deletion(stack)
    stack.wait_delivered()
    mirror = stack.slack.messages(AUDIT_CHANNEL)
    (count,) = stack.bot.db.conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()
    # Every event witnessed in Slack, in order, however the outbox batched the lines.
    witnessed = [pair for m in mirror for pair in audit.parse_mirror_lines(m.text)]
    assert [seq for seq, _ in witnessed] == list(range(1, count + 1))
    export = stack.config.database.parent / "audit-channel.json"
    export.write_text(json.dumps(stack.slack.export_channel(AUDIT_CHANNEL)), encoding="utf-8")
    assert offline_verify(stack, "--witness", str(export)).returncode == 0

    # Drop the tail: the chain left behind is internally valid, but Slack remembers more.
    tamper(stack.config.database, f"DELETE FROM audit_events WHERE seq > {count - 3}")
    assert offline_verify(stack).returncode == 0
    caught = offline_verify(stack, "--witness", str(export))
    assert caught.returncode == 1
    assert f"#{count - 2}" in caught.stdout


def export_folder(stack: Stack) -> Path:
    """Write the audit channel as a Slack data export lays it out: a folder of daily files."""
    folder = stack.config.database.parent / "export" / "dsr-audit"
    folder.mkdir(parents=True)
    messages = stack.slack.export_channel(AUDIT_CHANNEL)
    half = len(messages) // 2
    (folder / "2026-12-01.json").write_text(json.dumps(messages[:half]), encoding="utf-8")
    (folder / "2026-12-02.json").write_text(json.dumps(messages[half:]), encoding="utf-8")
    return folder


def test_e2e_witness_trusts_only_the_bots_own_lines(stack: Stack) -> None:
    """The issue's case: a person's "#3 joke · hash 0123…" made the witness report a break."""
    run_deletion(stack)
    slack = stack.slack
    mirror = slack.messages(AUDIT_CHANNEL)
    fake = "#3 joke by U0MALLORY · ok · hash 0123456789abcdef…"
    slack.post_as(AUDIT_CHANNEL, STRANGER.user_id, fake)  # a person
    slack.post_as(AUDIT_CHANNEL, "U0OTHERAPP", fake.replace("#3", "#4"), bot_id="B0OTHER")
    slack.post_as(AUDIT_CHANNEL, STRANGER.user_id, fake.replace("#3", "#5"), thread_ts=mirror[0].ts)
    # Even the bot's own thread reply does not count: it posts audit lines at the top level.
    bot_reply = fake.replace("#3", "#8")
    slack.post_as(
        AUDIT_CHANNEL, slack.bot_user_id, bot_reply, bot_id=slack.bot_id, thread_ts=mirror[1].ts
    )
    edited = mirror[-1]  # the outbox may post several lines in one message: all stop counting
    slack.edit_as(AUDIT_CHANNEL, edited.ts, slack.bot_user_id, fake.replace("#3", "#6"))
    person = slack.post_as(AUDIT_CHANNEL, STRANGER.user_id, "lunch?")
    slack.edit_as(AUDIT_CHANNEL, person, STRANGER.user_id, fake.replace("#3", "#7"))
    folder = export_folder(stack)

    result = offline_verify(stack, "--witness", str(folder), "--bot-user", slack.bot_user_id)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Audit log intact" in result.stdout
    kept = sum(len(audit.parse_mirror_lines(m.text)) for m in mirror if m.ts != edited.ts)
    assert f"Checked against {kept} lines posted by U0BOT (bot B0BOT)" in result.stdout
    assert "Ignored 6 lines that read like audit lines:" in result.stdout
    for reason in (
        f"by {STRANGER.user_id}: posted by a person, not the bot",
        "by U0OTHERAPP (bot B0OTHER): posted by another app, not the bot",
        "by U0BOT (bot B0BOT): a thread reply",
        "by U0BOT (bot B0BOT): edited by U0BOT after it was posted",
    ):
        assert reason in result.stdout, reason

    # Without --bot-user the bot is the only app posting audit lines; here there are two.
    ambiguous = offline_verify(stack, "--witness", str(folder))
    assert ambiguous.returncode == 2
    assert "B0BOT, B0OTHER" in ambiguous.stderr and "--bot-user" in ambiguous.stderr


def test_e2e_witness_without_other_apps_finds_the_bot_and_still_catches_truncation(
    stack: Stack,
) -> None:
    run_deletion(stack)
    stack.slack.post_as(AUDIT_CHANNEL, STRANGER.user_id, "#2 joke · ok · hash 0123456789abcdef…")
    folder = export_folder(stack)
    result = offline_verify(stack, "--witness", str(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Ignored 1 line that read like audit lines:" in result.stdout
    (count,) = stack.bot.db.conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()
    tamper(stack.config.database, f"DELETE FROM audit_events WHERE seq > {count - 2}")
    caught = offline_verify(stack, "--witness", str(folder))
    assert caught.returncode == 1
    assert f"BROKEN at event #{count - 1}" in caught.stdout


def test_e2e_witness_refuses_plain_text_and_exports_without_authors(stack: Stack) -> None:
    run_deletion(stack)
    folder = stack.config.database.parent
    text = folder / "audit.txt"
    text.write_text("\n".join(m.text for m in stack.slack.messages(AUDIT_CHANNEL)), "utf-8")
    anonymous = folder / "anonymous.json"
    anonymous.write_text(
        json.dumps([{"text": m.text} for m in stack.slack.messages(AUDIT_CHANNEL)])
    )
    for path, problem in ((text, "is not JSON"), (anonymous, "no audit line in the export")):
        result = offline_verify(stack, "--witness", str(path))
        assert result.returncode == 2
        assert problem in result.stderr
        assert "Traceback" not in result.stderr
