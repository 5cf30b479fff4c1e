"""The export job: build the package a request asks for, then queue its parts for upload.

`run_export(ctx)` is the job handler "export" (I/O through the job context): it reads the
Training API with ctx.client, downloads files into a cache under ctx.work_dir, lays everything
out with bot.package and queues each part for the request's thread. Pure: `file_ext`,
`not_found`, `summary` (worded with bot.wording).

What each kind puts in the package (names from bot.package; JSON exactly as the API returned
it, unknown fields included; every object the export read is in the package):

    account      account.json (endpoint host, API version, every project with its counts of
                 images, tags and iterations against the S0 limits), domains.json,
                 projects.json, projects/<id>/iterations.json, projects/<id>/tags.json
    projects     projects.json
    project      projects.json, iterations.json, performance/<iteration-id>.json (each trained
                 iteration), exports.json, tags.json, images.jsonl, predictions.jsonl, and the
                 image files (unless --no-images)
    iterations   projects.json, iterations.json
    iteration    projects.json, iterations.json, performance/<id>.json, exports.json
    performance  projects.json, iterations.json, performance/<id>.json (--threshold/--overlap)
    tags, tag    projects.json, tags.json (+ iterations.json with --iteration)
    images       projects.json, images.jsonl, image files unless --no-files (+ iterations.json
                 with --iteration, tags.json with --tag)
    exports      projects.json, iterations.json, exports.json, and with --download the model
                 files models/<iteration-id>/<platform>-<flavor>.<ext> (status Done only)
    predictions  projects.json, predictions.jsonl, image files unless --no-files
    subject      projects.json (the projects holding matches), per such project
                 projects/<id>/images.jsonl, iterations.json (trained ones searched) and
                 tags.json (matched tags, with --tag-name), image files unless --no-files; the
                 scope searched (bot.subject.frozen_scope) is fixed in the job's checkpoint
                 at its first attempt and goes to the manifest and README

tags.json is {"workspace": [...], "iterations": {"<id>": [...]}} (the scopes read);
exports.json is {"<iteration-id>": [...]}. images.jsonl has one line per image per scope,
{"scope": "workspace"|"iteration", "iterationId": id|null, "image": <as returned>, "file":
<package name of its original file>|null}; a file is stored once, under images/workspace/
when the workspace holds the image, else under the first iteration that does.
predictions.jsonl lines are {"prediction": <as returned>, "file": name|null}.

Speed: listings go page by page (256, no count first: a short page ends a scope) and are
streamed to the package; without files the next pages are read ahead on a thread of their own
(`prefetched`), so the calls keep pace with the rate limit, and a whole project's index pages
and COCO file are built from each line as it is written (bot.browse.streamed_images), so
that little is left to do after the last call. Files download in a process of their own
(bot.fetcher: the job's thread and the bot's listeners never wait for the download threads'
interpreter lock), on `download_concurrency` threads fed through a bounded window, so memory
stays flat whatever the size of the project. A line waits (in order) until its file is in the
package, because a file's name ends with its type, known only from its first bytes.

Resuming: a checkpoint is saved per section, per page listed and per batch of files. A
downloaded file is kept in <work_dir>/cache (with its size and SHA-256 in cache/state.jsonl)
until the package is finished, so a resumed job verifies and reuses it instead of downloading
it again. The package writer keeps the parts it closed and discards the one a crash left
open; everything else is written again. Once the parts are queued for upload (in the same
transaction as the checkpoint saying so), a resumed job only returns the outcome.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext, suppress
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar
from urllib.parse import urlsplit

from bot import browse, commands, package, parser, subject
from bot.clock import iso, parse_iso
from bot.commands import ExportKind
from bot.digest import sha256_file
from bot.errors import BotError, ConfigError, NotFound, ServiceError
from bot.fetcher import Fetcher, FetcherLost
from bot.ids import guid_key
from bot.lifecycle import Status
from bot.models import Export, Image, Iteration, Tag
from bot.package import JsonlWriter, PackageInfo, PackageWriter, Part
from bot.runner import JobCancelled, JobContext, Outcome
from bot.training import (
    API_VERSION,
    BLOB_OPERATION,
    MAX_IMAGE_IDS,
    MAX_TAKE,
    Download,
    TrainingClient,
)
from bot.wording import count, describe_counts, describe_wait, human_size, short_ids

log = logging.getLogger(__name__)

T = TypeVar("T")

# The service's limits (Microsoft's "Limits and quotas", S0 tier).
LIMITS = {
    "images_per_project": 100_000,
    "tags_per_project": 500,
    "iterations_per_project": 20,
    "projects": 100,
}
# How long `export exports --download` waits for queued model exports ("Exporting", no link
# yet) to finish; real ones take minutes (azure-sdk-for-net ExportTests.json records them
# "Exporting" for seconds at least). What is still exporting then is listed, not downloaded.
EXPORT_WAIT = 600.0
FILES_PER_CHECKPOINT = 64
WINDOW_PER_THREAD = 4  # downloads queued per download thread
# Losses of the download process in a row, without a file more settled, before the request
# fails (each loss before that runs the job again from its checkpoint).
MAX_LOSSES = 3
MAX_WAITING_LINES = 4096  # listing lines held while their files download
PREFETCH_PAGES = 4  # listing pages read ahead of the package writing (~1 MB of JSON)
CACHE_DIR = "cache"
_STATE_FILE = "state.jsonl"
_EXT = re.compile(r"[a-z0-9]{1,10}")
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"PK\x03\x04", "zip"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
    (b"BM", "bmp"),
)
_NOT_FOUND_KINDS = {
    "NotFoundProject": ("Project", "project_id"),
    "NotFoundIteration": ("Iteration", "iteration_id"),
    "NotFoundTag": ("Tag", "tag_id"),
}
# count key -> (singular, plural), in the order a summary names them.
COUNT_NOUNS: dict[str, tuple[str, str]] = {
    "projects": ("project", "projects"),
    "domains": ("domain", "domains"),
    "iterations": ("iteration", "iterations"),
    "performance": ("performance report", "performance reports"),
    "tags": ("tag", "tags"),
    "images": ("image", "images"),
    "image_files": ("image file", "image files"),
    "predictions": ("stored prediction", "stored predictions"),
    "prediction_files": ("prediction image", "prediction images"),
    "exports": ("model export", "model exports"),
    "model_files": ("model file", "model files"),
    "files_missing": ("file no longer available", "files no longer available"),
}


# ---------------------------------------------------------------------------------------------
# Pure helpers


def file_ext(head: bytes, uri: str | None = None) -> str:
    """Return a file's extension from its first bytes, else from the URI's path, else "bin"."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for magic, ext in _MAGIC:
        if head.startswith(magic):
            return ext
    if uri:
        suffix = PurePosixPath(urlsplit(uri).path).suffix.lstrip(".").lower()
        if _EXT.fullmatch(suffix):
            return suffix
    return "bin"


def not_found(
    what: str, ids: Sequence[str], code: str, *, operation: str | None = None
) -> NotFound:
    """Return the NotFound error naming the kind and the (short) ids that were not found."""
    if len(ids) == 1:
        text = f"{what} {short_ids(ids)} was not found ({code})."
    else:
        text = f"{what}s {short_ids(ids)} were not found ({code})."
    return NotFound(text, status=404, code=code, operation=operation)


def summary(request_id: str, counts: Mapping[str, int], files: Sequence[Mapping[str, Any]]) -> str:
    """Return the thread message of a finished export: counts, then each part's size and hash."""
    total = sum(int(f["size"]) for f in files)
    lines = [
        f"{request_id} export is ready: {describe_counts(counts, COUNT_NOUNS)}.",
        f"{count(len(files), 'file')} to download, {human_size(total)} in total:",
    ]
    for f in files:
        lines.append(
            f"\u2022 {f['name']}: {human_size(int(f['size']))} ({int(f['size']):,} bytes),"
            f" SHA-256 {f['sha256']}"
        )
    exporting = counts.get("models_exporting", 0)
    if exporting:
        lines.append(
            f"{count(exporting, 'model export')} still exporting, so not downloaded (the "
            "package's notes name them): run the export again later."
        )
    return "\n".join(lines)


def _exporting(export: Export) -> bool:
    return (export.status or "").lower() == "exporting"


# ---------------------------------------------------------------------------------------------
# The download cache (I/O under <work_dir>/cache)


@dataclass(frozen=True)
class Cached:
    """A downloaded file in the cache: its type, size and SHA-256."""

    ext: str
    size: int
    sha256: str


class DownloadCache:
    """Downloaded files kept until the package is finished, with a state file; thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.part"):  # a download a crash cut off
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._state: dict[str, Cached] = {}
        self._records: IO[str] | None = None  # the state file, open for appending
        state = folder / _STATE_FILE
        if state.exists():
            with state.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        self._state[str(record["key"])] = Cached(
                            str(record["ext"]), int(record["size"]), str(record["sha256"])
                        )
                    except (ValueError, KeyError, TypeError):
                        break  # a line torn by a crash ends the state

    def __len__(self) -> int:
        with self._lock:
            return len(self._state)

    def path(self, key: str) -> Path:
        """Return where the file of `key` is (or goes) in the cache."""
        return self.folder / hashlib.sha256(key.encode("utf-8")).hexdigest()[:40]

    def known(self, key: str) -> Cached | None:
        """Return what the state says about `key` (not checked against the file)."""
        with self._lock:
            return self._state.get(key)

    def verified(self, key: str) -> Cached | None:
        """Return the cached file's record when the file is there with its size and SHA-256."""
        cached = self.known(key)
        path = self.path(key)
        if cached is None or not path.is_file():
            return None
        if path.stat().st_size != cached.size or sha256_file(path) != cached.sha256:
            log.warning("cached download %s is damaged; downloading it again", path.name)
            path.unlink(missing_ok=True)
            return None
        return cached

    def record(self, downloads: Sequence[tuple[str, Cached]]) -> None:
        """Remember completed downloads (appended to the state file in one write).

        Not fsynced: a record lost in a power cut costs one download again, and a file that
        did not reach the disk fails `verified`.
        """
        if not downloads:
            return
        text = "".join(json.dumps({"key": k, **asdict(c)}) + "\n" for k, c in downloads)
        with self._lock:
            if self._records is None:
                self._records = (self.folder / _STATE_FILE).open("a", encoding="utf-8")
            self._records.write(text)
            self._records.flush()  # a crash of the process loses no record
            self._state.update(downloads)

    def close(self) -> None:
        """Close the state file (records after this open it again)."""
        with self._lock:
            records, self._records = self._records, None
        if records is not None:
            # A record that cannot be written (a full disk) costs one download again; the
            # handle is closed either way, and the job's own error is the one that matters.
            with suppress(OSError):
                records.close()


# ---------------------------------------------------------------------------------------------
# Concurrent downloads into the package


@dataclass(frozen=True)
class Renewal:
    """Where a fresh link for a file comes from once its link has expired.

    kind "image": GetImagesByIds of `scope` (None: the workspace) for image `item`;
    "prediction": a re-list of the stored predictions (no read by id exists);
    "model": GetExports of iteration `scope`, the export whose platform:flavor is `item`.
    """

    kind: str
    scope: str | None
    item: str


@dataclass(frozen=True)
class FileJob:
    """One file to put in the package: where to fetch it, how to name it, how to renew it."""

    key: str  # cache key, e.g. "image:<id>"
    uri: str
    project_id: str
    name: Callable[[str], str]  # extension -> package name
    renewal: Renewal | None = None


Fetched = tuple[Cached | None, str]  # (the cached file or None when gone, how it was obtained)


def link_expired(exc: ServiceError) -> bool:
    """True when storage refused a blob link: its SAS expired (403 AuthenticationFailed).

    Storage answers every refused SAS with 403; a link the API handed out only stops working
    when it ages (`se`), so any 403 of a blob download is treated as an aged link.
    """
    return exc.operation == BLOB_OPERATION and exc.status == 403


class Links:
    """Fresh links for files whose link expired before their download (I/O: the client).

    Real links expire a day after the listing that carried them, and a large export can take
    longer. On the first 403, one GetImagesByIds renews the links of up to 256 images of the
    same scope still waiting for download, so the others use their fresh link at once
    instead of failing first; predictions are re-listed once; a model's link is read again
    from GetExports. Thread-safe: download threads call it.
    """

    def __init__(self, client: Any, routes: Mapping[str, Any]) -> None:
        self._default = client
        self._routes = routes  # project id -> the client of its resource (a subject export)
        self._lock = threading.Lock()
        self._fresh: dict[str, str] = {}  # file key -> the newest link known
        self._waiting: dict[tuple[str, str | None], dict[str, str]] = {}  # scope -> id -> key

    def queued(self, job: FileJob) -> None:
        """Note a file waiting for download (its link may be renewed with others)."""
        r = job.renewal
        if r is not None and r.kind == "image":
            with self._lock:
                self._waiting.setdefault((job.project_id, r.scope), {})[r.item] = job.key

    def settled(self, job: FileJob) -> None:
        """Forget a file that is in the package (or gone)."""
        r = job.renewal
        with self._lock:
            self._fresh.pop(job.key, None)
            if r is not None and r.kind == "image":
                self._waiting.get((job.project_id, r.scope), {}).pop(r.item, None)

    def current(self, job: FileJob) -> str:
        """Return the newest link known for the file."""
        with self._lock:
            return self._fresh.get(job.key, job.uri)

    def renew(self, job: FileJob, failed: str) -> str | None:
        """Return a fresh link for the file whose link `failed`, or None when it is gone."""
        r = job.renewal
        if r is None:
            return None
        with self._lock:  # one renewal at a time: the threads behind it find its links
            known = self._fresh.get(job.key)
            if known is not None and known != failed:
                return known
            p = job.project_id
            client = self._routes.get(p, self._default)
            if r.kind == "image":
                waiting = self._waiting.get((p, r.scope), {})
                others = [i for i in waiting if i != r.item][: MAX_IMAGE_IDS - 1]
                found = client.get_images_by_ids(p, [r.item, *others], r.scope)
                for image in found:
                    uri = image.original_image_uri or image.resized_image_uri
                    key = waiting.get(image.id) or waiting.get(image.id.lower())
                    if image.id.lower() == r.item.lower():
                        key = job.key
                    if uri and key:
                        self._fresh[key] = uri
            elif r.kind == "prediction":
                for prediction in client.iter_predictions(p):
                    uri = prediction.original_image_uri or prediction.resized_image_uri
                    if uri:
                        self._fresh[f"prediction:{prediction.id.lower()}"] = uri
            else:
                assert r.scope is not None
                for e in client.get_exports(p, r.scope):
                    if f"{e.platform}:{e.flavor}" == r.item and e.download_uri:
                        self._fresh[job.key] = e.download_uri
            fresh = self._fresh.get(job.key)
            return None if fresh is None or fresh == failed else fresh


class Downloads:
    """Downloads files, at most `window` in flight, and adds them to the package.

    Blob links (absolute URIs) download in a process of their own (bot.fetcher, started with
    `start`), so its threads never hold the bot's interpreter lock; the thread reading its
    answers only reports each file. A small pool of threads here verifies cached copies,
    renews expired links (Training API calls stay in the bot, which holds the key) and
    downloads relative paths (GetArtifact, with the key). The job's thread, the only caller of
    submit/wait_for/drain, collects the reports a batch at a time, puts their files in the
    package and raises the first failure: one thread writes the zip.
    """

    def __init__(
        self,
        ctx: JobContext,
        writer: PackageWriter,
        cache: DownloadCache,
        *,
        on_batch: Callable[[], None],
    ) -> None:
        self._threads = max(1, int(ctx.settings.download_concurrency))
        self._ctx = ctx
        self._client = ctx.client
        # A subject export reads projects of several resources: each project's files come
        # through its own resource's client (`route`).
        self._routes: dict[str, TrainingClient] = {}
        self._writer = writer
        self._cache = cache
        self._on_batch = on_batch
        self._pool = ThreadPoolExecutor(
            self._threads, thread_name_prefix=f"export-{ctx.request.id}"
        )
        self._fetcher: Fetcher[tuple[FileJob, str, bool]] | None = None
        # Files waiting for an order, and how many orders the process holds: one more than
        # its threads, so that none idles while an answer goes round, yet each order takes the
        # newest link when it is sent (a renewal serves the files queued here, while an order
        # sent already meets the 403 first: with half the threads more, a test of 600 expired
        # links met 70-80 refusals against 45 in-process, with one more 52-62).
        self._unordered: deque[tuple[FileJob, bool]] = deque()
        self._ordered = 0
        self._max_ordered = self._threads + 1
        self._order_lock = threading.Lock()
        # Renewals under way: orders wait for them, as the links they hold may be the expired
        # ones a renewal replaces (the in-process threads waited on the renewal's lock).
        self._renewing = 0
        self._window = self._threads * WINDOW_PER_THREAD
        self._links = Links(ctx.client, self._routes)
        self._pending: dict[str, FileJob] = {}
        self._reported: list[tuple[FileJob, Fetched | BaseException]] = []
        self._ready = threading.Condition()
        self._wake_at = 1  # reports that wake the job's thread
        self._failed = False  # a failure was reported: it wakes the job's thread at once
        self._lost: FetcherLost | None = None  # the download process ended early
        # Reports that wake the job's thread: a quarter of the threads, so that the window
        # stays nearly full of queued files (an expired link is renewed for every file queued
        # behind it: the fewer queued, the more downloads meet the 403 first).
        self._batch = max(1, self._threads // 4)
        self.resolved: dict[str, str | None] = {}
        self.how: dict[str, int] = {}
        self.submitted = 0

    def start(self) -> None:
        """Start the download process now, so that its start-up overlaps the listing."""
        with self._order_lock:
            self._process()

    def route(self, project_id: str, client: TrainingClient) -> None:
        """Fetch (and renew) the files of `project_id` through `client`."""
        self._routes[project_id] = client

    @property
    def done(self) -> int:
        """Return how many files are settled (in the package or gone)."""
        return len(self.resolved)

    def submit(self, job: FileJob) -> None:
        """Queue a file (once per key), waiting while the window is full."""
        if job.key in self.resolved or job.key in self._pending:
            return
        self.submitted += 1
        known = self._cache.known(job.key)
        if known is not None and self._writer.has(job.name(known.ext)):
            self._settle(job.key, job.name(known.ext), "kept")  # in a part kept from before
            return
        # The window counts the files still to download: those downloaded and waiting to be
        # packed do not hold the queue back (an expired link is renewed for every file queued).
        while len(self._pending) - len(self._reported) >= self._window:
            self._collect(self._batch)
        self._links.queued(job)
        self._pending[job.key] = job
        if known is None and _blob_link(job.uri):
            self._order(job)
        else:
            self._pool.submit(self._fetch, job)

    def wait_for(self, key: str) -> None:
        """Wait until the file of `key` is settled."""
        while key in self._pending:
            self._collect(1)

    def drain(self) -> None:
        """Wait until every queued file is settled."""
        while self._pending:
            self._collect(self._batch)

    def close(self) -> None:
        """Drop what is still queued, wait for the downloads in flight and record those done
        (a resumed job reuses them); the download process ends."""
        with self._order_lock:
            self._unordered.clear()
            self._max_ordered = 0  # no more orders: those in flight are answered, then it ends
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._fetcher is not None:
            self._fetcher.close()
        with self._ready:
            reported, self._reported = self._reported, []
        # Closing follows the job's own outcome, whose error is the one that matters: a record
        # that cannot be written (a full disk) costs one download again.
        with suppress(OSError):
            self._cache.record(_downloaded(reported))

    def _process(self) -> Fetcher[tuple[FileJob, str, bool]]:
        """Return the download process, started now if need be; under the order lock."""
        if self._fetcher is None:
            self._fetcher = Fetcher(
                self._client, self._threads, on_answer=self._answered, on_lost=self._gone
            )
        return self._fetcher

    def _collect(self, wanted: int) -> None:
        """Wait until `wanted` files are reported (fewer when fewer are pending, or at a
        failure), then package every file reported so far.

        Waking the job's thread hands it the interpreter lock, which stalls the thread that
        woke it: once per batch of files, not once per file.
        """
        with self._ready:
            self._wake_at = max(1, min(wanted, len(self._pending)))
            while len(self._reported) < self._wake_at and not self._failed:
                self._ready.wait()
            reported, self._reported = self._reported, []
            lost = self._lost
        # Recorded here, a batch in one write, before a failure below is raised: the download
        # threads spend no write (nor a wait for the interpreter lock after it) on the record.
        self._cache.record(_downloaded(reported))
        if lost is not None:
            self._ctx.check()  # a process stopping or a request cancelled says so instead
            raise lost
        for job, fetched in reported:
            del self._pending[job.key]
            if isinstance(fetched, BaseException):
                raise fetched  # the first failure stops the export
            cached, how = fetched
            name = None
            if cached is not None:
                name = job.name(cached.ext)
                if not self._writer.has(name):
                    self._writer.add_file(name, self._cache.path(job.key), keep_source=True)
            self._settle(job.key, name, how)

    def _settle(self, key: str, name: str | None, how: str) -> None:
        before = self.done
        self.resolved[key] = name
        self.how[how] = self.how.get(how, 0) + 1
        if self.done // FILES_PER_CHECKPOINT != before // FILES_PER_CHECKPOINT:
            self._on_batch()

    def _report(self, job: FileJob, fetched: Fetched | BaseException) -> None:
        """Hand a settled file (or its failure) to the job's thread."""
        self._links.settled(job)
        with self._ready:
            self._reported.append((job, fetched))
            self._failed = self._failed or isinstance(fetched, BaseException)
            if len(self._reported) >= self._wake_at or self._failed:
                self._ready.notify()

    def _order(self, job: FileJob, *, renewed: bool = False) -> None:
        """Have the download process fetch the file into the cache (`renewed`: its link was
        renewed already), sent at once unless the process holds enough orders."""
        with self._order_lock:
            self._unordered.append((job, renewed))
            self._send()

    def _send(self) -> None:
        """Send queued orders while the process holds fewer than its share; under the lock."""
        while self._unordered and self._ordered < self._max_ordered and not self._renewing:
            job, renewed = self._unordered.popleft()
            self._ordered += 1
            uri = self._links.current(job)
            self._process().order(uri, self._cache.path(job.key), (job, uri, renewed))

    def _answered(self, order: tuple[FileJob, str, bool], got: Download | BaseException) -> None:
        """On the thread reading the download process: report the file, or renew its link."""
        job, uri, renewed = order
        expired = isinstance(got, ServiceError) and link_expired(got) and not renewed
        with self._order_lock:
            self._ordered -= 1
            self._renewing += expired
            self._send()
        if isinstance(got, Download):
            self._report(job, (_cached(job, got), "downloaded"))
        elif isinstance(got, NotFound):
            self._report(job, (None, "missing"))  # deleted since it was listed
        elif expired:
            # Renewing calls the Training API: on a pool thread, not this one, which reads
            # the answers of every other download meanwhile.
            assert isinstance(got, ServiceError)
            try:
                self._pool.submit(self._renew, job, uri, got)
            except RuntimeError:  # closing: the pool takes no more work
                self._renewed()
                self._report(job, got)
        else:
            self._report(job, got)

    def _gone(self, lost: FetcherLost) -> None:
        """On the thread reading the download process: it ended before it was closed."""
        with self._ready:
            self._lost = lost
            self._failed = True
            self._ready.notify()

    def _renew(self, job: FileJob, failed: str, error: ServiceError) -> None:
        """On a pool thread: order the file again through a fresh link, or report it gone."""
        try:
            fresh = self._links.renew(job, failed)
        except BaseException as exc:  # reported to the job's thread, which raises it
            self._report(job, exc)
            return
        finally:
            self._renewed()
        if fresh is None:
            self._report(job, error if job.renewal is None else (None, "missing"))
            return
        log.info("%s: the link expired; downloading through a renewed link", job.key)
        self._order(job, renewed=True)

    def _renewed(self) -> None:
        """A renewal ended: the orders it held back go, with the links it renewed."""
        with self._order_lock:
            self._renewing -= 1
            self._send()

    def _fetch(self, job: FileJob) -> None:
        """On a pool thread: verify the cached copy, else download the file (a blob link
        through the download process, a relative path here) and report it."""
        fetched: Fetched | BaseException
        try:
            cached = self._cache.verified(job.key)
            uri = self._links.current(job)
            if cached is not None:
                fetched = cached, "cached"
            elif _blob_link(uri):
                self._order(job)
                return  # reported when the download process answers
            else:
                # A relative path goes through GetArtifact with the key, so here. It carries no
                # signature to expire (link_expired is a blob link's 403): nothing to renew.
                client: TrainingClient = self._routes.get(job.project_id, self._client)
                dest = self._cache.path(job.key)
                try:
                    got = client.download(uri, dest, project_id=job.project_id)
                except NotFound:
                    fetched = None, "missing"  # deleted since it was listed
                else:
                    fetched = _cached(job, got), "downloaded"
        except BaseException as exc:  # reported to the job's thread, which raises it
            fetched = exc
        self._report(job, fetched)


def _cached(job: FileJob, got: Download) -> Cached:
    """Return the cache record of the file `got` downloaded for `job`."""
    return Cached(file_ext(got.head, job.uri), got.size, got.sha256)


def _blob_link(uri: str) -> bool:
    """True for an absolute link (blob storage, no key needed), False for a relative path."""
    return bool(urlsplit(uri).scheme)


def _downloaded(
    reported: Iterable[tuple[FileJob, Fetched | BaseException]],
) -> list[tuple[str, Cached]]:
    """Return (key, cached file) of the reports that downloaded a file."""
    return [
        (job.key, fetched[0])
        for job, fetched in reported
        if isinstance(fetched, tuple) and fetched[0] is not None and fetched[1] == "downloaded"
    ]


class Lines:
    """A JSON-lines listing whose lines are written in order, each once its file is settled."""

    def __init__(
        self,
        sink: JsonlWriter | None,
        downloads: Downloads | None,
        on_line: Callable[[Any], None] | None = None,
    ) -> None:
        self._sink = sink  # None: the listing is already in the package (a resumed job)
        self._downloads = downloads
        self._on_line = on_line  # given each line as written (browse.ImageViews.add)
        self._waiting: deque[tuple[dict[str, Any], str | None]] = deque()
        self.count = 0

    def add(self, record: dict[str, Any], key: str | None) -> None:
        """Queue a line; with a key, its "file" is filled in once that file is settled."""
        self._waiting.append((record, key))
        self.flush()
        if len(self._waiting) > MAX_WAITING_LINES and self._downloads is not None:
            head = self._waiting[0][1]
            if head is not None:
                self._downloads.wait_for(head)
            self.flush()

    def flush(self) -> None:
        """Write the lines whose files are settled, in order."""
        resolved = self._downloads.resolved if self._downloads is not None else {}
        while self._waiting:
            record, key = self._waiting[0]
            if key is not None:
                if key not in resolved:
                    return
                record["file"] = resolved[key]
            self._waiting.popleft()
            if self._sink is not None:
                written = self._sink.write(record)
                if self._on_line is not None:
                    self._on_line(written)
            self.count += 1

    def finish(self) -> None:
        """Wait for every file and write the remaining lines."""
        if self._downloads is not None:
            self._downloads.drain()
        self.flush()
        if self._waiting:  # pragma: no cover - drain() settles every key
            raise RuntimeError("lines still wait for files after every download settled")


def prefetched(source: Iterable[T], depth: int) -> Generator[T, None, None]:
    """Yield the items of `source`, read up to `depth` items ahead on a thread of its own.

    The reading overlaps the caller's work on the items before: for pages of a listing, a
    page's round trip and parsing hide behind the writing of the one before, so a listing
    keeps pace with the rate limit instead of adding its own latency to every call. The order
    is kept. An error in `source` is raised here, after the items read before it; closing the
    iterator (the caller failed or was cancelled) stops the reading before its next item.
    """
    items: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for item in source:
                if not put((True, item)):
                    return
        except BaseException as exc:  # handed to the caller, who decides
            put((False, exc))
            return
        put((False, None))

    reader = threading.Thread(target=read, name="prefetch", daemon=True)
    reader.start()
    try:
        while True:
            more, value = items.get()
            if not more:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()


# ---------------------------------------------------------------------------------------------
# The job


class _Build:
    """One attempt at building the package of an export request."""

    def __init__(
        self,
        ctx: JobContext,
        export: commands.Export,
        writer: PackageWriter,
        cache: DownloadCache,
        *,
        export_wait: float = EXPORT_WAIT,
    ) -> None:
        self.ctx = ctx
        self.export_wait = export_wait
        self.client = ctx.client
        self.export = export
        self.writer = writer
        self.cache = cache
        self.counts: dict[str, int] = {}
        self.downloads = Downloads(ctx, writer, cache, on_batch=self._files_batch)
        if export.needs_files:
            self.downloads.start()
        self.phase = "reading"
        self.listed = 0
        self.list_total: int | None = None
        self.views: browse.ImageViews | None = None  # images.jsonl's, built as it is listed

    # -- checkpoints and progress -------------------------------------------------------------

    def section(self, name: str) -> None:
        self.ctx.save(section=name, counts=self.counts)

    def _files_batch(self) -> None:
        d = self.downloads
        self.ctx.save(files_done=d.done, files_downloaded=d.how.get("downloaded", 0))
        if self.phase == "downloading files":
            self.ctx.progress(d.done, d.submitted, self.phase)

    def _listed(self) -> None:
        self.listed += 1
        if self.listed % MAX_TAKE == 0:
            self.ctx.save(listed=self.listed, files_done=self.downloads.done)
            self.ctx.progress(self.listed, self.list_total, self.phase)

    # -- package helpers ----------------------------------------------------------------------

    def json(self, name: str, data: Any) -> None:
        # A part kept from an earlier attempt may hold it already.
        if not self.writer.has(name):
            self.writer.write_json(name, data)

    def jsonl(self, name: str) -> AbstractContextManager[JsonlWriter | None]:
        if self.writer.has(name):
            return nullcontext(None)
        return self.writer.jsonl(name)

    # -- sections -------------------------------------------------------------------------------

    def project(self) -> str:
        p = self.export.project_id
        assert p is not None
        self.json("projects.json", [self.client.get_project(p).to_dict()])
        self.counts["projects"] = 1
        return p

    def iteration(self, p: str) -> Iteration:
        i = self.export.iteration_id
        assert i is not None
        it = self.client.get_iteration(p, i)
        self.json("iterations.json", [it.to_dict()])
        self.counts["iterations"] = 1
        return it

    def performance(
        self,
        p: str,
        iterations: Sequence[Iteration],
        *,
        threshold: float | None = None,
        overlap: float | None = None,
    ) -> None:
        for it in iterations:
            name = package.performance_path(it.id)
            if not self.writer.has(name):
                perf = self.client.get_iteration_performance(p, it.id, threshold, overlap)
                self.writer.write_json(name, perf.to_dict())
            self.counts["performance"] = self.counts.get("performance", 0) + 1
        self.section("performance")

    def exports(self, p: str, iterations: Sequence[Iteration], *, download: bool) -> None:
        listed: dict[str, Any] = {}
        for it in iterations:
            exports = self.client.get_exports(p, it.id)
            if download:
                exports = self._finished_exports(p, it.id, exports)
            listed[it.id] = [e.to_dict() for e in exports]
            self.counts["exports"] = self.counts.get("exports", 0) + len(exports)
            if not download:
                continue
            for e in exports:
                label = f"{e.platform or 'unknown'}{f' ({e.flavor})' if e.flavor else ''}"
                if _exporting(e):
                    self.counts["models_exporting"] = self.counts.get("models_exporting", 0) + 1
                    self.writer.note(
                        f"Model export {label} of iteration {it.id} is still Exporting after "
                        f"waiting {describe_wait(self.export_wait)}: not downloaded. Run the "
                        "export again once it is Done."
                    )
                    continue
                if (e.status or "").lower() != "done" or not e.download_uri:
                    self.writer.note(
                        f"Model export {label} of iteration {it.id} is {e.status or 'unknown'}:"
                        " not downloaded (only finished exports can be)."
                    )
                    continue
                self.downloads.submit(
                    FileJob(
                        key=f"model:{it.id}:{e.platform}:{e.flavor}",
                        uri=e.download_uri,
                        project_id=p,
                        name=partial(package.model_path, it.id, e.platform or "model", e.flavor),
                        renewal=Renewal("model", it.id, f"{e.platform}:{e.flavor}"),
                    )
                )
        self.json("exports.json", listed)
        if download:
            self.phase = "downloading files"
            self.downloads.drain()
            self.counts["model_files"] = self._settled("model:")
        self.section("exports")

    def _finished_exports(self, p: str, i: str, exports: list[Export]) -> list[Export]:
        """Re-read the exports of iteration `i` until none is Exporting, for at most
        `export_wait` seconds (backing off up to 15 s); return the last answer."""
        deadline = time.monotonic() + self.export_wait
        delay = 0.1
        while any(_exporting(e) for e in exports):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.ctx.progress(0, None, "waiting for model exports to finish")
            if self.ctx.runner.stopping.wait(min(delay, left)):
                self.ctx.check()  # stopping: resume later from the checkpoint
            self.ctx.check()
            delay = min(delay * 2, 15.0)
            exports = self.client.get_exports(p, i)
        return exports

    def tags(self, p: str, scopes: Sequence[str | None]) -> dict[str | None, list[Tag]]:
        found: dict[str | None, list[Tag]] = {}
        for scope in scopes:
            found[scope] = self.client.get_tags(p, scope)
        document = _tags_json(found)
        self.json("tags.json", document)
        self.counts["tags"] = len(browse.tags_held(document))
        self.section("tags")
        return found

    def images(
        self,
        p: str,
        scopes: Sequence[tuple[str | None, Sequence[str]]],
        *,
        files: bool,
        kind: commands.Tagging = "all",
        image_ids: Sequence[str] = (),
        where: str | None = None,
        name: str = "images.jsonl",
        section: str = "images",
        views: bool = False,
    ) -> None:
        """List the images of each (scope, tag ids) into `name`, queueing their files.

        `where`: a metadata `$filter`. The counts add up over calls (a subject's projects).
        `views`: build the listing's index pages and COCO file as its lines are written
        (`self.views`; only without files, whose lines are final once written).
        """
        self.phase, self.listed = "listing images", 0
        # No count first: the listing ends at a short page, and a count per scope would only
        # cost calls under the rate limit (GetImageCount is as dear as a page).
        self.list_total = len(image_ids) if image_ids else None
        self.ctx.progress(0, self.list_total, self.phase, force=True)
        distinct: set[int | str] = set()
        pages = self._pages(p, scopes, kind=kind, image_ids=image_ids, where=where)
        if not files:
            # With files the download window paces the listing, and pages read ahead would
            # only hold links that age while they wait.
            pages = prefetched(pages, PREFETCH_PAGES)
        with self.jsonl(name) as sink:
            on_line = None
            if views and sink is not None and not files:
                self.views = browse.streamed_images(self.writer, self.writer.info, p)
                on_line = self.views.add
            lines = Lines(sink, self.downloads if files else None, on_line)
            for scope, page in pages:
                for image in page:
                    distinct.add(guid_key(image.id))
                    key = self._image_file(p, image, scope) if files else None
                    record = {
                        "scope": "workspace" if scope is None else "iteration",
                        "iterationId": scope,
                        "image": image.to_dict(),
                        "file": None,
                    }
                    lines.add(record, key)
                    self._listed()
            self.phase = "downloading files"
            self.ctx.progress(self.downloads.done, self.downloads.submitted, self.phase)
            lines.finish()
        if self.views is not None:
            self.views.listed()
        self.counts["images"] = self.counts.get("images", 0) + len(distinct)
        self.counts["image_records"] = self.counts.get("image_records", 0) + lines.count
        if files:
            self.counts["image_files"] = self._settled("image:")
        self.section(section)

    def _pages(
        self,
        p: str,
        scopes: Sequence[tuple[str | None, Sequence[str]]],
        *,
        kind: commands.Tagging,
        image_ids: Sequence[str],
        where: str | None,
    ) -> Iterator[tuple[str | None, list[Image]]]:
        """Yield (scope, page of images) for every scope in turn."""
        for scope, tag_ids in scopes:
            if image_ids:
                yield scope, self._by_ids(p, image_ids, scope)
                continue
            for page in self.client.iter_image_pages(
                p, kind=kind, iteration_id=scope, tag_ids=tag_ids, where=where
            ):
                yield scope, page

    def _by_ids(self, p: str, image_ids: Sequence[str], scope: str | None) -> list[Image]:
        found = self.client.get_images_by_ids(p, image_ids, scope)
        have = {image.id.lower() for image in found}
        missing = [i for i in image_ids if i.lower() not in have]
        if missing:
            raise not_found("Image", missing, "NotFoundImage", operation="GetImagesByIds")
        return found

    def _image_file(self, p: str, image: Image, scope: str | None) -> str | None:
        uri = image.original_image_uri or image.resized_image_uri
        if not uri:
            return None
        key = f"image:{image.id.lower()}"
        # The first scope listing an image names its folder: the workspace is listed first.
        name = partial(package.image_path, image.id, scope)
        renewal = Renewal("image", scope, image.id)
        self.downloads.submit(FileJob(key, uri, p, name, renewal))
        return key

    def predictions(self, p: str, *, files: bool) -> None:
        self.phase = "listing predictions"
        self.listed, self.list_total = 0, None
        with self.jsonl("predictions.jsonl") as sink:
            lines = Lines(sink, self.downloads if files else None)
            for prediction in self.client.iter_predictions(p):
                key: str | None = None
                uri = prediction.original_image_uri or prediction.resized_image_uri
                if files and uri:
                    key = f"prediction:{prediction.id.lower()}"
                    name = partial(package.prediction_image_path, prediction.id)
                    renewal = Renewal("prediction", None, prediction.id)
                    self.downloads.submit(FileJob(key, uri, p, name, renewal))
                lines.add({"prediction": prediction.to_dict(), "file": None}, key)
                self._listed()
            self.phase = "downloading files"
            lines.finish()
        self.counts["predictions"] = lines.count
        if files:
            self.counts["prediction_files"] = self._settled("prediction:")
        self.section("predictions")

    def _settled(self, prefix: str) -> int:
        return sum(1 for k, v in self.downloads.resolved.items() if v and k.startswith(prefix))

    # -- the kinds ------------------------------------------------------------------------------

    def run(self) -> dict[str, int]:
        export = self.export
        kind = export.kind
        if kind is ExportKind.ACCOUNT:
            self.account()
        elif kind is ExportKind.PROJECTS:
            projects = self.client.get_projects()
            self.json("projects.json", [pr.to_dict() for pr in projects])
            self.counts["projects"] = len(projects)
        elif kind is ExportKind.PROJECT:
            self.whole_project()
        elif kind is ExportKind.SUBJECT:
            self.subject()
        else:
            p = self.project()
            self.section("project")
            self.part_of_project(p)
        missing = sum(1 for v in self.downloads.resolved.values() if v is None)
        if missing:
            self.counts["files_missing"] = missing
            self.writer.note(
                f"{count(missing, 'file')} no longer existed when the export downloaded them "
                '(deleted since they were listed): their lines say "file": null.'
            )
        return self.counts

    def part_of_project(self, p: str) -> None:
        export = self.export
        kind = export.kind
        if kind is ExportKind.ITERATIONS:
            iterations = self.client.get_iterations(p)
            self.json("iterations.json", [it.to_dict() for it in iterations])
            self.counts["iterations"] = len(iterations)
        elif kind is ExportKind.ITERATION:
            it = self.iteration(p)
            self.section("iteration")
            if it.is_trained:
                self.performance(p, [it])
            else:
                self.writer.note(f"Iteration {it.id} is {it.status}: it has no performance.")
            self.exports(p, [it], download=False)
        elif kind is ExportKind.PERFORMANCE:
            it = self.iteration(p)
            self.performance(p, [it], threshold=export.threshold, overlap=export.overlap)
            self.writer.note(
                "Performance was read at probability threshold "
                f"{_fraction(export.threshold)} and overlap threshold {_fraction(export.overlap)}."
            )
        elif kind is ExportKind.TAGS:
            if export.iteration_id is not None:
                self.iteration(p)
            self.tags(p, [export.iteration_id])
        elif kind is ExportKind.TAG:
            assert export.tag_id is not None
            if export.iteration_id is not None:
                self.iteration(p)
            tag = self.client.get_tag(p, export.tag_id, export.iteration_id)
            self.json("tags.json", _tags_json({export.iteration_id: [tag]}))
            self.counts["tags"] = 1
        elif kind is ExportKind.IMAGES:
            self.images_kind(p)
        elif kind is ExportKind.EXPORTS:
            it = self.iteration(p)
            self.exports(p, [it], download=export.download)
        elif kind is ExportKind.PREDICTIONS:
            self.predictions(p, files=export.files)
        else:  # pragma: no cover - every kind is handled above
            raise ValueError(f"unknown export kind {kind!r}")

    def images_kind(self, p: str) -> None:
        export = self.export
        scope = export.iteration_id
        if scope is not None:
            self.iteration(p)
        if export.tag_ids:
            tags = self.client.get_tags(p, scope)
            self.json("tags.json", _tags_json({scope: tags}))
            known = {t.id.lower() for t in tags}
            missing = [t for t in export.tag_ids if t.lower() not in known]
            if missing:
                raise not_found("Tag", missing, "NotFoundTag", operation="GetTags")
        if export.selectors is not None:  # one person's images, as `find` counts them
            found, possible = subject.matching_tag_ids(
                self.client, p, scope, export.selectors.tag_names
            )
            if found:
                self.json("tags.json", _tags_json({scope: found}))
            self.images(
                p,
                [(scope, [tag.id for tag in found])] if possible else [],
                files=export.files,
                where=subject.metadata_filter(export.selectors.metadata),
            )
            return
        self.images(
            p,
            [(scope, export.tag_ids)],
            files=export.files,
            kind=export.tagging,
            image_ids=export.image_ids,
        )

    def whole_project(self) -> None:
        p = self.project()
        iterations = self.client.get_iterations(p)
        self.json("iterations.json", [it.to_dict() for it in iterations])
        self.counts["iterations"] = len(iterations)
        trained = [it for it in iterations if it.is_trained]
        for it in iterations:
            if not it.is_trained:
                self.writer.note(
                    f"Iteration {it.id} is {it.status}: it has no performance, exports, tags or "
                    "images of its own yet."
                )
        self.section("iterations")
        self.performance(p, trained)
        self.exports(p, trained, download=False)
        scopes: list[str | None] = [None, *(it.id for it in trained)]
        self.tags(p, scopes)
        files = self.export.images
        self.images(p, [(scope, ()) for scope in scopes], files=files, views=not files)
        self.predictions(p, files=self.export.images)

    def subject(self) -> None:
        """One person's images in every project of the frozen scope that holds any."""
        selectors = self.export.selectors
        assert selectors is not None  # a subject export is parsed with its selectors
        search = self.ctx.checkpoint["search"]
        where = search["filter"]
        held: list[dict[str, Any]] = []
        searched = 0
        for resource in search["resources"]:
            client = self.ctx.clients.get(resource["name"])
            if client is None:
                raise ConfigError(
                    [f"resource {resource['name']} was searched but is not configured any more"]
                )
            self.client = client  # every section below reads this resource
            for project in resource["projects"]:
                searched += 1
                p = project["id"]
                scopes: list[tuple[str | None, Sequence[str]]] = []
                tags: dict[str | None, list[Tag]] = {}
                for scope in [None, *(it["id"] for it in project["iterations"])]:
                    found, possible = subject.matching_tag_ids(
                        client, p, scope, selectors.tag_names
                    )
                    ids = [tag.id for tag in found]
                    if possible and client.count_images(
                        p, iteration_id=scope, tag_ids=ids, where=where
                    ):
                        scopes.append((scope, ids))
                        tags[scope] = found
                if not scopes:
                    continue
                self.downloads.route(p, client)
                held.append(client.get_project(p).to_dict())
                wanted = {it["id"] for it in project["iterations"]}
                iterations = [it for it in client.get_iterations(p) if it.id in wanted]
                self.json(
                    package.project_path(p, "iterations.json"), [i.to_dict() for i in iterations]
                )
                if selectors.tag_names:
                    self.json(package.project_path(p, "tags.json"), _tags_json(tags))
                self.images(
                    p,
                    scopes,
                    files=self.export.files,
                    where=where,
                    name=package.project_path(p, "images.jsonl"),
                    section=f"subject:{p}",
                )
        self.json("projects.json", held)
        self.counts.update(projects=len(held), projects_searched=searched)

    def account(self) -> None:
        resources = self.ctx.resources
        if len(resources) == 1:
            self._account(self.client, "")
        else:
            # One section per resource, each read with its own client; the summary at the root.
            summary = []
            for name, client in resources.items():
                prefix = package.resource_path(name, "")
                summary.append(
                    {
                        "name": name,
                        "endpoint_host": client.endpoint_host,
                        **self._account(client, prefix, resource=name),
                    }
                )
            self.json("resources.json", summary)
            self.counts["resources"] = len(summary)
        for text in ACCOUNT_NOTES:
            self.writer.note(text)

    def _account(
        self, client: TrainingClient, prefix: str, *, resource: str | None = None
    ) -> dict[str, int]:
        """Write one resource's domains, projects and per-project counts under `prefix`;
        return its counts of domains and projects."""
        ctx = self.ctx
        domains = client.get_domains()
        self.json(prefix + "domains.json", [d.to_dict() for d in domains])
        projects = client.get_projects()
        self.json(prefix + "projects.json", [pr.to_dict() for pr in projects])
        for key, n in (("domains", len(domains)), ("projects", len(projects))):
            self.counts[key] = self.counts.get(key, 0) + n
        where = f"{resource}:" if resource else ""
        self.section(f"{where}projects")
        rows: list[dict[str, Any]] = []
        self.phase = f"counting per project of {resource}" if resource else "counting per project"
        for n, pr in enumerate(projects):
            ctx.progress(n, len(projects), self.phase)
            counts = {
                kind: client.count_images(pr.id, kind=kind)
                for kind in ("all", "tagged", "untagged")
            }
            tags = client.get_tags(pr.id)
            iterations = client.get_iterations(pr.id)
            self.json(
                prefix + package.project_path(pr.id, "iterations.json"),
                [i.to_dict() for i in iterations],
            )
            self.json(prefix + package.project_path(pr.id, "tags.json"), _tags_json({None: tags}))
            rows.append(
                {
                    "id": pr.id,
                    "name": pr.name,
                    "images": {**counts, "limit": LIMITS["images_per_project"]},
                    "tags": {"count": len(tags), "limit": LIMITS["tags_per_project"]},
                    "iterations": {
                        "count": len(iterations),
                        "limit": LIMITS["iterations_per_project"],
                    },
                }
            )
            # The per-project counts stay in account.json: the package holds no image or tag
            # of its own, and a summary saying "120 images" would suggest it did.
            ctx.save(section=f"account:{where}{n + 1}", counts=self.counts)
        self.json(
            prefix + "account.json",
            {
                "endpoint_host": client.endpoint_host,
                "api_version": API_VERSION,
                "tier_limits": {"tier": "S0", **LIMITS},
                "projects": {"count": len(projects), "limit": LIMITS["projects"]},
                "per_project": rows,
            },
        )
        return {"domains": len(domains), "projects": len(projects)}


ACCOUNT_NOTES = (
    "The Custom Vision Training API v3.3 has no account operation (GetAccountInfo existed only "
    "in v1.x): this package holds what the training key can read - the endpoint, the domains, "
    "and every project with its counts against the service limits.",
    "No key is in this package, ever. The training and prediction keys are in the Azure "
    "portal > the Custom Vision resource > Keys and Endpoint.",
    "The account itself is the Azure resource: export its settings, or delete it, in the Azure "
    "portal or through Azure Resource Manager (Cognitive Services accounts). A deleted resource "
    "stays recoverable for 48 hours until it is purged.",
    "Limits compared are those of the S0 tier: 100,000 training images per project, 500 tags "
    "and 20 iterations per project, 100 projects.",
)


def _fraction(value: float | None) -> str:
    return "the service's default" if value is None else f"{value:g}"


def _tags_json(found: Mapping[str | None, Sequence[Tag]]) -> dict[str, Any]:
    document: dict[str, Any] = {}
    if None in found:
        document["workspace"] = [t.to_dict() for t in found[None]]
    iterations = {k: [t.to_dict() for t in v] for k, v in found.items() if k is not None}
    if iterations:
        document["iterations"] = iterations
    return document


# ---------------------------------------------------------------------------------------------
# The handler


def run_export(ctx: JobContext, *, export_wait: float = EXPORT_WAIT) -> Outcome:
    """Build the request's package and queue its parts; return the outcome (raise BotError)."""
    finished = ctx.checkpoint.get("finished")
    if finished:
        return _outcome(ctx, finished)  # parts already queued: uploads are idempotent
    export = parser.load_export(ctx.request.command)
    started = ctx.checkpoint.get("started_at")
    if not started:
        started = iso(ctx.clock.now())
        ctx.save(started_at=started)
    search = _subject_scope(ctx, export)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    info = PackageInfo(
        request_id=ctx.request.id,
        requester=ctx.request.requester,
        ticket=export.meta.ticket,
        reason=export.meta.reason,
        scope=export.describe(),
        endpoint_host=ctx.client.endpoint_host,
        api_version=API_VERSION,
        started_at=parse_iso(started),
        deadline=ctx.request.deadline,
        search=search,
    )
    try:
        parts, counts = _build(ctx, export, info, export_wait)
    except JobCancelled:
        # Cancelled: nothing will be posted, so the downloaded personal data goes now.
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        raise
    except NotFound as exc:
        raise _named(exc, export) from exc
    except FetcherLost as lost:
        raise _lost_again(ctx, lost) from lost
    finished = _queue_uploads(ctx, export, parts, counts)
    _discard_cache(ctx.work_dir)
    return _outcome(ctx, finished)


def _lost_again(ctx: JobContext, lost: FetcherLost) -> FetcherLost | BotError:
    """Return what to raise for a lost download process: `lost` itself, which the runner
    retries from the checkpoint, unless it was lost MAX_LOSSES times in a row without a file
    more settled: then the error that fails the request, saying how to resume it."""
    done = int(ctx.checkpoint.get("files_done", 0))
    before = ctx.checkpoint.get("fetcher_lost") or {}
    again = before.get("round") == ctx.round and before.get("files_done") == done
    times = int(before.get("times", 0)) + 1 if again else 1
    with ctx.transaction() as tx:  # no stop or cancel check: _collect made it
        tx.save(fetcher_lost={"round": ctx.round, "files_done": done, "times": times})
    if times < MAX_LOSSES:
        return lost
    return BotError(
        f"The export's download process stopped {count(times, 'time')} in a row without "
        f"progress (last: it {lost.detail}). The {count(done, 'file')} settled so far are "
        f"kept: `{ctx.settings.command} retry {ctx.request.id}` continues where it stopped."
    )


def _discard_cache(work_dir: Path) -> None:
    """Remove the download cache of a finished package without holding up the request.

    The folder is renamed at once (nothing reads it any more) and emptied on a thread of its
    own: deleting one file per image takes a second at 20,000 images. A crash before it is
    gone leaves it in the request's work folder, which goes once the parts are posted
    (Service.purge_work_files).
    """
    cache = work_dir / CACHE_DIR
    trash = work_dir / f".{CACHE_DIR}-{uuid.uuid4().hex}"
    try:
        os.replace(cache, trash)
    except FileNotFoundError:
        return
    except OSError:
        shutil.rmtree(cache, ignore_errors=True)
        return
    threading.Thread(
        target=shutil.rmtree,
        args=(trash,),
        kwargs={"ignore_errors": True},
        name="cache-discard",
        daemon=True,
    ).start()


def _subject_scope(ctx: JobContext, export: commands.Export) -> dict[str, Any] | None:
    """Return the scope a subject export searches, fixed at its first attempt (a resumed job
    reads the same resources, projects and iterations); None for other kinds."""
    if export.selectors is None:
        return None
    search = ctx.checkpoint.get("search")
    if not isinstance(search, dict):
        search = subject.frozen_scope(ctx.clients, export.selectors)
        ctx.save(search=search)
    if search["unknown_projects"]:
        raise not_found("Project", search["unknown_projects"], "NotFoundProject")
    return search


def _build(
    ctx: JobContext, export: commands.Export, info: PackageInfo, export_wait: float
) -> tuple[list[Part], dict[str, int]]:
    with PackageWriter(
        ctx.work_dir, info, max_part_bytes=ctx.settings.max_file_bytes, clock=ctx.clock.now
    ) as writer:
        if writer.has(package.MANIFEST_NAME):
            # finish() ran before a crash; only the queueing was left.
            return writer.finish(), dict(ctx.checkpoint.get("counts") or {})
        cache = DownloadCache(ctx.work_dir / CACHE_DIR)
        build = _Build(ctx, export, writer, cache, export_wait=export_wait)
        try:
            counts = build.run()
        except BaseException:
            if build.views is not None:
                build.views.discard()
            raise
        finally:
            build.downloads.close()
            cache.close()
        built = ctx.checkpoint.get("views_built_at")
        if not built:
            built = iso(ctx.clock.now())
            ctx.save(views_built_at=built)
        ctx.progress(0, 1, "building the index pages", force=True)
        browse.add_views(
            writer,
            info,
            built_at=parse_iso(built),
            project_id=export.project_id,
            streamed=build.views,
        )
        for key, n in counts.items():
            writer.count(key, n)
        ctx.save(section="packaging", counts=counts)
        ctx.progress(1, 1, "packaging", force=True)
        return writer.finish(), counts


def _named(exc: NotFound, export: commands.Export) -> NotFound:
    """Return a NotFound naming the kind and id of what was missing, when the export knows it."""
    kind = _NOT_FOUND_KINDS.get(exc.code or "")
    if kind is None:
        return exc
    what, field = kind
    ident = getattr(export, field)
    if ident is None:
        return exc
    return not_found(what, [ident], exc.code or "NotFound", operation=exc.operation)


def _queue_uploads(
    ctx: JobContext, export: commands.Export, parts: Sequence[Part], counts: Mapping[str, int]
) -> dict[str, Any]:
    """Queue every part and record it, with the checkpoint saying so, in one transaction."""
    record = ctx.request
    total = len(parts)
    files: list[dict[str, Any]] = [
        {"name": p.path.name, "size": p.size, "sha256": p.sha256} for p in parts
    ]
    finished = {"parts": files, "counts": dict(counts)}
    with ctx.transaction() as tx:
        for part, file in zip(parts, files, strict=True):
            where = f" (part {part.index} of {total})" if total > 1 else ""
            queued = tx.queue_upload(
                f"upload:{record.number}:part{part.index}",
                part.path,
                filename=file["name"],
                title=f"{record.id} export{where}",
                comment=f"{record.id}: {export.describe()}{where};"
                f" {human_size(part.size)}, SHA-256 {part.sha256}",
            )
            if queued:
                tx.audit("file.queued", targets=(file["name"],), details=file)
        tx.save(finished=finished)
    return finished


def _outcome(ctx: JobContext, finished: Mapping[str, Any]) -> Outcome:
    files = [dict(f) for f in finished["parts"]]
    counts = dict(finished["counts"])
    return Outcome(
        request_status=Status.DONE,
        result={"parts": files, "counts": counts},
        message=summary(ctx.request.id, counts, files),
        audit_action="request.completed",
        audit_details={"files": files, "counts": counts},
    )
