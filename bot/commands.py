"""The commands as data: what `/cv` asks for, as frozen dataclasses, and their stored form. Pure.

`bot.parser.parse` builds these from the text a person typed; the store keeps an export or a
deletion as `to_dict()` (plain JSON), and the jobs read it back. `from_dict` checks each field's
type and value; `bot.parser.load_request` (what jobs use) also checks that the whole request is
one `parse` can produce. `describe()` is the one-line summary people read in messages. This
module imports neither the parser nor the help: they build on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, Literal, TypeAlias

from bot.ids import is_guid, normalize_guid
from bot.wording import count, join_words, plural, short_id

MAX_TICKET = 100
MAX_REASON = 1000
# Image metadata limits of Custom Vision v3.3 (NOTES-customvision.md, "Image metadata").
MAX_METADATA_KEY = 128
MAX_METADATA_VALUE = 256
MAX_METADATA_PAIRS = 10  # per image: more ANDed pairs than that can match nothing

Tagging: TypeAlias = Literal["all", "tagged", "untagged"]
Selector: TypeAlias = Literal["ids", "tag", "untagged", "all", "subject"]
AuditFormat: TypeAlias = Literal["csv", "jsonl"]


class ExportKind(StrEnum):
    ACCOUNT = "account"
    PROJECTS = "projects"
    PROJECT = "project"
    ITERATIONS = "iterations"
    ITERATION = "iteration"
    PERFORMANCE = "performance"
    TAGS = "tags"
    TAG = "tag"
    IMAGES = "images"
    EXPORTS = "exports"
    PREDICTIONS = "predictions"
    SUBJECT = "subject"  # one person's images, found by Selectors in every project


class DeleteKind(StrEnum):
    PROJECT = "project"
    ITERATION = "iteration"
    ITERATIONS = "iterations"
    TAG = "tag"
    IMAGES = "images"
    PREDICTIONS = "predictions"
    SUBJECT = "subject"  # one person's images, found by Selectors in every project
    ACCOUNT = "account"
    EXPORTS = "exports"


@dataclass(frozen=True)
class Meta:
    """Who asked for what, recorded with an export or a deletion."""

    ticket: str | None = None
    reason: str | None = None
    received: date | None = None  # --received; None: the day the bot got the command


@dataclass(frozen=True)
class Help:
    topic: str | None = None  # None, "export", "export images", "audit verify", ...


@dataclass(frozen=True)
class Status:
    request_id: str | None = None  # "R-1042"; None: the caller's open requests
    all: bool = False  # every open request, posted as a file


@dataclass(frozen=True)
class Cancel:
    request_id: str


@dataclass(frozen=True)
class Retry:
    request_id: str


@dataclass(frozen=True)
class Resend:
    request_id: str


@dataclass(frozen=True)
class AuditExport:
    request_id: str | None = None
    since: date | None = None
    format: AuditFormat = "csv"


@dataclass(frozen=True)
class AuditVerify:
    pass


@dataclass(frozen=True)
class Extend:
    """Extend a request's statutory deadline (Art. 12(3) GDPR) by `months` more."""

    request_id: str
    months: int  # 1 or 2
    reason: str


@dataclass(frozen=True)
class Report:
    """The data-protection officer's report of requests received from `since` to `until`."""

    since: date | None = None
    until: date | None = None


@dataclass(frozen=True)
class Selectors:
    """Which images belong to one data subject, and where to look (`bot.subject`).

    Metadata pairs are ANDed; tag names are alternatives (any tag of that name, matched
    case-insensitively), ANDed with the pairs; `project_ids` and `resources` (lower-cased
    names) narrow the scope (empty: every project, every configured resource).
    """

    metadata: tuple[tuple[str, str], ...] = ()
    tag_names: tuple[str, ...] = ()
    project_ids: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()

    def describe(self) -> str:
        """Return the selector in words, e.g. `metadata customer=4711 and tag named "Jane"`."""
        parts: list[str] = []
        if self.metadata:
            pairs = " and ".join(f"{key}={value}" for key, value in self.metadata)
            parts.append(f"metadata {pairs}")
        if self.tag_names:
            names = " or ".join(f'"{name}"' for name in self.tag_names)
            parts.append(f"{plural(len(self.tag_names), 'tag')} named {names}")
        text = " and ".join(parts)
        if self.project_ids:
            projects = join_words(short_id(p) for p in self.project_ids)
            text += f" in {plural(len(self.project_ids), 'project')} {projects}"
        if self.resources:
            text += f" on {plural(len(self.resources), 'resource')} {join_words(self.resources)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; `_Fields.selectors` reads it back."""
        return {
            "metadata": [list(pair) for pair in self.metadata],
            "tag_names": list(self.tag_names),
            "project_ids": list(self.project_ids),
            # Only when narrowed: a request searching every resource is stored as before.
            **({"resources": list(self.resources)} if self.resources else {}),
        }


@dataclass(frozen=True)
class Find:
    """Count one data subject's images in every project and trained iteration searched."""

    selectors: Selectors


@dataclass(frozen=True)
class Export:
    kind: ExportKind
    project_id: str | None = None
    iteration_id: str | None = None  # positional, or --iteration for tags, tag and images
    tag_id: str | None = None
    image_ids: tuple[str, ...] = ()
    tag_ids: tuple[str, ...] = ()  # --tag (export images); implies tagging == "tagged"
    tagging: Tagging = "all"
    files: bool = True  # False: --no-files (images, predictions)
    images: bool = True  # False: --no-images (project)
    download: bool = False  # --download (exports)
    threshold: float | None = None
    overlap: float | None = None
    meta: Meta = field(default_factory=Meta)
    # The Custom Vision resource holding project_id (lower-cased name): --resource, or the
    # one the bot found it on when it stored the request. None: the first resource.
    resource: str | None = None
    selectors: Selectors | None = None  # subject: whose images

    @property
    def personal(self) -> bool:
        """Return True when the package may hold personal data (the public-channel rule).

        Everything below the project list may: image metadata and links, tag names, prediction
        results, model exports.
        """
        return self.kind not in (ExportKind.ACCOUNT, ExportKind.PROJECTS)

    @property
    def contains_images(self) -> bool:
        """Return True when the package would hold image files."""
        if self.kind is ExportKind.PROJECT:
            return self.images
        kinds = (ExportKind.IMAGES, ExportKind.PREDICTIONS, ExportKind.SUBJECT)
        return self.kind in kinds and self.files

    @property
    def needs_files(self) -> bool:
        """Return True when the export downloads files: image files, or exported models."""
        return self.contains_images or (self.kind is ExportKind.EXPORTS and self.download)

    def describe(self) -> str:
        """Return a plain one-line summary, e.g. `export images of project 1234abcd… (...)`."""
        return _describe_export(self)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; `Export.from_dict` reads it back."""
        return {
            "verb": "export",
            "kind": self.kind.value,
            "project_id": self.project_id,
            "iteration_id": self.iteration_id,
            "tag_id": self.tag_id,
            "image_ids": list(self.image_ids),
            "tag_ids": list(self.tag_ids),
            "tagging": self.tagging,
            "files": self.files,
            "images": self.images,
            "download": self.download,
            "threshold": self.threshold,
            "overlap": self.overlap,
            "meta": _meta_to_dict(self.meta),
            # Only when set: a request on the first resource is stored as before.
            **({"resource": self.resource} if self.resource is not None else {}),
            # Only for a subject: every other request is stored as before.
            **({} if self.selectors is None else {"selectors": self.selectors.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Export:
        """Return the Export stored by `to_dict`; raise ValueError when a field is malformed."""
        values = _Fields(data, "export", _EXPORT_KEYS)
        export = cls(
            kind=ExportKind(values.kind(tuple(ExportKind))),
            project_id=values.guid("project_id"),
            iteration_id=values.guid("iteration_id"),
            tag_id=values.guid("tag_id"),
            image_ids=values.guids("image_ids"),
            tag_ids=values.guids("tag_ids"),
            tagging=TAGGINGS[values.choice("tagging", tuple(TAGGINGS), "all")],
            files=values.flag("files", True),
            images=values.flag("images", True),
            download=values.flag("download", False),
            threshold=values.number("threshold"),
            overlap=values.number("overlap"),
            meta=values.meta(),
            resource=values.resource(),
            selectors=values.selectors(),
        )
        return export


@dataclass(frozen=True)
class Delete:
    kind: DeleteKind
    project_id: str | None = None
    iteration_id: str | None = None
    tag_id: str | None = None  # positional (tag), or --tag (images)
    selector: Selector | None = None  # images: which images; predictions: "ids" or "all"
    image_ids: tuple[str, ...] = ()
    prediction_ids: tuple[str, ...] = ()
    meta: Meta = field(default_factory=Meta)
    resource: str | None = None  # as Export.resource
    # Whose images: kind subject (every project searched), or images with selector "subject"
    selectors: Selectors | None = None

    def describe(self) -> str:
        """Return a plain one-line summary, e.g. `delete untagged images of project 1234abcd…`."""
        return _describe_delete(self)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; `Delete.from_dict` reads it back."""
        return {
            "verb": "delete",
            "kind": self.kind.value,
            "project_id": self.project_id,
            "iteration_id": self.iteration_id,
            "tag_id": self.tag_id,
            "selector": self.selector,
            "image_ids": list(self.image_ids),
            "prediction_ids": list(self.prediction_ids),
            "meta": _meta_to_dict(self.meta),
            # Only when set: a request on the first resource is stored as before.
            **({"resource": self.resource} if self.resource is not None else {}),
            **({} if self.selectors is None else {"selectors": self.selectors.to_dict()}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delete:
        """Return the Delete stored by `to_dict`; raise ValueError when a field is malformed."""
        values = _Fields(data, "delete", _DELETE_KEYS)
        selector = values.choice("selector", (*SELECTORS, None), None)
        delete = cls(
            kind=DeleteKind(values.kind(tuple(DeleteKind))),
            project_id=values.guid("project_id"),
            iteration_id=values.guid("iteration_id"),
            tag_id=values.guid("tag_id"),
            selector=None if selector is None else SELECTORS[selector],
            image_ids=values.guids("image_ids"),
            prediction_ids=values.guids("prediction_ids"),
            meta=values.meta(),
            resource=values.resource(),
            selectors=values.selectors(),
        )
        return delete


Command: TypeAlias = (
    Help
    | Status
    | Cancel
    | Retry
    | Resend
    | AuditExport
    | AuditVerify
    | Extend
    | Report
    | Find
    | Export
    | Delete
)


def request_from_dict(data: Mapping[str, Any]) -> Export | Delete:
    """Return the Export or Delete stored by `to_dict` (by its "verb"); raise ValueError."""
    verb = data.get("verb") if isinstance(data, Mapping) else None
    if verb == "export":
        return Export.from_dict(data)
    if verb == "delete":
        return Delete.from_dict(data)
    raise ValueError(f"not a stored export or delete (verb {verb!r})")


TAGGINGS: dict[str | None, Tagging] = {"all": "all", "tagged": "tagged", "untagged": "untagged"}
SELECTORS: dict[str | None, Selector] = {
    "ids": "ids",
    "tag": "tag",
    "untagged": "untagged",
    "all": "all",
    "subject": "subject",  # one person's images: Delete.selectors
}


# --- describing and storing -----------------------------------------------------------------


def _on(resource: str | None) -> str:
    """Return where a project is, as its summary says it with several resources."""
    return "" if resource is None else f" (on {resource})"


def _describe_export(export: Export) -> str:
    project, iteration = short_id(export.project_id), short_id(export.iteration_id)
    project += _on(export.resource)
    details: list[str] = []
    kind = export.kind
    if kind is ExportKind.ACCOUNT:
        text = "export the whole account"
    elif kind is ExportKind.PROJECTS:
        text = "export the list of projects"
    elif kind is ExportKind.PROJECT:
        text = f"export project {project}"
        if not export.images:
            details.append("without images")
    elif kind is ExportKind.ITERATIONS:
        text = f"export iterations of project {project}"
    elif kind is ExportKind.ITERATION:
        text = f"export iteration {iteration} of project {project}"
    elif kind is ExportKind.PERFORMANCE:
        text = f"export performance of iteration {iteration} of project {project}"
        if export.threshold is not None:
            details.append(f"threshold {export.threshold:g}")
        if export.overlap is not None:
            details.append(f"overlap {export.overlap:g}")
    elif kind in (ExportKind.TAGS, ExportKind.TAG):
        text = (
            f"export tags of project {project}"
            if kind is ExportKind.TAGS
            else f"export tag {short_id(export.tag_id)} of project {project}"
        )
        if export.iteration_id:
            details.append(f"iteration {iteration}")
    elif kind is ExportKind.IMAGES:
        text = f"export images of project {project}"
        if export.image_ids:
            details.append(count(len(export.image_ids), "image id"))
        if export.selectors is not None:
            details.append(export.selectors.describe())
        if export.tag_ids:
            tags = join_words(short_id(t) for t in export.tag_ids)
            details.append(f"with {plural(len(export.tag_ids), 'tag')} {tags}")
        elif export.tagging != "all":
            details.append(export.tagging)
        if export.iteration_id:
            details.append(f"iteration {iteration}")
        if not export.files:
            details.append("without files")
    elif kind is ExportKind.EXPORTS:
        text = f"export model exports of iteration {iteration} of project {project}"
        if export.download:
            details.append("with the exported files")
    elif kind is ExportKind.SUBJECT:
        assert export.selectors is not None  # a subject is parsed with its selectors
        text = f"export the images of one person: {export.selectors.describe()}"
        if not export.files:
            details.append("without files")
    else:
        text = f"export stored predictions of project {project}"
        if not export.files:
            details.append("without files")
    return f"{text} ({', '.join(details)})" if details else text


def _describe_delete(delete: Delete) -> str:
    project, iteration = short_id(delete.project_id), short_id(delete.iteration_id)
    project += _on(delete.resource)
    kind = delete.kind
    if kind is DeleteKind.PROJECT:
        return f"delete project {project}"
    if kind is DeleteKind.ITERATION:
        return f"delete iteration {iteration} of project {project}"
    if kind is DeleteKind.ITERATIONS:
        return f"delete every trained iteration of project {project}"
    if kind is DeleteKind.TAG:
        return f"delete tag {short_id(delete.tag_id)} of project {project}"
    if kind is DeleteKind.IMAGES:
        which = {
            "ids": count(len(delete.image_ids), "image"),
            "tag": f"images with tag {short_id(delete.tag_id)}",
            "untagged": "untagged images",
            "subject": f"images of one person ({(delete.selectors or Selectors()).describe()})",
        }.get(delete.selector or "all", "all images")
        return f"delete {which} of project {project}"
    if kind is DeleteKind.SUBJECT:
        return f"delete the images of one person: {(delete.selectors or Selectors()).describe()}"
    if kind is DeleteKind.PREDICTIONS:
        if delete.selector == "ids":
            which = count(len(delete.prediction_ids), "stored prediction")
            return f"delete {which} of project {project}"
        return f"delete all stored predictions of project {project}"
    if kind is DeleteKind.ACCOUNT:
        return "delete the Custom Vision account"
    return f"delete model exports of iteration {iteration} of project {project}"


def _meta_to_dict(meta: Meta) -> dict[str, Any]:
    stored: dict[str, Any] = {"ticket": meta.ticket, "reason": meta.reason}
    if meta.received is not None:  # only when typed: the day resolved is the deadline's
        stored["received"] = meta.received.isoformat()
    return stored


_EXPORT_KEYS = frozenset(Export(ExportKind.SUBJECT, resource="r", selectors=Selectors()).to_dict())
_DELETE_KEYS = frozenset(Delete(DeleteKind.ACCOUNT, resource="r", selectors=Selectors()).to_dict())
_IDS = frozenset({"verb", "ids"})


class _Fields:
    """Typed reads of a stored dict; every problem is a ValueError naming the field."""

    def __init__(self, data: Mapping[str, Any], verb: str, keys: frozenset[str]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"a stored {verb} must be an object, not {type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in keys)
        if unknown:
            raise ValueError(
                f"unknown {plural(len(unknown), 'field')} in a stored {verb}: {join_words(unknown)}"
            )
        if data.get("verb") != verb:
            raise ValueError(f"not a stored {verb}: verb is {data.get('verb')!r}")
        self.data = data

    def kind(self, kinds: tuple[str, ...]) -> str:
        value = self.data.get("kind")
        if not isinstance(value, str) or value not in kinds:
            raise ValueError(f"kind: not a valid kind: {value!r:.60}")
        return value

    def guid(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not is_guid(value):
            raise ValueError(f"{key}: not a GUID: {value!r:.60}")
        return normalize_guid(value)

    def guids(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list | tuple):
            raise ValueError(f"{key}: not a list: {value!r:.60}")
        if not all(isinstance(item, str) and is_guid(item) for item in value):
            raise ValueError(f"{key}: every item must be a GUID")
        return tuple(normalize_guid(item) for item in value)

    def choice(self, key: str, choices: tuple[str | None, ...], default: str | None) -> str | None:
        value = self.data.get(key, default)
        if not (value is None or isinstance(value, str)) or value not in choices:
            raise ValueError(f"{key}: must be one of {choices}, not {value!r:.60}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise ValueError(f"{key}: not a boolean: {value!r:.60}")
        return value

    def number(self, key: str) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key}: not a number: {value!r:.60}")
        return float(value)

    def resource(self) -> str | None:
        # Absent in requests stored before several resources: the first resource's.
        value = self.data.get("resource")
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise ValueError(f"resource: not a resource name: {value!r:.60}")
        return value

    def selectors(self) -> Selectors | None:
        value = self.data.get("selectors")
        if value is None:
            return None
        keys = {"metadata", "tag_names", "project_ids"}
        if not isinstance(value, Mapping) or set(value) - {"resources"} != keys:
            raise ValueError(
                "selectors: must be an object with metadata, tag_names, project_ids (and resources)"
            )
        pairs, names = value["metadata"], value["tag_names"]
        resources = value.get("resources", [])
        if not isinstance(pairs, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            for pair in pairs
        ):
            raise ValueError("selectors: metadata must be a list of [key, value] strings")
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ValueError("selectors: tag_names must be a list of strings")
        if not isinstance(resources, list) or not all(
            isinstance(name, str) and name for name in resources
        ):
            raise ValueError("selectors: resources must be a list of resource names")
        projects = _Fields({"verb": "selectors", "ids": value["project_ids"]}, "selectors", _IDS)
        return Selectors(
            tuple((key, text) for key, text in pairs),
            tuple(names),
            projects.guids("ids"),
            tuple(resources),
        )

    def meta(self) -> Meta:
        meta = self.data.get("meta", {})
        if not isinstance(meta, Mapping) or set(meta) - {"ticket", "reason", "received"}:
            raise ValueError("meta: must be an object with ticket, reason and received")
        ticket, reason, received = meta.get("ticket"), meta.get("reason"), meta.get("received")
        if not all(value is None or isinstance(value, str) for value in (ticket, reason, received)):
            raise ValueError("meta: ticket, reason and received must be strings or null")
        try:
            day = None if received is None else date.fromisoformat(received)
        except ValueError:
            raise ValueError(f"meta: received is not a date: {received!r:.60}") from None
        return Meta(ticket=ticket, reason=reason, received=day)
