"""Identifiers: Custom Vision GUIDs and the bot's own request ids. Pure functions."""

from __future__ import annotations

import re
import uuid

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_REQUEST_ID = re.compile(r"^R-(\d{1,9})$", re.IGNORECASE)


def is_guid(value: str) -> bool:
    """Return True when `value` is a GUID in the 8-4-4-4-12 hex form the service uses."""
    return bool(_GUID.match(value))


def normalize_guid(value: str) -> str:
    """Return the lowercase GUID; raise ValueError when `value` is not a GUID."""
    if not is_guid(value):
        raise ValueError(f"not a GUID: {value!r}")
    return value.lower()


def guid_key(value: str) -> int | str:
    """Return a compact set key for an id: a GUID as its 128-bit int (any case, a small set even
    for 100,000 images), anything else lowercased."""
    return uuid.UUID(value).int if is_guid(value) else value.lower()


def format_request_id(number: int) -> str:
    """Return the human-typeable request id for a request number (`R-1042`)."""
    return f"R-{number}"


def parse_request_id(value: str) -> int | None:
    """Return the request number from `R-1042` (any case), or None when malformed."""
    match = _REQUEST_ID.match(value.strip())
    return int(match.group(1)) if match else None
