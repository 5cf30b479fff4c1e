"""Acknowledging within Slack's 3 seconds whatever a decision takes.

Bolt gives a listener 3 s to call ack(); after that it runs the next matching listener and
answers with that one (NOTES-slack.md, "the 3-second trap"), while the first listener may
still store the request. So a decision (a SQLite transaction, after Slack lookups) runs on the
bot's own pool, never between a payload and its ack:

- its Slack lookups must answer by `LOOKUPS_BY` after the request arrived, or the decision
  refuses before writing anything ("Slack is slow; try again": handlers.directory);
- the listener waits for the decision until `ACK_BY` after the request arrived and acks with
  its answer (the usual case, a few milliseconds);
- when the decision is still running then (SQLite's write lock held elsewhere, a busy
  timeout), the listener acks with a holding answer that claims nothing, and the decision's
  own answer follows through the request's response_url as soon as it is known.

Bolt runs the listeners in the thread that answers Slack's HTTP request (the app's
`process_before_response`), so no Bolt thread polls for the ack: whatever follows an ack
and talks to Slack (an answer through response_url, a dialog, an ephemeral message) runs on
this module's follow-up threads (`follow=`, `after`), never between the ack and Slack.

A mature Slack app does the same: answer inline when the work is quick, otherwise acknowledge
and follow up through response_url (Slack's "responding to interactions" guide). Only the
decision says whether something was stored; the holding answer never does.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bot.service import Reply
from handlers.directory import LOOKUP_DEADLINE

log = logging.getLogger(__name__)

ACK_BY = 2.0  # seconds after the request arrived: Slack and Bolt give up at 3
LOOKUPS_BY = 1.5  # Slack lookups must have answered by then, so "try again" is acked inline
INTERNAL_ERROR = (
    "Something went wrong on my side while handling this (it is logged), so I cannot tell "
    "whether it was recorded. `{command} status` shows your requests."
)


class _Handoff:
    """Who delivers the decision's reply: the waiting listener, or (once it gave up) `late`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._held = threading.Event()  # the holding answer went out: `late` may follow it
        self._reply: Reply | None = None
        self._deferred = False

    def settle(self, reply: Reply) -> bool:
        """Hand the reply over; False when the listener already gave up waiting."""
        with self._lock:
            if self._deferred:
                return False
            self._reply = reply
            self._done.set()
            return True

    def hold_sent(self) -> None:
        """Mark the listener's answer (holding or not) as sent."""
        self._held.set()

    def wait_held(self, timeout: float = 10.0) -> None:
        """Wait until the holding answer was sent, so the late answer shows after it."""
        self._held.wait(timeout)

    def wait(self, timeout: float) -> Reply | None:
        """Return the reply if it came within `timeout`; else None (the decision goes late)."""
        self._done.wait(max(0.0, timeout))
        with self._lock:
            if self._reply is None:
                self._deferred = True
            return self._reply


class _Threads:
    """Threads running jobs in the order they came; the thread idle the shortest takes the next.

    Woken last in, first out: the thread that has just finished a decision is warm (the CPU's
    caches, its SQLite connection's pages), so under a burst that leaves threads idle between
    decisions most of them go to the same few threads, and only as many threads run as the
    load needs. A shared queue (first in, first out) sent each decision to the thread idle the
    longest, round all of them: one refusal at a time cost 585 us of CPU with 8 threads and
    443 us with 1 (bench.burst's commands through the WSGI app, in one process).
    Not a ThreadPoolExecutor either: its submit() takes a lock that every executor of the
    process shares (the export downloads' too), and under a burst the listener threads queued
    there. The lock here is this pool's own, held for a few list operations.
    """

    def __init__(self, count: int, name: str) -> None:
        self._lock = threading.Lock()
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()  # untaken
        self._idle: list[_Worker] = []  # idle threads, the most recently idle last
        self._closed = False
        self._workers = [_Worker() for _ in range(count)]
        self._threads = [
            threading.Thread(target=self._run, args=(worker,), name=f"{name}_{n}", daemon=True)
            for n, worker in enumerate(self._workers)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, worker: _Worker) -> None:
        while True:
            with self._lock:
                if self._jobs:
                    job: Callable[[], None] | None = self._jobs.popleft()
                elif self._closed:
                    return
                else:
                    self._idle.append(worker)
                    job = None
            if job is None:
                job = worker.wait()
                if job is None:
                    return
            job()

    def submit(self, job: Callable[[], None]) -> None:
        """Run `job` on the thread idle the shortest, or after the jobs already waiting (jobs
        catch their own errors). Raises RuntimeError once shut down."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot take decisions after close()")
            if not self._idle:
                self._jobs.append(job)
                return
            worker = self._idle.pop()
        worker.hand(job)

    def shutdown(self) -> None:
        """Run the jobs already submitted, then stop the threads."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.hand(None)
        for thread in self._threads:
            thread.join()


class _Worker:
    """One idle thread's slot: the job it is handed (None: stop), and a lock as its signal."""

    def __init__(self) -> None:
        self._job: Callable[[], None] | None = None
        self._handed = threading.Lock()  # held while nothing is handed over
        self._handed.acquire()

    def hand(self, job: Callable[[], None] | None) -> None:
        """Give the idle thread `job` and wake it."""
        self._job = job
        self._handed.release()

    def wait(self) -> Callable[[], None] | None:
        """Wait until a job (or None: stop) is handed over; return it."""
        self._handed.acquire()
        job, self._job = self._job, None
        return job


class Decider:
    """Runs decisions on the bot's own threads and answers each within Slack's 3 seconds."""

    def __init__(
        self,
        *,
        command: str = "/cv",
        workers: int = 8,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.command = command
        self.monotonic = monotonic
        self._pool = _Threads(workers, "decide")
        # Apart from the decisions: a decision going late waits for its holding answer, which
        # must never queue behind that very decision.
        self._followups = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="follow")

    def close(self) -> None:
        """Finish the decisions and follow-ups already taken; take no more."""
        self._pool.shutdown()
        self._followups.shutdown(wait=True)

    def after(self, job: Callable[[], None]) -> None:
        """Run `job` (Slack calls that follow an ack) on a follow-up thread; log its failure."""

        def run() -> None:
            try:
                job()
            except Exception:
                log.exception("a follow-up after an acknowledgement failed")

        self._followups.submit(run)

    def run(
        self,
        received_at: float,
        decide: Callable[[], Reply],
        *,
        answer: Callable[[Reply | None], object],
        late: Callable[[Reply], None],
        follow: Callable[[Reply | None], None] | None = None,
    ) -> None:
        """Run `decide`; call `answer(reply)` in this thread by ACK_BY after `received_at`.

        `answer(None)` means the decision is not done yet: ack with a holding answer. Then
        `late(reply)` is called from the decision's thread once it is done (after `answer`
        returned, so the holding answer is shown first). `answer` only acks; what else tells
        the user (a click's answer through response_url) is `follow(reply)`, called on a
        follow-up thread after `answer`, and before `late`.
        """
        handoff = _Handoff()

        def work() -> None:
            token = LOOKUP_DEADLINE.set(received_at + LOOKUPS_BY)
            try:
                reply = decide()
            except Exception:
                log.exception("a decision failed")
                reply = Reply(INTERNAL_ERROR.format(command=self.command))
            finally:
                LOOKUP_DEADLINE.reset(token)
            if handoff.settle(reply):
                return
            handoff.wait_held()
            try:
                late(reply)
            except Exception:
                log.exception("could not deliver a late answer: %s", reply.text[:200])

        self._pool.submit(work)
        reply = handoff.wait(received_at + ACK_BY - self.monotonic())
        if follow is None:
            try:
                answer(reply)
            finally:
                handoff.hold_sent()
            return

        def tell() -> None:
            try:
                follow(reply)
            finally:
                handoff.hold_sent()

        try:
            answer(reply)
        finally:
            self.after(tell)
