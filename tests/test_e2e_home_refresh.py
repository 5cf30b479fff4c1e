"""End to end: an open Home tab follows the requests it shows.

Slack never re-asks for a Home tab: it shows the last view published (views.publish) until
the app publishes another. So when a request changes state, the bot publishes again the Home
of the people it concerns who have opened theirs: its requester, and the approvers (whose lists
hold every request waiting for an approval or due soon). Publishes are coalesced (a person's
tab is published once for a burst of changes, with the latest state) and paced within Slack's
tier for views.publish; the emulator records each publish and, with its rate tiers on,
answers `ratelimited` beyond the tier.
"""

from __future__ import annotations

from emulators.customvision import Seed
from emulators.slack.records import PublishedView
from emulators.stack import APPROVER, REQUESTER, STRANGER, Person, Stack
from tests.conftest import StartStack, request_pending

SEED = Seed(projects=2, iterations=1, tags=2, images=12, predictions=2, image_bytes=256)


def published(stack: Stack, person: Person) -> list[PublishedView]:
    return stack.slack.published(person.user_id)


def open_home(stack: Stack, person: Person) -> None:
    before = len(published(stack, person))
    assert stack.driver is not None
    stack.driver.home_opened(person.user_id)
    assert stack.slack.wait_for(lambda: len(published(stack, person)) > before)


def shows(view: PublishedView, rid: str) -> bool:
    return any(b.get("block_id", "").endswith(f":{rid}") for b in view.blocks)


def wait_view(
    stack: Stack, person: Person, check: object, what: str, after: int = 0
) -> PublishedView:
    """Wait until a view published after the first `after` passes `check`; return it."""

    def seen() -> bool:
        views = published(stack, person)
        return len(views) > after and bool(check(views[-1]))  # type: ignore[operator]

    assert stack.slack.wait_for(seen, timeout=60), f"{person.user_id}'s Home never {what}"
    return published(stack, person)[-1]


def test_e2e_home_of_the_requester_and_approvers_follows_a_deletion(
    stacks: StartStack,
) -> None:
    stack = stacks(seed=SEED)
    for person in (REQUESTER, APPROVER):
        open_home(stack, person)
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]

    rid = request_pending(stack, f"delete images {project} --ids {image}")
    mine = wait_view(stack, REQUESTER, lambda v: shows(v, rid), "showed the new request")
    assert any(b.get("block_id") == f"mine:{rid}" for b in mine.blocks)
    queue = wait_view(stack, APPROVER, lambda v: shows(v, rid), "showed the request to approve")
    assert any(b.get("block_id") == f"approval:{rid}" for b in queue.blocks)

    seen = {p.user_id: len(published(stack, p)) for p in (REQUESTER, APPROVER)}
    stack.click(APPROVER, rid, "approve")
    assert stack.wait_status(rid, "done", "failed") == "done"
    for person in (REQUESTER, APPROVER):
        wait_view(stack, person, lambda v: not shows(v, rid), "let go of it", seen[person.user_id])
    # Nobody who never opened the Home tab is published one.
    assert published(stack, STRANGER) == []


def test_e2e_home_republishes_are_coalesced_and_within_slacks_tier(stacks: StartStack) -> None:
    stack = stacks(seed=SEED, rate_tiers=True)
    open_home(stack, REQUESTER)
    before = len(published(stack, REQUESTER))
    rids = [stack.request_id(stack.command(REQUESTER, "export projects")) for _ in range(6)]
    for rid in rids:
        assert stack.wait_status(rid, "done", "failed", timeout=60) == "done"
    last = wait_view(
        stack,
        REQUESTER,
        lambda v: not any(shows(v, r) for r in rids),
        "showed the end",
        after=before + 1,  # a view with the requests, then one without
    )
    # Each request changed state at least three times (queued, running, done): 18 changes.
    publishes = len(published(stack, REQUESTER)) - before
    assert 1 <= publishes < 18
    assert stack.slack.rate_limited("views.publish") == 0
    assert last.view["type"] == "home"
