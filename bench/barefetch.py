"""The bare parallel fetch: the least an export with files must do, as its own process.

I/O module. `python -m bench.barefetch ENDPOINT PROJECT_ID --threads N` (the training key in
CUSTOM_VISION_TRAINING_KEY) lists a project's workspace with GetImages, 256 images a page,
oldest first, at most `--tps` calls in any second (bot.training.RateLimiter, as the bot's
client; a 429 waits for its Retry-After), and hands each original-image link to a pool of N
threads as soon as its page arrives; the listing runs ahead of the downloads. Each download
is read and dropped: nothing is written, hashed or checkpointed.
One HTTP connection per thread (the storage session's pool holds N); a 429 waits as the
sequential baseline's do (bench.baseline.get). It prints one JSON object: seconds (first call
to last byte), pages, downloads, bytes, throttled, cpu_s (user + system).

It runs in a child process (`fetch`), as the bot does, so neither competes for the bench
process's interpreter lock with the emulator that serves them both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import requests
from requests.adapters import HTTPAdapter

from bench.baseline import get
from bench.harness import BenchError, child_env
from bot.training import API_VERSION, RateLimiter

PAGE = 256
KEY_VARIABLE = "CUSTOM_VISION_TRAINING_KEY"


@dataclass(frozen=True)
class BareRun:
    """What the bare fetch did and how long it took."""

    seconds: float
    pages: int
    downloads: int
    bytes: int
    throttled: int
    cpu_s: float


def _size(session: requests.Session, url: str, throttled: list[int]) -> int:
    return len(get(session, url, throttled))


def fetch_all(endpoint: str, key: str, project_id: str, *, threads: int, tps: float) -> BareRun:
    """List the workspace's images page by page and download every original; return the run."""
    url = f"{endpoint}/customvision/{API_VERSION}/training/projects/{project_id}/images"
    # Paced as the bot's client paces its calls (the service's sliding window, each call
    # reckoned from its answer), so the listing costs both the same.
    limiter = RateLimiter(tps)
    throttled = [0]
    pages = 0
    sizes: list[int] = []
    cpu = time.process_time()
    started = time.perf_counter()
    with (
        requests.Session() as api,
        requests.Session() as storage,
        ThreadPoolExecutor(threads) as pool,
    ):
        api.headers.update({"Training-Key": key, "Accept": "application/json"})
        adapter = HTTPAdapter(pool_maxsize=threads)  # a kept connection per thread
        storage.mount("http://", adapter)
        storage.mount("https://", adapter)
        futures: list[Future[int]] = []
        skip = 0
        while True:
            slot = limiter.acquire()
            params = {"take": str(PAGE), "skip": str(skip), "orderBy": "Oldest"}
            body = get(api, url, throttled, params=params)
            limiter.answered(slot)
            page = json.loads(body)
            pages += 1
            for image in page:
                futures.append(pool.submit(_size, storage, image["originalImageUri"], throttled))
            if len(page) < PAGE:
                break
            skip += PAGE
        sizes = [f.result() for f in futures]
    return BareRun(
        seconds=time.perf_counter() - started,
        pages=pages,
        downloads=len(sizes),
        bytes=sum(sizes),
        throttled=throttled[0],
        cpu_s=time.process_time() - cpu,
    )


def fetch(endpoint: str, key: str, project_id: str, *, threads: int, tps: float) -> BareRun:
    """Run the bare fetch in a child process; return its run (raise BenchError)."""
    command = [
        sys.executable,
        "-m",
        "bench.barefetch",
        endpoint,
        project_id,
        f"--threads={threads}",
        f"--tps={tps:g}",
    ]
    done = subprocess.run(
        command,
        env=child_env({KEY_VARIABLE: key}),
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"the bare fetch failed:\n{done.stderr[-3000:]}")
    return BareRun(**json.loads(done.stdout))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the bare fetch in this process and print its figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.barefetch", description=__doc__)
    parser.add_argument("endpoint")
    parser.add_argument("project_id")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--tps", type=float, default=10.0)
    args = parser.parse_args(argv)
    run = fetch_all(
        args.endpoint.rstrip("/"),
        os.environ[KEY_VARIABLE],
        args.project_id,
        threads=args.threads,
        tps=args.tps,
    )
    print(json.dumps(run.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
