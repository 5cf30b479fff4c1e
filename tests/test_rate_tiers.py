"""Slack's rate tiers: the emulator enforces them (unmodified slack-sdk client) and the
outbox's Pacer spends each budget under them (pure, with a fake clock)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from emulators.slack.webapi import RATE_TIERS, RateTier, SlackEmulator
from handlers.outbox import POST_BUDGET, UPDATE_BUDGET, Budget, Pacer, slack_budget
from tests.test_slack_emulator import FakeTime


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def emulator(clock: FakeTime) -> Iterator[SlackEmulator]:
    with SlackEmulator(clock=clock) as emulator:
        emulator.add_channel("C1", "dsr-requests")
        emulator.add_channel("C2", "dsr-audit")
        emulator.add_usergroup("S1", "dsr-approvers", [])
        yield emulator
        assert emulator.internal_errors == []


def _post(client: WebClient, channel: str) -> tuple[int, str | None, str | None]:
    try:
        client.chat_postMessage(channel=channel, text="x")
    except SlackApiError as exc:
        retry_after = exc.response.headers.get("Retry-After")
        return exc.response.status_code, exc.response["error"], retry_after
    return 200, None, None


def test_emulator_rate_tiers_are_off_unless_enabled(
    emulator: SlackEmulator, client: WebClient
) -> None:
    assert [_post(client, "C1")[0] for _ in range(20)] == [200] * 20


def test_emulator_posts_are_limited_per_channel_with_retry_after(
    emulator: SlackEmulator, client: WebClient, clock: FakeTime
) -> None:
    emulator.enable_rate_tiers()
    burst = RATE_TIERS["chat.postMessage"].burst
    assert [_post(client, "C1")[0] for _ in range(burst)] == [200] * burst
    assert _post(client, "C1") == (429, "ratelimited", "1")
    assert _post(client, "C2")[0] == 200  # another channel has its own budget
    clock.now += 1.0  # about one a second
    assert _post(client, "C1")[0] == 200
    assert emulator.rate_limited("chat.postMessage") == 1
    assert len(emulator.messages("C1")) == burst + 1


def test_emulator_tier_2_and_3_methods_answer_429_over_their_minute(
    emulator: SlackEmulator, client: WebClient, clock: FakeTime
) -> None:
    emulator.enable_rate_tiers({"usergroups.users.list": RateTier(20, 2)})
    client.usergroups_users_list(usergroup="S1")
    client.usergroups_users_list(usergroup="S1")
    with pytest.raises(SlackApiError) as caught:
        client.usergroups_users_list(usergroup="S1")
    assert caught.value.response.status_code == 429
    assert caught.value.response.headers["Retry-After"] == "3"  # 20 a minute: one every 3 s
    clock.now += 3.0
    assert client.usergroups_users_list(usergroup="S1")["ok"]
    ts = client.chat_postMessage(channel="C1", text="x")["ts"]
    tier3 = RATE_TIERS["chat.update"]
    answers = []
    for _ in range(tier3.burst + 1):
        try:
            client.chat_update(channel="C1", ts=ts, text="y")
            answers.append(200)
        except SlackApiError as exc:
            answers.append(exc.response.status_code)
    assert answers == [200] * tier3.burst + [429]


def test_emulator_archived_channel_and_removed_bot_refuse_posts_from_then_on(
    emulator: SlackEmulator, client: WebClient
) -> None:
    emulator.add_channel("C3", "general", is_private=False)
    assert _post(client, "C3")[0] == 200
    emulator.set_bot_member("C3", False)  # removed mid-request
    assert _post(client, "C3")[1] == "not_in_channel"
    assert _post(client, "C3")[1] == "not_in_channel"
    emulator.set_bot_member("C3", True)
    emulator.set_archived("C3", True)
    assert _post(client, "C3")[1] == "is_archived"
    emulator.set_archived("C3", False)
    assert _post(client, "C3")[0] == 200


# --- the outbox's Pacer ------------------------------------------------------------------------


def test_pacer_spends_a_budget_evenly_after_its_burst() -> None:
    now = [0.0]
    pacer = Pacer(lambda name: Budget(per_minute=60, burst=2), monotonic=lambda: now[0])
    for _ in range(2):
        assert pacer.wait("post:C1") == 0
        pacer.spend("post:C1")
    assert pacer.wait("post:C1") == pytest.approx(1.0)
    assert pacer.wait("post:C2") == 0  # budgets are independent
    now[0] += 0.5
    assert pacer.wait("post:C1") == pytest.approx(0.5)
    now[0] += 0.5
    assert pacer.wait("post:C1") == 0


def test_pacer_pauses_a_budget_slack_answered_429() -> None:
    now = [0.0]
    pacer = Pacer(lambda name: Budget(per_minute=600, burst=10), monotonic=lambda: now[0])
    pacer.pause("update", 7.0)
    assert pacer.wait("update") == pytest.approx(7.0)
    now[0] += 7.0
    assert pacer.wait("update") == 0
    pacer.spend("update")
    assert pacer.wait("update") == pytest.approx(0.1)  # the bucket restarts nearly empty


def test_pacer_budgets_stay_under_the_emulated_tiers() -> None:
    posts, updates = RATE_TIERS["chat.postMessage"], RATE_TIERS["chat.update"]
    assert slack_budget("post:C1") == POST_BUDGET and slack_budget("update") == UPDATE_BUDGET
    assert POST_BUDGET.per_minute < posts.per_minute and POST_BUDGET.burst < posts.burst
    assert UPDATE_BUDGET.per_minute < updates.per_minute and UPDATE_BUDGET.burst < updates.burst
