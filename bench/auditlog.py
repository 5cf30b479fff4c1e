"""Benchmark 5: verifying the audit chain of a million events.

I/O module. Builds a bot database (bot.db's migrations) in a temporary file, fills
`audit_events` with a realistic mix of events chained with bot.audit.event_hash (direct inserts
in big transactions: the build is not what is measured), then times bot.audit.verify on a fresh
connection, against the time it takes just to read every row with the same query.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import report
from bench.harness import BenchError, scratch
from bench.report import Result, Row
from bench.runs import Benchmark, Figures, Scale
from bot import audit
from bot.db import connect, migrate

EVENTS: dict[Scale, int] = {"smoke": 2_000, "bench": 200_000, "full": 1_000_000}
TARGET_SECONDS = 10.0
INSERT_BATCH = 20_000
_INSERT = (
    "INSERT INTO audit_events"
    " (seq, at, actor, action, request_id, targets, outcome, details, prev_hash, hash)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_READ = (
    "SELECT seq, at, actor, action, request_id, targets, outcome, details, prev_hash, hash"
    " FROM audit_events ORDER BY seq"
)


def _canonical(value: Any) -> str:
    # The stored form of targets/details (bot.audit's module docstring: keys sorted, compact).
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_GUIDS = [
    str(uuid.UUID(bytes=hashlib.md5(str(n).encode(), usedforsecurity=False).digest()))
    for n in range(4099)  # a prime count, so ids vary from request to request
]


def _guid(n: int) -> str:
    return _GUIDS[n % len(_GUIDS)]


def _events(n: int) -> Iterator[tuple[str, str, str | None, list[str], str, dict[str, Any]]]:
    """Yield (actor, action, request_id, targets, outcome, details): what requests leave.

    Per request: the command, the queueing, the preview, approvals, progress, API calls (one
    in a hundred of them a deletion batch naming 256 image ids), the completion.
    """
    project = _guid(0)
    i = 0
    number = 1000
    while True:
        number += 1
        rid = f"R-{number}"
        script: list[tuple[str, str, str | None, list[str], str, dict[str, Any]]] = [
            (
                "U0ALICE",
                "command.received",
                rid,
                [],
                "ok",
                {"text": f"delete images {project} --tag {_guid(number)} --ticket DSR-{number}"},
            ),
            ("bot", "request.queued", rid, [project], "ok", {"kind": "delete", "job": "preview"}),
            ("bot", "preview.computed", rid, [project], "ok", {"counts": {"image": 512}}),
            ("U0BOB", "approval.granted", rid, [], "ok", {"approvals": 1, "required": 1}),
        ]
        for batch in range(6):
            big = (i // 10) % 100 == 0
            targets = [_guid(number * 1000 + k) for k in range(256 if big else 2)]
            script.append(
                (
                    "bot",
                    "api.call",
                    rid,
                    targets,
                    "ok",
                    {
                        "operation": "DeleteImages",
                        "project_id": project,
                        "batch": batch,
                        "http_status": 202,
                    },
                )
            )
        script.append(("bot", "request.completed", rid, [], "ok", {"counts": {"image": 512}}))
        for event in script:
            yield event
            i += 1
            if i >= n:
                return


def build(path: Path, n: int) -> None:
    """Create a bot database at `path` whose audit chain holds `n` valid events."""
    conn = connect(path)
    try:
        migrate(conn)
        conn.execute("PRAGMA synchronous = OFF")  # building is not what is measured
        start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
        prev = audit.GENESIS
        rows: list[tuple[Any, ...]] = []
        conn.execute("BEGIN IMMEDIATE")
        for seq, (actor, action, rid, targets, outcome, details) in enumerate(_events(n), 1):
            at = audit.format_at(start + timedelta(milliseconds=50 * seq))
            digest = audit.event_hash(seq, at, actor, action, rid, targets, outcome, details, prev)
            stored = (_canonical(targets), outcome, _canonical(details))
            rows.append((seq, at, actor, action, rid, *stored, prev, digest))
            prev = digest
            if len(rows) >= INSERT_BATCH:
                conn.executemany(_INSERT, rows)
                rows.clear()
        conn.executemany(_INSERT, rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def _read_all(path: Path) -> tuple[float, int]:
    conn = connect(path)
    try:
        started = time.perf_counter()
        rows = 0
        cursor = conn.execute(_READ)
        for _row in cursor:
            rows += 1
        cursor.close()
        return time.perf_counter() - started, rows
    finally:
        conn.close()


def _verify(path: Path) -> tuple[float, audit.Verification]:
    conn = connect(path)
    try:
        started = time.perf_counter()
        result = audit.verify(conn)
        return time.perf_counter() - started, result
    finally:
        conn.close()


def measure(scale: Scale) -> Figures:
    """Build the chain, verify it; return one run's figures."""
    n = EVENTS[scale]
    with scratch("audit") as folder:
        path = folder / "audit.db"
        started = time.perf_counter()
        build(path, n)
        built = time.perf_counter() - started
        size_mb = path.stat().st_size / 1e6
        read_s, rows = _read_all(path)  # also warms the page cache for both timings
        read_s, rows = _read_all(path)
        verify_s, result = _verify(path)
    if not result.ok or result.count != n or rows != n:
        raise BenchError(f"the built chain did not verify: {result.summary()} ({rows} rows)")
    # The 10 s target is for a million events: scaled runs are judged against their share.
    target_s = TARGET_SECONDS * n / EVENTS["full"]
    return {
        "events": n,
        "verify_s": verify_s,
        "read_s": read_s,
        "build_s": built,
        "db_mb": size_mb,
        "target_s": target_s,
        "verify_over_target": verify_s / target_s,
        "verify_over_read": report.ratio(verify_s, read_s),
        "events_per_s": n / verify_s,
    }


def present(f: Figures) -> Result:
    """Return the table rows of `f`."""
    n = f"{f['events']:,.0f}"
    return Result(
        key="audit",
        title="5. Audit verification",
        setup=f"{n} chained events, {f['db_mb']:,.0f} MB SQLite file",
        rows=(
            Row(
                f"bot.audit.verify over {n} events",
                report.seconds(f["verify_s"]),
                f"< {report.seconds(f['target_s'])}",
                f["verify_over_target"] < 1,
            ),
            Row(
                f"verify ÷ {report.seconds(f['target_s'])} target",
                report.times(f["verify_over_target"]),
            ),
            Row("baseline: read every row, no hashing", report.seconds(f["read_s"])),
            Row("verify ÷ read", report.times(f["verify_over_read"])),
            Row("events verified per second", report.count(f["events_per_s"])),
            Row("building the chain (context)", report.seconds(f["build_s"])),
        ),
        figures=f,
    )


BENCHMARK = Benchmark("audit", measure, present)
