"""The statutory deadline: Regulation 1182/71 month arithmetic, weekends and holidays."""

from __future__ import annotations

from datetime import date

import pytest

from bot.deadline import (
    add_months,
    days_left,
    describe_completion,
    describe_left,
    due_date,
    next_working_day,
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
        ("2026-12-01", 3, "due in 3 days"),
        ("2026-12-03", 1, "due tomorrow"),
        ("2026-12-04", 0, "due today"),
        ("2026-12-05", -1, "1 day overdue"),
        ("2026-12-10", -6, "6 days overdue"),
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
