"""The store's core: one write transaction per change, and what any change records with it
(its audit event, the Slack deliveries it queues). The concept modules build on it.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from sqlite_utils.db import Table

from bot import audit as audit_log
from bot.clock import Clock, iso, parse_iso
from bot.db import Database
from bot.ids import format_request_id
from bot.lifecycle import TransitionRefused
from bot.logs import request_context

log = logging.getLogger(__name__)


def dumps(value: Any) -> str:
    """Return `value` as the compact JSON the store keeps (and compares, in the outbox)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def loads(text: str | None) -> Any:
    """Return the value of a stored JSON column (None stays None)."""
    return None if text is None else json.loads(text)


def time_of(text: str | None) -> datetime | None:
    """Return a stored ISO time (None stays None)."""
    return None if text is None else parse_iso(text)


def _log(event: audit_log.Event) -> None:
    with request_context(event.request_id):
        log.info("audit #%s %s by %s: %s", event.seq, event.action, event.actor, event.outcome)


class StoreBase:
    """The database, the clock, the transaction, the audit log and the outbox's queue."""

    def __init__(self, db: Database, clock: Clock, *, secrets: Sequence[str] = ()) -> None:
        self.db = db
        self.clock = clock
        self.secrets = tuple(s for s in secrets if s)
        self.audit_channel: str | None = None
        # Called after a transaction that queued a Slack delivery has committed.
        self.on_enqueue: Callable[[], None] | None = None
        self._local = threading.local()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Yield a connection inside one write transaction.

        A status change the lifecycle refuses (TransitionRefused) rolls the transaction back,
        then is recorded as an audit event of its own before the error goes on. The audit
        events it recorded are logged once it committed, outside the write lock: every
        acknowledgement's write queues on that lock, so it is held for the database only.
        """
        committed: list[audit_log.Event] = []
        self._local.events = committed
        try:
            with self.db.write() as conn:
                yield conn
        except TransitionRefused as refused:
            self.record(
                refused.actor,
                "request.transition_refused",
                request=refused.request_id,
                outcome="refused",
                details={
                    "from": None if refused.current is None else str(refused.current),
                    "to": str(refused.to),
                    "by": str(refused.by),
                },
            )
            raise
        finally:
            self._local.events = None
        for event in committed:
            _log(event)
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
        event = self._append(
            conn,
            actor,
            action,
            request=request,
            targets=targets,
            outcome=outcome,
            details=details,
        )
        events: list[audit_log.Event] | None = getattr(self._local, "events", None)
        if events is not None:
            events.append(event)  # logged by write() once committed
        else:
            _log(event)
        if self.audit_channel:
            self._local.enqueued = True
        return event

    def _append(
        self,
        conn: sqlite3.Connection,
        actor: str,
        action: str,
        *,
        request: int | str | None,
        targets: Sequence[str],
        outcome: str,
        details: Mapping[str, Any] | None,
    ) -> audit_log.Event:
        """Append an audit event and queue its mirror line, touching no thread-local state
        (record's group commit runs it on whichever thread commits the group)."""
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
        if self.audit_channel:
            self._queue_delivery(
                conn,
                kind="mirror",
                channel=self.audit_channel,
                payload={"text": audit_log.mirror_line(event), "seq": event.seq},
                request=None,
                key=None,
            )
        return event

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
        """Append one audit event that records no other change; return it once committed.

        Committed together with the other events recorded at the same moment (one transaction:
        Database.write_grouped), so a burst of refusals queues once on the write lock, not once
        per event. Raises DatabaseBusy and DatabaseFull as `write()` does; nothing is stored then.
        """
        event = self.db.write_grouped(
            lambda conn: self._append(
                conn,
                actor,
                action,
                request=request,
                targets=targets,
                outcome=outcome,
                details=details,
            )
        )
        _log(event)
        if self.audit_channel and self.on_enqueue is not None:
            self.on_enqueue()
        return event

    def audit_events(
        self, *, request_id: str | None = None, since: date | None = None
    ) -> Iterator[audit_log.Event]:
        """Yield audit events in seq order (one request's, and/or from the UTC day `since`)."""
        return audit_log.events(self.db.conn, request_id=request_id, since=since)

    def audit_head(self) -> tuple[int, str]:
        """Return (seq, hash) of the newest audit event (0 and the genesis hash when empty)."""
        return audit_log.head(self.db.conn)

    def verify_audit(
        self, *, expected_head: tuple[int, str] | None = None
    ) -> audit_log.Verification:
        """Return the result of recomputing the audit log's hash chain (bot.audit.verify)."""
        return audit_log.verify(self.db.conn, expected_head=expected_head)

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
        self._local.enqueued = True
        self._queue_delivery(
            conn, kind=kind, channel=channel, payload=payload, request=request, key=key
        )

    def _queue_delivery(
        self,
        conn: sqlite3.Connection,
        *,
        kind: str,
        channel: str,
        payload: Mapping[str, Any],
        request: int | None,
        key: str | None,
    ) -> None:
        now = iso(self.clock.now())
        if key is not None:
            cursor = conn.execute(
                "UPDATE outbox SET payload = ?, attempts = 0, not_before = ?,"
                " status = CASE status WHEN 'held' THEN 'held' ELSE 'pending' END,"
                " revision = revision + 1 WHERE key = ?",
                (dumps(payload), now, key),
            )
            if cursor.rowcount:
                return
        conn.execute(
            "INSERT INTO outbox (request_id, key, kind, channel, payload, status, not_before,"
            " created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (request, key, kind, channel, dumps(payload), now, now),
        )

    def table(self, name: str) -> Table:
        """Return a table on this thread's connection, through sqlite-utils (inserts, deletes
        and simple reads; inside `write()` they join its transaction)."""
        return _Migrated(self.db.tables, name)


class _Migrated(Table):
    """A table of the migrated schema, which always exists.

    sqlite-utils asks sqlite_master whether a table is a view (`Database.table`) and whether
    it exists (`rows_where`) on every call: two extra queries on each read of a request, most
    of a status command's SQLite time.
    """

    def exists(self) -> bool:
        return True
