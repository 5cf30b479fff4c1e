"""One bot process per database, whatever the path, and start-up never takes a live lease.

The first bot runs as `python -m bot serve`, as deployed; the second is started through
another path to the same database file (a symlink, a hard link, a relative path through `..`)
and must refuse before it touches anything. A job leased by another worker is resumed only
once that lease has expired.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from bot import audit
from bot.clock import SystemClock, iso
from bot.db import Database
from bot.lifecycle import JobKind, Status
from bot.store import Store
from emulators.customvision import Seed
from emulators.stack import bot_env, start_emulators, start_stack
from tests.harness import store_request, walk
from tests.test_durability import BotProcess

SEED = Seed(projects=1, iterations=1, tags=2, images=10, predictions=0, image_bytes=256)


@pytest.fixture
def first_bot(tmp_path: Path) -> Iterator[tuple[BotProcess, dict[str, str]]]:
    """A serving bot process on tmp_path/data/cvdsr.db; yields it and its environment."""
    cv, slack = start_emulators(SEED)
    env = bot_env(cv, slack, tmp_path / "data")
    bot = BotProcess(tmp_path, env)
    try:
        bot.start()
        yield bot, env
    finally:
        bot.stop_hard()
        cv.stop()
        slack.stop()


def second_serve(env: dict[str, str], database: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a second `python -m bot serve` on `database` (as given, from `cwd`) to its exit."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLACK_", "CUSTOM_VISION_", "BOT_"))
    }
    return subprocess.run(
        [sys.executable, "-m", "bot", "serve"],
        env={**inherited, **env, "BOT_DATABASE": database},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_single_process_a_second_bot_through_any_path_to_the_database_refuses(
    first_bot: tuple[BotProcess, dict[str, str]], tmp_path: Path
) -> None:
    bot, env = first_bot
    database = Path(env["BOT_DATABASE"])
    (tmp_path / "links").mkdir()
    symlink = tmp_path / "links" / "symlink.db"
    symlink.symlink_to(database)
    hard = tmp_path / "links" / "hard.db"
    os.link(database, hard)
    (tmp_path / "elsewhere").mkdir()
    paths = {
        "the same path": (str(database), tmp_path),
        "a symlink": (str(symlink), tmp_path),
        "a hard link": (str(hard), tmp_path),
        "a relative path through ..": ("../links/../data/./cvdsr.db", tmp_path / "elsewhere"),
    }
    for name, (path, cwd) in paths.items():
        result = second_serve(env, path, cwd)
        assert result.returncode == 2, f"{name}: exit {result.returncode}\n{result.stderr[-2000:]}"
        assert "another bot process is using" in result.stderr, (name, result.stderr[-2000:])
    # The first bot was not disturbed: it serves, and no job was released under it.
    assert bot.proc is not None and bot.proc.poll() is None
    assert requests.get(f"{bot.url}/healthz", timeout=10).status_code == 200
    db = Database(database)
    try:
        actions = {e.action for e in audit.events(db.conn)}
    finally:
        db.close()
    assert "job.resumed" not in actions


def test_single_process_start_up_resumes_only_jobs_whose_lease_expired(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = Database(data / "cvdsr.db")
    store = Store(db, SystemClock())
    try:
        with store.write() as conn:
            number = store_request(store, conn, status=Status.QUEUED)
            walk(store, conn, number, Status.RUNNING)
            store.enqueue_job(conn, number, JobKind.EXPORT)
        # Another process (another host, or one the guard cannot see) holds it for an hour.
        job = store.claim_job("worker-elsewhere", timedelta(hours=1))
        assert job is not None
    finally:
        db.close()
    stack = start_stack(data, seed=SEED)
    try:
        assert stack.bot is not None
        held = stack.bot.store.job(job.id)
        assert held.status == "running" and held.attempts == 1
        owner = stack.bot.store.db.conn.execute(
            "SELECT lease_owner FROM jobs WHERE id = ?", (job.id,)
        ).fetchone()[0]
        assert owner == "worker-elsewhere"
        assert stack.status(f"R-{number}") == "running"
        # That process dies: its lease runs out, and this bot resumes the job.
        with stack.bot.store.write() as conn:
            conn.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ?",
                (iso(SystemClock().now() - timedelta(seconds=1)), job.id),
            )
        assert stack.wait_status(f"R-{number}", "done", "failed", timeout=60) == "done"
        assert stack.bot.store.job(job.id).attempts == 2
    finally:
        stack.close()
