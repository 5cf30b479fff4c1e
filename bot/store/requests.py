"""Requests and their approvals: creating, reading, and the one status change
(`transition`, which the lifecycle's table guards: `bot.lifecycle`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from bot.clock import iso, parse_iso
from bot.deadline import Deadline
from bot.errors import RequestStateError
from bot.ids import format_request_id, parse_request_id
from bot.lifecycle import (
    OPEN,
    TERMINAL,
    RequestKind,
    RequestRecord,
    Role,
    Status,
    TransitionRefused,
    allowed,
    sources,
)
from bot.store.base import StoreBase, dumps, loads, time_of

# The columns of `requests` that change after creation (names are interpolated into SQL).
_UPDATABLE = frozenset(
    {
        "expires_at",
        "message_ts",
        "preview",
        "progress",
        "result",
        "error",
        "decided_by",
        "decision_reason",
    }
)


class Requests(StoreBase):
    """Requests, their approvals and their status."""

    def deadline_of(self, number: int) -> Deadline | None:
        """Return a request's statutory clock (None for requests stored before it existed)."""
        return self._deadlines_of([number]).get(number)

    def _deadlines_of(self, numbers: Collection[int]) -> dict[int, Deadline]:
        marks = ",".join("?" * len(numbers))
        rows = self.table("deadlines").rows_where(f"request_id IN ({marks})", list(numbers))
        return {
            int(r["request_id"]): Deadline(
                received=date.fromisoformat(r["received"]),
                first_due=date.fromisoformat(r["first_due"]),
                due=date.fromisoformat(r["due"]),
                months=int(r["months"]),
                completed=None if r["completed"] is None else date.fromisoformat(r["completed"]),
            )
            for r in rows
        }

    def create_request(
        self,
        conn: sqlite3.Connection,
        *,
        kind: RequestKind,
        command: Mapping[str, Any],
        text: str,
        requester: str,
        channel: str,
        status: Status,
        expires_at: datetime | None = None,
    ) -> int:
        """Insert a request inside the caller's transaction (`conn`: this thread's); return its
        number. Raises TransitionRefused when the lifecycle does not start a request in `status`.
        """
        if not allowed(None, status, Role.REQUESTER):
            raise TransitionRefused(None, None, status, Role.REQUESTER, requester)
        now = iso(self.clock.now())
        number = (
            self.table("requests")
            .insert(
                {
                    "kind": str(kind),
                    "command": dumps(command),
                    "text": text,
                    "requester": requester,
                    "channel": channel,
                    "status": str(status),
                    "created_at": now,
                    "updated_at": now,
                    "expires_at": iso(expires_at) if expires_at else None,
                }
            )
            .last_pk
        )
        assert isinstance(number, int)
        return number

    def get(self, request: int | str, conn: sqlite3.Connection | None = None) -> RequestRecord:
        """Return the stored request; raise RequestStateError when there is none.

        `conn` is accepted inside a transaction; reads use this thread's connection anyway.
        """
        number = request if isinstance(request, int) else parse_request_id(request)
        # rows_where, not get(): get() reads the table's schema on every call.
        rows = [] if number is None else list(self.table("requests").rows_where("id = ?", [number]))
        if not rows:
            shown = request if isinstance(request, str) else format_request_id(request)
            raise RequestStateError(f"There is no request {shown}.")
        return self._record(rows[0])

    def _record(self, r: Mapping[str, Any]) -> RequestRecord:
        (record,) = self._records([r])
        return record

    def _records(self, rows: Sequence[Mapping[str, Any]]) -> list[RequestRecord]:
        """Return the records of request rows, their approvals and clocks read in one query
        each (not one each per request: `status` lists up to 20, inside Slack's 3 seconds)."""
        numbers = [int(r["id"]) for r in rows]
        approvals = self._approvals_of(numbers)
        deadlines = self._deadlines_of(numbers)
        return [self._build(r, approvals.get(r["id"], []), deadlines.get(r["id"])) for r in rows]

    def _build(
        self, r: Mapping[str, Any], approvals: list[tuple[str, str]], deadline: Deadline | None
    ) -> RequestRecord:
        return RequestRecord(
            number=r["id"],
            kind=RequestKind(r["kind"]),
            command=json.loads(r["command"]),
            text=r["text"],
            requester=r["requester"],
            channel=r["channel"],
            status=Status(r["status"]),
            created_at=parse_iso(r["created_at"]),
            updated_at=parse_iso(r["updated_at"]),
            expires_at=time_of(r["expires_at"]),
            message_ts=r["message_ts"],
            preview=loads(r["preview"]),
            progress=loads(r["progress"]),
            result=loads(r["result"]),
            error=r["error"],
            decided_by=r["decided_by"],
            decision_reason=r["decision_reason"],
            approvals=tuple(who for who, _ in approvals),
            approved_at=parse_iso(approvals[-1][1]) if approvals else None,
            deadline=deadline,
        )

    def requests_of(
        self, user: str, *, open_only: bool = True, limit: int | None = 50
    ) -> list[RequestRecord]:
        """Return the user's latest `limit` requests (None: all), newest first (by default only
        open ones and those with a held delivery)."""
        where, args = self._requests_of(user, open_only)
        rows = self.table("requests").rows_where(where, args, order_by="id DESC", limit=limit)
        return self._records(list(rows))

    def count_requests_of(self, user: str, *, open_only: bool = True) -> int:
        """Return how many requests the user has (only open ones by default)."""
        where, args = self._requests_of(user, open_only)
        return self.table("requests").count_where(where, args)

    @staticmethod
    def _requests_of(user: str, open_only: bool) -> tuple[str, list[Any]]:
        where = "requester = ?"
        args: list[Any] = [user]
        if open_only:
            where += (
                f" AND (status IN ({','.join('?' * len(OPEN))}) OR EXISTS (SELECT 1 FROM outbox"  # noqa: S608
                " WHERE outbox.request_id = requests.id AND outbox.status = 'held'))"
            )
            args.extend(sorted(OPEN))
        return where, args

    def has_requests(self, user: str) -> bool:
        """Return True when `user` has ever made a request."""
        rows = self.table("requests").rows_where("requester = ?", [user], select="1", limit=1)
        return any(True for _ in rows)

    def status_of(self, number: int) -> Status:
        """Return a request's stored status (cheaper than `get`, for checks inside jobs)."""
        rows = self.table("requests").rows_where("id = ?", [number], select="status")
        for row in rows:
            return Status(row["status"])
        raise RequestStateError(f"There is no request {format_request_id(number)}.")

    def _assignments(self, fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not an updatable request column: {sorted(unknown)}")
        sets = ["updated_at = ?", *(f"{name} = ?" for name in fields)]
        values: list[Any] = [iso(self.clock.now())]
        values += [dumps(v) if isinstance(v, dict | list) else v for v in fields.values()]
        return ", ".join(sets), values

    def transition(
        self,
        conn: sqlite3.Connection,
        number: int,
        *,
        to: Status,
        by: Role,
        actor: str,
        expected: Collection[Status] | None = None,
        **fields: Any,
    ) -> bool:
        """Move a request to `to` on `by`'s action (`actor`: who, for the audit), setting `fields`.

        The one way a status changes. Returns False, changing nothing, when the request is not
        in `expected` (default: every status the table lets `by` move to `to`): someone else
        moved it first. Raises TransitionRefused when it is, but the lifecycle's table does not
        allow the change (Store.write audits the refusal).
        """
        row = conn.execute("SELECT status FROM requests WHERE id = ?", (number,)).fetchone()
        if row is None:
            raise RequestStateError(f"There is no request {format_request_id(number)}.")
        current = Status(row[0])
        if current not in (sources(to, by) if expected is None else expected):
            return False
        if not allowed(current, to, by):
            raise TransitionRefused(format_request_id(number), current, to, by, actor)
        sets, values = self._assignments(fields)
        # Compare-and-set by hand: the status it moves from is part of the update.
        cursor = conn.execute(
            f"UPDATE requests SET status = ?, {sets} WHERE id = ? AND status = ?",  # noqa: S608
            (to, *values, number, current),
        )
        return cursor.rowcount == 1

    def update_fields(self, conn: sqlite3.Connection, number: int, **fields: Any) -> None:
        """Set columns of a request without changing its status."""
        sets, values = self._assignments(fields)
        conn.execute(f"UPDATE requests SET {sets} WHERE id = ?", (*values, number))  # noqa: S608

    def add_approval(self, conn: sqlite3.Connection, number: int, approver: str) -> int:
        """Record one approval (once per approver); return the number of approvals."""
        approvals = self.table("approvals")
        row = {"request_id": number, "approver": approver, "at": iso(self.clock.now())}
        approvals.insert(row, ignore=True)
        return approvals.count_where("request_id = ?", [number])

    def remove_approval(self, conn: sqlite3.Connection, number: int, approver: str) -> None:
        """Drop one recorded approval (its approver is no longer authorised)."""
        self.table("approvals").delete_where("request_id = ? AND approver = ?", [number, approver])

    def clear_approvals(self, conn: sqlite3.Connection, number: int) -> None:
        """Withdraw every recorded approval (a new plan needs new ones; the audit keeps them)."""
        self.table("approvals").delete_where("request_id = ?", [number])

    def approval_times(self, number: int) -> list[tuple[str, str]]:
        """Return (approver, ISO time) of each approval of a request, oldest first."""
        return self._approvals_of([number]).get(number, [])

    def _approvals_of(self, numbers: Collection[int]) -> dict[int, list[tuple[str, str]]]:
        marks = ",".join("?" * len(numbers))
        rows = self.table("approvals").rows_where(
            f"request_id IN ({marks})",
            list(numbers),
            order_by="at, approver",
            select="request_id, approver, at",
        )
        found: dict[int, list[tuple[str, str]]] = {}
        for r in rows:
            found.setdefault(int(r["request_id"]), []).append((str(r["approver"]), str(r["at"])))
        return found

    def due_for_expiry(self, now: datetime) -> list[int]:
        """Return the numbers of pending deletions whose approval window has passed."""
        rows = self.table("requests").rows_where(
            "status = ? AND expires_at <= ?", [Status.PENDING, iso(now)], select="id"
        )
        return [int(r["id"]) for r in rows]

    def unreported_outcomes(self, key_prefix: str) -> list[RequestRecord]:
        """Return ended requests whose work ran as jobs but whose final report was never queued.

        The report is the outbox item keyed `<key_prefix>:<number>:<status>`; it is queued just
        after the request's final transaction, so a crash in between leaves the request here.
        """
        marks = ",".join("?" * len(TERMINAL))
        # By hand: a read across requests, jobs and the outbox.
        cursor = self.db.conn.execute(
            f"SELECT * FROM requests AS r WHERE r.status IN ({marks})"  # noqa: S608
            " AND EXISTS (SELECT 1 FROM jobs AS j WHERE j.request_id = r.id)"
            " AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.request_id = r.id"
            "  AND j.status IN ('queued', 'running'))"
            " AND NOT EXISTS (SELECT 1 FROM outbox AS o"
            "  WHERE o.key = ? || ':' || r.id || ':' || r.status)"
            " ORDER BY r.id",
            (*sorted(TERMINAL), key_prefix),
        )
        names = [d[0] for d in cursor.description]
        return self._records([dict(zip(names, row, strict=True)) for row in cursor.fetchall()])
