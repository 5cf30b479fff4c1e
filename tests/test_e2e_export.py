"""End to end: exports typed in Slack arrive in the thread as complete, verifiable packages."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import zipfile
from typing import Any

import pytest

from emulators.customvision import Faults, Seed
from emulators.stack import CHANNEL, REQUESTER, Stack
from tests.conftest import StartStack, exported

SEED = Seed(projects=2, iterations=2, tags=3, images=30, predictions=5, image_bytes=300)


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return stacks(seed=SEED)


def export(stack: Stack, text: str) -> tuple[str, dict[str, bytes]]:
    """Run an export through Slack; return its request id and the unzipped package."""
    rid, parts = exported(stack, text)
    thread_ts = stack.bot.store.get(rid).message_ts
    assert {p.thread_ts for p in parts} == {thread_ts}
    content: dict[str, bytes] = {}
    for part in parts:
        with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
            for name in archive.namelist():
                assert name not in content
                content[name] = archive.read(name)
    return rid, content


def manifest_checks(content: dict[str, bytes]) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(content["manifest.json"])
    listed = {f["name"]: f for f in manifest["files"]}
    for name, entry in listed.items():
        data = content[name]
        assert len(data) == entry["size"], name
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert set(content) - {"manifest.json"} <= set(listed) | {"README.txt"}
    content["README.txt"].decode("utf-8")
    return manifest


def jsonl(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]


def test_e2e_export_project_is_complete_byte_for_byte(stack: Stack) -> None:
    data = stack.cv.data
    project = data.project_ids()[0]
    rid, content = export(stack, f"export project {project} --ticket DSR-9 --reason 'Art. 15'")
    manifest = manifest_checks(content)
    assert manifest["request"]["id"] == rid
    assert manifest["request"]["ticket"] == "DSR-9"
    assert manifest["source"]["api_version"] == "v3.3"
    assert "key" not in json.dumps(manifest["source"]).lower()

    iterations = {i["id"] for i in json.loads(content["iterations.json"])}
    assert iterations == set(data.iteration_ids(project))
    for iteration in iterations:
        assert f"performance/{iteration}.json" in content

    rows = jsonl(content["images.jsonl"])
    seen = {(r["scope"], r.get("iterationId"), r["image"]["id"]) for r in rows}
    expected = {("workspace", None, i) for i in data.image_ids(project)}
    for iteration in iterations:
        expected |= {("iteration", iteration, i) for i in data.image_ids(project, iteration)}
    assert seen == expected

    every_image = {i for _, _, i in expected}
    files = {
        n: b
        for n, b in content.items()
        if n.startswith(("images/workspace/", "images/iterations/"))
    }
    assert len(files) == len(every_image)
    for name, payload in files.items():
        image_id = name.rsplit("/", 1)[1].split(".")[0]
        assert payload == stack.cv.image_bytes(image_id)

    predictions = jsonl(content["predictions.jsonl"])
    assert {p["prediction"]["id"] for p in predictions} == set(data.prediction_ids(project))
    prediction_files = [n for n in content if n.startswith("images/predictions/")]
    assert len(prediction_files) == len(predictions)


@pytest.mark.parametrize(
    ("template", "expected_files"),
    [
        ("export projects", {"projects.json"}),
        ("export account", {"domains.json"}),
        ("export iterations {p}", {"iterations.json"}),
        ("export iteration {p} {i}", {"iterations.json", "exports.json"}),
        ("export performance {p} {i} --threshold 0.7 --overlap 0.4", {"performance/{i}.json"}),
        ("export tags {p}", {"tags.json"}),
        ("export tag {p} {t}", {"tags.json"}),
        ("export images {p} --tagged --no-files", {"images.jsonl"}),
        ("export exports {p} {i}", {"exports.json"}),
        ("export predictions {p} --no-files", {"predictions.jsonl"}),
    ],
)
def test_e2e_every_export_kind_posts_a_verified_package(
    stack: Stack, template: str, expected_files: set[str]
) -> None:
    data = stack.cv.data
    project = data.project_ids()[0]
    iteration = data.iteration_ids(project)[0]
    tag = data.tag_ids(project)[0]
    values = {"p": project, "i": iteration, "t": tag}
    _, content = export(stack, template.format(**values))
    manifest_checks(content)
    for name in expected_files:
        assert name.format(**values) in content, sorted(content)


def test_e2e_tagged_images_with_files(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[1]
    tag = stack.cv.data.tag_ids(project)[0]
    _, content = export(stack, f"export images {project} --tag {tag}")
    rows = jsonl(content["images.jsonl"])
    assert rows
    assert all(tag in {t["tagId"] for t in r["image"]["tags"] or []} for r in rows)
    for row in rows:
        ids = [n for n in content if n.startswith("images/") and row["image"]["id"] in n]
        assert len(ids) == 1


def test_e2e_unknown_project_fails_with_a_clear_message(stack: Stack) -> None:
    missing = "0b0b0b0b-0000-4000-8000-000000000000"
    rid = stack.request_id(stack.command(REQUESTER, f"export project {missing}"))
    assert stack.wait_status(rid, "failed", "done") == "failed"
    error = stack.bot.store.get(rid).error or ""
    assert "0b0b0b0b" in error and "not found" in error.lower()
    stack.wait_delivered()
    thread = stack.slack.messages(CHANNEL, thread_ts=stack.bot.store.get(rid).message_ts)
    assert any("not found" in m.text.lower() for m in thread)


def test_e2e_big_package_is_split_into_parts(stacks: StartStack) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=60, predictions=2, image_bytes=40_000)
    stack = stacks(seed=seed, env={"BOT_MAX_FILE_MB": "1"})
    project = stack.cv.data.project_ids()[0]
    rid, content = export(stack, f"export project {project}")
    manifest = manifest_checks(content)
    parts = [f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")]
    assert len(parts) >= 2
    assert all(len(p.data) <= 1024 * 1024 for p in parts)
    assert len(manifest["parts"]) == len(parts)
    summary = [
        m.text for m in stack.slack.messages(CHANNEL, thread_ts=stack.bot.store.get(rid).message_ts)
    ]
    for part in parts:
        digest = hashlib.sha256(part.data).hexdigest()
        assert any(digest in text for text in summary), part.name


def test_e2e_progress_is_one_message_updated_in_place(stacks: StartStack) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=400, predictions=2, image_bytes=200)
    stack = stacks(seed=seed)
    stack.cv.faults.blob_latency = 0.01
    project = stack.cv.data.project_ids()[0]
    rid, _ = export(stack, f"export project {project}")
    thread = stack.slack.messages(CHANNEL, thread_ts=stack.bot.store.get(rid).message_ts)
    progress = [m for m in thread if "▓" in m.text or "░" in m.text]
    assert len(progress) == 1
    assert progress[0].updates >= 1


def test_e2e_cancel_stops_a_running_export(stacks: StartStack) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=300, predictions=2, image_bytes=200)
    stack = stacks(seed=seed)
    stack.cv.faults.blob_latency = 0.05
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}"))
    stack.wait_status(rid, "running")
    body = stack.command(REQUESTER, f"cancel {rid}").json()
    assert body["text"] == f"{rid} is cancelled."
    assert stack.wait_status(rid, "cancelled") == "cancelled"
    time.sleep(0.5)
    stack.wait_delivered()
    assert not [f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")]


def test_e2e_acks_stay_fast_while_eight_exports_run(stacks: StartStack) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=200, predictions=2, image_bytes=200)
    stack = stacks(seed=seed)
    stack.cv.faults.blob_latency = 0.02
    project = stack.cv.data.project_ids()[0]
    rids = [
        stack.request_id(stack.command(REQUESTER, f"export project {project}")) for _ in range(8)
    ]
    answers: list[int] = []

    def status() -> None:
        response = stack.command(REQUESTER, "status")
        answers.append(response.status_code)

    threads = [threading.Thread(target=status) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Bolt answers 404 when no ack came within 3 s; every command must have been acked.
    assert answers == [200] * 20
    for rid in rids:
        stack.wait_status(rid, "done", "failed", timeout=120)


def test_e2e_work_files_are_removed_once_posted(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    rid, _ = export(stack, f"export project {project}")
    folder = stack.config.work_dir / rid
    assert stack.bot.service.purge_work_files() == [rid] or not folder.exists()
    assert not folder.exists()
    assert [f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")]


def test_e2e_downloads_keep_their_connections_open(stacks: StartStack) -> None:
    """Every download thread keeps its HTTP connection: an export opens about as many
    connections as it has threads, however many files it fetches. With a pool smaller than
    the threads, every moment they idle together (here: each listing page takes 0.3 s) drops
    the connections beyond the pool, and the next downloads open them again (a TLS handshake
    each in Azure)."""
    seed = Seed(projects=1, iterations=1, tags=2, images=400, predictions=0, image_bytes=200)
    faults = Faults(blob_latency=0.01, latency=0.3)
    stack = stacks(seed=seed, faults=faults, env={"BOT_DOWNLOAD_CONCURRENCY": "16"})
    project = stack.cv.data.project_ids()[0]
    before = stack.cv.connections
    rid, content = export(stack, f"export images {project}")
    assert len([n for n in content if n.startswith("images/")]) == 400
    blobs = [c for c in stack.cv.calls if c.operation_id == "Blob" and c.status == 200]
    assert len(blobs) == 400
    # 16 download threads, the job's own calls, and a few from the Slack side.
    opened = stack.cv.connections - before
    assert opened <= 16 + 4, (rid, opened)
