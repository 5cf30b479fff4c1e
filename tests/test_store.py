"""The SQLite store on a real file: compare-and-set, leases, the outbox's coalescing."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot import audit, db
from bot.clock import FakeClock, iso, parse_iso
from bot.db import Database
from bot.lifecycle import DeletionItem, ItemStatus, JobKind, RequestKind, Role, Status
from bot.store import Store
from tests.harness import stored_deletion, walk


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Database(tmp_path / "bot.db")
    try:
        yield Store(db, FakeClock(), secrets=("s3cret-token",))
    finally:
        db.close()


def new_request(store: Store, *path: Status) -> int:
    """Store a deletion (previewing) and move it along `path` (default: to pending)."""
    with store.write() as conn:
        number = stored_deletion(store, conn)
        walk(store, conn, number, *(path or (Status.PENDING,)))
    return number


def test_store_request_ids_start_above_a_thousand(store: Store) -> None:
    assert store.get(new_request(store)).id == "R-1001"
    assert store.get("r-1001").number == 1001


def test_store_transition_is_a_compare_and_set(store: Store) -> None:
    number = new_request(store)
    with store.write() as conn:
        first = store.transition(conn, number, to=Status.APPROVED, by=Role.APPROVER, actor="U1")
        second = store.transition(conn, number, to=Status.REJECTED, by=Role.APPROVER, actor="U2")
    assert (first, second) == (True, False)
    assert store.get(number).status == Status.APPROVED


def test_store_each_approver_counts_once(store: Store) -> None:
    number = new_request(store)
    with store.write() as conn:
        counts = [store.add_approval(conn, number, who) for who in ("U1", "U1", "U2")]
    assert counts == [1, 1, 2]
    assert store.get(number).approvals == ("U1", "U2")


def test_store_claim_takes_queued_jobs_and_expired_leases_only(store: Store) -> None:
    number = new_request(store, Status.PENDING, Status.APPROVED)
    with store.write() as conn:
        store.enqueue_job(conn, number, JobKind.DELETE)
    job = store.claim_job("worker-a", timedelta(minutes=2))
    assert job is not None and job.attempts == 1
    assert store.claim_job("worker-b", timedelta(minutes=2)) is None
    assert isinstance(store.clock, FakeClock)
    store.clock.advance(minutes=3)
    again = store.claim_job("worker-b", timedelta(minutes=2))
    assert again is not None and (again.id, again.attempts) == (job.id, 2)
    assert store.renew_lease(job.id, "worker-a", timedelta(minutes=2)) is False


def test_store_claim_with_nothing_to_claim_takes_no_write_lock(store: Store) -> None:
    # Idle workers poll every 50 ms; a write transaction each time queued them with the
    # acknowledgements' writes.
    number = new_request(store, Status.PENDING, Status.APPROVED)
    with store.write() as conn:
        store.enqueue_job(conn, number, JobKind.DELETE)
    assert store.claim_job("worker-a", timedelta(minutes=2)) is not None
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        assert store.claim_job("worker-b", timedelta(minutes=2)) is None
    finally:
        store.db.conn.set_trace_callback(None)
    assert statements and not [s for s in statements if not s.startswith("SELECT")]


def test_store_outbox_item_requeued_while_sending_stays_pending(store: Store) -> None:
    number = new_request(store)
    with store.write() as conn:
        store.enqueue(
            conn,
            kind="announce",
            channel="C0DSR",
            payload={"request": number},
            request=number,
            key=f"announce:{number}",
        )
    (item,) = store.pending_outbox()
    with store.write() as conn:  # the state changed while the old version was being posted
        store.enqueue(
            conn,
            kind="announce",
            channel="C0DSR",
            payload={"request": number},
            request=number,
            key=f"announce:{number}",
        )
    store.outbox_done(item.id, {"ts": "1.000100"}, payload=item.payload, revision=item.revision)
    (again,) = store.pending_outbox()
    assert again.id == item.id and again.result == {"ts": "1.000100"}
    store.outbox_done(again.id, {"ts": "1.000100"}, payload=again.payload, revision=again.revision)
    assert store.pending_outbox() == []


def test_store_audit_event_is_written_with_the_change_and_redacted(store: Store) -> None:
    number = new_request(store)
    with pytest.raises(RuntimeError), store.write() as conn:
        store.transition(conn, number, to=Status.APPROVED, by=Role.APPROVER, actor="U1")
        store.audit(
            conn, "U1", "request.approved", request=number, details={"note": "token s3cret-token"}
        )
        raise RuntimeError("crash before commit")
    assert store.get(number).status == "pending"
    assert list(audit.events(store.db.conn)) == []
    store.record("U1", "x", request=number, details={"note": "token s3cret-token"})
    (event,) = audit.events(store.db.conn)
    assert "s3cret-token" not in str(event.details)


def test_store_sqlite_utils_writes_join_the_callers_transaction(store: Store) -> None:
    # Inserts and deletes through sqlite-utils use savepoints inside `write()`: a crash before
    # the commit leaves nothing of them.
    number = new_request(store)
    plan = [
        DeletionItem(seq=1, kind="image", project_id="p1", target_id="i1", parent_id=None, batch=1)
    ]
    with pytest.raises(RuntimeError), store.write() as conn:
        store.add_approval(conn, number, "U1")
        store.add_deletion_items(conn, number, plan)
        store.create_request(
            conn,
            kind=RequestKind.EXPORT,
            command={},
            text="export",
            requester="U0OTHER",
            channel="C0DSR",
            status=Status.QUEUED,
        )
        raise RuntimeError("crash before commit")
    assert store.get(number).approvals == ()
    assert store.deletion_items(number) == []
    assert not store.has_requests("U0OTHER")


def test_store_plan_comes_back_typed_and_in_order(store: Store) -> None:
    number = new_request(store)
    plan = [
        DeletionItem(seq=seq, kind=kind, project_id="p1", target_id=t, parent_id=None, batch=b)
        for seq, kind, t, b in [(1, "image", "i1", 1), (2, "image", "i2", 1), (3, "tag", "t1", 2)]
    ]
    with store.write() as conn:
        store.add_deletion_items(conn, number, list(reversed(plan)))
        store.mark_items(
            conn, number, 1, status=ItemStatus.DELETED, http_status=200, target_ids=["i2"]
        )
        store.mark_verified(conn, number, ["i2"], "gone")
    items = store.deletion_items(number)
    assert [(i.seq, i.status, i.http_status, i.verified) for i in items] == [
        (1, ItemStatus.PENDING, None, None),
        (2, ItemStatus.DELETED, 200, "gone"),
        (3, ItemStatus.PENDING, None, None),
    ]
    assert items[1].at is not None and items[1].operation is None
    assert store.deletion_items(number, batch=2) == [plan[2]]
    assert store.deletion_items(number, status=ItemStatus.DELETED)[0].target_id == "i2"


def test_db_commits_leave_the_wal_checkpoint_to_the_checkpointer(tmp_path: Path) -> None:
    # SQLite's own checkpoint runs inside the COMMIT that crosses 1,000 pages of WAL, while
    # every other writer waits: here no commit copies the WAL back, the checkpointer does.
    path = tmp_path / "bot.db"
    database = Database(path)

    def in_the_database_file() -> int | None:
        """Rows of `t` in the database file itself, the WAL ignored (None: no table there)."""
        reader = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(reader.execute("SELECT COUNT(*) FROM t").fetchone()[0])
        except sqlite3.DatabaseError:
            # No table yet, or a torn read: immutable=1 takes no lock, so a read while the
            # checkpointer writes the file can see half a page ("malformed"); look again.
            return None
        finally:
            reader.close()

    try:
        with database.write() as conn:
            conn.execute("CREATE TABLE t (b BLOB)")
        for _ in range(db.CHECKPOINT_EVERY - 2):  # each 6 pages: far over 1,000 pages in all
            with database.write() as conn:
                conn.execute("INSERT INTO t VALUES (?)", (b"x" * 24_000,))
        assert in_the_database_file() is None
        with database.write() as conn:
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 24_000,))
        deadline = time.monotonic() + 10
        while in_the_database_file() != db.CHECKPOINT_EVERY - 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert in_the_database_file() == db.CHECKPOINT_EVERY - 1
    finally:
        database.close()


def test_store_reads_of_the_ack_path_never_read_the_schema(store: Store) -> None:
    # `status` and every refusal read requests this way, inside Slack's 3 seconds: sqlite-utils
    # would add a query of sqlite_master or a PRAGMA table_info to each read, and a list read
    # request by request would cost three queries per line.
    numbers = [new_request(store) for _ in range(5)]
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    try:
        record = store.get(numbers[0])
        listed = store.requests_of("U0REQ", limit=20)
        counted = store.count_requests_of("U0REQ")
        store.status_of(numbers[0])
        store.held_deliveries(numbers[0])
        held = store.held_requests(numbers)
    finally:
        store.db.conn.set_trace_callback(None)
    assert (record.id, counted, held) == ("R-1001", 5, set())
    assert [r.number for r in listed] == numbers[::-1]
    assert [s for s in statements if "sqlite_master" in s or "PRAGMA" in s.upper()] == []
    # get: the request, its approvals, its clock; the list: the same three for all five.
    assert len(statements) == 3 + 3 + 1 + 1 + 1 + 1, statements


def test_store_times_read_back_exactly_as_written(store: Store) -> None:
    moment = datetime(2026, 12, 2, 23, 10, 11, 123456, tzinfo=UTC)
    assert iso(moment) == "2026-12-02T23:10:11.123456Z"
    assert parse_iso(iso(moment)) == moment
    assert parse_iso(iso(moment)).tzinfo is UTC
    number = new_request(store)
    record = store.get(number)
    assert record.created_at == store.clock.now()
    assert record.created_at.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-02T23:10:11Z",  # no fraction
        "2026-12-02T23:10:11.123Z",  # milliseconds: not the stored form
        "2026-12-02 23:10:11.123456Z",  # a space, not T
        "2026-12-02T23:10:11.123456+00:00",  # an offset, not Z
        "2026-12-02T23:10:11.123456",  # naive
        "2026-12-02T23:10:11.12345xZ",
        "",
    ],
)
def test_store_times_in_any_other_form_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_iso(text)
