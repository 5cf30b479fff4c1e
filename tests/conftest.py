"""Shared fixtures: whole stacks (both emulators and the bot over real HTTP) per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from slack_sdk import WebClient

from emulators.customvision import Seed
from emulators.slack.records import UploadedFile
from emulators.slack.webapi import SlackEmulator
from emulators.stack import CHANNEL, REQUESTER, Person, Stack, start_stack

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


def request_pending(
    stack: Stack, text: str, person: Person = REQUESTER, channel: str = CHANNEL
) -> str:
    """Type a deletion in Slack as `person`; wait until it awaits approval with its
    announcement posted; return its request id."""
    rid = stack.request_id(stack.command(person, text, channel))
    assert stack.wait_status(rid, "pending", "failed") == "pending", stack.bot.store.get(rid).error
    stack.wait_delivered()
    return rid


def deletion_received(stack: Stack, received: str, first: int = 0) -> str:
    """Type a deletion of two images of the first project (from the `first`-th), received on
    `received`; wait until it awaits approval; return its request id."""
    project = stack.cv.data.project_ids()[0]
    images = ",".join(stack.cv.data.image_ids(project)[first : first + 2])
    return request_pending(stack, f"delete images {project} --ids {images} --received {received}")


def exported(stack: Stack, text: str) -> tuple[str, list[UploadedFile]]:
    """Run an export typed in Slack to its end; return its request id and its parts, in order."""
    rid = stack.request_id(stack.command(REQUESTER, text))
    assert stack.wait_status(rid, "done", "failed", timeout=60) == "done", stack.bot.store.get(
        rid
    ).error
    stack.wait_delivered()
    parts = sorted(
        (f for f in stack.slack.files(CHANNEL) if f.name.startswith(f"{rid}-export")),
        key=lambda f: f.name,
    )
    assert parts, [f.name for f in stack.slack.files(CHANNEL)]
    return rid, parts


DIALOG_OPENED = "(the rejection dialog opened)"


def click_answer(stack: Stack, person: Person, rid: str, action: str) -> str:
    """Click a button of the request's announcement; return the answer the clicker sees.

    The answer (an ephemeral message through the click's response_url, or the rejection
    dialog, a views.open) is sent after the ack, so it can arrive after the click's HTTP
    response and while the outbox is empty: wait for it, as bolt-python's own tests poll for a
    response_url post, instead of reading it at once. Returns DIALOG_OPENED for the dialog.
    """
    seen = len(stack.slack.ephemerals(user_id=person.user_id))
    views = len(stack.slack.views(person.user_id))
    assert stack.click(person, rid, action).status_code == 200
    arrived = stack.slack.wait_for(
        lambda: (
            len(stack.slack.ephemerals(user_id=person.user_id)) > seen
            or len(stack.slack.views(person.user_id)) > views
        ),
        timeout=10,
    )
    assert arrived, f"no answer to {person.user_id}'s {action} click on {rid}"
    if len(stack.slack.ephemerals(user_id=person.user_id)) == seen:
        return DIALOG_OPENED
    return stack.slack.ephemerals(user_id=person.user_id)[-1].text


SLACK_TOKEN = "xoxb-emulator-bot-token"


@pytest.fixture
def emulator() -> Iterator[SlackEmulator]:
    """A bare Slack emulator with alice and #dsr-requests (a suite needing more overrides it)."""
    with SlackEmulator() as emulator:
        emulator.add_user("U1", "alice")
        emulator.add_channel("C1", "dsr-requests")
        yield emulator
        assert emulator.internal_errors == []


@pytest.fixture
def client(emulator: SlackEmulator) -> WebClient:
    """The unmodified slack-sdk client, against whichever `emulator` the suite uses."""
    return WebClient(token=SLACK_TOKEN, base_url=emulator.api_url, timeout=10)
