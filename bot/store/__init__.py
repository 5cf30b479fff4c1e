"""The bot's state in SQLite, one module per concept, all under one transaction.

    base.py      the transaction (`write`), the audit event and the Slack delivery every change
                 records with it, audit reads
    requests.py  requests, approvals, and the one status change (`transition`), guarded by the
                 lifecycle's table (bot.lifecycle)
    jobs.py      the job queue: claim under a lease, checkpoint, finish, release
    plan.py      a deletion's frozen plan and how far each item got
    outbox.py    deliveries to Slack: due, sent, retried, held, resent
    deadlines.py the statutory clock: each request's deadline, extensions, the digest's days

Every state change is a conditional update (`... WHERE status = ?`) inside one write
transaction, together with the audit event that records it, so a double click, two approvers
at once or a click racing expiry lead to exactly one outcome, and a crash loses nothing: what
was committed is the truth, what was not never happened. Connections and migrations:
`bot.db`. Inserts and simple reads go through sqlite-utils (`StoreBase.tables`); SQL is
written by hand where a compare-and-set needs it.
"""

from __future__ import annotations

from bot.store.deadlines import Deadlines
from bot.store.jobs import Jobs
from bot.store.outbox import (
    HeldDelivery,
    Outbox,
    OutboxItem,
    announcement_key,
    preview_file_key,
    what_of,
)
from bot.store.plan import Plan
from bot.store.requests import Requests

__all__ = [
    "HeldDelivery",
    "OutboxItem",
    "Store",
    "announcement_key",
    "preview_file_key",
    "what_of",
]


class Store(Deadlines, Requests, Jobs, Plan, Outbox):
    """All reads and writes of the bot's state; audit events go in the same transaction."""
