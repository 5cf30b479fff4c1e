"""The tamper-evident audit log: a SHA-256 hash chain over the `audit_events` table.

Every event is one row. Its `hash` covers its own fields and the previous event's hash, so an
edited, deleted, inserted or reordered row breaks the chain at that row. Truncating the tail
(deleting the newest rows) leaves a valid shorter chain; it is caught only against an external
witness (the Slack audit channel mirror): `verify(expected_head=...)`, `check_against_witness`.
A complete rewrite of the chain with freshly computed hashes is likewise caught only by a witness.

Canonical encoding (how to recompute a hash by hand)
----------------------------------------------------
The hash of an event is

    sha256(utf8(json.dumps([seq, at, actor, action, request_id, targets, outcome, details,
                            prev_hash],
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)))

written as 64 lowercase hex digits. The stored `targets` and `details` columns already hold
exactly the canonical JSON text of those two values (no spaces, keys sorted, non-ASCII kept as
UTF-8), so an auditor needs no JSON library that sorts keys the way Python does; with the other
columns taken from the row:

    line = "[" + seq + "," + q(at) + "," + q(actor) + "," + q(action) + ","
           + (request_id is NULL ? "null" : q(request_id)) + ","
           + targets + "," + q(outcome) + "," + details + "," + q(prev_hash) + "]"
    hash = hex(sha256(utf8(line)))

where `seq` is the decimal integer and q(s) is the JSON string literal of s: `"` and `\\` are
backslash-escaped, U+0000..U+001F are written as \\b \\t \\n \\f \\r or \\u00xx (lowercase
hex), and every other character is copied as-is. The first event has seq 1 and prev_hash
"0" * 64 (GENESIS); each later event has seq one higher and the previous event's hash as its
prev_hash. `at` is UTC, "YYYY-MM-DDTHH:MM:SS.ffffffZ" (always six fractional digits).

Transactions
------------
Every function takes a `sqlite3.Connection` and never commits: `append` writes in the caller's
transaction, so the event commits or rolls back with the state change it records. `append`
reads the chain head inside that transaction, so callers open it with BEGIN IMMEDIATE (a
deferred transaction could read a head another writer is about to replace).

Pure: `event_hash`, `mirror_line`, `parse_mirror_line`, `Verification.summary`.
I/O: `append`, `head`, `verify`, `check_against_witness`, `events` (SQLite) and
`write_csv`, `write_jsonl` (the file object they are given).
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from json.encoder import encode_basestring as _quote
from typing import Any, TextIO

from bot import wording

GENESIS = "0" * 64
REDACTED = "[redacted]"

# The third trigger exists because INSERT OR REPLACE deletes the old row without firing
# DELETE triggers (unless recursive_triggers is on).
SCHEMA_SQL = """\
CREATE TABLE audit_events (
    seq INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    request_id TEXT,
    targets TEXT NOT NULL,
    outcome TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
) STRICT;
CREATE INDEX audit_events_request_id ON audit_events (request_id);
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
"""

# Verification reads every row: no WHERE clause that a tampered value could slip past.
_SELECT_CHAIN = (
    "SELECT seq, at, actor, action, request_id, targets, outcome, details, prev_hash, hash"
    " FROM audit_events ORDER BY seq"
)
_SELECT_ALL = (
    "SELECT seq, at, actor, action, request_id, targets, outcome, details, prev_hash, hash"
    " FROM audit_events WHERE at >= ? ORDER BY seq"
)
_SELECT_REQUEST = (
    "SELECT seq, at, actor, action, request_id, targets, outcome, details, prev_hash, hash"
    " FROM audit_events WHERE request_id = ? AND at >= ? ORDER BY seq"
)
_INSERT = (
    "INSERT INTO audit_events"
    " (seq, at, actor, action, request_id, targets, outcome, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_EXPORT_FIELDS = (
    "seq",
    "at",
    "actor",
    "action",
    "request_id",
    "targets",
    "outcome",
    "details",
    "prev_hash",
    "hash",
)

# A canonical `targets` column is a flat JSON array of strings. Checking its shape while
# verifying makes the concatenated encoding unambiguous: without it, a forger could move text
# between `targets`, `outcome` and `details` so that the bytes (and the hash) stay the same
# while the decoded values change.
_JSON_STRING = r'"[^"\\\x00-\x1f]*+(?:\\.[^"\\\x00-\x1f]*+)*+"'  # unrolled: no backtracking
_TARGETS_SHAPE = re.compile(rf"\[(?:{_JSON_STRING}(?:,{_JSON_STRING})*+)?\]", re.DOTALL)
_HEX = re.compile(r"[0-9a-f]+")
_MIRROR = re.compile(r"#(\d+)\s.*·\s*hash\s+([0-9a-f]{16,64})", re.DOTALL)


@dataclass(frozen=True)
class Event:
    """One audit event as stored; `details` is the decoded JSON object."""

    seq: int
    at: str
    actor: str
    action: str
    request_id: str | None
    targets: tuple[str, ...]
    outcome: str
    details: Mapping[str, Any]
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict, in column order."""
        return {
            "seq": self.seq,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "request_id": self.request_id,
            "targets": list(self.targets),
            "outcome": self.outcome,
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class Verification:
    """The result of checking the chain.

    When `ok`, `count` is the number of events and `head_*` the newest one. Otherwise
    `first_bad_seq` is the first event that fails, `problem` says how, and `count`/`head_*`
    describe the verified prefix before it (head (0, GENESIS) when nothing verified).
    """

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    problem: str | None = None

    def summary(self) -> str:
        """Return one plain-text line for Slack or the CLI."""
        if self.ok:
            if self.count == 0:
                return "Audit log intact: no events yet."
            return (
                f"Audit log intact: {wording.count(self.count, 'event')}, "
                f"head #{self.head_seq} hash {self.head_hash[:16]}…"
            )
        verified = (
            f"{wording.count(self.count, 'event')} verified up to #{self.head_seq}"
            if self.count
            else "no event verified before it"
        )
        return f"Audit log BROKEN at event #{self.first_bad_seq}: {self.problem}; {verified}."


# --- secrets -------------------------------------------------------------------------------

_NEVER = re.compile(r"(?!)")  # matches nothing: the pattern when there is no secret


def _secret_pattern(secrets: Iterable[str]) -> re.Pattern[str] | None:
    # Longest first, so a secret that contains a shorter one is replaced whole.
    unique = sorted({s for s in secrets if s}, key=lambda s: (-len(s), s))
    return re.compile("|".join(map(re.escape, unique))) if unique else None


def _redact_value(value: Any, pattern: re.Pattern[str]) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {_redact_value(k, pattern): _redact_value(v, pattern) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, pattern) for v in value]
    return value


# --- encoding ------------------------------------------------------------------------------


def _canonical(value: Any) -> str:
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def format_at(at: datetime) -> str:
    """Return the stored form of an aware datetime ("2026-11-27T18:00:00.123456Z"); raise
    ValueError when it is naive."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return at.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def event_hash(
    seq: int,
    at: str,
    actor: str,
    action: str,
    request_id: str | None,
    targets: Sequence[str],
    outcome: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> str:
    """Return the SHA-256 hex digest of the canonical encoding (see the module docstring)."""
    encoded = _canonical(
        [seq, at, actor, action, request_id, list(targets), outcome, details, prev_hash]
    )
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


# --- writing -------------------------------------------------------------------------------


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    """Return (seq, hash) of the newest event, or (0, GENESIS) when the log is empty."""
    row = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    return (0, GENESIS) if row is None else (int(row[0]), str(row[1]))


def append(
    conn: sqlite3.Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    request_id: str | None = None,
    targets: Sequence[str] = (),
    outcome: str = "ok",
    details: Mapping[str, Any] | None = None,
    secrets: Sequence[str] = (),
) -> Event:
    """Write the next event in the caller's open transaction and return it.

    Raises RuntimeError outside a transaction; ValueError for a naive `at`, an empty
    actor/action/outcome/request_id or a value JSON cannot represent canonically (NaN, lone
    surrogates); TypeError for non-string fields or details JSON cannot encode. `secrets`
    become "[redacted]" in every field, keys and nested values included, before anything is
    hashed.
    """
    if not conn.in_transaction:
        raise RuntimeError("audit.append needs the caller's transaction (BEGIN IMMEDIATE)")
    if isinstance(targets, str):
        raise TypeError("targets must be a sequence of strings, not a string")
    for name, value in (("actor", actor), ("action", action), ("outcome", outcome)):
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string")
        if not value:
            raise ValueError(f"{name} must not be empty")
    if request_id is not None and not isinstance(request_id, str):
        raise TypeError("request_id must be a string or None")
    if request_id == "":
        raise ValueError("request_id must be None or not empty")
    if not all(isinstance(t, str) for t in targets):
        raise TypeError("targets must be strings")
    at_text = format_at(at)

    pattern = _secret_pattern(secrets) or _NEVER
    actor, action, outcome = (pattern.sub(REDACTED, s) for s in (actor, action, outcome))
    if request_id is not None:
        request_id = pattern.sub(REDACTED, request_id)
    target_list = [pattern.sub(REDACTED, t) for t in targets]
    detail_dict: dict[str, Any] = _redact_value(dict(details or {}), pattern)
    if not all(isinstance(k, str) for k in detail_dict):
        raise TypeError("details keys must be strings")

    targets_text = _canonical(target_list)
    details_text = _canonical(detail_dict)
    seq, prev_hash = head(conn)
    seq += 1
    digest = event_hash(
        seq, at_text, actor, action, request_id, target_list, outcome, detail_dict, prev_hash
    )
    row = (seq, at_text, actor, action, request_id, targets_text, outcome, details_text)
    conn.execute(_INSERT, (*row, prev_hash, digest))
    return Event(
        seq=seq,
        at=at_text,
        actor=actor,
        action=action,
        request_id=request_id,
        targets=tuple(target_list),
        outcome=outcome,
        details=json.loads(details_text),
        prev_hash=prev_hash,
        hash=digest,
    )


# --- verification --------------------------------------------------------------------------


def _check(
    conn: sqlite3.Connection, witnessed: Mapping[int, frozenset[str]], witness_name: str
) -> Verification:
    """Stream the chain in seq order, stopping at the first problem.

    This is the hot path (a million events in a few seconds): one flat loop over plain row
    tuples with local names only, no JSON parsing, just string building and SHA-256.
    """
    sha256 = hashlib.sha256
    quote = _quote
    targets_ok = _TARGETS_SHAPE.fullmatch
    count = 0
    last_seq, last_hash = 0, GENESIS
    bad: tuple[int, str] | None = None
    cursor = conn.execute(_SELECT_CHAIN)
    try:
        for seq, at, actor, action, rid, targets, outcome, details, prev, digest in cursor:
            if seq != last_seq + 1:
                if seq < 1:
                    bad = (seq, f"event {seq} has an invalid sequence number")
                else:
                    bad = (last_seq + 1, f"event {last_seq + 1} missing")
                break
            if prev != last_hash:
                if seq == 1:
                    bad = (seq, "event 1 does not start from the genesis hash")
                else:
                    bad = (seq, f"event {seq} does not follow event {seq - 1} (prev_hash)")
                break
            try:
                if not (isinstance(details, str) and targets_ok(targets)):
                    raise TypeError
                line = (
                    f"[{seq},{quote(at)},{quote(actor)},{quote(action)},"
                    f"{'null' if rid is None else quote(rid)},{targets},{quote(outcome)},"
                    f'{details},"{prev}"]'
                )
                computed = sha256(line.encode()).hexdigest()
            except (TypeError, UnicodeEncodeError):
                bad = (seq, f"event {seq} is malformed")
                break
            if computed != digest:
                bad = (seq, f"event {seq} was altered (hash mismatch)")
                break
            if seq in witnessed and not all(digest.startswith(p) for p in witnessed[seq]):
                bad = (seq, f"event {seq} does not match the {witness_name}")
                break
            count += 1
            last_seq, last_hash = seq, digest
    finally:
        cursor.close()
    if bad is None and any(s > last_seq for s in witnessed):
        newest = max(witnessed)
        bad = (last_seq + 1, f"event {last_seq + 1} missing (the {witness_name} has #{newest})")
    if bad is not None:
        return Verification(False, count, last_seq, last_hash, bad[0], bad[1])
    return Verification(True, count, last_seq, last_hash)


def _witness_prefix(prefix: str) -> str:
    if not _HEX.fullmatch(prefix):
        raise ValueError(f"a witnessed hash must be lowercase hex, got {prefix!r}")
    return prefix


def verify(
    conn: sqlite3.Connection, *, expected_head: tuple[int, str] | None = None
) -> Verification:
    """Return the result of recomputing the whole chain; with `expected_head` (seq, hash or
    hash prefix) from a witness, a missing or different event at that seq also fails.
    Raises ValueError for a malformed expected_head."""
    witnessed: dict[int, frozenset[str]] = {}
    if expected_head is not None and expected_head[0] > 0:
        witnessed[expected_head[0]] = frozenset({_witness_prefix(expected_head[1])})
    return _check(conn, witnessed, "witnessed head")


def check_against_witness(
    conn: sqlite3.Connection, witnessed: Iterable[tuple[int, str]]
) -> Verification:
    """Return the chain verification where every witnessed (seq, hash prefix) must also match;
    the first missing or different event is reported. Raises ValueError for a non-hex prefix."""
    by_seq: dict[int, set[str]] = {}
    for seq, prefix in witnessed:
        by_seq.setdefault(seq, set()).add(_witness_prefix(prefix))
    return _check(conn, {s: frozenset(p) for s, p in by_seq.items()}, "witness")


# --- reading and exports -------------------------------------------------------------------


def events(
    conn: sqlite3.Connection, *, request_id: str | None = None, since: date | None = None
) -> Iterator[Event]:
    """Yield events in seq order, optionally only one request's and/or those on or after the
    UTC day `since`."""
    # `at` has one fixed-width format, so text order is time order ("" is before everything).
    after = "" if since is None else f"{since.isoformat()}T00:00:00.000000Z"
    if request_id is None:
        cursor = conn.execute(_SELECT_ALL, (after,))
    else:
        cursor = conn.execute(_SELECT_REQUEST, (request_id, after))
    try:
        for seq, at, actor, action, rid, targets, outcome, details, prev, digest in cursor:
            yield Event(
                seq=seq,
                at=at,
                actor=actor,
                action=action,
                request_id=rid,
                targets=tuple(json.loads(targets)),
                outcome=outcome,
                details=json.loads(details),
                prev_hash=prev,
                hash=digest,
            )
    finally:
        cursor.close()


def write_csv(events: Iterable[Event], fp: TextIO) -> int:
    """Write a header and one row per event (targets/details as canonical JSON); return the
    number of events. Open `fp` with newline=""."""
    writer = csv.writer(fp)
    writer.writerow(_EXPORT_FIELDS)
    count = 0
    for event in events:
        writer.writerow(
            (
                event.seq,
                event.at,
                event.actor,
                event.action,
                event.request_id or "",
                _canonical(list(event.targets)),
                event.outcome,
                _canonical(event.details),
                event.prev_hash,
                event.hash,
            )
        )
        count += 1
    return count


def write_jsonl(events: Iterable[Event], fp: TextIO) -> int:
    """Write one UTF-8 JSON object per line per event; return the number of events."""
    count = 0
    for event in events:
        line = json.dumps(event.to_dict(), ensure_ascii=False, separators=(",", ":"))
        # U+2028/U+2029 are line breaks to str.splitlines() and JavaScript; escaped, every
        # reader sees one event per line. They only occur inside strings, so this stays JSON.
        fp.write(line.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
        fp.write("\n")
        count += 1
    return count


# --- Slack mirror --------------------------------------------------------------------------


def mirror_line(event: Event) -> str:
    """Return the plain-text line posted to the audit channel for `event`."""
    subject = f"{event.action} {event.request_id}" if event.request_id else event.action
    return f"#{event.seq} {subject} by {event.actor} · {event.outcome} · hash {event.hash[:16]}…"


def parse_mirror_line(text: str) -> tuple[int, str] | None:
    """Return (seq, hash prefix) from a mirror line, or None when `text` is not one."""
    match = _MIRROR.search(text)
    return (int(match.group(1)), match.group(2)) if match else None


def parse_mirror_lines(text: str) -> list[tuple[int, str]]:
    """Return the (seq, hash prefix) of every mirror line in one message (the outbox posts
    many lines per message; each line stands alone)."""
    return [pair for line in text.splitlines() if (pair := parse_mirror_line(line)) is not None]


@dataclass(frozen=True)
class IgnoredLine:
    """A message in the witness that reads like a mirror line but is not the bot's own."""

    ts: str
    author: str
    reason: str
    text: str


@dataclass(frozen=True)
class Witness:
    """What a Slack export of the audit channel witnesses: only the bot's own mirror lines."""

    bot: str  # who was trusted, e.g. "U0BOT (bot B0BOT)"
    lines: tuple[tuple[int, str], ...]  # (seq, hash prefix) of the bot's lines
    ignored: tuple[IgnoredLine, ...]


def _author(message: Mapping[str, Any]) -> str:
    user, bot_id = str(message.get("user") or "?"), str(message.get("bot_id") or "")
    return f"{user} (bot {bot_id})" if bot_id else user


def _not_the_bots(message: Mapping[str, Any], bot: frozenset[str]) -> str | None:
    """Return why `message` does not count as the bot's own mirror line, or None."""
    if not bot & {message.get("user"), message.get("bot_id")}:
        if message.get("bot_id"):
            return "posted by another app, not the bot"
        return "posted by a person, not the bot"
    if message.get("subtype") not in (None, "bot_message"):
        return f"a {message.get('subtype')} message, not a plain post"
    thread = message.get("thread_ts")
    if thread and thread != message.get("ts"):
        return "a thread reply (the bot posts audit lines at the top level)"
    if message.get("edited"):
        edited = message["edited"]
        by = edited.get("user", "?") if isinstance(edited, Mapping) else "?"
        return f"edited by {by} after it was posted"
    return None


def read_witness(messages: Iterable[Mapping[str, Any]], bot: str | None = None) -> Witness:
    """Return the mirror lines that the bot itself posted among Slack's `messages`.

    A message counts only when the bot posted it (its user id or bot id is `bot`), at the top
    level, unedited; every other message that reads like a mirror line is listed as ignored.
    Anyone in the channel can type "#3 ... · hash 0123..."; only Slack can set a message's
    author. Without `bot`, the one app whose messages carry mirror lines is the bot (persons
    never have a bot id); raises ValueError when there is none, or several to choose from.
    """
    candidates = [
        (m, pairs)
        for m in messages
        if isinstance(m, Mapping) and (pairs := parse_mirror_lines(str(m.get("text", ""))))
    ]
    if bot is None:
        apps = sorted(
            {str(m["bot_id"]) for m, _ in candidates if m.get("bot_id")},
        )
        if not apps:
            raise ValueError(
                "no audit line in the export was posted by an app: a witness must be Slack's "
                "JSON export of the audit channel, where each message names its author"
            )
        if len(apps) > 1:
            raise ValueError(
                f"audit lines were posted by several apps ({', '.join(apps)}): name the bot's "
                "user id with --bot-user (`python -m bot check` shows it)"
            )
        bot = apps[0]
    # The bot's user id and bot id go together: either one names it.
    mine = [m for m, _ in candidates if bot in (m.get("user"), m.get("bot_id"))]
    ids = frozenset({bot} | {str(m[k]) for m in mine for k in ("user", "bot_id") if m.get(k)})
    trusted = _author(mine[0]) if mine else bot
    lines: list[tuple[int, str]] = []
    ignored: list[IgnoredLine] = []
    for message, pairs in candidates:
        reason = _not_the_bots(message, ids)
        if reason is None:
            lines.extend(pairs)
        else:
            text = str(message.get("text", ""))
            ignored.append(IgnoredLine(str(message.get("ts", "?")), _author(message), reason, text))
    return Witness(trusted, tuple(lines), tuple(ignored))
