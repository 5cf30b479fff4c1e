"""A deletion's frozen plan: its items (`bot.lifecycle.DeletionItem`) and how far each got.

The two UPDATEs are written by hand: they set many items at once (IN lists, COALESCE).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from bot.clock import iso
from bot.lifecycle import DeletionItem, ItemStatus
from bot.store.base import StoreBase


class Plan(StoreBase):
    """The deletion plan of a request."""

    def add_deletion_items(
        self, conn: sqlite3.Connection, number: int, items: Sequence[DeletionItem]
    ) -> None:
        """Store a deletion plan's items, as planned: pending, nothing sent yet."""
        self.table("deletion_items").insert_all(
            {
                "request_id": number,
                "seq": i.seq,
                "kind": i.kind,
                "project_id": i.project_id,
                "target_id": i.target_id,
                "parent_id": i.parent_id,
                "batch": i.batch,
                "status": str(ItemStatus.PENDING),
                "resource": i.resource,
            }
            for i in items
        )

    def clear_deletion_items(self, conn: sqlite3.Connection, number: int) -> None:
        """Drop an unapproved plan's items (a preview computed again replaces them)."""
        self.table("deletion_items").delete_where("request_id = ?", [number])

    def deletion_items(
        self, number: int, *, batch: int | None = None, status: ItemStatus | None = None
    ) -> list[DeletionItem]:
        """Return a request's deletion items in execution order (optionally one batch/status)."""
        where = "request_id = ?"
        args: list[Any] = [number]
        if batch is not None:
            where += " AND batch = ?"
            args.append(batch)
        if status is not None:
            where += " AND status = ?"
            args.append(status)
        rows = self.table("deletion_items").rows_where(where, args, order_by="seq")
        return [DeletionItem(**{k: v for k, v in row.items() if k != "request_id"}) for row in rows]

    def mark_items(
        self,
        conn: sqlite3.Connection,
        number: int,
        batch: int,
        *,
        status: ItemStatus,
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
