"""Durability: the bot as a process, killed at random moments and restarted, under faults.

The emulators run in this process and outlive the bot; the bot runs as `python -m bot serve`
in a child process, the way it is deployed. A test approves a deletion of thousands of images
and an export, kills the bot with SIGKILL at moments drawn from a seeded RNG, restarts it, and
repeats; then it checks from the emulators' records and the database that every targeted image
was deleted exactly once and nothing else, that each export part was posted once and the
package is complete, that the audit chain verifies and holds every event, and that no request
is stuck. The same runs with the Training API answering 5xx, 429 and dropping connections and
with Slack refusing calls; a SIGTERM test and a Training API outage test complete the set.

The figures of each run (kills, where they landed, resumes) are printed (`pytest -s`).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient

from bot import audit
from bot.clock import SystemClock
from bot.db import Database
from bot.lifecycle import (
    TERMINAL,
    ItemStatus,
    JobKind,
    JobStatus,
    RequestRecord,
    Status,
)
from bot.policy import Rules
from bot.runner import JobContext, JobHandler, JobInterrupted, Outcome, Runner, Settings
from bot.store import Store
from bot.training import TrainingClient
from emulators.customvision import CustomVisionEmulator, Exchange, Faults, Seed
from emulators.slack.driver import SlackDriver
from emulators.slack.webapi import DEFAULT_SCOPES, SlackEmulator
from emulators.stack import (
    APPROVER,
    AUDIT_CHANNEL,
    BOT_TOKEN,
    CHANNEL,
    REQUESTER,
    SIGNING_SECRET,
    bot_env,
    populate_slack,
    resource_key,
    resources_env,
    start_emulators,
    start_stack,
)
from handlers.outbox import Deliverer
from tests.harness import store_request, walk

SERVING = re.compile(r"serving \S+ on http://[0-9.]+:(\d+)/slack/events")
REQUEST_ID = re.compile(r"\bR-\d+\b")
RESUMED = "resumed after a restart"
# A record of the bot's text log starts with its time; the lines of a traceback do not.
LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
CRASHES = ("crashed:", "a decision failed", "unhandled error", "hit an error; retrying")
WAIT = 180.0  # generous: waits end as soon as the outcome is there
SLOW_ANSWER = 0.2  # seconds a DeleteImages answer is held back after the images are deleted


# -- the bot as a child process ----------------------------------------------------------------


class BotProcess:
    """`python -m bot serve` in a child process; one `start()` per life."""

    def __init__(self, folder: Path, env: Mapping[str, str]) -> None:
        self.folder = folder
        inherited = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("SLACK_", "CUSTOM_VISION_", "BOT_"))
        }
        self.env = {**inherited, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.lives = 0
        self.url = ""

    @property
    def log(self) -> Path:
        return self.folder / f"bot-{self.lives}.log"

    def start(self, timeout: float = WAIT) -> None:
        """Start a new life and wait until it serves (its start-up checks passed)."""
        assert self.proc is None
        self.lives += 1
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve"],
                env=self.env,
                cwd=self.folder,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while (found := SERVING.search(self.log.read_text(errors="replace"))) is None:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop_hard()
                raise AssertionError(f"the bot did not start:\n{self.tail()}")
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{found.group(1)}"

    def driver(self, slack: SlackEmulator) -> SlackDriver:
        """Return a driver that signs requests into this life of the bot."""
        return SlackDriver(f"{self.url}/slack/events", SIGNING_SECRET, slack)

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed."""
        self.stop_hard()

    def stop_hard(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def terminate(self, timeout: float = WAIT) -> int:
        """SIGTERM; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        finally:
            self.stop_hard()
        return code

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def crashes(self) -> list[str]:
        """Return every record of every life's log that reports a crash, with its traceback."""
        found: list[str] = []
        for life in sorted(self.folder.glob("bot-*.log")):
            record: list[str] = []
            for line in [*life.read_text(errors="replace").splitlines(), "0000-00-00 00:00:00"]:
                if LOG_RECORD.match(line):
                    if record and any(c in record[0] for c in CRASHES):
                        found.append(f"{life.name}: " + "\n".join(record))
                    record = []
                record.append(line)
        return found


# -- one durability run: emulators, the bot, the database --------------------------------------


@dataclass
class Run:
    cv: CustomVisionEmulator
    slack: SlackEmulator
    bot: BotProcess
    folder: Path
    rng: random.Random
    figures: collections.Counter[str] = field(default_factory=collections.Counter)
    _db: Database | None = None

    @property
    def store(self) -> Store:
        if self._db is None:
            self._db = Database(self.folder / "cvdsr.db")
        return Store(self._db, SystemClock())

    @property
    def conn(self) -> Any:
        return self.store.db.conn

    def close(self) -> None:
        self.bot.stop_hard()
        # Captured output, shown when the test failed: the cause of an "internal error".
        for crash in self.bot.crashes():
            print(f"\nthe bot's log reports a crash: {crash}")
        if self._db is not None:
            self._db.close()
        self.cv.stop()
        self.slack.stop()

    # -- waiting ---------------------------------------------------------------------------

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        """Wait until `predicate()` holds; fail naming `what` (with the bot's log) if never."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"still waiting for {what}; bot log:\n{self.bot.tail()}")
            time.sleep(0.05)

    def record(self, rid: str) -> RequestRecord:
        return self.store.get(rid)

    def wait_status(self, rid: str, *statuses: str) -> RequestRecord:
        self.wait_for(
            f"{rid} to be {'/'.join(statuses)}", lambda: self.record(rid).status in statuses
        )
        return self.record(rid)

    def settled(self) -> bool:
        """True when every request is finished, no job is left and Slack has everything."""
        conn = self.conn
        open_requests = conn.execute(
            f"SELECT COUNT(*) FROM requests WHERE status NOT IN ({','.join('?' * len(TERMINAL))})",
            sorted(TERMINAL),
        ).fetchone()[0]
        open_jobs = conn.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
        ).fetchone()[0]
        pending = conn.execute("SELECT COUNT(*) FROM outbox WHERE status = 'pending'").fetchone()[0]
        return int(open_requests) == 0 and int(open_jobs) == 0 and int(pending) == 0

    # -- acting through Slack --------------------------------------------------------------

    def command(self, text: str) -> str:
        """Type `/cv text` as the requester; return the request id the bot answered with."""
        answer = self.bot.driver(self.slack).command(REQUESTER.user_id, CHANNEL, text)
        assert answer.status_code == 200, answer.text
        found = REQUEST_ID.search(str(answer.json()["text"]))
        assert found is not None, answer.json()
        return found.group(0)

    def approved_deletion(self, text: str) -> str:
        """Request a deletion, wait for its preview, approve it; return its id."""
        rid = self.command(text)
        self.wait_for(
            f"{rid}'s approval message",
            lambda: self.record(rid).status != "previewing" and bool(self.record(rid).message_ts),
        )
        record = self.record(rid)
        assert record.status == "pending", record.error
        assert record.message_ts is not None
        # An approver clicks a button they see: wait until the message shows the buttons.
        self.wait_for(
            f"{rid}'s approval buttons",
            lambda: any(
                e.action == "approval.posted" for e in audit.events(self.conn, request_id=rid)
            ),
        )
        driver = self.bot.driver(self.slack)
        driver.click(APPROVER.user_id, CHANNEL, record.message_ts, "request.approve", rid)
        # The click is acknowledged before it is stored: wait for the approval to be recorded.
        self.wait_status(rid, "approved", "running", "done", "failed")
        return rid

    # -- observing after a kill --------------------------------------------------------------

    def note_kill(self) -> None:
        """Classify where a kill landed, from the state the dead process left."""
        conn = self.conn
        self.figures["kills"] += 1
        running = [k for (k,) in conn.execute("SELECT kind FROM jobs WHERE status = 'running'")]
        if not running:
            self.figures["kills while no job ran"] += 1
        if "export" in running:
            self.figures["kills during an export job"] += 1
        if "delete" in running:
            self.figures["kills during a delete job"] += 1
            sending = [
                t
                for (t,) in conn.execute(
                    "SELECT target_id FROM deletion_items WHERE status = 'sending'"
                )
            ]
            open_items = conn.execute(
                "SELECT COUNT(*) FROM deletion_items WHERE status NOT IN ('deleted', 'gone')"
            ).fetchone()[0]
            if sending:
                deleted = self.cv.deleted_image_counts()
                if any(t in deleted for t in sending):
                    self.figures["kills mid-batch, service had deleted, bot not told"] += 1
                else:
                    self.figures["kills mid-batch, before the service deleted"] += 1
            elif open_items == 0:
                self.figures["kills while verifying"] += 1
        half_uploads = conn.execute(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'upload' AND status = 'pending'"
            " AND result IS NOT NULL"
        ).fetchone()[0]
        if half_uploads:
            self.figures["kills between a file's upload and its sharing"] += 1


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(seed: Seed, *, rng_seed: int, faults: Faults | None = None, **env: str) -> Run:
        cv, slack = start_emulators(seed, faults)
        folder = tmp_path / f"run{len(runs)}"
        folder.mkdir()
        # A short lease: a job killed with the bot resumes as soon as the lease ends.
        settings = bot_env(
            cv, slack, folder, PORT="0", BOT_MAX_FILE_MB="1", BOT_JOB_LEASE_SECONDS="5", **env
        )
        run = Run(cv, slack, BotProcess(folder, settings), folder, random.Random(rng_seed))
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


def hold_back_delete_answers(cv: CustomVisionEmulator, seconds: float = SLOW_ANSWER) -> None:
    """Make each DeleteImages answer leave `seconds` after the images are gone.

    That is the window a crash leaves the outcome of a batch unknown to the bot.
    """

    def hook(exchange: Exchange) -> None:
        if exchange.operation_id == "DeleteImages":
            time.sleep(seconds)

    cv.hooks.append(hook)


def untagged_everywhere(cv: CustomVisionEmulator, project: str) -> set[str]:
    """Return the images `delete images <project> --untagged` targets: untagged in any scope."""
    data = cv.data
    found: set[str] = set()
    for scope in [None, *data.iteration_ids(project)]:
        found |= {
            i for i in data.image_ids(project, scope) if not data.image_tag_ids(project, i, scope)
        }
    return {i.lower() for i in found}


def kill_trials(
    run: Run,
    kills: int,
    *,
    low: float,
    high: float,
    before: Callable[[], None] = lambda: None,
    when: Callable[[], bool] | None = None,
) -> None:
    """Kill the bot `kills` times, each a random `low`..`high` seconds into its life (or after
    `when()` holds, if given), and start it again after `before()`; leave it running."""
    for _ in range(kills):
        if when is not None:
            run.wait_for("the moment to kill", lambda: when() or run.settled())
        time.sleep(run.rng.uniform(low, high))
        run.bot.kill()
        run.note_kill()
        before()
        run.bot.start()


def half_uploaded(run: Run) -> bool:
    """True when a file's bytes are uploaded but the file is not yet shared in the thread."""
    (count,) = run.conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'upload' AND status = 'pending'"
        " AND result IS NOT NULL"
    ).fetchone()
    return int(count) > 0


# -- what must hold after every run ------------------------------------------------------------


def thread_texts(run: Run, rid: str) -> list[str]:
    thread = run.record(rid).message_ts
    assert thread is not None
    return [m.text for m in run.slack.messages(CHANNEL, thread)]


def receipts_of(run: Run, rid: str) -> list[dict[str, Any]]:
    """Return the deletion receipts (JSON) posted for `rid`, oldest first."""
    pattern = re.compile(rf"{rid}-receipt(-\d+)?\.json")
    return [json.loads(f.data) for f in run.slack.files(CHANNEL) if pattern.fullmatch(f.name)]


def check_deleted_exactly_once(
    run: Run, rid: str, targeted: set[str], *, receipts: int = 1
) -> None:
    """Every targeted image was deleted once and nothing else: by the service's own count, by
    the calls the service answered 2xx, by the plan, and by the audit trail."""
    assert run.record(rid).status == "done", run.record(rid).error
    deleted = {k.lower(): n for k, n in run.cv.deleted_image_counts().items()}
    assert deleted == dict.fromkeys(targeted, 1)
    sent: collections.Counter[str] = collections.Counter()
    for call in run.cv.calls_to("DeleteImages"):
        if 200 <= call.status < 300:
            sent.update(i.lower() for i in call.query["imageIds"].split(","))
    assert dict(sent) == dict.fromkeys(targeted, 1), "a confirmed batch was sent again"
    items = run.store.deletion_items(run.record(rid).number)
    assert {i.target_id.lower() for i in items if i.kind == "image"} == targeted
    assert {(i.status, i.verified) for i in items} <= {("deleted", "gone"), ("gone", "gone")}
    confirmed: collections.Counter[str] = collections.Counter()
    for event in audit.events(run.conn, request_id=rid):
        if event.action in ("api.call", "api.probe") and event.outcome in ("ok", "gone"):
            confirmed.update(t.lower() for t in event.targets)
    assert dict(confirmed) == dict.fromkeys(targeted, 1)
    posted = receipts_of(run, rid)
    assert len(posted) == receipts, [r["outcome"] for r in posted]
    receipt = posted[-1]
    assert receipt["outcome"] == "done"
    assert {i["target_id"].lower() for i in receipt["items"]} == targeted
    assert {i["verified"] for i in receipt["items"]} == {"gone"}
    texts = thread_texts(run, rid)
    assert any("deleted and verified gone" in t for t in texts), texts


def check_export_posted_once_and_complete(run: Run, rid: str, project: str) -> None:
    """Each part is in the thread once, as recorded; the package is complete byte for byte."""
    record = run.record(rid)
    assert record.status == "done", record.error
    assert record.result is not None
    parts = {p["name"]: p for p in record.result["parts"]}
    announced = [f for f in run.slack.files() if f.name.startswith(f"{rid}-export")]
    # An upload a crash cut off before it was shared stays private and unposted (as in Slack).
    posted = [f for f in announced if f.shares]
    run.figures["export uploads never shared (cut off by a kill)"] = len(announced) - len(posted)
    assert sorted(f.name for f in posted) == sorted(parts), "a part is missing or posted twice"
    content: dict[str, bytes] = {}
    for f in posted:
        assert f.shares == [(CHANNEL, record.message_ts)], (f.name, f.shares)
        assert hashlib.sha256(f.data).hexdigest() == parts[f.name]["sha256"]
        assert len(f.data) == parts[f.name]["size"]
        with zipfile.ZipFile(io.BytesIO(f.data)) as archive:
            for name in archive.namelist():
                assert name not in content, f"{name} is in two parts"
                content[name] = archive.read(name)
    # An entry larger than a part is cut into pieces <name>.001, .002, ... (joined with cat).
    for piece in sorted(n for n in content if re.search(r"\.\d{3}$", n)):
        content[piece[:-4]] = content.get(piece[:-4], b"") + content.pop(piece)
    manifest = json.loads(content.pop("manifest.json"))
    assert manifest["request"]["id"] == rid
    assert sorted(p["name"] for p in manifest["parts"]) == sorted(parts)
    listed = {f["name"]: f for f in manifest["files"]}
    assert set(content) == set(listed) - {"manifest.json"}
    for name, entry in listed.items():
        if name != "manifest.json":  # its own checksum cannot be inside it
            assert hashlib.sha256(content[name]).hexdigest() == entry["sha256"], name
            assert len(content[name]) == entry["size"], name

    data = run.cv.data
    scopes = [None, *data.iteration_ids(project)]
    rows = [json.loads(line) for line in content["images.jsonl"].splitlines() if line.strip()]
    seen = [(r["scope"], r["iterationId"], r["image"]["id"]) for r in rows]
    expected = {
        ("workspace" if s is None else "iteration", s, i)
        for s in scopes
        for i in data.image_ids(project, s)
    }
    assert len(seen) == len(set(seen)) and set(seen) == expected
    files = {r["image"]["id"]: r["file"] for r in rows}
    assert len(set(files.values())) == len(files)
    for image_id, name in files.items():
        assert content[name] == run.cv.image_bytes(image_id), name
    predictions = [json.loads(line) for line in content["predictions.jsonl"].splitlines() if line]
    ids = [p["prediction"]["id"] for p in predictions]
    assert sorted(ids) == sorted(data.prediction_ids(project))
    assert all(p["file"] in content for p in predictions)

    events = list(audit.events(run.conn, request_id=rid))
    posted_events = [e for e in events if e.action == "file.posted" and e.details["name"] in parts]
    assert sorted(e.details["name"] for e in posted_events) == sorted(parts)
    assert {e.targets[0] for e in posted_events} == {f.id for f in posted}


def check_audit_and_nothing_stuck(run: Run, deletions: list[str], exports: list[str]) -> None:
    """The chain verifies, holds each request's events once, and nothing is left undone."""
    conn = run.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert audit.verify(conn).ok, audit.verify(conn).summary()
    assert run.settled()
    # Every audit event reached the audit channel's mirror (queued in the event's transaction).
    (events,) = conn.execute("SELECT COUNT(*) FROM audit_events").fetchone()
    mirrored = {
        json.loads(p)["seq"]
        for (p,) in conn.execute("SELECT payload FROM outbox WHERE kind = 'mirror'")
    }
    assert mirrored == set(range(1, events + 1))
    witnessed = {
        seq
        for m in run.slack.messages(AUDIT_CHANNEL)
        for seq, _ in audit.parse_mirror_lines(m.text)
    }
    assert witnessed == set(range(1, events + 1))
    failed = conn.execute("SELECT kind, result FROM outbox WHERE status IN ('failed', 'held')")
    assert failed.fetchall() == []
    for rid in deletions + exports:
        actions = collections.Counter(e.action for e in audit.events(conn, request_id=rid))
        once = ["command.received", "request.queued", "request.completed"]
        if rid in deletions:
            once += ["preview.computed", "approval.posted", "approval.granted"]
            once += ["request.approved"]
        for action in once:
            assert actions[action] == 1, (rid, action, actions)
        trails = [f for f in run.slack.files(CHANNEL) if f.name == f"{rid}-audit-trail.jsonl"]
        assert len(trails) == 1, (rid, [f.name for f in trails])


def count_duplicate_messages(run: Run, rids: list[str]) -> None:
    """Figure: thread or audit-mirror messages posted twice (Slack has no idempotency key, so a
    crash between a post and its commit repeats it; files are checked with files.info)."""
    texts = [m.text for m in run.slack.messages(AUDIT_CHANNEL)]
    for rid in rids:
        texts += [t for t in thread_texts(run, rid) if t]
    run.figures["messages posted twice"] = len(texts) - len(set(texts))


def resumed_jobs(run: Run) -> int:
    (count,) = run.conn.execute(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'job.resumed'"
    ).fetchone()
    return int(count)


def report(name: str, run: Run) -> None:
    figures = dict(sorted(run.figures.items()))
    print(f"\n{name}: {json.dumps(figures, indent=1)}")


# -- the tests ---------------------------------------------------------------------------------


SEED = Seed(projects=2, iterations=2, tags=3, images=200, predictions=8, image_bytes=4096, seed=7)


@pytest.mark.slow
def test_durability_sigkill_at_random_moments_deletes_once_and_posts_export_once(
    make_run: Callable[..., Run],
) -> None:
    run = make_run(SEED, rng_seed=20_261_127, faults=Faults(latency=0.01))
    doomed, exported = run.cv.data.project_ids()
    run.cv.data.add_images(doomed, 2800)
    run.cv.data.add_images(exported, 600)
    targeted = untagged_everywhere(run.cv, doomed)
    assert len(targeted) > 2800
    hold_back_delete_answers(run.cv)
    run.bot.start()

    deletion = run.approved_deletion(f"delete images {doomed} --untagged --ticket DSR-1")
    # Short lives while the deletion runs alone, then longer ones with an export beside it,
    # then kills aimed at the uploads: Slack holds each completion back (429, Retry-After 2 s)
    # after the bytes went up, and the kill lands in that window.
    kill_trials(run, 6, low=0.15, high=1.0)

    def hold_back_sharing() -> None:
        run.slack.inject_ratelimit("files.completeUploadExternal", retry_after=2)

    hold_back_sharing()
    export = run.command(f"export project {exported} --ticket DSR-2")
    kill_trials(run, 5, low=0.3, high=1.5, before=hold_back_sharing)
    kill_trials(
        run, 3, low=0.0, high=0.5, before=hold_back_sharing, when=lambda: half_uploaded(run)
    )
    run.wait_for("every request to finish and reach Slack", run.settled)
    assert run.bot.terminate() == 0

    run.figures["resumed jobs"] = resumed_jobs(run)
    run.figures["lives"] = run.bot.lives
    count_duplicate_messages(run, [deletion, export])
    try:
        check_deleted_exactly_once(run, deletion, targeted)
        check_export_posted_once_and_complete(run, export, exported)
        check_audit_and_nothing_stuck(run, [deletion], [export])
    finally:
        report("SIGKILL trials", run)
    assert any(RESUMED in t for t in thread_texts(run, deletion))
    export_job = run.store.job_for(run.record(export).number, JobKind.EXPORT)
    assert export_job is not None
    if export_job.attempts > 1:
        assert any(RESUMED in t for t in thread_texts(run, export))
    assert run.figures["kills during a delete job"] >= 1


def slack_faults(run: Run) -> None:
    """Queue Slack refusals for the coming calls: 429s with Retry-After and errors.

    Each life gets some; the first three also refuse each step of a file upload once (an
    upload's retries back off, so more would only make the test slow).
    """
    slack = run.slack
    slack.inject_ratelimit("chat.postMessage", retry_after=1)
    slack.inject_error("chat.postMessage", "internal_error")
    slack.inject_ratelimit("chat.update", retry_after=1)
    slack.inject_ratelimit("files.info", retry_after=1)
    if run.bot.lives < 3:
        slack.inject_ratelimit("files.getUploadURLExternal", retry_after=1)
        slack.inject_error("upload", "internal_error")  # HTTP 500 for the bytes
        slack.inject_error("files.completeUploadExternal", "internal_error")
        slack.inject_ratelimit("files.completeUploadExternal", retry_after=1)


@pytest.mark.slow
def test_durability_sigkill_under_training_api_and_slack_faults(
    make_run: Callable[..., Run],
) -> None:
    # About one Training API call in five fails: 10% 500/503, 5% dropped connections, and the
    # gateway's 429 when the bot (allowed 40 calls/s) goes over the resource's 20 calls/s.
    faults = Faults(latency=0.01, error_rate=0.1, drop_rate=0.05, tps_cap=20)
    run = make_run(SEED, rng_seed=5_318, faults=faults, CUSTOM_VISION_TPS="40")
    doomed, exported = run.cv.data.project_ids()
    run.cv.data.add_images(doomed, 2000)
    run.cv.data.add_images(exported, 400)
    targeted = untagged_everywhere(run.cv, doomed)
    hold_back_delete_answers(run.cv)
    slack_faults(run)
    run.bot.start()

    deletion = run.approved_deletion(f"delete images {doomed} --untagged --ticket DSR-3")
    export = run.command(f"export project {exported} --ticket DSR-4")
    kill_trials(run, 8, low=0.2, high=1.3, before=lambda: slack_faults(run))
    run.wait_for("every request to finish and reach Slack", run.settled)
    assert run.bot.terminate() == 0

    api = [c for c in run.cv.calls if c.operation_id not in ("Blob", "Unknown")]
    run.figures["training API calls"] = len(api)
    run.figures["answered 5xx"] = sum(1 for c in api if c.status >= 500)
    run.figures["answered 429"] = sum(1 for c in api if c.status == 429)
    run.figures["dropped unanswered"] = sum(1 for c in api if c.status == 0)
    run.figures["slack calls"] = len(run.slack.calls)
    run.figures["slack calls refused (429 or error)"] = sum(
        1 for c in run.slack.calls if c.status == 429 or c.status >= 500 or not c.ok
    )
    run.figures["resumed jobs"] = resumed_jobs(run)
    run.figures["lives"] = run.bot.lives
    count_duplicate_messages(run, [deletion, export])
    faulty = run.figures["answered 5xx"] + run.figures["answered 429"]
    assert faulty + run.figures["dropped unanswered"] > len(api) // 10  # the faults happened
    try:
        check_deleted_exactly_once(run, deletion, targeted)
        check_export_posted_once_and_complete(run, export, exported)
        check_audit_and_nothing_stuck(run, [deletion], [export])
    finally:
        report("SIGKILL trials under faults", run)
    assert any(RESUMED in t for t in thread_texts(run, deletion))


@pytest.mark.slow
def test_durability_sigterm_stops_at_a_checkpoint_exits_0_and_resumes(
    make_run: Callable[..., Run],
) -> None:
    run = make_run(SEED, rng_seed=1, faults=Faults(latency=0.01), BOT_WORKERS="1")
    doomed, exported = run.cv.data.project_ids()
    run.cv.data.add_images(doomed, 1300)
    targeted = untagged_everywhere(run.cv, doomed)
    hold_back_delete_answers(run.cv, 0.3)
    run.bot.start()
    deletion = run.approved_deletion(f"delete images {doomed} --untagged --ticket DSR-5")
    # One worker: the export waits in the queue behind the deletion.
    export = run.command(f"export project {exported} --ticket DSR-6")
    number = run.record(deletion).number
    run.wait_for(
        "two batches deleted",
        lambda: len(run.store.deletion_items(number, status=ItemStatus.DELETED)) >= 512,
    )

    assert run.bot.terminate() == 0
    assert "stopping: waiting for running jobs to reach a checkpoint" in run.bot.tail()
    # The running batch reached its checkpoint: everything the service deleted is recorded.
    items = run.store.deletion_items(number)
    assert [i for i in items if i.status == "sending"] == []
    recorded = {i.target_id.lower() for i in items if i.status in ("deleted", "gone")}
    assert {k.lower() for k in run.cv.deleted_image_counts()} == recorded
    assert 0 < len(recorded) < len(targeted)
    job = run.store.job_for(number, JobKind.DELETE)
    assert job is not None and job.status == "queued" and job.checkpoint["batch"] >= 2
    queued = run.store.job_for(run.record(export).number, JobKind.EXPORT)
    assert queued is not None and (queued.status, queued.attempts) == ("queued", 0)
    assert run.record(deletion).status == "running"  # its job waits in the queue
    actions = [e.action for e in audit.events(run.conn, request_id=deletion)]
    assert actions[-1] == "job.interrupted"

    run.bot.start()
    run.wait_for("every request to finish and reach Slack", run.settled)
    assert run.bot.terminate() == 0
    check_deleted_exactly_once(run, deletion, targeted)
    check_export_posted_once_and_complete(run, export, exported)
    check_audit_and_nothing_stuck(run, [deletion], [export])
    assert any(RESUMED in t for t in thread_texts(run, deletion))


@pytest.mark.slow
def test_durability_training_api_outage_fails_with_an_exact_receipt_then_retry_finishes(
    make_run: Callable[..., Run],
) -> None:
    run = make_run(SEED, rng_seed=2, faults=Faults(latency=0.01))
    doomed, _ = run.cv.data.project_ids()
    run.cv.data.add_images(doomed, 1300)
    targeted = untagged_everywhere(run.cv, doomed)
    hold_back_delete_answers(run.cv)
    run.bot.start()
    deletion = run.approved_deletion(f"delete images {doomed} --untagged --ticket DSR-7")
    number = run.record(deletion).number
    run.wait_for(
        "two batches deleted",
        lambda: len(run.store.deletion_items(number, status=ItemStatus.DELETED)) >= 512,
    )

    run.cv.faults.error_rate = 1.0  # every Training API call now answers 500 or 503
    record = run.wait_status(deletion, "failed", "done")
    assert record.status == "failed"
    run.wait_for("the partial receipt", lambda: len(receipts_of(run, deletion)) == 1)
    (receipt,) = receipts_of(run, deletion)
    assert receipt["outcome"] == "partial"
    items = receipt["items"]
    assert {i["target_id"].lower() for i in items} == targeted
    # The receipt is the exact state: what the service removed, and nothing more, is "deleted".
    removed = {k.lower() for k in run.cv.deleted_image_counts()}
    assert {i["target_id"].lower() for i in items if i["status"] == "deleted"} == removed
    assert 512 <= len(removed) < len(targeted)
    # The batch in flight failed before its call (the re-read failed: "failed"), or its call
    # answered 5xx and the re-read that would settle it failed too: outcome unknown.
    stopped = [i for i in items if i["status"] in ("failed", "sending")]
    assert stopped and len({i["batch"] for i in stopped}) == 1
    assert {i["http_status"] for i in stopped if i["status"] == "failed"} <= {500, 503}
    assert {i["result"] for i in stopped} <= {
        "not removed",
        "outcome unknown (a retry re-reads it first)",
    }
    left = [i for i in items if i["status"] != "deleted"]
    assert "pending" in {i["status"] for i in left} <= {"failed", "sending", "pending"}
    data = run.cv.data
    scopes = [None, *data.iteration_ids(doomed)]
    for item in left:
        assert any(data.has_image(doomed, item["target_id"], s) for s in scopes)
    assert {i["verified"] for i in items} == {None}  # nothing claims a verification
    unknown = [i for i in left if i["status"] == "sending"]
    not_yet = len(left) - len(unknown)
    stated = f"Removed: {len(removed):,} images."
    if unknown:
        stated += f" Outcome unknown (the service could not be re-read): {len(unknown):,} images."
    stated += f" Not removed yet: {not_yet:,} images."
    assert stated in receipt["note"]
    assert record.error is not None and stated in record.error
    run.wait_for(
        "the failure in the thread",
        lambda: any(
            f"{deletion} failed." in t and stated in t for t in thread_texts(run, deletion)
        ),
    )
    (failure,) = [
        e for e in audit.events(run.conn, request_id=deletion) if e.action == "request.failed"
    ]
    assert failure.details["removed"] == {"image": len(removed)}
    assert failure.details["remaining"] == {"image": not_yet}

    # A restart does not touch a failed request; a retry after the outage finishes it, sending
    # only what the service never removed.
    run.bot.kill()
    run.note_kill()
    run.cv.faults.error_rate = 0.0
    run.bot.start()
    assert run.record(deletion).status == "failed"
    answer = run.bot.driver(run.slack).command(APPROVER.user_id, CHANNEL, f"retry {deletion}")
    assert "resumes from where it stopped" in answer.json()["text"]
    run.wait_for("every request to finish and reach Slack", run.settled)
    assert run.bot.terminate() == 0
    check_deleted_exactly_once(run, deletion, targeted, receipts=2)
    assert audit.verify(run.conn).ok
    report("Training API outage", run)


def test_durability_restart_during_a_training_api_outage_serves_once_it_is_back(
    make_run: Callable[..., Run],
) -> None:
    seed = Seed(projects=1, iterations=1, tags=1, images=4, predictions=1, image_bytes=64)
    run = make_run(seed, rng_seed=0, faults=Faults(error_rate=1.0))

    def end_the_outage() -> None:
        run.wait_for(
            "the start-up check to meet the outage",
            lambda: sum(c.status >= 500 for c in run.cv.calls_to("GetProjects")) >= 2,
        )
        run.cv.faults.error_rate = 0.0

    ender = threading.Thread(target=end_the_outage)
    ender.start()
    try:
        run.bot.start()  # a refusal to start would end this with the bot's log
    finally:
        ender.join()
    assert "start-up check failed (Custom Vision training key); checking again" in run.bot.tail()
    assert run.bot.terminate() == 0


# -- the crash windows of one delivery, opened deterministically --------------------------------


@dataclass
class Outbox:
    slack: SlackEmulator
    store: Store
    deliverer: Deliverer
    web: WebClient

    def request(self, *path: Status) -> int:
        """Store an export request with a posted announcement; return its number."""
        parent = self.web.chat_postMessage(channel=CHANNEL, text="R-? announcement")
        with self.store.write() as conn:
            number = store_request(self.store, conn, status=Status.QUEUED)
            walk(self.store, conn, number, *path)
            self.store.update_fields(conn, number, message_ts=str(parent["ts"]))
        return number

    def deliver_all(self) -> None:
        deadline = time.monotonic() + WAIT
        while self.store.outbox_pending_count():
            assert time.monotonic() < deadline, "deliveries still pending"
            self.deliverer.deliver_pending()
            time.sleep(0.05)


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    slack = SlackEmulator(bot_token=BOT_TOKEN, scopes=(*DEFAULT_SCOPES, "files:read")).start()
    populate_slack(slack)
    db = Database(tmp_path / "cvdsr.db")
    store = Store(db, SystemClock())
    web = WebClient(token=BOT_TOKEN, base_url=slack.api_url)
    deliverer = Deliverer(store, web, rules=Rules(), required_approvals=1)
    try:
        yield Outbox(slack, store, deliverer, web)
    finally:
        deliverer.stop()
        db.close()
        slack.stop()


@pytest.mark.parametrize("files_info_refusals", [0, 2])
def test_durability_upload_shared_before_a_crash_is_recorded_once_and_not_shared_again(
    outbox: Outbox, tmp_path: Path, files_info_refusals: int
) -> None:
    number = outbox.request(Status.RUNNING, Status.DONE)
    path = tmp_path / "R-1001-export.zip"
    path.write_bytes(b"PK\x05\x06" + bytes(18))
    with outbox.store.write() as conn:
        outbox.store.enqueue_once(
            conn,
            kind="upload",
            channel=CHANNEL,
            request=number,
            key="upload:part1",
            payload={"path": str(path), "filename": path.name, "title": "export"},
        )
    (item,) = outbox.store.pending_outbox()
    # The crash window: Slack shared the file, then the process died before committing.
    outbox.deliverer._upload(item)
    # Slack refusing files.info (429) must not be taken for "not shared yet".
    if files_info_refusals:
        outbox.slack.inject_ratelimit("files.info", times=files_info_refusals, retry_after=1)
    outbox.deliver_all()

    (posted,) = outbox.slack.files(CHANNEL)
    thread = outbox.store.get(number).message_ts
    assert posted.shares == [(CHANNEL, thread)]
    assert [m.files for m in outbox.slack.messages(CHANNEL, thread)] == [[posted.id]]
    events = [e for e in audit.events(outbox.store.db.conn) if e.action == "file.posted"]
    assert [(e.targets, e.details["name"]) for e in events] == [((posted.id,), path.name)]


def test_durability_announcement_posted_before_a_crash_is_updated_not_posted_again(
    outbox: Outbox,
) -> None:
    with outbox.store.write() as conn:
        number = store_request(outbox.store, conn, status=Status.QUEUED)
        outbox.store.enqueue(
            conn,
            kind="announce",
            channel=CHANNEL,
            payload={"request": number},
            request=number,
            key=f"announce:{number}",
        )
    (item,) = outbox.store.pending_outbox()
    # The crash window: the message is in Slack and its ts stored, the item not marked sent.
    outbox.deliverer._announce(item)
    outbox.deliver_all()

    (message,) = outbox.slack.messages(CHANNEL)
    assert message.ts == outbox.store.get(number).message_ts
    assert message.updates == 1


@pytest.mark.parametrize(
    ("trouble", "kept"),
    [
        ("its thread is not posted yet", "pending"),
        ("Slack answers internal_error", "pending"),
        ("Slack is unreachable", "pending"),
        ("its thread can never be posted", "held"),  # else it would be retried forever
    ],
)
def test_durability_a_message_slack_keeps_refusing_is_kept_for_later_not_dropped(
    outbox: Outbox, trouble: str, kept: str
) -> None:
    number = outbox.request(Status.RUNNING)
    with outbox.store.write() as conn:
        if trouble.startswith("its thread"):
            # The announcement waits for a retry much later, or has failed for good.
            outbox.store.update_fields(conn, number, message_ts=None)
            announce = f"announce:{number}"
            outbox.store.enqueue(
                conn, kind="announce", channel=CHANNEL, payload={}, request=number, key=announce
            )
            conn.execute(
                "UPDATE outbox SET status = ?, not_before = '9999' WHERE key = ?",
                ("held" if "never" in trouble else "pending", announce),
            )
        outbox.store.enqueue(
            conn, kind="post", channel=CHANNEL, payload={"text": "done"}, request=number
        )
        conn.execute("UPDATE outbox SET attempts = 10000 WHERE kind = 'post'")  # hours of trying
    if trouble == "Slack answers internal_error":
        outbox.slack.inject_error("chat.postMessage", "internal_error")
    if trouble == "Slack is unreachable":
        nothing_listens = "http://127.0.0.1:9/api/"
        outbox.deliverer.client = WebClient(token=BOT_TOKEN, base_url=nothing_listens)

    outbox.deliverer.deliver_pending()

    (state,) = outbox.store.db.conn.execute(
        "SELECT status FROM outbox WHERE kind = 'post'"
    ).fetchone()
    assert state == kept
    assert outbox.slack.messages(CHANNEL, outbox.store.get(number).message_ts or "-") == []


def test_durability_outcome_whose_report_a_crash_lost_is_reported_at_start_up(
    tmp_path: Path,
) -> None:
    db = Database(tmp_path / "cvdsr.db")
    store = Store(db, SystemClock())
    numbers = []
    with store.write() as conn:
        for _ in range(3):
            number = store_request(store, conn, status=Status.QUEUED)
            job = store.enqueue_job(conn, number, JobKind.EXPORT)
            store.finish_job(conn, job, JobStatus.DONE)
            walk(store, conn, number, Status.RUNNING, Status.DONE)
            numbers.append(number)
        lost, reported, _ = numbers
        # One was reported before the crash; the third's report is a manual answer (no job).
        store.enqueue_once(
            conn,
            kind="upload",
            channel=CHANNEL,
            payload={},
            request=reported,
            key=f"trail:{reported}:done",
        )
        conn.execute("UPDATE outbox SET status = 'sent'")
        conn.execute("DELETE FROM jobs WHERE request_id = ?", (numbers[2],))
        conn.execute("UPDATE requests SET status = 'answered' WHERE id = ?", (numbers[2],))

    finished: list[RequestRecord] = []
    client = TrainingClient("http://127.0.0.1:9", "unused-key")
    runner = Runner(
        store,
        client,
        {},
        clock=SystemClock(),
        work_dir=tmp_path / "work",
        settings=Settings(),
        on_finish=finished.append,
    )
    try:
        runner.start()
    finally:
        runner.stop()
        client.close()
        db.close()
    assert [(r.number, r.status) for r in finished] == [(lost, "done")]


def test_durability_deletion_restarted_after_its_receipt_was_queued_posts_one_receipt(
    tmp_path: Path,
) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=20, predictions=2, image_bytes=256)
    stack = start_stack(tmp_path, seed=seed)
    try:
        runner = stack.bot.runner
        delete: JobHandler = runner.handlers["delete"]

        def stop_before_the_outcome_commits(ctx: JobContext) -> Outcome:
            outcome = delete(ctx)  # the receipt is queued
            if ctx.job.attempts == 1:
                raise JobInterrupted  # the process stops before the outcome is committed
            return outcome

        runner.handlers["delete"] = stop_before_the_outcome_commits
        project = stack.cv.data.project_ids()[0]
        images = stack.cv.data.image_ids(project)[:3]
        rid = stack.request_id(
            stack.command(REQUESTER, f"delete images {project} --ids {','.join(images)}")
        )
        stack.wait_status(rid, "pending")
        stack.wait_delivered()
        stack.click(APPROVER, rid, "approve")
        assert stack.wait_status(rid, "done", "failed") == "done"
        stack.wait_delivered()
        receipts = sorted(f.name for f in stack.slack.files(CHANNEL) if "-receipt" in f.name)
        assert receipts == [f"{rid}-receipt.csv", f"{rid}-receipt.html", f"{rid}-receipt.json"]
    finally:
        stack.close()


@pytest.mark.slow
def test_durability_sigkill_mid_subject_deletion_across_resources_deletes_each_image_once(
    make_run: Callable[..., Run],
) -> None:
    # One person (customer 4711) on two resources: 700 images in a project on main, one of
    # them only in a published snapshot, and 300 in a project on dev. The bot is killed at
    # random moments while it deletes; each life resumes the same frozen plan, each call on
    # the resource of its project.
    run = make_run(SEED, rng_seed=16_016, faults=Faults(latency=0.01))
    dev = CustomVisionEmulator(
        resource_key("dev"), seed=replace(SEED, projects=1, seed=8), faults=Faults(latency=0.01)
    ).start()
    try:
        run.bot.env = resources_env(run.bot.env, run.cv, {"dev": dev})
        first, second = run.cv.data.project_ids()[0], dev.data.project_ids()[0]
        person = {"customer": "4711"}
        mine = run.cv.data.add_images(first, 700, metadata=person)
        run.cv.data.add_iteration(first, publish_name="faces-prod")
        run.cv.data.api_delete_images(
            first, mine[:1], all_images=False, all_iterations=False, delay=lambda *_: 0.0
        )
        theirs = dev.data.add_images(second, 300, metadata=person)
        targeted = {"main": {i.lower() for i in mine}, "dev": {i.lower() for i in theirs}}
        for cv in (run.cv, dev):
            hold_back_delete_answers(cv)
        run.bot.start()

        rid = run.approved_deletion("delete subject --metadata customer=4711 --ticket DSR-16")
        kill_trials(run, 5, low=0.1, high=0.8)
        run.wait_for("the deletion to finish and reach Slack", run.settled)
        assert run.bot.terminate() == 0
        run.figures["resumed jobs"] = resumed_jobs(run)
        run.figures["lives"] = run.bot.lives

        record = run.record(rid)
        assert record.status == "done", record.error
        items = run.store.deletion_items(record.number)
        for name, cv in (("main", run.cv), ("dev", dev)):
            deleted = {k.lower(): n for k, n in cv.deleted_image_counts().items()}
            assert deleted == dict.fromkeys(targeted[name], 1), name
            sent: collections.Counter[str] = collections.Counter()
            for call in cv.calls_to("DeleteImages"):
                if 200 <= call.status < 300:
                    sent.update(i.lower() for i in call.query["imageIds"].split(","))
            assert dict(sent) == dict.fromkeys(targeted[name], 1), f"{name}: sent again"
            assert {i.target_id for i in items if i.resource == name} == targeted[name]
        assert {(i.status, i.verified) for i in items} <= {("deleted", "gone"), ("gone", "gone")}
        assert mine[0].lower() not in run.cv.data.image_ids(
            first, run.cv.data.iteration_ids(first)[-1]
        )
        confirmed: collections.Counter[str] = collections.Counter()
        for event in audit.events(run.conn, request_id=rid):
            if event.action in ("api.call", "api.probe") and event.outcome in ("ok", "gone"):
                confirmed.update(t.lower() for t in event.targets)
        assert dict(confirmed) == dict.fromkeys(targeted["main"] | targeted["dev"], 1)
        (receipt,) = receipts_of(run, rid)
        assert receipt["outcome"] == "done"
        assert {(i["resource"], i["target_id"]) for i in receipt["items"]} == {
            (name, i) for name, ids in targeted.items() for i in ids
        }
        check_audit_and_nothing_stuck(run, [rid], [])
    finally:
        report("SIGKILL mid subject deletion across resources", run)
        dev.stop()
    assert run.figures["kills during a delete job"] >= 1
