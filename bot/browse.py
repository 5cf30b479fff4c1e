"""The package's readable views: index.html and its pages, COCO files and labels.csv.

I/O through the PackageWriter only: `add_views` reads the package's own JSON files back
(`PackageWriter.kept`) after the export wrote them, and adds, before README and manifest:

    index.html                          the request, a table of contents, every project with
                                        its iterations, performance, tags and exported models
    index/images-NNNN.html              IMAGES_PER_PAGE images a page, one scope a page
    index/predictions-NNNN.html         stored predictions, the same way
    annotations/<project-id>.coco.json  COCO (bot.coco) of a project's images
    labels.csv                          image-level labels of a classification project

Pages are streamed line by line from images.jsonl / predictions.jsonl, so memory stays flat
whatever the number of images. Images are shown from the package's own files (relative
paths); the service's addresses in the JSON are never used. When the package spans several
parts, each image says which part holds its file. Rendering is bot.webpage's (pure).
A resumed export renders the same pages again (the build time is the caller's) and adds only
those not already in the package.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot import coco, package, webpage
from bot.clock import iso
from bot.models import (
    Image,
    Iteration,
    IterationPerformance,
    Project,
    StoredImagePrediction,
    Tag,
)
from bot.package import INDEX_NAME, LABELS_NAME, PackageInfo, PackageWriter
from bot.webpage import Box, Card, FileRef, PageLink

IMAGES_PER_PAGE = 500
# The start of an images.jsonl line (bot.exporter writes the record's keys in this order).
_SCOPE_PREFIX = re.compile(r'\{"scope":"[a-z]+","iterationId":(null|"[^"\\]*"),')
BOX_THRESHOLD = 0.5  # stored predictions: boxes drawn from this probability up


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass(frozen=True)
class _Scope:
    """A run of listing lines of one scope, and the pages it takes."""

    key: str | None  # iteration id, None for the workspace
    label: str
    lines: int
    first_page: int  # 1-based number of its first page

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.lines / IMAGES_PER_PAGE))


class _Views:
    def __init__(self, writer: PackageWriter, built_at: datetime) -> None:
        self.writer = writer
        self.built_at = built_at
        self.multi = writer.parts_so_far > 1
        self.iteration_names: dict[str, str] = {}

    # -- reading the package back -------------------------------------------------------------

    def json(self, name: str) -> Any:
        path = self.writer.kept(name)
        if path is None:
            return None
        with path.open(encoding="utf-8") as f:
            return json.load(f)

    def lines(self, name: str) -> Iterator[dict[str, Any]]:
        path = self.writer.kept(name)
        if path is None:
            return
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)

    def file_ref(self, name: object, note: str) -> FileRef:
        if not isinstance(name, str) or self.writer.entry(name) is None:
            return FileRef(None, note=note)
        entry = self.writer.entry(name)
        assert entry is not None
        return FileRef(name, entry.part if self.multi else None, entry.rejoin)

    # -- adding -------------------------------------------------------------------------------

    def add_text(self, name: str, chunks: Iterator[str] | Sequence[str]) -> None:
        if self.writer.has(name):
            return  # a resumed export: a kept part holds it
        path = self.writer.temp_dir / f"view-{uuid.uuid4().hex}.tmp"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for chunk in chunks:
                f.write(chunk)
        self.writer.add_file(name, path)

    # -- listings -----------------------------------------------------------------------------

    def scopes(self, name: str, key_of: Any, label_of: Any, first_page: int) -> list[_Scope]:
        """Return the runs of lines of one scope in listing `name`."""
        return _runs((key_of(record) for record in self.lines(name)), label_of, first_page)

    def scope_label(self, key: str | None) -> str:
        if key is None:
            return "training workspace"
        return f"snapshot of iteration {self.iteration_names.get(key.lower(), key)}"

    def paged(
        self,
        listing: str,
        stem: str,
        what: str,
        key_of: Any,
        card_of: Any,
        label_of: Any = None,
        runs: list[_Scope] | None = None,
    ) -> list[PageLink]:
        """Add the pages of `listing`, a card a line; `runs`: its scopes, when already read."""
        if runs is None:
            runs = self.scopes(listing, key_of, label_of or self.scope_label, 1)
        if not runs:
            return []
        total = runs[-1].first_page + runs[-1].pages - 1
        names = [package.view_page_path(stem, n) for n in range(1, total + 1)]
        links: list[PageLink] = []
        for run in runs:
            for i in range(run.pages):
                first = i * IMAGES_PER_PAGE + 1
                last = min(run.lines, first + IMAGES_PER_PAGE - 1)
                number = run.first_page + i
                links.append(
                    PageLink(
                        names[number - 1],
                        f"{what} {first:,} to {last:,} of {run.lines:,} ({run.label})",
                    )
                )
        records = self.lines(listing)

        def page_cards(count: int) -> Iterator[Card]:
            for _ in range(count):
                yield card_of(next(records))

        for run in runs:
            for i in range(run.pages):
                number = run.first_page + i
                count = min(IMAGES_PER_PAGE, run.lines - i * IMAGES_PER_PAGE)
                prev = names[number - 2].split("/")[-1] if number > 1 else None
                nxt = names[number].split("/")[-1] if number < total else None
                cards = page_cards(count)
                if self.writer.has(names[number - 1]):
                    for _ in cards:  # keep the listing and the callbacks in step
                        pass
                    continue
                self.add_text(
                    names[number - 1],
                    webpage.card_page(
                        f"{what} ({run.label})",
                        f"page {number} of {total}: {links[number - 1].label}",
                        cards,
                        prev=prev,
                        nxt=nxt,
                    ),
                )
        return links

    def image_card(self, record: Mapping[str, Any], image: Image) -> Card:
        scope = self.scope_label(record.get("iterationId"))
        facts = [("created", image.created or "")] if image.created else []
        facts += sorted(image.metadata.items())
        return Card(
            title=image.id,
            subtitle=scope[0].upper() + scope[1:],
            file=self.file_ref(record.get("file"), coco.NO_FILE_NOTE),
            width=image.width,
            height=image.height,
            tags=tuple(t.tag_name or t.tag_id or "?" for t in image.tags),
            boxes=tuple(
                Box(r.left, r.top, r.width, r.height, r.tag_name or r.tag_id) for r in image.regions
            ),
            facts=tuple(facts),
        )

    def prediction_card(self, record: Mapping[str, Any]) -> Card:
        p = StoredImagePrediction.from_dict(record.get("prediction"))
        ranked = sorted(p.predictions, key=lambda x: -(x.probability or 0.0))
        boxes = tuple(
            Box(
                x.bounding_box.left,
                x.bounding_box.top,
                x.bounding_box.width,
                x.bounding_box.height,
                f"{x.tag_name or x.tag_id or '?'} {webpage.percent(x.probability)}",
            )
            for x in ranked
            if x.bounding_box is not None and (x.probability or 0.0) >= BOX_THRESHOLD
        )
        by = self.iteration_names.get((p.iteration or "").lower(), p.iteration or "?")
        return Card(
            title=p.id,
            subtitle=f"Predicted by iteration {by}" + (f" on {p.created}" if p.created else ""),
            file=self.file_ref(record.get("file"), coco.NO_FILE_NOTE),
            width=None,
            height=None,
            tags=tuple(
                x.tag_name or x.tag_id or "?"
                for x in ranked
                if (x.probability or 0.0) >= BOX_THRESHOLD
            ),
            boxes=boxes,
            facts=tuple(
                (x.tag_name or x.tag_id or "?", webpage.percent(x.probability)) for x in ranked
            ),
        )


def _scope_of(record: Mapping[str, Any]) -> Any:
    """Return the scope of an images.jsonl line: its iteration id, None for the workspace."""
    return record.get("iterationId")


def _runs(keys: Iterable[Any], label_of: Any, first_page: int) -> list[_Scope]:
    """Return the runs of equal keys (one scope's lines), numbering their pages on."""
    runs: list[_Scope] = []
    for key in keys:
        if runs and runs[-1].key == key:
            last = runs[-1]
            runs[-1] = _Scope(last.key, last.label, last.lines + 1, last.first_page)
        else:
            page = runs[-1].first_page + runs[-1].pages if runs else first_page
            runs.append(_Scope(key, label_of(key), 1, page))
    return runs


def _image_scopes(v: _Views, listing: str) -> tuple[list[_Scope], bool]:
    """Return the scopes of an images.jsonl and whether any of its images has regions.

    One pass that parses next to nothing: a line starts `{"scope":...,"iterationId":...,`
    (bot.exporter writes its keys in that order), so its scope is read from that prefix; and
    as lines are compact JSON, only a line holding `"regions":[{` can have a region.
    """
    regions: list[bool] = []

    def keys(f: Iterable[str]) -> Iterator[Any]:
        for line in f:
            if not line.strip():
                continue
            match = _SCOPE_PREFIX.match(line)
            record = None if match else json.loads(line)
            if not regions and '"regions":[{' in line:
                record = record or json.loads(line)
                if record.get("image", {}).get("regions"):
                    regions.append(True)
            if match is None:
                yield _scope_of(record or {})
            else:
                yield None if match.group(1) == "null" else match.group(1)[1:-1]

    path = v.writer.kept(listing)
    if path is None:
        return [], False
    with path.open(encoding="utf-8") as f:
        return _runs(keys(f), v.scope_label, 1), bool(regions)


def _kind(project: Project, detection: bool) -> str:
    if detection:
        return "Object detection"
    settings = project.to_dict().get("settings") or {}
    kind = settings.get("classificationType") if isinstance(settings, dict) else None
    return f"Classification ({kind})" if isinstance(kind, str) and kind else "Classification"


def _is_detection(project: Project, has_regions: bool) -> bool:
    # Custom Vision reports a classification type only for classification projects (inferred
    # from the spec's examples: object detection projects carry null); regions settle it.
    settings = project.to_dict().get("settings") or {}
    kind = settings.get("classificationType") if isinstance(settings, dict) else None
    return has_regions or not kind


def _iteration_view(v: _Views, it: Iteration, exports: Any) -> webpage.IterationView:
    perf_data = v.json(package.performance_path(it.id))
    overall: webpage.TagScore | None = None
    per_tag: tuple[webpage.TagScore, ...] = ()
    if perf_data is not None:
        perf = IterationPerformance.from_dict(perf_data)
        overall = webpage.TagScore("all tags", perf.precision, perf.recall, perf.average_precision)
        per_tag = tuple(
            webpage.TagScore(t.name or t.id, t.precision, t.recall, t.average_precision)
            for t in perf.per_tag_performance
        )
    rows: list[tuple[str, str, str]] = []
    listed = exports.get(it.id) if isinstance(exports, dict) else None
    for e in listed if isinstance(listed, list) else []:
        platform = str(e.get("platform") or "?") if isinstance(e, dict) else "?"
        flavor = str(e.get("flavor") or "") if isinstance(e, dict) else ""
        status = str(e.get("status") or "") if isinstance(e, dict) else ""
        # model_path ends with ".<ext>": its name up to the dot is the prefix of the file.
        held = v.writer.names(package.model_path(it.id, platform, flavor or None, "x")[:-1])
        rows.append((platform + (f" ({flavor})" if flavor else ""), status, ", ".join(held)))
    return webpage.IterationView(
        name=it.name,
        id=it.id,
        status=it.status or "",
        trained_at=it.trained_at or "",
        published_as=it.publish_name or "",
        overall=overall,
        per_tag=per_tag,
        exports=tuple(rows),
    )


def tags_held(data: Any) -> list[Tag]:
    """Return the distinct tags of a tags.json document: the workspace's, then snapshot-only ones.

    The manifest's and the ready message's tag count is the length of this list, so they
    count what the index shows.
    """
    if not isinstance(data, dict):
        return []
    tags = [Tag.from_dict(t) for t in data.get("workspace") or []]
    seen = {t.id.lower() for t in tags}
    for listed in (data.get("iterations") or {}).values():
        for raw in listed:
            tag = Tag.from_dict(raw)
            if tag.id.lower() not in seen:
                seen.add(tag.id.lower())
                tags.append(tag)
    return tags


def add_views(
    writer: PackageWriter,
    info: PackageInfo,
    *,
    built_at: datetime,
    project_id: str | None,
) -> None:
    """Add index.html, its pages, the COCO file and labels.csv (classification).

    `project_id` is the project whose images.jsonl/predictions.jsonl the package holds (None
    for exports without images). Raises MalformedResponse when a file the export wrote is not
    what the Training API returns (it was checked once already, so this means a bug).
    """
    v = _Views(writer, built_at)
    projects = [Project.from_dict(p) for p in v.json("projects.json") or []]
    single = len(projects) == 1
    root_iterations = v.json("iterations.json")
    exports = v.json("exports.json")
    views: list[webpage.ProjectView] = []
    for project in projects:

        def own(name: str, project: Project = project) -> str:
            nested = package.project_path(project.id, name)
            return nested if writer.has(nested) or not single else name

        iterations = [Iteration.from_dict(i) for i in v.json(own("iterations.json")) or []]
        if not iterations and single and isinstance(root_iterations, list):
            iterations = [Iteration.from_dict(i) for i in root_iterations]
        v.iteration_names.update({it.id.lower(): it.name for it in iterations})
        tags = tags_held(v.json(own("tags.json")))
        mine = project_id is not None and project.id.lower() == project_id.lower()
        image_pages: list[PageLink] = []
        prediction_pages: list[PageLink] = []
        files: list[tuple[str, str]] = []
        # A data subject's package holds the images of several projects, each in its folder.
        listing = package.project_path(project.id, "images.jsonl")
        if not writer.has(listing):
            listing = "images.jsonl" if mine else ""
        if listing and writer.has(listing):
            runs, has_regions = _image_scopes(v, listing)
            detection = _is_detection(project, has_regions)
            image_pages, files = _images(v, info, project, tags, detection, listing, runs)
        else:
            detection = _is_detection(project, False)
        if mine and writer.has("predictions.jsonl"):
            prediction_pages = v.paged(
                "predictions.jsonl",
                "predictions",
                "Stored predictions",
                lambda r: None,
                v.prediction_card,
                label_of=lambda key: "kept by the service for 30 days",
            )
        views.append(
            webpage.ProjectView(
                name=project.name,
                id=project.id,
                kind=_kind(project, detection),
                description=project.description or "",
                iterations=tuple(_iteration_view(v, it, exports) for it in iterations),
                tags=tuple(
                    (t.name, t.type, "" if t.image_count is None else f"{t.image_count:,}")
                    for t in tags
                ),
                image_pages=tuple(image_pages),
                prediction_pages=tuple(prediction_pages),
                files=tuple(files),
            )
        )
    head = webpage.Header(
        title=f"Custom Vision data export, request {info.request_id}",
        rows=(
            ("Request", info.request_id),
            ("Requested by", info.requester),
            ("Ticket", info.ticket or ""),
            ("Reason", info.reason or ""),
            ("Scope", info.scope),
            ("Statutory deadline", info.clock(built_at.date())),
            ("Source", f"{info.endpoint_host}, Custom Vision Training API {info.api_version}"),
            ("Export started", _time(info.started_at)),
            ("This index built", _time(built_at)),
        ),
    )
    sections = [
        webpage.Section(
            "About this package",
            "about",
            (
                "This page and the pages it links to show the data in this package; the JSON "
                "files next to it hold everything exactly as the Custom Vision Training API "
                "returned it, and README.txt says what each file holds.",
                "The pages work offline and load nothing from the internet: images are shown "
                "from the files in this package.",
                "If this package came as several zip files, unzip all of them into the same "
                "folder; each image says which part holds its file, and manifest.json lists "
                "every file with its part and SHA-256 checksum."
                if v.multi
                else "manifest.json lists every file with its SHA-256 checksum.",
            ),
        )
    ]
    v.add_text(INDEX_NAME, webpage.index_page(head, views, sections))


def _images(
    v: _Views,
    info: PackageInfo,
    project: Project,
    tags: Sequence[Tag],
    detection: bool,
    listing: str,
    runs: list[_Scope],
) -> tuple[list[PageLink], list[tuple[str, str]]]:
    """Write the image pages, the COCO file and (classification) labels.csv in one pass.

    `listing` is the project's images.jsonl; one in a project's folder gets that project's
    own page names and labels.csv (a package of several projects' images).
    """
    writer = v.writer
    nested = listing != "images.jsonl"
    stem = f"images-{project.id.lower()}" if nested else "images"
    labels_name = package.project_path(project.id, LABELS_NAME) if nested else LABELS_NAME
    name = package.coco_path(project.id)
    work = writer.temp_dir / f"coco-{project.id.lower()}"
    work.mkdir(parents=True, exist_ok=True)
    labels_path = work / "labels.csv"
    seen: set[int] = set()
    with (
        coco.CocoFile(
            work,
            info={
                "description": f"Custom Vision project {project.name}",
                "cv_project_id": project.id,
                "cv_request": info.request_id,
                "date_created": iso(v.built_at),
                "convention": "object detection: one annotation per region, bbox in pixels"
                if detection
                else "classification: one annotation per image tag, without bbox",
            },
            categories=[(t.id, t.name) for t in tags],
            detection=detection,
        ) as coco_file,
        labels_path.open("w", encoding="utf-8", newline="") as labels,
    ):
        labels.write(coco.label_header())

        def card(record: Mapping[str, Any]) -> Card:
            # Each line is parsed once, for its card and for its COCO image and labels row.
            image = Image.from_dict(record.get("image"), copy=False)  # the line is ours
            add(record, image)
            return v.image_card(record, image)

        def add(record: Mapping[str, Any], image: Image) -> None:
            key = uuid.UUID(image.id).int  # 128-bit ints: a small set even for 100,000 images
            if key in seen:
                return  # one COCO image per distinct image: the first scope listing it
            seen.add(key)
            file = record.get("file") if isinstance(record.get("file"), str) else None
            if file is not None and writer.entry(file) is None:
                file = None
            tag_pairs = [(t.tag_id or "", t.tag_name or "") for t in image.tags if t.tag_id]
            coco_file.add_image(
                image.id,
                file,
                image.width,
                image.height,
                labels=tag_pairs,
                regions=[
                    (r.tag_id, r.tag_name or "", r.left, r.top, r.width, r.height)
                    for r in image.regions
                ],
            )
            if not detection:
                labels.write(coco.label_row(file, image.id, [n for _, n in tag_pairs]))

        pages = v.paged(listing, stem, "Images", _scope_of, card, runs=runs)
    files: list[tuple[str, str]] = []
    convention = (
        "object detection: one annotation per region, bbox in pixels"
        if detection
        else "classification: image-level labels, annotations without bbox"
    )
    path = coco_file.close()
    if not writer.has(name):
        writer.add_file(name, path)
    files.append(
        (
            name,
            f"COCO annotations ({convention}); {coco_file.images:,} images, "
            f"{coco_file.annotations:,} annotations",
        )
    )
    writer.note(f"{name}: COCO annotations of project {project.name} ({project.id}), {convention}.")
    if detection:
        labels_path.unlink()
    else:
        if not writer.has(labels_name):
            writer.add_file(labels_name, labels_path)
        files.append((labels_name, "the tags of each image, one line per image (CSV)"))
    return pages, files
