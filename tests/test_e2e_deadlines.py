"""End to end: the statutory clock on a fake clock, through signed commands and Slack's record.

A request received 28 days ago shows its due date and the days left, in the reply, the
announcement and `status`, and comes up in the daily digest; an approver's extension moves the
due date and is audited, the requester's and a late one are refused; a late deletion says so in
its receipt; the report's rows are the requests; a restart around the reminder hour neither
skips nor repeats the digest; every bad input is answered with nothing stored.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.clock import FakeClock
from bot.parser import slack_unescape
from emulators.customvision import Seed
from emulators.stack import APPROVER, CHANNEL, PUBLIC_CHANNEL, REQUESTER, STRANGER, Stack
from tests.conftest import StartStack, deletion_received

SEED = Seed(projects=2, iterations=1, tags=2, images=12, predictions=2, image_bytes=256)
# Wednesday 2 December 2026, 07:00 UTC: an hour before the reminder hour.
START = datetime(2026, 12, 2, 7, 0, tzinfo=UTC)
ENV = {
    "BOT_REMINDER_HOUR_UTC": "8",
    "BOT_PUBLIC_HOLIDAYS": "2026-12-24,2026-12-25",
    "BOT_APPROVAL_TTL_HOURS": "720",  # deletions wait for approval across the days tested
}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def stack(stacks: StartStack, clock: FakeClock) -> Stack:
    return stacks(seed=SEED, env=ENV, clock=clock)


def reply(stack: Stack, text: str, person: Any = REQUESTER, channel: str = CHANNEL) -> str:
    response = stack.command(person, text, channel)
    assert response.status_code == 200
    return slack_unescape(str(response.json()["text"]))  # as the person reads it


def digests(stack: Stack) -> list[str]:
    return [m.text for m in stack.slack.messages(CHANNEL) if "Statutory deadlines" in m.text]


def actions(stack: Stack, rid: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (e.action, e.actor, dict(e.details)) for e in stack.bot.store.audit_events(request_id=rid)
    ]


def row_count(stack: Stack, table: str) -> int:
    conn = sqlite3.connect(stack.config.database)
    try:
        return int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def test_e2e_a_request_received_28_days_ago_is_due_in_2_days_and_in_the_digest(
    stack: Stack, clock: FakeClock
) -> None:
    # received Wednesday 4 November: due Friday 4 December, two days from today
    project = stack.cv.data.project_ids()[0]
    images = ",".join(stack.cv.data.image_ids(project)[:2])
    answer = reply(stack, f"delete images {project} --ids {images} --received 2026-11-04")
    assert answer.endswith("\nDeadline: received 2026-11-04 · due 2026-12-04 (in 2 days)")
    rid = stack.request_id(stack.command(REQUESTER, "status"))
    assert stack.wait_status(rid, "pending") == "pending"
    stack.wait_delivered()

    status = reply(stack, f"status {rid}")
    assert "received 2026-11-04 · due 2026-12-04 (in 2 days)" in status, status
    assert "due 2026-12-04 (in 2 days)" in reply(stack, "status")
    clock_block = next(b for b in stack.announcement(rid).blocks if b.get("block_id") == "deadline")
    assert clock_block["elements"][0]["text"] == ":calendar: received 2026-11-04 · due 2026-12-04"
    received = next(a for a in actions(stack, rid) if a[0] == "command.received")
    assert (received[2]["received"], received[2]["due"]) == ("2026-11-04", "2026-12-04")

    # a request due later than a week is not in the digest; nothing before the hour
    later = deletion_received(stack, "2026-11-30", first=4)
    assert "due 2026-12-30 (in 28 days)" in reply(stack, f"status {later}")
    clock.advance(minutes=59)
    stack.bot.service.housekeeping()
    assert digests(stack) == []

    clock.advance(minutes=1)  # 08:00
    stack.bot.service.housekeeping()
    stack.wait_delivered()
    assert digests(stack) == [
        ":alarm_clock: *Statutory deadlines, 2026-12-02*: 1 request due within 7 days.\n"
        f"• *{rid}* delete 2 images of project {project[:8]}… · <@{REQUESTER.user_id}> ·"
        " received 2026-11-04 · due 2026-12-04 (in 2 days) · waits on: approval\n"
        "`/cv status &lt;request-id&gt;` shows one; an approver may extend one before its first"
        ' due date: `/cv extend &lt;request-id&gt; --months 1|2 --reason "..."`.'
    ]
    posted = next(m for m in stack.slack.messages(CHANNEL) if "Statutory" in m.text)
    assert posted.thread_ts is None  # in the channel, not in a request's thread

    clock.advance(hours=5)
    stack.bot.service.housekeeping()  # the same day: never twice
    clock.advance(days=1)
    stack.bot.service.housekeeping()  # Thursday: due tomorrow
    stack.wait_delivered()
    assert len(digests(stack)) == 2
    assert "(tomorrow) · waits on: approval" in digests(stack)[1]


def test_e2e_nothing_is_posted_when_nothing_is_due(stack: Stack, clock: FakeClock) -> None:
    reply(stack, "export projects")  # done at once, and due in a month anyway
    clock.advance(hours=2)
    stack.bot.service.housekeeping()
    stack.wait_delivered()
    assert digests(stack) == []
    assert row_count(stack, "digests") == 1  # the day is done: no rescan all day


def test_e2e_an_approver_extends_the_deadline_audited_and_reminded(
    stack: Stack, clock: FakeClock
) -> None:
    rid = deletion_received(stack, "2026-11-04")

    refused = reply(stack, f'extend {rid} --months 2 --reason "14 projects"')  # the requester
    assert refused == (
        f"You cannot extend your own request {rid}: an approver must decide that the request is"
        " complex or one of many."
    )
    stranger = reply(stack, f'extend {rid} --months 2 --reason "x"', STRANGER)
    assert stranger == "Only approvers (BOT_APPROVERS) may extend a request's deadline."
    assert stack.bot.store.get(rid).deadline.due.isoformat() == "2026-12-04"

    done = reply(stack, f'extend {rid} --months 1 --reason "Many requests at once"', APPROVER)
    assert done == (
        f"Extended {rid} by 1 month: due 2027-01-04 (in 33 days). Tell the person by 2026-12-04,"
        " with the reasons; the thread has the reminder."
    )
    deadline = stack.bot.store.get(rid).deadline
    assert (deadline.first_due.isoformat(), deadline.due.isoformat(), deadline.months) == (
        "2026-12-04",
        "2027-01-04",
        2,
    )
    stack.wait_delivered()
    ts = stack.bot.store.get(rid).message_ts
    thread = [m.text for m in stack.slack.messages(CHANNEL, thread_ts=ts)]
    assert (
        f"<@{APPROVER.user_id}> extended the deadline of {rid} by 1 month: due 2027-01-04 (was"
        " 2026-12-04; received 2026-11-04).\nReason: Many requests at once\n:warning: The person"
        " must be told of the extension, with these reasons, within the first month: by"
        " 2026-12-04 (Art. 12(3) GDPR)."
    ) in thread, thread
    announced = next(b for b in stack.announcement(rid).blocks if b.get("block_id") == "deadline")
    assert announced["elements"][0]["text"] == (
        ":calendar: received 2026-11-04 · due 2027-01-04, extended by 1 month"
    )
    extended = [a for a in actions(stack, rid) if a[0] == "request.extended"]
    assert extended == [
        (
            "request.extended",
            APPROVER.user_id,
            {
                "months": 1,
                "period": 2,
                "received": "2026-11-04",
                "due_before": "2026-12-04",
                "due": "2027-01-04",
                "tell_by": "2026-12-04",
                "reason": "Many requests at once",
            },
        )
    ]
    refusals = [a for a in actions(stack, rid) if a[0] == "extend.refused"]
    assert [actor for _, actor, _ in refusals] == [REQUESTER.user_id, STRANGER.user_id]

    # at most three months from receipt in all
    too_far = reply(stack, f'extend {rid} --months 2 --reason "more"', APPROVER)
    assert too_far == (
        f"{rid} cannot be extended: that would be 4 months from receipt; the most is 3 (it is"
        " already due 2027-01-04, so at most 1 more month)"
    )
    # once the first due date has passed, no extension at all
    clock.advance(days=3)  # Saturday 5 December
    late = reply(stack, f'extend {rid} --months 1 --reason "more"', APPROVER)
    assert late == (
        f"{rid} cannot be extended: its first due date, 2026-12-04, has passed: Art. 12(3) allows"
        " an extension only when the person is told within the first month"
    )
    assert stack.bot.store.get(rid).deadline.months == 2
    assert "due 2027-01-04, extended by 1 month (in 30 days)" in reply(stack, f"status {rid}")

    # the audit trail export names the clock too, and holds the extension with its reason
    reply(stack, f"audit --request {rid} --format jsonl", APPROVER)
    stack.wait_delivered()
    trail = next(f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"audit-{rid}-"))
    assert (
        f"audit log: {len(actions(stack, rid)) - 1} events; received 2026-11-04 · due 2027-01-04,"
        " extended by 1 month (in 30 days)."
    ) in (trail.initial_comment or ""), trail.initial_comment
    assert '"action":"request.extended"' in trail.data.decode("utf-8").replace(" ", "")


def test_e2e_a_late_deletion_is_flagged_late_in_its_receipt(stack: Stack, clock: FakeClock) -> None:
    rid = deletion_received(stack, "2026-10-30")  # due Monday 30 November: already overdue
    assert "due 2026-11-30 (overdue by 2 days)" in reply(stack, f"status {rid}")
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    stack.wait_delivered()
    files = {f.name: f for f in stack.slack.files(CHANNEL) if f.name.startswith(rid)}
    late = (
        "received 2026-10-30 · completed 2026-12-02, 33 days after receipt, 2 days late"
        " (due 2026-11-30)"
    )
    document = json.loads(files[f"{rid}-receipt.json"].data)
    assert (document["received"], document["due"], document["extended_to"]) == (
        "2026-10-30",
        "2026-11-30",
        None,
    )
    assert document["deadline"] == late
    rows = list(csv.DictReader(io.StringIO(files[f"{rid}-receipt.csv"].data.decode("utf-8"))))
    assert rows and {row["request_deadline"] for row in rows} == {late}
    assert late in files[f"{rid}-receipt.html"].data.decode("utf-8")
    record = stack.bot.store.get(rid)
    assert record.deadline.completed.isoformat() == "2026-12-02" and record.deadline.met is False
    announced = next(b for b in stack.announcement(rid).blocks if b.get("block_id") == "deadline")
    assert announced["elements"][0]["text"] == f":calendar: {late}"
    trail = next(f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-audit-trail.jsonl")
    assert trail.initial_comment is not None and late in trail.initial_comment


def test_e2e_the_report_rows_match_the_requests(stack: Stack, clock: FakeClock) -> None:
    overdue = deletion_received(stack, "2026-10-30")
    exported = stack.request_id(stack.command(REQUESTER, "export projects --received 2026-11-20"))
    assert stack.wait_status(exported, "done", "failed", timeout=60) == "done"
    cancelled = deletion_received(stack, "2026-11-25", first=4)
    reply(stack, f"cancel {cancelled}")
    assert reply(stack, f'extend {exported} --months 1 --reason "x"', APPROVER) == (
        f"{exported} cannot be extended: it was completed 2026-12-02, 12 days after receipt,"
        " within the deadline"
    )
    assert reply(stack, f'extend {cancelled} --months 1 --reason "x"', APPROVER) == (
        f"{cancelled} cannot be extended: it is cancelled; no answer is owed any more"
    )
    early = stack.request_id(stack.command(REQUESTER, "export account --received 2026-09-05"))
    stack.wait_delivered()

    assert reply(stack, "report") == (
        "Only approvers (BOT_APPROVERS) may have the report of every request; `status` shows"
        " your own."
    )
    public = reply(stack, "report", APPROVER, PUBLIC_CHANNEL)
    assert "this is a public channel" in public, public
    assert reply(stack, "report --since 2026-10-01", APPROVER) == (
        "Posting the report of requests received from 2026-10-01 on as"
        " `report-2026-12-02T0700.csv`: 3 requests · median 12 days to completion · 1 late ·"
        " 1 open."
    )
    stack.wait_delivered()
    (report,) = [f for f in stack.slack.files(CHANNEL) if f.name.startswith("report-")]
    rows = list(csv.DictReader(io.StringIO(report.data.decode("utf-8"))))
    assert [(r["request"], r["verb"], r["kind"], r["received"], r["due"], r["extended_to"],
             r["completed"], r["outcome"], r["days_taken"]) for r in rows] == [
        (overdue, "delete", "images", "2026-10-30", "2026-11-30", "", "", "overdue", ""),
        (exported, "export", "projects", "2026-11-20", "2026-12-21", "", "2026-12-02", "met", "12"),
        (cancelled, "delete", "images", "2026-11-25", "2026-12-28", "", "", "cancelled", ""),
    ]  # fmt: skip
    assert early not in report.data.decode("utf-8")  # received before --since
    assert rows[1]["counts"], rows[1]
    assert "Many" not in report.data.decode("utf-8")
    assert [a for a in stack.bot.store.audit_events() if a.action == "report.exported"]


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        (
            "export projects --received 2026-12-03",
            "--received 2026-12-03 is in the future (today is 2026-12-02 UTC): give the day the"
            " person's request reached you\nUsage: `/cv export projects [--ticket <ref>]"
            ' [--reason "<text>"] [--received YYYY-MM-DD]`',
        ),
        (
            "delete account --received 2026-09-01",
            "--received 2026-09-01 is more than 3 months ago (the earliest accepted is"
            " 2026-09-02): even an extended deadline would be over; check the date in the"
            ' ticket\nUsage: `/cv delete account [--ticket <ref>] [--reason "<text>"]'
            " [--received YYYY-MM-DD]`",
        ),
        (
            "export projects --received 2026-11-31",
            "--received: 2026-11-31 is not a real date\nUsage: `/cv export projects [--ticket"
            ' <ref>] [--reason "<text>"] [--received YYYY-MM-DD]`',
        ),
        (
            "extend R-1001 --months 3 --reason x",
            "--months must be 1 or 2 (got '3'): a deadline is extended by at most two further"
            ' months\nUsage: `/cv extend <request-id> --months 1|2 --reason "<text>"`',
        ),
        (
            "extend R-1001 --months 1",
            'extend needs --reason "...": the person must be told why, within the first month'
            '\nUsage: `/cv extend <request-id> --months 1|2 --reason "<text>"`',
        ),
        (
            "report --since 2026-12-01 --until 2026-11-01",
            "--until 2026-11-01 is before --since 2026-12-01\nUsage: `/cv report [--since"
            " YYYY-MM-DD] [--until YYYY-MM-DD]`",
        ),
        ("extend R-4242 --months 1 --reason x", "There is no request R-4242."),
    ],
)
def test_e2e_bad_input_is_answered_specifically_with_nothing_stored(
    stack: Stack, text: str, answer: str
) -> None:
    before = (row_count(stack, "requests"), row_count(stack, "deadlines"))
    calls = len(stack.cv.calls)
    assert reply(stack, text, APPROVER) == answer
    assert (row_count(stack, "requests"), row_count(stack, "deadlines")) == before
    assert len(stack.cv.calls) == calls
    stack.wait_delivered()
    assert stack.slack.messages(CHANNEL) == []


def test_e2e_a_restart_around_the_reminder_hour_neither_skips_nor_repeats_the_digest(
    stacks: StartStack, clock: FakeClock
) -> None:
    clock.advance(minutes=50)  # 07:50
    stack = stacks(seed=SEED, env=ENV, clock=clock)
    rid = deletion_received(stack, "2026-11-04")
    stack.bot.service.housekeeping()
    assert digests(stack) == []

    stack.stop_bot()  # down across the hour
    clock.advance(minutes=20)  # 08:10
    stack.start_bot()
    # the restarted bot's housekeeping thread sends the day's digest by itself
    assert stack.slack.wait_for(lambda: len(digests(stack)) == 1, timeout=15), digests(stack)
    assert rid in digests(stack)[0]

    stack.restart_bot()  # a second restart the same day: not again
    stack.bot.service.housekeeping()
    clock.advance(hours=3)
    stack.bot.service.housekeeping()
    stack.wait_delivered()
    assert len(digests(stack)) == 1
    assert row_count(stack, "digests") == 1

    stack.stop_bot()  # down overnight, back before the next day's hour
    clock.advance(hours=20)  # Thursday 07:10
    stack.start_bot()
    stack.bot.service.housekeeping()
    assert len(digests(stack)) == 1
    clock.advance(minutes=50)  # 08:00
    assert stack.slack.wait_for(lambda: len(digests(stack)) == 2, timeout=15), digests(stack)
    assert "due 2026-12-04 (tomorrow)" in digests(stack)[1]
    assert row_count(stack, "digests") == 2
