"""Self-check: can this configuration serve? One `Check` per thing an admin can get wrong.

Not pure: it calls Slack (read-only Web API methods), Custom Vision (GetProjects) and touches
the database and the work folder. Each check catches the failures it expects and turns them
into a `Check` whose `fix` says what to do; nothing here changes anything (the database write
is rolled back, the probe file removed). No check ever shows a secret: every text is also
scrubbed of the configured secrets before it leaves this module.

Slack is called through the bot's own slack-sdk client (`bot.app.SlackCalls`, since only the
app wiring imports slack_sdk), with the same `SLACK_API_URL` and token the bot uses; Custom
Vision through the real `TrainingClient`, with short timeouts and one retry so a wrong endpoint
fails in seconds, not minutes.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from bot import audit
from bot.config import Config
from bot.db import Database
from bot.errors import MalformedResponse, Throttled, TrainingApiError, TransportError, Unauthorized
from bot.training import TrainingClient
from bot.wording import count

if TYPE_CHECKING:
    from bot.app import Bot

# The bot scopes of manifest.yaml / manifest-http.yaml (tests hold the three together, and the
# manifests to the Web API methods the code calls).
REQUIRED_SCOPES = frozenset(
    {
        "commands",
        "chat:write",
        "files:write",
        "files:read",
        "users:read",
        "usergroups:read",
        "channels:read",
        "groups:read",
        "mpim:read",
    }
)
SLACK_TIMEOUT = 10.0
TRAINING_TIMEOUT = 10.0
REINSTALL = (
    "reinstall the app from manifest.yaml (api.slack.com/apps > your app > Install App), then "
    "copy the Bot User OAuth Token (xoxb-...) into SLACK_BOT_TOKEN"
)


@dataclass(frozen=True)
class Check:
    """One verified fact about the configuration; `fix` says what to do when not `ok`."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        """Return the line `check` prints: `✓ name — detail` or `✗ name — detail. Fix: ...`."""
        if self.ok:
            return f"✓ {self.name} — {self.detail}"
        return f"✗ {self.name} — {self.detail.rstrip('.')}. Fix: {self.fix}"


class SlackUnreachable(Exception):
    """No HTTP answer from the Slack Web API (the message names only the error type)."""


@dataclass(frozen=True)
class SlackAnswer:
    data: Mapping[str, Any]
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return bool(self.data.get("ok"))

    @property
    def error(self) -> str:
        return str(self.data.get("error") or "unknown_error")


class SlackApi(Protocol):
    """The Slack Web API as the checks use it (`bot.app.SlackCalls`, the bot's own client)."""

    def call(self, method: str, **params: str) -> SlackAnswer:
        """Return Slack's answer to `method`; raise SlackUnreachable when there is none."""
        ...


# -- the checks ---------------------------------------------------------------------------------


def check_configuration(config: Config) -> Check:
    """Return what the validated configuration means (load_config already refused bad values)."""
    mode = (
        "Socket Mode (SLACK_APP_TOKEN set)"
        if config.socket_mode
        else f"HTTP mode (POST /slack/events on port {config.port})"
    )
    users = sum(1 for a in config.approvers if a[0] in "UW")
    groups = len(config.approvers) - users
    if config.approvers:
        approvers = (
            f"{count(len(config.approvers), 'approver')} ({count(users, 'user')}, "
            f"{count(groups, 'user group')}), {config.required_approvals} needed per deletion"
        )
    else:
        approvers = "no approvers: deletions are disabled until BOT_APPROVERS is set"
    channels = (
        f"requests in {count(len(config.allowed_channels), 'channel')}"
        if config.allowed_channels
        else "requests in any channel the bot is in"
    )
    audit_channel = (
        f"audit mirrored to {config.audit_channel}" if config.audit_channel else "no audit channel"
    )
    return Check(
        "configuration",
        True,
        f"{mode}, command {config.bot_command}, {approvers}, {channels}, {audit_channel}",
    )


def _slack_failure(name: str, error: str, fix: str) -> Check:
    if error == "missing_scope":
        return Check(name, False, "Slack answered missing_scope", f"add the scope and {REINSTALL}")
    if error == "ratelimited":
        return Check(name, False, "Slack rate-limited the check", "run the check again in a minute")
    if error in {"invalid_auth", "not_authed", "token_revoked", "account_inactive"}:
        return Check(name, False, f"Slack refused the token ({error})", REINSTALL)
    return Check(name, False, f"Slack answered {error}", fix)


def _unreachable(name: str, exc: SlackUnreachable) -> Check:
    return Check(name, False, f"could not reach Slack ({exc})", "check the network")


def check_slack_auth(slack: SlackApi, config: Config) -> tuple[Check, SlackAnswer | None]:
    """Return the auth.test check and, when it passed, Slack's answer (team, bot user, scopes)."""
    name = "Slack auth.test"
    host = urlsplit(config.slack_api_url).netloc
    try:
        answer = slack.call("auth.test")
    except SlackUnreachable as exc:
        return Check(
            name,
            False,
            f"could not reach the Slack Web API at {host} ({exc})",
            "check SLACK_API_URL (normally https://slack.com/api/) and that this machine can "
            "reach it (proxy, firewall)",
        ), None
    if not answer.ok:
        return _slack_failure(name, answer.error, REINSTALL), None
    data = answer.data
    detail = (
        f"token valid for team {data.get('team')} ({data.get('team_id')}), "
        f"bot user @{data.get('user')} ({data.get('user_id')})"
    )
    return Check(name, True, detail), answer


def check_slack_scopes(answer: SlackAnswer) -> Check:
    """Return whether the token holds every scope the manifest declares (from X-OAuth-Scopes)."""
    name = "Slack scopes"
    raw = answer.headers.get("x-oauth-scopes")
    if raw is None:
        return Check(name, True, "Slack did not list the token's scopes; not checked")
    granted = {s.strip() for s in raw.split(",") if s.strip()}
    missing = sorted(REQUIRED_SCOPES - granted)
    if missing:
        return Check(
            name,
            False,
            f"the token lacks {', '.join(missing)}",
            f"add the missing scopes (manifest.yaml lists them) and {REINSTALL}",
        )
    return Check(name, True, f"all {len(REQUIRED_SCOPES)} scopes of manifest.yaml granted")


def check_slack_channel(slack: SlackApi, channel_id: str, role: str, bot_name: str) -> Check:
    """Return whether the bot can see `channel_id` and is a member of it."""
    name = f"Slack {role} channel {channel_id}"
    invite = f"/invite @{bot_name}"
    try:
        answer = slack.call("conversations.info", channel=channel_id)
    except SlackUnreachable as exc:
        return _unreachable(name, exc)
    if not answer.ok:
        if answer.error == "channel_not_found":
            return Check(
                name,
                False,
                "the bot cannot see this channel",
                f"check the id (channel details, at the bottom); for a private channel, run "
                f"`{invite}` in it first",
            )
        return _slack_failure(name, answer.error, "check the channel id")
    channel = answer.data.get("channel") or {}
    label = f"#{channel.get('name', channel_id)}"
    kind = "private" if channel.get("is_private") or channel.get("is_group") else "public"
    if channel.get("is_archived"):
        return Check(
            name, False, f"{label} is archived", "unarchive it or choose another channel id"
        )
    if not channel.get("is_member"):
        return Check(
            name,
            False,
            f"{label} ({kind}) exists but the bot is not a member",
            f"run `{invite}` in {label}",
        )
    return Check(name, True, f"{label} ({kind}), the bot is a member")


def check_slack_usergroup(slack: SlackApi, group_id: str, setting: str) -> Check:
    """Return whether a user group listed in `setting` resolves to its members."""
    name = f"Slack user group {group_id}"
    try:
        answer = slack.call("usergroups.users.list", usergroup=group_id)
    except SlackUnreachable as exc:
        return _unreachable(name, exc)
    if not answer.ok:
        if answer.error == "plan_upgrade_required":
            return Check(
                name,
                False,
                "this Slack plan has no user groups (plan_upgrade_required)",
                f"list people by user id (U...) in {setting} instead of {group_id}, or upgrade "
                "the Slack plan",
            )
        if answer.error == "no_such_subteam":
            return Check(
                name,
                False,
                "no user group has this id",
                f"check the id in {setting} (the group's profile > ⋯ > Copy group ID)",
            )
        return _slack_failure(name, answer.error, f"check the id in {setting}")
    members = [str(u) for u in answer.data.get("users") or []]
    if not members:
        return Check(name, True, f"{setting}: the group has no members yet (nobody in it can act)")
    return Check(name, True, f"{setting}: {count(len(members), 'member')}")


def check_slack_users(slack: SlackApi, user_ids: tuple[str, ...], setting: str) -> Check:
    """Return whether every user id listed in `setting` is an active member of the workspace."""
    name = f"Slack users in {setting}"
    names: list[str] = []
    problems: list[str] = []
    for user_id in user_ids:
        try:
            answer = slack.call("users.info", user=user_id)
        except SlackUnreachable as exc:
            return _unreachable(name, exc)
        if not answer.ok:
            if answer.error == "user_not_found":
                problems.append(f"{user_id} is not a member of this workspace")
                continue
            return _slack_failure(name, answer.error, f"check the ids in {setting}")
        user = answer.data.get("user") or {}
        if user.get("deleted"):
            problems.append(f"{user_id} (@{user.get('name')}) is deactivated")
        else:
            names.append(f"@{user.get('name')}")
    if problems:
        return Check(
            name,
            False,
            "; ".join(problems),
            f"correct {setting} (profile > ⋯ > Copy member ID)",
        )
    return Check(name, True, ", ".join(names))


def check_training_key(config: Config) -> Check:
    """Return whether the training key works against the endpoint (GetProjects, read-only)."""
    host = urlsplit(config.custom_vision_endpoint).netloc or "(no endpoint)"
    name = "Custom Vision training key"
    try:
        # Its own client, not the bot's: one retry and short timeouts, so a wrong endpoint
        # fails the check in seconds instead of after the bot's long backoff.
        client = TrainingClient(
            config.custom_vision_endpoint,
            config.custom_vision_training_key.reveal(),
            tps=config.custom_vision_tps,
            timeout=TRAINING_TIMEOUT,
            max_attempts=2,
            backoff_base=0.2,
            backoff_cap=1.0,
        )
    except ValueError as exc:
        return Check(name, False, str(exc), "check CUSTOM_VISION_ENDPOINT and the key's value")
    try:
        projects = client.get_projects()
    except Unauthorized:
        return Check(
            name,
            False,
            f"{host} refused the key (HTTP 401)",
            "check CUSTOM_VISION_TRAINING_KEY and that CUSTOM_VISION_ENDPOINT is the endpoint "
            "of the same resource (Azure portal > the training resource > Keys and Endpoint)",
        )
    except TransportError as exc:
        return Check(
            name,
            False,
            f"could not reach {host}: {exc.user_message}",
            "check CUSTOM_VISION_ENDPOINT (https://<name>.cognitiveservices.azure.com) and "
            "that this machine can reach it (proxy, firewall, private endpoint)",
        )
    except Throttled:
        return Check(
            name, False, f"{host} kept answering 429", "run the check again in a few minutes"
        )
    except MalformedResponse as exc:
        return Check(
            name,
            False,
            exc.user_message,
            "check CUSTOM_VISION_ENDPOINT: it must be the resource endpoint, without a path",
        )
    except TrainingApiError as exc:
        return Check(name, False, exc.user_message, "check the resource in the Azure portal")
    finally:
        client.close()
    return Check(name, True, f"accepted by {host}: {count(len(projects), 'project')} (GetProjects)")


@contextmanager
def _database(config: Config, bot: Bot | None) -> Iterator[Database]:
    if bot is not None:
        yield bot.db
        return
    db = Database(config.database)
    try:
        yield db
    finally:
        db.close()


def check_database(config: Config, bot: Bot | None = None) -> list[Check]:
    """Return the database check (opens, migrates, takes a write lock) and the audit chain's."""
    name = "database"
    fix = (
        f"make the folder of BOT_DATABASE ({config.database.parent}) writable by the bot's "
        "user, and the file too if it exists"
    )
    try:
        with _database(config, bot) as db:
            conn = db.conn
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE _cvdsr_write_check (x INTEGER)")
            finally:
                conn.execute("ROLLBACK")
            verification = audit.verify(conn)
    except (sqlite3.Error, OSError) as exc:
        return [Check(name, False, f"{config.database}: {exc}", fix)]
    checks = [Check(name, True, f"{config.database} is writable (schema v{version})")]
    if verification.ok:
        checks.append(Check("audit log", True, verification.summary()))
    else:
        checks.append(
            Check(
                "audit log",
                False,
                verification.summary(),
                "the log was changed outside the bot: keep a copy of the database for the "
                "investigation and compare it with the audit channel's mirror (README, Audit)",
            )
        )
    return checks


def check_work_dir(config: Config) -> Check:
    """Return whether the work folder can hold export packages (writable; free space shown)."""
    name = "work folder"
    try:
        config.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=config.work_dir, prefix=".write-check-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(config.work_dir).free
    except OSError as exc:
        return Check(
            name,
            False,
            f"{config.work_dir}: {exc.strerror or type(exc).__name__}",
            f"make BOT_WORK_DIR ({config.work_dir}) writable by the bot's user",
        )
    return Check(name, True, f"{config.work_dir} is writable, {free / 1e9:.1f} GB free")


def _slack_checks(config: Config) -> list[Check]:
    from bot.app import SlackCalls

    slack = SlackCalls.for_config(config)
    auth, answer = check_slack_auth(slack, config)
    if answer is None:
        return [auth]  # every other Slack check would fail the same way
    checks = [auth, check_slack_scopes(answer)]
    bot_name = str(answer.data.get("user") or "cv-dsr-bot")
    for channel in config.allowed_channels:
        checks.append(check_slack_channel(slack, channel, "request", bot_name))
    if config.audit_channel:
        checks.append(check_slack_channel(slack, config.audit_channel, "audit", bot_name))
    for setting, ids in (
        ("BOT_APPROVERS", config.approvers),
        ("BOT_REQUESTERS", config.requesters),
    ):
        users = tuple(i for i in ids if i[0] in "UW")
        if users:
            checks.append(check_slack_users(slack, users, setting))
        checks += [check_slack_usergroup(slack, g, setting) for g in ids if g[0] == "S"]
    return checks


def run_checks(config: Config, *, bot: Bot | None = None) -> list[Check]:
    """Return every check, in order; never raises for a failure it can explain.

    With `bot` (serve's start-up), its open database is checked instead of opening another.
    """
    checks = [check_configuration(config)]
    checks += _slack_checks(config)
    checks.append(check_training_key(config))
    checks += check_database(config, bot)
    checks.append(check_work_dir(config))
    scrub = _scrubber(config.secrets())
    return [replace(c, detail=scrub(c.detail), fix=scrub(c.fix)) for c in checks]


def _scrubber(secrets: tuple[str, ...]) -> Callable[[str], str]:
    def scrub(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret, "[redacted]")
        return text

    return scrub


def print_checks(config: Config, *, stream: IO[str] | None = None) -> int:
    """Print one line per check; return 0 when all passed, else 1."""
    out = stream or sys.stdout
    checks = run_checks(config)
    for check in checks:
        print(check.line(), file=out)
    failed = sum(1 for c in checks if not c.ok)
    if failed:
        print(f"{count(failed, 'check')} failed.", file=out)
        return 1
    print(f"All {len(checks)} checks passed.", file=out)
    return 0
