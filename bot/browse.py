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
whatever the number of images. An export of one project without files builds the views of its
images.jsonl while the listing arrives (`streamed_images`, fed each line as it is written), so
that after the last call only the pages' heads (which name the totals) and the copying remain;
every other listing is read back from the package. Images are shown from the package's own
files (relative paths); the service's addresses in the JSON are never used. When the package
spans several parts, each image says which part holds its file. Rendering is bot.webpage's (pure).
A resumed export renders the same pages again (the build time is the caller's) and adds only
those not already in the package.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bot import coco, package, webpage
from bot.clock import iso
from bot.ids import guid_key
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
_CHUNK = 256 * 1024  # characters read at a time from a page's body file
BOX_THRESHOLD = 0.5  # stored predictions: boxes drawn from this probability up


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@dataclass
class _Scope:
    """A run of listing lines of one scope, and the pages it takes (counted as lines come)."""

    key: str | None  # iteration id, None for the workspace
    label: str
    lines: int
    first_page: int  # 1-based number of its first page

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.lines / IMAGES_PER_PAGE))


class _Views:
    def __init__(self, writer: PackageWriter) -> None:
        self.writer = writer
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

    def add_text(self, name: str, chunks: Iterable[str]) -> None:
        if self.writer.has(name):
            return  # a resumed export: a kept part holds it
        path = self.writer.temp_dir / f"view-{uuid.uuid4().hex}.tmp"
        with path.open("w", encoding="utf-8", newline="\n") as f:
            for chunk in chunks:
                f.write(chunk)
        self.writer.add_file(name, path)

    def scope_label(self, key: str | None) -> str:
        if key is None:
            return "training workspace"
        return f"snapshot of iteration {self.iteration_names.get(key.lower(), key)}"

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


def _body(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        while chunk := f.read(_CHUNK):
            yield chunk


class _Pager:
    """Pages of cards, IMAGES_PER_PAGE a page and one scope a page, written as the cards come.

    A page's head says where it stands among all the pages and in its scope ("page 3 of 40:
    Images 1,001 to 1,500 of 2,300"), known only after the last card: so the cards of each page
    wait, rendered, in a body file of their own (written once the page is full), and `finish`
    puts each body in its page.
    """

    def __init__(self, v: _Views, stem: str, what: str, label_of: Callable[[Any], str]) -> None:
        self.v = v
        self.stem = stem
        self.what = what
        self.label_of = label_of
        self.runs: list[_Scope] = []
        self._bodies: list[Path] = []
        self._cards: list[str] = []  # the open page's

    def add(self, key: Any, card: str) -> None:
        """Add a rendered card (webpage.card_html) to the pages of scope `key`."""
        run = self.runs[-1] if self.runs else None
        if run is None or run.key != key:
            first = run.first_page + run.pages if run is not None else 1
            run = _Scope(key, self.label_of(key), 0, first)
            self.runs.append(run)
        if run.lines % IMAGES_PER_PAGE == 0:
            self.flush()
        self._cards.append(card)
        run.lines += 1

    def flush(self) -> None:
        """Write the open page's cards to its body file."""
        if not self._cards:
            return
        path = self.v.writer.temp_dir / f"cards-{uuid.uuid4().hex}.tmp"
        self._bodies.append(path)
        with path.open("w", encoding="utf-8", newline="\n") as body:
            body.write("".join(self._cards))
        self._cards.clear()

    def discard(self) -> None:
        """Drop the cards (idempotent); nothing is added."""
        self._cards.clear()
        for path in self._bodies:
            path.unlink(missing_ok=True)
        self._bodies = []

    def finish(self) -> list[PageLink]:
        """Add the pages not in the package yet; return the links to every page, in order."""
        self.flush()
        if not self.runs:
            return []
        last = self.runs[-1]
        total = last.first_page + last.pages - 1
        names = [package.view_page_path(self.stem, n) for n in range(1, total + 1)]
        links: list[PageLink] = []
        pages: list[_Scope] = []  # the run of each page
        for run in self.runs:
            for i in range(run.pages):
                first = i * IMAGES_PER_PAGE + 1
                end = min(run.lines, first + IMAGES_PER_PAGE - 1)
                label = f"{self.what} {first:,} to {end:,} of {run.lines:,} ({run.label})"
                links.append(PageLink(names[len(links)], label))
                pages.append(run)
        for number, (run, body) in enumerate(zip(pages, self._bodies, strict=True), 1):
            self.v.add_text(
                names[number - 1],
                webpage.cards_page(
                    f"{self.what} ({run.label})",
                    f"page {number} of {total}: {links[number - 1].label}",
                    _body(body),
                    prev=names[number - 2].split("/")[-1] if number > 1 else None,
                    nxt=names[number].split("/")[-1] if number < total else None,
                ),
            )
            body.unlink()
        self._bodies = []
        return links


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


def _projects(v: _Views) -> tuple[list[Project], Any]:
    """Return the projects of projects.json and the root iterations.json."""
    return [Project.from_dict(p) for p in v.json("projects.json") or []], v.json("iterations.json")


def _project_files(
    v: _Views, project: Project, single: bool, root_iterations: Any
) -> tuple[list[Iteration], list[Tag]]:
    """Return a project's iterations and tags from the package (its folder, else the root),
    and learn the names of its iterations."""

    def own(name: str) -> str:
        nested = package.project_path(project.id, name)
        return nested if v.writer.has(nested) or not single else name

    iterations = [Iteration.from_dict(i) for i in v.json(own("iterations.json")) or []]
    if not iterations and single and isinstance(root_iterations, list):
        iterations = [Iteration.from_dict(i) for i in root_iterations]
    v.iteration_names.update({it.id.lower(): it.name for it in iterations})
    return iterations, tags_held(v.json(own("tags.json")))


def streamed_images(writer: PackageWriter, info: PackageInfo, project_id: str) -> ImageViews:
    """Return the views of `project_id`'s images.jsonl, to be fed each line as it is written.

    For an export of one project without files (a line is final once written), whose
    projects.json, iterations.json and tags.json are in the package already: the pages, COCO
    file and labels.csv are then built while the next pages of the listing are awaited, and
    `add_views(streamed=...)` only adds them. Raises ValueError when projects.json does not
    hold the project.
    """
    v = _Views(writer)
    projects, root_iterations = _projects(v)
    found = [p for p in projects if p.id.lower() == project_id.lower()]
    if len(projects) != 1 or not found:
        raise ValueError(f"projects.json does not hold project {project_id[:40]!r} alone")
    _, tags = _project_files(v, found[0], True, root_iterations)
    # A classification project whose images turn out to have regions is object detection
    # after all (`_is_detection`): the views are then built again from the listing.
    return ImageViews(v, info, found[0], tags, "images.jsonl", _is_detection(found[0], False))


def add_views(
    writer: PackageWriter,
    info: PackageInfo,
    *,
    built_at: datetime,
    project_id: str | None,
    streamed: ImageViews | None = None,
) -> None:
    """Add index.html, its pages, the COCO file and labels.csv (classification).

    `project_id` is the project whose images.jsonl/predictions.jsonl the package holds (None
    for exports without images). `streamed`: that listing's views built while it was written
    (`streamed_images`), used when they hold every line. Raises MalformedResponse when a file
    the export wrote is not what the Training API returns (it was checked once already, so
    this means a bug).
    """
    v = _Views(writer)
    projects, root_iterations = _projects(v)
    single = len(projects) == 1
    exports = v.json("exports.json")
    views: list[webpage.ProjectView] = []
    for project in projects:
        iterations, tags = _project_files(v, project, single, root_iterations)
        mine = project_id is not None and project.id.lower() == project_id.lower()
        image_pages: list[PageLink] = []
        prediction_pages: list[PageLink] = []
        files: list[tuple[str, str]] = []
        # A data subject's package holds the images of several projects, each in its folder.
        listing = package.project_path(project.id, "images.jsonl")
        if not writer.has(listing):
            listing = "images.jsonl" if mine else ""
        if listing and writer.has(listing):
            images = streamed if streamed is not None and streamed.holds(project, listing) else None
            if images is None:
                images = _listed_images(v, info, project, tags, listing)
            else:
                streamed = None
            detection = images.detection
            image_pages, files = images.finish(built_at)
        else:
            detection = _is_detection(project, False)
        if mine and writer.has("predictions.jsonl"):
            pager = _Pager(
                v,
                "predictions",
                "Stored predictions",
                lambda key: "kept by the service for 30 days",
            )
            for record in v.lines("predictions.jsonl"):
                pager.add(None, webpage.card_html(v.prediction_card(record)))
            prediction_pages = pager.finish()
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
    if streamed is not None:
        streamed.discard()  # not this package's listing after all
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


def _has_regions(v: _Views, listing: str) -> bool:
    """Return whether any image of `listing` has a region (a line holding `"regions":[{`:
    lines are compact JSON, so only those are parsed)."""
    path = v.writer.kept(listing)
    if path is None:
        return False
    with path.open(encoding="utf-8") as f:
        for line in f:
            if '"regions":[{' in line and json.loads(line).get("image", {}).get("regions"):
                return True
    return False


def _listed_images(
    v: _Views, info: PackageInfo, project: Project, tags: Sequence[Tag], listing: str
) -> ImageViews:
    """Return the views of `listing` built from the package's copy of it."""
    detection = _is_detection(project, False) or _has_regions(v, listing)
    images = ImageViews(v, info, project, tags, listing, detection)
    try:
        for record in v.lines(listing):
            images.add(record)
        images.listed()
    except BaseException:
        images.discard()
        raise
    return images


class ImageViews:
    """The image pages, COCO file and (classification) labels.csv of one images.jsonl.

    Fed a line at a time: while the export writes the listing (`streamed_images`), or from the
    package's copy of it afterwards (`add_views`); the files are the same. Each line is parsed
    once, for its card, its COCO image and its labels row. `finish` adds the files.
    `listing` is the project's images.jsonl; one in a project's folder gets that project's own
    page names and labels.csv (a package of several projects' images).
    """

    def __init__(
        self,
        v: _Views,
        info: PackageInfo,
        project: Project,
        tags: Sequence[Tag],
        listing: str,
        detection: bool,
    ) -> None:
        self.v = v
        self.project = project
        self.listing = listing
        self.detection = detection
        self.complete = False  # every line of the listing was added (`listed`)
        self.spoiled = False  # a region in what was taken for a classification project
        nested = listing != "images.jsonl"
        self.labels_name = package.project_path(project.id, LABELS_NAME) if nested else LABELS_NAME
        stem = f"images-{project.id.lower()}" if nested else "images"
        self.pager = _Pager(v, stem, "Images", v.scope_label)
        self.work = v.writer.temp_dir / f"coco-{project.id.lower()}-{uuid.uuid4().hex[:8]}"
        self.work.mkdir(parents=True)
        self.labels_path = self.work / "labels.csv"
        self.seen: set[int | str] = set()
        self.coco = coco.CocoFile(
            self.work,
            info={
                "description": f"Custom Vision project {project.name}",
                "cv_project_id": project.id,
                "cv_request": info.request_id,
                "date_created": None,  # the build time, given to finish()
                "convention": "object detection: one annotation per region, bbox in pixels"
                if detection
                else "classification: one annotation per image tag, without bbox",
            },
            categories=[(t.id, t.name) for t in tags],
            detection=detection,
        )
        self.labels = self.labels_path.open("w", encoding="utf-8", newline="")
        self.labels.write(coco.label_header())

    def holds(self, project: Project, listing: str) -> bool:
        """Return True when these are the complete views of `project`'s `listing`."""
        return (
            self.complete
            and not self.spoiled
            and listing == self.listing
            and project.id.lower() == self.project.id.lower()
        )

    def listed(self) -> None:
        """Say that every line of the listing was added; its last page is written."""
        self.pager.flush()
        self.complete = True

    def add(self, record: Mapping[str, Any]) -> None:
        """Add one line of the listing, exactly as the package holds it."""
        if self.spoiled:
            return
        image = Image.from_dict(record.get("image"), copy=False)  # the line is ours
        if image.regions and not self.detection:
            self.spoiled = True
            return
        key = guid_key(image.id)
        if key not in self.seen:  # one COCO image per distinct image: the first scope's
            self.seen.add(key)
            file = record.get("file") if isinstance(record.get("file"), str) else None
            if file is not None and self.v.writer.entry(file) is None:
                file = None
            tag_pairs = [(t.tag_id or "", t.tag_name or "") for t in image.tags if t.tag_id]
            self.coco.add_image(
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
            if not self.detection:
                self.labels.write(coco.label_row(file, image.id, [n for _, n in tag_pairs]))
        self.pager.add(_scope_of(record), webpage.card_html(self.v.image_card(record, image)))

    def discard(self) -> None:
        """Drop everything built so far (idempotent); nothing is added."""
        self.pager.discard()
        self.coco.discard()
        with suppress(OSError):
            self.labels.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def finish(self, built_at: datetime) -> tuple[list[PageLink], list[tuple[str, str]]]:
        """Add the pages, the COCO file and labels.csv; return the page links and the files
        (name, what it holds) for the index."""
        writer, project = self.v.writer, self.project
        try:
            pages = self.pager.finish()
            self.labels.close()
            self.coco.info["date_created"] = iso(built_at)
            path = self.coco.close()
        except BaseException:
            self.discard()
            raise
        name = package.coco_path(project.id)
        convention = (
            "object detection: one annotation per region, bbox in pixels"
            if self.detection
            else "classification: image-level labels, annotations without bbox"
        )
        if not writer.has(name):
            writer.add_file(name, path)
        files = [
            (
                name,
                f"COCO annotations ({convention}); {self.coco.images:,} images, "
                f"{self.coco.annotations:,} annotations",
            )
        ]
        writer.note(
            f"{name}: COCO annotations of project {project.name} ({project.id}), {convention}."
        )
        if not self.detection:
            if not writer.has(self.labels_name):
                writer.add_file(self.labels_name, self.labels_path)
            files.append((self.labels_name, "the tags of each image, one line per image (CSV)"))
        shutil.rmtree(self.work, ignore_errors=True)
        return pages, files
