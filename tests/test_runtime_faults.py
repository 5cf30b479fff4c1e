"""The bot keeps running under faults of its own machine: a database locked by another process
for longer than SQLite's busy timeout, a full work directory and a full database disk.

Each fault is real: a second process holds `BEGIN IMMEDIATE` on the bot's database, and the
work directory (or the database's folder) is a small tmpfs filled to the last byte. The bot
runs in-process over HTTP against both emulators (the `stacks` fixture); `/healthz` is read
over HTTP.
"""

from __future__ import annotations

import functools
import gc
import io
import json
import re
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bot import audit, db
from emulators.customvision import Faults, Seed
from emulators.faults import fill, locked, mount_small_filesystem
from emulators.stack import APPROVER, CHANNEL, REQUESTER, Stack
from tests.conftest import StartStack, click_answer

SEED = Seed(projects=2, iterations=2, tags=3, images=40, predictions=6, image_bytes=2048)
# Longer than SQLite's busy timeout: a single wait for the lock gives up before it is released.
LOCK_SECONDS = db.BUSY_TIMEOUT_MS / 1000 + 3
WAIT = 120.0


def health(stack: Stack) -> requests.Response:
    assert stack.server is not None
    return requests.get(f"http://127.0.0.1:{stack.server.port}/healthz", timeout=30)


def wait_until(what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.05)


def thread_texts(stack: Stack, rid: str) -> list[str]:
    ts = stack.bot.store.get(rid).message_ts
    return [m.text for m in stack.slack.messages(CHANNEL, thread_ts=ts)]


def files_of(stack: Stack, rid: str) -> list[str]:
    return [f.name for f in stack.slack.files(CHANNEL) if f.name.startswith(rid)]


def pending_deletion(stack: Stack, count: int) -> tuple[str, list[str]]:
    """Request the deletion of `count` images of the first project; wait for its preview."""
    project = stack.cv.data.project_ids()[0]
    images = stack.cv.data.image_ids(project, None)[:count]
    text = f"delete images {project} --ids {','.join(images)}"
    rid = stack.request_id(stack.command(REQUESTER, text))
    assert stack.wait_status(rid, "pending", timeout=WAIT) == "pending"
    stack.wait_delivered(timeout=WAIT)
    return rid, images


@pytest.fixture
def small_work_dir(tmp_path: Path) -> Iterator[Path]:
    """The work directory of the first stack, on a 4 MB tmpfs (mounted before the bot starts)."""
    with mount_small_filesystem(tmp_path / "stack-0" / "work", 4) as folder:
        yield folder


# -- a database locked by another process -------------------------------------------------------


def test_runtime_workers_outlive_a_lock_held_longer_than_the_busy_timeout(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SEED)
    assert health(stack).json()["workers"]["live"] == 2
    with locked(stack.config.database, LOCK_SECONDS) as holder:
        # The idle workers poll for jobs (a write transaction) the whole time.
        holder.wait()
    answer = health(stack)
    assert answer.status_code == 200, answer.text
    assert answer.json()["workers"]["live"] == 2
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project} --no-images"))
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done"


def test_runtime_export_running_while_the_database_is_locked_finishes(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SEED, faults=Faults(latency=0.05))
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
    stack.wait_status(rid, "running", "done", "failed", timeout=WAIT)
    with locked(stack.config.database, LOCK_SECONDS) as holder:
        holder.wait()
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done", stack.bot.store.get(
        rid
    ).error
    assert health(stack).json()["workers"]["live"] == 2


def test_runtime_click_and_command_while_the_database_is_locked_are_recorded(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SEED)
    rid, _ = pending_deletion(stack, 1)
    with locked(stack.config.database, LOCK_SECONDS):
        click = stack.click(APPROVER, rid, "approve")
        command = stack.command(REQUESTER, "status")
    assert click.status_code == 200, click.text
    assert command.status_code == 200, command.text
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done"
    assert health(stack).json()["workers"]["live"] == 2


def test_runtime_healthz_reports_workers_and_the_oldest_queued_job(stacks: StartStack) -> None:
    stack = stacks(
        seed=SEED,
        faults=Faults(latency=0.2),
        env={"BOT_WORKERS": "1", "BOT_HEALTH_MAX_QUEUE_SECONDS": "1"},
    )
    project = stack.cv.data.project_ids()[0]
    first = stack.request_id(stack.command(REQUESTER, f"export project {project} --no-images"))
    stack.wait_status(first, "running", timeout=WAIT)
    second = stack.request_id(stack.command(REQUESTER, f"export project {project} --no-images"))
    wait_until("/healthz to answer 503", lambda: health(stack).status_code == 503)
    body = health(stack).json()
    assert body["ok"] is False
    assert body["workers"] == {"live": 1, "configured": 1}
    assert body["oldest_queued_seconds"] >= 1
    assert "waited" in body["problem"]
    stack.cv.faults.latency = 0.0
    stack.wait_status(second, "done", timeout=WAIT)
    answer = health(stack)
    assert answer.status_code == 200 and answer.json()["oldest_queued_seconds"] is None
    stack.bot.runner.stop()
    answer = health(stack)
    assert answer.status_code == 503
    assert answer.json()["workers"]["live"] == 0
    assert "no live worker" in answer.json()["problem"]


# -- a full database disk ------------------------------------------------------------------------

DATABASE_FULL = (
    "The bot's database could not be written: the disk holding it is full (0 MB free). "
    "Nothing was changed. An admin must free space on the disk of BOT_DATABASE; then try again."
)


@pytest.fixture
def small_database_dir(tmp_path: Path) -> Iterator[Path]:
    """The database folder of the first stack, on a 4 MB tmpfs (mounted before the bot starts,
    so it is listed before `stacks`: unmounted after the bot closed its database)."""
    with mount_small_filesystem(tmp_path / "stack-0" / "database", 4) as folder:
        yield folder


def test_runtime_full_database_disk_answers_exactly_stores_nothing_and_recovers(
    small_database_dir: Path,
    stacks: StartStack,  # mounted first, unmounted after the bot stops
) -> None:
    stack = stacks(seed=SEED, env={"BOT_DATABASE": str(small_database_dir / "cvdsr.db")})
    rid, _ = pending_deletion(stack, 1)
    project = stack.cv.data.project_ids()[0]
    typed = f"export project {project} --no-images"
    store = stack.bot.store
    stored = len(store.requests_of(REQUESTER.user_id, open_only=False, limit=None))
    filler = fill(small_database_dir)
    # A command and a click whose writes fail: each is told exactly that, nothing is stored.
    answer = stack.command(REQUESTER, typed)
    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == DATABASE_FULL
    assert click_answer(stack, APPROVER, rid, "approve") == DATABASE_FULL
    assert len(store.requests_of(REQUESTER.user_id, open_only=False, limit=None)) == stored
    assert store.get(rid).approvals == ()
    assert health(stack).json()["workers"]["live"] == 2
    # Room again: the very same command and click go through, and the deletion runs.
    filler.unlink()
    export = stack.request_id(stack.command(REQUESTER, typed))
    assert stack.wait_status(export, "done", "failed", timeout=WAIT) == "done"
    assert click_answer(stack, APPROVER, rid, "approve").startswith(f"You approved {rid}")
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done"
    assert audit.verify(stack.bot.store.db.conn).ok


# -- a full work directory ------------------------------------------------------------------------


def test_runtime_full_work_dir_fails_one_export_clearly_and_nothing_else(
    stacks: StartStack, small_work_dir: Path
) -> None:
    stack = stacks(seed=SEED)
    project = stack.cv.data.project_ids()[0]
    filler = fill(small_work_dir)
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "failed"
    error = stack.bot.store.get(rid).error or ""
    assert "work directory full: 0 MB free" in error, error
    assert f"retry {rid}" in error
    stack.wait_delivered(timeout=WAIT)
    texts = thread_texts(stack, rid)
    assert any("work directory full" in t for t in texts), texts
    # Every worker is alive, and other work goes on.
    assert health(stack).json()["workers"]["live"] == 2
    image = stack.cv.data.image_ids(project, None)[0]
    other = stack.request_id(stack.command(REQUESTER, f"delete images {project} --ids {image}"))
    assert stack.wait_status(other, "pending", "failed", timeout=WAIT) == "pending"
    # Room again: the retry finishes, and the failed request's audit trail is posted.
    filler.unlink()
    stack.command(REQUESTER, f"retry {rid}")
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done"
    wait_until("the audit trail", lambda: any("audit-trail" in n for n in files_of(stack, rid)))


def test_runtime_verified_deletion_with_a_full_disk_is_done_and_its_receipt_follows(
    stacks: StartStack, small_work_dir: Path
) -> None:
    stack = stacks(seed=SEED)
    rid, images = pending_deletion(stack, 3)
    project = stack.cv.data.project_ids()[0]
    filler = fill(small_work_dir)
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done", stack.bot.store.get(
        rid
    ).error
    assert not set(images) & set(stack.cv.data.image_ids(project, None))
    wait_until(
        "the outcome in the thread",
        lambda: any("deleted and verified gone" in t for t in thread_texts(stack, rid)),
    )
    texts = thread_texts(stack, rid)
    assert any("receipt to follow" in t and "work directory full: 0 MB" in t for t in texts), texts
    assert not any("failed" in t for t in texts), texts
    assert not [n for n in files_of(stack, rid) if "receipt" in n]
    assert health(stack).json()["workers"]["live"] == 2
    filler.unlink()
    receipts = {f"{rid}-receipt.{ext}" for ext in ("json", "csv", "html")}
    wait_until("the receipt", lambda: receipts <= set(files_of(stack, rid)))
    receipt = next(f for f in stack.slack.files(CHANNEL) if f.name == f"{rid}-receipt.json")
    document = json.loads(receipt.data)
    assert document["outcome"] == "done"
    assert {row["target_id"] for row in document["items"]} == set(images)
    wait_until("the audit trail", lambda: any("audit-trail" in n for n in files_of(stack, rid)))
    assert audit.verify(stack.bot.store.db.conn).ok


def test_runtime_cancel_click_with_a_full_disk_answers_and_posts_the_trail_later(
    stacks: StartStack, small_work_dir: Path
) -> None:
    stack = stacks(seed=SEED)
    rid, _ = pending_deletion(stack, 1)
    filler = fill(small_work_dir)
    answer = stack.click(REQUESTER, rid, "cancel")
    assert answer.status_code == 200, answer.text
    assert stack.status(rid) == "cancelled"
    export = stack.command(REQUESTER, f"audit --request {rid}")
    assert export.status_code == 200
    assert "work directory full: 0 MB free" in export.json()["text"]
    filler.unlink()
    wait_until("the audit trail", lambda: any("audit-trail" in n for n in files_of(stack, rid)))


def _open_under(folder: Path) -> list[str]:
    """Return the files under `folder` this process holds open (its /proc/self/fd links)."""
    held = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue  # closed while listing
        if target.is_relative_to(folder):
            held.append(str(target))
    return held


# Room left on the disk when an export starts, every 8 KB up to more than its package (about
# 480 KB): the crash lands at each write in turn (a temp file, a download, a zip part, a JSON-lines
# listing, the COCO parts, the index pages, the README and manifest), then exports finish.
ROOMS = range(0, 560 * 1024, 24 * 1024)


@pytest.fixture
def roomy_work_dir(tmp_path: Path) -> Iterator[Path]:
    """The work directory of the first stack on a 64 MB tmpfs: room for many crashed exports."""
    with mount_small_filesystem(tmp_path / "stack-0" / "work", 64) as folder:
        yield folder


def test_runtime_exports_crashing_on_a_full_disk_leave_no_open_file_and_retry_completes(
    stacks: StartStack, roomy_work_dir: Path
) -> None:
    stack = stacks(seed=SEED)
    project = stack.cv.data.project_ids()[0]
    failed = []
    for room in ROOMS:
        # Full again (the crashed exports keep their work for the retry), then `room` free.
        filler = fill(roomy_work_dir)
        with filler.open("r+b") as f:
            f.truncate(filler.stat().st_size - room)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
            status = stack.wait_status(rid, "done", "failed", timeout=WAIT)
            gc.collect()
        assert [str(w.message) for w in caught if w.category is ResourceWarning] == [], room
        if status == "failed":  # (a finished package is open while it is uploaded)
            failed.append(rid)
            assert _open_under(roomy_work_dir / rid) == [], room
            assert "work directory full" in (stack.bot.store.get(rid).error or ""), room
            # A crashed package never looks complete: no finished part is left in its folder.
            assert not list((roomy_work_dir / rid).glob(f"{rid}-export*.zip")), room
    assert len(failed) >= len(ROOMS) // 2, failed  # the sweep really crashed most exports
    filler.unlink()
    for rid in failed:
        stack.command(REQUESTER, f"retry {rid}")
        assert stack.wait_status(rid, "done", "failed", timeout=WAIT) == "done", rid
    # Whole packages, built on what the crashes left (a kept part and the rest, so sometimes
    # two parts), checked for the first crashes and the last: uploads go at Slack's pace.
    for rid in {*failed[:3], failed[-1]}:
        wait_until(f"{rid}'s package", functools.partial(_has_package, stack, rid))
        manifest = _package(stack, rid)
        assert manifest is not None
        assert {f["name"] for f in manifest["files"]} >= {"images.jsonl", "index.html"}, rid


def _has_package(stack: Stack, rid: str) -> bool:
    return _package(stack, rid) is not None


def _package(stack: Stack, rid: str) -> dict[str, Any] | None:
    """Return the manifest of `rid`'s package once Slack holds every part of it, all sound."""
    parts = {
        f.name: f.data for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")
    }
    totals = {int(m.group(1)) for name in parts if (m := re.search(r"-of-(\d+)\.zip$", name))}
    total = max(totals, default=1)
    if not parts or len(parts) != total:
        return None
    manifest = None
    for data in parts.values():
        with zipfile.ZipFile(io.BytesIO(data)) as part:
            assert part.testzip() is None
            if "manifest.json" in part.namelist():
                manifest = json.loads(part.read("manifest.json"))
    return manifest
