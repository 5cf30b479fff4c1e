"""A real headless Chromium opens the export's index.html and the deletion's receipt.html.

The packages are built end to end (slash command -> bot -> Custom Vision emulator -> Slack
upload) and unzipped into a folder; Chromium opens the pages over file:// with the network
switched off. Never skipped: without Chromium these tests fail and say how to install it.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

from bot import webpage
from bot.training import TrainingClient
from emulators.customvision import Seed
from emulators.stack import APPROVER, CHANNEL, Stack
from tests.browser import Browser, browser, colours
from tests.conftest import StartStack, exported, request_pending

SEED = Seed(projects=1, iterations=1, tags=2, images=6, predictions=2, image_bytes=300)
# A value that runs a script if it is ever pasted into the page unescaped: each variant sets
# the title or adds an element with an id the tests look for.
PWNED = "pwned"
HOSTILE = (
    f"<script>document.title='{PWNED}'</script>"
    f'"><img src=x onerror="document.title=\'{PWNED}\'" id={PWNED}>'
    f"'><svg onload=\"document.title='{PWNED}'\"></svg>"
    "\u202etxt.exe"
)
# The Slack-facing parts are the grammar's business: a ticket stays a plain token.
HOSTILE_REASON = '<img src=x onerror="document.title=1" id=pwned> \u202eevil\u202c'


def export_folder(stack: Stack, text: str, folder: Path) -> tuple[str, list[str]]:
    """Run an export through Slack; unzip every part into `folder`; return id and part names."""
    rid, parts = exported(stack, text)
    for part in parts:
        with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
            archive.extractall(folder)
    return rid, [p.name for p in parts]


def hostile_project(stack: Stack) -> str:
    """An object detection project whose name, tags and metadata are hostile; return its id."""
    data = stack.cv.data
    project = data.add_project(f"{HOSTILE} project", object_detection=True)
    cat = data.add_tag(project, "cat")
    evil = data.add_tag(project, HOSTILE)
    data.add_images(project, 7, tag_ids=[cat])
    data.add_images(project, 3, tag_ids=[cat, evil], metadata={"owner": HOSTILE, HOSTILE: "x"})
    data.add_images(project, 2)  # untagged: no boxes
    iteration = data.add_iteration(project)
    data.add_predictions(project, 3, iteration_id=iteration)
    return project


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


LOAD_ALL_IMAGES = """(async () => {
  const imgs = [...document.images];
  for (const img of imgs) {
    img.scrollIntoView();
    // An image that never loads (hidden, missing) must not hang the test: 10 s each at most.
    const late = new Promise(done => setTimeout(done, 10000));
    try { await Promise.race([img.decode(), late]); } catch (e) {}
  }
  window.scrollTo(0, 0);
  return imgs.map(i => ({src: i.getAttribute('src'), w: i.naturalWidth, done: i.complete}));
})()"""

BOXES = """[...document.querySelectorAll('.frame')].flatMap(frame => {
  const img = frame.querySelector('img');
  if (!img) return [];
  const f = img.getBoundingClientRect();
  return [...frame.querySelectorAll('.box')].map(b => {
    const r = b.getBoundingClientRect();
    return {src: img.getAttribute('src'), label: b.textContent,
            left: (r.left - f.left) / f.width, top: (r.top - f.top) / f.height,
            width: r.width / f.width, height: r.height / f.height,
            shown: getComputedStyle(b).display !== 'none' && r.width > 0 && r.height > 0,
            inside: r.left >= f.left - 1 && r.top >= f.top - 1 &&
                    r.right <= f.right + 1 && r.bottom <= f.bottom + 1};
  });
})"""

NO_SCRIPT_RAN = f"""({{
  title: document.title,
  injected: document.querySelectorAll('#{PWNED}, body script, [onerror], [onload]').length,
  text: document.body.innerText
}})"""


SUMMARY_TABLE = """[...document.querySelector('h2 + table').rows]
  .map(r => [...r.cells].map(c => c.innerText))"""


def assert_not_blank(png: bytes) -> None:
    seen = colours(png)
    total = sum(seen.values())
    assert len(seen) >= 4, seen
    assert max(seen.values()) < 0.97 * total, "the screenshot is (almost) one colour"


def assert_offline(b: Browser) -> None:
    asked = b.requests()
    assert asked, "the page loaded nothing at all"
    assert all(url.startswith(("file://", "data:")) for url in asked), asked
    blocked = b.event_texts("Log.entryAdded")
    assert not any("Content Security Policy" in e for e in blocked), blocked


def assert_no_script(b: Browser, title: str) -> str:
    state = b.evaluate(NO_SCRIPT_RAN)
    assert state["title"] == title
    assert state["injected"] == 0
    return str(state["text"])


def test_browser_index_shows_every_image_and_box_offline(
    stacks: StartStack, tmp_path: Path
) -> None:
    stack = stacks(seed=SEED)
    project = hostile_project(stack)
    folder = tmp_path / "package"
    rid, _ = export_folder(stack, f"export project {project} --reason '{HOSTILE_REASON}'", folder)
    records = jsonl(folder / "images.jsonl")
    regions = {
        r["file"]: r["image"]["regions"] for r in records if r["file"] and r["image"]["regions"]
    }
    assert len(regions) == 3 + 7  # every tagged image has a box per tag

    with browser() as b:
        # Escaping alone must hold: the CSP is switched off for this first look.
        b.open(folder / "index.html", bypass_csp=True)
        title = f"Custom Vision data export, request {rid}"
        text = assert_no_script(b, title)
        assert f"<script>document.title='{PWNED}'</script>" in text  # shown as text
        assert "<U+202E>txt.exe" in text  # the RTL override is visible, not obeyed
        assert "<img src=x onerror=" in text
        pages = b.evaluate(
            "[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))"
            ".filter(h => h.startsWith('index/'))"
        )
        assert pages and all(not p.startswith(("http", "//")) for p in pages)
        assert any("predictions" in p for p in pages)
        assert_not_blank(b.screenshot())

        drawn: dict[str, list[dict[str, Any]]] = {}
        loaded: list[dict[str, Any]] = []
        for page in pages:
            b.open(folder / page)  # with the page's own CSP
            loaded += b.evaluate(LOAD_ALL_IMAGES)
            for box in b.evaluate(BOXES):
                drawn.setdefault(box["src"].removeprefix("../"), []).append(box)
            assert_no_script(b, b.evaluate("document.title"))
            assert PWNED not in b.evaluate("document.title")
            if "images" in page:
                assert_not_blank(b.screenshot())
        assert_offline(b)

        assert loaded and all(i["done"] and i["w"] > 0 for i in loaded), loaded
        files = {r["file"] for r in records if r["file"]}
        assert files <= {i["src"].removeprefix("../") for i in loaded}
        # Every region is drawn over its image, where the normalised values say.
        for file, expected in regions.items():
            boxes = drawn[file]
            per_scope = len(boxes) // len(expected)  # the image shows once per scope
            assert per_scope >= 1 and len(boxes) == per_scope * len(expected)
            for box in boxes:
                assert box["shown"] and box["inside"], box
            for want, got in zip(expected, boxes, strict=False):
                assert abs(got["left"] - want["left"]) < 0.01, (got, want)
                assert abs(got["top"] - want["top"]) < 0.01, (got, want)
                assert abs(got["width"] - min(want["width"], 1 - want["left"])) < 0.02
                assert want["tagName"].replace("\u202e", "<U+202E>") in got["label"]


def test_browser_index_of_a_split_package_names_the_part_of_each_file(
    stacks: StartStack, tmp_path: Path
) -> None:
    seed = Seed(projects=1, iterations=1, tags=2, images=50, predictions=0, image_bytes=40_000)
    stack = stacks(seed=seed, env={"BOT_MAX_FILE_MB": "1"})
    project = stack.cv.data.project_ids()[0]
    folder = tmp_path / "package"
    _, parts = export_folder(stack, f"export project {project}", folder)
    assert len(parts) >= 2
    manifest = json.loads((folder / "manifest.json").read_text("utf-8"))
    part_of = {f["name"]: f["part"] for f in manifest["files"]}
    for name in ("index.html", "labels.csv", "annotations/" + project + ".coco.json"):
        assert name in part_of, name
    with browser() as b:
        b.open(folder / "index.html")
        pages = b.evaluate(
            "[...document.querySelectorAll('a')].map(a => a.getAttribute('href'))"
            ".filter(h => h.startsWith('index/images-'))"
        )
        said: dict[str, int] = {}
        for page in pages:
            b.open(folder / page)
            for src, where in b.evaluate(
                "[...document.querySelectorAll('article')].map(a => "
                "[a.querySelector('img').getAttribute('src'), a.innerText])"
            ):
                name = src.removeprefix("../")
                said[name] = part_of[name]
                assert f"(part {part_of[name]})" in where, where
            assert all(i["w"] > 0 for i in b.evaluate(LOAD_ALL_IMAGES))
        assert len(set(said.values())) >= 2  # the images really are spread over parts
        assert_offline(b)


def test_browser_receipt_is_readable_offline(stack: Stack, tmp_path: Path) -> None:
    project = stack.cv.data.project_ids()[0]
    images = stack.cv.data.image_ids(project)[:4]
    rid = request_pending(
        stack,
        f"delete images {project} --ids {','.join(images)} --ticket DSR-77 "
        f"--reason '{HOSTILE_REASON}'",
    )
    # Someone else deletes one first: the receipt counts it as already absent, not removed.
    TrainingClient(stack.cv.endpoint, stack.env["CUSTOM_VISION_TRAINING_KEY"]).delete_images(
        project, images[:1], all_iterations=True
    )
    stack.cv.data.settle()
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    stack.wait_delivered()
    files = {f.name: f for f in stack.slack.files(CHANNEL)}
    page = tmp_path / "receipt.html"
    page.write_bytes(files[f"{rid}-receipt.html"].data)
    document = json.loads(files[f"{rid}-receipt.json"].data)

    with browser() as b:
        b.open(page, bypass_csp=True)
        text = assert_no_script(b, f"Deletion receipt, request {rid}")
        assert "DSR-77" in text and "<img src=x onerror=" in text
        assert APPROVER.user_id in text
        assert "Audit log head" in text
        rows = b.evaluate("document.querySelectorAll('.pages tbody tr').length")
        assert rows == len(document["items"]) == 4
        summary = b.evaluate(SUMMARY_TABLE)
        assert summary[0][:5] == [
            "Project",
            "What",
            "Planned",
            "Removed by this request",
            "Already absent",
        ]
        assert summary[0][5:] == [
            "Outcome unknown",
            "Not removed",
            "Not attempted",
            "Verified gone",
            "Survived",
            "Not verified",
        ]
        assert summary[1:] == [[project, "images", "4", "3", "1", "0", "0", "0", "4", "0", "0"]]
        (row,) = document["summary"]
        assert [str(row[k]) for k in ("planned", "removed", "already_absent")] == ["4", "3", "1"]
        assert_not_blank(b.screenshot())
        assert_offline(b)


def test_browser_receipt_pages_show_one_at_a_time(tmp_path: Path) -> None:
    head = webpage.Header("Deletion receipt, request R-1", (("Request", "R-1"),))
    rows = [[f"item-{n}", "image", "gone"] for n in range(2_500)]
    page = tmp_path / "receipt.html"
    page.write_text(
        "".join(webpage.receipt_page(head, [], ("target", "kind", "verified"), rows)), "utf-8"
    )
    shown = """[...document.querySelectorAll('.receipt-page')]
      .filter(p => getComputedStyle(p).display !== 'none').map(p => p.id)"""
    with browser() as b:
        b.open(page)
        assert b.evaluate(shown) == ["page-1"]
        assert b.evaluate("document.querySelectorAll('.receipt-page').length") == 3
        b.evaluate("location.hash = '#page-3'")
        assert b.evaluate(shown) == ["page-3"]
        assert "item-2499" in b.evaluate("document.body.innerText")
        assert "item-0" not in b.evaluate("document.body.innerText")
        assert_not_blank(b.screenshot())
