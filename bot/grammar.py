"""The slash-command grammar: the text after `/cv` in, a typed command out. Pure.

No I/O, no clock: dates come from the text only. `parse(text)` returns one of the frozen
dataclasses below or raises `bot.errors.ParseError(problem, usage)`, where `usage` is the form
that would have worked. It never raises anything else, whatever the text.

Rules, in the order they apply:

- Slack's encoding is undone while tokenizing: `&amp;`, `&lt;`, `&gt;` become `&`, `<`, `>`
  (so a `<` the user typed is never markup); a raw `<...>` is Slack markup: links and e-mail
  addresses (`<https://x|label>`, `<mailto:a@b|a@b>`) become their visible text (the label, else
  the URL, else the address); mentions (`<!channel>`, `<@U1>`, `<#C1|name>`) stay verbatim.
  Markup is one unit: its spaces and quotes do not split or quote anything.
- Tokens split on any whitespace (non-breaking and zero-width spaces included), so runs of it
  collapse. Quoting is shell-like and never raises: `"..."` (also the typographic double quotes
  U+201C..U+201F that Slack clients type) may start anywhere in a token; inside it and outside
  quotes a backslash escapes a quote or a backslash (any other backslash is literal). `'...'`
  (also U+2018..U+201B) opens only at the start of a token or after `=`, and closes only before
  whitespace or the end, so apostrophes (`it's`, typographic ones too) are literal. A quote
  never closed is a ParseError naming it.
- `help`, `export`, `delete`, `status`, `cancel`, `retry`, `resend`, `audit` are the verbs;
  export and delete take a kind. Verbs, kinds, flag names and enumerated values are
  case-insensitive. A leading `/cv`-like word (pasted from the help) is skipped; empty text
  means `help`.
- Options may appear anywhere after the verb, as `--name value` or `--name=value`. Smart
  punctuation turns `--` into a dash: a leading U+2014 or U+2013 counts as `--`, and `_` in a
  flag name counts as `-`. A token is an option only when its name part was not quoted, so
  `--reason "--all"` keeps the text. A flag's value is the next token unless that is an option.
  `--help` anywhere (or `-h`) asks for the help of the command it is in.
- Ids: GUIDs, stored lowercase (`bot.ids.normalize_guid`); `--ids a,b,...` is deduplicated in
  order (quoted, it may also hold spaces); request ids become `R-<n>`
  (`bot.ids.parse_request_id`). `export images`: `--tag` implies tagged images; `--ids` picks
  images directly, so it takes no tag filter.
- Free text: `--ticket` (at most 100 characters, no control or format characters) and
  `--reason` (at most 1000; control characters are removed, line breaks and tabs become spaces)
  are trimmed and otherwise kept verbatim: emoji, right-to-left text, `<!channel>`. Escaping them
  for display is the renderer's job.

Errors are checked in a fixed order: quotes, verb, kind, options (unknown, not for this form,
missing or unwanted value, repeated), positional arguments (malformed, missing, extra), option
values, then combinations. Every message quotes the offending text, truncated to 40 characters,
with invisible characters escaped.

Stored requests: `from_dict` accepts exactly what `parse` can produce; it checks this by parsing
the request's own command text again and comparing.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any, Literal, TypeAlias, TypeVar

from bot.errors import ParseError
from bot.ids import format_request_id, is_guid, normalize_guid, parse_request_id

MAX_TICKET = 100
MAX_REASON = 1000

Tagging: TypeAlias = Literal["all", "tagged", "untagged"]
Selector: TypeAlias = Literal["ids", "tag", "untagged", "all"]
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


class DeleteKind(StrEnum):
    PROJECT = "project"
    ITERATION = "iteration"
    ITERATIONS = "iterations"
    TAG = "tag"
    IMAGES = "images"
    PREDICTIONS = "predictions"
    ACCOUNT = "account"
    EXPORTS = "exports"


@dataclass(frozen=True)
class Meta:
    """Who asked for what, recorded with an export or a deletion."""

    ticket: str | None = None
    reason: str | None = None


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
        return self.kind in (ExportKind.IMAGES, ExportKind.PREDICTIONS) and self.files

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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Export:
        """Return the Export stored by `to_dict`; raise ValueError when `data` is not one."""
        values = _Fields(data, "export", _EXPORT_KEYS)
        export = cls(
            kind=ExportKind(values.kind(_KINDS["export"])),
            project_id=values.guid("project_id"),
            iteration_id=values.guid("iteration_id"),
            tag_id=values.guid("tag_id"),
            image_ids=values.guids("image_ids"),
            tag_ids=values.guids("tag_ids"),
            tagging=_TAGGINGS[values.choice("tagging", tuple(_TAGGINGS), "all")],
            files=values.flag("files", True),
            images=values.flag("images", True),
            download=values.flag("download", False),
            threshold=values.number("threshold"),
            overlap=values.number("overlap"),
            meta=values.meta(),
        )
        return _check_canonical(export)


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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delete:
        """Return the Delete stored by `to_dict`; raise ValueError when `data` is not one."""
        values = _Fields(data, "delete", _DELETE_KEYS)
        selector = values.choice("selector", (*_SELECTORS, None), None)
        delete = cls(
            kind=DeleteKind(values.kind(_KINDS["delete"])),
            project_id=values.guid("project_id"),
            iteration_id=values.guid("iteration_id"),
            tag_id=values.guid("tag_id"),
            selector=None if selector is None else _SELECTORS[selector],
            image_ids=values.guids("image_ids"),
            prediction_ids=values.guids("prediction_ids"),
            meta=values.meta(),
        )
        return _check_canonical(delete)


Command: TypeAlias = (
    Help | Status | Cancel | Retry | Resend | AuditExport | AuditVerify | Export | Delete
)


def request_from_dict(data: Mapping[str, Any]) -> Export | Delete:
    """Return the Export or Delete stored by `to_dict` (by its "verb"); raise ValueError."""
    verb = data.get("verb") if isinstance(data, Mapping) else None
    if verb == "export":
        return Export.from_dict(data)
    if verb == "delete":
        return Delete.from_dict(data)
    raise ValueError(f"not a stored export or delete (verb {verb!r})")


# --- the forms ------------------------------------------------------------------------------

_META_USAGE = ' [--ticket <ref>] [--reason "<text>"]'


@dataclass(frozen=True)
class _Form:
    path: str  # "export images"
    args: tuple[str, ...]  # positional placeholders: project-id, iteration-id, tag-id, request-id
    usage_line: str  # without --ticket/--reason
    summary: str
    flags: tuple[str, ...] = ()  # options besides --ticket/--reason/--help
    options: tuple[tuple[str, str], ...] = ()  # (as shown in help, what it does)
    notes: tuple[str, ...] = ()
    examples: tuple[str, ...] = ()  # what follows the command name
    optional_args: int = 0  # how many of the trailing args may be left out
    repeatable: tuple[str, ...] = ()

    @property
    def meta(self) -> bool:
        return self.path.startswith(("export ", "delete "))

    @property
    def usage(self) -> str:
        return self.usage_line + (_META_USAGE if self.meta else "")


# Example ids for the help text (a test parses every example).
_P = "6c1f2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
_I = "7d2e3f40-5a6b-4c7d-9e8f-a0b1c2d3e4f5"
_T = "8e3f4051-6b7c-4d8e-af90-b1c2d3e4f506"
_T2 = "8e3f4051-6b7c-4d8e-af90-b1c2d3e4f507"
_M1 = "9f405162-7c8d-4e9f-b0a1-c2d3e4f50617"
_M2 = "a0516273-8d9e-4fa0-b1b2-d3e4f5061728"

_APPROVAL = "Nothing is deleted until a second person approves the request."
_ITERATION_OPTION = ("--iteration <iteration-id>", "as the tags were in that trained iteration")

_FORM_LIST: tuple[_Form, ...] = (
    _Form(
        "help",
        ("topic",),
        "help [<verb> [<kind>]]",
        "Show this help, or the help of one command.",
        examples=("help", "help export images"),
        optional_args=1,
    ),
    _Form(
        "export account",
        (),
        "export account",
        "An overview of the whole account: its domains and every project's settings.",
        examples=("export account --ticket DSR-1042",),
    ),
    _Form(
        "export projects",
        (),
        "export projects",
        "The list of projects with their settings.",
        examples=("export projects",),
    ),
    _Form(
        "export project",
        ("project-id",),
        "export project <project-id> [--no-images]",
        "One project: settings, iterations, tags, images with their tags and regions, and the"
        " image files.",
        flags=("--no-images",),
        options=(("--no-images", "leave the image files out"),),
        examples=(
            f'export project {_P} --ticket DSR-1042 --reason "Access request by e-mail"',
            f"export project {_P} --no-images",
        ),
    ),
    _Form(
        "export iterations",
        ("project-id",),
        "export iterations <project-id>",
        "Every trained iteration of a project.",
        examples=(f"export iterations {_P}",),
    ),
    _Form(
        "export iteration",
        ("project-id", "iteration-id"),
        "export iteration <project-id> <iteration-id>",
        "One iteration: its details, its performance and its model exports.",
        examples=(f"export iteration {_P} {_I}",),
    ),
    _Form(
        "export performance",
        ("project-id", "iteration-id"),
        "export performance <project-id> <iteration-id> [--threshold F] [--overlap F]",
        "The performance of one iteration, overall and per tag.",
        flags=("--threshold", "--overlap"),
        options=(
            ("--threshold F", "probability threshold, a number from 0 to 1"),
            ("--overlap F", "overlap threshold (object detection), a number from 0 to 1"),
        ),
        notes=(
            "Iteration performance has no delete of its own: it is deleted with its iteration.",
        ),
        examples=(f"export performance {_P} {_I} --threshold 0.5 --overlap 0.3",),
    ),
    _Form(
        "export tags",
        ("project-id",),
        "export tags <project-id> [--iteration <iteration-id>]",
        "Every tag of a project.",
        flags=("--iteration",),
        options=(_ITERATION_OPTION,),
        examples=(f"export tags {_P}", f"export tags {_P} --iteration {_I}"),
    ),
    _Form(
        "export tag",
        ("project-id", "tag-id"),
        "export tag <project-id> <tag-id> [--iteration <iteration-id>]",
        "One tag of a project.",
        flags=("--iteration",),
        options=(_ITERATION_OPTION,),
        examples=(f"export tag {_P} {_T}",),
    ),
    _Form(
        "export images",
        ("project-id",),
        "export images <project-id> [--tagged | --untagged] [--tag <tag-id>]..."
        " [--ids <id,id,...>] [--iteration <iteration-id>] [--no-files]",
        "Images of a project with their tags and regions, and the image files.",
        flags=("--tagged", "--untagged", "--tag", "--ids", "--iteration", "--no-files"),
        options=(
            ("--tagged / --untagged", "only tagged / only untagged images"),
            ("--tag <tag-id>", "only images with this tag; repeat it for more tags"),
            ("--ids <id,id,...>", "only these images (comma-separated image ids)"),
            ("--iteration <iteration-id>", "the images of that trained iteration"),
            ("--no-files", "leave the image files out"),
        ),
        examples=(
            f"export images {_P} --tagged --iteration {_I} --no-files",
            f"export images {_P} --tag {_T} --tag {_T2}",
            f"export images {_P} --ids {_M1},{_M2} --ticket DSR-1042",
        ),
        repeatable=("--tag",),
    ),
    _Form(
        "export exports",
        ("project-id", "iteration-id"),
        "export exports <project-id> <iteration-id> [--download]",
        "The model exports of an iteration.",
        flags=("--download",),
        options=(("--download", "include the exported model files"),),
        examples=(f"export exports {_P} {_I} --download",),
    ),
    _Form(
        "export predictions",
        ("project-id",),
        "export predictions <project-id> [--no-files]",
        "The stored prediction results of a project, with the predicted images.",
        flags=("--no-files",),
        options=(("--no-files", "leave the image files out"),),
        examples=(f"export predictions {_P} --no-files",),
    ),
    _Form(
        "delete project",
        ("project-id",),
        "delete project <project-id>",
        "Delete a project with everything in it.",
        notes=(_APPROVAL,),
        examples=(f'delete project {_P} --ticket DSR-1042 --reason "Erasure request"',),
    ),
    _Form(
        "delete iteration",
        ("project-id", "iteration-id"),
        "delete iteration <project-id> <iteration-id>",
        "Delete one trained iteration.",
        notes=("The iteration's performance is deleted with it.", _APPROVAL),
        examples=(f"delete iteration {_P} {_I}",),
    ),
    _Form(
        "delete iterations",
        ("project-id",),
        "delete iterations <project-id>",
        "Delete every trained iteration of a project.",
        notes=("Their performance is deleted with them.", _APPROVAL),
        examples=(f"delete iterations {_P}",),
    ),
    _Form(
        "delete tag",
        ("project-id", "tag-id"),
        "delete tag <project-id> <tag-id>",
        "Delete a tag (the images stay, without that tag).",
        notes=(_APPROVAL,),
        examples=(f"delete tag {_P} {_T}",),
    ),
    _Form(
        "delete images",
        ("project-id",),
        "delete images <project-id> (--ids <id,id,...> | --tag <tag-id> | --untagged | --all)",
        "Delete images of a project; say which with exactly one option.",
        flags=("--ids", "--tag", "--untagged", "--all"),
        options=(
            ("--ids <id,id,...>", "these images (comma-separated image ids)"),
            ("--tag <tag-id>", "every image with this tag"),
            ("--untagged", "every untagged image"),
            ("--all", "every image of the project"),
        ),
        notes=(_APPROVAL,),
        examples=(
            f'delete images {_P} --ids {_M1},{_M2} --reason "Erasure request of a customer"',
            f"delete images {_P} --untagged",
        ),
    ),
    _Form(
        "delete predictions",
        ("project-id",),
        "delete predictions <project-id> [--ids <id,id,...>]",
        "Delete stored prediction results of a project (all of them without --ids).",
        flags=("--ids",),
        options=(("--ids <id,id,...>", "only these predictions (comma-separated ids)"),),
        notes=(_APPROVAL,),
        examples=(f"delete predictions {_P} --ids {_M1}",),
    ),
    _Form(
        "delete account",
        (),
        "delete account",
        "Delete the Custom Vision account (the Azure resource).",
        notes=(
            "This cannot be done with the Training-Key: the bot answers with the steps to do it"
            " in the Azure portal.",
            _APPROVAL,
        ),
        examples=("delete account --ticket DSR-1042",),
    ),
    _Form(
        "delete exports",
        ("project-id", "iteration-id"),
        "delete exports <project-id> <iteration-id>",
        "Delete the model exports of an iteration.",
        notes=(
            "This cannot be done with the Training-Key: the bot answers with the steps to do it.",
            _APPROVAL,
        ),
        examples=(f"delete exports {_P} {_I}",),
    ),
    _Form(
        "status",
        ("request-id",),
        "status [<request-id>] [--all]",
        "The state of a request, or of your open requests (the newest 20).",
        flags=("--all",),
        options=(("--all", "every open request, posted as a file in this channel"),),
        notes=("--all posts its file only in a private channel or a direct message with me.",),
        examples=("status", "status R-1042", "status --all"),
        optional_args=1,
    ),
    _Form(
        "cancel",
        ("request-id",),
        "cancel <request-id>",
        "Cancel a request that has not finished.",
        examples=("cancel R-1042",),
    ),
    _Form(
        "retry",
        ("request-id",),
        "retry <request-id>",
        "Run a failed request again from where it stopped (a deletion past its approval window "
        "or with an approver no longer authorised gets a fresh preview to approve).",
        examples=("retry R-1042",),
    ),
    _Form(
        "resend",
        ("request-id",),
        "resend <request-id>",
        "Post a request's held files and messages again, once their cause is fixed.",
        notes=(
            "Slack can refuse a delivery for good (the bot was removed from the channel, the"
            " channel was archived, uploads are disabled). The bot then holds it, keeps the"
            " files and tells you; fix the cause, then resend.",
        ),
        examples=("resend R-1042",),
    ),
    _Form(
        "audit",
        (),
        "audit [--request <request-id>] [--since YYYY-MM-DD] [--format csv|jsonl]",
        "Export the audit log.",
        flags=("--request", "--since", "--format"),
        options=(
            ("--request <request-id>", "only the events of this request"),
            ("--since YYYY-MM-DD", "only events from that day on"),
            ("--format csv|jsonl", "the file format (csv unless given)"),
        ),
        notes=("To check that nobody changed the log: audit verify",),
        examples=("audit --since 2026-01-31 --format jsonl", "audit --request R-1042"),
    ),
    _Form(
        "audit verify",
        (),
        "audit verify",
        "Check that the audit log's hash chain is intact.",
        examples=("audit verify",),
    ),
)

_FORMS: dict[str, _Form] = {form.path: form for form in _FORM_LIST}
_VERBS = ("help", "export", "delete", "status", "cancel", "retry", "resend", "audit")
_KINDS: dict[str, tuple[str, ...]] = {
    "export": tuple(kind.value for kind in ExportKind),
    "delete": tuple(kind.value for kind in DeleteKind),
}
# Words people type for a verb; only ever used as a suggestion, never accepted.
_VERB_HINTS = {
    "erase": "delete",
    "remove": "delete",
    "rm": "delete",
    "forget": "delete",
    "download": "export",
    "dump": "export",
    "get": "export",
    "abort": "cancel",
    "stop": "cancel",
    "rerun": "retry",
    "log": "audit",
    "verify": "audit verify",
    "?": "help",
}

_VALUE_FLAGS: dict[str, str] = {  # flag -> what it needs, for "<flag> needs ..."
    "--ticket": "a ticket reference",
    "--reason": 'a reason (in quotes when it has spaces: --reason "...")',
    "--threshold": "a number between 0 and 1",
    "--overlap": "a number between 0 and 1",
    "--iteration": "<iteration-id>",
    "--tag": "<tag-id>",
    "--ids": "a comma-separated list of ids",
    "--request": "<request-id>",
    "--since": "a date like 2026-01-31",
    "--format": "csv or jsonl",
}
_BOOL_FLAGS = ("--no-images", "--tagged", "--untagged", "--no-files", "--download", "--all")
_ALL_FLAGS = (*_VALUE_FLAGS, *_BOOL_FLAGS, "--help")
_META_FLAGS = ("--ticket", "--reason")

_TAGGINGS: dict[str | None, Tagging] = {"all": "all", "tagged": "tagged", "untagged": "untagged"}
_SELECTORS: dict[str | None, Selector] = {
    "ids": "ids",
    "tag": "tag",
    "untagged": "untagged",
    "all": "all",
}
_FORMATS: dict[str, AuditFormat] = {"csv": "csv", "jsonl": "jsonl"}


# --- tokens ---------------------------------------------------------------------------------

_DOUBLE_QUOTES = '"\u201c\u201d\u201e\u201f'
_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
_QUOTES = _DOUBLE_QUOTES + _SINGLE_QUOTES
_ESCAPABLE = _QUOTES + "\\"
_INVISIBLE_SPACES = "\u200b\u2060\ufeff"  # not str.isspace(), but Slack clients insert them
_ENTITIES = (("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"))
_MARKUP = re.compile(r"<([^\s<>|]+)(?:\|([^<>]*))?>")
_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_SLASH_COMMAND = re.compile(r"/[A-Za-z0-9_\-]+")


@dataclass(frozen=True)
class _Token:
    text: str
    bare: int  # length of the leading part that came from plain unquoted text
    quoted: bool  # some part came from quotes, escapes or Slack markup


def _is_space(char: str) -> bool:
    return char.isspace() or char in _INVISIBLE_SPACES


def slack_unescape(text: str) -> str:
    """Return text with Slack's &amp; &lt; &gt; escaping undone."""
    for entity, char in _ENTITIES[1:]:
        text = text.replace(entity, char)
    return text.replace("&amp;", "&")  # last, so "&amp;lt;" stays "&lt;"


def _unwrap(target: str, label: str | None) -> str:
    """Return the visible text of Slack markup `<target|label>` (entities decoded)."""
    target = slack_unescape(target)
    label = None if label is None else slack_unescape(label)
    if target[:1] in "!@#" or not _URL_SCHEME.match(target):
        # mentions (and anything that is not a link) are kept as written
        return f"<{target}>" if label is None else f"<{target}|{label}>"
    if label:
        return label
    return target[len("mailto:") :] if target.lower().startswith("mailto:") else target


class _Lexer:
    """Shell-like tokenizer over Slack's command text; collects a problem instead of raising."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.i = 0
        self.tokens: list[_Token] = []
        self.buf: list[str] = []
        self.bare: int | None = None  # set at the first char not from plain text
        self.in_token = False
        self.quote: str | None = None  # the opening quote while inside quotes
        self.quote_at = 0

    def run(self) -> tuple[list[_Token], str | None]:
        text, n = self.text, len(self.text)
        while self.i < n:
            char = text[self.i]
            if self.quote is None:
                if _is_space(char):
                    self._end()
                    self.i += 1
                    continue
                if char in _DOUBLE_QUOTES or (char in _SINGLE_QUOTES and self._may_open_single()):
                    self._mark_quoted()
                    self.in_token = True
                    self.quote, self.quote_at = char, self.i
                    self.i += 1
                    continue
            elif self.quote in _DOUBLE_QUOTES:
                if char in _DOUBLE_QUOTES:
                    self.quote = None
                    self.i += 1
                    continue
            elif char in _SINGLE_QUOTES and (self.i + 1 == n or _is_space(text[self.i + 1])):
                self.quote = None
                self.i += 1
                continue
            self._literal(char)
        problem = None
        if self.quote is not None:
            after = slack_unescape(text[self.quote_at + 1 :]).strip()
            where = f"before {_show(after)}" if after else "at the end"
            problem = f"unbalanced quote: the {self.quote} {where} is never closed"
        self._end()
        return self.tokens, problem

    def _may_open_single(self) -> bool:
        return not self.buf or self.buf[-1] == "="

    def _mark_quoted(self) -> None:
        if self.bare is None:
            self.bare = len(self.buf)

    def _literal(self, char: str) -> None:
        text = self.text
        self.in_token = True
        if (
            char == "\\"
            and (self.quote is None or self.quote in _DOUBLE_QUOTES)
            and self.i + 1 < len(text)
            and text[self.i + 1] in _ESCAPABLE
        ):
            self._mark_quoted()
            self.buf.append(text[self.i + 1])
            self.i += 2
            return
        if char == "&":
            for entity, decoded in _ENTITIES:
                if text.startswith(entity, self.i):
                    self.buf.append(decoded)
                    self.i += len(entity)
                    return
        if char == "<":
            match = _MARKUP.match(text, self.i)
            if match:
                self._mark_quoted()
                self.buf.append(_unwrap(match.group(1), match.group(2)))
                self.i = match.end()
                return
        self.buf.append(char)
        self.i += 1

    def _end(self) -> None:
        if self.in_token:
            text = "".join(self.buf)
            bare = len(text) if self.bare is None else self.bare
            self.tokens.append(_Token(text, bare, self.bare is not None))
        self.buf, self.bare, self.in_token = [], None, False


def _tokenize(text: str) -> tuple[list[_Token], str | None]:
    return _Lexer(text).run()


# --- options --------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    name: str  # normalised: "--tagged"; unknown names too
    typed: str  # as typed, for messages
    value: str | None
    inline: bool  # given as --name=value
    quoted: bool  # the value was quoted (free text with spaces must be)


def _as_flag(token: _Token) -> tuple[str, str, str | None] | None:
    """Return (name, typed name, inline value) when the token is an option, else None."""
    text = token.text
    eq = text.find("=")
    head = text if eq < 0 else text[:eq]
    if len(head) > token.bare:  # part of the name was quoted: a value, not an option
        return None
    if len(head) > 1 and head[0] in "\u2014\u2013":  # smart punctuation's "--"
        name = "--" + head[1:]
    elif len(head) > 2 and head.startswith("--"):
        name = head
    elif len(head) > 1 and head[0] == "-" and head[1].isascii() and head[1].isalpha():
        name = head  # one dash: an option with a typo; reported as unknown
    else:
        return None
    name = name.lower().replace("_", "-")
    if name in ("-h", "--h"):
        name = "--help"
    return name, head, (None if eq < 0 else text[eq + 1 :])


def _split(tokens: list[_Token]) -> tuple[list[_Option], list[_Token]]:
    options: list[_Option] = []
    positionals: list[_Token] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        flag = _as_flag(token)
        if flag is None:
            positionals.append(token)
            continue
        name, typed, value = flag
        quoted = token.quoted
        inline = value is not None
        if value is None and name in _VALUE_FLAGS and i < len(tokens) and not _as_flag(tokens[i]):
            value, quoted = tokens[i].text, tokens[i].quoted
            i += 1
        options.append(_Option(name, typed, value, inline, quoted))
    return options, positionals


# --- messages -------------------------------------------------------------------------------


def _show(value: str, limit: int = 40) -> str:
    """Return `value` quoted for a message: truncated, invisible characters escaped."""
    if len(value) > limit:
        value = value[: limit - 1] + "\u2026"
    shown = "".join(
        char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
        for char in value
    )
    return f"'{shown}'"


def _closest(word: str, choices: tuple[str, ...] | list[str]) -> str | None:
    found = difflib.get_close_matches(word[:40].lower(), list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def _short(guid: str | None) -> str:
    return f"{(guid or '?')[:8]}\u2026"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# --- parsing --------------------------------------------------------------------------------


def parse(text: str) -> Command:
    """Return the command in `text` (Slack's encoding); raise ParseError saying what is wrong."""
    tokens, problem = _tokenize(text)
    if tokens and not tokens[0].quoted and _SLASH_COMMAND.fullmatch(tokens[0].text):
        tokens = tokens[1:]
    if problem is not None:
        raise ParseError(problem, _best_usage(tokens))
    if not tokens:
        return Help()
    flag = _as_flag(tokens[0])
    verb = "help" if flag is not None and flag[0] == "--help" else tokens[0].text.lower()
    if verb not in _VERBS:
        raise _unknown_verb(tokens[0].text, tokens[1:])
    options, positionals = _split(tokens[1:])
    if verb == "help":
        _check_options(_FORMS["help"], options)
        return Help(_topic([p.text for p in positionals]))
    if any(option.name == "--help" for option in options):
        try:
            return Help(_form_of(verb, positionals)[0].path)
        except ParseError:
            return Help(verb)
    form, positionals = _form_of(verb, positionals)
    return _Parser(form, options, positionals).build()


def _best_usage(tokens: list[_Token]) -> str:
    """Return the usage of the form the tokens name, as far as they name one."""
    if not tokens:
        return usage("")
    verb = tokens[0].text.lower()
    if verb not in _VERBS:
        return usage("")
    _, positionals = _split(tokens[1:])
    try:
        form, _ = _form_of(verb, positionals)
    except ParseError:
        return usage(verb)
    return form.usage


def _unknown_verb(word: str, rest: list[_Token]) -> ParseError:
    guess = _VERB_HINTS.get(word.lower()) or _closest(word, _VERBS)
    if guess is None:
        return ParseError(f"unknown command {_show(word)}", usage(""))
    problem = f"unknown command {_show(word)}; did you mean '{guess}'?"
    kind = rest[0].text.lower() if rest else ""
    if f"{guess} {kind}" in _FORMS:
        return ParseError(problem, _FORMS[f"{guess} {kind}"].usage)
    return ParseError(problem, usage(guess))


def _form_of(verb: str, positionals: list[_Token]) -> tuple[_Form, list[_Token]]:
    """Return the form named by the verb (and its kind) and the positionals after it."""
    if verb == "audit":
        if positionals and positionals[0].text.lower() == "verify":
            return _FORMS["audit verify"], positionals[1:]
        return _FORMS["audit"], positionals
    if verb not in _KINDS:
        return _FORMS[verb], positionals
    kinds = _KINDS[verb]
    listed = ", ".join(kinds)
    if not positionals:
        raise ParseError(f"{verb} needs a kind: {listed}", usage(verb))
    word = positionals[0].text
    if word.lower() in kinds:
        return _FORMS[f"{verb} {word.lower()}"], positionals[1:]
    if is_guid(word):
        raise ParseError(f"{verb} needs a kind before the id: {listed}", usage(verb))
    guess = _closest(word, kinds)
    if guess is None:
        raise ParseError(
            f"unknown kind {_show(word)} for {verb}; use one of: {listed}", usage(verb)
        )
    raise ParseError(
        f"unknown kind {_show(word)} for {verb}; did you mean '{guess}'?",
        _FORMS[f"{verb} {guess}"].usage,
    )


def _topic(words: list[str]) -> str | None:
    """Return the help topic the words name; raise ParseError for anything else."""
    form_usage = _FORMS["help"].usage
    if not words:
        return None
    verb = words[0].lower()
    if verb not in _VERBS:
        guess = _VERB_HINTS.get(verb) or _closest(verb, _VERBS)
        hint = f"; did you mean '{guess}'?" if guess else f"; topics: {', '.join(_VERBS)}"
        raise ParseError(f"no help on {_show(words[0])}{hint}", form_usage)
    kinds = _KINDS.get(verb, ("verify",) if verb == "audit" else ())
    if len(words) == 1:
        return verb
    kind = words[1].lower()
    if kind not in kinds:
        if not kinds:
            raise ParseError(
                f"unexpected argument {_show(words[1])} after 'help {verb}'", form_usage
            )
        guess = _closest(kind, kinds)
        hint = f"did you mean '{guess}'?" if guess else f"use one of: {', '.join(kinds)}"
        raise ParseError(f"unknown kind {_show(words[1])} for {verb}; {hint}", form_usage)
    if len(words) > 2:
        raise ParseError(
            f"unexpected argument {_show(words[2])} after 'help {verb} {kind}'", form_usage
        )
    return f"{verb} {kind}"


def _check_options(form: _Form, options: list[_Option]) -> None:
    """Raise ParseError for the first option that is unknown, out of place or malformed."""
    allowed = (*form.flags, *(_META_FLAGS if form.meta else ()), "--help")
    seen: set[str] = set()
    for option in options:
        if option.name not in _ALL_FLAGS:
            guess = _closest(option.name, allowed)
            hint = f"; did you mean '{guess}'?" if guess else ""
            raise ParseError(f"unknown option {_show(option.typed)}{hint}", form.usage)
        if option.name not in allowed:
            raise ParseError(f"{form.path} does not take {option.name}", form.usage)
        if option.name in _VALUE_FLAGS:
            if option.value is None or (option.value == "" and not option.quoted):
                raise ParseError(f"{option.name} needs {_VALUE_FLAGS[option.name]}", form.usage)
            if option.name in seen and option.name not in form.repeatable:
                raise ParseError(f"{option.name} is given more than once", form.usage)
        elif option.inline:
            raise ParseError(f"{option.name} takes no value", form.usage)
        seen.add(option.name)


class _Parser:
    """Checks one form's options and arguments and builds its command."""

    def __init__(self, form: _Form, options: list[_Option], positionals: list[_Token]) -> None:
        self.form = form
        self.options = options
        self.positionals = positionals

    def fail(self, problem: str) -> ParseError:
        return ParseError(problem, self.form.usage)

    def build(self) -> Command:
        form = self.form
        _check_options(form, self.options)
        args = self._arguments()
        verb = form.path.split()[0]
        if verb == "export":
            return self._export(ExportKind(form.path.split()[1]), args)
        if verb == "delete":
            return self._delete(DeleteKind(form.path.split()[1]), args)
        if form.path == "audit verify":
            return AuditVerify()
        if form.path == "audit":
            return self._audit()
        request_id = args.get("request-id")
        if form.path == "status":
            if request_id is not None and self._has("--all"):
                raise self.fail("status takes either <request-id> or --all, not both")
            return Status(request_id, all=self._has("--all"))
        assert request_id is not None  # a required argument
        if form.path == "resend":
            return Resend(request_id)
        return Cancel(request_id) if form.path == "cancel" else Retry(request_id)

    # arguments

    def _arguments(self) -> dict[str, str]:
        form = self.form
        values: dict[str, str] = {}
        for name, token in zip(form.args, self.positionals, strict=False):
            values[name] = self._argument(name, token.text)
        required = form.args[: len(form.args) - form.optional_args]
        missing = [f"<{name}>" for name in required[len(self.positionals) :]]
        if missing:
            raise self.fail(f"{form.path} needs {' and '.join(missing)}")
        if len(self.positionals) > len(form.args):
            raise self.fail(self._extra(self.positionals[len(form.args)].text))
        return values

    def _argument(self, name: str, text: str) -> str:
        if name == "request-id":
            return self._request_id(text)
        what = name.replace("-", " ")
        flag = f"--{text.lower()}"
        hint = f"; did you mean '{flag}'?" if flag in self.form.flags else ""
        return self._guid(text, what, hint)

    def _extra(self, text: str) -> str:
        problem = f"unexpected argument {_show(text)}"
        if self.form.args:
            takes = " ".join(f"<{name}>" for name in self.form.args)
            problem += f" ({self.form.path} takes {takes})"
        else:
            problem += f" ({self.form.path} takes no arguments)"
        for option in self.options:
            if option.name in _META_FLAGS and not option.quoted:
                return (
                    f'{problem}; to give {option.name} with spaces, quote it: {option.name} "..."'
                )
            if option.name == "--ids" and (option.value or "").endswith(","):
                return f"{problem}; write --ids without spaces after the commas"
        flag = f"--{text.lower()}"
        if flag in self.form.flags:
            return f"{problem}; did you mean '{flag}'?"
        if self.form.path == "audit" and _closest(text, ("verify",)):
            return f"{problem}; did you mean 'audit verify'?"
        return problem

    # option values

    def _has(self, name: str) -> bool:
        return any(option.name == name for option in self.options)

    def _values(self, name: str) -> list[str]:
        return [o.value for o in self.options if o.name == name and o.value is not None]

    def _value(self, name: str) -> str | None:
        for option in self.options:
            if option.name == name:
                return option.value
        return None

    def _guid(self, text: str, what: str, hint: str = "") -> str:
        if not is_guid(text):
            raise self.fail(
                f"{_show(text)} is not a valid {what}: expected a GUID"
                f" (8-4-4-4-12 hex digits){hint}"
            )
        return normalize_guid(text)

    def _request_id(self, text: str) -> str:
        number = parse_request_id(text)
        if number is None:
            raise self.fail(f"{_show(text)} is not a request id: expected R-<number>, like R-1042")
        return format_request_id(number)

    def _ids(self, what: str) -> tuple[str, ...]:
        text = self._value("--ids")
        if text is None:
            return ()
        parts = [part for part in re.split(r"[,\s]+", text) if part]
        if not parts:
            raise self.fail(f"--ids needs at least one {what}")
        ids: dict[str, None] = {}
        for part in parts:
            if not is_guid(part):
                raise self.fail(
                    f"{_show(part)} in --ids is not a valid {what}: expected a GUID"
                    " (8-4-4-4-12 hex digits)"
                )
            ids[normalize_guid(part)] = None
        return tuple(ids)

    def _fraction(self, name: str) -> float | None:
        text = self._value(name)
        if text is None:
            return None
        if not re.fullmatch(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", text):
            raise self.fail(f"{name} must be a number between 0 and 1 (got {_show(text)})")
        number = float(text)
        if not 0.0 <= number <= 1.0:
            shown = text if len(text) <= 20 else _show(text, 20)
            raise self.fail(f"{name} must be between 0 and 1 (got {shown})")
        return number

    def _meta(self) -> Meta:
        ticket = self._value("--ticket")
        reason = self._value("--reason")
        if ticket is not None:
            ticket = ticket.strip()
            bad = next((c for c in ticket if unicodedata.category(c) in ("Cc", "Cf")), None)
            if bad is not None:
                raise self.fail(
                    f"--ticket must not contain control characters (found U+{ord(bad):04X})"
                )
            if not ticket:
                raise self.fail(f"--ticket needs {_VALUE_FLAGS['--ticket']}")
            if len(ticket) > MAX_TICKET:
                raise self.fail(
                    f"--ticket is too long: {len(ticket)} characters (at most {MAX_TICKET})"
                )
        if reason is not None:
            reason = _clean_reason(reason)
            if not reason:
                raise self.fail(f"--reason needs {_VALUE_FLAGS['--reason']}")
            if len(reason) > MAX_REASON:
                raise self.fail(
                    f"--reason is too long: {len(reason)} characters (at most {MAX_REASON})"
                )
        return Meta(ticket=ticket, reason=reason)

    # commands

    def _conflict(self, first: str, second: str) -> None:
        if self._has(first) and self._has(second):
            raise self.fail(f"{first} and {second} cannot be used together")

    def _export(self, kind: ExportKind, args: dict[str, str]) -> Export:
        iteration = self._value("--iteration")
        tag_ids = tuple(dict.fromkeys(self._guid(v, "tag id") for v in self._values("--tag")))
        tagging: Tagging = "all"
        if self._has("--tagged") or tag_ids:
            tagging = "tagged"
        elif self._has("--untagged"):
            tagging = "untagged"
        export = Export(
            kind=kind,
            project_id=args.get("project-id"),
            iteration_id=args.get("iteration-id")
            or (None if iteration is None else self._guid(iteration, "iteration id")),
            tag_id=args.get("tag-id"),
            image_ids=self._ids("image id"),
            tag_ids=tag_ids,
            tagging=tagging,
            files=not self._has("--no-files"),
            images=not self._has("--no-images"),
            download=self._has("--download"),
            threshold=self._fraction("--threshold"),
            overlap=self._fraction("--overlap"),
            meta=self._meta(),
        )
        self._conflict("--tagged", "--untagged")
        self._conflict("--tag", "--untagged")
        for other in ("--tagged", "--untagged", "--tag"):
            self._conflict("--ids", other)
        return export

    def _delete(self, kind: DeleteKind, args: dict[str, str]) -> Delete:
        tag = self._value("--tag")
        tag_id = args.get("tag-id") or (None if tag is None else self._guid(tag, "tag id"))
        ids = self._ids("prediction id" if kind is DeleteKind.PREDICTIONS else "image id")
        meta = self._meta()
        selector: Selector | None = None
        if kind is DeleteKind.IMAGES:
            given = [name for name in ("--ids", "--tag", "--untagged", "--all") if self._has(name)]
            choices = "--ids, --tag, --untagged or --all"
            if not given:
                raise self.fail(f"delete images needs one of {choices}")
            if len(given) > 1:
                raise self.fail(
                    f"delete images takes only one of {choices} (got {' and '.join(given)})"
                )
            selector = _SELECTORS[given[0][2:]]
        elif kind is DeleteKind.PREDICTIONS:
            selector = "ids" if ids else "all"
        return Delete(
            kind=kind,
            project_id=args.get("project-id"),
            iteration_id=args.get("iteration-id"),
            tag_id=tag_id,
            selector=selector,
            image_ids=ids if kind is DeleteKind.IMAGES else (),
            prediction_ids=ids if kind is DeleteKind.PREDICTIONS else (),
            meta=meta,
        )

    def _audit(self) -> AuditExport:
        request = self._value("--request")
        since = self._value("--since")
        day: date | None = None
        if since is not None:
            if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", since):
                raise self.fail(f"--since must be a date like 2026-01-31 (got {_show(since)})")
            try:
                day = date.fromisoformat(since)
            except ValueError:
                raise self.fail(f"--since: {since} is not a real date") from None
        chosen = (self._value("--format") or "csv").lower()
        if chosen not in _FORMATS:
            raise self.fail(f"--format must be csv or jsonl (got {_show(chosen)})")
        return AuditExport(
            request_id=None if request is None else self._request_id(request),
            since=day,
            format=_FORMATS[chosen],
        )


def _clean_reason(text: str) -> str:
    """Return the reason without control characters (line breaks and tabs become spaces)."""
    kept = (
        (" " if char.isspace() else "") if unicodedata.category(char) == "Cc" else char
        for char in text
    )
    return "".join(kept).strip()


# --- describing and storing -----------------------------------------------------------------


def _describe_export(export: Export) -> str:
    project, iteration = _short(export.project_id), _short(export.iteration_id)
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
            else f"export tag {_short(export.tag_id)} of project {project}"
        )
        if export.iteration_id:
            details.append(f"iteration {iteration}")
    elif kind is ExportKind.IMAGES:
        text = f"export images of project {project}"
        if export.image_ids:
            details.append(_plural(len(export.image_ids), "image id"))
        if export.tag_ids:
            word = "tag" if len(export.tag_ids) == 1 else "tags"
            details.append(f"with {word} {', '.join(_short(t) for t in export.tag_ids)}")
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
    else:
        text = f"export stored predictions of project {project}"
        if not export.files:
            details.append("without files")
    return f"{text} ({', '.join(details)})" if details else text


def _describe_delete(delete: Delete) -> str:
    project, iteration = _short(delete.project_id), _short(delete.iteration_id)
    kind = delete.kind
    if kind is DeleteKind.PROJECT:
        return f"delete project {project}"
    if kind is DeleteKind.ITERATION:
        return f"delete iteration {iteration} of project {project}"
    if kind is DeleteKind.ITERATIONS:
        return f"delete every trained iteration of project {project}"
    if kind is DeleteKind.TAG:
        return f"delete tag {_short(delete.tag_id)} of project {project}"
    if kind is DeleteKind.IMAGES:
        which = {
            "ids": _plural(len(delete.image_ids), "image"),
            "tag": f"images with tag {_short(delete.tag_id)}",
            "untagged": "untagged images",
        }.get(delete.selector or "all", "all images")
        return f"delete {which} of project {project}"
    if kind is DeleteKind.PREDICTIONS:
        if delete.selector == "ids":
            which = _plural(len(delete.prediction_ids), "stored prediction")
            return f"delete {which} of project {project}"
        return f"delete all stored predictions of project {project}"
    if kind is DeleteKind.ACCOUNT:
        return "delete the Custom Vision account"
    return f"delete model exports of iteration {iteration} of project {project}"


def _meta_to_dict(meta: Meta) -> dict[str, Any]:
    return {"ticket": meta.ticket, "reason": meta.reason}


_EXPORT_KEYS = frozenset(Export(ExportKind.ACCOUNT).to_dict())
_DELETE_KEYS = frozenset(Delete(DeleteKind.ACCOUNT).to_dict())


class _Fields:
    """Typed reads of a stored dict; every problem is a ValueError naming the field."""

    def __init__(self, data: Mapping[str, Any], verb: str, keys: frozenset[str]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"a stored {verb} must be an object, not {type(data).__name__}")
        unknown = sorted(str(key) for key in data if key not in keys)
        if unknown:
            raise ValueError(f"unknown field(s) in a stored {verb}: {', '.join(unknown)}")
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

    def meta(self) -> Meta:
        meta = self.data.get("meta", {})
        if not isinstance(meta, Mapping) or set(meta) - {"ticket", "reason"}:
            raise ValueError("meta: must be an object with ticket and reason")
        ticket, reason = meta.get("ticket"), meta.get("reason")
        if not all(value is None or isinstance(value, str) for value in (ticket, reason)):
            raise ValueError("meta: ticket and reason must be strings or null")
        return Meta(ticket=ticket, reason=reason)


def _wire_text(request: Export | Delete) -> str:
    """Return command text, encoded as Slack sends it, that parses back to `request`."""
    verb = "export" if isinstance(request, Export) else "delete"
    form = _FORMS[f"{verb} {request.kind.value}"]
    fields = {
        "project-id": request.project_id,
        "iteration-id": request.iteration_id,
        "tag-id": request.tag_id,
    }
    words = [verb, request.kind.value, *(fields[arg] or "" for arg in form.args)]
    if request.iteration_id and "iteration-id" not in form.args:
        words += ["--iteration", request.iteration_id]
    if isinstance(request, Export):
        if request.tagging != "all":
            words.append(f"--{request.tagging}")
        words += [word for tag in request.tag_ids for word in ("--tag", tag)]
        ids = request.image_ids
        switches = {
            "--no-files": not request.files,
            "--no-images": not request.images,
            "--download": request.download,
        }
        words += [flag for flag, on in switches.items() if on]
        for flag, number in (("--threshold", request.threshold), ("--overlap", request.overlap)):
            if number is not None:
                words += [flag, repr(number)]
    else:
        if request.tag_id and "tag-id" not in form.args:
            words += ["--tag", request.tag_id]
        if request.kind is DeleteKind.IMAGES and request.selector in ("untagged", "all"):
            words.append(f"--{request.selector}")
        if request.image_ids and request.prediction_ids:
            words += ["--ids", ",".join(request.image_ids)]
        ids = request.image_ids or request.prediction_ids
    if ids:
        words += ["--ids", ",".join(ids)]
    for flag, text in (("--ticket", request.meta.ticket), ("--reason", request.meta.reason)):
        if text is not None:
            words += [flag, quote(text)]
    return " ".join(word for word in words if word)


_Request = TypeVar("_Request", Export, Delete)


def _check_canonical(request: _Request) -> _Request:
    """Return `request` when parsing its own text gives it back; else raise ValueError."""
    try:
        parsed = parse(_wire_text(request))
    except ParseError as error:
        raise ValueError(f"not a valid {request.to_dict()['verb']}: {error.problem}") from None
    if parsed != request:
        raise ValueError(f"inconsistent fields for {request.describe()}")
    return request


def quote(text: str) -> str:
    """Return `text` as one double-quoted, Slack-escaped token that parses back to `text`."""
    escaped = "".join(
        "\\" + char if char in _DOUBLE_QUOTES or char == "\\" else char for char in text
    )
    return '"' + slack_escape(escaped) + '"'


def slack_escape(text: str) -> str:
    """Return `text` with &, < and > escaped the way Slack sends command text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- help -----------------------------------------------------------------------------------


def usage(verb_path: str) -> str:
    """Return the usage of a form ("export images"), a verb's forms, or all ("")."""
    path = " ".join(verb_path.lower().split())
    if path in _FORMS and (path not in _KINDS):
        return _FORMS[path].usage
    if path in _KINDS:
        return "\n".join(_FORMS[f"{path} {kind}"].usage_line for kind in _KINDS[path])
    if path == "":
        return "\n".join(
            [
                _FORMS["help"].usage_line,
                f"export <kind> ... (kinds: {', '.join(_KINDS['export'])})",
                f"delete <kind> ... (kinds: {', '.join(_KINDS['delete'])})",
                *(
                    _FORMS[verb].usage_line
                    for verb in ("status", "cancel", "retry", "resend", "audit")
                ),
                _FORMS["audit verify"].usage_line,
            ]
        )
    raise ValueError(f"no such command: {verb_path!r}")


_GENERAL_NOTES = (
    'Every export and delete also takes --ticket <ref> and --reason "<text>"; both are recorded'
    " with the request and in the audit log.",
    "Every deletion needs approval by a second person before anything is deleted.",
    "Iteration performance is deleted together with its iteration.",
    "delete account and delete exports cannot be done with the Training-Key: the bot answers"
    " with the steps to do them.",
    "Ids are GUIDs as shown in the Custom Vision portal; request ids look like R-1042.",
)


def help_text(topic: str | None = None, *, command: str = "/cv") -> str:
    """Return the help for a topic (None, a verb, or "verb kind"); raise ValueError if unknown."""
    path = " ".join((topic or "").lower().split())
    if path == "":
        lines = [
            f"{command}: data-subject requests (GDPR export and erasure) for Custom Vision",
            "",
        ]
        for title, verbs in (
            ("Export (a zip package posted here):", ("export",)),
            ("Delete:", ("delete",)),
            ("Requests:", ("status", "cancel", "retry", "resend")),
            ("Audit log:", ("audit", "audit verify")),
        ):
            lines.append(title)
            paths = [p for verb in verbs for p in _FORMS if p == verb or p.startswith(verb + " ")]
            if verbs == ("audit", "audit verify"):
                paths = ["audit", "audit verify"]
            lines += [f"  {command} {_FORMS[p].usage_line}" for p in paths]
            lines.append("")
        lines += [f"- {note}" for note in _GENERAL_NOTES]
        lines += [
            "",
            f"More: {command} help <verb> [<kind>], for example {command} help export images",
        ]
        return "\n".join(lines)
    if path in _KINDS:
        lines = [f"{command} {path} <kind> ...", ""]
        for kind in _KINDS[path]:
            form = _FORMS[f"{path} {kind}"]
            lines += [f"{command} {form.usage_line}", f"  {form.summary}"]
        lines += ["", f"- {_GENERAL_NOTES[0]}"]
        if path == "delete":
            lines += [f"- {note}" for note in _GENERAL_NOTES[1:4]]
        else:
            lines.append(f"- {_GENERAL_NOTES[2]}")
        lines.append("Examples:")
        lines += [
            f"  {command} {_FORMS[f'{path} {kind}'].examples[0]}"
            for kind in _KINDS[path]
            if kind in ("project", "images", "predictions")
        ]
        lines += ["", f"More: {command} help {path} <kind>"]
        return "\n".join(lines)
    if path not in _FORMS:
        raise ValueError(f"no help on {topic!r}")
    form = _FORMS[path]
    lines = [f"{command} {form.usage}", form.summary]
    if form.options or form.meta:
        lines.append("Options:")
        lines += [f"  {shown}: {what}" for shown, what in form.options]
        if form.meta:
            lines += [
                f"  --ticket <ref>: a ticket reference, recorded (at most {MAX_TICKET} characters)",
                f'  --reason "<text>": why, recorded (at most {MAX_REASON} characters)',
            ]
    lines += list(form.notes)
    lines.append("Examples:")
    lines += [f"  {command} {example}" for example in form.examples]
    return "\n".join(lines)
