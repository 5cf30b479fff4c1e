"""Shared fixtures: the whole stack (both emulators and the bot over real HTTP) per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.emulators.customvision import Seed
from bot.emulators.stack import Stack, start_stack

SMALL = Seed(projects=2, iterations=2, tags=3, images=40, predictions=6, image_bytes=512)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """A running bot against fresh emulators with small demo data."""
    running = start_stack(tmp_path, seed=SMALL)
    try:
        yield running
    finally:
        running.close()
