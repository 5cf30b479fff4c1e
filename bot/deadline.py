"""The statutory clock of a data-subject request. Pure functions over dates.

GDPR Art. 12(3): an answer without undue delay and at the latest one month after receipt,
extendable by two further months. Periods are computed as Regulation (EEC, Euratom) 1182/71
Art. 3 has them, as the EDPB's guidelines 01/2022 on the right of access describe:
- a period of N months ends on the day of the N-th following month that has the same number
  as the day of receipt (received 5 March, one month: due 5 April);
- when that month has no such day, on its last day (31 August → 30 September; 31 January
  → 28 or 29 February);
- when that day is a Saturday, a Sunday or a public holiday, on the next working day.
An extension is counted from the receipt date, never from a due date already moved to a
working day, so an extension cannot drift by the days a weekend added.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import date, timedelta

from bot import wording

MAX_MONTHS = 3  # one month plus at most two more (Art. 12(3))


def add_months(start: date, months: int) -> date:
    """Return the day numbered like `start` `months` later, or that month's last day."""
    index = start.month - 1 + months
    year, month = start.year + index // 12, index % 12 + 1
    return date(year, month, min(start.day, calendar.monthrange(year, month)[1]))


def next_working_day(day: date, holidays: Iterable[date] = ()) -> date:
    """Return `day`, or the first day after it that is neither a weekend nor a holiday."""
    closed = frozenset(holidays)
    while day.weekday() >= 5 or day in closed:
        day += timedelta(days=1)
    return day


def due_date(received: date, months: int = 1, holidays: Iterable[date] = ()) -> date:
    """Return the last day to answer a request received on `received`, given `months`.

    Raises ValueError when `months` is not 1 to 3.
    """
    if not 1 <= months <= MAX_MONTHS:
        raise ValueError(f"a deadline is 1 to {MAX_MONTHS} months from receipt, not {months}")
    return next_working_day(add_months(received, months), holidays)


def days_left(due: date, today: date) -> int:
    """Return the days from `today` to `due`: 0 on the due date, negative once overdue."""
    return (due - today).days


def describe_left(due: date, today: date) -> str:
    """Return "due in 3 days", "due tomorrow", "due today", "1 day overdue", ... ."""
    left = days_left(due, today)
    if left == 0:
        return "due today"
    if left == 1:
        return "due tomorrow"
    if left > 1:
        return f"due in {left} days"
    return f"{-left} day overdue" if left == -1 else f"{-left} days overdue"


def describe_completion(received: date, due: date, completed: date) -> str:
    """Return "completed 2026-12-14, 13 days after receipt, within the deadline" or "... late"."""
    taken = (completed - received).days
    after = "the day of receipt" if taken == 0 else f"{wording.count(taken, 'day')} after receipt"
    if completed <= due:
        verdict = "within the deadline"
    else:
        late = (completed - due).days
        verdict = f"{wording.count(late, 'day')} late (due {due.isoformat()})"
    return f"completed {completed.isoformat()}, {after}, {verdict}"
