"""Logging: one line per event on stderr, text or JSON, each carrying its request id.

The request being worked on is a context variable set by the job runner and the Slack outbox,
so every line logged on its behalf names it. Secrets are redacted from every line.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO, Any

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")


@contextmanager
def request_context(request_id: str | None) -> Iterator[None]:
    """Tag every log line in the block with `request_id`."""
    token = REQUEST_ID.set(request_id or "-")
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Stamps each record with the request being worked on."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class RedactingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes formatted lines with every configured secret replaced, tracebacks included."""

    def __init__(self, stream: IO[str], secrets: Sequence[str]) -> None:
        super().__init__(stream)
        self.secrets = [s for s in secrets if s]

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        for secret in self.secrets:
            line = line.replace(secret, "[redacted]")
        return line


def setup_logging(fmt: str, secrets: Sequence[str] = (), stream: IO[str] | None = None) -> None:
    """Log one line per event to stderr, human-readable or JSON, with secrets redacted."""
    handler = RedactingHandler(stream or sys.stderr, secrets)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(request_id)s %(name)s: %(message)s")
        )
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
