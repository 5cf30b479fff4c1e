"""COCO annotations of a project's images, and labels.csv for classification projects.

COCO ("Common Objects in Context", cocodataset.org, format "data"): one JSON object with
`images`, `categories` and `annotations`, whose ids are integers. Here:
- `images`: one per distinct image, numbered from 1 in the order listed; `file_name` is the
  image's file in the package (null when the package has no file for it, with a note in
  `cv_note`), `width`/`height` in pixels as the service reports them, `cv_image_id` the
  Custom Vision id.
- `categories`: the tags, numbered from 1 in the order given; `cv_tag_id` the Custom Vision id.
- `annotations`: for object detection, one per region, `bbox` = [x, y, width, height] in
  pixels = the normalised left, top, width, height times the image's width and height, and
  `area` = width x height in pixels; for classification, one per image tag, without `bbox`.

`bbox` and `label_row` are pure; `CocoFile` streams one file to disk (two temporary files
joined at the end), so a project of any size takes flat memory.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from contextlib import ExitStack, suppress
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

COCO_NAME = "coco.json"  # in the folder given to CocoFile
NO_FILE_NOTE = "no file in this package (exported without files, or deleted since it was listed)"
LABEL_COLUMNS = ("file", "image_id", "tags")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_BUFFER = 1 << 20  # an object is written at a time: few, large writes to the disk


def bbox(
    left: float, top: float, width: float, height: float, image_w: int, image_h: int
) -> list[float]:
    """Return the COCO [x, y, width, height] in pixels of a normalised region."""
    values = (left * image_w, top * image_h, width * image_w, height * image_h)
    return [round(v, 2) if math.isfinite(v) else 0.0 for v in values]


def _cell(value: str) -> str:
    # A spreadsheet runs a cell that starts like a formula: an apostrophe keeps it text.
    return f"'{value}" if value.startswith(_FORMULA_START) else value


def label_row(file_name: str | None, image_id: str, tags: Sequence[str]) -> str:
    """Return one CSV line of labels.csv: the file, the image id and its tags joined by ';'."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        [_cell(file_name or ""), _cell(image_id), _cell(";".join(tags))]
    )
    return out.getvalue()


def label_header() -> str:
    """Return labels.csv's header line."""
    return ",".join(LABEL_COLUMNS) + "\n"


class CocoFile:
    """One COCO file written as images and annotations arrive; `close()` returns its path."""

    def __init__(
        self,
        folder: Path,
        *,
        info: Mapping[str, Any],
        categories: Sequence[tuple[str, str]],  # (Custom Vision tag id, name)
        detection: bool,
    ) -> None:
        self.folder = folder
        self.detection = detection
        self.images = 0
        self.annotations = 0
        self.info = dict(info)  # written at close: a caller may settle it until then
        self._categories: dict[str, tuple[int, str]] = {}
        for tag_id, name in categories:
            self.category(tag_id, name)
        self._parts = (folder / "coco-images.part", folder / "coco-annotations.part")
        with ExitStack() as opening:
            self._files: tuple[IO[str], IO[str]] = (
                opening.enter_context(
                    self._parts[0].open("w", encoding="utf-8", buffering=_BUFFER)
                ),
                opening.enter_context(
                    self._parts[1].open("w", encoding="utf-8", buffering=_BUFFER)
                ),
            )
            self._open = opening.pop_all()  # closed by close() or discard()

    def category(self, tag_id: str, name: str) -> int:
        """Return the COCO id of a tag, adding it (a tag only an image names) when new."""
        key = tag_id.lower()
        if key not in self._categories:
            self._categories[key] = (len(self._categories) + 1, name)
        return self._categories[key][0]

    def _put(self, which: int, obj: Mapping[str, Any]) -> None:
        handle = self._files[which]
        count = self.images if which == 0 else self.annotations
        handle.write(("," if count > 1 else "") + "\n  " + json.dumps(obj, ensure_ascii=False))

    def add_image(
        self,
        cv_id: str,
        file_name: str | None,
        width: int | None,
        height: int | None,
        *,
        labels: Sequence[tuple[str, str]] = (),  # (tag id, name): classification
        regions: Sequence[tuple[str, str, float, float, float, float]] = (),  # detection
    ) -> None:
        """Add an image with its labels (classification) or regions (object detection)."""
        self.images += 1
        number = self.images
        image: dict[str, Any] = {
            "id": number,
            "file_name": file_name,
            "width": width,
            "height": height,
            "cv_image_id": cv_id,
        }
        if file_name is None:
            image["cv_note"] = NO_FILE_NOTE
        self._put(0, image)
        if self.detection:
            for tag_id, name, left, top, w, h in regions:
                box = bbox(left, top, w, h, width or 0, height or 0)
                self.annotations += 1
                self._put(
                    1,
                    {
                        "id": self.annotations,
                        "image_id": number,
                        "category_id": self.category(tag_id, name),
                        "bbox": box,
                        "area": round(box[2] * box[3], 2),
                        "iscrowd": 0,
                    },
                )
        else:
            for tag_id, name in labels:
                self.annotations += 1
                self._put(
                    1,
                    {
                        "id": self.annotations,
                        "image_id": number,
                        "category_id": self.category(tag_id, name),
                        "iscrowd": 0,
                    },
                )

    def close(self) -> Path:
        """Return the finished COCO file (in `folder`); the temporary parts are removed.

        On an error (a full disk) nothing is left open and no COCO file is left behind.
        """
        try:
            return self._join()
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Close and delete the temporary parts (idempotent); no COCO file is written."""
        with suppress(OSError):  # flushing what is dropped may fail; the handles close anyway
            self._open.close()
        for part_path in self._parts:
            part_path.unlink(missing_ok=True)
        (self.folder / COCO_NAME).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.discard()

    def _join(self) -> Path:
        self._open.close()
        categories = [
            {"id": number, "name": name, "supercategory": "", "cv_tag_id": tag_id}
            for tag_id, (number, name) in self._categories.items()
        ]
        path = self.folder / COCO_NAME
        with path.open("w", encoding="utf-8", newline="\n") as out:
            out.write('{\n"info": ' + json.dumps(self.info, ensure_ascii=False) + ",\n")
            out.write('"licenses": [],\n"images": [')
            with self._parts[0].open(encoding="utf-8") as part:
                shutil.copyfileobj(part, out)
            out.write("\n],\n")
            out.write('"categories": ' + json.dumps(categories, ensure_ascii=False) + ",\n")
            out.write('"annotations": [')
            with self._parts[1].open(encoding="utf-8") as part:
                shutil.copyfileobj(part, out)
            out.write("\n]\n}\n")
        for part_path in self._parts:
            part_path.unlink()
        return path
