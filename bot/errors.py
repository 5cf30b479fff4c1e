"""The project's exceptions, in one hierarchy.

    BotError                      anything with a message fit to show a Slack user
    ├── ConfigError               missing or malformed configuration (lists every problem)
    ├── ParseError                a command the parser rejects (carries the right usage)
    ├── RequestStateError         the request is not in a state that allows this
    │   └── TransitionRefused     a status change the lifecycle table does not list
    │                             (defined beside the table, in bot.lifecycle)
    ├── SlackLookupError          Slack did not answer a lookup a decision needs, in time
    ├── DatabaseBusy              another process held the database's lock for too long
    ├── DatabaseFull              the database's disk is full (the write was rolled back)
    ├── WorkDirFull               the work directory's file system is full
    └── TrainingApiError          the Training API failed (bot.training)
        ├── ServiceError          the service answered an error body ({code, message})
        │   └── NotFound          NotFound* codes
        ├── Unauthorized          401: bad key or endpoint
        ├── Throttled             429 after every retry
        ├── QuotaExhausted        403: the resource's call volume quota is used up (not retried)
        ├── TransportError        timeouts and dropped connections after every retry
        └── MalformedResponse     a body that is not what the spec promises

    JobRetry                      not the request's fault, and cured by running its job again
                                  from its checkpoint (the export's download process died): the
                                  worker retries it with backoff (bot.runner)

A refusal is not an exception: the rules (bot.policy) return a `Decision` whose reason the user
is told. Anything else that is not a BotError is a bug: it reaches the app's error handler with
its traceback.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from typing import Any

from bot.wording import count


class BotError(Exception):
    """Base class: `user_message` is safe to show in Slack (never holds a secret)."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class ConfigError(BotError):
    """The configuration has problems; `problems` lists every one of them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"Configuration has {count(len(self.problems), 'problem')}:\n{lines}")


class ParseError(BotError, ValueError):
    """A command the parser rejects; `usage` is the form that would have worked."""

    def __init__(self, problem: str, usage: str) -> None:
        self.problem = problem
        self.usage = usage
        super().__init__(f"{problem}\nUsage: {usage}" if usage else problem)


class RequestStateError(BotError):
    """The request's stored state does not allow this action."""


class SlackLookupError(BotError):
    """A Slack lookup the rules need (user groups, a channel) failed or missed its time budget.

    Raised before any write, so the message can say that nothing was recorded.
    """


class DatabaseBusy(BotError):
    """The database stayed locked by another connection for longer than the bot waits."""

    def __init__(self, waited: float) -> None:
        super().__init__(
            f"The bot's database was locked by another process for {waited:.0f} s; nothing was "
            "changed. Try again in a few minutes."
        )


class DatabaseFull(BotError):
    """A write to the database failed for lack of space; SQLite rolled it back."""

    def __init__(self, database: Path) -> None:
        self.free_mb = free_mb(database.parent)
        super().__init__(
            f"The bot's database could not be written: the disk holding it is full "
            f"({self.free_mb} MB free). Nothing was changed. An admin must free space on the "
            "disk of BOT_DATABASE; then try again."
        )


class WorkDirFull(BotError):
    """A write into the work directory failed for lack of space (ENOSPC, or a quota)."""

    def __init__(self, work_dir: Path, then: str) -> None:
        self.free_mb = free_mb(work_dir)
        super().__init__(f"work directory full: {self.free_mb} MB free. {then}")


def is_disk_full(exc: BaseException) -> bool:
    """Return True when `exc` is a write that failed for lack of space or quota."""
    return isinstance(exc, OSError) and exc.errno in {errno.ENOSPC, errno.EDQUOT}


def free_mb(folder: Path) -> int:
    """Return the whole megabytes free on the file system holding `folder` (or its parent)."""
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free // (1024 * 1024)
        except OSError:
            continue
    return 0


class TrainingApiError(BotError):
    """A Training API call failed; carries the HTTP status and the service's code."""

    def __init__(
        self,
        user_message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        operation: str | None = None,
        maybe_applied: bool = False,
    ) -> None:
        super().__init__(user_message)
        self.status = status
        self.code = code
        self.operation = operation
        # A change call whose outcome is unknown: some attempt may have reached the service
        # (timeout, dropped connection, 5xx) before the client gave up. Re-read before saying.
        self.maybe_applied = maybe_applied


class ServiceError(TrainingApiError):
    """The service answered with an error body."""


class NotFound(ServiceError):
    """The project, iteration, tag or image does not exist (NotFound* codes)."""


class Unauthorized(TrainingApiError):
    """401: the training key or the endpoint is wrong."""


class Throttled(TrainingApiError):
    """429 answers persisted after every retry."""


class QuotaExhausted(TrainingApiError):
    """403 from the gateway: the call volume quota is used up until `retry_after` seconds pass.

    Retrying before then only fails again, so the client never retries it.
    """

    def __init__(self, user_message: str, *, retry_after: float | None, **kwargs: Any) -> None:
        super().__init__(user_message, **kwargs)
        self.retry_after = retry_after


class TransportError(TrainingApiError):
    """Timeouts or dropped connections persisted after every retry."""


class MalformedResponse(TrainingApiError):
    """The response is not what the spec promises (bad JSON, missing fields, HTML page)."""


class JobRetry(Exception):
    """A job's helper failed in a way that running the job again from its checkpoint cures."""
