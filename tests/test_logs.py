"""Log lines: one per event, text or JSON, each with its request id, never a secret."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import request_context, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_logs_carry_the_request_id_and_never_a_secret(restore_logging: None, fmt: str) -> None:
    out = io.StringIO()
    setup_logging(fmt, ["xoxb-top-secret"], stream=out)
    log = logging.getLogger("bot.test")
    with request_context("R-1042"):
        log.info("posted with token %s", "xoxb-top-secret")
        try:
            raise RuntimeError("failed with xoxb-top-secret")
        except RuntimeError:
            log.exception("crash")
    log.info("idle")
    text = out.getvalue()
    assert "xoxb-top-secret" not in text
    lines = text.strip().splitlines()
    if fmt == "json":
        records = [json.loads(line) for line in lines if line.startswith("{")]
        assert [r["request_id"] for r in records] == ["R-1042", "R-1042", "-"]
        assert "[redacted]" in records[1]["traceback"]
    else:
        assert " R-1042 bot.test: posted with token [redacted]" in lines[0]
        assert " - bot.test: idle" in lines[-1]
