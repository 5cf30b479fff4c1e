"""The bot's state in SQLite: requests, approvals, jobs, deletion items and the Slack outbox.

Every state change is a conditional update (`... WHERE status = ?`) inside one write
transaction, together with the audit event that records it, so a double click, two approvers
at once or a click racing expiry lead to exactly one outcome, and a crash loses nothing: what
was committed is the truth, what was not never happened.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bot import audit as audit_log
from bot.clock import Clock, iso, parse_iso
from bot.db import Database
from bot.errors import RequestStateError
from bot.ids import format_request_id, parse_request_id
from bot.logs import request_context

log = logging.getLogger(__name__)

TERMINAL = frozenset({"done", "failed", "cancelled", "rejected", "expired", "answered"})
OPEN = frozenset({"queued", "running", "previewing", "pending", "approved"})


@dataclass(frozen=True)
class RequestRecord:
    """One stored request, as the rest of the bot sees it."""

    number: int
    kind: str
    command: Mapping[str, Any]
    text: str
    requester: str
    channel: str
    status: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    message_ts: str | None
    preview: Mapping[str, Any] | None
    progress: Mapping[str, Any] | None
    result: Mapping[str, Any] | None
    error: str | None
    decided_by: str | None
    decision_reason: str | None
    approvals: tuple[str, ...]
    approved_at: datetime | None = None  # when the last recorded approval was given

    @property
    def id(self) -> str:
        """The human-typeable id, `R-1042`."""
        return format_request_id(self.number)


@dataclass(frozen=True)
class Job:
    id: int
    request_number: int
    kind: str
    status: str
    attempts: int
    checkpoint: Mapping[str, Any]

    @property
    def request_id(self) -> str:
        """The human-typeable id of the job's request."""
        return format_request_id(self.request_number)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    request_number: int | None
    key: str | None
    kind: str
    channel: str
    payload: Mapping[str, Any]
    attempts: int
    result: Mapping[str, Any] | None
    revision: int = 0


@dataclass(frozen=True)
class HeldDelivery:
    """A delivery Slack refused for good, kept (with its files) until `resend`."""

    key: str | None
    kind: str
    error: str
    name: str  # the file's name, or what the message was ("thread message", "announcement")


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


def what_of(kind: str, payload: Mapping[str, Any]) -> str:
    """Return what a delivery is, as people call it: the file's name, or the message."""
    if payload.get("filename"):
        return str(payload["filename"])
    return {
        "announce": "the request's message",
        "progress": "a progress message",
        "mirror": "an audit mirror line",
        "notice": "a notice",
    }.get(kind, "a thread message")


def announcement_key(number: int) -> str:
    """Return the outbox key of a request's announcement (one message, updated in place)."""
    return f"announce:{number}"


def preview_file_key(number: int, digest: str) -> str:
    """Return the outbox key of a deletion preview's thread file (one per preview content)."""
    return f"preview:{number}:{digest}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _time(text: str | None) -> datetime | None:
    return None if text is None else parse_iso(text)


class Store:
    """All reads and writes of the bot's state; audit events go in the same transaction."""

    def __init__(self, db: Database, clock: Clock, *, secrets: Sequence[str] = ()) -> None:
        self.db = db
        self.clock = clock
        self.secrets = tuple(s for s in secrets if s)
        self.audit_channel: str | None = None
        # Called after a transaction that queued a Slack delivery has committed.
        self.on_enqueue: Callable[[], None] | None = None
        self._local = threading.local()

    # -- transactions and audit --------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Yield a connection inside one write transaction."""
        with self.db.write() as conn:
            yield conn
        if getattr(self._local, "enqueued", False):
            self._local.enqueued = False
            if self.on_enqueue is not None:
                self.on_enqueue()

    def audit(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        *,
        request: int | str | None = None,
        targets: Sequence[str] = (),
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> audit_log.Event:
        """Append an audit event inside the caller's transaction (and queue its mirror)."""
        rid = format_request_id(request) if isinstance(request, int) else request
        event = audit_log.append(
            conn,
            at=self.clock.now(),
            actor=actor,
            action=action,
            request_id=rid,
            targets=targets,
            outcome=outcome,
            details=details or {},
            secrets=self.secrets,
        )
        with request_context(rid):
            log.info("audit #%s %s by %s: %s", event.seq, action, actor, outcome)
        self._mirror(conn, event)
        return event

    def _mirror(self, conn: sqlite3.Connection, event: audit_log.Event) -> None:
        if self.audit_channel:
            self.enqueue(
                conn,
                kind="mirror",
                channel=self.audit_channel,
                payload={"text": audit_log.mirror_line(event), "seq": event.seq},
                request=None,
            )

    def record(
        self,
        actor: str,
        action: str,
        *,
        request: int | str | None = None,
        targets: Sequence[str] = (),
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> audit_log.Event:
        """Append one audit event in a transaction of its own."""
        with self.write() as conn:
            return self.audit(
                conn,
                actor,
                action,
                request=request,
                targets=targets,
                outcome=outcome,
                details=details,
            )

    # -- requests ------------------------------------------------------------------------------

    def create_request(
        self,
        conn: sqlite3.Connection,
        *,
        kind: str,
        command: Mapping[str, Any],
        text: str,
        requester: str,
        channel: str,
        status: str,
        expires_at: datetime | None = None,
    ) -> int:
        """Insert a request inside the caller's transaction; return its number."""
        now = iso(self.clock.now())
        cursor = conn.execute(
            "INSERT INTO requests (kind, command, text, requester, channel, status, created_at,"
            " updated_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind,
                _json(command),
                text,
                requester,
                channel,
                status,
                now,
                now,
                iso(expires_at) if expires_at else None,
            ),
        )
        number = cursor.lastrowid
        assert number is not None
        return number

    def get(self, request: int | str, conn: sqlite3.Connection | None = None) -> RequestRecord:
        """Return the stored request; raise RequestStateError when there is none."""
        number = request if isinstance(request, int) else parse_request_id(request)
        conn = conn or self.db.conn
        row = (
            conn.execute("SELECT * FROM requests WHERE id = ?", (number,)).fetchone()
            if number is not None
            else None
        )
        if row is None:
            shown = request if isinstance(request, str) else format_request_id(request)
            raise RequestStateError(f"There is no request {shown}.")
        return self._record(conn, row)

    def _record(self, conn: sqlite3.Connection, row: tuple[Any, ...]) -> RequestRecord:
        cols = [
            "id",
            "kind",
            "command",
            "text",
            "requester",
            "channel",
            "status",
            "created_at",
            "updated_at",
            "expires_at",
            "message_ts",
            "preview",
            "progress",
            "result",
            "error",
            "decided_by",
            "decision_reason",
        ]
        r = dict(zip(cols, row, strict=True))
        rows = conn.execute(
            "SELECT approver, at FROM approvals WHERE request_id = ? ORDER BY at, approver",
            (r["id"],),
        ).fetchall()
        approvals = tuple(a for a, _ in rows)
        return RequestRecord(
            number=r["id"],
            kind=r["kind"],
            command=json.loads(r["command"]),
            text=r["text"],
            requester=r["requester"],
            channel=r["channel"],
            status=r["status"],
            created_at=parse_iso(r["created_at"]),
            updated_at=parse_iso(r["updated_at"]),
            expires_at=_time(r["expires_at"]),
            message_ts=r["message_ts"],
            preview=_loads(r["preview"]),
            progress=_loads(r["progress"]),
            result=_loads(r["result"]),
            error=r["error"],
            decided_by=r["decided_by"],
            decision_reason=r["decision_reason"],
            approvals=approvals,
            approved_at=parse_iso(rows[-1][1]) if rows else None,
        )

    def requests_of(
        self, user: str, *, open_only: bool = True, limit: int | None = 50
    ) -> list[RequestRecord]:
        """Return the user's latest `limit` requests (None: all), newest first (by default only
        open ones and those with a held delivery)."""
        conn = self.db.conn
        sql, args = self._requests_of(user, open_only)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = conn.execute("SELECT *" + sql, args).fetchall()
        return [self._record(conn, row) for row in rows]

    def count_requests_of(self, user: str, *, open_only: bool = True) -> int:
        """Return how many requests the user has (only open ones by default)."""
        sql, args = self._requests_of(user, open_only)
        (count,) = self.db.conn.execute("SELECT COUNT(*)" + sql, args).fetchone()
        return int(count)

    @staticmethod
    def _requests_of(user: str, open_only: bool) -> tuple[str, list[Any]]:
        sql = " FROM requests WHERE requester = ?"
        args: list[Any] = [user]
        if open_only:
            sql += (
                f" AND (status IN ({','.join('?' * len(OPEN))}) OR EXISTS (SELECT 1 FROM outbox"  # noqa: S608
                " WHERE outbox.request_id = requests.id AND outbox.status = 'held'))"
            )
            args.extend(sorted(OPEN))
        return sql, args

    def has_requests(self, user: str) -> bool:
        """Return True when `user` has ever made a request."""
        row = self.db.conn.execute(
            "SELECT 1 FROM requests WHERE requester = ? LIMIT 1", (user,)
        ).fetchone()
        return row is not None

    def _assignments(self, fields: Mapping[str, Any]) -> tuple[str, list[Any]]:
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"not an updatable request column: {sorted(unknown)}")
        sets = ["updated_at = ?", *(f"{name} = ?" for name in fields)]
        values: list[Any] = [iso(self.clock.now())]
        values += [_json(v) if isinstance(v, dict | list) else v for v in fields.values()]
        return ", ".join(sets), values

    def transition(
        self,
        conn: sqlite3.Connection,
        number: int,
        *,
        from_status: Sequence[str],
        to_status: str,
        **fields: Any,
    ) -> bool:
        """Compare-and-set the request's status; return False when it was not in `from_status`."""
        sets, values = self._assignments(fields)
        marks = ",".join("?" * len(from_status))
        cursor = conn.execute(
            f"UPDATE requests SET status = ?, {sets} WHERE id = ? AND status IN ({marks})",  # noqa: S608
            (to_status, *values, number, *from_status),
        )
        return cursor.rowcount == 1

    def update_fields(self, conn: sqlite3.Connection, number: int, **fields: Any) -> None:
        """Set columns of a request without changing its status."""
        sets, values = self._assignments(fields)
        conn.execute(f"UPDATE requests SET {sets} WHERE id = ?", (*values, number))  # noqa: S608

    def add_approval(self, conn: sqlite3.Connection, number: int, approver: str) -> int:
        """Record one approval (once per approver); return the number of approvals."""
        conn.execute(
            "INSERT OR IGNORE INTO approvals (request_id, approver, at) VALUES (?, ?, ?)",
            (number, approver, iso(self.clock.now())),
        )
        (count,) = conn.execute(
            "SELECT COUNT(*) FROM approvals WHERE request_id = ?", (number,)
        ).fetchone()
        return int(count)

    def remove_approval(self, conn: sqlite3.Connection, number: int, approver: str) -> None:
        """Drop one recorded approval (its approver is no longer authorised)."""
        conn.execute(
            "DELETE FROM approvals WHERE request_id = ? AND approver = ?", (number, approver)
        )

    def clear_approvals(self, conn: sqlite3.Connection, number: int) -> None:
        """Withdraw every recorded approval (a new plan needs new ones; the audit keeps them)."""
        conn.execute("DELETE FROM approvals WHERE request_id = ?", (number,))

    def approval_times(self, number: int) -> list[tuple[str, str]]:
        """Return (approver, ISO time) of each approval of a request, oldest first."""
        rows = self.db.conn.execute(
            "SELECT approver, at FROM approvals WHERE request_id = ? ORDER BY at, approver",
            (number,),
        )
        return [(str(a), str(t)) for a, t in rows]

    def due_for_expiry(self, now: datetime) -> list[int]:
        """Return the numbers of pending deletions whose approval window has passed."""
        rows = self.db.conn.execute(
            "SELECT id FROM requests WHERE status = 'pending' AND expires_at <= ?", (iso(now),)
        ).fetchall()
        return [int(r[0]) for r in rows]

    # -- jobs ------------------------------------------------------------------------------------

    def enqueue_job(self, conn: sqlite3.Connection, number: int, kind: str) -> int:
        """Queue a job for a request inside the caller's transaction; return its id.

        A request's second job of the same kind (a deletion approved again on a new plan)
        continues the rounds of the first, so its receipt does not replace the earlier one.
        """
        now = iso(self.clock.now())
        (rounds,) = conn.execute(
            "SELECT MAX(COALESCE(json_extract(checkpoint, '$.round'), 1)) FROM jobs"
            " WHERE request_id = ? AND kind = ?",
            (number, kind),
        ).fetchone()
        checkpoint = {} if rounds is None else {"round": int(rounds) + 1}
        cursor = conn.execute(
            "INSERT INTO jobs (request_id, kind, status, created_at, updated_at, checkpoint)"
            " VALUES (?, ?, 'queued', ?, ?, ?)",
            (number, kind, now, now, _json(checkpoint)),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def claim_job(self, owner: str, lease: timedelta, *, skip: Collection[int] = ()) -> Job | None:
        """Claim the oldest runnable job (queued, or running with an expired lease).

        `skip`: the jobs this process is running (their lease may run out while the database
        is locked, which must not let a second worker of this process take them over).
        """
        now = self.clock.now()
        marks = ",".join("?" * len(skip))
        # Only "?" marks are formatted into the statement.
        sql = (
            "SELECT id FROM jobs WHERE (status = 'queued'"  # noqa: S608
            " OR (status = 'running' AND lease_until < ?))"
            f" AND id NOT IN ({marks}) ORDER BY id LIMIT 1"
        )
        with self.write() as conn:
            row = conn.execute(sql, (iso(now), *skip)).fetchone()
            if row is None:
                return None
            taken_over = self._job(conn, int(row[0]))
            conn.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_until = ?,"
                " attempts = attempts + 1, updated_at = ? WHERE id = ?",
                (owner, iso(now + lease), iso(now), row[0]),
            )
            if taken_over.status == "running":
                # Its worker stopped renewing the lease: a crashed process.
                self.audit(
                    conn,
                    "bot",
                    "job.resumed",
                    request=taken_over.request_number,
                    details={
                        "job": taken_over.kind,
                        "attempts": taken_over.attempts,
                        "after": "lease expired",
                    },
                )
            return self._job(conn, int(row[0]))

    def job(self, job_id: int) -> Job:
        """Return a job as stored now."""
        return self._job(self.db.conn, job_id)

    def oldest_wait(self) -> timedelta | None:
        """Return how long the longest-waiting runnable job has waited (None: none waits).

        A queued job waits since it was queued; a running job whose lease ran out (its worker
        is gone) since the lease ended.
        """
        row = self.db.conn.execute(
            "SELECT MIN(CASE WHEN status = 'queued' THEN updated_at ELSE lease_until END)"
            " FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_until < ?)",
            (iso(self.clock.now()),),
        ).fetchone()
        since = _time(row[0]) if row else None
        return None if since is None else max(timedelta(0), self.clock.now() - since)

    def _job(self, conn: sqlite3.Connection, job_id: int) -> Job:
        row = conn.execute(
            "SELECT id, request_id, kind, status, attempts, checkpoint FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return Job(
            id=row[0],
            request_number=row[1],
            kind=row[2],
            status=row[3],
            attempts=row[4],
            checkpoint=json.loads(row[5]),
        )

    def renew_lease(self, job_id: int, owner: str, lease: timedelta) -> bool:
        """Extend a job's lease; return False when another owner took it."""
        with self.write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND lease_owner = ?"
                " AND status = 'running'",
                (iso(self.clock.now() + lease), job_id, owner),
            )
            return cursor.rowcount == 1

    def save_checkpoint(
        self, conn: sqlite3.Connection, job_id: int, checkpoint: Mapping[str, Any]
    ) -> None:
        """Store a job's progress checkpoint inside the caller's transaction."""
        conn.execute(
            "UPDATE jobs SET checkpoint = ?, updated_at = ? WHERE id = ?",
            (_json(checkpoint), iso(self.clock.now()), job_id),
        )

    def requeue_running_job(self, conn: sqlite3.Connection, job_id: int) -> bool:
        """Put one running job back in the queue; return False when it was not running."""
        cursor = conn.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,"
            " updated_at = ? WHERE id = ? AND status = 'running'",
            (iso(self.clock.now()), job_id),
        )
        return cursor.rowcount == 1

    def status_of(self, number: int) -> str:
        """Return a request's stored status (cheaper than `get`, for checks inside jobs)."""
        row = self.db.conn.execute("SELECT status FROM requests WHERE id = ?", (number,)).fetchone()
        if row is None:
            raise RequestStateError(f"There is no request {format_request_id(number)}.")
        return str(row[0])

    def finish_job(self, conn: sqlite3.Connection, job_id: int, status: str) -> None:
        """Mark a job done, failed or cancelled inside the caller's transaction."""
        conn.execute(
            "UPDATE jobs SET status = ?, lease_owner = NULL, lease_until = NULL, updated_at = ?"
            " WHERE id = ?",
            (status, iso(self.clock.now()), job_id),
        )

    def release_jobs(
        self,
        owner: str | None = None,
        *,
        expired_only: bool = False,
        audit_action: str | None = None,
        audit_details: Mapping[str, Any] | None = None,
    ) -> list[Job]:
        """Put running jobs back in the queue (all, one owner's, or those whose lease ran out).

        Start-up releases only expired leases: a lease that is still valid belongs to a process
        that may be alive (on another host, or through a path the process guard did not see).

        With `audit_action`, each released job gets that audit event in the same transaction,
        so a crash cannot release a job without the record saying so.
        """
        with self.write() as conn:
            sql = "SELECT id FROM jobs WHERE status = 'running'"
            args: tuple[Any, ...] = ()
            if owner is not None:
                sql += " AND lease_owner = ?"
                args = (owner,)
            if expired_only:
                sql += " AND (lease_until IS NULL OR lease_until < ?)"
                args = (*args, iso(self.clock.now()))
            ids = [int(r[0]) for r in conn.execute(sql, args)]
            for job_id in ids:
                self.requeue_running_job(conn, job_id)
            jobs = [self._job(conn, job_id) for job_id in ids]
            if audit_action is not None:
                for job in jobs:
                    self.audit(
                        conn,
                        "bot",
                        audit_action,
                        request=job.request_number,
                        details={
                            "job": job.kind,
                            "attempts": job.attempts,
                            **dict(audit_details or {}),
                        },
                    )
            return jobs

    def job_for(self, number: int, kind: str) -> Job | None:
        """Return the latest job of `kind` for a request."""
        row = self.db.conn.execute(
            "SELECT id FROM jobs WHERE request_id = ? AND kind = ? ORDER BY id DESC LIMIT 1",
            (number, kind),
        ).fetchone()
        return None if row is None else self._job(self.db.conn, int(row[0]))

    def requeue_job(self, conn: sqlite3.Connection, job_id: int) -> None:
        """Queue a failed job again, keeping its checkpoint (retry continues where it stopped).

        The checkpoint's `round` goes up by one: a retry starts a new round, a restart does not.
        """
        conn.execute(
            "UPDATE jobs SET status = 'queued', lease_owner = NULL, lease_until = NULL,"
            " checkpoint = json_set(checkpoint, '$.round',"
            "  COALESCE(json_extract(checkpoint, '$.round'), 1) + 1),"
            " updated_at = ? WHERE id = ?",
            (iso(self.clock.now()), job_id),
        )

    def unreported_outcomes(self, key_prefix: str) -> list[RequestRecord]:
        """Return ended requests whose work ran as jobs but whose final report was never queued.

        The report is the outbox item keyed `<key_prefix>:<number>:<status>`; it is queued just
        after the request's final transaction, so a crash in between leaves the request here.
        """
        marks = ",".join("?" * len(TERMINAL))
        conn = self.db.conn
        rows = conn.execute(
            f"SELECT * FROM requests AS r WHERE r.status IN ({marks})"  # noqa: S608
            " AND EXISTS (SELECT 1 FROM jobs AS j WHERE j.request_id = r.id)"
            " AND NOT EXISTS (SELECT 1 FROM jobs AS j WHERE j.request_id = r.id"
            "  AND j.status IN ('queued', 'running'))"
            " AND NOT EXISTS (SELECT 1 FROM outbox AS o"
            "  WHERE o.key = ? || ':' || r.id || ':' || r.status)"
            " ORDER BY r.id",
            (*sorted(TERMINAL), key_prefix),
        ).fetchall()
        return [self._record(conn, row) for row in rows]

    def unfinished_jobs(self) -> int:
        """Return how many jobs are queued or running."""
        (count,) = self.db.conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
        ).fetchone()
        return int(count)

    # -- deletion items --------------------------------------------------------------------------

    def add_deletion_items(
        self, conn: sqlite3.Connection, number: int, items: Sequence[Mapping[str, Any]]
    ) -> None:
        """Store the deletion plan's items (kind, project_id, target_id, parent_id, batch)."""
        conn.executemany(
            "INSERT INTO deletion_items (request_id, seq, kind, project_id, target_id, parent_id,"
            " batch, status) VALUES (?, ?, ?, ?, ?, ?, ?, 'pending')",
            [
                (
                    number,
                    seq,
                    item["kind"],
                    item["project_id"],
                    item["target_id"],
                    item.get("parent_id"),
                    item["batch"],
                )
                for seq, item in enumerate(items, start=1)
            ],
        )

    def clear_deletion_items(self, conn: sqlite3.Connection, number: int) -> None:
        """Drop an unapproved plan's items (a preview computed again replaces them)."""
        conn.execute("DELETE FROM deletion_items WHERE request_id = ?", (number,))

    def deletion_items(
        self, number: int, *, batch: int | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Return a request's deletion items in execution order (optionally one batch/status)."""
        sql = "SELECT * FROM deletion_items WHERE request_id = ?"
        args: list[Any] = [number]
        if batch is not None:
            sql += " AND batch = ?"
            args.append(batch)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        cursor = self.db.conn.execute(sql + " ORDER BY seq", args)
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor]

    def mark_items(
        self,
        conn: sqlite3.Connection,
        number: int,
        batch: int,
        *,
        status: str,
        http_status: int | None = None,
        operation: str | None = None,
        target_ids: Sequence[str] | None = None,
    ) -> None:
        """Set the status of a batch's items (or of some of its targets)."""
        sql = (
            "UPDATE deletion_items SET status = ?, http_status = COALESCE(?, http_status),"
            " operation = COALESCE(?, operation), at = ? WHERE request_id = ? AND batch = ?"
        )
        args: list[Any] = [status, http_status, operation, iso(self.clock.now()), number, batch]
        if target_ids is not None:
            sql += f" AND target_id IN ({','.join('?' * len(target_ids))})"
            args.extend(target_ids)
        conn.execute(sql, args)

    def mark_verified(
        self, conn: sqlite3.Connection, number: int, target_ids: Sequence[str], verdict: str
    ) -> None:
        """Record the verification verdict (gone | survived) of some targets."""
        for start in range(0, len(target_ids), 500):
            chunk = target_ids[start : start + 500]
            conn.execute(
                f"UPDATE deletion_items SET verified = ? WHERE request_id = ?"  # noqa: S608
                f" AND target_id IN ({','.join('?' * len(chunk))})",
                (verdict, number, *chunk),
            )

    # -- outbox ----------------------------------------------------------------------------------

    def enqueue(
        self,
        conn: sqlite3.Connection,
        *,
        kind: str,
        channel: str,
        payload: Mapping[str, Any],
        request: int | None,
        key: str | None = None,
    ) -> None:
        """Queue a Slack delivery inside the caller's transaction.

        With a `key`, an existing item is reused: its payload is replaced and it goes back to
        pending, keeping its result (so a progress message or an announcement is updated in
        place rather than posted again). A held item stays held, with the newest payload, until
        `resend`.
        """
        now = iso(self.clock.now())
        self._local.enqueued = True
        if key is not None:
            cursor = conn.execute(
                "UPDATE outbox SET payload = ?, attempts = 0, not_before = ?,"
                " status = CASE status WHEN 'held' THEN 'held' ELSE 'pending' END,"
                " revision = revision + 1 WHERE key = ?",
                (_json(payload), now, key),
            )
            if cursor.rowcount:
                return
        conn.execute(
            "INSERT INTO outbox (request_id, key, kind, channel, payload, status, not_before,"
            " created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (request, key, kind, channel, _json(payload), now, now),
        )

    def enqueue_once(
        self,
        conn: sqlite3.Connection,
        *,
        kind: str,
        channel: str,
        payload: Mapping[str, Any],
        request: int | None,
        key: str,
    ) -> bool:
        """Queue a delivery unless one with `key` exists already; return True when queued."""
        self._local.enqueued = True
        cursor = conn.execute(
            "INSERT OR IGNORE INTO outbox (request_id, key, kind, channel, payload, status,"
            " not_before, created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (request, key, kind, channel, _json(payload), *[iso(self.clock.now())] * 2),
        )
        return cursor.rowcount == 1

    def delivery_status(self, key: str) -> str | None:
        """Return the status of the delivery with `key` (pending | sent | failed), or None."""
        row = self.db.conn.execute("SELECT status FROM outbox WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def preview_file_status(self, number: int) -> str | None:
        """Return the delivery status of the request's latest preview file (None: no file)."""
        row = self.db.conn.execute(
            "SELECT status FROM outbox WHERE request_id = ? AND key LIKE ? ORDER BY id DESC"
            " LIMIT 1",
            (number, preview_file_key(number, "%")),
        ).fetchone()
        return None if row is None else str(row[0])

    def announce(self, conn: sqlite3.Connection, number: int, channel: str) -> None:
        """Queue the request's announcement: posted once, then updated in place from its state."""
        self.enqueue(
            conn,
            kind="announce",
            channel=channel,
            payload={"request": number},
            request=number,
            key=announcement_key(number),
        )

    def post(
        self,
        conn: sqlite3.Connection,
        number: int,
        channel: str,
        text: str,
        *,
        key: str | None = None,
        after: Sequence[str] = (),
    ) -> None:
        """Queue a message for the request's thread (once per `key` when one is given).

        With `after` (outbox keys of uploads), the message waits until Slack confirmed each of
        them, and is held with them: a message saying "attached" or "ready" is never posted
        without its files.
        """
        payload: dict[str, Any] = {"text": text}
        if after:
            payload["after"] = list(after)
        if key is None:
            self.enqueue(conn, kind="post", channel=channel, payload=payload, request=number)
        else:
            self.enqueue_once(
                conn, kind="post", channel=channel, payload=payload, request=number, key=key
            )

    def unsent_uploads(self, conn: sqlite3.Connection, number: int, *, excluding: str) -> list[str]:
        """Return the keys of the request's uploads Slack has not confirmed yet (except those
        keyed `<excluding>:...`)."""
        rows = conn.execute(
            "SELECT key FROM outbox WHERE request_id = ? AND kind = 'upload' AND key IS NOT NULL"
            " AND status != 'sent' AND key NOT LIKE ? ORDER BY id",
            (number, f"{excluding}:%"),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def pending_outbox(self, limit: int = 20, *, mirror: bool = False) -> list[OutboxItem]:
        """Return deliveries that are due, oldest first: the audit mirror's lines with
        `mirror`, everything else without (two lanes, so neither hides the other)."""
        rows = self.db.conn.execute(
            "SELECT id, request_id, key, kind, channel, payload, attempts, result, revision"
            " FROM outbox WHERE status = 'pending' AND (kind = 'mirror') = ? AND not_before <= ?"
            " ORDER BY id LIMIT ?",
            (mirror, iso(self.clock.now()), limit),
        ).fetchall()
        return [
            OutboxItem(
                id=r[0],
                request_number=r[1],
                key=r[2],
                kind=r[3],
                channel=r[4],
                payload=json.loads(r[5]),
                attempts=r[6],
                result=_loads(r[7]),
                revision=r[8],
            )
            for r in rows
        ]

    def outbox_done(
        self,
        item_id: int,
        result: Mapping[str, Any],
        *,
        payload: Mapping[str, Any],
        revision: int = 0,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Mark a delivery sent, unless it was queued again meanwhile (then it stays pending).

        `also` runs in the same transaction (the audit event of the delivery), so a crash
        leaves either both or neither.
        """
        with self.write() as conn:
            conn.execute("UPDATE outbox SET result = ? WHERE id = ?", (_json(result), item_id))
            conn.execute(
                "UPDATE outbox SET status = 'sent' WHERE id = ? AND payload = ? AND revision = ?",
                (item_id, _json(payload), revision),
            )
            if also is not None:
                also(conn)

    def outbox_progress(self, item_id: int, result: Mapping[str, Any]) -> None:
        """Store a partial result of a delivery (an upload's file id) before finishing it."""
        with self.write() as conn:
            conn.execute("UPDATE outbox SET result = ? WHERE id = ?", (_json(result), item_id))

    def outbox_sent(self, item_ids: Sequence[int]) -> None:
        """Mark deliveries sent together (the audit mirror lines of one Slack message)."""
        with self.write() as conn:
            conn.executemany(
                "UPDATE outbox SET status = 'sent' WHERE id = ?", [(i,) for i in item_ids]
            )

    def outbox_retry(self, item_ids: int | Sequence[int], delay: timedelta) -> None:
        """Push deliveries back by `delay` (they stay pending)."""
        ids = [item_ids] if isinstance(item_ids, int) else list(item_ids)
        with self.write() as conn:
            conn.executemany(
                "UPDATE outbox SET attempts = attempts + 1, not_before = ? WHERE id = ?",
                [(iso(self.clock.now() + delay), i) for i in ids],
            )

    def outbox_failed(
        self,
        item_id: int,
        error: str,
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Mark a delivery that can never be made nor resent (its file is gone) as failed.

        `also` runs in the same transaction (what the failure changes elsewhere).
        """
        with self.write() as conn:
            conn.execute(
                "UPDATE outbox SET status = 'failed', result = ? WHERE id = ?",
                (_json({"error": error}), item_id),
            )
            if also is not None:
                also(conn)

    def hold(self, conn: sqlite3.Connection, item_id: int, error: str) -> bool:
        """Hold a pending delivery Slack refused for good; return False if it was not pending.

        Its result (an announcement's ts) is kept for the resend; its files stay on disk.
        """
        cursor = conn.execute(
            "UPDATE outbox SET status = 'held', held_error = ? WHERE id = ? AND status = 'pending'",
            (error, item_id),
        )
        return cursor.rowcount == 1

    def has_held(self, conn: sqlite3.Connection, number: int | None, *, besides: int) -> bool:
        """Return True when the request (None: the audit mirror) has a held delivery other
        than item `besides`."""
        row = conn.execute(
            "SELECT 1 FROM outbox WHERE request_id IS ? AND status = 'held' AND id != ?"
            " AND (? IS NOT NULL OR kind = 'mirror') LIMIT 1",
            (number, besides, number),
        ).fetchone()
        return row is not None

    def held_deliveries(
        self, number: int, conn: sqlite3.Connection | None = None
    ) -> list[HeldDelivery]:
        """Return the request's held deliveries, oldest first."""
        rows = (
            (conn or self.db.conn)
            .execute(
                "SELECT key, kind, held_error, payload FROM outbox WHERE request_id = ?"
                " AND status = 'held' ORDER BY id",
                (number,),
            )
            .fetchall()
        )
        return [
            HeldDelivery(
                key=key,
                kind=kind,
                error=str(error or "unknown"),
                name=what_of(kind, json.loads(payload)),
            )
            for key, kind, error, payload in rows
        ]

    def resend(self, conn: sqlite3.Connection, number: int | None) -> int:
        """Put the request's (None: the audit mirror's) held deliveries back in the queue, in
        their order; return how many.

        A held upload starts again from its bytes: Slack refused to share the file it had.
        """
        cursor = conn.execute(
            "UPDATE outbox SET status = 'pending', held_error = NULL, attempts = 0,"
            " not_before = ?, result = CASE WHEN kind = 'upload' THEN NULL ELSE result END"
            " WHERE request_id IS ? AND status = 'held' AND (? IS NOT NULL OR kind = 'mirror')",
            (iso(self.clock.now()), number, number),
        )
        if cursor.rowcount:
            self._local.enqueued = True
        return cursor.rowcount

    def is_settled(self, number: int) -> bool:
        """Return True when a request has no job running or queued and nothing left to post
        (a held delivery is not settled: its files wait for `resend`)."""
        conn = self.db.conn
        job = conn.execute(
            "SELECT 1 FROM jobs WHERE request_id = ? AND status IN ('queued', 'running') LIMIT 1",
            (number,),
        ).fetchone()
        delivery = conn.execute(
            "SELECT 1 FROM outbox WHERE request_id = ? AND status IN ('pending', 'held') LIMIT 1",
            (number,),
        ).fetchone()
        return job is None and delivery is None

    def outbox_pending_count(self) -> int:
        """Return how many deliveries are still pending."""
        (count,) = self.db.conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE status = 'pending'"
        ).fetchone()
        return int(count)
