"""The lifecycle's transitions table, enforced by the store over a real SQLite file.

Every change the table lists is made; every other (from, to, by) is refused with
TransitionRefused, changes nothing (its whole transaction rolls back) and leaves one audit
event `request.transition_refused`.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from bot import audit
from bot.clock import FakeClock
from bot.db import Database
from bot.lifecycle import (
    OPEN,
    TERMINAL,
    TRANSITIONS,
    RequestKind,
    Role,
    Status,
    TransitionRefused,
    allowed,
    sources,
)
from bot.policy import CANCELLABLE
from bot.store import Store
from tests.harness import walk

S = Status
# How a request reaches each status: where it starts, then the steps the table allows.
PATHS: dict[Status, tuple[Status, ...]] = {
    S.QUEUED: (S.QUEUED,),
    S.PREVIEWING: (S.PREVIEWING,),
    S.ANSWERED: (S.ANSWERED,),
    S.PENDING: (S.PREVIEWING, S.PENDING),
    S.APPROVED: (S.PREVIEWING, S.PENDING, S.APPROVED),
    S.RUNNING: (S.QUEUED, S.RUNNING),
    S.DONE: (S.QUEUED, S.RUNNING, S.DONE),
    S.FAILED: (S.QUEUED, S.RUNNING, S.FAILED),
    S.CANCELLED: (S.QUEUED, S.CANCELLED),
    S.REJECTED: (S.PREVIEWING, S.PENDING, S.REJECTED),
    S.EXPIRED: (S.PREVIEWING, S.PENDING, S.EXPIRED),
}
ALLOWED = sorted(
    (current, to, by)
    for (current, to), roles in TRANSITIONS.items()
    for by in roles
    if current is not None
)
REFUSED = [
    (current, to, by)
    for current, to, by in itertools.product(Status, Status, Role)
    if not allowed(current, to, by)
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    db = Database(tmp_path_factory.mktemp("lifecycle") / "bot.db")
    try:
        yield Store(db, FakeClock())
    finally:
        db.close()


def request_in(store: Store, status: Status) -> int:
    """Store a request and walk it, by the table's own steps, to `status`."""
    start, *path = PATHS[status]
    kind = RequestKind.EXPORT if start == S.QUEUED else RequestKind.DELETE
    with store.write() as conn:
        number = store.create_request(
            conn,
            kind=kind,
            command={"verb": str(kind)},
            text=str(kind),
            requester="U0REQ",
            channel="C0DSR",
            status=start,
        )
        walk(store, conn, number, *path)
    assert store.status_of(number) == status
    return number


def refusals(store: Store, number: int) -> list[audit.Event]:
    return [
        e
        for e in store.audit_events(request_id=f"R-{number}")
        if e.action == "request.transition_refused"
    ]


def test_lifecycle_every_status_is_reachable_and_open_or_terminal() -> None:
    assert set(PATHS) == set(Status)
    assert set(Status) == OPEN | TERMINAL and not OPEN & TERMINAL
    # Only a failed request leaves the terminal states (by retry), and a cancelled one
    # only to record that its work stopped.
    leaving = {c for (c, t) in TRANSITIONS if c in TERMINAL and c != t}
    assert leaving == {S.FAILED}


@pytest.mark.parametrize(("current", "to", "by"), ALLOWED)
def test_lifecycle_store_makes_every_allowed_transition(
    store: Store, current: Status, to: Status, by: Role
) -> None:
    number = request_in(store, current)
    with store.write() as conn:
        assert store.transition(conn, number, to=to, by=by, actor="U0ACT", error="x") is True
    record = store.get(number)
    assert (record.status, record.error) == (to, "x")
    assert refusals(store, number) == []


@pytest.mark.parametrize(("current", "to", "by"), REFUSED)
def test_lifecycle_store_refuses_and_audits_every_other_transition(
    store: Store, current: Status, to: Status, by: Role
) -> None:
    number = request_in(store, current)
    with pytest.raises(TransitionRefused) as refused, store.write() as conn:
        store.audit(conn, "U0ACT", "test.before", request=number)  # rolled back with it
        store.transition(conn, number, to=to, by=by, actor="U0ACT", expected=(current,))
    assert refused.value.user_message == f"R-{number} is {current}: its {by} cannot make it {to}."
    assert store.status_of(number) == current
    actions = [e.action for e in store.audit_events(request_id=f"R-{number}")]
    assert "test.before" not in actions
    (event,) = refusals(store, number)
    assert (event.actor, event.outcome) == ("U0ACT", "refused")
    assert dict(event.details) == {"from": str(current), "to": str(to), "by": str(by)}


@pytest.mark.parametrize(("current", "to", "by"), REFUSED)
def test_lifecycle_a_status_outside_the_expected_ones_is_a_lost_race_not_a_refusal(
    store: Store, current: Status, to: Status, by: Role
) -> None:
    number = request_in(store, current)
    with store.write() as conn:
        # Default `expected`: the statuses the table lets `by` move to `to`; `current` is not.
        assert store.transition(conn, number, to=to, by=by, actor="U0ACT") is False
    assert current not in sources(to, by)
    assert store.status_of(number) == current
    assert refusals(store, number) == []


@pytest.mark.parametrize("status", sorted(set(Status) - {S.QUEUED, S.PREVIEWING, S.ANSWERED}))
def test_lifecycle_a_request_cannot_be_stored_in_a_later_status(
    store: Store, status: Status
) -> None:
    before = store.count_requests_of("U0LATE", open_only=False)
    with pytest.raises(TransitionRefused) as refused, store.write() as conn:
        store.create_request(
            conn,
            kind=RequestKind.EXPORT,
            command={},
            text="export",
            requester="U0LATE",
            channel="C0DSR",
            status=status,
        )
    assert refused.value.user_message == (
        f"A request cannot start as {status} on its requester's action."
    )
    assert store.count_requests_of("U0LATE", open_only=False) == before
    (event,) = [
        e
        for e in store.audit_events()
        if e.action == "request.transition_refused"
        and e.request_id is None
        and e.details.get("to") == str(status)
    ]
    assert (event.actor, event.request_id, dict(event.details)) == (
        "U0LATE",
        None,
        {"from": None, "to": str(status), "by": "requester"},
    )


def test_lifecycle_labels_cover_every_status() -> None:
    assert {s: s.label for s in Status} == {
        S.QUEUED: "Queued",
        S.RUNNING: "Running",
        S.PREVIEWING: "Computing the preview",
        S.PENDING: "Waiting for approval",
        S.APPROVED: "Approved, starting",
        S.DONE: "Done",
        S.FAILED: "Failed",
        S.CANCELLED: "Cancelled",
        S.REJECTED: "Rejected",
        S.EXPIRED: "Expired",
        S.ANSWERED: "Answered (manual steps)",
    }


def test_lifecycle_table_and_policy_agree_on_who_may_cancel_and_retry() -> None:
    # The two documents a reviewer reads: policy says who may act, the table what it changes.
    cancellable = set().union(*CANCELLABLE.values())
    assert sources(S.CANCELLED, Role.REQUESTER) == cancellable
    retried = {to for (c, to), roles in TRANSITIONS.items() if c == S.FAILED}
    assert retried == {S.QUEUED, S.APPROVED, S.PREVIEWING}
    assert all({Role.REQUESTER, Role.APPROVER} <= TRANSITIONS[(S.FAILED, to)] for to in retried)
