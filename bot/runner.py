"""The job runner: the bot's own workers, separate from Bolt's listener pool.

Jobs live in SQLite. A worker claims one with a lease (renewed every second while it runs),
runs its handler, and the handler records checkpoints as it goes (per page read, batch
deleted, file queued). A job left running by a crashed process is taken up again once its
lease has expired and resumes from its checkpoint; the user sees in the thread that the work
resumed. Workers never die: an error outside a handler is logged once and the job is run again
with backoff. SIGTERM stops the claiming of new jobs and asks running ones to stop at their
next checkpoint.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bot.clock import Clock
from bot.db import is_locked
from bot.errors import BotError, DatabaseBusy, JobRetry, WorkDirFull, is_disk_full
from bot.lifecycle import (
    DeletionItem,
    ItemStatus,
    Job,
    JobKind,
    JobStatus,
    RequestRecord,
    Role,
    Status,
)
from bot.logs import request_context
from bot.resources import Resources
from bot.store import Store
from bot.training import TrainingClient
from bot.wording import count

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = timedelta(seconds=2)
# A worker that meets an error outside a job's handler (the database locked past the bot's
# patience, a bug) retries after 0.5 s, doubling up to this many seconds.
MAX_BACKOFF = 30.0
# How often the housekeeping thread looks for ended requests whose report (audit trail) could
# not be made when they ended (full work directory), and makes it.
REPORT_SWEEP = 5.0
# The outbox key prefix under which on_finish (Service.finished) queues a request's final
# report: `trail:<number>:<status>`.
REPORT_KEY = "trail"


class JobInterrupted(Exception):
    """The process is stopping: the job goes back to the queue at its last checkpoint."""


class JobCancelled(Exception):
    """The requester cancelled the request."""


@dataclass(frozen=True)
class Outcome:
    """What a job handler ended with; the runner records it in one transaction."""

    request_status: Status  # the request's new status
    job_status: JobStatus = JobStatus.DONE
    result: Mapping[str, Any] | None = None
    error: str | None = None
    message: str | None = None  # posted into the request's thread
    audit_action: str = "request.completed"
    audit_details: Mapping[str, Any] = field(default_factory=dict)
    mention_requester: bool = True
    request_fields: Mapping[str, Any] = field(default_factory=dict)  # e.g. preview, expires_at
    # A deletion plan to freeze (a preview; or a new one when the live contents outgrew the
    # approved plan): it replaces the request's plan and withdraws every recorded approval,
    # in the same transaction as the status change, so no approval ever covers a plan its
    # approver did not see.
    new_plan: Sequence[DeletionItem] | None = None
    # The message waits until Slack has the request's files ("receipt attached"); False when it
    # says the files follow later (a receipt waiting for room in the work directory).
    await_uploads: bool = True

    def __post_init__(self) -> None:
        # An outcome saved in a checkpoint (JSON) comes back as plain values: type them again.
        object.__setattr__(self, "request_status", Status(self.request_status))
        object.__setattr__(self, "job_status", JobStatus(self.job_status))
        if self.new_plan is not None:
            plan = [i if isinstance(i, DeletionItem) else DeletionItem(**i) for i in self.new_plan]
            object.__setattr__(self, "new_plan", plan)


class JobTransaction:
    """One write transaction of a job: what it records commits together, or not at all."""

    def __init__(self, ctx: JobContext, conn: sqlite3.Connection) -> None:
        self._ctx = ctx
        self._conn = conn

    def save(self, **updates: Any) -> None:
        """Merge `updates` into the job's checkpoint and store it with the rest of this
        transaction (no stop/cancel check: the caller is mid-write)."""
        ctx = self._ctx
        ctx.checkpoint.update(updates)
        ctx._store.save_checkpoint(self._conn, ctx.job.id, ctx.checkpoint)

    def audit(
        self,
        action: str,
        *,
        targets: Sequence[str] = (),
        outcome: str = "ok",
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record an audit event for this request, as the bot."""
        ctx = self._ctx
        ctx._store.audit(
            self._conn,
            "bot",
            action,
            request=ctx.request.number,
            targets=targets,
            outcome=outcome,
            details=details,
        )

    def queue_upload(
        self,
        key: str,
        path: Path,
        *,
        filename: str,
        title: str,
        comment: str | None = None,
        render: Mapping[str, Any] | None = None,
    ) -> bool:
        """Queue the file at `path` into the request's thread, once per `key`; return True when
        newly queued. `render`: what the outbox writes to `path` first if it is not there yet
        (a file the full work directory could not take)."""
        request = self._ctx.request
        payload: dict[str, Any] = {"path": str(path), "filename": filename, "title": title}
        if comment is not None:
            payload["comment"] = comment
        if render is not None:
            payload["render"] = dict(render)
        return self._ctx._store.enqueue_once(
            self._conn,
            kind="upload",
            channel=request.channel,
            request=request.number,
            key=key,
            payload=payload,
        )

    def mark_items(
        self,
        batch: int,
        *,
        status: ItemStatus,
        http_status: int | None = None,
        operation: str | None = None,
        target_ids: Sequence[str] | None = None,
    ) -> None:
        """Set the status of a deletion batch's items (or of some of its targets)."""
        self._ctx._store.mark_items(
            self._conn,
            self._ctx.request.number,
            batch,
            status=status,
            http_status=http_status,
            operation=operation,
            target_ids=target_ids,
        )

    def mark_verified(self, target_ids: Sequence[str], verdict: str) -> None:
        """Record the verification verdict (gone | survived) of some deletion targets."""
        self._ctx._store.mark_verified(self._conn, self._ctx.request.number, target_ids, verdict)


class JobContext:
    """What a job handler may use: its request, the client, checkpoints, progress, Slack, and
    its own transactions (`transaction`); never the store itself."""

    def __init__(
        self,
        runner: Runner,
        job: Job,
        request: RequestRecord,
    ) -> None:
        self.runner = runner
        self.job = job
        self.request = request
        self._store = runner.store
        self.clock = runner.clock
        self.work_dir = runner.work_dir / request.id
        self.settings = runner.settings
        self.checkpoint: dict[str, Any] = dict(job.checkpoint)
        self.resumed = job.attempts > 1 or bool(set(job.checkpoint) - {"round"})
        # 1, plus one per retry after a failed outcome (Store.requeue_job); a restart resumes
        # within its round. Kept in the checkpoint under "round".
        self.round = int(job.checkpoint.get("round", 1))
        self._last_progress: Any = None

    @property
    def resources(self) -> Resources:
        """Return every configured resource's client, by name (work spanning resources)."""
        return self.runner.resources

    @property
    def client(self) -> TrainingClient:
        """Return the client of the resource the request is on (stored with it; the first
        resource for a request without one); raise ResourceError when it is not configured
        any more (the job fails saying so)."""
        return self.runner.resources.client(self.request.command.get("resource"))

    @property
    def clients(self) -> Mapping[str, TrainingClient]:
        """Return every configured resource's client, by name (a data-subject search)."""
        return self.runner.resources

    def check(self) -> None:
        """Raise JobInterrupted when stopping, JobCancelled when the request was cancelled."""
        if self.runner.stopping.is_set():
            raise JobInterrupted
        if self._store.status_of(self.request.number) == Status.CANCELLED:
            raise JobCancelled

    @contextmanager
    def transaction(self) -> Iterator[JobTransaction]:
        """Yield one write transaction: committed when the block ends, rolled back on error."""
        with self._store.write() as conn:
            yield JobTransaction(self, conn)

    def save(self, **updates: Any) -> None:
        """Merge `updates` into the checkpoint and store it, then check for stop or cancel."""
        with self.transaction() as tx:
            tx.save(**updates)
        self.check()

    def plan(
        self, *, batch: int | None = None, status: ItemStatus | None = None
    ) -> list[DeletionItem]:
        """Return the request's deletion plan in execution order (optionally one batch/status)."""
        return self._store.deletion_items(self.request.number, batch=batch, status=status)

    def approval_times(self) -> list[tuple[str, str]]:
        """Return (approver, ISO time) of each approval of the request, oldest first."""
        return self._store.approval_times(self.request.number)

    def audit_head(self) -> tuple[int, str]:
        """Return (seq, hash) of the newest audit event."""
        return self._store.audit_head()

    def progress(self, done: int, total: int | None, phase: str, *, force: bool = False) -> None:
        """Show progress in the thread: one message, updated at most every 2 seconds."""
        now = self.clock.now()
        if (
            not force
            and self._last_progress is not None
            and now - self._last_progress < PROGRESS_INTERVAL
        ):
            return
        self._last_progress = now
        state = {"done": done, "total": total, "phase": phase}
        with self._store.write() as conn:
            self._store.update_fields(conn, self.request.number, progress=state)
            self._store.enqueue(
                conn,
                kind="progress",
                channel=self.request.channel,
                payload={"request": self.request.number, **state},
                request=self.request.number,
                key=f"progress:{self.request.number}",
            )

    def post(self, text: str, *, key: str | None = None) -> None:
        """Queue a message for the request's thread (once per `key` when given)."""
        with self._store.write() as conn:
            self._store.post(conn, self.request.number, self.request.channel, text, key=key)


JobHandler = Callable[[JobContext], Outcome]


@dataclass(frozen=True)
class Settings:
    """Job settings from the config that handlers need."""

    max_file_bytes: int = 1000 * 1024 * 1024
    download_concurrency: int = 16
    approval_ttl: timedelta = timedelta(hours=24)
    command: str = "/cv"


class Runner:
    """Worker threads that claim and run jobs, plus a housekeeping thread."""

    def __init__(
        self,
        store: Store,
        client: TrainingClient,
        handlers: Mapping[str, JobHandler],
        *,
        clock: Clock,
        work_dir: Path,
        settings: Settings,
        workers: int = 2,
        lease: timedelta = timedelta(seconds=60),
        poll_interval: float = 0.05,
        on_finish: Callable[[RequestRecord], None] | None = None,
        housekeeping: Callable[[], object] | None = None,
        resources: Resources | None = None,
    ) -> None:
        self.store = store
        self.client = client  # the first resource's
        self.resources = resources or Resources({"default": client})
        self.handlers = dict(handlers)
        self.clock = clock
        self.work_dir = work_dir
        self.settings = settings
        self.workers = workers
        self.lease = lease
        self.poll_interval = poll_interval
        self.on_finish = on_finish
        self.housekeeping = housekeeping
        self.owner = f"worker-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self._workers: list[threading.Thread] = []
        self._running: dict[int, str] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Resume the jobs a previous process left running, then start the workers.

        Only jobs whose lease ran out are resumed now; one still leased is resumed by a worker
        once its lease ends (the process holding it may be alive).
        """
        self.store.release_jobs(
            expired_only=True, audit_action="job.resumed", audit_details={"after": "restart"}
        )
        # A crash between a request's final commit and on_finish lost its report (the
        # request's audit trail in its thread): make it now.
        self.report_unreported()
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"job-worker-{n}", daemon=True)
            thread.start()
            self._workers.append(thread)
        keeper = threading.Thread(target=self._keep, name="job-housekeeping", daemon=True)
        keeper.start()
        self._threads = [*self._workers, keeper]

    def live_workers(self) -> int:
        """Return how many worker threads are alive."""
        return sum(1 for thread in self._workers if thread.is_alive())

    def report_unreported(self) -> None:
        """Make the reports (audit trails) of ended requests that have none yet."""
        if self.on_finish is None:
            return
        for record in self.store.unreported_outcomes(REPORT_KEY):
            log.info("reporting the outcome of %s now", record.id)
            self.on_finish(record)

    def notify(self) -> None:
        """Wake idle workers (a job was queued)."""
        self.wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming jobs; running ones stop at their next checkpoint; wait for them."""
        self.stopping.set()
        self.wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self.store.release_jobs(
            self.owner, audit_action="job.interrupted", audit_details={"by": "shutdown timeout"}
        )

    def _keep(self) -> None:
        swept = time.monotonic()
        while not self.stopping.wait(1.0):
            tasks: list[tuple[str, Callable[[], object]]] = [("lease renewal", self._renew)]
            if self.housekeeping is not None:
                tasks.append(("housekeeping", self.housekeeping))
            if time.monotonic() - swept >= REPORT_SWEEP:
                swept = time.monotonic()
                tasks.append(("reporting ended requests", self.report_unreported))
            for name, task in tasks:
                try:
                    task()
                except Exception:
                    log.exception("%s failed; trying again in a moment", name)

    def _renew(self) -> None:
        with self._lock:
            running = dict(self._running)
        for job_id in running:
            self.store.renew_lease(job_id, self.owner, self.lease)

    def _work(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                with self._lock:
                    busy = set(self._running)
                job = self.store.claim_job(self.owner, self.lease, skip=busy)
            except Exception:
                failures += 1
                if failures == 1:
                    log.exception("claiming a job failed; retrying with backoff")
                self.stopping.wait(_backoff(failures))
                continue
            if failures:
                log.info("claiming jobs works again after %s", count(failures, "failed attempt"))
                failures = 0
            if job is None:
                self.wake.wait(self.poll_interval)
                self.wake.clear()
                continue
            with self._lock:
                self._running[job.id] = job.kind
            try:
                self._run_until_settled(job)
            finally:
                with self._lock:
                    self._running.pop(job.id, None)

    def _run_until_settled(self, job: Job) -> None:
        """Run a claimed job; after an error outside its handler, run it again with backoff.

        The job stays this worker's (its lease is renewed) and resumes from its checkpoint, as
        after a restart; the error is logged once, with the request id (a JobRetry, an
        expected fault, each time in one line).
        """
        failures = 0
        while True:
            try:
                self.run_one(job)
                return
            except JobRetry as retry:
                failures += 1
                with request_context(job.request_id):
                    log.warning("job %s (%s): %s; running it again", job.id, job.kind, retry)
            except Exception:
                failures += 1
                with request_context(job.request_id):
                    if failures == 1:
                        log.exception("job %s (%s) hit an error; retrying it", job.id, job.kind)
                    else:
                        log.debug("job %s still failing (%d attempts)", job.id, failures)
            if self.stopping.wait(_backoff(failures)):
                return  # stop() puts this owner's running jobs back in the queue
            try:
                current: Job | None = self.store.job(job.id)
            except Exception:
                log.debug("re-reading job %s failed; running it as it was", job.id)
                current = job
            if current is None or current.status != JobStatus.RUNNING:
                return
            job = current

    def run_one(self, job: Job) -> None:
        """Run one claimed job to its outcome (or back to the queue when interrupted)."""
        with request_context(job.request_id):
            self._run_one(job)

    def _run_one(self, job: Job) -> None:
        if job.kind != JobKind.PREVIEW:
            with self.store.write() as conn:
                started = self.store.transition(
                    conn, job.request_number, to=Status.RUNNING, by=Role.WORKER, actor="bot"
                )
                if started:
                    record = self.store.get(job.request_number, conn)
                    self.store.announce(conn, record.number, record.channel)
        request = self.store.get(job.request_number)
        handler = self.handlers[job.kind]
        ctx = JobContext(self, job, request)
        if job.attempts > 1:
            ctx.post(
                f"Work on {request.id} resumed after a restart (attempt {job.attempts}), "
                "from its last checkpoint.",
                key=f"resumed:{job.id}:{job.attempts}",
            )
        try:
            ctx.check()
            outcome = handler(ctx)
        except JobInterrupted:
            log.info("job %s of %s interrupted at a checkpoint", job.id, request.id)
            self._release(job)
            return
        except (DatabaseBusy, JobRetry):
            raise  # not the request's fault: the worker runs it again from its checkpoint
        except sqlite3.OperationalError as exc:
            if is_locked(exc):
                raise
            outcome = self._crashed(job, request, exc)
        except JobCancelled:
            outcome = Outcome(
                request_status=Status.CANCELLED,
                job_status=JobStatus.CANCELLED,
                message=f"{request.id} was cancelled; work stopped.",
                audit_action="request.stopped",
            )
        except BotError as exc:
            outcome = Outcome(
                request_status=Status.FAILED,
                job_status=JobStatus.FAILED,
                error=exc.user_message,
                message=f"{request.id} failed: {exc.user_message}",
                audit_action="request.failed",
                audit_details={"error": exc.user_message, "type": type(exc).__name__},
            )
        except Exception as exc:
            outcome = self._crashed(job, request, exc)
        self._finish(job, request, outcome)

    def _crashed(self, job: Job, request: RequestRecord, exc: Exception) -> Outcome:
        """Return the failed outcome of a handler that raised something unexpected."""
        if is_disk_full(exc):
            full = WorkDirFull(
                self.work_dir,
                f"Free space under BOT_WORK_DIR, then `{self.settings.command} retry "
                f"{request.id}` continues where it stopped.",
            )
            log.error("job %s of %s: %s", job.id, request.id, full.user_message)
            return Outcome(
                request_status=Status.FAILED,
                job_status=JobStatus.FAILED,
                error=full.user_message,
                message=f"{request.id} failed: {full.user_message}",
                audit_action="request.failed",
                audit_details={"error": full.user_message, "type": "WorkDirFull"},
            )
        log.error("job %s of %s crashed:\n%s", job.id, request.id, traceback.format_exc())
        return Outcome(
            request_status=Status.FAILED,
            job_status=JobStatus.FAILED,
            error="internal error (see the bot's log)",
            message=f"{request.id} failed with an internal error; the bot's log has details.",
            audit_action="request.failed",
            audit_details={"error": type(exc).__name__},
        )

    def _release(self, job: Job) -> None:
        with self.store.write() as conn:
            if self.store.requeue_running_job(conn, job.id):
                self.store.audit(
                    conn,
                    "bot",
                    "job.interrupted",
                    request=job.request_number,
                    details={"job": job.kind, "attempts": job.attempts, "by": "shutdown"},
                )

    def _finish(self, job: Job, request: RequestRecord, outcome: Outcome) -> None:
        store = self.store
        with store.write() as conn:
            store.finish_job(conn, job.id, outcome.job_status)
            fields: dict[str, Any] = dict(outcome.request_fields)
            if outcome.result is not None:
                fields["result"] = dict(outcome.result)
            if outcome.error is not None:
                fields["error"] = outcome.error
            changed = store.transition(
                conn,
                request.number,
                to=outcome.request_status,
                by=Role.WORKER,
                actor="bot",
                **fields,
            )
            if not changed:
                return
            if outcome.new_plan is not None:
                store.clear_deletion_items(conn, request.number)
                store.add_deletion_items(conn, request.number, outcome.new_plan)
                store.clear_approvals(conn, request.number)
            store.audit(
                conn,
                "bot",
                outcome.audit_action,
                request=request.number,
                outcome=outcome.request_status,
                details=dict(outcome.audit_details),
            )
            if outcome.message:
                text = outcome.message
                if outcome.mention_requester:
                    text = f"<@{request.requester}> {text}"
                # "Ready" or "receipt attached" is said only once Slack has the files.
                after = (
                    store.unsent_uploads(conn, request.number, excluding=REPORT_KEY)
                    if outcome.await_uploads
                    else ()
                )
                store.post(conn, request.number, request.channel, text, after=after)
            store.announce(conn, request.number, request.channel)
        if self.on_finish is not None:
            try:
                self.on_finish(store.get(request.number))
            except Exception:
                # The outcome is stored and announced; the report is made by the next sweep.
                log.exception("reporting the end of %s failed; retrying shortly", request.id)


def _backoff(failures: int) -> float:
    """Return the pause in seconds before the next attempt after `failures` in a row."""
    return float(min(MAX_BACKOFF, 0.5 * 2 ** min(failures - 1, 8)))
