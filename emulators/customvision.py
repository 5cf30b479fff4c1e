"""A real HTTP emulator of the Custom Vision Training API v3.3, its gateway and blob storage.

I/O module: a ThreadingHTTPServer on 127.0.0.1 (port 0 by default). The data model and
the service rules live in emulators.cvdata; this module owns the wire:

- Routes under /customvision/v3.3/training for the operations the bot uses (plus
  PublishIteration, ExportIteration, ExportProject, and the CreateProject, CreateTag,
  CreateImagesFromFiles, UpdateImageMetadata and TrainProject the live trial uses), with
  the spec's query parameters: csv arrays, lowercase booleans, caps (256 imageIds, 20
  tagIds, 64 prediction ids), take <= 256, orderBy Newest|Oldest (default Newest), GUIDs checked.
- The gateway in front of it: Training-Key check (401), unknown routes (404), rate limit
  (429), dropped connections, 5xx. Gateway bodies are `{"error": {"code", "message"}}`;
  service errors are `{"code": <CustomVisionErrorCodes>, "message"}`.
- Blob storage at /blob/<container>/<name>?<SAS>: image, thumbnail, resized, prediction and
  export bytes regenerated on every request (valid PNG / zip files), no key needed; a wrong
  signature is storage's 403, a deleted blob storage's 404. With `Faults.vnet` the API shows
  relative paths instead, served by GetArtifact with the key.

Every request is recorded as a `Call` and every connection accepted is counted
(`connections`); `hooks` see every exchange in full (tests use one to
check each response against the spec). Fault randomness comes from a seeded random.Random,
so a run is reproducible.

Where the live service is less kind than the spec, the emulator behaves like it (issue 15).
Each behaviour is a `Faults` field; the evidence for it ("recorded" = the response recordings
of Microsoft's .NET SDK tests, azure-sdk-for-net sdk/cognitiveservices/
Vision.CustomVision.Training/tests/SessionRecords/TrainingTests/<name>.json):
- Links expire (`link_lifetime`, default 24 h: recorded in UpdateImageMetadata.json and
  GetImagesAndCount.json, `se` = the answer's Date + 24 h). `se` is covered by the signature.
  After it, storage answers 403 AuthenticationFailed with an XML body whose detail reads
  "Signature not valid in the specified time frame" (inferred from Azure Storage's documented
  SAS behaviour and public reports; no recording).
- 202 deletions are asynchronous (`async_delete_*`): the spec says only that allIterations /
  allImages "return a 202 response to indicate the images are being deleted"; the lags are
  unknown, so they are configurable per project, per snapshot and for the workspace.
- Exports queue (`export_seconds`, `export_repeat`): recorded in ExportTests.json
  (ExportIteration answers "Exporting" with downloadUri null and flavor null, GetExports keeps
  it so for seconds). A repeat is refused with BadRequestExportAlreadyInProgress, "<id> is
  already queued for export" (azure-sdk-for-python issue 23922, azure-sdk-for-js issue 10331;
  whether a finished export may be repeated is unclear there: both variants).
- Iterations in every state (EmulatorData.add_iteration(status=...)): recorded in
  TrainAndPublishProject.json, a "Training" iteration has no trainedAt and null exportableTo,
  domainId, classificationType, publishName, originalPublishResourceId. New and Failed look
  the same (inferred). Changing an iteration in training (`training_iteration_changes`) is
  refused with BadRequestTrainingAlreadyInProgress (inferred) or allowed.
- `real_quirks` (default on): zone-less timestamps with seven fractional digits and absent
  empty `regions` / `metadata` on images (recorded: UpdateImageMetadata.json), null
  publishName of an unpublished iteration (recorded: TrainAndPublishProject.json), null
  thumbnailUri of an empty project (NOTES-customvision.md).
- The quota 403 (`quota_exhausted`, `quota_wording`): APIM's `{"statusCode": 403, "message":
  "Out of call volume quota. Quota will be replenished in 2.03:14:07."}` as public reports
  quote it (MicrosoftDocs/azure-docs issue 16282, goferito/node-bing-api issue 34), or the
  Cognitive Services form "... Please retry after N days ..." (inferred); Retry-After is sent
  (inferred).
- Image metadata and `$filter` (emulators.metadatafilter): the spec's UpdateImageMetadata
  (<= 64 images, 200/207 with per-image status; shape recorded in UpdateImageMetadata.json)
  and `$filter` on GetImages / GetImageCount. The limits differ by source: 10 pairs, key 128,
  value 256 (Microsoft's docs, SDK model docs) or 50 / 256 / 512 (the v3.3 spec's
  descriptions): `metadata_limits` plays either.
- GetImagePerformances and its count (spec operations; the figures are made up).
- The service path matches case-insensitively ("/customvision/v3.3/Training/", as Microsoft's
  docs write it; ASP.NET routing is case-insensitive).
- The two guessed error codes are variants with no public source: `unpublish_unpublished`
  and `delete_published`.
- Throttling (`tps_cap`, default off; the benchmarks set 10): Microsoft's limits page says
  10 Training API calls per second per resource, and the gateway's 429 says "Please retry
  after 1 second" (NOTES-customvision.md). How the gateway counts is not documented: the
  emulator counts the calls it admits in a sliding one-second window, refused calls not
  counted (inferred; a fixed window would be kinder to a client that bunches its calls).
  Where on a request's way the gateway counts it is not documented either:
  `admission_jitter` delays each count by a random time, so a call sent later can be counted
  earlier (inferred), and `Call.admitted` records when each call was counted.
- Several resources are several emulators (emulators.stack `more_resources`): in Azure each
  resource has its own endpoint and key (the portal's Keys and Endpoint page, per resource)
  and its own limit of 10 Training API calls per second (NOTES-customvision.md, "10 per second
  per resource"), so each emulator has its own key, data, `tps_cap` window and call record.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import email.utils
import json
import math
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from emulators.cvdata import CvError, EmulatorData, LinkExpired, Links, Seed, TaggingStatus
from emulators.metadatafilter import Expr, FilterError, parse

__all__ = [
    "API_BASE",
    "Call",
    "CustomVisionEmulator",
    "Exchange",
    "Faults",
    "Seed",
    "busiest_second",
    "main",
    "routes",
]

API_BASE = "/customvision/v3.3/training"
MAX_IMAGE_IDS = 256
MAX_TAG_IDS = 20
MAX_PREDICTION_IDS = 64
MAX_TAKE = 256
DEFAULT_TAKE = 50
DEFAULT_SEED = Seed()

GATEWAY_401_MISSING = (
    "Access denied due to missing subscription key. Make sure to include subscription key "
    "when making requests to an API."
)
GATEWAY_401_INVALID = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your "
    "resource."
)

METADATA_LIMITS = {"docs": (10, 128, 256), "spec": (50, 256, 512)}
MAX_METADATA_IMAGES = 64

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_SEGMENT = r"([^/]+)"


@dataclass
class Faults:
    """Fault switches, read on every request; tests flip them while the emulator runs.

    Randomness (error_rate, drop_rate, blob_truncate_rate) comes from the emulator's
    random.Random seeded with Seed.seed, so the same run of requests meets the same faults.
    """

    # Training API calls per second (sliding one-second window, answered calls only);
    # above it the gateway answers 429. Blob downloads are not counted.
    tps_cap: float | None = None
    # Send Retry-After with a 429; without it only the message names the wait.
    retry_after_header: bool = True
    # Seconds (up to; uniform, seeded) a Training API call travels before the gateway counts
    # it in the window: the network and the gateway's front end delay each request by a
    # varying time, so a call sent later can be counted earlier (inferred: no public source
    # says where in the request's path Azure counts it). 0: counted on arrival.
    admission_jitter: float = 0.0
    # Fraction of Training API calls answered 500 (service body) or 503 (gateway body).
    error_rate: float = 0.0
    # Fraction of calls (Training API and blob) whose connection closes without an answer.
    drop_rate: float = 0.0
    # Seconds added to every Training API call / every blob download.
    latency: float = 0.0
    blob_latency: float = 0.0
    # Image, export and prediction URIs become relative paths, fetched through GetArtifact.
    vnet: bool = False
    # operationId -> N: once N calls of it have succeeded (since start), it answers 500.
    fail_after: dict[str, int] = field(default_factory=dict)
    # Seconds before an allIterations deletion disappears from the iterations (202 Accepted).
    async_delete_delay: float = 0.2
    # 429 wording: Custom Vision's own ("... Please retry after 1 second. ...") or APIM's
    # generic ("Rate limit is exceeded. Try again in 1 seconds.").
    throttle_wording: Literal["customvision", "apim"] = "customvision"
    # Fraction of blob downloads cut off halfway (full Content-Length announced).
    blob_truncate_rate: float = 0.0
    # operationId -> how a change that WAS applied is answered: "drop" (the connection closes
    # unanswered, as on a client timeout), "500" (service error body), "503"/"504" (gateway
    # body). Every call of the operation while set. Inferred, not recorded: a gateway gives up
    # on a slow backend (504) or a connection breaks after the request was handed on, while
    # the service completes the change; the caller cannot tell it from a call that never ran.
    fail_after_apply: dict[str, Literal["drop", "500", "503", "504"]] = field(default_factory=dict)
    # Answer every GUID in service bodies in upper case. Inferred: the v3.3 examples and the
    # live service use lower case, but GUIDs are case-insensitive and other Azure services
    # (and proxies re-serialising .NET Guids with "D" upper format) do answer in upper case;
    # the client must not depend on the case.
    upper_case_ids: bool = False

    # ---- Azure's timing and states (issue 15). Evidence for each in the module docstring.
    # Seconds an image/export/prediction link stays valid after the answer that carried it
    # (its `se`); None: 100 years. Recorded: 24 h.
    link_lifetime: float | None = 86_400.0
    # Seconds before a 202 DeleteImages leaves the workspace (0: at once).
    async_delete_workspace_delay: float = 0.0
    # Per-scope lags overriding the two above: "<iteration-id>" for that snapshot,
    # "<project-id>" for every snapshot of the project, "<project-id>/workspace" for its
    # workspace.
    async_delete_delays: dict[str, float] = field(default_factory=dict)
    # Seconds a new ExportIteration stays "Exporting" with downloadUri null (0: Done at once).
    export_seconds: float = 2.0
    # A repeated ExportIteration of the same platform and flavor is refused while one is
    # queued ("while-queued"), or at any time ("always").
    export_repeat: Literal["while-queued", "always"] = "while-queued"
    # Seconds a TrainProject iteration stays "Training" before "Completed" (recorded in
    # TrainAndPublishProject.json: the SDK test polls it for seconds; real trainings of
    # larger sets take minutes).
    train_seconds: float = 2.0
    # Seconds until the call volume quota replenishes; while set, every Training API call is
    # the gateway's 403 "Out of call volume quota". None: quota available.
    quota_exhausted: float | None = None
    # The 403's form: APIM's `{"statusCode": 403, "message": "... replenished in d.hh:mm:ss."}`
    # or Cognitive Services' `{"error": {"code": "403", "message": "... retry after N days"}}`.
    quota_wording: Literal["apim", "cognitive"] = "apim"
    # Answer as recorded real responses do where they depart from the spec: zone-less
    # timestamps, nulls (publishName, thumbnailUri), absent empty regions/metadata.
    real_quirks: bool = True
    # Image metadata limits (pairs per image, key length, value length): Microsoft's docs and
    # the SDK model docs say 10/128/256 ("docs"), the v3.3 spec's descriptions 50/256/512.
    metadata_limits: Literal["docs", "spec"] = "docs"
    # UnpublishIteration of an iteration that is not published (no public source): 400
    # BadRequestIterationNotPublished, 400 with the generic BadRequest code, or 204.
    unpublish_unpublished: Literal["BadRequestIterationNotPublished", "BadRequest", "204"] = (
        "BadRequestIterationNotPublished"
    )
    # DeleteIteration of a published iteration, or DeleteProject with one (no public source):
    # 400 BadRequestIterationIsPublished, 400 BadRequest, or 409 with ConflictInvalid.
    delete_published: Literal["BadRequestIterationIsPublished", "BadRequest", "ConflictInvalid"] = (
        "BadRequestIterationIsPublished"
    )
    # DeleteIteration / UnpublishIteration of an iteration in training (no public source):
    # refused with 400 BadRequestTrainingAlreadyInProgress, or carried out.
    training_iteration_changes: Literal["refused", "allowed"] = "refused"


@dataclass(frozen=True)
class Call:
    """One request as the emulator saw it. status 0 = the connection was dropped unanswered.

    operation_id is the spec's operationId, "Blob" for blob storage, "Unknown" for no route.
    key_sent tells whether a Training-Key header came with it (blob downloads must not).
    """

    operation_id: str
    method: str
    path: str
    query: dict[str, str]
    status: int
    time: float
    key_sent: bool = False
    # Requests this emulator was serving when this one arrived, itself included: how many
    # calls a client keeps in flight at once.
    in_flight: int = 1
    # When the gateway counted it in the rate-limit window (Training API calls while a
    # tps_cap is set, the 429s too), on the emulator's clock; None: not counted.
    admitted: float | None = None


def busiest_second(calls: Sequence[Call]) -> int:
    """Return the most of `calls` the gateway counted (not refused) within one second."""
    times = sorted(c.admitted for c in calls if c.admitted is not None and c.status != 429)
    return max((bisect.bisect_left(times, t + 1.0) - i for i, t in enumerate(times)), default=0)


@dataclass(frozen=True)
class Exchange:
    """A request and the answer given, for hooks. origin says who answered: the service
    (spec-shaped), the gateway (401/404/429/5xx `{"error": ...}`), or blob storage."""

    operation_id: str
    method: str
    path: str
    query: dict[str, str]
    request_body: Any
    status: int
    response_body: Any
    origin: Literal["service", "gateway", "blob"]


Hook = Callable[[Exchange], None]


@dataclass
class _Request:
    method: str
    path: str
    params: dict[str, str]
    query: dict[str, str]
    body: Any
    key: str | None
    in_flight: int = 1
    admitted: float | None = None


@dataclass
class _Answer:
    status: int
    body: Any = None  # JSON value, bytes, or None for no body
    headers: dict[str, str] = field(default_factory=dict)
    origin: Literal["service", "gateway", "blob"] = "service"
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False
    truncate: bool = False


def _gateway(status: int, message: str, headers: dict[str, str] | None = None) -> _Answer:
    body = {"error": {"code": str(status), "message": message}}
    return _Answer(status, body, headers or {}, origin="gateway")


def _bad(code: str, message: str) -> CvError:
    return CvError(400, code, message)


# ----------------------------------------------------------------- query parsing


def _guid(value: str, name: str) -> str:
    if not _GUID.match(value):
        raise _bad("BadRequestInvalidIds", f"'{name}' is not a valid GUID.")
    return value.lower()


def _opt_guid(query: dict[str, str], name: str) -> str | None:
    value = query.get(name)
    return None if value is None or value == "" else _guid(value, name)


def _guid_list(query: dict[str, str], name: str, cap: int | None, code: str) -> list[str]:
    value = query.get(name)
    if value is None or value == "":
        return []
    items = [item.strip() for item in value.split(",")]
    if cap is not None and len(items) > cap:
        raise _bad(code, f"'{name}' is limited to {cap} ids per call; got {len(items)}.")
    return [_guid(item, name) for item in items]


def _bool(query: dict[str, str], name: str) -> bool:
    value = query.get(name)
    if value is None or value == "":
        return False
    # ASP.NET binds booleans case-insensitively; anything else is a 400.
    if value.lower() not in ("true", "false"):
        raise _bad("BadRequest", f"'{name}' must be true or false.")
    return value.lower() == "true"


def _int(query: dict[str, str], name: str, default: int, low: int, high: int | None) -> int:
    value = query.get(name)
    if value is None or value == "":
        return default
    if not re.fullmatch(r"-?\d{1,10}", value):
        raise _bad("BadRequest", f"'{name}' must be an integer.")
    number = int(value)
    if number < low or (high is not None and number > high):
        limit = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _bad("BadRequest", f"'{name}' must be {limit}.")
    return number


def _number(query: dict[str, str], name: str, default: float) -> float:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise _bad("BadRequest", f"'{name}' must be a number.") from None
    if not math.isfinite(number):
        raise _bad("BadRequest", f"'{name}' must be a number.")
    return number


def _choice(query: dict[str, str], name: str, choices: Sequence[str], default: str) -> str:
    value = query.get(name)
    if value is None or value == "":
        return default
    for choice in choices:
        if value.lower() == choice.lower():  # enums bind case-insensitively too
            return choice
    raise _bad("BadRequest", f"'{name}' must be one of {', '.join(choices)}.")


# ----------------------------------------------------------------------- server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], emulator: CustomVisionEmulator) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
            self.emulator.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they can end."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cv-emulator"
    sys_version = ""
    timeout = 30
    # Headers and body leave in one write without Nagle's delay (else ~40 ms per keep-alive call).
    disable_nagle_algorithm = True
    wbufsize = 1 << 16
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        answer = self.server.emulator._dispatch(self.command, self.path, dict(self.headers), raw)
        if answer.drop:
            self.close_connection = True
            return
        if answer.status in (202, 204) or answer.body is None:
            payload = b""
        elif isinstance(answer.body, bytes):
            payload = answer.body
        else:
            payload = json.dumps(answer.body).encode("utf-8")
        self.send_response(answer.status)
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.status != 204:
            if payload:
                self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(payload)))
        if answer.truncate:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if answer.truncate:
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            return
        if payload:
            self.wfile.write(payload)


RouteHandler = Callable[["CustomVisionEmulator", _Request], _Answer]


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    operation_id: str
    handler: RouteHandler
    params: tuple[str, ...]


_ROUTES: list[_Route] = []


def _route(method: str, template: str, operation_id: str) -> Callable[[RouteHandler], RouteHandler]:
    names = tuple(re.findall(r"\{(\w+)\}", template))
    regex = re.escape(template)
    for name in names:
        regex = regex.replace(re.escape("{" + name + "}"), _SEGMENT)

    def register(handler: RouteHandler) -> RouteHandler:
        _ROUTES.append(
            _Route(
                method,
                template,
                re.compile(f"^{regex}$", re.IGNORECASE),
                operation_id,
                handler,
                names,
            )
        )
        return handler

    return register


def routes() -> list[tuple[str, str, str]]:
    """Return (method, path template under API_BASE, operationId) of every emulated operation."""
    return [(r.method, r.template, r.operation_id) for r in _ROUTES]


class CustomVisionEmulator:
    """The emulator: start() it, point a client at `endpoint`, read `calls` and `data`."""

    def __init__(
        self,
        training_key: str = "emulator-training-key",
        *,
        seed: Seed | None = DEFAULT_SEED,
        faults: Faults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._key = training_key
        self.faults = faults or Faults()
        self.clock = clock  # rate-limit window, async deletions, Call.time
        self.data = EmulatorData(seed, clock=clock)
        self.calls: list[Call] = []
        self.connections = 0  # TCP connections accepted (a client that reuses them opens few)
        self.hooks: list[Hook] = []
        self.hook_errors: list[BaseException] = []
        self._host = host
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._random = random.Random(seed.seed if seed else 0)
        self._window: collections.deque[float] = collections.deque()
        self._successes: collections.Counter[str] = collections.Counter()
        self._deleted_images: collections.Counter[str] = collections.Counter()
        self._deleted_predictions: collections.Counter[str] = collections.Counter()
        self._request_ids = 0
        self._in_flight = 0
        self.endpoint = ""

    def __repr__(self) -> str:
        return f"CustomVisionEmulator(endpoint={self.endpoint!r})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CustomVisionEmulator:
        """Start serving in a background thread; return self."""
        server = _Server((self._host, self._port), self)
        self._server = server
        host, port = server.server_address[:2]
        self.endpoint = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, end open connections and join every handler thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.close_open_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> CustomVisionEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------- records

    def calls_to(self, operation_id: str) -> list[Call]:
        """Return the recorded calls of one operation, in order."""
        with self._lock:
            return [c for c in self.calls if c.operation_id == operation_id]

    def deleted_image_counts(self) -> collections.Counter[str]:
        """Return image id -> how many successful DeleteImages calls removed it."""
        with self._lock:
            return collections.Counter(self._deleted_images)

    def deleted_prediction_counts(self) -> collections.Counter[str]:
        """Return prediction id -> how many DeletePrediction calls removed it."""
        with self._lock:
            return collections.Counter(self._deleted_predictions)

    def image_bytes(self, image_id: str) -> bytes:
        """Return the bytes the original-image blob of `image_id` serves (deleted or not)."""
        return self.data.original_image_bytes(image_id)

    @property
    def api_url(self) -> str:
        """The Training API base URL (endpoint plus the v3.3 base path)."""
        return self.endpoint + API_BASE

    # ------------------------------------------------------------------ dispatch

    def _links(self) -> Links:
        return self.data.links(self.endpoint, self.faults.vnet, self.faults.link_lifetime)

    def _delete_delay(self, project_id: str, iteration_id: str | None) -> float:
        faults = self.faults
        lags = faults.async_delete_delays
        if iteration_id is None:
            return lags.get(f"{project_id}/workspace", faults.async_delete_workspace_delay)
        return lags.get(iteration_id, lags.get(project_id, faults.async_delete_delay))

    def _record(
        self, operation_id: str, request: _Request, answer: _Answer, key_sent: bool
    ) -> None:
        status = 0 if answer.drop else answer.status
        call = Call(
            operation_id,
            request.method,
            request.path,
            dict(request.query),
            status,
            self.clock(),
            key_sent,
            request.in_flight,
            request.admitted,
        )
        with self._lock:
            self.calls.append(call)
            hooks = list(self.hooks)
        if answer.drop:
            return
        exchange = Exchange(
            operation_id,
            request.method,
            request.path,
            dict(request.query),
            request.body,
            answer.status,
            answer.body,
            answer.origin,
        )
        for hook in hooks:
            try:
                hook(exchange)
            except Exception as exc:  # a hook's failure must reach the test, not the client
                with self._lock:
                    self.hook_errors.append(exc)

    def _dispatch(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Answer:
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
        try:
            return self._serve_one(method, target, headers, raw, in_flight)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _serve_one(
        self, method: str, target: str, headers: dict[str, str], raw: bytes, in_flight: int
    ) -> _Answer:
        parts = urlsplit(target)
        pairs = parse_qs(parts.query, keep_blank_values=True)
        query = {name: values[-1] for name, values in pairs.items()}
        key = next((v for k, v in headers.items() if k.lower() == "training-key"), None)
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        request = _Request(method, parts.path, {}, query, body, key, in_flight)
        if parts.path.startswith("/blob/"):
            answer = self._blob(parts.path[len("/blob/") :], query)
            self._record("Blob", request, answer, key is not None)
            return answer
        route = self._match(method, parts.path, request)
        if route is None:
            answer = _gateway(404, "Resource not found")
            self._record("Unknown", request, answer, key is not None)
            return answer
        answer = self._api(route, request, pairs)
        self._record(route.operation_id, request, answer, key is not None)
        return answer

    def _match(self, method: str, path: str, request: _Request) -> _Route | None:
        # Case-insensitive, as ASP.NET routes are and Microsoft's docs write the base
        # (".../customvision/v3.3/Training/projects"); inferred from the docs' spelling.
        if not path.lower().startswith(API_BASE.lower() + "/"):
            return None
        rest = path[len(API_BASE) :]
        for route in _ROUTES:
            if route.method != method:
                continue
            match = route.pattern.match(rest)
            if match:
                request.params = dict(zip(route.params, match.groups(), strict=True))
                return route
        return None

    def _api(self, route: _Route, request: _Request, pairs: dict[str, list[str]]) -> _Answer:
        faults = self.faults
        if request.key is None:
            return _gateway(401, GATEWAY_401_MISSING)
        if request.key != self._key:
            return _gateway(401, GATEWAY_401_INVALID)
        if faults.quota_exhausted is not None:
            return _quota_403(faults.quota_exhausted, faults.quota_wording)
        throttled = self._throttle(route.operation_id, faults, request)
        if throttled is not None:
            return throttled
        self.data.real_quirks = faults.real_quirks
        if faults.latency > 0:
            time.sleep(faults.latency)
        with self._lock:
            roll_drop = self._random.random()
            roll_error = self._random.random()
            roll_kind = self._random.random()
            self._request_ids += 1
            request_id = str(uuid.UUID(int=self._request_ids, version=4))
        if roll_drop < faults.drop_rate:
            return _Answer(0, drop=True)
        if roll_error < faults.error_rate:
            if roll_kind < 0.5:
                return _Answer(500, {"code": "ErrorUnknown", "message": "An error occurred."})
            return _gateway(503, "The service is temporarily unavailable. Try again later.")
        limit = faults.fail_after.get(route.operation_id)
        if limit is not None:
            with self._lock:
                exhausted = self._successes[route.operation_id] >= limit
            if exhausted:
                return _Answer(500, {"code": "ErrorUnknown", "message": "An error occurred."})
        try:
            repeated = sorted(name for name, values in pairs.items() if len(values) > 1)
            if repeated:
                raise _bad("BadRequest", f"Query parameter '{repeated[0]}' is repeated.")
            for name in route.params:
                request.params[name] = _guid(request.params[name], name)
            answer = route.handler(self, request)
        except CvError as error:
            answer = _Answer(error.status, {"code": error.code, "message": error.message})
        answer.headers.setdefault("apim-request-id", request_id)
        if answer.status < 400:
            with self._lock:
                self._successes[route.operation_id] += 1
            mode = faults.fail_after_apply.get(route.operation_id)
            if mode is not None:
                return _after_apply(mode)
        if faults.upper_case_ids and answer.origin == "service" and answer.status < 400:
            answer.body = _upper_guids(answer.body)
        return answer

    def _throttle(self, operation_id: str, faults: Faults, request: _Request) -> _Answer | None:
        cap = faults.tps_cap
        if cap is None:
            return None
        if faults.admission_jitter > 0:
            with self._lock:
                delay = self._random.uniform(0.0, faults.admission_jitter)
            time.sleep(delay)
        now = self.clock()
        request.admitted = now
        with self._lock:
            window = self._window
            while window and window[0] <= now - 1.0:
                window.popleft()
            if len(window) < cap:
                window.append(now)
                return None
            wait = max(1, math.ceil(window[0] + 1.0 - now))
        unit = "second" if wait == 1 else "seconds"
        if faults.throttle_wording == "apim":
            message = f"Rate limit is exceeded. Try again in {wait} seconds."
        else:
            message = (
                f"Requests to the {operation_id} Operation under Custom_Vision_Training_3.3 have "
                "exceeded rate limit of your current Custom_Vision.Training F0 pricing tier. "
                f"Please retry after {wait} {unit}. To increase your rate limit switch to a "
                "paid tier."
            )
        headers = {"Retry-After": str(wait)} if faults.retry_after_header else {}
        return _gateway(429, message, headers)

    def _blob(self, relpath: str, query: dict[str, str]) -> _Answer:
        faults = self.faults
        if faults.blob_latency > 0:
            time.sleep(faults.blob_latency)
        with self._lock:
            roll_drop = self._random.random()
            roll_truncate = self._random.random()
        if roll_drop < faults.drop_rate:
            return _Answer(0, drop=True, origin="blob")
        try:
            found = self.data.blob(relpath, query.get("sig"), query.get("se"))
        except LinkExpired as expired:
            # Storage's answer to a SAS used after its expiry (inferred from public reports
            # of Azure Storage; the detail names the window).
            return _storage_error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of "
                "Authorization header is formed correctly including the signature.",
                "Signature not valid in the specified time frame: Start [] - Expiry "
                f"[{_http_date(expired.expiry)}] - Current [{_http_date(expired.now)}]",
            )
        except PermissionError:
            return _storage_error(
                403,
                "AuthenticationFailed",
                "Server failed to authenticate the request. Make sure the value of "
                "Authorization header is formed correctly including the signature.",
                "Signature did not match.",
            )
        if found is None:
            return _storage_error(404, "BlobNotFound", "The specified blob does not exist.")
        data, content_type = found
        truncate = roll_truncate < faults.blob_truncate_rate and len(data) > 1
        return _Answer(
            200,
            data,
            {"x-ms-blob-type": "BlockBlob"},
            origin="blob",
            content_type=content_type,
            truncate=truncate,
        )


def _after_apply(mode: str) -> _Answer:
    """Return the answer of a change that was applied but whose success never reached the caller."""
    if mode == "drop":
        return _Answer(0, drop=True)
    if mode == "500":
        return _Answer(500, {"code": "ErrorUnknown", "message": "An error occurred."})
    return _gateway(int(mode), "The service did not answer in time.")


def _upper_guids(body: Any) -> Any:
    """Return `body` with every GUID string in upper case (Faults.upper_case_ids)."""
    if isinstance(body, str):
        return body.upper() if _GUID.match(body) else body
    if isinstance(body, list):
        return [_upper_guids(item) for item in body]
    if isinstance(body, dict):
        return {key: _upper_guids(value) for key, value in body.items()}
    return body


def _http_date(moment: datetime) -> str:
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


def _quota_403(seconds: float, wording: str) -> _Answer:
    """The gateway's answer once the call volume quota is used up (see Faults.quota_*)."""
    wait = max(1, math.ceil(seconds))
    headers = {"Retry-After": str(wait)}
    if wording == "cognitive":
        days = max(1, math.ceil(wait / 86_400))
        message = (
            "Out of call volume quota for CustomVision.Training F0 pricing tier. Please retry "
            f"after {days} day{'s' if days != 1 else ''}. To increase your call volume switch "
            "to a paid tier."
        )
        return _gateway(403, message, headers)
    days, rest = divmod(wait, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    span = f"{hours:02}:{minutes:02}:{secs:02}"
    if days:
        span = f"{days}.{span}"  # .NET's TimeSpan form, as the gateway writes it
    message = f"Out of call volume quota. Quota will be replenished in {span}."
    return _Answer(403, {"statusCode": 403, "message": message}, headers, origin="gateway")


def _storage_error(status: int, code: str, message: str, detail: str | None = None) -> _Answer:
    extra = f"<AuthenticationErrorDetail>{detail}</AuthenticationErrorDetail>" if detail else ""
    body = (
        '<?xml version="1.0" encoding="utf-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message>{extra}</Error>"
    ).encode()
    return _Answer(
        status,
        body,
        {"x-ms-error-code": code},
        origin="blob",
        content_type="application/xml",
    )


# ------------------------------------------------------------------- operations
# Each handler reads the parsed request and answers; CvError becomes a service error body.


def _ok(body: Any) -> _Answer:
    return _Answer(200, body)


@_route("GET", "/domains", "GetDomains")
def _get_domains(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_domains())


@_route("GET", "/projects", "GetProjects")
def _get_projects(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_projects(emu._links()))


@_route("POST", "/projects", "CreateProject")
def _create_project(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    name = req.query.get("name")
    if name is None:
        raise _bad("BadRequestRequiredParamIsNull", "'name' is required.")
    domain = req.query.get("domainId")
    kind = _choice(req.query, "classificationType", ("Multiclass", "Multilabel"), "") or None
    return _ok(
        emu.data.api_create_project(
            name,
            emu._links(),
            description=req.query.get("description", ""),
            domain_id=None if domain is None else _guid(domain, "domainId"),
            classification_type=kind,
        )
    )


@_route("GET", "/projects/{projectId}", "GetProject")
def _get_project(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_project(req.params["projectId"], emu._links()))


def _published_variant(emu: CustomVisionEmulator, error: CvError) -> CvError:
    """The refusal of deleting something published, as Faults.delete_published chooses."""
    variant = emu.faults.delete_published
    if error.code != "BadRequestIterationIsPublished" or variant == error.code:
        return error
    if variant == "BadRequest":
        return CvError(400, "BadRequest", error.message)
    return CvError(409, "ConflictInvalid", error.message)


def _refuse_while_training(emu: CustomVisionEmulator, project_id: str, iteration_id: str) -> None:
    if emu.faults.training_iteration_changes != "refused":
        return
    if emu.data.iteration_status(project_id, iteration_id) == "Training":
        raise CvError(
            400,
            "BadRequestTrainingAlreadyInProgress",
            f"Iteration {iteration_id} is training; try again when it has finished.",
        )


@_route("DELETE", "/projects/{projectId}", "DeleteProject")
def _delete_project(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    try:
        emu.data.api_delete_project(req.params["projectId"])
    except CvError as error:
        raise _published_variant(emu, error) from None
    return _Answer(204)


@_route("GET", "/projects/{projectId}/export", "ExportProject")
def _export_project(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_export_project(req.params["projectId"]))


@_route("GET", "/projects/{projectId}/artifacts", "GetArtifact")
def _get_artifact(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    path = req.query.get("path")
    if not path:
        raise _bad("BadRequestRequiredParamIsNull", "'path' is required.")
    project_id = req.params["projectId"]
    emu.data.api_project(project_id, emu._links())  # NotFoundProject first
    found = emu.data.artifact(project_id, path)
    if found is None:
        raise CvError(404, "NotFound", "The artifact does not exist.")
    return _Answer(200, found[0], content_type="application/octet-stream")


@_route("POST", "/projects/{projectId}/train", "TrainProject")
def _train(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    _choice(req.query, "trainingType", ("Regular", "Advanced"), "Regular")
    _bool(req.query, "forceTrain")
    return _ok(emu.data.api_train(req.params["projectId"], emu.faults.train_seconds))


@_route("GET", "/projects/{projectId}/iterations", "GetIterations")
def _get_iterations(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_iterations(req.params["projectId"]))


@_route("GET", "/projects/{projectId}/iterations/{iterationId}", "GetIteration")
def _get_iteration(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_iteration(req.params["projectId"], req.params["iterationId"]))


@_route("DELETE", "/projects/{projectId}/iterations/{iterationId}", "DeleteIteration")
def _delete_iteration(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    project_id, iteration_id = req.params["projectId"], req.params["iterationId"]
    if iteration_id != emu.data.workspace_id(project_id):
        _refuse_while_training(emu, project_id, iteration_id)
    try:
        emu.data.api_delete_iteration(project_id, iteration_id)
    except CvError as error:
        raise _published_variant(emu, error) from None
    return _Answer(204)


@_route(
    "GET", "/projects/{projectId}/iterations/{iterationId}/performance", "GetIterationPerformance"
)
def _get_performance(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    threshold = _number(req.query, "threshold", 0.5)
    overlap = _number(req.query, "overlapThreshold", 0.3)
    return _ok(
        emu.data.api_performance(
            req.params["projectId"], req.params["iterationId"], threshold, overlap
        )
    )


@_route("POST", "/projects/{projectId}/iterations/{iterationId}/publish", "PublishIteration")
def _publish(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    name = req.query.get("publishName")
    if not name or not req.query.get("predictionId"):
        raise _bad("BadRequestRequiredParamIsNull", "publishName and predictionId are required.")
    _bool(req.query, "overwrite")
    return _ok(emu.data.api_publish(req.params["projectId"], req.params["iterationId"], name))


@_route("DELETE", "/projects/{projectId}/iterations/{iterationId}/publish", "UnpublishIteration")
def _unpublish(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    project_id, iteration_id = req.params["projectId"], req.params["iterationId"]
    _refuse_while_training(emu, project_id, iteration_id)
    try:
        emu.data.api_unpublish(project_id, iteration_id)
    except CvError as error:
        variant = emu.faults.unpublish_unpublished
        if error.code != "BadRequestIterationNotPublished" or variant == error.code:
            raise
        if variant == "204":
            return _Answer(204)
        raise CvError(400, "BadRequest", error.message) from None
    return _Answer(204)


@_route("GET", "/projects/{projectId}/iterations/{iterationId}/export", "GetExports")
def _get_exports(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(
        emu.data.api_exports(req.params["projectId"], req.params["iterationId"], emu._links())
    )


_PLATFORMS = ("CoreML", "TensorFlow", "DockerFile", "ONNX", "VAIDK")
_FLAVORS = ("Linux", "Windows", "ONNX10", "ONNX12", "ARM", "TensorFlowNormal", "TensorFlowLite")


@_route("POST", "/projects/{projectId}/iterations/{iterationId}/export", "ExportIteration")
def _export_iteration(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    if not req.query.get("platform"):
        raise _bad("BadRequestRequiredParamIsNull", "'platform' is required.")
    platform = _choice(req.query, "platform", _PLATFORMS, "")
    flavor = _choice(req.query, "flavor", _FLAVORS, "") or None
    project_id, iteration_id = req.params["projectId"], req.params["iterationId"]
    return _ok(
        emu.data.api_export_iteration(
            project_id,
            iteration_id,
            platform,
            flavor,
            emu._links(),
            queue_seconds=emu.faults.export_seconds,
            refuse_repeat=emu.faults.export_repeat == "always",
        )
    )


@_route("GET", "/projects/{projectId}/tags", "GetTags")
def _get_tags(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _ok(emu.data.api_tags(req.params["projectId"], _opt_guid(req.query, "iterationId")))


@_route("POST", "/projects/{projectId}/tags", "CreateTag")
def _create_tag(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    name = req.query.get("name")
    if name is None:
        raise _bad("BadRequestRequiredParamIsNull", "'name' is required.")
    tag_type = _choice(req.query, "type", ("Regular", "Negative"), "Regular")
    return _ok(
        emu.data.api_create_tag(
            req.params["projectId"],
            name,
            description=req.query.get("description"),
            tag_type=tag_type,
        )
    )


@_route("GET", "/projects/{projectId}/tags/{tagId}", "GetTag")
def _get_tag(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    iteration_id = _opt_guid(req.query, "iterationId")
    return _ok(emu.data.api_tag(req.params["projectId"], req.params["tagId"], iteration_id))


@_route("DELETE", "/projects/{projectId}/tags/{tagId}", "DeleteTag")
def _delete_tag(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    emu.data.api_delete_tag(req.params["projectId"], req.params["tagId"])
    return _Answer(204)


def _list_images(
    emu: CustomVisionEmulator,
    req: _Request,
    status: TaggingStatus,
    with_tags: bool,
    status_from_query: bool = False,
) -> _Answer:
    iteration_id = _opt_guid(req.query, "iterationId")
    tag_ids = (
        _guid_list(req.query, "tagIds", MAX_TAG_IDS, "BadRequestExceededBatchSize")
        if with_tags
        else []
    )
    newest = _choice(req.query, "orderBy", ("Newest", "Oldest"), "Newest") == "Newest"
    take = _int(req.query, "take", DEFAULT_TAKE, 0, MAX_TAKE)
    skip = _int(req.query, "skip", 0, 0, None)
    # Only GetImages takes $filter (spec); the tagged/untagged lists ignore unknown
    # parameters, as ASP.NET does (inferred).
    where = _filter(req.query) if status_from_query else None
    images = emu.data.api_images(
        req.params["projectId"],
        emu._links(),
        iteration_id=iteration_id,
        status=status,
        tag_ids=tag_ids,
        newest_first=newest,
        skip=skip,
        take=take,
        where=where,
    )
    return _ok(images)


def _filter(query: dict[str, str]) -> Expr | None:
    text = query.get("$filter")
    if text is None or text == "":
        return None
    try:
        return parse(text)
    except FilterError as error:
        # Inferred: the spec names no code for a malformed expression; its generic one.
        raise _bad("BadRequestInvalid", f"Invalid $filter: {error}.") from None


def _tagging_status(query: dict[str, str]) -> TaggingStatus:
    status = _choice(query, "taggingStatus", ("All", "Tagged", "Untagged"), "All")
    return "Tagged" if status == "Tagged" else "Untagged" if status == "Untagged" else "All"


@_route("GET", "/projects/{projectId}/images", "GetImages")
def _get_images(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _list_images(emu, req, _tagging_status(req.query), True, status_from_query=True)


@_route("GET", "/projects/{projectId}/images/tagged", "GetTaggedImages")
def _get_tagged_images(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _list_images(emu, req, "Tagged", True)


@_route("GET", "/projects/{projectId}/images/untagged", "GetUntaggedImages")
def _get_untagged_images(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _list_images(emu, req, "Untagged", False)


def _count(
    emu: CustomVisionEmulator,
    req: _Request,
    status: TaggingStatus,
    tags: bool,
    filtered: bool = False,
) -> _Answer:
    count = emu.data.api_image_count(
        req.params["projectId"],
        iteration_id=_opt_guid(req.query, "iterationId"),
        status=status,
        # The spec sets no cap on tagIds for the count operations.
        tag_ids=_guid_list(req.query, "tagIds", None, "") if tags else [],
        where=_filter(req.query) if filtered else None,
    )
    return _ok(count)


@_route("GET", "/projects/{projectId}/images/count", "GetImageCount")
def _get_image_count(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _count(emu, req, _tagging_status(req.query), True, filtered=True)


@_route("GET", "/projects/{projectId}/images/tagged/count", "GetTaggedImageCount")
def _get_tagged_count(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _count(emu, req, "Tagged", True)


@_route("GET", "/projects/{projectId}/images/untagged/count", "GetUntaggedImageCount")
def _get_untagged_count(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    return _count(emu, req, "Untagged", False)


@_route("GET", "/projects/{projectId}/images/id", "GetImagesByIds")
def _get_images_by_ids(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    ids = _guid_list(req.query, "imageIds", MAX_IMAGE_IDS, "BadRequestExceededBatchSize")
    iteration_id = _opt_guid(req.query, "iterationId")
    return _ok(emu.data.api_images_by_ids(req.params["projectId"], ids, iteration_id, emu._links()))


@_route("DELETE", "/projects/{projectId}/images", "DeleteImages")
def _delete_images(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    ids = _guid_list(req.query, "imageIds", MAX_IMAGE_IDS, "BadRequestExceededBatchSize")
    all_images = _bool(req.query, "allImages")
    all_iterations = _bool(req.query, "allIterations")
    if not ids and not all_images:
        raise _bad("BadRequestRequiredParamIsNull", "Specify imageIds or allImages.")
    removed = emu.data.api_delete_images(
        req.params["projectId"],
        ids,
        all_images=all_images,
        all_iterations=all_iterations,
        delay=emu._delete_delay,
    )
    with emu._lock:
        emu._deleted_images.update(removed)
    return _Answer(202 if all_images or all_iterations else 204)


def _metadata_limits(emu: CustomVisionEmulator) -> tuple[int, int, int]:
    return METADATA_LIMITS[emu.faults.metadata_limits]


@_route("POST", "/projects/{projectId}/images/metadata", "UpdateImageMetadata")
def _update_metadata(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    ids = _guid_list(req.query, "imageIds", MAX_METADATA_IMAGES, "BadRequestExceededBatchSize")
    if not ids:
        raise _bad("BadRequestRequiredParamIsNull", "'imageIds' is required.")
    pairs = req.body if isinstance(req.body, dict) else None
    if pairs is None:
        raise _bad("BadRequestRequiredParamIsNull", "The metadata body is required.")
    status, body = emu.data.api_update_metadata(
        req.params["projectId"], ids, pairs, _metadata_limits(emu)
    )
    return _Answer(status, body)


@_route("POST", "/projects/{projectId}/images/files", "CreateImagesFromFiles")
def _create_images(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    status, body = emu.data.api_create_images(
        req.params["projectId"], req.body, _metadata_limits(emu), emu._links()
    )
    return _Answer(status, body)


@_route(
    "GET",
    "/projects/{projectId}/iterations/{iterationId}/performance/images",
    "GetImagePerformances",
)
def _get_image_performances(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    tag_ids = _guid_list(req.query, "tagIds", MAX_TAG_IDS, "BadRequestExceededBatchSize")
    newest = _choice(req.query, "orderBy", ("Newest", "Oldest"), "Newest") == "Newest"
    take = _int(req.query, "take", DEFAULT_TAKE, 0, MAX_TAKE)
    skip = _int(req.query, "skip", 0, 0, None)
    return _ok(
        emu.data.api_image_performances(
            req.params["projectId"],
            req.params["iterationId"],
            emu._links(),
            tag_ids=tag_ids,
            newest_first=newest,
            skip=skip,
            take=take,
        )
    )


@_route(
    "GET",
    "/projects/{projectId}/iterations/{iterationId}/performance/images/count",
    "GetImagePerformanceCount",
)
def _get_image_performance_count(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    tag_ids = _guid_list(req.query, "tagIds", None, "")
    return _ok(
        emu.data.api_image_performance_count(
            req.params["projectId"], req.params["iterationId"], tag_ids
        )
    )


@_route("POST", "/projects/{projectId}/predictions/query", "QueryPredictions")
def _query_predictions(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    if req.body is None:
        raise _bad("BadRequestRequiredParamIsNull", "The query body is required.")
    return _ok(emu.data.api_query_predictions(req.params["projectId"], req.body, emu._links()))


@_route("DELETE", "/projects/{projectId}/predictions", "DeletePrediction")
def _delete_prediction(emu: CustomVisionEmulator, req: _Request) -> _Answer:
    ids = _guid_list(req.query, "ids", MAX_PREDICTION_IDS, "BadRequestPredictionIdsExceededCount")
    if not ids:
        raise _bad("BadRequestPredictionIdsMissing", "'ids' is required.")
    removed = emu.data.api_delete_predictions(req.params["projectId"], ids)
    with emu._lock:
        emu._deleted_predictions.update(removed)
    return _Answer(204)


# ------------------------------------------------------------------------ CLI


def main(argv: Sequence[str] | None = None) -> None:
    """Serve an emulator until Ctrl-C (`python -m emulators.customvision --help`)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--key", default="emulator-training-key", help="the Training-Key to accept")
    parser.add_argument("--projects", type=int, default=DEFAULT_SEED.projects)
    parser.add_argument("--iterations", type=int, default=DEFAULT_SEED.iterations)
    parser.add_argument("--tags", type=int, default=DEFAULT_SEED.tags)
    parser.add_argument("--images", type=int, default=DEFAULT_SEED.images)
    parser.add_argument("--predictions", type=int, default=DEFAULT_SEED.predictions)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED.seed)
    parser.add_argument("--tps-cap", type=float, default=None)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--vnet", action="store_true")
    parser.add_argument(
        "--link-lifetime", type=float, default=Faults.link_lifetime, help="seconds a link lives"
    )
    parser.add_argument(
        "--delete-lag",
        type=float,
        default=Faults.async_delete_delay,
        help="seconds before a 202 deletion leaves the iteration snapshots",
    )
    parser.add_argument(
        "--workspace-delete-lag",
        type=float,
        default=Faults.async_delete_workspace_delay,
        help="seconds before a 202 deletion leaves the workspace",
    )
    parser.add_argument(
        "--export-seconds",
        type=float,
        default=Faults.export_seconds,
        help="seconds a new model export stays Exporting",
    )
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=Faults.train_seconds,
        help="seconds a TrainProject iteration stays Training",
    )
    parser.add_argument(
        "--quota-exhausted",
        type=float,
        default=None,
        help="answer every call with the quota 403, replenished in this many seconds",
    )
    parser.add_argument(
        "--spec-only", action="store_true", help="answer as the spec says, without real quirks"
    )
    args = parser.parse_args(argv)
    seed = Seed(
        projects=args.projects,
        iterations=args.iterations,
        tags=args.tags,
        images=args.images,
        predictions=args.predictions,
        seed=args.seed,
    )
    faults = Faults(
        tps_cap=args.tps_cap,
        latency=args.latency,
        error_rate=args.error_rate,
        vnet=args.vnet,
        link_lifetime=args.link_lifetime,
        async_delete_delay=args.delete_lag,
        async_delete_workspace_delay=args.workspace_delete_lag,
        export_seconds=args.export_seconds,
        train_seconds=args.train_seconds,
        quota_exhausted=args.quota_exhausted,
        real_quirks=not args.spec_only,
    )
    emulator = CustomVisionEmulator(
        args.key, seed=seed, faults=faults, host=args.host, port=args.port
    )
    with emulator:
        print(f"Custom Vision Training API emulator: {emulator.endpoint}", flush=True)
        print(f"  API base: {emulator.api_url}", flush=True)
        for project_id in emulator.data.project_ids():
            print(f"  project {project_id}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", flush=True)


if __name__ == "__main__":
    main()
