"""Opening the SQLite database safely for a threaded process, and its migrations.

Every thread gets its own connection (sqlite3 connections are not shared across threads). The
database runs in WAL mode so readers never block the one writer; writers take the write lock
up front (`BEGIN IMMEDIATE`) so a read-then-write transaction cannot fail half-way with
SQLITE_BUSY. Migrations are numbered functions, never edited once shipped: add a new one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from bot import audit
from bot.errors import ConfigError, DatabaseBusy, DatabaseFull

log = logging.getLogger(__name__)

T = TypeVar("T")

# One wait for SQLite's lock. Writers wait longer than this: `begin_immediate` retries until
# LOCK_PATIENCE, so another process holding the lock (a backup, `sqlite3` at a prompt, a long
# transaction) delays the bot instead of failing its work.
BUSY_TIMEOUT_MS = 5_000
LOCK_PATIENCE = 600.0  # seconds
# The WAL is copied back into the database (a checkpoint, with an fsync) by a thread of its
# own after this many commits: SQLite's automatic checkpoint runs inside the COMMIT that
# crosses 1,000 pages, up to 90 ms under load, while every other writer waits for it.
CHECKPOINT_EVERY = 200


def is_locked(exc: BaseException) -> bool:
    """Return True for SQLite's "database is locked" / "database is busy" errors."""
    return isinstance(exc, sqlite3.OperationalError) and any(
        word in str(exc) for word in ("database is locked", "database is busy")
    )


def is_full(exc: BaseException) -> bool:
    """Return True for SQLITE_FULL: the disk holding the database (or its WAL) is full."""
    return (
        isinstance(exc, sqlite3.OperationalError)
        and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_FULL
    )


def end_transaction(conn: sqlite3.Connection) -> None:
    """Roll back the transaction `conn` has open, if any.

    After a failed statement or COMMIT the transaction may be gone (SQLite rolls the whole of
    it back on a full disk or an I/O error, and a ROLLBACK then fails, hiding the cause) or
    still open (a COMMIT answered SQLITE_BUSY or failing a deferred constraint, and the next
    BEGIN then fails).
    """
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def begin_immediate(conn: sqlite3.Connection, patience: float = LOCK_PATIENCE) -> None:
    """Start a write transaction, waiting up to `patience` seconds for another one to end.

    Raises DatabaseBusy when the lock is still held after that. Retrying BEGIN is safe:
    nothing of the transaction has run yet.
    """
    started = time.monotonic()
    pause = 0.05
    while True:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - started
            if not is_locked(exc):
                raise
            if waited >= patience:
                log.error("the database stayed locked for %.0f s; giving up this write", waited)
                raise DatabaseBusy(waited) from None
            if pause == 0.05:
                log.warning("the database is locked by another connection; waiting for it")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            continue
        if pause > 0.05:
            log.info("the database lock was released after %.0f s", time.monotonic() - started)
        return


def run_script(conn: sqlite3.Connection, script: str) -> None:
    """Execute a SQL script statement by statement, inside the caller's transaction.

    (`executescript` would commit the migration's transaction half-way.)
    """
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            conn.execute(statement)
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement.strip()[:80]}")


def _m001_initial(conn: sqlite3.Connection) -> None:
    run_script(
        conn,
        """
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,               -- export | delete | manual
            command TEXT NOT NULL,            -- the parsed request, JSON
            text TEXT NOT NULL,               -- what the user typed
            requester TEXT NOT NULL,
            channel TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            expires_at TEXT,                  -- deletions: end of the approval window
            message_ts TEXT,                  -- the announcement in the channel
            preview TEXT,                     -- deletions: JSON impact preview
            progress TEXT,                    -- JSON {done, total, phase}
            result TEXT,                      -- JSON summary of the outcome
            error TEXT,                       -- user-facing failure message
            decided_by TEXT,                  -- who rejected / cancelled
            decision_reason TEXT
        );
        -- Request ids are typed by people (R-1001): start above three digits.
        INSERT INTO sqlite_sequence (name, seq) VALUES ('requests', 1000);
        CREATE INDEX requests_status ON requests (status);
        CREATE INDEX requests_requester ON requests (requester, status);

        CREATE TABLE approvals (
            request_id INTEGER NOT NULL REFERENCES requests (id),
            approver TEXT NOT NULL,
            at TEXT NOT NULL,
            PRIMARY KEY (request_id, approver)
        );

        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id INTEGER NOT NULL REFERENCES requests (id),
            kind TEXT NOT NULL,               -- preview | export | delete
            status TEXT NOT NULL,             -- queued | running | done | failed | cancelled
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until TEXT,
            checkpoint TEXT NOT NULL DEFAULT '{}',
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX jobs_status ON jobs (status);

        CREATE TABLE deletion_items (
            request_id INTEGER NOT NULL REFERENCES requests (id),
            seq INTEGER NOT NULL,             -- execution order
            kind TEXT NOT NULL,  -- unpublish | image | prediction | tag | iteration | project
            project_id TEXT NOT NULL,
            target_id TEXT NOT NULL,
            parent_id TEXT,                   -- the iteration of an unpublish, else NULL
            batch INTEGER NOT NULL,
            status TEXT NOT NULL,             -- pending | sending | deleted | gone | failed
            http_status INTEGER,
            operation TEXT,
            at TEXT,
            verified TEXT,                    -- NULL | gone | survived
            PRIMARY KEY (request_id, seq)
        );
        CREATE INDEX deletion_items_batch ON deletion_items (request_id, batch);

        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id INTEGER,
            key TEXT UNIQUE,                  -- coalescing key: one pending item per key
            kind TEXT NOT NULL,               -- announce | post | progress | upload | mirror
            channel TEXT NOT NULL,
            payload TEXT NOT NULL,            -- JSON
            status TEXT NOT NULL,             -- pending | sent | held | failed
            attempts INTEGER NOT NULL DEFAULT 0,
            not_before TEXT NOT NULL,
            result TEXT,
            created_at TEXT NOT NULL
        );
        CREATE INDEX outbox_pending ON outbox (status, not_before);
        """,
    )
    run_script(conn, audit.SCHEMA_SQL)


def _m002_outbox_revision(conn: sqlite3.Connection) -> None:
    # An item re-queued under its key while being sent must not be marked sent by that send:
    # the payload alone cannot tell (an announcement's payload never changes).
    conn.execute("ALTER TABLE outbox ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")


def _m003_outbox_held(conn: sqlite3.Connection) -> None:
    # A delivery Slack refused for good is held (status 'held', the error kept here) until
    # `resend`; its work files stay. The lane index lets the outbox read the audit mirror and
    # the request deliveries separately, so a long mirror backlog cannot hide a thread post.
    conn.execute("ALTER TABLE outbox ADD COLUMN held_error TEXT")
    conn.execute("CREATE INDEX outbox_lane ON outbox (status, kind, id)")


def _m004_statutory_clock(conn: sqlite3.Connection) -> None:
    # A request's statutory clock (Art. 12(3) GDPR, bot.deadline), dates as YYYY-MM-DD. The due
    # dates are stored, not recomputed: a holiday list edited later must not move a deadline
    # already set. Requests stored before this version have no row: their clock is unknown.
    run_script(
        conn,
        """
        CREATE TABLE deadlines (
            request_id INTEGER PRIMARY KEY REFERENCES requests (id),
            received TEXT NOT NULL,           -- the day the person's request was received
            first_due TEXT NOT NULL,          -- one month later, on a working day
            due TEXT NOT NULL,                -- the due date in force (later once extended)
            months INTEGER NOT NULL DEFAULT 1,  -- the period in force, from receipt: 1 to 3
            completed TEXT                    -- the day it was done, else NULL
        );
        CREATE INDEX deadlines_open ON deadlines (due) WHERE completed IS NULL;
        -- Completion is the day the request reached done (or answered), recorded by the very
        -- update that makes it so, whichever code path makes it.
        CREATE TRIGGER deadlines_completed AFTER UPDATE OF status ON requests
        WHEN NEW.status IN ('done', 'answered')
        BEGIN
            UPDATE deadlines SET completed = substr(NEW.updated_at, 1, 10)
            WHERE request_id = NEW.id AND completed IS NULL;
        END;
        -- The days whose deadline digest was queued, in the transaction that queued it: a
        -- restart neither repeats a day nor skips one.
        CREATE TABLE digests (
            day TEXT PRIMARY KEY,             -- YYYY-MM-DD (UTC)
            at TEXT NOT NULL,                 -- when it was queued
            channels INTEGER NOT NULL         -- how many channels got one (0: nothing due)
        );
        """,
    )


def _m005_item_resource(conn: sqlite3.Connection) -> None:
    # A plan spanning several projects (delete subject) names each item's Custom Vision
    # resource, so a resumed job sends every call to the resource holding its project. NULL
    # (every item stored before, and plans of one project): the request's own resource.
    conn.execute("ALTER TABLE deletion_items ADD COLUMN resource TEXT")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_initial,
    _m002_outbox_revision,
    _m003_outbox_held,
    _m004_statutory_clock,
    _m005_item_resource,
]


def connect(path: Path, *, require_wal: bool = True) -> sqlite3.Connection:
    """Return a new connection in autocommit mode (transactions are explicit), WAL enabled.

    Raises ConfigError naming the path when SQLite cannot use WAL there (`require_wal`: the
    bot's own database; reading an audit copy does not need it).
    """
    if str(path) != ":memory:":
        path.parent.mkdir(parents=True, exist_ok=True)
    # check_same_thread=False only so close() can run at shutdown; each thread uses its own.
    conn = sqlite3.connect(
        str(path), isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # SQLite answers the mode it kept when it cannot use WAL (an in-memory database, a file
    # system without shared memory) instead of failing; the guarantees above need WAL.
    mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
    if mode != "wal" and require_wal:
        conn.close()
        raise ConfigError(
            [
                f"BOT_DATABASE ({path}) cannot use SQLite's WAL mode (SQLite kept "
                f"journal_mode={mode}), on which the bot relies so that reading never blocks "
                "writing. Set BOT_DATABASE to a file on a local disk (not an in-memory database"
                ", not a network file system), in a folder where the bot may create the file's "
                "-wal and -shm companions."
            ]
        )
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA wal_autocheckpoint = 0")  # Database checkpoints (CHECKPOINT_EVERY)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply the migrations not yet applied; return the schema version."""
    begin_immediate(conn)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
            step(conn)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        end_transaction(conn)
        raise
    return len(MIGRATIONS)


class AuditFile:
    """The audit log of a database file, read as it is (not migrated: offline verification
    must not change the file it checks)."""

    def __init__(self, path: Path) -> None:
        self._conn = connect(path, require_wal=False)  # verifying a copy needs no WAL

    def verify(self) -> audit.Verification:
        """Return the result of recomputing the hash chain."""
        return audit.verify(self._conn)

    def check_against_witness(self, witnessed: Iterable[tuple[int, str]]) -> audit.Verification:
        """Return the chain verification where every witnessed (seq, hash prefix) must match."""
        return audit.check_against_witness(self._conn, witnessed)

    def close(self) -> None:
        """Close the file."""
        self._conn.close()


@dataclass
class _Queued:
    """A grouped write: its work, and its answer once the group's transaction is over."""

    work: Callable[[sqlite3.Connection], Any]
    future: Future[Any] = field(default_factory=Future)
    result: Any = None
    error: Exception | None = None


class Database:
    """Per-thread connections to one SQLite file, migrated on open."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # This process's writers queue here, woken the moment the lock is free, instead of in
        # SQLite's busy handler, which polls with sleeps of up to 100 ms: under load that
        # sleep, not the work, was most of a decision's time.
        self._writer = threading.Lock()
        self._commits = 0
        # Grouped writes (write_grouped) wait here until a thread commits them.
        self._group = threading.Condition()
        self._queued: list[_Queued] = []
        self._committing = False
        self._checkpoint_due = threading.Event()
        self._closing = threading.Event()
        self._checkpointer: threading.Thread | None = None
        migrate(self.conn)

    @property
    def conn(self) -> sqlite3.Connection:
        """Return this thread's connection, opening it on first use."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            self._local.conn = conn
            # No recursive triggers (the audit log's guards must fire exactly as written) and
            # no plugins: the wrapper only builds statements on this connection.
            self._local.tables = sqlite_utils.Database(
                conn, recursive_triggers=False, execute_plugins=False
            )
            with self._lock:
                self._all.append(conn)
        return conn

    @property
    def tables(self) -> sqlite_utils.Database:
        """Return this thread's connection wrapped by sqlite-utils (opened on first use)."""
        self.conn  # noqa: B018 - opens this thread's connection and its wrapper
        tables: sqlite_utils.Database = self._local.tables
        return tables

    def probe(self) -> tuple[int, audit.Verification]:
        """Return the schema version and the audit chain's verification, after checking that
        a write lock can be taken and a table created (then rolled back)."""
        conn = self.conn
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE _cvdsr_write_check (x INTEGER)")
        finally:
            end_transaction(conn)
        return version, audit.verify(conn)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside BEGIN IMMEDIATE; commit, or roll back on error.

        Raises DatabaseBusy (the lock stayed held) and DatabaseFull (no space; rolled back).
        Whatever fails, the transaction is over when this returns: nothing of it was stored.
        """
        with self._transaction() as conn:
            yield conn

    def write_grouped(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Return `work(conn)`'s result once it is committed, in one transaction with the other
        grouped writes queued meanwhile (group commit), each in a savepoint of its own.

        For small writes that many threads make at once (an audit event on its own): one
        BEGIN IMMEDIATE ... COMMIT for all of them, in the order they were queued. `work` runs
        on whichever waiting thread commits the group, so it must not rely on thread-locals.
        Raises what `work` raised (only its own savepoint is rolled back), or, for every write
        of the group and no other, what the transaction raised: DatabaseBusy, DatabaseFull
        (nothing of the group was stored), or the error that ended the transaction.
        """
        queued = _Queued(work)
        with self._group:
            self._queued.append(queued)
            while not queued.future.done() and self._committing:
                self._group.wait()
            leads = not queued.future.done()
            if leads:
                self._committing = True
        if leads:  # no other thread is committing a group: this one commits what is queued
            try:
                self._commit_group()
            finally:
                with self._group:
                    self._committing = False
                    self._group.notify_all()
        result: T = queued.future.result()
        return result

    def _commit_group(self) -> None:
        """Commit the grouped writes queued when the write lock is taken; settle each one."""
        group: list[_Queued] = []
        try:
            with self._transaction() as conn:
                with self._group:  # taken once the lock is ours: the writes queued meanwhile too
                    group, self._queued = self._queued, []
                for queued in group:
                    conn.execute("SAVEPOINT grouped")
                    try:
                        queued.result = queued.work(conn)
                    except Exception as exc:
                        # A full disk fails the whole group, whatever SQLite rolled back.
                        if is_full(exc) or not conn.in_transaction:
                            raise
                        conn.execute("ROLLBACK TO grouped")
                        queued.error = exc
                    conn.execute("RELEASE grouped")
        except BaseException as exc:
            if not group:  # the lock was never had (DatabaseBusy): those queued waited as long
                with self._group:
                    group, self._queued = self._queued, []
            for queued in group:
                queued.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for queued in group:  # committed: only now is any of them answered
            if queued.error is not None:
                queued.future.set_exception(queued.error)
            else:
                queued.future.set_result(queued.result)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Yield this thread's connection inside BEGIN IMMEDIATE, under the process's write
        lock; commit, or roll back and raise (DatabaseBusy, DatabaseFull, the error)."""
        conn = self.conn
        started = time.monotonic()
        if not self._writer.acquire(timeout=LOCK_PATIENCE):
            raise DatabaseBusy(time.monotonic() - started)
        try:
            begin_immediate(conn, LOCK_PATIENCE - (time.monotonic() - started))
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                end_transaction(conn)
                if is_full(exc):
                    log.error("a write to the database failed: %s", exc)
                    raise DatabaseFull(self.path) from exc
                raise
            self._commits += 1
            if self._commits % CHECKPOINT_EVERY == 0:
                self._request_checkpoint()
        finally:
            self._writer.release()

    def _request_checkpoint(self) -> None:
        if self._checkpointer is None:
            self._checkpointer = threading.Thread(
                target=self._checkpoint, name="sqlite-checkpoint", daemon=True
            )
            self._checkpointer.start()
        self._checkpoint_due.set()

    def _checkpoint(self) -> None:
        """Copy the WAL back into the database whenever asked, beside the writers (PASSIVE)."""
        while True:
            self._checkpoint_due.wait()
            self._checkpoint_due.clear()
            if self._closing.is_set():
                return
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:  # the next one copies what this one could not
                log.warning("WAL checkpoint failed: %s", exc)

    def close(self) -> None:
        """Stop checkpointing, close every connection opened by any thread."""
        self._closing.set()
        self._checkpoint_due.set()
        if self._checkpointer is not None:
            self._checkpointer.join(10)
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()
        self._local = threading.local()
