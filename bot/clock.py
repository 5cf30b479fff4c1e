"""Time as an object, so rules take it as an argument and tests control it."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> datetime:
        """Return the current time, timezone-aware UTC."""
        return datetime.now(UTC)


class FakeClock:
    """A clock that moves only when told to (tests, sandbox)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        """Return the current fake time."""
        with self._lock:
            return self._now

    def advance(self, **delta: float) -> datetime:
        """Move the clock forward by a timedelta's keyword arguments; return the new time."""
        with self._lock:
            self._now += timedelta(**delta)
            return self._now


def iso(moment: datetime) -> str:
    """Return the canonical stored form of a UTC time: 2026-11-27T09:00:00.000000Z."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(text: str) -> datetime:
    """Return the aware UTC datetime of a stored time string (`iso`'s form); raise ValueError
    for any other form."""
    # fromisoformat, a fiftieth of strptime's cost: every request read parses two of these.
    if len(text) != 27 or text[10] != "T" or text[-1] != "Z":
        raise ValueError(f"not a stored time: {text[:40]!r}")
    return datetime.fromisoformat(text)
