"""Migrations over real SQLite files: a shipped migration never changes, and a database made
by any earlier version opens, migrates and keeps every request, job, plan and delivery.

SHIPPED holds a fingerprint of the schema each version shipped with (SHA-256 of its
`sqlite_master` statements, white space folded). A database of version N is built by the
migrations 1..N, which the first test holds to that fingerprint, filled the way that
version's code wrote its rows, then opened by today's store.
"""

from __future__ import annotations

import hashlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import audit
from bot.clock import FakeClock
from bot.db import MIGRATIONS, Database
from bot.lifecycle import ItemStatus, JobKind, JobStatus, RequestKind, Role, Status
from bot.store import Store

# Recorded once per shipped version; a new migration adds a line, no line ever changes.
SHIPPED = {
    1: "3c25068beec7ee19ee15d84922ca6e40652fc847bcb11ff8887404adc27fa344",
    2: "0b4092f2a18d473c883b2530968575d4e622e66d054961b2e639f7339350e005",
    3: "8da2d66863184a881eb5baea844c3dba1fd75c8746bcc3294acff9b7332a6208",
    4: "7c4bffda88e2871ad115c55c68d65419696340b2c698706c14ac87d040b75e42",
    5: "73af9768439a42d1726eb56dbf40f7fcfa58c1c3c8f4ad9bce71a6b6a9ecb8fc",
}
VERSIONS = list(range(1, len(MIGRATIONS) + 1))
T0 = "2026-11-27T09:00:00.000000Z"


def fingerprint(conn: sqlite3.Connection) -> str:
    rows = conn.execute(
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
        " ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'index' THEN 1 ELSE 2 END, name"
    )
    text = "\n".join(" ".join(sql.split()) for (sql,) in rows)
    return hashlib.sha256(text.encode()).hexdigest()


def migrated(path: Path, version: int) -> sqlite3.Connection:
    """Return a connection to a new file holding the schema of `version`."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for step in MIGRATIONS[:version]:
        step(conn)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.execute("COMMIT")
    return conn


def old_database(path: Path, version: int) -> None:
    """Write a database as version `version` of the bot left it: schema and rows."""
    conn = migrated(path, version)
    conn.execute("BEGIN")
    request = (
        "INSERT INTO requests (kind, command, text, requester, channel, status, created_at,"
        " updated_at, expires_at, preview) VALUES (?, ?, ?, 'U0REQ', 'C0DSR', ?, ?, ?, ?, ?)"
    )
    conn.execute(  # R-1001: a deletion waiting for its second approval
        request,
        (
            "delete",
            '{"verb":"delete"}',
            "delete images",
            "pending",
            T0,
            T0,
            "2026-11-28T09:00:00.000000Z",
            '{"summary":"2 images"}',
        ),
    )
    conn.execute("INSERT INTO approvals VALUES (1001, 'U0APP', ?)", (T0,))
    conn.executemany(
        "INSERT INTO deletion_items (request_id, seq, kind, project_id, target_id, parent_id,"
        " batch, status) VALUES (1001, ?, 'image', 'p1', ?, NULL, 1, 'pending')",
        [(1, "img-1"), (2, "img-2")],
    )
    conn.execute(
        request, ("export", '{"verb":"export"}', "export projects", "failed", T0, T0, None, None)
    )
    conn.execute(  # R-1002's export job failed half-way, its checkpoint kept for `retry`
        "INSERT INTO jobs (request_id, kind, status, attempts, checkpoint, created_at,"
        " updated_at) VALUES (1002, 'export', 'failed', 1, '{\"section\":\"tags\"}', ?, ?)",
        (T0, T0),
    )
    conn.execute(
        "INSERT INTO outbox (request_id, key, kind, channel, payload, status, not_before,"
        " created_at) VALUES (1001, 'announce:1001', 'announce', 'C0DSR', '{\"request\":1001}',"
        " 'pending', ?, ?)",
        (T0, T0),
    )
    audit.append(
        conn,
        at=datetime(2026, 11, 27, 9, tzinfo=UTC),
        actor="U0REQ",
        action="command.received",
        request_id="R-1001",
        targets=(),
        outcome="ok",
        details={},
    )
    conn.execute("COMMIT")
    conn.close()


def test_migrations_each_version_builds_the_schema_it_shipped_with(tmp_path: Path) -> None:
    # A shipped migration is never edited: add a new one, and record its fingerprint here.
    assert list(SHIPPED) == VERSIONS
    for version in VERSIONS:
        conn = migrated(tmp_path / f"v{version}.db", version)
        assert fingerprint(conn) == SHIPPED[version], f"migrations 1..{version} were edited"
        conn.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_migrations_an_older_database_opens_with_everything_it_held(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "cvdsr.db"
    old_database(path, version)
    clock = FakeClock(datetime(2026, 11, 27, 10, tzinfo=UTC))
    db = Database(path)
    try:
        store = Store(db, clock)
        assert fingerprint(db.conn) == SHIPPED[len(MIGRATIONS)]
        assert int(db.conn.execute("PRAGMA user_version").fetchone()[0]) == len(MIGRATIONS)

        pending = store.get("R-1001")
        assert (pending.kind, pending.status, pending.approvals) == (
            RequestKind.DELETE,
            Status.PENDING,
            ("U0APP",),
        )
        assert pending.preview == {"summary": "2 images"}
        assert pending.deadline is None  # stored before the statutory clock: unknown
        # Items stored before plans named their resource are on the request's own.
        assert [(i.seq, i.target_id, i.status, i.resource) for i in store.deletion_items(1001)] == [
            (1, "img-1", ItemStatus.PENDING, None),
            (2, "img-2", ItemStatus.PENDING, None),
        ]
        (announcement,) = store.pending_outbox()
        assert (announcement.key, announcement.revision) == ("announce:1001", 0)
        assert store.verify_audit().ok

        # The old rows take part in today's lifecycle: approve, retry, and a new request.
        with store.write() as conn:
            assert store.transition(conn, 1001, to=Status.APPROVED, by=Role.APPROVER, actor="U2")
            failed = store.job_for(1002, JobKind.EXPORT)
            assert failed is not None and failed.status == JobStatus.FAILED
            assert store.transition(
                conn, 1002, to=Status.QUEUED, by=Role.REQUESTER, actor="U0REQ", error=None
            )
            store.requeue_job(conn, failed.id)
            number = store.create_request(
                conn,
                kind=RequestKind.EXPORT,
                command={"verb": "export"},
                text="export projects",
                requester="U0REQ",
                channel="C0DSR",
                status=Status.QUEUED,
            )
        assert number == 1003
        job = store.claim_job("worker-a", timedelta(minutes=1))
        assert job is not None
        assert (job.id, job.checkpoint) == (failed.id, {"section": "tags", "round": 2})
        assert [r.id for r in store.requests_of("U0REQ")] == ["R-1003", "R-1002", "R-1001"]
    finally:
        db.close()
