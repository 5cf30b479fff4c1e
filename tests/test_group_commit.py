"""Group commit (`Database.write_grouped`, used by `Store.record`) on real SQLite files.

Audit events that record no other change (refusals, searches) are committed several to a
transaction: the chain stays whole and in order, a waiter hears of its write only once it is
committed, a failure reaches every write of its group and no other, and a process killed in
the middle of groups loses nothing it had answered.

A group is made the way a burst makes one: a write holds the lock while the grouped writes
queue behind it, then lets go.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bot import audit
from bot.clock import FakeClock
from bot.db import Database
from bot.errors import DatabaseFull
from bot.store import Store
from emulators.faults import fill, mount_small_filesystem

AUDIT_CHANNEL = "C0AUDIT"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    db = Database(tmp_path / "bot.db")
    store = Store(db, FakeClock())
    store.audit_channel = AUDIT_CHANNEL
    try:
        yield store
    finally:
        db.close()


def queued(db: Database, count: int) -> None:
    """Wait until `count` grouped writes wait for the lock (the test holds it): the queue is
    what the test builds, so it reads it."""
    deadline = time.monotonic() + 30
    while len(db._queued) < count:
        assert time.monotonic() < deadline, f"{len(db._queued)} of {count} writes queued"
        time.sleep(0.005)


class Waiters:
    """Threads that each make one write, queued one after another behind a held lock."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.threads: list[threading.Thread] = []
        self.answers: dict[str, object] = {}  # name -> its result, or the exception it raised
        self.statements: list[str] = []  # what every thread's connection ran

    def start(self, name: str, write: Callable[[], object]) -> None:
        def run() -> None:
            # The thread that commits the group runs it on its own connection: trace them all.
            self.db.conn.set_trace_callback(self.statements.append)
            try:
                self.answers[name] = write()
            except Exception as exc:
                self.answers[name] = exc

        thread = threading.Thread(target=run, name=name)
        thread.start()
        self.threads.append(thread)
        queued(self.db, len(self.threads))

    def join(self) -> None:
        for thread in self.threads:
            thread.join(30)
        assert not any(t.is_alive() for t in self.threads)


def committed_hash(path: Path, seq: int) -> str | None:
    """Return the hash of event `seq` as another connection sees it (committed), or None."""
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (seq,)).fetchone()
    finally:
        conn.close()
    return None if row is None else str(row[0])


def test_group_commit_records_queued_together_commit_once_in_order_and_answer_after(
    store: Store,
) -> None:
    db = store.db
    waiters = Waiters(db)
    seen_at_answer: dict[str, str | None] = {}

    def refuse(actor: str) -> Callable[[], object]:
        def write() -> object:
            event = store.record(actor, "status.refused", request="R-1001", outcome="refused")
            seen_at_answer[actor] = committed_hash(db.path, event.seq)
            return event

        return write

    with db.write():  # holds the lock while five refusals queue behind it
        for n in range(5):
            waiters.start(f"U{n}", refuse(f"U{n}"))
    waiters.join()

    events = list(store.audit_events())
    assert [(e.seq, e.actor) for e in events] == [(n + 1, f"U{n}") for n in range(5)]
    assert waiters.answers == {e.actor: e for e in events}
    # Each waiter was answered once its event was committed: another connection saw it.
    assert seen_at_answer == {e.actor: e.hash for e in events}
    assert sum(s == "BEGIN IMMEDIATE" for s in waiters.statements) == 1
    assert sum(s == "COMMIT" for s in waiters.statements) == 1
    assert store.verify_audit().ok
    mirrored = db.conn.execute(
        "SELECT json_extract(payload, '$.seq') FROM outbox WHERE kind = 'mirror' ORDER BY id"
    ).fetchall()
    assert [seq for (seq,) in mirrored] == [1, 2, 3, 4, 5]


def test_group_commit_a_failing_write_reaches_its_waiter_only_and_the_chain_stays_whole(
    store: Store,
) -> None:
    db = store.db

    def append(actor: str, fail: bool = False) -> Callable[[], object]:
        def work(conn: sqlite3.Connection) -> int:
            event = audit.append(
                conn, at=store.clock.now(), actor=actor, action="find", request_id=None
            )
            if fail:
                raise ValueError(f"{actor} went wrong after appending #{event.seq}")
            return event.seq

        return lambda: db.write_grouped(work)

    waiters = Waiters(db)
    with db.write():
        waiters.start("first", append("U1"))
        waiters.start("failing", append("U2", fail=True))
        waiters.start("third", append("U3"))
    waiters.join()

    failed = waiters.answers.pop("failing")
    assert isinstance(failed, ValueError)
    assert str(failed) == "U2 went wrong after appending #2"
    # Its savepoint alone was rolled back: the next write took seq 2 and the chain is whole.
    assert waiters.answers == {"first": 1, "third": 2}
    assert [(e.seq, e.actor) for e in store.audit_events()] == [(1, "U1"), (2, "U3")]
    assert store.verify_audit().ok


def refusal(store: Store, actor: str) -> Callable[[], object]:
    return lambda: store.record(actor, "status.refused", request="R-1001", outcome="refused")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mount_small_filesystem(tmp_path / "db", 4) as folder:
        yield folder


def test_group_commit_full_disk_fails_every_write_of_its_group_and_none_after(
    small_disk: Path,
) -> None:
    db = Database(small_disk / "bot.db")
    store = Store(db, FakeClock())
    try:
        store.record("U0", "find")  # a first event, so the group fails at COMMIT, not at open
        waiters = Waiters(db)
        with db.write():  # writes nothing: its own COMMIT needs no space
            for actor in ("U1", "U2", "U3"):
                waiters.start(actor, refusal(store, actor))
            filler = fill(small_disk)
        waiters.join()

        assert set(waiters.answers) == {"U1", "U2", "U3"}
        for answer in waiters.answers.values():
            assert isinstance(answer, DatabaseFull)
            assert answer.user_message.startswith(
                "The bot's database could not be written: the disk holding it is full ("
            )
        assert not db.conn.in_transaction
        assert [e.actor for e in store.audit_events()] == ["U0"]
        filler.unlink()
        assert store.record("U4", "status.refused").seq == 2
        assert [e.actor for e in store.audit_events()] == ["U0", "U4"]
        assert store.verify_audit().ok
    finally:
        db.close()


# A process whose threads record events as fast as they can, printing each one once answered.
RECORDER = """
import sys, threading
from pathlib import Path
from bot.clock import SystemClock
from bot.db import Database
from bot.store import Store

store = Store(Database(Path(sys.argv[1])), SystemClock())
store.audit_channel = "C0AUDIT"
out = threading.Lock()

def run(n):
    while True:
        event = store.record(f"U{n}", "status.refused", request="R-1001", outcome="refused")
        with out:
            print(event.seq, event.hash, flush=True)

for n in range(8):
    threading.Thread(target=run, args=(n,)).start()
"""


def test_group_commit_sigkill_mid_groups_loses_no_answered_event(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    Database(path).close()  # migrated before the child starts
    answered: dict[int, str] = {}
    with subprocess.Popen(
        [sys.executable, "-c", RECORDER, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    ) as child:
        try:
            assert child.stdout is not None
            while len(answered) < 600:
                line = child.stdout.readline()
                assert line, f"the recorder stopped after {len(answered)} events"
                seq, digest = line.split()
                answered[int(seq)] = digest
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(30)
    db = Database(path)
    try:
        stored = {e.seq: e.hash for e in audit.events(db.conn)}
        verification = audit.verify(db.conn)
        mirrored = {
            seq
            for (seq,) in db.conn.execute(
                "SELECT json_extract(payload, '$.seq') FROM outbox WHERE kind = 'mirror'"
            )
        }
    finally:
        db.close()
    assert verification.ok, verification.summary()
    assert {seq: stored.get(seq) for seq in answered} == answered
    assert set(stored) == set(range(1, len(stored) + 1))
    assert mirrored == set(stored)
