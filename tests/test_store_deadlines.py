"""The statutory clock in SQLite: deadlines with their requests, completion, the dashboard's
queries, extensions as compare-and-set, and the digest's day recorded once."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bot.clock import FakeClock
from bot.db import Database
from bot.deadline import deadline_of
from bot.lifecycle import Role, Status
from bot.store import Store
from tests.harness import stored_deletion, walk

D = date.fromisoformat
TODAY = D("2026-12-02")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Database(tmp_path / "bot.db")
    try:
        yield Store(db, FakeClock(datetime(2026, 12, 2, 9, tzinfo=UTC)))
    finally:
        db.close()


def new_request(store: Store, received: str | None, *path: Status, requester: str = "U0REQ") -> int:
    """Store a deletion received on `received` (None: no clock, as before version 4)."""
    with store.write() as conn:
        number = stored_deletion(store, conn, requester)
        if received is not None:
            store.start_clock(conn, number, deadline_of(D(received)))
        walk(store, conn, number, *path)
    return number


def test_store_deadline_is_read_with_its_request_and_completed_when_done(store: Store) -> None:
    number = new_request(store, "2026-11-04", Status.PENDING, Status.APPROVED, Status.RUNNING)
    assert store.get(number).deadline == deadline_of(D("2026-11-04"))
    with store.write() as conn:
        store.transition(conn, number, to=Status.DONE, by=Role.WORKER, actor="bot")
    deadline = store.get(number).deadline
    assert deadline is not None
    assert (deadline.completed, deadline.met) == (TODAY, True)


def test_store_a_failed_request_is_not_completed_and_its_clock_runs(store: Store) -> None:
    number = new_request(store, "2026-10-30", Status.FAILED)
    assert store.get(number).deadline.completed is None  # type: ignore[union-attr]
    assert [t.request_id for t in store.due_soon(TODAY)] == [f"R-{number}"]
    assert store.due_soon(TODAY)[0].waits_on == "failed"


def test_store_requests_before_the_clock_have_none(store: Store) -> None:
    number = new_request(store, None, Status.PENDING)
    assert store.get(number).deadline is None
    assert [t.deadline for t in store.tracked()] == [None]
    assert store.due_soon(TODAY) == []
    assert store.report_entries(None, None) == []


def test_store_tracked_answers_the_dashboards_questions(store: Store) -> None:
    pending = new_request(store, "2026-11-04", Status.PENDING)  # due 2026-12-04
    later = new_request(store, "2026-11-30", Status.PENDING, requester="U0OTHER")  # 2026-12-30
    running = new_request(store, "2026-11-05", Status.PENDING, Status.APPROVED, Status.RUNNING)
    cancelled = new_request(store, "2026-11-01", Status.CANCELLED)
    ids = {n: f"R-{n}" for n in (pending, later, running, cancelled)}

    # open requests of a person, oldest due first, with what each waits on
    mine = store.tracked(requester="U0REQ")
    assert [(t.request_id, t.waits_on) for t in mine] == [
        (ids[pending], "approval"),
        (ids[running], "running"),
    ]
    assert mine[0].channel == "C0DSR" and mine[0].message_ts is None  # not announced yet
    # everything waiting for an approval
    waiting = store.tracked(statuses=(Status.PENDING,))
    assert [t.request_id for t in waiting] == [ids[pending], ids[later]]
    # due within 7 days or overdue
    assert [t.request_id for t in store.due_soon(TODAY)] == [ids[pending], ids[running]]
    # a held delivery is what it waits on
    with store.write() as conn:
        store.post(conn, running, "C0DSR", "hello")
    (item,) = [i for i in store.pending_outbox() if i.request_number == running]
    with store.write() as conn:
        store.hold(conn, item.id, "not_in_channel")
    assert store.due_soon(TODAY)[1].waits_on == "delivery held"


def test_store_extension_is_a_compare_and_set(store: Store) -> None:
    number = new_request(store, "2026-11-04", Status.PENDING)
    was = store.get(number).deadline
    assert was is not None
    now = deadline_of(D("2026-11-04"), 2)
    with store.write() as conn:
        first = store.extend_clock(conn, number, was=was, now=now)
        second = store.extend_clock(conn, number, was=was, now=deadline_of(D("2026-11-04"), 3))
    assert (first, second) == (True, False)
    assert store.get(number).deadline == now


def test_store_the_digest_day_is_recorded_once(store: Store) -> None:
    assert store.last_digest_day() is None
    with store.write() as conn:
        assert store.mark_digest(conn, TODAY, 2) is True
        assert store.mark_digest(conn, TODAY, 2) is False
    assert store.last_digest_day() == TODAY


def test_store_report_entries_are_by_receipt_date_within_the_period(store: Store) -> None:
    a = new_request(store, "2026-11-20", Status.PENDING)
    b = new_request(store, "2026-10-01", Status.PENDING)
    c = new_request(store, "2026-11-30", Status.PENDING, Status.REJECTED)
    assert [e.request_id for e in store.report_entries(None, None)] == [
        f"R-{b}",
        f"R-{a}",
        f"R-{c}",
    ]
    assert [e.request_id for e in store.report_entries(D("2026-11-01"), D("2026-11-29"))] == [
        f"R-{a}"
    ]
