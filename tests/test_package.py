from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import threading
import tracemalloc
import zipfile
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.clock import FakeClock
from bot.deadline import deadline_of
from bot.package import (
    MIN_PART_BYTES,
    SIGNED_LINKS_NOTE,
    FileEntry,
    PackageInfo,
    PackageWriter,
    Part,
    Plan,
    check_arcname,
    image_path,
    model_path,
    part_name,
    performance_path,
    plan_entry,
    prediction_image_path,
    project_path,
    safe_name,
    unsigned,
)

START = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
REASON = "Auskunft nach Art. 15 DSGVO \u2013 \u201cbitte vollst\u00e4ndig\u201d"  # en dash, quotes
IMAGE = "1b7e6a80-3e2f-4f6a-9c1d-0a1b2c3d4e5f"
ITERATION = "9f0e1d2c-3b4a-5968-7a8b-9c0d1e2f3a4b"
PROJECT = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"

INFO = PackageInfo(
    request_id="R-1042",
    requester="Zoë Müller (U0ZOE)",
    ticket="DSR-7 ✓",
    reason=REASON,
    scope="export project 0a1b2c3d… with images",
    endpoint_host="westeurope.api.cognitive.microsoft.com",
    api_version="v3.3",
    started_at=START,
    deadline=deadline_of(date(2026, 10, 29)),  # due 2026-11-30 (29 Nov is a Sunday)
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def writer(
    work: Path, limit: int = 100 * 1024 * 1024, clock: FakeClock | None = None
) -> PackageWriter:
    clock = clock or FakeClock(START)
    return PackageWriter(work / "R-1042", INFO, max_part_bytes=limit, clock=clock.now)


def source(pkg: PackageWriter, data: bytes, name: str = "src") -> Path:
    path = pkg.temp_dir / f"{name}-{sha(data)[:12]}-{random.random()}"
    path.write_bytes(data)
    return path


def random_bytes(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


def manifest_of(parts: list[Part]) -> dict[str, Any]:
    with zipfile.ZipFile(parts[-1].path) as zf:
        if "manifest.json" in zf.namelist():
            manifest = json.loads(zf.read("manifest.json"))
        else:
            pieces = sorted(n for p in parts for n in p.entries if n.startswith("manifest.json."))
            manifest = json.loads(b"".join(member(parts, n) for n in pieces))
    assert isinstance(manifest, dict)
    return manifest


def member(parts: list[Part], name: str) -> bytes:
    for part in parts:
        if name in part.entries:
            with zipfile.ZipFile(part.path) as zf:
                return zf.read(name)
    raise KeyError(name)


def contents(parts: list[Part]) -> dict[str, bytes]:
    """Every logical file of the package, split files rejoined."""
    files = {f["name"]: f for f in manifest_of(parts)["files"]}
    out = {}
    for name, meta in files.items():
        if "chunks" in meta:
            out[name] = b"".join(member(parts, c["name"]) for c in meta["chunks"])
        else:
            out[name] = member(parts, name)
    return out


def check_parts(parts: list[Part], limit: int) -> None:
    """Every part is a valid standalone zip within the limit, as Part describes it."""
    total = len(parts)
    for number, part in enumerate(parts, 1):
        assert part.index == number
        assert part.path.name == part_name("R-1042", number, total)
        data = part.path.read_bytes()
        assert part.size == len(data) <= limit
        assert part.sha256 == sha(data)
        with zipfile.ZipFile(part.path) as zf:
            assert zf.testzip() is None
            assert tuple(zf.namelist()) == part.entries


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("../../x", "x"),
        ("/etc/passwd", "etc_passwd"),
        ("a\\b", "a_b"),
        ("", "fallback"),
        (".", "fallback"),
        ("..", "fallback"),
        ("...hidden", "hidden"),
        ("a..b", "a.b"),
        ("Größe 📷", "Gr_e"),
        ("📷", "fallback"),
        ("\uff21\uff22\uff23", "ABC"),  # full-width letters
        ("tag name/with slash", "tag_name_with_slash"),
        ("x\x00y", "x_y"),
        ("-rf", "rf"),
        ("con", "_con"),
        ("nul.json", "_nul.json"),
        ("keep.Me-1_2", "keep.Me-1_2"),
        ("a" * 100, "a" * 80),
        ("b" * 79 + "/c", "b" * 79),
    ],
)
def test_safe_name_table(text: str, expected: str) -> None:
    name = safe_name(text, "fallback")
    assert name == expected
    assert check_arcname(name) == name


def test_safe_name_raises_when_fallback_is_unsafe_too() -> None:
    with pytest.raises(ValueError, match="no safe name"):
        safe_name("..", "/")


@pytest.mark.parametrize(
    "name",
    [
        "../../x",
        "../x",
        "a/../b",
        "a/./b",
        "/etc/passwd",
        "a\\b",
        "",
        ".",
        "..",
        "a//b",
        "a/",
        "x\x00y",
        "C:/x",
        "Größe.json",
        ".hidden",
        "images/.git/config",
        "a" * 101,
        "/".join(["abc"] * 120),
    ],
)
def test_check_arcname_rejects(name: str) -> None:
    with pytest.raises(ValueError):
        check_arcname(name)


@pytest.mark.parametrize(
    "name",
    ["projects.json", f"images/workspace/{IMAGE}.png", f"performance/{ITERATION}.json", "a-b_c.d"],
)
def test_check_arcname_accepts(name: str) -> None:
    assert check_arcname(name) == name


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (image_path(IMAGE.upper(), None, ".JPG"), f"images/workspace/{IMAGE}.jpg"),
        (image_path(IMAGE, ITERATION, "png"), f"images/iterations/{ITERATION}/{IMAGE}.png"),
        (image_path("../../x", None, "png"), "images/workspace/x.png"),
        (image_path(IMAGE, None, "p/n g"), f"images/workspace/{IMAGE}.bin"),
        (image_path(IMAGE, None, ""), f"images/workspace/{IMAGE}.bin"),
        (prediction_image_path(IMAGE, "jpeg"), f"images/predictions/{IMAGE}.jpeg"),
        (performance_path(ITERATION.upper()), f"performance/{ITERATION}.json"),
        (
            model_path(ITERATION, "ONNX", "ONNXFloat16", "zip"),
            f"models/{ITERATION}/ONNX-ONNXFloat16.zip",
        ),
        (
            model_path(ITERATION, "../TensorFlow", None, ".zip"),
            f"models/{ITERATION}/TensorFlow.zip",
        ),
        (project_path(PROJECT, "tags.json"), f"projects/{PROJECT}/tags.json"),
        (part_name("R-1", 1, 1), "R-1-export.zip"),
        (part_name("R-1", 3, 12), "R-1-export-part03-of-12.zip"),
        (part_name("R-1", 7, 120), "R-1-export-part007-of-120.zip"),
    ],
)
def test_layout_paths(path: str, expected: str) -> None:
    assert path == expected


def test_project_path_rejects_an_unsafe_name() -> None:
    with pytest.raises(ValueError):
        project_path(PROJECT, "../x.json")


# --- planning -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "deflate", "used", "expected"),
    [
        (1000, False, 0, Plan(False, (1000,))),
        (1000, False, 40_000, Plan(False, (1000,))),
        (20_000, False, 40_000, Plan(True, (20_000,))),
        (0, True, 49_000, Plan(False, (0,))),
    ],
)
def test_plan_entry_whole(size: int, deflate: bool, used: int, expected: Plan) -> None:
    assert plan_entry(20, size, deflate, used, 50_000) == expected


@pytest.mark.parametrize(
    ("size", "deflate", "used", "new_first"),
    [
        (200_000, False, 0, False),
        (200_000, True, 0, False),
        (200_000, False, 10_000, False),
        (200_000, False, 45_000, True),
        (5_000_000, False, 0, False),
    ],
)
def test_plan_entry_splits_what_no_part_holds(
    size: int, deflate: bool, used: int, new_first: bool
) -> None:
    plan = plan_entry(20, size, deflate, used, 50_000)
    assert plan.split
    assert plan.new_part_first is new_first
    assert sum(plan.pieces) == size
    assert plan.width == max(3, len(str(len(plan.pieces))))

    def bound(n: int) -> int:
        return n + (n >> 10) + 64 if deflate else n

    first_room = 50_000 - (0 if new_first else used)
    assert all(bound(p) < 50_000 for p in plan.pieces)
    assert bound(plan.pieces[0]) < first_room


# --- the writer -----------------------------------------------------------------------------


def full_package(pkg: PackageWriter, rng: random.Random) -> dict[str, bytes]:
    """Add one file of every kind; return the bytes expected for the binary ones."""
    pkg.write_json("projects.json", [{"id": PROJECT, "name": "Größe 📷", "b": 1, "a": 2}])
    pkg.write_json("iterations.json", [{"id": ITERATION, "publishName": "prod-1"}])
    pkg.write_json(performance_path(ITERATION), {"precision": 0.5, "perTagPerformance": []})
    pkg.write_json("tags.json", [{"id": "t", "name": "../../x"}])
    pkg.write_json("exports.json", [])
    with pkg.jsonl("images.jsonl") as images:
        images.write({"iteration": None, "image": {"id": IMAGE, "metadata": {"k": "ü"}}})
        images.write({"iteration": ITERATION, "image": {"id": IMAGE}})
    with pkg.jsonl("predictions.jsonl") as predictions:
        pass
    assert (images.count, predictions.count) == (2, 0)
    binary = {
        image_path(IMAGE, None, "png"): random_bytes(rng, 3000),
        image_path("2b7e6a80-3e2f-4f6a-9c1d-0a1b2c3d4e5f", ITERATION, "jpg"): random_bytes(
            rng, 2000
        ),
        model_path(ITERATION, "ONNX", None, "zip"): random_bytes(rng, 5000),
    }
    for name, data in binary.items():
        src = source(pkg, data)
        entry = pkg.add_file(name, src)
        assert entry == FileEntry(name, len(data), sha(data), 1)
        assert not src.exists()
    pkg.count("images.workspace", 1)
    pkg.count("images.iteration." + ITERATION, 2)
    pkg.count("images.workspace", 7)  # last call wins
    pkg.note("Account keys live in the Azure portal; they are not part of this package.")
    return binary


def test_package_layout_and_manifest(tmp_path: Path) -> None:
    clock = FakeClock(START)
    rng = random.Random(1)
    with writer(tmp_path, clock=clock) as pkg:
        binary = full_package(pkg, rng)
        clock.advance(minutes=5)
        parts = pkg.finish()

    assert [p.path for p in parts] == [tmp_path / "R-1042" / "R-1042-export.zip"]
    check_parts(parts, 100 * 1024 * 1024)
    names = [
        "projects.json",
        "iterations.json",
        f"performance/{ITERATION}.json",
        "tags.json",
        "exports.json",
        "images.jsonl",
        "predictions.jsonl",
        *binary,
        "README.txt",
        "manifest.json",
    ]
    assert parts[0].entries == tuple(names)

    manifest = manifest_of(parts)
    files = manifest.pop("files")
    assert manifest == {
        "format": "cv-dsr-bot export",
        "format_version": 1,
        "request": {
            "id": "R-1042",
            "requester": "Zoë Müller (U0ZOE)",
            "ticket": "DSR-7 ✓",
            "reason": REASON,
            "scope": "export project 0a1b2c3d… with images",
            "received": "2026-10-29",
            "due": "2026-11-30",
            "extended_to": None,
            "clock": "received 2026-10-29 · due 2026-11-30 (in 3 days)",
        },
        "source": {
            "endpoint_host": "westeurope.api.cognitive.microsoft.com",
            "api_version": "v3.3",
        },
        "started_at": "2026-11-27T09:00:00.000000Z",
        "finished_at": "2026-11-27T09:05:00.000000Z",
        "counts": {"images.iteration." + ITERATION: 2, "images.workspace": 7},
        "notes": ["Account keys live in the Azure portal; they are not part of this package."],
        "parts": [{"index": 1, "name": "R-1042-export.zip", "size": None}],
        "parts_note": (
            "Unzip every part into the same folder. A part's SHA-256 cannot be written inside "
            "it, nor the size of a part holding this manifest (null here): they were posted "
            "with the upload."
        ),
        "links_note": SIGNED_LINKS_NOTE,
    }
    assert [f["name"] for f in files] == sorted(set(names) - {"manifest.json"})

    with zipfile.ZipFile(parts[0].path) as zf:
        for meta in files:
            data = zf.read(meta["name"])
            assert meta == {
                "name": meta["name"],
                "size": len(data),
                "sha256": sha(data),
                "part": 1,
            }
        for name, data in binary.items():
            assert zf.read(name) == data
            assert zf.getinfo(name).compress_type == zipfile.ZIP_STORED
        for info in zf.infolist():
            if info.filename.endswith((".json", ".jsonl", ".txt")):
                assert info.compress_type == zipfile.ZIP_DEFLATED
        assert {i.date_time for i in zf.infolist()} == {
            (2026, 11, 27, 9, 0, 0),
            (2026, 11, 27, 9, 5, 0),
        }
        projects = json.loads(zf.read("projects.json"))
        assert list(projects[0]) == ["id", "name", "b", "a"]  # API order kept
        assert [json.loads(line) for line in zf.read("images.jsonl").splitlines()] == [
            {"iteration": None, "image": {"id": IMAGE, "metadata": {"k": "ü"}}},
            {"iteration": ITERATION, "image": {"id": IMAGE}},
        ]
        assert zf.read("predictions.jsonl") == b""
        readme = zf.read("README.txt").decode("utf-8")

    for line in [
        "Custom Vision data export, request R-1042",
        "Requested by: Zoë Müller (U0ZOE)",
        "Ticket:       DSR-7 ✓",
        f"Reason:       {REASON}",
        "Scope:        export project 0a1b2c3d… with images",
        "Deadline:     received 2026-10-29 · due 2026-11-30 (in 3 days)",
        "Source:       westeurope.api.cognitive.microsoft.com, Custom Vision Training API v3.3",
        "Started:      2026-11-27 09:00:00 UTC",
        "Finished:     2026-11-27 09:05:00 UTC",
        "manifest.json",
        "README.txt",
        "projects.json",
        "iterations.json",
        "performance/<iteration-id>.json  (1 file)",
        "tags.json",
        "exports.json",
        "images.jsonl",
        "predictions.jsonl",
        "images/workspace/<image-id>.<ext>  (1 file)",
        "images/iterations/<iteration-id>/<image-id>.<ext>  (1 file)",
        "models/<iteration-id>/<platform>[-<flavor>].<ext>  (1 file)",
        "- Account keys live in the Azure portal; they are not part of this package.",
    ]:
        assert line in readme.splitlines()
    assert not (tmp_path / "R-1042" / ".package" / "tmp").exists()


def test_package_text_files_are_utf8_with_non_ascii(tmp_path: Path) -> None:
    with writer(tmp_path) as pkg:
        pkg.write_json("tags.json", [{"name": "Größe 📷"}])
        with pkg.jsonl("images.jsonl") as lines:
            lines.write({"metadata": {"名前": "ü"}})
        pkg.note("Schlüssel: im Azure-Portal")
        parts = pkg.finish()
    with zipfile.ZipFile(parts[0].path) as zf:
        raw = {name: zf.read(name) for name in zf.namelist()}
    assert "Größe 📷".encode() in raw["tags.json"]
    assert '{"metadata":{"名前":"ü"}}\n'.encode() == raw["images.jsonl"]
    for name in ("manifest.json", "README.txt"):
        text = raw[name].decode("utf-8")
        assert "Zoë Müller" in text
        assert "Schlüssel: im Azure-Portal" in text
        assert "\\u" not in text


def test_package_empty_export_has_readme_and_manifest(tmp_path: Path) -> None:
    with writer(tmp_path) as pkg:
        parts = pkg.finish()
    assert parts[0].entries == ("README.txt", "manifest.json")
    assert [f["name"] for f in manifest_of(parts)["files"]] == ["README.txt"]


def test_package_splits_across_parts_within_the_limit(tmp_path: Path) -> None:
    limit = 50_000
    rng = random.Random(2)
    expected: dict[str, bytes] = {}
    with writer(tmp_path, limit) as pkg:
        for number in range(40):
            data = random_bytes(rng, rng.randrange(0, 20_000))
            name = f"images/workspace/{number:08d}-0000-4000-8000-000000000000.png"
            expected[name] = data
            pkg.add_file(name, source(pkg, data))
        with pkg.jsonl("images.jsonl") as lines:
            for number in range(300):
                lines.write({"n": number, "text": "ü" * rng.randrange(50)})
        parts = pkg.finish()

    assert len(parts) >= 5
    check_parts(parts, limit)
    manifest = manifest_of(parts)
    assert "manifest.json" in parts[-1].entries
    assert "README.txt" in parts[-1].entries
    assert [p["size"] for p in manifest["parts"]] == [p.size for p in parts[:-1]] + [None]
    assert [p["name"] for p in manifest["parts"]] == [p.path.name for p in parts]
    for meta in manifest["files"]:
        holder = parts[meta["part"] - 1]
        first = meta["chunks"][0]["name"] if "chunks" in meta else meta["name"]
        assert first in holder.entries
    got = contents(parts)
    for name, data in expected.items():
        assert got[name] == data
    files = {f["name"]: f for f in manifest["files"]}
    for name, data in got.items():
        assert (files[name]["size"], files[name]["sha256"]) == (len(data), sha(data))


@pytest.mark.parametrize("name", ["models/x/ONNX.zip", "images.jsonl"])
def test_package_oversized_entry_is_split_and_rejoins(tmp_path: Path, name: str) -> None:
    limit = 50_000
    rng = random.Random(3)
    if name.endswith(".jsonl"):
        data = "".join(json.dumps({"n": i, "r": rng.random()}) + "\n" for i in range(5000))
        original = data.encode()
    else:
        original = random_bytes(rng, 180_000)
    with writer(tmp_path, limit) as pkg:
        pkg.add_file("small.json", source(pkg, b"[1]"))
        entry = pkg.add_file(name, source(pkg, original))
        parts = pkg.finish()

    check_parts(parts, limit)
    assert (entry.name, entry.size, entry.sha256) == (name, len(original), sha(original))
    pieces = [c.name for c in entry.chunks]
    assert len(pieces) >= 3
    assert pieces == [f"{name}.{n:03d}" for n in range(1, len(pieces) + 1)]
    assert [c.part for c in entry.chunks] == list(
        range(entry.chunks[0].part, entry.chunks[0].part + len(pieces))
    )
    assert entry.part == entry.chunks[0].part
    assert entry.rejoin == f"cat {' '.join(pieces)} > {name}"
    for chunk in entry.chunks:
        piece = member(parts, chunk.name)
        assert (len(piece), sha(piece)) == (chunk.size, chunk.sha256)
    files = {f["name"]: f for f in manifest_of(parts)["files"]}
    assert files[name] == entry.to_dict()
    assert entry.rejoin is not None
    assert f"    {entry.rejoin}" in member(parts, "README.txt").decode().splitlines()

    # What the README tells the data subject to do works.
    out = tmp_path / "unzipped"
    for part in parts:
        with zipfile.ZipFile(part.path) as zf:
            zf.extractall(out)
    subprocess.run(["sh", "-c", entry.rejoin], cwd=out, check=True)
    assert (out / name).read_bytes() == original


def test_package_manifest_itself_splits_when_it_outgrows_a_part(tmp_path: Path) -> None:
    limit = MIN_PART_BYTES
    with writer(tmp_path, limit) as pkg:
        for number in range(150):
            pkg.add_file(f"images/workspace/{number:036d}.png", source(pkg, b"x" * 10))
        parts = pkg.finish()
    check_parts(parts, limit)
    pieces = [n for p in parts for n in p.entries if n.startswith("manifest.json.")]
    assert len(pieces) >= 2
    assert parts[-1].entries[-1] == pieces[-1]
    manifest = manifest_of(parts)
    assert [p["name"] for p in manifest["parts"]] == [p.path.name for p in parts]
    assert len(manifest["files"]) == 151


def test_package_concurrent_add_file_from_8_threads(tmp_path: Path) -> None:
    limit = 200_000
    expected: dict[str, bytes] = {}
    errors: list[BaseException] = []
    with writer(tmp_path, limit) as pkg:
        lines = pkg.jsonl("images.jsonl")

        def work(thread: int) -> None:
            rng = random.Random(thread)
            try:
                for number in range(25):
                    data = random_bytes(rng, rng.randrange(1, 30_000))
                    name = f"images/workspace/{thread:04d}{number:04d}-0000-4000-8000-{0:012d}.png"
                    src = pkg.temp_dir / f"{thread}-{number}"
                    src.write_bytes(data)
                    entry = pkg.add_file(name, src)
                    assert entry.sha256 == sha(data)
                    lines.write({"thread": thread, "number": number})
                    expected[name] = data
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        lines.close()
        parts = pkg.finish()

    assert errors == []
    assert lines.count == 200
    check_parts(parts, limit)
    got = contents(parts)
    assert set(got) == {*expected, "images.jsonl", "README.txt"}
    for name, data in expected.items():
        assert got[name] == data
    written = [json.loads(line) for line in got["images.jsonl"].splitlines()]
    assert sorted((w["thread"], w["number"]) for w in written) == [
        (t, n) for t in range(8) for n in range(25)
    ]
    all_entries = [n for p in parts for n in p.entries]
    assert len(all_entries) == len(set(all_entries))


def test_package_memory_stays_flat(tmp_path: Path) -> None:
    limit = 8 * 1024 * 1024
    rng = random.Random(4)
    staged = tmp_path / "staged"
    staged.mkdir()
    sizes = [2 * 1024 * 1024] * 19 + [12 * 1024 * 1024]  # 50 MB, one file bigger than a part
    for number, size in enumerate(sizes):
        with (staged / str(number)).open("wb") as f:
            for _ in range(size // (1024 * 1024)):
                f.write(rng.randbytes(1024 * 1024))

    tracemalloc.start()
    try:
        with writer(tmp_path, limit) as pkg:
            for number in range(len(sizes)):
                pkg.add_file(f"models/m/{number}.bin", staged / str(number))
            with pkg.jsonl("images.jsonl") as lines:
                for number in range(20_000):
                    lines.write({"n": number, "tags": ["a", "b"]})
            parts = pkg.finish()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 4 * 1024 * 1024
    assert sum(p.size for p in parts) > 50 * 1024 * 1024
    check_parts(parts, limit)


# --- names in the writer --------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../../x", "/etc/passwd", "a\\b", "", ".", "..", "Größe.json", "tags/../../x.json"]
)
def test_package_rejects_unsafe_names(tmp_path: Path, name: str) -> None:
    with writer(tmp_path) as pkg:
        src = source(pkg, b"data")
        with pytest.raises(ValueError):
            pkg.add_file(name, src)
        with pytest.raises(ValueError):
            pkg.write_json(name, {})
        with pytest.raises(ValueError):
            pkg.jsonl(name)
        with pytest.raises(ValueError):
            pkg.has(name)
        assert src.read_bytes() == b"data"
        parts = pkg.finish()
    assert parts[0].entries == ("README.txt", "manifest.json")


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        ("projects.json", "projects.json", "already in the package"),
        ("projects.json", "PROJECTS.json", "already in the package"),
        ("a", "a/b.json", "inside a file"),
        ("a/b.json", "a", "already in the package"),
        ("big.bin.001", "manifest.json", "reserved"),
        ("x.json", "README.txt", "reserved"),
        ("x.json", "manifest.json.001", "reserved"),
    ],
)
def test_package_rejects_duplicate_and_reserved_names(
    tmp_path: Path, first: str, second: str, message: str
) -> None:
    with writer(tmp_path) as pkg:
        pkg.add_file(first, source(pkg, b"1"))
        src = source(pkg, b"2")
        with pytest.raises(ValueError, match=message):
            pkg.add_file(second, src)
        assert src.exists()
        assert pkg.has(first)
        pkg.finish()


def test_package_piece_names_cannot_collide(tmp_path: Path) -> None:
    with writer(tmp_path, 50_000) as pkg:
        pkg.add_file("big.bin.002", source(pkg, b"1"))
        with pytest.raises(ValueError, match="already in the package"):
            pkg.add_file("big.bin", source(pkg, os.urandom(120_000)))
        assert not pkg.has("big.bin")
        pkg.add_file("big.bin", source(pkg, b"small enough"))
        parts = pkg.finish()
    assert contents(parts)["big.bin"] == b"small enough"


# --- jsonl, lifecycle -----------------------------------------------------------------------


def test_package_jsonl_discarded_on_error(tmp_path: Path) -> None:
    with writer(tmp_path) as pkg:
        with pytest.raises(RuntimeError, match="listing failed"), pkg.jsonl("x.jsonl") as lines:
            lines.write({"n": 1})
            raise RuntimeError("listing failed")
        assert not pkg.has("x.jsonl")
        with pkg.jsonl("x.jsonl") as lines:
            with pytest.raises(TypeError):
                lines.write({"when": datetime(2026, 1, 1, tzinfo=UTC)})
            lines.write({"n": 2})
        assert lines.entry is not None
        assert pkg.has("x.jsonl")
        parts = pkg.finish()
    assert contents(parts)["x.jsonl"] == b'{"n":2}\n'


@pytest.mark.parametrize("limit", [100 * 1024 * 1024, 300_000, 40_000])
def test_package_jsonl_deflated_as_written_makes_the_same_zip_bytes(
    tmp_path: Path, limit: int
) -> None:
    # The listing is deflated line by line while it is written; its zip data must be what
    # zipfile writes from the whole file: the same parts, byte for byte. (Whole in one part, in
    # the next part, and cut into pieces, which are deflated from the file as before.)
    rng = random.Random(7)
    records = [
        {"n": n, "text": "x" * rng.randrange(0, 900), "name": f"Zoë {rng.random()}"}
        for n in range(2_000)
    ]
    data = b"".join(
        json.dumps(r, ensure_ascii=False, separators=(",", ":")).encode() + b"\n" for r in records
    )
    first = random_bytes(rng, limit // 2)
    parts: dict[str, list[Part]] = {}
    for how in ("streamed", "file"):
        with writer(tmp_path / how, limit) as pkg:
            pkg.add_file("first.bin", source(pkg, first))
            if how == "streamed":
                with pkg.jsonl("images.jsonl") as lines:
                    for record in records:
                        lines.write(record)
            else:
                pkg.add_file("images.jsonl", source(pkg, data))
            parts[how] = pkg.finish()
    streamed, whole = ([p.path.read_bytes() for p in parts[how]] for how in ("streamed", "file"))
    assert len(streamed) == len(whole) >= (1 if limit > 1_000_000 else 2)
    assert streamed == whole
    check_parts(parts["streamed"], limit)
    assert contents(parts["streamed"])["images.jsonl"] == data


def test_package_finish_refuses_an_open_jsonl(tmp_path: Path) -> None:
    with writer(tmp_path) as pkg:
        lines = pkg.jsonl("images.jsonl")
        with pytest.raises(RuntimeError, match=r"still open: images\.jsonl"):
            pkg.finish()
        lines.close()
        pkg.finish()


def test_package_closed_writer_refuses_adds(tmp_path: Path) -> None:
    pkg = writer(tmp_path)
    pkg.close()
    with pytest.raises(RuntimeError, match="closed"):
        pkg.write_json("x.json", {})
    with pytest.raises(RuntimeError, match="closed"):
        pkg.finish()


@pytest.mark.parametrize(
    ("limit", "request_id", "message"),
    [
        (MIN_PART_BYTES - 1, "R-1042", "at least"),
        (MIN_PART_BYTES, "../R-1", "not a safe file name"),
    ],
)
def test_package_writer_rejects_bad_settings(
    tmp_path: Path, limit: int, request_id: str, message: str
) -> None:
    info = PackageInfo(**{**INFO.__dict__, "request_id": request_id})
    with pytest.raises(ValueError, match=message):
        PackageWriter(tmp_path, info, max_part_bytes=limit, clock=FakeClock().now)


# --- resume ---------------------------------------------------------------------------------


def journal(tmp_path: Path) -> Path:
    return tmp_path / "R-1042" / ".package" / "journal.jsonl"


def drop_last_part_record(tmp_path: Path) -> None:
    lines = journal(tmp_path).read_text().splitlines(keepends=True)
    last = max(i for i, line in enumerate(lines) if json.loads(line)["type"] == "part")
    journal(tmp_path).write_text("".join(lines[:last] + lines[last + 1 :]))


def test_package_resume_keeps_closed_parts(tmp_path: Path) -> None:
    limit = 50_000
    rng = random.Random(5)
    first = {f"images/workspace/{n:036d}.png": random_bytes(rng, 15_000) for n in range(6)}
    with pytest.raises(KeyboardInterrupt), writer(tmp_path, limit) as pkg:
        for name, data in first.items():
            pkg.add_file(name, source(pkg, data))
        pkg.count("images.workspace", 12)
        pkg.note("resumed once")
        raise KeyboardInterrupt  # the job stops at a checkpoint

    second = {f"images/workspace/{n:036d}.png": random_bytes(rng, 15_000) for n in range(6, 12)}
    with writer(tmp_path, limit) as pkg:
        assert all(pkg.has(name) for name in first)
        assert not pkg.has(next(iter(second)))
        with pytest.raises(ValueError, match="already in the package"):
            pkg.add_file(next(iter(first)), source(pkg, b"again"))
        for name, data in second.items():
            pkg.add_file(name, source(pkg, data))
        pkg.note("resumed once")
        parts = pkg.finish()

    check_parts(parts, limit)
    manifest = manifest_of(parts)
    assert manifest["counts"] == {"images.workspace": 12}
    assert manifest["notes"] == ["resumed once"]
    got = contents(parts)
    assert got == {**first, **second, "README.txt": got["README.txt"]}


def test_package_resume_discards_what_a_crash_left_behind(tmp_path: Path) -> None:
    limit = 50_000
    with writer(tmp_path, limit) as pkg:
        pkg.add_file("a.bin", source(pkg, b"a" * 30_000))
        pkg.add_file("b.bin", source(pkg, b"b" * 30_000))  # closes part 1 (a.bin)
        pkg.add_file("c.bin", source(pkg, b"c" * 30_000))
    staging = tmp_path / "R-1042" / ".package"
    # A crash: part 3 (c.bin) was never journaled, a journal line was torn, a temp file stayed.
    drop_last_part_record(tmp_path)
    with journal(tmp_path).open("a") as f:
        f.write('{"type": "part", "ind')
    (staging / "tmp" / "download.part").write_bytes(b"half")

    with writer(tmp_path, limit) as pkg:
        assert [pkg.has(n) for n in ("a.bin", "b.bin", "c.bin")] == [True, True, False]
        assert not (staging / "part-0003.zip").exists()
        assert list((staging / "tmp").iterdir()) == []
        pkg.add_file("c.bin", source(pkg, b"C" * 30_000))
        parts = pkg.finish()
    check_parts(parts, limit)
    got = contents(parts)
    assert (got["a.bin"], got["b.bin"], got["c.bin"]) == (
        b"a" * 30_000,
        b"b" * 30_000,
        b"C" * 30_000,
    )


def test_package_resume_drops_a_file_missing_pieces(tmp_path: Path) -> None:
    limit = 50_000
    big = os.urandom(150_000)
    with writer(tmp_path, limit) as pkg:
        pkg.add_file("small.bin", source(pkg, b"s" * 10_000))
        entry = pkg.add_file("big.bin", source(pkg, big))
        pkg.add_file("after.bin", source(pkg, b"z" * 100))
    assert entry.chunks[0].part == 1
    # A crash after big.bin's first pieces were journaled but before its last one was.
    drop_last_part_record(tmp_path)
    drop_last_part_record(tmp_path)

    with writer(tmp_path, limit) as pkg:
        # Part 1 holds small.bin and big.bin.001: it goes too, the file must come whole.
        assert [pkg.has(n) for n in ("small.bin", "big.bin", "after.bin")] == [False] * 3
        assert list((tmp_path / "R-1042" / ".package").glob("part-*.zip")) == []
        pkg.add_file("small.bin", source(pkg, b"s" * 10_000))
        pkg.add_file("big.bin", source(pkg, big))
        parts = pkg.finish()
    check_parts(parts, limit)
    assert contents(parts)["big.bin"] == big


def test_package_starts_afresh_for_another_part_size(tmp_path: Path) -> None:
    with writer(tmp_path, 50_000) as pkg:
        pkg.add_file("a.bin", source(pkg, b"a"))
    with writer(tmp_path, 60_000) as pkg:
        assert not pkg.has("a.bin")
        assert pkg.finish()[0].entries == ("README.txt", "manifest.json")


def test_package_finish_is_idempotent_and_survives_a_crash_while_renaming(
    tmp_path: Path,
) -> None:
    limit = 50_000
    with writer(tmp_path, limit) as pkg:
        pkg.add_file("a.bin", source(pkg, os.urandom(40_000)))
        pkg.add_file("b.bin", source(pkg, os.urandom(40_000)))
        assert not pkg.finished
        parts = pkg.finish()
        assert pkg.finished
        assert pkg.finish() == parts
        with pytest.raises(RuntimeError, match="finished"):
            pkg.write_json("late.json", {})
    assert len(parts) == 2
    # As if the process died after journaling "finished" but before the second rename.
    os.replace(parts[1].path, tmp_path / "R-1042" / ".package" / "part-0002.zip")

    with writer(tmp_path, limit) as again:
        assert again.finished
        assert again.has("a.bin")
        assert again.finish() == parts
    check_parts(parts, limit)


def test_package_zip_times_come_from_the_clock(tmp_path: Path) -> None:
    clock = FakeClock(datetime(1970, 1, 1, tzinfo=UTC))
    with writer(tmp_path, clock=clock) as pkg:
        pkg.write_json("old.json", {})
        clock.advance(days=365 * 60)
        pkg.write_json("new.json", {})
        parts = pkg.finish()
    with zipfile.ZipFile(parts[0].path) as zf:
        assert zf.getinfo("old.json").date_time == (1980, 1, 1, 0, 0, 0)
        assert zf.getinfo("new.json").date_time[:3] == (2029, 12, 17)
    assert re.fullmatch(r"[0-9a-f]{64}", parts[0].sha256)


# --- signed links -----------------------------------------------------------------------------

SAS = (
    "sv=2020-04-08&st=2025-01-01T00%3A00%3A00Z&se=2099-01-01T00%3A00%3A00Z&sr=b&sp=r&sig=ab%2Bc%3D"
)
BLOB = "https://irisprodeuwest.blob.core.windows.net/i-0123/o-4567"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{BLOB}?{SAS}", BLOB),
        (f"{BLOB}?{SAS}#frag", BLOB),
        (f"{BLOB}?SIG=x", BLOB),  # parameter names are case-insensitive to storage
        (f"{BLOB}?comp=list&se=2099-01-01", BLOB),  # any SAS parameter, not only sig
        (f"{BLOB}?skoid=1&sktid=2&sig=x", BLOB),  # user-delegation SAS
        (f"i-0123/o-4567?{SAS}", "i-0123/o-4567"),  # relative (VNET) link with a signature
        (f"see {BLOB}?{SAS} and {BLOB}?{SAS}.", f"see {BLOB} and {BLOB}"),
        (f"https://x/r?next={BLOB}%3Fsig%3Dabc", "https://x/r"),  # encoded inside a query
        (f"https://x/r?next={BLOB}%253Fsig%253Dabc", "https://x/r"),  # encoded twice
        (f"{BLOB}?comp=list&restype=container", f"{BLOB}?comp=list&restype=container"),
        ("https://x/search?q=response", "https://x/search?q=response"),  # no SAS parameter
        ("what? who?", "what? who?"),
        ("", ""),
    ],
)
def test_unsigned_drops_the_sas_query_of_every_link(value: str, expected: str) -> None:
    assert unsigned(value) == expected


def test_unsigned_walks_every_json_value_and_keeps_the_rest() -> None:
    data = {
        "originalImageUri": f"{BLOB}?{SAS}",
        "nested": [{"downloadUri": f"{BLOB}.zip?{SAS}"}, 1, 2.5, None, True],
        f"{BLOB}?{SAS}": "a key too",
        "tuple": (f"{BLOB}?{SAS}",),
    }
    assert unsigned(data) == {
        "originalImageUri": BLOB,
        "nested": [{"downloadUri": f"{BLOB}.zip"}, 1, 2.5, None, True],
        BLOB: "a key too",
        "tuple": [BLOB],
    }


def test_writer_strips_signatures_from_every_json_file_manifest_and_readme(
    tmp_path: Path,
) -> None:
    info = replace(INFO, reason=f"see {BLOB}?{SAS}")
    with PackageWriter(tmp_path, info, max_part_bytes=10**6, clock=lambda: START) as pkg:
        pkg.write_json("images.json", [{"originalImageUri": f"{BLOB}?{SAS}"}])
        with pkg.jsonl("predictions.jsonl") as lines:
            lines.write({"thumbnailUri": f"{BLOB}?{SAS}"})
        pkg.note(f"a note naming {BLOB}?{SAS}")
        parts = pkg.finish()
    with zipfile.ZipFile(parts[0].path) as archive:
        texts = {n: archive.read(n).decode() for n in archive.namelist()}
    assert set(texts) == {"images.json", "predictions.jsonl", "README.txt", "manifest.json"}
    for name, text in texts.items():
        assert "sig=" not in text and "?sv=" not in text, name
        assert BLOB in text, name
    assert "signature" in texts["README.txt"]


def test_package_keeps_its_json_readable_until_finished_across_a_resume(tmp_path: Path) -> None:
    limit = 50_000
    with writer(tmp_path, limit) as pkg:
        pkg.write_json("projects.json", [{"id": "p", "name": "n"}])
        with pkg.jsonl("images.jsonl") as sink:
            sink.write({"n": 1})
        pkg.add_file("a.bin", source(pkg, b"a" * 30_000))
        pkg.add_file("b.bin", source(pkg, b"b" * 30_000))  # closes part 1
        pkg.write_json("tags.json", {"workspace": []})  # in part 2, lost in the crash below
        assert pkg.kept("a.bin") is None  # only JSON and JSON lines are kept
        assert pkg.kept("missing.json") is None
    drop_last_part_record(tmp_path)

    with writer(tmp_path, limit) as pkg:
        kept = pkg.kept("projects.json")
        assert kept is not None and json.loads(kept.read_text("utf-8"))[0]["name"] == "n"
        lines = pkg.kept("images.jsonl")
        assert lines is not None and lines.read_text("utf-8") == '{"n":1}\n'
        assert pkg.kept("tags.json") is None  # its part was discarded: written again
        pkg.write_json("tags.json", {"workspace": [{"id": "t"}]})
        again = pkg.kept("tags.json")
        assert again is not None and "t" in again.read_text("utf-8")
        assert pkg.names("images") == ["images.jsonl"]
        pkg.finish()
    assert not (tmp_path / "R-1042" / ".package" / "kept").exists()
