"""The lexer and parser of `/cv`: the text after `/cv` in, a typed command out. Pure.

No I/O, no clock: dates come from the text only. `parse(text)` returns one of the frozen
dataclasses of `bot.commands` or raises `bot.errors.ParseError(problem, usage)`, where `usage` is
the form that would have worked. It never raises anything else, whatever the text.

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
- `help`, `export`, `delete`, `status`, `cancel`, `retry`, `resend`, `extend`, `report`,
  `audit` are the verbs;
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

The forms (which arguments and options each takes) and their usage lines are in `bot.help`.

Stored requests: `load_request` (and `load_export`, `load_delete`) read what `to_dict` stored and
accept exactly what `parse` can produce; they check this by parsing the request's own command text
again and comparing.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

from bot.commands import (
    MAX_METADATA_KEY,
    MAX_METADATA_PAIRS,
    MAX_METADATA_VALUE,
    MAX_REASON,
    MAX_TICKET,
    SELECTORS,
    AuditExport,
    AuditFormat,
    AuditVerify,
    Cancel,
    Command,
    Delete,
    DeleteKind,
    Export,
    ExportKind,
    Extend,
    Find,
    Help,
    Meta,
    Report,
    Resend,
    Retry,
    Selector,
    Selectors,
    Status,
    Tagging,
    request_from_dict,
)
from bot.errors import ParseError
from bot.help import FORMS, KINDS, VERBS, Form, usage
from bot.ids import format_request_id, is_guid, normalize_guid, parse_request_id

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
    "prolong": "extend",
    "postpone": "extend",
    "deadline": "extend",
    "stats": "report",
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
    "--until": "a date like 2026-01-31",
    "--received": "the date the request was received, like 2026-01-31",
    "--months": "1 or 2",
    "--format": "csv or jsonl",
    "--metadata": "a KEY=VALUE pair",
    "--tag-name": "a tag name",
    "--project": "<project-id>",
    "--resource": "the name of a Custom Vision resource",
}
_BOOL_FLAGS = ("--no-images", "--tagged", "--untagged", "--no-files", "--download", "--all")
_ALL_FLAGS = (*_VALUE_FLAGS, *_BOOL_FLAGS, "--help")
_META_FLAGS = ("--ticket", "--reason", "--received")

# A $filter key is an OData member name (emulators/metadatafilter.py cites the rule); the
# operators are its reserved words.
_FILTER_KEY = re.compile(r"[A-Za-z_][\w.\-]*")
_FILTER_WORDS = frozenset({"and", "or", "eq", "ne"})
# $filter compares exact values: a wildcard would be looked for literally, and what the person
# meant (every image) is not a selector of one person.
_WILDCARDS = frozenset({"*", "%", "?", ".*"})
_MATCHES_ALL = (
    "{what} would match every image, not one person's: $filter compares exact values, with"
    " no wildcards; give the value the person's images carry"
)

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
    if verb not in VERBS:
        raise _unknown_verb(tokens[0].text, tokens[1:])
    options, positionals = _split(tokens[1:])
    if verb == "help":
        _check_options(FORMS["help"], options)
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
    if verb not in VERBS:
        return usage("")
    _, positionals = _split(tokens[1:])
    try:
        form, _ = _form_of(verb, positionals)
    except ParseError:
        return usage(verb)
    return form.usage


def _unknown_verb(word: str, rest: list[_Token]) -> ParseError:
    guess = _VERB_HINTS.get(word.lower()) or _closest(word, VERBS)
    if guess is None:
        return ParseError(f"unknown command {_show(word)}", usage(""))
    problem = f"unknown command {_show(word)}; did you mean '{guess}'?"
    kind = rest[0].text.lower() if rest else ""
    if f"{guess} {kind}" in FORMS:
        return ParseError(problem, FORMS[f"{guess} {kind}"].usage)
    return ParseError(problem, usage(guess))


def _form_of(verb: str, positionals: list[_Token]) -> tuple[Form, list[_Token]]:
    """Return the form named by the verb (and its kind) and the positionals after it."""
    if verb == "audit":
        if positionals and positionals[0].text.lower() == "verify":
            return FORMS["audit verify"], positionals[1:]
        return FORMS["audit"], positionals
    if verb not in KINDS:
        return FORMS[verb], positionals
    kinds = KINDS[verb]
    listed = ", ".join(kinds)
    if not positionals:
        raise ParseError(f"{verb} needs a kind: {listed}", usage(verb))
    word = positionals[0].text
    if word.lower() in kinds:
        return FORMS[f"{verb} {word.lower()}"], positionals[1:]
    if is_guid(word):
        raise ParseError(f"{verb} needs a kind before the id: {listed}", usage(verb))
    guess = _closest(word, kinds)
    if guess is None:
        raise ParseError(
            f"unknown kind {_show(word)} for {verb}; use one of: {listed}", usage(verb)
        )
    raise ParseError(
        f"unknown kind {_show(word)} for {verb}; did you mean '{guess}'?",
        FORMS[f"{verb} {guess}"].usage,
    )


def _topic(words: list[str]) -> str | None:
    """Return the help topic the words name; raise ParseError for anything else."""
    form_usage = FORMS["help"].usage
    if not words:
        return None
    verb = words[0].lower()
    if verb not in VERBS:
        guess = _VERB_HINTS.get(verb) or _closest(verb, VERBS)
        hint = f"; did you mean '{guess}'?" if guess else f"; topics: {', '.join(VERBS)}"
        raise ParseError(f"no help on {_show(words[0])}{hint}", form_usage)
    kinds = KINDS.get(verb, ("verify",) if verb == "audit" else ())
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


def _check_options(form: Form, options: list[_Option]) -> None:
    """Raise ParseError for the first option that is unknown, out of place or malformed."""
    allowed = (
        *form.flags,
        *(_META_FLAGS if form.meta else ()),
        *(("--resource",) if form.resource else ()),
        "--help",
    )
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

    def __init__(self, form: Form, options: list[_Option], positionals: list[_Token]) -> None:
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
        if form.path == "find":
            return Find(self._selectors())
        if form.path == "audit verify":
            return AuditVerify()
        if form.path == "audit":
            return self._audit()
        if form.path == "report":
            return self._report()
        request_id = args.get("request-id")
        if form.path == "status":
            if request_id is not None and self._has("--all"):
                raise self.fail("status takes either <request-id> or --all, not both")
            return Status(request_id, all=self._has("--all"))
        assert request_id is not None  # a required argument
        if form.path == "resend":
            return Resend(request_id)
        if form.path == "extend":
            return self._extend(request_id)
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
        reason = self._reason()
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
        return Meta(ticket=ticket, reason=reason, received=self._date("--received"))

    def _date(self, name: str) -> date | None:
        text = self._value(name)
        if text is None:
            return None
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            raise self.fail(f"{name} must be a date like 2026-01-31 (got {_show(text)})")
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise self.fail(f"{name}: {text} is not a real date") from None

    def _resource(self) -> str | None:
        """Return the --resource holding the project of a form on one project (else None)."""
        name = self._value("--resource")
        if name is None or not self.form.resource:
            return None
        return self._resource_name(name)

    def _resource_name(self, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", name.strip()):
            raise self.fail(
                f"{_show(name)} is not a resource name: expected letters, digits and underscores,"
                " as in CUSTOM_VISION_RESOURCES"
            )
        return name.strip().lower()

    def _reason(self) -> str | None:
        reason = self._value("--reason")
        if reason is None:
            return None
        reason = _clean_reason(reason)
        if not reason:
            raise self.fail(f"--reason needs {_VALUE_FLAGS['--reason']}")
        if len(reason) > MAX_REASON:
            raise self.fail(
                f"--reason is too long: {len(reason)} characters (at most {MAX_REASON})"
            )
        return reason

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
            resource=self._resource(),
            selectors=self._selectors() if self._picks_a_person(kind) else None,
        )
        self._conflict("--tagged", "--untagged")
        self._conflict("--tag", "--untagged")
        for other in ("--tagged", "--untagged", "--tag"):
            self._conflict("--ids", other)
        for selector in ("--metadata", "--tag-name"):
            for other in ("--ids", "--tag", "--tagged", "--untagged"):
                self._conflict(selector, other)
        return export

    def _picks_a_person(self, kind: ExportKind) -> bool:
        """True when the request's images are one person's (subject, or selectors given)."""
        return kind is ExportKind.SUBJECT or self._has("--metadata") or self._has("--tag-name")

    def _delete(self, kind: DeleteKind, args: dict[str, str]) -> Delete:
        tag = self._value("--tag")
        tag_id = args.get("tag-id") or (None if tag is None else self._guid(tag, "tag id"))
        ids = self._ids("prediction id" if kind is DeleteKind.PREDICTIONS else "image id")
        meta = self._meta()
        selector: Selector | None = None
        selectors: Selectors | None = None
        if kind is DeleteKind.IMAGES:
            given = [name for name in ("--ids", "--tag", "--untagged", "--all") if self._has(name)]
            person = [name for name in ("--metadata", "--tag-name") if self._has(name)]
            given += [" and ".join(person)] if person else []
            choices = "--ids, --tag, --untagged, --all or --metadata/--tag-name"
            if not given:
                raise self.fail(f"delete images needs one of {choices}")
            if len(given) > 1:
                raise self.fail(
                    f"delete images takes only one of {choices} (got {' and '.join(given)})"
                )
            if person:
                selector, selectors = "subject", self._selectors()
            else:
                selector = SELECTORS[given[0][2:]]
        elif kind is DeleteKind.PREDICTIONS:
            selector = "ids" if ids else "all"
        elif kind is DeleteKind.SUBJECT:
            selectors = self._selectors()
        return Delete(
            kind=kind,
            project_id=args.get("project-id"),
            iteration_id=args.get("iteration-id"),
            tag_id=tag_id,
            selector=selector,
            image_ids=ids if kind is DeleteKind.IMAGES else (),
            prediction_ids=ids if kind is DeleteKind.PREDICTIONS else (),
            meta=meta,
            resource=self._resource(),
            selectors=selectors,
        )

    def _selectors(self) -> Selectors:
        """Return the data-subject selectors; refuse any the service could not search."""
        pairs: dict[str, str] = {}
        for text in self._values("--metadata"):
            key, value = self._pair(text)
            if pairs.get(key, value) != value:
                raise self.fail(
                    f"--metadata gives {_show(key)} twice with different values: an image has"
                    " one value per key, so nothing could match"
                )
            pairs[key] = value
        if len(pairs) > MAX_METADATA_PAIRS:
            raise self.fail(
                f"{len(pairs)} --metadata pairs: an image has at most {MAX_METADATA_PAIRS},"
                " so nothing could match"
            )
        names: dict[str, str] = {}
        for text in self._values("--tag-name"):
            name = text.strip()
            if not name:
                raise self.fail(f"--tag-name needs {_VALUE_FLAGS['--tag-name']}")
            if name in _WILDCARDS:
                raise self.fail(_MATCHES_ALL.format(what=f"--tag-name {name}"))
            names.setdefault(name.casefold(), name)
        given = self._values("--project")
        projects = tuple(dict.fromkeys(self._guid(v, "project id") for v in given))
        # --resource narrows a search only on the forms across projects; on a form on one
        # project it says which resource holds that project (`_resource`).
        named = [] if self.form.resource else self._values("--resource")
        resources = tuple(dict.fromkeys(self._resource_name(v) for v in named))
        if not pairs and not names:
            raise self.fail(
                f"{self.form.path} needs a selector: --metadata KEY=VALUE or --tag-name NAME"
                " (--project and --resource only narrow where to look)"
            )
        return Selectors(tuple(pairs.items()), tuple(names.values()), projects, resources)

    def _pair(self, text: str) -> tuple[str, str]:
        key, eq, value = text.partition("=")
        if not eq:
            raise self.fail(f"--metadata needs KEY=VALUE: {_show(text)} has no '='")
        key = key.strip()
        if not key:
            raise self.fail(f"--metadata {_show(text)} has an empty key")
        if len(key) > MAX_METADATA_KEY:
            raise self.fail(
                f"--metadata key is too long: {len(key)} characters (Custom Vision allows at most"
                f" {MAX_METADATA_KEY})"
            )
        if not _FILTER_KEY.fullmatch(key) or key in _FILTER_WORDS:
            raise self.fail(
                f"--metadata key {_show(key)} cannot be searched: a $filter key is letters, digits,"
                " '_', '-' and '.', does not start with a digit, and is not and, or, eq or ne"
            )
        if len(value) > MAX_METADATA_VALUE:
            raise self.fail(
                f"--metadata value of {_show(key)} is too long: {len(value)} characters (Custom"
                f" Vision allows at most {MAX_METADATA_VALUE})"
            )
        if not value:
            raise self.fail(
                f"--metadata {_show(text)} has an empty value: give the value the images carry"
            )
        if value in _WILDCARDS:
            raise self.fail(_MATCHES_ALL.format(what=f"--metadata {key}={value}"))
        return key, value

    def _audit(self) -> AuditExport:
        request = self._value("--request")
        day = self._date("--since")
        chosen = (self._value("--format") or "csv").lower()
        if chosen not in _FORMATS:
            raise self.fail(f"--format must be csv or jsonl (got {_show(chosen)})")
        return AuditExport(
            request_id=None if request is None else self._request_id(request),
            since=day,
            format=_FORMATS[chosen],
        )

    def _extend(self, request_id: str) -> Extend:
        months = self._value("--months")
        if months is None:
            raise self.fail("extend needs --months 1 or --months 2")
        if months.strip() not in ("1", "2"):
            raise self.fail(
                f"--months must be 1 or 2 (got {_show(months)}): a deadline is extended by at most"
                " two further months"
            )
        reason = self._reason()
        if reason is None:
            raise self.fail(
                'extend needs --reason "...": the person must be told why, within the first month'
            )
        return Extend(request_id, int(months), reason)

    def _report(self) -> Report:
        since, until = self._date("--since"), self._date("--until")
        if since is not None and until is not None and until < since:
            raise self.fail(f"--until {until} is before --since {since}")
        return Report(since, until)


def _clean_reason(text: str) -> str:
    """Return the reason without control characters (line breaks and tabs become spaces)."""
    kept = (
        (" " if char.isspace() else "") if unicodedata.category(char) == "Cc" else char
        for char in text
    )
    return "".join(kept).strip()


def _wire_text(request: Export | Delete) -> str:
    """Return command text, encoded as Slack sends it, that parses back to `request`."""
    verb = "export" if isinstance(request, Export) else "delete"
    form = FORMS[f"{verb} {request.kind.value}"]
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
        if request.selectors is not None:
            words += _selector_words(request.selectors)
    else:
        if request.tag_id and "tag-id" not in form.args:
            words += ["--tag", request.tag_id]
        if request.kind is DeleteKind.IMAGES and request.selector in ("untagged", "all"):
            words.append(f"--{request.selector}")
        if request.selectors is not None:
            words += _selector_words(request.selectors)
        if request.image_ids and request.prediction_ids:
            words += ["--ids", ",".join(request.image_ids)]
        ids = request.image_ids or request.prediction_ids
    if ids:
        words += ["--ids", ",".join(ids)]
    for flag, text in (("--ticket", request.meta.ticket), ("--reason", request.meta.reason)):
        if text is not None:
            words += [flag, quote(text)]
    if request.meta.received is not None:
        words += ["--received", request.meta.received.isoformat()]
    if request.resource is not None:
        words += ["--resource", request.resource]
    return " ".join(word for word in words if word)


def _selector_words(selectors: Selectors) -> list[str]:
    """Return the options that parse back to `selectors`."""
    words: list[str] = []
    for key, value in selectors.metadata:
        words += ["--metadata", quote(f"{key}={value}")]
    for name in selectors.tag_names:
        words += ["--tag-name", quote(name)]
    for project in selectors.project_ids:
        words += ["--project", project]
    for resource in selectors.resources:
        words += ["--resource", resource]
    return words


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


def load_request(data: Mapping[str, Any]) -> Export | Delete:
    """Return the stored Export or Delete, checked to be one `parse` gives; raise ValueError."""
    request = request_from_dict(data)
    if isinstance(request, Export):
        return _check_canonical(request)
    return _check_canonical(request)


def load_export(data: Mapping[str, Any]) -> Export:
    """Return the stored Export, checked to be one `parse` gives; raise ValueError."""
    return _check_canonical(Export.from_dict(data))


def load_delete(data: Mapping[str, Any]) -> Delete:
    """Return the stored Delete, checked to be one `parse` gives; raise ValueError."""
    return _check_canonical(Delete.from_dict(data))


def quote(text: str) -> str:
    """Return `text` as one double-quoted, Slack-escaped token that parses back to `text`."""
    escaped = "".join(
        "\\" + char if char in _DOUBLE_QUOTES or char == "\\" else char for char in text
    )
    return '"' + slack_escape(escaped) + '"'


def slack_escape(text: str) -> str:
    """Return `text` with &, < and > escaped, as Slack sends command text and mrkdwn needs."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
