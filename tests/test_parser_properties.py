"""Properties of the /cv parser: any text gives a command or a ParseError, valid text parses right.

The generator below builds command text the way a Slack user could type it (any letter case,
options in any order, `--name=value`, smart quotes and dashes, odd whitespace, Slack's escaping)
together with the command it must parse to. It quotes free text with its own code, so the
parser's `quote` is not trusted to test itself.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import date
from typing import Any, Literal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.commands import (
    AuditExport,
    AuditVerify,
    Cancel,
    Command,
    Delete,
    DeleteKind,
    Export,
    ExportKind,
    Help,
    Meta,
    Retry,
    Selectors,
    Status,
)
from bot.errors import ParseError
from bot.parser import load_request, parse

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

WORDS = [
    "help", "export", "delete", "status", "cancel", "retry", "audit", "verify",
    "account", "projects", "project", "iterations", "iteration", "performance", "tags", "tag",
    "images", "exports", "predictions", "--ticket", "--reason", "--threshold", "--overlap",
    "--iteration", "--tag", "--ids", "--request", "--since", "--format", "--no-images",
    "--tagged", "--untagged", "--no-files", "--download", "--all", "--help", "-h", "--",
    "\u2014tagged", "--ids=", "--reason=", "--threshold=2", "R-1", "r-99999999999", "0.5",
    "1e400", "-0", "nan", "2026-02-30", "2026-01-01", "csv", "jsonl", '"', "'", "\u201c",
    "\u201d", "\u2018", "\u2019", "\\", "\\\"", "&amp;", "&lt;", "&gt;", "&amp;lt;", "<", ">",
    "<!channel>", "<@U123|bob>", "<http://x.example|x y>", "<mailto:a@b.example>", "<|>",
    "<http://", "=", ",", ",,", "\x00", "\x07", "\n", "\u202e", "\u200b", "\ufeff", "\u00a0",
    "/cv", "\U0001f600", "\u05e9\u05dc\u05d5\u05dd",
]  # fmt: skip
SEPARATORS = [" ", "  ", "\t", "\n", "\u00a0", "\u2003", " \u200b", "\r\n"]

guids = st.uuids().map(str)


def check_outcome(text: str) -> Command | None:
    """Parse `text`; a ParseError must carry a printable one-line problem and a usage."""
    try:
        return parse(text)
    except ParseError as error:
        assert error.problem
        assert error.problem.isprintable()
        assert isinstance(error.usage, str) and error.usage
        return None


@SETTINGS
@given(st.text(max_size=20_000))
def test_parser_any_text_gives_a_command_or_a_parse_error(text: str) -> None:
    check_outcome(text)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.sampled_from(WORDS),
            guids,
            guids.map(str.upper),
            st.text(max_size=6),
            st.sampled_from(WORDS).map(lambda w: f'"{w}"'),
        ),
        max_size=40,
    ),
    st.lists(st.sampled_from(["", *SEPARATORS]), min_size=40, max_size=40),
)
def test_parser_token_soup_gives_a_command_or_a_parse_error(
    words: list[str], separators: list[str]
) -> None:
    text = "".join(word + separator for word, separator in zip(words, separators, strict=False))
    command = check_outcome(text)
    if isinstance(command, Export | Delete):
        stored = json.loads(json.dumps(command.to_dict()))
        assert load_request(stored) == command
        assert "\n" not in command.describe()


# --- a generator of valid commands and what they mean --------------------------------------

# free text: everything printable; the parser strips control characters and trims
reasons = (
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1, max_size=300)
    .map(str.strip)
    .filter(bool)
)
tickets = (
    st.text(st.characters(exclude_categories=("Cc", "Cf", "Cs")), min_size=1, max_size=100)
    .map(str.strip)
    .filter(bool)
)
DOUBLE = '"\u201c\u201d\u201e\u201f'
SINGLE = "'\u2018\u2019\u201a\u201b"


def slack(text: str) -> str:
    """What Slack sends for typed text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def quoted(draw: st.DrawFn, text: str) -> str:
    """`text` as one token, in one of the ways a user could quote it."""
    plain = all(c.isascii() and (c.isalnum() or c in "-._/:#") for c in text)
    if plain and not text.startswith("-") and draw(st.booleans()):
        return slack(text)
    if not any(c in DOUBLE or c == "\\" for c in text) and draw(st.booleans()):
        opening, closing = draw(st.sampled_from([('"', '"'), ("\u201c", "\u201d")]))
        return opening + slack(text) + closing
    if not any(c in SINGLE for c in text) and draw(st.booleans()):
        return "'" + slack(text) + "'"
    escaped = "".join("\\" + c if c in DOUBLE or c == "\\" else c for c in text)
    return '"' + slack(escaped) + '"'


def cased(draw: st.DrawFn, word: str) -> str:
    change: Callable[[str], str] = draw(st.sampled_from([str.lower, str.upper, str.title]))
    return change(word)


@st.composite
def guid_text(draw: st.DrawFn) -> tuple[str, str]:
    """(as typed, as parsed)"""
    value = str(draw(st.uuids()))
    return (value.upper() if draw(st.booleans()) else value), value


class Spec:
    """Collects the words of a command under construction."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.positionals: list[str] = []
        self.options: list[list[str]] = []

    def guid(self) -> str:
        typed, value = self.draw(guid_text())
        self.positionals.append(typed)
        return value

    def flag(self, name: str, value: str | None = None) -> None:
        draw = self.draw
        prefix = draw(st.sampled_from(["--", "--", "\u2014", "\u2013"]))
        typed = prefix + cased(draw, name)
        if value is None:
            self.options.append([typed])
        elif draw(st.booleans()):
            self.options.append([f"{typed}={value}"])
        else:
            self.options.append([typed, value])

    def maybe(self) -> bool:
        return bool(self.draw(st.booleans()))

    def meta(self) -> Meta:
        ticket = self.draw(st.none() | tickets)
        reason = self.draw(st.none() | reasons)
        if ticket is not None:
            self.flag("ticket", self.draw(quoted(ticket)))
        if reason is not None:
            self.flag("reason", self.draw(quoted(reason)))
        return Meta(ticket=ticket, reason=reason)

    def ids(self) -> tuple[str, ...]:
        pairs = self.draw(st.lists(guid_text(), min_size=1, max_size=6))
        pairs += self.draw(st.lists(st.sampled_from(pairs), max_size=2))  # repeats
        self.flag("ids", ",".join(typed for typed, _ in pairs))
        return tuple(dict.fromkeys(value for _, value in pairs))

    def fraction(self, name: str) -> float | None:
        if not self.maybe():
            return None
        number = self.draw(st.floats(min_value=0.0, max_value=1.0))
        text = self.draw(st.sampled_from([repr(number), f"{number:.3f}", f"{number:.6e}"]))
        self.flag(name, text)
        return float(text)

    def text(self, verb: str, kind: str | None) -> str:
        """Interleave the options among the positionals, after the verb."""
        draw = self.draw
        words = [cased(draw, verb)]
        units = [[word] for word in ([cased(draw, kind)] if kind else []) + self.positionals]
        for option in draw(st.permutations(self.options)) if self.options else []:
            units.insert(draw(st.integers(min_value=0, max_value=len(units))), option)
        words += [word for unit in units for word in unit]
        separators = draw(
            st.lists(st.sampled_from(SEPARATORS), min_size=len(words), max_size=len(words))
        )
        prefix = "/cv " if draw(st.booleans()) else draw(st.sampled_from(["", " ", "\u00a0"]))
        return prefix + "".join(w + s for w, s in zip(words, separators, strict=True))


def person(spec: Spec) -> Selectors:
    """Draw one person's selectors (a metadata pair, maybe a resource to search)."""
    key = spec.draw(st.sampled_from(["customer", "name", "employee_id"]))
    value = spec.draw(st.sampled_from(["4711", "O'Brien", "Jane Doe", "a=b", "\u00e9t\u00e9"]))
    spec.flag("metadata", spec.draw(quoted(f"{key}={value}")))
    resources: tuple[str, ...] = ()
    if spec.maybe():
        name = spec.draw(st.sampled_from(["dev", "prod_eu", "Main"]))
        spec.flag("resource", name)
        resources = (name.lower(),)
    return Selectors(((key, value),), resources=resources)


def build_export(spec: Spec, kind: ExportKind) -> Export:
    values: dict[str, Any] = {}
    two = {
        ExportKind.ITERATION: "iteration_id",
        ExportKind.PERFORMANCE: "iteration_id",
        ExportKind.EXPORTS: "iteration_id",
        ExportKind.TAG: "tag_id",
    }
    if kind not in (ExportKind.ACCOUNT, ExportKind.PROJECTS, ExportKind.SUBJECT):
        values["project_id"] = spec.guid()
    if kind is ExportKind.SUBJECT:
        values["selectors"] = person(spec)
    if kind in two:
        values[two[kind]] = spec.guid()
    if kind is ExportKind.PROJECT and spec.maybe():
        spec.flag("no-images")
        values["images"] = False
    if kind in (ExportKind.TAGS, ExportKind.TAG, ExportKind.IMAGES) and spec.maybe():
        typed, values["iteration_id"] = spec.draw(guid_text())
        spec.flag("iteration", typed)
    if kind is ExportKind.PERFORMANCE:
        values["threshold"] = spec.fraction("threshold")
        values["overlap"] = spec.fraction("overlap")
    if kind is ExportKind.IMAGES:
        mode = spec.draw(st.sampled_from(["ids", "all", "tagged", "untagged"]))
        if mode == "ids":
            values["image_ids"] = spec.ids()
        elif mode != "untagged":
            tags = spec.draw(st.lists(guid_text(), max_size=3))
            group = len(spec.options)
            for typed, _ in tags:
                spec.flag("tag", typed)
            if tags:  # one unit: the order of the --tag options is the order of tag_ids
                spec.options[group:] = [[w for option in spec.options[group:] for w in option]]
            values["tag_ids"] = tuple(dict.fromkeys(value for _, value in tags))
            if mode == "tagged":
                spec.flag("tagged")
            values["tagging"] = "tagged" if mode == "tagged" or tags else "all"
        else:
            spec.flag("untagged")
            values["tagging"] = "untagged"
    if kind in (ExportKind.IMAGES, ExportKind.PREDICTIONS, ExportKind.SUBJECT) and spec.maybe():
        spec.flag("no-files")
        values["files"] = False
    if kind is ExportKind.EXPORTS and spec.maybe():
        spec.flag("download")
        values["download"] = True
    return Export(kind, meta=spec.meta(), **values)


def build_delete(spec: Spec, kind: DeleteKind) -> Delete:
    values: dict[str, Any] = {}
    if kind is DeleteKind.SUBJECT:
        values["selectors"] = person(spec)
    elif kind is not DeleteKind.ACCOUNT:
        values["project_id"] = spec.guid()
    if kind in (DeleteKind.ITERATION, DeleteKind.EXPORTS):
        values["iteration_id"] = spec.guid()
    if kind is DeleteKind.TAG:
        values["tag_id"] = spec.guid()
    if kind is DeleteKind.IMAGES:
        selector = spec.draw(st.sampled_from(["ids", "tag", "untagged", "all"]))
        values["selector"] = selector
        if selector == "ids":
            values["image_ids"] = spec.ids()
        elif selector == "tag":
            typed, values["tag_id"] = spec.draw(guid_text())
            spec.flag("tag", typed)
        else:
            spec.flag(selector)
    if kind is DeleteKind.PREDICTIONS:
        values["selector"] = "all"
        if spec.maybe():
            values["selector"] = "ids"
            values["prediction_ids"] = spec.ids()
    return Delete(kind, meta=spec.meta(), **values)


@st.composite
def request_id(draw: st.DrawFn) -> tuple[str, str]:
    number = draw(st.integers(min_value=0, max_value=999_999_999))
    typed = draw(st.sampled_from(["R-", "r-"])) + str(number).zfill(draw(st.integers(1, 9)))
    return typed, f"R-{number}"


@st.composite
def valid_commands(draw: st.DrawFn) -> tuple[str, Command]:
    spec = Spec(draw)
    verb = draw(st.sampled_from(["export", "delete", "status", "cancel", "retry", "audit", "help"]))
    if verb == "export":
        export_kind = draw(st.sampled_from(list(ExportKind)))
        export = build_export(spec, export_kind)
        return spec.text(verb, export_kind.value), export
    if verb == "delete":
        delete_kind = draw(st.sampled_from(list(DeleteKind)))
        delete = build_delete(spec, delete_kind)
        return spec.text(verb, delete_kind.value), delete
    if verb in ("status", "cancel", "retry"):
        typed, value = draw(request_id())
        if verb == "status" and spec.maybe():
            return spec.text(verb, None), Status()
        spec.positionals.append(typed)
        expected = {"status": Status, "cancel": Cancel, "retry": Retry}[verb](value)
        return spec.text(verb, None), expected
    if verb == "audit":
        if spec.maybe():
            return spec.text(verb, "verify"), AuditVerify()
        request: str | None = None
        since: date | None = None
        if spec.maybe():
            typed, request = draw(request_id())
            spec.flag("request", typed)
        if spec.maybe():
            since = draw(st.dates())
            spec.flag("since", since.isoformat())
        formats: list[Literal["csv", "jsonl"] | None] = [None, "csv", "jsonl"]
        chosen = draw(st.sampled_from(formats))
        if chosen is not None:
            spec.flag("format", cased(draw, chosen))
        return spec.text(verb, None), AuditExport(request, since, chosen or "csv")
    topic = draw(
        st.sampled_from(
            [None, "export", "delete images", "status", "audit verify", "export performance"]
        )
    )
    if topic is not None:
        spec.positionals += [cased(draw, word) for word in topic.split()]
    return spec.text(verb, None), Help(topic)


@SETTINGS
@given(valid_commands())
def test_parser_parses_generated_commands_correctly(case: tuple[str, Command]) -> None:
    text, expected = case
    assert parse(text) == expected


@SETTINGS
@given(valid_commands())
def test_parser_generated_requests_survive_storage(case: tuple[str, Command]) -> None:
    _, expected = case
    if isinstance(expected, Export | Delete):
        stored = json.loads(json.dumps(expected.to_dict()))
        assert load_request(stored) == expected
        assert type(expected).from_dict(stored) == expected
        description = expected.describe()
        assert description.isprintable()
        assert description.startswith(("export ", "delete "))


@SETTINGS
@given(reasons, tickets, st.data())
def test_parser_free_text_survives_any_characters_when_quoted(
    reason: str, ticket: str, data: st.DataObject
) -> None:
    project = str(uuid.UUID(int=7))
    text = (
        f"delete project {project}"
        f" --reason {data.draw(quoted(reason))} --ticket {data.draw(quoted(ticket))}"
    )
    command = parse(text)
    assert isinstance(command, Delete)
    assert command.meta == Meta(ticket=ticket, reason=reason)


@SETTINGS
@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=1500))
def test_parser_reason_never_keeps_control_characters(raw: str) -> None:
    escaped = "".join("\\" + c if c in DOUBLE or c == "\\" else c for c in raw)
    try:
        command = parse(f'export account --reason "{slack(escaped)}"')
    except ParseError as error:
        assert error.problem.startswith("--reason ")
        return
    assert isinstance(command, Export)
    reason = command.meta.reason or ""
    assert reason == reason.strip()
    assert all(not (c < " " or "\x7f" <= c <= "\x9f") for c in reason)
    assert 0 < len(reason) <= 1000
