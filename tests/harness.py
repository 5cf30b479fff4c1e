"""A bot without Slack for job tests: the emulator, a real store, a runner and the client.

Jobs run synchronously in the test's thread (`run_jobs`), so each test reads like a script.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot import audit, commands, parser
from bot.clock import FakeClock
from bot.db import Database
from bot.lifecycle import TRANSITIONS, JobKind, RequestKind, Status
from bot.runner import JobHandler, Runner, Settings
from bot.store import Store
from bot.training import TrainingClient
from emulators.customvision import CustomVisionEmulator, Faults, Seed

REQUESTER = "U0ALICE"
CHANNEL = "C0DSR"


def walk(store: Store, conn: sqlite3.Connection, number: int, *path: Status) -> None:
    """Move a stored request along `path`, each step by a role the lifecycle allows it to."""
    for to in path:
        current = store.status_of(number)  # this thread's connection: inside the transaction
        (by, *_) = sorted(TRANSITIONS[(current, to)])
        assert store.transition(conn, number, to=to, by=by, actor="U0TEST"), (current, to)


def stored_deletion(store: Store, conn: sqlite3.Connection, requester: str = "U0REQ") -> int:
    """Store a bare deletion of images (previewing) in C0DSR; return its number."""
    return store.create_request(
        conn,
        kind=RequestKind.DELETE,
        command={"verb": "delete"},
        text="delete images",
        requester=requester,
        channel="C0DSR",
        status=Status.PREVIEWING,
    )


def store_request(
    store: Store, conn: sqlite3.Connection, text: str = "export projects", *, status: Status
) -> int:
    """Store the request `text` types, parsed, in `status`, as the service stores it; return
    its number."""
    command = parser.parse(text)
    assert isinstance(command, commands.Export | commands.Delete)
    kind = RequestKind.EXPORT if isinstance(command, commands.Export) else RequestKind.DELETE
    return store.create_request(
        conn,
        kind=kind,
        command=command.to_dict(),
        text=text,
        requester=REQUESTER,
        channel=CHANNEL,
        status=status,
    )


@dataclass
class JobHarness:
    cv: CustomVisionEmulator
    store: Store
    runner: Runner
    client: TrainingClient
    clock: FakeClock
    work_dir: Path
    projects: tuple[str, ...] = ()

    @property
    def p(self) -> str:
        return self.projects[0]

    def store_request(self, text: str, *, status: Status, job: JobKind) -> int:
        """Store a parsed request and queue its job, as the service does."""
        with self.store.write() as conn:
            number = store_request(self.store, conn, text, status=status)
            self.store.enqueue_job(conn, number, job)
        return number

    def run_jobs(self) -> None:
        while (job := self.store.claim_job("test-worker", timedelta(minutes=5))) is not None:
            self.runner.run_one(job)

    def uploads(self, number: int) -> dict[str, dict[str, Any]]:
        rows = self.store.db.conn.execute(
            "SELECT key, payload FROM outbox WHERE kind = 'upload' AND request_id = ?", (number,)
        ).fetchall()
        return {key: json.loads(payload) for key, payload in rows}

    def events(self, number: int, action: str) -> list[audit.Event]:
        rid = f"R-{number}"
        return [e for e in audit.events(self.store.db.conn, request_id=rid) if e.action == action]


@contextmanager
def job_parts(
    tmp_path: Path,
    key: str,
    seed: Seed,
    faults: Faults | None,
    handlers: Mapping[str, JobHandler],
    settings: Mapping[str, Any] | None = None,
) -> Iterator[tuple[CustomVisionEmulator, Store, Runner, TrainingClient, FakeClock]]:
    """Start the emulator and wire a store, a client (no waits between retries) and a runner."""
    with CustomVisionEmulator(key, seed=seed, faults=faults) as cv:
        db = Database(tmp_path / "bot.db")
        clock = FakeClock()
        store = Store(db, clock, secrets=[key])
        client = TrainingClient(
            cv.endpoint, key, tps=1000.0, max_attempts=3, backoff_base=0.0, sleep=lambda s: None
        )
        runner = Runner(
            store,
            client,
            handlers,
            clock=clock,
            work_dir=tmp_path / "work",
            settings=Settings(**(settings or {})),
        )
        try:
            yield cv, store, runner, client, clock
        finally:
            client.close()
            db.close()


def children() -> dict[int, str]:
    """Return this process's child processes (zombies too): pid -> state letter."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue  # it ended meanwhile
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if int(fields.get("PPid", "0")) == os.getpid():
            found[int(entry.name)] = fields["State"].split()[0]
    return found
