"""The digest and the report as pure builders: what is listed, in which order, in what words."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from bot.deadline import deadline_of
from bot.reminders import DIGEST_SHOWN, Tracked, digest_day, digest_text, digests
from bot.report import ReportEntry, csv_text, row, summary

D = date.fromisoformat
TODAY = D("2026-12-01")


def _tracked(n: int, received: str, status: str = "running", **changes: object) -> Tracked:
    fields: dict[str, object] = {
        "request_id": f"R-{n}",
        "summary": "export project 6c1f2a3b…",
        "requester": "U1",
        "channel": "C1",
        "status": status,
        "deadline": deadline_of(D(received)),
    }
    fields.update(changes)
    return Tracked(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("now", "last", "day"),
    [
        ("2026-12-01T07:59", None, None),  # before the hour
        ("2026-12-01T08:00", None, "2026-12-01"),
        ("2026-12-01T23:59", "2026-11-30", "2026-12-01"),  # late in the day still sends
        ("2026-12-01T08:30", "2026-12-01", None),  # sent today: never twice
        ("2026-12-02T08:00", "2026-12-01", "2026-12-02"),
    ],
)
def test_digest_day_is_due_once_a_day_from_the_hour_on(
    now: str, last: str | None, day: str | None
) -> None:
    moment = datetime.fromisoformat(now).replace(tzinfo=UTC)
    expected = None if day is None else D(day)
    assert digest_day(moment, 8, None if last is None else D(last)) == expected


def test_digest_lists_overdue_then_due_soon_with_what_each_waits_on() -> None:
    items = [
        _tracked(1003, "2026-11-03", "pending"),  # due 2026-12-03
        _tracked(1001, "2026-10-28", "failed"),  # due 2026-11-30: overdue
        _tracked(1002, "2026-11-20"),  # due 2026-12-21: not yet
        _tracked(1004, "2026-11-04", "done", held=True),  # due 2026-12-04
        _tracked(1005, "2026-11-02", deadline=deadline_of(D("2026-11-02"), 2)),  # extended
        _tracked(1006, "2026-11-02", deadline=deadline_of(D("2026-11-02"), completed=TODAY)),
    ]
    assert digest_text(items, TODAY) == "\n".join(
        [
            ":alarm_clock: *Statutory deadlines, 2026-12-01*: 1 request overdue and 2 requests"
            " due within 7 days.",
            "• *R-1001* export project 6c1f2a3b… · <@U1> · received 2026-10-28 · due 2026-11-30"
            " (overdue by 1 day) · waits on: failed",
            "• *R-1003* export project 6c1f2a3b… · <@U1> · received 2026-11-03 · due 2026-12-03"
            " (in 2 days) · waits on: approval",
            "• *R-1004* export project 6c1f2a3b… · <@U1> · received 2026-11-04 · due 2026-12-04"
            " (in 3 days) · waits on: delivery held",
            "`/cv status <request-id>` shows one; an approver may extend one before its first due"
            ' date: `/cv extend <request-id> --months 1|2 --reason "..."`.',
        ]
    )


def test_digest_says_nothing_when_nothing_is_due() -> None:
    assert digest_text([_tracked(1, "2026-11-20")], TODAY) is None
    assert digests([_tracked(1, "2026-11-20", channel="C2")], TODAY) == {}


def test_digest_shows_an_extension_that_comes_due() -> None:
    item = _tracked(7, "2026-10-05", deadline=deadline_of(D("2026-10-05"), 2))
    text = digest_text([item], TODAY)
    assert text is not None
    assert (
        "received 2026-10-05 · due 2026-12-07, extended by 1 month (in 6 days) · waits on:"
        " running (extended to 2026-12-07)"
    ) in text


def test_digests_go_to_each_channel_with_something_due_and_are_capped() -> None:
    many = [_tracked(n, "2026-11-01", channel="C1") for n in range(DIGEST_SHOWN + 2)]
    texts = digests([*many, _tracked(99, "2026-11-30", channel="C2")], TODAY)
    assert list(texts) == ["C1"]
    assert texts["C1"].count("\n• ") == DIGEST_SHOWN
    assert "…and 2 more: `/cv report` lists every request." in texts["C1"]


def _entry(n: int, status: str, received: str, **deadline: object) -> ReportEntry:
    return ReportEntry(
        request_id=f"R-{n}",
        verb="delete",
        kind="images",
        status=status,
        deadline=deadline_of(D(received), **deadline),  # type: ignore[arg-type]
        counts={"images": 3, "bogus key": 1},
    )


def test_report_rows_say_met_late_open_overdue_and_ended() -> None:
    entries = [
        _entry(1, "done", "2026-10-01", completed=D("2026-10-10")),
        _entry(2, "done", "2026-10-01", completed=D("2026-11-03")),  # due 2026-11-02
        _entry(3, "running", "2026-11-20"),
        _entry(4, "failed", "2026-10-20"),  # due 2026-11-20: overdue
        _entry(5, "rejected", "2026-10-20"),
        _entry(6, "pending", "2026-10-20", months=3),  # extended to 2027-01-20
    ]
    assert [row(e, TODAY)["outcome"] for e in entries] == [
        "met",
        "late",
        "open",
        "overdue",
        "rejected",
        "open",
    ]
    assert row(entries[5], TODAY) == {
        "request": "R-6",
        "verb": "delete",
        "kind": "images",
        "received": "2026-10-20",
        "due": "2026-11-20",
        "extended_to": "2027-01-20",
        "completed": "",
        "outcome": "open",
        "days_taken": "",
        "counts": "images=3",
    }
    assert csv_text(entries[:1], TODAY) == (
        "request,verb,kind,received,due,extended_to,completed,outcome,days_taken,counts\n"
        "R-1,delete,images,2026-10-01,2026-11-02,,2026-10-10,met,9,images=3\n"
    )
    assert summary(entries, TODAY) == (
        "6 requests · median 21 days to completion · 2 late · 3 open"
    )


def test_report_summary_of_nothing_completed() -> None:
    assert summary([], TODAY) == "0 requests · none completed yet · 0 late · 0 open"
