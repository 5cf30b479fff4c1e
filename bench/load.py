"""The load generator, as a process of its own: signed Slack requests, N at a time, each timed.

I/O module. `python -m bench.load` reads one job as JSON on stdin: the bot's URL, the signing
secret, the form bodies (latin-1 text), how many at a time and the timeout. It POSTs every body,
signed just before it is sent, each on a new connection as Slack's are, through http.client
(its own cost per request stays small), and prints one JSON list: each body's latency (from
just before its request is sent to the end of the answer; the timeout when there was none), its
HTTP status (null: no answer) and when it was sent (time.time()), in the bodies' order.

It runs apart from the bench process on purpose (`bench.harness.send_load` starts it): that
process hosts both emulators, and while exports run, the Custom Vision emulator's threads serve
their downloads there. A generator thread waiting there for the interpreter lock between the
answer's arrival and its clock reading counted that wait as the bot's latency.
"""

from __future__ import annotations

import collections
import http.client
import json
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from emulators.slack.driver import signature, slack_headers


@dataclass(frozen=True)
class Answer:
    """One request of a load run: how long until the HTTP answer, and which status."""

    latency: float  # seconds; the timeout when there was no answer
    status: int | None  # None: no answer in time (or the connection failed)
    sent: float = 0.0  # time.time() when it was sent

    def missed(self, limit: float) -> bool:
        """Return True when Slack would have shown the user a timeout."""
        return self.status != 200 or self.latency > limit


def post_all(
    url: str, secret: str, bodies: Sequence[bytes], *, concurrency: int, timeout: float
) -> list[Answer]:
    """POST every body to `url`, signed at send time, `concurrency` at a time; return the
    answers in the bodies' order."""
    answers: list[Answer | None] = [None] * len(bodies)
    lock = threading.Lock()
    queue = collections.deque(enumerate(bodies))
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    def post(body: bytes, headers: dict[str, str]) -> int:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("POST", parts.path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                index, body = queue.popleft()
            sent = time.time()
            at = int(sent)
            headers = slack_headers(timestamp=at, signature=signature(secret, at, body))
            started = time.perf_counter()
            try:
                status: int | None = post(body, headers)
            except (OSError, http.client.HTTPException):
                status = None
            elapsed = time.perf_counter() - started
            answers[index] = Answer(
                min(elapsed, timeout) if status is None else elapsed, status, sent
            )

    with ThreadPoolExecutor(concurrency, thread_name_prefix="load") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return [a for a in answers if a is not None]


def main() -> int:
    """Run the job read from stdin; print the answers."""
    job = json.load(sys.stdin)
    answers = post_all(
        job["url"],
        job["secret"],
        [body.encode("latin-1") for body in job["bodies"]],
        concurrency=int(job["concurrency"]),
        timeout=float(job["timeout"]),
    )
    json.dump([[a.latency, a.status, a.sent] for a in answers], sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
