"""The Custom Vision Training API v3.3 client, over plain `requests`. An I/O adapter.

Every call goes to `{endpoint}/customvision/v3.3/training/<path>` with the `Training-Key` and
`Accept: application/json` headers and a timeout, and answers with models (bot.models) or the
HTTP status of a change; every failure becomes one of bot.errors' typed errors.

Retries live in one place, `TrainingClient._retrying`, with the rules:
- retried: 429 (waits for `Retry-After`, else the "retry after N seconds" / "try again in N
  seconds" of the gateway's message, else exponential backoff with full jitter; every wait is
  capped by `backoff_cap`), 5xx, timeouts, dropped or refused connections. Other answers are
  final. After `max_attempts` the last failure is raised as Throttled, ServiceError or
  TransportError, carrying the status, the service's code and the operation id.
- deletes are idempotent in effect, so they are retried like reads. But when an attempt may
  have reached the service (timeout, dropped connection, 5xx), its effect is unknown: a retry
  of DeleteProject / DeleteIteration / DeleteTag may then answer NotFound because the first
  attempt did delete it, and a retry of UnpublishIteration may be refused (with a code no
  public source confirms, so the iteration is read back: not published means done). After
  such an attempt those answers mean "already done" and the call returns 204. After a 429
  (the gateway refused the call, nothing ran) or on the first attempt they stay errors: the
  object really was not there. DeleteImages / DeletePrediction ignore ids that are already
  gone, so a plain retry is enough for them.

Rate limiting: every attempt (retries too) of a Training API call first takes a slot from a
RateLimiter shared by every client of the process for the same endpoint (`shared_limiter`),
and reports its answer to it (a 429 widens the limiter's margin for every thread).
Blob downloads of absolute URIs are not Training API calls and are not limited; GetArtifact is.

Connections: a client that makes its own session keeps up to `connections` of them open per
host, one for each thread that may call at once (the app counts its download threads).

Downloads stream to a temporary file beside the destination in 64 KiB chunks, hashing as they
go, and are renamed into place only when complete; a body shorter than its Content-Length is
retried like a dropped connection and, if it persists, raised as MalformedResponse.

Secrets: the key is sent only in the `Training-Key` header of Training API calls (never to blob
links, never across a redirect), and never appears in a message, log line or repr; messages
also never quote a download URI (blob links carry SAS signatures).

Pure (no I/O): chunks, retry_after_hint, backoff_delay and the error-body parsing below.
"""

from __future__ import annotations

import base64
import collections
import email.utils
import hashlib
import itertools
import json
import logging
import math
import os
import pathlib
import random
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn, TypeVar
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from bot import wording
from bot.errors import (
    MalformedResponse,
    NotFound,
    QuotaExhausted,
    ServiceError,
    Throttled,
    TrainingApiError,
    TransportError,
    Unauthorized,
)
from bot.ids import is_guid
from bot.models import (
    Domain,
    Export,
    Image,
    Iteration,
    IterationPerformance,
    M,
    PredictionQueryResult,
    Project,
    StoredImagePrediction,
    Tag,
    parse_list,
)

__all__ = [
    "API_VERSION",
    "BLOB_OPERATION",
    "DOWNLOAD_CHUNK",
    "MAX_IMAGE_IDS",
    "MAX_PREDICTION_IDS",
    "MAX_TAG_IDS",
    "MAX_TAKE",
    "Download",
    "ImageKind",
    "RateLimiter",
    "Slot",
    "TrainingClient",
    "backoff_delay",
    "chunks",
    "quota_wait",
    "retry_after_hint",
    "shared_limiter",
]

API_VERSION = "v3.3"
MAX_IMAGE_IDS = 256  # imageIds per DeleteImages / GetImagesByIds call
MAX_PREDICTION_IDS = 64  # ids per DeletePrediction call
MAX_TAG_IDS = 20  # tagIds per image listing
MAX_TAKE = 256  # images per page
MAX_UPLOAD_IMAGES = 64  # images per CreateImagesFromFiles batch
MAX_METADATA_IMAGES = 64  # imageIds per UpdateImageMetadata call
DOWNLOAD_CHUNK = 64 * 1024
HEAD_BYTES = 16

log = logging.getLogger(__name__)

T = TypeVar("T")
ImageKind = Literal["all", "tagged", "untagged"]

_IMAGE_LISTS: dict[str, tuple[str, str]] = {
    "all": ("GetImages", "/images"),
    "tagged": ("GetTaggedImages", "/images/tagged"),
    "untagged": ("GetUntaggedImages", "/images/untagged"),
}
_IMAGE_COUNTS: dict[str, tuple[str, str]] = {
    "all": ("GetImageCount", "/images/count"),
    "tagged": ("GetTaggedImageCount", "/images/tagged/count"),
    "untagged": ("GetUntaggedImageCount", "/images/untagged/count"),
}
_ORDERS = ("Newest", "Oldest")
BLOB_OPERATION = "BlobDownload"  # the operation name of absolute-URI (blob link) downloads
_BLOB = BLOB_OPERATION
_MAX_REDIRECTS = 3
_KEY_CHARS = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII: what a header value may carry
_REQUEST_ID = re.compile(r"^[\w.:-]{1,100}$")
_RETRY_TEXT = re.compile(
    r"(?:retry after|try again in)\s+(\d+(?:\.\d+)?)\s*sec", re.IGNORECASE
)  # the gateway's "Please retry after 1 second" / "Try again in 2 seconds"


# ---------------------------------------------------------------------------------------------
# Pure helpers


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """Return `items` split into lists of at most `size` (for the per-call id caps)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def retry_after_hint(
    header: str | None, message: str | None, *, now: datetime | None = None
) -> float | None:
    """Return the seconds a 429/503 asks to wait (Retry-After header, else the message), or None."""
    if header:
        value = header.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            if when is not None and when.tzinfo is not None:
                current = now or datetime.now(UTC)
                return max(0.0, (when - current).total_seconds())
        else:
            if math.isfinite(seconds) and seconds >= 0:
                return seconds
    if message:
        match = _RETRY_TEXT.search(message)
        if match:
            return float(match.group(1))
    return None


_QUOTA_TEXT = re.compile(r"out of call volume quota", re.IGNORECASE)
_REPLENISHED = re.compile(r"replenished in\s+(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})", re.IGNORECASE)
_RETRY_UNITS = re.compile(r"retry after\s+(\d+)\s*(day|hour|minute|second)", re.IGNORECASE)
_UNIT_SECONDS = {"day": 86_400, "hour": 3600, "minute": 60, "second": 1}


def quota_wait(header: str | None, message: str | None) -> float | None:
    """Return the seconds until a used-up call volume quota is replenished, or None.

    From the Retry-After header, else the gateway's message: APIM's "Quota will be replenished
    in 2.03:14:07" (.NET TimeSpan, d.hh:mm:ss) or Cognitive Services' "Please retry after 7
    days".
    """
    hint = retry_after_hint(header, None)
    if hint is not None:
        return hint
    text = message or ""
    match = _REPLENISHED.search(text)
    if match:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        return float(((days * 24 + hours) * 60 + minutes) * 60 + seconds)
    match = _RETRY_UNITS.search(text)
    if match:
        return float(int(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()])
    return None


def backoff_delay(
    attempt: int, *, base: float, cap: float, hint: float | None, rng: random.Random
) -> float:
    """Return the wait before attempt `attempt + 1`: the hint if any, else full-jitter backoff."""
    if hint is not None:
        return min(hint, cap)
    return rng.uniform(0.0, min(cap, base * 2 ** (attempt - 1)))


def _require_guid(name: str, value: object) -> str:
    if not isinstance(value, str) or not is_guid(value):
        raise ValueError(f"{name} is not a GUID: {value!r}")
    return value


def _require_guids(name: str, values: Sequence[str], *, limit: int | None = None) -> list[str]:
    if isinstance(values, str):
        # A lone string is a Sequence[str] too; iterating it would check single characters.
        raise ValueError(f"{name} must be a list of GUIDs, not one string: {values!r}")
    checked = [_require_guid(name, v) for v in values]
    if limit is not None and len(checked) > limit:
        raise ValueError(f"{name}: at most {limit} per call, got {len(checked)}")
    return checked


def _csv(values: Sequence[str]) -> str:
    return ",".join(values)


def _tagging(tag_ids: list[str], regions: bool) -> dict[str, Any]:
    """An upload entry's tags: image tags, or one region per tag in equal vertical strips."""
    if not regions:
        return {"tagIds": tag_ids}
    width = 1 / max(1, len(tag_ids))
    return {
        "regions": [
            {"tagId": t, "left": n * width, "top": 0.1, "width": width * 0.9, "height": 0.8}
            for n, t in enumerate(tag_ids)
        ]
    }


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _parse_count(data: object) -> int | None:
    # The spec says integer; its own examples for the tagged/untagged counts show "10", so a
    # string of digits is accepted too.
    if isinstance(data, int) and not isinstance(data, bool) and data >= 0:
        return data
    if isinstance(data, str) and data.isdigit():
        return int(data)
    return None


def _request_ref(headers: Mapping[str, str]) -> str:
    """The gateway's request id, for support tickets: " (request id ...)" or ""."""
    value = headers.get("apim-request-id") or headers.get("x-ms-request-id") or ""
    return f" (request id {value})" if _REQUEST_ID.match(value) else ""


def _error_body(content: bytes) -> tuple[str | None, str | None]:
    """Return (code, message) from either error shape, or (None, None) when it is neither."""
    try:
        data = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    inner = data.get("error")
    body = inner if isinstance(inner, dict) else data  # gateway: {"error": {code, message}}
    code = body.get("code")
    message = body.get("message")
    code_text = str(code) if isinstance(code, str | int) and not isinstance(code, bool) else None
    message_text = message if isinstance(message, str) else None
    if code_text is None and message_text is None:
        return None, None
    return code_text, message_text


def _check_page_size(name: str, value: int) -> None:
    """Raise ValueError unless `value` is a page size the service accepts (1 to 256)."""
    if isinstance(value, bool) or not (1 <= value <= MAX_TAKE):
        raise ValueError(f"{name} must be between 1 and {MAX_TAKE}, got {value!r}")


def _check_skip(skip: int) -> None:
    """Raise ValueError unless `skip` is a valid offset."""
    if isinstance(skip, bool) or skip < 0:
        raise ValueError(f"skip must not be negative, got {skip!r}")


# ---------------------------------------------------------------------------------------------
# Rate limiting


# The service counts the calls it admits in a sliding one-second window: `rate` calls in any
# second, and the next one is answered 429 "retry after 1 second" (emulators.customvision
# `_throttle`; Microsoft's limits page: 10 calls per second). The limiter keeps that window
# itself: a call may start once the call `capacity` places before it has left the window.
# The service counts a call somewhere between its start and its answer, so each call is
# reckoned from its answer, which is exact whatever the network did, unless the answer comes
# later than its start plus a margin: then from that (a slow call must not hold the window
# for its whole round trip; it assumes the request reached the gateway within the margin).
# So a window costs the round trip of its first call (a few ms here), not a fixed share:
# spacing every start 5% wider than 1/rate, as the client did before, cost 5% of every bound
# and still drew 429s on a loaded machine (bench 3 at full size: requests reached the
# emulator up to 60 ms after they were sent). A 429 proves a request took longer than the
# margin: it doubles (to at least MARGIN_STEP, at most MARGIN_MAX) and halves back every
# MARGIN_HALF_LIFE answers without a 429. Margins are fractions of the window.
MARGIN = 0.1
MARGIN_STEP = 0.2
MARGIN_MAX = 0.5
MARGIN_HALF_LIFE = 350  # answers without a 429 (about 35 s at 10/s)


@dataclass(eq=False)
class Slot:
    """One call's place in the limiter's window (from RateLimiter.acquire)."""

    start: float
    counted_by: float  # the latest time the service counts it: start + margin, or its answer


class RateLimiter:
    """Starts at most `rate` calls in any one-second window across all threads and clients
    that share it, reckoning each call from its answer (see `answered`) or its start plus a
    margin that widens after a 429 (`throttled`) and decays again.

    acquire() reserves the next place under a lock and sleeps outside it, so threads go in
    arrival order. A rate below 1 (or with a fraction) keeps whole calls per a longer window:
    `capacity` = max(1, floor(rate)) calls per capacity / rate seconds.
    """

    def __init__(
        self,
        rate_per_second: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self._set_rate(rate_per_second)
        self._slots: collections.deque[Slot] = collections.deque()
        self._floor = -math.inf  # the latest counted_by of the slots that left the deque
        self._last_start = -math.inf
        self._margin = MARGIN
        self.throttled_count = 0  # 429s reported to it (diagnostics, tests)

    def _set_rate(self, rate_per_second: float) -> None:
        if not (rate_per_second > 0 and math.isfinite(rate_per_second)):
            raise ValueError(f"rate must be a positive number, got {rate_per_second!r}")
        self._rate = float(rate_per_second)
        self._capacity = max(1, math.floor(self._rate))
        self._window = self._capacity / self._rate

    @property
    def rate(self) -> float:
        """Return the calls per second this limiter allows."""
        return self._rate

    @property
    def margin(self) -> float:
        """Return the seconds a call is reckoned after its start when its answer is late."""
        with self._lock:
            return self._margin * self._window

    def lower_rate(self, rate_per_second: float) -> None:
        """Lower the rate to `rate_per_second` if that is lower (never raises it)."""
        if not (rate_per_second > 0 and math.isfinite(rate_per_second)):
            raise ValueError(f"rate must be a positive number, got {rate_per_second!r}")
        with self._lock:
            if rate_per_second < self._rate:
                self._set_rate(rate_per_second)
                while len(self._slots) > self._capacity:
                    self._floor = max(self._floor, self._slots.popleft().counted_by)

    def acquire(self) -> Slot:
        """Block until a call may start; return its slot (pass it to `answered`)."""
        with self._lock:
            now = self._clock()
            start = max(now, self._last_start)
            if len(self._slots) >= self._capacity:
                oldest = self._slots.popleft()
                self._floor = max(self._floor, oldest.counted_by)
                start = max(start, self._floor + self._window)
            slot = Slot(start, start + self._margin * self._window)
            self._slots.append(slot)
            self._last_start = start
        if start > now:
            self._sleep(start - now)
            # A loaded machine wakes a sleeper late: reckon the call from when it really goes.
            with self._lock:
                woke = self._clock()
                slot.start = max(start, woke)
                slot.counted_by = max(slot.counted_by, woke + self._margin * self._window)
                self._last_start = max(self._last_start, slot.start)
        return slot

    def answered(self, slot: Slot, *, throttled: bool = False) -> None:
        """Record that the call of `slot` was answered (429 when `throttled`): the service
        counted it by now. A 429 widens the margin; other answers let it decay."""
        with self._lock:
            slot.counted_by = min(slot.counted_by, self._clock())
            if throttled:
                self.throttled_count += 1
                self._margin = min(MARGIN_MAX, max(MARGIN_STEP, 2 * self._margin))
            elif self._margin > MARGIN:
                self._margin = max(MARGIN, self._margin * 0.5 ** (1 / MARGIN_HALF_LIFE))

    def __repr__(self) -> str:
        return f"RateLimiter(rate_per_second={self._rate})"


# Weak values: a limiter lives as long as a client uses it, so a later server on a reused
# port (tests) starts fresh instead of inheriting an old rate.
_SHARED: weakref.WeakValueDictionary[str, RateLimiter] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _endpoint_key(endpoint: str) -> str:
    parts = urlsplit(endpoint.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def shared_limiter(endpoint: str, rate_per_second: float) -> RateLimiter:
    """Return the process-wide limiter for `endpoint` (the lowest rate asked for wins)."""
    key = _endpoint_key(endpoint)
    with _SHARED_LOCK:
        limiter = _SHARED.get(key)
        if limiter is None:
            limiter = RateLimiter(rate_per_second)
            _SHARED[key] = limiter
        else:
            limiter.lower_rate(rate_per_second)
        return limiter


# ---------------------------------------------------------------------------------------------
# The client


@dataclass(frozen=True)
class Download:
    """A file written by TrainingClient.download()."""

    path: pathlib.Path
    size: int
    sha256: str
    head: bytes = b""  # its first HEAD_BYTES bytes: enough to tell its type


class _Retryable(Exception):
    """One attempt failed in a way worth another try (internal to the retry loop)."""

    def __init__(
        self,
        kind: Literal["throttled", "server", "transport", "truncated"],
        detail: str,
        *,
        status: int | None = None,
        code: str | None = None,
        message: str | None = None,
        hint: float | None = None,
        ref: str = "",
        maybe_applied: bool,
    ) -> None:
        super().__init__(kind)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.code = code
        self.message = message
        self.hint = hint
        self.ref = ref  # " (request id ...)" for messages, or ""
        # True when the service may have acted on the request before the failure.
        self.maybe_applied = maybe_applied


@dataclass
class _AttemptState:
    number: int = 0
    maybe_applied: bool = False  # an earlier attempt may have reached the service


@dataclass(frozen=True)
class _Answer:
    status: int
    content: bytes
    content_type: str


class TrainingClient:
    """A Training API v3.3 client for one Custom Vision resource (thread-safe).

    Without a training key (None) it only downloads blob links (absolute URIs): what the
    export's download process (bot.fetcher) needs, holding no secret; a keyed call raises
    ValueError.
    """

    def __init__(
        self,
        endpoint: str,
        training_key: str | None,
        *,
        session: requests.Session | None = None,
        tps: float = 10.0,
        limiter: RateLimiter | None = None,
        timeout: float = 30.0,
        connections: int = 10,
        max_attempts: int = 6,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        parts = urlsplit(endpoint.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http(s) URL, got {endpoint!r}")
        if training_key is not None and (
            not isinstance(training_key, str) or not _KEY_CHARS.match(training_key)
        ):
            # Never echo the key: say only what is wrong with it.
            raise ValueError("the training key is empty or has characters a key cannot have")
        if not (timeout > 0):
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts!r}")
        if backoff_base < 0 or backoff_cap < 0:
            raise ValueError("backoff_base and backoff_cap must not be negative")
        self.endpoint = endpoint.strip().rstrip("/")
        self.endpoint_host: str = parts.netloc.rpartition("@")[2].lower()
        self._base = f"{self.endpoint}/customvision/{API_VERSION}/training"
        self._key = training_key  # None: blob links only (the export's download process)
        if connections < 1:
            raise ValueError(f"connections must be at least 1, got {connections!r}")
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            # One kept-alive connection per host for each thread that may call at once (the
            # download threads): with fewer, every idle moment drops connections beyond the
            # pool and the next downloads open them again (a TLS handshake each in Azure).
            adapter = HTTPAdapter(pool_maxsize=connections)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
        self._session = session
        self._limiter = limiter if limiter is not None else shared_limiter(self.endpoint, tps)
        self._timeout = float(timeout)
        self._max_attempts = max_attempts
        self._backoff_base = float(backoff_base)
        self._backoff_cap = float(backoff_cap)
        self._sleep = sleep
        self._rng = random.Random()  # jitter, not security
        self._blob_settings: dict[str, dict[str, Any]] = {}  # origin -> proxies, verify, cert

    def __repr__(self) -> str:
        return f"TrainingClient(endpoint={self.endpoint!r}, tps={self._limiter.rate})"

    @property
    def download_settings(self) -> dict[str, float | int]:
        """Return the timeout and retry settings a keyless copy of this client downloads with
        (bot.fetcher's process builds its client from them)."""
        return {
            "timeout": self._timeout,
            "max_attempts": self._max_attempts,
            "backoff_base": self._backoff_base,
            "backoff_cap": self._backoff_cap,
        }

    @property
    def limiter(self) -> RateLimiter:
        """Return the rate limiter this client takes its call slots from."""
        return self._limiter

    def close(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> TrainingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reads ---------------------------------------------------------------------------------

    def get_domains(self) -> list[Domain]:
        """Return every domain; raise TrainingApiError subclasses on failure."""
        return self._list("GetDomains", "/domains", Domain)

    def get_projects(self) -> list[Project]:
        """Return every project of the resource."""
        return self._list("GetProjects", "/projects", Project)

    def get_project(self, project_id: str) -> Project:
        """Return one project; raise NotFound when it does not exist."""
        p = _require_guid("project_id", project_id)
        return self._one("GetProject", f"/projects/{p}", Project)

    def get_iterations(self, project_id: str) -> list[Iteration]:
        """Return the iterations of a project."""
        p = _require_guid("project_id", project_id)
        return self._list("GetIterations", f"/projects/{p}/iterations", Iteration)

    def get_iteration(self, project_id: str, iteration_id: str) -> Iteration:
        """Return one iteration; raise NotFound when it does not exist."""
        p = _require_guid("project_id", project_id)
        i = _require_guid("iteration_id", iteration_id)
        return self._one("GetIteration", f"/projects/{p}/iterations/{i}", Iteration)

    def get_iteration_performance(
        self,
        project_id: str,
        iteration_id: str,
        threshold: float | None = None,
        overlap_threshold: float | None = None,
    ) -> IterationPerformance:
        """Return an iteration's performance at the given thresholds (service defaults if None)."""
        p = _require_guid("project_id", project_id)
        i = _require_guid("iteration_id", iteration_id)
        params: dict[str, str] = {}
        for name, value in (("threshold", threshold), ("overlapThreshold", overlap_threshold)):
            if value is not None:
                if isinstance(value, bool) or not (0.0 <= value <= 1.0):
                    raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
                params[name] = repr(float(value))
        path = f"/projects/{p}/iterations/{i}/performance"
        return self._one("GetIterationPerformance", path, IterationPerformance, params)

    def get_exports(self, project_id: str, iteration_id: str) -> list[Export]:
        """Return the exported models of an iteration."""
        p = _require_guid("project_id", project_id)
        i = _require_guid("iteration_id", iteration_id)
        return self._list("GetExports", f"/projects/{p}/iterations/{i}/export", Export)

    def get_tags(self, project_id: str, iteration_id: str | None = None) -> list[Tag]:
        """Return the tags of the workspace, or of an iteration's snapshot."""
        p = _require_guid("project_id", project_id)
        params = self._iteration_param(iteration_id)
        return self._list("GetTags", f"/projects/{p}/tags", Tag, params)

    def get_tag(self, project_id: str, tag_id: str, iteration_id: str | None = None) -> Tag:
        """Return one tag; raise NotFound when it does not exist."""
        p = _require_guid("project_id", project_id)
        t = _require_guid("tag_id", tag_id)
        params = self._iteration_param(iteration_id)
        return self._one("GetTag", f"/projects/{p}/tags/{t}", Tag, params)

    def get_images_page(
        self,
        project_id: str,
        *,
        kind: ImageKind = "all",
        iteration_id: str | None = None,
        tag_ids: Sequence[str] = (),
        skip: int = 0,
        take: int = MAX_TAKE,
        order_by: str = "Oldest",
        where: str | None = None,
    ) -> list[Image]:
        """Return one page of images (GetImages / GetTaggedImages / GetUntaggedImages).

        `where`: a metadata `$filter` (`bot.subject.metadata_filter`), GetImages only.
        """
        operation, path, params = self._image_query(project_id, kind, iteration_id, tag_ids, where)
        _check_page_size("take", take)
        _check_skip(skip)
        if order_by not in _ORDERS:
            raise ValueError(f"order_by must be one of {_ORDERS}, got {order_by!r}")
        params.update({"orderBy": order_by, "take": str(take), "skip": str(skip)})
        return self._list(operation, path, Image, params)

    def iter_images(
        self,
        project_id: str,
        *,
        kind: ImageKind = "all",
        iteration_id: str | None = None,
        tag_ids: Sequence[str] = (),
        skip: int = 0,
        page_size: int = MAX_TAKE,
        where: str | None = None,
    ) -> Iterator[Image]:
        """Return an iterator over every image, oldest first, page by page until a short page."""
        pages = self.iter_image_pages(
            project_id,
            kind=kind,
            iteration_id=iteration_id,
            tag_ids=tag_ids,
            skip=skip,
            page_size=page_size,
            where=where,
        )
        return itertools.chain.from_iterable(pages)

    def iter_image_pages(
        self,
        project_id: str,
        *,
        kind: ImageKind = "all",
        iteration_id: str | None = None,
        tag_ids: Sequence[str] = (),
        skip: int = 0,
        page_size: int = MAX_TAKE,
        where: str | None = None,
    ) -> Iterator[list[Image]]:
        """Return an iterator over the pages of images, oldest first, until a short page (the
        last page may be empty)."""
        self._image_query(project_id, kind, iteration_id, tag_ids, where)  # validate now
        _check_page_size("page_size", page_size)
        _check_skip(skip)
        tags = list(tag_ids)

        def pages() -> Iterator[list[Image]]:
            offset = skip
            while True:
                # Oldest first: images added meanwhile land after the pages already read.
                page = self.get_images_page(
                    project_id,
                    kind=kind,
                    iteration_id=iteration_id,
                    tag_ids=tags,
                    skip=offset,
                    take=page_size,
                    order_by="Oldest",
                    where=where,
                )
                yield page
                if len(page) < page_size:
                    return
                offset += len(page)

        return pages()

    def count_images(
        self,
        project_id: str,
        *,
        kind: ImageKind = "all",
        iteration_id: str | None = None,
        tag_ids: Sequence[str] = (),
        where: str | None = None,
    ) -> int:
        """Return the number of images (GetImageCount / GetTagged... / GetUntaggedImageCount).

        `where`: a metadata `$filter`, GetImageCount only (kind "all").
        """
        _, _, params = self._image_query(project_id, kind, iteration_id, tag_ids, where)
        operation, suffix = _IMAGE_COUNTS[kind]
        data = self._json(operation, "GET", f"/projects/{project_id}{suffix}", params)
        count = _parse_count(data)
        if count is None:
            raise self._malformed(operation, "expected a count (a non-negative integer)")
        return count

    def get_images_by_ids(
        self, project_id: str, image_ids: Sequence[str], iteration_id: str | None = None
    ) -> list[Image]:
        """Return the images with these ids that exist (any number; sent in batches of 256)."""
        p = _require_guid("project_id", project_id)
        ids = _require_guids("image_ids", image_ids)
        params = self._iteration_param(iteration_id)
        images: list[Image] = []
        for batch in chunks(ids, MAX_IMAGE_IDS):
            batch_params = {**params, "imageIds": _csv(batch)}
            path = f"/projects/{p}/images/id"
            images.extend(self._list("GetImagesByIds", path, Image, batch_params))
        return images

    def query_predictions(
        self, project_id: str, token: Mapping[str, Any] | None = None, *, max_count: int = 256
    ) -> PredictionQueryResult:
        """Return one page of stored predictions; pass the previous page's token to go on."""
        p = _require_guid("project_id", project_id)
        _check_page_size("max_count", max_count)
        if token is not None and not isinstance(token, Mapping):
            raise ValueError("token must be the token object of a previous page")
        body: dict[str, Any] = dict(token) if token is not None else {}
        iteration = body.get("iterationId")
        if iteration is not None:
            _require_guid("token.iterationId", iteration)
        body["maxCount"] = max_count
        # Oldest first unless the caller chose: predictions stored meanwhile come last.
        body.setdefault("orderBy", "Oldest")
        path = f"/projects/{p}/predictions/query"
        data = self._json("QueryPredictions", "POST", path, None, body)
        return self._model("QueryPredictions", PredictionQueryResult, data)

    def iter_predictions(
        self, project_id: str, *, max_count: int = MAX_TAKE
    ) -> Iterator[StoredImagePrediction]:
        """Return an iterator over every stored prediction, following the continuation token."""
        _require_guid("project_id", project_id)
        _check_page_size("max_count", max_count)

        def pages() -> Iterator[StoredImagePrediction]:
            token: dict[str, Any] | None = None
            seen: set[str] = set()
            while True:
                result = self.query_predictions(project_id, token, max_count=max_count)
                yield from result.results
                if result.token is None or not result.token.continuation:
                    return
                continuation = result.token.continuation
                if continuation in seen:
                    # The same page again would loop forever and hide the rest.
                    raise self._malformed("QueryPredictions", "the continuation token repeated")
                seen.add(continuation)
                token = result.token.to_dict()

        return pages()

    def download(self, uri: str, dest: pathlib.Path, *, project_id: str | None = None) -> Download:
        """Stream an image/export to `dest` and return its size and sha256.

        An absolute http(s) URI (a blob link) is fetched without the key; a relative path goes
        through GetArtifact with the key for `project_id`. The file appears only when complete.
        """
        if not isinstance(uri, str) or not uri.strip():
            raise ValueError("the download URI is empty (is the export finished?)")
        parts = urlsplit(uri)
        if parts.scheme:
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                # Do not echo the URI: a blob link carries a SAS signature.
                raise ValueError(f"cannot download a {parts.scheme!r} URI")
            operation, url, params = _BLOB, uri, None
        else:
            if project_id is None:
                raise ValueError("a relative artifact path needs project_id (GetArtifact)")
            p = _require_guid("project_id", project_id)
            operation = "GetArtifact"
            url = f"{self._base}/projects/{p}/artifacts"
            params = {"path": uri}
        target = pathlib.Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        return self._retrying(
            operation,
            lambda state: self._download_once(operation, url, params, target),
        )

    # -- changes -------------------------------------------------------------------------------

    def delete_project(self, project_id: str) -> int:
        """Delete a project; return 204 (also when a retry finds it already deleted)."""
        p = _require_guid("project_id", project_id)
        return self._change("DeleteProject", f"/projects/{p}", None, done_if=_is_not_found)

    def delete_iteration(self, project_id: str, iteration_id: str) -> int:
        """Delete an iteration; return 204 (also when a retry finds it already deleted)."""
        p = _require_guid("project_id", project_id)
        i = _require_guid("iteration_id", iteration_id)
        path = f"/projects/{p}/iterations/{i}"
        return self._change("DeleteIteration", path, None, done_if=_is_not_found)

    def unpublish_iteration(self, project_id: str, iteration_id: str) -> int:
        """Unpublish an iteration; return 204 (also when a retry finds it already unpublished)."""
        p = _require_guid("project_id", project_id)
        i = _require_guid("iteration_id", iteration_id)
        path = f"/projects/{p}/iterations/{i}/publish"

        def unpublished(error: TrainingApiError) -> bool:
            # The code for "not published" has no public source: read the iteration back.
            if error.status is None or not 400 <= error.status < 500:
                return False
            try:
                return not self.get_iteration(p, i).publish_name
            except NotFound:
                return True

        return self._change("UnpublishIteration", path, None, done_if=unpublished)

    def delete_tag(self, project_id: str, tag_id: str) -> int:
        """Delete a tag; return 204 (also when a retry finds it already deleted)."""
        p = _require_guid("project_id", project_id)
        t = _require_guid("tag_id", tag_id)
        return self._change("DeleteTag", f"/projects/{p}/tags/{t}", None, done_if=_is_not_found)

    def delete_images(
        self, project_id: str, image_ids: Sequence[str], *, all_iterations: bool = True
    ) -> int:
        """Delete up to 256 images in ONE call; return 202 (all_iterations) or 204."""
        p = _require_guid("project_id", project_id)
        ids = _require_guids("image_ids", image_ids, limit=MAX_IMAGE_IDS)
        if not ids:
            raise ValueError("image_ids is empty: nothing to delete")
        params = {"imageIds": _csv(ids), "allIterations": _bool(all_iterations)}
        return self._change("DeleteImages", f"/projects/{p}/images", params)

    def delete_predictions(self, project_id: str, prediction_ids: Sequence[str]) -> int:
        """Delete up to 64 stored predictions in ONE call; return the status (204)."""
        p = _require_guid("project_id", project_id)
        ids = _require_guids("prediction_ids", prediction_ids, limit=MAX_PREDICTION_IDS)
        if not ids:
            raise ValueError("prediction_ids is empty: nothing to delete")
        return self._change("DeletePrediction", f"/projects/{p}/predictions", {"ids": _csv(ids)})

    # -- creation (the live trial's scratch project; the bot itself never creates) -----------

    def create_project(
        self, name: str, *, description: str = "", domain_id: str | None = None
    ) -> Project:
        """Create an empty project (CreateProject); return it."""
        params = {"name": name, "description": description}
        if domain_id is not None:
            params["domainId"] = _require_guid("domain_id", domain_id)
        data = self._json("CreateProject", "POST", "/projects", params)
        return self._model("CreateProject", Project, data)

    def create_tag(self, project_id: str, name: str) -> Tag:
        """Create a workspace tag (CreateTag); return it."""
        p = _require_guid("project_id", project_id)
        data = self._json("CreateTag", "POST", f"/projects/{p}/tags", {"name": name})
        return self._model("CreateTag", Tag, data)

    def create_images(
        self,
        project_id: str,
        images: Sequence[tuple[str, bytes, Sequence[str]]],
        *,
        metadata: Mapping[str, str] | None = None,
        regions: bool = False,
    ) -> list[str]:
        """Upload up to 64 images (CreateImagesFromFiles), each (name, bytes, tag ids); return
        the new image ids in order. With `regions` (object detection) each tag becomes a
        region, side by side across the image, instead of an image tag. Raise
        MalformedResponse when the batch is not all OK."""
        p = _require_guid("project_id", project_id)
        if not 1 <= len(images) <= MAX_UPLOAD_IMAGES:
            raise ValueError(f"a batch holds 1 to {MAX_UPLOAD_IMAGES} images, got {len(images)}")
        body: dict[str, Any] = {
            "images": [
                {
                    "name": name,
                    "contents": base64.b64encode(content).decode("ascii"),
                    **_tagging(_require_guids("tag_ids", tags, limit=MAX_TAG_IDS), regions),
                }
                for name, content, tags in images
            ]
        }
        if metadata:
            body["metadata"] = dict(metadata)
        answer = self._call(
            "CreateImagesFromFiles", "POST", f"/projects/{p}/images/files", None, body
        )
        try:
            data = json.loads(answer.content)
            ids = [str(entry["image"]["id"]) for entry in data["images"] if entry["status"] == "OK"]
        except (ValueError, KeyError, TypeError):
            raise self._malformed("CreateImagesFromFiles", "no image ids", answer.status) from None
        if len(ids) != len(images):
            raise self._malformed(
                "CreateImagesFromFiles",
                f"{wording.count(len(images) - len(ids), 'image')} not created",
                200,
            )
        return ids

    def update_image_metadata(
        self, project_id: str, image_ids: Sequence[str], metadata: Mapping[str, str]
    ) -> dict[str, str]:
        """Merge `metadata` into up to 64 images (UpdateImageMetadata); return each image id's
        status ("OK" or the service's reason)."""
        p = _require_guid("project_id", project_id)
        ids = _require_guids("image_ids", image_ids, limit=MAX_METADATA_IMAGES)
        answer = self._call(
            "UpdateImageMetadata",
            "POST",
            f"/projects/{p}/images/metadata",
            {"imageIds": _csv(ids)},
            dict(metadata),
        )
        try:
            data = json.loads(answer.content)
            return {str(e["imageId"]): str(e["status"]) for e in data["images"]}
        except (ValueError, KeyError, TypeError):
            raise self._malformed(
                "UpdateImageMetadata", "no per-image status", answer.status
            ) from None

    def train_project(self, project_id: str) -> Iteration:
        """Start training a new iteration (TrainProject, billed by Azure); return it."""
        p = _require_guid("project_id", project_id)
        data = self._json("TrainProject", "POST", f"/projects/{p}/train", None)
        return self._model("TrainProject", Iteration, data)

    def publish_iteration(
        self, project_id: str, iteration_id: str, name: str, prediction_resource_id: str
    ) -> bool:
        """Publish an iteration under `name` to a prediction resource; return the answer."""
        p = _require_guid("project_id", project_id)
        i = _require_guid("iteration_id", iteration_id)
        params = {"publishName": name, "predictionId": prediction_resource_id}
        path = f"/projects/{p}/iterations/{i}/publish"
        return bool(self._json("PublishIteration", "POST", path, params))

    # -- request building ----------------------------------------------------------------------

    @staticmethod
    def _iteration_param(iteration_id: str | None) -> dict[str, str]:
        if iteration_id is None:
            return {}
        return {"iterationId": _require_guid("iteration_id", iteration_id)}

    def _image_query(
        self,
        project_id: str,
        kind: str,
        iteration_id: str | None,
        tag_ids: Sequence[str],
        where: str | None = None,
    ) -> tuple[str, str, dict[str, str]]:
        p = _require_guid("project_id", project_id)
        if kind not in _IMAGE_LISTS:
            raise ValueError(f"kind must be one of {tuple(_IMAGE_LISTS)}, got {kind!r}")
        params = self._iteration_param(iteration_id)
        if where is not None:
            # The spec gives $filter to GetImages and GetImageCount only; the tagged and
            # untagged operations would ignore it and answer every image.
            if kind != "all":
                raise ValueError("a $filter needs kind 'all' (GetImages / GetImageCount)")
            if not where.strip():
                raise ValueError("an empty $filter would match every image")
            params["$filter"] = where
        tags = _require_guids("tag_ids", tag_ids, limit=MAX_TAG_IDS)
        if tags:
            if kind == "untagged":
                raise ValueError("tag_ids cannot filter untagged images")
            params["tagIds"] = _csv(tags)
        operation, suffix = _IMAGE_LISTS[kind]
        return operation, f"/projects/{p}{suffix}", params

    def _headers(self, accept: str = "application/json") -> dict[str, str]:
        if self._key is None:
            raise ValueError("this client holds no training key: it downloads blob links only")
        return {"Training-Key": self._key, "Accept": accept}

    # -- responses -----------------------------------------------------------------------------

    def _list(
        self, operation: str, path: str, cls: type[M], params: dict[str, str] | None = None
    ) -> list[M]:
        data = self._json(operation, "GET", path, params)
        try:
            return parse_list(cls, data)
        except MalformedResponse as exc:
            raise self._malformed(operation, exc.user_message, 200) from None

    def _one(
        self, operation: str, path: str, cls: type[M], params: dict[str, str] | None = None
    ) -> M:
        return self._model(operation, cls, self._json(operation, "GET", path, params))

    def _model(self, operation: str, cls: type[M], data: object) -> M:
        try:
            return cls.from_dict(data)
        except MalformedResponse as exc:
            raise self._malformed(operation, exc.user_message, 200) from None

    def _json(
        self,
        operation: str,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: dict[str, Any] | None = None,
    ) -> Any:
        answer = self._call(operation, method, path, params, body)
        if answer.status != 200 or not answer.content:
            raise self._malformed(operation, f"HTTP {answer.status} without a body", answer.status)
        try:
            return json.loads(answer.content)
        except (ValueError, UnicodeDecodeError):
            kind = answer.content_type.split(";")[0].strip() or "no content type"
            raise self._malformed(operation, f"not JSON ({kind})", answer.status) from None

    def _change(
        self,
        operation: str,
        path: str,
        params: dict[str, str] | None,
        *,
        done_if: Callable[[TrainingApiError], bool] | None = None,
    ) -> int:
        return self._call(operation, "DELETE", path, params, None, done_if=done_if).status

    def _malformed(
        self, operation: str, detail: str, status: int | None = None
    ) -> MalformedResponse:
        return MalformedResponse(
            self._scrub(f"The response of Custom Vision to {operation} was not valid: {detail}."),
            status=status,
            operation=operation,
        )

    def _scrub(self, text: str) -> str:
        # Belt and braces: no message we build should ever carry the key.
        return text.replace(self._key, "[key]") if self._key else text

    # -- the one place where calls are sent and retried ----------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        *,
        done_if: Callable[[TrainingApiError], bool] | None = None,
    ) -> _Answer:
        url = self._base + path

        def attempt(state: _AttemptState) -> _Answer:
            slot = self._limiter.acquire()
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=body,
                    headers=self._headers(),
                    timeout=self._timeout,
                    # Never follow a redirect: requests would resend the Training-Key header.
                    allow_redirects=False,
                )
            except requests.RequestException as exc:
                raise self._transport_failure(operation, exc) from None
            self._limiter.answered(slot, throttled=response.status_code == 429)
            with response:
                status = response.status_code
                log.debug("%s %s -> %d (attempt %d)", method, operation, status, state.number)
                if 200 <= status < 300:
                    content_type = response.headers.get("Content-Type", "")
                    return _Answer(status, response.content, content_type)
                error = self._error_for(operation, status, response.content, response.headers)
            if (
                done_if is not None
                and state.maybe_applied
                and not isinstance(error, _Retryable)
                and done_if(error)
            ):
                log.info(
                    "%s: %s on attempt %d after an attempt with unknown outcome; "
                    "treating it as already done",
                    operation,
                    error.code,
                    state.number,
                )
                return _Answer(204, b"", "")
            if not isinstance(error, _Retryable):
                error.maybe_applied = state.maybe_applied
            raise error

        return self._retrying(operation, attempt)

    def _retrying(self, operation: str, attempt: Callable[[_AttemptState], T]) -> T:
        state = _AttemptState()
        for number in range(1, self._max_attempts + 1):
            state.number = number
            try:
                return attempt(state)
            except _Retryable as failure:
                state.maybe_applied = state.maybe_applied or failure.maybe_applied
                if number == self._max_attempts:
                    self._give_up(operation, failure, number, state.maybe_applied)
                delay = backoff_delay(
                    number,
                    base=self._backoff_base,
                    cap=self._backoff_cap,
                    hint=failure.hint,
                    rng=self._rng,
                )
                # Throttling is the limiter's expected edge: INFO; anything else is a fault.
                level = logging.INFO if failure.kind == "throttled" else logging.WARNING
                log.log(
                    level,
                    "%s attempt %d/%d failed (%s); retrying in %.2fs",
                    operation,
                    number,
                    self._max_attempts,
                    failure.detail,
                    delay,
                )
                self._sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _give_up(
        self, operation: str, failure: _Retryable, attempts: int, maybe_applied: bool
    ) -> NoReturn:
        tries = f"after {wording.count(attempts, 'attempt')}"
        common: dict[str, Any] = {
            "status": failure.status,
            "code": failure.code,
            "operation": operation,
            "maybe_applied": maybe_applied,
        }
        if failure.kind == "throttled":
            text = (
                f"Custom Vision kept throttling {operation} (HTTP 429) {tries}; "
                f"try again in a few minutes.{failure.ref}"
            )
            raise Throttled(self._scrub(text), **common)
        if failure.kind == "server":
            said = f": {failure.message}" if failure.message else ""
            code = f", {failure.code}" if failure.code else ""
            text = (
                f"Custom Vision failed {operation} (HTTP {failure.status}{code}) {tries}"
                f"{said}{failure.ref}"
            )
            raise ServiceError(self._scrub(text), **common)
        if failure.kind == "truncated":
            what = f"the download was truncated ({failure.detail})"
            if failure.detail == "the answer was cut short":
                what = failure.detail
            text = f"The response of Custom Vision to {operation} was not valid: {what} {tries}."
            raise MalformedResponse(self._scrub(text), **common)
        text = (
            f"Could not reach Custom Vision for {operation} {tries} ({failure.detail}). "
            "Check CUSTOM_VISION_ENDPOINT and the network."
        )
        raise TransportError(self._scrub(text), **common)

    def _transport_failure(
        self, operation: str, exc: requests.RequestException
    ) -> _Retryable | TransportError:
        name = type(exc).__name__  # never str(exc): it quotes the URL
        if isinstance(exc, requests.exceptions.SSLError):
            text = f"Could not reach Custom Vision for {operation}: TLS failed ({name})."
            return TransportError(text, operation=operation)
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return _Retryable("transport", f"{name}: connect timed out", maybe_applied=False)
        if isinstance(exc, requests.Timeout):
            return _Retryable("transport", f"{name}: timed out", maybe_applied=True)
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            # Status and headers came, then the body stopped short of its Content-Length.
            return _Retryable("truncated", "the answer was cut short", maybe_applied=True)
        if isinstance(exc, requests.ConnectionError):
            return _Retryable("transport", f"{name}: connection failed", maybe_applied=True)
        text = f"Could not send {operation} to Custom Vision ({name})."
        return TransportError(text, operation=operation)

    def _error_for(
        self, operation: str, status: int, content: bytes, headers: Mapping[str, str]
    ) -> TrainingApiError | _Retryable:
        code, message = _error_body(content)
        said = f": {message}" if message else ""
        ref = _request_ref(headers)
        if status == 429:
            hint = retry_after_hint(headers.get("Retry-After"), message)
            return _Retryable(
                "throttled",
                "HTTP 429",
                status=status,
                code=code,
                hint=hint,
                ref=ref,
                maybe_applied=False,  # the gateway refused it: the service never saw it
            )
        if status >= 500:
            hint = retry_after_hint(headers.get("Retry-After"), None)
            return _Retryable(
                "server",
                f"HTTP {status}",
                status=status,
                code=code,
                message=message,
                hint=hint,
                ref=ref,
                maybe_applied=True,
            )
        if status == 403 and message and _QUOTA_TEXT.search(message):
            wait = quota_wait(headers.get("Retry-After"), message)
            when = (
                f"it is replenished in {wording.describe_wait(wait)}"
                if wait is not None
                else ("Custom Vision did not say when it is replenished")
            )
            text = (
                f"Custom Vision's call volume quota for this resource is used up (HTTP 403 on "
                f"{operation}): {when}. Nothing more was sent; try again after that.{ref}"
            )
            return QuotaExhausted(
                text, retry_after=wait, status=status, code=code, operation=operation
            )
        if status == 401:
            text = (
                f"Custom Vision refused the training key for {operation} (HTTP 401). "
                f"Check CUSTOM_VISION_TRAINING_KEY and CUSTOM_VISION_ENDPOINT.{ref}"
            )
            return Unauthorized(text, status=status, code=code, operation=operation)
        if 300 <= status < 400:
            return self._malformed(operation, f"an unexpected redirect (HTTP {status})", status)
        if code is None:
            advice = " Check CUSTOM_VISION_ENDPOINT." if status == 404 else ""
            return MalformedResponse(
                f"The response of Custom Vision to {operation} was not valid: "
                f"HTTP {status} without a Custom Vision error body.{advice}",
                status=status,
                operation=operation,
            )
        text = self._scrub(f"Custom Vision refused {operation} (HTTP {status}, {code}){said}{ref}")
        cls = NotFound if code.startswith("NotFound") else ServiceError
        return cls(text, status=status, code=code, operation=operation)

    # -- downloads -----------------------------------------------------------------------------

    def _download_once(
        self,
        operation: str,
        url: str,
        params: dict[str, str] | None,
        dest: pathlib.Path,
    ) -> Download:
        keyed = operation != _BLOB
        for _hop in range(_MAX_REDIRECTS + 1):
            slot = self._limiter.acquire() if keyed else None
            headers = self._headers("application/octet-stream, application/json") if keyed else {}
            try:
                if keyed:
                    response = self._session.get(
                        url,
                        params=params,
                        headers=headers,
                        timeout=self._timeout,
                        stream=True,
                        allow_redirects=False,
                    )
                else:
                    response = self._blob_get(url)
            except requests.RequestException as exc:
                raise self._transport_failure(operation, exc) from None
            if slot is not None:
                self._limiter.answered(slot, throttled=response.status_code == 429)
            with response:
                location = response.headers.get("Location")
                if response.is_redirect and location:
                    # GetArtifact pointing at storage (or storage moving a blob): follow it,
                    # but without the key.
                    target = urljoin(response.url, location)
                    if urlsplit(target).scheme.lower() not in ("http", "https"):
                        raise self._malformed(operation, "a redirect to a non-http(s) location")
                    url, params, keyed = target, None, False
                    continue
                if response.status_code == 200:
                    return self._stream_to(operation, response, dest)
                raise self._download_error(operation, keyed, response)
        raise self._malformed(operation, "too many redirects")

    def _blob_get(self, url: str) -> requests.Response:
        """GET a blob link, streamed: no key, no cookies, redirects left to the caller.

        Session.request would prepare it through the session and merge the environment's proxy
        and certificate settings again for every file: ~0.2 ms of CPU on the interpreter lock
        that the download threads share, an eighth of what an export spent per image. The
        settings are read once per origin.
        """
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}/".lower()
        settings = self._blob_settings.get(origin)
        if settings is None:
            merged = self._session.merge_environment_settings(origin, {}, None, None, None)
            settings = {k: v for k, v in merged.items() if k in ("proxies", "verify", "cert")}
            self._blob_settings[origin] = settings
        request = requests.PreparedRequest()
        request.prepare(method="GET", url=url, headers=self._session.headers)
        options: dict[str, Any] = {"stream": True, "timeout": self._timeout, **settings}
        response = self._session.get_adapter(url).send(request, **options)
        # The session's response hooks still see it (a caller's session may record or check),
        # as requests.hooks.dispatch_hook would hand it to them.
        for hook in self._session.hooks.get("response", []):
            response = hook(response, **options) or response
        return response

    def _download_error(
        self, operation: str, keyed: bool, response: requests.Response
    ) -> TrainingApiError | _Retryable:
        status = response.status_code
        try:
            content = response.content
        except requests.RequestException:
            content = b""
        if keyed or status == 429 or status >= 500:
            return self._error_for(operation, status, content, response.headers)
        # Blob storage: XML errors; its code is in a header. Links expire (SAS).
        code = response.headers.get("x-ms-error-code") or None
        if status == 404:
            text = f"The file to download for {operation} no longer exists (HTTP 404)."
            return NotFound(text, status=status, code=code or "BlobNotFound", operation=operation)
        text = (
            f"Storage refused the download for {operation} (HTTP {status}"
            f"{', ' + code if code else ''}); links expire: list the items again and retry."
        )
        return ServiceError(self._scrub(text), status=status, code=code, operation=operation)

    def _stream_to(
        self, operation: str, response: requests.Response, dest: pathlib.Path
    ) -> Download:
        expected: int | None = None
        length = response.headers.get("Content-Length")
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        # Content-Length counts the encoded bytes; only compare when nothing decodes them.
        if length is not None and length.strip().isdigit() and encoding == "identity":
            expected = int(length)
        digest = hashlib.sha256()
        size = 0
        head = b""
        # A name per thread is unique enough (one thread writes it at a time) and cheaper than
        # NamedTemporaryFile's random name and wrapped handle, which cost more than the
        # writing of a small image.
        temp = dest.with_name(f".{dest.name}.{threading.get_ident()}.part")
        try:
            with temp.open("wb") as handle:
                try:
                    for chunk in response.iter_content(DOWNLOAD_CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        if len(head) < HEAD_BYTES:
                            head += chunk[: HEAD_BYTES - len(head)]
                        size += len(chunk)
                except requests.RequestException as exc:
                    if expected is not None and size < expected:
                        raise _Retryable(
                            "truncated", f"{size} of {expected} bytes", maybe_applied=False
                        ) from None
                    failure = self._transport_failure(operation, exc)
                    raise failure from None
            if expected is not None and size != expected:
                raise _Retryable("truncated", f"{size} of {expected} bytes", maybe_applied=False)
            os.replace(temp, dest)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        return Download(path=dest, size=size, sha256=digest.hexdigest(), head=head)


def _is_not_found(error: TrainingApiError) -> bool:
    return isinstance(error, NotFound)
