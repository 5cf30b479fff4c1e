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

Besides the arithmetic, this module holds the clock's rules and wording: which receipt dates
are believable (`receipt_problem`), whether a request may still be extended
(`extension_problem`), what an open request waits on (`waiting_on`), and how a request's clock
reads in every message and file (`Deadline.describe`): "received 2026-11-04 · due 2026-12-04
(in 3 days)", "... (overdue by 2 days)", "... · completed 2026-12-14, 13 days after receipt,
within the deadline".
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from bot import wording

MAX_MONTHS = 3  # one month plus at most two more (Art. 12(3))
# A receipt date further back than this is a typo or a ticket no system still holds open: the
# longest deadline there is (three months) would be over.
RECEIPT_LOOKBACK_MONTHS = 3
# The digest and the approvers' dashboard list what is due within this many days, or overdue.
DUE_SOON_DAYS = 7

# What an open request waits on, by its status (a held delivery overrides: it waits on Slack).
_WAITS_ON = {
    "pending": "approval",
    "queued": "running",
    "previewing": "running",
    "approved": "running",
    "running": "running",
    "failed": "failed",
}
DELIVERY_HELD = "delivery held"


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
    """Return "in 3 days", "tomorrow", "today", "overdue by 1 day", ... (of a due date)."""
    left = days_left(due, today)
    if left == 0:
        return "today"
    if left == 1:
        return "tomorrow"
    if left > 1:
        return f"in {left:,} days"
    return f"overdue by {wording.count(-left, 'day')}"


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


def receipt_problem(received: date, today: date) -> str | None:
    """Return why `received` cannot be a request's receipt date on `today`, or None."""
    if received > today:
        return (
            f"--received {received.isoformat()} is in the future (today is {today.isoformat()}"
            " UTC): give the day the person's request reached you"
        )
    earliest = add_months(today, -RECEIPT_LOOKBACK_MONTHS)
    if received < earliest:
        return (
            f"--received {received.isoformat()} is more than {RECEIPT_LOOKBACK_MONTHS} months ago"
            f" (the earliest accepted is {earliest.isoformat()}): even an extended deadline would"
            " be over; check the date in the ticket"
        )
    return None


@dataclass(frozen=True)
class Deadline:
    """A request's statutory clock: when it was received, when it is due, when it was done."""

    received: date
    first_due: date  # one month after receipt, on a working day
    due: date  # the due date in force: first_due, or later once extended
    months: int = 1  # the period in force, from receipt: 1, or up to 3 once extended
    completed: date | None = None

    @property
    def extended(self) -> bool:
        """True once the deadline was extended beyond the first month."""
        return self.months > 1

    @property
    def met(self) -> bool | None:
        """True when completed by the due date, False when completed late, None while open."""
        return None if self.completed is None else self.completed <= self.due

    def late_on(self, today: date) -> bool:
        """Return True when the request is late: completed after its due date, or open past it."""
        return (self.completed or today) > self.due

    def describe(self, today: date | None = None) -> str:
        """Return the clock as people read it; `today` adds the days left (open requests).

        "received 2026-11-04 · due 2026-12-04 (in 3 days)"; extended: "... · due 2027-01-04,
        extended by 1 month (in 33 days)"; completed: "received ... · completed 2026-12-14, 13
        days after receipt, within the deadline".
        """
        head = f"received {self.received.isoformat()}"
        if self.completed is not None:
            return f"{head} · {describe_completion(self.received, self.due, self.completed)}"
        due = f"due {self.due.isoformat()}"
        if self.extended:
            due += f", extended by {wording.count(self.months - 1, 'month')}"
        if today is not None:
            due += f" ({describe_left(self.due, today)})"
        return f"{head} · {due}"


def deadline_fields(deadline: Deadline | None) -> dict[str, str | None]:
    """Return the statutory dates a manifest or a receipt records (None where not known)."""
    if deadline is None:
        return {"received": None, "due": None, "extended_to": None}
    return {
        "received": deadline.received.isoformat(),
        "due": deadline.first_due.isoformat(),
        "extended_to": deadline.due.isoformat() if deadline.extended else None,
    }


def deadline_of(
    received: date,
    months: int = 1,
    holidays: Iterable[date] = (),
    completed: date | None = None,
) -> Deadline:
    """Return the Deadline of a request received on `received`, given the period in force."""
    closed = frozenset(holidays)
    return Deadline(
        received=received,
        first_due=due_date(received, 1, closed),
        due=due_date(received, months, closed),
        months=months,
        completed=completed,
    )


def extension_problem(deadline: Deadline, more: int, today: date) -> str | None:
    """Return why a deadline cannot be extended by `more` months on `today`, or None."""
    if deadline.completed is not None:
        return f"it was {describe_completion(deadline.received, deadline.due, deadline.completed)}"
    if today > deadline.first_due:
        return (
            f"its first due date, {deadline.first_due.isoformat()}, has passed: Art. 12(3) allows"
            " an extension only when the person is told within the first month"
        )
    if deadline.months + more > MAX_MONTHS:
        left = MAX_MONTHS - deadline.months
        can = f"at most {wording.count(left, 'more month')}" if left else "no more months"
        return (
            f"that would be {deadline.months + more} months from receipt; the most is"
            f" {MAX_MONTHS} (it is already due {deadline.due.isoformat()}, so {can})"
        )
    return None


def waiting_on(status: str, *, held: bool = False) -> str:
    """Return what an open request waits on: approval, running, failed or delivery held."""
    if held:
        return DELIVERY_HELD
    return _WAITS_ON.get(status, status)


def due_soon(deadline: Deadline, today: date) -> bool:
    """Return True when an open request is due within DUE_SOON_DAYS, or overdue."""
    return deadline.completed is None and days_left(deadline.due, today) <= DUE_SOON_DAYS
