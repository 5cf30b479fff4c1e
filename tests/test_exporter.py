"""bot.exporter: every export kind, from the queued job to the package and its queued parts.

The real Training API client runs over HTTP against the Custom Vision emulator, the real Store
on a temporary SQLite file, and jobs run through Runner.run_one (the path a worker takes)
without worker threads. Packages are read back from their zip parts and checked against the
emulator: metadata against fresh API reads, files byte for byte against the manifest's
SHA-256 and the bytes the emulator serves.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bot.exporter import (
    CACHE_DIR,
    COUNT_NOUNS,
    MAX_LOSSES,
    file_ext,
    not_found,
    prefetched,
    run_export,
    summary,
)
from bot.fetcher import FetcherLost
from bot.lifecycle import JobKind, RequestRecord, Role, Status
from bot.package import unsigned
from bot.runner import JobContext, JobInterrupted, Outcome, Settings
from bot.training import ImageKind
from bot.wording import describe_counts
from emulators.customvision import Exchange, Faults, Seed
from tests.harness import REQUESTER, JobHarness, children, job_parts

KEY = "exporter-test-key-9Qx2"
SEED = Seed(projects=3, iterations=2, tags=3, images=40, predictions=6, image_bytes=256)
UNKNOWN = "00000000-0000-4000-8000-0000000000aa"


# -- pure helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "uri", "ext"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00", None, "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", None, "jpg"),
        (b"GIF89a\x01\x00", None, "gif"),
        (b"BM6\x00\x00\x00", None, "bmp"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", None, "webp"),
        (b"PK\x03\x04\x14\x00", "https://x/e-1/model.zip?sig=a", "zip"),
        (b"\x00\x01\x02", "https://x/e-1/model.TFLite?sig=a", "tflite"),
        (b"\x00\x01\x02", "i-1/o-2", "bin"),
        (b"", None, "bin"),
    ],
)
def test_file_ext_reads_magic_bytes_then_the_uri(head: bytes, uri: str | None, ext: str) -> None:
    assert file_ext(head, uri) == ext


def test_summary_names_counts_sizes_and_hashes() -> None:
    counts = {"images": 2, "projects": 1, "image_files": 1, "tags": 0, "image_records": 9}
    assert describe_counts(counts, COUNT_NOUNS) == "1 project, 2 images and 1 image file"
    files = [{"name": "R-1-export.zip", "size": 2048, "sha256": "ab" * 32}]
    assert summary("R-1", counts, files) == (
        "R-1 export is ready: 1 project, 2 images and 1 image file.\n"
        "1 file to download, 2.0 KB in total:\n"
        f"\u2022 R-1-export.zip: 2.0 KB (2,048 bytes), SHA-256 {'ab' * 32}"
    )


def test_not_found_names_the_kind_and_the_short_ids() -> None:
    one = not_found("Project", ["12345678-aaaa"], "NotFoundProject")
    assert one.user_message == "Project 12345678\u2026 was not found (NotFoundProject)."
    many = not_found("Image", [f"{n}0000000-x" for n in range(1, 6)], "NotFoundImage")
    assert many.user_message == (
        "Images 10000000\u2026, 20000000\u2026, 30000000\u2026 and 2 more were not found"
        " (NotFoundImage)."
    )
    assert (one.code, one.status) == ("NotFoundProject", 404)


# -- the harness ---------------------------------------------------------------------------------


@dataclass
class Package:
    manifest: dict[str, Any]
    files: dict[str, bytes]  # every file of the manifest, rejoined when split
    parts: list[Path]

    def json(self, name: str) -> Any:
        return json.loads(self.files[name])

    def lines(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.files[name].decode().splitlines()]

    def names(self, prefix: str = "") -> set[str]:
        return {n for n in self.files if n.startswith(prefix)}


@dataclass
class Harness(JobHarness):
    handler: list[Callable[[JobContext], Outcome]] = field(default_factory=list)

    def settings(self, **changes: Any) -> None:
        current = self.runner.settings
        self.runner.settings = Settings(
            max_file_bytes=changes.get("max_file_bytes", current.max_file_bytes),
            download_concurrency=changes.get("download_concurrency", current.download_concurrency),
        )

    def submit(self, text: str, *, run: bool = True) -> RequestRecord:
        """Store an export request as the service does, and run its job."""
        number = self.store_request(text, status=Status.QUEUED, job=JobKind.EXPORT)
        if run:
            self.run_jobs()
        return self.store.get(number)

    def done(self, text: str) -> tuple[RequestRecord, Package]:
        record = self.submit(text)
        assert record.status == "done", record.error
        return record, self.package(record)

    def package(self, record: RequestRecord) -> Package:
        assert record.result is not None
        folder = self.work_dir / record.id
        parts = [folder / f["name"] for f in record.result["parts"]]
        entries: dict[str, bytes] = {}
        for path, posted in zip(parts, record.result["parts"], strict=True):
            data = path.read_bytes()
            assert (len(data), hashlib.sha256(data).hexdigest()) == (
                posted["size"],
                posted["sha256"],
            )
            with zipfile.ZipFile(path) as zf:
                assert zf.testzip() is None
                for name in zf.namelist():
                    assert name not in entries, f"{name} is in two parts"
                    entries[name] = zf.read(name)
        # The manifest cannot list its own pieces when it is split: rejoin them by name.
        pieces = sorted(n for n in entries if n.startswith("manifest.json."))
        raw = b"".join(entries.pop(n) for n in pieces) if pieces else entries.pop("manifest.json")
        manifest = json.loads(raw)
        files: dict[str, bytes] = {}
        for f in manifest["files"]:
            if "chunks" in f:
                data = b"".join(entries.pop(c["name"]) for c in f["chunks"])
            else:
                data = entries.pop(f["name"])
            assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"])
            files[f["name"]] = data
        assert entries == {}, f"not in the manifest: {sorted(entries)}"
        return Package(manifest, files, parts)

    def blob_paths(self) -> Counter[str]:
        return Counter(c.path for c in self.cv.calls_to("Blob"))

    def api(self, p: str, scope: str | None = None) -> list[dict[str, Any]]:
        """The images of a scope as the API shows them now (a package keeps no signatures)."""
        return [unsigned(i.to_dict()) for i in self.client.iter_images(p, iteration_id=scope)]


def make_harness(
    tmp_path: Path, faults: Faults | None = None, seed: Seed = SEED
) -> Iterator[Harness]:
    handler: list[Callable[[JobContext], Outcome]] = [run_export]
    handlers = {"export": lambda ctx: handler[0](ctx)}
    parts = job_parts(tmp_path, KEY, seed, faults, handlers, {"download_concurrency": 4})
    with parts as (cv, store, runner, client, clock):
        work = tmp_path / "work"
        yield Harness(cv, store, runner, client, clock, work, tuple(cv.data.project_ids()), handler)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path)


def image_id_of(name: str) -> str:
    return name.rsplit("/", 1)[1].split(".")[0]


def assert_image_files(h: Harness, pkg: Package, prefix: str = "images/") -> None:
    """Every image file holds exactly the bytes the emulator serves for its image."""
    for name in pkg.names(prefix):
        if name.startswith("images/predictions/"):
            continue
        assert name.endswith(".png"), name
        assert pkg.files[name] == h.cv.image_bytes(image_id_of(name)), name


# -- export project ------------------------------------------------------------------------------


@pytest.mark.parametrize("vnet", [False, True])
def test_export_project_holds_everything_the_project_holds(tmp_path: Path, vnet: bool) -> None:
    for h in make_harness(tmp_path, Faults(vnet=vnet)):
        p, data = h.p, h.cv.data
        iterations = data.iteration_ids(p)
        record, pkg = h.done(f"export project {p} --ticket DSR-7 --reason 'access request'")

        assert pkg.json("projects.json") == [unsigned(h.client.get_project(p).to_dict())]
        assert pkg.json("iterations.json") == [
            unsigned(i.to_dict()) for i in h.client.get_iterations(p)
        ]
        for it in iterations:
            assert pkg.json(f"performance/{it}.json") == (
                unsigned(h.client.get_iteration_performance(p, it).to_dict())
            )
        assert pkg.json("exports.json") == {
            it: [unsigned(e.to_dict()) for e in h.client.get_exports(p, it)] for it in iterations
        }
        assert pkg.json("tags.json") == {
            "workspace": [unsigned(t.to_dict()) for t in h.client.get_tags(p)],
            "iterations": {
                it: [unsigned(t.to_dict()) for t in h.client.get_tags(p, it)] for it in iterations
            },
        }

        # One line per image per scope, the image exactly as the API returns it.
        lines = pkg.lines("images.jsonl")
        scopes: list[str | None] = [None, *iterations]
        expected = [
            ("workspace" if s is None else "iteration", s, image)
            for s in scopes
            for image in h.api(p, s)
        ]
        assert [(li["scope"], li["iterationId"], li["image"]) for li in lines] == expected

        # Each distinct image is stored once: in the workspace folder when the workspace holds
        # it, else under the first iteration holding it; every line names that file.
        workspace = set(data.image_ids(p))
        first_iteration = {}
        for it in reversed(iterations):
            first_iteration.update(dict.fromkeys(data.image_ids(p, it), it))
        distinct = {li["image"]["id"] for li in lines}
        assert distinct - workspace, "the seed should have images only an iteration holds"
        for line in lines:
            i = line["image"]["id"]
            folder = "workspace" if i in workspace else f"iterations/{first_iteration[i]}"
            assert line["file"] == f"images/{folder}/{i}.png"
        assert pkg.names("images/") - pkg.names("images/predictions/") == {
            li["file"] for li in lines
        }
        assert_image_files(h, pkg)

        predictions = pkg.lines("predictions.jsonl")
        assert [li["prediction"]["id"] for li in predictions] == data.prediction_ids(p)
        assert [li["prediction"] for li in predictions] == [
            unsigned(s.to_dict()) for s in h.client.iter_predictions(p)
        ]
        for line in predictions:
            assert line["file"] == f"images/predictions/{line['prediction']['id']}.png"
            assert pkg.files[line["file"]].startswith(b"\x89PNG")

        # Downloaded once each, and nothing left in the cache.
        downloads = (
            h.blob_paths()
            if not vnet
            else Counter(c.query["path"] for c in h.cv.calls_to("GetArtifact"))
        )
        assert len(downloads) == len(distinct) + len(predictions)
        assert set(downloads.values()) == {1}
        assert not (h.work_dir / record.id / CACHE_DIR).exists()
        # Its files are deleted on a thread of their own, not left behind.
        deadline = time.monotonic() + 30
        while list((h.work_dir / record.id).glob(f".{CACHE_DIR}*")):
            assert time.monotonic() < deadline, "the download cache is still being deleted"
            time.sleep(0.05)

        counts = {
            "projects": 1,
            "iterations": len(iterations),
            "performance": len(iterations),
            "exports": sum(len(h.client.get_exports(p, it)) for it in iterations),
            "tags": len(data.tag_ids(p)),
            "images": len(distinct),
            "image_records": len(lines),
            "image_files": len(distinct),
            "predictions": len(predictions),
            "prediction_files": len(predictions),
        }
        assert record.result is not None
        assert record.result["counts"] == counts
        assert pkg.manifest["counts"] == dict(sorted(counts.items()))
        assert pkg.manifest["request"]["ticket"] == "DSR-7"
        assert pkg.manifest["source"]["api_version"] == "v3.3"
        readme = pkg.files["README.txt"].decode()
        assert "access request" in readme
        assert KEY not in readme and KEY.encode() not in b"".join(pkg.files.values())


def test_export_project_queues_parts_with_audit_and_summary(harness: Harness) -> None:
    h = harness
    h.settings(max_file_bytes=16 * 1024)
    record, pkg = h.done(f"export project {h.p}")
    assert record.result is not None
    parts = record.result["parts"]
    total = len(parts)
    assert total > 2, "16 KB parts should split this project"
    assert all(path.stat().st_size <= 16 * 1024 for path in pkg.parts)
    uploads = h.uploads(record.number)
    assert sorted(uploads) == sorted(f"upload:{record.number}:part{n}" for n in range(1, total + 1))
    for n, part in enumerate(parts, 1):
        payload = uploads[f"upload:{record.number}:part{n}"]
        width = max(2, len(str(total)))
        assert part["name"] == f"{record.id}-export-part{n:0{width}d}-of-{total:0{width}d}.zip"
        assert payload["filename"] == part["name"]
        assert payload["path"] == str(h.work_dir / record.id / part["name"])
        assert payload["title"] == f"{record.id} export (part {n} of {total})"
        assert part["sha256"] in payload["comment"]
    assert [e.details for e in h.events(record.number, "file.queued")] == parts
    completed = h.events(record.number, "request.completed")
    assert [e.details for e in completed] == [{"files": parts, "counts": record.result["counts"]}]
    message = summary(record.id, record.result["counts"], parts)
    assert all(p["sha256"] in message for p in parts)
    posts = h.store.db.conn.execute(
        "SELECT payload FROM outbox WHERE kind = 'post' AND request_id = ?", (record.number,)
    ).fetchall()
    assert [json.loads(x)["text"] for (x,) in posts] == [f"<@{REQUESTER}> {message}"]
    assert record.progress is not None and record.progress["phase"] == "packaging"
    assert_image_files(h, pkg)
    assert len(pkg.lines("images.jsonl")) == record.result["counts"]["image_records"]


def test_export_project_without_images_downloads_nothing(harness: Harness) -> None:
    h = harness
    record, pkg = h.done(f"export project {h.p} --no-images")
    assert pkg.names("images/") == set()
    assert h.blob_paths() == Counter()
    assert {li["file"] for li in pkg.lines("images.jsonl")} == {None}
    assert {li["file"] for li in pkg.lines("predictions.jsonl")} == {None}
    assert record.result is not None
    assert "image_files" not in record.result["counts"]


def test_export_project_metadata_makes_only_the_calls_it_needs(tmp_path: Path) -> None:
    # Scopes of 512 images (a full last page, then an empty one ends the listing) and of fewer;
    # 300 stored predictions: two pages.
    seed = Seed(
        projects=1, iterations=3, tags=3, images=512, predictions=300, smallest_snapshot=256
    )
    for h in make_harness(tmp_path, seed=seed):
        p, data = h.p, h.cv.data
        iterations = data.iteration_ids(p)
        sizes = [len(data.image_ids(p, scope)) for scope in [None, *iterations]]
        assert sizes[0] == sizes[-1] == 512 and sizes[1] == 256
        record, pkg = h.done(f"export project {p} --no-images")
        made = Counter(c.operation_id for c in h.cv.calls if c.status == 200)
        assert made == {
            "GetProject": 1,
            "GetIterations": 1,
            "GetIterationPerformance": 3,
            "GetExports": 3,
            "GetTags": 4,
            "GetImages": sum(n // 256 + 1 for n in sizes),
            "QueryPredictions": 2,
        }
        assert len(pkg.lines("images.jsonl")) == sum(sizes)
        assert record.result is not None
        assert record.result["counts"]["image_records"] == sum(sizes)


# Scopes of more than one index page (500 images a page) in each kind of project.
PAGED = Seed(projects=3, iterations=2, tags=3, images=620, predictions=4, image_bytes=64)


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path, seed=PAGED)


def view_files(pkg: Package) -> dict[str, Any]:
    """The index pages, labels.csv and COCO files of a package; a COCO file without the
    request id, which names the request that built it."""
    views: dict[str, Any] = {}
    for name, data in pkg.files.items():
        if name.startswith("annotations/"):
            document = json.loads(data)
            document["info"].pop("cv_request")
            views[name] = document
        elif name.startswith("index/") or name.endswith("labels.csv"):
            views[name] = data
    return views


@pytest.mark.parametrize("which", [0, 1, 2], ids=["multiclass", "detection", "multilabel"])
def test_export_project_metadata_builds_its_views_while_listing_the_same_as_afterwards(
    paged: Harness, which: int
) -> None:
    h = paged
    p = h.cv.data.project_ids()[which]
    text = f"export project {p} --no-images"
    # While the last calls (the stored predictions) are made, the image pages wait rendered
    # in the package's temp folder: built as the listing came, not after it.
    rendered: list[int] = []

    def look(exchange: Exchange) -> None:
        if exchange.operation_id == "QueryPredictions" and not rendered:
            rendered.append(len(list(h.work_dir.glob("*/.package/tmp/cards-*.tmp"))))

    h.cv.hooks.append(look)
    _, streamed = h.done(text)
    h.cv.hooks.remove(look)
    pages = streamed.names("index/images-")
    assert len(pages) > 3 and rendered == [len(pages)]

    # The same export stopped once images.jsonl is in the package and resumed: its views are
    # built from the package's copy of the listing. The files are the same.
    h.handler[0] = stop_when(lambda cp: cp.get("section") == "images")
    _, resumed = h.done(text)
    assert resumed.names("index/images-") == pages
    assert view_files(resumed) == view_files(streamed)
    convention = streamed.json(f"annotations/{p}.coco.json")["info"]["convention"]
    kind = ("labels.csv" in streamed.files, convention.split(":")[0])
    assert kind == ((False, "object detection") if which == 1 else (True, "classification"))


def test_export_project_metadata_of_a_classification_project_with_regions(
    paged: Harness,
) -> None:
    # The service's answer for regions on a classification project's images is unknown: if the
    # workspace's last page holds one (after a page of lines without), the project is object
    # detection after all, as for an export with files (whose views are built once the
    # listing is complete).
    h = paged
    p = h.cv.data.project_ids()[0]
    tag = h.cv.data.tag_ids(p)[0]
    boxed: list[str] = []

    def add_region(exchange: Exchange) -> None:
        images = exchange.response_body
        if exchange.operation_id != "GetImages" or "iterationId" in exchange.query:
            return
        if boxed or not images or len(images) == 256:
            return
        image = images[-1]
        boxed.append(image["id"])
        image["regions"] = [
            {
                "regionId": UNKNOWN,
                "tagId": tag,
                "tagName": "x",
                "created": image["created"],
                "left": 0.1,
                "top": 0.2,
                "width": 0.3,
                "height": 0.4,
            }
        ]

    h.cv.hooks.append(add_region)
    _, pkg = h.done(f"export project {p} --no-images")
    assert boxed
    assert "labels.csv" not in pkg.files
    document = pkg.json(f"annotations/{p}.coco.json")
    assert document["info"]["convention"].startswith("object detection")
    assert [a["bbox"] for a in document["annotations"]] == [
        [round(0.1 * w, 2), round(0.2 * ht, 2), round(0.3 * w, 2), round(0.4 * ht, 2)]
        for i in document["images"]
        if i["cv_image_id"] == boxed[0]
        for w, ht in [(i["width"], i["height"])]
    ]
    assert "Object detection" in pkg.files["index.html"].decode()


def test_prefetched_keeps_the_order_and_raises_where_the_source_failed() -> None:
    def source() -> Iterator[int]:
        yield from range(10)
        raise ValueError("page 11 failed")

    got: list[int] = []
    with pytest.raises(ValueError, match="page 11 failed"):
        for item in prefetched(source(), 3):
            got.append(item)
    assert got == list(range(10))
    assert list(prefetched(iter(range(600)), 4)) == list(range(600))


def test_prefetched_stops_reading_once_the_caller_stops() -> None:
    read: list[int] = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            read.append(n)
            yield n
            n += 1

    items = prefetched(endless(), 2)
    assert next(items) == 0
    items.close()
    deadline = time.monotonic() + 30
    while any(t.name == "prefetch" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reader went on reading"
        time.sleep(0.01)
    assert len(read) <= 1 + 2 + 2  # the one taken, a full queue, one waiting to go in


# -- the other kinds -----------------------------------------------------------------------------


def test_export_account_counts_every_project_against_the_limits(harness: Harness) -> None:
    h = harness
    data = h.cv.data
    record, pkg = h.done("export account")
    assert record.result is not None
    assert record.result["counts"] == {"domains": len(h.client.get_domains()), "projects": 3}
    account = pkg.json("account.json")
    assert account["endpoint_host"] == urlsplit(h.cv.endpoint).netloc
    assert account["api_version"] == "v3.3"
    assert account["projects"] == {"count": len(h.projects), "limit": 100}
    rows = account["per_project"]
    assert [r["id"] for r in rows] == list(h.projects)
    for row, p in zip(rows, h.projects, strict=True):
        images = data.image_ids(p)
        untagged = [i for i in images if not data.image_tag_ids(p, i)]
        assert row["images"] == {
            "all": len(images),
            "tagged": len(images) - len(untagged),
            "untagged": len(untagged),
            "limit": 100_000,
        }
        assert row["tags"] == {"count": len(data.tag_ids(p)), "limit": 500}
        assert row["iterations"] == {"count": len(data.iteration_ids(p)), "limit": 20}
        assert pkg.json(f"projects/{p}/iterations.json") == [
            unsigned(i.to_dict()) for i in h.client.get_iterations(p)
        ]
        assert pkg.json(f"projects/{p}/tags.json") == {
            "workspace": [unsigned(t.to_dict()) for t in h.client.get_tags(p)]
        }
    assert pkg.json("domains.json") == [unsigned(d.to_dict()) for d in h.client.get_domains()]
    assert pkg.json("projects.json") == [unsigned(pr.to_dict()) for pr in h.client.get_projects()]
    notes = pkg.manifest["notes"]
    assert any("Keys and Endpoint" in n and "No key" in n for n in notes)
    assert any("48 hours" in n and "Resource Manager" in n for n in notes)
    assert KEY.encode() not in b"".join(pkg.files.values())
    assert h.blob_paths() == Counter()


def test_export_projects_lists_every_project(harness: Harness) -> None:
    record, pkg = harness.done("export projects")
    assert pkg.json("projects.json") == [
        unsigned(p.to_dict()) for p in harness.client.get_projects()
    ]
    assert set(pkg.files) == {"projects.json", "index.html", "README.txt"}
    assert record.result is not None
    assert record.result["counts"] == {"projects": len(harness.projects)}


def test_export_iterations_and_iteration(harness: Harness) -> None:
    h = harness
    p = h.p
    it = h.cv.data.iteration_ids(p)[0]
    _, pkg = h.done(f"export iterations {p}")
    assert pkg.json("iterations.json") == [
        unsigned(i.to_dict()) for i in h.client.get_iterations(p)
    ]
    assert set(pkg.files) == {"projects.json", "iterations.json", "index.html", "README.txt"}

    _, pkg = h.done(f"export iteration {p} {it}")
    assert pkg.json("iterations.json") == [unsigned(h.client.get_iteration(p, it).to_dict())]
    assert pkg.json(f"performance/{it}.json") == unsigned(
        h.client.get_iteration_performance(p, it).to_dict()
    )
    assert pkg.json("exports.json") == {
        it: [unsigned(e.to_dict()) for e in h.client.get_exports(p, it)]
    }
    assert pkg.names("models/") == set()


def test_export_performance_passes_thresholds_through(harness: Harness) -> None:
    h = harness
    p = h.p
    it = h.cv.data.iteration_ids(p)[1]
    _, pkg = h.done(f"export performance {p} {it} --threshold 0.7 --overlap 0.25")
    calls = h.cv.calls_to("GetIterationPerformance")
    assert [(c.query["threshold"], c.query["overlapThreshold"]) for c in calls] == [("0.7", "0.25")]
    assert pkg.json(f"performance/{it}.json") == (
        unsigned(h.client.get_iteration_performance(p, it, 0.7, 0.25).to_dict())
    )
    assert any("threshold 0.7 and overlap threshold 0.25" in n for n in pkg.manifest["notes"])


@pytest.mark.parametrize("scoped", [False, True])
def test_export_tags_and_tag_read_the_workspace_or_the_snapshot(
    harness: Harness, scoped: bool
) -> None:
    h = harness
    p = h.p
    it = h.cv.data.iteration_ids(p)[0] if scoped else None
    option = f" --iteration {it}" if it else ""
    scope_key = "iterations" if it else "workspace"

    def shaped(tags: list[dict[str, Any]]) -> dict[str, Any]:
        return {"iterations": {it: tags}} if it else {"workspace": tags}

    _, pkg = h.done(f"export tags {p}{option}")
    tags = [unsigned(t.to_dict()) for t in h.client.get_tags(p, it)]
    assert pkg.json("tags.json") == shaped(tags)
    assert scope_key in pkg.json("tags.json")
    assert ("iterations.json" in pkg.files) == scoped

    tag = h.cv.data.tag_ids(p, it)[1]
    _, pkg = h.done(f"export tag {p} {tag}{option}")
    assert pkg.json("tags.json") == shaped([unsigned(h.client.get_tag(p, tag, it).to_dict())])


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        ("", "all"),
        ("--tagged", "tagged"),
        ("--untagged", "untagged"),
        ("--no-files", "all"),
    ],
)
def test_export_images_by_tagging(harness: Harness, options: str, kind: ImageKind) -> None:
    h = harness
    p = h.p
    record, pkg = h.done(f"export images {p} {options}")
    api = [unsigned(i.to_dict()) for i in h.client.iter_images(p, kind=kind)]
    lines = pkg.lines("images.jsonl")
    assert [li["image"] for li in lines] == api
    assert {(li["scope"], li["iterationId"]) for li in lines} == {("workspace", None)}
    files = "--no-files" not in options
    assert pkg.names("images/") == (
        {f"images/workspace/{i['id']}.png" for i in api} if files else set()
    )
    assert len(h.blob_paths()) == (len(api) if files else 0)
    assert_image_files(h, pkg)
    assert record.result is not None
    assert record.result["counts"]["images"] == len(api)


def test_export_images_with_tags_of_an_iteration(harness: Harness) -> None:
    h = harness
    p = h.p
    it = h.cv.data.iteration_ids(p)[0]
    tags = h.cv.data.tag_ids(p, it)[:2]
    _, pkg = h.done(f"export images {p} --tag {tags[0]} --tag {tags[1]} --iteration {it}")
    api = [
        unsigned(i.to_dict())
        for i in h.client.iter_images(p, kind="tagged", iteration_id=it, tag_ids=tags)
    ]
    assert api, "the seed should have images with these tags"
    lines = pkg.lines("images.jsonl")
    assert [li["image"] for li in lines] == api
    assert {(li["scope"], li["iterationId"]) for li in lines} == {("iteration", it)}
    assert {li["file"] for li in lines} == {f"images/iterations/{it}/{i['id']}.png" for i in api}
    assert pkg.json("tags.json") == {
        "iterations": {it: [unsigned(t.to_dict()) for t in h.client.get_tags(p, it)]}
    }
    assert pkg.json("iterations.json") == [unsigned(h.client.get_iteration(p, it).to_dict())]
    assert_image_files(h, pkg)


def test_export_images_by_ids(harness: Harness) -> None:
    h = harness
    p = h.p
    ids = h.cv.data.image_ids(p)[3:6]
    _, pkg = h.done(f"export images {p} --ids {','.join(ids)}")
    lines = pkg.lines("images.jsonl")
    assert [li["image"]["id"] for li in lines] == ids
    assert [li["image"] for li in lines] == [
        unsigned(i.to_dict()) for i in h.client.get_images_by_ids(p, ids)
    ]
    assert pkg.names("images/") == {f"images/workspace/{i}.png" for i in ids}
    assert_image_files(h, pkg)


def test_export_exports_downloads_finished_models_only(harness: Harness) -> None:
    h = harness
    p = h.p
    it = h.cv.data.iteration_ids(p)[1]
    h.cv.data.add_export(p, it, "CoreML", "Apple/ios 11", status="Exporting")
    h.handler[0] = partial(run_export, export_wait=0.1)  # it never finishes here
    _, pkg = h.done(f"export exports {p} {it} --download")
    exports = h.client.get_exports(p, it)
    assert pkg.json("exports.json") == {it: [unsigned(e.to_dict()) for e in exports]}
    done = [e for e in exports if e.status == "Done"]
    assert len(done) == 2
    expected = {f"models/{it}/{e.platform}-{e.flavor}.zip": e for e in done}
    assert pkg.names("models/") == set(expected)
    for name in expected:
        with zipfile.ZipFile(io.BytesIO(pkg.files[name])) as model:
            assert "labels.txt" in model.namelist()
    assert any("CoreML (Apple/ios 11)" in n and "Exporting" in n for n in pkg.manifest["notes"])

    _, pkg = h.done(f"export exports {p} {it}")
    assert pkg.names("models/") == set()


@pytest.mark.parametrize("files", [True, False])
def test_export_predictions(harness: Harness, files: bool) -> None:
    h = harness
    p = h.p
    record, pkg = h.done(f"export predictions {p}{'' if files else ' --no-files'}")
    lines = pkg.lines("predictions.jsonl")
    assert [li["prediction"] for li in lines] == [
        unsigned(s.to_dict()) for s in h.client.iter_predictions(p)
    ]
    ids = h.cv.data.prediction_ids(p)
    if files:
        assert pkg.names("images/") == {f"images/predictions/{i}.png" for i in ids}
        for i in ids:
            served = h.cv.data.artifact(p, f"p-{p.replace('-', '')}/o-{i.replace('-', '')}")
            assert served is not None
            assert pkg.files[f"images/predictions/{i}.png"] == served[0]
    else:
        assert pkg.names("images/") == set()
        assert {li["file"] for li in lines} == {None}
    assert record.result is not None
    assert record.result["counts"]["predictions"] == len(ids)


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ("export project {u}", "Project 00000000\u2026 was not found (NotFoundProject)."),
        ("export performance {u} {i}", "Project 00000000\u2026 was not found (NotFoundProject)."),
        ("export iteration {p} {u}", "Iteration 00000000\u2026 was not found (NotFoundIteration)."),
        (
            "export tags {p} --iteration {u}",
            "Iteration 00000000\u2026 was not found (NotFoundIteration).",
        ),
        ("export tag {p} {u}", "Tag 00000000\u2026 was not found (NotFoundTag)."),
        ("export images {p} --tag {u}", "Tag 00000000\u2026 was not found (NotFoundTag)."),
        ("export images {p} --ids {m},{u}", "Image 00000000\u2026 was not found (NotFoundImage)."),
    ],
)
def test_export_of_something_unknown_fails_naming_it(
    harness: Harness, command: str, message: str
) -> None:
    h = harness
    p = h.p
    text = command.format(
        u=UNKNOWN, p=p, i=h.cv.data.iteration_ids(p)[0], m=h.cv.data.image_ids(p)[0]
    )
    record = h.submit(text)
    assert (record.status, record.error) == ("failed", message)
    assert h.uploads(record.number) == {}
    assert [e.details for e in h.events(record.number, "request.failed")] == [
        {"error": message, "type": "NotFound"}
    ]


def test_export_notes_a_file_deleted_after_it_was_listed(harness: Harness) -> None:
    h = harness
    p = h.p
    gone = h.cv.data.image_ids(p)[4]

    def delete_once(exchange: Exchange) -> None:
        if exchange.operation_id == "GetImages" and h.cv.data.has_image(p, gone):
            h.cv.data.api_delete_images(
                p, [gone], all_images=False, all_iterations=True, delay=lambda p, i: 0.0
            )

    h.cv.hooks.append(delete_once)
    record, pkg = h.done(f"export images {p}")
    lines = pkg.lines("images.jsonl")
    assert [li["file"] for li in lines if li["image"]["id"] == gone] == [None]
    assert all(li["file"] for li in lines if li["image"]["id"] != gone)
    assert record.result is not None
    assert record.result["counts"]["files_missing"] == 1
    assert record.result["counts"]["image_files"] == len(lines) - 1
    assert any(n.startswith("1 file no longer existed") for n in pkg.manifest["notes"])


# -- resuming ------------------------------------------------------------------------------------

BIG = Seed(projects=1, iterations=2, tags=3, images=300, predictions=6, image_bytes=256)


@pytest.fixture
def big(tmp_path: Path) -> Iterator[Harness]:
    yield from make_harness(tmp_path, seed=BIG)


def stop_when(
    condition: Callable[[dict[str, Any]], bool], then: Callable[[JobContext], None] | None = None
) -> Callable[[JobContext], Outcome]:
    """A handler that runs the export and stops it at the first checkpoint where `condition`
    (once: the attempts after it run the export unchanged)."""
    fired: list[bool] = []

    def handler(ctx: JobContext) -> Outcome:
        save = ctx.save

        def checked(**updates: Any) -> None:
            if not fired and condition({**ctx.checkpoint, **updates}):
                fired.append(True)
                if then is None:
                    save(**updates)
                    raise JobInterrupted
                then(ctx)
            save(**updates)

        ctx.save = checked  # type: ignore[method-assign]  # the test's hook around save
        return run_export(ctx)

    return handler


@pytest.mark.parametrize("damage", ["none", "package lost", "package lost, one file damaged"])
def test_export_resumes_without_downloading_anything_twice(big: Harness, damage: str) -> None:
    h = big
    p = h.p
    h.settings(max_file_bytes=64 * 1024)
    h.handler[0] = stop_when(lambda cp: cp.get("files_done", 0) >= 128)
    record = h.submit(f"export project {p}", run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    h.runner.run_one(job)
    record = h.store.get(record.number)
    assert record.status == "running", record.error
    assert children() == {}  # an interrupted job's download process ended with it
    queued = h.store.job_for(record.number, JobKind.EXPORT)
    assert queued is not None and queued.status == "queued"
    first = h.blob_paths()
    assert len(first) >= 128
    folder = h.work_dir / record.id
    damaged: list[str] = []
    if damage != "none":
        kept = list((folder / ".package").glob("part-*.zip"))
        assert kept, "64 KB parts should have been closed before the interruption"
        shutil.rmtree(folder / ".package")
    if "damaged" in damage:
        cached = sorted(f for f in (folder / CACHE_DIR).iterdir() if f.name != "state.jsonl")
        cached[0].write_bytes(b"not the image")
        damaged.append(cached[0].name)

    h.handler[0] = run_export
    h.run_jobs()
    record = h.store.get(record.number)
    assert record.status == "done", record.error
    pkg = h.package(record)
    total = h.blob_paths()
    assert len(first) < len(total), "the interruption should leave files to download"
    assert sorted(Counter(total.values()).items()) == (
        [(1, len(total) - len(damaged)), (2, len(damaged))] if damaged else [(1, len(total))]
    )

    data = h.cv.data
    iterations = data.iteration_ids(p)
    lines = pkg.lines("images.jsonl")
    expected = [(s, image["id"]) for s in [None, *iterations] for image in h.api(p, s)]
    assert [(li["iterationId"], li["image"]["id"]) for li in lines] == expected
    distinct = {li["image"]["id"] for li in lines}
    assert {li["file"] for li in lines} == pkg.names("images/") - pkg.names("images/predictions/")
    assert len(pkg.names("images/")) == len(distinct) + len(data.prediction_ids(p))
    assert_image_files(h, pkg)
    assert len(h.uploads(record.number)) == len(pkg.parts) > 1
    assert record.result is not None
    assert record.result["counts"]["image_files"] == len(distinct)


def test_export_finished_before_a_crash_is_not_built_again(harness: Harness) -> None:
    h = harness

    def crash_after(ctx: JobContext) -> Outcome:
        run_export(ctx)
        raise JobInterrupted  # the process died before the runner recorded the outcome

    h.handler[0] = crash_after
    record = h.submit(f"export project {h.p}", run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    h.runner.run_one(job)
    queued = h.store.job_for(record.number, JobKind.EXPORT)
    assert queued is not None and queued.status == "queued"
    uploads = h.uploads(record.number)
    calls = len(h.cv.calls)
    h.handler[0] = run_export
    h.run_jobs()
    record = h.store.get(record.number)
    assert record.status == "done", record.error
    assert len(h.cv.calls) == calls
    assert h.uploads(record.number) == uploads
    assert len(h.events(record.number, "file.queued")) == len(uploads)
    h.package(record)


def test_export_finished_but_not_queued_is_queued_without_rebuilding(harness: Harness) -> None:
    h = harness
    record, _ = h.done(f"export project {h.p}")
    assert record.result is not None
    parts = record.result["parts"]
    job = h.store.job_for(record.number, JobKind.EXPORT)
    assert job is not None
    # As if the process died between the package's finish() and the queueing of its parts.
    with h.store.write() as conn:
        conn.execute(
            "DELETE FROM outbox WHERE kind = 'upload' AND request_id = ?", (record.number,)
        )
        checkpoint = {k: v for k, v in job.checkpoint.items() if k != "finished"}
        h.store.save_checkpoint(conn, job.id, checkpoint)
        conn.execute("UPDATE requests SET status = 'running' WHERE id = ?", (record.number,))
        h.store.requeue_job(conn, job.id)
    calls = len(h.cv.calls)
    h.run_jobs()
    record = h.store.get(record.number)
    assert record.status == "done", record.error
    assert record.result is not None
    assert record.result["parts"] == parts
    assert len(h.cv.calls) == calls
    assert sorted(h.uploads(record.number)) == [
        f"upload:{record.number}:part{n}" for n in range(1, len(parts) + 1)
    ]
    h.package(record)


def test_cancelled_export_stops_and_removes_its_files(big: Harness) -> None:
    h = big

    def cancel(ctx: JobContext) -> None:
        assert len(children()) == 1  # the download process runs
        with ctx.runner.store.write() as conn:
            ctx.runner.store.transition(
                conn, ctx.request.number, to=Status.CANCELLED, by=Role.REQUESTER, actor=REQUESTER
            )

    h.handler[0] = stop_when(lambda cp: cp.get("files_done", 0) >= 64, then=cancel)
    record = h.submit(f"export project {h.p}")
    assert record.status == "cancelled"
    assert not (h.work_dir / record.id).exists()
    assert h.uploads(record.number) == {}
    assert children() == {}  # the download process ended with the job


# -- the download process (issues 13 and 19) ----------------------------------------------------


def kill_download_process_at(h: Harness, blobs: int, *, every: bool = False) -> set[int]:
    """SIGKILL the export's download process when the emulator serves its `blobs`-th file
    (once, or at every file from then on); return the set of pids killed."""
    killed: set[int] = set()

    def kill(exchange: Exchange) -> None:
        if exchange.operation_id != "Blob" or (killed and not every):
            return
        if len(h.cv.calls_to("Blob")) >= blobs:
            for pid in children():
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)

    h.cv.hooks.append(kill)
    return killed


def image_of(blob_path: str) -> str:
    """Return the image id of an original's blob path (/blob/i-<project>/o-<image hex>)."""
    return str(uuid.UUID(blob_path.rsplit("/o-", 1)[1][:32]))


def test_export_resumes_after_its_download_process_is_killed(big: Harness) -> None:
    h = big
    p = h.p
    killed = kill_download_process_at(h, 100)
    record = h.submit(f"export images {p}", run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    with pytest.raises(FetcherLost, match="was killed by signal 9 before the export was done"):
        h.runner.run_one(job)  # a JobRetry: the worker runs it again (test_runner_retries...)
    assert len(killed) == 1 and children() == {}
    assert h.store.get(record.number).status == "running"
    state = h.work_dir / record.id / CACHE_DIR / "state.jsonl"
    recorded = {json.loads(line)["key"] for line in state.read_text().splitlines()}
    first = h.blob_paths()
    assert len(recorded) >= 64 and len(first) < len(h.cv.data.image_ids(p))

    again = h.store.job(job.id)
    assert again is not None
    h.runner.run_one(again)
    record = h.store.get(record.number)
    assert record.status == "done", record.error
    assert children() == {}
    pkg = h.package(record)
    lines = pkg.lines("images.jsonl")
    assert [li["image"]["id"] for li in lines] == [i["id"] for i in h.api(p)]
    assert all(li["file"] for li in lines)
    assert_image_files(h, pkg)
    twice = {image_of(path) for path, n in h.blob_paths().items() if n > 1}
    assert sum(h.blob_paths().values()) == len(lines) + len(twice)
    # Downloaded again: only those the process had not answered yet, none that was recorded.
    assert not twice & {key.split(":", 1)[1] for key in recorded}
    assert len(twice) <= len(first) - len(recorded)


def test_runner_runs_an_export_again_when_its_download_process_dies(big: Harness) -> None:
    h = big
    killed = kill_download_process_at(h, 50)
    record = h.submit(f"export images {h.p}", run=False)
    h.runner.start()
    try:
        deadline = time.monotonic() + 60
        while h.store.get(record.number).status != "done" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        h.runner.stop()
    record = h.store.get(record.number)
    assert record.status == "done", record.error
    assert len(killed) == 1 and children() == {}
    pkg = h.package(record)
    assert len(pkg.names("images/")) == len(h.cv.data.image_ids(h.p))
    assert_image_files(h, pkg)


def test_export_fails_saying_how_to_resume_when_its_download_process_keeps_dying(
    big: Harness,
) -> None:
    h = big
    killed = kill_download_process_at(h, 1, every=True)
    record = h.submit(f"export images {h.p}", run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    for _ in range(MAX_LOSSES - 1):
        with pytest.raises(FetcherLost):
            h.runner.run_one(job)
        job = h.store.job(job.id)
        assert job is not None
    h.runner.run_one(job)
    record = h.store.get(record.number)
    assert record.status == "failed"
    assert record.error == (
        "The export's download process stopped 3 times in a row without progress (last: it "
        "was killed by signal 9 before the export was done). The 0 files settled so far are "
        f"kept: `/cv retry {record.id}` continues where it stopped."
    )
    assert len(killed) == MAX_LOSSES and children() == {}


# -- links that age (issue 15) -------------------------------------------------------------------

DAY = 86_400.0


def age_links_at_first_download(h: Harness, operation: str = "Blob") -> list[int]:
    """Once, when the first file download arrives, move the emulator a day and more on: every
    link listed so far has expired (storage answers 403). Return a list that records it."""
    fired: list[int] = []

    def age(exchange: Exchange) -> None:
        if exchange.operation_id == operation and not fired:
            fired.append(1)
            h.cv.data.travel(DAY + 60)

    h.cv.hooks.insert(0, age)
    return fired


@pytest.mark.parametrize(
    ("command", "files", "after"),
    [
        ("export images {p}", "images/", "Blob"),
        ("export images {p} --iteration {i}", "images/", "Blob"),
        ("export predictions {p}", "images/predictions/", "Blob"),
        ("export exports {p} {i} --download", "models/", "GetExports"),
    ],
)
def test_export_renews_links_that_expired_before_their_download(
    harness: Harness, command: str, files: str, after: str
) -> None:
    h = harness
    p = h.p
    fired = age_links_at_first_download(h, after)
    record, pkg = h.done(command.format(p=p, i=h.cv.data.iteration_ids(p)[0]))
    assert fired == [1]
    expired = [c for c in h.cv.calls_to("Blob") if c.status == 403]
    assert expired, "no link expired: the test did not test anything"
    assert pkg.names(files) and all(pkg.files[n] for n in pkg.names(files))
    assert record.result is not None
    assert "files_missing" not in record.result["counts"]


def test_export_renews_image_links_in_batches_of_256(tmp_path: Path) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=600, predictions=0, image_bytes=128)
    for h in make_harness(tmp_path, seed=seed):
        p = h.p
        age_links_at_first_download(h)
        _, pkg = h.done(f"export images {p}")
        images = len(h.cv.data.image_ids(p))
        assert len(pkg.names("images/")) == images
        renewals = h.cv.calls_to("GetImagesByIds")
        refused = [c for c in h.cv.calls_to("Blob") if c.status == 403]
        # One renewal serves every file waiting for download, not one call per link; and
        # once renewed, the others use their fresh link without failing first.
        assert renewals and len(renewals) <= images // 8, len(renewals)
        assert len(refused) <= images // 8, len(refused)
        assert all(len(c.query["imageIds"].split(",")) <= 256 for c in renewals)


def test_resumed_export_renews_links_that_aged_meanwhile(big: Harness) -> None:
    h = big
    p = h.p
    h.handler[0] = stop_when(lambda cp: cp.get("files_done", 0) >= 64)
    record = h.submit(f"export images {p}", run=False)
    job = h.store.claim_job("test-worker", timedelta(minutes=5))
    assert job is not None
    h.runner.run_one(job)
    assert h.store.get(record.number).status == "running"
    h.cv.data.travel(2 * DAY)  # the bot was down for two days
    fired = age_links_at_first_download(h)  # and the links of the resumed listing age too
    h.handler[0] = run_export
    h.run_jobs()
    record = h.store.get(record.number)
    assert record.status == "done", record.error
    assert fired == [1] and any(c.status == 403 for c in h.cv.calls_to("Blob"))
    pkg = h.package(record)
    assert len(pkg.names("images/")) == len(h.cv.data.image_ids(p))


# -- the quota 403 (issue 15) --------------------------------------------------------------------


def test_export_fails_at_once_when_the_quota_is_used_up_and_says_when_it_resets(
    harness: Harness,
) -> None:
    h = harness
    h.cv.faults.quota_exhausted = 2 * DAY + 3 * 3600 + 14 * 60 + 7
    record = h.submit(f"export images {h.p}")
    assert record.status == "failed"
    assert record.error == (
        "Custom Vision's call volume quota for this resource is used up (HTTP 403 on "
        "GetProject): it is replenished in 2 days 3 hours 15 minutes. Nothing more was sent; "
        "try again after that."
    )
    assert len(h.cv.calls) == 1  # no retries: they would only burn time and log noise


# -- queued model exports (issue 15) -------------------------------------------------------------


def test_export_download_waits_for_a_queued_model_export(harness: Harness) -> None:
    h = harness
    p = h.p
    iteration = h.cv.data.iteration_ids(p)[0]
    h.cv.data.add_export(p, iteration, "ONNX", "ONNX12", status="Exporting", ready_after=0.3)
    record, pkg = h.done(f"export exports {p} {iteration} --download")
    assert sorted(pkg.names("models/")) == [
        f"models/{iteration}/ONNX-ONNX12.zip",
        f"models/{iteration}/TensorFlow-TensorFlowNormal.zip",
    ]
    assert record.result is not None
    assert record.result["counts"]["model_files"] == 2
    listed = pkg.json("exports.json")[iteration]
    assert {e["platform"]: e["status"] for e in listed} == {"TensorFlow": "Done", "ONNX": "Done"}


def test_export_download_waits_bounded_and_lists_what_is_still_exporting(
    harness: Harness,
) -> None:
    h = harness
    p = h.p
    iteration = h.cv.data.iteration_ids(p)[0]
    h.cv.data.add_export(p, iteration, "ONNX", "ONNX12", status="Exporting")  # never finishes
    h.handler[0] = partial(run_export, export_wait=0.3)
    record, pkg = h.done(f"export exports {p} {iteration} --download")
    assert pkg.names("models/") == {f"models/{iteration}/TensorFlow-TensorFlowNormal.zip"}
    assert f"Model export ONNX (ONNX12) of iteration {iteration} is still Exporting" in "\n".join(
        pkg.manifest["notes"]
    )
    assert record.result is not None
    assert record.result["counts"]["models_exporting"] == 1
    assert h.events(record.number, "request.completed")
    assert not [c for c in h.cv.calls_to("Blob") if "ONNX" in c.path]
    assert len(h.cv.calls_to("GetExports")) >= 2  # it asked again before giving up
    message = h.store.get(record.number)
    assert message.status == "done"
