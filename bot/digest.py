"""The SHA-256 of a file, read in blocks: what packages, the download cache and uploads check."""

from __future__ import annotations

import hashlib
from pathlib import Path

_BLOCK = 1024 * 1024


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of the file at `path`; raise OSError when it cannot be read."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()
