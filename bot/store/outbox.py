"""The Slack outbox: deliveries queued with the change they report, sent (and retried, held,
resent) by `handlers.outbox`.

Reads go through sqlite-utils; writes are by hand: each is a compare-and-set on the item's
status, payload or revision (a delivery re-queued while being sent stays pending), or an
INSERT OR IGNORE whose row count says whether it was queued.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.clock import iso
from bot.store.base import StoreBase, dumps, loads


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


class Outbox(StoreBase):
    """Deliveries to Slack: queued, due, sent, retried, held and resent."""

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
            (request, key, kind, channel, dumps(payload), *[iso(self.clock.now())] * 2),
        )
        return cursor.rowcount == 1

    def delivery_status(self, key: str) -> str | None:
        """Return the status of the delivery with `key` (pending | sent | failed), or None."""
        rows = self.table("outbox").rows_where("key = ?", [key], select="status")
        return next((str(row["status"]) for row in rows), None)

    def shown_preview(self, request_id: str) -> str | None:
        """Return the fingerprint of the preview posted with the request's Approve button since
        its plan was last frozen (the `approval.posted` audit event after the last
        `request.reapproval`), or None when none was posted for this plan."""
        shown = None
        for event in self.audit_events(request_id=request_id):
            if event.action == "request.reapproval":
                shown = None  # a new plan: what was shown before is not its preview
            elif event.action == "approval.posted":
                shown = event.details.get("preview")
        return shown if isinstance(shown, str) else None

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
        rows = self.table("outbox").rows_where(
            "request_id = ? AND kind = 'upload' AND key IS NOT NULL AND status != 'sent'"
            " AND key NOT LIKE ?",
            [number, f"{excluding}:%"],
            select="key",
            order_by="id",
        )
        return [str(row["key"]) for row in rows]

    def pending_outbox(self, limit: int = 20, *, mirror: bool = False) -> list[OutboxItem]:
        """Return deliveries that are due, oldest first: the audit mirror's lines with
        `mirror`, everything else without (two lanes, so neither hides the other)."""
        rows = self.table("outbox").rows_where(
            "status = 'pending' AND (kind = 'mirror') = ? AND not_before <= ?",
            [mirror, iso(self.clock.now())],
            select="id, request_id, key, kind, channel, payload, attempts, result, revision",
            order_by="id",
            limit=limit,
        )
        return [
            OutboxItem(
                id=r["id"],
                request_number=r["request_id"],
                key=r["key"],
                kind=r["kind"],
                channel=r["channel"],
                payload=json.loads(r["payload"]),
                attempts=r["attempts"],
                result=loads(r["result"]),
                revision=r["revision"],
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
            conn.execute("UPDATE outbox SET result = ? WHERE id = ?", (dumps(result), item_id))
            conn.execute(
                "UPDATE outbox SET status = 'sent' WHERE id = ? AND payload = ? AND revision = ?",
                (item_id, dumps(payload), revision),
            )
            if also is not None:
                also(conn)

    def outbox_progress(self, item_id: int, result: Mapping[str, Any]) -> None:
        """Store a partial result of a delivery (an upload's file id) before finishing it."""
        with self.write() as conn:
            conn.execute("UPDATE outbox SET result = ? WHERE id = ?", (dumps(result), item_id))

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
                (dumps({"error": error}), item_id),
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
        held = self.table("outbox").count_where(
            "request_id IS ? AND status = 'held' AND id != ?"
            " AND (? IS NOT NULL OR kind = 'mirror')",
            [number, besides, number],
        )
        return held > 0

    def held_requests(self, numbers: Sequence[int]) -> set[int]:
        """Return which of these requests have a held delivery (one query for a whole list)."""
        marks = ",".join("?" * len(numbers))
        rows = self.table("outbox").rows_where(
            f"status = 'held' AND request_id IN ({marks})", list(numbers), select="request_id"
        )
        return {int(r["request_id"]) for r in rows}

    def held_deliveries(
        self, number: int, conn: sqlite3.Connection | None = None
    ) -> list[HeldDelivery]:
        """Return the request's held deliveries, oldest first."""
        rows = self.table("outbox").rows_where(
            "request_id = ? AND status = 'held'",
            [number],
            select="key, kind, held_error, payload",
            order_by="id",
        )
        return [
            HeldDelivery(
                key=r["key"],
                kind=r["kind"],
                error=str(r["held_error"] or "unknown"),
                name=what_of(r["kind"], json.loads(r["payload"])),
            )
            for r in rows
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
        jobs = self.table("jobs").count_where(
            "request_id = ? AND status IN ('queued', 'running')", [number]
        )
        deliveries = self.table("outbox").count_where(
            "request_id = ? AND status IN ('pending', 'held')", [number]
        )
        return jobs == 0 and deliveries == 0

    def outbox_pending_count(self) -> int:
        """Return how many deliveries are still pending."""
        return self.table("outbox").count_where("status = 'pending'")
