"""`Database.write` when SQLite itself fails, on real files: the transaction is always ended,
the failure is named, and the next write works.

The faults are real. A full disk is a small tmpfs filled to the last byte (in WAL mode SQLite
writes a small transaction's pages at COMMIT, so that is where it fails; a large one spills
them earlier, inside a statement). A COMMIT that fails and leaves the transaction open is a
deferred foreign key violation (SQLite keeps the transaction open so the caller may fix it),
the same state a COMMIT answered SQLITE_BUSY leaves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.db import Database
from bot.errors import DatabaseFull
from emulators.faults import fill, mount_small_filesystem


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mount_small_filesystem(tmp_path / "db", 4) as folder:
        yield folder


@pytest.fixture
def on_small_disk(small_disk: Path) -> Iterator[Database]:
    database = Database(small_disk / "bot.db")
    try:
        with database.write() as conn:
            conn.execute("CREATE TABLE t (b BLOB)")
        yield database
    finally:
        database.close()


def rows(database: Database) -> int:
    return int(database.conn.execute("SELECT COUNT(*) FROM t").fetchone()[0])


@pytest.mark.parametrize(
    ("rows_written", "where"),
    [(1, "at COMMIT"), (2_000, "inside a statement, pages spilled before COMMIT")],
)
def test_db_write_on_a_full_disk_is_named_rolled_back_and_the_next_write_works(
    on_small_disk: Database, small_disk: Path, rows_written: int, where: str
) -> None:
    filler = fill(small_disk)
    with pytest.raises(DatabaseFull) as failed, on_small_disk.write() as conn:
        for _ in range(rows_written):
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 1_000,))
    assert failed.value.user_message.startswith(
        "The bot's database could not be written: the disk holding it is full ("
    ), where
    assert failed.value.user_message.endswith(
        "Nothing was changed. An admin must free space on the disk of BOT_DATABASE; then try again."
    )
    assert not on_small_disk.conn.in_transaction
    assert rows(on_small_disk) == 0
    filler.unlink()
    with on_small_disk.write() as conn:
        conn.execute("INSERT INTO t VALUES (?)", (b"y",))
    assert rows(on_small_disk) == 1


def test_db_a_commit_that_fails_with_the_transaction_open_is_rolled_back(
    tmp_path: Path,
) -> None:
    database = Database(tmp_path / "bot.db")
    try:
        with (
            pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY constraint failed"),
            database.write() as conn,
        ):
            conn.execute("PRAGMA defer_foreign_keys = ON")
            conn.execute("INSERT INTO approvals (request_id, approver, at) VALUES (9, 'U', '')")
        assert not database.conn.in_transaction
        with database.write() as conn:  # was "cannot start a transaction within a transaction"
            conn.execute("INSERT INTO digests (day, at, channels) VALUES ('2026-01-01', 'x', 0)")
        assert database.conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0] == 0
        assert database.conn.execute("SELECT COUNT(*) FROM digests").fetchone()[0] == 1
    finally:
        database.close()
