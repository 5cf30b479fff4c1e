"""The decider's threads: the thread idle the shortest takes the next job, jobs that find every
thread busy wait for one, and shutting down runs what was taken. Real threads; the waits poll
until a deadline, and nothing is timed."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from handlers.decider import _Threads

WAIT = 10.0  # seconds a condition may take on a loaded machine before the test fails


def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def hold(release: threading.Event) -> Callable[[], None]:
    """Return a job that keeps its thread busy until `release` is set."""

    def job() -> None:
        release.wait()

    return job


@pytest.fixture
def pool() -> Iterator[_Threads]:
    threads = _Threads(4, "test-decide")
    eventually(lambda: len(threads._idle) == 4, "every thread to be idle")
    try:
        yield threads
    finally:
        threads.shutdown()


def run_one(pool: _Threads) -> str:
    """Run a job on `pool`, wait until its thread is idle again; return the thread's name."""
    ran: list[str] = []
    pool.submit(lambda: ran.append(threading.current_thread().name))
    eventually(lambda: bool(ran) and len(pool._idle) == 4, "the job and its thread's return")
    return ran[0]


def test_decider_threads_hand_each_job_to_the_thread_idle_the_shortest(pool: _Threads) -> None:
    # First in, first out would go round all four threads; the warm one takes every job.
    names = {run_one(pool) for _ in range(20)}
    assert len(names) == 1


def test_decider_threads_run_the_jobs_taken_while_all_were_busy(pool: _Threads) -> None:
    release = threading.Event()
    done: list[int] = []
    for _ in range(4):
        pool.submit(hold(release))
    eventually(lambda: not pool._idle, "every thread to be busy")
    for n in range(10):
        pool.submit(lambda n=n: done.append(n))  # type: ignore[misc]
    assert done == []
    release.set()
    eventually(lambda: len(done) == 10, "the queued jobs")
    assert sorted(done) == list(range(10))


def test_decider_threads_finish_what_was_taken_then_refuse_more() -> None:
    threads = _Threads(2, "test-decide")
    release = threading.Event()
    done: list[int] = []
    for _ in range(2):
        threads.submit(hold(release))
    for n in range(5):
        threads.submit(lambda n=n: done.append(n))  # type: ignore[misc]
    release.set()
    threads.shutdown()
    assert sorted(done) == list(range(5))
    assert not any(t.is_alive() for t in threads._threads)
    with pytest.raises(RuntimeError):
        threads.submit(lambda: None)
