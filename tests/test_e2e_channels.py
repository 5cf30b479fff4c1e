"""End to end: conversations that can leak, and conversations the bot cannot work in
(issue 13, item 4).

Packages with personal data went into Slack Connect channels (another organisation reads
them); in a group DM, conversations.info's `missing_scope` became "invite me first", which is
impossible there. Now shared channels are refused unless BOT_ALLOW_SHARED_CHANNEL_EXPORTS is
set, and DMs and group DMs get an answer that says what is wrong and where to go instead.
"""

from __future__ import annotations

from typing import Unpack

import pytest

from emulators.customvision import Seed
from emulators.slack.records import Sharing
from emulators.slack.webapi import DEFAULT_SCOPES
from emulators.stack import APPROVER, REQUESTER, Stack
from tests.conftest import StartStack

SEED = Seed(projects=1, iterations=1, tags=2, images=8, predictions=2, image_bytes=128)
SHARED = "C0PARTNERS"
GROUP_DM = "G0MPDM"
OTHER_GROUP_DM = "G0MPDM2"
DM = "D0ALICE"


@pytest.fixture
def stack(stacks: StartStack) -> Stack:
    return conversations(stacks(seed=SEED))


def conversations(stack: Stack, **shared: Unpack[Sharing]) -> Stack:
    kind: Sharing = shared or {"is_ext_shared": True}
    stack.slack.add_channel(SHARED, "partners", is_private=True, **kind)
    # Someone added the app to this group DM; the other one does not include the bot.
    stack.slack.add_channel(GROUP_DM, "mpdm-alice--bob--carol-1", is_mpim=True)
    stack.slack.add_channel(OTHER_GROUP_DM, "mpdm-alice--dave-1", is_mpim=True, bot_member=False)
    stack.slack.add_channel(DM, REQUESTER.user_id, is_im=True, user=REQUESTER.user_id)
    return stack


def stored(stack: Stack) -> int:
    return len(stack.bot.store.requests_of(REQUESTER.user_id, open_only=False))


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ({"is_ext_shared": True}, "another organisation (Slack Connect)"),
        ({"is_pending_ext_shared": True}, "another organisation (Slack Connect)"),
        ({"is_org_shared": True}, "other workspaces of your Enterprise Grid organisation"),
    ],
)
def test_channels_images_refused_in_shared_channels(
    stacks: StartStack, kind: Sharing, said: str
) -> None:
    stack = conversations(stacks(seed=SEED), **kind)
    project = stack.cv.data.project_ids()[0]
    body = stack.command(REQUESTER, f"export project {project}", channel=SHARED).json()
    assert said in body["text"], body["text"]
    assert "BOT_ALLOW_SHARED_CHANNEL_EXPORTS" in body["text"]
    # Every export but projects and account holds personal data (issue 12 item 4): no
    # "--no-images" way round the refusal is offered.
    assert "--no-images" not in body["text"]
    assert stored(stack) == 0


def test_channels_deletions_refused_in_shared_channels(stack: Stack) -> None:
    project = stack.cv.data.project_ids()[0]
    image = stack.cv.data.image_ids(project)[0]
    text = f"delete images {project} --ids {image}"
    body = stack.command(REQUESTER, text, channel=SHARED).json()
    assert body["text"].startswith(
        "This deletion's receipt holds personal data, and this channel is shared with another "
        "organisation (Slack Connect)"
    ), body["text"]
    assert "BOT_ALLOW_SHARED_CHANNEL_EXPORTS=true" in body["text"]
    assert stored(stack) == 0
    assert stack.slack.messages(SHARED) == []


def test_channels_shared_channel_exports_allowed_by_the_setting(stacks: StartStack) -> None:
    stack = conversations(stacks(seed=SEED, env={"BOT_ALLOW_SHARED_CHANNEL_EXPORTS": "true"}))
    project = stack.cv.data.project_ids()[0]
    rid = stack.request_id(stack.command(REQUESTER, f"export project {project}", channel=SHARED))
    assert stack.wait_status(rid, "done", "failed") == "done"


def test_channels_metadata_only_exports_work_in_shared_channels(stack: Stack) -> None:
    rid = stack.request_id(stack.command(REQUESTER, "export projects", channel=SHARED))
    assert stack.wait_status(rid, "done", "failed") == "done"


def test_channels_group_dm_gets_a_specific_answer(stack: Stack) -> None:
    body = stack.command(REQUESTER, "export projects", channel=GROUP_DM).json()
    assert "group DM" in body["text"], body["text"]
    assert "invite" not in body["text"].lower()
    assert "/cv export projects" in body["text"]
    assert stored(stack) == 0


def test_channels_group_dm_without_the_bot_says_where_to_go(stack: Stack) -> None:
    # Slack hides a group DM the bot is not in (channel_not_found), like a private channel.
    body = stack.command(REQUESTER, "export projects", channel=OTHER_GROUP_DM).json()
    assert "In a group DM, which cannot take requests" in body["text"], body["text"]
    assert stored(stack) == 0


def test_channels_group_dm_without_mpim_read_says_which_scope(stacks: StartStack) -> None:
    stack = conversations(stacks(seed=SEED))
    stack.slack.scopes = frozenset(DEFAULT_SCOPES) - {"mpim:read"}  # an install before 13.4
    for conversation in (GROUP_DM, OTHER_GROUP_DM):
        body = stack.command(REQUESTER, "export projects", channel=conversation).json()
        assert "mpim:read" in body["text"], body["text"]
    assert "invite" not in body["text"].lower()
    assert stored(stack) == 0


def test_channels_audit_file_in_a_dm_gets_a_specific_answer(stack: Stack) -> None:
    body = stack.command(APPROVER, "audit --format jsonl", channel=DM).json()
    assert "direct message" in body["text"], body["text"]
    assert "invite" not in body["text"].lower()


def test_channels_audit_file_refused_in_shared_channels(stack: Stack) -> None:
    body = stack.command(APPROVER, "audit --format jsonl", channel=SHARED).json()
    assert "Slack Connect" in body["text"], body["text"]
    assert stack.slack.files(SHARED) == []
