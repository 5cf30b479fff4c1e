"""Opening the database: the bot refuses a database where SQLite's WAL mode does not take.

The bot's concurrency rests on WAL (readers never block the one writer, `bot.db`). SQLite
does not fail a `PRAGMA journal_mode = WAL` it cannot honour: it answers the mode it kept
(sqlite.org/pragma.html#pragma_journal_mode, "If the journal mode could not be changed, the
original journal mode is returned"). An in-memory database is the case reproducible
everywhere (its only modes are MEMORY and OFF, sqlite.org/inmemorydb.html and wal.html); a
network file system without shared memory is the other (sqlite.org/wal.html, "WAL does not
work over a network filesystem"). `BOT_DATABASE=:memory:` is a plausible mistake: each thread
would get an empty database of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.db import Database, connect
from bot.errors import ConfigError
from emulators.customvision import Seed
from emulators.stack import bot_env, start_emulators

MEMORY = Path(":memory:")


def test_db_connect_refuses_a_database_that_answers_another_journal_mode() -> None:
    with pytest.raises(ConfigError) as raised:
        connect(MEMORY)
    (problem,) = raised.value.problems
    assert problem.startswith("BOT_DATABASE (:memory:) cannot use SQLite's WAL mode")
    assert "SQLite kept journal_mode=memory" in problem
    assert "a file on a local disk" in problem


def test_db_database_refuses_before_migrating() -> None:
    with pytest.raises(ConfigError):
        Database(MEMORY)


def test_db_connect_a_file_on_a_local_disk_runs_in_wal(tmp_path: Path) -> None:
    conn = connect(tmp_path / "cvdsr.db")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_db_serve_on_a_database_without_wal_refuses_with_the_problem_and_no_traceback(
    tmp_path: Path,
) -> None:
    cv, slack = start_emulators(Seed(projects=1, iterations=1, tags=1, images=1, predictions=0))
    try:
        env = {**bot_env(cv, slack, tmp_path / "data"), "BOT_DATABASE": str(MEMORY)}
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "CUSTOM_VISION_", "BOT_"))
        }
        done = subprocess.run(
            [sys.executable, "-m", "bot", "serve"],
            env={**inherited, **env},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,  # the old code served on, an empty database per thread
            check=False,
        )
    finally:
        cv.stop()
        slack.stop()
    assert done.returncode == 2, done.stderr
    assert "BOT_DATABASE (:memory:) cannot use SQLite's WAL mode" in done.stderr
    assert "Traceback" not in done.stderr
