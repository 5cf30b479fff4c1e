"""The request lifecycle: its states, who moves a request from one to the next, and the
stored values the rest of the bot passes around. Pure: no I/O, no clock.

A reviewer reads this module beside `bot.policy` (who may do what): policy decides whether a
person may act; this table decides which status change that action may make. The store
enforces the table (`bot.store`): every status change goes through one function that refuses
(TransitionRefused, with an audit event `request.transition_refused`) a change the table does
not list, and the change itself is a conditional update in the same transaction as its audit
event.

States (`Status`; the stored text is the enum's value):

    queued      an export waits for a worker              (start: an export is submitted)
    previewing  a deletion's preview is being computed    (start: a deletion is submitted)
    pending     a deletion's plan waits for approvals
    approved    enough approvals; the deletion waits for a worker
    running     a worker carries the export or the deletion out
    answered    a deletion the bot cannot do itself; the manual steps were given   (end)
    done        finished as asked                                                  (end)
    failed      stopped by an error; `retry` resumes it                            (end*)
    cancelled   stopped by its requester                                           (end)
    rejected    an approver said no                                                (end)
    expired     not approved within the approval window                            (end)

Transitions (`TRANSITIONS`; "-" is a request not yet stored):

    from        to          by
    -           queued      requester     /cv export ...
    -           previewing  requester     /cv delete ...
    -           answered    requester     /cv delete account|exports (manual steps)
    queued      running     worker        a worker claims the export
    approved    running     worker        a worker claims the deletion
    previewing  pending     worker        the preview is computed and frozen as the plan
    running     pending     worker        the live contents outgrew the approved plan: new plan
    running     done        worker
    previewing  failed      worker
    running     failed      worker
    cancelled   cancelled   worker        the worker stopped at a checkpoint and says so
    queued      cancelled   requester     (`bot.policy.CANCELLABLE` says which, per kind)
    running     cancelled   requester
    previewing  cancelled   requester
    pending     cancelled   requester
    pending     approved    approver      the last required approval
    pending     rejected    approver
    pending     expired     housekeeping  the approval window passed
    failed      queued      requester, approver    retry an export
    failed      approved    requester, approver    retry a deletion on approvals in force
    failed      previewing  requester, approver    retry a deletion with a new preview

Jobs (`Job`, `JobKind`, `JobStatus`) carry out the work of a request: `preview` and `delete`
for a deletion, `export` for an export. A job is queued, running (under a lease), then done,
failed or cancelled; a failed job is queued again by `retry` and resumes from its checkpoint.
A deletion's plan is a list of `DeletionItem`s (pending, sending, deleted, gone, failed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from bot.deadline import Deadline
from bot.errors import RequestStateError
from bot.ids import format_request_id

__all__ = [
    "OPEN",
    "STOPPED",
    "TERMINAL",
    "TRANSITIONS",
    "DeletionItem",
    "ItemStatus",
    "Job",
    "JobKind",
    "JobStatus",
    "RequestKind",
    "RequestRecord",
    "Role",
    "Status",
    "TransitionRefused",
    "allowed",
    "sources",
]


class Status(StrEnum):
    """A request's status, stored as its value."""

    QUEUED = "queued"
    PREVIEWING = "previewing"
    PENDING = "pending"
    APPROVED = "approved"
    RUNNING = "running"
    ANSWERED = "answered"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    EXPIRED = "expired"

    @property
    def label(self) -> str:
        """Return the status as people read it in the request's message."""
        return _LABELS[self]


_LABELS = {
    Status.QUEUED: "Queued",
    Status.RUNNING: "Running",
    Status.PREVIEWING: "Computing the preview",
    Status.PENDING: "Waiting for approval",
    Status.APPROVED: "Approved, starting",
    Status.DONE: "Done",
    Status.FAILED: "Failed",
    Status.CANCELLED: "Cancelled",
    Status.REJECTED: "Rejected",
    Status.EXPIRED: "Expired",
    Status.ANSWERED: "Answered (manual steps)",
}

# Ended: no job will move it again (a failed request only by `retry`).
TERMINAL = frozenset(
    {
        Status.DONE,
        Status.FAILED,
        Status.CANCELLED,
        Status.REJECTED,
        Status.EXPIRED,
        Status.ANSWERED,
    }
)
# Still in progress: shown by `status` without `--all`.
OPEN = frozenset(Status) - TERMINAL
# Ended without being done: its statutory clock stopped (a failed request's clock runs on).
STOPPED = frozenset({Status.CANCELLED, Status.REJECTED, Status.EXPIRED})


class RequestKind(StrEnum):
    """What a request asks for."""

    EXPORT = "export"
    DELETE = "delete"
    MANUAL = "manual"  # a deletion the bot cannot do itself: it answers with the steps


class JobKind(StrEnum):
    """The work a job does."""

    PREVIEW = "preview"  # compute a deletion's plan
    EXPORT = "export"
    DELETE = "delete"  # carry out an approved plan


class JobStatus(StrEnum):
    """A job's status, stored as its value."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ItemStatus(StrEnum):
    """A deletion item's status: how far its delete call got."""

    PENDING = "pending"  # not attempted
    SENDING = "sending"  # the call went out; its outcome is not known yet
    DELETED = "deleted"  # the service confirmed the delete
    GONE = "gone"  # already absent (not removed by this request)
    FAILED = "failed"  # the service refused it


class Role(StrEnum):
    """Whose action moves a request."""

    REQUESTER = "requester"  # the person who made the request
    APPROVER = "approver"  # a person listed in BOT_APPROVERS (and not the requester)
    WORKER = "worker"  # the job runner, carrying out the work
    HOUSEKEEPING = "housekeeping"  # the bot's periodic sweep (expiry)


_S = Status
_R = Role
# (from, to) -> who may make that change. None as "from" is a request not yet stored.
TRANSITIONS: Mapping[tuple[Status | None, Status], frozenset[Role]] = {
    (None, _S.QUEUED): frozenset({_R.REQUESTER}),
    (None, _S.PREVIEWING): frozenset({_R.REQUESTER}),
    (None, _S.ANSWERED): frozenset({_R.REQUESTER}),
    (_S.QUEUED, _S.RUNNING): frozenset({_R.WORKER}),
    (_S.APPROVED, _S.RUNNING): frozenset({_R.WORKER}),
    (_S.PREVIEWING, _S.PENDING): frozenset({_R.WORKER}),
    (_S.RUNNING, _S.PENDING): frozenset({_R.WORKER}),
    (_S.RUNNING, _S.DONE): frozenset({_R.WORKER}),
    (_S.PREVIEWING, _S.FAILED): frozenset({_R.WORKER}),
    (_S.RUNNING, _S.FAILED): frozenset({_R.WORKER}),
    (_S.CANCELLED, _S.CANCELLED): frozenset({_R.WORKER}),
    (_S.QUEUED, _S.CANCELLED): frozenset({_R.REQUESTER}),
    (_S.RUNNING, _S.CANCELLED): frozenset({_R.REQUESTER}),
    (_S.PREVIEWING, _S.CANCELLED): frozenset({_R.REQUESTER}),
    (_S.PENDING, _S.CANCELLED): frozenset({_R.REQUESTER}),
    (_S.PENDING, _S.APPROVED): frozenset({_R.APPROVER}),
    (_S.PENDING, _S.REJECTED): frozenset({_R.APPROVER}),
    (_S.PENDING, _S.EXPIRED): frozenset({_R.HOUSEKEEPING}),
    (_S.FAILED, _S.QUEUED): frozenset({_R.REQUESTER, _R.APPROVER}),
    (_S.FAILED, _S.APPROVED): frozenset({_R.REQUESTER, _R.APPROVER}),
    (_S.FAILED, _S.PREVIEWING): frozenset({_R.REQUESTER, _R.APPROVER}),
}


def allowed(current: Status | None, to: Status, by: Role) -> bool:
    """Return True when the table lets `by` move a request from `current` to `to`."""
    return by in TRANSITIONS.get((current, to), frozenset())


def sources(to: Status, by: Role) -> frozenset[Status]:
    """Return the statuses from which `by` may move a request to `to`."""
    return frozenset(
        current
        for (current, target), roles in TRANSITIONS.items()
        if target == to and by in roles and current is not None
    )


class TransitionRefused(RequestStateError):
    """A status change the transitions table does not allow (the store refused it).

    `request_id` is None for a request not stored yet; `actor` is who asked (a Slack user id,
    or "bot"), for the audit event that records the refusal.
    """

    def __init__(
        self, request_id: str | None, current: Status | None, to: Status, by: Role, actor: str
    ) -> None:
        self.request_id = request_id
        self.current = current
        self.to = to
        self.by = by
        self.actor = actor
        if request_id is None or current is None:
            message = f"A request cannot start as {to} on its {by}'s action."
        else:
            message = f"{request_id} is {current}: its {by} cannot make it {to}."
        super().__init__(message)


@dataclass(frozen=True)
class RequestRecord:
    """One stored request, as the rest of the bot sees it."""

    number: int
    kind: RequestKind
    command: Mapping[str, Any]
    text: str
    requester: str
    channel: str
    status: Status
    created_at: datetime
    updated_at: datetime
    expires_at: datetime | None
    message_ts: str | None
    preview: Mapping[str, Any] | None
    progress: Mapping[str, Any] | None
    result: Mapping[str, Any] | None
    error: str | None
    decided_by: str | None
    decision_reason: str | None
    approvals: tuple[str, ...]
    approved_at: datetime | None = None  # when the last recorded approval was given
    deadline: Deadline | None = None  # the statutory clock; None for requests stored before it

    def __post_init__(self) -> None:
        # Stored text in, enums out: a value the lifecycle does not know raises ValueError.
        object.__setattr__(self, "kind", RequestKind(self.kind))
        object.__setattr__(self, "status", Status(self.status))

    @property
    def id(self) -> str:
        """The human-typeable id, `R-1042`."""
        return format_request_id(self.number)


@dataclass(frozen=True)
class Job:
    """One stored job: the work of a request, resumable from its checkpoint."""

    id: int
    request_number: int
    kind: JobKind
    status: JobStatus
    attempts: int
    checkpoint: Mapping[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", JobKind(self.kind))
        object.__setattr__(self, "status", JobStatus(self.status))

    @property
    def request_id(self) -> str:
        """The human-typeable id of the job's request."""
        return format_request_id(self.request_number)


@dataclass(frozen=True)
class DeletionItem:
    """One delete call of a deletion's plan, and how far it got.

    `kind` is unpublish | image | prediction | tag | iteration | project; `parent_id` is the
    iteration of an unpublish, the project or iteration whose snapshot holds an image, else
    None. Items run in `seq` order, a `batch` per call; `verified` is None, gone or survived.
    `resource` names the Custom Vision resource holding `project_id` when the plan spans
    several projects (`delete subject`); None: the request's own resource.
    """

    seq: int
    kind: str
    project_id: str
    target_id: str
    parent_id: str | None
    batch: int
    status: ItemStatus = ItemStatus.PENDING
    http_status: int | None = None
    operation: str | None = None
    at: str | None = None
    verified: str | None = None
    resource: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", ItemStatus(self.status))
