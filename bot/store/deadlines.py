"""The statutory clock's state: each request's deadline, its extensions, the daily digest.

A request's deadline is stored with the request (`start_clock`, in the transaction that stores
the request) and read with it (`RequestRecord.deadline`). Its completion date is set by the
database itself when the request reaches done or answered (migration 4's trigger), so no code
path can finish a request without it. An extension is a compare-and-set on the period in force,
so two approvers extending at once extend once. The digest's day is recorded in the transaction
that queues its posts (`mark_digest`), so a restart neither repeats nor skips a day.

Reads for the digest, the App Home dashboard and the report (`tracked`, `count_tracked`,
`due_soon`, `report_entries`) return plain values of `bot.reminders` and `bot.report`.
"""

from __future__ import annotations

import sqlite3
from datetime import date, timedelta
from typing import Any

from bot.clock import iso
from bot.deadline import DUE_SOON_DAYS, Deadline
from bot.lifecycle import OPEN, STOPPED, Status
from bot.reminders import Tracked, tracked_of
from bot.report import ReportEntry, entry_of
from bot.store.requests import Requests

_STOPPED = sorted(STOPPED)


class Deadlines(Requests):
    """Deadlines, extensions and the digest's days."""

    def start_clock(self, conn: sqlite3.Connection, number: int, deadline: Deadline) -> None:
        """Record a new request's deadline inside the caller's transaction."""
        self.table("deadlines").insert(
            {
                "request_id": number,
                "received": deadline.received.isoformat(),
                "first_due": deadline.first_due.isoformat(),
                "due": deadline.due.isoformat(),
                "months": deadline.months,
                "completed": None if deadline.completed is None else deadline.completed.isoformat(),
            }
        )

    def extend_clock(
        self, conn: sqlite3.Connection, number: int, *, was: Deadline, now: Deadline
    ) -> bool:
        """Move the deadline from `was` to `now` (compare-and-set on the period in force and
        on not completed); return False when it changed meanwhile."""
        cursor = conn.execute(
            "UPDATE deadlines SET months = ?, due = ? WHERE request_id = ? AND months = ?"
            " AND completed IS NULL",
            (now.months, now.due.isoformat(), number, was.months),
        )
        return cursor.rowcount == 1

    # -- reads for the digest, the dashboard and the report -------------------------------------

    def _tracked_where(
        self,
        requester: str | None,
        statuses: tuple[Status, ...] | None,
        due_by: date | None,
    ) -> tuple[str, list[Any]]:
        """Return the WHERE clause and arguments of `tracked`'s filters."""
        stopped = ",".join("?" * len(_STOPPED))
        running = ",".join("?" * len(OPEN))
        where = [
            f"r.status NOT IN ({stopped})",
            "((d.request_id IS NOT NULL AND d.completed IS NULL)"
            f" OR (d.request_id IS NULL AND r.status IN ({running})))",
        ]
        args: list[Any] = [*map(str, _STOPPED), *sorted(map(str, OPEN))]
        if requester is not None:
            where.append("r.requester = ?")
            args.append(requester)
        if statuses is not None:
            where.append(f"r.status IN ({','.join('?' * len(statuses))})")
            args += [str(s) for s in statuses]
        if due_by is not None:
            where.append("d.due <= ?")
            args.append(due_by.isoformat())
        return " AND ".join(where), args

    def tracked(
        self,
        *,
        requester: str | None = None,
        statuses: tuple[Status, ...] | None = None,
        due_by: date | None = None,
        limit: int | None = None,
    ) -> list[Tracked]:
        """Return the requests whose clock runs (not completed, not cancelled, rejected or
        expired), oldest due first, each with what it waits on.

        `requester`: only that person's; `statuses`: only those (e.g. (Status.PENDING,) for
        everything waiting for an approval); `due_by`: only those due on that day or before
        (today + DUE_SOON_DAYS: due within a week, or overdue); `limit`: at most that many
        (`count_tracked` says how many there are). Requests stored before the clock existed
        have no due date: they are listed (last) unless `due_by` is given.
        """
        where, args = self._tracked_where(requester, statuses, due_by)
        if limit is not None:
            args.append(limit)
        # By hand: a read across requests, deadlines and the outbox.
        cursor = self.db.conn.execute(
            "SELECT r.*, EXISTS (SELECT 1 FROM outbox AS o WHERE o.request_id = r.id"  # noqa: S608
            "  AND o.status = 'held') AS held"
            " FROM requests AS r LEFT JOIN deadlines AS d ON d.request_id = r.id"
            f" WHERE {where}"
            " ORDER BY d.due IS NULL, d.due, r.id" + ("" if limit is None else " LIMIT ?"),
            args,
        )
        names = [column[0] for column in cursor.description]
        rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        return [tracked_of(self._record(row), held=bool(row["held"])) for row in rows]

    def count_tracked(
        self,
        *,
        requester: str | None = None,
        statuses: tuple[Status, ...] | None = None,
        due_by: date | None = None,
    ) -> int:
        """Return how many requests `tracked` with the same filters (and no limit) returns."""
        where, args = self._tracked_where(requester, statuses, due_by)
        row = self.db.conn.execute(
            "SELECT COUNT(*) FROM requests AS r"  # noqa: S608
            f" LEFT JOIN deadlines AS d ON d.request_id = r.id WHERE {where}",
            args,
        ).fetchone()
        return int(row[0])

    def due_soon(self, today: date) -> list[Tracked]:
        """Return the running clocks due within DUE_SOON_DAYS of `today`, or overdue."""
        return self.tracked(due_by=today + timedelta(days=DUE_SOON_DAYS))

    def report_entries(self, since: date | None, until: date | None) -> list[ReportEntry]:
        """Return every request received from `since` to `until` (both included; None: no
        bound) that has a clock, by receipt date then id."""
        where, args = ["1"], []
        if since is not None:
            where.append("d.received >= ?")
            args.append(since.isoformat())
        if until is not None:
            where.append("d.received <= ?")
            args.append(until.isoformat())
        cursor = self.db.conn.execute(
            "SELECT r.* FROM requests AS r JOIN deadlines AS d ON d.request_id = r.id"  # noqa: S608
            f" WHERE {' AND '.join(where)} ORDER BY d.received, r.id",
            args,
        )
        names = [column[0] for column in cursor.description]
        records = [self._record(dict(zip(names, row, strict=True))) for row in cursor.fetchall()]
        return [entry_of(record) for record in records if record.deadline is not None]

    # -- the daily digest ---------------------------------------------------------------------

    def last_digest_day(self) -> date | None:
        """Return the newest day whose digest was queued (None: never)."""
        row = self.db.conn.execute("SELECT MAX(day) FROM digests").fetchone()
        return None if row[0] is None else date.fromisoformat(row[0])

    def mark_digest(self, conn: sqlite3.Connection, day: date, channels: int) -> bool:
        """Record `day`'s digest inside the transaction that queues its posts; return False
        (queue nothing) when that day was recorded already."""
        cursor = conn.execute(
            "INSERT OR IGNORE INTO digests (day, at, channels) VALUES (?, ?, ?)",
            (day.isoformat(), iso(self.clock.now()), channels),
        )
        return cursor.rowcount == 1
