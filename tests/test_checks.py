"""`python -m bot check` against the emulators: each thing an admin can get wrong, and its fix."""

from __future__ import annotations

import io
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot import audit
from bot.checks import Check, print_checks, run_checks
from bot.config import Config, load_config
from bot.db import Database
from emulators.customvision import CustomVisionEmulator, Seed
from emulators.slack.webapi import SlackEmulator
from emulators.stack import (
    AUDIT_CHANNEL,
    CHANNEL,
    REQUESTER,
    Stack,
    bot_env,
    start_emulators,
)
from handlers.checks import REQUIRED_SCOPES, slack_checks

TINY = Seed(projects=1, iterations=1, tags=2, images=6, predictions=2, image_bytes=256)
# Distinctive secrets, so a leak anywhere in the output is found by a plain substring search.
LEAKY_TOKEN = "xoxb-1111-check-leak-token"
LEAKY_KEY = "check-leak-training-key-2222"


@pytest.fixture
def emulators() -> Iterator[tuple[CustomVisionEmulator, SlackEmulator]]:
    cv, slack = start_emulators(TINY)
    # The workspace installed from manifest.yaml grants exactly its scopes.
    slack.scopes = REQUIRED_SCOPES
    try:
        yield cv, slack
    finally:
        cv.stop()
        slack.stop()


def config_for(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], data: Path, **overrides: str
) -> Config:
    cv, slack = emulators
    env = bot_env(cv, slack, data, BOT_ALLOWED_CHANNELS=CHANNEL)
    env.update(overrides)
    return load_config(env)


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


def failures(checks: list[Check]) -> list[str]:
    return [c.name for c in checks if not c.ok]


def test_checks_all_pass_with_a_good_configuration(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    checks = run_checks(config_for(emulators, tmp_path), slack_checks)
    assert failures(checks) == []
    assert [c.name for c in checks] == [
        "configuration",
        "Slack auth.test",
        "Slack scopes",
        f"Slack request channel {CHANNEL}",
        f"Slack audit channel {AUDIT_CHANNEL}",
        "Slack users in BOT_APPROVERS",
        "Slack user group S0PRIVACY",
        "Custom Vision training key",
        "database",
        "audit log",
        "work folder",
    ]
    found = by_name(checks)
    assert found["configuration"].detail.startswith("HTTP mode (POST /slack/events on port 0)")
    assert "command /cv" in found["configuration"].detail
    assert "2 approvers (1 user, 1 user group)" in found["configuration"].detail
    assert found["Slack auth.test"].detail == (
        "token valid for team Emulator Workspace (T0EMULATOR), bot user @cv-dsr-bot (U0BOT)"
    )
    assert found[f"Slack audit channel {AUDIT_CHANNEL}"].detail == (
        "#dsr-audit (private), the bot is a member"
    )
    assert found["Slack users in BOT_APPROVERS"].detail == "@bob"
    assert found["Slack user group S0PRIVACY"].detail == "BOT_APPROVERS: 1 member"
    assert found["Custom Vision training key"].detail.endswith("1 project (GetProjects)")
    assert found["audit log"].detail == "Audit log intact: no events yet."
    assert (tmp_path / "cvdsr.db").exists()
    assert list((tmp_path / "work").iterdir()) == []  # the probe file is gone


def test_checks_print_one_line_each_and_exit_zero(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    out = io.StringIO()
    assert print_checks(config_for(emulators, tmp_path), slack_checks, stream=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 12
    assert all(line.startswith("✓ ") and " — " in line for line in lines[:-1])
    assert lines[-1] == "All 11 checks passed."


def test_checks_wrong_training_key_fails_with_the_fix(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    checks = run_checks(
        config_for(emulators, tmp_path, CUSTOM_VISION_TRAINING_KEY=LEAKY_KEY), slack_checks
    )
    assert failures(checks) == ["Custom Vision training key"]
    check = by_name(checks)["Custom Vision training key"]
    assert check.detail.endswith("refused the key (HTTP 401)")
    assert "CUSTOM_VISION_TRAINING_KEY" in check.fix
    assert "CUSTOM_VISION_ENDPOINT" in check.fix
    assert check.line().startswith("✗ Custom Vision training key — 127.0.0.1:")
    assert ". Fix: check CUSTOM_VISION_TRAINING_KEY" in check.line()


def test_checks_unreachable_endpoint_says_check_the_endpoint(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = config_for(emulators, tmp_path, CUSTOM_VISION_ENDPOINT=f"http://127.0.0.1:{port}")
    check = by_name(run_checks(config, slack_checks))["Custom Vision training key"]
    assert not check.ok
    assert check.detail.startswith(f"could not reach 127.0.0.1:{port}")
    assert "CUSTOM_VISION_ENDPOINT" in check.fix
    assert "firewall" in check.fix


@pytest.mark.parametrize(
    ("setup", "overrides", "name", "detail", "fix"),
    [
        (
            lambda slack: slack.set_bot_member(AUDIT_CHANNEL, False),
            {},
            f"Slack audit channel {AUDIT_CHANNEL}",
            "the bot cannot see this channel",
            "for a private channel, run `/invite @cv-dsr-bot` in it first",
        ),
        (
            lambda slack: None,
            {"BOT_ALLOWED_CHANNELS": f"{CHANNEL},C0RANDOM"},
            "Slack request channel C0RANDOM",
            "#random (public) exists but the bot is not a member",
            "run `/invite @cv-dsr-bot` in #random",
        ),
        (
            lambda slack: None,
            {"BOT_AUDIT_CHANNEL": "C0NOWHERE"},
            "Slack audit channel C0NOWHERE",
            "the bot cannot see this channel",
            "check the id (channel details, at the bottom)",
        ),
    ],
)
def test_checks_channel_the_bot_is_not_in_fails_with_invite(
    emulators: tuple[CustomVisionEmulator, SlackEmulator],
    tmp_path: Path,
    setup: object,
    overrides: dict[str, str],
    name: str,
    detail: str,
    fix: str,
) -> None:
    assert callable(setup)
    setup(emulators[1])
    checks = run_checks(config_for(emulators, tmp_path, **overrides), slack_checks)
    assert failures(checks) == [name]
    check = by_name(checks)[name]
    assert check.detail == detail
    assert fix in check.fix


def test_checks_bad_token_fails_auth_and_skips_the_other_slack_checks(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    checks = run_checks(config_for(emulators, tmp_path, SLACK_BOT_TOKEN=LEAKY_TOKEN), slack_checks)
    assert failures(checks) == ["Slack auth.test"]
    assert not any(c.name.startswith("Slack ") and c.name != "Slack auth.test" for c in checks)
    check = by_name(checks)["Slack auth.test"]
    assert check.detail == "Slack refused the token (invalid_auth)"
    assert "reinstall the app" in check.fix
    assert "SLACK_BOT_TOKEN" in check.fix


def test_checks_unreachable_slack_says_check_the_api_url(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = config_for(emulators, tmp_path, SLACK_API_URL=f"http://127.0.0.1:{port}/api/")
    check = by_name(run_checks(config, slack_checks))["Slack auth.test"]
    assert check.detail == f"could not reach the Slack Web API at 127.0.0.1:{port} (URLError)"
    assert "SLACK_API_URL" in check.fix


def test_checks_wait_out_one_slack_rate_limit(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    emulators[1].inject_ratelimit("conversations.info", times=1, retry_after=0)
    assert failures(run_checks(config_for(emulators, tmp_path), slack_checks)) == []
    assert [c.status for c in emulators[1].calls_to("conversations.info")][:2] == [429, 200]


def test_checks_missing_scope_names_it(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    emulators[1].scopes = REQUIRED_SCOPES - {"files:read"}
    checks = run_checks(config_for(emulators, tmp_path), slack_checks)
    assert failures(checks) == ["Slack scopes"]
    check = by_name(checks)["Slack scopes"]
    assert check.detail == "the token lacks files:read"
    assert "reinstall the app from manifest.yaml" in check.fix


def test_checks_user_groups_on_a_free_plan_are_explained(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    emulators[1].free_plan = True
    checks = run_checks(config_for(emulators, tmp_path), slack_checks)
    assert failures(checks) == ["Slack user group S0PRIVACY"]
    check = by_name(checks)["Slack user group S0PRIVACY"]
    assert "plan_upgrade_required" in check.detail
    assert "list people by user id (U...) in BOT_APPROVERS instead of S0PRIVACY" in check.fix


@pytest.mark.parametrize(
    ("approvers", "name", "detail"),
    [
        ("U0BOB,U0NOBODY", "Slack users in BOT_APPROVERS", "U0NOBODY is not a member"),
        ("U0BOB,S0NOSUCH", "Slack user group S0NOSUCH", "no user group has this id"),
    ],
)
def test_checks_unknown_approvers_fail(
    emulators: tuple[CustomVisionEmulator, SlackEmulator],
    tmp_path: Path,
    approvers: str,
    name: str,
    detail: str,
) -> None:
    checks = run_checks(config_for(emulators, tmp_path, BOT_APPROVERS=approvers), slack_checks)
    assert failures(checks) == [name]
    assert detail in by_name(checks)[name].detail


def test_checks_unwritable_database_and_work_folder_fail(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    # A regular file where a folder must be: refused even to root.
    (tmp_path / "blocker").write_text("not a folder")
    checks = run_checks(
        config_for(
            emulators,
            tmp_path,
            BOT_DATABASE=str(tmp_path / "blocker" / "cvdsr.db"),
            BOT_WORK_DIR=str(tmp_path / "blocker" / "work"),
        ),
        slack_checks,
    )
    assert failures(checks) == ["database", "work folder"]
    found = by_name(checks)
    assert "BOT_DATABASE" in found["database"].fix
    assert "BOT_WORK_DIR" in found["work folder"].fix
    assert "audit log" not in found


def test_checks_tampered_audit_log_fails(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    db = Database(tmp_path / "cvdsr.db")
    try:
        with db.write() as conn:
            for action in ("command.received", "request.queued"):
                audit.append(
                    conn, at=datetime(2026, 11, 27, tzinfo=UTC), actor="U0A", action=action
                )
        conn = db.conn
        conn.execute("DROP TRIGGER audit_events_no_update")
        conn.execute("UPDATE audit_events SET actor = 'U0MALLORY' WHERE seq = 1")
    finally:
        db.close()
    checks = run_checks(config_for(emulators, tmp_path), slack_checks)
    assert failures(checks) == ["audit log"]
    check = by_name(checks)["audit log"]
    assert check.detail.startswith("Audit log BROKEN at event #1")
    assert "keep a copy of the database" in check.fix


def test_checks_never_show_a_secret(
    emulators: tuple[CustomVisionEmulator, SlackEmulator], tmp_path: Path
) -> None:
    config = config_for(
        emulators,
        tmp_path,
        SLACK_BOT_TOKEN=LEAKY_TOKEN,
        CUSTOM_VISION_TRAINING_KEY=LEAKY_KEY,
        SLACK_SIGNING_SECRET="check-leak-signing-secret-3333",
    )
    out = io.StringIO()
    assert print_checks(config, slack_checks, stream=out) == 1
    text = out.getvalue()
    assert "2 checks failed." in text
    for secret in config.secrets():
        assert secret not in text
    assert "1111" not in text and "2222" not in text and "3333" not in text


def test_checks_with_a_running_bot_use_its_database(stack: Stack) -> None:
    checks = run_checks(stack.config, slack_checks, db=stack.bot.db)
    assert failures(checks) == []
    assert by_name(checks)["database"].detail.startswith(f"{stack.config.database} is writable")
    # The bot's own database stays open and usable afterwards.
    response = stack.command(REQUESTER, "status")
    assert "no open requests" in response.json()["text"]


def test_checks_make_serve_refuse_to_start(
    emulators: tuple[CustomVisionEmulator, SlackEmulator],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from bot.__main__ import serve

    config = config_for(emulators, tmp_path, CUSTOM_VISION_TRAINING_KEY=LEAKY_KEY)
    result: list[int] = []
    stopping = threading.Event()
    stopping.set()  # already stopping: one round of checks, no pause before another
    # In a thread: serve() installs signal handlers only on the main thread.
    runner = threading.Thread(target=lambda: result.append(serve(config, stop=stopping)))
    with caplog.at_level(logging.ERROR, logger="bot"):
        runner.start()
        runner.join(30)
    assert result == [2]
    logged = [r.getMessage() for r in caplog.records if r.name == "bot"]
    assert logged[0] == "refusing to start; fix these first:"
    assert len(logged) == 2
    assert logged[1].startswith("  Custom Vision training key: 127.0.0.1:")
    assert "check CUSTOM_VISION_TRAINING_KEY" in logged[1]
    assert LEAKY_KEY not in caplog.text
