"""The wording people read in messages: counts, plurals, lists, sizes and short ids. Pure.

One style everywhere:
- counts carry a thousands separator and the noun agrees: `1 image`, `1,200 images`;
- lists read `a`, `a and b`, `a, b and c` (no comma before the "and");
- sizes are binary with one decimal: `512 bytes`, `1.5 KB`, `12.3 MB`;
- ids are shown by their first 8 characters and an ellipsis: `6c1f2a3b…`;
- waits are rounded up to the minute: `40 seconds`, `2 days 3 hours 15 minutes`.

Each domain module keeps its own nouns (what its counts are of); this module only words them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def plural(n: int, one: str, many: str | None = None) -> str:
    """Return the noun for `n` things: `one` for exactly 1, else `many` (default `one` + "s")."""
    if n == 1:
        return one
    return one + "s" if many is None else many


def count(n: int, one: str, many: str | None = None) -> str:
    """Return `n` and its noun: `1 image`, `1,200 images`."""
    return f"{n:,} {plural(n, one, many)}"


def join_words(words: Iterable[str]) -> str:
    """Return the words as one list: `a`, `a and b`, `a, b and c` ("" when there are none)."""
    listed = list(words)
    if len(listed) < 2:
        return "".join(listed)
    return ", ".join(listed[:-1]) + " and " + listed[-1]


def describe_counts(counts: Mapping[str, int], nouns: Mapping[str, tuple[str, str]]) -> str:
    """Return the non-zero counts as a list in the order of `nouns` (key -> (one, many)).

    `1 project, 240 images and 4 tags`; "nothing" when every count is zero. Keys missing from
    `nouns` are not named.
    """
    words = [count(counts[key], one, many) for key, (one, many) in nouns.items() if counts.get(key)]
    return join_words(words) if words else "nothing"


def human_size(size: int) -> str:
    """Return a byte count for people: 512 bytes, 1.5 KB, 12.3 MB (1 KB = 1024 bytes)."""
    if size < 1024:
        return count(size, "byte")
    value, unit = size / 1024, "KB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


def short_id(guid: str | None) -> str:
    """Return the first 8 characters of an id and an ellipsis, as messages show ids ("?…")."""
    return f"{(guid or '?')[:8]}\u2026"


def short_ids(ids: Sequence[str], shown: int = 3) -> str:
    """Return up to `shown` short ids as a list, then how many more: `a…, b…, c… and 2 more`."""
    words = [short_id(guid) for guid in ids[:shown]]
    if len(ids) > shown:
        words.append(f"{len(ids) - shown:,} more")
    return join_words(words)


def describe_wait(seconds: float) -> str:
    """Return a wait as people say it, rounded up: `40 seconds`, `2 days 3 hours 15 minutes`."""
    whole = max(0, math.ceil(seconds))
    if whole < 60:
        return count(whole, "second")
    minutes_total = -(-whole // 60)  # rounded up: never say less than the real wait
    days, rest = divmod(minutes_total, 24 * 60)
    hours, minutes = divmod(rest, 60)
    parts = ((days, "day"), (hours, "hour"), (minutes, "minute"))
    return " ".join(count(n, unit) for n, unit in parts if n)
