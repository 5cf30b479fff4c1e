"""Soak: random requests while a fault injector takes turns at everything that goes wrong.

A driver sends requests as people would (exports of every size, deletions approved or
cancelled, cancels of running exports, retries of failed requests) into the bot over signed
HTTP. Meanwhile a fault injector cycles through: another process holding the database's write
lock (`BEGIN IMMEDIATE`, longer than SQLite's busy timeout), a full work directory (a tmpfs
filled to the last byte), Slack dropping calls and the Training API dropping and failing calls
(emulator switches). A monitor reads `/healthz` all along.

At the end every request has finished or failed with a specific reason, no worker died, no
image was deleted outside an approved plan (nor twice), and the audit chain verifies. The
figures are printed (`pytest -s`).

`make test` runs a short version (SOAK_REQUESTS=60, locks of 6-12 s). The issue's full soak:
`SOAK_REQUESTS=200 SOAK_LOCK_MIN=5 SOAK_LOCK_MAX=40 .venv/bin/pytest -s tests/test_soak.py`
(or `make soak`).
"""

from __future__ import annotations

import collections
import json
import os
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from bot import audit
from bot.lifecycle import OPEN, TERMINAL, RequestRecord
from emulators.customvision import Seed
from emulators.faults import fill, locked, mount_small_filesystem
from emulators.slack.driver import SlackDriver
from emulators.stack import (
    APPROVER,
    CHANNEL,
    REQUESTER,
    SIGNING_SECRET,
    Stack,
    start_stack,
)

REQUESTS = int(os.environ.get("SOAK_REQUESTS", "60"))
LOCK_MIN = float(os.environ.get("SOAK_LOCK_MIN", "6"))
LOCK_MAX = float(os.environ.get("SOAK_LOCK_MAX", "12"))
RNG_SEED = int(os.environ.get("SOAK_SEED", "12"))
FAULT_SECONDS = 4.0  # how long a disk-full or dropping phase lasts
QUIET_SECONDS = 1.5  # between two faults
SEED = Seed(projects=3, iterations=2, tags=4, images=150, predictions=0, image_bytes=1024)
SETTLE = 600.0  # the longest wait for everything to end once the faults stop
FOLLOW_UP = 120.0  # the longest wait for the answer that follows a holding ack


@dataclass
class Figures:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    lock_seconds: list[float] = field(default_factory=list)
    health_workers: list[int] = field(default_factory=list)
    health_503: int = 0
    oldest_queued: int = 0

    def show(self) -> dict[str, object]:
        return {
            **dict(sorted(self.counts.items())),
            "db locks": len(self.lock_seconds),
            "db locked seconds (total)": round(sum(self.lock_seconds), 1),
            "db lock longest (s)": round(max(self.lock_seconds, default=0.0), 1),
            "healthz reads": len(self.health_workers),
            "healthz fewest live workers": min(self.health_workers, default=-1),
            "healthz 503 answers": self.health_503,
            "healthz oldest queued (s)": self.oldest_queued,
        }


class Injector(threading.Thread):
    """Takes turns at the faults until stopped; always leaves the machine healthy."""

    def __init__(self, stack: Stack, work: Path, rng: random.Random, figures: Figures) -> None:
        super().__init__(name="fault-injector", daemon=True)
        self.stack = stack
        self.work = work
        self.rng = rng
        self.figures = figures
        self.stopping = threading.Event()
        self.error: BaseException | None = None
        self.turns = 0  # faults injected so far

    def run(self) -> None:
        faults = [self.lock, self.disk_full, self.slack_drops, self.api_drops]
        try:
            while not self.stopping.wait(QUIET_SECONDS):
                faults[self.turns % len(faults)]()
                self.turns += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def lock(self) -> None:
        seconds = self.rng.uniform(LOCK_MIN, LOCK_MAX)
        with locked(self.stack.config.database, seconds) as holder:
            holder.wait()
        self.figures.lock_seconds.append(seconds)

    def disk_full(self) -> None:
        filler = fill(self.work, "soak-filler.bin")
        self.figures.counts["fault: work dir full"] += 1
        self.stopping.wait(FAULT_SECONDS)
        filler.unlink()

    def slack_drops(self) -> None:
        self.figures.counts["fault: Slack dropping calls"] += 1
        self.stack.slack.drop_rate = 0.3
        self.stopping.wait(FAULT_SECONDS)
        self.stack.slack.drop_rate = 0.0

    def api_drops(self) -> None:
        self.figures.counts["fault: Training API dropping/failing calls"] += 1
        self.stack.cv.faults.drop_rate = 0.2
        self.stack.cv.faults.error_rate = 0.1
        self.stopping.wait(FAULT_SECONDS)
        self.stack.cv.faults.drop_rate = 0.0
        self.stack.cv.faults.error_rate = 0.0


class Monitor(threading.Thread):
    """Reads /healthz twice a second."""

    def __init__(self, url: str, figures: Figures) -> None:
        super().__init__(name="health-monitor", daemon=True)
        self.url = url
        self.figures = figures
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            try:
                answer = requests.get(self.url, timeout=60)
            except requests.RequestException:
                continue
            body = answer.json()
            self.figures.health_workers.append(int(body["workers"]["live"]))
            self.figures.health_503 += answer.status_code == 503
            self.figures.oldest_queued = max(
                self.figures.oldest_queued, int(body.get("oldest_queued_seconds") or 0)
            )


class Driver:
    """People using the bot: random requests, approvals, cancels and retries.

    Every request carries a ticket (SOAK-<n>), so it is found in the database whatever its
    acknowledgement said (a holding answer while the database is locked, say).
    """

    def __init__(self, stack: Stack, rng: random.Random, figures: Figures) -> None:
        assert stack.bot is not None
        self.stack = stack
        self.store = stack.bot.store
        self.rng = rng
        self.figures = figures
        # Slack gives up on a command after 3 s; the bot's answer then comes by response_url.
        # A person waits: locks last up to 40 s.
        self.slack = SlackDriver(stack.bot_url, SIGNING_SECRET, stack.slack, timeout=300)
        self.projects = stack.cv.data.project_ids()
        self.free = {p: list(stack.cv.data.image_ids(p, None)) for p in self.projects}
        self.sent = 0
        self.refused: list[str] = []  # tickets whose command was answered with a refusal
        self.decisions: dict[str, str] = {}  # request id -> what its deciders do

    def requests(self) -> list[RequestRecord]:
        """Every request the soak made, as stored."""
        rows = self.store.db.conn.execute("SELECT id FROM requests ORDER BY id").fetchall()
        return [self.store.get(int(row[0])) for row in rows]

    def send(self, text: str, kind: str) -> None:
        self.sent += 1
        ticket = f"SOAK-{self.sent}"
        shown = len(self.stack.slack.ephemerals(user_id=REQUESTER.user_id))
        answer = self.slack.command(REQUESTER.user_id, CHANNEL, f"{text} --ticket {ticket}")
        assert answer.status_code == 200, answer.text
        said = str(answer.json().get("text", ""))
        if said.startswith("Working on it"):
            said = self.follow_up(ticket, shown)
        if "R-" not in said:
            self.figures.counts[f"refused at once: {kind}: {said[:50]}"] += 1
            self.refused.append(ticket)
        self.figures.counts[f"request: {kind}"] += 1

    def follow_up(self, ticket: str, shown: int) -> str:
        """Return the answer that follows a holding acknowledgement (by response_url)."""
        deadline = time.monotonic() + FOLLOW_UP
        while time.monotonic() < deadline:
            for record in reversed(self.requests()):
                if (record.command.get("meta") or {}).get("ticket") == ticket:
                    return record.id
            for later in self.stack.slack.ephemerals(user_id=REQUESTER.user_id)[shown:]:
                if not later.text.startswith("Working on") and "R-" not in later.text:
                    return later.text
            time.sleep(0.1)
        self.figures.counts["held, and no answer followed"] += 1
        return ""

    def one(self) -> None:
        roll = self.rng.random()
        project = self.rng.choice(self.projects)
        if roll < 0.40:
            self.deletion(project)
        elif roll < 0.75:
            self.export(project)
        elif roll < 0.85:
            self.send(f"export project {project} --no-images", "export, then cancelled")
            running = [r for r in self.requests() if r.kind == "export" and r.status in OPEN]
            if running:
                self.command(f"cancel {running[-1].id}", "cancels sent")
        else:
            failed = [r for r in self.requests() if r.status == "failed"]
            if failed:
                self.command(f"retry {self.rng.choice(failed).id}", "retries sent")

    def command(self, text: str, figure: str) -> None:
        answer = self.slack.command(REQUESTER.user_id, CHANNEL, text)
        assert answer.status_code == 200, answer.text
        self.figures.counts[figure] += 1

    def export(self, project: str) -> None:
        images = self.stack.cv.data.image_ids(project, None)
        text = self.rng.choice(
            [
                "export projects",
                f"export project {project} --no-images",
                f"export project {project}",
                f"export images {project} --ids {','.join(self.rng.sample(images, 3))}",
            ]
        )
        self.send(text, "export")

    def deletion(self, project: str) -> None:
        pool = self.free[project]
        if len(pool) < 3:
            return
        chosen = [pool.pop(self.rng.randrange(len(pool))) for _ in range(self.rng.randint(1, 3))]
        self.send(f"delete images {project} --ids {','.join(chosen)}", "deletion")

    def decide(self) -> None:
        """Click Approve (or, one time in five, Cancel) on every deletion awaiting approval."""
        for record in self.requests():
            if record.kind != "delete" or record.status != "pending" or not record.message_ts:
                continue
            action = self.decisions.setdefault(
                record.id, "approve" if self.rng.random() < 0.8 else "cancel"
            )
            person = APPROVER if action == "approve" else REQUESTER
            self.slack.click(
                person.user_id, CHANNEL, record.message_ts, f"request.{action}", record.id
            )
            self.figures.counts[f"clicks: {action}"] += 1


@pytest.fixture
def soak_stack(tmp_path: Path) -> Iterator[tuple[Stack, Path]]:
    data = tmp_path / "data"
    with mount_small_filesystem(data / "work", 16) as work:
        stack = start_stack(
            data,
            seed=SEED,
            env={"BOT_HEALTH_MAX_QUEUE_SECONDS": "3600", "CUSTOM_VISION_TPS": "200"},
        )
        try:
            yield stack, work
        finally:
            stack.close()


@pytest.mark.slow
def test_soak_random_requests_under_rotating_faults(soak_stack: tuple[Stack, Path]) -> None:
    stack, work = soak_stack
    assert stack.server is not None and stack.bot is not None
    rng = random.Random(RNG_SEED)
    figures = Figures()
    original = {p: set(stack.cv.data.image_ids(p, None)) for p in stack.cv.data.project_ids()}
    injector = Injector(stack, work, random.Random(RNG_SEED + 1), figures)
    monitor = Monitor(f"http://127.0.0.1:{stack.server.port}/healthz", figures)
    driver = Driver(stack, rng, figures)
    started = time.monotonic()
    injector.start()
    monitor.start()
    try:
        # The requests are spread over two rounds of every fault (eight turns), at least.
        turn = ((LOCK_MIN + LOCK_MAX) / 2 + 3 * FAULT_SECONDS) / 4 + QUIET_SECONDS
        gap = 2 * 8 * turn / REQUESTS
        while driver.sent < REQUESTS or injector.turns < 8:
            if driver.sent < REQUESTS:
                driver.one()
            driver.decide()
            time.sleep(rng.uniform(0.0, gap))
    finally:
        injector.stopping.set()
        injector.join(LOCK_MAX + 60)
    assert injector.error is None, injector.error
    # Faults over: every deletion gets its decision, everything ends, Slack gets everything.
    deadline = time.monotonic() + SETTLE
    while any(r.status not in TERMINAL for r in driver.requests()):
        assert time.monotonic() < deadline, [
            (r.id, r.status) for r in driver.requests() if r.status not in TERMINAL
        ]
        driver.decide()
        time.sleep(0.2)
    stack.wait_delivered(timeout=SETTLE)
    monitor.stopping.set()
    monitor.join(60)
    figures.counts["elapsed seconds"] = round(time.monotonic() - started)

    try:
        # Every request finished, or failed saying exactly why; none was refused and then done.
        records = driver.requests()
        tickets = {str(t) for r in records if (t := (r.command.get("meta") or {}).get("ticket"))}
        lied = tickets & set(driver.refused)
        figures.counts["answered as refused, yet recorded"] = len(lied)
        assert len(records) == driver.sent - len(driver.refused) + len(lied)
        for record in records:
            figures.counts[f"outcome: {record.status}"] += 1
            if record.status == "failed":
                assert record.error and "internal error" not in record.error, (
                    record.id,
                    record.error,
                )
        for event in audit.events(stack.bot.store.db.conn):
            if event.action == "request.failed":
                error = str(event.details.get("error", ""))
                assert error and "internal error" not in error, (event.request_id, error)
                figures.counts[f"failed on the way: {error.split(':')[0][:60]}"] += 1
        # No worker died, ever.
        assert figures.health_workers and min(figures.health_workers) == stack.bot.runner.workers
        final = requests.get(f"http://127.0.0.1:{stack.server.port}/healthz", timeout=30)
        assert final.status_code == 200, final.text
        # Nothing deleted outside an approved plan, nothing twice.
        approved: set[str] = set()
        for record in records:
            if record.kind == "delete" and record.approvals:
                items = stack.bot.store.deletion_items(record.number)
                approved |= {i.target_id.lower() for i in items if i.kind == "image"}
        deleted = {k.lower(): n for k, n in stack.cv.deleted_image_counts().items()}
        assert set(deleted) <= approved, set(deleted) - approved
        assert set(deleted.values()) <= {1}, {k: n for k, n in deleted.items() if n > 1}
        vanished = {
            i.lower() for p, ids in original.items() for i in ids - set(stack.cv.data.image_ids(p))
        }
        assert vanished == set(deleted)
        figures.counts["images deleted (all in approved plans, once each)"] = len(deleted)
        # The audit chain verifies.
        verification = audit.verify(stack.bot.store.db.conn)
        assert verification.ok, verification.summary()
        figures.counts["audit events (chain verifies)"] = verification.count
        figures.counts["Slack calls dropped"] = stack.slack.dropped
        assert not lied, f"answered as refused (nothing done), yet recorded: {sorted(lied)}"
        assert not figures.counts["held, and no answer followed"]
    finally:
        print(f"\nsoak of {driver.sent} requests: {json.dumps(figures.show(), indent=1)}")
