"""Shared fixtures: whole stacks (both emulators and the bot over real HTTP) per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.emulators.customvision import Seed
from bot.emulators.stack import Stack, start_stack

SMALL = Seed(projects=2, iterations=2, tags=3, images=40, predictions=6, image_bytes=512)

StartStack = Callable[..., Stack]


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[StartStack]:
    """Start stacks with `stacks(seed=..., env=..., verify_timeout=...)`; all close at the end."""
    started: list[Stack] = []

    def start(*, seed: Seed = SMALL, **options: Any) -> Stack:
        started.append(start_stack(tmp_path / f"stack-{len(started)}", seed=seed, **options))
        return started[-1]

    yield start
    for running in reversed(started):
        running.close()


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    """A running bot against fresh emulators with small demo data."""
    return stacks()
