"""The statutory deadline: Regulation 1182/71 month arithmetic, weekends and holidays."""

from __future__ import annotations

from datetime import date

import pytest

from bot.deadline import (
    Deadline,
    add_months,
    days_left,
    deadline_of,
    describe_completion,
    describe_left,
    due_date,
    due_soon,
    extension_problem,
    next_working_day,
    receipt_problem,
    waiting_on,
)

D = date.fromisoformat
HOLIDAYS = (D("2026-12-25"), D("2026-12-28"), D("2026-04-06"))


@pytest.mark.parametrize(
    ("received", "months", "holidays", "due"),
    [
        # same day number of the next month
        ("2026-09-17", 1, (), "2026-10-19"),  # 17 Oct is a Saturday
        ("2026-12-15", 1, (), "2027-01-15"),  # across the year
        ("2026-11-30", 1, (), "2026-12-30"),
        # the month has no such day: its last day
        ("2026-08-31", 1, (), "2026-09-30"),
        ("2026-10-31", 1, (), "2026-11-30"),
        ("2028-01-31", 1, (), "2028-02-29"),  # leap year
        ("2028-01-30", 1, (), "2028-02-29"),
        ("2027-01-29", 1, (), "2027-03-01"),  # 28 Feb 2027 is a Sunday
        ("2027-01-31", 1, (), "2027-03-01"),
        # weekends and listed holidays move it to the next working day
        ("2026-03-05", 1, (), "2026-04-06"),  # 5 Apr is a Sunday
        ("2026-03-05", 1, HOLIDAYS, "2026-04-07"),  # and 6 Apr a listed holiday
        ("2026-11-25", 1, (), "2026-12-25"),  # a Friday, no holiday listed
        ("2026-11-25", 1, HOLIDAYS, "2026-12-29"),  # Fri holiday, Sat, Sun, Mon holiday
        ("2026-12-31", 1, (), "2027-02-01"),  # 31 Jan 2027 is a Sunday
        # extensions: counted from receipt, then moved like any due date
        ("2026-07-17", 3, (), "2026-10-19"),  # lands on Saturday 17 Oct
        ("2026-03-05", 2, (), "2026-05-05"),  # not 6 May: the first due date's move is not carried
        ("2026-10-31", 2, (), "2026-12-31"),
        ("2026-10-31", 3, (), "2027-02-01"),
        ("2025-11-29", 3, (), "2026-03-02"),  # 28 Feb 2026 is a Saturday
    ],
)
def test_due_date_follows_regulation_1182_71(
    received: str, months: int, holidays: tuple[date, ...], due: str
) -> None:
    assert due_date(D(received), months, holidays) == D(due)


@pytest.mark.parametrize("months", [0, 4, -1])
def test_due_date_refuses_periods_the_regulation_does_not_allow(months: int) -> None:
    with pytest.raises(ValueError, match=f"1 to 3 months from receipt, not {months}"):
        due_date(D("2026-01-10"), months)


def test_add_months_keeps_the_day_or_takes_the_month_end() -> None:
    assert [add_months(D("2026-01-31"), n) for n in range(1, 13)] == [
        D(day)
        for day in (
            "2026-02-28", "2026-03-31", "2026-04-30", "2026-05-31", "2026-06-30", "2026-07-31",
            "2026-08-31", "2026-09-30", "2026-10-31", "2026-11-30", "2026-12-31", "2027-01-31",
        )
    ]  # fmt: skip


def test_next_working_day_leaves_a_working_day_alone() -> None:
    assert next_working_day(D("2026-12-02")) == D("2026-12-02")
    assert next_working_day(D("2026-12-02"), [D("2026-12-02")]) == D("2026-12-03")


@pytest.mark.parametrize(
    ("today", "left", "text"),
    [
        ("2026-12-01", 3, "in 3 days"),
        ("2026-12-03", 1, "tomorrow"),
        ("2026-12-04", 0, "today"),
        ("2026-12-05", -1, "overdue by 1 day"),
        ("2026-12-10", -6, "overdue by 6 days"),
    ],
)
def test_days_left_and_their_wording(today: str, left: int, text: str) -> None:
    assert days_left(D("2026-12-04"), D(today)) == left
    assert describe_left(D("2026-12-04"), D(today)) == text


@pytest.mark.parametrize(
    ("completed", "text"),
    [
        ("2026-12-14", "completed 2026-12-14, 13 days after receipt, within the deadline"),
        ("2026-12-01", "completed 2026-12-01, the day of receipt, within the deadline"),
        ("2026-12-02", "completed 2026-12-02, 1 day after receipt, within the deadline"),
        ("2027-01-04", "completed 2027-01-04, 34 days after receipt, within the deadline"),
        ("2027-01-05", "completed 2027-01-05, 35 days after receipt, 1 day late (due 2027-01-04)"),
        ("2027-01-08", "completed 2027-01-08, 38 days after receipt, 4 days late (due 2027-01-04)"),
    ],
)
def test_completion_says_whether_the_deadline_was_met(completed: str, text: str) -> None:
    received = D("2026-12-01")
    due = due_date(received, 1, [D("2027-01-01")])  # 1 Jan 2027 is a Friday and a holiday
    assert due == D("2027-01-04")
    assert describe_completion(received, due, D(completed)) == text


@pytest.mark.parametrize(
    ("received", "problem"),
    [
        ("2026-12-02", None),
        ("2026-09-02", None),  # exactly three months back
        (
            "2026-12-03",
            "--received 2026-12-03 is in the future (today is 2026-12-02 UTC): give the day the"
            " person's request reached you",
        ),
        (
            "2026-09-01",
            "--received 2026-09-01 is more than 3 months ago (the earliest accepted is"
            " 2026-09-02): even an extended deadline would be over; check the date in the ticket",
        ),
    ],
)
def test_receipt_problem_refuses_the_future_and_more_than_three_months_back(
    received: str, problem: str | None
) -> None:
    assert receipt_problem(D(received), D("2026-12-02")) == problem


def test_receipt_lookback_takes_the_month_end_when_the_day_is_missing() -> None:
    # 31 May minus three months: 28 February (the month has no 31st)
    assert receipt_problem(D("2027-02-28"), D("2027-05-31")) is None
    assert receipt_problem(D("2027-02-27"), D("2027-05-31")) is not None


@pytest.mark.parametrize(
    ("deadline", "today", "text"),
    [
        (
            deadline_of(D("2026-11-04")),
            D("2026-12-01"),
            "received 2026-11-04 · due 2026-12-04 (in 3 days)",
        ),
        (
            deadline_of(D("2026-11-04")),
            D("2026-12-06"),
            "received 2026-11-04 · due 2026-12-04 (overdue by 2 days)",
        ),
        (deadline_of(D("2026-11-04")), None, "received 2026-11-04 · due 2026-12-04"),
        (
            deadline_of(D("2026-11-04"), 2),
            D("2026-12-01"),
            "received 2026-11-04 · due 2027-01-04, extended by 1 month (in 34 days)",
        ),
        (
            deadline_of(D("2026-11-04"), 3, completed=D("2026-12-14")),
            D("2027-01-01"),
            "received 2026-11-04 · completed 2026-12-14, 40 days after receipt, within the"
            " deadline",
        ),
        (
            deadline_of(D("2026-11-04"), completed=D("2026-12-07")),
            None,
            "received 2026-11-04 · completed 2026-12-07, 33 days after receipt, 3 days late"
            " (due 2026-12-04)",
        ),
    ],
)
def test_deadline_describes_itself_as_every_message_shows_it(
    deadline: Deadline, today: date | None, text: str
) -> None:
    assert deadline.describe(today) == text


def test_deadline_of_keeps_the_first_due_date_and_says_whether_it_was_met() -> None:
    extended = deadline_of(D("2026-03-05"), 2, HOLIDAYS)
    assert (extended.first_due, extended.due, extended.extended) == (
        D("2026-04-07"),
        D("2026-05-05"),
        True,
    )
    assert extended.met is None
    assert extended.late_on(D("2026-05-05")) is False
    assert extended.late_on(D("2026-05-06")) is True
    assert deadline_of(D("2026-03-05"), completed=D("2026-04-06")).met is True
    assert deadline_of(D("2026-03-05"), completed=D("2026-04-07")).met is False


@pytest.mark.parametrize(
    ("months", "more", "today", "problem"),
    [
        (1, 2, "2026-12-04", None),  # on the first due date itself
        (1, 1, "2026-11-05", None),
        (2, 1, "2026-11-20", None),
        (
            1,
            2,
            "2026-12-05",
            "its first due date, 2026-12-04, has passed: Art. 12(3) allows an extension only"
            " when the person is told within the first month",
        ),
        (
            2,
            2,
            "2026-11-20",
            "that would be 4 months from receipt; the most is 3 (it is already due 2027-01-04,"
            " so at most 1 more month)",
        ),
        (
            3,
            1,
            "2026-11-20",
            "that would be 4 months from receipt; the most is 3 (it is already due 2027-02-04,"
            " so no more months)",
        ),
    ],
)
def test_extension_is_refused_after_the_first_due_date_and_beyond_three_months(
    months: int, more: int, today: str, problem: str | None
) -> None:
    assert extension_problem(deadline_of(D("2026-11-04"), months), more, D(today)) == problem


def test_extension_of_a_completed_request_says_when_it_was_completed() -> None:
    done = deadline_of(D("2026-11-04"), completed=D("2026-11-20"))
    assert extension_problem(done, 1, D("2026-11-21")) == (
        "it was completed 2026-11-20, 16 days after receipt, within the deadline"
    )


@pytest.mark.parametrize(
    ("status", "held", "waits"),
    [
        ("pending", False, "approval"),
        ("queued", False, "running"),
        ("previewing", False, "running"),
        ("approved", False, "running"),
        ("running", False, "running"),
        ("failed", False, "failed"),
        ("running", True, "delivery held"),
        ("done", True, "delivery held"),
    ],
)
def test_waiting_on_names_what_an_open_request_waits_for(
    status: str, held: bool, waits: str
) -> None:
    assert waiting_on(status, held=held) == waits


@pytest.mark.parametrize(
    ("today", "soon"),
    [("2026-11-26", False), ("2026-11-27", True), ("2026-12-04", True), ("2027-01-10", True)],
)
def test_due_soon_is_seven_days_ahead_or_overdue(today: str, soon: bool) -> None:
    assert due_soon(deadline_of(D("2026-11-04")), D(today)) is soon
    assert due_soon(deadline_of(D("2026-11-04"), completed=D("2026-11-20")), D(today)) is False
