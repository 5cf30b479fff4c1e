"""The export package: how it is laid out, and the writer that builds it on disk.

Layout (every name comes from an id or `safe_name`; `check_arcname` enforces it on every add):

    manifest.json                      index: request, UTC times, source, counts, parts, and
                                       every file with its part, size and SHA-256
    README.txt                         what each file holds, in plain words, for the data subject
    projects.json, domains.json, iterations.json, tags.json, exports.json
                                       JSON exactly as the Training API returned it
    performance/<iteration-id>.json    one iteration's performance
    images.jsonl, predictions.jsonl    one JSON object per line (workspace and every snapshot)
    images/workspace/<image-id>.<ext>  original files of the images in the training workspace
    images/iterations/<iteration-id>/<image-id>.<ext>
                                       an image that only an iteration snapshot still holds
                                       (stored once, under the first iteration holding it)
    images/predictions/<prediction-id>.<ext>         the image a stored prediction was made on
    models/<iteration-id>/<platform>[-<flavor>].<ext> exported model files (--download)
    projects/<project-id>/<name>       `project_path`: per-project data of a multi-project export
    resources/<name>/<file>            `resource_path`: one resource's part of an account export
                                       of several resources (resources.json lists them)
    index.html, index/<stem>-NNNN.html the browsable index and its pages (bot.browse)
    annotations/<project-id>.coco.json `coco_path`: COCO annotations of a project's images
    labels.csv                         image-level labels of a classification project

Parts: every part is a standalone zip of at most `max_part_bytes`, named
`<request-id>-export-partNN-of-MM.zip`, or `<request-id>-export.zip` when there is only one.
An entry that would overflow the current part starts the next one; an entry larger than a whole
part is cut into raw pieces `<name>.001`, `<name>.002`, ... in consecutive parts, which `cat`
joins again (the manifest and README say how). Sizes are budgeted conservatively: deflated
entries (JSON and text) count at their worst-case deflate size, so parts holding JSON end up
smaller than the limit. README.txt and manifest.json are always the last entries. The SHA-256 of
a part cannot be written inside it (nor the size of the part holding the manifest): `Part`
carries them for the caller to post next to the upload.

Resume: the writer keeps a journal in `<work_dir>/.package/`. Each part is journaled when it is
closed (fsynced first), so a writer created again on the same `work_dir` (after a crash or a
restart) keeps every closed part, and `has()` says which files are already in; the part that
was open at a crash is discarded. A file cut into pieces counts only when all its pieces are in
kept parts. `close()` (the context manager's exit) closes the open part cleanly and keeps it.
`temp_dir` (same disk) is emptied whenever a writer is created and after `finish()`.

Signed links: every JSON value the writer puts into a file (`write_json`, `jsonl`, the manifest
and README) passes through `unsigned`, which drops the query of any link carrying an Azure
storage SAS (`?sv=...&se=...&sig=...`): the Training API signs every image, thumbnail,
prediction image and model link, and a signed link opens a person's image for anyone who holds
it. The blob's address stays; README.txt says so.

Speed: a JSON-lines listing is deflated as its lines are written (`JsonlWriter`), so closing
it copies zip data rather than compressing hundreds of megabytes after the last line.

Pure: `unsigned`, `safe_name`, `check_arcname`, the path helpers, `part_name`, `plan_entry`,
`render_manifest`, `render_readme`. I/O: `PackageWriter` and `JsonlWriter`, which touch only
files under `work_dir` (and delete each `src` they take in, unless told to keep it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self
from urllib.parse import unquote

from bot import wording
from bot.clock import iso
from bot.deadline import Deadline, deadline_fields
from bot.digest import sha256_file
from bot.ids import is_guid

FORMAT = "cv-dsr-bot export"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
README_NAME = "README.txt"
INDEX_NAME = "index.html"
LABELS_NAME = "labels.csv"
VIEW_PAGES_DIR = "index"
MIN_PART_BYTES = 16 * 1024
MAX_NAME_CHARS = 80  # what safe_name produces
MAX_COMPONENT_CHARS = 100  # what check_arcname accepts (room for a ".001" piece suffix)
MAX_ARCNAME_CHARS = 400

_STAGING = ".package"  # inside work_dir: working parts, journal, temp files
_JOURNAL = "journal.jsonl"
_COPY_CHUNK = 256 * 1024
_END_RESERVE = 256  # end of central directory + zip64 end record + locator, with slack
_DEFLATED_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".html")
_KEPT_SUFFIXES = (".json", ".jsonl")  # readable again (`kept`) until the package is finished
_KEPT = "kept"

_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9._-]+")
_DOT_RUN = re.compile(r"\.{2,}")
_COMPONENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_EXT = re.compile(r"[a-z0-9]{1,10}")
_WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{d}{i}" for d in ("COM", "LPT") for i in range(1, 10)}
)


# A link with a query: anything up to a space or quote, then `?` and the query.
_QUERIED = re.compile(r"[^\s\"'<>?]*\?[^\s\"'<>]*")
# The query parameters of an Azure storage SAS: service, account and user-delegation SAS
# (learn.microsoft.com "Create a service SAS" / "Create an account SAS").
_SAS_PARAMETER = re.compile(
    r"(?:^|[?&])(?:sig|se|st|sv|sp|sr|spr|ss|srt|si|sdd|skoid|sktid|skt|ske|sks|skv|saoid|suoid"
    r"|scid|ses)=",
    re.IGNORECASE,
)
SIGNED_LINKS_NOTE = (
    "Links to stored files (image, thumbnail, prediction image and model links) are kept "
    "without their access signature: the Training API hands out links that open the file for "
    "anyone holding them, so the part after '?' was removed. What is left names where the file "
    "is stored but does not open it; the files themselves are in this package where the export "
    "included them."
)


def _unsigned_link(match: re.Match[str]) -> str:
    link = match.group(0)
    query = link.partition("?")[2]
    # Percent-encoding (once or more, as in a link inside another link's query) hides nothing.
    for _ in range(4):
        if _SAS_PARAMETER.search(query):
            return link.partition("?")[0]
        decoded = unquote(query)
        if decoded == query:
            break
        query = decoded
    return link


def unsigned(data: Any) -> Any:
    """Return JSON `data` with the SAS query cut from every link in every string (and key)."""
    if isinstance(data, str):
        return _QUERIED.sub(_unsigned_link, data) if "?" in data else data
    if isinstance(data, dict):
        return {unsigned(k): unsigned(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [unsigned(v) for v in data]
    return data


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackageInfo:
    """Who asked for the package and what it covers: the manifest's and README's header."""

    request_id: str  # "R-1042"
    requester: str
    ticket: str | None
    reason: str | None
    scope: str  # human description, e.g. Export.describe()
    endpoint_host: str
    api_version: str
    started_at: datetime  # aware, UTC
    deadline: Deadline | None = None  # the statutory clock, where known
    # A data subject's export: the selector and every resource, project and trained iteration
    # searched (bot.subject.frozen_scope); None for every other export.
    search: Mapping[str, Any] | None = None

    def clock(self, today: date) -> str:
        """Return the request's clock as people read it on `today`, or "-" when unknown."""
        return "-" if self.deadline is None else self.deadline.describe(today)


@dataclass(frozen=True)
class Chunk:
    """One raw piece of a file too big for a part: `cat` the pieces in order to rejoin."""

    name: str  # "<file>.001"
    part: int
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest's JSON object for this piece."""
        return {"name": self.name, "part": self.part, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class FileEntry:
    """A file in the package; size and sha256 are those of the whole, unsplit file."""

    name: str  # arcname
    size: int
    sha256: str
    part: int  # the part holding it (its first piece when split)
    chunks: tuple[Chunk, ...] = ()  # empty unless the file was cut into pieces

    @property
    def rejoin(self) -> str | None:
        """Return the shell command that rejoins a split file, or None when it is whole."""
        if not self.chunks:
            return None
        return f"cat {' '.join(c.name for c in self.chunks)} > {self.name}"

    def to_dict(self) -> dict[str, Any]:
        """Return the manifest's JSON object for this file."""
        data: dict[str, Any] = {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "part": self.part,
        }
        if self.chunks:
            data["chunks"] = [c.to_dict() for c in self.chunks]
            data["rejoin"] = self.rejoin
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FileEntry:
        """Return the entry `to_dict` wrote; raise KeyError/TypeError when it is not one."""
        chunks = tuple(
            Chunk(str(c["name"]), int(c["part"]), int(c["size"]), str(c["sha256"]))
            for c in data.get("chunks", ())
        )
        return cls(
            str(data["name"]), int(data["size"]), str(data["sha256"]), int(data["part"]), chunks
        )


@dataclass(frozen=True)
class Part:
    """One zip file of the package, closed; sha256 is of the zip file itself."""

    index: int  # 1-based
    path: Path
    size: int
    sha256: str
    entries: tuple[str, ...]  # arcnames in the zip, pieces of split files included


@dataclass(frozen=True)
class Plan:
    """Where an entry goes: whole or in pieces, and whether it starts a new part."""

    new_part_first: bool
    pieces: tuple[int, ...]  # bytes per piece; one piece and width 0 = stored whole
    width: int = 0  # digits of the piece suffix; 0 when the entry is not split

    @property
    def split(self) -> bool:
        """Return True when the entry is cut into pieces."""
        return self.width > 0


# --- names (pure) ---------------------------------------------------------------------------


def _clean(text: str) -> str:
    name = unicodedata.normalize("NFKC", text)
    name = _UNSAFE_RUN.sub("_", name)
    name = _DOT_RUN.sub(".", name)
    name = name.strip("._-")[:MAX_NAME_CHARS].rstrip("._-")
    if name.split(".")[0].upper() in _WINDOWS_RESERVED:
        name = f"_{name}"[:MAX_NAME_CHARS].rstrip("._-")
    return name


def safe_name(text: str, fallback: str) -> str:
    """Return `text` as one safe path component, else `fallback`; ValueError if neither is."""
    name = _clean(text)
    if name:
        return name
    name = _clean(fallback)
    if not name:
        raise ValueError(f"no safe name in {text[:40]!r} nor in fallback {fallback[:40]!r}")
    return name


def check_arcname(name: str) -> str:
    """Return `name` when it is a safe relative name inside the package; raise ValueError."""
    shown = repr(name[:60])
    if not name:
        raise ValueError("empty name in the package")
    if "\x00" in name:
        raise ValueError(f"NUL in package name {shown}")
    if "\\" in name:
        raise ValueError(f"backslash in package name {shown}")
    if name.startswith("/"):
        raise ValueError(f"absolute package name {shown}")
    if len(name) > MAX_ARCNAME_CHARS:
        raise ValueError(f"package name longer than {MAX_ARCNAME_CHARS} characters: {shown}")
    for component in name.split("/"):
        if component in ("", ".", ".."):
            raise ValueError(f"empty, '.' or '..' component in package name {shown}")
        if len(component) > MAX_COMPONENT_CHARS or not _COMPONENT.fullmatch(component):
            raise ValueError(f"unsafe component {component[:40]!r} in package name {shown}")
    return name


def _id(value: str) -> str:
    # Ids from the API are GUIDs (lowercased, so one image has one name); anything else is
    # still made safe rather than trusted.
    return value.lower() if is_guid(value) else safe_name(value, "unknown")


def _ext(ext: str) -> str:
    value = ext.strip().lstrip(".").lower()
    return value if _EXT.fullmatch(value) else "bin"


def image_path(image_id: str, iteration_id: str | None, ext: str) -> str:
    """Return the name of an image file: under images/workspace/, or the iteration's folder."""
    if iteration_id is None:
        return f"images/workspace/{_id(image_id)}.{_ext(ext)}"
    return f"images/iterations/{_id(iteration_id)}/{_id(image_id)}.{_ext(ext)}"


def prediction_image_path(prediction_id: str, ext: str) -> str:
    """Return the name of the image file of a stored prediction."""
    return f"images/predictions/{_id(prediction_id)}.{_ext(ext)}"


def performance_path(iteration_id: str) -> str:
    """Return the name of an iteration's performance JSON."""
    return f"performance/{_id(iteration_id)}.json"


def model_path(iteration_id: str, platform: str, flavor: str | None, ext: str) -> str:
    """Return the name of an exported model file of an iteration."""
    stem = safe_name(platform, "model")
    if flavor:
        stem = f"{stem}-{safe_name(flavor, 'default')}"
    return f"models/{_id(iteration_id)}/{stem}.{_ext(ext)}"


def resource_path(resource: str, name: str) -> str:
    """Return `name` placed in a Custom Vision resource's folder (an account export of several
    resources); with an empty `name`, the folder's prefix, ending in `/`."""
    folder = f"resources/{safe_name(resource, 'resource')}/"
    return folder if not name else check_arcname(folder + name)


def project_path(project_id: str, name: str) -> str:
    """Return `name` placed in the project's folder (exports that span several projects)."""
    return check_arcname(f"projects/{_id(project_id)}/{name}")


def piece_name(name: str, number: int, width: int) -> str:
    """Return the name of piece `number` (1-based) of a split file: `name.001`."""
    return f"{name}.{number:0{width}d}"


def coco_path(project_id: str) -> str:
    """Return the name of a project's COCO annotations file."""
    return f"annotations/{_id(project_id)}.coco.json"


def view_page_path(stem: str, number: int) -> str:
    """Return the name of page `number` of the index's `stem` pages (images, predictions)."""
    return f"{VIEW_PAGES_DIR}/{safe_name(stem, 'page')}-{number:04d}.html"


def part_name(request_id: str, index: int, total: int) -> str:
    """Return the file name of part `index` of `total` (no part numbers when there is one)."""
    if total == 1:
        return f"{request_id}-export.zip"
    width = max(2, len(str(total)))
    return f"{request_id}-export-part{index:0{width}d}-of-{total:0{width}d}.zip"


def deflates(name: str) -> bool:
    """Return True when the entry is compressed (JSON and text); files are stored as they are."""
    return name.lower().endswith(_DEFLATED_SUFFIXES)


# --- part planning (pure) -------------------------------------------------------------------


def _local_overhead(name_bytes: int) -> int:
    return 30 + name_bytes + 20 + 16  # local header + zip64 extra + slack


def _central_overhead(name_bytes: int) -> int:
    return 46 + name_bytes + 28 + 16  # central directory header + zip64 extra + slack


def _bound(size: int, deflate: bool) -> int:
    # zlib's deflateBound is size + size/4096 + size/16384 + 13: this is above it.
    return size + (size >> 10) + 64 if deflate else size


def _max_payload(room: int, deflate: bool) -> int:
    if room <= 0:
        return 0
    if not deflate:
        return room
    payload = max(0, (room - 64) * 1024 // 1025)
    while payload > 0 and _bound(payload, True) > room:
        payload -= 1
    return payload


def plan_entry(name_bytes: int, size: int, deflate: bool, used: int, limit: int) -> Plan:
    """Return where an entry of `size` bytes goes, given `used` bytes of the open part.

    Raises ValueError when `limit` cannot hold even a piece of it.
    """
    need = _local_overhead(name_bytes) + _central_overhead(name_bytes) + _bound(size, deflate)
    if used + need + _END_RESERVE <= limit:
        return Plan(False, (size,))
    if need + _END_RESERVE <= limit:
        return Plan(True, (size,))

    def capacity(width: int) -> tuple[int, int]:
        n = name_bytes + 1 + width
        fixed = _local_overhead(n) + _central_overhead(n) + _END_RESERVE
        empty = _max_payload(limit - fixed, deflate)
        first = _max_payload(limit - used - fixed, deflate) if used else empty
        return empty, first

    empty, _ = capacity(6)
    if empty <= 0:
        raise ValueError(f"parts of {limit} bytes cannot hold a piece of a file")
    width = max(3, len(str(-(-size // empty) + 1)))
    empty, first = capacity(width)
    # A sliver at the end of a part is not worth a piece of its own.
    new_first = used > 0 and first < empty // 4
    pieces: list[int] = []
    remaining, room = size, (empty if new_first else first)
    while remaining > 0:
        piece = min(room, remaining)
        pieces.append(piece)
        remaining -= piece
        room = empty
    return Plan(new_first, tuple(pieces), width)


# --- manifest and README (pure) -------------------------------------------------------------


def render_manifest(
    info: PackageInfo,
    *,
    finished_at: datetime,
    counts: Mapping[str, int],
    notes: Sequence[str],
    files: Iterable[FileEntry],
    parts: Sequence[tuple[str, int | None]],
) -> dict[str, Any]:
    """Return manifest.json's content; `parts` is (file name, size or None) in part order."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "request": {
            "id": info.request_id,
            "requester": info.requester,
            "ticket": info.ticket,
            "reason": info.reason,
            "scope": info.scope,
            **deadline_fields(info.deadline),
            "clock": info.clock(finished_at.date()),
            **({} if info.search is None else {"search": dict(info.search)}),
        },
        "source": {"endpoint_host": info.endpoint_host, "api_version": info.api_version},
        "started_at": iso(info.started_at),
        "finished_at": iso(finished_at),
        "counts": dict(sorted(counts.items())),
        "notes": list(notes),
        "parts": [
            {"index": i, "name": name, "size": size} for i, (name, size) in enumerate(parts, 1)
        ],
        "parts_note": (
            "Unzip every part into the same folder. A part's SHA-256 cannot be written inside "
            "it, nor the size of a part holding this manifest (null here): they were posted "
            "with the upload."
        ),
        "links_note": SIGNED_LINKS_NOTE,
        "files": [f.to_dict() for f in sorted(files, key=lambda f: f.name)],
    }
    return dict(unsigned(manifest))


_PROJECT_PREFIX = re.compile(r"projects/[^/]+/")
_RESOURCE_PREFIX = re.compile(r"resources/[^/]+/")

# (pattern on the name, label shown, what the file holds); first match wins.
FILE_KINDS: tuple[tuple[str, str, str], ...] = (
    (
        r"manifest\.json",
        "manifest.json",
        "The index of this package: the request, UTC start and finish times, the Custom Vision "
        "endpoint and API version, counts, the parts, and every file with the part holding it, "
        "its size and its SHA-256 checksum.",
    ),
    (r"README\.txt", "README.txt", "This file."),
    (
        r"index\.html",
        "index.html",
        "Open this in a web browser to see this package: the request, the projects, their "
        "iterations with their performance, tags, images with their tags, metadata and "
        "regions drawn over them, stored predictions and exported models. It works offline "
        "and loads nothing from the internet.",
    ),
    (
        r"index/[^/]+\.html",
        "index/<images|predictions>-NNNN.html",
        "The pages of index.html: 500 images or stored predictions a page.",
    ),
    (
        r"annotations/[^/]+\.coco\.json",
        "annotations/<project-id>.coco.json",
        "The project's images and labels in COCO format (cocodataset.org), which most "
        "computer-vision tools read. `images` carry file_name (the file in this package, or "
        "null with a cv_note when the package has no file for it), width and height; "
        "`categories` are the tags. Object detection projects: one annotation per region, "
        "bbox = [x, y, width, height] in pixels, computed from the service's normalised "
        "left, top, width and height times the image's width and height. Classification "
        "projects: one annotation per image tag, without bbox (the labels are also in "
        "labels.csv).",
    ),
    (
        r"labels\.csv",
        "labels.csv",
        "Classification projects: one line per image with its file, its id and its tags "
        "(separated by ';'). A value starting with = + - or @ is prefixed with an "
        "apostrophe so that spreadsheets show it as text.",
    ),
    (
        r"projects\.json",
        "projects.json",
        "The Custom Vision projects: name, description, settings (domain, classification "
        "type, target export platforms), creation and modification times, as returned.",
    ),
    (r"domains\.json", "domains.json", "The domains (model types) the resource offers."),
    (
        r"resources\.json",
        "resources.json",
        "The Custom Vision resources this account export covers: each one's name, endpoint and "
        "counts; each has its own folder resources/<name>/ with the files below.",
    ),
    (
        r"account\.json",
        "account.json",
        "What the Training-Key reaches about the Custom Vision resource: its endpoint and API "
        "version, and every project with its counts of images, tags and iterations against "
        "the service limits. Never the keys.",
    ),
    (
        r"iterations\.json",
        "iterations.json",
        "The trained iterations: name, status, training times and type, domain, export "
        "ability, and the name and resource it is published under, if any.",
    ),
    (
        r"performance/[^/]+\.json",
        "performance/<iteration-id>.json",
        "The performance of one iteration: precision, recall and average precision, overall "
        "and per tag, at the thresholds shown in the file.",
    ),
    (
        r"tags\.json",
        "tags.json",
        "The tags, in the training workspace and in each iteration snapshot: name, "
        "description, type and image count.",
    ),
    (
        r"images\.jsonl",
        "images.jsonl",
        "One JSON object per line for every image, in the training workspace and in each "
        "iteration snapshot: its size, creation time, tags, regions (bounding boxes), "
        "metadata, and the addresses its files were fetched from.",
    ),
    (
        r"exports\.json",
        "exports.json",
        "The model exports of each iteration: platform, flavor, status and download address.",
    ),
    (
        r"predictions\.jsonl",
        "predictions.jsonl",
        "One JSON object per line for every stored prediction (kept by the service for 30 "
        "days): the image, the iteration that predicted, and each predicted tag with its "
        "probability and region.",
    ),
    (
        r"images/workspace/[^/]+",
        "images/workspace/<image-id>.<ext>",
        "The original image files of the training workspace, named by image id.",
    ),
    (
        r"images/iterations/[^/]+/[^/]+",
        "images/iterations/<iteration-id>/<image-id>.<ext>",
        "Original files of images that are no longer in the workspace but that an iteration "
        "snapshot still holds (each stored once, under the first such iteration).",
    ),
    (
        r"images/predictions/[^/]+",
        "images/predictions/<prediction-id>.<ext>",
        "The images that stored predictions were made on, named by prediction id.",
    ),
    (
        r"models/[^/]+/[^/]+",
        "models/<iteration-id>/<platform>[-<flavor>].<ext>",
        "Exported model files, as downloaded from the service.",
    ),
)
_KIND_PATTERNS = tuple((re.compile(p), label, text) for p, label, text in FILE_KINDS)
_OTHER = "Other data the Custom Vision Training API returned, as returned."


def _kind(name: str) -> tuple[str, str]:
    prefix = ""
    match = _RESOURCE_PREFIX.match(name)
    if match and name != match.group(0):
        prefix, name = "resources/<name>/", name[match.end() :]
    match = _PROJECT_PREFIX.match(name)
    if match and name != match.group(0):
        prefix, name = prefix + "projects/<project-id>/", name[match.end() :]
    for pattern, label, text in _KIND_PATTERNS:
        if pattern.fullmatch(name):
            return prefix + label, text
    return prefix + name, _OTHER


def _readme_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _section(title: str) -> list[str]:
    return ["", title, "-" * len(title)]


def render_readme(
    info: PackageInfo,
    *,
    finished_at: datetime,
    names: Iterable[str],
    notes: Sequence[str],
    split: Sequence[FileEntry] = (),
) -> str:
    """Return README.txt: the request, what each kind of file present holds, how to rejoin."""
    title = f"Custom Vision data export, request {info.request_id}"
    lines = [
        title,
        "=" * len(title),
        "",
        "This package holds the data that the Azure Custom Vision Training API returned for "
        "the request below, as it was returned: nothing was left out, except the access "
        "signature of links (see Links). Text files are UTF-8.",
        "",
        f"Request:      {info.request_id}",
        f"Requested by: {info.requester}",
        f"Ticket:       {info.ticket or '-'}",
        f"Reason:       {info.reason or '-'}",
        f"Scope:        {info.scope}",
        f"Deadline:     {info.clock(finished_at.date())}",
        f"Source:       {info.endpoint_host}, Custom Vision Training API {info.api_version}",
        f"Started:      {_readme_time(info.started_at)}",
        f"Finished:     {_readme_time(finished_at)}",
    ]
    kinds: dict[str, tuple[str, int]] = {}
    for name in (MANIFEST_NAME, README_NAME, *sorted(names)):
        label, text = _kind(name)
        seen = kinds.get(label)
        kinds[label] = (text, (seen[1] if seen else 0) + (name not in (MANIFEST_NAME, README_NAME)))
    lines += _section("What each file holds")
    for label, (text, count) in kinds.items():
        many = count > 1 or "<" in label
        lines.append(f"{label}  ({wording.count(count, 'file')})" if many else label)
        lines.append(f"    {text}")
    lines += _section("Parts and split files")
    lines += [
        "If this package came as several zip files (...-partNN-of-MM.zip), unzip all of them "
        "into the same folder; manifest.json says which part holds each file.",
        "A file too big for one part is cut into pieces <file>.001, <file>.002, ... in "
        "consecutive parts. After unzipping, join the pieces in order, for example:",
        "    cat <file>.001 <file>.002 > <file>          (Windows: copy /b <file>.001+<file>.002 "
        "<file>)",
    ]
    for entry in split:
        lines.append(f"    {entry.rejoin}")
    lines += _section("Checking the files")
    lines += [
        "manifest.json gives the SHA-256 checksum of every file: compare it with the output of "
        "`sha256sum <file>` (Linux), `shasum -a 256 <file>` (macOS) or "
        "`certutil -hashfile <file> SHA256` (Windows).",
    ]
    if info.search is not None:
        lines += _section("What was searched")
        lines += search_lines(info.search)
    lines += _section("Links")
    lines.append(SIGNED_LINKS_NOTE)
    if notes:
        lines += _section("Notes")
        lines += [f"- {note}" for note in notes]
    return str(unsigned("\n".join(lines) + "\n"))


def search_lines(search: Mapping[str, Any]) -> list[str]:
    """Return README.txt's account of a data subject's search: what, where, and its limits."""
    lines = [
        f"The person's images were found by {search['description']}.",
        "Metadata pairs must all match (the service's $filter: "
        f"{search['filter'] or 'none'}); tag names are matched in any case; both together must"
        " match. Searched, in every project the workspace and every trained iteration:",
    ]
    for resource in search["resources"]:
        lines.append(f"  Custom Vision resource {resource['name']}:")
        if not resource["projects"]:
            lines.append("    (no project)")
        for project in resource["projects"]:
            iterations = ", ".join(
                it["name"] + (f" (published as {it['publishName']})" if it["publishName"] else "")
                for it in project["iterations"]
            )
            lines.append(
                f"    project {project['name']} ({project['id']}): the workspace"
                + (f", iterations {iterations}" if iterations else ", no trained iteration")
            )
    lines += [
        "The folder projects/<project-id>/ of a project holding matches has images.jsonl (one"
        " line per image per image set holding it: the workspace, or a trained iteration, whose"
        " copy stays until that iteration is deleted), the matched tags (tags.json) and the"
        " iterations searched (iterations.json). A project without matches has no folder.",
        "What cannot be found this way: stored predictions (images sent to a published"
        " iteration for prediction) carry no metadata and no tags, so no search by person finds"
        " them; images of the person that carry neither the metadata nor the tag searched for"
        " are not found either.",
    ]
    return lines


# --- the writer (I/O) -----------------------------------------------------------------------


class _Limited:
    """A reader that yields at most `n` bytes of `src` (one piece of a split file)."""

    def __init__(self, src: IO[bytes], n: int) -> None:
        self._src = src
        self.remaining = n

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        want = self.remaining if size < 0 else min(size, self.remaining)
        block = self._src.read(want)
        self.remaining -= len(block)
        return block


class _Tee:
    """A writer that hashes what passes through it on its way into the zip."""

    def __init__(self, dest: IO[bytes], hashes: Sequence[Any]) -> None:
        self._dest = dest
        self._hashes = hashes

    def write(self, block: bytes) -> int:
        for h in self._hashes:
            h.update(block)
        return self._dest.write(block)


_PART_FILE = re.compile(r"part-\d{4,}\.zip")


def _journaled_part(record: Mapping[str, Any], staging: Path) -> tuple[Part, list[FileEntry]]:
    file = str(record["file"])
    if not _PART_FILE.fullmatch(file):
        raise ValueError(f"not a part file: {file[:40]!r}")
    part = Part(
        int(record["index"]),
        staging / file,
        int(record["size"]),
        str(record["sha256"]),
        tuple(str(name) for name in record["entries"]),
    )
    return part, [FileEntry.from_dict(data) for data in record["files"]]


def _resumable(parts: Sequence[tuple[Part, list[FileEntry]]]) -> int:
    """Return how many leading journaled parts are intact and hold only complete files."""
    kept, pending = 0, set[str]()
    for number, (part, files) in enumerate(parts, 1):
        if part.index != number or not part.path.is_file():
            break
        if part.path.stat().st_size != part.size:
            break
        if any(name.startswith((MANIFEST_NAME, README_NAME)) for name in part.entries):
            break  # an interrupted finish(): it starts again from here
        pending.update(part.entries)
        for entry in files:
            pending.discard(entry.name)
            pending.difference_update(c.name for c in entry.chunks)
        if not pending:  # every piece seen so far belongs to a complete file
            kept = number
    return kept


@dataclass
class _OpenPart:
    index: int
    path: Path
    raw: IO[bytes]
    zf: zipfile.ZipFile
    central: int = 0  # estimated central directory bytes of the entries so far
    entries: list[str] = field(default_factory=list)
    files: list[FileEntry] = field(default_factory=list)  # completed in this part

    @property
    def used(self) -> int:
        return self.raw.tell() + self.central


@dataclass(frozen=True)
class Deflated:
    """A file's zip data deflated as it was written: the raw deflate stream at `path` of the
    `size` bytes whose CRC-32 and SHA-256 are given."""

    path: Path
    size: int
    crc: int
    sha256: str


class JsonlWriter:
    """One JSON object per line, streamed to a temp file; added to the package on close.

    Each line is also deflated as it comes (the zip data of the entry, the same bytes zipfile
    would write: deflate's output does not depend on how its input is cut), so closing a long
    listing copies its compressed data instead of compressing it after the last line.
    """

    def __init__(self, owner: PackageWriter, name: str, path: Path) -> None:
        self.name = name
        self.count = 0
        self.entry: FileEntry | None = None
        self._owner = owner
        self._path = path
        self._deflated_path = path.with_name(path.name + ".deflate")
        self._lock = threading.Lock()
        # What zipfile deflates a member with (zipfile._get_compressor, default level).
        self._compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self._sha256 = hashlib.sha256()
        self._pending: list[bytes] = []  # lines not written nor deflated yet
        self._pending_bytes = 0
        self._file: IO[bytes] | None = path.open("wb")
        try:
            self._deflated: IO[bytes] | None = self._deflated_path.open("wb")
        except BaseException:
            self._file.close()
            raise

    def write(self, obj: Any) -> Any:
        """Append `obj` as one line; return what the line holds (`unsigned(obj)`); raise
        TypeError when it is not JSON-serializable."""
        written = unsigned(obj)
        line = json.dumps(written, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        with self._lock:
            if self._file is None or self._deflated is None:
                raise RuntimeError(f"{self.name} is closed")
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes >= _COPY_CHUNK:
                self._deflate_pending()
            self.count += 1
        return written

    def _deflate_pending(self) -> None:
        # A line at a time, zlib's per-call cost is ten times the deflating itself.
        assert self._file is not None and self._deflated is not None
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._file.write(data)
        self._deflated.write(self._compressor.compress(data))
        self._crc = zlib.crc32(data, self._crc)
        self._sha256.update(data)
        self._size += len(data)

    def close(self) -> FileEntry:
        """Return the entry after adding the file to the package (idempotent)."""
        with self._lock:
            if self.entry is not None:
                return self.entry
            if self._file is None or self._deflated is None:
                raise RuntimeError(f"{self.name} was discarded")
            try:
                self._deflate_pending()
                self._deflated.write(self._compressor.flush())
            finally:
                self._close_files()
        deflated = Deflated(self._deflated_path, self._size, self._crc, self._sha256.hexdigest())
        try:
            self.entry = self._owner._add_jsonl(self, self._path, deflated)
        finally:
            self._deflated_path.unlink(missing_ok=True)
        return self.entry

    def _close_files(self) -> None:
        file, self._file = self._file, None
        deflated, self._deflated = self._deflated, None
        with ExitStack() as closing:
            for handle in (file, deflated):
                if handle is not None:
                    closing.callback(handle.close)

    def discard(self) -> None:
        """Drop what was written (nothing is added); the name is free again."""
        with self._lock:
            if self._file is None:
                return
            try:
                self._close_files()
            except OSError:
                pass  # flushing what is dropped failed (a full disk); the handles are closed
            finally:
                self._path.unlink(missing_ok=True)
                self._deflated_path.unlink(missing_ok=True)
                self._owner._release_jsonl(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # A half-written listing must not look complete: on an error nothing is added, and a
        # resumed export writes it again.
        if exc_type is None:
            self.close()
        else:
            self.discard()


_State = Literal["open", "closed", "failed", "finished"]


class PackageWriter:
    """Builds the export package's zip parts under `work_dir`; thread-safe.

    Use it as a context manager and call `finish()` at the end of the block. Add operations
    raise ValueError for an unsafe or duplicate name, RuntimeError once the writer is closed,
    finished, or failed (a write error leaves the package to be resumed by a new writer).
    """

    def __init__(
        self,
        work_dir: Path,
        info: PackageInfo,
        *,
        max_part_bytes: int,
        clock: Callable[[], datetime],
    ) -> None:
        if max_part_bytes < MIN_PART_BYTES:
            raise ValueError(f"max_part_bytes must be at least {MIN_PART_BYTES}")
        if safe_name(info.request_id, "-") != info.request_id:
            raise ValueError(f"request id {info.request_id[:40]!r} is not a safe file name")
        if info.started_at.tzinfo is None:
            raise ValueError("started_at must be timezone-aware")
        self.work_dir = work_dir
        self.info = info
        self.max_part_bytes = max_part_bytes
        self._clock = clock
        self._staging = work_dir / _STAGING
        self.temp_dir = self._staging / "tmp"  # same disk: downloads can wait here
        self._lock = threading.RLock()
        self._state: _State = "open"
        self._taken: set[str] = set()  # casefolded names and their folders
        self._dirs: set[str] = set()
        self._entries: dict[str, FileEntry] = {}
        self._closed: list[Part] = []
        self._current: _OpenPart | None = None
        self._counts: dict[str, int] = {}
        self._notes: list[str] = []
        self._jsonl: dict[str, JsonlWriter] = {}
        self._final: list[Part] | None = None
        self._failure: BaseException | None = None  # what failed the writer
        self._recover()

    # -- public -----------------------------------------------------------------------------

    def write_json(self, name: str, data: Any) -> FileEntry:
        """Return the entry of `data` written as UTF-8 JSON under `name` (API order kept)."""
        name = self._claim(name)
        path: Path | None = None
        try:
            path = self._temp_file(".json")
            with path.open("w", encoding="utf-8", newline="\n") as f:
                json.dump(unsigned(data), f, ensure_ascii=False, indent=2)
                f.write("\n")
        except BaseException:
            if path is not None:
                path.unlink(missing_ok=True)
            with self._lock:
                self._release(name)
            raise
        return self._add_claimed(name, path)

    def jsonl(self, name: str) -> JsonlWriter:
        """Return a writer for `name` (one JSON object per line), added when it is closed."""
        name = self._claim(name)
        try:
            writer = JsonlWriter(self, name, self._temp_file(".jsonl"))
        except BaseException:
            with self._lock:
                self._release(name)
            raise
        with self._lock:
            self._jsonl[name] = writer
        return writer

    def add_file(self, name: str, src: Path, *, keep_source: bool = False) -> FileEntry:
        """Return the entry of `src` streamed in under `name`; `src` is deleted afterwards
        unless `keep_source` (a download cache keeps its files until the package is done)."""
        name = self._claim(name)
        return self._add_claimed(name, src, keep_source=keep_source)

    @property
    def finished(self) -> bool:
        """Return True once finish() completed (also for a writer re-created afterwards)."""
        with self._lock:
            return self._final is not None

    def has(self, name: str) -> bool:
        """Return True when a complete file `name` is in the package (kept across resumes)."""
        check_arcname(name)
        with self._lock:
            return name in self._entries

    def kept(self, name: str) -> Path | None:
        """Return a readable copy of the JSON or JSON-lines file `name` while the package is
        being built (None when it is not in the package); gone once it is finished."""
        with self._lock:
            if name not in self._entries or not name.endswith(_KEPT_SUFFIXES):
                return None
            path = self._staging / _KEPT / name
            return path if path.is_file() else None

    def names(self, prefix: str = "") -> list[str]:
        """Return the complete files in the package whose names start with `prefix`, sorted."""
        with self._lock:
            return sorted(n for n in self._entries if n.startswith(prefix))

    @property
    def parts_so_far(self) -> int:
        """Return how many parts the package has so far (the open one included)."""
        with self._lock:
            return len(self._closed) + (1 if self._current is not None else 0)

    def entry(self, name: str) -> FileEntry | None:
        """Return the entry of a complete file `name`, or None."""
        with self._lock:
            return self._entries.get(name)

    def count(self, key: str, n: int) -> None:
        """Set the manifest count `key` to `n` (last call wins, so a resumed job may repeat)."""
        if not key or isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"bad count {key[:40]!r}={n!r}")
        with self._lock:
            self._require_open()
            self._counts[key] = n
            self._journal({"type": "count", "key": key, "n": n})

    def note(self, text: str) -> None:
        """Add a line to the README's and manifest's notes (repeating one adds nothing)."""
        with self._lock:
            self._require_open()
            if text and text not in self._notes:
                self._notes.append(text)
                self._journal({"type": "note", "text": text})

    def finish(self) -> list[Part]:
        """Return the closed parts after writing README.txt and manifest.json last.

        Calling it again (or on a work_dir already finished) returns the same parts. Raises
        RuntimeError while a jsonl writer is still open or when the writer failed.
        """
        with self._lock:
            if self._final is not None:
                return list(self._final)
            self._require_open()
            if self._jsonl:
                raise RuntimeError(f"still open: {', '.join(sorted(self._jsonl))}")
            try:
                return self._finish()
            except BaseException as exc:
                self._fail(exc)
                raise

    def close(self) -> None:
        """Close the open part, keeping it for a resume; later adds raise RuntimeError.

        Every file the writer holds open is closed whichever of them fails to close (a full
        disk): the ExitStack runs each step and raises the first error afterwards.
        """
        with self._lock:
            try:
                with ExitStack() as closing:
                    part, self._current = self._current, None
                    if part is not None:
                        closing.callback(self._end_part, part)
                    for writer in list(self._jsonl.values()):
                        closing.callback(writer.discard)
            finally:
                if self._state == "open":
                    self._state = "closed"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _end_part(self, part: _OpenPart) -> None:
        # Kept for a resume only when everything written to it so far was written.
        if self._state == "open" and part.entries:
            try:
                self._close_part(part)
            except BaseException as exc:
                self._fail(exc)
                raise
        else:
            self._abandon_part(part)

    # -- names ------------------------------------------------------------------------------

    def _claim(self, name: str) -> str:
        check_arcname(name)
        lowered = name.casefold()
        if lowered.startswith((MANIFEST_NAME.casefold(), README_NAME.casefold())):
            raise ValueError(f"{name!r} is reserved for the package itself")
        with self._lock:
            self._require_open()
            self._take(name)
        return name

    def _take(self, name: str) -> None:
        lowered = name.casefold()
        parents = lowered.split("/")[:-1]
        folders = ["/".join(parents[: i + 1]) for i in range(len(parents))]
        if lowered in self._taken or lowered in self._dirs:
            raise ValueError(f"{name!r} is already in the package")
        if any(folder in self._taken for folder in folders):
            raise ValueError(f"{name!r} would be inside a file of the package")
        self._taken.add(lowered)
        self._dirs.update(folders)

    def _release(self, name: str) -> None:
        # Folders stay claimed: harmless, and another file may share them.
        self._taken.discard(name.casefold())

    def _require_open(self) -> None:
        failure = self._failure
        if self._state == "failed" and isinstance(failure, OSError) and failure.errno:
            # Another thread's write failed the package: this add fails for the same reason, so
            # whichever error the job sees first says what happened (a full disk, not a bug).
            raise OSError(failure.errno, f"the package writer failed: {failure.strerror}")
        if self._state != "open":
            raise RuntimeError(f"the package writer is {self._state}")

    def _fail(self, exc: BaseException) -> None:
        self._state = "failed"
        self._failure = self._failure or exc

    # -- adding -----------------------------------------------------------------------------

    def _temp_file(self, suffix: str) -> Path:
        fd, path = tempfile.mkstemp(suffix=suffix, dir=self.temp_dir)
        os.close(fd)
        return Path(path)

    def _add_jsonl(self, writer: JsonlWriter, path: Path, deflated: Deflated) -> FileEntry:
        with self._lock:
            self._jsonl.pop(writer.name, None)
        return self._add_claimed(writer.name, path, deflated=deflated)

    def _release_jsonl(self, writer: JsonlWriter) -> None:
        with self._lock:
            if self._jsonl.pop(writer.name, None) is not None:
                self._release(writer.name)

    def _add_claimed(
        self, name: str, src: Path, *, keep_source: bool = False, deflated: Deflated | None = None
    ) -> FileEntry:
        with self._lock:
            try:
                self._require_open()
                handle = src.open("rb")
            except BaseException:
                self._release(name)
                raise
            with handle:
                try:
                    if name.endswith(_KEPT_SUFFIXES):
                        self._keep(name, src)
                    entry = self._add_handle(name, handle, deflated)
                except BaseException:
                    self._release(name)
                    raise
            if not keep_source:
                src.unlink()
            return entry

    def _keep(self, name: str, src: Path) -> None:
        # A second name for the data (no copy on the same disk), so the index pages and COCO
        # files can be built from the package's own files before it is finished.
        kept = self._staging / _KEPT / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.unlink(missing_ok=True)
        try:
            os.link(src, kept)
        except OSError:
            shutil.copyfile(src, kept)

    def _add_handle(self, name: str, src: IO[bytes], deflated: Deflated | None = None) -> FileEntry:
        """Return the entry after writing `src` (its zip data from `deflated` when it fits a
        part whole); ValueError leaves the package unchanged."""
        size = os.fstat(src.fileno()).st_size
        plan, pieces = self._prepare(name, size)
        try:
            if deflated is not None and not plan.split and deflates(name):
                if deflated.size != size:
                    raise OSError(f"{name}: {size} bytes written, {deflated.size} deflated")
                part = self._rollover() if plan.new_part_first else self._part()
                self._write_deflated(part, name, deflated)
                entry = FileEntry(name, size, deflated.sha256, part.index)
                part.files.append(entry)
                self._entries[name] = entry
                return entry
            return self._write_entry(name, src, size, plan, pieces)
        except BaseException as exc:
            # Whatever reached the open part is suspect: it is dropped, never journaled, and a
            # new writer resumes from the parts closed before.
            self._fail(exc)
            raise

    def _part(self) -> _OpenPart:
        if self._current is None:
            index = len(self._closed) + 1
            path = self._staging / f"part-{index:04d}.zip"
            raw = path.open("w+b")
            try:
                zf = zipfile.ZipFile(raw, "w", zipfile.ZIP_STORED, allowZip64=True)
            except BaseException:
                raw.close()
                raise
            self._current = _OpenPart(index, path, raw, zf)
        return self._current

    def _rollover(self) -> _OpenPart:
        part = self._part()
        self._current = None
        self._close_part(part)
        return self._part()

    def _prepare(self, name: str, size: int) -> tuple[Plan, list[str]]:
        part = self._part()
        plan = plan_entry(len(name.encode()), size, deflates(name), part.used, self.max_part_bytes)
        if not plan.split:
            return plan, [name]
        pieces = [piece_name(name, i, plan.width) for i in range(1, len(plan.pieces) + 1)]
        for claimed, piece in enumerate(pieces):
            try:
                self._take(piece)
            except ValueError:
                for taken in pieces[:claimed]:
                    self._release(taken)
                raise
        return plan, pieces

    def _write_entry(
        self, name: str, src: IO[bytes], size: int, plan: Plan, pieces: list[str]
    ) -> FileEntry:
        deflate = deflates(name)
        part = self._rollover() if plan.new_part_first else self._part()
        whole = hashlib.sha256()
        if not plan.split:
            self._write_member(part, name, src, size, deflate, (whole,))
            entry = FileEntry(name, size, whole.hexdigest(), part.index)
        else:
            chunks: list[Chunk] = []
            for number, (piece, piece_size) in enumerate(zip(pieces, plan.pieces, strict=True)):
                if number:
                    part = self._rollover()
                digest = hashlib.sha256()
                self._write_member(part, piece, src, piece_size, deflate, (whole, digest))
                chunks.append(Chunk(piece, part.index, piece_size, digest.hexdigest()))
            entry = FileEntry(name, size, whole.hexdigest(), chunks[0].part, tuple(chunks))
        part.files.append(entry)  # journaled with the part holding its last piece
        self._entries[name] = entry
        return entry

    def _write_member(
        self,
        part: _OpenPart,
        arcname: str,
        src: IO[bytes],
        size: int,
        deflate: bool,
        hashes: Sequence[Any],
    ) -> None:
        info = zipfile.ZipInfo(arcname, date_time=self._zip_time())
        info.compress_type = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
        info.file_size = size  # lets zipfile choose zip64 headers up front
        info.external_attr = 0o644 << 16
        reader = _Limited(src, size)
        with part.zf.open(info, "w") as dest:
            shutil.copyfileobj(reader, _Tee(dest, hashes), _COPY_CHUNK)
        if reader.remaining:
            raise OSError(f"{arcname}: the source file shrank while it was being packed")
        part.entries.append(arcname)
        part.central += _central_overhead(len(arcname.encode()))

    def _write_deflated(self, part: _OpenPart, arcname: str, deflated: Deflated) -> None:
        """Write a member from its deflated data: the bytes `_write_member` would write.

        zipfile has no public way to add data compressed already, so this does what
        ZipFile._open_to_write and _ZipWriteFile.close do on a seekable file, with the CRC and
        sizes known up front: one local header, the data, and the entry for the central
        directory.
        """
        zf = part.zf
        info = zipfile.ZipInfo(arcname, date_time=self._zip_time())
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info.file_size = deflated.size
        info.compress_size = deflated.path.stat().st_size
        info.CRC = deflated.crc
        zip64 = deflated.size * 1.05 > zipfile.ZIP64_LIMIT  # _open_to_write's rule
        assert zf.fp is not None
        zf.fp.seek(zf.start_dir)
        info.header_offset = zf.fp.tell()
        zf._writecheck(info)  # type: ignore[attr-defined]
        zf._didModify = True  # type: ignore[attr-defined]
        zf.fp.write(info.FileHeader(zip64))
        with deflated.path.open("rb") as data:
            shutil.copyfileobj(data, zf.fp, _COPY_CHUNK)
        zf.start_dir = zf.fp.tell()
        zf.filelist.append(info)
        zf.NameToInfo[info.filename] = info
        part.entries.append(arcname)
        part.central += _central_overhead(len(arcname.encode()))

    def _zip_time(self) -> tuple[int, int, int, int, int, int]:
        now = self._clock()
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        if now.year < 1980:  # the zip format's dates run from 1980 to 2107
            return (1980, 1, 1, 0, 0, 0)
        if now.year > 2107:
            return (2107, 12, 31, 23, 59, 58)
        return (now.year, now.month, now.day, now.hour, now.minute, now.second)

    # -- parts and journal ------------------------------------------------------------------

    def _close_part(self, part: _OpenPart) -> None:
        """Close `part` and journal it; on a write error it is deleted (never half kept)."""
        try:
            part.zf.close()
            part.raw.flush()
            os.fsync(part.raw.fileno())
            part.raw.close()
        except BaseException:
            self._abandon_part(part)
            raise
        size = part.path.stat().st_size
        if size > self.max_part_bytes:  # the planning is conservative: this is a bug
            raise RuntimeError(f"part {part.index} is {size} bytes, over {self.max_part_bytes}")
        closed = Part(part.index, part.path, size, sha256_file(part.path), tuple(part.entries))
        self._journal(
            {
                "type": "part",
                "index": closed.index,
                "file": part.path.name,
                "size": closed.size,
                "sha256": closed.sha256,
                "entries": list(closed.entries),
                "files": [f.to_dict() for f in part.files],
            },
            sync=True,
        )
        self._closed.append(closed)

    def _abandon_part(self, part: _OpenPart) -> None:
        # The part is deleted: errors writing its end (a full disk) change nothing.
        with suppress(OSError, ValueError):
            part.zf.close()
        with suppress(OSError):
            part.raw.close()  # closes the handle even when the flush fails
        part.path.unlink(missing_ok=True)

    def _journal(self, record: Mapping[str, Any], *, sync: bool = False) -> None:
        with (self._staging / _JOURNAL).open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            if sync:
                os.fsync(f.fileno())

    def _header(self) -> dict[str, Any]:
        return {
            "type": "package",
            "format_version": FORMAT_VERSION,
            "request_id": self.info.request_id,
            "max_part_bytes": self.max_part_bytes,
        }

    def _recover(self) -> None:
        records = self._read_journal()
        try:
            self._load(records)
        except (KeyError, TypeError, ValueError):
            # Not a journal this writer wrote: start afresh rather than trust it.
            self._closed, self._entries, self._counts, self._notes = [], {}, {}, []
            self._taken, self._dirs = set(), set()
            self._load([])

    def _read_journal(self) -> list[dict[str, Any]]:
        journal = self._staging / _JOURNAL
        records: list[dict[str, Any]] = []
        if journal.exists():
            with journal.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        break  # a line torn by a crash ends the journal
                    if not isinstance(record, dict):
                        break
                    records.append(record)
        return records

    def _load(self, records: list[dict[str, Any]]) -> None:
        if not records or records[0] != self._header():
            # Nothing to resume, or the journal belongs to another package or part size.
            shutil.rmtree(self._staging, ignore_errors=True)
            records = [self._header()]
        self._staging.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.temp_dir.mkdir()

        parts = [_journaled_part(r, self._staging) for r in records if r["type"] == "part"]
        counts = {str(r["key"]): int(r["n"]) for r in records if r["type"] == "count"}
        notes = list(dict.fromkeys(str(r["text"]) for r in records if r["type"] == "note"))
        finished = [r["parts"] for r in records if r["type"] == "finished"]
        if finished:
            final = self._rename_final(finished[-1])
            self._counts, self._notes = counts, notes
            self._entries = {f.name: f for _, files in parts for f in files}
            self._state, self._final = "finished", final
            return

        parts = parts[: _resumable(parts)]
        keep = {part.path.name for part, _ in parts}
        for stale in self._staging.glob("part-*.zip"):
            if stale.name not in keep:
                stale.unlink()
        for part, files in parts:
            for name in part.entries:
                self._take(name)
            for entry in files:
                self._entries[entry.name] = entry
                if entry.chunks:
                    self._take(entry.name)
            self._closed.append(part)
        self._counts, self._notes = counts, notes

        # Rewrite the journal as what was kept, so later lines follow from a consistent start.
        lines = [self._header()]
        lines += [r for r in records if r["type"] == "part" and r["file"] in keep]
        lines += [{"type": "count", "key": k, "n": n} for k, n in counts.items()]
        lines += [{"type": "note", "text": t} for t in notes]
        fresh = self._staging / f"{_JOURNAL}.new"
        with fresh.open("w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(fresh, self._staging / _JOURNAL)

    # -- finishing --------------------------------------------------------------------------

    def _finish(self) -> list[Part]:
        finished_at = self._clock()
        split = sorted((e for e in self._entries.values() if e.chunks), key=lambda e: e.name)
        readme = render_readme(
            self.info,
            finished_at=finished_at,
            names=list(self._entries),
            notes=self._notes,
            split=split,
        )
        readme_path = self._temp_file(".txt")
        readme_path.write_text(readme, encoding="utf-8", newline="\n")
        self._take(README_NAME)
        self._add_locked(README_NAME, readme_path)

        # The manifest names every part, so it must know how many parts it spills into.
        self._take(MANIFEST_NAME)
        manifest_path = self._temp_file(".json")
        name_bytes = len(MANIFEST_NAME.encode())
        part = self._part()
        total = part.index
        for _ in range(10):
            sizes: list[int | None] = [p.size for p in self._closed]
            parts = [
                (
                    part_name(self.info.request_id, i, total),
                    sizes[i - 1] if i <= len(sizes) else None,
                )
                for i in range(1, total + 1)
            ]
            manifest = render_manifest(
                self.info,
                finished_at=finished_at,
                counts=self._counts,
                notes=self._notes,
                files=self._entries.values(),
                parts=parts,
            )
            with manifest_path.open("w", encoding="utf-8", newline="\n") as f:
                json.dump(manifest, f, ensure_ascii=False, indent=2)
                f.write("\n")
            size = manifest_path.stat().st_size
            plan = plan_entry(name_bytes, size, True, part.used, self.max_part_bytes)
            if plan.new_part_first:
                # Close the full part now, so that the manifest can give its size too.
                part = self._rollover()
                total = max(total, part.index)
                continue
            needed = part.index + len(plan.pieces) - 1
            if needed == total:
                break
            total = needed
        else:  # pragma: no cover - the count only grows, and settles within a few rounds
            raise RuntimeError("could not place the manifest")
        self._add_locked(MANIFEST_NAME, manifest_path)

        last, self._current = self._part(), None
        self._close_part(last)
        if len(self._closed) != total:  # pragma: no cover - the plan above is what ran
            raise RuntimeError(f"manifest names {total} parts, the package has {len(self._closed)}")
        final = [
            {
                "index": p.index,
                "name": part_name(self.info.request_id, p.index, total),
                "file": p.path.name,
                "size": p.size,
                "sha256": p.sha256,
                "entries": list(p.entries),
            }
            for p in self._closed
        ]
        self._journal({"type": "finished", "parts": final}, sync=True)
        self._state = "finished"
        self._final = self._rename_final(final)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        shutil.rmtree(self._staging / _KEPT, ignore_errors=True)
        return list(self._final)

    def _add_locked(self, name: str, src: Path) -> None:
        with src.open("rb") as handle:
            self._add_handle(name, handle)
        src.unlink()

    def _rename_final(self, records: Sequence[Mapping[str, Any]]) -> list[Part]:
        # Renaming last (after the journal says "finished") makes a crash here harmless: the
        # next writer on this work_dir completes the renames.
        parts = []
        for record in records:
            final = self.work_dir / str(record["name"])
            working = self._staging / str(record["file"])
            if working.exists():  # else renamed already
                os.replace(working, final)
            parts.append(
                Part(
                    int(record["index"]),
                    final,
                    int(record["size"]),
                    str(record["sha256"]),
                    tuple(record["entries"]),
                )
            )
        return parts
