"""Slack's length limits, counted as Slack counts them, and the helpers that keep text within.

Pure. Slack measures text in UTF-16 code units (an emoji outside the Basic Multilingual Plane
counts twice), so every limit here is in those units. Sources: Slack's Block Kit reference
(section 3,000, fields 2,000, header 150, button text 75 and value 2,000, confirmation dialog
100/300/30/30, modal title 24, private_metadata 3,000), the chat.postMessage reference (text
is cut at 40,000; keep it under 4,000), and bolt-js issues 2509 and 2867 for the undocumented
total of block text answered `msg_blocks_too_long` (rejected from about 11,300 to 13,300
characters in practice; we stay well under).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

MAX_REPLY_TEXT = 4_000  # Slack asks for message text under 4,000 characters
MAX_SECTION_TEXT = 3_000
MAX_FIELD_TEXT = 2_000
MAX_CONTEXT_TEXT = 3_000
MAX_HEADER_TEXT = 150
MAX_BUTTON_TEXT = 75
MAX_BUTTON_VALUE = 2_000
MAX_CONFIRM_TITLE = 100
MAX_CONFIRM_TEXT = 300
MAX_CONFIRM_BUTTON = 30
MAX_MODAL_TITLE = 24
MAX_PRIVATE_METADATA = 3_000
MAX_INPUT_LABEL = 2_000
MAX_BLOCKS_TEXT = 10_000  # our budget for all text in one message's blocks (Slack: ~12,000)

ELLIPSIS = "…"


def units(text: str) -> int:
    """Return the length of `text` as Slack counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def cut(text: str, limit: int, marker: str = ELLIPSIS) -> str:
    """Return `text` if it fits `limit` units, else its head and `marker`, within `limit`."""
    if units(text) <= limit:
        return text
    room = limit - units(marker)
    head: list[str] = []
    used = 0
    for char in text:
        size = 2 if ord(char) > 0xFFFF else 1
        if used + size > room:
            break
        head.append(char)
        used += size
    return "".join(head) + marker


def fit_lines(lines: Sequence[str], limit: int, more: Callable[[int], str]) -> str:
    """Return as many whole lines as fit in `limit` units, then `more(n)` for the `n` left out.

    `more` says how many lines were left out and where to find them, so nothing is dropped
    silently; a single line longer than the limit is cut with an ellipsis.
    """
    text = "\n".join(lines)
    if units(text) <= limit:
        return text
    kept: list[str] = []
    for index, line in enumerate(lines):
        note = more(len(lines) - index)
        candidate = "\n".join([*kept, line])
        if units(candidate) + 1 + units(note) > limit:
            if not kept:
                room = limit - 1 - units(note)
                return cut(line, room) + "\n" + note if room > 0 else cut(note, limit)
            return "\n".join([*kept, note])
        kept.append(line)
    return "\n".join(kept)


def _texts(value: Any) -> Iterable[str]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if key == "text" and isinstance(item, str):
                yield item
            else:
                yield from _texts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item)


def blocks_text_units(blocks: Sequence[Mapping[str, Any]]) -> int:
    """Return the total text of `blocks` in UTF-16 units (what `msg_blocks_too_long` measures)."""
    return sum(units(text) for text in _texts(list(blocks)))


def _text_objects(value: Any) -> Iterable[dict[str, Any]]:
    if isinstance(value, dict):
        if value.get("type") in ("plain_text", "mrkdwn") and isinstance(value.get("text"), str):
            yield value
        for item in value.values():
            yield from _text_objects(item)
    elif isinstance(value, list):
        for item in value:
            yield from _text_objects(item)


def within_budget(blocks: list[dict[str, Any]], budget: int) -> list[dict[str, Any]]:
    """Return `blocks` with their longest texts cut until all text fits `budget` units.

    The last guard against `msg_blocks_too_long`: builders already keep each text short, so
    this only acts on combinations nobody planned for (a long command, error and reason at once).
    """
    excess = blocks_text_units(blocks) - budget
    while excess > 0:
        longest = max(_text_objects(blocks), key=lambda obj: units(obj["text"]), default=None)
        if longest is None or units(longest["text"]) <= 200:
            break
        size = units(longest["text"])
        longest["text"] = cut(longest["text"], max(200, size - excess))
        excess = blocks_text_units(blocks) - budget
    return blocks
