"""Tests for bot.audit: the hash-chained audit log, on real SQLite files."""

from __future__ import annotations

import csv
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from bot import audit
from bot.audit import GENESIS, Event, Verification

T0 = datetime(2026, 11, 27, 18, 0, 0, 123456, tzinfo=UTC)
GUID_A = "0f8fad5b-d9cb-469f-a165-70867728950e"
GUID_B = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.executescript(audit.SCHEMA_SQL)
    yield connection
    connection.close()


def _append(conn: sqlite3.Connection, **kwargs: Any) -> Event:
    kwargs.setdefault("at", T0)
    kwargs.setdefault("actor", "U012ABCDEF")
    kwargs.setdefault("action", "request.created")
    conn.execute("BEGIN IMMEDIATE")
    try:
        event = audit.append(conn, **kwargs)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return event


def _fill(conn: sqlite3.Connection, n: int) -> list[Event]:
    return [
        _append(
            conn,
            at=T0 + timedelta(seconds=i),
            action="delete.images" if i % 2 else "request.created",
            request_id=f"R-{1000 + i // 2}",
            targets=[GUID_A, GUID_B][: i % 3],
            outcome="ok" if i % 4 else "error",
            details={"i": i, "reason": "Art. 17", "nested": {"ids": [GUID_A], "n": None}},
        )
        for i in range(n)
    ]


def _stored_rows(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT * FROM audit_events ORDER BY seq").fetchall()


def _tamper(conn: sqlite3.Connection, *statements: str) -> None:
    """Do what an attacker with the database file can do: drop the guards, then edit."""
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("DROP TRIGGER audit_events_no_delete")
    for statement in statements:
        conn.execute(statement)


def _recipe_hash(row: tuple[Any, ...]) -> str:
    """The module docstring's recipe, written independently of bot.audit."""
    seq, at, actor, action, request_id, targets, outcome, details, prev_hash, _ = row

    def q(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)

    rid = "null" if request_id is None else q(request_id)
    line = (
        f"[{seq},{q(at)},{q(actor)},{q(action)},{rid},{targets},{q(outcome)},{details},"
        f"{q(prev_hash)}]"
    )
    return hashlib.sha256(line.encode("utf-8")).hexdigest()


# --- append and verify ---------------------------------------------------------------------


def test_audit_head_of_empty_log_is_genesis(conn: sqlite3.Connection) -> None:
    assert audit.head(conn) == (0, GENESIS)
    assert audit.verify(conn) == Verification(True, 0, 0, GENESIS)


@pytest.mark.parametrize("n", [1, 2, 7])
def test_audit_append_and_verify(conn: sqlite3.Connection, n: int) -> None:
    events = _fill(conn, n)

    assert [e.seq for e in events] == list(range(1, n + 1))
    assert events[0].prev_hash == GENESIS
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    assert audit.head(conn) == (n, events[-1].hash)
    assert audit.verify(conn) == Verification(True, n, n, events[-1].hash)
    assert list(audit.events(conn)) == events
    for event, row in zip(events, _stored_rows(conn), strict=True):
        assert event.hash == _recipe_hash(row) == row[9]
        assert event.hash == audit.event_hash(
            event.seq,
            event.at,
            event.actor,
            event.action,
            event.request_id,
            event.targets,
            event.outcome,
            event.details,
            event.prev_hash,
        )


def test_audit_append_stores_canonical_columns(conn: sqlite3.Connection) -> None:
    event = _append(
        conn,
        at=datetime(2026, 11, 27, 19, 30, tzinfo=timezone(timedelta(hours=1, minutes=30))),
        request_id="R-1042",
        targets=(GUID_B, GUID_A),
        details={"z": 1, "a": {"y": [1.5, True, None], "b": "é"}},
    )

    assert _stored_rows(conn) == [
        (
            1,
            "2026-11-27T18:00:00.000000Z",
            "U012ABCDEF",
            "request.created",
            "R-1042",
            f'["{GUID_B}","{GUID_A}"]',
            "ok",
            '{"a":{"b":"é","y":[1.5,true,null]},"z":1}',
            GENESIS,
            event.hash,
        )
    ]
    assert event.at == "2026-11-27T18:00:00.000000Z"
    assert event.targets == (GUID_B, GUID_A)
    assert event.details == {"z": 1, "a": {"y": [1.5, True, None], "b": "é"}}


def test_audit_append_needs_the_callers_transaction(conn: sqlite3.Connection) -> None:
    with pytest.raises(RuntimeError, match="BEGIN IMMEDIATE"):
        audit.append(conn, at=T0, actor="U1", action="x")
    assert _stored_rows(conn) == []


def test_audit_append_rolls_back_with_the_callers_transaction(conn: sqlite3.Connection) -> None:
    _fill(conn, 2)
    conn.execute("BEGIN IMMEDIATE")
    audit.append(conn, at=T0, actor="U1", action="delete.images")
    conn.execute("ROLLBACK")

    assert [row[0] for row in _stored_rows(conn)] == [1, 2]
    assert audit.verify(conn).ok


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"at": datetime(2026, 11, 27, 18, 0)}, ValueError, "timezone-aware"),
        ({"actor": ""}, ValueError, "actor must not be empty"),
        ({"action": ""}, ValueError, "action must not be empty"),
        ({"outcome": ""}, ValueError, "outcome must not be empty"),
        ({"actor": 7}, TypeError, "actor must be a string"),
        ({"request_id": 1042}, TypeError, "request_id must be a string"),
        ({"request_id": ""}, ValueError, "request_id must be None or not empty"),
        ({"targets": GUID_A}, TypeError, "not a string"),
        ({"targets": [GUID_A, 3]}, TypeError, "targets must be strings"),
        ({"details": {1: "x"}}, TypeError, "keys must be strings"),
        ({"details": {"when": T0}}, TypeError, "not JSON serializable"),
        ({"details": {"ratio": float("nan")}}, ValueError, "Out of range float"),
        ({"details": {"text": "lone \ud800 surrogate"}}, UnicodeEncodeError, "surrogate"),
    ],
)
def test_audit_append_rejects_bad_values(
    conn: sqlite3.Connection, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        _append(conn, **kwargs)
    assert _stored_rows(conn) == []


# --- the guards ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET outcome = 'error' WHERE seq = 2",
        "UPDATE audit_events SET hash = prev_hash",
        "DELETE FROM audit_events WHERE seq = 3",
        "DELETE FROM audit_events",
        "INSERT OR REPLACE INTO audit_events SELECT * FROM audit_events WHERE seq = 1",
        "REPLACE INTO audit_events SELECT 2, at, actor, action, request_id, targets, outcome,"
        " '{}', prev_hash, hash FROM audit_events WHERE seq = 2",
        "INSERT INTO audit_events SELECT * FROM audit_events WHERE seq = 1"
        " ON CONFLICT (seq) DO UPDATE SET outcome = 'error'",
    ],
)
def test_audit_triggers_refuse_update_and_delete(conn: sqlite3.Connection, statement: str) -> None:
    _fill(conn, 3)
    before = _stored_rows(conn)

    with pytest.raises(sqlite3.IntegrityError, match="audit_events is append-only"):
        conn.execute(statement)

    assert _stored_rows(conn) == before


def test_audit_schema_rejects_values_of_the_wrong_type(conn: sqlite3.Connection) -> None:
    # STRICT: a forger cannot store a blob where the verifier expects text.
    with pytest.raises(sqlite3.IntegrityError, match="cannot store BLOB value in TEXT column"):
        conn.execute(
            "INSERT INTO audit_events VALUES (1, X'00', 'a', 'b', NULL, '[]', 'ok', '{}', ?, ?)",
            (GENESIS, GENESIS),
        )


# --- tampering -----------------------------------------------------------------------------


def _swap(a: int, b: int) -> list[str]:
    cols = "at, actor, action, request_id, targets, outcome, details, prev_hash, hash"
    return [
        f"CREATE TEMP TABLE saved AS SELECT seq, {cols} FROM audit_events WHERE seq IN ({a}, {b})",
        *(
            f"UPDATE audit_events SET ({cols}) = "
            f"(SELECT {cols} FROM saved WHERE seq = {other}) WHERE seq = {this}"
            for this, other in ((a, b), (b, a))
        ),
    ]


@pytest.mark.parametrize(
    ("statements", "first_bad", "problem"),
    [
        (
            ["UPDATE audit_events SET outcome = 'error' WHERE seq = 3"],
            3,
            "event 3 was altered (hash mismatch)",
        ),
        (
            ['UPDATE audit_events SET details = \'{"reason":"forged"}\' WHERE seq = 4'],
            4,
            "event 4 was altered (hash mismatch)",
        ),
        (
            ["UPDATE audit_events SET at = '2026-11-28T00:00:00.000000Z' WHERE seq = 1"],
            1,
            "event 1 was altered (hash mismatch)",
        ),
        (
            [f"UPDATE audit_events SET targets = '[\"{GUID_B}\"]' WHERE seq = 6"],
            6,
            "event 6 was altered (hash mismatch)",
        ),
        (
            ["UPDATE audit_events SET request_id = NULL WHERE seq = 5"],
            5,
            "event 5 was altered (hash mismatch)",
        ),
        (
            ["UPDATE audit_events SET hash = '" + "a" * 64 + "' WHERE seq = 6"],
            6,
            "event 6 was altered (hash mismatch)",
        ),
        (["DELETE FROM audit_events WHERE seq = 3"], 3, "event 3 missing"),
        (["DELETE FROM audit_events WHERE seq IN (3, 4)"], 3, "event 3 missing"),
        (["DELETE FROM audit_events WHERE seq = 1"], 1, "event 1 missing"),
        (["UPDATE audit_events SET seq = seq + 10"], 1, "event 1 missing"),
        (
            ["UPDATE audit_events SET seq = 0 WHERE seq = 1"],
            0,
            "event 0 has an invalid sequence number",
        ),
        (_swap(2, 5), 2, "event 2 does not follow event 1 (prev_hash)"),
        (_swap(3, 4), 3, "event 3 does not follow event 2 (prev_hash)"),
        (
            ["UPDATE audit_events SET prev_hash = '" + "1" * 64 + "' WHERE seq = 1"],
            1,
            "event 1 does not start from the genesis hash",
        ),
        (
            ["UPDATE audit_events SET targets = 'not json' WHERE seq = 2"],
            2,
            "event 2 is malformed",
        ),
    ],
)
def test_audit_verify_names_the_first_tampered_event(
    conn: sqlite3.Connection, statements: list[str], first_bad: int, problem: str
) -> None:
    events = _fill(conn, 6)
    _tamper(conn, *statements)

    good = first_bad - 1 if first_bad > 0 else 0
    assert audit.verify(conn) == Verification(
        ok=False,
        count=good,
        head_seq=good,
        head_hash=events[good - 1].hash if good else GENESIS,
        first_bad_seq=first_bad,
        problem=problem,
    )


def test_audit_verify_catches_an_edit_with_a_recomputed_hash_at_the_next_event(
    conn: sqlite3.Connection,
) -> None:
    events = _fill(conn, 5)
    row = list(_stored_rows(conn)[2])
    row[2] = "U0FORGER"
    forged = _recipe_hash(tuple(row))
    _tamper(conn, f"UPDATE audit_events SET actor = 'U0FORGER', hash = '{forged}' WHERE seq = 3")

    assert audit.verify(conn) == Verification(
        False, 3, 3, forged, 4, "event 4 does not follow event 3 (prev_hash)"
    )
    assert events[2].hash != forged


def test_audit_verify_rejects_text_shifted_between_columns(conn: sqlite3.Connection) -> None:
    # The concatenated bytes (and so the hash) stay identical while the decoded values change:
    # the outcome moves into `targets` and a forged outcome is carved out of `details`.
    _append(
        conn,
        targets=["x"],
        outcome="ok",
        details={"k": [["x"], "denied", {"y": 1}]},
    )
    original = _stored_rows(conn)[0]
    _tamper(
        conn,
        """UPDATE audit_events SET targets = '["x"],"ok",{"k":[["x"]',"""
        """ outcome = 'denied', details = '{"y":1}]}' WHERE seq = 1""",
    )
    forged = _stored_rows(conn)[0]

    assert _recipe_hash(forged) == _recipe_hash(original) == forged[9]
    assert audit.verify(conn) == Verification(False, 0, 0, GENESIS, 1, "event 1 is malformed")


def test_audit_truncated_tail_is_caught_only_against_a_witness(conn: sqlite3.Connection) -> None:
    events = _fill(conn, 6)
    witnessed_head = (6, events[-1].hash)
    _tamper(conn, "DELETE FROM audit_events WHERE seq >= 5")

    assert audit.verify(conn) == Verification(True, 4, 4, events[3].hash)
    assert audit.verify(conn, expected_head=witnessed_head) == Verification(
        False, 4, 4, events[3].hash, 5, "event 5 missing (the witnessed head has #6)"
    )


@pytest.mark.parametrize(
    ("expected_head", "ok"),
    [
        ((6, "full"), True),
        ((6, "prefix"), True),
        ((4, "prefix"), True),  # the witness saw fewer events: later ones are fine
        ((0, GENESIS), True),
        ((6, "0123456789abcdef"), False),
        ((7, "0123456789abcdef"), False),
    ],
)
def test_audit_verify_against_expected_head(
    conn: sqlite3.Connection, expected_head: tuple[int, str], ok: bool
) -> None:
    events = _fill(conn, 6)
    seq, digest = expected_head
    if digest in ("full", "prefix"):
        digest = events[seq - 1].hash[: 64 if digest == "full" else 16]

    result = audit.verify(conn, expected_head=(seq, digest))

    assert result.ok is ok
    assert result.first_bad_seq == (None if ok else seq)


def test_audit_verify_rejects_a_non_hex_expected_head(conn: sqlite3.Connection) -> None:
    with pytest.raises(ValueError, match="lowercase hex"):
        audit.verify(conn, expected_head=(1, "XYZ"))


# --- canonical encoding --------------------------------------------------------------------

UNICODE_REASONS = [
    "plain ascii",
    "emoji 😀👍🏽 and a flag 🇩🇪",
    "עברית: מחיקה לפי סעיף 17",
    "العربية \u200f mixed RTL with LTR",
    "combining e\u0301 vs é",
    'quotes " and backslash \\ and slash /',
    "controls \x00 \x1f \t \n \r \b \f \x7f",
    "separators \u2028 \u2029",
    "",
]


@pytest.mark.parametrize("reason", UNICODE_REASONS)
def test_audit_canonical_encoding_is_stable_across_unicode(
    conn: sqlite3.Connection, reason: str
) -> None:
    event = _append(
        conn, actor=f"U1 {reason}", request_id=f"R-1 {reason}", details={"reason": reason}
    )
    (row,) = _stored_rows(conn)

    assert row[7] == json.dumps({"reason": reason}, ensure_ascii=False, separators=(",", ":"))
    assert event.hash == _recipe_hash(row) == row[9]
    assert audit.verify(conn) == Verification(True, 1, 1, event.hash)
    assert next(audit.events(conn)).details == {"reason": reason}


def test_audit_event_hash_matches_a_pinned_value() -> None:
    # Pinned so that any change to the encoding breaks this test, not old audit logs. The value
    # was checked by hand: printf '%s' '[1,"2026-11-27T18:00:00.123456Z",...]' | sha256sum
    assert (
        audit.event_hash(
            1,
            "2026-11-27T18:00:00.123456Z",
            "U012ABCDEF",
            "delete.images",
            "R-1042",
            [GUID_A],
            "ok",
            {"reason": "Löschung 😀 שלום", "count": 3, "ok": True, "none": None},
            GENESIS,
        )
        == "06dc82707691caa1b2b982ab030042ad5e45d399139be96929092dee8ff975cb"
    )


# --- secrets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("details", "secrets", "expected"),
    [
        ({"a": "xoxb-123"}, ["xoxb-123"], {"a": "[redacted]"}),
        ({"a": "key=abc123;"}, ["abc123"], {"a": "key=[redacted];"}),
        ({"a": ["x", {"b": "tok tok"}]}, ["tok"], {"a": ["x", {"b": "[redacted] [redacted]"}]}),
        ({"a": ("tok", 1, None, True)}, ["tok"], {"a": ["[redacted]", 1, None, True]}),
        ({"tok-key": 1}, ["tok"], {"[redacted]-key": 1}),
        ({"a": "abcdef"}, ["abc", "abcdef"], {"a": "[redacted]"}),
        ({"a": "a.c"}, ["."], {"a": "a[redacted]c"}),
        ({"a": "abc"}, ["", "zzz"], {"a": "abc"}),
        ({"a": "abc"}, [], {"a": "abc"}),
    ],
)
def test_audit_append_redacts_secrets_in_details(
    conn: sqlite3.Connection, details: dict[str, Any], secrets: list[str], expected: dict[str, Any]
) -> None:
    event = _append(conn, details=details, secrets=secrets)

    assert event.details == expected
    assert audit.verify(conn).ok


SECRET = "s3cr3t-training-key-0123456789"


def _assert_secret_absent(conn: sqlite3.Connection, db_path: Path) -> None:
    for row in _stored_rows(conn):
        assert all(SECRET not in str(value) for value in row)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert SECRET.encode() not in db_path.read_bytes()


def _secret_everywhere() -> dict[str, Any]:
    return {
        "actor": f"U1{SECRET}",
        "action": "x",
        "request_id": f"R-{SECRET}",
        "targets": [f"https://host/{SECRET}"],
        "outcome": f"error: {SECRET}",
        "details": {"error": f"401 for key {SECRET}", SECRET: [{"deep": SECRET}]},
    }


def test_audit_append_redacts_given_secrets(conn: sqlite3.Connection, tmp_path: Path) -> None:
    event = _append(conn, secrets=[SECRET], **_secret_everywhere())

    assert (event.actor, event.request_id, event.targets, event.outcome) == (
        "U1[redacted]",
        "R-[redacted]",
        ("https://host/[redacted]",),
        "error: [redacted]",
    )
    assert event.details == {
        "error": "401 for key [redacted]",
        "[redacted]": [{"deep": "[redacted]"}],
    }
    _assert_secret_absent(conn, tmp_path / "audit.db")
    assert audit.verify(conn).ok


# --- reading and exports -------------------------------------------------------------------


def test_audit_events_filters_by_request_and_day(conn: sqlite3.Connection) -> None:
    events = [
        _append(conn, at=T0 + timedelta(hours=h), request_id=rid)
        for h, rid in [(0, "R-1"), (3, "R-2"), (5, "R-1"), (6, None), (8, "R-1")]
    ]  # T0 is 18:00 UTC: the last two events fall on the next day

    assert list(audit.events(conn, request_id="R-1")) == [events[0], events[2], events[4]]
    assert list(audit.events(conn, since=date(2026, 11, 27))) == events
    assert list(audit.events(conn, since=date(2026, 11, 28))) == events[3:]
    assert list(audit.events(conn, request_id="R-1", since=date(2026, 11, 28))) == [events[4]]
    assert list(audit.events(conn, since=date(2026, 11, 29))) == []
    assert list(audit.events(conn, request_id="R-404")) == []


@pytest.mark.parametrize("n", [0, 1, 5])
def test_audit_write_csv_parses_back(conn: sqlite3.Connection, tmp_path: Path, n: int) -> None:
    events = _fill(conn, n)
    _append(conn, request_id="R-9", details={"reason": 'comma, "quote"\nnewline 😀'})
    events = list(audit.events(conn))
    path = tmp_path / "audit.csv"

    with path.open("w", newline="", encoding="utf-8") as fp:
        assert audit.write_csv(audit.events(conn), fp) == n + 1
    with path.open(newline="", encoding="utf-8") as fp:
        rows = list(csv.DictReader(fp))

    assert rows == [
        {
            "seq": str(e.seq),
            "at": e.at,
            "actor": e.actor,
            "action": e.action,
            "request_id": e.request_id or "",
            "targets": json.dumps(list(e.targets), separators=(",", ":")),
            "outcome": e.outcome,
            "details": json.dumps(
                e.details, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ),
            "prev_hash": e.prev_hash,
            "hash": e.hash,
        }
        for e in events
    ]
    stored = _stored_rows(conn)
    for row in rows:  # an auditor can recompute every hash from the CSV alone
        values = list(row.values())
        values[0] = int(values[0])
        values[4] = values[4] or None
        assert _recipe_hash(tuple(values)) == row["hash"] == stored[int(row["seq"]) - 1][9]


@pytest.mark.parametrize("n", [0, 1, 5])
def test_audit_write_jsonl_parses_back(conn: sqlite3.Connection, tmp_path: Path, n: int) -> None:
    _fill(conn, n)
    _append(conn, details={"reason": "line\nbreak \u2028 😀"})
    events = list(audit.events(conn))
    path = tmp_path / "audit.jsonl"

    with path.open("w", encoding="utf-8") as fp:
        assert audit.write_jsonl(events, fp) == n + 1
    lines = path.read_text(encoding="utf-8").splitlines()

    assert len(lines) == n + 1
    assert [json.loads(line) for line in lines] == [e.to_dict() for e in events]
    assert json.loads(lines[-1])["details"] == {"reason": "line\nbreak \u2028 😀"}
    assert "😀" in lines[-1]  # UTF-8, not \u escapes


# --- Slack mirror and witness --------------------------------------------------------------


def test_audit_mirror_line_text(conn: sqlite3.Connection) -> None:
    with_request = _append(conn, action="delete.approved", request_id="R-1042", actor="U9")
    without = _append(conn, action="audit.verify", actor="U9", outcome="error")

    assert audit.mirror_line(with_request) == (
        f"#1 delete.approved R-1042 by U9 · ok · hash {with_request.hash[:16]}…"
    )
    assert audit.mirror_line(without) == (
        f"#2 audit.verify by U9 · error · hash {without.hash[:16]}…"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#12 delete.images R-3 by U1 · ok · hash 0123456789abcdef…", (12, "0123456789abcdef")),
        (":lock: #7 x by U1 · ok · hash 0123456789abcdef…", (7, "0123456789abcdef")),
        (
            "#7 x by a · hash 1111111111111111 · ok · hash 0123456789abcdef…",
            (7, "0123456789abcdef"),
        ),
        ("#7 x &lt;y&gt; by U1 · ok · hash 0123456789abcdef…", (7, "0123456789abcdef")),
        ("#7 x by U1 · ok · hash 0123456789ABCDEF…", None),
        ("#7 x by U1 · ok · hash 0123…", None),
        ("Audit log intact: 3 events", None),
        ("", None),
    ],
)
def test_audit_parse_mirror_line(text: str, expected: tuple[int, str] | None) -> None:
    assert audit.parse_mirror_line(text) == expected


def test_audit_mirror_lines_round_trip_into_a_witness(conn: sqlite3.Connection) -> None:
    events = _fill(conn, 5)
    witnessed = [audit.parse_mirror_line(audit.mirror_line(e)) for e in events]

    assert witnessed == [(e.seq, e.hash[:16]) for e in events]
    assert audit.check_against_witness(conn, [w for w in witnessed if w]) == Verification(
        True, 5, 5, events[-1].hash
    )


def test_audit_witness_catches_a_rewritten_chain(conn: sqlite3.Connection) -> None:
    events = _fill(conn, 5)
    witnessed = [(e.seq, e.hash[:16]) for e in events]
    # Rewrite history from event 3 on with a self-consistent chain: verify() alone cannot tell.
    _tamper(conn, "DELETE FROM audit_events WHERE seq >= 3")
    conn.execute("BEGIN IMMEDIATE")
    for _ in range(3):
        audit.append(conn, at=T0, actor="U0FORGER", action="request.created")
    conn.execute("COMMIT")

    assert audit.verify(conn).ok
    assert audit.check_against_witness(conn, witnessed) == Verification(
        False, 2, 2, events[1].hash, 3, "event 3 does not match the witness"
    )


def test_audit_witness_catches_a_truncated_tail(conn: sqlite3.Connection) -> None:
    events = _fill(conn, 5)
    witnessed = [(e.seq, e.hash[:16]) for e in events]
    _tamper(conn, "DELETE FROM audit_events WHERE seq = 5")

    assert audit.check_against_witness(conn, witnessed) == Verification(
        False, 4, 4, events[3].hash, 5, "event 5 missing (the witness has #5)"
    )


def test_audit_witness_reports_the_chain_break_when_it_comes_first(
    conn: sqlite3.Connection,
) -> None:
    events = _fill(conn, 5)
    _tamper(conn, "UPDATE audit_events SET outcome = 'forged' WHERE seq = 2")

    assert audit.check_against_witness(conn, [(4, "ffff")]) == Verification(
        False, 1, 1, events[0].hash, 2, "event 2 was altered (hash mismatch)"
    )


# --- summaries -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verification", "summary"),
    [
        (Verification(True, 0, 0, GENESIS), "Audit log intact: no events yet."),
        (
            Verification(True, 1, 1, "0123456789abcdef" + "0" * 48),
            "Audit log intact: 1 event, head #1 hash 0123456789abcdef…",
        ),
        (
            Verification(True, 1042, 1042, "fedcba9876543210" + "0" * 48),
            "Audit log intact: 1,042 events, head #1042 hash fedcba9876543210…",
        ),
        (
            Verification(False, 56, 56, "a" * 64, 57, "event 57 was altered (hash mismatch)"),
            "Audit log BROKEN at event #57: event 57 was altered (hash mismatch); "
            "56 events verified up to #56.",
        ),
        (
            Verification(False, 0, 0, GENESIS, 1, "event 1 missing"),
            "Audit log BROKEN at event #1: event 1 missing; no event verified before it.",
        ),
    ],
)
def test_audit_verification_summary(verification: Verification, summary: str) -> None:
    assert verification.summary() == summary


# --- concurrency ---------------------------------------------------------------------------


def test_audit_concurrent_appends_make_one_valid_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.executescript(audit.SCHEMA_SQL)
    errors: list[BaseException] = []
    per_thread = 25

    def writer(worker: int) -> None:
        conn = sqlite3.connect(path, isolation_level=None, timeout=60)
        try:
            for i in range(per_thread):
                conn.execute("BEGIN IMMEDIATE")
                audit.append(conn, at=T0, actor=f"U{worker}", action="job.step", details={"i": i})
                conn.execute("COMMIT")
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    try:
        assert errors == []
        seqs = [row[0] for row in setup.execute("SELECT seq FROM audit_events ORDER BY seq")]
        assert seqs == list(range(1, 4 * per_thread + 1))
        result = audit.verify(setup)
        assert result.ok, result.summary()
        assert result.count == 4 * per_thread
        by_actor: dict[str, list[int]] = {}
        for event in audit.events(setup):
            by_actor.setdefault(event.actor, []).append(event.details["i"])
        assert by_actor == {f"U{w}": list(range(per_thread)) for w in range(4)}
    finally:
        setup.close()


# --- which witness lines count ------------------------------------------------------------------

LINE = "#{} x by U1 · ok · hash " + "ab" * 8 + "…"
BOT = {"user": "U0BOT", "bot_id": "B0BOT"}


def _msg(seq: int, ts: str, **fields: Any) -> dict[str, Any]:
    return {"type": "message", "ts": ts, "text": LINE.format(seq), **fields}


def test_witness_counts_only_the_bots_top_level_unedited_lines() -> None:
    messages = [
        _msg(1, "1.0", **BOT),
        _msg(2, "2.0", user="U0EVE"),
        _msg(3, "3.0", user="U0APP", bot_id="B0APP"),
        _msg(4, "4.0", **BOT, thread_ts="1.0"),
        _msg(5, "5.0", **BOT, edited={"user": "U0BOT", "ts": "6.0"}),
        _msg(6, "6.0", **BOT, subtype="thread_broadcast", thread_ts="1.0"),
        _msg(7, "7.0", **BOT, thread_ts="7.0"),  # a thread's parent is top level
        _msg(8, "8.0", subtype="bot_message", bot_id="B0BOT", username="legacy"),
        {"type": "message", "ts": "9.0", "text": "hello", **BOT},
    ]
    seen = audit.read_witness(messages, "U0BOT")
    assert seen.bot == "U0BOT (bot B0BOT)"
    assert [seq for seq, _ in seen.lines] == [1, 7, 8]  # 8: its bot id is the bot's
    assert [(i.ts, i.reason.split(" ")[0:3]) for i in seen.ignored] == [
        ("2.0", ["posted", "by", "a"]),
        ("3.0", ["posted", "by", "another"]),
        ("4.0", ["a", "thread", "reply"]),
        ("5.0", ["edited", "by", "U0BOT"]),
        ("6.0", ["a", "thread_broadcast", "message,"]),
    ]
    by_bot_id = audit.read_witness(messages, "B0BOT")
    assert [seq for seq, _ in by_bot_id.lines] == [1, 7, 8]


def test_witness_finds_the_only_app_or_asks_which() -> None:
    assert audit.read_witness([_msg(1, "1.0", **BOT), _msg(2, "2.0", user="U0EVE")]).bot == (
        "U0BOT (bot B0BOT)"
    )
    with pytest.raises(ValueError, match="no audit line in the export was posted by an app"):
        audit.read_witness([_msg(1, "1.0", user="U0EVE"), {"text": LINE.format(2)}])
    with pytest.raises(ValueError, match=r"several apps \(B0APP, B0BOT\).*--bot-user"):
        audit.read_witness([_msg(1, "1.0", **BOT), _msg(2, "2.0", user="U0A", bot_id="B0APP")])


def test_witness_counts_every_line_of_a_batched_message() -> None:
    batched = {**_msg(1, "1.0", **BOT), "text": f"{LINE.format(1)}\n{LINE.format(2)}"}
    forged = {**_msg(3, "2.0", user="U0EVE"), "text": f"{LINE.format(3)}\n{LINE.format(4)}"}
    seen = audit.read_witness([batched, forged])
    assert [seq for seq, _ in seen.lines] == [1, 2]
    assert [i.ts for i in seen.ignored] == ["2.0"]
