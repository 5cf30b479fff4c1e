"""The data-protection officer's report: one CSV row per request and a summary line. Pure.

A row holds only dates, kinds, outcomes and counts, never free text (no ticket, no reason, no
command text): the report may travel further than the requests' channels. Columns:

    request       R-1042
    verb          export | delete
    kind          what was asked for: project, images, account, ...
    received      the receipt date (YYYY-MM-DD)
    due           the first due date, one month after receipt
    extended_to   the due date in force once extended, else empty
    completed     the day it was done, else empty
    outcome       met | late (completed), open | overdue (not yet), cancelled | rejected |
                  expired (ended without being done), failed (stopped; still owed)
    days_taken    days from receipt to completion, else empty
    counts        what it exported or deleted: `images=240;tags=4`, else empty

The summary line: requests, median days to completion, late count, open count.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from bot import wording
from bot.deadline import Deadline
from bot.lifecycle import STOPPED, RequestKind, RequestRecord

COLUMNS = (
    "request",
    "verb",
    "kind",
    "received",
    "due",
    "extended_to",
    "completed",
    "outcome",
    "days_taken",
    "counts",
)
# Ended without the request being done: no deadline to meet any more.
_ENDED = frozenset({"cancelled", "rejected", "expired"})


@dataclass(frozen=True)
class ReportEntry:
    """One request as the report sees it."""

    request_id: str
    verb: str  # export | delete
    kind: str
    status: str
    deadline: Deadline
    counts: Mapping[str, int] = field(default_factory=dict)


def entry_of(record: RequestRecord) -> ReportEntry:
    """Return the report's view of a stored request that has a clock."""
    assert record.deadline is not None, "the report reads requests with a clock only"
    verb = "export" if record.kind is RequestKind.EXPORT else "delete"
    counts = (record.result or {}).get("counts") or {}
    return ReportEntry(
        request_id=record.id,
        verb=verb,
        kind=str(record.command.get("kind") or "?"),
        status=str(record.status),
        deadline=record.deadline,
        counts=counts if isinstance(counts, Mapping) else {},
    )


def outcome(entry: ReportEntry, today: date) -> str:
    """Return the row's outcome: met, late, open, overdue, failed, cancelled, ..."""
    deadline = entry.deadline
    if deadline.completed is not None:
        return "met" if deadline.met else "late"
    if entry.status in STOPPED:
        return entry.status
    if deadline.late_on(today):
        return "overdue"
    return "failed" if entry.status == "failed" else "open"


def row(entry: ReportEntry, today: date) -> dict[str, str]:
    """Return the CSV row of one request."""
    deadline = entry.deadline
    taken = None if deadline.completed is None else (deadline.completed - deadline.received).days
    counts = ";".join(
        f"{key}={value}"
        for key, value in sorted(entry.counts.items())
        if isinstance(value, int) and not isinstance(value, bool) and key.isidentifier()
    )
    return {
        "request": entry.request_id,
        "verb": entry.verb,
        "kind": entry.kind,
        "received": deadline.received.isoformat(),
        "due": deadline.first_due.isoformat(),
        "extended_to": deadline.due.isoformat() if deadline.extended else "",
        "completed": "" if deadline.completed is None else deadline.completed.isoformat(),
        "outcome": outcome(entry, today),
        "days_taken": "" if taken is None else str(taken),
        "counts": counts,
    }


def csv_text(entries: Sequence[ReportEntry], today: date) -> str:
    """Return the report as CSV text (a header, then one row per request)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for entry in entries:
        writer.writerow(row(entry, today))
    return out.getvalue()


def period(since: date | None, until: date | None) -> str:
    """Return the report's period in words: "from 2026-01-01 to 2026-03-31", "to date", ..."""
    if since is None and until is None:
        return "to date"
    if since is None:
        return f"up to {until}"
    if until is None:
        return f"from {since} on"
    return f"from {since} to {until}"


def summary(entries: Sequence[ReportEntry], today: date) -> str:
    """Return "12 requests · median 9 days to completion · 1 late · 3 open"."""
    outcomes = [outcome(entry, today) for entry in entries]
    taken = [
        (e.deadline.completed - e.deadline.received).days
        for e in entries
        if e.deadline.completed is not None
    ]
    median = (
        f"median {statistics.median(taken):g} days to completion" if taken else "none completed yet"
    )
    late = outcomes.count("late") + outcomes.count("overdue")
    still_open = sum(1 for o in outcomes if o in ("open", "overdue", "failed"))
    return (
        f"{wording.count(len(entries), 'request')} · {median} · {late:,} late · {still_open:,} open"
    )
