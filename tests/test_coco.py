"""COCO files and labels.csv of export packages, read back with pycocotools as a user would."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from bot import coco
from bot.training import TrainingClient
from emulators.customvision import Seed
from emulators.stack import TRAINING_KEY, Stack
from tests.conftest import StartStack, exported

# Projects cycle through Multiclass, ObjectDetection and Multilabel.
SEED = Seed(projects=3, iterations=2, tags=4, images=25, predictions=2, image_bytes=200)


def export(stack: Stack, text: str, folder: Path) -> None:
    for part in exported(stack, text)[1]:
        with zipfile.ZipFile(io.BytesIO(part.data)) as archive:
            archive.extractall(folder)


def load(path: Path) -> COCO:
    with redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        return COCO(str(path))


def first_scope_tags(stack: Stack, project: str) -> dict[str, list[str]]:
    """Return each distinct image's tag ids where the export takes it from: its first scope."""
    data = stack.cv.data
    found: dict[str, list[str]] = {}
    for scope in [None, *data.iteration_ids(project)]:
        for image in data.image_ids(project, scope):
            found.setdefault(image, data.image_tag_ids(project, image, scope))
    return found


@pytest.mark.parametrize("ordinal", [0, 1, 2], ids=["multiclass", "detection", "multilabel"])
def test_coco_counts_match_the_service_and_boxes_are_pixels(
    stacks: StartStack, tmp_path: Path, ordinal: int
) -> None:
    stack = stacks(seed=SEED)
    data = stack.cv.data
    project = data.project_ids()[ordinal]
    export(stack, f"export project {project}", tmp_path)
    files = sorted(tmp_path.glob("annotations/*.coco.json"))
    assert [f.name for f in files] == [f"{project}.coco.json"]
    manifest = json.loads((tmp_path / "manifest.json").read_text("utf-8"))
    listed = {f["name"] for f in manifest["files"]}
    assert f"annotations/{project}.coco.json" in listed and "index.html" in listed

    dataset = load(files[0])
    expected = first_scope_tags(stack, project)
    tags = {
        t for scope in [None, *data.iteration_ids(project)] for t in data.tag_ids(project, scope)
    }
    assert len(dataset.imgs) == len(expected)
    assert len(dataset.cats) == len(tags)
    # COCO allows extra keys; the pycocotools stubs type categories and images without them.
    assert {c["cv_tag_id"] for c in dataset.cats.values()} == tags  # type: ignore[typeddict-item]
    assert len(dataset.anns) == sum(len(t) for t in expected.values())
    by_cv_id = {img["cv_image_id"]: img for img in dataset.imgs.values()}  # type: ignore[typeddict-item]
    assert set(by_cv_id) == set(expected)
    for image in dataset.imgs.values():
        assert (tmp_path / image["file_name"]).is_file()

    detection = ordinal == 1
    with TrainingClient(stack.cv.endpoint, TRAINING_KEY) as client:
        known = next(i for i in client.get_images_by_ids(project, list(expected)[:8]) if i.tags)
    image = by_cv_id[known.id]
    assert (image["width"], image["height"]) == (known.width, known.height)
    anns = dataset.loadAnns(dataset.getAnnIds(imgIds=[image["id"]]))
    names = {dataset.cats[a["category_id"]]["name"] for a in anns}
    assert names == {t.tag_name for t in known.tags}
    if detection:
        region = known.regions[0]
        assert known.width and known.height
        want = [
            round(region.left * known.width, 2),
            round(region.top * known.height, 2),
            round(region.width * known.width, 2),
            round(region.height * known.height, 2),
        ]
        boxes = [a["bbox"] for a in anns]
        assert want in boxes
        assert all(a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], abs=0.01) for a in anns)
        assert not (tmp_path / "labels.csv").exists()
    else:
        assert all("bbox" not in a for a in anns)
        text = (tmp_path / "labels.csv").read_text("utf-8")
        rows = list(csv.DictReader(io.StringIO(text)))
        assert len(rows) == len(expected)
        row = next(r for r in rows if r["image_id"] == known.id)
        assert row["file"] == image["file_name"]
        assert set(row["tags"].split(";")) == names
        assert "labels.csv" in listed
    readme = (tmp_path / "README.txt").read_text("utf-8")
    assert "bbox = [x, y, width, height] in pixels" in readme
    assert "without bbox" in readme


def test_coco_lists_images_without_files_with_a_note(stacks: StartStack, tmp_path: Path) -> None:
    stack = stacks(seed=SEED)
    project = stack.cv.data.project_ids()[1]
    export(stack, f"export images {project} --no-files", tmp_path)
    dataset = load(tmp_path / f"annotations/{project}.coco.json")
    assert len(dataset.imgs) == len(stack.cv.data.image_ids(project))
    for image in dataset.imgs.values():
        assert image["file_name"] is None
        assert image["cv_note"] == coco.NO_FILE_NOTE
    assert dataset.anns  # the boxes are there even without the files
    index = (tmp_path / "index.html").read_text("utf-8")
    page = (tmp_path / "index/images-0001.html").read_text("utf-8")
    assert "<img" not in page and "no file in this package" in page
    assert "index/images-0001.html" in index


def test_coco_bbox_is_normalised_values_times_the_image_size() -> None:
    assert coco.bbox(0.25, 0.5, 0.5, 0.25, 640, 480) == [160.0, 240.0, 320.0, 120.0]
    assert coco.bbox(0.1, 0.2, 0.3, 0.4, 1001, 333) == [100.1, 66.6, 300.3, 133.2]


@pytest.mark.parametrize(
    ("tags", "cell"),
    [
        (["cat", "dog"], "cat;dog"),
        (['=HYPERLINK("http://x")'], '\'=HYPERLINK("http://x")'),
        (["+1", "@me"], "'+1;@me"),
        (["-2"], "'-2"),
        (["a,b", 'say "hi"'], 'a,b;say "hi"'),
    ],
)
def test_coco_labels_csv_keeps_formulas_as_text(tags: list[str], cell: str) -> None:
    line = coco.label_row("images/workspace/a.png", "a", tags)
    assert next(csv.reader([line])) == ["images/workspace/a.png", "a", cell]
