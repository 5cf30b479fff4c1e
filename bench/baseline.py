"""The baseline exporter: what users run today, written the way the SDK samples do it.

I/O module. Plain `requests` against the Training API: GetTaggedImages then GetUntaggedImages,
50 images a page (the service's default `take`) until a short page, and every original image
downloaded one after another to a folder. The one kindness it gets over the samples: a 429
waits for its Retry-After and tries again instead of crashing, so a run always finishes (the
answers are counted). It shares the emulator, the cap and the process with the bot's run.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from bot.training import API_VERSION

PAGE = 50  # the samples' page size (and the service's default take)
TIMEOUT = 30.0
MAX_ATTEMPTS = 10  # per request, so a run always ends


@dataclass(frozen=True)
class BaselineRun:
    """What the sequential export did and how long it took."""

    seconds: float
    pages: int
    images: int
    downloads: int
    bytes: int
    throttled: int  # 429 answers met (and waited out)


def get(
    session: requests.Session,
    url: str,
    counter: list[int],
    params: dict[str, str] | None = None,
) -> bytes:
    """Return the body of a GET; a 429 waits for its Retry-After and tries again (counted in
    `counter[0]`); raise for any other error, or after MAX_ATTEMPTS."""
    for _attempt in range(MAX_ATTEMPTS):
        response = session.get(url, params=params, timeout=TIMEOUT)
        if response.status_code == 429:
            with _COUNTING:
                counter[0] += 1
            time.sleep(float(response.headers.get("Retry-After") or 1))
            continue
        response.raise_for_status()
        return response.content
    raise RuntimeError(f"still throttled after {MAX_ATTEMPTS} attempts")


_COUNTING = threading.Lock()  # the bare fetch counts from several threads


def export_sequentially(
    endpoint: str, key: str, project_id: str, folder: Path, *, limit: int | None = None
) -> BaselineRun:
    """List a project's images 50 at a time and download each file in turn; return the run.

    `limit`: stop after that many images (one at a time, its time grows with the images).
    """
    base = f"{endpoint}/customvision/{API_VERSION}/training/projects/{project_id}"
    folder.mkdir(parents=True, exist_ok=True)
    throttled = [0]
    pages = images = downloads = size = 0
    started = time.perf_counter()
    with requests.Session() as api, requests.Session() as storage:
        api.headers.update({"Training-Key": key, "Accept": "application/json"})
        for listing in ("tagged", "untagged"):
            skip = 0
            while True:
                page = get(
                    api,
                    f"{base}/images/{listing}",
                    throttled,
                    params={"take": str(PAGE), "skip": str(skip)},
                )
                pages += 1
                found = json.loads(page)
                if limit is not None:
                    found = found[: limit - images]
                for image in found:
                    images += 1
                    data = get(storage, image["originalImageUri"], throttled)
                    (folder / f"{image['id']}.png").write_bytes(data)
                    downloads += 1
                    size += len(data)
                if len(found) < PAGE or images == limit:
                    break
                skip += PAGE
            if images == limit:
                break
    return BaselineRun(
        seconds=time.perf_counter() - started,
        pages=pages,
        images=images,
        downloads=downloads,
        bytes=size,
        throttled=throttled[0],
    )
